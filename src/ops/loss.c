/* Losses: pixel-wise cross entropy with an ignore label, and the softened-softmax KL divergence
 * used for distillation. Both reduce in double to a shape-(1) tensor. */
#include <math.h>
#include <stdio.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"
#include "ops/vecmath.h"

/* Logits are viewed as (N, K, S) with S the number of pixels per image (1 for (N, K) input);
 * work runs on blocks of up to BLOCK neighbouring pixels so the loops over classes walk
 * contiguous memory. */
#define BLOCK 256

/* Per-block partial sums land in a fixed slot, so the total is the same for any thread count. */
static double sum_partials(const double *partial, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) total += partial[i];
  return total;
}

/* For a block of w pixels of x (N, K, S) viewed at its first class, x row k at k * s_pixels:
 * max[i] = max_k scale * x[k][i] (NaN ignored as fmaxf does) and sum[i] = sum_k exp(scale * x[k][i]
 * - max[i]), summed over k in order. Vectorised over pixels. */
static void block_max_exp_sum(float *max, float *sum, const float *xb, int64_t w, int64_t k_classes,
                              int64_t s_pixels, float scale) {
  for (int64_t i = 0; i < w; i++) max[i] = -INFINITY, sum[i] = 0.0f;
  for (int64_t k = 0; k < k_classes; k++) {
    const float *xr = xb + k * s_pixels;
    int64_t i = 0;
#if VEC_LANES > 1
    vec_f32 sv = vec_set1(scale);
    for (; i + VEC_LANES <= w; i += VEC_LANES) vec_store(max + i, vec_max(vec_mul(vec_load(xr + i), sv), vec_load(max + i)));
#endif
    for (; i < w; i++) {
      float v = xr[i] * scale;
      max[i] = v > max[i] ? v : max[i];
    }
  }
  for (int64_t k = 0; k < k_classes; k++) {
    const float *xr = xb + k * s_pixels;
    int64_t i = 0;
#if VEC_LANES > 1
    vec_f32 sv = vec_set1(scale);
    for (; i + VEC_LANES <= w; i += VEC_LANES)
      vec_store(sum + i, vec_add(vec_load(sum + i), vec_expf(vec_sub(vec_mul(vec_load(xr + i), sv), vec_load(max + i)))));
#endif
    for (; i < w; i++) sum[i] += expf(xr[i] * scale - max[i]);
  }
}

/* log_z[i] = max[i] + log(sum[i]) for w pixels. */
static void block_log_sum(float *log_z, const float *max, const float *sum, int64_t w) {
  int64_t i = 0;
#if VEC_LANES > 1
  for (; i + VEC_LANES <= w; i += VEC_LANES) vec_store(log_z + i, vec_add(vec_load(max + i), vec_logf(vec_load(sum + i))));
#endif
  for (; i < w; i++) log_z[i] = max[i] + logf(sum[i]);
}

/* ---- cross entropy -------------------------------------------------------------------------- */

/* lse[p] = logsumexp_k x[n, k, s] for every pixel; partial[block] = sum over the block's valid
 * pixels of lse - x[label]. x: (N, K, S), labels: (N, S), lse: (N, S), partial: (N * ceil(S/BLOCK)).
 * reference: F.cross_entropy(reduction="sum") */
static void cross_entropy_forward(float *lse, double *partial, const float *x, const int32_t *labels, int64_t n_img,
                                  int64_t k_classes, int64_t s_pixels, int ignore_index) {
  int64_t blocks_per_img = (s_pixels + BLOCK - 1) / BLOCK, n_blocks = n_img * blocks_per_img;
#pragma omp parallel for schedule(static) if (n_img * k_classes * s_pixels > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t img = blk / blocks_per_img, s0 = (blk % blocks_per_img) * BLOCK;
    int64_t w = s_pixels - s0 < BLOCK ? s_pixels - s0 : BLOCK;
    const float *xb = x + img * k_classes * s_pixels + s0;
    const int32_t *lb = labels + img * s_pixels + s0;
    float max[BLOCK], sum[BLOCK];
    block_max_exp_sum(max, sum, xb, w, k_classes, s_pixels, 1.0f);
    float *lb_lse = lse + img * s_pixels + s0;
    block_log_sum(lb_lse, max, sum, w);
    double acc = 0.0;
    for (int64_t i = 0; i < w; i++)
      if (lb[i] != ignore_index) acc += (double)lb_lse[i] - (double)xb[(int64_t)lb[i] * s_pixels + i];
    partial[blk] = acc;
  }
}

/* dx[n, k, s] += scale * (softmax_k - [k == label]) for valid pixels; scale = dL / (valid count).
 * dx, x: (N, K, S), labels, lse: (N, S). */
