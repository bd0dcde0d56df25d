/* The model a weights file describes: the name and options hakd writes into a file's metadata
 * (hakd_model_save), read back and combined with what a caller gives (include/hakd/model.h).
 * One table of keys serves the writer and the reader, so the two cannot drift apart. Without
 * metadata, the class count and width are inferred from tensor shapes; the strict load that
 * follows checks every tensor, so an inference never yields a silently wrong model. */
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"
#include "models/model_internal.h"

typedef enum { VALUE_INT, VALUE_FLOAT, VALUE_BOOL, VALUE_RATES } value_kind;

typedef struct {
  const char *key;
  unsigned bit;
  value_kind kind;
  double min, max;        /* VALUE_INT / VALUE_FLOAT; min_open: min itself excluded */
  int min_open;
  size_t offset;          /* in hakd_model_options */
} meta_key;

#define OPT(field) offsetof(hakd_model_options, field)

static const meta_key keys[] = {
    {"num_classes", HAKD_META_NUM_CLASSES, VALUE_INT, 1, 4096, 0, OPT(num_classes)},
    {"width", HAKD_META_WIDTH, VALUE_FLOAT, 0, 4, 1, OPT(width)},
    {"aspp_dilations", HAKD_META_ASPP, VALUE_RATES, 0, 0, 0, OPT(aspp_dilations)},
    {"deep_stem", HAKD_META_DEEP_STEM, VALUE_BOOL, 0, 1, 0, OPT(deep_stem)},
    {"aux_head", HAKD_META_AUX_HEAD, VALUE_BOOL, 0, 1, 0, OPT(aux_head)},
    {"bn_momentum", HAKD_META_BN_MOMENTUM, VALUE_FLOAT, 0, 1, 0, OPT(bn_momentum)},
    {"dropout", HAKD_META_DROPOUT, VALUE_FLOAT, -1, 1, 0, OPT(dropout)}, /* negative: the model's default */
    {"drop_path_rate", HAKD_META_DROP_PATH, VALUE_FLOAT, 0, 1, 0, OPT(drop_path_rate)},
};
#define N_KEYS (sizeof keys / sizeof keys[0])

static void *field(hakd_model_options *o, const meta_key *k) { return (char *)o + k->offset; }
static const void *cfield(const hakd_model_options *o, const meta_key *k) { return (const char *)o + k->offset; }

static void format_value(const meta_key *k, const hakd_model_options *o, char *buf, size_t size) {
  const void *v = cfield(o, k);
  switch (k->kind) {
    case VALUE_INT:
    case VALUE_BOOL: snprintf(buf, size, "%d", *(const int *)v); break;
    case VALUE_FLOAT: snprintf(buf, size, "%.9g", (double)*(const float *)v); break; /* 9 digits: the float exactly */
    case VALUE_RATES: {
      const int *r = v;
      snprintf(buf, size, "%d,%d,%d", r[0], r[1], r[2]);
      break;
    }
  }
}

static int parse_value(const char *path, const meta_key *k, const char *text, hakd_model_options *o) {
  void *v = field(o, k);
  char *end;
  if (k->kind == VALUE_RATES) {
    if (hakd_aspp_dilations_parse(text, v)) {
      hakd_error_prefix("%s: metadata", path);
      return HAKD_EFORMAT;
    }
    return 0;
  }
  double d = strtod(text, &end);
  int ok = end != text && !*end && isfinite(d) && (k->min_open ? d > k->min : d >= k->min) && d <= k->max;
  if (ok && k->kind != VALUE_FLOAT) ok = d == floor(d) && strspn(text, "-0123456789") == strlen(text);
  if (!ok) {
    const char *what = k->kind == VALUE_BOOL ? "0 or 1" : k->kind == VALUE_INT ? "an integer" : "a number";
    return hakd_error(HAKD_EFORMAT, "%s: metadata '%s' = '%s': expected %s in %s%g, %g]", path, k->key, text, what,
                      k->min_open ? "(" : "[", k->min, k->max);
  }
  if (k->kind == VALUE_FLOAT)
    *(float *)v = (float)d;
  else
    *(int *)v = (int)d;
  return 0;
}

static int meta_from_file(const hakd_st_file *f, const char *path, hakd_model_meta *out) {
  memset(out, 0, sizeof *out);
  hakd_model_options_default(&out->opts);
  const char *model = hakd_st_metadata(f, "model");
  if (model) {
    if (!*model || strlen(model) >= sizeof out->model)
      return hakd_error(HAKD_EFORMAT, "%s: metadata 'model' = '%.80s' is not a model name", path, model);
    snprintf(out->model, sizeof out->model, "%s", model);
    out->have |= HAKD_META_MODEL;
  }
  for (size_t i = 0; i < N_KEYS; i++) {
    const char *text = hakd_st_metadata(f, keys[i].key);
    if (!text) continue;
    int rc = parse_value(path, &keys[i], text, &out->opts);
    if (rc) return rc;
    out->have |= keys[i].bit;
  }
  return 0;
}

