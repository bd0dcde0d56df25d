/* 2-D convolution, forward and backward, by three implementations:
 *   gemm: im2col + OpenBLAS cblas_sgemm, tiled over output rows so column buffers stay bounded;
 *         1x1 stride-1 convs are plain GEMMs on the input; depthwise convs (Cin == groups) use a
 *         direct kernel. OpenMP threads share out independent work items (forward: image x
 *         group x row tile; weight gradient: slices of the im2col rows; input gradient: image x
 *         group x channel slice), each calling a single-threaded sgemm;
 *   dnnl: oneDNN primitives (conv2d_dnnl.c);
 *   taps: one GEMM per kernel tap over the outputs it reaches, padding skipped (conv2d_taps.c).
 * HAKD_CONV=gemm|dnnl|taps|auto (or conv2d_set_path) picks one; auto applies per-shape rules derived
 * from bench/bench_kernels (conv2d_auto_path, conv2d_auto_forward_path, conv2d_backward_by_taps).
 * Temporaries live in the ops' scratch block (scratch.h). */
#include <cblas.h>
#include <dnnl.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/scratch.h"

/* Largest column buffer of one thread in floats (4 MB): bounded scratch, GEMMs still hundreds
 * of columns wide. */
#define CONV2D_COL_BUDGET ((int64_t)1 << 20)
/* Narrowest row tile worth its own GEMM when tiles are split up to feed every thread. */
#define CONV2D_MIN_TILE_COLS 256

static int conv2d_is_depthwise(const conv2d_shape *s) { return s->groups > 1 && s->cin == s->groups; }

static int conv2d_is_pointwise(const conv2d_shape *s) {
  return s->kh == 1 && s->kw == 1 && s->stride == 1 && s->pad == 0;
}

/* conv2d_valid_range of every kernel column kj (hoisted out of the row loops: two divisions). */
static void conv2d_tap_columns(int64_t *lo, int64_t *hi, const conv2d_shape *s) {
  for (int64_t kj = 0; kj < s->kw; kj++)
    conv2d_valid_range(kj * s->dilation - s->pad, s->stride, s->w, s->ow, &lo[kj], &hi[kj]);
}

/* Rows [r0, r1) of the column matrix of output rows [oh0, oh1): row r = (c, ki, kj) of the
 * group's (cin_g * kh * kw) rows, column (oh - oh0) * ow + ow.
 * reference: torch.nn.functional.unfold */
static void conv2d_im2col(float *col,     /* (r1 - r0, (oh1 - oh0) * ow) */
                          const float *x, /* (cin_g, h, w) */
                          const conv2d_shape *s, int64_t r0, int64_t r1, int64_t oh0, int64_t oh1) {
  int64_t kk = s->kh * s->kw, ncols = (oh1 - oh0) * s->ow;
  for (int64_t r = r0; r < r1; r++) {
    int64_t c = r / kk, ki = (r / s->kw) % s->kh, kj = r % s->kw;
    int64_t off = kj * s->dilation - s->pad, lo, hi;
    conv2d_valid_range(off, s->stride, s->w, s->ow, &lo, &hi);
    float *dst = col + (r - r0) * ncols;
    for (int64_t oh = oh0; oh < oh1; oh++, dst += s->ow) {
      int64_t ih = oh * s->stride - s->pad + ki * s->dilation;
      if (ih < 0 || ih >= s->h) {
        memset(dst, 0, (size_t)s->ow * sizeof(float));
        continue;
      }
      const float *xrow = x + (c * s->h + ih) * s->w;
      for (int64_t o = 0; o < lo; o++) dst[o] = 0.0f;
      if (s->stride == 1) {
        memcpy(dst + lo, xrow + lo + off, (size_t)(hi - lo) * sizeof(float));
      } else {
        for (int64_t o = lo; o < hi; o++) dst[o] = xrow[o * s->stride + off];
      }
      for (int64_t o = hi; o < s->ow; o++) dst[o] = 0.0f;
    }
  }
}

/* Adjoint of conv2d_im2col for whole channels [c0, c1): dx += fold(col).
 * reference: torch.nn.functional.fold */
static void conv2d_col2im(float *dx,        /* (cin_g, h, w), accumulated */
                          const float *col, /* ((c1 - c0) * kh * kw, (oh1 - oh0) * ow) */
                          const conv2d_shape *s, int64_t c0, int64_t c1, int64_t oh0, int64_t oh1) {
  int64_t ncols = (oh1 - oh0) * s->ow;
  for (int64_t c = c0; c < c1; c++) {
    for (int64_t ki = 0; ki < s->kh; ki++) {
      for (int64_t kj = 0; kj < s->kw; kj++) {
        int64_t off = kj * s->dilation - s->pad, lo, hi;
        conv2d_valid_range(off, s->stride, s->w, s->ow, &lo, &hi);
        const float *src = col + (((c - c0) * s->kh + ki) * s->kw + kj) * ncols;
        for (int64_t oh = oh0; oh < oh1; oh++, src += s->ow) {
          int64_t ih = oh * s->stride - s->pad + ki * s->dilation;
          if (ih < 0 || ih >= s->h) continue;
          float *dxrow = dx + (c * s->h + ih) * s->w;
          for (int64_t o = lo; o < hi; o++) dxrow[o * s->stride + off] += src[o];
        }
      }
    }
  }
}

/* Output rows per tile when one thread's column buffer holds `rows_per_col` rows: within the
 * budget, and (when parts > 1) small enough to cut each image into `parts` tiles, but not below
 * CONV2D_MIN_TILE_COLS columns. */
static int64_t conv2d_tile_rows(const conv2d_shape *s, int64_t rows_per_col, int64_t parts) {
  int64_t rows = CONV2D_COL_BUDGET / (rows_per_col * s->ow);
  if (parts > 1) {
    int64_t split = (s->oh + parts - 1) / parts, min_rows = (CONV2D_MIN_TILE_COLS + s->ow - 1) / s->ow;
    if (split < min_rows) split = min_rows;
    if (split < rows) rows = split;
  }
  if (rows < 1) rows = 1;
  if (rows > s->oh) rows = s->oh;
  return rows;
}

/* [*lo, *hi): part p of `parts` near-equal parts of [0, total). */
static void conv2d_split(int64_t total, int64_t parts, int64_t p, int64_t *lo, int64_t *hi) {
  *lo = total * p / parts;
  *hi = total * (p + 1) / parts;
}

/* Parts to cut `units` into so that `items` x parts work items keep `threads` threads busy. */
static int64_t conv2d_parts(int64_t units, int64_t items, int threads) {
  int64_t parts = (threads + items - 1) / items;
  return parts < units ? parts : units;
}

/* The gemm path's sgemm calls run single-threaded inside OpenMP work items: OpenBLAS's own
 * pthreads would spin between calls and fight OpenMP's threads for the cores (measured 4-15x
 * slower at 2 threads). OpenBLAS's thread count is one global, and with some kernels (Haswell's)
 * an sgemm's result depends on it (how M and N are cut decides which edge kernel sums a block).
 * So that concurrent predicts on one model give the serial result bit for bit, the count changes
 * only at a gate: single-threaded sections (these convolutions) may overlap each other, shared
 * ones (sgemm at OpenBLAS's own count: linear, matmul) may overlap each other, never the two;
 * the first single section sets 1 and the last restores. Returns a token for
 * conv2d_blas_restore. */
static pthread_mutex_t blas_gate = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t blas_gate_open = PTHREAD_COND_INITIALIZER;
static int blas_single_users, blas_shared_users, blas_saved_threads;

int conv2d_blas_single(void) {
  pthread_mutex_lock(&blas_gate);
  while (blas_shared_users) pthread_cond_wait(&blas_gate_open, &blas_gate);
  if (blas_single_users++ == 0) {
    blas_saved_threads = openblas_get_num_threads();
    if (blas_saved_threads != 1) openblas_set_num_threads(1);
  }
  pthread_mutex_unlock(&blas_gate);
  return 1;
}

void conv2d_blas_restore(int token) {
  (void)token;
  pthread_mutex_lock(&blas_gate);
  if (--blas_single_users == 0) {
    if (blas_saved_threads != 1) openblas_set_num_threads(blas_saved_threads);
    pthread_cond_broadcast(&blas_gate_open);
  }
  pthread_mutex_unlock(&blas_gate);
}

void blas_shared_enter(void) {
  pthread_mutex_lock(&blas_gate);
  while (blas_single_users) pthread_cond_wait(&blas_gate_open, &blas_gate);
  blas_shared_users++;
  pthread_mutex_unlock(&blas_gate);
}

void blas_shared_leave(void) {
  pthread_mutex_lock(&blas_gate);
  if (--blas_shared_users == 0) pthread_cond_broadcast(&blas_gate_open);
  pthread_mutex_unlock(&blas_gate);
}

/* Whether OpenBLAS runs its AVX-512 kernels where oneDNN's JIT has AVX-512: not so when the
 * environment holds OpenBLAS to older kernels (OPENBLAS_CORETYPE=Haswell on this AMD Zen 4 VM:
 * sgemm 2048^3 at 188 GFLOP/s against 345 unset, bench/bench_peak), and then the 1x1
 * convolutions go to oneDNN (a rule read from the environment once, so it is the same for every
 * call of a process). */
