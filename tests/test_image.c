/* PNG/JPEG reading, label maps and the PNG writers. Images the writers cannot produce
 * (16-bit, alpha, low bit depths, interlaced, JPEG) are written here with libpng/libjpeg. */
#include <dirent.h>
#include <setjmp.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jpeglib.h>
#include <png.h>

#include "harness.h"
#include "hakd/io.h"

/* Path inside the case's temporary directory; valid until the next call. */
static const char *tmp_path(const char *name) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
  return path;
}

/* A PNG of already packed rows ((height, row_bytes), as PNG stores them; 16-bit big-endian). */
static int write_png_raw(const char *path, int width, int height, int bit_depth, int color_type, int interlace,
                         const uint8_t *rows, size_t row_bytes, const png_color *palette, int n_palette,
                         const uint8_t *trans, int n_trans) {
  FILE *fp = fopen(path, "wb");
  if (!fp) return -1;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    fclose(fp);
    return -1;
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, (png_uint_32)width, (png_uint_32)height, bit_depth, color_type, interlace,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  if (palette) png_set_PLTE(png, info, palette, n_palette);
  if (trans) png_set_tRNS(png, info, trans, n_trans, NULL);
  png_write_info(png, info);
  if (interlace != PNG_INTERLACE_NONE) png_set_interlace_handling(png); /* libpng runs the 7 passes */
  int passes = interlace != PNG_INTERLACE_NONE ? 7 : 1;
  for (int pass = 0; pass < passes; pass++)
    for (int y = 0; y < height; y++) png_write_row(png, rows + (size_t)y * row_bytes);
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  return fclose(fp);
}

static long file_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* Copies the first `keep` bytes of src into dst. */
static int truncate_copy(const char *src, const char *dst, long keep) {
  FILE *in = fopen(src, "rb"), *out = fopen(dst, "wb");
  if (!in || !out) return -1;
  for (long i = 0; i < keep; i++) {
    int c = fgetc(in);
    if (c == EOF) break;
    fputc(c, out);
  }
  fclose(in);
  return fclose(out);
}

static int count_temp_files(void) {
  int n = 0;
  DIR *d = opendir(test_tmpdir());
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

TEST(rgb_and_gray_round_trip) {
  enum { W = 7, H = 5 };
  uint8_t rgb[H * W * 3], gray[H * W];
  for (int i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)(i * 37 + 11);
  for (int i = 0; i < H * W; i++) gray[i] = (uint8_t)(255 - i * 7);
  const char *path = tmp_path("rgb.png");
  ASSERT_OK(hakd_png_write_rgb(path, W, H, rgb));
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.width, W);
  ASSERT_EQ_INT(img.height, H);
  ASSERT_EQ_INT(img.channels, 3);
  ASSERT_TRUE(memcmp(img.pixels, rgb, sizeof rgb) == 0); /* PNG is lossless */
  hakd_image_free(&img);
  ASSERT_TRUE(img.pixels == NULL);

  path = tmp_path("gray.png");
  ASSERT_OK(hakd_png_write_gray(path, W, H, gray));
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 1);
  ASSERT_TRUE(memcmp(img.pixels, gray, sizeof gray) == 0);
  hakd_image_free(&img);
  /* An 8-bit gray PNG is also a label map holding its gray values. */
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  ASSERT_EQ_INT(w, W);
  ASSERT_EQ_INT(h, H);
  for (int i = 0; i < W * H; i++) ASSERT_EQ_INT(labels[i], gray[i]);
  free(labels);
  ASSERT_EQ_INT(count_temp_files(), 0);
}

TEST(palette_label_keeps_indices) {
  enum { W = 4, H = 3 };
  const uint8_t indices[W * H] = {0, 1, 2, 255, 255, 2, 1, 0, 0, 0, 255, 1};
  uint8_t palette[256 * 3];
  for (int i = 0; i < 256 * 3; i++) palette[i] = (uint8_t)(i * 91 + 5); /* arbitrary colours */
  const char *path = tmp_path("mask.png");
  ASSERT_OK(hakd_png_write_palette(path, W, H, indices, palette, 256));
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  ASSERT_EQ_INT(w, W);
  ASSERT_EQ_INT(h, H);
  for (int i = 0; i < W * H; i++) ASSERT_EQ_INT(labels[i], indices[i]);
  free(labels);
  /* As an image the same file shows the palette colours. */
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 3);
  for (int i = 0; i < W * H; i++)
    for (int c = 0; c < 3; c++) ASSERT_EQ_INT(img.pixels[3 * i + c], palette[3 * indices[i] + c]);
  hakd_image_free(&img);

  /* Indices beyond the palette are refused by the writer. */
  ASSERT_EQ_INT(hakd_png_write_palette(tmp_path("bad.png"), W, H, indices, palette, 3), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "bad.png: pixel 3 has index 255") != NULL);
  ASSERT_EQ_INT(hakd_png_write_palette(tmp_path("bad.png"), W, H, indices, palette, 0), HAKD_EINVAL);
}

