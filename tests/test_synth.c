/* The synthetic dataset: deterministic, all classes present, the context rules hold, quick,
 * and `hakd synth` writes a generic layout the dataset reader opens. */
#include <stdlib.h>
#include <string.h>

#include "data_testutil.h"
#include "hakd/data.h"

enum { H = 64, W = 64, N = 60 };

TEST(render_is_deterministic_with_all_classes_and_context_rules) {
  static uint8_t rgb[H * W * 3], label[H * W], rgb2[H * W * 3], label2[H * W];
  int64_t pixels[256] = {0};
  int images_with[256] = {0};
  for (int i = 0; i < N; i++) {
    hakd_synth_render(rgb, label, H, W, 3, i);
    hakd_synth_render(rgb2, label2, H, W, 3, i);
    ASSERT_TRUE(!memcmp(rgb, rgb2, sizeof rgb) && !memcmp(label, label2, sizeof label));
    int present[256] = {0};
    for (int p = 0; p < H * W; p++) {
      pixels[label[p]]++;
      present[label[p]] = 1;
    }
    for (int v = 0; v < 256; v++) images_with[v] += present[v];
    /* Frame colour decides warm vs cold discs: red frame (r high, b low) or blue. The frame
     * pixel has +-12 noise around (200, 60, 40) or (40, 60, 200). */
    int red_frame = rgb[0] > 150 && rgb[2]<90, blue_frame = rgb[2]> 150 && rgb[0] < 90;
    ASSERT_TRUE(red_frame != blue_frame);
    ASSERT_TRUE(!(present[HAKD_SYNTH_WARM] && present[HAKD_SYNTH_COLD]));
    if (present[HAKD_SYNTH_WARM]) ASSERT_TRUE(red_frame);
    if (present[HAKD_SYNTH_COLD]) ASSERT_TRUE(blue_frame);
    /* Every image with other discs has its largest one. */
    if (present[HAKD_SYNTH_WARM] || present[HAKD_SYNTH_COLD]) ASSERT_TRUE(present[HAKD_SYNTH_LARGEST]);
    for (int v = HAKD_SYNTH_NUM_CLASSES; v < 255; v++) ASSERT_EQ_INT(present[v], 0);
  }
  for (int k = 0; k < HAKD_SYNTH_NUM_CLASSES; k++) {
    if (!images_with[k]) {
      test_fail(__FILE__, __LINE__, "class %d (%s) never appears in %d images", k, hakd_synth_class_name(k), N);
      return;
    }
  }
  ASSERT_TRUE(images_with[255] > 0);
  /* The rare class is rare: in fewer than half of the images and < 1% of the pixels. */
  ASSERT_TRUE(images_with[HAKD_SYNTH_RARE] < N / 2);
  ASSERT_TRUE(pixels[HAKD_SYNTH_RARE] * 100 < (int64_t)N * H * W);
  /* Another seed, other images. */
  hakd_synth_render(rgb2, label2, H, W, 4, N - 1);
  ASSERT_TRUE(memcmp(rgb, rgb2, sizeof rgb) != 0);
}

/* Byte-for-byte equal and not empty. */
static int same_file(const char *a, const char *b) {
  FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
  int same = fa && fb, any = 0;
  while (same) {
    int ca = fgetc(fa), cb = fgetc(fb);
    same = ca == cb;
    if (ca == EOF) break;
    any = 1;
  }
  if (fa) fclose(fa);
  if (fb) fclose(fb);
  return same && any;
}

/* Speed is not asserted here (tests are not timed; 250 images of 64x64 render in ~20 ms and are
 * written in ~0.2 s on an idle disk). */
TEST(write_is_deterministic) {
  hakd_synth_config config = {
      .out_dir = tmp_path("a"), .n_train = 200, .n_val = 50, .height = 64, .width = 64, .seed = 11};
  ASSERT_OK(hakd_synth_write(&config));
  config.out_dir = tmp_path("b");
  ASSERT_OK(hakd_synth_write(&config));
  static const char *const files[] = {
      "train.txt",           "val.txt", "classes.txt", "images/train/00000.png", "images/train/00199.png",
      "labels/val/00049.png"};
  for (size_t i = 0; i < sizeof files / sizeof files[0]; i++)
    ASSERT_TRUE(same_file(tmp_path("a/%s", files[i]), tmp_path("b/%s", files[i])));
  char *classes = read_text(tmp_path("a/classes.txt"));
  ASSERT_TRUE(!strncmp(classes, "background 0 0 0\nstripes ", strlen("background 0 0 0\nstripes ")));
  free(classes);
  config.out_dir = tmp_path("c");
  config.seed = 12;
  config.n_train = 1;
  config.n_val = 1;
  ASSERT_OK(hakd_synth_write(&config));
  ASSERT_TRUE(!same_file(tmp_path("a/images/train/00000.png"), tmp_path("c/images/train/00000.png")));
}

TEST(cli_writes_a_generic_dataset) {
  char *out, *err, args[1024];
  snprintf(args, sizeof args, "synth --out '%s' --train 4 --val 2 --size 32x48 --seed 7", tmp_path("cli"));
  int rc = run_cli(args, &out, &err);
  if (rc != 0) fprintf(stderr, "%s%s", out, err);
  ASSERT_EQ_INT(rc, 0);
  free(out);
  free(err);
  hakd_dataset_config config = {.name = "synth", .root = tmp_path("cli"), .split = "val"};
  hakd_dataset *ds;
  ASSERT_OK(hakd_dataset_open(&ds, &config));
  ASSERT_EQ_INT(hakd_dataset_count(ds), 2);
  ASSERT_EQ_INT(hakd_dataset_num_classes(ds), HAKD_SYNTH_NUM_CLASSES);
  ASSERT_TRUE(!strcmp(hakd_dataset_class_name(ds, HAKD_SYNTH_LARGEST), "largest_disc"));
  ASSERT_EQ_INT(hakd_dataset_palette(ds)[3 * HAKD_SYNTH_STRIPES], hakd_synth_palette()[3 * HAKD_SYNTH_STRIPES]);
  hakd_sample s;
  ASSERT_OK(hakd_dataset_load(ds, 1, &s));
  ASSERT_EQ_INT(s.width, 48);
  ASSERT_EQ_INT(s.height, 32);
  /* The files hold exactly what the renderer makes for that (seed, index). */
  static uint8_t rgb[32 * 48 * 3], label[32 * 48];
  hakd_synth_render(rgb, label, 32, 48, 7, HAKD_SYNTH_VAL_INDEX + 1);
  ASSERT_TRUE(!memcmp(s.rgb, rgb, sizeof rgb));
  for (int p = 0; p < 32 * 48; p++) ASSERT_EQ_INT(s.label[p], label[p]);
  hakd_sample_free(&s);
  hakd_dataset_free(ds);

  ASSERT_EQ_INT(run_cli("synth --out /tmp/x --size 64by64", &out, &err), 1);
  ASSERT_TRUE(strstr(err, "hakd: error: --size") != NULL);
  free(out);
  free(err);
  ASSERT_EQ_INT(run_cli("synth --train 3", &out, &err), 1);
  ASSERT_TRUE(strstr(err, "--out") != NULL);
  free(out);
  free(err);
  ASSERT_EQ_INT(run_cli("synth --help", &out, &err), 0);
  ASSERT_TRUE(strstr(out, "usage: hakd synth") != NULL);
  free(out);
  free(err);
}
