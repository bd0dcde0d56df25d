/* L_hakd (HETEROAKD.md sections 2-5): reliability, KMM, KEM, and the weighted KL. */
#include <math.h>
#include <string.h>

#include "distill/distill_internal.h"
#include "hakd/ops.h"

#define KMM_EPS 1e-6
#define TARGETS_PARALLEL_MIN 4096

void hakd_hakd_loss_options_default(hakd_hakd_loss_options *o) {
  memset(o, 0, sizeof *o);
  o->T = 4.0f;
  o->reliability = HAKD_RELIABILITY_CE;
  o->kem_axis = HAKD_KEM_AXIS_SPATIAL;
  o->ignore_index = 255;
}

static double softplus(double x) { return (x > 0 ? x : 0.0) + log1p(exp(-fabs(x))); }

/* Cross-entropy, against class y, of one pixel's mixed logits m_c = mix * t[c] + (1 - mix) * s[c]
 * (c-th logit at offset c * stride): logsumexp(m) - m[y]. mix 0 gives Z_s, 1 gives Z_t exactly. */
static double pixel_ce(const float *s, const float *t, int64_t stride, int64_t k, int32_t y, double mix) {
  double m = -INFINITY, sum = 0.0;
  for (int64_t c = 0; c < k; c++) {
    double v = mix * t[c * stride] + (1.0 - mix) * s[c * stride];
    if (v > m) m = v;
  }
  for (int64_t c = 0; c < k; c++) sum += exp(mix * t[c * stride] + (1.0 - mix) * s[c * stride] - m);
  return m + log(sum) - (mix * t[y * stride] + (1.0 - mix) * s[y * stride]);
}

/* One-vs-rest binary cross-entropy with logits: softplus(z) - [is_target] z. */
static double class_bce(double z, int is_target) { return softplus(z) - (is_target ? z : 0.0); }

/* w[i * stride] = softmax of e[i * stride] over the entries i < n with valid[i * valid_stride];
 * 0 elsewhere; all 0 when none is valid. */
static void masked_softmax(float *w, const double *e, const unsigned char *valid, int64_t valid_stride, int64_t n,
                           int64_t stride) {
  double m = -INFINITY, sum = 0.0;
  for (int64_t i = 0; i < n; i++)
    if (valid[i * valid_stride] && e[i * stride] > m) m = e[i * stride];
  for (int64_t i = 0; i < n; i++)
    if (valid[i * valid_stride]) sum += exp(e[i * stride] - m);
  for (int64_t i = 0; i < n; i++)
    w[i * stride] = valid[i * valid_stride] ? (float)(exp(e[i * stride] - m) / sum) : 0.0f;
}

int distill_hakd_targets(hakd_ctx *ctx, float *z_hyb, float *weights, const float *z_s, const float *z_t,
                         const int32_t *labels, int64_t n, int64_t k, int64_t hw, const hakd_hakd_loss_options *o) {
  int bce = o->reliability == HAKD_RELIABILITY_BCE;
  int64_t per_pixel = bce ? k : 1; /* KEM entries per pixel */
  int64_t pixels = n * hw;
  double *energy = hakd_ctx_alloc(ctx, (size_t)(pixels * per_pixel) * sizeof(double));
  unsigned char *valid = hakd_ctx_alloc(ctx, (size_t)pixels);
  if (!energy || !valid) return hakd_ctx_status(ctx);

  /* Per pixel: S_t, Z_hyb, and the KEM energy E = H_s + max(0, H_s - H_hyb), per pixel (ce) or
   * per pixel and class (bce), stored (n, per_pixel, hw). */
#pragma omp parallel for schedule(static) if (pixels * k > TARGETS_PARALLEL_MIN)
  for (int64_t px = 0; px < pixels; px++) {
    int64_t b = px / hw, p = px % hw;
    const float *zs = z_s + b * k * hw + p, *zt = z_t + b * k * hw + p;
    float *zh = z_hyb + b * k * hw + p;
    double *eb = energy + b * per_pixel * hw + p;
    int32_t y = labels[px];
    valid[px] = y != o->ignore_index;
    if (!valid[px]) {
      for (int64_t c = 0; c < k; c++) zh[c * hw] = zt[c * hw];
      for (int64_t j = 0; j < per_pixel; j++) eb[j * hw] = 0.0;
    } else if (!bce) {
      double h_s = pixel_ce(zs, zt, hw, k, y, 0.0);
      double s_t = o->no_kmm ? 1.0 : h_s / (pixel_ce(zs, zt, hw, k, y, 1.0) + h_s + KMM_EPS);
      for (int64_t c = 0; c < k; c++) zh[c * hw] = (float)(s_t * zt[c * hw] + (1.0 - s_t) * zs[c * hw]);
      double lag = h_s - pixel_ce(zs, zt, hw, k, y, s_t);
      eb[0] = h_s + (lag > 0.0 ? lag : 0.0);
    } else {
      for (int64_t c = 0; c < k; c++) {
        int is_target = c == y;
        double s = zs[c * hw], t = zt[c * hw];
        double h_s = class_bce(s, is_target);
        double s_t = o->no_kmm ? 1.0 : h_s / (class_bce(t, is_target) + h_s + KMM_EPS);
        double hyb = s_t * t + (1.0 - s_t) * s;
        zh[c * hw] = (float)hyb;
        double lag = h_s - class_bce(hyb, is_target);
        eb[c * hw] = h_s + (lag > 0.0 ? lag : 0.0);
      }
    }
  }

  /* W: softmax of E over each image's valid pixels (per class for bce), over the classes of a
   * pixel (bce, class axis), or uniform over the valid pixels (no_kem). */
  for (int64_t b = 0; b < n; b++) {
    const unsigned char *vb = valid + b * hw;
    float *wb = weights + b * per_pixel * hw;
    const double *eb = energy + b * per_pixel * hw;
    if (o->no_kem) {
      int64_t count = 0;
      for (int64_t p = 0; p < hw; p++) count += vb[p];
      for (int64_t j = 0; j < per_pixel; j++)
        for (int64_t p = 0; p < hw; p++) wb[j * hw + p] = vb[p] ? (float)(1.0 / (double)count) : 0.0f;
    } else if (bce && o->kem_axis == HAKD_KEM_AXIS_CLASS) {
      for (int64_t p = 0; p < hw; p++) masked_softmax(wb + p, eb + p, vb + p, 0, k, hw);
    } else {
      for (int64_t j = 0; j < per_pixel; j++) masked_softmax(wb + j * hw, eb + j * hw, vb, 1, hw, 1);
    }
  }
  return 0;
}

