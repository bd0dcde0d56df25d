/* ONNX export: a model_graph sink (models/model_graph.h) that turns each described layer into
 * ONNX nodes and initializers, written with our own protobuf writer (interop/protobuf.h).
 * Field numbers are those of onnx/onnx.proto (IR version 8). Nodes and initializers are encoded
 * as they come into two buffers of GraphProto fields; the model is assembled around them at the
 * end. Shapes are tracked here (batch 1 in dimension 0, written as the symbolic "N"), so that
 * models can ask for them as forward reads tensor shapes. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/onnx.h"
#include "interop/protobuf.h"
#include "io/fileio.h"
#include "models/model_graph.h"

/* onnx.proto field numbers */
enum {
  MODEL_IR_VERSION = 1, MODEL_PRODUCER_NAME = 2, MODEL_PRODUCER_VERSION = 3, MODEL_GRAPH = 7, MODEL_OPSET_IMPORT = 8,
  OPSET_VERSION = 2,
  GRAPH_NODE = 1, GRAPH_NAME = 2, GRAPH_INITIALIZER = 5, GRAPH_INPUT = 11, GRAPH_OUTPUT = 12,
  NODE_INPUT = 1, NODE_OUTPUT = 2, NODE_NAME = 3, NODE_OP_TYPE = 4, NODE_ATTRIBUTE = 5,
  ATTR_NAME = 1, ATTR_F = 2, ATTR_I = 3, ATTR_S = 4, ATTR_INTS = 8, ATTR_TYPE = 20,
  ATTR_TYPE_FLOAT = 1, ATTR_TYPE_INT = 2, ATTR_TYPE_STRING = 3, ATTR_TYPE_INTS = 7,
  TENSOR_DIMS = 1, TENSOR_DATA_TYPE = 2, TENSOR_NAME = 8, TENSOR_RAW_DATA = 9,
  DTYPE_FLOAT = 1, DTYPE_INT64 = 7,
  VALUE_INFO_NAME = 1, VALUE_INFO_TYPE = 2,
  TYPE_TENSOR = 1, TYPE_TENSOR_ELEM_TYPE = 1, TYPE_TENSOR_SHAPE = 2,
  SHAPE_DIM = 1, DIM_VALUE = 1, DIM_PARAM = 2,
};
#define ONNX_IR_VERSION 8
#define ONNX_NAME_MAX 192

typedef struct {
  int ndim;
  int64_t shape[HAKD_MAX_DIMS];
} onnx_value;

typedef struct {
  model_graph base; /* first: the sink's functions receive &base */
  const char *model_name;
  pb_buf nodes, initializers;
  onnx_value *values; /* values[id], id 1 = the graph input */
  int n_values, capacity;
  int n_nodes, n_initializers, n_consts;
  int64_t parameter_values, constant_values;
  int status;
  int have_zero, have_six, have_gelu_consts;
} onnx_builder;

static int fail(onnx_builder *b, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(onnx_builder *b, int status, const char *fmt, ...) {
  if (!b->status) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    b->status = hakd_error(status, "exporting %s: %s", b->model_name, msg);
  }
  return 0;
}

static const onnx_value *value_of(onnx_builder *b, int id) {
  return id > 0 && id <= b->n_values && !b->status ? &b->values[id - 1] : NULL;
}

static const char *value_name(int id, char buf[ONNX_NAME_MAX]) {
  if (id == 1) return "input";
  snprintf(buf, ONNX_NAME_MAX, "t%d", id);
  return buf;
}

static int new_value(onnx_builder *b, int ndim, const int64_t *shape) {
  if (b->status) return 0;
  if (b->n_values == b->capacity) {
    int capacity = b->capacity ? 2 * b->capacity : 256;
    onnx_value *v = realloc(b->values, (size_t)capacity * sizeof *v);
    if (!v) return fail(b, HAKD_ENOMEM, "out of memory");
    b->values = v;
    b->capacity = capacity;
  }
  onnx_value *v = &b->values[b->n_values++];
  v->ndim = ndim;
  memcpy(v->shape, shape, (size_t)ndim * sizeof *shape);
  return b->n_values;
}

/* ---- attributes and nodes ---- */

static void attr_begin(pb_buf *a, const char *name, int type) {
  pb_string(a, ATTR_NAME, name);
  pb_int(a, ATTR_TYPE, type);
}

