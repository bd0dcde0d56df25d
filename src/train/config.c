#include "hakd/config.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hakd/distill.h"
#include "hakd/error.h"
#include "hakd/model.h"
#include "hakd/tensor.h"

#define STR(field) HAKD_KEY_STR, offsetof(hakd_config, field), sizeof(((hakd_config *)0)->field)
#define NUM(type, field) type, offsetof(hakd_config, field), 0

static const hakd_config_key keys[] = {
    {"model", STR(model), "", "student / trained model name (see `hakd models`)", 0},
    {"dataset", STR(dataset), "generic", "cityscapes | voc | ade20k | camvid | generic", 0},
    {"data_root", STR(data_root), "", "dataset directory", 0},
    {"train_split", STR(train_split), "train", "training split", 0},
    {"val_split", STR(val_split), "val", "evaluation split", 0},
    {"width", NUM(HAKD_KEY_FLOAT, width), "1", "channel width multiplier of the model (small experiments)", 0},
    {"drop_path", NUM(HAKD_KEY_FLOAT, drop_path), "0.1", "stochastic depth rate of MiT encoders (HF/mmseg: 0.1)", 0},
    {"deep_stem", NUM(HAKD_KEY_BOOL, deep_stem), "0", "ResNet deep stem (ResNetV1c)", 0},
    {"aux", NUM(HAKD_KEY_INT, aux), "-1", "FCN aux head on stage 3: 1 on, 0 off, -1 model default", 0},
    {"aspp_dilations", STR(aspp_dilations), "12,24,36",
     "DeepLabV3 ASPP atrous rates (mmseg `dilations`; 1,12,24,36 accepted); fit them to the feature map", 0},
    {"pretrained", STR(pretrained), "", "initial weights (safetensors state_dict)", 0},
    {"weights_prefix", STR(weights_prefix), "", "key rewrite for --pretrained: FROM=TO, or a prefix to prepend", 0},
    {"pretrained_backbone", NUM(HAKD_KEY_BOOL, pretrained_backbone), "0", "load only the backbone from --pretrained", 0},
    {"crop", STR(crop), "512x512", "training crop HxW", 0},
    {"batch", NUM(HAKD_KEY_INT, batch), "8", "images per iteration", 0},
    {"workers", NUM(HAKD_KEY_INT, workers), "2", "data loader threads", 0},
    {"skip_bad", NUM(HAKD_KEY_BOOL, skip_bad), "0", "warn and skip unreadable dataset items", 0},
    {"flip", NUM(HAKD_KEY_BOOL, flip), "1", "random horizontal flip", 0},
    {"photometric", NUM(HAKD_KEY_BOOL, photometric), "0", "photometric distortion", 0},
    {"ratio_min", NUM(HAKD_KEY_FLOAT, ratio_min), "0.5", "random rescale ratio, lower bound", 0},
    {"ratio_max", NUM(HAKD_KEY_FLOAT, ratio_max), "2.0", "random rescale ratio, upper bound", 0},
    {"cat_max_ratio", NUM(HAKD_KEY_FLOAT, cat_max_ratio), "0", "crop retry when one class covers more (0.75 mmseg)", 0},
    {"norm", STR(norm), "imagenet", "input normalisation: imagenet (RGB mean/std) | bgr-mean (CIRKD)", 0},
    {"eval_scale", STR(eval_scale), "", "validation resize bound HxW keeping the ratio (empty: whole image)", 0},
    {"iters", NUM(HAKD_KEY_INT64, iters), "1000", "training iterations", 0},
    {"optimizer", STR(optimizer), "sgd", "sgd | adamw", 0},
    {"lr", NUM(HAKD_KEY_FLOAT, lr), "0.01", "base learning rate", 0},
    {"wd", NUM(HAKD_KEY_FLOAT, wd), "1e-4", "weight decay", 0},
    {"momentum", NUM(HAKD_KEY_FLOAT, momentum), "0.9", "SGD momentum", 0},
    {"head_lr_mult", NUM(HAKD_KEY_FLOAT, head_lr_mult), "1", "learning-rate multiplier of the decode head", 0},
    {"clip_norm", NUM(HAKD_KEY_FLOAT, clip_norm), "0", "clip the global gradient norm (0: off)", 0},
    {"aux_weight", NUM(HAKD_KEY_FLOAT, aux_weight), "0.4", "weight of the aux head's CE", 0},
    {"schedule", STR(schedule), "poly", "learning-rate schedule: poly", 0},
    {"power", NUM(HAKD_KEY_FLOAT, power), "0.9", "poly power", 0},
    {"min_lr", NUM(HAKD_KEY_FLOAT, min_lr), "0", "poly floor", 0},
    {"warmup_lr_iters", NUM(HAKD_KEY_INT64, warmup_lr_iters), "0", "linear learning-rate warm-up iterations", 0},
    {"warmup_ratio", NUM(HAKD_KEY_FLOAT, warmup_ratio), "1e-6", "lr factor at the start of the lr warm-up", 0},
    {"work_dir", STR(work_dir), "work_dirs/run", "checkpoints, logs, plots", 0},
    {"resume", STR(resume), "", "resume from a checkpoint, or `auto` (latest in work_dir)", 0},
    {"eval_every", NUM(HAKD_KEY_INT64, eval_every), "0", "evaluate every N iterations (0: at the end)", 0},
    {"save_every", NUM(HAKD_KEY_INT64, save_every), "0", "checkpoint every N iterations (0: at the end)", 0},
    {"log_every", NUM(HAKD_KEY_INT64, log_every), "10", "log line every N iterations", 0},
    {"stop_after", NUM(HAKD_KEY_INT64, stop_after), "0",
     "stop (with a checkpoint) at this iteration, to continue later with --resume (0: run to the end)", 0},
    {"skip_nonfinite", NUM(HAKD_KEY_INT64, skip_nonfinite), "0",
     "skip up to N batches whose loss or gradient is NaN/Inf (no optimizer step, counted in the log); 0: stop at the first",
     0},
    {"seed", NUM(HAKD_KEY_INT64, seed), "0", "random seed (weights, data order, augmentation)", 0},
    {"threads", NUM(HAKD_KEY_INT, threads), "0", "compute threads (0: OMP_NUM_THREADS or all cores)", 0},
    {"precision", STR(precision), "fp32",
     "fp32 | bf16 (mixed: convolutions and matrix products multiply in bfloat16, accumulate in float32)",
     0},
    {"memory_check", NUM(HAKD_KEY_BOOL, memory_check), "1",
     "estimate one step's memory from probe steps on small crops before training; refuse when it exceeds the "
     "available memory (0: skip)",
     0},
    {"sync_bn", NUM(HAKD_KEY_INT, sync_bn), "-1",
     "data-parallel runs (mpirun): BatchNorm statistics over the global batch (SyncBN): 1 on, 0 off, -1 on when "
     "more than one process",
     0},
    {"teacher", STR(teacher), "", "teacher model name", 1},
    {"teacher_weights", STR(teacher_weights), "", "teacher weights (safetensors or .pth)", 1},
    {"teacher_norm", STR(teacher_norm), "", "the teacher's input normalisation if not --norm: imagenet | bgr-mean", 1},
    {"teacher_width", NUM(HAKD_KEY_FLOAT, teacher_width), "0",
     "teacher width multiplier (0: the teacher file's, 1 when it does not say)", 1},
    {"teacher_aspp_dilations", STR(teacher_aspp_dilations), "",
     "the teacher's ASPP atrous rates (DeepLabV3; empty: the teacher file's, 12,24,36 when it does not say)", 1},
    {"method", STR(method), "heteroakd", "none | kd | cwd | fitnet | heteroakd", 1},
    {"hakd_stages", STR(hakd_stages), "4", "stages distilled by HeteroAKD, e.g. 4 or 2,3,4", 1},
    {"T", NUM(HAKD_KEY_FLOAT, T), "4", "HeteroAKD temperature", 1},
    {"lambda_kd", NUM(HAKD_KEY_FLOAT, lambda_kd), "-1",
     "weight of logit KD (-1: 0.1 inside HeteroAKD's total loss, 1 for the KD baseline as CIRKD)", 1},
    {"lambda_hakd", NUM(HAKD_KEY_FLOAT, lambda_hakd), "1", "weight of L_hakd", 1},
    {"lambda_proj", NUM(HAKD_KEY_FLOAT, lambda_proj), "1", "weight of the projector supervision L_proj", 1},
    {"lambda_cwd", NUM(HAKD_KEY_FLOAT, lambda_cwd), "3", "weight of CWD", 1},
    {"lambda_fitnet", NUM(HAKD_KEY_FLOAT, lambda_fitnet), "1", "weight of FitNet", 1},
    {"kd_T", NUM(HAKD_KEY_FLOAT, kd_T), "1", "temperature of the KD baseline / KD term", 1},
    {"cwd_T", NUM(HAKD_KEY_FLOAT, cwd_T), "4", "temperature of CWD", 1},
    {"warmup_iters", NUM(HAKD_KEY_INT64, warmup_iters), "-1", "labels-only iterations before KD terms (-1: 10%)", 1},
    {"reliability", STR(reliability), "ce", "reliability measure: ce | bce", 1},
    {"kem_axis", STR(kem_axis), "spatial", "KEM softmax axis: spatial | class (bce only)", 1},
    {"hakd_grid", STR(hakd_grid), "logits", "common grid: logits | student | teacher", 1},
    {"no_kmm", NUM(HAKD_KEY_BOOL, no_kmm), "0", "ablation: Z_hyb = Z_t", 1},
    {"no_kem", NUM(HAKD_KEY_BOOL, no_kem), "0", "ablation: uniform pixel weights", 1},
    {"proj_relu", NUM(HAKD_KEY_BOOL, proj_relu), "0", "ReLU at the end of the projectors", 1},
    {"proj_grad_to_student", NUM(HAKD_KEY_BOOL, proj_grad_to_student), "0", "let L_proj reach the student", 1},
    {"fitnet_stage", NUM(HAKD_KEY_INT, fitnet_stage), "4", "stage mimicked by FitNet", 1},
    {"dump_kem", STR(dump_kem), "", "directory for KEM weight-map PNGs", 1},
    {"dump_every", NUM(HAKD_KEY_INT64, dump_every), "100", "KEM dump interval", 1},
    {NULL, 0, 0, 0, NULL, NULL, 0},
};

