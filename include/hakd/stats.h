/* Statistics of repeated experiments: seeds are paired (the same seed gives the same data, the same
 * teacher and the same student initialisation to every method), so a method is judged by its
 * per-seed differences against a baseline and their Student-t 95% interval, not by two means. */
#ifndef HAKD_STATS_H
#define HAKD_STATS_H

typedef struct {
  int n;               /* values */
  double mean, std;    /* std: sample standard deviation (n - 1); 0 when n < 2 */
  double ci_lo, ci_hi; /* 95% t-interval of the mean: mean -+ t(0.975, n-1) std / sqrt(n); NaN when n < 2 */
} hakd_summary;

/* The 0.975 quantile of Student's t with df degrees of freedom (df >= 1): exact table to df 30,
 * Cornish-Fisher expansion above (error < 1e-5 there). */
double hakd_t975(int df);
/* Mean, std and 95% interval of x[0..n-1] (n >= 1). */
hakd_summary hakd_summarize(const double *x, int n);
/* The same of the paired differences a[i] - b[i]. */
hakd_summary hakd_summarize_paired(const double *a, const double *b, int n);

#endif
