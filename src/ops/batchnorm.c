/* Batch normalisation over (N, C, H, W) or (N, C): statistics per channel C. */
#include <math.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Sums with 8 independent double accumulators: exact enough for millions of fp32 terms and
 * vectorisable without reassociating (no -ffast-math). */
static double bn_sum(const float *x, int64_t n) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += x[i + k];
  for (; i < n; i++) acc[0] += x[i];
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* sum (x - mean)^2 */
static double bn_sum_sq_dev(const float *x, int64_t n, double mean) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) {
      double d = x[i + k] - mean;
      acc[k] += d * d;
    }
  for (; i < n; i++) acc[0] += (x[i] - mean) * (x[i] - mean);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* sum dy * (x - mean) */
static double bn_sum_dy_dev(const float *dy, const float *x, int64_t n, double mean) {
  double acc[8] = {0};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += dy[i + k] * (x[i + k] - mean);
  for (; i < n; i++) acc[0] += dy[i] * (x[i] - mean);
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* Layout of x as (outer, C, inner): (N, C, H*W) or (N, C, 1). */
typedef struct {
  int64_t n, c, hw;
} bn_layout;

static bn_layout bn_layout_of(const hakd_tensor *x) {
  bn_layout l = {x->shape[0], x->shape[1], x->ndim == 4 ? x->shape[2] * x->shape[3] : 1};
  return l;
}

/* Per-channel batch mean and biased variance (double) over the batch of every process when
 * the context synchronises BatchNorm (SyncBN: each sum is reduced before it is used, so the
 * statistics are those of the global batch); returns the values per channel behind them (the
 * global count), or -1 when a reduction failed (the context holds the error). (N, C) inputs are
 * strided per channel, so they are summed element by element. */
static double bn_batch_stats(hakd_ctx *ctx,
                             double *mean,   /* (C) */
                             double *var,    /* (C), biased */
                             const float *x, /* (N, C, hw) */
                             bn_layout l) {
  int sync = hakd_ctx_sync_bn(ctx);
  double m = (double)(l.n * l.hw);
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t c = 0; c < l.c; c++) {
    double sum = 0.0;
    for (int64_t n = 0; n < l.n; n++) sum += bn_sum(x + (n * l.c + c) * l.hw, l.hw);
    mean[c] = sum;
  }
  if (sync) {
    var[0] = m; /* the count travels with the sums */
    double *red = var + 1;
    memcpy(red, mean, (size_t)l.c * sizeof *red);
    if (hakd_ctx_allreduce_sum(ctx, var, l.c + 1)) return -1;
    m = var[0];
    memcpy(mean, red, (size_t)l.c * sizeof *mean);
  }
  for (int64_t c = 0; c < l.c; c++) mean[c] /= m;
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t c = 0; c < l.c; c++) {
    double sq = 0.0;
    for (int64_t n = 0; n < l.n; n++) sq += bn_sum_sq_dev(x + (n * l.c + c) * l.hw, l.hw, mean[c]);
    var[c] = sq;
  }
  if (sync && hakd_ctx_allreduce_sum(ctx, var, l.c)) return -1;
  for (int64_t c = 0; c < l.c; c++) var[c] /= m;
  return m;
}

/* The per-channel coefficients of dx = a dy + d (x - mean) + b (coef[c] = a, coef[C + c] = b,
 * coef[2C + c] = d) from this process's sums[c] = sum dy, sums[C + c] = sum dy (x - mean) (sums has
 * room for 4C doubles). Batch statistics: dx = w r (dy - mean(dy) - xhat mean(dy xhat)); running
 * statistics are constants: dx = w r dy. SyncBN: the statistics came from every process, so their
 * gradient terms are the global sums (each process's dy is the gradient of its own loss; the
 * averaging of the parameter gradients over the processes completes the global gradient, as in
 * PyTorch's SyncBatchNorm). 0, or -1 when the reduction failed (the context holds the error). */
