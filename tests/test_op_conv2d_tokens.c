/* hakd_depthwise_conv2d_tokens (src/ops/conv2d_tokens.c), the depthwise convolution of
 * channels-last tokens, against the route it replaces in SegFormer's Mix-FFN: permute to NCHW,
 * hakd_conv2d with groups = C (itself checked against PyTorch in test_op_conv2d), permute back;
 * forward and all three gradients, plus finite differences and the shape errors. */
#include <stdlib.h>
#include <string.h>

#include "gradcheck.h"
#include "harness.h"
#include "rand_fill.h"
#include "hakd/ops.h"

typedef struct {
  int n, h, w, c, k, pad;
} tokens_case;

typedef struct {
  float *y, *dx, *dw, *db;
  int64_t ny, nx, nw;
  int64_t macs, executed_macs; /* the tape's counts after the forward */
} tokens_result;

static void result_free(tokens_result *r) {
  free(r->y), free(r->dx), free(r->dw), free(r->db);
  memset(r, 0, sizeof *r);
}

/* The NCHW route: permute, grouped conv2d, permute back. */
static hakd_tensor *via_nchw(hakd_ctx *ctx, hakd_tensor *x, hakd_tensor *w, hakd_tensor *b, const tokens_case *tc) {
  static const int perm[3] = {0, 2, 1};
  int64_t map[4] = {tc->n, tc->c, tc->h, tc->w};
  hakd_tensor *y = hakd_conv2d(ctx, hakd_reshape(ctx, hakd_permute(ctx, x, perm), 4, map), w, b, 1, tc->pad, 1, tc->c);
  if (!y) return NULL;
  int64_t flat[3] = {tc->n, tc->c, y->shape[2] * y->shape[3]};
  return hakd_permute(ctx, hakd_reshape(ctx, y, 3, flat), perm);
}

/* y and the three gradients of one forward + backward seeded with N(0,1) values; 0 or -1. */
static int run_case(const tokens_case *tc, int direct, tokens_result *r) {
  memset(r, 0, sizeof *r);
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[3] = {tc->n, (int64_t)tc->h * tc->w, tc->c}, ws[4] = {tc->c, 1, tc->k, tc->k}, bs[1] = {tc->c};
  hakd_tensor *x = hakd_params_add(&p, "x", 3, xs, 0), *w = hakd_params_add(&p, "w", 4, ws, 0);
  hakd_tensor *b = hakd_params_add(&p, "b", 1, bs, 0);
  hakd_ctx *ctx = hakd_ctx_new();
  int rc = -1;
  if (x && w && b && ctx) {
    fill_normal(hakd_f32(x), hakd_numel(x), 1.0f, 1);
    fill_normal(hakd_f32(w), hakd_numel(w), 0.3f, 2);
    fill_normal(hakd_f32(b), hakd_numel(b), 1.0f, 3);
    hakd_tensor *y = direct ? hakd_depthwise_conv2d_tokens(ctx, x, w, b, tc->h, tc->w, tc->pad) : via_nchw(ctx, x, w, b, tc);
    if (y) {
      r->ny = hakd_numel(y), r->nx = hakd_numel(x), r->nw = hakd_numel(w);
      float *gy = malloc((size_t)r->ny * sizeof(float));
      fill_normal(gy, r->ny, 1.0f, 4);
      r->y = copy_floats(hakd_f32(y), r->ny);
      r->macs = hakd_tape_macs(ctx), r->executed_macs = hakd_tape_executed_macs(ctx);
      if (hakd_backward_seeded(ctx, y, gy) == 0) {
        r->dx = copy_floats(x->grad, r->nx);
        r->dw = copy_floats(w->grad, r->nw);
        r->db = copy_floats(b->grad, tc->c);
        rc = 0;
      }
      free(gy);
    }
  }
  if (rc) test_fail(__FILE__, __LINE__, "%s route failed: %s", direct ? "tokens" : "NCHW", hakd_error_message());
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
  return rc;
}

static void check_case(const tokens_case *tc) {
  tokens_result want, got;
  if (run_case(tc, 0, &want)) return;
  if (run_case(tc, 1, &got)) {
    result_free(&want);
    return;
  }
  int ok = got.ny == want.ny;
  if (!ok) test_fail(__FILE__, __LINE__, "output sizes differ: %lld vs %lld", (long long)got.ny, (long long)want.ny);
  /* hakd bench and hakd info count the same multiply-adds on both routes */
  if (ok && (got.macs != want.macs || got.executed_macs != want.executed_macs)) {
    test_fail(__FILE__, __LINE__, "MACs %lld / executed %lld, NCHW route %lld / %lld", (long long)got.macs,
              (long long)got.executed_macs, (long long)want.macs, (long long)want.executed_macs);
    ok = 0;
  }
  if (ok) {
    /* the forward adds the same products in the same order as conv2d's depthwise kernel: equal
     * up to rounding (1e-6); the gradients sum in another order over at most n*h*w terms
     * (dw, db) or k*k (dx): 1e-5 of the largest value */
    double ey = test_max_rel_err(got.y, want.y, got.ny, 1e-6), ex = test_max_rel_err(got.dx, want.dx, got.nx, 1e-6);
    double ew = test_max_rel_err(got.dw, want.dw, got.nw, 1e-6), eb = test_max_rel_err(got.db, want.db, tc->c, 1e-6);
    if (!(ey <= 1e-6 && ex <= 1e-5 && ew <= 1e-5 && eb <= 1e-5))
      test_fail(__FILE__, __LINE__, "n %d, %dx%d, C %d, k %d, pad %d: errors y %.3g dx %.3g dw %.3g db %.3g", tc->n,
                tc->h, tc->w, tc->c, tc->k, tc->pad, ey, ex, ew, eb);
  }
  result_free(&want);
  result_free(&got);
}

