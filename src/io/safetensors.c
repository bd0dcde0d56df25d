/* safetensors: u64 little-endian header length, JSON header {name: {dtype, shape,
 * data_offsets}, "__metadata__": {str: str}}, then the raw little-endian data section.
 * The reader maps the file and validates every header field before handing out tensors. */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/io.h"
#include "io/fileio.h"
#include "io/json.h"
#include "io/st_internal.h"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors data is little-endian; this reader copies it as host order"
#endif

#define ST_MAX_NDIM 8
#define ST_METADATA_KEY "__metadata__"

typedef struct {
  const char *name;
  hakd_st_dtype dtype;
  size_t size; /* bytes per element */
} st_dtype_info;

static const st_dtype_info st_dtypes[] = {
    {"F32", HAKD_ST_F32, 4}, {"F16", HAKD_ST_F16, 2}, {"BF16", HAKD_ST_BF16, 2}, {"F64", HAKD_ST_F64, 8},
    {"I64", HAKD_ST_I64, 8}, {"I32", HAKD_ST_I32, 4}, {"I16", HAKD_ST_I16, 2},   {"I8", HAKD_ST_I8, 1},
    {"U8", HAKD_ST_U8, 1},   {"BOOL", HAKD_ST_BOOL, 1},
};
#define ST_N_DTYPES (sizeof st_dtypes / sizeof st_dtypes[0])

/* Dtypes the format defines that this reader does not convert (a clearer error than "unknown"). */
static const char *const st_unsupported_dtypes[] = {"U16", "U32", "U64", "F8_E4M3", "F8_E5M2", "F8_E8M0",
                                                    "F6_E2M3", "F6_E3M2", "F4", "C64"};

static const st_dtype_info *dtype_by_name(const char *name) {
  for (size_t i = 0; i < ST_N_DTYPES; i++)
    if (strcmp(st_dtypes[i].name, name) == 0) return &st_dtypes[i];
  return NULL;
}

static const st_dtype_info *dtype_by_enum(hakd_st_dtype dtype) {
  for (size_t i = 0; i < ST_N_DTYPES; i++)
    if (st_dtypes[i].dtype == dtype) return &st_dtypes[i];
  return NULL;
}

struct hakd_st_file {
  char *path;
  void *map;
  size_t map_size;
  const uint8_t *data; /* start of the data section inside map */
  uint64_t data_size;
  hakd__json header;   /* owns the tensor names and metadata strings */
  int n_tensors;
  hakd_st_tensor *tensors; /* header order */
  const hakd_st_tensor **by_name; /* the tensors sorted by name, for lookups */
  const hakd__json *metadata;
  /* built in memory by another reader (hakd__st_adopt): owned data block and names */
  uint8_t *owned_data;
  char **owned_names;
};

/* "(3, 3)", "(3,)" or "()" like Python prints shapes. */
static void format_shape(char *buf, size_t size, int ndim, const int64_t *shape) {
  size_t used = (size_t)snprintf(buf, size, "(");
  for (int d = 0; d < ndim && used < size; d++)
    used += (size_t)snprintf(buf + used, size - used, "%s%lld", d ? ", " : "", (long long)shape[d]);
  if (used < size) snprintf(buf + used, size - used, ndim == 1 ? ",)" : ")");
}

static int compare_names(const void *a, const void *b) {
  return strcmp((*(const hakd_st_tensor *const *)a)->name, (*(const hakd_st_tensor *const *)b)->name);
}

