/* conv2d on oneDNN (libdnnl 2.x C API): forward, backward-data and backward-weights primitives,
 * created once per shape and kept in a small cache with the memory objects that wrap our
 * pointers. The primitives choose their own layouts (format "any", usually channel-blocked);
 * reorders convert from/to our NCHW tensors through step scratch, and gradients are accumulated
 * (+=) by reorders with a sum post-op. Reordered tensors and oneDNN's (user-managed) scratchpad
 * live in the ops' scratch block (scratch.h), so a steady-state call allocates nothing. The engine, stream
 * and cache belong to the calling thread (thread-local, freed when the thread exits; see
 * ops_thread_on_release in scratch.h), so threads running forwards at the same time share nothing. */
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/conv2d.h"
#include "ops/dnnl_common.h"
#include "ops/scratch.h"

#define CONV2D_DNNL_CACHE_SIZE 128
#define CONV2D_DNNL_MAX_ARGS 4

/* One tensor argument of a primitive: `user` wraps our plain-layout pointer; when the primitive
 * wants another layout (or the result must be accumulated), `inner` lives in step scratch and
 * `reorder` converts user -> inner (inputs) or inner -> user (outputs, with += when accumulating;
 * an accumulated output also has `reorder_set`, the same without +=, for a destination that is
 * to be written: a fresh gradient, hakd_grad_fresh). */
typedef struct {
  int id; /* DNNL_ARG_* */
  int is_output;
  dnnl_memory_t user, inner;
  dnnl_primitive_t reorder, reorder_set;
  size_t inner_bytes;
  int same_layout; /* an accumulated output in the primitive's own layout: written in place when set */
} conv2d_dnnl_arg;

typedef struct {
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t prim;
  dnnl_memory_t scratchpad;
  size_t scratchpad_bytes;
  conv2d_dnnl_arg args[CONV2D_DNNL_MAX_ARGS];
  int n_args;
} conv2d_dnnl_op;

typedef struct {
  conv2d_shape shape;
  int valid, has_backward;
  conv2d_dnnl_op forward, backward_data, backward_weights;
} conv2d_dnnl_entry;

static _Thread_local dnnl_engine_t conv2d_dnnl_engine;
static _Thread_local dnnl_stream_t conv2d_dnnl_stream;
static _Thread_local conv2d_dnnl_entry *conv2d_dnnl_cache; /* CONV2D_DNNL_CACHE_SIZE entries, made on first use */
static _Thread_local int conv2d_dnnl_next_slot;            /* round-robin eviction when the cache is full */

static void conv2d_dnnl_op_free(conv2d_dnnl_op *op) {
  for (int i = 0; i < op->n_args; i++) {
    conv2d_dnnl_arg *a = &op->args[i];
    if (a->reorder) dnnl_primitive_destroy(a->reorder);
    if (a->reorder_set) dnnl_primitive_destroy(a->reorder_set);
    if (a->inner) dnnl_memory_destroy(a->inner);
    if (a->user) dnnl_memory_destroy(a->user);
  }
  if (op->scratchpad) dnnl_memory_destroy(op->scratchpad);
  if (op->prim) dnnl_primitive_destroy(op->prim);
  if (op->pd) dnnl_primitive_desc_destroy(op->pd);
  memset(op, 0, sizeof *op);
}

static void conv2d_dnnl_entry_free(conv2d_dnnl_entry *e) {
  conv2d_dnnl_op_free(&e->forward);
  conv2d_dnnl_op_free(&e->backward_data);
  conv2d_dnnl_op_free(&e->backward_weights);
  e->valid = e->has_backward = 0;
}

static void conv2d_dnnl_release(void) {
  if (conv2d_dnnl_cache)
    for (int i = 0; i < CONV2D_DNNL_CACHE_SIZE; i++) conv2d_dnnl_entry_free(&conv2d_dnnl_cache[i]);
  free(conv2d_dnnl_cache);
  conv2d_dnnl_cache = NULL;
  conv2d_dnnl_next_slot = 0;
  conv2d_dnnl_stream = NULL;
  conv2d_dnnl_engine = NULL;
}

static int conv2d_dnnl_init_engine(void) { return ops_dnnl_engine(&conv2d_dnnl_engine, &conv2d_dnnl_stream, conv2d_dnnl_release); }

/* Our plain layouts: activations NCHW, weights (G, Cout/G, Cin/G, kh, kw) == (Cout, Cin/G, kh, kw). */
typedef struct {
  dnnl_memory_desc_t src, weights, bias, dst;       /* ours: plain float32, or blocked bf16 (src, dst) */
  /* our gradients of src and dst: as src and dst when plain, float32 nChw16c when blocked (the
   * gradient of a blocked activation, hakd/tensor.h; reorders round it to the primitive's bf16) */
  dnnl_memory_desc_t diff_src, diff_dst;
  dnnl_memory_desc_t src_any, weights_any, dst_any; /* float32 results, layout left to the primitive */
  /* what the products read: float32, or bfloat16 in the bf16 precision (the reorders round) */
  dnnl_memory_desc_t src_in, weights_in, dst_in;
  dnnl_dims_t strides, dilates, pad_l, pad_r;
} conv2d_dnnl_descs;

