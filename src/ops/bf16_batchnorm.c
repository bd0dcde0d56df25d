/* BatchNorm with the residual add and ReLU/ReLU6 that follow it, on blocked bfloat16 activations
 * (HAKD_BF16_BLOCKED, nChw16c) or blocked float32 ones (HAKD_F32_BLOCKED, float32 training's ResNet
 * chain), forward and backward: the op between two convolutions of a training chain, so the
 * activations never leave the layout there. The kernels are written once over a `f32` flag that
 * each caller passes as a constant, so the compiler makes one copy per layout. One pass writes
 * act(x * scale + shift + residual) instead of the three float32 passes (batchnorm, add, relu)
 * of the plain path, and backward recomputes the activation's mask from the output it kept.
 *
 * Plain C over 16-channel blocks rather than oneDNN's batch_normalization primitive: the
 * statistics are summed in double and reduced across processes exactly as batchnorm.c does
 * (SyncBN works unchanged, and the running statistics follow PyTorch's update), and the residual
 * and ReLU6 fuse in without an extra primitive. Per-channel vectors are padded to whole blocks
 * with zero weight, so the padding channels stay zero in the output and in every gradient. */
#include <math.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

typedef struct {
  int64_t n, blocks, hw; /* x is (n, blocks, hw, 16) */
} bnb_layout;

static bnb_layout bnb_layout_of(const hakd_tensor *x) {
  bnb_layout l = {x->shape[0], (x->shape[1] + 15) / 16, x->shape[2] * x->shape[3]};
  return l;
}

/* x of plane (image n, block b) */
static inline int64_t bnb_plane(bnb_layout l, int64_t n, int64_t b) { return (n * l.blocks + b) * l.hw * 16; }

/* Positions summed in float before a double takes the partial sum: short float sums keep float32
 * accuracy (64 terms) while the loops over 16 channels vectorise. */
#define BNB_CHUNK 64

#define BNB_INLINE static inline __attribute__((always_inline))

/* element k of a blocked tensor's data, bfloat16 or float32 */
BNB_INLINE float bnb_get(const void *p, int64_t k, int f32) {
  return f32 ? ((const float *)p)[k] : bf16_value(((const uint16_t *)p)[k]);
}

BNB_INLINE void bnb_put(void *p, int64_t k, float v, int f32) {
  if (f32)
    ((float *)p)[k] = v;
  else
    ((uint16_t *)p)[k] = bf16_round(v);
}

/* Per-channel sums of block b over this process's batch: sum[c] of x, or with mean of
 * (x - mean)^2. */
BNB_INLINE void bnb_sums_block(double *sum, const void *x, bnb_layout l, const double *mean, int64_t b, int f32) {
  double acc[16] = {0};
  float mu[16] = {0};
  if (mean)
    for (int c = 0; c < 16; c++) mu[c] = (float)mean[b * 16 + c];
  for (int64_t n = 0; n < l.n; n++) {
    int64_t p = bnb_plane(l, n, b);
    for (int64_t i0 = 0; i0 < l.hw; i0 += BNB_CHUNK) {
      int64_t i1 = i0 + BNB_CHUNK < l.hw ? i0 + BNB_CHUNK : l.hw;
      float part[16] = {0};
      for (int64_t i = i0; i < i1; i++)
        for (int c = 0; c < 16; c++) {
          float v = bnb_get(x, p + i * 16 + c, f32);
          if (mean) v = (v - mu[c]) * (v - mu[c]);
          part[c] += v;
        }
      for (int c = 0; c < 16; c++) acc[c] += part[c];
    }
  }
  for (int c = 0; c < 16; c++) sum[b * 16 + c] = acc[c];
}

/* The per-channel sums (padded to blocks) of every block. */
static void bnb_sums(double *sum, const void *x, bnb_layout l, const double *mean, int f32) {
  if (f32) {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t b = 0; b < l.blocks; b++) bnb_sums_block(sum, x, l, mean, b, 1);
  } else {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t b = 0; b < l.blocks; b++) bnb_sums_block(sum, x, l, mean, b, 0);
  }
}

/* dy past the activation, whose gradient mask comes from the rounded output: y in (0, hi) (hi
 * infinite for ReLU); no activation passes everything. Branch-free, so the loops vectorise. */
static inline float bnb_pass(float dy, float y, float lo, float hi) { return y > lo && y < hi ? dy : 0.0f; }

/* sums[b * 16 + c] = sum g and sums[cp + b * 16 + c] = sum g (x - mean) over block b, g the
 * gradient past the activation (cp: the channels padded to blocks) */
