#include "hakd/evaluate.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "hakd/io.h"
#include "hakd/ops.h"
#include "train/progress.h"

void hakd_eval_options_default(hakd_eval_options *o) {
  memset(o, 0, sizeof *o);
  o->mode = HAKD_EVAL_WHOLE;
  o->n_scales = 1;
  o->scales[0] = 1.0f;
}

void hakd_eval_protocol(const hakd_eval_options *o, char *buf, size_t size) {
  size_t n = 0;
  if (o->mode == HAKD_EVAL_SLIDE)
    n += (size_t)snprintf(buf, size, "slide %dx%d stride %dx%d", o->crop_h, o->crop_w, o->stride_h, o->stride_w);
  else
    n += (size_t)snprintf(buf, size, "whole image");
  if (n < size && o->scale_h)
    n += (size_t)snprintf(buf + n, size - n, ", resized to fit %dx%d", o->scale_h, o->scale_w);
  if (n < size && o->flip) n += (size_t)snprintf(buf + n, size - n, ", flip");
  if (n < size) {
    if (o->n_scales == 1 && o->scales[0] == 1.0f) {
      n += (size_t)snprintf(buf + n, size - n, ", single scale");
    } else {
      n += (size_t)snprintf(buf + n, size - n, ", scales");
      for (int i = 0; i < o->n_scales && n < size; i++)
        n += (size_t)snprintf(buf + n, size - n, "%s%g", i ? "," : " ", (double)o->scales[i]);
    }
  }
  if (n < size) snprintf(buf + n, size - n, ", softmax averaged, scored at label size");
}

/* Logits of x (1, 3, h, w) bilinearly resized to (h, w): the model's view of one crop. */
static hakd_tensor *logits_at_input_size(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x) {
  hakd_model_output out;
  if (hakd_model_forward(m, ctx, x, &out)) return NULL;
  return hakd_resize_bilinear(ctx, out.logits, x->shape[2], x->shape[3], 0);
}

/* mmseg slide_inference: overlapping crops, logits summed and divided by the visit count. */
static hakd_tensor *slide_logits(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x, const hakd_eval_options *o) {
  int64_t h = x->shape[2], w = x->shape[3], K = hakd_model_num_classes(m);
  int64_t ch = o->crop_h < h ? o->crop_h : h, cw = o->crop_w < w ? o->crop_w : w;
  int64_t grid_h = (h - ch + o->stride_h - 1) / o->stride_h + 1, grid_w = (w - cw + o->stride_w - 1) / o->stride_w + 1;
  if (h <= ch) grid_h = 1;
  if (w <= cw) grid_w = 1;
  hakd_tensor *sum = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){1, K, h, w});
  float *count = hakd_ctx_alloc(ctx, (size_t)(h * w) * sizeof(float));
  if (!sum || !count) return NULL;
  memset(count, 0, (size_t)(h * w) * sizeof(float));
  for (int64_t gy = 0; gy < grid_h; gy++)
    for (int64_t gx = 0; gx < grid_w; gx++) {
      int64_t y2 = gy * o->stride_h + ch, x2 = gx * o->stride_w + cw;
      if (y2 > h) y2 = h;
      if (x2 > w) x2 = w;
      int64_t y1 = y2 - ch > 0 ? y2 - ch : 0, x1 = x2 - cw > 0 ? x2 - cw : 0;
      hakd_tensor *crop = hakd_slice(ctx, hakd_slice(ctx, x, 2, y1, y2 - y1), 3, x1, x2 - x1);
      hakd_tensor *lg = logits_at_input_size(m, ctx, crop);
      if (!lg) return NULL;
      for (int64_t k = 0; k < K; k++)
        for (int64_t y = y1; y < y2; y++)
          for (int64_t xx = x1; xx < x2; xx++)
            hakd_f32(sum)[(k * h + y) * w + xx] += hakd_f32(lg)[(k * (y2 - y1) + (y - y1)) * (x2 - x1) + (xx - x1)];
      for (int64_t y = y1; y < y2; y++)
        for (int64_t xx = x1; xx < x2; xx++) count[y * w + xx] += 1.0f;
    }
  for (int64_t k = 0; k < K; k++)
    for (int64_t i = 0; i < h * w; i++) hakd_f32(sum)[k * h * w + i] /= count[i];
  return sum;
}

