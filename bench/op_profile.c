/* Per-op time profile of `hakd bench` steps: where an inference, training or distillation step
 * spends its time, by op kind and by op shape, forward and backward.
 *
 * Built by bench/op_profile.sh against a build's libhakd.a with the linker's --wrap for
 * hakd_record, hakd_ctx_reset, hakd_model_forward, hakd_backward, hakd_optim_step,
 * hakd_params_zero_grad, hakd_model_macs and hakd_model_executed_macs (so it is not one of CMake's bench_*.c targets).
 * Every op computes its output and then calls hakd_record, so the time since the previous
 * record call (or the start of the model's forward) is that op's forward time, glue included;
 * a recorded node's backward is swapped for a timing trampoline. Only the timed iterations after
 * the warm-up count; the MAC count at the end of hakd_bench_run is left out.
 *
 * usage: op_profile <hakd bench options> [--top N (25 shapes)] [--blas-threads N]
 *   --blas-threads N  pins OpenBLAS's own thread count to N whatever hakd asks for (an experiment:
 *                     1 = every sgemm single-threaded unless the op splits it over OpenMP). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hakd/bench.h"
#include "hakd/config.h"
#include "hakd/optim.h"

#define MAX_KEYS 4096
#define NODE_MAP_SIZE (1 << 16)

typedef struct {
  char kind[32];
  char shape[160];
  double fwd_s, bwd_s, flops; /* flops: forward FLOPs summed over the timed calls */
  double out_bytes;           /* bytes of the outputs, summed over the timed calls */
  int64_t calls;
} op_key;

static op_key keys[MAX_KEYS];
static int n_keys;
static struct {
  hakd_node *node;
  hakd_backward_fn backward;
  int key;
} node_map[NODE_MAP_SIZE];
static double mark, step_start, total_step_s, optim_s, zero_grad_s, backward_s, forward_s[2];
static int steps_seen, warmup_steps, counting_macs, distilling, forward_model;
static const void *teacher_model;

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int timing(void) { return !counting_macs && steps_seen > warmup_steps; }

static void shape_text(char *buf, size_t size, const hakd_tensor *t) {
  int n = snprintf(buf, size, "(");
  for (int d = 0; d < t->ndim && n < (int)size; d++) n += snprintf(buf + n, size - (size_t)n, d ? ",%lld" : "%lld", (long long)t->shape[d]);
  if (n < (int)size) snprintf(buf + n, size - (size_t)n, ")");
}

/* Forward FLOPs (2 per multiply-add) of the product ops, as hakd_tape_macs counts them. */
static double op_flops(const char *op, const hakd_tensor *out, int n_in, hakd_tensor *const *in) {
  if ((!strcmp(op, "conv2d") || !strcmp(op, "conv2d_affine_act")) && n_in >= 2)
    return 2.0 * (double)hakd_numel(out) * (double)(in[1]->shape[1] * in[1]->shape[2] * in[1]->shape[3]);
  if (!strcmp(op, "depthwise_conv2d_tokens") && n_in >= 2)
    return 2.0 * (double)hakd_numel(out) * (double)(in[1]->shape[2] * in[1]->shape[3]);
  if (!strcmp(op, "linear") && n_in >= 2) return 2.0 * (double)hakd_numel(out) * (double)in[1]->shape[1];
  if (!strcmp(op, "attention") && n_in >= 3) /* q (N, H, L, d) x k (N, H, L', d), then x v (N, H, L', dv) */
    return 2.0 * (double)hakd_numel(in[0]) / (double)in[0]->shape[3] * (double)in[1]->shape[2] *
           (double)(in[0]->shape[3] + in[2]->shape[3]);
  if (!strcmp(op, "matmul") && n_in >= 2) {
    double batches = 1;
    for (int d = 0; d + 2 < in[1]->ndim; d++) batches *= (double)in[1]->shape[d];
    double a = (double)hakd_numel(in[0]), b = (double)hakd_numel(in[1]), y = (double)hakd_numel(out);
    return 2.0 * __builtin_sqrt(a * b * y / batches);
  }
  return 0.0;
}

