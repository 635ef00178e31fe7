/* One MoE layer across tiers (offload/dispatch.h) on the tiny preset: every expert mapped (no plan), all-DRAM,
 * all-streamed (cache off, and cached with each policy), mapped and streamed experts mixed, mixed (a plan from
 * budgets), an emulated GPU (a device-memory backend over the CPU one, under a small device budget), buffered
 * and synchronous streaming, look-ahead prefetch: every plan gives outputs bit-identical to a plain loop over
 * experts with weights read straight from the checkpoint, for decode-sized and batched steps. Then I/O faults
 * under a running store: a clear error naming the tensor, and a clean retry. */
#include "backend.h"
#include "checkpoint.h"
#include "dispatch.h"
#include "emu/emu_backend.h"
#include "error.h"
#include "expert_store.h"
#include "io_methods.h"
#include "mkmodel.h"
#include "plan.h"
#include "topo.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { T = 40, STEPS = 7 };

static struct dsm_checkpoint *ck;
static struct dsm_store_model *sm;        /* the checkpoint for offload/, without addresses: every byte read */
static struct dsm_store_model *sm_mapped; /* the same with the addresses of the mapped shards */
static struct dsm_backend *cpu;
static int D, K, E, L0, NL;

/* Routing of step s (layer and choices) and its inputs, a pure function of s. */
struct step_data {
	int layer;
	int64_t n;                /* tokens: decode-sized steps, and one batched step */
	int32_t idx[T * 8];
	float w[T * 8];
	float *x;
};

static uint64_t rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Step s: 7 tokens, or (the last) T tokens most of which choose the same experts, so that those run on the
 * batched path of the expert kernels. */
static void make_step(int s, struct step_data *d)
{
	uint64_t r = 0x1234567ull + (uint64_t)s * 7919;
	d->layer = L0 + s % (NL - L0);
	d->n = s == STEPS - 1 ? T : 7;
	for (int t = 0; t < d->n; t++) {
		int chosen = 0;
		while (chosen < K) {
			/* Skewed toward low experts so that caches see repeats. */
			int x = (int)(rng(&r) % (uint64_t)E);
			if (rng(&r) % 2)
				x /= 3;
			if (d->n == T && t % 8)
				x = chosen;
			int dup = 0;
			for (int j = 0; j < chosen; j++)
				dup |= d->idx[t * K + j] == x;
			if (dup)
				continue;
			d->idx[t * K + chosen] = x;
			d->w[t * K + chosen] = 0.1f + (float)(rng(&r) % 1000) / 1000.0f;
			chosen++;
		}
	}
	for (int i = 0; i < d->n * D; i++)
		d->x[i] = (float)((int64_t)(rng(&r) % 2001) - 1000) / 500.0f;
}

/* The checkpoint's tensor j (gate, up, down) of routed expert (layer, x). */
static const struct dsm_tensor *expert_tensor(int layer, int x, int j)
{
	static const char *const proj[3] = { "gate_proj", "up_proj", "down_proj" };
	char name[128];
	snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", layer, x, proj[j]);
	return dsm_checkpoint_find(ck, name);
}

/* The plain loop: experts ascending, weights read with dsm_checkpoint_read. */
static void reference(const struct step_data *d, float *y)
{
	memset(y, 0, sizeof(float) * (size_t)(T * D));
	float *xe = malloc(sizeof(float) * (size_t)(T * D)), *ye = malloc(sizeof(float) * (size_t)(T * D));
	int32_t tok[T];
	float wt[T];
	for (int x = 0; x < E; x++) {
		int n = 0;
		for (int t = 0; t < d->n; t++)
			for (int j = 0; j < K; j++)
				if (d->idx[t * K + j] == x) {
					tok[n] = t;
					wt[n] = d->w[t * K + j];
					memcpy(xe + n * D, d->x + t * D, sizeof(float) * (size_t)D);
					n++;
				}
		if (!n)
			continue;
		const struct dsm_tensor *tt[3];
		for (int j = 0; j < 3; j++)
			tt[j] = expert_tensor(d->layer, x, j);
		void *data[3];
		float *scale[3];
		struct dsm_ffn_weights w;
		struct dsm_mat *m[3] = { &w.gate, &w.up, &w.down };
		for (int j = 0; j < 3; j++) {
			data[j] = malloc(tt[j]->nbytes);
			scale[j] = tt[j]->scale ? malloc(tt[j]->scale->nbytes) : NULL;
			dsm_checkpoint_read(ck, tt[j], data[j]);
			if (scale[j])
				dsm_checkpoint_read(ck, tt[j]->scale, scale[j]);
			*m[j] = (struct dsm_mat){ .dtype = tt[j]->dtype, .rows = (int64_t)tt[j]->shape[0],
				.cols = (int64_t)tt[j]->shape[1], .data = data[j], .scale = scale[j] };
		}
		cpu->ffn(cpu, &w, n, xe, ye);
		for (int i = 0; i < n; i++)
			for (int j = 0; j < D; j++)
				y[tok[i] * D + j] += wt[i] * ye[i * D + j];
		for (int j = 0; j < 3; j++) {
			free(data[j]);
			free(scale[j]);
		}
	}
	free(xe);
	free(ye);
}

/* The emulated GPU (kernels/emu): device memory is host memory under a budget, ops are the cpu backend's. */
static struct dsm_backend *emu, *emu2; /* gpu:0 and, for two GPUs, gpu:1 */

static struct dsm_emu_stats emu_stats(void)
{
	struct dsm_emu_stats st = { 0 };
	dsm_emu_get_stats(emu, &st);
	return st;
}