TEST(low_bit_depth_labels) {
  /* 2-bit palette, 4x2, indices packed four per byte (most significant first), with a tRNS
   * chunk: labels stay indices, the image stays RGB without alpha. */
  const uint8_t want[8] = {3, 0, 1, 2, 2, 2, 0, 3};
  const uint8_t packed[2] = {(3 << 6) | (0 << 4) | (1 << 2) | 2, (2 << 6) | (2 << 4) | (0 << 2) | 3};
  const png_color colors[4] = {{10, 20, 30}, {40, 50, 60}, {70, 80, 90}, {200, 210, 220}};
  const uint8_t trans[2] = {0, 128};
  const char *path = tmp_path("p2.png");
  ASSERT_EQ_INT(write_png_raw(path, 4, 2, 2, PNG_COLOR_TYPE_PALETTE, PNG_INTERLACE_NONE, packed, 1, colors, 4, trans, 2), 0);
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  ASSERT_EQ_INT(w, 4);
  for (int i = 0; i < 8; i++) ASSERT_EQ_INT(labels[i], want[i]);
  free(labels);
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 3);
  ASSERT_EQ_INT(img.pixels[0], 200);
  ASSERT_EQ_INT(img.pixels[3 * 2 + 1], 50);
  hakd_image_free(&img);

  /* 1-bit gray: labels keep 0/1; the image scales them to 0/255. */
  const uint8_t bits[2] = {0xA0, 0x50}; /* rows 1010 and 0101 */
  path = tmp_path("g1.png");
  ASSERT_EQ_INT(write_png_raw(path, 4, 2, 1, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, bits, 1, NULL, 0, NULL, 0), 0);
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  const int32_t want_bits[8] = {1, 0, 1, 0, 0, 1, 0, 1};
  for (int i = 0; i < 8; i++) ASSERT_EQ_INT(labels[i], want_bits[i]);
  free(labels);
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 1);
  ASSERT_EQ_INT(img.pixels[0], 255);
  ASSERT_EQ_INT(img.pixels[1], 0);
  hakd_image_free(&img);
}

TEST(gray16) {
  const uint16_t values[6] = {0, 1, 255, 256, 1000, 65535};
  uint8_t rows[12];
  for (int i = 0; i < 6; i++) {
    rows[2 * i] = (uint8_t)(values[i] >> 8);
    rows[2 * i + 1] = (uint8_t)(values[i] & 0xFF);
  }
  const char *path = tmp_path("g16.png");
  ASSERT_EQ_INT(write_png_raw(path, 3, 2, 16, PNG_COLOR_TYPE_GRAY, PNG_INTERLACE_NONE, rows, 6, NULL, 0, NULL, 0), 0);
  int w, h;
  int32_t *labels;
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  ASSERT_EQ_INT(w, 3);
  ASSERT_EQ_INT(h, 2);
  for (int i = 0; i < 6; i++) ASSERT_EQ_INT(labels[i], values[i]); /* full 16-bit values kept */
  free(labels);
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 1);
  /* Scaled to 8 bits: v * 255 / 65535 rounded (png_set_scale_16). */
  for (int i = 0; i < 6; i++) ASSERT_NEAR(img.pixels[i], values[i] * 255.0 / 65535.0, 0.5);
  hakd_image_free(&img);
}