static void cross_entropy_backward_kernel(float *dx, const float *x, const int32_t *labels, const float *lse,
                                          int64_t n_img, int64_t k_classes, int64_t s_pixels, int ignore_index,
                                          float scale) {
  int64_t blocks_per_img = (s_pixels + BLOCK - 1) / BLOCK, n_blocks = n_img * blocks_per_img;
#pragma omp parallel for schedule(static) if (n_img * k_classes * s_pixels > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t img = blk / blocks_per_img, s0 = (blk % blocks_per_img) * BLOCK;
    int64_t w = s_pixels - s0 < BLOCK ? s_pixels - s0 : BLOCK;
    int64_t base = img * k_classes * s_pixels + s0;
    const int32_t *lb = labels + img * s_pixels + s0;
    const float *lb_lse = lse + img * s_pixels + s0;
    float weight[BLOCK];
    for (int64_t i = 0; i < w; i++) weight[i] = lb[i] == ignore_index ? 0.0f : scale;
    for (int64_t k = 0; k < k_classes; k++) {
      const float *xr = x + base + k * s_pixels;
      float *dr = dx + base + k * s_pixels;
      int64_t i = 0;
#if VEC_LANES > 1
      for (; i + VEC_LANES <= w; i += VEC_LANES) {
        vec_f32 p = vec_expf(vec_sub(vec_load(xr + i), vec_load(lb_lse + i)));
        vec_f32 d = vec_mul(vec_load(weight + i), vec_sub(p, vec_onehot(lb + i, (int32_t)k)));
        vec_store(dr + i, vec_add(vec_load(dr + i), d));
      }
#endif
      for (; i < w; i++) {
        float onehot = lb[i] == k ? 1.0f : 0.0f;
        dr[i] += weight[i] * (expf(xr[i] - lb_lse[i]) - onehot);
      }
    }
  }
}

/* iarg: N, K, S, ignore_index, valid count; farg[0]: the divisor of the mean; saved[0]: lse (N, S). */
static void cross_entropy_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *logits = node->in[0], *labels = node->in[1];
  float *dx = hakd_grad(ctx, logits);
  double divisor = node->farg[0];
  if (!dx || divisor == 0) return; /* no valid pixel: the loss is the constant 0 */
  float scale = (float)((double)node->out->grad[0] / divisor);
  cross_entropy_backward_kernel(dx, hakd_f32(logits), hakd_i32(labels), node->saved[0], node->iarg[0], node->iarg[1],
                                node->iarg[2], (int)node->iarg[3], scale);
}

hakd_tensor *hakd_cross_entropy(hakd_ctx *ctx, hakd_tensor *logits, hakd_tensor *labels, int ignore_index) {
  if (!logits || !labels) return NULL;
  char sx[96], sl[96];
  if (logits->dtype != HAKD_F32 || labels->dtype != HAKD_I32)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "cross_entropy: logits must be float32 and labels int32");
  int shapes_ok = logits->ndim >= 2 && labels->ndim == logits->ndim - 1 && labels->shape[0] == logits->shape[0];
  for (int i = 2; shapes_ok && i < logits->ndim; i++)
    if (labels->shape[i - 1] != logits->shape[i]) shapes_ok = 0;
  if (!shapes_ok)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "cross_entropy: logits %s and labels %s do not match (want (N,K,H,W) and (N,H,W), or (N,K) "
                         "and (N))",
                         hakd_shape_str(logits, sx, sizeof sx), hakd_shape_str(labels, sl, sizeof sl));
  int64_t n_img = logits->shape[0], k_classes = logits->shape[1], s_pixels = ops_prod(logits->shape, 2, logits->ndim);
  const int32_t *lab = hakd_i32(labels);
  int64_t n_labels = n_img * s_pixels, valid = 0;
  for (int64_t p = 0; p < n_labels; p++) {
    if (lab[p] == ignore_index) continue;
    if (lab[p] < 0 || lab[p] >= k_classes) {
      /* Position as an index into labels: (n) or (n, h, w). */
      char pos[96];
      int len = snprintf(pos, sizeof pos, "(");
      int64_t rem = p, idx[HAKD_MAX_DIMS];
      for (int d = labels->ndim - 1; d >= 0; d--) {
        idx[d] = rem % labels->shape[d];
        rem /= labels->shape[d];
      }
      for (int d = 0; d < labels->ndim && len < (int)sizeof pos; d++)
        len += snprintf(pos + len, sizeof pos - (size_t)len, d ? ", %lld" : "%lld", (long long)idx[d]);
      if (len < (int)sizeof pos) snprintf(pos + len, sizeof pos - (size_t)len, ")");
      return hakd_ctx_fail(ctx, HAKD_ERANGE,
                           "cross_entropy: label %d at %s of labels %s is outside [0, %lld) and not ignore_index %d",
                           (int)lab[p], pos, hakd_shape_str(labels, sl, sizeof sl), (long long)k_classes,
                           ignore_index);
    }
    valid++;
  }
  int64_t one = 1, n_blocks = n_img * ((s_pixels + BLOCK - 1) / BLOCK);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 1, &one);
  float *lse = hakd_ctx_alloc(ctx, (size_t)n_labels * sizeof(float));
  double *partial = hakd_ctx_alloc(ctx, (size_t)n_blocks * sizeof(double));
  if (!y || !lse || !partial) return NULL;
  if (k_classes > 0)
    cross_entropy_forward(lse, partial, hakd_f32(logits), lab, n_img, k_classes, s_pixels, ignore_index);
  /* In a data-parallel run (a communicator on the context) the mean is over the valid pixels of
   * the global batch: each process divides its sum by (global count / processes), so the average
   * of the processes' losses and of their gradients is the global batch's, however the ignored
   * pixels fall on the processes (a per-process mean would weigh them by their own counts). */
  double divisor = (double)valid;
  const hakd_comm *comm = hakd_ctx_comm(ctx);
  if (comm) {
    if (hakd_ctx_allreduce_sum(ctx, &divisor, 1)) return NULL;
    divisor /= (double)comm->size;
  }
  /* No valid pixel: exactly 0 (PyTorch gives 0/0 = nan), so a batch of pure ignore is harmless. */
  hakd_f32(y)[0] = divisor > 0 ? (float)(sum_partials(partial, n_blocks) / divisor) : 0.0f;
  hakd_tensor *in[2] = {logits, labels};
  hakd_node *node = hakd_record(ctx, "cross_entropy", cross_entropy_backward, y, 2, in);
  if (node) {
    node->iarg[0] = n_img;
    node->iarg[1] = k_classes;
    node->iarg[2] = s_pixels;
    node->iarg[3] = ignore_index;
    node->iarg[4] = valid;
    node->farg[0] = divisor;
    node->saved[0] = lse;
  }
  return y;
}

