/* Import of state_dicts (safetensors or PyTorch .pth, see hakd_weights_open) by name, and
 * export as safetensors. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"
#include "models/model_internal.h"

#define KEY_MAX 256

typedef struct {
  char target[KEY_MAX];
  const hakd_st_tensor *source;
  int part, parts; /* this target is slice `part` of `parts` equal slices of dim 0 (fused kv / qkv) */
  int used;
} load_entry;

void hakd_load_options_default(hakd_load_options *o) {
  memset(o, 0, sizeof *o);
  o->strict = 1;
}

static int starts_with(const char *s, const char *prefix) { return !strncmp(s, prefix, strlen(prefix)); }

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* key_map "FROM=TO" (or "TO" alone = prepend). */
static void apply_key_map(char out[KEY_MAX], const char *key, const char *key_map) {
  if (!key_map || !*key_map) {
    snprintf(out, KEY_MAX, "%s", key);
    return;
  }
  const char *eq = strchr(key_map, '=');
  if (!eq) {
    snprintf(out, KEY_MAX, "%s%s", key_map, key);
    return;
  }
  size_t from_len = (size_t)(eq - key_map);
  if (!strncmp(key, key_map, from_len))
    snprintf(out, KEY_MAX, "%s%s", eq + 1, key + from_len);
  else
    snprintf(out, KEY_MAX, "%s", key);
}

typedef struct {
  const char *from, *to;
} name_rule;

/* Official MiT release (NVlabs/SegFormer) -> Hugging Face names, inside a block. */
static const name_rule mit_block_rules[] = {
    {"norm1.", "layer_norm_1."},
    {"attn.q.", "attention.self.query."},
    {"attn.sr.", "attention.self.sr."},
    {"attn.norm.", "attention.self.layer_norm."},
    {"attn.proj.", "attention.output.dense."},
    {"norm2.", "layer_norm_2."},
    {"mlp.fc1.", "mlp.dense1."},
    {"mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."},
    {"mlp.fc2.", "mlp.dense2."},
};

/* mmsegmentation ConvModule heads -> torchvision FCNHead indices. */
static const name_rule mmseg_rules[] = {
    {"auxiliary_head.convs.0.conv.", "aux_classifier.0."},
    {"auxiliary_head.convs.0.bn.", "aux_classifier.1."},
    {"auxiliary_head.conv_seg.", "aux_classifier.4."},
    {"decode_head.convs.0.conv.", "classifier.0."},
    {"decode_head.convs.0.bn.", "classifier.1."},
    {"decode_head.conv_seg.", "classifier.4."},
};

/* mmsegmentation MixVisionTransformer -> Hugging Face names, inside a block. */
static const name_rule mmseg_mit_block_rules[] = {
    {"norm1.", "layer_norm_1."},
    {"attn.attn.out_proj.", "attention.output.dense."},
    {"attn.sr.", "attention.self.sr."},
    {"attn.norm.", "attention.self.layer_norm."},
    {"norm2.", "layer_norm_2."},
    {"ffn.layers.0.", "mlp.dense1."},
    {"ffn.layers.1.", "mlp.dwconv.dwconv."},
    {"ffn.layers.4.", "mlp.dense2."},
};

/* Maps an mmseg MiT key (backbone.layers.1.0.projection.weight, backbone.layers.0.1.2.attn.attn.
 * in_proj_weight, backbone.layers.3.2.weight); returns the number of targets (3 = the fused
 * in_proj split into query/key/value). */
