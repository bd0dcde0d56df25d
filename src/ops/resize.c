/* Bilinear and nearest resizing of (N, C, H, W) maps with PyTorch's index arithmetic (in float,
 * as its CPU kernels compute it), so sampled positions match F.interpolate bit for bit. */
#include <math.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/vecmath.h"

/* One output coordinate of a bilinear resize: input indices and their weights. */
typedef struct {
  int64_t i0, i1;
  float l0, l1;
} resize_tap;

/* reference: area_pixel_compute_scale / area_pixel_compute_source_index (aten UpSample.h) */
static void resize_bilinear_taps(resize_tap *taps, int64_t in, int64_t out, int align_corners) {
  float scale = align_corners ? (out > 1 ? (float)(in - 1) / (float)(out - 1) : 0.0f) : (float)in / (float)out;
  for (int64_t o = 0; o < out; o++) {
    resize_tap *t = &taps[o];
    if (in == out) {
      t->i0 = t->i1 = o;
      t->l0 = 1.0f;
      t->l1 = 0.0f;
      continue;
    }
    float src = align_corners ? scale * (float)o : scale * ((float)o + 0.5f) - 0.5f;
    if (src < 0.0f) src = 0.0f; /* align_corners=False clamps negative coordinates (OpenCV rule) */
    t->i0 = (int64_t)src;
    t->i1 = t->i0 + (t->i0 < in - 1 ? 1 : 0);
    float l1 = src - (float)t->i0;
    t->l1 = l1 < 0.0f ? 0.0f : (l1 > 1.0f ? 1.0f : l1);
    t->l0 = 1.0f - t->l1;
  }
}

/* reference: nearest_idx (aten UpSample.h): copy at scale 1, shift at scale 2, else
 * min(floor(dst * (float)(in / out)), in - 1). */
static int64_t resize_nearest_index(int64_t o, int64_t in, int64_t out) {
  if (out == in) return o;
  if (out == 2 * in) return o >> 1;
  float scale = (float)in / (float)out;
  int64_t src = (int64_t)floorf((float)o * scale);
  return src < in - 1 ? src : in - 1;
}

/* Taps of both axes from step memory; NULL (ctx status set) when out of memory. */
static resize_tap *resize_taps_new(hakd_ctx *ctx, int64_t h, int64_t w, int64_t oh, int64_t ow, int align_corners) {
  resize_tap *taps = hakd_ctx_alloc(ctx, (size_t)(oh + ow) * sizeof *taps);
  if (!taps) return NULL;
  resize_bilinear_taps(taps, h, oh, align_corners);
  resize_bilinear_taps(taps + oh, w, ow, align_corners);
  return taps;
}

/* Both bilinear passes walk the output in chunks of up to RESIZE_CHUNK columns and keep two
 * rows of width-interpolated (forward) or height-accumulated (backward) values in step with the
 * input rows, one slot per row parity: an output row reads input rows i0 and i0 + 1 (or i0
 * twice), which never share a slot, so each input row is handled once per chunk when upsampling. */
#define RESIZE_CHUNK 512

/* y[j] = lh0 * h0[j] + lh1 * h1[j] for j < n, the same float operations as PyTorch's
 * lh0 * (l0 a + l1 b) + lh1 * (l0 c + l1 d); stream: non-temporal stores from the first aligned y. */
static void resize_row_height(float *y, const float *h0, const float *h1, float lh0, float lh1, int64_t n,
                              int stream) {
  int64_t j = 0;
#if VEC_LANES > 1
  if (stream) {
    for (; j < n && !vec_stream_aligned(y + j); j++) y[j] = lh0 * h0[j] + lh1 * h1[j];
    vec_f32 a = vec_set1(lh0), b = vec_set1(lh1);
    for (; j + VEC_LANES <= n; j += VEC_LANES)
      vec_stream(y + j, vec_add(vec_mul(a, vec_load(h0 + j)), vec_mul(b, vec_load(h1 + j))));
  }
#else
  (void)stream;
#endif
  for (; j < n; j++) y[j] = lh0 * h0[j] + lh1 * h1[j];
}

/* h[j - j0] = l0 * row[i0] + l1 * row[i1] with output column j's taps, j in [j0, j1). */
static void resize_row_width(float *h, const float *row, const resize_tap *tw, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j++) h[j - j0] = tw[j].l0 * row[tw[j].i0] + tw[j].l1 * row[tw[j].i1];
}

