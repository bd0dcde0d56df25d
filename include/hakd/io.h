/* File formats: safetensors, .npy, PNG/JPEG images. Every reader validates its input and
 * returns a negative hakd_status with a message naming the file and the problem. */
#ifndef HAKD_IO_H
#define HAKD_IO_H

#include <stddef.h>
#include <stdint.h>

#include "hakd/error.h"

/* ---- safetensors ---- */

typedef enum {
  HAKD_ST_F32, HAKD_ST_F16, HAKD_ST_BF16, HAKD_ST_F64, HAKD_ST_I64, HAKD_ST_I32, HAKD_ST_I16, HAKD_ST_I8,
  HAKD_ST_U8, HAKD_ST_BOOL
} hakd_st_dtype;

typedef struct {
  const char *name;
  hakd_st_dtype dtype;
  int ndim;
  int64_t shape[8];
  uint64_t offset, nbytes; /* inside the data section */
} hakd_st_tensor;

typedef struct hakd_st_file hakd_st_file;

/* Memory-maps and validates the whole header: JSON well-formed, known dtypes, offsets inside
 * the file, no overlap, nbytes == dtype size x shape. */
int hakd_st_open(const char *path, hakd_st_file **out);
void hakd_st_close(hakd_st_file *f);
int hakd_st_count(const hakd_st_file *f);
const hakd_st_tensor *hakd_st_get(const hakd_st_file *f, int i);
/* NULL when absent (no error set). */
const hakd_st_tensor *hakd_st_find(const hakd_st_file *f, const char *name);
/* Value of a __metadata__ string entry, or NULL. */
const char *hakd_st_metadata(const hakd_st_file *f, const char *key);
/* Copies tensor `name` converted to float32 (F32/F16/BF16/F64) into dst of exactly n elements;
 * errors name the tensor when missing, of another size, or non-float. */
int hakd_st_read_f32(const hakd_st_file *f, const char *name, float *dst, int64_t n);
/* Integer tensors (I64/I32/I16/I8/U8/BOOL) into int64. */
int hakd_st_read_i64(const hakd_st_file *f, const char *name, int64_t *dst, int64_t n);
const char *hakd_st_path(const hakd_st_file *f);
/* The tensor's raw little-endian bytes (t->nbytes of them), valid until hakd_st_close. */
const void *hakd_st_data(const hakd_st_file *f, const hakd_st_tensor *t);

/* Writer: add tensors (data copied or borrowed until write), then write atomically
 * (temporary file in the same directory, fsync, rename). */
typedef struct hakd_st_writer hakd_st_writer;
hakd_st_writer *hakd_st_writer_new(void);
/* Borrows data (little-endian, of any hakd_st_dtype) until hakd_st_writer_write returns. */
int hakd_st_writer_add(hakd_st_writer *w, const char *name, hakd_st_dtype dtype, int ndim, const int64_t *shape,
                       const void *data);
int hakd_st_writer_metadata(hakd_st_writer *w, const char *key, const char *value);
int hakd_st_writer_write(hakd_st_writer *w, const char *path);
void hakd_st_writer_free(hakd_st_writer *w);

/* ---- PyTorch checkpoints (.pth, .pt) and weights files ---- */

/* Reads the state_dict of a torch.save zip checkpoint (torch >= 1.6) into a tensor file read
 * with the hakd_st_* accessors above (views and shared storages copied out contiguous). The
 * pickle is read by a restricted reader that never runs code: only dicts/OrderedDicts, tensors
 * (_rebuild_tensor_v2, _rebuild_parameter), typed storages, tuples, lists, numbers, strings,
 * bools and None are accepted; any other global is refused by name. The state_dict is the
 * top-level dict or the one under "state_dict", "model", "net" or "model_state_dict". The
 * legacy pre-1.6 formats and TorchScript archives are refused with how to re-save. */
int hakd_pth_open(const char *path, hakd_st_file **out);
/* A weights file of either format, told apart by content: a PyTorch checkpoint (zip, or a
 * legacy torch.save file, refused) or safetensors. */
int hakd_weights_open(const char *path, hakd_st_file **out);

/* ---- .npy (format 1.0 / 2.0, little-endian, C order) ---- */

typedef enum { HAKD_NPY_F32, HAKD_NPY_F64, HAKD_NPY_I32, HAKD_NPY_I64, HAKD_NPY_U8, HAKD_NPY_BOOL } hakd_npy_dtype;

typedef struct {
  hakd_npy_dtype dtype;
  int ndim;
  int64_t shape[8];
  void *data; /* malloc'ed, numel x dtype size */
} hakd_npy;

int hakd_npy_read(const char *path, hakd_npy *out);
/* Converted copies (malloc'ed); any numeric dtype. */
int hakd_npy_to_f32(const hakd_npy *a, float **out);
int hakd_npy_to_i32(const hakd_npy *a, int32_t **out);
int64_t hakd_npy_numel(const hakd_npy *a);
/* "float32", "int32", ... (numpy's names, for messages). */
const char *hakd_npy_dtype_name(hakd_npy_dtype dtype);
void hakd_npy_free(hakd_npy *a);
/* Writes atomically (temporary file + rename). */
int hakd_npy_write(const char *path, hakd_npy_dtype dtype, int ndim, const int64_t *shape, const void *data);

/* ---- images ---- */

/* An 8-bit image, interleaved (H, W, C), C in {1, 3, 4}. */
typedef struct {
  int width, height, channels;
  uint8_t *pixels; /* malloc'ed */
} hakd_image;

/* PNG (8/16-bit gray, gray+alpha, RGB, RGBA, palette) or JPEG, chosen by content. Colour
 * images become RGB (3 channels; alpha dropped); gray stays 1 channel; 16-bit is scaled to 8. */
int hakd_image_read(const char *path, hakd_image *out);
/* A label map: PNG whose stored values are the labels. A palette PNG keeps its indices (never
 * expanded to colours); an 8-bit gray PNG its gray values; 16-bit gray values are kept as is.
 * out is (H, W) int32, malloc'ed. An RGB label image is an error naming the file. */
int hakd_label_read(const char *path, int *width, int *height, int32_t **out);
void hakd_image_free(hakd_image *img);
/* PNG writers, atomic. */
int hakd_png_write_rgb(const char *path, int width, int height, const uint8_t *rgb);
int hakd_png_write_gray(const char *path, int width, int height, const uint8_t *gray);
/* Indexed PNG with a palette of n_colors RGB triples (class-index masks that keep their values). */
int hakd_png_write_palette(const char *path, int width, int height, const uint8_t *indices, const uint8_t *palette,
                           int n_colors);

/* ---- output files ---- */

/* Checks, before a long computation, that `path` can be written: it is not a folder and its
 * folder exists and takes a new file (probed by creating and removing `<path>.tmp.<pid>`, which is
 * what the atomic writers create; root ignores permission bits, so only trying tells). Errors
 * name the path and the reason. */
int hakd_output_check(const char *path);
/* Writes size bytes atomically (temporary file in the same folder, fsync, rename): a failure
 * leaves no partial file and any previous file at path untouched. */
int hakd_file_write_atomic(const char *path, const void *data, size_t size);

#endif
