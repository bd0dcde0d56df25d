/* The training loop shared by `hakd train` and `hakd distill`. */
#include "hakd/train.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/data.h"
#include "hakd/distill.h"
#include "hakd/evaluate.h"
#include "hakd/io.h"
#include "hakd/metrics.h"
#include "hakd/model.h"
#include "hakd/ops.h"
#include "hakd/optim.h"
#include "dist/dist.h"
#include "train/checkpoint.h"
#include "train/memory.h"
#include "train/numerics.h"
#include "io/plot.h"
#include "train/progress.h"

#define MAX_TERMS 8

typedef struct {
  const hakd_config *cfg;
  int distill;
  FILE *log;
  FILE *jsonl;
  char config_text[8192];
  hakd_dataset *train_ds, *val_ds;
  hakd_model *student, *teacher;
  hakd_distiller *distiller;
  hakd_optimizer *opt;
  hakd_loader *loader;
  hakd_schedule sched;
  hakd_ctx *ctx;
  int crop_h, crop_w, K;
  float *images, *teacher_images; /* teacher_images: the batch in the teacher's convention, if other */
  int32_t *labels;
  hakd_eval_options eval, teacher_eval;
  /* history for the plots */
  int n_terms;
  const char *term_names[MAX_TERMS];
  double *hist_iter, *hist_terms[MAX_TERMS];
  int hist_n;
  double *eval_iter, *eval_miou;
  int eval_n;
  double best_miou;
  /* checkpoints */
  int64_t saved_iter; /* iteration of the newest checkpoint on disk (-1: none) */
  char saved_path[HAKD_PATH_MAX + 64];
  /* numerical faults: batches skipped so far, and the buffers before the step (skip_nonfinite) */
  int64_t skipped_nonfinite;
  numerics_snapshot snap_student, snap_extra;
  /* data parallelism (src/dist): this process is `rank` of `size`; rank 0 alone writes files */
  int rank, size, writer, sync_bn;
  int local_batch;
  FILE *quiet; /* where the other ranks' log and jsonl lines go (/dev/null) */
  dist_grads *grads;
} trainer;

/* Set by hakd_train_request_stop (from a signal handler): the signal number, 0 when none. */
static volatile sig_atomic_t stop_request;

void hakd_train_request_stop(int signo) { stop_request = signo > 0 ? signo : SIGINT; }

static const char *signal_name(int signo) {
  static char other[32];
  if (signo == SIGINT) return "SIGINT";
  if (signo == SIGTERM) return "SIGTERM";
  snprintf(other, sizeof other, "signal %d", signo);
  return other;
}

static int mkdir_p(const char *path) {
  char buf[HAKD_PATH_MAX];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++)
    if (*p == '/') {
      *p = '\0';
      if (mkdir(buf, 0755) && errno != EEXIST)
        return hakd_error(HAKD_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
      *p = '/';
    }
  if (mkdir(buf, 0755) && errno != EEXIST)
    return hakd_error(HAKD_EIO, "%s: cannot create directory: %s", buf, strerror(errno));
  return 0;
}

static double peak_rss_mb(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (double)ru.ru_maxrss / 1024.0;
}

/* Resident memory now (not the high-water mark): the log's record of memory over time, where a
 * leak shows as a rising line that the peak would hide behind an early maximum. */
static double rss_mb(void) { return train_memory_resident() / (1024.0 * 1024.0); }

static int create_model(const char *name, float width, const hakd_config *c, int num_classes, hakd_model **out) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = num_classes;
  o.width = width;
  o.deep_stem = c->deep_stem;
  o.aux_head = c->aux;
  o.drop_path_rate = c->drop_path;
  int rc = hakd_aspp_dilations_parse(c->aspp_dilations, o.aspp_dilations);
  return rc ? rc : hakd_model_create(name, &o, out);
}

static int setup_distiller(trainer *t) {
  const hakd_config *c = t->cfg;
  hakd_distill_options o;
  hakd_distill_options_default(&o);
  hakd_distill_method method;
  int rc = hakd_distill_method_parse(c->method, &method);
  if (!rc) rc = hakd_distill_stages_parse(c->hakd_stages, &o);
  if (!rc) rc = hakd_reliability_parse(c->reliability, &o.reliability);
  if (!rc) rc = hakd_kem_axis_parse(c->kem_axis, &o.kem_axis);
  if (!rc) rc = hakd_grid_parse(c->hakd_grid, &o.grid);
  if (rc) return rc;
  o.T = c->T;
  o.lambda_kd = c->lambda_kd >= 0 ? c->lambda_kd : (method == HAKD_DISTILL_KD ? 1.0f : 0.1f);
  o.lambda_hakd = c->lambda_hakd;
  o.lambda_proj = c->lambda_proj;
  o.lambda_cwd = c->lambda_cwd;
  o.lambda_fitnet = c->lambda_fitnet;
  o.kd_T = c->kd_T;
  o.cwd_T = c->cwd_T;
  o.warmup_iters = c->warmup_iters;
  o.no_kmm = c->no_kmm;
  o.no_kem = c->no_kem;
  o.proj_relu = c->proj_relu;
  o.proj_grad_to_student = c->proj_grad_to_student;
  o.fitnet_stage = c->fitnet_stage;
  rc = hakd_distiller_create(t->teacher, t->student, method, &o, c->iters, &t->distiller);
  if (!rc) hakd_distiller_init(t->distiller, (uint64_t)c->seed + 7);
  return rc;
}

static void print_metrics(trainer *t, const char *who, const hakd_metrics *m) {
  fprintf(t->log, "%s on %s/%s:\n", who, hakd_dataset_name(t->val_ds), hakd_dataset_split(t->val_ds));
  hakd_metrics_print(t->log, m, hakd_dataset_class_names(t->val_ds));
  fflush(t->log);
}

