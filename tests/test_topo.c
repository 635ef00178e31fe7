/* hwloc topology: thread plans on synthetic machines with two and four NUMA nodes (one thread per core, never
 * two on a core, node-major, every node used), experts placed per node computing the same numbers as the
 * unplaced expert, and on this machine: threads really bound, memory on its node. */
#include "topo.h"

#include "backend.h"

#include "error.h"
#include "test_util.h"

#include <hwloc.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 42;

static float uniform(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (float)((double)(z >> 11) / (double)(1ull << 52) - 1.0);
}

/* Checks the invariants of a plan on topology t; pus_per_core as the synthetic description says. */
static void check_plan(struct dsm_topo *t, const struct dsm_topo_threads *p, int want_threads, int want_nodes,
		       int pus_per_core, const char *what)
{
	CHECK(p->th.n_threads == want_threads, "%s: %d threads, expected %d", what, p->th.n_threads, want_threads);
	CHECK(p->th.n_nodes == want_nodes, "%s: %d nodes, expected %d", what, p->th.n_nodes, want_nodes);
	int per_node[64] = { 0 };
	for (int i = 0; i < p->th.n_threads; i++) {
		CHECK(i == 0 || p->thread_node[i] >= p->thread_node[i - 1], "%s: thread %d not node-major", what, i);
		for (int k = 0; k < i; k++)
			CHECK(p->thread_core[k] != p->thread_core[i], "%s: threads %d and %d share core %d", what, k, i,
			      p->thread_core[i]);
		/* Synthetic PUs are numbered in order: core c of the machine has PUs c * pus_per_core ... */
		int cores_per_node = dsm_topo_node_cores(t, 0);
		CHECK(p->thread_pu[i] / pus_per_core / cores_per_node == p->thread_node[i],
		      "%s: thread %d on PU %d is not on its node %d", what, i, p->thread_pu[i], p->thread_node[i]);
		CHECK(p->thread_pu[i] % pus_per_core == 0, "%s: thread %d on PU %d, not a core's first", what, i,
		      p->thread_pu[i]);
		per_node[p->thread_node[i]]++;
	}
	for (int j = 0; j < want_nodes; j++)
		CHECK(per_node[j] >= 1, "%s: node %d has no thread", what, j);
}

struct mat {
	uint8_t *w;
	float *scale;
	struct dsm_fp8_mat m;
};

static void mat_random(struct mat *a, size_t rows, size_t cols)
{
	size_t ns = (rows + 127) / 128 * ((cols + 127) / 128);
	a->w = malloc(rows * cols);
	a->scale = malloc(ns * sizeof(float));
	for (size_t i = 0; i < rows * cols; i++) {
		uint8_t c = (uint8_t)(int)(uniform() * 127.0f + 128.0f);
		a->w[i] = (c & 0x7F) == 0x7F ? 0x3F : c;
	}
	for (size_t i = 0; i < ns; i++)
		a->scale[i] = 0.01f + 0.005f * uniform();
	a->m = dsm_fp8_mat_dense(a->w, a->scale, rows, cols);
}

/* A layer of 3 experts + shared, placed per node for the plan, against the same experts unplaced
 * (windows over the checkpoint layout): results must be bit-identical, and close to one node's. */
