#include "io/plot.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"

/* 3x5 glyphs: five rows of three bits (MSB = left column). */
static const struct {
  char c;
  unsigned char rows[5];
} font[] = {
    {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 7, 1, 7}},
    {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 1, 1, 1}},
    {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'.', {0, 0, 0, 0, 2}}, {'-', {0, 0, 7, 0, 0}},
    {':', {0, 2, 0, 2, 0}}, {'/', {1, 1, 2, 4, 4}}, {'_', {0, 0, 0, 0, 7}}, {'+', {0, 2, 7, 2, 0}},
    {'e', {7, 4, 7, 4, 7}}, {'a', {2, 5, 7, 5, 5}}, {'b', {6, 5, 6, 5, 6}}, {'c', {7, 4, 4, 4, 7}},
    {'d', {6, 5, 5, 5, 6}}, {'f', {7, 4, 6, 4, 4}}, {'g', {7, 4, 5, 5, 7}}, {'h', {5, 5, 7, 5, 5}},
    {'i', {7, 2, 2, 2, 7}}, {'j', {1, 1, 1, 5, 7}}, {'k', {5, 5, 6, 5, 5}}, {'l', {4, 4, 4, 4, 7}},
    {'m', {5, 7, 7, 5, 5}}, {'n', {6, 5, 5, 5, 5}}, {'o', {7, 5, 5, 5, 7}}, {'p', {7, 5, 7, 4, 4}},
    {'q', {7, 5, 5, 7, 1}}, {'r', {6, 5, 6, 5, 5}}, {'s', {7, 4, 7, 1, 7}}, {'t', {7, 2, 2, 2, 2}},
    {'u', {5, 5, 5, 5, 7}}, {'v', {5, 5, 5, 5, 2}}, {'w', {5, 5, 7, 7, 5}}, {'x', {5, 5, 2, 5, 5}},
    {'y', {5, 5, 2, 2, 2}}, {'z', {7, 1, 2, 4, 7}}, {'(', {1, 2, 2, 2, 1}}, {')', {4, 2, 2, 2, 4}},
};

typedef struct {
  unsigned char *rgb;
  int w, h;
} canvas;

static void put(canvas *c, int x, int y, const unsigned char color[3]) {
  if (x < 0 || y < 0 || x >= c->w || y >= c->h) return;
  memcpy(c->rgb + 3 * ((size_t)y * c->w + x), color, 3);
}

static void text(canvas *c, int x, int y, const char *s, int scale, const unsigned char color[3]) {
  for (; *s; s++, x += 4 * scale) {
    char ch = (char)tolower((unsigned char)*s);
    for (size_t g = 0; g < sizeof font / sizeof font[0]; g++) {
      if (font[g].c != ch) continue;
      for (int r = 0; r < 5; r++)
        for (int col = 0; col < 3; col++)
          if (font[g].rows[r] & (4 >> col))
            for (int dy = 0; dy < scale; dy++)
              for (int dx = 0; dx < scale; dx++) put(c, x + col * scale + dx, y + r * scale + dy, color);
    }
  }
}

static void line(canvas *c, int x0, int y0, int x1, int y1, const unsigned char color[3]) {
  int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1, err = dx + dy;
  for (;;) {
    put(c, x0, y0, color);
    put(c, x0, y0 + 1, color);
    if (x0 == x1 && y0 == y1) break;
    int e2 = 2 * err;
    if (e2 >= dy) err += dy, x0 += sx;
    if (e2 <= dx) err += dx, y0 += sy;
  }
}

static const unsigned char series_colors[][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
                                                 {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127}};

int plot_write_png(const char *path, const char *title, const plot_series *series, int n_series, int width,
                   int height) {
  canvas c = {calloc((size_t)width * height * 3, 1), width, height};
  if (!c.rgb) return hakd_error(HAKD_ENOMEM, "out of memory plotting %s", path);
  memset(c.rgb, 255, (size_t)width * height * 3);
  const unsigned char black[3] = {0, 0, 0}, grid[3] = {225, 225, 225};
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (int s = 0; s < n_series; s++)
    for (int i = 0; i < series[s].n; i++) {
      if (!isfinite(series[s].y[i])) continue;
      xmin = fmin(xmin, series[s].x[i]), xmax = fmax(xmax, series[s].x[i]);
      ymin = fmin(ymin, series[s].y[i]), ymax = fmax(ymax, series[s].y[i]);
    }
  if (!(xmax > xmin)) xmax = xmin + 1;
  if (!isfinite(xmin)) xmin = 0, xmax = 1;
  if (!(ymax > ymin)) ymax = ymin + 1;
  if (!isfinite(ymin)) ymin = 0, ymax = 1;
  int left = 70, right = width - 20, top = 40, bottom = height - 40;
  text(&c, left, 12, title, 3, black);
  char label[32];
  for (int t = 0; t <= 4; t++) {
    int y = bottom - (bottom - top) * t / 4;
    for (int x = left; x <= right; x++) put(&c, x, y, grid);
    snprintf(label, sizeof label, "%.3g", ymin + (ymax - ymin) * t / 4);
    text(&c, 4, y - 5, label, 2, black);
  }
  for (int t = 0; t <= 4; t++) {
    int x = left + (right - left) * t / 4;
    snprintf(label, sizeof label, "%.4g", xmin + (xmax - xmin) * t / 4);
    text(&c, x - 8, bottom + 10, label, 2, black);
  }
  line(&c, left, top, left, bottom, black);
  line(&c, left, bottom, right, bottom, black);
  for (int s = 0; s < n_series; s++) {
    const unsigned char *color = series_colors[s % 8];
    int px = -1, py = -1;
    for (int i = 0; i < series[s].n; i++) {
      if (!isfinite(series[s].y[i])) continue;
      int x = left + (int)((right - left) * (series[s].x[i] - xmin) / (xmax - xmin));
      int y = bottom - (int)((bottom - top) * (series[s].y[i] - ymin) / (ymax - ymin));
      if (px >= 0) line(&c, px, py, x, y, color);
      put(&c, x, y, color);
      px = x, py = y;
    }
    int ly = top + 6 + 16 * s;
    for (int dy = 0; dy < 10; dy++)
      for (int dx = 0; dx < 10; dx++) put(&c, right - 150 + dx, ly + dy, color);
    text(&c, right - 134, ly, series[s].name, 2, black);
  }
  int rc = hakd_png_write_rgb(path, width, height, c.rgb);
  free(c.rgb);
  return rc;
}

void plot_heatmap(unsigned char *rgb, const float *values, int n, float max) {
  for (int i = 0; i < n; i++) {
    float v = max > 0 ? values[i] / max : 0;
    if (v < 0) v = 0;
    if (v > 1) v = 1;
    /* dark blue -> cyan -> yellow -> red */
    float r = fminf(1.0f, fmaxf(0.0f, 2.0f * v - 0.3f)), g = fminf(1.0f, fmaxf(0.0f, 1.5f - fabsf(2.2f * v - 1.1f))),
          b = fminf(1.0f, fmaxf(0.0f, 1.0f - 1.6f * v)) * 0.8f + 0.1f;
    rgb[3 * i] = (unsigned char)(255 * r);
    rgb[3 * i + 1] = (unsigned char)(255 * g);
    rgb[3 * i + 2] = (unsigned char)(255 * b);
  }
}
