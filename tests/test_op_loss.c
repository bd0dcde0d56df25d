/* cross_entropy and kl_div_softmax against PyTorch (tools/gen_ops_basic.py), finite differences,
 * a large case against a naive double reference, and the error / edge cases of the contract. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/loss.safetensors"
/* A mean of <= 24 per-pixel losses, each a logsumexp of <= 5 terms (expf/logf within 1-2 ulp of
 * PyTorch's), summed in double: a few float ulps; 1e-5 normalised error is ample, while a wrong
 * normaliser (all pixels instead of valid ones), class or temperature factor gives > 1e-2. */
#define TOL 1e-5

/* params: ignore_index */
static hakd_tensor *build_ce(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_cross_entropy(ctx, in[0], in[1], (int)args->params[0]);
}
/* fparams: T, divisor */
static hakd_tensor *build_kl(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_kl_div_softmax(ctx, in[0], in[1], (float)args->fparams[0], args->fparams[1]);
}

TEST(cross_entropy_4d_with_ignore_matches_torch) { golden_run(FIXTURE, "ce_4d", "x labels", build_ce, TOL); }
TEST(cross_entropy_2d_matches_torch) { golden_run(FIXTURE, "ce_2d", "x labels", build_ce, TOL); }
/* PyTorch gives nan here; the fixture holds the contract's 0 loss and zero gradient (tolerance
 * 0 relative to the 1e-6 floor: any nonzero value fails). */
TEST(cross_entropy_all_ignored_is_zero) { golden_run(FIXTURE, "ce_all_ignored", "x labels", build_ce, 0.0); }
TEST(kl_temperature_1_matches_torch) { golden_run(FIXTURE, "kl_T1", "s t!", build_kl, TOL); }
TEST(kl_temperature_4_matches_torch) { golden_run(FIXTURE, "kl_T4", "s t!", build_kl, TOL); }
TEST(kl_2d_matches_torch) { golden_run(FIXTURE, "kl_2d", "s t!", build_kl, TOL); }

static hakd_tensor *gc_ce(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const int32_t *labels = arg;
  int64_t shape[3] = {2, 3, 4};
  return hakd_cross_entropy(ctx, in[0], hakd_tensor_from(ctx, HAKD_I32, 3, shape, labels), 255);
}

/* Logsumexp of unit-scale logits: smooth, truncation ~ eps^2 = 1e-6 at eps 1e-3; float rounding
 * of a loss ~ 2 (ulp 2.4e-7) / 2e-3 ~ 1.2e-4; atol 3e-4, rtol 1e-2. Ignored pixels must get
 * exactly the numeric gradient 0. */
TEST(cross_entropy_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[4] = {2, 5, 3, 4};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, shape, 1.0f, 71);
  int32_t labels[24];
  for (int i = 0; i < 24; i++) labels[i] = i % 7 == 3 ? 255 : (i * 3) % 5;
  gradcheck("cross_entropy", gc_ce, labels, &x, 1, 1e-3, 3e-4, 1e-2, 120);
  hakd_params_free(&p);
}

static hakd_tensor *gc_kl(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  return hakd_kl_div_softmax(ctx, in[0], in[1], *(const float *)arg, 24.0);
}

/* Same reasoning as cross entropy (the loss is a difference of two logsumexps of s/T). t is a
 * parameter here, yet must get no gradient: the analytic gradient of t stays 0. */