static int compare_offsets(const void *a, const void *b) {
  const hakd_st_tensor *x = *(const hakd_st_tensor *const *)a, *y = *(const hakd_st_tensor *const *)b;
  if (x->offset != y->offset) return x->offset < y->offset ? -1 : 1;
  return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int parse_metadata(hakd_st_file *f, const hakd__json *meta) {
  if (meta->type != HAKD__JSON_OBJECT)
    return hakd_error(HAKD_EFORMAT, "%s: __metadata__ is %s, expected an object of strings", f->path,
                      hakd__json_type_name(meta->type));
  for (size_t i = 0; i < meta->count; i++) {
    if (meta->items[i].type != HAKD__JSON_STRING)
      return hakd_error(HAKD_EFORMAT, "%s: __metadata__ key '%s' is %s, expected a string", f->path, meta->keys[i],
                        hakd__json_type_name(meta->items[i].type));
    for (size_t j = 0; j < i; j++)
      if (strcmp(meta->keys[i], meta->keys[j]) == 0)
        return hakd_error(HAKD_EFORMAT, "%s: __metadata__ key '%s' appears twice", f->path, meta->keys[i]);
  }
  f->metadata = meta;
  return 0;
}

static int parse_tensor_entry(hakd_st_file *f, const char *name, const hakd__json *entry, hakd_st_tensor *t) {
  const char *path = f->path;
  if (entry->type != HAKD__JSON_OBJECT)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': entry is %s, expected an object", path, name,
                      hakd__json_type_name(entry->type));
  const hakd__json *dtype = NULL, *shape = NULL, *offsets = NULL;
  for (size_t i = 0; i < entry->count; i++) {
    const hakd__json **slot = strcmp(entry->keys[i], "dtype") == 0          ? &dtype
                              : strcmp(entry->keys[i], "shape") == 0        ? &shape
                              : strcmp(entry->keys[i], "data_offsets") == 0 ? &offsets
                                                                            : NULL;
    if (!slot) return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': unknown field '%s'", path, name, entry->keys[i]);
    if (*slot) return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': field '%s' appears twice", path, name, entry->keys[i]);
    *slot = &entry->items[i];
  }
  if (!dtype || !shape || !offsets)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': missing field '%s'", path, name,
                      !dtype ? "dtype" : !shape ? "shape" : "data_offsets");

  if (dtype->type != HAKD__JSON_STRING)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': dtype is %s, expected a string", path, name,
                      hakd__json_type_name(dtype->type));
  const st_dtype_info *info = dtype_by_name(dtype->string);
  if (!info) {
    for (size_t i = 0; i < sizeof st_unsupported_dtypes / sizeof st_unsupported_dtypes[0]; i++)
      if (strcmp(dtype->string, st_unsupported_dtypes[i]) == 0)
        return hakd_error(HAKD_EUNSUPPORTED, "%s: tensor '%s': dtype %s is not supported", path, name, dtype->string);
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': unknown dtype '%s'", path, name, dtype->string);
  }
  t->name = name;
  t->dtype = info->dtype;

  if (shape->type != HAKD__JSON_ARRAY)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': shape is %s, expected an array", path, name,
                      hakd__json_type_name(shape->type));
  if (shape->count > ST_MAX_NDIM)
    return hakd_error(HAKD_EUNSUPPORTED, "%s: tensor '%s': %zu dimensions, at most %d supported", path, name,
                      shape->count, ST_MAX_NDIM);
  t->ndim = (int)shape->count;
  uint64_t needed = info->size;
  int overflow = 0;
  for (int d = 0; d < t->ndim; d++) {
    const hakd__json *dim = &shape->items[d];
    if (dim->type != HAKD__JSON_NUMBER || !dim->is_int || dim->integer < 0)
      return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': shape[%d] is not a non-negative integer", path, name, d);
    t->shape[d] = dim->integer;
    if (dim->integer != 0 && needed > UINT64_MAX / (uint64_t)dim->integer) overflow = 1;
    else needed *= (uint64_t)dim->integer;
  }
  char shape_text[160];
  format_shape(shape_text, sizeof shape_text, t->ndim, t->shape);
  if (needed == 0) overflow = 0; /* a zero dimension empties the tensor whatever the others are */
  if (overflow)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': shape %s is too large", path, name, shape_text);

  if (offsets->type != HAKD__JSON_ARRAY || offsets->count != 2)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': data_offsets must be an array [begin, end]", path, name);
  for (int k = 0; k < 2; k++)
    if (offsets->items[k].type != HAKD__JSON_NUMBER || !offsets->items[k].is_int || offsets->items[k].integer < 0)
      return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': data_offsets[%d] is not a non-negative integer", path, name, k);
  uint64_t begin = (uint64_t)offsets->items[0].integer, end = (uint64_t)offsets->items[1].integer;
  if (begin > end)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] has begin > end", path, name,
                      (unsigned long long)begin, (unsigned long long)end);
  if (end > f->data_size)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] outside the %llu-byte data section",
                      path, name, (unsigned long long)begin, (unsigned long long)end,
                      (unsigned long long)f->data_size);
  if (end - begin != needed)
    return hakd_error(HAKD_EFORMAT, "%s: tensor '%s': data_offsets [%llu, %llu] but dtype %s x shape %s needs %llu bytes",
                      path, name, (unsigned long long)begin, (unsigned long long)end, info->name, shape_text,
                      (unsigned long long)needed);
  t->offset = begin;
  t->nbytes = end - begin;
  return 0;
}

