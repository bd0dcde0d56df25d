/* Core engine: arena planning, tape, no-grad mode, detach, parameters. */
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

/* A no-grad scope hands back everything but the kept tensors, whose values survive the move. */
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
  /* 2 kept buffers + 2 structs instead of 3 buffers + 3 structs */
  ASSERT_TRUE(hakd_ctx_get_stats(ctx).arena_used < used_at_mark + 3 * 4000);
  /* With grad recording on, nothing moves. */
  hakd_ctx_set_grad(ctx, 1);
  mark = hakd_ctx_mark(ctx);
  hakd_tensor *t = hakd_tensor_new(ctx, HAKD_F32, 1, shape), *kept = t;
  hakd_ctx_collapse(ctx, mark, 1, &kept);
  ASSERT_TRUE(kept == t);
  hakd_ctx_free(ctx);
}
