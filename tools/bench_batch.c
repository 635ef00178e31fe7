/* dsm-bench batch: decode with B sequences together against the bound of what each step reads, measured in
 * the same run (docs/bench.md).
 *
 * (a) The small preset with its weights read into memory and (b) the medium preset under a DRAM budget that
 * leaves most routed experts on NVMe, each opened once through the engine. For each B, B requests of
 * different short prompts, sampled at temperature 1 with different seeds so that they route differently,
 * run through the scheduler until every prompt is prefilled; then a fixed number of decode steps are timed.
 * The session's routing hook gives each token's experts: per step and MoE layer their union is what the step
 * reads, from DRAM (mapped or DRAM-tier experts, cache hits) or from NVMe (streamed). Bound of a step:
 *   tokens / (DRAM bytes / DRAM GB/s + NVMe bytes / O_DIRECT GB/s + rest_mem + rest_compute x tokens)
 * with the DRAM probe (tools/dram_probe.h) over the resident experts and the output head, and the O_DIRECT
 * probe of the checkpoint (tools/bench_io.h) when experts stream, both before every step (a run's rate is the
 * median over its steps); rest_mem = the non-expert bytes of a step / DRAM GB/s, and rest_compute = what the
 * step time at B = 1 leaves after all its bytes. batch_efficiency = tokens/s / bound. */
#include "bench_engine.h"
#include "bench_io.h"
#include "dram_probe.h"
#include "engine.h"
#include "error.h"
#include "generate.h"
#include "median.h"
#include "rng.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int bench_batch_main(int argc, char **argv);

#define MAX_SIZES 16
#define PROMPT_MIN 8                  /* prompts of 8 to 15 tokens */
#define WARM_STEPS 2                  /* decode steps before the timed ones (scratch grows on a new size) */
#define PROBE_BYTES (128ull << 20)    /* DRAM probe before each step: far past the last-level cache */
#define ODIRECT_BYTES (64ull << 20)   /* O_DIRECT probe before each step (b): 16 reads of 4 MiB */

/* Tier kinds, short. */
enum { NVME = DSM_TIER_NVME, DRAM = DSM_TIER_DRAM, GPU = DSM_TIER_GPU };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Memory the DRAM probe reads: the weights decode steps read from DRAM. */
/* One preset opened through the engine. */
struct bench {
	struct dsm_engine *e;
	struct dsm_model *m;
	struct dsm_offload *store;        /* the model's expert store: mapped, or tiered under plan */
	const struct dsm_plan *plan;      /* NULL: every expert mapped */
	int n_layers, first_moe, n_experts, threads;
	uint64_t expert_bytes;            /* one routed expert's FP8 weights */
	uint64_t step_bytes;              /* the non-expert weights one decode step reads */
	uint64_t experts[3];              /* routed experts by tier (NVME, DRAM, GPU; see expert_tier) */
	uint8_t *used;                    /* [n_layers * n_experts]: routed to in the current step */
	struct dram_region *regions;
	size_t n_regions, next_region;
	uint64_t odirect_offset;          /* where the next O_DIRECT probe reads */
};

/* One B. Bytes are per step. */
struct run {
	int B, steps;
	double seconds;                   /* the timed steps */
	double distinct;                  /* distinct experts */
	double bytes[3];                  /* of the distinct experts, by the tier they were read from (the bound
					   * counts NVME and DRAM: GPU experts are the device's work) */
	double streamed;                  /* what the streamer read (look-ahead reads included) */
	double read_busy, io_wait;        /* seconds with a read in flight, and blocked on one */
	double gbs[2], gbs_lo[2], gbs_hi[2]; /* O_DIRECT (nvme) and DRAM probes: median and range over the steps */
	double t[2], rest_mem, rest_compute, bound_tps, tps, speedup, efficiency; /* t: the bound's bytes terms */
	double rest;                      /* measured: the step time less t[], for comparison with the bound's */
};

static void on_route(void *user, int seq, int layer, int64_t pos, const int32_t *idx, const float *weight, int k)
{
	(void)seq;
	(void)pos;
	(void)weight;
	struct bench *b = user;
	for (int i = 0; i < k; i++)
		b->used[(size_t)layer * (size_t)b->n_experts + (size_t)idx[i]] = 1;
}

