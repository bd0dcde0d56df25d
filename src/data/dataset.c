/* Datasets in their real on-disk layouts: item listing and decoding with the label
 * conventions of each (mmsegmentation's). */
#include <stdlib.h>
#include <string.h>

#include "data/classes.h"
#include "data/files.h"
#include "hakd/data.h"
#include "hakd/io.h"

/* How stored label values become train ids. */
typedef enum {
  LABEL_AS_IS,          /* values are train ids already (VOC, generic, Cityscapes labelTrainIds) */
  LABEL_CITYSCAPES_IDS, /* Cityscapes labelIds: 19 evaluated ids -> 0..18, the rest -> 255 */
  LABEL_REDUCE_ZERO,    /* ADE20K: 0 -> 255, k -> k-1 (255 stays ignore) */
  LABEL_CAMVID          /* CamVid SegNet: 11 (void) -> 255 */
} label_mapping;

struct hakd_dataset {
  const char *name; /* canonical */
  char *split;
  int num_classes;
  const char *const *class_names;
  const uint8_t *palette;
  char **owned_class_names; /* generic: the parsed classes.txt (owned_count entries) */
  int owned_count;
  uint8_t *owned_palette;
  hakd__strings images, labels; /* full paths; "" = no label given */
  uint8_t *mappings;            /* label_mapping of each item */
};

/* ---- listing per layout --------------------------------------------------------------- */

static const char *const image_suffixes[] = {".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", NULL};

static int require_dir(const char *path) {
  if (!hakd__is_dir(path)) return hakd_error(HAKD_ENOTFOUND, "%s: directory not found", path);
  return 0;
}

/* Adds one item; takes both strings. */
static int add_item(hakd_dataset *ds, char *image, char *label, label_mapping mapping) {
  if (!image || !label) {
    free(image);
    free(label);
    return hakd_error(HAKD_ENOMEM, "out of memory listing %s", ds->name);
  }
  int status = hakd__strings_push_owned(&ds->images, image);
  if (status) {
    free(label);
    return status;
  }
  if ((status = hakd__strings_push_owned(&ds->labels, label))) return status;
  uint8_t *grown = realloc(ds->mappings, (size_t)ds->images.count);
  if (!grown) return hakd_error(HAKD_ENOMEM, "out of memory listing %s", ds->name);
  ds->mappings = grown;
  ds->mappings[ds->images.count - 1] = (uint8_t)mapping;
  return 0;
}

/* leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png with gtFine/<split>/<city>/<stem>_gtFine_
 * labelTrainIds.png when present, else <stem>_gtFine_labelIds.png mapped on the fly. */
static int list_cityscapes(hakd_dataset *ds, const char *root) {
  static const char *const suffix[] = {"_leftImg8bit.png", NULL};
  char *image_dir = hakd__strdup_printf("%s/leftImg8bit/%s", root, ds->split);
  char *label_dir = hakd__strdup_printf("%s/gtFine/%s", root, ds->split);
  hakd__strings cities = {0}, files = {0};
  int status = !image_dir || !label_dir ? hakd_error(HAKD_ENOMEM, "out of memory") : require_dir(image_dir);
  if (!status) status = hakd__list_dir(&cities, image_dir, 1, NULL);
  for (int64_t c = 0; !status && c < cities.count; c++) {
    char *city_dir = hakd__strdup_printf("%s/%s", image_dir, cities.items[c]);
    if (!city_dir) status = hakd_error(HAKD_ENOMEM, "out of memory");
    if (!status) status = hakd__list_dir(&files, city_dir, 0, suffix);
    for (int64_t f = 0; !status && f < files.count; f++) {
      const char *name = files.items[f];
      int stem_len = (int)(strlen(name) - strlen(suffix[0]));
      char *train_ids =
          hakd__strdup_printf("%s/%s/%.*s_gtFine_labelTrainIds.png", label_dir, cities.items[c], stem_len, name);
      char *ids = hakd__strdup_printf("%s/%s/%.*s_gtFine_labelIds.png", label_dir, cities.items[c], stem_len, name);
      char *image = hakd__strdup_printf("%s/%s", city_dir, name);
      int have_train_ids = train_ids && hakd__is_file(train_ids);
      if (have_train_ids) {
        status = add_item(ds, image, train_ids, LABEL_AS_IS);
        free(ids);
      } else {
        status = add_item(ds, image, ids, LABEL_CITYSCAPES_IDS);
        free(train_ids);
      }
    }
    hakd__strings_free(&files);
    free(city_dir);
  }
  hakd__strings_free(&cities);
  free(image_dir);
  free(label_dir);
  return status;
}

