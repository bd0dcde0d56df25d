#include "hakd/optim.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  hakd_tensor *param;
  float lr_mult;
  int decay;
  float *m, *v; /* SGD: m = momentum buffer; AdamW: exp_avg, exp_avg_sq */
  char *m_name, *v_name;
} optim_entry;

struct hakd_optimizer {
  hakd_optim_config config;
  optim_entry *entries;
  int count, capacity;
  int64_t steps;
};

void hakd_optim_config_default(hakd_optim_config *c, hakd_optim_kind kind) {
  memset(c, 0, sizeof *c);
  c->kind = kind;
  c->momentum = 0.9f;
  c->weight_decay = kind == HAKD_OPTIM_SGD ? 1e-4f : 0.01f;
  c->beta1 = 0.9f;
  c->beta2 = 0.999f;
  c->eps = 1e-8f;
}

hakd_optimizer *hakd_optim_new(const hakd_optim_config *c) {
  hakd_optimizer *o = calloc(1, sizeof *o);
  if (o) o->config = *c;
  return o;
}

void hakd_optim_free(hakd_optimizer *o) {
  if (!o) return;
  for (int i = 0; i < o->count; i++) {
    free(o->entries[i].m);
    free(o->entries[i].v);
    free(o->entries[i].m_name);
    free(o->entries[i].v_name);
  }
  free(o->entries);
  free(o);
}

static int optim_has(const hakd_optimizer *o, const hakd_tensor *t) {
  for (int i = 0; i < o->count; i++)
    if (o->entries[i].param == t) return 1;
  return 0;
}

static char *join_name(const char *a, const char *b) {
  size_t n = strlen(a) + strlen(b) + 2;
  char *s = malloc(n);
  if (s) snprintf(s, n, "%s.%s", a, b);
  return s;
}

int hakd_optim_add_group(hakd_optimizer *o, hakd_params *p, const char *prefix, float lr_mult, int no_decay_1d) {
  int added = 0;
  size_t plen = prefix ? strlen(prefix) : 0;
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (!t->requires_grad || optim_has(o, t)) continue;
    if (prefix && strncmp(t->name, prefix, plen) != 0) continue;
    if (o->count == o->capacity) {
      int cap = o->capacity ? 2 * o->capacity : 64;
      optim_entry *e = realloc(o->entries, (size_t)cap * sizeof *e);
      if (!e) return hakd_error(HAKD_ENOMEM, "out of memory in optimizer");
      o->entries = e;
      o->capacity = cap;
    }
    optim_entry *e = &o->entries[o->count];
    memset(e, 0, sizeof *e);
    e->param = t;
    e->lr_mult = lr_mult;
    e->decay = !(no_decay_1d && t->ndim <= 1);
    size_t bytes = (size_t)hakd_numel(t) * sizeof(float);
    int adam = o->config.kind == HAKD_OPTIM_ADAMW;
    e->m = calloc(1, bytes ? bytes : 1);
    e->m_name = join_name(t->name, adam ? "exp_avg" : "momentum_buffer");
    if (adam) {
      e->v = calloc(1, bytes ? bytes : 1);
      e->v_name = join_name(t->name, "exp_avg_sq");
    }
    if (!e->m || !e->m_name || (adam && (!e->v || !e->v_name))) {
      free(e->m), free(e->v), free(e->m_name), free(e->v_name);
      return hakd_error(HAKD_ENOMEM, "out of memory in optimizer");
    }
    o->count++;
    added++;
  }
  return added;
}

/* Sums of squares run in NORM_CHUNKS fixed slices of a tensor, each in NORM_LANES double lanes,
 * and the slices add in order: vectorised, split over threads, and the same for any thread
 * count (a single running sum is a serial chain of additions: 43 ms a step on r50's 40 M
 * parameters). */
#define NORM_CHUNKS 64
#define NORM_LANES 8

