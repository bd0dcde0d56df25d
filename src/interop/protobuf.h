/* Protocol Buffers wire format, the part ONNX files need: a growable byte buffer with varint,
 * fixed-width and length-delimited fields (writer), and a field-by-field reader over a byte
 * range (used to parse exported files back in tests and checks). Messages nest by encoding the
 * child into its own buffer and appending it as a length-delimited field.
 * reference: https://protobuf.dev/programming-guides/encoding/ */
#ifndef HAKD_INTEROP_PROTOBUF_H
#define HAKD_INTEROP_PROTOBUF_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint8_t *data;
  size_t size, capacity;
  int failed; /* an allocation failed: later writes are dropped, pb_ok reports it */
} pb_buf;

enum { PB_VARINT = 0, PB_FIXED64 = 1, PB_LEN = 2, PB_FIXED32 = 5 };

void pb_free(pb_buf *b);
int pb_ok(const pb_buf *b); /* 1 unless an allocation failed */
void pb_bytes_raw(pb_buf *b, const void *data, size_t n);
void pb_varint_raw(pb_buf *b, uint64_t v);
/* Field writers: tag (field << 3 | wire type) then the value. int64 values are written as
 * their two's-complement varint, as protobuf's int64 is. */
void pb_int(pb_buf *b, int field, int64_t v);
void pb_float(pb_buf *b, int field, float v);
void pb_bytes(pb_buf *b, int field, const void *data, size_t n);
void pb_string(pb_buf *b, int field, const char *s);
/* Appends `child` as a length-delimited field (an embedded message). */
void pb_message(pb_buf *b, int field, const pb_buf *child);
/* Packed repeated int64 (one length-delimited field holding the varints). */
void pb_packed_ints(pb_buf *b, int field, const int64_t *v, int n);

typedef struct {
  const uint8_t *p, *end;
} pb_reader;

typedef struct {
  int field, wire;
  uint64_t value;       /* PB_VARINT, PB_FIXED32/64 (raw bits) */
  const uint8_t *data;  /* PB_LEN */
  size_t size;          /* PB_LEN */
} pb_field;

/* Next field of the range: 1 and *f filled, 0 at the end, -1 when malformed (truncated varint
 * or length past the end, a wire type ONNX does not use). */
int pb_next(pb_reader *r, pb_field *f);
/* Reader over a length-delimited field's bytes. */
pb_reader pb_sub(const pb_field *f);

#endif
