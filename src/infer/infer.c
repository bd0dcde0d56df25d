/* The embeddable inference API (include/hakd/infer.h): open a weights file as a model, segment
 * RGB images. Each predict makes its own step context, so concurrent calls on one model share
 * only the model's read-only parameters (the ops' scratch and caches are per thread). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/infer.h"
#include "hakd/io.h"
#include "hakd/ops.h"

int hakd_model_open(const char *path, const char *name, const hakd_model_options *opts, hakd_model **out) {
  if (!out) return hakd_error(HAKD_EINVAL, "hakd_model_open: out is NULL");
  *out = NULL;
  if (!path) return hakd_error(HAKD_EINVAL, "hakd_model_open: no path");
  hakd_model_options o;
  hakd_model_meta meta = {0};
  if (opts) {
    o = *opts;
  } else {
    /* everything as the file says; the training-only options too (a fine-tuning caller sees them) */
    int rc = hakd_model_meta_read(path, &meta);
    if (rc) return rc;
    o = meta.opts;
    o.num_classes = meta.have & HAKD_META_NUM_CLASSES ? o.num_classes : 0;
    o.width = meta.have & HAKD_META_WIDTH ? o.width : 0;
  }
  char model_name[64];
  int rc = hakd_model_options_for_file(path, name, &o, model_name, sizeof model_name);
  if (rc) return rc;
  hakd_model *m = NULL;
  rc = hakd_model_create(model_name, &o, &m);
  if (rc) return rc;
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  hakd_load_report report;
  rc = hakd_model_load(m, path, &lo, &report);
  if (!rc) hakd_params_freeze(hakd_model_params(m), 1); /* read only from here on (hakd/tensor.h) */
  if (rc) {
    hakd_model_free(m);
    if (!opts && !(meta.have & HAKD_META_WIDTH))
      hakd_error_prefix("%s carries no model options in its metadata (not written by hakd): pass them (opts: width, "
                        "aspp_dilations, deep_stem, aux_head)",
                        path);
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