int conv2d_blas_full_width(void) {
  static int known, full;
  if (!known) {
    const char *core = openblas_get_corename();
    int blas512 = core && (strcasestr(core, "skylakex") || strcasestr(core, "cooperlake") ||
                           strcasestr(core, "sapphirerapids"));
    dnnl_cpu_isa_t isa = dnnl_get_effective_cpu_isa();
    int dnnl512 = (isa & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core;
    full = blas512 || !dnnl512;
    known = 1;
  }
  return full;
}

/* y[o] += a * x[o * stride] for o in [0, n): the inner loop of the depthwise kernels. */
static inline void conv2d_row_axpy(float *restrict y, const float *restrict x, float a, int64_t n, int64_t stride) {
  if (stride == 1) {
    for (int64_t o = 0; o < n; o++) y[o] += a * x[o];
  } else {
    for (int64_t o = 0; o < n; o++) y[o] += a * x[o * stride];
  }
}

/* y[o * stride] += a * x[o] (adjoint of conv2d_row_axpy). */
static inline void conv2d_row_axpy_scatter(float *restrict y, const float *restrict x, float a, int64_t n,
                                           int64_t stride) {
  if (stride == 1) {
    for (int64_t o = 0; o < n; o++) y[o] += a * x[o];
  } else {
    for (int64_t o = 0; o < n; o++) y[o * stride] += a * x[o];
  }
}

/* acc[o] += dy[o] * x[o * stride]: lane-wise partial sums, so the loop vectorises without
 * reassociating a single running sum. */
static inline void conv2d_row_fma(float *restrict acc, const float *restrict dy, const float *restrict x, int64_t n,
                                  int64_t stride) {
  if (stride == 1) {
    for (int64_t o = 0; o < n; o++) acc[o] += dy[o] * x[o];
  } else {
    for (int64_t o = 0; o < n; o++) acc[o] += dy[o] * x[o * stride];
  }
}

/* What the float32 forward of hakd_conv2d_affine_act does to each output after the bias, applied
 * by the kernels to the rows they have just written (still in cache) instead of by one more pass
 * over the output: v = v * scale[c] + shift[c] (scale NULL: skipped), v += residual (NULL: none),
 * then clamped to [lo, hi]. The same expressions in the same order as the pass they replace, so
 * the results are the same to the bit. */
typedef struct {
  const float *scale, *shift; /* (Cout) or NULL */
  const float *residual;      /* (N, Cout, oh, ow) or NULL */
  float lo, hi;
} conv2d_epilogue;

/* One loop over a span: v = y (+ bias), v * a + c, + residual, clamped; the flags are constants
 * in each of conv2d_epilogue_bias_span's calls, so every case is a branch-free loop. */
static inline __attribute__((always_inline)) void conv2d_epilogue_loop(float *restrict yp, const float *restrict rp,
                                                                       int64_t len, int with_bias, float bias,
                                                                       int with_affine, float a, float c, float lo,
                                                                       float hi) {
#pragma omp simd
  for (int64_t i = 0; i < len; i++) { /* compares, not fminf/fmaxf: those stay library calls */
    float v = yp[i];
    if (with_bias) v = v + bias;
    if (with_affine) v = v * a + c;
    if (rp) v = v + rp[i];
    v = v < lo ? lo : v;
    yp[i] = v > hi ? hi : v;
  }
}

/* y[at, at + len) of channel co (at: element offset into the whole output) += bias (with_bias),
 * then the epilogue (e may be NULL: the bias alone), in one pass. */
static void conv2d_epilogue_bias_span(const conv2d_epilogue *e, float *y, int64_t at, int64_t co, int64_t len,
                                      int with_bias, float bias) {
  float *yp = y + at;
  if (!e) {
    if (with_bias)
      for (int64_t i = 0; i < len; i++) yp[i] += bias;
    return;
  }
  float a = e->scale ? e->scale[co] : 1.0f, c = e->scale ? e->shift[co] : 0.0f;
  const float *rp = e->residual ? e->residual + at : NULL;
#define EPI(B, A, R) conv2d_epilogue_loop(yp, R, len, B, bias, A, a, c, e->lo, e->hi)
  if (with_bias) {
    if (e->scale) rp ? EPI(1, 1, rp) : EPI(1, 1, NULL);
    else rp ? EPI(1, 0, rp) : EPI(1, 0, NULL);
  } else {
    if (e->scale) rp ? EPI(0, 1, rp) : EPI(0, 1, NULL);
    else rp ? EPI(0, 0, rp) : EPI(0, 0, NULL);
  }
#undef EPI
}

/* The epilogue over y[at, at + len) of channel co. */
static inline void conv2d_epilogue_span(const conv2d_epilogue *e, float *y, int64_t at, int64_t co, int64_t len) {
  if (e) conv2d_epilogue_bias_span(e, y, at, co, len, 0, 0.0f);
}

/* The epilogue over the whole output (paths whose kernels do not take it: oneDNN, taps). */
static void conv2d_epilogue_planes(const conv2d_epilogue *e, float *y, const conv2d_shape *s) {
  if (!e) return;
  int64_t ohw = s->oh * s->ow, planes = s->n * s->cout;
#pragma omp parallel for schedule(static) if (planes * ohw > 65536)
  for (int64_t p = 0; p < planes; p++) conv2d_epilogue_span(e, y, p * ohw, p % s->cout, ohw);
}

/* Columns [c0, c1) of one output row of a depthwise kernel `kw` == 3 wide whose column taps all
 * read the map there, from the `nrows` (1-3) input rows xr[] whose row taps do (weights wr[r][kj]):
 * the sum kept in a register over every tap, in the (ki, kj) order conv2d_row_axpy accumulates
 * them (same products, same order, so the same result), and written once. */
static inline __attribute__((always_inline)) void conv2d_dw3_span(float *restrict y, const float *restrict x0,
                                                                  const float *restrict x1, const float *restrict x2,
                                                                  const float *w0, const float *w1, const float *w2,
                                                                  int nrows, float bias, int64_t c0, int64_t c1,
                                                                  int64_t stride, int64_t off, int64_t dil) {
  float a0 = w0[0], a1 = w0[1], a2 = w0[2], b0 = 0, b1 = 0, b2 = 0, d0 = 0, d1 = 0, d2 = 0;
  if (nrows > 1) b0 = w1[0], b1 = w1[1], b2 = w1[2];
  if (nrows > 2) d0 = w2[0], d1 = w2[1], d2 = w2[2];
  for (int64_t o = c0; o < c1; o++) {
    int64_t i = o * stride + off;
    float v = bias;
    v += a0 * x0[i];
    v += a1 * x0[i + dil];
    v += a2 * x0[i + 2 * dil];
    if (nrows > 1) {
      v += b0 * x1[i];
      v += b1 * x1[i + dil];
      v += b2 * x1[i + 2 * dil];
    }
    if (nrows > 2) {
      v += d0 * x2[i];
      v += d1 * x2[i + dil];
      v += d2 * x2[i + 2 * dil];
    }
    y[o] = v;
  }
}

/* conv2d_dw3_span instantiated for constant row counts and strides 1 and 2 (so each loop
 * vectorises with its loads known contiguous or 2-strided). */
static void conv2d_dw3_row(float *y, const float *const *xr, const float *const *wr, int nrows, float bias, int64_t c0,
                           int64_t c1, int64_t stride, int64_t off, int64_t dil) {
#define DW3(N, S) conv2d_dw3_span(y, xr[0], xr[N > 1 ? 1 : 0], xr[N > 2 ? 2 : 0], wr[0], wr[N > 1 ? 1 : 0], \
                                  wr[N > 2 ? 2 : 0], N, bias, c0, c1, S, off, dil)
  if (stride == 1) {
    if (nrows == 3) DW3(3, 1);
    else if (nrows == 2) DW3(2, 1);
    else DW3(1, 1);
  } else if (stride == 2) {
    if (nrows == 3) DW3(3, 2);
    else if (nrows == 2) DW3(2, 2);
    else DW3(1, 2);
  } else {
    conv2d_dw3_span(y, xr[0], xr[nrows > 1 ? 1 : 0], xr[nrows > 2 ? 2 : 0], wr[0], wr[nrows > 1 ? 1 : 0],
                    wr[nrows > 2 ? 2 : 0], nrows, bias, c0, c1, stride, off, dil);
  }
#undef DW3
}

/* Columns a 3-wide depthwise kernel reads per input row, left padding included: the width of the
 * column-padded plane copy conv2d_depthwise_forward sums from. */
static int64_t conv2d_dw3_padded_width(const conv2d_shape *s) { return (s->ow - 1) * s->stride + 2 * s->dilation + 1; }

static int conv2d_dw3_applies(const conv2d_shape *s) { return s->kw == 3 && s->kh <= 3; }

/* Depthwise forward: output channel co reads input channel co / (Cout / groups).
 * 3-wide kernels (MobileNetV2's, SegFormer's) read a copy of the input plane with the column
 * padding written out as zeros, so each output row is one pass that keeps every sum in a register
 * over the taps of its valid rows (conv2d_dw3_row) and writes it once: the tap-by-tap row updates
 * below, on the short rows of 32x32 maps, spent most of their time in loop overhead (12-14
 * GFLOP/s on deeplabv3-mbv2 at 256x256). The padded columns add products with zero, which leave
 * every sum unchanged (finite weights). Other kernels go tap by tap
 * over the valid columns. The epilogue (may be NULL) follows each row.
 * reference: torch.nn.functional.conv2d with groups == Cin */
