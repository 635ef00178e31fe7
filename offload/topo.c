#include "topo.h"

#include "error.h"

#include <errno.h>
#include <hwloc.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

struct dsm_topo {
	hwloc_topology_t h;
	int this_system;
	int n_nodes;                   /* NUMA nodes with cores */
	hwloc_obj_t node[DSM_EXPERT_MAX_NODES * 8];
	int n_cores;
	hwloc_obj_t *core;             /* [n_cores] node-major */
	int *core_node;                /* [n_cores] */
};

#define MAX_NODES (int)(sizeof(((struct dsm_topo *)0)->node) / sizeof(hwloc_obj_t))

int dsm_topo_open(struct dsm_topo **out, const char *synthetic)
{
	*out = NULL;
	struct dsm_topo *t = calloc(1, sizeof(*t));
	if (!t)
		return dsm_fail(DSM_ENOMEM, "topology: out of memory");
	if (hwloc_topology_init(&t->h) < 0) {
		free(t);
		return dsm_fail(DSM_EIO, "hwloc: topology init failed");
	}
	if (synthetic && hwloc_topology_set_synthetic(t->h, synthetic) < 0) {
		hwloc_topology_destroy(t->h);
		free(t);
		return dsm_fail(DSM_EARG, "hwloc: bad synthetic topology '%s'", synthetic);
	}
	if (hwloc_topology_load(t->h) < 0) {
		hwloc_topology_destroy(t->h);
		free(t);
		return dsm_fail(DSM_EIO, "hwloc: topology load failed: %s", strerror(errno));
	}
	t->this_system = hwloc_topology_is_thissystem(t->h);
	int n_numa = hwloc_get_nbobjs_by_type(t->h, HWLOC_OBJ_NUMANODE);
	int n_core = hwloc_get_nbobjs_by_type(t->h, HWLOC_OBJ_CORE);
	int no_cores = n_core <= 0; /* some virtual machines report PUs only: each PU is then a core */
	hwloc_obj_type_t core_type = no_cores ? HWLOC_OBJ_PU : HWLOC_OBJ_CORE;
	if (no_cores)
		n_core = hwloc_get_nbobjs_by_type(t->h, HWLOC_OBJ_PU);
	t->core = calloc((size_t)(n_core > 0 ? n_core : 1), sizeof(hwloc_obj_t));
	t->core_node = calloc((size_t)(n_core > 0 ? n_core : 1), sizeof(int));
	if (!t->core || !t->core_node) {
		dsm_topo_close(t);
		return dsm_fail(DSM_ENOMEM, "topology: out of memory");
	}
	/* Node-major order of cores; nodes without cores (memory-only, e.g. CXL) are left out. */
	for (int j = 0; j < n_numa; j++) {
		hwloc_obj_t nd = hwloc_get_obj_by_type(t->h, HWLOC_OBJ_NUMANODE, (unsigned)j);
		int first = t->n_cores;
		for (int c = 0; c < n_core; c++) {
			hwloc_obj_t co = hwloc_get_obj_by_type(t->h, core_type, (unsigned)c);
			int taken = 0;
			for (int k = 0; k < t->n_cores; k++)
				taken |= t->core[k] == co;
			if (!taken && hwloc_bitmap_isincluded(co->cpuset, nd->cpuset)) {
				t->core[t->n_cores] = co;
				t->core_node[t->n_cores++] = t->n_nodes;
			}
		}
		if (t->n_cores > first) {
			if (t->n_nodes == MAX_NODES) {
				dsm_topo_close(t);
				return dsm_fail(DSM_EUNSUPPORTED, "topology: more than %d NUMA nodes", MAX_NODES);
			}
			t->node[t->n_nodes++] = nd;
		}
	}
	/* Cores no node claims (or no NUMA information): on the first node. */
	for (int c = 0; c < n_core; c++) {
		hwloc_obj_t co = hwloc_get_obj_by_type(t->h, core_type, (unsigned)c);
		int taken = 0;
		for (int k = 0; k < t->n_cores; k++)
			taken |= t->core[k] == co;
		if (!taken) {
			t->core[t->n_cores] = co;
			t->core_node[t->n_cores++] = 0;
		}
	}
	if (t->n_nodes == 0) {
		t->node[0] = hwloc_get_obj_by_type(t->h, HWLOC_OBJ_NUMANODE, 0);
		t->n_nodes = 1;
	}
	if (t->n_cores == 0) {
		dsm_topo_close(t);
		return dsm_fail(DSM_EIO, "hwloc: no core found");
	}
	*out = t;
	return 0;
}

void dsm_topo_close(struct dsm_topo *t)
{
	if (!t)
		return;
	free(t->core);
	free(t->core_node);
	if (t->h)
		hwloc_topology_destroy(t->h);
	free(t);
}

int dsm_topo_is_this_system(const struct dsm_topo *t)
{
	return t->this_system;
}

int dsm_topo_n_nodes(const struct dsm_topo *t)
{
	return t->n_nodes;
}

int dsm_topo_n_cores(const struct dsm_topo *t)
{
	return t->n_cores;
}

