/* The bad-input matrix: every CLI verb ($HAKD_CLI, the built hakd) is fed a catalogue of broken
 * inputs made here in the case's temporary folder (truncated / corrupt / empty images, label maps
 * of another size, out-of-range labels, lying safetensors headers, wrong tensor shapes and dtypes,
 * inputs below the model's minimum size, unknown config keys, nonsense flag values, missing files,
 * unwritable output folders). For every row: the exit status is 1 or 2 (never a signal or a
 * sanitizer report), stderr names the file or flag and the problem (the row's substrings), and
 * the output folder holds no file afterwards (outputs are atomic and checked before the work).
 * Models are tiny (--width 0.125, 32x32 images) so the whole matrix runs in seconds. */
#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h> /* before jpeglib.h, which uses FILE */
#include <jpeglib.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hakd/data.h"
#include "hakd/io.h"
#include "hakd/model.h"

extern char **environ;

/* ---- files ---- */

/* A path under the case's temporary folder; a ring of buffers so a few can be alive at once. */
static const char *tpath(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static const char *tpath(const char *fmt, ...) {
  static char bufs[16][768];
  static int next;
  char *p = bufs[next++ % 16], rel[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(rel, sizeof rel, fmt, ap);
  va_end(ap);
  snprintf(p, 768, "%s/%s", test_tmpdir(), rel);
  return p;
}

static int write_bytes(const char *path, const void *data, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = n ? fwrite(data, 1, n, f) : 0;
  return fclose(f) == 0 && w == n ? 0 : -1;
}

/* Whole file, malloc'ed (NULL on error). */
static uint8_t *read_bytes(const char *path, size_t *n) {
  *n = 0;
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *buf = malloc(size > 0 ? (size_t)size : 1);
  *n = buf ? fread(buf, 1, (size_t)size, f) : 0;
  fclose(f);
  return buf;
}

/* The first n bytes of src (a truncated copy). */
static int write_prefix(const char *dst, const char *src, size_t n) {
  size_t size;
  uint8_t *b = read_bytes(src, &size);
  int rc = b ? write_bytes(dst, b, n < size ? n : size) : -1;
  free(b);
  return rc;
}

static int copy_file(const char *dst, const char *src) { return write_prefix(dst, src, (size_t)-1); }

static uint32_t crc32_png(const uint8_t *p, size_t n) {
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
  }
  return c ^ 0xffffffffu;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24), p[1] = (uint8_t)(v >> 16), p[2] = (uint8_t)(v >> 8), p[3] = (uint8_t)v;
}

/* A copy of PNG src whose IHDR claims width x height, with a valid CRC so that the size itself
 * is what the reader must refuse. */
static int write_png_lying_size(const char *dst, const char *src, uint32_t width, uint32_t height) {
  size_t n;
  uint8_t *b = read_bytes(src, &n);
  if (!b || n < 33) return free(b), -1;
  put_be32(b + 16, width); /* signature 8, length 4, "IHDR" 4 */
  put_be32(b + 20, height);
  put_be32(b + 29, crc32_png(b + 12, 17));
  int rc = write_bytes(dst, b, n);
  free(b);
  return rc;
}

/* A baseline JPEG of w x h gray-ish pixels through libjpeg. */
static int write_jpeg(const char *path, int w, int h) {
  struct jpeg_compress_struct c;
  struct jpeg_error_mgr err;
  unsigned char *mem = NULL;
  unsigned long size = 0;
  c.err = jpeg_std_error(&err);
  jpeg_create_compress(&c);
  jpeg_mem_dest(&c, &mem, &size);
  c.image_width = (JDIMENSION)w;
  c.image_height = (JDIMENSION)h;
  c.input_components = 3;
  c.in_color_space = JCS_RGB;
  jpeg_set_defaults(&c);
  jpeg_start_compress(&c, TRUE);
  unsigned char *row = malloc((size_t)w * 3);
  for (int x = 0; x < w * 3; x++) row[x] = (unsigned char)(x * 7);
  while (c.next_scanline < c.image_height) jpeg_write_scanlines(&c, &row, 1);
  jpeg_finish_compress(&c);
  jpeg_destroy_compress(&c);
  int rc = write_bytes(path, mem, size);
  free(row);
  free(mem);
  return rc;
}

/* A copy of JPEG src whose SOF0 frame says width 0. */
static int write_jpeg_zero_width(const char *dst, const char *src) {
  size_t n;
  uint8_t *b = read_bytes(src, &n);
  int rc = -1;
  for (size_t i = 0; b && i + 9 < n; i++)
    if (b[i] == 0xff && b[i + 1] == 0xc0) {
      b[i + 7] = b[i + 8] = 0; /* FFC0, length 2, precision 1, height 2, width 2 */
      rc = write_bytes(dst, b, n);
      break;
    }
  free(b);
  return rc;
}

static int write_gray_png(const char *path, int w, int h, uint8_t value) {
  uint8_t *px = malloc((size_t)w * h);
  memset(px, value, (size_t)w * h);
  int rc = hakd_png_write_gray(path, w, h, px);
  free(px);
  return rc;
}

static int write_rgb_png(const char *path, int w, int h) {
  uint8_t *px = calloc((size_t)w * h * 3, 1);
  int rc = hakd_png_write_rgb(path, w, h, px);
  free(px);
  return rc;
}

static int write_f32_npy(const char *path, int ndim, const int64_t *shape, float value) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  float *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
  for (int64_t i = 0; i < n; i++) x[i] = value;
  int rc = hakd_npy_write(path, HAKD_NPY_F32, ndim, shape, x);
  free(x);
  return rc;
}

static int write_i32_npy(const char *path, int ndim, const int64_t *shape, int32_t value) {
  int64_t n = 1;
  for (int d = 0; d < ndim; d++) n *= shape[d];
  int32_t *x = malloc((size_t)(n > 0 ? n : 1) * sizeof *x);
  for (int64_t i = 0; i < n; i++) x[i] = value;
  int rc = hakd_npy_write(path, HAKD_NPY_I32, ndim, shape, x);
  free(x);
  return rc;
}

/* Replaces the first `from` in the file's first `limit` bytes by `to` (same length or the rest
 * shifted): how the .npy and safetensors headers are made to lie. */
static int patch_file(const char *dst, const char *src, const char *from, const char *to) {
  size_t n;
  uint8_t *b = read_bytes(src, &n);
  if (!b) return -1;
  uint8_t *hit = memmem(b, n, from, strlen(from));
  int rc = -1;
  if (hit) {
    size_t head = (size_t)(hit - b), lf = strlen(from), lt = strlen(to);
    uint8_t *out = malloc(n - lf + lt);
    memcpy(out, b, head);
    memcpy(out + head, to, lt);
    memcpy(out + head + lt, hit + lf, n - head - lf);
    rc = write_bytes(dst, out, n - lf + lt);
    free(out);
  }
  free(b);
  return rc;
}

/* patch_file on a safetensors file, with its 8-byte header length moved by the change in size,
 * so that the JSON stays well-formed and the lie is in its content. */
static int patch_st(const char *dst, const char *src, const char *from, const char *to) {
  int rc = patch_file(dst, src, from, to);
  size_t n;
  uint8_t *b = rc ? NULL : read_bytes(dst, &n);
  if (!b || n < 8) return free(b), -1;
  uint64_t len = 0;
  for (int i = 0; i < 8; i++) len |= (uint64_t)b[i] << (8 * i);
  len += strlen(to) - strlen(from);
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(len >> (8 * i));
  rc = write_bytes(dst, b, n);
  free(b);
  return rc;
}

/* A safetensors copy whose 8-byte header length is `len`. */
static int write_st_header_len(const char *dst, const char *src, uint64_t len) {
  size_t n;
  uint8_t *b = read_bytes(src, &n);
  if (!b || n < 8) return free(b), -1;
  for (int i = 0; i < 8; i++) b[i] = (uint8_t)(len >> (8 * i));
  int rc = write_bytes(dst, b, n);
  free(b);
  return rc;
}

static uint64_t st_header_len(const char *path) {
  size_t n;
  uint8_t *b = read_bytes(path, &n);
  uint64_t len = 0;
  for (int i = 0; b && n >= 8 && i < 8; i++) len |= (uint64_t)b[i] << (8 * i);
  free(b);
  return len;
}

static int save_weights(const char *path, const char *model, float width, int nan) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = HAKD_SYNTH_NUM_CLASSES;
  o.width = width;
  hakd_model *m;
  int rc = hakd_model_create(model, &o, &m);
  if (rc) return rc;
  if (nan) hakd_f32(hakd_model_params(m)->items[0])[3] = NAN;
  rc = hakd_params_save(hakd_model_params(m), path, NULL);
  hakd_model_free(m);
  return rc;
}

static int make_dataset(const char *dir, int n_val, int size) {
  hakd_synth_config c = {dir, 2, n_val, size, size, 0};
  return hakd_synth_write(&c);
}

/* ---- the fixtures every verb's rows use ----
 * {T}/ds            a good generic dataset: 8 classes, 2 train + 2 val images of 32x32
 * {T}/d/<variant>   copies of it with one thing broken
 * {T}/w/NAME.safetensors  good and broken weights (r18 = deeplabv3-r18-d8, seg = segformer-b0, width 0.125)
 * {T}/bad/NAME     broken images and arrays
 * {T}/afile         a plain file, so {T}/afile/x cannot be created (root ignores permission bits)
 * {T}/out           where outputs go; must hold no file after any row */
