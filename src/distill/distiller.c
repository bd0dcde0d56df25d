/* The distiller: trainable projectors/aligners and the per-step distillation terms
 * (HETEROAKD.md sections 1, 6-8 and the baselines). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "distill/distill_internal.h"
#include "hakd/ops.h"

struct hakd_distiller {
  hakd_model *teacher, *student;
  hakd_distill_method method;
  hakd_distill_options o;
  int64_t warmup_iters;
  int num_classes;
  hakd_params params;
  distill_conv1x1 proj_s[4], proj_t[4]; /* by stage - 1, heteroakd */
  distill_conv1x1 fitnet;               /* fitnet */
  distill_conv1x1 cwd_align;            /* cwd with cwd_feature */
};

static int check_options(const hakd_distill_options *o) {
  if (o->n_stages < 1 || o->n_stages > 4) return hakd_error(HAKD_EINVAL, "distill: %d stages (1 to 4)", o->n_stages);
  for (int i = 0; i < o->n_stages; i++) {
    if (o->stages[i] < 1 || o->stages[i] > 4) return hakd_error(HAKD_EINVAL, "distill: stage %d not in 1..4", o->stages[i]);
    for (int j = 0; j < i; j++)
      if (o->stages[j] == o->stages[i]) return hakd_error(HAKD_EINVAL, "distill: stage %d listed twice", o->stages[i]);
  }
  const struct {
    const char *name;
    float value;
    int positive;
  } numbers[] = {{"T", o->T, 1},
                 {"kd_T", o->kd_T, 1},
                 {"cwd_T", o->cwd_T, 1},
                 {"lambda_kd", o->lambda_kd, 0},
                 {"lambda_hakd", o->lambda_hakd, 0},
                 {"lambda_proj", o->lambda_proj, 0},
                 {"lambda_cwd", o->lambda_cwd, 0},
                 {"lambda_fitnet", o->lambda_fitnet, 0}};
  for (size_t i = 0; i < sizeof numbers / sizeof numbers[0]; i++)
    if (!isfinite(numbers[i].value) || numbers[i].value < 0.0f || (numbers[i].positive && numbers[i].value == 0.0f))
      return hakd_error(HAKD_EINVAL, "distill: %s = %g must be %s", numbers[i].name, numbers[i].value,
                        numbers[i].positive ? "> 0" : ">= 0");
  if (o->reliability != HAKD_RELIABILITY_CE && o->reliability != HAKD_RELIABILITY_BCE)
    return hakd_error(HAKD_EINVAL, "distill: unknown reliability %d", (int)o->reliability);
  if (o->kem_axis == HAKD_KEM_AXIS_CLASS && o->reliability != HAKD_RELIABILITY_BCE)
    return hakd_error(HAKD_EINVAL, "distill: kem_axis class needs reliability bce");
  if (o->kem_axis != HAKD_KEM_AXIS_SPATIAL && o->kem_axis != HAKD_KEM_AXIS_CLASS)
    return hakd_error(HAKD_EINVAL, "distill: unknown kem_axis %d", (int)o->kem_axis);
  if (o->grid != HAKD_GRID_LOGITS && o->grid != HAKD_GRID_STUDENT && o->grid != HAKD_GRID_TEACHER)
    return hakd_error(HAKD_EINVAL, "distill: unknown hakd_grid %d", (int)o->grid);
  if (o->fitnet_stage < 1 || o->fitnet_stage > 4)
    return hakd_error(HAKD_EINVAL, "distill: fitnet_stage %d not in 1..4", o->fitnet_stage);
  if (!(o->bn_momentum >= 0.0f && o->bn_momentum <= 1.0f))
    return hakd_error(HAKD_EINVAL, "distill: bn_momentum %g not in [0, 1]", o->bn_momentum);
  return 0;
}

