/* The weighted KL term shared by KD, CWD and L_hakd, the MSE of FitNet, and the KD / CWD losses. */
#include <math.h>
#include <string.h>

#include "distill/distill_internal.h"
#include "hakd/ops.h"
#include "ops/vecmath.h"

/* Fixed number of partial sums, so the total does not depend on the thread count. */
#define KL_CHUNKS 64
/* Consecutive `inner` positions handled together, so the class-axis softmax reads rows. */
#define KL_TILE 64
/* Elements above which the loops are worth an OpenMP team. */
#define KL_PARALLEL_MIN 16384

static double softplus(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }

/* Weighted KL of the softmax groups (o, i0..i0+n) and, when grad is not NULL, their gradient
 * coefficients, in float32 like PyTorch, on VEC_LANES positions at a time (the softmax runs along
 * len, stride inner, so neighbouring positions are independent lanes). grad, s, t: (outer, len,
 * inner); weights: (outer*inner) or NULL.
 * reference: F.kl_div(F.log_softmax(s/T), F.softmax(t/T), reduction="none").sum(len axis) */
static double kl_softmax_tile(float *grad, const float *s, const float *t, const float *weights, int64_t o,
                              int64_t i0, int n, int64_t len, int64_t inner, float inv_T, double scale) {
  const float *sb = s + o * len * inner + i0, *tb = t + o * len * inner + i0;
  float *gb = grad ? grad + o * len * inner + i0 : NULL;
  const float *wb = weights ? weights + o * inner + i0 : NULL;
  double total = 0.0;
  int j = 0;
#if VEC_LANES > 1
  const vec_f32 iv = vec_set1(inv_T);
  for (; j + VEC_LANES <= n; j += VEC_LANES) {
    vec_f32 max_s = vec_set1(-INFINITY), max_t = max_s, sum_s = vec_zero(), sum_t = vec_zero(), kl = vec_zero();
    for (int64_t l = 0; l < len; l++) {
      max_s = vec_max(vec_mul(vec_load(sb + l * inner + j), iv), max_s);
      max_t = vec_max(vec_mul(vec_load(tb + l * inner + j), iv), max_t);
    }
    for (int64_t l = 0; l < len; l++) {
      sum_s = vec_add(sum_s, vec_expf(vec_sub(vec_mul(vec_load(sb + l * inner + j), iv), max_s)));
      sum_t = vec_add(sum_t, vec_expf(vec_sub(vec_mul(vec_load(tb + l * inner + j), iv), max_t)));
    }
    vec_f32 lse_s = vec_add(max_s, vec_logf(sum_s)), lse_t = vec_add(max_t, vec_logf(sum_t));
    vec_f32 coef = vec_set1((float)scale);
    if (wb) coef = vec_mul(coef, vec_load(wb + j));
    vec_f32 gcoef = vec_mul(coef, iv);
    for (int64_t l = 0; l < len; l++) {
      vec_f32 log_r = vec_sub(vec_mul(vec_load(sb + l * inner + j), iv), lse_s);
      vec_f32 log_q = vec_sub(vec_mul(vec_load(tb + l * inner + j), iv), lse_t);
      vec_f32 q = vec_expf(log_q);
      kl = vec_add(kl, vec_mul(q, vec_sub(log_q, log_r)));
      if (gb) vec_store(gb + l * inner + j, vec_mul(gcoef, vec_sub(vec_expf(log_r), q)));
    }
    total += (double)vec_reduce_add(vec_mul(coef, kl));
  }
#endif
  for (; j < n; j++) {
    float max_s = -INFINITY, max_t = -INFINITY, sum_s = 0.0f, sum_t = 0.0f, kl = 0.0f;
    for (int64_t l = 0; l < len; l++) {
      max_s = fmaxf(sb[l * inner + j] * inv_T, max_s);
      max_t = fmaxf(tb[l * inner + j] * inv_T, max_t);
    }
    for (int64_t l = 0; l < len; l++) {
      sum_s += expf(sb[l * inner + j] * inv_T - max_s);
      sum_t += expf(tb[l * inner + j] * inv_T - max_t);
    }
    float lse_s = max_s + logf(sum_s), lse_t = max_t + logf(sum_t);
    float coef = (float)scale * (wb ? wb[j] : 1.0f);
    for (int64_t l = 0; l < len; l++) {
      float log_r = sb[l * inner + j] * inv_T - lse_s, log_q = tb[l * inner + j] * inv_T - lse_t;
      float q = expf(log_q);
      kl += q * (log_q - log_r);
      if (gb) gb[l * inner + j] = coef * inv_T * (expf(log_r) - q);
    }
    total += (double)(coef * kl);
  }
  return total;
}

