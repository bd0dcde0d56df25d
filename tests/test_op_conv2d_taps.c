/* The tap path of conv2d (src/ops/conv2d_taps.c), which never computes the products of kernel
 * taps with the zero padding, against the full computation: the im2col + sgemm path and oneDNN,
 * forward and both gradients, at shapes where taps fall wholly or partly into the padding. */
#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "rand_fill.h"
#include "hakd/ops.h"
#include "ops/conv2d.h"

typedef struct {
  int n, cin, h, w, cout, k, stride, pad, dilation;
  int input_grad; /* 0: x is frozen (the image-reading layers), only dw and db */
} taps_case;

/* y, dx, dw, db of one forward and a backward seeded with gy on `path`, copied out. */
typedef struct {
  float *y, *dx, *dw, *db;
  int64_t ny, nx, nw;
} taps_result;

static void taps_result_free(taps_result *r) {
  free(r->y);
  free(r->dx);
  free(r->dw);
  free(r->db);
  memset(r, 0, sizeof *r);
}

/* A value the gradients hold before the backward (0: none): the backward must add to them, and
 * run_case subtracts it again, so an overwrite shows as an error of this size. */
static float run_case_prefill;

/* g->grad += v for each non-NULL tensor of the n. */
static void grads_add(hakd_tensor *const *g, int n, float v) {
  for (int k = 0; k < n; k++)
    for (int64_t i = 0; g[k] && i < hakd_numel(g[k]); i++) g[k]->grad[i] += v;
}

/* Runs the case on `path` with operands drawn from `seed`; 0 or -1 after test_fail. */
static int run_case(const taps_case *tc, conv2d_path path, uint64_t seed, taps_result *r) {
  memset(r, 0, sizeof *r);
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {tc->n, tc->cin, tc->h, tc->w}, ws[4] = {tc->cout, tc->cin, tc->k, tc->k}, bs[1] = {tc->cout};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, !tc->input_grad), *w = hakd_params_add(&p, "w", 4, ws, 0);
  hakd_tensor *b = hakd_params_add(&p, "b", 1, bs, 0);
  int rc = -1;
  hakd_ctx *ctx = hakd_ctx_new();
  if (x && w && b && ctx) {
    fill_normal(hakd_f32(x), hakd_numel(x), 1.0f, seed);
    fill_normal(hakd_f32(w), hakd_numel(w), 0.1f, seed + 1);
    fill_normal(hakd_f32(b), hakd_numel(b), 1.0f, seed + 2);
    conv2d_set_path(path);
    hakd_tensor *y = hakd_conv2d(ctx, x, w, b, tc->stride, tc->pad, tc->dilation, 1);
    if (y) {
      r->ny = hakd_numel(y), r->nx = hakd_numel(x), r->nw = hakd_numel(w);
      float *gy = malloc((size_t)r->ny * sizeof(float));
      fill_normal(gy, r->ny, 1.0f, seed + 3);
      r->y = copy_floats(hakd_f32(y), r->ny);
      hakd_tensor *grads[3] = {tc->input_grad ? x : NULL, w, b};
      if (run_case_prefill != 0.0f) grads_add(grads, 3, run_case_prefill); /* fresh gradients are zero */
      if (hakd_backward_seeded(ctx, y, gy) == 0) {
        if (run_case_prefill != 0.0f) grads_add(grads, 3, -run_case_prefill);
        r->dx = tc->input_grad ? copy_floats(x->grad, r->nx) : NULL;
        r->dw = copy_floats(w->grad, r->nw);
        r->db = copy_floats(b->grad, tc->cout);
        rc = 0;
      }
      free(gy);
    }
    conv2d_set_path(CONV2D_PATH_AUTO);
  }
  if (rc) test_fail(__FILE__, __LINE__, "conv2d on path %d failed: %s", (int)path, hakd_error_message());
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
  return rc;
}

