#include "train/checkpoint.h"

#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/config.h"
#include "hakd/error.h"
#include "hakd/io.h"

/* Test hook: HAKD_TEST_CRASH_AT=<point>[:<k>] makes the process SIGKILL itself the k-th time
 * (default 1) a save reaches <point>, so that the crash tests can stop a child at every step
 * of a save, including between the two files. Unset in normal use: one getenv per step. */
static void crash_point(const char *point) {
  static int hits;
  const char *spec = getenv("HAKD_TEST_CRASH_AT");
  if (!spec) return;
  size_t n = strcspn(spec, ":");
  if (strlen(point) != n || strncmp(spec, point, n)) return;
  int k = spec[n] == ':' ? atoi(spec + n + 1) : 1;
  if (++hits == k) raise(SIGKILL);
}

static void sidecar_path(char *out, size_t size, const char *model_path) {
  size_t n = strlen(model_path);
  const char *ext = ".safetensors";
  size_t k = strlen(ext);
  if (n > k && !strcmp(model_path + n - k, ext))
    snprintf(out, size, "%.*s.state.safetensors", (int)(n - k), model_path);
  else
    snprintf(out, size, "%s.state.safetensors", model_path);
}

/* "iter_<N>.safetensors" (is_state 0) or "iter_<N>.state.safetensors" (is_state 1), nothing else
 * (temporary files "iter_<N>.safetensors.tmp.<pid>" do not match). */
static int parse_pair_name(const char *name, int64_t *iter, int *is_state) {
  if (strncmp(name, "iter_", 5)) return 0;
  const char *p = name + 5, *digits = p;
  int64_t v = 0;
  while (*p >= '0' && *p <= '9' && p - digits < 18) v = v * 10 + (*p++ - '0');
  if (p == digits) return 0;
  if (!strcmp(p, ".safetensors")) *is_state = 0;
  else if (!strcmp(p, ".state.safetensors")) *is_state = 1;
  else return 0;
  *iter = v;
  return 1;
}

/* A temporary file left by a writer that no longer runs (killed mid-write): "<name>.tmp.<pid>"
 * of a checkpoint file or latest link whose pid is not a live process. */
static int stale_temporary(const char *name) {
  const char *tmp = strstr(name, ".tmp.");
  if (!tmp || (strncmp(name, "iter_", 5) && strncmp(name, "latest.", 7))) return 0;
  char *end;
  long pid = strtol(tmp + 5, &end, 10);
  if (*end || pid <= 0 || pid == (long)getpid()) return 0;
  return kill((pid_t)pid, 0) != 0 && errno == ESRCH;
}

/* Removes files of pairs other than `keep` (is_state selects model files or sidecars) and stale
 * temporary files. Best effort: a file that cannot be removed costs disk space, not safety. */
static void remove_other_pairs(const char *work_dir, int64_t keep, int is_state_wanted) {
  DIR *d = opendir(work_dir);
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d))) {
    int64_t iter;
    int is_state;
    int pair = parse_pair_name(e->d_name, &iter, &is_state);
    if ((pair && iter != keep && is_state == is_state_wanted) || (is_state_wanted && stale_temporary(e->d_name))) {
      char path[HAKD_PATH_MAX + 300];
      snprintf(path, sizeof path, "%s/%s", work_dir, e->d_name);
      unlink(path);
    }
  }
  closedir(d);
}

/* Points work_dir/link_name at target (a name in the same directory) by renaming a new link
 * over the old one, so the link is always whole. Symbolic links keep one copy of the bytes;
 * a hard link where the file system has none. */
static int point_link(const char *work_dir, const char *link_name, const char *target) {
  char link_path[HAKD_PATH_MAX + 64], tmp[HAKD_PATH_MAX + 96], target_path[HAKD_PATH_MAX + 64];
  snprintf(link_path, sizeof link_path, "%s/%s", work_dir, link_name);
  snprintf(tmp, sizeof tmp, "%s.tmp.%ld", link_path, (long)getpid());
  snprintf(target_path, sizeof target_path, "%s/%s", work_dir, target);
  unlink(tmp);
  if (symlink(target, tmp) && link(target_path, tmp))
    return hakd_error(HAKD_EIO, "%s: cannot link it to %s: %s", link_path, target, strerror(errno));
  if (rename(tmp, link_path)) {
    int rc = hakd_error(HAKD_EIO, "%s: cannot replace it by a link to %s: %s", link_path, target, strerror(errno));
    unlink(tmp);
    return rc;
  }
  return 0;
}

