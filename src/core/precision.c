#include <string.h>

#include "hakd/tensor.h"

int hakd_precision_parse(const char *text, hakd_precision *out) {
  if (text && !strcmp(text, "fp32")) {
    *out = HAKD_FP32;
    return 0;
  }
  if (!text || strcmp(text, "bf16"))
    return hakd_error(HAKD_EINVAL, "precision '%s': expected fp32 or bf16", text ? text : "");
  /* oneDNN would fall back to a reference kernel many times slower than fp32 */
  if (!__builtin_cpu_supports("avx512bf16"))
    return hakd_error(HAKD_EUNSUPPORTED, "precision bf16 needs a CPU with AVX512-BF16; this one has none (use fp32)");
  *out = HAKD_BF16;
  return 0;
}

const char *hakd_precision_name(hakd_precision precision) { return precision == HAKD_BF16 ? "bf16" : "fp32"; }
