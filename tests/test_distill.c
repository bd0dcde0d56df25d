/* Distillation losses against PyTorch (tools/gen_distill.py), finite differences, KEM weight
 * properties, the distiller end to end on two tiny heterogeneous models, and the `hakd loss` CLI. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "distill/distill_internal.h"
#include "gradcheck.h"
#include "hakd/distill.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/ops.h"
#include "harness.h"

/* Fixture values are float64 PyTorch results of float32 inputs; the C losses accumulate in
 * double, so the value agrees to float rounding of the inputs' derived quantities (1e-4 is
 * ~100x that). Gradients are float32 per element: normalised max error 1e-3. */
#define VALUE_TOL 1e-4
#define GRAD_TOL 1e-3
/* KEM weights are exp of energies computed in double from float logits: 1e-4 relative. */
#define WEIGHT_TOL 1e-4

/* ---- fixture helpers ---- */

static hakd_tensor *load_tensor(hakd_ctx *ctx, const hakd_st_file *f, const char *name, hakd_dtype dtype) {
  const hakd_st_tensor *info = hakd_st_find(f, name);
  if (!info) {
    test_fail(__FILE__, __LINE__, "fixture %s lacks %s", hakd_st_path(f), name);
    return NULL;
  }
  hakd_tensor *t = hakd_tensor_new(ctx, dtype, info->ndim, info->shape);
  if (!t) return NULL;
  int64_t n = hakd_numel(t);
  if (dtype == HAKD_F32) {
    if (hakd_st_read_f32(f, name, hakd_f32(t), n)) return NULL;
  } else {
    int64_t *tmp = malloc((size_t)(n ? n : 1) * sizeof *tmp);
    int rc = hakd_st_read_i64(f, name, tmp, n);
    for (int64_t i = 0; i < n && !rc; i++) hakd_i32(t)[i] = (int32_t)tmp[i];
    free(tmp);
    if (rc) return NULL;
  }
  return t;
}

/* Splits the fixture's "cases" metadata into names[]; returns the count. */
static int fixture_cases(const hakd_st_file *f, char names[][64], int max) {
  const char *list = hakd_st_metadata(f, "cases");
  int n = 0;
  while (list && *list && n < max) {
    const char *end = strchr(list, ',');
    size_t len = end ? (size_t)(end - list) : strlen(list);
    snprintf(names[n++], 64, "%.*s", (int)len, list);
    list = end ? end + 1 : NULL;
  }
  return n;
}

static const char *key(const char *c, const char *suffix) {
  static char buf[128];
  snprintf(buf, sizeof buf, "%s.%s", c, suffix);
  return buf;
}

/* Runs every HeteroAKD case of one fixture file: value, gradient and KEM weights. */
static void check_hakd_fixture(const char *rel, int expected_cases) {
  hakd_st_file *f = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path(rel), &f));
  char cases[32][64];
  int n = fixture_cases(f, cases, 32);
  ASSERT_EQ_INT(n, expected_cases);
  for (int i = 0; i < n && !test_failed(); i++) {
    const char *c = cases[i];
    hakd_ctx *ctx = hakd_ctx_new();
    int64_t params[5];
    hakd_tensor *z_s = load_tensor(ctx, f, "z_s", HAKD_F32);
    hakd_tensor *z_t = load_tensor(ctx, f, hakd_st_find(f, key(c, "z_t")) ? key(c, "z_t") : "z_t", HAKD_F32);
    hakd_tensor *labels = load_tensor(ctx, f, "labels", HAKD_I32);
    hakd_tensor *want_loss = load_tensor(ctx, f, key(c, "loss"), HAKD_F32);
    hakd_tensor *want_grad = load_tensor(ctx, f, key(c, "grad"), HAKD_F32);
    hakd_tensor *want_w = load_tensor(ctx, f, key(c, "weights"), HAKD_F32);
    int rc = hakd_st_read_i64(f, key(c, "params"), params, 5);
    if (!z_s || !z_t || !labels || !want_loss || !want_grad || !want_w || rc) {
      test_fail(__FILE__, __LINE__, "case %s: fixture incomplete: %s", c, hakd_error_message());
      hakd_ctx_free(ctx);
      break;
    }
    hakd_hakd_loss_options o;
    hakd_hakd_loss_options_default(&o);
    o.reliability = params[0] ? HAKD_RELIABILITY_BCE : HAKD_RELIABILITY_CE;
    o.kem_axis = params[1] ? HAKD_KEM_AXIS_CLASS : HAKD_KEM_AXIS_SPATIAL;
    o.no_kmm = (int)params[2];
    o.no_kem = (int)params[3];
    o.T = (float)params[4];
    z_s->requires_grad = 1;
    hakd_tensor *w = NULL;
    hakd_tensor *loss = hakd_loss_hakd(ctx, z_s, z_t, labels, &o, &w);
    if (!loss || hakd_backward(ctx, loss)) {
      test_fail(__FILE__, __LINE__, "case %s: %s", c, hakd_error_message());
    } else {
      double got = hakd_f32(loss)[0], want = hakd_f32(want_loss)[0];
      double rel = fabs(got - want) / fmax(fabs(want), 1e-6);
      double gerr = test_max_rel_err(z_s->grad, hakd_f32(want_grad), hakd_numel(want_grad), 1e-6);
      double werr = hakd_same_shape(w, want_w) ? test_max_rel_err(hakd_f32(w), hakd_f32(want_w), hakd_numel(w), 1e-6)
                                               : INFINITY;
      if (!(rel <= VALUE_TOL) || !(gerr <= GRAD_TOL) || !(werr <= WEIGHT_TOL))
        test_fail(__FILE__, __LINE__, "case %s: loss %.9g vs torch %.9g (rel %.3g), grad err %.3g, weights err %.3g", c,
                  got, want, rel, gerr, werr);
    }
    hakd_ctx_free(ctx);
  }
  hakd_st_close(f);
}

TEST(hakd_ce_matches_torch) { check_hakd_fixture("distill/hakd_ce.safetensors", 9); }
TEST(hakd_bce_matches_torch) { check_hakd_fixture("distill/hakd_bce.safetensors", 16); }

