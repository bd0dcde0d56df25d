/* The engine learns: a tiny CNN and a tiny Transformer block, built from the ops alone, train on
 * generated data with their loss falling. */
#include <math.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "hakd/ops.h"
#include "hakd/optim.h"

/* Images with a bright square on the left or the right half; per-pixel labels: 1 inside the
 * square, 0 elsewhere (a segmentation task a 2-layer CNN can learn). */
static void make_batch(float *x, int32_t *y, int n, int h, int w, uint64_t *rng) {
  for (int b = 0; b < n; b++) {
    int cx = (int)(hakd_rng_uniform(rng) * (w - 4)), cy = (int)(hakd_rng_uniform(rng) * (h - 4));
    for (int i = 0; i < h; i++)
      for (int j = 0; j < w; j++) {
        int in = i >= cy && i < cy + 4 && j >= cx && j < cx + 4;
        x[(b * h + i) * w + j] = (in ? 1.0f : 0.0f) + 0.1f * hakd_rng_normal(rng);
        y[(b * h + i) * w + j] = in;
      }
  }
}

TEST(tiny_cnn_loss_falls) {
  hakd_params p;
  hakd_params_init(&p);
  hakd_tensor *w1 = gradcheck_input(&p, "conv1.weight", 4, (int64_t[]){8, 1, 3, 3}, 0.5f, 1);
  hakd_tensor *g1 = hakd_params_add(&p, "bn1.weight", 1, (int64_t[]){8}, 0);
  hakd_tensor *b1 = hakd_params_add(&p, "bn1.bias", 1, (int64_t[]){8}, 0);
  hakd_tensor *rm = hakd_params_add(&p, "bn1.running_mean", 1, (int64_t[]){8}, 1);
  hakd_tensor *rv = hakd_params_add(&p, "bn1.running_var", 1, (int64_t[]){8}, 1);
  hakd_tensor *w2 = gradcheck_input(&p, "conv2.weight", 4, (int64_t[]){2, 8, 3, 3}, 0.2f, 2);
  hakd_tensor *bias2 = hakd_params_add(&p, "conv2.bias", 1, (int64_t[]){2}, 0);
  for (int i = 0; i < 8; i++) hakd_f32(g1)[i] = 1.0f, hakd_f32(rv)[i] = 1.0f;
  hakd_optim_config c;
  hakd_optim_config_default(&c, HAKD_OPTIM_SGD);
  hakd_optimizer *opt = hakd_optim_new(&c);
  ASSERT_EQ_INT(hakd_optim_add_group(opt, &p, NULL, 1.0f, 1), 5); /* running stats are buffers */
  hakd_ctx *ctx = hakd_ctx_new();
  uint64_t rng = hakd_rng_seed(5);
  float x[4 * 16 * 16];
  int32_t y[4 * 16 * 16];
  double first = 0, last = 0;
  for (int it = 0; it < 60; it++) {
    make_batch(x, y, 4, 16, 16, &rng);
    hakd_ctx_reset(ctx);
    hakd_tensor *in = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){4, 1, 16, 16}, x);
    hakd_tensor *lab = hakd_tensor_wrap(ctx, HAKD_I32, 3, (int64_t[]){4, 16, 16}, y);
    hakd_tensor *h = hakd_relu(ctx, hakd_batchnorm2d(ctx, hakd_conv2d(ctx, in, w1, NULL, 1, 1, 1, 1), g1, b1, rm, rv, 0.1f, 1e-5f));
    hakd_tensor *loss = hakd_cross_entropy(ctx, hakd_conv2d(ctx, h, w2, bias2, 1, 1, 1, 1), lab, 255);
    ASSERT_TRUE(loss != NULL);
    double l = hakd_f32(loss)[0];
    if (it < 5) first += l / 5;
    if (it >= 55) last += l / 5;
    hakd_optim_zero_grad(opt);
    ASSERT_OK(hakd_backward(ctx, loss));
    hakd_optim_step(opt, 0.1f);
  }
  /* The task is easy: the mean loss of the last 5 steps must be under a third of the first 5's. */
  if (!(last < first / 3)) test_fail(__FILE__, __LINE__, "loss did not fall: %.4f -> %.4f", first, last);
  hakd_ctx_free(ctx);
  hakd_optim_free(opt);
  hakd_params_free(&p);
}

/* One pre-norm Transformer block (LN, single-head attention, LN, GELU MLP) + linear classifier
 * on token sequences: a token's class is 1 when the sequence's first token is positive, which
 * only attention can see from the other positions. */
