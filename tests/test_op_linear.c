/* linear and matmul against PyTorch (tools/gen_ops_basic.py), finite differences, a batched case
 * large enough for the threaded batch loop, and shape errors. */
#include "bf16.h"
#include "gradcheck.h"
#include "op_golden.h"

#define LINEAR_FIXTURE "ops/linear.safetensors"
#define MATMUL_FIXTURE "ops/matmul.safetensors"
/* Dot products of at most 6 terms (and gradient sums of at most 24): sgemm's blocking changes
 * the summation order relative to PyTorch, a few ulps; 1e-5 normalised error is ample. */
#define TOL 1e-5

static hakd_tensor *build_linear(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  (void)args;
  return hakd_linear(ctx, in[0], in[1], in[2]);
}
/* params: transpose_a, transpose_b */
static hakd_tensor *build_matmul(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_matmul(ctx, in[0], in[1], (int)args->params[0], (int)args->params[1]);
}

TEST(linear_3d_input_with_bias_matches_torch) { golden_run(LINEAR_FIXTURE, "bias_3d", "x w b", build_linear, TOL); }
TEST(linear_without_bias_matches_torch) { golden_run(LINEAR_FIXTURE, "nobias_2d", "x w", build_linear, TOL); }

TEST(matmul_batched_matches_torch) { golden_run(MATMUL_FIXTURE, "batched", "a b", build_matmul, TOL); }
TEST(matmul_transpose_a_matches_torch) { golden_run(MATMUL_FIXTURE, "trans_a", "a b", build_matmul, TOL); }
TEST(matmul_transpose_b_matches_torch) { golden_run(MATMUL_FIXTURE, "trans_b", "a b", build_matmul, TOL); }
TEST(matmul_transpose_both_matches_torch) { golden_run(MATMUL_FIXTURE, "trans_ab", "a b", build_matmul, TOL); }
TEST(matmul_shared_b_matches_torch) { golden_run(MATMUL_FIXTURE, "shared_b", "a b", build_matmul, TOL); }
TEST(matmul_shared_b_transpose_a_matches_torch) {
  golden_run(MATMUL_FIXTURE, "shared_b_trans_a", "a b", build_matmul, TOL);
}
TEST(matmul_shared_b_transpose_b_matches_torch) {
  golden_run(MATMUL_FIXTURE, "shared_b_trans_b", "a b", build_matmul, TOL);
}
TEST(matmul_2d_matches_torch) { golden_run(MATMUL_FIXTURE, "plain_2d", "a b", build_matmul, TOL); }

/* Both ops are bilinear: central differences are exact up to float rounding of L, so eps 1e-2
 * with atol/rtol 1e-3 as for the elementwise ops. */
static hakd_tensor *gc_linear(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  (void)arg;
  return hakd_linear(ctx, in[0], in[1], in[2]);
}

TEST(linear_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[3] = {2, 3, 7}, ws[2] = {4, 7}, bs[1] = {4};
  hakd_tensor *in[3] = {gradcheck_input(&p, "x", 3, xs, 1.0f, 11), gradcheck_input(&p, "w", 2, ws, 1.0f, 12),
                        gradcheck_input(&p, "b", 1, bs, 1.0f, 13)};
  gradcheck("linear", gc_linear, NULL, in, 3, 1e-2, 1e-3, 1e-3, 100);
  hakd_params_free(&p);
}

typedef struct {
  int ta, tb;
  float alpha;
} matmul_flags;

static hakd_tensor *gc_matmul(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  const matmul_flags *f = arg;
  return f->alpha == 1.0f ? hakd_matmul(ctx, in[0], in[1], f->ta, f->tb)
                          : hakd_matmul_scaled(ctx, in[0], in[1], f->ta, f->tb, f->alpha);
}

/* Finite differences on every transpose, shared b (shared 1) or a (shared 2), and a scale inside
 * the product. */