static int bn_grad_coefs(hakd_ctx *ctx, const hakd_node *node, double *sums, int64_t channels, const float *w,
                         const float *rstd, float *coef) {
  int batch_stats = (int)node->iarg[0];
  double m = node->farg[0], *global = sums;
  if (batch_stats && node->iarg[1]) {
    global = sums + 2 * channels;
    memcpy(global, sums, 2 * (size_t)channels * sizeof *global);
    if (hakd_ctx_allreduce_sum(ctx, global, 2 * channels)) return -1;
  }
  for (int64_t c = 0; c < channels; c++) {
    double r = rstd[c], scale = w ? w[c] : 1.0;
    double k_dy = scale * r, k_mean = 0.0, k_dev = 0.0;
    if (batch_stats) {
      k_mean = -k_dy * global[c] / m;
      k_dev = -k_dy * r * r * global[channels + c] / m;
    }
    coef[c] = (float)k_dy, coef[channels + c] = (float)k_mean, coef[2 * channels + c] = (float)k_dev;
  }
  return 0;
}

/* Forward saved mean/rstd (saved[0], saved[1], floats (C)); iarg[0] = batch statistics used,
 * farg[0] = the values per channel behind them (global under SyncBN). */
static void batchnorm_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *weight = node->in[1], *bias = node->in[2];
  float *dx = hakd_grad(ctx, x), *dw = hakd_grad(ctx, weight), *db = hakd_grad(ctx, bias);
  if (hakd_ctx_status(ctx)) return;
  bn_layout l = bn_layout_of(x);
  const float *xs = hakd_f32(x), *dy = node->out->grad, *w = weight ? hakd_f32(weight) : NULL;
  const float *mean = node->saved[0], *rstd = node->saved[1];
  /* sums[c] = sum dy, sums[C + c] = sum dy (x - mean), over this process's batch */
  double *sums = hakd_ctx_alloc(ctx, 4 * (size_t)l.c * sizeof(double));
  if (!sums) return;
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t c = 0; c < l.c; c++) {
    double sum_dy = 0.0, sum_dy_dev = 0.0, mu = mean[c];
    for (int64_t n = 0; n < l.n; n++) {
      const float *dyp = dy + (n * l.c + c) * l.hw, *xp = xs + (n * l.c + c) * l.hw;
      sum_dy += bn_sum(dyp, l.hw);
      sum_dy_dev += bn_sum_dy_dev(dyp, xp, l.hw, mu);
    }
    sums[c] = sum_dy;
    sums[l.c + c] = sum_dy_dev;
    if (db) db[c] += (float)sum_dy;
    if (dw) dw[c] += (float)(sum_dy_dev * rstd[c]);
  }
  if (!dx) return;
  float *coef = hakd_ctx_alloc(ctx, 3 * (size_t)l.c * sizeof(float));
  if (!coef || bn_grad_coefs(ctx, node, sums, l.c, w, rstd, coef)) return;
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t c = 0; c < l.c; c++) {
    float a = coef[c], b = coef[l.c + c], d = coef[2 * l.c + c], muf = mean[c];
    for (int64_t n = 0; n < l.n; n++) {
      const float *dyp = dy + (n * l.c + c) * l.hw, *xp = xs + (n * l.c + c) * l.hw;
      float *dxp = dx + (n * l.c + c) * l.hw;
      for (int64_t i = 0; i < l.hw; i++) dxp[i] += a * dyp[i] + d * (xp[i] - muf) + b;
    }
  }
}

static int bn_check_vector(hakd_ctx *ctx, const hakd_tensor *t, const char *what, int64_t c) {
  if (!t) return 1;
  if (t->dtype != HAKD_F32 || t->ndim != 1 || t->shape[0] != c) {
    char buf[64];
    hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d: %s %s must be (%lld)", what, hakd_shape_str(t, buf, sizeof buf),
                  (long long)c);
    return 0;
  }
  return 1;
}

