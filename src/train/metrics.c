/* Confusion-matrix metrics (mmsegmentation's intersect_and_union / total_area_to_metrics). */
#include "hakd/metrics.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int hakd_confusion_init(hakd_confusion *cm, int num_classes) {
  cm->num_classes = 0;
  cm->counts = NULL;
  if (num_classes <= 0 || num_classes > 65536)
    return hakd_error(HAKD_EINVAL, "confusion matrix: %d classes", num_classes);
  cm->counts = calloc((size_t)num_classes * num_classes, sizeof *cm->counts);
  if (!cm->counts) return hakd_error(HAKD_ENOMEM, "confusion matrix: out of memory for %d classes", num_classes);
  cm->num_classes = num_classes;
  return 0;
}

void hakd_confusion_free(hakd_confusion *cm) {
  free(cm->counts);
  cm->counts = NULL;
  cm->num_classes = 0;
}

void hakd_confusion_reset(hakd_confusion *cm) {
  memset(cm->counts, 0, (size_t)cm->num_classes * cm->num_classes * sizeof *cm->counts);
}

int hakd_confusion_add(hakd_confusion *cm, const int32_t *pred, const int32_t *label, int64_t n, int ignore_index) {
  const int k = cm->num_classes;
  /* Validate first so that a bad input leaves the matrix untouched. */
  for (int64_t i = 0; i < n; i++) {
    if (label[i] == ignore_index) continue;
    if (label[i] < 0 || label[i] >= k)
      return hakd_error(HAKD_ERANGE, "confusion matrix: label %d at pixel %lld is not a class 0..%d or ignore %d",
                        (int)label[i], (long long)i, k - 1, ignore_index);
    if (pred[i] < 0 || pred[i] >= k)
      return hakd_error(HAKD_ERANGE, "confusion matrix: prediction %d at pixel %lld is not a class 0..%d", (int)pred[i],
                        (long long)i, k - 1);
  }
  for (int64_t i = 0; i < n; i++)
    if (label[i] != ignore_index) cm->counts[(size_t)label[i] * k + pred[i]]++;
  return 0;
}

int hakd_confusion_merge(hakd_confusion *dst, const hakd_confusion *src) {
  if (dst->num_classes != src->num_classes)
    return hakd_error(HAKD_ESHAPE, "confusion matrix: merging %d classes into %d", src->num_classes, dst->num_classes);
  for (size_t i = 0; i < (size_t)dst->num_classes * dst->num_classes; i++) dst->counts[i] += src->counts[i];
  return 0;
}

static double nanmean(const double *v, int n) {
  double sum = 0;
  int defined = 0;
  for (int i = 0; i < n; i++)
    if (!isnan(v[i])) {
      sum += v[i];
      defined++;
    }
  return defined ? sum / defined : NAN;
}

/* reference: mmseg.evaluation.metrics.IoUMetric (intersect_and_union summed over the set, then
 * total_area_to_metrics with nanmean). */
int hakd_confusion_compute(hakd_metrics *out, const hakd_confusion *cm) {
  const int k = cm->num_classes;
  memset(out, 0, sizeof *out);
  out->iou = malloc((size_t)k * sizeof *out->iou);
  out->acc = malloc((size_t)k * sizeof *out->acc);
  if (!out->iou || !out->acc) {
    hakd_metrics_free(out);
    return hakd_error(HAKD_ENOMEM, "metrics: out of memory");
  }
  out->num_classes = k;
  uint64_t correct = 0;
  for (int c = 0; c < k; c++) {
    uint64_t intersect = cm->counts[(size_t)c * k + c], area_label = 0, area_pred = 0;
    for (int o = 0; o < k; o++) {
      area_label += cm->counts[(size_t)c * k + o];
      area_pred += cm->counts[(size_t)o * k + c];
    }
    uint64_t area_union = area_label + area_pred - intersect;
    out->iou[c] = area_union ? (double)intersect / (double)area_union : NAN;
    out->acc[c] = area_label ? (double)intersect / (double)area_label : NAN;
    correct += intersect;
    out->labelled += area_label;
  }
  out->aacc = out->labelled ? (double)correct / (double)out->labelled : NAN;
  out->miou = nanmean(out->iou, k);
  out->macc = nanmean(out->acc, k);
  return 0;
}

void hakd_metrics_free(hakd_metrics *m) {
  free(m->iou);
  free(m->acc);
  m->iou = m->acc = NULL;
  m->num_classes = 0;
}

static void format_percent(char *buf, size_t size, double fraction) {
  if (isnan(fraction))
    snprintf(buf, size, "nan");
  else
    snprintf(buf, size, "%.2f", 100.0 * fraction);
}

/* PrettyTable style: every column as wide as its widest cell plus one blank each side,
 * cells centred. */
static void print_rule(FILE *out, const int *widths, int n) {
  for (int c = 0; c < n; c++) {
    fputc('+', out);
    for (int i = 0; i < widths[c] + 2; i++) fputc('-', out);
  }
  fputs("+\n", out);
}

static void print_row(FILE *out, const int *widths, int n, const char *const *cells) {
  for (int c = 0; c < n; c++) {
    int len = (int)strlen(cells[c]), left = (widths[c] - len) / 2, right = widths[c] - len - left;
    fprintf(out, "| %*s%s%*s ", left, "", cells[c], right, "");
  }
  fputs("|\n", out);
}

void hakd_metrics_print(FILE *out, const hakd_metrics *m, const char *const *class_names) {
  const int k = m->num_classes;
  int widths[3] = {5, 5, 5};
  char name[32], iou[16], acc[16];
  for (int c = 0; c < k; c++) {
    int len = class_names ? (int)strlen(class_names[c]) : snprintf(name, sizeof name, "%d", c);
    if (len > widths[0]) widths[0] = len;
    format_percent(iou, sizeof iou, m->iou[c]);
    format_percent(acc, sizeof acc, m->acc[c]);
    if ((int)strlen(iou) > widths[1]) widths[1] = (int)strlen(iou);
    if ((int)strlen(acc) > widths[2]) widths[2] = (int)strlen(acc);
  }
  const char *header[3] = {"Class", "IoU", "Acc"};
  fputs("per class results:\n", out);
  print_rule(out, widths, 3);
  print_row(out, widths, 3, header);
  print_rule(out, widths, 3);
  for (int c = 0; c < k; c++) {
    snprintf(name, sizeof name, "%d", c);
    format_percent(iou, sizeof iou, m->iou[c]);
    format_percent(acc, sizeof acc, m->acc[c]);
    const char *row[3] = {class_names ? class_names[c] : name, iou, acc};
    print_row(out, widths, 3, row);
  }
  print_rule(out, widths, 3);

  char aacc[16], miou[16], macc[16];
  format_percent(aacc, sizeof aacc, m->aacc);
  format_percent(miou, sizeof miou, m->miou);
  format_percent(macc, sizeof macc, m->macc);
  const char *summary_header[3] = {"aAcc", "mIoU", "mAcc"}, *summary[3] = {aacc, miou, macc};
  int summary_widths[3] = {5, 5, 5};
  for (int c = 0; c < 3; c++)
    if ((int)strlen(summary[c]) > summary_widths[c]) summary_widths[c] = (int)strlen(summary[c]);
  fputs("Summary:\n", out);
  print_rule(out, summary_widths, 3);
  print_row(out, summary_widths, 3, summary_header);
  print_rule(out, summary_widths, 3);
  print_row(out, summary_widths, 3, summary);
  print_rule(out, summary_widths, 3);
}
