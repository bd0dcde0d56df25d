/* Step context: a bump arena for everything one step creates, and the autodiff tape. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/tensor.h"

#define ARENA_ALIGN 64
#define ARENA_MIN_BLOCK (1u << 20)

typedef struct arena_block {
  struct arena_block *next;
  size_t capacity, used;
  unsigned char *base; /* aligned start of the usable bytes */
} arena_block;

struct hakd_ctx {
  arena_block *blocks; /* current block first */
  size_t step_used;    /* bytes handed out this step, across blocks */
  size_t peak;      /* high-water mark of any step */
  size_t step_peak; /* high-water mark of the current step */
  uint64_t mallocs;
  hakd_node *tape;
  int grad_enabled, training, status;
  uint64_t rng;
};

static arena_block *arena_block_new(hakd_ctx *ctx, size_t capacity) {
  arena_block *b = malloc(sizeof *b + capacity + ARENA_ALIGN);
  if (!b) return NULL;
  ctx->mallocs++;
  b->next = NULL;
  b->capacity = capacity;
  b->used = 0;
  uintptr_t start = (uintptr_t)(b + 1);
  b->base = (unsigned char *)((start + ARENA_ALIGN - 1) & ~(uintptr_t)(ARENA_ALIGN - 1));
  return b;
}

static void arena_free_blocks(arena_block *b) {
  while (b) {
    arena_block *next = b->next;
    free(b);
    b = next;
  }
}

hakd_ctx *hakd_ctx_new(void) {
  hakd_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->grad_enabled = 1;
  ctx->training = 1;
  ctx->rng = hakd_rng_seed(0);
  return ctx;
}

void hakd_ctx_free(hakd_ctx *ctx) {
  if (!ctx) return;
  arena_free_blocks(ctx->blocks);
  free(ctx);
}

void hakd_ctx_reset(hakd_ctx *ctx) {
  /* A step that spilled into several blocks is replanned as one block of its high-water mark,
   * so the next identical step allocates nothing. */
  if (ctx->blocks && ctx->blocks->next) {
    arena_free_blocks(ctx->blocks);
    ctx->blocks = arena_block_new(ctx, ctx->step_peak + ctx->step_peak / 16);
  } else if (ctx->blocks && ctx->step_peak > 0 && ctx->step_peak < ctx->blocks->capacity / 2) {
    /* A step that needed far less than the plan (no-grad scopes handed memory back): replan
     * once at its size. */
    arena_free_blocks(ctx->blocks);
    ctx->blocks = arena_block_new(ctx, ctx->step_peak + ctx->step_peak / 16);
  } else if (ctx->blocks) {
    ctx->blocks->used = 0;
  }
  ctx->step_used = 0;
  ctx->step_peak = 0;
  ctx->tape = NULL;
  ctx->status = 0;
}

void hakd_ctx_set_grad(hakd_ctx *ctx, int enabled) { ctx->grad_enabled = enabled; }
int hakd_ctx_grad(const hakd_ctx *ctx) { return ctx->grad_enabled; }
void hakd_ctx_set_training(hakd_ctx *ctx, int training) { ctx->training = training; }
int hakd_ctx_training(const hakd_ctx *ctx) { return ctx->training; }
void hakd_ctx_seed(hakd_ctx *ctx, uint64_t seed) { ctx->rng = hakd_rng_seed(seed); }
uint64_t *hakd_ctx_rng(hakd_ctx *ctx) { return &ctx->rng; }
int hakd_ctx_status(const hakd_ctx *ctx) { return ctx->status; }

hakd_ctx_stats hakd_ctx_get_stats(const hakd_ctx *ctx) {
  hakd_ctx_stats s = {ctx->mallocs, 0, ctx->step_used, ctx->peak};
  for (arena_block *b = ctx->blocks; b; b = b->next) s.arena_capacity += b->capacity;
  return s;
}

