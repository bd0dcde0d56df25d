/* Collectives of a data-parallel run for the train layer: the communicator ops see (hakd_comm),
 * agreement on a status, small reductions and broadcasts, and the bucketed gradient all-reduce
 * that overlaps backward. Knows tensors and parameter lists (core), never a model. With one
 * process, or without MPI, every call is a no-op that returns its input unchanged. */
#ifndef HAKD_DIST_INTERNAL_H
#define HAKD_DIST_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

#include "hakd/dist.h"
#include "hakd/tensor.h"

/* The communicator for ops (SyncBN, loss normalisation); size 1 when alone. */
const hakd_comm *dist_comm(void);

/* Every rank passes its status; all return the same: 0 when every rank had 0, else the status of
 * the lowest failing rank, with that rank's error message (prefixed "rank r: " on the others).
 * A point where a failure of one rank (a bad file in its shard) stops all of them together. */
int dist_agree(int status);

/* In-place sums over the ranks. */
int dist_sum_f64(double *values, int64_t n);
int dist_sum_u64(uint64_t *values, int64_t n);
/* In-place maximum over the ranks. */
int dist_max_i64(int64_t *values, int n);
/* Rank 0's floats to every rank. */
int dist_broadcast_f32(float *values, int64_t n);

/* Bucketed gradient all-reduce. The parameters of the lists are cut into buckets of about
 * bucket_bytes in reverse order (backward completes gradients roughly from the last layer to the
 * first); a bucket's MPI_Iallreduce starts as soon as backward has completed all its gradients
 * (dist_grads_ready, the context's grad-ready hook), so communication hides behind the rest of
 * backward. overlap = 0 reduces everything after backward instead (for the measurement). */
typedef struct dist_grads dist_grads;
typedef struct {
  int64_t iterations;
  int buckets;
  int64_t floats;          /* gradient floats reduced per iteration */
  double wait_s;           /* time spent after backward waiting for (or doing) the reductions */
  double backward_s;       /* time of backward itself, hooks included */
} dist_grads_stats;
int dist_grads_new(dist_grads **out, hakd_params *const *lists, int n_lists, size_t bucket_bytes, int overlap);
void dist_grads_free(dist_grads *g);
/* Before backward: installs the hook on ctx and marks every bucket pending. */
void dist_grads_begin(dist_grads *g, hakd_ctx *ctx);
/* The grad-ready hook (user = the dist_grads). */
void dist_grads_ready(void *user, hakd_tensor *param);
/* After backward: starts what is left, waits for every bucket and writes the averages back into
 * the gradients; removes the hook. */
int dist_grads_finish(dist_grads *g, hakd_ctx *ctx, double backward_s);
dist_grads_stats dist_grads_get_stats(const dist_grads *g);

#endif