/* kind: op name, "T:"-prefixed for the teacher's ops */
static int find_key(const char *kind, const char *op, const hakd_tensor *out, int n_in, hakd_tensor *const *in) {
  char shape[160] = "", part[64];
  int shaped = !strcmp(op, "conv2d") || !strcmp(op, "conv2d_affine_act") || !strcmp(op, "depthwise_conv2d_tokens") || !strcmp(op, "linear") ||
               !strcmp(op, "matmul") || !strcmp(op, "attention");
  size_t used = 0;
  /* products: both operands and the output; other ops: the first input */
  for (int i = 0; i < n_in && i < (shaped ? 2 : 1); i++) {
    if (!in[i]) continue;
    shape_text(part, sizeof part, in[i]);
    used += (size_t)snprintf(shape + used, sizeof shape - used, "%s%s", i ? " x " : "", part);
  }
  if (shaped && used < sizeof shape) {
    shape_text(part, sizeof part, out);
    snprintf(shape + used, sizeof shape - used, " -> %s", part);
  }
  for (int k = 0; k < n_keys; k++)
    if (!strcmp(keys[k].kind, kind) && !strcmp(keys[k].shape, shape)) return k;
  if (n_keys == MAX_KEYS) return MAX_KEYS - 1;
  snprintf(keys[n_keys].kind, sizeof keys[n_keys].kind, "%s", kind);
  snprintf(keys[n_keys].shape, sizeof keys[n_keys].shape, "%s", shape);
  return n_keys++;
}

static size_t node_slot(const hakd_node *node) {
  size_t h = ((size_t)node >> 6) * 0x9E3779B97F4A7C15ull;
  size_t i = h & (NODE_MAP_SIZE - 1);
  while (node_map[i].node && node_map[i].node != node) i = (i + 1) & (NODE_MAP_SIZE - 1);
  return i;
}

static void timed_backward(hakd_ctx *ctx, hakd_node *node) {
  size_t i = node_slot(node);
  double t0 = now_s();
  node_map[i].backward(ctx, node);
  keys[node_map[i].key].bwd_s += now_s() - t0;
}

hakd_node *__real_hakd_record(hakd_ctx *ctx, const char *op, hakd_backward_fn backward, hakd_tensor *out, int n_in,
                              hakd_tensor *const *in);
hakd_node *__wrap_hakd_record(hakd_ctx *ctx, const char *op, hakd_backward_fn backward, hakd_tensor *out, int n_in,
                              hakd_tensor *const *in) {
  double t = now_s();
  hakd_node *node = __real_hakd_record(ctx, op, backward, out, n_in, in);
  if (!timing() || !out) return node;
  char kind[32];
  snprintf(kind, sizeof kind, "%s%s", forward_model == 1 ? "T:" : "", op);
  int k = find_key(kind, op, out, n_in, in);
  keys[k].fwd_s += t - mark;
  keys[k].flops += op_flops(op, out, n_in, in);
  int view = n_in > 0 && in[0] && in[0]->data == out->data; /* reshape and the like write nothing */
  if (!view) keys[k].out_bytes += (double)hakd_numel(out) * 4.0;
  keys[k].calls++;
  if (node) {
    size_t i = node_slot(node);
    node_map[i].node = node;
    node_map[i].backward = node->backward;
    node_map[i].key = k;
    node->backward = timed_backward;
  }
  mark = now_s();
  return node;
}

void __real_hakd_ctx_reset(hakd_ctx *ctx);
void __wrap_hakd_ctx_reset(hakd_ctx *ctx) {
  double t = now_s();
  if (timing()) total_step_s += t - step_start;
  steps_seen++;
  memset(node_map, 0, sizeof node_map);
  __real_hakd_ctx_reset(ctx);
  step_start = mark = now_s();
}

int __real_hakd_model_forward(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x, hakd_model_output *out);
int __wrap_hakd_model_forward(hakd_model *m, hakd_ctx *ctx, hakd_tensor *x, hakd_model_output *out) {
  /* hakd_bench_run runs the teacher (distill) with grad off before the student */
  if (distilling && !hakd_ctx_grad(ctx) && !teacher_model) teacher_model = m;
  forward_model = m == teacher_model && hakd_ctx_grad(ctx) == 0 ? 1 : 0;
  double t0 = mark = now_s();
  int rc = __real_hakd_model_forward(m, ctx, x, out);
  if (timing()) forward_s[forward_model] += now_s() - t0;
  forward_model = 0;
  return rc;
}

