/* Internal strict JSON reader (RFC 8259) used for safetensors headers: the grammar is checked
 * exactly, strings are UTF-8 validated and their escapes decoded, nesting depth is bounded so
 * a hostile header cannot exhaust the stack. */
#ifndef HAKD_IO_JSON_H
#define HAKD_IO_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
  HAKD__JSON_NULL,
  HAKD__JSON_BOOL,
  HAKD__JSON_NUMBER,
  HAKD__JSON_STRING,
  HAKD__JSON_ARRAY,
  HAKD__JSON_OBJECT
} hakd__json_type;

typedef struct hakd__json hakd__json;
struct hakd__json {
  hakd__json_type type;
  int boolean;
  double number;
  int is_int;      /* number literal without fraction or exponent that fits int64 */
  int64_t integer; /* valid when is_int */
  char *string;    /* decoded, NUL-terminated (may hold an inner NUL: see string_len) */
  size_t string_len;
  size_t count;       /* array elements or object members */
  hakd__json *items;  /* (count) array elements or object values */
  char **keys;        /* (count) object keys, decoded and NUL-terminated */
  size_t *key_lens;   /* (count) byte lengths of keys */
};

/* Parses text[0..len) (surrounding whitespace allowed) into *out. On failure returns
 * HAKD_EFORMAT with a message "<what>: invalid JSON at byte N: <problem>" (or HAKD_ENOMEM)
 * and leaves *out empty. Duplicate object keys are kept; callers decide. */
int hakd__json_parse(const char *text, size_t len, const char *what, hakd__json *out);
void hakd__json_free(hakd__json *v);
/* First member named key of an object, or NULL. */
const hakd__json *hakd__json_get(const hakd__json *object, const char *key);
/* 1 when the NUL-terminated s is well-formed UTF-8 (what the parser accepts in strings). */
int hakd__json_utf8_valid(const char *s);
/* "a string", "an array", ... for messages. */
const char *hakd__json_type_name(hakd__json_type type);

#endif
