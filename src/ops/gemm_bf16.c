/* bfloat16 matrix products (the bf16 precision of linear and matmul) on oneDNN's matmul
 * primitive: reorders round the float32 operands to bfloat16 (and apply any transpose), the
 * primitive accumulates in float32 and writes float32, scaled by alpha, added to C when beta is 1.
 * Primitives and reorders are cached per shape; the rounded operands and oneDNN's scratchpad live
 * in the ops' scratch block (scratch.h). Engine, stream and cache are the calling thread's (thread-local,
 * like conv2d_dnnl.c's). */
#include <cblas.h>
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "ops/conv2d.h"
#include "ops/gemm_bf16.h"

#include "ops/dnnl_common.h"
#include "ops/scratch.h"

#define GEMM_BF16_CACHE_SIZE 128

typedef struct {
  gemm_bf16_shape shape;
  int valid;
  dnnl_primitive_t matmul, reorder_a, reorder_b;
  dnnl_memory_t user_a, user_b, inner_a, inner_b, c, scratchpad;
  size_t inner_a_bytes, inner_b_bytes, scratchpad_bytes;
} gemm_bf16_entry;

static _Thread_local dnnl_engine_t gemm_bf16_engine;
static _Thread_local dnnl_stream_t gemm_bf16_stream;
static _Thread_local gemm_bf16_entry *gemm_bf16_cache; /* GEMM_BF16_CACHE_SIZE entries, made on first use */
static _Thread_local int gemm_bf16_next_slot;

static void gemm_bf16_entry_free(gemm_bf16_entry *e) {
  dnnl_primitive_t prims[3] = {e->matmul, e->reorder_a, e->reorder_b};
  dnnl_memory_t mems[6] = {e->user_a, e->user_b, e->inner_a, e->inner_b, e->c, e->scratchpad};
  for (int i = 0; i < 3; i++)
    if (prims[i]) dnnl_primitive_destroy(prims[i]);
  for (int i = 0; i < 6; i++)
    if (mems[i]) dnnl_memory_destroy(mems[i]);
  memset(e, 0, sizeof *e);
}

static void gemm_bf16_release(void) {
  if (gemm_bf16_cache)
    for (int i = 0; i < GEMM_BF16_CACHE_SIZE; i++) gemm_bf16_entry_free(&gemm_bf16_cache[i]);
  free(gemm_bf16_cache);
  gemm_bf16_cache = NULL;
  gemm_bf16_next_slot = 0;
  gemm_bf16_stream = NULL;
  gemm_bf16_engine = NULL;
}

/* The (batch, rows, cols) view of an operand stored row-major with leading dimension ld, or
 * transposed (stored as cols x rows); batch stride 0 broadcasts one matrix over the batch. */
static int gemm_bf16_user_md(dnnl_memory_desc_t *md, int64_t batch, int64_t rows, int64_t cols, int trans, int64_t ld,
                             int64_t stride) {
  dnnl_dims_t dims = {stride ? batch : 1, rows, cols};
  dnnl_dims_t strides = {stride ? stride : rows * cols, trans ? 1 : ld, trans ? ld : 1};
  DNNL_TRY(dnnl_memory_desc_init_by_strides(md, 3, dims, dnnl_f32, strides));
  return 0;
}

