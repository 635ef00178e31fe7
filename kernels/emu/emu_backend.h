/* The emu backend: the cpu backend behind a device-memory budget, so that every code path that moves work
 * to or from a GPU tier runs where there is no GPU (docs ARCHITECTURE.md).
 *
 * Device memory is host memory (64-byte aligned) counted against the budget: alloc returns NULL past it.
 * Called without a current queue, copy_in/copy_out are memcpy and every op runs at once on an owned cpu
 * backend created with the same options, so results are bit-identical to the cpu backend's.
 *
 * Queues are real: each has a worker thread with its own one-thread cpu backend (the "device", one more
 * processor beside the caller's threads), a FIFO of jobs, and events that complete when the worker reaches
 * them, so the overlap, ordering and synchronization of a device run for real where there is no GPU. A
 * queued op's results are still bit-identical: the cpu backend's kernels give the same result for any
 * thread count. Pinned host memory is plain aligned memory.
 *
 * Host memory given to the device is refused (a real GPU would fault, the emu would not notice): copies check
 * their direction against the live allocations, and every op that each of its data operands is device memory
 * (DSM_EARG naming the op and the operand; attn_full's mask table stays the caller's host table). */
#ifndef DSM_EMU_BACKEND_H
#define DSM_EMU_BACKEND_H

#include "backend.h"

#include <stddef.h>

#define DSM_EMU_DEFAULT_BYTES ((size_t)1 << 30) /* device budget when the options give 0 */

struct dsm_emu_stats {
	size_t budget;          /* device bytes */
	size_t used, peak;      /* bytes allocated now and at most (each allocation rounded up to 64) */
	size_t allocs;          /* live allocations */
	size_t failed;          /* allocations refused for the budget */
	size_t bad_frees;       /* frees of pointers this device did not allocate (ignored) */
	size_t jobs;            /* copies and ops the queues ran */
	double queue_busy_seconds; /* time the queues' workers spent running them */
};

/* Creates the emu backend (called by dsm_backend_create for "emu"). o->device_bytes is the budget. */
int dsm_emu_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o);
/* Counters of an emu backend; DSM_EARG when be is not one. */
int dsm_emu_get_stats(const struct dsm_backend *be, struct dsm_emu_stats *s);
/* Pauses (hold = 1) or resumes queue q of emu backend be: a paused queue starts no job, so that tests can
 * check what waits for what. */
void dsm_emu_queue_hold(struct dsm_backend *be, struct dsm_queue *q, int hold);
/* The n-th op submitted to a queue from now on fails when the queue runs it (DSM_EIO), as a device fault would
 * (n <= 0: none): for tests of the callers' error paths. */
void dsm_emu_fail_op(struct dsm_backend *be, int n);

#endif
