/* CNN models (ResNet / MobileNetV2 backbones; ASPP, FCN, PSP heads) against PyTorch.
 * Fixtures from tools/gen_models_cnn.py: both sides fill every parameter from its state_dict name
 * (tests/param_fill.h), so a fixture holds the input image, the logits, the stage shapes and the
 * reference state_dict's names and shapes (metadata `state_dict`). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "param_fill.h"
#include "rand_fill.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/ops.h"
#include "models/model_internal.h"

/* "name:d0xd1x...;..." over the model's parameters and buffers in registration order, the format
 * of the fixture's `state_dict` metadata. Returns a malloc'ed string. */
static char *state_dict_string(const hakd_params *p) {
  size_t cap = 256, len = 0;
  char *s = malloc(cap);
  if (!s) return NULL;
  s[0] = '\0';
  for (int i = 0; i < p->count; i++) {
    const hakd_tensor *t = p->items[i];
    char entry[256];
    int n = snprintf(entry, sizeof entry, "%s%s:", i ? ";" : "", t->name);
    for (int d = 0; d < t->ndim; d++)
      n += snprintf(entry + n, sizeof entry - (size_t)n, "%s%lld", d ? "x" : "", (long long)t->shape[d]);
    if (len + (size_t)n + 1 > cap) {
      while (len + (size_t)n + 1 > cap) cap *= 2;
      char *grown = realloc(s, cap);
      if (!grown) {
        free(s);
        return NULL;
      }
      s = grown;
    }
    memcpy(s + len, entry, (size_t)n + 1);
    len += (size_t)n;
  }
  return s;
}

/* The model registers exactly the reference state_dict: same names, shapes and order. */
static void check_state_dict(hakd_model *m, const hakd_st_file *f) {
  const char *want = hakd_st_metadata(f, "state_dict");
  ASSERT_TRUE(want != NULL);
  char *got = state_dict_string(hakd_model_params(m));
  ASSERT_TRUE(got != NULL);
  if (strcmp(got, want)) {
    size_t i = 0;
    while (got[i] && got[i] == want[i]) i++;
    size_t start = i;
    while (start > 0 && got[start - 1] != ';') start--;
    test_fail(__FILE__, __LINE__, "%s: state_dict differs from PyTorch at entry\n  got:  %.120s\n  want: %.120s",
              hakd_model_name(m), got + start, want + start);
  }
  free(got);
}

/* The fixture's U8 image as the network input (u8 - 128) / 64 (exact in float32, as in the generator). */
static hakd_tensor *fixture_input(hakd_ctx *ctx, const hakd_st_file *f) {
  const hakd_st_tensor *info = hakd_st_find(f, "input");
  if (!info || info->ndim != 4) return NULL;
  int64_t n = info->shape[0] * info->shape[1] * info->shape[2] * info->shape[3];
  int64_t *raw = malloc((size_t)n * sizeof *raw);
  hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 4, info->shape);
  if (!raw || !x || hakd_st_read_i64(f, "input", raw, n)) {
    free(raw);
    return NULL;
  }
  for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = ((float)raw[i] - 128.0f) / 64.0f;
  free(raw);
  return x;
}

/* Compares t with fixture tensor `name` (same shape); returns max|diff| / max|ref| (or +inf). */
static double fixture_rel_err(const hakd_st_file *f, const char *name, const hakd_tensor *t) {
  const hakd_st_tensor *info = hakd_st_find(f, name);
  if (!info || !t || info->ndim != t->ndim) return INFINITY;
  for (int d = 0; d < t->ndim; d++)
    if (info->shape[d] != t->shape[d]) return INFINITY;
  int64_t n = hakd_numel(t);
  float *want = malloc((size_t)(n ? n : 1) * sizeof *want);
  double err = INFINITY;
  if (want && !hakd_st_read_f32(f, name, want, n)) err = test_max_rel_err(hakd_f32(t), want, n, 1e-6);
  free(want);
  return err;
}

static void check_stage_shapes(const hakd_st_file *f, hakd_model *m, const hakd_model_output *out) {
  int64_t shapes[16];
  ASSERT_OK(hakd_st_read_i64(f, "stage_shapes", shapes, 16));
  for (int s = 0; s < 4; s++) {
    ASSERT_TRUE(out->stages[s] != NULL && out->stages[s]->ndim == 4);
    for (int d = 0; d < 4; d++) ASSERT_EQ_INT(out->stages[s]->shape[d], shapes[4 * s + d]);
    ASSERT_EQ_INT(hakd_model_stage_channels(m, s + 1), shapes[4 * s + 1]);
  }
}

