#include "interop/protobuf.h"

#include <stdlib.h>
#include <string.h>

void pb_free(pb_buf *b) {
  free(b->data);
  memset(b, 0, sizeof *b);
}

int pb_ok(const pb_buf *b) { return !b->failed; }

static int pb_reserve(pb_buf *b, size_t more) {
  if (b->failed) return 0;
  if (b->size + more <= b->capacity) return 1;
  size_t capacity = b->capacity ? b->capacity : 256;
  while (capacity < b->size + more) capacity *= 2;
  uint8_t *data = realloc(b->data, capacity);
  if (!data) {
    b->failed = 1;
    return 0;
  }
  b->data = data;
  b->capacity = capacity;
  return 1;
}

void pb_bytes_raw(pb_buf *b, const void *data, size_t n) {
  if (!n || !pb_reserve(b, n)) return;
  memcpy(b->data + b->size, data, n);
  b->size += n;
}

void pb_varint_raw(pb_buf *b, uint64_t v) {
  uint8_t tmp[10];
  int n = 0;
  do {
    tmp[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  pb_bytes_raw(b, tmp, (size_t)n);
}

static void pb_tag(pb_buf *b, int field, int wire) { pb_varint_raw(b, ((uint64_t)field << 3) | (uint64_t)wire); }

void pb_int(pb_buf *b, int field, int64_t v) {
  pb_tag(b, field, PB_VARINT);
  pb_varint_raw(b, (uint64_t)v);
}

void pb_float(pb_buf *b, int field, float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  uint8_t le[4] = {(uint8_t)bits, (uint8_t)(bits >> 8), (uint8_t)(bits >> 16), (uint8_t)(bits >> 24)};
  pb_tag(b, field, PB_FIXED32);
  pb_bytes_raw(b, le, 4);
}

void pb_bytes(pb_buf *b, int field, const void *data, size_t n) {
  pb_tag(b, field, PB_LEN);
  pb_varint_raw(b, n);
  pb_bytes_raw(b, data, n);
}

void pb_string(pb_buf *b, int field, const char *s) { pb_bytes(b, field, s, strlen(s)); }

void pb_message(pb_buf *b, int field, const pb_buf *child) {
  if (child->failed) b->failed = 1;
  pb_bytes(b, field, child->data, child->size);
}

void pb_packed_ints(pb_buf *b, int field, const int64_t *v, int n) {
  pb_buf packed = {0};
  for (int i = 0; i < n; i++) pb_varint_raw(&packed, (uint64_t)v[i]);
  pb_message(b, field, &packed);
  pb_free(&packed);
}

static int pb_read_varint(pb_reader *r, uint64_t *v) {
  *v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) return -1;
    uint8_t byte = *r->p++;
    *v |= (uint64_t)(byte & 0x7f) << shift;
    if (!(byte & 0x80)) return 0;
  }
  return -1;
}

int pb_next(pb_reader *r, pb_field *f) {
  memset(f, 0, sizeof *f);
  if (r->p >= r->end) return 0;
  uint64_t tag;
  if (pb_read_varint(r, &tag) || tag >> 3 == 0 || tag >> 3 > 536870911u) return -1;
  f->field = (int)(tag >> 3);
  f->wire = (int)(tag & 7);
  switch (f->wire) {
    case PB_VARINT: return pb_read_varint(r, &f->value) ? -1 : 1;
    case PB_FIXED32:
    case PB_FIXED64: {
      size_t n = f->wire == PB_FIXED32 ? 4 : 8;
      if ((size_t)(r->end - r->p) < n) return -1;
      for (size_t i = 0; i < n; i++) f->value |= (uint64_t)r->p[i] << (8 * i);
      r->p += n;
      return 1;
    }
    case PB_LEN: {
      uint64_t n;
      if (pb_read_varint(r, &n) || n > (uint64_t)(r->end - r->p)) return -1;
      f->data = r->p;
      f->size = (size_t)n;
      r->p += n;
      return 1;
    }
    default: return -1;
  }
}

pb_reader pb_sub(const pb_field *f) {
  pb_reader r = {f->data, f->data + f->size};
  return r;
}
