/* The synthetic segmentation set (docs/synth.md). Half of its classes are told apart by
 * local texture, the other half only by global context (which plain disc is the largest,
 * the colour of the image's border frame), so a CNN student with a small receptive field
 * and a teacher that sees the whole image differ in what they get right. */
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "data/files.h"
#include "data/rng.h"
#include "hakd/data.h"
#include "hakd/io.h"

static const char *const synth_classes[HAKD_SYNTH_NUM_CLASSES] = {
    "background", "stripes", "checker", "dots", "largest_disc", "warm_disc", "cold_disc", "rare_marker"};

static const uint8_t synth_palette[HAKD_SYNTH_NUM_CLASSES * 3] = {
    0, 0, 0, 230, 25, 75, 60, 180, 75, 255, 225, 25, 0, 130, 200, 245, 130, 48, 145, 30, 180, 70, 240, 240,
};

const char *hakd_synth_class_name(int k) { return k >= 0 && k < HAKD_SYNTH_NUM_CLASSES ? synth_classes[k] : NULL; }
const uint8_t *hakd_synth_palette(void) { return synth_palette; }

typedef struct {
  uint8_t *rgb, *label;
  int height, width;
} canvas;

static void put(canvas *c, int y, int x, const uint8_t *colour, int label) {
  uint8_t *p = c->rgb + 3 * ((size_t)y * c->width + x);
  p[0] = colour[0];
  p[1] = colour[1];
  p[2] = colour[2];
  c->label[(size_t)y * c->width + x] = (uint8_t)label;
}

/* Texture value (0 = light colour, 1 = dark colour) at shape-relative (u, v). */
static int texture_dark(int kind, int orientation, int u, int v) {
  switch (kind) {
    case HAKD_SYNTH_STRIPES: return ((orientation == 0 ? v : orientation == 1 ? u : u + v) / 2) % 2;
    case HAKD_SYNTH_CHECKER: return (u / 2 + v / 2) % 2;
    default: return u % 5 < 2 && v % 5 < 2; /* dots: 2x2 spots on a 5-pixel grid */
  }
}

/* A textured rectangle or ellipse inside the frame. */
static void draw_textured_shape(canvas *c, uint64_t *rng, int frame) {
  int min_side = c->height < c->width ? c->height : c->width;
  int kind = HAKD_SYNTH_STRIPES + (int)hakd__rng_below(rng, 3);
  int orientation = (int)hakd__rng_below(rng, 3), round = (int)hakd__rng_below(rng, 2);
  int sh = (int)(min_side * hakd__rng_range(rng, 0.22, 0.45)), sw = (int)(min_side * hakd__rng_range(rng, 0.22, 0.45));
  int inner_h = c->height - 2 * frame - sh, inner_w = c->width - 2 * frame - sw;
  if (sh < 4 || sw < 4 || inner_h < 1 || inner_w < 1) return;
  int y0 = frame + (int)hakd__rng_below(rng, inner_h), x0 = frame + (int)hakd__rng_below(rng, inner_w);
  /* Every texture draws its two colours from the same distribution: colour says nothing. */
  uint8_t light[3], dark[3];
  for (int ch = 0; ch < 3; ch++) {
    light[ch] = (uint8_t)(90 + hakd__rng_below(rng, 130));
    dark[ch] = (uint8_t)(light[ch] - 80);
  }
  double cy = (sh - 1) / 2.0, cx = (sw - 1) / 2.0;
  for (int v = 0; v < sh; v++)
    for (int u = 0; u < sw; u++) {
      double dy = (v - cy) / (sh / 2.0), dx = (u - cx) / (sw / 2.0);
      if (round && dy * dy + dx * dx > 1.0) continue;
      put(c, y0 + v, x0 + u, texture_dark(kind, orientation, u, v) ? dark : light, kind);
    }
}

typedef struct {
  int y, x, r;
} disc;

/* 2-3 flat discs of one colour family that do not overlap; the largest is its own class,
 * the others are warm or cold by the frame colour. */
