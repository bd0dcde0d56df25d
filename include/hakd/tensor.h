/* Tensors, the step context (planned memory + autodiff tape) and persistent parameters.
 *
 * A tensor is a contiguous row-major array (float32 activations/weights, int32 label maps).
 * Step tensors (activations, their gradients, tape nodes) belong to the context and are all
 * forgotten by hakd_ctx_reset() at the start of every step. Tensor data and gradients live in
 * step buffers whose lifetimes the context tracks: a gradient dies once the op that produced
 * its tensor has run backward, an activation once its scope has ended (hakd_ctx_collapse) and
 * no recorded op still needs it for backward. The first step allocates each buffer on its own;
 * its trace of lifetimes is then packed into one block (buffers that are never alive at the
 * same time share bytes), which the following steps use while they repeat the same sequence,
 * so a steady-state step makes no malloc call (hakd_ctx_stats counts them) and holds about
 * what is alive at its busiest moment. Small metadata (tensor structs, nodes, saved
 * statistics) comes from a bump arena that lives for the step. Parameters and buffers are
 * persistent and own their memory (hakd_params). */
#ifndef HAKD_TENSOR_H
#define HAKD_TENSOR_H

#include <stddef.h>
#include <stdint.h>

#include "hakd/error.h"

#define HAKD_MAX_DIMS 6

/* HAKD_BF16_BLOCKED: a 4-D (N, C, H, W) CNN activation in the bf16 precision, held as bfloat16 in
 * oneDNN's channel-blocked layout nChw16c ((N, ceil(C/16), H, W, 16), padding channels zero), the
 * layout its AVX512-BF16 convolutions read and write, so consecutive convolutions pass it on without
 * converting. Made by hakd_to_bf16_blocked and by the ops that take it (see hakd/ops.h); every other
 * op needs float32 and refuses it: hakd_to_f32 converts. Its gradient (grad) is float32 in the same
 * blocked layout, nChw16c with zero padding channels (hakd_tensor_bytes(t) * 2 bytes), not numel
 * floats in NCHW. */
/* HAKD_F32_BLOCKED: the same layout holding float32, a ResNet backbone's activations in float32
 * training (hakd_ctx_set_precision), so its oneDNN convolutions read and write them without the
 * reorders from and to NCHW around every call. Made by hakd_to_f32_blocked; hakd_conv2d and
 * hakd_batchnorm2d_act take it (hakd/ops.h); its gradient is float32 in the same layout
 * (hakd_tensor_bytes(t) bytes). */
typedef enum { HAKD_F32 = 0, HAKD_I32 = 1, HAKD_BF16_BLOCKED = 2, HAKD_F32_BLOCKED = 3 } hakd_dtype;

/* Whether t is in one of the blocked layouts. */
#define HAKD_IS_BLOCKED(t) ((t)->dtype == HAKD_BF16_BLOCKED || (t)->dtype == HAKD_F32_BLOCKED)

typedef struct hakd_node hakd_node;

typedef struct hakd_tensor {
  int ndim;
  int64_t shape[HAKD_MAX_DIMS];
  hakd_dtype dtype;
  void *data;        /* numel elements of dtype, contiguous */
  float *grad;       /* dLoss/dtensor, same numel (blocked: see HAKD_BF16_BLOCKED); NULL until backward needs it */
  int requires_grad; /* a parameter, or computed from one while grad mode was on */
  int is_param;      /* persistent: grad lives in hakd_params, not in the arena */
  hakd_node *node;   /* op that produced it (NULL for leaves and no-grad results) */
  const char *name;  /* state_dict name for parameters/buffers, else NULL */
  int32_t buffer;      /* step buffer holding data (id + 1; views share it); 0: not step memory */
  int32_t grad_buffer; /* step buffer holding grad; 0: none or persistent */
  int32_t pending_reads; /* backward bookkeeping of parameters: tape nodes still to run that read it */
  /* Parameters: the gradient is zero, but its buffer still holds old values (hakd_params_mark_grads_zero
   * marks it so instead of writing zeros). The first backward to reach it writes it whole
   * (hakd_grad_fresh) or zeroes it first (hakd_grad); read it through hakd_param_grad. */
  int grad_stale;
  /* Parameters and buffers: nonzero while frozen (hakd_params_freeze), a stamp no other freeze
   * of any tensor has had; caches of forms derived from the data are keyed by it. */
  uint64_t frozen;
} hakd_tensor;

