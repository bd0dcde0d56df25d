/* The trainer's memory estimate: probe steps on small crops, extrapolated to the configured
 * batch and crop, against the machine's available memory (see memory.h). */
#include "train/memory.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hakd/error.h"
#include "hakd/ops.h"
#include "ops/scratch.h"

/* Probe crops: a crop up to PROBE_BIG pixels is probed as it is; a larger one at its shape
 * scaled to about PROBE_SMALL and PROBE_BIG pixels. 256x256 keeps a probe step of the largest
 * models under a second or two and under a few hundred MB, and is large enough that the
 * quadratic term of SegFormer's attention shows (segformer-b0: the fit from 128^2 and 256^2
 * predicts 512x512 within 2%, a linear scaling from 64^2 and 128^2 misses by 12%). */
#define PROBE_SMALL (128.0 * 128.0)
#define PROBE_BIG (256.0 * 256.0)

double train_memory_resident(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages_total = 0, pages_resident = 0;
  int ok = f && fscanf(f, "%ld %ld", &pages_total, &pages_resident) == 2;
  if (f) fclose(f);
  return ok ? (double)pages_resident * (double)sysconf(_SC_PAGESIZE) : 0.0;
}

static double address_space_in_use(void) {
  FILE *f = fopen("/proc/self/statm", "r");
  long pages_total = 0;
  int ok = f && fscanf(f, "%ld", &pages_total) == 1;
  if (f) fclose(f);
  return ok ? (double)pages_total * (double)sysconf(_SC_PAGESIZE) : 0.0;
}

/* A number of bytes from a one-line file ("max" or unreadable: -1). */
static double read_bytes_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char text[64] = "";
  int ok = fgets(text, sizeof text, f) != NULL;
  fclose(f);
  char *end;
  double v = ok ? strtod(text, &end) : -1;
  return ok && end != text ? v : -1;
}

/* Room under the memory limits of this process's cgroup and of its ancestors (a container's
 * limit: MemAvailable is the host's, the cgroup's OOM killer strikes first): the smallest
 * limit - usage on the path, cgroup v1 (memory.limit_in_bytes / usage_in_bytes) or v2
 * (memory.max / memory.current), found through /proc/self/cgroup. -1: no limit found. */
static double cgroup_room(void) {
  FILE *f = fopen("/proc/self/cgroup", "r");
  if (!f) return -1;
  char line[1024], path[1024] = "";
  int v1 = 0;
  while (fgets(line, sizeof line, f)) {
    line[strcspn(line, "\n")] = '\0';
    char *a = strchr(line, ':'), *b = a ? strchr(a + 1, ':') : NULL;
    if (!b) continue;
    *b = '\0';
    int memory = strstr(a + 1, "memory") != NULL; /* v1: "4:memory:/path"; v2: "0::/path" */
    if (memory || (!a[1] && !v1 && !path[0])) {
      snprintf(path, sizeof path, "%s", b + 1);
      v1 = memory;
    }
  }
  fclose(f);
  double room = -1;
  for (;;) {
    char lim_path[1200], use_path[1200];
    snprintf(lim_path, sizeof lim_path, v1 ? "/sys/fs/cgroup/memory%s/memory.limit_in_bytes" : "/sys/fs/cgroup%s/memory.max",
             path);
    snprintf(use_path, sizeof use_path, v1 ? "/sys/fs/cgroup/memory%s/memory.usage_in_bytes" : "/sys/fs/cgroup%s/memory.current",
             path);
    double limit = read_bytes_file(lim_path), used = read_bytes_file(use_path);
    /* v1 writes "no limit" as about 2^63 */
    if (limit > 0 && limit < 1e18 && used >= 0 && (room < 0 || limit - used < room)) room = limit > used ? limit - used : 0;
    if (!path[0]) break; /* the root was the last */
    char *slash = strrchr(path, '/');
    if (!slash) break;
    *slash = '\0'; /* "/a/b" -> "/a" -> "" (the root) */
  }
  return room;
}

