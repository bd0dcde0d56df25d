/* PyTorch checkpoints (torch.save since 1.6): a ZIP archive `<archive>/data.pkl` (the pickled
 * object), `<archive>/data/<key>` (one raw little-endian storage per key), `<archive>/version`
 * and, since torch 2.x, `<archive>/byteorder`.
 *
 * The pickle is read by a small pickle machine of our own that *builds data, never calls
 * anything*: it knows the opcodes torch.save emits (protocol 2, plus the protocol 3-5 string,
 * frame and memo opcodes) and exactly the globals a state_dict needs -- collections.OrderedDict,
 * torch._utils._rebuild_tensor_v2 / _rebuild_parameter[_with_state] and the typed storage
 * classes torch.FloatStorage & co (named by persistent ids). Any other global (os.system,
 * builtins.eval, a model class of a pickled nn.Module, ...) stops the read at the GLOBAL opcode
 * with an error naming it; REDUCE is only evaluated for the allowed callables, by our own
 * code. Resources are bounded by the pickle's size (each opcode adds at most one object).
 *
 * The state_dict is then the top-level dict, or the dict under "state_dict" (mmsegmentation,
 * Lightning), "model", "net", "model_state_dict" (searched a few levels deep). Its tensors are
 * copied out of their storages (views with any non-negative strides, shared storages) into one
 * contiguous block, checked against the storage sizes, and handed out through the safetensors
 * accessors, so every reader of weights takes either format. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hakd/io.h"
#include "io/st_internal.h"
#include "io/zip.h"

#define PTH_MAX_NDIM 8
#define PTH_MAX_MEMO (1 << 20)   /* memo indices torch writes are dense and far below this */
#define PTH_MAX_DEPTH 4          /* nesting levels searched for the state_dict */
#define PTH_LEGACY_HINT                                                                                      \
  "re-save it with torch >= 1.6: `sd = torch.load(f, map_location='cpu'); torch.save(sd, 'new.pth')` "     \
  "(the zip format is torch.save's default since 1.6; older code may pass "                                  \
  "_use_new_zipfile_serialization=False, drop it or pass True)"

/* ---- values ---- */

typedef enum { PV_NONE, PV_BOOL, PV_INT, PV_FLOAT, PV_STR, PV_BYTES, PV_TUPLE, PV_LIST, PV_DICT, PV_GLOBAL, PV_STORAGE, PV_TENSOR } pv_type;
typedef enum { G_ORDERED_DICT, G_REBUILD_TENSOR, G_REBUILD_PARAMETER, G_REBUILD_PARAMETER_STATE, G_STORAGE } global_kind;

typedef struct pv pv;
struct pv {
  pv_type type;
  int64_t i;     /* int, bool; global kind; storage index */
  double f;
  char *s;       /* str/bytes (NUL-terminated copy) */
  size_t len;
  pv **items;    /* tuple/list items; dict keys at 2k and values at 2k + 1 */
  size_t n, cap;
  int dtype;     /* global storage type: hakd_st_dtype */
  /* tensor */
  int storage, ndim;
  int64_t offset, shape[PTH_MAX_NDIM], stride[PTH_MAX_NDIM];
};

typedef struct {
  const char *name;
  hakd_st_dtype dtype;
  int size;
} storage_type;

static const storage_type storage_types[] = {
    {"FloatStorage", HAKD_ST_F32, 4}, {"HalfStorage", HAKD_ST_F16, 2},  {"BFloat16Storage", HAKD_ST_BF16, 2},
    {"DoubleStorage", HAKD_ST_F64, 8}, {"LongStorage", HAKD_ST_I64, 8}, {"IntStorage", HAKD_ST_I32, 4},
    {"ShortStorage", HAKD_ST_I16, 2}, {"CharStorage", HAKD_ST_I8, 1},   {"ByteStorage", HAKD_ST_U8, 1},
    {"BoolStorage", HAKD_ST_BOOL, 1},
};
#define N_STORAGE_TYPES (int)(sizeof storage_types / sizeof storage_types[0])

typedef struct {
  char *key;
  int type; /* index into storage_types */
  int64_t numel;
  const uint8_t *data; /* resolved lazily, after the pickle */
} pth_storage;

typedef struct {
  const char *path;
  const uint8_t *p, *end, *start;
  pv **objs;
  size_t n_objs, cap_objs;
  pv **stack;
  size_t sp, stack_cap;
  size_t *marks;
  size_t n_marks, marks_cap;
  pv **memo;
  size_t memo_cap, memo_count;
  pth_storage *storages;
  int n_storages, storages_cap;
} vm;

static int grow(void **array, size_t *cap, size_t need, size_t elem) {
  if (need <= *cap) return 0;
  size_t c = *cap ? *cap : 16;
  while (c < need) c *= 2;
  void *g = realloc(*array, c * elem);
  if (!g) return -1;
  *array = g;
  *cap = c;
  return 0;
}

static int oom(vm *v) { return hakd_error(HAKD_ENOMEM, "%s: out of memory reading the pickle", v->path); }

static pv *pv_new(vm *v, pv_type type) {
  if (grow((void **)&v->objs, &v->cap_objs, v->n_objs + 1, sizeof *v->objs)) return NULL;
  pv *o = calloc(1, sizeof *o);
  if (!o) return NULL;
  o->type = type;
  v->objs[v->n_objs++] = o;
  return o;
}

