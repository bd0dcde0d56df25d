/* `hakd miou` (the built CLI, $HAKD_CLI) against numbers computed by hand, its JSON, and
 * bad input with and without --skip-bad. */
#include <stdlib.h>
#include <string.h>

#include "data_testutil.h"

/* The 2-image, 3-class case of test_metrics.c (class c in neither labels nor predictions):
 * IoU 60.00 / 50.00 / nan, Acc 75.00 / 66.67 / nan, aAcc 71.43, mIoU 55.00, mAcc 70.83. */
static const uint8_t label1[4] = {0, 0, 1, 255}, pred1[4] = {0, 1, 1, 1};
static const uint8_t label2[4] = {0, 1, 1, 0}, pred2[4] = {0, 1, 0, 0};

/* A generic dataset "ds" (val: one.jpg, two.png) and predictions in "pred". */
static int make_case(void) {
  if (write_text(tmp_path("ds/classes.txt"), "a\nb\nc\n")) return -1;
  if (write_text(tmp_path("ds/val.txt"), "img/one.jpg lab/one.png\nimg/two.png lab/two.png\n")) return -1;
  if (write_text(tmp_path("ds/empty.txt"), "")) return -1;
  if (write_pattern_jpeg(tmp_path("ds/img/one.jpg"), 2, 2, 0) || write_pattern_png(tmp_path("ds/img/two.png"), 2, 2, 0))
    return -1;
  if (write_palette_png(tmp_path("ds/lab/one.png"), 2, 2, label1) ||
      write_gray_png(tmp_path("ds/lab/two.png"), 2, 2, label2))
    return -1;
  /* Predictions as a palette PNG and as a gray PNG: both keep their indices. */
  if (write_palette_png(tmp_path("pred/one.png"), 2, 2, pred1) || write_gray_png(tmp_path("pred/two.png"), 2, 2, pred2))
    return -1;
  return 0;
}

static char *miou_args(const char *extra) {
  static char args[2048];
  snprintf(args, sizeof args, "miou --dataset generic --data-root '%s' --split val --pred-dir '%s' %s", tmp_path("ds"),
           tmp_path("pred"), extra);
  return args;
}

TEST(hand_computed_table_and_json) {
  ASSERT_OK(make_case());
  char *out, *err, args[2100];
  snprintf(args, sizeof args, "%s --json '%s'", miou_args(""), tmp_path("m.json"));
  int rc = run_cli(args, &out, &err);
  if (rc != 0) fprintf(stderr, "stdout:\n%s\nstderr:\n%s\n", out, err);
  ASSERT_EQ_INT(rc, 0);
  ASSERT_TRUE(strstr(out, "2 images scored") != NULL);
  ASSERT_TRUE(strstr(out, "| Class |  IoU  |  Acc  |") != NULL);
  ASSERT_TRUE(strstr(out, "|   a   | 60.00 | 75.00 |") != NULL);
  ASSERT_TRUE(strstr(out, "|   b   | 50.00 | 66.67 |") != NULL);
  ASSERT_TRUE(strstr(out, "|   c   |  nan  |  nan  |") != NULL);
  ASSERT_TRUE(strstr(out, "| 71.43 | 55.00 | 70.83 |") != NULL);
  char *json = read_text(tmp_path("m.json"));
  ASSERT_TRUE(strstr(json, "\"aAcc\": 71.43") != NULL);
  ASSERT_TRUE(strstr(json, "\"mIoU\": 55.00") != NULL);
  ASSERT_TRUE(strstr(json, "\"mAcc\": 70.83") != NULL);
  ASSERT_TRUE(strstr(json, "{\"name\": \"a\", \"IoU\": 60.00, \"Acc\": 75.00}") != NULL);
  ASSERT_TRUE(strstr(json, "{\"name\": \"b\", \"IoU\": 50.00, \"Acc\": 66.67}") != NULL);
  ASSERT_TRUE(strstr(json, "{\"name\": \"c\", \"IoU\": null, \"Acc\": null}") != NULL);
  ASSERT_TRUE(strstr(json, "\"images\": 2") != NULL && strstr(json, "\"skipped\": 0") != NULL);
  free(json);
  free(out);
  free(err);
}

/* Runs miou; checks the exit status and that stderr contains `needle`. */
static int expect(const char *extra, int want_rc, const char *needle, char **out) {
  char *err;
  int rc = run_cli(miou_args(extra), out, &err);
  int ok = rc == want_rc && strstr(err, needle) != NULL;
  if (!ok) fprintf(stderr, "miou %s: rc %d (want %d), stderr:\n%s\n(wanted '%s')\n", extra, rc, want_rc, err, needle);
  free(err);
  return ok;
}

