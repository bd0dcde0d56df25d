/* The prefetching loader: batches depend on (seed, epoch, position) only, resume is
 * bit-identical, epochs are permutations, worker errors surface, skip_bad skips. */
#include <stdlib.h>
#include <string.h>

#include "data_testutil.h"
#include "hakd/data.h"

enum { N_ITEMS = 11, CROP_H = 12, CROP_W = 14, BATCH = 3 };

/* A synthetic generic dataset of N_ITEMS 16x20 training images. */
static hakd_dataset *make_dataset(void) {
  hakd_synth_config synth = {
      .out_dir = tmp_path("synth"), .n_train = N_ITEMS, .n_val = 1, .height = 16, .width = 20, .seed = 5};
  if (hakd_synth_write(&synth)) return NULL;
  hakd_dataset_config config = {.name = "generic", .root = synth.out_dir, .split = "train"};
  hakd_dataset *ds = NULL;
  if (hakd_dataset_open(&ds, &config)) return NULL;
  return ds;
}

static hakd_loader_config train_config(int workers) {
  hakd_loader_config c = {
      .batch_size = BATCH, .num_workers = workers, .prefetch = 2, .shuffle = 1, .drop_last = 1, .seed = 1234};
  c.augment = hakd_augment_default(CROP_H, CROP_W);
  c.augment.photometric = 1;
  c.augment.cat_max_ratio = 0.75f;
  return c;
}

typedef struct {
  float images[BATCH * 3 * CROP_H * CROP_W];
  int32_t labels[BATCH * CROP_H * CROP_W];
  int count;
  int64_t items[BATCH]; /* hakd_loader_last_items */
} batch;

static void record_items(batch *b, const hakd_loader *loader) {
  const int64_t *items;
  int n = hakd_loader_last_items(loader, &items);
  for (int j = 0; j < n && j < BATCH; j++) b->items[j] = items[j];
}

/* n batches from a new loader (starting at `start` when non-NULL). */
static int collect(batch *out, int n, const hakd_dataset *ds, hakd_loader_config config,
                   const hakd_loader_state *start) {
  hakd_loader *loader;
  int status = hakd_loader_new(&loader, ds, &config);
  if (status) return status;
  if (start && (status = hakd_loader_set_state(loader, *start))) {
    hakd_loader_free(loader);
    return status;
  }
  for (int i = 0; i < n; i++) {
    memset(&out[i], 0, sizeof out[i]);
    out[i].count = hakd_loader_next(loader, out[i].images, out[i].labels);
    if (out[i].count < 0) {
      hakd_loader_free(loader);
      return out[i].count;
    }
    record_items(&out[i], loader);
  }
  hakd_loader_free(loader);
  return 0;
}

TEST(batches_do_not_depend_on_workers) {
  hakd_dataset *ds = make_dataset();
  ASSERT_TRUE(ds != NULL);
  /* 11 items, batches of 3, drop_last: 3 batches an epoch; 8 batches cross two epoch ends. */
  enum { N = 8 };
  static batch inline_batches[N], one[N], two[N];
  ASSERT_OK(collect(inline_batches, N, ds, train_config(0), NULL));
  ASSERT_OK(collect(one, N, ds, train_config(1), NULL));
  ASSERT_OK(collect(two, N, ds, train_config(2), NULL));
  for (int i = 0; i < N; i++) {
    ASSERT_EQ_INT(inline_batches[i].count, BATCH);
    ASSERT_TRUE(!memcmp(&inline_batches[i], &one[i], sizeof one[i]));
    ASSERT_TRUE(!memcmp(&one[i], &two[i], sizeof one[i]));
  }
  /* The items named for the batches (memcmp above: the same whatever the workers) are one
   * epoch's distinct items. */
  int seen[N_ITEMS] = {0};
  for (int i = 0; i < 3; i++)
    for (int j = 0; j < BATCH; j++) {
      int64_t item = one[i].items[j];
      ASSERT_TRUE(item >= 0 && item < N_ITEMS);
      ASSERT_EQ_INT(seen[item]++, 0);
    }
  /* Not all batches alike (the augmentation and order do vary). */
  ASSERT_TRUE(memcmp(one[0].images, one[3].images, sizeof one[0].images) != 0);
  hakd_dataset_free(ds);
}

