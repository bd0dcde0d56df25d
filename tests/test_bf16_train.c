/* bf16 training on blocked bfloat16 activations (HAKD_BF16_BLOCKED): the ops of the chain with
 * their gradients against the float32 ops, and whole training steps of CNN segmenters against the
 * float32 step and the earlier plain bf16 path (HAKD_BF16_BLOCKED_TRAIN=0). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "gradcheck.h"
#include "harness.h"
#include "param_fill.h"
#include "hakd/model.h"
#include "hakd/ops.h"

/* max |a - b| / max(max |b|, floor) over n floats */
static double rel_err(const float *a, const float *b, int64_t n) { return test_max_rel_err(a, b, n, 1e-6); }

/* Rounds a parameter's values to bfloat16 so that both paths read the same numbers. */
static void round_param(hakd_tensor *t) {
  for (int64_t i = 0; i < hakd_numel(t); i++) hakd_f32(t)[i] = round_bf16(hakd_f32(t)[i]);
}

typedef hakd_tensor *(*build_fn)(hakd_ctx *ctx, hakd_tensor **in, void *arg);

/* One pass of build on a fresh context (bf16 precision, training as asked), backward seeded with
 * a fixed pseudo-random r; returns a malloc'd copy of the output (float32) and leaves the inputs'
 * gradients in their params (zeroed first). */
static float *run_once(build_fn build, hakd_tensor **in, int n, void *arg, int training, int64_t *numel) {
  for (int k = 0; k < n; k++)
    if (in[k]) memset(in[k]->grad, 0, (size_t)hakd_numel(in[k]) * sizeof(float));
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  hakd_ctx_set_training(ctx, training);
  hakd_ctx_seed(ctx, 7);
  hakd_tensor *y = build(ctx, in, arg);
  float *copy = NULL;
  if (!y || y->dtype != HAKD_F32) {
    test_fail(__FILE__, __LINE__, "forward failed: %s", hakd_error_message());
  } else {
    *numel = hakd_numel(y);
    float *r = malloc((size_t)*numel * sizeof *r);
    uint64_t rng = hakd_rng_seed(99);
    for (int64_t i = 0; i < *numel; i++) r[i] = hakd_rng_uniform(&rng) * 2.0f - 1.0f;
    copy = malloc((size_t)*numel * sizeof *copy);
    memcpy(copy, y->data, (size_t)*numel * sizeof *copy);
    if (hakd_backward_seeded(ctx, y, r)) test_fail(__FILE__, __LINE__, "backward failed: %s", hakd_error_message());
    free(r);
  }
  hakd_ctx_free(ctx);
  return copy;
}

/* Runs `got` and `want` on the same inputs; output within fwd_tol and every input gradient within
 * grad_tol (relative to max |want|). */
static void compare(const char *what, build_fn got, build_fn want, hakd_tensor **in, int n, void *arg, int training,
                    double fwd_tol, double grad_tol) {
  int64_t ng = 0, nw = 0;
  float *grads[8] = {0};
  float *yg = run_once(got, in, n, arg, training, &ng);
  for (int k = 0; k < n; k++) {
    grads[k] = malloc((size_t)hakd_numel(in[k]) * sizeof(float));
    memcpy(grads[k], in[k]->grad, (size_t)hakd_numel(in[k]) * sizeof(float));
  }
  float *yw = run_once(want, in, n, arg, training, &nw);
  if (yg && yw && ng == nw) {
    double err = rel_err(yg, yw, nw);
    printf("%s: output rel err %.3g (tol %.3g)\n", what, err, fwd_tol);
    if (!(err <= fwd_tol)) test_fail(__FILE__, __LINE__, "%s: output rel err %.3g > %.3g", what, err, fwd_tol);
    for (int k = 0; k < n; k++) {
      double ge = rel_err(grads[k], in[k]->grad, hakd_numel(in[k]));
      printf("%s: gradient of %s rel err %.3g (tol %.3g)\n", what, in[k]->name, ge, grad_tol);
      if (!(ge <= grad_tol))
        test_fail(__FILE__, __LINE__, "%s: gradient of %s rel err %.3g > %.3g", what, in[k]->name, ge, grad_tol);
    }
  } else if (yg && yw) {
    test_fail(__FILE__, __LINE__, "%s: outputs differ in size", what);
  }
  for (int k = 0; k < n; k++) free(grads[k]);
  free(yg);
  free(yw);
}

