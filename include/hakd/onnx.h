/* ONNX export of a model's inference graph (what `hakd export` writes).
 *
 * The graph has one float32 input "input" (N, 3, H, W) with the batch N left open and one output
 * "logits" (N, K, h, w) at the model's native output stride: the tensor hakd_model_forward returns
 * as logits in inference mode and `hakd predict --save-logits` writes (no final upsampling, no
 * auxiliary head). Input normalisation stays outside, as for predict's .npy input. Opset 17,
 * IR version 8 (LayerNormalization is an opset-17 operator); every BatchNorm is folded into the
 * convolution before it; GELU is its exact erf form; bilinear resizing (align_corners=False) is
 * Resize with the half_pixel coordinate mode. Parameters keep their state_dict names (a conv with
 * a folded BatchNorm under the conv's `.weight` / `.bias`; a linear layer's weight stored
 * transposed, (in, out), for MatMul); helper constants are named `const.*`. */
#ifndef HAKD_ONNX_H
#define HAKD_ONNX_H

#include "hakd/model.h"

#define HAKD_ONNX_OPSET 17

typedef struct {
  int opset;
  int nodes;
  int initializers;
  int64_t parameter_values; /* floats of the initializers made from the model's parameters */
  int64_t constant_values;  /* elements of the `const.*` helper initializers */
  int64_t file_bytes;
} hakd_onnx_report;

/* Writes the model's graph for inputs of height x width to path (atomically: on any error no file
 * is left there). report may be NULL. Errors name the model, the size or the path. */
int hakd_onnx_export(hakd_model *m, int height, int width, const char *path, hakd_onnx_report *report);

#endif
