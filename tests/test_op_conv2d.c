/* conv2d against PyTorch (tools/gen_ops_conv.py), a double-precision naive reference, and
 * finite differences, on both paths (gemm, dnnl) and on auto selection. */
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gradcheck.h"
#include "harness.h"
#include "rand_fill.h"
#include "op_fixture.h"
#include "hakd/io.h"
#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/scratch.h"

/* fp32 against PyTorch's fp32: each output is a sum of at most Cin/g*kh*kw = 98 products (and
 * each weight gradient of at most N*oh*ow = 280), whose rounding error stays near
 * sqrt(terms) * 6e-8 of the largest value (~1e-6); 1e-5 normalised max error leaves 10x margin
 * while a wrong tap, offset or missing term gives errors of order 1e-1. */
#define CONV_TOL 1e-5

static const char *path_name(conv2d_path path) {
  return path == CONV2D_PATH_GEMM ? "gemm" : path == CONV2D_PATH_DNNL ? "dnnl" : "auto";
}

/* Gradients are accumulated (+=): they start at GRAD_PREFILL and the fixture is compared
 * after subtracting it again (exact for the fixture's magnitudes up to one rounding, ~3e-8). */
#define GRAD_PREFILL 0.5f

static void fill_grads(hakd_params *p, float delta) {
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    for (int64_t j = 0; j < hakd_numel(t); j++) t->grad[j] = delta < 0 ? t->grad[j] + delta : delta;
  }
}

/* Runs every fixture case forward and backward (seeded with the fixture's gy) on `path` and
 * compares y, gx, gw, gb (accumulated onto GRAD_PREFILL); `repeats` > 1 reruns each case (cached
 * oneDNN primitives, reused scratch). */
static void check_fixture_cases(conv2d_path path, int repeats) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/conv2d.safetensors"), &f));
  char cases[OP_FIXTURE_MAX_CASES][48];
  int n_cases = op_fixture_cases(f, "cases", cases, OP_FIXTURE_MAX_CASES);
  ASSERT_TRUE(n_cases >= 12);
  conv2d_set_path(path);
  for (int i = 0; i < n_cases && !test_failed(); i++) {
    const char *c = cases[i];
    int64_t prm[5];
    if (!op_fixture_ints(f, c, prm, 5)) break;
    hakd_params p;
    hakd_params_init(&p);
    hakd_tensor *x = op_fixture_param(&p, f, c, "x", 0);
    hakd_tensor *w = op_fixture_param(&p, f, c, "w", 0);
    hakd_tensor *b = prm[4] ? op_fixture_param(&p, f, c, "b", 0) : NULL;
    int64_t ngy = 0;
    float *gy = op_fixture_floats(f, c, "gy", &ngy);
    hakd_ctx *ctx = hakd_ctx_new();
    for (int r = 0; r < repeats && x && w && gy && !test_failed(); r++) {
      hakd_ctx_reset(ctx);
      fill_grads(&p, GRAD_PREFILL);
      hakd_tensor *y = hakd_conv2d(ctx, x, w, b, (int)prm[0], (int)prm[1], (int)prm[2], (int)prm[3]);
      if (!y) {
        test_fail(__FILE__, __LINE__, "%s (%s): conv2d failed: %s", c, path_name(path), hakd_error_message());
        break;
      }
      if (!op_fixture_check(f, c, "y", hakd_f32(y), hakd_numel(y), CONV_TOL)) break;
      if (ngy != hakd_numel(y) || hakd_backward_seeded(ctx, y, gy) != 0) {
        test_fail(__FILE__, __LINE__, "%s (%s): backward failed: %s", c, path_name(path), hakd_error_message());
        break;
      }
      fill_grads(&p, -GRAD_PREFILL);
      if (!op_fixture_check(f, c, "gx", x->grad, hakd_numel(x), CONV_TOL)) break;
      if (!op_fixture_check(f, c, "gw", w->grad, hakd_numel(w), CONV_TOL)) break;
      if (b && !op_fixture_check(f, c, "gb", b->grad, hakd_numel(b), CONV_TOL)) break;
    }
    free(gy);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
  hakd_st_close(f);
}

TEST(forward_backward_gemm_match_torch) { check_fixture_cases(CONV2D_PATH_GEMM, 1); }
TEST(forward_backward_dnnl_match_torch) { check_fixture_cases(CONV2D_PATH_DNNL, 2); }
TEST(forward_backward_auto_match_torch) { check_fixture_cases(CONV2D_PATH_AUTO, 1); }

/* Frozen inputs: the image (no dx), a frozen weight with a trained bias (only db; the dnnl path
 * must still run its weight primitive into scratch). */
static void check_partial_grads(conv2d_path path) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/conv2d.safetensors"), &f));
  conv2d_set_path(path);
  const char *c = "patch7x7_s4";
  int64_t prm[5];
  ASSERT_TRUE(op_fixture_ints(f, c, prm, 5));
  for (int frozen_weight = 0; frozen_weight < 2 && !test_failed(); frozen_weight++) {
    hakd_params p;
    hakd_params_init(&p);
    hakd_tensor *x = op_fixture_param(&p, f, c, "x", 1);
    hakd_tensor *w = op_fixture_param(&p, f, c, "w", frozen_weight);
    hakd_tensor *b = op_fixture_param(&p, f, c, "b", 0);
    int64_t ngy = 0;
    float *gy = op_fixture_floats(f, c, "gy", &ngy);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *y = x && w && b ? hakd_conv2d(ctx, x, w, b, (int)prm[0], (int)prm[1], (int)prm[2], (int)prm[3]) : NULL;
    if (!y || !gy || ngy != hakd_numel(y) || hakd_backward_seeded(ctx, y, gy) != 0)
      test_fail(__FILE__, __LINE__, "%s (%s): conv2d failed: %s", c, path_name(path), hakd_error_message());
    else if (x->grad || (frozen_weight && w->grad))
      test_fail(__FILE__, __LINE__, "%s (%s): gradient of a frozen input", c, path_name(path));
    else if (frozen_weight || op_fixture_check(f, c, "gw", w->grad, hakd_numel(w), CONV_TOL))
      op_fixture_check(f, c, "gb", b->grad, hakd_numel(b), CONV_TOL);
    free(gy);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
  hakd_st_close(f);
}