hakd_tensor *hakd_ctx_fail(hakd_ctx *ctx, int status, const char *fmt, ...) {
  if (!ctx->status) {
    char msg[900];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    ctx->status = hakd_error(status, "%s", msg);
  }
  return NULL;
}

void *hakd_ctx_alloc(hakd_ctx *ctx, size_t bytes) {
  size_t need = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  if (need == 0) need = ARENA_ALIGN;
  arena_block *b = ctx->blocks;
  if (!b || b->capacity - b->used < need) {
    size_t cap = b ? 2 * b->capacity : ARENA_MIN_BLOCK;
    if (cap < need) cap = need;
    arena_block *nb = arena_block_new(ctx, cap);
    if (!nb) {
      hakd_ctx_fail(ctx, HAKD_ENOMEM, "out of memory: step needs %zu more bytes", need);
      return NULL;
    }
    nb->next = b;
    ctx->blocks = nb;
    b = nb;
  }
  void *p = b->base + b->used;
  b->used += need;
  ctx->step_used += need;
  if (ctx->step_used > ctx->peak) ctx->peak = ctx->step_used;
  if (ctx->step_used > ctx->step_peak) ctx->step_peak = ctx->step_used;
  return p;
}

static size_t dtype_size(hakd_dtype dtype) { return dtype == HAKD_I32 ? sizeof(int32_t) : sizeof(float); }

hakd_tensor *hakd_tensor_new(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape) {
  if (ndim < 0 || ndim > HAKD_MAX_DIMS) return hakd_ctx_fail(ctx, HAKD_EINVAL, "tensor with %d dims", ndim);
  hakd_tensor *t = hakd_ctx_alloc(ctx, sizeof *t);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->ndim = ndim;
  t->dtype = dtype;
  for (int i = 0; i < ndim; i++) {
    if (shape[i] < 0) return hakd_ctx_fail(ctx, HAKD_EINVAL, "negative dimension %lld", (long long)shape[i]);
    t->shape[i] = shape[i];
  }
  t->data = hakd_ctx_alloc(ctx, (size_t)hakd_numel(t) * dtype_size(dtype));
  return t->data ? t : NULL;
}

hakd_tensor *hakd_tensor_zeros(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape) {
  hakd_tensor *t = hakd_tensor_new(ctx, dtype, ndim, shape);
  if (t) memset(t->data, 0, (size_t)hakd_numel(t) * dtype_size(dtype));
  return t;
}

hakd_tensor *hakd_tensor4(hakd_ctx *ctx, int64_t n, int64_t c, int64_t h, int64_t w) {
  int64_t shape[4] = {n, c, h, w};
  return hakd_tensor_new(ctx, HAKD_F32, 4, shape);
}

hakd_tensor *hakd_tensor_from(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape, const void *data) {
  hakd_tensor *t = hakd_tensor_new(ctx, dtype, ndim, shape);
  if (t) memcpy(t->data, data, (size_t)hakd_numel(t) * dtype_size(dtype));
  return t;
}

hakd_tensor *hakd_tensor_wrap(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape, void *data) {
  if (ndim < 0 || ndim > HAKD_MAX_DIMS) return hakd_ctx_fail(ctx, HAKD_EINVAL, "tensor with %d dims", ndim);
  hakd_tensor *t = hakd_ctx_alloc(ctx, sizeof *t);
  if (!t) return NULL;
  memset(t, 0, sizeof *t);
  t->ndim = ndim;
  t->dtype = dtype;
  for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
  t->data = data;
  return t;
}

hakd_tensor *hakd_detach(hakd_ctx *ctx, hakd_tensor *t) {
  if (!t) return NULL;
  hakd_tensor *d = hakd_ctx_alloc(ctx, sizeof *d);
  if (!d) return NULL;
  *d = *t;
  d->grad = NULL;
  d->requires_grad = 0;
  d->is_param = 0;
  d->node = NULL;
  return d;
}