static int add_region(struct bench *b, const struct dsm_mat *m)
{
	struct dram_region *v = realloc(b->regions, sizeof *v * (b->n_regions + 1));
	if (!v)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	b->regions = v;
	size_t row = (size_t)m->cols * dsm_dtype_size(m->dtype);
	v[b->n_regions++] = (struct dram_region){ (const char *)m->data + (size_t)m->row0 * row, (size_t)m->rows * row };
	return 0;
}

/* The tier an expert is read from when it is not a cache hit: NVME, DRAM (dram or mapped: host memory) or
 * GPU. */
static int expert_tier(const struct bench *b, int layer, int expert)
{
	int kind = b->plan ? dsm_plan_expert_tier(b->plan, layer, expert).kind : DSM_TIER_MAPPED;
	return kind == DSM_TIER_MAPPED ? DRAM : kind;
}

/* The probe's memory: every DRAM-resident routed expert and the output head (always resident, and enough
 * on its own when every expert streams). The weights stay got until close (resident: no cost). */
static int collect_regions(struct bench *b)
{
	for (int l = b->first_moe; l < b->n_layers; l++)
		for (int x = 0; x < b->n_experts; x++) {
			int tier = expert_tier(b, l, x), rc = 0;
			b->experts[tier]++;
			if (tier != DRAM)
				continue;
			struct dsm_ffn_weights w;
			if ((rc = dsm_offload_get(b->store, l, x, &w)) < 0 ||
			    (rc = add_region(b, &w.gate)) < 0 || (rc = add_region(b, &w.up)) < 0 ||
			    (rc = add_region(b, &w.down)) < 0)
				return rc;
		}
	return add_region(b, &b->m->head);
}

static void bench_close(struct bench *b)
{
	for (int l = b->first_moe; b->m && l < b->n_layers; l++)
		for (int x = 0; x < b->n_experts; x++) {
			if (expert_tier(b, l, x) == DRAM)
				dsm_offload_put(b->store, l, x);
		}
	dsm_engine_close(b->e);
	free(b->used);
	free(b->regions);
	memset(b, 0, sizeof *b);
}

static int bench_open(struct bench *b, const char *dir, struct dsm_engine_options eo)
{
	memset(b, 0, sizeof *b);
	eo.session.hooks = (struct dsm_session_hooks){ .user = b, .on_route = on_route };
	int rc = dsm_engine_open(&b->e, dir, &eo);
	if (rc < 0)
		return rc;
	bench_print_notes("batch", dsm_engine_notes(b->e));
	b->m = dsm_engine_model(b->e);
	b->store = b->m->offload;
	b->plan = dsm_engine_plan(b->e);
	const struct dsm_config *c = &b->m->cfg;
	b->n_layers = c->num_hidden_layers;
	b->first_moe = c->first_k_dense_replace;
	b->n_experts = c->n_routed_experts;
	int bound;
	b->threads = dsm_model_threads(b->m, &bound);
	struct dsm_plan_sizes sz;
	dsm_plan_sizes(b->m->store_model, &sz);
	/* Of the embeddings a step reads one row per token. */
	const struct dsm_mat *embed = &b->m->embed;
	b->expert_bytes = sz.expert_bytes;
	b->step_bytes = sz.non_expert_total - (uint64_t)(embed->rows * embed->cols) * dsm_dtype_size(embed->dtype);
	b->used = calloc((size_t)b->n_layers * (size_t)b->n_experts, 1);
	if (!b->used)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	return collect_regions(b);
}

/* Seconds of one DRAM probe: about PROBE_BYTES of the regions, from where the last probe stopped, every
 * thread of the engine reading its share of each region. *bytes: what was read. */
static double probe_dram(struct bench *b, double *bytes)
{
	size_t first = b->next_region, count = 0;
	for (uint64_t sum = 0; sum < PROBE_BYTES; count++)
		sum += b->regions[(first + count) % b->n_regions].n;
	b->next_region = (first + count) % b->n_regions;
	return dram_read_regions(b->regions, b->n_regions, first, count, b->threads, bytes);
}

