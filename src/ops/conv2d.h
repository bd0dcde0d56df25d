/* Internal interface of conv2d: the shape record shared by the two implementations (im2col +
 * OpenBLAS sgemm in conv2d.c, oneDNN in conv2d_dnnl.c) and the path selection. */
#ifndef HAKD_OPS_CONV2D_H
#define HAKD_OPS_CONV2D_H

#include <stdint.h>

#include "hakd/tensor.h"

/* Every size a conv2d kernel needs; also the key of the per-shape caches. */
typedef struct {
  int64_t n, cin, h, w;   /* input (N, Cin, H, W) */
  int64_t cout, kh, kw;   /* weight (Cout, Cin/groups, kh, kw) */
  int64_t oh, ow;         /* output (N, Cout, oh, ow) */
  int64_t stride, pad, dilation, groups;
  int64_t has_bias;
} conv2d_shape;

typedef enum {
  CONV2D_PATH_AUTO = 0, /* per shape and direction, the faster path by a one-time measurement */
  CONV2D_PATH_GEMM = 1, /* im2col + cblas_sgemm (direct kernel for depthwise, plain GEMM for 1x1) */
  CONV2D_PATH_DNNL = 2  /* oneDNN primitives */
} conv2d_path;

/* Forces a path for every later conv2d call (tests, benchmarks); CONV2D_PATH_AUTO restores the
 * default, which is the environment variable HAKD_CONV=gemm|dnnl|auto (auto when unset). */
void conv2d_set_path(conv2d_path path);
/* The path the next call uses before any per-shape decision (forced, env, or auto). */
conv2d_path conv2d_get_path(void);
/* Path chosen for a shape by the last auto decision: 0 forward, 1 backward; CONV2D_PATH_AUTO when
 * not decided yet. For benchmarks and tests. */
conv2d_path conv2d_auto_choice(const conv2d_shape *s, int backward);

/* ---- oneDNN path (conv2d_dnnl.c). Return 0 or a negative hakd_status with a message. ---- */

/* y = conv(x, w) + b, overwriting y. Scratch (reordered tensors, oneDNN scratchpad) comes from ctx. */
int conv2d_dnnl_forward(hakd_ctx *ctx, float *y, const float *x, const float *w, const float *b,
                        const conv2d_shape *s);
/* dx += conv_transpose(dy, w) when dx != NULL; dw += dL/dw, db += dL/db when non-NULL. */
int conv2d_dnnl_backward(hakd_ctx *ctx, float *dx, float *dw, float *db, const float *x, const float *w,
                         const float *dy, const conv2d_shape *s);
/* Frees every cached oneDNN primitive (tests and tools call it at exit to keep leak checkers quiet). */
void conv2d_dnnl_release(void);

#endif