/* Evaluates `m` on the val split; fills metrics (caller frees). */
static int evaluate(trainer *t, hakd_model *m, const hakd_eval_options *o, hakd_metrics *out) {
  hakd_confusion cm;
  int rc = hakd_confusion_init(&cm, t->K);
  if (rc) return rc;
  /* Each rank scores every size-th image; the matrices are summed (exact: counts). */
  hakd_eval_options sharded = *o;
  sharded.shard_index = t->rank;
  sharded.shard_count = t->size;
  /* The student does not change during an evaluation: frozen for its length, its convolutions
   * convert their weights once per evaluation instead of once per image (hakd/tensor.h); the
   * next freeze stamps anew, so the copies of this one are replaced, not reused. */
  int thaw = m == t->student;
  if (thaw) hakd_params_freeze(hakd_model_params(m), 1);
  rc = dist_agree(hakd_evaluate(m, t->val_ds, &sharded, &cm));
  if (thaw) hakd_params_freeze(hakd_model_params(m), 0);
  if (!rc) rc = dist_sum_u64(cm.counts, (int64_t)t->K * t->K);
  if (!rc) rc = hakd_confusion_compute(out, &cm);
  hakd_confusion_free(&cm);
  return rc;
}

/* Refuses a batch/crop whose step cannot fit before anything big is allocated (see memory.h). */
static int check_memory(trainer *t) {
  const hakd_config *c = t->cfg;
  int teacher_runs = t->teacher && hakd_distiller_method(t->distiller) != HAKD_DISTILL_NONE;
  size_t pixels = (size_t)t->local_batch * (size_t)t->crop_h * (size_t)t->crop_w;
  /* the trainer's images (+ the teacher's copy) and labels, and the loader's 2 prefetched batches */
  size_t batch_bytes = pixels * (3 * sizeof(float) * (teacher_runs && t->teacher_eval.norm != t->eval.norm ? 2 : 1) +
                                 sizeof(int32_t)) +
                       (c->workers > 0 ? 2 : 0) * pixels * (3 * sizeof(float) + sizeof(int32_t));
  train_memory_probe p = {t->student, teacher_runs ? t->teacher : NULL, t->distiller, t->local_batch, t->crop_h, t->crop_w,
                          c->aux_weight, t->eval.precision, strcmp(c->optimizer, "adamw") ? 1 : 2, batch_bytes};
  return train_memory_check(&p, t->distill ? "distillation" : "training", t->log);
}