/* Eval-mode forward of `model` (param_fill weights) on the fixture's input: state_dict names, stage
 * shapes, logits (and aux logits when the fixture has them) within 1e-4 of PyTorch. */
static void check_forward_parity(const char *model, const char *fixture, const hakd_model_options *o) {
  hakd_st_file *f = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path(fixture), &f));
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create(model, o, &m));
  check_state_dict(m, f);
  if (test_failed()) return;
  param_fill(hakd_model_params(m));
  hakd_ctx *ctx = hakd_ctx_new();
  ASSERT_TRUE(ctx != NULL);
  hakd_ctx_set_training(ctx, 0);
  hakd_ctx_set_grad(ctx, 0);
  hakd_tensor *x = fixture_input(ctx, f);
  ASSERT_TRUE(x != NULL);
  hakd_model_output out;
  ASSERT_OK(hakd_model_forward(m, ctx, x, &out));
  check_stage_shapes(f, m, &out);
  if (test_failed()) return;
  /* float32 with different summation orders (im2col/BLAS vs. PyTorch's kernels) through up to 50
   * conv layers: observed errors are ~1e-6; 1e-4 leaves room while catching any wrong tap. */
  double err = fixture_rel_err(f, "logits", out.logits);
  printf("%s: logits max rel err %.3g\n", model, err);
  ASSERT_TRUE(err <= 1e-4);
  if (hakd_st_find(f, "aux")) {
    err = fixture_rel_err(f, "aux", out.aux);
    printf("%s: aux logits max rel err %.3g\n", model, err);
    ASSERT_TRUE(err <= 1e-4);
  } else {
    ASSERT_TRUE(out.aux == NULL);
  }
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  hakd_st_close(f);
}

static hakd_model_options options(int num_classes, float width) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = num_classes;
  o.width = width;
  return o;
}

/* torchvision.models.segmentation.deeplabv3_resnet50(num_classes=19, aux_loss=True) itself. */
TEST(deeplabv3_r50_d8_matches_torchvision) {
  hakd_model_options o = options(19, 1.0f);
  o.aux_head = 1;
  check_forward_parity("deeplabv3-r50-d8", "models/deeplabv3-r50-d8.safetensors", &o);
}

TEST(deeplabv3_r18_d8_matches_pytorch) {
  hakd_model_options o = options(5, 1.0f);
  check_forward_parity("deeplabv3-r18-d8", "models/deeplabv3-r18-d8.safetensors", &o);
}

/* --aspp-dilations: torchvision's ASPP built with atrous_rates (1, 2, 3) on a 64x64 input (8x8 map,
 * where the default 12/24/36 taps read only padding). */
TEST(deeplabv3_r18_d8_aspp_dilations_match_pytorch) {
  hakd_model_options o = options(5, 0.5f);
  ASSERT_OK(hakd_aspp_dilations_parse("1,2,3", o.aspp_dilations));
  check_forward_parity("deeplabv3-r18-d8", "models/deeplabv3-r18-d8-w0.5-aspp123.safetensors", &o);
  /* the same weights with the default rates give other logits: the option reaches the convolutions */
  hakd_model_options d = options(5, 0.5f);
  hakd_st_file *f = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("models/deeplabv3-r18-d8-w0.5-aspp123.safetensors"), &f));
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &d, &m));
  param_fill(hakd_model_params(m));
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_training(ctx, 0);
  hakd_ctx_set_grad(ctx, 0);
  hakd_model_output out;
  ASSERT_OK(hakd_model_forward(m, ctx, fixture_input(ctx, f), &out));
  ASSERT_TRUE(fixture_rel_err(f, "logits", out.logits) > 1e-2);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  hakd_st_close(f);
}

/* Rates as torchvision's list or mmsegmentation's `dilations` (with the 1x1 branch's 1); anything
 * else is refused naming the text. */