TEST(frozen_inputs_gemm) { check_partial_grads(CONV2D_PATH_GEMM); }
TEST(frozen_inputs_dnnl) { check_partial_grads(CONV2D_PATH_DNNL); }

/* Releasing the scratch block and the oneDNN caches (ops_release) leaves later calls
 * working: both are rebuilt on demand. */
TEST(release_and_rebuild) {
  check_fixture_cases(CONV2D_PATH_DNNL, 1);
  ops_release();
  check_fixture_cases(CONV2D_PATH_DNNL, 1);
  check_fixture_cases(CONV2D_PATH_GEMM, 1);
  ops_release();
}

/* ---- larger shapes against a double-precision naive reference ---- */

typedef struct {
  int n, cin, h, w, cout, k, stride, pad, dilation, groups;
} conv_case;

static int64_t out_size(int64_t in, const conv_case *cc) {
  return (in + 2 * cc->pad - cc->dilation * (cc->k - 1) - 1) / cc->stride + 1;
}

/* y, dx, dw, db of L = sum(y * gy) in double, by the definition of the convolution. */
static void naive_conv(double *y, double *dx, double *dw, double *db, const float *x, const float *w,
                       const float *b, const float *gy, const conv_case *cc) {
  int64_t oh = out_size(cc->h, cc), ow = out_size(cc->w, cc);
  int64_t cin_g = cc->cin / cc->groups, cout_g = cc->cout / cc->groups;
  memset(dx, 0, sizeof(double) * (size_t)(cc->n * cc->cin * cc->h * cc->w));
  memset(dw, 0, sizeof(double) * (size_t)(cc->cout * cin_g * cc->k * cc->k));
  memset(db, 0, sizeof(double) * (size_t)cc->cout);
  for (int64_t n = 0; n < cc->n; n++)
    for (int64_t co = 0; co < cc->cout; co++)
      for (int64_t i = 0; i < oh; i++)
        for (int64_t j = 0; j < ow; j++) {
          int64_t yi = ((n * cc->cout + co) * oh + i) * ow + j;
          double acc = b ? b[co] : 0.0, g = gy[yi];
          db[co] += g;
          for (int64_t c = 0; c < cin_g; c++) {
            int64_t ci = co / cout_g * cin_g + c;
            for (int64_t ki = 0; ki < cc->k; ki++)
              for (int64_t kj = 0; kj < cc->k; kj++) {
                int64_t ih = i * cc->stride - cc->pad + ki * cc->dilation;
                int64_t iw = j * cc->stride - cc->pad + kj * cc->dilation;
                if (ih < 0 || ih >= cc->h || iw < 0 || iw >= cc->w) continue;
                int64_t xi = ((n * cc->cin + ci) * cc->h + ih) * cc->w + iw;
                int64_t wi = ((co * cin_g + c) * cc->k + ki) * cc->k + kj;
                acc += (double)x[xi] * w[wi];
                dx[xi] += g * w[wi];
                dw[wi] += g * x[xi];
              }
          }
          y[yi] = acc;
        }
}

static double max_rel_err_d(const float *got, const double *want, int64_t n) {
  double max_ref = 1e-6, max_diff = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - want[i]);
    if (!(d <= max_diff)) max_diff = d; /* NaN propagates */
    if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
  }
  return max_diff / max_ref;
}

/* Random x, w, b of a case as parameters (their gradients accumulate from zero); seeds by case. */
static void case_operands(hakd_params *p, const conv_case *cc, size_t t, hakd_tensor **x, hakd_tensor **w,
                          hakd_tensor **b) {
  hakd_params_init(p);
  int64_t xs[4] = {cc->n, cc->cin, cc->h, cc->w}, ws[4] = {cc->cout, cc->cin / cc->groups, cc->k, cc->k};
  int64_t bs[1] = {cc->cout};
  *x = hakd_params_add(p, "x", 4, xs, 0);
  *w = hakd_params_add(p, "w", 4, ws, 0);
  *b = hakd_params_add(p, "b", 1, bs, 0);
  fill_normal(hakd_f32(*x), hakd_numel(*x), 1.0f, 1 + t);
  fill_normal(hakd_f32(*w), hakd_numel(*w), 0.1f, 100 + t);
  fill_normal(hakd_f32(*b), hakd_numel(*b), 1.0f, 200 + t);
}

/* Shapes the fixtures cannot afford: several im2col tiles (K * ow * oh above the column
 * budget), a depthwise channel multiplier of 2, and 1x1 with groups. Sums of up to 1152 products
 * (and 2304 for weight gradients): rounding stays below ~3e-6 of the largest value, so 2e-5. */
