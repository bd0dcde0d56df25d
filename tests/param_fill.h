/* Deterministic parameter fill, identical to tools/fixturelib.py's param_fill: every
 * parameter/buffer is a hash of its state_dict name and index, so model parity fixtures store
 * only inputs and outputs. */
#ifndef HAKD_TEST_PARAM_FILL_H
#define HAKD_TEST_PARAM_FILL_H

#include <math.h>
#include <string.h>

#include "hakd/tensor.h"

static inline uint32_t param_fill_fnv1a32(const char *s) {
  uint32_t h = 0x811C9DC5u;
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 0x01000193u;
  }
  return h;
}

static inline double param_fill_uniform(uint32_t h, int64_t i) {
  uint32_t x = h + (uint32_t)((uint64_t)i * 0x9E3779B1u);
  x ^= x >> 16;
  x *= 0x85EBCA6Bu;
  x ^= x >> 13;
  x *= 0xC2B2AE35u;
  x ^= x >> 16;
  return (double)(x >> 8) * (1.0 / 16777216.0);
}

static inline int param_fill_ends(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

static inline void param_fill(hakd_params *p) {
  for (int t = 0; t < p->count; t++) {
    hakd_tensor *x = p->items[t];
    int64_t n = hakd_numel(x);
    uint32_t h = param_fill_fnv1a32(x->name);
    float *d = hakd_f32(x);
    for (int64_t i = 0; i < n; i++) {
      double u = param_fill_uniform(h, i), v;
      if (param_fill_ends(x->name, "num_batches_tracked"))
        v = 0.0;
      else if (param_fill_ends(x->name, "running_var"))
        v = 0.5 + u;
      else if (x->ndim >= 2)
        v = (2.0 * u - 1.0) * sqrt(3.0 / (double)(n / x->shape[0]));
      else if (param_fill_ends(x->name, ".weight"))
        v = 0.5 + u;
      else
        v = (2.0 * u - 1.0) * 0.1;
      d[i] = (float)v;
    }
  }
}

#endif
