/* .npy reader and writer: round trips of every dtype, files written by numpy (tools/gen_io.py,
 * format 1.0 and 2.0), conversions, and hand-made malformed files. */
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hakd/io.h"

/* Path inside the case's temporary directory; valid until the next call. */
static const char *tmp_path(const char *name) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
  return path;
}

/* A .npy file with the given version, header dict text (padded here) and data bytes. */
static void write_npy_raw(const char *path, int major, const char *dict, const void *data, size_t data_len) {
  size_t prefix_len = major == 1 ? 10 : 12, header_len = strlen(dict) + 1;
  header_len += (64 - (prefix_len + header_len) % 64) % 64;
  FILE *fp = fopen(path, "wb");
  if (!fp) return;
  fwrite("\x93NUMPY", 1, 6, fp);
  fputc(major, fp);
  fputc(0, fp);
  for (size_t i = 0; i < prefix_len - 8; i++) fputc((int)((header_len >> (8 * i)) & 0xFF), fp);
  fputs(dict, fp);
  for (size_t i = strlen(dict) + 1; i < header_len; i++) fputc(' ', fp);
  fputc('\n', fp);
  if (data_len) fwrite(data, 1, data_len, fp);
  fclose(fp);
}

TEST(round_trip_all_dtypes) {
  float f32[6] = {1.5f, -2.0f, 0.0f, 1e-30f, 3.25f, -7.0f};
  double f64[4] = {0.1, -1e300, 2.5, 0.0};
  int32_t i32 = -123456;
  int64_t i64[3] = {INT64_MIN, 0, INT64_MAX};
  uint8_t u8[8] = {0, 1, 127, 128, 200, 254, 255, 3};
  uint8_t b[5] = {1, 0, 0, 1, 1};
  const struct {
    const char *file;
    hakd_npy_dtype dtype;
    int ndim;
    int64_t shape[3];
    const void *data;
    size_t bytes;
  } cases[] = {
      {"f32.npy", HAKD_NPY_F32, 2, {2, 3}, f32, sizeof f32},  {"f64.npy", HAKD_NPY_F64, 1, {4}, f64, sizeof f64},
      {"i32.npy", HAKD_NPY_I32, 0, {0}, &i32, sizeof i32},    {"i64.npy", HAKD_NPY_I64, 1, {3}, i64, sizeof i64},
      {"u8.npy", HAKD_NPY_U8, 3, {2, 2, 2}, u8, sizeof u8},   {"bool.npy", HAKD_NPY_BOOL, 1, {5}, b, sizeof b},
      {"empty.npy", HAKD_NPY_F32, 2, {0, 4}, NULL, 0},
  };
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    const char *path = tmp_path(cases[c].file);
    ASSERT_OK(hakd_npy_write(path, cases[c].dtype, cases[c].ndim, cases[c].shape, cases[c].data));
    /* numpy's layout: magic, version 1.0, and a header ending in '\n' at a multiple of 64. */
    FILE *fp = fopen(path, "rb");
    ASSERT_TRUE(fp != NULL);
    uint8_t prefix[10];
    ASSERT_EQ_INT(fread(prefix, 1, 10, fp), 10);
    fclose(fp);
    ASSERT_EQ_INT(prefix[6], 1);
    size_t header_len = prefix[8] | (size_t)prefix[9] << 8;
    ASSERT_EQ_INT((10 + header_len) % 64, 0);
    struct stat st;
    ASSERT_EQ_INT(stat(path, &st), 0);
    ASSERT_EQ_INT(st.st_size, 10 + header_len + cases[c].bytes);

    hakd_npy a;
    ASSERT_OK(hakd_npy_read(path, &a));
    ASSERT_EQ_INT(a.dtype, cases[c].dtype);
    ASSERT_EQ_INT(a.ndim, cases[c].ndim);
    for (int d = 0; d < a.ndim; d++) ASSERT_EQ_INT(a.shape[d], cases[c].shape[d]);
    if (cases[c].bytes) ASSERT_TRUE(memcmp(a.data, cases[c].data, cases[c].bytes) == 0);
    else ASSERT_EQ_INT(hakd_npy_numel(&a), 0);
    hakd_npy_free(&a);
    ASSERT_TRUE(a.data == NULL);
  }
  /* No temporary files are left behind. */
  DIR *d = opendir(test_tmpdir());
  ASSERT_TRUE(d != NULL);
  int temps = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".tmp.")) temps++;
  closedir(d);
  ASSERT_EQ_INT(temps, 0);
}

