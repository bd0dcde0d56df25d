/* JPEG through the libjpeg API (libjpeg-turbo). libjpeg's default error handler calls
 * exit(); ours records the message and longjmps back, so a corrupt file is an error code. */
#include <setjmp.h>
#include <stdio.h> /* jpeglib.h needs FILE */
#include <stdlib.h>
#include <string.h>

#include <jerror.h>
#include <jpeglib.h>

#include "io/image_jpeg.h"

/* Larger decoded images are refused before allocating (a hostile header can claim 65535^2). */
#define JPEG_MAX_PIXELS ((uint64_t)1 << 28)
/* libjpeg's own working memory, apart from the decoded pixels. A baseline decode needs a few
 * MCU rows; a progressive one keeps every DCT coefficient of the image (2 bytes per pixel and
 * component before subsampling): an 857-byte progressive file claiming 16384x16384 made it
 * allocate and zero 1.5 GB, an out-of-memory crash under the fuzzer's 2 GB limit
 * (fuzz/corpus/jpeg/crash-oom-progressive-16k.jpg, a seed with its header edited by hand).
 * 512 MB still decodes progressive images up to about 130 MP (4:2:0). */
#define JPEG_MAX_WORK_BYTES (512L << 20)

typedef struct {
  struct jpeg_error_mgr base; /* first member: libjpeg hands back a pointer to it */
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX + 64];
  int too_large; /* the failure was JPEG_MAX_WORK_BYTES, not a corrupt stream */
} jpeg_error_handler;

typedef struct {
  struct jpeg_decompress_struct cinfo;
  jpeg_error_handler err;
  int created;
  uint8_t *pixels;
  int width, height, channels;
  int refusal_status;  /* set with refusal when the stream is valid but not decoded here */
  const char *refusal;
} jpeg_decode_job;

static void jpeg_error_exit(j_common_ptr cinfo) {
  jpeg_error_handler *err = (jpeg_error_handler *)cinfo->err;
  if (cinfo->err->msg_code == JERR_NO_BACKING_STORE) {
    /* What libjpeg says when JPEG_MAX_WORK_BYTES is exceeded ("Backing store not supported"). */
    j_decompress_ptr d = (j_decompress_ptr)cinfo;
    snprintf(err->message, sizeof err->message,
             "%s JPEG %ux%u needs more than %ld MB of decoder memory (hakd's limit)",
             d->progressive_mode ? "progressive" : "multi-scan", (unsigned)d->image_width, (unsigned)d->image_height,
             JPEG_MAX_WORK_BYTES >> 20);
    err->too_large = 1;
  } else {
    cinfo->err->format_message(cinfo, err->message);
  }
  longjmp(err->jump, 1);
}

/* libjpeg treats entropy-coded data that ends early as a warning and pads the rest of the
 * image with gray: at the end of the file (JWRN_JPEG_EOF) or at a marker inside it
 * (JWRN_HIT_MARKER: a Huffman-coded scan shorter than the image, e.g. a cut file with its EOI
 * or a header claiming a larger image than the data holds: a 768-byte file was "decoded"
 * as a 16384x16384 gray image, fuzz/corpus/jpeg/corrupt-premature-marker-16k.jpg). Both are
 * errors here. Other warnings (e.g.
 * extraneous bytes) are tolerated, silently. Arithmetic coding may legally end a scan early
 * (the decoder supplies zeros), so libjpeg does not warn there and neither do we. */
static void jpeg_emit_message(j_common_ptr cinfo, int level) {
  if (level < 0) {
    if (cinfo->err->msg_code == JWRN_JPEG_EOF || cinfo->err->msg_code == JWRN_HIT_MARKER) jpeg_error_exit(cinfo);
    cinfo->err->num_warnings++;
  }
}

static void jpeg_output_message(j_common_ptr cinfo) { (void)cinfo; }

/* Separate from hakd__jpeg_decode so that everything changed after setjmp lives in *job,
 * not in locals of the function that called setjmp. */
static int jpeg_decode_run(jpeg_decode_job *job, const uint8_t *data, size_t size) {
  struct jpeg_decompress_struct *cinfo = &job->cinfo;
  cinfo->err = jpeg_std_error(&job->err.base);
  job->err.base.error_exit = jpeg_error_exit;
  job->err.base.emit_message = jpeg_emit_message;
  job->err.base.output_message = jpeg_output_message;
  if (setjmp(job->err.jump)) return -1;
  jpeg_create_decompress(cinfo);
  job->created = 1;
  jpeg_mem_src(cinfo, data, (unsigned long)size);
  cinfo->mem->max_memory_to_use = JPEG_MAX_WORK_BYTES;
  jpeg_read_header(cinfo, TRUE);
  if (cinfo->jpeg_color_space == JCS_CMYK || cinfo->jpeg_color_space == JCS_YCCK) {
    job->refusal_status = HAKD_EUNSUPPORTED;
    job->refusal = "CMYK JPEG is not supported";
    return -1;
  }
  cinfo->out_color_space = cinfo->num_components == 1 ? JCS_GRAYSCALE : JCS_RGB;
  if ((uint64_t)cinfo->image_width * cinfo->image_height > JPEG_MAX_PIXELS) {
    job->refusal_status = HAKD_EUNSUPPORTED;
    job->refusal = "image too large";
    return -1;
  }
  jpeg_start_decompress(cinfo);
  job->width = (int)cinfo->output_width;
  job->height = (int)cinfo->output_height;
  job->channels = cinfo->output_components;
  size_t stride = (size_t)job->width * (size_t)job->channels;
  job->pixels = malloc(stride * (size_t)job->height);
  if (!job->pixels) {
    job->refusal_status = HAKD_ENOMEM;
    job->refusal = "out of memory decoding JPEG";
    return -1;
  }
  while (cinfo->output_scanline < cinfo->output_height) {
    JSAMPROW row = job->pixels + (size_t)cinfo->output_scanline * stride;
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  jpeg_finish_decompress(cinfo);
  return 0;
}

int hakd__jpeg_decode(const char *path, const uint8_t *data, size_t size, hakd_image *out) {
  memset(out, 0, sizeof *out);
  jpeg_decode_job *job = calloc(1, sizeof *job);
  if (!job) return hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  int status = 0;
  if (jpeg_decode_run(job, data, size) != 0) {
    if (job->refusal)
      status = hakd_error(job->refusal_status, "%s: %s", path, job->refusal);
    else if (job->err.too_large)
      status = hakd_error(HAKD_EUNSUPPORTED, "%s: %s", path, job->err.message);
    else
      status = hakd_error(HAKD_EFORMAT, "%s: corrupt JPEG: %s", path, job->err.message);
    free(job->pixels);
  } else {
    out->width = job->width;
    out->height = job->height;
    out->channels = job->channels;
    out->pixels = job->pixels;
  }
  if (job->created) jpeg_destroy_decompress(&job->cinfo);
  free(job);
  return status;
}
