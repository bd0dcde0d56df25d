/* PNG through libpng, format detection for hakd_image_read, label maps and the PNG writers.
 * libpng reports errors by longjmp: every libpng call runs inside a *_run function whose
 * state lives in a job struct owned by the caller, so nothing the error path frees sits in
 * a local variable modified after setjmp. */
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>

#include "hakd/io.h"
#include "io/fileio.h"
#include "io/image_jpeg.h"

/* Larger images are refused before allocating (a hostile header can claim 2^31 x 2^31). */
#define PNG_MAX_PIXELS ((uint64_t)1 << 28)

static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
static const uint8_t jpeg_magic[3] = {0xFF, 0xD8, 0xFF};

typedef enum { PNG_AS_IMAGE, PNG_AS_LABELS } png_read_mode;

typedef struct {
  const char *path;
  const uint8_t *data;
  size_t size, pos;
  png_structp png;
  png_infop info;
  char message[256];
  int refusal_status; /* with message, when the file is valid but not readable in this mode */
  uint8_t *rows_data;
  png_bytep *rows;
  png_uint_32 width, height;
  int color_type, bit_depth, channels;
} png_read_job;

static void png_error_handler(png_structp png, png_const_charp message) {
  png_read_job *job = png_get_error_ptr(png);
  snprintf(job->message, sizeof job->message, "%s", message);
  png_longjmp(png, 1);
}

/* Library code never prints; libpng warnings (odd but readable chunks) are dropped. */
static void png_warning_handler(png_structp png, png_const_charp message) {
  (void)png;
  (void)message;
}

static void png_read_from_memory(png_structp png, png_bytep out, size_t n) {
  png_read_job *job = png_get_io_ptr(png);
  if (job->size - job->pos < n) png_error(png, "unexpected end of file (truncated)");
  memcpy(out, job->data + job->pos, n);
  job->pos += n;
}

static const char *color_type_name(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY: return "grayscale";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "grayscale+alpha";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
    case PNG_COLOR_TYPE_RGB: return "RGB";
    case PNG_COLOR_TYPE_RGB_ALPHA: return "RGBA";
  }
  return "unknown";
}

/* Decodes job->data into job->rows_data (height rows, row pointers in job->rows). Images
 * come out 8-bit gray or RGB; label maps keep stored values: palette indices unpacked to a
 * byte each, gray unscaled (8- or 16-bit big-endian). Returns -1 with job->message set. */
