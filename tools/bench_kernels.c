/* dsm-bench kernels: the CPU expert kernels against this machine's own limits, measured in the same run.
 *   (a) DRAM read bandwidth: a streaming AVX-512/AVX2 read loop, several accumulators, all bound threads,
 *       over the expert pool itself (at least 1 GiB; each NUMA node's threads read their node's parts);
 *   (b) the FP8 decode kernel on expert-shaped matrices (2048x7168 gate/up, 7168x2048 down) rotating over a
 *       pool of experts far larger than the last-level cache, 1/2/4/8 tokens: effective weight bandwidth;
 *   (c) GFLOP/s of the batched path and of the decode path from 1 to 512 tokens, and of oneDNN's own BF16
 *       matmul of the same shape on weights converted to BF16 (and reordered to its preferred layout)
 *       beforehand; the switch point between the two paths;
 *   (d) one MoE layer at decode (8 routed experts + the shared one) against the time its bytes take at (a).
 * The host's bandwidth can drift within a second (a VM shares it), so (b) and (d) interleave the probe with
 * the kernel: before each expert (or layer) the probe streams other experts of the pool, and a pass's ratio
 * is the kernel's rate over the probe's, both summed over the pass. Each ratio is the median of several
 * passes. Prints a table, or with --json one JSON object. */
#include "backend.h"
#include "cpu_backend.h"
#include "dram_probe.h"
#include "expert_kernels.h"
#include "median.h"
#include "topo.h"

#include "dtype.h"
#include "error.h"

#include <math.h>
#include <oneapi/dnnl/dnnl.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define HIDDEN 7168
#define INTER 2048
#define MiB (1024.0 * 1024.0)

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct opts {
	int json, threads, quick, passes;
	size_t pool_mb;
	enum dsm_isa isa;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dsm-bench kernels [--json] [--threads N] [--isa NAME] [--pool-mb N] [--passes N] [--quick]\n"
		   "  --threads N   threads, one per physical core (default: every core)\n"
		   "  --isa NAME    decode kernel: avx512bf16, avx512f, avx2, scalar (default: the best)\n"
		   "  --pool-mb N   expert pool, also read by the DRAM probe (default: 4x the last-level cache hwloc\n"
		   "                reports, at least 1024, at most 4096 and a quarter of the available memory)\n"
		   "  --passes N    passes per figure of (b) and (d), each interleaving probe and kernel (default 9;\n"
		   "                ratios are their median)\n"
		   "  --quick       small sizes, few repetitions: a smoke test, not a measurement\n");
}

/* MiB of memory the system can give without swapping (MemAvailable), 0 when unknown. */
static size_t avail_mb(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	if (!f)
		return 0;
	char line[256];
	size_t kb = 0;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "MemAvailable: %zu kB", &kb) == 1)
			break;
	fclose(f);
	return kb / 1024;
}

/* ---- (a) DRAM read bandwidth: the probe (tools/dram_probe.h) over the expert pool ----------------------- */

static volatile uint64_t sink;

/* Thread i of a plan is the q-th of the Q threads of its node. */
struct share {
	int node, q, Q;
};

static struct share thread_share(const struct dsm_topo_threads *plan, int i)
{
	struct share sh = { plan->thread_node[i], 0, 0 };
	for (int k = 0; k < plan->th.n_threads; k++)
		if (plan->thread_node[k] == sh.node) {
			sh.q += k < i;
			sh.Q++;
		}
	return sh;
}

/* Seconds of one probe: every thread streams its share of each matrix of its node's part of experts
 * first, first + 1, ... (count of them, modulo n_pool), the bytes that the kernels read (less the scales)
 * from the memory they read them from. *bytes: what was read. */
static double probe_experts(const struct dsm_topo_threads *plan, const struct dsm_topo_expert *pool, int n_pool,
			    int first, int count, double *bytes)
{
	uint64_t acc = 0, total = 0;
	double t0 = now();
#pragma omp parallel num_threads(plan->th.n_threads) reduction(^ : acc) reduction(+ : total)
	{
		struct share sh = thread_share(plan, omp_get_thread_num());
		for (int i = 0; i < count; i++) {
			const struct dsm_expert_part *p = &pool[(first + i) % n_pool].e.part[sh.node];
			const struct dsm_fp8_mat *m[3] = { &p->gate, &p->up, &p->down };
			for (int k = 0; k < 3; k++) {
				size_t a, b;
				dram_share(m[k]->rows * m[k]->ld, sh.q, sh.Q, &a, &b);
				acc ^= dram_read((const char *)m[k]->w + a, b - a);
				total += b - a;
			}
		}
	}
	double dt = now() - t0;
	sink = acc;
	*bytes = (double)total;
	return dt;
}

/* Passes that interleave probe and kernel: per pass the probe's rate, the kernel's, and their ratio. */
#define MAX_PASSES 64
struct paired {
	int n;
	double probe[MAX_PASSES], value[MAX_PASSES], ratio[MAX_PASSES];
};