TEST(kd_cwd_fitnet_match_torch) {
  hakd_st_file *f = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/baselines.safetensors"), &f));
  char cases[16][64];
  int n = fixture_cases(f, cases, 16);
  ASSERT_EQ_INT(n, 7);
  int checked = 0;
  for (int i = 0; i < n && !test_failed(); i++) {
    const char *c = cases[i];
    if (!strcmp(c, "fitnet")) continue;
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *s = load_tensor(ctx, f, key(c, "s"), HAKD_F32), *t = load_tensor(ctx, f, key(c, "t"), HAKD_F32);
    hakd_tensor *T = load_tensor(ctx, f, key(c, "T"), HAKD_F32), *want = load_tensor(ctx, f, key(c, "loss"), HAKD_F32);
    hakd_tensor *want_grad = load_tensor(ctx, f, key(c, "grad"), HAKD_F32);
    if (s && t && T && want && want_grad) {
      s->requires_grad = 1;
      hakd_tensor *loss = !strncmp(c, "kd", 2) ? hakd_loss_kd(ctx, s, t, hakd_f32(T)[0])
                                               : hakd_loss_cwd(ctx, s, t, hakd_f32(T)[0]);
      if (!loss || hakd_backward(ctx, loss)) {
        test_fail(__FILE__, __LINE__, "case %s: %s", c, hakd_error_message());
      } else {
        double got = hakd_f32(loss)[0], w = hakd_f32(want)[0], rel = fabs(got - w) / fabs(w);
        double gerr = test_max_rel_err(s->grad, hakd_f32(want_grad), hakd_numel(s), 1e-6);
        if (!(rel <= VALUE_TOL) || !(gerr <= GRAD_TOL))
          test_fail(__FILE__, __LINE__, "case %s: loss %.9g vs torch %.9g (rel %.3g), grad err %.3g", c, got, w, rel, gerr);
        checked++;
      }
    }
    hakd_ctx_free(ctx);
  }
  ASSERT_EQ_INT(checked, 6);

  /* FitNet: conv 1x1 (no bias) -> BN (batch statistics) vs the resized teacher feature. */
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  distill_conv1x1 align;
  ASSERT_OK(distill_conv1x1_init(&align, &p, "distill.fitnet", 3, 6, 1, 0, 0.1f));
  ASSERT_TRUE(hakd_params_find(&p, "distill.fitnet.0.weight") == align.weight);
  ASSERT_TRUE(hakd_params_find(&p, "distill.fitnet.1.running_var") == align.bn_var);
  ASSERT_OK(hakd_st_read_f32(f, "fitnet.w", hakd_f32(align.weight), 18));
  ASSERT_OK(hakd_st_read_f32(f, "fitnet.gamma", hakd_f32(align.bn_weight), 6));
  ASSERT_OK(hakd_st_read_f32(f, "fitnet.beta", hakd_f32(align.bn_bias), 6));
  for (int c = 0; c < 6; c++) hakd_f32(align.bn_var)[c] = 1.0f;
  hakd_tensor *x = load_tensor(ctx, f, "fitnet.x", HAKD_F32), *f_t = load_tensor(ctx, f, "fitnet.f_t", HAKD_F32);
  hakd_tensor *want = load_tensor(ctx, f, "fitnet.loss", HAKD_F32);
  const char *grad_names[4] = {"fitnet.gx", "fitnet.gw", "fitnet.ggamma", "fitnet.gbeta"};
  hakd_tensor *want_grads[4];
  for (int i = 0; i < 4; i++) want_grads[i] = load_tensor(ctx, f, grad_names[i], HAKD_F32);
  hakd_st_close(f);
  ASSERT_TRUE(x && f_t && want && want_grads[0] && want_grads[1] && want_grads[2] && want_grads[3]);
  x->requires_grad = 1;
  hakd_tensor *loss = distill_fitnet_loss(ctx, &align, x, f_t);
  ASSERT_TRUE(loss != NULL);
  ASSERT_OK(hakd_backward(ctx, loss));
  ASSERT_NEAR(hakd_f32(loss)[0], hakd_f32(want)[0], VALUE_TOL * fabs(hakd_f32(want)[0]));
  const float *got_grads[4] = {x->grad, align.weight->grad, align.bn_weight->grad, align.bn_bias->grad};
  for (int i = 0; i < 4; i++) ASSERT_ALLCLOSE(got_grads[i], hakd_f32(want_grads[i]), hakd_numel(want_grads[i]), GRAD_TOL);
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

/* ---- finite differences ---- */

/* Central differences in float32 with eps 1e-2: truncation ~eps^2 |f'''| and rounding
 * ~1e-7 |L| / eps, both well under atol 5e-4 / rtol 1e-2 for O(1) logits. */
#define FD_EPS 1e-2
#define FD_ATOL 5e-4
#define FD_RTOL 1e-2

typedef struct {
  int32_t labels[80]; /* (2, 8, 5) */
  int64_t label_shape[3];
  hakd_hakd_loss_options o;
  const float *target, *weights; /* fixed constants of distill_kl */
  distill_kl_kind kind;
  int64_t outer, len, inner;
  float T;
  double scale;
  distill_conv1x1 *align;
} fd_case;

static hakd_tensor *build_kl(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  fd_case *c = arg;
  return distill_kl(ctx, in[0], c->target, c->weights, c->kind, c->outer, c->len, c->inner, c->T, c->scale);
}

static hakd_tensor *build_hakd(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  fd_case *c = arg;
  hakd_tensor *y = hakd_tensor_from(ctx, HAKD_I32, 3, c->label_shape, c->labels);
  return hakd_loss_hakd(ctx, in[0], in[1], y, &c->o, NULL);
}

static hakd_tensor *build_kd(hakd_ctx *ctx, hakd_tensor **in, void *arg) { return hakd_loss_kd(ctx, in[0], in[1], ((fd_case *)arg)->T); }
static hakd_tensor *build_cwd(hakd_ctx *ctx, hakd_tensor **in, void *arg) { return hakd_loss_cwd(ctx, in[0], in[1], ((fd_case *)arg)->T); }
static hakd_tensor *build_mse(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  return hakd_loss_mse(ctx, in[0], in[1]);
}
static hakd_tensor *build_fitnet(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  return distill_fitnet_loss(ctx, ((fd_case *)arg)->align, in[0], in[1]);
}

/* A constant (no-grad) input owned by p: a buffer filled with N(0, scale). */
static hakd_tensor *constant_input(hakd_params *p, const char *name, int ndim, const int64_t *shape, float scale,
                                   uint64_t seed) {
  hakd_tensor *t = hakd_params_add(p, name, ndim, shape, 1);
  uint64_t rng = hakd_rng_seed(seed);
  for (int64_t i = 0; t && i < hakd_numel(t); i++) hakd_f32(t)[i] = scale * hakd_rng_normal(&rng);
  return t;
}

/* Labels (2, 8, 5) with some ignored pixels, in K classes, and their nearest resize to the
 * (2, 4, 5) grid of Z_s (source row 2 r). */
static void fill_labels(fd_case *c, int32_t grid_labels[40], int k) {
  c->label_shape[0] = 2, c->label_shape[1] = 8, c->label_shape[2] = 5;
  uint64_t rng = hakd_rng_seed(5);
  for (int i = 0; i < 80; i++) c->labels[i] = (hakd_rng_next(&rng) % 5 == 0) ? 255 : (int32_t)(hakd_rng_next(&rng) % k);
  for (int b = 0; b < 2; b++)
    for (int r = 0; r < 4; r++)
      for (int x = 0; x < 5; x++) grid_labels[(b * 4 + r) * 5 + x] = c->labels[(b * 8 + 2 * r) * 5 + x];
}

TEST(losses_finite_differences) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t zshape[4] = {2, 3, 4, 5}, tshape[4] = {2, 3, 3, 6};
  hakd_tensor *z_s = gradcheck_input(&p, "z_s", 4, zshape, 1.5f, 1);
  hakd_tensor *z_t = constant_input(&p, "z_t", 4, tshape, 2.0f, 2);
  hakd_tensor *z_t_same = constant_input(&p, "z_t_same", 4, zshape, 2.0f, 3);
  hakd_tensor *in[2] = {z_s, z_t};
  fd_case c;
  memset(&c, 0, sizeof c);
  int32_t grid_labels[40];
  fill_labels(&c, grid_labels, 3);

  /* The KL term with the KMM/KEM constants computed once and held fixed (they are constants
   * for the gradient by definition), for every reliability / axis / ablation. */
  hakd_ctx *ctx = hakd_ctx_new();
  float *z_hyb = malloc(120 * sizeof(float)), *weights = malloc(120 * sizeof(float));
  for (int rel = 0; rel < 2; rel++)
    for (int axis = 0; axis <= rel; axis++)
      for (int ablation = 0; ablation < 4; ablation++) {
        hakd_hakd_loss_options_default(&c.o);
        c.o.reliability = rel ? HAKD_RELIABILITY_BCE : HAKD_RELIABILITY_CE;
        c.o.kem_axis = axis ? HAKD_KEM_AXIS_CLASS : HAKD_KEM_AXIS_SPATIAL;
        c.o.no_kmm = ablation & 1;
        c.o.no_kem = ablation >> 1;
        ASSERT_OK(distill_hakd_targets(ctx, z_hyb, weights, hakd_f32(z_s), hakd_f32(z_t_same), grid_labels, 2, 3, 20,
                                       &c.o));
        c.target = z_hyb;
        c.weights = weights;
        c.kind = rel ? DISTILL_KL_BERNOULLI : DISTILL_KL_SOFTMAX;
        c.outer = rel ? 120 : 2, c.len = rel ? 1 : 3, c.inner = rel ? 1 : 20;
        c.T = ablation & 1 ? 1.0f : 4.0f;
        c.scale = c.T * c.T / 2.0;
        char what[64];
        snprintf(what, sizeof what, "kl rel=%d axis=%d ablation=%d", rel, axis, ablation);
        ASSERT_TRUE(gradcheck(what, build_kl, &c, in, 1, FD_EPS, FD_ATOL, FD_RTOL, 120));
      }
  hakd_ctx_free(ctx);

  /* With both ablations the constants do not depend on Z_s, so the whole L_hakd (with Z_t and
   * labels on other grids) is differentiable as is. */
  for (int rel = 0; rel < 2; rel++) {
    hakd_hakd_loss_options_default(&c.o);
    c.o.reliability = rel ? HAKD_RELIABILITY_BCE : HAKD_RELIABILITY_CE;
    c.o.no_kmm = c.o.no_kem = 1;
    ASSERT_TRUE(gradcheck(rel ? "hakd bce ablated" : "hakd ce ablated", build_hakd, &c, in, 2, FD_EPS, FD_ATOL, FD_RTOL, 120));
  }

  c.T = 2.0f;
  ASSERT_TRUE(gradcheck("kd", build_kd, &c, in, 2, FD_EPS, FD_ATOL, FD_RTOL, 120));
  ASSERT_TRUE(gradcheck("cwd", build_cwd, &c, in, 2, FD_EPS, FD_ATOL, FD_RTOL, 120));
  hakd_tensor *mse_in[2] = {z_s, z_t_same};
  ASSERT_TRUE(gradcheck("mse", build_mse, &c, mse_in, 2, FD_EPS, FD_ATOL, FD_RTOL, 120));

  /* FitNet through the aligner: input feature and every aligner parameter. */
  distill_conv1x1 align;
  ASSERT_OK(distill_conv1x1_init(&align, &p, "distill.fitnet", 3, 4, 1, 0, 0.1f));
  uint64_t rng = hakd_rng_seed(9);
  for (int i = 0; i < 12; i++) hakd_f32(align.weight)[i] = hakd_rng_normal(&rng) * 0.5f;
  for (int i = 0; i < 4; i++) hakd_f32(align.bn_weight)[i] = 0.5f + hakd_rng_uniform(&rng), hakd_f32(align.bn_var)[i] = 1.0f;
  int64_t fshape[4] = {2, 4, 6, 7};
  hakd_tensor *f_t = constant_input(&p, "f_t", 4, fshape, 1.0f, 4);
  c.align = &align;
  hakd_tensor *fit_in[5] = {z_s, f_t, align.weight, align.bn_weight, align.bn_bias};
  ASSERT_TRUE(gradcheck("fitnet", build_fitnet, &c, fit_in, 5, FD_EPS, FD_ATOL, FD_RTOL, 60));
  free(z_hyb);
  free(weights);
  hakd_params_free(&p);
}

