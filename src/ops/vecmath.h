/* glibc's vector math (libmvec, glibc >= 2.35): erf and exp on whole registers, called directly
 * because GCC only vectorises math calls itself under -ffast-math, which hakd does not use
 * (it breaks erf/exp semantics and NaN checks). VEC_LANES is 1 without AVX2. */
#ifndef HAKD_OPS_VECMATH_H
#define HAKD_OPS_VECMATH_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>

#if defined(__AVX512F__)
#define VEC_LANES 16
typedef __m512 vec_f32;
__m512 _ZGVeN16v_erff(__m512);
__m512 _ZGVeN16v_expf(__m512);
#define vec_erf _ZGVeN16v_erff
#define vec_expf _ZGVeN16v_expf
#define vec_load _mm512_loadu_ps
#define vec_store _mm512_storeu_ps
#define vec_set1 _mm512_set1_ps
#define vec_add _mm512_add_ps
#define vec_sub _mm512_sub_ps
#define vec_mul _mm512_mul_ps
#elif defined(__AVX2__)
#define VEC_LANES 8
typedef __m256 vec_f32;
__m256 _ZGVdN8v_erff(__m256);
__m256 _ZGVdN8v_expf(__m256);
#define vec_erf _ZGVdN8v_erff
#define vec_expf _ZGVdN8v_expf
#define vec_load _mm256_loadu_ps
#define vec_store _mm256_storeu_ps
#define vec_set1 _mm256_set1_ps
#define vec_add _mm256_add_ps
#define vec_sub _mm256_sub_ps
#define vec_mul _mm256_mul_ps
#else
#define VEC_LANES 1
#endif

/* y[i] = exp(x[i] - shift) for n elements (y may be x); single-threaded, for use inside the
 * callers' parallel loops. */
static inline void vec_exp_shifted(float *y, const float *x, float shift, int64_t n) {
  int64_t i = 0;
#if VEC_LANES > 1
  vec_f32 s = vec_set1(shift);
  for (; i + VEC_LANES <= n; i += VEC_LANES) vec_store(y + i, vec_expf(vec_sub(vec_load(x + i), s)));
#endif
  for (; i < n; i++) y[i] = expf(x[i] - shift);
}

#endif
