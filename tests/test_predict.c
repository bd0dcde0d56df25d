/* `hakd predict` end to end: weights saved under the PyTorch state_dict names, a .npy input,
 * logits compared with PyTorch's (the model fixtures, tools/gen_models_*.py); and refused
 * checkpoints (wrong shape, missing key, truncated file) naming the key or the file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "param_fill.h"

static const char *tmp(const char *name) {
  static char paths[8][700];
  static int next;
  char *p = paths[next++ % 8];
  snprintf(p, 700, "%s/%s", test_tmpdir(), name);
  return p;
}

/* Runs the CLI; returns its exit status and keeps stderr in *err (caller frees). */
static int run_cli(const char *args, char **err) {
  const char *cli = getenv("HAKD_CLI");
  char cmd[4096];
  const char *err_path = tmp("stderr.txt");
  snprintf(cmd, sizeof cmd, "%s %s >/dev/null 2>%s", cli ? cli : "hakd", args, err_path);
  int rc = system(cmd);
  FILE *f = fopen(err_path, "r");
  *err = calloc(1, 8192);
  if (f) {
    size_t n = fread(*err, 1, 8191, f);
    (*err)[n] = '\0';
    fclose(f);
  }
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128;
}

/* Saves param_fill weights of `model` (default options but K) and the fixture input as .npy. */
static int prepare(const char *model, int K, const char *fixture, const char *weights, const char *npy,
                   float **want, int64_t *want_n) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = K;
  hakd_model *m;
  int rc = hakd_model_create(model, &o, &m);
  if (rc) return rc;
  param_fill(hakd_model_params(m));
  rc = hakd_params_save(hakd_model_params(m), weights, NULL);
  hakd_model_free(m);
  if (rc) return rc;
  hakd_st_file *f;
  if ((rc = hakd_st_open(test_fixture_path(fixture), &f))) return rc;
  const hakd_st_tensor *in = hakd_st_find(f, "input"), *lg = hakd_st_find(f, "logits");
  int64_t n = 1, nl = 1;
  for (int i = 0; i < in->ndim; i++) n *= in->shape[i];
  for (int i = 0; i < lg->ndim; i++) nl *= lg->shape[i];
  float *x = malloc((size_t)n * sizeof *x);
  *want = malloc((size_t)nl * sizeof **want);
  *want_n = nl;
  if (in->dtype == HAKD_ST_U8) {
    /* the CNN fixtures store the image as u8; the network input is (u8 - 128) / 64 */
    int64_t *raw = malloc((size_t)n * sizeof *raw);
    rc = hakd_st_read_i64(f, "input", raw, n);
    for (int64_t i = 0; i < n && !rc; i++) x[i] = (float)(raw[i] - 128) / 64.0f;
    free(raw);
  } else {
    rc = hakd_st_read_f32(f, "input", x, n);
  }
  if (!rc) rc = hakd_st_read_f32(f, "logits", *want, nl);
  if (!rc) rc = hakd_npy_write(npy, HAKD_NPY_F32, in->ndim, in->shape, x);
  free(x);
  hakd_st_close(f);
  return rc;
}

static void predict_matches(const char *model, int K, const char *fixture) {
  const char *weights = tmp("w.safetensors"), *npy = tmp("in.npy"), *out = tmp("logits.npy"), *mask = tmp("mask.png"),
             *overlay = tmp("overlay.png");
  float *want;
  int64_t n;
  ASSERT_OK(prepare(model, K, fixture, weights, npy, &want, &n));
  char args[3000], *err;
  snprintf(args, sizeof args,
           "predict --model %s --num-classes %d --weights %s --input %s --save-logits %s --save-mask %s --overlay %s",
           model, K, weights, npy, out, mask, overlay);
  int rc = run_cli(args, &err);
  if (rc) test_fail(__FILE__, __LINE__, "hakd predict exited %d: %s", rc, err);
  free(err);
  ASSERT_EQ_INT(rc, 0);
  hakd_npy got;
  ASSERT_OK(hakd_npy_read(out, &got));
  ASSERT_EQ_INT(hakd_npy_numel(&got), n);
  /* PyTorch vs hakd on the same weights and input: max |diff| / max |ref| <= 1e-4 (issue 3). */
  ASSERT_ALLCLOSE((const float *)got.data, want, n, 1e-4);
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(mask, &w, &h, &labels));
  for (int64_t i = 0; i < (int64_t)w * h; i++) ASSERT_TRUE(labels[i] >= 0 && labels[i] < K);
  free(labels);
  struct stat sb;
  ASSERT_TRUE(stat(overlay, &sb) == 0);
  hakd_npy_free(&got);
  free(want);
}

