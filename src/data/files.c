#include "data/files.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hakd/error.h"

int hakd__strings_push_owned(hakd__strings *list, char *s) {
  if (!s) return hakd_error(HAKD_ENOMEM, "out of memory listing files");
  if (list->count == list->capacity) {
    int64_t capacity = list->capacity ? 2 * list->capacity : 64;
    char **items = realloc(list->items, (size_t)capacity * sizeof *items);
    if (!items) {
      free(s);
      return hakd_error(HAKD_ENOMEM, "out of memory listing files");
    }
    list->items = items;
    list->capacity = capacity;
  }
  list->items[list->count++] = s;
  return 0;
}

int hakd__strings_push(hakd__strings *list, const char *s) { return hakd__strings_push_owned(list, strdup(s)); }

static int compare_strings(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

void hakd__strings_sort(hakd__strings *list) {
  if (list->count > 1) qsort(list->items, (size_t)list->count, sizeof *list->items, compare_strings);
}

void hakd__strings_free(hakd__strings *list) {
  for (int64_t i = 0; i < list->count; i++) free(list->items[i]);
  free(list->items);
  list->items = NULL;
  list->count = list->capacity = 0;
}

char *hakd__strdup_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char *s = malloc((size_t)n + 1);
  if (!s) return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}

char *hakd__path_join(const char *dir, const char *name) {
  if (name[0] == '/' || !dir[0]) return strdup(name);
  size_t n = strlen(dir);
  return hakd__strdup_printf("%s%s%s", dir, dir[n - 1] == '/' ? "" : "/", name);
}

char *hakd__path_stem(const char *path) {
  const char *base = strrchr(path, '/');
  base = base ? base + 1 : path;
  const char *dot = strrchr(base, '.');
  size_t n = dot && dot != base ? (size_t)(dot - base) : strlen(base);
  char *stem = malloc(n + 1);
  if (!stem) return NULL;
  memcpy(stem, base, n);
  stem[n] = '\0';
  return stem;
}

int hakd__is_dir(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

int hakd__is_file(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

int hakd__make_dirs(const char *path) {
  char *buf = strdup(path);
  if (!buf) return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  for (char *p = buf + 1;; p++) {
    if (*p == '/' || *p == '\0') {
      char saved = *p;
      *p = '\0';
      if (mkdir(buf, 0777) != 0 && errno != EEXIST) {
        int err = errno;
        free(buf);
        return hakd_error(HAKD_EIO, "%s: cannot create directory: %s", path, strerror(err));
      }
      *p = saved;
      if (saved == '\0') break;
    }
  }
  free(buf);
  if (!hakd__is_dir(path)) return hakd_error(HAKD_EIO, "%s: exists and is not a directory", path);
  return 0;
}

static int has_suffix(const char *name, const char *suffix) {
  size_t n = strlen(name), m = strlen(suffix);
  return n > m && memcmp(name + n - m, suffix, m) == 0;
}

int hakd__list_dir(hakd__strings *out, const char *dir, int want_dirs, const char *const *suffixes) {
  DIR *d = opendir(dir);
  if (!d) return hakd_error(HAKD_ENOTFOUND, "%s: cannot open directory: %s", dir, strerror(errno));
  hakd__strings found = {0};
  int status = 0;
  struct dirent *entry;
  while (status == 0 && (entry = readdir(d)) != NULL) {
    const char *name = entry->d_name;
    if (name[0] == '.') continue;
    int matches = 0;
    if (!want_dirs) {
      for (const char *const *s = suffixes; *s && !matches; s++) matches = has_suffix(name, *s);
      if (!matches) continue;
    }
    char *path = hakd__path_join(dir, name);
    if (!path) {
      status = hakd_error(HAKD_ENOMEM, "%s: out of memory", dir);
      break;
    }
    int keep = want_dirs ? hakd__is_dir(path) : hakd__is_file(path);
    free(path);
    if (keep) status = hakd__strings_push(&found, name);
  }
  closedir(d);
  hakd__strings_sort(&found);
  for (int64_t i = 0; status == 0 && i < found.count; i++) {
    status = hakd__strings_push_owned(out, found.items[i]);
    found.items[i] = NULL;
  }
  hakd__strings_free(&found);
  return status;
}

int hakd__read_lines(hakd__strings *out, int64_t **line_numbers, const char *path) {
  FILE *fp = fopen(path, "r");
  if (!fp) return hakd_error(HAKD_ENOTFOUND, "%s: cannot open: %s", path, strerror(errno));
  char *line = NULL;
  size_t capacity = 0;
  ssize_t len;
  int64_t number = 0, *numbers = NULL, numbers_capacity = 0;
  int status = 0;
  while (status == 0 && (len = getline(&line, &capacity, fp)) >= 0) {
    number++;
    char *start = line, *end = line + len;
    while (end > start && (end[-1] == '\n' || end[-1] == '\r' || end[-1] == ' ' || end[-1] == '\t')) end--;
    while (start < end && (*start == ' ' || *start == '\t')) start++;
    if (start == end) continue;
    *end = '\0';
    if (line_numbers && out->count >= numbers_capacity) {
      numbers_capacity = numbers_capacity ? 2 * numbers_capacity : 64;
      int64_t *grown = realloc(numbers, (size_t)numbers_capacity * sizeof *grown);
      if (!grown) {
        status = hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
        break;
      }
      numbers = grown;
    }
    if (line_numbers) numbers[out->count] = number;
    status = hakd__strings_push(out, start);
  }
  int read_error = ferror(fp);
  free(line);
  fclose(fp);
  if (status == 0 && read_error) status = hakd_error(HAKD_EIO, "%s: read error", path);
  if (status != 0 || !line_numbers)
    free(numbers);
  else
    *line_numbers = numbers;
  return status;
}