static void draw_discs(canvas *c, uint64_t *rng, int frame, int warm) {
  int min_side = c->height < c->width ? c->height : c->width;
  int n = 2 + (int)hakd__rng_below(rng, 2);
  disc placed[3];
  int n_placed = 0;
  int r_max = (int)lround(min_side * hakd__rng_range(rng, 0.11, 0.16));
  if (r_max < 4) r_max = 4;
  for (int i = 0; i < n; i++) {
    /* The largest comes first and the others are at least 2 pixels smaller in radius, so
     * "largest" is never a tie. */
    int r = i == 0 ? r_max : 2 + (int)hakd__rng_below(rng, r_max - 3);
    for (int attempt = 0; attempt < 20; attempt++) {
      int span_y = c->height - 2 * frame - 2 * r - 2, span_x = c->width - 2 * frame - 2 * r - 2;
      if (span_y < 1 || span_x < 1) break;
      int y = frame + r + 1 + (int)hakd__rng_below(rng, span_y), x = frame + r + 1 + (int)hakd__rng_below(rng, span_x);
      int clear = 1;
      for (int j = 0; j < n_placed && clear; j++) {
        int gap = placed[j].r + r + 2;
        clear = (y - placed[j].y) * (y - placed[j].y) + (x - placed[j].x) * (x - placed[j].x) > gap * gap;
      }
      if (clear) {
        placed[n_placed++] = (disc){y, x, r};
        break;
      }
    }
    if (i == 0 && n_placed == 0) return; /* no room: no discs at all, never a wrong "largest" */
  }
  uint8_t colour[3] = {(uint8_t)(70 + hakd__rng_below(rng, 20)), (uint8_t)(150 + hakd__rng_below(rng, 20)),
                       (uint8_t)(150 + hakd__rng_below(rng, 20))};
  for (int i = 0; i < n_placed; i++) {
    int label = i == 0 ? HAKD_SYNTH_LARGEST : warm ? HAKD_SYNTH_WARM : HAKD_SYNTH_COLD;
    const disc *d = &placed[i];
    for (int y = d->y - d->r; y <= d->y + d->r; y++)
      for (int x = d->x - d->r; x <= d->x + d->r; x++)
        if ((y - d->y) * (y - d->y) + (x - d->x) * (x - d->x) <= d->r * d->r) put(c, y, x, colour, label);
  }
}

void hakd_synth_render(uint8_t *rgb, uint8_t *label, int height, int width, uint64_t seed, int64_t index) {
  uint64_t rng = hakd__rng_stream(HAKD__RNG_SYNTH, seed, index, 0);
  canvas c = {rgb, label, height, width};
  int min_side = height < width ? height : width;
  int frame = min_side / 16 > 2 ? min_side / 16 : 2;
  int warm = (int)hakd__rng_below(&rng, 2);

  /* Background: a grey with a slight tint and a linear gradient. */
  int base = 100 + (int)hakd__rng_below(&rng, 50), tint[3], slope = (int)hakd__rng_below(&rng, 61) - 30;
  int vertical = (int)hakd__rng_below(&rng, 2);
  for (int ch = 0; ch < 3; ch++) tint[ch] = (int)hakd__rng_below(&rng, 17) - 8;
  uint8_t frame_colour[3] = {40, 60, 200};
  if (warm) {
    frame_colour[0] = 200;
    frame_colour[2] = 40;
  }
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      int border = y < frame || x < frame || y >= height - frame || x >= width - frame;
      uint8_t colour[3];
      int ramp = slope * (vertical ? y : x) / (vertical ? height : width);
      for (int ch = 0; ch < 3; ch++) colour[ch] = border ? frame_colour[ch] : (uint8_t)(base + tint[ch] + ramp);
      put(&c, y, x, colour, HAKD_SYNTH_BACKGROUND);
    }

  int n_shapes = 2 + (int)hakd__rng_below(&rng, 2);
  for (int i = 0; i < n_shapes; i++) draw_textured_shape(&c, &rng, frame);
  draw_discs(&c, &rng, frame, warm);

  /* Object boundaries are ignored (255), VOC style: a pixel whose right or lower neighbour
   * has another class; the rare marker keeps all of its few pixels. */
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++) {
      uint8_t *l = &label[(size_t)y * width + x];
      int right = x + 1 < width ? l[1] : *l, below = y + 1 < height ? l[width] : *l;
      if ((right != *l && right != HAKD_IGNORE_INDEX) || (below != *l && below != HAKD_IGNORE_INDEX))
        *l = HAKD_IGNORE_INDEX;
    }

  /* The rare class: a small yellow plus sign in about a quarter of the images. */
  if (hakd__rng_below(&rng, 4) == 0 && height - 2 * frame > 6 && width - 2 * frame > 6) {
    static const uint8_t yellow[3] = {250, 230, 30};
    int y = frame + 2 + (int)hakd__rng_below(&rng, height - 2 * frame - 5);
    int x = frame + 2 + (int)hakd__rng_below(&rng, width - 2 * frame - 5);
    for (int d = -2; d <= 2; d++) {
      put(&c, y + d, x, yellow, HAKD_SYNTH_RARE);
      put(&c, y, x + d, yellow, HAKD_SYNTH_RARE);
    }
  }

  /* Pixel noise on the image only. */
  for (size_t p = 0; p < (size_t)height * width * 3; p++) {
    int v = rgb[p] + (int)hakd__rng_below(&rng, 25) - 12;
    rgb[p] = (uint8_t)(v < 0 ? 0 : v > 255 ? 255 : v);
  }
}

