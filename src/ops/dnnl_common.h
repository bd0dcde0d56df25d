/* What the oneDNN paths (conv2d_dnnl.c, gemm_bf16.c) share: the error check, one CPU engine and
 * stream with the release of the primitive caches built on it, and reorders. Single-threaded callers only, like the primitive caches. */
#ifndef HAKD_OPS_DNNL_COMMON_H
#define HAKD_OPS_DNNL_COMMON_H

#include <dnnl.h>

#include "hakd/error.h"

/* Returns a negative hakd_status naming the failed call from the enclosing function. */
#define DNNL_TRY(call)                                                                          \
  do {                                                                                          \
    dnnl_status_t st_ = (call);                                                                 \
    if (st_ != dnnl_success) return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: %s: status %d", #call, (int)st_); \
  } while (0)

/* The calling thread's engine and stream, created on first use. A primitive cache passes its release
 * function (NULL: none), which ops_dnnl_release calls before the engine goes, so the code that
 * frees everything needs to know no cache. 0 or a negative hakd_status. */
int ops_dnnl_engine(dnnl_engine_t *engine, dnnl_stream_t *stream, void (*cache_release)(void));
/* Frees every registered cache's primitives, then the engine and stream. */
void ops_dnnl_release(void);
/* A reorder primitive from -> to on the shared engine, adding to the destination when accumulate. */
int ops_dnnl_reorder_create(dnnl_primitive_t *reorder, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                            int accumulate);

#endif
