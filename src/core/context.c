/* Step context: the autodiff tape, a bump arena for step metadata and planned step buffers for
 * tensor data and gradients (see tensor.h for the lifetime rules). */
#define _DEFAULT_SOURCE /* mmap's MAP_ANONYMOUS */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "hakd/tensor.h"

#define ARENA_ALIGN 64
#define ARENA_MIN_BLOCK (1u << 20)
#define ALIVE_AT_END INT64_MAX
/* Buffers of a step off the plan from this size on are mapped pages of their own, so their
 * death returns the memory at once: malloc would keep freed mid-size chunks in its heap and a
 * first step's fragmentation would stay in the process's footprint. */
#define MAPPED_MIN (256u << 10)

static size_t align_up(size_t bytes) {
  size_t need = (bytes + ARENA_ALIGN - 1) & ~(size_t)(ARENA_ALIGN - 1);
  return need ? need : ARENA_ALIGN;
}

typedef struct arena_block {
  struct arena_block *next;
  size_t capacity, used;
  unsigned char *base; /* aligned start of the usable bytes */
} arena_block;

typedef enum { BUFFER_DATA, BUFFER_GRAD, BUFFER_SCRATCH } buffer_kind;

/* One step buffer. Times are ticks of the step clock, which advances at every allocation and
 * at every event that can end lifetimes (a scope collapse, a node's backward). */
typedef struct {
  size_t bytes;
  int64_t start, end; /* end = 0 while alive */
  void *ptr;
  int needs;          /* recorded ops whose backward still reads it */
  unsigned char kind, internal, dynamic; /* dynamic: allocated on its own, freed when it dies */
} step_buffer;

/* Offsets into one block for the buffers of a recorded step, valid while a step repeats the
 * recorded sequence of allocations and deaths. */
typedef struct {
  int n;
  size_t *bytes, *offset;
  int64_t *start, *end;
  int32_t *by_end; /* buffer ids in order of end */
  unsigned char *block;
  size_t block_bytes;
} memory_plan;

struct hakd_ctx {
  arena_block *blocks; /* metadata arena, current block first */
  size_t meta_used;    /* metadata bytes handed out this step, across blocks */
  size_t meta_peak;    /* high-water mark of the current step's metadata */
  step_buffer *buf;
  int32_t n_buf, cap_buf;
  int64_t clock;
  size_t live;      /* bytes of step buffers alive now */
  size_t step_peak; /* high-water mark of meta_used + live in this step */
  size_t peak;      /* ... in any step */
  memory_plan plan;
  int following;      /* this step still follows the plan */
  int32_t plan_cursor; /* plan.by_end entries checked to be dead */
  int in_backward;
  int tape_consumed;
  uint64_t mallocs;
  hakd_node *tape;
  int grad_enabled, training, status;
  hakd_precision precision;
  uint64_t rng;
  int64_t sample_offset;
  const hakd_comm *comm;
  int sync_bn;
  hakd_grad_ready_fn grad_ready;
  void *grad_ready_user;
};

/* ---- metadata arena ---- */

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

static void note_peak(hakd_ctx *ctx) {
  size_t now = ctx->meta_used + ctx->live;
  if (now > ctx->step_peak) ctx->step_peak = now;
  if (now > ctx->peak) ctx->peak = now;
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
  size_t need = align_up(bytes);
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
  ctx->meta_used += need;
  if (ctx->meta_used > ctx->meta_peak) ctx->meta_peak = ctx->meta_used;
  note_peak(ctx);
  return p;
}

/* ---- step buffers ---- */

/* Whether buffer `id` (just stamped with its start) may take its planned place: the plan
 * must know it with this size and start, and every buffer the plan lets it overlap, i.e. every
 * buffer planned to end before it starts, must really be dead by then. */