int __real_hakd_backward(hakd_ctx *ctx, hakd_tensor *loss);
int __wrap_hakd_backward(hakd_ctx *ctx, hakd_tensor *loss) {
  double t0 = now_s();
  int rc = __real_hakd_backward(ctx, loss);
  if (timing()) backward_s += now_s() - t0;
  return rc;
}

double __real_hakd_optim_step(hakd_optimizer *o, float lr);
double __wrap_hakd_optim_step(hakd_optimizer *o, float lr) {
  double t0 = now_s();
  double norm = __real_hakd_optim_step(o, lr);
  if (timing()) optim_s += now_s() - t0;
  return norm;
}

void __real_hakd_params_zero_grad(hakd_params *p);
void __wrap_hakd_params_zero_grad(hakd_params *p) {
  double t0 = now_s();
  __real_hakd_params_zero_grad(p);
  if (timing()) zero_grad_s += now_s() - t0;
}

int64_t __real_hakd_model_macs(hakd_model *m, int h, int w);
int64_t __wrap_hakd_model_macs(hakd_model *m, int h, int w) {
  if (!counting_macs && timing()) total_step_s += now_s() - step_start;
  counting_macs = 1;
  return __real_hakd_model_macs(m, h, w);
}

/* hakd_bench_run counts executed MACs first (a batch-1 forward of each model): not a step. */
int64_t __real_hakd_model_executed_macs(hakd_model *m, int h, int w);
int64_t __wrap_hakd_model_executed_macs(hakd_model *m, int h, int w) {
  if (!counting_macs && timing()) total_step_s += now_s() - step_start;
  counting_macs = 1;
  return __real_hakd_model_executed_macs(m, h, w);
}

static int blas_threads_pinned;

void __real_openblas_set_num_threads(int n);
void __wrap_openblas_set_num_threads(int n) {
  __real_openblas_set_num_threads(blas_threads_pinned > 0 ? blas_threads_pinned : n);
}

static int by_total_time(const void *a, const void *b) {
  const op_key *x = a, *y = b;
  double tx = x->fwd_s + x->bwd_s, ty = y->fwd_s + y->bwd_s;
  return (tx < ty) - (tx > ty);
}

static void print_row(const op_key *k, double per, double total) {
  double fwd = k->fwd_s, bwd = k->bwd_s, flops = k->flops;
  int64_t calls = k->calls;
  printf("%-22s %9.1f %9.1f %6.1f%% %7.1f %8.1f", k->kind, fwd * per, bwd * per, 100.0 * (fwd + bwd) / total,
         (double)calls * per / 1e3, k->out_bytes * per / 1e3 / 1048576.0);
  if (flops > 0) {
    double f = flops / (double)calls; /* per call */
    printf("  fwd %5.1f bwd %5.1f GFLOP/s", fwd > 0 ? f * (double)calls / fwd / 1e9 : 0.0,
           bwd > 0 ? 2.0 * f * (double)calls / bwd / 1e9 : 0.0);
  }
  printf("%s%s\n", k->shape[0] ? "  " : "", k->shape);
}