static void attr_int(pb_buf *node, const char *name, int64_t v) {
  pb_buf a = {0};
  attr_begin(&a, name, ATTR_TYPE_INT);
  pb_int(&a, ATTR_I, v);
  pb_message(node, NODE_ATTRIBUTE, &a);
  pb_free(&a);
}

static void attr_float(pb_buf *node, const char *name, float v) {
  pb_buf a = {0};
  attr_begin(&a, name, ATTR_TYPE_FLOAT);
  pb_float(&a, ATTR_F, v);
  pb_message(node, NODE_ATTRIBUTE, &a);
  pb_free(&a);
}

static void attr_string(pb_buf *node, const char *name, const char *s) {
  pb_buf a = {0};
  attr_begin(&a, name, ATTR_TYPE_STRING);
  pb_string(&a, ATTR_S, s);
  pb_message(node, NODE_ATTRIBUTE, &a);
  pb_free(&a);
}

static void attr_ints(pb_buf *node, const char *name, int n, const int64_t *v) {
  pb_buf a = {0};
  attr_begin(&a, name, ATTR_TYPE_INTS);
  for (int i = 0; i < n; i++) pb_int(&a, ATTR_INTS, v[i]); /* proto2 repeated: unpacked */
  pb_message(node, NODE_ATTRIBUTE, &a);
  pb_free(&a);
}

/* Appends a node with the given input names, one output value (named out_name, or after its id
 * when NULL) and the attributes already encoded in attrs (may be NULL; consumed). Returns out. */
static int emit_as(onnx_builder *b, const char *op, int n_in, const char *const *in, int out, const char *out_name,
                   pb_buf *attrs) {
  if (!out || b->status) {
    if (attrs) pb_free(attrs);
    return 0;
  }
  char name[ONNX_NAME_MAX];
  pb_buf node = {0};
  for (int i = 0; i < n_in; i++) pb_string(&node, NODE_INPUT, in[i]);
  pb_string(&node, NODE_OUTPUT, out_name ? out_name : value_name(out, name));
  snprintf(name, sizeof name, "%s_%d", op, b->n_nodes);
  pb_string(&node, NODE_NAME, name);
  pb_string(&node, NODE_OP_TYPE, op);
  if (attrs) {
    pb_bytes_raw(&node, attrs->data, attrs->size);
    if (attrs->failed) node.failed = 1;
    pb_free(attrs);
  }
  pb_message(&b->nodes, GRAPH_NODE, &node);
  pb_free(&node);
  b->n_nodes++;
  return out;
}

static int emit(onnx_builder *b, const char *op, int n_in, const char *const *in, int out, pb_buf *attrs) {
  return emit_as(b, op, n_in, in, out, NULL, attrs);
}

/* Node whose inputs are all values. */
static int emit_values(onnx_builder *b, const char *op, int n_in, const int *in, int out, pb_buf *attrs) {
  char names[8][ONNX_NAME_MAX];
  const char *ptrs[8];
  for (int i = 0; i < n_in && i < 8; i++) ptrs[i] = value_name(in[i], names[i]);
  return emit(b, op, n_in, ptrs, out, attrs);
}

/* ---- initializers ---- */

static void add_initializer(onnx_builder *b, const char *name, int dtype, int ndim, const int64_t *dims,
                            const void *data, int is_parameter) {
  if (b->status) return;
  int64_t n = 1;
  for (int i = 0; i < ndim; i++) n *= dims[i];
  size_t elem = dtype == DTYPE_INT64 ? 8 : 4;
  pb_buf t = {0};
  for (int i = 0; i < ndim; i++) pb_int(&t, TENSOR_DIMS, dims[i]);
  pb_int(&t, TENSOR_DATA_TYPE, dtype);
  pb_string(&t, TENSOR_NAME, name);
  /* raw_data is little-endian whatever the host: written byte by byte */
  uint8_t *raw = malloc((size_t)n * elem + 1);
  if (!raw) {
    pb_free(&t);
    fail(b, HAKD_ENOMEM, "out of memory for initializer %s", name);
    return;
  }
  for (int64_t i = 0; i < n; i++) {
    uint64_t bits = 0;
    if (dtype == DTYPE_INT64) {
      int64_t v = ((const int64_t *)data)[i];
      memcpy(&bits, &v, 8);
    } else {
      uint32_t v32;
      memcpy(&v32, (const float *)data + i, 4);
      bits = v32;
    }
    for (size_t k = 0; k < elem; k++) raw[(size_t)i * elem + k] = (uint8_t)(bits >> (8 * k));
  }
  pb_bytes(&t, TENSOR_RAW_DATA, raw, (size_t)n * elem);
  free(raw);
  pb_message(&b->initializers, GRAPH_INITIALIZER, &t);
  pb_free(&t);
  b->n_initializers++;
  if (is_parameter)
    b->parameter_values += n;
  else
    b->constant_values += n;
}