int dsm_topo_node_cores(const struct dsm_topo *t, int j)
{
	int n = 0;
	for (int c = 0; c < t->n_cores; c++)
		n += t->core_node[c] == j;
	return n;
}

size_t dsm_topo_llc_bytes(const struct dsm_topo *t)
{
	static const hwloc_obj_type_t levels[] = { HWLOC_OBJ_L3CACHE, HWLOC_OBJ_L2CACHE };
	for (size_t l = 0; l < sizeof(levels) / sizeof(levels[0]); l++) {
		size_t sum = 0;
		int n = hwloc_get_nbobjs_by_type(t->h, levels[l]);
		for (int i = 0; i < n; i++)
			sum += (size_t)hwloc_get_obj_by_type(t->h, levels[l], (unsigned)i)->attr->cache.size;
		if (sum)
			return sum;
	}
	return 0;
}

void dsm_topo_threads_free(struct dsm_topo_threads *plan)
{
	if (!plan)
		return;
	free(plan->thread_node);
	free(plan->thread_core);
	free(plan->thread_pu);
	memset(plan, 0, sizeof(*plan));
}

int dsm_topo_plan_threads(struct dsm_topo *t, int max_threads, struct dsm_topo_threads *plan)
{
	memset(plan, 0, sizeof(*plan));
	int n = max_threads <= 0 || max_threads > t->n_cores ? t->n_cores : max_threads;
	int n_nodes = n < t->n_nodes ? n : t->n_nodes;
	if (n_nodes > DSM_EXPERT_MAX_NODES)
		n_nodes = DSM_EXPERT_MAX_NODES;
	/* Threads per node: in proportion to the node's cores, at least one on each used node. */
	int want[MAX_NODES] = { 0 }, total = 0, used_cores = 0;
	for (int j = 0; j < n_nodes; j++)
		used_cores += dsm_topo_node_cores(t, j);
	if (n > used_cores)
		n = used_cores;
	for (int j = 0, acc = 0; j < n_nodes; j++) {
		int cores = dsm_topo_node_cores(t, j);
		int upto = (int)((long)n * (acc + cores) / used_cores);
		want[j] = upto - total;
		if (want[j] < 1)
			want[j] = 1;
		if (want[j] > cores)
			want[j] = cores;
		total += want[j];
		acc += cores;
	}
	plan->thread_node = calloc((size_t)total, sizeof(int));
	plan->thread_core = calloc((size_t)total, sizeof(int));
	plan->thread_pu = calloc((size_t)total, sizeof(int));
	if (!plan->thread_node || !plan->thread_core || !plan->thread_pu) {
		dsm_topo_threads_free(plan);
		return dsm_fail(DSM_ENOMEM, "thread plan: out of memory");
	}
	int i = 0;
	for (int j = 0; j < n_nodes; j++)
		for (int c = 0, got = 0; c < t->n_cores && got < want[j]; c++)
			if (t->core_node[c] == j) {
				plan->thread_node[i] = j;
				plan->thread_core[i] = c;
				plan->thread_pu[i] = hwloc_bitmap_first(t->core[c]->cpuset);
				i++;
				got++;
			}
	plan->topo = t;
	plan->th = (struct dsm_cpu_threads){ i, n_nodes, plan->thread_node, dsm_topo_bind_thread, plan };
	return 0;
}

int dsm_topo_bind_thread(void *arg, int i)
{
	struct dsm_topo_threads *plan = arg;
	struct dsm_topo *t = plan->topo;
	if (i < 0 || i >= plan->th.n_threads)
		return dsm_fail(DSM_EARG, "bind: thread %d of %d", i, plan->th.n_threads);
	if (!t->this_system)
		return 0;
	if (hwloc_set_cpubind(t->h, t->core[plan->thread_core[i]]->cpuset, HWLOC_CPUBIND_THREAD) < 0)
		return dsm_fail(DSM_EIO, "bind thread %d to core %d: %s", i, plan->thread_core[i], strerror(errno));
	return 0;
}

void *dsm_topo_alloc_node(struct dsm_topo *t, int j, size_t bytes)
{
	if (j < 0 || j >= t->n_nodes) {
		dsm_fail(DSM_EARG, "alloc on NUMA node %d of %d", j, t->n_nodes);
		return NULL;
	}
	if (bytes == 0)
		bytes = 1;
	void *p = NULL;
	if (t->this_system)
		p = hwloc_alloc_membind(t->h, bytes, t->node[j]->nodeset, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET);
	if (!p) /* synthetic topology, or mbind refused (containers): plain memory */
		p = hwloc_alloc(t->h, bytes);
	if (!p) {
		dsm_fail(DSM_ENOMEM, "%zu bytes on NUMA node %d: %s", bytes, j, strerror(errno));
		return NULL;
	}
#ifdef MADV_HUGEPAGE
	/* Fewer TLB misses while streaming: a hint, ignored where THP is off. */
	madvise(p, bytes, MADV_HUGEPAGE);
#endif
	return p;
}

void dsm_topo_free(struct dsm_topo *t, void *p, size_t bytes)
{
	if (p)
		hwloc_free(t->h, p, bytes ? bytes : 1);
}