const hakd_config_key *hakd_config_keys(void) { return keys; }

static const hakd_config_key *find_key(const char *name) {
  char norm[64];
  size_t n = strlen(name);
  if (n >= sizeof norm) return NULL;
  for (size_t i = 0; i <= n; i++) norm[i] = name[i] == '-' ? '_' : name[i];
  for (const hakd_config_key *k = keys; k->key; k++)
    if (!strcmp(k->key, norm)) return k;
  return NULL;
}

static int set_value(hakd_config *c, const hakd_config_key *k, const char *value) {
  char *base = (char *)c + k->offset, *end = NULL;
  errno = 0;
  switch (k->type) {
    case HAKD_KEY_STR:
      if (strlen(value) >= k->size) return hakd_error(HAKD_EINVAL, "%s: value too long (%zu chars max)", k->key, k->size - 1);
      strcpy(base, value);
      return 0;
    case HAKD_KEY_INT: {
      long v = strtol(value, &end, 10);
      if (errno || end == value || *end || v < -2147483647L || v > 2147483647L)
        return hakd_error(HAKD_EINVAL, "%s: '%s' is not an integer", k->key, value);
      *(int *)base = (int)v;
      return 0;
    }
    case HAKD_KEY_INT64: {
      long long v = strtoll(value, &end, 10);
      if (errno || end == value || *end) return hakd_error(HAKD_EINVAL, "%s: '%s' is not an integer", k->key, value);
      *(int64_t *)base = v;
      return 0;
    }
    case HAKD_KEY_FLOAT: {
      float v = strtof(value, &end);
      if (errno || end == value || *end || !isfinite(v))
        return hakd_error(HAKD_EINVAL, "%s: '%s' is not a finite number", k->key, value);
      *(float *)base = v;
      return 0;
    }
    case HAKD_KEY_BOOL:
      if (!strcmp(value, "1") || !strcmp(value, "true") || !strcmp(value, "yes") || !strcmp(value, "on"))
        *(int *)base = 1;
      else if (!strcmp(value, "0") || !strcmp(value, "false") || !strcmp(value, "no") || !strcmp(value, "off"))
        *(int *)base = 0;
      else
        return hakd_error(HAKD_EINVAL, "%s: '%s' is not a boolean (1/0, true/false)", k->key, value);
      return 0;
  }
  return HAKD_EINVAL;
}

