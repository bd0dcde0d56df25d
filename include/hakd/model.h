/* Segmentation models: a backbone exposing its stage 1-4 features and a head producing class
 * logits, built by name from a registry. Parameters and buffers are named exactly as the
 * PyTorch state_dict of the reference implementation (torchvision, Hugging Face SegFormer). */
#ifndef HAKD_MODEL_H
#define HAKD_MODEL_H

#include "hakd/tensor.h"

typedef struct hakd_model hakd_model;

typedef struct {
  int num_classes;     /* K */
  float width;         /* channel multiplier for small experiments (1 = reference widths) */
  int deep_stem;       /* ResNet: three 3x3 convs stem (ResNetV1c / CIRKD) */
  int aux_head;        /* -1 = the model's default, 0 = without, 1 = with an FCN aux head on stage 3 */
  float bn_momentum;   /* 0.1 */
  float dropout;       /* head dropout (SegFormer 0.1, DeepLab none); negative = model default */
} hakd_model_options;

/* Reference defaults: num_classes 19, width 1, no deep stem, aux as the model defines. */
void hakd_model_options_default(hakd_model_options *opts);

typedef struct {
  hakd_tensor *logits;    /* (N, K, h, w) at the model's native output stride */
  hakd_tensor *aux;       /* auxiliary head logits or NULL */
  hakd_tensor *stages[4]; /* backbone stage features 1..4 */
} hakd_model_output;

/* Registry. */
int hakd_model_count(void);
const char *hakd_model_name_at(int i);
const char *hakd_model_description(const char *name);

int hakd_model_create(const char *name, const hakd_model_options *opts, hakd_model **out);
void hakd_model_free(hakd_model *m);
const char *hakd_model_name(const hakd_model *m);
/* PyTorch's default initialisation (kaiming-uniform convs/linears etc.), deterministic for a seed. */
void hakd_model_init(hakd_model *m, uint64_t seed);
/* x: (N, 3, H, W). Fills out; returns 0 or the context's error. */
int hakd_model_forward(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x, hakd_model_output *out);
/* All parameters and buffers, in state_dict order. */
hakd_params *hakd_model_params(hakd_model *m);
int hakd_model_num_classes(const hakd_model *m);
int hakd_model_stage_channels(const hakd_model *m, int stage); /* stage 1..4 */
int hakd_model_stage_stride(const hakd_model *m, int stage);
int hakd_model_output_stride(const hakd_model *m);
int hakd_model_has_aux(const hakd_model *m);
/* "cnn" or "transformer" (for reports). */
const char *hakd_model_family(const hakd_model *m);
/* Input normalisation the model expects, 0-255 scale (ImageNet RGB by default). */
void hakd_model_mean_std(const hakd_model *m, float mean[3], float std[3]);
/* Multiply-adds of one forward pass at (1, 3, h, w) (the mmcv / fvcore convention). */
int64_t hakd_model_macs(hakd_model *m, int h, int w);

#endif
