/* Round to nearest even bfloat16, what oneDNN's reorders do to the operands of bf16 products. */
#ifndef HAKD_TESTS_BF16_H
#define HAKD_TESTS_BF16_H

#include <stdint.h>
#include <string.h>

#include "harness.h"
#include "hakd/tensor.h"

static inline float round_bf16(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&v, &u, sizeof v);
  return v;
}

/* On machines where bf16 cannot run (no AVX512-BF16, or oneDNN capped below it with
 * ONEDNN_MAX_CPU_ISA) an op asked for it fails with the reason instead of computing: that refusal is
 * what these tests check there. */
static inline int bf16_refused(hakd_ctx *ctx, hakd_tensor *y, const char *op) {
  if (hakd_bf16_supported()) return 0;
  if (y != NULL || hakd_ctx_status(ctx) != HAKD_EUNSUPPORTED || !strstr(hakd_error_message(), "AVX512-BF16") ||
      !strstr(hakd_error_message(), op))
    test_fail(__FILE__, __LINE__, "%s in bf16 without AVX512-BF16 kernels: expected a refusal naming them, got %s (%s)",
              op, y ? "a result" : "an error", hakd_error_message());
  return 1;
}

#endif
