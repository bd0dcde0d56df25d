/* Golden op cases written by tools/gen_ops_basic.py (header-only, shared by the test_op_*.c files).
 *
 * A case <c> in a fixture holds its inputs <c>.<name>, PyTorch's output <c>.y, an upstream
 * gradient <c>.gy, PyTorch's input gradients <c>.g<name> for L = sum(y * gy), and optional case
 * parameters <c>.params (I64) and <c>.fparams (F64). */
#ifndef HAKD_TEST_OP_GOLDEN_H
#define HAKD_TEST_OP_GOLDEN_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/io.h"
#include "hakd/ops.h"

#define GOLDEN_MAX_INPUTS 6

typedef struct {
  int64_t params[16];
  double fparams[8];
  int n_params, n_fparams;
} golden_args;

/* Builds the op's output from the loaded inputs (in the order named) and the case's parameters. */
typedef hakd_tensor *(*golden_build_fn)(hakd_ctx *ctx, hakd_tensor **inputs, const golden_args *args);

/* The tensor <case_name>.<name> of f; NULL (and the test failed) when missing. */
static inline const hakd_st_tensor *golden_find(hakd_st_file *f, const char *case_name, const char *name,
                                                char *key, size_t key_size) {
  snprintf(key, key_size, "%s.%s", case_name, name);
  const hakd_st_tensor *t = hakd_st_find(f, key);
  if (!t) test_fail(__FILE__, __LINE__, "%s: no tensor %s", hakd_st_path(f), key);
  return t;
}

/* Compares got (n floats) with <case>.<name>: normalised max error <= tol. */
static inline int golden_compare(hakd_st_file *f, const char *case_name, const char *name, const float *got,
                                 int64_t n, double tol) {
  char key[128];
  const hakd_st_tensor *t = golden_find(f, case_name, name, key, sizeof key);
  if (!t) return 0;
  float *want = malloc((size_t)(n ? n : 1) * sizeof *want);
  int ok = hakd_st_read_f32(f, key, want, n) == 0;
  if (!ok) test_fail(__FILE__, __LINE__, "%s: %s", key, hakd_error_message());
  double err = ok ? test_max_rel_err(got, want, n, 1e-6) : 0.0;
  if (ok && !(err <= tol)) {
    test_fail(__FILE__, __LINE__, "%s: max normalised error %.3g > %.3g", key, err, tol);
    for (int64_t i = 0; i < n && i < 6; i++)
      fprintf(stderr, "  [%lld] got %.7g want %.7g\n", (long long)i, got[i], want[i]);
    ok = 0;
  }
  free(want);
  return ok;
}

/* Loads <case>.<name>: F32 as a leaf parameter in p (requires grad) or, when constant, as a step
 * tensor without grad; I32 as a step tensor. */
static inline hakd_tensor *golden_load(hakd_st_file *f, hakd_ctx *ctx, hakd_params *p, const char *case_name,
                                       const char *name, int constant) {
  char key[128];
  const hakd_st_tensor *st = golden_find(f, case_name, name, key, sizeof key);
  if (!st) return NULL;
  int64_t n = 1;
  for (int i = 0; i < st->ndim; i++) n *= st->shape[i];
  if (st->dtype == HAKD_ST_I32 || st->dtype == HAKD_ST_I64) {
    hakd_tensor *t = hakd_tensor_new(ctx, HAKD_I32, st->ndim, st->shape);
    int64_t *wide = malloc((size_t)(n ? n : 1) * sizeof *wide);
    int rc = hakd_st_read_i64(f, key, wide, n);
    for (int64_t i = 0; i < n && rc == 0; i++) hakd_i32(t)[i] = (int32_t)wide[i];
    free(wide);
    if (rc != 0) test_fail(__FILE__, __LINE__, "%s: %s", key, hakd_error_message());
    return rc == 0 ? t : NULL;
  }
  hakd_tensor *t = constant ? hakd_tensor_new(ctx, HAKD_F32, st->ndim, st->shape)
                            : hakd_params_add(p, key, st->ndim, st->shape, 0);
  if (!t || hakd_st_read_f32(f, key, hakd_f32(t), n) != 0) {
    test_fail(__FILE__, __LINE__, "%s: %s", key, hakd_error_message());
    return NULL;
  }
  return t;
}

/* Runs case `case_name` of `fixture` (relative to tests/fixtures): `inputs` is a space-separated
 * list of input names, a trailing '!' marking a constant (no gradient expected, e.g. "s t!").
 * Checks the output shape, y against <case>.y and, seeded with <case>.gy, every non-constant float
 * input's gradient against <case>.g<name>; both with normalised max error <= tol. 1 on pass. */
