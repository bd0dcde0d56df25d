/* resize_bilinear / resize_nearest against F.interpolate (tools/gen_ops_conv.py), PyTorch's nearest
 * rule at non-integer ratios, int32 label maps, and finite differences. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "op_fixture.h"
#include "hakd/io.h"
#include "hakd/ops.h"

/* Bilinear outputs are 4 products summed (and each input gradient a handful): with the same
 * float source coordinates as PyTorch the results differ by at most a couple of ulps (~2e-7 of
 * the largest value); 1e-6 still fails on any wrong index or weight (errors O(0.1)). Nearest is a
 * copy: exact. */
#define BILINEAR_TOL 1e-6

static void check_float_cases(const char *mode) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/resize.safetensors"), &f));
  char cases[OP_FIXTURE_MAX_CASES][48];
  int n_cases = op_fixture_cases(f, "cases", cases, OP_FIXTURE_MAX_CASES), checked = 0;
  int bilinear = strcmp(mode, "bilinear") == 0;
  for (int i = 0; i < n_cases && !test_failed(); i++) {
    const char *c = cases[i];
    if (strncmp(c, mode, strlen(mode)) != 0) continue;
    int64_t prm[3];
    if (!op_fixture_ints(f, c, prm, 3)) break;
    hakd_params p;
    hakd_params_init(&p);
    hakd_tensor *x = op_fixture_param(&p, f, c, "x", 0);
    int64_t ngy = 0;
    float *gy = op_fixture_floats(f, c, "gy", &ngy);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *y = bilinear ? hakd_resize_bilinear(ctx, x, prm[0], prm[1], (int)prm[2])
                              : hakd_resize_nearest(ctx, x, prm[0], prm[1]);
    double tol = bilinear ? BILINEAR_TOL : 0.0;
    if (!y) test_fail(__FILE__, __LINE__, "%s: resize failed: %s", c, hakd_error_message());
    int ok = y && gy && ngy == hakd_numel(y) && op_fixture_check(f, c, "y", hakd_f32(y), hakd_numel(y), tol);
    if (ok && hakd_backward_seeded(ctx, y, gy) != 0) {
      test_fail(__FILE__, __LINE__, "%s: backward failed: %s", c, hakd_error_message());
      ok = 0;
    }
    /* nearest gradients sum several dy per input in another order than PyTorch: a few ulps */
    ok = ok && op_fixture_check(f, c, "gx", x->grad, hakd_numel(x), bilinear ? BILINEAR_TOL : 1e-6);
    checked += ok;
    free(gy);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
  ASSERT_TRUE(checked >= 4);
  hakd_st_close(f);
}

TEST(bilinear_matches_torch_both_align_modes) { check_float_cases("bilinear"); }
TEST(nearest_float_matches_torch) { check_float_cases("nearest"); }

TEST(nearest_labels_match_torch) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/resize.safetensors"), &f));
  char cases[OP_FIXTURE_MAX_CASES][48];
  int n_cases = op_fixture_cases(f, "label_cases", cases, OP_FIXTURE_MAX_CASES);
  ASSERT_EQ_INT(n_cases, 4);
  hakd_ctx *ctx = hakd_ctx_new();
  for (int i = 0; i < n_cases; i++) {
    const char *c = cases[i];
    int64_t prm[3];
    if (!op_fixture_ints(f, c, prm, 3)) break;
    const hakd_st_tensor *tx = op_fixture_find(f, c, "x"), *ty = op_fixture_find(f, c, "y");
    ASSERT_TRUE(tx && ty);
    hakd_tensor *x = hakd_tensor_new(ctx, HAKD_I32, tx->ndim, tx->shape);
    int64_t nx = hakd_numel(x), ny = 1;
    for (int d = 0; d < ty->ndim; d++) ny *= ty->shape[d];
    int64_t *buf = malloc((size_t)(nx > ny ? nx : ny) * sizeof(int64_t));
    ASSERT_OK(hakd_st_read_i64(f, tx->name, buf, nx));
    for (int64_t k = 0; k < nx; k++) hakd_i32(x)[k] = (int32_t)buf[k];
    hakd_tensor *y = hakd_resize_nearest(ctx, x, prm[0], prm[1]);
    ASSERT_TRUE(y != NULL);
    ASSERT_EQ_INT(y->dtype, HAKD_I32);
    ASSERT_EQ_INT(y->ndim, ty->ndim);
    ASSERT_EQ_INT(hakd_numel(y), ny);
    ASSERT_OK(hakd_st_read_i64(f, ty->name, buf, ny));
    int64_t mismatches = 0;
    for (int64_t k = 0; k < ny; k++) mismatches += hakd_i32(y)[k] != buf[k];
    free(buf);
    if (mismatches) test_fail(__FILE__, __LINE__, "%s: %lld labels differ from PyTorch", c, (long long)mismatches);
  }
  hakd_ctx_free(ctx);
  hakd_st_close(f);
}