void train_memory_available(train_memory_estimate *e) {
  double resident = train_memory_resident(), room = -1;
  snprintf(e->source, sizeof e->source, "unknown");
  FILE *f = fopen("/proc/meminfo", "r");
  if (f) {
    char line[256];
    long kb;
    while (fgets(line, sizeof line, f))
      if (sscanf(line, "MemAvailable: %ld kB", &kb) == 1) {
        room = (double)kb * 1024.0;
        snprintf(e->source, sizeof e->source, "MemAvailable in /proc/meminfo");
      }
    fclose(f);
  }
  double cg_room = cgroup_room();
  if (cg_room >= 0 && (room < 0 || cg_room < room)) {
    room = cg_room;
    snprintf(e->source, sizeof e->source, "the cgroup's memory limit");
  }
  /* A limit on the address space: allocations fail beyond it whatever the machine has. */
  struct rlimit rl;
  if (getrlimit(RLIMIT_AS, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
    double as_room = (double)rl.rlim_cur - address_space_in_use();
    if (as_room < 0) as_room = 0;
    if (room < 0 || as_room < room) {
      room = as_room;
      snprintf(e->source, sizeof e->source, "RLIMIT_AS, ulimit -v");
    }
  }
  e->resident = resident;
  e->available = room < 0 ? INFINITY : resident + room;
}

/* Binary units, as the log's "mem" column (getrusage's kilobytes / 1024); MB up to 10 GB. */
const char *train_memory_format(char *buf, size_t size, double bytes) {
  const double mb = 1024.0 * 1024.0;
  if (bytes >= 1024.0 * 1024.0 * mb)
    snprintf(buf, size, "%.1f TB", bytes / (1024.0 * 1024.0 * mb));
  else if (bytes >= 10 * 1024.0 * mb) /* below 10 GB in MB: estimates compared with the log's "mem" */
    snprintf(buf, size, "%.1f GB", bytes / (1024.0 * mb));
  else
    snprintf(buf, size, "%.0f MB", bytes / mb);
  return buf;
}

/* Saves (restore = 0, into a new *out) or restores the running statistics of a parameter set:
 * every tensor without a gradient (BatchNorm's running mean / var / batch count). */
static int snapshot(hakd_params *p, float **out, int restore) {
  int64_t total = 0;
  for (int i = 0; i < p->count; i++)
    if (!p->items[i]->requires_grad) total += hakd_numel(p->items[i]);
  if (!restore) {
    *out = malloc((size_t)(total ? total : 1) * sizeof(float));
    if (!*out) return hakd_error(HAKD_ENOMEM, "memory check: out of memory");
  }
  int64_t at = 0;
  for (int i = 0; i < p->count; i++) {
    hakd_tensor *t = p->items[i];
    if (t->requires_grad) continue;
    /* float and int32 buffers are both 4 bytes per element */
    size_t bytes = (size_t)hakd_numel(t) * sizeof(float);
    if (restore)
      memcpy(t->data, *out + at, bytes);
    else
      memcpy(*out + at, t->data, bytes);
    at += hakd_numel(t);
  }
  return 0;
}

/* One step as the trainer's train_step runs it (teacher without grad in eval mode, student
 * forward, CE on the logits upsampled to the crop, aux CE, distillation terms, backward), without
 * data loading or optimizer step; returns the planned block's bytes (activations, gradients,
 * step metadata) in *bytes. */
static int probe_step(const train_memory_probe *p, int n, int h, int w, double *bytes) {
  size_t pixels = (size_t)n * (size_t)h * (size_t)w;
  float *images = malloc(pixels * 3 * sizeof(float));
  int32_t *labels = malloc(pixels * sizeof(int32_t));
  hakd_ctx *ctx = hakd_ctx_new();
  int rc = images && labels && ctx ? 0 : hakd_error(HAKD_ENOMEM, "memory check: out of memory");
  if (!rc) {
    uint64_t rng = hakd_rng_seed(1);
    int K = hakd_model_num_classes(p->student);
    for (size_t i = 0; i < pixels * 3; i++) images[i] = hakd_rng_normal(&rng);
    for (size_t i = 0; i < pixels; i++) labels[i] = (int32_t)(hakd_rng_next(&rng) % (uint64_t)K);
    hakd_ctx_set_precision(ctx, p->precision);
    hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){n, 3, h, w}, images);
    hakd_tensor *y = hakd_tensor_wrap(ctx, HAKD_I32, 3, (int64_t[]){n, h, w}, labels);
    hakd_model_output tout, sout;
    if (p->teacher) {
      hakd_ctx_set_grad(ctx, 0);
      hakd_ctx_set_training(ctx, 0);
      rc = hakd_model_forward(p->teacher, ctx, x, &tout);
      hakd_ctx_set_grad(ctx, 1);
      hakd_ctx_set_training(ctx, 1);
    }
    if (!rc) rc = hakd_model_forward(p->student, ctx, x, &sout);
    hakd_tensor *total = NULL;
    if (!rc) {
      total = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.logits, h, w, 0), y, 255);
      if (sout.aux) {
        hakd_tensor *aux = hakd_cross_entropy(ctx, hakd_resize_bilinear(ctx, sout.aux, h, w, 0), y, 255);
        total = hakd_add(ctx, total, hakd_scale(ctx, aux, p->aux_weight));
      }
    }
    if (!rc && p->distiller) {
      hakd_distill_losses dl;
      /* past the warm-up, so that every distillation term is in the graph */
      rc = hakd_distiller_forward(p->distiller, ctx, p->teacher ? &tout : NULL, &sout, y,
                                  hakd_distiller_warmup_iters(p->distiller), &dl);
      if (!rc) total = hakd_add(ctx, total, dl.total);
    }
    if (!rc) rc = hakd_ctx_status(ctx);
    if (!rc) rc = hakd_backward(ctx, total);
    /* the reset packs the step's lifetimes into the block later steps use (mapped, untouched) */
    hakd_ctx_reset(ctx);
    if (!rc) *bytes = (double)hakd_ctx_get_stats(ctx).arena_capacity;
  }
  hakd_ctx_free(ctx);
  free(images);
  free(labels);
  if (rc) hakd_error_prefix("memory check: probe step at batch %d, %dx%d", n, h, w);
  return rc;
}

