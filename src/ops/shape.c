/* Shape ops: reshape / flatten (views), permute, concat and slice (copies). Forward works on
 * float32 and int32 alike (both 4-byte elements); gradients flow only through float32. */
#include <immintrin.h>
#include <string.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"
#include "ops/vecmath.h"

typedef uint32_t element; /* a float32 or int32 moved bit for bit */

/* ---- reshape / flatten ---------------------------------------------------------------- */

/* Only when the view's gradient could not share its input's (the input got its own buffer
 * after the view's had been made). */
static void view_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  const float *dy = node->out->grad;
  if (!dx || dx == dy) return;
  int64_t n = hakd_numel(node->out);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) dx[i] += dy[i];
}

/* A tensor with x's data and a new shape (same numel, checked by the caller). */
static hakd_tensor *view_new(hakd_ctx *ctx, hakd_tensor *x, int ndim, const int64_t *shape, const char *op) {
  hakd_tensor *y = hakd_ctx_alloc(ctx, sizeof *y);
  if (!y) return NULL;
  memset(y, 0, sizeof *y);
  y->ndim = ndim;
  for (int i = 0; i < ndim; i++) y->shape[i] = shape[i];
  y->dtype = x->dtype;
  y->data = x->data;
  y->buffer = x->buffer;
  if (x->dtype == HAKD_F32) {
    hakd_node *node = hakd_record(ctx, op, view_backward, y, 1, &x);
    if (node) node->grad_is_input_grad = 1;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

hakd_tensor *hakd_reshape(hakd_ctx *ctx, hakd_tensor *x, int ndim, const int64_t *shape) {
  if (!x) return NULL;
  char sx[96];
  if (ndim < 0 || ndim > HAKD_MAX_DIMS)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "reshape: %d dims requested for %s (at most %d)", ndim,
                         hakd_shape_str(x, sx, sizeof sx), HAKD_MAX_DIMS);
  int64_t resolved[HAKD_MAX_DIMS], known = 1;
  int infer = -1;
  for (int i = 0; i < ndim; i++) {
    resolved[i] = shape[i];
    if (shape[i] == -1 && infer < 0) {
      infer = i;
    } else if (shape[i] < 0) {
      return hakd_ctx_fail(ctx, HAKD_EINVAL, "reshape: invalid size %lld at dim %d for %s", (long long)shape[i], i,
                           hakd_shape_str(x, sx, sizeof sx));
    } else {
      known *= shape[i];
    }
  }
  int64_t n = hakd_numel(x);
  if (infer >= 0) {
    if (known == 0 || n % known != 0)
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "reshape: cannot infer dim %d of %s from %lld elements", infer,
                           hakd_shape_str(x, sx, sizeof sx), (long long)n);
    resolved[infer] = n / known;
  } else if (known != n) {
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "reshape: %s has %lld elements, requested shape has %lld",
                         hakd_shape_str(x, sx, sizeof sx), (long long)n, (long long)known);
  }
  return view_new(ctx, x, ndim, resolved, "reshape");
}

hakd_tensor *hakd_flatten(hakd_ctx *ctx, hakd_tensor *x, int start_dim, int end_dim) {
  if (!x) return NULL;
  /* torch.flatten of a 0-d tensor gives (1); treat it as 1-d for the dim range. */
  int nd = x->ndim ? x->ndim : 1;
  int s = ops_normalize_dim(start_dim, nd), e = ops_normalize_dim(end_dim, nd);
  if (s < 0 || e < 0 || s > e) {
    char sx[96];
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "flatten: dims %d..%d invalid for %s", start_dim, end_dim,
                         hakd_shape_str(x, sx, sizeof sx));
  }
  int64_t shape[HAKD_MAX_DIMS];
  int ndim = 0;
  if (x->ndim == 0) {
    shape[ndim++] = 1;
  } else {
    for (int i = 0; i < s; i++) shape[ndim++] = x->shape[i];
    shape[ndim++] = ops_prod(x->shape, s, e + 1);
    for (int i = e + 1; i < x->ndim; i++) shape[ndim++] = x->shape[i];
  }
  return view_new(ctx, x, ndim, shape, "flatten");
}