/* Both paths sum the same nonzero products (a product with padding is an exact zero), in a
 * different order: fp32 reassociation over at most Cin * 9 = 9216 terms leaves errors near
 * sqrt(terms) * 6e-8 ~ 6e-6 of the largest value; 2e-5 normalised max error, while one
 * skipped valid tap or a shifted rectangle gives errors of order 1e-1. */
#define TAPS_TOL 2e-5

static void check_equal(const char *what, const taps_case *tc, const taps_result *got, const taps_result *want) {
  double ey = test_max_rel_err(got->y, want->y, got->ny, 1e-6);
  double edw = test_max_rel_err(got->dw, want->dw, got->nw, 1e-6);
  double edb = test_max_rel_err(got->db, want->db, tc->cout, 1e-6);
  double edx = tc->input_grad ? test_max_rel_err(got->dx, want->dx, got->nx, 1e-6) : 0.0;
  if (!(ey <= TAPS_TOL && edx <= TAPS_TOL && edw <= TAPS_TOL && edb <= TAPS_TOL))
    test_fail(__FILE__, __LINE__,
              "%s: %dx%d map, k%d s%d p%d d%d, cin %d cout %d: rel err y %.3g dx %.3g dw %.3g db %.3g > %g", what,
              tc->h, tc->w, tc->k, tc->stride, tc->pad, tc->dilation, tc->cin, tc->cout, ey, edx, edw, edb, TAPS_TOL);
}

/* Each case on the tap path against the im2col path and oneDNN (both compute every tap). */
static void check_cases(const taps_case *cases, size_t count) {
  for (size_t t = 0; t < count && !test_failed(); t++) {
    taps_result taps, gemm, dnnl;
    if (run_case(&cases[t], CONV2D_PATH_TAPS, 10 * t + 1, &taps)) return;
    if (run_case(&cases[t], CONV2D_PATH_GEMM, 10 * t + 1, &gemm) == 0)
      check_equal("taps vs gemm", &cases[t], &taps, &gemm);
    if (run_case(&cases[t], CONV2D_PATH_DNNL, 10 * t + 1, &dnnl) == 0)
      check_equal("taps vs dnnl", &cases[t], &taps, &dnnl);
    taps_result_free(&taps);
    taps_result_free(&gemm);
    taps_result_free(&dnnl);
  }
}

/* ASPP rates on an 8x8 map (a 64-pixel input at output stride 8): 12, 24 and 36 leave only the
 * centre tap, 6 leaves the outer taps two rows and columns each; batch 2 with bias. */
TEST(aspp_rates_on_8x8_match_full) {
  const taps_case cases[] = {
      {2, 16, 8, 8, 8, 3, 1, 12, 12, 1}, {2, 16, 8, 8, 8, 3, 1, 24, 24, 1}, {2, 16, 8, 8, 8, 3, 1, 36, 36, 1},
      {2, 16, 8, 8, 8, 3, 1, 6, 6, 1},   {1, 16, 8, 8, 8, 3, 1, 12, 12, 0},
  };
  check_cases(cases, sizeof cases / sizeof cases[0]);
}

/* A 3x3 map with dilation 2 (each outer tap valid on one row or column), strides 2 and 3,
 * non-square maps, padding other than the dilation (asymmetric valid ranges), 5x5 and 1-row maps. */
