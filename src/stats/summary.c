#include <math.h>

#include "hakd/stats.h"

double hakd_t975(int df) {
  /* two-sided 95% critical values of Student's t, df = 1..30 */
  static const double table[30] = {
      12.706204736, 4.302652730, 3.182446305, 2.776445105, 2.570581836, 2.446911851, 2.364624252, 2.306004135,
      2.262157163,  2.228138852, 2.200985160, 2.178812830, 2.160368656, 2.144786688, 2.131449546, 2.119905299,
      2.109815578,  2.100922040, 2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.068657610, 2.063898562,
      2.059538553,  2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456};
  if (df < 1) return NAN;
  if (df <= 30) return table[df - 1];
  /* Cornish-Fisher expansion of the t quantile around the normal one (Abramowitz & Stegun 26.7.5) */
  double z = 1.959963984540054, z3 = z * z * z, z5 = z3 * z * z, z7 = z5 * z * z, v = df;
  return z + (z3 + z) / (4 * v) + (5 * z5 + 16 * z3 + 3 * z) / (96 * v * v) +
         (3 * z7 + 19 * z5 + 17 * z3 - 15 * z) / (384 * v * v * v);
}

hakd_summary hakd_summarize(const double *x, int n) {
  hakd_summary s = {n, NAN, 0.0, NAN, NAN};
  if (n < 1) return s;
  double sum = 0;
  for (int i = 0; i < n; i++) sum += x[i];
  s.mean = sum / n;
  if (n < 2) return s;
  double ss = 0; /* two-pass: no cancellation */
  for (int i = 0; i < n; i++) ss += (x[i] - s.mean) * (x[i] - s.mean);
  s.std = sqrt(ss / (n - 1));
  double half = hakd_t975(n - 1) * s.std / sqrt((double)n);
  s.ci_lo = s.mean - half;
  s.ci_hi = s.mean + half;
  return s;
}

hakd_summary hakd_summarize_paired(const double *a, const double *b, int n) {
  double d[n > 0 ? n : 1];
  for (int i = 0; i < n; i++) d[i] = a[i] - b[i];
  return hakd_summarize(d, n);
}
