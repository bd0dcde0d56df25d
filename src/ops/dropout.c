/* Inverted dropout: in training, each element is kept with probability 1 - p and scaled by
 * 1 / (1 - p), so the expected output equals the input and evaluation needs no rescaling. */
#include <stdint.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Elements per random sub-stream. */
#define DROPOUT_CHUNK 4096

/* dx += dy * keep * scale. dx, dy: (n), keep: (n) of 0/1. */
static void dropout_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  const uint8_t *keep = node->saved[0];
  const float *dy = node->out->grad;
  float scale = (float)node->farg[0];
  int64_t n = hakd_numel(node->out);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) dx[i] += keep[i] ? dy[i] * scale : 0.0f;
}

/* reference: F.dropout(x, p, training) (same distribution; PyTorch's random stream is not reproduced) */
hakd_tensor *hakd_dropout(hakd_ctx *ctx, hakd_tensor *x, float p) {
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "dropout: input must be float32");
  if (!(p >= 0.0f && p <= 1.0f))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "dropout: probability %g outside [0, 1]", (double)p);
  if (!hakd_ctx_training(ctx) || p == 0.0f) return x;
  int64_t n = hakd_numel(x);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  uint8_t *keep = hakd_ctx_alloc(ctx, (size_t)n);
  if (!y || !keep) return NULL;
  /* p == 1 drops everything (PyTorch returns zeros), the scale is then irrelevant. */
  float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  /* The context's stream seeds one sub-stream per chunk of elements, drawn in order: the mask is
   * a function of the seed and the sequence of ops, independent of the thread count, and the
   * chunks can be drawn in parallel. */
  int64_t n_chunks = (n + DROPOUT_CHUNK - 1) / DROPOUT_CHUNK;
  uint64_t *chunk_seed = hakd_ctx_alloc(ctx, (size_t)(n_chunks ? n_chunks : 1) * sizeof *chunk_seed);
  if (!chunk_seed) return NULL;
  uint64_t *rng = hakd_ctx_rng(ctx);
  for (int64_t c = 0; c < n_chunks; c++) chunk_seed[c] = hakd_rng_next(rng);
  const float *xs = hakd_f32(x);
  float *ys = hakd_f32(y);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t c = 0; c < n_chunks; c++) {
    uint64_t stream = hakd_rng_seed(chunk_seed[c]);
    int64_t end = (c + 1) * DROPOUT_CHUNK < n ? (c + 1) * DROPOUT_CHUNK : n;
    for (int64_t i = c * DROPOUT_CHUNK; i < end; i++) {
      keep[i] = hakd_rng_uniform(&stream) >= p;
      ys[i] = keep[i] ? xs[i] * scale : 0.0f;
    }
  }
  hakd_node *node = hakd_record(ctx, "dropout", dropout_backward, y, 1, &x);
  if (node) {
    node->saved[0] = keep;
    node->farg[0] = scale;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}
