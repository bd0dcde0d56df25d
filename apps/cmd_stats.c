/* hakd stats: the statistics of repeated runs. Reads one results.tsv per seed (written by
 * `hakd demo`: a header "method miou <class>...", then a row per method with mIoU and per-class
 * IoU in percent) and prints, for every method, mean +- std of mIoU over the seeds and its paired
 * per-seed differences against a baseline (labels only) and a reference (KD) with their 95%
 * t-intervals; then the classes where the teacher beats the labels-only student and what each
 * method did to the student there. bench/efficacy.sh runs the seeds and calls this. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/stats.h"

#define STATS_MAX_METHODS 64
#define STATS_MAX_CLASSES 256
#define STATS_MAX_SEEDS 256

typedef struct {
  char name[64];
  double miou[STATS_MAX_SEEDS];
  double *iou; /* [seed * n_classes + k] */
  int seen;    /* files that had this method */
} stats_method;

typedef struct {
  int n_classes, n_seeds, n_methods;
  char classes[STATS_MAX_CLASSES][64];
  stats_method methods[STATS_MAX_METHODS];
} stats_table;

static void stats_usage(FILE *out) {
  fprintf(out,
          "usage: hakd stats [--baseline none] [--reference kd] [--teacher teacher] RESULTS.tsv...\n"
          "\n"
          "One RESULTS.tsv per seed (hakd demo writes DIR/results.tsv; the same seed gives every\n"
          "method the same data, teacher and initial student, so the runs are paired). Prints per\n"
          "method: mean +- std of mIoU, the per-seed differences against --baseline and --reference\n"
          "with their mean and 95%% t-interval; and, for the classes where the teacher beats the\n"
          "baseline student on average, each method's mean IoU change there.\n");
}

static stats_method *find_method(stats_table *t, const char *name) {
  for (int i = 0; i < t->n_methods; i++)
    if (!strcmp(t->methods[i].name, name)) return &t->methods[i];
  return NULL;
}

/* Splits line at tabs in place (the newline removed); returns the number of fields. */
static int split_tabs(char *line, char **fields, int max) {
  line[strcspn(line, "\r\n")] = 0;
  int n = 0;
  for (char *p = line; n < max;) {
    fields[n++] = p;
    char *tab = strchr(p, '\t');
    if (!tab) break;
    *tab = 0;
    p = tab + 1;
  }
  return n;
}

static int parse_number(const char *text, double *out) {
  char *end;
  errno = 0;
  *out = strtod(text, &end);
  return end != text && !*end && !errno && isfinite(*out) ? 0 : -1;
}

