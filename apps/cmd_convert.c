/* hakd convert: a PyTorch checkpoint (.pth / .pt) or safetensors file to safetensors. */
#include <getopt.h>
#include <stdio.h>
#include <string.h>

#include "command.h"
#include "hakd/io.h"
#include "hakd/model.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd convert IN.pth OUT.safetensors [--model NAME] [--num-classes K] [--width W]\n"
          "                    [--aspp-dilations 12,24,36]\n"
          "Writes the state_dict of IN (a torch.save zip checkpoint; a {\"state_dict\": ...}, {\"model\": ...}\n"
          "or {\"net\": ...} checkpoint is unwrapped) as safetensors: every tensor with its name, dtype\n"
          "and shape, views and shared storages copied out contiguous. The checkpoint's pickle is read\n"
          "by a restricted reader that runs no code and refuses anything but a state_dict's contents.\n"
          "IN may also be a safetensors file (rewritten). Other commands read .pth files directly.\n"
          "With --model (or when IN is a hakd file naming its model), IN is first loaded into that model\n"
          "(strict; options not given are IN's own or inferred from its shapes) and OUT's metadata\n"
          "describes the model, so that predict, eval, export and hakd_model_open need no options.\n");
}

int cmd_convert(int argc, char **argv) {
  static const struct option options[] = {
      {"model", required_argument, 0, 'm'}, {"num-classes", required_argument, 0, 'k'},
      {"width", required_argument, 0, 'W'}, {"aspp-dilations", required_argument, 0, 'A'},
      {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
  const char *model_name = NULL;
  hakd_model_options mo;
  hakd_model_options_default(&mo);
  mo.num_classes = 0; /* 0: the file's */
  mo.width = 0;
  int c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", options, NULL)) != -1) switch (c) {
      case 'm': model_name = optarg; break;
      case 'k':
        if (command_int("--num-classes", optarg, 1, 4096, &mo.num_classes)) return 1;
        break;
      case 'W':
        if (command_float("--width", optarg, 1e-3, 4.0, &mo.width)) return 1;
        break;
      case 'A':
        if (hakd_aspp_dilations_parse(optarg, mo.aspp_dilations)) return command_fail(NULL);
        break;
      case 'h': usage(stdout); return 0;
      default: usage(stderr); return 2;
    }
  if (argc - optind != 2) {
    usage(stderr);
    return command_fail("convert takes exactly IN and OUT");
  }
  const char *in = argv[optind], *out = argv[optind + 1];
  if (command_output("OUT", out)) return 1;
  hakd_model_meta meta;
  if (hakd_model_meta_read(in, &meta)) return command_fail(NULL);
  if (!model_name && !(meta.have & HAKD_META_MODEL) && (mo.num_classes || mo.width > 0 || mo.aspp_dilations[0]))
    return command_fail("%s names no model: --num-classes, --width and --aspp-dilations describe one, give --model too", in);
  hakd_model_metadata described;
  memset(&described, 0, sizeof described);
  if (model_name || (meta.have & HAKD_META_MODEL)) {
    /* the description is written only once IN is known to load into the model it describes */
    char name[64];
    hakd_model *m = NULL;
    hakd_load_options lo;
    hakd_load_options_default(&lo);
    hakd_load_report rep;
    int rc = hakd_model_options_for_file(in, model_name, &mo, name, sizeof name);
    if (!rc) rc = hakd_model_create(name, &mo, &m);
    if (!rc) rc = hakd_model_load(m, in, &lo, &rep);
    if (!rc) hakd_model_metadata_of(m, &described);
    hakd_model_free(m);
    if (rc) {
      hakd_error_prefix("%s does not load into the model to describe", in);
      return command_fail(NULL);
    }
  }
  hakd_st_file *f = NULL;
  if (hakd_weights_open(in, &f)) return command_fail(NULL);
  hakd_st_writer *w = hakd_st_writer_new();
  int rc = w ? 0 : hakd_error(HAKD_ENOMEM, "out of memory");
  uint64_t bytes = 0;
  for (int i = 0; i < hakd_st_count(f) && !rc; i++) {
    const hakd_st_tensor *t = hakd_st_get(f, i);
    rc = hakd_st_writer_add(w, t->name, t->dtype, t->ndim, t->shape, hakd_st_data(f, t));
    bytes += t->nbytes;
  }
  /* the marker Hugging Face's safetensors writers put on PyTorch tensors */
  if (!rc) rc = hakd_st_writer_metadata(w, "format", "pt");
  for (int i = 0; described.pairs[i] && !rc; i += 2) rc = hakd_st_writer_metadata(w, described.pairs[i], described.pairs[i + 1]);
  if (!rc) rc = hakd_st_writer_write(w, out);
  if (!rc) {
    printf("converted %s -> %s: %d tensors, %llu bytes", in, out, hakd_st_count(f), (unsigned long long)bytes);
    if (described.pairs[0]) printf("; described as %s, %s classes, width %s", described.pairs[1], described.pairs[3], described.pairs[5]);
    printf("\n");
  }
  hakd_st_writer_free(w);
  hakd_st_close(f);
  return rc ? command_fail(NULL) : 0;
}

HAKD_COMMAND("convert", "a PyTorch .pth checkpoint to safetensors (restricted unpickler, no code run)", cmd_convert)
