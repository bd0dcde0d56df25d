/* Linear CKA between representations (see include/hakd/cka.h): example sets with a Gram matrix
 * kept up to date as examples arrive, the centred-Gram CKA, and its heat-map PNG. */
#include "hakd/cka.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"
#include "hakd/ops.h"
#include "io/plot.h"

/* Multiply-adds of one Gram row above which the row is worth an OpenMP team. */
#define CKA_PARALLEL_MIN 65536

struct hakd_cka_set {
  char name[96];
  int64_t count, capacity, dim;
  float *rows;   /* (capacity, dim): the examples as given */
  double *gram;  /* packed lower triangle, (i, j <= i) at i*(i+1)/2 + j */
  double *delta; /* (dim): the example being added minus example 0 */
};

int hakd_cka_set_new(hakd_cka_set **out, const char *name) {
  *out = NULL;
  hakd_cka_set *s = calloc(1, sizeof *s);
  if (!s) return hakd_error(HAKD_ENOMEM, "out of memory creating CKA set %s", name ? name : "");
  snprintf(s->name, sizeof s->name, "%s", name ? name : "features");
  *out = s;
  return 0;
}

void hakd_cka_set_free(hakd_cka_set *s) {
  if (!s) return;
  free(s->rows);
  free(s->gram);
  free(s->delta);
  free(s);
}

int64_t hakd_cka_set_count(const hakd_cka_set *s) { return s->count; }
int64_t hakd_cka_set_dim(const hakd_cka_set *s) { return s->dim; }

/* Room for `need` examples; capacity doubles so n examples cost O(log n) reallocations. */
static int reserve(hakd_cka_set *s, int64_t need) {
  if (need <= s->capacity) return 0;
  int64_t cap = s->capacity ? s->capacity : 16;
  while (cap < need) cap *= 2;
  float *rows = realloc(s->rows, (size_t)cap * (size_t)s->dim * sizeof *rows);
  if (!rows) return hakd_error(HAKD_ENOMEM, "%s: out of memory for %lld examples", s->name, (long long)cap);
  s->rows = rows;
  double *gram = realloc(s->gram, (size_t)(cap * (cap + 1) / 2) * sizeof *gram);
  if (!gram) return hakd_error(HAKD_ENOMEM, "%s: out of memory for %lld examples", s->name, (long long)cap);
  s->gram = gram;
  s->capacity = cap;
  return 0;
}

/* Gram row of example i against examples 0..i. Every example is taken relative to example 0:
 * centring removes any common shift, and this one keeps the entries near the size of the
 * variance instead of the (often much larger, post-ReLU) mean, so less cancels in the centring. */
static void gram_row(hakd_cka_set *s, int64_t i) {
  const int64_t dim = s->dim;
  const float *x0 = s->rows, *xi = s->rows + i * dim;
  double *delta = s->delta, *row = s->gram + i * (i + 1) / 2;
  for (int64_t k = 0; k < dim; k++) delta[k] = (double)xi[k] - (double)x0[k];
#pragma omp parallel for schedule(static) if ((i + 1) * dim > CKA_PARALLEL_MIN)
  for (int64_t j = 0; j <= i; j++) {
    const float *xj = s->rows + j * dim;
    double dot = 0.0;
    for (int64_t k = 0; k < dim; k++) dot += delta[k] * ((double)xj[k] - (double)x0[k]);
    row[j] = dot;
  }
}

int hakd_cka_set_add(hakd_cka_set *s, const float *rows, int64_t n, int64_t dim) {
  if (n < 0 || dim < 1)
    return hakd_error(HAKD_EINVAL, "%s: %lld examples of %lld features", s->name, (long long)n, (long long)dim);
  if (s->dim && dim != s->dim)
    return hakd_error(HAKD_ESHAPE, "%s: example %lld has %lld features, earlier examples %lld", s->name,
                      (long long)s->count, (long long)dim, (long long)s->dim);
  for (int64_t i = 0; i < n; i++)
    for (int64_t k = 0; k < dim; k++)
      if (!isfinite(rows[i * dim + k]))
        return hakd_error(HAKD_ENUMERIC, "%s: example %lld has a non-finite value (%g at feature %lld)", s->name,
                          (long long)(s->count + i), (double)rows[i * dim + k], (long long)k);
  if (!s->dim) {
    s->delta = malloc((size_t)dim * sizeof *s->delta);
    if (!s->delta) return hakd_error(HAKD_ENOMEM, "%s: out of memory for %lld features", s->name, (long long)dim);
    s->dim = dim;
  }
  if (!n) return 0;
  int rc = reserve(s, s->count + n);
  if (rc) return rc;
  memcpy(s->rows + s->count * dim, rows, (size_t)n * (size_t)dim * sizeof *rows);
  for (int64_t i = 0; i < n; i++) gram_row(s, s->count + i);
  s->count += n;
  return 0;
}