static int setup(void) {
  int rc = 0;
  const char *dirs[] = {"d", "w", "bad", "out", "cfg", "p", "l"};
  for (size_t i = 0; i < sizeof dirs / sizeof *dirs; i++) mkdir(tpath("%s", dirs[i]), 0755);
  rc |= write_bytes(tpath("afile"), "x", 1);
  rc |= make_dataset(tpath("ds"), 2, 32);
  rc |= save_weights(tpath("w/r18.safetensors"), "deeplabv3-r18-d8", 0.125f, 0);
  rc |= save_weights(tpath("w/seg.safetensors"), "segformer-b0", 0.125f, 0);
  rc |= save_weights(tpath("w/r18_w25.safetensors"), "deeplabv3-r18-d8", 0.25f, 0);
  rc |= save_weights(tpath("w/r18_nan.safetensors"), "deeplabv3-r18-d8", 0.125f, 1);
  if (rc) return rc;
  /* safetensors that lie */
  const char *w = tpath("w/r18.safetensors");
  size_t wn;
  free(read_bytes(w, &wn));
  uint64_t hl = st_header_len(w);
  rc |= write_prefix(tpath("w/trunc.safetensors"), w, wn / 2);
  rc |= write_prefix(tpath("w/header_only.safetensors"), w, 8 + hl / 2);
  rc |= write_bytes(tpath("w/empty.safetensors"), "", 0);
  rc |= write_st_header_len(tpath("w/lying_len.safetensors"), w, (uint64_t)wn * 4);
  rc |= write_st_header_len(tpath("w/huge_len.safetensors"), w, (uint64_t)1 << 62);
  rc |= write_st_header_len(tpath("w/len_plus.safetensors"), w, hl + 40);
  rc |= patch_file(tpath("w/not_json.safetensors"), w, "{\"", "[\"");
  rc |= patch_st(tpath("w/offsets.safetensors"), w, "\"data_offsets\":[0,4704]", "\"data_offsets\":[0,90004704]");
  rc |= patch_st(tpath("w/shape_lie.safetensors"), w, "\"shape\":[8,3,7,7]", "\"shape\":[8,3,7,9]");
  rc |= patch_st(tpath("w/dtype_int.safetensors"), w, "\"dtype\":\"F32\"", "\"dtype\":\"I32\"");
  rc |= patch_st(tpath("w/dtype_unknown.safetensors"), w, "\"dtype\":\"F32\"", "\"dtype\":\"F9\"");
  rc |= patch_st(tpath("w/neg_shape.safetensors"), w, "\"shape\":[8,3,7,7]", "\"shape\":[-8,3,7,7]");
  rc |= write_bytes(tpath("w/text.safetensors"), "hello, I am not a tensor file\n", 30);
  if (rc) return -100 + rc;
  /* images */
  const char *png = tpath("ds/images/val/00000.png");
  size_t pn;
  free(read_bytes(png, &pn));
  rc |= write_prefix(tpath("bad/trunc.png"), png, pn / 2);
  rc |= write_prefix(tpath("bad/sig_only.png"), png, 8);
  rc |= copy_file(tpath("bad/corrupt.png"), png);
  {
    size_t n;
    uint8_t *b = read_bytes(tpath("bad/corrupt.png"), &n);
    for (size_t i = n / 2; b && i < n / 2 + 64 && i + 12 < n; i++) b[i] ^= 0x5a; /* inside IDAT */
    if (b) rc |= write_bytes(tpath("bad/corrupt.png"), b, n);
    free(b);
  }
  rc |= write_bytes(tpath("bad/empty.png"), "", 0);
  rc |= write_bytes(tpath("bad/text.png"), "this is not an image\n", 21);
  rc |= write_png_lying_size(tpath("bad/huge.png"), png, 100000, 100000);
  rc |= write_png_lying_size(tpath("bad/zero.png"), png, 0, 32);
  rc |= write_rgb_png(tpath("bad/small.png"), 8, 8);
  rc |= write_jpeg(tpath("bad/good.jpg"), 32, 32);
  const char *jpg = tpath("bad/good.jpg");
  size_t jn;
  free(read_bytes(jpg, &jn));
  rc |= write_prefix(tpath("bad/trunc.jpg"), jpg, jn / 2);
  rc |= write_prefix(tpath("bad/head.jpg"), jpg, 20);
  rc |= write_jpeg_zero_width(tpath("bad/zerow.jpg"), jpg);
  rc |= write_bytes(tpath("bad/empty.jpg"), "", 0);
  if (rc) return -200 + rc;
  /* arrays for predict: (1, 3, H, W) float32 is right */
  rc |= write_f32_npy(tpath("bad/ok.npy"), 4, (int64_t[]){1, 3, 32, 32}, 0.5f);
  rc |= write_i32_npy(tpath("bad/i32.npy"), 4, (int64_t[]){1, 3, 8, 8}, 7); /* the case */
  rc |= write_i32_npy(tpath("bad/i32_big.npy"), 4, (int64_t[]){1, 3, 32, 32}, 7);
  rc |= write_f32_npy(tpath("bad/batch2.npy"), 4, (int64_t[]){2, 3, 32, 32}, 0);
  rc |= write_f32_npy(tpath("bad/three_d.npy"), 3, (int64_t[]){3, 32, 32}, 0);
  rc |= write_f32_npy(tpath("bad/four_ch.npy"), 4, (int64_t[]){1, 4, 32, 32}, 0);
  rc |= write_f32_npy(tpath("bad/empty_dim.npy"), 4, (int64_t[]){1, 3, 0, 32}, 0);
  rc |= write_f32_npy(tpath("bad/nan.npy"), 4, (int64_t[]){1, 3, 32, 32}, NAN);
  rc |= write_f32_npy(tpath("bad/small.npy"), 4, (int64_t[]){1, 3, 8, 8}, 0);
  rc |= write_f32_npy(tpath("bad/thin.npy"), 4, (int64_t[]){1, 3, 28, 64}, 0);
  const char *ok = tpath("bad/ok.npy");
  size_t on;
  free(read_bytes(ok, &on));
  rc |= write_prefix(tpath("bad/trunc.npy"), ok, on - 100);
  rc |= write_prefix(tpath("bad/header_cut.npy"), ok, 30);
  rc |= write_bytes(tpath("bad/zero.npy"), "", 0);
  rc |= patch_file(tpath("bad/magic.npy"), ok, "NUMPY", "NUMPX");
  rc |= patch_file(tpath("bad/fortran.npy"), ok, "False", "True ");
  rc |= patch_file(tpath("bad/big_endian.npy"), ok, "<f4", ">f4");
  rc |= patch_file(tpath("bad/f16.npy"), ok, "<f4", "<f2");
  rc |= patch_file(tpath("bad/lying_shape.npy"), ok, "(1, 3, 32, 32)", "(1, 3, 99999, 99999)");
  rc |= patch_file(tpath("bad/neg_shape.npy"), ok, "(1, 3, 32, 32)", "(1, 3, -32, 32)");
  if (rc) return -300 + rc;
  /* arrays for loss: S, T (1, 4, 8, 8) logits, Y (1, 8, 8) labels */
  rc |= write_f32_npy(tpath("l/s.npy"), 4, (int64_t[]){1, 4, 8, 8}, 0.5f);
  rc |= write_f32_npy(tpath("l/t.npy"), 4, (int64_t[]){1, 4, 8, 8}, 0.1f);
  rc |= write_i32_npy(tpath("l/y.npy"), 3, (int64_t[]){1, 8, 8}, 1);
  rc |= write_f32_npy(tpath("l/t5.npy"), 4, (int64_t[]){1, 5, 8, 8}, 0.1f);
  rc |= write_i32_npy(tpath("l/y_range.npy"), 3, (int64_t[]){1, 8, 8}, 9);
  rc |= write_i32_npy(tpath("l/y_neg.npy"), 3, (int64_t[]){1, 8, 8}, -3);
  rc |= write_f32_npy(tpath("l/y_float.npy"), 3, (int64_t[]){1, 8, 8}, 1);
  rc |= write_i32_npy(tpath("l/y_n2.npy"), 3, (int64_t[]){2, 8, 8}, 1);
  rc |= write_i32_npy(tpath("l/s_int.npy"), 4, (int64_t[]){1, 4, 8, 8}, 1);
  rc |= write_f32_npy(tpath("l/s_empty.npy"), 4, (int64_t[]){1, 4, 0, 8}, 0);
  rc |= write_f32_npy(tpath("l/s_k0.npy"), 4, (int64_t[]){1, 0, 8, 8}, 0);
  rc |= write_f32_npy(tpath("l/s_3d.npy"), 3, (int64_t[]){4, 8, 8}, 0);
  rc |= write_f32_npy(tpath("l/s_inf.npy"), 4, (int64_t[]){1, 4, 8, 8}, INFINITY);
  rc |= write_prefix(tpath("l/s_trunc.npy"), tpath("l/s.npy"), 140);
  if (rc) return -400 + rc;
  /* config files */
  rc |= write_bytes(tpath("cfg/unknown.cfg"), "batch = 2\nbogus_key = 3\n", 24);
  rc |= write_bytes(tpath("cfg/noeq.cfg"), "model deeplabv3-r18-d8\n", 23);
  rc |= write_bytes(tpath("cfg/badval.cfg"), "batch = many\n", 13);
  rc |= write_bytes(tpath("cfg/binary.cfg"), "\0\1\2garbage\377\n", 12);
  rc |= write_bytes(tpath("cfg/negative.cfg"), "momentum = -0.9\n", 16);
  {
    char longline[4000];
    memset(longline, 'a', sizeof longline);
    memcpy(longline, "model = ", 8);
    longline[sizeof longline - 1] = '\n';
    rc |= write_bytes(tpath("cfg/long.cfg"), longline, sizeof longline);
  }
  return rc ? -500 + rc : 0;
}

/* Dataset variants, each a good dataset with one thing broken (only the ones a verb needs). */
static int make_variant(const char *name) {
  const char *dir = tpath("d/%s", name);
  int val = !strcmp(name, "one_val") ? 1 : 2, size = !strcmp(name, "tiny") ? 16 : 32;
  int rc = make_dataset(dir, val, size);
  if (rc) return rc;
  const char *img = tpath("d/%s/images/val/00000.png", name), *lab = tpath("d/%s/labels/val/00000.png", name);
  const char *timg = tpath("d/%s/images/train/00000.png", name), *tlab = tpath("d/%s/labels/train/00000.png", name);
  if (!strcmp(name, "trunc_img")) return write_prefix(img, tpath("ds/images/val/00000.png"), 300);
  if (!strcmp(name, "empty_img")) return write_bytes(img, "", 0);
  if (!strcmp(name, "text_img")) return write_bytes(img, "not an image\n", 13);
  if (!strcmp(name, "jpeg_img")) return copy_file(img, tpath("bad/trunc.jpg"));
  if (!strcmp(name, "label_size")) return write_gray_png(lab, 16, 16, 1);
  if (!strcmp(name, "label_range")) return write_gray_png(lab, 32, 32, 200);
  if (!strcmp(name, "label_rgb")) return write_rgb_png(lab, 32, 32);
  if (!strcmp(name, "label_trunc")) return write_prefix(lab, tpath("ds/labels/val/00000.png"), 60);
  if (!strcmp(name, "label_missing")) return remove(lab);
  if (!strcmp(name, "image_missing")) return remove(img);
  if (!strcmp(name, "no_split")) return remove(tpath("d/%s/val.txt", name));
  if (!strcmp(name, "empty_split")) return write_bytes(tpath("d/%s/val.txt", name), "", 0);
  if (!strcmp(name, "no_classes")) return remove(tpath("d/%s/classes.txt", name));
  if (!strcmp(name, "empty_classes")) return write_bytes(tpath("d/%s/classes.txt", name), "", 0);
  if (!strcmp(name, "split_line")) {
    FILE *f = fopen(tpath("d/%s/val.txt", name), "a");
    if (!f) return -1;
    fputs("onlyonefield\n", f);
    return fclose(f);
  }
  if (!strcmp(name, "train_trunc")) return write_prefix(timg, tpath("ds/images/train/00000.png"), 300);
  if (!strcmp(name, "train_label_range")) return write_gray_png(tlab, 32, 32, 77);
  if (!strcmp(name, "train_label_size")) return write_gray_png(tlab, 8, 8, 1);
  return 0; /* one_val, tiny: the size is the point */
}

