/* Fuzzes the .npy reader: header dict parsing, version, dtype and shape checks, then both
 * conversions that callers use (float inputs, int32 labels). */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  hakd_npy a;
  int status = hakd_npy_read(path, &a);
  if (status) {
    FUZZ_ASSERT(a.data == NULL);
    fuzz_check_error("hakd_npy_read", status, path);
    return 0;
  }
  FUZZ_ASSERT(a.data != NULL && a.ndim >= 0 && a.ndim <= 8);
  int64_t numel = hakd_npy_numel(&a);
  FUZZ_ASSERT(numel >= 0 && (uint64_t)numel <= size); /* every element has at least one byte */
  float *f32 = NULL;
  int32_t *i32 = NULL;
  /* Conversions of an accepted array: float always succeeds, int32 may refuse a value. */
  FUZZ_ASSERT(hakd_npy_to_f32(&a, &f32) == 0);
  status = hakd_npy_to_i32(&a, &i32);
  FUZZ_ASSERT(status == 0 || status == HAKD_ERANGE);
  free(f32);
  if (!status) free(i32);
  hakd_npy_free(&a);
  return 0;
}
