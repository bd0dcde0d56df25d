/* Gradient averaging over the ranks in buckets that start during backward.
 *
 * Buckets are started strictly in bucket order (an MPI communicator needs every rank to start
 * its collectives in the same order, and the order in which backward completes gradients is the
 * same on every rank only as long as their tapes are; bucket order does not depend on it). The
 * reductions use their own communicator, so SyncBN's blocking reductions in the middle of
 * backward cannot be matched against them. */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "dist/dist.h"

#ifdef HAKD_WITH_MPI
#include <mpi.h>
#endif

typedef struct {
  int first, count; /* params[first .. first + count) */
  int64_t floats;
  int ready;
  float *buf;
} bucket;

typedef struct {
  const hakd_tensor *t;
  int index;
} param_key;

struct dist_grads {
  int n_params, n_buckets, next_start, overlap;
  hakd_tensor **params;
  int *bucket_of; /* (n_params) */
  param_key *keys; /* sorted by tensor address */
  unsigned char *reported;
  bucket *buckets;
  dist_grads_stats stats;
#ifdef HAKD_WITH_MPI
  MPI_Comm comm;
  MPI_Request *requests;
#endif
};

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int by_address(const void *a, const void *b) {
  const hakd_tensor *x = ((const param_key *)a)->t, *y = ((const param_key *)b)->t;
  return x < y ? -1 : x > y;
}

void dist_grads_free(dist_grads *g) {
  if (!g) return;
  for (int b = 0; b < g->n_buckets; b++) free(g->buckets[b].buf);
#ifdef HAKD_WITH_MPI
  if (g->comm != MPI_COMM_NULL) MPI_Comm_free(&g->comm);
  free(g->requests);
#endif
  free(g->buckets);
  free(g->params);
  free(g->bucket_of);
  free(g->keys);
  free(g->reported);
  free(g);
}

int dist_grads_new(dist_grads **out, hakd_params *const *lists, int n_lists, size_t bucket_bytes, int overlap) {
  *out = NULL;
  dist_grads *g = calloc(1, sizeof *g);
  if (!g) return hakd_error(HAKD_ENOMEM, "out of memory");
#ifdef HAKD_WITH_MPI
  g->comm = MPI_COMM_NULL;
#endif
  g->overlap = overlap;
  int total = 0;
  for (int l = 0; l < n_lists; l++)
    if (lists[l]) total += lists[l]->count;
  g->params = calloc((size_t)total + 1, sizeof *g->params);
  g->bucket_of = calloc((size_t)total + 1, sizeof *g->bucket_of);
  g->keys = calloc((size_t)total + 1, sizeof *g->keys);
  g->reported = calloc((size_t)total + 1, 1);
  g->buckets = calloc((size_t)total + 1, sizeof *g->buckets);
  if (!g->params || !g->bucket_of || !g->keys || !g->reported || !g->buckets) goto oom;
  /* trainable parameters, last list and last parameter first: roughly the order in which
   * backward completes them */
  for (int l = n_lists - 1; l >= 0; l--)
    for (int i = lists[l] ? lists[l]->count - 1 : -1; i >= 0; i--) {
      hakd_tensor *t = lists[l]->items[i];
      if (t->requires_grad && t->grad) g->params[g->n_params++] = t;
    }
  size_t max_floats = bucket_bytes / sizeof(float) > 0 ? bucket_bytes / sizeof(float) : 1;
  for (int i = 0; i < g->n_params; i++) {
    bucket *b = g->n_buckets ? &g->buckets[g->n_buckets - 1] : NULL;
    int64_t n = hakd_numel(g->params[i]);
    if (!b || (size_t)(b->floats + n) > max_floats) {
      b = &g->buckets[g->n_buckets++];
      b->first = i;
    }
    b->count++;
    b->floats += n;
    g->bucket_of[i] = g->n_buckets - 1;
    g->keys[i] = (param_key){g->params[i], i};
    g->stats.floats += n;
  }
  qsort(g->keys, (size_t)g->n_params, sizeof *g->keys, by_address);
  for (int b = 0; b < g->n_buckets; b++)
    if (!(g->buckets[b].buf = malloc((size_t)g->buckets[b].floats * sizeof(float)))) goto oom;
  g->stats.buckets = g->n_buckets;
#ifdef HAKD_WITH_MPI
  if (!(g->requests = malloc(((size_t)g->n_buckets + 1) * sizeof *g->requests))) goto oom;
  for (int b = 0; b < g->n_buckets; b++) g->requests[b] = MPI_REQUEST_NULL;
  if (hakd_dist_size() > 1 && MPI_Comm_dup(MPI_COMM_WORLD, &g->comm) != MPI_SUCCESS) {
    dist_grads_free(g);
    return hakd_error(HAKD_EIO, "MPI_Comm_dup failed");
  }
#endif
  *out = g;
  return 0;
oom:
  dist_grads_free(g);
  return hakd_error(HAKD_ENOMEM, "out of memory for the gradient buckets");
}

