/* Line plots as PNG files (loss curves, val mIoU), drawn directly into an RGB buffer with a
 * built-in 3x5 pixel font: no plotting library needed. */
#ifndef HAKD_IO_PLOT_H
#define HAKD_IO_PLOT_H

typedef struct {
  const char *name;
  const double *x, *y;
  int n;
} plot_series;

int plot_write_png(const char *path, const char *title, const plot_series *series, int n_series, int width,
                   int height);

/* Heat map of values (h, w) in [0, max] with a blue-red colour map into rgb (h*w*3). */
void plot_heatmap(unsigned char *rgb, const float *values, int n, float max);

#endif
