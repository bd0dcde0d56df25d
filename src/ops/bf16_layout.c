/* The blocked bfloat16 layout of CNN activations in the bf16 precision (HAKD_BF16_BLOCKED, see
 * hakd/tensor.h): conversions from and to float32 NCHW (oneDNN reorders, cached per shape) where a
 * chain of convolutions begins and ends, and the ops a CNN runs between its convolutions without
 * leaving the layout: max pooling (oneDNN's pooling primitive, cached beside the reorders;
 * inference only), global average pooling and concatenation along channels. The conversions,
 * the average pooling and the concatenation record their gradients (float32 in the blocked layout,
 * hakd/tensor.h), so bf16 training keeps the layout too. The cache is the calling thread's. */
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/dnnl_common.h"
#include "ops/ops_internal.h"

#define BF16_LAYOUT_CACHE_SIZE 64

/* the GRAD kinds carry gradients (float32 both sides) and add to the destination */
typedef enum {
  BF16_LAYOUT_TO_BLOCKED,
  BF16_LAYOUT_TO_F32,
  BF16_LAYOUT_MAXPOOL,
  BF16_LAYOUT_GRAD_TO_PLAIN,   /* += blocked float32 -> NCHW float32 (to_bf16_blocked's backward) */
  BF16_LAYOUT_GRAD_TO_BLOCKED, /* += NCHW float32 -> blocked float32 (to_f32's backward) */
  F32_LAYOUT_TO_BLOCKED,       /* NCHW float32 -> blocked float32 (HAKD_F32_BLOCKED) */
  F32_LAYOUT_TO_PLAIN          /* blocked float32 -> NCHW float32 */
} bf16_layout_kind;

typedef struct {
  int64_t dims[4];        /* of the input */
  int64_t window[3];      /* max pooling: kernel, stride, padding */
  bf16_layout_kind kind;
  int valid;
  dnnl_primitive_t prim;  /* a reorder, or the pooling */
  dnnl_memory_t from, to;
} bf16_layout_entry;

/* the calling thread's, like conv2d_dnnl.c's (threads may run forwards at once) */
static _Thread_local dnnl_engine_t bf16_layout_engine;
static _Thread_local dnnl_stream_t bf16_layout_stream;
static _Thread_local bf16_layout_entry *bf16_layout_cache; /* BF16_LAYOUT_CACHE_SIZE entries, made on first use */
static _Thread_local int bf16_layout_next_slot;

static void bf16_layout_entry_free(bf16_layout_entry *e) {
  if (e->prim) dnnl_primitive_destroy(e->prim);
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

/* PyTorch's output size (floor mode) and oneDNN's right padding of a max pooling window. */
static int64_t bf16_layout_pool_out(int64_t in, const int64_t *window) {
  return (in + 2 * window[2] - window[0]) / window[1] + 1;
}

static int bf16_layout_entry_create(bf16_layout_entry *e) {
  dnnl_memory_desc_t plain, blocked, pooled;
  dnnl_dims_t dims = {e->dims[0], e->dims[1], e->dims[2], e->dims[3]};
  int grad = e->kind == BF16_LAYOUT_GRAD_TO_PLAIN || e->kind == BF16_LAYOUT_GRAD_TO_BLOCKED;
  int f32 = grad || e->kind == F32_LAYOUT_TO_BLOCKED || e->kind == F32_LAYOUT_TO_PLAIN;
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&plain, 4, dims, dnnl_f32, dnnl_nchw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&blocked, 4, dims, f32 ? dnnl_f32 : dnnl_bf16, dnnl_nChw16c));
  const dnnl_memory_desc_t *from = &blocked, *to = &plain;
  if (e->kind == BF16_LAYOUT_MAXPOOL) {
    const int64_t *k = e->window;
    dnnl_dims_t out = {e->dims[0], e->dims[1], bf16_layout_pool_out(e->dims[2], k), bf16_layout_pool_out(e->dims[3], k)};
    dnnl_dims_t strides = {k[1], k[1]}, kernel = {k[0], k[0]}, pad_l = {k[2], k[2]};
    dnnl_dims_t pad_r = {(out[2] - 1) * k[1] + k[0] - e->dims[2] - k[2], (out[3] - 1) * k[1] + k[0] - e->dims[3] - k[2]};
    DNNL_TRY(dnnl_memory_desc_init_by_tag(&pooled, 4, out, dnnl_bf16, dnnl_nChw16c));
    dnnl_pooling_desc_t pd_desc;
    DNNL_TRY(dnnl_pooling_forward_desc_init(&pd_desc, dnnl_forward_inference, dnnl_pooling_max, &blocked, &pooled,
                                            strides, kernel, pad_l, pad_r));
    dnnl_primitive_desc_t pd;
    DNNL_TRY(dnnl_primitive_desc_create(&pd, &pd_desc, NULL, bf16_layout_engine, NULL));
    dnnl_status_t st = dnnl_primitive_create(&e->prim, pd);
    dnnl_primitive_desc_destroy(pd);
    DNNL_TRY(st);
    to = &pooled;
  } else {
    if (e->kind == BF16_LAYOUT_TO_BLOCKED || e->kind == BF16_LAYOUT_GRAD_TO_BLOCKED || e->kind == F32_LAYOUT_TO_BLOCKED)
      from = &plain, to = &blocked;
    int rc = ops_dnnl_reorder_create(&e->prim, from, to, grad);
    if (rc) return rc;
  }
  DNNL_TRY(dnnl_memory_create(&e->from, from, bf16_layout_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->to, to, bf16_layout_engine, DNNL_MEMORY_NONE));
  return 0;
}

