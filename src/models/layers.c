#include "models/layers.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *layer_name(char buf[LAYER_NAME_MAX], const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, LAYER_NAME_MAX, fmt, ap);
  va_end(ap);
  return buf;
}

int layer_conv_init(layer_conv *c, hakd_params *p, const char *prefix, int cin, int cout, int kernel, int stride,
                    int padding, int dilation, int groups, int bias) {
  char name[LAYER_NAME_MAX];
  if (groups <= 0 || cin % groups || cout % groups)
    return hakd_error(HAKD_EINVAL, "%s: %d -> %d channels not divisible by %d groups", prefix, cin, cout, groups);
  int64_t wshape[4] = {cout, cin / groups, kernel, kernel}, bshape[1] = {cout};
  c->weight = hakd_params_add(p, layer_name(name, "%s.weight", prefix), 4, wshape, 0);
  c->bias = bias ? hakd_params_add(p, layer_name(name, "%s.bias", prefix), 1, bshape, 0) : NULL;
  c->stride = stride;
  c->padding = padding;
  c->dilation = dilation;
  c->groups = groups;
  return (!c->weight || (bias && !c->bias)) ? HAKD_ENOMEM : 0;
}

hakd_tensor *layer_conv_forward(hakd_ctx *ctx, const layer_conv *c, hakd_tensor *x) {
  /* a plain convolution (a head's classifier) answers float32: blocked input ends its chain here */
  return hakd_conv2d(ctx, hakd_to_f32(ctx, x), c->weight, c->bias, c->stride, c->padding, c->dilation, c->groups);
}

int layer_bn_init(layer_bn *bn, hakd_params *p, const char *prefix, int channels, float eps, float momentum) {
  char name[LAYER_NAME_MAX];
  int64_t shape[1] = {channels};
  bn->weight = hakd_params_add(p, layer_name(name, "%s.weight", prefix), 1, shape, 0);
  bn->bias = hakd_params_add(p, layer_name(name, "%s.bias", prefix), 1, shape, 0);
  bn->running_mean = hakd_params_add(p, layer_name(name, "%s.running_mean", prefix), 1, shape, 1);
  bn->running_var = hakd_params_add(p, layer_name(name, "%s.running_var", prefix), 1, shape, 1);
  bn->num_batches_tracked = hakd_params_add(p, layer_name(name, "%s.num_batches_tracked", prefix), 0, shape, 1);
  bn->eps = eps;
  bn->momentum = momentum;
  if (!bn->weight || !bn->bias || !bn->running_mean || !bn->running_var || !bn->num_batches_tracked)
    return HAKD_ENOMEM;
  for (int i = 0; i < channels; i++) {
    hakd_f32(bn->weight)[i] = 1.0f;
    hakd_f32(bn->running_var)[i] = 1.0f;
  }
  return 0;
}

hakd_tensor *layer_bn_forward(hakd_ctx *ctx, layer_bn *bn, hakd_tensor *x) {
  if (x && hakd_ctx_training(ctx)) hakd_f32(bn->num_batches_tracked)[0] += 1.0f;
  return hakd_batchnorm2d(ctx, x, bn->weight, bn->bias, bn->running_mean, bn->running_var, bn->momentum, bn->eps);
}

/* A developer's 0/1 switch from the environment: 1 when unset or empty, 0 for "0", 1 for "1";
 * any other value fails ctx (a typo must not silently measure the other path) and gives -1. */
static int layer_env_switch(hakd_ctx *ctx, const char *name) {
  const char *env = getenv(name);
  if (!env || !*env || strcmp(env, "1") == 0) return 1;
  if (strcmp(env, "0") == 0) return 0;
  hakd_ctx_fail(ctx, HAKD_EINVAL, "%s=%s: expected 0 or 1", name, env);
  return -1;
}

/* Whether float32 training runs BatchNorm, residual and activation as one op (the default) or as
 * separate ops (HAKD_BN_FUSED=0: a developer's A/B switch; the two compute the same values). */
