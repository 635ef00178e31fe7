/* The parallel drivers against the scalar reference: one matmul, one expert, a whole MoE layer (decode and
 * batched paths), every ISA this CPU has; results bit-identical for any thread count; the NUMA split (2 and
 * 4 nodes, placed or windowed parts) gives the reference's numbers; bad arguments give errors. */
#include "expert_kernels.h"

#include "dtype.h"
#include "error.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x0123456789abcdefull;

static uint64_t next_u64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float uniform(void)
{
	return (float)((double)(next_u64() >> 11) / (double)(1ull << 52) - 1.0);
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
		uint8_t c = (uint8_t)next_u64();
		a->w[i] = (c & 0x7F) == 0x7F ? 0x3F : c;
	}
	for (size_t i = 0; i < ns; i++)
		a->scale[i] = (float)(0.02 + 0.02 * uniform());
	a->m = dsm_fp8_mat_dense(a->w, a->scale, rows, cols);
}

static void mat_free(struct mat *a)
{
	free(a->w);
	free(a->scale);
}

struct expert {
	struct mat gate, up, down;
	struct dsm_expert_fp8 e;
};

static void expert_random(struct expert *x, size_t hidden, size_t inter)
{
	mat_random(&x->gate, inter, hidden);
	mat_random(&x->up, inter, hidden);
	mat_random(&x->down, hidden, inter);
	int rc = dsm_expert_fp8_init(&x->e, &x->gate.m, &x->up.m, &x->down.m);
	CHECK(rc == 0, "expert init: %s", dsm_errmsg());
}

static void expert_free(struct expert *x)
{
	mat_free(&x->gate);
	mat_free(&x->up);
	mat_free(&x->down);
}

/* y[hidden] += w * E(x) by the scalar reference. */
static void ref_expert(const struct expert *x, const float *in, float w, double *y)
{
	size_t hidden = x->e.hidden, inter = x->e.inter;
	float *g = malloc(inter * sizeof(float)), *u = malloc(inter * sizeof(float));
	float *h = malloc(inter * sizeof(float)), *d = malloc(hidden * sizeof(float));
	dsm_fp8_gemv_ref(&x->gate.m, in, hidden, 1, g, inter);
	dsm_fp8_gemv_ref(&x->up.m, in, hidden, 1, u, inter);
	for (size_t i = 0; i < inter; i++)
		h[i] = (float)(g[i] / (1.0 + exp(-(double)g[i])) * u[i]);
	dsm_fp8_gemv_ref(&x->down.m, h, inter, 1, d, hidden);
	for (size_t r = 0; r < hidden; r++)
		y[r] += (double)w * d[r];
	free(g);
	free(u);
	free(h);
	free(d);
}

static double threshold(enum dsm_isa isa)
{
	return isa == DSM_ISA_AVX512BF16 ? 5e-4 : 1e-9;
}

/* A thread plan of n_nodes nodes with per_node threads each, no binding. */
struct plan {
	int node[64];
	struct dsm_cpu_threads th;
};

static void plan_make(struct plan *p, int n_nodes, int per_node)
{
	for (int i = 0; i < n_nodes * per_node; i++)
		p->node[i] = i / per_node;
	p->th = (struct dsm_cpu_threads){ n_nodes * per_node, n_nodes, p->node, NULL, NULL };
}

enum { N_EXP = 6, TOP_K = 2 };

struct layer_case {
	size_t hidden, inter, n_tok;
	struct expert ex[N_EXP], shared;
	const struct dsm_expert_fp8 *ptrs[N_EXP];
	float *x;
	int32_t *ids;
	float *w;
	float *ref;
};

