/* Wide-padded dilated convolutions on blocked bfloat16 activations, tap by tap over the outputs
 * where each tap reads the map.
 *
 * An ASPP branch (3x3, dilation and padding 12/24/36) on a 64x128 map: near the top the upper row
 * of taps reads only padding, near the bottom the lower one, and where the dilation passes the map
 * only the centre is left. oneDNN's direct bf16 kernels refuse paddings wider than their block of
 * output columns (rates 24 and 36 here) and fall back to an im2col GEMM in plain layout that
 * multiplies every tap, zeros included; where they do run (rate 12) a large dilation keeps them
 * at a third of their 1x1 speed (measured at 512x1024: 20-43 against 65 GMAC/s). Here every tap is
 * a 1x1 convolution (oneDNN's blocked 1x1 kernel, a plain GEMM over channels) of the input
 * rectangle it reads onto the output rectangle where it is valid, so no tap in padding is
 * multiplied. The sums stay float32 (a blocked float32 accumulator); the tap that covers the
 * whole output (the centre of a "same" convolution, reading x itself) writes it first with the
 * bias, every other tap adds its rectangle, and one last pass adds the residual, applies the
 * activation and rounds into y. Only the other taps' input rectangles are copied out of x. */
#include <math.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/ops_internal.h"

/* Paddings up to this stay one convolution: oneDNN's direct kernels take them at full speed. */
#define CONV2D_REGIONS_MIN_PAD 9

int conv2d_regions_apply(const conv2d_shape *s) {
  return s->src_blocked && s->dst_blocked && !s->dst_f32 && s->stride == 1 && s->groups == 1 && s->dilation > 1 &&
         s->pad >= CONV2D_REGIONS_MIN_PAD;
}

/* Output positions [*o0, *o1) where tap t (of dilation d, padding pad) reads inside an input of n. */
static void conv2d_tap_range(int64_t t, int64_t n, int64_t out, int64_t d, int64_t pad, int64_t *o0, int64_t *o1) {
  int64_t a = pad - t * d, b = n + pad - t * d;
  *o0 = a < 0 ? 0 : a > out ? out : a;
  *o1 = b < *o0 ? *o0 : b > out ? out : b;
}

/* Copies the rectangle [y0, y0 + rh) x [x0, x0 + rw) of every (image, channel block) plane of a
 * blocked tensor (planes of h x w positions of 16 values of `bytes` each) into a dense one, or back. */
static void conv2d_rect_copy(void *dense, const void *full, size_t bytes, int64_t planes, int64_t h, int64_t w,
                             int64_t y0, int64_t x0, int64_t rh, int64_t rw, int to_full) {
  size_t row = (size_t)rw * 16 * bytes;
#pragma omp parallel for schedule(static) if (planes * rh * rw > 16384)
  for (int64_t p = 0; p < planes; p++)
    for (int64_t r = 0; r < rh; r++) {
      unsigned char *d = (unsigned char *)dense + (size_t)(p * rh + r) * row;
      unsigned char *f = (unsigned char *)full + ((size_t)((p * h + y0 + r) * w + x0) * 16) * bytes;
      if (to_full)
        memcpy(f, d, row);
      else
        memcpy(d, f, row);
    }
}