/* ImageSets/Segmentation/<split>.txt ids; JPEGImages/<id>.jpg; SegmentationClass/<id>.png
 * (or SegmentationClassAug/<id>.png for the augmented set when that file exists). */
static int list_voc(hakd_dataset *ds, const char *root, int aug) {
  const char *list_split = ds->split;
  if (!strcmp(ds->split, "train_aug")) aug = 1;
  if (aug && !strcmp(ds->split, "train")) list_split = "train_aug";
  char *list_path = hakd__strdup_printf("%s/ImageSets/Segmentation/%s.txt", root, list_split);
  char *aug_dir = hakd__strdup_printf("%s/SegmentationClassAug", root);
  hakd__strings ids = {0};
  int status = !list_path || !aug_dir ? hakd_error(HAKD_ENOMEM, "out of memory") : 0;
  if (!status && aug) status = require_dir(aug_dir);
  if (!status && !hakd__is_file(list_path)) status = hakd_error(HAKD_ENOTFOUND, "%s: split list not found", list_path);
  if (!status) status = hakd__read_lines(&ids, NULL, list_path);
  for (int64_t i = 0; !status && i < ids.count; i++) {
    const char *id = ids.items[i];
    if (strchr(id, ' ') || strchr(id, '\t')) {
      status = hakd_error(HAKD_EFORMAT, "%s: line '%s' is not one image id", list_path, id);
      break;
    }
    char *label = NULL;
    if (aug) {
      label = hakd__strdup_printf("%s/%s.png", aug_dir, id);
      if (label && !hakd__is_file(label)) {
        free(label);
        label = NULL;
      }
    }
    if (!label) label = hakd__strdup_printf("%s/SegmentationClass/%s.png", root, id);
    status = add_item(ds, hakd__strdup_printf("%s/JPEGImages/%s.jpg", root, id), label, LABEL_AS_IS);
  }
  hakd__strings_free(&ids);
  free(list_path);
  free(aug_dir);
  return status;
}

/* Sorted images of image_dir; the label of each is label_dir/<stem><label_ext>. */
static int list_image_dir(hakd_dataset *ds, const char *image_dir, const char *label_dir, const char *label_ext,
                          label_mapping mapping) {
  hakd__strings files = {0};
  int status = require_dir(image_dir);
  if (!status) status = hakd__list_dir(&files, image_dir, 0, image_suffixes);
  for (int64_t f = 0; !status && f < files.count; f++) {
    char *stem = hakd__path_stem(files.items[f]);
    char *label = stem ? hakd__strdup_printf("%s/%s%s", label_dir, stem, label_ext) : NULL;
    free(stem);
    status = add_item(ds, hakd__strdup_printf("%s/%s", image_dir, files.items[f]), label, mapping);
  }
  hakd__strings_free(&files);
  return status;
}

static int list_ade20k(hakd_dataset *ds, const char *root) {
  const char *folder = !strcmp(ds->split, "train") ? "training" : !strcmp(ds->split, "val") ? "validation" : ds->split;
  char *image_dir = hakd__strdup_printf("%s/ADEChallengeData2016/images/%s", root, folder);
  char *label_dir = hakd__strdup_printf("%s/ADEChallengeData2016/annotations/%s", root, folder);
  int status = !image_dir || !label_dir ? hakd_error(HAKD_ENOMEM, "out of memory")
                                        : list_image_dir(ds, image_dir, label_dir, ".png", LABEL_REDUCE_ZERO);
  free(image_dir);
  free(label_dir);
  return status;
}

static int list_camvid(hakd_dataset *ds, const char *root) {
  char *image_dir = hakd__strdup_printf("%s/%s", root, ds->split);
  char *label_dir = hakd__strdup_printf("%s/%sannot", root, ds->split);
  int status = !image_dir || !label_dir ? hakd_error(HAKD_ENOMEM, "out of memory")
                                        : list_image_dir(ds, image_dir, label_dir, ".png", LABEL_CAMVID);
  free(image_dir);
  free(label_dir);
  return status;
}