/* ---- BatchNorm + residual + activation ---- */

typedef struct {
  hakd_tensor *rm, *rv; /* running statistics */
  hakd_activation act;
  int residual;
} bn_arg;

/* in: x, weight, bias, residual */
static hakd_tensor *bn_blocked(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  bn_arg *a = arg;
  hakd_tensor *r = a->residual ? hakd_to_bf16_blocked(ctx, in[3]) : NULL;
  return hakd_to_f32(ctx, hakd_batchnorm2d_act(ctx, hakd_to_bf16_blocked(ctx, in[0]), in[1], in[2], a->rm, a->rv, 0.1f,
                                               1e-5f, r, a->act));
}

static hakd_tensor *bn_plain(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  bn_arg *a = arg;
  hakd_tensor *y = hakd_batchnorm2d(ctx, in[0], in[1], in[2], a->rm, a->rv, 0.1f, 1e-5f);
  if (a->residual) y = hakd_add(ctx, y, in[3]);
  return a->act == HAKD_ACT_RELU ? hakd_relu(ctx, y) : a->act == HAKD_ACT_RELU6 ? hakd_relu6(ctx, y) : y;
}

/* Where bf16 cannot run (no AVX512-BF16, or oneDNN capped below it) the conversion into the
 * blocked layout, which every case starts with, must be refused with the reason: that refusal is
 * what each case checks there (bf16.h), instead of the comparisons. Returns 1 then. */
static int blocked_bf16_refused_here(void) {
  if (hakd_bf16_supported()) return 0;
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[4] = {1, 3, 2, 2};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, shape, 1);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  int refused = bf16_refused(ctx, hakd_to_bf16_blocked(ctx, x), "to_bf16_blocked");
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
  return refused;
}

/* 20 channels: one whole block of 16 and a padded one. Inputs are bfloat16 values, so both paths
 * read the same numbers; the blocked output is rounded to bfloat16 (relative 2^-9 of each value,
 * tolerance 4e-3 of the largest), while the gradients are float32 from the same bfloat16 x and a
 * ReLU mask that rounding cannot flip (it keeps signs): they agree to float32 summation order
 * (tolerance 1e-4; a dropped term of the statistics' gradient is of order 1). The running
 * statistics follow the same update (1e-6). */
static void check_bn(int training, hakd_activation act, int residual) {
  if (blocked_bf16_refused_here()) return;
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 20, 5, 3}, cs[1] = {20};
  hakd_tensor *in[4] = {gradcheck_input(&p, "x", 4, xs, 2.0f, 1), gradcheck_input(&p, "weight", 1, cs, 0.5f, 2),
                        gradcheck_input(&p, "bias", 1, cs, 1.0f, 3), gradcheck_input(&p, "residual", 4, xs, 1.0f, 4)};
  for (int c = 0; c < 20; c++) hakd_f32(in[1])[c] += 1.0f;
  for (int k = 0; k < 4; k++) round_param(in[k]);
  hakd_tensor *rm[2], *rv[2];
  for (int i = 0; i < 2; i++) {
    rm[i] = hakd_params_add(&p, i ? "rm1" : "rm0", 1, cs, 1);
    rv[i] = hakd_params_add(&p, i ? "rv1" : "rv0", 1, cs, 1);
    for (int c = 0; c < 20; c++) hakd_f32(rm[i])[c] = 0.1f * (float)c, hakd_f32(rv[i])[c] = 0.5f + 0.25f * (float)c;
  }
  bn_arg a = {rm[0], rv[0], act, residual};
  char what[96];
  snprintf(what, sizeof what, "batchnorm2d_act %s act %d residual %d", training ? "train" : "eval", (int)act, residual);
  /* the two paths update their own running statistics: compare() runs got (rm0) then want */
  int64_t ng = 0;
  float *y = run_once(bn_blocked, in, 4, &a, training, &ng);
  free(y);
  a.rm = rm[1], a.rv = rv[1];
  y = run_once(bn_plain, in, 4, &a, training, &ng);
  free(y);
  double em = rel_err(hakd_f32(rm[0]), hakd_f32(rm[1]), 20), ev = rel_err(hakd_f32(rv[0]), hakd_f32(rv[1]), 20);
  printf("%s: running mean rel err %.3g, running var %.3g\n", what, em, ev);
  ASSERT_TRUE(em <= 1e-6 && ev <= 1e-6);
  if (training) ASSERT_TRUE(hakd_f32(rv[0])[3] != 0.5f + 0.25f * 3.0f); /* they did move */
  a.rm = rm[0], a.rv = rv[0];
  compare(what, bn_blocked, bn_plain, in, residual ? 4 : 3, &a, training, 4e-3, 1e-4);
  hakd_params_free(&p);
}