TEST(alpha_is_dropped) {
  enum { W = 3, H = 2 };
  uint8_t rgba[H * W * 4], ga[H * W * 2];
  for (int i = 0; i < H * W * 4; i++) rgba[i] = (uint8_t)(i * 13 + 1);
  for (int i = 0; i < H * W * 2; i++) ga[i] = (uint8_t)(i * 29 + 3);
  const char *path = tmp_path("rgba.png");
  ASSERT_EQ_INT(write_png_raw(path, W, H, 8, PNG_COLOR_TYPE_RGB_ALPHA, PNG_INTERLACE_NONE, rgba, W * 4, NULL, 0, NULL, 0), 0);
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 3);
  for (int i = 0; i < W * H; i++)
    for (int c = 0; c < 3; c++) ASSERT_EQ_INT(img.pixels[3 * i + c], rgba[4 * i + c]);
  hakd_image_free(&img);
  int w, h;
  int32_t *labels = (int32_t *)1;
  ASSERT_EQ_INT(hakd_label_read(path, &w, &h, &labels), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "rgba.png: label image is RGBA") != NULL);
  ASSERT_TRUE(labels == NULL);

  path = tmp_path("ga.png");
  ASSERT_EQ_INT(write_png_raw(path, W, H, 8, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_INTERLACE_NONE, ga, W * 2, NULL, 0, NULL, 0), 0);
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 1);
  for (int i = 0; i < W * H; i++) ASSERT_EQ_INT(img.pixels[i], ga[2 * i]);
  hakd_image_free(&img);
  ASSERT_OK(hakd_label_read(path, &w, &h, &labels));
  for (int i = 0; i < W * H; i++) ASSERT_EQ_INT(labels[i], ga[2 * i]);
  free(labels);
}

TEST(interlaced_png) {
  enum { W = 9, H = 7 };
  uint8_t rgb[H * W * 3];
  for (int i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)(i * 7 + 100);
  const char *path = tmp_path("adam7.png");
  ASSERT_EQ_INT(write_png_raw(path, W, H, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_ADAM7, rgb, W * 3, NULL, 0, NULL, 0), 0);
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 3);
  ASSERT_TRUE(memcmp(img.pixels, rgb, sizeof rgb) == 0);
  hakd_image_free(&img);
}

TEST(rgb_label_is_an_error) {
  const uint8_t rgb[2 * 2 * 3] = {255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9};
  const char *path = tmp_path("colour_label.png");
  ASSERT_OK(hakd_png_write_rgb(path, 2, 2, rgb));
  int w = -1, h = -1;
  int32_t *labels;
  ASSERT_EQ_INT(hakd_label_read(path, &w, &h, &labels), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "colour_label.png: label image is RGB;") != NULL);
  ASSERT_TRUE(labels == NULL);
  ASSERT_EQ_INT(w, 0);
}

/* Compresses (H, W, C) pixels to a JPEG file with libjpeg, baseline or progressive;
 * returns 0 on success. */
static int write_jpeg_mode(const char *path, int width, int height, int channels, const uint8_t *pixels, int quality,
                           int progressive) {
  FILE *fp = fopen(path, "wb");
  if (!fp) return -1;
  struct jpeg_compress_struct cinfo;
  struct jpeg_error_mgr err;
  cinfo.err = jpeg_std_error(&err);
  jpeg_create_compress(&cinfo);
  jpeg_stdio_dest(&cinfo, fp);
  cinfo.image_width = (JDIMENSION)width;
  cinfo.image_height = (JDIMENSION)height;
  cinfo.input_components = channels;
  cinfo.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, quality, TRUE);
  if (progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = (JSAMPROW)(pixels + (size_t)cinfo.next_scanline * width * channels);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  return fclose(fp);
}

static int write_jpeg(const char *path, int width, int height, int channels, const uint8_t *pixels, int quality) {
  return write_jpeg_mode(path, width, height, channels, pixels, quality, 0);
}

/* Rewrites the frame header (SOF) of a JPEG file to claim height x width; 0 on success. */
static int patch_jpeg_size(const char *path, int height, int width) {
  static uint8_t bytes[16384];
  FILE *fp = fopen(path, "rb");
  if (!fp) return -1;
  size_t n = fread(bytes, 1, sizeof bytes, fp);
  fclose(fp);
  for (size_t i = 2; i + 9 < n;) { /* marker segments: FF xx, 16-bit big-endian length */
    if (bytes[i] != 0xFF) return -1;
    int marker = bytes[i + 1], length = bytes[i + 2] << 8 | bytes[i + 3];
    if (marker == 0xC0 || marker == 0xC2) {
      bytes[i + 5] = (uint8_t)(height >> 8), bytes[i + 6] = (uint8_t)height;
      bytes[i + 7] = (uint8_t)(width >> 8), bytes[i + 8] = (uint8_t)width;
      fp = fopen(path, "wb");
      if (!fp) return -1;
      fwrite(bytes, 1, n, fp);
      return fclose(fp);
    }
    i += 2 + (size_t)length;
  }
  return -1;
}

