/* splitmix64: tiny, fast, and every seed (0 included) gives a good stream. */
#include <math.h>

#include "hakd/tensor.h"

uint64_t hakd_rng_seed(uint64_t seed) { return seed * 0x9E3779B97F4A7C15ull + 0x2545F4914F6CDD1Dull; }

uint64_t hakd_rng_next(uint64_t *state) {
  uint64_t z = (*state += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float hakd_rng_uniform(uint64_t *state) { return (float)(hakd_rng_next(state) >> 40) * (1.0f / 16777216.0f); }

float hakd_rng_normal(uint64_t *state) {
  /* Box-Muller; u1 in (0, 1] so log never sees 0. */
  double u1 = ((double)(hakd_rng_next(state) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
  double u2 = (double)(hakd_rng_next(state) >> 11) * (1.0 / 9007199254740992.0);
  return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

uint64_t hakd_rng_substream(uint64_t seed, int64_t index) {
  /* one splitmix64 draw keyed by the index, mixed with the seed's own draw */
  uint64_t a = seed, b = (uint64_t)index ^ 0xD1B54A32D192ED03ull;
  uint64_t z = hakd_rng_next(&a) ^ hakd_rng_next(&b);
  return hakd_rng_seed(z);
}
