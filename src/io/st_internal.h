/* io-internal: tensor files built in memory by another reader (the .pth reader), served
 * through the safetensors accessors of hakd/io.h. */
#ifndef HAKD_IO_ST_INTERNAL_H
#define HAKD_IO_ST_INTERNAL_H

#include "hakd/io.h"

/* Takes ownership of tensors (n entries, offsets into data), names (n malloc'ed strings the
 * tensors point to) and data (size bytes, malloc'ed), also when it fails (duplicate names). */
int hakd__st_adopt(const char *path, hakd_st_tensor *tensors, int n, char **names, uint8_t *data, uint64_t size,
                   hakd_st_file **out);
/* Reads a PyTorch zip checkpoint held in memory (pth.c); path names it in messages. */
int hakd__pth_read(const char *path, const uint8_t *data, size_t size, hakd_st_file **out);

#endif
