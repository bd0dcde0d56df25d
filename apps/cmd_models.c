/* hakd models / hakd info: the zoo, and parameters + FLOPs of one model at one size. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/config.h"
#include "hakd/model.h"

static int cmd_models(int argc, char **argv) {
  (void)argc;
  (void)argv;
  printf("%-20s %s\n", "name", "description");
  for (int i = 0; i < hakd_model_count(); i++)
    printf("%-20s %s\n", hakd_model_name_at(i), hakd_model_description(hakd_model_name_at(i)));
  printf("\nOptions for small experiments: --width W scales channel counts (see README).\n");
  return 0;
}

static int cmd_info(int argc, char **argv) {
  static const struct option options[] = {{"model", required_argument, 0, 'm'}, {"size", required_argument, 0, 's'},
                                          {"num-classes", required_argument, 0, 'k'}, {"width", required_argument, 0, 'w'},
                                          {"weights", required_argument, 0, 'W'}, {"help", no_argument, 0, 'h'},
                                          {0, 0, 0, 0}};
  const char *model = NULL, *size = "512x512", *weights = NULL;
  hakd_model_options o;
  hakd_model_options_default(&o);
  int c, have_classes = 0, have_width = 0;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) {
    switch (c) {
      case 'm': model = optarg; break;
      case 'W': weights = optarg; break;
      case 's': size = optarg; break;
      case 'k':
        if (command_int("--num-classes", optarg, 1, 4096, &o.num_classes)) return 1;
        have_classes = 1;
        break;
      case 'w':
        if (command_float("--width", optarg, 1e-3, 4.0, &o.width)) return 1;
        have_width = 1;
        break;
      case 'h':
        printf("usage: hakd info --model NAME [--size HxW] [--num-classes K] [--width W]\n"
               "       hakd info --weights FILE [--size HxW]\n"
               "With --weights, the model a weights file describes: its metadata's model and options\n"
               "(what training wrote), or for a file without them (.pth) --model with the class count\n"
               "and width read from its tensors' shapes. The weights are not loaded.\n"
               "Prints parameters and FLOPs at that input size. FLOPs are counted as multiply-adds\n"
               "(one multiply-add = one FLOP, the mmcv/fvcore convention) of convolutions, linear\n"
               "layers and matrix products; normalisation, activations and resizing are not counted.\n");
        return 0;
      default: return 2;
    }
  }
  if (optind < argc) return command_fail("unexpected argument '%s' (see hakd info --help)", argv[optind]);
  char resolved[64];
  if (weights) {
    /* options not given (0): the file's; a given one that contradicts it is refused */
    if (!have_classes) o.num_classes = 0;
    if (!have_width) o.width = 0;
    if (hakd_model_options_for_file(weights, model, &o, resolved, sizeof resolved)) return command_fail(NULL);
    model = resolved;
  }
  if (!model) return command_fail("--model (or --weights) is required (see hakd models)");
  int h, w;
  if (command_size("--size", size, &h, &w)) return 1;
  hakd_model *m;
  if (hakd_model_create(model, &o, &m)) return command_fail(NULL);
  if (hakd_model_check_input(m, 1, h, w, 0)) {
    hakd_model_free(m);
    return command_fail("--size %s: %s", size, hakd_error_message());
  }
  int64_t macs = hakd_model_macs(m, h, w);
  if (macs < 0) {
    hakd_model_free(m);
    return command_fail(NULL);
  }
  printf("model        %s (%s)\n", model, hakd_model_family(m));
  printf("classes      %d\n", o.num_classes);
  if (weights) {
    hakd_model_metadata d;
    hakd_model_metadata_of(m, &d);
    printf("options     ");
    for (int i = 2; d.pairs[i]; i += 2) printf(" %s=%s", d.pairs[i], d.pairs[i + 1]);
    printf("\nweights      %s\n", weights);
  }
  printf("input        1x3x%dx%d\n", h, w);
  printf("params       %.3fM (%lld)\n", (double)hakd_params_count(hakd_model_params(m)) / 1e6,
         (long long)hakd_params_count(hakd_model_params(m)));
  printf("FLOPs        %.3fG multiply-adds (%lld)\n", (double)macs / 1e9, (long long)macs);
  printf("stages       ");
  for (int s = 1; s <= 4; s++)
    printf("%s%d: %d ch, stride %d", s > 1 ? "; " : "", s, hakd_model_stage_channels(m, s), hakd_model_stage_stride(m, s));
  printf("\noutput       stride %d\n", hakd_model_output_stride(m));
  printf("min input    %dx%d; training at %dx%d needs a batch of at least %d\n", hakd_model_min_input(m),
         hakd_model_min_input(m), h, w, hakd_model_min_train_batch(m, h, w));
  hakd_model_free(m);
  return 0;
}

HAKD_COMMAND("models", "list the model zoo", cmd_models)
HAKD_COMMAND("info", "parameters and FLOPs of a model at an input size", cmd_info)
