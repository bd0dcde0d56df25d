/* SegFormer's all-MLP decoder with Hugging Face names under `prefix` (`decode_head`):
 *   linear_c.{i}.proj   Linear(C_i, D) on the tokens of stage i
 *   linear_fuse         1x1 conv 4D -> D, no bias
 *   batch_norm          BatchNorm2d(D), then ReLU and dropout
 *   classifier          1x1 conv D -> K with bias
 * Each projected stage is upsampled (bilinear, align_corners=False) to stage 1's grid and the
 * four are concatenated in reverse order (c4, c3, c2, c1), as HF does. Logits come out at
 * stage 1's stride (4). D = 256 for B0/B1 and 768 for B2-B5, scaled by the width multiplier
 * (rounded to the nearest integer).
 * reference: transformers/models/segformer/modeling_segformer.py (SegformerDecodeHead).
 *
 * mmsegmentation's SegformerHead (segformer_mmseg_head_create) is another module, not a
 * renaming: each stage goes through a 1x1 ConvModule (`convs.{i}.conv` bias-free + `convs.{i}.bn`
 * + ReLU) instead of a Linear with bias, the upsampled maps are concatenated in stage order
 * (c1..c4), fused by `fusion_conv.{conv,bn}` + ReLU, and classified by `conv_seg` after dropout
 * 0.1. reference: mmseg/models/decode_heads/segformer_head.py. */
#include <stdlib.h>

#include "models/model_internal.h"

enum { SEGFORMER_STAGES = 4 };

typedef struct {
  head base;
  int mmseg; /* SegformerHead (mmseg) instead of SegformerDecodeHead (HF) */
  layer_conv stage_conv[SEGFORMER_STAGES];
  layer_bn stage_bn[SEGFORMER_STAGES];
  layer_linear linear_c[SEGFORMER_STAGES];
  layer_conv fuse;
  layer_bn bn;
  layer_conv classifier;
  float dropout;
} segformer_head;

/* Linear on the channel dim of an NCHW map: (N, C, H, W) -> (N, D, H, W), as HF's
 * flatten(2).transpose(1, 2) -> Linear -> permute/reshape back. */
static hakd_tensor *channel_linear(hakd_ctx *ctx, const layer_linear *l, hakd_tensor *x) {
  static const int to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
  return hakd_permute(ctx, layer_linear_forward(ctx, l, hakd_permute(ctx, x, to_nhwc)), to_nchw);
}

static hakd_tensor *segformer_head_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  segformer_head *h = (segformer_head *)base;
  if (!stages[0]) return NULL;
  int64_t out_h = stages[0]->shape[2], out_w = stages[0]->shape[3];
  hakd_tensor *reversed[SEGFORMER_STAGES];
  for (int s = 0; s < SEGFORMER_STAGES; s++) {
    hakd_tensor *projected = h->mmseg ? layer_conv_bn_forward(ctx, &h->stage_conv[s], &h->stage_bn[s], stages[s], NULL,
                                                              HAKD_ACT_RELU)
                                      : channel_linear(ctx, &h->linear_c[s], stages[s]);
    /* Bilinear resizing to the same size is the identity (align_corners=False). */
    if (projected && (projected->shape[2] != out_h || projected->shape[3] != out_w))
      projected = hakd_resize_bilinear(ctx, projected, out_h, out_w, 0);
    reversed[h->mmseg ? s : SEGFORMER_STAGES - 1 - s] = projected; /* mmseg keeps stage order */
  }
  hakd_tensor *activated = layer_conv_bn_forward(ctx, &h->fuse, &h->bn, hakd_concat(ctx, SEGFORMER_STAGES, reversed, 1),
                                                 NULL, HAKD_ACT_RELU);
  return layer_conv_forward(ctx, &h->classifier, hakd_dropout(ctx, activated, h->dropout));
}

