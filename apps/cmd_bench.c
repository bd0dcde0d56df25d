/* hakd bench: throughput of one model's inference, training or distillation step, as one JSON line
 * (bench/compare_pytorch.sh runs it next to the same step in PyTorch). */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>

#include "command.h"
#include "hakd/bench.h"

static void bench_usage(void) {
  printf("usage: hakd bench --model NAME [--mode train|infer|distill] [--size HxW (512x512)] [--batch B (2)]\n"
         "                  [--teacher NAME --method M (heteroakd)] [--num-classes K (19)] [--width W (1)]\n"
         "                  [--iters N (5)] [--warmup W (2)] [--threads T] [--seed S (0)]\n"
         "                  [--precision fp32|bf16 (fp32)]\n"
         "Times W untimed and N timed steps on one random batch (inputs N(0,1), uniform labels; no data\n"
         "loading) and prints one JSON line: images_per_s = batch / median step time, ms_per_iter (median,\n"
         "also min and max), peak_rss_mb (getrusage maxrss after the timed steps), gflops achieved.\n"
         "  infer    forward pass with grad and training off (logits at the model's output stride)\n"
         "  train    forward, CE on the logits upsampled to the input size, backward, optimizer step\n"
         "           (SGD momentum 0.9 for CNNs, AdamW for transformers, as in the recipes)\n"
         "  distill  teacher forward (no grad, eval mode), then the student's train step plus the\n"
         "           distiller's terms (--method kd|cwd|fitnet|heteroakd)\n"
         "FLOPs: one multiply-add = 2 FLOPs over convolutions, linear layers and matrix products, as\n"
         "executed: products with the zero padding that the kernels skip (taps of dilated convolutions\n"
         "past the feature map, depthwise borders) are not counted (flops_per_iter, gflops);\n"
         "nominal_flops_per_iter counts every convolution in full (hakd info's MACs x 2). infer counts\n"
         "2 x MACs per image; train counts 3 x the forward FLOPs (6 x MACs: forward, backward to\n"
         "inputs, backward to weights); distill counts the teacher's\n"
         "forward plus the student's train step. --precision bf16: convolutions, linear layers and matrix\n"
         "products multiply in bfloat16 and accumulate in float32 (weights, gradients and losses stay\n"
         "float32; in infer and the teacher's forward a ResNet's or MobileNetV2's activations stay\n"
         "blocked bfloat16 from the stem to the head's classifier).\n");
}

static int cmd_bench(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'},   {"mode", required_argument, 0, 'o'},
      {"size", required_argument, 0, 's'},    {"batch", required_argument, 0, 'b'},
      {"teacher", required_argument, 0, 't'}, {"method", required_argument, 0, 'd'},
      {"num-classes", required_argument, 0, 'k'}, {"width", required_argument, 0, 'w'},
      {"iters", required_argument, 0, 'n'},   {"warmup", required_argument, 0, 'u'},
      {"threads", required_argument, 0, 'j'}, {"seed", required_argument, 0, 'r'},
      {"precision", required_argument, 0, 'p'}, {"help", no_argument, 0, 'h'}, {0, 0, 0, 0}};
  hakd_bench_config c;
  hakd_bench_config_default(&c);
  const char *size = "512x512";
  int opt;
  optind = 1;
  while ((opt = getopt_long(argc, argv, "", options, NULL)) != -1) {
    switch (opt) {
      case 'm': c.model = optarg; break;
      case 'o':
        if (hakd_bench_mode_parse(optarg, &c.mode)) return command_fail(NULL);
        break;
      case 's': size = optarg; break;
      case 'b':
        if (command_int("--batch", optarg, 1, 1 << 20, &c.batch)) return 1;
        break;
      case 't': c.teacher = optarg; break;
      case 'd':
        if (hakd_distill_method_parse(optarg, &c.method)) return command_fail(NULL);
        break;
      case 'k':
        if (command_int("--num-classes", optarg, 1, 4096, &c.num_classes)) return 1;
        break;
      case 'w':
        if (command_float("--width", optarg, 1e-3, 4.0, &c.width_mult)) return 1;
        break;
      case 'n':
        if (command_int("--iters", optarg, 1, 1 << 30, &c.iters)) return 1;
        break;
      case 'u':
        if (command_int("--warmup", optarg, 0, 1 << 30, &c.warmup)) return 1;
        break;
      case 'j':
        if (command_int("--threads", optarg, 0, 4096, &c.threads)) return 1;
        break;
      case 'r': {
        char *end;
        errno = 0;
        c.seed = strtoull(optarg, &end, 10);
        if (errno || end == optarg || *end || optarg[0] == '-')
          return command_fail("--seed '%s': expected a non-negative integer", optarg);
        break;
      }
      case 'p':
        if (hakd_precision_parse(optarg, &c.precision)) return command_fail(NULL);
        break;
      case 'h': bench_usage(); return 0;
      default: return 2;
    }
  }
  if (optind < argc) return command_fail("unexpected argument '%s' (see hakd bench --help)", argv[optind]);
  if (!c.model) return command_fail("--model is required (see hakd models)");
  if (c.mode == HAKD_BENCH_DISTILL && !c.teacher) return command_fail("--mode distill needs --teacher NAME");
  if (command_size("--size", size, &c.height, &c.width)) return 1;
  hakd_bench_result r;
  if (hakd_bench_run(&c, &r)) return command_fail(NULL);
  printf("{\"model\": \"%s\", \"mode\": \"%s\", ", c.model, hakd_bench_mode_name(c.mode));
  if (c.mode == HAKD_BENCH_DISTILL)
    printf("\"teacher\": \"%s\", \"method\": \"%s\", ", c.teacher, hakd_distill_method_name(c.method));
  printf("\"size\": \"%dx%d\", \"batch\": %d, \"images_per_s\": %.4f, \"ms_per_iter\": %.2f, \"ms_min\": %.2f, "
         "\"ms_max\": %.2f, \"peak_rss_mb\": %.1f, \"arena_mb\": %.1f, \"gflops\": %.2f, \"flops_per_iter\": %.4e, "
         "\"flops_counted\": \"executed\", \"nominal_flops_per_iter\": %.4e, \"threads\": %d, \"precision\": \"%s\", "
         "\"optimizer\": \"%s\", \"iters\": %d, \"warmup\": %d}\n",
         c.height, c.width, c.batch, r.images_per_s, r.ms_median, r.ms_min, r.ms_max, r.peak_rss_mb, r.arena_mb,
         r.gflops, r.flops_per_iter, r.nominal_flops_per_iter, r.threads, hakd_precision_name(c.precision), r.optimizer,
         c.iters, c.warmup);
  return 0;
}

HAKD_COMMAND("bench", "time a model's inference / training / distillation step (one JSON line)", cmd_bench)
