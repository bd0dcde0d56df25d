/* Helpers shared by the op files (internal to src/ops). */
#ifndef HAKD_OPS_INTERNAL_H
#define HAKD_OPS_INTERNAL_H

#include "hakd/tensor.h"

/* Elements above which a pointwise loop is worth an OpenMP team. */
#define OPS_PARALLEL_MIN 32768

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

#endif
