/* Fuzzes the safetensors reader: hakd_st_open's header validation, then every tensor read
 * back through both converters (float and integer), lookups by name and metadata. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  hakd_st_file *f = NULL;
  int status = hakd_st_open(path, &f);
  if (status) {
    FUZZ_ASSERT(f == NULL);
    fuzz_check_error("hakd_st_open", status, path);
    return 0;
  }
  int n = hakd_st_count(f);
  FUZZ_ASSERT(n >= 0);
  for (int i = 0; i < n; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    FUZZ_ASSERT(t != NULL && hakd_st_find(f, t->name) == t);
    FUZZ_ASSERT(t->ndim >= 0 && t->ndim <= 8);
    /* The reader promised nbytes == dtype size x shape, inside the file: so numel <= size. */
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      FUZZ_ASSERT(t->shape[d] >= 0);
      if (t->shape[d] == 0) numel = 0;
    }
    for (int d = 0; d < t->ndim && numel; d++) {
      FUZZ_ASSERT(numel <= (int64_t)size / t->shape[d]);
      numel *= t->shape[d];
    }
    FUZZ_ASSERT(t->offset + t->nbytes <= size);
    float *f32 = malloc(numel ? (size_t)numel * sizeof *f32 : 1);
    int64_t *i64 = malloc(numel ? (size_t)numel * sizeof *i64 : 1);
    FUZZ_ASSERT(f32 && i64);
    /* One of the two refuses the dtype; that error must name the file too. */
    if ((status = hakd_st_read_f32(f, t->name, f32, numel))) fuzz_check_error("hakd_st_read_f32", status, path);
    if ((status = hakd_st_read_i64(f, t->name, i64, numel))) fuzz_check_error("hakd_st_read_i64", status, path);
    /* A wrong element count is refused, naming the file. */
    if ((status = hakd_st_read_f32(f, t->name, f32, numel + 1)) == 0) abort();
    fuzz_check_error("hakd_st_read_f32 with a wrong count", status, path);
    free(f32);
    free(i64);
  }
  FUZZ_ASSERT(hakd_st_find(f, "hakd fuzz: no tensor has this name") == NULL);
  (void)hakd_st_metadata(f, "format");
  (void)hakd_st_metadata(f, "iteration");
  hakd_st_close(f);
  return 0;
}