static int write_sidecar(const char *state_path, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                         const checkpoint_state *st, const char *config_text) {
  char iter_text[32], epoch[32], pos[32], rng[32], best[40], steps[32], skipped[32];
  snprintf(iter_text, sizeof iter_text, "%" PRId64, st->iteration);
  snprintf(epoch, sizeof epoch, "%" PRId64, st->loader.epoch);
  snprintf(pos, sizeof pos, "%" PRId64, st->loader.position);
  snprintf(rng, sizeof rng, "%" PRIu64, st->rng);
  snprintf(best, sizeof best, "%.17g", st->best_miou);
  snprintf(steps, sizeof steps, "%" PRId64, opt ? hakd_optim_steps(opt) : 0);
  snprintf(skipped, sizeof skipped, "%" PRId64, st->skipped_nonfinite);
  hakd_st_writer *w = hakd_st_writer_new();
  if (!w) return hakd_error(HAKD_ENOMEM, "out of memory writing %s", state_path);
  int rc = 0;
  for (int i = 0; extra && i < extra->count && !rc; i++) {
    const hakd_tensor *t = extra->items[i];
    rc = hakd_st_writer_add(w, t->name, HAKD_ST_F32, t->ndim, t->shape, t->data);
  }
  for (int i = 0; opt && i < hakd_optim_state_count(opt) && !rc; i++) {
    const char *name;
    float *data;
    int64_t n;
    hakd_optim_state_at(opt, i, &name, &data, &n);
    char key[400];
    snprintf(key, sizeof key, "optimizer.%s", name);
    rc = hakd_st_writer_add(w, key, HAKD_ST_F32, 1, &n, data);
  }
  const char *meta[][2] = {{"iteration", iter_text},      {"loader_epoch", epoch},
                           {"loader_position", pos},      {"rng", rng},
                           {"best_miou", best},           {"optimizer_steps", steps},
                           {"skipped_nonfinite", skipped}, {"model", hakd_model_name(model)},
                           {"config", config_text ? config_text : ""}};
  for (size_t i = 0; i < sizeof meta / sizeof meta[0] && !rc; i++) rc = hakd_st_writer_metadata(w, meta[i][0], meta[i][1]);
  if (!rc) rc = hakd_st_writer_write(w, state_path);
  hakd_st_writer_free(w);
  return rc;
}

int checkpoint_save(const char *work_dir, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    const checkpoint_state *st, const char *config_text, char *saved_path, size_t saved_size) {
  char model_name[64], state_name[64], model_path[HAKD_PATH_MAX + 80], state_path[HAKD_PATH_MAX + 80], iter_text[32];
  snprintf(model_name, sizeof model_name, "iter_%" PRId64 ".safetensors", st->iteration);
  snprintf(state_name, sizeof state_name, "iter_%" PRId64 ".state.safetensors", st->iteration);
  snprintf(model_path, sizeof model_path, "%s/%s", work_dir, model_name);
  snprintf(state_path, sizeof state_path, "%s/%s", work_dir, state_name);
  snprintf(iter_text, sizeof iter_text, "%" PRId64, st->iteration);
  crash_point("begin");
  /* A model file of this iteration from an earlier run (resumed from an older checkpoint) must
   * not pair with the new sidecar while the new model file is being written. */
  unlink(model_path);
  int rc = write_sidecar(state_path, model, extra, opt, st, config_text);
  if (rc) return rc;
  crash_point("state-written");
  /* the model's name and options first (hakd_model_save), so that the file opens by itself */
  const char *model_meta[] = {"iteration", iter_text, "format", "pt", NULL};
  rc = hakd_model_save(model, model_path, model_meta);
  if (rc) {
    unlink(state_path); /* a sidecar without its model is never used; do not leave it */
    return rc;
  }
  /* Committed: from here on a crash leaves this pair as the newest complete one. */
  crash_point("model-written");
  if ((rc = point_link(work_dir, "latest.state.safetensors", state_name))) return rc;
  crash_point("latest-state-linked");
  if ((rc = point_link(work_dir, "latest.safetensors", model_name))) return rc;
  crash_point("latest-linked");
  /* Model files before sidecars: a sidecar left alone by a crash here is ignored. */
  remove_other_pairs(work_dir, st->iteration, 0);
  crash_point("old-model-removed");
  remove_other_pairs(work_dir, st->iteration, 1);
  crash_point("done");
  if (saved_path) snprintf(saved_path, saved_size, "%s", model_path);
  return 0;
}

static int meta_int(const hakd_st_file *f, const char *key, int64_t *out) {
  const char *v = hakd_st_metadata(f, key);
  char *end;
  if (!v) return hakd_error(HAKD_EFORMAT, "%s: no '%s' in the checkpoint metadata", hakd_st_path(f), key);
  *out = strtoll(v, &end, 10);
  if (*end || end == v) return hakd_error(HAKD_EFORMAT, "%s: metadata '%s' = '%s' is not an integer", hakd_st_path(f), key, v);
  return 0;
}

