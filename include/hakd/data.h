/* Segmentation datasets in their on-disk layouts, training augmentation, a prefetching
 * batch loader, and the synthetic dataset generator.
 *
 * Labels are int32 maps in train-id space: 0..num_classes-1, HAKD_IGNORE_INDEX (255) for
 * pixels that are not scored. Every random draw of an augmented sample comes from an RNG
 * seeded by (seed, epoch, index), so a sample is a pure function of those three numbers
 * and of the files on disk. */
#ifndef HAKD_DATA_H
#define HAKD_DATA_H

#include <stdint.h>

#include "hakd/error.h"

#define HAKD_IGNORE_INDEX 255

/* ---- datasets ----------------------------------------------------------------------- */

typedef struct hakd_dataset hakd_dataset;

typedef struct {
  /* "cityscapes", "voc" (also "pascal_voc"), "ade20k" (also "ade"), "camvid", or "generic"
   * (also "synth": the layout `hakd synth` writes). */
  const char *name;
  const char *root;
  /* "train", "val", "test"; VOC also "train_aug". */
  const char *split;
  /* VOC: use the augmented set (SegmentationClassAug/, train_aug.txt for the train split)
   * as the split "train_aug" does. Ignored by the other datasets. */
  int voc_aug;
} hakd_dataset_config;

/* Lists the split's items (sorted where the layout has no list file). Errors name the
 * missing directory or list file, a malformed list line, or an empty split. Files are
 * checked when an item is loaded, not here. */
int hakd_dataset_open(hakd_dataset **out, const hakd_dataset_config *config);
void hakd_dataset_free(hakd_dataset *ds);

/* Canonical name ("cityscapes", "voc", "ade20k", "camvid", "generic"). */
const char *hakd_dataset_name(const hakd_dataset *ds);
const char *hakd_dataset_split(const hakd_dataset *ds);
int hakd_dataset_num_classes(const hakd_dataset *ds);
int hakd_dataset_ignore_index(const hakd_dataset *ds);
const char *hakd_dataset_class_name(const hakd_dataset *ds, int k);
/* (num_classes, 3) RGB colours. */
const uint8_t *hakd_dataset_palette(const hakd_dataset *ds);
/* (num_classes) class names, for hakd_metrics_print. */
const char *const *hakd_dataset_class_names(const hakd_dataset *ds);
int64_t hakd_dataset_count(const hakd_dataset *ds);
const char *hakd_dataset_image_path(const hakd_dataset *ds, int64_t i);
/* "" when the list file gave the item no label. */
const char *hakd_dataset_label_path(const hakd_dataset *ds, int64_t i);

/* One decoded item. */
typedef struct {
  int width, height;
  uint8_t *rgb;   /* (H, W, 3), malloc'ed */
  int32_t *label; /* (H, W) train ids or HAKD_IGNORE_INDEX, malloc'ed */
} hakd_sample;

/* Decodes item i: the image as RGB (gray expanded) and the label mapped to train ids
 * (Cityscapes labelIds -> trainIds, ADE20K reduce_zero_label, CamVid 11 -> 255). Errors
 * name the file: missing label, unreadable or truncated file, label size differing from the
 * image, a label value that is neither a class nor ignore. out is zeroed on error. */
int hakd_dataset_load(const hakd_dataset *ds, int64_t i, hakd_sample *out);
/* Only the label of item i (no image decode), with the same mapping and checks of values. */
int hakd_dataset_load_label(const hakd_dataset *ds, int64_t i, int *width, int *height, int32_t **label);
void hakd_sample_free(hakd_sample *s);

/* ---- augmentation ------------------------------------------------------------------- */

typedef enum {
  /* RGB, (x - mean) / std with ImageNet mean 123.675,116.28,103.53, std 58.395,57.12,57.375. */
  HAKD_NORM_IMAGENET = 0,
  /* CIRKD: channels in BGR order, x - (104.008, 116.669, 122.675), no std. */
  HAKD_NORM_BGR_MEAN = 1
} hakd_norm;

typedef struct {
  int crop_h, crop_w;         /* training crop (output size) */
  float ratio_min, ratio_max; /* random rescale ratio range, e.g. 0.5 and 2.0; both 1 = off */
  /* mmseg's img_scale: when set, the ratio scales this (H, W) box and the image is resized
   * keeping its aspect ratio to fit it (RandomResize keep_ratio); when 0 the ratio scales
   * the image's own size. */
  int scale_h, scale_w;
  float cat_max_ratio; /* 0 = off; 0.75: retry the crop up to 10 times (mmseg RandomCrop) */
  int flip;            /* horizontal flip with p = 0.5 */
  int photometric;     /* mmseg PhotoMetricDistortion */
  hakd_norm norm;
} hakd_augment;

/* Re-expresses normalised images (B, 3, plane) given in convention `from` in convention `to`
 * (dst may not alias src): a teacher trained with another convention than the student's gets
 * its own input. */
void hakd_renormalize(float *dst, const float *src, int64_t images, int64_t plane, hakd_norm from, hakd_norm to);

/* Defaults: no crop, ratio 0.5..2.0, flip, no cat_max_ratio, no photometric, ImageNet norm. */
hakd_augment hakd_augment_default(int crop_h, int crop_w);

/* Training transform of one sample: random rescale (bilinear image, nearest label), random
 * crop (cat_max_ratio), flip, photometric distortion, normalisation; a crop larger than the
 * rescaled image is padded at the bottom/right with 0 (after normalisation) and label 255.
 * All draws from an RNG seeded by (seed, epoch, index). */
