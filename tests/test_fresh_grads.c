/* Gradients written instead of added (hakd_grad_fresh): an activation's first consumer to run
 * backward and a parameter's first backward after hakd_params_mark_grads_zero write the gradient
 * whole, later consumers add to it. Checked where it can go wrong: an activation read by several
 * convolutions (oneDNN, GEMM and tap paths) and a BatchNorm residual, a weight shared by two
 * convolutions, a parameter no backward reaches, step memory holding an earlier step's values,
 * and bf16 convolutions run in parts (the first part writes the weight gradient, the others add). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "bf16.h"
#include "harness.h"
#include "rand_fill.h"
#include "hakd/ops.h"
#include "ops/conv2d.h"

enum { N = 2, C = 16, S = 12 };

typedef struct {
  hakd_params p;
  hakd_tensor *x0, *w1, *w2, *w3, *gamma, *beta, *mean, *var, *unused;
} graph_params;

static int graph_params_init(graph_params *g, float x_scale) {
  memset(g, 0, sizeof *g);
  hakd_params_init(&g->p);
  int64_t xs[4] = {N, C, S, S}, w3x3[4] = {C, C, 3, 3}, w1x1[4] = {C, C, 1, 1}, cs[1] = {C};
  g->x0 = hakd_params_add(&g->p, "x0", 4, xs, 0);
  g->w1 = hakd_params_add(&g->p, "w1", 4, w3x3, 0);
  g->w2 = hakd_params_add(&g->p, "w2", 4, w3x3, 0);
  g->w3 = hakd_params_add(&g->p, "w3", 4, w1x1, 0);
  g->gamma = hakd_params_add(&g->p, "gamma", 1, cs, 0);
  g->beta = hakd_params_add(&g->p, "beta", 1, cs, 0);
  g->mean = hakd_params_add(&g->p, "mean", 1, cs, 1);
  g->var = hakd_params_add(&g->p, "var", 1, cs, 1);
  g->unused = hakd_params_add(&g->p, "unused", 1, cs, 0);
  if (!g->x0 || !g->w1 || !g->w2 || !g->w3 || !g->gamma || !g->beta || !g->mean || !g->var || !g->unused) return -1;
  fill_normal(hakd_f32(g->x0), hakd_numel(g->x0), x_scale, 1);
  for (int64_t i = 0; i < hakd_numel(g->x0); i++) /* > 0: the ReLU passes every gradient */
    hakd_f32(g->x0)[i] = fabsf(hakd_f32(g->x0)[i]) + 0.1f;
  fill_normal(hakd_f32(g->w1), hakd_numel(g->w1), 0.2f, 2);
  fill_normal(hakd_f32(g->w2), hakd_numel(g->w2), 0.2f, 3);
  fill_normal(hakd_f32(g->w3), hakd_numel(g->w3), 0.2f, 4);
  fill_normal(hakd_f32(g->gamma), C, 1.0f, 5);
  fill_normal(hakd_f32(g->beta), C, 1.0f, 6);
  for (int i = 0; i < C; i++) hakd_f32(g->var)[i] = 1.0f;
  return 0;
}

/* x = relu(x0) read by a 3x3 convolution (oneDNN), the same weight again, a 1x1 convolution (its
 * backward on the GEMM path), a dilated 3x3 whose outer taps are half in the padding, and as the
 * residual of BatchNorm + ReLU; with `copies` each consumer reads its own relu(x0) instead, so
 * every activation gradient has one consumer. Output: the sum of the five. */
static hakd_tensor *graph_forward(hakd_ctx *ctx, graph_params *g, int copies) {
  hakd_tensor *x[5];
  for (int i = 0; i < 5; i++) x[i] = i == 0 || copies ? hakd_relu(ctx, g->x0) : x[0];
  hakd_tensor *a = hakd_conv2d(ctx, x[0], g->w1, NULL, 1, 1, 1, 1);
  hakd_tensor *a2 = hakd_conv2d(ctx, x[1], g->w1, NULL, 1, 1, 1, 1);
  hakd_tensor *b = hakd_conv2d(ctx, x[2], g->w3, NULL, 1, 0, 1, 1);
  hakd_tensor *c = hakd_conv2d(ctx, x[3], g->w2, NULL, 1, 6, 6, 1);
  hakd_tensor *y = hakd_batchnorm2d_act(ctx, a, g->gamma, g->beta, g->mean, g->var, 0.1f, 1e-5f, x[4], HAKD_ACT_RELU);
  return hakd_add(ctx, hakd_add(ctx, hakd_add(ctx, y, a2), b), c);
}

