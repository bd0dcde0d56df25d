/* Model assembly, initialisation and the public model API. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/model_internal.h"

struct hakd_model {
  char name[64];
  const model_spec *spec;
  hakd_model_options opts;
  hakd_params params;
  backbone *backbone;
  head *head, *aux;
};

void hakd_model_options_default(hakd_model_options *o) {
  memset(o, 0, sizeof *o);
  o->num_classes = 19;
  o->width = 1.0f;
  o->aux_head = -1;
  o->bn_momentum = 0.1f;
  o->dropout = -1.0f;
}

int hakd_aspp_dilations_parse(const char *text, int out[3]) {
  int v[4], n = 0;
  const char *s = text ? text : "";
  while (*s && n < 5) {
    char *end;
    long r = strtol(s, &end, 10);
    if (end == s || r < 1 || r > 1024 || (*end && *end != ',')) { n = -1; break; }
    if (n < 4) v[n] = (int)r;
    n++;
    s = *end ? end + 1 : end;
    if (*end == ',' && !*s) { n = -1; break; }
  }
  if (n == 4 && v[0] == 1) v[0] = v[1], v[1] = v[2], v[2] = v[3], n = 3;
  if (n != 3)
    return hakd_error(HAKD_EINVAL,
                      "aspp_dilations '%s': expected three rates like 12,24,36 (or mmsegmentation's 1,12,24,36)",
                      text ? text : "");
  for (int i = 0; i < 3; i++) out[i] = v[i];
  return 0;
}

int hakd_model_count(void) { return model_spec_count(); }
const char *hakd_model_name_at(int i) { return model_spec_at(i)->name; }
const char *hakd_model_description(const char *name) {
  const model_spec *s = model_spec_find(name);
  return s ? s->description : NULL;
}

int hakd_model_create(const char *name, const hakd_model_options *opts, hakd_model **out) {
  *out = NULL;
  const model_spec *spec = model_spec_find(name);
  if (!spec) return hakd_error(HAKD_ENOTFOUND, "unknown model '%s' (see `hakd models`)", name);
  hakd_model_options o;
  if (opts)
    o = *opts;
  else
    hakd_model_options_default(&o);
  if (o.num_classes < 1 || o.num_classes > 4096)
    return hakd_error(HAKD_EINVAL, "model %s: num_classes %d out of range", name, o.num_classes);
  if (!(o.width > 0.0f && o.width <= 4.0f)) return hakd_error(HAKD_EINVAL, "model %s: width %g out of range", name, o.width);
  for (int i = 0; i < 3; i++)
    if (o.aspp_dilations[i] < 0 || o.aspp_dilations[i] > 1024 || (o.aspp_dilations[i] == 0) != (o.aspp_dilations[0] == 0))
      return hakd_error(HAKD_EINVAL, "model %s: ASPP dilations %d,%d,%d out of range", name, o.aspp_dilations[0],
                        o.aspp_dilations[1], o.aspp_dilations[2]);
  hakd_model *m = calloc(1, sizeof *m);
  if (!m) return hakd_error(HAKD_ENOMEM, "out of memory creating %s", name);
  snprintf(m->name, sizeof m->name, "%s", name);
  m->spec = spec;
  hakd_params_init(&m->params);
  if (spec->deep_stem) o.deep_stem = 1;
  m->opts = o;
  int rc = 0;
  switch (spec->backbone) {
    case BACKBONE_RESNET:
      rc = resnet_create(&m->params, spec->backbone_prefix, spec->variant, spec->output_stride, &o, &m->backbone);
      break;
    case BACKBONE_MOBILENETV2:
      rc = mobilenetv2_create(&m->params, spec->backbone_prefix, spec->output_stride, &o, &m->backbone);
      break;
    case BACKBONE_MIT: rc = mit_create(&m->params, spec->backbone_prefix, spec->variant, &o, &m->backbone); break;
  }
  if (!rc) switch (spec->head) {
      case HEAD_ASPP: rc = aspp_head_create(&m->params, spec->head_prefix, m->backbone, &o, &m->head); break;
      case HEAD_FCN: rc = fcn_head_create(&m->params, spec->head_prefix, m->backbone, 4, &o, &m->head); break;
      case HEAD_PSP: rc = psp_head_create(&m->params, spec->head_prefix, m->backbone, &o, &m->head); break;
      case HEAD_SEGFORMER:
        rc = segformer_head_create(&m->params, spec->head_prefix, m->backbone, spec->variant, &o, &m->head);
        break;
      case HEAD_ASPP_MMSEG:
        rc = aspp_mmseg_head_create(&m->params, spec->head_prefix, m->backbone, spec->head_channels, &o, &m->head);
        break;
      case HEAD_SEGFORMER_MMSEG:
        rc = segformer_mmseg_head_create(&m->params, spec->head_prefix, m->backbone, spec->variant, &o, &m->head);
        break;
    }
  int want_aux = o.aux_head < 0 ? spec->aux_default : o.aux_head;
  if (!rc && want_aux) rc = fcn_head_create(&m->params, "aux_classifier", m->backbone, 3, &o, &m->aux);
  if (rc) {
    hakd_error_prefix("creating model %s", name);
    hakd_model_free(m);
    return rc;
  }
  hakd_model_init(m, 0);
  *out = m;
  return 0;
}

int model_options_effective(const char *name, hakd_model_options *o) {
  const model_spec *spec = model_spec_find(name);
  if (!spec) return hakd_error(HAKD_ENOTFOUND, "unknown model '%s' (see `hakd models`)", name);
  if (o->aux_head < 0) o->aux_head = spec->aux_default;
  o->aux_head = o->aux_head != 0;
  o->deep_stem = spec->backbone == BACKBONE_RESNET && (o->deep_stem || spec->deep_stem);
  if (spec->head == HEAD_ASPP || spec->head == HEAD_ASPP_MMSEG) {
    /* torchvision's DeepLabHead and mmseg's ASPPHead default to the same rates (aspp.c, aspp_mmseg.c) */
    if (o->aspp_dilations[0] == 0) o->aspp_dilations[0] = 12, o->aspp_dilations[1] = 24, o->aspp_dilations[2] = 36;
  } else {
    memset(o->aspp_dilations, 0, sizeof o->aspp_dilations);
  }
  return 0;
}

