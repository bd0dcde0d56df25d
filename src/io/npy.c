/* NumPy .npy: "\x93NUMPY", major, minor, header length (u16 in 1.0, u32 in 2.0/3.0), a Python
 * dict literal {'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), } padded with spaces
 * and a newline, then the raw array bytes in C order. */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "hakd/io.h"
#include "io/fileio.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error ".npy arrays are read as little-endian; this reader copies them as host order"
#endif

#define NPY_MAX_NDIM 8
#define NPY_MAGIC "\x93NUMPY"
#define NPY_MAGIC_LEN 6

typedef struct {
  const char *descr;
  hakd_npy_dtype dtype;
  size_t size;
} npy_dtype_info;

/* Single-byte types have no byte order; numpy writes '|' but '<' means the same. */
static const npy_dtype_info npy_dtypes[] = {
    {"<f4", HAKD_NPY_F32, 4}, {"<f8", HAKD_NPY_F64, 8}, {"<i4", HAKD_NPY_I32, 4}, {"<i8", HAKD_NPY_I64, 8},
    {"|u1", HAKD_NPY_U8, 1},  {"<u1", HAKD_NPY_U8, 1},  {"|b1", HAKD_NPY_BOOL, 1}, {"<b1", HAKD_NPY_BOOL, 1},
};

static const npy_dtype_info *dtype_by_descr(const char *descr) {
  for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
    if (strcmp(npy_dtypes[i].descr, descr) == 0) return &npy_dtypes[i];
  return NULL;
}

static const npy_dtype_info *dtype_by_enum(hakd_npy_dtype dtype) {
  for (size_t i = 0; i < sizeof npy_dtypes / sizeof npy_dtypes[0]; i++)
    if (npy_dtypes[i].dtype == dtype) return &npy_dtypes[i];
  return NULL;
}

/* ---- header dict parsing ---- */

typedef struct {
  const char *text;
  size_t len, pos;
  const char *path;
} header_parser;

static void skip_spaces(header_parser *p) {
  while (p->pos < p->len && (p->text[p->pos] == ' ' || p->text[p->pos] == '\t' || p->text[p->pos] == '\n' ||
                             p->text[p->pos] == '\r'))
    p->pos++;
}

static int accept(header_parser *p, char c) {
  skip_spaces(p);
  if (p->pos < p->len && p->text[p->pos] == c) {
    p->pos++;
    return 1;
  }
  return 0;
}

static int header_fail(header_parser *p, const char *problem) {
  return hakd_error(HAKD_EFORMAT, "%s: .npy header at byte %zu: %s (header: %.*s)", p->path, p->pos, problem,
                    (int)(p->len < 120 ? p->len : 120), p->text);
}

/* A quoted Python string without escapes, copied into buf. */
static int parse_quoted(header_parser *p, char *buf, size_t size) {
  skip_spaces(p);
  if (p->pos >= p->len || (p->text[p->pos] != '\'' && p->text[p->pos] != '"'))
    return header_fail(p, "expected a quoted string");
  char quote = p->text[p->pos++];
  size_t n = 0;
  while (p->pos < p->len && p->text[p->pos] != quote) {
    if (p->text[p->pos] == '\\') return header_fail(p, "escapes in strings are not supported");
    if (n + 1 >= size) return header_fail(p, "string too long");
    buf[n++] = p->text[p->pos++];
  }
  if (p->pos >= p->len) return header_fail(p, "unterminated string");
  p->pos++;
  buf[n] = '\0';
  return 0;
}

static int parse_bool(header_parser *p, int *out) {
  skip_spaces(p);
  if (p->len - p->pos >= 4 && memcmp(p->text + p->pos, "True", 4) == 0) {
    p->pos += 4;
    *out = 1;
    return 0;
  }
  if (p->len - p->pos >= 5 && memcmp(p->text + p->pos, "False", 5) == 0) {
    p->pos += 5;
    *out = 0;
    return 0;
  }
  return header_fail(p, "expected True or False");
}

/* A tuple of non-negative integers: "()", "(3,)", "(3, 4)", "(3, 4,)". "(3)" is an int in
 * Python, not a tuple, and is refused like numpy refuses it. */