int main(int argc, char **argv) {
  hakd_bench_config c;
  hakd_bench_config_default(&c);
  const char *size = "512x512";
  int top = 25;
  for (int i = 1; i + 1 < argc; i += 2) {
    const char *k = argv[i], *v = argv[i + 1];
    if (!strcmp(k, "--model")) c.model = v;
    else if (!strcmp(k, "--teacher")) c.teacher = v;
    else if (!strcmp(k, "--size")) size = v;
    else if (!strcmp(k, "--batch")) c.batch = atoi(v);
    else if (!strcmp(k, "--num-classes")) c.num_classes = atoi(v);
    else if (!strcmp(k, "--width")) c.width_mult = (float)atof(v);
    else if (!strcmp(k, "--iters")) c.iters = atoi(v);
    else if (!strcmp(k, "--warmup")) c.warmup = atoi(v);
    else if (!strcmp(k, "--threads")) c.threads = atoi(v);
    else if (!strcmp(k, "--top")) top = atoi(v);
    else if (!strcmp(k, "--blas-threads")) blas_threads_pinned = atoi(v);
    else if (!strcmp(k, "--precision")) {
      if (hakd_precision_parse(v, &c.precision)) return fprintf(stderr, "op_profile: %s\n", hakd_error_message()), 2;
    } else if (!strcmp(k, "--mode")) {
      if (hakd_bench_mode_parse(v, &c.mode)) return fprintf(stderr, "op_profile: %s\n", hakd_error_message()), 2;
    } else if (!strcmp(k, "--method")) {
      if (hakd_distill_method_parse(v, &c.method)) return fprintf(stderr, "op_profile: %s\n", hakd_error_message()), 2;
    } else {
      fprintf(stderr, "op_profile: unknown option %s\n", k);
      return 2;
    }
  }
  if (hakd_parse_size(size, &c.height, &c.width)) return fprintf(stderr, "op_profile: %s\n", hakd_error_message()), 2;
  warmup_steps = c.warmup;
  distilling = c.mode == HAKD_BENCH_DISTILL;
  hakd_bench_result r;
  if (hakd_bench_run(&c, &r)) return fprintf(stderr, "op_profile: %s\n", hakd_error_message()), 1;

  double per = 1e3 / c.iters, total = total_step_s, ops = 0;
  for (int k = 0; k < n_keys; k++) ops += keys[k].fwd_s + keys[k].bwd_s;
  printf("%s %s%s%s %dx%d batch %d, %d threads%s: median %.1f ms/iter (bench), profiled mean %.1f ms/iter\n", c.model,
         hakd_bench_mode_name(c.mode), c.teacher ? " teacher " : "", c.teacher ? c.teacher : "", c.height, c.width,
         c.batch, r.threads, blas_threads_pinned > 0 ? " (OpenBLAS pinned)" : "", r.ms_median, total * per);
  printf("  student forward %.1f, teacher forward %.1f, backward %.1f, optimizer %.1f, zero_grad %.1f, "
         "outside ops %.1f ms/iter; step arena %.0f MB, peak RSS %.0f MB\n",
         forward_s[0] * per, forward_s[1] * per, backward_s * per, optim_s * per, zero_grad_s * per, (total - ops) * per,
         r.arena_mb, r.peak_rss_mb);
  /* hakd bench's count: the products' multiply-adds as executed (padding taps left out), so the
   * per-kind GFLOP/s below (every convolution tap counted) can exceed it */
  printf("  executed %.3f GFLOP/iter (products only), %.1f GFLOP/s at the median step\n\n", r.flops_per_iter / 1e9,
         r.gflops);

  /* by op kind */
  op_key kinds[256];
  int n_kinds = 0;
  for (int k = 0; k < n_keys; k++) {
    int j = 0;
    while (j < n_kinds && strcmp(kinds[j].kind, keys[k].kind)) j++;
    if (j == n_kinds) {
      if (n_kinds == 256) continue;
      memset(&kinds[n_kinds], 0, sizeof kinds[0]);
      memcpy(kinds[n_kinds].kind, keys[k].kind, sizeof kinds[0].kind);
      n_kinds++;
    }
    kinds[j].fwd_s += keys[k].fwd_s;
    kinds[j].bwd_s += keys[k].bwd_s;
    kinds[j].flops += keys[k].flops;
    kinds[j].calls += keys[k].calls;
    kinds[j].out_bytes += keys[k].out_bytes;
  }
  qsort(kinds, (size_t)n_kinds, sizeof kinds[0], by_total_time);
  printf("%-22s %9s %9s %7s %7s %8s   (per iteration; T: = teacher; share of the step; out MB = outputs written)\n",
         "op", "fwd ms", "bwd ms", "share", "calls", "out MB");
  for (int j = 0; j < n_kinds; j++) print_row(&kinds[j], per, total);
  qsort(keys, (size_t)n_keys, sizeof keys[0], by_total_time);
  printf("\ntop %d op shapes (inputs -> output):\n", top);
  for (int k = 0; k < n_keys && k < top; k++)
    print_row(&keys[k], per, total);
  return 0;
}
