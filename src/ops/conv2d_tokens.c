/* Depthwise convolution of channels-last tokens (N, h*w, C), stride 1: SegFormer's Mix-FFN
 * convolves its hidden tokens with a 3x3 depthwise kernel. On the tokens directly it needs
 * neither the NCHW copy before it nor the copy back after it (two passes over the block's
 * largest tensor), and its inner loops run along the contiguous channels (64-1024) where the
 * NCHW kernel runs along rows of w pixels (4-16 at 64-256 pixel inputs). PyTorch gets the same
 * from the channels-last strides that HF's transpose + view leave on the tensor. */
#include <string.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Row chunks of the weight gradient: a fixed count, so its sums do not depend on the thread
 * count. */
#define TOKENS_DW_CHUNKS 16

typedef struct {
  int64_t n, h, w, c, k, pad, oh, ow;
} tokens_shape;

/* wt[t * C + c] = w[c * kk + t]: the taps' weights along the channels. */
static void tokens_weights(float *wt, const float *w, const tokens_shape *s) {
  int64_t kk = s->k * s->k;
  for (int64_t c = 0; c < s->c; c++)
    for (int64_t t = 0; t < kk; t++) wt[t * s->c + c] = w[c * kk + t];
}

/* y = b + sum over taps of w * x, taps in row-major order after the bias: the order of the NCHW
 * depthwise kernel (conv2d.c), so both give the same floats. */
static void tokens_forward(float *y, const float *x, const float *wt, const float *b, const tokens_shape *s) {
  int64_t C = s->c;
#pragma omp parallel for schedule(static) if (s->n * s->oh * s->ow * C * s->k * s->k > OPS_PARALLEL_MIN)
  for (int64_t row = 0; row < s->n * s->oh; row++) {
    int64_t n = row / s->oh, oy = row % s->oh;
    for (int64_t ox = 0; ox < s->ow; ox++) {
      float *out = y + (row * s->ow + ox) * C;
      if (b)
        memcpy(out, b, (size_t)C * sizeof(float));
      else
        memset(out, 0, (size_t)C * sizeof(float));
      for (int64_t ki = 0; ki < s->k; ki++) {
        int64_t iy = oy - s->pad + ki;
        if (iy < 0 || iy >= s->h) continue;
        for (int64_t kj = 0; kj < s->k; kj++) {
          int64_t ix = ox - s->pad + kj;
          if (ix < 0 || ix >= s->w) continue;
          const float *in = x + ((n * s->h + iy) * s->w + ix) * C, *wk = wt + (ki * s->k + kj) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) out[c] += wk[c] * in[c];
        }
      }
    }
  }
}

/* dx += sum over the outputs each input pixel feeds of w * dy (gathered: rows of dx are private). */
static void tokens_input_grad(float *dx, const float *dy, const float *wt, const tokens_shape *s) {
  int64_t C = s->c;
#pragma omp parallel for schedule(static) if (s->n * s->h * s->w * C * s->k * s->k > OPS_PARALLEL_MIN)
  for (int64_t row = 0; row < s->n * s->h; row++) {
    int64_t n = row / s->h, iy = row % s->h;
    for (int64_t ix = 0; ix < s->w; ix++) {
      float *d = dx + (row * s->w + ix) * C;
      for (int64_t ki = 0; ki < s->k; ki++) {
        int64_t oy = iy + s->pad - ki;
        if (oy < 0 || oy >= s->oh) continue;
        for (int64_t kj = 0; kj < s->k; kj++) {
          int64_t ox = ix + s->pad - kj;
          if (ox < 0 || ox >= s->ow) continue;
          const float *g = dy + ((n * s->oh + oy) * s->ow + ox) * C, *wk = wt + (ki * s->k + kj) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; c++) d[c] += wk[c] * g[c];
        }
      }
    }
  }
}

/* dw += sum of dy * x per tap and channel, db += sum of dy: each chunk of output rows sums one
 * row at a time in float (row), adds the row into its double partials (part), and the chunks
 * add in order. part: TOKENS_DW_CHUNKS x (kk + 1) x C doubles; row: the same count of floats. */
static void tokens_weight_grad(float *dw, float *db, const float *dy, const float *x, const tokens_shape *s,
                               double *part, float *rowsum) {
  int64_t C = s->c, kk = s->k * s->k, slots = (kk + 1) * C, rows = s->n * s->oh;
#pragma omp parallel for schedule(static) if (rows * s->ow * C * kk > OPS_PARALLEL_MIN)
  for (int chunk = 0; chunk < TOKENS_DW_CHUNKS; chunk++) {
    double *p = part + chunk * slots;
    float *r = rowsum + chunk * slots;
    for (int64_t i = 0; i < slots; i++) p[i] = 0.0;
    for (int64_t row = rows * chunk / TOKENS_DW_CHUNKS; row < rows * (chunk + 1) / TOKENS_DW_CHUNKS; row++) {
      int64_t n = row / s->oh, oy = row % s->oh;
      memset(r, 0, (size_t)slots * sizeof(float));
      for (int64_t ox = 0; ox < s->ow; ox++) {
        const float *g = dy + (row * s->ow + ox) * C;
        for (int64_t ki = 0; ki < s->k; ki++) {
          int64_t iy = oy - s->pad + ki;
          if (iy < 0 || iy >= s->h) continue;
          for (int64_t kj = 0; kj < s->k; kj++) {
            int64_t ix = ox - s->pad + kj;
            if (ix < 0 || ix >= s->w) continue;
            const float *in = x + ((n * s->h + iy) * s->w + ix) * C;
            float *acc = r + (ki * s->k + kj) * C;
#pragma omp simd
            for (int64_t c = 0; c < C; c++) acc[c] += g[c] * in[c];
          }
        }
        float *acc = r + kk * C;
#pragma omp simd
        for (int64_t c = 0; c < C; c++) acc[c] += g[c];
      }
      for (int64_t i = 0; i < slots; i++) p[i] += r[i];
    }
  }
  for (int64_t c = 0; c < C; c++)
    for (int64_t t = 0; t <= kk; t++) {
      double sum = 0.0;
      for (int chunk = 0; chunk < TOKENS_DW_CHUNKS; chunk++) sum += part[chunk * slots + t * C + c];
      if (t < kk && dw) dw[c * kk + t] += (float)sum;
      if (t == kk && db) db[c] += (float)sum;
    }
}

