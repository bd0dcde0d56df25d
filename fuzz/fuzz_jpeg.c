/* Fuzzes JPEG decoding through hakd's wrapper (hakd_image_read dispatches on the JPEG magic
 * bytes to image_jpeg.c), and checks that label maps refuse JPEG. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/io.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  fuzz_check_image_read(path);
  int status;
  /* Lossy JPEG would change class ids: a JPEG is never a label map. */
  int width, height;
  int32_t *labels;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    status = hakd_label_read(path, &width, &height, &labels);
    FUZZ_ASSERT(status == HAKD_EUNSUPPORTED && labels == NULL);
    fuzz_check_error("hakd_label_read", status, path);
  }
  return 0;
}