/* SegFormer-B0's Mix-FFN shapes at a 64-128 pixel input (stage 4: 2x2-4x4 maps of 1024
 * channels), a non-square map with C not a multiple of the vector width, a valid (unpadded)
 * convolution and a kernel wider than the map. */
TEST(equals_nchw_route) {
  const tokens_case cases[] = {{2, 4, 4, 1024, 3, 1}, {2, 16, 16, 128, 3, 1}, {1, 5, 7, 40, 3, 1},
                               {2, 6, 5, 24, 3, 0},   {1, 3, 3, 17, 5, 2},    {3, 1, 1, 8, 3, 1}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0] && !test_failed(); i++) check_case(&cases[i]);
}

static hakd_tensor *build_tokens(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const tokens_case *tc = arg;
  return hakd_depthwise_conv2d_tokens(ctx, in[0], in[1], in[2], tc->h, tc->w, tc->pad);
}

TEST(gradcheck) {
  tokens_case tc = {2, 4, 3, 5, 3, 1};
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[3] = {tc.n, (int64_t)tc.h * tc.w, tc.c}, ws[4] = {tc.c, 1, tc.k, tc.k}, bs[1] = {tc.c};
  hakd_tensor *in[3] = {hakd_params_add(&p, "x", 3, xs, 0), hakd_params_add(&p, "w", 4, ws, 0),
                        hakd_params_add(&p, "b", 1, bs, 0)};
  ASSERT_TRUE(in[0] && in[1] && in[2]);
  fill_normal(hakd_f32(in[0]), hakd_numel(in[0]), 1.0f, 5);
  fill_normal(hakd_f32(in[1]), hakd_numel(in[1]), 0.5f, 6);
  fill_normal(hakd_f32(in[2]), hakd_numel(in[2]), 1.0f, 7);
  /* central differences with eps 1e-3 on float inputs: 2e-3 absolute + 1e-2 relative */
  ASSERT_TRUE(gradcheck("depthwise_conv2d_tokens", build_tokens, &tc, in, 3, 1e-3, 2e-3, 1e-2, 200));
  hakd_params_free(&p);
}

/* The op on zero tensors of these shapes in a fresh context: the output's token count, or -1
 * after an error (then *status is the context's status). */
static int64_t tokens_out(int64_t len, int64_t c, int64_t wc, int64_t wg, int64_t bc, int64_t h, int64_t w, int pad,
                          int *status) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 3, (int64_t[]){1, len, c});
  hakd_tensor *wt = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){wc, wg, 3, 3});
  hakd_tensor *b = bc ? hakd_tensor_zeros(ctx, HAKD_F32, 1, (int64_t[]){bc}) : NULL;
  hakd_tensor *y = hakd_depthwise_conv2d_tokens(ctx, x, wt, b, h, w, pad);
  int64_t tokens = y ? y->shape[1] : -1;
  *status = hakd_ctx_status(ctx);
  hakd_ctx_free(ctx);
  return tokens;
}

TEST(rejects_bad_shapes) {
  int status;
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 1, 8, 3, 4, 1, &status), 12);
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 1, 0, 3, 4, 0, &status), 2); /* unpadded: 1x2 outputs */
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 1, 0, 3, 5, 1, &status), -1); /* 15 tokens wanted */
  ASSERT_EQ_INT(status, HAKD_ESHAPE);
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 2, 0, 3, 4, 1, &status), -1); /* not depthwise */
  ASSERT_EQ_INT(status, HAKD_ESHAPE);
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 1, 7, 3, 4, 1, &status), -1); /* bias length */
  ASSERT_EQ_INT(status, HAKD_ESHAPE);
  ASSERT_EQ_INT(tokens_out(4, 8, 8, 1, 0, 2, 2, 0, &status), -1); /* 3x3 on 2x2 unpadded */
  ASSERT_EQ_INT(status, HAKD_ESHAPE);
  ASSERT_EQ_INT(tokens_out(12, 8, 8, 1, 0, 3, 4, -1, &status), -1); /* negative padding */
  ASSERT_EQ_INT(status, HAKD_ESHAPE);
}
