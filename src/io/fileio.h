/* Internal file helpers shared by the io readers and writers: whole-file reads and atomic
 * writes (temporary file `<path>.tmp.<pid>` in the same directory, fsync, rename), so a
 * crash or error never leaves a half-written file under the final name. */
#ifndef HAKD_IO_FILEIO_H
#define HAKD_IO_FILEIO_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* Reads the whole file into a malloc'ed buffer (*data, *size; *data non-NULL even when empty).
 * Errors name the path. */
int hakd__read_file(const char *path, uint8_t **data, size_t *size);

typedef struct {
  FILE *fp;
  char *path;     /* final name */
  char *tmp_path; /* where the bytes go until commit */
} hakd__atomic_file;

/* Creates the temporary file; write through af->fp. */
int hakd__atomic_open(hakd__atomic_file *af, const char *path);
/* Flushes, fsyncs and renames onto the final path; on any failure removes the temporary
 * file, leaves a previous file at path untouched and returns HAKD_EIO naming the path. */
int hakd__atomic_commit(hakd__atomic_file *af);
/* Closes and removes the temporary file (after an error while writing). */
void hakd__atomic_abort(hakd__atomic_file *af);

#endif
