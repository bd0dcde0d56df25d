/* MobileNetV2 backbone with torchvision's state_dict names under `<prefix>` (= `backbone.features`):
 * features.0 is the stem ConvBNReLU6 (`0.0` conv, `0.1` BN); features.1..17 are InvertedResidual
 * blocks (`N.conv.0.0/0.1` 1x1 expansion, `conv.1.0/1.1` depthwise 3x3, `conv.2` 1x1 projection,
 * `conv.3` its BN; blocks with expansion 1 have no expansion conv and shift the indices down by one).
 *
 * Dilated as the DeepLabV3-MobileNetV2 students (CIRKD, mmseg MobileNetV2 with strides
 * (1,2,2,1,1,1,1), dilations (1,1,1,2,2,4,4)): every stage whose stride would take the
 * network past the output stride runs with stride 1 and multiplies the dilation by the stride
 * instead; every depthwise conv of a dilated stage (its first block included) uses that
 * dilation with padding = dilation. At output stride 8: features.7-13 dilation 2, 14-17 dilation 4.
 *
 * Stage features are the outputs of features.3 (end of the stride-4 group, 24 channels),
 * features.6 (end of the stride-8 group, 32), features.13 (end of the 96-channel group) and
 * features.17 (320): strides 4, 8, 8, 8. features.18 (1x1 conv to 1280) is dropped, as in CIRKD's
 * DeepLabV3-MobileNetV2, so stage 4 has 320 channels. The width multiplier scales channels with
 * torchvision's _make_divisible(c * width, 8) rule, so shapes match mobilenet_v2(width_mult=width). */
#include <stdlib.h>

#include "models/model_internal.h"

#define MBV2_BN_EPS 1e-5f
#define MBV2_BLOCKS 17

typedef struct {
  int has_expand, use_residual;
  layer_conv expand_conv, depthwise_conv, project_conv;
  layer_bn expand_bn, depthwise_bn, project_bn;
} inverted_residual;

typedef struct {
  backbone base;
  layer_conv stem_conv;
  layer_bn stem_bn;
  inverted_residual blocks[MBV2_BLOCKS]; /* features.1 .. features.17 */
} mobilenetv2;

/* Feature index (1-based, as in `features.N`) whose output is each stage. */
static const int stage_end[4] = {3, 6, 13, 17};

/* torchvision's _make_divisible: nearest multiple of `divisor`, at least `divisor`, and not more
 * than 10% below v. */
static int make_divisible(double v, int divisor) {
  int r = (int)(v + divisor / 2.0) / divisor * divisor;
  if (r < divisor) r = divisor;
  if (r < 0.9 * v) r += divisor;
  return r;
}

static int block_init(inverted_residual *b, hakd_params *p, const char *prefix, int inp, int oup, int stride,
                      int dilation, int expand_ratio, float momentum) {
  char name[LAYER_NAME_MAX];
  int hidden = inp * expand_ratio, index = 0, rc;
  b->has_expand = expand_ratio != 1;
  b->use_residual = stride == 1 && inp == oup;
  if (b->has_expand) {
    if ((rc = layer_conv_init(&b->expand_conv, p, layer_name(name, "%s.conv.0.0", prefix), inp, hidden, 1, 1, 0, 1, 1,
                              0)) ||
        (rc = layer_bn_init(&b->expand_bn, p, layer_name(name, "%s.conv.0.1", prefix), hidden, MBV2_BN_EPS, momentum)))
      return rc;
    index = 1;
  }
  if ((rc = layer_conv_init(&b->depthwise_conv, p, layer_name(name, "%s.conv.%d.0", prefix, index), hidden, hidden, 3,
                            stride, dilation, dilation, hidden, 0)) ||
      (rc = layer_bn_init(&b->depthwise_bn, p, layer_name(name, "%s.conv.%d.1", prefix, index), hidden, MBV2_BN_EPS,
                          momentum)) ||
      (rc = layer_conv_init(&b->project_conv, p, layer_name(name, "%s.conv.%d", prefix, index + 1), hidden, oup, 1, 1,
                            0, 1, 1, 0)) ||
      (rc = layer_bn_init(&b->project_bn, p, layer_name(name, "%s.conv.%d", prefix, index + 2), oup, MBV2_BN_EPS,
                          momentum)))
    return rc;
  return 0;
}

static hakd_tensor *block_forward(hakd_ctx *ctx, inverted_residual *b, hakd_tensor *x) {
  hakd_tensor *y = x;
  if (b->has_expand)
    y = layer_conv_bn_forward(ctx, &b->expand_conv, &b->expand_bn, y, NULL, HAKD_ACT_RELU6);
  y = layer_conv_bn_forward(ctx, &b->depthwise_conv, &b->depthwise_bn, y, NULL, HAKD_ACT_RELU6);
  return layer_conv_bn_forward(ctx, &b->project_conv, &b->project_bn, y, b->use_residual ? x : NULL, HAKD_ACT_NONE);
}