static inline float *hakd_f32(const hakd_tensor *t) { return (float *)t->data; }
static inline int32_t *hakd_i32(const hakd_tensor *t) { return (int32_t *)t->data; }
int64_t hakd_numel(const hakd_tensor *t);
/* Bytes of t's data: numel elements, or for the blocked layouts the padded blocked size. */
size_t hakd_tensor_bytes(const hakd_tensor *t);
/* shape[d] with negative d counting from the end. */
int64_t hakd_dim(const hakd_tensor *t, int d);
int hakd_same_shape(const hakd_tensor *a, const hakd_tensor *b);
/* "(2, 3, 4, 4)" into buf; returns buf. */
const char *hakd_shape_str(const hakd_tensor *t, char *buf, size_t size);

/* ---- step context ------------------------------------------------------------------ */

typedef struct hakd_ctx hakd_ctx;

hakd_ctx *hakd_ctx_new(void);
void hakd_ctx_free(hakd_ctx *ctx);
/* Starts a new step: forgets every step tensor and the tape, keeps the arena's memory. */
void hakd_ctx_reset(hakd_ctx *ctx);
/* Gradient recording (default on). Off = inference / frozen teacher: ops record nothing. */
void hakd_ctx_set_grad(hakd_ctx *ctx, int enabled);
int hakd_ctx_grad(const hakd_ctx *ctx);
/* Training mode (default on): batchnorm uses batch stats and updates running stats,
 * dropout drops. A model can be evaluated with training off while grad stays on. */
void hakd_ctx_set_training(hakd_ctx *ctx, int training);
int hakd_ctx_training(const hakd_ctx *ctx);
/* Precision of the heavy products. HAKD_BF16 (mixed precision, AVX512-BF16 machines):
 * convolutions, linear layers and matrix products (forward and backward) round their operands to
 * bfloat16 and accumulate in float32 on oneDNN; weights, parameter gradients and losses stay
 * float32, and so do tensors, except a CNN's activations from its stem to its head's classifier,
 * which stay blocked bfloat16 (HAKD_BF16_BLOCKED) between its convolutions in inference (and a
 * frozen teacher) and in training (their gradients float32 in the same layout; the environment
 * variable HAKD_BF16_BLOCKED_TRAIN=0 keeps training on float32 activations). Default HAKD_FP32. */
typedef enum { HAKD_FP32 = 0, HAKD_BF16 = 1 } hakd_precision;
void hakd_ctx_set_precision(hakd_ctx *ctx, hakd_precision precision);
hakd_precision hakd_ctx_precision(const hakd_ctx *ctx);
/* "fp32" | "bf16"; errors name the value, and bf16 is refused with the reason where it cannot run
 * (see hakd_bf16_check). */
int hakd_precision_parse(const char *text, hakd_precision *out);
/* 0 where bf16 can run: the CPU has AVX512-BF16 and oneDNN is not capped below it
 * (ONEDNN_MAX_CPU_ISA); otherwise HAKD_EUNSUPPORTED with the reason. Ops asked for bf16 on other
 * machines fail with that message. */
int hakd_bf16_check(void);
/* 1 where hakd_bf16_check passes (computed once). */
int hakd_bf16_supported(void);
const char *hakd_precision_name(hakd_precision precision);
/* Seed of the context's RNG (dropout). */
void hakd_ctx_seed(hakd_ctx *ctx, uint64_t seed);
uint64_t *hakd_ctx_rng(hakd_ctx *ctx);
/* Random masks (dropout, drop path) are drawn per sample: an op takes one value `site` from
 * hakd_ctx_rng per call (the same on every process of a data-parallel run, which calls the same
 * ops in the same order), and sample b of its batch draws from hakd_rng_substream(site, first + b),
 * where `first` is the index of this process's first sample in the global batch (0 by default).
 * So a sample's mask depends on (seed, step, sample index), never on how the batch is split. */