/* The emu backend's own contract: 64-byte aligned allocations under the budget, counted, freed. */
static void test_emu_memory(const struct dsm_backend_options *bo)
{
	struct dsm_backend_options o = *bo;
	o.device_bytes = 4096;
	struct dsm_backend *e;
	if (dsm_backend_create(&e, "emu", &o) < 0) {
		CHECK(0, "emu: %s", dsm_errmsg());
		return;
	}
	CHECK(strcmp(e->name, "emu") == 0 && e->alloc && e->free && e->copy_in && e->copy_out && e->sync,
	      "emu: device memory functions");
	void *a = e->alloc(e, 1000), *b = e->alloc(e, 3000), *c = e->alloc(e, 100);
	struct dsm_emu_stats st = { 0 };
	dsm_emu_get_stats(e, &st);
	CHECK(a && b && !c && ((uintptr_t)a & 63) == 0 && ((uintptr_t)b & 63) == 0, "emu: alloc under a budget");
	CHECK(st.used == 1024 + 3008 && st.allocs == 2 && st.failed == 1, "emu: used %zu allocs %zu failed %zu",
	      st.used, st.allocs, st.failed);
	char src[1000], back[1000];
	for (int i = 0; i < 1000; i++)
		src[i] = (char)(i * 7);
	CHECK(e->copy_in(e, a, src, sizeof src) == 0 && e->copy_out(e, back, a, sizeof back) == 0 && e->sync(e) == 0 &&
	      memcmp(src, back, sizeof src) == 0, "emu: copies");
	e->free(e, b);
	c = e->alloc(e, 2048);
	CHECK(c != NULL, "emu: freed memory is reusable");
	e->free(e, a);
	e->free(e, c);
	e->free(e, NULL);
	dsm_emu_get_stats(e, &st);
	CHECK(st.used == 0 && st.allocs == 0 && st.peak == 1024 + 3008 && st.bad_frees == 0,
	      "emu: after frees used %zu allocs %zu peak %zu bad %zu", st.used, st.allocs, st.peak, st.bad_frees);
	CHECK(dsm_emu_get_stats(cpu, &st) == DSM_EARG, "emu stats of the cpu backend");
	dsm_backend_destroy(e);
}

/* The emu backend's queues: work runs on the queue's thread in submission order while the caller goes on; a
 * queue waits for another queue's event; queued ops give the bits of the same ops called directly; a failure
 * inside a queue skips the queue's later work and comes back from event_sync with its message; host memory given
 * to the device is refused. */
