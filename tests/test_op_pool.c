/* maxpool2d, avgpool2d and adaptive_avgpool2d against PyTorch (tools/gen_ops_conv.py) and finite
 * differences. */
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "op_fixture.h"
#include "hakd/io.h"
#include "hakd/ops.h"

/* Max pooling copies values (exact); averages sum at most 35 values and divide, where the
 * summation order may differ from PyTorch's by a few ulps (~3e-7 of the largest value); 1e-6
 * still fails on any wrong window, divisor or bin (errors O(0.1)). */
#define POOL_TOL 1e-6

static hakd_tensor *run_pool(hakd_ctx *ctx, const char *c, hakd_tensor *x, const int64_t *prm) {
  if (strncmp(c, "max", 3) == 0) return hakd_maxpool2d(ctx, x, (int)prm[0], (int)prm[1], (int)prm[2]);
  if (strncmp(c, "avg", 3) == 0) return hakd_avgpool2d(ctx, x, (int)prm[0], (int)prm[1], (int)prm[2]);
  return hakd_adaptive_avgpool2d(ctx, x, prm[0], prm[1]);
}

/* Every fixture case whose name starts with `kind`: output and input gradient. */
static void check_cases(const char *kind) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("ops/pool.safetensors"), &f));
  char cases[OP_FIXTURE_MAX_CASES][48];
  int n_cases = op_fixture_cases(f, "cases", cases, OP_FIXTURE_MAX_CASES), checked = 0;
  for (int i = 0; i < n_cases && !test_failed(); i++) {
    const char *c = cases[i];
    if (strncmp(c, kind, strlen(kind)) != 0) continue;
    int64_t prm[3];
    if (!op_fixture_ints(f, c, prm, 3)) break;
    hakd_params p;
    hakd_params_init(&p);
    hakd_tensor *x = op_fixture_param(&p, f, c, "x", 0);
    int64_t ngy = 0;
    float *gy = op_fixture_floats(f, c, "gy", &ngy);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *y = x ? run_pool(ctx, c, x, prm) : NULL;
    double tol = kind[0] == 'm' ? 0.0 : POOL_TOL;
    if (!y) test_fail(__FILE__, __LINE__, "%s: pooling failed: %s", c, hakd_error_message());
    int ok = y && gy && ngy == hakd_numel(y) && op_fixture_check(f, c, "y", hakd_f32(y), hakd_numel(y), tol);
    if (ok && hakd_backward_seeded(ctx, y, gy) != 0) {
      test_fail(__FILE__, __LINE__, "%s: backward failed: %s", c, hakd_error_message());
      ok = 0;
    }
    /* overlapping windows sum several gradients per input: a few ulps even for max */
    ok = ok && op_fixture_check(f, c, "gx", x->grad, hakd_numel(x), POOL_TOL);
    checked += ok;
    free(gy);
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
  }
  ASSERT_TRUE(checked >= 3);
  hakd_st_close(f);
}

TEST(maxpool_matches_torch) { check_cases("max"); }
TEST(avgpool_count_include_pad_matches_torch) { check_cases("avg"); }
/* out sizes 1, 2, 3, 6 from 7x10 (non-divisible), 5 -> 6 (bins overlap), 6x6 -> 3x2 */
TEST(adaptive_avgpool_matches_torch) { check_cases("adaptive"); }

/* Ties go to the first maximum in scan order (PyTorch's CPU kernel), so its gradient lands there;
 * a NaN in a window propagates. */
TEST(maxpool_ties_and_nan) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {1, 1, 2, 4};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, 0);
  const float v[8] = {1, 3, 3, 2, 3, 0, NAN, 5};
  memcpy(hakd_f32(x), v, sizeof v);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *y = hakd_maxpool2d(ctx, x, 2, 2, 0);
  ASSERT_TRUE(y != NULL);
  ASSERT_NEAR(hakd_f32(y)[0], 3.0f, 0);
  ASSERT_TRUE(isnan(hakd_f32(y)[1]));
  ASSERT_OK(hakd_backward(ctx, y));
  const float want[8] = {0, 1, 0, 0, 0, 0, 1, 0};
  for (int i = 0; i < 8; i++) ASSERT_NEAR(x->grad[i], want[i], 0);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* ---- finite differences ---- */

typedef struct {
  int kind; /* 0 max, 1 avg, 2 adaptive */
  int a, b, c;
} pool_arg;

static hakd_tensor *build_pool(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const pool_arg *p = arg;
  if (p->kind == 0) return hakd_maxpool2d(ctx, in[0], p->a, p->b, p->c);
  if (p->kind == 1) return hakd_avgpool2d(ctx, in[0], p->a, p->b, p->c);
  return hakd_adaptive_avgpool2d(ctx, in[0], p->a, p->b);
}

/* Average pools are linear (central differences exact up to fp32 rounding, ~1e-5 with eps 0.01);
 * max pooling is piecewise linear and, with distinct N(0,1) inputs, eps 0.01 rarely crosses a
 * switch (a gap under 2 eps between a window's top two values): the fixed seed avoids it, and a
 * wrong argmax gives O(1) errors. atol 2e-4 + rtol 1e-3. */