/* The checks and statistics both float32 BatchNorm ops share (`what` names the op in messages):
 * batch statistics in training (SyncBN-reduced), PyTorch's running-statistics update, or the
 * running statistics in eval mode; *mean, *rstd (C floats from ctx), *count the values per
 * channel behind them. 0, or -1 with the error in ctx. */
static int bn_forward_stats(hakd_ctx *ctx, const char *what, const hakd_tensor *x, bn_layout l,
                            const hakd_tensor *weight, const hakd_tensor *bias, hakd_tensor *running_mean,
                            hakd_tensor *running_var, float momentum, float eps, float **mean_out, float **rstd_out,
                            double *count_out, int *batch_stats_out, int *sync_out) {
  char xs[64];
  if (!bn_check_vector(ctx, weight, "weight", l.c) || !bn_check_vector(ctx, bias, "bias", l.c) ||
      !bn_check_vector(ctx, running_mean, "running_mean", l.c) ||
      !bn_check_vector(ctx, running_var, "running_var", l.c))
    return -1;
  if (!(eps > 0.0f)) return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: eps %g must be positive", what, (double)eps), -1;
  int batch_stats = hakd_ctx_training(ctx), sync = batch_stats && hakd_ctx_sync_bn(ctx);
  int64_t m = l.n * l.hw;
  if (batch_stats && m < 2 && !sync)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: training needs more than 1 value per channel, input %s", what,
                         hakd_shape_str(x, xs, sizeof xs)),
           -1;
  if (!batch_stats && (!running_mean || !running_var))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: eval mode needs running_mean and running_var", what), -1;
  float *mean = hakd_ctx_alloc(ctx, (size_t)l.c * sizeof(float));
  float *rstd = hakd_ctx_alloc(ctx, (size_t)l.c * sizeof(float));
  double *stats = hakd_ctx_alloc(ctx, (2 * (size_t)l.c + 1) * sizeof(double));
  if (!mean || !rstd || !stats) return -1;
  double *bmean = stats, *bvar = stats + l.c, count = (double)m;
  if (batch_stats) {
    count = bn_batch_stats(ctx, bmean, bvar, hakd_f32(x), l);
    if (count < 0) return -1;
    if (count < 2)
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: training needs more than 1 value per channel, input %s", what,
                           hakd_shape_str(x, xs, sizeof xs)),
             -1;
    for (int64_t c = 0; c < l.c; c++) {
      mean[c] = (float)bmean[c];
      rstd[c] = (float)(1.0 / sqrt(bvar[c] + (double)eps));
    }
    if (running_mean && running_var) {
      /* PyTorch: running = (1 - momentum) running + momentum batch, with the unbiased variance. */
      float *rm = hakd_f32(running_mean), *rv = hakd_f32(running_var);
      for (int64_t c = 0; c < l.c; c++) {
        rm[c] = (float)((1.0 - momentum) * rm[c] + momentum * bmean[c]);
        rv[c] = (float)((1.0 - momentum) * rv[c] + momentum * bvar[c] * count / (count - 1.0));
      }
    }
  } else {
    const float *rm = hakd_f32(running_mean), *rv = hakd_f32(running_var);
    for (int64_t c = 0; c < l.c; c++) {
      mean[c] = rm[c];
      rstd[c] = (float)(1.0 / sqrt((double)rv[c] + (double)eps));
    }
  }
  *mean_out = mean, *rstd_out = rstd, *count_out = count, *batch_stats_out = batch_stats, *sync_out = sync;
  return 0;
}