TEST(predict_deeplabv3_r50_matches_torchvision) { predict_matches("deeplabv3-r50-d8", 19, "models/deeplabv3-r50-d8.safetensors"); }
TEST(predict_segformer_b0_matches_hf) { predict_matches("segformer-b0", 5, "models/segformer-b0.safetensors"); }

TEST(bad_checkpoints_are_refused_naming_key_or_file) {
  const char *weights = tmp("r18.safetensors"), *npy = tmp("x.npy");
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 0.25f;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  ASSERT_OK(hakd_params_save(hakd_model_params(m), weights, NULL));
  float x[3 * 33 * 35] = {0};
  ASSERT_OK(hakd_npy_write(npy, HAKD_NPY_F32, 4, (int64_t[]){1, 3, 33, 35}, x));
  char args[2000], *err;
  /* wrong shape: the file has 5 classes, the model 7 */
  snprintf(args, sizeof args, "predict --model deeplabv3-r18-d8 --width 0.25 --num-classes 7 --weights %s --input %s",
           weights, npy);
  ASSERT_TRUE(run_cli(args, &err) != 0);
  if (!strstr(err, "classifier.4.weight")) test_fail(__FILE__, __LINE__, "message does not name the key: %s", err);
  free(err);
  /* missing key: drop one tensor */
  hakd_params *p = hakd_model_params(m);
  hakd_st_writer *w = hakd_st_writer_new();
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (!strcmp(t->name, "backbone.layer2.0.conv1.weight") || strstr(t->name, "num_batches_tracked")) continue;
    ASSERT_OK(hakd_st_writer_add(w, t->name, HAKD_ST_F32, t->ndim, t->shape, t->data));
  }
  const char *missing = tmp("missing.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, missing));
  hakd_st_writer_free(w);
  snprintf(args, sizeof args, "predict --model deeplabv3-r18-d8 --width 0.25 --num-classes 5 --weights %s --input %s",
           missing, npy);
  ASSERT_TRUE(run_cli(args, &err) != 0);
  if (!strstr(err, "backbone.layer2.0.conv1.weight")) test_fail(__FILE__, __LINE__, "message does not name the key: %s", err);
  free(err);
  /* truncated file */
  struct stat sb;
  ASSERT_TRUE(stat(weights, &sb) == 0);
  ASSERT_TRUE(truncate(weights, sb.st_size / 2) == 0);
  snprintf(args, sizeof args, "predict --model deeplabv3-r18-d8 --width 0.25 --num-classes 5 --weights %s --input %s",
           weights, npy);
  ASSERT_TRUE(run_cli(args, &err) != 0);
  if (!strstr(err, "r18.safetensors")) test_fail(__FILE__, __LINE__, "message does not name the file: %s", err);
  free(err);
  /* NaN in a weight */
  hakd_f32(p->items[0])[3] = NAN;
  const char *nan_path = tmp("nan.safetensors");
  ASSERT_OK(hakd_params_save(p, nan_path, NULL));
  snprintf(args, sizeof args, "predict --model deeplabv3-r18-d8 --width 0.25 --num-classes 5 --weights %s --input %s",
           nan_path, npy);
  ASSERT_TRUE(run_cli(args, &err) != 0);
  if (!strstr(err, "non-finite") || !strstr(err, p->items[0]->name))
    test_fail(__FILE__, __LINE__, "message does not name the NaN tensor: %s", err);
  free(err);
  hakd_model_free(m);
}

/* Loads `path` backbone-only into dst (no missing, no unexpected key) and counts the encoder
 * tensors equal to the source model's segformer.encoder.* tensors; -1 on any failure. */
