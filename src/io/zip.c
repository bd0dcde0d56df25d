/* ZIP reader for stored entries (see zip.h). Layout: local headers + data, the central
 * directory, then [ZIP64 end record, ZIP64 locator] and the end-of-central-directory record,
 * found by scanning back from the end over its at most 65535-byte comment. */
#include "io/zip.h"

#include <stdlib.h>
#include <string.h>

#include "hakd/error.h"

#define SIG_LOCAL 0x04034b50u
#define SIG_CENTRAL 0x02014b50u
#define SIG_EOCD 0x06054b50u
#define SIG_EOCD64 0x06064b50u
#define SIG_LOCATOR64 0x07064b50u
#define EOCD_SIZE 22
#define CENTRAL_SIZE 46
#define LOCAL_SIZE 30

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return (uint64_t)rd32(p) | (uint64_t)rd32(p + 4) << 32; }

uint32_t hakd__crc32(const uint8_t *data, size_t size) {
  static uint32_t table[256];
  static int ready; /* a benign race: every thread computes the same table */
  if (!ready) {
    for (uint32_t i = 0; i < 256; i++) {
      uint32_t c = i;
      for (int k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      table[i] = c;
    }
    ready = 1;
  }
  uint32_t c = 0xFFFFFFFFu;
  for (size_t i = 0; i < size; i++) c = table[(c ^ data[i]) & 0xFF] ^ (c >> 8);
  return c ^ 0xFFFFFFFFu;
}

int hakd__zip_is_zip(const uint8_t *data, size_t size) { return size >= 4 && rd32(data) == SIG_LOCAL; }

void hakd__zip_close(hakd__zip *z) {
  if (!z) return;
  for (int i = 0; i < z->count; i++) free(z->entries[i].name);
  free(z->entries);
  memset(z, 0, sizeof *z);
}

/* The ZIP64 extended-information extra field (id 1) replaces the 32-bit fields that hold
 * 0xFFFFFFFF, in the order uncompressed size, compressed size, local header offset. */
static int read_zip64_extra(const hakd__zip *z, const uint8_t *extra, size_t len, uint64_t *usize, uint64_t *csize,
                            uint64_t *offset, const char *name) {
  size_t pos = 0;
  while (pos + 4 <= len) {
    uint16_t id = rd16(extra + pos), n = rd16(extra + pos + 2);
    if (pos + 4 + n > len) break;
    if (id == 1) {
      const uint8_t *f = extra + pos + 4;
      size_t used = 0;
      uint64_t *fields[3] = {usize, csize, offset};
      for (int k = 0; k < 3; k++) {
        if (*fields[k] != 0xFFFFFFFFu) continue;
        if (used + 8 > n)
          return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': ZIP64 extra field too short", z->path, name);
        *fields[k] = rd64(f + used);
        used += 8;
      }
      return 0;
    }
    pos += 4 + (size_t)n;
  }
  if (*usize == 0xFFFFFFFFu || *csize == 0xFFFFFFFFu || *offset == 0xFFFFFFFFu)
    return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': 32-bit field marked ZIP64 without a ZIP64 extra field", z->path,
                      name);
  return 0;
}

