/* ResNet-18/34/50/101 backbones with torchvision's layout and state_dict names
 * (`<prefix>.conv1`, `.bn1`, `.layer1.0.conv1`, `.layer1.0.downsample.0/1`, ...).
 *
 * Bottleneck is torchvision's v1.5 (stride on the 3x3 conv). Dilation follows torchvision's
 * replace_stride_with_dilation: a dilated layer drops its stride, multiplies the running
 * dilation by it, and its first block still uses the previous dilation. torchvision's
 * BasicBlock refuses dilation; here both of its 3x3 convs use the block's dilation (padding =
 * dilation), the same rule as the Bottleneck's 3x3.
 *
 * deep_stem replaces conv1/bn1 with mmseg ResNetV1c's stem: 3x3 convs 3->32 (stride 2) ->32->64,
 * each with BN and ReLU, named `<prefix>.stem.0/1/3/4/6/7`. The width multiplier scales every
 * channel count (stem, planes; the Bottleneck expansion stays 4). */
#include <stdlib.h>

#include "models/model_internal.h"

#define RESNET_BN_EPS 1e-5f

typedef struct {
  layer_conv conv1, conv2, conv3; /* conv3/bn3 only in a Bottleneck */
  layer_bn bn1, bn2, bn3;
  layer_conv downsample_conv; /* downsample.0 / .1 when the shortcut changes shape */
  layer_bn downsample_bn;
  int is_bottleneck, has_downsample;
} resnet_block;

typedef struct {
  backbone base;
  int deep_stem;
  layer_conv conv1; /* 7x7 stride-2 stem (torchvision) */
  layer_bn bn1;
  layer_conv stem_conv[3]; /* deep stem (mmseg ResNetV1c) */
  layer_bn stem_bn[3];
  int n_blocks[4];
  resnet_block *blocks[4];
} resnet;

static int block_init(resnet_block *b, hakd_params *p, const char *prefix, int is_bottleneck, int inplanes,
                      int planes, int stride, int dilation, float momentum) {
  char name[LAYER_NAME_MAX];
  int expansion = is_bottleneck ? 4 : 1, rc;
  b->is_bottleneck = is_bottleneck;
  if (is_bottleneck) {
    if ((rc = layer_conv_init(&b->conv1, p, layer_name(name, "%s.conv1", prefix), inplanes, planes, 1, 1, 0, 1, 1,
                              0)) ||
        (rc = layer_bn_init(&b->bn1, p, layer_name(name, "%s.bn1", prefix), planes, RESNET_BN_EPS, momentum)) ||
        (rc = layer_conv_init(&b->conv2, p, layer_name(name, "%s.conv2", prefix), planes, planes, 3, stride, dilation,
                              dilation, 1, 0)) ||
        (rc = layer_bn_init(&b->bn2, p, layer_name(name, "%s.bn2", prefix), planes, RESNET_BN_EPS, momentum)) ||
        (rc = layer_conv_init(&b->conv3, p, layer_name(name, "%s.conv3", prefix), planes, planes * expansion, 1, 1, 0,
                              1, 1, 0)) ||
        (rc = layer_bn_init(&b->bn3, p, layer_name(name, "%s.bn3", prefix), planes * expansion, RESNET_BN_EPS,
                            momentum)))
      return rc;
  } else {
    if ((rc = layer_conv_init(&b->conv1, p, layer_name(name, "%s.conv1", prefix), inplanes, planes, 3, stride,
                              dilation, dilation, 1, 0)) ||
        (rc = layer_bn_init(&b->bn1, p, layer_name(name, "%s.bn1", prefix), planes, RESNET_BN_EPS, momentum)) ||
        (rc = layer_conv_init(&b->conv2, p, layer_name(name, "%s.conv2", prefix), planes, planes, 3, 1, dilation,
                              dilation, 1, 0)) ||
        (rc = layer_bn_init(&b->bn2, p, layer_name(name, "%s.bn2", prefix), planes, RESNET_BN_EPS, momentum)))
      return rc;
  }
  b->has_downsample = stride != 1 || inplanes != planes * expansion;
  if (b->has_downsample &&
      ((rc = layer_conv_init(&b->downsample_conv, p, layer_name(name, "%s.downsample.0", prefix), inplanes,
                             planes * expansion, 1, stride, 0, 1, 1, 0)) ||
       (rc = layer_bn_init(&b->downsample_bn, p, layer_name(name, "%s.downsample.1", prefix), planes * expansion,
                           RESNET_BN_EPS, momentum))))
    return rc;
  return 0;
}