static int encoder_loaded_exactly(hakd_model *dst, const char *path, hakd_params *src) {
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  lo.backbone_only = 1;
  hakd_load_report rep;
  int rc = hakd_model_load(dst, path, &lo, &rep);
  if (rc || rep.missing || rep.unexpected) {
    test_fail(__FILE__, __LINE__, "%s: rc %d, %d missing, %d unexpected: %s", path, rc, rep.missing, rep.unexpected,
              hakd_error_message());
    return -1;
  }
  const char *prefix = hakd_model_backbone_prefix(dst);
  size_t n = strlen(prefix);
  hakd_params *q = hakd_model_params(dst);
  int compared = 0;
  for (int i = 0; i < q->count; i++) {
    hakd_tensor *t = q->items[i];
    if (strncmp(t->name, prefix, n) || t->name[n] != '.') continue;
    char src_name[200];
    snprintf(src_name, sizeof src_name, "segformer.encoder.%s", t->name + n + 1);
    hakd_tensor *s = hakd_params_find(src, src_name);
    if (!s || memcmp(s->data, t->data, (size_t)hakd_numel(t) * sizeof(float))) {
      test_fail(__FILE__, __LINE__, "%s differs after importing %s", t->name, path);
      return -1;
    }
    compared++;
  }
  return compared;
}

/* Weight import: key maps, backbone-only loading, official MiT names with the fused kv. */
TEST(import_key_maps_and_official_mit_names) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 3;
  o.width = 0.25f;
  hakd_model *src, *dst;
  ASSERT_OK(hakd_model_create("segformer-b0", &o, &src));
  ASSERT_OK(hakd_model_create("deeplabv3-mit-b0", &o, &dst));
  param_fill(hakd_model_params(src));
  /* Write the encoder with official MiT names (kv fused), as the NVlabs release does. */
  hakd_params *p = hakd_model_params(src);
  hakd_st_writer *w = hakd_st_writer_new();
  char names[512][160];
  float *fused[64];
  int n_names = 0, n_fused = 0;
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    int s, b, c = 0;
    const char *name = t->name + strlen("segformer.encoder.");
    if (strncmp(t->name, "segformer.encoder.", 18)) continue;
    char *out = names[n_names++];
    if (sscanf(name, "patch_embeddings.%d.%n", &s, &c) == 1 && c) {
      const char *rest = name + c;
      snprintf(out, 160, "patch_embed%d.%s", s + 1, !strncmp(rest, "layer_norm.", 11) ? "norm." : "");
      strcat(out, !strncmp(rest, "layer_norm.", 11) ? rest + 11 : rest);
    } else if (sscanf(name, "layer_norm.%d.%n", &s, &c) == 1 && c) {
      snprintf(out, 160, "norm%d.%s", s + 1, name + c);
    } else if (sscanf(name, "block.%d.%d.%n", &s, &b, &c) == 2 && c) {
      const char *rest = name + c;
      const char *map[][2] = {{"layer_norm_1.", "norm1."}, {"attention.self.query.", "attn.q."},
                              {"attention.self.sr.", "attn.sr."}, {"attention.self.layer_norm.", "attn.norm."},
                              {"attention.output.dense.", "attn.proj."}, {"layer_norm_2.", "norm2."},
                              {"mlp.dense1.", "mlp.fc1."}, {"mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."},
                              {"mlp.dense2.", "mlp.fc2."}};
      if (!strncmp(rest, "attention.self.key.", 19)) {
        /* key and value become one kv tensor (rows: key then value) */
        char vname[200];
        snprintf(vname, sizeof vname, "segformer.encoder.block.%d.%d.attention.self.value.%s", s, b, rest + 19);
        hakd_tensor *v = hakd_params_find(p, vname);
        int64_t nk = hakd_numel(t);
        float *kv = malloc((size_t)nk * 2 * sizeof(float));
        memcpy(kv, t->data, (size_t)nk * sizeof(float));
        memcpy(kv + nk, v->data, (size_t)nk * sizeof(float));
        fused[n_fused++] = kv;
        int64_t shape[2] = {t->shape[0] * 2, t->ndim > 1 ? t->shape[1] : 0};
        snprintf(out, 160, "block%d.%d.attn.kv.%s", s + 1, b, rest + 19);
        ASSERT_OK(hakd_st_writer_add(w, out, HAKD_ST_F32, t->ndim, shape, kv));
        continue;
      }
      if (!strncmp(rest, "attention.self.value.", 21)) {
        n_names--;
        continue;
      }
      out[0] = '\0';
      for (size_t r = 0; r < sizeof map / sizeof map[0]; r++)
        if (!strncmp(rest, map[r][0], strlen(map[r][0])))
          snprintf(out, 160, "block%d.%d.%s%s", s + 1, b, map[r][1], rest + strlen(map[r][0]));
      ASSERT_TRUE(out[0] != '\0');
    } else {
      test_fail(__FILE__, __LINE__, "unexpected name %s", t->name);
      return;
    }
    ASSERT_OK(hakd_st_writer_add(w, out, HAKD_ST_F32, t->ndim, t->shape, t->data));
  }
  const char *path = tmp("mit_official.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_writer_free(w);
  for (int i = 0; i < n_fused; i++) free(fused[i]);
  /* Backbone-only load into deeplabv3-mit-b0: every encoder tensor equals the source's. */
  ASSERT_TRUE(encoder_loaded_exactly(dst, path, p) > 50);
  /* A full strict load of that file into segformer-b0 misses the decode head: refused. */
  ASSERT_TRUE(hakd_model_load(src, path, NULL, NULL) != 0);
  /* Key map: HF encoder keys with a prefix rewrite into the deeplabv3-mit backbone. */
  const char *hf = tmp("hf.safetensors");
  ASSERT_OK(hakd_params_save(p, hf, NULL));
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  hakd_load_report rep;
  lo.backbone_only = 1;
  lo.key_map = "segformer.encoder.=backbone.";
  ASSERT_OK(hakd_model_load(dst, hf, &lo, &rep));
  ASSERT_EQ_INT(rep.missing, 0);
  /* A file that matches almost nothing is refused. */
  lo.key_map = NULL;
  lo.backbone_only = 0;
  lo.strict = 0;
  ASSERT_EQ_INT(hakd_model_load(dst, hf, &lo, &rep), HAKD_ENOTFOUND);
  ASSERT_TRUE(strstr(hakd_error_message(), "refusing") != NULL);
  hakd_model_free(src);
  hakd_model_free(dst);
}

