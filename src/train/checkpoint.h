/* Checkpoints of a training run. The checkpoint of iteration N is a pair of files in the work
 * directory: iter_N.safetensors (the model's state_dict, a plain safetensors file PyTorch loads)
 * and iter_N.state.safetensors (everything else a bit-identical resume needs). Each file is
 * written atomically (temporary file, fsync, rename) and both carry N.
 *
 * The pair is committed as one unit by the order of the writes: the sidecar first, then the
 * model file, whose rename is the commit point; only then do the convenience links
 * latest.safetensors / latest.state.safetensors move to the new pair and the older pairs go.
 * So at every moment (a SIGKILL, a power cut, a full disk) the newest model file whose sidecar
 * agrees is a complete checkpoint, and checkpoint_find_latest finds it. */
#ifndef HAKD_TRAIN_CHECKPOINT_H
#define HAKD_TRAIN_CHECKPOINT_H

#include <stdio.h>

#include "hakd/data.h"
#include "hakd/model.h"
#include "hakd/optim.h"

typedef struct {
  int64_t iteration;
  hakd_loader_state loader;
  uint64_t rng;
  double best_miou;
  int64_t skipped_nonfinite; /* batches skipped so far by --skip-nonfinite */
} checkpoint_state;

/* Writes and commits the pair of iteration state->iteration in work_dir, points the latest
 * links at it and removes every other pair (older ones, and newer ones when the run was resumed
 * from an older checkpoint) and temporary files of dead processes. On an error
 * (a full disk) the previous pair is left intact and the message names the file. saved_path
 * (may be NULL) receives the model file's path. */
int checkpoint_save(const char *work_dir, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    const checkpoint_state *state, const char *config_text, char *saved_path, size_t saved_size);
/* The newest complete pair in work_dir: 1 with its model file's path, 0 when there is none.
 * Pairs skipped on the way (an interrupted save) are noted on `log` (may be NULL). A regular
 * latest.safetensors written by hakd before iteration-named pairs is taken when no pair exists. */
int checkpoint_find_latest(const char *work_dir, char *path, size_t size, FILE *log);
/* model_path is the .safetensors of the model; its sidecar is found beside it (beside the
 * link's target when model_path is a symbolic link such as latest.safetensors). */
int checkpoint_load(const char *model_path, hakd_model *model, hakd_params *extra, hakd_optimizer *opt,
                    checkpoint_state *state);

#endif