TEST(aspp_dilations_parse) {
  int r[3];
  ASSERT_OK(hakd_aspp_dilations_parse("12,24,36", r));
  ASSERT_TRUE(r[0] == 12 && r[1] == 24 && r[2] == 36);
  ASSERT_OK(hakd_aspp_dilations_parse("1,6,12,18", r));
  ASSERT_TRUE(r[0] == 6 && r[1] == 12 && r[2] == 18);
  ASSERT_OK(hakd_aspp_dilations_parse("1,1,1", r));
  ASSERT_TRUE(r[0] == 1 && r[1] == 1 && r[2] == 1);
  const char *bad[] = {"", "12,24", "12,24,36,48", "2,6,12,18", "0,1,2", "a,b,c", "12,24,36,", "12;24;36", "1,2,-3",
                       "1,2,99999"};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    if (hakd_aspp_dilations_parse(bad[i], r) == 0) test_fail(__FILE__, __LINE__, "'%s' accepted", bad[i]);
    else if (!strstr(hakd_error_message(), "aspp_dilations"))
      test_fail(__FILE__, __LINE__, "'%s': message does not name the option: %s", bad[i], hakd_error_message());
  }
  hakd_model_options o = options(5, 0.25f);
  o.aspp_dilations[0] = 2; /* partly set: refused */
  hakd_model *m = NULL;
  ASSERT_TRUE(hakd_model_create("deeplabv3-r18-d8", &o, &m) != 0);
}

/* mmsegmentation's DeepLabV3 (ResNetV1c deep stem + ASPPHead: image_pool first, aspp_modules,
 * 3x3 bottleneck, conv_seg) with mmseg's module names, at width 1/32 with dilations 1,2,3,4 so the
 * atrous taps of the 7x9 map read real pixels. */
TEST(deeplabv3_r50_d8_mmseg_matches_pytorch) {
  hakd_model_options o = options(5, 1.0f / 32);
  ASSERT_OK(hakd_aspp_dilations_parse("1,2,3,4", o.aspp_dilations));
  check_forward_parity("deeplabv3-r50-d8-mmseg", "models/deeplabv3-r50-d8-mmseg-w1_32.safetensors", &o);
}

TEST(pspnet_r18_d8_matches_pytorch) {
  hakd_model_options o = options(5, 1.0f);
  check_forward_parity("pspnet-r18-d8", "models/pspnet-r18-d8.safetensors", &o);
}

/* Output stride 16 (layer4 dilated 2, its first block at dilation 1), deep stem, width 0.5. */
TEST(deeplabv3_r18_d16_deep_stem_half_width_matches_pytorch) {
  hakd_model_options o = options(5, 0.5f);
  o.deep_stem = 1;
  check_forward_parity("deeplabv3-r18-d16", "models/deeplabv3-r18-d16-deepstem-w0.5.safetensors", &o);
}

/* torchvision mobilenet_v2 features.0-17 with the depthwise convs dilated in place. */
TEST(deeplabv3_mbv2_matches_pytorch) {
  hakd_model_options o = options(5, 1.0f);
  check_forward_parity("deeplabv3-mbv2", "models/deeplabv3-mbv2.safetensors", &o);
}

/* One training step of deeplabv3-r18-d8 (width 1/32, FCN aux head, dropout 0, batch 2):
 * loss = CE(up(logits)) + 0.4 CE(up(aux)) with 255 = ignore; every parameter gradient and every
 * BN running statistic after the step against PyTorch. */