static int pv_append(pv *c, pv *item) {
  if (grow((void **)&c->items, &c->cap, c->n + 1, sizeof *c->items)) return -1;
  c->items[c->n++] = item;
  return 0;
}

static void vm_free(vm *v) {
  for (size_t i = 0; i < v->n_objs; i++) {
    free(v->objs[i]->s);
    free(v->objs[i]->items);
    free(v->objs[i]);
  }
  free(v->objs);
  free(v->stack);
  free(v->marks);
  free(v->memo);
  for (int i = 0; i < v->n_storages; i++) free(v->storages[i].key);
  free(v->storages);
}

static const char *type_name(const pv *o) {
  static const char *const names[] = {"None", "bool", "int", "float", "str", "bytes", "tuple", "list",
                                      "dict", "global", "storage", "tensor"};
  return o ? names[o->type] : "nothing";
}

/* ---- the machine ---- */

static int bad(vm *v, const char *what) {
  return hakd_error(HAKD_EFORMAT, "%s: malformed pickle in data.pkl at byte %lld: %s", v->path,
                    (long long)(v->p - v->start), what);
}

static int push(vm *v, pv *o) {
  if (!o) return oom(v);
  if (grow((void **)&v->stack, &v->stack_cap, v->sp + 1, sizeof *v->stack)) return oom(v);
  v->stack[v->sp++] = o;
  return 0;
}

static pv *pop(vm *v) {
  size_t floor = v->n_marks ? v->marks[v->n_marks - 1] : 0;
  return v->sp > floor ? v->stack[--v->sp] : NULL;
}

static pv *top(vm *v) {
  size_t floor = v->n_marks ? v->marks[v->n_marks - 1] : 0;
  return v->sp > floor ? v->stack[v->sp - 1] : NULL;
}

/* The object under the items of a collection opcode (the list or dict they go into). */
static pv *below(vm *v, size_t first) {
  size_t floor = v->n_marks ? v->marks[v->n_marks - 1] : 0;
  return first > floor ? v->stack[first - 1] : NULL;
}

/* Pops to the last MARK: the items are v->stack[*first .. v->sp) until the next push. */
static int pop_mark(vm *v, size_t *first) {
  if (!v->n_marks) return bad(v, "no MARK before a collection opcode");
  *first = v->marks[--v->n_marks];
  return 0;
}

static int need(vm *v, size_t n) { return (size_t)(v->end - v->p) >= n ? 0 : bad(v, "truncated operand"); }

static uint64_t le(const uint8_t *p, int n) {
  uint64_t x = 0;
  for (int i = n - 1; i >= 0; i--) x = x << 8 | p[i];
  return x;
}

static int push_string(vm *v, pv_type type, size_t len) {
  if ((size_t)(v->end - v->p) < len) return bad(v, "string runs past the end of the pickle");
  pv *o = pv_new(v, type);
  if (!o || !(o->s = malloc(len + 1))) return oom(v);
  memcpy(o->s, v->p, len);
  o->s[len] = '\0';
  o->len = len;
  v->p += len;
  return push(v, o);
}

static int memo_put(vm *v, uint64_t index) {
  pv *o = top(v);
  if (!o) return bad(v, "memo store with an empty stack");
  if (index >= PTH_MAX_MEMO) return bad(v, "memo index out of range");
  size_t old = v->memo_cap;
  if (grow((void **)&v->memo, &v->memo_cap, (size_t)index + 1, sizeof *v->memo)) return oom(v);
  for (size_t i = old; i < v->memo_cap; i++) v->memo[i] = NULL; /* fresh slots read as empty */
  if (!v->memo[index]) v->memo_count++;
  v->memo[index] = o;
  return 0;
}

static int memo_get(vm *v, uint64_t index) {
  if (index >= v->memo_cap || !v->memo[index]) return bad(v, "memo fetch of an index never stored");
  return push(v, v->memo[index]);
}

/* GLOBAL module\nname\n / STACK_GLOBAL: only the names a state_dict needs resolve. */
static int resolve_global(vm *v, const char *module, const char *name) {
  pv *g = pv_new(v, PV_GLOBAL);
  if (!g) return oom(v);
  if (!strcmp(module, "collections") && !strcmp(name, "OrderedDict")) {
    g->i = G_ORDERED_DICT;
  } else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_tensor_v2")) {
    g->i = G_REBUILD_TENSOR;
  } else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_parameter")) {
    g->i = G_REBUILD_PARAMETER;
  } else if (!strcmp(module, "torch._utils") && !strcmp(name, "_rebuild_parameter_with_state")) {
    g->i = G_REBUILD_PARAMETER_STATE;
  } else {
    int t = -1;
    if (!strcmp(module, "torch"))
      for (int k = 0; k < N_STORAGE_TYPES; k++)
        if (!strcmp(name, storage_types[k].name)) t = k;
    if (t < 0) {
      int storage_like = !strcmp(module, "torch") && strstr(name, "Storage");
      return hakd_error(storage_like ? HAKD_EUNSUPPORTED : HAKD_EFORMAT,
                        storage_like ? "%s: storage type %s.%s is not supported (float32/16, bfloat16, float64, "
                                       "int64/32/16/8, uint8, bool are)"
                                     : "%s: refusing the pickle in data.pkl: it names the global '%s.%s', and a "
                                       "state_dict holds only tensors, dicts, lists, numbers and strings (hakd never "
                                       "runs code from a checkpoint; if this is a pickled model, save "
                                       "model.state_dict() instead)",
                        v->path, module, name);
    }
    g->i = G_STORAGE;
    g->dtype = t;
  }
  return push(v, g);
}

