/* safetensors reader and writer (and its JSON parser): round trips, every header validation rule on hand-made
 * malformed files, F16/BF16 conversion against known bit patterns, and files written by
 * PyTorch (tools/gen_io.py). */
#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hakd/io.h"
#include "io/json.h"

/* Path inside the case's temporary directory; valid until the next call. */
static const char *tmp_path(const char *name) {
  static char path[1024];
  snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
  return path;
}

/* Writes a safetensors file by hand: declared header length, header text, data bytes. */
static void write_raw(const char *path, uint64_t declared_len, const char *header, const void *data, size_t data_len) {
  FILE *fp = fopen(path, "wb");
  if (!fp) return;
  fwrite(&declared_len, 8, 1, fp);
  fwrite(header, 1, strlen(header), fp);
  if (data_len) fwrite(data, 1, data_len, fp);
  fclose(fp);
}

static void write_header_and_zeros(const char *path, const char *header, size_t data_len) {
  uint8_t *zeros = calloc(data_len ? data_len : 1, 1);
  write_raw(path, strlen(header), header, zeros, data_len);
  free(zeros);
}

/* Number of entries in dir whose name contains ".tmp.". */
static int count_temp_files(const char *dir) {
  int n = 0;
  DIR *d = opendir(dir);
  if (!d) return -1;
  for (struct dirent *e; (e = readdir(d));)
    if (strstr(e->d_name, ".tmp.")) n++;
  closedir(d);
  return n;
}

