/* The ops' per-thread state: one grow-only scratch block for the temporaries of a single op call
 * (im2col tiles, depthwise partial sums, oneDNN reorders, scratchpads and bfloat16 operand copies
 * of conv2d, linear and matmul), and the release of whatever else a thread's ops keep (the oneDNN
 * engine and primitive caches register it here). Without the block the convs of a network would
 * pile activation-sized temporaries up in the step arena until the step ends; after the first step
 * it has its high-water size and calls allocate nothing. Everything is the calling thread's
 * (thread-local), so forwards may run on several threads at once (hakd_model_predict); OpenMP
 * workers inside one call use their slices of the caller's block. A thread that exits releases
 * its state. */
#ifndef HAKD_OPS_SCRATCH_H
#define HAKD_OPS_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

/* At least `bytes`, 64-byte aligned, valid until the next ops_scratch call on this thread
 * (contents are not kept when it grows: callers carve their pieces after one reservation); NULL
 * with an error set when out of memory. */
void *ops_scratch(size_t bytes);
/* Bytes a carve of `bytes` takes inside the block (keeps 64-byte alignment). */
static inline size_t ops_scratch_round(size_t bytes) { return (bytes + 63) & ~(size_t)63; }
/* How often this thread's block grew (each growth is one malloc). */
uint64_t ops_scratch_growths(void);
/* Bytes this thread's block holds now (its high-water size): the trainer's memory estimate counts
 * it beside the step arena, which does not hold it. */
size_t ops_scratch_bytes(void);
/* Bytes of frozen models' packed convolution weights this thread keeps (conv2d_frozen.c): the
 * trainer's memory estimate counts them with the model (a distillation's teacher is frozen). */
size_t ops_frozen_weights_bytes(void);
/* How many packed copies this thread has made (tests: a second forward makes none). */
uint64_t ops_frozen_weights_packs(void);
/* Registers release (once per thread) to run at ops_release and when the thread exits: how the
 * oneDNN engine and caches are freed without this module knowing them. */
void ops_thread_on_release(void (*release)(void));
/* Frees the calling thread's block and runs its registered releases (tests, the memory probe
 * before it measures; later calls rebuild what they need). */
void ops_release(void);

#endif
