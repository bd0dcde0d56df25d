/* torchvision's FCNHead under `<prefix>`: `0` 3x3 conv in -> in/4 (no bias), `1` BN, ReLU,
 * Dropout 0.1, `4` 1x1 conv to K classes with bias. The main head of fcn-* (on stage 4,
 * `classifier`) and the auxiliary head (on stage 3, `aux_classifier`). opts->dropout >= 0
 * replaces the 0.1. */
#include <stdlib.h>

#include "models/model_internal.h"

typedef struct {
  head base;
  int stage; /* 0-based index into the backbone stages */
  layer_conv conv, classifier;
  layer_bn bn;
  float dropout;
} fcn_head;

static hakd_tensor *fcn_forward(head *base, hakd_ctx *ctx, hakd_tensor *const stages[4]) {
  fcn_head *h = (fcn_head *)base;
  hakd_tensor *y = layer_conv_bn_forward(ctx, &h->conv, &h->bn, stages[h->stage], NULL, HAKD_ACT_RELU);
  return layer_conv_forward(ctx, &h->classifier, hakd_dropout(ctx, y, h->dropout));
}

static int fcn_describe(head *base, model_graph *g, const int stages[4]) {
  fcn_head *h = (fcn_head *)base;
  int y = g->conv(g, stages[h->stage], &h->conv, &h->bn, 0, HAKD_ACT_RELU);
  return g->conv(g, y, &h->classifier, NULL, 0, HAKD_ACT_NONE);
}

static void fcn_destroy(head *h) { free(h); }

int fcn_head_create(hakd_params *p, const char *prefix, const backbone *b, int stage, const hakd_model_options *o,
                    head **out) {
  *out = NULL;
  if (stage < 1 || stage > 4) return hakd_error(HAKD_EINVAL, "%s: FCN head on stage %d (1..4)", prefix, stage);
  fcn_head *h = calloc(1, sizeof *h);
  if (!h) return hakd_error(HAKD_ENOMEM, "%s: out of memory", prefix);
  h->base.forward = fcn_forward;
  h->base.describe = fcn_describe;
  h->base.destroy = fcn_destroy;
  h->stage = stage - 1;
  h->dropout = o->dropout >= 0.0f ? o->dropout : 0.1f;
  int in = b->channels[stage - 1], inter = in / 4 > 0 ? in / 4 : 1;
  char name[LAYER_NAME_MAX];
  int rc = layer_conv_init(&h->conv, p, layer_name(name, "%s.0", prefix), in, inter, 3, 1, 1, 1, 1, 0);
  if (!rc) rc = layer_bn_init(&h->bn, p, layer_name(name, "%s.1", prefix), inter, 1e-5f, o->bn_momentum);
  if (!rc)
    rc = layer_conv_init(&h->classifier, p, layer_name(name, "%s.4", prefix), inter, o->num_classes, 1, 1, 0, 1, 1, 1);
  if (rc) {
    free(h);
    if (rc == HAKD_ENOMEM) return hakd_error(HAKD_ENOMEM, "%s: out of memory creating the FCN head", prefix);
    return rc;
  }
  *out = &h->base;
  return 0;
}
