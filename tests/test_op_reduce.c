/* sum / mean (all elements and per dim) against PyTorch (tools/gen_ops_basic.py), finite
 * differences, determinism of the double accumulation, and dim errors. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/reduce.safetensors"
/* Sums of at most 120 float values (in double for the full reductions): a few float ulps of the
 * result, so 1e-5 normalised error is ample; a wrong index or scale gives O(1). */
#define TOL 1e-5

static hakd_tensor *build_sum(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_sum(ctx, in[0]);
}
static hakd_tensor *build_mean(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_mean(ctx, in[0]);
}
/* params: dim, keepdim */
static hakd_tensor *build_sum_dim(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_sum_dim(ctx, in[0], (int)args->params[0], (int)args->params[1]);
}
static hakd_tensor *build_mean_dim(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_mean_dim(ctx, in[0], (int)args->params[0], (int)args->params[1]);
}

TEST(sum_matches_torch) { golden_run(FIXTURE, "sum", "x", build_sum, TOL); }
TEST(mean_matches_torch) { golden_run(FIXTURE, "mean", "x", build_mean, TOL); }
TEST(sum_dim_keepdim_matches_torch) { golden_run(FIXTURE, "sum_dim1_keep", "x", build_sum_dim, TOL); }
TEST(sum_dim0_matches_torch) { golden_run(FIXTURE, "sum_dim0", "x", build_sum_dim, TOL); }
TEST(mean_last_dim_matches_torch) { golden_run(FIXTURE, "mean_dimlast", "x", build_mean_dim, TOL); }
TEST(mean_dim_keepdim_matches_torch) { golden_run(FIXTURE, "mean_dim2_keep", "x", build_mean_dim, TOL); }

/* All four are linear in x: central differences are exact up to float rounding of L; eps 1e-2,
 * atol/rtol 1e-3 as for the elementwise ops. */
static hakd_tensor *gc_reduce(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  switch (*(const int *)arg) {
    case 0: return hakd_sum(ctx, in[0]);
    case 1: return hakd_mean(ctx, in[0]);
    case 2: return hakd_sum_dim(ctx, in[0], 2, 0);
    default: return hakd_mean_dim(ctx, in[0], -3, 1);
  }
}

TEST(reductions_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[4] = {2, 3, 4, 5};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, shape, 1.0f, 5);
  const char *what[] = {"sum", "mean", "sum_dim", "mean_dim"};
  for (int kind = 0; kind < 4; kind++) gradcheck(what[kind], gc_reduce, &kind, &x, 1, 1e-2, 1e-3, 1e-3, 120);
  hakd_params_free(&p);
}

/* The full sum of 2^20 + 1 values accumulates in double: 1 + 2^20 * 2^-24 is exact in double,
 * while float accumulation would lose every 2^-24 term (below half an ulp of 1). */
TEST(full_sum_accumulates_in_double) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t n = (1 << 20) + 1;
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 1, &n);
  hakd_f32(x)[0] = 1.0f;
  for (int64_t i = 1; i < n; i++) hakd_f32(x)[i] = 1.0f / 16777216.0f;
  hakd_tensor *s = hakd_sum(ctx, x);
  ASSERT_TRUE(s != NULL);
  ASSERT_EQ_INT(s->ndim, 1);
  ASSERT_EQ_INT(s->shape[0], 1);
  ASSERT_NEAR(hakd_f32(s)[0], 1.0625, 0); /* exactly representable */
  hakd_ctx_free(ctx);
}

TEST(sum_dim_of_1d_gives_0d_like_torch) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t n = 4;
  float v[4] = {1, 2, 3, 4};
  hakd_tensor *x = hakd_tensor_from(ctx, HAKD_F32, 1, &n, v);
  hakd_tensor *s = hakd_sum_dim(ctx, x, 0, 0);
  ASSERT_TRUE(s != NULL);
  ASSERT_EQ_INT(s->ndim, 0);
  ASSERT_NEAR(hakd_f32(s)[0], 10.0f, 0);
  hakd_ctx_free(ctx);
}

TEST(bad_dim_is_an_error_naming_op_and_shape) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[2] = {2, 3};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 2, shape);
  const char *msg[] = {"sum_dim", "dim 2", "(2, 3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_sum_dim(ctx, x, 2, 0), HAKD_EINVAL, msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 2, shape);
  const char *msg2[] = {"mean_dim", "dim -3", "(2, 3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_mean_dim(ctx, x, -3, 1), HAKD_EINVAL, msg2));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_I32, 2, shape);
  const char *msg3[] = {"mean", "float32", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_mean(ctx, x), HAKD_EINVAL, msg3));
  hakd_ctx_free(ctx);
}