static void case_make(struct layer_case *c, size_t hidden, size_t inter, size_t n_tok)
{
	c->hidden = hidden;
	c->inter = inter;
	c->n_tok = n_tok;
	for (int e = 0; e < N_EXP; e++) {
		expert_random(&c->ex[e], hidden, inter);
		c->ptrs[e] = &c->ex[e].e;
	}
	expert_random(&c->shared, hidden, inter);
	c->x = malloc(n_tok * hidden * sizeof(float));
	for (size_t i = 0; i < n_tok * hidden; i++)
		c->x[i] = uniform();
	c->ids = malloc(n_tok * TOP_K * sizeof(int32_t));
	c->w = malloc(n_tok * TOP_K * sizeof(float));
	for (size_t t = 0; t < n_tok; t++) {
		int a = (int)(next_u64() % N_EXP), b = (int)(next_u64() % (N_EXP - 1));
		/* Most tokens on experts 0 and 1 so that they cross the batched-path threshold. */
		if (t % 4 != 3) {
			a = 0;
			b = 1;
		} else if (b >= a) {
			b++;
		}
		c->ids[t * TOP_K] = b;     /* not sorted: the layer must not care */
		c->ids[t * TOP_K + 1] = a;
		c->w[t * TOP_K] = 0.5f + 0.5f * uniform();
		c->w[t * TOP_K + 1] = 0.5f + 0.5f * uniform();
	}
	c->ref = malloc(n_tok * hidden * sizeof(float));
	double *acc = malloc(hidden * sizeof(double));
	for (size_t t = 0; t < n_tok; t++) {
		memset(acc, 0, hidden * sizeof(double));
		for (int k = 0; k < TOP_K; k++)
			ref_expert(&c->ex[c->ids[t * TOP_K + k]], c->x + t * hidden, c->w[t * TOP_K + k], acc);
		ref_expert(&c->shared, c->x + t * hidden, 1.0f, acc);
		for (size_t r = 0; r < hidden; r++)
			c->ref[t * hidden + r] = (float)acc[r];
	}
	free(acc);
}

static void case_free(struct layer_case *c)
{
	for (int e = 0; e < N_EXP; e++)
		expert_free(&c->ex[e]);
	expert_free(&c->shared);
	free(c->x);
	free(c->ids);
	free(c->w);
	free(c->ref);
}

/* Runs the layer; returns the output (caller frees). */
static float *run_layer(struct layer_case *c, enum dsm_isa isa, int threads, const struct dsm_cpu_threads *plan,
			size_t gemm_min, const struct dsm_expert_fp8 *const *experts, const struct dsm_expert_fp8 *shared,
			uint64_t *node_bytes)
{
	struct dsm_expert_opts o = { isa, threads, plan, gemm_min };
	struct dsm_expert_ctx *ctx = NULL;
	int rc = dsm_expert_ctx_init(&ctx, &o);
	CHECK(rc == 0, "ctx init: %s", dsm_errmsg());
	if (rc < 0)
		return NULL;
	float *y = malloc(c->n_tok * c->hidden * sizeof(float));
	for (size_t i = 0; i < c->n_tok * c->hidden; i++)
		y[i] = NAN; /* overwritten, not accumulated */
	struct dsm_moe_args a = { c->n_tok, TOP_K, c->x, c->ids, c->w, experts, N_EXP, shared, 0, y };
	rc = dsm_moe_layer(ctx, &a);
	CHECK(rc == 0, "moe layer: %s", dsm_errmsg());
	for (int j = 0; node_bytes && j < DSM_EXPERT_MAX_NODES; j++)
		node_bytes[j] = dsm_expert_ctx_node_bytes(ctx, j);
	dsm_expert_ctx_free(ctx);
	return y;
}