static int png_read_run(png_read_job *job, png_read_mode mode) {
  if (setjmp(png_jmpbuf(job->png))) return -1;
  png_structp png = job->png;
  png_infop info = job->info;
  png_set_read_fn(png, job, png_read_from_memory);
  png_read_info(png, info);
  int interlace;
  png_get_IHDR(png, info, &job->width, &job->height, &job->bit_depth, &job->color_type, &interlace, NULL, NULL);
  if ((uint64_t)job->width * job->height > PNG_MAX_PIXELS) {
    job->refusal_status = HAKD_EUNSUPPORTED;
    snprintf(job->message, sizeof job->message, "image %ux%u is too large", (unsigned)job->width,
             (unsigned)job->height);
    return -1;
  }
  int has_alpha = (job->color_type & PNG_COLOR_MASK_ALPHA) != 0;
  if (mode == PNG_AS_IMAGE) {
    if (job->color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (job->color_type == PNG_COLOR_TYPE_GRAY && job->bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (job->bit_depth == 16) png_set_scale_16(png);
    /* palette_to_rgb also turns a tRNS chunk into an alpha channel: strip that too. */
    if (has_alpha || png_get_valid(png, info, PNG_INFO_tRNS)) png_set_strip_alpha(png);
  } else {
    if (job->color_type & PNG_COLOR_MASK_COLOR && job->color_type != PNG_COLOR_TYPE_PALETTE) {
      job->refusal_status = HAKD_EFORMAT;
      snprintf(job->message, sizeof job->message,
               "label image is %s; a label map must be a palette or grayscale PNG whose values are the class ids",
               color_type_name(job->color_type));
      return -1;
    }
    if (job->bit_depth < 8) png_set_packing(png); /* one byte per index, values unscaled */
    if (has_alpha) png_set_strip_alpha(png);
  }
  png_set_interlace_handling(png);
  png_read_update_info(png, info);
  job->channels = png_get_channels(png, info);
  job->bit_depth = png_get_bit_depth(png, info);
  size_t row_bytes = png_get_rowbytes(png, info);
  size_t total_bytes = row_bytes * job->height;
  job->rows_data = malloc(total_bytes ? total_bytes : 1);
  job->rows = malloc(job->height ? job->height * sizeof *job->rows : 1);
  if (!job->rows_data || !job->rows) {
    job->refusal_status = HAKD_ENOMEM;
    snprintf(job->message, sizeof job->message, "out of memory decoding PNG");
    return -1;
  }
  for (png_uint_32 y = 0; y < job->height; y++) job->rows[y] = job->rows_data + y * row_bytes;
  png_read_image(png, job->rows);
  png_read_end(png, NULL);
  return 0;
}

/* Runs a decode and turns a libpng failure into a status naming the file. */
static int png_decode(png_read_job *job, const char *path, const uint8_t *data, size_t size, png_read_mode mode) {
  memset(job, 0, sizeof *job);
  job->path = path;
  job->data = data;
  job->size = size;
  job->png = png_create_read_struct(PNG_LIBPNG_VER_STRING, job, png_error_handler, png_warning_handler);
  if (job->png) job->info = png_create_info_struct(job->png);
  if (!job->png || !job->info) {
    png_destroy_read_struct(job->png ? &job->png : NULL, NULL, NULL);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  int status = 0;
  if (png_read_run(job, mode) != 0) {
    if (job->refusal_status) status = hakd_error(job->refusal_status, "%s: %s", path, job->message);
    else status = hakd_error(HAKD_EFORMAT, "%s: corrupt PNG: %s", path, job->message);
    free(job->rows_data);
    job->rows_data = NULL;
  }
  free(job->rows);
  job->rows = NULL;
  png_destroy_read_struct(&job->png, &job->info, NULL);
  return status;
}

int hakd_image_read(const char *path, hakd_image *out) {
  memset(out, 0, sizeof *out);
  uint8_t *data;
  size_t size;
  int status = hakd__read_file(path, &data, &size);
  if (status) return status;
  if (size >= sizeof png_magic && memcmp(data, png_magic, sizeof png_magic) == 0) {
    png_read_job job;
    status = png_decode(&job, path, data, size, PNG_AS_IMAGE);
    if (!status) {
      out->width = (int)job.width;
      out->height = (int)job.height;
      out->channels = job.channels;
      out->pixels = job.rows_data;
      /* Some libpng builds keep the alpha that palette expansion makes from tRNS despite
       * png_set_strip_alpha: drop any alpha channel here so images are gray or RGB. */
      if (out->channels == 2 || out->channels == 4) {
        int keep = out->channels - 1;
        size_t n = (size_t)out->width * (size_t)out->height;
        for (size_t i = 0; i < n; i++)
          for (int c = 0; c < keep; c++) out->pixels[i * (size_t)keep + c] = out->pixels[i * (size_t)out->channels + c];
        out->channels = keep;
      }
    }
  } else if (size >= sizeof jpeg_magic && memcmp(data, jpeg_magic, sizeof jpeg_magic) == 0) {
    status = hakd__jpeg_decode(path, data, size, out);
  } else if (size == 0) {
    status = hakd_error(HAKD_EFORMAT, "%s: empty file (0 bytes), not an image", path);
  } else {
    status = hakd_error(HAKD_EUNSUPPORTED, "%s: not a PNG or JPEG file (unrecognised first bytes)", path);
  }
  free(data);
  return status;
}

int hakd_label_read(const char *path, int *width, int *height, int32_t **out) {
  *out = NULL;
  *width = *height = 0;
  uint8_t *data;
  size_t size;
  int status = hakd__read_file(path, &data, &size);
  if (status) return status;
  if (size < sizeof png_magic || memcmp(data, png_magic, sizeof png_magic) != 0) {
    int is_jpeg = size >= sizeof jpeg_magic && memcmp(data, jpeg_magic, sizeof jpeg_magic) == 0;
    free(data);
    if (size == 0) return hakd_error(HAKD_EFORMAT, "%s: empty file (0 bytes), not a label map", path);
    return hakd_error(HAKD_EUNSUPPORTED, "%s: %s; label maps must be PNG (lossy JPEG would change class ids)", path,
                      is_jpeg ? "is a JPEG" : "not a PNG file");
  }
  png_read_job job;
  status = png_decode(&job, path, data, size, PNG_AS_LABELS);
  free(data);
  if (status) return status;
  size_t n = (size_t)job.width * job.height;
  int32_t *labels = malloc(n ? n * sizeof *labels : 1);
  if (!labels) {
    free(job.rows_data);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  if (job.bit_depth == 16) {
    for (size_t i = 0; i < n; i++) labels[i] = job.rows_data[2 * i] << 8 | job.rows_data[2 * i + 1]; /* big-endian */
  } else {
    for (size_t i = 0; i < n; i++) labels[i] = job.rows_data[i];
  }
  free(job.rows_data);
  *width = (int)job.width;
  *height = (int)job.height;
  *out = labels;
  return 0;
}

void hakd_image_free(hakd_image *img) {
  if (!img) return;
  free(img->pixels);
  memset(img, 0, sizeof *img);
}

/* ---- writers ---- */

typedef struct {
  FILE *fp;
  int width, height, color_type, channels;
  const uint8_t *pixels; /* (height, width, channels) */
  const uint8_t *palette; /* (n_colors, 3) for PNG_COLOR_TYPE_PALETTE */
  int n_colors;
  char message[256];
} png_write_job;

static void png_write_error_handler(png_structp png, png_const_charp message) {
  png_write_job *job = png_get_error_ptr(png);
  snprintf(job->message, sizeof job->message, "%s", message);
  png_longjmp(png, 1);
}

static int png_write_run(png_write_job *job, png_structp png, png_infop info) {
  if (setjmp(png_jmpbuf(png))) return -1;
  png_init_io(png, job->fp);
  png_set_IHDR(png, info, (png_uint_32)job->width, (png_uint_32)job->height, 8, job->color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (job->color_type == PNG_COLOR_TYPE_PALETTE) {
    png_color colors[256];
    for (int i = 0; i < job->n_colors; i++) {
      colors[i].red = job->palette[3 * i];
      colors[i].green = job->palette[3 * i + 1];
      colors[i].blue = job->palette[3 * i + 2];
    }
    png_set_PLTE(png, info, colors, job->n_colors);
  }
  png_write_info(png, info);
  size_t stride = (size_t)job->width * (size_t)job->channels;
  for (int y = 0; y < job->height; y++) png_write_row(png, job->pixels + (size_t)y * stride);
  png_write_end(png, info);
  return 0;
}

static int check_write_size(const char *path, int width, int height, const uint8_t *pixels) {
  if (width <= 0 || height <= 0 || (uint64_t)width * (uint64_t)height > PNG_MAX_PIXELS)
    return hakd_error(HAKD_EINVAL, "%s: cannot write a %dx%d PNG", path, width, height);
  if (!pixels) return hakd_error(HAKD_EINVAL, "%s: NULL pixels", path);
  return 0;
}

static int png_write_atomic(const char *path, png_write_job *job) {
  int status = check_write_size(path, job->width, job->height, job->pixels);
  if (status) return status;
  hakd__atomic_file af;
  if ((status = hakd__atomic_open(&af, path))) return status;
  job->fp = af.fp;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, job, png_write_error_handler, png_warning_handler);
  png_infop info = png ? png_create_info_struct(png) : NULL;
  if (!png || !info) {
    png_destroy_write_struct(png ? &png : NULL, NULL);
    hakd__atomic_abort(&af);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  int failed = png_write_run(job, png, info);
  png_destroy_write_struct(&png, &info);
  if (failed) {
    status = hakd_error(HAKD_EIO, "%s: writing PNG failed: %s", path, job->message);
    hakd__atomic_abort(&af);
    return status;
  }
  return hakd__atomic_commit(&af);
}

int hakd_png_write_rgb(const char *path, int width, int height, const uint8_t *rgb) {
  png_write_job job = {.width = width, .height = height, .color_type = PNG_COLOR_TYPE_RGB, .channels = 3, .pixels = rgb};
  return png_write_atomic(path, &job);
}

int hakd_png_write_gray(const char *path, int width, int height, const uint8_t *gray) {
  png_write_job job = {.width = width, .height = height, .color_type = PNG_COLOR_TYPE_GRAY, .channels = 1, .pixels = gray};
  return png_write_atomic(path, &job);
}

int hakd_png_write_palette(const char *path, int width, int height, const uint8_t *indices, const uint8_t *palette,
                           int n_colors) {
  if (n_colors < 1 || n_colors > 256 || !palette)
    return hakd_error(HAKD_EINVAL, "%s: palette of %d colours (need 1..256)", path, n_colors);
  int status = check_write_size(path, width, height, indices);
  if (status) return status;
  size_t n = (size_t)width * (size_t)height;
  for (size_t i = 0; i < n; i++)
    if (indices[i] >= n_colors)
      return hakd_error(HAKD_EINVAL, "%s: pixel %zu has index %d but the palette has %d colours", path, i, indices[i],
                        n_colors);
  png_write_job job = {.width = width,
                       .height = height,
                       .color_type = PNG_COLOR_TYPE_PALETTE,
                       .channels = 1,
                       .pixels = indices,
                       .palette = palette,
                       .n_colors = n_colors};
  return png_write_atomic(path, &job);
}
