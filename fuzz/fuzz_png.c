/* Fuzzes PNG decoding through hakd's wrappers: the same bytes as an image (palette and gray
 * expanded, 16-bit scaled, alpha dropped) and as a label map (stored values kept). */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  fuzz_check_image_read(path);
  int status;
  int width, height;
  int32_t *labels;
  status = hakd_label_read(path, &width, &height, &labels);
  if (status) {
    FUZZ_ASSERT(labels == NULL);
    fuzz_check_error("hakd_label_read", status, path);
    return 0;
  }
  FUZZ_ASSERT(width > 0 && height > 0);
  size_t n = (size_t)width * height;
  for (size_t i = 0; i < n; i++) FUZZ_ASSERT(labels[i] >= 0 && labels[i] <= 65535);
  free(labels);
  return 0;
}