TEST(bad_input_fails_or_is_skipped) {
  ASSERT_OK(make_case());
  char *out;
  /* Prediction of another size than the label. */
  uint8_t wide[6] = {0};
  ASSERT_OK(write_gray_png(tmp_path("pred/two.png"), 3, 2, wide));
  ASSERT_TRUE(expect("", 1, "pred/two.png: prediction is 3x2 but label", &out));
  free(out);
  /* With --skip-bad: a warning and the image left out; image 1 alone gives
   * a: IoU 1/2, Acc 1/2; b: IoU 1/2, Acc 1/1; aAcc 2/3. */
  ASSERT_TRUE(expect("--skip-bad", 0, "hakd: warning: skipping: ", &out));
  ASSERT_TRUE(strstr(out, "1 images scored, 1 bad files skipped") != NULL);
  ASSERT_TRUE(strstr(out, "|   b   | 50.00 | 100.00 |") != NULL);
  ASSERT_TRUE(strstr(out, "| 66.67 | 50.00 | 75.00 |") != NULL);
  free(out);

  /* Prediction value 3 with 3 classes. */
  uint8_t big[4] = {0, 1, 3, 0};
  ASSERT_OK(write_gray_png(tmp_path("pred/two.png"), 2, 2, big));
  ASSERT_TRUE(expect("", 1, "pred/two.png: confusion matrix: prediction 3", &out));
  free(out);
  /* Truncated prediction PNG. */
  ASSERT_OK(write_gray_png(tmp_path("pred/two.png"), 2, 2, pred2));
  ASSERT_EQ_INT(truncate_file(tmp_path("pred/two.png"), 30), 0);
  ASSERT_TRUE(expect("", 1, "pred/two.png", &out));
  free(out);
  /* Missing prediction. */
  remove(tmp_path("pred/two.png"));
  ASSERT_TRUE(expect("", 1, "pred/two.png: prediction missing for image", &out));
  free(out);
  ASSERT_TRUE(expect("--skip-bad", 0, "pred/two.png: prediction missing", &out));
  free(out);
  ASSERT_OK(write_gray_png(tmp_path("pred/two.png"), 2, 2, pred2));

  /* Label value 5 that is not ignore. */
  uint8_t bad_label[4] = {0, 5, 1, 0};
  ASSERT_OK(write_gray_png(tmp_path("ds/lab/two.png"), 2, 2, bad_label));
  ASSERT_TRUE(expect("", 1, "lab/two.png: label value 5", &out));
  free(out);
  /* Label missing. */
  remove(tmp_path("ds/lab/two.png"));
  ASSERT_TRUE(expect("", 1, "lab/two.png: label missing for image", &out));
  free(out);
  ASSERT_TRUE(expect("--skip-bad", 0, "lab/two.png: label missing", &out));
  ASSERT_TRUE(strstr(out, "1 bad files skipped") != NULL);
  free(out);
  /* Every item bad: nothing to score is an error even with --skip-bad. */
  remove(tmp_path("ds/lab/one.png"));
  ASSERT_TRUE(expect("--skip-bad", 1, "no image", &out));
  free(out);

  /* Empty split. */
  char *err;
  char args[2048];
  snprintf(args, sizeof args, "miou --dataset generic --data-root '%s' --split empty --pred-dir '%s'", tmp_path("ds"),
           tmp_path("pred"));
  ASSERT_EQ_INT(run_cli(args, &out, &err), 1);
  ASSERT_TRUE(strstr(err, "hakd: error: ") != NULL && strstr(err, "'empty'") != NULL);
  free(out);
  free(err);
}

TEST(help_and_usage_errors) {
  char *out, *err;
  ASSERT_EQ_INT(run_cli("miou --help", &out, &err), 0);
  ASSERT_TRUE(strstr(out, "usage: hakd miou") != NULL && strstr(out, "--skip-bad") != NULL);
  free(out);
  free(err);
  ASSERT_EQ_INT(run_cli("miou --dataset voc --data-root /nonexistent", &out, &err), 1);
  ASSERT_TRUE(strstr(err, "hakd: error: ") != NULL && strstr(err, "--pred-dir") != NULL);
  free(out);
  free(err);
  ASSERT_EQ_INT(run_cli("miou --dataset voc --data-root /nonexistent/root --pred-dir /tmp", &out, &err), 1);
  ASSERT_TRUE(strstr(err, "/nonexistent/root") != NULL);
  free(out);
  free(err);
  ASSERT_EQ_INT(run_cli("miou --bogus", &out, &err), 2);
  free(out);
  free(err);
}
