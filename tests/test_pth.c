/* PyTorch checkpoints read directly (src/io/pth.c, src/io/zip.c): fixtures written by Debian's
 * python3-torch (tools/gen_pth.py) for every storage dtype and strided / shared views, real
 * checkpoint layouts (DataParallel + {"state_dict"} nesting + aux head, mmseg SegFormer) against
 * PyTorch's logits, and every way a file can be wrong or hostile: a pickle calling os.system,
 * pickled modules, the legacy and TorchScript formats, out-of-range / huge / expanded views, lying
 * storages, damaged archives (each byte flipped, every truncation). */
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/ops.h"

static uint8_t *read_all(const char *path, size_t *n) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  long size = ftell(f);
  fseek(f, 0, SEEK_SET);
  uint8_t *b = malloc(size > 0 ? (size_t)size : 1);
  *n = b ? fread(b, 1, (size_t)size, f) : 0;
  fclose(f);
  return b;
}

static int write_all(const char *path, const uint8_t *b, size_t n) {
  FILE *f = fopen(path, "wb");
  if (!f) return -1;
  size_t w = fwrite(b, 1, n, f);
  return fclose(f) == 0 && w == n ? 0 : -1;
}

TEST(views_and_dtypes_match_torch) {
  hakd_st_file *f = NULL, *want = NULL;
  ASSERT_OK(hakd_pth_open(test_fixture_path("pth/views.pth"), &f));
  ASSERT_OK(hakd_st_open(test_fixture_path("pth/views_expected.safetensors"), &want));
  static const struct {
    const char *name;
    hakd_st_dtype dtype;
  } expect[] = {{"f32", HAKD_ST_F32},  {"f32_t", HAKD_ST_F32}, {"f32_slice", HAKD_ST_F32}, {"f32_perm", HAKD_ST_F32},
                {"f16", HAKD_ST_F16},  {"bf16", HAKD_ST_BF16}, {"f64", HAKD_ST_F64},       {"i64", HAKD_ST_I64},
                {"i32", HAKD_ST_I32},  {"i16", HAKD_ST_I16},   {"i8", HAKD_ST_I8},         {"u8", HAKD_ST_U8},
                {"bool", HAKD_ST_BOOL}, {"scalar", HAKD_ST_F32}, {"empty", HAKD_ST_F32},   {"param", HAKD_ST_F32}};
  int n = (int)(sizeof expect / sizeof expect[0]);
  ASSERT_EQ_INT(hakd_st_count(f), n);
  for (int i = 0; i < n; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i), *w = hakd_st_find(want, expect[i].name);
    ASSERT_TRUE(t != NULL && w != NULL);
    ASSERT_TRUE(!strcmp(t->name, expect[i].name)); /* file order kept */
    ASSERT_EQ_INT(t->dtype, expect[i].dtype);
    ASSERT_EQ_INT(t->ndim, w->ndim);
    int64_t numel = 1;
    for (int d = 0; d < t->ndim; d++) {
      ASSERT_EQ_INT(t->shape[d], w->shape[d]);
      numel *= t->shape[d];
    }
    int is_float = t->dtype == HAKD_ST_F32 || t->dtype == HAKD_ST_F16 || t->dtype == HAKD_ST_BF16 ||
                   t->dtype == HAKD_ST_F64;
    if (is_float) {
      float got[32], ref[32];
      ASSERT_TRUE(numel <= 32);
      ASSERT_OK(hakd_st_read_f32(f, t->name, got, numel));
      ASSERT_OK(hakd_st_read_f32(want, t->name, ref, numel));
      for (int64_t k = 0; k < numel; k++) ASSERT_TRUE(got[k] == ref[k]); /* exact: a copy, no arithmetic */
    } else {
      int64_t got[8], ref[8];
      ASSERT_TRUE(numel <= 8);
      ASSERT_OK(hakd_st_read_i64(f, t->name, got, numel));
      ASSERT_OK(hakd_st_read_i64(want, t->name, ref, numel));
      for (int64_t k = 0; k < numel; k++) ASSERT_EQ_INT(got[k], ref[k]);
    }
  }
  hakd_st_close(f);
  hakd_st_close(want);
}

