/* Linear CKA (src/distill/cka.c): its defining properties (1 for identical sets, invariance to
 * isotropic scaling, orthogonal transforms and shifts, small for independent features), PyTorch
 * reference values (tools/gen_cka.py), streaming, errors, the heat map, and `hakd cka`. */
#include <stdlib.h>
#include <string.h>

#include "data_testutil.h"
#include "hakd/cka.h"
#include "hakd/data.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "io/plot.h"

static float *random_matrix(uint64_t *rng, int64_t rows, int64_t cols) {
  float *m = malloc((size_t)(rows * cols) * sizeof *m);
  for (int64_t i = 0; i < rows * cols; i++) m[i] = hakd_rng_normal(rng);
  return m;
}

/* A random orthogonal (p, p) matrix: Gram-Schmidt on Gaussian columns, in double. */
static double *random_orthogonal(uint64_t *rng, int p) {
  double *q = malloc((size_t)p * p * sizeof *q);
  for (int i = 0; i < p * p; i++) q[i] = hakd_rng_normal(rng);
  for (int c = 0; c < p; c++) {
    for (int prev = 0; prev < c; prev++) {
      double dot = 0;
      for (int r = 0; r < p; r++) dot += q[r * p + c] * q[r * p + prev];
      for (int r = 0; r < p; r++) q[r * p + c] -= dot * q[r * p + prev];
    }
    double norm = 0;
    for (int r = 0; r < p; r++) norm += q[r * p + c] * q[r * p + c];
    for (int r = 0; r < p; r++) q[r * p + c] /= sqrt(norm);
  }
  return q;
}

TEST(identical_sets_give_one) {
  uint64_t rng = hakd_rng_seed(1);
  float *x = random_matrix(&rng, 20, 30);
  double cka;
  ASSERT_OK(hakd_cka_linear(&cka, x, x, 20, 30, 30));
  /* Only double rounding in the Gram sums separates it from 1. */
  ASSERT_NEAR(cka, 1.0, 1e-12);
  /* More features than examples and fewer: both shapes are exact. */
  ASSERT_OK(hakd_cka_linear(&cka, x, x, 30, 20, 20));
  ASSERT_NEAR(cka, 1.0, 1e-12);
  free(x);
}

TEST(invariant_to_scale_orthogonal_transform_and_shift) {
  enum { N = 24, P = 16, Q = 6 };
  uint64_t rng = hakd_rng_seed(2);
  float *x = random_matrix(&rng, N, P), *z = random_matrix(&rng, N, Q), *xt = malloc(N * P * sizeof *xt);
  for (int i = 0; i < N * Q; i++) z[i] += 0.8f * x[(i / Q) * P + i % Q]; /* z related to x: CKA well inside (0, 1) */
  double *rot = random_orthogonal(&rng, P);
  /* x' = 3.7 x R + b with a row vector b: scale, rotation, and a shift that centring removes. */
  for (int i = 0; i < N; i++)
    for (int c = 0; c < P; c++) {
      double v = 0;
      for (int k = 0; k < P; k++) v += (double)x[i * P + k] * rot[k * P + c];
      xt[i * P + c] = (float)(3.7 * v + 10.0 * (c - P / 2));
    }
  double base, transformed, self;
  ASSERT_OK(hakd_cka_linear(&base, x, z, N, P, Q));
  ASSERT_OK(hakd_cka_linear(&transformed, xt, z, N, P, Q));
  ASSERT_OK(hakd_cka_linear(&self, x, xt, N, P, P));
  fprintf(stderr, "CKA(x, z) %.9f, CKA(x', z) %.9f, CKA(x, x') %.9f\n", base, transformed, self);
  ASSERT_TRUE(base > 0.2 && base < 0.95);
  /* x' is rounded to float32 (relative 6e-8 per entry, shift 80 on values ~4): 1e-5 leaves margin. */
  ASSERT_NEAR(transformed, base, 1e-5);
  ASSERT_NEAR(self, 1.0, 1e-5);
  free(x), free(z), free(xt), free(rot);
}

