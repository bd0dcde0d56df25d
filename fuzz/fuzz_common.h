/* Shared by the fuzz harnesses (one harness per fuzz_<name>.c).
 *
 * The readers under test take a path (they mmap or read the file themselves), so each input
 * is written to one memfd per process and handed over as /proc/self/fd/N: no disk traffic,
 * and the reader runs exactly as it does on a user's file.
 *
 * Built two ways (fuzz/CMakeLists.txt):
 * - with clang and -fsanitize=fuzzer (HAKD_FUZZ=ON, build-fuzz/): libFuzzer's main drives
 *   LLVMFuzzerTestOneInput;
 * - without libFuzzer (the normal build, any compiler): the main below replays every file
 *   and directory named on the command line once, which is how `make test` keeps the seed
 *   corpora and every crashing input as regression tests.
 *
 * Besides "no crash, no leak, no UB", every harness checks the readers' contract: an error
 * returns a negative status and a message that names the file. A violation aborts, which
 * libFuzzer reports as a crash and the replay as a failed test. */
#ifndef HAKD_FUZZ_COMMON_H
#define HAKD_FUZZ_COMMON_H

#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/error.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes the input to this process's memfd and returns a path that opens it. */
static const char *fuzz_input_path(const uint8_t *data, size_t size) {
  static int fd = -1;
  static char path[64];
  if (fd < 0) {
    fd = memfd_create("hakd-fuzz-input", MFD_CLOEXEC);
    if (fd < 0) {
      perror("fuzz: memfd_create");
      abort();
    }
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
  }
  /* Truncate first: a shorter input must not keep the previous input's tail. */
  if (ftruncate(fd, 0) != 0 || (size && pwrite(fd, data, size, 0) != (ssize_t)size)) {
    perror("fuzz: writing the memfd");
    abort();
  }
  return path;
}

/* A reader failed with status: it must be a known negative code with a message naming path. */
static void fuzz_check_error(const char *what, int status, const char *path) {
  const char *message = hakd_error_message();
  if (status < HAKD_ERANGE || status >= 0) {
    fprintf(stderr, "fuzz: %s returned status %d, not a hakd_status error (message: %s)\n", what, status, message);
    abort();
  }
  if (!strstr(message, path)) {
    fprintf(stderr, "fuzz: %s failed (%s) with a message that does not name the file %s: '%s'\n", what,
            hakd_strerror(status), path, message);
    abort();
  }
}

/* Fails the run: the harness found the library breaking its own promise. */
#define FUZZ_ASSERT(cond)                                                               \
  do {                                                                                  \
    if (!(cond)) {                                                                      \
      fprintf(stderr, "fuzz: %s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      abort();                                                                          \
    }                                                                                   \
  } while (0)

/* Reads path as an image through hakd_image_read and checks the contract: a failure leaves no
 * pixels and names the file; a success holds (H, W, C) bytes (the last one is touched). */
static inline void fuzz_check_image_read(const char *path) {
  hakd_image img;
  int status = hakd_image_read(path, &img);
  if (status) {
    FUZZ_ASSERT(img.pixels == NULL);
    fuzz_check_error("hakd_image_read", status, path);
  } else {
    FUZZ_ASSERT(img.width > 0 && img.height > 0 && (img.channels == 1 || img.channels == 3));
    volatile uint8_t last = img.pixels[(size_t)img.width * img.height * img.channels - 1];
    (void)last;
    hakd_image_free(&img);
  }
}

#ifndef HAKD_FUZZ_LIBFUZZER
/* Replay main: every argument is an input file or a directory of input files (not recursive). */
static int fuzz_replay_file(const char *path, int *count) {
  FILE *fp = fopen(path, "rb");
  if (!fp) {
    fprintf(stderr, "fuzz replay: cannot open %s\n", path);
    return 1;
  }
  uint8_t *buf = NULL;
  size_t size = 0, cap = 0, got;
  do {
    if (size == cap) {
      cap = cap ? 2 * cap : 4096;
      uint8_t *grown = realloc(buf, cap);
      if (!grown) {
        fprintf(stderr, "fuzz replay: out of memory reading %s\n", path);
        free(buf);
        fclose(fp);
        return 1;
      }
      buf = grown;
    }
    got = fread(buf + size, 1, cap - size, fp);
    size += got;
  } while (got > 0);
  fclose(fp);
  /* Printed before the run, so a crash's log names the input that caused it. */
  fprintf(stderr, "replay %s (%zu bytes)\n", path, size);
  hakd_error_clear();
  LLVMFuzzerTestOneInput(buf, size);
  free(buf);
  (*count)++;
  return 0;
}


int main(int argc, char **argv) {
  int count = 0, failed = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE|DIR...  (replays each input once through the harness)\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "fuzz replay: %s does not exist\n", argv[i]);
      failed = 1;
      continue;
    }
    if (!S_ISDIR(st.st_mode)) {
      failed |= fuzz_replay_file(argv[i], &count);
      continue;
    }
    /* Sorted, so that runs replay in the same order everywhere. */
    struct dirent **entries;
    int n = scandir(argv[i], &entries, NULL, alphasort);
    if (n < 0) {
      fprintf(stderr, "fuzz replay: cannot list %s\n", argv[i]);
      failed = 1;
      continue;
    }
    for (int k = 0; k < n; k++) {
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", argv[i], entries[k]->d_name);
      if (entries[k]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode))
        failed |= fuzz_replay_file(path, &count);
      free(entries[k]);
    }
    free(entries);
  }
  printf("%s: replayed %d inputs%s\n", argv[0], count, failed ? ", some could not be read" : "");
  /* An empty corpus would make the regression test pass without testing anything. */
  return failed || count == 0;
}
#endif

#endif
