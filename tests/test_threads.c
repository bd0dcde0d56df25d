/* The CLI's OpenMP wait policy: a short spin (1,000) unless the user chose (apps/main.c
 * re-executes itself with GOMP_SPINCOUNT=1000, because libgomp reads it once when loaded).
 * Checked through what libgomp itself reports (OMP_DISPLAY_ENV=verbose prints its spin count at
 * start-up, once per process image: 300000 is libgomp's default spin, 0 passive). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

/* Runs `env <env> $HAKD_CLI models` with libgomp's display on; returns the spin count of the last
 * display block (the process image that ran hakd) and how many blocks were printed. */
static int last_spincount(const char *env, char *value, size_t size, int *blocks) {
  const char *cli = getenv("HAKD_CLI");
  if (!cli) return -1;
  char cmd[1200], line[512];
  snprintf(cmd, sizeof cmd, "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT OMP_DISPLAY_ENV=verbose %s %s models 2>&1 >/dev/null",
           env, cli);
  FILE *p = popen(cmd, "r");
  if (!p) return -1;
  *blocks = 0;
  value[0] = '\0';
  while (fgets(line, sizeof line, p)) {
    const char *at = strstr(line, "GOMP_SPINCOUNT = '");
    if (!at) continue;
    (*blocks)++;
    snprintf(value, size, "%s", at + 18);
    value[strcspn(value, "'")] = '\0';
  }
  return pclose(p);
}

TEST(cli_spins_briefly_unless_told) {
  ASSERT_TRUE(getenv("HAKD_CLI") != NULL);
  char spin[64];
  int blocks;
  /* nothing set: the first image shows libgomp's default, the re-executed one the short spin */
  ASSERT_EQ_INT(last_spincount("", spin, sizeof spin, &blocks), 0);
  printf("unset: %d start-ups, last spin count %s\n", blocks, spin);
  ASSERT_EQ_INT(blocks, 2);
  ASSERT_TRUE(!strcmp(spin, "1000"));
  /* the user's choice stands, and there is no re-exec */
  ASSERT_EQ_INT(last_spincount("OMP_WAIT_POLICY=active", spin, sizeof spin, &blocks), 0);
  printf("OMP_WAIT_POLICY=active: %d start-ups, spin count %s\n", blocks, spin);
  ASSERT_EQ_INT(blocks, 1);
  ASSERT_TRUE(strcmp(spin, "0") != 0);
  ASSERT_EQ_INT(last_spincount("GOMP_SPINCOUNT=1234", spin, sizeof spin, &blocks), 0);
  printf("GOMP_SPINCOUNT=1234: %d start-ups, spin count %s\n", blocks, spin);
  ASSERT_EQ_INT(blocks, 1);
  ASSERT_TRUE(!strcmp(spin, "1234"));
}
