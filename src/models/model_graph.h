/* A model's inference graph, described op by op: every backbone and head has, beside its
 * forward, a `describe` walk that calls the same layers in the same order on symbolic values
 * instead of tensors. The graph sink that receives the calls (the ONNX exporter, src/interop/)
 * builds whatever it builds; models know nothing of file formats.
 *
 * Values are ids > 0 handed out by the sink; 0 means an earlier call failed, and every call
 * given a 0 returns 0, so a walk checks once at the end (as forward checks the context status).
 * Dimension 0 of every value is the batch, whose size the graph leaves open; the other
 * dimensions follow from the fixed input size. Inference semantics: BatchNorm uses its running
 * statistics, dropout and drop path are the identity. */
#ifndef HAKD_MODELS_MODEL_GRAPH_H
#define HAKD_MODELS_MODEL_GRAPH_H

#include "hakd/model.h"
#include "models/layers.h"

typedef struct model_graph model_graph;
struct model_graph {
  /* act(bn(conv(x)) + residual); bn NULL for a bare conv, residual 0 for none. */
  int (*conv)(model_graph *g, int x, const layer_conv *c, const layer_bn *bn, int residual, hakd_activation act);
  /* Linear on the last dim. */
  int (*linear)(model_graph *g, int x, const layer_linear *l);
  /* LayerNorm over the last dim. */
  int (*layernorm)(model_graph *g, int x, const layer_ln *ln);
  int (*maxpool)(model_graph *g, int x, int kernel, int stride, int padding);
  int (*adaptive_avgpool)(model_graph *g, int x, int64_t out_h, int64_t out_w);
  /* align_corners=False */
  int (*resize_bilinear)(model_graph *g, int x, int64_t out_h, int64_t out_w);
  int (*concat)(model_graph *g, int n, const int *xs, int axis);
  int (*add)(model_graph *g, int a, int b);
  int (*gelu)(model_graph *g, int x);
  /* shape[0] is not read: the batch stays what it is. */
  int (*reshape)(model_graph *g, int x, int ndim, const int64_t *shape);
  int (*permute)(model_graph *g, int x, const int *perm);
  /* alpha * a @ b (b's last two dims swapped when transpose_b), batched over the leading dims. */
  int (*matmul)(model_graph *g, int a, int b, int transpose_b, float alpha);
  int (*softmax)(model_graph *g, int x, int axis);
  /* ndim of x with its shape (shape[0] = 1 for the batch), or 0 for an invalid value. */
  int (*shape)(model_graph *g, int x, int64_t shape[HAKD_MAX_DIMS]);
};

/* Describes the model's inference graph from input value x (N, 3, H, W) and returns the logits
 * value (N, K, h, w) at the model's output stride, exactly what hakd_model_forward returns as
 * logits (the auxiliary head is not part of it), or 0 after an error. */
int hakd_model_describe(hakd_model *m, model_graph *g, int x);

#endif
