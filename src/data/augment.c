/* Training augmentation (mmsegmentation's pipeline: RandomResize, RandomCrop with
 * cat_max_ratio, RandomFlip, PhotoMetricDistortion, Normalize, Pad) and the validation
 * resize. Only the crop window of the rescaled image is ever computed: resampling is
 * pointwise, so that equals rescaling the whole image and cropping it. */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "data/rng.h"
#include "hakd/data.h"

hakd_augment hakd_augment_default(int crop_h, int crop_w) {
  hakd_augment aug = {0};
  aug.crop_h = crop_h;
  aug.crop_w = crop_w;
  aug.ratio_min = 0.5f;
  aug.ratio_max = 2.0f;
  aug.flip = 1;
  aug.norm = HAKD_NORM_IMAGENET;
  return aug;
}

/* ImageNet mean/std (RGB, 0-255 scale) and CIRKD's mean in its BGR channel order. */
static const float imagenet_mean[3] = {123.675f, 116.28f, 103.53f}, imagenet_std[3] = {58.395f, 57.12f, 57.375f};
static const float bgr_mean[3] = {104.008f, 116.669f, 122.675f};

/* Writes one pixel's three channels into CHW planes `plane` apart. */
static void normalize_pixel(float *out, int64_t plane, const uint8_t *rgb, hakd_norm norm) {
  if (norm == HAKD_NORM_BGR_MEAN) {
    for (int c = 0; c < 3; c++) out[c * plane] = (float)rgb[2 - c] - bgr_mean[c];
  } else {
    for (int c = 0; c < 3; c++) out[c * plane] = ((float)rgb[c] - imagenet_mean[c]) / imagenet_std[c];
  }
}

void hakd_renormalize(float *dst, const float *src, int64_t images, int64_t plane, hakd_norm from, hakd_norm to) {
  for (int64_t b = 0; b < images; b++) {
    const float *s = src + b * 3 * plane;
    float *d = dst + b * 3 * plane;
    for (int64_t p = 0; p < plane; p++) {
      float rgb[3];
      for (int c = 0; c < 3; c++)
        rgb[c] = from == HAKD_NORM_BGR_MEAN ? s[(2 - c) * plane + p] + bgr_mean[2 - c]
                                            : s[c * plane + p] * imagenet_std[c] + imagenet_mean[c];
      for (int c = 0; c < 3; c++)
        d[c * plane + p] = to == HAKD_NORM_BGR_MEAN ? rgb[2 - c] - bgr_mean[c]
                                                    : (rgb[c] - imagenet_mean[c]) / imagenet_std[c];
    }
  }
}

/* mmcv rescale: the scale factor that fits (h, w) in the box, the long edge bounded by the
 * box's longer side and the short edge by its shorter side. */
static void keep_ratio_size(int *out_h, int *out_w, int height, int width, double box_h, double box_w) {
  double long_edge = fmax(box_h, box_w), short_edge = fmin(box_h, box_w);
  double factor = fmin(long_edge / (height > width ? height : width), short_edge / (height < width ? height : width));
  *out_h = (int)(height * factor + 0.5);
  *out_w = (int)(width * factor + 0.5);
  if (*out_h < 1) *out_h = 1;
  if (*out_w < 1) *out_w = 1;
}

void hakd_eval_size(int *out_h, int *out_w, int height, int width, int scale_h, int scale_w) {
  if (scale_h <= 0 || scale_w <= 0) {
    *out_h = height;
    *out_w = width;
    return;
  }
  keep_ratio_size(out_h, out_w, height, width, scale_h, scale_w);
}

/* Source coordinate and weight of bilinear sampling with half-pixel centres
 * (cv2 INTER_LINEAR, torch interpolate align_corners=False). */
typedef struct {
  int lo, hi;
  float frac;
} tap;

static void bilinear_taps(tap *taps, int begin, int count, int src_size, int dst_size) {
  double scale = (double)src_size / dst_size;
  for (int i = 0; i < count; i++) {
    double s = (begin + i + 0.5) * scale - 0.5;
    if (s < 0) s = 0;
    int lo = (int)s;
    if (lo > src_size - 1) lo = src_size - 1;
    taps[i].lo = lo;
    taps[i].hi = lo + 1 < src_size ? lo + 1 : src_size - 1;
    taps[i].frac = (float)(s - lo);
  }
}

/* Rows [y0, y0+rh) and columns [x0, x0+rw) of src resized to (nh, nw), rounded to uint8.
 * reference: torch.nn.functional.interpolate(mode='bilinear', align_corners=False) (cv2.resize INTER_LINEAR) */