TEST(matmul_gradcheck_all_transposes) {
  for (int shared = 0; shared < 3; shared++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        hakd_params p;
        hakd_params_init(&p);
        int64_t as[3] = {3, ta ? 5 : 4, ta ? 4 : 5}, bs[3] = {3, tb ? 6 : 5, tb ? 5 : 6};
        hakd_tensor *in[2] = {shared == 2 ? gradcheck_input(&p, "a", 2, as + 1, 1.0f, 21)
                                          : gradcheck_input(&p, "a", 3, as, 1.0f, 21),
                              shared == 1 ? gradcheck_input(&p, "b", 2, bs + 1, 1.0f, 22)
                                          : gradcheck_input(&p, "b", 3, bs, 1.0f, 22)};
        matmul_flags f = {ta, tb, tb ? 0.37f : 1.0f}; /* scaled products (attention) with tb */
        char what[80];
        snprintf(what, sizeof what, "matmul shared=%d ta=%d tb=%d alpha=%g", shared, ta, tb, (double)f.alpha);
        gradcheck(what, gc_matmul, &f, in, 2, 1e-2, 1e-3, 1e-3, 60);
        hakd_params_free(&p);
      }
}

/* Attention-shaped batch (64 small matrices: the OpenMP batch loop) against a naive double
 * reference, forward and both gradients (L = sum(y), so dA = 1 B^T, dB = A^T 1). */
TEST(matmul_many_small_batches_match_naive) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  enum { B = 64, M = 9, K = 8, N = 7 };
  int64_t as[3] = {B, M, K}, bs[3] = {B, N, K}; /* b transposed, as q k^T */
  hakd_tensor *a = gradcheck_input(&p, "a", 3, as, 1.0f, 31), *b = gradcheck_input(&p, "b", 3, bs, 1.0f, 32);
  hakd_tensor *y = hakd_matmul(ctx, a, b, 0, 1);
  ASSERT_TRUE(y != NULL);
  ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, y)));
  static float want_y[B * M * N], want_da[B * M * K], want_db[B * N * K];
  const float *av = hakd_f32(a), *bv = hakd_f32(b);
  for (int i = 0; i < B; i++) {
    for (int m = 0; m < M; m++)
      for (int n = 0; n < N; n++) {
        double acc = 0;
        for (int k = 0; k < K; k++) acc += (double)av[(i * M + m) * K + k] * bv[(i * N + n) * K + k];
        want_y[(i * M + m) * N + n] = (float)acc;
      }
    for (int k = 0; k < K; k++) {
      for (int m = 0; m < M; m++) {
        double acc = 0;
        for (int n = 0; n < N; n++) acc += bv[(i * N + n) * K + k];
        want_da[(i * M + m) * K + k] = (float)acc;
      }
      for (int n = 0; n < N; n++) {
        double acc = 0;
        for (int m = 0; m < M; m++) acc += av[(i * M + m) * K + k];
        want_db[(i * N + n) * K + k] = (float)acc;
      }
    }
  }
  /* sums of <= 9 products in float vs double: a few ulps */
  ASSERT_ALLCLOSE(hakd_f32(y), want_y, B * M * N, 1e-5);
  ASSERT_ALLCLOSE(a->grad, want_da, B * M * K, 1e-5);
  ASSERT_ALLCLOSE(b->grad, want_db, B * N * K, 1e-5);
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