/* Creates the method's parameters. */
static int create_params(hakd_distiller *d) {
  char prefix[64];
  const hakd_distill_options *o = &d->o;
  int rc = 0;
  switch (d->method) {
    case HAKD_DISTILL_HETEROAKD:
      for (int i = 0; i < o->n_stages && !rc; i++) {
        int s = o->stages[i];
        snprintf(prefix, sizeof prefix, "distill.proj_s.%d", s);
        rc = distill_conv1x1_init(&d->proj_s[s - 1], &d->params, prefix, hakd_model_stage_channels(d->student, s),
                                  d->num_classes, 1, o->proj_relu, o->bn_momentum);
        snprintf(prefix, sizeof prefix, "distill.proj_t.%d", s);
        if (!rc)
          rc = distill_conv1x1_init(&d->proj_t[s - 1], &d->params, prefix, hakd_model_stage_channels(d->teacher, s),
                                    d->num_classes, 1, o->proj_relu, o->bn_momentum);
      }
      break;
    case HAKD_DISTILL_FITNET:
      rc = distill_conv1x1_init(&d->fitnet, &d->params, "distill.fitnet",
                                hakd_model_stage_channels(d->student, o->fitnet_stage),
                                hakd_model_stage_channels(d->teacher, o->fitnet_stage), 1, 0, o->bn_momentum);
      break;
    case HAKD_DISTILL_CWD:
      if (o->cwd_feature)
        rc = distill_conv1x1_init(&d->cwd_align, &d->params, "distill.cwd_align", hakd_model_stage_channels(d->student, 4),
                                  hakd_model_stage_channels(d->teacher, 4), 0, 0, o->bn_momentum);
      break;
    case HAKD_DISTILL_NONE:
    case HAKD_DISTILL_KD: break;
  }
  return rc;
}

int hakd_distiller_create(hakd_model *teacher, hakd_model *student, hakd_distill_method method,
                          const hakd_distill_options *opts, int64_t total_iters, hakd_distiller **out) {
  *out = NULL;
  hakd_distill_options o;
  if (opts)
    o = *opts;
  else
    hakd_distill_options_default(&o);
  if ((int)method < HAKD_DISTILL_NONE || method > HAKD_DISTILL_HETEROAKD)
    return hakd_error(HAKD_EINVAL, "distill: unknown method %d", (int)method);
  if (!student) return hakd_error(HAKD_EINVAL, "distill: no student model");
  if (method != HAKD_DISTILL_NONE && !teacher)
    return hakd_error(HAKD_EINVAL, "distill: method %s needs a teacher model", hakd_distill_method_name(method));
  if (total_iters < 0) return hakd_error(HAKD_EINVAL, "distill: total_iters %lld < 0", (long long)total_iters);
  int rc = check_options(&o);
  if (rc) return rc;
  if (teacher && method != HAKD_DISTILL_FITNET && hakd_model_num_classes(teacher) != hakd_model_num_classes(student))
    return hakd_error(HAKD_ESHAPE, "distill: teacher %s has %d classes, student %s has %d", hakd_model_name(teacher),
                      hakd_model_num_classes(teacher), hakd_model_name(student), hakd_model_num_classes(student));
  hakd_distiller *d = calloc(1, sizeof *d);
  if (!d) return hakd_error(HAKD_ENOMEM, "out of memory creating the distiller");
  d->teacher = teacher;
  d->student = student;
  d->method = method;
  d->o = o;
  d->warmup_iters = o.warmup_iters >= 0 ? o.warmup_iters : total_iters / 10;
  d->num_classes = hakd_model_num_classes(student);
  hakd_params_init(&d->params);
  rc = create_params(d);
  if (rc) {
    hakd_error_prefix("creating the %s distiller", hakd_distill_method_name(method));
    hakd_distiller_free(d);
    return rc;
  }
  hakd_distiller_init(d, 0);
  *out = d;
  return 0;
}

void hakd_distiller_free(hakd_distiller *d) {
  if (!d) return;
  hakd_params_free(&d->params);
  free(d);
}

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

