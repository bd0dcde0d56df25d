/* Internal: JPEG decoding for hakd_image_read (image_png.c dispatches by magic bytes). */
#ifndef HAKD_IO_IMAGE_JPEG_H
#define HAKD_IO_IMAGE_JPEG_H

#include <stddef.h>
#include <stdint.h>

#include "hakd/io.h"

/* Decodes the JPEG bytes data[0..size) into out (RGB, or 1 channel for grayscale JPEGs).
 * A corrupt or truncated stream returns HAKD_EFORMAT naming path; never exits. */
int hakd__jpeg_decode(const char *path, const uint8_t *data, size_t size, hakd_image *out);

#endif