hakd_node *hakd_record(hakd_ctx *ctx, const char *op, hakd_backward_fn backward, hakd_tensor *out, int n_in,
                       hakd_tensor *const *in) {
  if (!ctx->grad_enabled || !out) return NULL;
  int needed = 0;
  for (int i = 0; i < n_in; i++)
    if (in[i] && in[i]->requires_grad) needed = 1;
  if (!needed) return NULL;
  hakd_node *node = hakd_ctx_alloc(ctx, sizeof *node);
  if (!node) return NULL;
  memset(node, 0, sizeof *node);
  node->backward = backward;
  node->op = op;
  node->out = out;
  node->n_in = n_in;
  for (int i = 0; i < n_in; i++) node->in[i] = in[i];
  node->prev = ctx->tape;
  ctx->tape = node;
  out->requires_grad = 1;
  out->node = node;
  return node;
}

float *hakd_grad(hakd_ctx *ctx, hakd_tensor *t) {
  if (!t || !t->requires_grad) return NULL;
  if (!t->grad) {
    size_t bytes = (size_t)hakd_numel(t) * sizeof(float);
    t->grad = hakd_ctx_alloc(ctx, bytes);
    if (t->grad) memset(t->grad, 0, bytes);
  }
  return t->grad;
}

int hakd_backward(hakd_ctx *ctx, hakd_tensor *loss) { return hakd_backward_seeded(ctx, loss, NULL); }

int hakd_backward_seeded(hakd_ctx *ctx, hakd_tensor *loss, const float *seed) {
  if (ctx->status) return ctx->status;
  if (!loss) return hakd_error(HAKD_EINVAL, "backward: no loss tensor");
  if (!loss->requires_grad) return hakd_error(HAKD_EINVAL, "backward: loss does not depend on any parameter");
  float *g = hakd_grad(ctx, loss);
  if (!g) return ctx->status;
  int64_t n = hakd_numel(loss);
  for (int64_t i = 0; i < n; i++) g[i] += seed ? seed[i] : 1.0f;
  for (hakd_node *node = ctx->tape; node; node = node->prev) {
    if (!node->out->grad) continue; /* no gradient reached this op */
    node->backward(ctx, node);
    if (ctx->status) return ctx->status;
  }
  return 0;
}

int64_t hakd_tape_macs(const hakd_ctx *ctx) {
  double macs = 0;
  for (const hakd_node *node = ctx->tape; node; node = node->prev) {
    const hakd_tensor *out = node->out;
    if (!strcmp(node->op, "conv2d")) {
      const hakd_tensor *w = node->in[1]; /* (Cout, Cin/groups, kh, kw) */
      macs += (double)hakd_numel(out) * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
    } else if (!strcmp(node->op, "linear")) {
      macs += (double)hakd_numel(out) * (double)node->in[1]->shape[1];
    } else if (!strcmp(node->op, "matmul")) {
      /* sqrt(|a| |b| |out| / batches(b)) = B*M*N*K whatever the transposes */
      const hakd_tensor *b = node->in[1];
      double batches = 1;
      for (int d = 0; d + 2 < b->ndim; d++) batches *= (double)b->shape[d];
      macs += sqrt((double)hakd_numel(node->in[0]) * (double)hakd_numel(b) * (double)hakd_numel(out) / batches);
    }
  }
  return (int64_t)(macs + 0.5);
}

hakd_arena_mark hakd_ctx_mark(hakd_ctx *ctx) {
  hakd_arena_mark m = {ctx->blocks, ctx->blocks ? ctx->blocks->used : 0};
  return m;
}

static int compare_by_data(const void *a, const void *b) {
  const hakd_tensor *x = *(hakd_tensor *const *)a, *y = *(hakd_tensor *const *)b;
  return (uintptr_t)x->data < (uintptr_t)y->data ? -1 : (uintptr_t)x->data > (uintptr_t)y->data;
}

/* Slow path of a collapse across arena blocks (only while the first step grows the arena):
 * the kept tensors go through temporary copies, the blocks made since the mark are freed. */
