/* conv2d by taps: the convolution as a sum over kernel taps (ki, kj) of one GEMM each,
 *   y[:, oh, ow] += W[:, :, ki, kj] x[:, oh*stride + ki*dil - pad, ow*stride + kj*dil - pad],
 * taken only over the rectangle of output positions whose input position lies inside the map.
 * Products with the zero padding are never computed: a dilated 3x3 whose dilation reaches past
 * the feature map is its centre 1x1 (ASPP rates 12/24/36 on the 8x8-32x32 maps of 64-256 pixel
 * inputs), and a partly reaching tap costs only its valid rows and columns. oneDNN (hakd's and
 * PyTorch's) runs these ASPP shapes as im2col + GEMM over all nine taps, zeros included.
 * Forward, and both backward passes: dx by the transposed tap GEMMs scattered back, dw per tap.
 * float32, groups == 1; work items call single-threaded sgemm like the gemm path (conv2d.c).
 * Temporaries (per-tap weight matrices, gathered tap rectangles) live in the ops scratch (scratch.c). */
#include <cblas.h>
#include <omp.h>
#include <string.h>

#include "hakd/error.h"
#include "ops/conv2d.h"
#include "ops/scratch.h"

/* Largest per-thread gather + product buffer in floats (4 MB), as the gemm path's column budget. */
#define CONV2D_TAPS_BUDGET ((int64_t)1 << 20)

/* One kernel tap and the output rectangle [r0, r1) x [c0, c1) whose input lies inside the map. */
typedef struct {
  int64_t t;          /* ki * kw + kj */
  int64_t offr, offc; /* input row = oh * stride + offr, column = ow * stride + offc */
  int64_t r0, r1, c0, c1;
} conv2d_tap;

/* Fills taps[] with the taps that touch the map at all; returns how many. */
static int64_t conv2d_taps_list(const conv2d_shape *s, conv2d_tap *taps) {
  int64_t n = 0;
  for (int64_t ki = 0; ki < s->kh; ki++) {
    for (int64_t kj = 0; kj < s->kw; kj++) {
      conv2d_tap tp = {ki * s->kw + kj, ki * s->dilation - s->pad, kj * s->dilation - s->pad, 0, 0, 0, 0};
      conv2d_valid_range(tp.offr, s->stride, s->h, s->oh, &tp.r0, &tp.r1);
      conv2d_valid_range(tp.offc, s->stride, s->w, s->ow, &tp.c0, &tp.c1);
      if (tp.r1 > tp.r0 && tp.c1 > tp.c0) taps[n++] = tp;
    }
  }
  return n;
}

int64_t conv2d_valid_positions(const conv2d_shape *s) {
  int64_t total = 0;
  for (int64_t ki = 0; ki < s->kh; ki++) {
    int64_t r0, r1;
    conv2d_valid_range(ki * s->dilation - s->pad, s->stride, s->h, s->oh, &r0, &r1);
    for (int64_t kj = 0; kj < s->kw; kj++) {
      int64_t c0, c1;
      conv2d_valid_range(kj * s->dilation - s->pad, s->stride, s->w, s->ow, &c0, &c1);
      total += (r1 - r0) * (c1 - c0);
    }
  }
  return total;
}

int conv2d_taps_supported(const conv2d_shape *s) { return s->groups == 1 && !s->bf16; }

int conv2d_taps_all_used(const conv2d_shape *s) {
  conv2d_tap taps[s->kh * s->kw];
  return conv2d_taps_list(s, taps) == s->kh * s->kw;
}

int conv2d_taps_worthwhile(const conv2d_shape *s) {
  if (!conv2d_taps_supported(s) || s->dilation == 1) return 0;
  conv2d_tap taps[s->kh * s->kw];
  int64_t kk = s->kh * s->kw, used = conv2d_taps_list(s, taps), valid = conv2d_valid_positions(s);
  /* Per weight element and image, oneDNN computes oh * ow products after one reorder of the
   * weights (read + write); the tap path computes valid / kk products after copying the weights
   * of the used taps, at a lower rate (one GEMM per tap over a rectangle, narrow on small maps;
   * r18-d8 layer4 at 16x16, 69% valid, all taps used: 1.5-2.4x slower than oneDNN). So: whenever
   * whole taps lie in the padding (the copy writes fewer weights than oneDNN's reorder, and the products
   * fewer), else only when at most 40% of the products are valid. Independent of the batch, so
   * hakd bench's executed count (at batch 1) is what every batch runs. */
  return used < kk || 5 * valid <= 2 * kk * s->oh * s->ow;
}

