/* Embedding hakd: open a trained model once, segment images from any number of threads.
 *
 *   hakd_model *m;
 *   if (hakd_model_open("best.safetensors", NULL, NULL, &m)) { puts(hakd_error_message()); ... }
 *   uint8_t *mask = malloc(w * h);
 *   hakd_model_predict(m, rgb, h, w, 3 * w, mask);   // class index per pixel
 *   hakd_model_free(m);
 *
 * Thread safety: hakd_model_predict and hakd_model_predict_logits only read the model, and every
 * call runs in its own workspace (a step context of its own; the convolution scratch and oneDNN
 * primitive caches are per thread), so several threads may predict with one model at the same
 * time and get exactly what serial calls give. Do not free or reload the model while a predict
 * runs. Each call's compute is itself parallel (OpenMP, OMP_NUM_THREADS or hakd_set_threads per
 * calling thread); with several calling threads, fewer threads per call avoid oversubscription.
 * The model is frozen (hakd_params_freeze, hakd/tensor.h): each calling thread keeps its
 * convolutions' weights converted for oneDNN between calls (up to HAKD_FROZEN_CACHE_MB per thread),
 * the results bit for bit those of an unfrozen model; code that writes the weights itself calls
 * hakd_tensor_changed on them (hakd_model_load does).
 * Errors: functions return 0 or a negative hakd_status, with hakd_error_message() (per thread)
 * naming the file, argument or size. Link with pkg-config's `hakd` or CMake's hakd::hakd. */
#ifndef HAKD_INFER_H
#define HAKD_INFER_H

#include <stdint.h>

#include "hakd/model.h"

/* Creates the model a weights file describes and loads the file into it (strict: every key must
 * match; see hakd_model_load for the layouts understood). Files hakd writes (training checkpoints,
 * best.safetensors, distilled students, `hakd convert --model` output) carry the model's name and
 * options in their metadata (see hakd_model_save), so name NULL and opts NULL open them as trained:
 * width, ASPP rates, class count, deep stem and aux head included. For a file without them (a
 * PyTorch .pth, safetensors of other tools, hakd's before these keys) name is needed; num_classes
 * is read from the shape of the classifier weight and the width from the stem's, the rest are
 * the reference options; a load that then fails says which options to pass. In opts,
 * num_classes 0, width 0, aspp_dilations all 0 and aux_head -1 also mean "as the file says";
 * other values are the caller's, and one that contradicts the file's metadata (or a name that is
 * not the file's model) is refused (HAKD_EINVAL) naming the file, the option and both values.
 * On error *out is NULL. Free with hakd_model_free. */
int hakd_model_open(const char *path, const char *name, const hakd_model_options *opts, hakd_model **out);

/* Segments one image: rgb holds `height` rows of `width` pixels, 3 bytes each (R, G, B), rows
 * `stride` bytes apart (stride >= 3 * width). The image is normalised with the model's mean and
 * std (hakd_model_mean_std), run through the model at its own size, the logits upsampled
 * bilinearly (align_corners=False) to height x width, and out_mask[y * width + x] gets the
 * arg-max class: what `hakd predict --save-mask` writes. Needs num_classes <= 256 (use the
 * logits variant otherwise). */
int hakd_model_predict(hakd_model *m, const uint8_t *rgb, int height, int width, int stride, uint8_t *out_mask);

/* Same image handling; out_logits gets the upsampled logits (K, height, width), K =
 * hakd_model_num_classes(m), i.e. K * height * width floats, class-major. */
int hakd_model_predict_logits(hakd_model *m, const uint8_t *rgb, int height, int width, int stride,
                              float *out_logits);

#endif