static const char *const synth_splits[2] = {"train", "val"};

/* Files are written by several threads: each PNG writer fsyncs (atomic writes), and
 * overlapping those waits is what makes a few hundred files quick. Output does not depend on
 * the thread count: image t is a pure function of (seed, t). */
enum { SYNTH_WRITERS = 8 };

typedef struct {
  const hakd_synth_config *config;
  uint8_t palette[256 * 3];
  pthread_mutex_t mutex;
  int64_t next; /* next image to write: train 0..n_train-1, then val */
  int status;   /* first error, with its message */
  char message[1024];
} synth_job;

static int write_image(const hakd_synth_config *config, const uint8_t *palette, int split, int i, uint8_t *rgb,
                       uint8_t *label) {
  hakd_synth_render(rgb, label, config->height, config->width, config->seed, (split ? HAKD_SYNTH_VAL_INDEX : 0) + i);
  char *path = hakd__strdup_printf("%s/images/%s/%05d.png", config->out_dir, synth_splits[split], i);
  int status = path ? hakd_png_write_rgb(path, config->width, config->height, rgb)
                    : hakd_error(HAKD_ENOMEM, "synth: out of memory");
  free(path);
  if (status) return status;
  path = hakd__strdup_printf("%s/labels/%s/%05d.png", config->out_dir, synth_splits[split], i);
  status = path ? hakd_png_write_palette(path, config->width, config->height, label, palette, 256)
                : hakd_error(HAKD_ENOMEM, "synth: out of memory");
  free(path);
  return status;
}

static void *synth_writer(void *arg) {
  synth_job *job = arg;
  const hakd_synth_config *config = job->config;
  size_t n_pixels = (size_t)config->height * config->width;
  uint8_t *rgb = malloc(n_pixels * 3), *label = malloc(n_pixels);
  int status = rgb && label ? 0 : hakd_error(HAKD_ENOMEM, "synth: out of memory");
  for (;;) {
    pthread_mutex_lock(&job->mutex);
    int64_t t = job->next++;
    int stop = job->status != 0 || t >= (int64_t)config->n_train + config->n_val;
    pthread_mutex_unlock(&job->mutex);
    if (stop || status) break;
    int split = t >= config->n_train;
    status = write_image(config, job->palette, split, (int)(split ? t - config->n_train : t), rgb, label);
  }
  if (status) {
    pthread_mutex_lock(&job->mutex);
    if (!job->status) {
      job->status = status;
      snprintf(job->message, sizeof job->message, "%s", hakd_error_message());
    }
    pthread_mutex_unlock(&job->mutex);
  }
  free(rgb);
  free(label);
  return NULL;
}