TEST(deeplabv3_r18_d8_train_step_matches_pytorch) {
  hakd_st_file *f = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("models/deeplabv3-r18-d8-train-w1_32.safetensors"), &f));
  hakd_model_options o = options(5, 1.0f / 32.0f);
  o.aux_head = 1;
  o.dropout = 0.0f; /* dropout masks cannot match PyTorch's RNG */
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  check_state_dict(m, f);
  if (test_failed()) return;
  hakd_params *params = hakd_model_params(m);
  param_fill(params);
  hakd_ctx *ctx = hakd_ctx_new();
  ASSERT_TRUE(ctx != NULL);
  hakd_ctx_set_training(ctx, 1);
  hakd_tensor *x = fixture_input(ctx, f);
  ASSERT_TRUE(x != NULL);
  int64_t h = x->shape[2], w = x->shape[3];
  int64_t label_shape[3] = {x->shape[0], h, w}, n_labels = x->shape[0] * h * w;
  int64_t *raw = malloc((size_t)n_labels * sizeof *raw);
  ASSERT_TRUE(raw != NULL);
  ASSERT_OK(hakd_st_read_i64(f, "labels", raw, n_labels));
  hakd_tensor *labels = hakd_tensor_new(ctx, HAKD_I32, 3, label_shape);
  ASSERT_TRUE(labels != NULL);
  for (int64_t i = 0; i < n_labels; i++) hakd_i32(labels)[i] = (int32_t)raw[i];
  free(raw);

  hakd_model_output out;
  ASSERT_OK(hakd_model_forward(m, ctx, x, &out));
  hakd_tensor *ce = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, out.logits, h, w, 0), labels, 255);
  hakd_tensor *ce_aux = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, out.aux, h, w, 0), labels, 255);
  hakd_tensor *loss = hakd_add(ctx, ce, hakd_scale(ctx, ce_aux, 0.4f));
  ASSERT_OK(hakd_ctx_status(ctx));
  /* Train-mode BN normalises with batch statistics: float32 reductions in another order. */
  double err = fixture_rel_err(f, "logits", out.logits);
  printf("train: logits max rel err %.3g\n", err);
  ASSERT_TRUE(err <= 1e-4);
  err = fixture_rel_err(f, "loss", loss);
  printf("train: loss %.7f, rel err %.3g\n", hakd_f32(loss)[0], err);
  ASSERT_TRUE(err <= 1e-5);

  hakd_params_zero_grad(params);
  ASSERT_OK(hakd_backward(ctx, loss));
  double worst_grad = 0, worst_stat = 0;
  const char *worst_grad_name = "", *worst_stat_name = "";
  int n_grads = 0, n_stats = 0;
  for (int i = 0; i < params->count; i++) {
    hakd_tensor *t = params->items[i];
    char key[256];
    if (t->requires_grad) {
      /* A gradient tensor as if it were the parameter: same shape, grad as data. */
      hakd_tensor g = *t;
      g.data = t->grad;
      snprintf(key, sizeof key, "grad.%s", t->name);
      double e = fixture_rel_err(f, key, &g);
      /* Backward through ~25 conv/BN layers in float32, batch-statistic BN included: ~1e-5
       * observed; 1e-3 per tensor (the brief's bound). */
      if (!(e <= 1e-3)) test_fail(__FILE__, __LINE__, "%s: max rel err %.3g > 1e-3", key, e);
      if (e > worst_grad) worst_grad = e, worst_grad_name = t->name;
      n_grads++;
    } else if (param_fill_ends(t->name, "running_mean") || param_fill_ends(t->name, "running_var")) {
      snprintf(key, sizeof key, "after.%s", t->name);
      double e = fixture_rel_err(f, key, t);
      /* momentum-averaged batch statistics: float32 rounding only. */
      if (!(e <= 1e-4)) test_fail(__FILE__, __LINE__, "%s: max rel err %.3g > 1e-4", key, e);
      if (e > worst_stat) worst_stat = e, worst_stat_name = t->name;
      n_stats++;
    } else {
      ASSERT_TRUE(param_fill_ends(t->name, "num_batches_tracked"));
      ASSERT_NEAR(hakd_f32(t)[0], 1.0f, 0);
    }
  }
  printf("train: %d gradients, worst %.3g (%s); %d running stats, worst %.3g (%s)\n", n_grads, worst_grad,
         worst_grad_name, n_stats, worst_stat, worst_stat_name);
  /* Every gradient in the fixture was compared (the state_dict check already matched the names). */
  int fixture_grads = 0;
  for (int i = 0; i < hakd_st_count(f); i++) fixture_grads += !strncmp(hakd_st_get(f, i)->name, "grad.", 5);
  ASSERT_EQ_INT(n_grads, fixture_grads);
  ASSERT_TRUE(n_stats > 0);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  hakd_st_close(f);
}

/* Expected stage channels at width 0.25 and strides of every CNN in the registry. */
typedef struct {
  const char *name;
  int channels[4], strides[4];
} cnn_expectation;