/* dst = the primitive of `kind` on src (dims: the input's; window: max pooling's, else NULL). */
static int bf16_layout_run(const int64_t *dims, bf16_layout_kind kind, const int64_t *window, const void *src, void *dst) {
  int rc = ops_dnnl_engine(&bf16_layout_engine, &bf16_layout_stream, bf16_layout_release);
  if (rc) return rc;
  if (!bf16_layout_cache && !(bf16_layout_cache = calloc(BF16_LAYOUT_CACHE_SIZE, sizeof *bf16_layout_cache)))
    return hakd_error(HAKD_ENOMEM, "bf16 layout: out of memory for the oneDNN cache");
  int64_t win[3] = {0, 0, 0};
  if (window) memcpy(win, window, sizeof win);
  bf16_layout_entry *e = NULL;
  for (int i = 0; i < BF16_LAYOUT_CACHE_SIZE && !e; i++) {
    bf16_layout_entry *c = &bf16_layout_cache[i];
    if (c->valid && c->kind == kind && !memcmp(c->dims, dims, sizeof c->dims) && !memcmp(c->window, win, sizeof win))
      e = c;
  }
  if (!e) {
    e = &bf16_layout_cache[bf16_layout_next_slot];
    bf16_layout_next_slot = (bf16_layout_next_slot + 1) % BF16_LAYOUT_CACHE_SIZE;
    bf16_layout_entry_free(e);
    memcpy(e->dims, dims, sizeof e->dims);
    memcpy(e->window, win, sizeof win);
    e->kind = kind;
    if ((rc = bf16_layout_entry_create(e))) {
      bf16_layout_entry_free(e);
      return rc;
    }
    e->valid = 1;
  }
  DNNL_TRY(dnnl_memory_set_data_handle(e->from, (void *)src));
  DNNL_TRY(dnnl_memory_set_data_handle(e->to, dst));
  dnnl_exec_arg_t reorder_args[2] = {{DNNL_ARG_FROM, e->from}, {DNNL_ARG_TO, e->to}};
  dnnl_exec_arg_t pool_args[2] = {{DNNL_ARG_SRC, e->from}, {DNNL_ARG_DST, e->to}};
  DNNL_TRY(dnnl_primitive_execute(e->prim, bf16_layout_stream, 2, kind == BF16_LAYOUT_MAXPOOL ? pool_args : reorder_args));
  DNNL_TRY(dnnl_stream_wait(bf16_layout_stream));
  return 0;
}

/* Backward of the conversions: the gradient changes layout the other way, added to the input's
 * (a blocked tensor's gradient is float32 nChw16c, hakd/tensor.h). iarg[0]: the forward's target. */
static void bf16_layout_convert_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0];
  float *dx = hakd_grad(ctx, x);
  if (!dx || hakd_numel(x) == 0) return;
  bf16_layout_kind kind = node->iarg[0] != HAKD_F32 ? BF16_LAYOUT_GRAD_TO_PLAIN : BF16_LAYOUT_GRAD_TO_BLOCKED;
  int rc = bf16_layout_run(x->shape, kind, NULL, node->out->grad, dx);
  if (rc) hakd_ctx_fail(ctx, rc, "%s backward: %s", node->op, hakd_error_message());
}

static const char *bf16_layout_dtype_name(hakd_dtype t) {
  return t == HAKD_I32 ? "int32" : t == HAKD_F32 ? "float32" : t == HAKD_F32_BLOCKED ? "blocked float32" : "blocked bfloat16";
}