static void flip_width(float *dst, const float *src, int64_t planes, int64_t h, int64_t w) {
  for (int64_t p = 0; p < planes * h; p++)
    for (int64_t x = 0; x < w; x++) dst[p * w + x] = src[p * w + (w - 1 - x)];
}

int hakd_predict_probs(hakd_model *m, hakd_ctx *ctx, const float *image, int h, int w, const hakd_eval_options *o,
                       float *probs) {
  int64_t K = hakd_model_num_classes(m), hw = (int64_t)h * w;
  memset(probs, 0, (size_t)(K * hw) * sizeof(float));
  hakd_tensor *base = hakd_tensor_from(ctx, HAKD_F32, 4, (int64_t[]){1, 3, h, w}, image);
  if (!base) return hakd_ctx_status(ctx);
  int n_scales = o->n_scales > 0 ? o->n_scales : 1;
  for (int s = 0; s < n_scales; s++) {
    float scale = o->n_scales > 0 ? o->scales[s] : 1.0f;
    int64_t sh = (int64_t)(h * scale + 0.5f), sw = (int64_t)(w * scale + 0.5f);
    if (sh < 1) sh = 1;
    if (sw < 1) sw = 1;
    hakd_tensor *x = (sh == h && sw == w) ? base : hakd_resize_bilinear(ctx, base, sh, sw, 0);
    for (int flipped = 0; flipped <= (o->flip ? 1 : 0); flipped++) {
      hakd_tensor *input = x;
      if (flipped && x) {
        input = hakd_tensor_new(ctx, HAKD_F32, 4, x->shape);
        if (input) flip_width(hakd_f32(input), hakd_f32(x), 3, sh, sw);
      }
      if (!input) return hakd_ctx_status(ctx);
      hakd_tensor *lg = o->mode == HAKD_EVAL_SLIDE ? slide_logits(m, ctx, input, o) : logits_at_input_size(m, ctx, input);
      if (lg && (sh != h || sw != w)) lg = hakd_resize_bilinear(ctx, lg, h, w, 0);
      hakd_tensor *p = hakd_softmax(ctx, lg, 1);
      if (!p) return hakd_ctx_status(ctx) ? hakd_ctx_status(ctx) : HAKD_EINVAL;
      const float *pd = hakd_f32(p);
      for (int64_t k = 0; k < K; k++)
        for (int64_t y = 0; y < h; y++)
          for (int64_t xx = 0; xx < w; xx++)
            probs[(k * h + y) * w + xx] += pd[(k * h + y) * w + (flipped ? w - 1 - xx : xx)];
    }
  }
  return 0;
}

void hakd_overlay(uint8_t *out, const uint8_t *rgb, const int32_t *mask, int64_t n, const uint8_t *palette,
                  int num_colors, float alpha) {
  for (int64_t i = 0; i < n; i++) {
    int k = mask[i];
    for (int c = 0; c < 3; c++) {
      float v = rgb[3 * i + c];
      if (k >= 0 && k < num_colors) v = (1.0f - alpha) * v + alpha * palette[3 * k + c];
      out[3 * i + c] = (uint8_t)(v + 0.5f);
    }
  }
}