/* A helper constant `const.<n>`; name written to buf. */
static const char *add_const(onnx_builder *b, int dtype, int ndim, const int64_t *dims, const void *data,
                             char buf[ONNX_NAME_MAX]) {
  snprintf(buf, ONNX_NAME_MAX, "const.%d", b->n_consts++);
  add_initializer(b, buf, dtype, ndim, dims, data, 0);
  return buf;
}

static const char *const_int64s(onnx_builder *b, int n, const int64_t *v, char buf[ONNX_NAME_MAX]) {
  int64_t dims[1] = {n};
  return add_const(b, DTYPE_INT64, 1, dims, v, buf);
}

/* Shared scalar constants, each made once. */
static const char *shared_scalar(onnx_builder *b, int *have, const char *name, float v) {
  if (!*have) {
    add_initializer(b, name, DTYPE_FLOAT, 0, NULL, &v, 0);
    *have = 1;
  }
  return name;
}

/* ---- the sink ---- */

#define BUILDER(g) ((onnx_builder *)(g))

static int g_shape(model_graph *g, int x, int64_t shape[HAKD_MAX_DIMS]) {
  const onnx_value *v = value_of(BUILDER(g), x);
  if (!v) return 0;
  memcpy(shape, v->shape, (size_t)v->ndim * sizeof *shape);
  return v->ndim;
}