BNB_INLINE void bnb_grad_sums_block(double *sums, const float *dy, const void *xs, const void *ys, const float *mean,
                                    bnb_layout l, int act, float lo, float hi, int64_t b, int f32) {
  double sg[16] = {0}, sgd[16] = {0};
  const float *mu = mean + b * 16;
  for (int64_t n = 0; n < l.n; n++) {
    int64_t p = bnb_plane(l, n, b);
    for (int64_t i0 = 0; i0 < l.hw; i0 += BNB_CHUNK) {
      int64_t i1 = i0 + BNB_CHUNK < l.hw ? i0 + BNB_CHUNK : l.hw;
      float pg[16] = {0}, pgd[16] = {0};
      for (int64_t i = i0; i < i1; i++)
        for (int c = 0; c < 16; c++) {
          int64_t k = p + i * 16 + c;
          float g = act == HAKD_ACT_NONE ? dy[k] : bnb_pass(dy[k], bnb_get(ys, k, f32), lo, hi);
          pg[c] += g;
          pgd[c] += g * (bnb_get(xs, k, f32) - mu[c]);
        }
      for (int c = 0; c < 16; c++) sg[c] += pg[c], sgd[c] += pgd[c];
    }
  }
  int64_t cp = l.blocks * 16;
  for (int c = 0; c < 16; c++) {
    sums[b * 16 + c] = sg[c];
    sums[cp + b * 16 + c] = sgd[c];
  }
}

/* dx += a g + d (x - mean) + k and dr += g over plane q (image, block), g as above; = instead of
 * += for a fresh dx (fx) or dr (fr). */
BNB_INLINE void bnb_grad_plane(float *dx, float *dr, int fx, int fr, const float *dy, const void *xs, const void *ys,
                               const float *coef, const float *mean, bnb_layout l, int act, float lo, float hi,
                               int64_t q, int f32) {
  int64_t b = q % l.blocks, p = q * l.hw * 16, cp = l.blocks * 16;
  const float *a = coef + b * 16, *d = coef + cp + b * 16, *k = coef + 2 * cp + b * 16, *mu = mean + b * 16;
  float *dxp = dx ? dx + p : NULL, *drp = dr ? dr + p : NULL;
  for (int64_t i = 0; i < l.hw; i++) {
    float g[16];
    for (int c = 0; c < 16; c++) {
      float gy = dy[p + i * 16 + c];
      g[c] = act == HAKD_ACT_NONE ? gy : bnb_pass(gy, bnb_get(ys, p + i * 16 + c, f32), lo, hi);
    }
    float v[16];
    for (int c = 0; c < 16; c++) v[c] = a[c] * g[c] + d[c] * (bnb_get(xs, p + i * 16 + c, f32) - mu[c]) + k[c];
    if (dxp && fx)
      memcpy(dxp + i * 16, v, sizeof v);
    else if (dxp)
      for (int c = 0; c < 16; c++) dxp[i * 16 + c] += v[c];
    if (drp && fr)
      memcpy(drp + i * 16, g, sizeof g);
    else if (drp)
      for (int c = 0; c < 16; c++) drp[i * 16 + c] += g[c];
  }
}

/* y = act(x * scale + shift + residual) over plane q (image, block). */
BNB_INLINE void bnb_forward_plane(void *yd, const void *xd, const void *rd, const float *scale, const float *shift,
                                  bnb_layout l, float lo, float hi, int64_t q, int f32) {
  int64_t b = q % l.blocks, p = q * l.hw * 16;
  const float *sc = scale + b * 16, *sh = shift + b * 16;
  for (int64_t i = 0; i < l.hw; i++)
    for (int c = 0; c < 16; c++) { /* compares, not fminf/fmaxf (as conv2d_affine_act) */
      int64_t e = p + i * 16 + c;
      float v = bnb_get(xd, e, f32) * sc[c] + sh[c];
      if (rd) v += bnb_get(rd, e, f32);
      v = v < lo ? lo : v;
      bnb_put(yd, e, v > hi ? hi : v, f32);
    }
}

/* saved[0] mean, saved[1] rstd, saved[2] weight (floats padded to blocks); iarg[0] batch statistics,
 * iarg[1] SyncBN, iarg[2] activation; farg[0] the values per channel behind the statistics. */