static int read_line(vm *v, char *buf, size_t size) {
  const uint8_t *nl = memchr(v->p, '\n', (size_t)(v->end - v->p));
  if (!nl) return bad(v, "GLOBAL name without a newline");
  size_t n = (size_t)(nl - v->p);
  if (n >= size || memchr(v->p, 0, n)) return bad(v, "GLOBAL name too long");
  memcpy(buf, v->p, n);
  buf[n] = '\0';
  v->p = nl + 1;
  return 0;
}

static int as_int(const pv *o, int64_t *out) {
  if (!o || (o->type != PV_INT && o->type != PV_BOOL)) return -1;
  *out = o->i;
  return 0;
}

static int int_tuple(vm *v, const pv *t, int64_t *out, int *n, const char *what) {
  if (!t || t->type != PV_TUPLE) return hakd_error(HAKD_EFORMAT, "%s: tensor %s is a %s, expected a tuple", v->path, what, type_name(t));
  if (t->n > PTH_MAX_NDIM)
    return hakd_error(HAKD_EUNSUPPORTED, "%s: tensor with %zu dimensions, at most %d supported", v->path, t->n,
                      PTH_MAX_NDIM);
  for (size_t i = 0; i < t->n; i++)
    if (as_int(t->items[i], &out[i]) || out[i] < 0)
      return hakd_error(HAKD_EFORMAT, "%s: tensor %s[%zu] is not a non-negative integer", v->path, what, i);
  *n = (int)t->n;
  return 0;
}

/* persistent id ('storage', torch.<T>Storage, key, location, numel) -> a storage reference. */
static int persistent_load(vm *v, pv *pid) {
  int64_t numel;
  if (!pid || pid->type != PV_TUPLE || pid->n != 5 || pid->items[0]->type != PV_STR ||
      strcmp(pid->items[0]->s, "storage") || pid->items[1]->type != PV_GLOBAL || pid->items[1]->i != G_STORAGE ||
      pid->items[2]->type != PV_STR || pid->items[3]->type != PV_STR || as_int(pid->items[4], &numel) || numel < 0)
    return bad(v, "persistent id is not ('storage', torch.<T>Storage, key, location, numel)");
  const char *key = pid->items[2]->s;
  int type = pid->items[1]->dtype, found = -1;
  for (int i = 0; i < v->n_storages && found < 0; i++)
    if (!strcmp(v->storages[i].key, key)) found = i;
  if (found >= 0) {
    if (v->storages[found].type != type || v->storages[found].numel != numel)
      return hakd_error(HAKD_EFORMAT, "%s: storage '%s' is declared twice with different types or sizes", v->path, key);
  } else {
    size_t cap = (size_t)v->storages_cap;
    if (grow((void **)&v->storages, &cap, (size_t)v->n_storages + 1, sizeof *v->storages)) return oom(v);
    v->storages_cap = (int)cap;
    pth_storage *s = &v->storages[v->n_storages];
    memset(s, 0, sizeof *s);
    if (!(s->key = strdup(key))) return oom(v);
    s->type = type;
    s->numel = numel;
    found = v->n_storages++;
  }
  pv *o = pv_new(v, PV_STORAGE);
  if (!o) return oom(v);
  o->i = found;
  return push(v, o);
}

/* REDUCE: evaluated only for the allowed callables, by this code. */
static int reduce(vm *v) {
  pv *args = pop(v), *fn = pop(v);
  if (!args || !fn || args->type != PV_TUPLE) return bad(v, "REDUCE without a callable and an argument tuple");
  if (fn->type != PV_GLOBAL) return bad(v, "REDUCE of something that is not a global");
  pv *o = NULL;
  switch ((global_kind)fn->i) {
    case G_ORDERED_DICT:
      if (args->n != 0) return bad(v, "OrderedDict called with arguments");
      o = pv_new(v, PV_DICT);
      break;
    case G_REBUILD_TENSOR: {
      /* (storage, storage_offset, size, stride, requires_grad, backward_hooks[, metadata]) */
      if (args->n != 6 && args->n != 7) return bad(v, "_rebuild_tensor_v2 needs 6 or 7 arguments");
      if (args->items[0]->type != PV_STORAGE) return bad(v, "_rebuild_tensor_v2 of something that is not a storage");
      o = pv_new(v, PV_TENSOR);
      if (!o) return oom(v);
      o->storage = (int)args->items[0]->i;
      int ns = 0, nt = 0;
      if (as_int(args->items[1], &o->offset) || o->offset < 0)
        return hakd_error(HAKD_EFORMAT, "%s: tensor storage offset is not a non-negative integer", v->path);
      int rc = int_tuple(v, args->items[2], o->shape, &ns, "size");
      if (!rc) rc = int_tuple(v, args->items[3], o->stride, &nt, "stride");
      if (rc) return rc;
      if (ns != nt) return hakd_error(HAKD_EFORMAT, "%s: tensor size has %d dimensions, stride %d", v->path, ns, nt);
      o->ndim = ns;
      break;
    }
    case G_REBUILD_PARAMETER:
    case G_REBUILD_PARAMETER_STATE:
      /* (data, requires_grad, backward_hooks[, state]): the Parameter is its tensor */
      if (args->n != (fn->i == G_REBUILD_PARAMETER ? 3u : 4u) || args->items[0]->type != PV_TENSOR)
        return bad(v, "_rebuild_parameter with unexpected arguments");
      o = args->items[0];
      break;
    case G_STORAGE: return bad(v, "a storage type called directly");
  }
  return push(v, o);
}