/* Opens the pair and checks that both files parse and carry the same iteration. */
static int open_pair(const char *model_path, hakd_st_file **mf, hakd_st_file **sf, int64_t *iteration) {
  char resolved[PATH_MAX], state_path[PATH_MAX + 32];
  sidecar_path(state_path, sizeof state_path, realpath(model_path, resolved) ? resolved : model_path);
  *mf = *sf = NULL;
  int64_t model_iter = -1, iter = -1;
  int rc = hakd_st_open(model_path, mf);
  if (!rc) rc = hakd_st_open(state_path, sf);
  if (!rc) rc = meta_int(*mf, "iteration", &model_iter);
  if (!rc) rc = meta_int(*sf, "iteration", &iter);
  if (!rc && iter != model_iter)
    rc = hakd_error(HAKD_EFORMAT, "%s is from iteration %lld but %s from %lld: an interrupted save? use --resume auto",
                    model_path, (long long)model_iter, state_path, (long long)iter);
  if (rc) {
    hakd_st_close(*mf);
    hakd_st_close(*sf);
    *mf = *sf = NULL;
  }
  *iteration = iter;
  return rc;
}

static int compare_desc(const void *a, const void *b) {
  int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
  return x < y ? 1 : x > y ? -1 : 0;
}

int checkpoint_find_latest(const char *work_dir, char *path, size_t size, FILE *log) {
  DIR *d = opendir(work_dir);
  if (!d) return 0;
  int64_t *iters = NULL;
  size_t n = 0, cap = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    int64_t iter;
    int is_state;
    if (!parse_pair_name(e->d_name, &iter, &is_state) || is_state) continue;
    if (n == cap) {
      int64_t *grown = realloc(iters, (cap = cap ? 2 * cap : 16) * sizeof *iters);
      if (!grown) {
        free(iters);
        closedir(d);
        return hakd_error(HAKD_ENOMEM, "%s: out of memory listing checkpoints", work_dir);
      }
      iters = grown;
    }
    iters[n++] = iter;
  }
  closedir(d);
  if (n) qsort(iters, n, sizeof *iters, compare_desc); /* qsort(NULL, 0) is undefined */
  int found = 0;
  for (size_t i = 0; i < n && !found; i++) {
    snprintf(path, size, "%s/iter_%" PRId64 ".safetensors", work_dir, iters[i]);
    hakd_st_file *mf, *sf;
    int64_t iter;
    if (open_pair(path, &mf, &sf, &iter)) {
      if (log) fprintf(log, "resume auto: skipping %s (%s)\n", path, hakd_error_message());
      continue;
    }
    hakd_st_close(mf);
    hakd_st_close(sf);
    found = 1;
  }
  free(iters);
  if (!found) {
    /* A work directory of a hakd that wrote latest.* as the files themselves. */
    struct stat sb;
    snprintf(path, size, "%s/latest.safetensors", work_dir);
    if (lstat(path, &sb) == 0 && S_ISREG(sb.st_mode)) found = 1;
  }
  hakd_error_clear();
  return found;
}

int checkpoint_load(const char *model_path, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    checkpoint_state *st) {
  hakd_st_file *mf = NULL, *sf = NULL;
  int64_t iter = 0, epoch = 0, pos = 0, steps = 0, skipped = 0;
  int rc = open_pair(model_path, &mf, &sf, &iter);
  if (!rc) rc = meta_int(sf, "loader_epoch", &epoch);
  if (!rc) rc = meta_int(sf, "loader_position", &pos);
  if (!rc) rc = meta_int(sf, "optimizer_steps", &steps);
  /* Absent in checkpoints written before --skip-nonfinite existed. */
  if (!rc && hakd_st_metadata(sf, "skipped_nonfinite")) rc = meta_int(sf, "skipped_nonfinite", &skipped);
  if (!rc) {
    hakd_load_options o;
    hakd_load_options_default(&o);
    rc = hakd_model_load(model, model_path, &o, NULL);
  }
  for (int i = 0; extra && i < extra->count && !rc; i++) {
    hakd_tensor *t = extra->items[i];
    rc = hakd_st_read_f32(sf, t->name, hakd_f32(t), hakd_numel(t));
  }
  for (int i = 0; opt && i < hakd_optim_state_count(opt) && !rc; i++) {
    const char *name;
    float *data;
    int64_t n;
    hakd_optim_state_at(opt, i, &name, &data, &n);
    char key[400];
    snprintf(key, sizeof key, "optimizer.%s", name);
    rc = hakd_st_read_f32(sf, key, data, n);
  }
  if (!rc) {
    const char *rng = hakd_st_metadata(sf, "rng"), *best = hakd_st_metadata(sf, "best_miou");
    st->iteration = iter;
    st->loader.epoch = epoch;
    st->loader.position = pos;
    st->rng = rng ? strtoull(rng, NULL, 10) : 0;
    st->best_miou = best ? strtod(best, NULL) : 0;
    st->skipped_nonfinite = skipped;
    if (opt) hakd_optim_set_steps(opt, steps);
  }
  if (rc) hakd_error_prefix("resuming from %s", model_path);
  hakd_st_close(mf);
  hakd_st_close(sf);
  return rc;
}