/* Seconds of one O_DIRECT probe: ODIRECT_BYTES of the checkpoint's shards, from where the last one stopped.
 * *bytes: what was read. */
static double probe_odirect(struct bench *b, double *bytes)
{
	uint64_t n;
	double t = odirect_read(b->m->ck, &b->odirect_offset, ODIRECT_BYTES, &n);
	*bytes = (double)n;
	return t;
}

/* Distinct experts the step routed to, by the tier they were read from (NVMe-tier experts found in the
 * expert cache count as DRAM reads); clears the marks. */
static void count_step(struct bench *b, const struct dsm_offload_stats *s0, struct run *r)
{
	uint64_t n[3] = { 0, 0, 0 };
	size_t keys = (size_t)b->n_layers * (size_t)b->n_experts;
	for (size_t i = 0; i < keys; i++)
		if (b->used[i]) {
			n[expert_tier(b, (int)(i / (size_t)b->n_experts), (int)(i % (size_t)b->n_experts))]++;
			b->used[i] = 0;
		}
	uint64_t streamed = 0;
	if (b->plan) {
		struct dsm_offload_stats s1;
		dsm_offload_get_stats(b->store, &s1);
		/* A miss, or a first use of what a look-ahead read brought in, was read from NVMe in this step. */
		streamed = s1.cache.misses - s0->cache.misses + s1.cache.prefetch_hits - s0->cache.prefetch_hits;
		streamed = streamed < n[NVME] ? streamed : n[NVME];
		r->streamed += (double)(s1.bytes_read - s0->bytes_read);
		r->read_busy += s1.read_busy_seconds - s0->read_busy_seconds;
		r->io_wait += s1.io_wait_seconds - s0->io_wait_seconds;
	}
	r->distinct += (double)(n[DRAM] + n[NVME] + n[GPU]);
	r->bytes[DRAM] += (double)((n[DRAM] + n[NVME] - streamed) * b->expert_bytes);
	r->bytes[NVME] += (double)(streamed * b->expert_bytes);
	r->bytes[GPU] += (double)(n[GPU] * b->expert_bytes);
}

/* Runs B requests: prefill, WARM_STEPS decode steps, then `steps` timed ones, each after the probes. */
static int run_batch(struct bench *b, int B, int steps, int top_k, struct run *r)
{
	memset(r, 0, sizeof *r);
	r->B = B;
	r->steps = steps;
	struct dsm_scheduler *sc;
	int rc = dsm_scheduler_init(&sc, dsm_engine_session(b->e), NULL);
	if (rc < 0)
		return rc;
	uint64_t prompt_tokens = 0, vocab = (uint64_t)b->m->cfg.vocab_size;
	for (int i = 0; i < B && rc >= 0; i++) {
		int32_t prompt[2 * PROMPT_MIN];
		uint64_t x = 1000 + (uint64_t)i;
		int n = PROMPT_MIN + (int)(splitmix64(&x) % PROMPT_MIN);
		for (int t = 0; t < n; t++)
			prompt[t] = (int32_t)(2 + splitmix64(&x) % (vocab - 2)); /* not BOS or EOS */
		struct dsm_request q = { .prompt = prompt, .n_prompt = n, .seq = -1, .prefix_of = -1,
			.params = { .max_tokens = dsm_session_ctx(dsm_engine_session(b->e)), .eos_id = -1,
				    .sampling = { .temperature = 1, .top_p = 1, .top_k = top_k, .seed = x } } };
		rc = dsm_scheduler_add(sc, &q);
		prompt_tokens += (uint64_t)n;
	}
	struct dsm_scheduler_stats st = { 0 };
	while (rc >= 0 && st.prefill_tokens < prompt_tokens) {
		rc = dsm_scheduler_step(sc);
		dsm_scheduler_get_stats(sc, &st);
	}
	double *rate = calloc(2 * (size_t)steps, sizeof *rate); /* [tier][step] GB/s of each probe */
	if (!rate)
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
	for (int k = 0; k < WARM_STEPS + steps && rc >= 0; k++) {
		double pb[2] = { 0 }, pt[2] = { 0 };
		pt[DRAM] = probe_dram(b, &pb[DRAM]);
		if (b->experts[NVME] && (pt[NVME] = probe_odirect(b, &pb[NVME])) < 0)
			rc = dsm_fail(DSM_EIO, "the O_DIRECT probe could not read the checkpoint");
		struct dsm_offload_stats s0;
		dsm_offload_get_stats(b->store, &s0);
		memset(b->used, 0, (size_t)b->n_layers * (size_t)b->n_experts);
		uint64_t decoded = st.decode_tokens;
		double t0 = now();
		if (rc >= 0)
			rc = dsm_scheduler_step(sc);
		double dt = now() - t0;
		dsm_scheduler_get_stats(sc, &st);
		if (rc >= 0 && st.decode_tokens - decoded != (uint64_t)B)
			rc = dsm_fail(DSM_EARG, "B = %d: a step decoded %llu tokens", B,
				      (unsigned long long)(st.decode_tokens - decoded));
		if (rc < 0 || k < WARM_STEPS)
			continue;
		r->seconds += dt;
		for (int t = NVME; t <= DRAM; t++)
			rate[(size_t)t * (size_t)steps + (size_t)(k - WARM_STEPS)] = pt[t] > 0 ? pb[t] / pt[t] / 1e9 : 0;
		count_step(b, &s0, r);
	}
	dsm_scheduler_free(sc);
	for (int t = NVME; t <= DRAM && rc >= 0; t++)
		r->gbs[t] = median(rate + (size_t)t * (size_t)steps, (size_t)steps, &r->gbs_lo[t], &r->gbs_hi[t]);
	free(rate);
	if (rc < 0)
		return rc;
	r->distinct /= steps;
	r->bytes[DRAM] /= steps;
	r->bytes[NVME] /= steps;
	r->streamed /= steps;
	r->read_busy /= steps;
	r->io_wait /= steps;
	r->tps = (double)B * steps / r->seconds;
	return 0;
}