static int resize_window(uint8_t *dst,       /* (rh, rw, 3) */
                         const uint8_t *src, /* (H, W, 3) */
                         int height, int width, int nh, int nw, int y0, int rh, int x0, int rw) {
  if (nh == height && nw == width) {
    for (int y = 0; y < rh; y++)
      memcpy(dst + (size_t)y * rw * 3, src + ((size_t)(y0 + y) * width + x0) * 3, (size_t)rw * 3);
    return 0;
  }
  tap *row_taps = malloc((size_t)rh * sizeof *row_taps), *col_taps = malloc((size_t)rw * sizeof *col_taps);
  if (!row_taps || !col_taps) {
    free(row_taps);
    free(col_taps);
    return hakd_error(HAKD_ENOMEM, "augment: out of memory resizing to %dx%d", nw, nh);
  }
  bilinear_taps(row_taps, y0, rh, height, nh);
  bilinear_taps(col_taps, x0, rw, width, nw);
  for (int y = 0; y < rh; y++) {
    const uint8_t *top = src + (size_t)row_taps[y].lo * width * 3, *bottom = src + (size_t)row_taps[y].hi * width * 3;
    float fy = row_taps[y].frac;
    uint8_t *out = dst + (size_t)y * rw * 3;
    for (int x = 0; x < rw; x++) {
      const tap t = col_taps[x];
      for (int c = 0; c < 3; c++) {
        float a = top[3 * t.lo + c] + t.frac * (top[3 * t.hi + c] - top[3 * t.lo + c]);
        float b = bottom[3 * t.lo + c] + t.frac * (bottom[3 * t.hi + c] - bottom[3 * t.lo + c]);
        out[3 * x + c] = (uint8_t)(a + fy * (b - a) + 0.5f);
      }
    }
  }
  free(row_taps);
  free(col_taps);
  return 0;
}

/* Nearest-neighbour source index of each destination index: floor(i * src / dst).
 * reference: torch.nn.functional.interpolate(mode='nearest') (cv2.resize INTER_NEAREST) */
static void nearest_map(int *map, int dst_size, int src_size) {
  for (int i = 0; i < dst_size; i++) {
    int s = (int)((int64_t)i * src_size / dst_size);
    map[i] = s < src_size ? s : src_size - 1;
  }
}

/* ---- photometric distortion (mmseg PhotoMetricDistortion on uint8 pixels) -------------- */

static uint8_t clip_truncate(double v) { return (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v); }

static void scale_shift(uint8_t *rgb, size_t n, double alpha, double beta) {
  for (size_t i = 0; i < n; i++) rgb[i] = clip_truncate(rgb[i] * alpha + beta);
}

/* 1/i for i in 1..255 (index 0 unused): the divisions of the HSV conversion. */
static float reciprocal[256];

static void init_reciprocal(void) {
  for (int i = 1; i < 256; i++) reciprocal[i] = 1.0f / (float)i;
}

/* OpenCV's 8-bit HSV: H in [0, 180) (degrees / 2), S and V in [0, 255]. */
static void rgb_to_hsv(uint8_t *hsv, const uint8_t *rgb) {
  int r = rgb[0], g = rgb[1], b = rgb[2];
  int v = r > g ? (r > b ? r : b) : (g > b ? g : b), mn = r < g ? (r < b ? r : b) : (g < b ? g : b), diff = v - mn;
  float h = 0.0f;
  if (diff > 0) {
    if (v == r)
      h = 30.0f * (float)(g - b) * reciprocal[diff];
    else if (v == g)
      h = 60.0f + 30.0f * (float)(b - r) * reciprocal[diff];
    else
      h = 120.0f + 30.0f * (float)(r - g) * reciprocal[diff];
    if (h < 0.0f) h += 180.0f;
  }
  int h8 = (int)(h + 0.5f);
  hsv[0] = (uint8_t)(h8 >= 180 ? h8 - 180 : h8);
  hsv[1] = (uint8_t)(v ? (int)(255.0f * (float)diff * reciprocal[v] + 0.5f) : 0);
  hsv[2] = (uint8_t)v;
}

static void hsv_to_rgb(uint8_t *rgb, const uint8_t *hsv) {
  float h = (float)hsv[0] * (1.0f / 30.0f), s = (float)hsv[1] * (1.0f / 255.0f), v = (float)hsv[2];
  int sector = (int)h;
  float f = h - (float)sector, p = v * (1 - s), q = v * (1 - s * f), t = v * (1 - s * (1 - f));
  float r, g, b;
  switch (sector) {
    case 0: r = v, g = t, b = p; break;
    case 1: r = q, g = v, b = p; break;
    case 2: r = p, g = v, b = t; break;
    case 3: r = p, g = q, b = v; break;
    case 4: r = t, g = p, b = v; break;
    default: r = v, g = p, b = q; break;
  }
  rgb[0] = (uint8_t)(r + 0.5f);
  rgb[1] = (uint8_t)(g + 0.5f);
  rgb[2] = (uint8_t)(b + 0.5f);
}