static int gemm_bf16_entry_create(gemm_bf16_entry *e, const gemm_bf16_shape *s) {
  dnnl_memory_desc_t user_a, user_b, inner_a, inner_b, c;
  int rc = gemm_bf16_user_md(&user_a, s->batch, s->m, s->k, s->trans_a, s->lda, s->stride_a);
  if (!rc) rc = gemm_bf16_user_md(&user_b, s->batch, s->k, s->n, s->trans_b, s->ldb, s->stride_b);
  if (!rc) rc = gemm_bf16_user_md(&c, s->batch, s->m, s->n, 0, s->ldc, s->stride_c);
  if (rc) return rc;
  dnnl_dims_t a_dims = {s->stride_a ? s->batch : 1, s->m, s->k}, b_dims = {s->stride_b ? s->batch : 1, s->k, s->n};
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&inner_a, 3, a_dims, dnnl_bf16, dnnl_abc));
  DNNL_TRY(dnnl_memory_desc_init_by_tag(&inner_b, 3, b_dims, dnnl_bf16, dnnl_abc));
  dnnl_matmul_desc_t desc;
  DNNL_TRY(dnnl_matmul_desc_init(&desc, &inner_a, &inner_b, NULL, &c));
  dnnl_primitive_attr_t attr;
  DNNL_TRY(dnnl_primitive_attr_create(&attr));
  dnnl_post_ops_t post_ops = NULL;
  dnnl_status_t st = dnnl_primitive_attr_set_scratchpad_mode(attr, dnnl_scratchpad_mode_user);
  float alpha = s->alpha;
  if (st == dnnl_success && alpha != 1.0f) st = dnnl_primitive_attr_set_output_scales(attr, 1, 0, &alpha);
  if (st == dnnl_success && s->accumulate) {
    st = dnnl_post_ops_create(&post_ops);
    if (st == dnnl_success) st = dnnl_post_ops_append_sum(post_ops, 1.0f);
    if (st == dnnl_success) st = dnnl_primitive_attr_set_post_ops(attr, post_ops);
  }
  dnnl_primitive_desc_t pd = NULL;
  if (st == dnnl_success) st = dnnl_primitive_desc_create(&pd, &desc, attr, gemm_bf16_engine, NULL);
  if (st == dnnl_success) st = dnnl_primitive_create(&e->matmul, pd);
  const dnnl_memory_desc_t *pad_md = pd ? dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0) : NULL;
  e->scratchpad_bytes = pad_md ? dnnl_memory_desc_get_size(pad_md) : 0;
  if (st == dnnl_success && e->scratchpad_bytes)
    st = dnnl_memory_create(&e->scratchpad, pad_md, gemm_bf16_engine, DNNL_MEMORY_NONE);
  if (pd) dnnl_primitive_desc_destroy(pd);
  if (post_ops) dnnl_post_ops_destroy(post_ops);
  dnnl_primitive_attr_destroy(attr);
  if (st != dnnl_success) return hakd_error(HAKD_EUNSUPPORTED, "oneDNN: no bf16 matmul: status %d", (int)st);
  if ((rc = ops_dnnl_reorder_create(&e->reorder_a, &user_a, &inner_a, 0)) ||
      (rc = ops_dnnl_reorder_create(&e->reorder_b, &user_b, &inner_b, 0)))
    return rc;
  DNNL_TRY(dnnl_memory_create(&e->user_a, &user_a, gemm_bf16_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->user_b, &user_b, gemm_bf16_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->inner_a, &inner_a, gemm_bf16_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->inner_b, &inner_b, gemm_bf16_engine, DNNL_MEMORY_NONE));
  DNNL_TRY(dnnl_memory_create(&e->c, &c, gemm_bf16_engine, DNNL_MEMORY_NONE));
  e->inner_a_bytes = dnnl_memory_desc_get_size(&inner_a);
  e->inner_b_bytes = dnnl_memory_desc_get_size(&inner_b);
  return 0;
}

static int gemm_bf16_entry_get(const gemm_bf16_shape *s, gemm_bf16_entry **out) {
  int rc = ops_dnnl_engine(&gemm_bf16_engine, &gemm_bf16_stream, gemm_bf16_release);
  if (rc) return rc;
  if (!gemm_bf16_cache && !(gemm_bf16_cache = calloc(GEMM_BF16_CACHE_SIZE, sizeof *gemm_bf16_cache)))
    return hakd_error(HAKD_ENOMEM, "gemm_bf16: out of memory for the oneDNN cache");
  for (int i = 0; i < GEMM_BF16_CACHE_SIZE; i++)
    if (gemm_bf16_cache[i].valid && !memcmp(&gemm_bf16_cache[i].shape, s, sizeof *s)) {
      *out = &gemm_bf16_cache[i];
      return 0;
    }
  gemm_bf16_entry *e = &gemm_bf16_cache[gemm_bf16_next_slot];
  gemm_bf16_next_slot = (gemm_bf16_next_slot + 1) % GEMM_BF16_CACHE_SIZE;
  gemm_bf16_entry_free(e);
  e->shape = *s;
  rc = gemm_bf16_entry_create(e, s);
  if (rc) {
    gemm_bf16_entry_free(e);
    return rc;
  }
  e->valid = 1;
  *out = e;
  return 0;
}

