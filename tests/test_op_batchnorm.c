/* batchnorm2d against PyTorch (tools/gen_ops_conv.py) and finite differences, in training mode
 * (batch statistics, running-stat update) and eval mode (running statistics). */
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "op_fixture.h"
#include "hakd/io.h"
#include "hakd/ops.h"

/* fp32 against PyTorch's fp32: statistics are reduced in double here (PyTorch: float/double mix),
 * outputs are one multiply-add per element, gradients a few reductions over <= 90 values; the
 * differences are a few ulps (~1e-7 of the largest value), so 1e-5 leaves ample margin while a
 * biased/unbiased mix-up (factor M/(M-1) >= 1.01) or a missing term is far outside it. */
#define BN_TOL 1e-5

static void check_case(const hakd_st_file *f, const char *c) {
  int64_t prm[2];
  if (!op_fixture_ints(f, c, prm, 2)) return;
  int affine = (int)prm[0], training = (int)prm[1];
  int64_t nh = 0;
  float *hyper = op_fixture_floats(f, c, "hyper", &nh);
  ASSERT_TRUE(hyper && nh == 2);
  hakd_params p;
  hakd_params_init(&p);
  hakd_tensor *x = op_fixture_param(&p, f, c, "x", 0);
  hakd_tensor *w = affine ? op_fixture_param(&p, f, c, "weight", 0) : NULL;
  hakd_tensor *b = affine ? op_fixture_param(&p, f, c, "bias", 0) : NULL;
  hakd_tensor *rm = op_fixture_param(&p, f, c, "running_mean", 1);
  hakd_tensor *rv = op_fixture_param(&p, f, c, "running_var", 1);
  int64_t ngy = 0;
  float *gy = op_fixture_floats(f, c, "gy", &ngy);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_training(ctx, training);
  hakd_tensor *y = hakd_batchnorm2d(ctx, x, w, b, rm, rv, hyper[0], hyper[1]);
  if (!y) test_fail(__FILE__, __LINE__, "%s: batchnorm2d failed: %s", c, hakd_error_message());
  int ok = y && gy && ngy == hakd_numel(y);
  ok = ok && op_fixture_check(f, c, "y", hakd_f32(y), hakd_numel(y), BN_TOL);
  /* eval mode leaves the running stats as they were: the "after" tensors equal the "before" ones */
  ok = ok && op_fixture_check(f, c, "running_mean_after", hakd_f32(rm), hakd_numel(rm), BN_TOL);
  ok = ok && op_fixture_check(f, c, "running_var_after", hakd_f32(rv), hakd_numel(rv), BN_TOL);
  if (ok && hakd_backward_seeded(ctx, y, gy) != 0) {
    test_fail(__FILE__, __LINE__, "%s: backward failed: %s", c, hakd_error_message());
    ok = 0;
  }
  ok = ok && op_fixture_check(f, c, "gx", x->grad, hakd_numel(x), BN_TOL);
  ok = ok && (!affine || op_fixture_check(f, c, "gweight", w->grad, hakd_numel(w), BN_TOL));
  ok = ok && (!affine || op_fixture_check(f, c, "gbias", b->grad, hakd_numel(b), BN_TOL));
  free(hyper);
  free(gy);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

static void check_cases(const char *const *names, int n) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/batchnorm.safetensors"), &f));
  for (int i = 0; i < n && !test_failed(); i++) check_case(f, names[i]);
  hakd_st_close(f);
}

TEST(train_4d_matches_torch_incl_running_stats) {
  const char *names[] = {"train4d"};
  check_cases(names, 1);
}

TEST(train_2d_and_no_affine_match_torch) {
  const char *names[] = {"train2d", "train_noaffine"};
  check_cases(names, 2);
}

TEST(eval_matches_torch) {
  const char *names[] = {"eval4d"};
  check_cases(names, 1);
}

/* ---- finite differences ---- */

typedef struct {
  int training;
  hakd_tensor *running_mean, *running_var;
} bn_arg;

static hakd_tensor *build_bn(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  bn_arg *a = arg;
  hakd_ctx_set_training(ctx, a->training);
  return hakd_batchnorm2d(ctx, in[0], in[1], in[2], a->running_mean, a->running_var, 0.1f, 1e-5f);
}

/* Training mode is nonlinear in x (through mean and variance): central differences with eps 1e-2
 * have truncation error ~eps^2/6 * |f'''| ~ 2e-5 and fp32 rounding ~sqrt(#outputs) * 1e-7 / (2 eps)
 * ~ 5e-5 on inputs of unit scale; atol 5e-4 + rtol 5e-3 is above both and far below the error
 * of dropping the batch-statistics terms (O(0.1-1)). */
