/* Named parameter-holding layers shared by backbones and heads. Every parameter is registered
 * in the model's hakd_params under its PyTorch state_dict name: `<prefix>.weight`, ... */
#ifndef HAKD_MODELS_LAYERS_H
#define HAKD_MODELS_LAYERS_H

#include "hakd/ops.h"

/* snprintf into a fixed buffer: `layer_name(buf, "%s.conv%d", prefix, i)`. */
#define LAYER_NAME_MAX 160
const char *layer_name(char buf[LAYER_NAME_MAX], const char *fmt, ...) __attribute__((format(printf, 2, 3)));

typedef struct {
  hakd_tensor *weight, *bias; /* bias NULL when absent */
  int stride, padding, dilation, groups;
} layer_conv;

/* Conv2d `prefix`.weight (cout, cin/groups, k, k) [+ `prefix`.bias]. */
int layer_conv_init(layer_conv *c, hakd_params *p, const char *prefix, int cin, int cout, int kernel, int stride,
                    int padding, int dilation, int groups, int bias);
hakd_tensor *layer_conv_forward(hakd_ctx *ctx, const layer_conv *c, hakd_tensor *x);

typedef struct {
  hakd_tensor *weight, *bias, *running_mean, *running_var, *num_batches_tracked;
  float eps, momentum;
} layer_bn;

/* BatchNorm2d with torch's buffers (num_batches_tracked kept as a float scalar buffer and
 * exported as int64). */
int layer_bn_init(layer_bn *bn, hakd_params *p, const char *prefix, int channels, float eps, float momentum);
hakd_tensor *layer_bn_forward(hakd_ctx *ctx, layer_bn *bn, hakd_tensor *x);
/* act(bn(conv(x)) + residual) (residual may be NULL). In inference (no gradient recording,
 * eval mode) one fused op with the BatchNorm folded into the convolution; otherwise the ops one
 * by one, or with blocked x (bf16 or float32 training's chain) the convolution and one
 * hakd_batchnorm2d_act on that layout. */
hakd_tensor *layer_conv_bn_forward(hakd_ctx *ctx, const layer_conv *c, layer_bn *bn, hakd_tensor *x,
                                   hakd_tensor *residual, hakd_activation act);

/* Where a chain of layer_conv_bn_forward calls starts: in the bf16 precision (inference, and
 * training unless HAKD_BF16_BLOCKED_TRAIN=0: layer_chain_blocked) x becomes oneDNN's blocked
 * bfloat16 (HAKD_BF16_BLOCKED), and the convolutions, poolings and concatenations after it keep
 * that layout through the backbone and a CNN head; a head's classifier (layer_conv_forward) and
 * whatever needs float32 convert back (hakd_to_f32, which carries gradients). Everywhere else x
 * unchanged. */
int layer_chain_blocked(hakd_ctx *ctx);
hakd_tensor *layer_chain_begin(hakd_ctx *ctx, hakd_tensor *x);
/* layer_chain_begin for a backbone of dense convolutions (ResNet): also in float32 while
 * gradients are recorded (training, unless HAKD_F32_BLOCKED_TRAIN=0), x becomes blocked float32
 * (HAKD_F32_BLOCKED) and layer_conv_bn_forward keeps it, up to the stage outputs (the heads get
 * them as float32 NCHW, hakd_model_forward). Not for depthwise convolutions, which would convert
 * at each. */
hakd_tensor *layer_dense_chain_begin(hakd_ctx *ctx, hakd_tensor *x);

/* An image-pooling branch (N, C, 1, 1) spread bilinearly (align_corners=False) over like's map,
 * in like's layout: in bf16 inference the map is blocked bfloat16, and only the pooled values
 * (N x C) take the float32 resize and come back, so the concatenation with the other branches
 * stays in the layout. */
hakd_tensor *layer_spread_pooled(hakd_ctx *ctx, hakd_tensor *pooled, const hakd_tensor *like);

typedef struct {
  hakd_tensor *weight, *bias;
} layer_linear;

int layer_linear_init(layer_linear *l, hakd_params *p, const char *prefix, int in, int out, int bias);
hakd_tensor *layer_linear_forward(hakd_ctx *ctx, const layer_linear *l, hakd_tensor *x);

typedef struct {
  hakd_tensor *weight, *bias;
  float eps;
} layer_ln;

int layer_ln_init(layer_ln *ln, hakd_params *p, const char *prefix, int dim, float eps);
hakd_tensor *layer_ln_forward(hakd_ctx *ctx, const layer_ln *ln, hakd_tensor *x);

/* Scales a reference channel count by the width multiplier, keeping it >= 1 and a multiple of
 * `divisor` when the multiplier is not 1. */
int layer_scale_channels(int channels, float width, int divisor);

#endif