static void check_cases_against_naive(conv2d_path path, const conv_case *cases, size_t n_cases) {
  conv2d_set_path(path);
  for (size_t t = 0; t < n_cases && !test_failed(); t++) {
    const conv_case *cc = &cases[t];
    hakd_params p;
    hakd_tensor *x, *w, *b;
    case_operands(&p, cc, t, &x, &w, &b);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *y = hakd_conv2d(ctx, x, w, b, cc->stride, cc->pad, cc->dilation, cc->groups);
    ASSERT_TRUE(y != NULL);
    int64_t ny = hakd_numel(y);
    ASSERT_EQ_INT(ny, cc->n * cc->cout * out_size(cc->h, cc) * out_size(cc->w, cc));
    float *gy = malloc((size_t)ny * sizeof(float));
    fill_normal(gy, ny, 1.0f, 300 + t);
    ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
    double *ry = malloc((size_t)ny * sizeof(double)), *rdx = malloc((size_t)hakd_numel(x) * sizeof(double));
    double *rdw = malloc((size_t)hakd_numel(w) * sizeof(double)), *rdb = malloc((size_t)cc->cout * sizeof(double));
    naive_conv(ry, rdx, rdw, rdb, hakd_f32(x), hakd_f32(w), hakd_f32(b), gy, cc);
    double ey = max_rel_err_d(hakd_f32(y), ry, ny), edx = max_rel_err_d(x->grad, rdx, hakd_numel(x));
    double edw = max_rel_err_d(w->grad, rdw, hakd_numel(w)), edb = max_rel_err_d(b->grad, rdb, cc->cout);
    if (!(ey <= 2e-5 && edx <= 2e-5 && edw <= 2e-5 && edb <= 2e-5))
      test_fail(__FILE__, __LINE__, "case %zu (%s): rel err y %.3g dx %.3g dw %.3g db %.3g > 2e-5", t, path_name(path),
                ey, edx, edw, edb);
    free(gy);
    free(ry);
    free(rdx);
    free(rdw);
    free(rdb);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
}

/* bf16 precision: the products read x, w and dy rounded to bfloat16 and sum in float32, so the
 * results equal the double reference of the rounded operands to float32 accumulation accuracy
 * (2e-5 as above), while they differ from the unrounded reference by the rounding (relative
 * 2^-9 per operand: > 1e-4 normalised on these sums, so the check sees bf16 at work). */
static void check_bf16_rounded_operands(void) {
  const conv_case cases[] = {
      {1, 128, 48, 40, 16, 3, 1, 1, 1, 1},
      {1, 4, 12, 13, 5, 5, 3, 1, 1, 1},
      {2, 32, 9, 11, 24, 1, 1, 0, 1, 1}, /* 1x1: on oneDNN too in bf16 */
      {2, 16, 20, 20, 8, 3, 1, 2, 2, 1}, /* dilated */
  };
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    const conv_case *cc = &cases[t];
    hakd_params p;
    hakd_tensor *x, *w, *b;
    case_operands(&p, cc, t, &x, &w, &b);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_precision(ctx, HAKD_BF16);
    hakd_tensor *y = hakd_conv2d(ctx, x, w, b, cc->stride, cc->pad, cc->dilation, cc->groups);
    if (bf16_refused(ctx, y, "conv2d")) {
      hakd_ctx_free(ctx);
      hakd_params_free(&p);
      continue;
    }
    ASSERT_TRUE(y != NULL);
    int64_t ny = hakd_numel(y), nx = hakd_numel(x), nw = hakd_numel(w);
    float *gy = malloc((size_t)ny * sizeof(float));
    fill_normal(gy, ny, 1.0f, 300 + t);
    ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
    float *xr = malloc((size_t)nx * sizeof(float)), *wr = malloc((size_t)nw * sizeof(float));
    float *gyr = malloc((size_t)ny * sizeof(float));
    for (int64_t i = 0; i < nx; i++) xr[i] = round_bf16(hakd_f32(x)[i]);
    for (int64_t i = 0; i < nw; i++) wr[i] = round_bf16(hakd_f32(w)[i]);
    for (int64_t i = 0; i < ny; i++) gyr[i] = round_bf16(gy[i]);
    double *ry = malloc((size_t)ny * sizeof(double)), *rdx = malloc((size_t)nx * sizeof(double));
    double *rdw = malloc((size_t)nw * sizeof(double)), *rdb = malloc((size_t)cc->cout * sizeof(double));
    naive_conv(ry, rdx, rdw, rdb, xr, wr, hakd_f32(b), gyr, cc);
    double ey = max_rel_err_d(hakd_f32(y), ry, ny), edx = max_rel_err_d(x->grad, rdx, nx);
    double edw = max_rel_err_d(w->grad, rdw, nw), edb = max_rel_err_d(b->grad, rdb, cc->cout);
    if (!(ey <= 2e-5 && edx <= 2e-5 && edw <= 2e-5 && edb <= 2e-5))
      test_fail(__FILE__, __LINE__, "case %zu: vs rounded operands rel err y %.3g dx %.3g dw %.3g db %.3g > 2e-5", t,
                ey, edx, edw, edb);
    naive_conv(ry, rdx, rdw, rdb, hakd_f32(x), hakd_f32(w), hakd_f32(b), gy, cc);
    ey = max_rel_err_d(hakd_f32(y), ry, ny);
    if (!(ey > 1e-4 && ey < 1e-2))
      test_fail(__FILE__, __LINE__, "case %zu: bf16 output vs fp32 reference rel err %.3g, expected 1e-4..1e-2", t, ey);
    free(xr);
    free(wr);
    free(gyr);
    free(gy);
    free(ry);
    free(rdx);
    free(rdw);
    free(rdb);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
}

TEST(bf16_products_read_rounded_operands) { check_bf16_rounded_operands(); }

/* Large bf16 calls run in parts (images; row bands for 1x1 stride-1) to bound their scratch: with
 * a tiny part budget every case is cut, down to single rows of single images for the 1x1 one, and
 * the weight and bias gradients accumulated over the parts meet the same reference. */
TEST(bf16_calls_cut_into_parts_read_rounded_operands) {
  conv2d_dnnl_set_part_bytes(1);
  check_bf16_rounded_operands();
  conv2d_dnnl_set_part_bytes(0);
}

static void check_against_naive(conv2d_path path) {
  const conv_case cases[] = {
      {1, 128, 48, 40, 16, 3, 1, 1, 1, 1},  /* K*ow = 46080 floats per output row: 2 tiles */
      {2, 6, 9, 11, 12, 3, 2, 2, 2, 6},     /* depthwise with channel multiplier 2 */
      {2, 8, 7, 5, 6, 1, 1, 0, 1, 2},       /* grouped 1x1 */
      {1, 4, 12, 13, 5, 5, 3, 1, 1, 1},     /* 5x5 stride 3, last window partially outside */
      /* channels in whole blocks of 16 (oneDNN's blocked weights, several blocks of each), dilated
       * as r18/r50 layer3/4, and a 5x5 */
      {2, 48, 9, 7, 32, 3, 1, 2, 2, 1},
      {1, 32, 8, 8, 64, 5, 1, 2, 1, 1},
  };
  check_cases_against_naive(path, cases, sizeof cases / sizeof cases[0]);
}

TEST(gemm_matches_naive_reference) { check_against_naive(CONV2D_PATH_GEMM); }

/* The 3-wide depthwise forward sums from a copy of each plane with its column padding written out
 * (conv2d.c): maps narrower than the kernel's reach, paddings beyond the dilation and none,
 * strides 1-3 (1 and 2 have their own loops), dilations 1-4 (MobileNetV2's d8 stages), a channel
 * multiplier of 2 (one copy read by two outputs), a last window partly outside and 1-row maps;
 * forward and both gradients against the definition (sums of at most 9 products: 2e-5). */
TEST(depthwise_3wide_matches_naive_reference) {
  const conv_case cases[] = {
      {2, 8, 32, 32, 8, 3, 1, 4, 4, 8},   /* deeplabv3-mbv2's d4 layers at 256x256 */
      {2, 6, 17, 15, 6, 3, 2, 1, 1, 6},   /* stride 2, odd sizes */
      {1, 4, 9, 10, 4, 3, 1, 0, 1, 4},    /* no padding */
      {1, 4, 6, 7, 8, 3, 1, 3, 2, 4},     /* padding 3 > dilation 2, multiplier 2 */
      {2, 3, 5, 4, 3, 3, 1, 4, 4, 3},     /* reach past the map on both sides */
      {1, 5, 1, 9, 5, 3, 1, 1, 1, 5},     /* one-row map */
      {1, 5, 11, 12, 5, 3, 3, 2, 1, 5},   /* stride 3 (the generic loop) */
      {1, 4, 13, 9, 4, 3, 2, 2, 2, 4},    /* stride 2, dilation 2 */
  };
  check_cases_against_naive(CONV2D_PATH_GEMM, cases, sizeof cases / sizeof cases[0]);
}
TEST(dnnl_matches_naive_reference) { check_against_naive(CONV2D_PATH_DNNL); }

/* ---- finite differences ---- */

static hakd_tensor *build_conv(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const conv_case *cc = arg;
  return hakd_conv2d(ctx, in[0], in[1], in[2], cc->stride, cc->pad, cc->dilation, cc->groups);
}

/* conv2d is linear in each input, so central differences have no truncation error; what is left
 * is fp32 rounding of the outputs, ~sqrt(#outputs) * 6e-8 * |y| / (2 eps) ~ 1e-5 with eps 0.05.
 * atol 5e-4 and rtol 1e-3 are well above that and far below a wrong gradient (O(0.1)). */
static void gradcheck_conv(conv2d_path path) {
  const conv_case cases[] = {
      {2, 4, 6, 5, 4, 3, 2, 1, 1, 2},  /* groups 2, stride 2 */
      {1, 3, 7, 7, 3, 3, 1, 2, 2, 3},  /* depthwise, dilation 2 */
      {1, 2, 9, 8, 3, 7, 4, 3, 1, 1},  /* 7x7 stride 4 */
      {2, 3, 4, 4, 2, 1, 1, 0, 1, 1},  /* 1x1 */
  };
  conv2d_set_path(path);
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    const conv_case *cc = &cases[t];
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[4] = {cc->n, cc->cin, cc->h, cc->w}, ws[4] = {cc->cout, cc->cin / cc->groups, cc->k, cc->k};
    int64_t bs[1] = {cc->cout};
    hakd_tensor *in[3] = {gradcheck_input(&p, "x", 4, xs, 1.0f, 10 + t), gradcheck_input(&p, "w", 4, ws, 0.5f, 20 + t),
                          gradcheck_input(&p, "b", 1, bs, 1.0f, 30 + t)};
    char what[64];
    snprintf(what, sizeof what, "conv2d case %zu (%s)", t, path_name(path));
    gradcheck(what, build_conv, (void *)cc, in, 3, 0.05, 5e-4, 1e-3, 40);
    hakd_params_free(&p);
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
}

TEST(gradcheck_gemm) { gradcheck_conv(CONV2D_PATH_GEMM); }
TEST(gradcheck_dnnl) { gradcheck_conv(CONV2D_PATH_DNNL); }

/* ---- path selection, memory, errors ---- */

TEST(env_selects_path_and_rejects_unknown) {
  const conv_case cc = {1, 2, 5, 5, 2, 3, 1, 1, 1, 1};
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {1, 2, 5, 5}, ws[4] = {2, 2, 3, 3};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 1), *w = gradcheck_input(&p, "w", 4, ws, 1.0f, 2);
  hakd_ctx *ctx = hakd_ctx_new();
  setenv("HAKD_CONV", "dnnl", 1);
  ASSERT_EQ_INT(conv2d_get_path(), CONV2D_PATH_DNNL);
  setenv("HAKD_CONV", "gemm", 1);
  ASSERT_EQ_INT(conv2d_get_path(), CONV2D_PATH_GEMM);
  conv2d_set_path(CONV2D_PATH_DNNL); /* the setter overrides the environment */
  ASSERT_EQ_INT(conv2d_get_path(), CONV2D_PATH_DNNL);
  conv2d_set_path(CONV2D_PATH_AUTO);
  setenv("HAKD_CONV", "fast", 1);
  ASSERT_TRUE(hakd_conv2d(ctx, x, w, NULL, cc.stride, cc.pad, cc.dilation, cc.groups) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "HAKD_CONV=fast") != NULL);
  unsetenv("HAKD_CONV");
  ASSERT_EQ_INT(conv2d_get_path(), CONV2D_PATH_AUTO);
  hakd_ctx_reset(ctx);
  hakd_tensor *y = hakd_conv2d(ctx, x, w, NULL, cc.stride, cc.pad, cc.dilation, cc.groups);
  ASSERT_TRUE(y != NULL);
  ASSERT_OK(hakd_backward(ctx, y));
  /* The auto rule: depthwise and 1x1 on gemm, other kernels on oneDNN; in bf16 all but
   * depthwise on oneDNN. */
  conv2d_shape dense = {.n = 1, .cin = 2, .h = 5, .w = 5, .cout = 2, .kh = 3, .kw = 3, .oh = 5, .ow = 5,
                        .stride = 1, .pad = 1, .dilation = 1, .groups = 1};
  conv2d_shape depthwise = {.n = 1, .cin = 8, .h = 5, .w = 5, .cout = 8, .kh = 3, .kw = 3, .oh = 5, .ow = 5,
                            .stride = 1, .pad = 1, .dilation = 1, .groups = 8, .has_bias = 1};
  conv2d_shape pointwise_s2 = {.n = 1, .cin = 8, .h = 5, .w = 5, .cout = 4, .kh = 1, .kw = 1, .oh = 3, .ow = 3,
                               .stride = 2, .pad = 0, .dilation = 1, .groups = 1};
  ASSERT_EQ_INT(conv2d_auto_path(&dense), CONV2D_PATH_DNNL);
  ASSERT_EQ_INT(conv2d_auto_path(&depthwise), CONV2D_PATH_GEMM);
  /* 1x1 on oneDNN when the environment holds OpenBLAS to narrower kernels (scripts/test-kernels.sh) */
  ASSERT_EQ_INT(conv2d_auto_path(&pointwise_s2), conv2d_blas_full_width() ? CONV2D_PATH_GEMM : CONV2D_PATH_DNNL);
  pointwise_s2.bf16 = 1;
  ASSERT_EQ_INT(conv2d_auto_path(&pointwise_s2), CONV2D_PATH_DNNL);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* After the first step, forward + backward of a small conv net allocates nothing on either path:
 * neither in the arena nor in the conv scratch block, which stays the size of the largest
 * single call instead of growing with the number of layers. */