/* PyTorch's rule src = min(floor(dst * (float)(in/out)), in-1), spelled out for 7 -> 3 and 3 -> 7. */
TEST(nearest_rule_at_non_integer_ratios) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t s7[3] = {1, 1, 7}, s3[3] = {1, 1, 3};
  hakd_tensor *a = hakd_tensor_new(ctx, HAKD_I32, 3, s7), *b = hakd_tensor_new(ctx, HAKD_I32, 3, s3);
  for (int i = 0; i < 7; i++) hakd_i32(a)[i] = i;
  for (int i = 0; i < 3; i++) hakd_i32(b)[i] = i;
  hakd_tensor *down = hakd_resize_nearest(ctx, a, 1, 3), *up = hakd_resize_nearest(ctx, b, 1, 7);
  ASSERT_TRUE(down && up);
  const int32_t want_down[3] = {0, 2, 4};             /* floor(0, 2.33, 4.67) */
  const int32_t want_up[7] = {0, 0, 0, 1, 1, 2, 2};   /* floor(k * 0.4286) */
  for (int i = 0; i < 3; i++) ASSERT_EQ_INT(hakd_i32(down)[i], want_down[i]);
  for (int i = 0; i < 7; i++) ASSERT_EQ_INT(hakd_i32(up)[i], want_up[i]);
  hakd_ctx_free(ctx);
}

/* Source position of output index o along an axis, in float as the library and PyTorch compute
 * it: i0, i1 and the weight l1 of i1. */
static void bilinear_source(int64_t o, int64_t in, int64_t out, int align_corners, int64_t *i0, int64_t *i1, float *l1) {
  if (in == out) {
    *i0 = *i1 = o;
    *l1 = 0.0f;
    return;
  }
  float scale = align_corners ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
  float src = align_corners ? scale * (float)o : scale * ((float)o + 0.5f) - 0.5f;
  if (src < 0.0f) src = 0.0f;
  *i0 = (int64_t)src;
  *i1 = *i0 + (*i0 < in - 1 ? 1 : 0);
  float w = src - (float)*i0;
  *l1 = w < 0.0f ? 0.0f : (w > 1.0f ? 1.0f : w);
}

/* Rows wider than the kernels' 512-column chunks, up and down, both align modes, and an output
 * large enough to be streamed: the forward against the interpolation formula evaluated directly
 * in double, the backward by the adjoint identity sum(y * g) == sum(x * dx) (both in double). Inputs and g ~N(0,1): outputs differ from
 * the double formula by a few ulps (< 1e-5); the two dot products by float rounding of O(1) terms,
 * ~1e-7 * sqrt(terms), so 1e-5 * sqrt(outputs) is ample. A wrong tap or a lost chunk gives O(0.1)
 * per output and O(10) in the dot products. */
