/* Finite-difference gradient check shared by the op tests (header-only).
 *
 * The function under test is y = build(ctx, inputs); the scalar checked is L = sum_i r_i * y_i
 * with a fixed pseudo-random r, accumulated in double. Analytic dL/dx comes from the tape
 * (hakd_backward_seeded with r); numeric from central differences on float inputs. */
#ifndef HAKD_TEST_GRADCHECK_H
#define HAKD_TEST_GRADCHECK_H

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hakd/ops.h"

typedef hakd_tensor *(*gradcheck_build_fn)(hakd_ctx *ctx, hakd_tensor **inputs, void *arg);

/* Checks every float input with requires_grad in inputs[0..n). At most `max_points` elements per
 * input are probed (spread evenly). Passes when |analytic - numeric| <= atol + rtol * |numeric|
 * for every probed element; prints the worst one otherwise. Returns 1 on pass. */
static inline int gradcheck(const char *what, gradcheck_build_fn build, void *arg, hakd_tensor **inputs, int n,
                            double eps, double atol, double rtol, int max_points) {
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_seed(ctx, 1234);
  hakd_tensor *y = build(ctx, inputs, arg);
  if (!y) {
    test_fail(__FILE__, __LINE__, "%s: forward failed: %s", what, hakd_error_message());
    hakd_ctx_free(ctx);
    return 0;
  }
  int64_t ny = hakd_numel(y);
  float *r = malloc((size_t)ny * sizeof *r);
  uint64_t rng = hakd_rng_seed(99);
  for (int64_t i = 0; i < ny; i++) r[i] = hakd_rng_uniform(&rng) * 2.0f - 1.0f;
  for (int k = 0; k < n; k++)
    if (inputs[k] && inputs[k]->grad && inputs[k]->is_param)
      memset(inputs[k]->grad, 0, (size_t)hakd_numel(inputs[k]) * sizeof(float));
  if (hakd_backward_seeded(ctx, y, r) != 0) {
    test_fail(__FILE__, __LINE__, "%s: backward failed: %s", what, hakd_error_message());
    free(r);
    hakd_ctx_free(ctx);
    return 0;
  }
  int ok = 1;
  for (int k = 0; k < n && ok; k++) {
    hakd_tensor *x = inputs[k];
    if (!x || x->dtype != HAKD_F32 || !x->requires_grad) continue;
    int64_t nx = hakd_numel(x);
    float *analytic = malloc((size_t)nx * sizeof(float));
    if (x->grad)
      memcpy(analytic, x->grad, (size_t)nx * sizeof(float));
    else
      memset(analytic, 0, (size_t)nx * sizeof(float));
    int64_t step = nx > max_points ? nx / max_points : 1;
    float *xd = hakd_f32(x);
    for (int64_t i = 0; i < nx && ok; i += step) {
      float saved = xd[i];
      double lsum[2];
      for (int side = 0; side < 2; side++) {
        xd[i] = (float)(saved + (side ? -eps : eps));
        hakd_ctx *c2 = hakd_ctx_new();
        hakd_ctx_seed(c2, 1234);
        hakd_ctx_set_grad(c2, 0);
        hakd_tensor *y2 = build(c2, inputs, arg);
        double l = 0;
        for (int64_t j = 0; j < ny; j++) l += (double)r[j] * (double)hakd_f32(y2)[j];
        lsum[side] = l;
        hakd_ctx_free(c2);
      }
      xd[i] = saved;
      double numeric = (lsum[0] - lsum[1]) / (2 * eps);
      double diff = fabs(numeric - (double)analytic[i]);
      if (!(diff <= atol + rtol * fabs(numeric))) {
        test_fail(__FILE__, __LINE__, "%s: input %d element %lld: analytic %.6g vs numeric %.6g (diff %.3g > %.3g)",
                  what, k, (long long)i, (double)analytic[i], numeric, diff, atol + rtol * fabs(numeric));
        ok = 0;
      }
    }
    free(analytic);
  }
  free(r);
  hakd_ctx_free(ctx);
  return ok;
}

/* A leaf input that requires grad, owned by the caller's hakd_params, filled with N(0, scale). */
static inline hakd_tensor *gradcheck_input(hakd_params *p, const char *name, int ndim, const int64_t *shape,
                                           float scale, uint64_t seed) {
  hakd_tensor *t = hakd_params_add(p, name, ndim, shape, 0);
  uint64_t rng = hakd_rng_seed(seed);
  for (int64_t i = 0; i < hakd_numel(t); i++) hakd_f32(t)[i] = scale * hakd_rng_normal(&rng);
  return t;
}

#endif
