/* Binary elementwise ops with numpy broadcasting (add, sub, mul) and x * s + c. */
#include <stdio.h>

#include "hakd/ops.h"
#include "ops/ops_internal.h"

typedef enum { BINARY_ADD, BINARY_SUB, BINARY_MUL } binary_kind;

static const char *const binary_names[] = {"add", "sub", "mul"};

/* The broadcast of a and b, with size-1 output dims dropped and adjacent dims merged where
 * both inputs are laid out contiguously across them, so the common cases (same shape,
 * per-channel (1,C,1,1), trailing (D)) become one or a few long loops. */
typedef struct {
  int ndim;
  int64_t shape[HAKD_MAX_DIMS];
  int64_t stride_out[HAKD_MAX_DIMS];
  int64_t stride_in[2][HAKD_MAX_DIMS]; /* element strides of a and b; 0 on broadcast dims */
  int64_t numel;
} broadcast_layout;

/* Returns 0, or -1 when the shapes do not broadcast. Output shape goes to out_shape/out_ndim. */
static int broadcast_plan(broadcast_layout *layout, int64_t *out_shape, int *out_ndim, const hakd_tensor *a,
                          const hakd_tensor *b) {
  int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
  int64_t stride_in[2][HAKD_MAX_DIMS];
  const hakd_tensor *in[2] = {a, b};
  for (int k = 0; k < 2; k++) {
    int64_t stride = 1;
    for (int d = nd - 1; d >= 0; d--) {
      int src = d - (nd - in[k]->ndim);
      int64_t size = src >= 0 ? in[k]->shape[src] : 1;
      stride_in[k][d] = size == 1 ? 0 : stride;
      stride *= size;
    }
  }
  for (int d = 0; d < nd; d++) {
    int sa = d - (nd - a->ndim), sb = d - (nd - b->ndim);
    int64_t da = sa >= 0 ? a->shape[sa] : 1, db = sb >= 0 ? b->shape[sb] : 1;
    if (da != db && da != 1 && db != 1) return -1;
    out_shape[d] = da == 1 ? db : da;
  }
  *out_ndim = nd;

  layout->ndim = 0;
  layout->numel = 1;
  for (int d = 0; d < nd; d++) {
    layout->numel *= out_shape[d];
    if (out_shape[d] == 1) continue;
    int m = layout->ndim;
    if (m > 0) {
      int prev = m - 1;
      int mergeable = 1;
      for (int k = 0; k < 2; k++)
        if (layout->stride_in[k][prev] != stride_in[k][d] * out_shape[d]) mergeable = 0;
      if (mergeable) {
        layout->shape[prev] *= out_shape[d];
        for (int k = 0; k < 2; k++) layout->stride_in[k][prev] = stride_in[k][d];
        continue;
      }
    }
    layout->shape[m] = out_shape[d];
    for (int k = 0; k < 2; k++) layout->stride_in[k][m] = stride_in[k][d];
    layout->ndim++;
  }
  if (layout->ndim == 0) {
    layout->ndim = 1;
    layout->shape[0] = 1;
    layout->stride_in[0][0] = layout->stride_in[1][0] = 0;
  }
  int64_t stride = 1;
  for (int d = layout->ndim - 1; d >= 0; d--) {
    layout->stride_out[d] = stride;
    stride *= layout->shape[d];
  }
  return 0;
}

/* Offsets of the first element of output row `row` (all dims but the last) in out, a, b. */
static void layout_row_offsets(const broadcast_layout *layout, int64_t row, int64_t offsets[3]) {
  offsets[0] = offsets[1] = offsets[2] = 0;
  for (int d = layout->ndim - 2; d >= 0; d--) {
    int64_t idx = row % layout->shape[d];
    row /= layout->shape[d];
    offsets[0] += idx * layout->stride_out[d];
    offsets[1] += idx * layout->stride_in[0][d];
    offsets[2] += idx * layout->stride_in[1][d];
  }
}

/* Rows are split into tiles so a single long row (same-shape inputs) still spreads over threads. */
#define TILE 4096

/* y = a (op) b, broadcast.
 * y: (out shape), a, b: their own shapes as described by layout. reference: torch.add / sub / mul */