/* x (float32 NCHW, or either blocked layout when `to` is float32) in layout `to`. */
static hakd_tensor *bf16_layout_convert(hakd_ctx *ctx, hakd_tensor *x, hakd_dtype to, const char *op) {
  if (!x || hakd_ctx_status(ctx)) return NULL;
  if (x->dtype == to) return x;
  char xs[64];
  int from_ok = to == HAKD_F32 ? HAKD_IS_BLOCKED(x) : x->dtype == HAKD_F32;
  if (!from_ok || x->ndim != 4)
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: expected a 4-D %s tensor, got %s %s", op,
                         to == HAKD_F32 ? "blocked" : "float32", bf16_layout_dtype_name(x->dtype),
                         hakd_shape_str(x, xs, sizeof xs));
  if ((to == HAKD_BF16_BLOCKED || x->dtype == HAKD_BF16_BLOCKED) && !hakd_bf16_supported()) {
    int why = hakd_bf16_check();
    return hakd_ctx_fail(ctx, why, "%s: %s", op, hakd_error_message());
  }
  hakd_tensor *y = hakd_tensor_new(ctx, to, 4, x->shape);
  if (!y || hakd_numel(y) == 0) return y;
  bf16_layout_kind kind = to == HAKD_BF16_BLOCKED     ? BF16_LAYOUT_TO_BLOCKED
                          : to == HAKD_F32_BLOCKED    ? F32_LAYOUT_TO_BLOCKED
                          : x->dtype == HAKD_F32_BLOCKED ? F32_LAYOUT_TO_PLAIN
                                                         : BF16_LAYOUT_TO_F32;
  int rc = bf16_layout_run(x->shape, kind, NULL, x->data, y->data);
  if (rc) return hakd_ctx_fail(ctx, rc, "%s %s: %s", op, hakd_shape_str(x, xs, sizeof xs), hakd_error_message());
  hakd_node *node = hakd_record(ctx, op, bf16_layout_convert_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = to;
    hakd_node_reads_no_data(ctx, node); /* the gradient alone */
  }
  return y;
}

hakd_tensor *hakd_to_bf16_blocked(hakd_ctx *ctx, hakd_tensor *x) {
  return bf16_layout_convert(ctx, x, HAKD_BF16_BLOCKED, "to_bf16_blocked");
}

hakd_tensor *hakd_to_f32(hakd_ctx *ctx, hakd_tensor *x) { return bf16_layout_convert(ctx, x, HAKD_F32, "to_f32"); }

hakd_tensor *hakd_to_f32_blocked(hakd_ctx *ctx, hakd_tensor *x) {
  return bf16_layout_convert(ctx, x, HAKD_F32_BLOCKED, "to_f32_blocked");
}

/* ---- ops on blocked tensors (ops_internal.h): max pooling for inference; global average
 * pooling and concatenation with their gradients ---- */

/* A blocked tensor's values are planes of (N x ceil(C / 16)) blocks of H x W x 16 bfloat16. */
static int64_t bf16_blocked_planes(const hakd_tensor *x) { return x->shape[0] * ((x->shape[1] + 15) / 16); }

/* Max pooling on this layout carries no gradient (a CNN's training chain starts after its stem's
 * pooling, layer_chain_begin), so hakd_record never puts it on the tape; it calls it for the
 * per-op accounting of profilers (bench/op_profile.c hooks hakd_record). */
static void bf16_layout_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inference only, no backward", node->op);
}

/* Inference only: refuses recording a gradient for x (max pooling). */
static int bf16_blocked_check(hakd_ctx *ctx, const hakd_tensor *x, const char *op) {
  if (hakd_ctx_grad(ctx) && x->requires_grad)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: blocked bfloat16 input is inference only (gradient recording is on)", op),
           -1;
  return 0;
}

hakd_tensor *bf16_blocked_maxpool2d(hakd_ctx *ctx, hakd_tensor *x, int kernel, int stride, int padding) {
  if (bf16_blocked_check(ctx, x, "maxpool2d")) return NULL;
  int64_t window[3] = {kernel, stride, padding};
  int64_t shape[4] = {x->shape[0], x->shape[1], bf16_layout_pool_out(x->shape[2], window),
                      bf16_layout_pool_out(x->shape[3], window)};
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_BF16_BLOCKED, 4, shape);
  if (!y || hakd_numel(y) == 0) return y;
  int rc = bf16_layout_run(x->shape, BF16_LAYOUT_MAXPOOL, window, x->data, y->data);
  if (rc) return hakd_ctx_fail(ctx, rc, "maxpool2d (blocked bfloat16): %s", hakd_error_message());
  hakd_record(ctx, "maxpool2d", bf16_layout_backward, y, 1, &x);
  return y;
}

/* dx += dy / (H W) at every position (gradients float32 blocked). */
static void bf16_blocked_global_avgpool_backward(hakd_ctx *ctx, hakd_node *node) {
  hakd_tensor *x = node->in[0];
  float *dx = hakd_grad(ctx, x);
  if (!dx) return;
  int64_t planes = bf16_blocked_planes(x), hw = x->shape[2] * x->shape[3];
  const float *dy = node->out->grad;
  float inv = 1.0f / (float)hw;
#pragma omp parallel for schedule(static) if (planes * hw > 32768)
  for (int64_t p = 0; p < planes; p++)
    for (int64_t i = 0; i < hw; i++)
      for (int c = 0; c < 16; c++) dx[(p * hw + i) * 16 + c] += dy[p * 16 + c] * inv;
}

