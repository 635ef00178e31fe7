/* The machine as the CPU tiers see it (hwloc): NUMA nodes, physical cores, one thread per core bound to it,
 * memory bound to a node, and routed experts placed so that every node streams only its own memory.
 *
 * The expert kernels (kernels/cpu/expert_kernels.h) take a struct dsm_cpu_threads; dsm_topo_plan_threads
 * fills one from the topology, with dsm_topo_bind_thread as its binder. A topology may be synthetic (an
 * hwloc description such as "numa:2 core:4 pu:2"): then nothing is bound and memory is plain, which is how
 * the NUMA logic is tested on one-node machines. */
#ifndef DSM_TOPO_H
#define DSM_TOPO_H

#include "expert_kernels.h"

#include <stddef.h>

struct dsm_topo;

/* Loads the topology of this machine (synthetic NULL) or the described synthetic one. */
int dsm_topo_open(struct dsm_topo **out, const char *synthetic);
/* Accepts NULL. */
void dsm_topo_close(struct dsm_topo *t);
/* 1 when the topology is this machine's (binding is real), 0 for a synthetic one. */
int dsm_topo_is_this_system(const struct dsm_topo *t);
/* NUMA nodes that have at least one core (at least 1). */
int dsm_topo_n_nodes(const struct dsm_topo *t);
/* Physical cores (at least 1); hardware threads of a core count once. */
int dsm_topo_n_cores(const struct dsm_topo *t);
/* Physical cores of NUMA node j (0 <= j < dsm_topo_n_nodes). */
int dsm_topo_node_cores(const struct dsm_topo *t, int j);
/* Bytes of all last-level caches together (L3, else L2), 0 when hwloc does not know them. */
size_t dsm_topo_llc_bytes(const struct dsm_topo *t);

/* Where each thread runs: one thread per physical core, never two on one core, numbered node-major.
 * th is what dsm_expert_ctx_init takes; it points into this struct, which must outlive the context. */
struct dsm_topo_threads {
	struct dsm_cpu_threads th;
	int *thread_node;      /* [n] node index (0 .. th.n_nodes) */
	int *thread_core;      /* [n] logical index of the core (hwloc) */
	int *thread_pu;        /* [n] OS index of the core's first hardware thread */
	struct dsm_topo *topo;
};

/* One thread per core on every node (max_threads <= 0), or max_threads spread over the nodes in proportion
 * (the first max_threads nodes only when there are fewer threads than nodes). */
int dsm_topo_plan_threads(struct dsm_topo *t, int max_threads, struct dsm_topo_threads *plan);
/* Accepts a zeroed or half-built plan. */
void dsm_topo_threads_free(struct dsm_topo_threads *plan);
/* The binder of plan->th: binds the calling thread to the core of thread i (no-op on a synthetic topology).
 * arg is the struct dsm_topo_threads. */
int dsm_topo_bind_thread(void *arg, int i);

/* bytes of memory bound to NUMA node j (page aligned, transparent huge pages advised). On a synthetic
 * topology, or where the kernel refuses the binding, the memory is plain. NULL (with a message) on failure. */
void *dsm_topo_alloc_node(struct dsm_topo *t, int j, size_t bytes);
/* Frees what dsm_topo_alloc_node returned (bytes as allocated); accepts NULL. */
void dsm_topo_free(struct dsm_topo *t, void *p, size_t bytes);
/* Binds [p, p + bytes) (page aligned, pages not touched yet) to NUMA node j, so that they land there when first
 * touched. Returns 0, DSM_EARG (no node j), DSM_EUNSUPPORTED (a synthetic topology: nothing to bind) or DSM_EIO
 * (the kernel refused, e.g. mbind blocked in a container), each with a message. */
int dsm_topo_bind_area(struct dsm_topo *t, int j, void *p, size_t bytes);
/* The node the pages of [p, p + bytes) are bound to, -1 when not bound to exactly one node or unknown. */
int dsm_topo_memory_node(struct dsm_topo *t, const void *p, size_t bytes);

/* An expert placed for n nodes: part j (intermediate rows dsm_expert_node_range(inter, n, j)) lives in
 * memory bound to node j: its gate and up rows, the matching columns of down, and their scales. No weight is
 * held twice. */
struct dsm_topo_expert {
	struct dsm_expert_fp8 e;                  /* n_parts = n, each part dense */
	void *mem[DSM_EXPERT_MAX_NODES];
	size_t bytes[DSM_EXPERT_MAX_NODES];
};

/* Copies a one-part expert (e.g. read from the checkpoint) into per-node memory. n: the node count of the
 * thread plan that will compute it (1 .. dsm_topo_n_nodes). */
int dsm_topo_place_expert(struct dsm_topo *t, const struct dsm_expert_fp8 *src, int n, struct dsm_topo_expert *out);
/* Accepts a zeroed or half-built placement. */
void dsm_topo_expert_free(struct dsm_topo *t, struct dsm_topo_expert *x);

#endif