static inline int golden_run(const char *fixture, const char *case_name, const char *inputs, golden_build_fn build,
                             double tol) {
  hakd_st_file *f;
  if (hakd_st_open(test_fixture_path(fixture), &f) != 0) {
    test_fail(__FILE__, __LINE__, "%s", hakd_error_message());
    return 0;
  }
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_params p;
  hakd_params_init(&p);
  char names[GOLDEN_MAX_INPUTS][32];
  int constant[GOLDEN_MAX_INPUTS] = {0}, n_in = 0, ok = 1;
  hakd_tensor *in[GOLDEN_MAX_INPUTS] = {0};
  for (const char *s = inputs; *s && n_in < GOLDEN_MAX_INPUTS;) {
    while (*s == ' ') s++;
    size_t len = strcspn(s, " ");
    if (!len) break;
    snprintf(names[n_in], sizeof names[n_in], "%.*s", (int)len, s);
    if (names[n_in][len - 1] == '!') names[n_in][len - 1] = 0, constant[n_in] = 1;
    in[n_in] = golden_load(f, ctx, &p, case_name, names[n_in], constant[n_in]);
    if (!in[n_in]) ok = 0;
    n_in++;
    s += len;
  }
  golden_args args = {0};
  char key[128];
  const hakd_st_tensor *st;
  snprintf(key, sizeof key, "%s.params", case_name);
  if (ok && (st = hakd_st_find(f, key)) != NULL) {
    args.n_params = (int)st->shape[0];
    ok = args.n_params <= 16 && hakd_st_read_i64(f, key, args.params, args.n_params) == 0;
  }
  snprintf(key, sizeof key, "%s.fparams", case_name);
  if (ok && (st = hakd_st_find(f, key)) != NULL) {
    args.n_fparams = (int)st->shape[0];
    float fp[8];
    ok = args.n_fparams <= 8 && hakd_st_read_f32(f, key, fp, args.n_fparams) == 0;
    for (int i = 0; ok && i < args.n_fparams; i++) args.fparams[i] = fp[i];
  }
  hakd_tensor *y = ok ? build(ctx, in, &args) : NULL;
  if (ok && !y) {
    test_fail(__FILE__, __LINE__, "%s: op failed: %s", case_name, hakd_error_message());
    ok = 0;
  }
  if (ok) {
    const hakd_st_tensor *want = golden_find(f, case_name, "y", key, sizeof key);
    int same_shape = want && want->ndim == y->ndim;
    for (int i = 0; same_shape && i < y->ndim; i++) same_shape = want->shape[i] == y->shape[i];
    if (!same_shape) {
      char sy[96];
      test_fail(__FILE__, __LINE__, "%s: output shape %s differs from PyTorch's", case_name,
                hakd_shape_str(y, sy, sizeof sy));
      ok = 0;
    }
  }
  if (ok) ok = golden_compare(f, case_name, "y", hakd_f32(y), hakd_numel(y), tol);
  if (ok) {
    int64_t ny = hakd_numel(y);
    float *gy = malloc((size_t)(ny ? ny : 1) * sizeof *gy);
    snprintf(key, sizeof key, "%s.gy", case_name);
    if (hakd_st_read_f32(f, key, gy, ny) != 0 || hakd_backward_seeded(ctx, y, gy) != 0) {
      test_fail(__FILE__, __LINE__, "%s: backward: %s", case_name, hakd_error_message());
      ok = 0;
    }
    free(gy);
    for (int k = 0; ok && k < n_in; k++) {
      if (constant[k] || in[k]->dtype != HAKD_F32) continue;
      char gname[40];
      snprintf(gname, sizeof gname, "g%s", names[k]);
      ok = golden_compare(f, case_name, gname, in[k]->grad, hakd_numel(in[k]), tol);
    }
  }
  hakd_params_free(&p);
  hakd_ctx_free(ctx);
  hakd_st_close(f);
  return ok;
}

/* An op call that must fail: NULL result, ctx status `status`, and a message containing every
 * string of `needles` (NULL-terminated), e.g. the op name and the offending shapes. */
static inline int expect_op_error(hakd_ctx *ctx, hakd_tensor *result, int status, const char *const *needles) {
  if (result) {
    test_fail(__FILE__, __LINE__, "expected an error, the op returned a tensor");
    return 0;
  }
  if (hakd_ctx_status(ctx) != status) {
    test_fail(__FILE__, __LINE__, "ctx status %d, want %d (%s)", hakd_ctx_status(ctx), status, hakd_error_message());
    return 0;
  }
  for (const char *const *n = needles; *n; n++)
    if (!strstr(hakd_error_message(), *n)) {
      test_fail(__FILE__, __LINE__, "error message \"%s\" does not mention \"%s\"", hakd_error_message(), *n);
      return 0;
    }
  return 1;
}

#endif