/* Prediction folders for miou: one gray PNG per val image, label-sized, with one bad. */
static int make_preds(const char *name) {
  const char *dir = tpath("p/%s", name);
  mkdir(dir, 0755);
  int rc = 0;
  for (int i = 0; i < 2; i++) rc |= write_gray_png(tpath("p/%s/%05d.png", name, i), 32, 32, 1);
  const char *first = tpath("p/%s/00000.png", name);
  if (!strcmp(name, "trunc")) rc |= write_prefix(first, tpath("p/%s/00001.png", name), 50);
  if (!strcmp(name, "empty")) rc |= write_bytes(first, "", 0);
  if (!strcmp(name, "size")) rc |= write_gray_png(first, 16, 16, 1);
  if (!strcmp(name, "range")) rc |= write_gray_png(first, 32, 32, 200);
  if (!strcmp(name, "rgb")) rc |= write_rgb_png(first, 32, 32);
  if (!strcmp(name, "missing")) rc |= remove(first);
  return rc;
}

/* ---- running the CLI ---- */

typedef struct {
  const char *args;      /* after `hakd`; {T} is the case's temporary folder; split at spaces */
  const char *expect[3]; /* substrings stderr must hold ({T} substituted); NULL ends */
  long fsize;            /* > 0: the run's file-size limit in bytes (RLIMIT_FSIZE), a disk that fills
                            up in the middle of writing an output */
} bad_row;

static void substitute(char *out, size_t size, const char *in) {
  const char *t = test_tmpdir();
  size_t len = 0;
  for (const char *p = in; *p && len + 1 < size;) {
    if (!strncmp(p, "{T}", 3)) {
      len += (size_t)snprintf(out + len, size - len, "%s", t);
      p += 3;
    } else {
      out[len++] = *p++;
    }
  }
  out[len < size ? len : size - 1] = '\0';
}

/* Files (not folders) left under dir, recursively; the first one's path in *first. Allowed:
 * a failed train's config.txt and log.jsonl (complete files written at setup, the record of what
 * was tried). */
static int left_files(const char *dir, char *first, size_t size) {
  DIR *d = opendir(dir);
  if (!d) return 0;
  int count = 0;
  struct dirent *e;
  while ((e = readdir(d))) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (lstat(path, &st)) continue;
    if (S_ISDIR(st.st_mode)) {
      count += left_files(path, count ? NULL : first, size);
    } else if (strcmp(e->d_name, "config.txt") && strcmp(e->d_name, "log.jsonl")) {
      if (!count && first) snprintf(first, size, "%s", path);
      count++;
    }
  }
  closedir(d);
  return count;
}

static int remove_entry(const char *path, const struct stat *st, int type, struct FTW *ftw) {
  (void)st, (void)type, (void)ftw;
  return remove(path);
}

/* Runs every row; each failing row is reported (all of them, not only the first). Returns the
 * number of rows run. */
static int run_rows(const char *verb, const bad_row *rows, int n) {
  const char *cli = getenv("HAKD_CLI");
  if (!cli || !*cli) {
    test_fail(__FILE__, __LINE__, "HAKD_CLI is not set (ctest sets it to the built hakd)");
    return 0;
  }
  const char *out_dir = tpath("out");
  mkdir(out_dir, 0755); /* info and bench rows run without setup() */
  for (int r = 0; r < n; r++) {
    char line[4096], *argv[64];
    substitute(line, sizeof line, rows[r].args);
    int argc = 0;
    argv[argc++] = (char *)cli;
    for (char *tok = strtok(line, " "); tok && argc < 63; tok = strtok(NULL, " ")) argv[argc++] = tok;
    argv[argc] = NULL;
    /* stderr through a pipe: a file would fall under the row's file-size limit too */
    int fds[2];
    if (pipe(fds)) {
      test_fail(__FILE__, __LINE__, "pipe failed");
      return r;
    }
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, fds[1], 2);
    posix_spawn_file_actions_addclose(&fa, fds[0]);
    posix_spawn_file_actions_addclose(&fa, fds[1]);
    pid_t pid;
    /* The child inherits the limit, and SIGXFSZ ignored, so a write past it fails with EFBIG
     * as on a full disk instead of killing the process. */
    struct rlimit unlimited, limited;
    getrlimit(RLIMIT_FSIZE, &unlimited);
    limited = unlimited;
    limited.rlim_cur = (rlim_t)rows[r].fsize;
    void (*previous)(int) = signal(SIGXFSZ, SIG_IGN);
    if (rows[r].fsize > 0) setrlimit(RLIMIT_FSIZE, &limited);
    int status = 0, spawned = posix_spawn(&pid, cli, &fa, NULL, argv, environ);
    if (rows[r].fsize > 0) setrlimit(RLIMIT_FSIZE, &unlimited);
    signal(SIGXFSZ, previous);
    posix_spawn_file_actions_destroy(&fa);
    close(fds[1]);
    /* read to EOF before waiting, so a chatty child never blocks on a full pipe */
    size_t en = 0, cap = 4096;
    char *err = malloc(cap);
    for (ssize_t got; spawned == 0 && (got = read(fds[0], err + en, cap - en - 1)) > 0;) {
      en += (size_t)got;
      if (cap - en < 1024) err = realloc(err, cap *= 2);
    }
    err[en] = '\0';
    close(fds[0]);
    if (spawned != 0 || waitpid(pid, &status, 0) != pid) {
      test_fail(__FILE__, __LINE__, "%s row %d: cannot run %s", verb, r, cli);
      free(err);
      continue;
    }
    substitute(line, sizeof line, rows[r].args); /* strtok cut it */
    if (WIFSIGNALED(status)) {
      test_fail(__FILE__, __LINE__, "%s row %d: `hakd %s` killed by signal %d\n%s", verb, r, line, WTERMSIG(status), err);
    } else if (!WIFEXITED(status) || (WEXITSTATUS(status) != 1 && WEXITSTATUS(status) != 2)) {
      test_fail(__FILE__, __LINE__, "%s row %d: `hakd %s` exited %d, expected 1 or 2\n%s", verb, r, line,
                WIFEXITED(status) ? WEXITSTATUS(status) : -1, err);
    } else if (strstr(err, "Sanitizer") || strstr(err, "runtime error")) {
      test_fail(__FILE__, __LINE__, "%s row %d: `hakd %s`: sanitizer report\n%s", verb, r, line, err);
    } else {
      for (int k = 0; k < 3 && rows[r].expect[k]; k++) {
        char want[1024];
        substitute(want, sizeof want, rows[r].expect[k]);
        if (!strstr(err, want)) {
          test_fail(__FILE__, __LINE__, "%s row %d: `hakd %s`: stderr lacks \"%s\":\n%s", verb, r, line, want, err);
          break;
        }
      }
    }
    char left[1024] = "";
    if (left_files(out_dir, left, sizeof left))
      test_fail(__FILE__, __LINE__, "%s row %d: `hakd %s` failed but left %s", verb, r, line, left);
    free(err);
    /* the next row starts from an empty output folder */
    if (nftw(out_dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0 || mkdir(out_dir, 0755) != 0)
      test_fail(__FILE__, __LINE__, "cannot empty %s", out_dir);
  }
  printf("bad-input matrix: %s: %d broken inputs\n", verb, n);
  return n;
}

#define ROWS(verb, rows) run_rows(verb, rows, (int)(sizeof rows / sizeof rows[0]))

/* ---- predict ---- */

#define R18 "--model deeplabv3-r18-d8 --width 0.125"
#define SEG "--model segformer-b0 --width 0.125"
#define PREDICT "predict " R18 " --num-classes 8 --weights {T}/w/r18.safetensors --save-mask {T}/out/m.png"
#define PREDICT_SEG "predict " SEG " --num-classes 8 --weights {T}/w/seg.safetensors --save-mask {T}/out/m.png"
#define PREDICT_W(file) "predict " R18 " --num-classes 8 --input {T}/bad/ok.npy --save-logits {T}/out/l.npy --weights " file

