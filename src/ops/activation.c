/* Pointwise activations. */
#include <immintrin.h>
#include <math.h>

#include "hakd/ops.h"

/* glibc's vector math (libmvec, glibc >= 2.35): erf and exp on whole registers, called directly
 * because GCC only vectorises math calls itself under -ffast-math, which we do not use. */
#if defined(__AVX512F__)
#define GELU_LANES 16
typedef __m512 gelu_vec;
__m512 _ZGVeN16v_erff(__m512);
__m512 _ZGVeN16v_expf(__m512);
#define gelu_erf _ZGVeN16v_erff
#define gelu_exp _ZGVeN16v_expf
#define gelu_load _mm512_loadu_ps
#define gelu_store _mm512_storeu_ps
#define gelu_set1 _mm512_set1_ps
#define gelu_add _mm512_add_ps
#define gelu_mul _mm512_mul_ps
#elif defined(__AVX2__)
#define GELU_LANES 8
typedef __m256 gelu_vec;
__m256 _ZGVdN8v_erff(__m256);
__m256 _ZGVdN8v_expf(__m256);
#define gelu_erf _ZGVdN8v_erff
#define gelu_exp _ZGVdN8v_expf
#define gelu_load _mm256_loadu_ps
#define gelu_store _mm256_storeu_ps
#define gelu_set1 _mm256_set1_ps
#define gelu_add _mm256_add_ps
#define gelu_mul _mm256_mul_ps
#else
#define GELU_LANES 1
#endif

/* y = 0.5 x (1 + erf(x / sqrt 2)) over n elements. */
static void gelu_forward(float *y, const float *x, int64_t n) {
  int64_t vec_end = 0;
#if GELU_LANES > 1
  vec_end = n / GELU_LANES * GELU_LANES;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < vec_end; i += GELU_LANES) {
    gelu_vec v = gelu_load(x + i);
    gelu_vec e = gelu_erf(gelu_mul(v, gelu_set1((float)M_SQRT1_2)));
    gelu_store(y + i, gelu_mul(gelu_mul(gelu_set1(0.5f), v), gelu_add(gelu_set1(1.0f), e)));
  }
#endif
  for (int64_t i = vec_end; i < n; i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * (float)M_SQRT1_2));
}

/* dx += dy * (0.5 (1 + erf(x / sqrt 2)) + x exp(-x^2 / 2) / sqrt(2 pi)). */
static void gelu_backward(float *dx, const float *dy, const float *x, int64_t n) {
  const float inv_sqrt_2pi = 0.3989422804014327f;
  int64_t vec_end = 0;
#if GELU_LANES > 1
  vec_end = n / GELU_LANES * GELU_LANES;
#pragma omp parallel for schedule(static) if (n > 32768)
  for (int64_t i = 0; i < vec_end; i += GELU_LANES) {
    gelu_vec v = gelu_load(x + i);
    gelu_vec cdf = gelu_mul(gelu_set1(0.5f), gelu_add(gelu_set1(1.0f), gelu_erf(gelu_mul(v, gelu_set1((float)M_SQRT1_2)))));
    gelu_vec pdf = gelu_mul(gelu_set1(inv_sqrt_2pi), gelu_exp(gelu_mul(gelu_set1(-0.5f), gelu_mul(v, v))));
    gelu_vec d = gelu_add(cdf, gelu_mul(v, pdf));
    gelu_store(dx + i, gelu_add(gelu_load(dx + i), gelu_mul(gelu_load(dy + i), d)));
  }
#endif
  for (int64_t i = vec_end; i < n; i++)
    dx[i] += dy[i] * (0.5f * (1.0f + erff(x[i] * (float)M_SQRT1_2)) + x[i] * inv_sqrt_2pi * expf(-0.5f * x[i] * x[i]));
}

typedef enum { ACT_RELU, ACT_RELU6, ACT_GELU, ACT_SIGMOID } activation_kind;

static void activation_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *y = node->out;
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  activation_kind kind = (activation_kind)node->iarg[0];
  const float *xs = hakd_f32(x), *ys = hakd_f32(y), *dy = y->grad;
  int64_t n = hakd_numel(x);
  switch (kind) {
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) dx[i] += xs[i] > 0.0f ? dy[i] : 0.0f;
      break;
    case ACT_RELU6:
#pragma omp parallel for simd schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) dx[i] += (xs[i] > 0.0f && xs[i] < 6.0f) ? dy[i] : 0.0f;
      break;
    case ACT_GELU: gelu_backward(dx, dy, xs, n); break;
    case ACT_SIGMOID:
#pragma omp parallel for simd schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) dx[i] += dy[i] * ys[i] * (1.0f - ys[i]);
      break;
  }
}

static const char *const activation_names[] = {"relu", "relu6", "gelu", "sigmoid"};

static hakd_tensor *activation(hakd_ctx *ctx, hakd_tensor *x, activation_kind kind) {
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: input must be float32", activation_names[kind]);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  if (!y) return NULL;
  const float *xs = hakd_f32(x);
  float *ys = hakd_f32(y);
  int64_t n = hakd_numel(x);
  /* One loop per kind: a branch-free body the compiler vectorises (relu/relu6 were 15x slower
   * through the per-element switch). */
  switch (kind) {
    case ACT_RELU:
#pragma omp parallel for simd schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) ys[i] = xs[i] > 0.0f ? xs[i] : 0.0f;
      break;
    case ACT_RELU6:
#pragma omp parallel for simd schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) ys[i] = fminf(fmaxf(xs[i], 0.0f), 6.0f);
      break;
    case ACT_GELU: gelu_forward(ys, xs, n); break;
    case ACT_SIGMOID:
#pragma omp parallel for schedule(static) if (n > 32768)
      for (int64_t i = 0; i < n; i++) ys[i] = 1.0f / (1.0f + expf(-xs[i]));
      break;
  }
  hakd_node *node = hakd_record(ctx, activation_names[kind], activation_backward, y, 1, &x);
  if (node) node->iarg[0] = kind;
  return y;
}

hakd_tensor *hakd_relu(hakd_ctx *ctx, hakd_tensor *x) { return activation(ctx, x, ACT_RELU); }
hakd_tensor *hakd_relu6(hakd_ctx *ctx, hakd_tensor *x) { return activation(ctx, x, ACT_RELU6); }
hakd_tensor *hakd_gelu(hakd_ctx *ctx, hakd_tensor *x) { return activation(ctx, x, ACT_GELU); }
hakd_tensor *hakd_sigmoid(hakd_ctx *ctx, hakd_tensor *x) { return activation(ctx, x, ACT_SIGMOID); }