/* ---- permute ---------------------------------------------------------------------------- */

/* A permutation with consecutive input dims that stay consecutive in the output merged, and
 * size-1 dims dropped: NCHW -> NHWC becomes a batched 2-D transpose (N, C, HW) -> (N, HW, C). */
typedef struct {
  int ndim;
  int64_t src_shape[HAKD_MAX_DIMS]; /* merged input shape */
  int perm[HAKD_MAX_DIMS];          /* output dim i is merged input dim perm[i] */
} permute_plan;

static void permute_plan_make(permute_plan *plan, const int64_t *shape, const int *perm, int ndim) {
  /* Keep output order, skipping size-1 dims. */
  int kept[HAKD_MAX_DIMS], n_kept = 0;
  for (int i = 0; i < ndim; i++)
    if (shape[perm[i]] != 1) kept[n_kept++] = perm[i];
  /* Groups: runs of output dims whose input dims are consecutive (p, p+1, ...) ignoring size-1 dims. */
  int group_of_src[HAKD_MAX_DIMS], group_first[HAKD_MAX_DIMS], n_groups = 0;
  for (int i = 0; i < n_kept; i++) {
    int continues = 0;
    if (i > 0) {
      int prev = kept[i - 1], cur = kept[i];
      continues = cur > prev;
      for (int d = prev + 1; d < cur && continues; d++)
        if (shape[d] != 1) continues = 0;
    }
    if (!continues) group_first[n_groups++] = kept[i];
    group_of_src[kept[i]] = n_groups - 1;
  }
  /* Merged input dims are the groups ordered by their position in the input. */
  int order[HAKD_MAX_DIMS], n_order = 0; /* groups in input order */
  for (int d = 0; d < ndim; d++) {
    if (shape[d] == 1) continue;
    int g = group_of_src[d];
    if (group_first[g] == d) order[n_order++] = g;
  }
  int merged_index_of_group[HAKD_MAX_DIMS];
  for (int j = 0; j < n_order; j++) {
    merged_index_of_group[order[j]] = j;
    plan->src_shape[j] = 1;
  }
  for (int i = 0; i < n_kept; i++) plan->src_shape[merged_index_of_group[group_of_src[kept[i]]]] *= shape[kept[i]];
  for (int g = 0; g < n_groups; g++) plan->perm[g] = merged_index_of_group[g];
  plan->ndim = n_groups;
  if (plan->ndim == 0) {
    plan->ndim = 1;
    plan->src_shape[0] = 1;
    plan->perm[0] = 0;
  }
}

/* Transposes run in bands of TILE source rows; each band is cut into TILE x TILE tiles, so a
 * tile's 16 source lines and 16 destination lines are each read or written whole. */
#define TILE 16

#if defined(__AVX512F__)
/* dst = tile^T (accumulate: dst += tile^T as float) for one 16 x 16 tile, in registers.
 * dst: 16 rows at dst_stride, src: 16 rows at src_stride. Shuffles move bits unchanged, so
 * int32 data passes through the float registers intact. stream: write around the caches when
 * dst's rows are 64-byte aligned (the caller fences). */