static int map_mmseg_mit(const char *key, const char *bp, char out[3][KEY_MAX]) {
  int stage, block, consumed = 0;
  if (starts_with(key, "backbone.")) key += strlen("backbone.");
  if (sscanf(key, "layers.%d.1.%d.%n", &stage, &block, &consumed) == 2 && consumed > 0) {
    const char *rest = key + consumed;
    if (starts_with(rest, "attn.attn.in_proj_")) {
      const char *what = ends_with(rest, "weight") ? "weight" : "bias";
      const char *names[3] = {"query", "key", "value"};
      for (int i = 0; i < 3; i++)
        snprintf(out[i], KEY_MAX, "%s.block.%d.%d.attention.self.%s.%s", bp, stage, block, names[i], what);
      return 3;
    }
    for (size_t r = 0; r < sizeof mmseg_mit_block_rules / sizeof mmseg_mit_block_rules[0]; r++)
      if (starts_with(rest, mmseg_mit_block_rules[r].from)) {
        snprintf(out[0], KEY_MAX, "%s.block.%d.%d.%s%s", bp, stage, block, mmseg_mit_block_rules[r].to,
                 rest + strlen(mmseg_mit_block_rules[r].from));
        return 1;
      }
    return 0;
  }
  consumed = 0;
  if (sscanf(key, "layers.%d.0.projection.%n", &stage, &consumed) == 1 && consumed > 0) {
    snprintf(out[0], KEY_MAX, "%s.patch_embeddings.%d.proj.%s", bp, stage, key + consumed);
    return 1;
  }
  consumed = 0;
  if (sscanf(key, "layers.%d.0.norm.%n", &stage, &consumed) == 1 && consumed > 0) {
    snprintf(out[0], KEY_MAX, "%s.patch_embeddings.%d.layer_norm.%s", bp, stage, key + consumed);
    return 1;
  }
  consumed = 0;
  if (sscanf(key, "layers.%d.2.%n", &stage, &consumed) == 1 && consumed > 0) {
    snprintf(out[0], KEY_MAX, "%s.layer_norm.%d.%s", bp, stage, key + consumed);
    return 1;
  }
  return 0;
}

/* Maps an official-MiT key (patch_embed1.proj.weight, block2.0.attn.kv.bias, norm3.weight);
 * returns the number of targets written (0 = not such a key, 2 = kv split into key/value). */
static int map_official_mit(const char *key, const char *bp, char out[3][KEY_MAX]) {
  int stage, block, consumed = 0;
  if (sscanf(key, "patch_embed%d.%n", &stage, &consumed) == 1 && consumed > 0) {
    const char *rest = key + consumed;
    if (starts_with(rest, "norm.")) {
      snprintf(out[0], KEY_MAX, "%s.patch_embeddings.%d.layer_norm.%s", bp, stage - 1, rest + 5);
    } else {
      snprintf(out[0], KEY_MAX, "%s.patch_embeddings.%d.%s", bp, stage - 1, rest);
    }
    return 1;
  }
  consumed = 0;
  if (sscanf(key, "block%d.%d.%n", &stage, &block, &consumed) == 2 && consumed > 0) {
    const char *rest = key + consumed;
    if (starts_with(rest, "attn.kv.")) {
      snprintf(out[0], KEY_MAX, "%s.block.%d.%d.attention.self.key.%s", bp, stage - 1, block, rest + 8);
      snprintf(out[1], KEY_MAX, "%s.block.%d.%d.attention.self.value.%s", bp, stage - 1, block, rest + 8);
      return 2;
    }
    for (size_t r = 0; r < sizeof mit_block_rules / sizeof mit_block_rules[0]; r++)
      if (starts_with(rest, mit_block_rules[r].from)) {
        snprintf(out[0], KEY_MAX, "%s.block.%d.%d.%s%s", bp, stage - 1, block, mit_block_rules[r].to,
                 rest + strlen(mit_block_rules[r].from));
        return 1;
      }
    return 0;
  }
  consumed = 0;
  if (sscanf(key, "norm%d.%n", &stage, &consumed) == 1 && consumed > 0) {
    snprintf(out[0], KEY_MAX, "%s.layer_norm.%d.%s", bp, stage - 1, key + consumed);
    return 1;
  }
  return 0;
}

static int build_entries(hakd_model *m, const hakd_st_file *f, const hakd_load_options *o, load_entry **out,
                         int *count) {
  hakd_params *p = hakd_model_params(m);
  int n = hakd_st_count(f), k = 0;
  load_entry *e = calloc((size_t)(3 * n + 1), sizeof *e);
  if (!e) return hakd_error(HAKD_ENOMEM, "out of memory reading %s", hakd_st_path(f));
  for (int i = 0; i < n; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    char key[KEY_MAX], mapped[3][KEY_MAX];
    apply_key_map(key, t->name, o->key_map);
    /* DataParallel / DistributedDataParallel checkpoints prefix every key with `module.` */
    if (!hakd_params_find(p, key) && starts_with(key, "module.")) memmove(key, key + 7, strlen(key + 7) + 1);
    int targets = 0;
    if (!hakd_params_find(p, key)) {
      targets = map_official_mit(key, hakd_model_backbone_prefix(m), mapped);
      if (!targets) targets = map_mmseg_mit(key, hakd_model_backbone_prefix(m), mapped);
      for (size_t r = 0; !targets && r < sizeof mmseg_rules / sizeof mmseg_rules[0]; r++)
        if (starts_with(key, mmseg_rules[r].from)) {
          snprintf(mapped[0], KEY_MAX, "%s%s", mmseg_rules[r].to, key + strlen(mmseg_rules[r].from));
          targets = 1;
        }
    }
    if (!targets) {
      snprintf(e[k].target, KEY_MAX, "%s", key);
      e[k].source = t;
      e[k++].parts = 1;
    }
    for (int j = 0; j < targets; j++) {
      snprintf(e[k].target, KEY_MAX, "%s", mapped[j]);
      e[k].source = t;
      e[k].part = j;
      e[k++].parts = targets;
    }
  }
  *out = e;
  *count = k;
  return 0;
}