/* A small file whose frame header claims 16384x16384 (fuzz/corpus/jpeg/): a baseline one was
 * decoded as a 768 MB gray image (libjpeg only warned at the scan's premature end), a
 * progressive one made libjpeg allocate and zero 1.5 GB of coefficients. Now the first is a
 * corrupt file and the second a refusal naming the memory limit, both at once. */
TEST(jpeg_header_claiming_a_huge_image) {
  enum { W = 16, H = 16 };
  uint8_t rgb[H * W * 3];
  for (int i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)(i * 7);
  hakd_image img;
  const char *path = tmp_path("huge_baseline.jpg");
  ASSERT_EQ_INT(write_jpeg_mode(path, W, H, 3, rgb, 90, 0), 0);
  ASSERT_EQ_INT(patch_jpeg_size(path, 16384, 16384), 0);
  ASSERT_EQ_INT(hakd_image_read(path, &img), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "huge_baseline.jpg: corrupt JPEG") != NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "premature end of data segment") != NULL);
  ASSERT_TRUE(img.pixels == NULL);
  path = tmp_path("huge_progressive.jpg");
  ASSERT_EQ_INT(write_jpeg_mode(path, W, H, 3, rgb, 90, 1), 0);
  ASSERT_EQ_INT(patch_jpeg_size(path, 16384, 16384), 0);
  ASSERT_EQ_INT(hakd_image_read(path, &img), HAKD_EUNSUPPORTED);
  ASSERT_TRUE(strstr(hakd_error_message(), "huge_progressive.jpg: progressive JPEG 16384x16384 needs more than") != NULL);
  ASSERT_TRUE(img.pixels == NULL);
  /* The same progressive file at its real size still decodes. */
  ASSERT_EQ_INT(write_jpeg_mode(path, W, H, 3, rgb, 90, 1), 0);
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_TRUE(img.width == W && img.height == H && img.channels == 3);
  hakd_image_free(&img);
}

TEST(jpeg_read) {
  enum { W = 32, H = 24 };
  uint8_t rgb[H * W * 3], gray[H * W];
  for (int y = 0; y < H; y++)
    for (int x = 0; x < W; x++) {
      uint8_t *p = rgb + 3 * (y * W + x);
      p[0] = (uint8_t)(x * 8);
      p[1] = (uint8_t)(y * 10);
      p[2] = (uint8_t)(128 + x * 2 - y * 3);
      gray[y * W + x] = (uint8_t)(x * 4 + y * 5);
    }
  const char *path = tmp_path("smooth.jpg");
  ASSERT_EQ_INT(write_jpeg(path, W, H, 3, rgb, 95), 0);
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.width, W);
  ASSERT_EQ_INT(img.height, H);
  ASSERT_EQ_INT(img.channels, 3);
  /* Lossy: quality 95 with 2x2 chroma subsampling on a smooth gradient stays within a few
   * levels per pixel; a channel swap or row misalignment would be off by tens. */
  double sum_err = 0;
  int max_err = 0;
  for (int i = 0; i < W * H * 3; i++) {
    int e = abs((int)img.pixels[i] - (int)rgb[i]);
    sum_err += e;
    if (e > max_err) max_err = e;
  }
  hakd_image_free(&img);
  ASSERT_TRUE(max_err <= 12);
  ASSERT_TRUE(sum_err / (W * H * 3) <= 2.0);

  path = tmp_path("gray.jpg");
  ASSERT_EQ_INT(write_jpeg(path, W, H, 1, gray, 95), 0);
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 1);
  max_err = 0;
  for (int i = 0; i < W * H; i++) {
    int e = abs((int)img.pixels[i] - (int)gray[i]);
    if (e > max_err) max_err = e;
  }
  hakd_image_free(&img);
  ASSERT_TRUE(max_err <= 6); /* no chroma subsampling for gray: tighter than RGB */

  int w, h;
  int32_t *labels;
  ASSERT_EQ_INT(hakd_label_read(path, &w, &h, &labels), HAKD_EUNSUPPORTED);
  ASSERT_TRUE(strstr(hakd_error_message(), "gray.jpg: is a JPEG") != NULL);
}