/* The bound of run r, whose rest_compute comes from r1 (B = 1, bounded first). */
static void bound(const struct bench *b, const struct run *r1, struct run *r)
{
	for (int k = NVME; k <= DRAM; k++)
		r->t[k] = r->gbs[k] > 0 ? r->bytes[k] / (r->gbs[k] * 1e9) : 0;
	r->rest_mem = (double)b->step_bytes / (r->gbs[DRAM] * 1e9);
	r->rest = r->seconds / r->steps - r->t[DRAM] - r->t[NVME];
	if (r == r1) {
		r->rest_compute = r->rest > r->rest_mem ? r->rest - r->rest_mem : 0;
	} else {
		r->rest_compute = r1->rest_compute * r->B;
	}
	r->bound_tps = r->B / (r->t[DRAM] + r->t[NVME] + r->rest_mem + r->rest_compute);
	r->speedup = r->tps / r1->tps;
	r->efficiency = r->tps / r->bound_tps;
}

static cJSON *run_json(const struct run *r)
{
	cJSON *o = cJSON_CreateObject();
	double step = r->seconds / r->steps;
	const struct { const char *key; double v; } f[] = {
		{ "B", r->B }, { "steps", r->steps }, { "seconds", r->seconds }, { "tokens_per_second", r->tps },
		{ "speedup", r->speedup }, { "distinct_experts_per_step", r->distinct },
		{ "dram_expert_bytes_per_step", r->bytes[DRAM] }, { "nvme_expert_bytes_per_step", r->bytes[NVME] },
		{ "gpu_expert_bytes_per_step", r->bytes[GPU] }, { "streamed_bytes_per_step", r->streamed },
		{ "read_busy_seconds_per_step", r->read_busy }, { "io_wait_seconds_per_step", r->io_wait },
		{ "dram_gbs", r->gbs[DRAM] }, { "dram_gbs_min", r->gbs_lo[DRAM] }, { "dram_gbs_max", r->gbs_hi[DRAM] },
		{ "nvme_gbs", r->gbs[NVME] }, { "nvme_gbs_min", r->gbs_lo[NVME] }, { "nvme_gbs_max", r->gbs_hi[NVME] },
		{ "step_seconds", step },
		{ "rest_seconds", r->rest }, { "bound_dram_seconds", r->t[DRAM] }, { "bound_nvme_seconds", r->t[NVME] },
		{ "bound_rest_mem_seconds", r->rest_mem }, { "bound_rest_compute_seconds", r->rest_compute },
		{ "bound_step_seconds", r->B / r->bound_tps }, { "bound_tokens_per_second", r->bound_tps },
		{ "batch_efficiency", r->efficiency },
	};
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		cJSON_AddNumberToObject(o, f[i].key, f[i].v);
	return o;
}

