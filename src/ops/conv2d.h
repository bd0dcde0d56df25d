/* Internal interface of conv2d: the shape record shared by the two implementations (im2col +
 * OpenBLAS sgemm in conv2d.c, oneDNN in conv2d_dnnl.c) and the path selection. */
#ifndef HAKD_OPS_CONV2D_H
#define HAKD_OPS_CONV2D_H

#include <stddef.h>
#include <stdint.h>

#include "hakd/tensor.h"

/* Every size a conv2d kernel needs; also the key of the per-shape caches. */
typedef struct {
  int64_t n, cin, h, w;   /* input (N, Cin, H, W) */
  int64_t cout, kh, kw;   /* weight (Cout, Cin/groups, kh, kw) */
  int64_t oh, ow;         /* output (N, Cout, oh, ow) */
  int64_t stride, pad, dilation, groups;
  int64_t has_bias;
  int64_t bf16;           /* products in bfloat16 (inputs rounded), sums and outputs in float32 */
  /* bf16 on oneDNN only: input / output in the blocked bfloat16 layout (HAKD_BF16_BLOCKED) instead
   * of float32 NCHW, and the fused forward's post-ops (y = act(conv + y), y holding the residual) */
  int64_t src_blocked, dst_blocked, post_sum;
  int64_t post_act; /* hakd_activation */
  /* a band of h rows (input and output) out of images of band_of_h rows: how conv2d_dnnl cuts a
   * 1x1 stride-1 convolution to bound its scratch; 0: whole images */
  int64_t band_of_h;
} conv2d_shape;

typedef enum {
  CONV2D_PATH_AUTO = 0, /* per shape, by conv2d_auto_path */
  CONV2D_PATH_GEMM = 1, /* im2col + cblas_sgemm (direct kernel for depthwise, plain GEMM for 1x1) */
  CONV2D_PATH_DNNL = 2  /* oneDNN primitives */
} conv2d_path;

/* Forces a path for every later conv2d call (tests, benchmarks); CONV2D_PATH_AUTO restores the
 * default, which is the environment variable HAKD_CONV=gemm|dnnl|auto (auto when unset). */
void conv2d_set_path(conv2d_path path);
/* The path the next call uses before the per-shape rule (forced, env, or auto). */
conv2d_path conv2d_get_path(void);
/* The path auto takes for a shape (the same forward and backward): a fixed rule, so results do
 * not depend on timing noise. */
conv2d_path conv2d_auto_path(const conv2d_shape *s);

/* ---- oneDNN path (conv2d_dnnl.c). Return 0 or a negative hakd_status with a message. ---- */

/* y = conv(x, w) + b, overwriting y (y = act(conv(x, w) + b + y) with post_sum and post_act). x and y
 * are float32 NCHW, or blocked bfloat16 where s says so. */
int conv2d_dnnl_forward(void *y, const void *x, const float *w, const float *b, const conv2d_shape *s);
/* dx += conv_transpose(dy, w) when dx != NULL; dw += dL/dw, db += dL/db when non-NULL (a gradient
 * computed but not wanted goes to step memory from ctx). */
int conv2d_dnnl_backward(hakd_ctx *ctx, float *dx, float *dw, float *db, const float *x, const float *w,
                         const float *dy, const conv2d_shape *s);
/* Budget of one part when a large bf16 call is cut into images or row bands (bytes of its float32
 * input + output; tests cut small calls with a tiny one); <= 0 restores the default (24 MB). */
void conv2d_dnnl_set_part_bytes(int64_t bytes);

#endif
