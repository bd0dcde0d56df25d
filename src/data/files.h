/* Internal file-system helpers of the data module: paths, directory listings, list files. */
#ifndef HAKD_DATA_FILES_H
#define HAKD_DATA_FILES_H

#include <stdint.h>

/* A growable array of malloc'ed strings. */
typedef struct {
  char **items;
  int64_t count, capacity;
} hakd__strings;

/* Appends a copy of s; HAKD_ENOMEM on failure. */
int hakd__strings_push(hakd__strings *list, const char *s);
/* Appends s itself (taken: freed by hakd__strings_free, also on failure). */
int hakd__strings_push_owned(hakd__strings *list, char *s);
void hakd__strings_sort(hakd__strings *list);
void hakd__strings_free(hakd__strings *list);

/* "a/b" (malloc'ed; NULL when out of memory). An absolute b is returned as is. */
char *hakd__path_join(const char *dir, const char *name);
/* printf into a malloc'ed string (NULL when out of memory). */
char *hakd__strdup_printf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* File name without directories and without the last extension, malloc'ed. */
char *hakd__path_stem(const char *path);

int hakd__is_dir(const char *path);
int hakd__is_file(const char *path);
/* Creates path and its parents (like mkdir -p); errors name the path. */
int hakd__make_dirs(const char *path);

/* Names (not paths) of the entries of dir that are directories (want_dirs) or regular
 * files ending in one of the NULL-terminated suffixes (case-sensitive), sorted. Appends to
 * out. Errors name dir. */
int hakd__list_dir(hakd__strings *out, const char *dir, int want_dirs, const char *const *suffixes);

/* Splits the file's non-empty lines (trailing '\r' and surrounding blanks removed) into
 * out, with each line's 1-based number in line_numbers (malloc'ed, may be NULL). */
int hakd__read_lines(hakd__strings *out, int64_t **line_numbers, const char *path);

#endif
