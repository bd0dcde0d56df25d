/* Weights files that describe their model (hakd_model_save's metadata, include/hakd/model.h):
 * a distilled width-0.5 DeepLabV3 student with ASPP rates 1,2,3 opens with no options and
 * predicts exactly what explicit options give, through the API and `hakd predict`; contradicting
 * options are refused naming both values; a PyTorch .pth opens with its class count and width
 * read from its shapes; a checkpoint without the keys (as hakd wrote them before) still opens. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/infer.h"
#include "hakd/io.h"
#include "hakd/ops.h"
#include "hakd/train.h"
#include "train_testutil.h"

static const int rates[3] = {1, 2, 3};

static uint8_t *make_image(int h, int w) {
  uint8_t *rgb = malloc((size_t)h * w * 3);
  for (int i = 0; i < h * w * 3; i++) rgb[i] = (uint8_t)((i * 37 + (i / 7) * 11) & 255);
  return rgb;
}

/* predict_logits of the two models on one 32x32 image are bit-identical. */
static int same_logits(hakd_model *a, hakd_model *b) {
  int h = 32, w = 32, K = hakd_model_num_classes(a);
  if (K != hakd_model_num_classes(b)) return 0;
  uint8_t *rgb = make_image(h, w);
  float *la = malloc((size_t)K * h * w * sizeof(float)), *lb = malloc((size_t)K * h * w * sizeof(float));
  int same = !hakd_model_predict_logits(a, rgb, h, w, 3 * w, la) && !hakd_model_predict_logits(b, rgb, h, w, 3 * w, lb) &&
             !memcmp(la, lb, (size_t)K * h * w * sizeof(float));
  free(rgb), free(la), free(lb);
  return same;
}

static void explicit_student_options(hakd_model_options *o) {
  hakd_model_options_default(o);
  o->num_classes = HAKD_SYNTH_NUM_CLASSES;
  o->width = 0.5f;
  memcpy(o->aspp_dilations, rates, sizeof rates);
}

/* The student of a 2-iteration distillation; the teacher's width comes from its own file. */
static const char *distilled_student(void) {
  static char work[700];
  const char *root = make_dataset();
  if (!root) return NULL;
  char teacher[700];
  snprintf(teacher, sizeof teacher, "%s/teacher.safetensors", test_tmpdir());
  hakd_model_options to;
  hakd_model_options_default(&to);
  to.num_classes = HAKD_SYNTH_NUM_CLASSES;
  to.width = 0.125f;
  hakd_model *t;
  if (hakd_model_create("segformer-b0", &to, &t)) return NULL;
  int rc = hakd_model_save(t, teacher, NULL);
  hakd_model_free(t);
  if (rc) return NULL;
  hakd_config c;
  tiny_config(&c, root, "deeplabv3-r18-d8", "student");
  c.width = 0.5f;
  snprintf(c.aspp_dilations, sizeof c.aspp_dilations, "1,2,3");
  c.iters = 2;
  snprintf(c.teacher, sizeof c.teacher, "segformer-b0"); /* teacher_width: not given, the file's 0.125 */
  snprintf(c.teacher_weights, sizeof c.teacher_weights, "%s", teacher);
  snprintf(c.method, sizeof c.method, "heteroakd");
  c.warmup_iters = 0;
  hakd_train_result r;
  FILE *log = fopen("/dev/null", "w");
  rc = hakd_train_run(&c, 1, log, &r);
  fclose(log);
  if (rc) return NULL;
  snprintf(work, sizeof work, "%s", c.work_dir);
  return work;
}