static const char *base_name(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

static int save_prediction(const char *dir, const char *image_path, const hakd_sample *s, const int32_t *pred,
                           const hakd_dataset *ds) {
  char name[512], path[1200];
  snprintf(name, sizeof name, "%s", base_name(image_path));
  char *dot = strrchr(name, '.');
  if (dot) *dot = '\0';
  int64_t n = (int64_t)s->width * s->height;
  uint8_t *idx = malloc((size_t)n), *over = malloc((size_t)n * 3);
  if (!idx || !over) {
    free(idx), free(over);
    return hakd_error(HAKD_ENOMEM, "out of memory saving %s", name);
  }
  for (int64_t i = 0; i < n; i++) idx[i] = (uint8_t)pred[i];
  int K = hakd_dataset_num_classes(ds);
  snprintf(path, sizeof path, "%s/%s.png", dir, name);
  int rc = hakd_png_write_palette(path, s->width, s->height, idx, hakd_dataset_palette(ds), K);
  if (!rc) {
    hakd_overlay(over, s->rgb, pred, n, hakd_dataset_palette(ds), K, 0.5f);
    snprintf(path, sizeof path, "%s/overlays/%s.png", dir, name);
    rc = hakd_png_write_rgb(path, s->width, s->height, over);
  }
  free(idx);
  free(over);
  return rc;
}

int hakd_evaluate(hakd_model *m, const hakd_dataset *ds, const hakd_eval_options *o, hakd_confusion *cm) {
  int K = hakd_model_num_classes(m);
  if (K != hakd_dataset_num_classes(ds))
    return hakd_error(HAKD_ESHAPE, "%s predicts %d classes but %s has %d", hakd_model_name(m), K, hakd_dataset_name(ds),
                      hakd_dataset_num_classes(ds));
  if (o->save_pred_dir) {
    char sub[1100];
    snprintf(sub, sizeof sub, "%s/overlays", o->save_pred_dir);
    const char *dirs[2] = {o->save_pred_dir, sub};
    for (int d = 0; d < 2; d++) {
      struct stat st;
      if (mkdir(dirs[d], 0755) && errno != EEXIST)
        return hakd_error(HAKD_EIO, "%s: cannot create the prediction folder: %s", dirs[d], strerror(errno));
      /* EEXIST is also what a plain file of that name gives */
      if (stat(dirs[d], &st) || !S_ISDIR(st.st_mode))
        return hakd_error(HAKD_EIO, "%s: exists and is not a folder; cannot save predictions there", dirs[d]);
    }
  }
  hakd_ctx *ctx = hakd_ctx_new();
  if (!ctx) return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd_ctx_set_precision(ctx, o->precision);
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  int64_t n = hakd_dataset_count(ds);
  if (o->max_images > 0 && o->max_images < n) n = o->max_images;
  progress_bar bar;
  progress_start(&bar, o->progress, "eval", n);
  int rc = 0;
  int shards = o->shard_count > 1 ? o->shard_count : 1;
  for (int64_t i = shards > 1 ? o->shard_index : 0; i < n && !rc; i += shards) {
    hakd_sample s;
    rc = hakd_dataset_load(ds, i, &s);
    if (rc) {
      if (o->skip_bad) {
        if (o->warnings) fprintf(o->warnings, "warning: skipping %s\n", hakd_error_message());
        rc = 0;
      }
      continue;
    }
    int h, w;
    hakd_eval_size(&h, &w, s.height, s.width, o->scale_h, o->scale_w);
    hakd_ctx_reset(ctx);
    float *image = hakd_ctx_alloc(ctx, (size_t)(3 * h * w) * sizeof(float));
    float *probs = hakd_ctx_alloc(ctx, (size_t)K * h * w * sizeof(float));
    int32_t *pred = malloc((size_t)s.width * s.height * sizeof *pred);
    if (!image || !probs || !pred) rc = hakd_error(HAKD_ENOMEM, "out of memory evaluating %s", hakd_dataset_image_path(ds, i));
    if (!rc) rc = hakd_eval_transform(image, &s, o->scale_h, o->scale_w, o->norm);
    if (!rc) rc = hakd_predict_probs(m, ctx, image, h, w, o, probs);
    if (!rc) {
      /* Probabilities back at label size (bilinear, as mmseg resizes logits to the original shape). */
      const float *scored = probs;
      if (h != s.height || w != s.width) {
        hakd_tensor *pt = hakd_tensor_from(ctx, HAKD_F32, 4, (int64_t[]){1, K, h, w}, probs);
        hakd_tensor *up = hakd_resize_bilinear(ctx, pt, s.height, s.width, 0);
        if (!up) rc = hakd_ctx_status(ctx);
        scored = up ? hakd_f32(up) : NULL;
      }
      if (!rc) {
        int64_t hw = (int64_t)s.width * s.height;
        for (int64_t p = 0; p < hw; p++) {
          int best = 0;
          for (int k = 1; k < K; k++)
            if (scored[k * hw + p] > scored[best * hw + p]) best = k;
          pred[p] = best;
        }
        rc = hakd_confusion_add(cm, pred, s.label, hw, hakd_dataset_ignore_index(ds));
        if (rc) hakd_error_prefix("%s", hakd_dataset_label_path(ds, i));
      }
      if (!rc && o->save_pred_dir) rc = save_prediction(o->save_pred_dir, hakd_dataset_image_path(ds, i), &s, pred, ds);
    }
    if (rc) hakd_error_prefix("evaluating %s", hakd_dataset_image_path(ds, i));
    free(pred);
    hakd_sample_free(&s);
    progress_update(&bar, i + 1, NULL);
  }
  progress_finish(&bar);
  hakd_ctx_free(ctx);
  return rc;
}