TEST(batchnorm_relu_residual_train_matches_fp32) { check_bn(1, HAKD_ACT_RELU, 1); }
TEST(batchnorm_relu_train_matches_fp32) { check_bn(1, HAKD_ACT_RELU, 0); }
TEST(batchnorm_relu6_train_matches_fp32) { check_bn(1, HAKD_ACT_RELU6, 0); }
TEST(batchnorm_residual_no_act_train_matches_fp32) { check_bn(1, HAKD_ACT_NONE, 1); }
TEST(batchnorm_relu_eval_with_grad_matches_fp32) { check_bn(0, HAKD_ACT_RELU, 1); }

/* ---- convolution on blocked activations ---- */

typedef struct {
  int stride, padding, dilation, groups;
} conv_arg;

/* in: x, w */
static hakd_tensor *conv_blocked(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  conv_arg *a = arg;
  hakd_tensor *y = hakd_conv2d(ctx, hakd_to_bf16_blocked(ctx, in[0]), in[1], NULL, a->stride, a->padding, a->dilation,
                               a->groups);
  if (y && y->dtype != HAKD_BF16_BLOCKED) return hakd_ctx_fail(ctx, HAKD_EINVAL, "conv2d: output left the layout");
  return hakd_to_f32(ctx, y);
}

static hakd_tensor *conv_plain(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  conv_arg *a = arg;
  return hakd_conv2d(ctx, in[0], in[1], NULL, a->stride, a->padding, a->dilation, a->groups);
}

/* Against the plain bf16 path, which rounds the same operands (x, w and the float32 gradient dy)
 * to bfloat16 on oneDNN: the output differs by the blocked output's rounding (2^-9 relative,
 * tolerance 4e-3 of the largest), the gradients by summation order only (1e-4). A depthwise
 * convolution runs the direct float32 kernel on both paths (the blocked one converts its
 * operands: oneDNN's bf16 depthwise backward on the blocked layout is far slower), so it meets
 * the same tolerances. */
static void check_conv(int cin, int cout, int k, conv_arg a, double grad_tol) {
  if (blocked_bf16_refused_here()) return;
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, cin, 9, 7}, ws[4] = {cout, cin / a.groups, k, k};
  hakd_tensor *in[2] = {gradcheck_input(&p, "x", 4, xs, 1.0f, 5), gradcheck_input(&p, "w", 4, ws, 0.3f, 6)};
  round_param(in[0]);
  round_param(in[1]);
  char what[96];
  snprintf(what, sizeof what, "conv2d %d->%d k%d s%d d%d g%d", cin, cout, k, a.stride, a.dilation, a.groups);
  compare(what, conv_blocked, conv_plain, in, 2, &a, 1, 4e-3, grad_tol);
  hakd_params_free(&p);
}

TEST(conv_3x3_blocked_gradients_match_plain_bf16) { check_conv(20, 24, 3, (conv_arg){1, 1, 1, 1}, 1e-4); }
TEST(conv_strided_1x1_blocked_gradients_match_plain_bf16) { check_conv(16, 40, 1, (conv_arg){2, 0, 1, 1}, 1e-4); }
TEST(conv_dilated_blocked_gradients_match_plain_bf16) { check_conv(32, 16, 3, (conv_arg){1, 4, 4, 1}, 1e-4); }
TEST(conv_depthwise_blocked_gradients_match_plain) { check_conv(24, 24, 3, (conv_arg){2, 1, 1, 24}, 1e-4); }

/* ---- conversions, concatenation, pooling, dropout ---- */

/* in: a (16 channels), b (20 channels) */
static hakd_tensor *concat_pool_blocked(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  hakd_tensor *parts[2] = {hakd_to_bf16_blocked(ctx, in[0]), hakd_to_bf16_blocked(ctx, in[1])};
  hakd_tensor *cat = hakd_dropout(ctx, hakd_concat(ctx, 2, parts, 1), 0.3f);
  hakd_tensor *pooled = hakd_to_f32(ctx, hakd_adaptive_avgpool2d(ctx, cat, 1, 1));
  hakd_tensor *spread = hakd_resize_bilinear(ctx, pooled, 2, 3, 0);
  return hakd_add(ctx, hakd_to_f32(ctx, cat), hakd_resize_bilinear(ctx, spread, cat->shape[2], cat->shape[3], 0));
}