static int read_results(stats_table *t, const char *path, int seed) {
  FILE *f = fopen(path, "r");
  if (!f) return command_fail("%s: cannot open: %s", path, strerror(errno));
  static char line[1 << 16];
  char *fields[STATS_MAX_CLASSES + 2];
  int row = 0, rc = 0;
  while (!rc && fgets(line, sizeof line, f)) {
    row++;
    if (!strchr(line, '\n') && !feof(f)) {
      rc = command_fail("%s:%d: line too long", path, row);
      break;
    }
    int n = split_tabs(line, fields, STATS_MAX_CLASSES + 2);
    if (row == 1) {
      if (n < 2 || strcmp(fields[0], "method") || strcmp(fields[1], "miou")) {
        rc = command_fail("%s: not a results table (expected a header 'method<TAB>miou<TAB>classes...')", path);
        break;
      }
      if (seed == 0) {
        t->n_classes = n - 2;
        for (int k = 0; k < t->n_classes; k++) snprintf(t->classes[k], sizeof t->classes[k], "%s", fields[k + 2]);
      } else {
        int same = n - 2 == t->n_classes;
        for (int k = 0; same && k < t->n_classes; k++) same = !strcmp(t->classes[k], fields[k + 2]);
        if (!same) rc = command_fail("%s: its classes differ from the first file's", path);
      }
      continue;
    }
    if (n == 1 && !fields[0][0]) continue; /* blank line */
    if (n != t->n_classes + 2) {
      rc = command_fail("%s:%d: %d fields, expected %d", path, row, n, t->n_classes + 2);
      break;
    }
    stats_method *m = find_method(t, fields[0]);
    if (!m) {
      if (seed > 0) {
        rc = command_fail("%s:%d: method '%s' is not in the first file", path, row, fields[0]);
        break;
      }
      if (t->n_methods == STATS_MAX_METHODS) {
        rc = command_fail("%s: more than %d methods", path, STATS_MAX_METHODS);
        break;
      }
      m = &t->methods[t->n_methods++];
      snprintf(m->name, sizeof m->name, "%s", fields[0]);
      m->iou = calloc((size_t)STATS_MAX_SEEDS * (size_t)(t->n_classes > 0 ? t->n_classes : 1), sizeof(double));
      if (!m->iou) {
        rc = command_fail("out of memory");
        break;
      }
    }
    if (m->seen != seed) {
      rc = command_fail("%s:%d: method '%s' appears twice", path, row, fields[0]);
      break;
    }
    if (parse_number(fields[1], &m->miou[seed])) {
      rc = command_fail("%s:%d: mIoU '%s' is not a number", path, row, fields[1]);
      break;
    }
    for (int k = 0; k < t->n_classes && !rc; k++) {
      double v;
      /* a class absent from labels and predictions is nan (mmseg) and stays nan */
      if (!strcmp(fields[k + 2], "nan")) v = NAN;
      else if (parse_number(fields[k + 2], &v)) rc = command_fail("%s:%d: IoU '%s' is not a number", path, row, fields[k + 2]);
      m->iou[seed * t->n_classes + k] = v;
    }
    m->seen++;
  }
  if (!rc && ferror(f)) rc = command_fail("%s: cannot read: %s", path, strerror(errno)); /* EISDIR for a folder */
  if (!rc && row == 0) rc = command_fail("%s: empty file", path);
  fclose(f);
  if (rc) return rc;
  for (int i = 0; i < t->n_methods; i++)
    if (t->methods[i].seen != seed + 1) return command_fail("%s: method '%s' is missing", path, t->methods[i].name);
  return 0;
}

static void print_interval(hakd_summary s) {
  if (s.n < 2) printf(" %+.2f (one seed) |", s.mean);
  else printf(" %+.2f [%+.2f, %+.2f] |", s.mean, s.ci_lo, s.ci_hi);
}

