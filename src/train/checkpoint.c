#include "train/checkpoint.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"

static void sidecar_path(char *out, size_t size, const char *model_path) {
  size_t n = strlen(model_path);
  const char *ext = ".safetensors";
  size_t k = strlen(ext);
  if (n > k && !strcmp(model_path + n - k, ext))
    snprintf(out, size, "%.*s.state.safetensors", (int)(n - k), model_path);
  else
    snprintf(out, size, "%s.state.safetensors", model_path);
}

int checkpoint_save(const char *prefix, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    const checkpoint_state *st, const char *config_text) {
  char model_path[1024], state_path[1100], iter_text[32], epoch[32], pos[32], rng[32], best[40];
  snprintf(model_path, sizeof model_path, "%s.safetensors", prefix);
  sidecar_path(state_path, sizeof state_path, model_path);
  snprintf(iter_text, sizeof iter_text, "%" PRId64, st->iteration);
  snprintf(epoch, sizeof epoch, "%" PRId64, st->loader.epoch);
  snprintf(pos, sizeof pos, "%" PRId64, st->loader.position);
  snprintf(rng, sizeof rng, "%" PRIu64, st->rng);
  snprintf(best, sizeof best, "%.17g", st->best_miou);
  /* The sidecar first: a crash between the two writes leaves an older model with a newer
   * sidecar, which checkpoint_load refuses by comparing iterations. */
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
  char steps[32];
  snprintf(steps, sizeof steps, "%" PRId64, opt ? hakd_optim_steps(opt) : 0);
  const char *meta[][2] = {{"iteration", iter_text}, {"loader_epoch", epoch}, {"loader_position", pos},
                           {"rng", rng}, {"best_miou", best}, {"optimizer_steps", steps},
                           {"model", hakd_model_name(model)}, {"config", config_text ? config_text : ""}};
  for (size_t i = 0; i < sizeof meta / sizeof meta[0] && !rc; i++) rc = hakd_st_writer_metadata(w, meta[i][0], meta[i][1]);
  if (!rc) rc = hakd_st_writer_write(w, state_path);
  hakd_st_writer_free(w);
  if (rc) return rc;
  const char *model_meta[] = {"iteration", iter_text, "model", hakd_model_name(model), "format", "pt", NULL};
  return hakd_params_save(hakd_model_params(model), model_path, model_meta);
}

static int meta_int(const hakd_st_file *f, const char *key, int64_t *out) {
  const char *v = hakd_st_metadata(f, key);
  char *end;
  if (!v) return hakd_error(HAKD_EFORMAT, "%s: no '%s' in the checkpoint metadata", hakd_st_path(f), key);
  *out = strtoll(v, &end, 10);
  if (*end) return hakd_error(HAKD_EFORMAT, "%s: metadata '%s' = '%s' is not an integer", hakd_st_path(f), key, v);
  return 0;
}

int checkpoint_load(const char *model_path, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    checkpoint_state *st) {
  char state_path[1100];
  sidecar_path(state_path, sizeof state_path, model_path);
  hakd_st_file *mf = NULL, *sf = NULL;
  int rc = hakd_st_open(model_path, &mf);
  if (!rc) rc = hakd_st_open(state_path, &sf);
  int64_t model_iter = -1, iter = 0, epoch = 0, pos = 0, steps = 0;
  if (!rc) rc = meta_int(mf, "iteration", &model_iter);
  if (!rc) rc = meta_int(sf, "iteration", &iter);
  if (!rc && iter != model_iter)
    rc = hakd_error(HAKD_EFORMAT, "%s is from iteration %lld but %s from %lld: an interrupted save? resume from another checkpoint",
                    model_path, (long long)model_iter, state_path, (long long)iter);
  if (!rc) rc = meta_int(sf, "loader_epoch", &epoch);
  if (!rc) rc = meta_int(sf, "loader_position", &pos);
  if (!rc) rc = meta_int(sf, "optimizer_steps", &steps);
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
    if (opt) hakd_optim_set_steps(opt, steps);
  }
  if (rc) hakd_error_prefix("resuming from %s", model_path);
  hakd_st_close(mf);
  hakd_st_close(sf);
  return rc;
}