static inline void transpose_tile16(void *dst, int64_t dst_stride, const void *src, int64_t src_stride,
                                    int accumulate, int stream) {
  const float *s = src;
  float *d = dst;
  __m512 r[16], t[16];
  for (int i = 0; i < 16; i++) r[i] = _mm512_loadu_ps(s + i * src_stride);
  /* Within each 128-bit lane: pairs of rows interleaved, then quads: r[4g + k] holds, in lane L,
   * column 4L + k of rows 4g..4g+3. */
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int g = 0; g < 16; g += 4) {
    __m512d a = _mm512_castps_pd(t[g]), b = _mm512_castps_pd(t[g + 1]);
    __m512d c = _mm512_castps_pd(t[g + 2]), e = _mm512_castps_pd(t[g + 3]);
    r[g] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, e));
    r[g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, e));
  }
  /* A 4 x 4 transpose of 128-bit lanes gathers column j = 4L + k from the four row quads. */
  for (int k = 0; k < 4; k++) {
    __m512 v0 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0x88), v1 = _mm512_shuffle_f32x4(r[k], r[4 + k], 0xdd);
    __m512 v2 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0x88), v3 = _mm512_shuffle_f32x4(r[8 + k], r[12 + k], 0xdd);
    t[k] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    t[8 + k] = _mm512_shuffle_f32x4(v0, v2, 0xdd);
    t[4 + k] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    t[12 + k] = _mm512_shuffle_f32x4(v1, v3, 0xdd);
  }
  if (accumulate)
    for (int j = 0; j < 16; j++) _mm512_storeu_ps(d + j * dst_stride, _mm512_add_ps(_mm512_loadu_ps(d + j * dst_stride), t[j]));
  else if (stream && ((uintptr_t)d | (uintptr_t)dst_stride * sizeof(float)) % 64 == 0)
    for (int j = 0; j < 16; j++) _mm512_stream_ps(d + j * dst_stride, t[j]);
  else
    for (int j = 0; j < 16; j++) _mm512_storeu_ps(d + j * dst_stride, t[j]);
}
#endif

/* Source rows [r0, r1) of a transpose (at most TILE of them): dst = src^T there (accumulate:
 * dst += src^T as float). stream: full tiles may use non-temporal stores (then the caller
 * fences). dst: (cols, rows), src: (rows, cols). */
static void transpose_band(void *dst, const void *src, int64_t rows, int64_t cols, int64_t r0, int64_t r1,
                           int accumulate, int stream) {
  int64_t c = 0;
#if defined(__AVX512F__)
  if (r1 - r0 == TILE)
    for (; c + TILE <= cols; c += TILE)
      transpose_tile16((element *)dst + c * rows + r0, rows, (const element *)src + r0 * cols + c, cols, accumulate,
                       stream);
#else
  (void)stream;
#endif
  for (int64_t c0 = c; c0 < cols; c0 += TILE) {
    int64_t c1 = c0 + TILE < cols ? c0 + TILE : cols;
    if (accumulate) {
      float *o = dst;
      const float *in = src;
      for (int64_t cc = c0; cc < c1; cc++)
        for (int64_t r = r0; r < r1; r++) o[cc * rows + r] += in[r * cols + cc];
    } else {
      element *o = dst;
      const element *in = src;
      for (int64_t cc = c0; cc < c1; cc++)
        for (int64_t r = r0; r < r1; r++) o[cc * rows + r] = in[r * cols + cc];
    }
  }
}

/* dst = src permuted (accumulate: dst += as float). dst: (src_shape[perm[0]], ...), src: (src_shape).
 * reference: Tensor.permute(perm).contiguous() */