TEST(independent_features_small_related_large) {
  enum { N = 256, P = 8, Q = 8 };
  uint64_t rng = hakd_rng_seed(3);
  float *x = random_matrix(&rng, N, P), *y = random_matrix(&rng, N, Q);
  double independent, related;
  ASSERT_OK(hakd_cka_linear(&independent, x, y, N, P, Q));
  for (int i = 0; i < N * Q; i++) y[i] = x[i] + 0.3f * y[i];
  ASSERT_OK(hakd_cka_linear(&related, x, y, N, P, Q));
  fprintf(stderr, "independent %.4f, related %.4f\n", independent, related);
  /* Independent: the finite-sample bias ~ sqrt(P Q) / N = 0.03; 0.1 is far above it and far
   * below the related value. */
  ASSERT_TRUE(independent >= 0.0 && independent < 0.1);
  ASSERT_TRUE(related > 0.85);
  free(x), free(y);
}

/* Reads `name` (n floats) from the fixture. */
static float *fixture_tensor(hakd_st_file *f, const char *name, int64_t *shape, int *ndim) {
  const hakd_st_tensor *t = hakd_st_find(f, name);
  if (!t) return NULL;
  int64_t n = 1;
  for (int d = 0; d < t->ndim; d++) n *= t->shape[d], shape[d] = t->shape[d];
  *ndim = t->ndim;
  float *data = malloc((size_t)n * sizeof *data);
  if (hakd_st_read_f32(f, name, data, n)) {
    free(data);
    return NULL;
  }
  return data;
}

TEST(matches_pytorch_reference) {
  hakd_st_file *f;
  ASSERT_OK(hakd_st_open(test_fixture_path("distill/cka.safetensors"), &f));
  static const char *const cases[] = {"random", "related", "offset"};
  char name[64];
  int64_t xs[8], ys[8], cs[8];
  int xd = 0, yd = 0, cd = 0;
  for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
    snprintf(name, sizeof name, "%s.x", cases[c]);
    float *x = fixture_tensor(f, name, xs, &xd);
    snprintf(name, sizeof name, "%s.y", cases[c]);
    float *y = fixture_tensor(f, name, ys, &yd);
    snprintf(name, sizeof name, "%s.cka", cases[c]);
    float *want = fixture_tensor(f, name, cs, &cd);
    ASSERT_TRUE(x && y && want && xd == 2 && yd == 2 && xs[0] == ys[0]);
    double got;
    ASSERT_OK(hakd_cka_linear(&got, x, y, xs[0], xs[1], ys[1]));
    fprintf(stderr, "%s: %.9f vs torch %.9f\n", cases[c], got, (double)want[0]);
    /* Both sides compute in double from the same float32 inputs; the reference is read back as
     * float32 (relative 6e-8), so 1e-6 relative is the bound. */
    ASSERT_NEAR(got / want[0], 1.0, 1e-6);
    free(x), free(y), free(want);
  }
  /* Feature maps: adaptive pooling to 8x8 (10x13 down, 4x4 replicated up), flattened per image. */
  int64_t as[8], bs[8];
  int ad = 0, bd = 0;
  float *a = fixture_tensor(f, "maps.a", as, &ad), *b = fixture_tensor(f, "maps.b", bs, &bd),
        *want = fixture_tensor(f, "maps.cka", cs, &cd);
  ASSERT_TRUE(a && b && want && ad == 4 && bd == 4);
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_cka_set *sa, *sb;
  ASSERT_OK(hakd_cka_set_new(&sa, "maps a"));
  ASSERT_OK(hakd_cka_set_new(&sb, "maps b"));
  /* One image at a time, as hakd cka feeds them. */
  for (int64_t i = 0; i < as[0]; i++) {
    hakd_ctx_reset(ctx);
    int64_t one_a[4] = {1, as[1], as[2], as[3]}, one_b[4] = {1, bs[1], bs[2], bs[3]};
    hakd_tensor *ta = hakd_tensor_wrap(ctx, HAKD_F32, 4, one_a, a + i * as[1] * as[2] * as[3]);
    hakd_tensor *tb = hakd_tensor_wrap(ctx, HAKD_F32, 4, one_b, b + i * bs[1] * bs[2] * bs[3]);
    ASSERT_OK(hakd_cka_set_add_maps(sa, ctx, ta, HAKD_CKA_GRID, HAKD_CKA_GRID));
    ASSERT_OK(hakd_cka_set_add_maps(sb, ctx, tb, HAKD_CKA_GRID, HAKD_CKA_GRID));
  }
  ASSERT_EQ_INT(hakd_cka_set_count(sa), as[0]);
  ASSERT_EQ_INT(hakd_cka_set_dim(sa), as[1] * 64);
  ASSERT_EQ_INT(hakd_cka_set_dim(sb), bs[1] * 64);
  double got;
  ASSERT_OK(hakd_cka_compare(&got, sa, sb));
  fprintf(stderr, "maps: %.9f vs torch %.9f\n", got, (double)want[0]);
  /* Pooled float32 sums may round differently from aten's (relative ~1e-7 per feature). */
  ASSERT_NEAR(got / want[0], 1.0, 1e-6);
  hakd_cka_set_free(sa), hakd_cka_set_free(sb), hakd_ctx_free(ctx);
  free(a), free(b), free(want);
  hakd_st_close(f);
}

