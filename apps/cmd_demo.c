/* hakd demo: the whole story on the embedded synthetic dataset. A teacher of one architecture
 * family and a student of the other are trained on labels, then the student is distilled
 * with every method under the same trainer, and a results table is printed. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "command.h"
#include "hakd/config.h"
#include "hakd/data.h"
#include "hakd/train.h"

typedef struct {
  const char *label, *method;
  int no_kmm, no_kem;
} demo_method;

static const demo_method methods[] = {
    {"none (labels only)", "none", 0, 0}, {"KD", "kd", 0, 0},           {"CWD", "cwd", 0, 0},
    {"FitNet", "fitnet", 0, 0},           {"HeteroAKD", "heteroakd", 0, 0},
    {"HeteroAKD w/o KMM", "heteroakd", 1, 0}, {"HeteroAKD w/o KEM", "heteroakd", 0, 1},
};
#define N_METHODS (int)(sizeof methods / sizeof methods[0])

typedef struct {
  const char *out, *teacher, *student;
  float teacher_width, student_width;
  int64_t teacher_iters, student_iters;
  int size, n_train, n_val, batch;
  int64_t seed;
  int threads, quick;
  const char *precision;
} demo_options;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void base_config(hakd_config *c, const demo_options *o, const char *data_root) {
  hakd_config_default(c);
  snprintf(c->dataset, sizeof c->dataset, "generic");
  snprintf(c->data_root, sizeof c->data_root, "%s", data_root);
  snprintf(c->crop, sizeof c->crop, "%dx%d", o->size, o->size);
  c->batch = o->batch;
  c->workers = 1;
  c->seed = o->seed;
  c->threads = o->threads;
  snprintf(c->precision, sizeof c->precision, "%s", o->precision);
  c->ratio_min = 0.75f;
  c->ratio_max = 1.5f;
  c->log_every = 1000000; /* the demo prints one line per run; each run's log is in its work dir */
}

/* The teacher: a CNN trained with SGD like CIRKD's teachers. */
static void teacher_config(hakd_config *c, const demo_options *o, const char *data_root) {
  base_config(c, o, data_root);
  snprintf(c->model, sizeof c->model, "%s", o->teacher);
  c->width = o->teacher_width;
  c->iters = o->teacher_iters;
  snprintf(c->optimizer, sizeof c->optimizer, "sgd");
  c->lr = 0.05f;
  c->wd = 1e-4f;
  snprintf(c->work_dir, sizeof c->work_dir, "%s/teacher", o->out);
}

/* The student: a SegFormer trained with AdamW, as the SegFormer recipes do. */
static void student_config(hakd_config *c, const demo_options *o, const char *data_root, const demo_method *m) {
  base_config(c, o, data_root);
  snprintf(c->model, sizeof c->model, "%s", o->student);
  c->width = o->student_width;
  c->iters = o->student_iters;
  snprintf(c->optimizer, sizeof c->optimizer, "adamw");
  c->lr = 2e-3f;
  c->wd = 0.01f;
  snprintf(c->teacher, sizeof c->teacher, "%s", o->teacher);
  c->teacher_width = o->teacher_width;
  snprintf(c->teacher_weights, sizeof c->teacher_weights, "%s/teacher/best.safetensors", o->out);
  snprintf(c->method, sizeof c->method, "%s", m->method);
  c->no_kmm = m->no_kmm;
  c->no_kem = m->no_kem;
  snprintf(c->work_dir, sizeof c->work_dir, "%s/%s%s%s", o->out, m->method, m->no_kmm ? "_no_kmm" : "",
           m->no_kem ? "_no_kem" : "");
  if (!strcmp(m->method, "heteroakd") && !m->no_kem) {
    /* KEM weight maps beside image and label: does W highlight boundaries and rare classes? */
    snprintf(c->dump_kem, sizeof c->dump_kem, "%s/kem", c->work_dir);
    c->dump_every = c->iters / 4 > 0 ? c->iters / 4 : 1;
  }
}

static int run_one(const hakd_config *c, int distill, const char *what, hakd_train_result *r) {
  char log_path[HAKD_PATH_MAX + 32];
  mkdir(c->work_dir, 0755);
  snprintf(log_path, sizeof log_path, "%s/train.log", c->work_dir);
  FILE *log = fopen(log_path, "w");
  if (!log) return command_fail("%s: cannot write", log_path);
  printf("%-22s %s ... ", what, c->model);
  fflush(stdout);
  double t0 = now_s();
  int rc = hakd_train_run(c, distill, log, r);
  fclose(log);
  if (rc) {
    printf("failed\n");
    return command_fail("%s (log: %s)", hakd_error_message(), log_path);
  }
  printf("mIoU %5.2f  (%lld iters, %.0f s; log %s)\n", 100 * r->final_miou, (long long)r->iters_done, now_s() - t0,
         log_path);
  return 0;
}

