/* Writes the PNG and JPEG seed files of fuzz/corpus/{png,jpeg}/: one small image per decoder
 * path hakd's wrappers take (bit depths, colour types, palette + tRNS, interlacing; baseline,
 * progressive, arithmetic, restart markers, subsampling, grayscale, CMYK). Run once by hand:
 *   cc -O1 fuzz/gen_corpus.c -lpng -ljpeg -o /tmp/gen && /tmp/gen fuzz/corpus
 * The committed files are its output; the other corpora come from tests/fixtures and configs/. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jpeglib.h>
#include <png.h>

static const char *out_dir;

static void png_seed(const char *name, int w, int h, int color_type, int bit_depth, int interlace, int with_trns) {
  char path[512];
  snprintf(path, sizeof path, "%s/png/%s.png", out_dir, name);
  FILE *fp = fopen(path, "wb");
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, NULL, NULL);
  png_infop info = png_create_info_struct(png);
  if (!fp || !png || !info || setjmp(png_jmpbuf(png))) {
    fprintf(stderr, "gen_corpus: %s failed\n", path);
    exit(1);
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, w, h, bit_depth, color_type, interlace, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  if (color_type == PNG_COLOR_TYPE_PALETTE) {
    png_color palette[16];
    for (int i = 0; i < 16; i++) palette[i] = (png_color){(png_byte)(i * 16), (png_byte)(255 - i * 16), (png_byte)(i * 7)};
    png_set_PLTE(png, info, palette, 1 << (bit_depth < 4 ? bit_depth : 4));
    if (with_trns) {
      png_byte alpha[2] = {0, 128};
      png_set_tRNS(png, info, alpha, 2, NULL);
    }
  } else if (with_trns && color_type == PNG_COLOR_TYPE_GRAY) {
    png_color_16 key = {0};
    key.gray = 1;
    png_set_tRNS(png, info, NULL, 0, &key);
  }
  png_write_info(png, info);
  int channels = png_get_channels(png, info);
  size_t row_bytes = png_get_rowbytes(png, info);
  png_bytep row = calloc(1, row_bytes);
  int passes = png_set_interlace_handling(png);
  for (int pass = 0; pass < passes; pass++)
    for (int y = 0; y < h; y++) {
      int max = color_type == PNG_COLOR_TYPE_PALETTE ? (1 << (bit_depth < 4 ? bit_depth : 4)) : 256;
      for (size_t i = 0; i < row_bytes; i++) row[i] = (png_byte)((y * 31 + (int)i * 17) % 256);
      if (bit_depth <= 8 && color_type == PNG_COLOR_TYPE_PALETTE && bit_depth == 8)
        for (size_t i = 0; i < row_bytes; i++) row[i] = (png_byte)(row[i] % max);
      png_write_row(png, row);
    }
  (void)channels;
  png_write_end(png, info);
  png_destroy_write_struct(&png, &info);
  free(row);
  fclose(fp);
}

typedef struct {
  int components;
  J_COLOR_SPACE in_space;
  int progressive, arith, restart, h_samp, optimize, quality;
} jpeg_opts;

static void jpeg_seed(const char *name, int w, int h, jpeg_opts o) {
  char path[512];
  snprintf(path, sizeof path, "%s/jpeg/%s.jpg", out_dir, name);
  FILE *fp = fopen(path, "wb");
  if (!fp) exit(1);
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr err;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  jpeg_stdio_dest(&c, fp);
  c.image_width = (JDIMENSION)w;
  c.image_height = (JDIMENSION)h;
  c.input_components = o.components;
  c.in_color_space = o.in_space;
  jpeg_set_defaults(&c);
  jpeg_set_quality(&c, o.quality, TRUE);
  if (o.in_space == JCS_CMYK) jpeg_set_colorspace(&c, JCS_CMYK);
  if (o.components == 3) {
    c.comp_info[0].h_samp_factor = o.h_samp;
    c.comp_info[0].v_samp_factor = o.h_samp;
  }
  if (o.progressive) jpeg_simple_progression(&c);
  c.arith_code = o.arith ? TRUE : FALSE;
  c.optimize_coding = o.optimize ? TRUE : FALSE;
  c.restart_interval = (unsigned)o.restart;
  jpeg_start_compress(&c, TRUE);
  JSAMPLE *row = malloc((size_t)w * o.components);
  while (c.next_scanline < c.image_height) {
    for (int i = 0; i < w * o.components; i++) row[i] = (JSAMPLE)((c.next_scanline * 29 + i * 13) % 256);
    jpeg_write_scanlines(&c, &row, 1);
  }
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  free(row);
  fclose(fp);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR (with png/ and jpeg/ inside)\n", argv[0]);
    return 2;
  }
  out_dir = argv[1];
  png_seed("gray8", 4, 3, PNG_COLOR_TYPE_GRAY, 8, PNG_INTERLACE_NONE, 0);
  png_seed("gray1", 9, 2, PNG_COLOR_TYPE_GRAY, 1, PNG_INTERLACE_NONE, 0);
  png_seed("gray16_trns", 3, 3, PNG_COLOR_TYPE_GRAY, 16, PNG_INTERLACE_NONE, 1);
  png_seed("gray_alpha8", 3, 2, PNG_COLOR_TYPE_GRAY_ALPHA, 8, PNG_INTERLACE_NONE, 0);
  png_seed("rgb8", 4, 4, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_NONE, 0);
  png_seed("rgb16", 2, 2, PNG_COLOR_TYPE_RGB, 16, PNG_INTERLACE_NONE, 0);
  png_seed("rgba8", 3, 3, PNG_COLOR_TYPE_RGB_ALPHA, 8, PNG_INTERLACE_NONE, 0);
  png_seed("palette4_trns", 5, 3, PNG_COLOR_TYPE_PALETTE, 4, PNG_INTERLACE_NONE, 1);
  png_seed("palette8", 6, 2, PNG_COLOR_TYPE_PALETTE, 8, PNG_INTERLACE_NONE, 0);
  png_seed("rgb8_adam7", 9, 9, PNG_COLOR_TYPE_RGB, 8, PNG_INTERLACE_ADAM7, 0);
  jpeg_seed("gray", 8, 8, (jpeg_opts){1, JCS_GRAYSCALE, 0, 0, 0, 1, 0, 75});
  jpeg_seed("rgb420", 16, 16, (jpeg_opts){3, JCS_RGB, 0, 0, 0, 2, 0, 75});
  jpeg_seed("rgb444_progressive", 17, 9, (jpeg_opts){3, JCS_RGB, 1, 0, 0, 1, 0, 90});
  jpeg_seed("rgb420_arith", 16, 8, (jpeg_opts){3, JCS_RGB, 0, 1, 0, 2, 0, 50});
  jpeg_seed("rgb_restart_optimized", 24, 16, (jpeg_opts){3, JCS_RGB, 0, 0, 1, 1, 1, 60});
  jpeg_seed("gray_progressive_arith", 8, 9, (jpeg_opts){1, JCS_GRAYSCALE, 1, 1, 0, 1, 0, 75});
  jpeg_seed("cmyk", 4, 4, (jpeg_opts){4, JCS_CMYK, 0, 0, 0, 1, 0, 75});
  jpeg_seed("rgb1x1", 1, 1, (jpeg_opts){3, JCS_RGB, 0, 0, 0, 2, 0, 75});
  return 0;
}