/* Per element Bernoulli KL of sigmoid(t/T) || sigmoid(s/T), elements [begin, end).
 * reference: q*(logsigmoid(a)-logsigmoid(b)) + (1-q)*(logsigmoid(-a)-logsigmoid(-b)) */
static double kl_bernoulli_range(float *grad, const float *s, const float *t, const float *weights, int64_t begin,
                                 int64_t end, double inv_T, double scale) {
  double total = 0.0;
  for (int64_t e = begin; e < end; e++) {
    double coef = scale * (weights ? (double)weights[e] : 1.0);
    double a = t[e] * inv_T, b = s[e] * inv_T;
    double log_q = -softplus(-a), log_1mq = -softplus(a), log_r = -softplus(-b), log_1mr = -softplus(b);
    double q = exp(log_q);
    if (coef != 0.0) total += coef * (q * (log_q - log_r) + (1.0 - q) * (log_1mq - log_1mr));
    if (grad) grad[e] = (float)(coef * (exp(log_r) - q) * inv_T);
  }
  return total;
}

/* ds += dL * saved coefficients. */
static void kl_backward(hakd_ctx *ctx, hakd_node *node) {
  float *gs = hakd_grad(ctx, node->in[0]);
  if (!gs) return;
  const float *coef = node->saved[0];
  float g = node->out->grad[0];
  int64_t n = hakd_numel(node->in[0]);
#pragma omp parallel for schedule(static) if (n > KL_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) gs[i] += g * coef[i];
}

static hakd_tensor *scalar_tensor(hakd_ctx *ctx, double value) {
  int64_t shape[1] = {1};
  hakd_tensor *out = hakd_tensor_new(ctx, HAKD_F32, 1, shape);
  if (out) hakd_f32(out)[0] = (float)value;
  return out;
}

hakd_tensor *distill_kl(hakd_ctx *ctx, hakd_tensor *s, const float *target, const float *weights,
                        distill_kl_kind kind, int64_t outer, int64_t len, int64_t inner, float T, double scale) {
  if (!s || !target) return NULL;
  if (s->dtype != HAKD_F32 || hakd_numel(s) != outer * len * inner)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "distill_kl: %lld elements, expected %lld x %lld x %lld",
                         (long long)hakd_numel(s), (long long)outer, (long long)len, (long long)inner);
  if (!(T > 0.0f)) return hakd_ctx_fail(ctx, HAKD_EINVAL, "distillation temperature %g must be > 0", T);
  int record = hakd_ctx_grad(ctx) && s->requires_grad;
  float *grad = NULL;
  if (record) {
    grad = hakd_ctx_alloc(ctx, (size_t)hakd_numel(s) * sizeof(float));
    if (!grad) return NULL;
  }
  const float *sd = hakd_f32(s);
  double inv_T = 1.0 / (double)T;
  double partial[KL_CHUNKS];
  int64_t units = kind == DISTILL_KL_SOFTMAX ? outer * ((inner + KL_TILE - 1) / KL_TILE) : outer * len * inner;
  int64_t tiles_per_outer = (inner + KL_TILE - 1) / KL_TILE;
  int64_t per_chunk = (units + KL_CHUNKS - 1) / KL_CHUNKS;
#pragma omp parallel for schedule(static) if (outer * len * inner > KL_PARALLEL_MIN)
  for (int c = 0; c < KL_CHUNKS; c++) {
    int64_t begin = c * per_chunk, end = begin + per_chunk < units ? begin + per_chunk : units;
    double acc = 0.0;
    if (kind == DISTILL_KL_BERNOULLI) {
      if (begin < end) acc = kl_bernoulli_range(grad, sd, target, weights, begin, end, inv_T, scale);
    } else {
      for (int64_t u = begin; u < end; u++) {
        int64_t o = u / tiles_per_outer, i0 = (u % tiles_per_outer) * KL_TILE;
        int n = (int)(inner - i0 < KL_TILE ? inner - i0 : KL_TILE);
        acc += kl_softmax_tile(grad, sd, target, weights, o, i0, n, len, inner, (float)inv_T, scale);
      }
    }
    partial[c] = acc;
  }
  double total = 0.0;
  for (int c = 0; c < KL_CHUNKS; c++) total += partial[c];
  hakd_tensor *out = scalar_tensor(ctx, total);
  if (!out) return NULL;
  hakd_node *node = hakd_record(ctx, "distill_kl", kl_backward, out, 1, &s);
  if (node) node->saved[0] = grad;
  return out;
}