TEST(shape_mismatch_is_an_error_naming_op_and_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t xs[3] = {2, 3, 5}, ws[2] = {4, 6}, bs[1] = {3};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 3, xs), *w = hakd_tensor_zeros(ctx, HAKD_F32, 2, ws);
  const char *linear_msg[] = {"linear", "(2, 3, 5)", "(4, 6)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_linear(ctx, x, w, NULL), HAKD_ESHAPE, linear_msg));
  hakd_ctx_reset(ctx);
  int64_t ws_ok[2] = {4, 5};
  x = hakd_tensor_zeros(ctx, HAKD_F32, 3, xs);
  w = hakd_tensor_zeros(ctx, HAKD_F32, 2, ws_ok);
  hakd_tensor *b = hakd_tensor_zeros(ctx, HAKD_F32, 1, bs);
  const char *bias_msg[] = {"linear", "bias (3)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_linear(ctx, x, w, b), HAKD_ESHAPE, bias_msg));
  hakd_ctx_reset(ctx);
  int64_t as[3] = {2, 4, 5}, bm[3] = {2, 4, 6}, bo[3] = {3, 5, 6};
  hakd_tensor *a = hakd_tensor_zeros(ctx, HAKD_F32, 3, as), *m = hakd_tensor_zeros(ctx, HAKD_F32, 3, bm);
  const char *inner_msg[] = {"matmul", "(2, 4, 5)", "(2, 4, 6)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_matmul(ctx, a, m, 0, 0), HAKD_ESHAPE, inner_msg));
  hakd_ctx_reset(ctx);
  a = hakd_tensor_zeros(ctx, HAKD_F32, 3, as);
  m = hakd_tensor_zeros(ctx, HAKD_F32, 3, bo);
  const char *batch_msg[] = {"matmul", "(2, 4, 5)", "(3, 5, 6)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_matmul(ctx, a, m, 0, 0), HAKD_ESHAPE, batch_msg));
  hakd_ctx_free(ctx);
}

/* Element (r, c) of op(M_i) for a row-major batch of matrices stored (rows, cols), or transposed. */
static double op_at(const float *v, int64_t i, int64_t stride, int trans, int64_t rows, int64_t cols, int64_t r,
                    int64_t c) {
  return trans ? v[i * stride + c * rows + r] : v[i * stride + r * cols + c];
}

static double max_rel_err(const float *got, const double *want, int64_t n) {
  double max_ref = 1e-6, max_diff = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)got[i] - want[i]);
    if (!(d <= max_diff)) max_diff = d;
    if (fabs(want[i]) > max_ref) max_ref = fabs(want[i]);
  }
  return max_diff / max_ref;
}

/* bf16 precision: products of bfloat16-rounded operands (a, b and the incoming gradient) summed
 * in float32, so the results equal a double reference on the rounded operands to float32
 * accumulation accuracy (sums of <= 96 products: 1e-5), while the forward differs from the
 * unrounded reference by the rounding (relative 2^-9 per operand: > 1e-4 here). Every transpose,
 * a shared b and a scale inside the product; then linear with its bias. */
