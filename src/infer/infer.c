/* The embeddable inference API (include/hakd/infer.h): open a weights file as a model, segment
 * RGB images. Each predict makes its own step context, so concurrent calls on one model share
 * only the model's read-only parameters (the ops' scratch and caches are per thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/infer.h"
#include "hakd/io.h"
#include "hakd/ops.h"

/* The classifier's weight: the only parameter whose shape follows num_classes. Found by
 * comparing two tiny models of the family with 1 and 2 classes (names do not depend on the
 * width), so no family's naming is written down here. */
static int classifier_name(const char *model_name, char *out, size_t size) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.width = 0.0625f;
  o.num_classes = 1;
  hakd_model *one = NULL, *two = NULL;
  int rc = hakd_model_create(model_name, &o, &one);
  o.num_classes = 2;
  if (!rc) rc = hakd_model_create(model_name, &o, &two);
  int found = 0;
  if (!rc) {
    const hakd_params *a = hakd_model_params(one), *b = hakd_model_params(two);
    for (int i = 0; i < a->count && i < b->count && !found; i++)
      if (a->items[i]->ndim == 4 && a->items[i]->shape[0] == 1 && b->items[i]->shape[0] == 2) {
        snprintf(out, size, "%s", a->items[i]->name);
        found = 1;
      }
  }
  hakd_model_free(one);
  hakd_model_free(two);
  if (rc) return rc;
  return found ? 0 : hakd_error(HAKD_EINVAL, "%s: no classifier weight found", model_name);
}

int hakd_model_open(const char *path, const char *name, const hakd_model_options *opts, hakd_model **out) {
  if (!out) return hakd_error(HAKD_EINVAL, "hakd_model_open: out is NULL");
  *out = NULL;
  if (!path) return hakd_error(HAKD_EINVAL, "hakd_model_open: no path");
  hakd_model_options o;
  if (opts)
    o = *opts;
  else
    hakd_model_options_default(&o);
  char model_name[128];
  if (name) snprintf(model_name, sizeof model_name, "%s", name);
  if (!name || !opts) {
    /* what the file says about itself: the model name in the metadata, K in the classifier */
    hakd_st_file *f = NULL;
    int rc = hakd_st_open(path, &f);
    if (rc) {
      if (!name) hakd_error_prefix("%s: no model name given and the file cannot be read for it", path);
      if (!name) return rc;
    } else {
      const char *meta = hakd_st_metadata(f, "model");
      if (!name && !meta) {
        hakd_st_close(f);
        return hakd_error(HAKD_EINVAL, "%s: no model name given and none in the file's metadata", path);
      }
      if (!name) snprintf(model_name, sizeof model_name, "%s", meta);
      char classifier[256];
      if (!opts && !classifier_name(model_name, classifier, sizeof classifier)) {
        const hakd_st_tensor *t = hakd_st_find(f, classifier);
        if (t && t->ndim == 4 && t->shape[0] >= 1 && t->shape[0] <= 4096) o.num_classes = (int)t->shape[0];
      }
      hakd_st_close(f);
      hakd_error_clear();
    }
  }
  hakd_model *m = NULL;
  int rc = hakd_model_create(model_name, &o, &m);
  if (rc) return rc;
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  hakd_load_report report;
  rc = hakd_model_load(m, path, &lo, &report);
  if (rc) {
    hakd_model_free(m);
    return rc;
  }
  *out = m;
  return 0;
}

/* Runs the model on the image and leaves the logits upsampled to the image size in *up, a tensor
 * of ctx (1, K, height, width). */
static int predict_upsampled(hakd_model *m, hakd_ctx *ctx, const uint8_t *rgb, int height, int width, int stride,
                             hakd_tensor **up) {
  if (!m || !rgb) return hakd_error(HAKD_EINVAL, "hakd_model_predict: model or image is NULL");
  if (height < 1 || width < 1 || height > 65536 || width > 65536)
    return hakd_error(HAKD_EINVAL, "hakd_model_predict: image size %dx%d (HxW) outside 1..65536", height, width);
  if (stride < 3 * width)
    return hakd_error(HAKD_EINVAL, "hakd_model_predict: row stride %d is less than 3 x width (%d)", stride, 3 * width);
  int rc = hakd_model_check_input(m, 1, height, width, 0);
  if (rc) return rc;
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_tensor *x = hakd_tensor4(ctx, 1, 3, height, width);
  if (!x) return hakd_ctx_status(ctx) ? hakd_ctx_status(ctx) : hakd_error(HAKD_ENOMEM, "out of memory");
  float mean[3], std[3];
  hakd_model_mean_std(m, mean, std);
  int64_t plane = (int64_t)height * width;
  /* as the data pipeline normalises (hakd_eval_transform): (value - mean) / std per channel */
  for (int y = 0; y < height; y++) {
    const uint8_t *row = rgb + (int64_t)y * stride;
    for (int xx = 0; xx < width; xx++)
      for (int c = 0; c < 3; c++)
        hakd_f32(x)[c * plane + (int64_t)y * width + xx] = ((float)row[3 * xx + c] - mean[c]) / std[c];
  }
  hakd_model_output out;
  rc = hakd_model_forward(m, ctx, x, &out);
  if (rc) return rc;
  *up = hakd_resize_bilinear(ctx, out.logits, height, width, 0);
  return *up ? 0 : hakd_ctx_status(ctx);
}

int hakd_model_predict_logits(hakd_model *m, const uint8_t *rgb, int height, int width, int stride,
                              float *out_logits) {
  if (!out_logits) return hakd_error(HAKD_EINVAL, "hakd_model_predict_logits: out_logits is NULL");
  hakd_ctx *ctx = hakd_ctx_new();
  if (!ctx) return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd_tensor *up = NULL;
  int rc = predict_upsampled(m, ctx, rgb, height, width, stride, &up);
  if (!rc) memcpy(out_logits, up->data, (size_t)hakd_numel(up) * sizeof(float));
  hakd_ctx_free(ctx);
  return rc;
}

int hakd_model_predict(hakd_model *m, const uint8_t *rgb, int height, int width, int stride, uint8_t *out_mask) {
  if (!out_mask) return hakd_error(HAKD_EINVAL, "hakd_model_predict: out_mask is NULL");
  if (m && hakd_model_num_classes(m) > 256)
    return hakd_error(HAKD_EINVAL, "hakd_model_predict: %d classes do not fit a uint8 mask (use hakd_model_predict_logits)",
                      hakd_model_num_classes(m));
  hakd_ctx *ctx = hakd_ctx_new();
  if (!ctx) return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd_tensor *up = NULL;
  int rc = predict_upsampled(m, ctx, rgb, height, width, stride, &up);
  if (!rc) {
    /* the first maximum wins, as in hakd predict and torch.argmax */
    int64_t hw = (int64_t)height * width, K = up->shape[1];
    const float *l = hakd_f32(up);
    for (int64_t p = 0; p < hw; p++) {
      int best = 0;
      for (int64_t k = 1; k < K; k++)
        if (l[k * hw + p] > l[best * hw + p]) best = (int)k;
      out_mask[p] = (uint8_t)best;
    }
  }
  hakd_ctx_free(ctx);
  return rc;
}
