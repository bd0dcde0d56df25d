/* hakd miou: scores predicted class-index PNGs against a dataset split's labels. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "command.h"
#include "hakd/data.h"
#include "hakd/io.h"
#include "hakd/metrics.h"

static void miou_usage(FILE *out) {
  fprintf(out,
          "usage: hakd miou --dataset NAME --data-root DIR --pred-dir DIR [--split val] [--json OUT]\n"
          "                 [--aug] [--skip-bad]\n"
          "\n"
          "Scores predictions against ground truth as mmsegmentation does: one confusion matrix\n"
          "over the split, ignore (255) left out, per-class IoU and Acc, aAcc, mIoU and mAcc in\n"
          "percent; a class in neither labels nor predictions is nan and left out of the means.\n"
          "\n"
          "  --dataset NAME   cityscapes, voc, ade20k, camvid, generic or synth\n"
          "  --data-root DIR  dataset root (its on-disk layout, see docs)\n"
          "  --split NAME     split to score (default val)\n"
          "  --pred-dir DIR   one PNG per image, named as the image with the extension replaced\n"
          "                   by .png, holding class indices (gray or palette), label-sized\n"
          "  --json OUT       also write the numbers as JSON (nan as null)\n"
          "  --aug            VOC: the augmented label set (SegmentationClassAug)\n"
          "  --skip-bad       warn about a bad or missing file and go on, instead of failing\n"
          "  -h, --help       this text\n");
}

/* pred_dir/<image file name with its extension replaced by .png> */
static char *prediction_path(const char *pred_dir, const char *image_path) {
  const char *base = strrchr(image_path, '/');
  base = base ? base + 1 : image_path;
  const char *dot = strrchr(base, '.');
  int stem = dot && dot != base ? (int)(dot - base) : (int)strlen(base);
  size_t size = strlen(pred_dir) + (size_t)stem + 6;
  char *path = malloc(size);
  if (path) snprintf(path, size, "%s/%.*s.png", pred_dir, stem, base);
  return path;
}

/* Adds item i to the matrix; errors name the label or prediction file. */
static int score_item(hakd_confusion *cm, const hakd_dataset *ds, int64_t i, const char *pred_dir) {
  int label_w, label_h, pred_w, pred_h;
  int32_t *label = NULL, *pred = NULL;
  int status = hakd_dataset_load_label(ds, i, &label_w, &label_h, &label);
  if (status) return status;
  char *path = prediction_path(pred_dir, hakd_dataset_image_path(ds, i));
  if (!path) {
    free(label);
    return hakd_error(HAKD_ENOMEM, "out of memory");
  }
  FILE *probe = fopen(path, "rb");
  if (!probe) {
    status = hakd_error(HAKD_ENOTFOUND, "%s: prediction missing for image %s", path, hakd_dataset_image_path(ds, i));
  } else {
    fclose(probe);
    status = hakd_label_read(path, &pred_w, &pred_h, &pred);
  }
  if (!status && (pred_w != label_w || pred_h != label_h))
    status = hakd_error(HAKD_ESHAPE, "%s: prediction is %dx%d but label %s is %dx%d (WxH)", path, pred_w, pred_h,
                        hakd_dataset_label_path(ds, i), label_w, label_h);
  if (!status) {
    status = hakd_confusion_add(cm, pred, label, (int64_t)label_w * label_h, hakd_dataset_ignore_index(ds));
    if (status) hakd_error_prefix("%s", path);
  }
  free(label);
  free(pred);
  free(path);
  return status;
}

static void json_string(FILE *fp, const char *s) {
  fputc('"', fp);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(fp, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      fprintf(fp, "\\u%04x", (unsigned char)*s);
    else
      fputc(*s, fp);
  }
  fputc('"', fp);
}

/* Percent with 2 decimals, as in the table; nan as null. */
static void json_percent(FILE *fp, double fraction) {
  if (isnan(fraction))
    fputs("null", fp);
  else
    fprintf(fp, "%.2f", 100.0 * fraction);
}

/* Formats the JSON in memory and writes it atomically: a failure (disk full, folder gone) leaves
 * no truncated JSON for a script to read. */
