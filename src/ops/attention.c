/* Attention without its score matrix (hakd/ops.h, hakd_attention). Stored, the scores of a
 * SegFormer's first stage are written by one product, read and rewritten by the softmax and read
 * again by the second product: at 1024x1024, 256 MB per image four times over, with the products
 * running at 60-70 GFLOP/s and the softmax at memory speed (bench/sweep/profiles-1024.md: 37-47%
 * and 16-24% of the step). Here each work item takes a block of query rows of one (image, head),
 * makes their scores in a buffer that stays in L2, softmaxes the rows in place and multiplies them
 * by v: the same three computations (single-threaded sgemm per block, as the conv paths run it,
 * and softmax.c's row kernel), with the scores never leaving the cache. The products are cut
 * differently from the whole-matrix ones, so depending on OpenBLAS's kernels their sums may be
 * ordered differently: equal to float rounding (tests/test_attention.c). */
#include <cblas.h>
#include <omp.h>

#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/ops_internal.h"
#include "ops/scratch.h"

/* Scores per work item (floats): 256 KB, within the L2 of one core beside its q rows and v. */
#define ATTENTION_BLOCK_FLOATS ((int64_t)1 << 16)
/* At least this many rows per block, however long the rows: sgemm takes another kernel for a
 * single row (a matrix-vector product), which sums in another order than the full product. */
#define ATTENTION_MIN_ROWS 16

/* The op runs only where nothing needs a gradient; hakd_record then keeps no node, but the
 * profilers hook it (bench/op_profile.c) and see the op. */
static void attention_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inference only, no backward", node->op);
}

hakd_tensor *hakd_attention(hakd_ctx *ctx, hakd_tensor *q, hakd_tensor *k, hakd_tensor *v, float scale) {
  if (!q || !k || !v || hakd_ctx_status(ctx)) return NULL;
  int needs_grad = hakd_ctx_grad(ctx) && (q->requires_grad || k->requires_grad || v->requires_grad);
  int shapes_ok = q->dtype == HAKD_F32 && k->dtype == HAKD_F32 && v->dtype == HAKD_F32 && q->ndim == 4 &&
                  k->ndim == 4 && v->ndim == 4 && q->shape[0] == k->shape[0] && q->shape[1] == k->shape[1] &&
                  k->shape[0] == v->shape[0] && k->shape[1] == v->shape[1] && q->shape[3] == k->shape[3] &&
                  k->shape[2] == v->shape[2];
  /* gradients, bf16 products (oneDNN's matmul rounds its operands) and shapes to report: the ops */
  if (needs_grad || hakd_ctx_precision(ctx) == HAKD_BF16 || !shapes_ok || k->shape[2] == 0)
    return hakd_matmul(ctx, hakd_softmax(ctx, hakd_matmul_scaled(ctx, q, k, 0, 1, scale), -1), v, 0, 0);
  int64_t heads = q->shape[0] * q->shape[1], L = q->shape[2], d = q->shape[3], Lk = k->shape[2], dv = v->shape[3];
  if (L > 2147483647 || Lk > 2147483647 || d > 2147483647 || dv > 2147483647)
    return hakd_ctx_fail(ctx, HAKD_EUNSUPPORTED, "attention: sizes too large for 32-bit BLAS");
  int64_t yshape[4] = {q->shape[0], q->shape[1], L, dv};
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 4, yshape);
  if (!y) return NULL;
  if (heads && L && dv) {
    int64_t rows = ATTENTION_BLOCK_FLOATS / Lk;
    if (rows < ATTENTION_MIN_ROWS) rows = ATTENTION_MIN_ROWS;
    if (rows > L) rows = L;
    int64_t per_head = (L + rows - 1) / rows, items = heads * per_head;
    size_t block_bytes = ops_scratch_round((size_t)(rows * Lk) * sizeof(float)); /* one per thread */
    float *scores = ops_scratch((size_t)omp_get_max_threads() * block_bytes);
    if (!scores) return hakd_ctx_fail(ctx, HAKD_ENOMEM, "attention: out of memory for %lld score rows", (long long)rows);
    int64_t stride = (int64_t)(block_bytes / sizeof(float));
    const float *qd = hakd_f32(q), *kd = hakd_f32(k), *vd = hakd_f32(v);
    float *yd = hakd_f32(y);
    int blas_threads = conv2d_blas_single();
#pragma omp parallel for schedule(static) if (items > 1 && heads * L * Lk * (d + dv) > OPS_PARALLEL_MIN)
    for (int64_t it = 0; it < items; it++) {
      int64_t h = it / per_head, r0 = (it % per_head) * rows, n = L - r0 < rows ? L - r0 : rows;
      float *s = scores + (int64_t)omp_get_thread_num() * stride;
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)Lk, (int)d, scale, qd + (h * L + r0) * d,
                  (int)d, kd + h * Lk * d, (int)d, 0.0f, s, (int)Lk);
      softmax_rows(s, s, n, Lk);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)dv, (int)Lk, 1.0f, s, (int)Lk,
                  vd + h * Lk * dv, (int)dv, 0.0f, yd + (h * L + r0) * dv, (int)dv);
    }
    conv2d_blas_restore(blas_threads);
  }
  hakd_tensor *inputs[3] = {q, k, v};
  hakd_record(ctx, "attention", attention_backward, y, 3, inputs);
  return y;
}