int hakd_cka_set_add_maps(hakd_cka_set *s, hakd_ctx *ctx, hakd_tensor *maps, int grid_h, int grid_w) {
  hakd_tensor *pooled = hakd_adaptive_avgpool2d(ctx, maps, grid_h, grid_w);
  if (!pooled) {
    int rc = hakd_ctx_status(ctx);
    hakd_error_prefix("%s", s->name);
    return rc ? rc : hakd_error(HAKD_EINVAL, "%s: no feature map", s->name);
  }
  return hakd_cka_set_add(s, hakd_f32(pooled), pooled->shape[0], pooled->shape[1] * grid_h * grid_w);
}

static double gram_at(const double *gram, int64_t i, int64_t j) {
  return i >= j ? gram[i * (i + 1) / 2 + j] : gram[j * (j + 1) / 2 + i];
}

/* Row means of the full symmetric Gram matrix and their mean (for H K H). */
static void gram_means(double *row_mean, /* (n) */
                       double *mean, const double *gram, int64_t n) {
  double total = 0.0;
  for (int64_t i = 0; i < n; i++) {
    double sum = 0.0;
    for (int64_t j = 0; j < n; j++) sum += gram_at(gram, i, j);
    row_mean[i] = sum / (double)n;
    total += row_mean[i];
  }
  *mean = total / (double)n;
}

int hakd_cka_compare(double *cka, const hakd_cka_set *a, const hakd_cka_set *b) {
  *cka = NAN;
  if (a->count != b->count)
    return hakd_error(HAKD_ESHAPE, "CKA: %s has %lld examples but %s has %lld", a->name, (long long)a->count, b->name,
                      (long long)b->count);
  const int64_t n = a->count;
  if (n < 2) return hakd_error(HAKD_EINVAL, "CKA: %s and %s need at least 2 examples, have %lld", a->name, b->name,
                               (long long)n);
  double *means = malloc(2 * (size_t)n * sizeof *means);
  if (!means) return hakd_error(HAKD_ENOMEM, "CKA: out of memory for %lld examples", (long long)n);
  double *ra = means, *rb = means + n, ma, mb;
  gram_means(ra, &ma, a->gram, n);
  gram_means(rb, &mb, b->gram, n);
  /* <HKH, HLH>_F, ||HKH||_F^2, ||HLH||_F^2 over the symmetric matrices: off-diagonal pairs twice. */
  double ab = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t i = 0; i < n; i++)
    for (int64_t j = 0; j <= i; j++) {
      double ka = a->gram[i * (i + 1) / 2 + j] - ra[i] - ra[j] + ma;
      double kb = b->gram[i * (i + 1) / 2 + j] - rb[i] - rb[j] + mb;
      double w = i == j ? 1.0 : 2.0;
      ab += w * ka * kb;
      aa += w * ka * ka;
      bb += w * kb * kb;
    }
  free(means);
  if (!(aa > 0.0) || !(bb > 0.0))
    return hakd_error(HAKD_ENUMERIC, "CKA: the %lld examples of %s are all identical (no variance), CKA is undefined",
                      (long long)n, aa > 0.0 ? b->name : a->name);
  *cka = ab / (sqrt(aa) * sqrt(bb));
  return 0;
}

int hakd_cka_linear(double *cka, const float *x, const float *y, int64_t n, int64_t p, int64_t q) {
  *cka = NAN;
  hakd_cka_set *sx = NULL, *sy = NULL;
  int rc = hakd_cka_set_new(&sx, "X");
  if (!rc) rc = hakd_cka_set_new(&sy, "Y");
  if (!rc) rc = hakd_cka_set_add(sx, x, n, p);
  if (!rc) rc = hakd_cka_set_add(sy, y, n, q);
  if (!rc) rc = hakd_cka_compare(cka, sx, sy);
  hakd_cka_set_free(sx);
  hakd_cka_set_free(sy);
  return rc;
}

/* ---- heat map ---- */

/* 3x5 glyphs of what the heat map prints: five rows of three bits (MSB = left column). */
static const struct {
  char c;
  unsigned char rows[5];
} glyphs[] = {
    {'0', {7, 5, 5, 5, 7}}, {'1', {2, 6, 2, 2, 7}}, {'2', {7, 1, 7, 4, 7}}, {'3', {7, 1, 3, 1, 7}},
    {'4', {5, 5, 7, 1, 1}}, {'5', {7, 4, 7, 1, 7}}, {'6', {7, 4, 7, 5, 7}}, {'7', {7, 1, 2, 2, 2}},
    {'8', {7, 5, 7, 5, 7}}, {'9', {7, 5, 7, 1, 7}}, {'.', {0, 0, 0, 0, 2}}, {'-', {0, 0, 7, 0, 0}},
    {'T', {7, 2, 2, 2, 2}}, {'S', {3, 4, 2, 1, 6}}, {'n', {0, 6, 5, 5, 5}}, {'a', {0, 3, 5, 5, 3}},
};