/* ---- KEM weights and degenerate batches ---- */

TEST(kem_weights_are_distributions) {
  enum { N = 3, K = 4, H = 3, W = 4, HW = H * W };
  hakd_params p;
  hakd_params_init(&p);
  int64_t zshape[4] = {N, K, H, W}, yshape[3] = {N, H, W};
  hakd_tensor *z_s = gradcheck_input(&p, "z_s", 4, zshape, 3.0f, 11);
  hakd_tensor *z_t = constant_input(&p, "z_t", 4, zshape, 3.0f, 12);
  ASSERT_TRUE(z_s && z_t);
  /* image 0: every other pixel ignored; image 1: none valid; image 2: all valid */
  int32_t labels[N * HW];
  for (int i = 0; i < HW; i++) {
    labels[i] = i % 2 ? 255 : i % K;
    labels[HW + i] = 255;
    labels[2 * HW + i] = (i * 7) % K;
  }
  for (int mode = 0; mode < 5; mode++) {
    hakd_hakd_loss_options o;
    hakd_hakd_loss_options_default(&o);
    o.reliability = mode ? HAKD_RELIABILITY_BCE : HAKD_RELIABILITY_CE;
    o.kem_axis = mode == 2 ? HAKD_KEM_AXIS_CLASS : HAKD_KEM_AXIS_SPATIAL;
    o.no_kem = mode == 3;
    if (mode == 4) /* a batch with no valid pixel at all */
      for (int i = 0; i < N * HW; i++) labels[i] = 255;
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *y = hakd_tensor_from(ctx, HAKD_I32, 3, yshape, labels), *wm = NULL;
    hakd_tensor *loss = hakd_loss_hakd(ctx, z_s, z_t, y, &o, &wm);
    hakd_params_zero_grad(&p);
    int ok = loss && wm && hakd_backward(ctx, loss) == 0;
    float value = ok ? hakd_f32(loss)[0] : NAN;
    float wv[N * K * HW];
    if (ok) memcpy(wv, hakd_f32(wm), (size_t)hakd_numel(wm) * sizeof(float));
    hakd_ctx_free(ctx);
    ASSERT_TRUE(ok);
    ASSERT_TRUE(mode == 4 ? value == 0.0f : isfinite(value) && value > 0.0f);
    int per_pixel = mode ? K : 1;
    for (int b = 0; b < N; b++)
      for (int j = 0; j < per_pixel; j++) {
        double sum = 0;
        for (int q = 0; q < HW; q++) {
          float v = wv[(b * per_pixel + j) * HW + q];
          ASSERT_TRUE(isfinite(v) && v >= 0.0f);
          if (labels[b * HW + q] == 255) ASSERT_TRUE(v == 0.0f);
          sum += v;
        }
        int valid_pixels = mode == 4 || b == 1 ? 0 : b == 0 ? HW / 2 : HW;
        /* spatial axis (and no_kem): a distribution over each image's valid pixels (for bce per
         * class); float rounding of a sum of 12 terms */
        if (mode != 2) ASSERT_NEAR(sum, valid_pixels ? 1.0 : 0.0, 1e-5);
      }
    if (mode == 2) /* class axis: a distribution over the classes of each valid pixel */
      for (int b = 0; b < N; b++)
        for (int q = 0; q < HW; q++) {
          double sum = 0;
          for (int c = 0; c < K; c++) sum += wv[(b * K + c) * HW + q];
          ASSERT_NEAR(sum, labels[b * HW + q] != 255 ? 1.0 : 0.0, 1e-5);
        }
    /* images without a valid pixel get exactly zero gradient, and nothing is NaN */
    for (int i = 0; i < N * K * HW; i++) {
      ASSERT_TRUE(isfinite(z_s->grad[i]));
      if (mode == 4 || i / (K * HW) == 1) ASSERT_TRUE(z_s->grad[i] == 0.0f);
    }
  }
  hakd_params_free(&p);
}