static hakd_tensor *block_forward(hakd_ctx *ctx, resnet_block *b, hakd_tensor *x) {
  hakd_tensor *shortcut =
      b->has_downsample ? layer_conv_bn_forward(ctx, &b->downsample_conv, &b->downsample_bn, x, NULL, HAKD_ACT_NONE) : x;
  hakd_tensor *y = layer_conv_bn_forward(ctx, &b->conv1, &b->bn1, x, NULL, HAKD_ACT_RELU);
  if (b->is_bottleneck) {
    y = layer_conv_bn_forward(ctx, &b->conv2, &b->bn2, y, NULL, HAKD_ACT_RELU);
    return layer_conv_bn_forward(ctx, &b->conv3, &b->bn3, y, shortcut, HAKD_ACT_RELU);
  }
  return layer_conv_bn_forward(ctx, &b->conv2, &b->bn2, y, shortcut, HAKD_ACT_RELU);
}

static int resnet_forward(backbone *base, hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *stages[4]) {
  resnet *r = (resnet *)base;
  if (r->deep_stem) {
    for (int i = 0; i < 3; i++)
      x = layer_conv_bn_forward(ctx, &r->stem_conv[i], &r->stem_bn[i], x, NULL, HAKD_ACT_RELU);
  } else {
    x = layer_conv_bn_forward(ctx, &r->conv1, &r->bn1, x, NULL, HAKD_ACT_RELU);
  }
  /* the chain starts at the stem's pooling in inference, after it while gradients are recorded
   * (blocked max pooling has no backward; the pooled map is a quarter of the stem's) */
  x = hakd_ctx_grad(ctx) ? layer_dense_chain_begin(ctx, hakd_maxpool2d(ctx, x, 3, 2, 1))
                         : hakd_maxpool2d(ctx, layer_chain_begin(ctx, x), 3, 2, 1);
  for (int l = 0; l < 4; l++) {
    /* no-grad: within a layer only the latest block output is alive (the stage outputs before
     * the mark stay) */
    hakd_arena_mark mark = hakd_ctx_mark(ctx);
    for (int i = 0; i < r->n_blocks[l]; i++) {
      x = block_forward(ctx, &r->blocks[l][i], x);
      hakd_ctx_collapse(ctx, mark, 1, &x);
    }
    /* still blocked in bf16 (inference and training) and in float32 training: the next stage
     * and a CNN head's convolutions read it as it is, and whatever needs float32 converts
     * (hakd_model_output; hakd_model_forward for float32 training's heads) */
    stages[l] = x;
  }
  return hakd_ctx_status(ctx);
}

static int block_describe(model_graph *g, const resnet_block *b, int x) {
  int shortcut = b->has_downsample ? g->conv(g, x, &b->downsample_conv, &b->downsample_bn, 0, HAKD_ACT_NONE) : x;
  int y = g->conv(g, x, &b->conv1, &b->bn1, 0, HAKD_ACT_RELU);
  if (b->is_bottleneck) {
    y = g->conv(g, y, &b->conv2, &b->bn2, 0, HAKD_ACT_RELU);
    return g->conv(g, y, &b->conv3, &b->bn3, shortcut, HAKD_ACT_RELU);
  }
  return g->conv(g, y, &b->conv2, &b->bn2, shortcut, HAKD_ACT_RELU);
}

static int resnet_describe(backbone *base, model_graph *g, int x, int stages[4]) {
  resnet *r = (resnet *)base;
  if (r->deep_stem)
    for (int i = 0; i < 3; i++) x = g->conv(g, x, &r->stem_conv[i], &r->stem_bn[i], 0, HAKD_ACT_RELU);
  else
    x = g->conv(g, x, &r->conv1, &r->bn1, 0, HAKD_ACT_RELU);
  x = g->maxpool(g, x, 3, 2, 1);
  for (int l = 0; l < 4; l++) {
    for (int i = 0; i < r->n_blocks[l]; i++) x = block_describe(g, &r->blocks[l][i], x);
    stages[l] = x;
  }
  return x ? 0 : HAKD_EINVAL;
}

static void resnet_destroy(backbone *base) {
  resnet *r = (resnet *)base;
  for (int l = 0; l < 4; l++) free(r->blocks[l]);
  free(r);
}

