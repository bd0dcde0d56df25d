#include <omp.h>
#include <stdlib.h>

#include "hakd/tensor.h"

void openblas_set_num_threads(int num_threads);

static int n_threads;

void hakd_set_threads(int n) {
  if (n <= 0) {
    const char *env = getenv("OMP_NUM_THREADS");
    n = env ? atoi(env) : 0;
    if (n <= 0) n = omp_get_num_procs();
  }
  n_threads = n;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

int hakd_get_threads(void) {
  if (!n_threads) hakd_set_threads(0);
  return n_threads;
}