static int g_conv(model_graph *g, int x, const layer_conv *c, const layer_bn *bn, int residual, hakd_activation act) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v || (residual && !value_of(b, residual))) return 0;
  const hakd_tensor *w = c->weight;
  int64_t cout = w->shape[0], k = w->shape[2];
  if (v->ndim != 4 || v->shape[1] != w->shape[1] * c->groups)
    return fail(b, HAKD_ESHAPE, "%s: input has %lld channels, the conv takes %lld", w->name, (long long)v->shape[1],
                (long long)(w->shape[1] * c->groups));
  int64_t span = (int64_t)c->dilation * (k - 1) + 1;
  int64_t oh = (v->shape[2] + 2 * c->padding - span) / c->stride + 1;
  int64_t ow = (v->shape[3] + 2 * c->padding - span) / c->stride + 1;
  if (v->shape[2] + 2 * c->padding < span || v->shape[3] + 2 * c->padding < span)
    return fail(b, HAKD_ESHAPE, "%s: kernel larger than its padded %lldx%lld input", w->name, (long long)v->shape[2],
                (long long)v->shape[3]);
  /* eval BatchNorm folded: W' = W * scale[co], b' = b * scale + shift, with scale and shift
   * computed as layer_conv_bn_forward computes them for the fused inference op */
  int64_t per_out = hakd_numel(w) / cout;
  float *wf = malloc((size_t)hakd_numel(w) * sizeof *wf), *bf = malloc((size_t)cout * sizeof *bf);
  if (!wf || !bf) {
    free(wf), free(bf);
    return fail(b, HAKD_ENOMEM, "out of memory");
  }
  for (int64_t o = 0; o < cout; o++) {
    float scale = 1.0f, shift = 0.0f, bias = c->bias ? hakd_f32(c->bias)[o] : 0.0f;
    if (bn) {
      float rstd = (float)(1.0 / sqrt((double)hakd_f32(bn->running_var)[o] + (double)bn->eps));
      scale = rstd * (bn->weight ? hakd_f32(bn->weight)[o] : 1.0f);
      shift = (bn->bias ? hakd_f32(bn->bias)[o] : 0.0f) - hakd_f32(bn->running_mean)[o] * scale;
    }
    for (int64_t i = 0; i < per_out; i++) wf[o * per_out + i] = hakd_f32(w)[o * per_out + i] * scale;
    bf[o] = bias * scale + shift;
  }
  char bias_name[ONNX_NAME_MAX], in_name[ONNX_NAME_MAX];
  size_t len = strlen(w->name);
  if (c->bias)
    snprintf(bias_name, sizeof bias_name, "%s", c->bias->name);
  else if (len > 7 && !strcmp(w->name + len - 7, ".weight"))
    snprintf(bias_name, sizeof bias_name, "%.*s.bias", (int)(len - 7), w->name);
  else
    snprintf(bias_name, sizeof bias_name, "%s.bias", w->name);
  add_initializer(b, w->name, DTYPE_FLOAT, 4, w->shape, wf, 1);
  add_initializer(b, bias_name, DTYPE_FLOAT, 1, &cout, bf, 1);
  free(wf), free(bf);
  pb_buf attrs = {0};
  int64_t pair[2] = {k, k}, pads[4] = {c->padding, c->padding, c->padding, c->padding};
  attr_ints(&attrs, "kernel_shape", 2, pair);
  pair[0] = pair[1] = c->stride;
  attr_ints(&attrs, "strides", 2, pair);
  attr_ints(&attrs, "pads", 4, pads);
  pair[0] = pair[1] = c->dilation;
  attr_ints(&attrs, "dilations", 2, pair);
  attr_int(&attrs, "group", c->groups);
  int64_t shape[4] = {v->shape[0], cout, oh, ow};
  const char *in[3] = {value_name(x, in_name), w->name, bias_name};
  int y = emit(b, "Conv", 3, in, new_value(b, 4, shape), &attrs);
  if (residual) {
    const onnx_value *r = value_of(b, residual);
    if (r && (r->ndim != 4 || r->shape[1] != cout || r->shape[2] != oh || r->shape[3] != ow))
      return fail(b, HAKD_ESHAPE, "%s: residual shape differs from the conv output", w->name);
    y = emit_values(b, "Add", 2, (int[]){y, residual}, new_value(b, 4, shape), NULL);
  }
  if (act == HAKD_ACT_RELU) return emit_values(b, "Relu", 1, &y, new_value(b, 4, shape), NULL);
  if (act == HAKD_ACT_RELU6) {
    char y_name[ONNX_NAME_MAX];
    const char *clip[3] = {value_name(y, y_name), shared_scalar(b, &b->have_zero, "const.zero", 0.0f),
                           shared_scalar(b, &b->have_six, "const.six", 6.0f)};
    return emit(b, "Clip", 3, clip, new_value(b, 4, shape), NULL);
  }
  return y;
}

static int g_linear(model_graph *g, int x, const layer_linear *l) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t out = l->weight->shape[0], in = l->weight->shape[1];
  if (v->shape[v->ndim - 1] != in)
    return fail(b, HAKD_ESHAPE, "%s: input has %lld features, the layer takes %lld", l->weight->name,
                (long long)v->shape[v->ndim - 1], (long long)in);
  float *wt = malloc((size_t)(in * out) * sizeof *wt);
  if (!wt) return fail(b, HAKD_ENOMEM, "out of memory");
  for (int64_t o = 0; o < out; o++)
    for (int64_t i = 0; i < in; i++) wt[i * out + o] = hakd_f32(l->weight)[o * in + i];
  int64_t dims[2] = {in, out};
  add_initializer(b, l->weight->name, DTYPE_FLOAT, 2, dims, wt, 1);
  free(wt);
  int64_t shape[HAKD_MAX_DIMS];
  memcpy(shape, v->shape, sizeof shape);
  shape[v->ndim - 1] = out;
  int ndim = v->ndim;
  char x_name[ONNX_NAME_MAX];
  const char *in_names[2] = {value_name(x, x_name), l->weight->name};
  int y = emit(b, "MatMul", 2, in_names, new_value(b, ndim, shape), NULL);
  if (!l->bias) return y;
  add_initializer(b, l->bias->name, DTYPE_FLOAT, 1, &out, hakd_f32(l->bias), 1);
  in_names[0] = value_name(y, x_name);
  in_names[1] = l->bias->name;
  return emit(b, "Add", 2, in_names, new_value(b, ndim, shape), NULL);
}

