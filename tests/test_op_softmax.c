/* softmax / log_softmax along any dim against PyTorch (tools/gen_ops_basic.py), finite
 * differences, numerical stability, and dim errors. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/softmax.safetensors"
/* expf/logf within 1-2 ulp of PyTorch's and sums of <= 7 terms: a few ulps; 1e-5 normalised
 * error is ample, while a missed max subtraction (inf/nan) or a wrong dim gives O(1). */
#define TOL 1e-5

/* params: log, dim */
static hakd_tensor *build_softmax(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  int dim = (int)args->params[1];
  return args->params[0] ? hakd_log_softmax(ctx, in[0], dim) : hakd_softmax(ctx, in[0], dim);
}

TEST(softmax_dim1_matches_torch) { golden_run(FIXTURE, "softmax_dim1", "x", build_softmax, TOL); }
TEST(softmax_last_dim_matches_torch) { golden_run(FIXTURE, "softmax_dimlast", "x", build_softmax, TOL); }
TEST(softmax_dim0_matches_torch) { golden_run(FIXTURE, "softmax_dim0", "x", build_softmax, TOL); }
TEST(softmax_large_logits_match_torch) { golden_run(FIXTURE, "softmax_large", "x", build_softmax, TOL); }
TEST(log_softmax_dim1_matches_torch) { golden_run(FIXTURE, "log_softmax_dim1", "x", build_softmax, TOL); }
TEST(log_softmax_last_dim_matches_torch) { golden_run(FIXTURE, "log_softmax_dimlast", "x", build_softmax, TOL); }
TEST(log_softmax_large_logits_match_torch) { golden_run(FIXTURE, "log_softmax_large", "x", build_softmax, TOL); }

typedef struct {
  int log_space, dim;
} softmax_args;

static hakd_tensor *gc_softmax(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const softmax_args *a = arg;
  return a->log_space ? hakd_log_softmax(ctx, in[0], a->dim) : hakd_softmax(ctx, in[0], a->dim);
}

/* Smooth with bounded derivatives for N(0,1) logits: truncation ~ eps^2 = 1e-6 at eps 1e-3;
 * float rounding of L (|L| ~ 1, ulp ~ 1e-7) / 2e-3 ~ 1e-4; atol 5e-4, rtol 1e-2 cover both. */
TEST(softmax_gradcheck_dims) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[4] = {2, 4, 3, 5};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, shape, 1.0f, 51);
  int dims[3] = {1, -1, 0};
  for (int log_space = 0; log_space < 2; log_space++)
    for (int d = 0; d < 3; d++) {
      softmax_args a = {log_space, dims[d]};
      char what[48];
      snprintf(what, sizeof what, "%s dim %d", log_space ? "log_softmax" : "softmax", dims[d]);
      gradcheck(what, gc_softmax, &a, &x, 1, 1e-3, 5e-4, 1e-2, 120);
    }
  hakd_params_free(&p);
}

/* A channel softmax over (N, K, H, W) with H*W spanning several blocks of positions and more
 * than the OpenMP threshold: every pixel's probabilities sum to 1, and logits offset by 1000
 * give the same probabilities (max subtraction). */
TEST(channel_softmax_large_is_stable_and_normalised) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[4] = {2, 19, 40, 45};
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 4, shape), *shifted = hakd_tensor_new(ctx, HAKD_F32, 4, shape);
  uint64_t rng = hakd_rng_seed(5);
  int64_t n = hakd_numel(x), hw = 40 * 45;
  for (int64_t i = 0; i < n; i++) {
    hakd_f32(x)[i] = 3.0f * hakd_rng_normal(&rng);
    hakd_f32(shifted)[i] = hakd_f32(x)[i] + 1000.0f;
  }
  hakd_tensor *y = hakd_softmax(ctx, x, 1), *ys = hakd_softmax(ctx, shifted, 1);
  ASSERT_TRUE(y != NULL && ys != NULL);
  for (int64_t b = 0; b < 2; b++)
    for (int64_t s = 0; s < hw; s++) {
      double total = 0;
      for (int64_t k = 0; k < 19; k++) total += hakd_f32(y)[(b * 19 + k) * hw + s];
      if (fabs(total - 1.0) > 1e-5) ASSERT_NEAR(total, 1.0, 1e-5); /* 19 float terms */
    }
  /* x + 1000 rounds x to a multiple of 2^-14 (ulp at 1000 is 6e-5), so probabilities differ
   * by up to ~|dp/dx| * 3e-5; 1e-4 relative covers it. */
  ASSERT_ALLCLOSE(hakd_f32(ys), hakd_f32(y), n, 1e-4);
  hakd_ctx_free(ctx);
}

TEST(bad_dim_is_an_error_naming_op_and_shape) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[2] = {2, 3};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 2, shape);
  const char *msg[] = {"log_softmax", "dim 3", "(2, 3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_log_softmax(ctx, x, 3), HAKD_EINVAL, msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 2, shape);
  const char *msg2[] = {"softmax", "dim -3", "(2, 3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_softmax(ctx, x, -3), HAKD_EINVAL, msg2));
  hakd_ctx_free(ctx);
}
