/* hakd demo: the whole story on the embedded synthetic dataset. A teacher of one architecture
 * family and a student of the other are trained on labels, then the student is distilled
 * with every method under the same trainer, and a results table is printed with the teacher's
 * lead over the labels-only student and what each method did where the teacher is better. */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "command.h"
#include "hakd/tensor.h"

/* Iterations of each direction (measured; see the README's demo section). */
#define DEMO_C2T_TEACHER_ITERS 1500
#define DEMO_C2T_STUDENT_ITERS 400
#define DEMO_T2C_TEACHER_ITERS 1500
#define DEMO_T2C_STUDENT_ITERS 400
#include "hakd/config.h"
#include "hakd/data.h"
#include "hakd/train.h"

typedef struct {
  const char *id, *label, *method;
  int no_kmm, no_kem;
} demo_method;

static const demo_method methods[] = {
    {"none", "none (labels only)", "none", 0, 0},
    {"kd", "KD", "kd", 0, 0},
    {"cwd", "CWD", "cwd", 0, 0},
    {"fitnet", "FitNet", "fitnet", 0, 0},
    {"heteroakd", "HeteroAKD", "heteroakd", 0, 0},
    {"heteroakd_no_kmm", "HeteroAKD w/o KMM", "heteroakd", 1, 0},
    {"heteroakd_no_kem", "HeteroAKD w/o KEM", "heteroakd", 0, 1},
};
#define N_METHODS (int)(sizeof methods / sizeof methods[0])

/* One direction of the demo: a teacher of one family, a student of the other. The settings were
 * chosen by measurement (README, "The demo"): the teacher must beat the labels-only student by
 * >= 5 mIoU on every seed, so that distillation has something to transfer, and the default
 * direction must run within 15 minutes on 2 cores from a fresh clone. */
typedef struct {
  const char *name, *teacher, *student;
  float teacher_width, student_width;
  int64_t teacher_iters, student_iters;
} demo_direction;

static const demo_direction directions[] = {
    {"cnn-to-transformer", "deeplabv3-r18-d8", "segformer-b0", 0.5f, 0.5f, DEMO_C2T_TEACHER_ITERS, DEMO_C2T_STUDENT_ITERS},
    {"transformer-to-cnn", "segformer-b0", "deeplabv3-r18-d8", 1.0f, 0.25f, DEMO_T2C_TEACHER_ITERS, DEMO_T2C_STUDENT_ITERS},
};

typedef struct {
  const char *out;
  demo_direction dir;
  int size, n_train, n_val, batch;
  int64_t seed;
  int threads, quick;
  const char *precision;
  int run_method[N_METHODS];
  const char *sets[32]; /* KEY=VALUE for every distillation run (sweeps) */
  int n_sets;
} demo_options;

/* results.tsv rows: those of earlier runs in the same DIR with the same teacher and student
 * settings are kept, so a sweep (--methods heteroakd --set ...) adds rows beside the baseline's
 * instead of training the teacher and the labels-only student again. */
typedef struct {
  char id[160];
  double miou, iou[256];
} demo_row;

typedef struct {
  demo_row rows[64];
  int n;
} demo_rows;

