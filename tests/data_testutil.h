/* Helpers shared by the data, loader, synth and miou tests: tiny dataset trees written
 * into the case's temporary directory, and running the built `hakd` CLI. */
#ifndef HAKD_TEST_DATA_TESTUTIL_H
#define HAKD_TEST_DATA_TESTUTIL_H

#include <stdarg.h>
#include <stdio.h>
/* after stdio.h: jpeglib.h uses FILE */
#include <jpeglib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "data/files.h"
#include "harness.h"
#include "hakd/io.h"

/* A path under the case's temporary directory (printf format); 8 rotating buffers. */
static inline const char *tmp_path(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static inline const char *tmp_path(const char *fmt, ...) {
  static char buffers[8][1024];
  static int next;
  char *buf = buffers[next++ % 8];
  int n = snprintf(buf, sizeof buffers[0], "%s/", test_tmpdir());
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf + n, sizeof buffers[0] - (size_t)n, fmt, ap);
  va_end(ap);
  return buf;
}

/* Creates the parent directories of path. */
static inline int make_parent(const char *path) {
  char dir[1024];
  snprintf(dir, sizeof dir, "%s", path);
  char *slash = strrchr(dir, '/');
  if (!slash) return 0;
  *slash = '\0';
  return hakd__make_dirs(dir);
}

/* A deterministic RGB test pattern: pixel (x, y) channel c = (x * 7 + y * 13 + c * 50 + salt) % 256. */
static inline uint8_t pattern_value(int x, int y, int c, int salt) {
  return (uint8_t)((x * 7 + y * 13 + c * 50 + salt) % 256);
}

static inline int write_pattern_png(const char *path, int width, int height, int salt) {
  uint8_t *rgb = malloc((size_t)width * height * 3);
  for (int y = 0; y < height; y++)
    for (int x = 0; x < width; x++)
      for (int c = 0; c < 3; c++) rgb[3 * (y * width + x) + c] = pattern_value(x, y, c, salt);
  int status = make_parent(path);
  if (!status) status = hakd_png_write_rgb(path, width, height, rgb);
  free(rgb);
  return status;
}

static inline int write_gray_png(const char *path, int width, int height, const uint8_t *values) {
  int status = make_parent(path);
  return status ? status : hakd_png_write_gray(path, width, height, values);
}

/* Palette PNG with the VOC colour map over all 256 indices. */
static inline int write_palette_png(const char *path, int width, int height, const uint8_t *indices) {
  uint8_t palette[256 * 3];
  for (int k = 0; k < 256; k++) {
    int r = 0, g = 0, b = 0, c = k;
    for (int bit = 7; bit >= 0 && c; bit--, c >>= 3) {
      r |= (c & 1) << bit;
      g |= ((c >> 1) & 1) << bit;
      b |= ((c >> 2) & 1) << bit;
    }
    palette[3 * k] = (uint8_t)r, palette[3 * k + 1] = (uint8_t)g, palette[3 * k + 2] = (uint8_t)b;
  }
  int status = make_parent(path);
  return status ? status : hakd_png_write_palette(path, width, height, indices, palette, 256);
}

/* A baseline JPEG of the test pattern, written with libjpeg (VOC and ADE20K store JPEGs). */
static inline int write_pattern_jpeg(const char *path, int width, int height, int salt) {
  if (make_parent(path)) return -1;
  FILE *fp = fopen(path, "wb");
  if (!fp) return -1;
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr jerr;
  cinfo.err = jpeg_std_error(&jerr);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, fp);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  cinfo.input_components = 3;
  cinfo.in_color_space = JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, 95, TRUE);
  jpeg_start_compress(&cinfo, TRUE);
  uint8_t *row = malloc((size_t)width * 3);
  while (cinfo.next_scanline < cinfo.image_height) {
    int y = (int)cinfo.next_scanline;
    for (int x = 0; x < width; x++)
      for (int c = 0; c < 3; c++) row[3 * x + c] = pattern_value(x, y, c, salt);
    JSAMPROW rows[1] = {row};
    jpeg_write_scanlines(&cinfo, rows, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  free(row);
  return fclose(fp) == 0 ? 0 : -1;
}

static inline int write_text(const char *path, const char *text) {
  if (make_parent(path)) return -1;
  FILE *fp = fopen(path, "w");
  if (!fp) return -1;
  fputs(text, fp);
  return fclose(fp) == 0 ? 0 : -1;
}

/* Keeps the first `keep` bytes of a file (a truncated download). */
static inline int truncate_file(const char *path, long keep) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return -1;
  char *buf = malloc((size_t)keep);
  size_t got = fread(buf, 1, (size_t)keep, fp);
  fclose(fp);
  fp = fopen(path, "wb");
  if (!fp) {
    free(buf);
    return -1;
  }
  fwrite(buf, 1, got, fp);
  free(buf);
  return fclose(fp) == 0 ? 0 : -1;
}

/* Whole file as a NUL-terminated malloc'ed string ("" when missing). */
static inline char *read_text(const char *path) {
  FILE *fp = fopen(path, "rb");
  if (!fp) return calloc(1, 1);
  fseek(fp, 0, SEEK_END);
  long n = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  char *text = malloc((size_t)n + 1);
  size_t got = fread(text, 1, (size_t)n, fp);
  text[got] = '\0';
  fclose(fp);
  return text;
}

/* Runs `$HAKD_CLI <args>` with stdout and stderr captured in the returned malloc'ed strings;
 * returns the exit status (-1 when HAKD_CLI is unset or the command did not exit). */
static inline int run_cli(const char *args, char **out, char **err) {
  const char *cli = getenv("HAKD_CLI");
  *out = *err = NULL;
  if (!cli) {
    fprintf(stderr, "HAKD_CLI is not set (ctest sets it to the built hakd binary)\n");
    return -1;
  }
  const char *out_path = tmp_path("cli.stdout"), *err_path = tmp_path("cli.stderr");
  char command[4096];
  snprintf(command, sizeof command, "'%s' %s >'%s' 2>'%s'", cli, args, out_path, err_path);
  int rc = system(command);
  *out = read_text(out_path);
  *err = read_text(err_path);
  return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

#endif
