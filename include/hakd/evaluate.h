/* Evaluation the way the field does it: whole-image or sliding-window inference, optional
 * flip and multi-scale averaging of softmax probabilities, one confusion matrix over a split. */
#ifndef HAKD_EVALUATE_H
#define HAKD_EVALUATE_H

#include <stdio.h>

#include "hakd/data.h"
#include "hakd/metrics.h"
#include "hakd/model.h"

typedef enum { HAKD_EVAL_WHOLE, HAKD_EVAL_SLIDE } hakd_eval_mode;

typedef struct {
  hakd_eval_mode mode;
  int crop_h, crop_w, stride_h, stride_w; /* slide mode */
  int flip;                               /* also average the horizontally flipped image */
  int n_scales;
  float scales[8];          /* multi-scale ratios (1 scale of 1.0 = single scale) */
  int scale_h, scale_w;     /* keep-ratio resize bound before scaling (0 = whole image) */
  hakd_norm norm;
  hakd_precision precision;  /* HAKD_FP32 */
  const char *save_pred_dir; /* class-index PNGs (scorable by `hakd miou`) + overlays/ */
  int skip_bad;
  int64_t max_images;        /* 0 = all */
  FILE *progress;            /* progress line with rate and ETA (NULL: none) */
  FILE *warnings;            /* one line per item skipped by skip_bad (NULL: none) */
  /* Sharded evaluation (data-parallel runs): only the items i with i % shard_count == shard_index
   * are scored here, and the shards' confusion matrices add up to the whole split's. 0, 0: all. */
  int shard_index, shard_count;
} hakd_eval_options;

void hakd_eval_options_default(hakd_eval_options *o);
/* "whole, single scale" / "slide 512x1024 stride 341x683, flip, scales 0.5,...": the protocol. */
void hakd_eval_protocol(const hakd_eval_options *o, char *buf, size_t size);

/* Runs the model (eval mode, no grad) over the dataset and accumulates cm (K of the model must
 * equal the dataset's). Errors name the image. */
int hakd_evaluate(hakd_model *m, const hakd_dataset *ds, const hakd_eval_options *o, hakd_confusion *cm);

/* Class probabilities (K, h, w) of one normalised image (3, h, w) with the options' protocol. */
int hakd_predict_probs(hakd_model *m, hakd_ctx *ctx, const float *image, int h, int w, const hakd_eval_options *o,
                       float *probs);

/* Colour overlay: out = (1 - alpha) * rgb + alpha * palette[mask]; ignore (255) keeps the pixel. */
void hakd_overlay(uint8_t *out, const uint8_t *rgb, const int32_t *mask, int64_t n, const uint8_t *palette,
                  int num_colors, float alpha);

#endif
