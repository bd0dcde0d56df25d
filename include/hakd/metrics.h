/* Segmentation metrics from one confusion matrix summed over a whole split, as
 * mmsegmentation computes them: per-class IoU and Acc, aAcc, and mIoU / mAcc as the mean
 * over classes whose value is defined (nanmean). Pure bookkeeping: no files, no models. */
#ifndef HAKD_METRICS_H
#define HAKD_METRICS_H

#include <stdint.h>
#include <stdio.h>

#include "hakd/error.h"

typedef struct {
  int num_classes;
  uint64_t *counts; /* (K, K): counts[label * K + pred] */
} hakd_confusion;

int hakd_confusion_init(hakd_confusion *cm, int num_classes);
void hakd_confusion_free(hakd_confusion *cm);
void hakd_confusion_reset(hakd_confusion *cm);
/* Counts n pixels; pixels whose label is ignore_index are left out. A label or prediction
 * outside 0..K-1 (other than an ignored label) is HAKD_ERANGE and nothing is counted. */
int hakd_confusion_add(hakd_confusion *cm, const int32_t *pred, /* (n) */
                       const int32_t *label,                    /* (n) */
                       int64_t n, int ignore_index);
/* dst += src (same K). */
int hakd_confusion_merge(hakd_confusion *dst, const hakd_confusion *src);

/* Fractions in [0, 1]; NAN where undefined: IoU when the class is in neither labels nor
 * predictions, Acc when it is not in the labels. */
typedef struct {
  int num_classes;
  double *iou, *acc; /* (K) */
  double aacc;       /* correct / labelled pixels (NAN when nothing was labelled) */
  double miou, macc; /* nanmean of iou / acc (NAN when all are NAN) */
  uint64_t labelled; /* pixels counted */
} hakd_metrics;

int hakd_confusion_compute(hakd_metrics *out, const hakd_confusion *cm);
void hakd_metrics_free(hakd_metrics *m);

/* The mmsegmentation tables: per class `Class | IoU | Acc`, then `aAcc | mIoU | mAcc`, in
 * percent with 2 decimals ("nan" for undefined). class_names may be NULL (indices shown). */
void hakd_metrics_print(FILE *out, const hakd_metrics *m, const char *const *class_names);

#endif
