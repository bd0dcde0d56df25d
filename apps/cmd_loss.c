/* hakd loss: one distillation loss (HeteroAKD, KD, CWD) on logits stored as .npy files, with its
 * gradient and KEM weight map; the user-facing check of the loss definitions. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/distill.h"
#include "hakd/io.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd loss --method heteroakd|kd|cwd --student S.npy --teacher T.npy [--labels Y.npy]\n"
          "                 [--T 4] [--reliability ce|bce] [--kem-axis spatial|class] [--no-kmm] [--no-kem]\n"
          "                 [--ignore-index 255] [--grad-out G.npy] [--weights-out W.npy]\n\n"
          "Prints {\"loss\": value} for student logits S and teacher logits T, float (N, K, h, w).\n"
          "heteroakd: S, T are the projected logits Z_s, Z_t; T and the labels (any integer dtype,\n"
          "(N, H, W), required) are resized to S's grid (bilinear / nearest). kd and cwd resize T\n"
          "bilinearly to S's grid when it differs and take no labels.\n"
          "  --T               temperature [4]\n"
          "  --reliability     heteroakd reliability: ce | bce [ce]\n"
          "  --kem-axis        KEM softmax axis: spatial | class (bce only) [spatial]\n"
          "  --no-kmm          ablation: Z_hyb = Z_t\n"
          "  --no-kem          ablation: uniform weights over the valid pixels\n"
          "  --ignore-index    label value of unlabelled pixels [255]\n"
          "  --grad-out        write dLoss/dS (float32, S's shape)\n"
          "  --weights-out     write the KEM weight map W (heteroakd; (N, h, w) ce, (N, K, h, w) bce)\n");
}

/* Reads logits: float32/float64, 4-D, finite; converted into a step tensor. */
static int read_logits(hakd_ctx *ctx, const char *path, hakd_tensor **out) {
  hakd_npy a;
  if (hakd_npy_read(path, &a)) return command_fail(NULL);
  char shape[128];
  command_npy_shape(&a, shape, sizeof shape);
  int rc = 0;
  float *data = NULL;
  if (a.dtype != HAKD_NPY_F32 && a.dtype != HAKD_NPY_F64)
    rc = command_fail("%s: dtype %s, expected float32 logits", path, hakd_npy_dtype_name(a.dtype));
  else if (a.ndim != 4)
    rc = command_fail("%s: shape %s, expected logits (N, K, h, w)", path, shape);
  else if (hakd_npy_numel(&a) == 0) /* a loss over nothing would print 0 as if it were a result */
    rc = command_fail("%s: shape %s is empty, expected logits (N, K, h, w) with every size >= 1", path, shape);
  else if (hakd_npy_to_f32(&a, &data))
    rc = command_fail("%s: %s", path, hakd_error_message());
  if (!rc) {
    int64_t n = hakd_npy_numel(&a);
    for (int64_t i = 0; i < n && !rc; i++)
      if (!isfinite(data[i])) rc = command_fail("%s: element %lld is %g (logits must be finite)", path, (long long)i, data[i]);
  }
  if (!rc) {
    *out = hakd_tensor_from(ctx, HAKD_F32, 4, a.shape, data);
    if (!*out) rc = command_fail(NULL);
  }
  free(data);
  hakd_npy_free(&a);
  return rc;
}

/* Reads labels: any integer dtype, (N, H, W) with S's N, values in [0, K) or the ignore index. */
static int read_labels(hakd_ctx *ctx, const char *path, const hakd_tensor *s, const char *s_path, int ignore_index,
                       hakd_tensor **out) {
  hakd_npy a;
  if (hakd_npy_read(path, &a)) return command_fail(NULL);
  char shape[128];
  command_npy_shape(&a, shape, sizeof shape);
  int rc = 0;
  int32_t *data = NULL;
  if (a.dtype == HAKD_NPY_F32 || a.dtype == HAKD_NPY_F64)
    rc = command_fail("%s: dtype %s, expected integer labels", path, hakd_npy_dtype_name(a.dtype));
  else if (a.ndim != 3 || a.shape[0] != s->shape[0])
    rc = command_fail("%s: shape %s, expected labels (N, H, W) with N = %lld as in %s", path, shape,
                      (long long)s->shape[0], s_path);
  else if (hakd_npy_numel(&a) == 0)
    rc = command_fail("%s: shape %s is empty, expected labels (N, H, W) with every size >= 1", path, shape);
  else if (hakd_npy_to_i32(&a, &data))
    rc = command_fail("%s: %s", path, hakd_error_message());
  if (!rc) {
    int64_t n = hakd_npy_numel(&a), h = a.shape[1], w = a.shape[2], k = s->shape[1];
    for (int64_t i = 0; i < n && !rc; i++)
      if (data[i] != ignore_index && (data[i] < 0 || data[i] >= k))
        rc = command_fail("%s: label %d at (%lld, %lld, %lld) is outside [0, %lld) (K from %s) and not the ignore index %d",
                          path, data[i], (long long)(i / (h * w)), (long long)(i / w % h), (long long)(i % w),
                          (long long)k, s_path, ignore_index);
  }
  if (!rc) {
    *out = hakd_tensor_from(ctx, HAKD_I32, 3, a.shape, data);
    if (!*out) rc = command_fail(NULL);
  }
  free(data);
  hakd_npy_free(&a);
  return rc;
}

typedef struct {
  const char *method, *student, *teacher, *labels, *grad_out, *weights_out;
  hakd_hakd_loss_options o;
} loss_args;