static void check_placement(struct dsm_topo *t, const struct dsm_topo_threads *p)
{
	enum { E = 3, HIDDEN = 320, INTER = 640, TOK = 3 };
	int n = p->th.n_nodes;
	struct mat m[E + 1][3];
	struct dsm_expert_fp8 plain[E + 1];
	struct dsm_topo_expert placed[E + 1];
	const struct dsm_expert_fp8 *pp[E], *pw[E];
	for (int e = 0; e <= E; e++) {
		mat_random(&m[e][0], INTER, HIDDEN);
		mat_random(&m[e][1], INTER, HIDDEN);
		mat_random(&m[e][2], HIDDEN, INTER);
		CHECK(dsm_expert_fp8_init(&plain[e], &m[e][0].m, &m[e][1].m, &m[e][2].m) == 0, "%s", dsm_errmsg());
		int rc = dsm_topo_place_expert(t, &plain[e], n, &placed[e]);
		CHECK(rc == 0, "place: %s", dsm_errmsg());
		if (rc < 0)
			return;
		for (int j = 0; j < n && dsm_topo_is_this_system(t); j++) {
			int node = dsm_topo_memory_node(t, placed[e].mem[j], placed[e].bytes[j]);
			CHECK(node == j || node == -1, "expert %d part %d on node %d", e, j, node);
		}
		if (e < E) {
			pp[e] = &placed[e].e;
			pw[e] = &plain[e];
		}
	}
	float x[TOK * HIDDEN], w[TOK * 2], y_placed[TOK * HIDDEN], y_plain[TOK * HIDDEN], y_one[TOK * HIDDEN];
	int32_t ids[TOK * 2] = { 0, 2, 1, 2, 0, 1 };
	for (int i = 0; i < TOK * HIDDEN; i++)
		x[i] = uniform();
	for (int i = 0; i < TOK * 2; i++)
		w[i] = 0.5f + 0.25f * uniform();
	struct dsm_expert_ctx *ctx = NULL, *one = NULL;
	struct dsm_expert_opts o = { DSM_ISA_AUTO, 0, &p->th, 0 };
	CHECK(dsm_expert_ctx_init(&ctx, &o) == 0, "ctx: %s", dsm_errmsg());
	struct dsm_expert_opts o1 = { DSM_ISA_AUTO, 1, NULL, 0 };
	CHECK(dsm_expert_ctx_init(&one, &o1) == 0, "ctx: %s", dsm_errmsg());
	struct dsm_moe_args a = { TOK, 2, x, ids, w, pp, E, &placed[E].e, 0, y_placed };
	CHECK(dsm_moe_layer(ctx, &a) == 0, "placed layer: %s", dsm_errmsg());
	a.experts = pw;
	a.shared = &plain[E];
	a.y = y_plain;
	CHECK(dsm_moe_layer(ctx, &a) == 0, "plain layer: %s", dsm_errmsg());
	a.y = y_one;
	CHECK(dsm_moe_layer(one, &a) == 0, "one-node layer: %s", dsm_errmsg());
	CHECK(memcmp(y_placed, y_plain, sizeof(y_plain)) == 0, "%d nodes: placed experts differ from windows", n);
	double num = 0, den = 0;
	for (int i = 0; i < TOK * HIDDEN; i++) {
		num += ((double)y_placed[i] - y_one[i]) * ((double)y_placed[i] - y_one[i]);
		den += (double)y_one[i] * y_one[i];
	}
	CHECK(num / den < 1e-9, "%d nodes against one: NMSE %.3g", n, num / den);
	dsm_expert_ctx_free(ctx);
	dsm_expert_ctx_free(one);
	for (int e = 0; e <= E; e++) {
		dsm_topo_expert_free(t, &placed[e]);
		for (int k = 0; k < 3; k++) {
			free(m[e][k].w);
			free(m[e][k].scale);
		}
	}
}

static void test_synthetic(const char *desc, int nodes, int cores_per_node, int pus_per_core)
{
	struct dsm_topo *t = NULL;
	int rc = dsm_topo_open(&t, desc);
	CHECK(rc == 0, "%s: %s", desc, dsm_errmsg());
	if (rc < 0)
		return;
	CHECK(!dsm_topo_is_this_system(t), "%s: synthetic topology taken for this system", desc);
	CHECK(dsm_topo_n_nodes(t) == nodes, "%s: %d nodes", desc, dsm_topo_n_nodes(t));
	CHECK(dsm_topo_n_cores(t) == nodes * cores_per_node, "%s: %d cores", desc, dsm_topo_n_cores(t));
	struct dsm_topo_threads p;
	CHECK(dsm_topo_plan_threads(t, 0, &p) == 0, "plan: %s", dsm_errmsg());
	check_plan(t, &p, nodes * cores_per_node, nodes, pus_per_core, desc);
	CHECK(dsm_topo_bind_thread(&p, 0) == 0, "bind on a synthetic topology: %s", dsm_errmsg());
	check_placement(t, &p);
	dsm_topo_threads_free(&p);

	/* Fewer threads than cores: spread over every node. */
	int few = nodes + 1;
	CHECK(dsm_topo_plan_threads(t, few, &p) == 0, "plan: %s", dsm_errmsg());
	check_plan(t, &p, few, nodes, pus_per_core, desc);
	dsm_topo_threads_free(&p);
	/* Fewer threads than nodes: the first nodes only. */
	CHECK(dsm_topo_plan_threads(t, nodes - 1, &p) == 0, "plan: %s", dsm_errmsg());
	check_plan(t, &p, nodes - 1, nodes - 1, pus_per_core, desc);
	if (p.th.n_nodes > 1)
		check_placement(t, &p);
	dsm_topo_threads_free(&p);

	/* Memory of a synthetic node is plain but usable. */
	char *m = dsm_topo_alloc_node(t, nodes - 1, 1 << 20);
	CHECK(m != NULL, "alloc: %s", dsm_errmsg());
	if (m) {
		memset(m, 1, 1 << 20);
		dsm_topo_free(t, m, 1 << 20);
	}
	CHECK(dsm_topo_alloc_node(t, nodes, 4096) == NULL, "alloc on a node past the last accepted");
	dsm_topo_close(t);
}

/* 1 when the calling thread may run only on the core of hardware thread pu. */
static int bound_to(hwloc_topology_t h, int pu)
{
	hwloc_obj_t p = hwloc_get_pu_obj_by_os_index(h, (unsigned)pu);
	hwloc_obj_t core = p ? hwloc_get_ancestor_obj_by_type(h, HWLOC_OBJ_CORE, p) : NULL;
	hwloc_bitmap_t set = hwloc_bitmap_alloc();
	int ok = p && hwloc_get_cpubind(h, set, HWLOC_CPUBIND_THREAD) == 0 && hwloc_bitmap_isset(set, (unsigned)pu) &&
		 hwloc_bitmap_isincluded(set, core ? core->cpuset : p->cpuset);
	hwloc_bitmap_free(set);
	return ok;
}