/* hakd_loss_hakd on fresh (1, 3, 2, 2) / (1, k_t, 2, 2) zero logits and the given labels; returns the context status. */
static int try_hakd_loss(int k_t, const int32_t labels[4], int reliability, int axis, const char *expect_in_message) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t zshape[4] = {1, 3, 2, 2}, tshape[4] = {1, k_t, 2, 2}, yshape[3] = {1, 2, 2};
  hakd_tensor *z = hakd_tensor_zeros(ctx, HAKD_F32, 4, zshape), *t = hakd_tensor_zeros(ctx, HAKD_F32, 4, tshape);
  hakd_tensor *y = hakd_tensor_from(ctx, HAKD_I32, 3, yshape, labels);
  hakd_hakd_loss_options o;
  hakd_hakd_loss_options_default(&o);
  o.reliability = reliability;
  o.kem_axis = axis;
  hakd_tensor *loss = hakd_loss_hakd(ctx, z, t, y, &o, NULL);
  int status = loss ? 0 : hakd_ctx_status(ctx);
  if (expect_in_message && !strstr(hakd_error_message(), expect_in_message)) status = 1;
  hakd_ctx_free(ctx);
  return status;
}

TEST(loss_errors_name_the_problem) {
  const int32_t bad[4] = {0, 1, 3, 255}, good[4] = {0, 1, 2, 255};
  ASSERT_EQ_INT(try_hakd_loss(3, good, HAKD_RELIABILITY_CE, HAKD_KEM_AXIS_SPATIAL, NULL), 0);
  ASSERT_EQ_INT(try_hakd_loss(3, bad, HAKD_RELIABILITY_CE, HAKD_KEM_AXIS_SPATIAL, "label 3"), HAKD_ERANGE);
  ASSERT_EQ_INT(try_hakd_loss(4, good, HAKD_RELIABILITY_CE, HAKD_KEM_AXIS_SPATIAL, "Z_t (1, 4, 2, 2)"), HAKD_ESHAPE);
  ASSERT_EQ_INT(try_hakd_loss(3, good, HAKD_RELIABILITY_CE, HAKD_KEM_AXIS_CLASS, "bce"), HAKD_EINVAL);
  ASSERT_EQ_INT(try_hakd_loss(3, good, HAKD_RELIABILITY_BCE, HAKD_KEM_AXIS_CLASS, NULL), 0);
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t a[4] = {1, 3, 2, 2}, b[4] = {1, 4, 2, 2};
  ASSERT_TRUE(hakd_loss_kd(ctx, hakd_tensor_zeros(ctx, HAKD_F32, 4, a), hakd_tensor_zeros(ctx, HAKD_F32, 4, b), 1.0f) == NULL);
  ASSERT_EQ_INT(hakd_ctx_status(ctx), HAKD_ESHAPE);
  ASSERT_TRUE(strstr(hakd_error_message(), "kd loss") != NULL);
  hakd_ctx_free(ctx);
}

TEST(option_parsers) {
  hakd_distill_options o;
  hakd_distill_options_default(&o);
  ASSERT_EQ_INT(o.n_stages, 1);
  ASSERT_EQ_INT(o.stages[0], 4);
  ASSERT_OK(hakd_distill_stages_parse("2,3,4", &o));
  ASSERT_EQ_INT(o.n_stages, 3);
  ASSERT_EQ_INT(o.stages[0] * 100 + o.stages[1] * 10 + o.stages[2], 234);
  const char *bad_stages[] = {"", "5", "0", "2,2", "1,2,3,4,1", "3,", "a", "4 "};
  for (size_t i = 0; i < sizeof bad_stages / sizeof bad_stages[0]; i++)
    ASSERT_EQ_INT(hakd_distill_stages_parse(bad_stages[i], &o), HAKD_EINVAL);
  ASSERT_EQ_INT(o.n_stages, 3); /* unchanged by a failed parse */
  hakd_distill_method m;
  ASSERT_OK(hakd_distill_method_parse("fitnet", &m));
  ASSERT_EQ_INT(m, HAKD_DISTILL_FITNET);
  ASSERT_TRUE(!strcmp(hakd_distill_method_name(HAKD_DISTILL_HETEROAKD), "heteroakd"));
  ASSERT_EQ_INT(hakd_distill_method_parse("hetero", &m), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "hetero") != NULL);
  hakd_reliability r;
  hakd_kem_axis a;
  hakd_grid g;
  ASSERT_OK(hakd_reliability_parse("bce", &r));
  ASSERT_EQ_INT(r, HAKD_RELIABILITY_BCE);
  ASSERT_OK(hakd_kem_axis_parse("class", &a));
  ASSERT_EQ_INT(a, HAKD_KEM_AXIS_CLASS);
  ASSERT_OK(hakd_grid_parse("teacher", &g));
  ASSERT_EQ_INT(g, HAKD_GRID_TEACHER);
  ASSERT_EQ_INT(hakd_grid_parse("image", &g), HAKD_EINVAL);
}