TEST(bilinear_wide_rows_match_direct_formula) {
  /* h, w, oh, ow; the last output is 16 MiB, written with non-temporal stores from unaligned rows */
  const int64_t cases[4][4] = {{5, 300, 9, 1100}, {6, 1200, 4, 530}, {3, 700, 3, 1030}, {6, 40, 2048, 1030}};
  for (int t = 0; t < 4 && !test_failed(); t++)
    for (int ac = 0; ac < 2 && !test_failed(); ac++) {
      int64_t h = cases[t][0], w = cases[t][1], oh = cases[t][2], ow = cases[t][3];
      hakd_params p;
      hakd_params_init(&p);
      int64_t xs[4] = {1, 2, h, w};
      hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 31 + t);
      hakd_ctx *ctx = hakd_ctx_new();
      hakd_tensor *y = hakd_resize_bilinear(ctx, x, oh, ow, ac);
      ASSERT_TRUE(y != NULL);
      int64_t ny = hakd_numel(y), nx = hakd_numel(x);
      float *g = malloc((size_t)ny * sizeof *g);
      uint64_t rng = hakd_rng_seed(77 + t);
      for (int64_t k = 0; k < ny; k++) g[k] = hakd_rng_normal(&rng);
      double worst = 0.0, y_dot_g = 0.0;
      for (int64_t c = 0; c < 2; c++)
        for (int64_t i = 0; i < oh; i++)
          for (int64_t j = 0; j < ow; j++) {
            int64_t a0, a1, b0, b1;
            float lh, lw;
            bilinear_source(i, h, oh, ac, &a0, &a1, &lh);
            bilinear_source(j, w, ow, ac, &b0, &b1, &lw);
            const float *xp = hakd_f32(x) + c * h * w;
            double want = (1.0 - lh) * ((1.0 - lw) * xp[a0 * w + b0] + lw * (double)xp[a0 * w + b1]) +
                          lh * ((1.0 - lw) * xp[a1 * w + b0] + lw * (double)xp[a1 * w + b1]);
            int64_t k = (c * oh + i) * ow + j;
            double err = fabs(hakd_f32(y)[k] - want);
            if (err > worst) worst = err;
            y_dot_g += (double)hakd_f32(y)[k] * g[k];
          }
      ASSERT_TRUE(worst < 1e-5);
      ASSERT_OK(hakd_backward_seeded(ctx, y, g));
      double x_dot_dx = 0.0;
      for (int64_t k = 0; k < nx; k++) x_dot_dx += (double)hakd_f32(x)[k] * x->grad[k];
      ASSERT_NEAR(x_dot_dx, y_dot_g, 1e-5 * sqrt((double)ny));
      free(g);
      hakd_ctx_free(ctx);
      hakd_params_free(&p);
    }
}

/* ---- finite differences ---- */

typedef struct {
  int64_t oh, ow;
  int mode; /* 0 nearest, 1 bilinear, 2 bilinear align_corners */
} resize_arg;

static hakd_tensor *build_resize(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const resize_arg *a = arg;
  if (a->mode) return hakd_resize_bilinear(ctx, in[0], a->oh, a->ow, a->mode == 2);
  return hakd_resize_nearest(ctx, in[0], a->oh, a->ow);
}

/* Resizing is linear in x: central differences are exact up to fp32 rounding of the outputs,
 * ~sqrt(#outputs) * 6e-8 / (2 eps) ~ 1e-5 with eps 0.05; atol 2e-4 + rtol 1e-3 is above that. */
TEST(gradcheck_resize) {
  const resize_arg cases[] = {{7, 9, 1}, {3, 2, 1}, {7, 9, 2}, {2, 3, 2}, {7, 9, 0}, {3, 2, 0}};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[4] = {2, 2, 4, 5};
    hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 5 + t);
    char what[64];
    snprintf(what, sizeof what, "resize mode %d to %lldx%lld", cases[t].mode, (long long)cases[t].oh,
             (long long)cases[t].ow);
    gradcheck(what, build_resize, (void *)&cases[t], &x, 1, 0.05, 2e-4, 1e-3, 80);
    hakd_params_free(&p);
  }
}

TEST(rejects_bad_inputs) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t s3[3] = {1, 4, 4}, s4[4] = {1, 1, 4, 4};
  ASSERT_TRUE(hakd_resize_bilinear(ctx, hakd_tensor_zeros(ctx, HAKD_F32, 3, s3), 8, 8, 0) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "(N, C, H, W)") != NULL);
  hakd_ctx_reset(ctx);
  ASSERT_TRUE(hakd_resize_nearest(ctx, hakd_tensor_zeros(ctx, HAKD_F32, 3, s3), 8, 8) == NULL);
  hakd_ctx_reset(ctx);
  ASSERT_TRUE(hakd_resize_bilinear(ctx, hakd_tensor_zeros(ctx, HAKD_F32, 4, s4), 0, 8, 0) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "must be positive") != NULL);
  hakd_ctx_free(ctx);
}