static int gemm_bf16_exec(dnnl_primitive_t prim, int n, const dnnl_exec_arg_t *args) {
  DNNL_TRY(dnnl_primitive_execute(prim, gemm_bf16_stream, n, args));
  return 0;
}

int gemm_bf16_run(const gemm_bf16_shape *s, const float *a, const float *b, float *c) {
  if (s->m == 0 || s->n == 0 || s->batch == 0) return 0;
  gemm_bf16_entry *e = NULL;
  int rc = gemm_bf16_entry_get(s, &e);
  if (rc) return rc;
  size_t a_bytes = ops_scratch_round(e->inner_a_bytes), b_bytes = ops_scratch_round(e->inner_b_bytes);
  unsigned char *scratch = ops_scratch(a_bytes + b_bytes + ops_scratch_round(e->scratchpad_bytes));
  if (!scratch) return HAKD_ENOMEM;
  DNNL_TRY(dnnl_memory_set_data_handle(e->user_a, (void *)a));
  DNNL_TRY(dnnl_memory_set_data_handle(e->user_b, (void *)b));
  DNNL_TRY(dnnl_memory_set_data_handle(e->inner_a, scratch));
  DNNL_TRY(dnnl_memory_set_data_handle(e->inner_b, scratch + a_bytes));
  DNNL_TRY(dnnl_memory_set_data_handle(e->c, c));
  dnnl_exec_arg_t to_a[2] = {{DNNL_ARG_FROM, e->user_a}, {DNNL_ARG_TO, e->inner_a}};
  dnnl_exec_arg_t to_b[2] = {{DNNL_ARG_FROM, e->user_b}, {DNNL_ARG_TO, e->inner_b}};
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, e->inner_a}, {DNNL_ARG_WEIGHTS, e->inner_b}, {DNNL_ARG_DST, e->c}};
  int n_args = 3;
  if (e->scratchpad) {
    DNNL_TRY(dnnl_memory_set_data_handle(e->scratchpad, scratch + a_bytes + b_bytes));
    args[n_args++] = (dnnl_exec_arg_t){DNNL_ARG_SCRATCHPAD, e->scratchpad};
  }
  if ((rc = gemm_bf16_exec(e->reorder_a, 2, to_a)) || (rc = gemm_bf16_exec(e->reorder_b, 2, to_b)) ||
      (rc = gemm_bf16_exec(e->matmul, n_args, args)))
    return rc;
  DNNL_TRY(dnnl_stream_wait(gemm_bf16_stream));
  return 0;
}

int gemm_run(int bf16, int trans_a, int trans_b, int64_t m, int64_t n, int64_t k, float alpha, const float *a,
             int64_t lda, const float *b, int64_t ldb, float beta, float *c, int64_t ldc) {
  if (!bf16) {
    blas_shared_enter();
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, (int)m, (int)n,
                (int)k, alpha, a, (int)lda, b, (int)ldb, beta, c, (int)ldc);
    blas_shared_leave();
    return 0;
  }
  gemm_bf16_shape s;
  memset(&s, 0, sizeof s);
  s.batch = 1, s.m = m, s.n = n, s.k = k, s.lda = lda, s.ldb = ldb, s.ldc = ldc;
  s.stride_a = (trans_a ? k * lda : m * lda), s.stride_b = (trans_b ? n * ldb : k * ldb), s.stride_c = m * ldc;
  s.trans_a = trans_a, s.trans_b = trans_b, s.accumulate = beta != 0.0f, s.alpha = alpha;
  return gemm_bf16_run(&s, a, b, c);
}
