/* hakd command-line tool: `hakd <verb> [options]`. */
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "command.h"
#include "hakd/error.h"

#define MAX_COMMANDS 32

static struct {
  const char *name, *summary;
  command_fn fn;
} commands[MAX_COMMANDS];
static int n_commands;

void command_register(const char *name, const char *summary, command_fn fn) {
  if (n_commands < MAX_COMMANDS) {
    commands[n_commands].name = name;
    commands[n_commands].summary = summary;
    commands[n_commands].fn = fn;
    n_commands++;
  }
}

const char *command_program = "hakd";

int command_fail(const char *fmt, ...) {
  fputs("hakd: error: ", stderr);
  if (fmt) {
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
  } else {
    fputs(hakd_error_message(), stderr);
  }
  fputc('\n', stderr);
  return 1;
}

int command_int(const char *flag, const char *text, long min, long max, int *out) {
  char *end;
  errno = 0;
  long v = strtol(text, &end, 10);
  if (errno || end == text || *end || v < min || v > max)
    return command_fail("%s '%s': expected an integer from %ld to %ld", flag, text, min, max);
  *out = (int)v;
  return 0;
}

int command_float(const char *flag, const char *text, double min, double max, float *out) {
  char *end;
  errno = 0;
  double v = strtod(text, &end);
  if (errno || end == text || *end || !isfinite(v) || v < min || v > max)
    return command_fail("%s '%s': expected a number from %g to %g", flag, text, min, max);
  *out = (float)v;
  return 0;
}

int command_size(const char *flag, const char *text, int *h, int *w) {
  if (hakd_parse_size(text, h, w))
    return command_fail("%s '%s': expected HxW with positive sizes up to 65536, e.g. 512x1024", flag, text);
  return 0;
}

int command_output(const char *flag, const char *path) {
  if (path && hakd_output_check(path)) return command_fail("%s: %s", flag, hakd_error_message());
  return 0;
}

const char *command_npy_shape(const hakd_npy *a, char *buf, size_t size) {
  size_t len = (size_t)snprintf(buf, size, "(");
  for (int d = 0; d < a->ndim && len < size; d++)
    len += (size_t)snprintf(buf + len, size - len, d ? ", %lld" : "%lld", (long long)a->shape[d]);
  if (len < size) snprintf(buf + len, size - len, ")");
  return buf;
}

static int compare_commands(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void usage(FILE *out) {
  fprintf(out, "usage: hakd <command> [options]   (hakd <command> --help for its options)\n\ncommands:\n");
  qsort(commands, n_commands, sizeof commands[0], compare_commands);
  for (int i = 0; i < n_commands; i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

/* OpenMP threads that wait for work spin by default (libgomp: 300,000 spins, milliseconds, before
 * sleeping), which is fastest on an idle machine of one's own and several times slower when
 * another process wants the cores: a waiting thread burns the time slice that the thread it waits
 * for needs. Waiting passively (sleeping at once) avoids that but pays a wake-up (a futex, and on
 * a VM a halted virtual CPU) at every parallel region: 20-30% of a small step (mbv2 inference at
 * 128x128, about 60 regions of 0.1-0.3 ms). hakd therefore spins briefly, 1,000 spins (tens of
 * microseconds: the gap between two consecutive ops' regions), then sleeps, unless the user chose:
 * it sets GOMP_SPINCOUNT=1000 when neither OMP_WAIT_POLICY nor GOMP_SPINCOUNT is set (README,
 * "Threads and shared machines", has the measurements). libgomp reads these variables once, when
 * it is loaded, before main runs (and before any constructor of this program), so setting one here
 * takes effect only in a fresh process image: the CLI re-executes itself once with the variable
 * set. If exec fails (no /proc), it runs on with the runtime's default. */
static void wait_policy_reexec(char **argv) {
  if (getenv("OMP_WAIT_POLICY") || getenv("GOMP_SPINCOUNT")) return;
  if (setenv("GOMP_SPINCOUNT", "1000", 1)) return;
  execv("/proc/self/exe", argv);
  unsetenv("GOMP_SPINCOUNT"); /* not in effect: do not tell child processes otherwise */
}

int main(int argc, char **argv) {
  wait_policy_reexec(argv);
  if (argc > 0 && argv[0]) command_program = argv[0];
  if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (int i = 0; i < n_commands; i++)
    if (!strcmp(argv[1], commands[i].name)) return commands[i].fn(argc - 1, argv + 1);
  fprintf(stderr, "hakd: unknown command '%s'\n", argv[1]);
  usage(stderr);
  return 2;
}