static const cnn_expectation cnn_models[] = {
    {"deeplabv3-r18-d8", {16, 32, 64, 128}, {4, 8, 8, 8}},
    {"deeplabv3-r34-d8", {16, 32, 64, 128}, {4, 8, 8, 8}},
    {"deeplabv3-r50-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"deeplabv3-r101-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"deeplabv3-r18-d16", {16, 32, 64, 128}, {4, 8, 16, 16}},
    {"deeplabv3-r50-d16", {64, 128, 256, 512}, {4, 8, 16, 16}},
    {"deeplabv3-r101-d16", {64, 128, 256, 512}, {4, 8, 16, 16}},
    /* torchvision's _make_divisible(c * 0.25, 8): 24 -> 8, 32 -> 8, 96 -> 24, 320 -> 80. */
    {"deeplabv3-mbv2", {8, 8, 24, 80}, {4, 8, 8, 8}},
    {"pspnet-r18-d8", {16, 32, 64, 128}, {4, 8, 8, 8}},
    {"pspnet-r50-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"pspnet-r101-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"fcn-r50-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"fcn-r101-d8", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"deeplabv3-r50-d8-mmseg", {64, 128, 256, 512}, {4, 8, 8, 8}},
    {"deeplabv3-r101-d8-mmseg", {64, 128, 256, 512}, {4, 8, 8, 8}},
};
#define N_CNN_MODELS ((int)(sizeof cnn_models / sizeof cnn_models[0]))

/* Every registered CNN (width 0.25, with the aux head) on a 1x3x64x64 input: stage shapes, logits
 * and aux shapes follow the declared channels and strides. */
TEST(every_cnn_model_has_declared_stage_shapes) {
  int checked = 0;
  for (int i = 0; i < hakd_model_count(); i++) {
    const char *name = hakd_model_name_at(i);
    /* The registry's spec says which backbone a model has, without building the Transformers. */
    if (model_spec_find(name)->backbone == BACKBONE_MIT) continue;
    const cnn_expectation *want = NULL;
    for (int j = 0; j < N_CNN_MODELS; j++)
      if (!strcmp(cnn_models[j].name, name)) want = &cnn_models[j];
    if (!want) test_fail(__FILE__, __LINE__, "CNN model %s has no expectation in this test", name);
    ASSERT_TRUE(want != NULL);
    hakd_model_options o = options(3, 0.25f);
    o.aux_head = 1;
    hakd_model *m = NULL;
    ASSERT_OK(hakd_model_create(name, &o, &m));
    ASSERT_TRUE(!strcmp(hakd_model_family(m), "cnn"));
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_training(ctx, 0);
    hakd_ctx_set_grad(ctx, 0);
    hakd_tensor *x = hakd_tensor4(ctx, 1, 3, 64, 64);
    ASSERT_TRUE(x != NULL);
    for (int64_t k = 0; k < hakd_numel(x); k++) hakd_f32(x)[k] = (float)((k * 7919) % 255) / 128.0f - 1.0f;
    hakd_model_output out;
    ASSERT_OK(hakd_model_forward(m, ctx, x, &out));
    for (int s = 0; s < 4; s++) {
      ASSERT_EQ_INT(hakd_model_stage_channels(m, s + 1), want->channels[s]);
      ASSERT_EQ_INT(hakd_model_stage_stride(m, s + 1), want->strides[s]);
      ASSERT_EQ_INT(out.stages[s]->shape[0], 1);
      ASSERT_EQ_INT(out.stages[s]->shape[1], want->channels[s]);
      ASSERT_EQ_INT(out.stages[s]->shape[2], 64 / want->strides[s]);
      ASSERT_EQ_INT(out.stages[s]->shape[3], 64 / want->strides[s]);
    }
    ASSERT_EQ_INT(hakd_model_output_stride(m), want->strides[3]);
    ASSERT_EQ_INT(out.logits->shape[1], 3);
    ASSERT_EQ_INT(out.logits->shape[2], 64 / want->strides[3]);
    ASSERT_EQ_INT(out.logits->shape[3], 64 / want->strides[3]);
    ASSERT_TRUE(out.aux != NULL);
    ASSERT_EQ_INT(out.aux->shape[1], 3);
    ASSERT_EQ_INT(out.aux->shape[2], 64 / want->strides[2]);
    for (int64_t k = 0; k < hakd_numel(out.logits); k++) ASSERT_TRUE(isfinite(hakd_f32(out.logits)[k]));
    hakd_ctx_free(ctx);
    hakd_model_free(m);
    checked++;
  }
  ASSERT_EQ_INT(checked, N_CNN_MODELS);
}

TEST(registry_lists_cnn_models) {
  for (int j = 0; j < N_CNN_MODELS; j++) {
    int found = 0;
    for (int i = 0; i < hakd_model_count(); i++) found |= !strcmp(hakd_model_name_at(i), cnn_models[j].name);
    if (!found) test_fail(__FILE__, __LINE__, "%s not in the registry", cnn_models[j].name);
    ASSERT_TRUE(hakd_model_description(cnn_models[j].name) != NULL);
  }
}

static void expect_param(hakd_model *m, const char *name, int ndim, int64_t d0, int64_t d1) {
  hakd_tensor *t = hakd_params_find(hakd_model_params(m), name);
  if (!t) test_fail(__FILE__, __LINE__, "missing parameter %s", name);
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->ndim, ndim);
  ASSERT_EQ_INT(t->shape[0], d0);
  if (ndim > 1) ASSERT_EQ_INT(t->shape[1], d1);
}