static int conv2d_dnnl_descs_init(conv2d_dnnl_descs *d, const conv2d_shape *s) {
  dnnl_dims_t src = {s->n, s->cin, s->h, s->w}, dst = {s->n, s->cout, s->oh, s->ow}, bias = {s->cout};
  dnnl_dims_t weights = {s->groups, s->cout / s->groups, s->cin / s->groups, s->kh, s->kw};
  int grouped = s->groups > 1, wdims = grouped ? 5 : 4;
  const int64_t *wshape = grouped ? weights : weights + 1;
  dnnl_data_type_t src_type = s->blocked_f32 ? dnnl_f32 : dnnl_bf16, dst_type = s->dst_f32 || s->blocked_f32 ? dnnl_f32 : dnnl_bf16;
  DNNL_TRY(s->src_blocked ? dnnl_memory_desc_init_by_tag(&d->src, 4, src, src_type, dnnl_nChw16c)
                          : dnnl_memory_desc_init_by_tag(&d->src, 4, src, dnnl_f32, dnnl_nchw));
  DNNL_TRY(s->dst_blocked ? dnnl_memory_desc_init_by_tag(&d->dst, 4, dst, dst_type, dnnl_nChw16c)
                          : dnnl_memory_desc_init_by_tag(&d->dst, 4, dst, dnnl_f32, dnnl_nchw));
  if (s->band_of_h) { /* rows of NCHW images band_of_h rows high: channel stride band_of_h * w */
    dnnl_dims_t src_strides = {s->cin * s->band_of_h * s->w, s->band_of_h * s->w, s->w, 1};
    dnnl_dims_t dst_strides = {s->cout * s->band_of_h * s->ow, s->band_of_h * s->ow, s->ow, 1};
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&d->src, 4, src, dnnl_f32, src_strides));
    DNNL_TRY(dnnl_memory_desc_init_by_strides(&d->dst, 4, dst, dnnl_f32, dst_strides));
  }
  d->diff_src = d->src;
  d->diff_dst = d->dst;
  if (s->src_blocked) DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->diff_src, 4, src, dnnl_f32, dnnl_nChw16c));
  if (s->dst_blocked) DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->diff_dst, 4, dst, dnnl_f32, dnnl_nChw16c));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->bias, 1, bias, dnnl_f32, dnnl_x));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->weights, wdims, wshape, dnnl_f32, grouped ? dnnl_goihw : dnnl_oihw));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->src_any, 4, src, dnnl_f32, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->dst_any, 4, dst, dnnl_f32, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->weights_any, wdims, wshape, dnnl_f32, dnnl_format_tag_any));
  dnnl_data_type_t in_type = s->bf16 ? dnnl_bf16 : dnnl_f32;
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->src_in, 4, src, in_type, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->dst_in, 4, dst, in_type, dnnl_format_tag_any));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&d->weights_in, wdims, wshape, in_type, dnnl_format_tag_any));
  /* oneDNN counts dilation from 0, and its right padding is whatever makes the PyTorch output
   * size exact (it may be smaller than the left padding when the last window does not fit). */
  int64_t in[2] = {s->h, s->w}, out[2] = {s->oh, s->ow}, k[2] = {s->kh, s->kw};
  for (int i = 0; i < 2; i++) {
    d->strides[i] = s->stride;
    d->dilates[i] = s->dilation - 1;
    d->pad_l[i] = s->pad;
    d->pad_r[i] = (out[i] - 1) * s->stride + (k[i] - 1) * s->dilation + 1 - in[i] - s->pad;
  }
  return 0;
}

/* Adds argument `id` of op->pd (queried with `query`) whose user layout is `user_md`. */
static int conv2d_dnnl_arg_add(conv2d_dnnl_op *op, int id, dnnl_query_t query, int index,
                               const dnnl_memory_desc_t *user_md, int is_output, int accumulate) {
  conv2d_dnnl_arg *a = &op->args[op->n_args++];
  a->id = id;
  a->is_output = is_output;
  const dnnl_memory_desc_t *prim_md = dnnl_primitive_desc_query_md(op->pd, query, index);
  if (!prim_md) return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: no memory descriptor for argument %d", id);
  DNNL_TRY(dnnl_memory_create(&a->user, user_md, conv2d_dnnl_engine, DNNL_MEMORY_NONE));
  a->same_layout = dnnl_memory_desc_equal(user_md, prim_md);
  if (a->same_layout && !accumulate) return 0;
  a->inner_bytes = dnnl_memory_desc_get_size(prim_md);
  DNNL_TRY(dnnl_memory_create(&a->inner, prim_md, conv2d_dnnl_engine, DNNL_MEMORY_NONE));
  if (!is_output) return ops_dnnl_reorder_create(&a->reorder, user_md, prim_md, 0);
  int rc = ops_dnnl_reorder_create(&a->reorder, prim_md, user_md, accumulate);
  return rc || !accumulate ? rc : ops_dnnl_reorder_create(&a->reorder_set, prim_md, user_md, 0);
}

