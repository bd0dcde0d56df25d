/* The trainer end to end on tiny models and a tiny synthetic dataset: every distillation
 * method runs, checkpoints, resumes bit-identically, evaluates; bad configs fail clearly. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "harness.h"
#include "train_testutil.h"
#include "hakd/config.h"
#include "hakd/data.h"
#include "hakd/evaluate.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/train.h"
#include "train/numerics.h"



static FILE *quiet_log(void) {
  FILE *f = fopen("/dev/null", "w");
  return f ? f : stdout;
}

static int file_exists(const char *dir, const char *name) {
  char path[1200];
  struct stat sb;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  return stat(path, &sb) == 0;
}

/* The tiny teacher every distillation test reads (trained once per process). */
static const char *teacher_weights(const char *root) {
  static char path[1200];
  hakd_config c;
  tiny_config(&c, root, "deeplabv3-r18-d8", "teacher");
  snprintf(path, sizeof path, "%s/best.safetensors", c.work_dir);
  struct stat sb;
  if (stat(path, &sb) == 0) return path;
  hakd_train_result r;
  FILE *log = quiet_log();
  int rc = hakd_train_run(&c, 0, log, &r);
  fclose(log);
  return rc ? NULL : path;
}

TEST(train_writes_checkpoints_logs_and_plots) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  hakd_config c;
  tiny_config(&c, root, "segformer-b0", "train");
  snprintf(c.optimizer, sizeof c.optimizer, "adamw");
  c.lr = 1e-3f;
  hakd_train_result r;
  FILE *log = quiet_log();
  int rc = hakd_train_run(&c, 0, log, &r);
  fclose(log);
  ASSERT_OK(rc);
  ASSERT_EQ_INT(r.iters_done, 4);
  ASSERT_TRUE(r.final_miou >= 0 && r.final_miou <= 1);
  const char *files[] = {"config.txt", "log.jsonl", "latest.safetensors", "latest.state.safetensors",
                         "best.safetensors", "loss.png", "miou.png"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
    if (!file_exists(c.work_dir, files[i])) test_fail(__FILE__, __LINE__, "missing %s/%s", c.work_dir, files[i]);
  }
  /* The exported weights load back strictly into the same model. */
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = r.num_classes;
  mo.width = c.width;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("segformer-b0", &mo, &m));
  char path[1200];
  snprintf(path, sizeof path, "%s/best.safetensors", c.work_dir);
  ASSERT_OK(hakd_model_load(m, path, NULL, NULL));
  hakd_model_free(m);
}

TEST(every_distill_method_runs) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  const char *tw = teacher_weights(root);
  if (!tw) test_fail(__FILE__, __LINE__, "teacher training failed: %s", hakd_error_message());
  ASSERT_TRUE(tw != NULL);
  const char *methods[] = {"none", "kd", "cwd", "fitnet", "heteroakd"};
  for (int i = 0; i < 5; i++) {
    hakd_config c;
    tiny_config(&c, root, "segformer-b0", methods[i]);
    snprintf(c.teacher, sizeof c.teacher, "deeplabv3-r18-d8");
    c.teacher_width = 0.125f;
    snprintf(c.teacher_weights, sizeof c.teacher_weights, "%s", tw);
    snprintf(c.method, sizeof c.method, "%s", methods[i]);
    snprintf(c.optimizer, sizeof c.optimizer, "adamw");
    c.lr = 1e-3f;
    c.warmup_iters = 1;
    if (!strcmp(methods[i], "kd")) snprintf(c.teacher_norm, sizeof c.teacher_norm, "bgr-mean");
    snprintf(c.dump_kem, sizeof c.dump_kem, "%s/kem", c.work_dir);
    c.dump_every = 2;
    hakd_train_result r;
    FILE *log = quiet_log();
    int rc = hakd_train_run(&c, 1, log, &r);
    fclose(log);
    if (rc) test_fail(__FILE__, __LINE__, "method %s: %s", methods[i], hakd_error_message());
    ASSERT_OK(rc);
    ASSERT_TRUE(r.teacher_miou >= 0 && r.teacher_miou <= 1);
    ASSERT_TRUE(file_exists(c.work_dir, "latest.state.safetensors"));
    if (!strcmp(methods[i], "heteroakd")) ASSERT_TRUE(file_exists(c.work_dir, "kem/kem_iter000004.png"));
  }
}