static void print_table(const char *title, const struct bench *b, const struct run *runs, int n)
{
	const struct run *r1 = &runs[0];
	printf("%s: %d threads, %d decode steps per B; experts %llu in DRAM, %llu on NVMe (%.2f MB each)\n", title,
	       b->threads, r1->steps, (unsigned long long)b->experts[DRAM], (unsigned long long)b->experts[NVME],
	       (double)b->expert_bytes / 1e6);
	printf("  step at B = 1: %.2f ms = experts %.2f (DRAM) + %.2f (NVMe) + non-expert weights %.2f (%.0f MB) + "
	       "compute %.2f per token\n", 1e3 * r1->seconds / r1->steps, 1e3 * r1->t[DRAM], 1e3 * r1->t[NVME],
	       1e3 * r1->rest_mem, (double)b->step_bytes / 1e6, 1e3 * r1->rest_compute);
	printf("     B    tok/s  speedup  experts/step  expert MB/step DRAM + NVMe  DRAM GB/s  O_DIRECT GB/s  step ms  "
	       "rest ms  bound tok/s  batch_efficiency\n");
	for (int i = 0; i < n; i++) {
		const struct run *r = &runs[i];
		printf("  %4d  %7.1f  %7.2f  %12.1f  %12.1f + %-11.1f  %9.1f  %13.2f  %7.1f  %7.1f  %11.1f  %16.3f\n", r->B,
		       r->tps, r->speedup, r->distinct, r->bytes[DRAM] / 1e6, r->bytes[NVME] / 1e6, r->gbs[DRAM],
		       r->gbs[NVME], 1e3 * r->seconds / r->steps, 1e3 * r->rest, r->bound_tps, r->efficiency);
	}
}

struct opts {
	const char *dir[2];               /* small, medium */
	int steps, n_sizes, sizes[MAX_SIZES], only, json, top_k;
	uint64_t dram_budget;             /* (b); 0: a quarter of the experts */
	struct dsm_engine_options eo;
};

/* A DRAM budget for (b): the non-expert weights, the expert cache (eo's size, else the minimum as
 * offload/setup.c sizes it) and a quarter of the routed experts; the rest stream. */
static int quarter_budget(const char *dir, const struct dsm_engine_options *eo, uint64_t *budget)
{
	struct dsm_plan_sizes sz;
	struct dsm_moe_shape m;
	int rc = bench_sizes(dir, eo, &sz, &m);
	if (rc < 0)
		return rc;
	uint64_t experts = (uint64_t)(m.n_layers - m.first_moe) * (uint64_t)m.n_experts, cache = eo->tiers.cache_bytes;
	if (!cache)
		cache = 2ull * (uint64_t)m.top_k * (sz.expert_bytes + 65536);
	*budget = sz.non_expert_total + cache + experts / 4 * sz.expert_bytes;
	return 0;
}