void dist_grads_begin(dist_grads *g, hakd_ctx *ctx) {
  for (int b = 0; b < g->n_buckets; b++) g->buckets[b].ready = 0;
  memset(g->reported, 0, (size_t)g->n_params);
  g->next_start = 0;
  if (g->overlap && hakd_dist_size() > 1) hakd_ctx_set_grad_ready(ctx, dist_grads_ready, g);
}

/* Packs bucket b's gradients and starts its sum. */
static int start_bucket(dist_grads *g, int b) {
  bucket *bk = &g->buckets[b];
  float *at = bk->buf;
  for (int i = bk->first; i < bk->first + bk->count; i++) {
    int64_t n = hakd_numel(g->params[i]);
    memcpy(at, hakd_param_grad(g->params[i]), (size_t)n * sizeof(float));
    at += n;
  }
#ifdef HAKD_WITH_MPI
  int rc = MPI_Iallreduce(MPI_IN_PLACE, bk->buf, (int)bk->floats, MPI_FLOAT, MPI_SUM, g->comm, &g->requests[b]);
  if (rc != MPI_SUCCESS) return hakd_error(HAKD_EIO, "MPI_Iallreduce of gradient bucket %d failed (code %d)", b, rc);
#endif
  return 0;
}

/* Starts the buckets whose gradients are all complete, in bucket order. */
static int start_ready(dist_grads *g) {
  while (g->next_start < g->n_buckets && g->buckets[g->next_start].ready == g->buckets[g->next_start].count) {
    int rc = start_bucket(g, g->next_start);
    if (rc) return rc;
    g->next_start++;
  }
  return 0;
}

void dist_grads_ready(void *user, hakd_tensor *param) {
  dist_grads *g = user;
  param_key key = {param, 0};
  const param_key *k = bsearch(&key, g->keys, (size_t)g->n_params, sizeof key, by_address);
  if (!k || g->reported[k->index]) return; /* not a trainable parameter of the lists */
  g->reported[k->index] = 1;
  g->buckets[g->bucket_of[k->index]].ready++;
  start_ready(g); /* a failure shows again, and is returned, in dist_grads_finish */
#ifdef HAKD_WITH_MPI
  /* MPI progresses non-blocking collectives inside MPI calls: a test per completed gradient
   * keeps the started ones moving while backward computes */
  int flag;
  if (g->next_start > 0) MPI_Testall(g->next_start, g->requests, &flag, MPI_STATUSES_IGNORE);
#endif
}

int dist_grads_finish(dist_grads *g, hakd_ctx *ctx, double backward_s) {
  hakd_ctx_set_grad_ready(ctx, NULL, NULL);
  if (hakd_dist_size() == 1) return 0;
  double t0 = now_s();
  /* gradients no node read (unused parameters) are complete too: zero */
  for (int i = 0; i < g->n_params; i++)
    if (!g->reported[i]) {
      g->reported[i] = 1;
      g->buckets[g->bucket_of[i]].ready++;
    }
  int rc = start_ready(g);
#ifdef HAKD_WITH_MPI
  if (!rc && MPI_Waitall(g->n_buckets, g->requests, MPI_STATUSES_IGNORE) != MPI_SUCCESS)
    rc = hakd_error(HAKD_EIO, "MPI_Waitall on the gradient buckets failed");
#endif
  if (rc) return rc;
  float inv = 1.0f / (float)hakd_dist_size();
  for (int b = 0; b < g->n_buckets; b++) {
    const float *at = g->buckets[b].buf;
    for (int i = g->buckets[b].first; i < g->buckets[b].first + g->buckets[b].count; i++) {
      int64_t n = hakd_numel(g->params[i]);
      float *grad = hakd_param_grad(g->params[i]);
      for (int64_t j = 0; j < n; j++) grad[j] = at[j] * inv;
      at += n;
    }
  }
  g->stats.iterations++;
  g->stats.wait_s += now_s() - t0;
  g->stats.backward_s += backward_s;
  return 0;
}

dist_grads_stats dist_grads_get_stats(const dist_grads *g) { return g->stats; }