/* N iterations straight == N/2, stop, resume, N/2: same weights, same optimizer state. */
TEST(resume_is_bit_identical) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  const char *tw = teacher_weights(root);
  ASSERT_TRUE(tw != NULL);
  hakd_config a, b;
  tiny_config(&a, root, "segformer-b0", "straight");
  snprintf(a.teacher, sizeof a.teacher, "deeplabv3-r18-d8");
  a.teacher_width = 0.125f;
  snprintf(a.teacher_weights, sizeof a.teacher_weights, "%s", tw);
  snprintf(a.method, sizeof a.method, "heteroakd");
  snprintf(a.optimizer, sizeof a.optimizer, "adamw");
  a.lr = 1e-3f;
  a.iters = 6;
  a.warmup_iters = 2;
  b = a;
  snprintf(b.work_dir, sizeof b.work_dir, "%s/staged", test_tmpdir());
  b.stop_after = 3;
  hakd_train_result r;
  FILE *log = quiet_log();
  ASSERT_OK(hakd_train_run(&a, 1, log, &r));
  ASSERT_OK(hakd_train_run(&b, 1, log, &r));
  ASSERT_EQ_INT(r.iters_done, 3);
  b.stop_after = 0;
  snprintf(b.resume, sizeof b.resume, "auto");
  ASSERT_OK(hakd_train_run(&b, 1, log, &r));
  fclose(log);
  ASSERT_EQ_INT(r.iters_done, 6);
  const char *files[] = {"latest.safetensors", "latest.state.safetensors"};
  for (int f = 0; f < 2; f++) {
    char pa[1200], pb[1200];
    snprintf(pa, sizeof pa, "%s/%s", a.work_dir, files[f]);
    snprintf(pb, sizeof pb, "%s/%s", b.work_dir, files[f]);
    float *va, *vb;
    int64_t na, nb;
    ASSERT_OK(read_all_floats(pa, &va, &na));
    ASSERT_OK(read_all_floats(pb, &vb, &nb));
    ASSERT_EQ_INT(na, nb);
    ASSERT_TRUE(na > 0);
    int same = memcmp(va, vb, (size_t)na * sizeof(float)) == 0;
    if (!same) test_fail(__FILE__, __LINE__, "%s differs between the straight and the resumed run", files[f]);
    free(va);
    free(vb);
  }
}

TEST(evaluate_scores_saved_predictions) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  const char *tw = teacher_weights(root);
  ASSERT_TRUE(tw != NULL);
  hakd_dataset_config dc = {"generic", root, "val", 0};
  hakd_dataset *ds;
  ASSERT_OK(hakd_dataset_open(&ds, &dc));
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = hakd_dataset_num_classes(ds);
  mo.width = 0.125f;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &mo, &m));
  ASSERT_OK(hakd_model_load(m, tw, NULL, NULL));
  hakd_eval_options o;
  hakd_eval_options_default(&o);
  char pred_dir[700];
  snprintf(pred_dir, sizeof pred_dir, "%s/pred", test_tmpdir());
  o.save_pred_dir = pred_dir;
  hakd_confusion whole, slide;
  ASSERT_OK(hakd_confusion_init(&whole, mo.num_classes));
  ASSERT_OK(hakd_confusion_init(&slide, mo.num_classes));
  ASSERT_OK(hakd_evaluate(m, ds, &o, &whole));
  /* A slide window covering the whole image gives the whole-image result. */
  o.save_pred_dir = NULL;
  o.mode = HAKD_EVAL_SLIDE;
  o.crop_h = o.crop_w = 32;
  o.stride_h = o.stride_w = 16;
  ASSERT_OK(hakd_evaluate(m, ds, &o, &slide));
  uint64_t total = 0;
  for (int i = 0; i < mo.num_classes * mo.num_classes; i++) {
    ASSERT_EQ_INT(whole.counts[i], slide.counts[i]);
    total += whole.counts[i];
  }
  ASSERT_TRUE(total > 0);
  /* An evaluation leaves the model's freezing as it is (it only reads the model; the trainer
   * freezes its student around its evaluations) and scores a frozen model the same. */
  hakd_params *params = hakd_model_params(m);
  ASSERT_TRUE(params->items[0]->frozen == 0);
  hakd_params_freeze(params, 1);
  uint64_t stamp = params->items[0]->frozen;
  hakd_confusion frozen;
  ASSERT_OK(hakd_confusion_init(&frozen, mo.num_classes));
  o.mode = HAKD_EVAL_WHOLE;
  ASSERT_OK(hakd_evaluate(m, ds, &o, &frozen));
  ASSERT_TRUE(params->items[0]->frozen == stamp);
  for (int i = 0; i < mo.num_classes * mo.num_classes; i++) ASSERT_EQ_INT(whole.counts[i], frozen.counts[i]);
  hakd_confusion_free(&frozen);
  /* Saved masks are named after the images and have their size. */
  const char *img = hakd_dataset_image_path(ds, 0);
  const char *base = strrchr(img, '/') ? strrchr(img, '/') + 1 : img;
  char mask_path[1400];
  snprintf(mask_path, sizeof mask_path, "%s/%.*s.png", pred_dir, (int)(strrchr(base, '.') - base), base);
  int w, h;
  int32_t *mask;
  ASSERT_OK(hakd_label_read(mask_path, &w, &h, &mask));
  ASSERT_EQ_INT(w, 32);
  ASSERT_EQ_INT(h, 32);
  free(mask);
  hakd_confusion_free(&whole);
  hakd_confusion_free(&slide);
  hakd_model_free(m);
  hakd_dataset_free(ds);
}