hakd_tensor *hakd_batchnorm2d(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                              hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  char xs[64];
  if (x->dtype != HAKD_F32 || (x->ndim != 2 && x->ndim != 4))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d: input must be float32 (N, C, H, W) or (N, C), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  bn_layout l = bn_layout_of(x);
  float *mean, *rstd;
  double count;
  int batch_stats, sync;
  if (bn_forward_stats(ctx, "batchnorm2d", x, l, weight, bias, running_mean, running_var, momentum, eps, &mean, &rstd,
                       &count, &batch_stats, &sync))
    return NULL;
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  if (!y) return NULL;
  const float *xd = hakd_f32(x), *w = weight ? hakd_f32(weight) : NULL, *b = bias ? hakd_f32(bias) : NULL;
  float *yd = hakd_f32(y);
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t p = 0; p < l.n * l.c; p++) {
    int64_t c = p % l.c;
    float scale = rstd[c] * (w ? w[c] : 1.0f), shift = (b ? b[c] : 0.0f) - mean[c] * scale;
    const float *xp = xd + p * l.hw;
    float *yp = yd + p * l.hw;
    for (int64_t i = 0; i < l.hw; i++) yp[i] = xp[i] * scale + shift;
  }
  hakd_tensor *inputs[3] = {x, weight, bias};
  hakd_node *node = hakd_record(ctx, "batchnorm2d", batchnorm_backward, y, 3, inputs);
  if (node) {
    node->iarg[0] = batch_stats;
    node->iarg[1] = sync;
    node->farg[0] = count;
    node->saved[0] = mean;
    node->saved[1] = rstd;
    hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}

/* ---- BatchNorm + residual + ReLU/ReLU6 in one op, float32 NCHW (batchnorm2d_act_f32) ----
 * The training chain of a CNN block (conv -> BN -> + shortcut -> ReLU) as one pass forward and
 * two backward, instead of the separate batchnorm, add and relu ops, each a pass over the
 * activation forward and again backward (10-22% of an r50-d8 training step in bench/op_profile.sh).
 * Every value is computed with the same operations in the same order as those ops compute it
 * (batchnorm2d's statistics and affine, then + residual, then hakd_relu / hakd_relu6 and their
 * output-gated gradients), so the results are the same to the bit. */

/* hakd_relu / hakd_relu6 of v (NaN -> 0), or v */
static inline float bn_act(float v, hakd_activation act) {
  if (act == HAKD_ACT_NONE) return v;
  v = v > 0.0f ? v : 0.0f;
  return act == HAKD_ACT_RELU6 ? (v < 6.0f ? v : 6.0f) : v;
}

/* g = the gradient through the activation, from its output y, as activation.c's backward gives
 * it (dy where the activation passes it, else 0), over n values. */
static void bn_act_gate(float *restrict g, const float *restrict dy, const float *restrict y, int64_t n,
                        hakd_activation act) {
  if (act == HAKD_ACT_RELU) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) g[i] = y[i] > 0.0f ? dy[i] : 0.0f;
  } else if (act == HAKD_ACT_RELU6) {
#pragma omp simd
    for (int64_t i = 0; i < n; i++) g[i] = ((y[i] > 0.0f) & (y[i] < 6.0f)) ? dy[i] : 0.0f;
  } else {
    memcpy(g, dy, (size_t)n * sizeof(float));
  }
}

/* The backward works through each plane in chunks of gated gradient (a multiple of the 8 lanes,
 * so every value meets the accumulator lane bn_sum and bn_sum_dy_dev give it over the whole plane). */
#define BN_ACT_CHUNK 1024

/* bn_sum and bn_sum_dy_dev of g over a plane, continued chunk by chunk: the same lanes, the same
 * order. `last`: this chunk ends the plane (its tail past a multiple of 8 goes to lane 0). */
static void bn_sums_chunk(double *acc, double *dev, const float *g, const float *x, int64_t n, double mean) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) acc[k] += g[i + k];
  for (; i < n; i++) acc[0] += g[i];
  i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; k++) dev[k] += g[i + k] * (x[i + k] - mean);
  for (; i < n; i++) dev[0] += g[i] * (x[i] - mean);
}