hakd_tensor *bf16_blocked_global_avgpool(hakd_ctx *ctx, hakd_tensor *x) {
  int64_t shape[4] = {x->shape[0], x->shape[1], 1, 1}, planes = bf16_blocked_planes(x), hw = x->shape[2] * x->shape[3];
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_BF16_BLOCKED, 4, shape);
  if (!y || hakd_numel(y) == 0) return y;
  const uint16_t *xd = x->data;
  uint16_t *yd = y->data;
#pragma omp parallel for schedule(static) if (planes * hw > 32768)
  for (int64_t p = 0; p < planes; p++) {
    double sum[16] = {0}; /* whole maps: in double, as the float32 op */
    for (int64_t i = 0; i < hw; i++)
      for (int c = 0; c < 16; c++) sum[c] += bf16_value(xd[(p * hw + i) * 16 + c]);
    for (int c = 0; c < 16; c++) yd[p * 16 + c] = bf16_round((float)(sum[c] / (double)hw));
  }
  hakd_node *node = hakd_record(ctx, "adaptive_avgpool2d", bf16_blocked_global_avgpool_backward, y, 1, &x);
  hakd_node_reads_no_data(ctx, node);
  return y;
}

/* Each input's gradient is its run of channel blocks of the output's (all but the last input
 * hold whole blocks of 16, so the blocks line up). */
static void bf16_blocked_concat_backward(hakd_ctx *ctx, hakd_node *node) {
  const hakd_tensor *y = node->out;
  int64_t block = y->shape[2] * y->shape[3] * 16, y_blocks = (y->shape[1] + 15) / 16, offset = 0;
  const float *dy = y->grad;
  for (int k = 0; k < node->n_in; k++) {
    hakd_tensor *x = node->in[k];
    int64_t blocks = (x->shape[1] + 15) / 16;
    float *dx = hakd_grad(ctx, x);
    if (hakd_ctx_status(ctx)) return;
    if (dx) {
      int64_t len = blocks * block;
#pragma omp parallel for schedule(static) if (y->shape[0] * len > 32768)
      for (int64_t i = 0; i < y->shape[0]; i++) {
        const float *src = dy + (i * y_blocks + offset) * block;
        float *dst = dx + i * len;
        for (int64_t j = 0; j < len; j++) dst[j] += src[j];
      }
    }
    offset += blocks;
  }
}

hakd_tensor *bf16_blocked_concat_channels(hakd_ctx *ctx, int n, hakd_tensor *const *xs) {
  int64_t channels = 0;
  int whole_blocks = 1;
  for (int k = 0; k < n; k++) {
    if (k + 1 < n && xs[k]->shape[1] % 16) whole_blocks = 0;
    channels += xs[k]->shape[1];
  }
  if (!whole_blocks) { /* a channel count off the blocks of 16 (a width multiplier): through float32 */
    enum { MAX_PARTS = 16 };
    hakd_tensor *plain[MAX_PARTS];
    if (n > MAX_PARTS) return hakd_ctx_fail(ctx, HAKD_EINVAL, "concat: more than %d blocked bfloat16 inputs", MAX_PARTS);
    for (int k = 0; k < n; k++)
      if (!(plain[k] = hakd_to_f32(ctx, xs[k]))) return NULL;
    return hakd_to_bf16_blocked(ctx, hakd_concat(ctx, n, plain, 1));
  }
  int64_t shape[4] = {xs[0]->shape[0], channels, xs[0]->shape[2], xs[0]->shape[3]};
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_BF16_BLOCKED, 4, shape);
  if (!y || hakd_numel(y) == 0) return y;
  /* per image, the inputs' channel blocks one after the other */
  int64_t block = shape[2] * shape[3] * 16, y_blocks = (channels + 15) / 16, offset = 0;
  for (int k = 0; k < n; k++) {
    int64_t blocks = (xs[k]->shape[1] + 15) / 16;
    const uint16_t *src = xs[k]->data;
    uint16_t *dst = (uint16_t *)y->data + offset * block;
#pragma omp parallel for schedule(static) if (shape[0] * blocks * block > 32768)
    for (int64_t i = 0; i < shape[0]; i++)
      memcpy(dst + i * y_blocks * block, src + i * blocks * block, (size_t)(blocks * block) * sizeof *src);
    offset += blocks;
  }
  hakd_node *node = hakd_record(ctx, "concat", bf16_blocked_concat_backward, y, n, (hakd_tensor **)xs);
  hakd_node_reads_no_data(ctx, node);
  return y;
}