static int setup(trainer *t, hakd_train_result *result) {
  const hakd_config *c = t->cfg;
  int rc = hakd_config_validate(c, t->distill);
  if (rc) return rc;
  t->sync_bn = t->size > 1 && c->sync_bn != 0;
  if (c->batch % t->size)
    return hakd_error(HAKD_EINVAL,
                      "--batch %d (the global batch) does not split over %d processes: each takes an equal share, so "
                      "use a multiple of %d (e.g. --batch %d) or another process count",
                      c->batch, t->size, t->size, (c->batch / t->size + 1) * t->size);
  t->local_batch = c->batch / t->size;
  hakd_set_threads(c->threads);
  if (t->writer && (rc = mkdir_p(c->work_dir))) return rc;
  FILE *mem = fmemopen(t->config_text, sizeof t->config_text - 1, "w");
  if (mem) {
    hakd_config_write(c, mem);
    fclose(mem);
  }
  char path[HAKD_PATH_MAX + 32];
  snprintf(path, sizeof path, "%s/config.txt", c->work_dir);
  if (t->writer && (rc = hakd_config_save(c, path))) return rc;
  hakd_parse_size(c->crop, &t->crop_h, &t->crop_w);

  hakd_dataset_config dc = {c->dataset, c->data_root, c->train_split, 0};
  if ((rc = hakd_dataset_open(&t->train_ds, &dc))) return rc;
  dc.split = c->val_split;
  if ((rc = hakd_dataset_open(&t->val_ds, &dc))) return rc;
  t->K = hakd_dataset_num_classes(t->train_ds);
  result->num_classes = t->K;

  if ((rc = create_model(c->model, c->width, c, t->K, &t->student))) return rc;
  /* A crop or batch the model cannot train on fails here with its minimum, not inside conv2d
   * or BatchNorm at the first step. */
  /* BatchNorm sees the local batch unless it is synchronised */
  if ((rc = hakd_model_check_input(t->student, t->sync_bn ? c->batch : t->local_batch, t->crop_h, t->crop_w, 1))) {
    hakd_error_prefix("crop %s, batch %d", c->crop, c->batch);
    return rc;
  }
  hakd_model_init(t->student, (uint64_t)c->seed);
  if (c->pretrained[0]) {
    hakd_load_options lo;
    hakd_load_options_default(&lo);
    lo.key_map = c->weights_prefix;
    lo.backbone_only = c->pretrained_backbone;
    lo.strict = !c->pretrained_backbone;
    hakd_load_report rep;
    if ((rc = hakd_model_load(t->student, c->pretrained, &lo, &rep))) return rc;
    fprintf(t->log, "loaded %s: %d tensors, %d missing, %d unexpected\n", c->pretrained, rep.loaded, rep.missing,
            rep.unexpected);
  }

  hakd_eval_options_default(&t->eval);
  t->eval.norm = strcmp(c->norm, "bgr-mean") ? HAKD_NORM_IMAGENET : HAKD_NORM_BGR_MEAN;
  if (c->eval_scale[0]) hakd_parse_size(c->eval_scale, &t->eval.scale_h, &t->eval.scale_w);
  if (c->eval_scale[0] && (rc = hakd_model_check_input(t->student, 1, t->eval.scale_h, t->eval.scale_w, 0))) {
    hakd_error_prefix("eval_scale %s", c->eval_scale); /* else it fails at the first evaluation */
    return rc;
  }
  t->eval.skip_bad = c->skip_bad;
  hakd_precision_parse(c->precision, &t->eval.precision); /* validated with the config */
  t->eval.warnings = t->log;

  if (t->distill) {
    /* width and ASPP rates not given: the teacher file's (hakd_model_options_for_file), which
     * also refuses a given option or class count that contradicts the file */
    hakd_model_options to;
    hakd_model_options_default(&to);
    to.num_classes = t->K;
    to.width = c->teacher_width;
    if (c->teacher_aspp_dilations[0] && (rc = hakd_aspp_dilations_parse(c->teacher_aspp_dilations, to.aspp_dilations)))
      return rc;
    char teacher_name[HAKD_NAME_MAX];
    if ((rc = hakd_model_options_for_file(c->teacher_weights, c->teacher, &to, teacher_name, sizeof teacher_name))) {
      hakd_error_prefix("teacher");
      return rc;
    }
    if ((rc = hakd_model_create(teacher_name, &to, &t->teacher))) return rc;
    if ((rc = hakd_model_check_input(t->teacher, t->local_batch, t->crop_h, t->crop_w, 0))) {
      hakd_error_prefix("teacher on crop %s", c->crop);
      return rc;
    }
    hakd_load_options lo;
    hakd_load_options_default(&lo);
    hakd_load_report rep;
    if ((rc = hakd_model_load(t->teacher, c->teacher_weights, &lo, &rep))) return rc;
    hakd_params_freeze(hakd_model_params(t->teacher), 1); /* never trained: packed weights kept (hakd/tensor.h) */
    t->teacher_eval = t->eval;
    if (c->teacher_norm[0])
      t->teacher_eval.norm = strcmp(c->teacher_norm, "bgr-mean") ? HAKD_NORM_IMAGENET : HAKD_NORM_BGR_MEAN;
    if ((rc = setup_distiller(t))) return rc;
  }
  /* Before the teacher's evaluation, which can take minutes on a real validation set. */
  if (c->memory_check && (rc = check_memory(t))) return rc;
  /* Every rank got here, or all stop with the first failing rank's error (the evaluation below
   * is the first collective). */
  if ((rc = dist_agree(rc))) return rc;
  if (t->distill) {
    hakd_metrics tm;
    if ((rc = evaluate(t, t->teacher, &t->teacher_eval, &tm))) return rc;
    char who[160];
    snprintf(who, sizeof who, "teacher %s (%s)", c->teacher, hakd_model_family(t->teacher));
    print_metrics(t, who, &tm);
    result->teacher_miou = tm.miou;
    for (int k = 0; k < t->K && k < 256; k++) result->teacher_class_iou[k] = tm.iou[k];
    hakd_metrics_free(&tm);
  }

  hakd_optim_config oc;
  hakd_optim_config_default(&oc, strcmp(c->optimizer, "adamw") ? HAKD_OPTIM_SGD : HAKD_OPTIM_ADAMW);
  oc.momentum = c->momentum;
  oc.weight_decay = c->wd;
  oc.clip_norm = c->clip_norm;
  t->opt = hakd_optim_new(&oc);
  if (!t->opt) return hakd_error(HAKD_ENOMEM, "out of memory");
  if (hakd_optim_add_group(t->opt, hakd_model_params(t->student), hakd_model_head_prefix(t->student), c->head_lr_mult,
                           0) < 0 ||
      hakd_optim_add_group(t->opt, hakd_model_params(t->student), NULL, 1.0f, 0) < 0 ||
      (t->distiller && hakd_optim_add_group(t->opt, hakd_distiller_params(t->distiller), NULL, 1.0f, 0) < 0))
    return HAKD_ENOMEM;
  t->sched = (hakd_schedule){.base_lr = c->lr, .max_iters = c->iters, .power = c->power, .min_lr = c->min_lr,
                             .warmup_iters = c->warmup_lr_iters, .warmup_ratio = c->warmup_ratio};

  hakd_loader_config lc;
  memset(&lc, 0, sizeof lc);
  lc.batch_size = c->batch;
  lc.num_workers = c->workers;
  lc.shuffle = 1;
  lc.drop_last = 1;
  lc.skip_bad = c->skip_bad;
  lc.seed = (uint64_t)c->seed;
  lc.augment = hakd_augment_default(t->crop_h, t->crop_w);
  lc.augment.ratio_min = c->ratio_min;
  lc.augment.ratio_max = c->ratio_max;
  lc.augment.flip = c->flip;
  lc.augment.photometric = c->photometric;
  lc.augment.cat_max_ratio = c->cat_max_ratio;
  lc.augment.norm = t->eval.norm;
  lc.shard_index = t->rank;
  lc.shard_count = t->size;
  if ((rc = hakd_loader_new(&t->loader, t->train_ds, &lc))) return rc;

  size_t pixels = (size_t)c->batch * t->crop_h * t->crop_w;
  t->images = malloc(pixels * 3 * sizeof(float));
  if (t->teacher && t->teacher_eval.norm != t->eval.norm) {
    t->teacher_images = malloc(pixels * 3 * sizeof(float));
    if (!t->teacher_images) return hakd_error(HAKD_ENOMEM, "out of memory");
  }
  t->labels = malloc(pixels * sizeof(int32_t));
  t->ctx = hakd_ctx_new();
  if (t->ctx) hakd_ctx_set_precision(t->ctx, t->eval.precision);
  int64_t hist_cap = c->iters + 2;
  t->hist_iter = calloc((size_t)hist_cap, sizeof(double));
  for (int i = 0; i < MAX_TERMS; i++) t->hist_terms[i] = calloc((size_t)hist_cap, sizeof(double));
  t->eval_iter = calloc((size_t)hist_cap, sizeof(double));
  t->eval_miou = calloc((size_t)hist_cap, sizeof(double));
  if (!t->images || !t->labels || !t->ctx || !t->hist_iter || !t->hist_terms[MAX_TERMS - 1] || !t->eval_miou)
    return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd_ctx_seed(t->ctx, (uint64_t)c->seed + 13);
  if (t->size > 1) {
    hakd_ctx_set_comm(t->ctx, dist_comm(), t->sync_bn);
    /* HAKD_DIST_BUCKET_KB / HAKD_DIST_OVERLAP=0: the bucket size and the overlap, for bench/mpi_scaling.sh */
    const char *kb = getenv("HAKD_DIST_BUCKET_KB"), *overlap = getenv("HAKD_DIST_OVERLAP");
    size_t bucket_bytes = kb && atoi(kb) > 0 ? (size_t)atoi(kb) * 1024 : (size_t)1 << 20;
    hakd_params *lists[2] = {hakd_model_params(t->student), t->distiller ? hakd_distiller_params(t->distiller) : NULL};
    if ((rc = dist_grads_new(&t->grads, lists, 2, bucket_bytes, !(overlap && !strcmp(overlap, "0"))))) return rc;
  }
  if (c->skip_nonfinite > 0) {
    if ((rc = numerics_snapshot_init(&t->snap_student, hakd_model_params(t->student)))) return rc;
    if ((rc = numerics_snapshot_init(&t->snap_extra, t->distiller ? hakd_distiller_params(t->distiller) : NULL)))
      return rc;
  }
  snprintf(path, sizeof path, "%s/log.jsonl", c->work_dir);
  t->jsonl = t->writer ? fopen(path, c->resume[0] ? "a" : "w") : t->quiet;
  if (!t->jsonl) return hakd_error(HAKD_EIO, "%s: cannot write", path);
  return 0;
}