/* Finishes op->pd's primitive and its user-managed scratchpad. */
static int conv2d_dnnl_op_finish(conv2d_dnnl_op *op) {
  DNNL_TRY(dnnl_primitive_create(&op->prim, op->pd));
  const dnnl_memory_desc_t *md = dnnl_primitive_desc_query_md(op->pd, dnnl_query_scratchpad_md, 0);
  op->scratchpad_bytes = md ? dnnl_memory_desc_get_size(md) : 0;
  if (op->scratchpad_bytes) DNNL_TRY(dnnl_memory_create(&op->scratchpad, md, conv2d_dnnl_engine, DNNL_MEMORY_NONE));
  return 0;
}

/* The post-ops of a fused forward: sum (the residual already in dst), then ReLU or ReLU6. */
static dnnl_status_t conv2d_dnnl_post_ops(dnnl_primitive_attr_t attr, const conv2d_shape *s) {
  if (!s->post_sum && s->post_act == HAKD_ACT_NONE) return dnnl_success;
  dnnl_post_ops_t po;
  dnnl_status_t st = dnnl_post_ops_create(&po);
  if (st != dnnl_success) return st;
  if (s->post_sum) st = dnnl_post_ops_append_sum(po, 1.0f);
  if (st == dnnl_success && s->post_act == HAKD_ACT_RELU)
    st = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_relu, 0.0f, 0.0f);
  if (st == dnnl_success && s->post_act == HAKD_ACT_RELU6)
    st = dnnl_post_ops_append_eltwise(po, 1.0f, dnnl_eltwise_clip, 0.0f, 6.0f);
  if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, po);
  dnnl_post_ops_destroy(po);
  return st;
}

/* post: the shape whose post-ops the primitive applies (forward), or NULL. */
static int conv2d_dnnl_pd_create(dnnl_primitive_desc_t *pd, const void *op_desc, const_dnnl_primitive_desc_t hint,
                                 const conv2d_shape *post) {
  dnnl_primitive_attr_t attr;
  DNNL_TRY(dnnl_primitive_attr_create(&attr));
  dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  if (st == dnnl_success && post) st = conv2d_dnnl_post_ops(attr, post);
  if (st == dnnl_success) st = dnnl_primitive_desc_create(pd, op_desc, attr, conv2d_dnnl_engine, hint);
  dnnl_primitive_attr_destroy(attr);
  if (st != dnnl_success)
    return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: no convolution implementation: status %d", (int)st);
  return 0;
}

static int conv2d_dnnl_forward_create(conv2d_dnnl_entry *e, const conv2d_dnnl_descs *d) {
  const conv2d_shape *s = &e->shape;
  conv2d_dnnl_op *op = &e->forward;
  dnnl_convolution_desc_t cd;
  DNNL_TRY(dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct, &d->src_in,
                                                      &d->weights_in, s->has_bias ? &d->bias : NULL,
                                                      s->dst_blocked ? &d->dst : &d->dst_any, d->strides, d->dilates,
                                                      d->pad_l, d->pad_r));
  int rc = conv2d_dnnl_pd_create(&op->pd, &cd, NULL, s);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_SRC, dnnl_query_src_md, 0, &d->src, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_WEIGHTS, dnnl_query_weights_md, 0, &d->weights, 0, 0);
  if (!rc && s->has_bias) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_BIAS, dnnl_query_weights_md, 1, &d->bias, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DST, dnnl_query_dst_md, 0, &d->dst, 1, 0);
  return rc ? rc : conv2d_dnnl_op_finish(op);
}