static int g_layernorm(model_graph *g, int x, const layer_ln *ln) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t dim = ln->weight->shape[0];
  if (v->shape[v->ndim - 1] != dim)
    return fail(b, HAKD_ESHAPE, "%s: input has %lld features, the norm takes %lld", ln->weight->name,
                (long long)v->shape[v->ndim - 1], (long long)dim);
  add_initializer(b, ln->weight->name, DTYPE_FLOAT, 1, &dim, hakd_f32(ln->weight), 1);
  add_initializer(b, ln->bias->name, DTYPE_FLOAT, 1, &dim, hakd_f32(ln->bias), 1);
  pb_buf attrs = {0};
  attr_int(&attrs, "axis", -1);
  attr_float(&attrs, "epsilon", ln->eps);
  char x_name[ONNX_NAME_MAX];
  const char *in[3] = {value_name(x, x_name), ln->weight->name, ln->bias->name};
  return emit(b, "LayerNormalization", 3, in, new_value(b, v->ndim, v->shape), &attrs);
}

static int g_maxpool(model_graph *g, int x, int kernel, int stride, int padding) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t shape[4] = {v->shape[0], v->shape[1], (v->shape[2] + 2 * padding - kernel) / stride + 1,
                      (v->shape[3] + 2 * padding - kernel) / stride + 1};
  pb_buf attrs = {0};
  int64_t k[2] = {kernel, kernel}, s[2] = {stride, stride}, p[4] = {padding, padding, padding, padding};
  attr_ints(&attrs, "kernel_shape", 2, k);
  attr_ints(&attrs, "strides", 2, s);
  attr_ints(&attrs, "pads", 4, p);
  return emit_values(b, "MaxPool", 1, &x, new_value(b, 4, shape), &attrs);
}

static int g_reshape(model_graph *g, int x, int ndim, const int64_t *shape);

/* torch's adaptive average pooling: bin i of n over a side of length L covers
 * [floor(i L / n), ceil((i + 1) L / n)). One 1x1 bin is GlobalAveragePool; equal bins are
 * AveragePool; otherwise the pooling is a matrix (H*W, oh*ow) applied by MatMul. */
static int g_adaptive_avgpool(model_graph *g, int x, int64_t oh, int64_t ow) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t n = v->shape[0], c = v->shape[1], h = v->shape[2], w = v->shape[3];
  int64_t shape[4] = {n, c, oh, ow};
  if (oh == 1 && ow == 1) return emit_values(b, "GlobalAveragePool", 1, &x, new_value(b, 4, shape), NULL);
  if (h % oh == 0 && w % ow == 0) {
    pb_buf attrs = {0};
    int64_t k[2] = {h / oh, w / ow};
    attr_ints(&attrs, "kernel_shape", 2, k);
    attr_ints(&attrs, "strides", 2, k);
    return emit_values(b, "AveragePool", 1, &x, new_value(b, 4, shape), &attrs);
  }
  float *pool = calloc((size_t)(h * w * oh * ow), sizeof *pool);
  if (!pool) return fail(b, HAKD_ENOMEM, "out of memory");
  for (int64_t a = 0; a < oh; a++)
    for (int64_t d = 0; d < ow; d++) {
      int64_t h0 = a * h / oh, h1 = ((a + 1) * h + oh - 1) / oh, w0 = d * w / ow, w1 = ((d + 1) * w + ow - 1) / ow;
      float area = (float)((h1 - h0) * (w1 - w0));
      for (int64_t i = h0; i < h1; i++)
        for (int64_t j = w0; j < w1; j++) pool[(i * w + j) * oh * ow + a * ow + d] = 1.0f / area;
    }
  char pool_name[ONNX_NAME_MAX], flat_name[ONNX_NAME_MAX];
  int64_t dims[2] = {h * w, oh * ow};
  add_const(b, DTYPE_FLOAT, 2, dims, pool, pool_name);
  free(pool);
  int flat = g_reshape(g, x, 3, (int64_t[]){0, c, h * w});
  const char *in[2] = {value_name(flat, flat_name), pool_name};
  int pooled = emit(b, "MatMul", 2, in, flat ? new_value(b, 3, (int64_t[]){n, c, oh * ow}) : 0, NULL);
  return g_reshape(g, pooled, 4, shape);
}

/* Resize to a fixed (out_h, out_w) with the batch and channels of the input at run time: the
 * `sizes` input is Concat(Shape(x)[0:2], [out_h, out_w]). */