/* Rank 0's parameters and buffers to every rank: the same start whatever each read or drew. */
static int broadcast_params(hakd_params *p, int buffers_only) {
  for (int i = 0; p && i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (buffers_only && t->requires_grad) continue;
    if (t->dtype != HAKD_F32) continue;
    int rc = dist_broadcast_f32(hakd_f32(t), hakd_numel(t));
    if (rc) return rc;
    hakd_tensor_changed(t);
  }
  return 0;
}

static int broadcast_model(trainer *t, int buffers_only) {
  int rc = broadcast_params(hakd_model_params(t->student), buffers_only);
  if (!rc && t->distiller) rc = broadcast_params(hakd_distiller_params(t->distiller), buffers_only);
  return rc;
}

/* A failure of this rank alone in the middle of a step, where the others wait in a collective
 * that this one will not join: the message goes out and the whole run ends (MPI_Abort). */
static int fail_alone(trainer *t, int rc) {
  if (t->size > 1 && rc && rc != HAKD_EINTERRUPTED) {
    fprintf(stderr, "hakd: error: rank %d: %s\nhakd: ending every process of the run\n", t->rank, hakd_error_message());
    fflush(stderr);
    hakd_dist_abort(1);
  }
  return rc;
}

static void teardown(trainer *t) {
  if (t->jsonl && t->jsonl != t->quiet) fclose(t->jsonl);
  if (t->quiet) fclose(t->quiet);
  dist_grads_free(t->grads);
  hakd_loader_free(t->loader);
  hakd_distiller_free(t->distiller);
  hakd_optim_free(t->opt);
  hakd_model_free(t->student);
  hakd_model_free(t->teacher);
  hakd_dataset_free(t->train_ds);
  hakd_dataset_free(t->val_ds);
  hakd_ctx_free(t->ctx);
  free(t->images);
  free(t->teacher_images);
  free(t->labels);
  free(t->hist_iter);
  for (int i = 0; i < MAX_TERMS; i++) free(t->hist_terms[i]);
  free(t->eval_iter);
  free(t->eval_miou);
  numerics_snapshot_free(&t->snap_student);
  numerics_snapshot_free(&t->snap_extra);
}

static int save_checkpoint(trainer *t, int64_t iter) {
  checkpoint_state st = {iter, hakd_loader_get_state(t->loader), *hakd_ctx_rng(t->ctx), t->best_miou,
                         t->skipped_nonfinite};
  /* Rank 0 writes; the state is the same on every rank (the loader state is the global batch's),
   * so a checkpoint resumes on any process count. */
  int rc = 0;
  if (t->writer)
    rc = checkpoint_save(t->cfg->work_dir, t->student, t->distiller ? hakd_distiller_params(t->distiller) : NULL,
                         t->opt, &st, t->config_text, t->saved_path, sizeof t->saved_path);
  else
    snprintf(t->saved_path, sizeof t->saved_path, "%s/iter_%" PRId64 ".safetensors", t->cfg->work_dir, iter);
  rc = dist_agree(rc);
  if (rc) {
    /* The user's question after a failed save (a full disk) is what is left: say it. */
    if (t->saved_iter >= 0)
      hakd_error_prefix("saving the checkpoint of iteration %" PRId64 " (the checkpoint of iteration %" PRId64
                        ", %s, is intact)",
                        iter, t->saved_iter, t->saved_path);
    else
      hakd_error_prefix("saving the checkpoint of iteration %" PRId64, iter);
    return rc;
  }
  t->saved_iter = iter;
  return 0;
}

static int resume(trainer *t, int64_t *start_iter) {
  const hakd_config *c = t->cfg;
  char path[HAKD_PATH_MAX + 32];
  if (!strcmp(c->resume, "auto")) {
    int found = checkpoint_find_latest(c->work_dir, path, sizeof path, t->log);
    if (found < 0) return found;
    if (!found) {
      fprintf(t->log, "resume auto: no checkpoint in %s, starting from scratch\n", c->work_dir);
      return 0;
    }
  } else {
    snprintf(path, sizeof path, "%s", c->resume);
  }
  checkpoint_state st;
  int rc = checkpoint_load(path, t->student, t->distiller ? hakd_distiller_params(t->distiller) : NULL, t->opt, &st);
  if (rc) return rc;
  if ((rc = hakd_loader_set_state(t->loader, st.loader))) return rc;
  *hakd_ctx_rng(t->ctx) = st.rng;
  t->best_miou = st.best_miou;
  t->skipped_nonfinite = st.skipped_nonfinite;
  *start_iter = st.iteration;
  t->saved_iter = st.iteration;
  snprintf(t->saved_path, sizeof t->saved_path, "%s", path);
  fprintf(t->log, "resumed from %s at iteration %" PRId64 "\n", path, st.iteration);
  return 0;
}

/* Every rank read a checkpoint of its own (they need the work_dir on a shared file system):
 * they must have found the same one. */
