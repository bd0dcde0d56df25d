/* Max, average and adaptive average pooling of (N, C, H, W) maps, one plane per OpenMP iteration. */
#include <math.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Window bounds along one axis for output index o: [*lo, *hi) clipped to [0, in). */
static void pool_window(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t in, int64_t *lo, int64_t *hi) {
  int64_t start = o * stride - pad, end = start + kernel;
  *lo = start < 0 ? 0 : start;
  *hi = end > in ? in : end;
}

/* Validates x and the window and makes the output; NULL on error. Where take_blocked is set, a
 * blocked bfloat16 x passes (and no output is made: NULL without an error). */
static hakd_tensor *pool_output(hakd_ctx *ctx, const char *op, hakd_tensor *x, int kernel, int stride, int padding,
                                int take_blocked) {
  char xs[64];
  if ((x->dtype != HAKD_F32 && !(take_blocked && x->dtype == HAKD_BF16_BLOCKED)) || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: input must be float32 (N, C, H, W), got %s", op,
                         hakd_shape_str(x, xs, sizeof xs));
  /* PyTorch's limit: padding at most half the kernel, so every window holds an input element. */
  if (kernel < 1 || stride < 1 || padding < 0 || 2 * padding > kernel)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: kernel %d, stride %d, padding %d out of range", op, kernel, stride,
                         padding);
  if (x->shape[2] + 2 * padding < kernel || x->shape[3] + 2 * padding < kernel)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: kernel %d larger than padded input %s", op, kernel,
                         hakd_shape_str(x, xs, sizeof xs));
  if (x->dtype == HAKD_BF16_BLOCKED) return NULL;
  int64_t oh = (x->shape[2] + 2 * padding - kernel) / stride + 1;
  int64_t ow = (x->shape[3] + 2 * padding - kernel) / stride + 1;
  return hakd_tensor4(ctx, x->shape[0], x->shape[1], oh, ow);
}

/* ---- max ---- */

static void maxpool2d_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *y = node->out;
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  const int32_t *argmax = node->saved[0];
  int64_t planes = x->shape[0] * x->shape[1], hw = x->shape[2] * x->shape[3], ohw = y->shape[2] * y->shape[3];
  const float *dy = y->grad;
#pragma omp parallel for schedule(static) if (planes * ohw > 32768)
  for (int64_t p = 0; p < planes; p++) {
    float *dxp = dx + p * hw;
    for (int64_t i = 0; i < ohw; i++) dxp[argmax[p * ohw + i]] += dy[p * ohw + i];
  }
}

/* reference: F.max_pool2d (first maximum of a window in scan order wins ties; NaN propagates) */
hakd_tensor *hakd_maxpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  hakd_tensor *y = pool_output(ctx, "maxpool2d", x, kernel, stride, padding, 1);
  if (!y) return hakd_ctx_status(ctx) ? NULL : bf16_blocked_maxpool2d(ctx, x, kernel, stride, padding);
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3], oh = y->shape[2], ow = y->shape[3];
  int32_t *argmax = hakd_ctx_alloc(ctx, (size_t)(planes * oh * ow) * sizeof(int32_t));
  if (!argmax) return NULL;
  const float *xd = hakd_f32(x);
  float *yd = hakd_f32(y);
#pragma omp parallel for schedule(static) if (planes * oh * ow * kernel * kernel > 32768)
  for (int64_t p = 0; p < planes; p++) {
    const float *xp = xd + p * h * w;
    for (int64_t i = 0; i < oh; i++) {
      int64_t h0, h1;
      pool_window(i, kernel, stride, padding, h, &h0, &h1);
      for (int64_t j = 0; j < ow; j++) {
        int64_t w0, w1;
        pool_window(j, kernel, stride, padding, w, &w0, &w1);
        int64_t best = h0 * w + w0;
        float maxval = -INFINITY;
        for (int64_t a = h0; a < h1; a++)
          for (int64_t b = w0; b < w1; b++) {
            float v = xp[a * w + b];
            if (v > maxval || isnan(v)) {
              maxval = v;
              best = a * w + b;
            }
          }
        yd[(p * oh + i) * ow + j] = maxval;
        argmax[(p * oh + i) * ow + j] = (int32_t)best;
      }
    }
  }
  hakd_node *node = hakd_record(ctx, "maxpool2d", maxpool2d_backward, y, 1, &x);
  if (node) {
    node->saved[0] = argmax;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

/* ---- average ---- */

static void avgpool2d_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *y = node->out;
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  int64_t kernel = node->iarg[0], stride = node->iarg[1], padding = node->iarg[2];
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3], oh = y->shape[2], ow = y->shape[3];
  float inv = 1.0f / (float)(kernel * kernel);
  const float *dy = y->grad;
#pragma omp parallel for schedule(static) if (planes * oh * ow * kernel * kernel > 32768)
  for (int64_t p = 0; p < planes; p++) {
    float *dxp = dx + p * h * w;
    for (int64_t i = 0; i < oh; i++) {
      int64_t h0, h1;
      pool_window(i, kernel, stride, padding, h, &h0, &h1);
      for (int64_t j = 0; j < ow; j++) {
        int64_t w0, w1;
        pool_window(j, kernel, stride, padding, w, &w0, &w1);
        float g = dy[(p * oh + i) * ow + j] * inv;
        for (int64_t a = h0; a < h1; a++)
          for (int64_t b = w0; b < w1; b++) dxp[a * w + b] += g;
      }
    }
  }
}

