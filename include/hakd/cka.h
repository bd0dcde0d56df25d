/* Linear centered kernel alignment (CKA, Kornblith et al. 2019, "Similarity of Neural Network
 * Representations Revisited") between two representations of the same examples:
 *
 *   CKA(X, Y) = ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F),  X (n, p), Y (n, q) column-centred,
 *
 * in its Gram form <HKH, HLH>_F / (||HKH||_F ||HLH||_F) with K = X X^T, L = Y Y^T and the
 * centring matrix H = I - 11^T/n (the same number). It is invariant to orthogonal transforms and
 * isotropic scaling of either feature set and is 1 for identical sets.
 *
 * Convention of `hakd cka` (hakd_cka_set_add_maps): one example per image; a stage's feature map
 * (C, H, W) is adaptive-average-pooled to a common grid (HAKD_CKA_GRID x HAKD_CKA_GRID, as
 * F.adaptive_avg_pool2d) and flattened to C * grid * grid features, so stages of any stride and
 * width compare on the same spatial layout and the per-image dimension stays small.
 *
 * A set accumulates its examples a batch at a time and keeps the n x n Gram matrix up to date,
 * computed in double; the examples are kept as float32 (n x dim). Everything is deterministic:
 * the result does not depend on how the examples were split into batches or on the thread count. */
#ifndef HAKD_CKA_H
#define HAKD_CKA_H

#include <stdint.h>

#include "hakd/tensor.h"

/* Side of the pooled grid of hakd cka's per-image features. */
#define HAKD_CKA_GRID 8

typedef struct hakd_cka_set hakd_cka_set;

/* An empty set; name ("teacher stage 3") is copied and used in error messages. */
int hakd_cka_set_new(hakd_cka_set **out, const char *name);
void hakd_cka_set_free(hakd_cka_set *s);
/* Appends n examples of dim features each. The first call fixes dim; a later call with another
 * dim is an error, as is a non-finite value (both name the set and the example). */
int hakd_cka_set_add(hakd_cka_set *s, const float *rows, /* (n, dim) */
                     int64_t n, int64_t dim);
/* Appends one example per image of maps (N, C, H, W): adaptive average pool to (grid_h, grid_w)
 * (hakd_adaptive_avgpool2d, in ctx's step memory), flattened to C * grid_h * grid_w. */
int hakd_cka_set_add_maps(hakd_cka_set *s, hakd_ctx *ctx, hakd_tensor *maps, int grid_h, int grid_w);
int64_t hakd_cka_set_count(const hakd_cka_set *s);
int64_t hakd_cka_set_dim(const hakd_cka_set *s);

/* Linear CKA of two sets holding the same examples in the same order (equal counts, >= 2).
 * A set whose examples are all identical has no variance and no CKA: HAKD_ENUMERIC naming it. */
int hakd_cka_compare(double *cka, const hakd_cka_set *a, const hakd_cka_set *b);

/* One-shot linear CKA of X (n, p) and Y (n, q) (rows are examples). */
int hakd_cka_linear(double *cka, const float *x, /* (n, p) */
                    const float *y,              /* (n, q) */
                    int64_t n, int64_t p, int64_t q);

/* Heat map of a rows x cols CKA matrix (values in [0, 1], NaN drawn gray) as an RGB PNG: one
 * square cell per entry with its value printed, row labels T1.., column labels S1.. (teacher
 * stages down, student stages across) and a 0..1 colour bar. Written atomically. */
int hakd_cka_write_heatmap(const char *path, const double *cka, /* (rows, cols) */
                           int rows, int cols);

#endif