/* The gradients of x0, w1, w2, w3, gamma, beta after one backward seeded with a fixed gy, copied
 * out; `lazy`: the gradients were marked zero (over a poisoned buffer) instead of zeroed. */
typedef struct {
  float *g[6];
  int64_t n[6];
} graph_grads;

static void graph_grads_free(graph_grads *r) {
  for (int i = 0; i < 6; i++) free(r->g[i]);
  memset(r, 0, sizeof *r);
}

static int graph_run(hakd_ctx *ctx, graph_params *g, int copies, int lazy, graph_grads *r) {
  memset(r, 0, sizeof *r);
  hakd_tensor *t[6] = {g->x0, g->w1, g->w2, g->w3, g->gamma, g->beta};
  if (lazy) {
    for (int i = 0; i < g->p.count; i++)
      if (g->p.items[i]->grad)
        for (int64_t k = 0; k < hakd_numel(g->p.items[i]); k++) g->p.items[i]->grad[k] = NAN;
    hakd_params_mark_grads_zero(&g->p);
  } else {
    hakd_params_zero_grad(&g->p);
  }
  hakd_ctx_reset(ctx);
  hakd_tensor *out = graph_forward(ctx, g, copies);
  if (!out) return test_fail(__FILE__, __LINE__, "forward: %s", hakd_error_message()), -1;
  float *gy = malloc((size_t)hakd_numel(out) * sizeof(float));
  fill_normal(gy, hakd_numel(out), 1.0f, 7);
  int rc = hakd_backward_seeded(ctx, out, gy);
  free(gy);
  if (rc) return test_fail(__FILE__, __LINE__, "backward: %s", hakd_error_message()), -1;
  for (int i = 0; i < 6; i++) {
    r->n[i] = hakd_numel(t[i]);
    r->g[i] = copy_floats(hakd_param_grad(t[i]), r->n[i]);
  }
  return 0;
}

/* Sums of the same terms in another order: float32 reassociation of at most 5 terms per
 * element (the consumers) over values of order 10, ~1e-6 of the largest; a missed or doubled
 * consumer gives errors of order 1. */
#define FRESH_TOL 1e-5

static void check_grads(const char *what, const graph_grads *got, const graph_grads *want, double tol) {
  static const char *names[6] = {"x0", "w1", "w2", "w3", "gamma", "beta"};
  for (int i = 0; i < 6; i++) {
    double e = test_max_rel_err(got->g[i], want->g[i], got->n[i], 1e-6);
    if (!(e <= tol)) test_fail(__FILE__, __LINE__, "%s: gradient of %s rel err %.3g > %g", what, names[i], e, tol);
  }
}

/* An activation read by five consumers gets the sum of their gradients, whichever of them runs
 * backward first and writes it (each consumer alone: `copies`); parameters marked zero get the
 * same gradients as parameters zeroed, the shared weight w1 the sum of its two uses. */
TEST(several_consumers_sum_their_gradients) {
  graph_params g;
  ASSERT_OK(graph_params_init(&g, 1.0f));
  hakd_ctx *ctx = hakd_ctx_new();
  ASSERT_TRUE(ctx != NULL);
  graph_grads shared, copies, lazy;
  ASSERT_OK(graph_run(ctx, &g, 0, 0, &shared));
  ASSERT_OK(graph_run(ctx, &g, 1, 0, &copies));
  ASSERT_OK(graph_run(ctx, &g, 0, 1, &lazy));
  check_grads("one x vs a copy per consumer", &shared, &copies, FRESH_TOL);
  check_grads("marked zero vs zeroed", &lazy, &shared, 0.0); /* the same sums in the same order */
  /* no backward reached `unused`: marked zero over NaN, it still reads as zero */
  float *u = hakd_param_grad(g.unused);
  ASSERT_TRUE(u != NULL && !g.unused->grad_stale);
  for (int i = 0; i < C; i++) ASSERT_TRUE(u[i] == 0.0f);
  graph_grads_free(&shared);
  graph_grads_free(&copies);
  graph_grads_free(&lazy);
  hakd_ctx_free(ctx);
  hakd_params_free(&g.p);
}