/* ---- KL divergence of softened softmaxes ---------------------------------------------------- */

/* For a block of w pixels: the tempered log-softmax normalisers of s and t
 * (log_zs[i] = logsumexp_k s/T), from which log p = x/T - log_z. */
static void tempered_log_normalisers(float *log_zs, float *log_zt, const float *sb, const float *tb, int64_t w,
                                     int64_t k_classes, int64_t s_pixels, float inv_t) {
  float max_s[BLOCK], max_t[BLOCK], sum_s[BLOCK], sum_t[BLOCK];
  block_max_exp_sum(max_s, sum_s, sb, w, k_classes, s_pixels, inv_t);
  block_max_exp_sum(max_t, sum_t, tb, w, k_classes, s_pixels, inv_t);
  block_log_sum(log_zs, max_s, sum_s, w);
  block_log_sum(log_zt, max_t, sum_t, w);
}

/* partial[block] = sum over the block's pixels and classes of pt (log pt - log ps), with
 * pt = softmax(t/T), ps = softmax(s/T) over dim 1; pt == 0 contributes 0 (as F.kl_div).
 * s, t: (N, K, S), partial: (N * ceil(S/BLOCK)). reference: F.kl_div(reduction="sum") */
static void kl_forward(double *partial, const float *s, const float *t, int64_t n_img, int64_t k_classes,
                       int64_t s_pixels, float inv_t) {
  int64_t blocks_per_img = (s_pixels + BLOCK - 1) / BLOCK, n_blocks = n_img * blocks_per_img;
#pragma omp parallel for schedule(static) if (n_img * k_classes * s_pixels > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t img = blk / blocks_per_img, s0 = (blk % blocks_per_img) * BLOCK;
    int64_t w = s_pixels - s0 < BLOCK ? s_pixels - s0 : BLOCK;
    const float *sb = s + img * k_classes * s_pixels + s0, *tb = t + img * k_classes * s_pixels + s0;
    float log_zs[BLOCK], log_zt[BLOCK];
    tempered_log_normalisers(log_zs, log_zt, sb, tb, w, k_classes, s_pixels, inv_t);
    double acc = 0.0;
    for (int64_t k = 0; k < k_classes; k++)
      for (int64_t i = 0; i < w; i++) {
        float log_pt = tb[k * s_pixels + i] * inv_t - log_zt[i];
        float log_ps = sb[k * s_pixels + i] * inv_t - log_zs[i];
        float pt = expf(log_pt);
        if (pt > 0.0f) acc += (double)pt * ((double)log_pt - (double)log_ps);
      }
    partial[blk] = acc;
  }
}

/* ds += scale * (ps - pt), scale = dL * T / divisor (the T^2 factor times the 1/T of s/T).
 * ds, s, t: (N, K, S). */