TEST(partial_taps_strides_and_nonsquare_match_full) {
  const taps_case cases[] = {
      {2, 6, 3, 3, 5, 3, 1, 2, 2, 1},  {2, 6, 9, 7, 5, 3, 2, 2, 2, 1},   {1, 5, 11, 5, 4, 3, 1, 4, 4, 1},
      {2, 4, 6, 10, 3, 3, 1, 1, 3, 1}, {1, 4, 13, 9, 6, 5, 3, 3, 2, 1},  {2, 3, 1, 12, 4, 3, 1, 5, 5, 1},
      {1, 7, 7, 7, 5, 3, 2, 12, 12, 1}, {2, 4, 10, 10, 6, 3, 1, 0, 4, 1},
  };
  check_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Large channel counts: the tap rectangles are cut into several row tiles (the per-thread
 * buffer holds (Cin + Cout) x 1M / (Cin + Cout) floats), and the first output rows of a tile
 * are outside an outer tap's rectangle. */
TEST(row_tiles_match_full) {
  const taps_case cases[] = {{1, 1024, 32, 32, 64, 3, 1, 24, 24, 1}, {2, 1024, 32, 24, 64, 3, 1, 12, 12, 1}};
  check_cases(cases, sizeof cases / sizeof cases[0]);
}

/* Where oneDNN has no direct backward-data or backward-weights kernel (its GEMM convolution), the
 * auto rule takes that gradient from the tap path and the other from oneDNN; forward and all three
 * gradients against the im2col path, which computes every tap, with gradients that already hold a
 * value (the backward adds to them), and a layer whose input needs no gradient. On AVX-512 with
 * this project's oneDNN (2.6) the first case runs its input gradient on taps (oneDNN's backward
 * data at rate 12 with padding 12 on a 32x32 map is "gemm:jit") and the last its weight gradient
 * (rate 36 on 128x128); a newer oneDNN with direct kernels there fails the check below, and the
 * cases then need shapes that still split. */
TEST(auto_split_backward_matches_full) {
  const taps_case cases[] = {{2, 32, 32, 32, 16, 3, 1, 12, 12, 1}, {1, 24, 32, 20, 40, 3, 1, 11, 11, 1},
                             {2, 16, 16, 16, 8, 3, 1, 3, 3, 1},     {2, 16, 32, 32, 16, 3, 1, 12, 12, 0},
                             {1, 16, 128, 128, 8, 3, 1, 36, 36, 1}};
  int split[4] = {0};
  run_case_prefill = 0.75f;
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    const taps_case *tc = &cases[t];
    conv2d_shape s = {.n = tc->n, .cin = tc->cin, .h = tc->h, .w = tc->w, .cout = tc->cout, .kh = 3, .kw = 3,
                      .stride = 1, .pad = tc->pad, .dilation = tc->dilation, .groups = 1, .has_bias = 1};
    s.oh = tc->h, s.ow = tc->w;
    int taps = conv2d_backward_by_taps(&s);
    split[taps] |= 1 << t;
    taps_result got, want;
    if (run_case(tc, CONV2D_PATH_AUTO, 10 * t + 5, &got)) break;
    if (run_case(tc, CONV2D_PATH_GEMM, 10 * t + 5, &want) == 0) check_equal("auto vs gemm", tc, &got, &want);
    taps_result_free(&got);
    taps_result_free(&want);
  }
  run_case_prefill = 0.0f;
  if ((dnnl_get_effective_cpu_isa() & dnnl_cpu_isa_avx512_core) == dnnl_cpu_isa_avx512_core) {
    ASSERT_TRUE(((split[1] | split[3]) & 1) != 0); /* case 0: dx on taps */
    ASSERT_TRUE(((split[2] | split[3]) & 16) != 0); /* case 4: dw on taps */
  }
  conv2d_shape plain = {.n = 1, .cin = 8, .h = 8, .w = 8, .cout = 8, .kh = 3, .kw = 3, .oh = 8, .ow = 8,
                        .stride = 1, .pad = 1, .dilation = 1, .groups = 1};
  ASSERT_EQ_INT(conv2d_backward_by_taps(&plain), 0); /* not dilated: nothing to skip worth a split */
  conv2d_set_path(CONV2D_PATH_DNNL); /* a forced path splits nothing */
  ASSERT_EQ_INT(conv2d_backward_by_taps(&(conv2d_shape){.n = 2, .cin = 32, .h = 32, .w = 32, .cout = 16, .kh = 3,
                                                         .kw = 3, .oh = 32, .ow = 32, .stride = 1, .pad = 12,
                                                         .dilation = 12, .groups = 1, .has_bias = 1}),
                0);
  conv2d_set_path(CONV2D_PATH_AUTO);
}

