/* bfloat16 matrix products on oneDNN (gemm_bf16.c), for the bf16 precision of linear and matmul. */
#ifndef HAKD_OPS_GEMM_BF16_H
#define HAKD_OPS_GEMM_BF16_H

#include <stdint.h>

#include "hakd/error.h"

/* For each batch i: C_i = alpha op(A_i) op(B_i) (+ C_i when accumulate), row-major, with the
 * products of A and B rounded to bfloat16 and summed in float32. op transposes when the flag is
 * set: A_i is (M, K), or (K, M) stored, at A + i*stride_a; B_i (K, N) or (N, K) at B + i*stride_b;
 * C_i (M, N) at C + i*stride_c. stride_a / stride_b 0 share one matrix across the batch; stride_c
 * must not be 0. Also the key of the primitive cache (compared with memcmp: zero it first). */
typedef struct {
  int64_t batch, m, n, k;
  int64_t lda, ldb, ldc, stride_a, stride_b, stride_c;
  int32_t trans_a, trans_b, accumulate;
  float alpha;
} gemm_bf16_shape;

/* 0, or a negative hakd_status with the message set. */
int gemm_bf16_run(const gemm_bf16_shape *s, const float *a, const float *b, float *c);
/* One row-major product C = alpha op(A) op(B) + beta C (beta 0 or 1): cblas_sgemm, or the bf16
 * product when bf16 is set. 0 or a negative hakd_status. */
int gemm_run(int bf16, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
             int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc);

#endif