static double bn_lanes_total(const double *acc) {
  return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* saved[0], saved[1]: mean, rstd (C); iarg[0] batch statistics, iarg[1] SyncBN, iarg[2] the
 * activation; farg[0] the values per channel behind the statistics. */
static void batchnorm_act_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *weight = node->in[1], *bias = node->in[2];
  hakd_tensor *residual = node->n_in > 3 ? node->in[3] : NULL;
  /* gradients are written (=) where they are fresh (hakd_grad_fresh), else added to */
  int dx_fresh = 0, dr_fresh = 0, dw_fresh = 0, db_fresh = 0;
  float *dx = hakd_grad_fresh(ctx, x, &dx_fresh), *dw = hakd_grad_fresh(ctx, weight, &dw_fresh);
  float *db = hakd_grad_fresh(ctx, bias, &db_fresh);
  float *dr = residual ? hakd_grad_fresh(ctx, residual, &dr_fresh) : NULL;
  if (hakd_ctx_status(ctx)) return;
  bn_layout l = bn_layout_of(x);
  hakd_activation act = (hakd_activation)node->iarg[2];
  /* without an activation the output is not kept (and not read: bn_act_grad passes dy through) */
  const float *xs = hakd_f32(x), *dy = node->out->grad, *w = weight ? hakd_f32(weight) : NULL;
  const float *ys = act == HAKD_ACT_NONE ? dy : hakd_f32(node->out);
  const float *mean = node->saved[0], *rstd = node->saved[1];
  double *sums = hakd_ctx_alloc(ctx, 4 * (size_t)l.c * sizeof(double));
  if (!sums) return;
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t c = 0; c < l.c; c++) {
    double sum_dy = 0.0, sum_dy_dev = 0.0, mu = mean[c];
    float g[BN_ACT_CHUNK];
    for (int64_t n = 0; n < l.n; n++) {
      int64_t p = (n * l.c + c) * l.hw;
      double acc[8] = {0}, dev[8] = {0};
      for (int64_t i0 = 0; i0 < l.hw; i0 += BN_ACT_CHUNK) {
        int64_t len = l.hw - i0 < BN_ACT_CHUNK ? l.hw - i0 : BN_ACT_CHUNK;
        bn_act_gate(g, dy + p + i0, ys + p + i0, len, act);
        bn_sums_chunk(acc, dev, g, xs + p + i0, len, mu);
      }
      sum_dy += bn_lanes_total(acc);
      sum_dy_dev += bn_lanes_total(dev);
    }
    sums[c] = sum_dy;
    sums[l.c + c] = sum_dy_dev;
    if (db) db[c] = (db_fresh ? 0.0f : db[c]) + (float)sum_dy;
    if (dw) dw[c] = (dw_fresh ? 0.0f : dw[c]) + (float)(sum_dy_dev * rstd[c]);
  }
  if (!dx && !dr) return;
  float *coef = hakd_ctx_alloc(ctx, 3 * (size_t)l.c * sizeof(float));
  if (!coef || bn_grad_coefs(ctx, node, sums, l.c, w, rstd, coef)) return;
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t p = 0; p < l.n * l.c; p++) {
    int64_t c = p % l.c;
    float a = coef[c], b = coef[l.c + c], d = coef[2 * l.c + c], muf = mean[c];
    float g[BN_ACT_CHUNK];
    for (int64_t i0 = 0; i0 < l.hw; i0 += BN_ACT_CHUNK) {
      int64_t len = l.hw - i0 < BN_ACT_CHUNK ? l.hw - i0 : BN_ACT_CHUNK, at = p * l.hw + i0;
      bn_act_gate(g, dy + at, ys + at, len, act);
      if (dx) {
        float *dxp = dx + at;
        const float *xp = xs + at;
        if (dx_fresh)
          for (int64_t i = 0; i < len; i++) dxp[i] = a * g[i] + d * (xp[i] - muf) + b;
        else
          for (int64_t i = 0; i < len; i++) dxp[i] += a * g[i] + d * (xp[i] - muf) + b;
      }
      if (dr) {
        float *drp = dr + at;
        if (dr_fresh)
          memcpy(drp, g, (size_t)len * sizeof(float));
        else
          for (int64_t i = 0; i < len; i++) drp[i] += g[i];
      }
    }
  }
}