/* classes.txt: one class per line, "name" or "name r g b". */
static int read_generic_classes(hakd_dataset *ds, const char *root) {
  char *path = hakd__strdup_printf("%s/classes.txt", root);
  if (!path) return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd__strings lines = {0};
  int64_t *numbers = NULL;
  int status = hakd__read_lines(&lines, &numbers, path);
  if (!status && lines.count == 0) status = hakd_error(HAKD_EFORMAT, "%s: no classes", path);
  if (!status && lines.count > 255)
    status = hakd_error(HAKD_ERANGE, "%s: %lld classes, at most 255 (255 is the ignore index)", path,
                        (long long)lines.count);
  int n = (int)lines.count;
  if (!status) {
    ds->owned_class_names = calloc((size_t)n, sizeof *ds->owned_class_names);
    ds->owned_palette = malloc((size_t)n * 3);
    if (!ds->owned_class_names || !ds->owned_palette) {
      status = hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
    } else {
      ds->owned_count = n;
      hakd__voc_palette(ds->owned_palette, n);
    }
  }
  for (int k = 0; !status && k < n; k++) {
    char *line = lines.items[k];
    /* A trailing "r g b" (three integers 0..255) is the class colour; the rest is the name. */
    char *end = line + strlen(line), *name_end = end;
    int rgb[3], found = 0;
    for (; found < 3; found++) {
      char *p = name_end;
      while (p > line && p[-1] != ' ' && p[-1] != '\t') p--;
      char *stop;
      long v = strtol(p, &stop, 10);
      if (p == line || p == name_end || stop != name_end || v < 0 || v > 255) break;
      rgb[2 - found] = (int)v;
      name_end = p;
      while (name_end > line && (name_end[-1] == ' ' || name_end[-1] == '\t')) name_end--;
    }
    if (found == 3) {
      for (int c = 0; c < 3; c++) ds->owned_palette[3 * k + c] = (uint8_t)rgb[c];
    } else {
      name_end = end;
    }
    if (name_end == line) {
      status = hakd_error(HAKD_EFORMAT, "%s:%lld: class without a name", path, (long long)numbers[k]);
      break;
    }
    *name_end = '\0';
    ds->owned_class_names[k] = strdup(line);
    if (!ds->owned_class_names[k]) status = hakd_error(HAKD_ENOMEM, "%s: out of memory", path);
  }
  if (!status) {
    ds->num_classes = n;
    ds->class_names = (const char *const *)ds->owned_class_names;
    ds->palette = ds->owned_palette;
  }
  hakd__strings_free(&lines);
  free(numbers);
  free(path);
  return status;
}

/* <root>/<split>.txt of "image label" relative paths (a line with only an image is an item
 * without label, reported when loaded). */
static int list_generic(hakd_dataset *ds, const char *root) {
  int status = read_generic_classes(ds, root);
  if (status) return status;
  char *list_path = hakd__strdup_printf("%s/%s.txt", root, ds->split);
  if (!list_path) return hakd_error(HAKD_ENOMEM, "out of memory");
  hakd__strings lines = {0};
  int64_t *numbers = NULL;
  status = hakd__read_lines(&lines, &numbers, list_path);
  for (int64_t i = 0; !status && i < lines.count; i++) {
    char *fields[3] = {0}, *save = NULL;
    int n = 0;
    for (char *tok = strtok_r(lines.items[i], " \t", &save); tok; tok = strtok_r(NULL, " \t", &save)) {
      if (n < 3) fields[n] = tok;
      n++;
    }
    if (n > 2) {
      status = hakd_error(HAKD_EFORMAT, "%s:%lld: expected 'image label', got %d fields", list_path,
                          (long long)numbers[i], n);
      break;
    }
    status = add_item(ds, hakd__path_join(root, fields[0]), n == 2 ? hakd__path_join(root, fields[1]) : strdup(""),
                      LABEL_AS_IS);
  }
  hakd__strings_free(&lines);
  free(numbers);
  free(list_path);
  return status;
}

/* ---- open / accessors ---------------------------------------------------------------- */

static const char *canonical_name(const char *name) {
  static const char *const aliases[][2] = {
      {"cityscapes", "cityscapes"}, {"voc", "voc"},       {"pascal_voc", "voc"},
      {"ade20k", "ade20k"},         {"ade", "ade20k"},    {"camvid", "camvid"},
      {"generic", "generic"},       {"synth", "generic"},
  };
  for (size_t i = 0; i < sizeof aliases / sizeof aliases[0]; i++)
    if (!strcmp(name, aliases[i][0])) return aliases[i][1];
  return NULL;
}