/* Whether `bias` is the bias of the conv whose weight is named `weight` ("<p>.weight", "<p>.bias"). */
static int is_bias_of(const char *bias, const char *weight) {
  size_t n = strlen(weight) - strlen("weight");
  return !strncmp(bias, weight, n) && !strcmp(bias + n, "bias");
}

void hakd_distiller_init(hakd_distiller *d, uint64_t seed) {
  uint64_t rng = hakd_rng_seed(seed);
  for (int i = 0; i < d->params.count; i++) {
    hakd_tensor *t = d->params.items[i];
    float *x = hakd_f32(t);
    int64_t n = hakd_numel(t);
    if (t->ndim == 4) {
      /* nn.Conv2d: kaiming_uniform_(a=sqrt(5)) = U(-1/sqrt(fan_in), 1/sqrt(fan_in)); same bound for its bias */
      double bound = 1.0 / sqrt((double)(t->shape[1] * t->shape[2] * t->shape[3]));
      for (int64_t j = 0; j < n; j++) x[j] = (float)((2.0 * hakd_rng_uniform(&rng) - 1.0) * bound);
      if (i + 1 < d->params.count && is_bias_of(d->params.items[i + 1]->name, t->name)) {
        hakd_tensor *b = d->params.items[++i];
        for (int64_t j = 0; j < hakd_numel(b); j++) hakd_f32(b)[j] = (float)((2.0 * hakd_rng_uniform(&rng) - 1.0) * bound);
      }
    } else {
      float value = ends_with(t->name, ".running_var") || (t->ndim == 1 && ends_with(t->name, ".weight")) ? 1.0f : 0.0f;
      for (int64_t j = 0; j < n; j++) x[j] = value;
    }
  }
}

hakd_params *hakd_distiller_params(hakd_distiller *d) { return &d->params; }
hakd_distill_method hakd_distiller_method(const hakd_distiller *d) { return d->method; }
const hakd_distill_options *hakd_distiller_options(const hakd_distiller *d) { return &d->o; }
int64_t hakd_distiller_warmup_iters(const hakd_distiller *d) { return d->warmup_iters; }

/* x resized bilinearly (align_corners=False) to h x w, or x itself when already there. */
static hakd_tensor *to_grid(hakd_ctx *ctx, hakd_tensor *x, int64_t h, int64_t w) {
  if (!x) return NULL;
  if (x->shape[2] == h && x->shape[3] == w) return x;
  return hakd_resize_bilinear(ctx, x, h, w, 0);
}

static hakd_tensor *labels_to_grid(hakd_ctx *ctx, hakd_tensor *labels, int64_t h, int64_t w) {
  if (labels->shape[1] == h && labels->shape[2] == w) return labels;
  return hakd_resize_nearest(ctx, labels, h, w);
}

/* A CNN student's stages are blocked bfloat16 in bf16 training (its chain runs to the head); the
 * distillation terms take float32 (the conversion carries the gradient back). */
static hakd_tensor *student_tensor(hakd_ctx *ctx, hakd_tensor *t) { return hakd_to_f32(ctx, t); }

static hakd_tensor *teacher_tensor(hakd_ctx *ctx, hakd_tensor *t, const char *what) {
  if (!t) return hakd_ctx_fail(ctx, HAKD_EINVAL, "distill: the teacher output has no %s", what);
  return hakd_detach(ctx, hakd_to_f32(ctx, t)); /* a CNN teacher's stages are blocked bfloat16 in bf16 */
}