static void saturation_scale(uint8_t *rgb, size_t n_pixels, double alpha) {
  for (size_t i = 0; i < n_pixels; i++) {
    uint8_t hsv[3];
    rgb_to_hsv(hsv, rgb + 3 * i);
    hsv[1] = clip_truncate(hsv[1] * alpha);
    hsv_to_rgb(rgb + 3 * i, hsv);
  }
}

static void hue_shift(uint8_t *rgb, size_t n_pixels, int delta) {
  for (size_t i = 0; i < n_pixels; i++) {
    uint8_t hsv[3];
    rgb_to_hsv(hsv, rgb + 3 * i);
    hsv[0] = (uint8_t)(((hsv[0] + delta) % 180 + 180) % 180);
    hsv_to_rgb(rgb + 3 * i, hsv);
  }
}

/* mmseg order: brightness, contrast first or last (random mode), saturation, hue; each
 * step applied with p = 0.5. */
static void photometric_distortion(uint8_t *rgb, size_t n_pixels, uint64_t *rng) {
  static pthread_once_t reciprocal_once = PTHREAD_ONCE_INIT;
  pthread_once(&reciprocal_once, init_reciprocal);
  if (hakd__rng_below(rng, 2)) scale_shift(rgb, 3 * n_pixels, 1.0, hakd__rng_range(rng, -32, 32));
  int contrast_first = (int)hakd__rng_below(rng, 2);
  if (contrast_first && hakd__rng_below(rng, 2)) scale_shift(rgb, 3 * n_pixels, hakd__rng_range(rng, 0.5, 1.5), 0);
  if (hakd__rng_below(rng, 2)) saturation_scale(rgb, n_pixels, hakd__rng_range(rng, 0.5, 1.5));
  if (hakd__rng_below(rng, 2)) hue_shift(rgb, n_pixels, (int)hakd__rng_below(rng, 36) - 18);
  if (!contrast_first && hakd__rng_below(rng, 2)) scale_shift(rgb, 3 * n_pixels, hakd__rng_range(rng, 0.5, 1.5), 0);
}

/* ---- the training transform ------------------------------------------------------------ */

typedef struct {
  int y, x, h, w; /* window of the rescaled image; h, w <= crop */
} crop_box;

static crop_box random_crop(uint64_t *rng, int nh, int nw, int crop_h, int crop_w) {
  int margin_h = nh > crop_h ? nh - crop_h : 0, margin_w = nw > crop_w ? nw - crop_w : 0;
  crop_box box;
  box.y = (int)hakd__rng_below(rng, margin_h + 1);
  box.x = (int)hakd__rng_below(rng, margin_w + 1);
  box.h = nh - box.y < crop_h ? nh - box.y : crop_h;
  box.w = nw - box.x < crop_w ? nw - box.x : crop_w;
  return box;
}

/* mmseg's test: more than one class in the window and none above max_ratio of its valid pixels. */
static int crop_is_balanced(const crop_box *box, const int32_t *label, int width, const int *row_map,
                            const int *col_map, float max_ratio) {
  int64_t counts[256] = {0}, total = 0, largest = 0;
  int classes = 0;
  for (int y = box->y; y < box->y + box->h; y++) {
    const int32_t *row = label + (size_t)row_map[y] * width;
    for (int x = box->x; x < box->x + box->w; x++) {
      int32_t v = row[col_map[x]];
      if (v == HAKD_IGNORE_INDEX || v < 0 || v > 255) continue;
      if (counts[v]++ == 0) classes++;
      total++;
    }
  }
  for (int v = 0; v < 256; v++)
    if (counts[v] > largest) largest = counts[v];
  return classes > 1 && (double)largest / (double)total < max_ratio;
}

static void rescaled_size(int *nh, int *nw, int height, int width, double ratio, const hakd_augment *aug) {
  if (aug->scale_h > 0 && aug->scale_w > 0) {
    keep_ratio_size(nh, nw, height, width, (int)(aug->scale_h * ratio), (int)(aug->scale_w * ratio));
  } else {
    *nh = (int)(height * ratio + 0.5);
    *nw = (int)(width * ratio + 0.5);
    if (*nh < 1) *nh = 1;
    if (*nw < 1) *nw = 1;
  }
}

