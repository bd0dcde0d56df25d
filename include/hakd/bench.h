/* Throughput benchmark of one inference, training or distillation step on random data (no data
 * loading), the library side of `hakd bench`. A training step is what the trainer does
 * (src/train/trainer.c train_step): forward, cross-entropy on the logits upsampled bilinearly to
 * the input size (+ 0.4 x the aux head's), backward, optimizer step; a distillation step runs the
 * teacher first with grad and training off and adds the distiller's terms.
 *
 * FLOP convention (one multiply-add = 2 FLOPs, counted over convolutions, linear layers and
 * matrix products as executed: hakd_model_executed_macs, which leaves out the products with the
 * zero padding that the convolution kernels skip; normalisation, activations, resizing, losses
 * and the optimizer are not counted):
 *   infer:   2 x MACs per image;
 *   train:   3 x the forward FLOPs (forward + backward for inputs + backward for weights),
 *            i.e. 6 x MACs per image;
 *   distill: the teacher's forward (2 x its MACs) + the student's training step (6 x its MACs)
 *            per image; the distiller's projectors are not counted. */
#ifndef HAKD_BENCH_H
#define HAKD_BENCH_H

#include <stdint.h>

#include "hakd/distill.h"

typedef enum { HAKD_BENCH_INFER = 0, HAKD_BENCH_TRAIN, HAKD_BENCH_DISTILL } hakd_bench_mode;

typedef struct {
  const char *model;          /* the benchmarked model (the student when distilling) */
  const char *teacher;        /* distill only */
  hakd_bench_mode mode;
  hakd_distill_method method; /* distill only; HAKD_DISTILL_HETEROAKD by default */
  int height, width, batch;
  int num_classes;            /* 19 */
  float width_mult;           /* channel multiplier of the model and the teacher (1) */
  int warmup, iters;          /* untimed, then timed iterations (2, 5) */
  int threads;                /* <= 0: hakd_set_threads' default */
  hakd_precision precision;   /* HAKD_FP32 */
  uint64_t seed;              /* inputs, labels, parameters */
} hakd_bench_config;

void hakd_bench_config_default(hakd_bench_config *c);
/* "infer" | "train" | "distill"; errors name the value. */
int hakd_bench_mode_parse(const char *text, hakd_bench_mode *out);
const char *hakd_bench_mode_name(hakd_bench_mode m);

typedef struct {
  double ms_median, ms_min, ms_max; /* per iteration, over the timed iterations */
  double images_per_s;              /* batch / median time */
  double flops_per_iter;            /* executed FLOPs of one iteration (convention above) */
  double nominal_flops_per_iter;    /* the same with every convolution counted in full (hakd info) */
  double gflops;                    /* flops_per_iter / median time / 1e9 */
  double peak_rss_mb;               /* process high-water mark after the timed iterations */
  double arena_mb;                  /* the step arena's high-water mark */
  int64_t model_macs, teacher_macs; /* one image's executed forward; teacher_macs 0 unless distilling */
  int64_t model_nominal_macs, teacher_nominal_macs; /* the same counted in full */
  int threads;
  const char *optimizer;            /* "none" (infer), "sgd" (CNNs) or "adamw" (transformers) */
} hakd_bench_result;

/* Builds the model(s) with random parameters, runs warmup + iters steps on one random batch
 * (inputs N(0,1), labels uniform in [0, num_classes)) and measures them. The MACs are counted
 * after the peak RSS is read, so counting does not inflate it. Optimizers follow the recipes:
 * SGD (momentum 0.9, wd 1e-4, lr 0.01) for CNN students, AdamW (lr 6e-5, wd 0.01, decode head
 * lr x10) for transformer students. */
int hakd_bench_run(const hakd_bench_config *c, hakd_bench_result *r);

#endif