TEST(round_trip) {
  float weights[6] = {1.5f, -2.25f, 0.0f, 3.0e-8f, -1.0e6f, 42.0f};
  int64_t steps[4] = {0, -1, INT64_MAX, (int64_t)1 << 40};
  uint8_t mask[8] = {0, 1, 2, 3, 250, 251, 254, 255};
  int32_t classes[3] = {-7, 0, 2147483647};
  float scalar = 0.125f;
  int64_t w_shape[2] = {2, 3}, s_shape[1] = {4}, m_shape[3] = {2, 2, 2}, c_shape[1] = {3}, e_shape[2] = {0, 5};
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_TRUE(w != NULL);
  ASSERT_OK(hakd_st_writer_add(w, "backbone.conv1.weight", HAKD_ST_F32, 2, w_shape, weights));
  ASSERT_OK(hakd_st_writer_add(w, "step\"quoted\\name", HAKD_ST_I64, 1, s_shape, steps));
  ASSERT_OK(hakd_st_writer_add(w, "mask", HAKD_ST_U8, 3, m_shape, mask));
  ASSERT_OK(hakd_st_writer_add(w, "classes", HAKD_ST_I32, 1, c_shape, classes));
  ASSERT_OK(hakd_st_writer_add(w, "scale", HAKD_ST_F32, 0, NULL, &scalar));
  ASSERT_OK(hakd_st_writer_add(w, "empty", HAKD_ST_F32, 2, e_shape, NULL));
  ASSERT_OK(hakd_st_writer_metadata(w, "format", "pt"));
  ASSERT_OK(hakd_st_writer_metadata(w, "note", "line1\nline2 \"q\" \xc3\xa9"));
  ASSERT_OK(hakd_st_writer_metadata(w, "format", "hakd")); /* replaces the first value */
  ASSERT_EQ_INT(hakd_st_writer_add(w, "mask", HAKD_ST_U8, 3, m_shape, mask), HAKD_EINVAL);
  const char *path = tmp_path("round.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_writer_free(w);
  ASSERT_EQ_INT(count_temp_files(test_tmpdir()), 0);

  /* The reference layout: header length a multiple of 8, file = 8 + header + data. */
  FILE *fp = fopen(path, "rb");
  ASSERT_TRUE(fp != NULL);
  uint64_t header_len = 0;
  ASSERT_EQ_INT(fread(&header_len, 8, 1, fp), 1);
  fclose(fp);
  ASSERT_EQ_INT(header_len % 8, 0);
  struct stat st;
  ASSERT_EQ_INT(stat(path, &st), 0);
  ASSERT_EQ_INT(st.st_size, 8 + header_len + sizeof weights + sizeof steps + sizeof mask + sizeof classes + 4);

  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(path, &f));
  ASSERT_TRUE(strcmp(hakd_st_path(f), path) == 0);
  ASSERT_EQ_INT(hakd_st_count(f), 6);
  ASSERT_TRUE(strcmp(hakd_st_get(f, 0)->name, "backbone.conv1.weight") == 0); /* header order */
  ASSERT_TRUE(strcmp(hakd_st_get(f, 5)->name, "empty") == 0);
  ASSERT_TRUE(hakd_st_get(f, 6) == NULL);
  ASSERT_TRUE(hakd_st_find(f, "absent") == NULL);
  const hakd_st_tensor *t = hakd_st_find(f, "mask");
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->dtype, HAKD_ST_U8);
  ASSERT_EQ_INT(t->ndim, 3);
  ASSERT_EQ_INT(t->shape[2], 2);
  ASSERT_EQ_INT(t->nbytes, 8);
  t = hakd_st_find(f, "scale");
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->ndim, 0);
  t = hakd_st_find(f, "empty");
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->nbytes, 0);
  ASSERT_EQ_INT(t->shape[1], 5);

  float got_w[6];
  ASSERT_OK(hakd_st_read_f32(f, "backbone.conv1.weight", got_w, 6));
  for (int i = 0; i < 6; i++) ASSERT_TRUE(got_w[i] == weights[i]); /* bit copy: exact */
  int64_t got_s[4];
  ASSERT_OK(hakd_st_read_i64(f, "step\"quoted\\name", got_s, 4));
  for (int i = 0; i < 4; i++) ASSERT_EQ_INT(got_s[i], steps[i]);
  int64_t got_m[8];
  ASSERT_OK(hakd_st_read_i64(f, "mask", got_m, 8));
  for (int i = 0; i < 8; i++) ASSERT_EQ_INT(got_m[i], mask[i]);
  int64_t got_c[3];
  ASSERT_OK(hakd_st_read_i64(f, "classes", got_c, 3));
  for (int i = 0; i < 3; i++) ASSERT_EQ_INT(got_c[i], classes[i]);
  float got_scale = 0;
  ASSERT_OK(hakd_st_read_f32(f, "scale", &got_scale, 1));
  ASSERT_TRUE(got_scale == 0.125f);
  ASSERT_OK(hakd_st_read_f32(f, "empty", got_w, 0));

  ASSERT_TRUE(hakd_st_metadata(f, "format") != NULL);
  ASSERT_TRUE(strcmp(hakd_st_metadata(f, "format"), "hakd") == 0);
  ASSERT_TRUE(strcmp(hakd_st_metadata(f, "note"), "line1\nline2 \"q\" \xc3\xa9") == 0);
  ASSERT_TRUE(hakd_st_metadata(f, "absent") == NULL);
  hakd_st_close(f);
}

TEST(read_errors_name_the_tensor) {
  float values[4] = {1, 2, 3, 4};
  int64_t ids[2] = {5, 6}, shape4[1] = {4}, shape2[1] = {2};
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_OK(hakd_st_writer_add(w, "head.bias", HAKD_ST_F32, 1, shape4, values));
  ASSERT_OK(hakd_st_writer_add(w, "ids", HAKD_ST_I64, 1, shape2, ids));
  const char *path = tmp_path("errors.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_writer_free(w);
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(path, &f));
  float out[4];
  int64_t out_i[4];
  ASSERT_EQ_INT(hakd_st_read_f32(f, "head.weight", out, 4), HAKD_ENOTFOUND);
  ASSERT_TRUE(strstr(hakd_error_message(), "'head.weight' not found") != NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "errors.safetensors") != NULL);
  ASSERT_EQ_INT(hakd_st_read_f32(f, "head.bias", out, 3), HAKD_ESHAPE);
  ASSERT_TRUE(strstr(hakd_error_message(), "'head.bias' has shape (4,)") != NULL);
  ASSERT_EQ_INT(hakd_st_read_f32(f, "ids", out, 2), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "'ids' has dtype I64") != NULL);
  ASSERT_EQ_INT(hakd_st_read_i64(f, "head.bias", out_i, 4), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "'head.bias' has dtype F32") != NULL);
  hakd_st_close(f);
  hakd_st_file *missing = (hakd_st_file *)1;
  ASSERT_EQ_INT(hakd_st_open(tmp_path("absent.safetensors"), &missing), HAKD_ENOTFOUND);
  ASSERT_TRUE(missing == NULL);
  ASSERT_TRUE(strstr(hakd_error_message(), "absent.safetensors") != NULL);
}