/* mmseg ResNetV1c stem names (convs at stem.0/3/6, BNs at stem.1/4/7) replace conv1/bn1; the
 * width multiplier scales the stem's 32/64 channels (width 0.25 keeps the test small). */
TEST(deep_stem_uses_mmseg_names) {
  hakd_model_options o = options(19, 0.25f);
  o.deep_stem = 1;
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r50-d8", &o, &m));
  expect_param(m, "backbone.stem.0.weight", 4, 8, 3);
  expect_param(m, "backbone.stem.1.running_var", 1, 8, 0);
  expect_param(m, "backbone.stem.3.weight", 4, 8, 8);
  expect_param(m, "backbone.stem.4.bias", 1, 8, 0);
  expect_param(m, "backbone.stem.6.weight", 4, 16, 8);
  expect_param(m, "backbone.stem.7.weight", 1, 16, 0);
  expect_param(m, "backbone.layer1.0.conv1.weight", 4, 16, 16);
  expect_param(m, "backbone.layer1.0.downsample.0.weight", 4, 64, 16);
  if (test_failed()) return;
  hakd_params *p = hakd_model_params(m);
  ASSERT_TRUE(hakd_params_find(p, "backbone.conv1.weight") == NULL);
  ASSERT_TRUE(hakd_params_find(p, "backbone.bn1.weight") == NULL);
  ASSERT_TRUE(hakd_params_find(p, "backbone.stem.2.weight") == NULL);
  ASSERT_TRUE(!strcmp(p->items[0]->name, "backbone.stem.0.weight"));
  hakd_model_free(m);
}

/* Eval forward of `name` (width multiplier `width`, param_fill weights, a 1x3x48x64 input) in fp32
 * and in bf16, where the backbone's activations stay blocked bfloat16 from the max pooling (ResNet)
 * or the stem (MobileNetV2) through every stage and the head's convolutions up to its classifier:
 * logits and every stage (float32 again) agree within `tol` of max|fp32|. */
static void check_bf16_inference(const char *name, float width, double tol) {
  hakd_model_options o = options(5, width);
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create(name, &o, &m));
  param_fill(hakd_model_params(m));
  hakd_tensor *ref[5] = {0}, *got[5] = {0};
  hakd_ctx *ctx[2] = {hakd_ctx_new(), hakd_ctx_new()};
  for (int bf16 = 0; bf16 < 2; bf16++) {
    hakd_ctx *c = ctx[bf16];
    hakd_ctx_set_training(c, 0);
    hakd_ctx_set_grad(c, 0);
    hakd_ctx_set_precision(c, bf16 ? HAKD_BF16 : HAKD_FP32);
    hakd_tensor *x = hakd_tensor4(c, 1, 3, 48, 64);
    ASSERT_TRUE(x != NULL);
    for (int64_t k = 0; k < hakd_numel(x); k++) hakd_f32(x)[k] = (float)((k * 7919) % 255) / 128.0f - 1.0f;
    hakd_model_output out;
    int rc = hakd_model_forward(m, c, x, &out);
    if (bf16 && !hakd_bf16_supported()) { /* refused with the reason where bf16 cannot run */
      ASSERT_TRUE(rc == HAKD_EUNSUPPORTED && strstr(hakd_error_message(), "AVX512-BF16"));
      goto done;
    }
    ASSERT_OK(rc);
    hakd_tensor **keep = bf16 ? got : ref;
    keep[0] = out.logits;
    for (int s = 0; s < 4; s++) {
      /* bf16: the stages come out as the chain left them (blocked), float32 on request */
      ASSERT_EQ_INT(out.stages[s]->dtype, bf16 ? HAKD_BF16_BLOCKED : HAKD_F32);
      keep[s + 1] = hakd_to_f32(c, out.stages[s]);
    }
  }
  for (int i = 0; i < 5; i++) {
    ASSERT_TRUE(got[i]->dtype == HAKD_F32 && hakd_same_shape(got[i], ref[i]));
    double err = test_max_rel_err(hakd_f32(got[i]), hakd_f32(ref[i]), hakd_numel(ref[i]), 1e-6);
    printf("%s bf16 %s: max rel err %.3g vs fp32\n", name, i ? "stage" : "logits", err);
    ASSERT_TRUE(err <= tol);
    ASSERT_TRUE(err > 0); /* the products really ran in bfloat16 */
  }
