/* Core engine: arena planning, tape, no-grad mode, detach, parameters. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/ops.h"

TEST(backward_accumulates_through_shared_input) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t shape[1] = {3};
  hakd_tensor *w = hakd_params_add(&params, "w", 1, shape, 0);
  float *wd = hakd_f32(w);
  wd[0] = -1.0f, wd[1] = 0.5f, wd[2] = 2.0f;
  /* y = relu(w) + relu(w): dy/dw = 2 where w > 0 */
  hakd_tensor *a = hakd_relu(ctx, w), *b = hakd_relu(ctx, w);
  hakd_tensor *y = hakd_sum(ctx, hakd_add(ctx, a, b));
  ASSERT_OK(hakd_backward(ctx, y));
  ASSERT_NEAR(w->grad[0], 0.0f, 0);
  ASSERT_NEAR(w->grad[1], 2.0f, 0);
  ASSERT_NEAR(w->grad[2], 2.0f, 0);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

TEST(no_grad_records_nothing) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t shape[1] = {4};
  hakd_tensor *w = hakd_params_add(&params, "w", 1, shape, 0);
  hakd_ctx_set_grad(ctx, 0);
  hakd_tensor *y = hakd_relu(ctx, w);
  ASSERT_TRUE(y != NULL);
  ASSERT_EQ_INT(y->requires_grad, 0);
  ASSERT_TRUE(y->node == NULL);
  ASSERT_TRUE(hakd_backward(ctx, y) != 0);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

TEST(detach_stops_gradient) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t shape[1] = {2};
  hakd_tensor *w = hakd_params_add(&params, "w", 1, shape, 0);
  hakd_f32(w)[0] = 1.0f, hakd_f32(w)[1] = 3.0f;
  hakd_tensor *c = hakd_detach(ctx, hakd_relu(ctx, w));
  hakd_tensor *y = hakd_sum(ctx, hakd_mul(ctx, hakd_relu(ctx, w), c)); /* d/dw = c */
  ASSERT_OK(hakd_backward(ctx, y));
  ASSERT_NEAR(w->grad[0], 1.0f, 0);
  ASSERT_NEAR(w->grad[1], 3.0f, 0);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

/* The steady-state step makes no malloc call: after the first step the arena is one planned block. */
TEST(steady_state_step_does_not_malloc) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t shape[2] = {256, 1024};
  hakd_tensor *w = hakd_params_add(&params, "w", 2, shape, 0);
  uint64_t mallocs_after[4];
  for (int step = 0; step < 4; step++) {
    hakd_ctx_reset(ctx);
    hakd_tensor *h = w;
    for (int layer = 0; layer < 8; layer++) h = hakd_gelu(ctx, h); /* 8 MB of activations: several blocks */
    ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, h)));
    mallocs_after[step] = hakd_ctx_get_stats(ctx).arena_mallocs;
  }
  ASSERT_TRUE(mallocs_after[0] > 1);
  ASSERT_EQ_INT(mallocs_after[2], mallocs_after[1]);
  ASSERT_EQ_INT(mallocs_after[3], mallocs_after[1]);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

TEST(null_input_propagates_error) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[2] = {2, 3};
  hakd_tensor *labels = hakd_tensor_zeros(ctx, HAKD_I32, 2, shape);
  ASSERT_TRUE(hakd_relu(ctx, labels) == NULL);
  ASSERT_TRUE(hakd_ctx_status(ctx) != 0);
  ASSERT_TRUE(hakd_relu(ctx, NULL) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "relu") != NULL);
  hakd_ctx_free(ctx);
}