TEST(writer_failure_keeps_previous_file) {
  float v[2] = {7, 8};
  int64_t shape[1] = {2};
  const char *path = tmp_path("keep.safetensors");
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_OK(hakd_st_writer_add(w, "v", HAKD_ST_F32, 1, shape, v));
  ASSERT_OK(hakd_st_writer_write(w, path));
  /* Overwriting works and replaces the content. */
  v[0] = 9;
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_file *f;
  float got[2];
  ASSERT_OK(hakd_st_open(path, &f));
  ASSERT_OK(hakd_st_read_f32(f, "v", got, 2));
  ASSERT_TRUE(got[0] == 9);
  hakd_st_close(f);
  /* Renaming onto a non-empty directory fails after the temporary file was written: the
   * temporary is removed and the directory stays. */
  char dir[1024], inner[1100];
  snprintf(dir, sizeof dir, "%s/occupied", test_tmpdir());
  ASSERT_EQ_INT(mkdir(dir, 0700), 0);
  snprintf(inner, sizeof inner, "%s/x", dir);
  write_raw(inner, 0, "", NULL, 0);
  ASSERT_EQ_INT(hakd_st_writer_write(w, dir), HAKD_EIO);
  ASSERT_TRUE(strstr(hakd_error_message(), "occupied") != NULL);
  ASSERT_EQ_INT(count_temp_files(test_tmpdir()), 0);
  struct stat st;
  ASSERT_EQ_INT(stat(inner, &st), 0);
  /* A missing directory fails before anything is written. */
  snprintf(dir, sizeof dir, "%s/no/such/dir/out.safetensors", test_tmpdir());
  ASSERT_EQ_INT(hakd_st_writer_write(w, dir), HAKD_EIO);
  ASSERT_TRUE(strstr(hakd_error_message(), "out.safetensors") != NULL);
  /* The earlier good file is intact. */
  ASSERT_OK(hakd_st_open(path, &f));
  ASSERT_OK(hakd_st_read_f32(f, "v", got, 2));
  ASSERT_TRUE(got[0] == 9 && got[1] == 8);
  hakd_st_close(f);
  hakd_st_writer_free(w);
}

TEST(writer_rejects_bad_tensors) {
  int64_t negative[1] = {-1}, ok[1] = {1};
  float v = 1;
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_EQ_INT(hakd_st_writer_add(w, "n", HAKD_ST_F32, 1, negative, &v), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "'n'") != NULL);
  ASSERT_EQ_INT(hakd_st_writer_add(w, "__metadata__", HAKD_ST_F32, 1, ok, &v), HAKD_EINVAL);
  ASSERT_EQ_INT(hakd_st_writer_add(w, "", HAKD_ST_F32, 1, ok, &v), HAKD_EINVAL);
  ASSERT_EQ_INT(hakd_st_writer_add(w, "deep", HAKD_ST_F32, 9, ok, &v), HAKD_EINVAL);
  ASSERT_EQ_INT(hakd_st_writer_add(w, "bad\xff", HAKD_ST_F32, 1, ok, &v), HAKD_EINVAL);
  ASSERT_TRUE(strstr(hakd_error_message(), "not valid UTF-8") != NULL);
  ASSERT_EQ_INT(hakd_st_writer_metadata(w, "k", "\xc3("), HAKD_EINVAL);
  hakd_st_writer_free(w);
}

typedef struct {
  const char *label;
  const char *header;
  size_t data_len;
  int status;
  const char *message; /* substring the error must contain besides the file name */
} malformed_case;