static void permute_run(void *dst, const void *src, const permute_plan *plan, int accumulate) {
  int nd = plan->ndim;
  int64_t src_stride[HAKD_MAX_DIMS], out_shape[HAKD_MAX_DIMS], in_stride[HAKD_MAX_DIMS];
  int64_t stride = 1;
  for (int d = nd - 1; d >= 0; d--) {
    src_stride[d] = stride;
    stride *= plan->src_shape[d];
  }
  int64_t numel = stride;
  for (int i = 0; i < nd; i++) {
    out_shape[i] = plan->src_shape[plan->perm[i]];
    in_stride[i] = src_stride[plan->perm[i]];
  }
  /* Batched 2-D transpose (the NCHW <-> NHWC family): blocked. */
  int batched_transpose = nd >= 2 && plan->perm[nd - 1] == nd - 2 && plan->perm[nd - 2] == nd - 1;
  for (int i = 0; i < nd - 2 && batched_transpose; i++)
    if (plan->perm[i] != i) batched_transpose = 0;
  if (batched_transpose) {
    /* Bands of all batches share one parallel loop, so a batch of 1 still uses every thread. */
    int64_t rows = plan->src_shape[nd - 2], cols = plan->src_shape[nd - 1], batch = numel / (rows * cols);
    int64_t bands = (rows + TILE - 1) / TILE;
    /* Large outputs are written around the caches (vecmath.h; measured: (2,128,16384) 1.95 ->
     * 1.4 ms). */
    int stream = !accumulate && numel * (int64_t)sizeof(element) >= VEC_STREAM_MIN_BYTES;
#pragma omp parallel for schedule(static) if (numel > OPS_PARALLEL_MIN)
    for (int64_t job = 0; job < batch * bands; job++) {
      int64_t b = job / bands, r0 = job % bands * TILE, r1 = r0 + TILE < rows ? r0 + TILE : rows;
      transpose_band((element *)dst + b * rows * cols, (const element *)src + b * rows * cols, rows, cols, r0, r1,
                     accumulate, stream);
      /* Streamed stores are weakly ordered: each thread completes its own before the barrier. */
      if (stream) vec_stream_fence();
    }
    return;
  }
  /* General: walk the output row by row (last output dim innermost); when the last output dim is
   * also the input's last dim the inner loop is a contiguous copy. */
  int64_t inner = out_shape[nd - 1], inner_stride = in_stride[nd - 1], rows = numel / inner;
#pragma omp parallel for schedule(static) if (numel > OPS_PARALLEL_MIN)
  for (int64_t row = 0; row < rows; row++) {
    int64_t src_off = 0, rem = row;
    for (int d = nd - 2; d >= 0; d--) {
      src_off += (rem % out_shape[d]) * in_stride[d];
      rem /= out_shape[d];
    }
    if (accumulate) {
      float *o = (float *)dst + row * inner;
      const float *s = (const float *)src + src_off;
      for (int64_t i = 0; i < inner; i++) o[i] += s[i * inner_stride];
    } else {
      element *o = (element *)dst + row * inner;
      const element *s = (const element *)src + src_off;
      for (int64_t i = 0; i < inner; i++) o[i] = s[i * inner_stride];
    }
  }
}

/* Gradient: dx += permute(dy, inverse perm). saved[0]: the plan of the inverse permutation
 * applied to the output's shape. */
static void permute_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx || hakd_numel(node->out) == 0) return;
  permute_run(dx, node->out->grad, node->saved[0], 1);
}