static hakd_tensor *concat_pool_plain(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  hakd_tensor *cat = hakd_dropout(ctx, hakd_concat(ctx, 2, in, 1), 0.3f);
  hakd_tensor *spread = hakd_resize_bilinear(ctx, hakd_adaptive_avgpool2d(ctx, cat, 1, 1), 2, 3, 0);
  return hakd_add(ctx, cat, hakd_resize_bilinear(ctx, spread, cat->shape[2], cat->shape[3], 0));
}

/* The conversions, the concatenation along blocks, the global average pooling and dropout (the
 * same mask: the blocked path draws it on float32) carry the gradient exactly; the values differ
 * by the rounding of the pooled mean and the dropout scale to bfloat16 (tolerance 4e-3), the
 * gradients by float32 summation order (1e-5). */
TEST(conversions_concat_pool_dropout_gradients_match_fp32) {
  if (blocked_bf16_refused_here()) return;
  hakd_params p;
  hakd_params_init(&p);
  int64_t as[4] = {2, 16, 6, 5}, bs[4] = {2, 20, 6, 5};
  hakd_tensor *in[2] = {gradcheck_input(&p, "a", 4, as, 1.0f, 8), gradcheck_input(&p, "b", 4, bs, 1.0f, 9)};
  round_param(in[0]);
  round_param(in[1]);
  compare("conversions/concat/avgpool/dropout", concat_pool_blocked, concat_pool_plain, in, 2, NULL, 1, 4e-3, 1e-5);
  hakd_params_free(&p);
}

/* ---- whole training steps ---- */

typedef struct {
  float loss;
  int n;
  float **grads;  /* per parameter */
  float **buffers; /* per buffer (running statistics) */
} step_result;

static void step_result_free(step_result *r) {
  for (int i = 0; i < r->n; i++) free(r->grads[i]), free(r->buffers[i]);
  free(r->grads);
  free(r->buffers);
}

#define BATCH 4

/* A pattern whose brightness and contrast differ from image to image: features pooled over a
 * whole image (the ASPP's image pooling, a BatchNorm over BATCH values per channel) then differ
 * across the batch by far more than bfloat16 rounding (images differing by a shift of one pattern
 * pool to nearly equal means, and their normalisation amplifies rounding without bound). */
static void fill_batch(hakd_tensor *x) {
  int64_t per_image = hakd_numel(x) / x->shape[0];
  for (int64_t k = 0; k < hakd_numel(x); k++) {
    int64_t b = k / per_image;
    float v = (float)((k * 7919) % 255) / 128.0f - 1.0f;
    hakd_f32(x)[k] = v * (0.5f + 0.4f * (float)b) + 0.6f * (float)b - 0.9f;
  }
}

/* mode 0: fp32; 1: bf16 on the plain path (HAKD_BF16_BLOCKED_TRAIN=0); 2: bf16 blocked. Fresh
 * param_fill weights, one step (training mode or eval mode, gradients recorded) on a fixed
 * BATCH x 3 x size x size batch; the loss, gradients and buffers after it. */