/* The .npy files in tests/fixtures/io/ written by numpy in tools/gen_io.py. */
TEST(reads_numpy_written_files) {
  hakd_npy a;
  ASSERT_OK(hakd_npy_read(test_fixture_path("io/f32_2d.npy"), &a));
  ASSERT_EQ_INT(a.dtype, HAKD_NPY_F32);
  ASSERT_EQ_INT(a.ndim, 2);
  ASSERT_EQ_INT(a.shape[0], 3);
  ASSERT_EQ_INT(a.shape[1], 5);
  /* numpy computed i / 7 in float64 and rounded to float32, as C does here: exact. */
  for (int i = 0; i < 15; i++) ASSERT_TRUE(((float *)a.data)[i] == (float)(i / 7.0));
  hakd_npy_free(&a);

  ASSERT_OK(hakd_npy_read(test_fixture_path("io/i64_1d.npy"), &a));
  ASSERT_EQ_INT(a.dtype, HAKD_NPY_I64);
  ASSERT_EQ_INT(a.ndim, 1); /* shape written as "(4,)" */
  ASSERT_EQ_INT(a.shape[0], 4);
  const int64_t want_i64[4] = {-3, 0, 7, (int64_t)1 << 40};
  for (int i = 0; i < 4; i++) ASSERT_EQ_INT(((int64_t *)a.data)[i], want_i64[i]);
  hakd_npy_free(&a);

  ASSERT_OK(hakd_npy_read(test_fixture_path("io/bool.npy"), &a));
  ASSERT_EQ_INT(a.dtype, HAKD_NPY_BOOL);
  ASSERT_EQ_INT(a.shape[0], 2);
  ASSERT_EQ_INT(a.shape[1], 3);
  const uint8_t want_bool[6] = {1, 0, 1, 0, 0, 1};
  for (int i = 0; i < 6; i++) ASSERT_EQ_INT(((uint8_t *)a.data)[i], want_bool[i]);
  hakd_npy_free(&a);

  /* Format 2.0: 4-byte header length. */
  uint8_t version = 0;
  FILE *fp = fopen(test_fixture_path("io/f64_v2.npy"), "rb");
  ASSERT_TRUE(fp != NULL);
  ASSERT_EQ_INT(fseek(fp, 6, SEEK_SET), 0);
  ASSERT_EQ_INT(fread(&version, 1, 1, fp), 1);
  fclose(fp);
  ASSERT_EQ_INT(version, 2);
  ASSERT_OK(hakd_npy_read(test_fixture_path("io/f64_v2.npy"), &a));
  ASSERT_EQ_INT(a.dtype, HAKD_NPY_F64);
  ASSERT_EQ_INT(a.shape[0], 2);
  ASSERT_EQ_INT(a.shape[1], 3);
  for (int i = 0; i < 6; i++) ASSERT_TRUE(((double *)a.data)[i] == i / 8.0);
  hakd_npy_free(&a);
}

TEST(header_spellings) {
  /* Scalars "()", double quotes, keys in another order, no trailing comma, format 3.0. */
  const float v = 2.5f;
  const char *path = tmp_path("scalar.npy");
  write_npy_raw(path, 1, "{\"shape\": (), \"fortran_order\": False, \"descr\": \"<f4\"}", &v, 4);
  hakd_npy a;
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_EQ_INT(a.ndim, 0);
  ASSERT_EQ_INT(hakd_npy_numel(&a), 1);
  ASSERT_TRUE(((float *)a.data)[0] == 2.5f);
  hakd_npy_free(&a);

  const uint8_t u[6] = {1, 2, 3, 4, 5, 6};
  path = tmp_path("v3.npy");
  write_npy_raw(path, 3, "{'descr': '<u1', 'fortran_order': False, 'shape': (2, 3,), }", u, 6);
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_EQ_INT(a.dtype, HAKD_NPY_U8);
  ASSERT_EQ_INT(a.shape[1], 3);
  ASSERT_EQ_INT(((uint8_t *)a.data)[5], 6);
  hakd_npy_free(&a);
}

