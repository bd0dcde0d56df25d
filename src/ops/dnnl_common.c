#include "ops/dnnl_common.h"

#include <stddef.h>

#include "ops/scratch.h"

/* one engine and stream per thread (a stream is not to be shared by concurrent callers) */
static _Thread_local dnnl_engine_t ops_engine;
static _Thread_local dnnl_stream_t ops_stream;
/* release functions of the thread's primitive caches (a handful of files; registered once each) */
#define OPS_DNNL_MAX_CACHES 8
static _Thread_local void (*ops_cache_release[OPS_DNNL_MAX_CACHES])(void);
static _Thread_local int ops_n_caches;

int ops_dnnl_engine(dnnl_engine_t *engine, dnnl_stream_t *stream, void (*cache_release)(void)) {
  if (cache_release) {
    int known = 0;
    for (int i = 0; i < ops_n_caches; i++) known |= ops_cache_release[i] == cache_release;
    if (!known && ops_n_caches < OPS_DNNL_MAX_CACHES) ops_cache_release[ops_n_caches++] = cache_release;
  }
  if (!ops_engine) {
    ops_thread_on_release(ops_dnnl_release);
    DNNL_TRY(dnnl_engine_create(&ops_engine, dnnl_cpu, 0));
    dnnl_status_t st = dnnl_stream_create(&ops_stream, ops_engine, dnnl_stream_default_flags);
    if (st != dnnl_success) {
      dnnl_engine_destroy(ops_engine);
      ops_engine = NULL;
      return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: stream creation: status %d", (int)st);
    }
  }
  *engine = ops_engine;
  *stream = ops_stream;
  return 0;
}

void ops_dnnl_release(void) {
  for (int i = 0; i < ops_n_caches; i++) ops_cache_release[i]();
  if (ops_stream) dnnl_stream_destroy(ops_stream);
  if (ops_engine) dnnl_engine_destroy(ops_engine);
  ops_stream = NULL;
  ops_engine = NULL;
}

int ops_dnnl_reorder_create(dnnl_primitive_t *reorder, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                            int accumulate) {
  dnnl_engine_t engine = NULL;
  dnnl_stream_t stream = NULL;
  int rc = ops_dnnl_engine(&engine, &stream, NULL);
  if (rc) return rc;
  dnnl_primitive_attr_t attr = NULL;
  dnnl_post_ops_t post_ops = NULL;
  dnnl_primitive_desc_t pd = NULL;
  dnnl_status_t st = dnnl_primitive_attr_create(&attr);
  if (st == dnnl_success && accumulate) {
    st = dnnl_post_ops_create(&post_ops);
    if (st == dnnl_success) st = dnnl_post_ops_append_sum(post_ops, 1.0f);
    if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, post_ops);
  }
  if (st == dnnl_success) st = dnnl_reorder_primitive_desc_create(&pd, from, engine, to, engine, attr);
  if (st == dnnl_success) st = dnnl_primitive_create(reorder, pd);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (post_ops) dnnl_post_ops_destroy(post_ops);
  if (attr) dnnl_primitive_attr_destroy(attr);
  if (st != dnnl_success) return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: reorder creation: status %d", (int)st);
  return 0;
}
