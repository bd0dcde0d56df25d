/* `hakd demo` (the built CLI, $HAKD_CLI) at --quick size: the teacher cache is reused only when it
 * was made with the same settings, a sweep adds rows beside the baseline's, bad flags are refused. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"

/* Runs `$HAKD_CLI demo --quick --threads 1 --out <tmp>/d <args>` with stdout and stderr into out. */
static int run_demo(const char *args, char *out, size_t size) {
  const char *cli = getenv("HAKD_CLI");
  if (!cli) cli = HAKD_BINARY_DIR "/hakd";
  char cmd[2048];
  snprintf(cmd, sizeof cmd, "'%s' demo --quick --threads 1 --out '%s/d' %s", cli, test_tmpdir(), args);
  return test_run_capture(cmd, out, size);
}

static int file_has(const char *rel, const char *text) {
  char path[700], buf[8192];
  snprintf(path, sizeof path, "%s/d/%s", test_tmpdir(), rel);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = 0;
  fclose(f);
  return strstr(buf, text) != NULL;
}

TEST(teacher_cache_is_reused_only_with_the_same_settings) {
  static char out[1 << 16];
  ASSERT_EQ_INT(run_demo("--methods none", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "Teacher - labels-only student:") != NULL);
  ASSERT_TRUE(strstr(out, "reused") == NULL);
  ASSERT_TRUE(file_has("teacher/demo_cache.txt", "iters = 6\n"));
  ASSERT_TRUE(file_has("results.tsv", "\nnone\t"));
  /* the same settings: the teacher is not trained again */
  ASSERT_EQ_INT(run_demo("--methods none", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "reused from") != NULL);
  /* other settings: the cache is refused, naming the setting, and a new teacher replaces it */
  ASSERT_EQ_INT(run_demo("--methods none --teacher-iters 7", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "was made with other settings (iters = 6, now iters = 7): not used") != NULL);
  ASSERT_TRUE(strstr(out, "reused from") == NULL);
  ASSERT_TRUE(file_has("teacher/demo_cache.txt", "iters = 7\n"));
  /* another seed is another teacher */
  ASSERT_EQ_INT(run_demo("--methods none --teacher-iters 7 --seed 1", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "seed = 0, now seed = 1") != NULL);
  /* a cache whose weights are gone is not used */
  char path[700];
  snprintf(path, sizeof path, "%s/d/teacher/best.safetensors", test_tmpdir());
  ASSERT_EQ_INT(remove(path), 0);
  ASSERT_EQ_INT(run_demo("--methods none --teacher-iters 7 --seed 1", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "reused from") == NULL);
  ASSERT_TRUE(strstr(out, "training the teacher") != NULL);
}

TEST(sweep_rows_join_the_baseline_and_bad_flags_are_refused) {
  static char out[1 << 16];
  /* no baseline row yet: a sweep alone is refused before any training */
  ASSERT_EQ_INT(run_demo("--methods heteroakd --set T=2", out, sizeof out), 1);
  ASSERT_TRUE(strstr(out, "labels-only row") != NULL);
  ASSERT_EQ_INT(run_demo("--methods none,kd", out, sizeof out), 0);
  ASSERT_EQ_INT(run_demo("--methods heteroakd --set T=2", out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "none (earlier run)") != NULL);
  ASSERT_TRUE(file_has("results.tsv", "\nnone\t") && file_has("results.tsv", "\nkd\t") &&
              file_has("results.tsv", "\nheteroakd[T=2]\t"));
  /* other student settings: the old rows are dropped with the new key */
  ASSERT_EQ_INT(run_demo("--methods none --student-iters 5", out, sizeof out), 0);
  ASSERT_TRUE(!file_has("results.tsv", "\nkd\t"));
  const char *bad[][2] = {{"--direction sideways", "--direction 'sideways'"},
                          {"--methods none,dkd", "unknown method 'dkd'"},
                          {"--set lambda_hakd", "expected KEY=VALUE"},
                          {"--set no_such_key=1", "no_such_key"},
                          {"--seed -1", "--seed '-1'"},
                          {"--teacher-iters 0", "--teacher-iters '0'"}};
  for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
    int rc = run_demo(bad[i][0], out, sizeof out);
    /* refused before anything trains */
    if ((rc != 1 && rc != 2) || !strstr(out, bad[i][1]) || strstr(out, "teacher (labels)"))
      test_fail(__FILE__, __LINE__, "%s: exit %d, output without \"%s\":\n%s", bad[i][0], rc, bad[i][1], out);
  }
}
