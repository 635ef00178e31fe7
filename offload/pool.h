/* A pool of pinned buffers for expert bytes: one anonymous mapping cut into equal slots, locked in memory
 * (mlock), registered with the CUDA driver when the cuda backend is built (so uploads from it are DMA),
 * and registered with the streamer's io_uring ring (fixed buffers, dsm_stream_register_pool).
 *
 * Pinning is best effort. Where mlock is refused (RLIMIT_MEMLOCK without CAP_IPC_LOCK) or CUDA refuses
 * the registration, the pool still works with ordinary memory and says why in `warning`, which the
 * caller prints once; the library itself never prints. */
#ifndef DSM_POOL_H
#define DSM_POOL_H

#include "io_methods.h"
#include "topo.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

/* Largest buffer io_uring registers as one fixed buffer. */
#define DSM_POOL_REGISTER_MAX (1ull << 30)

enum dsm_pool_flags {
	DSM_POOL_NO_LOCK = 1,     /* do not mlock (tests of the unpinned path, or by choice) */
};

struct dsm_pool {
	uint8_t *base;            /* [n_slots][slot_bytes], page aligned */
	size_t slot_bytes;        /* requested size rounded up to 4096 */
	unsigned n_slots;
	size_t bytes;             /* n_slots * slot_bytes */
	size_t map_bytes;         /* bytes mapped (bytes, at least one page) */
	int locked;               /* mlock succeeded */
	int cuda_registered;      /* cudaHostRegister succeeded */
	char warning[320];        /* non-empty when pinning failed: print it once */
	const struct dsm_io_methods *io;
	unsigned slots_per_chunk; /* slots per registered buffer (chunks <= DSM_POOL_REGISTER_MAX) */
	int node;                 /* NUMA node the memory is meant for (dsm_pool_init_node), -1: any */
	int bound;                /* the memory is bound to that node */
	char bind_error[160];     /* why binding failed on this machine ("" when bound or not asked) */
};

/* Maps n_slots slots of at least slot_bytes bytes each and pins them as far as allowed.
 * io: NULL for dsm_io_default. Returns 0, or DSM_EARG (sizes overflow, zero), DSM_ENOMEM with a message.
 * *out owns the memory; free it with dsm_pool_free. */
int dsm_pool_init(struct dsm_pool **out, size_t slot_bytes, unsigned n_slots, unsigned flags,
		  const struct dsm_io_methods *io);
/* As dsm_pool_init, for memory of NUMA node `node` of topo: the mapping is bound to it (hwloc membind) before
 * its pages are touched. Binding is best effort like pinning: on a synthetic topology nothing is bound, and
 * where the kernel refuses the memory stays plain with the reason in bind_error. DSM_EARG for a node the
 * topology does not have. */
int dsm_pool_init_node(struct dsm_pool **out, size_t slot_bytes, unsigned n_slots, unsigned flags,
		       const struct dsm_io_methods *io, struct dsm_topo *topo, int node);
/* Unpins and unmaps. Accepts NULL. */
void dsm_pool_free(struct dsm_pool *p);

static inline void *dsm_pool_slot(const struct dsm_pool *p, unsigned slot)
{
	return p->base + (size_t)slot * p->slot_bytes;
}

/* The pool as io_uring fixed buffers: *n iovecs, each a run of whole slots of at most
 * DSM_POOL_REGISTER_MAX bytes. *iov is malloc'ed (the caller frees it). Returns 0, DSM_EARG when one
 * slot is larger than that limit, or DSM_ENOMEM. */
int dsm_pool_iovecs(const struct dsm_pool *p, struct iovec **iov, unsigned *n);

/* The fixed-buffer index of a slot (valid once the iovecs are registered). */
static inline int dsm_pool_buf_index(const struct dsm_pool *p, unsigned slot)
{
	return (int)(slot / p->slots_per_chunk);
}

#endif