/* L_hakd and L_proj of one stage (sections 1-6), added to out->hakd / out->proj. */
static int hakd_stage(hakd_distiller *d, hakd_ctx *ctx, const hakd_model_output *teacher,
                      const hakd_model_output *student, hakd_tensor *labels, int slot, hakd_distill_losses *out) {
  const hakd_distill_options *o = &d->o;
  int s = o->stages[slot];
  hakd_tensor *f_s = student_tensor(ctx, student->stages[s - 1]);
  hakd_tensor *f_t = teacher_tensor(ctx, teacher->stages[s - 1], "stage feature");
  if (!f_s) hakd_ctx_fail(ctx, HAKD_EINVAL, "distill: the student output has no stage %d feature", s);
  if (!f_s || !f_t) return hakd_ctx_status(ctx);
  const hakd_tensor *grid = o->grid == HAKD_GRID_LOGITS ? student->logits : o->grid == HAKD_GRID_STUDENT ? f_s : f_t;
  int64_t h = grid->shape[2], w = grid->shape[3];

  hakd_tensor *z_s = to_grid(ctx, distill_conv1x1_forward(ctx, &d->proj_s[s - 1], f_s, 1), h, w);
  hakd_tensor *z_t = to_grid(ctx, distill_conv1x1_forward(ctx, &d->proj_t[s - 1], f_t, 1), h, w);
  hakd_tensor *y = labels_to_grid(ctx, labels, h, w);
  hakd_hakd_loss_options lo;
  hakd_hakd_loss_options_default(&lo);
  lo.T = o->T;
  lo.reliability = o->reliability;
  lo.kem_axis = o->kem_axis;
  lo.no_kmm = o->no_kmm;
  lo.no_kem = o->no_kem;
  lo.ignore_index = o->ignore_index;
  hakd_tensor *l_hakd = hakd_loss_hakd(ctx, z_s, z_t, y, &lo, &out->kem_weights[slot]);

  /* L_proj: the student projector sees the feature through a stop-gradient unless asked otherwise. */
  hakd_tensor *z_s_proj = z_s;
  if (!o->proj_grad_to_student)
    z_s_proj = to_grid(ctx, distill_conv1x1_forward(ctx, &d->proj_s[s - 1], hakd_detach(ctx, f_s), 0), h, w);
  hakd_tensor *l_proj = hakd_add(ctx, hakd_cross_entropy(ctx, z_s_proj, y, o->ignore_index),
                                 hakd_cross_entropy(ctx, z_t, y, o->ignore_index));
  if (!l_hakd || !l_proj) return hakd_ctx_status(ctx) ? hakd_ctx_status(ctx) : HAKD_EINVAL;
  out->hakd = out->hakd ? hakd_add(ctx, out->hakd, l_hakd) : l_hakd;
  out->proj = out->proj ? hakd_add(ctx, out->proj, l_proj) : l_proj;
  out->stages[slot] = s;
  out->n_stages = slot + 1;
  return hakd_ctx_status(ctx);
}

/* KD on the final logits, both upsampled to the label size (section 7). */
static hakd_tensor *kd_term(hakd_distiller *d, hakd_ctx *ctx, const hakd_model_output *teacher,
                            const hakd_model_output *student, const hakd_tensor *labels) {
  int64_t h = labels->shape[1], w = labels->shape[2];
  hakd_tensor *t = teacher_tensor(ctx, teacher->logits, "logits");
  return hakd_loss_kd(ctx, to_grid(ctx, student->logits, h, w), to_grid(ctx, t, h, w), d->o.kd_T);
}

/* CWD on logits (teacher resized to the student's grid), + on stage 4 through the aligner. */
static hakd_tensor *cwd_term(hakd_distiller *d, hakd_ctx *ctx, const hakd_model_output *teacher,
                             const hakd_model_output *student) {
  hakd_tensor *loss = hakd_loss_cwd(ctx, student->logits, teacher_tensor(ctx, teacher->logits, "logits"), d->o.cwd_T);
  if (d->o.cwd_feature) {
    hakd_tensor *f_s = distill_conv1x1_forward(ctx, &d->cwd_align, student_tensor(ctx, student->stages[3]), 1);
    loss = hakd_add(ctx, loss, hakd_loss_cwd(ctx, f_s, teacher_tensor(ctx, teacher->stages[3], "stage 4 feature"),
                                             d->o.cwd_T));
  }
  return loss;
}

