/* Segments one image with a trained hakd model through the embeddable API (hakd/infer.h), the
 * way an application links hakd: `cc segment_image.c $(pkg-config --cflags --libs hakd)` or CMake's
 * find_package(hakd) + hakd::hakd (CMakeLists.txt here).
 *
 *   segment_image WEIGHTS.safetensors IMAGE.png|jpg OUT_MASK.png [MODEL]
 *
 * MODEL defaults to the one named in the weights file's metadata (as `hakd train` writes it); the
 * number of classes is read from the weights. Writes the class-index mask as a palette PNG and
 * prints how many pixels each class got. */
#include <stdio.h>
#include <stdlib.h>

#include "hakd/infer.h"
#include "hakd/io.h"

int main(int argc, char **argv) {
  if (argc < 4 || argc > 5) {
    fprintf(stderr, "usage: %s WEIGHTS IMAGE OUT_MASK.png [MODEL]\n", argv[0]);
    return 2;
  }
  hakd_model *model = NULL;
  if (hakd_model_open(argv[1], argc == 5 ? argv[4] : NULL, NULL, &model)) {
    fprintf(stderr, "segment_image: %s\n", hakd_error_message());
    return 1;
  }
  hakd_image img = {0};
  uint8_t *rgb = NULL, *mask = NULL;
  int rc = 1;
  if (hakd_image_read(argv[2], &img)) goto done;
  int w = img.width, h = img.height, K = hakd_model_num_classes(model);
  rgb = malloc((size_t)w * h * 3);
  mask = malloc((size_t)w * h);
  if (!rgb || !mask) goto done;
  /* grey and RGBA images to RGB */
  for (long p = 0; p < (long)w * h; p++)
    for (int c = 0; c < 3; c++) rgb[3 * p + c] = img.pixels[p * img.channels + (img.channels >= 3 ? c : 0)];
  if (hakd_model_predict(model, rgb, h, w, 3 * w, mask)) goto done;
  uint8_t palette[256 * 3];
  for (int i = 0; i < 256; i++) /* a distinct colour per class */
    palette[3 * i] = (uint8_t)(i * 67), palette[3 * i + 1] = (uint8_t)(i * 151), palette[3 * i + 2] = (uint8_t)(i * 29);
  if (hakd_png_write_palette(argv[3], w, h, mask, palette, K)) goto done;
  long *counts = calloc((size_t)K, sizeof *counts);
  if (!counts) goto done;
  for (long p = 0; p < (long)w * h; p++) counts[mask[p]]++;
  printf("%s: %s, %dx%d, %d classes\n", argv[2], hakd_model_name(model), w, h, K);
  for (int k = 0; k < K; k++)
    if (counts[k]) printf("  class %d: %ld pixels\n", k, counts[k]);
  free(counts);
  rc = 0;
done:
  if (rc) fprintf(stderr, "segment_image: %s\n", hakd_error_message());
  free(rgb);
  free(mask);
  hakd_image_free(&img);
  hakd_model_free(model);
  return rc;
}