/* Formats a small text file in memory and writes it atomically (a list file cut short by a
 * full disk would silently drop images from the split). */
static int write_text_file(const char *path, const char *what, int n_lines,
                           void (*line)(FILE *fp, const char *arg, int i), const char *arg) {
  char *text = NULL;
  size_t size = 0;
  FILE *fp = open_memstream(&text, &size);
  if (!fp) return hakd_error(HAKD_ENOMEM, "%s: out of memory writing %s", path, what);
  for (int i = 0; i < n_lines; i++) line(fp, arg, i);
  int status = fclose(fp) != 0 ? hakd_error(HAKD_ENOMEM, "%s: out of memory writing %s", path, what)
                                : hakd_file_write_atomic(path, text, size);
  free(text);
  return status;
}

static void list_line(FILE *fp, const char *split, int i) {
  fprintf(fp, "images/%s/%05d.png labels/%s/%05d.png\n", split, i, split, i);
}

static void class_line(FILE *fp, const char *unused, int k) {
  (void)unused;
  fprintf(fp, "%s %d %d %d\n", synth_classes[k], synth_palette[3 * k], synth_palette[3 * k + 1],
          synth_palette[3 * k + 2]);
}

static int write_list_file(const char *out, const char *split, int n) {
  char *path = hakd__strdup_printf("%s/%s.txt", out, split);
  if (!path) return hakd_error(HAKD_ENOMEM, "out of memory");
  int status = write_text_file(path, "the split list", n, list_line, split);
  free(path);
  return status;
}

static int write_classes_file(const char *out) {
  char *path = hakd__strdup_printf("%s/classes.txt", out);
  if (!path) return hakd_error(HAKD_ENOMEM, "out of memory");
  int status = write_text_file(path, "the class list", HAKD_SYNTH_NUM_CLASSES, class_line, NULL);
  free(path);
  return status;
}

int hakd_synth_write(const hakd_synth_config *config) {
  const char *out = config->out_dir;
  if (!out || !out[0]) return hakd_error(HAKD_EINVAL, "synth: no output directory");
  if (config->height < 16 || config->width < 16 || config->height > 8192 || config->width > 8192)
    return hakd_error(HAKD_EINVAL, "synth: size %dx%d out of range (16..8192 per side)", config->height, config->width);
  if (config->n_train < 0 || config->n_val < 0 || config->n_train > 1000000 || config->n_val > 1000000)
    return hakd_error(HAKD_EINVAL, "synth: image counts %d/%d out of range", config->n_train, config->n_val);

  int status = 0;
  for (int s = 0; s < 2 && !status; s++)
    for (int kind = 0; kind < 2 && !status; kind++) {
      char *dir = hakd__strdup_printf("%s/%s/%s", out, kind ? "labels" : "images", synth_splits[s]);
      status = dir ? hakd__make_dirs(dir) : hakd_error(HAKD_ENOMEM, "synth: out of memory");
      free(dir);
    }
  if (status) return status;

  synth_job job = {.config = config};
  memcpy(job.palette, synth_palette, sizeof synth_palette);
  job.palette[3 * 255] = job.palette[3 * 255 + 1] = job.palette[3 * 255 + 2] = 255; /* ignore shows white */
  pthread_mutex_init(&job.mutex, NULL);
  pthread_t threads[SYNTH_WRITERS];
  int started = 0;
  for (; started < SYNTH_WRITERS; started++)
    if (pthread_create(&threads[started], NULL, synth_writer, &job) != 0) break;
  if (started == 0) synth_writer(&job);
  for (int i = 0; i < started; i++) pthread_join(threads[i], NULL);
  pthread_mutex_destroy(&job.mutex);
  if (job.status) return hakd_error(job.status, "%s", job.message);

  for (int s = 0; s < 2 && !status; s++)
    status = write_list_file(out, synth_splits[s], s ? config->n_val : config->n_train);
  if (!status) status = write_classes_file(out);
  return status;
}
