/* CLI verbs. Each apps/cmd_<verb>.c registers itself with HAKD_COMMAND, so adding a verb
 * touches no other file. The CLI is only a client of the public API (include/hakd). */
#ifndef HAKD_APP_COMMAND_H
#define HAKD_APP_COMMAND_H

#include "hakd/config.h"

typedef int (*command_fn)(int argc, char **argv);
/* argv[0] of the process, for commands that print a command line to run next. */
extern const char *command_program;
void command_register(const char *name, const char *summary, command_fn fn);

#define HAKD_COMMAND(name, summary, fn)                                                  \
  __attribute__((constructor)) static void command_register_##fn(void) {                \
    command_register(name, summary, fn);                                                \
  }

/* Prints "hakd: <message>" (the library's last error when msg is NULL) and returns 1. */
int command_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Fills c from --config FILE and --key value flags of the config key table (distill keys only
 * when distill). Returns 0, or 1 after printing the error. */
int command_parse_config(int argc, char **argv, hakd_config *c, int distill);

#endif
