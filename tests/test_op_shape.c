/* reshape / flatten / permute / concat / slice against PyTorch (tools/gen_ops_basic.py), finite
 * differences, views sharing data, int32 tensors, and errors. */
#include "gradcheck.h"
#include "op_golden.h"

#define FIXTURE "ops/shape.safetensors"
/* Pure data movement: values and gradients must be bit-exact (tolerance 0), except that a
 * gradient may be the sum of two contributions -- not the case in these fixtures. */
#define EXACT 0.0

/* params: the permutation */
static hakd_tensor *build_permute(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  int perm[HAKD_MAX_DIMS];
  for (int i = 0; i < args->n_params; i++) perm[i] = (int)args->params[i];
  return hakd_permute(ctx, in[0], perm);
}
/* params: dim; inputs x0.. (as many as the build is given) */
static hakd_tensor *build_concat2(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_concat(ctx, 2, in, (int)args->params[0]);
}
static hakd_tensor *build_concat3(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_concat(ctx, 3, in, (int)args->params[0]);
}
/* params: dim, start, length */
static hakd_tensor *build_slice(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_slice(ctx, in[0], (int)args->params[0], args->params[1], args->params[2]);
}
/* params: the new shape */
static hakd_tensor *build_reshape(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_reshape(ctx, in[0], args->n_params, args->params);
}
/* params: start_dim, end_dim */
static hakd_tensor *build_flatten(hakd_ctx *ctx, hakd_tensor **in, const golden_args *args) {
  return hakd_flatten(ctx, in[0], (int)args->params[0], (int)args->params[1]);
}

TEST(permute_nchw_to_nhwc_matches_torch) { golden_run(FIXTURE, "permute_0231", "x", build_permute, EXACT); }
TEST(permute_nhwc_to_nchw_matches_torch) { golden_run(FIXTURE, "permute_0312", "x", build_permute, EXACT); }
TEST(permute_swap_middle_matches_torch) { golden_run(FIXTURE, "permute_0213", "x", build_permute, EXACT); }
TEST(permute_5d_matches_torch) { golden_run(FIXTURE, "permute_5d", "x", build_permute, EXACT); }
TEST(permute_6d_matches_torch) { golden_run(FIXTURE, "permute_6d", "x", build_permute, EXACT); }
TEST(concat_dim1_matches_torch) { golden_run(FIXTURE, "concat_dim1", "x0 x1 x2", build_concat3, EXACT); }
TEST(concat_last_dim_matches_torch) { golden_run(FIXTURE, "concat_dimlast", "x0 x1", build_concat2, EXACT); }
TEST(concat_dim0_matches_torch) { golden_run(FIXTURE, "concat_dim0", "x0 x1", build_concat2, EXACT); }
TEST(slice_dim1_matches_torch) { golden_run(FIXTURE, "slice_dim1", "x", build_slice, EXACT); }
TEST(slice_negative_start_matches_torch) {
  golden_run(FIXTURE, "slice_dimlast_negative_start", "x", build_slice, EXACT);
}
TEST(slice_dim0_matches_torch) { golden_run(FIXTURE, "slice_dim0", "x", build_slice, EXACT); }
TEST(reshape_inferred_dim_matches_torch) { golden_run(FIXTURE, "reshape_infer", "x", build_reshape, EXACT); }
TEST(flatten_matches_torch) { golden_run(FIXTURE, "flatten_1_2", "x", build_flatten, EXACT); }

/* Each op is linear (a selection), and each is composed with a multiplication by a fixed tensor
 * so the gradient pattern is not uniform: eps 1e-2, atol/rtol 1e-3 as for the elementwise ops. */