done:
  hakd_ctx_free(ctx[0]);
  hakd_ctx_free(ctx[1]);
  hakd_model_free(m);
}

/* Tolerance: each product rounds its operands to bfloat16 (relative 2^-9 each); through ~20-50
 * layers the observed error is ~1% of max|fp32| (0.5-1.1% on this machine); 3% catches a wrong
 * layout or post-op, which gives errors of order 1. */
TEST(deeplabv3_r50_d8_bf16_inference_matches_fp32) { check_bf16_inference("deeplabv3-r50-d8", 0.25f, 0.03); }
TEST(deeplabv3_r18_d8_bf16_inference_matches_fp32) { check_bf16_inference("deeplabv3-r18-d8", 0.25f, 0.03); }
/* width 0.3: 77-channel ASPP branches, off the blocks of 16 (their concatenation goes through
 * float32) */
TEST(deeplabv3_r18_d8_width_0_3_bf16_inference_matches_fp32) { check_bf16_inference("deeplabv3-r18-d8", 0.3f, 0.03); }
/* mmseg's ASPPHead (image pooling first) on the deep-stem ResNetV1c */
TEST(deeplabv3_r50_d8_mmseg_bf16_inference_matches_fp32) {
  check_bf16_inference("deeplabv3-r50-d8-mmseg", 0.25f, 0.03);
}
/* PSP's pooling bins take the blocked stage 4 back to float32 */
TEST(pspnet_r18_d8_bf16_inference_matches_fp32) { check_bf16_inference("pspnet-r18-d8", 0.25f, 0.03); }
/* depthwise convolutions, ReLU6 and inverted residuals in the blocked chain */
TEST(deeplabv3_mbv2_bf16_inference_matches_fp32) { check_bf16_inference("deeplabv3-mbv2", 0.25f, 0.03); }

/* ---- float32 training's blocked chain (HAKD_F32_BLOCKED, layer_dense_chain_begin) ---- */

/* One training step's loss, logits and parameter gradients (copied), with the chain on ("1") or
 * off ("0"); the aux head on, dropout off (its mask would differ). */
typedef struct {
  float *loss, *logits, **grads;
  int64_t n_logits, n_params;
} chain_step;

static void chain_step_free(chain_step *r) {
  for (int64_t i = 0; r->grads && i < r->n_params; i++) free(r->grads[i]);
  free(r->grads);
  free(r->loss);
  free(r->logits);
  memset(r, 0, sizeof *r);
}

static int chain_train_step(const char *model, float width, int size, int batch_stats, const char *chain,
                            chain_step *r) {
  memset(r, 0, sizeof *r);
  setenv("HAKD_F32_BLOCKED_TRAIN", chain, 1);
  hakd_model_options o = options(5, width);
  o.aux_head = 1;
  o.dropout = 0.0f;
  hakd_model *m = NULL;
  hakd_ctx *ctx = hakd_ctx_new();
  int rc = ctx ? hakd_model_create(model, &o, &m) : HAKD_ENOMEM;
  if (!rc) {
    hakd_ctx_set_training(ctx, batch_stats); /* gradients recorded either way */
    hakd_params *params = hakd_model_params(m);
    param_fill(params);
    int64_t xs[4] = {2, 3, size, size}, ls[3] = {2, size, size};
    hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 4, xs), *labels = hakd_tensor_new(ctx, HAKD_I32, 3, ls);
    if (x && labels) {
      for (int64_t i = 0; i < hakd_numel(x); i++) hakd_f32(x)[i] = (float)sin(0.37 * (double)i);
      for (int64_t i = 0; i < hakd_numel(labels); i++) hakd_i32(labels)[i] = (int32_t)((i * 7) % 5);
    }
    hakd_model_output out;
    rc = x && labels ? hakd_model_forward(m, ctx, x, &out) : HAKD_ENOMEM;
    if (!rc) {
      hakd_tensor *ce = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, out.logits, size, size, 0), labels, 255);
      hakd_tensor *aux = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, out.aux, size, size, 0), labels, 255);
      hakd_tensor *loss = hakd_add(ctx, ce, hakd_scale(ctx, aux, 0.4f));
      hakd_params_zero_grad(params);
      rc = loss ? hakd_backward(ctx, loss) : hakd_ctx_status(ctx);
      if (!rc) {
        r->loss = copy_floats(hakd_f32(loss), 1);
        r->n_logits = hakd_numel(out.logits);
        r->logits = copy_floats(hakd_f32(out.logits), r->n_logits);
        r->n_params = params->count;
        r->grads = calloc((size_t)params->count, sizeof *r->grads);
        for (int i = 0; r->grads && i < params->count; i++)
          if (params->items[i]->requires_grad)
            r->grads[i] = copy_floats(hakd_param_grad(params->items[i]), hakd_numel(params->items[i]));
      }
    }
  }
  unsetenv("HAKD_F32_BLOCKED_TRAIN");
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  return rc;
}