TEST(gradcheck_pools) {
  const pool_arg cases[] = {{0, 3, 2, 1}, {0, 2, 2, 0}, {1, 3, 2, 1}, {1, 2, 1, 0}, {2, 3, 2, 0}, {2, 6, 6, 0}};
  for (size_t t = 0; t < sizeof cases / sizeof cases[0] && !test_failed(); t++) {
    hakd_params p;
    hakd_params_init(&p);
    int64_t xs[4] = {2, 2, 5, 7};
    hakd_tensor *x = gradcheck_input(&p, "x", 4, xs, 1.0f, 40 + t);
    char what[64];
    snprintf(what, sizeof what, "pool kind %d (%d, %d, %d)", cases[t].kind, cases[t].a, cases[t].b, cases[t].c);
    gradcheck(what, build_pool, (void *)&cases[t], &x, 1, 0.01, 2e-4, 1e-3, 140);
    hakd_params_free(&p);
  }
}

TEST(rejects_bad_windows) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[4] = {1, 1, 4, 4};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_maxpool2d(ctx, x, 2, 2, 2) == NULL); /* padding > kernel / 2 */
  ASSERT_TRUE(strstr(hakd_error_message(), "padding 2 out of range") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_avgpool2d(ctx, x, 5, 1, 0) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "larger than padded input") != NULL);
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 4, xs);
  ASSERT_TRUE(hakd_adaptive_avgpool2d(ctx, x, 0, 2) == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "must be positive") != NULL);
  hakd_ctx_free(ctx);
}

/* The blocked bfloat16 layout's inference ops (bf16 precision, HAKD_BF16_BLOCKED): max pooling
 * (oneDNN's primitive, with PyTorch's floor-mode output size on an odd map), global average
 * pooling, concatenation along channels and dropout outside training keep the layout and match the
 * float32 ops on the same bfloat16-rounded values: max pooling and concatenation copy values
 * (exact); the average is stored as bfloat16 (2^-9 relative of each value: 4e-3 of max|ref|
 * bounds it). 40 channels leave the last block of 16 padded; an input that is not whole blocks
 * before the last is concatenated through float32. */
TEST(blocked_bf16_pool_concat_match_float32) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  hakd_tensor *x = hakd_tensor4(ctx, 2, 40, 11, 9), *x2 = hakd_tensor4(ctx, 2, 32, 11, 9);
  ASSERT_TRUE(x && x2);
  uint64_t rng = hakd_rng_seed(3);
  for (int64_t i = 0; i < hakd_numel(x); i++) hakd_f32(x)[i] = hakd_rng_normal(&rng);
  for (int64_t i = 0; i < hakd_numel(x2); i++) hakd_f32(x2)[i] = hakd_rng_normal(&rng);
  hakd_tensor *xb = hakd_to_bf16_blocked(ctx, x), *x2b = hakd_to_bf16_blocked(ctx, x2);
  if (!hakd_bf16_supported()) { /* refused with the reason where bf16 cannot run */
    ASSERT_TRUE(xb == NULL && hakd_ctx_status(ctx) == HAKD_EUNSUPPORTED && strstr(hakd_error_message(), "AVX512-BF16"));
    hakd_ctx_free(ctx);
    return;
  }
  ASSERT_TRUE(xb && x2b);
  hakd_tensor *xr = hakd_to_f32(ctx, xb), *x2r = hakd_to_f32(ctx, x2b); /* the rounded values */
  hakd_tensor *got[3], *want[3];
  got[0] = hakd_maxpool2d(ctx, xb, 3, 2, 1);
  want[0] = hakd_maxpool2d(ctx, xr, 3, 2, 1);
  got[1] = hakd_adaptive_avgpool2d(ctx, xb, 1, 1);
  want[1] = hakd_adaptive_avgpool2d(ctx, xr, 1, 1);
  hakd_tensor *parts_b[2] = {x2b, xb}, *parts_f[2] = {x2r, xr};
  got[2] = hakd_concat(ctx, 2, parts_b, 1);
  want[2] = hakd_concat(ctx, 2, parts_f, 1);
  ASSERT_TRUE(hakd_dropout(ctx, xb, 0.5f) == xb); /* identity outside training */
  for (int i = 0; i < 3; i++) {
    ASSERT_TRUE(got[i] && want[i] && got[i]->dtype == HAKD_BF16_BLOCKED);
    hakd_tensor *g = hakd_to_f32(ctx, got[i]);
    ASSERT_TRUE(g && hakd_same_shape(g, want[i]));
    double err = test_max_rel_err(hakd_f32(g), hakd_f32(want[i]), hakd_numel(g), 1e-6);
    ASSERT_TRUE(i == 1 ? err <= 4e-3 : err == 0.0);
  }
  ASSERT_EQ_INT(got[0]->shape[2], 6);
  ASSERT_EQ_INT(got[0]->shape[3], 5);
  /* 40 channels first, not whole blocks of 16: joined through float32, still exact */
  hakd_tensor *odd_b[2] = {xb, x2b}, *odd_f[2] = {xr, x2r};
  hakd_tensor *odd = hakd_concat(ctx, 2, odd_b, 1), *odd_want = hakd_concat(ctx, 2, odd_f, 1);
  ASSERT_TRUE(odd && odd->dtype == HAKD_BF16_BLOCKED && odd_want);
  hakd_tensor *odd_got = hakd_to_f32(ctx, odd);
  ASSERT_TRUE(odd_got && test_max_rel_err(hakd_f32(odd_got), hakd_f32(odd_want), hakd_numel(odd_want), 1e-6) == 0.0);
  hakd_ctx_free(ctx);
}