TEST(distilled_student_opens_by_itself) {
  const char *work = distilled_student();
  if (!work) test_fail(__FILE__, __LINE__, "distillation failed: %s", hakd_error_message());
  ASSERT_TRUE(work != NULL);
  char best[800], path[800];
  snprintf(best, sizeof best, "%s/best.safetensors", work);
  /* every file the run wrote describes the student */
  const char *files[] = {"iter_2.safetensors", "latest.safetensors", "best.safetensors"};
  for (int i = 0; i < 3; i++) {
    snprintf(path, sizeof path, "%s/%s", work, files[i]);
    hakd_model_meta meta;
    ASSERT_OK(hakd_model_meta_read(path, &meta));
    unsigned want = HAKD_META_MODEL | HAKD_META_NUM_CLASSES | HAKD_META_WIDTH | HAKD_META_ASPP | HAKD_META_DEEP_STEM |
                    HAKD_META_AUX_HEAD | HAKD_META_BN_MOMENTUM | HAKD_META_DROPOUT | HAKD_META_DROP_PATH;
    ASSERT_EQ_INT(meta.have, want);
    ASSERT_TRUE(!strcmp(meta.model, "deeplabv3-r18-d8"));
    ASSERT_EQ_INT(meta.opts.num_classes, HAKD_SYNTH_NUM_CLASSES);
    ASSERT_TRUE(meta.opts.width == 0.5f);
    ASSERT_TRUE(!memcmp(meta.opts.aspp_dilations, rates, sizeof rates));
  }
  /* no options == explicit options, bit for bit */
  hakd_model *a = NULL, *b = NULL, *c = NULL;
  ASSERT_OK(hakd_model_open(best, NULL, NULL, &a));
  hakd_model_options o;
  explicit_student_options(&o);
  ASSERT_OK(hakd_model_open(best, "deeplabv3-r18-d8", &o, &b));
  ASSERT_TRUE(same_logits(a, b));
  /* ... and the rates matter: the same weights under the default rates predict otherwise */
  hakd_model_options d = o;
  memset(d.aspp_dilations, 0, sizeof d.aspp_dilations);
  d.aspp_dilations[0] = 12, d.aspp_dilations[1] = 24, d.aspp_dilations[2] = 36;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &d, &c));
  ASSERT_OK(hakd_model_load(c, best, NULL, NULL));
  ASSERT_TRUE(!same_logits(a, c));
  hakd_model_free(c);
  /* contradictions are refused, naming the file, the option and both values */
  hakd_model *refused = NULL;
  ASSERT_EQ_INT(hakd_model_open(best, "deeplabv3-r18-d8", &d, &refused), HAKD_EINVAL);
  ASSERT_TRUE(refused == NULL);
  const char *msg = hakd_error_message();
  ASSERT_TRUE(strstr(msg, best) && strstr(msg, "aspp_dilations 12,24,36") && strstr(msg, "1,2,3"));
  d = o;
  d.width = 0.25f;
  ASSERT_EQ_INT(hakd_model_open(best, NULL, &d, &refused), HAKD_EINVAL);
  msg = hakd_error_message();
  ASSERT_TRUE(strstr(msg, best) && strstr(msg, "width 0.25") && strstr(msg, "width 0.5"));

  /* hakd predict with neither --model nor --width nor --aspp-dilations */
  const char *cli = getenv("HAKD_CLI");
  ASSERT_TRUE(cli != NULL);
  char npy[700], logits[700], cmd[3000], out[4096];
  snprintf(npy, sizeof npy, "%s/x.npy", test_tmpdir());
  snprintf(logits, sizeof logits, "%s/logits.npy", test_tmpdir());
  int64_t shape[4] = {1, 3, 32, 32};
  float *x = malloc(3 * 32 * 32 * sizeof(float));
  for (int i = 0; i < 3 * 32 * 32; i++) x[i] = (float)((i * 13) % 29) / 14.0f - 1.0f;
  ASSERT_OK(hakd_npy_write(npy, HAKD_NPY_F32, 4, shape, x));
  snprintf(cmd, sizeof cmd, "%s predict --weights %s --input %s --save-logits %s", cli, best, npy, logits);
  int rc = test_run_capture(cmd, out, sizeof out);
  if (rc) printf("%s", out);
  ASSERT_EQ_INT(rc, 0);
  hakd_npy got;
  ASSERT_OK(hakd_npy_read(logits, &got));
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_model_output mo;
  ASSERT_OK(hakd_model_forward(b, ctx, hakd_tensor_wrap(ctx, HAKD_F32, 4, shape, x), &mo));
  ASSERT_EQ_INT(hakd_npy_numel(&got), hakd_numel(mo.logits));
  /* the same forward of the same build; 1e-6 leaves room for a different thread count only */
  double err = test_max_rel_err((const float *)got.data, hakd_f32(mo.logits), hakd_numel(mo.logits), 1e-6);
  printf("hakd predict without options vs explicit options: max rel err %.3g\n", err);
  ASSERT_TRUE(err <= 1e-6);
  hakd_npy_free(&got);
  hakd_ctx_free(ctx);
  free(x);
  /* a contradicting --width: refused before any work, naming the file and both values */
  snprintf(cmd, sizeof cmd, "%s predict --weights %s --input %s --width 0.25 --save-logits %s/l2.npy", cli, best, npy,
           test_tmpdir());
  ASSERT_EQ_INT(test_run_capture(cmd, out, sizeof out), 1);
  ASSERT_TRUE(strstr(out, best) && strstr(out, "width 0.25") && strstr(out, "width 0.5"));
  /* hakd info --weights: the model the file describes */
  snprintf(cmd, sizeof cmd, "%s info --weights %s --size 32", cli, best);
  ASSERT_EQ_INT(test_run_capture(cmd, out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "deeplabv3-r18-d8") && strstr(out, "width=0.5") && strstr(out, "aspp_dilations=1,2,3"));
  hakd_model_free(a);
  hakd_model_free(b);
}