void hakd_ctx_set_sample_offset(hakd_ctx *ctx, int64_t first);
int64_t hakd_ctx_sample_offset(const hakd_ctx *ctx);

/* ---- collectives (data-parallel training) ------------------------------------------------ */

/* The processes of a data-parallel run, as ops see them: core and ops know no MPI; the train
 * layer installs a communicator that src/dist implements (over MPI). */
typedef struct hakd_comm {
  int rank, size;
  /* In-place sum of n doubles over every process (all call it in the same order); returns 0 or
   * a negative status with the error set. */
  int (*allreduce_sum)(const struct hakd_comm *comm, double *values, int64_t n);
  void *impl;
} hakd_comm;
/* NULL (the default): this process alone. Ops use it for the global normalisation of a
 * cross-entropy mean; BatchNorm uses it too when sync_bn is on (SyncBN). */
void hakd_ctx_set_comm(hakd_ctx *ctx, const hakd_comm *comm, int sync_bn);
/* The communicator when it spans more than one process, else NULL. */
const hakd_comm *hakd_ctx_comm(const hakd_ctx *ctx);
int hakd_ctx_sync_bn(const hakd_ctx *ctx);
/* Sums values over the processes (a no-op without a communicator); a failure is recorded as the
 * context's status and returned. */
int hakd_ctx_allreduce_sum(hakd_ctx *ctx, double *values, int64_t n);

/* Called during backward once the gradient of a parameter is complete (no node left on the tape
 * reads it), so that its reduction can start while backward goes on; parameters that no node
 * reads are not reported. */
typedef void (*hakd_grad_ready_fn)(void *user, hakd_tensor *param);
void hakd_ctx_set_grad_ready(hakd_ctx *ctx, hakd_grad_ready_fn fn, void *user);

/* First error recorded by an op in this step (ops return NULL after it), 0 if none. */
int hakd_ctx_status(const hakd_ctx *ctx);

typedef struct {
  uint64_t arena_mallocs;  /* malloc calls made for step memory since the context was created */
  size_t arena_capacity;   /* bytes held (metadata arena + planned block) */
  size_t arena_used;       /* bytes alive in the current step */
  size_t arena_peak;       /* high-water mark of bytes alive in one step */
} hakd_ctx_stats;
hakd_ctx_stats hakd_ctx_get_stats(const hakd_ctx *ctx);

/* Scopes: a model marks where a block starts and, once the block is computed, collapses the
 * scope keeping only the tensors it hands on. Every other tensor made inside the scope is then
 * unreachable for the caller, so its data dies as soon as no recorded op needs it for backward:
 * at once in no-grad passes (inference, the frozen teacher: one block's activations alive at a
 * time), after the last backward reader otherwise. keep[i] (and views of them) stay alive. */
typedef struct {
  int32_t first_buffer; /* step buffers made after the mark */
} hakd_arena_mark;
hakd_arena_mark hakd_ctx_mark(hakd_ctx *ctx);
void hakd_ctx_collapse(hakd_ctx *ctx, hakd_arena_mark mark, int n, hakd_tensor *const *keep);

/* Step metadata memory (alive for the whole step), 64-byte aligned, uninitialised; NULL (and
 * ctx status set) when out of memory. */
void *hakd_ctx_alloc(hakd_ctx *ctx, size_t bytes);
/* Step scratch of one op: dies at hakd_ctx_scratch_free, else when the current op's backward
 * returns (in backward) or at the next scope collapse (in forward). 64-byte aligned,
 * uninitialised. */
void *hakd_ctx_scratch(hakd_ctx *ctx, size_t bytes);
void hakd_ctx_scratch_free(hakd_ctx *ctx, void *scratch);
/* A step tensor; data uninitialised. shape has ndim entries. */
hakd_tensor *hakd_tensor_new(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape);
hakd_tensor *hakd_tensor_zeros(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape);
/* Convenience: a 4-D float tensor. */
hakd_tensor *hakd_tensor4(hakd_ctx *ctx, int64_t n, int64_t c, int64_t h, int64_t w);
/* A step tensor holding a copy of `data` (numel floats or int32s). */
hakd_tensor *hakd_tensor_from(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape, const void *data);
/* A step tensor viewing caller memory (not copied; the caller keeps it alive for the step). */
hakd_tensor *hakd_tensor_wrap(hakd_ctx *ctx, hakd_dtype dtype, int ndim, const int64_t *shape, void *data);
/* A constant view of t that gradients do not flow through (same data). */
hakd_tensor *hakd_detach(hakd_ctx *ctx, hakd_tensor *t);

