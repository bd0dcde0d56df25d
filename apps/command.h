/* CLI verbs. Each apps/cmd_<verb>.c registers itself with HAKD_COMMAND, so adding a verb
 * touches no other file. The CLI is only a client of the public API (include/hakd). */
#ifndef HAKD_APP_COMMAND_H
#define HAKD_APP_COMMAND_H

#include <stddef.h>

#include "hakd/config.h"
#include "hakd/io.h"

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

/* Strict flag values: the whole text must be a number within [min, max] (atoi would read "abc"
 * as 0 and "8x" as 8). On error prints "--flag 'text': expected ..." and returns 1. */
int command_int(const char *flag, const char *text, long min, long max, int *out);
int command_float(const char *flag, const char *text, double min, double max, float *out);
/* HxW (or one number for a square) through hakd_parse_size; errors name the flag. */
int command_size(const char *flag, const char *text, int *h, int *w);
/* An output file the command will write: checked before any work is done (hakd_output_check),
 * so that a bad path fails in a second and not after hours. NULL path: nothing to check. */
int command_output(const char *flag, const char *path);
/* "(1, 3, 8, 8)" */
const char *command_npy_shape(const hakd_npy *a, char *buf, size_t size);

/* Fills c from --config FILE and --key value flags of the config key table (distill keys only
 * when distill). Returns 0, or 1 after printing the error. */
int command_parse_config(int argc, char **argv, hakd_config *c, int distill);

#endif
