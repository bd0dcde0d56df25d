#include "io/json.h"

#include <stdlib.h>
#include <string.h>

#include "hakd/error.h"

/* Deeper nesting than this is refused; safetensors headers need 3 levels. */
#define JSON_MAX_DEPTH 64

typedef struct {
  const unsigned char *text;
  size_t len, pos;
  const char *what;
  int status; /* first error, 0 while parsing succeeds */
} json_parser;

static int parser_fail(json_parser *p, const char *problem) {
  if (!p->status) p->status = hakd_error(HAKD_EFORMAT, "%s: invalid JSON at byte %zu: %s", p->what, p->pos, problem);
  return p->status;
}

static int parser_oom(json_parser *p) {
  if (!p->status) p->status = hakd_error(HAKD_ENOMEM, "%s: out of memory parsing JSON", p->what);
  return p->status;
}

static void skip_whitespace(json_parser *p) {
  while (p->pos < p->len) {
    unsigned char c = p->text[p->pos];
    if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
    p->pos++;
  }
}

static int peek(const json_parser *p) { return p->pos < p->len ? p->text[p->pos] : -1; }

/* Growable byte buffer for decoded strings. */
typedef struct {
  char *data;
  size_t len, cap;
} byte_buffer;

static int buffer_push(byte_buffer *b, const char *bytes, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 32;
    while (b->len + n + 1 > cap) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) return -1;
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, bytes, n);
  b->len += n;
  b->data[b->len] = '\0';
  return 0;
}