static void check_steady_state(conv2d_path path) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 3, 32, 32}, w1s[4] = {16, 3, 7, 7}, w2s[4] = {16, 1, 3, 3}, w3s[4] = {8, 16, 1, 1}, bs[1] = {16};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 1), *w1 = gradcheck_input(&p, "w1", 4, w1s, 0.1f, 2);
  hakd_tensor *w2 = gradcheck_input(&p, "w2", 4, w2s, 0.1f, 3), *w3 = gradcheck_input(&p, "w3", 4, w3s, 0.1f, 4);
  hakd_tensor *b1 = gradcheck_input(&p, "b1", 1, bs, 0.1f, 5);
  hakd_ctx *ctx = hakd_ctx_new();
  conv2d_set_path(path);
  uint64_t mallocs[4], growths[4];
  for (int step = 0; step < 4; step++) {
    hakd_ctx_reset(ctx);
    hakd_tensor *h = hakd_conv2d(ctx, x, w1, b1, 4, 3, 1, 1);
    h = hakd_conv2d(ctx, h, w2, NULL, 1, 1, 1, 16);
    h = hakd_conv2d(ctx, h, w3, NULL, 1, 0, 1, 1);
    ASSERT_TRUE(h != NULL);
    ASSERT_OK(hakd_backward(ctx, h));
    mallocs[step] = hakd_ctx_get_stats(ctx).arena_mallocs;
    growths[step] = ops_scratch_growths();
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
  ASSERT_EQ_INT(mallocs[2], mallocs[1]);
  ASSERT_EQ_INT(mallocs[3], mallocs[1]);
  ASSERT_EQ_INT(growths[1], growths[0]);
  ASSERT_EQ_INT(growths[3], growths[0]);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

TEST(steady_state_does_not_malloc_gemm) { check_steady_state(CONV2D_PATH_GEMM); }
TEST(steady_state_does_not_malloc_dnnl) { check_steady_state(CONV2D_PATH_DNNL); }

TEST(rejects_bad_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[4] = {1, 4, 5, 5}, w_bad_groups[4] = {4, 3, 3, 3}, w_ok[4] = {6, 2, 3, 3}, w_big[4] = {2, 4, 9, 9};
  int64_t b_bad[1] = {5};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_conv2d(ctx, x, hakd_tensor_zeros(ctx, HAKD_F32, 4, w_bad_groups), NULL, 1, 1, 1, 2) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "groups 2") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_conv2d(ctx, x, hakd_tensor_zeros(ctx, HAKD_F32, 4, w_ok), hakd_tensor_zeros(ctx, HAKD_F32, 1, b_bad),
                          1, 1, 1, 2) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "bias (5)") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_conv2d(ctx, x, hakd_tensor_zeros(ctx, HAKD_F32, 4, w_big), NULL, 1, 1, 1, 1) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "larger than padded input") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_conv2d(ctx, x, hakd_tensor_zeros(ctx, HAKD_F32, 4, w_ok), NULL, 0, 1, 1, 2) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "stride 0") != NULL);
  hakd_ctx_free(ctx);
}

