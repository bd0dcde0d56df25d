/* ONNX export (hakd export, include/hakd/onnx.h) without onnx or onnxruntime: tiny models of every
 * family are exported and the file is parsed back with our protobuf reader to check what a runtime
 * relies on: IR version and opset, one input (N, 3, H, W) and one output with the forward's logits
 * shape and a symbolic batch, every node input defined before use, initializer byte sizes matching
 * their dims, and the parameter values equal to the model's parameter count after BatchNorm
 * folding. Numerical agreement with onnxruntime is checked by tools/check_onnx.sh (README). Bad
 * inputs of the CLI (unknown model, bad sizes, unwritable or failing output) leave no file. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"
#include "hakd/model.h"
#include "hakd/onnx.h"
#include "interop/protobuf.h"

typedef struct {
  char **names;
  int n, cap;
} name_set;

static void names_add(name_set *s, const uint8_t *data, size_t size) {
  if (s->n == s->cap) {
    s->cap = s->cap ? 2 * s->cap : 256;
    s->names = realloc(s->names, (size_t)s->cap * sizeof *s->names);
  }
  s->names[s->n] = malloc(size + 1);
  memcpy(s->names[s->n], data, size);
  s->names[s->n++][size] = '\0';
}

static int names_has(const name_set *s, const uint8_t *data, size_t size) {
  for (int i = 0; i < s->n; i++)
    if (strlen(s->names[i]) == size && !memcmp(s->names[i], data, size)) return 1;
  return 0;
}

static void names_free(name_set *s) {
  for (int i = 0; i < s->n; i++) free(s->names[i]);
  free(s->names);
}

typedef struct {
  int64_t ir_version, opset;
  int nodes, initializers, inputs, outputs;
  int undefined_inputs, bad_raw_sizes, duplicate_names;
  int64_t parameter_values, constant_values;
  char input_name[32], output_name[32];
  int64_t input_dims[4], output_dims[4]; /* -1: symbolic */
  char batch_param[2][8];
  int input_ndim, output_ndim;
} onnx_summary;

/* ValueInfoProto -> name and dims (a dim_param is -1, its name kept in param). */
static int parse_value_info(pb_field *f, char *name, int64_t dims[4], int *ndim, char param[8]) {
  pb_reader r = pb_sub(f);
  pb_field a, b, c, d, e;
  int rc;
  *ndim = 0;
  while ((rc = pb_next(&r, &a)) == 1) {
    if (a.field == 1) snprintf(name, 32, "%.*s", (int)a.size, (const char *)a.data);
    if (a.field != 2) continue;
    pb_reader type = pb_sub(&a);
    while (pb_next(&type, &b) == 1) {
      if (b.field != 1) continue; /* tensor_type */
      pb_reader tensor = pb_sub(&b);
      while (pb_next(&tensor, &c) == 1) {
        if (c.field != 2) continue; /* shape */
        pb_reader shape = pb_sub(&c);
        while (pb_next(&shape, &d) == 1) {
          pb_reader dim = pb_sub(&d);
          while (pb_next(&dim, &e) == 1 && *ndim < 4) {
            if (e.field == 1) dims[(*ndim)++] = (int64_t)e.value;
            if (e.field == 2) {
              snprintf(param, 8, "%.*s", (int)e.size, (const char *)e.data);
              dims[(*ndim)++] = -1;
            }
          }
        }
      }
    }
  }
  return rc;
}