static int64_t st_numel(const hakd_st_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

static void shape_text(char *buf, size_t size, int ndim, const int64_t *shape) {
  size_t len = (size_t)snprintf(buf, size, "(");
  for (int i = 0; i < ndim && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)shape[i]);
  if (len < size) snprintf(buf + len, size - len, ")");
}

/* Source shape as the target sees it: one slice of a fused tensor; a 1x1 conv weight
 * (O, I, 1, 1) read as a linear weight (O, I) (mmseg's Mix-FFN). */
static int entry_matches(const load_entry *e, const hakd_tensor *t) {
  const hakd_st_tensor *s = e->source;
  if (ends_with(t->name, "num_batches_tracked")) return 1;
  int ndim = s->ndim;
  if (ndim == 4 && t->ndim == 2 && s->shape[2] == 1 && s->shape[3] == 1) ndim = 2;
  if (ndim != t->ndim) return 0;
  for (int d = 0; d < t->ndim; d++) {
    int64_t dim = s->shape[d];
    if (d == 0 && e->parts > 1) {
      if (dim % e->parts) return 0;
      dim /= e->parts;
    }
    if (dim != t->shape[d]) return 0;
  }
  return 1;
}

int hakd_model_load(hakd_model *m, const char *path, const hakd_load_options *opts, hakd_load_report *report) {
  hakd_load_options defaults;
  if (!opts) {
    hakd_load_options_default(&defaults);
    opts = &defaults;
  }
  hakd_load_report rep;
  memset(&rep, 0, sizeof rep);
  hakd_st_file *f = NULL;
  int rc = hakd_weights_open(path, &f);
  if (rc) return rc;
  load_entry *entries = NULL;
  int n_entries = 0;
  float **staged = NULL;
  hakd_params *p = hakd_model_params(m);
  const char *bp = hakd_model_backbone_prefix(m);
  size_t bp_len = strlen(bp);
  rc = build_entries(m, f, opts, &entries, &n_entries);
  if (rc) goto done;
  staged = calloc((size_t)p->count + 1, sizeof *staged);
  if (!staged) {
    rc = hakd_error(HAKD_ENOMEM, "out of memory loading %s", path);
    goto done;
  }
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    int in_backbone = !strncmp(t->name, bp, bp_len) && t->name[bp_len] == '.';
    if (opts->backbone_only && !in_backbone) continue;
    int is_counter = ends_with(t->name, "num_batches_tracked");
    if (!is_counter) rep.targets++;
    load_entry *e = NULL;
    for (int j = 0; j < n_entries && !e; j++)
      if (!entries[j].used && !strcmp(entries[j].target, t->name)) e = &entries[j];
    if (!e) {
      if (!is_counter) {
        if (!rep.missing) snprintf(rep.first_missing, sizeof rep.first_missing, "%s", t->name);
        rep.missing++;
      }
      continue;
    }
    e->used = 1;
    if (is_counter) {
      rep.ignored++;
      continue;
    }
    if (!entry_matches(e, t)) {
      char want[96], got[96];
      hakd_shape_str(t, want, sizeof want);
      shape_text(got, sizeof got, e->source->ndim, e->source->shape);
      if (!rep.mismatched)
        snprintf(rep.first_mismatched, sizeof rep.first_mismatched, "%s: file has %s%s, model needs %s", t->name, got,
                 e->parts > 1 ? " (a fused tensor, split)" : "", want);
      rep.mismatched++;
      continue;
    }
    int64_t n = hakd_numel(t), whole = st_numel(e->source);
    float *buf = malloc((size_t)whole * sizeof(float));
    if (!buf) {
      rc = hakd_error(HAKD_ENOMEM, "out of memory loading %s", path);
      goto done;
    }
    staged[i] = buf;
    rc = hakd_st_read_f32(f, e->source->name, buf, whole);
    if (rc) goto done;
    if (e->part > 0) memmove(buf, buf + (int64_t)e->part * n, (size_t)n * sizeof(float));
    for (int64_t j = 0; j < n; j++)
      if (!isfinite(buf[j])) {
        rc = hakd_error(HAKD_ENUMERIC, "%s: tensor '%s' has a non-finite value (%g at index %lld)", path,
                        e->source->name, (double)buf[j], (long long)j);
        goto done;
      }
    rep.loaded++;
  }
  for (int j = 0; j < n_entries; j++) {
    if (entries[j].used) continue;
    int in_backbone = !strncmp(entries[j].target, bp, bp_len);
    if (opts->backbone_only && !in_backbone) continue; /* classifier of an ImageNet checkpoint */
    if (ends_with(entries[j].target, "num_batches_tracked")) {
      rep.ignored++;
      continue;
    }
    /* A checkpoint trained with an auxiliary head (torchvision aux_classifier, mmseg
     * auxiliary_head) loads into a model built without one: the head is training-only. */
    if (!hakd_model_has_aux(m) &&
        (starts_with(entries[j].target, "aux_classifier.") || starts_with(entries[j].target, "auxiliary_head."))) {
      rep.unused_aux++;
      continue;
    }
    if (!rep.unexpected) snprintf(rep.first_unexpected, sizeof rep.first_unexpected, "%s", entries[j].source->name);
    rep.unexpected++;
  }
  if (rep.mismatched) {
    rc = hakd_error(HAKD_ESHAPE, "%s: %d tensor(s) of another shape, first %s", path, rep.mismatched,
                    rep.first_mismatched);
  } else if (rep.loaded * 2 < rep.targets) {
    rc = hakd_error(HAKD_ENOTFOUND,
                    "%s: only %d of %d tensors of %s match by name (first missing: '%s'); refusing the load "
                    "(wrong model, or a key prefix to map with --weights-prefix?)",
                    path, rep.loaded, rep.targets, hakd_model_name(m), rep.first_missing);
  } else if (opts->strict && rep.missing) {
    rc = hakd_error(HAKD_ENOTFOUND, "%s: %d tensor(s) of %s missing, first '%s' (strict load)", path, rep.missing,
                    hakd_model_name(m), rep.first_missing);
  } else if (opts->strict && rep.unexpected) {
    rc = hakd_error(HAKD_ENOTFOUND, "%s: %d unexpected tensor(s), first '%s' (strict load)", path, rep.unexpected,
                    rep.first_unexpected);
  }
  if (!rc)
    for (int i = 0; i < p->count; i++)
      if (staged[i]) {
        memcpy(p->items[i]->data, staged[i], (size_t)hakd_numel(p->items[i]) * sizeof(float));
        hakd_tensor_changed(p->items[i]); /* a frozen model reloaded: its derived forms are stale */
      }
