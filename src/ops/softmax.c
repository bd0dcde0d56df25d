/* Softmax and log-softmax along any dim, numerically stable (the max is subtracted). */
#include <math.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"
#include "ops/vecmath.h"

/* The tensor is viewed as (outer, size, inner) with the reduced dim in the middle. Work is done
 * on blocks of up to BLOCK neighbouring inner positions, so the loops over the reduced dim walk
 * contiguous memory whether the dim is the last one (inner == 1) or a channel dim (inner = H*W). */
#define BLOCK 256

/* Largest of x[0..n), NaN entries ignored as fmaxf ignores them. */
static float row_max(const float *x, int64_t n) {
  float max = -INFINITY;
  int64_t d = 0;
#if VEC_LANES > 1
  if (n >= VEC_LANES) {
    vec_f32 acc = vec_set1(-INFINITY);
    for (; d + VEC_LANES <= n; d += VEC_LANES) acc = vec_max(vec_load(x + d), acc);
    max = vec_reduce_max(acc);
  }
#endif
  for (; d < n; d++) max = x[d] > max ? x[d] : max;
  return max;
}

/* y[d] = exp(x[d] - shift) for n elements; returns their sum (lane-wise partial sums). */
static float row_exp_sum(float *y, const float *x, float shift, int64_t n) {
  float sum = 0.0f;
  int64_t d = 0;
#if VEC_LANES > 1
  vec_f32 s = vec_set1(shift), acc = vec_zero();
  for (; d + VEC_LANES <= n; d += VEC_LANES) {
    vec_f32 e = vec_expf(vec_sub(vec_load(x + d), s));
    vec_store(y + d, e);
    acc = vec_add(acc, e);
  }
  sum = vec_reduce_add(acc);
#endif
  for (; d < n; d++) {
    y[d] = expf(x[d] - shift);
    sum += y[d];
  }
  return sum;
}

/* sum of a[d] * b[d] (b NULL: sum of a[d]) over n elements, lane-wise partial sums. */
static float row_dot(const float *a, const float *b, int64_t n) {
  float sum = 0.0f;
  int64_t d = 0;
#if VEC_LANES > 1
  vec_f32 acc = vec_zero();
  if (b)
    for (; d + VEC_LANES <= n; d += VEC_LANES) acc = vec_add(acc, vec_mul(vec_load(a + d), vec_load(b + d)));
  else
    for (; d + VEC_LANES <= n; d += VEC_LANES) acc = vec_add(acc, vec_load(a + d));
  sum = vec_reduce_add(acc);
#endif
  for (; d < n; d++) sum += b ? a[d] * b[d] : a[d];
  return sum;
}

/* One contiguous row of `size`: yr = softmax(xr) or log_softmax(xr); yr may be xr. */
static void softmax_row(float *yr, const float *xr, int64_t size, int log_space) {
  float max = row_max(xr, size);
  /* A row of all -inf gives inf - inf = nan, as in PyTorch. */
  float sum = row_exp_sum(yr, xr, max, size);
  if (log_space) {
    float log_z = max + logf(sum);
    for (int64_t d = 0; d < size; d++) yr[d] = xr[d] - log_z;
  } else {
    float inv = 1.0f / sum;
    for (int64_t d = 0; d < size; d++) yr[d] *= inv;
  }
}

void softmax_rows(float *y, const float *x, int64_t rows, int64_t size) {
  for (int64_t o = 0; o < rows; o++) softmax_row(y + o * size, x + o * size, size, 0);
}

/* y = softmax(x) or log_softmax(x) along the middle dim.
 * y, x: (outer, size, inner). reference: F.softmax / F.log_softmax */
