/* Distiller options: defaults (HETEROAKD.md) and the parsers of their textual values. */
#include <stdlib.h>
#include <string.h>

#include "hakd/distill.h"

void hakd_distill_options_default(hakd_distill_options *o) {
  memset(o, 0, sizeof *o);
  o->stages[0] = 4;
  o->n_stages = 1;
  o->T = 4.0f;
  o->lambda_kd = 0.1f;
  o->lambda_hakd = 1.0f;
  o->lambda_proj = 1.0f;
  o->warmup_iters = -1;
  o->reliability = HAKD_RELIABILITY_CE;
  o->kem_axis = HAKD_KEM_AXIS_SPATIAL;
  o->grid = HAKD_GRID_LOGITS;
  o->ignore_index = 255;
  o->bn_momentum = 0.1f;
  o->kd_T = 1.0f;
  o->cwd_T = 4.0f;
  o->lambda_cwd = 3.0f;
  o->fitnet_stage = 4;
  o->lambda_fitnet = 1.0f;
}

static const char *const method_names[] = {"none", "kd", "cwd", "fitnet", "heteroakd"};

/* Index of text in names[0..n), or -1. */
static int lookup(const char *text, const char *const *names, int n) {
  for (int i = 0; i < n; i++)
    if (text && !strcmp(text, names[i])) return i;
  return -1;
}

int hakd_distill_method_parse(const char *text, hakd_distill_method *out) {
  int i = lookup(text, method_names, 5);
  if (i < 0)
    return hakd_error(HAKD_EINVAL, "unknown distillation method '%s' (none | kd | cwd | fitnet | heteroakd)",
                      text ? text : "");
  *out = (hakd_distill_method)i;
  return 0;
}

const char *hakd_distill_method_name(hakd_distill_method m) {
  return (int)m >= 0 && (int)m < 5 ? method_names[m] : "?";
}

int hakd_reliability_parse(const char *text, hakd_reliability *out) {
  static const char *const names[] = {"ce", "bce"};
  int i = lookup(text, names, 2);
  if (i < 0) return hakd_error(HAKD_EINVAL, "unknown reliability '%s' (ce | bce)", text ? text : "");
  *out = (hakd_reliability)i;
  return 0;
}

int hakd_kem_axis_parse(const char *text, hakd_kem_axis *out) {
  static const char *const names[] = {"spatial", "class"};
  int i = lookup(text, names, 2);
  if (i < 0) return hakd_error(HAKD_EINVAL, "unknown KEM axis '%s' (spatial | class)", text ? text : "");
  *out = (hakd_kem_axis)i;
  return 0;
}

int hakd_grid_parse(const char *text, hakd_grid *out) {
  static const char *const names[] = {"logits", "student", "teacher"};
  int i = lookup(text, names, 3);
  if (i < 0) return hakd_error(HAKD_EINVAL, "unknown HeteroAKD grid '%s' (logits | student | teacher)", text ? text : "");
  *out = (hakd_grid)i;
  return 0;
}

int hakd_distill_stages_parse(const char *text, hakd_distill_options *o) {
  int stages[4] = {0}, n = 0;
  const char *p = text ? text : "";
  while (*p) {
    char *end;
    long v = strtol(p, &end, 10);
    if (end == p || v < 1 || v > 4 || n == 4) goto bad;
    for (int i = 0; i < n; i++)
      if (stages[i] == v) goto bad;
    stages[n++] = (int)v;
    p = end;
    if (*p == ',') {
      p++;
      if (!*p) goto bad;
    } else if (*p) {
      goto bad;
    }
  }
  if (n == 0) goto bad;
  memcpy(o->stages, stages, sizeof stages);
  o->n_stages = n;
  return 0;
bad:
  return hakd_error(HAKD_EINVAL, "bad stage list '%s': distinct stages 1..4 separated by commas, e.g. 4 or 2,3,4",
                    text ? text : "");
}
