/* relu / relu6 / gelu (exact erf form) / sigmoid against PyTorch (tools/gen_ops_basic.py) and
 * finite differences. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/activation.safetensors"
/* One libm call per element: expf/erff are within 1-2 ulp of PyTorch's, so 1e-5 normalised
 * error is ample; a wrong formula or clip point gives O(1e-2) or more. */
#define TOL 1e-5

static hakd_tensor *build_relu(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_relu(ctx, in[0]);
}
static hakd_tensor *build_relu6(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_relu6(ctx, in[0]);
}
static hakd_tensor *build_gelu(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_gelu(ctx, in[0]);
}
static hakd_tensor *build_sigmoid(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_sigmoid(ctx, in[0]);
}

TEST(relu_matches_torch) { golden_run(FIXTURE, "relu", "x", build_relu, TOL); }
TEST(relu6_matches_torch) { golden_run(FIXTURE, "relu6", "x", build_relu6, TOL); }
TEST(gelu_exact_matches_torch) { golden_run(FIXTURE, "gelu", "x", build_gelu, TOL); }
TEST(sigmoid_matches_torch) { golden_run(FIXTURE, "sigmoid", "x", build_sigmoid, TOL); }

static hakd_tensor *gc_activation(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  switch (*(const int *)arg) {
    case 0: return hakd_relu(ctx, in[0]);
    case 1: return hakd_relu6(ctx, in[0]);
    case 2: return hakd_gelu(ctx, in[0]);
    default: return hakd_sigmoid(ctx, in[0]);
  }
}

/* Inputs are N(0, 4^2) pushed at least 0.05 away from the kinks at 0 and 6, so eps 1e-2 never
 * straddles one. gelu/sigmoid have bounded third derivatives: truncation ~ eps^2 = 1e-4, float
 * rounding of L ~ 1e-6 / 2e-2 = 5e-5; atol 1e-3, rtol 1e-2 cover both. */
TEST(activations_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[2] = {6, 10};
  hakd_tensor *x = gradcheck_input(&p, "x", 2, shape, 4.0f, 7);
  for (int64_t i = 0; i < hakd_numel(x); i++) {
    float *v = &hakd_f32(x)[i];
    if (fabsf(*v) < 0.05f) *v += 0.1f;
    if (fabsf(*v - 6.0f) < 0.05f) *v += 0.1f;
  }
  const char *what[] = {"relu", "relu6", "gelu", "sigmoid"};
  for (int kind = 0; kind < 4; kind++) gradcheck(what[kind], gc_activation, &kind, &x, 1, 1e-2, 1e-3, 1e-2, 60);
  hakd_params_free(&p);
}

TEST(int_input_is_an_error_naming_op) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[1] = {3};
  const char *msg[] = {"gelu", "float32", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_gelu(ctx, hakd_tensor_zeros(ctx, HAKD_I32, 1, shape)), HAKD_EINVAL, msg));
  hakd_ctx_free(ctx);
}