/* The fused inference op equals conv2d -> per-channel affine -> + residual -> activation done
 * op by op, on both paths; folding the affine into the weights changes only the rounding
 * (sums of 72 products: 1e-5 of the largest value). */
TEST(affine_act_equals_the_ops_one_by_one) {
  const conv2d_path paths[2] = {CONV2D_PATH_GEMM, CONV2D_PATH_DNNL};
  const hakd_activation acts[3] = {HAKD_ACT_NONE, HAKD_ACT_RELU, HAKD_ACT_RELU6};
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 8, 9, 7}, ws[4] = {6, 8, 3, 3}, cs[1] = {6}, ys[4] = {2, 6, 9, 7};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 1), *w = hakd_params_add(&p, "w", 4, ws, 1);
  hakd_tensor *b = hakd_params_add(&p, "b", 1, cs, 1), *scale = hakd_params_add(&p, "s", 1, cs, 1);
  hakd_tensor *shift = hakd_params_add(&p, "t", 1, cs, 1), *res = hakd_params_add(&p, "r", 4, ys, 1);
  fill_normal(hakd_f32(x), hakd_numel(x), 2.0f, 1);
  fill_normal(hakd_f32(w), hakd_numel(w), 0.5f, 2);
  fill_normal(hakd_f32(b), 6, 1.0f, 3);
  fill_normal(hakd_f32(scale), 6, 1.0f, 4);
  fill_normal(hakd_f32(shift), 6, 1.0f, 5);
  fill_normal(hakd_f32(res), hakd_numel(res), 2.0f, 6);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  for (int pi = 0; pi < 2; pi++) {
    conv2d_set_path(paths[pi]);
    for (int a = 0; a < 3; a++)
      for (int with_res = 0; with_res < 2; with_res++) {
        hakd_ctx_reset(ctx);
        hakd_tensor *r = with_res ? res : NULL;
        hakd_tensor *fused = hakd_conv2d_affine_act(ctx, x, w, b, scale, shift, r, acts[a], 1, 1, 1, 1);
        hakd_tensor *y = hakd_conv2d(ctx, x, w, b, 1, 1, 1, 1);
        ASSERT_TRUE(fused && y);
        float *yd = hakd_f32(y);
        double max_ref = 1e-6, max_diff = 0;
        for (int64_t i = 0; i < hakd_numel(y); i++) {
          int64_t c = (i / 63) % 6;
          float v = yd[i] * hakd_f32(scale)[c] + hakd_f32(shift)[c] + (r ? hakd_f32(r)[i] : 0.0f);
          if (acts[a] != HAKD_ACT_NONE) v = v < 0 ? 0 : v;
          if (acts[a] == HAKD_ACT_RELU6 && v > 6) v = 6;
          double d = fabs((double)v - hakd_f32(fused)[i]);
          if (!(d <= max_diff)) max_diff = d;
          if (fabs(v) > max_ref) max_ref = fabs(v);
        }
        if (!(max_diff <= 1e-5 * max_ref))
          test_fail(__FILE__, __LINE__, "%s act %d residual %d: max diff %.3g of %.3g", path_name(paths[pi]), a,
                    with_res, max_diff, max_ref);
      }
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
  /* inference only: refused while gradients are recorded for its inputs */
  hakd_ctx_reset(ctx);
  hakd_ctx_set_grad(ctx, 1);
  hakd_tensor *wg = hakd_params_add(&p, "wg", 4, ws, 0);
  ASSERT_TRUE(hakd_conv2d_affine_act(ctx, x, wg, b, scale, shift, NULL, HAKD_ACT_RELU, 1, 1, 1, 1) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "inference only") != NULL);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* A chain of residual blocks in bf16 inference: x -> to_bf16_blocked -> [conv+BN+ReLU ->
 * conv+BN + shortcut + ReLU/ReLU6] x 3 -> to_f32. Every intermediate stays blocked bfloat16 (24
 * channels: the last block of 16 is padded), the residual and activation run as oneDNN post-ops,
 * and the result equals the same chain in fp32 within bf16 rounding: each product rounds its
 * operands (2^-9 relative each) and the blocked activations are stored rounded, so through six
 * convolutions the error is ~1% of max|fp32|; 3% still catches a wrong layout, residual or
 * activation (errors of order 1). A float32 residual into a blocked output is converted. */