int hakd_dataset_open(hakd_dataset **out, const hakd_dataset_config *config) {
  *out = NULL;
  if (!config->name || !config->root || !config->split)
    return hakd_error(HAKD_EINVAL, "dataset: name, root and split are required");
  const char *name = canonical_name(config->name);
  if (!name)
    return hakd_error(HAKD_EINVAL, "unknown dataset '%s' (cityscapes, voc, ade20k, camvid, generic, synth)",
                      config->name);
  if (!config->split[0] || strchr(config->split, '/'))
    return hakd_error(HAKD_EINVAL, "dataset %s: bad split name '%s'", name, config->split);
  int status = require_dir(config->root);
  if (status) return status;
  hakd_dataset *ds = calloc(1, sizeof *ds);
  if (!ds || !(ds->split = strdup(config->split))) {
    free(ds);
    return hakd_error(HAKD_ENOMEM, "out of memory");
  }
  ds->name = name;
  const hakd__class_table *table = hakd__class_table_find(name);
  if (table) {
    ds->num_classes = table->num_classes;
    ds->class_names = table->class_names;
    ds->palette = table->palette;
  }
  if (!strcmp(name, "cityscapes"))
    status = list_cityscapes(ds, config->root);
  else if (!strcmp(name, "voc"))
    status = list_voc(ds, config->root, config->voc_aug);
  else if (!strcmp(name, "ade20k"))
    status = list_ade20k(ds, config->root);
  else if (!strcmp(name, "camvid"))
    status = list_camvid(ds, config->root);
  else
    status = list_generic(ds, config->root);
  if (!status && ds->images.count == 0)
    status = hakd_error(HAKD_ENOTFOUND, "%s: split '%s' of %s has no items", config->root, ds->split, name);
  if (status) {
    hakd_dataset_free(ds);
    return status;
  }
  *out = ds;
  return 0;
}

void hakd_dataset_free(hakd_dataset *ds) {
  if (!ds) return;
  for (int k = 0; k < ds->owned_count; k++) free(ds->owned_class_names[k]);
  free(ds->owned_class_names);
  free(ds->owned_palette);
  hakd__strings_free(&ds->images);
  hakd__strings_free(&ds->labels);
  free(ds->mappings);
  free(ds->split);
  free(ds);
}

const char *hakd_dataset_name(const hakd_dataset *ds) { return ds->name; }
const char *hakd_dataset_split(const hakd_dataset *ds) { return ds->split; }
int hakd_dataset_num_classes(const hakd_dataset *ds) { return ds->num_classes; }
int hakd_dataset_ignore_index(const hakd_dataset *ds) {
  (void)ds;
  return HAKD_IGNORE_INDEX;
}
const char *hakd_dataset_class_name(const hakd_dataset *ds, int k) {
  return k >= 0 && k < ds->num_classes ? ds->class_names[k] : NULL;
}
const char *const *hakd_dataset_class_names(const hakd_dataset *ds) { return ds->class_names; }
const uint8_t *hakd_dataset_palette(const hakd_dataset *ds) { return ds->palette; }
int64_t hakd_dataset_count(const hakd_dataset *ds) { return ds->images.count; }
const char *hakd_dataset_image_path(const hakd_dataset *ds, int64_t i) { return ds->images.items[i]; }
const char *hakd_dataset_label_path(const hakd_dataset *ds, int64_t i) { return ds->labels.items[i]; }

/* ---- loading ------------------------------------------------------------------------- */

/* Cityscapes labelIds of the 19 evaluated classes, in trainId order. */
static const uint8_t cityscapes_eval_ids[19] = {7,  8,  11, 12, 13, 17, 19, 20, 21, 22,
                                                23, 24, 25, 26, 27, 28, 31, 32, 33};

