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

/* Marks the product y as standing for `macs` multiply-adds of the reference architecture
 * (hakd_tape_macs, what `hakd info` and `hakd bench` call nominal). */
static hakd_tensor *reference_macs(hakd_tensor *y, int64_t macs) {
  if (y && y->node) {
    y->node->has_reference_macs = 1;
    y->node->reference_macs = macs;
  }
  return y;
}

/* HF's decoder up to the BatchNorm, folded: linear_c.{i} (W_i, b_i), bilinear resizing and the
 * bias-free 1x1 linear_fuse (F, whose input block j reads stage 3 - j) are all linear, and a
 * per-pixel channel product commutes with bilinear resizing (whose weights sum to 1), so
 *   linear_fuse(concat(resize(W_i x_i + b_i))) = sum_i resize((F_i W_i) x_i) + F b
 * with F_i = F's block of stage i (D x D) and b the biases in concatenation order. Each stage's
 * product then runs at its own resolution with a D x C_i matrix instead of a D x D product per
 * pixel of stage 1 for every stage (at 512x512: 0.26 instead of 4.4 GMAC per image, nearly
 * half of SegFormer-B0's multiply-adds), and the (N, 4D, H, W) concatenation is never
 * materialised. Gradients reach F, W_i and b_i through the small products. The constant F b is
 * added at the coarsest stage, before its resizing (a constant stays one under bilinear
 * weights). Returns the (N, D, H, W) input of the BatchNorm. */
static hakd_tensor *folded_fuse(hakd_ctx *ctx, const segformer_head *h, hakd_tensor *const stages[4], int64_t out_h,
                                int64_t out_w) {
  const hakd_tensor *fw = h->fuse.weight; /* (D, 4D, 1, 1) */
  int64_t dim = fw->shape[0], n = stages[0]->shape[0];
  hakd_tensor *fuse = hakd_reshape(ctx, h->fuse.weight, 2, (int64_t[]){dim, SEGFORMER_STAGES * dim});
  hakd_tensor *biases[SEGFORMER_STAGES];
  for (int s = 0; s < SEGFORMER_STAGES; s++)
    biases[SEGFORMER_STAGES - 1 - s] = hakd_reshape(ctx, h->linear_c[s].bias, 2, (int64_t[]){dim, 1});
  /* F b: (D, 1), added to the last stage's map with broadcasting */
  hakd_tensor *bias = reference_macs(hakd_matmul(ctx, fuse, hakd_concat(ctx, SEGFORMER_STAGES, biases, 0), 0, 0), 0);
  hakd_tensor *sum = NULL;
  for (int s = SEGFORMER_STAGES - 1; s >= 0; s--) {
    hakd_tensor *x = hakd_to_f32(ctx, stages[s]);
    if (!x || !fuse) return NULL;
    int64_t c = x->shape[1], hw = x->shape[2] * x->shape[3];
    hakd_tensor *block = hakd_slice(ctx, fuse, 1, (SEGFORMER_STAGES - 1 - s) * dim, dim);
    hakd_tensor *folded = reference_macs(hakd_matmul(ctx, block, h->linear_c[s].weight, 0, 0), 0); /* (D, C_i) */
    /* reference: linear_c at stage resolution + this stage's quarter of linear_fuse at stage 1's */
    int64_t macs = n * hw * c * dim + n * out_h * out_w * dim * dim;
    hakd_tensor *z = reference_macs(hakd_matmul(ctx, folded, hakd_reshape(ctx, x, 3, (int64_t[]){n, c, hw}), 0, 0), macs);
    if (s == SEGFORMER_STAGES - 1) z = hakd_add(ctx, z, bias);
    z = hakd_reshape(ctx, z, 4, (int64_t[]){n, dim, x->shape[2], x->shape[3]});
    if (z && (z->shape[2] != out_h || z->shape[3] != out_w)) z = hakd_resize_bilinear(ctx, z, out_h, out_w, 0);
    sum = sum ? hakd_add(ctx, sum, z) : z;
  }
  return sum;
}

static hakd_tensor *segformer_head_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  segformer_head *h = (segformer_head *)base;
  if (!stages[0]) return NULL;
  if (!h->mmseg) {
    hakd_tensor *fused = folded_fuse(ctx, h, stages, stages[0]->shape[2], stages[0]->shape[3]);
    hakd_tensor *activated = hakd_relu(ctx, layer_bn_forward(ctx, &h->bn, fused));
    return layer_conv_forward(ctx, &h->classifier, hakd_dropout(ctx, activated, h->dropout));
  }
  int64_t out_h = stages[0]->shape[2], out_w = stages[0]->shape[3];
  hakd_tensor *maps[SEGFORMER_STAGES];
  for (int s = 0; s < SEGFORMER_STAGES; s++) {
    hakd_tensor *projected =
        layer_conv_bn_forward(ctx, &h->stage_conv[s], &h->stage_bn[s], stages[s], NULL, HAKD_ACT_RELU);
    /* Bilinear resizing to the same size is the identity (align_corners=False). */
    if (projected && (projected->shape[2] != out_h || projected->shape[3] != out_w))
      projected = hakd_resize_bilinear(ctx, projected, out_h, out_w, 0);
    maps[s] = projected; /* mmseg concatenates in stage order */
  }
  hakd_tensor *activated = layer_conv_bn_forward(ctx, &h->fuse, &h->bn, hakd_concat(ctx, SEGFORMER_STAGES, maps, 1),
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
