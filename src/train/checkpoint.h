/* Checkpoints of a training run: the model's state_dict (loadable in PyTorch) plus a sidecar
 * with everything else a bit-identical resume needs. Both are written atomically (temporary
 * file, fsync, rename) and carry the iteration, so a mismatched pair is detected. */
#ifndef HAKD_TRAIN_CHECKPOINT_H
#define HAKD_TRAIN_CHECKPOINT_H

#include "hakd/data.h"
#include "hakd/model.h"
#include "hakd/optim.h"

typedef struct {
  int64_t iteration;
  hakd_loader_state loader;
  uint64_t rng;
  double best_miou;
} checkpoint_state;

/* <prefix>.safetensors (model) and <prefix>.state.safetensors (optimizer moments, extra
 * parameters such as distillation projectors, loader/RNG state, the config text). */
int checkpoint_save(const char *prefix, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    const checkpoint_state *state, const char *config_text);
/* model_path is the .safetensors of the model; its sidecar is found beside it. */
int checkpoint_load(const char *model_path, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    checkpoint_state *state);

#endif