static int conv2d_depthwise_forward(float *y,       /* (N, Cout, oh, ow) */
                                    const float *x, /* (N, Cin, h, w) */
                                    const float *w, /* (Cout, 1, kh, kw) */
                                    const float *b, /* (Cout) or NULL */
                                    const conv2d_shape *s, const conv2d_epilogue *ep) {
  int64_t mult = s->cout / s->groups, planes = s->n * s->cout, dil = s->dilation;
  int dw3 = conv2d_dw3_applies(s);
  /* 3x3 stride 1: the plane copy has its padding rows too, and the outputs are one flat loop over
   * oh rows of the copy's width (the 2 * dilation extra columns of each row dropped afterwards):
   * no per-row setup, which on 16-32 column rows cost more than the sums. */
  int flat = dw3 && s->kh == 3 && s->stride == 1;
  int64_t wp = dw3 ? conv2d_dw3_padded_width(s) : 0, hp = flat ? s->oh + 2 * dil : s->h;
  int64_t top = flat ? s->pad : 0; /* input row r is row r + top of the copy */
  int64_t copy_cols = s->w < wp - s->pad ? s->w : wp - s->pad;
  size_t plane_bytes = ops_scratch_round((size_t)(hp * wp + 2 * dil) * sizeof(float));
  size_t flat_bytes = flat ? ops_scratch_round((size_t)(s->oh * wp) * sizeof(float)) : 0;
  int threads = omp_get_max_threads();
  unsigned char *bufs = dw3 ? ops_scratch((size_t)threads * (plane_bytes + flat_bytes)) : NULL;
  if (dw3 && !bufs) return HAKD_ENOMEM;
#pragma omp parallel num_threads(threads)
  {
    float *xp = NULL, *z = NULL;
    if (dw3) { /* the padding of the copy is the same for every plane: zeroed once */
      xp = (float *)(bufs + (size_t)omp_get_thread_num() * (plane_bytes + flat_bytes));
      z = (float *)((unsigned char *)xp + plane_bytes);
      memset(xp, 0, plane_bytes);
    }
    const float *copied = NULL; /* the input plane xp holds */
#pragma omp for schedule(static)
  for (int64_t p = 0; p < planes; p++) {
    int64_t n = p / s->cout, co = p % s->cout;
    const float *xc = x + (n * s->cin + co / mult) * s->h * s->w;
    const float *wc = w + co * s->kh * s->kw;
    float *yc = y + p * s->oh * s->ow;
    float bias = b ? b[co] : 0.0f;
    if (dw3 && xc != copied && copy_cols > 0) { /* a channel multiplier > 1 reads a plane for several outputs */
      copied = xc;
      for (int64_t r = 0; r < s->h; r++)
        if (r + top < hp) memcpy(xp + (r + top) * wp + s->pad, xc + r * s->w, (size_t)copy_cols * sizeof(float));
    }
    if (flat) {
      const float *w0 = wc, *w1 = wc + 3, *w2 = wc + 6;
      const float *x0 = xp, *x1 = xp + dil * wp, *x2 = xp + 2 * dil * wp;
      conv2d_dw3_span(z, x0, x1, x2, w0, w1, w2, 3, bias, 0, s->oh * wp, 1, 0, dil);
      for (int64_t oh = 0; oh < s->oh; oh++) {
        memcpy(yc + oh * s->ow, z + oh * wp, (size_t)s->ow * sizeof(float));
        conv2d_epilogue_span(ep, y, p * s->oh * s->ow + oh * s->ow, co, s->ow);
      }
      continue;
    }
    if (dw3) {
      for (int64_t oh = 0; oh < s->oh; oh++) {
        float *yrow = yc + oh * s->ow;
        const float *xr[3];
        const float *wr[3];
        int nrows = 0;
        for (int64_t ki = 0; ki < s->kh; ki++) {
          int64_t ih = oh * s->stride - s->pad + ki * dil;
          if (ih < 0 || ih >= s->h) continue;
          xr[nrows] = xp + ih * wp;
          wr[nrows++] = wc + ki * s->kw;
        }
        if (nrows > 0) {
          conv2d_dw3_row(yrow, xr, wr, nrows, bias, 0, s->ow, s->stride, 0, dil);
        } else {
          for (int64_t o = 0; o < s->ow; o++) yrow[o] = bias;
        }
        conv2d_epilogue_span(ep, y, p * s->oh * s->ow + oh * s->ow, co, s->ow);
      }
      continue;
    }
    int64_t lo[s->kw], hi[s->kw];
    conv2d_tap_columns(lo, hi, s);
    for (int64_t oh = 0; oh < s->oh; oh++) {
      float *yrow = yc + oh * s->ow;
      for (int64_t o = 0; o < s->ow; o++) yrow[o] = bias;
      for (int64_t ki = 0; ki < s->kh; ki++) {
        int64_t ih = oh * s->stride - s->pad + ki * s->dilation;
        if (ih < 0 || ih >= s->h) continue;
        const float *xrow = xc + ih * s->w;
        for (int64_t kj = 0; kj < s->kw; kj++) {
          int64_t off = kj * s->dilation - s->pad;
          if (hi[kj] > lo[kj])
            conv2d_row_axpy(yrow + lo[kj], xrow + lo[kj] * s->stride + off, wc[ki * s->kw + kj], hi[kj] - lo[kj],
                            s->stride);
        }
      }
      conv2d_epilogue_span(ep, y, p * s->oh * s->ow + oh * s->ow, co, s->ow);
    }
  }
  }
  return 0;
}

/* Whether the flat stride-1 3x3 depthwise backward applies (its dy copy needs pad <= 2 * dilation). */
static int conv2d_dw3_flat_backward_applies(const conv2d_shape *s) {
  return s->kh == 3 && s->kw == 3 && s->stride == 1 && s->pad <= 2 * s->dilation;
}

/* sum a[i] b[i] over n values: 16 float lanes per chunk of 2048, the chunks summed in double (as
 * the row lanes of conv2d_depthwise_backward keep float sums short). */
static double conv2d_dot(const float *restrict a, const float *restrict b, int64_t n) {
  double total = 0.0;
  for (int64_t c0 = 0; c0 < n; c0 += 2048) {
    int64_t len = n - c0 < 2048 ? n - c0 : 2048, i = 0;
    float lanes[16] = {0};
    for (; i + 16 <= len; i += 16)
      for (int k = 0; k < 16; k++) lanes[k] += a[c0 + i + k] * b[c0 + i + k];
    double sum = 0.0;
    for (int k = 0; k < 16; k++) sum += lanes[k];
    for (; i < len; i++) sum += (double)a[c0 + i] * b[c0 + i];
    total += sum;
  }
  return total;
}

/* Stride-1 3x3 depthwise backward from padded plane copies, as the forward computes
 * (conv2d_depthwise_forward): dx is the forward's flat loop over dy's plane padded by
 * 2 * dilation - pad with the kernel flipped (the transposed convolution), accumulated into dx;
 * dw the nine sums of dy times the padded x plane shifted by each tap, over a copy of dy whose rows
 * are as wide as x's copy (zero columns between them, so no sum wraps into the next row). The
 * tap-by-tap row updates of the general kernel below cost more than their sums on 16-64 column
 * rows (deeplabv3-mbv2 training at 64-256 pixels). */