/* Tap rectangle rows [ra, rb) of every image as a (rows, n * (rb - ra) * C) matrix: row c holds
 * plane c of image 0, then of image 1, ... The stack holds n images of `image` floats, each
 * `rows` planes of `plane` floats and width `width`; it is read at input coordinates when
 * `input` (row oh -> oh * stride + offr, column ow -> ow * stride + offc), at output ones else. */
typedef struct {
  int64_t n, rows, image, plane, width, stride;
  int input;
} conv2d_taps_stack;

static float *conv2d_taps_at(const conv2d_taps_stack *st, float *base, const conv2d_tap *tp, int64_t img, int64_t c,
                             int64_t r) {
  float *p = base + img * st->image + c * st->plane;
  if (!st->input) return p + r * st->width + tp->c0;
  return p + (r * st->stride + tp->offr) * st->width + tp->c0 * st->stride + tp->offc;
}

static void conv2d_taps_gather(float *dst, const float *src, const conv2d_taps_stack *st, const conv2d_tap *tp,
                               int64_t ra, int64_t rb) {
  int64_t C = tp->c1 - tp->c0, step = st->input ? st->stride : 1;
  for (int64_t c = 0; c < st->rows; c++) {
    for (int64_t img = 0; img < st->n; img++) {
      for (int64_t r = ra; r < rb; r++, dst += C) {
        const float *srow = conv2d_taps_at(st, (float *)src, tp, img, c, r);
        if (step == 1) {
          memcpy(dst, srow, (size_t)C * sizeof(float));
        } else {
          for (int64_t o = 0; o < C; o++) dst[o] = srow[o * step];
        }
      }
    }
  }
}

/* dst += src laid out as conv2d_taps_gather writes it (its adjoint). */
static void conv2d_taps_scatter_add(float *dst, const float *src, const conv2d_taps_stack *st, const conv2d_tap *tp,
                                    int64_t ra, int64_t rb) {
  int64_t C = tp->c1 - tp->c0, step = st->input ? st->stride : 1;
  for (int64_t c = 0; c < st->rows; c++) {
    for (int64_t img = 0; img < st->n; img++) {
      for (int64_t r = ra; r < rb; r++, src += C) {
        float *drow = conv2d_taps_at(st, dst, tp, img, c, r);
        for (int64_t o = 0; o < C; o++) drow[o * step] += src[o];
      }
    }
  }
}

/* wt[i] (Cout, Cin) = w[:, :, tap i]: one pass over w. */
static void conv2d_taps_pack(float *wt, const float *w, const conv2d_shape *s, const conv2d_tap *taps, int64_t nt) {
  int64_t kk = s->kh * s->kw, plane = s->cout * s->cin;
#pragma omp parallel for schedule(static) if (plane * nt > 65536)
  for (int64_t co = 0; co < s->cout; co++) {
    for (int64_t ci = 0; ci < s->cin; ci++) {
      const float *src = w + (co * s->cin + ci) * kk;
      for (int64_t i = 0; i < nt; i++) wt[i * plane + co * s->cin + ci] = src[taps[i].t];
    }
  }
}

/* Output rows per tile so that `per_col` floats per column (all images) fit one thread's budget. */
static int64_t conv2d_taps_tile_rows(const conv2d_shape *s, int64_t per_col) {
  int64_t rows = CONV2D_TAPS_BUDGET / (per_col * s->n * s->ow);
  return rows < 1 ? 1 : rows > s->oh ? s->oh : rows;
}

/* The scratch of one call: the per-tap matrices, then one buffer of `per_col` floats per column
 * of a row tile for each thread. NULL when out of memory. */
static unsigned char *conv2d_taps_scratch(const conv2d_shape *s, int64_t nt, int64_t per_col, int64_t tile_rows,
                                          int threads, size_t *mat_bytes, size_t *buf_bytes) {
  *mat_bytes = ops_scratch_round((size_t)(nt * s->cout * s->cin) * sizeof(float));
  *buf_bytes = ops_scratch_round((size_t)(per_col * s->n * tile_rows * s->ow) * sizeof(float));
  return ops_scratch(*mat_bytes + (size_t)threads * *buf_bytes);
}