static int check_no_overlap(hakd_st_file *f) {
  if (f->n_tensors < 2) return 0;
  const hakd_st_tensor **sorted = malloc((size_t)f->n_tensors * sizeof *sorted);
  if (!sorted) return hakd_error(HAKD_ENOMEM, "%s: out of memory", f->path);
  for (int i = 0; i < f->n_tensors; i++) sorted[i] = &f->tensors[i];
  qsort(sorted, (size_t)f->n_tensors, sizeof *sorted, compare_offsets);
  const hakd_st_tensor *previous = NULL; /* the non-empty tensor reaching furthest so far */
  int status = 0;
  for (int i = 0; i < f->n_tensors && !status; i++) {
    const hakd_st_tensor *t = sorted[i];
    if (t->nbytes == 0) continue; /* an empty tensor occupies no bytes */
    if (previous && t->offset < previous->offset + previous->nbytes)
      status = hakd_error(HAKD_EFORMAT, "%s: tensor '%s' bytes [%llu, %llu] overlap tensor '%s' bytes [%llu, %llu]",
                          f->path, t->name, (unsigned long long)t->offset,
                          (unsigned long long)(t->offset + t->nbytes), previous->name,
                          (unsigned long long)previous->offset,
                          (unsigned long long)(previous->offset + previous->nbytes));
    if (!previous || t->offset + t->nbytes > previous->offset + previous->nbytes) previous = t;
  }
  free(sorted);
  return status;
}

static int parse_header(hakd_st_file *f, const char *header_text, size_t header_len) {
  int status = hakd__json_parse(header_text, header_len, f->path, &f->header);
  if (status) return status;
  const hakd__json *root = &f->header;
  if (root->type != HAKD__JSON_OBJECT)
    return hakd_error(HAKD_EFORMAT, "%s: header is %s, expected a JSON object", f->path,
                      hakd__json_type_name(root->type));
  if (root->count > (size_t)INT32_MAX) return hakd_error(HAKD_EFORMAT, "%s: too many tensors", f->path);
  f->tensors = calloc(root->count ? root->count : 1, sizeof *f->tensors);
  f->by_name = calloc(root->count ? root->count : 1, sizeof *f->by_name);
  if (!f->tensors || !f->by_name) return hakd_error(HAKD_ENOMEM, "%s: out of memory", f->path);
  int metadata_seen = 0;
  for (size_t i = 0; i < root->count; i++) {
    const char *key = root->keys[i];
    if (strlen(key) != root->key_lens[i])
      return hakd_error(HAKD_EFORMAT, "%s: a tensor name contains a NUL character", f->path);
    if (strcmp(key, ST_METADATA_KEY) == 0) {
      if (metadata_seen) return hakd_error(HAKD_EFORMAT, "%s: __metadata__ appears twice", f->path);
      metadata_seen = 1;
      if ((status = parse_metadata(f, &root->items[i]))) return status;
      continue;
    }
    if ((status = parse_tensor_entry(f, key, &root->items[i], &f->tensors[f->n_tensors]))) return status;
    f->by_name[f->n_tensors] = &f->tensors[f->n_tensors];
    f->n_tensors++;
  }
  qsort(f->by_name, (size_t)f->n_tensors, sizeof *f->by_name, compare_names);
  for (int i = 1; i < f->n_tensors; i++)
    if (strcmp(f->by_name[i]->name, f->by_name[i - 1]->name) == 0)
      return hakd_error(HAKD_EFORMAT, "%s: tensor '%s' appears twice in the header", f->path,
                        f->by_name[i]->name);
  return check_no_overlap(f);
}

