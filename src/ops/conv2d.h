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

/* Temporaries of one conv2d call (im2col tiles, depthwise partial sums, oneDNN reorders and
 * scratchpad) live in one grow-only block shared by all calls: the convs of a network would
 * otherwise pile activation-sized temporaries up in the step arena until the step ends. After
 * the first step the block has its high-water size and calls allocate nothing. The block is
 * valid until the next conv2d_scratch call. It is the calling thread's (thread-local, like the
 * oneDNN engine and caches), so forwards may run on several threads at once (hakd_model_predict);
 * OpenMP workers inside one call use their slices of the caller's block.
 * Returns at least `bytes`, 64-byte aligned, or NULL with an error set when out of memory. */
void *conv2d_scratch(size_t bytes);
/* Bytes a carve of `bytes` takes inside the scratch block (keeps 64-byte alignment). */
static inline size_t conv2d_scratch_round(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
/* How often the scratch block grew (each growth is one malloc). */
uint64_t conv2d_scratch_growths(void);
/* Bytes the scratch block holds now (its high-water size): the trainer's memory estimate counts
 * it beside the step arena, which does not hold it. */
size_t conv2d_scratch_bytes(void);
/* Frees the calling thread's scratch block and every cached oneDNN primitive (tools call it at
 * exit; later calls rebuild what they need). Other threads run it when they exit. */
void conv2d_release(void);
/* Marks the calling thread as holding scratch or oneDNN state, so that its exit releases it. */
void conv2d_thread_state_used(void);

/* ---- oneDNN path (conv2d_dnnl.c). Return 0 or a negative hakd_status with a message. ---- */

/* y = conv(x, w) + b, overwriting y. */
int conv2d_dnnl_forward(float *y, const float *x, const float *w, const float *b, const conv2d_shape *s);
/* dx += conv_transpose(dy, w) when dx != NULL; dw += dL/dw, db += dL/db when non-NULL (a gradient
 * computed but not wanted goes to step memory from ctx). */
int conv2d_dnnl_backward(hakd_ctx *ctx, float *dx, float *dw, float *db, const float *x, const float *w,
                         const float *dy, const conv2d_shape *s);
/* Frees every cached oneDNN primitive (conv2d_release calls it). */
void conv2d_dnnl_release(void);

#endif
