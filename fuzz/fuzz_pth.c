/* Fuzzes the PyTorch checkpoint reader. An input starting with the zip signature is a whole
 * .pth file (the zip reader, archive checks, then everything behind it); any other input is a
 * pickle, which the harness wraps into a valid archive (correct CRCs, storages data/0..data/7 of
 * 64 bytes) so that mutations reach the pickle machine and the view checks instead of stopping
 * at data.pkl's CRC. Every tensor handed out is read back through both converters. */
#include <stdlib.h>
#include <string.h>

#include "fuzz_common.h"
#include "hakd/io.h"
#include "io/st_internal.h"
#include "io/zip.h"

#define STORAGES 8
#define STORAGE_BYTES 64

static void put16(uint8_t *p, uint32_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, v), put16(p + 2, v >> 16); }

/* A stored zip of entries (names, data, sizes): local headers + data, central directory, end record. */
static uint8_t *make_zip(int n, const char *const *names, const uint8_t *const *data, const size_t *sizes,
                         size_t *out_size) {
  size_t total = 22;
  for (int i = 0; i < n; i++) total += 30 + 46 + 2 * strlen(names[i]) + sizes[i];
  uint8_t *z = calloc(1, total), *p = z;
  uint32_t *offsets = calloc((size_t)n, sizeof *offsets);
  if (!z || !offsets) abort();
  for (int i = 0; i < n; i++) {
    size_t nl = strlen(names[i]);
    offsets[i] = (uint32_t)(p - z);
    put32(p, 0x04034b50), put32(p + 14, hakd__crc32(data[i], sizes[i]));
    put32(p + 18, (uint32_t)sizes[i]), put32(p + 22, (uint32_t)sizes[i]), put16(p + 26, (uint32_t)nl);
    memcpy(p + 30, names[i], nl);
    if (sizes[i]) memcpy(p + 30 + nl, data[i], sizes[i]);
    p += 30 + nl + sizes[i];
  }
  uint8_t *cd = p;
  for (int i = 0; i < n; i++) {
    size_t nl = strlen(names[i]);
    put32(p, 0x02014b50), put32(p + 16, hakd__crc32(data[i], sizes[i]));
    put32(p + 20, (uint32_t)sizes[i]), put32(p + 24, (uint32_t)sizes[i]), put16(p + 28, (uint32_t)nl);
    put32(p + 42, offsets[i]);
    memcpy(p + 46, names[i], nl);
    p += 46 + nl;
  }
  put32(p, 0x06054b50), put16(p + 8, (uint32_t)n), put16(p + 10, (uint32_t)n);
  put32(p + 12, (uint32_t)(p - cd)), put32(p + 16, (uint32_t)(cd - z));
  p += 22;
  free(offsets);
  *out_size = (size_t)(p - z);
  return z;
}

static void check_file(hakd_st_file *f, const char *path) {
  int n = hakd_st_count(f);
  for (int i = 0; i < n; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    FUZZ_ASSERT(t != NULL && hakd_st_find(f, t->name) == t);
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
    float *f32 = malloc(numel ? (size_t)numel * sizeof *f32 : 1);
    int64_t *i64 = malloc(numel ? (size_t)numel * sizeof *i64 : 1);
    FUZZ_ASSERT(f32 && i64);
    int status;
    if ((status = hakd_st_read_f32(f, t->name, f32, numel))) fuzz_check_error("hakd_st_read_f32", status, path);
    if ((status = hakd_st_read_i64(f, t->name, i64, numel))) fuzz_check_error("hakd_st_read_i64", status, path);
    free(f32);
    free(i64);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = "fuzz.pth";
  hakd_st_file *f = NULL;
  int status;
  if (hakd__zip_is_zip(data, size)) {
    path = fuzz_input_path(data, size);
    status = hakd_weights_open(path, &f);
  } else {
    static uint8_t storage[STORAGES][STORAGE_BYTES];
    for (int s = 0; s < STORAGES; s++)
      for (int b = 0; b < STORAGE_BYTES; b++) storage[s][b] = (uint8_t)(s * 16 + b / 4); /* finite floats */
    const char *names[2 + STORAGES] = {"archive/data.pkl", "archive/version"};
    const uint8_t *contents[2 + STORAGES] = {data, (const uint8_t *)"3\n"};
    size_t sizes[2 + STORAGES] = {size, 2};
    char keys[STORAGES][32];
    for (int s = 0; s < STORAGES; s++) {
      snprintf(keys[s], sizeof keys[s], "archive/data/%d", s);
      names[2 + s] = keys[s], contents[2 + s] = storage[s], sizes[2 + s] = STORAGE_BYTES;
    }
    size_t zsize;
    uint8_t *zip = make_zip(2 + STORAGES, names, contents, sizes, &zsize);
    status = hakd__pth_read(path, zip, zsize, &f);
    free(zip);
  }
  if (status) {
    FUZZ_ASSERT(f == NULL);
    fuzz_check_error("hakd_pth", status, path);
    return 0;
  }
  check_file(f, path);
  hakd_st_close(f);
  return 0;
}