/* The same training step with float32 training's ResNet backbone on blocked activations and on
 * NCHW ones: the products are the same oneDNN kernels (the chain only skips the layout
 * conversions around them), BatchNorm sums in another order, so the results agree to float32
 * rounding through ~20-50 layers: 1e-5 loss, 5e-5 logits (1e-5 observed, 2e-5 on AVX2 kernels); 1e-3 per gradient tensor, the bound of
 * the PyTorch parity test above (observed up to 5e-4 on a BatchNorm weight of the stem, whose
 * per-channel sums over 800 positions cancel; most tensors ~1e-5). A wrong block, channel or
 * gradient gives errors of order 1. r18-d8 at widths 1/32 (2-16 channels: the blocks padded) and
 * 0.5 (whole blocks) with batch statistics; r50-d8 (1x1 bottleneck convolutions on the blocked
 * layout too) with BatchNorm's running statistics while gradients are recorded: with batch
 * statistics this r50 at 33-96 pixels is so ill-conditioned that two NCHW runs on different
 * convolution paths (HAKD_CONV=gemm vs auto) already differ by 20-47% in some weight gradients.
 * Odd input sizes. A bad switch value fails the step: the chain is what these models' training
 * takes. */
TEST(f32_blocked_chain_matches_nchw_training_step) {
  const struct {
    const char *model;
    float width;
    int size, batch_stats;
  } cases[] = {{"deeplabv3-r18-d8", 1.0f / 32.0f, 33, 1}, {"deeplabv3-r18-d8", 0.5f, 41, 1},
               {"deeplabv3-r50-d8", 0.25f, 33, 0}};
  for (size_t k = 0; k < sizeof cases / sizeof cases[0] && !test_failed(); k++) {
    chain_step on, off;
    ASSERT_OK(chain_train_step(cases[k].model, cases[k].width, cases[k].size, cases[k].batch_stats, "1", &on));
    ASSERT_OK(chain_train_step(cases[k].model, cases[k].width, cases[k].size, cases[k].batch_stats, "0", &off));
    double e_loss = test_max_rel_err(on.loss, off.loss, 1, 1e-6);
    double e_logits = test_max_rel_err(on.logits, off.logits, on.n_logits, 1e-6), e_grad = 0;
    hakd_model_options o = options(5, cases[k].width);
    o.aux_head = 1;
    hakd_model *m = NULL;
    ASSERT_OK(hakd_model_create(cases[k].model, &o, &m));
    hakd_params *params = hakd_model_params(m);
    const char *worst = "";
    for (int i = 0; i < params->count; i++) {
      if (!on.grads[i]) continue;
      double e = test_max_rel_err(on.grads[i], off.grads[i], hakd_numel(params->items[i]), 1e-6);
      if (e > e_grad) e_grad = e, worst = params->items[i]->name;
    }
    printf("%s width %g: chain vs NCHW rel err loss %.3g logits %.3g worst gradient %.3g (%s)\n", cases[k].model,
           (double)cases[k].width, e_loss, e_logits, e_grad, worst);
    if (!(e_loss <= 1e-5 && e_logits <= 5e-5 && e_grad <= 1e-3))
      test_fail(__FILE__, __LINE__, "%s width %g: chain vs NCHW rel err loss %.3g logits %.3g gradient %.3g (%s)",
                cases[k].model, (double)cases[k].width, e_loss, e_logits, e_grad, worst);
    hakd_model_free(m);
    chain_step_free(&on);
    chain_step_free(&off);
  }
  chain_step bad;
  ASSERT_TRUE(chain_train_step("deeplabv3-r18-d8", 0.25f, 33, 1, "yes", &bad) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "HAKD_F32_BLOCKED_TRAIN") != NULL);
  chain_step_free(&bad);
}