static int plan_admits(hakd_ctx *ctx, int32_t id) {
  const memory_plan *p = &ctx->plan;
  const step_buffer *b = &ctx->buf[id];
  if (id >= p->n || p->bytes[id] != b->bytes || p->start[id] != b->start) return 0;
  while (ctx->plan_cursor < p->n && p->end[p->by_end[ctx->plan_cursor]] < b->start) {
    int32_t j = p->by_end[ctx->plan_cursor];
    if (j >= id || ctx->buf[j].end == 0 || ctx->buf[j].end > p->end[j]) return 0;
    ctx->plan_cursor++;
  }
  return 1;
}

static void *own_alloc(size_t bytes) {
  if (bytes < MAPPED_MIN) return aligned_alloc(ARENA_ALIGN, bytes);
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return NULL;
  /* transparent huge pages where the system leaves them to madvise: fewer TLB misses in the
   * streaming kernels */
  madvise(p, bytes, MADV_HUGEPAGE);
  return p;
}

static void own_free(void *p, size_t bytes) {
  if (bytes < MAPPED_MIN) free(p);
  else if (p) munmap(p, bytes);
}

static void *buffer_alloc(hakd_ctx *ctx, size_t bytes, buffer_kind kind, int32_t *id_out) {
  if (ctx->n_buf == ctx->cap_buf) {
    int32_t cap = ctx->cap_buf ? 2 * ctx->cap_buf : 1024;
    step_buffer *grown = realloc(ctx->buf, (size_t)cap * sizeof *grown);
    if (!grown) {
      hakd_ctx_fail(ctx, HAKD_ENOMEM, "out of memory: step buffer table of %d entries", (int)cap);
      return NULL;
    }
    ctx->buf = grown;
    ctx->cap_buf = cap;
  }
  int32_t id = ctx->n_buf;
  step_buffer *b = &ctx->buf[id];
  memset(b, 0, sizeof *b);
  b->bytes = align_up(bytes);
  b->start = ++ctx->clock;
  b->kind = (unsigned char)kind;
  if (ctx->following && !plan_admits(ctx, id)) ctx->following = 0;
  if (ctx->following) {
    b->ptr = ctx->plan.block + ctx->plan.offset[id];
  } else {
    b->ptr = own_alloc(b->bytes);
    if (!b->ptr) {
      hakd_ctx_fail(ctx, HAKD_ENOMEM, "out of memory: step needs %zu more bytes", b->bytes);
      return NULL;
    }
    b->dynamic = 1;
    ctx->mallocs++;
  }
  ctx->n_buf++;
  ctx->live += b->bytes;
  note_peak(ctx);
  if (id_out) *id_out = id + 1;
  return b->ptr;
}

static void buffer_die(hakd_ctx *ctx, int32_t id) {
  step_buffer *b = &ctx->buf[id];
  if (b->end) return;
  b->end = ctx->clock;
  ctx->live -= b->bytes;
  if (b->dynamic) own_free(b->ptr, b->bytes);
  b->ptr = NULL;
}

/* A recorded op no longer needs the data of t for backward. */
static void buffer_release(hakd_ctx *ctx, const hakd_tensor *t) {
  if (!t || !t->buffer) return;
  step_buffer *b = &ctx->buf[t->buffer - 1];
  if (--b->needs == 0 && b->internal) buffer_die(ctx, t->buffer - 1);
}

static void plan_free(memory_plan *p) {
  free(p->bytes);
  free(p->offset);
  free(p->start);
  free(p->end);
  free(p->by_end);
  own_free(p->block, p->block_bytes);
  memset(p, 0, sizeof *p);
}

typedef struct {
  size_t offset, end;
} placed_range;

static const step_buffer *sort_buffers; /* qsort has no context argument */

static int by_size_descending(const void *a, const void *b) {
  const step_buffer *x = &sort_buffers[*(const int32_t *)a], *y = &sort_buffers[*(const int32_t *)b];
  if (x->bytes != y->bytes) return x->bytes < y->bytes ? 1 : -1;
  return x->start < y->start ? -1 : x->start > y->start;
}