static int conv2d_dnnl_backward_create(conv2d_dnnl_entry *e, const conv2d_dnnl_descs *d) {
  const conv2d_shape *s = &e->shape;
  conv2d_dnnl_op *op = &e->backward_data;
  dnnl_convolution_desc_t cd;
  DNNL_TRY(dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &d->src_any, &d->weights_in,
                                                            &d->dst_in, d->strides, d->dilates, d->pad_l, d->pad_r));
  int rc = conv2d_dnnl_pd_create(&op->pd, &cd, e->forward.pd, NULL);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, 0, &d->diff_dst, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_WEIGHTS, dnnl_query_weights_md, 0, &d->weights, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DIFF_SRC, dnnl_query_diff_src_md, 0, &d->diff_src, 1, 1);
  if (!rc) rc = conv2d_dnnl_op_finish(op);
  if (rc) return rc;
  op = &e->backward_weights;
  DNNL_TRY(dnnl_dilated_convolution_backward_weights_desc_init(
      &cd, dnnl_convolution_direct, &d->src_in, &d->weights_any, s->has_bias ? &d->bias : NULL, &d->dst_in,
      d->strides, d->dilates, d->pad_l, d->pad_r));
  rc = conv2d_dnnl_pd_create(&op->pd, &cd, e->forward.pd, NULL);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_SRC, dnnl_query_src_md, 0, &d->src, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DIFF_DST, dnnl_query_diff_dst_md, 0, &d->diff_dst, 0, 0);
  if (!rc) rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DIFF_WEIGHTS, dnnl_query_diff_weights_md, 0, &d->weights, 1, 1);
  if (!rc && s->has_bias)
    rc = conv2d_dnnl_arg_add(op, DNNL_ARG_DIFF_BIAS, dnnl_query_diff_weights_md, 1, &d->bias, 1, 1);
  return rc ? rc : conv2d_dnnl_op_finish(op);
}

/* Whether oneDNN computes the forward of s with a direct JIT kernel ("jit:avx512_core" and the
 * like, not "gemm:jit" or "ref"): those loop only over the kernel rows and columns that overlap
 * the input for each output block (bench/bench_kernels: the ASPP's rate-12 3x3 on 16x16 maps at
 * 400-665 nominal GFLOP/s, above the 211 peak, so at least 68% of its products, the padded ones,
 * are never computed), while oneDNN's GEMM convolution multiplies the padding like im2col. The
 * answer comes from a primitive descriptor made and dropped here (no JIT code, no cache slot of the
 * primitives) and is remembered per shape in a small per-thread table. */
#define CONV2D_DNNL_DIRECT_MEMO 256 /* shapes; a miss costs a primitive descriptor (0.1-1 ms) */
static _Thread_local struct {
  conv2d_shape shape;
  int direct[3];      /* forward, backward data, backward weights */
  int backward_known; /* direct[1], direct[2] asked (only when a backward wants them) */
} conv2d_dnnl_direct_memo[CONV2D_DNNL_DIRECT_MEMO];
static _Thread_local int conv2d_dnnl_direct_n, conv2d_dnnl_direct_next;

static int conv2d_dnnl_pd_is_direct(const_dnnl_primitive_desc_t pd) {
  const char *impl = NULL;
  return dnnl_primitive_desc_query(pd, dnnl_query_impl_info_str, 0, &impl) == dnnl_success && impl &&
         strncmp(impl, "jit", 3) == 0 && !strstr(impl, "gemm");
}

/* The backward primitives have limits of their own on padding and dilation: the r50-d8 ASPP's
 * rate-12 3x3 on 32x32 maps, 2048 -> 256 channels, runs its backward data as "gemm:jit", col2im
 * over all nine taps, 103-162 ms per 2-image step under ONEDNN_VERBOSE, while its forward and
 * weight gradient run direct kernels. So the backward answers are asked separately, with the
 * forward's descriptor as the hint the real backward primitives get. */
static void conv2d_dnnl_backward_direct(int direct[2], const conv2d_dnnl_descs *d, const conv2d_shape *s,
                                        const_dnnl_primitive_desc_t fwd) {
  dnnl_convolution_desc_t cd;
  dnnl_primitive_desc_t pd = NULL;
  if (dnnl_dilated_convolution_backward_data_desc_init(&cd, dnnl_convolution_direct, &d->src_any, &d->weights_in,
                                                       &d->dst_in, d->strides, d->dilates, d->pad_l,
                                                       d->pad_r) == dnnl_success &&
      !conv2d_dnnl_pd_create(&pd, &cd, fwd, NULL)) {
    direct[0] = conv2d_dnnl_pd_is_direct(pd);
    dnnl_primitive_desc_destroy(pd);
  }
  pd = NULL;
  if (dnnl_dilated_convolution_backward_weights_desc_init(&cd, dnnl_convolution_direct, &d->src_in,
                                                          &d->weights_any, s->has_bias ? &d->bias : NULL,
                                                          &d->dst_in, d->strides, d->dilates, d->pad_l,
                                                          d->pad_r) == dnnl_success &&
      !conv2d_dnnl_pd_create(&pd, &cd, fwd, NULL)) {
    direct[1] = conv2d_dnnl_pd_is_direct(pd);
    dnnl_primitive_desc_destroy(pd);
  }
}

/* Whether oneDNN's primitive `which` (0 forward, 1 backward data, 2 backward weights) of s is a
 * direct kernel, from the memo or asked now (0 also when no primitive can be made). */
