/* Round to nearest even bfloat16, what oneDNN's reorders do to the operands of bf16 products. */
#ifndef HAKD_TESTS_BF16_H
#define HAKD_TESTS_BF16_H

#include <stdint.h>
#include <string.h>

static inline float round_bf16(float v) {
  uint32_t u;
  memcpy(&u, &v, sizeof u);
  u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
  memcpy(&v, &u, sizeof v);
  return v;
}

#endif