static int by_end_ascending(const void *a, const void *b) {
  const step_buffer *x = &sort_buffers[*(const int32_t *)a], *y = &sort_buffers[*(const int32_t *)b];
  return x->end < y->end ? -1 : x->end > y->end;
}

static int by_offset(const void *a, const void *b) {
  const placed_range *x = a, *y = b;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Packs the lifetimes of this step's buffers into one block: largest first, each at the lowest
 * offset free of every placed buffer alive at some common tick. */
static int plan_build(hakd_ctx *ctx) {
  memory_plan p = {0};
  int32_t n = ctx->n_buf;
  p.n = n;
  p.bytes = malloc((size_t)n * sizeof *p.bytes);
  p.offset = malloc((size_t)n * sizeof *p.offset);
  p.start = malloc((size_t)n * sizeof *p.start);
  p.end = malloc((size_t)n * sizeof *p.end);
  p.by_end = malloc((size_t)n * sizeof *p.by_end);
  int32_t *order = malloc((size_t)n * sizeof *order), *placed = malloc((size_t)n * sizeof *placed);
  placed_range *ranges = malloc((size_t)n * sizeof *ranges);
  int ok = p.bytes && p.offset && p.start && p.end && p.by_end && order && placed && ranges;
  if (ok) {
    for (int32_t i = 0; i < n; i++) {
      p.bytes[i] = ctx->buf[i].bytes;
      p.start[i] = ctx->buf[i].start;
      p.end[i] = ctx->buf[i].end;
      order[i] = p.by_end[i] = i;
    }
    sort_buffers = ctx->buf;
    qsort(order, (size_t)n, sizeof *order, by_size_descending);
    qsort(p.by_end, (size_t)n, sizeof *p.by_end, by_end_ascending);
    int32_t n_placed = 0;
    for (int32_t k = 0; k < n; k++) {
      int32_t i = order[k];
      int n_ranges = 0;
      for (int32_t q = 0; q < n_placed; q++) {
        int32_t j = placed[q];
        if (p.start[j] <= p.end[i] && p.start[i] <= p.end[j])
          ranges[n_ranges++] = (placed_range){p.offset[j], p.offset[j] + p.bytes[j]};
      }
      qsort(ranges, (size_t)n_ranges, sizeof *ranges, by_offset);
      size_t at = 0;
      for (int r = 0; r < n_ranges && ranges[r].offset < at + p.bytes[i]; r++)
        if (ranges[r].end > at) at = ranges[r].end;
      p.offset[i] = at;
      if (at + p.bytes[i] > p.block_bytes) p.block_bytes = at + p.bytes[i];
      placed[n_placed++] = i;
    }
    if (!p.block_bytes) p.block_bytes = ARENA_ALIGN;
    p.block = own_alloc(p.block_bytes);
    ok = p.block != NULL;
    if (ok) ctx->mallocs++;
  }
  free(order);
  free(placed);
  free(ranges);
  plan_free(&ctx->plan);
  if (!ok) {
    plan_free(&p);
    return -1;
  }
  ctx->plan = p;
  return 0;
}

/* ---- context ---- */

hakd_ctx *hakd_ctx_new(void) {
  hakd_ctx *ctx = calloc(1, sizeof *ctx);
  if (!ctx) return NULL;
  ctx->grad_enabled = 1;
  ctx->training = 1;
  ctx->rng = hakd_rng_seed(0);
  return ctx;
}

static void buffers_end_step(hakd_ctx *ctx) {
  for (int32_t i = 0; i < ctx->n_buf; i++) {
    step_buffer *b = &ctx->buf[i];
    if (b->end) continue;
    if (b->dynamic) own_free(b->ptr, b->bytes);
    b->ptr = NULL;
    b->end = ALIVE_AT_END;
  }
  ctx->live = 0;
}

void hakd_ctx_free(hakd_ctx *ctx) {
  if (!ctx) return;
  buffers_end_step(ctx);
  free(ctx->buf);
  plan_free(&ctx->plan);
  arena_free_blocks(ctx->blocks);
  free(ctx);
}

void hakd_ctx_reset(hakd_ctx *ctx) {
  buffers_end_step(ctx);
  /* A step that did not follow the plan to its end is the new plan (an empty step, e.g. two
   * resets in a row, changes nothing). */
  if (ctx->n_buf > 0 && !(ctx->following && ctx->n_buf == ctx->plan.n) && plan_build(ctx))
    plan_free(&ctx->plan); /* out of memory for the plan: the next step allocates buffer by buffer */
  /* A metadata arena that spilled into several blocks is replanned as one block of its
   * high-water mark, and so is one far larger than the step needed. */
  if (ctx->blocks && (ctx->blocks->next || (ctx->meta_peak > 0 && ctx->meta_peak < ctx->blocks->capacity / 2))) {
    arena_free_blocks(ctx->blocks);
    ctx->blocks = arena_block_new(ctx, ctx->meta_peak + ctx->meta_peak / 16);
  } else if (ctx->blocks) {
    ctx->blocks->used = 0;
  }
  ctx->meta_used = 0;
  ctx->meta_peak = 0;
  ctx->step_peak = 0;
  ctx->n_buf = 0;
  ctx->clock = 0;
  ctx->following = ctx->plan.n > 0;
  ctx->plan_cursor = 0;
  ctx->in_backward = 0;
  ctx->tape_consumed = 0;
  ctx->tape = NULL;
  ctx->status = 0;
}

void hakd_ctx_set_grad(hakd_ctx *ctx, int enabled) { ctx->grad_enabled = enabled; }
int hakd_ctx_grad(const hakd_ctx *ctx) { return ctx->grad_enabled; }
void hakd_ctx_set_training(hakd_ctx *ctx, int training) { ctx->training = training; }
int hakd_ctx_training(const hakd_ctx *ctx) { return ctx->training; }
void hakd_ctx_set_precision(hakd_ctx *ctx, hakd_precision precision) { ctx->precision = precision; }
hakd_precision hakd_ctx_precision(const hakd_ctx *ctx) { return ctx->precision; }
void hakd_ctx_seed(hakd_ctx *ctx, uint64_t seed) { ctx->rng = hakd_rng_seed(seed); }
uint64_t *hakd_ctx_rng(hakd_ctx *ctx) { return &ctx->rng; }
void hakd_ctx_set_sample_offset(hakd_ctx *ctx, int64_t first) { ctx->sample_offset = first; }
int64_t hakd_ctx_sample_offset(const hakd_ctx *ctx) { return ctx->sample_offset; }
void hakd_ctx_set_comm(hakd_ctx *ctx, const hakd_comm *comm, int sync_bn) {
  ctx->comm = comm;
  ctx->sync_bn = sync_bn;
}
const hakd_comm *hakd_ctx_comm(const hakd_ctx *ctx) { return ctx->comm && ctx->comm->size > 1 ? ctx->comm : NULL; }
int hakd_ctx_sync_bn(const hakd_ctx *ctx) { return hakd_ctx_comm(ctx) && ctx->sync_bn; }
int hakd_ctx_allreduce_sum(hakd_ctx *ctx, double *values, int64_t n) {
  const hakd_comm *comm = hakd_ctx_comm(ctx);
  if (!comm || ctx->status) return ctx->status;
  int rc = comm->allreduce_sum(comm, values, n);
  if (rc && !ctx->status) ctx->status = rc;
  return rc;
}
void hakd_ctx_set_grad_ready(hakd_ctx *ctx, hakd_grad_ready_fn fn, void *user) {
  ctx->grad_ready = fn;
  ctx->grad_ready_user = user;
}
int hakd_ctx_status(const hakd_ctx *ctx) { return ctx->status; }

hakd_ctx_stats hakd_ctx_get_stats(const hakd_ctx *ctx) {
  hakd_ctx_stats s = {ctx->mallocs, ctx->plan.block_bytes, ctx->meta_used + ctx->live, ctx->peak};
  for (arena_block *b = ctx->blocks; b; b = b->next) s.arena_capacity += b->capacity;
  return s;
}

void *hakd_ctx_scratch(hakd_ctx *ctx, size_t bytes) { return buffer_alloc(ctx, bytes, BUFFER_SCRATCH, NULL); }

void hakd_ctx_scratch_free(hakd_ctx *ctx, void *scratch) {
  if (!scratch) return;
  for (int32_t id = ctx->n_buf - 1; id >= 0; id--) {
    step_buffer *b = &ctx->buf[id];
    if (b->kind == BUFFER_SCRATCH && !b->end && b->ptr == scratch) {
      ctx->clock++;
      buffer_die(ctx, id);
      return;
    }
  }
}

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
  /* made while an op runs backward: that op's temporary */
  buffer_kind kind = ctx->in_backward ? BUFFER_SCRATCH : BUFFER_DATA;
  t->data = buffer_alloc(ctx, hakd_tensor_bytes(t), kind, &t->buffer);
  return t->data ? t : NULL;
}