static int segformer_head_describe(head *base, model_graph *g, const int stages[4]) {
  static const int to_nhwc[4] = {0, 2, 3, 1}, to_nchw[4] = {0, 3, 1, 2};
  segformer_head *h = (segformer_head *)base;
  int64_t out[HAKD_MAX_DIMS], shape[HAKD_MAX_DIMS];
  if (g->shape(g, stages[0], out) != 4) return 0;
  int reversed[SEGFORMER_STAGES];
  for (int s = 0; s < SEGFORMER_STAGES; s++) {
    int projected = g->permute(g, g->linear(g, g->permute(g, stages[s], to_nhwc), &h->linear_c[s]), to_nchw);
    if (g->shape(g, projected, shape) != 4) return 0;
    if (shape[2] != out[2] || shape[3] != out[3]) projected = g->resize_bilinear(g, projected, out[2], out[3]);
    reversed[SEGFORMER_STAGES - 1 - s] = projected;
  }
  int y = g->conv(g, g->concat(g, SEGFORMER_STAGES, reversed, 1), &h->fuse, &h->bn, 0, HAKD_ACT_RELU);
  return g->conv(g, y, &h->classifier, NULL, 0, HAKD_ACT_NONE);
}

static void segformer_head_destroy(head *base) { free(base); }

static int create(hakd_params *p, const char *prefix, const backbone *b, int variant, int mmseg,
                  const hakd_model_options *o, head **out) {
  *out = NULL;
  segformer_head *h = calloc(1, sizeof *h);
  if (!h) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  h->base.forward = segformer_head_forward;
  h->base.describe = segformer_head_describe;
  h->base.destroy = segformer_head_destroy;
  h->mmseg = mmseg;
  if (mmseg) h->base.bn_stride = b->strides[SEGFORMER_STAGES - 1];
  h->dropout = o->dropout < 0.0f ? 0.1f : o->dropout;
  int dim = layer_scale_channels(variant <= 1 ? 256 : 768, o->width, 1);
  char name[LAYER_NAME_MAX];
  int rc = 0;
  /* mmseg's BaseDecodeHead creates conv_seg first: the state_dict starts with it */
  if (mmseg)
    rc = layer_conv_init(&h->classifier, p, layer_name(name, "%s.conv_seg", prefix), dim, o->num_classes, 1, 1, 0, 1, 1,
                         1);
  for (int s = 0; s < SEGFORMER_STAGES && !rc; s++) {
    if (!mmseg) {
      rc = layer_linear_init(&h->linear_c[s], p, layer_name(name, "%s.linear_c.%d.proj", prefix, s), b->channels[s],
                             dim, 1);
      continue;
    }
    rc = layer_conv_init(&h->stage_conv[s], p, layer_name(name, "%s.convs.%d.conv", prefix, s), b->channels[s], dim, 1,
                         1, 0, 1, 1, 0);
    if (!rc) rc = layer_bn_init(&h->stage_bn[s], p, layer_name(name, "%s.convs.%d.bn", prefix, s), dim, 1e-5f, o->bn_momentum);
  }
  if (!rc)
    rc = layer_conv_init(&h->fuse, p, layer_name(name, mmseg ? "%s.fusion_conv.conv" : "%s.linear_fuse", prefix),
                         SEGFORMER_STAGES * dim, dim, 1, 1, 0, 1, 1, 0);
  if (!rc)
    rc = layer_bn_init(&h->bn, p, layer_name(name, mmseg ? "%s.fusion_conv.bn" : "%s.batch_norm", prefix), dim, 1e-5f,
                       o->bn_momentum);
  if (!rc && !mmseg)
    rc = layer_conv_init(&h->classifier, p, layer_name(name, "%s.classifier", prefix), dim, o->num_classes, 1, 1, 0, 1,
                         1, 1);
  if (rc) {
    free(h);
    return rc == HAKD_ENOMEM ? hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix) : rc;
  }
  *out = &h->base;
  return 0;
}

int segformer_head_create(hakd_params *p, const char *prefix, const backbone *b, int variant,
                          const hakd_model_options *o, head **out) {
  return create(p, prefix, b, variant, 0, o, out);
}

int segformer_mmseg_head_create(hakd_params *p, const char *prefix, const backbone *b, int variant,
                                const hakd_model_options *o, head **out) {
  return create(p, prefix, b, variant, 1, o, out);
}