static void bnb_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *weight = node->in[1], *bias = node->in[2];
  hakd_tensor *residual = node->n_in > 3 ? node->in[3] : NULL;
  /* gradients are written (=) where they are fresh (hakd_grad_fresh), else added to */
  int fx = 0, fw = 0, fb = 0, fr = 0;
  float *dx = hakd_grad_fresh(ctx, x, &fx), *dw = hakd_grad_fresh(ctx, weight, &fw);
  float *db = hakd_grad_fresh(ctx, bias, &fb), *dr = hakd_grad_fresh(ctx, residual, &fr);
  if (hakd_ctx_status(ctx)) return;
  bnb_layout l = bnb_layout_of(x);
  int64_t c_real = x->shape[1], cp = l.blocks * 16;
  const float *mean = node->saved[0], *rstd = node->saved[1], *w = node->saved[2], *dy = node->out->grad;
  const void *xs = x->data, *ys = node->out->data;
  int act = (int)node->iarg[2], batch_stats = (int)node->iarg[0], f32 = x->dtype == HAKD_F32_BLOCKED;
  double m = node->farg[0];
  /* sums[c] = sum g, sums[cp + c] = sum g (x - mean), g the gradient past the activation */
  double *sums = hakd_ctx_alloc(ctx, 4 * (size_t)cp * sizeof(double));
  if (!sums) return;
  float lo = act == HAKD_ACT_NONE ? -INFINITY : 0.0f, hi = act == HAKD_ACT_RELU6 ? 6.0f : INFINITY;
  if (f32) {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t b = 0; b < l.blocks; b++) bnb_grad_sums_block(sums, dy, xs, ys, mean, l, act, lo, hi, b, 1);
  } else {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t b = 0; b < l.blocks; b++) bnb_grad_sums_block(sums, dy, xs, ys, mean, l, act, lo, hi, b, 0);
  }
  for (int64_t c = 0; c < c_real; c++) {
    if (db) db[c] = (fb ? 0.0f : db[c]) + (float)sums[c];
    if (dw) dw[c] = (fw ? 0.0f : dw[c]) + (float)(sums[cp + c] * rstd[c]);
  }
  if (!dx && !dr) return;
  /* SyncBN: the statistics' gradient terms are the global sums (batchnorm.c says why) */
  double *global = sums;
  if (batch_stats && node->iarg[1]) {
    global = sums + 2 * cp;
    memcpy(global, sums, 2 * (size_t)cp * sizeof *global);
    if (hakd_ctx_allreduce_sum(ctx, global, 2 * cp)) return;
  }
  float *coef = hakd_ctx_alloc(ctx, 3 * (size_t)cp * sizeof(float)); /* a, d, k per channel */
  if (!coef) return;
  for (int64_t c = 0; c < cp; c++) {
    double r = rstd[c], k_dy = w[c] * r, k_mean = 0.0, k_dev = 0.0;
    if (batch_stats) {
      k_mean = -k_dy * global[c] / m;
      k_dev = -k_dy * r * r * global[cp + c] / m;
    }
    coef[c] = (float)k_dy, coef[cp + c] = (float)k_dev, coef[2 * cp + c] = (float)k_mean;
  }
  if (f32) {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t q = 0; q < l.n * l.blocks; q++) bnb_grad_plane(dx, dr, fx, fr, dy, xs, ys, coef, mean, l, act, lo, hi, q, 1);
  } else {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t q = 0; q < l.n * l.blocks; q++) bnb_grad_plane(dx, dr, fx, fr, dy, xs, ys, coef, mean, l, act, lo, hi, q, 0);
  }
}

static int bnb_check_vector(hakd_ctx *ctx, const hakd_tensor *t, const char *what, int64_t c) {
  if (!t || (t->dtype == HAKD_F32 && t->ndim == 1 && t->shape[0] == c)) return 1;
  char buf[64];
  hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: %s %s must be (%lld)", what, hakd_shape_str(t, buf, sizeof buf),
                (long long)c);
  return 0;
}