hakd_tensor *hakd_tensor_zeros(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape) {
  hakd_tensor *t = hakd_tensor_new(ctx, dtype, ndim, shape);
  if (t) memset(t->data, 0, hakd_tensor_bytes(t));
  return t;
}

hakd_tensor *hakd_tensor4(hakd_ctx *ctx, int64_t n, int64_t c, int64_t h, int64_t w) {
  int64_t shape[4] = {n, c, h, w};
  return hakd_tensor_new(ctx, HAKD_F32, 4, shape);
}

hakd_tensor *hakd_tensor_from(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape, const void *data) {
  hakd_tensor *t = hakd_tensor_new(ctx, dtype, ndim, shape);
  if (t) memcpy(t->data, data, hakd_tensor_bytes(t));
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
  d->grad_buffer = 0;
  d->requires_grad = 0;
  d->is_param = 0;
  d->node = NULL;
  return d;
}

/* ---- scopes ---- */

hakd_arena_mark hakd_ctx_mark(hakd_ctx *ctx) {
  hakd_arena_mark m = {ctx->n_buf};
  return m;
}

void hakd_ctx_collapse(hakd_ctx *ctx, hakd_arena_mark mark, int n, hakd_tensor *const *keep) {
  if (ctx->status) return;
  ctx->clock++;
  for (int32_t id = mark.first_buffer; id < ctx->n_buf; id++) {
    step_buffer *b = &ctx->buf[id];
    if (b->end) continue;
    if (b->kind == BUFFER_SCRATCH) {
      buffer_die(ctx, id);
      continue;
    }
    if (b->kind != BUFFER_DATA) continue;
    int kept = 0;
    for (int i = 0; i < n && !kept; i++) kept = keep[i] && keep[i]->buffer == id + 1;
    if (kept) continue;
    b->internal = 1;
    if (b->needs == 0) buffer_die(ctx, id);
  }
}

