#include "pool.h"

#include "build_config.h" /* the build's: DSM_HAVE_CUDA */
#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>

#ifdef DSM_HAVE_CUDA
#include <cuda_runtime.h>
#endif

#define POOL_ALIGN 4096

int dsm_pool_init(struct dsm_pool **out, size_t slot_bytes, unsigned n_slots, unsigned flags,
		  const struct dsm_io_methods *io)
{
	return dsm_pool_init_node(out, slot_bytes, n_slots, flags, io, NULL, -1);
}

int dsm_pool_init_node(struct dsm_pool **out, size_t slot_bytes, unsigned n_slots, unsigned flags,
		       const struct dsm_io_methods *io, struct dsm_topo *topo, int node)
{
	*out = NULL;
	if (topo && (node < 0 || node >= dsm_topo_n_nodes(topo)))
		return dsm_fail(DSM_EARG, "buffer pool: NUMA node %d does not exist (%d nodes)", node, dsm_topo_n_nodes(topo));
	if (slot_bytes == 0 || slot_bytes > SIZE_MAX - POOL_ALIGN)
		return dsm_fail(DSM_EARG, "buffer pool: bad slot size %zu", slot_bytes);
	size_t slot = (slot_bytes + POOL_ALIGN - 1) / POOL_ALIGN * POOL_ALIGN;
	if (n_slots && slot > SIZE_MAX / n_slots)
		return dsm_fail(DSM_EARG, "buffer pool: %u slots of %zu bytes overflow", n_slots, slot);
	struct dsm_pool *p = calloc(1, sizeof *p);
	if (!p)
		return dsm_fail(DSM_ENOMEM, "buffer pool: out of memory");
	p->io = io ? io : &dsm_io_default;
	p->slot_bytes = slot;
	p->n_slots = n_slots;
	p->bytes = slot * n_slots;
	p->map_bytes = p->bytes ? p->bytes : POOL_ALIGN;
	p->slots_per_chunk = slot > DSM_POOL_REGISTER_MAX ? 1 : (unsigned)(DSM_POOL_REGISTER_MAX / slot);
	p->node = topo ? node : -1;
	void *m = mmap(NULL, p->map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED) {
		int e = errno;
		size_t mib = p->map_bytes >> 20;
		free(p);
		return dsm_fail(DSM_ENOMEM, "buffer pool: cannot map %zu MiB for %u expert slots: %s", mib, n_slots,
				strerror(e));
	}
	p->base = m;
	/* Huge pages cut TLB misses of the expert kernels; a refusal costs nothing. */
	madvise(p->base, p->map_bytes, MADV_HUGEPAGE);
	/* Bound before mlock touches the pages, so that they are allocated on the node. */
	if (topo) {
		int rc = dsm_topo_bind_area(topo, node, p->base, p->map_bytes);
		p->bound = rc == 0;
		if (rc == DSM_EIO)
			snprintf(p->bind_error, sizeof p->bind_error, "%s", dsm_errmsg());
	}
	if (!(flags & DSM_POOL_NO_LOCK) && p->bytes) {
		int e = p->io->lock(p->io->ctx, p->base, p->bytes);
		if (e == 0) {
			p->locked = 1;
		} else {
			struct rlimit rl = { 0, 0 };
			getrlimit(RLIMIT_MEMLOCK, &rl);
			char lim[32];
			if (rl.rlim_cur == RLIM_INFINITY)
				snprintf(lim, sizeof lim, "unlimited");
			else
				snprintf(lim, sizeof lim, "%llu KiB", (unsigned long long)rl.rlim_cur >> 10);
			snprintf(p->warning, sizeof p->warning,
				 "could not lock %zu MiB of expert buffers in memory (mlock: %s; RLIMIT_MEMLOCK %s): "
				 "they stay unpinned and may be swapped out; raise `ulimit -l` to pin them",
				 p->bytes >> 20, strerror(-e), lim);
		}
	}
#ifdef DSM_HAVE_CUDA
	if (p->bytes) {
		cudaError_t ce = cudaHostRegister(p->base, p->bytes, cudaHostRegisterPortable);
		if (ce == cudaSuccess) {
			p->cuda_registered = 1;
		} else {
			(void)cudaGetLastError();
			/* No device or no driver: CPU-only machine, nothing to say. */
			if (!p->warning[0] && ce != cudaErrorNoDevice && ce != cudaErrorInsufficientDriver)
				snprintf(p->warning, sizeof p->warning,
					 "cudaHostRegister of %zu MiB of expert buffers failed (%s): uploads from them "
					 "go through a staging copy", p->bytes >> 20, cudaGetErrorString(ce));
		}
	}
#endif
	*out = p;
	return 0;
}

void dsm_pool_free(struct dsm_pool *p)
{
	if (!p)
		return;
	if (p->base) {
#ifdef DSM_HAVE_CUDA
		if (p->cuda_registered)
			cudaHostUnregister(p->base);
#endif
		if (p->locked)
			p->io->unlock(p->io->ctx, p->base, p->bytes);
		munmap(p->base, p->map_bytes);
	}
	free(p);
}

int dsm_pool_iovecs(const struct dsm_pool *p, struct iovec **iov, unsigned *n)
{
	*iov = NULL;
	*n = 0;
	if (p->slot_bytes > DSM_POOL_REGISTER_MAX)
		return dsm_fail(DSM_EARG, "buffer pool: slots of %zu bytes are too large to register", p->slot_bytes);
	unsigned chunks = (p->n_slots + p->slots_per_chunk - 1) / p->slots_per_chunk;
	if (chunks == 0)
		return 0;
	struct iovec *v = calloc(chunks, sizeof *v);
	if (!v)
		return dsm_fail(DSM_ENOMEM, "buffer pool: out of memory");
	for (unsigned c = 0; c < chunks; c++) {
		unsigned first = c * p->slots_per_chunk;
		unsigned count = p->n_slots - first < p->slots_per_chunk ? p->n_slots - first : p->slots_per_chunk;
		v[c].iov_base = dsm_pool_slot(p, first);
		v[c].iov_len = (size_t)count * p->slot_bytes;
	}
	*iov = v;
	*n = chunks;
	return 0;
}
