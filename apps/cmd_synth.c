/* hakd synth: writes the synthetic dataset (docs/synth.md) in the generic layout. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "hakd/data.h"

static void synth_usage(FILE *out) {
  fprintf(out,
          "usage: hakd synth --out DIR [--train N] [--val M] [--size HxW] [--seed S]\n"
          "\n"
          "Writes a synthetic segmentation dataset in the generic layout (images/, labels/ palette\n"
          "PNGs, train.txt, val.txt, classes.txt): textured classes a CNN sees locally, disc classes\n"
          "decided by global context, a rare class, noise and ignored (255) boundaries.\n"
          "\n"
          "  --out DIR     output directory (created)\n"
          "  --train N     training images (default 200)\n"
          "  --val M       validation images (default 50)\n"
          "  --size HxW    image size (default 64x64)\n"
          "  --seed S      generator seed (default 0); the same seed writes the same files\n"
          "  -h, --help    this text\n");
}

static int parse_int(const char *text, const char *option, long min, long max, long *out) {
  char *end;
  long v = strtol(text, &end, 10);
  if (end == text || *end || v < min || v > max)
    return command_fail("%s: '%s' is not an integer in %ld..%ld", option, text, min, max);
  *out = v;
  return 0;
}

static int cmd_synth(int argc, char **argv) {
  static const struct option options[] = {{"out", required_argument, NULL, 'o'},
                                          {"train", required_argument, NULL, 't'},
                                          {"val", required_argument, NULL, 'v'},
                                          {"size", required_argument, NULL, 's'},
                                          {"seed", required_argument, NULL, 'S'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
  hakd_synth_config config = {.n_train = 200, .n_val = 50, .height = 64, .width = 64};
  long value = 0;
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "h", options, NULL)) != -1) {
    switch (opt) {
      case 'o': config.out_dir = optarg; break;
      case 't':
        if (parse_int(optarg, "--train", 0, 1000000, &value)) return 1;
        config.n_train = (int)value;
        break;
      case 'v':
        if (parse_int(optarg, "--val", 0, 1000000, &value)) return 1;
        config.n_val = (int)value;
        break;
      case 's': {
        int h, w, used = 0;
        if (sscanf(optarg, "%dx%d%n", &h, &w, &used) != 2 || optarg[used])
          return command_fail("--size: '%s' is not HxW (e.g. 64x64)", optarg);
        config.height = h;
        config.width = w;
        break;
      }
      case 'S': {
        char *end;
        config.seed = strtoull(optarg, &end, 10);
        if (end == optarg || *end) return command_fail("--seed: '%s' is not a non-negative integer", optarg);
        break;
      }
      case 'h': synth_usage(stdout); return 0;
      default: synth_usage(stderr); return 2;
    }
  }
  if (optind < argc) return command_fail("synth: unexpected argument '%s' (see hakd synth --help)", argv[optind]);
  if (!config.out_dir) return command_fail("synth: --out DIR is required (see hakd synth --help)");
  if (hakd_synth_write(&config)) return command_fail(NULL);
  printf("synth: wrote %d train + %d val images of %dx%d to %s (seed %llu)\n", config.n_train, config.n_val,
         config.height, config.width, config.out_dir, (unsigned long long)config.seed);
  return 0;
}

HAKD_COMMAND("synth", "write the synthetic dataset (generic layout)", cmd_synth)
