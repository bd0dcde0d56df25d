/* add / sub / mul with broadcasting and affine_scalar against PyTorch (tools/gen_ops_basic.py),
 * finite differences, and shape errors. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/elementwise.safetensors"
/* One float op per element (forward) and sums of at most 40 products (broadcast gradients,
 * accumulated in double): a few float ulps, so 1e-5 normalised error is ample yet far below
 * what any indexing mistake produces (O(1)). */
#define TOL 1e-5

static hakd_tensor *build_add(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_add(ctx, in[0], in[1]);
}
static hakd_tensor *build_sub(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_sub(ctx, in[0], in[1]);
}
static hakd_tensor *build_mul(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_mul(ctx, in[0], in[1]);
}
static hakd_tensor *build_affine(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_affine_scalar(ctx, in[0], (float)args->fparams[0], (float)args->fparams[1]);
}

TEST(add_same_shape_matches_torch) { golden_run(FIXTURE, "add_same", "a b", build_add, TOL); }
TEST(add_channel_broadcast_matches_torch) { golden_run(FIXTURE, "add_channel", "a b", build_add, TOL); }
TEST(add_trailing_broadcast_matches_torch) { golden_run(FIXTURE, "add_trailing", "a b", build_add, TOL); }
TEST(add_both_sides_broadcast_matches_torch) { golden_run(FIXTURE, "add_both", "a b", build_add, TOL); }
TEST(sub_channel_broadcast_matches_torch) { golden_run(FIXTURE, "sub_channel", "a b", build_sub, TOL); }
TEST(sub_both_sides_broadcast_matches_torch) { golden_run(FIXTURE, "sub_both", "a b", build_sub, TOL); }
TEST(mul_same_shape_matches_torch) { golden_run(FIXTURE, "mul_same", "a b", build_mul, TOL); }
TEST(mul_channel_broadcast_matches_torch) { golden_run(FIXTURE, "mul_channel", "a b", build_mul, TOL); }
TEST(mul_trailing_broadcast_matches_torch) { golden_run(FIXTURE, "mul_trailing", "a b", build_mul, TOL); }
TEST(mul_both_sides_broadcast_matches_torch) { golden_run(FIXTURE, "mul_both", "a b", build_mul, TOL); }
TEST(mul_by_one_element_matches_torch) { golden_run(FIXTURE, "mul_scalar_like", "a b", build_mul, TOL); }
TEST(affine_scalar_matches_torch) { golden_run(FIXTURE, "affine", "x", build_affine, TOL); }

/* Finite differences. add/sub/mul are bilinear, so central differences have no truncation error;
 * eps 1e-2 keeps the float rounding of L (|L| ~ 10, ulp ~ 1e-6) below 1e-4 after dividing by 2 eps;
 * atol 1e-3 and rtol 1e-3 leave a margin over that. */
static hakd_tensor *gc_binary(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  switch (*(const int *)arg) {
    case 0: return hakd_add(ctx, in[0], in[1]);
    case 1: return hakd_sub(ctx, in[0], in[1]);
    default: return hakd_mul(ctx, in[0], in[1]);
  }
}

static void gradcheck_binary(int kind, int nda, const int64_t *sa, int ndb, const int64_t *sb) {
  hakd_params p;
  hakd_params_init(&p);
  hakd_tensor *in[2] = {gradcheck_input(&p, "a", nda, sa, 1.0f, 1), gradcheck_input(&p, "b", ndb, sb, 1.0f, 2)};
  const char *what[] = {"add", "sub", "mul"};
  gradcheck(what[kind], gc_binary, &kind, in, 2, 1e-2, 1e-3, 1e-3, 200);
  hakd_params_free(&p);
}

TEST(binary_ops_gradcheck_broadcast) {
  int64_t full[4] = {2, 3, 4, 5}, channel[4] = {1, 3, 1, 1}, trailing[1] = {5}, left[4] = {2, 1, 4, 1},
          right[3] = {3, 1, 5};
  for (int kind = 0; kind < 3; kind++) {
    gradcheck_binary(kind, 4, full, 4, channel);
    gradcheck_binary(kind, 1, trailing, 4, full);
    gradcheck_binary(kind, 4, left, 3, right);
  }
}

static hakd_tensor *gc_affine(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  return hakd_affine_scalar(ctx, in[0], -2.5f, 0.75f);
}

TEST(affine_scalar_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[2] = {3, 4};
  hakd_tensor *x = gradcheck_input(&p, "x", 2, shape, 1.0f, 3);
  /* linear in x: same tolerances as the binary ops */
  gradcheck("affine_scalar", gc_affine, NULL, &x, 1, 1e-2, 1e-3, 1e-3, 100);
  hakd_params_free(&p);
}

/* A large same-shape and per-channel add crosses the OpenMP threshold and the row tiling. */
TEST(large_broadcast_add_is_exact) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 8, 64, 80}, bs[4] = {1, 8, 1, 1};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 0), *b = hakd_params_add(&p, "b", 4, bs, 0);
  int64_t n = hakd_numel(x);
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = (float)(i % 1000);
  for (int c = 0; c < 8; c++) hakd_f32(b)[c] = (float)(c * 10000);
  hakd_tensor *y = hakd_add(ctx, x, b);
  ASSERT_TRUE(y != NULL);
  for (int64_t i = 0; i < n; i++) {
    float want = (float)(i % 1000) + (float)(((i / (64 * 80)) % 8) * 10000);
    if (hakd_f32(y)[i] != want) ASSERT_NEAR(hakd_f32(y)[i], want, 0); /* integers: exact */
  }
  ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, y)));
  for (int c = 0; c < 8; c++) ASSERT_NEAR(b->grad[c], 2 * 64 * 80, 0); /* exact count */
  ASSERT_NEAR(x->grad[n - 1], 1.0f, 0);
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

TEST(shape_mismatch_is_an_error_naming_op_and_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t sa[2] = {2, 3}, sb[1] = {4};
  hakd_tensor *a = hakd_tensor_zeros(ctx, HAKD_F32, 2, sa), *b = hakd_tensor_zeros(ctx, HAKD_F32, 1, sb);
  const char *add_msg[] = {"add", "(2, 3)", "(4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_add(ctx, a, b), HAKD_ESHAPE, add_msg));
  hakd_ctx_reset(ctx);
  a = hakd_tensor_zeros(ctx, HAKD_F32, 2, sa);
  b = hakd_tensor_zeros(ctx, HAKD_F32, 1, sb);
  const char *mul_msg[] = {"mul", "(2, 3)", "(4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_mul(ctx, a, b), HAKD_ESHAPE, mul_msg));
  hakd_ctx_reset(ctx);
  a = hakd_tensor_zeros(ctx, HAKD_F32, 2, sa);
  b = hakd_tensor_zeros(ctx, HAKD_I32, 2, sa);
  const char *dtype_msg[] = {"sub", "float32", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_sub(ctx, a, b), HAKD_EINVAL, dtype_msg));
  ASSERT_TRUE(hakd_add(ctx, NULL, a) == NULL);
  hakd_ctx_free(ctx);
}
