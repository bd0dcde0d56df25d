/* Batched matrix product with optional transposes, through OpenBLAS sgemm (or oneDNN's bf16
 * matmul in the bf16 precision). */
#include <cblas.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/gemm_bf16.h"
#include "ops/ops_internal.h"

/* Below this many multiply-adds per matrix OpenBLAS runs sgemm on one thread anyway, so the
 * batch loop is spread over OpenMP threads instead. */
#define MATMUL_SMALL_MNK (1 << 18)

/* For each batch i: C_i = alpha op(A_i) op(B_i) + beta C_i, row-major; op transposes when the flag is set.
 * A_i: (M, K) or (K, M) at A + i*stride_a, B_i: (K, N) or (N, K) at B + i*stride_b,
 * C_i: (M, N) at C + i*stride_c. A stride of 0 shares the matrix across the batch. */
typedef struct {
  int trans_a, trans_b;
  int64_t m, n, k, batch;
  const float *a, *b;
  float *c;
  int64_t lda, ldb, ldc, stride_a, stride_b, stride_c;
  float beta, alpha;
  int bf16;
} batched_gemm;

/* The bf16 precision: one oneDNN batched matmul, or one product per batch item when they all
 * accumulate into a shared output. */
static int batched_gemm_bf16(const batched_gemm *g) {
  if (g->stride_c == 0) {
    int rc = 0;
    for (int64_t i = 0; i < g->batch && !rc; i++)
      rc = gemm_run(1, g->trans_a, g->trans_b, g->m, g->n, g->k, g->alpha, g->a + i * g->stride_a, g->lda,
                    g->b + i * g->stride_b, g->ldb, i ? 1.0f : g->beta, g->c, g->ldc);
    return rc;
  }
  gemm_bf16_shape s;
  memset(&s, 0, sizeof s);
  s.batch = g->batch, s.m = g->m, s.n = g->n, s.k = g->k, s.lda = g->lda, s.ldb = g->ldb, s.ldc = g->ldc;
  s.stride_a = g->stride_a, s.stride_b = g->stride_b, s.stride_c = g->stride_c;
  s.trans_a = g->trans_a, s.trans_b = g->trans_b, s.accumulate = g->beta != 0.0f, s.alpha = g->alpha;
  return gemm_bf16_run(&s, g->a, g->b, g->c);
}

/* 0, or a negative hakd_status (bf16 only: oneDNN failed). */
static int batched_gemm_run(const batched_gemm *g) {
  if (g->m == 0 || g->n == 0) return 0;
  if (g->k == 0) {
    /* sgemm with k == 0 only scales C by beta; beta is 0 (fresh output) or 1 (accumulate). */
    if (g->beta == 0.0f)
      for (int64_t i = 0; i < g->batch; i++)
        for (int64_t r = 0; r < g->m; r++)
          for (int64_t q = 0; q < g->n; q++) g->c[i * g->stride_c + r * g->ldc + q] = 0.0f;
    return 0;
  }
  if (g->bf16) return batched_gemm_bf16(g);
  CBLAS_TRANSPOSE ta = g->trans_a ? CblasTrans : CblasNoTrans, tb = g->trans_b ? CblasTrans : CblasNoTrans;
  /* A shared output (stride 0) accumulates across the batch, so it must stay serial. */
  int parallel = g->batch > 1 && g->stride_c != 0 && g->m * g->n * g->k < MATMUL_SMALL_MNK;
  blas_shared_enter();
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < g->batch; i++)
    cblas_sgemm(CblasRowMajor, ta, tb, (int)g->m, (int)g->n, (int)g->k, g->alpha, g->a + i * g->stride_a,
                (int)g->lda, g->b + i * g->stride_b, (int)g->ldb, g->beta, g->c + i * g->stride_c, (int)g->ldc);
  blas_shared_leave();
  return 0;
}

/* iarg: batch, m, n, k, transpose_a, transpose_b, b_shared, bf16, a_shared. */
static void matmul_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *a = node->in[0], *b = node->in[1];
  int64_t batch = node->iarg[0], m = node->iarg[1], n = node->iarg[2], k = node->iarg[3];
  int ta = (int)node->iarg[4], tb = (int)node->iarg[5], shared = (int)node->iarg[6];
  float alpha = (float)node->farg[0];
  int bf16 = (int)node->iarg[7], a_shared = (int)node->iarg[8], rc = 0;
  const float *dc = node->out->grad, *av = hakd_f32(a), *bv = hakd_f32(b);
  int64_t lda = ta ? m : k, ldb = tb ? k : n;
  int64_t stride_b = shared ? 0 : k * n, stride_a = a_shared ? 0 : m * k;
  float *da = hakd_grad(ctx, a);
  if (da) {
    batched_gemm g;
    if (!ta) /* dA (M,K) += dC op(B)^T */
      g = (batched_gemm){0, !tb, m, k, n, batch, dc, bv, da, n, ldb, k, m * n, stride_b, stride_a, 1.0f, alpha, bf16};
    else /* dA (K,M) += op(B) dC^T */
      g = (batched_gemm){tb, 1, k, m, n, batch, bv, dc, da, ldb, n, m, stride_b, m * n, stride_a, 1.0f, alpha, bf16};
    rc = batched_gemm_run(&g);
  }
  float *db = hakd_grad(ctx, b);
  if (db && !rc) {
    batched_gemm g;
    if (!tb) /* dB (K,N) += op(A)^T dC */
      g = (batched_gemm){!ta, 0, k, n, m, batch, av, dc, db, lda, n, n, stride_a, m * n, stride_b, 1.0f, alpha, bf16};
    else /* dB (N,K) += dC^T op(A) */
      g = (batched_gemm){1, ta, n, k, m, batch, dc, av, db, n, lda, k, m * n, stride_a, stride_b, 1.0f, alpha, bf16};
    rc = batched_gemm_run(&g);
  }
  if (rc) hakd_ctx_fail(ctx, rc, "matmul backward: %s", hakd_error_message());
}