TEST(tiny_transformer_block_loss_falls) {
  enum { B = 8, N = 6, D = 16, H = 32 };
  hakd_params p;
  hakd_params_init(&p);
  hakd_tensor *emb = gradcheck_input(&p, "embed.weight", 2, (int64_t[]){D, 2}, 0.5f, 11);
  /* Without an embedding bias, LayerNorm maps a noise token x0*e to sign(x0)*LN(e) and, with bias-free
   * q/k, a token with x0 < 0 gets exactly the negated attention logits of one with x0 > 0: half the
   * tokens are pushed away from the first token. Training then sits in a plateau near
   * (1/2)(5/6)ln 2 = 0.29 for a third of the seeds, and whether it leaves it by step 300 depended on
   * the BLAS kernels' rounding (OpenBLAS Haswell/Zen vs SkylakeX). The bias breaks the symmetry:
   * seeds 1-30 all reach < 1e-4 under both kernel sets. */
  hakd_tensor *emb_b = gradcheck_input(&p, "embed.bias", 1, (int64_t[]){D}, 0.5f, 19);
  hakd_tensor *ln1w = hakd_params_add(&p, "ln1.weight", 1, (int64_t[]){D}, 0);
  hakd_tensor *ln1b = hakd_params_add(&p, "ln1.bias", 1, (int64_t[]){D}, 0);
  hakd_tensor *wq = gradcheck_input(&p, "q.weight", 2, (int64_t[]){D, D}, 0.25f, 12);
  hakd_tensor *wk = gradcheck_input(&p, "k.weight", 2, (int64_t[]){D, D}, 0.25f, 13);
  hakd_tensor *wv = gradcheck_input(&p, "v.weight", 2, (int64_t[]){D, D}, 0.25f, 14);
  hakd_tensor *wo = gradcheck_input(&p, "o.weight", 2, (int64_t[]){D, D}, 0.25f, 15);
  hakd_tensor *ln2w = hakd_params_add(&p, "ln2.weight", 1, (int64_t[]){D}, 0);
  hakd_tensor *ln2b = hakd_params_add(&p, "ln2.bias", 1, (int64_t[]){D}, 0);
  hakd_tensor *w1 = gradcheck_input(&p, "fc1.weight", 2, (int64_t[]){H, D}, 0.25f, 16);
  hakd_tensor *w2 = gradcheck_input(&p, "fc2.weight", 2, (int64_t[]){D, H}, 0.18f, 17);
  hakd_tensor *wc = gradcheck_input(&p, "cls.weight", 2, (int64_t[]){2, D}, 0.25f, 18);
  for (int i = 0; i < D; i++) hakd_f32(ln1w)[i] = hakd_f32(ln2w)[i] = 1.0f;
  hakd_optim_config c;
  hakd_optim_config_default(&c, HAKD_OPTIM_ADAMW);
  hakd_optimizer *opt = hakd_optim_new(&c);
  ASSERT_TRUE(hakd_optim_add_group(opt, &p, NULL, 1.0f, 1) > 0);
  hakd_ctx *ctx = hakd_ctx_new();
  uint64_t rng = hakd_rng_seed(6);
  float x[B * N * 2];
  int32_t y[B * N];
  double first = 0, last = 0;
  for (int it = 0; it < 300; it++) {
    for (int b = 0; b < B; b++) {
      float sign = hakd_rng_uniform(&rng) < 0.5f ? -1.0f : 1.0f;
      for (int t = 0; t < N; t++) {
        x[(b * N + t) * 2] = t == 0 ? sign : hakd_rng_normal(&rng);
        x[(b * N + t) * 2 + 1] = t == 0 ? 1.0f : 0.0f; /* marks the first token */
        y[b * N + t] = sign > 0;
      }
    }
    hakd_ctx_reset(ctx);
    hakd_tensor *in = hakd_tensor_wrap(ctx, HAKD_F32, 3, (int64_t[]){B, N, 2}, x);
    hakd_tensor *lab = hakd_tensor_wrap(ctx, HAKD_I32, 1, (int64_t[]){B * N}, y);
    hakd_tensor *h = hakd_linear(ctx, in, emb, emb_b);
    hakd_tensor *a = hakd_layernorm(ctx, h, ln1w, ln1b, 1e-5f);
    hakd_tensor *q = hakd_linear(ctx, a, wq, NULL), *k = hakd_linear(ctx, a, wk, NULL), *v = hakd_linear(ctx, a, wv, NULL);
    hakd_tensor *att = hakd_softmax(ctx, hakd_scale(ctx, hakd_matmul(ctx, q, k, 0, 1), 0.25f), -1);
    h = hakd_add(ctx, h, hakd_linear(ctx, hakd_matmul(ctx, att, v, 0, 0), wo, NULL));
    hakd_tensor *m = hakd_gelu(ctx, hakd_linear(ctx, hakd_layernorm(ctx, h, ln2w, ln2b, 1e-5f), w1, NULL));
    h = hakd_add(ctx, h, hakd_linear(ctx, m, w2, NULL));
    hakd_tensor *logits = hakd_reshape(ctx, hakd_linear(ctx, h, wc, NULL), 2, (int64_t[]){B * N, 2});
    hakd_tensor *loss = hakd_cross_entropy(ctx, logits, lab, 255);
    ASSERT_TRUE(loss != NULL);
    double l = hakd_f32(loss)[0];
    if (it < 10) first += l / 10;
    if (it >= 290) last += l / 10;
    hakd_optim_zero_grad(opt);
    ASSERT_OK(hakd_backward(ctx, loss));
    hakd_optim_step(opt, 1e-2f);
  }
  /* Chance is ln 2 = 0.69; the block must get well below it (every seed and kernel set tried ends
   * under 1e-4, so 0.05 leaves a wide margin). */
  if (!(last < first / 3 && last < 0.05)) test_fail(__FILE__, __LINE__, "loss did not fall: %.4f -> %.4f", first, last);
  hakd_ctx_free(ctx);
  hakd_optim_free(opt);
  hakd_params_free(&p);
}