static int g_resize_bilinear(model_graph *g, int x, int64_t out_h, int64_t out_w) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  if (v->ndim != 4) return fail(b, HAKD_ESHAPE, "resize of a %d-D value", v->ndim);
  int64_t shape4[1] = {4}, shape2[1] = {2}, first2[2] = {0, 2}, hw[2] = {out_h, out_w};
  int shape = emit_values(b, "Shape", 1, &x, new_value(b, 1, shape4), NULL);
  char names[4][ONNX_NAME_MAX];
  const char *slice_in[3] = {value_name(shape, names[0]), const_int64s(b, 1, &first2[0], names[1]),
                             const_int64s(b, 1, &first2[1], names[2])};
  int nc = emit(b, "Slice", 3, slice_in, new_value(b, 1, shape2), NULL);
  const char *cat_in[2] = {value_name(nc, names[0]), const_int64s(b, 2, hw, names[1])};
  pb_buf cat_attrs = {0};
  attr_int(&cat_attrs, "axis", 0);
  int sizes = emit(b, "Concat", 2, cat_in, new_value(b, 1, shape4), &cat_attrs);
  pb_buf attrs = {0};
  attr_string(&attrs, "mode", "linear");
  attr_string(&attrs, "coordinate_transformation_mode", "half_pixel");
  int64_t out[4] = {v->shape[0], v->shape[1], out_h, out_w};
  const char *in[4] = {value_name(x, names[0]), "", "", value_name(sizes, names[1])};
  return emit(b, "Resize", 4, in, new_value(b, 4, out), &attrs);
}

static int g_concat(model_graph *g, int n, const int *xs, int axis) {
  onnx_builder *b = BUILDER(g);
  if (n < 1 || n > 8) return fail(b, HAKD_EINVAL, "concat of %d values", n);
  const onnx_value *first = value_of(b, xs[0]);
  if (!first) return 0;
  int64_t shape[HAKD_MAX_DIMS];
  memcpy(shape, first->shape, sizeof shape);
  int ndim = first->ndim;
  for (int i = 1; i < n; i++) {
    const onnx_value *v = value_of(b, xs[i]);
    if (!v) return 0;
    shape[axis] += v->shape[axis];
  }
  pb_buf attrs = {0};
  attr_int(&attrs, "axis", axis);
  return emit_values(b, "Concat", n, xs, new_value(b, ndim, shape), &attrs);
}

static int g_add(model_graph *g, int a, int c) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *va = value_of(b, a), *vc = value_of(b, c);
  if (!va || !vc) return 0;
  if (va->ndim != vc->ndim || memcmp(va->shape, vc->shape, (size_t)va->ndim * sizeof va->shape[0]))
    return fail(b, HAKD_ESHAPE, "add of values of different shapes");
  return emit_values(b, "Add", 2, (int[]){a, c}, new_value(b, va->ndim, va->shape), NULL);
}

/* reference: F.gelu(approximate="none") = 0.5 * x * (1 + erf(x / sqrt(2))) (Gelu is opset 20). */
static int g_gelu(model_graph *g, int x) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int ndim = v->ndim;
  int64_t shape[HAKD_MAX_DIMS];
  memcpy(shape, v->shape, sizeof shape);
  if (!b->have_gelu_consts) {
    float consts[3] = {(float)M_SQRT2, 1.0f, 0.5f};
    add_initializer(b, "const.sqrt2", DTYPE_FLOAT, 0, NULL, &consts[0], 0);
    add_initializer(b, "const.one", DTYPE_FLOAT, 0, NULL, &consts[1], 0);
    add_initializer(b, "const.half", DTYPE_FLOAT, 0, NULL, &consts[2], 0);
    b->have_gelu_consts = 1;
  }
  char names[2][ONNX_NAME_MAX];
  const char *div_in[2] = {value_name(x, names[0]), "const.sqrt2"};
  int t = emit(b, "Div", 2, div_in, new_value(b, ndim, shape), NULL);
  t = emit_values(b, "Erf", 1, &t, new_value(b, ndim, shape), NULL);
  const char *add_in[2] = {value_name(t, names[0]), "const.one"};
  t = emit(b, "Add", 2, add_in, new_value(b, ndim, shape), NULL);
  t = emit_values(b, "Mul", 2, (int[]){x, t}, new_value(b, ndim, shape), NULL);
  const char *half_in[2] = {value_name(t, names[0]), "const.half"};
  return emit(b, "Mul", 2, half_in, new_value(b, ndim, shape), NULL);
}