TEST(bf16_products_read_rounded_operands) {
  enum { B = 3, M = 7, K = 96, N = 9 };
  for (int shared = 0; shared < 2; shared++)
    for (int ta = 0; ta < 2; ta++)
      for (int tb = 0; tb < 2; tb++) {
        hakd_params p;
        hakd_params_init(&p);
        int64_t as[3] = {B, ta ? K : M, ta ? M : K}, bs[3] = {B, tb ? N : K, tb ? K : N};
        hakd_tensor *a = gradcheck_input(&p, "a", 3, as, 1.0f, 41);
        hakd_tensor *b = gradcheck_input(&p, "b", shared ? 2 : 3, shared ? bs + 1 : bs, 1.0f, 42);
        hakd_ctx *ctx = hakd_ctx_new();
        hakd_ctx_set_precision(ctx, HAKD_BF16);
        float alpha = 0.37f;
        hakd_tensor *y = hakd_matmul_scaled(ctx, a, b, ta, tb, alpha);
        if (bf16_refused(ctx, y, "matmul")) {
          hakd_ctx_free(ctx);
          hakd_params_free(&p);
          continue;
        }
        ASSERT_TRUE(y != NULL);
        float gy[B * M * N], ar[B * M * K], br[B * K * N], gyr[B * M * N];
        uint64_t rng = hakd_rng_seed(43);
        for (int i = 0; i < B * M * N; i++) gyr[i] = round_bf16(gy[i] = hakd_rng_normal(&rng));
        ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
        for (int i = 0; i < B * M * K; i++) ar[i] = round_bf16(hakd_f32(a)[i]);
        int64_t nb = hakd_numel(b), sb = shared ? 0 : K * N;
        for (int64_t i = 0; i < nb; i++) br[i] = round_bf16(hakd_f32(b)[i]);
        static double want_y[B * M * N], plain_y[B * M * N], want_da[B * M * K], want_db[B * K * N];
        memset(want_da, 0, sizeof want_da);
        memset(want_db, 0, sizeof want_db);
        for (int i = 0; i < B; i++)
          for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
              double acc = 0, plain = 0, g = gyr[(i * M + m) * N + n];
              for (int k = 0; k < K; k++) {
                double av = op_at(ar, i, M * K, ta, M, K, m, k), bv = op_at(br, i, sb, tb, K, N, k, n);
                acc += av * bv;
                plain += op_at(hakd_f32(a), i, M * K, ta, M, K, m, k) * op_at(hakd_f32(b), i, sb, tb, K, N, k, n);
                /* gradients land where the operand is stored (transposed or not) */
                want_da[ta ? i * M * K + k * M + m : i * M * K + m * K + k] += alpha * g * bv;
                want_db[tb ? i * sb + n * K + k : i * sb + k * N + n] += alpha * g * av;
              }
              want_y[(i * M + m) * N + n] = alpha * acc;
              plain_y[(i * M + m) * N + n] = alpha * plain;
            }
        double ey = max_rel_err(hakd_f32(y), want_y, B * M * N), eda = max_rel_err(a->grad, want_da, B * M * K);
        double edb = max_rel_err(b->grad, want_db, nb), eplain = max_rel_err(hakd_f32(y), plain_y, B * M * N);
        if (!(ey <= 1e-5 && eda <= 1e-5 && edb <= 1e-5 && eplain > 1e-4))
          test_fail(__FILE__, __LINE__, "shared %d ta %d tb %d: rel err y %.3g da %.3g db %.3g, vs fp32 %.3g", shared,
                    ta, tb, ey, eda, edb, eplain);
        hakd_ctx_free(ctx);
        hakd_params_free(&p);
      }
  /* linear: y = x w^T + b with x (2, 5, 64), w (12, 64); the bias gradient sums dy unrounded */
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[3] = {2, 5, 64}, ws[2] = {12, 64}, bs[1] = {12};
  hakd_tensor *x = gradcheck_input(&p, "x", 3, xs, 1.0f, 51), *w = gradcheck_input(&p, "w", 2, ws, 1.0f, 52);
  hakd_tensor *bias = gradcheck_input(&p, "bias", 1, bs, 1.0f, 53);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_precision(ctx, HAKD_BF16);
  hakd_tensor *y = hakd_linear(ctx, x, w, bias);
  if (bf16_refused(ctx, y, "linear")) {
    hakd_ctx_free(ctx);
    hakd_params_free(&p);
    return;
  }
  ASSERT_TRUE(y != NULL);
  float gy[10 * 12];
  uint64_t rng = hakd_rng_seed(54);
  for (int i = 0; i < 120; i++) gy[i] = hakd_rng_normal(&rng);
  ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
  static double want_y[120], want_dx[640], want_dw[768], want_db[12];
  memset(want_dx, 0, sizeof want_dx);
  memset(want_dw, 0, sizeof want_dw);
  memset(want_db, 0, sizeof want_db);
  for (int r = 0; r < 10; r++)
    for (int o = 0; o < 12; o++) {
      double acc = hakd_f32(bias)[o], g = round_bf16(gy[r * 12 + o]);
      want_db[o] += gy[r * 12 + o];
      for (int i = 0; i < 64; i++) {
        double xv = round_bf16(hakd_f32(x)[r * 64 + i]), wv = round_bf16(hakd_f32(w)[o * 64 + i]);
        acc += xv * wv;
        want_dx[r * 64 + i] += g * wv;
        want_dw[o * 64 + i] += g * xv;
      }
      want_y[r * 12 + o] = acc;
    }
  double ey = max_rel_err(hakd_f32(y), want_y, 120), edx = max_rel_err(x->grad, want_dx, 640);
  double edw = max_rel_err(w->grad, want_dw, 768), edb = max_rel_err(bias->grad, want_db, 12);
  if (!(ey <= 1e-5 && edx <= 1e-5 && edw <= 1e-5 && edb <= 1e-5))
    test_fail(__FILE__, __LINE__, "linear: rel err y %.3g dx %.3g dw %.3g db %.3g", ey, edx, edw, edb);
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
}

