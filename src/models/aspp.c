/* DeepLabV3 head with torchvision's DeepLabHead names under `<prefix>` (= `classifier`):
 * `0` ASPP (`0.convs.0` 1x1, `0.convs.1..3` 3x3 atrous rates 12/24/36 or opts->aspp_dilations,
 * `0.convs.4` image pooling,
 * `0.project` 1x1 on their concatenation + Dropout 0.5), `1` 3x3 conv, `2` BN, ReLU, `4` 1x1 conv to
 * K classes with bias. Every conv but the last is bias-free and followed by BN + ReLU. The 256
 * channels are scaled by the width multiplier; opts->dropout >= 0 replaces the 0.5. */
#include <stdlib.h>

#include "models/model_internal.h"

#define ASPP_BN_EPS 1e-5f
#define ASPP_BRANCHES 5 /* 1x1, three atrous 3x3, image pooling */

typedef struct {
  head base;
  layer_conv branch_conv[ASPP_BRANCHES];
  layer_bn branch_bn[ASPP_BRANCHES];
  layer_conv project_conv, conv, classifier;
  layer_bn project_bn, bn;
  float dropout;
} aspp_head;

static hakd_tensor *aspp_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  aspp_head *h = (aspp_head *)base;
  hakd_tensor *x = stages[3], *branches[ASPP_BRANCHES];
  if (!x) return NULL;
  for (int i = 0; i < ASPP_BRANCHES - 1; i++) branches[i] = layer_conv_bn_forward(ctx, &h->branch_conv[i], &h->branch_bn[i], x, NULL, HAKD_ACT_RELU);
  /* ASPPPooling: global average, 1x1 conv + BN + ReLU, bilinear (align_corners=False) back to the map size. */
  hakd_tensor *pooled = hakd_adaptive_avgpool2d(ctx, x, 1, 1);
  pooled = layer_conv_bn_forward(ctx, &h->branch_conv[ASPP_BRANCHES - 1], &h->branch_bn[ASPP_BRANCHES - 1], pooled,
                                 NULL, HAKD_ACT_RELU);
  /* in x's layout: in bf16 inference the concatenation, projection and 3x3 conv stay blocked */
  branches[ASPP_BRANCHES - 1] = layer_spread_pooled(ctx, pooled, x);
  hakd_tensor *y = hakd_concat(ctx, ASPP_BRANCHES, branches, 1);
  y = hakd_dropout(ctx, layer_conv_bn_forward(ctx, &h->project_conv, &h->project_bn, y, NULL, HAKD_ACT_RELU), h->dropout);
  y = layer_conv_bn_forward(ctx, &h->conv, &h->bn, y, NULL, HAKD_ACT_RELU);
  return layer_conv_forward(ctx, &h->classifier, y);
}

static int aspp_describe(head *base, model_graph *g, const int stages[4]) {
  aspp_head *h = (aspp_head *)base;
  int x = stages[3], branches[ASPP_BRANCHES];
  int64_t shape[HAKD_MAX_DIMS];
  if (g->shape(g, x, shape) != 4) return 0;
  for (int i = 0; i < ASPP_BRANCHES - 1; i++)
    branches[i] = g->conv(g, x, &h->branch_conv[i], &h->branch_bn[i], 0, HAKD_ACT_RELU);
  int pooled = g->conv(g, g->adaptive_avgpool(g, x, 1, 1), &h->branch_conv[ASPP_BRANCHES - 1],
                       &h->branch_bn[ASPP_BRANCHES - 1], 0, HAKD_ACT_RELU);
  branches[ASPP_BRANCHES - 1] = g->resize_bilinear(g, pooled, shape[2], shape[3]);
  int y = g->conv(g, g->concat(g, ASPP_BRANCHES, branches, 1), &h->project_conv, &h->project_bn, 0, HAKD_ACT_RELU);
  y = g->conv(g, y, &h->conv, &h->bn, 0, HAKD_ACT_RELU);
  return g->conv(g, y, &h->classifier, NULL, 0, HAKD_ACT_NONE);
}

static void aspp_destroy(head *h) { free(h); }

int aspp_head_create(hakd_params *p, const char *prefix, const backbone *b, const hakd_model_options *o, head **out) {
  static const int torchvision_rates[3] = {12, 24, 36};
  const int *rates = o->aspp_dilations[0] > 0 ? o->aspp_dilations : torchvision_rates;
  *out = NULL;
  aspp_head *h = calloc(1, sizeof *h);
  if (!h) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  h->base.forward = aspp_forward;
  h->base.describe = aspp_describe;
  h->base.destroy = aspp_destroy;
  h->base.pooled_bn = 1; /* the image-pooling branch: conv + BN on a 1x1 map */
  h->dropout = o->dropout >= 0.0f ? o->dropout : 0.5f;
  int in = b->channels[3], ch = layer_scale_channels(256, o->width, 1), rc = 0;
  char name[LAYER_NAME_MAX];
  float m = o->bn_momentum;
  /* convs.0: 1x1; convs.1..3: 3x3 with padding = dilation = rate. */
  for (int i = 0; i < ASPP_BRANCHES - 1 && !rc; i++) {
    int k = i == 0 ? 1 : 3, d = i == 0 ? 1 : rates[i - 1];
    rc = layer_conv_init(&h->branch_conv[i], p, layer_name(name, "%s.0.convs.%d.0", prefix, i), in, ch, k, 1,
                         i == 0 ? 0 : d, d, 1, 0);
    if (!rc)
      rc = layer_bn_init(&h->branch_bn[i], p, layer_name(name, "%s.0.convs.%d.1", prefix, i), ch, ASPP_BN_EPS, m);
  }
  /* convs.4 is Sequential(AdaptiveAvgPool2d, Conv2d, BN, ReLU): conv at .1, BN at .2. */
  if (!rc)
    rc = layer_conv_init(&h->branch_conv[4], p, layer_name(name, "%s.0.convs.4.1", prefix), in, ch, 1, 1, 0, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->branch_bn[4], p, layer_name(name, "%s.0.convs.4.2", prefix), ch, ASPP_BN_EPS, m);
  if (!rc)
    rc = layer_conv_init(&h->project_conv, p, layer_name(name, "%s.0.project.0", prefix), ASPP_BRANCHES * ch, ch, 1, 1,
                         0, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->project_bn, p, layer_name(name, "%s.0.project.1", prefix), ch, ASPP_BN_EPS, m);
  if (!rc) rc = layer_conv_init(&h->conv, p, layer_name(name, "%s.1", prefix), ch, ch, 3, 1, 1, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->bn, p, layer_name(name, "%s.2", prefix), ch, ASPP_BN_EPS, m);
  if (!rc)
    rc = layer_conv_init(&h->classifier, p, layer_name(name, "%s.4", prefix), ch, o->num_classes, 1, 1, 0, 1, 1, 1);
  if (rc) {
    free(h);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating the ASPP head", prefix);
    return rc;
  }
  *out = &h->base;
  return 0;
}
