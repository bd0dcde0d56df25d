/* The embeddable inference API (hakd/infer.h): hakd_model_open (model name and class count from
 * the file), predict and its logits variant against the CLI's predict path, concurrent predicts
 * from 4 threads on one model equal to serial ones (bit for bit), refused arguments, and
 * examples/segment_image.c built against the build tree. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/infer.h"
#include "hakd/io.h"
#include "hakd/ops.h"
#include "param_fill.h"

/* Saves param_fill weights of the model with metadata naming it; returns the path. */
static const char *save_weights(const char *name, const hakd_model_options *o, const char *file) {
  static char path[700];
  snprintf(path, sizeof path, "%s/%s", test_tmpdir(), file);
  hakd_model *m;
  if (hakd_model_create(name, o, &m)) return NULL;
  param_fill(hakd_model_params(m));
  const char *meta[] = {"model", name, NULL};
  int rc = hakd_params_save(hakd_model_params(m), path, meta);
  hakd_model_free(m);
  return rc ? NULL : path;
}

/* A deterministic RGB image with a row stride larger than 3 * width (padding bytes 0xAB). */
static uint8_t *make_image(int h, int w, int stride, unsigned seed) {
  uint8_t *rgb = malloc((size_t)h * stride);
  memset(rgb, 0xAB, (size_t)h * stride);
  for (int y = 0; y < h; y++)
    for (int x = 0; x < 3 * w; x++) rgb[y * stride + x] = (uint8_t)((x * 7 + y * 13 + seed * 101 + (x * y) % 17) & 255);
  return rgb;
}

TEST(open_reads_model_name_and_classes_from_the_file) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  const char *path = save_weights("deeplabv3-mbv2", &o, "mbv2.safetensors");
  ASSERT_TRUE(path != NULL);
  hakd_model *m;
  ASSERT_OK(hakd_model_open(path, NULL, NULL, &m));
  ASSERT_TRUE(!strcmp(hakd_model_name(m), "deeplabv3-mbv2"));
  ASSERT_EQ_INT(hakd_model_num_classes(m), 5);
  hakd_model_free(m);
  /* explicit options that do not match the weights: refused naming the tensor */
  o.num_classes = 7;
  ASSERT_TRUE(hakd_model_open(path, "deeplabv3-mbv2", &o, &m) != 0);
  ASSERT_TRUE(m == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "classifier") != NULL);
  ASSERT_TRUE(hakd_model_open(path, "no-such-model", NULL, &m) == HAKD_ENOTFOUND);
  char missing[700];
  snprintf(missing, sizeof missing, "%s/missing.safetensors", test_tmpdir());
  ASSERT_TRUE(hakd_model_open(missing, NULL, NULL, &m) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), missing) != NULL);
}

/* predict_logits equals the library path the CLI takes (normalise, forward, upsample), and the
 * mask is its arg-max. */
TEST(predict_matches_forward_and_argmax) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 4;
  o.width = 0.25f;
  const char *path = save_weights("segformer-b0", &o, "b0.safetensors");
  ASSERT_TRUE(path != NULL);
  hakd_model *m;
  ASSERT_OK(hakd_model_open(path, "segformer-b0", &o, &m));
  int h = 37, w = 45, stride = 3 * w + 5, K = 4;
  uint8_t *rgb = make_image(h, w, stride, 1), mask[37 * 45];
  float *logits = malloc((size_t)K * h * w * sizeof *logits);
  ASSERT_OK(hakd_model_predict_logits(m, rgb, h, w, stride, logits));
  ASSERT_OK(hakd_model_predict(m, rgb, h, w, stride, mask));
  /* the reference: the same steps with the public ops */
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_tensor *x = hakd_tensor4(ctx, 1, 3, h, w);
  float mean[3], sd[3];
  hakd_model_mean_std(m, mean, sd);
  for (int y = 0; y < h; y++)
    for (int xx = 0; xx < w; xx++)
      for (int c = 0; c < 3; c++)
        hakd_f32(x)[(c * h + y) * w + xx] = ((float)rgb[y * stride + 3 * xx + c] - mean[c]) / sd[c];
  hakd_model_output out;
  ASSERT_OK(hakd_model_forward(m, ctx, x, &out));
  hakd_tensor *up = hakd_resize_bilinear(ctx, out.logits, h, w, 0);
  ASSERT_TRUE(up != NULL);
  ASSERT_TRUE(!memcmp(logits, up->data, (size_t)K * h * w * sizeof(float)));
  for (int p = 0; p < h * w; p++) {
    int best = 0;
    for (int k = 1; k < K; k++)
      if (logits[k * h * w + p] > logits[best * h * w + p]) best = k;
    ASSERT_EQ_INT(mask[p], best);
  }
  hakd_ctx_free(ctx);
  free(logits);
  free(rgb);
  hakd_model_free(m);
}