int distill_check_labels(hakd_ctx *ctx, const hakd_tensor *labels, int64_t k, int ignore_index, const char *what) {
  const int32_t *y = hakd_i32(labels);
  int64_t n = hakd_numel(labels), h = labels->shape[1], w = labels->shape[2];
  for (int64_t i = 0; i < n; i++)
    if (y[i] != ignore_index && (y[i] < 0 || y[i] >= k)) {
      hakd_ctx_fail(ctx, HAKD_ERANGE,
                    "%s: label %d at (image %lld, row %lld, col %lld) is outside [0, %lld) and not the ignore index %d",
                    what, y[i], (long long)(i / (h * w)), (long long)(i / w % h), (long long)(i % w), (long long)k,
                    ignore_index);
      return hakd_ctx_status(ctx);
    }
  return 0;
}

hakd_tensor *hakd_loss_hakd(hakd_ctx *ctx, hakd_tensor *z_s, hakd_tensor *z_t, hakd_tensor *labels,
                            const hakd_hakd_loss_options *o, hakd_tensor **weights_out) {
  if (weights_out) *weights_out = NULL;
  if (!z_s || !z_t || !labels) return NULL;
  char a[64], b[64], c[64];
  if (z_s->ndim != 4 || z_t->ndim != 4 || z_s->dtype != HAKD_F32 || z_t->dtype != HAKD_F32 ||
      z_s->shape[0] != z_t->shape[0] || z_s->shape[1] != z_t->shape[1] || labels->ndim != 3 ||
      labels->dtype != HAKD_I32 || labels->shape[0] != z_s->shape[0])
    return hakd_ctx_fail(ctx, HAKD_ESHAPE,
                         "hakd loss: Z_s %s, Z_t %s must be float (N, K, h, w) with equal N, K and labels %s int32 (N, H, W)",
                         hakd_shape_str(z_s, a, sizeof a), hakd_shape_str(z_t, b, sizeof b),
                         hakd_shape_str(labels, c, sizeof c));
  if (o->reliability != HAKD_RELIABILITY_BCE && o->kem_axis == HAKD_KEM_AXIS_CLASS)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "hakd loss: the class KEM axis needs the bce reliability");
  int64_t n = z_s->shape[0], k = z_s->shape[1], h = z_s->shape[2], w = z_s->shape[3];
  if (distill_check_labels(ctx, labels, k, o->ignore_index, "hakd loss labels")) return NULL;

  hakd_tensor *zt = hakd_detach(ctx, z_t);
  if (zt && (z_t->shape[2] != h || z_t->shape[3] != w)) zt = hakd_resize_bilinear(ctx, zt, h, w, 0);
  hakd_tensor *y = labels;
  if (labels->shape[1] != h || labels->shape[2] != w) y = hakd_resize_nearest(ctx, labels, h, w);
  int bce = o->reliability == HAKD_RELIABILITY_BCE;
  int64_t wshape[4] = {n, k, h, w}, hshape[3] = {n, h, w};
  hakd_tensor *weights = bce ? hakd_tensor_new(ctx, HAKD_F32, 4, wshape) : hakd_tensor_new(ctx, HAKD_F32, 3, hshape);
  float *z_hyb = hakd_ctx_alloc(ctx, (size_t)(n * k * h * w) * sizeof(float));
  if (!zt || !y || !weights || !z_hyb) return NULL;
  if (distill_hakd_targets(ctx, z_hyb, hakd_f32(weights), hakd_f32(z_s), hakd_f32(zt), hakd_i32(y), n, k, h * w, o))
    return NULL;
  double scale = n > 0 ? (double)o->T * o->T / (double)n : 0.0;
  hakd_tensor *loss = bce ? distill_kl(ctx, z_s, z_hyb, hakd_f32(weights), DISTILL_KL_BERNOULLI, n * k * h * w, 1, 1,
                                       o->T, scale)
                          : distill_kl(ctx, z_s, z_hyb, hakd_f32(weights), DISTILL_KL_SOFTMAX, n, k, h * w, o->T, scale);
  if (loss && weights_out) *weights_out = weights;
  return loss;
}