/* ---- autodiff ---------------------------------------------------------------------- */

typedef void (*hakd_backward_fn)(hakd_ctx *ctx, hakd_node *node);

#define HAKD_NODE_MAX_INPUTS 6
/* One recorded op. Forward saves in it exactly what backward needs. */
struct hakd_node {
  hakd_backward_fn backward;
  const char *op; /* op name, for error messages */
  hakd_tensor *out;
  hakd_tensor *in[HAKD_NODE_MAX_INPUTS];
  int n_in;
  int64_t iarg[12];
  double farg[6];
  void *saved[4]; /* step memory saved by forward (e.g. layernorm mean/rstd, argmax indices) */
  unsigned released; /* bit i: backward does not read in[i]'s data; bit HAKD_NODE_MAX_INPUTS: out's */
  int grad_is_input_grad; /* a view: out's gradient is in[0]'s gradient buffer (set by the op) */
  /* Set by a model that computes the reference architecture's products in another order (e.g.
   * SegFormer's folded decode head): the reference's multiply-adds this product node stands for,
   * counted by hakd_tape_macs in place of the node's own (0 for products the reference has not). */
  int has_reference_macs;
  int64_t reference_macs;
  hakd_node *prev;
};

/* Declares that the node's backward does not read the data of in[which] (which = -1: of its
 * output), so that data can die before backward reaches this node. Without it every input
 * and the output stay alive until the node has run backward. */
void hakd_node_unneeded(hakd_ctx *ctx, hakd_node *node, int which);
/* The node's backward reads only shapes, its saved memory and its output's gradient. */
void hakd_node_reads_no_data(hakd_ctx *ctx, hakd_node *node);

/* Records an op producing `out` from inputs in[0..n_in) when grad mode is on and some input
 * requires grad; marks out->requires_grad. Returns the node (to fill iarg/farg/saved) or NULL
 * when nothing is recorded. */
hakd_node *hakd_record(hakd_ctx *ctx, const char *op, hakd_backward_fn backward, hakd_tensor *out,
                       int n_in, hakd_tensor *const *in);
/* Gradient buffer of t to accumulate into (+=), allocated zeroed on first use; NULL when
 * t does not require grad. */
float *hakd_grad(hakd_ctx *ctx, hakd_tensor *t);
/* hakd_grad for a backward that can write its gradient instead of adding it: where t is float32
 * (or blocked without padding channels), not a view, and its gradient does not exist yet (an activation's first consumer to run
 * backward) or is a parameter's marked stale (hakd_params_zero_grad), *fresh is set to 1 and the
 * buffer holds garbage: the caller must then write every element (= instead of +=). Otherwise
 * *fresh is 0 and the buffer is hakd_grad's, to add to. This saves zeroing the buffer and reading
 * it back, two passes over every gradient of a training step (PyTorch's autograd likewise takes
 * the first gradient as it is). HAKD_FRESH_GRADS=0 in the environment (read once per process)
 * makes *fresh always 0: the zero-and-add path, kept for comparisons; any value but 0 or 1
 * fails the context (NULL). */
float *hakd_grad_fresh(hakd_ctx *ctx, hakd_tensor *t, int *fresh);
/* Runs the tape backwards from `loss` (seeded with dL/dloss = 1 for every element, so a
 * scalar loss is the usual case). Parameter grads are accumulated (+=). Gradients of
 * intermediate tensors are consumed on the way (their grad is NULL afterwards, as non-leaf
 * .grad in PyTorch); leaves keep theirs. A tape runs backward once per step. */
int hakd_backward(hakd_ctx *ctx, hakd_tensor *loss);
/* Same, seeded with an explicit dL/dout (numel floats) instead of ones. */
int hakd_backward_seeded(hakd_ctx *ctx, hakd_tensor *out, const float *seed);