TEST(predict_refuses_bad_arguments) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 3;
  o.width = 0.25f;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("segformer-b0", &o, &m));
  uint8_t *rgb = make_image(32, 32, 96, 0), mask[32 * 32];
  ASSERT_TRUE(hakd_model_predict(m, rgb, 32, 32, 95, mask) == HAKD_EINVAL); /* stride < 3 * width */
  ASSERT_TRUE(strstr(hakd_error_message(), "stride") != NULL);
  ASSERT_TRUE(hakd_model_predict(m, rgb, 0, 32, 96, mask) == HAKD_EINVAL);
  ASSERT_TRUE(hakd_model_predict(m, NULL, 32, 32, 96, mask) == HAKD_EINVAL);
  ASSERT_TRUE(hakd_model_predict(m, rgb, 32, 32, 96, NULL) == HAKD_EINVAL);
  /* MiT needs 29x29: the message names the size */
  ASSERT_TRUE(hakd_model_predict(m, rgb, 16, 16, 96, mask) == HAKD_ESHAPE);
  ASSERT_TRUE(strstr(hakd_error_message(), "16x16") != NULL);
  free(rgb);
  hakd_model_free(m);
  o.num_classes = 300;
  ASSERT_OK(hakd_model_create("deeplabv3-mbv2", &o, &m));
  rgb = make_image(8, 8, 24, 0);
  ASSERT_TRUE(hakd_model_predict(m, rgb, 8, 8, 24, mask) == HAKD_EINVAL); /* 300 classes: no uint8 mask */
  free(rgb);
  hakd_model_free(m);
}

/* ---- concurrency ---- */

enum { THREADS = 4, IMAGES = 3, ROUNDS = 2 };

typedef struct {
  hakd_model *model;
  uint8_t *images[IMAGES];
  int h[IMAGES], w[IMAGES];
  const float *serial[IMAGES];
  int64_t sizes[IMAGES];
  int thread, mismatches, failures;
  char error[256];
} worker;

static void *worker_main(void *arg) {
  worker *wk = arg;
  for (int round = 0; round < ROUNDS; round++)
    for (int j = 0; j < IMAGES; j++) {
      int i = (j + wk->thread + round) % IMAGES; /* threads run different images at the same time */
      float *got = malloc((size_t)wk->sizes[i] * sizeof *got);
      if (hakd_model_predict_logits(wk->model, wk->images[i], wk->h[i], wk->w[i], 3 * wk->w[i], got)) {
        wk->failures++;
        snprintf(wk->error, sizeof wk->error, "%s", hakd_error_message());
      } else if (memcmp(got, wk->serial[i], (size_t)wk->sizes[i] * sizeof *got)) {
        wk->mismatches++;
      }
      free(got);
    }
  return NULL;
}

/* 4 threads predict with one model at once, each image in a different order; every result must
 * equal the serial one bit for bit (the sanitizer build runs this too). */