TEST(conversions) {
  const int64_t shape[1] = {4};
  const int64_t i64[4] = {-3, 0, 7, 100000};
  const char *path = tmp_path("conv_i64.npy");
  ASSERT_OK(hakd_npy_write(path, HAKD_NPY_I64, 1, shape, i64));
  hakd_npy a;
  ASSERT_OK(hakd_npy_read(path, &a));
  float *f = NULL;
  int32_t *n = NULL;
  ASSERT_OK(hakd_npy_to_f32(&a, &f));
  ASSERT_OK(hakd_npy_to_i32(&a, &n));
  for (int i = 0; i < 4; i++) {
    ASSERT_TRUE(f[i] == (float)i64[i]);
    ASSERT_EQ_INT(n[i], i64[i]);
  }
  free(f);
  free(n);
  hakd_npy_free(&a);

  /* float64 holding integers converts to int32; a fraction or an int64 beyond int32 does not. */
  double f64[4] = {255.0, -1.0, 0.0, 12.0};
  ASSERT_OK(hakd_npy_write(path, HAKD_NPY_F64, 1, shape, f64));
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_OK(hakd_npy_to_i32(&a, &n));
  ASSERT_EQ_INT(n[0], 255);
  ASSERT_EQ_INT(n[1], -1);
  free(n);
  ASSERT_OK(hakd_npy_to_f32(&a, &f));
  ASSERT_TRUE(f[3] == 12.0f);
  free(f);
  hakd_npy_free(&a);
  f64[2] = 0.5;
  ASSERT_OK(hakd_npy_write(path, HAKD_NPY_F64, 1, shape, f64));
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_EQ_INT(hakd_npy_to_i32(&a, &n), HAKD_ERANGE);
  ASSERT_TRUE(strstr(hakd_error_message(), "element 2") != NULL);
  hakd_npy_free(&a);
  const int64_t big[4] = {0, 0, 0, (int64_t)1 << 40};
  ASSERT_OK(hakd_npy_write(path, HAKD_NPY_I64, 1, shape, big));
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_EQ_INT(hakd_npy_to_i32(&a, &n), HAKD_ERANGE);
  ASSERT_TRUE(strstr(hakd_error_message(), "1099511627776") != NULL);
  hakd_npy_free(&a);

  /* bool and uint8 to float. */
  const uint8_t b[4] = {1, 0, 1, 1};
  ASSERT_OK(hakd_npy_write(path, HAKD_NPY_BOOL, 1, shape, b));
  ASSERT_OK(hakd_npy_read(path, &a));
  ASSERT_OK(hakd_npy_to_f32(&a, &f));
  ASSERT_TRUE(f[0] == 1.0f && f[1] == 0.0f);
  free(f);
  hakd_npy_free(&a);
}

typedef struct {
  const char *file;
  int major;
  const char *dict;
  size_t data_len;
  int status;
  const char *message;
} malformed_case;

TEST(malformed_files) {
  static const malformed_case cases[] = {
      {"fortran.npy", 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16, HAKD_EUNSUPPORTED,
       "fortran_order True is not supported"},
      {"truncated.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20, HAKD_EFORMAT,
       "truncated: the array needs 24 data bytes but only 20 follow the header"},
      {"complex.npy", 1, "{'descr': '<c8', 'fortran_order': False, 'shape': (1,), }", 8, HAKD_EUNSUPPORTED,
       "dtype '<c8' is not supported"},
      {"bigendian.npy", 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }", 4, HAKD_EUNSUPPORTED,
       "big-endian dtype '>f4'"},
      {"structured.npy", 1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }", 4,
       HAKD_EUNSUPPORTED, "structured dtypes"},
      {"int_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (3), }", 12, HAKD_EFORMAT,
       "not a tuple"},
      {"negative_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (-1,), }", 0, HAKD_EFORMAT,
       "non-negative integers"},
      {"missing_shape.npy", 1, "{'descr': '<f4', 'fortran_order': False, }", 0, HAKD_EFORMAT, "lacks 'shape'"},
      {"unknown_key.npy", 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (), 'x': 1}", 4, HAKD_EFORMAT,
       "unknown or repeated key 'x'"},
      {"not_dict.npy", 1, "[1, 2]", 0, HAKD_EFORMAT, "expected '{'"},
      {"v2_truncated.npy", 2, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", 15, HAKD_EFORMAT,
       "truncated"},
  };
  const uint8_t zeros[64] = {0};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const malformed_case *c = &cases[i];
    const char *path = tmp_path(c->file);
    write_npy_raw(path, c->major, c->dict, zeros, c->data_len);
    hakd_npy a;
    int status = hakd_npy_read(path, &a);
    if (status != c->status || !strstr(hakd_error_message(), c->file) || !strstr(hakd_error_message(), c->message)) {
      test_fail(__FILE__, __LINE__, "case %s: status %d (want %d), message \"%s\" (want \"%s\")", c->file, status,
                c->status, hakd_error_message(), c->message);
      if (status == 0) hakd_npy_free(&a);
      return;
    }
    ASSERT_TRUE(a.data == NULL);
  }
}

