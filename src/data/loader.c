/* Prefetching batch loader.
 *
 * The batch sequence is fixed by (seed, epoch, position): epoch e visits the items in the
 * order of a permutation drawn from (seed, e); the batch starting at `position` holds the
 * items at positions position.. of that order, each augmented with the stream (seed, e,
 * position + j). Workers only decide when a sample is computed, never what it is, so any
 * number of workers gives the same batches.
 *
 * Sharding (data-parallel runs): with shard_count > 1, the loader of shard r fills only samples
 * r*b .. r*b + b - 1 (b = batch_size / shard_count) of every global batch, with the same streams
 * (seed, e, position + j) as one loader of the whole batch: together the shards hold exactly
 * the batch one process would, whatever their number.
 *
 * Threads: a ring of `prefetch` slots, each holding one batch. Workers claim samples in
 * sequence order under the mutex (a slot is claimable once the consumer has released it),
 * decode and augment outside the lock, and count the slot's finished samples. The consumer
 * waits for its slot to be complete, copies it out and releases it for batch seq + prefetch. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/rng.h"
#include "hakd/data.h"

typedef struct {
  int64_t seq; /* batch number (from the last restart) this slot holds or will hold */
  int64_t epoch, position;
  int count;        /* samples in the batch; -1 until its first sample is claimed */
  int done;         /* samples finished */
  int error_sample; /* lowest sample index that failed (so the error reported is deterministic) */
  int status;
  char message[1024];
  float *images;   /* (B, 3, H, W) */
  int32_t *labels; /* (B, H, W) */
  int64_t *items;  /* (B) dataset item of each sample (the replacement when skip_bad took one) */
} slot;

struct hakd_loader {
  const hakd_dataset *ds;
  hakd_loader_config config;
  int64_t n_items;
  int64_t sample_floats, sample_labels; /* per sample: 3*H*W and H*W */
  int local_batch, shard_first;         /* samples of a batch this loader fills, and the first */

  pthread_mutex_t mutex;
  pthread_cond_t slot_free, slot_done;
  pthread_t *threads;
  int n_threads, stop;

  slot *slots;
  /* Claim cursor (workers): the next sample to hand out. */
  int64_t claim_seq, claim_epoch, claim_position;
  int claim_sample;
  /* Permutation of claim_epoch (resolved when samples are claimed). */
  int64_t *order, order_epoch;
  /* Consumer side. */
  int64_t next_seq;
  hakd_loader_state state;
  int failed; /* sticky error: status and message below */
  char failed_message[1024];

  uint8_t *bad;    /* items known to be bad (skip_bad) */
  int64_t skipped; /* distinct bad items */

  int64_t *last_items; /* (B) items of the batch hakd_loader_next returned last */
  int last_count;
};

/* ---- the batch sequence --------------------------------------------------------------- */

static int batch_count(const hakd_loader *l, int64_t position) {
  int64_t left = l->n_items - position, b = l->config.batch_size;
  if (left >= b) return (int)b;
  return l->config.drop_last || left <= 0 ? 0 : (int)left;
}

/* Samples of the batch at `position` that this loader fills (its shard). */
static int shard_count_of(const hakd_loader *l, int64_t position) {
  int count = batch_count(l, position);
  return count == l->config.batch_size ? l->local_batch : count; /* partial batches: one shard only */
}

/* The first batch at or after (epoch, position). */
static hakd_loader_state normalize_state(const hakd_loader *l, hakd_loader_state s) {
  if (s.position < 0 || batch_count(l, s.position) == 0) {
    s.epoch++;
    s.position = 0;
  }
  return s;
}

static void compute_order(hakd_loader *l, int64_t epoch) {
  for (int64_t i = 0; i < l->n_items; i++) l->order[i] = i;
  if (l->config.shuffle) {
    uint64_t rng = hakd__rng_stream(HAKD__RNG_SHUFFLE, l->config.seed, epoch, 0);
    for (int64_t i = l->n_items - 1; i > 0; i--) {
      int64_t j = hakd__rng_below(&rng, i + 1), t = l->order[i];
      l->order[i] = l->order[j];
      l->order[j] = t;
    }
  }
  l->order_epoch = epoch;
}

/* ---- one sample ---------------------------------------------------------------------- */