/* ---- Expert pool ---------------------------------------------------------------------------------------- */

static uint64_t rng = 0x243f6a8885a308d3ull;

static uint64_t next_u64(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static float uniform(void)
{
	return (float)((double)(next_u64() >> 11) / (double)(1ull << 53) * 2.0 - 1.0);
}

/* Random codes without NaN (bit 3 cleared: never 0x7F), scales near 1/64. */
static void fill_mat(uint8_t *w, float *scale, size_t rows, size_t cols)
{
	for (size_t i = 0; i + 8 <= rows * cols; i += 8) {
		uint64_t v = next_u64() & 0xF7F7F7F7F7F7F7F7ull;
		memcpy(w + i, &v, 8);
	}
	size_t ns = (rows + 127) / 128 * ((cols + 127) / 128);
	for (size_t i = 0; i < ns; i++)
		scale[i] = (1.0f + 0.5f * uniform()) / 64.0f;
}

static size_t expert_bytes(void)
{
	size_t s = (INTER / 128) * (HIDDEN / 128) * sizeof(float);
	return 3 * ((size_t)INTER * HIDDEN + s);
}

/* ---- oneDNN's own BF16 matmul ---------------------------------------------------------------------------- */

struct onednn {
	dnnl_engine_t eng;
	dnnl_stream_t st;
};

/* C[M, N] = A[M, K] (BF16) . W^T with W [N, K] in BF16, reordered once to oneDNN's preferred layout. */
struct onednn_mm {
	dnnl_primitive_t mm;
	dnnl_memory_t am, wm, cm;
	uint16_t *a;
	float *c;
};

#define DNNL_OK(call) \
	do { \
		dnnl_status_t s_ = (call); \
		if (s_ != dnnl_success) { \
			fprintf(stderr, "dsm-bench: oneDNN %s: status %d\n", #call, (int)s_); \
			exit(1); \
		} \
	} while (0)

static void onednn_setup(struct onednn *d, const uint16_t *w_bf16, size_t M, size_t N, size_t K,
			 struct onednn_mm *m)
{
	dnnl_memory_desc_t a_md, w_plain, w_any, c_md;
	dnnl_dims_t ad = { (dnnl_dim_t)M, (dnnl_dim_t)K }, wd = { (dnnl_dim_t)K, (dnnl_dim_t)N },
		    cd = { (dnnl_dim_t)M, (dnnl_dim_t)N };
	DNNL_OK(dnnl_memory_desc_init_by_tag(&a_md, 2, ad, dnnl_bf16, dnnl_ab));
	DNNL_OK(dnnl_memory_desc_init_by_tag(&w_plain, 2, wd, dnnl_bf16, dnnl_ba));
	DNNL_OK(dnnl_memory_desc_init_by_tag(&w_any, 2, wd, dnnl_bf16, dnnl_format_tag_any));
	DNNL_OK(dnnl_memory_desc_init_by_tag(&c_md, 2, cd, dnnl_f32, dnnl_ab));
	dnnl_matmul_desc_t md;
	DNNL_OK(dnnl_matmul_desc_init(&md, &a_md, &w_any, NULL, &c_md));
	dnnl_primitive_desc_t pd, rpd;
	DNNL_OK(dnnl_primitive_desc_create(&pd, &md, NULL, d->eng, NULL));
	const dnnl_memory_desc_t *w_best = dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);
	dnnl_primitive_t reorder;
	DNNL_OK(dnnl_primitive_create(&m->mm, pd));
	m->a = aligned_alloc(64, (M * K * 2 + 63) / 64 * 64);
	m->c = aligned_alloc(64, (M * N * 4 + 63) / 64 * 64);
	for (size_t i = 0; i < M * K; i++)
		m->a[i] = 0x3f80 ^ (uint16_t)(next_u64() & 0x807f);
	dnnl_memory_t wpm;
	DNNL_OK(dnnl_memory_create(&m->am, &a_md, d->eng, m->a));
	DNNL_OK(dnnl_memory_create(&wpm, &w_plain, d->eng, (void *)w_bf16));
	DNNL_OK(dnnl_memory_create(&m->wm, w_best, d->eng, DNNL_MEMORY_ALLOCATE));
	DNNL_OK(dnnl_memory_create(&m->cm, &c_md, d->eng, m->c));
	DNNL_OK(dnnl_reorder_primitive_desc_create(&rpd, &w_plain, d->eng, w_best, d->eng, NULL));
	DNNL_OK(dnnl_primitive_create(&reorder, rpd));
	dnnl_exec_arg_t rargs[2] = { { DNNL_ARG_FROM, wpm }, { DNNL_ARG_TO, m->wm } };
	DNNL_OK(dnnl_primitive_execute(reorder, d->st, 2, rargs));
	DNNL_OK(dnnl_stream_wait(d->st));
	dnnl_primitive_destroy(reorder);
	dnnl_primitive_desc_destroy(pd);
	dnnl_primitive_desc_destroy(rpd);
	dnnl_memory_destroy(wpm);
}

/* Seconds of one multiply. */
static double onednn_run(struct onednn *d, struct onednn_mm *m)
{
	dnnl_exec_arg_t args[3] = { { DNNL_ARG_SRC, m->am }, { DNNL_ARG_WEIGHTS, m->wm }, { DNNL_ARG_DST, m->cm } };
	double t0 = now();
	DNNL_OK(dnnl_primitive_execute(m->mm, d->st, 3, args));
	DNNL_OK(dnnl_stream_wait(d->st));
	return now() - t0;
}

static void onednn_free(struct onednn_mm *m)
{
	dnnl_primitive_destroy(m->mm);
	dnnl_memory_destroy(m->am);
	dnnl_memory_destroy(m->wm);
	dnnl_memory_destroy(m->cm);
	free(m->a);
	free(m->c);
}

/* ---- Helpers ---------------------------------------------------------------------------------------------- */

static struct dsm_expert_ctx *make_ctx(enum dsm_isa isa, const struct dsm_topo_threads *plan, size_t gemm_min)
{
	struct dsm_expert_opts o = { isa, 0, &plan->th, gemm_min };
	struct dsm_expert_ctx *ctx = NULL;
	if (dsm_expert_ctx_init(&ctx, &o) < 0) {
		fprintf(stderr, "dsm-bench: %s\n", dsm_errmsg());
		exit(1);
	}
	return ctx;
}

/* A table cell: the value, or "-" when not measured. */
static const char *cell(double v, char *buf)
{
	if (v > 0)
		snprintf(buf, 32, "%.1f", v);
	else
		strcpy(buf, "-");
	return buf;
}

static void check(int rc)
{
	if (rc < 0) {
		fprintf(stderr, "dsm-bench: %s\n", dsm_errmsg());
		exit(1);
	}
}

/* Seconds per call of a matmul of M tokens, over the gate/up matrices of n_exp pool experts. */
static double time_matmul(struct dsm_expert_ctx *ctx, struct dsm_topo_expert *pool, int n_exp, size_t M,
			  const float *x, float *y)
{
	int calls = 2 * n_exp;
	double t0 = now();
	for (int k = 0; k < calls; k++) {
		const struct dsm_expert_part *p = &pool[k / 2].e.part[0];
		check(dsm_fp8_matmul(ctx, k % 2 ? &p->up : &p->gate, M, x, y));
	}
	return (now() - t0) / calls;
}

/* The half of the pool away from expert e: what a probe reads while e is computed, so that nothing of e is
 * in cache from the probe. */
static int away(int e, int n_pool)
{
	return e + n_pool / 2;
}

/* One pass of the decode kernel over every pool expert, each expert's three matrices right after a probe of
 * another expert: both rates (GB/s) from the summed times, under the same conditions within milliseconds. */
static void gemv_pass(struct dsm_expert_ctx *ctx, const struct dsm_topo_threads *plan, struct dsm_topo_expert *pool,
		      struct dsm_topo_expert *flat, int n_pool, size_t n_tok, const float *x, float *y,
		      struct paired *out)
{
	double t_probe = 0, t_kernel = 0, probe_bytes = 0;
	for (int e = 0; e < n_pool; e++) {
		double b;
		t_probe += probe_experts(plan, pool, n_pool, away(e, n_pool), 1, &b);
		probe_bytes += b;
		const struct dsm_expert_part *p = &flat[e].e.part[0];
		double t0 = now();
		check(dsm_fp8_matmul(ctx, &p->gate, n_tok, x, y));
		check(dsm_fp8_matmul(ctx, &p->up, n_tok, x, y));
		check(dsm_fp8_matmul(ctx, &p->down, n_tok, x, y));
		t_kernel += now() - t0;
	}
	int r = out->n++;
	out->probe[r] = probe_bytes / t_probe / 1e9;
	out->value[r] = (double)n_pool * (double)expert_bytes() / t_kernel / 1e9;
	out->ratio[r] = out->value[r] / out->probe[r];
}

/* One pass of MoE layers at 1 token over the pool (8 routed experts + the shared one, a fresh set of 9 per
 * layer), each layer right after a probe of 9 other experts. value: ms per layer; ratio: the time the
 * layer's bytes take at the probe's rate over the layer's time. */
static void moe_pass(struct dsm_expert_ctx *ctx, const struct dsm_topo_threads *plan, struct dsm_topo_expert *pool,
		     const struct dsm_expert_fp8 **ptrs, int n_pool, const float *x, float *y, struct paired *out)
{
	int32_t ids[8];
	float wts[8];
	int calls = n_pool / 9;
	double t_probe = 0, t_layer = 0, probe_bytes = 0;
	for (int c = 0; c < calls; c++) {
		for (int k = 0; k < 8; k++) {
			ids[k] = 9 * c + k;
			wts[k] = 0.125f;
		}
		double b;
		t_probe += probe_experts(plan, pool, n_pool, away(9 * c, n_pool), 9, &b);
		probe_bytes += b;
		struct dsm_moe_args a = { 1, 8, x, ids, wts, ptrs, (size_t)n_pool, &pool[9 * c + 8].e, 0, y };
		double t0 = now();
		check(dsm_moe_layer(ctx, &a));
		t_layer += now() - t0;
	}
	int r = out->n++;
	out->probe[r] = probe_bytes / t_probe / 1e9;
	out->value[r] = 1e3 * t_layer / calls;
	out->ratio[r] = 9.0 * (double)expert_bytes() / (out->probe[r] * 1e9) / (t_layer / calls);
}

int bench_kernels_main(int argc, char **argv)
{
	struct opts o = { 0, 0, 0, 0, 0, DSM_ISA_AUTO };
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (strcmp(a, "--json") == 0) {
			o.json = 1;
		} else if (strcmp(a, "--quick") == 0) {
			o.quick = 1;
		} else if (strcmp(a, "--threads") == 0 && i + 1 < argc) {
			o.threads = atoi(argv[++i]);
		} else if (strcmp(a, "--pool-mb") == 0 && i + 1 < argc) {
			o.pool_mb = (size_t)atol(argv[++i]);
		} else if (strcmp(a, "--passes") == 0 && i + 1 < argc) {
			o.passes = atoi(argv[++i]);
			if (o.passes < 1 || o.passes > MAX_PASSES) {
				fprintf(stderr, "dsm-bench: --passes must be 1..%d\n", MAX_PASSES);
				return 2;
			}
		} else if (strcmp(a, "--isa") == 0 && i + 1 < argc) {
			if (dsm_isa_parse(argv[++i], &o.isa) < 0) {
				fprintf(stderr, "dsm-bench: %s\n", dsm_errmsg());
				return 2;
			}
		} else if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (o.pool_mb && o.pool_mb < 1024 && !o.quick) {
		fprintf(stderr, "dsm-bench: --pool-mb below 1024 is not a DRAM measurement (use --quick)\n");
		return 2;
	}
	if (o.quick && !o.pool_mb)
		o.pool_mb = 160;
	int reps = o.quick ? 1 : 3, passes = o.passes ? o.passes : o.quick ? 1 : 9;
	enum dsm_isa isa = o.isa == DSM_ISA_AUTO ? dsm_isa_best() : o.isa;
	if (!dsm_isa_available(isa)) {
		fprintf(stderr, "dsm-bench: this CPU lacks %s\n", dsm_isa_name(isa));
		return 2;
	}

	struct dsm_topo *topo = NULL;
	struct dsm_topo_threads plan;
	check(dsm_topo_open(&topo, NULL));
	check(dsm_topo_plan_threads(topo, o.threads, &plan));
	int n = plan.th.n_threads;
	/* Every OpenMP thread (ours and oneDNN's: the same runtime) bound to its core once. */
	omp_set_num_threads(n);
#pragma omp parallel num_threads(n)
	dsm_topo_bind_thread(&plan, omp_get_thread_num());

	/* Sizes. The pool must be far larger than every cache: 4x the last-level cache hwloc reports. A VM may
	 * report the host's whole L3 (this one reports about 1 GiB for two vCPUs that share one 32 MiB L3), so
	 * the pool is clamped to [1 GiB, min(4 GiB, available memory / 4)]. The DRAM probe reads the pool itself,
	 * so that the limit and the kernels see the same memory (pages, nodes, TLB reach). */
	size_t llc = dsm_topo_llc_bytes(topo);
	size_t pool_mb = o.pool_mb;
	if (!pool_mb) {
		size_t cap = 4096, av = avail_mb();
		if (av && av / 4 < cap)
			cap = av / 4 > 1024 ? av / 4 : 1024;
		pool_mb = (size_t)(4.0 * (double)llc / MiB);
		pool_mb = pool_mb < 1024 ? 1024 : pool_mb > cap ? cap : pool_mb;
	}
	int n_pool = (int)((double)pool_mb * MiB / (double)expert_bytes());
	if (n_pool < 10)
		n_pool = 10;
	double pool_bytes = (double)n_pool * (double)expert_bytes();

	/* The pool: experts placed per NUMA node, from one random expert. */
	uint8_t *sw[3];
	float *ss[3];
	struct dsm_fp8_mat sm[3];
	for (int k = 0; k < 3; k++) {
		size_t rows = k == 2 ? HIDDEN : INTER, cols = k == 2 ? INTER : HIDDEN;
		sw[k] = malloc(rows * cols);
		ss[k] = malloc((rows / 128) * (cols / 128) * sizeof(float));
		fill_mat(sw[k], ss[k], rows, cols);
		sm[k] = dsm_fp8_mat_dense(sw[k], ss[k], rows, cols);
	}
	struct dsm_expert_fp8 src;
	check(dsm_expert_fp8_init(&src, &sm[0], &sm[1], &sm[2]));
	struct dsm_topo_expert *pool = calloc((size_t)n_pool, sizeof(*pool));
	for (int e = 0; e < n_pool; e++)
		check(dsm_topo_place_expert(topo, &src, plan.th.n_nodes, &pool[e]));
	/* The unsplit view of each expert for the matmul figures (one part per node otherwise). */
	struct dsm_topo_expert *flat = pool;
	if (plan.th.n_nodes > 1) {
		flat = calloc((size_t)n_pool, sizeof(*flat));
		for (int e = 0; e < n_pool; e++)
			check(dsm_topo_place_expert(topo, &src, 1, &flat[e]));
	}

	float *x = malloc(512 * HIDDEN * sizeof(float)), *y = malloc(512 * HIDDEN * sizeof(float));
	for (size_t i = 0; i < 512 * HIDDEN; i++)
		x[i] = uniform();

	/* The decode kernel's memory walk, chosen as the engine chooses it at open (dsm_gemv_tune), on the first
	 * experts of the pool (written first, long out of cache); (b) and (d) then run with it. */
	struct dsm_expert_ctx *gemv = make_ctx(isa, &plan, SIZE_MAX);
	struct dsm_gemv_tune_result tune = { .chosen = dsm_gemv_variant };
	snprintf(tune.why, sizeof tune.why, "the %s kernel has no variants", dsm_isa_name(isa));
	if (isa == DSM_ISA_AVX512BF16) {
		struct dsm_fp8_mat tm[18];
		int nt = 0;
		for (int e = 0; e < n_pool && nt < 18; e++) {
			tm[nt++] = flat[e].e.part[0].gate;
			tm[nt++] = flat[e].e.part[0].up;
			tm[nt++] = flat[e].e.part[0].down;
		}
		if (dsm_gemv_tune(gemv, tm, (size_t)nt, &tune) < 0)
			snprintf(tune.why, sizeof tune.why, "not measured: %s", dsm_errmsg());
	}

	/* The head's BF16 GEMV walk, chosen as the engine chooses it at open (dsm_cpu_bf16_gemv_tune), on a head
	 * of the presets' shape (129280 x 1024 BF16, 265 MB; --quick: 40 MiB), written and read once before. */
	struct dsm_gemv_tune_result head_tune = { 0 };
	double screen_gbps = 0, screen_rows = 0;
	snprintf(head_tune.why, sizeof head_tune.why, "the BF16 decode GEMV is not in use");
	{
		struct dsm_backend *cpu = NULL;
		struct dsm_backend_options bo = { .precision = isa == DSM_ISA_AVX512BF16 ? DSM_PRECISION_BF16 :
							       DSM_PRECISION_F32, .cpu_threads = &plan.th };
		int64_t rows = o.quick ? 20480 : 129280, cols = 1024;
		uint16_t *hw = malloc((size_t)(rows * cols) * sizeof(uint16_t));
		if (!hw)
			check(dsm_fail(DSM_ENOMEM, "out of memory"));
		for (int64_t i = 0; i < rows * cols; i++)
			hw[i] = (uint16_t)(0x3c00 | (rand() & 0x1ff)); /* small values, either sign */
		volatile uint16_t seen = 0;
		for (int64_t i = 0; i < rows * cols; i += 2048)
			seen ^= hw[i];
		struct dsm_mat head = { .dtype = DSM_BF16, .rows = rows, .cols = cols, .data = hw };
		check(dsm_backend_create(&cpu, "cpu", &bo));
		if (dsm_cpu_bf16_gemv_tune(cpu, &head, &head_tune) < 0)
			snprintf(head_tune.why, sizeof head_tune.why, "not measured: %s", dsm_errmsg());
		/* (e) greedy decoding's head: its screen (kernels/cpu/head_top.c) and the rows it leaves, one token a
		 * call, GB/s of the bytes read (the screen is far larger than the LLC: each call reads it from DRAM) */
		if (cpu->top_prepare(cpu, &head) == 0) {
			float *hx = malloc(sizeof(float) * (size_t)cols), *hy = malloc(sizeof(float) * (size_t)rows);
			if (!hx || !hy)
				check(dsm_fail(DSM_ENOMEM, "out of memory"));
			double rate[MAX_PASSES];
			for (int r = 0; r < passes; r++) {
				for (int64_t i = 0; i < cols; i++)
					hx[i] = (float)rand() / RAND_MAX - 0.5f;
				double t0 = now();
				int rc = cpu->matmul_top(cpu, &head, hx, hy);
				double dt = now() - t0;
				check(rc);
				screen_rows += (double)rc / passes;
				rate[r] = ((double)rows * (cols + 12) + 2.0 * (double)rc * (double)cols) / dt / 1e9;
			}
			screen_gbps = median(rate, (size_t)passes, NULL, NULL);
			free(hx);
			free(hy);
		}
		dsm_backend_destroy(cpu);
		free(hw);
	}

	/* The batched path's arithmetic, chosen as the engine chooses it at open (dsm_fp8_gemm_tune); (c) runs with it. */
	struct dsm_gemv_tune_result gemm_tune = { 0 };
	snprintf(gemm_tune.why, sizeof gemm_tune.why, "the batched path is not in use");
	if (isa == DSM_ISA_AVX512BF16 && dsm_fp8_gemm_tune(&gemm_tune) < 0)
		snprintf(gemm_tune.why, sizeof gemm_tune.why, "not measured: %s", dsm_errmsg());

	/* (a) and (b): the decode kernel over the whole pool, interleaved with the probe. */
	static const size_t toks[4] = { 1, 2, 4, 8 };
	struct paired pg[4];
	for (int k = 0; k < 4; k++) {
		pg[k].n = 0;
		gemv_pass(gemv, &plan, pool, flat, n_pool, toks[k], x, y, &pg[k]); /* warm-up */
		pg[k].n = 0;
		for (int r = 0; r < passes; r++)
			gemv_pass(gemv, &plan, pool, flat, n_pool, toks[k], x, y, &pg[k]);
	}
	/* The compute roof of (b): the same kernel on one thread over 128 rows that stay in L2, times the
	 * threads. Where (b) reaches it, the kernel is bound by arithmetic, not by memory. */
	double roof_gbps[4];
	void *scratch = aligned_alloc(64, (dsm_fp8_gemv_scratch_size(HIDDEN) + 63) / 64 * 64);
	const struct dsm_fp8_mat *hot = &flat[0].e.part[0].gate;
	int hot_reps = o.quick ? 20 : 2000;
	for (int k = 0; k < 4; k++) {
		double best = 1e30;
		for (int r = 0; r < reps + 1; r++) {
			double t0 = now();
			for (int i = 0; i < hot_reps; i++)
				check(dsm_fp8_gemv_rows(isa, hot, 0, 128, x, HIDDEN, toks[k], y, 128, scratch));
			double dt = now() - t0;
			if (r > 0 && dt < best)
				best = dt;
		}
		roof_gbps[k] = (double)n * hot_reps * 128.0 * (HIDDEN + HIDDEN / 128 * sizeof(float)) / best / 1e9;
	}
	free(scratch);

	/* (c) batched path, decode path and oneDNN from 1 to 512 tokens, alternating, the best of each. */
	struct dsm_expert_ctx *gemm = isa == DSM_ISA_AVX512BF16 ? make_ctx(isa, &plan, 1) : NULL;
	static const size_t ms[] = { 1, 2, 4, 8, 16, 24, 32, 48, 64, 128, 256, 512 };
	enum { NM = sizeof(ms) / sizeof(ms[0]) };
	double g_gemv[NM], g_gemm[NM], g_dnnl[NM];
	int mm_exp = o.quick ? 1 : 8; /* n_pool >= 10 */
	uint16_t *w_bf16 = malloc((size_t)INTER * HIDDEN * sizeof(uint16_t));
	for (size_t i = 0; i < (size_t)INTER * HIDDEN; i++)
		w_bf16[i] = dsm_f32_to_bf16(dsm_fp8_table[sw[0][i]] * ss[0][(i / HIDDEN / 128) * (HIDDEN / 128) +
									   (i % HIDDEN) / 128]);
	struct onednn d;
	int have_dnnl = dnnl_engine_create(&d.eng, dnnl_cpu, 0) == dnnl_success &&
			dnnl_stream_create(&d.st, d.eng, dnnl_stream_default_flags) == dnnl_success;
	for (int k = 0; k < NM; k++) {
		int do_gemv = ms[k] <= 64, do_gemm = gemm && ms[k] >= 8, do_dnnl = have_dnnl && ms[k] >= 16;
		struct onednn_mm mm;
		if (do_dnnl)
			onednn_setup(&d, w_bf16, ms[k], INTER, HIDDEN, &mm);
		double t_gemv = 1e30, t_gemm = 1e30, t_dnnl = 1e30;
		for (int r = 0; r < reps + 1; r++) { /* r = 0: warm-up */
			double a = do_gemv ? time_matmul(gemv, flat, mm_exp, ms[k], x, y) : 0;
			double b = do_gemm ? time_matmul(gemm, flat, mm_exp, ms[k], x, y) : 0;
			double c = do_dnnl ? onednn_run(&d, &mm) : 0;
			if (r > 0) {
				t_gemv = a < t_gemv ? a : t_gemv;
				t_gemm = b < t_gemm ? b : t_gemm;
				t_dnnl = c < t_dnnl ? c : t_dnnl;
			}
		}
		if (do_dnnl)
			onednn_free(&mm);
		double flop = 2.0 * (double)ms[k] * INTER * HIDDEN;
		g_gemv[k] = do_gemv ? flop / t_gemv / 1e9 : 0;
		g_gemm[k] = do_gemm ? flop / t_gemm / 1e9 : 0;
		g_dnnl[k] = do_dnnl ? flop / t_dnnl / 1e9 : 0;
	}
	size_t switch_at = 0;
	for (int k = 0; k < NM && gemm; k++)
		if (g_gemm[k] > 0 && g_gemv[k] > 0 && g_gemm[k] >= g_gemv[k]) {
			switch_at = ms[k];
			break;
		}

	/* (d) one MoE layer at decode, interleaved with the probe. */
	struct dsm_expert_ctx *ctx = make_ctx(isa, &plan, 0);
	const struct dsm_expert_fp8 **ptrs = calloc((size_t)n_pool, sizeof(*ptrs));
	for (int e = 0; e < n_pool; e++)
		ptrs[e] = &pool[e].e;
	struct paired pl = { 0 };
	moe_pass(ctx, &plan, pool, ptrs, n_pool, x, y, &pl); /* warm-up */
	pl.n = 0;
	for (int r = 0; r < passes; r++)
		moe_pass(ctx, &plan, pool, ptrs, n_pool, x, y, &pl);

	/* The limit: the median of every probe's rate. */
	double probes[5 * MAX_PASSES];
	int n_probes = 0;
	for (int r = 0; r < passes; r++) {
		for (int k = 0; k < 4; k++)
			probes[n_probes++] = pg[k].probe[r];
		probes[n_probes++] = pl.probe[r];
	}
	double dram_lo, dram_hi, dram = median(probes, (size_t)n_probes, &dram_lo, &dram_hi);
	double gbps[4], ratio[4], ratio_lo[4], ratio_hi[4];
	for (int k = 0; k < 4; k++) {
		gbps[k] = median(pg[k].value, (size_t)passes, NULL, NULL);
		ratio[k] = median(pg[k].ratio, (size_t)passes, &ratio_lo[k], &ratio_hi[k]);
	}
	double moe_lo, moe_hi, moe_ratio = median(pl.ratio, (size_t)passes, &moe_lo, &moe_hi);
	double moe_ms = median(pl.value, (size_t)passes, NULL, NULL);
	double moe_bound = 1e3 * 9.0 * (double)expert_bytes() / (median(pl.probe, (size_t)passes, NULL, NULL) * 1e9);
	int k256 = 0;
	for (int k = 0; k < NM; k++)
		if (ms[k] == 256)
			k256 = k;
	double gemm_ratio = g_dnnl[k256] > 0 ? g_gemm[k256] / g_dnnl[k256] : 0;
	if (o.json) {
		printf("{\"isa\": \"%s\", \"threads\": %d, \"numa_nodes\": %d, \"llc_bytes\": %zu, \"pool_bytes\": %.0f, "
		       "\"pool_experts\": %d, \"passes\": %d, \"dram_read_gbps\": %.2f, \"dram_read_gbps_min\": %.2f, "
		       "\"dram_read_gbps_max\": %.2f", dsm_isa_name(isa), n, plan.th.n_nodes, llc, pool_bytes, n_pool,
		       passes, dram, dram_lo, dram_hi);
		for (int k = 0; k < 4; k++)
			printf(", \"fp8_gemv_gbps_t%zu\": %.2f, \"gemv_ratio_t%zu\": %.3f, \"gemv_ratio_t%zu_min\": %.3f, "
			       "\"gemv_ratio_t%zu_max\": %.3f, \"gemv_compute_roof_gbps_t%zu\": %.2f, "
			       "\"gemv_roof_ratio_t%zu\": %.3f", toks[k], gbps[k], toks[k], ratio[k], toks[k], ratio_lo[k],
			       toks[k], ratio_hi[k], toks[k], roof_gbps[k], toks[k],
			       gbps[k] / (roof_gbps[k] < dram ? roof_gbps[k] : dram));
		for (int k = 0; k < NM; k++) {
			if (g_gemv[k] > 0)
				printf(", \"gemv_gflops_m%zu\": %.1f", ms[k], g_gemv[k]);
			if (g_gemm[k] > 0)
				printf(", \"gemm_gflops_m%zu\": %.1f", ms[k], g_gemm[k]);
			if (g_dnnl[k] > 0)
				printf(", \"onednn_gflops_m%zu\": %.1f", ms[k], g_dnnl[k]);
		}
		printf(", \"gemm_ratio_m256\": %.3f, \"switch_tokens\": %zu, \"gemm_min_tokens\": %zu, "
		       "\"moe_layer_ms\": %.3f, \"moe_layer_bound_ms\": %.3f, \"moe_layer_ratio\": %.3f, "
		       "\"moe_layer_ratio_min\": %.3f, \"moe_layer_ratio_max\": %.3f", gemm_ratio, switch_at,
		       dsm_expert_ctx_gemm_min_tokens(ctx), moe_ms, moe_bound, moe_ratio, moe_lo, moe_hi);
		printf(", \"decode_variant\": \"%s\", \"decode_variant_why\": \"%s\"", dsm_gemv_variants[tune.chosen].name,
		       tune.why);
		for (int v = 0; v < DSM_GEMV_VARIANTS && tune.rounds; v++)
			printf(", \"variant_gbps_%s\": %.2f", dsm_gemv_variants[v].name, tune.gbps[v]);
		printf(", \"head_walk\": \"%s\", \"head_walk_why\": \"%s\"", dsm_cpu_bf16_gemv_walk(), head_tune.why);
		if (screen_gbps > 0)
			printf(", \"head_screen_gbps\": %.2f, \"head_screen_ratio\": %.3f, \"head_screen_rows\": %.1f",
			       screen_gbps, screen_gbps / dram, screen_rows);
		for (int v = 0; v < CPU_BF16_WALKS && head_tune.rounds; v++)
			printf(", \"head_walk_gbps_%s\": %.2f", cpu_bf16_walks[v].name, head_tune.gbps[v]);
		printf(", \"gemm_variant\": \"%s\", \"gemm_variant_why\": \"%s\"", dsm_gemm_variant_names[gemm_tune.chosen],
		       gemm_tune.why);
		for (int v = 0; v < DSM_GEMM_VARIANTS && gemm_tune.rounds; v++)
			printf(", \"gemm_variant_gflops_%s\": %.1f", dsm_gemm_variant_names[v], gemm_tune.gbps[v]);
		printf("}\n");
	} else {
		printf("dsm-bench kernels: %s, %d thread(s) on %d NUMA node(s), LLC %.0f MiB (hwloc), pool %d experts "
		       "(%.0f MiB), %d probe/kernel passes per figure%s\n\n", dsm_isa_name(isa), n, plan.th.n_nodes,
		       (double)llc / MiB, n_pool, pool_bytes / MiB, passes, o.quick ? ", --quick: NOT a measurement" : "");
		printf("decode kernel's memory walk: %s\n", tune.why);
		printf("head kernel's memory walk: %s\n", head_tune.why);
		printf("batched kernel's arithmetic: %s\n", gemm_tune.why);
		printf("(a) DRAM read, median of %d probe passes  %8.2f GB/s   (%.2f-%.2f)\n", n_probes, dram, dram_lo,
		       dram_hi);
		for (int k = 0; k < 4; k++)
			printf("(b) FP8 decode GEMV, %zu token(s)   %8.2f GB/s   %5.3f of DRAM (passes %.3f-%.3f)   compute roof "
			       "%7.2f GB/s, %5.3f of min(DRAM, roof)\n", toks[k], gbps[k], ratio[k], ratio_lo[k], ratio_hi[k],
			       roof_gbps[k], gbps[k] / (roof_gbps[k] < dram ? roof_gbps[k] : dram));
		printf("\n(c) 2048x7168 matmul, GFLOP/s\n    tokens   decode path  batched path  oneDNN bf16  batched/oneDNN\n");
		for (int k = 0; k < NM; k++) {
			char c0[32], c1[32], c2[32];
			printf("    %6zu  %11s  %12s  %11s", ms[k], cell(g_gemv[k], c0), cell(g_gemm[k], c1), cell(g_dnnl[k], c2));
			if (g_dnnl[k] > 0 && g_gemm[k] > 0)
				printf("  %14.3f", g_gemm[k] / g_dnnl[k]);
			printf("\n");
		}
		printf("    switch point (batched >= decode): %zu tokens; context default %zu\n\n", switch_at,
		       dsm_expert_ctx_gemm_min_tokens(ctx));
		printf("(d) MoE layer, 1 token, 8 experts + shared: %.3f ms, bytes at DRAM rate %.3f ms, ratio %.3f "
		       "(passes %.3f-%.3f)\n", moe_ms, moe_bound, moe_ratio, moe_lo, moe_hi);
		if (screen_gbps > 0)
			printf("(e) greedy head, 1 token (screen of a %s x 1024 BF16 head, then %.1f rows): %.2f GB/s read, "
			       "%.3f of DRAM\n", o.quick ? "20480" : "129280", screen_rows, screen_gbps, screen_gbps / dram);
	}

	if (have_dnnl) {
		dnnl_stream_destroy(d.st);
		dnnl_engine_destroy(d.eng);
	}
	dsm_expert_ctx_free(ctx);
	dsm_expert_ctx_free(gemv);
	dsm_expert_ctx_free(gemm);
	for (int e = 0; e < n_pool; e++) {
		dsm_topo_expert_free(topo, &pool[e]);
		if (flat != pool)
			dsm_topo_expert_free(topo, &flat[e]);
	}
	if (flat != pool)
		free(flat);
	free(pool);
	free(ptrs);
	free(w_bf16);
	free(x);
	free(y);
	for (int k = 0; k < 3; k++) {
		free(sw[k]);
		free(ss[k]);
	}
	dsm_topo_threads_free(&plan);
	dsm_topo_close(topo);
	return 0;
}