static int resume_agreed(trainer *t, int64_t *start_iter) {
  int rc = dist_agree(resume(t, start_iter));
  if (rc || t->size == 1) return rc;
  int64_t range[2] = {*start_iter, -*start_iter};
  if ((rc = dist_max_i64(range, 2))) return rc;
  if (range[0] != -range[1])
    return hakd_error(HAKD_EINVAL,
                      "--resume: the processes found checkpoints of different iterations (%" PRId64 " to %" PRId64
                      ") in %s: put the work_dir on a file system every machine shares",
                      -range[1], range[0], t->cfg->work_dir);
  return 0;
}

static int run_eval(trainer *t, int64_t iter, hakd_train_result *result) {
  hakd_metrics m;
  int rc = evaluate(t, t->student, &t->eval, &m);
  if (rc) return rc;
  char who[160];
  snprintf(who, sizeof who, "iter %" PRId64 ": %s", iter, t->cfg->model);
  print_metrics(t, who, &m);
  fprintf(t->jsonl, "{\"iter\": %" PRId64 ", \"mode\": \"val\", \"aAcc\": %.6f, \"mIoU\": %.6f, \"mAcc\": %.6f}\n", iter,
          m.aacc, m.miou, m.macc);
  fflush(t->jsonl);
  t->eval_iter[t->eval_n] = (double)iter;
  t->eval_miou[t->eval_n++] = m.miou * 100.0;
  result->final_miou = m.miou;
  for (int k = 0; k < t->K && k < 256; k++) result->final_class_iou[k] = m.iou[k];
  if (m.miou > t->best_miou || t->eval_n == 1) {
    t->best_miou = m.miou;
    char path[HAKD_PATH_MAX + 32], iter_text[32];
    snprintf(path, sizeof path, "%s/best.safetensors", t->cfg->work_dir);
    snprintf(iter_text, sizeof iter_text, "%" PRId64, iter);
    const char *meta[] = {"iteration", iter_text, "format", "pt", NULL};
    if (t->writer) rc = hakd_model_save(t->student, path, meta);
    rc = dist_agree(rc);
  }
  result->best_miou = t->best_miou;
  hakd_metrics_free(&m);
  return rc;
}

/* Image | label | KEM weights of the first image of the batch, side by side. */
static int dump_kem(trainer *t, int64_t iter, const hakd_distill_losses *dl) {
  if (!dl->n_stages || !dl->kem_weights[0]) return 0;
  const hakd_tensor *wm = dl->kem_weights[0];
  int H = t->crop_h, W = t->crop_w, K = t->K;
  int64_t wh = wm->shape[wm->ndim - 2], ww = wm->shape[wm->ndim - 1];
  unsigned char *rgb = malloc((size_t)H * W * 3 * 3);
  float *heat = malloc((size_t)H * W * sizeof(float));
  if (!rgb || !heat) {
    free(rgb), free(heat);
    return hakd_error(HAKD_ENOMEM, "out of memory");
  }
  float mean[3] = {123.675f, 116.28f, 103.53f}, std[3] = {58.395f, 57.12f, 57.375f}, max = 0;
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      unsigned char *px = rgb + 3 * ((size_t)y * 3 * W + x);
      for (int ch = 0; ch < 3; ch++) {
        float v = t->images[((size_t)ch * H + y) * W + x];
        v = t->eval.norm == HAKD_NORM_IMAGENET ? v * std[ch] + mean[ch] : v + (float[]){122.675f, 116.669f, 104.008f}[ch];
        px[t->eval.norm == HAKD_NORM_IMAGENET ? ch : 2 - ch] = (unsigned char)fminf(255.0f, fmaxf(0.0f, v));
      }
      int32_t lab = t->labels[(size_t)y * W + x];
      const uint8_t *pal = hakd_dataset_palette(t->train_ds);
      for (int ch = 0; ch < 3; ch++) px[3 * W + ch] = lab >= 0 && lab < K ? pal[3 * lab + ch] : 0;
      int64_t sy = (int64_t)y * wh / H, sx = (int64_t)x * ww / W;
      float v = 0;
      if (wm->ndim == 3)
        v = hakd_f32(wm)[sy * ww + sx];
      else
        for (int k = 0; k < K; k++) v += hakd_f32(wm)[((int64_t)k * wh + sy) * ww + sx];
      heat[(size_t)y * W + x] = v;
      if (v > max) max = v;
    }
  unsigned char *hm = malloc((size_t)H * W * 3);
  if (hm) {
    plot_heatmap(hm, heat, H * W, max);
    for (int y = 0; y < H; y++) memcpy(rgb + 3 * ((size_t)y * 3 * W + 2 * W), hm + 3 * (size_t)y * W, (size_t)W * 3);
  }
  char path[HAKD_PATH_MAX + 48];
  snprintf(path, sizeof path, "%s/kem_iter%06" PRId64 ".png", t->cfg->dump_kem, iter);
  /* Small crops are enlarged (nearest) so the panels can be looked at. */
  int scale = H < 256 ? (256 + H - 1) / H : 1;
  unsigned char *big = hm ? malloc((size_t)H * scale * 3 * W * scale * 3) : NULL;
  int rc = HAKD_ENOMEM;
  if (big) {
    for (int y = 0; y < H * scale; y++)
      for (int x = 0; x < 3 * W * scale; x++)
        memcpy(big + 3 * ((size_t)y * 3 * W * scale + x), rgb + 3 * ((size_t)(y / scale) * 3 * W + x / scale), 3);
    rc = hakd_png_write_rgb(path, 3 * W * scale, H * scale, big);
  }
  free(big);
  free(hm);
  free(rgb);
  free(heat);
  return rc;
}

static void write_plots(trainer *t) {
  char path[HAKD_PATH_MAX + 32];
  plot_series s[MAX_TERMS];
  for (int i = 0; i < t->n_terms; i++) s[i] = (plot_series){t->term_names[i], t->hist_iter, t->hist_terms[i], t->hist_n};
  snprintf(path, sizeof path, "%s/loss.png", t->cfg->work_dir);
  if (t->hist_n && plot_write_png(path, "loss", s, t->n_terms, 800, 480))
    fprintf(t->log, "warning: %s\n", hakd_error_message());
  plot_series m = {"val miou", t->eval_iter, t->eval_miou, t->eval_n};
  snprintf(path, sizeof path, "%s/miou.png", t->cfg->work_dir);
  if (t->eval_n && plot_write_png(path, "val miou (%)", &m, 1, 800, 480))
    fprintf(t->log, "warning: %s\n", hakd_error_message());
}