/* ---- MSE ---- */

/* dx += dL * 2 (x - target) / n. */
static void mse_backward(hakd_ctx *ctx, hakd_node *node) {
  float *gx = hakd_grad(ctx, node->in[0]);
  if (!gx) return;
  const float *x = hakd_f32(node->in[0]), *target = node->saved[0];
  int64_t n = hakd_numel(node->in[0]);
  float g = (float)(node->out->grad[0] * 2.0 / (double)n);
#pragma omp parallel for schedule(static) if (n > KL_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) gx[i] += g * (x[i] - target[i]);
}

hakd_tensor *hakd_loss_mse(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *target) {
  if (!x || !target) return NULL;
  if (x->dtype != HAKD_F32 || target->dtype != HAKD_F32 || !hakd_same_shape(x, target)) {
    char a[64], b[64];
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "mse loss: input %s and target %s differ", hakd_shape_str(x, a, sizeof a),
                         hakd_shape_str(target, b, sizeof b));
  }
  int64_t n = hakd_numel(x);
  const float *xd = hakd_f32(x), *td = hakd_f32(target);
  double partial[KL_CHUNKS];
  int64_t per_chunk = (n + KL_CHUNKS - 1) / KL_CHUNKS;
#pragma omp parallel for schedule(static) if (n > KL_PARALLEL_MIN)
  for (int c = 0; c < KL_CHUNKS; c++) {
    int64_t begin = c * per_chunk, end = begin + per_chunk < n ? begin + per_chunk : n;
    double acc = 0.0;
    for (int64_t i = begin; i < end; i++) {
      double d = (double)xd[i] - (double)td[i];
      acc += d * d;
    }
    partial[c] = acc;
  }
  double total = 0.0;
  for (int c = 0; c < KL_CHUNKS; c++) total += partial[c];
  hakd_tensor *out = scalar_tensor(ctx, n ? total / (double)n : 0.0);
  if (!out) return NULL;
  hakd_node *node = hakd_record(ctx, "mse_loss", mse_backward, out, 1, &x);
  if (node) node->saved[0] = (void *)td;
  return out;
}

/* ---- KD and CWD ---- */

/* t as a constant on s's grid: checks (N, C) and resizes bilinearly when h x w differ. */
static hakd_tensor *teacher_on_grid(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, const char *what) {
  if (!s || !t) return NULL;
  char a[64], b[64];
  if (s->ndim != 4 || t->ndim != 4 || s->dtype != HAKD_F32 || t->dtype != HAKD_F32 || s->shape[0] != t->shape[0] ||
      s->shape[1] != t->shape[1])
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: student %s and teacher %s must be float (N, C, H, W) with equal N, C",
                         what, hakd_shape_str(s, a, sizeof a), hakd_shape_str(t, b, sizeof b));
  hakd_tensor *c = hakd_detach(ctx, t);
  if (c && (t->shape[2] != s->shape[2] || t->shape[3] != s->shape[3]))
    c = hakd_resize_bilinear(ctx, c, s->shape[2], s->shape[3], 0);
  return c;
}

hakd_tensor *hakd_loss_kd(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T) {
  hakd_tensor *tc = teacher_on_grid(ctx, s, t, "kd loss");
  if (!tc) return NULL;
  int64_t n = s->shape[0], k = s->shape[1], hw = s->shape[2] * s->shape[3];
  double pixels = (double)(n * hw);
  return distill_kl(ctx, s, hakd_f32(tc), NULL, DISTILL_KL_SOFTMAX, n, k, hw, T,
                    pixels > 0 ? (double)T * T / pixels : 0.0);
}

hakd_tensor *hakd_loss_cwd(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T) {
  hakd_tensor *tc = teacher_on_grid(ctx, s, t, "cwd loss");
  if (!tc) return NULL;
  int64_t n = s->shape[0], c = s->shape[1], hw = s->shape[2] * s->shape[3];
  double maps = (double)(n * c);
  return distill_kl(ctx, s, hakd_f32(tc), NULL, DISTILL_KL_SOFTMAX, n * c, hw, 1, T,
                    maps > 0 ? (double)T * T / maps : 0.0);
}
