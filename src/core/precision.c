#include <dnnl.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/tensor.h"

/* bf16 runs only where oneDNN will use its AVX512-BF16 kernels: the CPU must have the instructions
 * and oneDNN must not be capped below them (ONEDNN_MAX_CPU_ISA, or DNNL_MAX_CPU_ISA). Elsewhere
 * oneDNN would fall back to reference kernels many times slower than fp32, or find none. The ISA
 * values are nested bit sets, so "at least avx512_core_bf16" is a mask test. */
int hakd_bf16_check(void) {
  if (!__builtin_cpu_supports("avx512bf16"))
    return hakd_error(HAKD_EUNSUPPORTED, "precision bf16 needs a CPU with AVX512-BF16; this one has none (use fp32)");
  unsigned isa = (unsigned)dnnl_get_effective_cpu_isa(), need = (unsigned)dnnl_cpu_isa_avx512_core_bf16;
  if ((isa & need) != need) {
    const char *cap = getenv("ONEDNN_MAX_CPU_ISA");
    if (!cap) cap = getenv("DNNL_MAX_CPU_ISA");
    return hakd_error(HAKD_EUNSUPPORTED,
                      "precision bf16 needs oneDNN's AVX512-BF16 kernels, but oneDNN is capped below them here "
                      "(ONEDNN_MAX_CPU_ISA=%s; use fp32)",
                      cap ? cap : "?");
  }
  return 0;
}

int hakd_bf16_supported(void) {
  static int cached = -1;
  if (cached < 0) cached = !__builtin_cpu_supports("avx512bf16") ? 0 : hakd_bf16_check() == 0;
  return cached;
}

int hakd_precision_parse(const char *text, hakd_precision *out) {
  if (text && !strcmp(text, "fp32")) {
    *out = HAKD_FP32;
    return 0;
  }
  if (!text || strcmp(text, "bf16"))
    return hakd_error(HAKD_EINVAL, "precision '%s': expected fp32 or bf16", text ? text : "");
  int rc = hakd_bf16_check();
  if (rc) return rc;
  *out = HAKD_BF16;
  return 0;
}

const char *hakd_precision_name(hakd_precision precision) { return precision == HAKD_BF16 ? "bf16" : "fp32"; }