int hakd_st_open(const char *path, hakd_st_file **out) {
  *out = NULL;
  hakd_st_file *f = calloc(1, sizeof *f);
  if (!f || !(f->path = strdup(path))) {
    free(f);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  int status = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0) {
    status = hakd_error(errno == ENOENT ? HAKD_ENOTFOUND : HAKD_EIO, "%s: cannot open: %s", path, strerror(errno));
  } else if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    status = hakd_error(HAKD_EIO, "%s: not a regular file", path);
  } else if (st.st_size < 8) {
    status = hakd_error(HAKD_EFORMAT, "%s: truncated: %lld bytes, a safetensors file needs at least 8", path,
                        (long long)st.st_size);
  } else {
    f->map_size = (size_t)st.st_size;
    f->map = mmap(NULL, f->map_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (f->map == MAP_FAILED) {
      f->map = NULL;
      status = hakd_error(HAKD_EIO, "%s: cannot map: %s", path, strerror(errno));
    }
  }
  if (fd >= 0) close(fd);
  if (!status) {
    uint64_t header_len;
    memcpy(&header_len, f->map, sizeof header_len);
    uint64_t available = (uint64_t)f->map_size - 8;
    if (header_len > available) {
      status = hakd_error(HAKD_EFORMAT, "%s: header length %llu is larger than the %llu bytes after it (truncated?)",
                          path, (unsigned long long)header_len, (unsigned long long)available);
    } else {
      f->data = (const uint8_t *)f->map + 8 + header_len;
      f->data_size = available - header_len;
      status = parse_header(f, (const char *)f->map + 8, (size_t)header_len);
    }
  }
  if (status) {
    hakd_st_close(f);
    return status;
  }
  *out = f;
  return 0;
}

void hakd_st_close(hakd_st_file *f) {
  if (!f) return;
  if (f->map) munmap(f->map, f->map_size);
  if (f->owned_names)
    for (int i = 0; i < f->n_tensors; i++) free(f->owned_names[i]);
  free(f->owned_names);
  free(f->owned_data);
  hakd__json_free(&f->header);
  free(f->tensors);
  free(f->by_name);
  free(f->path);
  free(f);
}