/* reference: F.avg_pool2d(count_include_pad=True, ceil_mode=False): every window divides by
 * kernel^2, padded positions counting as zeros. */
hakd_tensor *hakd_avgpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  hakd_tensor *y = pool_output(ctx, "avgpool2d", x, kernel, stride, padding, 0);
  if (!y) return NULL;
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3], oh = y->shape[2], ow = y->shape[3];
  int64_t divisor = (int64_t)kernel * kernel;
  const float *xd = hakd_f32(x);
  float *yd = hakd_f32(y);
#pragma omp parallel for schedule(static) if (planes * oh * ow * kernel * kernel > 32768)
  for (int64_t p = 0; p < planes; p++) {
    const float *xp = xd + p * h * w;
    for (int64_t i = 0; i < oh; i++) {
      int64_t h0, h1;
      pool_window(i, kernel, stride, padding, h, &h0, &h1);
      for (int64_t j = 0; j < ow; j++) {
        int64_t w0, w1;
        pool_window(j, kernel, stride, padding, w, &w0, &w1);
        float sum = 0.0f;
        for (int64_t a = h0; a < h1; a++)
          for (int64_t b = w0; b < w1; b++) sum += xp[a * w + b];
        yd[(p * oh + i) * ow + j] = sum / (float)divisor;
      }
    }
  }
  hakd_node *node = hakd_record(ctx, "avgpool2d", avgpool2d_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = kernel;
    node->iarg[1] = stride;
    node->iarg[2] = padding;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

/* ---- adaptive average ---- */

/* reference: aten start_index / end_index: [floor(o * in / out), ceil((o + 1) * in / out)) */
static void adaptive_bin(int64_t o, int64_t in, int64_t out, int64_t *lo, int64_t *hi) {
  *lo = o * in / out;
  *hi = ((o + 1) * in + out - 1) / out;
}

static void adaptive_avgpool2d_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *y = node->out;
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3], oh = y->shape[2], ow = y->shape[3];
  const float *dy = y->grad;
#pragma omp parallel for schedule(static) if (planes * h * w > 32768)
  for (int64_t p = 0; p < planes; p++) {
    float *dxp = dx + p * h * w;
    for (int64_t i = 0; i < oh; i++) {
      int64_t h0, h1;
      adaptive_bin(i, h, oh, &h0, &h1);
      for (int64_t j = 0; j < ow; j++) {
        int64_t w0, w1;
        adaptive_bin(j, w, ow, &w0, &w1);
        float g = dy[(p * oh + i) * ow + j] / (float)((h1 - h0) * (w1 - w0));
        for (int64_t a = h0; a < h1; a++)
          for (int64_t b = w0; b < w1; b++) dxp[a * w + b] += g;
      }
    }
  }
}

hakd_tensor *hakd_adaptive_avgpool2d(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  char xs[64];
  if (x->dtype == HAKD_BF16_BLOCKED && x->ndim == 4 && x->shape[2] >= 1 && x->shape[3] >= 1 && out_h == 1 && out_w == 1)
    return bf16_blocked_global_avgpool(ctx, x);
  if (x->dtype != HAKD_F32 || x->ndim != 4 || x->shape[2] < 1 || x->shape[3] < 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "adaptive_avgpool2d: input must be float32 (N, C, H, W) (blocked bfloat16 pools to 1x1 "
                         "only), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (out_h < 1 || out_w < 1)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "adaptive_avgpool2d: output size %lldx%lld must be positive",
                         (long long)out_h, (long long)out_w);
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
  hakd_tensor *y = hakd_tensor4(ctx, x->shape[0], x->shape[1], out_h, out_w);
  if (!y) return NULL;
  const float *xd = hakd_f32(x);
  float *yd = hakd_f32(y);
#pragma omp parallel for schedule(static) if (planes * h * w > 32768)
  for (int64_t p = 0; p < planes; p++) {
    const float *xp = xd + p * h * w;
    for (int64_t i = 0; i < out_h; i++) {
      int64_t h0, h1;
      adaptive_bin(i, h, out_h, &h0, &h1);
      for (int64_t j = 0; j < out_w; j++) {
        int64_t w0, w1;
        adaptive_bin(j, w, out_w, &w0, &w1);
        double sum = 0.0; /* bins may be whole maps (global pooling): sum in double */
        for (int64_t a = h0; a < h1; a++)
          for (int64_t b = w0; b < w1; b++) sum += xp[a * w + b];
        yd[(p * out_h + i) * out_w + j] = (float)(sum / (double)((h1 - h0) * (w1 - w0)));
      }
    }
  }
  hakd_node_reads_no_data(ctx, hakd_record(ctx, "adaptive_avgpool2d", adaptive_avgpool2d_backward, y, 1, &x));
  return y;
}