/* ---- the distiller on two tiny heterogeneous models ---- */

#define E2E_K 5
#define E2E_SIZE 64
#define E2E_N 2 /* DeepLabV3's image-pooling BN needs more than one value per channel in training */

typedef struct {
  hakd_model *teacher, *student;
  float x[E2E_N * 3 * E2E_SIZE * E2E_SIZE];
  int32_t labels[E2E_N * E2E_SIZE * E2E_SIZE];
} e2e_pair;

/* Width-0.25 registry models, K = 5, random 2x3x64x64 images and labels with ~10% ignored. */
static int e2e_setup(e2e_pair *p, const char *teacher, const char *student) {
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = E2E_K;
  mo.width = 0.25f;
  p->teacher = p->student = NULL;
  if (hakd_model_create(teacher, &mo, &p->teacher) || hakd_model_create(student, &mo, &p->student)) return -1;
  hakd_model_init(p->teacher, 1);
  hakd_model_init(p->student, 2);
  uint64_t rng = hakd_rng_seed(3);
  for (int i = 0; i < E2E_N * 3 * E2E_SIZE * E2E_SIZE; i++) p->x[i] = hakd_rng_normal(&rng);
  for (int i = 0; i < E2E_N * E2E_SIZE * E2E_SIZE; i++)
    p->labels[i] = hakd_rng_uniform(&rng) < 0.1f ? 255 : (int32_t)((i % E2E_SIZE) * E2E_K / E2E_SIZE);
  return 0;
}

static void e2e_free(e2e_pair *p) {
  hakd_model_free(p->teacher);
  hakd_model_free(p->student);
}

/* One training step as the trainer runs it: teacher (grad as asked, eval mode), student
 * (grad, training), distiller. teacher_grad 1 simulates a caller that forgot no-grad. */
static int e2e_step(hakd_ctx *ctx, e2e_pair *p, hakd_distiller *d, int64_t iter, int teacher_grad,
                    hakd_model_output *sout, hakd_distill_losses *out) {
  hakd_ctx_reset(ctx);
  int64_t xshape[4] = {E2E_N, 3, E2E_SIZE, E2E_SIZE}, yshape[3] = {E2E_N, E2E_SIZE, E2E_SIZE};
  hakd_tensor *x = hakd_tensor_from(ctx, HAKD_F32, 4, xshape, p->x);
  hakd_tensor *y = hakd_tensor_from(ctx, HAKD_I32, 3, yshape, p->labels);
  hakd_model_output tout;
  hakd_ctx_set_grad(ctx, teacher_grad);
  hakd_ctx_set_training(ctx, 0);
  int rc = hakd_model_forward(p->teacher, ctx, x, &tout);
  hakd_ctx_set_grad(ctx, 1);
  hakd_ctx_set_training(ctx, 1);
  if (!rc) rc = hakd_model_forward(p->student, ctx, x, sout);
  if (!rc) rc = hakd_distiller_forward(d, ctx, &tout, sout, y, iter, out);
  return rc;
}

/* Largest |grad| over the parameters whose name starts with prefix (all when ""). */
static double max_grad(const hakd_params *params, const char *prefix) {
  double m = 0;
  for (int i = 0; i < params->count; i++) {
    const hakd_tensor *t = params->items[i];
    if (!t->grad || strncmp(t->name, prefix, strlen(prefix))) continue;
    for (int64_t j = 0; j < hakd_numel(t); j++) m = fmax(m, fabs(t->grad[j]));
  }
  return m;
}

static void zero_all_grads(e2e_pair *p, hakd_distiller *d) {
  hakd_params_zero_grad(hakd_model_params(p->teacher));
  hakd_params_zero_grad(hakd_model_params(p->student));
  hakd_params_zero_grad(hakd_distiller_params(d));
}

static double value(const hakd_tensor *t) { return t ? hakd_f32(t)[0] : NAN; }

TEST(distiller_heteroakd_cnn_teacher_transformer_student) {
  e2e_pair p;
  ASSERT_OK(e2e_setup(&p, "deeplabv3-r18-d8", "segformer-b0"));
  hakd_distill_options o;
  hakd_distill_options_default(&o);
  hakd_distiller *d = NULL;
  ASSERT_OK(hakd_distiller_create(p.teacher, p.student, HAKD_DISTILL_HETEROAKD, &o, 100, &d));
  ASSERT_EQ_INT(hakd_distiller_warmup_iters(d), 10); /* 10% of the schedule */
  hakd_params *dp = hakd_distiller_params(d);
  const hakd_tensor *ps = hakd_params_find(dp, "distill.proj_s.4.0.weight");
  const hakd_tensor *pt = hakd_params_find(dp, "distill.proj_t.4.0.weight");
  ASSERT_TRUE(ps && pt && hakd_params_find(dp, "distill.proj_s.4.1.running_var") &&
              hakd_params_find(dp, "distill.proj_t.4.1.num_batches_tracked"));
  ASSERT_EQ_INT(ps->shape[0], E2E_K);
  ASSERT_EQ_INT(ps->shape[1], hakd_model_stage_channels(p.student, 4));
  ASSERT_EQ_INT(pt->shape[1], hakd_model_stage_channels(p.teacher, 4));
  ASSERT_EQ_INT(dp->count, 12); /* two (conv, BN weight/bias/mean/var/count) projectors */

  hakd_ctx *ctx = hakd_ctx_new();
  hakd_model_output sout;
  hakd_distill_losses l;
  /* after warm-up: every HeteroAKD term, weighted 0.1 / 1 / 1 */
  ASSERT_OK(e2e_step(ctx, &p, d, 10, 1, &sout, &l));
  ASSERT_TRUE(!l.warmup && l.kd && l.hakd && l.proj && !l.cwd && !l.fitnet && l.total);
  ASSERT_TRUE(isfinite(value(l.kd)) && value(l.hakd) > 0 && value(l.proj) > 0);
  ASSERT_NEAR(value(l.total), 0.1 * value(l.kd) + value(l.hakd) + value(l.proj), 1e-5 * value(l.total));
  ASSERT_EQ_INT(l.n_stages, 1);
  ASSERT_EQ_INT(l.stages[0], 4);
  /* the common grid defaults to the student's logits (stride 4: 16x16) */
  const hakd_tensor *w = l.kem_weights[0];
  ASSERT_TRUE(w && w->ndim == 3 && w->shape[1] == sout.logits->shape[2] && w->shape[2] == sout.logits->shape[3]);
  double wsum = 0;
  for (int64_t i = 0; i < hakd_numel(w); i++) wsum += hakd_f32(w)[i];
  ASSERT_NEAR(wsum, E2E_N, 1e-5); /* 1 per image; float rounding of 256 terms each */
  zero_all_grads(&p, d);
  ASSERT_OK(hakd_backward(ctx, l.total));
  ASSERT_TRUE(max_grad(dp, "distill.proj_s.4.0.") > 0 && max_grad(dp, "distill.proj_t.4.0.") > 0);
  ASSERT_TRUE(max_grad(dp, "distill.proj_s.4.1.weight") > 0 && max_grad(dp, "distill.proj_t.4.1.weight") > 0);
  ASSERT_TRUE(max_grad(hakd_model_params(p.student), "segformer.encoder") > 0);
  /* the teacher is frozen even when its forward pass recorded a tape */
  ASSERT_TRUE(max_grad(hakd_model_params(p.teacher), "") == 0.0);

  /* warm-up: KD and L_hakd computed for the log but weighted 0; L_proj trains both projectors
   * and, through the stop-gradient, nothing of the student */
  ASSERT_OK(e2e_step(ctx, &p, d, 9, 0, &sout, &l));
  ASSERT_TRUE(l.warmup && l.lambda_kd == 0.0f && l.lambda_hakd == 0.0f && l.lambda_proj == 1.0f);
  ASSERT_TRUE(l.kd && l.hakd && value(l.hakd) > 0);
  ASSERT_NEAR(value(l.total), value(l.proj), 1e-6 * value(l.proj));
  zero_all_grads(&p, d);
  ASSERT_OK(hakd_backward(ctx, l.total));
  ASSERT_TRUE(max_grad(dp, "distill.proj_s.4.0.") > 0 && max_grad(dp, "distill.proj_t.4.0.") > 0);
  ASSERT_TRUE(max_grad(hakd_model_params(p.student), "") == 0.0);
  hakd_distiller_free(d);

  /* --proj-grad-to-student: the same warm-up step now reaches the student backbone */
  o.proj_grad_to_student = 1;
  o.warmup_iters = 5;
  ASSERT_OK(hakd_distiller_create(p.teacher, p.student, HAKD_DISTILL_HETEROAKD, &o, 100, &d));
  ASSERT_EQ_INT(hakd_distiller_warmup_iters(d), 5);
  ASSERT_OK(e2e_step(ctx, &p, d, 0, 0, &sout, &l));
  zero_all_grads(&p, d);
  ASSERT_OK(hakd_backward(ctx, l.total));
  ASSERT_TRUE(max_grad(hakd_model_params(p.student), "segformer.encoder") > 0);
  hakd_distiller_free(d);
  hakd_ctx_free(ctx);
  e2e_free(&p);
}