int hakd__st_adopt(const char *path, hakd_st_tensor *tensors, int n, char **names, uint8_t *data, uint64_t size,
                   hakd_st_file **out) {
  *out = NULL;
  hakd_st_file *f = calloc(1, sizeof *f);
  if (f) f->path = strdup(path);
  if (f) {
    f->tensors = tensors;
    f->owned_names = names;
    f->n_tensors = n;
    f->owned_data = data;
    f->data = data;
    f->data_size = size;
    f->by_name = calloc((size_t)n + 1, sizeof *f->by_name);
  }
  if (!f || !f->path || !f->by_name) {
    if (f) hakd_st_close(f);
    else {
      for (int i = 0; i < n; i++) free(names[i]);
      free(names);
      free(tensors);
      free(data);
    }
    return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  for (int i = 0; i < n; i++) f->by_name[i] = &f->tensors[i];
  qsort(f->by_name, (size_t)n, sizeof *f->by_name, compare_names);
  for (int i = 1; i < n; i++)
    if (!strcmp(f->by_name[i]->name, f->by_name[i - 1]->name)) {
      int rc = hakd_error(HAKD_EFORMAT, "%s: tensor '%s' appears twice", path, f->by_name[i]->name);
      hakd_st_close(f);
      return rc;
    }
  *out = f;
  return 0;
}

int hakd_st_count(const hakd_st_file *f) { return f->n_tensors; }

const hakd_st_tensor *hakd_st_get(const hakd_st_file *f, int i) {
  return i >= 0 && i < f->n_tensors ? &f->tensors[i] : NULL;
}

const hakd_st_tensor *hakd_st_find(const hakd_st_file *f, const char *name) {
  int lo = 0, hi = f->n_tensors - 1;
  while (lo <= hi) {
    int mid = lo + (hi - lo) / 2;
    const hakd_st_tensor *t = f->by_name[mid];
    int c = strcmp(name, t->name);
    if (c == 0) return t;
    if (c < 0) hi = mid - 1;
    else lo = mid + 1;
  }
  return NULL;
}

const char *hakd_st_metadata(const hakd_st_file *f, const char *key) {
  const hakd__json *v = hakd__json_get(f->metadata, key);
  return v ? v->string : NULL;
}

const char *hakd_st_path(const hakd_st_file *f) { return f->path; }

const void *hakd_st_data(const hakd_st_file *f, const hakd_st_tensor *t) { return f->data + t->offset; }

static int64_t tensor_numel(const hakd_st_tensor *t) {
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->shape[d]; /* cannot overflow: nbytes was checked */
  return n;
}

/* Finds the tensor and checks it has exactly n elements. */
static int lookup_sized(const hakd_st_file *f, const char *name, int64_t n, const hakd_st_tensor **out) {
  const hakd_st_tensor *t = hakd_st_find(f, name);
  if (!t) return hakd_error(HAKD_ENOTFOUND, "%s: tensor '%s' not found", f->path, name);
  int64_t numel = tensor_numel(t);
  if (numel != n) {
    char shape_text[160];
    format_shape(shape_text, sizeof shape_text, t->ndim, t->shape);
    return hakd_error(HAKD_ESHAPE, "%s: tensor '%s' has shape %s (%lld elements), expected %lld elements", f->path,
                      name, shape_text, (long long)numel, (long long)n);
  }
  *out = t;
  return 0;
}

/* IEEE binary16 -> binary32, exact (every half value is a float value). */
static float half_to_float(uint16_t h) {
  uint32_t sign = (uint32_t)(h & 0x8000) << 16, exponent = (h >> 10) & 0x1F, mantissa = h & 0x3FF, bits;
  if (exponent == 0x1F) {
    bits = sign | 0x7F800000u | (mantissa << 13); /* inf or NaN, payload kept */
  } else if (exponent != 0) {
    bits = sign | ((exponent + 112) << 23) | (mantissa << 13); /* rebias 15 -> 127 */
  } else {
    float magnitude = ldexpf((float)mantissa, -24); /* subnormal or zero: mantissa x 2^-24 */
    memcpy(&bits, &magnitude, sizeof bits);
    bits |= sign;
  }
  float out;
  memcpy(&out, &bits, sizeof out);
  return out;
}

int hakd_st_read_f32(const hakd_st_file *f, const char *name, float *dst, int64_t n) {
  const hakd_st_tensor *t;
  int status = lookup_sized(f, name, n, &t);
  if (status || n == 0) return status;
  const uint8_t *src = f->data + t->offset;
  switch (t->dtype) {
    case HAKD_ST_F32: memcpy(dst, src, (size_t)n * sizeof(float)); return 0;
    case HAKD_ST_F64:
      for (int64_t i = 0; i < n; i++) {
        double v;
        memcpy(&v, src + 8 * i, sizeof v);
        dst[i] = (float)v;
      }
      return 0;
    case HAKD_ST_F16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        dst[i] = half_to_float(h);
      }
      return 0;
    case HAKD_ST_BF16:
      for (int64_t i = 0; i < n; i++) {
        uint16_t h;
        memcpy(&h, src + 2 * i, sizeof h);
        uint32_t bits = (uint32_t)h << 16; /* bfloat16 is the top half of a float */
        memcpy(&dst[i], &bits, sizeof bits);
      }
      return 0;
    default:
      return hakd_error(HAKD_EFORMAT, "%s: tensor '%s' has dtype %s, expected a float dtype (F32, F16, BF16, F64)",
                        f->path, name, dtype_by_enum(t->dtype)->name);
  }
}

int hakd_st_read_i64(const hakd_st_file *f, const char *name, int64_t *dst, int64_t n) {
  const hakd_st_tensor *t;
  int status = lookup_sized(f, name, n, &t);
  if (status || n == 0) return status;
  const uint8_t *src = f->data + t->offset;
  switch (t->dtype) {
    case HAKD_ST_I64: memcpy(dst, src, (size_t)n * sizeof(int64_t)); return 0;
    case HAKD_ST_I32:
      for (int64_t i = 0; i < n; i++) {
        int32_t v;
        memcpy(&v, src + 4 * i, sizeof v);
        dst[i] = v;
      }
      return 0;
    case HAKD_ST_I16:
      for (int64_t i = 0; i < n; i++) {
        int16_t v;
        memcpy(&v, src + 2 * i, sizeof v);
        dst[i] = v;
      }
      return 0;
    case HAKD_ST_I8:
      for (int64_t i = 0; i < n; i++) dst[i] = (int8_t)src[i];
      return 0;
    case HAKD_ST_U8:
      for (int64_t i = 0; i < n; i++) dst[i] = src[i];
      return 0;
    case HAKD_ST_BOOL:
      for (int64_t i = 0; i < n; i++) dst[i] = src[i] != 0;
      return 0;
    default:
      return hakd_error(HAKD_EFORMAT, "%s: tensor '%s' has dtype %s, expected an integer dtype", f->path, name,
                        dtype_by_enum(t->dtype)->name);
  }
}

/* ---- writer ---- */

