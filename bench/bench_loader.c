/* Loader throughput: decode + augment images/s at Cityscapes size (1024x2048 PNG image and
 * label, crop 512x1024, ratio 0.5-2.0, cat_max_ratio 0.75, flip, photometric distortion),
 * with 1 and 2 worker threads. The images are synthetic (hakd synth) in a temporary
 * directory that is removed at the end.
 *
 * usage: bench_loader [images (default 4)] [batches per run (default 6)] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "hakd/data.h"

enum { HEIGHT = 1024, WIDTH = 2048, CROP_H = 512, CROP_W = 1024, BATCH = 2 };

static double now(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static hakd_augment cityscapes_augment(void) {
  hakd_augment aug = hakd_augment_default(CROP_H, CROP_W);
  aug.cat_max_ratio = 0.75f;
  aug.photometric = 1;
  return aug;
}

/* images/s of the loader with `workers` threads over `batches` batches (after one warm-up). */
static double loader_rate(const hakd_dataset *ds, int workers, int batches, float *images, int32_t *labels) {
  hakd_loader_config config = {.batch_size = BATCH,
                               .num_workers = workers,
                               .prefetch = 2,
                               .shuffle = 1,
                               .drop_last = 1,
                               .seed = 1,
                               .augment = cityscapes_augment()};
  hakd_loader *loader;
  if (hakd_loader_new(&loader, ds, &config)) return -1;
  double t0 = 0;
  for (int b = 0; b <= batches; b++) {
    if (b == 1) t0 = now();
    if (hakd_loader_next(loader, images, labels) < 0) {
      hakd_loader_free(loader);
      return -1;
    }
  }
  double rate = batches * BATCH / (now() - t0);
  hakd_loader_free(loader);
  return rate;
}

int main(int argc, char **argv) {
  int n_images = argc > 1 ? atoi(argv[1]) : 4, batches = argc > 2 ? atoi(argv[2]) : 6;
  if (n_images < BATCH || batches < 1) {
    fprintf(stderr, "usage: bench_loader [images >= %d] [batches >= 1]\n", BATCH);
    return 2;
  }
  char dir[] = "/tmp/hakd-bench-loader-XXXXXX";
  if (!mkdtemp(dir)) {
    perror("mkdtemp");
    return 1;
  }
  int rc = 1;
  hakd_dataset *ds = NULL;
  float *images = malloc(sizeof(float) * BATCH * 3 * CROP_H * CROP_W);
  int32_t *labels = malloc(sizeof(int32_t) * BATCH * CROP_H * CROP_W);
  double t0 = now();
  hakd_synth_config synth = {
      .out_dir = dir, .n_train = n_images, .n_val = 0, .height = HEIGHT, .width = WIDTH, .seed = 1};
  hakd_dataset_config config = {.name = "generic", .root = dir, .split = "train"};
  if (!images || !labels || hakd_synth_write(&synth) || hakd_dataset_open(&ds, &config)) {
    fprintf(stderr, "bench_loader: %s\n", hakd_error_message());
    goto done;
  }
  printf("bench_loader: %d synthetic %dx%d PNG images + labels written in %.2f s\n", n_images, WIDTH, HEIGHT,
         now() - t0);

  /* The two halves of a sample on this thread: PNG decode, then the augmentation. */
  hakd_sample sample;
  double decode = 0, augment = 0;
  for (int i = 0; i < n_images; i++) {
    t0 = now();
    if (hakd_dataset_load(ds, i, &sample)) goto fail;
    decode += now() - t0;
    t0 = now();
    hakd_augment aug = cityscapes_augment();
    if (hakd_augment_sample(images, labels, &sample, &aug, 1, 0, i)) goto fail;
    augment += now() - t0;
    hakd_sample_free(&sample);
  }
  printf("one thread: decode %.1f ms/image, augment %.1f ms/image (crop %dx%d)\n", 1e3 * decode / n_images,
         1e3 * augment / n_images, CROP_W, CROP_H);

  printf("| workers | images/s | images/s per worker |\n|---------|----------|---------------------|\n");
  for (int workers = 1; workers <= 2; workers++) {
    double rate = loader_rate(ds, workers, batches, images, labels);
    if (rate < 0) goto fail;
    printf("| %7d | %8.2f | %19.2f |\n", workers, rate, rate / workers);
  }
  rc = 0;
  goto done;
fail:
  fprintf(stderr, "bench_loader: %s\n", hakd_error_message());
done:
  hakd_dataset_free(ds);
  free(images);
  free(labels);
  char command[128];
  snprintf(command, sizeof command, "rm -rf '%s'", dir);
  if (system(command) != 0) fprintf(stderr, "bench_loader: could not remove %s\n", dir);
  return rc;
}
