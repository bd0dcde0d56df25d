#include "io/fileio.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/error.h"

int hakd__read_file(const char *path, uint8_t **data, size_t *size) {
  *data = NULL;
  *size = 0;
  FILE *fp = fopen(path, "rb");
  if (!fp) return hakd_error(errno == ENOENT ? HAKD_ENOTFOUND : HAKD_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  if (fstat(fileno(fp), &st) != 0 || !S_ISREG(st.st_mode)) {
    fclose(fp);
    return hakd_error(HAKD_EIO, "%s: not a regular file", path);
  }
  size_t n = (size_t)st.st_size;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    fclose(fp);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory reading %zu bytes", path, n);
  }
  size_t got = fread(buf, 1, n, fp);
  int read_failed = ferror(fp);
  fclose(fp);
  if (read_failed || got != n) {
    free(buf);
    return hakd_error(HAKD_EIO, "%s: read %zu of %zu bytes", path, got, n);
  }
  *data = buf;
  *size = n;
  return 0;
}

int hakd__atomic_open(hakd__atomic_file *af, const char *path) {
  memset(af, 0, sizeof *af);
  size_t n = strlen(path) + 32;
  af->path = malloc(strlen(path) + 1);
  af->tmp_path = malloc(n);
  if (!af->path || !af->tmp_path) {
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  strcpy(af->path, path);
  snprintf(af->tmp_path, n, "%s.tmp.%ld", path, (long)getpid());
  af->fp = fopen(af->tmp_path, "wb");
  if (!af->fp) {
    int status = hakd_error(HAKD_EIO, "%s: cannot create %s: %s", path, af->tmp_path, strerror(errno));
    free(af->path);
    free(af->tmp_path);
    memset(af, 0, sizeof *af);
    return status;
  }
  return 0;
}

static void atomic_release(hakd__atomic_file *af) {
  free(af->path);
  free(af->tmp_path);
  memset(af, 0, sizeof *af);
}

void hakd__atomic_abort(hakd__atomic_file *af) {
  if (af->fp) fclose(af->fp);
  if (af->tmp_path) unlink(af->tmp_path);
  atomic_release(af);
}

/* Makes the rename itself durable; best effort because some file systems refuse to fsync
 * a directory, and the data is already safe under its new name on those that matter. */
static void sync_parent_directory(const char *path) {
  const char *slash = strrchr(path, '/');
  char dir[4096];
  if (!slash) {
    strcpy(dir, ".");
  } else if (slash == path) {
    strcpy(dir, "/");
  } else {
    size_t n = (size_t)(slash - path);
    if (n >= sizeof dir) return;
    memcpy(dir, path, n);
    dir[n] = '\0';
  }
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  (void)fsync(fd);
  close(fd);
}

int hakd__atomic_commit(hakd__atomic_file *af) {
  int failed = fflush(af->fp) != 0 || ferror(af->fp);
  int saved_errno = errno;
  if (!failed && fsync(fileno(af->fp)) != 0) {
    failed = 1;
    saved_errno = errno;
  }
  if (fclose(af->fp) != 0 && !failed) {
    failed = 1;
    saved_errno = errno;
  }
  af->fp = NULL;
  if (failed) {
    int status = hakd_error(HAKD_EIO, "%s: writing %s failed: %s", af->path, af->tmp_path, strerror(saved_errno));
    hakd__atomic_abort(af);
    return status;
  }
  if (rename(af->tmp_path, af->path) != 0) {
    int status = hakd_error(HAKD_EIO, "%s: cannot rename %s onto it: %s", af->path, af->tmp_path, strerror(errno));
    hakd__atomic_abort(af);
    return status;
  }
  sync_parent_directory(af->path);
  atomic_release(af);
  return 0;
}

int hakd_output_check(const char *path) {
  if (!path || !*path) return hakd_error(HAKD_EINVAL, "empty output path");
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return hakd_error(HAKD_EIO, "%s: is a folder, expected a file name to write", path);
  size_t n = strlen(path) + 32;
  char *tmp = malloc(n);
  if (!tmp) return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
  FILE *fp = fopen(tmp, "wb");
  int saved_errno = errno;
  if (fp) {
    fclose(fp);
    unlink(tmp);
  }
  free(tmp);
  if (!fp) {
    const char *slash = strrchr(path, '/');
    return hakd_error(HAKD_EIO, "%s: cannot write a file in folder '%.*s': %s", path, slash ? (int)(slash - path) : 1,
                      slash ? path : ".", strerror(saved_errno));
  }
  return 0;
}

int hakd_file_write_atomic(const char *path, const void *data, size_t size) {
  hakd__atomic_file af;
  int status = hakd__atomic_open(&af, path);
  if (status) return status;
  if (size && fwrite(data, 1, size, af.fp) != size) {
    status = hakd_error(HAKD_EIO, "%s: writing %s failed: %s", path, af.tmp_path, strerror(errno));
    hakd__atomic_abort(&af);
    return status;
  }
  return hakd__atomic_commit(&af);
}