TEST(resume_from_state_is_bit_identical) {
  hakd_dataset *ds = make_dataset();
  ASSERT_TRUE(ds != NULL);
  enum { N = 7 };
  static batch reference[N], resumed[N];
  ASSERT_OK(collect(reference, N, ds, train_config(2), NULL));

  hakd_loader *loader;
  hakd_loader_config config = train_config(2);
  ASSERT_OK(hakd_loader_new(&loader, ds, &config));
  ASSERT_EQ_INT(hakd_loader_batches_per_epoch(loader), 3);
  for (int i = 0; i < 4; i++) ASSERT_EQ_INT(hakd_loader_next(loader, resumed[0].images, resumed[0].labels), BATCH);
  hakd_loader_state state = hakd_loader_get_state(loader);
  /* After 4 batches of an epoch of 3: epoch 1, position 3. */
  ASSERT_EQ_INT(state.epoch, 1);
  ASSERT_EQ_INT(state.position, 3);
  hakd_loader_free(loader);

  ASSERT_OK(collect(resumed, N - 4, ds, train_config(1), &state));
  for (int i = 0; i < N - 4; i++) ASSERT_TRUE(!memcmp(&resumed[i], &reference[4 + i], sizeof resumed[i]));
  hakd_dataset_free(ds);
}

/* Index of the candidate equal to sample j of the batch, or -1. */
static int identify(const batch *b, int j, float (*candidates)[3 * CROP_H * CROP_W]) {
  for (int i = 0; i < N_ITEMS; i++)
    if (!memcmp(b->images + j * 3 * CROP_H * CROP_W, candidates[i], sizeof candidates[i])) return i;
  return -1;
}

TEST(epochs_are_shuffled_permutations) {
  hakd_dataset *ds = make_dataset();
  ASSERT_TRUE(ds != NULL);
  hakd_loader_config config = train_config(2);
  config.drop_last = 0;
  hakd_sample samples[N_ITEMS];
  for (int i = 0; i < N_ITEMS; i++) ASSERT_OK(hakd_dataset_load(ds, i, &samples[i]));
  hakd_loader *loader;
  ASSERT_OK(hakd_loader_new(&loader, ds, &config));
  ASSERT_EQ_INT(hakd_loader_batches_per_epoch(loader), 4);
  /* Sample j of a batch is the item whose own augmentation at the same (seed, epoch,
   * position) matches it. */
  static float candidates[N_ITEMS][3 * CROP_H * CROP_W];
  int32_t scratch[CROP_H * CROP_W];
  int order[2][N_ITEMS];
  for (int epoch = 0; epoch < 2; epoch++) {
    int seen[N_ITEMS] = {0}, position = 0;
    for (int b = 0; b < 4; b++) {
      static batch got;
      got.count = hakd_loader_next(loader, got.images, got.labels);
      ASSERT_EQ_INT(got.count, b < 3 ? BATCH : N_ITEMS % BATCH); /* no drop_last: a last batch of 2 */
      for (int j = 0; j < got.count; j++, position++) {
        for (int i = 0; i < N_ITEMS; i++)
          ASSERT_OK(
              hakd_augment_sample(candidates[i], scratch, &samples[i], &config.augment, config.seed, epoch, position));
        int item = identify(&got, j, candidates);
        ASSERT_TRUE(item >= 0);
        record_items(&got, loader);
        ASSERT_EQ_INT(got.items[j], item); /* the loader names the item the sample came from */
        seen[item]++;
        order[epoch][position] = item;
      }
    }
    for (int i = 0; i < N_ITEMS; i++) ASSERT_EQ_INT(seen[i], 1);
  }
  ASSERT_TRUE(memcmp(order[0], order[1], sizeof order[0]) != 0);
  hakd_loader_free(loader);
  for (int i = 0; i < N_ITEMS; i++) hakd_sample_free(&samples[i]);
  hakd_dataset_free(ds);
}

typedef struct {
  int calls;
  char all[8192]; /* the warnings, one a line */
} log_capture;

static void capture_log(void *user, const char *message) {
  log_capture *log = user;
  log->calls++;
  size_t used = strlen(log->all);
  snprintf(log->all + used, sizeof log->all - used, "%s\n", message);
}