static void collapse_across_blocks(hakd_ctx *ctx, hakd_arena_mark mark, int n, hakd_tensor **keep) {
  hakd_tensor saved[16];
  void *copies[16] = {0};
  for (int i = 0; i < n; i++) {
    saved[i] = *keep[i];
    size_t bytes = (size_t)hakd_numel(keep[i]) * (keep[i]->dtype == HAKD_I32 ? sizeof(int32_t) : sizeof(float));
    copies[i] = malloc(bytes ? bytes : 1);
    if (!copies[i]) {
      for (int k = 0; k < i; k++) free(copies[k]);
      return;
    }
    memcpy(copies[i], keep[i]->data, bytes);
  }
  size_t freed = 0;
  while (ctx->blocks && ctx->blocks != mark.block) {
    arena_block *next = ctx->blocks->next;
    freed += ctx->blocks->used;
    free(ctx->blocks);
    ctx->blocks = next;
  }
  if (ctx->blocks) {
    freed += ctx->blocks->used - mark.used;
    ctx->blocks->used = mark.used;
  }
  ctx->step_used -= freed;
  for (int i = 0; i < n; i++) {
    hakd_tensor *t = hakd_tensor_new(ctx, saved[i].dtype, saved[i].ndim, saved[i].shape);
    if (t) {
      memcpy(t->data, copies[i], (size_t)hakd_numel(t) * (t->dtype == HAKD_I32 ? sizeof(int32_t) : sizeof(float)));
      t->name = saved[i].name;
    }
    keep[i] = t;
    free(copies[i]);
  }
}

void hakd_ctx_collapse(hakd_ctx *ctx, hakd_arena_mark mark, int n, hakd_tensor **keep) {
  arena_block *b = ctx->blocks;
  if (ctx->grad_enabled || ctx->status || !b || n > 16) return;
  for (int i = 0; i < n; i++)
    if (!keep[i]) return;
  if (b != mark.block) {
    /* the mark's block must still be in the chain (or the mark predates every block) */
    int found = mark.block == NULL;
    for (arena_block *it = b; it && !found; it = it->next) found = it == mark.block;
    if (found) collapse_across_blocks(ctx, mark, n, keep);
    return;
  }
  unsigned char *floor = b->base + mark.used, *top = b->base + b->used;
  hakd_tensor *order[16], saved[16];
  for (int i = 0; i < n; i++) {
    unsigned char *d = keep[i]->data;
    if (d < floor || d >= top) return; /* only tensors made inside the scope move */
    order[i] = keep[i];
  }
  qsort(order, (size_t)n, sizeof order[0], compare_by_data);
  for (int i = 0; i + 1 < n; i++)
    if (order[i]->data == order[i + 1]->data) return; /* views of one buffer: keep it simple */
  for (int i = 0; i < n; i++) saved[i] = *order[i];
  /* Ascending order: each destination ends before its source's next neighbour starts. */
  size_t at = mark.used;
  void *moved[16];
  for (int i = 0; i < n; i++) {
    size_t bytes = (size_t)hakd_numel(&saved[i]) * (saved[i].dtype == HAKD_I32 ? sizeof(int32_t) : sizeof(float));
    moved[i] = b->base + at;
    memmove(moved[i], saved[i].data, bytes);
    at += (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  }
  ctx->step_used -= b->used - at;
  b->used = at;
  /* Which sorted slot each keep[k] is, decided before any new struct can reuse an old address. */
  int slot[16];
  for (int k = 0; k < n; k++)
    for (int i = 0; i < n; i++)
      if (keep[k] == order[i]) slot[k] = i;
  hakd_tensor *fresh[16];
  for (int i = 0; i < n; i++) {
    hakd_tensor *t = hakd_ctx_alloc(ctx, sizeof *t);
    *t = saved[i];
    t->data = moved[i];
    t->grad = NULL;
    t->node = NULL;
    fresh[i] = t;
  }
  for (int k = 0; k < n; k++) keep[k] = fresh[slot[k]];
}