/* A scope hands back everything but the kept tensors (and what backward still needs). */
TEST(collapse_keeps_values_and_frees_the_rest) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  int64_t shape[1] = {1000};
  hakd_tensor *before = hakd_tensor_zeros(ctx, HAKD_F32, 1, shape);
  hakd_arena_mark mark = hakd_ctx_mark(ctx);
  size_t used_at_mark = hakd_ctx_get_stats(ctx).arena_used;
  hakd_tensor *garbage = hakd_tensor_new(ctx, HAKD_F32, 1, shape);
  hakd_tensor *keep[2] = {hakd_tensor_new(ctx, HAKD_F32, 1, shape), hakd_tensor_new(ctx, HAKD_I32, 1, shape)};
  for (int i = 0; i < 1000; i++) {
    hakd_f32(garbage)[i] = -1.0f;
    hakd_f32(keep[0])[i] = (float)i;
    hakd_i32(keep[1])[i] = 7 * i;
  }
  hakd_tensor *swapped[2] = {keep[1], keep[0]}; /* order of the list does not matter */
  hakd_ctx_collapse(ctx, mark, 2, swapped);
  for (int i = 0; i < 1000; i++) {
    ASSERT_NEAR(hakd_f32(swapped[1])[i], (float)i, 0);
    ASSERT_EQ_INT(hakd_i32(swapped[0])[i], 7 * i);
    ASSERT_NEAR(hakd_f32(before)[i], 0.0f, 0);
  }
  /* 2 kept buffers (+ 3 small structs) instead of 3 buffers */
  ASSERT_TRUE(hakd_ctx_get_stats(ctx).arena_used < used_at_mark + 2 * 4096 + 3 * 256);
  /* With grad recording on, a tensor a recorded op reads in backward outlives its scope. */
  hakd_ctx_set_grad(ctx, 1);
  hakd_params params;
  hakd_params_init(&params);
  hakd_tensor *w = hakd_params_add(&params, "w", 1, shape, 0);
  for (int i = 0; i < 1000; i++) hakd_f32(w)[i] = (float)(i % 7) - 3.0f;
  mark = hakd_ctx_mark(ctx);
  hakd_tensor *x = hakd_mul(ctx, w, w);   /* read by the next mul's backward */
  hakd_tensor *y = hakd_mul(ctx, x, w); /* w^3 */
  size_t used_before = hakd_ctx_get_stats(ctx).arena_used;
  hakd_ctx_collapse(ctx, mark, 1, &y);
  ASSERT_TRUE(hakd_ctx_get_stats(ctx).arena_used == used_before);
  ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, y)));
  for (int i = 0; i < 1000; i++) { /* d(w^3)/dw = 3 w^2 */
    float v = (float)(i % 7) - 3.0f;
    ASSERT_NEAR(w->grad[i], 3.0f * v * v, 0);
  }
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

/* One step of a small conv/bn/relu/gelu network with scopes, its parameter gradients into
 * grads[] (params zeroed first); `size` varies the input so that steps can differ. */
static void scoped_step(hakd_ctx *ctx, hakd_params *params, int size, float *grads) {
  hakd_ctx_reset(ctx);
  hakd_params_zero_grad(params);
  hakd_tensor *x = hakd_tensor4(ctx, 2, 4, size, size);
  for (int64_t i = 0; i < hakd_numel(x); i++) hakd_f32(x)[i] = (float)((i * 13) % 17) / 8.0f - 1.0f;
  hakd_tensor *h = x;
  for (int block = 0; block < 3; block++) {
    hakd_arena_mark mark = hakd_ctx_mark(ctx);
    hakd_tensor *c = hakd_conv2d(ctx, h, params->items[2 * block], params->items[2 * block + 1], 1, 1, 1, 1);
    hakd_tensor *a = hakd_relu(ctx, c);
    hakd_tensor *g = hakd_gelu(ctx, hakd_affine_scalar(ctx, a, 0.5f, 0.1f));
    h = hakd_add(ctx, g, h);
    hakd_ctx_collapse(ctx, mark, 1, &h);
  }
  ASSERT_OK(hakd_backward(ctx, hakd_mean(ctx, hakd_mul(ctx, h, h))));
  int64_t at = 0;
  for (int i = 0; i < params->count; i++) {
    memcpy(grads + at, params->items[i]->grad, (size_t)hakd_numel(params->items[i]) * sizeof(float));
    at += hakd_numel(params->items[i]);
  }
}

/* The first step allocates buffer by buffer, the next ones run on the planned block (dead
 * buffers share bytes): every step gives the same bits, also after a step of another shape
 * made the context replan, and the planned block is smaller than all buffers together. */