static int parse_shape(header_parser *p, int *ndim, int64_t *shape) {
  if (!accept(p, '(')) return header_fail(p, "shape must be a tuple");
  int n = 0, trailing_comma = 0;
  while (!accept(p, ')')) {
    if (n > 0 && !trailing_comma) return header_fail(p, "expected ',' or ')' in shape");
    skip_spaces(p);
    if (p->pos >= p->len || p->text[p->pos] < '0' || p->text[p->pos] > '9')
      return header_fail(p, "shape entries must be non-negative integers");
    int64_t v = 0;
    while (p->pos < p->len && p->text[p->pos] >= '0' && p->text[p->pos] <= '9') {
      int digit = p->text[p->pos++] - '0';
      if (v > (INT64_MAX - digit) / 10) return header_fail(p, "shape entry too large");
      v = v * 10 + digit;
    }
    if (n == NPY_MAX_NDIM)
      return hakd_error(HAKD_EUNSUPPORTED, "%s: more than %d dimensions are not supported", p->path, NPY_MAX_NDIM);
    shape[n++] = v;
    trailing_comma = accept(p, ',');
  }
  if (n == 1 && !trailing_comma) return header_fail(p, "shape (n) without a comma is not a tuple");
  *ndim = n;
  return 0;
}

static int parse_header_dict(header_parser *p, hakd_npy *out, const npy_dtype_info **info) {
  char descr[32] = "";
  int fortran_order = 0, seen_descr = 0, seen_fortran = 0, seen_shape = 0, status;
  if (!accept(p, '{')) return header_fail(p, "expected '{'");
  while (!accept(p, '}')) {
    char key[32];
    if ((status = parse_quoted(p, key, sizeof key))) return status;
    if (!accept(p, ':')) return header_fail(p, "expected ':'");
    if (strcmp(key, "descr") == 0 && !seen_descr) {
      seen_descr = 1;
      skip_spaces(p);
      if (p->pos < p->len && p->text[p->pos] == '[')
        return hakd_error(HAKD_EUNSUPPORTED, "%s: structured dtypes are not supported", p->path);
      if ((status = parse_quoted(p, descr, sizeof descr))) return status;
    } else if (strcmp(key, "fortran_order") == 0 && !seen_fortran) {
      seen_fortran = 1;
      if ((status = parse_bool(p, &fortran_order))) return status;
    } else if (strcmp(key, "shape") == 0 && !seen_shape) {
      seen_shape = 1;
      if ((status = parse_shape(p, &out->ndim, out->shape))) return status;
    } else {
      return hakd_error(HAKD_EFORMAT, "%s: .npy header has an unknown or repeated key '%s'", p->path, key);
    }
    if (!accept(p, ',')) {
      if (!accept(p, '}')) return header_fail(p, "expected ',' or '}'");
      break;
    }
  }
  skip_spaces(p);
  if (p->pos != p->len) return header_fail(p, "trailing characters after the dict");
  if (!seen_descr || !seen_fortran || !seen_shape)
    return hakd_error(HAKD_EFORMAT, "%s: .npy header lacks '%s'", p->path,
                      !seen_descr ? "descr" : !seen_fortran ? "fortran_order" : "shape");
  if (fortran_order)
    return hakd_error(HAKD_EUNSUPPORTED, "%s: fortran_order True is not supported (save a C-contiguous array)", p->path);
  *info = dtype_by_descr(descr);
  if (!*info) {
    if (descr[0] == '>')
      return hakd_error(HAKD_EUNSUPPORTED, "%s: big-endian dtype '%s' is not supported", p->path, descr);
    return hakd_error(HAKD_EUNSUPPORTED, "%s: dtype '%s' is not supported (use <f4, <f8, <i4, <i8, |u1 or |b1)",
                      p->path, descr);
  }
  out->dtype = (*info)->dtype;
  return 0;
}

int64_t hakd_npy_numel(const hakd_npy *a) {
  int64_t n = 1;
  for (int d = 0; d < a->ndim; d++)
    if (a->shape[d] == 0) return 0; /* before multiplying: the other dimensions may be huge */
  for (int d = 0; d < a->ndim; d++) n *= a->shape[d];
  return n;
}

void hakd_npy_free(hakd_npy *a) {
  if (!a) return;
  free(a->data);
  memset(a, 0, sizeof *a);
}