TEST(distiller_heteroakd_transformer_teacher_cnn_student_options) {
  e2e_pair p;
  ASSERT_OK(e2e_setup(&p, "segformer-b0", "deeplabv3-r18-d8"));
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_model_output sout;
  hakd_distill_losses l;
  /* grid x reliability x stages: each W lives on the chosen grid with the reliability's shape */
  for (int grid = 0; grid < 3; grid++) {
    hakd_distill_options o;
    hakd_distill_options_default(&o);
    ASSERT_OK(hakd_distill_stages_parse("2,3,4", &o));
    o.grid = (hakd_grid)grid;
    o.reliability = grid == 1 ? HAKD_RELIABILITY_BCE : HAKD_RELIABILITY_CE;
    o.kem_axis = grid == 1 ? HAKD_KEM_AXIS_CLASS : HAKD_KEM_AXIS_SPATIAL;
    o.no_kmm = grid == 2;
    o.proj_relu = grid == 2;
    hakd_distiller *d = NULL;
    ASSERT_OK(hakd_distiller_create(p.teacher, p.student, HAKD_DISTILL_HETEROAKD, &o, 0, &d));
    ASSERT_EQ_INT(hakd_distiller_params(d)->count, 36);
    ASSERT_OK(e2e_step(ctx, &p, d, 0, 0, &sout, &l));
    ASSERT_TRUE(!l.warmup); /* 10% of 0 iterations */
    ASSERT_EQ_INT(l.n_stages, 3);
    for (int i = 0; i < 3; i++) {
      int s = l.stages[i];
      hakd_model *grid_model = grid == 2 ? p.teacher : p.student;
      int64_t want_h = grid == 0 ? sout.logits->shape[2] : E2E_SIZE / hakd_model_stage_stride(grid_model, s);
      const hakd_tensor *w = l.kem_weights[i];
      ASSERT_TRUE(w != NULL);
      ASSERT_EQ_INT(w->ndim, grid == 1 ? 4 : 3);
      ASSERT_EQ_INT(w->shape[w->ndim - 2], want_h);
    }
    zero_all_grads(&p, d);
    ASSERT_OK(hakd_backward(ctx, l.total));
    for (int i = 0; i < 3; i++) {
      char prefix[64];
      snprintf(prefix, sizeof prefix, "distill.proj_s.%d.0.", l.stages[i]);
      ASSERT_TRUE(max_grad(hakd_distiller_params(d), prefix) > 0);
      snprintf(prefix, sizeof prefix, "distill.proj_t.%d.0.", l.stages[i]);
      ASSERT_TRUE(max_grad(hakd_distiller_params(d), prefix) > 0);
    }
    ASSERT_TRUE(max_grad(hakd_model_params(p.student), "backbone") > 0);
    hakd_distiller_free(d);
  }
  hakd_ctx_free(ctx);
  e2e_free(&p);
}

TEST(distiller_baselines) {
  e2e_pair p;
  ASSERT_OK(e2e_setup(&p, "segformer-b0", "deeplabv3-r18-d8"));
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_model_output sout;
  hakd_distill_losses l;
  const hakd_distill_method methods[4] = {HAKD_DISTILL_NONE, HAKD_DISTILL_KD, HAKD_DISTILL_CWD, HAKD_DISTILL_FITNET};
  for (int m = 0; m < 4; m++) {
    hakd_distill_options o;
    hakd_distill_options_default(&o);
    o.cwd_feature = 1;
    hakd_distiller *d = NULL;
    ASSERT_OK(hakd_distiller_create(m ? p.teacher : NULL, p.student, methods[m], &o, 50, &d));
    hakd_params *dp = hakd_distiller_params(d);
    const char *param = m == 2 ? "distill.cwd_align.bias" : m == 3 ? "distill.fitnet.1.running_mean" : NULL;
    ASSERT_EQ_INT(dp->count, m == 2 ? 2 : m == 3 ? 6 : 0);
    if (param) ASSERT_TRUE(hakd_params_find(dp, param) != NULL);
    /* warm-up (iter 4 of 5): the term is there for the log, the total a constant 0 */
    ASSERT_OK(e2e_step(ctx, &p, d, 4, 0, &sout, &l));
    hakd_tensor *term = m == 1 ? l.kd : m == 2 ? l.cwd : m == 3 ? l.fitnet : NULL;
    ASSERT_TRUE(!l.hakd && !l.proj && (m == 0 || (term && value(term) > 0)));
    ASSERT_TRUE(value(l.total) == 0.0f && !l.total->requires_grad);
    /* after warm-up: total = lambda * term; gradients reach the student and the aligner */
    ASSERT_OK(e2e_step(ctx, &p, d, 5, 0, &sout, &l));
    term = m == 1 ? l.kd : m == 2 ? l.cwd : m == 3 ? l.fitnet : NULL;
    double lambda = m == 1 ? 0.1 : m == 2 ? 3.0 : 1.0;
    if (m == 0) {
      ASSERT_TRUE(value(l.total) == 0.0f && !l.total->requires_grad);
    } else {
      ASSERT_NEAR(value(l.total), lambda * value(term), 1e-6 * value(l.total));
      zero_all_grads(&p, d);
      ASSERT_OK(hakd_backward(ctx, l.total));
      ASSERT_TRUE(max_grad(hakd_model_params(p.student), "backbone") > 0);
      if (param) ASSERT_TRUE(max_grad(dp, m == 2 ? "distill.cwd_align.weight" : "distill.fitnet.0.weight") > 0);
    }
    hakd_distiller_free(d);
  }
  hakd_ctx_free(ctx);
  e2e_free(&p);
}