static void binary_forward(float *y, const float *a, const float *b, const broadcast_layout *layout,
                           binary_kind kind) {
  int64_t inner = layout->shape[layout->ndim - 1];
  int64_t sa = layout->stride_in[0][layout->ndim - 1], sb = layout->stride_in[1][layout->ndim - 1];
  int64_t tiles_per_row = (inner + TILE - 1) / TILE, rows = layout->numel / (inner ? inner : 1);
  int64_t n_tiles = rows * tiles_per_row;
#pragma omp parallel for schedule(static) if (layout->numel > OPS_PARALLEL_MIN)
  for (int64_t t = 0; t < n_tiles; t++) {
    int64_t off[3];
    layout_row_offsets(layout, t / tiles_per_row, off);
    int64_t begin = (t % tiles_per_row) * TILE, end = begin + TILE < inner ? begin + TILE : inner;
    float *yr = y + off[0];
    const float *ar = a + off[1], *br = b + off[2];
    switch (kind) {
      case BINARY_ADD:
        for (int64_t i = begin; i < end; i++) yr[i] = ar[i * sa] + br[i * sb];
        break;
      case BINARY_SUB:
        for (int64_t i = begin; i < end; i++) yr[i] = ar[i * sa] - br[i * sb];
        break;
      case BINARY_MUL:
        for (int64_t i = begin; i < end; i++) yr[i] = ar[i * sa] * br[i * sb];
        break;
    }
  }
}

/* gx += sign * dy (* other, broadcast) summed over the dims where input `which` is broadcast.
 * gx: (shape of input which), dy: (out shape), other: (shape of the other input) or NULL. */
static void binary_backward_input(float *gx, const float *dy, const float *other, const broadcast_layout *layout,
                                  int which, float sign) {
  const int64_t *sx = layout->stride_in[which], *so = layout->stride_in[1 - which];
  int nd = layout->ndim;
  int full = 1;
  for (int d = 0; d < nd; d++)
    if (sx[d] != layout->stride_out[d]) full = 0;
  if (full) {
    /* No broadcast on this side: one output element per input element. */
    int64_t inner = layout->shape[nd - 1], s_other = so[nd - 1];
    int64_t tiles_per_row = (inner + TILE - 1) / TILE, rows = layout->numel / (inner ? inner : 1);
    int64_t n_tiles = rows * tiles_per_row;
#pragma omp parallel for schedule(static) if (layout->numel > OPS_PARALLEL_MIN)
    for (int64_t t = 0; t < n_tiles; t++) {
      int64_t off[3];
      layout_row_offsets(layout, t / tiles_per_row, off);
      int64_t begin = (t % tiles_per_row) * TILE, end = begin + TILE < inner ? begin + TILE : inner;
      float *gr = gx + off[0];
      const float *dr = dy + off[0];
      if (other) {
        const float *orow = other + off[2 - which];
        for (int64_t i = begin; i < end; i++) gr[i] += sign * dr[i] * orow[i * s_other];
      } else {
        for (int64_t i = begin; i < end; i++) gr[i] += sign * dr[i];
      }
    }
    return;
  }
  /* Reduction: each input element (kept dims) sums over the broadcast dims (stride 0 in x). */
  int kept[HAKD_MAX_DIMS], reduced[HAKD_MAX_DIMS], n_kept = 0, n_reduced = 0;
  int64_t n_x = 1, n_outer_reduced = 1;
  for (int d = 0; d < nd; d++) {
    if (sx[d] != 0) {
      kept[n_kept++] = d;
      n_x *= layout->shape[d];
    } else {
      reduced[n_reduced++] = d;
    }
  }
  int last = reduced[n_reduced - 1];
  for (int r = 0; r < n_reduced - 1; r++) n_outer_reduced *= layout->shape[reduced[r]];
  int64_t last_size = layout->shape[last], last_out = layout->stride_out[last], last_other = so[last];
#pragma omp parallel for schedule(static) if (layout->numel > OPS_PARALLEL_MIN && n_x > 1)
  for (int64_t j = 0; j < n_x; j++) {
    int64_t base_out = 0, base_other = 0;
    for (int k = 0; k < n_kept; k++) {
      int d = kept[k];
      int64_t idx = (j / sx[d]) % layout->shape[d];
      base_out += idx * layout->stride_out[d];
      base_other += idx * so[d];
    }
    double acc = 0.0;
    for (int64_t r = 0; r < n_outer_reduced; r++) {
      int64_t off_out = base_out, off_other = base_other, rem = r;
      for (int q = n_reduced - 2; q >= 0; q--) {
        int d = reduced[q];
        int64_t idx = rem % layout->shape[d];
        rem /= layout->shape[d];
        off_out += idx * layout->stride_out[d];
        off_other += idx * so[d];
      }
      const float *dr = dy + off_out;
      if (other) {
        const float *orow = other + off_other;
        for (int64_t i = 0; i < last_size; i++) acc += (double)dr[i * last_out] * (double)orow[i * last_other];
      } else {
        for (int64_t i = 0; i < last_size; i++) acc += (double)dr[i * last_out];
      }
    }
    gx[j] += sign * (float)acc;
  }
}