static void test_emu_queues(const struct dsm_backend_options *bo)
{
	struct dsm_backend *e;
	struct dsm_queue *q1 = NULL, *q2 = NULL;
	struct dsm_event *e1 = NULL, *e2 = NULL;
	if (dsm_backend_create(&e, "emu", bo) < 0 || e->queue_create(e, &q1) < 0 || e->queue_create(e, &q2) < 0 ||
	    e->event_create(e, &e1) < 0 || e->event_create(e, &e2) < 0) {
		CHECK(0, "emu queues: %s", dsm_errmsg());
		return;
	}
	enum { N = 4, ROWS = 64, COLS = 256 };
	float *dev = e->alloc(e, sizeof(float) * COLS * N), *src = malloc(sizeof(float) * COLS * N);
	float *out = calloc(COLS * N, sizeof(float)), *w = malloc(sizeof(float) * ROWS * COLS);
	float y0[N * ROWS], y1[N * ROWS], z1[N * ROWS];
	for (int i = 0; i < COLS * N; i++)
		src[i] = (float)((i * 37) % 101) / 50.0f - 1.0f;
	for (int i = 0; i < ROWS * COLS; i++)
		w[i] = (float)((i * 53) % 97) / 48.0f - 1.0f;

	/* q2 is held: its copy cannot run, and q1's copy waits for q2's event. */
	dsm_emu_queue_hold(e, q2, 1);
	e->set_queue(e, q2);
	CHECK(e->copy_in(e, dev, src, sizeof(float) * COLS * N) == 0 && e->event_record(e, e2, q2) == 0, "queue q2");
	e->set_queue(e, q1);
	CHECK(e->queue_wait(e, q1, e2) == 0 && e->copy_out(e, out, dev, sizeof(float) * COLS * N) == 0 &&
	      e->event_record(e, e1, q1) == 0, "queue q1");
	e->set_queue(e, NULL);
	struct timespec pause = { 0, 20 * 1000 * 1000 };
	nanosleep(&pause, NULL);
	CHECK(out[0] == 0 && out[COLS * N - 1] == 0, "emu: q1 ran before the event of held q2");
	dsm_emu_queue_hold(e, q2, 0);
	CHECK(e->event_sync(e, e1) == 0 && memcmp(out, src, sizeof(float) * COLS * N) == 0, "emu: queued copies");
	double dt = -1;
	CHECK(e->event_elapsed(e, e2, e1, &dt) == 0 && dt >= 0, "emu: event_elapsed %g", dt);

	/* The same matmul and norm directly, then queued: every operand in device memory. */
	int bad;
	float *dw = e->alloc(e, sizeof(float) * ROWS * COLS), *dy = e->alloc(e, sizeof(float) * 4 * N * ROWS);
	float *dy0 = dy, *dy1 = dy + N * ROWS, *dz0 = dy + 2 * N * ROWS, *dz1 = dy + 3 * N * ROWS;
	CHECK(dw && dy && e->copy_in(e, dw, w, sizeof(float) * ROWS * COLS) == 0, "emu: weight upload");
	struct dsm_mat m = { .dtype = DSM_F32, .rows = ROWS, .cols = COLS, .data = dw };
	CHECK(e->matmul(e, &m, N, dev, dy0) == 0 && e->rmsnorm(e, N, ROWS, dy0, ROWS, dw, 1e-6f, dz0) == 0, "emu: matmul: %s",
	      dsm_errmsg());
	e->set_queue(e, q1);
	CHECK(e->matmul(e, &m, N, dev, dy1) == 0 && e->rmsnorm(e, N, ROWS, dy1, ROWS, dw, 1e-6f, dz1) == 0 &&
	      e->event_record(e, e1, q1) == 0, "emu: queued matmul");
	m.rows = 0; /* the descriptor was copied at the call: changing it now changes nothing */
	e->set_queue(e, NULL);
	CHECK(e->event_sync(e, e1) == 0 && e->copy_out(e, y0, dy0, sizeof y0) == 0 && e->copy_out(e, y1, dy1, sizeof y1) == 0 &&
	      memcmp(y0, y1, sizeof y0) == 0, "emu: queued matmul differs");
	float z0[N * ROWS];
	CHECK(e->copy_out(e, z0, dz0, sizeof z0) == 0 && e->copy_out(e, z1, dz1, sizeof z1) == 0 &&
	      memcmp(z0, z1, sizeof z0) == 0, "emu: queued rmsnorm differs");
	/* The glue ops likewise: add, scale and fp8_round in place, then a conversion to BF16. */
	uint16_t *db = e->alloc(e, sizeof(uint16_t) * 2 * N * ROWS), b0[N * ROWS], b1[N * ROWS];
	CHECK(db && e->add(e, N * ROWS, dz0, dy0) == 0 && e->scale(e, N * ROWS, dz0, 0.5f) == 0 &&
	      e->fp8_round(e, N, ROWS, dz0, 1) == 0 && e->convert(e, N, ROWS, dz0, DSM_F32, ROWS, db, DSM_BF16, ROWS) == 0,
	      "emu: glue ops: %s", dsm_errmsg());
	e->set_queue(e, q1);
	CHECK(e->add(e, N * ROWS, dz1, dy1) == 0 && e->scale(e, N * ROWS, dz1, 0.5f) == 0 &&
	      e->fp8_round(e, N, ROWS, dz1, 1) == 0 &&
	      e->convert(e, N, ROWS, dz1, DSM_F32, ROWS, db + N * ROWS, DSM_BF16, ROWS) == 0 &&
	      e->event_record(e, e1, q1) == 0, "emu: queued glue ops");
	e->set_queue(e, NULL);
	CHECK(e->event_sync(e, e1) == 0 && e->copy_out(e, b0, db, sizeof b0) == 0 &&
	      e->copy_out(e, b1, db + N * ROWS, sizeof b1) == 0 && memcmp(b0, b1, sizeof b0) == 0 && b0[0] != b0[1],
	      "emu: queued glue ops differ");
	/* gather: the blocks' pointer table is read at the call; queued equals direct */
	const void *tab[2] = { dz1, dz0 };
	CHECK(e->gather(e, 2, tab, 1, 1, ROWS, DSM_F32, db, DSM_BF16) == 0, "emu: gather: %s", dsm_errmsg());
	e->set_queue(e, q1);
	CHECK(e->gather(e, 2, tab, 1, 1, ROWS, DSM_F32, db + N * ROWS, DSM_BF16) == 0 && e->event_record(e, e1, q1) == 0,
	      "emu: queued gather");
	tab[0] = NULL;
	e->set_queue(e, NULL);
	CHECK(e->event_sync(e, e1) == 0 && e->copy_out(e, b0, db, sizeof b0) == 0 &&
	      e->copy_out(e, b1, db + N * ROWS, sizeof b1) == 0 && memcmp(b0, b1, 2 * 2 * ROWS) == 0 &&
	      memcmp(b0, b0 + ROWS, 2 * ROWS) == 0, "emu: queued gather differs");
	tab[0] = z0;
	bad = e->gather(e, 2, tab, 1, 1, ROWS, DSM_F32, db, DSM_BF16);
	CHECK(bad == DSM_EARG && strstr(dsm_errmsg(), "gather: block"), "emu: gather of a host block: %s", dsm_errmsg());
	/* attn_latent over cache blocks: the block tables are read at the call; queued equals direct */
	enum { LH = 2, LR = 32, LDR = 8, LK = 40, LB = 16 };
	float hq[LH * (LR + LDR)], hc[3 * LB * (LR + LDR)], o0[LH * LR], o1[LH * LR];
	for (int i = 0; i < LH * (LR + LDR); i++)
		hq[i] = (float)((i * 29) % 31) / 15.0f - 1.0f;
	for (int i = 0; i < 3 * LB * (LR + LDR); i++)
		hc[i] = (float)((i * 41) % 43) / 21.0f - 1.0f;
	float *dq = e->alloc(e, sizeof hq + 2 * sizeof o0), *dc = e->alloc(e, sizeof hc);
	CHECK(dq && dc && e->copy_in(e, dq, hq, sizeof hq) == 0 && e->copy_in(e, dc, hc, sizeof hc) == 0, "emu: cache");
	const void *cb[3], *pb[3];
	for (int b = 0; b < 3; b++) {
		cb[b] = dc + (2 - b) * LB * (LR + LDR);
		pb[b] = (const float *)cb[b] + LB * LR;
	}
	struct dsm_attn_latent_args la = { .n_heads = LH, .r = LR, .dr = LDR, .q_lat = dq, .q_pe = dq + LH * LR,
		.cache_dtype = DSM_F32, .c_blocks = cb, .pe_blocks = pb, .block_rows = LB, .n_keys = LK, .scale = 0.1f,
		.o_lat = dq + LH * (LR + LDR) };
	CHECK(e->attn_latent(e, &la) == 0, "emu: attn_latent over blocks: %s", dsm_errmsg());
	e->set_queue(e, q1);
	la.o_lat += LH * LR;
	CHECK(e->attn_latent(e, &la) == 0 && e->event_record(e, e1, q1) == 0, "emu: queued attn_latent over blocks");
	cb[0] = pb[0] = NULL;
	e->set_queue(e, NULL);
	CHECK(e->event_sync(e, e1) == 0 && e->copy_out(e, o0, dq + LH * (LR + LDR), sizeof o0) == 0 &&
	      e->copy_out(e, o1, la.o_lat, sizeof o1) == 0 && memcmp(o0, o1, sizeof o0) == 0 && o0[0] != 0,
	      "emu: queued attn_latent over blocks differs");
	cb[0] = hc, pb[0] = hc + LB * LR;
	bad = e->attn_latent(e, &la);
	CHECK(bad == DSM_EARG && strstr(dsm_errmsg(), "latent cache block"), "emu: a host cache block: %s", dsm_errmsg());
	e->free(e, dq);
	e->free(e, dc);
	bad = e->add(e, N * ROWS, z0, dy0);
	CHECK(bad == DSM_EARG && strstr(dsm_errmsg(), "add: sum"), "emu: add into host memory: %s", dsm_errmsg());
	e->free(e, db);
	/* Host memory given to the device is refused, naming the operand (a real GPU would fault). */
	m.rows = ROWS;
	m.data = w;
	bad = e->matmul(e, &m, N, dev, dy0);
	CHECK(bad == DSM_EARG && strstr(dsm_errmsg(), "matmul: weight") && strstr(dsm_errmsg(), "not device memory"),
	      "emu: a host weight: %d %s", bad, dsm_errmsg());
	bad = e->copy_in(e, out, src, sizeof(float));
	CHECK(bad == DSM_EARG && strstr(dsm_errmsg(), "copy_in: destination"), "emu: copy_in to the host: %s", dsm_errmsg());

	/* A failure (Hadamard of 3 values) skips the copy after it and is returned once, with its message. */
	memset(out, 0, sizeof(float) * COLS * N);
	e->set_queue(e, q1);
	CHECK(e->hadamard(e, 1, 3, dy1) == 0 && e->copy_out(e, out, dev, sizeof(float) * COLS * N) == 0 &&
	      e->event_record(e, e1, q1) == 0, "emu: queued failure submitted");
	e->set_queue(e, NULL);
	int rc = e->event_sync(e, e1);
	CHECK(rc == DSM_EARG && strstr(dsm_errmsg(), "power of two") && out[0] == 0, "emu: queued failure: %d %s", rc,
	      dsm_errmsg());
	e->set_queue(e, q1);
	CHECK(e->copy_out(e, out, dev, sizeof(float) * COLS * N) == 0 && e->event_record(e, e1, q1) == 0, "emu: after");
	e->set_queue(e, NULL);
	CHECK(e->event_sync(e, e1) == 0 && out[0] == src[0] && e->sync(e) == 0, "emu: a queue works after a failure");
	struct dsm_emu_stats st;
	dsm_emu_get_stats(e, &st);
	CHECK(st.jobs == 12 && st.queue_busy_seconds > 0, "emu: %zu jobs, %g s", st.jobs, st.queue_busy_seconds);

	e->free(e, dw);
	e->free(e, dy);
	e->free(e, dev);
	e->event_destroy(e, e1);
	e->event_destroy(e, e2);
	e->queue_destroy(e, q1);
	e->queue_destroy(e, q2);
	dsm_backend_destroy(e);
	free(src);
	free(out);
	free(w);
}

