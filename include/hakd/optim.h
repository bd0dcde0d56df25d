/* Optimizers (SGD with momentum, AdamW) over parameter groups, gradient clipping, and the
 * learning-rate schedule. Updates follow torch.optim.SGD / torch.optim.AdamW exactly. */
#ifndef HAKD_OPTIM_H
#define HAKD_OPTIM_H

#include "hakd/tensor.h"

typedef enum { HAKD_OPTIM_SGD, HAKD_OPTIM_ADAMW } hakd_optim_kind;

typedef struct {
  hakd_optim_kind kind;
  float momentum;         /* SGD */
  float weight_decay;     /* SGD: L2 added to the gradient; AdamW: decoupled */
  float beta1, beta2, eps; /* AdamW */
  float clip_norm;        /* > 0: clip the global gradient norm to this */
} hakd_optim_config;

/* SGD momentum 0.9, wd 1e-4 (CIRKD); AdamW betas (0.9, 0.999), eps 1e-8, wd 0.01. */
void hakd_optim_config_default(hakd_optim_config *c, hakd_optim_kind kind);

typedef struct hakd_optimizer hakd_optimizer;

hakd_optimizer *hakd_optim_new(const hakd_optim_config *c);
void hakd_optim_free(hakd_optimizer *o);
/* Adds the trainable tensors of p whose name starts with `prefix` (NULL: all) and that are not
 * in the optimizer yet, as one group with its own lr multiplier; no_decay_1d exempts
 * 1-D tensors (norm weights, biases) from weight decay. Returns the number added, or < 0. */
int hakd_optim_add_group(hakd_optimizer *o, hakd_params *p, const char *prefix, float lr_mult, int no_decay_1d);
/* One update with base learning rate lr; returns the gradient norm before clipping (for logs). */
double hakd_optim_step(hakd_optimizer *o, float lr);
void hakd_optim_zero_grad(hakd_optimizer *o);
int64_t hakd_optim_steps(const hakd_optimizer *o);

/* State for checkpoints: the moment buffers as named tensors
 * ("<param>.momentum_buffer" for SGD; "<param>.exp_avg", "<param>.exp_avg_sq" for AdamW). */
int hakd_optim_state_count(const hakd_optimizer *o);
/* i-th state buffer: name (valid until free), data and numel. */
void hakd_optim_state_at(hakd_optimizer *o, int i, const char **name, float **data, int64_t *numel);
void hakd_optim_set_steps(hakd_optimizer *o, int64_t steps);

/* ---- learning-rate schedule ---- */

typedef struct {
  float base_lr;
  int64_t max_iters;
  float power;            /* poly power, 0.9 */
  float min_lr;           /* floor of the poly decay */
  int64_t warmup_iters;   /* linear warm-up length (0 = none) */
  float warmup_ratio;     /* lr at iteration 0 = base * ratio (mmseg's linear warm-up) */
} hakd_schedule;

/* lr for iteration `iter` (0-based): (base - min) * (1 - iter/max)^power + min, times the
 * mmseg linear warm-up factor 1 - (1 - iter/warmup) * (1 - ratio) during warm-up. */
float hakd_schedule_lr(const hakd_schedule *s, int64_t iter);

#endif