/* 1 when `text` names at least one training image of the dataset by its file name. */
static int names_a_training_image(const char *text, const char *root) {
  hakd_dataset_config dc = {"generic", root, "train", 0};
  hakd_dataset *ds;
  if (hakd_dataset_open(&ds, &dc)) return 0;
  int found = 0;
  for (int64_t i = 0; i < hakd_dataset_count(ds) && !found; i++) {
    const char *path = hakd_dataset_image_path(ds, i), *base = strrchr(path, '/');
    found = strstr(text, base ? base + 1 : path) != NULL;
  }
  hakd_dataset_free(ds);
  return found;
}

TEST(nan_loss_stops_with_iteration_and_term) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  hakd_config c;
  tiny_config(&c, root, "deeplabv3-r18-d8", "nan");
  c.lr = 1e30f;
  c.iters = 6;
  hakd_train_result r;
  FILE *log = quiet_log();
  int rc = hakd_train_run(&c, 0, log, &r);
  fclose(log);
  ASSERT_EQ_INT(rc, HAKD_ENUMERIC);
  const char *msg = hakd_error_message();
  if (!strstr(msg, "iteration ") || !strstr(msg, "on the batch of ") || !names_a_training_image(msg, root))
    test_fail(__FILE__, __LINE__, "the message lacks the iteration or the batch's files: %s", msg);
  ASSERT_TRUE(strstr(msg, "'ce'") != NULL || strstr(msg, "'loss'") != NULL || strstr(msg, "gradient of '") != NULL);
  ASSERT_TRUE(names_a_training_image(msg, root));
}

static int64_t state_meta(const char *dir, const char *key) {
  char path[1200];
  snprintf(path, sizeof path, "%s/latest.state.safetensors", dir);
  hakd_st_file *f;
  if (hakd_st_open(path, &f)) return -1;
  const char *v = hakd_st_metadata(f, key);
  int64_t out = v ? atoll(v) : -1;
  hakd_st_close(f);
  return out;
}

/* lr 1e30: the first step succeeds, every later loss is NaN. --skip-nonfinite 2 skips two such
 * batches and stops at the third; 10 skips all five (the count survives a resume), makes no
 * optimizer step for them, and puts back the BatchNorm statistics their forward spoilt. */