/* Products with pixels inside the map (the kernel skips the padding): taps x output positions
 * whose input row and column both lie in the map, times N * C. */
static int64_t tokens_executed_macs(const tokens_shape *s) {
  int64_t rows = 0, cols = 0;
  for (int64_t t = 0; t < s->k; t++) {
    for (int64_t o = 0; o < s->oh; o++) rows += o - s->pad + t >= 0 && o - s->pad + t < s->h;
    for (int64_t o = 0; o < s->ow; o++) cols += o - s->pad + t >= 0 && o - s->pad + t < s->w;
  }
  return s->n * s->c * rows * cols;
}

static tokens_shape tokens_shape_of(const hakd_node *node) {
  tokens_shape s;
  s.n = node->iarg[0], s.h = node->iarg[1], s.w = node->iarg[2], s.c = node->iarg[3], s.k = node->iarg[4];
  s.pad = node->iarg[5], s.oh = node->iarg[6], s.ow = node->iarg[7];
  return s;
}

static void tokens_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
  tokens_shape s = tokens_shape_of(node);
  const float *dy = node->out->grad;
  float *dx = hakd_grad(ctx, x), *dw = hakd_grad(ctx, w), *db = hakd_grad(ctx, b);
  if (dx) tokens_input_grad(dx, dy, node->saved[0], &s);
  if (!dw && !db) return;
  size_t slots = (size_t)((s.k * s.k + 1) * s.c) * TOKENS_DW_CHUNKS;
  double *part = hakd_ctx_scratch(ctx, slots * (sizeof(double) + sizeof(float)));
  if (!part) return;
  tokens_weight_grad(dw, db, dy, hakd_f32(x), &s, part, (float *)(part + slots));
  hakd_ctx_scratch_free(ctx, part);
}

hakd_tensor *hakd_depthwise_conv2d_tokens(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b, int64_t h,
                                          int64_t width, int padding) {
  if (!x || !w) return NULL;
  char sx[96], sw[96], sb[96];
  if (x->dtype != HAKD_F32 || w->dtype != HAKD_F32 || (b && b->dtype != HAKD_F32))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "depthwise_conv2d_tokens: inputs must be float32");
  int64_t C = x->ndim == 3 ? x->shape[2] : 0;
  if (x->ndim != 3 || h < 1 || width < 1 || x->shape[1] != h * width || w->ndim != 4 || w->shape[0] != C ||
      w->shape[1] != 1 || w->shape[2] != w->shape[3] || (b && (b->ndim != 1 || b->shape[0] != C)))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "depthwise_conv2d_tokens: x %s (want (N, %lld*%lld, C)), weight %s (want (C, 1, k, k)), "
                         "bias %s do not match",
                         hakd_shape_str(x, sx, sizeof sx), (long long)h, (long long)width,
                         hakd_shape_str(w, sw, sizeof sw), b ? hakd_shape_str(b, sb, sizeof sb) : "none");
  tokens_shape s = {x->shape[0], h, width, C, w->shape[2], padding, 0, 0};
  s.oh = h + 2 * s.pad - s.k + 1, s.ow = width + 2 * s.pad - s.k + 1;
  if (padding < 0 || s.oh < 1 || s.ow < 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "depthwise_conv2d_tokens: kernel %lld with padding %d does not fit %lldx%lld",
                         (long long)s.k, padding, (long long)h, (long long)width);
  int64_t shape[3] = {s.n, s.oh * s.ow, C};
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 3, shape);
  float *wt = hakd_ctx_alloc(ctx, (size_t)(s.k * s.k * C) * sizeof(float)); /* kept for backward */
  if (!y || !wt) return NULL;
  tokens_weights(wt, hakd_f32(w), &s);
  tokens_forward(hakd_f32(y), hakd_f32(x), wt, b ? hakd_f32(b) : NULL, &s);
  hakd_tensor *in[3] = {x, w, b};
  hakd_node *node = hakd_record(ctx, "depthwise_conv2d_tokens", tokens_backward, y, 3, in);
  if (node) {
    int64_t args[8] = {s.n, s.h, s.w, s.c, s.k, s.pad, s.oh, s.ow};
    memcpy(node->iarg, args, sizeof args);
    node->iarg[8] = tokens_executed_macs(&s); /* hakd_tape_executed_macs */
    node->saved[0] = wt;
    hakd_node_unneeded(ctx, node, -1); /* backward reads x, the saved weights and dy */
    hakd_node_unneeded(ctx, node, 1);
    hakd_node_unneeded(ctx, node, 2);
  }
  return y;
}