hakd_tensor *hakd_matmul(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b, int transpose_a, int transpose_b) {
  return hakd_matmul_scaled(ctx, a, b, transpose_a, transpose_b, 1.0f);
}

/* reference: alpha * torch.matmul(a.transpose(-1,-2) if transpose_a else a,
 *                                  b.transpose(-1,-2) if transpose_b else b) */
hakd_tensor *hakd_matmul_scaled(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b, int transpose_a, int transpose_b,
                                float alpha) {
  if (!a || !b) return NULL;
  char sa[96], sb[96];
  if (a->dtype != HAKD_F32 || b->dtype != HAKD_F32)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "matmul: inputs must be float32");
  int ta = transpose_a != 0, tb = transpose_b != 0;
  /* a 2-D a (or b) is shared by every matrix of the other's batch */
  int a_shared = a->ndim == 2 && b->ndim > 2;
  const hakd_tensor *batched = a_shared ? b : a; /* the operand whose leading dims the output takes */
  int shapes_ok = a->ndim >= 2 && b->ndim >= 2 && (b->ndim == 2 || a_shared || b->ndim == a->ndim);
  if (shapes_ok && b->ndim > 2 && !a_shared)
    for (int i = 0; i < a->ndim - 2; i++)
      if (a->shape[i] != b->shape[i]) shapes_ok = 0;
  int64_t m = 0, k = 0, n = 0;
  if (shapes_ok) {
    m = hakd_dim(a, ta ? -1 : -2);
    k = hakd_dim(a, ta ? -2 : -1);
    n = hakd_dim(b, tb ? -2 : -1);
    if (hakd_dim(b, tb ? -1 : -2) != k) shapes_ok = 0;
  }
  if (!shapes_ok)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "matmul: a %s%s and b %s%s do not match",
                         hakd_shape_str(a, sa, sizeof sa), ta ? " (transposed)" : "", hakd_shape_str(b, sb, sizeof sb),
                         tb ? " (transposed)" : "");
  if (m > 2147483647 || n > 2147483647 || k > 2147483647)
    return hakd_ctx_fail(ctx, HAKD_EUNSUPPORTED, "matmul: a %s too large for 32-bit BLAS",
                         hakd_shape_str(a, sa, sizeof sa));
  int64_t shape[HAKD_MAX_DIMS];
  int nd = batched->ndim;
  for (int i = 0; i < nd - 2; i++) shape[i] = batched->shape[i];
  shape[nd - 2] = m;
  shape[nd - 1] = n;
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, nd, shape);
  if (!y) return NULL;
  int64_t batch = ops_prod(batched->shape, 0, nd - 2);
  int shared = b->ndim == 2;
  if (shared && !ta && batch * m <= 2147483647) {
    /* The batch of a stacks into one tall matrix times the shared b: a single large sgemm. */
    m *= batch;
    batch = 1;
  }
  batched_gemm g = {ta, tb, m, n, k, batch, hakd_f32(a), hakd_f32(b), hakd_f32(y), ta ? m : k, tb ? k : n, n,
                    a_shared ? 0 : m * k, shared ? 0 : k * n, m * n, 0.0f, alpha, hakd_ctx_precision(ctx) == HAKD_BF16};
  if (g.bf16 && !hakd_bf16_supported()) {
    int why = hakd_bf16_check();
    return hakd_ctx_fail(ctx, why, "matmul: %s", hakd_error_message());
  }
  int rc = batched_gemm_run(&g);
  if (rc) return hakd_ctx_fail(ctx, rc, "matmul: %s", hakd_error_message());
  hakd_tensor *in[2] = {a, b};
  hakd_node *node = hakd_record(ctx, "matmul", matmul_backward, y, 2, in);
  if (node) {
    node->iarg[0] = batch;
    node->iarg[1] = m;
    node->iarg[2] = n;
    node->iarg[3] = k;
    node->iarg[4] = ta;
    node->iarg[5] = tb;
    node->iarg[6] = shared;
    node->farg[0] = alpha;
    node->iarg[7] = g.bf16;
    node->iarg[8] = a_shared;
    hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}
