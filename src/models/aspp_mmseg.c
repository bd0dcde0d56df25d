/* mmsegmentation's ASPPHead (DeepLabV3) with its names under `<prefix>` (= `decode_head`):
 *   image_pool.1.{conv,bn}    global average pool, 1x1 ConvModule, bilinear back (align_corners=False)
 *   aspp_modules.0.{conv,bn}  1x1 ConvModule (dilation 1)
 *   aspp_modules.1..3         3x3 ConvModules, padding = dilation = 12/24/36 (or opts->aspp_dilations)
 *   bottleneck.{conv,bn}      3x3 ConvModule on the concatenation [image_pool, aspp_modules 0..3]
 *   conv_seg                  dropout 0.1, 1x1 conv to K classes with bias
 * ConvModules are bias-free conv + BN (eps 1e-5) + ReLU. It is not torchvision's ASPP (aspp.c):
 * the image pool comes first, there is no 1x1 `project` and no separate 3x3 + BN after it but
 * one 3x3 bottleneck, and the width is the config's `channels` (512), scaled by the width multiplier. reference: mmseg/models/decode_heads/aspp_head.py. */
#include <stdlib.h>

#include "models/model_internal.h"

#define MMSEG_BN_EPS 1e-5f
#define MMSEG_ASPP_BRANCHES 4 /* aspp_modules: 1x1 and three atrous 3x3 */

typedef struct {
  head base;
  layer_conv pool_conv, branch_conv[MMSEG_ASPP_BRANCHES], bottleneck_conv, conv_seg;
  layer_bn pool_bn, branch_bn[MMSEG_ASPP_BRANCHES], bottleneck_bn;
  float dropout;
} aspp_mmseg_head;

static hakd_tensor *aspp_mmseg_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  aspp_mmseg_head *h = (aspp_mmseg_head *)base;
  hakd_tensor *x = stages[3], *outs[1 + MMSEG_ASPP_BRANCHES];
  if (!x) return NULL;
  hakd_tensor *pooled = layer_conv_bn_forward(ctx, &h->pool_conv, &h->pool_bn, hakd_adaptive_avgpool2d(ctx, x, 1, 1),
                                              NULL, HAKD_ACT_RELU);
  outs[0] = layer_spread_pooled(ctx, pooled, x); /* x's layout: blocked bfloat16 in bf16 inference */
  for (int i = 0; i < MMSEG_ASPP_BRANCHES; i++)
    outs[1 + i] = layer_conv_bn_forward(ctx, &h->branch_conv[i], &h->branch_bn[i], x, NULL, HAKD_ACT_RELU);
  hakd_tensor *y = layer_conv_bn_forward(ctx, &h->bottleneck_conv, &h->bottleneck_bn,
                                         hakd_concat(ctx, 1 + MMSEG_ASPP_BRANCHES, outs, 1), NULL, HAKD_ACT_RELU);
  return layer_conv_forward(ctx, &h->conv_seg, hakd_dropout(ctx, y, h->dropout));
}

static void aspp_mmseg_destroy(head *h) { free(h); }

int aspp_mmseg_head_create(hakd_params *p, const char *prefix, const backbone *b, int channels,
                           const hakd_model_options *o, head **out) {
  static const int mmseg_rates[3] = {12, 24, 36};
  const int *rates = o->aspp_dilations[0] > 0 ? o->aspp_dilations : mmseg_rates;
  *out = NULL;
  aspp_mmseg_head *h = calloc(1, sizeof *h);
  if (!h) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  h->base.forward = aspp_mmseg_forward;
  h->base.destroy = aspp_mmseg_destroy;
  h->base.pooled_bn = 1; /* image_pool: conv + BN on a 1x1 map */
  h->dropout = o->dropout >= 0.0f ? o->dropout : 0.1f;
  int in = b->channels[3], ch = layer_scale_channels(channels, o->width, 1), rc = 0;
  char name[LAYER_NAME_MAX];
  float m = o->bn_momentum;
  /* BaseDecodeHead creates conv_seg first: the state_dict starts with it */
  rc = layer_conv_init(&h->conv_seg, p, layer_name(name, "%s.conv_seg", prefix), ch, o->num_classes, 1, 1, 0, 1, 1, 1);
  if (!rc)
    rc = layer_conv_init(&h->pool_conv, p, layer_name(name, "%s.image_pool.1.conv", prefix), in, ch, 1, 1, 0, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->pool_bn, p, layer_name(name, "%s.image_pool.1.bn", prefix), ch, MMSEG_BN_EPS, m);
  for (int i = 0; i < MMSEG_ASPP_BRANCHES && !rc; i++) {
    int k = i == 0 ? 1 : 3, d = i == 0 ? 1 : rates[i - 1];
    rc = layer_conv_init(&h->branch_conv[i], p, layer_name(name, "%s.aspp_modules.%d.conv", prefix, i), in, ch, k, 1,
                         i == 0 ? 0 : d, d, 1, 0);
    if (!rc)
      rc = layer_bn_init(&h->branch_bn[i], p, layer_name(name, "%s.aspp_modules.%d.bn", prefix, i), ch, MMSEG_BN_EPS, m);
  }
  if (!rc)
    rc = layer_conv_init(&h->bottleneck_conv, p, layer_name(name, "%s.bottleneck.conv", prefix),
                         (1 + MMSEG_ASPP_BRANCHES) * ch, ch, 3, 1, 1, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->bottleneck_bn, p, layer_name(name, "%s.bottleneck.bn", prefix), ch, MMSEG_BN_EPS, m);
  if (rc) {
    free(h);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating the ASPP head", prefix);
    return rc;
  }
  *out = &h->base;
  return 0;
}