static int g_reshape(model_graph *g, int x, int ndim, const int64_t *shape) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t target[HAKD_MAX_DIMS], out[HAKD_MAX_DIMS], have = 1, want = 1;
  for (int i = 1; i < v->ndim; i++) have *= v->shape[i];
  for (int i = 1; i < ndim; i++) want *= shape[i];
  if (ndim < 1 || ndim > HAKD_MAX_DIMS || have != want)
    return fail(b, HAKD_ESHAPE, "reshape of %lld values per image into %lld", (long long)have, (long long)want);
  /* 0 in Reshape's shape copies the input's dimension: the batch stays open */
  for (int i = 0; i < ndim; i++) target[i] = i ? shape[i] : 0, out[i] = i ? shape[i] : v->shape[0];
  char names[2][ONNX_NAME_MAX];
  const char *in[2] = {value_name(x, names[0]), const_int64s(b, ndim, target, names[1])};
  return emit(b, "Reshape", 2, in, new_value(b, ndim, out), NULL);
}

static int g_permute(model_graph *g, int x, const int *perm) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  int64_t p[HAKD_MAX_DIMS], shape[HAKD_MAX_DIMS];
  for (int i = 0; i < v->ndim; i++) p[i] = perm[i], shape[i] = v->shape[perm[i]];
  if (perm[0] != 0) return fail(b, HAKD_EINVAL, "permute moves the batch dimension");
  pb_buf attrs = {0};
  attr_ints(&attrs, "perm", v->ndim, p);
  return emit_values(b, "Transpose", 1, &x, new_value(b, v->ndim, shape), &attrs);
}

static int g_matmul(model_graph *g, int a, int c, int transpose_b, float alpha) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *va = value_of(b, a), *vc = value_of(b, c);
  if (!va || !vc) return 0;
  int nd = vc->ndim;
  if (transpose_b) {
    int perm[HAKD_MAX_DIMS];
    for (int i = 0; i < nd; i++) perm[i] = i;
    perm[nd - 2] = nd - 1, perm[nd - 1] = nd - 2;
    c = g_permute(g, c, perm);
    if (!(vc = value_of(b, c))) return 0;
    va = value_of(b, a);
  }
  if (va->ndim != nd || va->shape[nd - 1] != vc->shape[nd - 2])
    return fail(b, HAKD_ESHAPE, "matmul of incompatible shapes");
  int64_t shape[HAKD_MAX_DIMS];
  memcpy(shape, va->shape, sizeof shape);
  shape[nd - 1] = vc->shape[nd - 1];
  int y = emit_values(b, "MatMul", 2, (int[]){a, c}, new_value(b, nd, shape), NULL);
  if (alpha == 1.0f) return y;
  char names[2][ONNX_NAME_MAX];
  const char *in[2] = {value_name(y, names[0]), add_const(b, DTYPE_FLOAT, 0, NULL, &alpha, names[1])};
  return emit(b, "Mul", 2, in, new_value(b, nd, shape), NULL);
}

static int g_softmax(model_graph *g, int x, int axis) {
  onnx_builder *b = BUILDER(g);
  const onnx_value *v = value_of(b, x);
  if (!v) return 0;
  pb_buf attrs = {0};
  attr_int(&attrs, "axis", axis);
  return emit_values(b, "Softmax", 1, &x, new_value(b, v->ndim, v->shape), &attrs);
}

/* ---- the file ---- */

/* ValueInfoProto of a float tensor whose dimension 0 is the symbolic batch "N". */
static void value_info(pb_buf *graph, int field, const char *name, const onnx_value *v) {
  pb_buf info = {0}, type = {0}, tensor = {0}, shape = {0};
  for (int i = 0; i < v->ndim; i++) {
    pb_buf dim = {0};
    if (i == 0)
      pb_string(&dim, DIM_PARAM, "N");
    else
      pb_int(&dim, DIM_VALUE, v->shape[i]);
    pb_message(&shape, SHAPE_DIM, &dim);
    pb_free(&dim);
  }
  pb_int(&tensor, TYPE_TENSOR_ELEM_TYPE, DTYPE_FLOAT);
  pb_message(&tensor, TYPE_TENSOR_SHAPE, &shape);
  pb_message(&type, TYPE_TENSOR, &tensor);
  pb_string(&info, VALUE_INFO_NAME, name);
  pb_message(&info, VALUE_INFO_TYPE, &type);
  pb_message(graph, field, &info);
  pb_free(&info), pb_free(&type), pb_free(&tensor), pb_free(&shape);
}