static void gradcheck_bn(int training, int ndim) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs4[4] = {2, 3, 4, 3}, xs2[2] = {7, 3}, cs[1] = {3};
  hakd_tensor *in[3] = {gradcheck_input(&p, "x", ndim, ndim == 4 ? xs4 : xs2, 1.0f, 1),
                        gradcheck_input(&p, "w", 1, cs, 0.5f, 2), gradcheck_input(&p, "b", 1, cs, 1.0f, 3)};
  for (int c = 0; c < 3; c++) hakd_f32(in[1])[c] += 1.0f;
  bn_arg a = {training, hakd_params_add(&p, "rm", 1, cs, 1), hakd_params_add(&p, "rv", 1, cs, 1)};
  for (int c = 0; c < 3; c++) hakd_f32(a.running_var)[c] = 0.5f + 0.25f * (float)c;
  char what[64];
  snprintf(what, sizeof what, "batchnorm %dd %s", ndim, training ? "train" : "eval");
  gradcheck(what, build_bn, &a, in, 3, 1e-2, 5e-4, 5e-3, 80);
  hakd_params_free(&p);
}

TEST(gradcheck_train_4d) { gradcheck_bn(1, 4); }
TEST(gradcheck_train_2d) { gradcheck_bn(1, 2); }
TEST(gradcheck_eval_4d) { gradcheck_bn(0, 4); }

/* The float32 fused op (BatchNorm + residual + activation, one node) equals batchnorm2d, add and
 * relu/relu6 one by one to the bit: output, running statistics, and the gradients of x, weight,
 * bias and the residual, in training and eval mode, for every activation with and without a
 * residual. A 9x7 map (63 values per plane: the 8-lane sums' tail) and values around 0 and 6. */
static void bn_act_run(int fused, int training, hakd_activation act, int with_res, float *out[6], int64_t sizes[6]) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 5, 9, 7}, cs[1] = {5};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 0), *w = hakd_params_add(&p, "w", 1, cs, 0);
  hakd_tensor *b = hakd_params_add(&p, "b", 1, cs, 0), *r = hakd_params_add(&p, "r", 4, xs, 0);
  hakd_tensor *rm = hakd_params_add(&p, "rm", 1, cs, 1), *rv = hakd_params_add(&p, "rv", 1, cs, 1);
  uint64_t rng = hakd_rng_seed(11);
  for (int64_t i = 0; i < hakd_numel(x); i++) hakd_f32(x)[i] = 4.0f * hakd_rng_normal(&rng) + 1.0f;
  for (int64_t i = 0; i < hakd_numel(r); i++) hakd_f32(r)[i] = 3.0f * hakd_rng_normal(&rng);
  for (int c = 0; c < 5; c++) {
    hakd_f32(w)[c] = 1.0f + 0.5f * hakd_rng_normal(&rng);
    hakd_f32(b)[c] = 2.0f * hakd_rng_normal(&rng);
    hakd_f32(rm)[c] = 0.1f * (float)c;
    hakd_f32(rv)[c] = 1.0f + 0.2f * (float)c;
  }
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_training(ctx, training);
  hakd_tensor *res = with_res ? r : NULL, *y;
  if (fused) {
    y = hakd_batchnorm2d_act(ctx, x, w, b, rm, rv, 0.1f, 1e-5f, res, act);
  } else {
    y = hakd_batchnorm2d(ctx, x, w, b, rm, rv, 0.1f, 1e-5f);
    if (res) y = hakd_add(ctx, y, res);
    if (act == HAKD_ACT_RELU) y = hakd_relu(ctx, y);
    if (act == HAKD_ACT_RELU6) y = hakd_relu6(ctx, y);
  }
  ASSERT_TRUE(y != NULL);
  float *gy = malloc((size_t)hakd_numel(y) * sizeof(float));
  for (int64_t i = 0; i < hakd_numel(y); i++) gy[i] = hakd_rng_normal(&rng);
  ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
  const hakd_tensor *srcs[6] = {y, x, w, b, r, rm};
  for (int k = 0; k < 6; k++) {
    const float *from = k == 0 ? hakd_f32(y) : k == 5 ? hakd_f32(rm) : srcs[k]->grad;
    sizes[k] = hakd_numel(srcs[k]);
    out[k] = calloc((size_t)sizes[k] + 5, sizeof(float));
    if (from) memcpy(out[k], from, (size_t)sizes[k] * sizeof(float));
    if (k == 5) memcpy(out[k] + sizes[k], hakd_f32(rv), 5 * sizeof(float));
  }
  free(gy);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