/* Runs one preset; adds its object to json (may be NULL). Returns 0 or a negative code (message set). */
static int bench_preset(const struct opts *o, int which, cJSON *json)
{
	static const char *const preset[2] = { "small", "medium" };
	const char *dir = o->dir[which];
	struct dsm_engine_options eo = o->eo;
	/* Every sequence of the largest B, each with room for its prompt, the tokens it decodes while later
	 * prompts are prefilled, and the steps. */
	int max_b = 1;
	for (int i = 0; i < o->n_sizes; i++)
		max_b = o->sizes[i] > max_b ? o->sizes[i] : max_b;
	eo.session.max_seqs = max_b;
	eo.session.ctx = 2 * PROMPT_MIN + 128 + WARM_STEPS + o->steps;
	uint64_t budget = o->dram_budget;
	int rc;
	if (which == 1) {
		if (!budget && (rc = quarter_budget(dir, &eo, &budget)) < 0)
			return rc;
		eo.offload = 1;
		eo.tiers.dram_budget = budget;
	}
	struct bench b;
	struct run runs[MAX_SIZES];
	if ((rc = bench_open(&b, dir, eo)) < 0)
		goto out;
	for (int i = 0; i < o->n_sizes; i++) {
		if ((rc = run_batch(&b, o->sizes[i], o->steps, o->top_k, &runs[i])) < 0)
			goto out;
		bound(&b, &runs[0], &runs[i]);
		fprintf(stderr, "dsm-bench batch: %s B = %d: %.1f tok/s, bound %.1f, batch_efficiency %.3f (DRAM %.1f GB/s, "
			"O_DIRECT %.2f GB/s)\n", preset[which], runs[i].B, runs[i].tps, runs[i].bound_tps, runs[i].efficiency,
			runs[i].gbs[DRAM], runs[i].gbs[NVME]);
	}
	if (!json) {
		char title[PATH_MAX + 128];
		if (which)
			snprintf(title, sizeof title, "(b) medium preset under a DRAM budget of %.2f GB (%s)",
				 (double)budget / 1e9, dir);
		else
			snprintf(title, sizeof title, "(a) small preset, weights in DRAM (%s)", dir);
		print_table(title, &b, runs, o->n_sizes);
		goto out;
	}
	cJSON *p = cJSON_AddObjectToObject(json, preset[which]);
	cJSON_AddStringToObject(p, "model", dir);
	cJSON_AddBoolToObject(p, "tiered", b.plan != NULL);
	cJSON_AddNumberToObject(p, "dram_budget", (double)budget);
	cJSON_AddNumberToObject(p, "threads", b.threads);
	cJSON_AddNumberToObject(p, "expert_bytes", (double)b.expert_bytes);
	cJSON_AddNumberToObject(p, "non_expert_step_bytes", (double)b.step_bytes);
	cJSON_AddNumberToObject(p, "experts_dram", (double)b.experts[DRAM]);
	cJSON_AddNumberToObject(p, "experts_nvme", (double)b.experts[NVME]);
	cJSON_AddNumberToObject(p, "rest_compute_seconds_per_token", runs[0].rest_compute);
	cJSON *arr = cJSON_AddArrayToObject(p, "runs");
	for (int i = 0; i < o->n_sizes; i++) {
		char key[64];
		cJSON_AddItemToArray(arr, run_json(&runs[i]));
		snprintf(key, sizeof key, "batch_efficiency_%d", runs[i].B);
		cJSON_AddNumberToObject(p, key, runs[i].efficiency);
		snprintf(key, sizeof key, "speedup_%d", runs[i].B);
		cJSON_AddNumberToObject(p, key, runs[i].speedup);
	}
out:
	bench_close(&b);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench batch [options] [engine options]\n"
		"\n"
		"Decodes B sequences together, (a) on the small preset with its weights in DRAM and (b) on the medium\n"
		"preset under a DRAM budget that streams most experts, and prints for each B the tokens/s, the speedup\n"
		"over B = 1 and batch_efficiency = tokens/s / bound, the bound being the step's tokens over the time its\n"
		"distinct experts' bytes take at the DRAM and O_DIRECT rates measured in the same run, plus the rest of\n"
		"the step at B = 1 (its non-expert weights' bytes, and compute scaled by the tokens). docs/bench.md.\n"
		"\n"
		"options:\n"
		"  --small DIR         (a)'s checkpoint (default: bench-models/small, written with dsm-mkmodel if missing)\n"
		"  --medium DIR        (b)'s checkpoint (default: bench-models/medium, likewise; about 16 GB)\n"
		"  --only WHICH        small or medium: run only (a) or only (b)\n"
		"  --steps N           timed decode steps per B (default 32)\n"
		"  --sizes LIST        the B to run, starting with 1 (default 1,4,16,64)\n"
		"  --top-k N           sampling at temperature 1 from the N most likely tokens (default 50; 0: the\n"
		"                      whole vocabulary)\n"
		"  --dram-budget SIZE  (b)'s DRAM budget (default: the non-expert weights, the expert cache (--cache-size,\n"
		"                      else its minimum) and a quarter of the routed experts)\n"
		"  --json              one JSON object with every figure on stdout\n"
		"\n");
	dsm_engine_flags_help(f);
}

