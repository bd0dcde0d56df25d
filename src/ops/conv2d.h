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
  int64_t dst_f32; /* with dst_blocked: the blocked output holds float32 (conv2d_regions' sums) */
  int64_t blocked_f32; /* src and dst blocked float32 (HAKD_F32_BLOCKED), products in float32 */
  int64_t post_act; /* hakd_activation */
  /* a band of h rows (input and output) out of images of band_of_h rows: how conv2d_dnnl cuts a
   * 1x1 stride-1 convolution to bound its scratch; 0: whole images */
  int64_t band_of_h;
} conv2d_shape;

typedef enum {
  CONV2D_PATH_AUTO = 0, /* per shape, by conv2d_auto_path */
  CONV2D_PATH_GEMM = 1, /* im2col + cblas_sgemm (direct kernel for depthwise, plain GEMM for 1x1) */
  CONV2D_PATH_DNNL = 2, /* oneDNN primitives */
  CONV2D_PATH_TAPS = 3  /* one GEMM per kernel tap over its valid outputs (conv2d_taps.c) */
} conv2d_path;

/* Forces a path for every later conv2d call (tests, benchmarks); CONV2D_PATH_AUTO restores the
 * default, which is the environment variable HAKD_CONV=gemm|dnnl|taps|auto (auto when unset).
 * A forced taps path applies where the tap path can compute (conv2d_taps_supported), else auto. */
void conv2d_set_path(conv2d_path path);
/* The path the next call uses before the per-shape rule (forced, env, or auto). */
conv2d_path conv2d_get_path(void);
/* The path auto takes for a shape (the backward's, and the forward's unless
 * conv2d_auto_forward_path says otherwise; a backward on oneDNN may hand one gradient to the tap
 * path, conv2d_backward_by_taps): a fixed rule, so results do not depend on timing noise. */
conv2d_path conv2d_auto_path(const conv2d_shape *s);
/* The path auto takes for the forward alone (bench/bench_kernels, forward GFLOP/s at 2 threads):
 * conv2d_auto_path, except for 1x1 convolutions on small maps (at most CONV2D_SMALL_MAP_POSITIONS
 * output positions over the batch: oneDNN) and dilated convolutions where oneDNN's choice of
 * kernel decides.
 * oneDNN's direct kernels skip the padded taps as the tap path does, from registers: a dilated
 * convolution the tap path would take with every tap reading the map somewhere runs on oneDNN
 * when oneDNN's forward is direct (the ASPP's rate 12 on 16x16 maps: 1.6-2.3x faster; the
 * backward stays on the tap path, 1.3-1.4x faster there). Where oneDNN would run its GEMM
 * convolution (rate 12 on 32x32 and 64x64 maps), which multiplies the padding, the tap path takes
 * every convolution with at most 60% of its products valid (rate 12 on 32x32, 56%: 1.1-1.2x). */
conv2d_path conv2d_auto_forward_path(const conv2d_shape *s);
/* Which gradients of a shape on the oneDNN path run on the tap path instead: bit 0 the input
 * gradient, bit 1 the weight and bias gradients, each where oneDNN has no direct kernel for that
 * backward primitive (its GEMM convolution then multiplies every padded tap) and some taps reach
 * into the padding (no threshold on the valid share: oneDNN's GEMM convolution computes every tap,
 * and it is chosen only for wide paddings, the ASPP's rates). A rule of the shape and the CPU, as
 * conv2d_auto_path; 0 when a path is forced. A failed oneDNN query counts as "not direct" (the
 * tap path then computes the same gradient). */
int conv2d_backward_by_taps(const conv2d_shape *s);

/* Output positions o in [*lo, *hi) read input position o * stride + off inside [0, size), of
 * `out` outputs (rows or columns of one kernel tap). */
static inline void conv2d_valid_range(int64_t off, int64_t stride, int64_t size, int64_t out, int64_t *lo,
                                      int64_t *hi) {
  int64_t first = off >= 0 ? 0 : (-off + stride - 1) / stride;
  int64_t end = size - 1 - off < 0 ? 0 : (size - 1 - off) / stride + 1;
  if (end > out) end = out;
  if (first > end) first = end;
  *lo = first;
  *hi = end;
}

/* The gemm and taps paths run single-threaded sgemm inside OpenMP work items (see conv2d.c);
 * returns OpenBLAS's thread count for conv2d_blas_restore. */
int conv2d_blas_single(void);
void conv2d_blas_restore(int n);
/* Around sgemm calls at OpenBLAS's own thread count (linear, matmul): never overlap a
 * single-threaded section (conv2d.c says why). */
void blas_shared_enter(void);
void blas_shared_leave(void);
/* 0 when OpenBLAS is held to narrower kernels than oneDNN's JIT uses (OPENBLAS_CORETYPE=Haswell
 * on an AVX-512 CPU): the auto rule then sends 1x1 convolutions to oneDNN. */
int conv2d_blas_full_width(void);
/* db += the sum of dy over images and positions. */
void conv2d_bias_backward(float *db, const float *dy, const conv2d_shape *s);

/* ---- tap path (conv2d_taps.c). Return 0 or a negative hakd_status with a message. ---- */

/* Sum over kernel taps of the output positions whose input lies inside the map: one image's
 * executed multiply-adds per (input, output) channel pair on the tap path. */
int64_t conv2d_valid_positions(const conv2d_shape *s);
/* Shapes the tap path computes: groups 1, float32 products. */
int conv2d_taps_supported(const conv2d_shape *s);
/* Whether every kernel tap reads the map for some output (no tap lies wholly in the padding). */
int conv2d_taps_all_used(const conv2d_shape *s);
/* The auto rule's choice: a supported dilated conv whose taps reach into the padding enough that
 * skipping beats computing the zeros (conv2d_taps.c: a cost model of products against weight traffic). */
