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
  float drop_path_rate; /* MiT stochastic depth, rising linearly over the blocks to this rate (HF SegFormer
                           trains with 0.1); 0 = off */
  int aspp_dilations[3]; /* DeepLabV3 ASPP: rates of the three atrous 3x3 branches; all 0 = torchvision's
                            12/24/36 (made for stride-8 maps of 512-1024 px crops; a 64 px input gives an
                            8x8 map, where every tap of those rates but the centre reads padding) */
} hakd_model_options;

/* "12,24,36" (the three atrous branches) or mmsegmentation's "1,12,24,36" (with the 1x1 branch's 1)
 * into out[3]; each rate 1..1024. Errors name the text. */
int hakd_aspp_dilations_parse(const char *text, int out[3]);

/* Reference defaults: num_classes 19, width 1, no deep stem, aux as the model defines. */
void hakd_model_options_default(hakd_model_options *opts);

typedef struct {
  hakd_tensor *logits;    /* (N, K, h, w) at the model's native output stride */
  hakd_tensor *aux;       /* auxiliary head logits or NULL */
  /* backbone stage features 1..4; in the bf16 precision (inference, and training unless
   * HAKD_BF16_BLOCKED_TRAIN=0) a CNN's are blocked bfloat16 (HAKD_BF16_BLOCKED), and in float32
   * training a ResNet's are blocked float32 (HAKD_F32_BLOCKED, unless HAKD_F32_BLOCKED_TRAIN=0),
   * as its convolutions left them: hakd_to_f32 gives float32 NCHW (and returns a float32 tensor
   * as it is), carrying the gradient back in training */
  hakd_tensor *stages[4];
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
/* Smallest input height and width (each) the model's forward takes: 1 for the CNNs (every conv
 * is padded), 29 for MiT encoders (stage 1's spatial-reduction conv, kernel 8, needs an 8x8 map
 * at stride 4). Checked against real forwards by tests/test_badinput.c. */
int hakd_model_min_input(const hakd_model *m);
/* Smallest batch a training-mode forward of (n, 3, h, w) takes: BatchNorm needs more than one
 * value per channel (PyTorch refuses the same), so 2 with a global-pooling branch (ASPP, PSP) and
 * enough images for two values at the deepest BatchNorm'd map otherwise; 1 when none is needed. */
int hakd_model_min_train_batch(const hakd_model *m, int64_t h, int64_t w);
/* 0 when an input (n, 3, h, w) can go through hakd_model_forward (in training mode when
 * training); otherwise HAKD_ESHAPE with a message naming the model, the input size and the
 * smallest size or batch it takes. hakd_model_forward calls it first; apps call it before
 * reading data or loading weights so that a bad size fails early. */
int hakd_model_check_input(const hakd_model *m, int64_t n, int64_t h, int64_t w, int training);
/* Multiply-adds of one forward pass at (1, 3, h, w) (the mmcv / fvcore convention). */
int64_t hakd_model_macs(hakd_model *m, int h, int w);
/* The multiply-adds hakd executes for that pass: convolutions skip the products with the zero
 * padding on some paths (hakd_tape_executed_macs); what `hakd bench` counts. */
int64_t hakd_model_executed_macs(hakd_model *m, int h, int w);


/* Prefix of the backbone's state_dict names ("backbone", "segformer.encoder", ...). */
const char *hakd_model_backbone_prefix(const hakd_model *m);
/* Prefix of the decode head ("classifier", "decode_head"), for its learning-rate multiplier. */
const char *hakd_model_head_prefix(const hakd_model *m);

/* ---- weight import ---- */

typedef struct {
  /* Rewrites file keys before matching: "FROM=TO" replaces a leading FROM with TO
   * ("=backbone." prepends, "module.=" strips); a value without '=' is prepended. */
  const char *key_map;
  int strict;        /* missing or unexpected keys are an error (default on) */
  int backbone_only; /* load only the backbone (ImageNet-pretrained); other model keys stay */
} hakd_load_options;

typedef struct {
  int loaded, missing, unexpected, mismatched, ignored; /* ignored: num_batches_tracked */
  int unused_aux; /* tensors of an auxiliary head (aux_classifier.*, auxiliary_head.*) the model is built without */
  int targets;                                           /* tensors the load was to fill */
  char first_missing[160], first_unexpected[160], first_mismatched[320];
} hakd_load_report;

void hakd_load_options_default(hakd_load_options *o);
/* Loads a state_dict into the model by name, from a safetensors file or a PyTorch .pth / .pt
 * checkpoint (hakd_weights_open: nested {"state_dict": ...} checkpoints unwrapped; a leading
 * `module.` of DataParallel stripped). Names are taken as torchvision / Hugging Face / the
 * -mmseg models write them; official MiT names (patch_embed1, block1.0.attn.kv, norm1, ...) and
 * mmsegmentation names (MiT backbone.layers.*, with the fused in_proj split into query/key/value
 * and 1x1-conv FFN weights; aux/FCN ConvModule heads) are mapped. Shape mismatches are always an
 * error naming the key; non-finite values too. A load that fills fewer than half of the targets is
 * refused. Auxiliary-head tensors of a model built without one are counted in unused_aux, not
 * refused. On error the model's values are unchanged. */
int hakd_model_load(hakd_model *m, const char *path, const hakd_load_options *opts, hakd_load_report *report);
/* ---- the model a weights file describes ----
 *
 * Every weights file hakd writes (training checkpoints iter_N / latest / best, distillation
 * students, `hakd convert --model`) carries in its safetensors __metadata__ the model's name and
 * the options its tensors were made with, so that it opens without the caller repeating them.
 * Keys (string values):
 *   model            registry name
 *   num_classes      K
 *   width            channel multiplier ("%.9g": the float exactly)
 *   aspp_dilations   "r1,r2,r3", the rates in effect (models with an ASPP head only)
 *   deep_stem        0 | 1, in effect (ResNet backbones; the -mmseg ones always 1)
 *   aux_head         0 | 1: whether the file holds an auxiliary head
 *   bn_momentum, dropout, drop_path_rate   training-only; recorded, taken by hakd_model_open
 * Files without them (PyTorch .pth, safetensors of other tools, hakd's before these keys) open
 * as before with the options given. */

enum {
  HAKD_META_MODEL = 1 << 0,
  HAKD_META_NUM_CLASSES = 1 << 1,
  HAKD_META_WIDTH = 1 << 2,
  HAKD_META_ASPP = 1 << 3,
  HAKD_META_DEEP_STEM = 1 << 4,
  HAKD_META_AUX_HEAD = 1 << 5,
  HAKD_META_BN_MOMENTUM = 1 << 6,
  HAKD_META_DROPOUT = 1 << 7,
  HAKD_META_DROP_PATH = 1 << 8
};

typedef struct {
  char model[64];          /* "" when the file names none */
  hakd_model_options opts; /* the options the file holds (bits in `have`); the others at their defaults */
  unsigned have;           /* HAKD_META_* of the keys present */
} hakd_model_meta;

/* The model description in a weights file (safetensors or .pth; a .pth has none: have 0). A
 * value that does not parse (width 'abc', num_classes -3, aspp_dilations '1,,3') is an error
 * naming the file, the key and the value. */
int hakd_model_meta_read(const char *path, hakd_model_meta *out);

/* The metadata (key, value pairs as above, NULL-terminated) describing model m: what
 * hakd_model_save writes. The strings live in *out (valid after m is freed). */
typedef struct {
  const char *pairs[2 * 9 + 1];
  char name[64], text[8][40];
} hakd_model_metadata;
void hakd_model_metadata_of(const hakd_model *m, hakd_model_metadata *out);

/* The name and options to build for weights file `path`, starting from the caller's: name NULL,
 * num_classes 0, width 0, aspp_dilations all 0 and aux_head -1 mean "as the file says".
 * Those are filled from the file's metadata; without it, num_classes is inferred from the shape
 * of the file's classifier weight and the width from the first tensor the model and the file
 * share by name (every inferred value is checked by the strict load that follows); an option
 * the file does not determine falls back to the reference default (width 1, the model's ASPP
 * rates and aux head). A given name, num_classes, width, aspp_dilations or deep_stem that
 * contradicts the metadata is refused (HAKD_EINVAL) naming the file, the option and both values,
 * instead of failing later on a tensor shape. Fails naming the file and what to pass when no
 * model name or class count can be found. name_out (name_size bytes) gets the model name;
 * training-only options (bn_momentum, dropout, drop_path_rate) are left as given. */
int hakd_model_options_for_file(const char *path, const char *name, hakd_model_options *opts, char *name_out,
                                size_t name_size);

/* hakd_params_save of the model's parameters with its description (hakd_model_metadata_of)
 * followed by the extra pairs in metadata (NULL-terminated key, value; may be NULL). */
int hakd_model_save(hakd_model *m, const char *path, const char *const *metadata);

/* Writes parameters and buffers as a safetensors state_dict PyTorch loads
 * (num_batches_tracked as int64 scalars), atomically, with optional __metadata__ given as
 * NULL-terminated key, value pairs (metadata may be NULL). */
int hakd_params_save(const hakd_params *p, const char *path, const char *const *metadata);

#endif