int dsm_topo_bind_area(struct dsm_topo *t, int j, void *p, size_t bytes)
{
	if (j < 0 || j >= t->n_nodes)
		return dsm_fail(DSM_EARG, "bind memory to NUMA node %d of %d", j, t->n_nodes);
	if (!t->this_system)
		return dsm_fail(DSM_EUNSUPPORTED, "bind memory to NUMA node %d: the topology is synthetic", j);
	if (hwloc_set_area_membind(t->h, p, bytes, t->node[j]->nodeset, HWLOC_MEMBIND_BIND, HWLOC_MEMBIND_BYNODESET) < 0)
		return dsm_fail(DSM_EIO, "bind %zu MiB to NUMA node %d: %s", bytes >> 20, j, strerror(errno));
	return 0;
}

int dsm_topo_memory_node(struct dsm_topo *t, const void *p, size_t bytes)
{
	if (!t->this_system)
		return -1;
	hwloc_bitmap_t set = hwloc_bitmap_alloc();
	hwloc_membind_policy_t policy;
	int node = -1;
	if (set && hwloc_get_area_membind(t->h, p, bytes, set, &policy, HWLOC_MEMBIND_BYNODESET) == 0 &&
	    hwloc_bitmap_weight(set) == 1)
		for (int j = 0; j < t->n_nodes; j++)
			if (hwloc_bitmap_isequal(set, t->node[j]->nodeset))
				node = j;
	hwloc_bitmap_free(set);
	return node;
}

static size_t align64(size_t v)
{
	return (v + 63) & ~(size_t)63;
}

/* dst [rows, cols] dense <- src rows [r0, r0 + rows) cols [c0, c0 + cols), any strides; likewise scales. */
static void copy_window(const struct dsm_fp8_mat *src, size_t r0, size_t rows, size_t c0, size_t cols,
			uint8_t *w, float *scale, struct dsm_fp8_mat *dst)
{
	for (size_t r = 0; r < rows; r++)
		memcpy(w + r * cols, src->w + (r0 + r) * src->ld + c0, cols);
	size_t sr = (rows + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK, sc = (cols + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK;
	for (size_t r = 0; r < sr; r++)
		memcpy(scale + r * sc, src->scale + (r0 / DSM_FP8_BLOCK + r) * src->scale_ld + c0 / DSM_FP8_BLOCK,
		       sc * sizeof(float));
	*dst = dsm_fp8_mat_dense(w, scale, rows, cols);
}

static size_t mat_bytes(size_t rows, size_t cols)
{
	size_t sr = (rows + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK, sc = (cols + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK;
	return align64(rows * cols) + align64(sr * sc * sizeof(float));
}

int dsm_topo_place_expert(struct dsm_topo *t, const struct dsm_expert_fp8 *src, int n, struct dsm_topo_expert *out)
{
	memset(out, 0, sizeof(*out));
	if (src->n_parts != 1)
		return dsm_fail(DSM_EARG, "place expert: source has %d parts, expected 1", src->n_parts);
	if (n < 1 || n > t->n_nodes || n > DSM_EXPERT_MAX_NODES)
		return dsm_fail(DSM_EARG, "place expert on %d nodes of %d", n, t->n_nodes);
	const struct dsm_expert_part *s = &src->part[0];
	size_t hidden = src->hidden;
	out->e.hidden = hidden;
	out->e.inter = src->inter;
	out->e.n_parts = n;
	for (int j = 0; j < n; j++) {
		size_t i0, i1;
		dsm_expert_node_range(src->inter, n, j, &i0, &i1);
		size_t rows = i1 - i0, gate_b = mat_bytes(rows, hidden), down_b = mat_bytes(hidden, rows);
		out->bytes[j] = 2 * gate_b + down_b;
		char *m = dsm_topo_alloc_node(t, j, out->bytes[j]);
		if (!m) {
			dsm_topo_expert_free(t, out);
			return dsm_fail_prefix(DSM_ENOMEM, "place expert part %d", j);
		}
		out->mem[j] = m;
		struct dsm_expert_part *p = &out->e.part[j];
		/* Written by this thread; with a bound policy the pages land on node j whoever touches them. */
		copy_window(&s->gate, i0, rows, 0, hidden, (uint8_t *)m, (float *)(m + align64(rows * hidden)), &p->gate);
		m += gate_b;
		copy_window(&s->up, i0, rows, 0, hidden, (uint8_t *)m, (float *)(m + align64(rows * hidden)), &p->up);
		m += gate_b;
		copy_window(&s->down, 0, hidden, i0, rows, (uint8_t *)m, (float *)(m + align64(hidden * rows)), &p->down);
	}
	return 0;
}

void dsm_topo_expert_free(struct dsm_topo *t, struct dsm_topo_expert *x)
{
	if (!x)
		return;
	for (int j = 0; j < DSM_EXPERT_MAX_NODES; j++)
		dsm_topo_free(t, x->mem[j], x->bytes[j]);
	memset(x, 0, sizeof(*x));
}