TEST(fused_act_equals_the_ops_one_by_one_to_the_bit) {
  const char *names[6] = {"output", "dx", "dweight", "dbias", "dresidual", "running stats"};
  for (int training = 0; training < 2; training++)
    for (int a = 0; a < 3; a++)
      for (int with_res = 0; with_res < 2 && !test_failed(); with_res++) {
        float *want[6], *got[6];
        int64_t n[6];
        bn_act_run(0, training, (hakd_activation)a, with_res, want, n);
        bn_act_run(1, training, (hakd_activation)a, with_res, got, n);
        for (int k = 0; k < 6; k++) {
          if (memcmp(want[k], got[k], (size_t)(n[k] + (k == 5 ? 5 : 0)) * sizeof(float)) != 0)
            test_fail(__FILE__, __LINE__, "training %d act %d residual %d: %s differs", training, a, with_res,
                      names[k]);
          free(want[k]);
          free(got[k]);
        }
      }
}

typedef struct {
  hakd_activation act;
  hakd_tensor *running_mean, *running_var;
} bn_act_arg;

static hakd_tensor *build_bn_act(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  bn_act_arg *a = arg;
  hakd_ctx_set_training(ctx, 1);
  return hakd_batchnorm2d_act(ctx, in[0], in[1], in[2], a->running_mean, a->running_var, 0.1f, 1e-5f, in[3], a->act);
}

/* Finite differences through the fused op (residual and ReLU6 included; tolerances as
 * gradcheck_bn's, inputs kept away from the activation's kinks by their scale). */
TEST(gradcheck_fused_act) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 3, 4, 3}, cs[1] = {3};
  hakd_tensor *in[4] = {gradcheck_input(&p, "x", 4, xs, 1.0f, 1), gradcheck_input(&p, "w", 1, cs, 0.5f, 2),
                        gradcheck_input(&p, "b", 1, cs, 1.0f, 3), gradcheck_input(&p, "r", 4, xs, 1.0f, 4)};
  for (int c = 0; c < 3; c++) hakd_f32(in[1])[c] += 1.0f;
  bn_act_arg a = {HAKD_ACT_RELU6, hakd_params_add(&p, "rm", 1, cs, 1), hakd_params_add(&p, "rv", 1, cs, 1)};
  gradcheck("batchnorm2d_act relu6 residual", build_bn_act, &a, in, 4, 1e-2, 5e-4, 5e-3, 80);
  hakd_params_free(&p);
}

/* Inputs far from zero (mean 1000, std 1): normalising must not lose the signal to cancellation;
 * checked against a double-precision reference. */
TEST(large_mean_keeps_precision) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {4, 2, 8, 8};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 7);
  int64_t n = hakd_numel(x);
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] += 1000.0f;
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *y = hakd_batchnorm2d(ctx, x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f);
  ASSERT_TRUE(y != NULL);
  double max_err = 0;
  for (int64_t c = 0; c < 2; c++) {
    double sum = 0, sq = 0;
    for (int64_t b = 0; b < 4; b++)
      for (int64_t i = 0; i < 64; i++) sum += hakd_f32(x)[(b * 2 + c) * 64 + i];
    double mean = sum / 256;
    for (int64_t b = 0; b < 4; b++)
      for (int64_t i = 0; i < 64; i++) sq += pow(hakd_f32(x)[(b * 2 + c) * 64 + i] - mean, 2);
    double rstd = 1.0 / sqrt(sq / 256 + 1e-5);
    for (int64_t b = 0; b < 4; b++)
      for (int64_t i = 0; i < 64; i++) {
        int64_t k = (b * 2 + c) * 64 + i;
        double want = (hakd_f32(x)[k] - mean) * rstd;
        if (fabs(hakd_f32(y)[k] - want) > max_err) max_err = fabs(hakd_f32(y)[k] - want);
      }
  }
  /* x*scale + shift rounds at |x*scale| ~ 1000: ulp(1000) = 6e-5, so errors up to ~1e-4 are
   * inherent to PyTorch's formula too; a variance of the raw values would be off by O(1). */
  ASSERT_NEAR(max_err, 0.0, 2e-4);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

TEST(rejects_bad_inputs) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t one[4] = {1, 3, 1, 1}, xs[4] = {2, 3, 2, 2}, bad[1] = {4};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, one);
  ASSERT_TRUE(hakd_batchnorm2d(ctx, x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "more than 1 value per channel") != NULL);
  hakd_ctx_reset(ctx);
  hakd_ctx_set_training(ctx, 0);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_batchnorm2d(ctx, x, NULL, NULL, NULL, NULL, 0.1f, 1e-5f) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "running_mean") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  hakd_tensor *w = hakd_tensor_zeros(ctx, HAKD_F32, 1, bad);
  ASSERT_TRUE(hakd_batchnorm2d(ctx, x, w, NULL, NULL, NULL, 0.1f, 1e-5f) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "weight (4) must be (3)") != NULL);
  hakd_ctx_free(ctx);
}