static void test_layer(enum dsm_isa isa, size_t hidden, size_t inter, size_t n_tok)
{
	struct layer_case c;
	case_make(&c, hidden, inter, n_tok);
	size_t n = n_tok * hidden;
	int batched = isa == DSM_ISA_AVX512BF16;
	/* gemm_min 1000: decode path only; 4: experts 0 and 1 (and the shared one) take the batched path. */
	for (int path = 0; path < 1 + batched; path++) {
		size_t gemm_min = path ? 4 : 1000;
		float *y1 = run_layer(&c, isa, 1, NULL, gemm_min, c.ptrs, &c.shared.e, NULL);
		float *y2 = run_layer(&c, isa, 2, NULL, gemm_min, c.ptrs, &c.shared.e, NULL);
		float *y3 = run_layer(&c, isa, 3, NULL, gemm_min, c.ptrs, &c.shared.e, NULL);
		if (!y1 || !y2 || !y3)
			return;
		double e = nmse(y1, c.ref, n);
		CHECK(e <= threshold(isa), "%s layer %zu/%zu x %zu tokens (%s): NMSE %.3g", dsm_isa_name(isa), hidden,
		      inter, n_tok, path ? "batched" : "decode", e);
		CHECK(memcmp(y1, y2, n * sizeof(float)) == 0 && memcmp(y1, y3, n * sizeof(float)) == 0,
		      "%s layer (%s): 1, 2 and 3 threads differ", dsm_isa_name(isa), path ? "batched" : "decode");

		/* NUMA: 2 nodes x 2 threads and 4 nodes x 2 threads; windowed parts, then parts placed apart. */
		for (int nodes = 2; nodes <= 4; nodes += 2) {
			struct plan p;
			plan_make(&p, nodes, 2);
			float *yw = run_layer(&c, isa, 0, &p.th, gemm_min, c.ptrs, &c.shared.e, NULL);
			struct expert placed[N_EXP + 1];
			const struct dsm_expert_fp8 *pp[N_EXP];
			for (int k = 0; k <= N_EXP; k++) {
				placed[k] = k < N_EXP ? c.ex[k] : c.shared;
				int rc = dsm_expert_fp8_split(&placed[k].e, nodes);
				CHECK(rc == 0, "split: %s", dsm_errmsg());
				if (k < N_EXP)
					pp[k] = &placed[k].e;
			}
			/* Copy each part's down columns into memory of its own, as a per-node placement does. */
			uint8_t *own[N_EXP + 1][4];
			for (int k = 0; k <= N_EXP; k++)
				for (int j = 0; j < nodes; j++) {
					struct dsm_fp8_mat *d = &placed[k].e.part[j].down;
					own[k][j] = malloc(d->rows * d->cols + 1);
					for (size_t r = 0; r < d->rows; r++)
						memcpy(own[k][j] + r * d->cols, d->w + r * d->ld, d->cols);
					d->w = own[k][j];
					d->ld = d->cols;
				}
			float *yp = run_layer(&c, isa, 0, &p.th, gemm_min, pp, &placed[N_EXP].e, NULL);
			if (yw && yp) {
				e = nmse(yw, c.ref, n);
				CHECK(e <= threshold(isa), "%s layer on %d nodes (%s): NMSE %.3g", dsm_isa_name(isa), nodes,
				      path ? "batched" : "decode", e);
				CHECK(memcmp(yw, yp, n * sizeof(float)) == 0, "%s layer on %d nodes: placed parts differ "
				      "from windows", dsm_isa_name(isa), nodes);
			}
			/* Each routed expert in one node's memory (expert k on node k % nodes) is computed by that
			 * node's threads alone; the shared expert stays split across the nodes. */
			struct dsm_expert_fp8 homed[N_EXP];
			const struct dsm_expert_fp8 *hp[N_EXP];
			uint64_t got[DSM_EXPERT_MAX_NODES], want[DSM_EXPERT_MAX_NODES] = { 0 };
			int chosen[N_EXP] = { 0 };
			for (size_t i = 0; i < n_tok * TOP_K; i++)
				chosen[c.ids[i]] = 1;
			for (int k = 0; k < N_EXP; k++) {
				homed[k] = c.ex[k].e;
				homed[k].numa_home = 1 + k % nodes;
				hp[k] = &homed[k];
				want[k % nodes] += chosen[k] ? 3 * (uint64_t)hidden * inter : 0;
			}
			for (int j = 0; j < nodes; j++) {
				size_t i0, i1;
				dsm_expert_node_range(inter, nodes, j, &i0, &i1);
				want[j] += 3 * (uint64_t)hidden * (i1 - i0);
			}
			float *yh = run_layer(&c, isa, 0, &p.th, gemm_min, hp, &c.shared.e, got);
			if (yh) {
				e = nmse(yh, c.ref, n);
				CHECK(e <= threshold(isa), "%s layer on %d nodes, experts at home (%s): NMSE %.3g",
				      dsm_isa_name(isa), nodes, path ? "batched" : "decode", e);
				for (int j = 0; j < nodes; j++)
					CHECK(got[j] == want[j], "%s layer on %d nodes, experts at home: node %d given %llu "
					      "bytes, expected %llu", dsm_isa_name(isa), nodes, j, (unsigned long long)got[j],
					      (unsigned long long)want[j]);
			}
			for (int k = 0; k <= N_EXP; k++)
				for (int j = 0; j < nodes; j++)
					free(own[k][j]);
			free(yw);
			free(yp);
			free(yh);
		}
		free(y1);
		free(y2);
		free(y3);
	}

	/* accumulate = 1 adds to y. */
	struct dsm_expert_ctx *ctx = NULL;
	struct dsm_expert_opts o = { isa, 2, NULL, 0 };
	CHECK(dsm_expert_ctx_init(&ctx, &o) == 0, "ctx: %s", dsm_errmsg());
	float *y = malloc(n * sizeof(float)), *want = malloc(n * sizeof(float));
	for (size_t i = 0; i < n; i++)
		y[i] = 1.0f;
	struct dsm_moe_args a = { n_tok, TOP_K, c.x, c.ids, c.w, c.ptrs, N_EXP, &c.shared.e, 1, y };
	CHECK(dsm_moe_layer(ctx, &a) == 0, "accumulate: %s", dsm_errmsg());
	for (size_t i = 0; i < n; i++)
		want[i] = c.ref[i] + 1.0f;
	CHECK(nmse(y, want, n) <= threshold(isa) * 4, "%s accumulate: NMSE %.3g", dsm_isa_name(isa), nmse(y, want, n));
	free(y);
	free(want);
	dsm_expert_ctx_free(ctx);
	case_free(&c);
}