/* ---- autodiff ---- */

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
  for (int i = 0; i < n_in; i++) {
    node->in[i] = in[i];
    if (in[i] && in[i]->buffer) ctx->buf[in[i]->buffer - 1].needs++;
  }
  if (out->buffer) ctx->buf[out->buffer - 1].needs++;
  node->prev = ctx->tape;
  ctx->tape = node;
  out->requires_grad = 1;
  out->node = node;
  return node;
}

void hakd_node_unneeded(hakd_ctx *ctx, hakd_node *node, int which) {
  if (!node) return;
  unsigned bit = 1u << (which < 0 ? HAKD_NODE_MAX_INPUTS : which);
  if (node->released & bit) return;
  node->released |= bit;
  buffer_release(ctx, which < 0 ? node->out : node->in[which]);
}

void hakd_node_reads_no_data(hakd_ctx *ctx, hakd_node *node) {
  if (!node) return;
  for (int i = 0; i < node->n_in; i++) hakd_node_unneeded(ctx, node, i);
  hakd_node_unneeded(ctx, node, -1);
}

/* Bytes of t's gradient: a blocked bfloat16 activation's gradient is float32 in the same blocked
 * layout (padding channels zero): sums of several consumers' gradients (a residual's two paths)
 * keep float32 precision, and the ops read it block by block like the activation (hakd/tensor.h). */