TEST(distiller_rejects_bad_setups) {
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.width = 0.25f;
  mo.num_classes = 5;
  hakd_model *a = NULL, *b = NULL;
  ASSERT_OK(hakd_model_create("segformer-b0", &mo, &a));
  mo.num_classes = 6;
  ASSERT_OK(hakd_model_create("segformer-b0", &mo, &b));
  hakd_distill_options o;
  hakd_distill_options_default(&o);
  hakd_distiller *d = NULL;
  ASSERT_EQ_INT(hakd_distiller_create(b, a, HAKD_DISTILL_HETEROAKD, &o, 10, &d), HAKD_ESHAPE);
  ASSERT_TRUE(strstr(hakd_error_message(), "6 classes") != NULL);
  ASSERT_EQ_INT(hakd_distiller_create(NULL, a, HAKD_DISTILL_KD, &o, 10, &d), HAKD_EINVAL);
  o.kem_axis = HAKD_KEM_AXIS_CLASS;
  ASSERT_EQ_INT(hakd_distiller_create(a, a, HAKD_DISTILL_HETEROAKD, &o, 10, &d), HAKD_EINVAL);
  hakd_distill_options_default(&o);
  o.stages[0] = 5;
  ASSERT_EQ_INT(hakd_distiller_create(a, a, HAKD_DISTILL_HETEROAKD, &o, 10, &d), HAKD_EINVAL);
  hakd_distill_options_default(&o);
  o.T = 0;
  ASSERT_EQ_INT(hakd_distiller_create(a, a, HAKD_DISTILL_HETEROAKD, &o, 10, &d), HAKD_EINVAL);
  ASSERT_TRUE(d == NULL);
  /* FitNet only needs matching features, not classes */
  hakd_distill_options_default(&o);
  ASSERT_OK(hakd_distiller_create(b, a, HAKD_DISTILL_FITNET, &o, 10, &d));
  hakd_distiller_free(d);
  hakd_model_free(a);
  hakd_model_free(b);
}

/* ---- the `hakd loss` CLI ---- */

/* A path in the case's temporary directory; each call gets its own buffer (a few per case). */
static const char *tmp_file(const char *name) {
  static char paths[32][512];
  static int next;
  char *p = paths[next++ % 32];
  snprintf(p, 512, "%s/%s", test_tmpdir(), name);
  return p;
}

/* Runs `$HAKD_CLI loss <args>`; stdout and stderr land in out/err (NUL-terminated, truncated).
 * Returns the exit status, or -1 when the CLI could not be run. */
static int run_cli(const char *args, char *out, size_t out_size, char *err, size_t err_size) {
  const char *cli = getenv("HAKD_CLI");
  out[0] = err[0] = 0;
  if (!cli || !*cli) {
    test_fail(__FILE__, __LINE__, "HAKD_CLI is not set (ctest sets it to the built hakd)");
    return -1;
  }
  char out_path[600], err_path[600], cmd[4096];
  snprintf(out_path, sizeof out_path, "%s/cli.out", test_tmpdir());
  snprintf(err_path, sizeof err_path, "%s/cli.err", test_tmpdir());
  snprintf(cmd, sizeof cmd, "'%s' loss %s >'%s' 2>'%s'", cli, args, out_path, err_path);
  int status = system(cmd);
  const char *paths[2] = {out_path, err_path};
  char *bufs[2] = {out, err};
  size_t sizes[2] = {out_size, err_size};
  for (int i = 0; i < 2; i++) {
    bufs[i][0] = 0;
    FILE *fp = fopen(paths[i], "rb");
    if (!fp) continue;
    size_t n = fread(bufs[i], 1, sizes[i] - 1, fp);
    bufs[i][n] = 0;
    fclose(fp);
  }
  return status == -1 || !WIFEXITED(status) ? -1 : WEXITSTATUS(status);
}

/* Writes fixture tensor `name` to path as float32 .npy (or uint8 labels). */
static int fixture_to_npy(hakd_st_file *f, const char *name, const char *path, int as_labels) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *t = load_tensor(ctx, f, name, as_labels ? HAKD_I32 : HAKD_F32);
  int rc = -1;
  if (t && as_labels) {
    int64_t n = hakd_numel(t);
    uint8_t *u8 = malloc((size_t)n);
    for (int64_t i = 0; i < n; i++) u8[i] = (uint8_t)hakd_i32(t)[i];
    rc = hakd_npy_write(path, HAKD_NPY_U8, t->ndim, t->shape, u8);
    free(u8);
  } else if (t) {
    rc = hakd_npy_write(path, HAKD_NPY_F32, t->ndim, t->shape, t->data);
  }
  hakd_ctx_free(ctx);
  return rc;
}

/* Normalised max error of a written .npy against fixture tensor `name` (shapes must match). */
static double npy_err(const char *path, hakd_st_file *f, const char *name) {
  hakd_npy a;
  if (hakd_npy_read(path, &a)) return INFINITY;
  const hakd_st_tensor *info = hakd_st_find(f, name);
  double err = INFINITY;
  int same = info && a.dtype == HAKD_NPY_F32 && a.ndim == info->ndim;
  for (int d = 0; same && d < a.ndim; d++) same = a.shape[d] == info->shape[d];
  if (same) {
    int64_t n = hakd_npy_numel(&a);
    float *want = malloc((size_t)n * sizeof(float));
    if (!hakd_st_read_f32(f, name, want, n)) err = test_max_rel_err(a.data, want, n, 1e-6);
    free(want);
  }
  hakd_npy_free(&a);
  return err;
}

