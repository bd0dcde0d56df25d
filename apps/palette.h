/* Colour palette for class-index masks and overlays of any number of classes: the Pascal VOC
 * colour map (bit-interleaved class index), which gives distinct colours for up to 256 classes. */
#ifndef HAKD_APP_PALETTE_H
#define HAKD_APP_PALETTE_H

#include <stdint.h>

static inline void palette_voc(uint8_t palette[256 * 3]) {
  for (int k = 0; k < 256; k++) {
    int r = 0, g = 0, b = 0, c = k;
    for (int j = 0; j < 8; j++) {
      r |= ((c >> 0) & 1) << (7 - j);
      g |= ((c >> 1) & 1) << (7 - j);
      b |= ((c >> 2) & 1) << (7 - j);
      c >>= 3;
    }
    palette[3 * k] = (uint8_t)r, palette[3 * k + 1] = (uint8_t)g, palette[3 * k + 2] = (uint8_t)b;
  }
}

#endif