TEST(truncated_and_corrupt_files) {
  /* Noise compresses badly, so the cuts below land inside the image data (64x64: the JPEG
   * scan is several KB after ~600 bytes of tables). */
  enum { W = 64, H = 64 };
  static uint8_t rgb[H * W * 3];
  uint32_t state = 12345;
  for (int i = 0; i < H * W * 3; i++) { /* xorshift32 */
    state ^= state << 13;
    state ^= state >> 17;
    state ^= state << 5;
    rgb[i] = (uint8_t)(state >> 24);
  }
  char png_path[1024], jpg_path[1024];
  snprintf(png_path, sizeof png_path, "%s", tmp_path("full.png"));
  snprintf(jpg_path, sizeof jpg_path, "%s", tmp_path("full.jpg"));
  ASSERT_OK(hakd_png_write_rgb(png_path, W, H, rgb));
  ASSERT_EQ_INT(write_jpeg(jpg_path, W, H, 3, rgb, 90), 0);
  long png_size = file_size(png_path), jpg_size = file_size(jpg_path);
  ASSERT_TRUE(png_size > 4000 && jpg_size > 2000);

  hakd_image img;
  int w, h;
  int32_t *labels;
  /* Cut at several points: inside IHDR, inside IDAT, just before IEND. */
  const long png_cuts[3] = {20, png_size / 2, png_size - 6};
  for (int i = 0; i < 3; i++) {
    const char *cut = tmp_path("cut.png");
    ASSERT_EQ_INT(truncate_copy(png_path, cut, png_cuts[i]), 0);
    ASSERT_EQ_INT(hakd_image_read(cut, &img), HAKD_EFORMAT);
    ASSERT_TRUE(strstr(hakd_error_message(), "cut.png: corrupt PNG") != NULL);
    ASSERT_TRUE(img.pixels == NULL);
    ASSERT_EQ_INT(hakd_label_read(cut, &w, &h, &labels), HAKD_EFORMAT);
    ASSERT_TRUE(strstr(hakd_error_message(), "cut.png") != NULL);
  }
  /* A flipped byte inside IDAT fails its CRC. */
  uint8_t *bytes = malloc((size_t)png_size);
  FILE *fp = fopen(png_path, "rb");
  ASSERT_TRUE(fp != NULL && bytes != NULL);
  ASSERT_EQ_INT(fread(bytes, 1, (size_t)png_size, fp), png_size);
  fclose(fp);
  bytes[png_size / 2] ^= 0x55;
  const char *flipped = tmp_path("flipped.png");
  fp = fopen(flipped, "wb");
  ASSERT_TRUE(fp != NULL);
  fwrite(bytes, 1, (size_t)png_size, fp);
  fclose(fp);
  free(bytes);
  ASSERT_EQ_INT(hakd_image_read(flipped, &img), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "flipped.png: corrupt PNG") != NULL);

  /* In the tables, mid-scan (libjpeg only warns there and pads with gray: must still be an
   * error), and without the final EOI marker. */
  const long jpg_cuts[3] = {40, jpg_size / 2, jpg_size - 2};
  for (int i = 0; i < 3; i++) {
    const char *cut = tmp_path("cut.jpg");
    ASSERT_EQ_INT(truncate_copy(jpg_path, cut, jpg_cuts[i]), 0);
    ASSERT_EQ_INT(hakd_image_read(cut, &img), HAKD_EFORMAT);
    ASSERT_TRUE(strstr(hakd_error_message(), "cut.jpg: corrupt JPEG") != NULL);
    ASSERT_TRUE(img.pixels == NULL);
  }
  /* A JPEG signature followed by garbage. */
  const char *garbage = tmp_path("garbage.jpg");
  fp = fopen(garbage, "wb");
  ASSERT_TRUE(fp != NULL);
  fputs("\xFF\xD8\xFF\xE0 this is not really a jpeg stream at all", fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_image_read(garbage, &img), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "garbage.jpg: corrupt JPEG") != NULL);

  const char *text = tmp_path("notes.txt");
  fp = fopen(text, "wb");
  ASSERT_TRUE(fp != NULL);
  fputs("hello", fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_image_read(text, &img), HAKD_EUNSUPPORTED);
  ASSERT_TRUE(strstr(hakd_error_message(), "notes.txt: not a PNG or JPEG") != NULL);
  ASSERT_EQ_INT(hakd_image_read(tmp_path("absent.png"), &img), HAKD_ENOTFOUND);
  ASSERT_TRUE(strstr(hakd_error_message(), "absent.png") != NULL);
}