static int conv2d_dw3_backward_flat(float *dx, float *dw, const float *x, const float *w, const float *dy,
                                    const conv2d_shape *s) {
  int64_t d = s->dilation, mult = s->cout / s->groups, hw = s->h * s->w, ohw = s->oh * s->ow;
  int64_t wp = s->ow + 2 * d, hp = s->oh + 2 * d;           /* x's copy (dw): as the forward's */
  int64_t wq = s->w + 2 * d, hq = s->h + 2 * d, t = 2 * d - s->pad; /* dy's copy (dx) */
  size_t xp_bytes = ops_scratch_round((size_t)(hp * wp + 2 * d) * sizeof(float));
  size_t dyf_bytes = ops_scratch_round((size_t)(s->oh * wp) * sizeof(float));
  size_t dyq_bytes = ops_scratch_round((size_t)(hq * wq + 2 * d) * sizeof(float));
  size_t z_bytes = ops_scratch_round((size_t)(s->h * wq) * sizeof(float));
  size_t per_thread = xp_bytes + dyf_bytes + dyq_bytes + z_bytes;
  int threads = omp_get_max_threads();
  unsigned char *bufs = ops_scratch((size_t)threads * per_thread);
  if (!bufs) return HAKD_ENOMEM;
#pragma omp parallel num_threads(threads)
  {
    unsigned char *mine = bufs + (size_t)omp_get_thread_num() * per_thread;
    float *xp = (float *)mine, *dyf = (float *)(mine + xp_bytes), *dyq = (float *)(mine + xp_bytes + dyf_bytes);
    float *z = (float *)(mine + xp_bytes + dyf_bytes + dyq_bytes);
    memset(mine, 0, per_thread); /* the padding of every copy stays zero; interiors are rewritten */
    if (dx) {
#pragma omp for schedule(static)
      for (int64_t p = 0; p < s->n * s->cin; p++) { /* input planes: disjoint parts of dx */
        int64_t n = p / s->cin, ci = p % s->cin;
        for (int64_t co = ci * mult; co < (ci + 1) * mult; co++) {
          const float *dyc = dy + (n * s->cout + co) * ohw, *wc = w + co * 9;
          for (int64_t r = 0; r < s->oh; r++) memcpy(dyq + (r + t) * wq + t, dyc + r * s->ow, (size_t)s->ow * sizeof(float));
          const float wf[9] = {wc[8], wc[7], wc[6], wc[5], wc[4], wc[3], wc[2], wc[1], wc[0]}; /* flipped */
          conv2d_dw3_span(z, dyq, dyq + d * wq, dyq + 2 * d * wq, wf, wf + 3, wf + 6, 3, 0.0f, 0, s->h * wq, 1, 0, d);
          float *dxc = dx + p * hw;
          for (int64_t r = 0; r < s->h; r++) {
            float *dst = dxc + r * s->w;
            const float *src = z + r * wq;
            for (int64_t c = 0; c < s->w; c++) dst[c] += src[c];
          }
        }
      }
    }
    if (dw) {
#pragma omp for schedule(static)
      for (int64_t co = 0; co < s->cout; co++) { /* output channels: disjoint parts of dw */
        double acc[9] = {0};
        for (int64_t n = 0; n < s->n; n++) {
          const float *xc = x + (n * s->cin + co / mult) * hw, *dyc = dy + (n * s->cout + co) * ohw;
          for (int64_t r = 0; r < s->h; r++) /* x row r at row r + pad of the copy (rows past hp unread) */
            if (r + s->pad < hp) {
              int64_t cols = s->w < wp - s->pad ? s->w : wp - s->pad;
              if (cols > 0) memcpy(xp + (r + s->pad) * wp + s->pad, xc + r * s->w, (size_t)cols * sizeof(float));
            }
          for (int64_t r = 0; r < s->oh; r++) memcpy(dyf + r * wp, dyc + r * s->ow, (size_t)s->ow * sizeof(float));
          for (int64_t ki = 0; ki < 3; ki++)
            for (int64_t kj = 0; kj < 3; kj++)
              acc[ki * 3 + kj] += conv2d_dot(dyf, xp + ki * d * wp + kj * d, s->oh * wp);
        }
        for (int k = 0; k < 9; k++) dw[co * 9 + k] += (float)acc[k];
      }
    }
  }
  return 0;
}

static int conv2d_depthwise_backward(float *dx,       /* (N, Cin, h, w) or NULL, accumulated */
                                     float *dw,       /* (Cout, 1, kh, kw) or NULL, accumulated */
                                     const float *x,  /* (N, Cin, h, w) */
                                     const float *w,  /* (Cout, 1, kh, kw) */
                                     const float *dy, /* (N, Cout, oh, ow) */
                                     const conv2d_shape *s) {
  if (conv2d_dw3_flat_backward_applies(s)) return conv2d_dw3_backward_flat(dx, dw, x, w, dy, s);
  int64_t mult = s->cout / s->groups, kk = s->kh * s->kw, hw = s->h * s->w, ohw = s->oh * s->ow;
  if (dx) {
    /* One input plane per iteration: its `mult` output channels all scatter into it. */
#pragma omp parallel for schedule(static)
    for (int64_t p = 0; p < s->n * s->cin; p++) {
      int64_t n = p / s->cin, ci = p % s->cin;
      float *dxc = dx + p * hw;
      int64_t lo[s->kw], hi[s->kw];
      conv2d_tap_columns(lo, hi, s);
      for (int64_t co = ci * mult; co < (ci + 1) * mult; co++) {
        const float *dyc = dy + (n * s->cout + co) * ohw;
        const float *wc = w + co * kk;
        for (int64_t oh = 0; oh < s->oh; oh++) {
          const float *dyrow = dyc + oh * s->ow;
          for (int64_t ki = 0; ki < s->kh; ki++) {
            int64_t ih = oh * s->stride - s->pad + ki * s->dilation;
            if (ih < 0 || ih >= s->h) continue;
            float *dxrow = dxc + ih * s->w;
            for (int64_t kj = 0; kj < s->kw; kj++) {
              int64_t off = kj * s->dilation - s->pad;
              if (hi[kj] > lo[kj])
                conv2d_row_axpy_scatter(dxrow + lo[kj] * s->stride + off, dyrow + lo[kj], wc[ki * s->kw + kj],
                                        hi[kj] - lo[kj], s->stride);
            }
          }
        }
      }
    }
  }
  if (!dw) return 0;
  /* One output channel per iteration (its taps are private). Each tap keeps a row of lane sums
   * (kh * kw * ow floats per thread, step memory) over the rows of one image; images are summed
   * in double, so large maps keep fp32 accuracy. */
  int threads = omp_get_max_threads();
  size_t acc_bytes = ops_scratch_round((size_t)(threads * kk) * sizeof(double));
  double *acc_all = ops_scratch(acc_bytes + (size_t)(threads * kk * s->ow) * sizeof(float));
  if (!acc_all) return HAKD_ENOMEM;
  float *lanes_all = (float *)((unsigned char *)acc_all + acc_bytes);
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t co = 0; co < s->cout; co++) {
    float *lanes = lanes_all + (int64_t)omp_get_thread_num() * kk * s->ow;
    double *acc = acc_all + (int64_t)omp_get_thread_num() * kk;
    int64_t lo[s->kw], hi[s->kw];
    conv2d_tap_columns(lo, hi, s);
    for (int64_t t = 0; t < kk; t++) acc[t] = 0.0;
    for (int64_t n = 0; n < s->n; n++) {
      const float *xc = x + (n * s->cin + co / mult) * hw;
      const float *dyc = dy + (n * s->cout + co) * ohw;
      memset(lanes, 0, (size_t)(kk * s->ow) * sizeof(float));
      for (int64_t oh = 0; oh < s->oh; oh++) {
        const float *dyrow = dyc + oh * s->ow;
        for (int64_t ki = 0; ki < s->kh; ki++) {
          int64_t ih = oh * s->stride - s->pad + ki * s->dilation;
          if (ih < 0 || ih >= s->h) continue;
          const float *xrow = xc + ih * s->w;
          for (int64_t kj = 0; kj < s->kw; kj++) {
            int64_t off = kj * s->dilation - s->pad;
            if (hi[kj] > lo[kj])
              conv2d_row_fma(lanes + (ki * s->kw + kj) * s->ow + lo[kj], dyrow + lo[kj],
                             xrow + lo[kj] * s->stride + off, hi[kj] - lo[kj], s->stride);
          }
        }
      }
      for (int64_t t = 0; t < kk; t++) {
        double sum = 0.0;
        for (int64_t o = 0; o < s->ow; o++) sum += lanes[t * s->ow + o];
        acc[t] += sum;
      }
    }
    for (int64_t t = 0; t < kk; t++) dw[co * kk + t] += (float)acc[t];
  }
  return 0;
}

/* db += sum of dy over images and pixels. */
void conv2d_bias_backward(float *db,       /* (Cout), accumulated */
                          const float *dy, /* (N, Cout, oh, ow) */
                          const conv2d_shape *s) {
  int64_t ohw = s->oh * s->ow;
#pragma omp parallel for schedule(static) if (s->n * s->cout * ohw > 32768)
  for (int64_t co = 0; co < s->cout; co++) {
    double acc = 0.0;
    for (int64_t n = 0; n < s->n; n++) {
      const float *dyc = dy + (n * s->cout + co) * ohw;
      float sum = 0.0f;
      for (int64_t i = 0; i < ohw; i++) sum += dyc[i];
      acc += sum;
    }
    db[co] += (float)acc;
  }
}

