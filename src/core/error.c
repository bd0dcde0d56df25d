#include "hakd/error.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local char error_message[1024];

const char *hakd_strerror(int status) {
  switch (status) {
#define HAKD_STATUS_CASE(name, code, text) \
  case code:                               \
    return text;
    HAKD_STATUS_MAP(HAKD_STATUS_CASE)
#undef HAKD_STATUS_CASE
  }
  return "unknown error";
}

int hakd_error(int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(error_message, sizeof error_message, fmt, ap);
  va_end(ap);
  return status;
}

const char *hakd_error_message(void) { return error_message; }

void hakd_error_prefix(const char *fmt, ...) {
  char prefix[512], old[sizeof error_message];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(prefix, sizeof prefix, fmt, ap);
  va_end(ap);
  memcpy(old, error_message, sizeof old);
  /* Truncation of an over-long message is acceptable; keep the start, which names the file. */
  size_t n = strlen(prefix);
  if (n > sizeof error_message - 3) n = sizeof error_message - 3;
  memcpy(error_message, prefix, n);
  memcpy(error_message + n, ": ", 2);
  size_t rest = sizeof error_message - n - 3;
  strncpy(error_message + n + 2, old, rest);
  error_message[sizeof error_message - 1] = '\0';
}

void hakd_error_clear(void) { error_message[0] = '\0'; }
