/* Layer normalisation over the last dim. */
#include <math.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* y = (x - mean) * rstd * w + b per row; mean/rstd saved for backward. The mean stays in double:
 * rounded to float it would shift rows with a large common offset by up to half an ulp of it.
 * y, x: (rows, dim), mean, rstd: (rows), w, b: (dim) or NULL. reference: F.layer_norm */
static void layernorm_forward(float *y, double *mean, float *rstd, const float *x, const float *w, const float *b,
                              int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim > OPS_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    float *yr = y + r * dim;
    double sum = 0.0;
    for (int64_t i = 0; i < dim; i++) sum += xr[i];
    double m = sum / (double)dim;
    /* Two passes (mean, then squared deviations) avoid the cancellation of E[x^2] - E[x]^2. */
    double sq = 0.0;
    for (int64_t i = 0; i < dim; i++) {
      double dev = xr[i] - m;
      sq += dev * dev;
    }
    double s = 1.0 / sqrt(sq / (double)dim + (double)eps);
    for (int64_t i = 0; i < dim; i++) {
      float v = (float)((xr[i] - m) * s);
      yr[i] = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
    }
    mean[r] = m;
    rstd[r] = (float)s;
  }
}

/* dx += rstd * (g - mean(g) - n * mean(g * n)) with g = dy * w and n the normalised input;
 * dw += sum_rows dy * n, db += sum_rows dy.
 * dx, x, dy: (rows, dim), dw, db, w: (dim) or NULL, mean, rstd: (rows). */
static void layernorm_backward_kernel(float *dx, float *dw, float *db, const float *dy, const float *x,
                                      const float *w, const double *mean, const float *rstd, int64_t rows,
                                      int64_t dim) {
  if (dx) {
#pragma omp parallel for schedule(static) if (rows * dim > OPS_PARALLEL_MIN)
    for (int64_t r = 0; r < rows; r++) {
      const float *xr = x + r * dim, *gr = dy + r * dim;
      float *dr = dx + r * dim;
      double m = mean[r];
      float s = rstd[r];
      double g_mean = 0.0, gn_mean = 0.0;
      for (int64_t i = 0; i < dim; i++) {
        float g = gr[i] * (w ? w[i] : 1.0f);
        g_mean += g;
        gn_mean += (double)g * (float)((xr[i] - m) * s);
      }
      float gm = (float)(g_mean / (double)dim), gnm = (float)(gn_mean / (double)dim);
      for (int64_t i = 0; i < dim; i++) {
        float g = gr[i] * (w ? w[i] : 1.0f), n = (float)((xr[i] - m) * s);
        dr[i] += s * (g - gm - n * gnm);
      }
    }
  }
  if (dw || db) {
    /* Parallel over columns: each thread owns its slice of dw/db, so no races and a fixed order. */
#pragma omp parallel for schedule(static) if (rows * dim > OPS_PARALLEL_MIN)
    for (int64_t i = 0; i < dim; i++) {
      double acc_w = 0.0, acc_b = 0.0;
      for (int64_t r = 0; r < rows; r++) {
        float g = dy[r * dim + i];
        acc_w += (double)g * (float)((x[r * dim + i] - mean[r]) * rstd[r]);
        acc_b += g;
      }
      if (dw) dw[i] += (float)acc_w;
      if (db) db[i] += (float)acc_b;
    }
  }
}

/* saved: mean (double), rstd (float) per row; iarg: rows, dim. */
static void layernorm_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
  layernorm_backward_kernel(hakd_grad(ctx, x), hakd_grad(ctx, w), hakd_grad(ctx, b), node->out->grad, hakd_f32(x),
                            w ? hakd_f32(w) : NULL, node->saved[0], node->saved[1], node->iarg[0], node->iarg[1]);
}

hakd_tensor *hakd_layernorm(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *weight, hakd_tensor *bias, float eps) {
  if (!x) return NULL;
  if (x->dtype != HAKD_F32 || (weight && weight->dtype != HAKD_F32) || (bias && bias->dtype != HAKD_F32))
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "layernorm: inputs must be float32");
  char sx[96], sw[96];
  if (x->ndim < 1) return hakd_ctx_fail(ctx, HAKD_ESHAPE, "layernorm: input has no dims");
  int64_t dim = x->shape[x->ndim - 1], rows = ops_prod(x->shape, 0, x->ndim - 1);
  hakd_tensor *affine[2] = {weight, bias};
  for (int k = 0; k < 2; k++)
    if (affine[k] && (affine[k]->ndim != 1 || affine[k]->shape[0] != dim))
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "layernorm: %s %s does not match the last dim of x %s",
                           k ? "bias" : "weight", hakd_shape_str(affine[k], sw, sizeof sw),
                           hakd_shape_str(x, sx, sizeof sx));
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  double *mean = hakd_ctx_alloc(ctx, (size_t)rows * sizeof(double));
  float *rstd = hakd_ctx_alloc(ctx, (size_t)rows * sizeof(float));
  if (!y || !mean || !rstd) return NULL;
  layernorm_forward(hakd_f32(y), mean, rstd, hakd_f32(x), weight ? hakd_f32(weight) : NULL,
                    bias ? hakd_f32(bias) : NULL, rows, dim, eps);
  hakd_tensor *in[3] = {x, weight, bias};
  hakd_node *node = hakd_record(ctx, "layernorm", layernorm_backward, y, 3, in);
  if (node) {
    node->saved[0] = mean;
    node->saved[1] = rstd;
    node->iarg[0] = rows;
    node->iarg[1] = dim;
    hakd_node_unneeded(ctx, node, -1);
  }
  return y;
}