TEST(planned_steps_give_the_recorded_step_bits) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t n_grads = 0;
  for (int block = 0; block < 3; block++) {
    hakd_tensor *w = hakd_params_add(&params, block == 0 ? "w0" : block == 1 ? "w1" : "w2", 4,
                                     (int64_t[]){4, 4, 3, 3}, 0);
    hakd_tensor *b = hakd_params_add(&params, block == 0 ? "b0" : block == 1 ? "b1" : "b2", 1, (int64_t[]){4}, 0);
    for (int64_t i = 0; i < hakd_numel(w); i++) hakd_f32(w)[i] = (float)((i * 7 + block) % 11) / 20.0f - 0.25f;
    for (int64_t i = 0; i < 4; i++) hakd_f32(b)[i] = 0.1f * (float)i;
    n_grads += hakd_numel(w) + 4;
  }
  float *first = malloc((size_t)n_grads * sizeof(float)), *again = malloc((size_t)n_grads * sizeof(float));
  scoped_step(ctx, &params, 24, first);
  size_t recorded_peak = hakd_ctx_get_stats(ctx).arena_peak;
  int sizes[5] = {24, 24, 16, 24, 24};
  for (int step = 0; step < 5; step++) {
    scoped_step(ctx, &params, sizes[step], again);
    if (sizes[step] == 24 && memcmp(first, again, (size_t)n_grads * sizeof(float)))
      test_fail(__FILE__, __LINE__, "step %d: gradients differ from the first step's", step + 1);
  }
  /* activations of 3 blocks x 5 tensors of 2x4x24x24 floats (18 KB each) + gradients */
  size_t all_buffers = 3 * 5 * 18432;
  ASSERT_TRUE(hakd_ctx_get_stats(ctx).arena_capacity < all_buffers);
  ASSERT_TRUE(recorded_peak < all_buffers);
  free(first);
  free(again);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

/* A step that repeats the allocations of the plan but keeps a buffer the plan let die must not
 * hand its bytes to a later buffer. */
TEST(plan_is_left_when_a_buffer_outlives_its_planned_end) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  int64_t shape[1] = {4096};
  for (int step = 0; step < 3; step++) {
    hakd_ctx_reset(ctx);
    hakd_arena_mark mark = hakd_ctx_mark(ctx);
    hakd_tensor *first = hakd_tensor_new(ctx, HAKD_F32, 1, shape);
    for (int i = 0; i < 4096; i++) hakd_f32(first)[i] = 1.0f;
    hakd_tensor *kept = step == 2 ? first : NULL; /* steps 0 and 1: `first` dies here */
    hakd_ctx_collapse(ctx, mark, kept ? 1 : 0, &kept);
    hakd_tensor *second = hakd_tensor_new(ctx, HAKD_F32, 1, shape);
    for (int i = 0; i < 4096; i++) hakd_f32(second)[i] = 2.0f;
    if (step == 2)
      for (int i = 0; i < 4096; i++) ASSERT_NEAR(hakd_f32(first)[i], 1.0f, 0);
    if (step == 1) ASSERT_TRUE(first->data == second->data); /* the plan shares the bytes */
  }
  hakd_ctx_free(ctx);
}

/* Intermediate gradients are consumed by backward (leaves keep theirs), and a tape runs
 * backward once. */
TEST(backward_consumes_intermediate_gradients_once) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  hakd_tensor *w = hakd_params_add(&params, "w", 1, (int64_t[]){8}, 0);
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 1, (int64_t[]){8});
  x->requires_grad = 1;
  hakd_tensor *h = hakd_gelu(ctx, hakd_add(ctx, w, x));
  hakd_tensor *loss = hakd_sum(ctx, h);
  ASSERT_OK(hakd_backward(ctx, loss));
  ASSERT_TRUE(h->grad == NULL);
  ASSERT_TRUE(x->grad != NULL);
  ASSERT_NEAR(x->grad[0], 0.5f, 1e-6); /* gelu'(0) = 0.5 */
  ASSERT_TRUE(hakd_backward(ctx, loss) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "already run backward") != NULL);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

TEST(precision_names_parse_and_unknown_ones_are_errors) {
  hakd_precision p = HAKD_BF16;
  ASSERT_OK(hakd_precision_parse("fp32", &p));
  ASSERT_EQ_INT(p, HAKD_FP32);
  ASSERT_TRUE(hakd_precision_parse("fp16", &p) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "'fp16'") != NULL);
  /* bf16 parses where the CPU has AVX512-BF16 and oneDNN may use it, and is refused with a reason
   * elsewhere (no such instructions, or ONEDNN_MAX_CPU_ISA below them) */
  int rc = hakd_precision_parse("bf16", &p);
  if (hakd_bf16_supported()) {
    ASSERT_OK(rc);
    ASSERT_EQ_INT(p, HAKD_BF16);
  } else {
    ASSERT_TRUE(rc != 0 && strstr(hakd_error_message(), "AVX512-BF16") != NULL);
  }
  ASSERT_TRUE(!strcmp(hakd_precision_name(HAKD_BF16), "bf16"));
}
