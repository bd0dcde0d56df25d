/* hakd predict: one image (or a .npy input tensor) through a model with imported weights. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/data.h"
#include "hakd/evaluate.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/ops.h"
#include "palette.h"

static int ends_with(const char *s, const char *suffix) {
  size_t n = strlen(s), k = strlen(suffix);
  return n >= k && !strcmp(s + n - k, suffix);
}

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd predict --weights FILE.safetensors|FILE.pth --input IN [--model NAME] [--num-classes K]\n"
          "                    [--save-logits OUT.npy] [--save-mask OUT.png] [--overlay OUT.png]\n"
          "                    [--width W] [--weights-prefix FROM=TO] [--norm imagenet|bgr-mean] [--threads N]\n"
          "                    [--precision fp32|bf16] [--aspp-dilations 12,24,36]\n"
          "The model and its options (--model, --num-classes, --width, --aspp-dilations) default to what\n"
          "FILE's metadata says (every file hakd writes carries them); a given one that contradicts it\n"
          "is refused. A file without them (.pth) needs --model; the class count is read from its\n"
          "classifier's shape and the width from its first tensor unless given.\n"
          "IN is a PNG/JPEG image (normalised with the model's mean/std, ImageNet RGB by default) or a\n"
          ".npy float32 array (1,3,H,W) used exactly as given. --save-logits writes float32 (1,K,h,w)\n"
          "logits at the model's native output resolution; --save-mask the argmax class-index PNG at\n"
          "input resolution (logits upsampled bilinearly, align_corners=False); --overlay a colour blend.\n");
}

int cmd_predict(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'},       {"num-classes", required_argument, 0, 'k'},
      {"weights", required_argument, 0, 'w'},     {"input", required_argument, 0, 'i'},
      {"save-logits", required_argument, 0, 'l'}, {"save-mask", required_argument, 0, 's'},
      {"overlay", required_argument, 0, 'o'},     {"width", required_argument, 0, 'W'},
      {"precision", required_argument, 0, 'P'},   {"aspp-dilations", required_argument, 0, 'A'},
      {"weights-prefix", required_argument, 0, 'p'}, {"norm", required_argument, 0, 'n'},
      {"threads", required_argument, 0, 't'},     {"help", no_argument, 0, 'h'},
      {0, 0, 0, 0}};
  const char *model_name = NULL, *weights = NULL, *input = NULL, *logits_out = NULL, *mask_out = NULL,
             *overlay_out = NULL, *prefix = NULL, *norm_name = "imagenet";
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = 0; /* 0: the weights file's (hakd_model_options_for_file) */
  mo.width = 0;
  int threads = 0, c;
  hakd_precision precision = HAKD_FP32;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'm': model_name = optarg; break;
      case 'k':
        if (command_int("--num-classes", optarg, 1, 4096, &mo.num_classes)) return 1;
        break;
      case 'w': weights = optarg; break;
      case 'i': input = optarg; break;
      case 'l': logits_out = optarg; break;
      case 's': mask_out = optarg; break;
      case 'o': overlay_out = optarg; break;
      case 'W':
        if (command_float("--width", optarg, 1e-3, 4.0, &mo.width)) return 1;
        break;
      case 'A':
        if (hakd_aspp_dilations_parse(optarg, mo.aspp_dilations)) return command_fail(NULL);
        break;
      case 'p': prefix = optarg; break;
      case 'n': norm_name = optarg; break;
      case 't':
        if (command_int("--threads", optarg, 0, 4096, &threads)) return 1;
        break;
      case 'P':
        if (hakd_precision_parse(optarg, &precision)) return command_fail(NULL);
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  if (optind < argc) return command_fail("unexpected argument '%s' (see hakd predict --help)", argv[optind]);
  if (!weights || !input) {
    usage(stderr);
    return command_fail("--weights and --input are required");
  }
  if (strcmp(norm_name, "imagenet") && strcmp(norm_name, "bgr-mean"))
    return command_fail("--norm '%s': use imagenet or bgr-mean", norm_name);
  if (command_output("--save-logits", logits_out) || command_output("--save-mask", mask_out) ||
      command_output("--overlay", overlay_out))
    return 1;
  hakd_set_threads(threads);
  hakd_model *m = NULL;
  hakd_ctx *ctx = NULL;
  hakd_image img = {0};
  hakd_npy arr = {0};
  float *x_data = NULL;
  int rc = 1, H = 0, W = 0;
  const char *written[3] = {NULL, NULL, NULL};
  int n_written = 0;
  char resolved[64];
  if (hakd_model_options_for_file(weights, model_name, &mo, resolved, sizeof resolved)) goto fail;
  if (hakd_model_create(resolved, &mo, &m)) goto fail;
  if (ends_with(input, ".npy")) {
    if (hakd_npy_read(input, &arr)) goto fail;
    char shape[128];
    command_npy_shape(&arr, shape, sizeof shape);
    /* The array goes into the network as it is: integer pixels (0-255, not normalised) would
     * run and give garbage, so only floats are taken. */
    if (arr.dtype != HAKD_NPY_F32 && arr.dtype != HAKD_NPY_F64) {
      hakd_error(HAKD_EFORMAT,
                 "%s: dtype %s, expected a float32 (1, 3, H, W) array already normalised for the model "
                 "(give an image as PNG/JPEG to have it normalised)",
                 input, hakd_npy_dtype_name(arr.dtype));
      goto fail;
    }
    if (arr.ndim != 4 || arr.shape[0] != 1 || arr.shape[1] != 3) {
      hakd_error(HAKD_ESHAPE, "%s: shape %s, expected (1, 3, H, W)", input, shape);
      goto fail;
    }
    if (arr.shape[2] > 65536 || arr.shape[3] > 65536) {
      hakd_error(HAKD_ESHAPE, "%s: shape %s is larger than 65536 pixels a side", input, shape);
      goto fail;
    }
    if (hakd_npy_to_f32(&arr, &x_data)) goto fail;
    int64_t n = hakd_npy_numel(&arr);
    for (int64_t i = 0; i < n; i++)
      if (!isfinite(x_data[i])) {
        hakd_error(HAKD_ENUMERIC, "%s: element %lld is %g; the input must be finite", input, (long long)i,
                   (double)x_data[i]);
        goto fail;
      }
    H = (int)arr.shape[2], W = (int)arr.shape[3];
  } else {
    if (hakd_image_read(input, &img)) goto fail;
    H = img.height, W = img.width;
    x_data = malloc((size_t)3 * H * W * sizeof(float));
    uint8_t *rgb = malloc((size_t)3 * H * W);
    if (!x_data || !rgb) {
      free(rgb);
      hakd_error(HAKD_ENOMEM, "out of memory");
      goto fail;
    }
    for (int64_t p = 0; p < (int64_t)H * W; p++)
      for (int ch = 0; ch < 3; ch++) rgb[3 * p + ch] = img.pixels[p * img.channels + (img.channels >= 3 ? ch : 0)];
    hakd_sample sample = {W, H, rgb, NULL};
    int trc = hakd_eval_transform(x_data, &sample, 0, 0, strcmp(norm_name, "bgr-mean") ? HAKD_NORM_IMAGENET : HAKD_NORM_BGR_MEAN);
    free(rgb);
    if (trc) goto fail;
  }
  /* before the weights load and the forward: a too small input names its size and the minimum */
  if (hakd_model_check_input(m, 1, H, W, 0)) {
    hakd_error_prefix("%s", input);
    goto fail;
  }
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  lo.key_map = prefix;
  hakd_load_report rep;
  if (hakd_model_load(m, weights, &lo, &rep)) goto fail;
  hakd_params_freeze(hakd_model_params(m), 1); /* inference only: packed weights kept (hakd/tensor.h) */
  fprintf(stderr, "loaded %s: %d tensors (%d ignored counters)\n", weights, rep.loaded, rep.ignored);
  if (rep.unused_aux)
    fprintf(stderr, "note: %d auxiliary-head tensor(s) unused (a training-only head this model is built without)\n",
            rep.unused_aux);
  ctx = hakd_ctx_new();
  if (!ctx) {
    hakd_error(HAKD_ENOMEM, "out of memory");
    goto fail;
  }
  hakd_ctx_set_precision(ctx, precision);
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){1, 3, H, W}, x_data);
  hakd_model_output out;
  if (hakd_model_forward(m, ctx, x, &out)) goto fail;
  if (logits_out) {
    if (hakd_npy_write(logits_out, HAKD_NPY_F32, 4, out.logits->shape, out.logits->data)) goto fail;
    written[n_written++] = logits_out;
  }
  if (mask_out || overlay_out) {
    hakd_tensor *up = hakd_resize_bilinear(ctx, out.logits, H, W, 0);
    if (!up) goto fail;
    int64_t hw = (int64_t)H * W, K = mo.num_classes;
    uint8_t *mask = malloc((size_t)hw), palette[256 * 3];
    int32_t *mask32 = malloc((size_t)hw * sizeof(int32_t));
    uint8_t *rgb = malloc((size_t)hw * 3), *blend = malloc((size_t)hw * 3);
    if (!mask || !mask32 || !rgb || !blend) {
      free(mask), free(mask32), free(rgb), free(blend);
      hakd_error(HAKD_ENOMEM, "out of memory");
      goto fail;
    }
    palette_voc(palette);
    for (int64_t p = 0; p < hw; p++) {
      int best = 0;
      for (int k = 1; k < K; k++)
        if (hakd_f32(up)[k * hw + p] > hakd_f32(up)[best * hw + p]) best = k;
      mask[p] = (uint8_t)best;
      mask32[p] = best;
      for (int ch = 0; ch < 3; ch++)
        rgb[3 * p + ch] = img.pixels ? img.pixels[p * img.channels + (img.channels >= 3 ? ch : 0)] : 128;
    }
    int wrc = mask_out ? hakd_png_write_palette(mask_out, W, H, mask, palette, K < 256 ? (int)K : 256) : 0;
    if (!wrc && mask_out) written[n_written++] = mask_out;
    if (!wrc && overlay_out) {
      hakd_overlay(blend, rgb, mask32, hw, palette, 256, 0.5f);
      wrc = hakd_png_write_rgb(overlay_out, W, H, blend);
    }
    free(mask), free(mask32), free(rgb), free(blend);
    if (wrc) goto fail;
  }
  printf("%s: logits (1, %d, %lld, %lld) at output stride %d\n", input, mo.num_classes, (long long)out.logits->shape[2],
         (long long)out.logits->shape[3], hakd_model_output_stride(m));
  rc = 0;
fail:
  if (rc) {
    command_fail(NULL);
    /* each file is written atomically; a failed run also leaves none of its other outputs */
    for (int i = 0; i < n_written; i++) remove(written[i]);
  }
  free(x_data);
  hakd_npy_free(&arr);
  hakd_image_free(&img);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
  return rc;
}

HAKD_COMMAND("predict", "run a model on one image or .npy input", cmd_predict)