/* y = conv(x, w) + b by im2col + sgemm (direct kernel for depthwise). Returns 0 or a status. */
static int conv2d_gemm_forward(float *y,       /* (N, Cout, oh, ow) */
                               const float *x, /* (N, Cin, h, w) */
                               const float *w, /* (Cout, Cin / groups, kh, kw) */
                               const float *b, /* (Cout) or NULL */
                               const conv2d_shape *s, const conv2d_epilogue *ep) {
  if (conv2d_is_depthwise(s)) return conv2d_depthwise_forward(y, x, w, b, s, ep);
  int threads = omp_get_max_threads();
  int64_t cin_g = s->cin / s->groups, cout_g = s->cout / s->groups, k = cin_g * s->kh * s->kw;
  int64_t hw = s->h * s->w, ohw = s->oh * s->ow, planes = s->n * s->groups;
  int pointwise = conv2d_is_pointwise(s);
  /* Work items: image x group x row tile; every thread has its own column buffer. */
  int64_t tile_rows = conv2d_tile_rows(s, k, conv2d_parts(s->oh, planes, 2 * threads));
  int64_t tiles = (s->oh + tile_rows - 1) / tile_rows;
  /* Small maps (1x1 convs of layer3/4 at 64-128 pixel inputs, one image: one tile) would leave
   * threads idle: their output channels are split among them instead. */
  int64_t slices = planes * tiles >= threads ? 1 : (threads + planes * tiles - 1) / (planes * tiles);
  if (slices > cout_g) slices = cout_g;
  int64_t items = planes * tiles * slices;
  size_t col_bytes = pointwise ? 0 : ops_scratch_round((size_t)(k * tile_rows * s->ow) * sizeof(float));
  unsigned char *cols = pointwise ? NULL : ops_scratch((size_t)threads * col_bytes);
  if (!pointwise && !cols) return HAKD_ENOMEM;
  int blas_threads = conv2d_blas_single();
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t item = 0; item < items; item++) {
    int64_t tile = item / slices, co0, co1;
    conv2d_split(cout_g, slices, item % slices, &co0, &co1);
    int64_t n = tile / (s->groups * tiles), g = tile / tiles % s->groups, oh0 = tile % tiles * tile_rows;
    int64_t oh1 = oh0 + tile_rows < s->oh ? oh0 + tile_rows : s->oh, ncols = (oh1 - oh0) * s->ow;
    const float *xg = x + (n * s->cin + g * cin_g) * hw;
    const float *wg = w + (g * cout_g + co0) * k;
    float *yt = y + (n * s->cout + g * cout_g + co0) * ohw + oh0 * s->ow;
    if (pointwise) { /* oh, ow == h, w: the input rows are the columns */
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(co1 - co0), (int)ncols, (int)cin_g, 1.0f, wg,
                  (int)k, xg + oh0 * s->ow, (int)hw, 0.0f, yt, (int)ohw);
    } else {
      float *col = (float *)(cols + (size_t)omp_get_thread_num() * col_bytes);
      conv2d_im2col(col, xg, s, 0, k, oh0, oh1);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(co1 - co0), (int)ncols, (int)k, 1.0f, wg, (int)k,
                  col, (int)ncols, 0.0f, yt, (int)ohw);
    }
    /* the bias and the epilogue in one pass over the rows just written */
    for (int64_t co = co0; co < co1 && (b || ep); co++)
      conv2d_epilogue_bias_span(ep, y, (n * s->cout + g * cout_g + co) * ohw + oh0 * s->ow, g * cout_g + co, ncols,
                                b != NULL, b ? b[g * cout_g + co] : 0.0f);
  }
  conv2d_blas_restore(blas_threads);
  return 0;
}

/* dw += dL/dw: work items are group x slice of the im2col rows, so items own disjoint columns of
 * dw; each runs over all images and row tiles. */
static void conv2d_gemm_weight_grad(float *dw,       /* (Cout, Cin / groups, kh, kw), accumulated */
                                    const float *x,  /* (N, Cin, h, w) */
                                    const float *dy, /* (N, Cout, oh, ow) */
                                    const conv2d_shape *s, unsigned char *cols, size_t col_bytes,
                                    int64_t tile_rows, int64_t slices, int threads) {
  int64_t cin_g = s->cin / s->groups, cout_g = s->cout / s->groups, k = cin_g * s->kh * s->kw;
  int64_t hw = s->h * s->w, ohw = s->oh * s->ow;
  int pointwise = conv2d_is_pointwise(s);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t item = 0; item < s->groups * slices; item++) {
    int64_t g = item / slices, r0, r1;
    conv2d_split(k, slices, item % slices, &r0, &r1);
    if (r1 <= r0) continue;
    float *col = (float *)(cols + (size_t)omp_get_thread_num() * col_bytes), *dwg = dw + g * cout_g * k + r0;
    for (int64_t n = 0; n < s->n; n++) {
      const float *xg = x + (n * s->cin + g * cin_g) * hw, *dyg = dy + (n * s->cout + g * cout_g) * ohw;
      if (pointwise) { /* im2col rows are input channels */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout_g, (int)(r1 - r0), (int)ohw, 1.0f, dyg,
                    (int)ohw, xg + r0 * hw, (int)hw, 1.0f, dwg, (int)k);
        continue;
      }
      for (int64_t oh0 = 0; oh0 < s->oh; oh0 += tile_rows) {
        int64_t oh1 = oh0 + tile_rows < s->oh ? oh0 + tile_rows : s->oh, ncols = (oh1 - oh0) * s->ow;
        conv2d_im2col(col, xg, s, r0, r1, oh0, oh1);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)cout_g, (int)(r1 - r0), (int)ncols, 1.0f,
                    dyg + oh0 * s->ow, (int)ohw, col, (int)ncols, 1.0f, dwg, (int)k);
      }
    }
  }
}

/* dx += dL/dx: work items are image x group x slice of input channels, so items own disjoint
 * planes of dx; each runs over all row tiles (dcol = w^T dy, then col2im). */
static void conv2d_gemm_input_grad(float *dx,       /* (N, Cin, h, w), accumulated */
                                   const float *w,  /* (Cout, Cin / groups, kh, kw) */
                                   const float *dy, /* (N, Cout, oh, ow) */
                                   const conv2d_shape *s, unsigned char *cols, size_t col_bytes,
                                   int64_t tile_rows, int64_t slices, int threads) {
  int64_t cin_g = s->cin / s->groups, cout_g = s->cout / s->groups, kk = s->kh * s->kw, k = cin_g * kk;
  int64_t hw = s->h * s->w, ohw = s->oh * s->ow, per_image = s->groups * slices;
  int pointwise = conv2d_is_pointwise(s);
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t item = 0; item < s->n * per_image; item++) {
    int64_t n = item / per_image, g = item / slices % s->groups, c0, c1;
    conv2d_split(cin_g, slices, item % slices, &c0, &c1);
    if (c1 <= c0) continue;
    const float *wg = w + g * cout_g * k, *dyg = dy + (n * s->cout + g * cout_g) * ohw;
    float *dxg = dx + (n * s->cin + g * cin_g) * hw;
    if (pointwise) {
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(c1 - c0), (int)hw, (int)cout_g, 1.0f, wg + c0,
                  (int)k, dyg, (int)ohw, 1.0f, dxg + c0 * hw, (int)hw);
      continue;
    }
    float *col = (float *)(cols + (size_t)omp_get_thread_num() * col_bytes);
    for (int64_t oh0 = 0; oh0 < s->oh; oh0 += tile_rows) {
      int64_t oh1 = oh0 + tile_rows < s->oh ? oh0 + tile_rows : s->oh, ncols = (oh1 - oh0) * s->ow;
      cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)((c1 - c0) * kk), (int)ncols, (int)cout_g, 1.0f,
                  wg + c0 * kk, (int)k, dyg + oh0 * s->ow, (int)ohw, 0.0f, col, (int)ncols);
      conv2d_col2im(dxg, col, s, c0, c1, oh0, oh1);
    }
  }
}

/* dx += dL/dx, dw += dL/dw, db += dL/db (each when non-NULL) by sgemm + col2im. */
static int conv2d_gemm_backward(float *dx,       /* (N, Cin, h, w) or NULL */
                                float *dw,       /* (Cout, Cin / groups, kh, kw) or NULL */
                                float *db,       /* (Cout) or NULL */
                                const float *x,  /* (N, Cin, h, w) */
                                const float *w,  /* (Cout, Cin / groups, kh, kw) */
                                const float *dy, /* (N, Cout, oh, ow) */
                                const conv2d_shape *s) {
  if (db) conv2d_bias_backward(db, dy, s);
  if (!dx && !dw) return 0;
  if (conv2d_is_depthwise(s)) return conv2d_depthwise_backward(dx, dw, x, w, dy, s);
  int threads = omp_get_max_threads();
  int64_t cin_g = s->cin / s->groups, kk = s->kh * s->kw, k = cin_g * kk;
  /* Slices: at least 16 im2col rows for dw, whole channels for dx. */
  int64_t dw_slices = conv2d_parts((k + 15) / 16, s->groups, threads);
  int64_t dx_slices = conv2d_parts(cin_g, s->n * s->groups, threads);
  int64_t dw_rows = (k + dw_slices - 1) / dw_slices, dx_rows = (cin_g + dx_slices - 1) / dx_slices * kk;
  int64_t rows_per_col = dw && dw_rows > (dx ? dx_rows : 0) ? dw_rows : dx_rows;
  int64_t tile_rows = conv2d_tile_rows(s, rows_per_col, 1);
  unsigned char *cols = NULL;
  size_t col_bytes = 0;
  if (!conv2d_is_pointwise(s)) {
    col_bytes = ops_scratch_round((size_t)(rows_per_col * tile_rows * s->ow) * sizeof(float));
    cols = ops_scratch((size_t)threads * col_bytes);
    if (!cols) return HAKD_ENOMEM;
  }
  int blas_threads = conv2d_blas_single();
  if (dw) conv2d_gemm_weight_grad(dw, x, dy, s, cols, col_bytes, tile_rows, dw_slices, threads);
  if (dx) conv2d_gemm_input_grad(dx, w, dy, s, cols, col_bytes, tile_rows, dx_slices, threads);
  conv2d_blas_restore(blas_threads);
  return 0;
}

/* ---- path selection ---- */

static conv2d_path conv2d_forced_path = CONV2D_PATH_AUTO;

void conv2d_set_path(conv2d_path path) { conv2d_forced_path = path; }