/* Input (u8 -> (u8 - 128) / 64) and logits of a golden file; the model's logits error. */
static double golden_error(hakd_model *m, const char *golden) {
  hakd_st_file *g = NULL;
  if (hakd_st_open(test_fixture_path(golden), &g)) return INFINITY;
  const hakd_st_tensor *in = hakd_st_find(g, "input"), *lt = hakd_st_find(g, "logits");
  double err = INFINITY;
  hakd_ctx *ctx = hakd_ctx_new();
  if (in && lt && in->ndim == 4 && ctx) {
    hakd_ctx_set_training(ctx, 0);
    hakd_ctx_set_grad(ctx, 0);
    int64_t n = in->shape[0] * in->shape[1] * in->shape[2] * in->shape[3];
    int64_t nl = lt->shape[0] * lt->shape[1] * lt->shape[2] * lt->shape[3];
    int64_t *raw = malloc((size_t)n * sizeof *raw);
    float *want = malloc((size_t)nl * sizeof *want);
    hakd_tensor *x = hakd_tensor_new(ctx, HAKD_F32, 4, in->shape);
    hakd_model_output out;
    if (raw && want && x && !hakd_st_read_i64(g, "input", raw, n) && !hakd_st_read_f32(g, "logits", want, nl)) {
      for (int64_t i = 0; i < n; i++) hakd_f32(x)[i] = ((float)raw[i] - 128.0f) / 64.0f;
      if (!hakd_model_forward(m, ctx, x, &out) && hakd_numel(out.logits) == nl)
        err = test_max_rel_err(hakd_f32(out.logits), want, nl, 1e-6);
    }
    free(raw);
    free(want);
  }
  hakd_ctx_free(ctx);
  hakd_st_close(g);
  return err;
}

/* torchvision's DeepLabV3 layout with an aux head, saved as {"meta", "state_dict": {"module.*"},
 * "optimizer"}: loads into a model without the aux head (its 7 tensors reported unused, not
 * refused) and with it; logits as PyTorch's. */
TEST(torchvision_ddp_checkpoint_matches_pytorch) {
  for (int with_aux = 0; with_aux <= 1; with_aux++) {
    hakd_model_options o;
    hakd_model_options_default(&o);
    o.num_classes = 5;
    o.width = 1.0f / 32;
    o.aux_head = with_aux;
    hakd_model *m = NULL;
    ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
    hakd_load_options lo;
    hakd_load_options_default(&lo); /* strict */
    hakd_load_report rep;
    ASSERT_OK(hakd_model_load(m, test_fixture_path("pth/deeplabv3-r18-w1_32-ddp.pth"), &lo, &rep));
    ASSERT_EQ_INT(rep.unused_aux, with_aux ? 0 : 7);
    ASSERT_EQ_INT(rep.missing, 0);
    ASSERT_EQ_INT(rep.unexpected, 0);
    double err = golden_error(m, "pth/deeplabv3-r18-w1_32.golden.safetensors");
    printf("deeplabv3-r18-d8 (aux %d) from .pth: logits max rel err %.3g\n", with_aux, err);
    /* float32 with another summation order: ~1e-6 observed */
    ASSERT_TRUE(err <= 1e-4);
    hakd_model_free(m);
  }
}

/* mmsegmentation's SegFormer checkpoint ({"meta", "state_dict"}; MixVisionTransformer names with
 * the fused in_proj and 1x1-conv FFN; SegformerHead's ConvModules) into segformer-b0-mmseg. */
TEST(mmseg_segformer_checkpoint_matches_pytorch) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 5;
  o.width = 1.0f / 16;
  hakd_model *m = NULL;
  ASSERT_OK(hakd_model_create("segformer-b0-mmseg", &o, &m));
  hakd_load_report rep;
  ASSERT_OK(hakd_model_load(m, test_fixture_path("pth/segformer-b0-mmseg-w1_16.pth"), NULL, &rep));
  ASSERT_EQ_INT(rep.missing, 0);
  double err = golden_error(m, "pth/segformer-b0-mmseg-w1_16.golden.safetensors");
  printf("segformer-b0-mmseg from .pth: logits max rel err %.3g\n", err);
  ASSERT_TRUE(err <= 1e-4); /* float32, different summation order */
  hakd_model_free(m);
}

/* A pickle whose REDUCE would call os.system("touch /tmp/hakd_pth_pwned"): refused at its GLOBAL,
 * by name, and the command never runs. */
TEST(pickle_calling_os_system_is_refused_without_running) {
  unlink("/tmp/hakd_pth_pwned");
  hakd_st_file *f = NULL;
  int rc = hakd_pth_open(test_fixture_path("pth/refuse_os_system.pth"), &f);
  ASSERT_EQ_INT(rc, HAKD_EFORMAT);
  ASSERT_TRUE(f == NULL);
  const char *msg = hakd_error_message();
  printf("%s\n", msg);
  ASSERT_TRUE(strstr(msg, "refuse_os_system.pth") != NULL);
  ASSERT_TRUE(strstr(msg, "'posix.system'") != NULL || strstr(msg, "'os.system'") != NULL);
  struct stat st;
  ASSERT_TRUE(stat("/tmp/hakd_pth_pwned", &st) != 0);
}

