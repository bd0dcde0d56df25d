/* layernorm over the last dim against PyTorch (tools/gen_ops_basic.py), finite differences,
 * and shape errors. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/layernorm.safetensors"
/* Mean and variance of <= 8 values (in double) and one rsqrt: a few float ulps; 1e-5
 * normalised error is ample, a wrong variance (biased vs unbiased, eps misplaced) gives > 1e-2. */
#define TOL 1e-5

/* fparams: eps */
static hakd_tensor *build_affine(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_layernorm(ctx, in[0], in[1], in[2], (float)args->fparams[0]);
}
static hakd_tensor *build_plain(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_layernorm(ctx, in[0], NULL, NULL, (float)args->fparams[0]);
}

TEST(layernorm_affine_matches_torch) { golden_run(FIXTURE, "affine", "x w b", build_affine, TOL); }
TEST(layernorm_without_affine_matches_torch) { golden_run(FIXTURE, "plain", "x", build_plain, TOL); }

static hakd_tensor *gc_layernorm(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  int affine = *(const int *)arg;
  return hakd_layernorm(ctx, in[0], affine ? in[1] : NULL, affine ? in[2] : NULL, 1e-5f);
}

/* Smooth for rows with unit-scale spread (rstd ~ 1): truncation ~ eps^2 = 1e-6 at eps 1e-3,
 * float rounding of L (|L| ~ 5, ulp ~ 5e-7) / 2e-3 ~ 2.5e-4; atol 1e-3, rtol 1e-2. */
TEST(layernorm_gradcheck) {
  for (int affine = 0; affine < 2; affine++) {
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[3] = {2, 3, 6}, ws[1] = {6};
    hakd_tensor *in[3] = {gradcheck_input(&p, "x", 3, xs, 1.0f, 61), gradcheck_input(&p, "w", 1, ws, 1.0f, 62),
                          gradcheck_input(&p, "b", 1, ws, 1.0f, 63)};
    gradcheck(affine ? "layernorm affine" : "layernorm", gc_layernorm, &affine, in, affine ? 3 : 1, 1e-3, 1e-3, 1e-2,
              40);
    hakd_params_free(&p);
  }
}

/* Rows offset by 1e4 with unit spread: E[x^2] - E[x]^2 would cancel to noise in float; the two-
 * pass variance keeps the normalised rows at mean 0, variance 1 (to float rounding of x). */
TEST(layernorm_large_offset_rows_are_normalised) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[2] = {64, 512};
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 2, shape);
  uint64_t rng = hakd_rng_seed(9);
  for (int64_t i = 0; i < hakd_numel(x); i++) hakd_f32(x)[i] = 1e4f + hakd_rng_normal(&rng);
  hakd_tensor *y = hakd_layernorm(ctx, x, NULL, NULL, 1e-5f);
  ASSERT_TRUE(y != NULL);
  for (int r = 0; r < 64; r++) {
    double mean = 0, var = 0;
    for (int i = 0; i < 512; i++) mean += hakd_f32(y)[r * 512 + i];
    mean /= 512;
    for (int i = 0; i < 512; i++) var += (hakd_f32(y)[r * 512 + i] - mean) * (hakd_f32(y)[r * 512 + i] - mean);
    var /= 512;
    ASSERT_NEAR(mean, 0.0, 1e-5); /* x rounded to ulp(1e4) ~ 1e-3 moves stats by < 1e-5 */
    ASSERT_NEAR(var, 1.0, 1e-3); /* 1e-5 eps and ulp(1e4) rounding of unit-spread inputs */
  }
  hakd_ctx_free(ctx);
}

TEST(affine_shape_mismatch_is_an_error_naming_op_and_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[2] = {4, 6}, ws[1] = {5};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 2, xs), *w = hakd_tensor_zeros(ctx, HAKD_F32, 1, ws);
  const char *msg[] = {"layernorm", "weight (5)", "(4, 6)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_layernorm(ctx, x, w, NULL, 1e-5f), HAKD_ESHAPE, msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 2, xs);
  w = hakd_tensor_zeros(ctx, HAKD_F32, 1, ws);
  const char *msg2[] = {"layernorm", "bias (5)", "(4, 6)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_layernorm(ctx, x, NULL, w, 1e-5f), HAKD_ESHAPE, msg2));
  hakd_ctx_free(ctx);
}
