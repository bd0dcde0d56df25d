#include "ops/scratch.h"

#include <pthread.h>
#include <stdlib.h>

#include "hakd/error.h"

static _Thread_local unsigned char *ops_scratch_base;
static _Thread_local size_t ops_scratch_capacity;
static _Thread_local uint64_t ops_scratch_grown;
/* the thread's registered releases (the oneDNN state: a handful) */
#define OPS_MAX_RELEASES 8
static _Thread_local void (*ops_releases[OPS_MAX_RELEASES])(void);
static _Thread_local int ops_n_releases;

/* A thread that exits frees its state: a key whose destructor runs ops_release in the exiting
 * thread (its thread-local variables are still there then). */
static pthread_key_t ops_thread_key;
static pthread_once_t ops_thread_key_once = PTHREAD_ONCE_INIT;
static void ops_thread_exit(void *unused) {
  (void)unused;
  ops_release();
}
static void ops_thread_key_create(void) { (void)pthread_key_create(&ops_thread_key, ops_thread_exit); }

static void ops_thread_state_used(void) {
  pthread_once(&ops_thread_key_once, ops_thread_key_create);
  if (!pthread_getspecific(ops_thread_key)) (void)pthread_setspecific(ops_thread_key, &ops_thread_key);
}

void ops_thread_on_release(void (*release)(void)) {
  ops_thread_state_used();
  for (int i = 0; i < ops_n_releases; i++)
    if (ops_releases[i] == release) return;
  if (ops_n_releases < OPS_MAX_RELEASES) ops_releases[ops_n_releases++] = release;
}

void *ops_scratch(size_t bytes) {
  if (bytes <= ops_scratch_capacity && ops_scratch_base) return ops_scratch_base;
  ops_thread_state_used();
  size_t capacity = ops_scratch_round(bytes ? bytes : 1);
  free(ops_scratch_base); /* contents need not survive: callers carve after reserving */
  ops_scratch_base = aligned_alloc(64, capacity);
  ops_scratch_capacity = ops_scratch_base ? capacity : 0;
  if (!ops_scratch_base) {
    hakd_error(HAKD_ENOMEM, "ops: out of memory for %zu bytes of scratch", capacity);
    return NULL;
  }
  ops_scratch_grown++;
  return ops_scratch_base;
}

uint64_t ops_scratch_growths(void) { return ops_scratch_grown; }

size_t ops_scratch_bytes(void) { return ops_scratch_capacity; }

void ops_release(void) {
  free(ops_scratch_base);
  ops_scratch_base = NULL;
  ops_scratch_capacity = 0;
  for (int i = 0; i < ops_n_releases; i++) ops_releases[i]();
}
