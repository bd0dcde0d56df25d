/* Inverted dropout. PyTorch's random stream cannot be matched, so the checks are statistical
 * (keep rate, mean) plus exact consistency of the output, the gradient and the saved mask. */
#include "gradcheck.h"
#include "op_golden.h"

TEST(eval_mode_and_zero_p_are_identity) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[2] = {3, 4};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 2, shape);
  ASSERT_TRUE(hakd_dropout(ctx, x, 0.0f) == x);
  hakd_ctx_set_training(ctx, 0);
  ASSERT_TRUE(hakd_dropout(ctx, x, 0.5f) == x);
  hakd_ctx_free(ctx);
}

/* 200000 elements, p = 0.3: the keep rate has standard deviation sqrt(0.21 / 2e5) ~ 1e-3, so a
 * 5-sigma bound of 5e-3 fails with probability < 1e-6 for a correct sampler (and the seed is fixed). */
TEST(training_keeps_one_minus_p_and_scales_kept_values) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_seed(ctx, 42);
  int64_t n = 200000;
  const float p = 0.3f, scale = 1.0f / (1.0f - p);
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 1, &n);
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = 1.0f + (float)(i % 13);
  hakd_tensor *y = hakd_dropout(ctx, x, p);
  ASSERT_TRUE(y != NULL && y != x);
  int64_t kept = 0;
  double sum_x = 0, sum_y = 0;
  for (int64_t i = 0; i < n; i++) {
    float v = hakd_f32(y)[i], want = hakd_f32(x)[i] * scale;
    if (v != 0.0f) {
      kept++;
      if (v != want) ASSERT_NEAR(v, want, 0); /* kept values: exactly x / (1 - p) as computed */
    }
    sum_x += hakd_f32(x)[i];
    sum_y += v;
  }
  ASSERT_NEAR((double)kept / (double)n, 1.0 - p, 5e-3);
  /* E[y] = E[x]: the per-element variance of y is x^2 p/(1-p) ~ 60, so the mean's standard
   * deviation is sqrt(60 / 2e5) ~ 0.017 around a mean of 7; 5 sigma = 0.09. */
  ASSERT_NEAR(sum_y / (double)n, sum_x / (double)n, 0.09);
  hakd_ctx_free(ctx);
}

/* The gradient uses the same mask as the forward: dx = dy * scale where y was kept, 0 elsewhere. */
TEST(backward_uses_the_forward_mask_exactly) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params params;
  hakd_params_init(&params);
  int64_t shape[3] = {4, 50, 60};
  hakd_tensor *x = hakd_params_add(&params, "x", 3, shape, 0);
  int64_t n = hakd_numel(x);
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = 0.5f + (float)(i % 7); /* never 0 */
  hakd_tensor *y = hakd_dropout(ctx, x, 0.25f);
  ASSERT_TRUE(y != NULL);
  float *seed = malloc((size_t)n * sizeof *seed);
  for (int64_t i = 0; i < n; i++) seed[i] = (float)(i % 11) - 5.0f;
  ASSERT_OK(hakd_backward_seeded(ctx, y, seed));
  for (int64_t i = 0; i < n; i++) {
    float want = hakd_f32(y)[i] != 0.0f ? seed[i] * (1.0f / 0.75f) : 0.0f;
    if (x->grad[i] != want) {
      free(seed);
      ASSERT_NEAR(x->grad[i], want, 0);
    }
  }
  free(seed);
  hakd_params_free(&params);
  hakd_ctx_free(ctx);
}

static hakd_tensor *gc_dropout(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  return hakd_dropout(ctx, in[0], 0.4f);
}

/* gradcheck seeds every context alike (1234), so every forward draws the same mask; dropout is
 * then linear in x: eps 1e-2, atol/rtol 1e-3 as for the elementwise ops. */
TEST(dropout_gradcheck_with_fixed_seed) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[2] = {5, 8};
  hakd_tensor *x = gradcheck_input(&p, "x", 2, shape, 1.0f, 101);
  gradcheck("dropout", gc_dropout, NULL, &x, 1, 1e-2, 1e-3, 1e-3, 40);
  hakd_params_free(&p);
}

