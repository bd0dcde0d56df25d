/* Internal: RNG streams of the data module. A stream is keyed by (seed, a, b), e.g.
 * (seed, epoch, index) for an augmented sample, so every draw is a pure function of the key. */
#ifndef HAKD_DATA_RNG_H
#define HAKD_DATA_RNG_H

#include <stdint.h>

#include "hakd/tensor.h"

/* Salts keep the streams of different uses apart for the same user seed. */
#define HAKD__RNG_AUGMENT 0x6175676d656e7400ull
#define HAKD__RNG_SHUFFLE 0x73687566666c6500ull
#define HAKD__RNG_SYNTH 0x73796e7468000000ull

static inline uint64_t hakd__rng_stream(uint64_t salt, uint64_t seed, int64_t a, int64_t b) {
  uint64_t state = hakd_rng_seed(seed ^ salt);
  state = hakd_rng_next(&state) ^ (uint64_t)a;
  state = hakd_rng_next(&state) ^ (uint64_t)b;
  hakd_rng_next(&state);
  return state;
}

/* Uniform integer in [0, n), n >= 1. */
static inline int64_t hakd__rng_below(uint64_t *state, int64_t n) {
  return (int64_t)(hakd_rng_next(state) % (uint64_t)n);
}

/* Uniform double in [lo, hi). */
static inline double hakd__rng_range(uint64_t *state, double lo, double hi) {
  return lo + (hi - lo) * ((double)(hakd_rng_next(state) >> 11) * (1.0 / 9007199254740992.0));
}

#endif