struct config_case {
	const char *name;
	struct dsm_plan *plan;    /* NULL: every expert mapped */
	enum dsm_cache_policy policy;
	uint64_t cache_bytes;
	int cache_off;
	unsigned stream_flags;
	int gpu;                  /* emulated GPUs: 0, 1 or 2 */
	int prefetch;
	struct dsm_topo *topo;    /* NULL: this machine's */
	int mapped;               /* opened with the addresses of the mapped shards */
	int upload;               /* gpu_upload_tokens */
};

/* Pinned policy: after the warm-up every pinned streamed expert is in memory (its first use is a hit, nothing
 * is read) and the statistics start from zero. */
static void check_warm(const struct config_case *cc, struct dsm_offload *o)
{
	CHECK(dsm_offload_warm(o) == 0, "%s: warm: %s", cc->name, dsm_errmsg());
	struct dsm_offload_stats st;
	dsm_offload_get_stats(o, &st);
	CHECK(st.bytes_read == 0 && st.cache.prefetches == 0, "%s: statistics not reset after the warm-up", cc->name);
	int used = 0;
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++) {
			struct dsm_ffn_weights w;
			if (!dsm_cache_is_pinned(dsm_offload_cache(o), l, x) || cc->plan->expert[l * E + x].kind != DSM_TIER_NVME)
				continue;
			CHECK(dsm_offload_get(o, l, x, &w) == 0, "%s: get: %s", cc->name, dsm_errmsg());
			dsm_offload_put(o, l, x);
			used++;
		}
	dsm_offload_get_stats(o, &st);
	CHECK(used > 0 && st.cache.hits == (uint64_t)used && st.cache.misses == 0 && st.cache.prefetch_hits == 0 &&
	      st.bytes_read == 0, "%s: after the warm-up %d pinned experts gave %llu hits, %llu misses, %llu bytes read",
	      cc->name, used, (unsigned long long)st.cache.hits, (unsigned long long)st.cache.misses,
	      (unsigned long long)st.bytes_read);
	dsm_offload_reset_stats(o);
}

/* Every DRAM-tier expert is recorded on the node its dram:N names; on this machine, where the binding took
 * and the kernel lets hwloc tell, its pages are on that node. */
static void check_nodes(const struct config_case *cc, struct dsm_offload *o)
{
	int n_dram = 0, n_bound = 0, n_queried = 0;
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++) {
			struct dsm_tier t = dsm_plan_expert_tier(cc->plan, l, x);
			int bound, node = dsm_offload_expert_node(o, l, x, &bound);
			if (t.kind != DSM_TIER_DRAM) {
				CHECK(node == -1, "%s: layer %d expert %d not in dram but on node %d", cc->name, l, x, node);
				continue;
			}
			n_dram++;
			CHECK(node == t.index, "%s: layer %d expert %d: node %d, the plan says dram:%d", cc->name, l, x, node,
			      t.index);
			if (!cc->topo || !bound)
				continue;
			n_bound++;
			struct dsm_ffn_weights w;
			CHECK(dsm_offload_get(o, l, x, &w) == 0, "%s: get: %s", cc->name, dsm_errmsg());
			int mn = dsm_topo_memory_node(cc->topo, w.gate.data, dsm_store_expert(sm, l, x)->w[0].nbytes);
			if (mn >= 0) {
				n_queried++;
				CHECK(mn == t.index, "%s: layer %d expert %d: memory on node %d, not %d", cc->name, l, x, mn, t.index);
			}
		}
	CHECK(n_dram > 0, "%s: no dram expert", cc->name);
	if (cc->topo && !dsm_topo_is_this_system(cc->topo))
		CHECK(n_bound == 0, "%s: memory bound on a synthetic topology", cc->name);
	if (cc->topo && dsm_topo_is_this_system(cc->topo) && (n_bound == 0 || n_queried == 0))
		fprintf(stderr, "%s: note: %s; the node of resident memory is not checked\n", cc->name,
			n_bound == 0 ? "the kernel refused the memory binding" : "hwloc cannot query the binding");
}