void hakd_config_default(hakd_config *c) {
  memset(c, 0, sizeof *c);
  for (const hakd_config_key *k = keys; k->key; k++) set_value(c, k, k->default_value);
}

int hakd_config_set(hakd_config *c, const char *key, const char *value) {
  const hakd_config_key *k = find_key(key);
  if (!k) return hakd_error(HAKD_EINVAL, "unknown key '%s'", key);
  return set_value(c, k, value);
}

static char *trim(char *s) {
  while (isspace((unsigned char)*s)) s++;
  char *e = s + strlen(s);
  while (e > s && isspace((unsigned char)e[-1])) *--e = '\0';
  return s;
}

int hakd_config_load(hakd_config *c, const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return hakd_error(HAKD_EIO, "%s: cannot open config file: %s", path, strerror(errno));
  struct stat st;
  /* fopen opens a folder too, and fgets then reads nothing: an empty config, silently */
  if (fstat(fileno(f), &st) || !S_ISREG(st.st_mode)) {
    fclose(f);
    return hakd_error(HAKD_EIO, "%s: not a regular file (a config file is flat `key = value` text)", path);
  }
  char line[2048];
  int lineno = 0, rc = 0;
  long before = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    lineno++;
    size_t len = strlen(line);
    /* a NUL would cut the line short and hide the rest of it: binary, not a config. fgets
     * read more bytes than strlen sees exactly then, also on a last line without '\n' (which
     * an end-of-file test let through: `model = a<NUL>b` there loaded as "a") */
    long after = ftell(f);
    if (after >= 0 && (size_t)(after - before) != len) {
      rc = hakd_error(HAKD_EFORMAT, "%s:%d: NUL byte in the line; a config file is text", path, lineno);
      break;
    }
    before = after;
    if (len == sizeof line - 1 && line[len - 1] != '\n') {
      rc = hakd_error(HAKD_EFORMAT, "%s:%d: line longer than %zu characters", path, lineno, sizeof line - 2);
      break;
    }
    char *hash = strchr(line, '#');
    if (hash) *hash = '\0';
    char *s = trim(line);
    if (!*s) continue;
    char *eq = strchr(s, '=');
    if (!eq) {
      rc = hakd_error(HAKD_EFORMAT, "%s:%d: expected `key = value`, got '%s'", path, lineno, s);
      break;
    }
    *eq = '\0';
    char *key = trim(s), *value = trim(eq + 1);
    size_t n = strlen(value);
    if (n >= 2 && value[0] == '"' && value[n - 1] == '"') {
      value[n - 1] = '\0';
      value++;
    }
    rc = hakd_config_set(c, key, value);
    if (rc) hakd_error_prefix("%s:%d", path, lineno);
  }
  fclose(f);
  return rc;
}

