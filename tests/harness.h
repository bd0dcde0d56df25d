/* Minimal test runner: TEST(name) registers a case; each case is one CTest test
 * (CMakeLists.txt reads the TEST( lines). Every assertion prints the expression and the
 * values, and a failing assertion fails the case. */
#ifndef HAKD_TEST_HARNESS_H
#define HAKD_TEST_HARNESS_H

#include <math.h>
#include <stdint.h>
#include <stdio.h>

typedef void (*test_fn)(void);
void test_register(const char *name, test_fn fn);
/* Marks the current case failed (assert macros call it). */
void test_fail(const char *file, int line, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
int test_failed(void);
/* Ends the case as skipped (exit status 77, CTest's SKIP_RETURN_CODE) with the reason; only for
 * a case whose subject this build lacks (the MPI cases in a build without MPI). */
void test_skip(const char *reason) __attribute__((noreturn));

/* Path of a committed fixture: HAKD_SOURCE_DIR "/tests/fixtures/" rel. */
const char *test_fixture_path(const char *rel);
/* A fresh empty temporary directory for this case (removed at exit unless the case failed). */
const char *test_tmpdir(void);
/* Runs a shell command with stdout and stderr captured into out (NUL-terminated, truncated to
 * size); returns its exit status, or -1 when it could not run or died by a signal. */
int test_run_capture(const char *cmd, char *out, size_t size);

/* max |a-b| / max(max|b|, floor) — the normalised error used against PyTorch references. */
double test_max_rel_err(const float *a, const float *b, int64_t n, double floor);

#define TEST(name)                                                                     \
  static void test_##name(void);                                                       \
  __attribute__((constructor)) static void test_register_##name(void) {               \
    test_register(#name, test_##name);                                                \
  }                                                                                    \
  static void test_##name(void)

#define ASSERT_TRUE(cond)                                                              \
  do {                                                                                 \
    if (!(cond)) {                                                                     \
      test_fail(__FILE__, __LINE__, "ASSERT_TRUE(%s)", #cond);                         \
      return;                                                                          \
    }                                                                                  \
  } while (0)

#define ASSERT_EQ_INT(a, b)                                                            \
  do {                                                                                 \
    long long va_ = (long long)(a), vb_ = (long long)(b);                              \
    if (va_ != vb_) {                                                                  \
      test_fail(__FILE__, __LINE__, "ASSERT_EQ_INT(%s, %s): %lld != %lld", #a, #b, va_, vb_); \
      return;                                                                          \
    }                                                                                  \
  } while (0)

/* Status-returning library call must succeed; prints the library's message otherwise. */
#define ASSERT_OK(call)                                                                \
  do {                                                                                 \
    int rc_ = (call);                                                                  \
    if (rc_ != 0) {                                                                    \
      test_fail(__FILE__, __LINE__, "%s returned %d: %s", #call, rc_, hakd_error_message()); \
      return;                                                                          \
    }                                                                                  \
  } while (0)

/* |a-b| <= tol */
#define ASSERT_NEAR(a, b, tol)                                                         \
  do {                                                                                 \
    double va_ = (double)(a), vb_ = (double)(b), t_ = (double)(tol);                   \
    if (!(fabs(va_ - vb_) <= t_)) {                                                    \
      test_fail(__FILE__, __LINE__, "ASSERT_NEAR(%s, %s, %s): %.9g vs %.9g (diff %.3g > %.3g)", \
                #a, #b, #tol, va_, vb_, fabs(va_ - vb_), t_);                          \
      return;                                                                          \
    }                                                                                  \
  } while (0)

/* Normalised max error of n floats <= tol (see test_max_rel_err; floor 1e-6). */
#define ASSERT_ALLCLOSE(got, want, n, tol)                                             \
  do {                                                                                 \
    double e_ = test_max_rel_err((got), (want), (n), 1e-6);                            \
    if (!(e_ <= (double)(tol))) {                                                      \
      test_fail(__FILE__, __LINE__, "ASSERT_ALLCLOSE(%s, %s): max rel err %.3g > %.3g", #got, #want, \
                e_, (double)(tol));                                                    \
      return;                                                                          \
    }                                                                                  \
  } while (0)

#endif
