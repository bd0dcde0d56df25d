/* How a model is assembled: a backbone (stage features 1-4) and a head (logits), plus an
 * optional FCN auxiliary head on stage 3. Each family lives in its own file. */
#ifndef HAKD_MODELS_INTERNAL_H
#define HAKD_MODELS_INTERNAL_H

#include "hakd/model.h"
#include "models/layers.h"
#include "models/model_graph.h"

typedef struct backbone backbone;
struct backbone {
  /* Writes stages[0..3]; returns 0 or the context's error. */
  int (*forward)(backbone *b, hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *stages[4]);
  /* The same computation in inference mode on symbolic values (model_graph.h): writes the stage
   * values; returns 0 or an error. */
  int (*describe)(backbone *b, model_graph *g, int x, int stages[4]);
  void (*destroy)(backbone *b);
  int channels[4], strides[4];
  const char *family; /* "cnn" or "transformer" */
  /* Smallest input height / width the forward is defined for (0 or 1: any). Convolutions whose
   * kernel is larger than their padded input have no output, so e.g. MiT's spatial-reduction
   * convs (kernel = stride = 8 at stage 1) need a stage-1 map of 8x8. */
  int min_input;
  const char *min_input_reason; /* why, for the error message */
  /* Stride of the deepest BatchNorm'd feature map (0: no BatchNorm in the backbone). Training
   * needs more than one value per channel there (PyTorch refuses the same). */
  int bn_stride;
};

typedef struct head head;
struct head {
  /* Logits at the head's native resolution from the backbone stages. */
  hakd_tensor *(*forward)(head *h, hakd_ctx *ctx, hakd_tensor *const stages[4]);
  /* The same on symbolic values (model_graph.h): the logits value, 0 after an error. */
  int (*describe)(head *h, model_graph *g, const int stages[4]);
  void (*destroy)(head *h);
  /* A BatchNorm after global pooling (ASPP image pooling, PSP bin 1): one value per channel and
   * image, so a training-mode forward needs a batch of at least 2. */
  int pooled_bn;
  /* Stride of the deepest map the head BatchNorms before upsampling (mmseg's SegformerHead: each
   * stage's ConvModule, down to stage 4); 0 when its BatchNorms all run at stride <= the
   * backbone's bn_stride or at stage 1. */
  int bn_stride;
};

typedef enum { BACKBONE_RESNET, BACKBONE_MOBILENETV2, BACKBONE_MIT } backbone_kind;
typedef enum { HEAD_ASPP, HEAD_FCN, HEAD_PSP, HEAD_SEGFORMER, HEAD_ASPP_MMSEG, HEAD_SEGFORMER_MMSEG } head_kind;

typedef struct {
  const char *name, *description;
  backbone_kind backbone;
  int variant;       /* ResNet depth 18/34/50/101; MiT b0..b5 as 0..5 */
  int output_stride; /* 8, 16 or 32 (dilated CNNs); MiT is always 32 at stage 4 */
  head_kind head;
  int aux_default;   /* FCN aux head on stage 3 by default */
  const char *backbone_prefix, *head_prefix;
  int deep_stem;     /* ResNet: always mmseg ResNetV1c's deep stem (the -mmseg models) */
  int head_channels; /* HEAD_ASPP_MMSEG: the config's decode_head channels (512) */
} model_spec;

/* Family constructors (resnet.c, mobilenetv2.c, mit.c; heads in aspp.c, fcn.c, psp.c, segformer_head.c). */
int resnet_create(hakd_params *p, const char *prefix, int depth, int output_stride, const hakd_model_options *o,
                  backbone **out);
int mobilenetv2_create(hakd_params *p, const char *prefix, int output_stride, const hakd_model_options *o,
                       backbone **out);
int mit_create(hakd_params *p, const char *prefix, int variant, const hakd_model_options *o, backbone **out);
/* ASPP head of torchvision's DeepLabHead on stage 4 (rates scaled for output stride 16 as torchvision does not: 12/24/36). */
int aspp_head_create(hakd_params *p, const char *prefix, const backbone *b, const hakd_model_options *o, head **out);
/* FCNHead (torchvision) on `stage` (4 for fcn-*, 3 for the aux head). */
int fcn_head_create(hakd_params *p, const char *prefix, const backbone *b, int stage, const hakd_model_options *o,
                    head **out);
int psp_head_create(hakd_params *p, const char *prefix, const backbone *b, const hakd_model_options *o, head **out);
int segformer_head_create(hakd_params *p, const char *prefix, const backbone *b, int variant,
                          const hakd_model_options *o, head **out);
/* mmsegmentation's heads with their own module structure and names (aspp_mmseg.c, segformer_head.c). */
int aspp_mmseg_head_create(hakd_params *p, const char *prefix, const backbone *b, int channels,
                           const hakd_model_options *o, head **out);
int segformer_mmseg_head_create(hakd_params *p, const char *prefix, const backbone *b, int variant,
                                const hakd_model_options *o, head **out);

/* The options a model of `name` is built with when given o: aux_head -1 resolved to the model's
 * default, deep_stem to what the backbone uses (0 without a ResNet, 1 for the -mmseg ones),
 * aspp_dilations to the rates in effect (the head's 12,24,36 for all 0; all 0 without an ASPP
 * head). Two option sets that agree after this build the same model. HAKD_ENOTFOUND for an
 * unknown name. */
int model_options_effective(const char *name, hakd_model_options *o);
/* The options m was created with (as given to hakd_model_create). */
const hakd_model_options *model_options(const hakd_model *m);

const model_spec *model_spec_find(const char *name);
int model_spec_count(void);
const model_spec *model_spec_at(int i);

#endif