static hakd_tensor *gc_shape(hakd_ctx *ctx, hakd_tensor **in, void *arg) {
  static const int perm[4] = {0, 2, 3, 1};
  hakd_tensor *y;
  switch (*(const int *)arg) {
    case 0: y = hakd_permute(ctx, in[0], perm); break;
    case 1: y = hakd_concat(ctx, 2, in, 1); break;
    case 2: y = hakd_slice(ctx, in[0], 2, 1, 2); break;
    default: {
      int64_t shape[2] = {6, -1};
      y = hakd_reshape(ctx, in[0], 2, shape);
    }
  }
  return hakd_mul(ctx, y, y); /* squares: a gradient that depends on the position */
}

TEST(shape_ops_gradcheck) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {2, 3, 4, 2}, ys[4] = {2, 2, 4, 2};
  hakd_tensor *in[2] = {gradcheck_input(&p, "x", 4, xs, 1.0f, 41), gradcheck_input(&p, "y", 4, ys, 1.0f, 42)};
  const char *what[] = {"permute", "concat", "slice", "reshape"};
  /* y^2 has a constant second derivative: central differences remain exact up to rounding. */
  for (int kind = 0; kind < 4; kind++)
    gradcheck(what[kind], gc_shape, &kind, in, kind == 1 ? 2 : 1, 1e-2, 1e-3, 1e-3, 100);
  hakd_params_free(&p);
}

/* Larger permutes (OpenMP, blocked transpose across tile edges) against a naive index map,
 * forward and backward (gradient of sum(y * w) is w permuted back). */
TEST(large_permutes_match_naive_index_map) {
  static const int perms[3][4] = {{0, 2, 3, 1}, {0, 3, 1, 2}, {3, 1, 0, 2}};
  int64_t shape[4] = {2, 37, 21, 45};
  for (int t = 0; t < 3; t++) {
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_params p;
    hakd_params_init(&p);
    hakd_tensor *x = hakd_params_add(&p, "x", 4, shape, 0);
    int64_t n = hakd_numel(x);
    for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = (float)i;
    hakd_tensor *y = hakd_permute(ctx, x, perms[t]);
    ASSERT_TRUE(y != NULL);
    hakd_tensor *w = hakd_tensor_new(ctx, HAKD_F32, 4, y->shape);
    for (int64_t i = 0; i < n; i++) hakd_f32(w)[i] = (float)(i % 977);
    ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, hakd_mul(ctx, y, w))));
    int64_t stride[4] = {shape[1] * shape[2] * shape[3], shape[2] * shape[3], shape[3], 1};
    int64_t i = 0, idx[4];
    for (idx[0] = 0; idx[0] < y->shape[0]; idx[0]++)
      for (idx[1] = 0; idx[1] < y->shape[1]; idx[1]++)
        for (idx[2] = 0; idx[2] < y->shape[2]; idx[2]++)
          for (idx[3] = 0; idx[3] < y->shape[3]; idx[3]++, i++) {
            int64_t src = 0;
            for (int d = 0; d < 4; d++) src += idx[d] * stride[perms[t][d]];
            if (hakd_f32(y)[i] != (float)src) ASSERT_NEAR(hakd_f32(y)[i], (float)src, 0);
            if (x->grad[src] != (float)(i % 977)) ASSERT_NEAR(x->grad[src], (float)(i % 977), 0);
          }
    hakd_params_free(&p);
    hakd_ctx_free(ctx);
  }
}

/* Transposes of 16 MiB and more are written with non-temporal stores: a row count that keeps the
 * destination rows 64-byte aligned (64) and one that does not (40, the fallback stores), float
 * and int32, against the index map. */
