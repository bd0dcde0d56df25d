/* Interrupted training: SIGINT/SIGTERM stop after the iteration with a checkpoint and the
 * resume command; SIGKILL at every step of a checkpoint save and at arbitrary moments leaves a
 * pair that --resume auto continues from; a full disk is reported and the previous checkpoint
 * survives. Each case compares the final weights and optimizer state bit for bit with an
 * uninterrupted run. Runs that are killed are the built CLI ($HAKD_CLI) in a child process:
 * fork + exec gives each a fresh process (a forked copy of this one would inherit OpenMP's
 * thread pool, which libgomp does not support after fork). */
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "train_testutil.h"
#include "hakd/config.h"
#include "hakd/data.h"
#include "hakd/error.h"
#include "hakd/io.h"
#include "hakd/train.h"
#include "train/checkpoint.h"

#define ITERS "12"


static const char *cli_path(void) {
  const char *cli = getenv("HAKD_CLI");
  return cli ? cli : HAKD_BINARY_DIR "/hakd";
}

static void work_dir(char *out, size_t size, const char *name) { snprintf(out, size, "%s/%s", test_tmpdir(), name); }

/* Starts `hakd train <the tiny run> <extra...>` in work dir `dir`. stdout goes to *out_pipe when
 * given (else /dev/null), stderr to err_path (else /dev/null). crash_at sets
 * HAKD_TEST_CRASH_AT; fsize > 0 sets RLIMIT_FSIZE (with SIGXFSZ ignored, writes fail EFBIG). */
static pid_t spawn_train(const char *dir, const char *const *extra, const char *crash_at, long fsize, int *out_pipe,
                         const char *err_path) {
  const char *root = make_dataset();
  const char *args[64] = {cli_path(), "train", "--model", "deeplabv3-r18-d8", "--width", "0.125", "--dataset",
                          "generic", "--data-root", root, "--crop", "32x32", "--batch", "2", "--workers", "1",
                          "--iters", ITERS, "--save-every", "1", "--log-every", "1", "--lr", "0.01", "--work-dir",
                          dir};
  int n = 0;
  while (args[n]) n++;
  for (int i = 0; extra && extra[i] && n < 62; i++) args[n++] = extra[i];
  args[n] = NULL;
  int fds[2] = {-1, -1};
  if (out_pipe && pipe(fds)) return -1;
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    if (crash_at)
      setenv("HAKD_TEST_CRASH_AT", crash_at, 1);
    else
      unsetenv("HAKD_TEST_CRASH_AT");
    if (fsize > 0) {
      signal(SIGXFSZ, SIG_IGN);
      struct rlimit rl = {(rlim_t)fsize, (rlim_t)fsize};
      setrlimit(RLIMIT_FSIZE, &rl);
    }
    int null_fd = open("/dev/null", O_WRONLY);
    int err_fd = err_path ? open(err_path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : null_fd;
    dup2(out_pipe ? fds[1] : null_fd, STDOUT_FILENO);
    dup2(err_fd, STDERR_FILENO);
    if (out_pipe) close(fds[0]);
    execv(args[0], (char *const *)args);
    _exit(127);
  }
  if (out_pipe) {
    close(fds[1]);
    *out_pipe = fds[0];
  }
  return pid;
}

static int wait_status(pid_t pid) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
  }
  return status;
}

/* Reads the child's stdout until a line starting with `prefix` arrives (0), or EOF (-1). */
static int read_until_line(int fd, const char *prefix) {
  char line[2048];
  size_t n = 0;
  char c;
  while (read(fd, &c, 1) == 1) {
    if (c != '\n') {
      if (n + 1 < sizeof line) line[n++] = c;
      continue;
    }
    line[n] = '\0';
    n = 0;
    if (!strncmp(line, prefix, strlen(prefix))) return 0;
  }
  return -1;
}

static void drain(int fd) {
  char buf[4096];
  while (read(fd, buf, sizeof buf) > 0) {
  }
  close(fd);
}


/* 1 when dir_a/name and dir_b/name hold the same float tensors bit for bit. */
static int same_floats(const char *dir_a, const char *dir_b, const char *name) {
  char pa[1200], pb[1200];
  snprintf(pa, sizeof pa, "%s/%s", dir_a, name);
  snprintf(pb, sizeof pb, "%s/%s", dir_b, name);
  float *va, *vb;
  int64_t na, nb;
  int ok = !read_all_floats(pa, &va, &na) & !read_all_floats(pb, &vb, &nb);
  ok = ok && na == nb && na > 0 && !memcmp(va, vb, (size_t)na * sizeof(float));
  if (!ok) test_fail(__FILE__, __LINE__, "%s differs between %s and %s", name, dir_a, dir_b);
  free(va);
  free(vb);
  return ok;
}

