/* The trainer: `hakd train` (labels only) and `hakd distill` (teacher + student + method)
 * under one loop, with evaluation, atomic checkpoints, bit-identical resume, logs and plots. */
#ifndef HAKD_TRAIN_H
#define HAKD_TRAIN_H

#include <stdio.h>

#include "hakd/config.h"

typedef struct {
  int num_classes;
  int64_t iters_done;
  double final_miou, best_miou, teacher_miou; /* fractions; teacher_miou NAN without teacher */
  double final_class_iou[256], teacher_class_iou[256];
} hakd_train_result;

/* Runs a whole training (distill = 0) or distillation (distill = 1) described by config:
 * writes <work_dir>/config.txt, log.jsonl, latest.safetensors (+ .state.safetensors),
 * best.safetensors, loss.png, miou.png. Logs go to `log` (stdout in the CLI); when stderr is a
 * terminal, a live progress line with rate and ETA is drawn there too. */
int hakd_train_run(const hakd_config *config, int distill, FILE *log, hakd_train_result *result);

#endif