int conv2d_regions_forward(hakd_ctx *ctx, void *y, const void *x, const float *w, const float *b,
                           const conv2d_shape *s) {
  enum { MAX_TAPS = 64 };
  if (s->kh * s->kw > MAX_TAPS) return conv2d_dnnl_forward(y, x, w, b, s);
  int64_t ry[MAX_TAPS][2], rx[MAX_TAPS][2];
  for (int64_t t = 0; t < s->kh; t++) conv2d_tap_range(t, s->h, s->oh, s->dilation, s->pad, &ry[t][0], &ry[t][1]);
  for (int64_t t = 0; t < s->kw; t++) conv2d_tap_range(t, s->w, s->ow, s->dilation, s->pad, &rx[t][0], &rx[t][1]);
  int64_t full_y = -1, full_x = -1; /* a tap valid at every output position */
  for (int64_t t = 0; t < s->kh && full_y < 0; t++)
    if (ry[t][0] == 0 && ry[t][1] == s->oh) full_y = t;
  for (int64_t t = 0; t < s->kw && full_x < 0; t++)
    if (rx[t][0] == 0 && rx[t][1] == s->ow) full_x = t;
  if (full_y < 0 || full_x < 0) return conv2d_dnnl_forward(y, x, w, b, s);

  int64_t in_planes = s->n * ((s->cin + 15) / 16), out_planes = s->n * ((s->cout + 15) / 16);
  int64_t out_positions = s->oh * s->ow;
  size_t acc_bytes = (size_t)(out_planes * out_positions * 16) * sizeof(float);
  size_t in_bytes = (size_t)(in_planes * out_positions * 16) * sizeof(uint16_t); /* a tap reads <= oh x ow */
  size_t part_bytes = acc_bytes, w_bytes = (size_t)(s->cout * s->cin) * sizeof(float);
  unsigned char *block = hakd_ctx_scratch(ctx, acc_bytes + in_bytes + part_bytes + w_bytes + 256);
  if (!block) return hakd_ctx_status(ctx);
  float *acc = (float *)block, *part = NULL, *sub = NULL;
  uint16_t *in = NULL;
  in = (uint16_t *)(block + ((acc_bytes + 63) & ~(size_t)63));
  part = (float *)((unsigned char *)in + ((in_bytes + 63) & ~(size_t)63));
  sub = (float *)((unsigned char *)part + ((part_bytes + 63) & ~(size_t)63));

  int rc = 0;
  for (int pass = 0; pass < 2 && !rc; pass++) /* the full tap first (it writes acc), then the others */
    for (int64_t ty = 0; ty < s->kh && !rc; ty++)
      for (int64_t tx = 0; tx < s->kw && !rc; tx++) {
        int is_full = ty == full_y && tx == full_x;
        if (is_full != (pass == 0)) continue;
        int64_t oy0 = ry[ty][0], ox0 = rx[tx][0], oh = ry[ty][1] - oy0, ow = rx[tx][1] - ox0;
        if (oh <= 0 || ow <= 0) continue; /* this tap reads only padding */
        int64_t iy0 = oy0 - s->pad + ty * s->dilation, ix0 = ox0 - s->pad + tx * s->dilation;
        conv2d_shape r = *s;
        r.kh = r.kw = 1, r.pad = 0, r.dilation = 1;
        r.h = r.oh = oh, r.w = r.ow = ow;
        r.dst_f32 = 1, r.post_act = HAKD_ACT_NONE;
        r.has_bias = is_full && s->has_bias;
        r.post_sum = !is_full;
        int64_t pairs = s->cout * s->cin;
#pragma omp parallel for schedule(static) if (pairs > 65536)
        for (int64_t p = 0; p < pairs; p++) sub[p] = w[(p * s->kh + ty) * s->kw + tx];
        int whole_in = iy0 == 0 && ix0 == 0 && oh == s->h && ow == s->w;
        if (!whole_in) conv2d_rect_copy(in, x, sizeof(uint16_t), in_planes, s->h, s->w, iy0, ix0, oh, ow, 0);
        int whole_out = oh == s->oh && ow == s->ow;
        if (!whole_out && !is_full) conv2d_rect_copy(part, acc, sizeof(float), out_planes, s->oh, s->ow, oy0, ox0, oh, ow, 0);
        rc = conv2d_dnnl_forward(whole_out ? (void *)acc : (void *)part, whole_in ? x : in, sub, b, &r);
        if (!rc && !whole_out) conv2d_rect_copy(part, acc, sizeof(float), out_planes, s->oh, s->ow, oy0, ox0, oh, ow, 1);
      }
  if (!rc) {
    int64_t n = out_planes * out_positions * 16;
    uint16_t *yd = y;
    float lo = s->post_act == HAKD_ACT_NONE ? -INFINITY : 0.0f, hi = s->post_act == HAKD_ACT_RELU6 ? 6.0f : INFINITY;
    int sum = (int)s->post_sum;
#pragma omp parallel for simd schedule(static) if (n > 65536)
    for (int64_t i = 0; i < n; i++) {
      float v = acc[i] + (sum ? bf16_value(yd[i]) : 0.0f);
      v = v < lo ? lo : v;
      yd[i] = bf16_round(v > hi ? hi : v);
    }
  }
  hakd_ctx_scratch_free(ctx, block);
  return rc;
}