static int parse_onnx(const char *path, onnx_summary *s) {
  memset(s, 0, sizeof *s);
  FILE *fp = fopen(path, "rb");
  if (!fp) return -1;
  fseek(fp, 0, SEEK_END);
  long size = ftell(fp);
  fseek(fp, 0, SEEK_SET);
  uint8_t *data = malloc((size_t)size);
  if (fread(data, 1, (size_t)size, fp) != (size_t)size) size = -1;
  fclose(fp);
  if (size < 0) return free(data), -1;
  pb_reader model = {data, data + size};
  pb_field f, g, h;
  int rc, status = 0;
  name_set defined = {0}, initializer_names = {0};
  while ((rc = pb_next(&model, &f)) == 1) {
    if (f.field == 1) s->ir_version = (int64_t)f.value;
    if (f.field == 8) {
      pb_reader op = pb_sub(&f);
      while (pb_next(&op, &g) == 1)
        if (g.field == 2) s->opset = (int64_t)g.value;
    }
    if (f.field != 7) continue;
    /* the graph: inputs and initializers first (any order in the file), then nodes in order */
    for (int pass = 0; pass < 2; pass++) {
      pb_reader graph = pb_sub(&f);
      while ((rc = pb_next(&graph, &g)) == 1) {
        if (pass == 0 && g.field == 11) {
          s->inputs++;
          parse_value_info(&g, s->input_name, s->input_dims, &s->input_ndim, s->batch_param[0]);
          names_add(&defined, (const uint8_t *)s->input_name, strlen(s->input_name));
        } else if (pass == 0 && g.field == 12) {
          s->outputs++;
          parse_value_info(&g, s->output_name, s->output_dims, &s->output_ndim, s->batch_param[1]);
        } else if (pass == 0 && g.field == 5) {
          s->initializers++;
          pb_reader t = pb_sub(&g);
          int64_t numel = 1, dtype = 0;
          size_t raw = 0;
          const uint8_t *name = NULL;
          size_t name_size = 0;
          while (pb_next(&t, &h) == 1) {
            if (h.field == 1) numel *= (int64_t)h.value;
            if (h.field == 2) dtype = (int64_t)h.value;
            if (h.field == 8) name = h.data, name_size = h.size;
            if (h.field == 9) raw = h.size;
          }
          if (raw != (size_t)numel * (dtype == 7 ? 8 : 4)) s->bad_raw_sizes++;
          if (names_has(&initializer_names, name, name_size)) s->duplicate_names++;
          names_add(&initializer_names, name, name_size);
          names_add(&defined, name, name_size);
          if (name_size > 6 && !memcmp(name, "const.", 6))
            s->constant_values += numel;
          else
            s->parameter_values += numel;
        } else if (pass == 1 && g.field == 1) {
          s->nodes++;
          pb_reader node = pb_sub(&g);
          while (pb_next(&node, &h) == 1) {
            /* "" is an omitted optional input (Resize's roi and scales) */
            if (h.field == 1 && h.size && !names_has(&defined, h.data, h.size)) s->undefined_inputs++;
            if (h.field == 2) names_add(&defined, h.data, h.size);
          }
        }
      }
      if (rc < 0) status = -1;
    }
  }
  if (rc < 0) status = -1;
  if (!names_has(&defined, (const uint8_t *)s->output_name, strlen(s->output_name))) s->undefined_inputs++;
  names_free(&defined);
  names_free(&initializer_names);
  free(data);
  return status;
}

/* Parameter values of the inference graph: every parameter but BatchNorm's running statistics,
 * and per BatchNorm one bias (its weight and bias fold into the conv's weight and a bias). */
static int64_t folded_parameter_count(hakd_model *m) {
  const hakd_params *p = hakd_model_params(m);
  int64_t total = 0;
  for (int i = 0; i < p->count; i++) {
    const hakd_tensor *t = p->items[i];
    const char *dot = strrchr(t->name, '.');
    if (!strcmp(dot, ".running_mean") || !strcmp(dot, ".running_var") || !strcmp(dot, ".num_batches_tracked"))
      continue;
    if (!strcmp(dot, ".bias")) {
      char stats[256];
      snprintf(stats, sizeof stats, "%.*s.running_mean", (int)(dot - t->name), t->name);
      if (hakd_params_find(p, stats)) continue; /* the BatchNorm's bias and weight become one bias */
    }
    total += hakd_numel(t);
  }
  return total;
}