/* Maps stored values to train ids in place and checks every result is a class or ignore. */
static int map_label(int32_t *label, int64_t n, int width, label_mapping mapping, int num_classes, const char *path) {
  int32_t cityscapes_lut[256];
  if (mapping == LABEL_CITYSCAPES_IDS) {
    for (int v = 0; v < 256; v++) cityscapes_lut[v] = HAKD_IGNORE_INDEX;
    for (int k = 0; k < 19; k++) cityscapes_lut[cityscapes_eval_ids[k]] = k;
  }
  for (int64_t p = 0; p < n; p++) {
    int32_t v = label[p];
    switch (mapping) {
      case LABEL_AS_IS: break;
      case LABEL_CITYSCAPES_IDS: v = v >= 0 && v < 256 ? cityscapes_lut[v] : HAKD_IGNORE_INDEX; break;
      case LABEL_REDUCE_ZERO: v = v == 0 || v == HAKD_IGNORE_INDEX ? HAKD_IGNORE_INDEX : v - 1; break;
      case LABEL_CAMVID: v = v == 11 ? HAKD_IGNORE_INDEX : v; break;
    }
    if ((v < 0 || v >= num_classes) && v != HAKD_IGNORE_INDEX)
      return hakd_error(HAKD_ERANGE, "%s: label value %d at (x=%lld, y=%lld) is not a class 0..%d or ignore %d", path,
                        (int)label[p], (long long)(p % width), (long long)(p / width), num_classes - 1,
                        HAKD_IGNORE_INDEX);
    label[p] = v;
  }
  return 0;
}

static int read_label(const hakd_dataset *ds, int64_t i, int *width, int *height, int32_t **label) {
  const char *path = ds->labels.items[i];
  *label = NULL;
  if (!path[0]) return hakd_error(HAKD_ENOTFOUND, "%s: image has no label", ds->images.items[i]);
  if (!hakd__is_file(path))
    return hakd_error(HAKD_ENOTFOUND, "%s: label missing for image %s", path, ds->images.items[i]);
  int status = hakd_label_read(path, width, height, label);
  if (status) return status;
  status = map_label(*label, (int64_t)*width * *height, *width, (label_mapping)ds->mappings[i], ds->num_classes, path);
  if (status) {
    free(*label);
    *label = NULL;
  }
  return status;
}

int hakd_dataset_load_label(const hakd_dataset *ds, int64_t i, int *width, int *height, int32_t **label) {
  if (i < 0 || i >= ds->images.count)
    return hakd_error(HAKD_EINVAL, "dataset %s: item %lld out of range (%lld items)", ds->name, (long long)i,
                      (long long)ds->images.count);
  return read_label(ds, i, width, height, label);
}

int hakd_dataset_load(const hakd_dataset *ds, int64_t i, hakd_sample *out) {
  memset(out, 0, sizeof *out);
  if (i < 0 || i >= ds->images.count)
    return hakd_error(HAKD_EINVAL, "dataset %s: item %lld out of range (%lld items)", ds->name, (long long)i,
                      (long long)ds->images.count);
  const char *image_path = ds->images.items[i];
  int label_w = 0, label_h = 0;
  int32_t *label = NULL;
  int status = read_label(ds, i, &label_w, &label_h, &label);
  if (status) return status;
  hakd_image image = {0};
  if (!hakd__is_file(image_path)) {
    free(label);
    return hakd_error(HAKD_ENOTFOUND, "%s: image missing", image_path);
  }
  if ((status = hakd_image_read(image_path, &image))) {
    free(label);
    return status;
  }
  if ((image.width != label_w || image.height != label_h))
    status = hakd_error(HAKD_ESHAPE, "%s: label is %dx%d but image %s is %dx%d (WxH)", ds->labels.items[i], label_w,
                        label_h, image_path, image.width, image.height);
  if (!status && image.channels != 3 && image.channels != 1)
    status = hakd_error(HAKD_EFORMAT, "%s: %d channels, expected RGB or gray", image_path, image.channels);
  if (!status && image.channels == 1) {
    int64_t n = (int64_t)image.width * image.height;
    uint8_t *rgb = malloc((size_t)n * 3);
    if (!rgb) {
      status = hakd_error(HAKD_ENOMEM, "%s: out of memory", image_path);
    } else {
      for (int64_t p = 0; p < n; p++) rgb[3 * p] = rgb[3 * p + 1] = rgb[3 * p + 2] = image.pixels[p];
      free(image.pixels);
      image.pixels = rgb;
      image.channels = 3;
    }
  }
  if (status) {
    hakd_image_free(&image);
    free(label);
    return status;
  }
  out->width = image.width;
  out->height = image.height;
  out->rgb = image.pixels;
  out->label = label;
  return 0;
}

void hakd_sample_free(hakd_sample *s) {
  free(s->rgb);
  free(s->label);
  memset(s, 0, sizeof *s);
}