TEST(malformed_headers) {
  static const malformed_case cases[] = {
      {"invalid_json", "{\"a\":{\"dtype\":\"F32\",}", 0, HAKD_EFORMAT, "invalid JSON at byte"},
      {"not_json", "hello", 0, HAKD_EFORMAT, "invalid JSON"},
      {"trailing_garbage", "{} x", 0, HAKD_EFORMAT, "trailing characters"},
      {"bad_escape", "{\"a\\q\":{}}", 0, HAKD_EFORMAT, "unknown escape"},
      {"lone_surrogate", "{\"\\ud800\":{}}", 0, HAKD_EFORMAT, "surrogate"},
      {"bad_utf8", "{\"\xff\":{}}", 0, HAKD_EFORMAT, "UTF-8"},
      {"control_char", "{\"a\nb\":{}}", 0, HAKD_EFORMAT, "control character"},
      {"root_array", "[1,2]", 0, HAKD_EFORMAT, "expected a JSON object"},
      {"offsets_out_of_range", "{\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}", 4, HAKD_EFORMAT,
       "tensor 'w': data_offsets [0, 8] outside the 4-byte data section"},
      {"begin_after_end", "{\"w\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[8,4]}}", 8, HAKD_EFORMAT,
       "tensor 'w': data_offsets [8, 4] has begin > end"},
      {"overlap",
       "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
       "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
       12, HAKD_EFORMAT, "tensor 'b' bytes [4, 12] overlap tensor 'a' bytes [0, 8]"},
      {"size_mismatch", "{\"conv.weight\":{\"dtype\":\"F32\",\"shape\":[3,3],\"data_offsets\":[0,100]}}", 100,
       HAKD_EFORMAT, "tensor 'conv.weight': data_offsets [0, 100] but dtype F32 x shape (3, 3) needs 36 bytes"},
      {"unknown_dtype", "{\"w\":{\"dtype\":\"F33\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, HAKD_EFORMAT,
       "tensor 'w': unknown dtype 'F33'"},
      {"unsupported_dtype", "{\"w\":{\"dtype\":\"U32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 4, HAKD_EUNSUPPORTED,
       "tensor 'w': dtype U32 is not supported"},
      {"duplicate_name",
       "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
       "\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}",
       2, HAKD_EFORMAT, "tensor 'w' appears twice"},
      {"negative_shape", "{\"w\":{\"dtype\":\"U8\",\"shape\":[-1],\"data_offsets\":[0,0]}}", 0, HAKD_EFORMAT,
       "tensor 'w': shape[0] is not a non-negative integer"},
      {"fractional_shape", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1.5],\"data_offsets\":[0,1]}}", 1, HAKD_EFORMAT,
       "tensor 'w': shape[0] is not a non-negative integer"},
      {"missing_field", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1]}}", 0, HAKD_EFORMAT,
       "tensor 'w': missing field 'data_offsets'"},
      {"unknown_field", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1],\"x\":1}}", 1, HAKD_EFORMAT,
       "tensor 'w': unknown field 'x'"},
      {"three_offsets", "{\"w\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1,2]}}", 2, HAKD_EFORMAT,
       "tensor 'w': data_offsets must be an array [begin, end]"},
      {"huge_shape", "{\"w\":{\"dtype\":\"F64\",\"shape\":[4294967296,4294967296],\"data_offsets\":[0,8]}}", 8,
       HAKD_EFORMAT, "tensor 'w': shape (4294967296, 4294967296) is too large"},
      {"metadata_not_string", "{\"__metadata__\":{\"epoch\":3}}", 0, HAKD_EFORMAT,
       "__metadata__ key 'epoch' is a number, expected a string"},
      {"metadata_not_object", "{\"__metadata__\":[]}", 0, HAKD_EFORMAT, "__metadata__ is an array, expected an object of strings"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    const malformed_case *c = &cases[i];
    char name[128];
    snprintf(name, sizeof name, "%s.safetensors", c->label);
    const char *path = tmp_path(name);
    write_header_and_zeros(path, c->header, c->data_len);
    hakd_st_file *f = NULL;
    int status = hakd_st_open(path, &f);
    if (status != c->status || !strstr(hakd_error_message(), name) || !strstr(hakd_error_message(), c->message)) {
      test_fail(__FILE__, __LINE__, "case %s: status %d (want %d), message \"%s\" (want \"%s\")", c->label, status,
                c->status, hakd_error_message(), c->message);
      hakd_st_close(f);
      return;
    }
    ASSERT_TRUE(f == NULL);
  }
}