static int run(vm *v) {
  while (v->p < v->end) {
    uint8_t op = *v->p++;
    int rc = 0;
    size_t first = 0;
    pv *o, *a, *b;
    switch (op) {
      case 0x80: /* PROTO */
        if ((rc = need(v, 1))) return rc;
        if (*v->p < 2 || *v->p > 5) return bad(v, "pickle protocol outside 2..5");
        v->p++;
        break;
      case 0x95: /* FRAME: a length hint */
        if ((rc = need(v, 8))) return rc;
        v->p += 8;
        break;
      case '.': /* STOP */
        if (v->n_marks || v->sp != 1) return bad(v, "STOP with a stack that is not one object");
        return 0;
      case '(': /* MARK */
        if (grow((void **)&v->marks, &v->marks_cap, v->n_marks + 1, sizeof *v->marks)) return oom(v);
        v->marks[v->n_marks++] = v->sp;
        break;
      case '0': /* POP */
        if (!pop(v)) return bad(v, "POP of an empty stack");
        break;
      case '1': /* POP_MARK */
        if ((rc = pop_mark(v, &first))) return rc;
        v->sp = first;
        break;
      case '2': /* DUP */
        if (!(o = top(v))) return bad(v, "DUP of an empty stack");
        rc = push(v, o);
        break;
      case 'N': rc = push(v, pv_new(v, PV_NONE)); break;
      case 0x88: case 0x89: /* NEWTRUE, NEWFALSE */
        if ((o = pv_new(v, PV_BOOL))) o->i = op == 0x88;
        rc = push(v, o);
        break;
      case 'J': case 'K': case 'M': { /* BININT, BININT1, BININT2 */
        int n = op == 'J' ? 4 : op == 'K' ? 1 : 2;
        if ((rc = need(v, (size_t)n))) return rc;
        uint64_t x = le(v->p, n);
        v->p += n;
        if ((o = pv_new(v, PV_INT))) o->i = op == 'J' ? (int64_t)(int32_t)(uint32_t)x : (int64_t)x;
        rc = push(v, o);
        break;
      }
      case 0x8a: { /* LONG1: n-byte little-endian two's complement */
        if ((rc = need(v, 1))) return rc;
        int n = *v->p++;
        if (n > 8) return bad(v, "integer wider than 64 bits");
        if ((rc = need(v, (size_t)n))) return rc;
        uint64_t x = le(v->p, n);
        if (n > 0 && n < 8 && (v->p[n - 1] & 0x80)) x |= ~(uint64_t)0 << (8 * n);
        v->p += n;
        if ((o = pv_new(v, PV_INT))) o->i = (int64_t)x;
        rc = push(v, o);
        break;
      }
      case 'G': { /* BINFLOAT: big-endian double */
        if ((rc = need(v, 8))) return rc;
        uint64_t x = 0;
        for (int i = 0; i < 8; i++) x = x << 8 | v->p[i];
        v->p += 8;
        if ((o = pv_new(v, PV_FLOAT))) memcpy(&o->f, &x, sizeof o->f);
        rc = push(v, o);
        break;
      }
      case 'X': case 'T': case 'B': /* BINUNICODE, BINSTRING, BINBYTES: u32 length */
        if ((rc = need(v, 4))) return rc;
        first = (size_t)le(v->p, 4);
        v->p += 4;
        rc = push_string(v, op == 'B' ? PV_BYTES : PV_STR, first);
        break;
      case 0x8c: case 'U': case 'C': /* SHORT_BINUNICODE, SHORT_BINSTRING, SHORT_BINBYTES: u8 length */
        if ((rc = need(v, 1))) return rc;
        first = *v->p++;
        rc = push_string(v, op == 'C' ? PV_BYTES : PV_STR, first);
        break;
      case 0x8d: case 0x8e: { /* BINUNICODE8, BINBYTES8 */
        if ((rc = need(v, 8))) return rc;
        uint64_t n = le(v->p, 8);
        v->p += 8;
        if (n > (uint64_t)(v->end - v->p)) return bad(v, "string runs past the end of the pickle");
        rc = push_string(v, op == 0x8d ? PV_STR : PV_BYTES, (size_t)n);
        break;
      }
      case ')': rc = push(v, pv_new(v, PV_TUPLE)); break;
      case ']': rc = push(v, pv_new(v, PV_LIST)); break;
      case '}': rc = push(v, pv_new(v, PV_DICT)); break;
      case 't': case 'l': case 'd': /* TUPLE, LIST, DICT from the items since MARK */
        if ((rc = pop_mark(v, &first))) return rc;
        if (!(o = pv_new(v, op == 't' ? PV_TUPLE : op == 'l' ? PV_LIST : PV_DICT))) return oom(v);
        if (op == 'd' && (v->sp - first) % 2) return bad(v, "DICT with an odd number of items");
        for (size_t i = first; i < v->sp; i++)
          if (pv_append(o, v->stack[i])) return oom(v);
        v->sp = first;
        rc = push(v, o);
        break;
      case 0x85: case 0x86: case 0x87: { /* TUPLE1..3 */
        int n = op - 0x84;
        pv *items[3];
        for (int i = n - 1; i >= 0; i--)
          if (!(items[i] = pop(v))) return bad(v, "TUPLEn with too few items");
        if (!(o = pv_new(v, PV_TUPLE))) return oom(v);
        for (int i = 0; i < n; i++)
          if (pv_append(o, items[i])) return oom(v);
        rc = push(v, o);
        break;
      }
      case 'a': /* APPEND */
        a = pop(v);
        o = top(v);
        if (!a || !o || o->type != PV_LIST) return bad(v, "APPEND to something that is not a list");
        if (pv_append(o, a)) return oom(v);
        break;
      case 'e': /* APPENDS */
        if ((rc = pop_mark(v, &first))) return rc;
        o = below(v, first);
        if (!o || o->type != PV_LIST) return bad(v, "APPENDS to something that is not a list");
        for (size_t i = first; i < v->sp; i++)
          if (pv_append(o, v->stack[i])) return oom(v);
        v->sp = first;
        break;
      case 's': /* SETITEM */
        b = pop(v);
        a = pop(v);
        o = top(v);
        if (!a || !b || !o || o->type != PV_DICT) return bad(v, "SETITEM on something that is not a dict");
        if (pv_append(o, a) || pv_append(o, b)) return oom(v);
        break;
      case 'u': /* SETITEMS */
        if ((rc = pop_mark(v, &first))) return rc;
        o = below(v, first);
        if (!o || o->type != PV_DICT || (v->sp - first) % 2) return bad(v, "SETITEMS on something that is not a dict");
        for (size_t i = first; i < v->sp; i++)
          if (pv_append(o, v->stack[i])) return oom(v);
        v->sp = first;
        break;
      case 'q': case 'r': { /* BINPUT, LONG_BINPUT */
        int n = op == 'q' ? 1 : 4;
        if ((rc = need(v, (size_t)n))) return rc;
        uint64_t index = le(v->p, n);
        v->p += n;
        rc = memo_put(v, index);
        break;
      }
      case 0x94: /* MEMOIZE: at index len(memo), as Python's unpickler does */
        rc = memo_put(v, v->memo_count);
        break;
      case 'h': case 'j': { /* BINGET, LONG_BINGET */
        int n = op == 'h' ? 1 : 4;
        if ((rc = need(v, (size_t)n))) return rc;
        uint64_t index = le(v->p, n);
        v->p += n;
        rc = memo_get(v, index);
        break;
      }
      case 'c': { /* GLOBAL */
        char module[128], name[128];
        if ((rc = read_line(v, module, sizeof module)) || (rc = read_line(v, name, sizeof name))) return rc;
        rc = resolve_global(v, module, name);
        break;
      }
      case 0x93: /* STACK_GLOBAL */
        b = pop(v);
        a = pop(v);
        if (!a || !b || a->type != PV_STR || b->type != PV_STR) return bad(v, "STACK_GLOBAL without two strings");
        rc = resolve_global(v, a->s, b->s);
        break;
      case 'R': rc = reduce(v); break;
      case 'Q': rc = persistent_load(v, pop(v)); break;
      case 'b': /* BUILD: a dict's instance attributes (OrderedDict's _metadata) are dropped */
        a = pop(v);
        o = top(v);
        if (!a || !o || o->type != PV_DICT) return bad(v, "BUILD on something that is not a dict");
        break;
      default: {
        char what[96];
        snprintf(what, sizeof what, "opcode 0x%02x is not one a state_dict pickle uses (refused)", op);
        v->p--;
        return bad(v, what);
      }
    }
    if (rc) return rc;
  }
  return bad(v, "no STOP opcode (truncated pickle)");
}

