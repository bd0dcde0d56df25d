#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/tensor.h"

int64_t hakd_numel(const hakd_tensor *t) {
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= t->shape[i];
  return n;
}

size_t hakd_tensor_bytes(const hakd_tensor *t) {
  if (!HAKD_IS_BLOCKED(t)) return (size_t)hakd_numel(t) * sizeof(float); /* float32, int32 */
  int64_t n = 1;
  for (int i = 0; i < t->ndim; i++) n *= i == 1 ? (t->shape[1] + 15) / 16 * 16 : t->shape[i];
  return (size_t)n * (t->dtype == HAKD_F32_BLOCKED ? sizeof(float) : sizeof(uint16_t));
}

int64_t hakd_dim(const hakd_tensor *t, int d) { return t->shape[d < 0 ? d + t->ndim : d]; }

int hakd_same_shape(const hakd_tensor *a, const hakd_tensor *b) {
  if (a->ndim != b->ndim) return 0;
  for (int i = 0; i < a->ndim; i++)
    if (a->shape[i] != b->shape[i]) return 0;
  return 1;
}

const char *hakd_shape_str(const hakd_tensor *t, char *buf, size_t size) {
  size_t len = 0;
  len += (size_t)snprintf(buf, size, "(");
  for (int i = 0; i < t->ndim && len < size; i++)
    len += (size_t)snprintf(buf + len, size - len, i ? ", %lld" : "%lld", (long long)t->shape[i]);
  if (len < size) snprintf(buf + len, size - len, ")");
  return buf;
}

/* ---- parameters ---- */

void hakd_params_init(hakd_params *p) { memset(p, 0, sizeof *p); }

void hakd_params_free(hakd_params *p) {
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    free(t->data);
    free(t->grad);
    free((char *)t->name);
    free(t);
  }
  free(p->items);
  memset(p, 0, sizeof *p);
}

hakd_tensor *hakd_params_add(hakd_params *p, const char *name, int ndim, const int64_t *shape, int is_buffer) {
  if (ndim < 0 || ndim > HAKD_MAX_DIMS) {
    hakd_error(HAKD_EINVAL, "parameter %s: %d dims (at most %d)", name, ndim, HAKD_MAX_DIMS);
    return NULL;
  }
  if (p->count == p->capacity) {
    int cap = p->capacity ? 2 * p->capacity : 64;
    hakd_tensor **items = realloc(p->items, (size_t)cap * sizeof *items);
    if (!items) goto oom;
    p->items = items;
    p->capacity = cap;
  }
  hakd_tensor *t = calloc(1, sizeof *t);
  if (!t) goto oom;
  t->ndim = ndim;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  int64_t n = hakd_numel(t);
  t->dtype = HAKD_F32;
  t->data = calloc((size_t)(n ? n : 1), sizeof(float));
  t->name = strdup(name);
  t->is_param = 1;
  if (!is_buffer) {
    t->requires_grad = 1;
    t->grad = calloc((size_t)(n ? n : 1), sizeof(float));
  }
  if (!t->data || !t->name || (!is_buffer && !t->grad)) {
    free(t->data);
    free(t->grad);
    free((char *)t->name);
    free(t);
    goto oom;
  }
  p->items[p->count++] = t;
  return t;
oom:
  hakd_error(HAKD_ENOMEM, "out of memory allocating parameter %s", name);
  return NULL;
}

hakd_tensor *hakd_params_find(const hakd_params *p, const char *name) {
  for (int i = 0; i < p->count; i++)
    if (!strcmp(p->items[i]->name, name)) return p->items[i];
  return NULL;
}

void hakd_params_zero_grad(hakd_params *p) {
  for (int i = 0; i < p->count; i++)
    if (p->items[i]->grad) {
      p->items[i]->grad_stale = 1;
      hakd_param_grad(p->items[i]); /* zeroes it now */
    }
}

void hakd_params_mark_grads_zero(hakd_params *p) {
  for (int i = 0; i < p->count; i++)
    if (p->items[i]->grad) p->items[i]->grad_stale = 1;
}

float *hakd_param_grad(hakd_tensor *t) {
  if (!t || !t->grad) return NULL;
  if (t->grad_stale) {
    memset(t->grad, 0, (size_t)hakd_numel(t) * sizeof(float));
    t->grad_stale = 0;
  }
  return t->grad;
}

/* Stamps are unique over the process: a tensor freed and another frozen at its address, or a
 * tensor changed and frozen again, never match a cache entry made before. */
static _Atomic uint64_t params_frozen_stamps;

void hakd_tensor_changed(hakd_tensor *t) {
  if (t && t->frozen) t->frozen = ++params_frozen_stamps;
}

void hakd_params_freeze(hakd_params *p, int frozen) {
  for (int i = 0; p && i < p->count; i++) p->items[i]->frozen = frozen ? ++params_frozen_stamps : 0;
}

int64_t hakd_params_count(const hakd_params *p) {
  int64_t n = 0;
  for (int i = 0; i < p->count; i++)
    if (p->items[i]->requires_grad) n += hakd_numel(p->items[i]);
  return n;
}