TEST(bf16_residual_chain_stays_blocked) {
  hakd_params p;
  hakd_params_init(&p);
  enum { C = 24, BLOCKS = 3 };
  int64_t xs[4] = {2, C, 10, 9}, ws[4] = {C, C, 3, 3}, cs[1] = {C};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 1), *w[2 * BLOCKS], *scale[2 * BLOCKS], *shift[2 * BLOCKS];
  fill_normal(hakd_f32(x), hakd_numel(x), 1.0f, 11);
  for (int i = 0; i < 2 * BLOCKS; i++) {
    char name[32];
    snprintf(name, sizeof name, "w%d", i);
    w[i] = hakd_params_add(&p, name, 4, ws, 1);
    snprintf(name, sizeof name, "s%d", i);
    scale[i] = hakd_params_add(&p, name, 1, cs, 1);
    snprintf(name, sizeof name, "t%d", i);
    shift[i] = hakd_params_add(&p, name, 1, cs, 1);
    fill_normal(hakd_f32(w[i]), hakd_numel(w[i]), 0.1f, 20 + (uint64_t)i);
    fill_normal(hakd_f32(scale[i]), C, 0.5f, 40 + (uint64_t)i);
    fill_normal(hakd_f32(shift[i]), C, 0.5f, 60 + (uint64_t)i);
  }
  hakd_tensor *out[2] = {NULL, NULL};
  hakd_ctx *ctx[2] = {hakd_ctx_new(), hakd_ctx_new()};
  for (int bf16 = 0; bf16 < 2; bf16++) {
    hakd_ctx *c = ctx[bf16];
    hakd_ctx_set_grad(c, 0);
    hakd_ctx_set_training(c, 0);
    hakd_ctx_set_precision(c, bf16 ? HAKD_BF16 : HAKD_FP32);
    hakd_tensor *h = bf16 ? hakd_to_bf16_blocked(c, x) : x;
    if (bf16 && bf16_refused(c, h, "to_bf16_blocked")) goto done;
    for (int blk = 0; blk < BLOCKS && h; blk++) {
      /* the first block's shortcut is float32 x itself: converted into the output's layout */
      hakd_tensor *shortcut = blk == 0 ? x : h;
      hakd_tensor *y = hakd_conv2d_affine_act(c, h, w[2 * blk], NULL, scale[2 * blk], shift[2 * blk], NULL,
                                              HAKD_ACT_RELU, 1, 1, 1, 1);
      ASSERT_TRUE(y != NULL);
      ASSERT_EQ_INT(y->dtype, bf16 ? HAKD_BF16_BLOCKED : HAKD_F32);
      h = hakd_conv2d_affine_act(c, y, w[2 * blk + 1], NULL, scale[2 * blk + 1], shift[2 * blk + 1], shortcut,
                                 blk == BLOCKS - 1 ? HAKD_ACT_RELU6 : HAKD_ACT_RELU, 1, 1, 1, 1);
      ASSERT_TRUE(h != NULL);
      ASSERT_EQ_INT(h->dtype, bf16 ? HAKD_BF16_BLOCKED : HAKD_F32);
    }
    out[bf16] = hakd_to_f32(c, h);
    ASSERT_TRUE(out[bf16] != NULL && out[bf16]->dtype == HAKD_F32);
    /* an op that needs float32 refuses the blocked layout instead of misreading it (the error
     * stops this context's later ops; out[1] stays readable until the context resets); plain
     * conv2d takes it (bf16 training's chain, tests/test_bf16_train.c) */
    if (bf16) {
      hakd_tensor *conv = hakd_conv2d(c, h, w[0], NULL, 1, 1, 1, 1);
      ASSERT_TRUE(conv != NULL && conv->dtype == HAKD_BF16_BLOCKED);
      ASSERT_TRUE(hakd_batchnorm2d(c, h, NULL, NULL, NULL, NULL, 0.1f, 1e-5f) == NULL &&
                  hakd_ctx_status(c) == HAKD_ESHAPE);
    }
  }
  double err = test_max_rel_err(hakd_f32(out[1]), hakd_f32(out[0]), hakd_numel(out[0]), 1e-6);
  printf("bf16 residual chain: max rel err %.3g vs fp32\n", err);
  ASSERT_TRUE(err > 0 && err <= 0.03);
  float top = 0;
  for (int64_t i = 0; i < hakd_numel(out[1]); i++) top = hakd_f32(out[1])[i] > top ? hakd_f32(out[1])[i] : top;
  ASSERT_TRUE(top <= 6.0f); /* the last ReLU6 */