TEST(what_is_not_a_state_dict_is_refused_by_name) {
  static const struct {
    const char *file;
    int status;
    const char *says[2];
  } rows[] = {
      {"refuse_module.pth", HAKD_EFORMAT, {"torch.nn.modules.conv.Conv2d", "state_dict()"}},
      {"refuse_legacy.pth", HAKD_EUNSUPPORTED, {"legacy (pre-1.6)", "_use_new_zipfile_serialization"}},
      {"refuse_torchscript.pt", HAKD_EUNSUPPORTED, {"TorchScript", "state_dict()"}},
      {"refuse_out_of_range.pth", HAKD_EFORMAT, {"tensor 'w' reaches element 5", "holds 4"}},
      {"refuse_huge.pth", HAKD_EFORMAT, {"tensor 'w'", NULL}},
      {"refuse_expanded.pth", HAKD_EUNSUPPORTED, {"1000000 elements over a storage of 4", "contiguous"}},
      {"refuse_storage_size.pth", HAKD_EFORMAT, {"storage '0' holds 16 bytes", "8 x FloatStorage"}},
      {"refuse_missing_storage.pth", HAKD_EFORMAT, {"storage '0' is missing", NULL}},
      {"refuse_big_endian.pth", HAKD_EUNSUPPORTED, {"byteorder is 'big'", NULL}},
      {"refuse_version.pth", HAKD_EUNSUPPORTED, {"version '99", NULL}},
      {"refuse_no_state_dict.pth", HAKD_EFORMAT, {"no state_dict", "'epoch', 'optimizer'"}},
  };
  for (size_t r = 0; r < sizeof rows / sizeof rows[0]; r++) {
    char rel[128];
    snprintf(rel, sizeof rel, "pth/%s", rows[r].file);
    hakd_st_file *f = NULL;
    int rc = hakd_weights_open(test_fixture_path(rel), &f);
    const char *msg = hakd_error_message();
    printf("%s -> %d: %s\n", rows[r].file, rc, msg);
    ASSERT_EQ_INT(rc, rows[r].status);
    ASSERT_TRUE(f == NULL);
    ASSERT_TRUE(strstr(msg, rows[r].file) != NULL);
    for (int k = 0; k < 2 && rows[r].says[k]; k++)
      if (!strstr(msg, rows[r].says[k])) test_fail(__FILE__, __LINE__, "%s: message lacks \"%s\"", rows[r].file, rows[r].says[k]);
  }
}

/* Every truncation and every single-byte change of a real checkpoint: an error or a complete
 * read, never a crash (the sanitizer build checks the memory side); a changed byte of a storage
 * is caught by its CRC-32. */
TEST(damaged_archives_are_refused) {
  size_t n;
  uint8_t *good = read_all(test_fixture_path("pth/views.pth"), &n);
  ASSERT_TRUE(good != NULL && n > 1000);
  char path[600];
  snprintf(path, sizeof path, "%s/bad.pth", test_tmpdir());
  int refused = 0, read_fine = 0;
  for (size_t len = 0; len < n; len += len < 64 ? 1 : 7) {
    ASSERT_OK(write_all(path, good, len));
    hakd_st_file *f = NULL;
    int rc = hakd_weights_open(path, &f);
    if (rc == 0) test_fail(__FILE__, __LINE__, "truncated to %zu of %zu bytes but read", len, n);
    hakd_st_close(f);
  }
  uint8_t *bad = malloc(n);
  ASSERT_TRUE(bad != NULL);
  for (size_t i = 0; i < n; i++) {
    memcpy(bad, good, n);
    bad[i] ^= 0x5A;
    hakd_st_file *f = NULL;
    ASSERT_OK(write_all(path, bad, n));
    int rc = hakd_weights_open(path, &f);
    if (rc) refused++;
    else read_fine++;
    hakd_st_close(f);
  }
  printf("%zu single-byte changes: %d refused, %d read (bytes no reader needs: timestamps, padding)\n", n, refused,
         read_fine);
  ASSERT_TRUE(refused > (int)n / 2);
  /* the first bytes of storage 0 ("f32": -2.0 = 00 00 00 c0): a changed value fails the CRC */
  const uint8_t pattern[8] = {0x00, 0x00, 0x00, 0xc0, 0x00, 0x00, 0xc0, 0xbf};
  uint8_t *at = memmem(good, n, pattern, sizeof pattern);
  ASSERT_TRUE(at != NULL);
  memcpy(bad, good, n);
  bad[at - good + 3] ^= 0x01;
  ASSERT_OK(write_all(path, bad, n));
  hakd_st_file *f = NULL;
  ASSERT_EQ_INT(hakd_weights_open(path, &f), HAKD_EFORMAT);
  ASSERT_TRUE(strstr(hakd_error_message(), "CRC-32") != NULL);
  free(bad);
  free(good);
}