conv2d_path conv2d_get_path(void) {
  if (conv2d_forced_path != CONV2D_PATH_AUTO) return conv2d_forced_path;
  const char *env = getenv("HAKD_CONV");
  if (env && strcmp(env, "gemm") == 0) return CONV2D_PATH_GEMM;
  if (env && strcmp(env, "dnnl") == 0) return CONV2D_PATH_DNNL;
  if (env && strcmp(env, "taps") == 0) return CONV2D_PATH_TAPS;
  return CONV2D_PATH_AUTO;
}

static int conv2d_check_env(hakd_ctx *ctx) {
  const char *env = getenv("HAKD_CONV");
  if (env && *env && strcmp(env, "gemm") != 0 && strcmp(env, "dnnl") != 0 && strcmp(env, "taps") != 0 &&
      strcmp(env, "auto") != 0) {
    hakd_ctx_fail(ctx, HAKD_EINVAL, "conv2d: HAKD_CONV=%s: expected gemm, dnnl, taps or auto", env);
    return 0;
  }
  return 1;
}

/* The auto rule, from bench/bench_kernels (2-core AVX-512 machine, batch 2, ResNet-18 and
 * SegFormer-B0 layers): depthwise convs run the direct kernel (1.5-2.5x faster than oneDNN) and
 * 1x1 convs plain GEMMs (on par to 2.8x faster at 1-2 threads; their forwards on small maps go to
 * oneDNN, conv2d_auto_forward_path); every larger kernel runs on
 * oneDNN (1.1-2x faster single-threaded; mixed at 2 threads on a busy machine). A rule, not a
 * per-run measurement, so the same shapes take the same path in every process and a resumed
 * training run computes bit-identically to an uninterrupted one. */
conv2d_path conv2d_auto_path(const conv2d_shape *s) {
  if (conv2d_is_depthwise(s)) return CONV2D_PATH_GEMM;
  if (conv2d_taps_worthwhile(s)) return CONV2D_PATH_TAPS; /* padded taps skipped (conv2d_taps.c) */
  if (s->bf16) return CONV2D_PATH_DNNL; /* bfloat16 products exist only there */
  if (s->kh == 1 && s->kw == 1) return conv2d_blas_full_width() ? CONV2D_PATH_GEMM : CONV2D_PATH_DNNL;
  return CONV2D_PATH_DNNL;
}

conv2d_path conv2d_auto_forward_path(const conv2d_shape *s) {
  conv2d_path path = conv2d_auto_path(s);
  /* A 1x1 forward on a small map (<= 2048 output positions over the batch, where a frozen model
   * keeps oneDNN's weights converted, conv2d_frozen.c): oneDNN, whose blocked kernel then reads no
   * converted weights per call, where the GEMM path packs them in OpenBLAS every call. A/B of 6
   * alternating runs, best step: deeplabv3-mbv2 inference 256x256 b2 92.9 -> 86.7 ms, b1 49.3 ->
   * 45.3, r50-d8 inference 128x128 b2 144.9 -> 137.3 (and 256x256 b2 668 -> 639, 3 runs). The
   * rule is the shape's, so an unfrozen forward (training, a model not frozen) takes it too and
   * converts the weights per call: on par in training (r50-d8 128x128 b2 501 -> 489, r18-d8 213 ->
   * 212, mbv2 84 -> 84, r50-d8 256x256 2117 -> 2097 ms, best of 3-6 runs), and the frozen and
   * unfrozen forwards stay the same computation bit for bit. Their backward stays on the GEMM path
   * (r50-d8 training at 128x128 b2 was 2% slower with it on oneDNN). The threshold counts the
   * batch; the executed-MAC count (hakd bench, at batch 1) is the same on both paths for a 1x1. */
  if (path == CONV2D_PATH_GEMM && s->kh == 1 && s->kw == 1 && s->groups == 1 &&
      s->n * s->oh * s->ow <= CONV2D_SMALL_MAP_POSITIONS)
    return CONV2D_PATH_DNNL;
  if (conv2d_is_depthwise(s) || !conv2d_taps_supported(s) || s->dilation == 1) return path;
  int direct = conv2d_dnnl_forward_is_direct(s);
  if (path == CONV2D_PATH_TAPS && direct && conv2d_taps_all_used(s)) return CONV2D_PATH_DNNL;
  /* oneDNN's GEMM convolution computes the padded products: the tap path up to 60% valid */
  if (path == CONV2D_PATH_DNNL && !direct && 5 * conv2d_valid_positions(s) <= 3 * s->kh * s->kw * s->oh * s->ow)
    return CONV2D_PATH_TAPS;
  return path;
}

/* The path a shape runs on: forced (a forced taps path only where it applies), or auto. */
static conv2d_path conv2d_path_of(const conv2d_shape *s) {
  conv2d_path path = conv2d_get_path();
  if (path == CONV2D_PATH_TAPS && !conv2d_taps_supported(s)) path = CONV2D_PATH_AUTO;
  return path == CONV2D_PATH_AUTO ? conv2d_auto_path(s) : path;
}

/* The same for the forward alone (conv2d_auto_forward_path). */
static conv2d_path conv2d_forward_path_of(const conv2d_shape *s) {
  conv2d_path path = conv2d_get_path();
  if (path == CONV2D_PATH_TAPS && !conv2d_taps_supported(s)) path = CONV2D_PATH_AUTO;
  return path == CONV2D_PATH_AUTO ? conv2d_auto_forward_path(s) : path;
}

/* y = conv(x, w) + b, then the epilogue (NULL: none): inside the gemm path's work items, after the
 * call on the others. */
static int conv2d_forward_dispatch(float *y, const float *x, const float *w, const float *b, const conv2d_shape *s,
                                   const conv2d_epilogue *ep) {
  int rc;
  switch (conv2d_forward_path_of(s)) {
    case CONV2D_PATH_DNNL: rc = conv2d_dnnl_forward(y, x, w, b, s); break;
    case CONV2D_PATH_TAPS: rc = conv2d_taps_forward(y, x, w, b, s); break;
    default: return conv2d_gemm_forward(y, x, w, b, s, ep);
  }
  if (rc == 0) conv2d_epilogue_planes(ep, y, s);
  return rc;
}

/* (conv2d.h) bench/bench_kernels' auto columns: r50-d8's rate-12 ASPP conv on 32x32 maps (dx on
 * taps), dx + dw 229 -> 272 nominal GFLOP/s; r18-d8's rate-36 on 128x128 maps (both on taps)
 * 153 -> 228; on par where oneDNN's backward is direct. */
int conv2d_backward_by_taps(const conv2d_shape *s) {
  if (conv2d_get_path() != CONV2D_PATH_AUTO || !conv2d_taps_supported(s) || s->dilation == 1 ||
      conv2d_valid_positions(s) == s->kh * s->kw * s->oh * s->ow)
    return 0;
  return (!conv2d_dnnl_backward_is_direct(s, 0) ? 1 : 0) | (!conv2d_dnnl_backward_is_direct(s, 1) ? 2 : 0);
}

/* fresh: bit 0 dx, bit 1 dw, bit 2 db is a fresh gradient (hakd_grad_fresh), written by
 * oneDNN's backward and zeroed here for the paths that add to it. */
static int conv2d_backward_dispatch(hakd_ctx *ctx, float *dx, float *dw, float *db, unsigned fresh, const float *x,
                                    const float *w, const float *dy, const conv2d_shape *s) {
  conv2d_path path = conv2d_path_of(s);
  int taps = path == CONV2D_PATH_DNNL ? conv2d_backward_by_taps(s) : 0;
  /* the gradients the tap or GEMM path computes: added to */
  unsigned added = path != CONV2D_PATH_DNNL ? 7u : (taps & 1 ? 1u : 0) | (taps & 2 ? 6u : 0);
  int64_t count[3] = {s->n * s->cin * s->h * s->w, s->cout * (s->cin / s->groups) * s->kh * s->kw, s->cout};
  float *g[3] = {dx, dw, db};
  for (int i = 0; i < 3; i++)
    if (g[i] && (fresh & added & (1u << i))) memset(g[i], 0, (size_t)count[i] * sizeof(float));
  fresh &= ~added;
  switch (path) {
    case CONV2D_PATH_DNNL: {
      if (!taps) return conv2d_dnnl_backward(ctx, dx, dw, db, fresh, x, w, dy, s);
      float *tdx = taps & 1 ? dx : NULL, *tdw = taps & 2 ? dw : NULL, *tdb = taps & 2 ? db : NULL;
      int rc = tdx || tdw || tdb ? conv2d_taps_backward(tdx, tdw, tdb, x, w, dy, s) : 0;
      float *ddx = taps & 1 ? NULL : dx, *ddw = taps & 2 ? NULL : dw, *ddb = taps & 2 ? NULL : db;
      return rc || !(ddx || ddw || ddb) ? rc : conv2d_dnnl_backward(ctx, ddx, ddw, ddb, fresh, x, w, dy, s);
    }
    case CONV2D_PATH_TAPS: return conv2d_taps_backward(dx, dw, db, x, w, dy, s);
    default: return conv2d_gemm_backward(dx, dw, db, x, w, dy, s);
  }
}