static void print_json_string(FILE *out, const char *s) {
  fputc('"', out);
  for (; *s; s++) {
    if (*s == '"' || *s == '\\')
      fprintf(out, "\\%c", *s);
    else if ((unsigned char)*s < 0x20)
      fprintf(out, "\\u%04x", *s);
    else
      fputc(*s, out);
  }
  fputc('"', out);
}

/* A NaN/Inf in the step of iteration iter + 1 (`what` says where). Within the skip_nonfinite
 * budget the batch is skipped: the buffers its forward pass changed are put back, no optimizer
 * step is made, and the skip is logged with the batch's files (returns 1). Beyond it, the run
 * stops with the same facts in the error (HAKD_ENUMERIC). */
static int nonfinite(trainer *t, int64_t iter, const char *what) {
  const hakd_config *c = t->cfg;
  const int64_t *items;
  int n = hakd_loader_last_items(t->loader, &items);
  char names[1024];
  numerics_batch_names(names, sizeof names, t->train_ds, items, n);
  if (t->skipped_nonfinite < c->skip_nonfinite) {
    t->skipped_nonfinite++;
    numerics_snapshot_restore(&t->snap_student);
    numerics_snapshot_restore(&t->snap_extra);
    fprintf(t->log, "iter %" PRId64 ": skipped the batch of %s: %s (%" PRId64 " of at most %" PRId64 " skipped)\n",
            iter + 1, names, what, t->skipped_nonfinite, c->skip_nonfinite);
    fflush(t->log);
    fprintf(t->jsonl, "{\"iter\": %" PRId64 ", \"skipped\": ", iter + 1);
    print_json_string(t->jsonl, what);
    fprintf(t->jsonl, ", \"samples\": ");
    print_json_string(t->jsonl, names);
    fprintf(t->jsonl, ", \"skipped_nonfinite\": %" PRId64 "}\n", t->skipped_nonfinite);
    fflush(t->jsonl);
    return 1;
  }
  if (c->skip_nonfinite > 0)
    return hakd_error(HAKD_ENUMERIC,
                      "iteration %" PRId64 ": %s on the batch of %s; stopping: %" PRId64
                      " such batches were skipped already, the --skip-nonfinite limit",
                      iter + 1, what, names, t->skipped_nonfinite);
  return hakd_error(HAKD_ENUMERIC,
                    "iteration %" PRId64 ": %s on the batch of %s; stopping (lower the lr or the loss weights? "
                    "--skip-nonfinite N skips up to N such batches)",
                    iter + 1, what, names);
}

/* One iteration; fills the named loss terms (values) for the log. Returns 0, 1 when the batch
 * was skipped (a NaN/Inf within the skip_nonfinite budget), or a negative status. */