int hakd_npy_read(const char *path, hakd_npy *out) {
  memset(out, 0, sizeof *out);
  uint8_t *file;
  size_t size;
  int status = hakd__read_file(path, &file, &size);
  if (status) return status;
  if (size < NPY_MAGIC_LEN + 2 || memcmp(file, NPY_MAGIC, NPY_MAGIC_LEN) != 0) {
    free(file);
    return hakd_error(HAKD_EFORMAT, "%s: not a .npy file (bad magic)", path);
  }
  int major = file[6], minor = file[7];
  size_t prefix_len, header_len;
  if (major == 1 && size >= 10) {
    prefix_len = 10;
    header_len = (size_t)file[8] | (size_t)file[9] << 8;
  } else if ((major == 2 || major == 3) && size >= 12) {
    prefix_len = 12;
    header_len = (size_t)file[8] | (size_t)file[9] << 8 | (size_t)file[10] << 16 | (size_t)file[11] << 24;
  } else if (major >= 1 && major <= 3) {
    free(file);
    return hakd_error(HAKD_EFORMAT, "%s: truncated .npy header", path);
  } else {
    free(file);
    return hakd_error(HAKD_EUNSUPPORTED, "%s: .npy format version %d.%d is not supported", path, major, minor);
  }
  if (header_len > size - prefix_len) {
    free(file);
    return hakd_error(HAKD_EFORMAT, "%s: truncated: header length %zu but only %zu bytes follow", path, header_len,
                      size - prefix_len);
  }
  header_parser p = {(const char *)file + prefix_len, header_len, 0, path};
  const npy_dtype_info *info = NULL;
  if ((status = parse_header_dict(&p, out, &info))) {
    free(file);
    memset(out, 0, sizeof *out);
    return status;
  }
  uint64_t data_bytes = info->size;
  for (int d = 0; d < out->ndim; d++) {
    if (out->shape[d] != 0 && data_bytes > UINT64_MAX / (uint64_t)out->shape[d]) data_bytes = UINT64_MAX;
    else data_bytes *= (uint64_t)out->shape[d];
  }
  size_t data_start = prefix_len + header_len, available = size - data_start;
  if (data_bytes > available) {
    free(file);
    memset(out, 0, sizeof *out);
    return hakd_error(HAKD_EFORMAT, "%s: truncated: the array needs %llu data bytes but only %zu follow the header",
                      path, (unsigned long long)data_bytes, available);
  }
  /* Reuse the file buffer: move the array to its front and shrink it. */
  memmove(file, file + data_start, (size_t)data_bytes);
  uint8_t *data = realloc(file, data_bytes ? (size_t)data_bytes : 1);
  out->data = data ? data : file;
  return 0;
}

int hakd_npy_to_f32(const hakd_npy *a, float **out) {
  int64_t n = hakd_npy_numel(a);
  float *dst = malloc(n ? (size_t)n * sizeof *dst : 1);
  if (!dst) return hakd_error(HAKD_ENOMEM, "npy: out of memory converting %lld elements", (long long)n);
  for (int64_t i = 0; i < n; i++) {
    switch (a->dtype) {
      case HAKD_NPY_F32: dst[i] = ((const float *)a->data)[i]; break;
      case HAKD_NPY_F64: dst[i] = (float)((const double *)a->data)[i]; break;
      case HAKD_NPY_I32: dst[i] = (float)((const int32_t *)a->data)[i]; break;
      case HAKD_NPY_I64: dst[i] = (float)((const int64_t *)a->data)[i]; break;
      case HAKD_NPY_U8: dst[i] = ((const uint8_t *)a->data)[i]; break;
      case HAKD_NPY_BOOL: dst[i] = ((const uint8_t *)a->data)[i] != 0; break;
    }
  }
  *out = dst;
  return 0;
}