static void run_case(const struct config_case *cc, struct step_data *steps, float *const *want)
{
	struct dsm_offload_opts oo = { .plan = cc->plan, .cpu = cpu, .gpu = { cc->gpu ? emu : NULL, cc->gpu > 1 ? emu2 : NULL },
		.policy = cc->policy, .cache_bytes = cc->cache_bytes, .cache_off = cc->cache_off,
		.stream = { .flags = cc->stream_flags, .queue_depth = 4, .chunk_bytes = 16384 },
		.pool_flags = DSM_POOL_NO_LOCK, .topo = cc->topo, .gpu_upload_tokens = cc->upload,
		.staging_bytes = 1 }; /* the GPU tier uploaded one expert at a time */
	/* Pinned policy: hotness as a trace would give it, uneven across experts. */
	double *hot = calloc((size_t)(NL * E), sizeof *hot);
	for (int i = 0; i < NL * E; i++)
		hot[i] = (double)((i * 7) % 13);
	if (cc->policy == DSM_CACHE_PINNED)
		oo.hotness = hot;
	struct dsm_offload *o;
	int rc = dsm_offload_open(&o, cc->mapped ? sm_mapped : sm, &oo);
	free(hot);
	CHECK(rc == 0, "%s: open: %s", cc->name, dsm_errmsg());
	if (rc)
		return;
	if (cc->policy == DSM_CACHE_PINNED)
		check_warm(cc, o);
	if (cc->topo)
		check_nodes(cc, o);
	float *y = malloc(sizeof(float) * (size_t)(T * D));
	for (int round = 0; round < 2; round++)
		for (int s = 0; s < STEPS; s++) {
			struct step_data *d = &steps[s];
			if (cc->prefetch && s + 1 < STEPS) {
				/* Predict the next step's experts: half right, half wrong. */
				int32_t guess[8];
				for (int j = 0; j < K; j++)
					guess[j] = j % 2 ? steps[s + 1].idx[j] : (steps[s + 1].idx[j] + 1) % E;
				CHECK(dsm_offload_prefetch(o, steps[s + 1].layer, K, guess) == 0, "%s: prefetch: %s", cc->name,
				      dsm_errmsg());
			}
			struct dsm_moe_step ms = { .layer = d->layer, .n_tokens = d->n, .top_k = K, .idx = d->idx,
				.weight = d->w, .x = d->x, .y = y };
			rc = dsm_offload_moe(o, &ms);
			CHECK(rc == 0, "%s: step %d: %s", cc->name, s, dsm_errmsg());
			CHECK(memcmp(y, want[s], sizeof(float) * (size_t)(d->n * D)) == 0, "%s: step %d (round %d): output "
			      "differs from the plain loop", cc->name, s, round);
		}
	if (cc->gpu == 1 && !cc->upload) {
		/* A GPU op that fails inside the queue (a device fault): the step fails with its message, and the next
		 * step, on the same store, is right again. */
		const struct step_data *d = &steps[STEPS - 1];
		struct dsm_moe_step ms = { .layer = d->layer, .n_tokens = d->n, .top_k = K, .idx = d->idx, .weight = d->w,
			.x = d->x, .y = y };
		dsm_emu_fail_op(emu, 1);
		rc = dsm_offload_moe(o, &ms);
		dsm_emu_fail_op(emu, 0);
		CHECK(rc == DSM_EIO && strstr(dsm_errmsg(), "injected failure"), "%s: a failing GPU op: %d %s", cc->name, rc,
		      dsm_errmsg());
		CHECK(dsm_offload_moe(o, &ms) == 0 && memcmp(y, want[STEPS - 1], sizeof(float) * (size_t)(d->n * D)) == 0,
		      "%s: the step after a GPU failure: %s", cc->name, dsm_errmsg());
	}
	struct dsm_offload_stats st;
	dsm_offload_get_stats(o, &st);
	uint64_t n[DSM_TIER_KINDS] = { [DSM_TIER_MAPPED] = (uint64_t)((NL - L0) * E) };
	if (cc->plan)
		dsm_plan_count(cc->plan, n);
	if (n[DSM_TIER_NVME])
		CHECK(st.bytes_read > 0 && st.expert_runs[DSM_TIER_NVME] > 0, "%s: nothing streamed", cc->name);
	struct dsm_emu_stats st2 = { 0 };
	if (cc->gpu > 1)
		CHECK(dsm_emu_get_stats(emu2, &st2) == 0 && st2.jobs > 0, "%s: nothing ran on gpu:1", cc->name);
	if (cc->gpu) {
		CHECK(st.expert_runs[DSM_TIER_GPU] > 0 && st.resident_bytes[DSM_TIER_GPU] > 0, "%s: no gpu run", cc->name);
		/* The GPU's experts ran on its queue, timed by its events, overlapping the CPU's part at most fully. */
		CHECK(emu_stats().jobs > 0 && st.gpu_expert_seconds > 0 && st.overlap_seconds >= 0 &&
		      st.overlap_seconds <= st.gpu_expert_seconds + 1e-9 && st.gpu_wait_seconds >= 0,
		      "%s: gpu queue: %zu jobs, busy %g s, overlap %g s", cc->name, emu_stats().jobs, st.gpu_expert_seconds,
		      st.overlap_seconds);
		if (cc->upload > 0)
			CHECK(st.uploaded_runs > 0 && st.expert_runs[DSM_TIER_DRAM] > st.uploaded_runs, "%s: %llu uploaded of %llu "
			      "DRAM expert runs", cc->name, (unsigned long long)st.uploaded_runs,
			      (unsigned long long)st.expert_runs[DSM_TIER_DRAM]);
	}
	if (cc->cache_off)
		CHECK(st.cache.hits == 0 || st.cache.prefetch_hits > 0, "%s: hits with the cache off", cc->name);
	if (cc->prefetch)
		CHECK(st.cache.prefetches > 0 && st.cache.prefetch_hits > 0, "%s: prefetch %llu hits %llu wasted %llu", cc->name,
		      (unsigned long long)st.cache.prefetches, (unsigned long long)st.cache.prefetch_hits, (unsigned long long)st.cache.prefetch_wasted);
	if (!cc->cache_off && n[DSM_TIER_NVME] && cc->cache_bytes > 0)
		CHECK(st.cache.hits > 0, "%s: a cache that never hits", cc->name);
	if (n[DSM_TIER_MAPPED])
		CHECK(st.expert_runs[DSM_TIER_MAPPED] > 0, "%s: no mapped run", cc->name);
	if (!cc->plan)
		CHECK(st.bytes_read == 0 && st.expert_runs[DSM_TIER_NVME] == 0 && st.resident_bytes[DSM_TIER_DRAM] == 0 &&
		      st.steps == 2 * STEPS, "%s: an all-mapped store read %llu bytes", cc->name,
		      (unsigned long long)st.bytes_read);
	struct dsm_offload_report rep;
	dsm_offload_report(o, 1, 1.0, &rep);
	char line[512];
	dsm_offload_report_text(&rep, line, sizeof line);
	char counts[96];
	snprintf(counts, sizeof counts, "experts gpu %llu, dram %llu, nvme %llu, mapped %llu;",
		 (unsigned long long)n[DSM_TIER_GPU], (unsigned long long)n[DSM_TIER_DRAM],
		 (unsigned long long)n[DSM_TIER_NVME], (unsigned long long)n[DSM_TIER_MAPPED]);
	CHECK(strstr(line, counts) != NULL, "%s: report '%s' lacks '%s'", cc->name, line, counts);
	if (getenv("VERBOSE"))
		fprintf(stderr, "%s: runs nvme %llu dram %llu gpu %llu mapped %llu, read %llu bytes, hits %llu misses %llu\n",
			cc->name, (unsigned long long)st.expert_runs[0], (unsigned long long)st.expert_runs[1],
			(unsigned long long)st.expert_runs[2], (unsigned long long)st.expert_runs[3], (unsigned long long)st.bytes_read,
			(unsigned long long)st.cache.hits, (unsigned long long)st.cache.misses);

	/* The synchronous accessor gives the same bytes. */
	struct dsm_ffn_weights w;
	CHECK(dsm_offload_get(o, L0, 3, &w) == 0, "%s: get: %s", cc->name, dsm_errmsg());
	const struct dsm_tensor *td = expert_tensor(L0, 3, 2);
	uint8_t *down = malloc(td->nbytes);
	dsm_checkpoint_read(ck, td, down);
	if (!cc->gpu || dsm_plan_expert_tier(cc->plan, L0, 3).kind != DSM_TIER_GPU)
		CHECK(memcmp(down, w.down.data, td->nbytes) == 0, "%s: get: wrong bytes", cc->name);
	free(down);
	dsm_offload_put(o, L0, 3);
	free(y);
	dsm_offload_close(o);
}