static int train_step(trainer *t, int64_t iter, float lr, double *terms, double *data_time) {
  const hakd_config *c = t->cfg;
  double t0 = progress_now();
  int n = hakd_loader_next(t->loader, t->images, t->labels);
  /* a bad file in one rank's shard stops every rank, with its name */
  int rc = dist_agree(n < 0 ? n : 0);
  if (rc) return rc;
  *data_time = progress_now() - t0;
  hakd_ctx *ctx = t->ctx;
  hakd_ctx_reset(ctx);
  hakd_ctx_set_sample_offset(ctx, (int64_t)t->rank * n);
  if (c->skip_nonfinite > 0) {
    numerics_snapshot_take(&t->snap_student);
    numerics_snapshot_take(&t->snap_extra);
  }
  hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){n, 3, t->crop_h, t->crop_w}, t->images);
  hakd_tensor *y = hakd_tensor_wrap(ctx, HAKD_I32, 3, (int64_t[]){n, t->crop_h, t->crop_w}, t->labels);
  hakd_model_output tout, sout;
  /* method none trains on labels only: the teacher is loaded and evaluated, never run per step */
  int teacher_runs = t->teacher && hakd_distiller_method(t->distiller) != HAKD_DISTILL_NONE;
  if (teacher_runs) {
    hakd_tensor *tx = x;
    if (t->teacher_images) {
      hakd_renormalize(t->teacher_images, t->images, n, (int64_t)t->crop_h * t->crop_w, t->eval.norm,
                       t->teacher_eval.norm);
      tx = hakd_tensor_wrap(ctx, HAKD_F32, 4, x->shape, t->teacher_images);
    }
    hakd_ctx_set_grad(ctx, 0);
    hakd_ctx_set_training(ctx, 0);
    rc = hakd_model_forward(t->teacher, ctx, tx, &tout);
    hakd_ctx_set_grad(ctx, 1);
    hakd_ctx_set_training(ctx, 1);
    if (rc) return fail_alone(t, rc);
  }
  if ((rc = hakd_model_forward(t->student, ctx, x, &sout))) return fail_alone(t, rc);
  hakd_tensor *ce = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.logits, t->crop_h, t->crop_w, 0), y, 255);
  hakd_tensor *total = ce;
  hakd_tensor *named[MAX_TERMS];
  int k = 0;
  t->term_names[k] = "ce", named[k++] = ce;
  if (sout.aux) {
    hakd_tensor *aux = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.aux, t->crop_h, t->crop_w, 0), y, 255);
    total = hakd_add(ctx, total, hakd_scale(ctx, aux, c->aux_weight));
    t->term_names[k] = "aux_ce", named[k++] = aux;
  }
  hakd_distill_losses dl;
  memset(&dl, 0, sizeof dl);
  if (t->distiller) {
    if ((rc = hakd_distiller_forward(t->distiller, ctx, teacher_runs ? &tout : NULL, &sout, y, iter, &dl)))
      return fail_alone(t, rc);
    const char *names[] = {"kd", "hakd", "proj", "cwd", "fitnet"};
    hakd_tensor *terms_d[] = {dl.kd, dl.hakd, dl.proj, dl.cwd, dl.fitnet};
    for (int i = 0; i < 5; i++)
      if (terms_d[i] && k < MAX_TERMS - 1) t->term_names[k] = names[i], named[k++] = terms_d[i];
    total = hakd_add(ctx, total, dl.total);
  }
  t->term_names[k] = "loss", named[k++] = total;
  t->n_terms = k;
  if (hakd_ctx_status(ctx)) return fail_alone(t, hakd_ctx_status(ctx));
  for (int i = 0; i < k; i++) terms[i] = hakd_f32(named[i])[0];
  /* The global batch's terms (each rank's term is its share's mean, cross-entropies already
   * normalised by the global count): the log's numbers, and one decision on NaN for all ranks. */
  if (t->size > 1) {
    if ((rc = dist_sum_f64(terms, k))) return fail_alone(t, rc);
    for (int i = 0; i < k; i++) terms[i] /= t->size;
  }
  for (int i = 0; i < k; i++)
    if (!isfinite(terms[i])) {
      char what[160];
      snprintf(what, sizeof what, "loss term '%s' is %g", t->term_names[i], terms[i]);
      return nonfinite(t, iter, what);
    }
  /* marked only: the backward writes each gradient (optimizer, averaging and the finite check read
   * them through hakd_param_grad) */
  hakd_params_mark_grads_zero(hakd_model_params(t->student));
  if (t->distiller) hakd_params_mark_grads_zero(hakd_distiller_params(t->distiller));
  double backward_start = progress_now();
  if (t->grads) dist_grads_begin(t->grads, ctx);
  if ((rc = hakd_backward(ctx, total))) return fail_alone(t, rc);
  /* the average of the ranks' gradients: the global batch's gradient */
  if (t->grads && (rc = dist_grads_finish(t->grads, ctx, progress_now() - backward_start))) return fail_alone(t, rc);
  /* A finite loss can still have a NaN/Inf gradient (an overflow inside backward); one step
   * with it would spoil every weight it reaches, and the optimizer state for good. */
  float bad = 0;
  const hakd_tensor *bad_grad = numerics_nonfinite_grad(hakd_model_params(t->student), &bad);
  if (!bad_grad && t->distiller) bad_grad = numerics_nonfinite_grad(hakd_distiller_params(t->distiller), &bad);
  if (bad_grad) {
    char what[400];
    snprintf(what, sizeof what, "the gradient of '%s' holds %g (loss %g)", bad_grad->name, (double)bad, terms[k - 1]);
    return nonfinite(t, iter, what);
  }
  hakd_optim_step(t->opt, lr);
  /* Without SyncBN each rank's running statistics follow its own share: rank 0's are everyone's
   * (as PyTorch's DistributedDataParallel broadcasts buffers), so evaluation and checkpoints agree. */
  if (t->size > 1 && !t->sync_bn && (rc = broadcast_model(t, 1))) return fail_alone(t, rc);
  if (t->writer && t->distiller && c->dump_kem[0] && c->dump_every > 0 && (iter + 1) % c->dump_every == 0) {
    if ((rc = mkdir_p(c->dump_kem))) return rc;
    if ((rc = dump_kem(t, iter + 1, &dl))) return rc;
  }
  return 0;
}

static void log_iteration(trainer *t, int64_t iter, float lr, const double *terms, double iter_time, double data_time,
                          double eta) {
  char line[1024], eta_text[32];
  int n = snprintf(line, sizeof line, "iter %" PRId64 "/%" PRId64 "  lr %.3e", iter, t->cfg->iters, (double)lr);
  for (int i = 0; i < t->n_terms && n < (int)sizeof line; i++)
    n += snprintf(line + n, sizeof line - (size_t)n, "  %s %.4f", t->term_names[i], terms[i]);
  progress_format_duration(eta_text, sizeof eta_text, eta);
  if (t->skipped_nonfinite > 0 && n < (int)sizeof line)
    n += snprintf(line + n, sizeof line - (size_t)n, "  skipped %" PRId64, t->skipped_nonfinite);
  if (n < (int)sizeof line)
    snprintf(line + n, sizeof line - (size_t)n, "  time %.3fs  data %.3fs  %.1f img/s  eta %s  mem %.0fMB", iter_time,
             data_time, t->cfg->batch / iter_time, eta_text, peak_rss_mb());
  fprintf(t->log, "%s\n", line);
  fflush(t->log);
  fprintf(t->jsonl, "{\"iter\": %" PRId64 ", \"lr\": %.6e", iter, (double)lr);
  for (int i = 0; i < t->n_terms; i++) fprintf(t->jsonl, ", \"%s\": %.6f", t->term_names[i], terms[i]);
  if (t->cfg->skip_nonfinite > 0) fprintf(t->jsonl, ", \"skipped_nonfinite\": %" PRId64, t->skipped_nonfinite);
  fprintf(t->jsonl,
          ", \"time\": %.4f, \"data_time\": %.4f, \"img_per_s\": %.2f, \"eta_s\": %.0f, \"peak_mem_mb\": %.0f, "
          "\"rss_mb\": %.3f}\n",
          iter_time, data_time, t->cfg->batch / iter_time, eta, peak_rss_mb(), rss_mb());
  fflush(t->jsonl);
}

