#include "ops/dnnl_common.h"

#include <stddef.h>

#include "ops/conv2d.h"

/* one engine and stream per thread (a stream is not to be shared by concurrent callers) */
static _Thread_local dnnl_engine_t ops_engine;
static _Thread_local dnnl_stream_t ops_stream;

int ops_dnnl_engine(dnnl_engine_t *engine, dnnl_stream_t *stream) {
  if (!ops_engine) {
    conv2d_thread_state_used();
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

void ops_dnnl_engine_release(void) {
  if (ops_stream) dnnl_stream_destroy(ops_stream);
  if (ops_engine) dnnl_engine_destroy(ops_engine);
  ops_stream = NULL;
  ops_engine = NULL;
}

int ops_dnnl_reorder_create(dnnl_primitive_t *reorder, const dnnl_memory_desc_t *from, const dnnl_memory_desc_t *to,
                            int accumulate) {
  dnnl_engine_t engine = NULL;
  dnnl_stream_t stream = NULL;
  int rc = ops_dnnl_engine(&engine, &stream);
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