static void test_faults(struct step_data *steps, float *const *want, struct dsm_plan *streamed)
{
	struct dsm_io_fault *f;
	const struct dsm_io_methods *io;
	dsm_io_fault_new(&f, NULL, &io);
	struct dsm_offload_opts oo = { .plan = streamed, .cpu = cpu, .policy = DSM_CACHE_LRU, .cache_off = 1,
		.stream = { .io = io, .queue_depth = 4, .chunk_bytes = 16384, .max_retries = 8 },
		.pool_flags = DSM_POOL_NO_LOCK };
	struct dsm_offload *o;
	CHECK(dsm_offload_open(&o, sm, &oo) == 0, "faults: open: %s", dsm_errmsg());
	float *y = malloc(sizeof(float) * (size_t)(T * D));
	struct dsm_moe_step ms = { .layer = steps[0].layer, .n_tokens = steps[0].n, .top_k = K, .idx = steps[0].idx,
		.weight = steps[0].w, .x = steps[0].x, .y = y };

	/* Short reads and EAGAIN: clean retries, same numbers. A direct short read inside the last block of a read
	 * makes no progress and counts as a retry; which read a fault hits depends on the order the reads complete,
	 * so at most max_retries faults in all, or one read may take them all and rightly fail. */
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_SHORT, .first = 1, .every = 3, .count = 5 });
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_ERROR, .first = 2, .every = 5, .count = 3,
		.arg = EAGAIN });
	CHECK(dsm_offload_moe(o, &ms) == 0 && memcmp(y, want[0], sizeof(float) * (size_t)(steps[0].n * D)) == 0,
	      "faults: short/EAGAIN: %s", dsm_errmsg());
	CHECK(dsm_io_fault_rule(f, 0)->fired > 0 && dsm_io_fault_rule(f, 1)->fired > 0, "faults: short/EAGAIN never fired");
	/* EIO: a clear error naming the tensor; then the same step succeeds once the disk is back. */
	dsm_io_fault_clear(f);
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_ERROR, .first = 3, .arg = EIO });
	int rc = dsm_offload_moe(o, &ms);
	CHECK(rc == DSM_EIO && strstr(dsm_errmsg(), "tensor 'model.layers.") && strstr(dsm_errmsg(), "offset"),
	      "faults: EIO: %d %s", rc, dsm_errmsg());
	dsm_io_fault_clear(f);
	CHECK(dsm_offload_moe(o, &ms) == 0 && memcmp(y, want[0], sizeof(float) * (size_t)(steps[0].n * D)) == 0,
	      "faults: retry after EIO: %s", dsm_errmsg());
	/* A shard cut short under the running store. */
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_TRUNCATE, .offset = 4096 });
	rc = dsm_offload_moe(o, &ms);
	CHECK(rc == DSM_ETRUNCATED && strstr(dsm_errmsg(), "truncated"), "faults: truncated: %d %s", rc, dsm_errmsg());
	dsm_io_fault_clear(f);
	CHECK(dsm_offload_moe(o, &ms) == 0, "faults: after truncation: %s", dsm_errmsg());
	free(y);
	dsm_offload_close(o);
	dsm_io_fault_free(f);
}