/* Sum of g[j]^2 over [lo, hi): NORM_LANES lanes, then the tail, then the lanes in order. */
static double slice_squares(const float *g, int64_t lo, int64_t hi) {
  int64_t body = lo + (hi - lo) / NORM_LANES * NORM_LANES;
  double lane[NORM_LANES] = {0}, sum = 0.0;
  for (int64_t j = lo; j < body; j += NORM_LANES)
    for (int k = 0; k < NORM_LANES; k++) lane[k] += (double)g[j + k] * (double)g[j + k];
  for (int64_t j = body; j < hi; j++) sum += (double)g[j] * (double)g[j];
  for (int k = 0; k < NORM_LANES; k++) sum += lane[k];
  return sum;
}

static double sum_squares(const float *g, int64_t n) {
  double part[NORM_CHUNKS];
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int c = 0; c < NORM_CHUNKS; c++) part[c] = slice_squares(g, n * c / NORM_CHUNKS, n * (c + 1) / NORM_CHUNKS);
  double total = 0.0;
  for (int c = 0; c < NORM_CHUNKS; c++) total += part[c];
  return total;
}

static double global_grad_norm(const hakd_optimizer *o) {
  double sq = 0;
  for (int i = 0; i < o->count; i++) sq += sum_squares(hakd_param_grad(o->entries[i].param), hakd_numel(o->entries[i].param));
  return sqrt(sq);
}

/* The constants of one parameter's update. The update loops read them from locals: through a
 * pointer every store to w, m or v could change them, and the loops would reload them per
 * element. optim.c compiles with -fno-math-errno (CMakeLists.txt), so sqrtf vectorises; v >= 0,
 * so errno was never set. */
typedef struct {
  int sgd, first;
  float clip_scale, wd, momentum, step_lr;                              /* SGD */
  float decay, beta1, beta2, step_size, sqrt_bias2, eps;                 /* AdamW */
} update_args;

static void sgd_update(float *restrict w, const float *restrict g, float *restrict m, int64_t lo, int64_t hi,
                       float clip_scale, float wd, float momentum, float step_lr, int first) {
  if (momentum == 0.0f) {
    for (int64_t j = lo; j < hi; j++) w[j] -= step_lr * (g[j] * clip_scale + wd * w[j]);
  } else if (first) {
    for (int64_t j = lo; j < hi; j++) {
      float d = g[j] * clip_scale + wd * w[j];
      m[j] = d;
      w[j] -= step_lr * d;
    }
  } else {
    for (int64_t j = lo; j < hi; j++) {
      float d = momentum * m[j] + (g[j] * clip_scale + wd * w[j]);
      m[j] = d;
      w[j] -= step_lr * d;
    }
  }
}

static void adamw_update(float *restrict w, const float *restrict g, float *restrict m, float *restrict v, int64_t lo,
                         int64_t hi, float clip_scale, float decay, float beta1, float beta2, float step_size,
                         float sqrt_bias2, float eps) {
  float one_minus_beta1 = 1.0f - beta1, one_minus_beta2 = 1.0f - beta2;
  for (int64_t j = lo; j < hi; j++) {
    float gj = g[j] * clip_scale;
    float wj = w[j] * decay;
    float mj = beta1 * m[j] + one_minus_beta1 * gj;
    float vj = beta2 * v[j] + one_minus_beta2 * gj * gj;
    m[j] = mj;
    v[j] = vj;
    float denom = sqrtf(vj) / sqrt_bias2 + eps;
    w[j] = wj - step_size * mj / denom;
  }
}

/* Updates one parameter in NORM_CHUNKS slices (in parallel); with `squares` (the norm of an
 * unclipped step, which the update does not need first), each slice's sum of squared gradients
 * goes to *squares as sum_squares adds them, taken just before the slice's update while the
 * slice is in cache: the same bits as a pass of its own, without reading the gradients twice. */