/* A step in a context whose memory holds an earlier step's gradients (ten times larger inputs)
 * gives the gradients of the same step in a new context: every written gradient is written
 * whole. */
TEST(reused_step_memory_is_overwritten) {
  graph_params big, g;
  ASSERT_OK(graph_params_init(&big, 10.0f));
  ASSERT_OK(graph_params_init(&g, 1.0f));
  hakd_ctx *used = hakd_ctx_new(), *fresh = hakd_ctx_new();
  ASSERT_TRUE(used && fresh);
  graph_grads first, got, want;
  ASSERT_OK(graph_run(used, &big, 0, 1, &first));
  ASSERT_OK(graph_run(used, &g, 0, 1, &got));
  ASSERT_OK(graph_run(fresh, &g, 0, 1, &want));
  check_grads("reused vs new context", &got, &want, 0.0); /* the same computation: equal to the bit */
  graph_grads_free(&first);
  graph_grads_free(&got);
  graph_grads_free(&want);
  hakd_ctx_free(used);
  hakd_ctx_free(fresh);
  hakd_params_free(&big.p);
  hakd_params_free(&g.p);
}

/* bf16 convolutions on float32 tensors run image by image (and 1x1 ones in row bands) when their
 * scratch would exceed the part budget: the first part writes a marked-zero weight gradient, the
 * others add to it. With a one-byte budget every call is cut; marked zero over NaN must equal
 * zeroed. */
TEST(bf16_parts_write_then_add_weight_gradients) {
  graph_params g;
  ASSERT_OK(graph_params_init(&g, 1.0f));
  hakd_ctx *ctx = hakd_ctx_new();
  ASSERT_TRUE(ctx != NULL);
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  conv2d_dnnl_set_part_bytes(1);
  int64_t ws[4] = {C, C, 1, 1};
  hakd_tensor *w = hakd_params_add(&g.p, "w1x1", 4, ws, 0);
  ASSERT_TRUE(w != NULL);
  fill_normal(hakd_f32(w), hakd_numel(w), 0.2f, 8);
  float *grad[2][2] = {{NULL, NULL}, {NULL, NULL}};
  for (int lazy = 0; lazy < 2 && !test_failed(); lazy++) {
    if (lazy) {
      for (int k = 0; k < hakd_numel(w); k++) w->grad[k] = NAN;
      for (int k = 0; k < hakd_numel(g.w1); k++) g.w1->grad[k] = NAN;
      hakd_params_mark_grads_zero(&g.p);
    } else {
      hakd_params_zero_grad(&g.p);
    }
    hakd_ctx_reset(ctx);
    hakd_tensor *a = hakd_conv2d(ctx, g.x0, g.w1, NULL, 1, 1, 1, 1);
    if (bf16_refused(ctx, a, "conv2d")) break;
    hakd_tensor *out = hakd_add(ctx, a, hakd_conv2d(ctx, g.x0, w, NULL, 1, 0, 1, 1));
    ASSERT_TRUE(out != NULL);
    float *gy = malloc((size_t)hakd_numel(out) * sizeof(float));
    fill_normal(gy, hakd_numel(out), 1.0f, 9);
    int rc = hakd_backward_seeded(ctx, out, gy);
    free(gy);
    ASSERT_OK(rc);
    grad[lazy][0] = copy_floats(hakd_param_grad(g.w1), hakd_numel(g.w1));
    grad[lazy][1] = copy_floats(hakd_param_grad(w), hakd_numel(w));
  }
  conv2d_dnnl_set_part_bytes(0);
  if (grad[1][0]) {
    ASSERT_ALLCLOSE(grad[1][0], grad[0][0], hakd_numel(g.w1), 0.0);
    ASSERT_ALLCLOSE(grad[1][1], grad[0][1], hakd_numel(w), 0.0);
  }
  for (int i = 0; i < 4; i++) free(grad[i / 2][i % 2]);
  hakd_ctx_free(ctx);
  hakd_params_free(&g.p);
}