static demo_row *demo_row_find(demo_rows *r, const char *id, int create) {
  for (int i = 0; i < r->n; i++)
    if (!strcmp(r->rows[i].id, id)) return &r->rows[i];
  if (!create || r->n == (int)(sizeof r->rows / sizeof r->rows[0])) return NULL;
  demo_row *row = &r->rows[r->n++];
  memset(row, 0, sizeof *row);
  snprintf(row->id, sizeof row->id, "%s", id);
  return row;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int is_transformer(const char *model) { return !strncmp(model, "segformer", 9); }

/* ASPP rates for the demo's maps: a stride-8 CNN sees an 8x8 map at 64 px, where torchvision's
 * 12/24/36 read only padding (every tap but the centre). 1/2/3 keep every tap inside the map and
 * were measured against 2/4/6 (README). Transformers have no ASPP; the value is unused there. */
static const char *demo_aspp_rates(const demo_options *o) { return o->size <= 128 ? "1,2,3" : "12,24,36"; }

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

/* The students' recipe is their family's: CNNs with SGD as CIRKD trains them, Transformers with
 * AdamW as the SegFormer recipes do. Teachers of both families train with AdamW: a CNN teacher with
 * SGD 0.05 reached 37.0 mIoU in 800 iterations, with AdamW 1e-3 62.6 in 1,500 (seed 0, README). */
static void teacher_recipe(hakd_config *c, const char *model) {
  snprintf(c->optimizer, sizeof c->optimizer, "adamw");
  c->lr = is_transformer(model) ? 2e-3f : 1e-3f;
  c->wd = 0.01f;
}

static void family_recipe(hakd_config *c, const char *model) {
  if (is_transformer(model)) {
    snprintf(c->optimizer, sizeof c->optimizer, "adamw");
    c->lr = 2e-3f;
    c->wd = 0.01f;
  } else {
    snprintf(c->optimizer, sizeof c->optimizer, "sgd");
    c->lr = 0.05f;
    c->wd = 1e-4f;
  }
}

/* A run's id: the method's, with the --set values of a sweep appended ("heteroakd[T=2]"); the
 * labels-only baseline takes no distillation settings and keeps its plain id. */
static void demo_run_id(char *id, size_t size, const demo_options *o, const demo_method *m) {
  int n = snprintf(id, size, "%s", m->id);
  if (!strcmp(m->method, "none") || !o->n_sets) return;
  for (int i = 0; i < o->n_sets && n < (int)size; i++) n += snprintf(id + n, size - (size_t)n, "%c%s", i ? ',' : '[', o->sets[i]);
  if (n < (int)size) snprintf(id + n, size - (size_t)n, "]");
}

static void teacher_config(hakd_config *c, const demo_options *o, const char *data_root) {
  base_config(c, o, data_root);
  snprintf(c->model, sizeof c->model, "%s", o->dir.teacher);
  c->width = o->dir.teacher_width;
  c->iters = o->dir.teacher_iters;
  teacher_recipe(c, o->dir.teacher);
  snprintf(c->aspp_dilations, sizeof c->aspp_dilations, "%s", demo_aspp_rates(o));
  snprintf(c->work_dir, sizeof c->work_dir, "%s/teacher", o->out);
}

/* One --set KEY=VALUE onto a config; prints the error and returns 1 when the key or value is bad. */
static int apply_set(hakd_config *c, const char *kv) {
  char key[64];
  const char *eq = strchr(kv, '=');
  snprintf(key, sizeof key, "%.*s", (int)(eq - kv), kv);
  return hakd_config_set(c, key, eq + 1) ? command_fail("--set %s: %s", kv, hakd_error_message()) : 0;
}

static int student_config(hakd_config *c, const demo_options *o, const char *data_root, const demo_method *m) {
  base_config(c, o, data_root);
  snprintf(c->model, sizeof c->model, "%s", o->dir.student);
  c->width = o->dir.student_width;
  c->iters = o->dir.student_iters;
  family_recipe(c, o->dir.student);
  snprintf(c->aspp_dilations, sizeof c->aspp_dilations, "%s", demo_aspp_rates(o));
  snprintf(c->teacher, sizeof c->teacher, "%s", o->dir.teacher);
  c->teacher_width = o->dir.teacher_width;
  snprintf(c->teacher_aspp_dilations, sizeof c->teacher_aspp_dilations, "%s", demo_aspp_rates(o));
  snprintf(c->teacher_weights, sizeof c->teacher_weights, "%s/teacher/best.safetensors", o->out);
  snprintf(c->method, sizeof c->method, "%s", m->method);
  c->no_kmm = m->no_kmm;
  c->no_kem = m->no_kem;
  char id[160];
  demo_run_id(id, sizeof id, o, m);
  snprintf(c->work_dir, sizeof c->work_dir, "%s/%s", o->out, id);
  if (!strcmp(m->method, "heteroakd") && !m->no_kem) {
    /* KEM weight maps beside image and label: does W highlight boundaries and rare classes? */
    snprintf(c->dump_kem, sizeof c->dump_kem, "%s/kem", c->work_dir);
    c->dump_every = c->iters / 4 > 0 ? c->iters / 4 : 1;
  }
  for (int i = 0; i < o->n_sets; i++)
    if (apply_set(c, o->sets[i])) return 1;
  return 0;
}

/* The teacher cache: demo_out/teacher is reused by a later run only when it was trained with the
 * same settings, written as text beside it once the teacher run has finished (an interrupted
 * teacher run leaves no cache file and is trained again). Threads are not part of it: they change
 * the last bits of sums, not the recipe. */
static void teacher_cache_key(char *key, size_t size, const hakd_config *c, const demo_options *o) {
  snprintf(key, size,
           "model = %s\nwidth = %g\naspp_dilations = %s\niters = %lld\noptimizer = %s\nlr = %g\nwd = %g\n"
           "batch = %d\ncrop = %s\nratio = %g..%g\nseed = %lld\nprecision = %s\n"
           "data = synth %dx%d, %d train, %d val, %d classes\n",
           c->model, (double)c->width, c->aspp_dilations, (long long)c->iters, c->optimizer, (double)c->lr,
           (double)c->wd, c->batch, c->crop, (double)c->ratio_min, (double)c->ratio_max, (long long)c->seed,
           c->precision, o->size, o->size, o->n_train, o->n_val, HAKD_SYNTH_NUM_CLASSES);
}

/* 1 when OUT/teacher holds a finished teacher made with `key`; else 0, saying why when a cache
 * with other settings is there (it is not used, and the new teacher replaces it). */
static int teacher_cache_valid(const char *out, const char *key) {
  char path[HAKD_PATH_MAX + 64], weights[HAKD_PATH_MAX + 64], have[2048];
  snprintf(path, sizeof path, "%s/teacher/demo_cache.txt", out);
  snprintf(weights, sizeof weights, "%s/teacher/best.safetensors", out);
  FILE *f = fopen(path, "r");
  if (!f) return 0;
  size_t n = fread(have, 1, sizeof have - 1, f);
  have[n] = 0;
  fclose(f);
  struct stat st;
  if (!strcmp(have, key) && !stat(weights, &st)) return 1;
  /* name the first setting that differs */
  const char *a = have, *b = key;
  while (*a && *b) {
    size_t la = strcspn(a, "\n"), lb = strcspn(b, "\n");
    if (la != lb || strncmp(a, b, la)) {
      printf("teacher cache %s was made with other settings (%.*s, now %.*s): not used, training the teacher\n",
             path, (int)la, a, (int)lb, b);
      return 0;
    }
    a += la + (a[la] != 0);
    b += lb + (b[lb] != 0);
  }
  if (strcmp(have, key)) printf("teacher cache %s does not match this run's settings: not used\n", path);
  else printf("teacher cache %s has no %s: training the teacher\n", path, weights);
  return 0;
}

/* Writes `text` to `path` through a temporary file and a rename: never half a file. */
static int write_text_atomic(const char *path, const char *text) {
  char tmp[HAKD_PATH_MAX + 80];
  snprintf(tmp, sizeof tmp, "%s.tmp", path);
  FILE *f = fopen(tmp, "w");
  if (!f) return command_fail("%s: cannot write", tmp);
  fputs(text, f);
  if (fclose(f) || rename(tmp, path)) {
    unlink(tmp);
    return command_fail("%s: write failed", path);
  }
  return 0;
}

/* Loads DIR/results.tsv when DIR/results.key equals `key` (the same teacher and student settings). */
static void demo_rows_load(demo_rows *r, const char *out, const char *key, int K) {
  char path[HAKD_PATH_MAX + 32], have[4096], line[8192];
  r->n = 0;
  snprintf(path, sizeof path, "%s/results.key", out);
  FILE *f = fopen(path, "r");
  if (!f) return;
  size_t n = fread(have, 1, sizeof have - 1, f);
  have[n] = 0;
  fclose(f);
  if (strcmp(have, key)) return;
  snprintf(path, sizeof path, "%s/results.tsv", out);
  if (!(f = fopen(path, "r"))) return;
  int row = 0;
  while (fgets(line, sizeof line, f)) {
    if (row++ == 0) continue; /* header */
    line[strcspn(line, "\r\n")] = 0;
    char *tab = strchr(line, '\t');
    if (!tab) continue;
    *tab = 0;
    if (!strcmp(line, "teacher")) continue;
    demo_row *d = demo_row_find(r, line, 1);
    if (!d) break;
    char *p = tab + 1, *end;
    d->miou = strtod(p, &end);
    for (int k = 0; k < K && *end == '\t'; k++) d->iou[k] = strtod(end + 1, &end);
  }
  fclose(f);
}

static int teacher_cache_write(const char *out, const char *key) {
  char path[HAKD_PATH_MAX + 64];
  snprintf(path, sizeof path, "%s/teacher/demo_cache.txt", out);
  return write_text_atomic(path, key);
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

static int parse_methods(const char *text, demo_options *o) {
  memset(o->run_method, 0, sizeof o->run_method);
  const char *p = text;
  while (*p) {
    size_t n = strcspn(p, ",");
    int found = 0;
    for (int i = 0; i < N_METHODS; i++)
      if (strlen(methods[i].id) == n && !strncmp(methods[i].id, p, n)) o->run_method[i] = found = 1;
    if (!found) {
      fprintf(stderr, "hakd: --methods: unknown method '%.*s'; use", (int)n, p);
      for (int i = 0; i < N_METHODS; i++) fprintf(stderr, "%s %s", i ? "," : "", methods[i].id);
      fprintf(stderr, "\n");
      return 2;
    }
    p += n + (p[n] == ',');
  }
  return 0;
}

static void demo_usage(FILE *out) {
  fprintf(out,
          "usage: hakd demo [--direction cnn-to-transformer|transformer-to-cnn] [--out DIR] [--seed S]\n"
          "                 [--threads N] [--quick] [--precision fp32|bf16] [--methods none,kd,...]\n"
          "                 [--teacher-iters N] [--student-iters N] [--set KEY=VALUE ...]\n"
          "Generates the synthetic dataset, trains a teacher of one family (or reuses the one cached in\n"
          "DIR/teacher when it was made with the same settings), trains the student of the other family\n"
          "on labels only and distilled with each method, and prints the results table: mIoU and\n"
          "per-class IoU, the teacher's lead over the labels-only student, and whether distillation moved\n"
          "the student on the classes where the teacher is better.\n"
          "  --direction   cnn-to-transformer (default: DeepLabV3-R18-D8 width 0.5 -> SegFormer-B0 width 0.5)\n"
          "                transformer-to-cnn (SegFormer-B0 -> DeepLabV3-R18-D8 width 0.25)\n"
          "  --methods     subset of none,kd,cwd,fitnet,heteroakd,heteroakd_no_kmm,heteroakd_no_kem (all)\n"
          "  --set K=V     a config key for every distillation run (e.g. --set lambda_hakd=0.5), for sweeps\n"
          "  --quick       a few iterations (smoke test)\n"
          "DIR/results.tsv holds the numbers (one row per method id); `hakd stats` and\n"
          "bench/efficacy.sh combine several seeds.\n");
}

static int cmd_demo(int argc, char **argv) {
  demo_options o = {"demo_out", directions[0], 64, 400, 100, 8, 0, 0, 0, "fp32", {0}, {0}, 0};
  for (int i = 0; i < N_METHODS; i++) o.run_method[i] = 1;
  int64_t teacher_iters = -1, student_iters = -1;
  static const struct option options[] = {{"out", required_argument, 0, 'o'},       {"seed", required_argument, 0, 's'},
                                          {"threads", required_argument, 0, 't'},   {"quick", no_argument, 0, 'q'},
                                          {"teacher-iters", required_argument, 0, 'T'},
                                          {"student-iters", required_argument, 0, 'S'},
                                          {"precision", required_argument, 0, 'p'}, {"direction", required_argument, 0, 'd'},
                                          {"methods", required_argument, 0, 'm'},   {"set", required_argument, 0, 'x'},
                                          {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  int c, rc;
  char *end;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'o': o.out = optarg; break;
      case 's':
        o.seed = strtoll(optarg, &end, 10);
        if (end == optarg || *end || o.seed < 0) return command_fail("--seed '%s': a non-negative integer", optarg), 2;
        break;
      case 't':
        o.threads = (int)strtol(optarg, &end, 10);
        if (end == optarg || *end || o.threads < 0) return command_fail("--threads '%s': a non-negative integer", optarg), 2;
        break;
      case 'q': o.quick = 1; break;
      case 'T':
      case 'S': {
        long long v = strtoll(optarg, &end, 10);
        if (end == optarg || *end || v < 1)
          return command_fail("--%s-iters '%s': a positive integer", c == 'T' ? "teacher" : "student", optarg), 2;
        *(c == 'T' ? &teacher_iters : &student_iters) = v;
        break;
      }
      case 'p': o.precision = optarg; break;
      case 'd': {
        int found = 0;
        for (size_t i = 0; i < sizeof directions / sizeof directions[0]; i++)
          if (!strcmp(optarg, directions[i].name)) o.dir = directions[i], found = 1;
        if (!found) return command_fail("--direction '%s': use cnn-to-transformer or transformer-to-cnn", optarg), 2;
        break;
      }
      case 'm':
        if ((rc = parse_methods(optarg, &o))) return rc;
        break;
      case 'x':
        if (o.n_sets == (int)(sizeof o.sets / sizeof o.sets[0])) return command_fail("--set: at most 32"), 2;
        if (!strchr(optarg, '=') || *optarg == '=') return command_fail("--set '%s': expected KEY=VALUE", optarg), 2;
        o.sets[o.n_sets++] = optarg;
        break;
      case 'h': demo_usage(stdout); return 0;
      default: demo_usage(stderr); return 2;
    }
  if (optind < argc) return command_fail("demo: unexpected argument '%s'", argv[optind]), 2;
  if (o.quick) o.dir.teacher_iters = 6, o.dir.student_iters = 4, o.n_train = 16, o.n_val = 4, o.batch = 2;
  if (teacher_iters > 0) o.dir.teacher_iters = teacher_iters;
  if (student_iters > 0) o.dir.student_iters = student_iters;
  hakd_precision precision;
  if (hakd_precision_parse(o.precision, &precision)) return command_fail(NULL);
  /* --set keys and values are checked before the teacher's minutes of training, not after */
  for (int i = 0; i < o.n_sets; i++) {
    hakd_config probe;
    hakd_config_default(&probe);
    if (apply_set(&probe, o.sets[i])) return 2;
  }
  double t0 = now_s();
  mkdir(o.out, 0755);
  char data_root[HAKD_PATH_MAX];
  snprintf(data_root, sizeof data_root, "%s/synth", o.out);
  hakd_synth_config sc = {data_root, o.n_train, o.n_val, o.size, o.size, (uint64_t)o.seed};
  if (hakd_synth_write(&sc)) return command_fail(NULL);
  printf("hakd demo (%s, seed %lld): synthetic dataset %s (%d train / %d val, %dx%d, %d classes: local\n"
         "texture classes, global-context classes, a rare class); teacher %s width %g (%s, %lld iterations),\n"
         "student %s width %g (%s, %lld iterations)\n\n",
         o.dir.name, (long long)o.seed, data_root, o.n_train, o.n_val, o.size, o.size, HAKD_SYNTH_NUM_CLASSES,
         o.dir.teacher, (double)o.dir.teacher_width, is_transformer(o.dir.teacher) ? "Transformer" : "CNN",
         (long long)o.dir.teacher_iters, o.dir.student, (double)o.dir.student_width,
         is_transformer(o.dir.student) ? "Transformer" : "CNN", (long long)o.dir.student_iters);
  hakd_config cfg;
  static hakd_train_result teacher, results[N_METHODS];
  teacher_config(&cfg, &o, data_root);
  char key[2048];
  teacher_cache_key(key, sizeof key, &cfg, &o);
  if (teacher_cache_valid(o.out, key)) {
    printf("%-22s %s ... reused from %s/teacher (same settings)\n", "teacher (labels)", cfg.model, o.out);
  } else {
    char stale[HAKD_PATH_MAX + 64];
    snprintf(stale, sizeof stale, "%s/teacher/demo_cache.txt", o.out);
    unlink(stale);
    if (run_one(&cfg, 0, "teacher (labels)", &teacher)) return 1;
    if (teacher_cache_write(o.out, key)) return 1;
  }
  /* rows of earlier runs with the same teacher and student settings stay (a sweep adds rows) */
  char results_key[4096];
  snprintf(results_key, sizeof results_key, "%sstudent = %s width %g, %lld iterations\n", key, o.dir.student,
           (double)o.dir.student_width, (long long)o.dir.student_iters);
  static demo_rows rows;
  demo_rows_load(&rows, o.out, results_key, HAKD_SYNTH_NUM_CLASSES);
  if (!o.run_method[0] && !demo_row_find(&rows, "none", 0))
    return command_fail("--methods without none needs the labels-only row of an earlier run with the same settings in "
                        "%s/results.tsv; add none",
                        o.out);
  int first = -1, ran[N_METHODS] = {0};
  char ids[N_METHODS][160];
  for (int i = 0; i < N_METHODS; i++) {
    if (!o.run_method[i]) continue;
    if (student_config(&cfg, &o, data_root, &methods[i])) return 2;
    demo_run_id(ids[i], sizeof ids[i], &o, &methods[i]);
    if (run_one(&cfg, 1, methods[i].label, &results[i])) return 1;
    demo_row *row = demo_row_find(&rows, ids[i], 1);
    if (!row) return command_fail("%s/results.tsv: too many rows", o.out);
    row->miou = 100 * results[i].final_miou;
    for (int k = 0; k < results[i].num_classes && k < 256; k++) row->iou[k] = 100 * results[i].final_class_iou[k];
    ran[i] = 1;
    if (first < 0) first = i;
  }
  if (first < 0) return command_fail("--methods: nothing to run");
  /* the teacher's numbers as every distillation run measured them at its start (also when reused) */
  teacher.num_classes = results[first].num_classes;
  teacher.final_miou = results[first].teacher_miou;
  memcpy(teacher.final_class_iou, results[first].teacher_class_iou, sizeof teacher.final_class_iou);
  int K = teacher.num_classes;
  const demo_row *base = demo_row_find(&rows, "none", 0);
  double teacher_iou[256];
  for (int k = 0; k < K; k++) teacher_iou[k] = 100 * teacher.final_class_iou[k];
  printf("\nResults on %s/val (mIoU %%, student %s width %g, %lld iterations, seed %lld)\n\n", data_root,
         o.dir.student, (double)o.dir.student_width, (long long)o.dir.student_iters, (long long)o.seed);
  printf("| %-24s | %6s | %6s |", "method", "mIoU", "delta");
  for (int k = 0; k < K; k++) printf(" %-8.8s |", hakd_synth_class_name(k));
  printf("\n|%s|%s|%s|", "--------------------------", "--------", "--------");
  for (int k = 0; k < K; k++) printf("----------|");
  printf("\n| %-24s | %6.2f | %+6.2f |", is_transformer(o.dir.teacher) ? "teacher (Transformer)" : "teacher (CNN)",
         100 * teacher.final_miou, 100 * teacher.final_miou - base->miou);
  for (int k = 0; k < K; k++) printf(" %8.2f |", teacher_iou[k]);
  printf("\n");
  if (!ran[0]) {
    printf("| %-24s | %6.2f | %+6.2f |", "none (earlier run)", base->miou, 0.0);
    for (int k = 0; k < K; k++) printf(" %7.2f%s |", base->iou[k], base->iou[k] > teacher_iou[k] ? "*" : " ");
    printf("\n");
  }
  for (int i = 0; i < N_METHODS; i++) {
    if (!ran[i]) continue;
    const demo_row *r = demo_row_find(&rows, ids[i], 0);
    printf("| %-24s | %6.2f | %+6.2f |", o.n_sets && i ? ids[i] : methods[i].label, r->miou, r->miou - base->miou);
    /* '*' marks a class where this student beats the teacher */
    for (int k = 0; k < K; k++) printf(" %7.2f%s |", r->iou[k], r->iou[k] > teacher_iou[k] ? "*" : " ");
    printf("\n");
  }
  printf("\n* = the student beats the teacher on that class.\n");
  /* What distillation is for: the classes where the teacher knows more than the student learns
   * from labels alone, and whether each method moved the student there. */
  double gap = 100 * teacher.final_miou - base->miou;
  printf("Teacher - labels-only student: %+.2f mIoU%s\n", gap,
         gap < 5 ? " (less than 5: this teacher has little to teach; see the README)" : "");
  int better[256], n_better = 0;
  for (int k = 0; k < K; k++)
    if (teacher_iou[k] > base->iou[k]) better[n_better++] = k;
  printf("Classes where the teacher beats the labels-only student:");
  for (int j = 0; j < n_better; j++)
    printf(" %s %+.2f%s", hakd_synth_class_name(better[j]), teacher_iou[better[j]] - base->iou[better[j]],
           j + 1 < n_better ? "," : "");
  printf("%s\n", n_better ? "" : " none");
  for (int i = 1; i < N_METHODS && n_better; i++) {
    if (!ran[i]) continue;
    const demo_row *r = demo_row_find(&rows, ids[i], 0);
    int up = 0;
    double sum = 0;
    for (int j = 0; j < n_better; j++) {
      double d = r->iou[better[j]] - base->iou[better[j]];
      up += d > 0;
      sum += d;
    }
    printf("  %-24s moved the student up on %d of %d of them (mean IoU change there %+.2f)\n",
           o.n_sets ? ids[i] : methods[i].label, up, n_better, sum / n_better);
  }
  printf("Total time %.0f s.\n", now_s() - t0);
  /* Every row (this run's and the kept ones) as tab-separated values for `hakd stats`. */
  static char text[64 * 4096];
  int n = snprintf(text, sizeof text, "method\tmiou");
  for (int k = 0; k < K; k++) n += snprintf(text + n, sizeof text - (size_t)n, "\t%s", hakd_synth_class_name(k));
  n += snprintf(text + n, sizeof text - (size_t)n, "\nteacher\t%.4f", 100 * teacher.final_miou);
  for (int k = 0; k < K; k++) n += snprintf(text + n, sizeof text - (size_t)n, "\t%.4f", teacher_iou[k]);
  for (int i = 0; i < rows.n; i++) {
    n += snprintf(text + n, sizeof text - (size_t)n, "\n%s\t%.4f", rows.rows[i].id, rows.rows[i].miou);
    for (int k = 0; k < K; k++) n += snprintf(text + n, sizeof text - (size_t)n, "\t%.4f", rows.rows[i].iou[k]);
  }
  snprintf(text + n, sizeof text - (size_t)n, "\n");
  char tsv[HAKD_PATH_MAX + 32], keypath[HAKD_PATH_MAX + 32];
  snprintf(tsv, sizeof tsv, "%s/results.tsv", o.out);
  snprintf(keypath, sizeof keypath, "%s/results.key", o.out);
  if (write_text_atomic(tsv, text) || write_text_atomic(keypath, results_key)) return 1;
  printf("Results also in %s\n", tsv);
  return 0;
}

HAKD_COMMAND("demo", "train a teacher and distill a student of the other family on synthetic data", cmd_demo)