/* "1,4,16,64" into o->sizes. */
static int parse_sizes(const char *s, struct opts *o)
{
	o->n_sizes = 0;
	for (char *end; *s; s = *end ? end + 1 : end) {
		long v = strtol(s, &end, 10);
		if (end == s || (*end && *end != ',') || v < 1 || v > 4096 || o->n_sizes == MAX_SIZES)
			return -1;
		o->sizes[o->n_sizes++] = (int)v;
	}
	return o->n_sizes && o->sizes[0] == 1 ? 0 : -1;
}

int bench_batch_main(int argc, char **argv)
{
	static const struct option own[] = {
		{ "small", required_argument, NULL, 'S' }, { "medium", required_argument, NULL, 'M' },
		{ "only", required_argument, NULL, 'o' }, { "steps", required_argument, NULL, 'n' },
		{ "sizes", required_argument, NULL, 'z' }, { "top-k", required_argument, NULL, 'k' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts)
		return 1;
	struct opts o = { .dir = { "bench-models/small", "bench-models/medium" }, .steps = 32, .n_sizes = 4,
			  .sizes = { 1, 4, 16, 64 }, .only = -1, .top_k = 50 };
	dsm_engine_options_default(&o.eo);
	int ch, status = 2;
	optind = 1;
	while ((ch = bench_getopt(argc, argv, opts, &o.eo, "batch")) != -1) {
		switch (ch) {
		case 'S': o.dir[0] = optarg; break;
		case 'M': o.dir[1] = optarg; break;
		case 'o': o.only = strcmp(optarg, "small") == 0 ? 0 : strcmp(optarg, "medium") == 0 ? 1 : -2; break;
		case 'n': o.steps = atoi(optarg); break;
		case 'z':
			if (parse_sizes(optarg, &o) < 0) {
				fprintf(stderr, "dsm-bench batch: --sizes: '%s': expected B values in [1, 4096] from 1 on, "
					"e.g. 1,4,16,64 (B = 1 sets the rest of the step)\n", optarg);
				goto out;
			}
			break;
		case 'k': o.top_k = atoi(optarg); break;
		case 'j': o.json = 1; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); goto out;
		}
	}
	if (optind < argc || o.steps < 1 || o.steps > 100000 || o.only == -2 || o.top_k < 0) {
		usage(stderr);
		goto out;
	}
	/* --dram-budget is (b)'s: (a) keeps its weights in DRAM. */
	o.dram_budget = o.eo.tiers.dram_budget;
	o.eo.tiers.dram_budget = 0;
	status = 1;
	cJSON *json = o.json ? cJSON_CreateObject() : NULL;
	if (json) {
		cJSON_AddStringToObject(json, "bench", "batch");
		cJSON_AddNumberToObject(json, "steps", o.steps);
		cJSON_AddNumberToObject(json, "top_k", o.top_k);
		cJSON_AddItemToObject(json, "sizes", cJSON_CreateIntArray(o.sizes, o.n_sizes));
	}
	for (int which = 0; which < 2; which++) {
		if (o.only >= 0 && o.only != which)
			continue;
		if (bench_model(which ? "medium" : "small", o.dir[which], "") < 0)
			goto done;
		if (bench_preset(&o, which, json) < 0) {
			fprintf(stderr, "dsm-bench batch: %s: %s\n", o.dir[which], dsm_errmsg());
			goto done;
		}
		if (!json && which == 0 && o.only < 0)
			printf("\n");
	}
	if (json) {
		char *text = cJSON_PrintUnformatted(json);
		if (text)
			printf("%s\n", text);
		free(text);
	}
	status = 0;
done:
	cJSON_Delete(json);
out:
	free(opts);
	return status;
}