static hakd_tensor *build_conv(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const taps_case *tc = arg;
  return hakd_conv2d(ctx, in[0], in[1], in[2], tc->stride, tc->pad, tc->dilation, 1);
}

/* Finite differences on the tap path (conv2d is linear in each input: only fp32 rounding of
 * the outputs, ~1e-5 at eps 0.05; atol 5e-4 and rtol 1e-3 as in test_op_conv2d). */
TEST(gradcheck_taps) {
  const taps_case cases[] = {{2, 3, 5, 4, 2, 3, 1, 4, 4, 1}, {1, 2, 7, 6, 3, 3, 2, 3, 2, 1}};
  conv2d_set_path(CONV2D_PATH_TAPS);
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    const taps_case *tc = &cases[t];
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[4] = {tc->n, tc->cin, tc->h, tc->w}, ws[4] = {tc->cout, tc->cin, tc->k, tc->k}, bs[1] = {tc->cout};
    hakd_tensor *in[3] = {gradcheck_input(&p, "x", 4, xs, 1.0f, 10 + t), gradcheck_input(&p, "w", 4, ws, 0.5f, 20 + t),
                          gradcheck_input(&p, "b", 1, bs, 1.0f, 30 + t)};
    char what[64];
    snprintf(what, sizeof what, "conv2d taps case %zu", t);
    gradcheck(what, build_conv, (void *)tc, in, 3, 0.05, 5e-4, 1e-3, 40);
    hakd_params_free(&p);
  }
  conv2d_set_path(CONV2D_PATH_AUTO);
}

/* The auto rule takes the tap path for dilated convs with whole taps in the padding, or with at
 * most 40% of their products valid; the executed multiply-adds count only those (hakd bench). */
static conv2d_shape same_3x3(int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t dilation) {
  return (conv2d_shape){.n = 1, .cin = cin, .h = h, .w = w, .cout = cout, .kh = 3, .kw = 3, .oh = h, .ow = w,
                        .stride = 1, .pad = dilation, .dilation = dilation, .groups = 1};
}