/* ---- the state_dict ---- */

static const pv *dict_get(const pv *d, const char *key) {
  for (size_t k = 0; k + 1 < d->n; k += 2)
    if (d->items[k]->type == PV_STR && !strcmp(d->items[k]->s, key)) return d->items[k + 1];
  return NULL;
}

static int has_tensor(const pv *d) {
  for (size_t k = 0; k + 1 < d->n; k += 2)
    if (d->items[k]->type == PV_STR && d->items[k + 1]->type == PV_TENSOR) return 1;
  return 0;
}

static const pv *find_state_dict(const pv *o, int depth) {
  static const char *const nested[] = {"state_dict", "model", "net", "model_state_dict"};
  if (!o || o->type != PV_DICT || depth > PTH_MAX_DEPTH) return NULL;
  if (has_tensor(o)) return o;
  for (size_t i = 0; i < sizeof nested / sizeof nested[0]; i++) {
    const pv *found = find_state_dict(dict_get(o, nested[i]), depth + 1);
    if (found) return found;
  }
  return NULL;
}

typedef struct {
  const char *name;
  const pv *t;
  size_t order;
} named;

static int by_name_then_order(const void *x, const void *y) {
  const named *a = x, *b = y;
  int c = strcmp(a->name, b->name);
  return c ? c : (a->order > b->order) - (a->order < b->order);
}