/* The iteration of the newest complete checkpoint pair in dir, -1 when there is none. */
static long long latest_iteration(const char *dir) {
  char path[1200];
  if (checkpoint_find_latest(dir, path, sizeof path, NULL) != 1) return -1;
  hakd_st_file *f;
  if (hakd_st_open(path, &f)) return -2;
  const char *v = hakd_st_metadata(f, "iteration");
  long long it = v ? atoll(v) : -3;
  hakd_st_close(f);
  return it;
}

/* Files in dir whose name contains `part`. */
static int count_files(const char *dir, const char *part) {
  DIR *d = opendir(dir);
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)))
    if (strstr(e->d_name, part)) n++;
  if (d) closedir(d);
  return n;
}

/* The uninterrupted reference run (same flags) in dir; 1 on success. */
static int straight_run(const char *dir) {
  int status = wait_status(spawn_train(dir, NULL, NULL, 0, NULL, NULL));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    test_fail(__FILE__, __LINE__, "straight run failed: status 0x%x", status);
    return 0;
  }
  return 1;
}

static const char *const resume_auto[] = {"--resume", "auto", NULL};

/* Every step of a save, each in a process killed there and continued by the next with
 * --resume auto; then one run to the end. The 7 steps in order, then the 3 before the links
 * again: the first time those ran with no checkpoint (or only the new one) on disk, so every
 * step is also hit with an older pair present. 10 kills in all. */
TEST(sigkill_at_every_step_of_a_save_resumes_bit_identically) {
  ASSERT_TRUE(make_dataset() != NULL);
  char straight[700], dir[700];
  work_dir(straight, sizeof straight, "kill_straight");
  work_dir(dir, sizeof dir, "kill_steps");
  ASSERT_TRUE(straight_run(straight));
  static const char *const points[] = {"begin",         "state-written",     "model-written", "latest-state-linked",
                                       "latest-linked", "old-model-removed", "done",          "begin",
                                       "state-written", "model-written"};
  const int n_kills = (int)(sizeof points / sizeof points[0]);
  long long committed = -1;
  for (int k = 0; k < n_kills; k++) {
    const char *point = points[k];
    int status = wait_status(spawn_train(dir, resume_auto, point, 0, NULL, NULL));
    if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGKILL)
      test_fail(__FILE__, __LINE__, "run %d (crash at %s) was not killed: status 0x%x", k, point, status);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
    long long it = latest_iteration(dir);
    /* Killed from the model file's rename on, the new pair counts (one iteration more);
     * before it, the old one. */
    long long expect = k % 7 >= 2 ? (committed < 0 ? 1 : committed + 1) : committed;
    if (it != expect)
      test_fail(__FILE__, __LINE__, "after a kill at %s the newest pair is iteration %lld, expected %lld", point, it,
                expect);
    ASSERT_EQ_INT(it, expect);
    committed = it;
  }
  ASSERT_EQ_INT(committed, 6);
  int status = wait_status(spawn_train(dir, resume_auto, NULL, 0, NULL, NULL));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(same_floats(straight, dir, "latest.safetensors"));
  ASSERT_TRUE(same_floats(straight, dir, "latest.state.safetensors"));
  /* The completed run leaves one pair, no temporary files of the killed writers. */
  ASSERT_EQ_INT(count_files(dir, ".tmp"), 0);
  ASSERT_EQ_INT(count_files(dir, "iter_"), 2);
}

/* SIGKILL at moments chosen by the clock (inside the step, inside a file write, between files),
 * six times in a row, then one run to the end. */
