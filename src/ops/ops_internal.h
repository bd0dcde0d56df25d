/* Helpers shared by the op files (internal to src/ops). */
#ifndef HAKD_OPS_INTERNAL_H
#define HAKD_OPS_INTERNAL_H

#include <string.h>

#include "hakd/ops.h"
#include "hakd/tensor.h"

/* Elements above which a pointwise loop is worth an OpenMP team. */
#define OPS_PARALLEL_MIN 32768

/* softmax along each of `rows` contiguous rows of `size` floats, y = softmax(x) (y may be x),
 * serially: the arithmetic of hakd_softmax on a last dim (softmax.c), for ops that parallelise
 * over rows themselves (attention.c). */
void softmax_rows(float *y, const float *x, int64_t rows, int64_t size);

/* dim in [-ndim, ndim) -> [0, ndim); -1 when out of range. */
static inline int ops_normalize_dim(int dim, int ndim) {
  if (dim < 0) dim += ndim;
  return (dim >= 0 && dim < ndim) ? dim : -1;
}

/* Product of shape[begin..end). */
static inline int64_t ops_prod(const int64_t *shape, int begin, int end) {
  int64_t p = 1;
  for (int i = begin; i < end; i++) p *= shape[i];
  return p;
}

/* Sum of n floats in double. The split into a fixed number of chunks (not one per thread)
 * makes the result independent of the thread count. */
static inline double ops_sum_f64(const float *x, int64_t n) {
  enum { CHUNKS = 64 };
  double partial[CHUNKS];
  int64_t chunk = (n + CHUNKS - 1) / CHUNKS;
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int c = 0; c < CHUNKS; c++) {
    int64_t begin = c * chunk, end = begin + chunk < n ? begin + chunk : n;
    double acc = 0.0;
    for (int64_t i = begin; i < end; i++) acc += (double)x[i];
    partial[c] = acc;
  }
  double total = 0.0;
  for (int c = 0; c < CHUNKS; c++) total += partial[c];
  return total;
}

/* One bfloat16 value (the high half of a float32) and back, rounded to nearest even as oneDNN's
 * conversions round (NaN stays NaN). */
static inline float bf16_value(uint16_t v) {
  uint32_t bits = (uint32_t)v << 16;
  float f;
  memcpy(&f, &bits, sizeof f);
  return f;
}

static inline uint16_t bf16_round(float f) {
  uint32_t bits;
  memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);
  return (uint16_t)((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

/* Ops on blocked bfloat16 tensors (HAKD_BF16_BLOCKED; bf16_layout.c), reached from the float32
 * ops when their input has that layout; the output keeps it. Max pooling as hakd_maxpool2d
 * (inference only); average pooling of whole maps to 1x1 and concatenation along channels (block
 * by block where every input but the last has whole blocks of 16 channels, else through float32),
 * both with their gradients. */
hakd_tensor *bf16_blocked_maxpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding);
hakd_tensor *bf16_blocked_global_avgpool(hakd_ctx *ctx, hakd_tensor *x);
hakd_tensor *bf16_blocked_concat_channels(hakd_ctx *ctx, int n, hakd_tensor *const *xs);

/* hakd_batchnorm2d_act on float32 NCHW input (batchnorm.c; the blocked one is bf16_batchnorm.c). */
hakd_tensor *batchnorm2d_act_f32(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                                 hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps,
                                 hakd_tensor *residual, hakd_activation act);

#endif