TEST(large_streamed_transposes_match_index_map) {
  const int64_t shapes[2][3] = {{2, 64, 32800}, {2, 40, 52429}}; /* >= 4 Mi elements each */
  static const int perm[3] = {0, 2, 1};
  for (int t = 0; t < 2; t++)
    for (int as_int = 0; as_int < 2; as_int++) {
      hakd_ctx *ctx = hakd_ctx_new();
      hakd_tensor *x = hakd_tensor_new(ctx, as_int ? HAKD_I32 : HAKD_F32, 3, shapes[t]);
      ASSERT_TRUE(x != NULL);
      int64_t rows = shapes[t][1], cols = shapes[t][2], n = hakd_numel(x), wrong = 0;
      for (int64_t i = 0; i < n; i++) {
        if (as_int) hakd_i32(x)[i] = (int32_t)i;
        else hakd_f32(x)[i] = (float)(i % 1000003);
      }
      hakd_tensor *y = hakd_permute(ctx, x, perm);
      ASSERT_TRUE(y != NULL);
      for (int64_t b = 0; b < 2; b++)
        for (int64_t c = 0; c < cols; c++)
          for (int64_t r = 0; r < rows; r++) {
            int64_t src = (b * rows + r) * cols + c, dst = (b * cols + c) * rows + r;
            wrong += as_int ? hakd_i32(y)[dst] != (int32_t)src : hakd_f32(y)[dst] != (float)(src % 1000003);
          }
      hakd_ctx_free(ctx);
      ASSERT_EQ_INT(wrong, 0);
    }
}

/* A concat output of 16 MiB and more is copied with non-temporal stores: parts whose rows start
 * unaligned (3 and 1 rows of an odd length), float and int32, element for element. */
TEST(large_streamed_concat_matches_inputs) {
  const int64_t len = 699051, rows[2] = {3, 1}; /* output (2, 4, len): 21 MiB */
  for (int as_int = 0; as_int < 2; as_int++) {
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_tensor *xs[2];
    for (int k = 0; k < 2; k++) {
      int64_t shape[3] = {2, rows[k], len};
      xs[k] = hakd_tensor_new(ctx, as_int ? HAKD_I32 : HAKD_F32, 3, shape);
      ASSERT_TRUE(xs[k] != NULL);
      for (int64_t i = 0; i < hakd_numel(xs[k]); i++) {
        if (as_int) hakd_i32(xs[k])[i] = (int32_t)(i * 2 + k);
        else hakd_f32(xs[k])[i] = (float)(i % 999983) + 0.5f * (float)k;
      }
    }
    hakd_tensor *y = hakd_concat(ctx, 2, xs, 1);
    ASSERT_TRUE(y != NULL);
    int64_t wrong = 0;
    for (int64_t b = 0; b < 2; b++)
      for (int64_t c = 0; c < 4; c++)
        for (int64_t i = 0; i < len; i++) {
          int k = c < rows[0] ? 0 : 1;
          int64_t src = (b * rows[k] + (k ? c - rows[0] : c)) * len + i, dst = (b * 4 + c) * len + i;
          wrong += as_int ? hakd_i32(y)[dst] != hakd_i32(xs[k])[src] : hakd_f32(y)[dst] != hakd_f32(xs[k])[src];
        }
    hakd_ctx_free(ctx);
    ASSERT_EQ_INT(wrong, 0);
  }
}

TEST(reshape_is_a_view_and_accumulates_gradient) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[2] = {2, 6}, view_shape[3] = {3, -1, 2};
  hakd_tensor *x = hakd_params_add(&p, "x", 2, shape, 0);
  hakd_tensor *v = hakd_reshape(ctx, x, 3, view_shape);
  ASSERT_TRUE(v != NULL);
  ASSERT_TRUE(v->data == x->data);
  ASSERT_EQ_INT(v->shape[1], 2);
  /* x used twice (directly and through the view): gradients add up */
  hakd_tensor *loss = hakd_add(ctx, hakd_sum(ctx, v), hakd_sum(ctx, hakd_flatten(ctx, x, 0, -1)));
  ASSERT_OK(hakd_backward(ctx, loss));
  for (int i = 0; i < 12; i++) ASSERT_NEAR(x->grad[i], 2.0f, 0);
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