TEST(streaming_in_batches_equals_one_shot) {
  enum { N = 37, P = 11, Q = 5 };
  uint64_t rng = hakd_rng_seed(4);
  float *x = random_matrix(&rng, N, P), *y = random_matrix(&rng, N, Q);
  double one_shot, streamed;
  ASSERT_OK(hakd_cka_linear(&one_shot, x, y, N, P, Q));
  hakd_cka_set *sx, *sy;
  ASSERT_OK(hakd_cka_set_new(&sx, "x"));
  ASSERT_OK(hakd_cka_set_new(&sy, "y"));
  /* Uneven batches (1, 2, 3, ...) through several capacity doublings; an empty batch too. */
  for (int start = 0, size = 1; start < N; start += size, size++) {
    int take = start + size > N ? N - start : size;
    ASSERT_OK(hakd_cka_set_add(sx, x + start * P, take, P));
    ASSERT_OK(hakd_cka_set_add(sy, y + start * Q, 0, Q));
    ASSERT_OK(hakd_cka_set_add(sy, y + start * Q, take, Q));
  }
  ASSERT_OK(hakd_cka_compare(&streamed, sx, sy));
  /* Every Gram entry is computed by the same loop whatever the batching: bit-identical. */
  ASSERT_TRUE(streamed == one_shot);
  /* Symmetric in its arguments. */
  double swapped;
  ASSERT_OK(hakd_cka_compare(&swapped, sy, sx));
  ASSERT_NEAR(swapped, one_shot, 1e-15);
  hakd_cka_set_free(sx), hakd_cka_set_free(sy);
  free(x), free(y);
}

/* Asserts that `call` fails with `status` and a message containing `needle`. */
#define ASSERT_FAILS(call, status, needle)                                                            \
  do {                                                                                                \
    int rc2_ = (call);                                                                                \
    if (rc2_ != (status) || !strstr(hakd_error_message(), (needle))) {                                \
      test_fail(__FILE__, __LINE__, "%s: got %d '%s', want %d with '%s'", #call, rc2_, hakd_error_message(), \
                (status), (needle));                                                                  \
      return;                                                                                         \
    }                                                                                                 \
  } while (0)

TEST(errors_name_the_set) {
  uint64_t rng = hakd_rng_seed(5);
  float *x = random_matrix(&rng, 6, 4);
  hakd_cka_set *a, *b, *flat;
  ASSERT_OK(hakd_cka_set_new(&a, "teacher stage 2"));
  ASSERT_OK(hakd_cka_set_new(&b, "student stage 3"));
  ASSERT_OK(hakd_cka_set_new(&flat, "student stage 4"));
  double cka;
  ASSERT_OK(hakd_cka_set_add(a, x, 1, 4));
  ASSERT_OK(hakd_cka_set_add(b, x, 1, 4));
  ASSERT_FAILS(hakd_cka_compare(&cka, a, b), HAKD_EINVAL, "at least 2 examples");
  ASSERT_TRUE(isnan(cka));
  ASSERT_FAILS(hakd_cka_set_add(a, x, 2, 3), HAKD_ESHAPE, "teacher stage 2: example 1 has 3 features");
  ASSERT_OK(hakd_cka_set_add(a, x + 4, 5, 4));
  ASSERT_FAILS(hakd_cka_compare(&cka, a, b), HAKD_ESHAPE, "teacher stage 2 has 6 examples but student stage 3 has 1");
  x[3 * 4 + 2] = NAN;
  ASSERT_FAILS(hakd_cka_set_add(b, x + 4, 5, 4), HAKD_ENUMERIC, "student stage 3: example 3 has a non-finite value");
  ASSERT_EQ_INT(hakd_cka_set_count(b), 1); /* nothing of the refused batch was added */
  float constant[6 * 2];
  for (int i = 0; i < 12; i++) constant[i] = 0.5f;
  ASSERT_OK(hakd_cka_set_add(flat, constant, 6, 2));
  ASSERT_FAILS(hakd_cka_compare(&cka, a, flat), HAKD_ENUMERIC, "student stage 4 are all identical");
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_tensor *flat_map = hakd_tensor_zeros(ctx, HAKD_F32, 2, (int64_t[]){4, 4});
  ASSERT_FAILS(hakd_cka_set_add_maps(a, ctx, flat_map, 8, 8), HAKD_ESHAPE, "teacher stage 2: adaptive_avgpool2d");
  hakd_ctx_free(ctx);
  hakd_cka_set_free(a), hakd_cka_set_free(b), hakd_cka_set_free(flat);
  free(x);
}