int main(void)
{
	const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
	const struct mkmodel_preset *tiny = mkmodel_preset("tiny");
	char dir[4096];
	snprintf(dir, sizeof dir, "%s/tests/offload-dispatch-tiny", top);
	struct mkmodel_options mo = { .config = tiny->config, .seed = 11, .shard_bytes = tiny->shard_bytes, .quiet = 1 };
	struct dsm_weight_map *map;
	if (mkmodel_write(&mo, dir) < 0 || dsm_checkpoint_open(&ck, dir) < 0 || dsm_weight_map_open(&map, ck) < 0 ||
	    dsm_store_model_from_checkpoint(&sm, ck, NULL) < 0 || dsm_store_model_from_checkpoint(&sm_mapped, ck, map) < 0) {
		fprintf(stderr, "tiny checkpoint: %s\n", dsm_errmsg());
		return 99;
	}
	struct dsm_backend_options bo = { .precision = DSM_PRECISION_F32, .threads = 1 };
	if (dsm_backend_create(&cpu, "cpu", &bo) < 0) {
		fprintf(stderr, "cpu backend: %s\n", dsm_errmsg());
		return 99;
	}
	test_emu_memory(&bo);
	test_emu_queues(&bo);
	const struct dsm_moe_shape *c = &sm->shape;
	D = c->hidden_size;
	K = c->top_k;
	E = c->n_experts;
	L0 = c->first_moe;
	NL = c->n_layers;

	struct step_data steps[STEPS];
	float *want[STEPS];
	for (int s = 0; s < STEPS; s++) {
		steps[s].x = malloc(sizeof(float) * (size_t)(T * D));
		want[s] = malloc(sizeof(float) * (size_t)(T * D));
		make_step(s, &steps[s]);
		reference(&steps[s], want[s]);
	}

	struct dsm_plan *dram, *streamed, *mixed, *gpu;
	struct dsm_tier t_dram = { DSM_TIER_DRAM, 0 }, t_nvme = { DSM_TIER_NVME, 0 }, t_gpu = { DSM_TIER_GPU, 0 };
	dsm_plan_uniform(&dram, c, t_dram, t_dram);
	dsm_plan_uniform(&streamed, c, t_dram, t_nvme);
	struct dsm_plan_sizes sz;
	dsm_plan_sizes(sm, &sz);
	/* Mixed: a third of the experts in DRAM, hottest (lowest numbers, as the steps favour) first. */
	double *hot = calloc((size_t)(NL * E), sizeof *hot);
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++)
			hot[l * E + x] = E - x;
	struct dsm_plan_budget b = { .dram_bytes = sz.non_expert_total + (uint64_t)((NL - L0) * E / 3) * sz.expert_bytes };
	CHECK(dsm_plan_from_budgets(&mixed, c, &sz, &b, hot) == 0, "mixed plan: %s", dsm_errmsg());
	/* Emulated GPU: a device budget for a few experts and the activations of a step's rows, the hottest
	 * experts there, some in DRAM, rest streamed. */
	struct dsm_backend_options eo = bo;
	eo.device_bytes = 6 * (sz.expert_bytes + 4096) + 2 * sizeof(float) * (size_t)(T * K * D);
	if (dsm_backend_create(&emu, "emu", &eo) < 0) {
		fprintf(stderr, "emu backend: %s\n", dsm_errmsg());
		return 99;
	}
	struct dsm_plan_budget gb = { .vram_bytes = 5 * sz.expert_bytes, .dram_bytes = sz.non_expert_total +
		8 * sz.expert_bytes };
	CHECK(dsm_plan_from_budgets(&gpu, c, &sz, &gb, hot) == 0, "gpu plan: %s", dsm_errmsg());
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		if (gpu->non_expert[k].kind == DSM_TIER_GPU)
			gpu->non_expert[k] = t_dram; /* the emu device holds experts only */
	(void)t_gpu;
	/* Two emulated GPUs of 3 experts each: the MoE layers split between them. */
	if (dsm_backend_create(&emu2, "emu", &eo) < 0) {
		fprintf(stderr, "emu backend: %s\n", dsm_errmsg());
		return 99;
	}
	struct dsm_plan *gpu2;
	struct dsm_plan_budget gb2 = { .vram_bytes = 3 * sz.expert_bytes, .n_gpus = 2, .dram_bytes = sz.non_expert_total +
		8 * sz.expert_bytes };
	CHECK(dsm_plan_from_budgets(&gpu2, c, &sz, &gb2, hot) == 0, "two-gpu plan: %s", dsm_errmsg());
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		gpu2->non_expert[k] = t_dram;
	int on_gpu[2] = { 0, 0 };
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++) {
			struct dsm_tier t = dsm_plan_expert_tier(gpu2, l, x);
			if (t.kind == DSM_TIER_GPU && t.index < 2) {
				on_gpu[t.index]++;
				CHECK(t.index == (l - L0) * 2 / (NL - L0), "layer %d's experts on gpu:%d", l, t.index);
			}
		}
	CHECK(on_gpu[0] == 3 && on_gpu[1] == 3, "two-gpu plan: %d and %d experts", on_gpu[0], on_gpu[1]);
	uint64_t slot = 4 * sz.expert_bytes + 65536;
	/* NUMA: experts spread over the nodes of a synthetic two-node machine (nothing is bound there, the node of
	 * each expert is recorded), and over the nodes of this machine (bound where the kernel allows). */
	struct dsm_topo *numa2, *here;
	CHECK(dsm_topo_open(&numa2, "numa:2 core:2 pu:1") == 0 && dsm_topo_open(&here, NULL) == 0, "topology: %s",
	      dsm_errmsg());
	int n_here = dsm_topo_n_nodes(here);
	struct dsm_plan *two_nodes, *here_nodes, *mapped_streamed;
	dsm_plan_uniform(&two_nodes, c, t_dram, t_nvme);
	dsm_plan_uniform(&here_nodes, c, t_dram, t_dram);
	dsm_plan_uniform(&mapped_streamed, c, t_dram, t_nvme);
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++) {
			/* Two nodes: odd experts on dram:1, a quarter streamed. */
			if (x % 4 != 3)
				two_nodes->expert[l * E + x] = (struct dsm_tier){ DSM_TIER_DRAM, (uint8_t)(x % 2) };
			here_nodes->expert[l * E + x] = (struct dsm_tier){ DSM_TIER_DRAM, (uint8_t)(x % n_here) };
			/* A third of the experts where they are mapped, the rest streamed. */
			if (x % 3 == 0)
				mapped_streamed->expert[l * E + x] = (struct dsm_tier){ DSM_TIER_MAPPED, 0 };
		}

	const struct config_case cases[] = {
		{ "all mapped (no plan)", NULL, DSM_CACHE_LRU, 0, 0, 0, 0, 0, NULL, 1, 0 },
		{ "all-dram", dram, DSM_CACHE_LRU, 0, 0, 0, 0, 0, NULL, 0, 0 },
		{ "all-dram from the mapping", dram, DSM_CACHE_LRU, 0, 0, 0, 0, 0, NULL, 1, 0 },
		{ "mapped and streamed", mapped_streamed, DSM_CACHE_LRU, 6 * slot, 0, 0, 0, 1, NULL, 1, 0 },
		{ "all-streamed cache off", streamed, DSM_CACHE_LRU, 0, 1, 0, 0, 0, NULL, 0, 0 },
		{ "all-streamed lru", streamed, DSM_CACHE_LRU, 12 * slot, 0, 0, 0, 0, NULL, 0, 0 },
		{ "all-streamed lfu", streamed, DSM_CACHE_LFU, 12 * slot, 0, 0, 0, 0, NULL, 0, 0 },
		{ "all-streamed pinned", streamed, DSM_CACHE_PINNED, 12 * slot, 0, 0, 0, 0, NULL, 0, 0 },
		{ "all-streamed buffered", streamed, DSM_CACHE_LRU, 0, 1, DSM_STREAM_BUFFERED, 0, 0, NULL, 0, 0 },
		{ "all-streamed sync", streamed, DSM_CACHE_LRU, 0, 1, DSM_STREAM_SYNC, 0, 0, NULL, 0, 0 },
		{ "all-streamed prefetch", streamed, DSM_CACHE_LRU, 0, 1, 0, 0, 1, NULL, 0, 0 },
		{ "mixed", mixed, DSM_CACHE_PINNED, 10 * slot, 0, 0, 0, 1, NULL, 0, 0 },
		{ "emulated gpu", gpu, DSM_CACHE_LRU, 0, 0, 0, 1, 1, NULL, 0, 0 },
		{ "emulated gpu, DRAM experts of 8 tokens or more uploaded", gpu, DSM_CACHE_LRU, 0, 0, 0, 1, 0, NULL, 0, 8 },
		{ "two emulated gpus", gpu2, DSM_CACHE_LRU, 0, 0, 0, 2, 0, NULL, 0, 0 },
		{ "two NUMA nodes (synthetic)", two_nodes, DSM_CACHE_LRU, 10 * slot, 0, 0, 0, 1, numa2, 0, 0 },
		{ "this machine's NUMA nodes", here_nodes, DSM_CACHE_LRU, 0, 0, 0, 0, 0, here, 0, 0 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		run_case(&cases[i], steps, want);
	struct dsm_emu_stats es = emu_stats();
	CHECK(es.used == 0 && es.allocs == 0 && es.bad_frees == 0, "emu device memory leaked: %zu bytes in %zu "
	      "allocations, %zu bad frees", es.used, es.allocs, es.bad_frees);
	CHECK(es.peak > 0 && es.peak <= es.budget, "emu peak %zu of %zu", es.peak, es.budget);
	uint64_t n[DSM_TIER_KINDS];
	dsm_plan_count(gpu, n);
	CHECK(n[DSM_TIER_GPU] == 5 && n[DSM_TIER_DRAM] == 8, "gpu plan tiers %llu %llu", (unsigned long long)n[2],
	      (unsigned long long)n[1]);
	test_faults(steps, want, streamed);

	/* The mapped tier needs the addresses of the mapped shards. */
	struct dsm_offload *o;
	struct dsm_offload_opts mo_none = { .cpu = cpu };
	int rc = dsm_offload_open(&o, sm, &mo_none);
	CHECK(rc == DSM_EARG && strstr(dsm_errmsg(), "is on the mapped tier but tensor 'model.layers."),
	      "mapped without addresses: %d %s", rc, dsm_errmsg());

	/* A node the machine (or topology) lacks, and a gpu other than gpu:0: refused at open, naming the expert. */
	struct dsm_offload_opts no = { .plan = here_nodes, .cpu = cpu, .pool_flags = DSM_POOL_NO_LOCK };
	here_nodes->expert[(L0 + 1) * E + 5] = (struct dsm_tier){ DSM_TIER_DRAM, (uint8_t)n_here };
	char want_msg[160];
	snprintf(want_msg, sizeof want_msg, "plan puts layer %d expert 5 on dram:%d but this machine has %d NUMA node%s",
		 L0 + 1, n_here, n_here, n_here == 1 ? "" : "s");
	rc = dsm_offload_open(&o, sm, &no);
	CHECK(rc == DSM_EPLAN && strstr(dsm_errmsg(), want_msg), "node past this machine's: %d %s", rc, dsm_errmsg());
	no.topo = numa2;
	no.plan = two_nodes;
	two_nodes->expert[L0 * E + 2] = (struct dsm_tier){ DSM_TIER_DRAM, 2 };
	rc = dsm_offload_open(&o, sm, &no);
	CHECK(rc == DSM_EPLAN && strstr(dsm_errmsg(), "expert 2 on dram:2 but the topology has 2 NUMA nodes"),
	      "node past the topology's: %d %s", rc, dsm_errmsg());
	no.topo = NULL;
	no.plan = gpu;
	no.gpu[0] = emu;
	for (int i = 0; i < NL * E; i++)
		if (gpu->expert[i].kind == DSM_TIER_GPU) {
			gpu->expert[i].index = 1;
			break;
		}
	rc = dsm_offload_open(&o, sm, &no);
	CHECK(rc == DSM_EPLAN && strstr(dsm_errmsg(), "on gpu:1 but 1 emu GPU is in use"), "gpu:1: %d %s", rc,
	      dsm_errmsg());
	for (int i = 0; i < NL * E; i++)
		if (gpu->expert[i].kind == DSM_TIER_GPU)
			gpu->expert[i].index = 0;
	es = emu_stats();
	CHECK(es.used == 0 && es.allocs == 0, "emu leak after refused plans: %zu", es.used);

	/* A plan the device cannot hold: a clear error, nothing leaked. */
	struct dsm_backend *small;
	eo.device_bytes = sz.expert_bytes;
	CHECK(dsm_backend_create(&small, "emu", &eo) == 0, "small emu: %s", dsm_errmsg());
	struct dsm_offload_opts oo = { .plan = gpu, .cpu = cpu, .gpu = { small }, .pool_flags = DSM_POOL_NO_LOCK };
	CHECK(dsm_offload_open(&o, sm, &oo) == DSM_ENOMEM && strstr(dsm_errmsg(), "device memory"), "device full: %s",
	      dsm_errmsg());
	struct dsm_emu_stats ss = { 0 };
	dsm_emu_get_stats(small, &ss);
	CHECK(ss.used == 0 && ss.allocs == 0 && ss.failed > 0 && ss.bad_frees == 0, "emu after a failed open: %zu "
	      "bytes in %zu allocations, %zu refused, %zu bad frees", ss.used, ss.allocs, ss.failed, ss.bad_frees);
	dsm_backend_destroy(small);

	for (int s = 0; s < STEPS; s++) {
		free(steps[s].x);
		free(want[s]);
	}
	free(hot);
	dsm_plan_free(dram);
	dsm_plan_free(streamed);
	dsm_plan_free(mixed);
	dsm_plan_free(gpu);
	dsm_plan_free(gpu2);
	dsm_plan_free(two_nodes);
	dsm_plan_free(here_nodes);
	dsm_plan_free(mapped_streamed);
	dsm_topo_close(numa2);
	dsm_topo_close(here);
	dsm_backend_destroy(emu);
	dsm_backend_destroy(emu2);
	dsm_backend_destroy(cpu);
	dsm_store_model_free(sm_mapped);
	dsm_store_model_free(sm);
	dsm_weight_map_close(map);
	dsm_checkpoint_close(ck);
	return TEST_EXIT();
}