TEST(truncated_files) {
  hakd_st_file *f = NULL;
  const char *path = tmp_path("short.safetensors");
  FILE *fp = fopen(path, "wb"); /* 5 bytes: not even the length prefix */
  ASSERT_TRUE(fp != NULL);
  fwrite("\x10\0\0\0\0", 1, 5, fp);
  fclose(fp);
  ASSERT_EQ_INT(hakd_st_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "short.safetensors: truncated") != NULL);

  path = tmp_path("long_header.safetensors");
  write_raw(path, 1000, "{}", NULL, 0);
  ASSERT_EQ_INT(hakd_st_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "long_header.safetensors: header length 1000 is larger") != NULL);

  path = tmp_path("huge_header.safetensors");
  write_raw(path, UINT64_MAX, "{}", NULL, 0);
  ASSERT_EQ_INT(hakd_st_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "huge_header.safetensors: header length") != NULL);

  /* A good file cut in the data section: offsets now point past the end. */
  float v[4] = {1, 2, 3, 4};
  int64_t shape[1] = {4};
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_OK(hakd_st_writer_add(w, "v", HAKD_ST_F32, 1, shape, v));
  path = tmp_path("cut.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, path));
  hakd_st_writer_free(w);
  struct stat st;
  ASSERT_EQ_INT(stat(path, &st), 0);
  ASSERT_EQ_INT(truncate(path, st.st_size - 3), 0);
  ASSERT_EQ_INT(hakd_st_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "cut.safetensors: tensor 'v': data_offsets [0, 16] outside") != NULL);
  /* Cut inside the header: the JSON is unterminated. */
  ASSERT_EQ_INT(truncate(path, 20), 0);
  ASSERT_EQ_INT(hakd_st_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "cut.safetensors") != NULL);
}

/* Raw little-endian 16-bit values as an F16 or BF16 tensor; returns floats read back. */
static int read_half_tensor(const char *file, const char *dtype, const uint16_t *bits, int n, float *out) {
  char header[256];
  snprintf(header, sizeof header, "{\"h\":{\"dtype\":\"%s\",\"shape\":[%d],\"data_offsets\":[0,%d]}}", dtype, n,
           2 * n);
  const char *path = tmp_path(file);
  write_raw(path, strlen(header), header, bits, 2 * (size_t)n);
  hakd_st_file *f;
  int status = hakd_st_open(path, &f);
  if (status) return status;
  status = hakd_st_read_f32(f, "h", out, n);
  hakd_st_close(f);
  return status;
}

TEST(f16_bf16_f64_conversion) {
  /* F16: 1, -2, smallest subnormal 2^-24, largest subnormal 1023 x 2^-24, max 65504, 1/3
   * rounded (0x3555 = 0.333251953125), -0, +inf, -inf, NaN. Every half value is exact in
   * float, so equality is exact. */
  const uint16_t f16[10] = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x7BFF, 0x3555, 0x8000, 0x7C00, 0xFC00, 0x7E00};
  const float f16_want[9] = {1.0f, -2.0f, 5.9604644775390625e-08f, 6.0975551605224609375e-05f, 65504.0f,
                             0.333251953125f, -0.0f, INFINITY, -INFINITY};
  float got[10];
  ASSERT_OK(read_half_tensor("f16.safetensors", "F16", f16, 10, got));
  for (int i = 0; i < 9; i++) ASSERT_TRUE(got[i] == f16_want[i]);
  ASSERT_TRUE(signbit(got[6]));
  ASSERT_TRUE(isnan(got[9]));

  /* BF16: 1, -3, pi rounded (0x4049 = 3.140625), a subnormal (0x0001 = 2^-133), inf, -inf, NaN. */
  const uint16_t bf16[7] = {0x3F80, 0xC040, 0x4049, 0x0001, 0x7F80, 0xFF80, 0x7FC0};
  const float bf16_want[6] = {1.0f, -3.0f, 3.140625f, ldexpf(1.0f, -133), INFINITY, -INFINITY};
  ASSERT_OK(read_half_tensor("bf16.safetensors", "BF16", bf16, 7, got));
  for (int i = 0; i < 6; i++) ASSERT_TRUE(got[i] == bf16_want[i]);
  ASSERT_TRUE(isnan(got[6]));

  /* F64 narrows with float rounding. */
  const double f64[3] = {0.1, -1e300, 1e-50};
  const char *header = "{\"d\":{\"dtype\":\"F64\",\"shape\":[3],\"data_offsets\":[0,24]}}";
  const char *path = tmp_path("f64.safetensors");
  write_raw(path, strlen(header), header, f64, sizeof f64);
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(path, &f));
  ASSERT_OK(hakd_st_read_f32(f, "d", got, 3));
  hakd_st_close(f);
  ASSERT_TRUE(got[0] == 0.1f);
  ASSERT_TRUE(isinf(got[1]) && got[1] < 0);
  ASSERT_TRUE(got[2] == 0.0f);
}