int hakd_config_write(const hakd_config *c, FILE *out) {
  for (const hakd_config_key *k = keys; k->key; k++) {
    const char *base = (const char *)c + k->offset;
    switch (k->type) {
      case HAKD_KEY_STR: fprintf(out, "%s = \"%s\"\n", k->key, base); break;
      case HAKD_KEY_INT:
      case HAKD_KEY_BOOL: fprintf(out, "%s = %d\n", k->key, *(const int *)base); break;
      case HAKD_KEY_INT64: fprintf(out, "%s = %lld\n", k->key, (long long)*(const int64_t *)base); break;
      case HAKD_KEY_FLOAT: fprintf(out, "%s = %.9g\n", k->key, (double)*(const float *)base); break;
    }
  }
  return ferror(out) ? HAKD_EIO : 0;
}

int hakd_config_save(const hakd_config *c, const char *path) {
  char tmp[HAKD_PATH_MAX + 16];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return hakd_error(HAKD_EIO, "%s: cannot write: %s", tmp, strerror(errno));
  int rc = hakd_config_write(c, f);
  if (fclose(f) || rc || rename(tmp, path)) {
    remove(tmp);
    return hakd_error(HAKD_EIO, "%s: write failed", path);
  }
  return 0;
}

int hakd_parse_size(const char *text, int *h, int *w) {
  char *end;
  long a = strtol(text, &end, 10), b = a;
  if (end == text || a <= 0) return hakd_error(HAKD_EINVAL, "'%s' is not a size HxW", text);
  if (*end == 'x' || *end == 'X') {
    const char *second = end + 1;
    b = strtol(second, &end, 10);
    if (end == second || b <= 0) return hakd_error(HAKD_EINVAL, "'%s' is not a size HxW", text);
  }
  if (*end || a > 65536 || b > 65536) return hakd_error(HAKD_EINVAL, "'%s' is not a size HxW", text);
  *h = (int)a;
  *w = (int)b;
  return 0;
}

