/* Packed weights of frozen models. An inference convolution on oneDNN reads its weights in a
 * layout of its own (channel-blocked, bfloat16 in the bf16 precision), so every forward first
 * converts them (and, where BatchNorm is folded in, scales them): on small maps that conversion
 * reads and writes as many bytes as the products read, and layer4 and the ASPP of a DeepLabV3 at
 * 64-128 pixel inputs spend 10-15% of the step on it. A frozen model's weights do not change
 * (hakd_params_freeze; hakd_tensor_changed renews the stamp when they do), so the converted copy
 * made by the first forward is kept here and later forwards read it directly: the same bytes the
 * conversion would write, hence the same results bit for bit.
 *
 * The cache is the calling thread's (like the primitive caches: threads predicting at once share
 * nothing), bounded by HAKD_FROZEN_CACHE_MB (default 1024 per thread; 0 turns it off), the least
 * recently used entries going first. An entry is keyed by the tensors' addresses and stamps, the
 * folded affine's values and the primitive's weight layout; stamps are never reused, so an entry
 * of a freed or changed model is never hit: a changed tensor's entry is replaced by its next
 * forward, a freed model's is evicted (or freed with the thread, ops_release). */
#include <dnnl.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/error.h"
#include "ops/conv2d.h"
#include "ops/scratch.h"

#define CONV2D_FROZEN_DEFAULT_MB 1024

typedef struct {
  const hakd_tensor *w, *b;
  const void *w_data, *b_data; /* with the tensors' addresses: a struct copied onto another slice never matches */
  uint64_t w_stamp, b_stamp;
  int64_t cout;
  float *affine;      /* scale then shift (2 * cout) when folded, else NULL */
  float *bias;        /* the folded bias (cout) when folded, else NULL (b's data is read) */
  dnnl_memory_desc_t layout;
  void *packed;
  size_t bytes;       /* of packed, affine and bias together */
  uint64_t last_use;
} conv2d_frozen_entry;

static _Thread_local conv2d_frozen_entry *frozen_entries;
static _Thread_local int frozen_count, frozen_capacity, frozen_registered;
static _Thread_local size_t frozen_total;
static _Thread_local uint64_t frozen_clock, frozen_packs;

static void conv2d_frozen_entry_free(conv2d_frozen_entry *e) {
  free(e->packed);
  free(e->affine);
  free(e->bias);
  frozen_total -= e->bytes;
  *e = frozen_entries[--frozen_count];
}

static void conv2d_frozen_release(void) {
  while (frozen_count) conv2d_frozen_entry_free(&frozen_entries[frozen_count - 1]);
  free(frozen_entries);
  frozen_entries = NULL;
  frozen_capacity = 0;
  frozen_total = 0;
  frozen_registered = 0;
}

size_t ops_frozen_weights_bytes(void) { return frozen_total; }
uint64_t ops_frozen_weights_packs(void) { return frozen_packs; }

/* The budget in bytes into *bytes; 0, or HAKD_EINVAL naming the variable when it is not a whole
 * number of MB >= 0 (a typo must not silently keep the default). */
static int conv2d_frozen_budget(size_t *bytes) {
  const char *env = getenv("HAKD_FROZEN_CACHE_MB");
  *bytes = (size_t)CONV2D_FROZEN_DEFAULT_MB << 20;
  if (!env || !*env) return 0;
  char *end;
  errno = 0;
  long long mb = strtoll(env, &end, 10);
  if (*end || errno || mb < 0 || mb > ((long long)1 << 40))
    return hakd_error(HAKD_EINVAL, "HAKD_FROZEN_CACHE_MB=%s: expected a whole number of MB >= 0 (0 keeps no weights)",
                      env);
  *bytes = (size_t)mb << 20;
  return 0;
}

static conv2d_frozen_entry *conv2d_frozen_find(const hakd_tensor *w, const hakd_tensor *b, const float *scale,
                                               const float *shift, const dnnl_memory_desc_t *layout,
                                               const conv2d_shape *s) {
  for (int i = 0; i < frozen_count; i++) {
    conv2d_frozen_entry *e = &frozen_entries[i];
    if (e->w != w || e->w_data != w->data || e->w_stamp != w->frozen || e->b != b ||
        (b && (e->b_data != b->data || e->b_stamp != b->frozen)) || e->cout != s->cout ||
        !e->affine != !scale || !conv2d_dnnl_layouts_equal(&e->layout, layout))
      continue;
    if (scale && (memcmp(e->affine, scale, (size_t)s->cout * sizeof(float)) ||
                  memcmp(e->affine + s->cout, shift, (size_t)s->cout * sizeof(float))))
      continue;
    return e;
  }
  return NULL;
}

/* A new entry of `bytes` bytes, the least recently used ones evicted to make room; NULL when it
 * cannot fit the budget or the table cannot grow (the caller then computes as if unfrozen). */