int conv2d_taps_forward(float *y, const float *x, const float *w, const float *b, const conv2d_shape *s) {
  conv2d_tap taps[s->kh * s->kw];
  int64_t nt = conv2d_taps_list(s, taps), ohw = s->oh * s->ow, plane = s->cout * s->cin;
  int threads = omp_get_max_threads();
  /* Work items: output row tile (all images at once: wider GEMMs) x slice of output channels,
   * owning disjoint parts of y; channels are sliced when there are fewer tiles than threads
   * (small maps), so each thread packs only its rows of the tap weights. */
  int64_t tile_rows = conv2d_taps_tile_rows(s, s->cin + s->cout), tiles = (s->oh + tile_rows - 1) / tile_rows;
  /* A multiple of the threads in tiles, the rows shared out evenly (each tile at most tile_rows):
   * cut at the budget alone, the 32 rows of deeplabv3-mbv2's ASPP at 256x256 b2 were tiles of 28
   * and 4 rows, one of two threads idle most of the call. */
  if (tiles > threads && tiles % threads) tiles += threads - tiles % threads;
  if (tiles > s->oh) tiles = s->oh;
  int64_t slices = tiles >= threads ? 1 : (threads + tiles - 1) / tiles;
  if (slices > s->cout) slices = s->cout;
  size_t mat_bytes, buf_bytes;
  unsigned char *scratch = conv2d_taps_scratch(s, nt, s->cin + s->cout, tile_rows, threads, &mat_bytes, &buf_bytes);
  if (!scratch) return HAKD_ENOMEM;
  float *wt = (float *)scratch;
  conv2d_taps_pack(wt, w, s, taps, nt);
  conv2d_taps_stack xs = {s->n, s->cin, s->cin * s->h * s->w, s->h * s->w, s->w, s->stride, 1};
  int blas_threads = conv2d_blas_single();
#pragma omp parallel for schedule(dynamic) num_threads(threads)
  for (int64_t item = 0; item < tiles * slices; item++) {
    int64_t a = s->oh * (item / slices) / tiles, bnd = s->oh * (item / slices + 1) / tiles;
    int64_t co0 = s->cout * (item % slices) / slices, co1 = s->cout * (item % slices + 1) / slices;
    float *col = (float *)(scratch + mat_bytes + (size_t)omp_get_thread_num() * buf_bytes);
    float *prod = col + s->cin * s->n * tile_rows * s->ow;
    conv2d_taps_stack ys = {s->n, co1 - co0, s->cout * ohw, ohw, s->ow, 1, 0};
    for (int64_t n = 0; n < s->n; n++) {
      for (int64_t co = co0; co < co1; co++) {
        float bias = b ? b[co] : 0.0f, *row = y + (n * s->cout + co) * ohw + a * s->ow;
        for (int64_t i = 0; i < (bnd - a) * s->ow; i++) row[i] = bias;
      }
    }
    for (int64_t i = 0; i < nt; i++) {
      const conv2d_tap *tp = &taps[i];
      int64_t ra = a > tp->r0 ? a : tp->r0, rb = bnd < tp->r1 ? bnd : tp->r1;
      if (ra >= rb) continue;
      int64_t cols = s->n * (rb - ra) * (tp->c1 - tp->c0);
      conv2d_taps_gather(col, x, &xs, tp, ra, rb);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)(co1 - co0), (int)cols, (int)s->cin, 1.0f,
                  wt + i * plane + co0 * s->cin, (int)s->cin, col, (int)cols, 0.0f, prod, (int)cols);
      conv2d_taps_scatter_add(y + co0 * ohw, prod, &ys, tp, ra, rb);
    }
  }
  conv2d_blas_restore(blas_threads);
  return 0;
}

/* dw += dL/dw: per tap dW_t = sum over images and rows of dy_t x_t^T, in work items that own a
 * slice of input channels (columns of every dW_t), then added into dw's strided taps. */
static void conv2d_taps_weight_grad(float *dw, float *dwt, unsigned char *bufs, size_t buf_bytes, int64_t tile_rows,
                                    const float *x, const float *dy, const conv2d_shape *s, const conv2d_tap *taps,
                                    int64_t nt, int64_t slices, int threads) {
  int64_t hw = s->h * s->w, ohw = s->oh * s->ow, plane = s->cout * s->cin, kk = s->kh * s->kw;
  memset(dwt, 0, (size_t)(nt * plane) * sizeof(float));
  conv2d_taps_stack dys = {s->n, s->cout, s->cout * ohw, ohw, s->ow, 1, 0};
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t sl = 0; sl < slices; sl++) {
    int64_t c0 = s->cin * sl / slices, c1 = s->cin * (sl + 1) / slices;
    conv2d_taps_stack xs = {s->n, c1 - c0, s->cin * hw, hw, s->w, s->stride, 1};
    float *xcol = (float *)(bufs + (size_t)omp_get_thread_num() * buf_bytes);
    float *dycol = xcol + s->cin * s->n * tile_rows * s->ow;
    for (int64_t i = 0; i < nt; i++) {
      const conv2d_tap *tp = &taps[i];
      for (int64_t ra = tp->r0; ra < tp->r1; ra += tile_rows) {
        int64_t rb = ra + tile_rows < tp->r1 ? ra + tile_rows : tp->r1, cols = s->n * (rb - ra) * (tp->c1 - tp->c0);
        conv2d_taps_gather(xcol, x + c0 * hw, &xs, tp, ra, rb);
        conv2d_taps_gather(dycol, dy, &dys, tp, ra, rb);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)s->cout, (int)(c1 - c0), (int)cols, 1.0f, dycol,
                    (int)cols, xcol, (int)cols, 1.0f, dwt + i * plane + c0, (int)s->cin);
      }
    }
  }