static void export_and_check(const char *name, float width, int K, int H, int W, int deep_stem) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = K;
  o.width = width;
  o.aux_head = 0;
  o.deep_stem = deep_stem;
  o.aspp_dilations[0] = 1, o.aspp_dilations[1] = 2, o.aspp_dilations[2] = 3;
  hakd_model *m;
  ASSERT_OK(hakd_model_create(name, &o, &m));
  char path[700];
  snprintf(path, sizeof path, "%s/%s.onnx", test_tmpdir(), name);
  hakd_onnx_report rep;
  ASSERT_OK(hakd_onnx_export(m, H, W, path, &rep));
  /* the forward's logits shape at the same size */
  hakd_ctx *ctx = hakd_ctx_new();
  hakd_ctx_set_grad(ctx, 0);
  hakd_ctx_set_training(ctx, 0);
  hakd_tensor *x = hakd_tensor_zeros(ctx, HAKD_F32, 4, (int64_t[]){1, 3, H, W});
  hakd_model_output out;
  ASSERT_OK(hakd_model_forward(m, ctx, x, &out));
  onnx_summary s;
  ASSERT_EQ_INT(parse_onnx(path, &s), 0);
  ASSERT_EQ_INT(s.ir_version, 8);
  ASSERT_EQ_INT(s.opset, HAKD_ONNX_OPSET);
  ASSERT_TRUE(s.opset >= 13);
  ASSERT_EQ_INT(s.nodes, rep.nodes);
  ASSERT_EQ_INT(s.initializers, rep.initializers);
  ASSERT_EQ_INT(s.inputs, 1);
  ASSERT_EQ_INT(s.outputs, 1);
  ASSERT_TRUE(!strcmp(s.input_name, "input") && !strcmp(s.output_name, "logits"));
  ASSERT_EQ_INT(s.input_ndim, 4);
  ASSERT_EQ_INT(s.output_ndim, 4);
  /* batch symbolic (the same name on both sides), the rest fixed */
  ASSERT_TRUE(s.input_dims[0] == -1 && s.output_dims[0] == -1 && !strcmp(s.batch_param[0], s.batch_param[1]));
  ASSERT_EQ_INT(s.input_dims[1], 3);
  ASSERT_EQ_INT(s.input_dims[2], H);
  ASSERT_EQ_INT(s.input_dims[3], W);
  for (int d = 1; d < 4; d++) ASSERT_EQ_INT(s.output_dims[d], out.logits->shape[d]);
  ASSERT_EQ_INT(s.undefined_inputs, 0);
  ASSERT_EQ_INT(s.bad_raw_sizes, 0);
  ASSERT_EQ_INT(s.duplicate_names, 0);
  ASSERT_EQ_INT(s.parameter_values, folded_parameter_count(m));
  ASSERT_EQ_INT(s.parameter_values, rep.parameter_values);
  ASSERT_EQ_INT(s.constant_values, rep.constant_values);
  hakd_ctx_free(ctx);
  hakd_model_free(m);
}

TEST(export_segformer_b0_structure) { export_and_check("segformer-b0", 0.25f, 3, 40, 48, 0); }
TEST(export_deeplabv3_r18_structure) { export_and_check("deeplabv3-r18-d8", 0.125f, 4, 24, 32, 0); }
TEST(export_deeplabv3_mbv2_structure) { export_and_check("deeplabv3-mbv2", 0.25f, 4, 24, 32, 0); }
/* 3x4 map: PSP's 2, 3 and 6 bins are uneven there (the pooling-matrix path) */
TEST(export_pspnet_r18_structure) { export_and_check("pspnet-r18-d8", 0.125f, 4, 24, 32, 0); }
TEST(export_fcn_r50_deep_stem_structure) { export_and_check("fcn-r50-d8", 0.0625f, 2, 16, 16, 1); }
TEST(export_deeplabv3_mit_b0_structure) { export_and_check("deeplabv3-mit-b0", 0.25f, 2, 32, 32, 0); }

/* Runs the CLI; returns its exit status, stderr in err. */
static int run_cli(const char *args, char *err, size_t size) {
  const char *cli = getenv("HAKD_CLI");
  char cmd[4096];
  snprintf(cmd, sizeof cmd, "%s %s", cli ? cli : "hakd", args);
  return test_run_capture(cmd, err, size);
}

static int exists(const char *path) {
  struct stat sb;
  return stat(path, &sb) == 0;
}