static void test_matmul_and_ffn(enum dsm_isa isa)
{
	static const size_t shapes[][3] = { { 300, 200, 1 }, { 257, 129, 5 }, { 1000, 700, 40 }, { 64, 2048, 17 } };
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		size_t rows = shapes[s][0], cols = shapes[s][1], n = shapes[s][2];
		struct mat w;
		mat_random(&w, rows, cols);
		float *x = malloc(n * cols * sizeof(float)), *y = malloc(n * rows * sizeof(float));
		float *ref = malloc(n * rows * sizeof(float));
		for (size_t i = 0; i < n * cols; i++)
			x[i] = uniform();
		dsm_fp8_gemv_ref(&w.m, x, cols, n, ref, rows);
		for (size_t gemm_min = 8; gemm_min <= 1000; gemm_min += 992) {
			struct dsm_expert_ctx *ctx = NULL;
			struct dsm_expert_opts o = { isa, 2, NULL, gemm_min };
			CHECK(dsm_expert_ctx_init(&ctx, &o) == 0, "ctx: %s", dsm_errmsg());
			CHECK(dsm_fp8_matmul(ctx, &w.m, n, x, y) == 0, "matmul: %s", dsm_errmsg());
			double e = nmse(y, ref, n * rows);
			CHECK(e <= threshold(isa) || (gemm_min <= n && e <= 5e-4), "%s matmul %zux%zu x %zu (gemm from %zu): "
			      "NMSE %.3g", dsm_isa_name(isa), rows, cols, n, gemm_min, e);
			/* A band starting inside a 128-row block. */
			size_t r0 = rows / 3 + 1, r1 = rows - 1, nr = r1 - r0;
			float *band = malloc(n * nr * sizeof(float)), *want = malloc(n * nr * sizeof(float));
			for (size_t t = 0; t < n; t++)
				memcpy(want + t * nr, ref + t * rows + r0, nr * sizeof(float));
			CHECK(dsm_fp8_matmul_rows(ctx, &w.m, r0, r1, n, x, band) == 0, "matmul rows: %s", dsm_errmsg());
			e = nmse(band, want, n * nr);
			CHECK(e <= threshold(isa) || (gemm_min <= n && e <= 5e-4), "%s matmul rows [%zu, %zu): NMSE %.3g",
			      dsm_isa_name(isa), r0, r1, e);
			free(band);
			free(want);
			dsm_expert_ctx_free(ctx);
		}
		free(x);
		free(y);
		free(ref);
		mat_free(&w);
	}

	struct expert ex;
	size_t hidden = 200, inter = 260, n = 3;
	expert_random(&ex, hidden, inter);
	float *x = malloc(n * hidden * sizeof(float)), *y = malloc(n * hidden * sizeof(float));
	float *ref = malloc(n * hidden * sizeof(float));
	double *acc = malloc(hidden * sizeof(double));
	for (size_t i = 0; i < n * hidden; i++)
		x[i] = uniform();
	for (size_t t = 0; t < n; t++) {
		memset(acc, 0, hidden * sizeof(double));
		ref_expert(&ex, x + t * hidden, 1.0f, acc);
		for (size_t r = 0; r < hidden; r++)
			ref[t * hidden + r] = (float)acc[r];
	}
	struct dsm_expert_ctx *ctx = NULL;
	struct dsm_expert_opts o = { isa, 2, NULL, 0 };
	CHECK(dsm_expert_ctx_init(&ctx, &o) == 0, "ctx: %s", dsm_errmsg());
	CHECK(dsm_expert_ffn(ctx, &ex.e, n, x, y) == 0, "ffn: %s", dsm_errmsg());
	CHECK(nmse(y, ref, n * hidden) <= threshold(isa), "%s ffn: NMSE %.3g", dsm_isa_name(isa),
	      nmse(y, ref, n * hidden));
	dsm_expert_ctx_free(ctx);
	free(acc);
	free(x);
	free(y);
	free(ref);
	expert_free(&ex);
}