/* Multiply-adds of the conv2d, linear and matmul ops recorded on the tape (what `hakd info`
 * reports; the mmcv/fvcore convention counts one multiply-add as one). */
int64_t hakd_tape_macs(const hakd_ctx *ctx);
/* The same with each convolution's multiply-adds as its kernel executed them: products with the
 * zero padding that the kernel skips (dilated taps past the map, depthwise borders) not counted. */
int64_t hakd_tape_executed_macs(const hakd_ctx *ctx);

/* Records an error in the context (first one wins) and returns NULL, for ops. */
hakd_tensor *hakd_ctx_fail(hakd_ctx *ctx, int status, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* ---- persistent parameters and buffers ----------------------------------------------- */

typedef struct hakd_params {
  hakd_tensor **items;
  int count, capacity;
} hakd_params;

void hakd_params_init(hakd_params *p);
void hakd_params_free(hakd_params *p);
/* A new zero-initialised parameter (requires_grad, with a zeroed grad buffer) or buffer
 * (is_buffer: running stats, no grad) named `name` (copied). NULL when out of memory. */
hakd_tensor *hakd_params_add(hakd_params *p, const char *name, int ndim, const int64_t *shape, int is_buffer);
hakd_tensor *hakd_params_find(const hakd_params *p, const char *name);
void hakd_params_zero_grad(hakd_params *p);
/* hakd_params_zero_grad without writing the zeros: each gradient is only marked (grad_stale), and
 * the next backward writes each gradient it reaches instead of adding to zeros, which saves two
 * passes over every weight gradient of a training step (the trainer and `hakd bench` step so).
 * Until a backward has reached it, a gradient must be read through hakd_param_grad. */
void hakd_params_mark_grads_zero(hakd_params *p);
/* t->grad, zeroed first where hakd_params_zero_grad left it stale (NULL when t has no gradient).
 * Code reading a parameter's gradient outside the ops' backward uses this. */
float *hakd_param_grad(hakd_tensor *t);
/* Number of trainable scalars. */
int64_t hakd_params_count(const hakd_params *p);
/* Freezing (frozen != 0) promises that the data of p's tensors stays as it is until they are
 * unfrozen (frozen == 0), so that inference may keep forms derived from them between forwards:
 * a frozen convolution's weights folded with its BatchNorm and reordered into oneDNN's layout
 * are made on its first forward on small maps and reused (bit for bit what the unfrozen model
 * computes), where an unfrozen one redoes that work on every call. Each thread keeps its own
 * copies, up to HAKD_FROZEN_CACHE_MB (default 1024 per thread; 0: none; other text than a whole
 * number of MB is refused naming the variable), least recently used first out. hakd_model_open, `hakd predict`, `eval`, `bench --mode infer` and a distillation's
 * teacher freeze their models. hakd's own writers renew the stamp of a frozen tensor they
 * change (hakd_model_load, the optimizers, a data-parallel start's broadcast); code that writes a frozen tensor's
 * data itself must call hakd_tensor_changed on it (or freeze p again) before the next forward,
 * or that forward may use the old values. Freezing again gives every tensor a new stamp. */
void hakd_params_freeze(hakd_params *p, int frozen);
/* Renews t's stamp if it is frozen (its data changed); nothing otherwise. */
void hakd_tensor_changed(hakd_tensor *t);

/* ---- random numbers (deterministic, counter-free xorshift-style generator) ----------- */

uint64_t hakd_rng_next(uint64_t *state);
/* Uniform in [0, 1). */
float hakd_rng_uniform(uint64_t *state);
/* Standard normal. */
float hakd_rng_normal(uint64_t *state);
uint64_t hakd_rng_seed(uint64_t seed);
/* The state of the independent stream number `index` of `seed` (a mixed pair, not a sequence). */
uint64_t hakd_rng_substream(uint64_t seed, int64_t index);

/* ---- threads ------------------------------------------------------------------------- */

/* Sets OpenMP and BLAS threads; n <= 0 keeps OMP_NUM_THREADS or the core count. */
void hakd_set_threads(int n);
int hakd_get_threads(void);

#endif
