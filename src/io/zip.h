/* A read-only reader of ZIP archives held in memory (a mapped file), for PyTorch's checkpoint
 * format. It reads the central directory (ZIP64 records included, which torch.save always
 * writes) and hands out entries that are *stored* (method 0): torch.save never compresses, so
 * no inflater is needed and none is linked; a deflated entry is refused by name. Every offset
 * and size is checked against the buffer, local headers against the central directory, and
 * each entry's CRC-32 when it is read. Knows nothing about what the entries contain. */
#ifndef HAKD_IO_ZIP_H
#define HAKD_IO_ZIP_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  char *name;              /* NUL-free, malloc'ed */
  uint64_t size;           /* bytes (stored: compressed == uncompressed) */
  uint64_t local_offset;   /* local header */
  uint32_t crc32;
  int method, encrypted;
  const uint8_t *data;     /* set by hakd__zip_read once the local header and CRC are checked */
} hakd__zip_entry;

typedef struct {
  const char *path;        /* for messages (borrowed) */
  const uint8_t *base;
  size_t size;
  hakd__zip_entry *entries;
  int count;
} hakd__zip;

/* 1 when the buffer starts like a ZIP archive (local header signature). */
int hakd__zip_is_zip(const uint8_t *data, size_t size);
/* Parses the central directory. Errors name `path` and the problem. */
int hakd__zip_open(hakd__zip *z, const char *path, const uint8_t *data, size_t size);
void hakd__zip_close(hakd__zip *z);
/* The entry of that exact name or NULL. */
hakd__zip_entry *hakd__zip_find(hakd__zip *z, const char *name);
/* Checks the entry (stored, not encrypted, local header consistent, bytes inside the archive,
 * CRC-32) once and sets e->data. */
int hakd__zip_read(hakd__zip *z, hakd__zip_entry *e);
/* CRC-32 (ISO-HDLC, as ZIP and PNG use it). */
uint32_t hakd__crc32(const uint8_t *data, size_t size);

#endif
