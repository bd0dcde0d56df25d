/* Inverted dropout: in training, each element is kept with probability 1 - p and scaled by
 * 1 / (1 - p), so the expected output equals the input and evaluation needs no rescaling. */
#include <stdint.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Elements per random sub-stream. */
#define DROPOUT_CHUNK 4096

/* Draw k (from 0) of hakd_rng_next on a stream in state `state`. SplitMix64 adds a constant to
 * its state per draw and mixes the sum, so draw k needs no earlier draw and a chunk's draws
 * vectorise; this must stay the sequence of src/core/rng.c (test_op_dropout pins the mask). */
static inline uint64_t stream_draw(uint64_t state, uint64_t k) {
  uint64_t z = state + (k + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

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
  if (!(p >= 0.0f && p <= 1.0f))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "dropout: probability %g outside [0, 1]", (double)p);
  /* identity outside training, whatever the layout (a CNN head's blocked bfloat16 in bf16 inference) */
  if (!hakd_ctx_training(ctx) || p == 0.0f) return x;
  /* blocked bfloat16 (a CNN head in bf16 training): through float32, so the mask is the one the
   * float32 path draws (the conversions carry the gradient) */
  if (x->dtype == HAKD_BF16_BLOCKED) return hakd_to_bf16_blocked(ctx, hakd_dropout(ctx, hakd_to_f32(ctx, x), p));
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "dropout: input must be float32");
  int64_t n = hakd_numel(x);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  uint8_t *keep = hakd_ctx_alloc(ctx, (size_t)n);
  if (!y || !keep) return NULL;
  /* p == 1 drops everything (PyTorch returns zeros), the scale is then irrelevant. */
  float scale = p < 1.0f ? 1.0f / (1.0f - p) : 0.0f;
  /* Per sample (the leading dimension; a 1-D tensor is one sample): the sample's stream,
   * hakd_rng_substream(site, global sample index) with `site` drawn once per call from the
   * context's stream, seeds one sub-stream per chunk of the sample's elements, drawn in order. So
   * a mask is a function of the seed, the sequence of ops and the sample's index in the global
   * batch: independent of the thread count and of how a data-parallel run splits the batch, and
   * the chunks can be drawn in parallel. */
  int64_t samples = x->ndim >= 2 && x->shape[0] > 0 ? x->shape[0] : 1, per_sample = n / samples;
  int64_t chunks_per_sample = (per_sample + DROPOUT_CHUNK - 1) / DROPOUT_CHUNK, n_chunks = samples * chunks_per_sample;
  uint64_t *chunk_seed = hakd_ctx_alloc(ctx, (size_t)(n_chunks ? n_chunks : 1) * sizeof *chunk_seed);
  if (!chunk_seed) return NULL;
  uint64_t site = hakd_rng_next(hakd_ctx_rng(ctx));
  int64_t first = hakd_ctx_sample_offset(ctx);
  for (int64_t b = 0; b < samples; b++) {
    uint64_t sample_stream = hakd_rng_substream(site, first + b);
    for (int64_t c = 0; c < chunks_per_sample; c++) chunk_seed[b * chunks_per_sample + c] = hakd_rng_next(&sample_stream);
  }
  const float *xs = hakd_f32(x);
  float *ys = hakd_f32(y);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t bc = 0; bc < n_chunks; bc++) {
    uint64_t stream = hakd_rng_seed(chunk_seed[bc]);
    int64_t b = bc / chunks_per_sample, c = bc % chunks_per_sample;
    int64_t begin = b * per_sample + c * DROPOUT_CHUNK;
    int64_t end = c * DROPOUT_CHUNK + DROPOUT_CHUNK < per_sample ? begin + DROPOUT_CHUNK : (b + 1) * per_sample;
    for (int64_t i = begin; i < end; i++) {
      /* hakd_rng_uniform's value: the top 24 bits (exact as int32 and as float) times 2^-24. */
      float u = (float)(int32_t)(stream_draw(stream, (uint64_t)(i - begin)) >> 40) * (1.0f / 16777216.0f);
      keep[i] = u >= p;
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
