/* The tiny training setup shared by the trainer, interruption and memory tests: a 12 + 4 image
 * synthetic set at 32x32 (made once per case in its temporary folder) and a config that trains
 * a width-1/8 model on it for a few iterations. */
#ifndef HAKD_TESTS_TRAIN_TESTUTIL_H
#define HAKD_TESTS_TRAIN_TESTUTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "harness.h"
#include "hakd/config.h"
#include "hakd/data.h"
#include "hakd/io.h"

static inline const char *make_dataset(void) {
  static char root[600];
  snprintf(root, sizeof root, "%s/synth", test_tmpdir());
  struct stat sb;
  if (stat(root, &sb) == 0) return root;
  hakd_synth_config sc = {root, 12, 4, 32, 32, 3};
  if (hakd_synth_write(&sc)) return NULL;
  return root;
}

static inline void tiny_config(hakd_config *c, const char *root, const char *model, const char *work) {
  hakd_config_default(c);
  snprintf(c->model, sizeof c->model, "%s", model);
  snprintf(c->dataset, sizeof c->dataset, "generic");
  snprintf(c->data_root, sizeof c->data_root, "%s", root);
  snprintf(c->crop, sizeof c->crop, "32x32");
  snprintf(c->work_dir, sizeof c->work_dir, "%s/%s", test_tmpdir(), work);
  c->width = 0.125f;
  c->batch = 2;
  c->iters = 4;
  c->workers = 1;
  c->lr = 0.01f;
  c->log_every = 2;
}

/* Every float32 tensor of a safetensors file, concatenated in file order (*out malloc'd): two
 * checkpoints are bit-identical when these are. */
static inline int read_all_floats(const char *path, float **out, int64_t *n) {
  hakd_st_file *f;
  *out = NULL;
  *n = 0;
  int rc = hakd_st_open(path, &f);
  if (rc) return rc;
  int64_t total = 0;
  for (int i = 0; i < hakd_st_count(f); i++)
    if (hakd_st_get(f, i)->dtype == HAKD_ST_F32) total += (int64_t)(hakd_st_get(f, i)->nbytes / 4);
  float *buf = malloc((size_t)total * sizeof(float) + 1);
  int64_t at = 0;
  for (int i = 0; i < hakd_st_count(f) && !rc; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    if (t->dtype != HAKD_ST_F32) continue;
    rc = hakd_st_read_f32(f, t->name, buf + at, (int64_t)(t->nbytes / 4));
    at += (int64_t)(t->nbytes / 4);
  }
  hakd_st_close(f);
  *out = buf;
  *n = total;
  return rc;
}

#endif
