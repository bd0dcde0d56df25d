/* hakd cka: linear CKA between every backbone stage of a teacher and every stage of a student
 * over a set of images, as a matrix on stdout and a heat-map PNG. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/cka.h"
#include "hakd/data.h"
#include "hakd/io.h"
#include "hakd/model.h"
#include "hakd/ops.h"

enum { STAGES = 4 };

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd cka --teacher-weights FILE [--teacher NAME] [--teacher-width W]\n"
          "                --student-weights FILE [--student NAME] [--student-width W]\n"
          "                --dataset NAME --data-root DIR [--split val] [--max-images N] [--size HxW]\n"
          "                [--out cka.png] [--norm imagenet|bgr-mean] [--threads N]\n"
          "Linear CKA (Kornblith et al. 2019) between teacher stages 1-4 (rows) and student stages 1-4\n"
          "(columns) over the first N images of the split (default 64). One example per image: each\n"
          "stage's feature map is average-pooled to %dx%d and flattened. Only the backbone weights are\n"
          "loaded (the heads do not take part). Images are used whole, or fitted within HxW keeping\n"
          "their aspect ratio with --size; teacher and student may be the same model. A model's name and\n"
          "width default to what its file's metadata says (files hakd writes carry them); a given one\n"
          "that contradicts it is refused; a file without them (.pth) needs the name.\n",
          HAKD_CKA_GRID, HAKD_CKA_GRID);
}

/* One side of the comparison: a model with backbone weights and one example set per stage. */
typedef struct {
  const char *role, *name, *weights;
  float width; /* 0: the file's */
  char resolved[64];
  hakd_model *model;
  hakd_cka_set *sets[STAGES];
} cka_side;

static int side_open(cka_side *side, int num_classes) {
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  /* the head is not loaded: its class count is the file's when it says, else the dataset's */
  hakd_model_meta meta;
  if (hakd_model_meta_read(side->weights, &meta)) {
    hakd_error_prefix("%s weights", side->role);
    return -1;
  }
  mo.num_classes = meta.have & HAKD_META_NUM_CLASSES ? meta.opts.num_classes : num_classes;
  mo.width = side->width;
  if (hakd_model_options_for_file(side->weights, side->name, &mo, side->resolved, sizeof side->resolved)) {
    hakd_error_prefix("%s weights", side->role);
    return -1;
  }
  side->name = side->resolved;
  if (hakd_model_create(side->name, &mo, &side->model)) return -1;
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  lo.backbone_only = 1;
  hakd_load_report rep;
  if (hakd_model_load(side->model, side->weights, &lo, &rep)) {
    hakd_error_prefix("%s weights", side->role);
    return -1;
  }
  fprintf(stderr, "%s %s: %d backbone tensors from %s\n", side->role, side->name, rep.loaded, side->weights);
  for (int s = 0; s < STAGES; s++) {
    char set_name[64];
    snprintf(set_name, sizeof set_name, "%s stage %d", side->role, s + 1);
    if (hakd_cka_set_new(&side->sets[s], set_name)) return -1;
  }
  return 0;
}

static void side_close(cka_side *side) {
  for (int s = 0; s < STAGES; s++) hakd_cka_set_free(side->sets[s]);
  hakd_model_free(side->model);
}

/* Runs one normalised image (1, 3, h, w) through the side's model and adds its stage maps. */
static int side_add_image(cka_side *side, hakd_ctx *ctx, float *image, int h, int w) {
  hakd_ctx_reset(ctx);
  hakd_tensor *x = hakd_tensor_wrap(ctx, HAKD_F32, 4, (int64_t[]){1, 3, h, w}, image);
  hakd_model_output out;
  if (!x || hakd_model_forward(side->model, ctx, x, &out)) {
    hakd_error_prefix("%s %s", side->role, side->name);
    return -1;
  }
  for (int s = 0; s < STAGES; s++)
    if (hakd_cka_set_add_maps(side->sets[s], ctx, hakd_to_f32(ctx, out.stages[s]), HAKD_CKA_GRID, HAKD_CKA_GRID)) return -1;
  return 0;
}