/* Layout of hakd_cka_write_heatmap: cells of 56 px after a 28 px label margin. */
enum { CELL = 56, MARGIN = 28 };

TEST(heatmap_png_cells_have_the_colour_map) {
  const double cka[6] = {1.0, 0.5, 0.05, 0.8, NAN, 0.0};
  const char *path = tmp_path("cka.png");
  ASSERT_OK(hakd_cka_write_heatmap(path, cka, 2, 3));
  hakd_image img;
  ASSERT_OK(hakd_image_read(path, &img));
  ASSERT_EQ_INT(img.channels, 3);
  ASSERT_TRUE(img.width > MARGIN + 3 * CELL && img.height > MARGIN + 2 * CELL);
  for (int i = 0; i < 2; i++)
    for (int j = 0; j < 3; j++) {
      unsigned char want[3] = {160, 160, 160};
      float v = (float)cka[i * 3 + j];
      if (!isnan(v)) plot_heatmap(want, &v, 1, 1.0f);
      /* A corner pixel of the cell, away from the printed value. */
      const uint8_t *px = img.pixels + 3 * ((size_t)(MARGIN + i * CELL + 3) * img.width + MARGIN + j * CELL + 3);
      if (memcmp(px, want, 3)) test_fail(__FILE__, __LINE__, "cell (%d, %d): colour %d,%d,%d, want %d,%d,%d", i, j,
                                         px[0], px[1], px[2], want[0], want[1], want[2]);
      /* The printed value: the cell's centre row holds some pixels of another colour. */
      int other = 0;
      const uint8_t *row = img.pixels + 3 * ((size_t)(MARGIN + i * CELL + CELL / 2) * img.width + MARGIN + j * CELL);
      for (int x = 0; x < CELL; x++) other += memcmp(row + 3 * x, want, 3) != 0;
      if (!other) test_fail(__FILE__, __LINE__, "cell (%d, %d): no value printed", i, j);
    }
  hakd_image_free(&img);
  ASSERT_FAILS(hakd_cka_write_heatmap(path, cka, 0, 3), HAKD_EINVAL, "0 x 3 cells");
}

/* ---- hakd cka ---- */

/* Writes a synthetic dataset and randomly initialised weights of `model` at width 1/8. */
static int make_weights(const char *model, uint64_t seed, const char *path) {
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = HAKD_SYNTH_NUM_CLASSES;
  mo.width = 0.125f;
  hakd_model *m;
  int rc = hakd_model_create(model, &mo, &m);
  if (rc) return rc;
  hakd_model_init(m, seed);
  rc = hakd_params_save(hakd_model_params(m), path, NULL);
  hakd_model_free(m);
  return rc;
}

static int make_synth(void) {
  hakd_synth_config sc = {.out_dir = tmp_path("synth"), .n_train = 0, .n_val = 6, .height = 48, .width = 64, .seed = 9};
  return hakd_synth_write(&sc);
}

/* Parses the rows "T<a>  v v v v" of hakd cka's output into m (4 x 4); returns the rows found. */
static int parse_matrix(const char *out, double m[16]) {
  int rows = 0;
  for (const char *line = out; line && *line; line = strchr(line, '\n'), line = line ? line + 1 : NULL) {
    int a;
    double v[4];
    if (sscanf(line, "T%d %lf %lf %lf %lf", &a, &v[0], &v[1], &v[2], &v[3]) == 5 && a == rows + 1) {
      memcpy(m + 4 * rows, v, sizeof v);
      rows++;
    }
  }
  return rows;
}