TEST(auto_rule_and_executed_macs) {
  conv2d_shape centre = same_3x3(2048, 8, 8, 256, 12), rate12_at_32 = same_3x3(2048, 32, 32, 256, 12);
  conv2d_shape rate24_at_32 = same_3x3(2048, 32, 32, 256, 24), rows_only = same_3x3(64, 8, 40, 64, 12);
  conv2d_shape plain3x3 = same_3x3(64, 4, 4, 64, 1);
  ASSERT_EQ_INT(conv2d_valid_positions(&centre), 64);
  /* 32x32, rate 12: centre 32x32, edges 20x32 (x4), corners 20x20 (x4) */
  ASSERT_EQ_INT(conv2d_valid_positions(&rate12_at_32), 1024 + 4 * 640 + 4 * 400);
  ASSERT_EQ_INT(conv2d_auto_path(&centre), CONV2D_PATH_TAPS);       /* 8 of 9 taps in the padding */
  ASSERT_EQ_INT(conv2d_auto_path(&rows_only), CONV2D_PATH_TAPS);    /* the outer tap rows in the padding */
  ASSERT_EQ_INT(conv2d_auto_path(&rate24_at_32), CONV2D_PATH_TAPS); /* 25% valid */
  ASSERT_EQ_INT(conv2d_auto_path(&rate12_at_32), CONV2D_PATH_DNNL); /* 56% valid, every tap used */
  ASSERT_EQ_INT(conv2d_auto_path(&plain3x3), CONV2D_PATH_DNNL);     /* not dilated */
  centre.bf16 = 1;
  ASSERT_EQ_INT(conv2d_auto_path(&centre), CONV2D_PATH_DNNL); /* bfloat16 products only on oneDNN */
  /* The forward alone: where oneDNN's forward is a direct kernel (which skips the padded taps too)
   * and every tap reads the map, oneDNN; where oneDNN would run its GEMM convolution, the tap path
   * up to 60% valid. Which kernel oneDNN picks depends on the CPU (on this project's AVX-512
   * machine rate 12 on 16x16 maps is direct, on 32x32 maps GEMM), so the rule is checked against
   * oneDNN's answer. */
  conv2d_shape rate12_at_16 = same_3x3(2048, 16, 16, 256, 12);
  ASSERT_EQ_INT(conv2d_auto_path(&rate12_at_16), CONV2D_PATH_TAPS); /* 25% valid, every tap used */
  ASSERT_EQ_INT(conv2d_auto_forward_path(&rate12_at_16),
                conv2d_dnnl_forward_is_direct(&rate12_at_16) ? CONV2D_PATH_DNNL : CONV2D_PATH_TAPS);
  ASSERT_EQ_INT(conv2d_auto_forward_path(&rate12_at_32),
                conv2d_dnnl_forward_is_direct(&rate12_at_32) ? CONV2D_PATH_DNNL : CONV2D_PATH_TAPS);
  centre.bf16 = 0;
  ASSERT_EQ_INT(conv2d_auto_forward_path(&centre), CONV2D_PATH_TAPS); /* whole taps in the padding */
  ASSERT_EQ_INT(conv2d_auto_forward_path(&plain3x3), CONV2D_PATH_DNNL);
  centre.bf16 = 1;
  ASSERT_EQ_INT(conv2d_auto_forward_path(&centre), CONV2D_PATH_DNNL);
  /* 1x1 forwards on small maps (<= CONV2D_SMALL_MAP_POSITIONS positions over the batch) run on
   * oneDNN, larger ones (and every 1x1 backward) on the GEMM path when OpenBLAS has full-width kernels */
  conv2d_shape pw_small = {.n = 2, .cin = 160, .h = 32, .w = 32, .cout = 960, .kh = 1, .kw = 1, .oh = 32, .ow = 32,
                           .stride = 1, .dilation = 1, .groups = 1};
  conv2d_shape pw_large = pw_small;
  pw_large.h = pw_large.w = pw_large.oh = pw_large.ow = 64;
  conv2d_path pw = conv2d_blas_full_width() ? CONV2D_PATH_GEMM : CONV2D_PATH_DNNL;
  ASSERT_EQ_INT(conv2d_auto_forward_path(&pw_small), CONV2D_PATH_DNNL);
  ASSERT_EQ_INT(conv2d_auto_path(&pw_small), pw);
  ASSERT_EQ_INT(conv2d_auto_forward_path(&pw_large), pw);
  /* The tape's executed count: a centre-only ASPP conv counts 1/9 of its nominal MACs. */
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {1, 8, 8, 8}, ws[4] = {4, 8, 3, 3};
  hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 1), *w = gradcheck_input(&p, "w", 4, ws, 1.0f, 2);
  hakd_ctx *ctx = hakd_ctx_new();
  ASSERT_TRUE(hakd_conv2d(ctx, x, w, NULL, 1, 24, 24, 1) != NULL);
  ASSERT_EQ_INT(hakd_tape_macs(ctx), 4 * 8 * 9 * 64);
  ASSERT_EQ_INT(hakd_tape_executed_macs(ctx), 4 * 8 * 64);
  /* and a plain 3x3 with padding 1 on a 4x4 map, on oneDNN: the valid positions where its
   * forward kernel is direct (per kernel column 3 + 4 + 3 of 12 column positions, the same rows) */
  hakd_ctx_reset(ctx);
  int64_t xs4[4] = {1, 8, 4, 4};
  hakd_tensor *x4 = gradcheck_input(&p, "x4", 4, xs4, 1.0f, 3);
  ASSERT_TRUE(hakd_conv2d(ctx, x4, w, NULL, 1, 1, 1, 1) != NULL);
  conv2d_shape small = same_3x3(8, 4, 4, 4, 1);
  ASSERT_EQ_INT(conv2d_valid_positions(&small), 10 * 10);
  ASSERT_EQ_INT(hakd_tape_executed_macs(ctx), 4 * 8 * (conv2d_dnnl_forward_is_direct(&small) ? 100 : 144));
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}