/* row[i0] += l0 * v[j - j0], row[i1] += l1 * v[j - j0] with column j's taps, j in [j0, j1). */
static void resize_row_width_backward(float *row, const float *v, const resize_tap *tw, int64_t j0, int64_t j1) {
  for (int64_t j = j0; j < j1; j++) {
    row[tw[j].i0] += tw[j].l0 * v[j - j0];
    row[tw[j].i1] += tw[j].l1 * v[j - j0];
  }
}

/* dx += the bilinear resize's transpose applied to dy, one plane: dy summed over output rows
 * into input rows (weighted by the row taps), then spread over input columns.
 * dxp: (h, w), dyp: (oh, ow). */
static void resize_bilinear_backward_plane(float *dxp, const float *dyp, const resize_tap *th, const resize_tap *tw,
                                           int64_t w, int64_t oh, int64_t ow) {
  for (int64_t j0 = 0; j0 < ow; j0 += RESIZE_CHUNK) {
    int64_t j1 = j0 + RESIZE_CHUNK < ow ? j0 + RESIZE_CHUNK : ow, n = j1 - j0;
    float acc[2][RESIZE_CHUNK];
    int64_t tag[2] = {-1, -1}; /* input row each slot accumulates */
    for (int64_t i = 0; i < oh; i++) {
      int64_t rows[2] = {th[i].i0, th[i].i1};
      for (int k = 0; k < 2; k++) {
        int slot = (int)(rows[k] & 1);
        if (tag[slot] == rows[k]) continue;
        /* Flushing adds, so a row that comes back later is still summed correctly. */
        if (tag[slot] >= 0) resize_row_width_backward(dxp + tag[slot] * w, acc[slot], tw, j0, j1);
        tag[slot] = rows[k];
        for (int64_t j = 0; j < n; j++) acc[slot][j] = 0.0f;
      }
      const float *g = dyp + i * ow + j0;
      float *a0 = acc[rows[0] & 1], *a1 = acc[rows[1] & 1], lh0 = th[i].l0, lh1 = th[i].l1;
      for (int64_t j = 0; j < n; j++) a0[j] += lh0 * g[j];
      for (int64_t j = 0; j < n; j++) a1[j] += lh1 * g[j];
    }
    for (int slot = 0; slot < 2; slot++)
      if (tag[slot] >= 0) resize_row_width_backward(dxp + tag[slot] * w, acc[slot], tw, j0, j1);
  }
}

static void resize_bilinear_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0];
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
  int64_t oh = node->iarg[0], ow = node->iarg[1];
  resize_tap *taps = resize_taps_new(ctx, h, w, oh, ow, (int)node->iarg[2]);
  if (!taps) return;
  const float *dy = node->out->grad;
#pragma omp parallel for schedule(static) if (planes * oh * ow > 32768)
  for (int64_t p = 0; p < planes; p++)
    resize_bilinear_backward_plane(dx + p * h * w, dy + p * oh * ow, taps, taps + oh, w, oh, ow);
}

static int resize_check_size(hakd_ctx *ctx, const char *op, int64_t out_h, int64_t out_w) {
  if (out_h < 1 || out_w < 1) {
    hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: output size %lldx%lld must be positive", op, (long long)out_h,
                  (long long)out_w);
    return 0;
  }
  return 1;
}

