/* The trainable 1x1 conv (+BN, +ReLU) blocks of the distiller (projectors, aligners), and FitNet. */
#include <stdio.h>
#include <string.h>

#include "distill/distill_internal.h"
#include "hakd/ops.h"

#define BN_EPS 1e-5f

static hakd_tensor *add_param(hakd_params *p, const char *prefix, const char *suffix, int ndim, const int64_t *shape,
                              int is_buffer) {
  char name[256];
  snprintf(name, sizeof name, "%s%s", prefix, suffix);
  return hakd_params_add(p, name, ndim, shape, is_buffer);
}

int distill_conv1x1_init(distill_conv1x1 *c, hakd_params *p, const char *prefix, int cin, int cout, int bn,
                         int relu, float bn_momentum) {
  memset(c, 0, sizeof *c);
  int64_t wshape[4] = {cout, cin, 1, 1}, cshape[1] = {cout};
  c->relu = relu;
  c->bn_momentum = bn_momentum;
  if (bn) {
    c->weight = add_param(p, prefix, ".0.weight", 4, wshape, 0);
    c->bn_weight = add_param(p, prefix, ".1.weight", 1, cshape, 0);
    c->bn_bias = add_param(p, prefix, ".1.bias", 1, cshape, 0);
    c->bn_mean = add_param(p, prefix, ".1.running_mean", 1, cshape, 1);
    c->bn_var = add_param(p, prefix, ".1.running_var", 1, cshape, 1);
    c->bn_batches = add_param(p, prefix, ".1.num_batches_tracked", 0, cshape, 1);
    if (!c->weight || !c->bn_weight || !c->bn_bias || !c->bn_mean || !c->bn_var || !c->bn_batches)
      return HAKD_ENOMEM;
  } else {
    c->weight = add_param(p, prefix, ".weight", 4, wshape, 0);
    c->bias = add_param(p, prefix, ".bias", 1, cshape, 0);
    if (!c->weight || !c->bias) return HAKD_ENOMEM;
  }
  return 0;
}

hakd_tensor *distill_conv1x1_forward(hakd_ctx *ctx, distill_conv1x1 *c, hakd_tensor *x, int update_stats) {
  hakd_tensor *y = hakd_conv2d(ctx, x, c->weight, c->bias, 1, 0, 1, 1);
  if (c->bn_weight && y) {
    hakd_tensor *mean = c->bn_mean, *var = c->bn_var;
    if (!update_stats) {
      /* batch statistics are the same; the running-stat update goes to throwaway copies */
      mean = hakd_tensor_from(ctx, HAKD_F32, 1, c->bn_mean->shape, c->bn_mean->data);
      var = hakd_tensor_from(ctx, HAKD_F32, 1, c->bn_var->shape, c->bn_var->data);
      if (!mean || !var) return NULL;
    } else if (hakd_ctx_training(ctx)) {
      hakd_f32(c->bn_batches)[0] += 1.0f;
    }
    y = hakd_batchnorm2d(ctx, y, c->bn_weight, c->bn_bias, mean, var, c->bn_momentum, BN_EPS);
  }
  if (c->relu) y = hakd_relu(ctx, y);
  return y;
}

hakd_tensor *distill_fitnet_loss(hakd_ctx *ctx, distill_conv1x1 *align, hakd_tensor *f_s, hakd_tensor *f_t) {
  if (!f_s || !f_t) return NULL;
  if (f_s->ndim != 4 || f_t->ndim != 4 || f_s->shape[0] != f_t->shape[0] || f_t->shape[1] != align->weight->shape[0] ||
      f_s->shape[1] != align->weight->shape[1]) {
    char a[64], b[64];
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "fitnet: student feature %s / teacher feature %s do not fit the %lld -> %lld aligner",
                         hakd_shape_str(f_s, a, sizeof a), hakd_shape_str(f_t, b, sizeof b),
                         (long long)align->weight->shape[1], (long long)align->weight->shape[0]);
  }
  hakd_tensor *target = hakd_detach(ctx, f_t);
  if (target && (f_t->shape[2] != f_s->shape[2] || f_t->shape[3] != f_s->shape[3]))
    target = hakd_resize_bilinear(ctx, target, f_s->shape[2], f_s->shape[3], 0);
  return hakd_loss_mse(ctx, distill_conv1x1_forward(ctx, align, f_s, 1), target);
}
