#include "harness.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAX_TESTS 512

static struct {
  const char *name;
  test_fn fn;
} tests[MAX_TESTS];
static int n_tests;
static int current_failed;
static char tmpdir[512];

void test_register(const char *name, test_fn fn) {
  if (n_tests < MAX_TESTS) {
    tests[n_tests].name = name;
    tests[n_tests].fn = fn;
    n_tests++;
  }
}

void test_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  fprintf(stderr, "%s:%d: FAIL: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fputc('\n', stderr);
  current_failed = 1;
}

int test_failed(void) { return current_failed; }

void test_skip(const char *reason) {
  printf("[skip] %s\n", reason);
  fflush(stdout);
  exit(77);
}

const char *test_fixture_path(const char *rel) {
  static _Thread_local char path[1024];
  snprintf(path, sizeof path, "%s/tests/fixtures/%s", HAKD_SOURCE_DIR, rel);
  return path;
}

const char *test_tmpdir(void) {
  if (!tmpdir[0]) {
    snprintf(tmpdir, sizeof tmpdir, "/tmp/hakd-test-XXXXXX");
    if (!mkdtemp(tmpdir)) {
      perror("mkdtemp");
      exit(2);
    }
  }
  return tmpdir;
}

double test_max_rel_err(const float *a, const float *b, int64_t n, double floor) {
  double max_ref = floor, max_diff = 0;
  for (int64_t i = 0; i < n; i++) {
    double d = fabs((double)a[i] - (double)b[i]);
    if (d != d) return INFINITY;
    if (d > max_diff) max_diff = d;
    if (fabs((double)b[i]) > max_ref) max_ref = fabs((double)b[i]);
  }
  return max_diff / max_ref;
}

static void remove_tmpdir(void) {
  if (tmpdir[0] && !current_failed) {
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", tmpdir);
  }
}

int main(int argc, char **argv) {
  int passed = 0, failed = 0;
  atexit(remove_tmpdir);
  for (int i = 0; i < n_tests; i++) {
    if (argc > 1 && strcmp(argv[1], tests[i].name) != 0) continue;
    current_failed = 0;
    tests[i].fn();
    if (current_failed) {
      failed++;
      fprintf(stderr, "[FAIL] %s\n", tests[i].name);
    } else {
      passed++;
      printf("[ ok ] %s\n", tests[i].name);
    }
  }
  if (passed + failed == 0) {
    fprintf(stderr, "no test named %s\n", argc > 1 ? argv[1] : "(any)");
    return 2;
  }
  printf("%d passed, %d failed\n", passed, failed);
  return failed ? 1 : 0;
}

int test_run_capture(const char *cmd, char *out, size_t size) {
  char full[8192];
  snprintf(full, sizeof full, "%s 2>&1", cmd);
  out[0] = 0;
  FILE *p = popen(full, "r");
  if (!p) return -1;
  size_t n = fread(out, 1, size - 1, p);
  out[n] = 0;
  char sink[4096]; /* drain the rest so the child never blocks on a full pipe */
  while (fread(sink, 1, sizeof sink, p) > 0) {
  }
  int status = pclose(p);
  return status != -1 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}