static int by_order(const void *x, const void *y) {
  const named *a = x, *b = y;
  return (a->order > b->order) - (a->order < b->order);
}

static int no_state_dict(const char *path, const pv *root) {
  char keys[200] = "";
  size_t len = 0;
  if (root->type == PV_DICT)
    for (size_t k = 0; k + 1 < root->n && len + 2 < sizeof keys; k += 2)
      if (root->items[k]->type == PV_STR)
        len += (size_t)snprintf(keys + len, sizeof keys - len, "%s'%s'", len ? ", " : "", root->items[k]->s);
  if (root->type != PV_DICT)
    return hakd_error(HAKD_EFORMAT, "%s: the checkpoint holds a %s, not a state_dict (a dict of tensors)", path,
                      type_name(root));
  return hakd_error(HAKD_EFORMAT,
                    "%s: no state_dict: no tensors at the top level nor under 'state_dict', 'model', 'net' or "
                    "'model_state_dict' (top-level keys: %s)",
                    path, len ? keys : "none");
}

/* Copies a strided view into dst (contiguous, row-major). */
static void gather(uint8_t *dst, const uint8_t *src, int esize, int ndim, const int64_t *shape, const int64_t *stride,
                   int64_t offset, int64_t numel) {
  int64_t index[PTH_MAX_NDIM] = {0}, pos = offset, expect = 1;
  int contiguous = 1;
  for (int d = ndim - 1; d >= 0; d--) {
    if (shape[d] != 1 && stride[d] != expect) contiguous = 0;
    expect *= shape[d];
  }
  if (contiguous) {
    memcpy(dst, src + offset * esize, (size_t)(numel * esize));
    return;
  }
  for (int64_t i = 0; i < numel; i++) {
    memcpy(dst + i * esize, src + pos * esize, (size_t)esize);
    for (int d = ndim - 1; d >= 0; d--) {
      pos += stride[d];
      if (++index[d] < shape[d]) break;
      pos -= stride[d] * shape[d];
      index[d] = 0;
    }
  }
}

static int read_small_entry(hakd__zip *z, const char *name, char *buf, size_t size, int *present) {
  hakd__zip_entry *e = hakd__zip_find(z, name);
  *present = e != NULL;
  if (!e) return 0;
  int rc = hakd__zip_read(z, e);
  if (rc) return rc;
  size_t n = e->size < size - 1 ? (size_t)e->size : size - 1;
  memcpy(buf, e->data, n);
  buf[n] = '\0';
  return 0;
}

/* version, byteorder, TorchScript; returns the archive prefix ("archive" of archive/data.pkl). */
static int check_archive(hakd__zip *z, const char *path, char *prefix, size_t size) {
  const char *pkl = NULL;
  for (int i = 0; i < z->count && !pkl; i++) {
    const char *n = z->entries[i].name, *slash = strchr(n, '/');
    if (slash && !strcmp(slash, "/data.pkl")) pkl = n;
  }
  if (!pkl) {
    for (int i = 0; i < z->count; i++)
      if (strstr(z->entries[i].name, "constants.pkl"))
        return hakd_error(HAKD_EUNSUPPORTED,
                          "%s: a TorchScript archive (torch.jit.save), not a state_dict: in Python, save "
                          "torch.jit.load(f).state_dict() with torch.save",
                          path);
    return hakd_error(HAKD_EFORMAT, "%s: a zip archive without <archive>/data.pkl: not a PyTorch checkpoint", path);
  }
  size_t len = (size_t)(strchr(pkl, '/') - pkl);
  if (len + 1 > size) return hakd_error(HAKD_EFORMAT, "%s: archive name too long", path);
  memcpy(prefix, pkl, len);
  prefix[len] = '\0';
  char name[300], text[32];
  int present, rc;
  snprintf(name, sizeof name, "%s/constants.pkl", prefix);
  if (hakd__zip_find(z, name))
    return hakd_error(HAKD_EUNSUPPORTED,
                      "%s: a TorchScript archive (torch.jit.save), not a state_dict: in Python, save "
                      "torch.jit.load(f).state_dict() with torch.save",
                      path);
  snprintf(name, sizeof name, "%s/version", prefix);
  if ((rc = read_small_entry(z, name, text, sizeof text, &present))) return rc;
  if (present) {
    size_t len = strlen(text);
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' ')) text[--len] = '\0';
    char *end;
    long version = strtol(text, &end, 10);
    /* torch's own reader takes file format versions 1 to 10 (kMin/kMaxSupportedFileFormatVersion) */
    if (end == text || *end || version < 1 || version > 10)
      return hakd_error(HAKD_EUNSUPPORTED, "%s: checkpoint file format version '%s' (this reader knows 1 to 10)", path,
                        text);
  }
  snprintf(name, sizeof name, "%s/byteorder", prefix);
  if ((rc = read_small_entry(z, name, text, sizeof text, &present))) return rc;
  if (present && strcmp(text, "little")) /* absent: torch < 2.1 wrote little-endian only */
    return hakd_error(HAKD_EUNSUPPORTED,
                      "%s: byteorder is '%s'; only little-endian checkpoints are read (load and re-save it on a "
                      "little-endian machine)",
                      path, text);
  return 0;
}