int hakd_npy_to_i32(const hakd_npy *a, int32_t **out) {
  int64_t n = hakd_npy_numel(a);
  int32_t *dst = malloc(n ? (size_t)n * sizeof *dst : 1);
  if (!dst) return hakd_error(HAKD_ENOMEM, "npy: out of memory converting %lld elements", (long long)n);
  for (int64_t i = 0; i < n; i++) {
    double v = 0;
    switch (a->dtype) {
      case HAKD_NPY_F32: v = ((const float *)a->data)[i]; break;
      case HAKD_NPY_F64: v = ((const double *)a->data)[i]; break;
      case HAKD_NPY_I32: v = ((const int32_t *)a->data)[i]; break;
      case HAKD_NPY_I64: v = (double)((const int64_t *)a->data)[i]; break; /* exact near the int32 range */
      case HAKD_NPY_U8: v = ((const uint8_t *)a->data)[i]; break;
      case HAKD_NPY_BOOL: v = ((const uint8_t *)a->data)[i] != 0; break;
    }
    /* Values convert only when they are exact int32 values (labels, indices). */
    if (!(v >= INT32_MIN && v <= INT32_MAX) || v != floor(v)) {
      free(dst);
      return hakd_error(HAKD_ERANGE, "npy: element %lld = %.17g is not an int32 value", (long long)i, v);
    }
    dst[i] = (int32_t)v;
  }
  *out = dst;
  return 0;
}

int hakd_npy_write(const char *path, hakd_npy_dtype dtype, int ndim, const int64_t *shape, const void *data) {
  const npy_dtype_info *info = dtype_by_enum(dtype);
  if (!info) return hakd_error(HAKD_EINVAL, "%s: unknown npy dtype %d", path, (int)dtype);
  if (ndim < 0 || ndim > NPY_MAX_NDIM)
    return hakd_error(HAKD_EINVAL, "%s: ndim %d outside [0, %d]", path, ndim, NPY_MAX_NDIM);
  char dict[512];
  int len = snprintf(dict, sizeof dict, "{'descr': '%s', 'fortran_order': False, 'shape': (", info->descr);
  uint64_t data_bytes = info->size;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0) return hakd_error(HAKD_EINVAL, "%s: shape[%d] = %lld is negative", path, d, (long long)shape[d]);
    if (shape[d] != 0 && data_bytes > UINT64_MAX / (uint64_t)shape[d])
      return hakd_error(HAKD_EINVAL, "%s: shape too large", path);
    data_bytes *= (uint64_t)shape[d];
    len += snprintf(dict + len, sizeof dict - (size_t)len, "%s%lld", d ? ", " : "", (long long)shape[d]);
  }
  len += snprintf(dict + len, sizeof dict - (size_t)len, "%s), }", ndim == 1 ? "," : "");
  if (data_bytes && !data) return hakd_error(HAKD_EINVAL, "%s: NULL data", path);
  /* numpy pads magic + length + dict + '\n' with spaces to a multiple of 64 bytes; the dict
   * always fits format 1.0's 16-bit length here. */
  size_t prefix_len = NPY_MAGIC_LEN + 2 + 2, header_len = (size_t)len + 1;
  header_len += (64 - (prefix_len + header_len) % 64) % 64;
  uint8_t prefix[10] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0, (uint8_t)(header_len & 0xFF), (uint8_t)(header_len >> 8)};
  char header[640];
  memset(header, ' ', header_len);
  memcpy(header, dict, (size_t)len);
  header[header_len - 1] = '\n';

  hakd__atomic_file af;
  int status = hakd__atomic_open(&af, path);
  if (status) return status;
  int ok = fwrite(prefix, 1, sizeof prefix, af.fp) == sizeof prefix && fwrite(header, 1, header_len, af.fp) == header_len &&
           (data_bytes == 0 || fwrite(data, 1, (size_t)data_bytes, af.fp) == data_bytes);
  if (!ok) {
    status = hakd_error(HAKD_EIO, "%s: writing %s failed: %s", path, af.tmp_path, strerror(errno));
    hakd__atomic_abort(&af);
    return status;
  }
  return hakd__atomic_commit(&af);
}

const char *hakd_npy_dtype_name(hakd_npy_dtype dtype) {
  switch (dtype) {
    case HAKD_NPY_F32: return "float32";
    case HAKD_NPY_F64: return "float64";
    case HAKD_NPY_I32: return "int32";
    case HAKD_NPY_I64: return "int64";
    case HAKD_NPY_U8: return "uint8";
    case HAKD_NPY_BOOL: return "bool";
  }
  return "?";
}