static int layer_bn_fused(hakd_ctx *ctx) { return layer_env_switch(ctx, "HAKD_BN_FUSED"); }

hakd_tensor *layer_conv_bn_forward(hakd_ctx *ctx, const layer_conv *c, layer_bn *bn, hakd_tensor *x,
                                   hakd_tensor *residual, hakd_activation act) {
  if (hakd_ctx_grad(ctx) || hakd_ctx_training(ctx)) {
    /* bf16 training's chain: the convolution keeps blocked bfloat16 (where it runs in bf16), and
     * BatchNorm, the residual and the activation are one op on that layout */
    hakd_tensor *conv = x && HAKD_IS_BLOCKED(x)
                            ? hakd_conv2d(ctx, x, c->weight, c->bias, c->stride, c->padding, c->dilation, c->groups)
                            : layer_conv_forward(ctx, c, x);
    if (conv && HAKD_IS_BLOCKED(conv)) {
      if (hakd_ctx_training(ctx)) hakd_f32(bn->num_batches_tracked)[0] += 1.0f;
      residual = conv->dtype == HAKD_F32_BLOCKED ? hakd_to_f32_blocked(ctx, residual) : hakd_to_bf16_blocked(ctx, residual);
      return hakd_batchnorm2d_act(ctx, conv, bn->weight, bn->bias, bn->running_mean, bn->running_var, bn->momentum,
                                  bn->eps, residual, act);
    }
    /* float32: the same op on NCHW (batchnorm.c), the values those of batchnorm, add and the
     * activation one by one (HAKD_BN_FUSED=0 runs them so, for comparisons) */
    residual = hakd_to_f32(ctx, residual);
    if (!conv) return NULL;
    int fused = layer_bn_fused(ctx);
    if (fused < 0) return NULL;
    if (fused) {
      if (hakd_ctx_training(ctx)) hakd_f32(bn->num_batches_tracked)[0] += 1.0f;
      return hakd_batchnorm2d_act(ctx, conv, bn->weight, bn->bias, bn->running_mean, bn->running_var, bn->momentum,
                                  bn->eps, residual, act);
    }
    hakd_tensor *y = layer_bn_forward(ctx, bn, conv);
    if (residual) y = hakd_add(ctx, y, residual);
    return act == HAKD_ACT_RELU ? hakd_relu(ctx, y) : act == HAKD_ACT_RELU6 ? hakd_relu6(ctx, y) : y;
  }
  /* eval BatchNorm = x * scale + shift per channel, as batchnorm2d computes it */
  int64_t channels = hakd_numel(bn->running_mean);
  hakd_tensor *scale = hakd_tensor_new(ctx, HAKD_F32, 1, &channels), *shift = hakd_tensor_new(ctx, HAKD_F32, 1, &channels);
  if (!scale || !shift) return NULL;
  const float *mean = hakd_f32(bn->running_mean), *var = hakd_f32(bn->running_var);
  for (int64_t i = 0; i < channels; i++) {
    float rstd = (float)(1.0 / sqrt((double)var[i] + (double)bn->eps));
    hakd_f32(scale)[i] = rstd * (bn->weight ? hakd_f32(bn->weight)[i] : 1.0f);
    hakd_f32(shift)[i] = (bn->bias ? hakd_f32(bn->bias)[i] : 0.0f) - mean[i] * hakd_f32(scale)[i];
  }
  return hakd_conv2d_affine_act(ctx, x, c->weight, c->bias, scale, shift, residual, act, c->stride, c->padding,
                                c->dilation, c->groups);
}

/* Whether a chain keeps blocked bfloat16: bf16 inference (layer_conv_bn_forward's fused path),
 * and bf16 training (or any pass recording gradients) unless HAKD_BF16_BLOCKED_TRAIN=0 asks for
 * the earlier plain path (float32 NCHW tensors between bf16 convolutions: kept so the two can be
 * compared, tests/test_bf16_train.c). */