static void concurrent_equals_serial(const char *name, float width) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 3;
  o.width = width;
  o.aspp_dilations[0] = 1, o.aspp_dilations[1] = 2, o.aspp_dilations[2] = 3;
  char file[64];
  snprintf(file, sizeof file, "%s.safetensors", name);
  const char *path = save_weights(name, &o, file);
  ASSERT_TRUE(path != NULL);
  hakd_model *m;
  ASSERT_OK(hakd_model_open(path, name, &o, &m));
  worker base;
  memset(&base, 0, sizeof base);
  base.model = m;
  float *serial[IMAGES];
  for (int i = 0; i < IMAGES; i++) {
    base.h[i] = 32 + 8 * i, base.w[i] = 40 - 4 * i;
    base.images[i] = make_image(base.h[i], base.w[i], 3 * base.w[i], (unsigned)i);
    base.sizes[i] = (int64_t)o.num_classes * base.h[i] * base.w[i];
    serial[i] = malloc((size_t)base.sizes[i] * sizeof(float));
    ASSERT_OK(hakd_model_predict_logits(m, base.images[i], base.h[i], base.w[i], 3 * base.w[i], serial[i]));
    base.serial[i] = serial[i];
  }
  worker workers[THREADS];
  pthread_t threads[THREADS];
  for (int t = 0; t < THREADS; t++) {
    workers[t] = base;
    workers[t].thread = t;
    ASSERT_EQ_INT(pthread_create(&threads[t], NULL, worker_main, &workers[t]), 0);
  }
  for (int t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
  for (int t = 0; t < THREADS; t++) {
    if (workers[t].failures) test_fail(__FILE__, __LINE__, "thread %d: %s", t, workers[t].error);
    ASSERT_EQ_INT(workers[t].failures, 0);
    ASSERT_EQ_INT(workers[t].mismatches, 0);
  }
  for (int i = 0; i < IMAGES; i++) free(base.images[i]), free(serial[i]);
  hakd_model_free(m);
}

TEST(concurrent_predicts_equal_serial_segformer) { concurrent_equals_serial("segformer-b0", 0.25f); }
/* ResNet's 3x3 convs take the oneDNN path (per-thread primitive caches), its 1x1s the GEMM path */
TEST(concurrent_predicts_equal_serial_deeplabv3_r18) { concurrent_equals_serial("deeplabv3-r18-d8", 0.25f); }
TEST(concurrent_predicts_equal_serial_mbv2) { concurrent_equals_serial("deeplabv3-mbv2", 0.5f); }

/* examples/segment_image built against the build tree runs on a PNG and weights whose metadata
 * names the model. */
TEST(example_segment_image_runs) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 6;
  const char *path = save_weights("deeplabv3-mbv2", &o, "example.safetensors");
  ASSERT_TRUE(path != NULL);
  char image[700], mask[700], cmd[3000], out[4096];
  snprintf(image, sizeof image, "%s/in.png", test_tmpdir());
  snprintf(mask, sizeof mask, "%s/mask.png", test_tmpdir());
  uint8_t *rgb = make_image(24, 30, 90, 3);
  ASSERT_OK(hakd_png_write_rgb(image, 30, 24, rgb));
  free(rgb);
  snprintf(cmd, sizeof cmd, "%s/segment_image %s %s %s", HAKD_BINARY_DIR, path, image, mask);
  int rc = test_run_capture(cmd, out, sizeof out);
  if (rc) test_fail(__FILE__, __LINE__, "%s exited %d: %s", cmd, rc, out);
  ASSERT_EQ_INT(rc, 0);
  ASSERT_TRUE(strstr(out, "deeplabv3-mbv2, 30x24, 6 classes") != NULL);
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(mask, &w, &h, &labels));
  ASSERT_TRUE(w == 30 && h == 24);
  for (int i = 0; i < w * h; i++) ASSERT_TRUE(labels[i] >= 0 && labels[i] < 6);
  free(labels);
  /* a missing weights file: non-zero exit naming it, no mask */
  remove(mask);
  snprintf(cmd, sizeof cmd, "%s/segment_image %s/none.safetensors %s %s", HAKD_BINARY_DIR, test_tmpdir(), image, mask);
  ASSERT_TRUE(test_run_capture(cmd, out, sizeof out) != 0);
  ASSERT_TRUE(strstr(out, "none.safetensors") != NULL);
  FILE *f = fopen(mask, "rb");
  ASSERT_TRUE(f == NULL);
}