int hakd_train_run(const hakd_config *config, int distill, FILE *log, hakd_train_result *result) {
  trainer t;
  memset(&t, 0, sizeof t);
  memset(result, 0, sizeof *result);
  result->teacher_miou = NAN;
  t.cfg = config;
  t.distill = distill;
  t.log = log;
  t.saved_iter = -1;
  t.rank = hakd_dist_rank();
  t.size = hakd_dist_size();
  t.writer = t.rank == 0;
  int rc = 0;
  if (!t.writer) {
    /* the other ranks' log lines and jsonl records are rank 0's too: they go nowhere */
    t.quiet = fopen("/dev/null", "w");
    if (!t.quiet) rc = hakd_error(HAKD_EIO, "/dev/null: cannot open: %s", strerror(errno));
    t.log = log = t.quiet;
  }
  if (!rc) rc = setup(&t, result);
  int64_t iter = 0;
  if (!rc && config->resume[0]) rc = resume_agreed(&t, &iter);
  /* every rank starts from rank 0's weights */
  if (!rc && t.size > 1) rc = dist_agree(broadcast_model(&t, 0));
  if (!rc) {
    fprintf(log, "%s %s (%s, %.2fM params) on %s/%s: %" PRId64 " iterations, batch %d, crop %dx%d\n",
            distill ? "distilling into" : "training", config->model, hakd_model_family(t.student),
            (double)hakd_params_count(hakd_model_params(t.student)) / 1e6, hakd_dataset_name(t.train_ds),
            config->train_split, config->iters, config->batch, t.crop_h, t.crop_w);
    if (t.size > 1)
      fprintf(log, "data parallel: %d processes x batch %d, SyncBN %s, gradients averaged in %d buckets (%.2f MB)\n",
              t.size, t.local_batch, t.sync_bn ? "on" : "off", dist_grads_get_stats(t.grads).buckets,
              (double)dist_grads_get_stats(t.grads).floats * 4 / 1e6);
  }
  /* A live progress line on a terminal (stderr), cleared before each log line. */
  progress_bar bar;
  progress_start(&bar, t.writer && isatty(STDERR_FILENO) ? stderr : NULL, distill ? "distill" : "train", config->iters);
  bar.first = iter;
  double start = progress_now(), window_start = start, window_data = 0;
  int64_t first_iter = iter, window_iters = 0;
  int64_t end = config->stop_after > 0 && config->stop_after < config->iters ? config->stop_after : config->iters;
  while (!rc && iter < end) {
    /* A stop request is honoured between iterations: the state is whole there. */
    int signo = stop_request;
    if (t.size > 1) {
      /* a signal reaches the ranks at different moments: they stop at the same iteration */
      int64_t any = signo;
      if ((rc = dist_max_i64(&any, 1))) break;
      signo = (int)any;
    }
    if (signo) {
      if (bar.out) fputs("\r\033[K", bar.out);
      if (iter > t.saved_iter && iter > first_iter) rc = save_checkpoint(&t, iter);
      if (rc) break;
      result->stop_signal = signo;
      if (t.saved_iter >= 0)
        fprintf(log, "stopped by %s after iteration %" PRId64 "; checkpoint %s (iteration %" PRId64 ")\n",
                signal_name(signo), iter, t.saved_path, t.saved_iter);
      else
        fprintf(log, "stopped by %s before the first iteration; no checkpoint needed\n", signal_name(signo));
      fflush(log);
      rc = hakd_error(HAKD_EINTERRUPTED, "stopped by %s after iteration %" PRId64 " of %" PRId64 "%s%s", signal_name(signo),
                      iter, config->iters, t.saved_iter >= 0 ? "; checkpoint " : "", t.saved_iter >= 0 ? t.saved_path : "");
      break;
    }
    float lr = hakd_schedule_lr(&t.sched, iter);
    double terms[MAX_TERMS], data_time = 0;
    int step = train_step(&t, iter, lr, terms, &data_time);
    if (step < 0) {
      rc = step;
      break;
    }
    iter++;
    window_iters++;
    window_data += data_time;
    /* A skipped batch (step 1) was logged by train_step; its terms are not numbers to plot. */
    if (step == 0) {
      t.hist_iter[t.hist_n] = (double)iter;
      for (int i = 0; i < t.n_terms; i++) t.hist_terms[i][t.hist_n] = terms[i];
      t.hist_n++;
      if (iter % (config->log_every > 0 ? config->log_every : 1) == 0 || iter == config->iters ||
          iter == first_iter + 1) {
        double now = progress_now(), per_iter = (now - window_start) / (double)window_iters;
        double avg = (now - start) / (double)(iter - first_iter);
        if (bar.out) fputs("\r\033[K", bar.out);
        log_iteration(&t, iter, lr, terms, per_iter, window_data / (double)window_iters,
                      avg * (double)(config->iters - iter));
        window_start = now, window_iters = 0, window_data = 0;
      }
      char loss_text[64];
      /* the global batch's throughput: every rank's images */
      double elapsed = progress_now() - start;
      snprintf(loss_text, sizeof loss_text, "loss %.4f  %.1f img/s", terms[t.n_terms - 1],
               elapsed > 0 ? (double)config->batch * (double)(iter - first_iter) / elapsed : 0.0);
      progress_update(&bar, iter, loss_text);
    }
    int last = iter == config->iters || iter == config->stop_after;
    if (last && bar.out) fputs("\r\033[K", bar.out);
    if (config->eval_every > 0 ? (iter % config->eval_every == 0 || last) : last) rc = run_eval(&t, iter, result);
    if (!rc && (config->save_every > 0 ? (iter % config->save_every == 0 || last) : last)) rc = save_checkpoint(&t, iter);
  }
  if (t.grads && iter > first_iter) {
    dist_grads_stats gs = dist_grads_get_stats(t.grads);
    if (gs.iterations > 0)
      fprintf(log,
              "data parallel: gradient all-reduce of %.2f MB per iteration; backward %.1f ms, then %.2f ms waiting "
              "for the reductions (mean of %" PRId64 " iterations)\n",
              (double)gs.floats * 4 / 1e6, 1e3 * gs.backward_s / (double)gs.iterations,
              1e3 * gs.wait_s / (double)gs.iterations, gs.iterations);
  }
  stop_request = 0;
  result->iters_done = iter;
  result->skipped_nonfinite = t.skipped_nonfinite;
  if (t.saved_iter >= 0) snprintf(result->checkpoint, sizeof result->checkpoint, "%s", t.saved_path);
  if (t.writer && (!rc || rc == HAKD_EINTERRUPTED)) write_plots(&t);
  teardown(&t);
  return rc;
}