static int mobilenetv2_forward(backbone *base, hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *stages[4]) {
  mobilenetv2 *m = (mobilenetv2 *)base;
  /* bf16 inference: blocked bfloat16 from the stem's output on (the stem reads the float32 image) */
  x = layer_chain_begin(ctx, layer_conv_bn_forward(ctx, &m->stem_conv, &m->stem_bn, x, NULL, HAKD_ACT_RELU6));
  int stage = 0;
  /* no-grad: between two stage outputs only the latest block output is alive */
  hakd_arena_mark mark = hakd_ctx_mark(ctx);
  for (int i = 0; i < MBV2_BLOCKS; i++) {
    x = block_forward(ctx, &m->blocks[i], x);
    hakd_ctx_collapse(ctx, mark, 1, &x);
    if (stage < 4 && i + 1 == stage_end[stage]) {
      stages[stage++] = x;
      mark = hakd_ctx_mark(ctx);
    }
  }
  return hakd_ctx_status(ctx);
}

static int mobilenetv2_describe(backbone *base, model_graph *g, int x, int stages[4]) {
  mobilenetv2 *m = (mobilenetv2 *)base;
  x = g->conv(g, x, &m->stem_conv, &m->stem_bn, 0, HAKD_ACT_RELU6);
  int stage = 0;
  for (int i = 0; i < MBV2_BLOCKS; i++) {
    const inverted_residual *b = &m->blocks[i];
    int y = b->has_expand ? g->conv(g, x, &b->expand_conv, &b->expand_bn, 0, HAKD_ACT_RELU6) : x;
    y = g->conv(g, y, &b->depthwise_conv, &b->depthwise_bn, 0, HAKD_ACT_RELU6);
    x = g->conv(g, y, &b->project_conv, &b->project_bn, b->use_residual ? x : 0, HAKD_ACT_NONE);
    if (stage < 4 && i + 1 == stage_end[stage]) stages[stage++] = x;
  }
  return x ? 0 : HAKD_EINVAL;
}

static void mobilenetv2_destroy(backbone *base) { free(base); }

int mobilenetv2_create(hakd_params *p, const char *prefix, int output_stride, const hakd_model_options *o,
                       backbone **out) {
  /* torchvision's inverted_residual_setting: expansion t, channels c, blocks n, stride s. */
  static const int setting[7][4] = {{1, 16, 1, 1},  {6, 24, 2, 2},  {6, 32, 3, 2}, {6, 64, 4, 2},
                                    {6, 96, 3, 1},  {6, 160, 3, 2}, {6, 320, 1, 1}};
  *out = NULL;
  if (output_stride != 8 && output_stride != 16 && output_stride != 32)
    return hakd_error(HAKD_EINVAL, "%s: output stride %d (8, 16 or 32)", prefix, output_stride);
  mobilenetv2 *m = calloc(1, sizeof *m);
  if (!m) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  m->base.forward = mobilenetv2_forward;
  m->base.describe = mobilenetv2_describe;
  m->base.destroy = mobilenetv2_destroy;
  m->base.family = "cnn";
  /* every conv is padded to (kernel - 1) / 2 * dilation, so any input size >= 1 has an output;
   * BatchNorm follows every conv down to stage 4 */
  m->base.min_input = 1;
  char name[LAYER_NAME_MAX];
  int inp = make_divisible(32.0 * o->width, 8), rc;
  rc = layer_conv_init(&m->stem_conv, p, layer_name(name, "%s.0.0", prefix), 3, inp, 3, 2, 1, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&m->stem_bn, p, layer_name(name, "%s.0.1", prefix), inp, MBV2_BN_EPS, o->bn_momentum);
  int stride_so_far = 2, dilation = 1, index = 0, stage = 0;
  for (int g = 0; g < 7 && !rc; g++) {
    int oup = make_divisible(setting[g][1] * (double)o->width, 8), stride = setting[g][3];
    if (stride_so_far * stride > output_stride) {
      dilation *= stride;
      stride = 1;
    }
    stride_so_far *= stride;
    for (int i = 0; i < setting[g][2] && !rc; i++, index++) {
      rc = block_init(&m->blocks[index], p, layer_name(name, "%s.%d", prefix, index + 1), inp, oup, i == 0 ? stride : 1,
                      dilation, setting[g][0], o->bn_momentum);
      inp = oup;
      if (stage < 4 && index + 1 == stage_end[stage]) {
        m->base.channels[stage] = oup;
        m->base.strides[stage] = stride_so_far;
        stage++;
      }
    }
  }
  if (rc) {
    free(m);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating MobileNetV2", prefix);
    return rc;
  }
  m->base.bn_stride = m->base.strides[3];
  *out = &m->base;
  return 0;
}