done:
  if (staged)
    for (int i = 0; i < p->count; i++) free(staged[i]);
  free(staged);
  free(entries);
  hakd_st_close(f);
  if (report) *report = rep;
  return rc;
}

int hakd_params_save(const hakd_params *p, const char *path, const char *const *metadata) {
  hakd_st_writer *w = hakd_st_writer_new();
  if (!w) return hakd_error(HAKD_ENOMEM, "out of memory writing %s", path);
  int64_t *counters = calloc((size_t)p->count + 1, sizeof *counters);
  int rc = counters ? 0 : hakd_error(HAKD_ENOMEM, "out of memory writing %s", path);
  for (int i = 0; i < p->count && !rc; i++) {
    const hakd_tensor *t = p->items[i];
    if (ends_with(t->name, "num_batches_tracked")) {
      counters[i] = (int64_t)hakd_f32(t)[0];
      rc = hakd_st_writer_add(w, t->name, HAKD_ST_I64, 0, NULL, &counters[i]);
    } else {
      rc = hakd_st_writer_add(w, t->name, HAKD_ST_F32, t->ndim, t->shape, t->data);
    }
  }
  for (int i = 0; metadata && metadata[i] && metadata[i + 1] && !rc; i += 2)
    rc = hakd_st_writer_metadata(w, metadata[i], metadata[i + 1]);
  if (!rc) rc = hakd_st_writer_write(w, path);
  hakd_st_writer_free(w);
  free(counters);
  return rc;
}