static size_t utf8_encode(char out[4], uint32_t cp) {
  if (cp < 0x80) {
    out[0] = (char)cp;
    return 1;
  }
  if (cp < 0x800) {
    out[0] = (char)(0xC0 | (cp >> 6));
    out[1] = (char)(0x80 | (cp & 0x3F));
    return 2;
  }
  if (cp < 0x10000) {
    out[0] = (char)(0xE0 | (cp >> 12));
    out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[2] = (char)(0x80 | (cp & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (cp >> 18));
  out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
  out[3] = (char)(0x80 | (cp & 0x3F));
  return 4;
}

/* Length of the well-formed UTF-8 sequence at s (n bytes available), 0 when malformed
 * (overlong forms, surrogates and code points above U+10FFFF are malformed). */
static size_t utf8_sequence_length(const unsigned char *s, size_t n) {
  uint32_t cp;
  size_t len;
  if (s[0] < 0x80) return 1;
  if ((s[0] & 0xE0) == 0xC0) {
    len = 2;
    cp = s[0] & 0x1F;
  } else if ((s[0] & 0xF0) == 0xE0) {
    len = 3;
    cp = s[0] & 0x0F;
  } else if ((s[0] & 0xF8) == 0xF0) {
    len = 4;
    cp = s[0] & 0x07;
  } else {
    return 0;
  }
  if (len > n) return 0;
  for (size_t i = 1; i < len; i++) {
    if ((s[i] & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (s[i] & 0x3F);
  }
  static const uint32_t min_for_length[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min_for_length[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

static int parse_hex4(json_parser *p, uint32_t *out) {
  if (p->len - p->pos < 4) return parser_fail(p, "truncated \\u escape");
  uint32_t v = 0;
  for (int i = 0; i < 4; i++) {
    int c = p->text[p->pos + i], d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else return parser_fail(p, "bad hex digit in \\u escape");
    v = v * 16 + (uint32_t)d;
  }
  p->pos += 4;
  *out = v;
  return 0;
}

/* Parses a string starting at the opening quote into a malloc'ed decoded copy. */
static int parse_string(json_parser *p, char **out, size_t *out_len) {
  byte_buffer b = {0};
  p->pos++; /* opening quote */
  for (;;) {
    if (p->pos >= p->len) {
      free(b.data);
      return parser_fail(p, "unterminated string");
    }
    unsigned char c = p->text[p->pos];
    if (c == '"') {
      p->pos++;
      break;
    }
    if (c < 0x20) {
      free(b.data);
      return parser_fail(p, "control character in string");
    }
    if (c != '\\') {
      size_t n = utf8_sequence_length(p->text + p->pos, p->len - p->pos);
      if (n == 0) {
        free(b.data);
        return parser_fail(p, "invalid UTF-8 in string");
      }
      if (buffer_push(&b, (const char *)p->text + p->pos, n)) {
        free(b.data);
        return parser_oom(p);
      }
      p->pos += n;
      continue;
    }
    p->pos++;
    if (p->pos >= p->len) {
      free(b.data);
      return parser_fail(p, "unterminated escape");
    }
    char decoded[4];
    size_t n = 1;
    switch (p->text[p->pos++]) {
      case '"': decoded[0] = '"'; break;
      case '\\': decoded[0] = '\\'; break;
      case '/': decoded[0] = '/'; break;
      case 'b': decoded[0] = '\b'; break;
      case 'f': decoded[0] = '\f'; break;
      case 'n': decoded[0] = '\n'; break;
      case 'r': decoded[0] = '\r'; break;
      case 't': decoded[0] = '\t'; break;
      case 'u': {
        uint32_t cp;
        if (parse_hex4(p, &cp)) {
          free(b.data);
          return p->status;
        }
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
          free(b.data);
          return parser_fail(p, "unpaired low surrogate in \\u escape");
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
          uint32_t low;
          if (p->len - p->pos < 2 || p->text[p->pos] != '\\' || p->text[p->pos + 1] != 'u') {
            free(b.data);
            return parser_fail(p, "unpaired high surrogate in \\u escape");
          }
          p->pos += 2;
          if (parse_hex4(p, &low)) {
            free(b.data);
            return p->status;
          }
          if (low < 0xDC00 || low > 0xDFFF) {
            free(b.data);
            return parser_fail(p, "high surrogate not followed by a low surrogate");
          }
          cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
        }
        n = utf8_encode(decoded, cp);
        break;
      }
      default:
        p->pos--;
        free(b.data);
        return parser_fail(p, "unknown escape");
    }
    if (buffer_push(&b, decoded, n)) {
      free(b.data);
      return parser_oom(p);
    }
  }
  if (!b.data && buffer_push(&b, "", 0)) return parser_oom(p);
  *out = b.data;
  *out_len = b.len;
  return 0;
}

static int is_digit(int c) { return c >= '0' && c <= '9'; }

/* -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
static int parse_number(json_parser *p, hakd__json *v) {
  size_t start = p->pos;
  int negative = 0, fractional = 0;
  if (peek(p) == '-') {
    negative = 1;
    p->pos++;
  }
  if (peek(p) == '0') {
    p->pos++;
  } else if (is_digit(peek(p))) {
    while (is_digit(peek(p))) p->pos++;
  } else {
    return parser_fail(p, "expected a digit");
  }
  size_t int_end = p->pos;
  if (peek(p) == '.') {
    fractional = 1;
    p->pos++;
    if (!is_digit(peek(p))) return parser_fail(p, "expected a digit after '.'");
    while (is_digit(peek(p))) p->pos++;
  }
  if (peek(p) == 'e' || peek(p) == 'E') {
    fractional = 1;
    p->pos++;
    if (peek(p) == '+' || peek(p) == '-') p->pos++;
    if (!is_digit(peek(p))) return parser_fail(p, "expected a digit in exponent");
    while (is_digit(peek(p))) p->pos++;
  }
  v->type = HAKD__JSON_NUMBER;
  size_t literal_len = p->pos - start;
  char *literal = malloc(literal_len + 1);
  if (!literal) return parser_oom(p);
  memcpy(literal, p->text + start, literal_len);
  literal[literal_len] = '\0';
  v->number = strtod(literal, NULL);
  free(literal);
  if (!fractional) {
    /* Exact integer value, so 64-bit offsets do not pass through a double. */
    uint64_t magnitude = 0;
    int overflow = 0;
    for (size_t i = start + (size_t)negative; i < int_end; i++) {
      uint64_t digit = (uint64_t)(p->text[i] - '0');
      if (magnitude > (UINT64_MAX - digit) / 10) {
        overflow = 1;
        break;
      }
      magnitude = magnitude * 10 + digit;
    }
    if (!overflow && !negative && magnitude <= (uint64_t)INT64_MAX) {
      v->is_int = 1;
      v->integer = (int64_t)magnitude;
    } else if (!overflow && negative && magnitude <= (uint64_t)INT64_MAX + 1) {
      v->is_int = 1;
      v->integer = magnitude == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)magnitude;
    }
  }
  return 0;
}

static int parse_literal(json_parser *p, const char *word) {
  size_t n = strlen(word);
  if (p->len - p->pos < n || memcmp(p->text + p->pos, word, n) != 0) return parser_fail(p, "unexpected token");
  p->pos += n;
  return 0;
}

static int parse_value(json_parser *p, hakd__json *v, int depth);

static int grow_items(json_parser *p, hakd__json *v, size_t *cap, int with_keys) {
  if (v->count < *cap) return 0;
  size_t new_cap = *cap ? *cap * 2 : 4;
  hakd__json *items = realloc(v->items, new_cap * sizeof *items);
  if (!items) return parser_oom(p);
  v->items = items;
  if (with_keys) {
    char **keys = realloc(v->keys, new_cap * sizeof *keys);
    if (!keys) return parser_oom(p);
    v->keys = keys;
    size_t *key_lens = realloc(v->key_lens, new_cap * sizeof *key_lens);
    if (!key_lens) return parser_oom(p);
    v->key_lens = key_lens;
  }
  *cap = new_cap;
  return 0;
}

static int parse_array(json_parser *p, hakd__json *v, int depth) {
  size_t cap = 0;
  v->type = HAKD__JSON_ARRAY;
  p->pos++; /* '[' */
  skip_whitespace(p);
  if (peek(p) == ']') {
    p->pos++;
    return 0;
  }
  for (;;) {
    if (grow_items(p, v, &cap, 0)) return p->status;
    memset(&v->items[v->count], 0, sizeof v->items[0]);
    v->count++;
    if (parse_value(p, &v->items[v->count - 1], depth + 1)) return p->status;
    skip_whitespace(p);
    int c = peek(p);
    p->pos++;
    if (c == ']') return 0;
    if (c != ',') {
      p->pos--;
      return parser_fail(p, "expected ',' or ']' in array");
    }
  }
}

static int parse_object(json_parser *p, hakd__json *v, int depth) {
  size_t cap = 0;
  v->type = HAKD__JSON_OBJECT;
  p->pos++; /* '{' */
  skip_whitespace(p);
  if (peek(p) == '}') {
    p->pos++;
    return 0;
  }
  for (;;) {
    skip_whitespace(p);
    if (peek(p) != '"') return parser_fail(p, "expected a string key in object");
    if (grow_items(p, v, &cap, 1)) return p->status;
    size_t i = v->count;
    memset(&v->items[i], 0, sizeof v->items[0]);
    v->keys[i] = NULL;
    v->count++;
    if (parse_string(p, &v->keys[i], &v->key_lens[i])) return p->status;
    skip_whitespace(p);
    if (peek(p) != ':') return parser_fail(p, "expected ':' after object key");
    p->pos++;
    if (parse_value(p, &v->items[i], depth + 1)) return p->status;
    skip_whitespace(p);
    int c = peek(p);
    p->pos++;
    if (c == '}') return 0;
    if (c != ',') {
      p->pos--;
      return parser_fail(p, "expected ',' or '}' in object");
    }
  }
}

static int parse_value(json_parser *p, hakd__json *v, int depth) {
  if (depth > JSON_MAX_DEPTH) return parser_fail(p, "nesting too deep");
  skip_whitespace(p);
  switch (peek(p)) {
    case -1: return parser_fail(p, "unexpected end of input");
    case '{': return parse_object(p, v, depth);
    case '[': return parse_array(p, v, depth);
    case '"':
      v->type = HAKD__JSON_STRING;
      return parse_string(p, &v->string, &v->string_len);
    case 't':
      v->type = HAKD__JSON_BOOL;
      v->boolean = 1;
      return parse_literal(p, "true");
    case 'f':
      v->type = HAKD__JSON_BOOL;
      return parse_literal(p, "false");
    case 'n':
      v->type = HAKD__JSON_NULL;
      return parse_literal(p, "null");
    default: return parse_number(p, v);
  }
}

int hakd__json_parse(const char *text, size_t len, const char *what, hakd__json *out) {
  json_parser p = {(const unsigned char *)text, len, 0, what, 0};
  memset(out, 0, sizeof *out);
  if (parse_value(&p, out, 0) == 0) {
    skip_whitespace(&p);
    if (p.pos != p.len) parser_fail(&p, "trailing characters after the JSON value");
  }
  if (p.status) hakd__json_free(out);
  return p.status;
}

void hakd__json_free(hakd__json *v) {
  if (!v) return;
  /* Containers may be partly filled after an error: every counted slot is initialised. */
  for (size_t i = 0; i < v->count; i++) {
    hakd__json_free(&v->items[i]);
    if (v->keys) free(v->keys[i]);
  }
  free(v->items);
  free(v->keys);
  free(v->key_lens);
  free(v->string);
  memset(v, 0, sizeof *v);
}

const hakd__json *hakd__json_get(const hakd__json *object, const char *key) {
  if (!object || object->type != HAKD__JSON_OBJECT) return NULL;
  size_t key_len = strlen(key);
  for (size_t i = 0; i < object->count; i++)
    if (object->key_lens[i] == key_len && memcmp(object->keys[i], key, key_len) == 0) return &object->items[i];
  return NULL;
}

int hakd__json_utf8_valid(const char *s) {
  const unsigned char *p = (const unsigned char *)s;
  size_t n = strlen(s);
  while (n) {
    size_t len = utf8_sequence_length(p, n);
    if (!len) return 0;
    p += len;
    n -= len;
  }
  return 1;
}

const char *hakd__json_type_name(hakd__json_type type) {
  switch (type) {
    case HAKD__JSON_NULL: return "null";
    case HAKD__JSON_BOOL: return "a boolean";
    case HAKD__JSON_NUMBER: return "a number";
    case HAKD__JSON_STRING: return "a string";
    case HAKD__JSON_ARRAY: return "an array";
    case HAKD__JSON_OBJECT: return "an object";
  }
  return "a value";
}