static int train_step(const char *name, float width, int size, int aux, int mode, int training, step_result *out) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = width;
  o.aux_head = aux;
  hakd_model *m = NULL;
  if (hakd_model_create(name, &o, &m)) return test_fail(__FILE__, __LINE__, "%s: %s", name, hakd_error_message()), -1;
  hakd_params *p = hakd_model_params(m);
  param_fill(p);
  setenv("HAKD_BF16_BLOCKED_TRAIN", mode == 1 ? "0" : "1", 1);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, mode ? HAKD_BF16 : HAKD_FP32);
  hakd_ctx_seed(ctx, 3);
  hakd_ctx_set_training(ctx, training);
  hakd_tensor *x = hakd_tensor4(ctx, BATCH, 3, size, size);
  int64_t ls[3] = {BATCH, size, size};
  hakd_tensor *labels = hakd_tensor_new(ctx, HAKD_I32, 3, ls);
  fill_batch(x);
  for (int64_t k = 0; k < hakd_numel(labels); k++) hakd_i32(labels)[k] = (int32_t)((k / size / 16 + k % size / 16) % 5);
  hakd_params_zero_grad(p);
  hakd_model_output mo;
  int rc = hakd_model_forward(m, ctx, x, &mo);
  hakd_tensor *logits = rc ? NULL : hakd_resize_bilinear(ctx, mo.logits, size, size, 0);
  hakd_tensor *loss = hakd_cross_entropy(ctx, logits, labels, 255);
  if (!rc && aux) /* the FCN aux head on stage 3 (blocked in, dropout, classifier) */
    loss = hakd_add(ctx, loss, hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, mo.aux, size, size, 0), labels, 255));
  if (!rc && mode == 2 && mo.stages[3]->dtype != HAKD_BF16_BLOCKED)
    test_fail(__FILE__, __LINE__, "%s: the blocked step's stage 4 is not blocked", name);
  if (!rc && !loss) rc = hakd_ctx_status(ctx);
  if (!rc) rc = hakd_backward(ctx, loss);
  if (rc) {
    test_fail(__FILE__, __LINE__, "%s mode %d: %s", name, mode, hakd_error_message());
  } else {
    out->loss = hakd_f32(loss)[0];
    out->n = p->count;
    out->grads = calloc((size_t)p->count, sizeof *out->grads);
    out->buffers = calloc((size_t)p->count, sizeof *out->buffers);
    for (int i = 0; i < p->count; i++) {
      hakd_tensor *t = p->items[i];
      size_t bytes = (size_t)hakd_numel(t) * sizeof(float);
      float **dst = t->requires_grad ? &out->grads[i] : &out->buffers[i];
      *dst = malloc(bytes ? bytes : 1);
      memcpy(*dst, t->requires_grad ? t->grad : t->data, bytes);
    }
  }
  unsetenv("HAKD_BF16_BLOCKED_TRAIN");
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  return rc;
}

/* Per tensor of the model: the gradient's (or for buffers the running statistic's) error of step
 * a against step b, relative to max |b| of the tensor; returns the whole model's gradient error
 * ||a - b|| / ||b||. */
static double step_errors(hakd_params *p, const step_result *a, const step_result *b, double *errs) {
  double diff2 = 0, norm2 = 0;
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    int64_t n = hakd_numel(t);
    errs[i] = t->requires_grad ? rel_err(a->grads[i], b->grads[i], n)
              : strstr(t->name, "running_") ? rel_err(a->buffers[i], b->buffers[i], n)
                                            : 0;
    if (t->requires_grad)
      for (int64_t k = 0; k < n; k++) {
        double d = (double)a->grads[i][k] - b->grads[i][k];
        diff2 += d * d, norm2 += (double)b->grads[i][k] * b->grads[i][k];
      }
  }
  return sqrt(diff2 / (norm2 > 0 ? norm2 : 1));
}

/* One step of `name` (width `width`, size x size images) in bf16 on blocked activations against
 * the float32 step, with the plain bf16 path (HAKD_BF16_BLOCKED_TRAIN=0) measuring how far bf16
 * alone moves each number; the same weights and batch for all three.
 *
 * The losses agree within 1e-2 (relative; in training mode plus twice the plain bf16 step's
 * error, 0-1.8% at these sizes). Each parameter gradient (eval mode with gradients) and each
 * running statistic (training mode) of the blocked step is within 2 e_plain + grad_slack (resp.
 * + 0.02) of fp32's, relative to max |fp32| of that tensor, where e_plain is the plain bf16
 * step's error on the same tensor: both bf16 paths round the products' operands (2^-9 relative),
 * the blocked one also every activation between ops (as PyTorch's autocast does), so some sums
 * that cancel (BatchNorm weight gradients, the first layers' weight gradients) lose more digits
 * there, but no tensor is far off where bf16 itself is accurate; a wrong layout, a lost gradient
 * term or a wrong mask gives errors of order 1. The whole model's gradient error ||g - g_fp32|| /
 * ||g_fp32|| stays within global_tol (printed; observed 0.02-0.055).
 *
 * The gradients of a training-mode step are not compared: at these widths and maps (2x2-8x8
 * stage-4 maps, BatchNorms over few values) they are ill-conditioned, so that the float32 step
 * itself, fed an input perturbed by 0.1%, moves them by 50-90% of their largest element (measured
 * while writing this test), and the plain bf16 path differs from fp32 as much; eval mode with
 * gradients runs the same kernels except the batch-statistics terms of BatchNorm's backward,
 * which the op tests above check exactly. */