TEST(mask_depends_on_seed_only) {
  int64_t n = 4096;
  float *out[3];
  hakd_ctx *ctxs[3];
  uint64_t seeds[3] = {7, 7, 8};
  for (int k = 0; k < 3; k++) {
    ctxs[k] = hakd_ctx_new();
    hakd_ctx_seed(ctxs[k], seeds[k]);
    hakd_tensor *x = hakd_tensor_new(ctxs[k], HAKD_F32, 1, &n);
    for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = 1.0f;
    out[k] = hakd_f32(hakd_dropout(ctxs[k], x, 0.5f));
  }
  int64_t same = 0, differ = 0;
  for (int64_t i = 0; i < n; i++) {
    same += out[0][i] == out[1][i];
    differ += out[0][i] != out[2][i];
  }
  for (int k = 0; k < 3; k++) hakd_ctx_free(ctxs[k]);
  ASSERT_EQ_INT(same, n);
  ASSERT_TRUE(differ > n / 4); /* independent masks disagree on half the elements */
}

TEST(p_one_drops_everything_and_bad_p_is_an_error) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t n = 100;
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 1, &n);
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = 3.0f;
  hakd_tensor *y = hakd_dropout(ctx, x, 1.0f);
  ASSERT_TRUE(y != NULL);
  for (int64_t i = 0; i < n; i++) ASSERT_NEAR(hakd_f32(y)[i], 0.0f, 0);
  const char *msg[] = {"dropout", "1.5", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_dropout(ctx, x, 1.5f), HAKD_EINVAL, msg));
  hakd_ctx_free(ctx);
}

/* The mask is a fixed function of the seed: the call takes one value `site` from the context's
 * stream; the sample's stream hakd_rng_substream(site, 0) (a 1-D tensor is one sample) gives one
 * seed per chunk of 4096 elements, and element i of a chunk is kept when the chunk stream's
 * (i+1)-th hakd_rng_uniform draw is >= p. Spelled out here with the public RNG so a faster sampler
 * cannot change which elements a seeded run drops (a partial last chunk and two p values). */
TEST(mask_is_the_seeded_chunk_streams) {
  const int64_t n = 3 * 4096 + 1000, chunk = 4096;
  const float ps[2] = {0.1f, 0.7f};
  for (int t = 0; t < 2; t++) {
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_seed(ctx, 1234 + (uint64_t)t);
    hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 1, &n);
    for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = 1.0f;
    hakd_tensor *y = hakd_dropout(ctx, x, ps[t]);
    ASSERT_TRUE(y != NULL);
    uint64_t ctx_stream = hakd_rng_seed(1234 + (uint64_t)t), chunk_stream = 0;
    uint64_t sample_stream = hakd_rng_substream(hakd_rng_next(&ctx_stream), 0);
    int64_t mismatches = 0;
    for (int64_t i = 0; i < n; i++) {
      if (i % chunk == 0) chunk_stream = hakd_rng_seed(hakd_rng_next(&sample_stream));
      int want_kept = hakd_rng_uniform(&chunk_stream) >= ps[t];
      mismatches += (hakd_f32(y)[i] != 0.0f) != want_kept;
    }
    hakd_ctx_free(ctx);
    ASSERT_EQ_INT(mismatches, 0);
  }
}

/* Masks are drawn per sample: a batch of 4 gives the same mask as its halves run as two batches
 * of 2 from the same context state, the second with sample offset 2 (a data-parallel split). */
TEST(mask_of_a_sample_does_not_depend_on_the_batch_split) {
  const int64_t shape[4] = {4, 3, 40, 50}, half[4] = {2, 3, 40, 50}, per = 3 * 40 * 50;
  hakd_ctx *whole = hakd_ctx_new();
  hakd_ctx_seed(whole, 77);
  hakd_tensor *x = hakd_tensor_new(whole, HAKD_F32, 4, shape);
  for (int64_t i = 0; i < 4 * per; i++) hakd_f32(x)[i] = 1.0f;
  hakd_tensor *y = hakd_dropout(whole, x, 0.5f);
  ASSERT_TRUE(y != NULL);
  int64_t mismatches = 0, dropped = 0;
  for (int part = 0; part < 2; part++) {
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_seed(ctx, 77);
    hakd_ctx_set_sample_offset(ctx, 2 * part);
    hakd_tensor *xh = hakd_tensor_new(ctx, HAKD_F32, 4, half);
    for (int64_t i = 0; i < 2 * per; i++) hakd_f32(xh)[i] = 1.0f;
    hakd_tensor *yh = hakd_dropout(ctx, xh, 0.5f);
    ASSERT_TRUE(yh != NULL);
    for (int64_t i = 0; i < 2 * per; i++) {
      mismatches += hakd_f32(yh)[i] != hakd_f32(y)[2 * part * per + i];
      dropped += hakd_f32(yh)[i] == 0.0f;
    }
    hakd_ctx_free(ctx);
  }
  hakd_ctx_free(whole);
  ASSERT_EQ_INT(mismatches, 0);
  ASSERT_TRUE(dropped > per && dropped < 3 * per); /* about half of 4 * per */
}