static int conv2d_dnnl_is_direct(const conv2d_shape *s, int which) {
  int i = 0;
  while (i < conv2d_dnnl_direct_n && memcmp(&conv2d_dnnl_direct_memo[i].shape, s, sizeof *s) != 0) i++;
  if (i < conv2d_dnnl_direct_n && (which == 0 || conv2d_dnnl_direct_memo[i].backward_known))
    return conv2d_dnnl_direct_memo[i].direct[which];
  if (i == conv2d_dnnl_direct_n) { /* a new entry: the next free slot, or round-robin over full ones */
    i = conv2d_dnnl_direct_n < CONV2D_DNNL_DIRECT_MEMO ? conv2d_dnnl_direct_n++ : conv2d_dnnl_direct_next++;
    conv2d_dnnl_direct_next %= CONV2D_DNNL_DIRECT_MEMO;
    memset(&conv2d_dnnl_direct_memo[i], 0, sizeof conv2d_dnnl_direct_memo[i]);
    conv2d_dnnl_direct_memo[i].shape = *s;
  }
  conv2d_dnnl_descs d;
  dnnl_convolution_desc_t cd;
  dnnl_primitive_desc_t fwd = NULL;
  if (!conv2d_dnnl_init_engine() && !conv2d_dnnl_descs_init(&d, s) &&
      dnnl_dilated_convolution_forward_desc_init(&cd, dnnl_forward_training, dnnl_convolution_direct, &d.src_in,
                                                 &d.weights_in, s->has_bias ? &d.bias : NULL,
                                                 s->dst_blocked ? &d.dst : &d.dst_any, d.strides, d.dilates, d.pad_l,
                                                 d.pad_r) == dnnl_success &&
      !conv2d_dnnl_pd_create(&fwd, &cd, NULL, s)) {
    conv2d_dnnl_direct_memo[i].direct[0] = conv2d_dnnl_pd_is_direct(fwd);
    if (which != 0) conv2d_dnnl_backward_direct(conv2d_dnnl_direct_memo[i].direct + 1, &d, s, fwd);
  }
  if (fwd) dnnl_primitive_desc_destroy(fwd);
  conv2d_dnnl_direct_memo[i].backward_known |= which != 0;
  return conv2d_dnnl_direct_memo[i].direct[which];
}

int conv2d_dnnl_forward_is_direct(const conv2d_shape *s) { return conv2d_dnnl_is_direct(s, 0); }

int conv2d_dnnl_backward_is_direct(const conv2d_shape *s, int which) {
  return conv2d_dnnl_is_direct(s, 1 + (which != 0));
}

/* The cache entry of shape s with its forward (and, when `backward`, backward) primitives. */
static int conv2d_dnnl_entry_get(const conv2d_shape *s, int backward, conv2d_dnnl_entry **out) {
  int rc = conv2d_dnnl_init_engine();
  if (rc) return rc;
  if (!conv2d_dnnl_cache && !(conv2d_dnnl_cache = calloc(CONV2D_DNNL_CACHE_SIZE, sizeof *conv2d_dnnl_cache)))
    return hakd_error(HAKD_ENOMEM, "conv2d: out of memory for the oneDNN cache");
  conv2d_dnnl_entry *e = NULL;
  for (int i = 0; i < CONV2D_DNNL_CACHE_SIZE && !e; i++)
    if (conv2d_dnnl_cache[i].valid && memcmp(&conv2d_dnnl_cache[i].shape, s, sizeof *s) == 0) e = &conv2d_dnnl_cache[i];
  conv2d_dnnl_descs d;
  if (!e || (backward && !e->has_backward)) {
    rc = conv2d_dnnl_descs_init(&d, s);
    if (rc) return rc;
  }
  if (!e) {
    e = &conv2d_dnnl_cache[conv2d_dnnl_next_slot];
    conv2d_dnnl_next_slot = (conv2d_dnnl_next_slot + 1) % CONV2D_DNNL_CACHE_SIZE;
    conv2d_dnnl_entry_free(e);
    e->shape = *s;
    rc = conv2d_dnnl_forward_create(e, &d);
    if (rc) {
      conv2d_dnnl_entry_free(e);
      return rc;
    }
    e->valid = 1;
  }
  if (backward && !e->has_backward) {
    rc = conv2d_dnnl_backward_create(e, &d);
    if (rc) {
      conv2d_dnnl_op_free(&e->backward_data);
      conv2d_dnnl_op_free(&e->backward_weights);
      return rc;
    }
    e->has_backward = 1;
  }
  *out = e;
  return 0;
}