TEST(sigkill_at_arbitrary_moments_resumes_bit_identically) {
  ASSERT_TRUE(make_dataset() != NULL);
  char straight[700], dir[700];
  work_dir(straight, sizeof straight, "moments_straight");
  work_dir(dir, sizeof dir, "moments");
  ASSERT_TRUE(straight_run(straight));
  /* Delays after the child logs its first iteration; an iteration (with its fsynced save) takes
   * about 20-60 ms here, so these land in different phases of it. */
  static const int delays_us[] = {0, 4000, 9000, 15000, 23000, 37000};
  int killed = 0, mid_write = 0;
  for (size_t k = 0; k < sizeof delays_us / sizeof delays_us[0]; k++) {
    int out;
    pid_t pid = spawn_train(dir, resume_auto, NULL, 0, &out, NULL);
    ASSERT_TRUE(pid > 0);
    int logged = read_until_line(out, "iter ") == 0;
    if (logged) {
      struct timespec ts = {0, delays_us[k] * 1000L};
      nanosleep(&ts, NULL);
      kill(pid, SIGKILL);
    }
    drain(out);
    int status = wait_status(pid);
    killed += WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL;
    /* a temporary file of this child left behind: the kill landed inside a file write (the
     * next completed save removes it) */
    char own_tmp[32];
    snprintf(own_tmp, sizeof own_tmp, ".tmp.%ld", (long)pid);
    mid_write += count_files(dir, own_tmp) > 0;
  }
  printf("%d of %zu clock-chosen SIGKILLs landed before the run ended, %d of them inside a file write\n", killed,
         sizeof delays_us / sizeof delays_us[0], mid_write);
  ASSERT_TRUE(killed >= 1);
  int status = wait_status(spawn_train(dir, resume_auto, NULL, 0, NULL, NULL));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_TRUE(same_floats(straight, dir, "latest.safetensors"));
  ASSERT_TRUE(same_floats(straight, dir, "latest.state.safetensors"));
  ASSERT_EQ_INT(count_files(dir, ".tmp"), 0);
}

/* SIGINT to the CLI: it finishes the iteration, saves, exits 130 and prints the command that
 * resumes the run. */
TEST(sigint_cli_saves_and_prints_resume_command) {
  ASSERT_TRUE(make_dataset() != NULL);
  char dir[700], err_path[800];
  work_dir(dir, sizeof dir, "sigint");
  snprintf(err_path, sizeof err_path, "%s/sigint.err", test_tmpdir());
  int out;
  static const char *const more_iters[] = {"--iters", "40", "--save-every", "0", NULL};
  pid_t pid = spawn_train(dir, more_iters, NULL, 0, &out, err_path);
  ASSERT_TRUE(pid > 0);
  /* A one-page pipe that is not read blocks the child's log after a few dozen lines, so the
   * signal surely arrives before iteration 40 however the machine schedules us. */
  fcntl(out, F_SETPIPE_SZ, 4096);
  ASSERT_EQ_INT(read_until_line(out, "iter 1/"), 0);
  kill(pid, SIGINT);
  drain(out);
  int status = wait_status(pid);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 130)
    test_fail(__FILE__, __LINE__, "expected exit status 130, got 0x%x", status);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 130);
  long long it = latest_iteration(dir);
  ASSERT_TRUE(it >= 1 && it < 40);
  char err[8192] = {0};
  FILE *f = fopen(err_path, "r");
  ASSERT_TRUE(f != NULL);
  size_t got = fread(err, 1, sizeof err - 1, f);
  fclose(f);
  err[got] = '\0';
  char expect[2048], ckpt[64];
  snprintf(expect, sizeof expect,
           "%s train --model deeplabv3-r18-d8 --width 0.125 --dataset generic --data-root %s --crop 32x32 --batch 2 "
           "--workers 1 --iters " ITERS " --save-every 1 --log-every 1 --lr 0.01 --work-dir %s --iters 40 --save-every 0 "
           "--resume auto\n",
           cli_path(), make_dataset(), dir);
  snprintf(ckpt, sizeof ckpt, "iter_%lld.safetensors", it);
  if (!strstr(err, "stopped by SIGINT") || !strstr(err, ckpt) || !strstr(err, expect))
    test_fail(__FILE__, __LINE__, "stderr lacks the stop message, %s or the resume command:\n%s\nexpected:\n%s", ckpt, err,
              expect);
  ASSERT_TRUE(strstr(err, expect) != NULL);
}

/* The trainer's own handling of a stop request made from a signal handler, in process: the
 * handler runs when the log shows iteration 2; the run saves iteration 2, returns
 * HAKD_EINTERRUPTED, and --resume auto then ends bit-identical to a straight run. */
static void on_sigterm(int signo) { hakd_train_request_stop(signo); }

static ssize_t signalling_write(void *cookie, const char *buf, size_t size) {
  (void)cookie;
  /* the trainer logs "iter 2/4 ..." once iteration 2 is done */
  if (size >= 7 && !memcmp(buf, "iter 2/", 7)) raise(SIGTERM);
  return (ssize_t)size;
}

/* The shared tiny run (deeplabv3-r18-d8), logging every iteration: the SIGTERM hook above reads
 * the "iter 2/" line. */
static void term_config(hakd_config *c, const char *root, const char *work) {
  tiny_config(c, root, "deeplabv3-r18-d8", work);
  c->log_every = 1;
}