/* A 2-D a shared by b's batch (SegFormer's folded decode head: one (D, C) matrix times every
 * image's (C, HW) map) equals the product with a copied for every batch item, in float32 and in
 * bf16, forward and both gradients (the shared a's gradient is the copies' summed). Both sides
 * round the same operands and accumulate in float32; the bound 1e-5 (relative to the largest
 * entry) leaves room for a different summation order only. */
TEST(matmul_shared_a_equals_copied_a) {
  enum { B = 3, M = 6, K = 40, N = 11 };
  for (int bf16 = 0; bf16 < 2; bf16++) {
    hakd_params p;
    hakd_params_init(&p);
    int64_t as[2] = {M, K}, ab[3] = {B, M, K}, bs[3] = {B, K, N};
    hakd_tensor *a = gradcheck_input(&p, "a", 2, as, 1.0f, 61), *b = gradcheck_input(&p, "b", 3, bs, 1.0f, 62);
    hakd_tensor *copies = gradcheck_input(&p, "copies", 3, ab, 1.0f, 63);
    hakd_tensor *b2 = gradcheck_input(&p, "b2", 3, bs, 1.0f, 64);
    for (int i = 0; i < B; i++) memcpy(hakd_f32(copies) + i * M * K, hakd_f32(a), sizeof(float) * M * K);
    memcpy(hakd_f32(b2), hakd_f32(b), sizeof(float) * B * K * N);
    hakd_ctx *ctx = hakd_ctx_new(), *ctx2 = hakd_ctx_new(); /* one backward per tape */
    if (bf16) hakd_ctx_set_precision(ctx, HAKD_BF16), hakd_ctx_set_precision(ctx2, HAKD_BF16);
    hakd_tensor *y = hakd_matmul(ctx, a, b, 0, 0), *want = hakd_matmul(ctx2, copies, b2, 0, 0);
    if (bf16 && bf16_refused(ctx, y, "matmul")) {
      hakd_ctx_free(ctx);
      hakd_ctx_free(ctx2);
      hakd_params_free(&p);
      continue;
    }
    ASSERT_TRUE(y && want && y->ndim == 3 && y->shape[0] == B && y->shape[1] == M && y->shape[2] == N);
    float gy[B * M * N];
    uint64_t rng = hakd_rng_seed(65);
    for (int i = 0; i < B * M * N; i++) gy[i] = hakd_rng_normal(&rng);
    ASSERT_OK(hakd_backward_seeded(ctx, y, gy));
    ASSERT_OK(hakd_backward_seeded(ctx2, want, gy));
    float da[M * K];
    memset(da, 0, sizeof da);
    for (int i = 0; i < B; i++)
      for (int j = 0; j < M * K; j++) da[j] += copies->grad[i * M * K + j];
    ASSERT_ALLCLOSE(hakd_f32(y), hakd_f32(want), B * M * N, 1e-5);
    ASSERT_ALLCLOSE(a->grad, da, M * K, 1e-5);
    ASSERT_ALLCLOSE(b->grad, b2->grad, B * K * N, 1e-5);
    hakd_ctx_free(ctx);
    hakd_ctx_free(ctx2);
    hakd_params_free(&p);
  }
}