TEST(bad_file_error_and_skip_bad) {
  hakd_dataset *ds = make_dataset();
  ASSERT_TRUE(ds != NULL);
  /* Item 4's label gets truncated. */
  const char *bad = hakd_dataset_label_path(ds, 4);
  ASSERT_EQ_INT(truncate_file(bad, 60), 0);

  for (int workers = 0; workers <= 2; workers++) {
    hakd_loader_config config = train_config(workers);
    hakd_loader *loader;
    ASSERT_OK(hakd_loader_new(&loader, ds, &config));
    static batch b;
    int status = 0;
    for (int i = 0; i < 6 && status >= 0; i++) status = hakd_loader_next(loader, b.images, b.labels);
    ASSERT_TRUE(status < 0);
    ASSERT_TRUE(strstr(hakd_error_message(), bad) != NULL);
    /* The error is sticky. */
    ASSERT_TRUE(hakd_loader_next(loader, b.images, b.labels) < 0);
    hakd_loader_free(loader);
  }

  /* More kinds of bad item: label missing, label of another size, label value 9 >= K = 8. */
  char missing[1024];
  snprintf(missing, sizeof missing, "%s", hakd_dataset_label_path(ds, 7));
  ASSERT_EQ_INT(remove(missing), 0);
  uint8_t values[16 * 20];
  memset(values, 9, sizeof values);
  ASSERT_OK(hakd_png_write_gray(hakd_dataset_label_path(ds, 9), 20, 16, values));
  ASSERT_OK(hakd_png_write_gray(hakd_dataset_label_path(ds, 2), 20, 15, values));

  /* skip_bad over one whole epoch (no drop_last: batches of 3, 3, 3, 2): one warning per
   * bad file naming it, a count of 4, and the same batches with 1 and 2 workers. */
  enum { N = 4 };
  static batch runs[2][N];
  for (int r = 0; r < 2; r++) {
    log_capture log = {0};
    hakd_loader_config config = train_config(r + 1);
    config.skip_bad = 1;
    config.drop_last = 0;
    config.log = capture_log;
    config.log_user = &log;
    hakd_loader *loader;
    ASSERT_OK(hakd_loader_new(&loader, ds, &config));
    for (int i = 0; i < N; i++) {
      ASSERT_EQ_INT(hakd_loader_next(loader, runs[r][i].images, runs[r][i].labels), i < 3 ? BATCH : 2);
      record_items(&runs[r][i], loader);
      /* a batch is named by the items it holds: the replacements, never the bad ones */
      for (int j = 0; j < (i < 3 ? BATCH : 2); j++)
        ASSERT_TRUE(runs[r][i].items[j] != 4 && runs[r][i].items[j] != 7 && runs[r][i].items[j] != 9 &&
                    runs[r][i].items[j] != 2);
    }
    ASSERT_EQ_INT(hakd_loader_skipped(loader), 4);
    ASSERT_EQ_INT(log.calls, 4);
    const char *names[4] = {bad, missing, hakd_dataset_label_path(ds, 9), hakd_dataset_label_path(ds, 2)};
    for (int k = 0; k < 4; k++) {
      if (!strstr(log.all, names[k])) {
        test_fail(__FILE__, __LINE__, "no warning names %s; warnings:\n%s", names[k], log.all);
        return;
      }
    }
    hakd_loader_free(loader);
  }
  for (int i = 0; i < N; i++) ASSERT_TRUE(!memcmp(&runs[0][i], &runs[1][i], sizeof runs[0][i]));
  hakd_dataset_free(ds);
}

TEST(config_errors) {
  hakd_dataset *ds = make_dataset();
  ASSERT_TRUE(ds != NULL);
  hakd_loader *loader;
  hakd_loader_config config = train_config(1);
  config.batch_size = N_ITEMS + 1; /* drop_last and not one full batch */
  ASSERT_EQ_INT(hakd_loader_new(&loader, ds, &config), HAKD_EINVAL);
  config = train_config(1);
  config.augment.crop_h = 0;
  ASSERT_EQ_INT(hakd_loader_new(&loader, ds, &config), HAKD_EINVAL);
  hakd_dataset_free(ds);
}
