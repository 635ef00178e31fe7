/* One MoE layer across tiers (offload/dispatch.h) on the tiny preset: all-DRAM, all-streamed (cache off,
 * and cached with each policy), mixed (a plan from budgets), an emulated GPU (a device-memory backend over
 * the CPU one, under a small device budget), buffered and synchronous streaming, look-ahead prefetch:
 * every plan gives outputs bit-identical to a plain loop over experts with weights read straight from the
 * checkpoint. Then I/O faults under a running store: a clear error naming the tensor, and a clean retry. */
#include "backend.h"
#include "checkpoint.h"
#include "dispatch.h"
#include "error.h"
#include "io_methods.h"
#include "mkmodel.h"
#include "plan.h"
#include "test_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum { T = 7, STEPS = 6 };

static struct dsm_checkpoint *ck;
static struct dsm_backend *cpu;
static int D, K, E, L0, NL;

/* Routing of step s (layer and choices) and its inputs, a pure function of s. */
struct step_data {
	int layer;
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

static void make_step(int s, struct step_data *d)
{
	uint64_t r = 0x1234567ull + (uint64_t)s * 7919;
	d->layer = L0 + s % (NL - L0);
	for (int t = 0; t < T; t++) {
		int chosen = 0;
		while (chosen < K) {
			/* Skewed toward low experts so that caches see repeats. */
			int x = (int)(rng(&r) % (uint64_t)E);
			if (rng(&r) % 2)
				x /= 3;
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
	for (int i = 0; i < T * D; i++)
		d->x[i] = (float)((int64_t)(rng(&r) % 2001) - 1000) / 500.0f;
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
		for (int t = 0; t < T; t++)
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
		dsm_expert_tensors(ck, d->layer, x, tt);
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

/* ---- An emulated GPU: device memory is host memory under a budget, copies are memcpy. ---- */
static size_t emu_used, emu_budget;

static void *emu_alloc(struct dsm_backend *be, size_t bytes)
{
	if (emu_used + bytes > emu_budget)
		return NULL;
	size_t *p = malloc(bytes + 16);
	if (!p)
		return NULL;
	p[0] = bytes;
	emu_used += bytes;
	return (char *)p + 16;
}

static void emu_free(struct dsm_backend *be, void *p)
{
	if (!p)
		return;
	size_t *h = (size_t *)((char *)p - 16);
	emu_used -= h[0];
	free(h);
}

static int emu_copy(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	memcpy(dst, src, bytes);
	return 0;
}

static int emu_sync(struct dsm_backend *be)
{
	return 0;
}

static int emu_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	return cpu->ffn(cpu, w, n, x, y);
}

static struct dsm_backend emu;

struct config_case {
	const char *name;
	struct dsm_plan *plan;
	enum dsm_cache_policy policy;
	uint64_t cache_bytes;
	int cache_off;
	unsigned stream_flags;
	int gpu;
	int prefetch;
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

static void run_case(const struct config_case *cc, struct step_data *steps, float *const *want)
{
	struct dsm_offload_opts oo = { .plan = cc->plan, .cpu = cpu, .gpu = cc->gpu ? &emu : NULL,
		.policy = cc->policy, .cache_bytes = cc->cache_bytes, .cache_off = cc->cache_off,
		.stream = { .flags = cc->stream_flags, .queue_depth = 4, .chunk_bytes = 16384 },
		.pool_flags = DSM_POOL_NO_LOCK };
	/* Pinned policy: hotness as a trace would give it, uneven across experts. */
	double *hot = calloc((size_t)(NL * E), sizeof *hot);
	for (int i = 0; i < NL * E; i++)
		hot[i] = (double)((i * 7) % 13);
	if (cc->policy == DSM_CACHE_PINNED)
		oo.hotness = hot;
	struct dsm_offload *o;
	int rc = dsm_offload_open(&o, ck, &oo);
	free(hot);
	CHECK(rc == 0, "%s: open: %s", cc->name, dsm_errmsg());
	if (rc)
		return;
	if (cc->policy == DSM_CACHE_PINNED)
		check_warm(cc, o);
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
			struct dsm_moe_step ms = { .layer = d->layer, .n_tokens = T, .top_k = K, .idx = d->idx,
				.weight = d->w, .x = d->x, .y = y };
			rc = dsm_offload_moe(o, &ms);
			CHECK(rc == 0, "%s: step %d: %s", cc->name, s, dsm_errmsg());
			CHECK(memcmp(y, want[s], sizeof(float) * (size_t)(T * D)) == 0, "%s: step %d (round %d): output "
			      "differs from the plain loop", cc->name, s, round);
		}
	struct dsm_offload_stats st;
	dsm_offload_get_stats(o, &st);
	uint64_t n[3];
	dsm_plan_count(cc->plan, n);
	if (n[DSM_TIER_NVME])
		CHECK(st.bytes_read > 0 && st.expert_runs[DSM_TIER_NVME] > 0, "%s: nothing streamed", cc->name);
	if (cc->gpu)
		CHECK(st.expert_runs[DSM_TIER_GPU] > 0 && st.resident_bytes[DSM_TIER_GPU] > 0, "%s: no gpu run", cc->name);
	if (cc->cache_off)
		CHECK(st.cache.hits == 0 || st.cache.prefetch_hits > 0, "%s: hits with the cache off", cc->name);
	if (cc->prefetch)
		CHECK(st.cache.prefetches > 0 && st.cache.prefetch_hits > 0, "%s: prefetch %llu hits %llu wasted %llu", cc->name,
		      (unsigned long long)st.cache.prefetches, (unsigned long long)st.cache.prefetch_hits, (unsigned long long)st.cache.prefetch_wasted);
	if (!cc->cache_off && n[DSM_TIER_NVME] && cc->cache_bytes > 0)
		CHECK(st.cache.hits > 0, "%s: a cache that never hits", cc->name);
	if (getenv("VERBOSE"))
		fprintf(stderr, "%s: runs nvme %llu dram %llu gpu %llu, read %llu bytes, hits %llu misses %llu\n",
			cc->name, (unsigned long long)st.expert_runs[0], (unsigned long long)st.expert_runs[1],
			(unsigned long long)st.expert_runs[2], (unsigned long long)st.bytes_read,
			(unsigned long long)st.cache.hits, (unsigned long long)st.cache.misses);

	/* The synchronous accessor gives the same bytes. */
	struct dsm_ffn_weights w;
	CHECK(dsm_offload_get(o, L0, 3, &w) == 0, "%s: get: %s", cc->name, dsm_errmsg());
	const struct dsm_tensor *tt[3];
	dsm_expert_tensors(ck, L0, 3, tt);
	uint8_t *down = malloc(tt[2]->nbytes);
	dsm_checkpoint_read(ck, tt[2], down);
	if (!cc->gpu || dsm_plan_expert_tier(cc->plan, L0, 3).kind != DSM_TIER_GPU)
		CHECK(memcmp(down, w.down.data, tt[2]->nbytes) == 0, "%s: get: wrong bytes", cc->name);
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
	CHECK(dsm_offload_open(&o, ck, &oo) == 0, "faults: open: %s", dsm_errmsg());
	float *y = malloc(sizeof(float) * (size_t)(T * D));
	struct dsm_moe_step ms = { .layer = steps[0].layer, .n_tokens = T, .top_k = K, .idx = steps[0].idx,
		.weight = steps[0].w, .x = steps[0].x, .y = y };

	/* Short reads and EAGAIN: clean retries, same numbers. */
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_SHORT, .first = 1, .every = 3 });
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_ERROR, .first = 2, .every = 5, .arg = EAGAIN });
	CHECK(dsm_offload_moe(o, &ms) == 0 && memcmp(y, want[0], sizeof(float) * (size_t)(T * D)) == 0,
	      "faults: short/EAGAIN: %s", dsm_errmsg());
	/* EIO: a clear error naming the tensor; then the same step succeeds once the disk is back. */
	dsm_io_fault_clear(f);
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_ERROR, .first = 3, .arg = EIO });
	int rc = dsm_offload_moe(o, &ms);
	CHECK(rc == DSM_EIO && strstr(dsm_errmsg(), "tensor 'model.layers.") && strstr(dsm_errmsg(), "offset"),
	      "faults: EIO: %d %s", rc, dsm_errmsg());
	dsm_io_fault_clear(f);
	CHECK(dsm_offload_moe(o, &ms) == 0 && memcmp(y, want[0], sizeof(float) * (size_t)(T * D)) == 0,
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
	if (mkmodel_write(&mo, dir) < 0 || dsm_checkpoint_open(&ck, dir) < 0) {
		fprintf(stderr, "tiny checkpoint: %s\n", dsm_errmsg());
		return 99;
	}
	struct dsm_backend_options bo = { .precision = DSM_PRECISION_F32, .threads = 1 };
	if (dsm_backend_create(&cpu, "cpu", &bo) < 0) {
		fprintf(stderr, "cpu backend: %s\n", dsm_errmsg());
		return 99;
	}
	emu = *cpu;
	emu.name = "emu";
	emu.alloc = emu_alloc;
	emu.free = emu_free;
	emu.copy_in = emu_copy;
	emu.copy_out = emu_copy;
	emu.sync = emu_sync;
	emu.ffn = emu_ffn;
	const struct dsm_config *c = &ck->config;
	D = c->hidden_size;
	K = c->num_experts_per_tok;
	E = c->n_routed_experts;
	L0 = c->first_k_dense_replace;
	NL = c->num_hidden_layers;

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
	dsm_plan_sizes_from_checkpoint(ck, &sz);
	/* Mixed: a third of the experts in DRAM, hottest (lowest numbers, as the steps favour) first. */
	double *hot = calloc((size_t)(NL * E), sizeof *hot);
	for (int l = L0; l < NL; l++)
		for (int x = 0; x < E; x++)
			hot[l * E + x] = E - x;
	struct dsm_plan_budget b = { .dram_bytes = sz.non_expert_total + (uint64_t)((NL - L0) * E / 3) * sz.expert_bytes };
	CHECK(dsm_plan_from_budgets(&mixed, c, &sz, &b, hot) == 0, "mixed plan: %s", dsm_errmsg());
	/* Emulated GPU: a device budget for a few experts, the hottest of them there, some in DRAM, rest
	 * streamed. */
	emu_budget = 6 * (sz.expert_bytes + 4096);
	struct dsm_plan_budget gb = { .vram_bytes = 5 * sz.expert_bytes, .dram_bytes = sz.non_expert_total +
		8 * sz.expert_bytes };
	CHECK(dsm_plan_from_budgets(&gpu, c, &sz, &gb, hot) == 0, "gpu plan: %s", dsm_errmsg());
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		if (gpu->non_expert[k].kind == DSM_TIER_GPU)
			gpu->non_expert[k] = t_dram; /* the emu device holds experts only */
	(void)t_gpu;
	uint64_t slot = 4 * sz.expert_bytes + 65536;

	const struct config_case cases[] = {
		{ "all-dram", dram, DSM_CACHE_LRU, 0, 0, 0, 0, 0 },
		{ "all-streamed cache off", streamed, DSM_CACHE_LRU, 0, 1, 0, 0, 0 },
		{ "all-streamed lru", streamed, DSM_CACHE_LRU, 12 * slot, 0, 0, 0, 0 },
		{ "all-streamed lfu", streamed, DSM_CACHE_LFU, 12 * slot, 0, 0, 0, 0 },
		{ "all-streamed pinned", streamed, DSM_CACHE_PINNED, 12 * slot, 0, 0, 0, 0 },
		{ "all-streamed buffered", streamed, DSM_CACHE_LRU, 0, 1, DSM_STREAM_BUFFERED, 0, 0 },
		{ "all-streamed sync", streamed, DSM_CACHE_LRU, 0, 1, DSM_STREAM_SYNC, 0, 0 },
		{ "all-streamed prefetch", streamed, DSM_CACHE_LRU, 0, 1, 0, 0, 1 },
		{ "mixed", mixed, DSM_CACHE_PINNED, 10 * slot, 0, 0, 0, 1 },
		{ "emulated gpu", gpu, DSM_CACHE_LRU, 0, 0, 0, 1, 1 },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
		run_case(&cases[i], steps, want);
	CHECK(emu_used == 0, "emu device memory leaked: %zu", emu_used);
	uint64_t n[3];
	dsm_plan_count(gpu, n);
	CHECK(n[DSM_TIER_GPU] == 5 && n[DSM_TIER_DRAM] == 8, "gpu plan tiers %llu %llu", (unsigned long long)n[2],
	      (unsigned long long)n[1]);
	test_faults(steps, want, streamed);

	/* A plan the device cannot hold: a clear error, nothing leaked. */
	emu_budget = sz.expert_bytes;
	struct dsm_offload *o;
	struct dsm_offload_opts oo = { .plan = gpu, .cpu = cpu, .gpu = &emu, .pool_flags = DSM_POOL_NO_LOCK };
	CHECK(dsm_offload_open(&o, ck, &oo) == DSM_ENOMEM && strstr(dsm_errmsg(), "device memory"), "device full: %s",
	      dsm_errmsg());
	CHECK(emu_used == 0, "emu leak after a failed open");

	for (int s = 0; s < STEPS; s++) {
		free(steps[s].x);
		free(want[s]);
	}
	free(hot);
	dsm_plan_free(dram);
	dsm_plan_free(streamed);
	dsm_plan_free(mixed);
	dsm_plan_free(gpu);
	dsm_backend_destroy(cpu);
	dsm_checkpoint_close(ck);
	return TEST_EXIT();
}