static void kl_backward_kernel(float *ds, const float *s, const float *t, int64_t n_img, int64_t k_classes,
                               int64_t s_pixels, float inv_t, float scale) {
  int64_t blocks_per_img = (s_pixels + BLOCK - 1) / BLOCK, n_blocks = n_img * blocks_per_img;
#pragma omp parallel for schedule(static) if (n_img * k_classes * s_pixels > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t img = blk / blocks_per_img, s0 = (blk % blocks_per_img) * BLOCK;
    int64_t w = s_pixels - s0 < BLOCK ? s_pixels - s0 : BLOCK;
    int64_t base = img * k_classes * s_pixels + s0;
    const float *sb = s + base, *tb = t + base;
    float *db = ds + base;
    float log_zs[BLOCK], log_zt[BLOCK];
    tempered_log_normalisers(log_zs, log_zt, sb, tb, w, k_classes, s_pixels, inv_t);
    for (int64_t k = 0; k < k_classes; k++) {
      const float *sr = sb + k * s_pixels, *tr = tb + k * s_pixels;
      float *dr = db + k * s_pixels;
      int64_t i = 0;
#if VEC_LANES > 1
      vec_f32 iv = vec_set1(inv_t), sc = vec_set1(scale);
      for (; i + VEC_LANES <= w; i += VEC_LANES) {
        vec_f32 ps = vec_expf(vec_sub(vec_mul(vec_load(sr + i), iv), vec_load(log_zs + i)));
        vec_f32 pt = vec_expf(vec_sub(vec_mul(vec_load(tr + i), iv), vec_load(log_zt + i)));
        vec_store(dr + i, vec_add(vec_load(dr + i), vec_mul(sc, vec_sub(ps, pt))));
      }
#endif
      for (; i < w; i++) {
        float ps = expf(sr[i] * inv_t - log_zs[i]), pt = expf(tr[i] * inv_t - log_zt[i]);
        dr[i] += scale * (ps - pt);
      }
    }
  }
}

/* iarg: N, K, S; farg: T, divisor; in: s, t (t never receives gradient). */
static void kl_backward(hakd_ctx *ctx, hakd_node *node) {
  float *ds = hakd_grad(ctx, node->in[0]);
  if (!ds) return;
  double temperature = node->farg[0], divisor = node->farg[1];
  float scale = (float)((double)node->out->grad[0] * temperature / divisor);
  kl_backward_kernel(ds, hakd_f32(node->in[0]), hakd_f32(node->in[1]), node->iarg[0], node->iarg[1], node->iarg[2],
                     (float)(1.0 / temperature), scale);
}

hakd_tensor *hakd_kl_div_softmax(hakd_ctx *ctx, hakd_tensor *s, hakd_tensor *t, float T, double divisor) {
  if (!s || !t) return NULL;
  char ss[96], st[96];
  if (s->dtype != HAKD_F32 || t->dtype != HAKD_F32)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "kl_div_softmax: inputs must be float32");
  if (s->ndim < 2 || !hakd_same_shape(s, t))
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "kl_div_softmax: student %s and teacher %s must have the same (N, K, ...) shape",
                         hakd_shape_str(s, ss, sizeof ss), hakd_shape_str(t, st, sizeof st));
  if (!(T > 0.0f) || !(divisor > 0.0))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "kl_div_softmax: temperature %g and divisor %g must be positive", (double)T,
                         divisor);
  int64_t n_img = s->shape[0], k_classes = s->shape[1], s_pixels = ops_prod(s->shape, 2, s->ndim);
  int64_t one = 1, n_blocks = n_img * ((s_pixels + BLOCK - 1) / BLOCK);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 1, &one);
  double *partial = hakd_ctx_alloc(ctx, (size_t)(n_blocks ? n_blocks : 1) * sizeof(double));
  if (!y || !partial) return NULL;
  float inv_t = (float)(1.0 / (double)T);
  double total = 0.0;
  if (k_classes > 0 && n_blocks > 0) {
    kl_forward(partial, hakd_f32(s), hakd_f32(t), n_img, k_classes, s_pixels, inv_t);
    total = sum_partials(partial, n_blocks);
  }
  hakd_f32(y)[0] = (float)(total * (double)T * (double)T / divisor);
  /* t is recorded as an input only so backward can read it; its gradient is never touched. */
  hakd_tensor *in[2] = {s, t};
  hakd_node *node = s->requires_grad ? hakd_record(ctx, "kl_div_softmax", kl_backward, y, 2, in) : NULL;
  if (node) {
    node->iarg[0] = n_img;
    node->iarg[1] = k_classes;
    node->iarg[2] = s_pixels;
    node->farg[0] = T;
    node->farg[1] = divisor;
  }
  return y;
}