hakd_tensor *hakd_resize_bilinear(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w, int align_corners) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  char xs[64];
  if (x->dtype != HAKD_F32 || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "resize_bilinear: input must be float32 (N, C, H, W), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (!resize_check_size(ctx, "resize_bilinear", out_h, out_w)) return NULL;
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
  if (h < 1 || w < 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "resize_bilinear: empty input %s", hakd_shape_str(x, xs, sizeof xs));
  hakd_tensor *y = hakd_tensor4(ctx, x->shape[0], x->shape[1], out_h, out_w);
  resize_tap *taps = resize_taps_new(ctx, h, w, out_h, out_w, align_corners);
  if (!y || !taps) return NULL;
  const resize_tap *th = taps, *tw = taps + out_h;
  const float *xd = hakd_f32(x);
  float *yd = hakd_f32(y);
  int stream = planes * out_h * out_w * (int64_t)sizeof(float) >= VEC_STREAM_MIN_BYTES;
#pragma omp parallel for schedule(static) if (planes * out_h * out_w > 32768)
  for (int64_t p = 0; p < planes; p++) {
    const float *xp = xd + p * h * w;
    float *yp = yd + p * out_h * out_w;
    for (int64_t j0 = 0; j0 < out_w; j0 += RESIZE_CHUNK) {
      int64_t j1 = j0 + RESIZE_CHUNK < out_w ? j0 + RESIZE_CHUNK : out_w, n = j1 - j0;
      float across[2][RESIZE_CHUNK];
      int64_t tag[2] = {-1, -1}; /* input row each slot holds, interpolated across the width */
      for (int64_t i = 0; i < out_h; i++) {
        int64_t r0 = th[i].i0, r1 = th[i].i1;
        if (tag[r0 & 1] != r0) resize_row_width(across[r0 & 1], xp + r0 * w, tw, j0, j1), tag[r0 & 1] = r0;
        if (tag[r1 & 1] != r1) resize_row_width(across[r1 & 1], xp + r1 * w, tw, j0, j1), tag[r1 & 1] = r1;
        resize_row_height(yp + i * out_w + j0, across[r0 & 1], across[r1 & 1], th[i].l0, th[i].l1, n, stream);
      }
    }
    if (stream) vec_stream_fence();
  }
  hakd_node *node = hakd_record(ctx, "resize_bilinear", resize_bilinear_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = out_h;
    node->iarg[1] = out_w;
    node->iarg[2] = align_corners != 0;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

/* Source index of every output row, then column: (oh + ow) int64 in step memory. */
static int64_t *resize_nearest_indices(hakd_ctx *ctx, int64_t h, int64_t w, int64_t oh, int64_t ow) {
  int64_t *idx = hakd_ctx_alloc(ctx, (size_t)(oh + ow) * sizeof *idx);
  if (!idx) return NULL;
  for (int64_t i = 0; i < oh; i++) idx[i] = resize_nearest_index(i, h, oh);
  for (int64_t j = 0; j < ow; j++) idx[oh + j] = resize_nearest_index(j, w, ow);
  return idx;
}

static void resize_nearest_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0];
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  int64_t planes = x->shape[0] * x->shape[1], h = x->shape[2], w = x->shape[3];
  int64_t oh = node->out->shape[2], ow = node->out->shape[3];
  int64_t *idx = resize_nearest_indices(ctx, h, w, oh, ow);
  if (!idx) return;
  const float *dy = node->out->grad;
#pragma omp parallel for schedule(static) if (planes * oh * ow > 32768)
  for (int64_t p = 0; p < planes; p++) {
    float *dxp = dx + p * h * w;
    const float *dyp = dy + p * oh * ow;
    for (int64_t i = 0; i < oh; i++) {
      float *row = dxp + idx[i] * w;
      for (int64_t j = 0; j < ow; j++) row[idx[oh + j]] += dyp[i * ow + j];
    }
  }
}

hakd_tensor *hakd_resize_nearest(hakd_ctx *ctx, hakd_tensor *x, int64_t out_h, int64_t out_w) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  char xs[64];
  int labels3d = x->dtype == HAKD_I32 && x->ndim == 3;
  if (x->ndim != 4 && !labels3d)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "resize_nearest: input must be (N, C, H, W), or int32 labels (N, H, W), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (!resize_check_size(ctx, "resize_nearest", out_h, out_w)) return NULL;
  int64_t h = hakd_dim(x, -2), w = hakd_dim(x, -1), planes = hakd_numel(x) / (h * w > 0 ? h * w : 1);
  if (h < 1 || w < 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "resize_nearest: empty input %s", hakd_shape_str(x, xs, sizeof xs));
  int64_t shape[4];
  for (int d = 0; d < x->ndim - 2; d++) shape[d] = x->shape[d];
  shape[x->ndim - 2] = out_h;
  shape[x->ndim - 1] = out_w;
  hakd_tensor *y = hakd_tensor_new(ctx, x->dtype, x->ndim, shape);
  int64_t *idx = resize_nearest_indices(ctx, h, w, out_h, out_w);
  if (!y || !idx) return NULL;
  /* F32 and I32 elements are both 4 bytes: one gather serves labels and features. */
  const uint32_t *xd = x->data;
  uint32_t *yd = y->data;
#pragma omp parallel for schedule(static) if (planes * out_h * out_w > 32768)
  for (int64_t p = 0; p < planes; p++) {
    const uint32_t *xp = xd + p * h * w;
    uint32_t *yp = yd + p * out_h * out_w;
    for (int64_t i = 0; i < out_h; i++) {
      const uint32_t *row = xp + idx[i] * w;
      for (int64_t j = 0; j < out_w; j++) yp[i * out_w + j] = row[idx[out_h + j]];
    }
  }
  if (x->dtype == HAKD_F32)
    hakd_node_reads_no_data(ctx, hakd_record(ctx, "resize_nearest", resize_nearest_backward, y, 1, &x));
  return y;
}