static int build(const char *path, hakd__zip *z, const char *prefix, vm *v, const pv *root, size_t file_size,
                 hakd_st_file **out) {
  const pv *sd = find_state_dict(root, 0);
  if (!sd) return no_state_dict(path, root);
  size_t n = 0;
  named *list = malloc((sd->n / 2 + 1) * sizeof *list);
  if (!list) return oom(v);
  for (size_t k = 0; k + 1 < sd->n; k += 2)
    if (sd->items[k]->type == PV_STR && sd->items[k + 1]->type == PV_TENSOR) {
      list[n].name = sd->items[k]->s;
      list[n].t = sd->items[k + 1];
      list[n].order = n;
      n++;
    }
  /* a key set twice keeps its last value, as a Python dict does */
  qsort(list, n, sizeof *list, by_name_then_order);
  size_t kept = 0;
  for (size_t i = 0; i < n; i++) {
    if (i + 1 < n && !strcmp(list[i].name, list[i + 1].name)) continue;
    list[kept++] = list[i];
  }
  n = kept;
  qsort(list, n, sizeof *list, by_order);

  int rc = 0;
  char name[400];
  uint64_t storage_bytes = 0, total = 0;
  for (int s = 0; s < v->n_storages && !rc; s++) {
    pth_storage *st = &v->storages[s];
    snprintf(name, sizeof name, "%s/data/%s", prefix, st->key);
    hakd__zip_entry *e = hakd__zip_find(z, name);
    if (!e) {
      rc = hakd_error(HAKD_EFORMAT, "%s: storage '%s' is missing from the archive (no entry %s)", path, st->key, name);
      break;
    }
    if ((rc = hakd__zip_read(z, e))) break;
    uint64_t esize = (uint64_t)storage_types[st->type].size;
    if ((uint64_t)st->numel > e->size / esize || (uint64_t)st->numel * esize != e->size)
      rc = hakd_error(HAKD_EFORMAT, "%s: storage '%s' holds %llu bytes, its pickle says %lld x %s (%d bytes each)", path,
                      st->key, (unsigned long long)e->size, (long long)st->numel, storage_types[st->type].name,
                      storage_types[st->type].size);
    st->data = e->data;
    storage_bytes += e->size;
  }
  hakd_st_tensor *tensors = calloc(n + 1, sizeof *tensors);
  char **names = calloc(n + 1, sizeof *names);
  if (!rc && (!tensors || !names)) rc = oom(v);
  /* sizes and bounds: every element of every view inside its storage */
  for (size_t i = 0; i < n && !rc; i++) {
    const pv *t = list[i].t;
    const pth_storage *st = &v->storages[t->storage];
    int64_t numel = 1, last = t->offset;
    int empty = 0, overflow = 0;
    for (int d = 0; d < t->ndim; d++) if (t->shape[d] == 0) empty = 1;
    for (int d = 0; d < t->ndim && !empty; d++) {
      if (numel > INT64_MAX / t->shape[d]) overflow = 1;
      else numel *= t->shape[d];
      if (t->stride[d] && t->shape[d] - 1 > (INT64_MAX - last) / t->stride[d]) overflow = 1;
      else last += (t->shape[d] - 1) * t->stride[d];
    }
    if (empty) numel = 0;
    if (overflow)
      rc = hakd_error(HAKD_EFORMAT, "%s: tensor '%s': size and stride overflow", path, list[i].name);
    else if (numel && last >= st->numel)
      rc = hakd_error(HAKD_EFORMAT, "%s: tensor '%s' reaches element %lld of storage '%s', which holds %lld", path,
                      list[i].name, (long long)last, st->key, (long long)st->numel);
    else if (numel > st->numel)
      rc = hakd_error(HAKD_EUNSUPPORTED,
                      "%s: tensor '%s' has %lld elements over a storage of %lld (an expanded, stride-0 view): save "
                      "it .contiguous()",
                      path, list[i].name, (long long)numel, (long long)st->numel);
    if (rc) break;
    hakd_st_tensor *o = &tensors[i];
    o->dtype = storage_types[st->type].dtype;
    o->ndim = t->ndim;
    for (int d = 0; d < t->ndim; d++) o->shape[d] = t->shape[d];
    o->nbytes = (uint64_t)numel * (uint64_t)storage_types[st->type].size;
    total = (total + 7) & ~(uint64_t)7;
    o->offset = total;
    total += o->nbytes;
  }
  /* Views of one storage can each be as large as it: bound what many views of one big storage
   * would expand to (a state_dict's views, tied weights included, stay well below this). */
  uint64_t limit = 4 * (storage_bytes > file_size ? storage_bytes : file_size) + (1u << 20);
  if (!rc && total > limit)
    rc = hakd_error(HAKD_EFORMAT, "%s: the tensors would expand to %llu bytes from %llu bytes of storage (refused)", path,
                    (unsigned long long)total, (unsigned long long)storage_bytes);
  uint8_t *data = NULL;
  if (!rc && !(data = malloc(total ? (size_t)total : 1))) rc = hakd_error(HAKD_ENOMEM, "%s: out of memory (%llu bytes)", path, (unsigned long long)total);
  for (size_t i = 0; i < n && !rc; i++) {
    const pv *t = list[i].t;
    const pth_storage *st = &v->storages[t->storage];
    if (!(names[i] = strdup(list[i].name))) {
      rc = oom(v);
      break;
    }
    tensors[i].name = names[i];
    int esize = storage_types[st->type].size;
    if (tensors[i].nbytes)
      gather(data + tensors[i].offset, st->data, esize, t->ndim, t->shape, t->stride, t->offset,
             (int64_t)(tensors[i].nbytes / (uint64_t)esize));
  }
  free(list);
  if (rc) {
    for (size_t i = 0; names && i < n; i++) free(names[i]);
    free(names);
    free(tensors);
    free(data);
    return rc;
  }
  return hakd__st_adopt(path, tensors, (int)n, names, data, total, out);
}