static void warn(hakd_loader *l, const char *message) {
  if (l->config.log)
    l->config.log(l->config.log_user, message);
  else
    fprintf(stderr, "hakd: warning: %s\n", message);
}

/* Decodes and augments item `item` into the sample's buffers. With skip_bad, a bad item is
 * replaced by the next good one (item+1, item+2, ... wrapping), a choice that depends only
 * on the files. `threaded`: take the mutex around the bad-item bookkeeping. */
static int fill_sample(hakd_loader *l, float *image, int32_t *label, int64_t *used, int64_t item, int64_t epoch,
                       int64_t position, int threaded) {
  for (int64_t attempt = 0; attempt < l->n_items; attempt++) {
    int64_t candidate = (item + attempt) % l->n_items;
    if (threaded) pthread_mutex_lock(&l->mutex);
    int known_bad = l->bad[candidate];
    if (threaded) pthread_mutex_unlock(&l->mutex);
    if (known_bad) continue;
    hakd_sample sample;
    int status = hakd_dataset_load(l->ds, candidate, &sample);
    if (status == 0) {
      *used = candidate;
      status = hakd_augment_sample(image, label, &sample, &l->config.augment, l->config.seed, epoch, position);
      hakd_sample_free(&sample);
      return status;
    }
    if (!l->config.skip_bad || status == HAKD_ENOMEM) return status;
    if (threaded) pthread_mutex_lock(&l->mutex);
    if (!l->bad[candidate]) {
      l->bad[candidate] = 1;
      l->skipped++;
      char message[1200];
      snprintf(message, sizeof message, "skipping bad item %lld: %s", (long long)candidate, hakd_error_message());
      warn(l, message);
    }
    if (threaded) pthread_mutex_unlock(&l->mutex);
  }
  return hakd_error(HAKD_ENOTFOUND, "dataset %s/%s: all %lld items are bad", hakd_dataset_name(l->ds),
                    hakd_dataset_split(l->ds), (long long)l->n_items);
}

/* ---- workers ------------------------------------------------------------------------- */

static void *worker_main(void *arg) {
  hakd_loader *l = arg;
  const int prefetch = l->config.prefetch;
  pthread_mutex_lock(&l->mutex);
  while (!l->stop) {
    slot *s = &l->slots[l->claim_seq % prefetch];
    if (s->seq != l->claim_seq) {
      pthread_cond_wait(&l->slot_free, &l->mutex);
      continue;
    }
    if (l->claim_sample == 0) {
      s->epoch = l->claim_epoch;
      s->position = l->claim_position;
      s->count = shard_count_of(l, l->claim_position);
      s->done = 0;
      s->status = 0;
      s->error_sample = s->count;
      if (l->order_epoch != l->claim_epoch) compute_order(l, l->claim_epoch);
    }
    const int j = l->claim_sample;
    const int64_t epoch = s->epoch, position = s->position + l->shard_first + j, item = l->order[position];
    if (++l->claim_sample == s->count) {
      hakd_loader_state next = normalize_state(l, (hakd_loader_state){epoch, s->position + batch_count(l, s->position)});
      l->claim_epoch = next.epoch;
      l->claim_position = next.position;
      l->claim_seq++;
      l->claim_sample = 0;
    }
    pthread_mutex_unlock(&l->mutex);

    int status =
        fill_sample(l, s->images + j * l->sample_floats, s->labels + j * l->sample_labels, &s->items[j], item, epoch,
                    position, 1);

    pthread_mutex_lock(&l->mutex);
    if (status != 0 && j < s->error_sample) {
      s->error_sample = j;
      s->status = status;
      snprintf(s->message, sizeof s->message, "%s", hakd_error_message());
    }
    if (++s->done == s->count) pthread_cond_broadcast(&l->slot_done);
  }
  pthread_mutex_unlock(&l->mutex);
  return NULL;
}

static void stop_workers(hakd_loader *l) {
  pthread_mutex_lock(&l->mutex);
  l->stop = 1;
  pthread_cond_broadcast(&l->slot_free);
  pthread_mutex_unlock(&l->mutex);
  for (int i = 0; i < l->n_threads; i++) pthread_join(l->threads[i], NULL);
  l->n_threads = 0;
}