done:
  hakd_ctx_free(ctx[0]);
  hakd_ctx_free(ctx[1]);
  hakd_params_free(&p);
}

/* On maps small enough that the weights outweigh the output (1x3x3 output of 12 channels,
 * 16x12x3x3 weights), the affine goes into the output pass instead of the weights: the same
 * result up to fp32 rounding (the scale multiplies the sum instead of each product: 1e-5). */
TEST(affine_act_on_small_maps_equals_the_ops_one_by_one) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {1, 16, 3, 3}, ws[4] = {12, 16, 3, 3}, cs[1] = {12}, ys[4] = {1, 12, 3, 3};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 1), *w = hakd_params_add(&p, "w", 4, ws, 1);
  hakd_tensor *b = hakd_params_add(&p, "b", 1, cs, 1), *scale = hakd_params_add(&p, "s", 1, cs, 1);
  hakd_tensor *shift = hakd_params_add(&p, "t", 1, cs, 1), *res = hakd_params_add(&p, "r", 4, ys, 1);
  fill_normal(hakd_f32(x), hakd_numel(x), 2.0f, 11);
  fill_normal(hakd_f32(w), hakd_numel(w), 0.5f, 12);
  fill_normal(hakd_f32(b), 12, 1.0f, 13);
  fill_normal(hakd_f32(scale), 12, 1.0f, 14);
  fill_normal(hakd_f32(shift), 12, 1.0f, 15);
  fill_normal(hakd_f32(res), hakd_numel(res), 2.0f, 16);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  for (int with_res = 0; with_res < 2 && !test_failed(); with_res++) {
    for (int dilation = 1; dilation <= 2; dilation++) { /* dilation 2 pad 2: the tap path */
      hakd_ctx_reset(ctx);
      hakd_tensor *r = with_res ? res : NULL;
      hakd_tensor *fused = hakd_conv2d_affine_act(ctx, x, w, b, scale, shift, r, HAKD_ACT_RELU6, 1, dilation,
                                                  dilation, 1);
      hakd_tensor *y = hakd_conv2d(ctx, x, w, b, 1, dilation, dilation, 1);
      ASSERT_TRUE(fused && y);
      double max_ref = 1e-6, max_diff = 0;
      for (int64_t i = 0; i < hakd_numel(y); i++) {
        int64_t c = i / 9;
        float v = hakd_f32(y)[i] * hakd_f32(scale)[c] + hakd_f32(shift)[c] + (r ? hakd_f32(r)[i] : 0.0f);
        v = v < 0 ? 0 : v > 6 ? 6 : v;
        double d = fabs((double)v - hakd_f32(fused)[i]);
        if (!(d <= max_diff)) max_diff = d;
        if (fabs(v) > max_ref) max_ref = fabs(v);
      }
      if (!(max_diff <= 1e-5 * max_ref))
        test_fail(__FILE__, __LINE__, "residual %d dilation %d: max diff %.3g of %.3g", with_res, dilation, max_diff,
                  max_ref);
    }
  }
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* The float32 kernels apply the affine, residual and activation to the rows they have just
 * written (conv2d.c's epilogue) instead of in a pass of their own: the fused op equals conv2d
 * followed by the ops one by one in the depthwise kernel (folded affine on a 9x7 map, unfolded on
 * 2x2, where the weights outweigh the output) and in the 1x1 GEMM's work items (unfolded on 2x2),
 * each with and without a residual, ReLU6 and none. Folding rounds differently (sums of at most 16
 * products: 1e-5 of the largest value); unfolded, the same operations run in the same order. */
TEST(affine_act_epilogue_in_the_kernels_equals_the_ops_one_by_one) {
  typedef struct {
    int64_t c, cin_g, k, h, w, groups, pad, dilation;
  } epi_case;
  const epi_case cases[] = {
      {12, 1, 3, 9, 7, 12, 2, 2}, /* depthwise, folded */
      {12, 1, 3, 2, 2, 12, 1, 1}, /* depthwise, unfolded */
      {12, 16, 1, 2, 2, 1, 0, 1}, /* 1x1 GEMM, unfolded */
  };
  const hakd_activation acts[2] = {HAKD_ACT_NONE, HAKD_ACT_RELU6};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    const epi_case *ec = &cases[t];
    int64_t cin = ec->cin_g * ec->groups;
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[4] = {2, cin, ec->h, ec->w}, ws[4] = {ec->c, ec->cin_g, ec->k, ec->k}, cs[1] = {ec->c};
    int64_t ys[4] = {2, ec->c, ec->h, ec->w};
    hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 1), *w = hakd_params_add(&p, "w", 4, ws, 1);
    hakd_tensor *b = hakd_params_add(&p, "b", 1, cs, 1), *scale = hakd_params_add(&p, "s", 1, cs, 1);
    hakd_tensor *shift = hakd_params_add(&p, "t", 1, cs, 1), *res = hakd_params_add(&p, "r", 4, ys, 1);
    fill_normal(hakd_f32(x), hakd_numel(x), 2.0f, 21 + t);
    fill_normal(hakd_f32(w), hakd_numel(w), 0.5f, 22 + t);
    fill_normal(hakd_f32(b), ec->c, 1.0f, 23 + t);
    fill_normal(hakd_f32(scale), ec->c, 1.0f, 24 + t);
    fill_normal(hakd_f32(shift), ec->c, 1.0f, 25 + t);
    fill_normal(hakd_f32(res), hakd_numel(res), 2.0f, 26 + t);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_grad(ctx, 0);
    for (int a = 0; a < 2 && !test_failed(); a++)
      for (int with_res = 0; with_res < 2; with_res++) {
        hakd_ctx_reset(ctx);
        hakd_tensor *r = with_res ? res : NULL;
        hakd_tensor *fused = hakd_conv2d_affine_act(ctx, x, w, b, scale, shift, r, acts[a], 1, (int)ec->pad,
                                                    (int)ec->dilation, (int)ec->groups);
        hakd_tensor *y = hakd_conv2d(ctx, x, w, b, 1, (int)ec->pad, (int)ec->dilation, (int)ec->groups);
        ASSERT_TRUE(fused && y);
        ASSERT_TRUE(hakd_same_shape(fused, res));
        int64_t plane = ec->h * ec->w;
        double max_ref = 1e-6, max_diff = 0;
        for (int64_t i = 0; i < hakd_numel(y); i++) {
          int64_t c = i / plane % ec->c;
          float v = hakd_f32(y)[i] * hakd_f32(scale)[c] + hakd_f32(shift)[c] + (r ? hakd_f32(r)[i] : 0.0f);
          if (acts[a] == HAKD_ACT_RELU6) v = v < 0 ? 0 : v > 6 ? 6 : v;
          double d = fabs((double)v - hakd_f32(fused)[i]);
          if (!(d <= max_diff)) max_diff = d;
          if (fabs(v) > max_ref) max_ref = fabs(v);
        }
        if (!(max_diff <= 1e-5 * max_ref))
          test_fail(__FILE__, __LINE__, "case %zu act %d residual %d: max diff %.3g of %.3g", t, a, with_res, max_diff,
                    max_ref);
      }
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
}