TEST(integer_widths) {
  const uint8_t raw[] = {0xFF, 0x7F, 0x00, 0x80, /* I16: 32767, -32768 */
                         0xFE, 0x05,             /* I8: -2, 5 */
                         0x00, 0x02};            /* BOOL: false, true (nonzero) */
  const char *header = "{\"s\":{\"dtype\":\"I16\",\"shape\":[2],\"data_offsets\":[0,4]},"
                       "\"b\":{\"dtype\":\"I8\",\"shape\":[2],\"data_offsets\":[4,6]},"
                       "\"z\":{\"dtype\":\"BOOL\",\"shape\":[2],\"data_offsets\":[6,8]}}";
  const char *path = tmp_path("ints.safetensors");
  write_raw(path, strlen(header), header, raw, sizeof raw);
  hakd_st_file *f;
  int64_t got[2];
  ASSERT_OK(hakd_st_open(path, &f));
  ASSERT_OK(hakd_st_read_i64(f, "s", got, 2));
  ASSERT_EQ_INT(got[0], 32767);
  ASSERT_EQ_INT(got[1], -32768);
  ASSERT_OK(hakd_st_read_i64(f, "b", got, 2));
  ASSERT_EQ_INT(got[0], -2);
  ASSERT_EQ_INT(got[1], 5);
  ASSERT_OK(hakd_st_read_i64(f, "z", got, 2));
  ASSERT_EQ_INT(got[0], 0);
  ASSERT_EQ_INT(got[1], 1);
  hakd_st_close(f);
}

/* tests/fixtures/io/torch_written.safetensors from tools/gen_io.py (fixturelib.save). */
TEST(reads_torch_written_file) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("io/torch_written.safetensors"), &f));
  ASSERT_EQ_INT(hakd_st_count(f), 6);
  ASSERT_TRUE(hakd_st_metadata(f, "format") && strcmp(hakd_st_metadata(f, "format"), "pt") == 0);
  ASSERT_TRUE(hakd_st_metadata(f, "source") && strcmp(hakd_st_metadata(f, "source"), "gen_io.py \"torch\" \xc3\xa9") == 0);

  /* weight = arange(24).reshape(2, 3, 4) * 0.25 - 3: exact in float. */
  const hakd_st_tensor *t = hakd_st_find(f, "layer.weight");
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->dtype, HAKD_ST_F32);
  ASSERT_EQ_INT(t->ndim, 3);
  ASSERT_EQ_INT(t->shape[0], 2);
  ASSERT_EQ_INT(t->shape[1], 3);
  ASSERT_EQ_INT(t->shape[2], 4);
  float w[24];
  ASSERT_OK(hakd_st_read_f32(f, "layer.weight", w, 24));
  for (int i = 0; i < 24; i++) ASSERT_TRUE(w[i] == i * 0.25f - 3.0f);

  /* index = [-5, 0, 2**40 + 7]. */
  int64_t idx[3];
  ASSERT_OK(hakd_st_read_i64(f, "index", idx, 3));
  ASSERT_EQ_INT(idx[0], -5);
  ASSERT_EQ_INT(idx[1], 0);
  ASSERT_EQ_INT(idx[2], ((int64_t)1 << 40) + 7);

  /* pixels = arange(6, dtype=uint8) * 50 as (2, 3). */
  int64_t px[6];
  ASSERT_OK(hakd_st_read_i64(f, "pixels", px, 6));
  for (int i = 0; i < 6; i++) ASSERT_EQ_INT(px[i], i * 50);

  /* counts int32 [-2147483648, 1, 2147483647]. */
  int64_t counts[3];
  ASSERT_OK(hakd_st_read_i64(f, "counts", counts, 3));
  ASSERT_EQ_INT(counts[0], INT32_MIN);
  ASSERT_EQ_INT(counts[1], 1);
  ASSERT_EQ_INT(counts[2], INT32_MAX);

  /* precise float64 [1/3, -1e-3]: narrowed to float. */
  float precise[2];
  ASSERT_OK(hakd_st_read_f32(f, "precise", precise, 2));
  ASSERT_TRUE(precise[0] == (float)(1.0 / 3.0));
  ASSERT_TRUE(precise[1] == (float)-1e-3);

  t = hakd_st_find(f, "empty");
  ASSERT_TRUE(t != NULL);
  ASSERT_EQ_INT(t->nbytes, 0);
  ASSERT_EQ_INT(t->shape[0], 0);
  ASSERT_EQ_INT(t->shape[1], 3);
  hakd_st_close(f);
}