typedef struct {
  char *name;
  const st_dtype_info *info;
  int ndim;
  int64_t shape[ST_MAX_NDIM];
  uint64_t nbytes;
  const void *data;
} st_pending_tensor;

typedef struct {
  char *key, *value;
} st_metadata_entry;

struct hakd_st_writer {
  st_pending_tensor *tensors;
  int n_tensors, tensor_cap;
  st_metadata_entry *metadata;
  int n_metadata, metadata_cap;
};

hakd_st_writer *hakd_st_writer_new(void) { return calloc(1, sizeof(hakd_st_writer)); }

void hakd_st_writer_free(hakd_st_writer *w) {
  if (!w) return;
  for (int i = 0; i < w->n_tensors; i++) free(w->tensors[i].name);
  for (int i = 0; i < w->n_metadata; i++) {
    free(w->metadata[i].key);
    free(w->metadata[i].value);
  }
  free(w->tensors);
  free(w->metadata);
  free(w);
}

int hakd_st_writer_add(hakd_st_writer *w, const char *name, hakd_st_dtype dtype, int ndim, const int64_t *shape,
                       const void *data) {
  const st_dtype_info *info = dtype_by_enum(dtype);
  if (!name || !name[0] || strcmp(name, ST_METADATA_KEY) == 0)
    return hakd_error(HAKD_EINVAL, "safetensors writer: invalid tensor name '%s'", name ? name : "(null)");
  if (!hakd__json_utf8_valid(name))
    return hakd_error(HAKD_EINVAL, "safetensors writer: tensor name '%s' is not valid UTF-8", name);
  if (!info) return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s': unknown dtype %d", name, (int)dtype);
  if (ndim < 0 || ndim > ST_MAX_NDIM)
    return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s': ndim %d outside [0, %d]", name, ndim, ST_MAX_NDIM);
  for (int i = 0; i < w->n_tensors; i++)
    if (strcmp(w->tensors[i].name, name) == 0)
      return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s' added twice", name);
  uint64_t nbytes = info->size;
  for (int d = 0; d < ndim; d++) {
    if (shape[d] < 0)
      return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s': shape[%d] = %lld is negative", name, d,
                        (long long)shape[d]);
    if (shape[d] != 0 && nbytes > UINT64_MAX / (uint64_t)shape[d])
      return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s': shape too large", name);
    nbytes *= (uint64_t)shape[d];
  }
  if (nbytes && !data) return hakd_error(HAKD_EINVAL, "safetensors writer: tensor '%s': NULL data", name);
  if (w->n_tensors == w->tensor_cap) {
    int cap = w->tensor_cap ? 2 * w->tensor_cap : 16;
    st_pending_tensor *grown = realloc(w->tensors, (size_t)cap * sizeof *grown);
    if (!grown) return hakd_error(HAKD_ENOMEM, "safetensors writer: out of memory");
    w->tensors = grown;
    w->tensor_cap = cap;
  }
  st_pending_tensor *t = &w->tensors[w->n_tensors];
  if (!(t->name = strdup(name))) return hakd_error(HAKD_ENOMEM, "safetensors writer: out of memory");
  t->info = info;
  t->ndim = ndim;
  for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
  t->nbytes = nbytes;
  t->data = data;
  w->n_tensors++;
  return 0;
}

int hakd_st_writer_metadata(hakd_st_writer *w, const char *key, const char *value) {
  if (!key || !value) return hakd_error(HAKD_EINVAL, "safetensors writer: NULL metadata key or value");
  if (!hakd__json_utf8_valid(key) || !hakd__json_utf8_valid(value))
    return hakd_error(HAKD_EINVAL, "safetensors writer: metadata '%s' is not valid UTF-8", key);
  for (int i = 0; i < w->n_metadata; i++) {
    if (strcmp(w->metadata[i].key, key) == 0) { /* a later value replaces the earlier one */
      char *copy = strdup(value);
      if (!copy) return hakd_error(HAKD_ENOMEM, "safetensors writer: out of memory");
      free(w->metadata[i].value);
      w->metadata[i].value = copy;
      return 0;
    }
  }
  if (w->n_metadata == w->metadata_cap) {
    int cap = w->metadata_cap ? 2 * w->metadata_cap : 8;
    st_metadata_entry *grown = realloc(w->metadata, (size_t)cap * sizeof *grown);
    if (!grown) return hakd_error(HAKD_ENOMEM, "safetensors writer: out of memory");
    w->metadata = grown;
    w->metadata_cap = cap;
  }
  st_metadata_entry *e = &w->metadata[w->n_metadata];
  e->key = strdup(key);
  e->value = strdup(value);
  if (!e->key || !e->value) {
    free(e->key);
    free(e->value);
    return hakd_error(HAKD_ENOMEM, "safetensors writer: out of memory");
  }
  w->n_metadata++;
  return 0;
}