/* (Re)starts the sequence at l->state with an empty ring. Workers must be stopped. */
static int start_workers(hakd_loader *l) {
  l->stop = 0;
  l->next_seq = 0;
  l->claim_seq = 0;
  l->claim_epoch = l->state.epoch;
  l->claim_position = l->state.position;
  l->claim_sample = 0;
  for (int i = 0; i < l->config.prefetch; i++) {
    l->slots[i].seq = i;
    l->slots[i].count = -1;
    l->slots[i].done = 0;
  }
  for (int i = 0; i < l->config.num_workers; i++) {
    if (pthread_create(&l->threads[i], NULL, worker_main, l) != 0) {
      stop_workers(l);
      return hakd_error(HAKD_ENOMEM, "loader: cannot start worker thread %d", i);
    }
    l->n_threads++;
  }
  return 0;
}

/* ---- public API ----------------------------------------------------------------------- */

int hakd_loader_new(hakd_loader **out, const hakd_dataset *ds, const hakd_loader_config *config) {
  *out = NULL;
  hakd_loader_config c = *config;
  if (c.prefetch <= 0) c.prefetch = 2;
  if (c.batch_size <= 0) return hakd_error(HAKD_EINVAL, "loader: batch size %d", c.batch_size);
  if (c.shard_count <= 0) c.shard_count = 1;
  if (c.shard_index < 0 || c.shard_index >= c.shard_count)
    return hakd_error(HAKD_EINVAL, "loader: shard %d of %d", c.shard_index, c.shard_count);
  if (c.batch_size % c.shard_count)
    return hakd_error(HAKD_EINVAL, "loader: the batch of %d does not split into %d equal shards", c.batch_size,
                      c.shard_count);
  if (c.shard_count > 1 && !c.drop_last)
    return hakd_error(HAKD_EINVAL, "loader: %d shards need drop_last (a partial batch does not split)", c.shard_count);
  if (c.num_workers < 0 || c.num_workers > 64) return hakd_error(HAKD_EINVAL, "loader: %d workers", c.num_workers);
  if (c.augment.crop_h <= 0 || c.augment.crop_w <= 0)
    return hakd_error(HAKD_EINVAL, "loader: crop size %dx%d (batches need a fixed size)", c.augment.crop_h,
                      c.augment.crop_w);
  int64_t n = hakd_dataset_count(ds);
  if (c.drop_last && n < c.batch_size)
    return hakd_error(HAKD_EINVAL, "loader: dataset %s/%s has %lld items, fewer than one batch of %d (drop_last)",
                      hakd_dataset_name(ds), hakd_dataset_split(ds), (long long)n, c.batch_size);
  hakd_loader *l = calloc(1, sizeof *l);
  if (!l) return hakd_error(HAKD_ENOMEM, "loader: out of memory");
  l->ds = ds;
  l->config = c;
  l->n_items = n;
  l->sample_labels = (int64_t)c.augment.crop_h * c.augment.crop_w;
  l->sample_floats = 3 * l->sample_labels;
  l->local_batch = c.batch_size / c.shard_count;
  l->shard_first = c.shard_index * l->local_batch;
  l->order = malloc((size_t)n * sizeof *l->order);
  l->bad = calloc((size_t)n, 1);
  l->slots = calloc((size_t)c.prefetch, sizeof *l->slots);
  l->threads = calloc((size_t)(c.num_workers > 0 ? c.num_workers : 1), sizeof *l->threads);
  l->last_items = calloc((size_t)c.batch_size, sizeof *l->last_items);
  int ok = l->order && l->bad && l->slots && l->threads && l->last_items;
  for (int i = 0; ok && i < (c.num_workers > 0 ? c.prefetch : 0); i++) {
    l->slots[i].images = malloc((size_t)(c.batch_size * l->sample_floats) * sizeof(float));
    l->slots[i].labels = malloc((size_t)(c.batch_size * l->sample_labels) * sizeof(int32_t));
    l->slots[i].items = calloc((size_t)c.batch_size, sizeof(int64_t));
    ok = l->slots[i].images && l->slots[i].labels && l->slots[i].items;
  }
  pthread_mutex_init(&l->mutex, NULL);
  pthread_cond_init(&l->slot_free, NULL);
  pthread_cond_init(&l->slot_done, NULL);
  if (!ok) {
    hakd_loader_free(l);
    return hakd_error(HAKD_ENOMEM, "loader: out of memory for %d prefetched batches of %d", c.prefetch, c.batch_size);
  }
  l->order_epoch = -1;
  l->state = normalize_state(l, (hakd_loader_state){0, 0});
  int status = start_workers(l);
  if (status) {
    hakd_loader_free(l);
    return status;
  }
  *out = l;
  return 0;
}