/* tests/fixtures/io/torch_half.safetensors: random F16 and BF16 tensors with their float32
 * conversions done by torch (.float()), which must match ours exactly (widening is exact). */
TEST(half_conversion_matches_torch) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("io/torch_half.safetensors"), &f));
  const char *pairs[2][2] = {{"half", "half_as_f32"}, {"bhalf", "bhalf_as_f32"}};
  for (int p = 0; p < 2; p++) {
    const hakd_st_tensor *t = hakd_st_find(f, pairs[p][0]);
    ASSERT_TRUE(t != NULL);
    ASSERT_EQ_INT(t->dtype, p == 0 ? HAKD_ST_F16 : HAKD_ST_BF16);
    int64_t n = (int64_t)(t->nbytes / 2);
    ASSERT_EQ_INT(n, 64);
    float got[64], want[64];
    ASSERT_OK(hakd_st_read_f32(f, pairs[p][0], got, n));
    ASSERT_OK(hakd_st_read_f32(f, pairs[p][1], want, n));
    for (int64_t i = 0; i < n; i++) {
      if (isnan(want[i])) {
        ASSERT_TRUE(isnan(got[i]));
      } else if (got[i] != want[i]) {
        test_fail(__FILE__, __LINE__, "%s[%lld]: %.9g != torch %.9g", pairs[p][0], (long long)i, got[i], want[i]);
        return;
      }
    }
  }
  hakd_st_close(f);
}

/* The JSON layer directly: escapes decode to UTF-8, numbers keep exact 64-bit integers, and
 * the grammar is strict. */
TEST(json_parser) {
  const char *text = "{\"a\\u00e9\\ud83d\\ude00\\/\": [\"x\\n\\t\", 9007199254740993, -0, 1e2, 1.5, true, null],"
                     " \"big\": 18446744073709551616}";
  hakd__json v;
  ASSERT_OK(hakd__json_parse(text, strlen(text), "test", &v));
  ASSERT_EQ_INT(v.type, HAKD__JSON_OBJECT);
  ASSERT_EQ_INT(v.count, 2);
  ASSERT_TRUE(strcmp(v.keys[0], "a\xc3\xa9\xf0\x9f\x98\x80/") == 0);
  const hakd__json *arr = &v.items[0];
  ASSERT_EQ_INT(arr->count, 7);
  ASSERT_TRUE(strcmp(arr->items[0].string, "x\n\t") == 0);
  ASSERT_TRUE(arr->items[1].is_int);
  ASSERT_EQ_INT(arr->items[1].integer, 9007199254740993LL); /* not representable as a double */
  ASSERT_TRUE(arr->items[2].is_int && arr->items[2].integer == 0);
  ASSERT_TRUE(!arr->items[3].is_int && arr->items[3].number == 100.0);
  ASSERT_TRUE(!arr->items[4].is_int && arr->items[4].number == 1.5);
  ASSERT_EQ_INT(arr->items[5].type, HAKD__JSON_BOOL);
  ASSERT_EQ_INT(arr->items[6].type, HAKD__JSON_NULL);
  const hakd__json *big = hakd__json_get(&v, "big");
  ASSERT_TRUE(big != NULL && !big->is_int); /* beyond int64: only the double */
  hakd__json_free(&v);

  static const char *const invalid[] = {"01", "-", "1.", ".5", "1e", "+1", "[1,]", "{\"a\" 1}", "{\"a\":1,}", "[",
                                        "\"abc", "tru", "nul", "[1 2]", "{1:2}", "\"\\ud800x\"", "\"\\u12G4\"", ""};
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    int status = hakd__json_parse(invalid[i], strlen(invalid[i]), "case", &v);
    if (status != HAKD_EFORMAT || !strstr(hakd_error_message(), "case: invalid JSON")) {
      test_fail(__FILE__, __LINE__, "'%s' parsed with status %d (%s)", invalid[i], status, hakd_error_message());
      return;
    }
  }
  char deep[200];
  memset(deep, '[', sizeof deep);
  ASSERT_EQ_INT(hakd__json_parse(deep, sizeof deep, "deep", &v), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "nesting too deep") != NULL);
}