static conv2d_frozen_entry *conv2d_frozen_add(size_t bytes, size_t budget) {
  if (bytes > budget) return NULL;
  while (frozen_count && frozen_total + bytes > budget) {
    int oldest = 0;
    for (int i = 1; i < frozen_count; i++)
      if (frozen_entries[i].last_use < frozen_entries[oldest].last_use) oldest = i;
    conv2d_frozen_entry_free(&frozen_entries[oldest]);
  }
  if (frozen_count == frozen_capacity) {
    int cap = frozen_capacity ? 2 * frozen_capacity : 64;
    conv2d_frozen_entry *grown = realloc(frozen_entries, (size_t)cap * sizeof *grown);
    if (!grown) return NULL;
    frozen_entries = grown;
    frozen_capacity = cap;
  }
  if (!frozen_registered) {
    ops_thread_on_release(conv2d_frozen_release);
    frozen_registered = 1;
  }
  conv2d_frozen_entry *e = &frozen_entries[frozen_count];
  memset(e, 0, sizeof *e);
  return e;
}

/* Fills a new entry: folds (w, b) with the affine when given, packs into the primitive's layout. */
static int conv2d_frozen_fill(conv2d_frozen_entry *e, const hakd_tensor *w, const hakd_tensor *b, const float *scale,
                              const float *shift, const dnnl_memory_desc_t *layout, size_t packed_bytes,
                              const conv2d_shape *s) {
  int64_t nw = hakd_numel(w), cout = s->cout;
  float *folded = NULL;
  e->packed = aligned_alloc(64, ops_scratch_round(packed_bytes));
  if (scale) {
    e->affine = malloc((size_t)(2 * cout) * sizeof(float));
    e->bias = malloc((size_t)cout * sizeof(float));
    folded = malloc((size_t)nw * sizeof(float));
  }
  int rc = 0;
  if (!e->packed || (scale && (!e->affine || !e->bias || !folded))) {
    rc = hakd_error(HAKD_ENOMEM, "conv2d: out of memory for frozen weights (%zu bytes)", packed_bytes);
  } else {
    if (scale) {
      conv2d_fold_affine(folded, e->bias, hakd_f32(w), b ? hakd_f32(b) : NULL, scale, shift, cout, nw / cout);
      memcpy(e->affine, scale, (size_t)cout * sizeof(float));
      memcpy(e->affine + cout, shift, (size_t)cout * sizeof(float));
    }
    rc = conv2d_dnnl_pack_weights(e->packed, scale ? folded : hakd_f32(w), s);
  }
  free(folded);
  if (rc) {
    free(e->packed);
    free(e->affine);
    free(e->bias);
    return rc;
  }
  e->w = w;
  e->b = b;
  e->w_data = w->data;
  e->b_data = b ? b->data : NULL;
  e->w_stamp = w->frozen;
  e->b_stamp = b ? b->frozen : 0;
  e->cout = cout;
  e->layout = *layout;
  e->bytes = packed_bytes + (scale ? (size_t)(3 * cout) * sizeof(float) : 0);
  frozen_total += e->bytes;
  frozen_count++;
  return 0;
}

int conv2d_frozen_forward(void *y, const void *x, const hakd_tensor *w, const hakd_tensor *b, const float *scale,
                          const float *shift, const conv2d_shape *s) {
  if (!w->is_param || !w->frozen || (b && (!b->is_param || !b->frozen))) return 0;
  if (s->n * s->oh * s->ow > CONV2D_SMALL_MAP_POSITIONS) return 0;
  size_t budget;
  int rc = conv2d_frozen_budget(&budget);
  if (rc || !budget) return rc;
  dnnl_memory_desc_t layout;
  size_t packed_bytes = conv2d_dnnl_packed_weights_bytes(s, &layout, sizeof layout);
  if (!packed_bytes) return 0; /* plain layout, cut into parts, or no primitive: the usual path says why */
  conv2d_frozen_entry *e = conv2d_frozen_find(w, b, scale, shift, &layout, s);
  if (!e) {
    /* Entries of this tensor with an old stamp or data pointer are stale (w changed or was frozen
     * again): freed now, so a student frozen for each evaluation during training holds one copy,
     * not one per evaluation. (Entries that differ only in the affine stay: the same weights may
     * run folded on one map size and unfolded on another.) */
    for (int i = frozen_count - 1; i >= 0; i--) {
      const conv2d_frozen_entry *o = &frozen_entries[i];
      if (o->w == w && (o->w_stamp != w->frozen || o->w_data != w->data ||
                        (b && o->b == b && (o->b_stamp != b->frozen || o->b_data != b->data))))
        conv2d_frozen_entry_free(&frozen_entries[i]);
    }
    size_t bytes = packed_bytes + (scale ? (size_t)(3 * s->cout) * sizeof(float) : 0);
    if (!(e = conv2d_frozen_add(bytes, budget))) return 0;
    /* out of memory or a failed pack: computed as if unfrozen, whose path reports what fails */
    if (conv2d_frozen_fill(e, w, b, scale, shift, &layout, packed_bytes, s)) return 0;
    frozen_packs++;
  }
  e->last_use = ++frozen_clock;
  rc = conv2d_dnnl_forward_packed(y, x, e->packed, scale ? e->bias : b ? hakd_f32(b) : NULL, s);
  return rc ? rc : 1;
}
