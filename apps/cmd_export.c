/* hakd export: a model with imported weights as an ONNX inference graph (include/hakd/onnx.h). */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "command.h"
#include "hakd/model.h"
#include "hakd/onnx.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd export --weights FILE --size HxW --out MODEL.onnx [--model NAME] [--num-classes K]\n"
          "                   [--width W] [--aspp-dilations 12,24,36] [--weights-prefix FROM=TO]\n"
          "The model and its options default to what FILE's metadata says (every file hakd writes\n"
          "carries them); a given one that contradicts it is refused. A file without them (.pth) needs\n"
          "--model; its class count and width are read from its tensors' shapes unless given.\n"
          "Writes the inference graph as ONNX (opset %d): input \"input\" float32 (N, 3, H, W), normalised as\n"
          "for `hakd predict` with a .npy input, batch N open; output \"logits\" (N, K, h, w) at the model's\n"
          "output stride, the tensor `hakd predict --save-logits` writes. BatchNorm is folded into the convs.\n",
          HAKD_ONNX_OPSET);
}

int cmd_export(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'},      {"num-classes", required_argument, 0, 'k'},
      {"weights", required_argument, 0, 'w'},    {"size", required_argument, 0, 's'},
      {"out", required_argument, 0, 'o'},        {"width", required_argument, 0, 'W'},
      {"aspp-dilations", required_argument, 0, 'A'}, {"weights-prefix", required_argument, 0, 'p'},
      {"help", no_argument, 0, 'h'},             {0, 0, 0, 0}};
  const char *model_name = NULL, *weights = NULL, *out = NULL, *prefix = NULL, *size = NULL;
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = 0; /* 0: the weights file's (hakd_model_options_for_file) */
  mo.width = 0;
  int H = 0, W = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'm': model_name = optarg; break;
      case 'k':
        if (command_int("--num-classes", optarg, 1, 4096, &mo.num_classes)) return 1;
        break;
      case 'w': weights = optarg; break;
      case 's':
        size = optarg;
        if (command_size("--size", optarg, &H, &W)) return 1;
        break;
      case 'o': out = optarg; break;
      case 'W':
        if (command_float("--width", optarg, 1e-3, 4.0, &mo.width)) return 1;
        break;
      case 'A':
        if (hakd_aspp_dilations_parse(optarg, mo.aspp_dilations)) return command_fail(NULL);
        break;
      case 'p': prefix = optarg; break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  if (optind < argc) return command_fail("unexpected argument '%s' (see hakd export --help)", argv[optind]);
  if (!weights || !size || !out) {
    usage(stderr);
    return command_fail("--weights, --size and --out are required");
  }
  if (command_output("--out", out)) return 1;
  hakd_model *m = NULL;
  char resolved[64];
  if (hakd_model_options_for_file(weights, model_name, &mo, resolved, sizeof resolved)) return command_fail(NULL);
  model_name = resolved;
  if (hakd_model_create(model_name, &mo, &m)) return command_fail(NULL);
  int rc = 1;
  /* a size the model cannot take fails before the weights are read */
  if (hakd_model_check_input(m, 1, H, W, 0)) goto done;
  hakd_load_options lo;
  hakd_load_options_default(&lo);
  lo.key_map = prefix;
  hakd_load_report rep;
  if (hakd_model_load(m, weights, &lo, &rep)) goto done;
  hakd_onnx_report r;
  if (hakd_onnx_export(m, H, W, out, &r)) goto done;
  printf("%s: %s at %dx%d, opset %d, %d nodes, %d initializers (%lld parameter values), %lld bytes\n", out, model_name,
         H, W, r.opset, r.nodes, r.initializers, (long long)r.parameter_values, (long long)r.file_bytes);
  rc = 0;
done:
  if (rc) command_fail(NULL);
  hakd_model_free(m);
  return rc;
}

HAKD_COMMAND("export", "write a model's inference graph as ONNX", cmd_export)