#pragma omp parallel for schedule(static) if (plane * nt > 65536)
  for (int64_t co = 0; co < s->cout; co++) {
    for (int64_t ci = 0; ci < s->cin; ci++) {
      float *dst = dw + (co * s->cin + ci) * kk;
      for (int64_t i = 0; i < nt; i++) dst[taps[i].t] += dwt[i * plane + co * s->cin + ci];
    }
  }
}

/* dx += dL/dx: per tap dx_t += W_t^T dy_t, in work items that own a slice of input channels
 * (disjoint planes of dx). */
static void conv2d_taps_input_grad(float *dx, const float *wt, unsigned char *bufs, size_t buf_bytes,
                                   int64_t tile_rows, const float *dy, const conv2d_shape *s, const conv2d_tap *taps,
                                   int64_t nt, int64_t slices, int threads) {
  int64_t hw = s->h * s->w, ohw = s->oh * s->ow, plane = s->cout * s->cin;
  conv2d_taps_stack dys = {s->n, s->cout, s->cout * ohw, ohw, s->ow, 1, 0};
#pragma omp parallel for schedule(static) num_threads(threads)
  for (int64_t sl = 0; sl < slices; sl++) {
    int64_t c0 = s->cin * sl / slices, c1 = s->cin * (sl + 1) / slices;
    conv2d_taps_stack xs = {s->n, c1 - c0, s->cin * hw, hw, s->w, s->stride, 1};
    float *prod = (float *)(bufs + (size_t)omp_get_thread_num() * buf_bytes);
    float *dycol = prod + s->cin * s->n * tile_rows * s->ow;
    for (int64_t i = 0; i < nt; i++) {
      const conv2d_tap *tp = &taps[i];
      for (int64_t ra = tp->r0; ra < tp->r1; ra += tile_rows) {
        int64_t rb = ra + tile_rows < tp->r1 ? ra + tile_rows : tp->r1, cols = s->n * (rb - ra) * (tp->c1 - tp->c0);
        conv2d_taps_gather(dycol, dy, &dys, tp, ra, rb);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)(c1 - c0), (int)cols, (int)s->cout, 1.0f,
                    wt + i * plane + c0, (int)s->cin, dycol, (int)cols, 0.0f, prod, (int)cols);
        conv2d_taps_scatter_add(dx + c0 * hw, prod, &xs, tp, ra, rb);
      }
    }
  }
}

int conv2d_taps_backward(float *dx, float *dw, float *db, const float *x, const float *w, const float *dy,
                         const conv2d_shape *s) {
  if (db) conv2d_bias_backward(db, dy, s);
  if (!dx && !dw) return 0;
  conv2d_tap taps[s->kh * s->kw];
  int64_t nt = conv2d_taps_list(s, taps);
  int threads = omp_get_max_threads();
  int64_t slices = s->cin < threads ? s->cin : threads;
  /* per thread: a gathered input or product rectangle (Cin rows) and a gathered dy (Cout rows) */
  int64_t tile_rows = conv2d_taps_tile_rows(s, s->cin + s->cout);
  size_t mat_bytes, buf_bytes;
  unsigned char *scratch = conv2d_taps_scratch(s, nt, s->cin + s->cout, tile_rows, threads, &mat_bytes, &buf_bytes);
  if (!scratch) return HAKD_ENOMEM;
  float *mats = (float *)scratch; /* dW per tap, then W per tap */
  int blas_threads = conv2d_blas_single();
  if (dw) conv2d_taps_weight_grad(dw, mats, scratch + mat_bytes, buf_bytes, tile_rows, x, dy, s, taps, nt, slices,
                                  threads);
  if (dx) {
    conv2d_taps_pack(mats, w, s, taps, nt);
    conv2d_taps_input_grad(dx, mats, scratch + mat_bytes, buf_bytes, tile_rows, dy, s, taps, nt, slices, threads);
  }
  conv2d_blas_restore(blas_threads);
  return 0;
}
