/* Training configuration: one table of known keys drives the config file parser
 * (flat `key = value`, `#` comments; an unknown key is an error), the command-line flags
 * (`--key value`, `-` and `_` interchangeable; booleans as bare flags) and the usage text.
 * The resolved configuration is written to the work directory. */
#ifndef HAKD_CONFIG_H
#define HAKD_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#define HAKD_PATH_MAX 512
#define HAKD_NAME_MAX 64

typedef struct {
  /* what to train, on what */
  char model[HAKD_NAME_MAX], dataset[HAKD_NAME_MAX], data_root[HAKD_PATH_MAX];
  char train_split[HAKD_NAME_MAX], val_split[HAKD_NAME_MAX];
  float width, drop_path;
  int deep_stem, aux; /* aux: -1 = model default */
  char aspp_dilations[32], teacher_aspp_dilations[32]; /* DeepLabV3 ASPP rates "12,24,36" */
  char pretrained[HAKD_PATH_MAX], weights_prefix[HAKD_NAME_MAX];
  int pretrained_backbone;
  /* data */
  char crop[32]; /* "HxW" */
  int batch, workers, skip_bad, flip, photometric;
  float ratio_min, ratio_max, cat_max_ratio;
  char norm[16];       /* imagenet | bgr-mean */
  char eval_scale[32]; /* "" = whole image, or "HxW" keep-ratio bound */
  /* optimisation */
  int64_t iters;
  char optimizer[16]; /* sgd | adamw */
  float lr, wd, momentum, head_lr_mult, clip_norm, aux_weight;
  char schedule[16]; /* poly */
  float power, min_lr, warmup_ratio;
  int64_t warmup_lr_iters;
  /* bookkeeping */
  char work_dir[HAKD_PATH_MAX], resume[HAKD_PATH_MAX];
  int64_t eval_every, save_every, log_every, stop_after;
  int64_t skip_nonfinite; /* batches with a NaN/Inf loss or gradient to skip before stopping */
  int64_t seed;
  int threads;
  char precision[8]; /* fp32 | bf16 */
  int memory_check;  /* refuse a batch/crop whose estimated step exceeds the available memory */
  int sync_bn;       /* data-parallel runs: BatchNorm over the global batch; -1 = on when N > 1 */
  /* distillation */
  char teacher[HAKD_NAME_MAX], teacher_weights[HAKD_PATH_MAX], method[16], teacher_norm[16];
  float teacher_width;
  char hakd_stages[32], reliability[8], kem_axis[16], hakd_grid[16];
  float T, lambda_kd, lambda_hakd, lambda_proj, lambda_cwd, lambda_fitnet, kd_T, cwd_T;
  int64_t warmup_iters; /* -1 = 10% of iters */
  int no_kmm, no_kem, proj_relu, proj_grad_to_student, fitnet_stage;
  char dump_kem[HAKD_PATH_MAX];
  int64_t dump_every;
} hakd_config;

typedef enum { HAKD_KEY_STR, HAKD_KEY_INT, HAKD_KEY_INT64, HAKD_KEY_FLOAT, HAKD_KEY_BOOL } hakd_key_type;

typedef struct {
  const char *key;
  hakd_key_type type;
  size_t offset, size; /* in hakd_config; size for strings */
  const char *default_value;
  const char *help;
  int distill_only; /* shown by `hakd distill --help` only */
} hakd_config_key;

/* Every known key, terminated by a NULL key. */
const hakd_config_key *hakd_config_keys(void);
void hakd_config_default(hakd_config *c);
/* Sets one key from text; errors name the key and the bad value. `-` in key means `_`. */
int hakd_config_set(hakd_config *c, const char *key, const char *value);
/* Reads a config file; errors name the file and line (unknown key, bad value, no `=`). */
int hakd_config_load(hakd_config *c, const char *path);
/* Writes every key as `key = value` (atomic when path given). */
int hakd_config_write(const hakd_config *c, FILE *out);
int hakd_config_save(const hakd_config *c, const char *path);
/* Parses "512x1024" (or "512") into h, w. */
int hakd_parse_size(const char *text, int *h, int *w);
/* Semantic checks across keys (positive iters/batch, known optimizer/method, crop set, ...). */
int hakd_config_validate(const hakd_config *c, int distill);

#endif