int hakd_augment_sample(float *image,   /* (3, crop_h, crop_w) */
                        int32_t *label, /* (crop_h, crop_w) */
                        const hakd_sample *in, const hakd_augment *aug, uint64_t seed, int64_t epoch, int64_t index);

/* Validation size: the whole image when scale_h/scale_w are 0, else resized keeping the ratio
 * to fit within (scale_h, scale_w) as mmseg's Resize keep_ratio (the long edge bound is the
 * larger of the two, the short edge bound the smaller: 512x2048 fits ADE20K into 2048x512). */
void hakd_eval_size(int *out_h, int *out_w, int height, int width, int scale_h, int scale_w);
/* Validation transform: bilinear resize to hakd_eval_size, normalise; the label is left as
 * is (predictions are scored at label size). image: (3, out_h, out_w). */
int hakd_eval_transform(float *image, const hakd_sample *in, int scale_h, int scale_w, hakd_norm norm);

/* ---- loader ------------------------------------------------------------------------- */

typedef struct hakd_loader hakd_loader;

/* Receives warnings (a skipped bad file); called from worker threads, one call at a time. */
typedef void (*hakd_log_fn)(void *user, const char *message);

typedef struct {
  int batch_size;
  int num_workers; /* decoding threads; 0 = decode inside hakd_loader_next */
  int prefetch;    /* batches prepared ahead (>= 1; default 2 when 0) */
  int shuffle;     /* per-epoch Fisher-Yates permutation from (seed, epoch) */
  int drop_last;   /* drop the last partial batch of an epoch */
  int skip_bad;    /* warn about a bad item and take the next good one instead of failing */
  uint64_t seed;
  hakd_augment augment;
  hakd_log_fn log; /* NULL = stderr */
  void *log_user;
  /* Data-parallel runs: this loader fills shard shard_index of shard_count equal parts of every
   * batch (batch_size is the global batch; it must divide, and drop_last must be on). The batch
   * sequence, and so the loader state, are those of the whole batch. 0, 0: the whole batch. */
  int shard_index, shard_count;
} hakd_loader_config;

/* Where the iterator stands: the next batch starts at sample `position` of epoch `epoch`. */
typedef struct {
  int64_t epoch, position;
} hakd_loader_state;

/* Borrows ds (must outlive the loader). Starts the workers. */
int hakd_loader_new(hakd_loader **out, const hakd_dataset *ds, const hakd_loader_config *config);
void hakd_loader_free(hakd_loader *loader);
/* Endless iterator: fills the next batch (this loader's shard of it) and returns the number of
 * samples in it (batch_size / shard_count, or fewer for an epoch's last batch without drop_last), or a negative status naming the bad
 * file. After an error the loader keeps returning it. Batch contents depend only on (seed,
 * epoch, position), never on the number of workers. */
int hakd_loader_next(hakd_loader *loader, float *images, /* (B, 3, crop_h, crop_w) */
                     int32_t *labels /* (B, crop_h, crop_w) */);
hakd_loader_state hakd_loader_get_state(const hakd_loader *loader);
/* The dataset items (indices for hakd_dataset_image_path) of the batch hakd_loader_next
 * returned last, so that a batch that makes trouble can be named; returns their count. */
int hakd_loader_last_items(const hakd_loader *loader, const int64_t **items);
/* Restarts the iterator at `state` (as read by hakd_loader_get_state) for a bit-identical resume. */
int hakd_loader_set_state(hakd_loader *loader, hakd_loader_state state);
/* Batches in one epoch. */
int64_t hakd_loader_batches_per_epoch(const hakd_loader *loader);
/* Distinct bad files skipped so far (skip_bad). */
int64_t hakd_loader_skipped(const hakd_loader *loader);

/* ---- synthetic dataset -------------------------------------------------------------- */

/* Classes of the synthetic set (see docs/synth.md). */
enum {
  HAKD_SYNTH_BACKGROUND = 0,
  HAKD_SYNTH_STRIPES = 1, /* local: texture */
  HAKD_SYNTH_CHECKER = 2, /* local: texture */
  HAKD_SYNTH_DOTS = 3,    /* local: texture */
  HAKD_SYNTH_LARGEST = 4, /* global: the largest plain disc of the image */
  HAKD_SYNTH_WARM = 5,    /* global: any other plain disc when the image frame is red */
  HAKD_SYNTH_COLD = 6,    /* global: any other plain disc when the image frame is blue */
  HAKD_SYNTH_RARE = 7,    /* small rare marker */
  HAKD_SYNTH_NUM_CLASSES = 8
};

const char *hakd_synth_class_name(int k);
/* (HAKD_SYNTH_NUM_CLASSES, 3) */
const uint8_t *hakd_synth_palette(void);

/* Renders synthetic image `index` of the stream `seed` (a pure function of both). */
void hakd_synth_render(uint8_t *rgb,   /* (H, W, 3) */
                       uint8_t *label, /* (H, W) class ids or 255 */
                       int height, int width, uint64_t seed, int64_t index);

/* Validation image i of a written set is rendered at index HAKD_SYNTH_VAL_INDEX + i (train
 * image i at index i), so the number of training images never changes the validation set. */
#define HAKD_SYNTH_VAL_INDEX ((int64_t)1 << 40)

typedef struct {
  const char *out_dir;
  int n_train, n_val;
  int height, width;
  uint64_t seed;
} hakd_synth_config;

/* Writes the generic layout: images/{train,val}/NNNNN.png, labels/{train,val}/NNNNN.png
 * (palette PNGs), train.txt, val.txt, classes.txt (with the palette). */
int hakd_synth_write(const hakd_synth_config *config);

#endif