static void check_step(const char *name, float width, int size, int aux, double grad_slack, double global_tol) {
  if (blocked_bf16_refused_here()) return;
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = width;
  o.aux_head = aux;
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create(name, &o, &m));
  hakd_params *p = hakd_model_params(m);
  double *e_blocked = calloc((size_t)p->count, sizeof(double)), *e_plain = calloc((size_t)p->count, sizeof(double));
  double *e_pair = calloc((size_t)p->count, sizeof(double));
  for (int training = 1; training >= 0; training--) {
    const char *how = training ? "train" : "eval+grad";
    step_result r[3];
    memset(r, 0, sizeof r);
    int rc = 0;
    for (int mode = 0; mode < 3 && !rc; mode++) rc = train_step(name, width, size, aux, mode, training, &r[mode]);
    if (!rc) {
      double g_blocked = step_errors(p, &r[2], &r[0], e_blocked), g_plain = step_errors(p, &r[1], &r[0], e_plain);
      double g_pair = step_errors(p, &r[2], &r[1], e_pair);
      double loss_err = fabs(r[2].loss - r[0].loss) / fabs(r[0].loss);
      double loss_tol = 1e-2 + (training ? 2 * fabs(r[1].loss - r[0].loss) / fabs(r[0].loss) : 0);
      printf("%s %s: loss %.6f blocked, %.6f plain bf16, %.6f fp32 (blocked rel err %.3g, tol %.3g)\n", name, how,
             r[2].loss, r[1].loss, r[0].loss, loss_err, loss_tol);
      if (!(loss_err <= loss_tol))
        test_fail(__FILE__, __LINE__, "%s %s: loss rel err %.3g > %.3g", name, how, loss_err, loss_tol);
      double worst = 0, worst_pair = 0;
      const char *worst_name = "";
      for (int i = 0; i < p->count; i++) {
        hakd_tensor *t = p->items[i];
        if (training ? t->requires_grad || !strstr(t->name, "running_") : !t->requires_grad) continue;
        double tol = 2 * e_plain[i] + (training ? 0.02 : grad_slack);
        if (e_blocked[i] > worst) worst = e_blocked[i], worst_name = t->name;
        if (e_pair[i] > worst_pair) worst_pair = e_pair[i];
        if (!(e_blocked[i] <= tol))
          test_fail(__FILE__, __LINE__, "%s %s: %s%s rel err %.3g vs fp32 > %.3g (plain bf16: %.3g)", name, how,
                    t->requires_grad ? "gradient of " : "", t->name, e_blocked[i], tol, e_plain[i]);
      }
      printf("%s %s: worst %s rel err vs fp32 %.3g (%s), vs plain bf16 %.3g; whole-model gradient error: blocked "
             "%.3g, plain bf16 %.3g, blocked vs plain %.3g\n",
             name, how, training ? "running-stat" : "gradient", worst, worst_name, worst_pair, g_blocked, g_plain,
             g_pair);
      if (!training && !(g_blocked <= global_tol))
        test_fail(__FILE__, __LINE__, "%s: whole-model gradient error %.3g > %.3g", name, g_blocked, global_tol);
    }
    for (int mode = 0; mode < 3; mode++) step_result_free(&r[mode]);
  }
  free(e_blocked);
  free(e_plain);
  free(e_pair);
  hakd_model_free(m);
}

/* with the FCN aux head on stage 3 */
TEST(deeplabv3_r18_d8_blocked_step_matches_fp32) { check_step("deeplabv3-r18-d8", 0.25f, 48, 1, 0.1, 0.06); }
/* Bottleneck blocks (1x1 / 3x3 / 1x1 with the residual on the third BatchNorm) */
TEST(deeplabv3_r50_d8_blocked_step_matches_fp32) { check_step("deeplabv3-r50-d8", 0.125f, 48, 0, 0.1, 0.06); }
/* mmseg's deep stem and ASPP head */
TEST(deeplabv3_r50_d8_mmseg_blocked_step_matches_fp32) { check_step("deeplabv3-r50-d8-mmseg", 0.125f, 48, 0, 0.1, 0.06); }
/* Depthwise convolutions run the direct float32 kernel on both paths, but the blocked path stores
 * their inputs and outputs as bfloat16 where the plain path keeps float32, so the plain path's
 * error understates the blocked one's there: a slack of 0.4 (observed 0.39-0.55 against 0.14-0.20
 * on the plain path for projection BatchNorm parameters' gradients, sums that cancel) and 0.08
 * for the whole model (observed 0.055). */
