/* hakd command-line tool: `hakd <verb> [options]`. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

static int compare_commands(const void *a, const void *b) {
  return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static void usage(FILE *out) {
  fprintf(out, "usage: hakd <command> [options]   (hakd <command> --help for its options)\n\ncommands:\n");
  qsort(commands, n_commands, sizeof commands[0], compare_commands);
  for (int i = 0; i < n_commands; i++) fprintf(out, "  %-10s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
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