static void softmax_forward(float *y, const float *x, int64_t outer, int64_t size, int64_t inner, int log_space) {
  if (inner == 1) {
    /* Last dim (attention rows): each row is contiguous and stays in L1 across its passes. */
#pragma omp parallel for schedule(static) if (outer * size > OPS_PARALLEL_MIN)
    for (int64_t o = 0; o < outer; o++) softmax_row(y + o * size, x + o * size, size, log_space);
    return;
  }
  int64_t blocks_per_outer = (inner + BLOCK - 1) / BLOCK, n_blocks = outer * blocks_per_outer;
#pragma omp parallel for schedule(static) if (outer * size * inner > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t o = blk / blocks_per_outer, i0 = (blk % blocks_per_outer) * BLOCK;
    int64_t w = inner - i0 < BLOCK ? inner - i0 : BLOCK;
    const float *xb = x + o * size * inner + i0;
    float *yb = y + o * size * inner + i0;
    float max[BLOCK], sum[BLOCK];
    for (int64_t i = 0; i < w; i++) max[i] = -INFINITY, sum[i] = 0.0f;
    for (int64_t d = 0; d < size; d++) {
      const float *xr = xb + d * inner;
      int64_t i = 0;
#if VEC_LANES > 1
      for (; i + VEC_LANES <= w; i += VEC_LANES) vec_store(max + i, vec_max(vec_load(xr + i), vec_load(max + i)));
#endif
      for (; i < w; i++) max[i] = xr[i] > max[i] ? xr[i] : max[i];
    }
    /* A row of all -inf would give inf - inf = nan; PyTorch gives nan there too. The sums run
     * over d in order for each position, as before vectorising over positions. */
    for (int64_t d = 0; d < size; d++) {
      const float *xr = xb + d * inner;
      float *yr = yb + d * inner;
      int64_t i = 0;
#if VEC_LANES > 1
      for (; i + VEC_LANES <= w; i += VEC_LANES) {
        vec_f32 e = vec_expf(vec_sub(vec_load(xr + i), vec_load(max + i)));
        vec_store(sum + i, vec_add(vec_load(sum + i), e));
        if (!log_space) vec_store(yr + i, e);
      }
#endif
      for (; i < w; i++) {
        float e = expf(xr[i] - max[i]);
        sum[i] += e;
        if (!log_space) yr[i] = e;
      }
    }
    if (log_space) {
      for (int64_t i = 0; i < w; i++) sum[i] = max[i] + logf(sum[i]);
      for (int64_t d = 0; d < size; d++)
        for (int64_t i = 0; i < w; i++) yb[d * inner + i] = xb[d * inner + i] - sum[i];
    } else {
      for (int64_t i = 0; i < w; i++) sum[i] = 1.0f / sum[i];
      for (int64_t d = 0; d < size; d++)
        for (int64_t i = 0; i < w; i++) yb[d * inner + i] *= sum[i];
    }
  }
}

/* dx[i] += dy[i] - exp(y[i]) * dot for n elements (the log_softmax gradient). */
static void log_softmax_grad_row(float *dx, const float *dy, const float *y, float dot, int64_t n) {
  int64_t i = 0;
#if VEC_LANES > 1
  vec_f32 dv = vec_set1(dot);
  for (; i + VEC_LANES <= n; i += VEC_LANES)
    vec_store(dx + i, vec_add(vec_load(dx + i), vec_sub(vec_load(dy + i), vec_mul(vec_expf(vec_load(y + i)), dv))));
#endif
  for (; i < n; i++) dx[i] += dy[i] - expf(y[i]) * dot;
}

/* softmax: dx += y * (dy - sum_d dy*y); log_softmax: dx += dy - exp(y) * sum_d dy.
 * dx, dy, y: (outer, size, inner). */