static size_t grad_bytes(const hakd_tensor *t) {
  return t->dtype == HAKD_BF16_BLOCKED   ? hakd_tensor_bytes(t) * 2
         : t->dtype == HAKD_F32_BLOCKED ? hakd_tensor_bytes(t)
                                         : (size_t)hakd_numel(t) * sizeof(float);
}

float *hakd_grad(hakd_ctx *ctx, hakd_tensor *t) {
  if (!t || !t->requires_grad) return NULL;
  if (t->grad_stale) return hakd_param_grad(t);
  if (!t->grad && t->node && t->node->grad_is_input_grad) {
    /* gradients of a view accumulate straight into its input's, which it does not own */
    t->grad = hakd_grad(ctx, t->node->in[0]);
    return t->grad;
  }
  if (!t->grad) {
    size_t bytes = grad_bytes(t);
    t->grad = buffer_alloc(ctx, bytes, BUFFER_GRAD, &t->grad_buffer);
    if (t->grad) memset(t->grad, 0, bytes);
  }
  return t->grad;
}

/* HAKD_FRESH_GRADS: 1 (the default: unset, empty or "1") or 0; any other value is -1 (a typo must
 * not silently measure the other path: hakd_grad_fresh fails the context). */
static int fresh_grads_enabled(void) {
  static int enabled = -2;
  if (enabled == -2) {
    const char *env = getenv("HAKD_FRESH_GRADS");
    enabled = !env || !*env || strcmp(env, "1") == 0 ? 1 : strcmp(env, "0") == 0 ? 0 : -1;
  }
  return enabled;
}

float *hakd_grad_fresh(hakd_ctx *ctx, hakd_tensor *t, int *fresh) {
  *fresh = 0;
  if (!t || !t->requires_grad) return NULL;
  if (fresh_grads_enabled() < 0) {
    hakd_ctx_fail(ctx, HAKD_EINVAL, "HAKD_FRESH_GRADS=%s: expected 0 or 1", getenv("HAKD_FRESH_GRADS"));
    return NULL;
  }
  if (t->grad_stale && t->grad && t->dtype == HAKD_F32 && fresh_grads_enabled()) {
    t->grad_stale = 0;
    *fresh = 1;
    return t->grad;
  }
  /* a blocked activation's gradient only without padding channels (which must stay zero) */
  int layout_ok = t->dtype == HAKD_F32 || (HAKD_IS_BLOCKED(t) && t->ndim == 4 && t->shape[1] % 16 == 0);
  if (t->grad || t->is_param || !layout_ok || (t->node && t->node->grad_is_input_grad) || !fresh_grads_enabled())
    return hakd_grad(ctx, t);
  t->grad = buffer_alloc(ctx, grad_bytes(t), BUFFER_GRAD, &t->grad_buffer);
  *fresh = t->grad != NULL;
  return t->grad;
}

/* After node's backward: its temporaries, its output's gradient and the data only it still
 * needed die. */
static void node_done(hakd_ctx *ctx, hakd_node *node, int32_t first_buffer) {
  ctx->clock++;
  for (int32_t id = first_buffer; id < ctx->n_buf; id++)
    if (ctx->buf[id].kind == BUFFER_SCRATCH) buffer_die(ctx, id);
  hakd_tensor *out = node->out;
  if (out->grad_buffer) {
    buffer_die(ctx, out->grad_buffer - 1);
    out->grad = NULL;
    out->grad_buffer = 0;
  }
  for (int i = 0; i < node->n_in; i++)
    if (!(node->released & (1u << i))) buffer_release(ctx, node->in[i]);
  if (!(node->released & (1u << HAKD_NODE_MAX_INPUTS))) buffer_release(ctx, out);
}

