/* Conversions between float32 NCHW and the blocked bfloat16 layout of CNN activations in the bf16
 * precision (HAKD_BF16_BLOCKED, see hakd/tensor.h): oneDNN reorders, cached per shape. They run
 * where a chain of convolutions begins and ends, so the convolutions in between read and write
 * bfloat16 without converting. The cache is the calling thread's. */
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/dnnl_common.h"

#define BF16_LAYOUT_CACHE_SIZE 64

typedef struct {
  int64_t dims[4];
  int to_blocked;
  int valid;
  dnnl_primitive_t reorder;
  dnnl_memory_t from, to;
} bf16_layout_entry;

/* the calling thread's, like conv2d_dnnl.c's (threads may run forwards at once) */
static _Thread_local dnnl_engine_t bf16_layout_engine;
static _Thread_local dnnl_stream_t bf16_layout_stream;
static _Thread_local bf16_layout_entry *bf16_layout_cache; /* BF16_LAYOUT_CACHE_SIZE entries, made on first use */
static _Thread_local int bf16_layout_next_slot;

static void bf16_layout_entry_free(bf16_layout_entry *e) {
  if (e->reorder) dnnl_primitive_destroy(e->reorder);
  if (e->from) dnnl_memory_destroy(e->from);
  if (e->to) dnnl_memory_destroy(e->to);
  memset(e, 0, sizeof *e);
}

static void bf16_layout_release(void) {
  if (bf16_layout_cache)
    for (int i = 0; i < BF16_LAYOUT_CACHE_SIZE; i++) bf16_layout_entry_free(&bf16_layout_cache[i]);
  free(bf16_layout_cache);
  bf16_layout_cache = NULL;
  bf16_layout_next_slot = 0;
  bf16_layout_engine = NULL;
  bf16_layout_stream = NULL;
}

static int bf16_layout_entry_create(bf16_layout_entry *e) {
  dnnl_memory_desc_t plain, blocked;
  dnnl_dims_t dims = {e->dims[0], e->dims[1], e->dims[2], e->dims[3]};
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_nchw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&blocked, 4, dims, dnnl_bf16, dnnl_nChw16c));
  const dnnl_memory_desc_t *from = e->to_blocked ? &plain : &blocked, *to = e->to_blocked ? &blocked : &plain;
  int rc = ops_dnnl_reorder_create(&e->reorder, from, to, 0);
  if (rc) return rc;
  DNNL_TRY(dnnl_memory_create(&e->from, from, bf16_layout_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->to, to, bf16_layout_engine, DNNL_MEMORY_NONE));
  return 0;
}

/* dst = src in the other layout (to_blocked: float32 NCHW -> blocked bf16, else back). */
static int bf16_layout_run(const int64_t *dims, int to_blocked, const void *src, void *dst) {
  int rc = ops_dnnl_engine(&bf16_layout_engine, &bf16_layout_stream, bf16_layout_release);
  if (rc) return rc;
  if (!bf16_layout_cache && !(bf16_layout_cache = calloc(BF16_LAYOUT_CACHE_SIZE, sizeof *bf16_layout_cache)))
    return hakd_error(HAKD_ENOMEM, "to_f32/to_bf16_blocked: out of memory for the oneDNN cache");
  bf16_layout_entry *e = NULL;
  for (int i = 0; i < BF16_LAYOUT_CACHE_SIZE && !e; i++) {
    bf16_layout_entry *c = &bf16_layout_cache[i];
    if (c->valid && c->to_blocked == to_blocked && !memcmp(c->dims, dims, sizeof c->dims)) e = c;
  }
  if (!e) {
    e = &bf16_layout_cache[bf16_layout_next_slot];
    bf16_layout_next_slot = (bf16_layout_next_slot + 1) % BF16_LAYOUT_CACHE_SIZE;
    bf16_layout_entry_free(e);
    memcpy(e->dims, dims, sizeof e->dims);
    e->to_blocked = to_blocked;
    if ((rc = bf16_layout_entry_create(e))) {
      bf16_layout_entry_free(e);
      return rc;
    }
    e->valid = 1;
  }
  DNNL_TRY(dnnl_memory_set_data_handle(e->from, (void *)src));
  DNNL_TRY(dnnl_memory_set_data_handle(e->to, dst));
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, e->from}, {DNNL_ARG_TO, e->to}};
  DNNL_TRY(dnnl_primitive_execute(e->reorder, bf16_layout_stream, 2, args));
  DNNL_TRY(dnnl_stream_wait(bf16_layout_stream));
  return 0;
}

/* The conversions carry no gradient yet (training keeps its activations in float32), so
 * hakd_record never puts them on the tape; they call it for the per-op accounting of profilers
 * (bench/op_profile.c hooks hakd_record). */
static void bf16_layout_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inference only, no backward", node->op);
}

static hakd_tensor *bf16_layout_convert(hakd_ctx *ctx, hakd_tensor *x, hakd_dtype to, const char *op) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  if (x->dtype == to) return x;
  char xs[64];
  hakd_dtype from = to == HAKD_F32 ? HAKD_BF16_BLOCKED : HAKD_F32;
  if (x->dtype != from || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: expected a 4-D %s tensor, got %s %s", op,
                         from == HAKD_F32 ? "float32" : "blocked bfloat16",
                         x->dtype == HAKD_I32 ? "int32" : x->dtype == HAKD_F32 ? "float32" : "blocked bfloat16",
                         hakd_shape_str(x, xs, sizeof xs));
  if (hakd_ctx_grad(ctx) && x->requires_grad)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inference only (gradient recording is on)", op);
  if (!hakd_bf16_supported()) {
    int why = hakd_bf16_check();
    return hakd_ctx_fail(ctx, why, "%s: %s", op, hakd_error_message());
  }
  hakd_tensor *y = hakd_tensor_new(ctx, to, 4, x->shape);
  if (!y || hakd_numel(y) == 0) return y;
  int rc = bf16_layout_run(x->shape, to == HAKD_BF16_BLOCKED, x->data, y->data);
  if (rc) return hakd_ctx_fail(ctx, rc, "%s %s: %s", op, hakd_shape_str(x, xs, sizeof xs), hakd_error_message());
  hakd_record(ctx, op, bf16_layout_backward, y, 1, &x);
  return y;
}

hakd_tensor *hakd_to_bf16_blocked(hakd_ctx *ctx, hakd_tensor *x) {
  return bf16_layout_convert(ctx, x, HAKD_BF16_BLOCKED, "to_bf16_blocked");
}

hakd_tensor *hakd_to_f32(hakd_ctx *ctx, hakd_tensor *x) { return bf16_layout_convert(ctx, x, HAKD_F32, "to_f32"); }