int layer_chain_blocked(hakd_ctx *ctx) {
  if (hakd_ctx_precision(ctx) != HAKD_BF16) return 0;
  if (!hakd_ctx_grad(ctx) && !hakd_ctx_training(ctx)) return 1;
  return layer_env_switch(ctx, "HAKD_BF16_BLOCKED_TRAIN") == 1; /* a bad value fails ctx */
}

hakd_tensor *layer_chain_begin(hakd_ctx *ctx, hakd_tensor *x) {
  return layer_chain_blocked(ctx) ? hakd_to_bf16_blocked(ctx, x) : x;
}

/* HAKD_F32_BLOCKED_TRAIN=0 keeps float32 training on NCHW tensors (the earlier path, for
 * comparisons; model_cnn.f32_blocked_chain_matches_nchw_training_step compares the two). */
hakd_tensor *layer_dense_chain_begin(hakd_ctx *ctx, hakd_tensor *x) {
  if (hakd_ctx_precision(ctx) == HAKD_FP32 && hakd_ctx_grad(ctx)) {
    int on = layer_env_switch(ctx, "HAKD_F32_BLOCKED_TRAIN"); /* a bad value fails ctx */
    return on == 1 ? hakd_to_f32_blocked(ctx, x) : on == 0 ? x : NULL;
  }
  return layer_chain_begin(ctx, x);
}


hakd_tensor *layer_spread_pooled(hakd_ctx *ctx, hakd_tensor *pooled, const hakd_tensor *like) {
  if (!pooled || !like) return NULL;
  hakd_tensor *spread = hakd_resize_bilinear(ctx, hakd_to_f32(ctx, pooled), like->shape[2], like->shape[3], 0);
  return like->dtype == HAKD_BF16_BLOCKED  ? hakd_to_bf16_blocked(ctx, spread)
         : like->dtype == HAKD_F32_BLOCKED ? hakd_to_f32_blocked(ctx, spread)
                                           : spread;
}

int layer_linear_init(layer_linear *l, hakd_params *p, const char *prefix, int in, int out, int bias) {
  char name[LAYER_NAME_MAX];
  int64_t wshape[2] = {out, in}, bshape[1] = {out};
  l->weight = hakd_params_add(p, layer_name(name, "%s.weight", prefix), 2, wshape, 0);
  l->bias = bias ? hakd_params_add(p, layer_name(name, "%s.bias", prefix), 1, bshape, 0) : NULL;
  return (!l->weight || (bias && !l->bias)) ? HAKD_ENOMEM : 0;
}

hakd_tensor *layer_linear_forward(hakd_ctx *ctx, const layer_linear *l, hakd_tensor *x) {
  return hakd_linear(ctx, x, l->weight, l->bias);
}

int layer_ln_init(layer_ln *ln, hakd_params *p, const char *prefix, int dim, float eps) {
  char name[LAYER_NAME_MAX];
  int64_t shape[1] = {dim};
  ln->weight = hakd_params_add(p, layer_name(name, "%s.weight", prefix), 1, shape, 0);
  ln->bias = hakd_params_add(p, layer_name(name, "%s.bias", prefix), 1, shape, 0);
  ln->eps = eps;
  if (!ln->weight || !ln->bias) return HAKD_ENOMEM;
  for (int i = 0; i < dim; i++) hakd_f32(ln->weight)[i] = 1.0f;
  return 0;
}

hakd_tensor *layer_ln_forward(hakd_ctx *ctx, const layer_ln *ln, hakd_tensor *x) {
  return hakd_layernorm(ctx, x, ln->weight, ln->bias, ln->eps);
}

int layer_scale_channels(int channels, float width, int divisor) {
  if (width == 1.0f) return channels;
  int c = (int)(channels * width + 0.5f);
  if (divisor > 1) c = ((c + divisor / 2) / divisor) * divisor;
  return c < divisor ? (divisor > 0 ? divisor : 1) : c;
}