int hakd_model_meta_read(const char *path, hakd_model_meta *out) {
  hakd_st_file *f = NULL;
  int rc = hakd_weights_open(path, &f);
  if (!rc) rc = meta_from_file(f, path, out);
  hakd_st_close(f);
  return rc;
}

void hakd_model_metadata_of(const hakd_model *m, hakd_model_metadata *out) {
  hakd_model_options o = *model_options(m);
  model_options_effective(hakd_model_name(m), &o); /* cannot fail: m exists */
  int n = 0, t = 0;
  snprintf(out->name, sizeof out->name, "%s", hakd_model_name(m));
  out->pairs[n++] = "model";
  out->pairs[n++] = out->name;
  for (size_t i = 0; i < N_KEYS; i++) {
    if (keys[i].bit == HAKD_META_ASPP && o.aspp_dilations[0] == 0) continue; /* no ASPP head */
    format_value(&keys[i], &o, out->text[t], sizeof out->text[t]);
    out->pairs[n++] = keys[i].key;
    out->pairs[n++] = out->text[t++];
  }
  out->pairs[n] = NULL;
}

int hakd_model_save(hakd_model *m, const char *path, const char *const *metadata) {
  hakd_model_metadata described;
  hakd_model_metadata_of(m, &described);
  const char *pairs[sizeof described.pairs / sizeof described.pairs[0] + 32];
  int n = 0;
  for (int i = 0; described.pairs[i]; i++) pairs[n++] = described.pairs[i];
  for (int i = 0; metadata && metadata[i] && metadata[i + 1] && n + 2 < (int)(sizeof pairs / sizeof pairs[0]); i += 2) {
    pairs[n++] = metadata[i];
    pairs[n++] = metadata[i + 1];
  }
  pairs[n] = NULL;
  return hakd_params_save(hakd_model_params(m), path, pairs);
}

/* A tensor of the file under the model's name, or under DataParallel's `module.` prefix. */
static const hakd_st_tensor *find_tensor(const hakd_st_file *f, const char *name) {
  const hakd_st_tensor *t = hakd_st_find(f, name);
  if (t) return t;
  char prefixed[300];
  snprintf(prefixed, sizeof prefixed, "module.%s", name);
  return hakd_st_find(f, prefixed);
}

/* The classifier's weight: the only parameter whose shape follows num_classes. Found by
 * comparing two tiny models of the family with 1 and 2 classes (names do not depend on the
 * width), so no family's naming is written down here. */
static int classifier_name(const char *model_name, char *out, size_t size) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.width = 0.0625f;
  o.num_classes = 1;
  hakd_model *one = NULL, *two = NULL;
  int rc = hakd_model_create(model_name, &o, &one);
  o.num_classes = 2;
  if (!rc) rc = hakd_model_create(model_name, &o, &two);
  int found = 0;
  if (!rc) {
    const hakd_params *a = hakd_model_params(one), *b = hakd_model_params(two);
    for (int i = 0; i < a->count && i < b->count && !found; i++)
      if (a->items[i]->ndim == 4 && a->items[i]->shape[0] == 1 && b->items[i]->shape[0] == 2) {
        snprintf(out, size, "%s", a->items[i]->name);
        found = 1;
      }
  }
  hakd_model_free(one);
  hakd_model_free(two);
  if (rc) return rc;
  return found ? 0 : hakd_error(HAKD_EINVAL, "%s: no classifier weight found", model_name);
}

/* The width of a file without it in its metadata: the model at width 1 and the file share the
 * first tensor by name (the backbone's stem); its output channels over the reference count give
 * the multiplier. 0 when the file has no such tensor or it agrees with width 1. */
static float infer_width(const hakd_st_file *f, const char *name, const hakd_model_options *given) {
  hakd_model_options o = *given;
  o.width = 1.0f;
  if (o.num_classes < 1) o.num_classes = 1; /* the classifier is not compared */
  hakd_model *ref = NULL;
  if (hakd_model_create(name, &o, &ref)) return 0;
  float width = 0;
  const hakd_params *p = hakd_model_params(ref);
  for (int i = 0; i < p->count; i++) {
    const hakd_tensor *mine = p->items[i];
    const hakd_st_tensor *theirs = find_tensor(f, mine->name);
    if (!theirs || mine->ndim < 2 || theirs->ndim != mine->ndim) continue;
    if (theirs->shape[0] != mine->shape[0]) width = (float)((double)theirs->shape[0] / (double)mine->shape[0]);
    break;
  }
  hakd_model_free(ref);
  return width > 0 && width <= 4 ? width : 0;
}

static void rates_text(const int *r, char *buf, size_t size) { snprintf(buf, size, "%d,%d,%d", r[0], r[1], r[2]); }

static int contradiction(const char *path, const char *option, const char *file_value, const char *given_value) {
  return hakd_error(HAKD_EINVAL,
                    "%s: %s %s was given, but the file's metadata says %s %s (it was written by that model): drop "
                    "the option to use the file's, or give weights of that %s",
                    path, option, given_value, option, file_value, option);
}