static char *cka_args(const char *teacher, const char *teacher_weights, const char *student,
                      const char *student_weights, const char *png) {
  static char args[3072];
  snprintf(args, sizeof args,
           "cka --teacher %s --teacher-weights '%s' --teacher-width 0.125 --student %s --student-weights '%s' "
           "--student-width 0.125 --dataset synth --data-root '%s' --split val --max-images 5 --size 48x64 "
           "--threads 1 --out '%s'",
           teacher, teacher_weights, student, student_weights, tmp_path("synth"), png);
  return args;
}

TEST(cli_heterogeneous_matrix_and_png) {
  ASSERT_OK(make_synth());
  ASSERT_OK(make_weights("deeplabv3-r18-d8", 11, tmp_path("cnn.safetensors")));
  ASSERT_OK(make_weights("segformer-b0", 12, tmp_path("vit.safetensors")));
  char *out, *err;
  int rc = run_cli(cka_args("deeplabv3-r18-d8", tmp_path("cnn.safetensors"), "segformer-b0",
                            tmp_path("vit.safetensors"), tmp_path("het.png")),
                   &out, &err);
  if (rc != 0) fprintf(stderr, "stdout:\n%s\nstderr:\n%s\n", out, err);
  ASSERT_EQ_INT(rc, 0);
  fprintf(stderr, "%s", out);
  ASSERT_TRUE(strstr(out, "linear CKA over 5 images of generic/val") != NULL);
  ASSERT_TRUE(strstr(out, "teacher deeplabv3-r18-d8 (cnn)") != NULL);
  ASSERT_TRUE(strstr(out, "student segformer-b0 (transformer)") != NULL);
  double m[16];
  ASSERT_EQ_INT(parse_matrix(out, m), 4);
  for (int i = 0; i < 16; i++)
    if (!(m[i] >= 0.0 && m[i] <= 1.0)) test_fail(__FILE__, __LINE__, "entry %d = %g outside [0, 1]", i, m[i]);
  hakd_image img;
  ASSERT_OK(hakd_image_read(tmp_path("het.png"), &img));
  ASSERT_TRUE(img.width > MARGIN + 4 * CELL && img.height > MARGIN + 4 * CELL);
  hakd_image_free(&img);
  free(out), free(err);
}

TEST(cli_homogeneous_same_weights_diagonal_is_one) {
  ASSERT_OK(make_synth());
  ASSERT_OK(make_weights("deeplabv3-r18-d8", 11, tmp_path("cnn.safetensors")));
  char *out, *err;
  int rc = run_cli(cka_args("deeplabv3-r18-d8", tmp_path("cnn.safetensors"), "deeplabv3-r18-d8",
                            tmp_path("cnn.safetensors"), tmp_path("hom.png")),
                   &out, &err);
  if (rc != 0) fprintf(stderr, "stdout:\n%s\nstderr:\n%s\n", out, err);
  ASSERT_EQ_INT(rc, 0);
  double m[16];
  ASSERT_EQ_INT(parse_matrix(out, m), 4);
  for (int i = 0; i < 4; i++) {
    /* Printed with 4 decimals; the same model on the same images gives identical features. */
    ASSERT_NEAR(m[i * 4 + i], 1.0, 1e-4);
    for (int j = 0; j < 4; j++) ASSERT_NEAR(m[i * 4 + j], m[j * 4 + i], 1e-4); /* symmetric */
  }
  free(out), free(err);
}

TEST(cli_missing_weights_fails_naming_the_file) {
  ASSERT_OK(make_synth());
  ASSERT_OK(make_weights("deeplabv3-r18-d8", 11, tmp_path("cnn.safetensors")));
  char *out, *err;
  const char *missing = tmp_path("no-such-student.safetensors");
  int rc = run_cli(cka_args("deeplabv3-r18-d8", tmp_path("cnn.safetensors"), "segformer-b0", missing,
                            tmp_path("x.png")),
                   &out, &err);
  if (rc == 0 || !strstr(err, missing)) fprintf(stderr, "rc %d, stderr:\n%s\n", rc, err);
  ASSERT_TRUE(rc != 0);
  ASSERT_TRUE(strstr(err, missing) != NULL);
  ASSERT_TRUE(strstr(err, "student weights") != NULL);
  FILE *png = fopen(tmp_path("x.png"), "rb");
  ASSERT_TRUE(png == NULL); /* nothing written */
  free(out), free(err);
}