int hakd_augment_sample(float *image, int32_t *label, const hakd_sample *in, const hakd_augment *aug, uint64_t seed,
                        int64_t epoch, int64_t index) {
  const int crop_h = aug->crop_h, crop_w = aug->crop_w, height = in->height, width = in->width;
  if (crop_h <= 0 || crop_w <= 0) return hakd_error(HAKD_EINVAL, "augment: crop size %dx%d", crop_h, crop_w);
  if (!(aug->ratio_min > 0) || aug->ratio_max < aug->ratio_min)
    return hakd_error(HAKD_EINVAL, "augment: ratio range [%g, %g]", aug->ratio_min, aug->ratio_max);
  uint64_t rng = hakd__rng_stream(HAKD__RNG_AUGMENT, seed, epoch, index);

  int nh, nw;
  rescaled_size(&nh, &nw, height, width, hakd__rng_range(&rng, aug->ratio_min, aug->ratio_max), aug);
  int *row_map = malloc((size_t)nh * sizeof *row_map), *col_map = malloc((size_t)nw * sizeof *col_map);
  uint8_t *window = malloc((size_t)crop_h * crop_w * 3);
  int32_t *window_label = malloc((size_t)crop_h * crop_w * sizeof *window_label);
  int status = 0;
  if (!row_map || !col_map || !window || !window_label) {
    status = hakd_error(HAKD_ENOMEM, "augment: out of memory (rescaled %dx%d)", nw, nh);
    goto done;
  }
  nearest_map(row_map, nh, height);
  nearest_map(col_map, nw, width);

  crop_box box = random_crop(&rng, nh, nw, crop_h, crop_w);
  if (aug->cat_max_ratio > 0 && aug->cat_max_ratio < 1)
    for (int attempt = 0; attempt < 10; attempt++) {
      if (crop_is_balanced(&box, in->label, width, row_map, col_map, aug->cat_max_ratio)) break;
      box = random_crop(&rng, nh, nw, crop_h, crop_w);
    }

  if ((status = resize_window(window, in->rgb, height, width, nh, nw, box.y, box.h, box.x, box.w))) goto done;
  for (int y = 0; y < box.h; y++) {
    const int32_t *src = in->label + (size_t)row_map[box.y + y] * width;
    for (int x = 0; x < box.w; x++) window_label[y * box.w + x] = src[col_map[box.x + x]];
  }

  if (aug->flip && hakd__rng_below(&rng, 2))
    for (int y = 0; y < box.h; y++) {
      uint8_t *row = window + (size_t)y * box.w * 3;
      int32_t *lrow = window_label + (size_t)y * box.w;
      for (int a = 0, b = box.w - 1; a < b; a++, b--) {
        for (int c = 0; c < 3; c++) {
          uint8_t t = row[3 * a + c];
          row[3 * a + c] = row[3 * b + c];
          row[3 * b + c] = t;
        }
        int32_t t = lrow[a];
        lrow[a] = lrow[b];
        lrow[b] = t;
      }
    }

  if (aug->photometric) photometric_distortion(window, (size_t)box.h * box.w, &rng);

  /* Normalise the window; the rest of the crop is padding: 0 after normalisation, label ignore. */
  const int64_t plane = (int64_t)crop_h * crop_w;
  for (int y = 0; y < crop_h; y++)
    for (int x = 0; x < crop_w; x++) {
      int64_t o = (int64_t)y * crop_w + x;
      if (y < box.h && x < box.w) {
        normalize_pixel(image + o, plane, window + 3 * ((size_t)y * box.w + x), aug->norm);
        label[o] = window_label[y * box.w + x];
      } else {
        image[o] = image[plane + o] = image[2 * plane + o] = 0.0f;
        label[o] = HAKD_IGNORE_INDEX;
      }
    }
done:
  free(row_map);
  free(col_map);
  free(window);
  free(window_label);
  return status;
}

int hakd_eval_transform(float *image, const hakd_sample *in, int scale_h, int scale_w, hakd_norm norm) {
  int oh, ow;
  hakd_eval_size(&oh, &ow, in->height, in->width, scale_h, scale_w);
  uint8_t *resized = malloc((size_t)oh * ow * 3);
  if (!resized) return hakd_error(HAKD_ENOMEM, "eval transform: out of memory (%dx%d)", ow, oh);
  int status = resize_window(resized, in->rgb, in->height, in->width, oh, ow, 0, oh, 0, ow);
  const int64_t plane = (int64_t)oh * ow;
  for (int64_t p = 0; !status && p < plane; p++) normalize_pixel(image + p, plane, resized + 3 * p, norm);
  free(resized);
  return status;
}
