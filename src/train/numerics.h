/* Numerical faults of a training step: finding a non-finite gradient, and undoing what a
 * skipped batch's forward pass changed (BatchNorm running statistics and counters), so that
 * --skip-nonfinite leaves the model as if the batch had never been seen. */
#ifndef HAKD_TRAIN_NUMERICS_H
#define HAKD_TRAIN_NUMERICS_H

#include <stddef.h>

#include "hakd/data.h"
#include "hakd/tensor.h"

/* The first trainable tensor of p whose gradient holds a NaN or an Inf (its first such value in
 * *bad), or NULL when every gradient is finite. */
const hakd_tensor *numerics_nonfinite_grad(const hakd_params *p, float *bad);

/* A copy of the buffers (tensors without a gradient) of a parameter set. */
typedef struct {
  const hakd_params *params;
  float *data;
  int64_t n;
} numerics_snapshot;

/* Allocates room for p's buffers (p may be NULL: an empty snapshot). */
int numerics_snapshot_init(numerics_snapshot *s, const hakd_params *p);
void numerics_snapshot_take(numerics_snapshot *s);
void numerics_snapshot_restore(const numerics_snapshot *s);
void numerics_snapshot_free(numerics_snapshot *s);

/* "a.png, b.png": the image file names (without directories) of the dataset items. */
void numerics_batch_names(char *out, size_t size, const hakd_dataset *ds, const int64_t *items, int n);

#endif