TEST(export_cli_bad_inputs_leave_no_file) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 2;
  o.width = 0.25f;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("segformer-b0", &o, &m));
  char weights[700], out[700], args[3000], err[8192];
  snprintf(weights, sizeof weights, "%s/w.safetensors", test_tmpdir());
  snprintf(out, sizeof out, "%s/m.onnx", test_tmpdir());
  ASSERT_OK(hakd_params_save(hakd_model_params(m), weights, NULL));
  hakd_model_free(m);
  const char *common = "--num-classes 2 --width 0.25";
  struct {
    const char *args, *message;
  } cases[] = {
      {"--model no-such-model --size 32x32", "unknown model 'no-such-model'"},
      {"--model segformer-b0 --size 0x32", "--size '0x32'"},
      {"--model segformer-b0 --size big", "--size 'big'"},
      /* MiT's spatial reduction needs a 29x29 input: the message says so */
      {"--model segformer-b0 --size 16x16", "smaller than the smallest input"},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    snprintf(args, sizeof args, "export %s %s --weights %s --out %s", cases[i].args, common, weights, out);
    int rc = run_cli(args, err, sizeof err);
    if (rc == 0 || !strstr(err, cases[i].message))
      test_fail(__FILE__, __LINE__, "`%s` exited %d: %s", args, rc, err);
    ASSERT_TRUE(rc != 0);
    ASSERT_TRUE(!exists(out));
  }
  /* weights of another width: refused naming the key, no file */
  snprintf(args, sizeof args, "export --model segformer-b0 --num-classes 2 --width 0.5 --weights %s --size 32x32 --out %s",
           weights, out);
  ASSERT_TRUE(run_cli(args, err, sizeof err) != 0);
  ASSERT_TRUE(strstr(err, "shape") != NULL);
  ASSERT_TRUE(!exists(out));
  /* unwritable outputs: a missing directory, an existing directory */
  snprintf(args, sizeof args, "export --model segformer-b0 %s --weights %s --size 32x32 --out %s/no/such/dir/m.onnx",
           common, weights, test_tmpdir());
  ASSERT_TRUE(run_cli(args, err, sizeof err) != 0);
  ASSERT_TRUE(strstr(err, "--out") != NULL);
  snprintf(args, sizeof args, "export --model segformer-b0 %s --weights %s --size 32x32 --out %s", common, weights,
           test_tmpdir());
  ASSERT_TRUE(run_cli(args, err, sizeof err) != 0);
  /* and the good command writes the file */
  snprintf(args, sizeof args, "export --model segformer-b0 %s --weights %s --size 32x32 --out %s", common, weights, out);
  int rc = run_cli(args, err, sizeof err);
  if (rc) test_fail(__FILE__, __LINE__, "export failed: %s", err);
  ASSERT_EQ_INT(rc, 0);
  ASSERT_TRUE(exists(out));
  onnx_summary s;
  ASSERT_EQ_INT(parse_onnx(out, &s), 0);
  ASSERT_EQ_INT(s.output_dims[2], 8); /* stride 4 of 32 */
}

/* The library call with a failing write (a path under a file) returns an error naming the path
 * and leaves neither the file nor its temporary. */
TEST(export_library_errors) {
  hakd_model_options o;
  hakd_model_options_default(&o);
  o.num_classes = 2;
  o.width = 0.125f;
  hakd_model *m;
  ASSERT_OK(hakd_model_create("deeplabv3-r18-d8", &o, &m));
  char blocker[700], path[800];
  snprintf(blocker, sizeof blocker, "%s/file", test_tmpdir());
  FILE *f = fopen(blocker, "w");
  ASSERT_TRUE(f != NULL);
  fclose(f);
  snprintf(path, sizeof path, "%s/m.onnx", blocker);
  ASSERT_TRUE(hakd_onnx_export(m, 16, 16, path, NULL) != 0);
  ASSERT_TRUE(strstr(hakd_error_message(), path) != NULL);
  ASSERT_TRUE(hakd_onnx_export(m, 0, 16, path, NULL) == HAKD_ESHAPE);
  ASSERT_TRUE(hakd_onnx_export(m, 16, 16, "", NULL) != 0);
  hakd_model_free(m);
}

/* Malformed protobuf input to the reader: truncated varints and lengths past the end. */
TEST(protobuf_reader_refuses_truncation) {
  pb_buf b = {0};
  pb_string(&b, 3, "hello");
  pb_int(&b, 1, -5);
  pb_float(&b, 2, 1.5f);
  ASSERT_TRUE(pb_ok(&b));
  pb_reader r = {b.data, b.data + b.size};
  pb_field f;
  ASSERT_EQ_INT(pb_next(&r, &f), 1);
  ASSERT_TRUE(f.field == 3 && f.size == 5 && !memcmp(f.data, "hello", 5));
  ASSERT_EQ_INT(pb_next(&r, &f), 1);
  ASSERT_EQ_INT((int64_t)f.value, -5);
  ASSERT_EQ_INT(pb_next(&r, &f), 1);
  float v;
  uint32_t bits = (uint32_t)f.value;
  memcpy(&v, &bits, 4);
  ASSERT_TRUE(v == 1.5f);
  ASSERT_EQ_INT(pb_next(&r, &f), 0);
  for (size_t cut = 1; cut < 7; cut++) { /* inside the string field */
    pb_reader t = {b.data, b.data + cut};
    ASSERT_EQ_INT(pb_next(&t, &f), -1);
  }
  pb_free(&b);
}