TEST(skip_nonfinite_skips_counts_and_stops_beyond_the_limit) {
  const char *root = make_dataset();
  ASSERT_TRUE(root != NULL);
  hakd_config c;
  tiny_config(&c, root, "deeplabv3-r18-d8", "skip2");
  ASSERT_OK(hakd_config_set(&c, "skip-nonfinite", "2"));
  ASSERT_EQ_INT(c.skip_nonfinite, 2);
  c.lr = 1e30f;
  c.iters = 6;
  hakd_train_result r;
  FILE *log = quiet_log();
  ASSERT_EQ_INT(hakd_train_run(&c, 0, log, &r), HAKD_ENUMERIC);
  if (!strstr(hakd_error_message(), "2 such batches were skipped already"))
    test_fail(__FILE__, __LINE__, "message: %s", hakd_error_message());
  ASSERT_TRUE(strstr(hakd_error_message(), "2 such batches were skipped already") != NULL);
  ASSERT_TRUE(names_a_training_image(hakd_error_message(), root));
  ASSERT_EQ_INT(r.skipped_nonfinite, 2);

  tiny_config(&c, root, "deeplabv3-r18-d8", "skip10");
  c.skip_nonfinite = 10;
  c.lr = 1e30f;
  c.iters = 6;
  c.stop_after = 3;
  ASSERT_OK(hakd_train_run(&c, 0, log, &r));
  ASSERT_EQ_INT(r.skipped_nonfinite, 2);
  c.stop_after = 0;
  snprintf(c.resume, sizeof c.resume, "auto");
  ASSERT_OK(hakd_train_run(&c, 0, log, &r));
  fclose(log);
  ASSERT_EQ_INT(r.iters_done, 6);
  ASSERT_EQ_INT(r.skipped_nonfinite, 5);
  ASSERT_EQ_INT(state_meta(c.work_dir, "skipped_nonfinite"), 5);
  ASSERT_EQ_INT(state_meta(c.work_dir, "optimizer_steps"), 1);
  /* Every weight and running statistic is still a number. */
  char path[1200];
  snprintf(path, sizeof path, "%s/latest.safetensors", c.work_dir);
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(path, &f));
  for (int i = 0; i < hakd_st_count(f); i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    if (t->dtype != HAKD_ST_F32) continue;
    int64_t n = (int64_t)(t->nbytes / 4);
    float *v = malloc((size_t)n * sizeof(float) + 4);
    ASSERT_OK(hakd_st_read_f32(f, t->name, v, n));
    int64_t bad = 0;
    for (int64_t k = 0; k < n; k++) bad += !isfinite(v[k]);
    if (bad) test_fail(__FILE__, __LINE__, "%s: %lld non-finite values after skipped batches", t->name, (long long)bad);
    free(v);
  }
  hakd_st_close(f);
  /* The log counts the skips, with the batch's files. */
  snprintf(path, sizeof path, "%s/log.jsonl", c.work_dir);
  FILE *jl = fopen(path, "r");
  ASSERT_TRUE(jl != NULL);
  char line[2048];
  int skip_lines = 0, last_count = 0;
  while (fgets(line, sizeof line, jl)) {
    const char *k = strstr(line, "\"skipped_nonfinite\": ");
    if (strstr(line, "\"skipped\": ") && strstr(line, "\"samples\": ")) skip_lines++;
    if (k) last_count = atoi(k + strlen("\"skipped_nonfinite\": "));
  }
  fclose(jl);
  ASSERT_EQ_INT(skip_lines, 5);
  ASSERT_EQ_INT(last_count, 5);
  hakd_config_default(&c);
  ASSERT_EQ_INT(hakd_config_set(&c, "skip_nonfinite", "many"), HAKD_EINVAL);
}

/* The gradient check finds a NaN or an Inf anywhere in any trainable tensor, by name, and
 * ignores buffers (no gradient). */
TEST(nonfinite_gradient_is_found_by_name) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t shape[1] = {37}; /* not a multiple of any vector width: the tail is checked too */
  hakd_tensor *a = hakd_params_add(&p, "backbone.conv1.weight", 1, shape, 0);
  hakd_params_add(&p, "backbone.bn1.running_var", 1, shape, 1);
  hakd_tensor *b = hakd_params_add(&p, "classifier.4.weight", 1, shape, 0);
  ASSERT_TRUE(a && b);
  float bad = 0;
  ASSERT_TRUE(numerics_nonfinite_grad(&p, &bad) == NULL);
  const float poisons[] = {NAN, INFINITY, -INFINITY};
  for (int i = 0; i < 3; i++)
    for (int at = 0; at < 37; at += 12) {
      hakd_params_zero_grad(&p);
      b->grad[at] = poisons[i];
      b->grad[(at + 1) % 37] = 3.4e38f; /* finite, however large */
      const hakd_tensor *found = numerics_nonfinite_grad(&p, &bad);
      ASSERT_TRUE(found == b);
      ASSERT_TRUE(!strcmp(found->name, "classifier.4.weight"));
      ASSERT_TRUE(isnan(poisons[i]) ? isnan(bad) : bad == poisons[i]);
    }
  hakd_params_zero_grad(&p);
  a->grad[36] = NAN;
  b->grad[0] = INFINITY;
  ASSERT_TRUE(numerics_nonfinite_grad(&p, &bad) == a); /* the first in state_dict order */
  hakd_params_free(&p);
}