TEST(shape_ops_move_int32_labels) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[3] = {2, 3, 4};
  int32_t v[24];
  for (int i = 0; i < 24; i++) v[i] = 1000 + i;
  hakd_tensor *x = hakd_tensor_from(ctx, HAKD_I32, 3, shape, v);
  hakd_tensor *s = hakd_slice(ctx, x, 1, 1, 1); /* (2, 1, 4) */
  ASSERT_TRUE(s != NULL && s->dtype == HAKD_I32);
  ASSERT_EQ_INT(hakd_i32(s)[0], 1004);
  ASSERT_EQ_INT(hakd_i32(s)[4], 1016);
  static const int perm[3] = {2, 0, 1};
  hakd_tensor *t = hakd_permute(ctx, x, perm); /* (4, 2, 3): t[k][i][j] = x[i][j][k] */
  ASSERT_TRUE(t != NULL && t->dtype == HAKD_I32);
  ASSERT_EQ_INT(hakd_i32(t)[1 * 6 + 1 * 3 + 2], 1000 + 1 * 12 + 2 * 4 + 1);
  hakd_tensor *pair[2] = {x, x};
  hakd_tensor *c = hakd_concat(ctx, 2, pair, 0);
  ASSERT_TRUE(c != NULL && c->dtype == HAKD_I32);
  ASSERT_EQ_INT(hakd_i32(c)[24 + 5], 1005);
  ASSERT_EQ_INT(hakd_ctx_status(ctx), 0);
  hakd_ctx_free(ctx);
}

/* More inputs than a tape node holds: gradients still reach every one, including the last. */
TEST(concat_of_eight_inputs_backpropagates_to_all) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  hakd_tensor *xs[8];
  int64_t shape[2] = {2, 1};
  for (int k = 0; k < 8; k++) {
    char name[8];
    snprintf(name, sizeof name, "x%d", k);
    xs[k] = hakd_params_add(&p, name, 2, shape, 0);
    hakd_f32(xs[k])[0] = (float)k;
    hakd_f32(xs[k])[1] = (float)(10 * k);
  }
  hakd_tensor *c = hakd_concat(ctx, 8, xs, 1); /* (2, 8) */
  ASSERT_TRUE(c != NULL);
  ASSERT_NEAR(hakd_f32(c)[8 + 7], 70.0f, 0);
  ASSERT_OK(hakd_backward(ctx, hakd_sum(ctx, hakd_mul(ctx, c, c))));
  for (int k = 0; k < 8; k++) ASSERT_NEAR(xs[k]->grad[1], 20.0f * k, 0); /* d(x^2) = 2x, exact */
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
}

TEST(errors_name_op_and_shapes) {
  hakd_ctx *ctx = hakd_ctx_new();
  int64_t shape[3] = {2, 3, 4};
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 3, shape);
  int64_t bad[2] = {5, 5};
  const char *reshape_msg[] = {"reshape", "(2, 3, 4)", "24", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_reshape(ctx, x, 2, bad), HAKD_ESHAPE, reshape_msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 3, shape);
  int64_t other_shape[3] = {2, 5, 3};
  hakd_tensor *pair[2] = {x, hakd_tensor_zeros(ctx, HAKD_F32, 3, other_shape)};
  const char *concat_msg[] = {"concat", "(2, 5, 3)", "(2, 3, 4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_concat(ctx, 2, pair, 1), HAKD_ESHAPE, concat_msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 3, shape);
  const char *slice_msg[] = {"slice", "(2, 3, 4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_slice(ctx, x, 1, 2, 2), HAKD_ERANGE, slice_msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 3, shape);
  static const int not_perm[3] = {0, 1, 1};
  const char *perm_msg[] = {"permute", "(2, 3, 4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_permute(ctx, x, not_perm), HAKD_EINVAL, perm_msg));
  hakd_ctx_reset(ctx);
  x = hakd_tensor_zeros(ctx, HAKD_F32, 3, shape);
  const char *flatten_msg[] = {"flatten", "(2, 3, 4)", NULL};
  ASSERT_TRUE(expect_op_error(ctx, hakd_flatten(ctx, x, 2, 1), HAKD_EINVAL, flatten_msg));
  hakd_ctx_free(ctx);
}