static int stem_init(resnet *r, hakd_params *p, const char *prefix, int stem_channels, const hakd_model_options *o) {
  char name[LAYER_NAME_MAX];
  int rc;
  if (!r->deep_stem) {
    if ((rc = layer_conv_init(&r->conv1, p, layer_name(name, "%s.conv1", prefix), 3, stem_channels, 7, 2, 3, 1, 1, 0)))
      return rc;
    return layer_bn_init(&r->bn1, p, layer_name(name, "%s.bn1", prefix), stem_channels, RESNET_BN_EPS, o->bn_momentum);
  }
  /* mmseg's stem Sequential: conv, BN, ReLU three times -> convs at 0/3/6, BNs at 1/4/7. */
  int half = layer_scale_channels(32, o->width, 1);
  const int cin[3] = {3, half, half}, cout[3] = {half, half, stem_channels}, stride[3] = {2, 1, 1};
  for (int i = 0; i < 3; i++)
    if ((rc = layer_conv_init(&r->stem_conv[i], p, layer_name(name, "%s.stem.%d", prefix, 3 * i), cin[i], cout[i], 3,
                              stride[i], 1, 1, 1, 0)) ||
        (rc = layer_bn_init(&r->stem_bn[i], p, layer_name(name, "%s.stem.%d", prefix, 3 * i + 1), cout[i],
                            RESNET_BN_EPS, o->bn_momentum)))
      return rc;
  return 0;
}

int resnet_create(hakd_params *p, const char *prefix, int depth, int output_stride, const hakd_model_options *o,
                  backbone **out) {
  static const int blocks18[4] = {2, 2, 2, 2}, blocks34[4] = {3, 4, 6, 3}, blocks101[4] = {3, 4, 23, 3};
  const int *n_blocks;
  switch (depth) {
    case 18: n_blocks = blocks18; break;
    case 34:
    case 50: n_blocks = blocks34; break;
    case 101: n_blocks = blocks101; break;
    default: return hakd_error(HAKD_EINVAL, "%s: unsupported ResNet depth %d (18, 34, 50, 101)", prefix, depth);
  }
  if (output_stride != 8 && output_stride != 16 && output_stride != 32)
    return hakd_error(HAKD_EINVAL, "%s: output stride %d (8, 16 or 32)", prefix, output_stride);
  *out = NULL;
  resnet *r = calloc(1, sizeof *r);
  if (!r) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  r->base.forward = resnet_forward;
  r->base.describe = resnet_describe;
  r->base.destroy = resnet_destroy;
  r->base.family = "cnn";
  /* every conv is padded to (kernel - 1) / 2 * dilation, so any input size >= 1 has an output;
   * BatchNorm follows every conv down to stage 4 */
  r->base.min_input = 1;
  r->deep_stem = o->deep_stem;
  int is_bottleneck = depth >= 50, expansion = is_bottleneck ? 4 : 1;
  int inplanes = layer_scale_channels(64, o->width, 1);
  int rc = stem_init(r, p, prefix, inplanes, o);
  /* replace_stride_with_dilation = [False, os <= 8, os <= 16] for layers 2..4. */
  const int dilate[4] = {0, 0, output_stride <= 8, output_stride <= 16};
  int dilation = 1, stride_so_far = 4;
  for (int l = 0; l < 4 && !rc; l++) {
    int planes = layer_scale_channels(64 << l, o->width, 1), stride = l == 0 ? 1 : 2;
    int previous_dilation = dilation;
    if (dilate[l]) {
      dilation *= stride;
      stride = 1;
    }
    stride_so_far *= stride;
    r->n_blocks[l] = n_blocks[l];
    r->blocks[l] = calloc((size_t)n_blocks[l], sizeof *r->blocks[l]);
    if (!r->blocks[l]) {
      rc = hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
      break;
    }
    for (int i = 0; i < n_blocks[l] && !rc; i++) {
      char name[LAYER_NAME_MAX];
      layer_name(name, "%s.layer%d.%d", prefix, l + 1, i);
      rc = block_init(&r->blocks[l][i], p, name, is_bottleneck, inplanes, planes, i == 0 ? stride : 1,
                      i == 0 ? previous_dilation : dilation, o->bn_momentum);
      inplanes = planes * expansion;
    }
    r->base.channels[l] = planes * expansion;
    r->base.strides[l] = stride_so_far;
  }
  if (rc) {
    resnet_destroy(&r->base);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating ResNet-%d", prefix, depth);
    return rc;
  }
  r->base.bn_stride = r->base.strides[3];
  *out = &r->base;
  return 0;
}