typedef struct {
  char *data;
  size_t len, cap;
  int failed;
} text_buffer;

static void text_append(text_buffer *b, const char *s, size_t n) {
  if (b->failed) return;
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 256;
    while (b->len + n + 1 > cap) cap *= 2;
    char *grown = realloc(b->data, cap);
    if (!grown) {
      b->failed = 1;
      return;
    }
    b->data = grown;
    b->cap = cap;
  }
  memcpy(b->data + b->len, s, n);
  b->len += n;
  b->data[b->len] = '\0';
}

static void text_appendf(text_buffer *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void text_appendf(text_buffer *b, const char *fmt, ...) {
  char tmp[96];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(tmp, sizeof tmp, fmt, ap);
  va_end(ap);
  text_append(b, tmp, (size_t)n);
}

/* JSON string literal: quotes, backslashes and control characters escaped; other bytes as is. */
static void text_append_json_string(text_buffer *b, const char *s) {
  text_append(b, "\"", 1);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    char esc[8];
    if (*p == '"' || *p == '\\') {
      esc[0] = '\\';
      esc[1] = (char)*p;
      text_append(b, esc, 2);
    } else if (*p < 0x20) {
      snprintf(esc, sizeof esc, "\\u%04x", *p);
      text_append(b, esc, 6);
    } else {
      text_append(b, (const char *)p, 1);
    }
  }
  text_append(b, "\"", 1);
}

int hakd_st_writer_write(hakd_st_writer *w, const char *path) {
  text_buffer header = {0};
  text_append(&header, "{", 1);
  if (w->n_metadata) {
    text_append(&header, "\"" ST_METADATA_KEY "\":{", sizeof ST_METADATA_KEY + 3);
    for (int i = 0; i < w->n_metadata; i++) {
      if (i) text_append(&header, ",", 1);
      text_append_json_string(&header, w->metadata[i].key);
      text_append(&header, ":", 1);
      text_append_json_string(&header, w->metadata[i].value);
    }
    text_append(&header, "}", 1);
  }
  uint64_t offset = 0;
  for (int i = 0; i < w->n_tensors; i++) {
    const st_pending_tensor *t = &w->tensors[i];
    if (i || w->n_metadata) text_append(&header, ",", 1);
    text_append_json_string(&header, t->name);
    text_append(&header, ":{\"dtype\":\"", 11);
    text_append(&header, t->info->name, strlen(t->info->name));
    text_append(&header, "\",\"shape\":[", 11);
    for (int d = 0; d < t->ndim; d++) text_appendf(&header, "%s%lld", d ? "," : "", (long long)t->shape[d]);
    text_appendf(&header, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)offset,
                 (unsigned long long)(offset + t->nbytes));
    offset += t->nbytes;
  }
  text_append(&header, "}", 1);
  /* The reference implementation pads the header with spaces to a multiple of 8 bytes so
   * the data section starts aligned. */
  while (!header.failed && header.len % 8) text_append(&header, " ", 1);
  if (header.failed) {
    free(header.data);
    return hakd_error(HAKD_ENOMEM, "%s: out of memory building the header", path);
  }

  hakd__atomic_file af;
  int status = hakd__atomic_open(&af, path);
  if (status) {
    free(header.data);
    return status;
  }
  uint64_t header_len = header.len;
  int ok = fwrite(&header_len, sizeof header_len, 1, af.fp) == 1 && fwrite(header.data, 1, header.len, af.fp) == header.len;
  for (int i = 0; ok && i < w->n_tensors; i++)
    if (w->tensors[i].nbytes) ok = fwrite(w->tensors[i].data, 1, w->tensors[i].nbytes, af.fp) == w->tensors[i].nbytes;
  free(header.data);
  if (!ok) {
    status = hakd_error(HAKD_EIO, "%s: writing %s failed: %s", path, af.tmp_path, strerror(errno));
    hakd__atomic_abort(&af);
    return status;
  }
  return hakd__atomic_commit(&af);
}