const hakd_model_options *model_options(const hakd_model *m) { return &m->opts; }

void hakd_model_free(hakd_model *m) {
  if (!m) return;
  if (m->backbone) m->backbone->destroy(m->backbone);
  if (m->head) m->head->destroy(m->head);
  if (m->aux) m->aux->destroy(m->aux);
  hakd_params_free(&m->params);
  free(m);
}

const char *hakd_model_name(const hakd_model *m) { return m->name; }
hakd_params *hakd_model_params(hakd_model *m) { return &m->params; }
int hakd_model_num_classes(const hakd_model *m) { return m->opts.num_classes; }
int hakd_model_stage_channels(const hakd_model *m, int stage) { return m->backbone->channels[stage - 1]; }
int hakd_model_stage_stride(const hakd_model *m, int stage) { return m->backbone->strides[stage - 1]; }
int hakd_model_has_aux(const hakd_model *m) { return m->aux != NULL; }
const char *hakd_model_family(const hakd_model *m) { return m->backbone->family; }
const char *hakd_model_backbone_prefix(const hakd_model *m) { return m->spec->backbone_prefix; }
const char *hakd_model_head_prefix(const hakd_model *m) { return m->spec->head_prefix; }

int hakd_model_output_stride(const hakd_model *m) {
  /* SegFormer decodes at stage 1's stride; DeepLab/FCN/PSP at stage 4's. */
  int segformer = m->spec->head == HEAD_SEGFORMER || m->spec->head == HEAD_SEGFORMER_MMSEG;
  return segformer ? m->backbone->strides[0] : m->backbone->strides[3];
}

