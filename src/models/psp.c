/* PSPNet head with mmsegmentation's PSPHead names under `<prefix>` (= `decode_head`):
 * `psp_modules.{0..3}` pool the stage-4 map to 1x1, 2x2, 3x3, 6x6 bins (adaptive average), then a
 * ConvModule (`.1.conv` 1x1 without bias, `.1.bn`, ReLU) and bilinear (align_corners=False) back to
 * the map size; `bottleneck` (3x3 ConvModule) on [x, the four pooled maps]; Dropout 0.1;
 * `conv_seg` 1x1 to K classes with bias. `channels` is in/4, which is mmseg's 512 for ResNet-50/101
 * (2048 in) and 128 for ResNet-18/34 (512 in), scaled with the backbone's width. conv_seg comes first
 * in the state_dict, as mmseg's BaseDecodeHead creates it before the PSP modules.
 * opts->dropout >= 0 replaces the 0.1. */
#include <stdlib.h>

#include "models/model_internal.h"

#define PSP_BN_EPS 1e-5f
#define PSP_BINS 4

static const int psp_bins[PSP_BINS] = {1, 2, 3, 6};

typedef struct {
  head base;
  layer_conv pool_conv[PSP_BINS], bottleneck_conv, conv_seg;
  layer_bn pool_bn[PSP_BINS], bottleneck_bn;
  float dropout;
} psp_head;

static hakd_tensor *psp_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  psp_head *h = (psp_head *)base;
  hakd_tensor *x = hakd_to_f32(ctx, stages[3]), *parts[1 + PSP_BINS]; /* its pooling bins need float32 */
  if (!x) return NULL;
  parts[0] = x;
  for (int i = 0; i < PSP_BINS; i++) {
    hakd_tensor *y = hakd_adaptive_avgpool2d(ctx, x, psp_bins[i], psp_bins[i]);
    y = layer_conv_bn_forward(ctx, &h->pool_conv[i], &h->pool_bn[i], y, NULL, HAKD_ACT_RELU);
    parts[1 + i] = hakd_resize_bilinear(ctx, y, x->shape[2], x->shape[3], 0);
  }
  hakd_tensor *y = hakd_concat(ctx, 1 + PSP_BINS, parts, 1);
  y = layer_conv_bn_forward(ctx, &h->bottleneck_conv, &h->bottleneck_bn, y, NULL, HAKD_ACT_RELU);
  return layer_conv_forward(ctx, &h->conv_seg, hakd_dropout(ctx, y, h->dropout));
}

static int psp_describe(head *base, model_graph *g, const int stages[4]) {
  psp_head *h = (psp_head *)base;
  int x = stages[3], parts[1 + PSP_BINS];
  int64_t shape[HAKD_MAX_DIMS];
  if (g->shape(g, x, shape) != 4) return 0;
  parts[0] = x;
  for (int i = 0; i < PSP_BINS; i++) {
    int y = g->adaptive_avgpool(g, x, psp_bins[i], psp_bins[i]);
    y = g->conv(g, y, &h->pool_conv[i], &h->pool_bn[i], 0, HAKD_ACT_RELU);
    parts[1 + i] = g->resize_bilinear(g, y, shape[2], shape[3]);
  }
  int y = g->conv(g, g->concat(g, 1 + PSP_BINS, parts, 1), &h->bottleneck_conv, &h->bottleneck_bn, 0, HAKD_ACT_RELU);
  return g->conv(g, y, &h->conv_seg, NULL, 0, HAKD_ACT_NONE);
}

static void psp_destroy(head *h) { free(h); }

int psp_head_create(hakd_params *p, const char *prefix, const backbone *b, const hakd_model_options *o, head **out) {
  *out = NULL;
  psp_head *h = calloc(1, sizeof *h);
  if (!h) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  h->base.forward = psp_forward;
  h->base.describe = psp_describe;
  h->base.destroy = psp_destroy;
  h->base.pooled_bn = 1; /* the bin-1 branch: conv + BN on a 1x1 map */
  h->dropout = o->dropout >= 0.0f ? o->dropout : 0.1f;
  int in = b->channels[3], ch = in / 4 > 0 ? in / 4 : 1;
  char name[LAYER_NAME_MAX];
  float m = o->bn_momentum;
  int rc =
      layer_conv_init(&h->conv_seg, p, layer_name(name, "%s.conv_seg", prefix), ch, o->num_classes, 1, 1, 0, 1, 1, 1);
  for (int i = 0; i < PSP_BINS && !rc; i++) {
    rc = layer_conv_init(&h->pool_conv[i], p, layer_name(name, "%s.psp_modules.%d.1.conv", prefix, i), in, ch, 1, 1, 0,
                         1, 1, 0);
    if (!rc)
      rc = layer_bn_init(&h->pool_bn[i], p, layer_name(name, "%s.psp_modules.%d.1.bn", prefix, i), ch, PSP_BN_EPS, m);
  }
  if (!rc)
    rc = layer_conv_init(&h->bottleneck_conv, p, layer_name(name, "%s.bottleneck.conv", prefix), in + PSP_BINS * ch, ch,
                         3, 1, 1, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->bottleneck_bn, p, layer_name(name, "%s.bottleneck.bn", prefix), ch, PSP_BN_EPS, m);
  if (rc) {
    free(h);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating the PSP head", prefix);
    return rc;
  }
  *out = &h->base;
  return 0;
}