static const bad_row predict_rows[] = {
    /* images */
    {PREDICT " --input {T}/bad/trunc.png", {"trunc.png", "truncated"}, 0},
    {PREDICT " --input {T}/bad/sig_only.png", {"sig_only.png", "PNG"}, 0},
    {PREDICT " --input {T}/bad/corrupt.png", {"corrupt.png", "corrupt PNG"}, 0},
    {PREDICT " --input {T}/bad/empty.png", {"empty.png", "empty file"}, 0},
    {PREDICT " --input {T}/bad/text.png", {"text.png", "not a PNG or JPEG"}, 0},
    {PREDICT " --input {T}/bad/huge.png", {"huge.png", "too large"}, 0},
    {PREDICT " --input {T}/bad/zero.png", {"zero.png", "PNG"}, 0},
    {PREDICT " --input {T}/bad/trunc.jpg", {"trunc.jpg", "JPEG"}, 0},
    {PREDICT " --input {T}/bad/head.jpg", {"head.jpg", "JPEG"}, 0},
    {PREDICT " --input {T}/bad/zerow.jpg", {"zerow.jpg", "JPEG"}, 0},
    {PREDICT " --input {T}/bad/empty.jpg", {"empty.jpg", "empty file"}, 0},
    {PREDICT " --input {T}/bad/missing.png", {"missing.png", "No such file"}, 0},
    {PREDICT " --input {T}/ds", {"{T}/ds", "not a regular file"}, 0},
    {PREDICT_SEG " --input {T}/bad/small.png", {"small.png", "8x8", "smallest input it takes, 29x29"}, 0},
    /* .npy inputs */
    {PREDICT_SEG " --input {T}/bad/i32.npy", {"i32.npy", "dtype int32", "float32"}, 0},
    {PREDICT " --input {T}/bad/i32_big.npy", {"i32_big.npy", "dtype int32"}, 0},
    {PREDICT " --input {T}/bad/batch2.npy", {"batch2.npy", "(2, 3, 32, 32)", "(1, 3, H, W)"}, 0},
    {PREDICT " --input {T}/bad/three_d.npy", {"three_d.npy", "(3, 32, 32)"}, 0},
    {PREDICT " --input {T}/bad/four_ch.npy", {"four_ch.npy", "(1, 4, 32, 32)"}, 0},
    {PREDICT " --input {T}/bad/empty_dim.npy", {"empty_dim.npy", "empty"}, 0},
    {PREDICT " --input {T}/bad/nan.npy", {"nan.npy", "is nan", "finite"}, 0},
    {PREDICT_SEG " --input {T}/bad/small.npy", {"small.npy", "smallest input it takes, 29x29"}, 0},
    {PREDICT_SEG " --input {T}/bad/thin.npy", {"thin.npy", "28x64", "29x29"}, 0},
    {PREDICT " --input {T}/bad/trunc.npy", {"trunc.npy", "truncated"}, 0},
    {PREDICT " --input {T}/bad/header_cut.npy", {"header_cut.npy", "truncated"}, 0},
    {PREDICT " --input {T}/bad/zero.npy", {"zero.npy", "not a .npy"}, 0},
    {PREDICT " --input {T}/bad/magic.npy", {"magic.npy", "not a .npy"}, 0},
    {PREDICT " --input {T}/bad/fortran.npy", {"fortran.npy", "fortran_order"}, 0},
    {PREDICT " --input {T}/bad/big_endian.npy", {"big_endian.npy", "big-endian"}, 0},
    {PREDICT " --input {T}/bad/f16.npy", {"f16.npy", "'<f2' is not supported"}, 0},
    {PREDICT " --input {T}/bad/lying_shape.npy", {"lying_shape.npy", "truncated"}, 0},
    {PREDICT " --input {T}/bad/neg_shape.npy", {"neg_shape.npy", "non-negative"}, 0},
    /* weights */
    {PREDICT_W("{T}/w/trunc.safetensors"), {"trunc.safetensors", "outside"}, 0},
    {PREDICT_W("{T}/w/header_only.safetensors"), {"header_only.safetensors", "larger than"}, 0},
    {PREDICT_W("{T}/w/empty.safetensors"), {"empty.safetensors", "truncated"}, 0},
    {PREDICT_W("{T}/w/lying_len.safetensors"), {"lying_len.safetensors", "header length"}, 0},
    {PREDICT_W("{T}/w/huge_len.safetensors"), {"huge_len.safetensors", "header length"}, 0},
    {PREDICT_W("{T}/w/len_plus.safetensors"), {"len_plus.safetensors", "JSON"}, 0},
    {PREDICT_W("{T}/w/not_json.safetensors"), {"not_json.safetensors", "JSON"}, 0},
    {PREDICT_W("{T}/w/offsets.safetensors"), {"offsets.safetensors", "[0, 90004704]"}, 0},
    {PREDICT_W("{T}/w/shape_lie.safetensors"), {"shape_lie.safetensors", "needs"}, 0},
    {PREDICT_W("{T}/w/dtype_int.safetensors"), {"dtype_int.safetensors", "I32"}, 0},
    {PREDICT_W("{T}/w/dtype_unknown.safetensors"), {"dtype_unknown.safetensors", "F9"}, 0},
    {PREDICT_W("{T}/w/neg_shape.safetensors"), {"neg_shape.safetensors", "shape[0] is not a non-negative"}, 0},
    {PREDICT_W("{T}/w/text.safetensors"), {"text.safetensors"}, 0},
    {PREDICT_W("{T}/w/r18_w25.safetensors"), {"r18_w25.safetensors", "of another shape"}, 0},
    {PREDICT_W("{T}/w/seg.safetensors"), {"seg.safetensors", "match by name"}, 0},
    {PREDICT_W("{T}/w/r18_nan.safetensors"), {"r18_nan.safetensors", "non-finite"}, 0},
    {PREDICT_W("{T}/w/missing.safetensors"), {"missing.safetensors", "No such file"}, 0},
    {PREDICT_W("{T}/w"), {"{T}/w", "not a regular file"}, 0},
    /* flags */
    {"predict " R18 " --num-classes abc --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--num-classes", "abc"}, 0},
    {"predict " R18 " --num-classes 0 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--num-classes '0'"}, 0},
    {"predict " R18 " --num-classes -3 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--num-classes '-3'"}, 0},
    {"predict " R18 " --num-classes 8x --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--num-classes '8x'"}, 0},
    {"predict " R18 " --num-classes 300 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"classifier", "another shape"}, 0},
    {"predict --model deeplabv3-r18-d8 --width -1 --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--width '-1'"}, 0},
    {"predict --model deeplabv3-r18-d8 --width abc --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--width 'abc'"}, 0},
    {"predict --model deeplabv3-r18-d8 --width 0 --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"--width '0'"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --threads -4", {"--threads '-4'"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --threads many", {"--threads 'many'"}, 0},
    {"predict --model nosuch-net --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy", {"nosuch-net", "hakd models"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --precision fp8", {"fp8"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --norm rgb", {"--norm", "rgb"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --aspp-dilations 12,24", {"aspp_dilations", "12,24"}, 0},
    {PREDICT " --input {T}/bad/ok.npy --bogus", {"bogus"}, 0},
    {PREDICT " --input {T}/bad/ok.npy stray", {"unexpected argument", "stray"}, 0},
    {PREDICT, {"--input", "required"}, 0},
    {PREDICT " --input", {"--input"}, 0},
    /* outputs */
    {PREDICT " --input {T}/bad/ok.npy --overlay {T}/afile/o.png", {"--overlay", "afile", "Not a directory"}, 0},
    {"predict " R18 " --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy --save-logits {T}/out/l.npy --save-mask {T}/nodir/m.png",
     {"--save-mask", "nodir", "No such file"}, 0},
    {"predict " R18 " --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy --save-logits {T}/out", {"--save-logits", "folder"}, 0},
    {"predict " R18 " --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy --save-logits {T}/afile/l.npy", {"--save-logits", "Not a directory"}, 0},
    /* the disk fills up while writing: no partial file, and no other output of the run */
    {"predict " R18 " --num-classes 8 --weights {T}/w/r18.safetensors --input {T}/bad/ok.npy --save-logits {T}/out/l.npy", {"l.npy", "File too large"}, 200},
    {PREDICT " --input {T}/bad/ok.npy", {"m.png", "File too large"}, 100},
    /* logits (640 bytes) and mask (~200) fit, the overlay of a real image (~2 KB) does not */
    {PREDICT " --input {T}/ds/images/val/00000.png --save-logits {T}/out/l.npy --overlay {T}/out/o.png",
     {"o.png", "File too large"}, 1000},
};

TEST(predict_refuses_bad_input) {
  int rc = setup();
  ASSERT_EQ_INT(rc, 0);
  ROWS("predict", predict_rows);
}

/* ---- eval ---- */

#define EVAL "eval " R18 " --weights {T}/w/r18.safetensors --dataset generic"
#define EVAL_DS EVAL " --data-root {T}/ds"
#define EVAL_SEG "eval " SEG " --weights {T}/w/seg.safetensors --dataset generic"

static const char *const eval_variants[] = {"trunc_img",     "empty_img",     "text_img",  "jpeg_img",    "label_size",
                                            "label_range",   "label_rgb",     "label_trunc", "label_missing", "image_missing",
                                            "no_split",      "empty_split",   "no_classes", "empty_classes", "split_line",
                                            "tiny"};

static const bad_row eval_rows[] = {
    {EVAL " --data-root {T}/d/trunc_img", {"trunc_img/images/val/00000.png", "truncated"}, 0},
    {EVAL " --data-root {T}/d/empty_img", {"empty_img/images/val/00000.png", "empty file"}, 0},
    {EVAL " --data-root {T}/d/text_img", {"text_img/images/val/00000.png", "not a PNG or JPEG"}, 0},
    {EVAL " --data-root {T}/d/jpeg_img", {"jpeg_img/images/val/00000.png", "JPEG"}, 0},
    {EVAL " --data-root {T}/d/label_size", {"label_size/labels/val/00000.png", "16x16", "32x32"}, 0},
    {EVAL " --data-root {T}/d/label_range", {"label_range/labels/val/00000.png", "label value 200", "not a class"}, 0},
    {EVAL " --data-root {T}/d/label_rgb", {"label_rgb/labels/val/00000.png", "RGB"}, 0},
    {EVAL " --data-root {T}/d/label_trunc", {"label_trunc/labels/val/00000.png", "PNG"}, 0},
    {EVAL " --data-root {T}/d/label_missing", {"label_missing/labels/val/00000.png", "missing"}, 0},
    {EVAL " --data-root {T}/d/image_missing", {"image_missing/images/val/00000.png"}, 0},
    {EVAL " --data-root {T}/d/no_split", {"no_split/val.txt", "No such file"}, 0},
    {EVAL " --data-root {T}/d/empty_split", {"empty_split", "no items"}, 0},
    {EVAL " --data-root {T}/d/no_classes", {"no_classes/classes.txt", "No such file"}, 0},
    {EVAL " --data-root {T}/d/empty_classes", {"empty_classes/classes.txt"}, 0},
    {EVAL " --data-root {T}/d/split_line", {"onlyonefield"}, 0},
    {EVAL_SEG " --data-root {T}/d/tiny", {"tiny/images/val/00000.png", "16x16", "29x29"}, 0},
    {EVAL " --data-root {T}/nodir", {"nodir", "not found"}, 0},
    {EVAL " --data-root {T}/afile", {"afile"}, 0},
    {EVAL " --data-root {T}/ds --split nosplit", {"nosplit.txt"}, 0},
    {"eval " R18 " --weights {T}/w/r18.safetensors --dataset nosuchset --data-root {T}/ds", {"nosuchset"}, 0},
    /* weights */
    {EVAL_DS " --weights {T}/w/trunc.safetensors", {"trunc.safetensors", "outside"}, 0},
    {EVAL_DS " --weights {T}/w/lying_len.safetensors", {"lying_len.safetensors", "header length"}, 0},
    {EVAL_DS " --weights {T}/w/not_json.safetensors", {"not_json.safetensors", "JSON"}, 0},
    {EVAL_DS " --weights {T}/w/r18_w25.safetensors", {"r18_w25.safetensors", "of another shape"}, 0},
    {EVAL_DS " --weights {T}/w/seg.safetensors", {"seg.safetensors", "match by name"}, 0},
    {EVAL_DS " --weights {T}/w/r18_nan.safetensors", {"r18_nan.safetensors", "non-finite"}, 0},
    {EVAL_DS " --weights {T}/w/missing.safetensors", {"missing.safetensors", "No such file"}, 0},
    /* flags */
    {EVAL_DS " --mode tiles", {"--mode", "tiles"}, 0},
    {EVAL_DS " --mode slide", {"--crop"}, 0},
    {EVAL_DS " --mode slide --crop 0x0", {"--crop '0x0'"}, 0},
    {EVAL_DS " --mode slide --crop 16x16 --stride -1x5", {"--stride '-1x5'"}, 0},
    {EVAL_DS " --mode slide --crop abc", {"--crop 'abc'"}, 0},
    {EVAL_SEG " --data-root {T}/ds --mode slide --crop 16x16", {"--crop 16x16", "29x29"}, 0},
    {EVAL_SEG " --data-root {T}/ds --eval-scale 8x8", {"--eval-scale 8x8", "29x29"}, 0},
    {EVAL_DS " --eval-scale -8x8", {"--eval-scale '-8x8'"}, 0},
    {EVAL_DS " --scales 0,-1", {"--scales"}, 0},
    {EVAL_DS " --scales 1.0,abc", {"--scales"}, 0},
    {EVAL_DS " --width abc", {"--width 'abc'"}, 0},
    {EVAL_DS " --threads x", {"--threads 'x'"}, 0},
    {EVAL_DS " --precision fp8", {"fp8"}, 0},
    {EVAL_DS " --norm rgb", {"--norm", "rgb"}, 0},
    {EVAL_DS " --bogus", {"bogus"}, 0},
    {EVAL_DS " stray", {"unexpected argument", "stray"}, 0},
    {"eval " R18 " --dataset generic --data-root {T}/ds", {"--weights", "required"}, 0},
    {"eval --model nosuch-net --weights {T}/w/r18.safetensors --dataset generic --data-root {T}/ds", {"nosuch-net"}, 0},
    /* outputs */
    {EVAL_DS " --save-pred {T}/afile", {"afile", "not a folder"}, 0},
    {EVAL_DS " --save-pred {T}/afile/sub", {"afile/sub", "Not a directory"}, 0},
    {EVAL_DS " --save-pred {T}/nodir/sub", {"nodir/sub", "No such file"}, 0},
    {EVAL_DS " --save-pred {T}/out/pred", {"out/pred", "File too large"}, 60},
};

TEST(eval_refuses_bad_input) {
  int rc = setup();
  for (size_t i = 0; !rc && i < sizeof eval_variants / sizeof *eval_variants; i++) rc = make_variant(eval_variants[i]);
  ASSERT_EQ_INT(rc, 0);
  ROWS("eval", eval_rows);
}

/* ---- train and distill ---- */

#define TRAIN_ARGS R18 " --data-root {T}/ds --crop 32x32 --batch 2 --iters 1 --workers 0 --work-dir {T}/out/wd"
#define TRAIN "train " TRAIN_ARGS
#define TRAIN_SEG "train " SEG " --data-root {T}/ds --crop 32x32 --batch 2 --iters 1 --workers 0 --work-dir {T}/out/wd"

static const char *const train_variants[] = {"train_trunc", "train_label_range", "train_label_size", "empty_split"};

static const bad_row train_rows[] = {
    /* nonsense values */
    {TRAIN " --batch 0", {"batch", "got 0"}, 0},
    {TRAIN " --batch -3", {"batch", "got -3"}, 0},
    {TRAIN " --batch abc", {"batch", "'abc' is not an integer"}, 0},
    {TRAIN " --batch 1", {"batch of 1", "at least 2"}, 0},
    {TRAIN " --iters 0", {"iters", "got 0"}, 0},
    {TRAIN " --iters 1e3", {"iters", "'1e3'"}, 0},
    {TRAIN " --crop -5x5", {"crop", "-5x5"}, 0},
    {TRAIN " --crop 0x32", {"crop", "0x32"}, 0},
    {TRAIN " --crop big", {"crop", "big"}, 0},
    {TRAIN_SEG " --crop 16x16", {"crop 16x16", "segformer-b0", "29x29"}, 0},
    {TRAIN_SEG " --eval-scale 8x8", {"eval_scale 8x8", "29x29"}, 0},
    {TRAIN " --eval-scale 0x0", {"eval_scale", "0x0"}, 0},
    {TRAIN " --lr -1", {"lr must be > 0"}, 0},
    {TRAIN " --lr nan", {"lr", "'nan'"}, 0},
    {TRAIN " --lr 0.1.2", {"lr", "'0.1.2'"}, 0},
    {TRAIN " --width 0", {"width", "0"}, 0},
    {TRAIN " --width -1", {"width", "-1"}, 0},
    {TRAIN " --workers -1", {"workers"}, 0},
    {TRAIN " --threads -1", {"threads", "-1"}, 0},
    {TRAIN " --threads abc", {"threads", "abc"}, 0},
    {TRAIN " --momentum -2", {"momentum", "-2"}, 0},
    {TRAIN " --wd -1", {"wd", "-1"}, 0},
    {TRAIN " --log-every 0", {"log_every", "got 0"}, 0},
    {TRAIN " --save-every -5", {"save_every", "-5"}, 0},
    {TRAIN " --eval-every -5", {"eval_every", "-5"}, 0},
    {TRAIN " --stop-after -3", {"stop_after", "-3"}, 0},
    {TRAIN " --warmup-lr-iters -5", {"warmup_lr_iters", "-5"}, 0},
    {TRAIN " --warmup-ratio 0", {"warmup_ratio"}, 0},
    {TRAIN " --aux 5", {"aux", "5"}, 0},
    {TRAIN " --cat-max-ratio 5", {"cat_max_ratio", "5"}, 0},
    {TRAIN " --ratio-min 0", {"ratio_min"}, 0},
    {TRAIN " --ratio-min 2 --ratio-max 1", {"ratio_min"}, 0},
    {TRAIN " --drop-path 2", {"drop_path", "2"}, 0},
    {TRAIN " --aux-weight -1", {"aux_weight", "-1"}, 0},
    {TRAIN " --head-lr-mult -1", {"head_lr_mult", "-1"}, 0},
    {TRAIN " --clip-norm -1", {"clip_norm", "-1"}, 0},
    {TRAIN " --power -1", {"power", "-1"}, 0},
    {TRAIN " --min-lr 1", {"min_lr"}, 0},
    {TRAIN " --deep-stem maybe", {"deep_stem", "maybe"}, 0},
    {TRAIN " --optimizer adam", {"optimizer", "adam"}, 0},
    {TRAIN " --schedule step", {"schedule", "step"}, 0},
    {TRAIN " --norm rgb", {"norm", "rgb"}, 0},
    {TRAIN " --precision fp8", {"fp8"}, 0},
    {TRAIN " --aspp-dilations -1,2,3", {"aspp_dilations", "-1,2,3"}, 0},
    {TRAIN " --model nosuch-net", {"nosuch-net", "hakd models"}, 0},
    {TRAIN " --dataset nosuchset", {"nosuchset"}, 0},
    {TRAIN " --bogus 1", {"--bogus"}, 0},
    {TRAIN " --teacher deeplabv3-r18-d8", {"--teacher", "unknown option"}, 0},
    {TRAIN " stray", {"unexpected argument", "stray"}, 0},
    {TRAIN " --iters", {"--iters", "needs a value"}, 0},
    /* config files */
    {TRAIN " --config {T}/cfg/missing.cfg", {"missing.cfg", "No such file"}, 0},
    {TRAIN " --config {T}/cfg/unknown.cfg", {"unknown.cfg:2", "bogus_key"}, 0},
    {TRAIN " --config {T}/cfg/noeq.cfg", {"noeq.cfg:1", "key = value"}, 0},
    {TRAIN " --config {T}/cfg/badval.cfg", {"badval.cfg:1", "batch", "many"}, 0},
    {TRAIN " --config {T}/cfg/binary.cfg", {"binary.cfg:1", "NUL"}, 0},
    {TRAIN " --config {T}/cfg/negative.cfg", {"momentum", "-0.9"}, 0},
    {TRAIN " --config {T}/cfg/long.cfg", {"long.cfg:1", "longer than"}, 0},
    {TRAIN " --config {T}/cfg", {"{T}/cfg", "not a regular file"}, 0},
    {TRAIN " --config", {"--config"}, 0},
    /* files */
    {TRAIN " --pretrained {T}/w/missing.safetensors", {"missing.safetensors", "No such file"}, 0},
    {TRAIN " --pretrained {T}/w/trunc.safetensors", {"trunc.safetensors", "outside"}, 0},
    {TRAIN " --pretrained {T}/w/lying_len.safetensors", {"lying_len.safetensors", "header length"}, 0},
    {TRAIN " --pretrained {T}/w/dtype_int.safetensors", {"dtype_int.safetensors", "I32"}, 0},
    {TRAIN " --pretrained {T}/w/seg.safetensors", {"seg.safetensors", "match by name"}, 0},
    {TRAIN " --pretrained {T}/w/r18_w25.safetensors", {"r18_w25.safetensors", "of another shape"}, 0},
    {TRAIN " --pretrained {T}/w/r18_nan.safetensors", {"r18_nan.safetensors", "non-finite"}, 0},
    {TRAIN " --resume {T}/w/missing.safetensors", {"missing.safetensors"}, 0},
    {TRAIN " --resume {T}/w/trunc.safetensors", {"trunc.safetensors"}, 0},
    {TRAIN " --data-root {T}/nodir", {"nodir", "not found"}, 0},
    {TRAIN " --data-root {T}/d/empty_split", {"empty_split", "no items"}, 0},
    {TRAIN " --data-root {T}/d/train_trunc", {"train_trunc/images/train/00000.png", "truncated"}, 0},
    {TRAIN " --data-root {T}/d/train_label_range", {"train_label_range/labels/train/00000.png", "77"}, 0},
    {TRAIN " --data-root {T}/d/train_label_size", {"train_label_size/labels/train/00000.png", "8x8"}, 0},
    /* outputs */
    {TRAIN " --work-dir {T}/afile/wd", {"afile", "Not a directory"}, 0},
    {TRAIN " --work-dir {T}/afile", {"afile", "Not a directory"}, 0},
    {TRAIN, {"config.txt"}, 300},
    {TRAIN, {"safetensors", "File too large"}, 20000},
};

TEST(train_refuses_bad_input) {
  int rc = setup();
  for (size_t i = 0; !rc && i < sizeof train_variants / sizeof *train_variants; i++) rc = make_variant(train_variants[i]);
  ASSERT_EQ_INT(rc, 0);
  ROWS("train", train_rows);
}

#define DISTILL_NO_TEACHER "distill " TRAIN_ARGS
#define DISTILL DISTILL_NO_TEACHER " --teacher deeplabv3-r18-d8 --teacher-width 0.125 --teacher-weights {T}/w/r18.safetensors"

static const bad_row distill_rows[] = {
    {DISTILL " --method nosuch", {"method", "nosuch"}, 0},
    {DISTILL " --T -1", {"T must be > 0"}, 0},
    {DISTILL " --T abc", {"T", "abc"}, 0},
    {DISTILL " --kd-T 0", {"kd_T"}, 0},
    {DISTILL " --hakd-stages 9", {"hakd_stages", "'9'"}, 0},
    {DISTILL " --hakd-stages 2,2", {"hakd_stages", "2,2"}, 0},
    {DISTILL " --hakd-stages abc", {"hakd_stages", "abc"}, 0},
    {DISTILL " --method fitnet --fitnet-stage 7", {"fitnet_stage", "7"}, 0},
    {DISTILL " --lambda-kd -5", {"lambda_kd", "-5"}, 0},
    {DISTILL " --lambda-hakd -1", {"lambda_hakd", "-1"}, 0},
    {DISTILL " --lambda-cwd -1 --method cwd", {"lambda_cwd", "-1"}, 0},
    {DISTILL " --warmup-iters -5", {"warmup_iters", "-5"}, 0},
    {DISTILL " --reliability entropy", {"reliability", "entropy"}, 0},
    {DISTILL " --kem-axis class", {"kem_axis class", "bce"}, 0},
    {DISTILL " --kem-axis depth", {"kem_axis", "depth"}, 0},
    {DISTILL " --hakd-grid pixels", {"hakd_grid", "pixels"}, 0},
    {DISTILL " --no-kmm perhaps", {"no_kmm", "perhaps"}, 0},
    {DISTILL " --teacher-norm rgb", {"teacher_norm", "rgb"}, 0},
    {DISTILL " --teacher-width -1", {"teacher_width", "-1"}, 0},
    {DISTILL " --teacher nosuch-net", {"nosuch-net", "hakd models"}, 0},
    {DISTILL " --teacher-weights {T}/w/trunc.safetensors", {"trunc.safetensors", "outside"}, 0},
    {DISTILL " --teacher-weights {T}/w/lying_len.safetensors", {"lying_len.safetensors", "header length"}, 0},
    {DISTILL " --teacher-weights {T}/w/not_json.safetensors", {"not_json.safetensors", "JSON"}, 0},
    {DISTILL " --teacher-weights {T}/w/r18_w25.safetensors", {"r18_w25.safetensors", "of another shape"}, 0},
    {DISTILL " --teacher-weights {T}/w/seg.safetensors", {"seg.safetensors", "match by name"}, 0},
    {DISTILL " --teacher-weights {T}/w/missing.safetensors", {"missing.safetensors", "No such file"}, 0},
    {DISTILL " --teacher segformer-b0 --teacher-weights {T}/w/seg.safetensors --crop 16x16", {"segformer-b0", "29x29"}, 0},
    {DISTILL " --batch 1", {"batch of 1", "at least 2"}, 0},
    {DISTILL " --batch 0", {"batch", "got 0"}, 0},
    {DISTILL_NO_TEACHER, {"--teacher"}, 0},
    {DISTILL_NO_TEACHER " --teacher deeplabv3-r18-d8", {"--teacher-weights"}, 0},
    {DISTILL " --config {T}/cfg/unknown.cfg", {"unknown.cfg:2", "bogus_key"}, 0},
    {DISTILL " --config {T}/cfg/binary.cfg", {"binary.cfg:1", "NUL"}, 0},
    {DISTILL " --bogus 1", {"--bogus"}, 0},
    {DISTILL " --dump-kem {T}/afile/kem --dump-every 1", {"afile", "Not a directory"}, 0},
    {DISTILL " --dump-kem {T}/out/kem --dump-every 0", {"dump_every", "got 0"}, 0},
    {DISTILL " --work-dir {T}/afile/wd", {"afile", "Not a directory"}, 0},
    {DISTILL, {"safetensors", "File too large"}, 20000},
};

TEST(distill_refuses_bad_input) {
  ASSERT_EQ_INT(setup(), 0);
  ASSERT_EQ_INT(make_variant("empty_split"), 0);
  ROWS("distill", distill_rows);
}

/* ---- miou ---- */

#define MIOU "miou --dataset generic --data-root {T}/ds"

static const char *const miou_preds[] = {"good", "trunc", "empty", "size", "range", "rgb", "missing"};

static const bad_row miou_rows[] = {
    {MIOU " --pred-dir {T}/p/trunc", {"p/trunc/00000.png", "PNG"}, 0},
    {MIOU " --pred-dir {T}/p/empty", {"p/empty/00000.png", "empty file"}, 0},
    {MIOU " --pred-dir {T}/p/size", {"p/size/00000.png", "16x16", "32x32"}, 0},
    {MIOU " --pred-dir {T}/p/range", {"p/range/00000.png", "prediction 200"}, 0},
    {MIOU " --pred-dir {T}/p/rgb", {"p/rgb/00000.png", "RGB"}, 0},
    {MIOU " --pred-dir {T}/p/missing", {"p/missing/00000.png", "prediction missing"}, 0},
    {MIOU " --pred-dir {T}/p/nodir", {"--pred-dir", "nodir", "No such file"}, 0},
    {MIOU " --pred-dir {T}/afile", {"--pred-dir", "afile", "not a folder"}, 0},
    {"miou --dataset generic --data-root {T}/d/label_range --pred-dir {T}/p/good", {"label_range/labels/val/00000.png", "200"}, 0},
    {"miou --dataset generic --data-root {T}/d/label_size --pred-dir {T}/p/good", {"label_size/labels/val/00000.png", "16x16"}, 0},
    {"miou --dataset generic --data-root {T}/d/label_missing --pred-dir {T}/p/good", {"label_missing/labels/val/00000.png"}, 0},
    {"miou --dataset generic --data-root {T}/d/no_split --pred-dir {T}/p/good", {"no_split/val.txt"}, 0},
    {"miou --dataset generic --data-root {T}/d/empty_split --pred-dir {T}/p/good", {"empty_split", "no items"}, 0},
    {"miou --dataset nosuchset --data-root {T}/ds --pred-dir {T}/p/good", {"nosuchset"}, 0},
    {MIOU " --pred-dir {T}/p/good --split nosplit", {"nosplit.txt"}, 0},
    {MIOU " --pred-dir {T}/p/good --json {T}/afile/m.json", {"--json", "afile", "Not a directory"}, 0},
    {MIOU " --pred-dir {T}/p/good --json {T}/nodir/m.json", {"--json", "nodir", "No such file"}, 0},
    {MIOU " --pred-dir {T}/p/good --json {T}/out", {"--json", "folder"}, 0},
    {MIOU " --pred-dir {T}/p/good --skip-bad --json {T}/out/m.json --bogus", {"bogus"}, 0},
    {MIOU " --pred-dir {T}/p/good stray", {"unexpected argument", "stray"}, 0},
    {MIOU, {"--pred-dir", "required"}, 0},
    {MIOU " --pred-dir {T}/p/good --json {T}/out/m.json", {"m.json", "File too large"}, 100},
};

TEST(miou_refuses_bad_input) {
  int rc = setup();
  const char *variants[] = {"label_range", "label_size", "label_missing", "no_split", "empty_split"};
  for (size_t i = 0; !rc && i < sizeof variants / sizeof *variants; i++) rc = make_variant(variants[i]);
  for (size_t i = 0; !rc && i < sizeof miou_preds / sizeof *miou_preds; i++) rc = make_preds(miou_preds[i]);
  ASSERT_EQ_INT(rc, 0);
  ROWS("miou", miou_rows);
}

/* ---- loss ---- */

#define LOSS_ST "loss --method heteroakd --student {T}/l/s.npy --teacher {T}/l/t.npy"
#define LOSS LOSS_ST " --labels {T}/l/y.npy"

static const bad_row loss_rows[] = {
    {LOSS_ST " --labels {T}/l/y_range.npy", {"y_range.npy", "label 9", "outside [0, 4)"}, 0},
    {LOSS_ST " --labels {T}/l/y_neg.npy", {"y_neg.npy", "label -3"}, 0},
    {LOSS_ST " --labels {T}/l/y_float.npy", {"y_float.npy", "float32", "integer labels"}, 0},
    {LOSS_ST " --labels {T}/l/y_n2.npy", {"y_n2.npy", "(2, 8, 8)"}, 0},
    {LOSS_ST " --labels {T}/l/missing.npy", {"missing.npy", "No such file"}, 0},
    {"loss --method heteroakd --student {T}/l/s.npy --teacher {T}/l/t5.npy --labels {T}/l/y.npy", {"t5.npy", "(1, 5, 8, 8)"}, 0},
    {"loss --method heteroakd --student {T}/l/s_int.npy --teacher {T}/l/t.npy --labels {T}/l/y.npy", {"s_int.npy", "int32"}, 0},
    {"loss --method kd --student {T}/l/s_empty.npy --teacher {T}/l/s_empty.npy", {"s_empty.npy", "empty"}, 0},
    {"loss --method heteroakd --student {T}/l/s_empty.npy --teacher {T}/l/t.npy --labels {T}/l/y.npy", {"s_empty.npy", "empty"}, 0},
    {"loss --method cwd --student {T}/l/s_k0.npy --teacher {T}/l/s_k0.npy", {"s_k0.npy", "empty"}, 0},
    {"loss --method kd --student {T}/l/s_3d.npy --teacher {T}/l/t.npy", {"s_3d.npy", "(4, 8, 8)"}, 0},
    {"loss --method kd --student {T}/l/s_inf.npy --teacher {T}/l/t.npy", {"s_inf.npy", "inf", "finite"}, 0},
    {"loss --method kd --student {T}/l/s_trunc.npy --teacher {T}/l/t.npy", {"s_trunc.npy", "truncated"}, 0},
    {"loss --method kd --student {T}/bad/magic.npy --teacher {T}/l/t.npy", {"magic.npy", "not a .npy"}, 0},
    {"loss --method kd --student {T}/l/s.npy --teacher {T}/bad/big_endian.npy", {"big_endian.npy", "big-endian"}, 0},
    {"loss --method kd --student {T}/l/missing.npy --teacher {T}/l/t.npy", {"missing.npy", "No such file"}, 0},
    {"loss --method mse --student {T}/l/s.npy --teacher {T}/l/t.npy", {"--method", "mse"}, 0},
    {LOSS " --T abc", {"--T", "abc"}, 0},
    {LOSS " --T -1", {"--T", "-1"}, 0},
    {LOSS " --T 0", {"--T", "0"}, 0},
    {LOSS " --ignore-index abc", {"--ignore-index", "abc"}, 0},
    {LOSS " --reliability entropy", {"reliability", "entropy"}, 0},
    {LOSS " --kem-axis depth", {"KEM axis", "depth"}, 0},
    {LOSS " --kem-axis class", {"--kem-axis class", "bce"}, 0},
    {LOSS_ST, {"--labels"}, 0},
    {"loss --method kd --student {T}/l/s.npy --teacher {T}/l/t.npy --labels {T}/l/y.npy", {"--labels", "heteroakd only"}, 0},
    {"loss --method kd --student {T}/l/s.npy", {"--teacher", "required"}, 0},
    {LOSS " --bogus", {"--bogus"}, 0},
    {LOSS " --T", {"--T", "needs a value"}, 0},
    /* outputs */
    {LOSS " --grad-out {T}/out", {"--grad-out", "folder"}, 0},
    {LOSS " --grad-out {T}/afile/g.npy", {"--grad-out", "Not a directory"}, 0},
    {LOSS " --grad-out {T}/out/g.npy --weights-out {T}/afile/w.npy", {"--weights-out", "afile"}, 0},
    {LOSS " --weights-out {T}/nodir/w.npy", {"--weights-out", "nodir", "No such file"}, 0},
    {LOSS " --grad-out {T}/out/g.npy", {"g.npy", "File too large"}, 300},
    {LOSS " --grad-out {T}/out/g.npy --weights-out {T}/out/w.npy", {"g.npy", "File too large"}, 400},
};

TEST(loss_refuses_bad_input) {
  ASSERT_EQ_INT(setup(), 0);
  ROWS("loss", loss_rows);
}

/* ---- cka ---- */

#define CKA_T "cka --teacher deeplabv3-r18-d8 --teacher-width 0.125 --teacher-weights {T}/w/r18.safetensors"
#define CKA_S " --student segformer-b0 --student-width 0.125 --student-weights {T}/w/seg.safetensors"
#define CKA CKA_T CKA_S " --dataset generic --data-root {T}/ds --out {T}/out/cka.png"

static const bad_row cka_rows[] = {
    {CKA " --size 16x16", {"--size 16x16", "segformer-b0", "29x29"}, 0},
    {CKA " --size -3x4", {"--size '-3x4'"}, 0},
    {CKA " --size 0", {"--size '0'"}, 0},
    {CKA " --max-images abc", {"--max-images 'abc'"}, 0},
    {CKA " --max-images 1", {"--max-images '1'"}, 0},
    {CKA " --teacher-width abc", {"--teacher-width 'abc'"}, 0},
    {CKA " --student-width -2", {"--student-width '-2'"}, 0},
    {CKA " --threads x", {"--threads 'x'"}, 0},
    {CKA " --norm rgb", {"--norm", "rgb"}, 0},
    {CKA " --student nosuch-net", {"nosuch-net"}, 0},
    {CKA " --student-weights {T}/w/trunc.safetensors", {"student weights", "trunc.safetensors"}, 0},
    {CKA " --teacher-weights {T}/w/lying_len.safetensors", {"teacher weights", "lying_len.safetensors"}, 0},
    {CKA " --teacher-weights {T}/w/missing.safetensors", {"missing.safetensors", "No such file"}, 0},
    {CKA " --student-weights {T}/w/text.safetensors", {"text.safetensors"}, 0},
    {CKA " --data-root {T}/d/trunc_img", {"trunc_img/images/val/00000.png", "truncated"}, 0},
    {CKA " --data-root {T}/d/text_img", {"text_img/images/val/00000.png", "not a PNG or JPEG"}, 0},
    {CKA " --data-root {T}/d/tiny", {"tiny/images/val/00000.png", "16x16", "29x29"}, 0},
    {CKA " --data-root {T}/d/one_val", {"one_val", "at least 2"}, 0},
    {CKA " --data-root {T}/d/empty_split", {"empty_split", "no items"}, 0},
    {CKA " --data-root {T}/nodir", {"nodir", "not found"}, 0},
    {CKA " --dataset nosuchset", {"nosuchset"}, 0},
    {CKA " stray", {"unexpected argument", "stray"}, 0},
    {CKA " --bogus", {"bogus"}, 0},
    {CKA_T " --dataset generic --data-root {T}/ds", {"--student", "required"}, 0},
    /* outputs */
    {CKA " --out {T}/afile/c.png", {"--out", "afile", "Not a directory"}, 0},
    {CKA " --out {T}/out", {"--out", "folder"}, 0},
    {CKA " --out {T}/nodir/c.png", {"--out", "nodir", "No such file"}, 0},
    {CKA, {"cka.png", "File too large"}, 300},
};

/* ---- convert, and .pth weights in predict / eval ---- */

/* PyTorch checkpoints from tests/fixtures/pth (written by python3-torch) and damaged copies. */
static int setup_pth(void) {
  static const char *const names[][2] = {
      {"views.pth", "views.pth"},           {"refuse_os_system.pth", "evil.pth"},   {"refuse_legacy.pth", "legacy.pth"},
      {"refuse_module.pth", "module.pth"}, {"refuse_torchscript.pt", "script.pt"}, {"refuse_huge.pth", "huge.pth"},
      {"deeplabv3-r18-w1_32-ddp.pth", "ddp.pth"}, {"refuse_no_state_dict.pth", "nosd.pth"}};
  int rc = 0;
  mkdir(tpath("p"), 0755);
  for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
    char rel[128];
    snprintf(rel, sizeof rel, "pth/%s", names[i][0]);
    rc |= copy_file(tpath("p/%s", names[i][1]), test_fixture_path(rel));
  }
  size_t n;
  uint8_t *b = read_bytes(tpath("p/views.pth"), &n);
  if (!b || n < 1000) {
    free(b);
    return -1;
  }
  rc |= write_bytes(tpath("p/trunc.pth"), b, n / 2);
  rc |= write_bytes(tpath("p/tail.pth"), b, n - 3);
  rc |= write_bytes(tpath("p/empty.pth"), "", 0);
  rc |= write_bytes(tpath("p/text.pth"), "not a checkpoint\n", 17);
  /* a changed float in storage 0 ("f32": -2.0 = 00 00 00 c0, then -1.5): its CRC no longer matches */
  const uint8_t pattern[8] = {0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0xc0, 0xbf};
  uint8_t *at = memmem(b, n, pattern, sizeof pattern);
  if (!at) rc = -1;
  else {
    at[3] ^= 1;
    rc |= write_bytes(tpath("p/crc.pth"), b, n);
  }
  free(b);
  return rc;
}

#define CONVERT_OUT " {T}/out/x.safetensors"

static const bad_row convert_rows[] = {
    {"convert {T}/p/evil.pth" CONVERT_OUT, {"evil.pth", "'posix.system'", "never runs code"}, 0},
    {"convert {T}/p/module.pth" CONVERT_OUT, {"module.pth", "torch.nn.modules.conv.Conv2d", "state_dict()"}, 0},
    {"convert {T}/p/legacy.pth" CONVERT_OUT, {"legacy.pth", "pre-1.6", "_use_new_zipfile_serialization"}, 0},
    {"convert {T}/p/script.pt" CONVERT_OUT, {"script.pt", "TorchScript"}, 0},
    {"convert {T}/p/huge.pth" CONVERT_OUT, {"huge.pth", "overflow"}, 0},
    {"convert {T}/p/nosd.pth" CONVERT_OUT, {"nosd.pth", "no state_dict", "'epoch'"}, 0},
    {"convert {T}/p/trunc.pth" CONVERT_OUT, {"trunc.pth", "end-of-central-directory"}, 0},
    {"convert {T}/p/tail.pth" CONVERT_OUT, {"tail.pth", "truncated"}, 0},
    {"convert {T}/p/crc.pth" CONVERT_OUT, {"crc.pth", "CRC-32", "corrupted"}, 0},
    {"convert {T}/p/empty.pth" CONVERT_OUT, {"empty.pth", "empty file"}, 0},
    {"convert {T}/p/text.pth" CONVERT_OUT, {"text.pth"}, 0},
    {"convert {T}/p/absent.pth" CONVERT_OUT, {"absent.pth", "No such file"}, 0},
    {"convert {T}/p/views.pth", {"IN and OUT"}, 0},
    {"convert {T}/p/views.pth {T}/out/x.safetensors extra", {"IN and OUT"}, 0},
    {"convert {T}/p/views.pth {T}/afile/x.safetensors", {"afile", "Not a directory"}, 0},
    {"convert {T}/p/views.pth {T}/nodir/x.safetensors", {"nodir", "No such file"}, 0},
    {"convert {T}/p/views.pth {T}/out/x.safetensors", {"x.safetensors", "File too large"}, 200},
    /* .pth wherever weights are read */
    {PREDICT_W("{T}/p/evil.pth"), {"evil.pth", "'posix.system'"}, 0},
    {PREDICT_W("{T}/p/crc.pth"), {"crc.pth", "CRC-32"}, 0},
    {PREDICT_W("{T}/p/ddp.pth"), {"ddp.pth", "of another shape"}, 0}, /* width 1/32 weights, width 1/8 model */
    {PREDICT_W("{T}/p/views.pth"), {"views.pth", "match by name"}, 0},
    {EVAL_DS " --weights {T}/p/legacy.pth", {"legacy.pth", "_use_new_zipfile_serialization"}, 0},
    {"cka --teacher deeplabv3-r18-d8 --teacher-width 0.125 --teacher-weights {T}/p/module.pth" CKA_S
     " --dataset generic --data-root {T}/ds --out {T}/out/cka.png",
     {"module.pth", "Conv2d"}, 0},
};

/* ---- the model description in a weights file's metadata (hakd_model_save) ----
 * {T}/w/meta.safetensors: deeplabv3-r18-d8, width 0.125, 8 classes, described; copies with one
 * corrupt value, and the contradictions a user can give. */
static int setup_meta(void) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = HAKD_SYNTH_NUM_CLASSES;
  o.width = 0.125f;
  hakd_model *m;
  int rc = hakd_model_create("deeplabv3-r18-d8", &o, &m);
  if (rc) return rc;
  const char *w = tpath("w/meta.safetensors");
  rc = hakd_model_save(m, w, NULL);
  hakd_model_free(m);
  rc |= patch_st(tpath("w/meta_width.safetensors"), w, "\"width\":\"0.125\"", "\"width\":\"abc\"");
  rc |= patch_st(tpath("w/meta_classes.safetensors"), w, "\"num_classes\":\"8\"", "\"num_classes\":\"-3\"");
  rc |= patch_st(tpath("w/meta_aspp.safetensors"), w, "\"aspp_dilations\":\"12,24,36\"", "\"aspp_dilations\":\"1,,3\"");
  rc |= patch_st(tpath("w/meta_stem.safetensors"), w, "\"deep_stem\":\"0\"", "\"deep_stem\":\"yes\"");
  rc |= patch_st(tpath("w/meta_model.safetensors"), w, "\"model\":\"deeplabv3-r18-d8\"", "\"model\":\"nosuch-net\"");
  rc |= patch_st(tpath("w/meta_empty.safetensors"), w, "\"model\":\"deeplabv3-r18-d8\"", "\"model\":\"\"");
  return rc;
}

#define META_PREDICT "predict --input {T}/bad/ok.npy --save-logits {T}/out/l.npy --weights "

static const bad_row meta_rows[] = {
    /* corrupt values: named with the file and the key */
    {META_PREDICT "{T}/w/meta_width.safetensors", {"meta_width.safetensors", "'width' = 'abc'", "(0, 4]"}, 0},
    {META_PREDICT "{T}/w/meta_classes.safetensors", {"meta_classes.safetensors", "'num_classes' = '-3'", "[1, 4096]"}, 0},
    {META_PREDICT "{T}/w/meta_aspp.safetensors", {"meta_aspp.safetensors", "aspp_dilations '1,,3'"}, 0},
    {META_PREDICT "{T}/w/meta_stem.safetensors", {"meta_stem.safetensors", "'deep_stem' = 'yes'", "0 or 1"}, 0},
    {META_PREDICT "{T}/w/meta_model.safetensors", {"meta_model.safetensors", "nosuch-net", "hakd models"}, 0},
    {META_PREDICT "{T}/w/meta_empty.safetensors", {"meta_empty.safetensors", "'model' = ''"}, 0},
    {"eval --weights {T}/w/meta_width.safetensors --dataset generic --data-root {T}/ds", {"meta_width.safetensors", "'abc'"}, 0},
    {"export --weights {T}/w/meta_classes.safetensors --size 32x32 --out {T}/out/m.onnx", {"meta_classes.safetensors", "'-3'"}, 0},
    {"info --weights {T}/w/meta_aspp.safetensors", {"meta_aspp.safetensors", "'1,,3'"}, 0},
    {"convert {T}/w/meta_width.safetensors {T}/out/x.safetensors", {"meta_width.safetensors", "'abc'"}, 0},
    {"cka --teacher-weights {T}/w/meta_width.safetensors --student-weights {T}/w/meta.safetensors --dataset generic "
     "--data-root {T}/ds --out {T}/out/cka.png",
     {"teacher weights", "meta_width.safetensors", "'abc'"}, 0},
    {DISTILL_NO_TEACHER " --teacher deeplabv3-r18-d8 --teacher-weights {T}/w/meta_classes.safetensors",
     {"teacher", "meta_classes.safetensors", "'-3'"}, 0},
    /* given options that contradict the file: refused naming the file, the option and both values */
    {META_PREDICT "{T}/w/meta.safetensors --width 0.25", {"meta.safetensors", "width 0.25 was given", "width 0.125"}, 0},
    {META_PREDICT "{T}/w/meta.safetensors --num-classes 5", {"meta.safetensors", "num_classes 5", "num_classes 8"}, 0},
    {META_PREDICT "{T}/w/meta.safetensors --aspp-dilations 1,2,3", {"meta.safetensors", "1,2,3", "12,24,36"}, 0},
    {META_PREDICT "{T}/w/meta.safetensors --model segformer-b0", {"meta.safetensors", "model segformer-b0", "deeplabv3-r18-d8"}, 0},
    {"export --weights {T}/w/meta.safetensors --width 0.5 --size 32x32 --out {T}/out/m.onnx", {"meta.safetensors", "0.5", "0.125"}, 0},
    {"info --weights {T}/w/meta.safetensors --num-classes 3", {"meta.safetensors", "num_classes 3", "num_classes 8"}, 0},
    {DISTILL_NO_TEACHER " --teacher deeplabv3-r18-d8 --teacher-width 0.25 --teacher-weights {T}/w/meta.safetensors",
     {"teacher", "meta.safetensors", "width 0.25"}, 0},
    {"convert {T}/w/meta.safetensors {T}/out/x.safetensors --width 0.25", {"meta.safetensors", "width 0.25", "0.125"}, 0},
    /* files that say nothing: what to pass */
    {META_PREDICT "{T}/p/ddp.pth", {"ddp.pth", "no model name", "--model"}, 0},
    {META_PREDICT "{T}/p/views.pth --model deeplabv3-r18-d8", {"views.pth", "no num_classes", "--num-classes"}, 0},
    {"convert {T}/p/views.pth {T}/out/x.safetensors --width 0.5", {"--width", "--model"}, 0},
};

TEST(metadata_refuses_bad_input) {
  int rc = setup();
  if (!rc) rc = setup_pth();
  if (!rc) rc = setup_meta();
  ASSERT_EQ_INT(rc, 0);
  ROWS("metadata", meta_rows);
}

TEST(convert_refuses_bad_input) {
  int rc = setup();
  if (!rc) rc = setup_pth();
  ASSERT_EQ_INT(rc, 0);
  ROWS("convert", convert_rows);
}

TEST(cka_refuses_bad_input) {
  int rc = setup();
  const char *variants[] = {"trunc_img", "text_img", "tiny", "one_val", "empty_split"};
  for (size_t i = 0; !rc && i < sizeof variants / sizeof *variants; i++) rc = make_variant(variants[i]);
  ASSERT_EQ_INT(rc, 0);
  ROWS("cka", cka_rows);
}

/* ---- info and bench ---- */

static const bad_row info_rows[] = {
    {"info --model segformer-b0 --size 16x16", {"--size 16x16", "29x29"}, 0},
    {"info --model segformer-b0 --size 28x512", {"28x512", "29x29"}, 0},
    {"info --model deeplabv3-mit-b0 --size 8x8", {"deeplabv3-mit-b0", "29x29"}, 0},
    {"info --model segformer-b0 --size 0x0", {"--size '0x0'"}, 0},
    {"info --model segformer-b0 --size abc", {"--size 'abc'"}, 0},
    {"info --model segformer-b0 --size -3x4", {"--size '-3x4'"}, 0},
    {"info --model segformer-b0 --size 99999x4", {"--size '99999x4'"}, 0},
    {"info --model segformer-b0 --num-classes abc", {"--num-classes 'abc'"}, 0},
    {"info --model segformer-b0 --num-classes 0", {"--num-classes '0'"}, 0},
    {"info --model segformer-b0 --width abc", {"--width 'abc'"}, 0},
    {"info --model segformer-b0 --width 100", {"--width '100'"}, 0},
    {"info --model nosuch-net", {"nosuch-net", "hakd models"}, 0},
    {"info", {"--model", "required"}, 0},
    {"info --model segformer-b0 stray", {"unexpected argument", "stray"}, 0},
    {"info --model segformer-b0 --bogus", {"bogus"}, 0},
};

TEST(info_refuses_bad_input) { ROWS("info", info_rows); }

#define BENCH "bench " R18 " --size 32x32 --batch 2 --iters 1 --warmup 0"

static const bad_row bench_rows[] = {
    {BENCH " --batch 0", {"--batch '0'"}, 0},
    {BENCH " --batch abc", {"--batch 'abc'"}, 0},
    {BENCH " --batch 1", {"batch of 1", "at least 2"}, 0},
    {BENCH " --iters 0", {"--iters '0'"}, 0},
    {BENCH " --iters -5", {"--iters '-5'"}, 0},
    {BENCH " --warmup -1", {"--warmup '-1'"}, 0},
    {BENCH " --size 0x0", {"--size '0x0'"}, 0},
    {BENCH " --size 32x", {"--size '32x'"}, 0},
    {BENCH " --mode fly", {"fly"}, 0},
    {BENCH " --mode distill", {"--teacher"}, 0},
    {BENCH " --mode distill --teacher nosuch-net", {"nosuch-net"}, 0},
    {BENCH " --method mse", {"mse"}, 0},
    {BENCH " --num-classes 0", {"--num-classes '0'"}, 0},
    {BENCH " --width abc", {"--width 'abc'"}, 0},
    {BENCH " --threads abc", {"--threads 'abc'"}, 0},
    {BENCH " --seed abc", {"--seed 'abc'"}, 0},
    {BENCH " --seed -1", {"--seed '-1'"}, 0},
    {BENCH " --precision fp8", {"fp8"}, 0},
    {"bench " SEG " --size 16x16 --batch 2 --iters 1 --warmup 0", {"segformer-b0", "16x16", "29x29"}, 0},
    {"bench " SEG " --size 32x32 --batch 2 --iters 1 --warmup 0 --mode distill --teacher deeplabv3-mit-b0 --size 20x20",
     {"20x20", "29x29"}, 0},
    {"bench --model nosuch-net", {"nosuch-net"}, 0},
    {"bench", {"--model", "required"}, 0},
    {BENCH " stray", {"unexpected argument", "stray"}, 0},
    {BENCH " --bogus", {"bogus"}, 0},
};

TEST(bench_refuses_bad_input) { ROWS("bench", bench_rows); }

/* ---- stats (per-seed results tables of hakd demo) ---- */

static const bad_row stats_rows[] = {
    {"stats", {"usage: hakd stats"}, 0},
    {"stats {T}/r/missing.tsv {T}/r/good.tsv", {"missing.tsv", "No such file"}, 0},
    {"stats {T}/r/empty.tsv {T}/r/good.tsv", {"empty.tsv", "empty file"}, 0},
    {"stats {T}/r/garbage.tsv {T}/r/good.tsv", {"garbage.tsv", "not a results table"}, 0},
    {"stats {T}/r/binary.tsv {T}/r/good.tsv", {"binary.tsv", "not a results table"}, 0},
    {"stats {T}/r/nan.tsv {T}/r/good.tsv", {"nan.tsv:2", "not a number"}, 0},
    {"stats {T}/r/columns.tsv {T}/r/good.tsv", {"columns.tsv:2", "fields"}, 0},
    {"stats {T}/r {T}/r/good.tsv", {"{T}/r", "Is a directory"}, 0},
    {"stats --baseline nosuch {T}/r/good.tsv {T}/r/good.tsv", {"nosuch", "not in the results"}, 0},
    {"stats --bogus {T}/r/good.tsv", {"bogus"}, 0},
};

TEST(stats_refuses_bad_input) {
  mkdir(tpath("r"), 0755);
  const char *good = "method\tmiou\tbg\tfg\nnone\t40\t50\t30\nkd\t41\t51\t31\nteacher\t45\t55\t35\n";
  int rc = write_bytes(tpath("r/good.tsv"), good, strlen(good));
  rc |= write_bytes(tpath("r/empty.tsv"), "", 0);
  rc |= write_bytes(tpath("r/garbage.tsv"), "garbage line\n", 13);
  rc |= write_bytes(tpath("r/binary.tsv"), "\0\1binary\377", 9);
  const char *nan = "method\tmiou\tbg\nnone\tabc\t50\n", *columns = "method\tmiou\tbg\nnone\t40\t50\t30\t99\n";
  rc |= write_bytes(tpath("r/nan.tsv"), nan, strlen(nan));
  rc |= write_bytes(tpath("r/columns.tsv"), columns, strlen(columns));
  ASSERT_EQ_INT(rc, 0);
  ROWS("stats", stats_rows);
}

/* ---- the minimum input size is the real one ---- */

/* For every model of the zoo: a forward at hakd_model_min_input works (eval mode), one pixel less
 * in either dimension is refused naming the minimum, and a training forward at the minimum train
 * batch works. The CNNs take 1x1; that the MiT limit (29) is real, not a guess, was found by
 * trying every size from 1 to 48 on every model before the check existed (28 failed in conv2d,
 * 29 ran). */
TEST(min_input_is_what_the_models_take) {
  for (int i = 0; i < hakd_model_count(); i++) {
    const char *name = hakd_model_name_at(i);
    hakd_model_options o;
    hakd_model_options_default(&o);
    o.width = 0.125f;
    o.num_classes = 3;
    hakd_model *m;
    ASSERT_OK(hakd_model_create(name, &o, &m));
    int min = hakd_model_min_input(m);
    hakd_ctx *ctx = hakd_ctx_new();
    hakd_ctx_set_grad(ctx, 0);
    hakd_ctx_set_training(ctx, 0);
    hakd_model_output out;
    hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){1, 3, min, min + 3});
    int rc = hakd_model_forward(m, ctx, x, &out);
    if (rc) test_fail(__FILE__, __LINE__, "%s at its minimum %dx%d: %s", name, min, min + 3, hakd_error_message());
    if (min > 1) {
      hakd_ctx_reset(ctx);
      x = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){1, 3, min + 3, min - 1});
      rc = hakd_model_forward(m, ctx, x, &out);
      char want[64];
      snprintf(want, sizeof want, "smallest input it takes, %dx%d", min, min);
      if (rc != HAKD_ESHAPE || !strstr(hakd_error_message(), want))
        test_fail(__FILE__, __LINE__, "%s below its minimum: rc %d, \"%s\"", name, rc, hakd_error_message());
    }
    /* training at the minimum size with the minimum batch runs; one image less is refused */
    int batch = hakd_model_min_train_batch(m, min, min);
    hakd_ctx_reset(ctx);
    hakd_ctx_set_training(ctx, 1);
    x = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){batch, 3, min, min});
    rc = hakd_model_forward(m, ctx, x, &out);
    if (rc) test_fail(__FILE__, __LINE__, "%s training batch %d at %dx%d: %s", name, batch, min, min, hakd_error_message());
    if (batch > 1) {
      hakd_ctx_reset(ctx);
      x = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){batch - 1, 3, min, min});
      rc = hakd_model_forward(m, ctx, x, &out);
      if (rc != HAKD_ESHAPE || !strstr(hakd_error_message(), "batch of at least"))
        test_fail(__FILE__, __LINE__, "%s training batch %d: rc %d, \"%s\"", name, batch - 1, rc, hakd_error_message());
    }
    hakd_ctx_free(ctx);
    hakd_model_free(m);
    if (test_failed()) return;
  }
}