static int one_of(const char *value, const char *const *options) {
  for (; *options; options++)
    if (!strcmp(value, *options)) return 1;
  return 0;
}

int hakd_config_validate(const hakd_config *c, int distill) {
  int h, w;
  if (!c->model[0]) return hakd_error(HAKD_EINVAL, "no model given (--model, see `hakd models`)");
  if (!c->data_root[0]) return hakd_error(HAKD_EINVAL, "no dataset directory given (--data-root)");
  if (hakd_parse_size(c->crop, &h, &w)) return hakd_error(HAKD_EINVAL, "crop: '%s' is not HxW", c->crop);
  if (c->eval_scale[0] && hakd_parse_size(c->eval_scale, &h, &w))
    return hakd_error(HAKD_EINVAL, "eval_scale: '%s' is not HxW", c->eval_scale);
  if (c->batch < 1) return hakd_error(HAKD_EINVAL, "batch must be >= 1 (got %d)", c->batch);
  if (c->iters < 1) return hakd_error(HAKD_EINVAL, "iters must be >= 1 (got %lld)", (long long)c->iters);
  if (!(c->lr > 0)) return hakd_error(HAKD_EINVAL, "lr must be > 0");
  if (!(c->ratio_min > 0 && c->ratio_min <= c->ratio_max))
    return hakd_error(HAKD_EINVAL, "ratio_min/ratio_max: need 0 < %g <= %g", c->ratio_min, c->ratio_max);
  static const char *const optimizers[] = {"sgd", "adamw", NULL}, *const norms[] = {"imagenet", "bgr-mean", NULL},
                           *const schedules[] = {"poly", NULL};
  if (!one_of(c->optimizer, optimizers)) return hakd_error(HAKD_EINVAL, "optimizer '%s': use sgd or adamw", c->optimizer);
  if (!one_of(c->norm, norms)) return hakd_error(HAKD_EINVAL, "norm '%s': use imagenet or bgr-mean", c->norm);
  if (!one_of(c->schedule, schedules)) return hakd_error(HAKD_EINVAL, "schedule '%s': only poly", c->schedule);
  if (c->workers < 0) return hakd_error(HAKD_EINVAL, "workers must be >= 0");
  if (c->skip_nonfinite < 0)
    return hakd_error(HAKD_EINVAL, "skip_nonfinite must be >= 0 (got %lld)", (long long)c->skip_nonfinite);
  /* Ranges of the numeric keys: a value outside them would run (hours) and mean nothing, e.g. a
   * negative momentum or weight decay, or a save interval that never saves. */
  if (c->threads < 0) return hakd_error(HAKD_EINVAL, "threads must be >= 0 (0: all cores), got %d", c->threads);
  if (c->aux < -1 || c->aux > 1) return hakd_error(HAKD_EINVAL, "aux must be -1, 0 or 1, got %d", c->aux);
  if (c->sync_bn < -1 || c->sync_bn > 1)
    return hakd_error(HAKD_EINVAL, "sync_bn must be -1, 0 or 1, got %d", c->sync_bn);
  if (!(c->width > 0)) return hakd_error(HAKD_EINVAL, "width must be > 0, got %g", c->width);
  if (!(c->drop_path >= 0 && c->drop_path < 1))
    return hakd_error(HAKD_EINVAL, "drop_path must be in [0, 1), got %g", c->drop_path);
  if (!(c->cat_max_ratio >= 0 && c->cat_max_ratio <= 1))
    return hakd_error(HAKD_EINVAL, "cat_max_ratio must be in [0, 1] (0: off), got %g", c->cat_max_ratio);
  if (!(c->momentum >= 0 && c->momentum < 1))
    return hakd_error(HAKD_EINVAL, "momentum must be in [0, 1), got %g", c->momentum);
  if (!(c->wd >= 0)) return hakd_error(HAKD_EINVAL, "wd must be >= 0, got %g", c->wd);
  if (!(c->head_lr_mult >= 0)) return hakd_error(HAKD_EINVAL, "head_lr_mult must be >= 0, got %g", c->head_lr_mult);
  if (!(c->clip_norm >= 0)) return hakd_error(HAKD_EINVAL, "clip_norm must be >= 0 (0: off), got %g", c->clip_norm);
  if (!(c->aux_weight >= 0)) return hakd_error(HAKD_EINVAL, "aux_weight must be >= 0, got %g", c->aux_weight);
  if (!(c->power >= 0)) return hakd_error(HAKD_EINVAL, "power must be >= 0, got %g", c->power);
  if (!(c->min_lr >= 0 && c->min_lr <= c->lr))
    return hakd_error(HAKD_EINVAL, "min_lr must be in [0, lr = %g], got %g", c->lr, c->min_lr);
  if (!(c->warmup_ratio > 0 && c->warmup_ratio <= 1))
    return hakd_error(HAKD_EINVAL, "warmup_ratio must be in (0, 1], got %g", c->warmup_ratio);
  const struct {
    const char *key;
    int64_t value, min;
  } counts[] = {{"warmup_lr_iters", c->warmup_lr_iters, 0}, {"eval_every", c->eval_every, 0},
                {"save_every", c->save_every, 0},           {"log_every", c->log_every, 1},
                {"stop_after", c->stop_after, 0}};
  for (size_t i = 0; i < sizeof counts / sizeof counts[0]; i++)
    if (counts[i].value < counts[i].min)
      return hakd_error(HAKD_EINVAL, "%s must be >= %lld, got %lld", counts[i].key, (long long)counts[i].min,
                        (long long)counts[i].value);
  hakd_precision precision;
  int rc = hakd_precision_parse(c->precision, &precision), rates[3];
  if (rc) return rc;
  if ((rc = hakd_aspp_dilations_parse(c->aspp_dilations, rates))) return rc;
  if (distill && c->teacher_aspp_dilations[0] && (rc = hakd_aspp_dilations_parse(c->teacher_aspp_dilations, rates)))
    return rc;
  if (distill) {
    static const char *const methods[] = {"none", "kd", "cwd", "fitnet", "heteroakd", NULL},
                             *const rel[] = {"ce", "bce", NULL}, *const axes[] = {"spatial", "class", NULL},
                             *const grids[] = {"logits", "student", "teacher", NULL};
    if (!one_of(c->method, methods))
      return hakd_error(HAKD_EINVAL, "method '%s': use none, kd, cwd, fitnet or heteroakd", c->method);
    if (!c->teacher[0]) return hakd_error(HAKD_EINVAL, "distill needs --teacher");
    if (!c->teacher_weights[0]) return hakd_error(HAKD_EINVAL, "distill needs --teacher-weights (a trained teacher)");
    if (c->teacher_norm[0] && !one_of(c->teacher_norm, norms))
      return hakd_error(HAKD_EINVAL, "teacher_norm '%s': use imagenet or bgr-mean", c->teacher_norm);
    if (!one_of(c->reliability, rel)) return hakd_error(HAKD_EINVAL, "reliability '%s': use ce or bce", c->reliability);
    if (!one_of(c->kem_axis, axes)) return hakd_error(HAKD_EINVAL, "kem_axis '%s': use spatial or class", c->kem_axis);
    if (!strcmp(c->kem_axis, "class") && strcmp(c->reliability, "bce"))
      return hakd_error(HAKD_EINVAL, "kem_axis class needs reliability bce");
    if (!one_of(c->hakd_grid, grids))
      return hakd_error(HAKD_EINVAL, "hakd_grid '%s': use logits, student or teacher", c->hakd_grid);
    if (!(c->T > 0)) return hakd_error(HAKD_EINVAL, "T must be > 0");
    if (!(c->kd_T > 0) || !(c->cwd_T > 0)) return hakd_error(HAKD_EINVAL, "kd_T and cwd_T must be > 0");
    if (!(c->teacher_width >= 0 && c->teacher_width <= 4))
      return hakd_error(HAKD_EINVAL, "teacher_width must be in (0, 4] (or 0: the teacher file's), got %g", c->teacher_width);
    if (!(c->lambda_kd >= 0 || c->lambda_kd == -1))
      return hakd_error(HAKD_EINVAL, "lambda_kd must be >= 0, or -1 for the method's default; got %g", c->lambda_kd);
    const struct {
      const char *key;
      float value;
    } weights[] = {{"lambda_hakd", c->lambda_hakd}, {"lambda_proj", c->lambda_proj}, {"lambda_cwd", c->lambda_cwd},
                   {"lambda_fitnet", c->lambda_fitnet}};
    for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++)
      if (!(weights[i].value >= 0))
        return hakd_error(HAKD_EINVAL, "%s must be >= 0, got %g", weights[i].key, weights[i].value);
    if (c->warmup_iters < -1)
      return hakd_error(HAKD_EINVAL, "warmup_iters must be >= 0, or -1 for 10%% of iters; got %lld",
                        (long long)c->warmup_iters);
    if (c->fitnet_stage < 1 || c->fitnet_stage > 4)
      return hakd_error(HAKD_EINVAL, "fitnet_stage must be 1..4, got %d", c->fitnet_stage);
    if (c->dump_every < 1) return hakd_error(HAKD_EINVAL, "dump_every must be >= 1, got %lld", (long long)c->dump_every);
    /* checked here, not when the distiller is built after the teacher's evaluation */
    hakd_distill_options stages;
    hakd_distill_options_default(&stages);
    if ((rc = hakd_distill_stages_parse(c->hakd_stages, &stages))) {
      hakd_error_prefix("hakd_stages");
      return rc;
    }
  }
  return 0;
}