TEST(config_file_unknown_key_and_flags) {
  char path[700];
  snprintf(path, sizeof path, "%s/bad.cfg", test_tmpdir());
  FILE *f = fopen(path, "w");
  fprintf(f, "# comment\nmodel = segformer-b0\nbatch = 4\nlearning_rate = 0.1\n");
  fclose(f);
  hakd_config c;
  hakd_config_default(&c);
  ASSERT_EQ_INT(hakd_config_load(&c, path), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "bad.cfg:4") != NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "learning_rate") != NULL);
  f = fopen(path, "w");
  fprintf(f, "model = \"segformer-b0\"\nbatch = 4\nlambda_hakd = 0.5\n");
  fclose(f);
  hakd_config_default(&c);
  ASSERT_OK(hakd_config_load(&c, path));
  ASSERT_EQ_INT(c.batch, 4);
  ASSERT_TRUE(!strcmp(c.model, "segformer-b0"));
  ASSERT_NEAR(c.lambda_hakd, 0.5, 0);
  ASSERT_OK(hakd_config_set(&c, "lambda-hakd", "2"));
  ASSERT_NEAR(c.lambda_hakd, 2.0, 0);
  ASSERT_EQ_INT(hakd_config_set(&c, "batch", "four"), HAKD_EINVAL);
  ASSERT_EQ_INT(hakd_config_set(&c, "T", "nan"), HAKD_EINVAL);
}

/* A NUL byte is an error naming file and line wherever it is, the last line without a
 * newline included (it used to load `model = a<NUL>b` there as model "a"). */
TEST(config_file_nul_byte_on_any_line) {
  static const char mid[] = "batch = 4\nmodel = a\0b\nwidth = 1\n", last[] = "batch = 4\nmodel = a\0b";
  const char *texts[2] = {mid, last};
  size_t sizes[2] = {sizeof mid - 1, sizeof last - 1};
  for (int i = 0; i < 2; i++) {
    char path[700];
    snprintf(path, sizeof path, "%s/nul.cfg", test_tmpdir());
    FILE *f = fopen(path, "wb");
    ASSERT_TRUE(f != NULL);
    fwrite(texts[i], 1, sizes[i], f);
    fclose(f);
    hakd_config c;
    hakd_config_default(&c);
    ASSERT_EQ_INT(hakd_config_load(&c, path), HAKD_EFORMAT);
    ASSERT_TRUE(strstr(hakd_error_message(), "nul.cfg:2: NUL byte") != NULL);
  }
}

/* Every shipped config parses with the key table and passes the cross-key checks. */
TEST(shipped_configs_are_valid) {
  const char *names[] = {
      "heteroakd_deeplabv3-mit-b4_to_deeplabv3-mbv2_cityscapes-512x1024.cfg",
      "heteroakd_deeplabv3-mit-b4_to_deeplabv3-mbv2_voc-512x512.cfg",
      "heteroakd_deeplabv3-mit-b4_to_deeplabv3-mbv2_ade20k-512x512.cfg",
      "heteroakd_deeplabv3-mit-b4_to_deeplabv3-r18-d8_cityscapes-512x1024.cfg",
      "heteroakd_deeplabv3-r101-d8_to_segformer-b0_cityscapes-512x1024.cfg",
      "heteroakd_deeplabv3-r101-d8_to_segformer-b0_voc-512x512.cfg",
      "heteroakd_deeplabv3-r101-d8_to_segformer-b0_ade20k-512x512.cfg",
      "demo_teacher_deeplabv3-r18-d8_synth-64x64.cfg",
      "demo_heteroakd_deeplabv3-r18-d8_to_segformer-b0_synth-64x64.cfg",
  };
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char path[1024];
    snprintf(path, sizeof path, "%s/configs/%s", HAKD_SOURCE_DIR, names[i]);
    hakd_config c;
    hakd_config_default(&c);
    int rc = hakd_config_load(&c, path);
    if (!rc) rc = hakd_config_validate(&c, strstr(names[i], "teacher_") == NULL);
    if (rc) test_fail(__FILE__, __LINE__, "%s: %s", names[i], hakd_error_message());
    ASSERT_OK(rc);
    hakd_model_options mo;
    hakd_model_options_default(&mo);
    ASSERT_TRUE(hakd_model_description(c.model) != NULL);
  }
}