enum { GLYPH_SCALE = 2, GLYPH_ADVANCE = 4 * GLYPH_SCALE, CELL = 56, MARGIN = 28, BAR_GAP = 14, BAR_W = 14 };

typedef struct {
  unsigned char *rgb;
  int w, h;
} canvas;

static void fill(canvas *c, int x0, int y0, int w, int h, const unsigned char color[3]) {
  for (int y = y0; y < y0 + h && y < c->h; y++)
    for (int x = x0; x < x0 + w && x < c->w; x++) memcpy(c->rgb + 3 * ((size_t)y * c->w + x), color, 3);
}

static int text_width(const char *s) { return (int)strlen(s) * GLYPH_ADVANCE - GLYPH_SCALE; }

static void text(canvas *c, int x, int y, const char *s, const unsigned char color[3]) {
  for (; *s; s++, x += GLYPH_ADVANCE)
    for (size_t g = 0; g < sizeof glyphs / sizeof glyphs[0]; g++) {
      if (glyphs[g].c != *s) continue;
      for (int r = 0; r < 5; r++)
        for (int col = 0; col < 3; col++)
          if (glyphs[g].rows[r] & (4 >> col))
            fill(c, x + col * GLYPH_SCALE, y + r * GLYPH_SCALE, GLYPH_SCALE, GLYPH_SCALE, color);
    }
}

int hakd_cka_write_heatmap(const char *path, const double *cka, int rows, int cols) {
  if (rows < 1 || cols < 1 || rows > 64 || cols > 64)
    return hakd_error(HAKD_EINVAL, "%s: heat map of %d x %d cells (1..64 each)", path, rows, cols);
  static const unsigned char white[3] = {255, 255, 255}, black[3] = {0, 0, 0}, gray[3] = {160, 160, 160};
  const int bar_x = MARGIN + cols * CELL + BAR_GAP, glyph_h = 5 * GLYPH_SCALE;
  canvas c = {NULL, bar_x + BAR_W + 6 + text_width("1.0") + 8, MARGIN + rows * CELL + 12};
  c.rgb = malloc((size_t)c.w * c.h * 3);
  if (!c.rgb) return hakd_error(HAKD_ENOMEM, "%s: out of memory for the heat map", path);
  fill(&c, 0, 0, c.w, c.h, white);
  char label[32];
  for (int i = 0; i < rows; i++) {
    snprintf(label, sizeof label, "T%d", i + 1);
    text(&c, (MARGIN - text_width(label)) / 2, MARGIN + i * CELL + (CELL - glyph_h) / 2, label, black);
  }
  for (int j = 0; j < cols; j++) {
    snprintf(label, sizeof label, "S%d", j + 1);
    text(&c, MARGIN + j * CELL + (CELL - text_width(label)) / 2, (MARGIN - glyph_h) / 2, label, black);
  }
  for (int i = 0; i < rows; i++)
    for (int j = 0; j < cols; j++) {
      double v = cka[i * cols + j];
      unsigned char color[3];
      const unsigned char *ink = black;
      if (isnan(v)) {
        memcpy(color, gray, 3);
        snprintf(label, sizeof label, "nan");
      } else {
        float value = (float)v;
        plot_heatmap(color, &value, 1, 1.0f);
        if (v < 0.25) ink = white; /* the dark blue end */
        snprintf(label, sizeof label, "%.2f", v);
      }
      int x = MARGIN + j * CELL, y = MARGIN + i * CELL;
      fill(&c, x, y, CELL, CELL, color);
      text(&c, x + (CELL - text_width(label)) / 2, y + (CELL - glyph_h) / 2, label, ink);
    }
  /* Colour bar: 1 at the top, 0 at the bottom. */
  const int bar_h = rows * CELL;
  for (int y = 0; y < bar_h; y++) {
    float value = 1.0f - (float)y / (float)(bar_h - 1);
    unsigned char color[3];
    plot_heatmap(color, &value, 1, 1.0f);
    fill(&c, bar_x, MARGIN + y, BAR_W, 1, color);
  }
  text(&c, bar_x + BAR_W + 6, MARGIN, "1.0", black);
  text(&c, bar_x + BAR_W + 6, MARGIN + bar_h - glyph_h, "0.0", black);
  int rc = hakd_png_write_rgb(path, c.w, c.h, c.rgb);
  free(c.rgb);
  return rc;
}
