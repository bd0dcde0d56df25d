/* Kernel benchmark: GFLOP/s of hakd_conv2d forward and backward on the conv shapes of ResNet-18
 * (dilated, output stride 8) and SegFormer-B0 layers, batch 2, for both conv paths (HAKD_CONV=gemm
 * and dnnl), next to the measured sgemm peak (2048^3) and the plain sgemm of each layer's GEMM
 * shape (M = Cout/groups, N = oh*ow, K = Cin/groups*kh*kw; one image and group). The taps columns
 * run the tap path (groups 1 only; "-" otherwise), which skips the products with the padding:
 * its GFLOP/s count the nominal FLOPs like the others, so they compare times directly. The auto
 * columns run the rules hakd uses when no path is forced (conv2d_auto_forward_path for the
 * forward; conv2d_auto_path and conv2d_backward_by_taps for the backward, which may mix paths).
 *
 * usage: bench_kernels [filter]   (only layers whose name contains filter)
 * Threads: OMP_NUM_THREADS (default: all cores). */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hakd/ops.h"

typedef struct {
  const char *name;
  int n, cin, h, w, cout, k, stride, pad, dilation, groups, bias;
  int input_grad; /* 0 for layers reading the image: their backward computes only dw (and db) */
} bench_conv;

static const bench_conv bench_convs[] = {
    {"r18.stem 7x7 s2 3->64 @512", 2, 3, 512, 512, 64, 7, 2, 3, 1, 1, 0, 0},
    {"r18.layer1 3x3 64->64 @128", 2, 64, 128, 128, 64, 3, 1, 1, 1, 1, 0, 1},
    {"r18.layer3 3x3 128->128 d2 @64", 2, 128, 64, 64, 128, 3, 1, 2, 2, 1, 0, 1},
    {"r18.layer4 3x3 512->512 d4 @64", 2, 512, 64, 64, 512, 3, 1, 4, 4, 1, 0, 1},
    {"r18.down 1x1 s2 64->128 @128", 2, 64, 128, 128, 128, 1, 2, 0, 1, 1, 0, 1},
    {"aspp 3x3 512->128 d12 @64", 2, 512, 64, 64, 128, 3, 1, 12, 12, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d12 @64", 2, 2048, 64, 64, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d12 @32", 2, 2048, 32, 32, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d24 @32", 2, 2048, 32, 32, 256, 3, 1, 24, 24, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d12 @16", 2, 2048, 16, 16, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d24 @16", 2, 2048, 16, 16, 256, 3, 1, 24, 24, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d12 @16", 2, 512, 16, 16, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d12 @32", 2, 512, 32, 32, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d12 @64", 2, 512, 64, 64, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d24 @64", 2, 512, 64, 64, 256, 3, 1, 24, 24, 1, 0, 1},
    {"r50.aspp 3x3 2048->256 d24 @64", 2, 2048, 64, 64, 256, 3, 1, 24, 24, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d12 @128", 2, 512, 128, 128, 256, 3, 1, 12, 12, 1, 0, 1},
    {"r18.aspp 3x3 512->256 d36 @128", 2, 512, 128, 128, 256, 3, 1, 36, 36, 1, 0, 1},
    {"r18.layer4 3x3 512->512 d4 @8", 2, 512, 8, 8, 512, 3, 1, 4, 4, 1, 0, 1},
    {"b0.patch 7x7 s4 3->32 @512", 2, 3, 512, 512, 32, 7, 4, 3, 1, 1, 1, 0},
    {"b0.patch2 3x3 s2 32->64 @128", 2, 32, 128, 128, 64, 3, 2, 1, 1, 1, 1, 1},
    {"b0.dwconv 3x3 128ch @128", 2, 128, 128, 128, 128, 3, 1, 1, 1, 128, 1, 1},
    {"b0.sr 8x8 s8 32->32 @128", 2, 32, 128, 128, 32, 8, 8, 0, 1, 1, 1, 1},
    {"b0.fuse 1x1 256->256 @128", 2, 256, 128, 128, 256, 1, 1, 0, 1, 1, 0, 1},
    {"r50.layer1 1x1 64->256 @32", 2, 64, 32, 32, 256, 1, 1, 0, 1, 1, 0, 1},
    {"r50.layer1 1x1 256->64 @32", 2, 256, 32, 32, 64, 1, 1, 0, 1, 1, 0, 1},
    {"r50.layer3 1x1 256->1024 @16", 2, 256, 16, 16, 1024, 1, 1, 0, 1, 1, 0, 1},
    {"r50.layer3 3x3 256->256 d2 @16", 2, 256, 16, 16, 256, 3, 1, 2, 2, 1, 0, 1},
    {"r50.layer4 3x3 512->512 d4 @16", 2, 512, 16, 16, 512, 3, 1, 4, 4, 1, 0, 1},
    {"r50.layer4 1x1 512->2048 @16", 2, 512, 16, 16, 2048, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d12 @16 b1", 1, 320, 16, 16, 256, 3, 1, 12, 12, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d24 @16 b1", 1, 320, 16, 16, 256, 3, 1, 24, 24, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d12 @32", 2, 320, 32, 32, 256, 3, 1, 12, 12, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d24 @32", 2, 320, 32, 32, 256, 3, 1, 24, 24, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d36 @32", 2, 320, 32, 32, 256, 3, 1, 36, 36, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d12 @64 b1", 1, 320, 64, 64, 256, 3, 1, 12, 12, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d12 @64", 2, 320, 64, 64, 256, 3, 1, 12, 12, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d24 @64", 2, 320, 64, 64, 256, 3, 1, 24, 24, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d24 @64 b1", 1, 320, 64, 64, 256, 3, 1, 24, 24, 1, 0, 1},
    {"mbv2.aspp 3x3 320->256 d36 @64 b1", 1, 320, 64, 64, 256, 3, 1, 36, 36, 1, 0, 1},
    {"mbv2.expand 1x1 160->960 @64 b1", 1, 160, 64, 64, 960, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.project 1x1 960->160 @64 b1", 1, 960, 64, 64, 160, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.head 1x1 1280->256 @64 b1", 1, 1280, 64, 64, 256, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.expand 1x1 96->576 @64 b1", 1, 96, 64, 64, 576, 1, 1, 0, 1, 1, 0, 1},
    {"r50.expand 1x1 512->2048 @32", 2, 512, 32, 32, 2048, 1, 1, 0, 1, 1, 0, 1},
    {"r50.reduce 1x1 2048->512 @32", 2, 2048, 32, 32, 512, 1, 1, 0, 1, 1, 0, 1},
    {"r50.reduce 1x1 1024->256 @32", 2, 1024, 32, 32, 256, 1, 1, 0, 1, 1, 0, 1},
    {"r50.expand 1x1 512->2048 @16", 2, 512, 16, 16, 2048, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.expand 1x1 160->960 @32", 2, 160, 32, 32, 960, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.expand 1x1 160->960 @16 b1", 1, 160, 16, 16, 960, 1, 1, 0, 1, 1, 0, 1},
    {"mbv2.project 1x1 960->160 @16 b1", 1, 960, 16, 16, 160, 1, 1, 0, 1, 1, 0, 1},
};

static double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void bench_fill(float *x, int64_t n, uint64_t seed) {
  uint64_t rng = hakd_rng_seed(seed);
  for (int64_t i = 0; i < n; i++) x[i] = hakd_rng_uniform(&rng) - 0.5f;
}

/* GFLOP/s of cblas_sgemm(m, n, k), best of a few runs of at least ~0.2 s in total. */
static double bench_sgemm(int m, int n, int k) {
  float *a = malloc((size_t)m * k * sizeof(float)), *b = malloc((size_t)k * n * sizeof(float));
  float *c = malloc((size_t)m * n * sizeof(float));
  bench_fill(a, (int64_t)m * k, 1);
  bench_fill(b, (int64_t)k * n, 2);
  double flops = 2.0 * m * n * k, best = 1e30, total = 0;
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
  for (int r = 0; r < 50 && (r < 3 || total < 0.2); r++) {
    double t0 = bench_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
    double t = bench_now() - t0;
    total += t;
    if (t < best) best = t;
  }
  free(a);
  free(b);
  free(c);
  return flops / best * 1e-9;
}

/* Best forward and backward seconds of one conv layer on the path set in HAKD_CONV. */
static int bench_conv_run(const bench_conv *bc, double *fwd, double *bwd) {
  hakd_params p;
  hakd_params_init(&p);
  int64_t xs[4] = {bc->n, bc->cin, bc->h, bc->w}, ws[4] = {bc->cout, bc->cin / bc->groups, bc->k, bc->k};
  int64_t bs[1] = {bc->cout};
  hakd_tensor *x = hakd_params_add(&p, "x", 4, xs, !bc->input_grad), *w = hakd_params_add(&p, "w", 4, ws, 0);
  hakd_tensor *b = bc->bias ? hakd_params_add(&p, "b", 1, bs, 0) : NULL;
  if (!x || !w || (bc->bias && !b)) return -1;
  bench_fill(hakd_f32(x), hakd_numel(x), 3);
  bench_fill(hakd_f32(w), hakd_numel(w), 4);
  hakd_ctx *ctx = hakd_ctx_new();
  *fwd = *bwd = 1e30;
  double total = 0;
  int rc = 0;
  for (int r = 0; r < 20 && (r < 3 || total < 1.0); r++) { /* run 0 warms up (primitives, arena) */
    hakd_ctx_reset(ctx);
    double t0 = bench_now();
    hakd_tensor *y = hakd_conv2d(ctx, x, w, b, bc->stride, bc->pad, bc->dilation, bc->groups);
    double t1 = bench_now();
    if (!y || hakd_backward(ctx, y) != 0) {
      rc = -1;
      break;
    }
    double t2 = bench_now();
    if (r == 0) continue;
    total += t2 - t0;
    if (t1 - t0 < *fwd) *fwd = t1 - t0;
    if (t2 - t1 < *bwd) *bwd = t2 - t1;
  }
  hakd_ctx_free(ctx);
  hakd_params_free(&p);
  return rc;
}

int main(int argc, char **argv) {
  const char *filter = argc > 1 ? argv[1] : NULL;
  hakd_set_threads(0);
  printf("threads: %d\n", hakd_get_threads());
  double peak = bench_sgemm(2048, 2048, 2048);
  printf("sgemm peak 2048^3: %.1f GFLOP/s\n\n", peak);
  printf("%-32s %-20s %7s | %8s %8s %8s %8s | %8s %8s %8s %8s | %s\n", "layer (batch 2)", "gemm M x N x K",
         "sgemm", "fwd gemm", "fwd dnnl", "fwd taps", "fwd auto", "bwd gemm", "bwd dnnl", "bwd taps", "bwd auto",
         "nominal GFLOP/s; winner of the forced paths fwd/bwd");
  for (size_t i = 0; i < sizeof bench_convs / sizeof bench_convs[0]; i++) {
    const bench_conv *bc = &bench_convs[i];
    if (filter && !strstr(bc->name, filter)) continue;
    int oh = (bc->h + 2 * bc->pad - bc->dilation * (bc->k - 1) - 1) / bc->stride + 1;
    int ow = (bc->w + 2 * bc->pad - bc->dilation * (bc->k - 1) - 1) / bc->stride + 1;
    int m = bc->cout / bc->groups, n = oh * ow, k = bc->cin / bc->groups * bc->k * bc->k;
    /* forward; backward computes dw and (unless input_grad is 0) dx, each as much again */
    double flops = 2.0 * bc->n * bc->groups * (double)m * n * k, bwd_flops = (bc->input_grad ? 2 : 1) * flops;
    double gemm_rate = bench_sgemm(m, n, k);
    double t[3][2] = {{0}}, ta[2] = {0}; /* [path][fwd, bwd]; the auto rule's */
    const char *paths[3] = {"gemm", "dnnl", "taps"};
    int n_paths = bc->groups == 1 ? 3 : 2;
    for (int pth = 0; pth <= n_paths; pth++) {
      setenv("HAKD_CONV", pth < n_paths ? paths[pth] : "auto", 1);
      double *tp = pth < n_paths ? t[pth] : ta;
      if (bench_conv_run(bc, &tp[0], &tp[1]) != 0) {
        fprintf(stderr, "%s (%s): %s\n", bc->name, pth < n_paths ? paths[pth] : "auto", hakd_error_message());
        return 1;
      }
    }
    char shape[32];
    snprintf(shape, sizeof shape, "%dx%dx%d", m, n, k);
    int fwin = 0, bwin = 0;
    for (int pth = 1; pth < n_paths; pth++) {
      if (t[pth][0] < t[fwin][0]) fwin = pth;
      if (t[pth][1] < t[bwin][1]) bwin = pth;
    }
    char taps_f[16] = "-", taps_b[16] = "-";
    if (n_paths == 3) {
      snprintf(taps_f, sizeof taps_f, "%.1f", flops / t[2][0] * 1e-9);
      snprintf(taps_b, sizeof taps_b, "%.1f", bwd_flops / t[2][1] * 1e-9);
    }
    printf("%-32s %-20s %7.1f | %8.1f %8.1f %8s %8.1f | %8.1f %8.1f %8s %8.1f | %s/%s\n", bc->name, shape,
           gemm_rate, flops / t[0][0] * 1e-9, flops / t[1][0] * 1e-9, taps_f, flops / ta[0] * 1e-9,
           bwd_flops / t[0][1] * 1e-9, bwd_flops / t[1][1] * 1e-9, taps_b, bwd_flops / ta[1] * 1e-9, paths[fwin],
           paths[bwin]);
    fflush(stdout);
  }
  unsetenv("HAKD_CONV");
  return 0;
}