/* The JSON value of "loss" in the CLI's output, or NAN. */
static double json_loss(const char *out) {
  const char *p = strstr(out, "{\"loss\": ");
  return p ? strtod(p + 9, NULL) : NAN;
}

TEST(cli_loss_matches_fixtures) {
  hakd_st_file *ce = NULL, *bce = NULL, *base = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/hakd_ce.safetensors"), &ce));
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/hakd_bce.safetensors"), &bce));
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/baselines.safetensors"), &base));
  const char *s = tmp_file("s.npy"), *t = tmp_file("t.npy"), *y = tmp_file("y.npy");
  const char *g = tmp_file("g.npy"), *w = tmp_file("w.npy");
  static const struct {
    int bce;
    const char *c, *flags;
  } cases[] = {
      {0, "ce_kmm1_kem1_T4", ""},
      {0, "ce_kmm0_kem1_T1", "--T 1 --no-kmm"},
      {0, "ce_kmm1_kem0_T4", "--T 4 --no-kem --ignore-index 255"},
      {1, "bce_spatial_kmm1_kem1_T4", "--reliability bce"},
      {1, "bce_class_kmm0_kem1_T1", "--reliability bce --kem-axis class --no-kmm --T 1"},
  };
  char out[4096], err[4096], args[2048];
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    hakd_st_file *f = cases[i].bce ? bce : ce; /* each file has its own inputs */
    ASSERT_OK(fixture_to_npy(f, "z_s", s, 0));
    ASSERT_OK(fixture_to_npy(f, "z_t", t, 0));
    ASSERT_OK(fixture_to_npy(f, "labels", y, 1)); /* uint8 labels: any integer dtype is accepted */
    snprintf(args, sizeof args, "--method heteroakd --student '%s' --teacher '%s' --labels '%s' %s --grad-out '%s' --weights-out '%s'",
             s, t, y, cases[i].flags, g, w);
    int rc = run_cli(args, out, sizeof out, err, sizeof err);
    if (rc != 0) test_fail(__FILE__, __LINE__, "case %s: exit %d: %s", cases[i].c, rc, err);
    float want;
    ASSERT_OK(hakd_st_read_f32(f, key(cases[i].c, "loss"), &want, 1));
    double got = json_loss(out);
    ASSERT_NEAR(got, want, VALUE_TOL * fabs(want));
    double gerr = npy_err(g, f, key(cases[i].c, "grad")), werr = npy_err(w, f, key(cases[i].c, "weights"));
    if (!(gerr <= GRAD_TOL) || !(werr <= WEIGHT_TOL))
      test_fail(__FILE__, __LINE__, "case %s: grad err %.3g, weights err %.3g", cases[i].c, gerr, werr);
  }
  /* KD and CWD with the teacher on another grid */
  const char *bases[2][3] = {{"kd_T2_resize", "kd", "2"}, {"cwd_T4_resize", "cwd", "4"}};
  for (int i = 0; i < 2; i++) {
    ASSERT_OK(fixture_to_npy(base, key(bases[i][0], "s"), s, 0));
    ASSERT_OK(fixture_to_npy(base, key(bases[i][0], "t"), t, 0));
    snprintf(args, sizeof args, "--method %s --student '%s' --teacher '%s' --T %s --grad-out '%s'", bases[i][1], s, t,
             bases[i][2], g);
    ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 0);
    float want;
    ASSERT_OK(hakd_st_read_f32(base, key(bases[i][0], "loss"), &want, 1));
    ASSERT_NEAR(json_loss(out), want, VALUE_TOL * fabs(want));
    ASSERT_TRUE(npy_err(g, base, key(bases[i][0], "grad")) <= GRAD_TOL);
  }
  hakd_st_close(ce);
  hakd_st_close(bce);
  hakd_st_close(base);
}

TEST(cli_loss_errors) {
  hakd_st_file *ce = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/hakd_ce.safetensors"), &ce));
  const char *s = tmp_file("s.npy"), *t = tmp_file("t.npy"), *y = tmp_file("y.npy"), *bad = tmp_file("bad.npy");
  ASSERT_OK(fixture_to_npy(ce, "z_s", s, 0));
  ASSERT_OK(fixture_to_npy(ce, "z_t", t, 0));
  ASSERT_OK(fixture_to_npy(ce, "labels", y, 1));
  hakd_st_close(ce);
  char out[4096], err[4096], args[2048];
  const char *missing = tmp_file("missing.npy");

  snprintf(args, sizeof args, "--method heteroakd --student '%s' --teacher '%s' --labels '%s'", s, missing, y);
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "missing.npy") != NULL);

  /* teacher with another class count */
  float zeros[2 * 5 * 3 * 6] = {0};
  int64_t kshape[4] = {2, 5, 3, 6};
  ASSERT_OK(hakd_npy_write(bad, HAKD_NPY_F32, 4, kshape, zeros));
  snprintf(args, sizeof args, "--method heteroakd --student '%s' --teacher '%s' --labels '%s'", s, bad, y);
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "bad.npy") && strstr(err, "(2, 5, 3, 6)") && strstr(err, "s.npy"));

  /* labels of another batch size, float labels, a label out of range, 3-D logits */
  int64_t yshape[3] = {1, 4, 5}, sshape[3] = {3, 4, 5};
  uint8_t labels[20] = {0};
  ASSERT_OK(hakd_npy_write(bad, HAKD_NPY_U8, 3, yshape, labels));
  snprintf(args, sizeof args, "--method heteroakd --student '%s' --teacher '%s' --labels '%s'", s, t, bad);
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "bad.npy") && strstr(err, "N = 3"));
  ASSERT_OK(hakd_npy_write(bad, HAKD_NPY_F32, 3, sshape, zeros));
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "bad.npy") && strstr(err, "float32"));
  uint8_t out_of_range[60] = {0};
  out_of_range[27] = 4;
  ASSERT_OK(hakd_npy_write(bad, HAKD_NPY_U8, 3, sshape, out_of_range));
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "bad.npy") && strstr(err, "label 4 at (1, 1, 2)"));
  snprintf(args, sizeof args, "--method kd --student '%s' --teacher '%s'", bad, t);
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "bad.npy") && strstr(err, "expected float32 logits"));

  /* usage errors */
  snprintf(args, sizeof args, "--method heteroakd --student '%s' --teacher '%s'", s, t);
  ASSERT_EQ_INT(run_cli(args, out, sizeof out, err, sizeof err), 1);
  ASSERT_TRUE(strstr(err, "needs --labels") != NULL);
  ASSERT_EQ_INT(run_cli("--method kd --bogus 1", out, sizeof out, err, sizeof err), 2);
  ASSERT_TRUE(strstr(err, "--bogus") != NULL);
  ASSERT_EQ_INT(run_cli("--help", out, sizeof out, err, sizeof err), 0);
  ASSERT_TRUE(strstr(out, "--weights-out") != NULL);
}
