/* Memory up front: what one training or distillation step will need at the configured batch and
 * crop, against what this machine can give, so that a batch/crop that cannot fit is refused
 * before training starts (with the estimate) instead of dying in the first step, or hours later
 * at the first evaluation, under the OOM killer. */
#ifndef HAKD_TRAIN_MEMORY_H
#define HAKD_TRAIN_MEMORY_H

#include <stddef.h>
#include <stdio.h>

#include "hakd/distill.h"
#include "hakd/model.h"

typedef struct {
  hakd_model *student;
  hakd_model *teacher;        /* NULL unless the teacher runs in every step */
  hakd_distiller *distiller;  /* NULL when training on labels */
  int batch, crop_h, crop_w;
  float aux_weight;
  hakd_precision precision;
  int optimizer_copies;       /* optimizer state per trainable scalar: SGD 1, AdamW 2 */
  size_t batch_bytes;         /* the trainer's and the loader's batch buffers */
} train_memory_probe;

typedef struct {
  double step;      /* activations and their gradients: the step's planned block */
  double scratch;   /* convolution temporaries (the ops' scratch block, ops/scratch.h) */
  double fixed;     /* parameter gradients, optimizer state, batch buffers */
  double resident;  /* the process now: code, libraries, parameters, teacher */
  double total;     /* the sum: resident memory the process reaches in training */
  double available; /* what the process can reach: resident + the tightest of the limits */
  char source[64];  /* which limit: "MemAvailable", "cgroup memory.max", "RLIMIT_AS" */
} train_memory_estimate;

/* Runs probe steps at batch min(batch, 2) on small crops (the crop itself up to 256x256; beyond,
 * two crops of the crop's shape near 128x128 and 256x256 pixels, whose per-image step memory is
 * fitted as a*pixels + b*pixels^2: attention matrices grow with the square of the tokens) and
 * extrapolates to the configured batch and crop. The probes run the same graph as the trainer's
 * step (forward, CE, aux CE, distillation terms past their warm-up, backward) in their own
 * context; the models' running statistics are restored and their gradients zeroed afterwards,
 * so training is bit-identical with or without the check. */
int train_memory_estimate_step(const train_memory_probe *p, train_memory_estimate *out);

/* What the process can reach: resident memory now plus the smallest of MemAvailable
 * (/proc/meminfo), the cgroup's memory.max - memory.current, RLIMIT_AS - the address space in
 * use. */
void train_memory_available(train_memory_estimate *e);

/* Estimates the step (train_memory_estimate_step), writes a line with the estimate to `log` (if
 * not NULL), and refuses (HAKD_ENOMEM, the message naming batch, crop, estimate, available
 * memory and what to lower) when the estimate exceeds the available memory. `what`: "training"
 * or "distillation". */
int train_memory_check(const train_memory_probe *p, const char *what, FILE *log);

/* Resident bytes of this process now (/proc/self/statm; 0 if unreadable). */
double train_memory_resident(void);

/* "155.5 TB" / "22.3 GB" / "1092 MB" into buf (binary units, MB below 10 GB). */
const char *train_memory_format(char *buf, size_t size, double bytes);

#endif