/* Multiply-adds the forward of a shape executes: the tap path, the depthwise kernel and oneDNN's
 * direct kernels skip the products with the zero padding (conv2d_dnnl_forward_is_direct); the
 * im2col GEMMs and oneDNN's GEMM convolution compute them and are counted in full. The 3-wide
 * depthwise kernel also multiplies the zero columns (and, at stride 1, rows) of its padded plane
 * copy; they are not counted (the depthwise products are about 1% of a MobileNetV2 step's), so the
 * count stays that of depthwise_conv2d_tokens, the same convolution on channels-last tokens. */
static int64_t conv2d_executed_macs(const conv2d_shape *s) {
  int64_t full = s->kh * s->kw * s->oh * s->ow, valid = conv2d_valid_positions(s);
  if (valid == full) return s->n * s->cout * (s->cin / s->groups) * full; /* nothing padded to skip */
  conv2d_path path = conv2d_forward_path_of(s);
  int skips = path == CONV2D_PATH_TAPS || (path == CONV2D_PATH_GEMM && conv2d_is_depthwise(s)) ||
              (path == CONV2D_PATH_DNNL && conv2d_dnnl_forward_is_direct(s));
  int64_t per_pair = skips ? valid : full;
  return s->n * s->cout * (s->cin / s->groups) * per_pair;
}

/* ---- the op ---- */

static conv2d_shape conv2d_shape_of(const hakd_tensor *x, const hakd_tensor *w, const hakd_tensor *b, int64_t stride,
                                    int64_t pad, int64_t dilation, int64_t groups, int64_t bf16) {
  conv2d_shape s;
  memset(&s, 0, sizeof s); /* the struct is a cache key compared with memcmp */
  s.n = x->shape[0], s.cin = x->shape[1], s.h = x->shape[2], s.w = x->shape[3];
  s.cout = w->shape[0], s.kh = w->shape[2], s.kw = w->shape[3];
  s.stride = stride, s.pad = pad, s.dilation = dilation, s.groups = groups;
  s.oh = (s.h + 2 * pad - dilation * (s.kh - 1) - 1) / stride + 1;
  s.ow = (s.w + 2 * pad - dilation * (s.kw - 1) - 1) / stride + 1;
  s.has_bias = b != NULL;
  /* the direct depthwise kernel and a forced GEMM path compute in float32 */
  s.bf16 = bf16 && !conv2d_is_depthwise(&s) && conv2d_get_path() != CONV2D_PATH_GEMM;
  return s;
}

static void conv2d_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *w = node->in[1], *b = node->n_in > 2 ? node->in[2] : NULL;
  conv2d_shape s = conv2d_shape_of(x, w, b, node->iarg[0], node->iarg[1], node->iarg[2], node->iarg[3], node->iarg[4]);
  /* fresh gradients (hakd_grad_fresh: never a blocked x's) are written, not added to */
  int fx = 0, fw = 0, fb = 0;
  float *dx = hakd_grad_fresh(ctx, x, &fx), *dw = hakd_grad_fresh(ctx, w, &fw);
  float *db = b ? hakd_grad_fresh(ctx, b, &fb) : NULL;
  unsigned fresh = (fx ? 1u : 0) | (fw ? 2u : 0) | (fb ? 4u : 0);
  if (hakd_ctx_status(ctx) || (!dx && !dw && !db)) return;
  int rc;
  if (HAKD_IS_BLOCKED(x)) { /* as the forward ran it (hakd_conv2d) */
    s.src_blocked = s.dst_blocked = 1;
    if (x->dtype == HAKD_BF16_BLOCKED) s.bf16 = 1;
    else s.blocked_f32 = 1;
    rc = conv2d_dnnl_backward(ctx, dx, dw, db, fresh, x->data, hakd_f32(w), node->out->grad, &s);
  } else {
    rc = conv2d_backward_dispatch(ctx, dx, dw, db, fresh, hakd_f32(x), hakd_f32(w), node->out->grad, &s);
  }
  if (rc != 0) hakd_ctx_fail(ctx, rc, "conv2d backward: %s", hakd_error_message());
}

/* Whether a float32 convolution of shape s (not blocked yet) runs on blocked float32 tensors: on
 * the auto path, not depthwise, with none of its products on the tap path (which reads NCHW), and
 * oneDNN's forward, backward-data and backward-weights kernels all direct (its GEMM convolution
 * multiplies the padding, and on blocked memory its other kernel is the reference one). */
static int conv2d_keeps_f32_blocked(const conv2d_shape *s) {
  return conv2d_get_path() == CONV2D_PATH_AUTO && !conv2d_is_depthwise(s) && !s->bf16 &&
         conv2d_auto_path(s) != CONV2D_PATH_TAPS && conv2d_auto_forward_path(s) != CONV2D_PATH_TAPS &&
         conv2d_backward_by_taps(s) == 0 && conv2d_dnnl_forward_is_direct(s) && conv2d_dnnl_backward_is_direct(s, 0) &&
         conv2d_dnnl_backward_is_direct(s, 1);
}

/* Validates the operands of a conv2d and fills *s; 0, or NULL-returning failure recorded in ctx.
 * x may be blocked bfloat16 where take_blocked is set. */
static int conv2d_check(hakd_ctx *ctx, const hakd_tensor *x, const hakd_tensor *w, const hakd_tensor *b, int stride,
                        int padding, int dilation, int groups, int take_blocked, conv2d_shape *s) {
  if (!x || !w || hakd_ctx_status(ctx)) return -1;
  char xs[64], ws[64], bs[64];
  hakd_shape_str(x, xs, sizeof xs);
  hakd_shape_str(w, ws, sizeof ws);
  if ((x->dtype != HAKD_F32 && !(take_blocked && HAKD_IS_BLOCKED(x))) || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: input must be float32 (N, Cin, H, W), got %s", xs), -1;
  if (w->dtype != HAKD_F32 || w->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: weight must be float32 (Cout, Cin/groups, kh, kw), got %s", ws), -1;
  if (stride < 1 || padding < 0 || dilation < 1 || groups < 1)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "conv2d: stride %d, padding %d, dilation %d, groups %d out of range", stride,
                         padding, dilation, groups),
           -1;
  if (w->shape[1] < 1 || w->shape[2] < 1 || w->shape[3] < 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: empty weight %s", ws), -1;
  if (x->shape[1] % groups || w->shape[0] % groups || w->shape[1] * groups != x->shape[1])
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: input %s and weight %s do not match groups %d", xs, ws, groups), -1;
  if (b && (b->dtype != HAKD_F32 || b->ndim != 1 || b->shape[0] != w->shape[0]))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: bias %s does not match weight %s", hakd_shape_str(b, bs, sizeof bs),
                         ws),
           -1;
  *s = conv2d_shape_of(x, w, b, stride, padding, dilation, groups, hakd_ctx_precision(ctx) == HAKD_BF16);
  if (s->bf16 && !hakd_bf16_supported()) {
    int why = hakd_bf16_check();
    return hakd_ctx_fail(ctx, why, "conv2d: %s", hakd_error_message()), -1;
  }
  if (s->h + 2 * s->pad < dilation * (s->kh - 1) + 1 || s->w + 2 * s->pad < dilation * (s->kw - 1) + 1)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d: kernel %s with dilation %d larger than padded input %s", ws,
                         dilation, xs),
           -1;
  return conv2d_check_env(ctx) ? 0 : -1;
}