static void test_errors(void)
{
	struct layer_case c;
	case_make(&c, 130, 140, 2);
	struct dsm_expert_ctx *ctx = NULL;
	CHECK(dsm_expert_ctx_init(&ctx, NULL) == 0, "ctx: %s", dsm_errmsg());
	float y[2 * 130];
	int32_t bad_ids[4] = { 0, 6, 1, 2 };
	struct dsm_moe_args a = { 2, TOP_K, c.x, bad_ids, c.w, c.ptrs, N_EXP, NULL, 0, y };
	CHECK(dsm_moe_layer(ctx, &a) == DSM_EARG, "expert id out of range accepted");
	const struct dsm_expert_fp8 *missing[N_EXP];
	memcpy(missing, c.ptrs, sizeof(missing));
	missing[1] = NULL;
	int32_t ids[4] = { 0, 1, 2, 3 };
	a.expert_ids = ids;
	a.experts = missing;
	CHECK(dsm_moe_layer(ctx, &a) == DSM_EMISSING, "missing expert accepted");
	int32_t twice[4] = { 2, 2, 0, 1 };
	a.expert_ids = twice;
	a.experts = c.ptrs;
	CHECK(dsm_moe_layer(ctx, &a) == DSM_EARG, "an expert chosen twice by one token accepted");
	struct dsm_fp8_mat win;
	CHECK(dsm_fp8_mat_window(&win, &c.ex[0].gate.m, 1, 10, 0, 10) == DSM_EARG, "unaligned window accepted");
	CHECK(dsm_fp8_mat_window(&win, &c.ex[0].gate.m, 128, 12, 0, 130) == 0, "window: %s", dsm_errmsg());
	CHECK(dsm_fp8_mat_window(&win, &c.ex[0].gate.m, 128, 12, 0, 131) == DSM_EARG, "window past the end accepted");
	int node[2] = { 1, 0 };
	struct dsm_cpu_threads th = { 2, 2, node, NULL, NULL };
	struct dsm_expert_opts o = { DSM_ISA_AUTO, 0, &th, 0 };
	struct dsm_expert_ctx *bad = NULL;
	CHECK(dsm_expert_ctx_init(&bad, &o) == DSM_EARG, "decreasing thread nodes accepted");
	dsm_expert_ctx_free(ctx);
	case_free(&c);
	enum dsm_isa isa;
	CHECK(dsm_isa_parse("avx2", &isa) == 0 && isa == DSM_ISA_AVX2, "parse avx2");
	CHECK(dsm_isa_parse("sse9", &isa) == DSM_EARG, "parse of an unknown ISA accepted");
}

int main(void)
{
	/* The node ranges: 128-aligned, covering, as even as blocks allow. */
	size_t i0, i1, prev = 0;
	for (int j = 0; j < 4; j++) {
		dsm_expert_node_range(2048, 4, j, &i0, &i1);
		CHECK(i0 == prev && i1 - i0 == 512, "node %d of 4: [%zu, %zu)", j, i0, i1);
		prev = i1;
	}
	dsm_expert_node_range(300, 2, 1, &i0, &i1);
	CHECK(i0 == 128 && i1 == 300, "300 rows on 2 nodes: node 1 [%zu, %zu)", i0, i1);

	for (int isa = DSM_ISA_SCALAR; isa < DSM_ISA_COUNT; isa++) {
		if (!dsm_isa_available((enum dsm_isa)isa))
			continue;
		if (isa != DSM_ISA_SCALAR)
			test_layer((enum dsm_isa)isa, 300, 260, 9);
		test_layer((enum dsm_isa)isa, 256, 384, 2);
		test_matmul_and_ffn((enum dsm_isa)isa);
	}
	test_errors();
	return TEST_EXIT();
}