static int cmd_stats(int argc, char **argv) {
  static const struct option options[] = {{"baseline", required_argument, 0, 'b'},
                                          {"reference", required_argument, 0, 'r'},
                                          {"teacher", required_argument, 0, 't'},
                                          {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *baseline_name = "none", *reference_name = "kd", *teacher_name = "teacher";
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'b': baseline_name = optarg; break;
      case 'r': reference_name = optarg; break;
      case 't': teacher_name = optarg; break;
      case 'h': stats_usage(stdout); return 0;
      default: stats_usage(stderr); return 2;
    }
  int n = argc - optind;
  if (n < 1) {
    stats_usage(stderr);
    return 2;
  }
  if (n > STATS_MAX_SEEDS) return command_fail("at most %d result files", STATS_MAX_SEEDS);
  stats_table *t = calloc(1, sizeof *t);
  if (!t) return command_fail("out of memory");
  int rc = 0;
  for (int s = 0; s < n && !rc; s++, t->n_seeds++) rc = read_results(t, argv[optind + s], s);
  stats_method *base = rc ? NULL : find_method(t, baseline_name);
  if (!rc && !base) rc = command_fail("baseline method '%s' is not in the results", baseline_name);
  if (rc) goto done;
  stats_method *ref = find_method(t, reference_name), *teacher = find_method(t, teacher_name);
  int S = t->n_seeds;

  printf("%d seed%s (paired: the same seed gives every method the same data, teacher and initial student)\n\n", S,
         S == 1 ? "" : "s");
  if (teacher) {
    hakd_summary ts = hakd_summarize(teacher->miou, S), gap = hakd_summarize_paired(teacher->miou, base->miou, S);
    double min_gap = INFINITY;
    for (int s = 0; s < S; s++) min_gap = fmin(min_gap, teacher->miou[s] - base->miou[s]);
    printf("teacher %.2f +- %.2f mIoU; teacher - %s per seed:", ts.mean, ts.std, baseline_name);
    for (int s = 0; s < S; s++) printf(" %+.2f", teacher->miou[s] - base->miou[s]);
    printf(" (mean %+.2f, smallest %+.2f)\n\n", gap.mean, min_gap);
  }
  printf("| method | mIoU mean +- std | vs %s: mean diff [95%% CI] |", baseline_name);
  if (ref) printf(" vs %s: mean diff [95%% CI] |", reference_name);
  printf(" per-seed diff vs %s |\n|---|---|---|%s---|\n", baseline_name, ref ? "---|" : "");
  for (int i = 0; i < t->n_methods; i++) {
    stats_method *m = &t->methods[i];
    if (m == teacher) continue;
    hakd_summary ms = hakd_summarize(m->miou, S);
    printf("| %s | %.2f +- %.2f |", m->name, ms.mean, ms.std);
    if (m == base) printf(" |");
    else print_interval(hakd_summarize_paired(m->miou, base->miou, S));
    if (ref) {
      if (m == ref) printf(" |");
      else print_interval(hakd_summarize_paired(m->miou, ref->miou, S));
    }
    for (int s = 0; s < S; s++) printf(" %+.2f", m->miou[s] - base->miou[s]);
    printf(" |\n");
  }

  /* Complementarity: where the teacher knows more than the student learns from labels alone, did
   * distillation move the student there? Classes by mean teacher-minus-baseline IoU. */
  if (teacher && t->n_classes > 0) {
    int K = t->n_classes, chosen[STATS_MAX_CLASSES], n_chosen = 0;
    double gap[STATS_MAX_CLASSES];
    for (int k = 0; k < K; k++) {
      double tv[STATS_MAX_SEEDS], bv[STATS_MAX_SEEDS];
      int m = 0;
      for (int s = 0; s < S; s++)
        if (!isnan(teacher->iou[s * K + k]) && !isnan(base->iou[s * K + k]))
          tv[m] = teacher->iou[s * K + k], bv[m] = base->iou[s * K + k], m++;
      gap[k] = m ? hakd_summarize_paired(tv, bv, m).mean : NAN;
      if (gap[k] > 0) chosen[n_chosen++] = k;
    }
    printf("\nClasses where the teacher beats the %s student (mean IoU gap over seeds):", baseline_name);
    if (!n_chosen) printf(" none\n");
    for (int j = 0; j < n_chosen; j++) printf(" %s %+.2f%s", t->classes[chosen[j]], gap[chosen[j]], j + 1 < n_chosen ? "," : "\n");
    if (n_chosen) {
      printf("Mean IoU change of the student on those classes against %s (moved up on how many):\n\n| method |",
             baseline_name);
      for (int j = 0; j < n_chosen; j++) printf(" %s |", t->classes[chosen[j]]);
      printf(" classes moved up |\n|---|");
      for (int j = 0; j < n_chosen; j++) printf("---|");
      printf("---|\n");
      for (int i = 0; i < t->n_methods; i++) {
        stats_method *m = &t->methods[i];
        if (m == teacher || m == base) continue;
        int up = 0;
        printf("| %s |", m->name);
        for (int j = 0; j < n_chosen; j++) {
          int k = chosen[j], cnt = 0;
          double mv[STATS_MAX_SEEDS], bv[STATS_MAX_SEEDS];
          for (int s = 0; s < S; s++)
            if (!isnan(m->iou[s * K + k]) && !isnan(base->iou[s * K + k]))
              mv[cnt] = m->iou[s * K + k], bv[cnt] = base->iou[s * K + k], cnt++;
          double d = cnt ? hakd_summarize_paired(mv, bv, cnt).mean : NAN;
          up += d > 0;
          printf(" %+.2f |", d);
        }
        printf(" %d of %d |\n", up, n_chosen);
      }
    }
  }
done:
  for (int i = 0; i < t->n_methods; i++) free(t->methods[i].iou);
  free(t);
  return rc;
}

HAKD_COMMAND("stats", "mean, std and paired 95% intervals of per-seed results (hakd demo's results.tsv)", cmd_stats)