hakd_tensor *hakd_conv2d(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b, int stride, int padding,
                         int dilation, int groups) {
  conv2d_shape s;
  if (conv2d_check(ctx, x, w, b, stride, padding, dilation, groups, 1, &s)) return NULL;
  /* Blocked bfloat16 input (bf16 training's chain, layer_conv_bn_forward): the product on oneDNN
   * reads and writes the layout, depthwise convolutions included; a forced GEMM path converts. */
  if (x->dtype == HAKD_BF16_BLOCKED) {
    /* A depthwise convolution (MobileNetV2) runs on the direct float32 kernel the plain path
     * uses, its operands converted: oneDNN 2.6's bf16 depthwise backward on the blocked layout
     * ran at 0.4-1.1 GFLOP/s (bench/op_profile.sh, deeplabv3-mbv2 train 256x256 b2: 1.3 s of a
     * 1.5 s step), its forward at 40-65. */
    if (conv2d_is_depthwise(&s))
      return hakd_to_bf16_blocked(ctx, hakd_conv2d(ctx, hakd_to_f32(ctx, x), w, b, stride, padding, dilation, groups));
    if (!s.bf16 && !(x = hakd_to_f32(ctx, x))) return NULL;
    s.src_blocked = s.dst_blocked = x->dtype == HAKD_BF16_BLOCKED;
    /* oneDNN's direct bf16 kernels refuse wide paddings (the ASPP's rates 24 and 36), and on
     * blocked memory its only other kernel is the reference one (2.7 s of a 3.9 s r18 step at
     * 128x128 in ONEDNN_VERBOSE): such a convolution runs as the plain path does (oneDNN's GEMM
     * on its own layouts), its operands converted, the conversions carrying the gradient. */
    if (s.dst_blocked && conv2d_regions_apply(&s))
      return hakd_to_bf16_blocked(ctx, hakd_conv2d(ctx, hakd_to_f32(ctx, x), w, b, stride, padding, dilation, groups));
  }
  /* Blocked float32 input (float32 training's ResNet chain): oneDNN reads and writes the layout
   * where it runs all three products as direct kernels and the plain rules would not skip padded
   * taps; other convolutions convert (their gradients through the conversions). */
  if (x->dtype == HAKD_F32_BLOCKED) {
    if (!conv2d_keeps_f32_blocked(&s))
      return hakd_to_f32_blocked(ctx, hakd_conv2d(ctx, hakd_to_f32(ctx, x), w, b, stride, padding, dilation, groups));
    s.src_blocked = s.dst_blocked = s.blocked_f32 = 1;
  }
  int64_t yshape[4] = {s.n, s.cout, s.oh, s.ow};
  hakd_tensor *y = hakd_tensor_new(ctx, !s.dst_blocked ? HAKD_F32 : s.blocked_f32 ? HAKD_F32_BLOCKED : HAKD_BF16_BLOCKED,
                                   4, yshape);
  if (!y) return NULL;
  if (s.n == 0 || s.cout == 0) return y;
  const float *bd = b ? hakd_f32(b) : NULL;
  int rc = s.dst_blocked ? conv2d_dnnl_forward(y->data, x->data, hakd_f32(w), bd, &s)
                         : conv2d_forward_dispatch(hakd_f32(y), hakd_f32(x), hakd_f32(w), bd, &s, NULL);
  if (rc != 0) {
    char xs[64], ws[64];
    return hakd_ctx_fail(ctx, rc, "conv2d %s * %s: %s", hakd_shape_str(x, xs, sizeof xs),
                         hakd_shape_str(w, ws, sizeof ws), hakd_error_message());
  }
  hakd_tensor *inputs[3] = {x, w, b};
  hakd_node *node = hakd_record(ctx, "conv2d", conv2d_backward, y, b ? 3 : 2, inputs);
  if (node) {
    node->iarg[0] = stride;
    node->iarg[1] = padding;
    node->iarg[2] = dilation;
    node->iarg[3] = groups;
    node->iarg[4] = s.bf16;
    node->iarg[5] = conv2d_executed_macs(&s); /* hakd_tape_executed_macs */
    hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}

/* The fused op refuses inputs that need gradients, so hakd_record never puts it on the tape; it
 * is called for the per-op accounting of profilers (bench/op_profile.c hooks hakd_record). */
static void conv2d_affine_act_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inference only, no backward", node->op);
}

void conv2d_fold_affine(float *folded, float *folded_bias, const float *w, const float *b, const float *scale,
                        const float *shift, int64_t cout, int64_t per_out) {
#pragma omp parallel for schedule(static) if (cout * per_out > 65536)
  for (int64_t co = 0; co < cout; co++) {
    for (int64_t k = 0; k < per_out; k++) folded[co * per_out + k] = w[co * per_out + k] * scale[co];
    folded_bias[co] = (b ? b[co] * scale[co] : 0.0f) + shift[co];
  }
}

/* The per-channel affine goes into the weights and bias (one weight-sized pass), and the
 * residual and activation into one pass over the output, instead of three activation-sized
 * passes (affine, add, activation) that each write a new tensor. With blocked bfloat16
 * activations the residual and activation are oneDNN post-ops of the convolution itself (sum over
 * the residual copied into the output, then eltwise), so the output is written once. */
hakd_tensor *hakd_conv2d_affine_act(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b,
                                    const hakd_tensor *scale, const hakd_tensor *shift, const hakd_tensor *residual,
                                    hakd_activation act, int stride, int padding, int dilation, int groups) {
  conv2d_shape s;
  if (conv2d_check(ctx, x, w, b, stride, padding, dilation, groups, 1, &s)) return NULL;
  if (hakd_ctx_grad(ctx) && (x->requires_grad || w->requires_grad || (b && b->requires_grad)))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "conv2d_affine_act: inference only (gradient recording is on)");
  /* Blocked activations stay blocked where the product runs in bf16 on oneDNN: a depthwise
   * convolution (MobileNetV2) too, on oneDNN's blocked bf16 depthwise kernel instead of the direct
   * float32 one plain tensors take. A forced GEMM path reads float32. */
  if (x->dtype == HAKD_BF16_BLOCKED && !s.bf16 && conv2d_is_depthwise(&s) && conv2d_get_path() != CONV2D_PATH_GEMM)
    s.bf16 = 1;
  if (x->dtype == HAKD_BF16_BLOCKED && !s.bf16 && !(x = hakd_to_f32(ctx, x))) return NULL;
  s.src_blocked = s.dst_blocked = x->dtype == HAKD_BF16_BLOCKED;
  if (!scale || !shift || hakd_numel(scale) != s.cout || hakd_numel(shift) != s.cout)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d_affine_act: scale and shift need %lld channels",
                         (long long)s.cout);
  int64_t yshape[4] = {s.n, s.cout, s.oh, s.ow};
  hakd_tensor *y = hakd_tensor_new(ctx, s.dst_blocked ? HAKD_BF16_BLOCKED : HAKD_F32, 4, yshape);
  if (!y) return NULL;
  if (residual && !hakd_same_shape(residual, y)) {
    char rs[64], ys[64];
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "conv2d_affine_act: residual %s does not match the output %s",
                         hakd_shape_str(residual, rs, sizeof rs), hakd_shape_str(y, ys, sizeof ys));
  }
  if (s.n == 0 || s.cout == 0) return y;
  if (residual && residual->dtype != y->dtype) { /* into the output's layout */
    hakd_tensor *r = (hakd_tensor *)residual;
    if (!(residual = s.dst_blocked ? hakd_to_bf16_blocked(ctx, r) : hakd_to_f32(ctx, r))) return NULL;
  }
  if (s.dst_blocked) {
    if (residual) memcpy(y->data, residual->data, hakd_tensor_bytes(y));
    s.post_sum = residual != NULL;
    s.post_act = act;
  }
  const float *sc = hakd_f32(scale), *sh = hakd_f32(shift);
  /* Folding reads and writes the weights once more: on small maps (layer4 and the ASPP at 64-256
   * pixel inputs) the weights outweigh the output, and the affine goes into the epilogue.
   * A blocked bfloat16 output takes it through the weights (oneDNN's post-ops add and clamp). */
  int fold = s.dst_blocked || hakd_numel(w) <= hakd_numel(y);
  /* float32: the affine (unfolded), residual and activation as the kernels' epilogue */
  conv2d_epilogue epilogue = {fold ? NULL : sc, fold ? NULL : sh, residual ? hakd_f32(residual) : NULL,
                              act == HAKD_ACT_NONE ? -INFINITY : 0.0f, act == HAKD_ACT_RELU6 ? 6.0f : INFINITY};
  const conv2d_epilogue *ep = !s.dst_blocked && (residual || act != HAKD_ACT_NONE || !fold) ? &epilogue : NULL;
  /* A frozen model's weights (hakd_params_freeze) on oneDNN: folded and reordered once, kept.
   * fs: the shape the call below runs (a folded affine adds a bias), whose path decides. */
  conv2d_shape fs = s;
  fs.has_bias |= fold;
  if (w->frozen &&
      (s.dst_blocked ? !conv2d_regions_apply(&fs) : conv2d_forward_path_of(&fs) == CONV2D_PATH_DNNL)) {
    int done = conv2d_frozen_forward(y->data, x->data, w, b, fold ? sc : NULL, fold ? sh : NULL, &fs);
    if (done < 0) return hakd_ctx_fail(ctx, done, "conv2d_affine_act: %s", hakd_error_message());
    if (done) {
      if (!s.dst_blocked) conv2d_epilogue_planes(ep, hakd_f32(y), &fs);
      hakd_tensor *inputs[3] = {x, w, b};
      hakd_record(ctx, "conv2d_affine_act", conv2d_affine_act_backward, y, b ? 3 : 2, inputs);
      return y;
    }
  }
  int rc;
  if (fold) {
    int64_t per_out = hakd_numel(w) / s.cout;
    float *folded = hakd_ctx_scratch(ctx, (size_t)(hakd_numel(w) + s.cout) * sizeof(float));
    if (!folded) return NULL;
    float *folded_bias = folded + hakd_numel(w);
    const float *wd = hakd_f32(w);
    conv2d_fold_affine(folded, folded_bias, wd, b ? hakd_f32(b) : NULL, sc, sh, s.cout, per_out);
    s.has_bias = 1;
    rc = !s.dst_blocked ? conv2d_forward_dispatch(hakd_f32(y), hakd_f32(x), folded, folded_bias, &s, ep)
         : conv2d_regions_apply(&s) ? conv2d_regions_forward(ctx, y->data, x->data, folded, folded_bias, &s)
                                    : conv2d_dnnl_forward(y->data, x->data, folded, folded_bias, &s);
    hakd_ctx_scratch_free(ctx, folded);
  } else {
    rc = conv2d_forward_dispatch(hakd_f32(y), hakd_f32(x), hakd_f32(w), b ? hakd_f32(b) : NULL, &s, ep);
  }
  if (rc != 0) return hakd_ctx_fail(ctx, rc, "conv2d_affine_act: %s", hakd_error_message());
  hakd_tensor *inputs[3] = {x, w, b};
  hakd_record(ctx, "conv2d_affine_act", conv2d_affine_act_backward, y, b ? 3 : 2, inputs);
  return y;
}
