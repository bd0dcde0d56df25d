/* Building blocks of the distillation losses (internal to src/distill; the tests use them to
 * check the KL term with fixed constants). */
#ifndef HAKD_DISTILL_INTERNAL_H
#define HAKD_DISTILL_INTERNAL_H

#include "hakd/distill.h"

typedef enum {
  DISTILL_KL_SOFTMAX,  /* KL of two categorical distributions: softmax along the `len` axis */
  DISTILL_KL_BERNOULLI /* per element KL of two Bernoulli distributions sigmoid(t/T), sigmoid(s/T) */
} distill_kl_kind;

/* scale * sum_g weight_g * KL(p_t,g || p_s,g) where, for DISTILL_KL_SOFTMAX, s and target are
 * viewed as (outer, len, inner) and a group g = (o, i) is the softmax over len of x/T; for
 * DISTILL_KL_BERNOULLI every element is a group. The gradient flows into s only:
 * dL/ds = scale * weight_g * (p_s - p_t) / T.
 * s: (any shape, outer*len*inner elements); target: same numel, a constant;
 * weights: (outer*inner) for SOFTMAX, (numel) for BERNOULLI, or NULL for all ones.
 * Returns (1). reference: F.kl_div(F.log_softmax(s/T, dim), F.softmax(t/T, dim), reduction="none")
 * summed over dim, weighted, summed, times scale. */
hakd_tensor *distill_kl(hakd_ctx *ctx, hakd_tensor *s, const float *target, const float *weights,
                        distill_kl_kind kind, int64_t outer, int64_t len, int64_t inner, float T, double scale);

/* The constants of L_hakd (HETEROAKD.md sections 2-4) on one grid.
 * z_hyb: (N,K,h,w) out, KMM's hybrid logits (Z_t with no_kmm; Z_t at ignored pixels);
 * weights: (N,h,w) for ce, (N,K,h,w) for bce, out, the KEM weight map;
 * z_s, z_t: (N,K,h,w); labels: (N,h,w), each in [0,K) or o->ignore_index (checked by the caller).
 * Returns 0 or HAKD_ENOMEM (context status set). */
int distill_hakd_targets(hakd_ctx *ctx, float *z_hyb, float *weights, const float *z_s, const float *z_t,
                         const int32_t *labels, int64_t n, int64_t k, int64_t hw, const hakd_hakd_loss_options *o);

/* Checks labels (N,H,W) I32 against K classes; message names `what`. 0 or a ctx failure status. */
int distill_check_labels(hakd_ctx *ctx, const hakd_tensor *labels, int64_t k, int ignore_index, const char *what);

/* A 1x1 conv (+ optional BatchNorm, + optional ReLU) with trainable parameters, as
 * nn.Sequential(Conv2d(cin, cout, 1, bias=!bn), BatchNorm2d(cout)[, ReLU]); `prefix`.0.weight, ... */
typedef struct {
  hakd_tensor *weight, *bias;                          /* (cout, cin, 1, 1), (cout) or NULL */
  hakd_tensor *bn_weight, *bn_bias, *bn_mean, *bn_var; /* (cout) each, NULL without BN */
  hakd_tensor *bn_batches;                             /* num_batches_tracked, () */
  int relu;
  float bn_momentum;
} distill_conv1x1;

int distill_conv1x1_init(distill_conv1x1 *c, hakd_params *p, const char *prefix, int cin, int cout, int bn,
                         int relu, float bn_momentum);
/* y = relu?(bn?(conv(x))). update_stats 0 runs BN in the context's mode but leaves the running
 * statistics untouched (a second pass over the same batch). */
hakd_tensor *distill_conv1x1_forward(hakd_ctx *ctx, distill_conv1x1 *c, hakd_tensor *x, int update_stats);

/* FitNet: MSE between align(f_s) and f_t resized bilinearly (align_corners=False) to f_s's grid.
 * f_s (N,C_s,h,w), f_t (N,C_t,h',w') a constant. */
hakd_tensor *distill_fitnet_loss(hakd_ctx *ctx, distill_conv1x1 *align, hakd_tensor *f_s, hakd_tensor *f_t);

#endif
