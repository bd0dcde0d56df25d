/* hakd_bench_run: times inference, training and distillation steps on one random batch. */
#include "hakd/bench.h"

#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "hakd/ops.h"
#include "hakd/optim.h"

void hakd_bench_config_default(hakd_bench_config *c) {
  memset(c, 0, sizeof *c);
  c->mode = HAKD_BENCH_TRAIN;
  c->method = HAKD_DISTILL_HETEROAKD;
  c->height = c->width = 512;
  c->batch = 2;
  c->num_classes = 19;
  c->width_mult = 1.0f;
  c->warmup = 2;
  c->iters = 5;
  c->seed = 0;
}

static const char *const mode_names[] = {"infer", "train", "distill"};

int hakd_bench_mode_parse(const char *text, hakd_bench_mode *out) {
  for (int i = 0; i < 3; i++)
    if (!strcmp(text, mode_names[i])) {
      *out = (hakd_bench_mode)i;
      return 0;
    }
  return hakd_error(HAKD_EINVAL, "bench mode '%s': expected infer, train or distill", text);
}

const char *hakd_bench_mode_name(hakd_bench_mode m) {
  return (unsigned)m < 3 ? mode_names[m] : "?";
}

typedef struct {
  const hakd_bench_config *cfg;
  hakd_model *model, *teacher;
  hakd_distiller *distiller;
  hakd_optimizer *opt;
  hakd_ctx *ctx;
  float *images;   /* (N, 3, H, W) */
  int32_t *labels; /* (N, H, W) */
  float lr;
} bench;

static double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static double bench_peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

static int compare_doubles(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

static int bench_create_model(const hakd_bench_config *c, const char *name, uint64_t seed, hakd_model **out) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = c->num_classes;
  o.width = c->width_mult;
  int rc = hakd_model_create(name, &o, out);
  if (!rc) hakd_model_init(*out, seed);
  return rc;
}

/* The recipes' optimizers: AdamW with a 10x decode head for transformers, SGD for CNNs. */
static int bench_create_optimizer(bench *b, hakd_bench_result *r) {
  int transformer = !strcmp(hakd_model_family(b->model), "transformer");
  hakd_optim_config oc;
  hakd_optim_config_default(&oc, transformer ? HAKD_OPTIM_ADAMW : HAKD_OPTIM_SGD);
  b->lr = transformer ? 6e-5f : 0.01f;
  r->optimizer = transformer ? "adamw" : "sgd";
  b->opt = hakd_optim_new(&oc);
  if (!b->opt) return hakd_error(HAKD_ENOMEM, "bench: out of memory");
  hakd_params *p = hakd_model_params(b->model);
  if (hakd_optim_add_group(b->opt, p, hakd_model_head_prefix(b->model), transformer ? 10.0f : 1.0f, 0) < 0 ||
      hakd_optim_add_group(b->opt, p, NULL, 1.0f, 0) < 0 ||
      (b->distiller && hakd_optim_add_group(b->opt, hakd_distiller_params(b->distiller), NULL, 1.0f, 0) < 0))
    return hakd_error(HAKD_ENOMEM, "bench: out of memory");
  return 0;
}

static int bench_setup(bench *b, hakd_bench_result *r) {
  const hakd_bench_config *c = b->cfg;
  int rc = bench_create_model(c, c->model, c->seed, &b->model);
  if (rc) return rc;
  if (c->mode == HAKD_BENCH_DISTILL) {
    if ((rc = bench_create_model(c, c->teacher, c->seed + 1, &b->teacher))) return rc;
    hakd_distill_options o;
    hakd_distill_options_default(&o);
    o.warmup_iters = 0; /* every term counts from the first step */
    if ((rc = hakd_distiller_create(b->teacher, b->model, c->method, &o, c->warmup + c->iters, &b->distiller))) return rc;
    hakd_distiller_init(b->distiller, c->seed + 2);
    hakd_params_freeze(hakd_model_params(b->teacher), 1); /* as the trainer's teacher */
  }
  if (c->mode == HAKD_BENCH_INFER) hakd_params_freeze(hakd_model_params(b->model), 1); /* as hakd_model_open */
  r->optimizer = "none";
  if (c->mode != HAKD_BENCH_INFER && (rc = bench_create_optimizer(b, r))) return rc;

  size_t pixels = (size_t)c->batch * (size_t)c->height * (size_t)c->width;
  b->images = malloc(pixels * 3 * sizeof(float));
  b->labels = malloc(pixels * sizeof(int32_t));
  b->ctx = hakd_ctx_new();
  if (!b->images || !b->labels || !b->ctx) return hakd_error(HAKD_ENOMEM, "bench: out of memory for a %dx%d batch of %d",
                                                             c->height, c->width, c->batch);
  uint64_t rng = hakd_rng_seed(c->seed + 3);
  for (size_t i = 0; i < pixels * 3; i++) b->images[i] = hakd_rng_normal(&rng);
  for (size_t i = 0; i < pixels; i++) b->labels[i] = (int32_t)(hakd_rng_next(&rng) % (uint64_t)c->num_classes);
  hakd_ctx_seed(b->ctx, c->seed + 4);
  hakd_ctx_set_precision(b->ctx, c->precision);
  return 0;
}

static void bench_teardown(bench *b) {
  hakd_ctx_free(b->ctx);
  free(b->images);
  free(b->labels);
  hakd_optim_free(b->opt);
  hakd_distiller_free(b->distiller);
  hakd_model_free(b->teacher);
  hakd_model_free(b->model);
}