void hakd_model_mean_std(const hakd_model *m, float mean[3], float std[3]) {
  (void)m;
  const float imagenet_mean[3] = {123.675f, 116.28f, 103.53f}, imagenet_std[3] = {58.395f, 57.12f, 57.375f};
  memcpy(mean, imagenet_mean, sizeof imagenet_mean);
  memcpy(std, imagenet_std, sizeof imagenet_std);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* Conv weights: kaiming-normal (fan_out, ReLU gain), as torchvision's ResNet/MobileNetV2 and
 * SegFormer's conv init; linear weights: truncated normal std 0.02 (ViT/SegFormer); biases 0;
 * norm weights 1; running_var 1. */
void hakd_model_init(hakd_model *m, uint64_t seed) {
  uint64_t rng = hakd_rng_seed(seed);
  for (int i = 0; i < m->params.count; i++) {
    hakd_tensor *t = m->params.items[i];
    float *d = hakd_f32(t);
    int64_t n = hakd_numel(t);
    hakd_tensor_changed(t); /* a frozen model re-initialised (hakd/tensor.h) */
    if (t->ndim == 4) {
      double fan_out = (double)t->shape[0] * t->shape[2] * t->shape[3];
      /* fan_out = out_channels * k * k whatever the groups, as torch's kaiming_normal_ computes it */
      float std = (float)sqrt(2.0 / fan_out);
      for (int64_t j = 0; j < n; j++) d[j] = std * hakd_rng_normal(&rng);
    } else if (t->ndim == 2) {
      for (int64_t j = 0; j < n; j++) {
        float v;
        do v = hakd_rng_normal(&rng);
        while (fabsf(v) > 2.0f);
        d[j] = 0.02f * v;
      }
    } else {
      float value = (ends_with(t->name, ".running_var") || (ends_with(t->name, ".weight") && t->ndim == 1)) ? 1.0f : 0.0f;
      for (int64_t j = 0; j < n; j++) d[j] = value;
    }
  }
}

int hakd_model_min_input(const hakd_model *m) { return m->backbone->min_input > 1 ? m->backbone->min_input : 1; }

/* Size of a map after `stride` / 2 halvings by padded stride-2 convs or pools: ceil(n / 2) each
 * ((n - 1) / 2 + 1 for kernel 3 pad 1, kernel 7 pad 3, and MiT's 7/4/3 patch embedding alike). */
static int64_t downsampled(int64_t n, int stride) {
  for (; stride > 1; stride /= 2) n = (n - 1) / 2 + 1;
  return n;
}

int hakd_model_min_train_batch(const hakd_model *m, int64_t h, int64_t w) {
  int need = m->head->pooled_bn || (m->aux && m->aux->pooled_bn) ? 2 : 1;
  int stride = m->backbone->bn_stride > m->head->bn_stride ? m->backbone->bn_stride : m->head->bn_stride;
  if (stride) {
    int64_t values = downsampled(h, stride) * downsampled(w, stride);
    if (values < 2 && need < 2) need = 2;
  }
  return need;
}

int hakd_model_check_input(const hakd_model *m, int64_t n, int64_t h, int64_t w, int training) {
  int min = hakd_model_min_input(m);
  if (n < 1 || h < 1 || w < 1)
    return hakd_error(HAKD_ESHAPE, "%s: input (%lld, 3, %lld, %lld) is empty; the smallest input it takes is %dx%d",
                      m->name, (long long)n, (long long)h, (long long)w, min, min);
  if (h < min || w < min)
    return hakd_error(HAKD_ESHAPE, "%s: input %lldx%lld (HxW) is smaller than the smallest input it takes, %dx%d: %s",
                      m->name, (long long)h, (long long)w, min, min,
                      m->backbone->min_input_reason ? m->backbone->min_input_reason : "its convolutions need it");
  if (training && n < hakd_model_min_train_batch(m, h, w))
    return hakd_error(HAKD_ESHAPE,
                      "%s: training on a batch of %lld at %lldx%lld leaves BatchNorm one value per channel (%s); "
                      "use a batch of at least %d",
                      m->name, (long long)n, (long long)h, (long long)w,
                      m->head->pooled_bn ? "its global-pooling branch" : "its deepest feature map",
                      hakd_model_min_train_batch(m, h, w));
  return 0;
}

int hakd_model_forward(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x, hakd_model_output *out) {
  memset(out, 0, sizeof *out);
  if (!x) return hakd_ctx_status(ctx) ? hakd_ctx_status(ctx) : hakd_error(HAKD_EINVAL, "%s: no input", m->name);
  if (x->ndim != 4 || x->shape[1] != 3) {
    char buf[64];
    return hakd_error(HAKD_ESHAPE, "%s: input must be (N, 3, H, W), got %s", m->name, hakd_shape_str(x, buf, sizeof buf));
  }
  int rc = hakd_model_check_input(m, x->shape[0], x->shape[2], x->shape[3], hakd_ctx_training(ctx));
  if (rc) return rc;
  /* Everything made inside the model except what it returns is unreachable for the caller:
   * its data dies once backward no longer needs it. */
  hakd_arena_mark mark = hakd_ctx_mark(ctx);
  rc = m->backbone->forward(m->backbone, ctx, x, out->stages);
  if (rc) return rc;
  /* float32 training's blocked stages (HAKD_F32_BLOCKED) reach the heads as float32 NCHW; the
   * caller gets them blocked (hakd_to_f32 converts, as for bf16), so a copy no head reads dies
   * with the model's block instead of living to the end of the step beside its original */
  hakd_tensor *head_in[4];
  for (int i = 0; i < 4; i++)
    head_in[i] = out->stages[i] && out->stages[i]->dtype == HAKD_F32_BLOCKED ? hakd_to_f32(ctx, out->stages[i])
                                                                              : out->stages[i];
  out->logits = m->head->forward(m->head, ctx, head_in);
  if (m->aux) out->aux = m->aux->forward(m->aux, ctx, head_in);
  hakd_tensor *keep[6] = {out->logits, out->aux, out->stages[0], out->stages[1], out->stages[2], out->stages[3]};
  hakd_ctx_collapse(ctx, mark, 6, keep);
  if (hakd_ctx_status(ctx)) return hakd_ctx_status(ctx);
  if (!out->logits) return hakd_error(HAKD_EINVAL, "%s: head produced no logits", m->name);
  return 0;
}

int hakd_model_describe(hakd_model *m, model_graph *g, int x) {
  int stages[4] = {0, 0, 0, 0};
  if (!x || m->backbone->describe(m->backbone, g, x, stages)) return 0;
  return m->head->describe(m->head, g, stages);
}

static int64_t model_macs(hakd_model *m, int h, int w, int executed) {
  hakd_ctx *ctx = hakd_ctx_new();
  if (!ctx) return -1;
  hakd_ctx_set_training(ctx, 0);
  hakd_tensor *x = hakd_tensor4(ctx, 1, 3, h, w);
  if (!x) {
    hakd_ctx_free(ctx);
    return -1;
  }
  memset(x->data, 0, (size_t)hakd_numel(x) * sizeof(float));
  hakd_model_output out;
  int64_t macs = -1;
  /* The tape records every op with its shapes; count the multiply-adds of the products. */
  if (hakd_model_forward(m, ctx, x, &out) == 0) macs = executed ? hakd_tape_executed_macs(ctx) : hakd_tape_macs(ctx);
  hakd_ctx_free(ctx);
  return macs;
}

int64_t hakd_model_macs(hakd_model *m, int h, int w) { return model_macs(m, h, w, 0); }

int64_t hakd_model_executed_macs(hakd_model *m, int h, int w) { return model_macs(m, h, w, 1); }