/* Random byte flips in a valid file: each open either succeeds or fails with a message that
 * names the file; never crashes or reads out of bounds (checked under ASan). */
TEST(mutated_files_never_crash) {
  float v[6] = {1, 2, 3, 4, 5, 6};
  int64_t shape[2] = {2, 3}, ids[2] = {4, 5}, ids_shape[1] = {2};
  hakd_st_writer *w = hakd_st_writer_new();
  ASSERT_OK(hakd_st_writer_add(w, "a.weight", HAKD_ST_F32, 2, shape, v));
  ASSERT_OK(hakd_st_writer_add(w, "b.ids", HAKD_ST_I64, 1, ids_shape, ids));
  ASSERT_OK(hakd_st_writer_metadata(w, "k", "v"));
  const char *good = tmp_path("good.safetensors");
  ASSERT_OK(hakd_st_writer_write(w, good));
  hakd_st_writer_free(w);
  FILE *fp = fopen(good, "rb");
  ASSERT_TRUE(fp != NULL);
  uint8_t original[512];
  size_t size = fread(original, 1, sizeof original, fp);
  fclose(fp);
  ASSERT_TRUE(size > 100 && size < sizeof original);
  uint32_t state = 2463534242u;
  int opened = 0;
  for (int iter = 0; iter < 400; iter++) {
    uint8_t bytes[512];
    memcpy(bytes, original, size);
    for (int k = 0; k < 1 + iter % 3; k++) { /* xorshift32 picks positions and values */
      state ^= state << 13;
      state ^= state >> 17;
      state ^= state << 5;
      bytes[state % size] = (uint8_t)(state >> 24);
    }
    size_t n = iter % 7 == 6 ? state % size : size; /* sometimes also cut the file */
    const char *path = tmp_path("mutant.safetensors");
    fp = fopen(path, "wb");
    ASSERT_TRUE(fp != NULL);
    fwrite(bytes, 1, n, fp);
    fclose(fp);
    hakd_st_file *f;
    int status = hakd_st_open(path, &f);
    if (status == 0) {
      opened++;
      for (int i = 0; i < hakd_st_count(f); i++) { /* reading every tensor stays in bounds */
        const hakd_st_tensor *t = hakd_st_get(f, i);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->shape[d];
        if (numel > 64) continue;
        float fbuf[64];
        int64_t ibuf[64];
        (void)hakd_st_read_f32(f, t->name, fbuf, numel);
        (void)hakd_st_read_i64(f, t->name, ibuf, numel);
      }
      hakd_st_close(f);
    } else if (status > 0 || !strstr(hakd_error_message(), "mutant.safetensors")) {
      test_fail(__FILE__, __LINE__, "iteration %d: status %d, message \"%s\"", iter, status, hakd_error_message());
      return;
    }
  }
  ASSERT_TRUE(opened > 0 && opened < 400); /* flips in the data section keep the file valid */
}