TEST(kl_gradcheck_and_constant_target) {
  float temps[2] = {1.0f, 4.0f};
  for (int k = 0; k < 2; k++) {
    hakd_params p;
    hakd_params_init(&p);
    int64_t shape[4] = {2, 5, 3, 4};
    hakd_tensor *in[2] = {gradcheck_input(&p, "s", 4, shape, 2.0f, 81), gradcheck_input(&p, "t", 4, shape, 2.0f, 82)};
    in[1]->requires_grad = 0; /* only s is probed */
    gradcheck("kl_div_softmax", gc_kl, &temps[k], in, 2, 1e-3, 3e-4, 1e-2, 120);
    in[1]->requires_grad = 1;
    hakd_ctx *ctx = hakd_ctx_new();
    ASSERT_OK(hakd_backward(ctx, hakd_kl_div_softmax(ctx, in[0], in[1], temps[k], 24.0)));
    for (int64_t i = 0; i < hakd_numel(in[1]); i++) ASSERT_NEAR(in[1]->grad[i], 0.0f, 0);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
}

/* 19 classes over 40x45 pixels (several pixel blocks per image, OpenMP) against a double
 * reference of the per-pixel logsumexp; one label in 10 ignored. */
TEST(cross_entropy_large_matches_naive_reference) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  enum { N = 2, K = 19, S = 40 * 45 };
  int64_t xs[4] = {N, K, 40, 45}, ls[3] = {N, 40, 45};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 3.0f, 91);
  hakd_tensor *labels = hakd_tensor_new(ctx, HAKD_I32, 3, ls);
  uint64_t rng = hakd_rng_seed(92);
  for (int i = 0; i < N * S; i++) hakd_i32(labels)[i] = i % 10 == 0 ? 255 : (int32_t)(hakd_rng_next(&rng) % K);
  hakd_tensor *loss = hakd_cross_entropy(ctx, x, labels, 255);
  ASSERT_TRUE(loss != NULL);
  ASSERT_OK(hakd_backward(ctx, loss));
  double total = 0;
  int valid = 0;
  static float want_grad[N * K * S];
  const float *xv = hakd_f32(x);
  for (int n = 0; n < N; n++)
    for (int s = 0; s < S; s++) {
      int lab = hakd_i32(labels)[n * S + s];
      double mx = -INFINITY, sum = 0;
      for (int k = 0; k < K; k++) mx = fmax(mx, xv[(n * K + k) * S + s]);
      for (int k = 0; k < K; k++) sum += exp(xv[(n * K + k) * S + s] - mx);
      double lse = mx + log(sum);
      for (int k = 0; k < K; k++) {
        double prob = exp(xv[(n * K + k) * S + s] - lse);
        want_grad[(n * K + k) * S + s] = lab == 255 ? 0.0f : (float)(prob - (k == lab));
      }
      if (lab == 255) continue;
      total += lse - xv[(n * K + lab) * S + s];
      valid++;
    }
  for (int i = 0; i < N * K * S; i++) want_grad[i] /= (float)valid;
  ASSERT_NEAR(hakd_f32(loss)[0], total / valid, 1e-5 * total / valid); /* float logsumexp per pixel */
  ASSERT_ALLCLOSE(x->grad, want_grad, N * K * S, 1e-5);
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

TEST(kl_of_identical_logits_is_zero) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[4] = {2, 7, 5, 3};
  hakd_tensor *s = hakd_tensor_new(ctx, HAKD_F32, 4, shape);
  uint64_t rng = hakd_rng_seed(3);
  for (int64_t i = 0; i < hakd_numel(s); i++) hakd_f32(s)[i] = 5.0f * hakd_rng_normal(&rng);
  hakd_tensor *kl = hakd_kl_div_softmax(ctx, s, s, 2.0f, 30.0);
  ASSERT_TRUE(kl != NULL);
  ASSERT_NEAR(hakd_f32(kl)[0], 0.0f, 0); /* identical inputs: every log-ratio is exactly 0 */
  hakd_ctx_free(ctx);
}

TEST(cross_entropy_bad_label_names_value_and_position) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[4] = {2, 5, 3, 4}, ls[3] = {2, 3, 4};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs), *labels = hakd_tensor_zeros(ctx, HAKD_I32, 3, ls);
  hakd_i32(labels)[1 * 12 + 2 * 4 + 3] = 7;
  const char *msg[] = {"cross_entropy", "label 7", "(1, 2, 3)", "[0, 5)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_cross_entropy(ctx, x, labels, 255), HAKD_ERANGE, msg));
  hakd_ctx_reset(ctx);
  int64_t xs2[2] = {3, 4}, ls2[1] = {3};
  x = hakd_tensor_zeros(ctx, HAKD_F32, 2, xs2);
  labels = hakd_tensor_zeros(ctx, HAKD_I32, 1, ls2);
  hakd_i32(labels)[2] = -1; /* negative and not the ignore label */
  const char *msg2[] = {"label -1", "(2)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_cross_entropy(ctx, x, labels, 255), HAKD_ERANGE, msg2));
  hakd_ctx_free(ctx);
}

TEST(shape_mismatch_is_an_error_naming_op_and_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[4] = {2, 5, 3, 4}, ls[3] = {2, 4, 3};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs), *labels = hakd_tensor_zeros(ctx, HAKD_I32, 3, ls);
  const char *msg[] = {"cross_entropy", "(2, 5, 3, 4)", "(2, 4, 3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_cross_entropy(ctx, x, labels, 255), HAKD_ESHAPE, msg));
  hakd_ctx_reset(ctx);
  int64_t ts[4] = {2, 6, 3, 4};
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  hakd_tensor *t = hakd_tensor_zeros(ctx, HAKD_F32, 4, ts);
  const char *msg2[] = {"kl_div_softmax", "(2, 5, 3, 4)", "(2, 6, 3, 4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_kl_div_softmax(ctx, x, t, 1.0f, 24.0), HAKD_ESHAPE, msg2));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  const char *msg3[] = {"kl_div_softmax", "temperature", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_kl_div_softmax(ctx, x, x, 0.0f, 24.0), HAKD_EINVAL, msg3));
  hakd_ctx_free(ctx);
}