hakd_tensor *batchnorm2d_act_f32(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias,
                                 hakd_tensor *running_mean, hakd_tensor *running_var, float momentum, float eps,
                                 hakd_tensor *residual, hakd_activation act) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  char xs[64], rs[64];
  if (x->dtype != HAKD_F32 || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: input must be float32 or blocked bfloat16 (N, C, H, W), got %s",
                         hakd_shape_str(x, xs, sizeof xs));
  if (residual && (residual->dtype != HAKD_F32 || !hakd_same_shape(residual, x)))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "batchnorm2d_act: residual %s must be float32 like the input %s",
                         hakd_shape_str(residual, rs, sizeof rs), hakd_shape_str(x, xs, sizeof xs));
  if (act != HAKD_ACT_NONE && act != HAKD_ACT_RELU && act != HAKD_ACT_RELU6)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "batchnorm2d_act: activation %d is not none, relu or relu6", (int)act);
  bn_layout l = bn_layout_of(x);
  float *mean, *rstd;
  double count;
  int batch_stats, sync;
  if (bn_forward_stats(ctx, "batchnorm2d_act", x, l, weight, bias, running_mean, running_var, momentum, eps, &mean,
                       &rstd, &count, &batch_stats, &sync))
    return NULL;
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 4, x->shape);
  if (!y) return NULL;
  const float *xd = hakd_f32(x), *w = weight ? hakd_f32(weight) : NULL, *b = bias ? hakd_f32(bias) : NULL;
  const float *rd = residual ? hakd_f32(residual) : NULL;
  float *yd = hakd_f32(y);
#pragma omp parallel for schedule(static) if (l.n * l.c * l.hw > 32768)
  for (int64_t p = 0; p < l.n * l.c; p++) {
    int64_t c = p % l.c;
    float scale = rstd[c] * (w ? w[c] : 1.0f), shift = (b ? b[c] : 0.0f) - mean[c] * scale;
    const float *xp = xd + p * l.hw, *rp = rd ? rd + p * l.hw : NULL;
    float *yp = yd + p * l.hw;
    switch ((rp ? 3 : 0) + (int)act) { /* one branch-free loop per case */
      case 0: for (int64_t i = 0; i < l.hw; i++) yp[i] = xp[i] * scale + shift; break;
      case 1: for (int64_t i = 0; i < l.hw; i++) yp[i] = bn_act(xp[i] * scale + shift, HAKD_ACT_RELU); break;
      case 2: for (int64_t i = 0; i < l.hw; i++) yp[i] = bn_act(xp[i] * scale + shift, HAKD_ACT_RELU6); break;
      case 3: for (int64_t i = 0; i < l.hw; i++) yp[i] = xp[i] * scale + shift + rp[i]; break;
      case 4: for (int64_t i = 0; i < l.hw; i++) yp[i] = bn_act(xp[i] * scale + shift + rp[i], HAKD_ACT_RELU); break;
      default: for (int64_t i = 0; i < l.hw; i++) yp[i] = bn_act(xp[i] * scale + shift + rp[i], HAKD_ACT_RELU6); break;
    }
  }
  hakd_tensor *inputs[4] = {x, weight, bias, residual};
  hakd_node *node = hakd_record(ctx, "batchnorm2d_act", batchnorm_act_backward, y, residual ? 4 : 3, inputs);
  if (node) {
    node->iarg[0] = batch_stats;
    node->iarg[1] = sync;
    node->iarg[2] = act;
    node->farg[0] = count;
    node->saved[0] = mean;
    node->saved[1] = rstd;
    if (residual) hakd_node_unneeded(ctx, node, 3);
    if (act == HAKD_ACT_NONE) hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}
