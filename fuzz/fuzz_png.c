/* Fuzzes PNG decoding through hakd's wrappers: the same bytes as an image (palette and gray
 * expanded, 16-bit scaled, alpha dropped) and as a label map (stored values kept). */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  hakd_image img;
  int status = hakd_image_read(path, &img);
  if (status) {
    FUZZ_ASSERT(img.pixels == NULL);
    fuzz_check_error("hakd_image_read", status, path);
  } else {
    FUZZ_ASSERT(img.width > 0 && img.height > 0 && (img.channels == 1 || img.channels == 3));
    /* Touch the last pixel: the buffer must hold (H, W, C) bytes. */
    volatile uint8_t last = img.pixels[(size_t)img.width * img.height * img.channels - 1];
    (void)last;
    hakd_image_free(&img);
  }
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
