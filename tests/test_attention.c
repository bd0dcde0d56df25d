/* hakd_attention: without gradients its blocked computation (src/ops/attention.c) gives what
 * hakd_matmul_scaled + hakd_softmax + hakd_matmul give (to float rounding), and with them it is
 * those ops. */
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "rand_fill.h"
#include "hakd/ops.h"

typedef struct {
  int64_t n, h, l, lk, d, dv;
  double tol; /* 0: bit for bit */
} attn_shape;

/* The fused (grad off) and the composite results of shape sh: within sh->tol of the largest
 * value. The products are cut differently (blocks of rows, single-threaded sgemm, against
 * OpenBLAS's threaded product over the whole matrix); whether that changes the order of the sums
 * depends on the kernels OpenBLAS runs: with its AVX-512 kernels (OPENBLAS_CORETYPE unset on this
 * machine) the shapes below come out bit for bit equal except the 70000-key rows (2e-8), with
 * its Haswell kernels within 7e-7. Sums of 32-1024 products of unit-scale values carry rounding
 * of 1e-7-1e-6 relative, so 2e-6 still catches any wrong row, block or scale (errors of 1e-2 and
 * more). */
static void check_shape(const attn_shape *sh, uint64_t seed) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t qs[4] = {sh->n, sh->h, sh->l, sh->d}, ks[4] = {sh->n, sh->h, sh->lk, sh->d}, vs[4] = {sh->n, sh->h, sh->lk, sh->dv};
  hakd_tensor *q = hakd_params_add(&p, "q", 4, qs, 1), *k = hakd_params_add(&p, "k", 4, ks, 1);
  hakd_tensor *v = hakd_params_add(&p, "v", 4, vs, 1);
  fill_normal(hakd_f32(q), hakd_numel(q), 1.0f, seed);
  fill_normal(hakd_f32(k), hakd_numel(k), 1.0f, seed + 1);
  fill_normal(hakd_f32(v), hakd_numel(v), 1.0f, seed + 2);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  float scale = 0.17f;
  hakd_tensor *fused = hakd_attention(ctx, q, k, v, scale);
  hakd_tensor *ref = hakd_matmul(ctx, hakd_softmax(ctx, hakd_matmul_scaled(ctx, q, k, 0, 1, scale), -1), v, 0, 0);
  if (!fused || !ref) {
    test_fail(__FILE__, __LINE__, "%s", hakd_error_message());
  } else {
    int64_t n = hakd_numel(ref);
    ASSERT_EQ_INT(hakd_numel(fused), n);
    for (int dim = 0; dim < 4; dim++) ASSERT_EQ_INT(fused->shape[dim], ref->shape[dim]);
    double err = test_max_rel_err(hakd_f32(fused), hakd_f32(ref), n, 1e-6);
    if (!(err <= sh->tol))
      test_fail(__FILE__, __LINE__, "L %lld, L' %lld, d %lld, dv %lld: max rel error %.3g", (long long)sh->l,
                (long long)sh->lk, (long long)sh->d, (long long)sh->dv, err);
  }
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* Blocks of query rows: several per head with a last partial one (L 1000, L' 256: 256 rows per
 * block), rows longer than a block (L' 70000 > 65536 scores: the minimum of 16 rows), a single
 * block, SegFormer's first-stage shape at 256x256 (4096 tokens against 64, d 32) and at 1024x1024
 * (65536 against 1024, one image), heads of width 64 with d != dv. */
TEST(blocked_equals_matmul_softmax_matmul) {
  attn_shape shapes[] = {{2, 3, 1000, 256, 32, 32, 2e-6}, {1, 1, 3, 70000, 8, 8, 2e-6}, {1, 2, 17, 5, 4, 6, 2e-6},
                         {2, 1, 4096, 64, 32, 32, 2e-6},  {1, 1, 65536, 1024, 32, 32, 2e-6},
                         {1, 5, 300, 300, 64, 16, 2e-6}};
  for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) check_shape(&shapes[i], 10 * i + 1);
}

/* With gradients wanted the op is the recorded ops: backward runs and reaches q, k and v. */
TEST(with_gradients_records_the_ops) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t s[4] = {1, 2, 9, 4};
  hakd_tensor *q = hakd_params_add(&p, "q", 4, s, 0), *k = hakd_params_add(&p, "k", 4, s, 0);
  hakd_tensor *v = hakd_params_add(&p, "v", 4, s, 0);
  fill_normal(hakd_f32(q), 72, 1.0f, 5);
  fill_normal(hakd_f32(k), 72, 1.0f, 6);
  fill_normal(hakd_f32(v), 72, 1.0f, 7);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *y = hakd_attention(ctx, q, k, v, 0.5f);
  ASSERT_TRUE(y != NULL && y->requires_grad && y->node != NULL);
  ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, hakd_mul(ctx, y, y))));
  double gq = 0, gk = 0, gv = 0;
  for (int i = 0; i < 72; i++) gq += q->grad[i] * q->grad[i], gk += k->grad[i] * k->grad[i], gv += v->grad[i] * v->grad[i];
  ASSERT_TRUE(gq > 0 && gk > 0 && gv > 0);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* Mismatched shapes are reported (through the ops), not computed. */
TEST(rejects_mismatched_shapes) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t qs[4] = {1, 2, 9, 4}, ks[4] = {1, 2, 7, 5};
  hakd_tensor *q = hakd_params_add(&p, "q", 4, qs, 1), *k = hakd_params_add(&p, "k", 4, ks, 1);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  ASSERT_TRUE(hakd_attention(ctx, q, k, k, 1.0f) == NULL);
  ASSERT_TRUE(hakd_ctx_status(ctx) == HAKD_ESHAPE);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}
