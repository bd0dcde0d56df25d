/* Internal: class names and palettes of the standard datasets. */
#ifndef HAKD_DATA_CLASSES_H
#define HAKD_DATA_CLASSES_H

#include <stdint.h>

typedef struct {
  const char *name; /* canonical dataset name */
  int num_classes;
  const char *const *class_names;
  const uint8_t *palette; /* (num_classes, 3) */
} hakd__class_table;

/* NULL for a dataset without a fixed table (generic). */
const hakd__class_table *hakd__class_table_find(const char *name);
/* The Pascal VOC colour map for indices 0..n-1 into rgb (n, 3). */
void hakd__voc_palette(uint8_t *rgb, int n);

#endif
