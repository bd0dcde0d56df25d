/* Reductions: sum / mean of everything (accumulated in double) and over one dim. */
#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* dx += dy[0] * scale for every element; scale is 1 (sum) or 1/n (mean). */
static void reduce_all_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  float g = node->out->grad[0] * (float)node->farg[0];
  int64_t n = hakd_numel(node->in[0]);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) dx[i] += g;
}

/* reference: torch.sum(x) / torch.mean(x), returned as shape (1). */
static hakd_tensor *reduce_all(hakd_ctx *ctx, hakd_tensor *x, int mean) {
  const char *name = mean ? "mean" : "sum";
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: input must be float32", name);
  int64_t one = 1, n = hakd_numel(x);
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, 1, &one);
  if (!y) return NULL;
  double total = ops_sum_f64(hakd_f32(x), n);
  /* torch.mean of an empty tensor is nan (0/0). */
  hakd_f32(y)[0] = (float)(mean ? total / (double)n : total);
  hakd_node *node = hakd_record(ctx, name, reduce_all_backward, y, 1, &x);
  if (node) {
    node->farg[0] = mean ? 1.0 / (double)n : 1.0;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

hakd_tensor *hakd_sum(hakd_ctx *ctx, hakd_tensor *x) { return reduce_all(ctx, x, 0); }
hakd_tensor *hakd_mean(hakd_ctx *ctx, hakd_tensor *x) { return reduce_all(ctx, x, 1); }

/* y[o, i] = scale * sum_d x[o, d, i].
 * y: (outer, inner), x: (outer, size, inner). reference: torch.sum(x, dim) */
static void reduce_dim_forward(float *y, const float *x, int64_t outer, int64_t size, int64_t inner, float scale) {
#pragma omp parallel for schedule(static) if (outer * size * inner > OPS_PARALLEL_MIN && outer > 1)
  for (int64_t o = 0; o < outer; o++) {
    float *yr = y + o * inner;
    for (int64_t i = 0; i < inner; i++) yr[i] = 0.0f;
    for (int64_t d = 0; d < size; d++) {
      const float *xr = x + (o * size + d) * inner;
      for (int64_t i = 0; i < inner; i++) yr[i] += xr[i];
    }
    for (int64_t i = 0; i < inner; i++) yr[i] *= scale;
  }
}

static void reduce_dim_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  const float *dy = node->out->grad;
  int64_t outer = node->iarg[0], size = node->iarg[1], inner = node->iarg[2];
  float scale = (float)node->farg[0];
#pragma omp parallel for schedule(static) if (outer * size * inner > OPS_PARALLEL_MIN && outer > 1)
  for (int64_t o = 0; o < outer; o++)
    for (int64_t d = 0; d < size; d++) {
      float *dr = dx + (o * size + d) * inner;
      const float *gr = dy + o * inner;
      for (int64_t i = 0; i < inner; i++) dr[i] += scale * gr[i];
    }
}

/* reference: torch.sum(x, dim, keepdim) / torch.mean(x, dim, keepdim). */
static hakd_tensor *reduce_dim(hakd_ctx *ctx, hakd_tensor *x, int dim, int keepdim, int mean) {
  const char *name = mean ? "mean_dim" : "sum_dim";
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: input must be float32", name);
  int d = ops_normalize_dim(dim, x->ndim);
  if (d < 0) {
    char s[96];
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: dim %d out of range for shape %s", name, dim,
                         hakd_shape_str(x, s, sizeof s));
  }
  int64_t shape[HAKD_MAX_DIMS];
  int ndim = 0;
  for (int i = 0; i < x->ndim; i++) {
    if (i != d)
      shape[ndim++] = x->shape[i];
    else if (keepdim)
      shape[ndim++] = 1;
  }
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, ndim, shape);
  if (!y) return NULL;
  int64_t outer = ops_prod(x->shape, 0, d), size = x->shape[d], inner = ops_prod(x->shape, d + 1, x->ndim);
  /* torch.mean over an empty dim is nan (0/0). */
  float scale = mean ? 1.0f / (float)size : 1.0f;
  reduce_dim_forward(hakd_f32(y), hakd_f32(x), outer, size, inner, scale);
  hakd_node *node = hakd_record(ctx, name, reduce_dim_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = outer;
    node->iarg[1] = size;
    node->iarg[2] = inner;
    node->farg[0] = scale;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

hakd_tensor *hakd_sum_dim(hakd_ctx *ctx, hakd_tensor *x, int dim, int keepdim) {
  return reduce_dim(ctx, x, dim, keepdim, 0);
}
hakd_tensor *hakd_mean_dim(hakd_ctx *ctx, hakd_tensor *x, int dim, int keepdim) {
  return reduce_dim(ctx, x, dim, keepdim, 1);
}
