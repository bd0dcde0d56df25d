#include "train/numerics.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/error.h"

const hakd_tensor *numerics_nonfinite_grad(const hakd_params *p, float *bad) {
  for (int i = 0; p && i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (!t->requires_grad || !t->grad) continue;
    const float *g = hakd_param_grad(t);
    int64_t n = hakd_numel(t);
    /* NaN and +-Inf are the floats whose magnitude bits are >= those of +Inf. An integer max
     * vectorises (a float sum would not without -ffast-math, which hakd never uses), so the
     * check costs one fast pass per step; the element search runs only after a hit. */
    uint32_t worst = 0;
    for (int64_t k = 0; k < n; k++) {
      uint32_t bits;
      memcpy(&bits, &g[k], sizeof bits);
      bits &= 0x7fffffffu;
      worst = bits > worst ? bits : worst;
    }
    if (worst < 0x7f800000u) continue;
    for (int64_t k = 0; k < n; k++)
      if (!isfinite(g[k])) {
        *bad = g[k];
        return t;
      }
  }
  return NULL;
}

int numerics_snapshot_init(numerics_snapshot *s, const hakd_params *p) {
  memset(s, 0, sizeof *s);
  s->params = p;
  for (int i = 0; p && i < p->count; i++)
    if (!p->items[i]->requires_grad) s->n += hakd_numel(p->items[i]);
  if (!s->n) return 0;
  s->data = malloc((size_t)s->n * sizeof(float));
  if (!s->data) return hakd_error(HAKD_ENOMEM, "out of memory for a copy of %lld buffer values", (long long)s->n);
  return 0;
}

/* Copies the buffers into (take) or out of (restore) the snapshot, in params order. */
static void snapshot_copy(const numerics_snapshot *s, int restore) {
  const hakd_params *p = s->params;
  int64_t at = 0;
  for (int i = 0; s->data && i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (t->requires_grad) continue;
    int64_t n = hakd_numel(t);
    if (restore)
      memcpy(t->data, s->data + at, (size_t)n * sizeof(float));
    else
      memcpy(s->data + at, t->data, (size_t)n * sizeof(float));
    at += n;
  }
}

void numerics_snapshot_take(numerics_snapshot *s) { snapshot_copy(s, 0); }
void numerics_snapshot_restore(const numerics_snapshot *s) { snapshot_copy(s, 1); }

void numerics_snapshot_free(numerics_snapshot *s) {
  free(s->data);
  memset(s, 0, sizeof *s);
}

void numerics_batch_names(char *out, size_t size, const hakd_dataset *ds, const int64_t *items, int n) {
  size_t at = 0;
  out[0] = '\0';
  for (int i = 0; i < n && at < size; i++) {
    const char *path = hakd_dataset_image_path(ds, items[i]);
    const char *base = path ? strrchr(path, '/') : NULL;
    base = base ? base + 1 : path ? path : "?";
    int w = snprintf(out + at, size - at, "%s%s", i ? ", " : "", base);
    if (w < 0) break;
    at += (size_t)w;
  }
}