TEST(deeplabv3_mbv2_blocked_step_matches_fp32) { check_step("deeplabv3-mbv2", 0.25f, 48, 0, 0.4, 0.08); }

/* Plain SGD (lr 0.05) on one fixed batch for 6 steps in bf16 on blocked activations: the loss
 * falls (a wrong gradient sign or a broken chain would not). */
TEST(deeplabv3_r18_d8_blocked_sgd_decreases_loss) {
  if (blocked_bf16_refused_here()) return;
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 0.25f;
  o.dropout = 0.0f;
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  hakd_params *p = hakd_model_params(m);
  param_fill(p);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  float first = 0, last = 0;
  for (int step = 0; step < 6; step++) {
    hakd_ctx_reset(ctx);
    hakd_tensor *x = hakd_tensor4(ctx, 2, 3, 64, 64);
    int64_t ls[3] = {2, 64, 64};
    hakd_tensor *labels = hakd_tensor_new(ctx, HAKD_I32, 3, ls);
    for (int64_t k = 0; k < hakd_numel(x); k++) hakd_f32(x)[k] = (float)((k * 7919) % 255) / 128.0f - 1.0f;
    for (int64_t k = 0; k < hakd_numel(labels); k++) hakd_i32(labels)[k] = (int32_t)((k / 64 / 16 + k % 64 / 16) % 5);
    hakd_params_zero_grad(p);
    hakd_model_output mo;
    ASSERT_OK(hakd_model_forward(m, ctx, x, &mo));
    ASSERT_EQ_INT(mo.stages[3]->dtype, HAKD_BF16_BLOCKED);
    hakd_tensor *loss = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, mo.logits, 64, 64, 0), labels, 255);
    ASSERT_TRUE(loss != NULL);
    ASSERT_OK(hakd_backward(ctx, loss));
    float l = hakd_f32(loss)[0];
    printf("step %d: loss %.5f\n", step, l);
    ASSERT_TRUE(isfinite(l));
    if (step == 0) first = l;
    last = l;
    for (int i = 0; i < p->count; i++) {
      hakd_tensor *t = p->items[i];
      if (!t->requires_grad) continue;
      for (int64_t k = 0; k < hakd_numel(t); k++) hakd_f32(t)[k] -= 0.05f * t->grad[k];
    }
  }
  ASSERT_TRUE(last < 0.9f * first);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
}

/* The developer switches HAKD_BN_FUSED and HAKD_BF16_BLOCKED_TRAIN take 0 or 1 (or nothing): any
 * other value fails the forward with a message naming it, so a typo cannot silently measure the
 * other path. */
static int switch_forward(int bf16, const char *name, const char *value) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 0.25f;
  hakd_model *m = NULL;
  if (hakd_model_create("deeplabv3-r18-d8", &o, &m)) return -2;
  param_fill(hakd_model_params(m));
  setenv(name, value, 1);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, bf16 ? HAKD_BF16 : HAKD_FP32);
  hakd_ctx_set_training(ctx, 1);
  hakd_tensor *x = hakd_tensor4(ctx, 2, 3, 32, 32);
  fill_batch(x);
  hakd_model_output mo;
  int rc = hakd_model_forward(m, ctx, x, &mo);
  unsetenv(name);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  return rc;
}

TEST(developer_switches_refuse_unknown_values) {
  ASSERT_TRUE(switch_forward(0, "HAKD_BN_FUSED", "yes") != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "HAKD_BN_FUSED=yes: expected 0 or 1") != NULL);
  ASSERT_OK(switch_forward(0, "HAKD_BN_FUSED", "0"));
  ASSERT_OK(switch_forward(0, "HAKD_BN_FUSED", "1"));
  if (blocked_bf16_refused_here()) return;
  ASSERT_TRUE(switch_forward(1, "HAKD_BF16_BLOCKED_TRAIN", "on") != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), "HAKD_BF16_BLOCKED_TRAIN=on: expected 0 or 1") != NULL);
  ASSERT_OK(switch_forward(1, "HAKD_BF16_BLOCKED_TRAIN", "0"));
}