static void update_param(const optim_entry *e, const update_args *a, double *squares) {
  float *w = hakd_f32(e->param), *g = hakd_param_grad(e->param);
  int64_t n = hakd_numel(e->param);
  double part[NORM_CHUNKS];
#pragma omp parallel for schedule(static) if (n > 65536)
  for (int c = 0; c < NORM_CHUNKS; c++) {
    int64_t lo = n * c / NORM_CHUNKS, hi = n * (c + 1) / NORM_CHUNKS;
    if (squares) part[c] = slice_squares(g, lo, hi);
    if (a->sgd)
      sgd_update(w, g, e->m, lo, hi, a->clip_scale, a->wd, a->momentum, a->step_lr, a->first);
    else
      adamw_update(w, g, e->m, e->v, lo, hi, a->clip_scale, a->decay, a->beta1, a->beta2, a->step_size,
                   a->sqrt_bias2, a->eps);
  }
  if (!squares) return;
  double total = 0.0;
  for (int c = 0; c < NORM_CHUNKS; c++) total += part[c];
  *squares += total;
}

double hakd_optim_step(hakd_optimizer *o, float lr) {
  const hakd_optim_config *c = &o->config;
  int clipping = c->clip_norm > 0;
  double norm = clipping ? global_grad_norm(o) : 0.0, squares = 0.0;
  /* torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is < 1 */
  float clip_scale = 1.0f;
  if (clipping && norm > 0) {
    double s = c->clip_norm / (norm + 1e-6);
    if (s < 1.0) clip_scale = (float)s;
  }
  o->steps++;
  double bias1 = 1.0 - pow(c->beta1, (double)o->steps), bias2 = 1.0 - pow(c->beta2, (double)o->steps);
  for (int i = 0; i < o->count; i++) {
    optim_entry *e = &o->entries[i];
    float step_lr = lr * e->lr_mult, wd = e->decay ? c->weight_decay : 0.0f;
    update_args a = {c->kind == HAKD_OPTIM_SGD, o->steps == 1, clip_scale, wd, c->momentum, step_lr,
                     1.0f - step_lr * wd, c->beta1, c->beta2, (float)(step_lr / bias1), (float)sqrt(bias2), c->eps};
    update_param(e, &a, clipping ? NULL : &squares);
    hakd_tensor_changed(e->param);
  }
  return clipping ? norm : sqrt(squares);
}

void hakd_optim_zero_grad(hakd_optimizer *o) {
  for (int i = 0; i < o->count; i++) {
    o->entries[i].param->grad_stale = 1;
    hakd_param_grad(o->entries[i].param); /* zeroes it now */
  }
}

int64_t hakd_optim_steps(const hakd_optimizer *o) { return o->steps; }
void hakd_optim_set_steps(hakd_optimizer *o, int64_t steps) { o->steps = steps; }

int hakd_optim_state_count(const hakd_optimizer *o) {
  return o->count * (o->config.kind == HAKD_OPTIM_ADAMW ? 2 : 1);
}

void hakd_optim_state_at(hakd_optimizer *o, int i, const char **name, float **data, int64_t *numel) {
  int per = o->config.kind == HAKD_OPTIM_ADAMW ? 2 : 1;
  optim_entry *e = &o->entries[i / per];
  int second = i % per;
  *name = second ? e->v_name : e->m_name;
  *data = second ? e->v : e->m;
  *numel = hakd_numel(e->param);
}

float hakd_schedule_lr(const hakd_schedule *s, int64_t iter) {
  double progress = s->max_iters > 0 ? (double)iter / (double)s->max_iters : 0.0;
  if (progress > 1.0) progress = 1.0;
  double lr = (s->base_lr - s->min_lr) * pow(1.0 - progress, s->power) + s->min_lr;
  if (s->warmup_iters > 0 && iter < s->warmup_iters) {
    double k = (1.0 - (double)iter / (double)s->warmup_iters) * (1.0 - s->warmup_ratio);
    lr *= 1.0 - k;
  }
  return (float)lr;
}