TEST(sigterm_stops_after_the_iteration_and_resumes_bit_identically) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  hakd_config a, b;
  term_config(&a, root, "term_straight");
  term_config(&b, root, "term");
  hakd_train_result r;
  FILE *null_log = fopen("/dev/null", "w");
  ASSERT_OK(hakd_train_run(&a, 0, null_log, &r));
  struct sigaction sa, old;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_sigterm;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, &old);
  FILE *log = fopencookie(NULL, "w", (cookie_io_functions_t){NULL, signalling_write, NULL, NULL});
  ASSERT_TRUE(log != NULL);
  setvbuf(log, NULL, _IOLBF, 0);
  int rc = hakd_train_run(&b, 0, log, &r);
  fclose(log);
  sigaction(SIGTERM, &old, NULL);
  ASSERT_EQ_INT(rc, HAKD_EINTERRUPTED);
  ASSERT_EQ_INT(r.stop_signal, SIGTERM);
  ASSERT_EQ_INT(r.iters_done, 2);
  ASSERT_TRUE(strstr(r.checkpoint, "iter_2.safetensors") != NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "SIGTERM") != NULL);
  snprintf(b.resume, sizeof b.resume, "auto");
  ASSERT_OK(hakd_train_run(&b, 0, null_log, &r));
  fclose(null_log);
  ASSERT_EQ_INT(r.iters_done, 4);
  ASSERT_TRUE(same_floats(a.work_dir, b.work_dir, "latest.safetensors"));
  ASSERT_TRUE(same_floats(a.work_dir, b.work_dir, "latest.state.safetensors"));
}

static int read_file_bytes(const char *path, char **data, long *size) {
  FILE *f = fopen(path, "rb");
  if (!f) return -1;
  fseek(f, 0, SEEK_END);
  *size = ftell(f);
  fseek(f, 0, SEEK_SET);
  *data = malloc((size_t)*size + 1);
  size_t got = fread(*data, 1, (size_t)*size, f);
  fclose(f);
  return got == (size_t)*size ? 0 : -1;
}

/* A full disk (a file-size limit below the checkpoint's size) while saving iteration 3: the
 * error names the file and the cause, the exit status is 1, and the pair of iteration 2 is
 * byte for byte what it was, with nothing half-written beside it. */
TEST(full_disk_is_reported_and_previous_checkpoint_survives) {
  ASSERT_TRUE(make_dataset() != NULL);
  char dir[700], err_path[800];
  work_dir(dir, sizeof dir, "full");
  snprintf(err_path, sizeof err_path, "%s/full.err", test_tmpdir());
  static const char *const first[] = {"--stop-after", "2", NULL};
  int status = wait_status(spawn_train(dir, first, NULL, 0, NULL, NULL));
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  ASSERT_EQ_INT(latest_iteration(dir), 2);
  const char *names[] = {"iter_2.safetensors", "iter_2.state.safetensors"};
  char *before[2], *after[2];
  long before_n[2], after_n[2];
  for (int i = 0; i < 2; i++) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    ASSERT_EQ_INT(read_file_bytes(path, &before[i], &before_n[i]), 0);
    ASSERT_TRUE(before_n[i] > 300000); /* the limit below must cut the checkpoint files */
  }
  status = wait_status(spawn_train(dir, resume_auto, NULL, 300000, NULL, err_path));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 1)
    test_fail(__FILE__, __LINE__, "expected exit status 1, got 0x%x", status);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 1);
  char *err;
  long err_n;
  ASSERT_EQ_INT(read_file_bytes(err_path, &err, &err_n), 0);
  err[err_n] = '\0';
  int named = strstr(err, "iter_3.state.safetensors") && strstr(err, "File too large") &&
              strstr(err, "checkpoint of iteration 2") && strstr(err, "is intact");
  if (!named) test_fail(__FILE__, __LINE__, "the error does not name the file, the cause and what is left:\n%s", err);
  free(err);
  ASSERT_TRUE(named);
  for (int i = 0; i < 2; i++) {
    char path[1200];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    ASSERT_EQ_INT(read_file_bytes(path, &after[i], &after_n[i]), 0);
    ASSERT_EQ_INT(after_n[i], before_n[i]);
    ASSERT_TRUE(!memcmp(before[i], after[i], (size_t)before_n[i]));
    free(before[i]);
    free(after[i]);
  }
  ASSERT_EQ_INT(latest_iteration(dir), 2);
  ASSERT_EQ_INT(count_files(dir, ".tmp"), 0);
  ASSERT_EQ_INT(count_files(dir, "iter_3"), 0);
}