TEST(bad_prefix) {
  hakd_npy a;
  const char *path = tmp_path("magic.npy");
  FILE *fp = fopen(path, "wb");
  ASSERT_TRUE(fp != NULL);
  fputs("PK\x03\x04 this is a zip file, not an npy", fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_npy_read(path, &a), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "magic.npy: not a .npy file") != NULL);

  path = tmp_path("version.npy");
  fp = fopen(path, "wb");
  ASSERT_TRUE(fp != NULL);
  fwrite("\x93NUMPY\x04\x00\x10\x00", 1, 10, fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_npy_read(path, &a), HAKD_EUNSUPPORTED);
  ASSERT_TRUE(strstr(hakd_error_message(), "version.npy: .npy format version 4.0") != NULL);

  path = tmp_path("short_header.npy");
  fp = fopen(path, "wb");
  ASSERT_TRUE(fp != NULL);
  fwrite("\x93NUMPY\x01\x00\x40\x00{'descr'", 1, 17, fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_npy_read(path, &a), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "short_header.npy: truncated: header length 64") != NULL);

  ASSERT_EQ_INT(hakd_npy_read(tmp_path("absent.npy"), &a), HAKD_ENOTFOUND);
  ASSERT_TRUE(strstr(hakd_error_message(), "absent.npy") != NULL);
}

TEST(write_failure_keeps_previous_file) {
  const int64_t shape[1] = {2};
  const int32_t first[2] = {1, 2}, second[2] = {3, 4};
  char dir[1024], inner[1100];
  snprintf(dir, sizeof dir, "%s/occupied.npy", test_tmpdir());
  ASSERT_EQ_INT(mkdir(dir, 0700), 0);
  snprintf(inner, sizeof inner, "%s/keep.npy", dir);
  ASSERT_OK(hakd_npy_write(inner, HAKD_NPY_I32, 1, shape, first));
  /* Renaming onto a non-empty directory fails: no temporary left, contents untouched. */
  ASSERT_EQ_INT(hakd_npy_write(dir, HAKD_NPY_I32, 1, shape, second), HAKD_EIO);
  ASSERT_TRUE(strstr(hakd_error_message(), "occupied.npy") != NULL);
  DIR *d = opendir(test_tmpdir());
  ASSERT_TRUE(d != NULL);
  int temps = 0;
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".tmp.")) temps++;
  closedir(d);
  ASSERT_EQ_INT(temps, 0);
  hakd_npy a;
  ASSERT_OK(hakd_npy_read(inner, &a));
  ASSERT_EQ_INT(((int32_t *)a.data)[1], 2);
  hakd_npy_free(&a);
  ASSERT_EQ_INT(hakd_npy_write(inner, HAKD_NPY_I32, -1, shape, second), HAKD_EINVAL);
}

/* Random byte flips and cuts of a valid file: each read succeeds or fails naming the file,
 * never reading out of bounds (checked under ASan). */
TEST(mutated_files_never_crash) {
  const int64_t shape[2] = {3, 4};
  const int32_t values[12] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
  const char *good = tmp_path("good.npy");
  ASSERT_OK(hakd_npy_write(good, HAKD_NPY_I32, 2, shape, values));
  uint8_t original[256], bytes[256];
  FILE *fp = fopen(good, "rb");
  ASSERT_TRUE(fp != NULL);
  size_t size = fread(original, 1, sizeof original, fp);
  fclose(fp);
  ASSERT_EQ_INT(size, 128 + sizeof values);
  uint32_t state = 521288629u;
  for (int iter = 0; iter < 400; iter++) {
    memcpy(bytes, original, size);
    for (int k = 0; k < 1 + iter % 3; k++) { /* xorshift32, aimed at the 128-byte header */
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      bytes[state % 128] = (uint8_t)(state >> 24);
    }
    size_t n = iter % 6 == 5 ? state % size : size;
    const char *path = tmp_path("mutant.npy");
    fp = fopen(path, "wb");
    ASSERT_TRUE(fp != NULL);
    fwrite(bytes, 1, n, fp);
    fclose(fp);
    hakd_npy a;
    int status = hakd_npy_read(path, &a);
    if (status == 0) {
      float *f = NULL;
      ASSERT_OK(hakd_npy_to_f32(&a, &f));
      free(f);
      hakd_npy_free(&a);
    } else if (status > 0 || !strstr(hakd_error_message(), "mutant.npy")) {
      test_fail(__FILE__, __LINE__, "iteration %d: status %d, \"%s\"", iter, status, hakd_error_message());
      return;
    }
  }
}