/* The cpu backend given the plan binds its OpenMP threads to their cores on its first multiply. */
static void test_backend_binds(hwloc_topology_t h, struct dsm_topo_threads *p)
{
	int n = p->th.n_threads, bad = 0, unbound = 0;
	hwloc_const_cpuset_t all = hwloc_topology_get_topology_cpuset(h);
#pragma omp parallel num_threads(n) reduction(+ : unbound)
	unbound += hwloc_set_cpubind(h, all, HWLOC_CPUBIND_THREAD) == 0;
	struct dsm_backend *be = NULL;
	struct dsm_backend_options o = { .precision = DSM_PRECISION_F32, .cpu_threads = &p->th };
	CHECK(dsm_backend_create(&be, "cpu", &o) == 0, "cpu backend: %s", dsm_errmsg());
	if (!be)
		return;
	size_t rows = 512, cols = 256;
	uint8_t *w = malloc(rows * cols);
	float scale[4 * 2], *x = malloc(cols * sizeof(float)), *y = malloc(rows * sizeof(float));
	for (size_t i = 0; i < rows * cols; i++)
		w[i] = (uint8_t)(i * 37 % 126);
	for (size_t i = 0; i < cols; i++)
		x[i] = uniform();
	for (int i = 0; i < 8; i++)
		scale[i] = 1;
	struct dsm_mat m = { DSM_F8_E4M3, (int64_t)rows, (int64_t)cols, 0, w, scale };
	CHECK(be->matmul(be, &m, 1, x, y) == 0, "matmul: %s", dsm_errmsg());
#pragma omp parallel num_threads(n) reduction(+ : bad)
	if (omp_get_num_threads() == n)
		bad += !bound_to(h, p->thread_pu[omp_get_thread_num()]);
	CHECK(unbound == n && bad == 0, "cpu backend: %d of %d thread(s) not bound to their core after a multiply",
	      bad, n);
	dsm_backend_destroy(be);
	free(w);
	free(x);
	free(y);
}

static void test_this_system(void)
{
	struct dsm_topo *t = NULL;
	int rc = dsm_topo_open(&t, NULL);
	CHECK(rc == 0, "this system: %s", dsm_errmsg());
	if (rc < 0)
		return;
	CHECK(dsm_topo_is_this_system(t), "this machine's topology is not this system");
	CHECK(dsm_topo_n_cores(t) >= 1 && dsm_topo_n_nodes(t) >= 1, "%d cores, %d nodes", dsm_topo_n_cores(t),
	      dsm_topo_n_nodes(t));
	struct dsm_topo_threads p;
	CHECK(dsm_topo_plan_threads(t, 0, &p) == 0, "plan: %s", dsm_errmsg());
	int n = p.th.n_threads, bad = 0;
	hwloc_topology_t h;
	hwloc_topology_init(&h);
	hwloc_topology_load(h);
#pragma omp parallel num_threads(n) reduction(+ : bad)
	if (omp_get_num_threads() == n && dsm_topo_bind_thread(&p, omp_get_thread_num()) == 0)
		bad += !bound_to(h, p.thread_pu[omp_get_thread_num()]);
	CHECK(bad == 0, "%d thread(s) not bound to their core", bad);
	test_backend_binds(h, &p);
	hwloc_topology_destroy(h);
	/* One thread per core: a context takes the plan. */
	struct dsm_expert_ctx *ctx = NULL;
	struct dsm_expert_opts o = { DSM_ISA_AUTO, 0, &p.th, 0 };
	CHECK(dsm_expert_ctx_init(&ctx, &o) == 0, "ctx: %s", dsm_errmsg());
	CHECK(dsm_expert_ctx_threads(ctx) == dsm_topo_n_cores(t), "context threads %d, cores %d",
	      dsm_expert_ctx_threads(ctx), dsm_topo_n_cores(t));
	dsm_expert_ctx_free(ctx);
	size_t bytes = 8 << 20;
	char *m = dsm_topo_alloc_node(t, 0, bytes);
	CHECK(m != NULL, "alloc: %s", dsm_errmsg());
	if (m) {
		memset(m, 1, bytes);
		int node = dsm_topo_memory_node(t, m, bytes);
		CHECK(node == 0 || node == -1, "memory asked on node 0 is on node %d", node);
		dsm_topo_free(t, m, bytes);
	}
	check_placement(t, &p);
	dsm_topo_threads_free(&p);
	dsm_topo_close(t);
}

int main(void)
{
	test_synthetic("numa:2 core:4 pu:2", 2, 4, 2);
	test_synthetic("numa:4 core:2 pu:1", 4, 2, 1);
	test_synthetic("pack:2 numa:2 core:3 pu:2", 4, 3, 2);
	test_this_system();
	struct dsm_topo *t = NULL;
	CHECK(dsm_topo_open(&t, "numa:2 bogus:3") == DSM_EARG && t == NULL, "bad synthetic description accepted");
	return TEST_EXIT();
}
