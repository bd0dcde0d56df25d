/* The machine's real peaks, for the "share of peak" columns of the benchmarks: prints one JSON
 * line with GFLOP/s (one multiply-add = 2 FLOPs) of
 *   fma_fp32        a register-only loop of 512-bit float32 FMAs (vfmadd231ps) on every thread:
 *                   the instruction limit, no memory;
 *   dot_bf16        the same with AVX512-BF16 dot products (vdpbf16ps: 2 bfloat16 multiply-adds
 *                   per float32 lane) -- the bf16 precision's ceiling; 0 when the CPU has none;
 *   sgemm_openblas  cblas_sgemm 2048^3 with OpenBLAS's threads, with whatever kernels the
 *                   environment gives it (OPENBLAS_CORETYPE; printed as openblas_core);
 *   matmul_dnnl     oneDNN's float32 matmul primitive 2048^3 (its own JIT for the CPU's ISA);
 *   matmul_dnnl_bf16  oneDNN's matmul on bfloat16 operands with float32 results, 2048^3.
 * Best of repeated runs. Threads: OMP_NUM_THREADS (default: all cores), OpenBLAS's as set in the
 * environment (OPENBLAS_NUM_THREADS) or its default. */
#include <cblas.h>
#include <dnnl.h>
#include <immintrin.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hakd/ops.h"

static double peak_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

#define PEAK_ACC 12 /* independent accumulators: more than FMA latency x pipes */

/* Multiply-adds per thread of `iters` rounds of PEAK_ACC 16-lane FMAs; the sum keeps the loop. */
__attribute__((target("avx512f"))) static float peak_fma_loop(long iters) {
  __m512 acc[PEAK_ACC], a = _mm512_set1_ps(1.0000001f), b = _mm512_set1_ps(0.9999999f);
  for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_set1_ps((float)i);
  for (long it = 0; it < iters; it++)
    for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_fmadd_ps(a, acc[i], b);
  __m512 s = acc[0];
  for (int i = 1; i < PEAK_ACC; i++) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx512f,avx512bf16"))) static float peak_dot_bf16_loop(long iters) {
  __m512 acc[PEAK_ACC];
  __m512bh a = (__m512bh)_mm512_set1_epi16(0x3f80), b = (__m512bh)_mm512_set1_epi16(0x3f80); /* 1.0 */
  for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_setzero_ps();
  for (long it = 0; it < iters; it++)
    for (int i = 0; i < PEAK_ACC; i++) acc[i] = _mm512_dpbf16_ps(acc[i], a, b);
  __m512 s = acc[0];
  for (int i = 1; i < PEAK_ACC; i++) s = _mm512_add_ps(s, acc[i]);
  return _mm512_reduce_add_ps(s);
}

/* GFLOP/s of the loop on every OpenMP thread: best of 5 runs of `iters` rounds. */
static double peak_loop_gflops(int bf16, long iters) {
  double best = 1e30;
  volatile float sink = 0;
  for (int r = 0; r < 5; r++) {
    double t0 = peak_now();
    float total = 0;
#pragma omp parallel reduction(+ : total)
    total += bf16 ? peak_dot_bf16_loop(iters) : peak_fma_loop(iters);
    double t = peak_now() - t0;
    sink += total;
    if (t < best) best = t;
  }
  (void)sink;
  double macs_per_round = PEAK_ACC * 16.0 * (bf16 ? 2.0 : 1.0);
  return 2.0 * macs_per_round * (double)iters * omp_get_max_threads() / best * 1e-9;
}

static void peak_fill(float *x, size_t n) {
  for (size_t i = 0; i < n; i++) x[i] = (float)((i * 2654435761u) % 1000) / 1000.0f - 0.5f;
}

static double peak_sgemm(int n) {
  size_t nn = (size_t)n * n;
  float *a = malloc(nn * sizeof(float)), *b = malloc(nn * sizeof(float)), *c = malloc(nn * sizeof(float));
  if (!a || !b || !c) return 0;
  peak_fill(a, nn);
  peak_fill(b, nn);
  double best = 1e30;
  for (int r = 0; r < 6; r++) {
    double t0 = peak_now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c, n);
    double t = peak_now() - t0;
    if (r > 0 && t < best) best = t;
  }
  free(a);
  free(b);
  free(c);
  return 2.0 * n * (double)nn / best * 1e-9;
}