/* Returns 0, 1 (error printed) or 2 (usage error printed), -1 for --help. */
static int parse_args(int argc, char **argv, loss_args *a) {
  memset(a, 0, sizeof *a);
  hakd_hakd_loss_options_default(&a->o);
  for (int i = 1; i < argc; i++) {
    const char *flag = argv[i];
    if (!strcmp(flag, "--help") || !strcmp(flag, "-h")) return -1;
    if (!strcmp(flag, "--no-kmm")) {
      a->o.no_kmm = 1;
      continue;
    }
    if (!strcmp(flag, "--no-kem")) {
      a->o.no_kem = 1;
      continue;
    }
    const char **target = !strcmp(flag, "--method")        ? &a->method
                          : !strcmp(flag, "--student")     ? &a->student
                          : !strcmp(flag, "--teacher")     ? &a->teacher
                          : !strcmp(flag, "--labels")      ? &a->labels
                          : !strcmp(flag, "--grad-out")    ? &a->grad_out
                          : !strcmp(flag, "--weights-out") ? &a->weights_out
                                                           : NULL;
    int known = target || !strcmp(flag, "--T") || !strcmp(flag, "--reliability") || !strcmp(flag, "--kem-axis") ||
                !strcmp(flag, "--ignore-index");
    if (!known) {
      command_fail("unknown option '%s' (see hakd loss --help)", flag);
      return 2;
    }
    if (i + 1 >= argc) {
      command_fail("%s needs a value", flag);
      return 2;
    }
    const char *value = argv[++i];
    char *end;
    if (target) {
      *target = value;
    } else if (!strcmp(flag, "--T")) {
      a->o.T = strtof(value, &end);
      if (*end || end == value || !(a->o.T > 0.0f) || !isfinite(a->o.T))
        return command_fail("--T %s: expected a positive number", value);
    } else if (!strcmp(flag, "--ignore-index")) {
      long v = strtol(value, &end, 10);
      if (*end || end == value || v < -2147483647L || v > 2147483647L)
        return command_fail("--ignore-index %s: expected an integer", value);
      a->o.ignore_index = (int)v;
    } else if (!strcmp(flag, "--reliability")) {
      if (hakd_reliability_parse(value, &a->o.reliability)) return command_fail(NULL);
    } else if (hakd_kem_axis_parse(value, &a->o.kem_axis)) {
      return command_fail(NULL);
    }
  }
  if (!a->method || !a->student || !a->teacher) {
    command_fail("--method, --student and --teacher are required (see hakd loss --help)");
    return 2;
  }
  int hakd = !strcmp(a->method, "heteroakd");
  if (!hakd && strcmp(a->method, "kd") && strcmp(a->method, "cwd"))
    return command_fail("--method %s: expected heteroakd, kd or cwd", a->method);
  if (hakd && !a->labels) return command_fail("--method heteroakd needs --labels");
  if (!hakd && (a->labels || a->weights_out))
    return command_fail("--labels and --weights-out apply to --method heteroakd only");
  if (a->o.kem_axis == HAKD_KEM_AXIS_CLASS && a->o.reliability != HAKD_RELIABILITY_BCE)
    return command_fail("--kem-axis class needs --reliability bce");
  if (command_output("--grad-out", a->grad_out) || command_output("--weights-out", a->weights_out)) return 1;
  return 0;
}

static int write_tensor(const char *path, const hakd_tensor *t, const float *data) {
  if (hakd_npy_write(path, HAKD_NPY_F32, t->ndim, t->shape, data)) return command_fail(NULL);
  return 0;
}

static int run(hakd_ctx *ctx, const loss_args *a) {
  hakd_tensor *s = NULL, *t = NULL, *labels = NULL, *weights = NULL, *loss = NULL;
  if (read_logits(ctx, a->student, &s) || read_logits(ctx, a->teacher, &t)) return 1;
  if (s->shape[0] != t->shape[0] || s->shape[1] != t->shape[1]) {
    char ss[64], ts[64];
    return command_fail("%s: shape %s does not match %s %s in N or K", a->teacher, hakd_shape_str(t, ts, sizeof ts),
                        a->student, hakd_shape_str(s, ss, sizeof ss));
  }
  if (a->labels && read_labels(ctx, a->labels, s, a->student, a->o.ignore_index, &labels)) return 1;
  s->requires_grad = 1; /* a leaf: backward leaves dLoss/dS in s->grad */
  if (!strcmp(a->method, "heteroakd"))
    loss = hakd_loss_hakd(ctx, s, t, labels, &a->o, &weights);
  else if (!strcmp(a->method, "kd"))
    loss = hakd_loss_kd(ctx, s, t, a->o.T);
  else
    loss = hakd_loss_cwd(ctx, s, t, a->o.T);
  if (!loss) return command_fail(NULL);
  if (a->grad_out) {
    if (hakd_backward(ctx, loss)) return command_fail(NULL);
    if (write_tensor(a->grad_out, s, s->grad)) return 1;
  }
  if (a->weights_out && write_tensor(a->weights_out, weights, hakd_f32(weights))) {
    /* the run failed: leave no output of it, not even the complete gradient file */
    if (a->grad_out) remove(a->grad_out);
    return 1;
  }
  printf("{\"loss\": %.9g}\n", (double)hakd_f32(loss)[0]);
  return 0;
}

static int cmd_loss(int argc, char **argv) {
  loss_args a;
  int rc = parse_args(argc, argv, &a);
  if (rc < 0) {
    usage(stdout);
    return 0;
  }
  if (rc) return rc;
  hakd_ctx *ctx = hakd_ctx_new();
  if (!ctx) return command_fail("out of memory");
  rc = run(ctx, &a);
  hakd_ctx_free(ctx);
  return rc;
}

HAKD_COMMAND("loss", "evaluate a distillation loss (heteroakd|kd|cwd) on .npy logits", cmd_loss)