static int cmd_demo(int argc, char **argv) {
  demo_options o = {"demo_out", "deeplabv3-r18-d8", "segformer-b0", 0.5f, 0.5f, 800, 400, 64, 400, 100, 8, 0, 0, 0, "fp32"};
  static const struct option options[] = {{"out", required_argument, 0, 'o'},    {"seed", required_argument, 0, 's'},
                                          {"threads", required_argument, 0, 't'}, {"quick", no_argument, 0, 'q'},
                                          {"teacher-iters", required_argument, 0, 'T'},
                                          {"student-iters", required_argument, 0, 'S'},
                                          {"precision", required_argument, 0, 'p'},
                                          {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'o': o.out = optarg; break;
      case 's': o.seed = atoll(optarg); break;
      case 't': o.threads = atoi(optarg); break;
      case 'q': o.quick = 1; break;
      case 'T': o.teacher_iters = atoll(optarg); break;
      case 'S': o.student_iters = atoll(optarg); break;
      case 'p': o.precision = optarg; break;
      case 'h':
        printf("usage: hakd demo [--out DIR] [--seed S] [--threads N] [--quick] [--precision fp32|bf16]\n"
               "                 [--teacher-iters N (800)] [--student-iters N (400)]\n"
               "Generates the synthetic dataset, trains a CNN teacher and a Transformer student,\n"
               "distills the student with none, KD, CWD, FitNet, HeteroAKD and its ablations,\n"
               "and prints the results table. --quick runs a few iterations (smoke test).\n");
        return 0;
      default: return 2;
    }
  if (o.quick) o.teacher_iters = 6, o.student_iters = 4, o.n_train = 16, o.n_val = 4, o.batch = 2;
  double t0 = now_s();
  mkdir(o.out, 0755);
  char data_root[HAKD_PATH_MAX];
  snprintf(data_root, sizeof data_root, "%s/synth", o.out);
  hakd_synth_config sc = {data_root, o.n_train, o.n_val, o.size, o.size, (uint64_t)o.seed};
  if (hakd_synth_write(&sc)) return command_fail(NULL);
  printf("hakd demo: synthetic dataset %s (%d train / %d val, %dx%d, %d classes: local texture classes,\n"
         "global-context classes, a rare class); teacher %s (CNN), student %s (Transformer)\n\n",
         data_root, o.n_train, o.n_val, o.size, o.size, HAKD_SYNTH_NUM_CLASSES, o.teacher, o.student);
  hakd_config cfg;
  hakd_train_result teacher, results[N_METHODS];
  teacher_config(&cfg, &o, data_root);
  if (run_one(&cfg, 0, "teacher (labels)", &teacher)) return 1;
  for (int i = 0; i < N_METHODS; i++) {
    student_config(&cfg, &o, data_root, &methods[i]);
    if (run_one(&cfg, 1, methods[i].label, &results[i])) return 1;
  }
  int K = teacher.num_classes;
  printf("\nResults on %s/val (mIoU %%, student %s width %g, %lld iterations, seed %lld)\n\n", data_root, o.student,
         (double)o.student_width, (long long)o.student_iters, (long long)o.seed);
  printf("| %-20s | %6s | %6s |", "method", "mIoU", "delta");
  for (int k = 0; k < K; k++) printf(" %-8.8s |", hakd_synth_class_name(k));
  printf("\n|%s|%s|%s|", "----------------------", "--------", "--------");
  for (int k = 0; k < K; k++) printf("----------|");
  printf("\n| %-20s | %6.2f | %6s |", "teacher (CNN)", 100 * teacher.final_miou, "");
  for (int k = 0; k < K; k++) printf(" %8.2f |", 100 * teacher.final_class_iou[k]);
  printf("\n");
  for (int i = 0; i < N_METHODS; i++) {
    printf("| %-20s | %6.2f | %+6.2f |", methods[i].label, 100 * results[i].final_miou,
           100 * (results[i].final_miou - results[0].final_miou));
    for (int k = 0; k < K; k++) {
      double v = results[i].final_class_iou[k];
      /* '*' marks a class where this student beats the teacher */
      printf(" %7.2f%s |", 100 * v, v > teacher.final_class_iou[k] ? "*" : " ");
    }
    printf("\n");
  }
  printf("\n* = the student beats the teacher on that class. Total time %.0f s.\n", now_s() - t0);
  /* The same numbers as tab-separated values, for aggregating seeds (bench/demo_seeds.sh). */
  char tsv[HAKD_PATH_MAX + 32];
  snprintf(tsv, sizeof tsv, "%s/results.tsv", o.out);
  FILE *f = fopen(tsv, "w");
  if (!f) return command_fail("%s: cannot write", tsv);
  fprintf(f, "method\tmiou");
  for (int k = 0; k < K; k++) fprintf(f, "\t%s", hakd_synth_class_name(k));
  fprintf(f, "\nteacher\t%.4f", 100 * teacher.final_miou);
  for (int k = 0; k < K; k++) fprintf(f, "\t%.4f", 100 * teacher.final_class_iou[k]);
  for (int i = 0; i < N_METHODS; i++) {
    fprintf(f, "\n%s\t%.4f", methods[i].label, 100 * results[i].final_miou);
    for (int k = 0; k < K; k++) fprintf(f, "\t%.4f", 100 * results[i].final_class_iou[k]);
  }
  fprintf(f, "\n");
  if (fclose(f)) return command_fail("%s: write failed", tsv);
  printf("Results also in %s\n", tsv);
  return 0;
}

HAKD_COMMAND("demo", "train a teacher and distill a student of the other family on synthetic data", cmd_demo)