static int conv2d_dnnl_reorder_run(dnnl_primitive_t reorder, dnnl_memory_t from, dnnl_memory_t to) {
  dnnl_exec_arg_t args[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  DNNL_TRY(dnnl_primitive_execute(reorder, conv2d_dnnl_stream, 2, args));
  return 0;
}

/* Runs op on our buffers ptrs[i] (one per argument, in the order they were added). Bit i of
 * `laid` says ptrs[i] already holds argument i in the primitive's layout (weights as
 * conv2d_dnnl_pack_weights wrote them, a gradient reordered once for both backward primitives):
 * it is not reordered. Bit i of `set`: output i is written, not added to (reorder_set). */
static int conv2d_dnnl_op_run(conv2d_dnnl_op *op, void *const *ptrs, unsigned laid, unsigned set) {
  size_t total = ops_scratch_round(op->scratchpad_bytes);
  for (int i = 0; i < op->n_args; i++)
    if (!(laid >> i & 1)) total += ops_scratch_round(op->args[i].inner_bytes);
  unsigned char *scratch = ops_scratch(total);
  if (!scratch) return HAKD_ENOMEM;
  dnnl_exec_arg_t args[CONV2D_DNNL_MAX_ARGS + 1];
  int n = 0;
  for (int i = 0; i < op->n_args; i++) {
    conv2d_dnnl_arg *a = &op->args[i];
    DNNL_TRY(dnnl_memory_set_data_handle(a->user, ptrs[i]));
    if ((set >> i & 1) && a->is_output && a->same_layout) {
      args[n++] = (dnnl_exec_arg_t){a->id, a->user}; /* written where it belongs */
      continue;
    }
    if ((laid >> i & 1) && a->inner) {
      DNNL_TRY(dnnl_memory_set_data_handle(a->inner, ptrs[i]));
    } else if (a->inner) {
      DNNL_TRY(dnnl_memory_set_data_handle(a->inner, scratch));
      scratch += ops_scratch_round(a->inner_bytes);
      if (!a->is_output) {
        int rc = conv2d_dnnl_reorder_run(a->reorder, a->user, a->inner);
        if (rc) return rc;
      }
    }
    args[n++] = (dnnl_exec_arg_t){a->id, a->inner ? a->inner : a->user};
  }
  if (op->scratchpad) {
    DNNL_TRY(dnnl_memory_set_data_handle(op->scratchpad, scratch));
    args[n++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, op->scratchpad};
  }
  DNNL_TRY(dnnl_primitive_execute(op->prim, conv2d_dnnl_stream, n, args));
  for (int i = 0; i < op->n_args; i++) {
    conv2d_dnnl_arg *a = &op->args[i];
    if (a->is_output && a->inner && !((set >> i & 1) && a->same_layout)) {
      int rc = conv2d_dnnl_reorder_run((set >> i & 1) && a->reorder_set ? a->reorder_set : a->reorder, a->inner, a->user);
      if (rc) return rc;
    }
  }
  DNNL_TRY(dnnl_stream_wait(conv2d_dnnl_stream));
  return 0;
}

/* ---- cutting large bf16 calls ----
 * A bf16 call reorders its float32 operands into bfloat16 copies, and oneDNN adds float32 result
 * buffers and scratchpads of the same order: for SegFormer's 1024 -> 256 fuse convolution at 128x128,
 * batch 2, 272 MB of scratch in backward, more than a fifth of the step. Such calls run image by
 * image, and 1x1 stride-1 convolutions (where every output row reads only its own input row) in
 * bands of rows, so the scratch stays near CONV2D_DNNL_PART_BYTES. Weight and bias gradients
 * accumulate over the parts (their reorders add). */
#define CONV2D_DNNL_PART_BYTES ((int64_t)24 << 20)

static int64_t conv2d_dnnl_part_bytes = CONV2D_DNNL_PART_BYTES;

void conv2d_dnnl_set_part_bytes(int64_t bytes) { conv2d_dnnl_part_bytes = bytes > 0 ? bytes : CONV2D_DNNL_PART_BYTES; }

typedef struct {
  conv2d_shape part;       /* shape of a full part (the last band may be shorter) */
  int64_t images, rows;    /* images per part (n or 1), rows per band (h: whole images) */
} conv2d_dnnl_cut;

/* The parts of a call of shape s (a single part unless s is bf16 on plain float32 tensors and its
 * float32 input and output exceed the budget). */
static conv2d_dnnl_cut conv2d_dnnl_cut_of(const conv2d_shape *s) {
  conv2d_dnnl_cut c = {*s, s->n, s->h};
  int64_t image_bytes = (s->cin * s->h * s->w + s->cout * s->oh * s->ow) * (int64_t)sizeof(float);
  if (!s->bf16 || s->src_blocked || s->dst_blocked || s->n * image_bytes <= conv2d_dnnl_part_bytes) return c;
  c.images = c.part.n = 1;
  int banded = s->kh == 1 && s->kw == 1 && s->stride == 1 && s->pad == 0 && s->h > 1;
  if (!banded || image_bytes <= conv2d_dnnl_part_bytes) return c;
  c.rows = s->h * conv2d_dnnl_part_bytes / image_bytes;
  if (c.rows < 1) c.rows = 1;
  c.part.h = c.part.oh = c.rows;
  c.part.band_of_h = s->h;
  return c;
}

/* Runs `which` (0 forward, 1 backward data, 2 backward weights) of shape s over its parts; ptrs
 * and set as conv2d_dnnl_op_run takes them, with x and y (or dx and dy) at the indices ix and iy
 * (the parts cover disjoint pieces of x and y, so a written dx is written whole; the weight and
 * bias gradients are written by the first part and added to by the others). */
static int conv2d_dnnl_run_cut(const conv2d_shape *s, int which, void *const *ptrs, int n_ptrs, int ix, int iy,
                               unsigned set) {
  conv2d_dnnl_cut c = conv2d_dnnl_cut_of(s);
  for (int64_t n0 = 0; n0 < s->n; n0 += c.images) {
    for (int64_t r0 = 0; r0 < s->h; r0 += c.rows) {
      conv2d_shape part = c.part;
      if (r0 + c.rows > s->h) part.h = part.oh = s->h - r0;
      conv2d_dnnl_entry *e;
      int rc = conv2d_dnnl_entry_get(&part, which != 0, &e);
      if (rc) return rc;
      void *p[CONV2D_DNNL_MAX_ARGS];
      for (int i = 0; i < n_ptrs; i++) p[i] = ptrs[i];
      if (c.images != s->n) { /* plain float32 tensors (see conv2d_dnnl_cut_of) */
        p[ix] = (float *)ptrs[ix] + (n0 * s->cin * s->h + r0) * s->w;
        p[iy] = (float *)ptrs[iy] + (n0 * s->cout * s->oh + r0) * s->ow;
      }
      conv2d_dnnl_op *op = which == 0 ? &e->forward : which == 1 ? &e->backward_data : &e->backward_weights;
      if ((rc = conv2d_dnnl_op_run(op, p, 0, set))) return rc;
      if (which == 2) set = 0;
    }
  }
  return 0;
}

int conv2d_dnnl_forward(void *y, const void *x, const float *w, const float *b, const conv2d_shape *s) {
  void *ptrs[4] = {(void *)x, (void *)w, (void *)b, y};
  if (!s->has_bias) ptrs[2] = y; /* arguments: src, weights, [bias,] dst */
  return conv2d_dnnl_run_cut(s, 0, ptrs, s->has_bias ? 4 : 3, 0, s->has_bias ? 3 : 2, 0);
}

/* The weights argument of the forward of s, when oneDNN reads them in a layout of its own and the
 * call runs in one part; NULL otherwise (or with an error set when no primitive can be made). */
static conv2d_dnnl_arg *conv2d_dnnl_forward_weights(const conv2d_shape *s, conv2d_dnnl_entry **entry) {
  conv2d_dnnl_cut c = conv2d_dnnl_cut_of(s);
  if (c.images != s->n || c.rows != s->h || conv2d_dnnl_entry_get(s, 0, entry)) return NULL;
  for (int i = 0; i < (*entry)->forward.n_args; i++) {
    conv2d_dnnl_arg *a = &(*entry)->forward.args[i];
    if (a->id == DNNL_ARG_WEIGHTS) return a->inner ? a : NULL;
  }
  return NULL;
}

size_t conv2d_dnnl_packed_weights_bytes(const conv2d_shape *s, void *layout, size_t layout_size) {
  conv2d_dnnl_entry *e;
  conv2d_dnnl_arg *a = conv2d_dnnl_forward_weights(s, &e);
  if (!a) return 0;
  const dnnl_memory_desc_t *md = NULL;
  if (dnnl_memory_get_memory_desc(a->inner, &md) != dnnl_success || !md || layout_size < sizeof *md) return 0;
  memcpy(layout, md, sizeof *md);
  return a->inner_bytes;
}

int conv2d_dnnl_layouts_equal(const void *a, const void *b) { return dnnl_memory_desc_equal(a, b); }

int conv2d_dnnl_pack_weights(void *packed, const float *w, const conv2d_shape *s) {
  conv2d_dnnl_entry *e;
  conv2d_dnnl_arg *a = conv2d_dnnl_forward_weights(s, &e);
  if (!a) return hakd_error(HAKD_EINVAL, "conv2d: the weights of this shape are not packed");
  DNNL_TRY(dnnl_memory_set_data_handle(a->user, (void *)w));
  DNNL_TRY(dnnl_memory_set_data_handle(a->inner, packed));
  int rc = conv2d_dnnl_reorder_run(a->reorder, a->user, a->inner);
  if (!rc) DNNL_TRY(dnnl_stream_wait(conv2d_dnnl_stream));
  return rc;
}

int conv2d_dnnl_forward_packed(void *y, const void *x, const void *packed, const float *b, const conv2d_shape *s) {
  conv2d_dnnl_entry *e;
  if (!conv2d_dnnl_forward_weights(s, &e))
    return hakd_error(HAKD_EINVAL, "conv2d: the weights of this shape are not packed");
  void *ptrs[4] = {(void *)x, (void *)packed, (void *)b, y};
  if (!s->has_bias) ptrs[2] = y; /* arguments: src, weights, [bias,] dst */
  return conv2d_dnnl_op_run(&e->forward, ptrs, 1u << 1, 0); /* arguments: src, weights, ... */
}

static float *conv2d_dnnl_zeros(hakd_ctx *ctx, size_t n) {
  float *p = hakd_ctx_alloc(ctx, n * sizeof(float));
  if (p) memset(p, 0, n * sizeof(float));
  return p;
}

/* dy in the layout both backward primitives read, reordered once into op scratch from ctx, with
 * *entry the shape's cache entry; NULL where the call runs in parts or the two primitives want
 * different layouts (each then reorders its own), or with ctx failed. */
static void *conv2d_dnnl_shared_dy(hakd_ctx *ctx, const float *dy, const conv2d_shape *s, conv2d_dnnl_entry **entry) {
  conv2d_dnnl_cut c = conv2d_dnnl_cut_of(s);
  if (c.images != s->n || c.rows != s->h || conv2d_dnnl_entry_get(s, 1, entry)) return NULL;
  conv2d_dnnl_entry *e = *entry;
  conv2d_dnnl_arg *a = &e->backward_data.args[0], *b = &e->backward_weights.args[1]; /* their DIFF_DST */
  const dnnl_memory_desc_t *ma = NULL, *mb = NULL;
  if (!a->inner || !b->inner || dnnl_memory_get_memory_desc(a->inner, &ma) != dnnl_success ||
      dnnl_memory_get_memory_desc(b->inner, &mb) != dnnl_success || !dnnl_memory_desc_equal(ma, mb))
    return NULL;
  void *laid = hakd_ctx_scratch(ctx, a->inner_bytes);
  if (!laid) return NULL;
  if (dnnl_memory_set_data_handle(a->user, (void *)dy) != dnnl_success ||
      dnnl_memory_set_data_handle(a->inner, laid) != dnnl_success || conv2d_dnnl_reorder_run(a->reorder, a->user, a->inner)) {
    hakd_ctx_scratch_free(ctx, laid);
    return NULL;
  }
  return laid;
}

int conv2d_dnnl_backward(hakd_ctx *ctx, float *dx, float *dw, float *db, unsigned set, const float *x, const float *w,
                         const float *dy, const conv2d_shape *s) {
  int rc;
  /* with both gradients wanted, dy is reordered once (an r50-d8 training step reorders a gradient
   * of every convolution's output twice otherwise) */
  conv2d_dnnl_entry *e = NULL;
  void *laid_dy = dx && (dw || db) ? conv2d_dnnl_shared_dy(ctx, dy, s, &e) : NULL;
  if (hakd_ctx_status(ctx)) return hakd_ctx_status(ctx);
  if (dx) {
    /* arguments: diff_dst, weights, diff_src */
    void *ptrs[3] = {laid_dy ? laid_dy : (void *)dy, (void *)w, dx};
    unsigned set_dx = set & 1u ? 1u << 2 : 0;
    rc = laid_dy ? conv2d_dnnl_op_run(&e->backward_data, ptrs, 1u << 0, set_dx)
                 : conv2d_dnnl_run_cut(s, 1, ptrs, 3, 2, 0, set_dx);
    if (rc) {
      hakd_ctx_scratch_free(ctx, laid_dy);
      return rc;
    }
  }
  if (!dw && !db) return 0;
  /* One primitive computes both; a gradient nobody wants goes to throwaway scratch. */
  size_t nw = (size_t)(s->cout * (s->cin / s->groups) * s->kh * s->kw);
  if ((!dw && !(dw = conv2d_dnnl_zeros(ctx, nw))) || (!db && s->has_bias && !(db = conv2d_dnnl_zeros(ctx, (size_t)s->cout)))) {
    hakd_ctx_scratch_free(ctx, laid_dy);
    return hakd_ctx_status(ctx);
  }
  /* arguments: src, diff_dst, diff_weights[, diff_bias] */
  void *ptrs[4] = {(void *)x, laid_dy ? laid_dy : (void *)dy, dw, db};
  unsigned set_dw = (set & 2u ? 1u << 2 : 0) | (set & 4u ? 1u << 3 : 0);
  if (!laid_dy) return conv2d_dnnl_run_cut(s, 2, ptrs, s->has_bias ? 4 : 3, 0, 1, set_dw);
  rc = conv2d_dnnl_op_run(&e->backward_weights, ptrs, 1u << 1, set_dw);
  hakd_ctx_scratch_free(ctx, laid_dy);
  return rc;
}
