/* Fully connected layer on the last dim, through OpenBLAS sgemm (or oneDNN's bf16 matmul in the
 * bf16 precision). */
#include "hakd/ops.h"
#include "ops/gemm_bf16.h"
#include "ops/ops_internal.h"

/* y = x w^T + b.
 * y: (rows, out), x: (rows, in), w: (out, in), b: (out) or NULL. reference: F.linear */
static int linear_forward(float *y, const float *x, const float *w, const float *b, int64_t rows, int64_t in,
                          int64_t out, int bf16) {
#pragma omp parallel for schedule(static) if (rows * out > OPS_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++)
    for (int64_t o = 0; o < out; o++) y[r * out + o] = b ? b[o] : 0.0f;
  if (rows == 0 || in == 0 || out == 0) return 0;
  return gemm_run(bf16, 0, 1, rows, out, in, 1.0f, x, in, w, in, 1.0f, y, out);
}

/* Row chunks of the bias gradient: a fixed count, so the summation order (and the result) does
 * not depend on the thread count. */
#define BIAS_CHUNKS 32

/* dx += dy w, dw += dy^T x, db += sum over rows of dy.
 * dx: (rows, in) or NULL, dw: (out, in) or NULL, db: (out) or NULL, dy: (rows, out),
 * partial: (BIAS_CHUNKS, out) doubles of scratch when db is set. */
static int linear_backward_kernel(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                                  int64_t rows, int64_t in, int64_t out, double *partial, int bf16) {
  int gemm = rows > 0 && in > 0 && out > 0, rc = 0;
  if (dx && gemm) rc = gemm_run(bf16, 0, 0, rows, in, out, 1.0f, dy, out, w, in, 1.0f, dx, in);
  if (dw && gemm && !rc) rc = gemm_run(bf16, 1, 0, out, in, rows, 1.0f, dy, out, x, in, 1.0f, dw, in);
  if (db) {
    /* rows in chunks, each summed along contiguous rows of dy (a column walk strides by out) */
#pragma omp parallel for schedule(static) if (rows * out > OPS_PARALLEL_MIN)
    for (int c = 0; c < BIAS_CHUNKS; c++) {
      double *p = partial + (int64_t)c * out;
      for (int64_t o = 0; o < out; o++) p[o] = 0.0;
      for (int64_t r = rows * c / BIAS_CHUNKS; r < rows * (c + 1) / BIAS_CHUNKS; r++) {
        const float *g = dy + r * out;
#pragma omp simd
        for (int64_t o = 0; o < out; o++) p[o] += (double)g[o];
      }
    }
    for (int64_t o = 0; o < out; o++) {
      double acc = 0.0;
      for (int c = 0; c < BIAS_CHUNKS; c++) acc += partial[(int64_t)c * out + o];
      db[o] += (float)acc;
    }
  }
  return rc;
}

static void linear_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
  int64_t rows = node->iarg[0], in = node->iarg[1], out = node->iarg[2];
  float *db = hakd_grad(ctx, b);
  double *partial = db ? hakd_ctx_scratch(ctx, (size_t)(BIAS_CHUNKS * out) * sizeof(double)) : NULL;
  if (db && !partial) return;
  int rc = linear_backward_kernel(hakd_grad(ctx, x), hakd_grad(ctx, w), db, node->out->grad, hakd_f32(x), hakd_f32(w),
                                  rows, in, out, partial, (int)node->iarg[3]);
  hakd_ctx_scratch_free(ctx, partial);
  if (rc) hakd_ctx_fail(ctx, rc, "linear backward: %s", hakd_error_message());
}

hakd_tensor *hakd_linear(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b) {
  if (!x || !w) return NULL;
  char sx[96], sw[96], sb[96];
  if (x->dtype != HAKD_F32 || w->dtype != HAKD_F32 || (b && b->dtype != HAKD_F32))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "linear: inputs must be float32");
  if (x->ndim < 1 || w->ndim != 2 || x->shape[x->ndim - 1] != w->shape[1] ||
      (b && (b->ndim != 1 || b->shape[0] != w->shape[0])))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "linear: x %s, weight %s, bias %s do not match (want (..., in), (out, in), (out))",
                         hakd_shape_str(x, sx, sizeof sx), hakd_shape_str(w, sw, sizeof sw),
                         b ? hakd_shape_str(b, sb, sizeof sb) : "none");
  int64_t in = w->shape[1], out = w->shape[0], rows = ops_prod(x->shape, 0, x->ndim - 1);
  if (rows > 2147483647 || in > 2147483647 || out > 2147483647)
    return hakd_ctx_fail(ctx, HAKD_EUNSUPPORTED, "linear: x %s too large for 32-bit BLAS",
                         hakd_shape_str(x, sx, sizeof sx));
  int64_t shape[HAKD_MAX_DIMS];
  for (int i = 0; i < x->ndim - 1; i++) shape[i] = x->shape[i];
  shape[x->ndim - 1] = out;
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, shape);
  if (!y) return NULL;
  int bf16 = hakd_ctx_precision(ctx) == HAKD_BF16;
  if (bf16 && !hakd_bf16_supported()) {
    int why = hakd_bf16_check();
    return hakd_ctx_fail(ctx, why, "linear: %s", hakd_error_message());
  }
  int rc = linear_forward(hakd_f32(y), hakd_f32(x), hakd_f32(w), b ? hakd_f32(b) : NULL, rows, in, out, bf16);
  if (rc) return hakd_ctx_fail(ctx, rc, "linear: %s", hakd_error_message());
  hakd_tensor *in_tensors[3] = {x, w, b};
  hakd_node *node = hakd_record(ctx, "linear", linear_backward, y, 3, in_tensors);
  if (node) {
    node->iarg[0] = rows;
    node->iarg[1] = in;
    node->iarg[2] = out;
    node->iarg[3] = bf16;
    hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}