int hakd_backward(hakd_ctx *ctx, hakd_tensor *loss) { return hakd_backward_seeded(ctx, loss, NULL); }

int hakd_backward_seeded(hakd_ctx *ctx, hakd_tensor *loss, const float *seed) {
  if (ctx->status) return ctx->status;
  if (!loss) return hakd_error(HAKD_EINVAL, "backward: no loss tensor");
  if (ctx->tape_consumed)
    return hakd_error(HAKD_EINVAL, "backward: this step's tape has already run backward (reset the context first)");
  if (!loss->requires_grad) return hakd_error(HAKD_EINVAL, "backward: loss does not depend on any parameter");
  float *g = hakd_grad(ctx, loss);
  if (!g) return ctx->status;
  int64_t n = hakd_numel(loss);
  for (int64_t i = 0; i < n; i++) g[i] += seed ? seed[i] : 1.0f;
  ctx->tape_consumed = 1;
  ctx->in_backward = 1;
  /* A parameter's gradient is complete once every node reading it has run backward. */
  if (ctx->grad_ready) {
    for (hakd_node *node = ctx->tape; node; node = node->prev)
      for (int i = 0; i < node->n_in; i++)
        if (node->in[i] && node->in[i]->is_param) node->in[i]->pending_reads = 0;
    for (hakd_node *node = ctx->tape; node; node = node->prev)
      for (int i = 0; i < node->n_in; i++)
        if (node->in[i] && node->in[i]->is_param) node->in[i]->pending_reads++;
  }
  for (hakd_node *node = ctx->tape; node; node = node->prev) {
    int32_t first_buffer = ctx->n_buf;
    if (node->out->grad) node->backward(ctx, node); /* else no gradient reached this op */
    if (ctx->status) break;
    node_done(ctx, node, first_buffer);
    if (ctx->grad_ready)
      for (int i = 0; i < node->n_in; i++)
        if (node->in[i] && node->in[i]->is_param && --node->in[i]->pending_reads == 0)
          ctx->grad_ready(ctx->grad_ready_user, node->in[i]);
  }
  ctx->in_backward = 0;
  return ctx->status;
}

/* executed: a conv2d counts the multiply-adds its path ran (the op stores them in iarg[5]), a
 * depthwise_conv2d_tokens those inside the map (iarg[8]); otherwise nodes with reference_macs
 * count the reference architecture's. */
static int64_t tape_macs(const hakd_ctx *ctx, int executed) {
  double macs = 0;
  for (const hakd_node *node = ctx->tape; node; node = node->prev) {
    const hakd_tensor *out = node->out;
    if (!executed && node->has_reference_macs) {
      macs += (double)node->reference_macs;
    } else if (!strcmp(node->op, "conv2d")) {
      const hakd_tensor *w = node->in[1]; /* (Cout, Cin/groups, kh, kw) */
      macs += executed ? (double)node->iarg[5]
                       : (double)hakd_numel(out) * (double)(w->shape[1] * w->shape[2] * w->shape[3]);
    } else if (!strcmp(node->op, "depthwise_conv2d_tokens")) {
      const hakd_tensor *w = node->in[1]; /* (C, 1, k, k); iarg[8]: the products inside the map */
      macs += executed ? (double)node->iarg[8] : (double)hakd_numel(out) * (double)(w->shape[2] * w->shape[3]);
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

int64_t hakd_tape_macs(const hakd_ctx *ctx) { return tape_macs(ctx, 0); }

int64_t hakd_tape_executed_macs(const hakd_ctx *ctx) { return tape_macs(ctx, 1); }