/* The torchvision-layout DDP checkpoint of tests/test_pth.c (5 classes, width 1/32, no
 * metadata): the class count from the classifier's shape, the width from the stem's. */
TEST(pth_opens_without_options) {
  const char *pth = test_fixture_path("pth/deeplabv3-r18-w1_32-ddp.pth");
  hakd_model *a = NULL, *b = NULL;
  ASSERT_OK(hakd_model_open(pth, "deeplabv3-r18-d8", NULL, &a));
  ASSERT_EQ_INT(hakd_model_num_classes(a), 5);
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 1.0f / 32;
  ASSERT_OK(hakd_model_open(pth, "deeplabv3-r18-d8", &o, &b));
  ASSERT_TRUE(same_logits(a, b));
  hakd_model_free(a);
  hakd_model_free(b);
  /* a .pth names no model: the message says what to pass */
  ASSERT_TRUE(hakd_model_open(pth, NULL, NULL, &a) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), pth) && strstr(hakd_error_message(), "no model name"));
  /* hakd convert --model: the safetensors copy describes itself */
  const char *cli = getenv("HAKD_CLI");
  ASSERT_TRUE(cli != NULL);
  char st[700], cmd[2000], out[4096];
  snprintf(st, sizeof st, "%s/ddp.safetensors", test_tmpdir());
  snprintf(cmd, sizeof cmd, "%s convert %s %s --model deeplabv3-r18-d8", cli, pth, st);
  int rc = test_run_capture(cmd, out, sizeof out);
  printf("%s", out);
  ASSERT_EQ_INT(rc, 0);
  hakd_model_meta meta;
  ASSERT_OK(hakd_model_meta_read(st, &meta));
  ASSERT_TRUE(!strcmp(meta.model, "deeplabv3-r18-d8"));
  ASSERT_EQ_INT(meta.opts.num_classes, 5);
  ASSERT_TRUE(meta.opts.width == 1.0f / 32);
  ASSERT_OK(hakd_model_open(st, NULL, NULL, &a));
  ASSERT_EQ_INT(hakd_model_num_classes(a), 5);
  hakd_model_free(a);
}

/* A checkpoint as hakd wrote them before the option keys ("model", "iteration", "format"). */
TEST(file_without_option_keys_opens_with_explicit_options) {
  hakd_model_options o;
  explicit_student_options(&o);
  hakd_model *m = NULL, *a = NULL;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  char path[700];
  snprintf(path, sizeof path, "%s/old.safetensors", test_tmpdir());
  const char *meta[] = {"iteration", "2", "model", "deeplabv3-r18-d8", "format", "pt", NULL};
  ASSERT_OK(hakd_params_save(hakd_model_params(m), path, meta));
  hakd_model_meta read;
  ASSERT_OK(hakd_model_meta_read(path, &read));
  ASSERT_EQ_INT(read.have, HAKD_META_MODEL);
  ASSERT_OK(hakd_model_open(path, NULL, &o, &a));
  ASSERT_TRUE(same_logits(m, a));
  hakd_model_free(a);
  /* without options: name from the metadata, classes and width from the shapes (the rates
   * cannot be read from shapes: the model's default) */
  ASSERT_OK(hakd_model_open(path, NULL, NULL, &a));
  ASSERT_EQ_INT(hakd_model_num_classes(a), HAKD_SYNTH_NUM_CLASSES);
  hakd_model_free(a);
  hakd_model_free(m);
}