static int write_model(onnx_builder *b, int logits, const char *path, int64_t *file_bytes) {
  pb_buf graph = {0}, model = {0}, opset = {0};
  char graph_name[ONNX_NAME_MAX];
  snprintf(graph_name, sizeof graph_name, "hakd_%s", b->model_name);
  pb_bytes_raw(&graph, b->nodes.data, b->nodes.size);
  pb_string(&graph, GRAPH_NAME, graph_name);
  pb_bytes_raw(&graph, b->initializers.data, b->initializers.size);
  value_info(&graph, GRAPH_INPUT, "input", value_of(b, 1));
  value_info(&graph, GRAPH_OUTPUT, "logits", value_of(b, logits));
  pb_int(&opset, OPSET_VERSION, HAKD_ONNX_OPSET);
  pb_int(&model, MODEL_IR_VERSION, ONNX_IR_VERSION);
  pb_string(&model, MODEL_PRODUCER_NAME, "hakd");
  pb_string(&model, MODEL_PRODUCER_VERSION, "1");
  pb_message(&model, MODEL_GRAPH, &graph);
  pb_message(&model, MODEL_OPSET_IMPORT, &opset);
  int rc = 0;
  if (!pb_ok(&model) || !pb_ok(&b->nodes) || !pb_ok(&b->initializers)) {
    rc = hakd_error(HAKD_ENOMEM, "%s: out of memory encoding the ONNX model", path);
  } else {
    hakd__atomic_file af;
    rc = hakd__atomic_open(&af, path);
    if (!rc) {
      if (fwrite(model.data, 1, model.size, af.fp) != model.size) {
        rc = hakd_error(HAKD_EIO, "%s: write failed", path);
        hakd__atomic_abort(&af);
      } else {
        rc = hakd__atomic_commit(&af);
      }
    }
  }
  *file_bytes = (int64_t)model.size;
  pb_free(&graph), pb_free(&model), pb_free(&opset);
  return rc;
}

int hakd_onnx_export(hakd_model *m, int height, int width, const char *path, hakd_onnx_report *report) {
  if (report) memset(report, 0, sizeof *report);
  if (!path || !*path) return hakd_error(HAKD_EINVAL, "ONNX export: no output path");
  int rc = hakd_model_check_input(m, 1, height, width, 0);
  if (rc) return rc;
  onnx_builder b;
  memset(&b, 0, sizeof b);
  b.base = (model_graph){g_conv,   g_linear, g_layernorm, g_maxpool, g_adaptive_avgpool, g_resize_bilinear, g_concat,
                         g_add,    g_gelu,   g_reshape,   g_permute, g_matmul,           g_softmax,         g_shape};
  b.model_name = hakd_model_name(m);
  int input = new_value(&b, 4, (int64_t[]){1, 3, height, width});
  int logits = hakd_model_describe(m, &b.base, input);
  /* the output gets its fixed name through an Identity (values are named as they are made) */
  const onnx_value *lv = value_of(&b, logits);
  if (lv) {
    char name[ONNX_NAME_MAX];
    const char *in[1] = {value_name(logits, name)};
    logits = emit_as(&b, "Identity", 1, in, new_value(&b, lv->ndim, lv->shape), "logits", NULL);
  }
  int64_t file_bytes = 0;
  if (b.status)
    rc = b.status;
  else if (!logits)
    rc = hakd_error(HAKD_EINVAL, "exporting %s: the model described no logits", b.model_name);
  else
    rc = write_model(&b, logits, path, &file_bytes);
  if (!rc && report) {
    report->opset = HAKD_ONNX_OPSET;
    report->nodes = b.n_nodes;
    report->initializers = b.n_initializers;
    report->parameter_values = b.parameter_values;
    report->constant_values = b.constant_values;
    report->file_bytes = file_bytes;
  }
  pb_free(&b.nodes), pb_free(&b.initializers);
  free(b.values);
  return rc;
}