hakd_tensor *hakd_batchnorm2d_act(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                                  hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps,
                                  hakd_tensor *residual, hakd_activation act) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  if (x->dtype == HAKD_F32)
    return batchnorm2d_act_f32(ctx, x, weight, bias, running_mean, running_var, momentum, eps, residual, act);
  char xs[64], rs[64];
  if (!HAKD_IS_BLOCKED(x) || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: input must be float32 or blocked (N, C, H, W), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (residual && (residual->dtype != x->dtype || !hakd_same_shape(residual, x)))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: residual %s must be in the layout of the input %s",
                         hakd_shape_str(residual, rs, sizeof rs), hakd_shape_str(x, xs, sizeof xs));
  int f32 = x->dtype == HAKD_F32_BLOCKED;
  bnb_layout l = bnb_layout_of(x);
  int64_t c_real = x->shape[1], cp = l.blocks * 16;
  if (!bnb_check_vector(ctx, weight, "weight", c_real) || !bnb_check_vector(ctx, bias, "bias", c_real) ||
      !bnb_check_vector(ctx, running_mean, "running_mean", c_real) ||
      !bnb_check_vector(ctx, running_var, "running_var", c_real))
    return NULL;
  if (!(eps > 0.0f)) return hakd_ctx_fail(ctx, HAKD_EINVAL, "batchnorm2d_act: eps %g must be positive", (double)eps);
  int batch_stats = hakd_ctx_training(ctx), sync = batch_stats && hakd_ctx_sync_bn(ctx);
  if (batch_stats && l.n * l.hw < 2 && !sync)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: training needs more than 1 value per channel, input %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (!batch_stats && (!running_mean || !running_var))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "batchnorm2d_act: eval mode needs running_mean and running_var");
  hakd_tensor *y = hakd_tensor_new(ctx, x->dtype, 4, x->shape);
  float *vec = hakd_ctx_alloc(ctx, 5 * (size_t)cp * sizeof(float)); /* mean, rstd, weight, scale, shift */
  double *stats = hakd_ctx_alloc(ctx, (2 * (size_t)cp + 1) * sizeof(double));
  if (!y || !vec || !stats) return NULL;
  memset(vec, 0, 5 * (size_t)cp * sizeof(float));
  float *mean = vec, *rstd = vec + cp, *w = vec + 2 * cp, *scale = vec + 3 * cp, *shift = vec + 4 * cp;
  const void *xd = x->data;
  double count = (double)(l.n * l.hw);
  if (batch_stats) {
    double *bmean = stats + 1, *bvar = stats + 1 + cp; /* stats[0]: the count travels with the sums */
    bnb_sums(bmean, xd, l, NULL, f32);
    stats[0] = count;
    if (sync && hakd_ctx_allreduce_sum(ctx, stats, 1 + cp)) return NULL;
    count = stats[0];
    for (int64_t c = 0; c < cp; c++) bmean[c] /= count;
    bnb_sums(bvar, xd, l, bmean, f32);
    if (sync && hakd_ctx_allreduce_sum(ctx, bvar, cp)) return NULL;
    if (count < 2)
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: training needs more than 1 value per channel, input %s",
                           hakd_shape_str(x, xs, sizeof xs));
    for (int64_t c = 0; c < c_real; c++) {
      bvar[c] /= count;
      mean[c] = (float)bmean[c];
      rstd[c] = (float)(1.0 / sqrt(bvar[c] + (double)eps));
    }
    if (running_mean && running_var) { /* PyTorch's update, unbiased variance (as batchnorm.c) */
      float *rm = hakd_f32(running_mean), *rv = hakd_f32(running_var);
      for (int64_t c = 0; c < c_real; c++) {
        rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * bmean[c]);
        rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * bvar[c] * count / (count - 1.0));
      }
    }
  } else {
    const float *rm = hakd_f32(running_mean), *rv = hakd_f32(running_var);
    for (int64_t c = 0; c < c_real; c++) {
      mean[c] = rm[c];
      rstd[c] = (float)(1.0 / sqrt((double)rv[c] + (double)eps));
    }
  }
  for (int64_t c = 0; c < c_real; c++) {
    w[c] = weight ? hakd_f32(weight)[c] : 1.0f;
    scale[c] = rstd[c] * w[c];
    shift[c] = (bias ? hakd_f32(bias)[c] : 0.0f) - mean[c] * scale[c];
  }
  const void *rd = residual ? residual->data : NULL;
  void *yd = y->data;
  float hi = act == HAKD_ACT_RELU6 ? 6.0f : INFINITY, lo = act == HAKD_ACT_NONE ? -INFINITY : 0.0f;
  if (f32) {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t q = 0; q < l.n * l.blocks; q++) bnb_forward_plane(yd, xd, rd, scale, shift, l, lo, hi, q, 1);
  } else {
#pragma omp parallel for schedule(static) if (l.n * l.blocks * l.hw > 2048)
    for (int64_t q = 0; q < l.n * l.blocks; q++) bnb_forward_plane(yd, xd, rd, scale, shift, l, lo, hi, q, 0);
  }
  hakd_tensor *inputs[4] = {x, weight, bias, residual};
  hakd_node *node = hakd_record(ctx, "batchnorm2d_act", bnb_backward, y, residual ? 4 : 3, inputs);
  if (node) {
    node->iarg[0] = batch_stats;
    node->iarg[1] = sync;
    node->iarg[2] = act;
    node->farg[0] = count;
    node->saved[0] = mean;
    node->saved[1] = rstd;
    node->saved[2] = w;
    if (residual) hakd_node_unneeded(ctx, node, 3);
    if (act == HAKD_ACT_NONE) hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}
