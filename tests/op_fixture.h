/* Reading the case-structured op fixtures of tools/gen_ops_conv.py (header-only): a case `c`
 * stores tensors "<c>.<name>" and the file's metadata lists the case names. */
#ifndef HAKD_TEST_OP_FIXTURE_H
#define HAKD_TEST_OP_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/io.h"
#include "hakd/tensor.h"

#define OP_FIXTURE_MAX_CASES 32

/* Splits metadata entry `key` (comma-separated names) into names; returns the count (0 on error). */
static inline int op_fixture_cases(const hakd_st_file *f, const char *key, char names[][48], int max) {
  const char *list = hakd_st_metadata(f, key);
  if (!list) {
    test_fail(__FILE__, __LINE__, "%s: no metadata entry %s", hakd_st_path(f), key);
    return 0;
  }
  int n = 0;
  while (*list && n < max) {
    size_t len = strcspn(list, ",");
    if (len >= 48) len = 47;
    memcpy(names[n], list, len);
    names[n][len] = '\0';
    n++;
    list += strcspn(list, ",");
    if (*list == ',') list++;
  }
  return n;
}

static inline const hakd_st_tensor *op_fixture_find(const hakd_st_file *f, const char *c, const char *name) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", c, name);
  const hakd_st_tensor *t = hakd_st_find(f, full);
  if (!t) test_fail(__FILE__, __LINE__, "%s: no tensor %s", hakd_st_path(f), full);
  return t;
}

static inline int op_fixture_has(const hakd_st_file *f, const char *c, const char *name) {
  char full[128];
  snprintf(full, sizeof full, "%s.%s", c, name);
  return hakd_st_find(f, full) != NULL;
}

/* "<c>.<name>" as a new leaf parameter (requires grad) in p, or a buffer when is_buffer. */
static inline hakd_tensor *op_fixture_param(hakd_params *p, const hakd_st_file *f, const char *c, const char *name,
                                            int is_buffer) {
  const hakd_st_tensor *t = op_fixture_find(f, c, name);
  if (!t) return NULL;
  hakd_tensor *x = hakd_params_add(p, t->name, t->ndim, t->shape, is_buffer);
  if (!x || hakd_st_read_f32(f, t->name, hakd_f32(x), hakd_numel(x)) != 0) {
    test_fail(__FILE__, __LINE__, "reading %s: %s", t->name, hakd_error_message());
    return NULL;
  }
  return x;
}

/* "<c>.<name>" as malloc'ed floats; *n gets the element count. */
static inline float *op_fixture_floats(const hakd_st_file *f, const char *c, const char *name, int64_t *n) {
  const hakd_st_tensor *t = op_fixture_find(f, c, name);
  if (!t) return NULL;
  int64_t count = 1;
  for (int d = 0; d < t->ndim; d++) count *= t->shape[d];
  float *data = malloc((size_t)(count ? count : 1) * sizeof(float));
  if (hakd_st_read_f32(f, t->name, data, count) != 0) {
    test_fail(__FILE__, __LINE__, "reading %s: %s", t->name, hakd_error_message());
    free(data);
    return NULL;
  }
  *n = count;
  return data;
}

/* The I64 vector "<c>.params" into dst[n]. Returns 1 on success. */
static inline int op_fixture_ints(const hakd_st_file *f, const char *c, int64_t *dst, int64_t n) {
  char full[128];
  snprintf(full, sizeof full, "%s.params", c);
  if (hakd_st_read_i64(f, full, dst, n) != 0) {
    test_fail(__FILE__, __LINE__, "reading %s: %s", full, hakd_error_message());
    return 0;
  }
  return 1;
}

/* Compares n floats with the fixture tensor "<c>.<name>" by normalised max error <= tol;
 * prints case and tensor on failure. Returns 1 on pass. */
static inline int op_fixture_check(const hakd_st_file *f, const char *c, const char *name, const float *got, int64_t n,
                                   double tol) {
  int64_t want_n = 0;
  float *want = op_fixture_floats(f, c, name, &want_n);
  if (!want) return 0;
  int ok = 1;
  if (want_n != n) {
    test_fail(__FILE__, __LINE__, "%s.%s: %lld values, fixture has %lld", c, name, (long long)n, (long long)want_n);
    ok = 0;
  } else if (!got) {
    test_fail(__FILE__, __LINE__, "%s.%s: no values computed", c, name);
    ok = 0;
  } else {
    double err = test_max_rel_err(got, want, n, 1e-6);
    if (!(err <= tol)) {
      test_fail(__FILE__, __LINE__, "%s.%s: max rel err %.3g > %.3g", c, name, err, tol);
      ok = 0;
    }
  }
  free(want);
  return ok;
}

#endif
