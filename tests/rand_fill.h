/* Small helpers the convolution op tests share: seeded normal fills and float copies. */
#ifndef HAKD_TEST_RAND_FILL_H
#define HAKD_TEST_RAND_FILL_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/tensor.h"

/* dst[i] = scale * N(0, 1), the stream of hakd_rng_seed(seed) */
static inline void fill_normal(float *dst, int64_t n, float scale, uint64_t seed) {
  uint64_t rng = hakd_rng_seed(seed);
  for (int64_t i = 0; i < n; i++) dst[i] = scale * hakd_rng_normal(&rng);
}

/* A malloc'd copy of n floats (src NULL: uninitialised); NULL when out of memory. */
static inline float *copy_floats(const float *src, int64_t n) {
  float *dst = malloc((size_t)n * sizeof(float));
  if (dst && src) memcpy(dst, src, (size_t)n * sizeof(float));
  return dst;
}

#endif
