/* Layer normalisation over the last dim. */
#include <math.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

/* Row sums run in LANES interleaved double partial sums: the compiler vectorises the fixed lane
 * order without -ffast-math, and the result is the same for any thread count. */
#define LANES 8

/* Adds the LANES partial sums and the tail's terms (already summed into tail). */
static inline double lanes_total(const double *lane, double tail) {
  double total = 0.0;
  for (int k = 0; k < LANES; k++) total += lane[k];
  return total + tail;
}

/* y = (x - mean) * rstd * w + b per row; mean/rstd saved for backward. The mean stays in double:
 * rounded to float it would shift rows with a large common offset by up to half an ulp of it.
 * y, x: (rows, dim), mean, rstd: (rows), w, b: (dim) or NULL. reference: F.layer_norm */
static void layernorm_forward(float *y, double *mean, float *rstd, const float *x, const float *w, const float *b,
                              int64_t rows, int64_t dim, float eps) {
  int64_t body = dim / LANES * LANES;
#pragma omp parallel for schedule(static) if (rows * dim > OPS_PARALLEL_MIN)
  for (int64_t r = 0; r < rows; r++) {
    const float *xr = x + r * dim;
    float *yr = y + r * dim;
    double lane[LANES] = {0}, tail = 0.0;
    for (int64_t i = 0; i < body; i += LANES)
      for (int k = 0; k < LANES; k++) lane[k] += xr[i + k];
    for (int64_t i = body; i < dim; i++) tail += xr[i];
    double m = lanes_total(lane, tail) / (double)dim;
    /* Two passes (mean, then squared deviations) avoid the cancellation of E[x^2] - E[x]^2. */
    double sq[LANES] = {0};
    tail = 0.0;
    for (int64_t i = 0; i < body; i += LANES)
      for (int k = 0; k < LANES; k++) {
        double dev = xr[i + k] - m;
        sq[k] += dev * dev;
      }
    for (int64_t i = body; i < dim; i++) tail += (xr[i] - m) * (xr[i] - m);
    double s = 1.0 / sqrt(lanes_total(sq, tail) / (double)dim + (double)eps);
    if (w && b) {
      for (int64_t i = 0; i < dim; i++) yr[i] = (float)((xr[i] - m) * s) * w[i] + b[i];
    } else {
      for (int64_t i = 0; i < dim; i++) {
        float v = (float)((xr[i] - m) * s);
        yr[i] = v * (w ? w[i] : 1.0f) + (b ? b[i] : 0.0f);
      }
    }
    mean[r] = m;
    rstd[r] = (float)s;
  }
}

/* Row chunks of the backward: each chunk sums its rows' dw/db terms into its own slot, and the
 * slots are added in order afterwards, so the sums do not depend on the thread count. */
#define CHUNKS 64

/* dx += rstd * (g - mean(g) - n * mean(g * n)) with g = dy * w and n the normalised input;
 * dw += sum_rows dy * n, db += sum_rows dy. Rows run in parallel; dw/db through per-chunk
 * partial sums (part_w, part_b: (CHUNKS, dim) doubles, needed when dw or db is wanted).
 * dx, x, dy: (rows, dim), dw, db, w: (dim) or NULL, mean, rstd: (rows). */
static void layernorm_backward_kernel(float *dx, float *dw, float *db, double *part_w, double *part_b, const float *dy,
                                      const float *x, const float *w, const double *mean, const float *rstd,
                                      int64_t rows, int64_t dim) {
  int64_t body = dim / LANES * LANES, chunk_rows = (rows + CHUNKS - 1) / CHUNKS;
  int want_wb = dw || db;
#pragma omp parallel for schedule(static) if (rows * dim > OPS_PARALLEL_MIN)
  for (int c = 0; c < CHUNKS; c++) {
    int64_t r_begin = c * chunk_rows, r_end = r_begin + chunk_rows < rows ? r_begin + chunk_rows : rows;
    double *pw = want_wb ? part_w + c * dim : NULL, *pb = want_wb ? part_b + c * dim : NULL;
    if (want_wb)
      for (int64_t i = 0; i < dim; i++) pw[i] = pb[i] = 0.0;
    for (int64_t r = r_begin; r < r_end; r++) {
      const float *xr = x + r * dim, *gr = dy + r * dim;
      double m = mean[r];
      float s = rstd[r];
      if (dx) {
        float *dr = dx + r * dim;
        double g_lane[LANES] = {0}, gn_lane[LANES] = {0}, g_tail = 0.0, gn_tail = 0.0;
        for (int64_t i = 0; i < body; i += LANES)
          for (int k = 0; k < LANES; k++) {
            float g = gr[i + k] * (w ? w[i + k] : 1.0f);
            g_lane[k] += g;
            gn_lane[k] += (double)g * (float)((xr[i + k] - m) * s);
          }
        for (int64_t i = body; i < dim; i++) {
          float g = gr[i] * (w ? w[i] : 1.0f);
          g_tail += g;
          gn_tail += (double)g * (float)((xr[i] - m) * s);
        }
        float gm = (float)(lanes_total(g_lane, g_tail) / (double)dim);
        float gnm = (float)(lanes_total(gn_lane, gn_tail) / (double)dim);
        for (int64_t i = 0; i < dim; i++) {
          float g = gr[i] * (w ? w[i] : 1.0f), n = (float)((xr[i] - m) * s);
          dr[i] += s * (g - gm - n * gnm);
        }
      }
      if (want_wb)
        for (int64_t i = 0; i < dim; i++) {
          pw[i] += (double)gr[i] * (float)((xr[i] - m) * s);
          pb[i] += gr[i];
        }
    }
  }
  if (want_wb)
    for (int64_t i = 0; i < dim; i++) {
      double acc_w = 0.0, acc_b = 0.0;
      for (int c = 0; c < CHUNKS; c++) {
        acc_w += part_w[c * dim + i];
        acc_b += part_b[c * dim + i];
      }
      if (dw) dw[i] += (float)acc_w;
      if (db) db[i] += (float)acc_b;
    }
}

/* saved: mean (double), rstd (float) per row; iarg: rows, dim. */
static void layernorm_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0], *w = node->in[1], *b = node->in[2];
  int64_t rows = node->iarg[0], dim = node->iarg[1];
  float *dx = hakd_grad(ctx, x), *dw = hakd_grad(ctx, w), *db = hakd_grad(ctx, b);
  double *part = NULL;
  if (dw || db) {
    part = hakd_ctx_scratch(ctx, (size_t)(2 * CHUNKS * dim) * sizeof(double));
    if (!part) return;
  }
  layernorm_backward_kernel(dx, dw, db, part, part ? part + CHUNKS * dim : NULL, node->out->grad, hakd_f32(x),
                            w ? hakd_f32(w) : NULL, node->saved[0], node->saved[1], rows, dim);
  if (part) hakd_ctx_scratch_free(ctx, part);
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
