/* What the oneDNN paths (conv2d_dnnl.c, gemm_bf16.c) share: the error check, one CPU engine and
 * stream, and reorders. Single-threaded callers only, like the primitive caches. */
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

/* The shared engine and stream, created on first use. 0 or a negative hakd_status. */
int ops_dnnl_engine(dnnl_engine_t *engine, dnnl_stream_t *stream);
/* Destroys them (after every primitive made on them). */
void ops_dnnl_engine_release(void);
/* A reorder primitive from -> to on the shared engine, adding to the destination when accumulate. */
int ops_dnnl_reorder_create(dnnl_primitive_t *reorder, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                            int accumulate);

#endif
