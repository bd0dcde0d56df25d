/* Error codes and the last error message.
 * Library functions return 0 or a negative hakd_status and set a message naming the file,
 * tensor or key involved; only the CLI decides to exit. */
#ifndef HAKD_ERROR_H
#define HAKD_ERROR_H

#define HAKD_STATUS_MAP(X)                                   \
  X(OK, 0, "success")                                        \
  X(ENOMEM, -1, "out of memory")                             \
  X(EINVAL, -2, "invalid argument")                          \
  X(EIO, -3, "input/output error")                           \
  X(EFORMAT, -4, "malformed file")                           \
  X(ESHAPE, -5, "shape mismatch")                            \
  X(ENOTFOUND, -6, "not found")                              \
  X(ENUMERIC, -7, "non-finite value")                        \
  X(EUNSUPPORTED, -8, "unsupported")                         \
  X(ERANGE, -9, "value out of range")                      \
  X(EINTERRUPTED, -10, "interrupted")

typedef enum {
#define HAKD_STATUS_ENUM(name, code, text) HAKD_##name = code,
  HAKD_STATUS_MAP(HAKD_STATUS_ENUM)
#undef HAKD_STATUS_ENUM
} hakd_status;

/* Static description of a status code ("malformed file"). */
const char *hakd_strerror(int status);

/* Sets the calling thread's last error message (printf format) and returns `status`,
 * so library code can write `return hakd_error(HAKD_EFORMAT, "%s: truncated", path);`. */
int hakd_error(int status, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* The calling thread's last message, or "" when none was set. */
const char *hakd_error_message(void);

/* Prefixes the current message with more context ("loading x.safetensors: <old message>"). */
void hakd_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

void hakd_error_clear(void);

#endif