/* One iteration of the configured mode; mirrors trainer.c train_step without data loading. */
static int bench_step(bench *b, int64_t iter) {
  const hakd_bench_config *c = b->cfg;
  hakd_ctx *ctx = b->ctx;
  hakd_ctx_reset(ctx);
  hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){c->batch, 3, c->height, c->width}, b->images);
  hakd_tensor *y = hakd_tensor_wrap(ctx, HAKD_I32, 3, (int64_t[]){c->batch, c->height, c->width}, b->labels);
  hakd_model_output tout, sout;
  int rc;
  if (c->mode == HAKD_BENCH_INFER || b->teacher) {
    hakd_ctx_set_grad(ctx, 0);
    hakd_ctx_set_training(ctx, 0);
    rc = hakd_model_forward(b->teacher ? b->teacher : b->model, ctx, x, b->teacher ? &tout : &sout);
    hakd_ctx_set_grad(ctx, 1);
    hakd_ctx_set_training(ctx, 1);
    if (rc || c->mode == HAKD_BENCH_INFER) return rc;
  }
  if ((rc = hakd_model_forward(b->model, ctx, x, &sout))) return rc;
  hakd_tensor *total = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.logits, c->height, c->width, 0), y, 255);
  if (sout.aux) {
    hakd_tensor *aux = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.aux, c->height, c->width, 0), y, 255);
    total = hakd_add(ctx, total, hakd_scale(ctx, aux, 0.4f));
  }
  if (b->distiller) {
    hakd_distill_losses dl;
    if ((rc = hakd_distiller_forward(b->distiller, ctx, &tout, &sout, y, iter, &dl))) return rc;
    total = hakd_add(ctx, total, dl.total);
  }
  if ((rc = hakd_ctx_status(ctx))) return rc;
  hakd_params_mark_grads_zero(hakd_model_params(b->model)); /* as the trainer steps */
  if (b->distiller) hakd_params_mark_grads_zero(hakd_distiller_params(b->distiller));
  if ((rc = hakd_backward(ctx, total))) return rc;
  hakd_optim_step(b->opt, b->lr);
  return 0;
}

static int bench_check_config(const hakd_bench_config *c) {
  if (!c->model) return hakd_error(HAKD_EINVAL, "bench: no model");
  if (c->mode == HAKD_BENCH_DISTILL && !c->teacher) return hakd_error(HAKD_EINVAL, "bench: distill needs a teacher");
  if ((unsigned)c->mode > HAKD_BENCH_DISTILL) return hakd_error(HAKD_EINVAL, "bench: unknown mode %d", (int)c->mode);
  if (c->height < 1 || c->width < 1 || c->batch < 1 || c->num_classes < 1 || c->iters < 1 || c->warmup < 0)
    return hakd_error(HAKD_EINVAL, "bench: size %dx%d, batch %d, classes %d, iters %d, warmup %d must be positive",
                      c->height, c->width, c->batch, c->num_classes, c->iters, c->warmup);
  return 0;
}

int hakd_bench_run(const hakd_bench_config *c, hakd_bench_result *r) {
  memset(r, 0, sizeof *r);
  int rc = bench_check_config(c);
  if (rc) return rc;
  if (c->threads > 0) hakd_set_threads(c->threads);
  r->threads = hakd_get_threads();
  bench b;
  memset(&b, 0, sizeof b);
  b.cfg = c;
  double *ms = malloc((size_t)c->iters * sizeof(double));
  if (!ms) return hakd_error(HAKD_ENOMEM, "bench: out of memory");
  rc = bench_setup(&b, r);
  for (int i = 0; !rc && i < c->warmup + c->iters; i++) {
    double t0 = bench_now();
    rc = bench_step(&b, i);
    if (i >= c->warmup) ms[i - c->warmup] = 1e3 * (bench_now() - t0);
  }
  if (!rc) {
    r->peak_rss_mb = bench_peak_rss_mb();
    r->arena_mb = (double)hakd_ctx_get_stats(b.ctx).arena_peak / (1024.0 * 1024.0);
    qsort(ms, (size_t)c->iters, sizeof(double), compare_doubles);
    r->ms_min = ms[0];
    r->ms_max = ms[c->iters - 1];
    r->ms_median = c->iters % 2 ? ms[c->iters / 2] : 0.5 * (ms[c->iters / 2 - 1] + ms[c->iters / 2]);
    r->images_per_s = 1e3 * c->batch / r->ms_median;
    /* Counted last: hakd_model_macs runs a batch-1 forward with its own context. */
    r->model_macs = hakd_model_executed_macs(b.model, c->height, c->width);
    r->model_nominal_macs = hakd_model_macs(b.model, c->height, c->width);
    if (b.teacher) {
      r->teacher_macs = hakd_model_executed_macs(b.teacher, c->height, c->width);
      r->teacher_nominal_macs = hakd_model_macs(b.teacher, c->height, c->width);
    }
    if (r->model_macs < 0 || r->teacher_macs < 0 || r->model_nominal_macs < 0 || r->teacher_nominal_macs < 0)
      rc = hakd_error(HAKD_ENOMEM, "bench: counting the MACs failed");
  }
  if (!rc) {
    int infer = c->mode == HAKD_BENCH_INFER;
    double per_image =
        infer ? 2.0 * (double)r->model_macs : 6.0 * (double)r->model_macs + 2.0 * (double)r->teacher_macs;
    double nominal = infer ? 2.0 * (double)r->model_nominal_macs
                           : 6.0 * (double)r->model_nominal_macs + 2.0 * (double)r->teacher_nominal_macs;
    r->flops_per_iter = per_image * c->batch;
    r->nominal_flops_per_iter = nominal * c->batch;
    r->gflops = r->flops_per_iter / (r->ms_median * 1e-3) / 1e9;
  }
  free(ms);
  bench_teardown(&b);
  return rc;
}