TEST(writer_failures) {
  const uint8_t gray[4] = {1, 2, 3, 4};
  ASSERT_EQ_INT(hakd_png_write_gray(tmp_path("zero.png"), 0, 2, gray), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "zero.png") != NULL);
  ASSERT_EQ_INT(hakd_png_write_rgb(tmp_path("null.png"), 2, 2, NULL), HAKD_EINVAL);
  /* Renaming onto a non-empty directory fails: temporary removed, directory untouched. */
  char dir[1024], inner[1100];
  snprintf(dir, sizeof dir, "%s/plots.png", test_tmpdir());
  ASSERT_EQ_INT(mkdir(dir, 0700), 0);
  snprintf(inner, sizeof inner, "%s/keep.png", dir);
  ASSERT_OK(hakd_png_write_gray(inner, 2, 2, gray));
  ASSERT_EQ_INT(hakd_png_write_gray(dir, 2, 2, gray), HAKD_EIO);
  ASSERT_TRUE(strstr(hakd_error_message(), "plots.png") != NULL);
  ASSERT_EQ_INT(count_temp_files(), 0);
  hakd_image img;
  ASSERT_OK(hakd_image_read(inner, &img));
  ASSERT_EQ_INT(img.pixels[3], 4);
  hakd_image_free(&img);
}

/* Random byte flips and cuts of valid PNG and JPEG files: every read either succeeds or fails
 * naming the file; libpng/libjpeg errors never crash or exit (memory checked under ASan). */
TEST(mutated_files_never_crash) {
  enum { W = 12, H = 10 };
  uint8_t rgb[H * W * 3];
  for (int i = 0; i < H * W * 3; i++) rgb[i] = (uint8_t)(i * 5 + (i / 36) * 17);
  char png_path[1024], jpg_path[1024];
  snprintf(png_path, sizeof png_path, "%s", tmp_path("seed.png"));
  snprintf(jpg_path, sizeof jpg_path, "%s", tmp_path("seed.jpg"));
  ASSERT_OK(hakd_png_write_rgb(png_path, W, H, rgb));
  ASSERT_EQ_INT(write_jpeg(jpg_path, W, H, 3, rgb, 80), 0);
  const char *seeds[2] = {png_path, jpg_path};
  uint32_t state = 88172645u;
  for (int s = 0; s < 2; s++) {
    static uint8_t original[8192], bytes[8192];
    FILE *fp = fopen(seeds[s], "rb");
    ASSERT_TRUE(fp != NULL);
    size_t size = fread(original, 1, sizeof original, fp);
    fclose(fp);
    ASSERT_TRUE(size > 64 && size < sizeof original);
    for (int iter = 0; iter < 300; iter++) {
      memcpy(bytes, original, size);
      for (int k = 0; k < 1 + iter % 4; k++) { /* xorshift32; the magic bytes stay intact */
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        bytes[8 + state % (size - 8)] = (uint8_t)(state >> 24);
      }
      size_t n = iter % 5 == 4 ? 8 + state % (size - 8) : size;
      const char *path = tmp_path("mutant.img");
      fp = fopen(path, "wb");
      ASSERT_TRUE(fp != NULL);
      fwrite(bytes, 1, n, fp);
      fclose(fp);
      hakd_image img;
      int status = hakd_image_read(path, &img);
      if (status == 0) {
        ASSERT_TRUE(img.width > 0 && img.height > 0 && img.pixels != NULL);
        hakd_image_free(&img);
      } else if (status > 0 || !strstr(hakd_error_message(), "mutant.img")) {
        test_fail(__FILE__, __LINE__, "seed %d iteration %d: status %d, \"%s\"", s, iter, status, hakd_error_message());
        return;
      }
      int w, h;
      int32_t *labels;
      status = hakd_label_read(path, &w, &h, &labels);
      if (status == 0) free(labels);
      else ASSERT_TRUE(strstr(hakd_error_message(), "mutant.img") != NULL);
    }
  }
}