static void softmax_backward_kernel(float *dx, const float *dy, const float *y, int64_t outer, int64_t size,
                                    int64_t inner, int log_space) {
  if (inner == 1) {
#pragma omp parallel for schedule(static) if (outer * size > OPS_PARALLEL_MIN)
    for (int64_t o = 0; o < outer; o++) {
      const float *gr = dy + o * size, *yr = y + o * size;
      float *dr = dx + o * size;
      if (log_space) {
        log_softmax_grad_row(dr, gr, yr, row_dot(gr, NULL, size), size);
      } else {
        float dot = row_dot(gr, yr, size);
        for (int64_t d = 0; d < size; d++) dr[d] += yr[d] * (gr[d] - dot);
      }
    }
    return;
  }
  int64_t blocks_per_outer = (inner + BLOCK - 1) / BLOCK, n_blocks = outer * blocks_per_outer;
#pragma omp parallel for schedule(static) if (outer * size * inner > OPS_PARALLEL_MIN)
  for (int64_t blk = 0; blk < n_blocks; blk++) {
    int64_t o = blk / blocks_per_outer, i0 = (blk % blocks_per_outer) * BLOCK;
    int64_t w = inner - i0 < BLOCK ? inner - i0 : BLOCK;
    int64_t base = o * size * inner + i0;
    const float *gb = dy + base, *yb = y + base;
    float *db = dx + base;
    float dot[BLOCK];
    for (int64_t i = 0; i < w; i++) dot[i] = 0.0f;
    if (log_space) {
      for (int64_t d = 0; d < size; d++)
        for (int64_t i = 0; i < w; i++) dot[i] += gb[d * inner + i];
      for (int64_t d = 0; d < size; d++) {
        const float *gr = gb + d * inner, *yr = yb + d * inner;
        float *dr = db + d * inner;
        int64_t i = 0;
#if VEC_LANES > 1
        for (; i + VEC_LANES <= w; i += VEC_LANES)
          vec_store(dr + i, vec_add(vec_load(dr + i), vec_sub(vec_load(gr + i),
                                                              vec_mul(vec_expf(vec_load(yr + i)), vec_load(dot + i)))));
#endif
        for (; i < w; i++) dr[i] += gr[i] - expf(yr[i]) * dot[i];
      }
    } else {
      for (int64_t d = 0; d < size; d++)
        for (int64_t i = 0; i < w; i++) dot[i] += gb[d * inner + i] * yb[d * inner + i];
      for (int64_t d = 0; d < size; d++)
        for (int64_t i = 0; i < w; i++) {
          int64_t k = d * inner + i;
          db[k] += yb[k] * (gb[k] - dot[i]);
        }
    }
  }
}

/* iarg: outer, size, inner, log_space. */
static void softmax_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  softmax_backward_kernel(dx, node->out->grad, hakd_f32(node->out), node->iarg[0], node->iarg[1], node->iarg[2],
                          (int)node->iarg[3]);
}

static hakd_tensor *softmax_any(hakd_ctx *ctx, hakd_tensor *x, int dim, int log_space) {
  const char *name = log_space ? "log_softmax" : "softmax";
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: input must be float32", name);
  int d = ops_normalize_dim(dim, x->ndim);
  if (d < 0) {
    char sx[96];
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: dim %d out of range for %s", name, dim,
                         hakd_shape_str(x, sx, sizeof sx));
  }
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  if (!y) return NULL;
  int64_t outer = ops_prod(x->shape, 0, d), size = x->shape[d], inner = ops_prod(x->shape, d + 1, x->ndim);
  softmax_forward(hakd_f32(y), hakd_f32(x), outer, size, inner, log_space);
  hakd_node *node = hakd_record(ctx, name, softmax_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = outer;
    node->iarg[1] = size;
    node->iarg[2] = inner;
    node->iarg[3] = log_space;
    hakd_node_unneeded(ctx, node, 0);
  }
  return y;
}

hakd_tensor *hakd_softmax(hakd_ctx *ctx, hakd_tensor *x, int dim) { return softmax_any(ctx, x, dim, 0); }
hakd_tensor *hakd_log_softmax(hakd_ctx *ctx, hakd_tensor *x, int dim) { return softmax_any(ctx, x, dim, 1); }
