/* hakd convert: a PyTorch checkpoint (.pth / .pt) or safetensors file to safetensors. */
#include <stdio.h>
#include <string.h>

#include "command.h"
#include "hakd/io.h"

static void usage(FILE *out) {
  fprintf(out,
          "usage: hakd convert IN.pth OUT.safetensors\n"
          "Writes the state_dict of IN (a torch.save zip checkpoint; a {\"state_dict\": ...}, {\"model\": ...}\n"
          "or {\"net\": ...} checkpoint is unwrapped) as safetensors: every tensor with its name, dtype\n"
          "and shape, views and shared storages copied out contiguous. The checkpoint's pickle is read\n"
          "by a restricted reader that runs no code and refuses anything but a state_dict's contents.\n"
          "IN may also be a safetensors file (rewritten). Other commands read .pth files directly.\n");
}

int cmd_convert(int argc, char **argv) {
  if (argc == 2 && (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help"))) {
    usage(stdout);
    return 0;
  }
  if (argc != 3 || argv[1][0] == '-' || argv[2][0] == '-') {
    usage(stderr);
    return command_fail("convert takes exactly IN and OUT");
  }
  const char *in = argv[1], *out = argv[2];
  if (command_output("OUT", out)) return 1;
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
  if (!rc) rc = hakd_st_writer_write(w, out);
  if (!rc) printf("converted %s -> %s: %d tensors, %llu bytes\n", in, out, hakd_st_count(f), (unsigned long long)bytes);
  hakd_st_writer_free(w);
  hakd_st_close(f);
  return rc ? command_fail(NULL) : 0;
}

HAKD_COMMAND("convert", "a PyTorch .pth checkpoint to safetensors (restricted unpickler, no code run)", cmd_convert)