int hakd__zip_open(hakd__zip *z, const char *path, const uint8_t *data, size_t size) {
  memset(z, 0, sizeof *z);
  z->path = path;
  z->base = data;
  z->size = size;
  if (size < EOCD_SIZE) return hakd_error(HAKD_EFORMAT, "%s: truncated zip archive (%zu bytes)", path, size);
  size_t eocd = 0;
  int found = 0;
  size_t lowest = size > EOCD_SIZE + 65535 ? size - EOCD_SIZE - 65535 : 0;
  for (size_t p = size - EOCD_SIZE + 1; p-- > lowest;)
    if (rd32(data + p) == SIG_EOCD && p + EOCD_SIZE + rd16(data + p + 20) == size) {
      eocd = p;
      found = 1;
      break;
    }
  if (!found)
    return hakd_error(HAKD_EFORMAT, "%s: no zip end-of-central-directory record (truncated or not a zip archive)",
                      path);
  const uint8_t *e = data + eocd;
  if (rd16(e + 4) != 0 || rd16(e + 6) != 0)
    return hakd_error(HAKD_EFORMAT, "%s: multi-disk zip archives are not supported", path);
  uint64_t count = rd16(e + 10), cd_size = rd32(e + 12), cd_offset = rd32(e + 16);
  size_t cd_end_limit = eocd;
  if (eocd >= 20 && rd32(data + eocd - 20) == SIG_LOCATOR64) {
    uint64_t rec = rd64(data + eocd - 20 + 8);
    if (rec > eocd - 20 || eocd - 20 - rec < 56 || rd32(data + rec) != SIG_EOCD64)
      return hakd_error(HAKD_EFORMAT, "%s: bad ZIP64 end-of-central-directory record", path);
    count = rd64(data + rec + 32);
    cd_size = rd64(data + rec + 40);
    cd_offset = rd64(data + rec + 48);
    cd_end_limit = (size_t)rec;
  }
  if (cd_offset > cd_end_limit || cd_size > cd_end_limit - cd_offset)
    return hakd_error(HAKD_EFORMAT, "%s: zip central directory [%llu, +%llu) lies outside the archive (truncated?)",
                      path, (unsigned long long)cd_offset, (unsigned long long)cd_size);
  if (count > cd_size / CENTRAL_SIZE)
    return hakd_error(HAKD_EFORMAT, "%s: zip directory claims %llu entries in %llu bytes", path,
                      (unsigned long long)count, (unsigned long long)cd_size);
  z->entries = calloc(count ? (size_t)count : 1, sizeof *z->entries);
  if (!z->entries) return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  size_t pos = (size_t)cd_offset, end = (size_t)(cd_offset + cd_size);
  for (uint64_t i = 0; i < count; i++) {
    if (end - pos < CENTRAL_SIZE || rd32(data + pos) != SIG_CENTRAL) {
      hakd__zip_close(z);
      return hakd_error(HAKD_EFORMAT, "%s: zip central directory entry %llu is damaged", path, (unsigned long long)i);
    }
    const uint8_t *c = data + pos;
    size_t name_len = rd16(c + 28), extra_len = rd16(c + 30), comment_len = rd16(c + 32);
    if (end - pos - CENTRAL_SIZE < name_len + extra_len + comment_len) {
      hakd__zip_close(z);
      return hakd_error(HAKD_EFORMAT, "%s: zip central directory entry %llu runs past the directory", path,
                        (unsigned long long)i);
    }
    hakd__zip_entry *en = &z->entries[z->count];
    if (memchr(c + CENTRAL_SIZE, 0, name_len) || !(en->name = malloc(name_len + 1))) {
      int oom = en->name == NULL && !memchr(c + CENTRAL_SIZE, 0, name_len);
      hakd__zip_close(z);
      return oom ? hakd_error(HAKD_ENOMEM, "%s: out of memory", path)
                 : hakd_error(HAKD_EFORMAT, "%s: zip entry %llu has a NUL in its name", path, (unsigned long long)i);
    }
    memcpy(en->name, c + CENTRAL_SIZE, name_len);
    en->name[name_len] = '\0';
    z->count++;
    en->method = rd16(c + 10);
    en->encrypted = rd16(c + 8) & 1;
    en->crc32 = rd32(c + 16);
    uint64_t csize = rd32(c + 20), usize = rd32(c + 24), offset = rd32(c + 42);
    if (read_zip64_extra(z, c + CENTRAL_SIZE + name_len, extra_len, &usize, &csize, &offset, en->name)) {
      hakd__zip_close(z);
      return HAKD_EFORMAT;
    }
    if (en->method == 0 && csize != usize) {
      int rc = hakd_error(HAKD_EFORMAT, "%s: zip entry '%s' is stored but its sizes differ (%llu vs %llu)", path,
                          en->name, (unsigned long long)csize, (unsigned long long)usize);
      hakd__zip_close(z);
      return rc;
    }
    en->size = csize;
    en->local_offset = offset;
    pos += CENTRAL_SIZE + name_len + extra_len + comment_len;
  }
  return 0;
}

hakd__zip_entry *hakd__zip_find(hakd__zip *z, const char *name) {
  for (int i = 0; i < z->count; i++)
    if (!strcmp(z->entries[i].name, name)) return &z->entries[i];
  return NULL;
}

int hakd__zip_read(hakd__zip *z, hakd__zip_entry *e) {
  if (e->data) return 0;
  if (e->encrypted) return hakd_error(HAKD_EUNSUPPORTED, "%s: zip entry '%s' is encrypted", z->path, e->name);
  if (e->method != 0)
    return hakd_error(HAKD_EUNSUPPORTED,
                      "%s: zip entry '%s' is compressed (method %d); torch.save writes stored entries, so this archive "
                      "was repacked: extract and re-save it with torch.save",
                      z->path, e->name, e->method);
  size_t name_len = strlen(e->name);
  if (e->local_offset > z->size || z->size - e->local_offset < LOCAL_SIZE ||
      rd32(z->base + e->local_offset) != SIG_LOCAL)
    return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': no local header at offset %llu (truncated?)", z->path,
                      e->name, (unsigned long long)e->local_offset);
  const uint8_t *l = z->base + e->local_offset;
  uint64_t header = LOCAL_SIZE + (uint64_t)rd16(l + 26) + rd16(l + 28);
  if (rd16(l + 26) != name_len || z->size - e->local_offset < LOCAL_SIZE + name_len ||
      memcmp(l + LOCAL_SIZE, e->name, name_len) != 0)
    return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': local header names another file", z->path, e->name);
  uint64_t start = e->local_offset + header;
  if (start > z->size || e->size > z->size - start)
    return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': %llu bytes at offset %llu run past the end of the %zu-byte file "
                      "(truncated?)",
                      z->path, e->name, (unsigned long long)e->size, (unsigned long long)start, z->size);
  uint32_t crc = hakd__crc32(z->base + start, (size_t)e->size);
  if (crc != e->crc32)
    return hakd_error(HAKD_EFORMAT, "%s: zip entry '%s': CRC-32 %08x, the directory says %08x (corrupted file)",
                      z->path, e->name, crc, e->crc32);
  e->data = z->base + start;
  return 0;
}