static int legacy_error(const char *path, const char *what) {
  return hakd_error(HAKD_EUNSUPPORTED, "%s: %s; only the zip format of torch.save is read: " PTH_LEGACY_HINT, path,
                    what);
}

/* What a non-zip file that still is a PyTorch file looks like: the pre-1.6 format is a raw
 * pickle stream (magic number first), the pre-0.4 one a tar archive. */
static const char *legacy_kind(const uint8_t *data, size_t size) {
  if (size >= 2 && data[0] == 0x80 && data[1] >= 2 && data[1] <= 5) return "a legacy (pre-1.6) torch.save file";
  if (size >= 262 && !memcmp(data + 257, "ustar", 5)) return "a legacy tar-format torch.save file (torch < 0.4)";
  return NULL;
}

static int map_file(const char *path, void **map, size_t *size) {
  *map = NULL;
  *size = 0;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return hakd_error(errno == ENOENT ? HAKD_ENOTFOUND : HAKD_EIO, "%s: cannot open: %s", path, strerror(errno));
  struct stat st;
  int rc = 0;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    rc = hakd_error(HAKD_EIO, "%s: not a regular file", path);
  } else if (st.st_size == 0) {
    rc = hakd_error(HAKD_EFORMAT, "%s: empty file", path);
  } else {
    *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (*map == MAP_FAILED) {
      *map = NULL;
      rc = hakd_error(HAKD_EIO, "%s: cannot map: %s", path, strerror(errno));
    } else {
      *size = (size_t)st.st_size;
    }
  }
  close(fd);
  return rc;
}

int hakd__pth_read(const char *path, const uint8_t *data, size_t size, hakd_st_file **out) {
  *out = NULL;
  if (!hakd__zip_is_zip(data, size)) {
    const char *kind = legacy_kind(data, size);
    if (kind) return legacy_error(path, kind);
    return hakd_error(HAKD_EFORMAT, "%s: not a PyTorch zip checkpoint (no zip signature)", path);
  }
  hakd__zip z;
  int rc = hakd__zip_open(&z, path, data, size);
  if (rc) return rc;
  char prefix[256], name[300];
  if ((rc = check_archive(&z, path, prefix, sizeof prefix))) {
    hakd__zip_close(&z);
    return rc;
  }
  snprintf(name, sizeof name, "%s/data.pkl", prefix);
  hakd__zip_entry *pkl = hakd__zip_find(&z, name);
  if ((rc = hakd__zip_read(&z, pkl))) {
    hakd__zip_close(&z);
    return rc;
  }
  vm v;
  memset(&v, 0, sizeof v);
  v.path = path;
  v.start = v.p = pkl->data;
  v.end = pkl->data + pkl->size;
  rc = run(&v);
  if (!rc) rc = build(path, &z, prefix, &v, v.stack[0], size, out);
  vm_free(&v);
  hakd__zip_close(&z);
  return rc;
}

int hakd_pth_open(const char *path, hakd_st_file **out) {
  *out = NULL;
  void *map;
  size_t size;
  int rc = map_file(path, &map, &size);
  if (!rc) rc = hakd__pth_read(path, map, size, out);
  if (map) munmap(map, size);
  return rc;
}

int hakd_weights_open(const char *path, hakd_st_file **out) {
  *out = NULL;
  /* sniff the first bytes; anything not PyTorch's gets the safetensors reader and its messages */
  uint8_t head[512];
  size_t n = 0;
  FILE *fp = fopen(path, "rb");
  int opened = fp != NULL;
  if (fp) {
    n = fread(head, 1, sizeof head, fp);
    fclose(fp);
  }
  size_t len = strlen(path);
  /* a .pth / .pt that is neither gets the PyTorch reader's message, not a safetensors one */
  int named_pth = (len > 4 && !strcmp(path + len - 4, ".pth")) || (len > 3 && !strcmp(path + len - 3, ".pt"));
  if (hakd__zip_is_zip(head, n) || legacy_kind(head, n) || (named_pth && opened)) return hakd_pth_open(path, out);
  return hakd_st_open(path, out);
}