/* hakd info: SegFormer-B0 with 150 classes at 512x512 is 3.75M parameters and 8.39G multiply-adds,
 * the numbers of the SegFormer paper (3.8M, 8.4G) and of mmcv's counter. */
TEST(info_reports_segformer_b0_size) {
  const char *cli = getenv("HAKD_CLI");
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "%s info --model segformer-b0 --size 512x512 --num-classes 150", cli ? cli : "hakd");
  FILE *p = popen(cmd, "r");
  ASSERT_TRUE(p != NULL);
  char out[4096];
  size_t n = fread(out, 1, sizeof out - 1, p);
  out[n] = '\0';
  ASSERT_EQ_INT(pclose(p), 0);
  if (!strstr(out, "(3752694)") || !strstr(out, "8.388G")) test_fail(__FILE__, __LINE__, "unexpected info output:\n%s", out);
}

/* mmsegmentation's MiT names (backbone.layers.<stage>.{0 patch embed, 1 blocks, 2 norm}, a fused
 * attn.attn.in_proj (q, k, v rows), 1x1-conv Mix-FFN weights) load into the HF-named encoder. */
TEST(import_mmseg_mit_names) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 3;
  o.width = 0.25f;
  hakd_model *src, *dst;
  ASSERT_OK(hakd_model_create("segformer-b0", &o, &src));
  ASSERT_OK(hakd_model_create("segformer-b0", &o, &dst));
  param_fill(hakd_model_params(src));
  hakd_params *p = hakd_model_params(src);
  hakd_st_writer *w = hakd_st_writer_new();
  float *owned[64];
  int n_owned = 0;
  char names[600][200];
  int n_names = 0;
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    const char *name = t->name;
    if (strncmp(name, "segformer.encoder.", 18)) continue;
    name += 18;
    char *out = names[n_names++];
    int s, b, c = 0;
    int64_t shape[4] = {t->shape[0], t->ndim > 1 ? t->shape[1] : 0, 1, 1};
    int ndim = t->ndim;
    const void *data = t->data;
    if (sscanf(name, "patch_embeddings.%d.%n", &s, &c) == 1 && c) {
      const char *rest = name + c;
      if (!strncmp(rest, "proj.", 5))
        snprintf(out, 200, "backbone.layers.%d.0.projection.%s", s, rest + 5);
      else
        snprintf(out, 200, "backbone.layers.%d.0.norm.%s", s, rest + 11);
    } else if (sscanf(name, "layer_norm.%d.%n", &s, &c) == 1 && c) {
      snprintf(out, 200, "backbone.layers.%d.2.%s", s, name + c);
    } else if (sscanf(name, "block.%d.%d.%n", &s, &b, &c) == 2 && c) {
      const char *rest = name + c;
      if (!strncmp(rest, "attention.self.key.", 19) || !strncmp(rest, "attention.self.value.", 21)) {
        n_names--;
        continue;
      }
      if (!strncmp(rest, "attention.self.query.", 21)) {
        const char *what = rest + 21;
        char kname[200], vname[200];
        snprintf(kname, sizeof kname, "segformer.encoder.block.%d.%d.attention.self.key.%s", s, b, what);
        snprintf(vname, sizeof vname, "segformer.encoder.block.%d.%d.attention.self.value.%s", s, b, what);
        hakd_tensor *k = hakd_params_find(p, kname), *v = hakd_params_find(p, vname);
        ASSERT_TRUE(k && v);
        int64_t nq = hakd_numel(t);
        float *qkv = malloc((size_t)nq * 3 * sizeof(float));
        memcpy(qkv, t->data, (size_t)nq * sizeof(float));
        memcpy(qkv + nq, k->data, (size_t)nq * sizeof(float));
        memcpy(qkv + 2 * nq, v->data, (size_t)nq * sizeof(float));
        owned[n_owned++] = qkv;
        shape[0] *= 3;
        data = qkv;
        snprintf(out, 200, "backbone.layers.%d.1.%d.attn.attn.in_proj_%s", s, b, what);
      } else {
        const char *map[][2] = {{"layer_norm_1.", "norm1."}, {"attention.output.dense.", "attn.attn.out_proj."},
                                {"attention.self.sr.", "attn.sr."}, {"attention.self.layer_norm.", "attn.norm."},
                                {"layer_norm_2.", "norm2."}, {"mlp.dense1.", "ffn.layers.0."},
                                {"mlp.dwconv.dwconv.", "ffn.layers.1."}, {"mlp.dense2.", "ffn.layers.4."}};
        out[0] = '\0';
        for (size_t r = 0; r < sizeof map / sizeof map[0]; r++)
          if (!strncmp(rest, map[r][0], strlen(map[r][0])))
            snprintf(out, 200, "backbone.layers.%d.1.%d.%s%s", s, b, map[r][1], rest + strlen(map[r][0]));
        ASSERT_TRUE(out[0] != '\0');
        if (!strncmp(rest, "mlp.dense", 9) && t->ndim == 2) ndim = 4; /* mmseg's FFN is 1x1 convs */
      }
    } else {
      test_fail(__FILE__, __LINE__, "unexpected name %s", t->name);
      return;
    }
    ASSERT_OK(hakd_st_writer_add(w, out, HAKD_ST_F32, ndim, data == t->data && ndim == t->ndim ? t->shape : shape, data));
  }
  const char *path = tmp("mmseg_mit.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_writer_free(w);
  for (int i = 0; i < n_owned; i++) free(owned[i]);
  ASSERT_TRUE(encoder_loaded_exactly(dst, path, p) > 50);
  hakd_model_free(src);
  hakd_model_free(dst);
}