static void print_side(const cka_side *side) {
  printf("%s %s (%s): stage channels", side->role, side->name, hakd_model_family(side->model));
  for (int s = 1; s <= STAGES; s++) printf(" %d", hakd_model_stage_channels(side->model, s));
  printf(", strides");
  for (int s = 1; s <= STAGES; s++) printf(" %d", hakd_model_stage_stride(side->model, s));
  printf("\n");
}

int cmd_cka(int argc, char **argv) {
  static const struct option options[] = {
      {"teacher", required_argument, 0, 't'},   {"teacher-weights", required_argument, 0, 'T'},
      {"teacher-width", required_argument, 0, 'x'}, {"student", required_argument, 0, 's'},
      {"student-weights", required_argument, 0, 'S'}, {"student-width", required_argument, 0, 'y'},
      {"dataset", required_argument, 0, 'd'},   {"data-root", required_argument, 0, 'r'},
      {"split", required_argument, 0, 'p'},     {"max-images", required_argument, 0, 'n'},
      {"size", required_argument, 0, 'z'},      {"out", required_argument, 0, 'o'},
      {"norm", required_argument, 0, 'N'},      {"threads", required_argument, 0, 'j'},
      {"help", no_argument, 0, 'h'},            {0, 0, 0, 0}};
  cka_side teacher = {.role = "teacher"}, student = {.role = "student"};
  const char *dataset_name = NULL, *data_root = NULL, *split = "val", *out_path = "cka.png", *norm_name = "imagenet",
             *size = NULL;
  int max_images = 64, threads = 0, scale_h = 0, scale_w = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 't': teacher.name = optarg; break;
      case 'T': teacher.weights = optarg; break;
      case 'x':
        if (command_float("--teacher-width", optarg, 1e-3, 4.0, &teacher.width)) return 1;
        break;
      case 's': student.name = optarg; break;
      case 'S': student.weights = optarg; break;
      case 'y':
        if (command_float("--student-width", optarg, 1e-3, 4.0, &student.width)) return 1;
        break;
      case 'd': dataset_name = optarg; break;
      case 'r': data_root = optarg; break;
      case 'p': split = optarg; break;
      case 'n':
        if (command_int("--max-images", optarg, 2, 1 << 30, &max_images)) return 1;
        break;
      case 'z': size = optarg; break;
      case 'o': out_path = optarg; break;
      case 'N': norm_name = optarg; break;
      case 'j':
        if (command_int("--threads", optarg, 0, 4096, &threads)) return 1;
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  if (optind < argc) return command_fail("unexpected argument '%s'", argv[optind]);
  if (!teacher.weights || !student.weights || !dataset_name || !data_root) {
    usage(stderr);
    return command_fail("--teacher-weights, --student-weights, --dataset and --data-root are required");
  }
  if (strcmp(norm_name, "imagenet") && strcmp(norm_name, "bgr-mean"))
    return command_fail("--norm '%s': use imagenet or bgr-mean", norm_name);
  hakd_norm norm = strcmp(norm_name, "bgr-mean") ? HAKD_NORM_IMAGENET : HAKD_NORM_BGR_MEAN;
  if (size && command_size("--size", size, &scale_h, &scale_w)) return 1;
  if (command_output("--out", out_path)) return 1;
  if (max_images < 2) return command_fail("--max-images %d: CKA needs at least 2 images", max_images);
  hakd_set_threads(threads);

  hakd_dataset *ds = NULL;
  hakd_ctx *ctx = NULL;
  float *image = NULL;
  int rc = 1;
  hakd_dataset_config dc = {.name = dataset_name, .root = data_root, .split = split};
  if (hakd_dataset_open(&ds, &dc)) goto done;
  int64_t n = hakd_dataset_count(ds) < max_images ? hakd_dataset_count(ds) : max_images;
  if (n < 2) {
    hakd_error(HAKD_EINVAL, "%s: split '%s' has %lld image(s); CKA needs at least 2", data_root, split, (long long)n);
    goto done;
  }
  if (side_open(&teacher, hakd_dataset_num_classes(ds)) || side_open(&student, hakd_dataset_num_classes(ds)))
    goto done;
  /* --size bounds every image: a bound below either model's minimum fails before any image */
  if (size && (hakd_model_check_input(teacher.model, 1, scale_h, scale_w, 0) ||
               hakd_model_check_input(student.model, 1, scale_h, scale_w, 0))) {
    hakd_error_prefix("--size %s", size);
    goto done;
  }
  if (!(ctx = hakd_ctx_new())) {
    hakd_error(HAKD_ENOMEM, "out of memory");
    goto done;
  }
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  for (int64_t i = 0; i < n; i++) {
    /* Only the image: labels take no part, so unlabelled (test) splits work too. */
    const char *path = hakd_dataset_image_path(ds, i);
    hakd_image img;
    if (hakd_image_read(path, &img)) goto done;
    int h, w;
    hakd_eval_size(&h, &w, img.height, img.width, scale_h, scale_w);
    int64_t pixels = (int64_t)img.width * img.height;
    uint8_t *rgb = malloc((size_t)pixels * 3);
    float *resized = realloc(image, (size_t)3 * h * w * sizeof *image);
    if (resized) image = resized;
    int trc = 0;
    if (!rgb || !resized) {
      trc = hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
    } else {
      for (int64_t p = 0; p < pixels; p++)
        for (int ch = 0; ch < 3; ch++) rgb[3 * p + ch] = img.pixels[p * img.channels + (img.channels >= 3 ? ch : 0)];
      hakd_sample sample = {img.width, img.height, rgb, NULL};
      trc = hakd_eval_transform(image, &sample, scale_h, scale_w, norm);
    }
    free(rgb);
    hakd_image_free(&img);
    if (trc || side_add_image(&teacher, ctx, image, h, w) || side_add_image(&student, ctx, image, h, w)) {
      hakd_error_prefix("%s", path);
      goto done;
    }
  }

  double cka[STAGES * STAGES];
  for (int a = 0; a < STAGES; a++)
    for (int b = 0; b < STAGES; b++)
      if (hakd_cka_compare(&cka[a * STAGES + b], teacher.sets[a], student.sets[b]))
        fprintf(stderr, "hakd: warning: %s\n", hakd_error_message()); /* a collapsed stage: nan */
  printf("linear CKA over %lld images of %s/%s; per image, each stage map average-pooled to %dx%d and flattened\n",
         (long long)n, hakd_dataset_name(ds), split, HAKD_CKA_GRID, HAKD_CKA_GRID);
  print_side(&teacher);
  print_side(&student);
  printf("rows: teacher stages, columns: student stages\n    ");
  for (int b = 0; b < STAGES; b++) printf("      S%d", b + 1);
  printf("\n");
  for (int a = 0; a < STAGES; a++) {
    printf("T%d  ", a + 1);
    for (int b = 0; b < STAGES; b++) printf("%8.4f", cka[a * STAGES + b]);
    printf("\n");
  }
  if (hakd_cka_write_heatmap(out_path, cka, STAGES, STAGES)) goto done;
  printf("heat map: %s\n", out_path);
  rc = 0;
done:
  if (rc) command_fail(NULL);
  free(image);
  hakd_ctx_free(ctx);
  side_close(&teacher);
  side_close(&student);
  hakd_dataset_free(ds);
  return rc;
}

HAKD_COMMAND("cka", "linear CKA between teacher and student backbone stages (matrix + heat map)", cmd_cka)
