/* hakd train / hakd distill: flags and config file come from the one key table of config.h. */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "command.h"
#include "hakd/config.h"
#include "hakd/dist.h"
#include "hakd/error.h"
#include "hakd/train.h"

static void usage(FILE *out, const char *verb, int distill) {
  fprintf(out, "usage: hakd %s [--config FILE] [--key value ...]\n\n", verb);
  fprintf(out, "Every key can be given as a flag (--data-root or --data_root) or in a config file\n"
               "(flat `key = value`); flags override the file. Boolean keys may be given as bare flags.\n\n");
  hakd_config defaults;
  hakd_config_default(&defaults);
  for (const hakd_config_key *k = hakd_config_keys(); k->key; k++) {
    if (k->distill_only && !distill) continue;
    char flag[64];
    snprintf(flag, sizeof flag, "--%s", k->key);
    for (char *p = flag + 2; *p; p++)
      if (*p == '_') *p = '-';
    fprintf(out, "  %-24s %s%s%s%s\n", flag, k->help, *k->default_value ? " [" : "", k->default_value,
            *k->default_value ? "]" : "");
  }
}

/* Parses --config first, then every other flag on top. */
int command_parse_config(int argc, char **argv, hakd_config *c, int distill) {
  hakd_config_default(c);
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--config")) {
      if (i + 1 >= argc) return command_fail("--config needs a file");
      if (hakd_config_load(c, argv[i + 1])) return command_fail(NULL);
    }
  for (int i = 1; i < argc; i++) {
    const char *arg = argv[i];
    if (!strcmp(arg, "--config")) {
      i++;
      continue;
    }
    if (strncmp(arg, "--", 2)) return command_fail("unexpected argument '%s' (flags look like --key value)", arg);
    const char *key = arg + 2, *eq = strchr(key, '=');
    char name[64];
    const char *value = NULL;
    if (eq) {
      snprintf(name, sizeof name, "%.*s", (int)(eq - key), key);
      value = eq + 1;
    } else {
      snprintf(name, sizeof name, "%s", key);
    }
    for (char *p = name; *p; p++)
      if (*p == '-') *p = '_';
    const hakd_config_key *k = NULL;
    for (const hakd_config_key *it = hakd_config_keys(); it->key; it++)
      if (!strcmp(it->key, name)) k = it;
    if (!k || (k->distill_only && !distill))
      return command_fail("unknown option '%s' (see hakd %s --help)", arg, distill ? "distill" : "train");
    if (!value) {
      if (k->type == HAKD_KEY_BOOL && (i + 1 >= argc || !strncmp(argv[i + 1], "--", 2)))
        value = "1";
      else if (i + 1 < argc)
        value = argv[++i];
      else
        return command_fail("%s needs a value", arg);
    }
    if (hakd_config_set(c, name, value)) return command_fail(NULL);
  }
  return 0;
}

/* SIGINT / SIGTERM: the first asks the trainer to stop after the iteration in progress (it saves
 * a checkpoint); a second one ends the process at once with the default action, which is safe
 * too because a checkpoint pair is committed as one unit. Only async-signal-safe calls here. */
static volatile sig_atomic_t stop_signals;

static void on_stop_signal(int signo) {
  if (stop_signals++) {
    signal(signo, SIG_DFL);
    raise(signo);
    return;
  }
  static const char note[] = "\nhakd: stopping after this iteration and saving a checkpoint (signal again to stop at once)\n";
  ssize_t ignored = write(STDERR_FILENO, note, sizeof note - 1);
  (void)ignored;
  hakd_train_request_stop(signo);
}

static void install_stop_handlers(void) {
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART; /* file writes and waits go on; the trainer polls the request */
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGTERM, &sa, NULL);
}

/* Prints the argument so that a POSIX shell reads it back unchanged. */
static void print_shell_word(FILE *out, const char *s) {
  if (*s && strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+=.,/:@%") == strlen(s)) {
    fputs(s, out);
    return;
  }
  fputc('\'', out);
  for (; *s; s++)
    if (*s == '\'')
      fputs("'\\''", out);
    else
      fputc(*s, out);
  fputc('\'', out);
}

/* The command line of this run with --resume replaced by --resume auto. */
static void print_resume_command(FILE *out, int argc, char **argv) {
  print_shell_word(out, command_program);
  fputc(' ', out);
  print_shell_word(out, argv[0]);
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--resume")) {
      i++;
      continue;
    }
    if (!strncmp(argv[i], "--resume=", 9)) continue;
    fputc(' ', out);
    print_shell_word(out, argv[i]);
  }
  fputs(" --resume auto\n", out);
}

static int run_ranks(int argc, char **argv, int distill);

/* Under a launcher (mpirun) the processes form one data-parallel run: MPI starts here (or, in a
 * build without MPI, the launch is refused with the reason) and ends after the run. Rank 0 alone
 * prints; every rank returns the same status (the trainer agrees on failures). */
static int run(int argc, char **argv, int distill) {
  if (hakd_dist_launcher_size() == 0) return run_ranks(argc, argv, distill);
  if (hakd_dist_init(NULL, NULL)) return command_fail(NULL);
  int status = run_ranks(argc, argv, distill);
  hakd_dist_finalize();
  return status;
}

static int run_ranks(int argc, char **argv, int distill) {
  int quiet = hakd_dist_rank() != 0;
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      if (!quiet) usage(stdout, argv[0], distill);
      return 0;
    }
  hakd_config c;
  if (command_parse_config(argc, argv, &c, distill)) return 1;
  hakd_train_result r;
  install_stop_handlers();
  int rc = hakd_train_run(&c, distill, stdout, &r);
  if (quiet) return rc == HAKD_EINTERRUPTED ? 128 + r.stop_signal : rc ? 1 : 0;
  if (rc == HAKD_EINTERRUPTED) {
    fflush(stdout);
    fprintf(stderr, "hakd: %s\nhakd: resume with:\n  ", hakd_error_message());
    print_resume_command(stderr, argc, argv);
    /* The shell convention for a process ended by a signal, so scripts and schedulers see it. */
    return 128 + r.stop_signal;
  }
  if (rc) return command_fail(NULL);
  printf("done: %lld iterations, final mIoU %.2f, best mIoU %.2f; weights in %s/best.safetensors\n",
         (long long)r.iters_done, 100 * r.final_miou, 100 * r.best_miou, c.work_dir);
  return 0;
}

static int cmd_train(int argc, char **argv) { return run(argc, argv, 0); }
static int cmd_distill(int argc, char **argv) { return run(argc, argv, 1); }

HAKD_COMMAND("train", "train a segmentation model on labels", cmd_train)
HAKD_COMMAND("distill", "distill a teacher into a student (none|kd|cwd|fitnet|heteroakd)", cmd_distill)