int conv2d_taps_worthwhile(const conv2d_shape *s);
/* y = conv(x, w) + b, overwriting y. */
int conv2d_taps_forward(float *y, const float *x, const float *w, const float *b, const conv2d_shape *s);
/* dx += dL/dx, dw += dL/dw, db += dL/db, each when non-NULL. */
int conv2d_taps_backward(float *dx, float *dw, float *db, const float *x, const float *w, const float *dy,
                         const conv2d_shape *s);

/* ---- oneDNN path (conv2d_dnnl.c). Return 0 or a negative hakd_status with a message. ---- */

/* y = conv(x, w) + b, overwriting y (y = act(conv(x, w) + b + y) with post_sum and post_act). x and y
 * are float32 NCHW, or blocked bfloat16 where s says so. */
int conv2d_dnnl_forward(void *y, const void *x, const float *w, const float *b, const conv2d_shape *s);
/* dx += conv_transpose(dy, w) when dx != NULL; dw += dL/dw, db += dL/db when non-NULL (a gradient
 * computed but not wanted goes to step memory from ctx). Bits 0, 1, 2 of `set` (dx, dw, db):
 * that gradient is written (=), not added to (a fresh gradient, hakd_grad_fresh). With
 * src_blocked / dst_blocked, x is blocked bfloat16 and dx, dy float32 in the same blocked layout
 * (the gradient of a blocked activation). */
int conv2d_dnnl_backward(hakd_ctx *ctx, float *dx, float *dw, float *db, unsigned set, const float *x, const float *w,
                         const float *dy, const conv2d_shape *s);
/* Whether oneDNN's forward of s is a direct JIT kernel, which skips the kernel taps lying in the
 * padding (its GEMM and reference convolutions do not); 0 also when no primitive can be made. */
int conv2d_dnnl_forward_is_direct(const conv2d_shape *s);
/* The same for its backward-data (which 0) or backward-weights (which 1) primitive. */
int conv2d_dnnl_backward_is_direct(const conv2d_shape *s, int which);
/* Wide-padded dilated convolutions on blocked bfloat16 activations (conv2d_regions.c): whether s
 * is one (stride 1, one group, padding >= 9), and its forward tap by tap: each tap a blocked 1x1
 * product over the outputs where it reads the map, summed in float32 (the results of
 * conv2d_dnnl_forward with every tap in padding skipped; buffers from ctx's step scratch). */
int conv2d_regions_apply(const conv2d_shape *s);
int conv2d_regions_forward(hakd_ctx *ctx, void *y, const void *x, const float *w, const float *b,
                           const conv2d_shape *s);
/* Packed weights: the forward's weights converted once into the layout oneDNN's primitive for s
 * reads (conv2d_frozen.c keeps them for frozen models). conv2d_dnnl_packed_weights_bytes: their
 * size, with the layout (a dnnl_memory_desc_t) copied into `layout` of `layout_size` bytes; 0 when
 * the forward of s reads our plain weights or is cut into parts (then nothing is packed).
 * conv2d_dnnl_pack_weights writes them; conv2d_dnnl_forward_packed is conv2d_dnnl_forward
 * reading them. */
size_t conv2d_dnnl_packed_weights_bytes(const conv2d_shape *s, void *layout, size_t layout_size);
int conv2d_dnnl_layouts_equal(const void *a, const void *b);
int conv2d_dnnl_pack_weights(void *packed, const float *w, const conv2d_shape *s);
int conv2d_dnnl_forward_packed(void *y, const void *x, const void *packed, const float *b, const conv2d_shape *s);

/* ---- frozen weights (conv2d_frozen.c) ---- */

/* The per-channel affine of an inference convolution folded into its weights and bias:
 * folded = w * scale[co], folded_bias = b * scale + shift (b NULL: 0), per output channel. */
void conv2d_fold_affine(float *folded, float *folded_bias, const float *w, const float *b, const float *scale,
                        const float *shift, int64_t cout, int64_t per_out);
/* Output positions (batch x rows x columns) up to which a frozen forward keeps packed weights
 * (conv2d_frozen_forward) and 1x1 forwards run on oneDNN (conv2d_auto_forward_path): converting
 * the weights costs about 12 bytes of memory traffic per weight, the products 2 * positions flops
 * per weight, so at 2048 positions the conversion is still 2-4% of the call (at 256, on 16x16
 * maps, a third), and beyond it the copy is not worth its memory. */
#define CONV2D_SMALL_MAP_POSITIONS 2048
/* The oneDNN forward of a frozen convolution (w, and b when given, frozen parameters:
 * hakd_params_freeze) with its weights packed once and kept in this thread's cache: folded with
 * (scale, shift) first when scale is given, then s must have has_bias. Runs on small maps only
 * (at most CONV2D_SMALL_MAP_POSITIONS output positions over the batch), where converting the weights
 * costs a share of the products. Returns 1 when y holds the result (bit for bit what folding and
 * conv2d_dnnl_forward give), 0 when it does not apply (nothing done), or a negative status. */
int conv2d_frozen_forward(void *y, const void *x, const hakd_tensor *w, const hakd_tensor *b, const float *scale,
                          const float *shift, const conv2d_shape *s);

/* Budget of one part when a large bf16 call is cut into images or row bands (bytes of its float32
 * input + output; tests cut small calls with a tiny one); <= 0 restores the default (24 MB). */
void conv2d_dnnl_set_part_bytes(int64_t bytes);

#endif