int hakd_model_options_for_file(const char *path, const char *name, hakd_model_options *opts, char *name_out,
                                size_t name_size) {
  if (!path || !opts || !name_out) return hakd_error(HAKD_EINVAL, "hakd_model_options_for_file: NULL argument");
  hakd_st_file *f = NULL;
  int rc = hakd_weights_open(path, &f);
  hakd_model_meta meta;
  if (!rc) rc = meta_from_file(f, path, &meta);
  if (rc) {
    hakd_st_close(f);
    return rc;
  }
  /* the model: an unknown name is that, before it is a contradiction */
  if (name && !model_spec_find(name))
    rc = hakd_error(HAKD_ENOTFOUND, "unknown model '%s' (see `hakd models`)", name);
  else if (name && (meta.have & HAKD_META_MODEL) && strcmp(name, meta.model))
    rc = contradiction(path, "model", meta.model, name);
  else if (!name && !(meta.have & HAKD_META_MODEL))
    rc = hakd_error(HAKD_EINVAL, "%s: no model name in the file's metadata (a file hakd did not write): pass the model (--model NAME)",
                    path);
  const char *model = name ? name : meta.model;
  /* given values against the file's, compared as the model would be built (12,24,36 = default rates) */
  hakd_model_options file = meta.opts, mine = *opts;
  if (!rc && !model_spec_find(model)) {
    rc = hakd_error(HAKD_ENOTFOUND, "unknown model '%s' (see `hakd models`)", model);
    if (!name) hakd_error_prefix("%s: metadata", path);
  }
  if (!rc) model_options_effective(model, &file);
  if (!rc && mine.aspp_dilations[0]) model_options_effective(model, &mine);
  char a[40], b[40];
  if (!rc && mine.num_classes > 0 && (meta.have & HAKD_META_NUM_CLASSES) && mine.num_classes != file.num_classes) {
    snprintf(a, sizeof a, "%d", file.num_classes), snprintf(b, sizeof b, "%d", mine.num_classes);
    rc = contradiction(path, "num_classes", a, b);
  }
  if (!rc && mine.width > 0 && (meta.have & HAKD_META_WIDTH) && mine.width != file.width) {
    snprintf(a, sizeof a, "%g", (double)file.width), snprintf(b, sizeof b, "%g", (double)mine.width);
    rc = contradiction(path, "width", a, b);
  }
  if (!rc && mine.aspp_dilations[0] && (meta.have & HAKD_META_ASPP) &&
      memcmp(mine.aspp_dilations, file.aspp_dilations, sizeof file.aspp_dilations)) {
    rates_text(file.aspp_dilations, a, sizeof a), rates_text(mine.aspp_dilations, b, sizeof b);
    rc = contradiction(path, "aspp_dilations", a, b);
  }
  if (!rc && opts->deep_stem && (meta.have & HAKD_META_DEEP_STEM) && !file.deep_stem) {
    hakd_model_options stem = *opts;
    model_options_effective(model, &stem);
    if (stem.deep_stem) rc = contradiction(path, "deep_stem", "0", "1");
  }
  /* what was not given: the file's metadata, else inferred from shapes, else the defaults */
  if (!rc) {
    if (!opts->aspp_dilations[0] && (meta.have & HAKD_META_ASPP))
      memcpy(opts->aspp_dilations, meta.opts.aspp_dilations, sizeof opts->aspp_dilations);
    if (opts->aux_head < 0 && (meta.have & HAKD_META_AUX_HEAD)) opts->aux_head = meta.opts.aux_head;
    if (!opts->deep_stem && (meta.have & HAKD_META_DEEP_STEM)) opts->deep_stem = meta.opts.deep_stem;
    if (opts->width <= 0) {
      if (meta.have & HAKD_META_WIDTH)
        opts->width = meta.opts.width;
      else {
        float w = infer_width(f, model, opts);
        opts->width = w > 0 ? w : 1.0f;
      }
    }
    if (opts->num_classes <= 0) {
      if (meta.have & HAKD_META_NUM_CLASSES) {
        opts->num_classes = meta.opts.num_classes;
      } else {
        char classifier[256];
        const hakd_st_tensor *t = NULL;
        if (!(rc = classifier_name(model, classifier, sizeof classifier))) t = find_tensor(f, classifier);
        if (t && t->ndim == 4 && t->shape[0] >= 1 && t->shape[0] <= 4096)
          opts->num_classes = (int)t->shape[0];
        else if (!rc)
          rc = hakd_error(HAKD_EINVAL,
                          "%s: no num_classes in the file's metadata and no classifier weight '%s' of %s to read it "
                          "from: pass the class count (--num-classes K)",
                          path, classifier, model);
      }
    }
  }
  hakd_st_close(f);
  if (!rc) snprintf(name_out, name_size, "%s", model);
  return rc;
}
