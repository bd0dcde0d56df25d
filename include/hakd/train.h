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
  int stop_signal;             /* the signal passed to hakd_train_request_stop, when that stopped the run */
  char checkpoint[HAKD_PATH_MAX + 64]; /* the newest checkpoint written by this run ("" if none) */
  int64_t skipped_nonfinite;   /* batches skipped by skip_nonfinite (whole run, resumes included) */
} hakd_train_result;

/* Runs a whole training (distill = 0) or distillation (distill = 1) described by config:
 * writes <work_dir>/config.txt, log.jsonl, the checkpoint pair iter_N.safetensors +
 * iter_N.state.safetensors with the links latest.safetensors / latest.state.safetensors to it,
 * best.safetensors, loss.png, miou.png. Returns HAKD_EINTERRUPTED (after saving a checkpoint)
 * when hakd_train_request_stop was called, HAKD_ENUMERIC when a loss term or a gradient is not
 * finite (beyond skip_nonfinite such batches), with a message naming the iteration, the term
 * or parameter and the batch's files. Logs go to `log` (stdout in the CLI); when stderr is a
 * terminal, a live progress line with rate and ETA is drawn there too. */
int hakd_train_run(const hakd_config *config, int distill, FILE *log, hakd_train_result *result);

/* Asks the running hakd_train_run to stop once the iteration in progress is done: it writes a
 * checkpoint and returns HAKD_EINTERRUPTED with result->stop_signal = signo. Only stores to a
 * volatile sig_atomic_t, so a SIGINT/SIGTERM handler may call it (the CLI's does). A request
 * made before the run's first iteration stops it there; a run that ends before it sees the
 * request completes normally. The request is consumed when hakd_train_run returns. */
void hakd_train_request_stop(int signo);

#endif
