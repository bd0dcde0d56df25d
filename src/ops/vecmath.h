/* glibc's vector math (libmvec, glibc >= 2.35): erf, exp and log on whole registers, called
 * directly because GCC only vectorises math calls itself under -ffast-math, which hakd does not
 * use (it breaks erf/exp semantics and NaN checks). VEC_LANES is 1 without AVX2. Also the lane
 * reductions and non-temporal stores the memory-bound ops share. */
#ifndef HAKD_OPS_VECMATH_H
#define HAKD_OPS_VECMATH_H

#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__AVX512F__)
#define VEC_LANES 16
typedef __m512 vec_f32;
__m512 _ZGVeN16v_erff(__m512);
__m512 _ZGVeN16v_expf(__m512);
__m512 _ZGVeN16v_logf(__m512);
#define vec_erf _ZGVeN16v_erff
#define vec_expf _ZGVeN16v_expf
#define vec_logf _ZGVeN16v_logf
#define vec_load _mm512_loadu_ps
#define vec_store _mm512_storeu_ps
#define vec_set1 _mm512_set1_ps
#define vec_add _mm512_add_ps
#define vec_sub _mm512_sub_ps
#define vec_mul _mm512_mul_ps
#define vec_stream _mm512_stream_ps
#define vec_zero _mm512_setzero_ps
/* max(a, b) with b returned when either is NaN: vec_max(x, acc) ignores a NaN x like fmaxf. */
#define vec_max _mm512_max_ps
static inline float vec_reduce_add(__m512 v) { return _mm512_reduce_add_ps(v); }
static inline float vec_reduce_max(__m512 v) { return _mm512_reduce_max_ps(v); }
/* 1.0f in lane i where labels[i] == k, else 0.0f. */
static inline __m512 vec_onehot(const int32_t *labels, int32_t k) {
  __mmask16 eq = _mm512_cmpeq_epi32_mask(_mm512_loadu_si512(labels), _mm512_set1_epi32(k));
  return _mm512_maskz_mov_ps(eq, _mm512_set1_ps(1.0f));
}
#elif defined(__AVX2__)
#define VEC_LANES 8
typedef __m256 vec_f32;
__m256 _ZGVdN8v_erff(__m256);
__m256 _ZGVdN8v_expf(__m256);
__m256 _ZGVdN8v_logf(__m256);
#define vec_erf _ZGVdN8v_erff
#define vec_expf _ZGVdN8v_expf
#define vec_logf _ZGVdN8v_logf
#define vec_load _mm256_loadu_ps
#define vec_store _mm256_storeu_ps
#define vec_set1 _mm256_set1_ps
#define vec_add _mm256_add_ps
#define vec_sub _mm256_sub_ps
#define vec_mul _mm256_mul_ps
#define vec_stream _mm256_stream_ps
#define vec_zero _mm256_setzero_ps
#define vec_max _mm256_max_ps
static inline float vec_reduce_add(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
static inline float vec_reduce_max(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
static inline __m256 vec_onehot(const int32_t *labels, int32_t k) {
  __m256i eq = _mm256_cmpeq_epi32(_mm256_loadu_si256((const __m256i *)labels), _mm256_set1_epi32(k));
  return _mm256_and_ps(_mm256_castsi256_ps(eq), _mm256_set1_ps(1.0f));
}
#else
#define VEC_LANES 1
#endif

/* Outputs of this many bytes and more may be written with non-temporal stores (vec_stream, on
 * addresses aligned to a whole vector): at half the last-level cache they would mostly be
 * evicted before their reader comes, and writing around the caches saves reading every line
 * before it is overwritten. A thread completes its streamed stores with vec_stream_fence()
 * before others may read them (they are weakly ordered). */
#define VEC_STREAM_MIN_BYTES ((int64_t)16 << 20)
#define vec_stream_fence _mm_sfence

/* Whether p is aligned for vec_stream. */
static inline int vec_stream_aligned(const float *p) { return (uintptr_t)p % (VEC_LANES * sizeof(float)) == 0; }

/* Copies n 4-byte elements bit for bit (float or int32), streaming from the first aligned
 * destination element (the caller fences). */
static inline void vec_stream_copy(void *dst, const void *src, int64_t n) {
  float *d = dst;
  const float *s = src;
  int64_t i = 0;
#if VEC_LANES > 1
  while (i < n && !vec_stream_aligned(d + i)) i++;
  memcpy(d, s, (size_t)i * sizeof(float));
  for (; i + VEC_LANES <= n; i += VEC_LANES) vec_stream(d + i, vec_load(s + i)); /* moves keep NaN bits */
#endif
  memcpy(d + i, s + i, (size_t)(n - i) * sizeof(float));
}

#endif