/* oneDNN matmul n^3 with operands of `type` (f32 or bf16) and a float32 result; 0 on failure. */
static double peak_dnnl_matmul(int n, dnnl_data_type_t type) {
  dnnl_engine_t engine;
  dnnl_stream_t stream;
  if (dnnl_engine_create(&engine, dnnl_cpu, 0) != dnnl_success) return 0;
  if (dnnl_stream_create(&stream, engine, dnnl_stream_default_flags) != dnnl_success) return 0;
  dnnl_dims_t dims = {n, n};
  dnnl_memory_desc_t in_md, out_md;
  dnnl_memory_desc_init_by_tag(&in_md, 2, dims, type, dnnl_ab);
  dnnl_memory_desc_init_by_tag(&out_md, 2, dims, dnnl_f32, dnnl_ab);
  dnnl_matmul_desc_t desc;
  dnnl_primitive_desc_t pd;
  dnnl_primitive_t prim;
  double best = 0;
  if (dnnl_matmul_desc_init(&desc, &in_md, &in_md, NULL, &out_md) == dnnl_success &&
      dnnl_primitive_desc_create(&pd, &desc, NULL, engine, NULL) == dnnl_success) {
    if (dnnl_primitive_create(&prim, pd) == dnnl_success) {
      dnnl_memory_t a, b, c;
      dnnl_memory_create(&a, &in_md, engine, DNNL_MEMORY_ALLOCATE);
      dnnl_memory_create(&b, &in_md, engine, DNNL_MEMORY_ALLOCATE);
      dnnl_memory_create(&c, &out_md, engine, DNNL_MEMORY_ALLOCATE);
      void *pa, *pb;
      dnnl_memory_get_data_handle(a, &pa);
      dnnl_memory_get_data_handle(b, &pb);
      memset(pa, 0x3f, dnnl_memory_desc_get_size(&in_md)); /* finite values in f32 and bf16 */
      memset(pb, 0x3f, dnnl_memory_desc_get_size(&in_md));
      dnnl_exec_arg_t args[3] = {{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
      double tbest = 1e30;
      for (int r = 0; r < 6; r++) {
        double t0 = peak_now();
        dnnl_primitive_execute(prim, stream, 3, args);
        dnnl_stream_wait(stream);
        double t = peak_now() - t0;
        if (r > 0 && t < tbest) tbest = t;
      }
      best = 2.0 * n * (double)n * n / tbest * 1e-9;
      dnnl_memory_destroy(a);
      dnnl_memory_destroy(b);
      dnnl_memory_destroy(c);
      dnnl_primitive_destroy(prim);
    }
    dnnl_primitive_desc_destroy(pd);
  }
  dnnl_stream_destroy(stream);
  dnnl_engine_destroy(engine);
  return best;
}

int main(void) {
  hakd_set_threads(0);
  __builtin_cpu_init();
  int has_avx512 = __builtin_cpu_supports("avx512f"), has_bf16 = __builtin_cpu_supports("avx512bf16");
  long iters = 20000000L;
  double fma = has_avx512 ? peak_loop_gflops(0, iters) : 0;
  double dot = has_bf16 ? peak_loop_gflops(1, iters / 2) : 0;
  double sgemm = peak_sgemm(2048);
  double dnnl = peak_dnnl_matmul(2048, dnnl_f32);
  double matmul_bf16 = has_bf16 ? peak_dnnl_matmul(2048, dnnl_bf16) : 0;
  const char *coretype = getenv("OPENBLAS_CORETYPE");
  printf("{\"threads\": %d, \"fma_fp32\": %.1f, \"dot_bf16\": %.1f, \"sgemm_openblas\": %.1f, "
         "\"openblas_core\": \"%s\", \"OPENBLAS_CORETYPE\": \"%s\", \"matmul_dnnl\": %.1f, "
         "\"matmul_dnnl_bf16\": %.1f}\n",
         omp_get_max_threads(), fma, dot, sgemm, openblas_get_corename(), coretype ? coretype : "", dnnl, matmul_bf16);
  return 0;
}