/* hakd convert and hakd predict --weights X.pth through the CLI. */
TEST(cli_convert_and_predict_read_pth) {
  const char *cli = getenv("HAKD_CLI");
  ASSERT_TRUE(cli != NULL);
  char cmd[2048], out[4096], st[600], npy[600], logits[600];
  snprintf(st, sizeof st, "%s/views.safetensors", test_tmpdir());
  snprintf(cmd, sizeof cmd, "%s convert %s %s", cli, test_fixture_path("pth/views.pth"), st);
  ASSERT_EQ_INT(test_run_capture(cmd, out, sizeof out), 0);
  ASSERT_TRUE(strstr(out, "16 tensors") != NULL);
  hakd_st_file *a = NULL, *b = NULL;
  ASSERT_OK(hakd_pth_open(test_fixture_path("pth/views.pth"), &a));
  ASSERT_OK(hakd_st_open(st, &b));
  ASSERT_EQ_INT(hakd_st_count(a), hakd_st_count(b));
  for (int i = 0; i < hakd_st_count(a); i++) {
    const hakd_st_tensor *x = hakd_st_get(a, i), *y = hakd_st_find(b, x->name);
    ASSERT_TRUE(y != NULL);
    ASSERT_EQ_INT(x->dtype, y->dtype);
    ASSERT_EQ_INT(x->nbytes, y->nbytes);
    ASSERT_TRUE(x->nbytes == 0 || !memcmp(hakd_st_data(a, x), hakd_st_data(b, y), x->nbytes));
  }
  ASSERT_TRUE(!strcmp(hakd_st_metadata(b, "format"), "pt"));
  hakd_st_close(a);
  hakd_st_close(b);

  /* a refused pickle: exit 1, message, no output file */
  snprintf(cmd, sizeof cmd, "%s convert %s %s/evil.safetensors", cli, test_fixture_path("pth/refuse_os_system.pth"),
           test_tmpdir());
  ASSERT_EQ_INT(test_run_capture(cmd, out, sizeof out), 1);
  ASSERT_TRUE(strstr(out, "refusing the pickle") != NULL);
  snprintf(st, sizeof st, "%s/evil.safetensors", test_tmpdir());
  ASSERT_TRUE(access(st, F_OK) != 0);

  /* predict on the golden input: the saved logits are PyTorch's */
  hakd_st_file *g = NULL;
  ASSERT_OK(hakd_st_open(test_fixture_path("pth/deeplabv3-r18-w1_32.golden.safetensors"), &g));
  const hakd_st_tensor *in = hakd_st_find(g, "input"), *lt = hakd_st_find(g, "logits");
  int64_t n = in->shape[1] * in->shape[2] * in->shape[3], nl = lt->shape[1] * lt->shape[2] * lt->shape[3];
  int64_t *raw = malloc((size_t)n * sizeof *raw);
  float *x = malloc((size_t)n * sizeof *x), *want = malloc((size_t)nl * sizeof *want);
  ASSERT_OK(hakd_st_read_i64(g, "input", raw, n));
  ASSERT_OK(hakd_st_read_f32(g, "logits", want, nl));
  for (int64_t i = 0; i < n; i++) x[i] = ((float)raw[i] - 128.0f) / 64.0f;
  snprintf(npy, sizeof npy, "%s/in.npy", test_tmpdir());
  snprintf(logits, sizeof logits, "%s/logits.npy", test_tmpdir());
  ASSERT_OK(hakd_npy_write(npy, HAKD_NPY_F32, 4, in->shape, x));
  snprintf(cmd, sizeof cmd,
           "%s predict --model deeplabv3-r18-d8 --width 0.03125 --num-classes 5 --weights %s --input %s "
           "--save-logits %s",
           cli, test_fixture_path("pth/deeplabv3-r18-w1_32-ddp.pth"), npy, logits);
  int rc = test_run_capture(cmd, out, sizeof out);
  printf("%s", out);
  ASSERT_EQ_INT(rc, 0);
  ASSERT_TRUE(strstr(out, "7 auxiliary-head tensor(s) unused") != NULL);
  hakd_npy got;
  ASSERT_OK(hakd_npy_read(logits, &got));
  ASSERT_EQ_INT(hakd_npy_numel(&got), nl);
  double err = test_max_rel_err((const float *)got.data, want, nl, 1e-6);
  printf("hakd predict --weights .pth: logits max rel err %.3g\n", err);
  ASSERT_TRUE(err <= 1e-4); /* float32, another summation order */
  hakd_npy_free(&got);
  free(raw);
  free(x);
  free(want);
  hakd_st_close(g);
}
