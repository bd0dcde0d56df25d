/* Fuzzes the config-file parser (hakd_config_load: `key = value` lines, comments, quotes,
 * every key type), then validation of what it accepted, and the round trip that resuming
 * relies on: a configuration written by hakd_config_write reads back identically. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "hakd/config.h"

/* hakd_config_write's text of c, malloc'ed. */
static char *config_text(const hakd_config *c, size_t *len) {
  char *text = NULL;
  FILE *fp = open_memstream(&text, len);
  FUZZ_ASSERT(fp != NULL);
  FUZZ_ASSERT(hakd_config_write(c, fp) == 0);
  FUZZ_ASSERT(fclose(fp) == 0);
  return text;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const char *path = fuzz_input_path(data, size);
  hakd_config c;
  hakd_config_default(&c);
  int status = hakd_config_load(&c, path);
  if (status) {
    fuzz_check_error("hakd_config_load", status, path);
    return 0;
  }
  /* Validation may refuse (no model, bad sizes...) but must not crash; its messages name keys. */
  (void)hakd_config_validate(&c, 0);
  (void)hakd_config_validate(&c, 1);

  size_t len;
  char *text = config_text(&c, &len);
  hakd_config again;
  hakd_config_default(&again);
  const char *saved = fuzz_input_path((const uint8_t *)text, len);
  status = hakd_config_load(&again, saved);
  if (status) {
    fprintf(stderr, "fuzz: the written configuration does not load back: %s\n--- written:\n%s", hakd_error_message(),
            text);
    abort();
  }
  size_t len2;
  char *text2 = config_text(&again, &len2);
  if (len != len2 || memcmp(text, text2, len) != 0) {
    fprintf(stderr, "fuzz: the configuration changed on a write/load round trip\n--- first:\n%s--- second:\n%s", text,
            text2);
    abort();
  }
  free(text);
  free(text2);
  return 0;
}