/* sum of lambda_i * term_i over the terms with a non-zero weight; a constant 0 when none. */
static hakd_tensor *weighted_sum(hakd_ctx *ctx, int n, hakd_tensor *const *terms, const float *lambdas) {
  hakd_tensor *total = NULL;
  for (int i = 0; i < n; i++) {
    if (!terms[i] || lambdas[i] == 0.0f) continue;
    hakd_tensor *term = hakd_scale(ctx, terms[i], lambdas[i]);
    total = total ? hakd_add(ctx, total, term) : term;
    if (!total) return NULL;
  }
  if (!total) {
    int64_t shape[1] = {1};
    total = hakd_tensor_zeros(ctx, HAKD_F32, 1, shape);
  }
  return total;
}

int hakd_distiller_forward(hakd_distiller *d, hakd_ctx *ctx, const hakd_model_output *teacher,
                           const hakd_model_output *student, hakd_tensor *labels, int64_t iter,
                           hakd_distill_losses *out) {
  memset(out, 0, sizeof *out);
  if (hakd_ctx_status(ctx)) return hakd_ctx_status(ctx);
  if (!student || !student->logits) return hakd_error(HAKD_EINVAL, "distill: no student output");
  if (d->method != HAKD_DISTILL_NONE && !teacher) return hakd_error(HAKD_EINVAL, "distill: no teacher output");
  char a[64], b[64];
  if (!labels || labels->dtype != HAKD_I32 || labels->ndim != 3 || labels->shape[0] != student->logits->shape[0])
    return hakd_error(HAKD_ESHAPE, "distill: labels %s must be int32 (N, H, W) with the logits' N (logits %s)",
                      labels ? hakd_shape_str(labels, a, sizeof a) : "(none)",
                      hakd_shape_str(student->logits, b, sizeof b));
  const hakd_distill_options *o = &d->o;
  out->warmup = iter < d->warmup_iters;
  float distill_weight = out->warmup ? 0.0f : 1.0f;
  int rc = 0;
  switch (d->method) {
    case HAKD_DISTILL_NONE: break;
    case HAKD_DISTILL_KD:
      out->kd = kd_term(d, ctx, teacher, student, labels);
      out->lambda_kd = distill_weight * o->lambda_kd;
      break;
    case HAKD_DISTILL_CWD:
      out->cwd = cwd_term(d, ctx, teacher, student);
      out->lambda_cwd = distill_weight * o->lambda_cwd;
      break;
    case HAKD_DISTILL_FITNET: {
      int s = o->fitnet_stage;
      out->fitnet = distill_fitnet_loss(ctx, &d->fitnet, student_tensor(ctx, student->stages[s - 1]),
                                        teacher_tensor(ctx, teacher->stages[s - 1], "stage feature"));
      out->lambda_fitnet = distill_weight * o->lambda_fitnet;
      break;
    }
    case HAKD_DISTILL_HETEROAKD:
      if (distill_check_labels(ctx, labels, d->num_classes, o->ignore_index, "distill labels")) break;
      out->kd = kd_term(d, ctx, teacher, student, labels);
      for (int i = 0; i < o->n_stages && !rc; i++) rc = hakd_stage(d, ctx, teacher, student, labels, i, out);
      out->lambda_kd = distill_weight * o->lambda_kd;
      out->lambda_hakd = distill_weight * o->lambda_hakd;
      out->lambda_proj = o->lambda_proj; /* trains the projectors during warm-up too */
      break;
  }
  hakd_tensor *terms[5] = {out->kd, out->hakd, out->proj, out->cwd, out->fitnet};
  float lambdas[5] = {out->lambda_kd, out->lambda_hakd, out->lambda_proj, out->lambda_cwd, out->lambda_fitnet};
  if (!hakd_ctx_status(ctx) && !rc) out->total = weighted_sum(ctx, 5, terms, lambdas);
  if (hakd_ctx_status(ctx)) {
    rc = hakd_ctx_status(ctx);
    hakd_error_prefix("distill (%s)", hakd_distill_method_name(d->method));
    return rc;
  }
  return rc ? rc : (out->total ? 0 : hakd_error(HAKD_EINVAL, "distill: no total loss"));
}