/* The crop's shape scaled to about `pixels`, each side a multiple of 32 (at least 32). */
static void probe_shape(int crop_h, int crop_w, double pixels, int *h, int *w) {
  double s = sqrt(pixels / ((double)crop_h * crop_w));
  *h = (int)lround(crop_h * s / 32.0) * 32;
  *w = (int)lround(crop_w * s / 32.0) * 32;
  if (*h < 32) *h = 32;
  if (*w < 32) *w = 32;
}

int train_memory_estimate_step(const train_memory_probe *p, train_memory_estimate *e) {
  memset(e, 0, sizeof *e);
  train_memory_available(e);
  hakd_params *sp = hakd_model_params(p->student);
  hakd_params *dp = p->distiller ? hakd_distiller_params(p->distiller) : NULL;
  float *saved_s = NULL, *saved_d = NULL;
  int rc = snapshot(sp, &saved_s, 0);
  if (!rc && dp) rc = snapshot(dp, &saved_d, 0);
  /* The ops' scratch block is grow-only and shared by the whole process: emptied here, its size
   * after the probes is theirs, not that of an earlier, larger run in this process (the demo
   * trains several models in one process). The next convolution rebuilds what it needs. */
  ops_release();
  int n = p->batch < 2 ? p->batch : 2;
  double crop = (double)p->crop_h * p->crop_w, want = (double)p->batch * crop;
  if (!rc && crop <= PROBE_BIG) {
    double bytes = 0;
    rc = probe_step(p, n, p->crop_h, p->crop_w, &bytes);
    e->step = bytes * p->batch / n;
    e->scratch = (double)ops_scratch_bytes() * p->batch / n;
  } else if (!rc) {
    int h1, w1, h2, w2;
    probe_shape(p->crop_h, p->crop_w, PROBE_SMALL, &h1, &w1);
    probe_shape(p->crop_h, p->crop_w, PROBE_BIG, &h2, &w2);
    double a1 = 0, a2 = 0, p1 = (double)h1 * w1, p2 = (double)h2 * w2;
    rc = probe_step(p, n, h1, w1, &a1);
    if (!rc) rc = probe_step(p, n, h2, w2, &a2);
    /* per image: a * pixels + b * pixels^2 through both probes; b < 0 (a constant part, e.g.
     * the step's metadata) is dropped, which scales the larger probe linearly */
    a1 /= n * p1, a2 /= n * p2;
    double b = (a2 - a1) / (p2 - p1);
    if (b < 0) b = 0;
    double a = a2 - b * p2;
    e->step = p->batch * (a * crop + b * crop * crop);
    /* im2col tiles, oneDNN reorders and bf16 operand copies grow at most with the batch's pixels */
    e->scratch = (double)ops_scratch_bytes() * want / (n * p2);
  }
  if (saved_s) snapshot(sp, &saved_s, 1);
  if (saved_d) snapshot(dp, &saved_d, 1);
  hakd_params_zero_grad(sp);
  if (dp) hakd_params_zero_grad(dp);
  free(saved_s);
  free(saved_d);
  if (rc) return rc;
  double trainable = (double)hakd_params_count(sp) + (dp ? (double)hakd_params_count(dp) : 0);
  e->fixed = trainable * sizeof(float) * (1 + p->optimizer_copies) + (double)p->batch_bytes +
             (double)ops_frozen_weights_bytes();
  e->total = e->resident + e->fixed + e->step + e->scratch;
  return 0;
}

int train_memory_check(const train_memory_probe *p, const char *what, FILE *log) {
  train_memory_estimate e;
  int rc = train_memory_estimate_step(p, &e);
  if (rc) return rc;
  char total[32], step[32], fixed[32], avail[32];
  train_memory_format(total, sizeof total, e.total);
  train_memory_format(step, sizeof step, e.step + e.scratch);
  train_memory_format(fixed, sizeof fixed, e.resident + e.fixed);
  train_memory_format(avail, sizeof avail, e.available);
  if (log) {
    fprintf(log, "memory: about %s for one %s step (activations and gradients %s, model, optimizer and batches %s); "
                 "%s available (%s)\n", total, what, step, fixed, isinf(e.available) ? "unknown" : avail, e.source);
    fflush(log);
  }
  if (e.total > e.available)
    return hakd_error(HAKD_ENOMEM,
                      "batch %d at %dx%d needs about %s for one %s step (activations and gradients %s, model, "
                      "optimizer and batches %s); this machine has %s available (%s); lower --batch or --crop "
                      "(--memory-check 0 skips this estimate)",
                      p->batch, p->crop_h, p->crop_w, total, what, step, fixed, avail, e.source);
  return 0;
}