static int write_json(const char *path, const hakd_dataset *ds, const hakd_metrics *m, int64_t scored,
                      int64_t skipped) {
  char *text = NULL;
  size_t text_size = 0;
  FILE *fp = open_memstream(&text, &text_size);
  if (!fp) return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  fputs("{\n  \"dataset\": ", fp);
  json_string(fp, hakd_dataset_name(ds));
  fputs(",\n  \"split\": ", fp);
  json_string(fp, hakd_dataset_split(ds));
  fprintf(fp, ",\n  \"images\": %lld,\n  \"skipped\": %lld,\n  \"aAcc\": ", (long long)scored, (long long)skipped);
  json_percent(fp, m->aacc);
  fputs(",\n  \"mIoU\": ", fp);
  json_percent(fp, m->miou);
  fputs(",\n  \"mAcc\": ", fp);
  json_percent(fp, m->macc);
  fputs(",\n  \"classes\": [\n", fp);
  for (int k = 0; k < m->num_classes; k++) {
    fputs("    {\"name\": ", fp);
    json_string(fp, hakd_dataset_class_name(ds, k));
    fputs(", \"IoU\": ", fp);
    json_percent(fp, m->iou[k]);
    fputs(", \"Acc\": ", fp);
    json_percent(fp, m->acc[k]);
    fprintf(fp, "}%s\n", k + 1 < m->num_classes ? "," : "");
  }
  fputs("  ]\n}\n", fp);
  int status = fclose(fp) != 0 ? hakd_error(HAKD_ENOMEM, "%s: out of memory", path)
                                : hakd_file_write_atomic(path, text, text_size);
  free(text);
  return status;
}

static int cmd_miou(int argc, char **argv) {
  static const struct option options[] = {{"dataset", required_argument, NULL, 'd'},
                                          {"data-root", required_argument, NULL, 'r'},
                                          {"split", required_argument, NULL, 's'},
                                          {"pred-dir", required_argument, NULL, 'p'},
                                          {"json", required_argument, NULL, 'j'},
                                          {"aug", no_argument, NULL, 'a'},
                                          {"skip-bad", no_argument, NULL, 'b'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  hakd_dataset_config config = {.split = "val"};
  const char *pred_dir = NULL, *json_path = NULL;
  int skip_bad = 0, opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'd': config.name = optarg; break;
      case 'r': config.root = optarg; break;
      case 's': config.split = optarg; break;
      case 'p': pred_dir = optarg; break;
      case 'j': json_path = optarg; break;
      case 'a': config.voc_aug = 1; break;
      case 'b': skip_bad = 1; break;
      case 'h': miou_usage(stdout); return 0;
      default: miou_usage(stderr); return 2;
    }
  }
  if (optind < argc) return command_fail("miou: unexpected argument '%s' (see hakd miou --help)", argv[optind]);
  if (!config.name || !config.root || !pred_dir)
    return command_fail("miou: --dataset, --data-root and --pred-dir are required (see hakd miou --help)");
  struct stat st;
  if (stat(pred_dir, &st) != 0) return command_fail("--pred-dir %s: %s", pred_dir, strerror(errno));
  if (!S_ISDIR(st.st_mode)) return command_fail("--pred-dir %s: not a folder", pred_dir);
  if (command_output("--json", json_path)) return 1;

  hakd_dataset *ds;
  if (hakd_dataset_open(&ds, &config)) return command_fail(NULL);
  hakd_confusion cm;
  if (hakd_confusion_init(&cm, hakd_dataset_num_classes(ds))) {
    hakd_dataset_free(ds);
    return command_fail(NULL);
  }
  int64_t n = hakd_dataset_count(ds), scored = 0, skipped = 0;
  int rc = 0;
  for (int64_t i = 0; i < n; i++) {
    if (score_item(&cm, ds, i, pred_dir) == 0) {
      scored++;
    } else if (skip_bad) {
      fprintf(stderr, "hakd: warning: skipping: %s\n", hakd_error_message());
      skipped++;
    } else {
      rc = command_fail(NULL);
      break;
    }
  }
  if (rc == 0 && scored == 0) rc = command_fail("miou: no image of %s/%s could be scored", config.root, config.split);
  hakd_metrics metrics = {0};
  if (rc == 0 && hakd_confusion_compute(&metrics, &cm)) rc = command_fail(NULL);
  if (rc == 0) {
    printf("miou: %s split %s: %lld images scored", hakd_dataset_name(ds), hakd_dataset_split(ds), (long long)scored);
    if (skipped) printf(", %lld bad files skipped", (long long)skipped);
    printf("\n");
    hakd_metrics_print(stdout, &metrics, hakd_dataset_class_names(ds));
    if (json_path && write_json(json_path, ds, &metrics, scored, skipped)) rc = command_fail(NULL);
  }
  hakd_metrics_free(&metrics);
  hakd_confusion_free(&cm);
  hakd_dataset_free(ds);
  return rc;
}

HAKD_COMMAND("miou", "score predicted label PNGs against a dataset split (mIoU)", cmd_miou)
