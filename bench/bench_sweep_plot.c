/* Plot of the size sweep (bench/compare_pytorch.sh --sweep --tsv FILE): ms per image against
 * input pixels, log-log (x = log2 pixels, y = log10 ms per image), one line per model and side,
 * for one mode and batch, drawn with hakd's PNG plot writer (src/io/plot.c). On log-log axes a
 * step whose cost grows linearly with the pixels is a line of slope log10(2) per x unit; a
 * flatter start is fixed per-image overhead.
 *
 * usage: bench_sweep_plot SWEEP.tsv MODE BATCH OUT.png */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/error.h"
#include "io/plot.h"

#define SWEEP_MAX_POINTS 64

typedef struct {
  char name[32];
  double x[SWEEP_MAX_POINTS], y[SWEEP_MAX_POINTS];
  int n;
} sweep_series;

/* "deeplabv3-r50-d8" -> "r50", "segformer-b0" -> "b0": the legend has room for short names. */
static const char *short_model(const char *model) {
  if (!strncmp(model, "deeplabv3-", 10)) model += 10;
  if (!strncmp(model, "segformer-", 10)) model += 10;
  return model;
}

int main(int argc, char **argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: bench_sweep_plot SWEEP.tsv MODE BATCH OUT.png\n");
    return 2;
  }
  FILE *f = fopen(argv[1], "r");
  if (!f) {
    fprintf(stderr, "bench_sweep_plot: cannot open %s\n", argv[1]);
    return 1;
  }
  int want_batch = atoi(argv[3]);
  sweep_series series[8];
  int n_series = 0;
  char line[512];
  int lineno = 0;
  while (fgets(line, sizeof line, f)) {
    if (++lineno == 1) continue; /* header */
    char model[64], mode[16];
    int batch, size;
    double pixels, ms[2];
    if (sscanf(line, "%63s %15s %d %d %lf %lf %lf", model, mode, &batch, &size, &pixels, &ms[0], &ms[1]) != 7 ||
        pixels <= 0 || ms[0] <= 0 || ms[1] <= 0) {
      fprintf(stderr, "bench_sweep_plot: %s line %d: expected model mode batch size pixels hakd_ms torch_ms\n",
              argv[1], lineno);
      fclose(f);
      return 1;
    }
    if (strcmp(mode, argv[2]) || batch != want_batch) continue;
    for (int side = 0; side < 2; side++) {
      char name[32];
      snprintf(name, sizeof name, "%s %s", short_model(model), side ? "torch" : "hakd");
      int s = 0;
      while (s < n_series && strcmp(series[s].name, name)) s++;
      if (s == n_series) {
        if (n_series == 8) continue; /* the plot has 8 colours */
        memset(&series[s], 0, sizeof series[s]);
        snprintf(series[s].name, sizeof series[s].name, "%s", name);
        n_series++;
      }
      if (series[s].n < SWEEP_MAX_POINTS) {
        series[s].x[series[s].n] = log2(pixels);
        series[s].y[series[s].n] = log10(ms[side]);
        series[s].n++;
      }
    }
  }
  fclose(f);
  if (n_series == 0) {
    fprintf(stderr, "bench_sweep_plot: no %s points at batch %d in %s\n", argv[2], want_batch, argv[1]);
    return 1;
  }
  plot_series ps[8];
  for (int s = 0; s < n_series; s++) ps[s] = (plot_series){series[s].name, series[s].x, series[s].y, series[s].n};
  char title[96];
  snprintf(title, sizeof title, "%s b%d: log10 ms/img vs log2 pixels", argv[2], want_batch);
  if (plot_write_png(argv[4], title, ps, n_series, 900, 520) != 0) {
    fprintf(stderr, "bench_sweep_plot: %s\n", hakd_error_message());
    return 1;
  }
  printf("wrote %s (%d series)\n", argv[4], n_series);
  return 0;
}