/* Wide-padded dilated convolutions on blocked bfloat16 (conv2d_regions.c: padding >= 9, the ASPP
 * branches) run tap by tap over only the outputs where each tap reads the map. At shapes where
 * taps fall into padding partly (rate 12 on 20x30), on one axis wholly (rate 24: only the centre
 * row of taps reads a 20-row map) and on both (rate 40: the centre tap alone), the result equals
 * the full convolution: a double-precision naive one over the same bfloat16-rounded x, weights and
 * residual (what the products read), with bias, residual and ReLU. The outputs are stored as
 * bfloat16 (2^-9 relative) after float32 sums of 360 products, so 1% of max|ref| is 2.5x the
 * rounding, while a missed, doubled or shifted tap gives errors of order 10%. 24 output channels
 * leave the last block of 16 padded. */
TEST(bf16_wide_padding_taps_equal_full_convolution) {
  static const int rates[3] = {12, 24, 40};
  for (int ri = 0; ri < 3; ri++) {
    conv_case cc = {2, 40, 20, 30, 24, 3, 1, rates[ri], rates[ri], 1};
    hakd_params p;
    hakd_tensor *x, *w, *b;
    case_operands(&p, &cc, (size_t)ri, &x, &w, &b);
    int64_t cs[1] = {cc.cout}, rs[4] = {cc.n, cc.cout, cc.h, cc.w};
    hakd_tensor *ones = hakd_params_add(&p, "ones", 1, cs, 1), *res = hakd_params_add(&p, "res", 4, rs, 1);
    for (int i = 0; i < cc.cout; i++) hakd_f32(ones)[i] = 1.0f;
    fill_normal(hakd_f32(res), hakd_numel(res), 1.0f, 77);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_grad(ctx, 0);
    hakd_ctx_set_training(ctx, 0);
    hakd_ctx_set_precision(ctx, HAKD_BF16);
    hakd_tensor *xb = hakd_to_bf16_blocked(ctx, x);
    if (bf16_refused(ctx, xb, "to_bf16_blocked")) {
      hakd_ctx_free(ctx);
      hakd_params_free(&p);
      return;
    }
    /* scale 1, shift = bias: the folded weights are w itself */
    hakd_tensor *y = hakd_conv2d_affine_act(ctx, xb, w, NULL, ones, b, res, HAKD_ACT_RELU, 1, cc.pad, cc.dilation, 1);
    ASSERT_TRUE(y != NULL && y->dtype == HAKD_BF16_BLOCKED);
    hakd_tensor *yf = hakd_to_f32(ctx, y);
    ASSERT_TRUE(yf != NULL);
    int64_t nx = hakd_numel(x), nw = hakd_numel(w), ny = hakd_numel(yf);
    float *xr = malloc(sizeof(float) * (size_t)nx), *wr = malloc(sizeof(float) * (size_t)nw);
    float *gy = calloc((size_t)ny, sizeof(float));
    double *want = malloc(sizeof(double) * (size_t)ny), *dx = malloc(sizeof(double) * (size_t)nx);
    double *dw = malloc(sizeof(double) * (size_t)nw), *db = malloc(sizeof(double) * (size_t)cc.cout);
    ASSERT_TRUE(xr && wr && gy && want && dx && dw && db);
    for (int64_t i = 0; i < nx; i++) xr[i] = round_bf16(hakd_f32(x)[i]);
    for (int64_t i = 0; i < nw; i++) wr[i] = round_bf16(hakd_f32(w)[i]);
    naive_conv(want, dx, dw, db, xr, wr, hakd_f32(b), gy, &cc);
    for (int64_t i = 0; i < ny; i++) {
      double v = want[i] + round_bf16(hakd_f32(res)[i]);
      want[i] = v > 0 ? v : 0;
    }
    double err = max_rel_err_d(hakd_f32(yf), want, ny);
    printf("bf16 dilation %d on 20x30 (taps in padding skipped): max rel err %.3g vs the full convolution\n",
           rates[ri], err);
    ASSERT_TRUE(err <= 0.01);
    free(xr), free(wr), free(gy), free(want), free(dx), free(dw), free(db);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
}
