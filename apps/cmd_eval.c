/* hakd eval: the per-class IoU table of a model on a dataset split, with the protocol stated. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/evaluate.h"
#include "hakd/model.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd eval --weights FILE --dataset NAME --data-root DIR [--model NAME] [--split val]\n"
          "                 [--mode whole|slide --crop HxW --stride HxW] [--flip] [--scales 0.5,0.75,1.0,...]\n"
          "                 [--eval-scale HxW] [--save-pred DIR] [--width W] [--norm imagenet|bgr-mean]\n"
          "                 [--weights-prefix FROM=TO] [--skip-bad] [--threads N]\n"
          "                 [--precision fp32|bf16] [--aspp-dilations 12,24,36]\n"
          "The model and its options default to what FILE's metadata says (every file hakd writes\n"
          "carries them); a given one, or the dataset's class count, that contradicts it is refused. A\n"
          "file without them (.pth) needs --model; its width is read from its tensors' shapes unless given.\n");
}

static int parse_scales(const char *text, hakd_eval_options *o) {
  o->n_scales = 0;
  const char *p = text;
  while (*p) {
    char *end;
    float v = strtof(p, &end);
    if (end == p || v <= 0 || o->n_scales >= 8) return command_fail("--scales '%s': up to 8 positive numbers", text);
    o->scales[o->n_scales++] = v;
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return command_fail("--scales '%s': comma-separated numbers", text);
  }
  return o->n_scales ? 0 : command_fail("--scales is empty");
}

static int cmd_eval(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'},     {"weights", required_argument, 0, 'w'},
      {"dataset", required_argument, 0, 'd'},   {"data-root", required_argument, 0, 'r'},
      {"split", required_argument, 0, 'S'},     {"mode", required_argument, 0, 'M'},
      {"crop", required_argument, 0, 'c'},      {"stride", required_argument, 0, 's'},
      {"flip", no_argument, 0, 'f'},            {"scales", required_argument, 0, 'x'},
      {"eval-scale", required_argument, 0, 'e'}, {"save-pred", required_argument, 0, 'p'},
      {"width", required_argument, 0, 'W'},     {"norm", required_argument, 0, 'n'},
      {"weights-prefix", required_argument, 0, 'P'}, {"skip-bad", no_argument, 0, 'b'},
      {"threads", required_argument, 0, 't'},   {"help", no_argument, 0, 'h'},
      {"precision", required_argument, 0, 'R'}, {"aspp-dilations", required_argument, 0, 'A'},
      {0, 0, 0, 0}};
  const char *model = NULL, *weights = NULL, *dataset = NULL, *root = NULL, *split = "val", *prefix = NULL;
  hakd_eval_options o;
  hakd_eval_options_default(&o);
  float width = 0; /* 0: the weights file's */
  int threads = 0, c, have_crop = 0, have_stride = 0, aspp[3] = {0, 0, 0};
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'm': model = optarg; break;
      case 'w': weights = optarg; break;
      case 'd': dataset = optarg; break;
      case 'r': root = optarg; break;
      case 'S': split = optarg; break;
      case 'M':
        if (!strcmp(optarg, "whole")) o.mode = HAKD_EVAL_WHOLE;
        else if (!strcmp(optarg, "slide")) o.mode = HAKD_EVAL_SLIDE;
        else return command_fail("--mode '%s': use whole or slide", optarg);
        break;
      case 'c':
        if (command_size("--crop", optarg, &o.crop_h, &o.crop_w)) return 1;
        have_crop = 1;
        break;
      case 's':
        if (command_size("--stride", optarg, &o.stride_h, &o.stride_w)) return 1;
        have_stride = 1;
        break;
      case 'f': o.flip = 1; break;
      case 'x':
        if (parse_scales(optarg, &o)) return 1;
        break;
      case 'e':
        if (command_size("--eval-scale", optarg, &o.scale_h, &o.scale_w)) return 1;
        break;
      case 'p': o.save_pred_dir = optarg; break;
      case 'W':
        if (command_float("--width", optarg, 1e-3, 4.0, &width)) return 1;
        break;
      case 'A':
        if (hakd_aspp_dilations_parse(optarg, aspp)) return command_fail(NULL);
        break;
      case 'n':
        if (!strcmp(optarg, "imagenet")) o.norm = HAKD_NORM_IMAGENET;
        else if (!strcmp(optarg, "bgr-mean")) o.norm = HAKD_NORM_BGR_MEAN;
        else return command_fail("--norm '%s': use imagenet or bgr-mean", optarg);
        break;
      case 'P': prefix = optarg; break;
      case 'b': o.skip_bad = 1; break;
      case 't':
        if (command_int("--threads", optarg, 0, 4096, &threads)) return 1;
        break;
      case 'R':
        if (hakd_precision_parse(optarg, &o.precision)) return command_fail(NULL);
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  if (optind < argc) return command_fail("unexpected argument '%s' (see hakd eval --help)", argv[optind]);
  if (!weights || !dataset || !root) {
    usage(stderr);
    return command_fail("--weights, --dataset and --data-root are required");
  }
  if (o.mode == HAKD_EVAL_SLIDE) {
    if (!have_crop) return command_fail("--mode slide needs --crop HxW");
    if (!have_stride) o.stride_h = o.crop_h * 2 / 3, o.stride_w = o.crop_w * 2 / 3;
  }
  hakd_set_threads(threads);
  o.progress = stderr;
  o.warnings = stderr;
  hakd_dataset_config dc = {dataset, root, split, 0};
  hakd_dataset *ds = NULL;
  hakd_model *m = NULL;
  hakd_confusion cm = {0};
  hakd_metrics met = {0};
  int rc = 1;
  if (hakd_dataset_open(&ds, &dc)) goto done;
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = hakd_dataset_num_classes(ds);
  mo.width = width;
  memcpy(mo.aspp_dilations, aspp, sizeof aspp);
  /* the class count is the dataset's, not an option the user gave: say so when the file differs */
  hakd_model_meta meta;
  if (hakd_model_meta_read(weights, &meta)) goto done;
  if ((meta.have & HAKD_META_NUM_CLASSES) && meta.opts.num_classes != mo.num_classes) {
    hakd_error(HAKD_EINVAL, "%s: num_classes %d in the file's metadata, but dataset %s has %d classes: weights of another dataset?",
               weights, meta.opts.num_classes, hakd_dataset_name(ds), mo.num_classes);
    goto done;
  }
  char resolved[64];
  if (hakd_model_options_for_file(weights, model, &mo, resolved, sizeof resolved)) goto done;
  model = resolved;
  if (hakd_model_create(model, &mo, &m)) goto done;
  /* a sliding window or a resize bound below the model's minimum fails here, not at image 1 */
  if (o.mode == HAKD_EVAL_SLIDE && hakd_model_check_input(m, 1, o.crop_h, o.crop_w, 0)) {
    hakd_error_prefix("--crop %dx%d", o.crop_h, o.crop_w);
    goto done;
  }
  if (o.scale_h && hakd_model_check_input(m, 1, o.scale_h, o.scale_w, 0)) {
    hakd_error_prefix("--eval-scale %dx%d", o.scale_h, o.scale_w);
    goto done;
  }
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  lo.key_map = prefix;
  hakd_load_report rep;
  if (hakd_model_load(m, weights, &lo, &rep)) goto done;
  hakd_params_freeze(hakd_model_params(m), 1); /* inference only: packed weights kept (hakd/tensor.h) */
  if (rep.unused_aux)
    fprintf(stderr, "note: %s: %d auxiliary-head tensor(s) unused (a training-only head this model is built without)\n",
            weights, rep.unused_aux);
  if (hakd_confusion_init(&cm, mo.num_classes)) goto done;
  char protocol[256];
  hakd_eval_protocol(&o, protocol, sizeof protocol);
  printf("evaluating %s on %s/%s (%lld images)\nprotocol: %s\n", model, hakd_dataset_name(ds), split,
         (long long)hakd_dataset_count(ds), protocol);
  if (hakd_evaluate(m, ds, &o, &cm)) goto done;
  if (hakd_confusion_compute(&met, &cm)) goto done;
  hakd_metrics_print(stdout, &met, hakd_dataset_class_names(ds));
  if (o.save_pred_dir) printf("predictions: %s (class-index PNGs), %s/overlays\n", o.save_pred_dir, o.save_pred_dir);
  rc = 0;
done:
  if (rc) command_fail(NULL);
  hakd_metrics_free(&met);
  hakd_confusion_free(&cm);
  hakd_model_free(m);
  hakd_dataset_free(ds);
  return rc;
}

HAKD_COMMAND("eval", "evaluate a model on a dataset split (IoU table)", cmd_eval)