static void binary_backward(hakd_ctx *ctx, hakd_node *node) {
  binary_kind kind = (binary_kind)node->iarg[0];
  const broadcast_layout *layout = node->saved[0];
  hakd_tensor *a = node->in[0], *b = node->in[1];
  const float *dy = node->out->grad;
  float *ga = hakd_grad(ctx, a);
  if (ga) binary_backward_input(ga, dy, kind == BINARY_MUL ? hakd_f32(b) : NULL, layout, 0, 1.0f);
  float *gb = hakd_grad(ctx, b);
  if (gb)
    binary_backward_input(gb, dy, kind == BINARY_MUL ? hakd_f32(a) : NULL, layout, 1,
                          kind == BINARY_SUB ? -1.0f : 1.0f);
}

static hakd_tensor *binary(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b, binary_kind kind) {
  const char *name = binary_names[kind];
  if (!a || !b) return NULL;
  if (a->dtype != HAKD_F32 || b->dtype != HAKD_F32)
    return hakd_ctx_fail(ctx, HAKD_EINVAL, "%s: inputs must be float32", name);
  broadcast_layout layout;
  int64_t out_shape[HAKD_MAX_DIMS];
  int out_ndim;
  if (broadcast_plan(&layout, out_shape, &out_ndim, a, b) != 0) {
    char sa[96], sb[96];
    return hakd_ctx_fail(ctx, HAKD_ESHAPE, "%s: shapes %s and %s do not broadcast", name,
                         hakd_shape_str(a, sa, sizeof sa), hakd_shape_str(b, sb, sizeof sb));
  }
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, out_ndim, out_shape);
  if (!y) return NULL;
  if (layout.numel > 0) binary_forward(hakd_f32(y), hakd_f32(a), hakd_f32(b), &layout, kind);
  hakd_tensor *in[2] = {a, b};
  hakd_node *node = hakd_record(ctx, name, binary_backward, y, 2, in);
  if (node) {
    node->iarg[0] = kind;
    broadcast_layout *saved = hakd_ctx_alloc(ctx, sizeof *saved);
    if (!saved) return NULL;
    *saved = layout;
    node->saved[0] = saved;
    /* add/sub need no data; mul needs both factors */
    if (kind == BINARY_MUL) hakd_node_unneeded(ctx, node, -1);
    else hakd_node_reads_no_data(ctx, node);
  }
  return y;
}

hakd_tensor *hakd_add(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b) { return binary(ctx, a, b, BINARY_ADD); }
hakd_tensor *hakd_sub(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b) { return binary(ctx, a, b, BINARY_SUB); }
hakd_tensor *hakd_mul(hakd_ctx *ctx, hakd_tensor *a, hakd_tensor *b) { return binary(ctx, a, b, BINARY_MUL); }

static void affine_scalar_backward(hakd_ctx *ctx, hakd_node *node) {
  float *dx = hakd_grad(ctx, node->in[0]);
  if (!dx) return;
  const float *dy = node->out->grad;
  float s = (float)node->farg[0];
  int64_t n = hakd_numel(node->out);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) dx[i] += s * dy[i];
}

/* reference: x * s + c (torch.add(torch.mul(x, s), c)) */
hakd_tensor *hakd_affine_scalar(hakd_ctx *ctx, hakd_tensor *x, float s, float c) {
  if (!x) return NULL;
  if (x->dtype != HAKD_F32) return hakd_ctx_fail(ctx, HAKD_EINVAL, "affine_scalar: input must be float32");
  hakd_tensor *y = hakd_tensor_new(ctx, HAKD_F32, x->ndim, x->shape);
  if (!y) return NULL;
  const float *xs = hakd_f32(x);
  float *ys = hakd_f32(y);
  int64_t n = hakd_numel(x);
#pragma omp parallel for schedule(static) if (n > OPS_PARALLEL_MIN)
  for (int64_t i = 0; i < n; i++) ys[i] = xs[i] * s + c;
  hakd_node *node = hakd_record(ctx, "affine_scalar", affine_scalar_backward, y, 1, &x);
  if (node) {
    node->farg[0] = s;
    hakd_node_reads_no_data(ctx, node);
  }
  return y;
}