void hakd_loader_free(hakd_loader *l) {
  if (!l) return;
  stop_workers(l);
  if (l->slots)
    for (int i = 0; i < l->config.prefetch; i++) {
      free(l->slots[i].images);
      free(l->slots[i].labels);
      free(l->slots[i].items);
    }
  pthread_mutex_destroy(&l->mutex);
  pthread_cond_destroy(&l->slot_free);
  pthread_cond_destroy(&l->slot_done);
  free(l->slots);
  free(l->threads);
  free(l->order);
  free(l->bad);
  free(l->last_items);
  free(l);
}

static int fail(hakd_loader *l, int status, const char *message) {
  l->failed = status;
  snprintf(l->failed_message, sizeof l->failed_message, "%s", message);
  return hakd_error(status, "%s", l->failed_message);
}

/* No workers: the batch is computed here, in order. */
static int next_inline(hakd_loader *l, float *images, int32_t *labels) {
  int count = shard_count_of(l, l->state.position);
  if (l->order_epoch != l->state.epoch) compute_order(l, l->state.epoch);
  for (int j = 0; j < count; j++) {
    int64_t position = l->state.position + l->shard_first + j;
    int status = fill_sample(l, images + j * l->sample_floats, labels + j * l->sample_labels, &l->last_items[j],
                             l->order[position], l->state.epoch, position, 0);
    if (status) return fail(l, status, hakd_error_message());
  }
  l->last_count = count;
  l->state = normalize_state(l, (hakd_loader_state){l->state.epoch, l->state.position + batch_count(l, l->state.position)});
  return count;
}

int hakd_loader_next(hakd_loader *l, float *images, int32_t *labels) {
  if (l->failed) return hakd_error(l->failed, "%s", l->failed_message);
  if (l->config.num_workers == 0) return next_inline(l, images, labels);
  pthread_mutex_lock(&l->mutex);
  slot *s = &l->slots[l->next_seq % l->config.prefetch];
  while (s->count < 0 || s->done < s->count) pthread_cond_wait(&l->slot_done, &l->mutex);
  pthread_mutex_unlock(&l->mutex);
  if (s->status) return fail(l, s->status, s->message);
  memcpy(images, s->images, (size_t)(s->count * l->sample_floats) * sizeof(float));
  memcpy(labels, s->labels, (size_t)(s->count * l->sample_labels) * sizeof(int32_t));
  memcpy(l->last_items, s->items, (size_t)s->count * sizeof *l->last_items);
  const int count = s->count;
  l->last_count = count;
  l->state = normalize_state(l, (hakd_loader_state){s->epoch, s->position + batch_count(l, s->position)});
  pthread_mutex_lock(&l->mutex);
  s->seq = l->next_seq + l->config.prefetch;
  s->count = -1;
  s->done = 0;
  l->next_seq++;
  pthread_cond_broadcast(&l->slot_free);
  pthread_mutex_unlock(&l->mutex);
  return count;
}

hakd_loader_state hakd_loader_get_state(const hakd_loader *l) { return l->state; }

int hakd_loader_last_items(const hakd_loader *l, const int64_t **items) {
  *items = l->last_items;
  return l->last_count;
}

int hakd_loader_set_state(hakd_loader *l, hakd_loader_state state) {
  if (state.epoch < 0 || state.position < 0 || state.position > l->n_items)
    return hakd_error(HAKD_EINVAL, "loader: state (epoch %lld, position %lld) out of range (%lld items)",
                      (long long)state.epoch, (long long)state.position, (long long)l->n_items);
  stop_workers(l);
  l->state = normalize_state(l, state);
  l->failed = 0;
  return start_workers(l);
}

int64_t hakd_loader_batches_per_epoch(const hakd_loader *l) {
  int64_t b = l->config.batch_size;
  return l->config.drop_last ? l->n_items / b : (l->n_items + b - 1) / b;
}

int64_t hakd_loader_skipped(const hakd_loader *l) {
  pthread_mutex_lock((pthread_mutex_t *)&l->mutex);
  int64_t skipped = l->skipped;
  pthread_mutex_unlock((pthread_mutex_t *)&l->mutex);
  return skipped;
}