hakd_tensor *hakd_permute(hakd_ctx *ctx, hakd_tensor *x, const int *perm) {
  if (!x) return NULL;
  int nd = x->ndim, seen[HAKD_MAX_DIMS] = {0};
  for (int i = 0; i < nd; i++) {
    if (perm[i] < 0 || perm[i] >= nd || seen[perm[i]]++) {
      char sx[96];
      return hakd_ctx_fail(ctx, HAKD_EINVAL, "permute: entry %d (%d) is not a permutation of the %d dims of %s", i,
                           perm[i], nd, hakd_shape_str(x, sx, sizeof sx));
    }
  }
  int64_t shape[HAKD_MAX_DIMS];
  for (int i = 0; i < nd; i++) shape[i] = x->shape[perm[i]];
  hakd_tensor *y = hakd_tensor_new(ctx, x->dtype, nd, shape);
  if (!y) return NULL;
  permute_plan plan;
  permute_plan_make(&plan, x->shape, perm, nd);
  if (hakd_numel(x) > 0) permute_run(y->data, x->data, &plan, 0);
  hakd_node *node = hakd_record(ctx, "permute", permute_backward, y, 1, &x);
  if (node) {
    int inverse[HAKD_MAX_DIMS];
    for (int i = 0; i < nd; i++) inverse[perm[i]] = i;
    permute_plan *back = hakd_ctx_alloc(ctx, sizeof *back);
    if (!back) return NULL;
    permute_plan_make(back, y->shape, inverse, nd);
    node->saved[0] = back;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

/* ---- concat ------------------------------------------------------------------------------ */

/* iarg: n, dim, outer, inner; saved[0]: the input array (n entries). */
static void concat_backward(hakd_ctx *ctx, hakd_node *node) {
  int n = (int)node->iarg[0], dim = (int)node->iarg[1];
  int64_t outer = node->iarg[2], inner = node->iarg[3];
  hakd_tensor *const *xs = node->saved[0];
  const float *dy = node->out->grad;
  int64_t out_row = node->out->shape[dim] * inner, offset = 0;
  for (int k = 0; k < n; k++) {
    int64_t row = xs[k]->shape[dim] * inner;
    float *dx = hakd_grad(ctx, xs[k]);
    if (dx) {
#pragma omp parallel for schedule(static) if (outer * row > OPS_PARALLEL_MIN)
      for (int64_t o = 0; o < outer; o++) {
        float *d = dx + o * row;
        const float *g = dy + o * out_row + offset;
        for (int64_t i = 0; i < row; i++) d[i] += g[i];
      }
    }
    offset += row;
  }
}

hakd_tensor *hakd_concat(hakd_ctx *ctx, int n, hakd_tensor *const *xs, int dim) {
  if (n < 1) return hakd_ctx_fail(ctx, HAKD_EINVAL, "concat: no inputs");
  for (int k = 0; k < n; k++)
    if (!xs[k]) return NULL;
  const hakd_tensor *first = xs[0];
  int d = ops_normalize_dim(dim, first->ndim);
  char s0[96], sk[96];
  if (d < 0)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "concat: dim %d out of range for %s", dim,
                         hakd_shape_str(first, s0, sizeof s0));
  int64_t total = 0;
  for (int k = 0; k < n; k++) {
    const hakd_tensor *x = xs[k];
    int ok = x->ndim == first->ndim && x->dtype == first->dtype;
    for (int i = 0; i < first->ndim && ok; i++)
      if (i != d && x->shape[i] != first->shape[i]) ok = 0;
    if (!ok)
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "concat: input %d %s does not match input 0 %s outside dim %d%s", k,
                           hakd_shape_str(x, sk, sizeof sk), hakd_shape_str(first, s0, sizeof s0), d,
                           x->dtype != first->dtype ? " (dtype differs)" : "");
    total += x->shape[d];
  }
  if (first->dtype == HAKD_BF16_BLOCKED) {
    if (d != 1 || first->ndim != 4)
      return hakd_ctx_fail(ctx, HAKD_ESHAPE, "concat: blocked bfloat16 inputs join along channels (dim 1) only");
    return bf16_blocked_concat_channels(ctx, n, xs);
  }
  int64_t shape[HAKD_MAX_DIMS];
  for (int i = 0; i < first->ndim; i++) shape[i] = first->shape[i];
  shape[d] = total;
  hakd_tensor *y = hakd_tensor_new(ctx, first->dtype, first->ndim, shape);
  if (!y) return NULL;
  int64_t outer = ops_prod(first->shape, 0, d), inner = ops_prod(first->shape, d + 1, first->ndim);
  int64_t out_row = total * inner, offset = 0;
  for (int k = 0; k < n; k++) {
    int64_t row = xs[k]->shape[d] * inner;
    const element *src = xs[k]->data;
    element *dst = (element *)y->data + offset;
    /* A large output is written around the caches (vecmath.h; measured 4 x (2,256,128,128):
     * 11-13.7 -> 8 ms). */
    int stream = outer * out_row * (int64_t)sizeof(element) >= VEC_STREAM_MIN_BYTES;
#pragma omp parallel for schedule(static) if (outer * row > OPS_PARALLEL_MIN)
    for (int64_t o = 0; o < outer; o++) {
      if (stream) {
        vec_stream_copy(dst + o * out_row, src + o * row, row);
        vec_stream_fence();
      } else {
        memcpy(dst + o * out_row, src + o * row, (size_t)row * sizeof(element));
      }
    }
    offset += row;
  }
  /* The tape node holds at most HAKD_NODE_MAX_INPUTS inputs; they only decide whether to record
   * (inputs needing grad listed first), backward reads the full list saved below. */
  hakd_tensor *record_in[HAKD_NODE_MAX_INPUTS];
  int n_record = 0;
  for (int k = 0; k < n && n_record < HAKD_NODE_MAX_INPUTS; k++)
    if (xs[k]->requires_grad) record_in[n_record++] = xs[k];
  if (first->dtype != HAKD_F32) n_record = 0;
  hakd_node *node = n_record ? hakd_record(ctx, "concat", concat_backward, y, n_record, record_in) : NULL;
  if (node) {
    hakd_tensor **saved = hakd_ctx_alloc(ctx, (size_t)n * sizeof *saved);
    if (!saved) return NULL;
    for (int k = 0; k < n; k++) saved[k] = xs[k];
    node->saved[0] = saved;
    node->iarg[0] = n;
    node->iarg[1] = d;
    node->iarg[2] = outer;
    node->iarg[3] = inner;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

/* ---- slice ------------------------------------------------------------------------------- */

/* iarg: dim, start, outer, inner. */
static void slice_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  int dim = (int)node->iarg[0];
  int64_t start = node->iarg[1], outer = node->iarg[2], inner = node->iarg[3];
  int64_t in_row = node->in[0]->shape[dim] * inner, out_row = node->out->shape[dim] * inner;
  const float *dy = node->out->grad;
#pragma omp parallel for schedule(static) if (outer * out_row > OPS_PARALLEL_MIN)
  for (int64_t o = 0; o < outer; o++) {
    float *d = dx + o * in_row + start * inner;
    const float *g = dy + o * out_row;
    for (int64_t i = 0; i < out_row; i++) d[i] += g[i];
  }
}

hakd_tensor *hakd_slice(hakd_ctx *ctx, hakd_tensor *x, int dim, int64_t start, int64_t length) {
  if (!x) return NULL;
  char sx[96];
  int d = ops_normalize_dim(dim, x->ndim);
  if (d < 0)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "slice: dim %d out of range for %s", dim, hakd_shape_str(x, sx, sizeof sx));
  int64_t size = x->shape[d];
  if (start < 0) start += size; /* torch.narrow accepts a start counted from the end */
  if (start < 0 || length < 0 || start > size || length > size - start)
    return hakd_ctx_fail(ctx, HAKD_ERANGE, "slice: [%lld, %lld + %lld) outside dim %d of %s", (long long)start,
                         (long long)start, (long long)length, d, hakd_shape_str(x, sx, sizeof sx));
  int64_t shape[HAKD_MAX_DIMS];
  for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
  shape[d] = length;
  hakd_tensor *y = hakd_tensor_new(ctx, x->dtype, x->ndim, shape);
  if (!y) return NULL;
  int64_t outer = ops_prod(x->shape, 0, d), inner = ops_prod(x->shape, d + 1, x->ndim);
  int64_t in_row = size * inner, out_row = length * inner;
  const element *src = x->data;
  element *dst = y->data;
#pragma omp parallel for schedule(static) if (outer * out_row > OPS_PARALLEL_MIN)
  for (int64_t o = 0; o < outer; o++)
    memcpy(dst + o * out_row, src + o * in_row + start * inner, (size_t)out_row * sizeof(element));
  hakd_node *node = hakd_record(ctx, "slice", slice_backward, y, 1, &x);
  if (node) {
    node->iarg[0] = d;
    node->iarg[1] = start;
    node->iarg[2] = outer;
    node->iarg[3] = inner;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}
