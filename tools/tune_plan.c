/* dsm-tune plan (docs/tune.md, "The planner"): experts ordered by expected uses per token (a trace's counts,
 * else the router's bias), the GPUs filled first (each with the experts of its range of MoE layers), then DRAM (spread over the NUMA nodes so that each node's
 * expected work matches its cores' rate), the rest streamed; the split of DRAM between resident experts and
 * the expert cache, and the cache policy, are chosen by simulating each candidate on the trace (or on a trace
 * drawn from the bias) and keeping the fastest. Every expert costs the same bytes, so ordering by expected
 * uses is ordering by bytes saved per byte of memory, at any batch size (1 - (1 - p)^B grows with p). */
#include "tune.h"

#include "cache.h"
#include "error.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const double *sort_pop; /* qsort's context */
static int by_pop(const void *a, const void *b)
{
	double x = sort_pop[*(const int *)a], y = sort_pop[*(const int *)b];
	if (x != y)
		return x > y ? -1 : 1;
	return *(const int *)a - *(const int *)b;
}

void tune_order_experts(const struct tune_model *m, const double *pop, int *order)
{
	int E = m->shape.n_experts;
	sort_pop = pop;
	for (int l = 0; l < m->shape.n_layers; l++) {
		int *o = order + (size_t)l * (size_t)E;
		for (int e = 0; e < E; e++)
			o[e] = l * E + e;
		qsort(o, (size_t)E, sizeof(int), by_pop);
		for (int e = 0; e < E; e++)
			o[e] -= l * E;
	}
}

/* Expected uses per token of each expert: from the trace, else exp(4 x bias) normalized to top_k per layer
 * (a proxy whose ordering is the router's; mkmodel's --routing-skew S gives exactly Zipf S), else even. */
static double *popularity(const struct tune_model *m, const struct tune_trace *t)
{
	if (t)
		return tune_trace_popularity(t);
	const struct dsm_moe_shape *s = &m->shape;
	size_t E = (size_t)s->n_experts;
	double *pop = calloc((size_t)s->n_layers * E, sizeof(double));
	if (!pop)
		return NULL;
	for (int l = s->first_moe; l < s->n_layers; l++) {
		double *p = pop + (size_t)l * E, sum = 0;
		for (size_t e = 0; e < E; e++)
			sum += p[e] = m->bias ? exp(4 * m->bias[(size_t)l * E + e]) : 1;
		for (size_t e = 0; e < E; e++)
			p[e] = p[e] / sum * s->top_k > 1 ? 1 : p[e] / sum * s->top_k;
	}
	return pop;
}

/* A trace of n tokens drawn from pop (per layer, top_k distinct experts, each with probability ~ pop). */
static int sample_trace(struct tune_trace *t, const struct tune_model *m, const double *pop, uint64_t n)
{
	const struct dsm_moe_shape *s = &m->shape;
	int E = s->n_experts, K = s->top_k;
	memset(t, 0, sizeof *t);
	t->info = (struct dsm_trace_info){ .n_layers = (uint32_t)s->n_layers, .first_moe = (uint32_t)s->first_moe,
		.n_experts = (uint32_t)E, .top_k = (uint32_t)K, .n_records = n };
	t->n = n;
	t->n_moe = s->n_layers - s->first_moe;
	t->ex = malloc(sizeof(uint16_t) * n * (size_t)t->n_moe * (size_t)K);
	double *cdf = malloc(sizeof(double) * (size_t)E);
	uint64_t *taken = calloc((size_t)E, sizeof(uint64_t));
	if (!t->ex || !cdf || !taken) {
		free(t->ex), free(cdf), free(taken);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	struct rng r;
	rng_seed(&r, 1, "dsm-tune plan");
	uint64_t stamp = 0;
	for (int l = s->first_moe; l < s->n_layers; l++) {
		double sum = 0;
		for (int e = 0; e < E; e++)
			cdf[e] = (sum += pop[(size_t)l * (size_t)E + (size_t)e] + 1e-9);
		for (uint64_t i = 0; i < n; i++) {
			uint16_t *x = t->ex + (i * (size_t)t->n_moe + (size_t)(l - s->first_moe)) * (size_t)K;
			stamp++;
			for (int k = 0; k < K; k++) {
				int pick, tries = 0;
				do {
					pick = tune_draw(cdf, E, &r);
					if (++tries > 1000) /* a handful of experts hold nearly all the mass: take the next free */
						for (pick = 0; taken[pick] == stamp; pick++)
							;
				} while (taken[pick] == stamp);
				taken[pick] = stamp;
				x[k] = (uint16_t)pick;
			}
		}
	}
	free(cdf), free(taken);
	return 0;
}

int tune_plan(struct dsm_plan **out, const struct tune_model *m, const struct tune_hw *hw,
	      const struct tune_plan_opts *o, struct tune_sim_result *sim_out)
{
	*out = NULL;
	const struct dsm_moe_shape *s = &m->shape;
	int L = s->n_layers, E = s->n_experts;
	char a[32], b[32], c[32];
	uint64_t dram_total = 0;
	for (int j = 0; j < hw->n_nodes; j++)
		dram_total += hw->node[j].dram_bytes;
	/* vram: gpu:0's budget; gpu_vram[i]: each GPU's (--vram-budget is each GPU's, as in dsm-run) */
	uint64_t vram = 0, dram = o->dram_budget ? o->dram_budget : dram_total / 10 * 9, gpu_vram[TUNE_MAX_GPUS] = { 0 };
	for (int i = 0; i < hw->n_gpus; i++) {
		gpu_vram[i] = o->vram_budget ? o->vram_budget : hw->gpu[i].memory_bytes / 10 * 9;
		if (gpu_vram[i] > hw->gpu[i].memory_bytes)
			return dsm_fail(DSM_EARG, "--vram-budget %s is more than gpus[%d].memory_bytes of %s (%s)",
					tune_bytes(gpu_vram[i], a, sizeof a), i, hw->source,
					tune_bytes(hw->gpu[i].memory_bytes, b, sizeof b));
	}
	vram = gpu_vram[0];
	if (!hw->n_gpus && o->vram_budget) {
		return dsm_fail(DSM_EARG, "--vram-budget given but %s describes no GPU (gpus is empty)", hw->source);
	}
	if (dram > dram_total)
		return dsm_fail(DSM_EARG, "--dram-budget %s is more than the DRAM of %s (numa_nodes[].dram_bytes: %s)",
				tune_bytes(dram, a, sizeof a), hw->source, tune_bytes(dram_total, b, sizeof b));
	/* The streaming buffers of one layer and one look-ahead layer always come out of DRAM. */
	uint64_t buffers = 2 * (uint64_t)s->top_k * m->slot_bytes;
	struct dsm_tier ne_tier = { DSM_TIER_DRAM, 0 };
	if (hw->n_gpus && m->non_expert_bytes <= vram) {
		ne_tier = (struct dsm_tier){ DSM_TIER_GPU, 0 };
		vram -= m->non_expert_bytes;
	} else if (m->non_expert_bytes + buffers <= dram) {
		dram -= m->non_expert_bytes;
		vram = hw->n_gpus ? vram : 0;
	} else {
		return dsm_fail(DSM_EPLAN, "%s: the budgets cannot hold the non-expert weights: they need %s (plus %s of "
				"streaming buffers in DRAM); the DRAM budget is %s and the VRAM budget %s", m->source,
				tune_bytes(m->non_expert_bytes, a, sizeof a), tune_bytes(buffers, b, sizeof b),
				tune_bytes(dram, c, sizeof c), tune_bytes(vram, (char[32]){ 0 }, 32));
	}
	if (dram < buffers)
		return dsm_fail(DSM_EPLAN, "%s: the DRAM budget leaves %s after the non-expert weights, less than the %s of "
				"streaming buffers", m->source, tune_bytes(dram, a, sizeof a), tune_bytes(buffers, b, sizeof b));

	double *pop = popularity(m, o->trace);
	int *order = malloc(sizeof(int) * (size_t)L * (size_t)E);
	struct tune_trace drawn = { 0 };
	struct dsm_plan *best = NULL, *p = NULL;
	struct tune_sim_result best_r = { 0 };
	int rc = DSM_ENOMEM;
	if (!pop || !order)
		goto nomem;
	/* Global order over (layer, expert), hottest first. */
	int n = 0;
	for (int l = s->first_moe; l < L; l++)
		for (int e = 0; e < E; e++)
			order[n++] = l * E + e;
	sort_pop = pop;
	qsort(order, (size_t)n, sizeof(int), by_pop);
	const struct tune_trace *trace = o->trace;
	if (!trace) {
		if ((rc = sample_trace(&drawn, m, pop, 2000)) < 0)
			goto out;
		trace = &drawn;
	}
	static const double cache_share[] = { 0, 0.05, 0.15, 0.3, 0.6 };
	static const int policies[] = { DSM_CACHE_PINNED, DSM_CACHE_LRU, DSM_CACHE_LFU };
	for (size_t ci = 0; ci < sizeof cache_share / sizeof *cache_share; ci++)
		for (size_t pi = 0; pi < 3; pi++) {
			if ((rc = dsm_plan_uniform(&p, s, ne_tier, (struct dsm_tier){ DSM_TIER_NVME, 0 })) < 0)
				goto out;
			uint64_t cache = buffers + (uint64_t)((double)(dram - buffers) * cache_share[ci]);
			/* Each GPU holds the hottest experts of its range of MoE layers (as dsm_plan_from_budgets splits them). */
			uint64_t g[TUNE_MAX_GPUS], d = (dram - cache) / m->expert_bytes;
			for (int gi = 0; gi < hw->n_gpus; gi++)
				g[gi] = (gi ? gpu_vram[gi] : vram) / m->expert_bytes;
			uint64_t node_left[TUNE_MAX_NODES];
			double load[TUNE_MAX_NODES] = { 0 };
			for (int j = 0; j < hw->n_nodes; j++)
				node_left[j] = hw->node[j].dram_bytes / m->expert_bytes;
			if (ne_tier.kind == DSM_TIER_DRAM) /* node 0 also holds the non-expert weights and the cache */
				node_left[0] -= node_left[0] < (m->non_expert_bytes + cache) / m->expert_bytes ?
							node_left[0] : (m->non_expert_bytes + cache) / m->expert_bytes;
			uint64_t nvme_left = 0;
			for (int i = 0; i < n; i++) {
				struct dsm_tier *t = &p->expert[order[i]];
				int gi = hw->n_gpus ? (int)((int64_t)(order[i] / E - s->first_moe) * hw->n_gpus / (L - s->first_moe)) : 0;
				if (hw->n_gpus && g[gi]) {
					*t = (struct dsm_tier){ DSM_TIER_GPU, (uint8_t)gi };
					g[gi]--;
					continue;
				}
				int bestj = -1;
				for (int j = 0; d && j < hw->n_nodes; j++) {
					double after = load[j] + pop[order[i]] / hw->node[j].expert_gbs[0];
					if (node_left[j] &&
					    (bestj < 0 || after < load[bestj] + pop[order[i]] / hw->node[bestj].expert_gbs[0]))
						bestj = j;
				}
				if (bestj >= 0) {
					*t = (struct dsm_tier){ DSM_TIER_DRAM, (uint8_t)bestj };
					load[bestj] += pop[order[i]] / hw->node[bestj].expert_gbs[0];
					node_left[bestj]--;
					d--;
				} else {
					nvme_left++;
				}
			}
			p->cache_policy = policies[pi];
			p->cache_bytes = nvme_left ? cache : 0;
			struct tune_sim_opts so = { .policy = -1, .batch = o->batch, .max_tokens = 4000,
				.hotness = pop };
			struct tune_sim_result r;
			if ((rc = tune_simulate(m, p, hw, trace, &so, &r)) < 0)
				goto out;
			if (o->verbose)
				fprintf(stderr, "dsm-tune plan: cache share %.2f, %s: %.2f tok/s (hit rate %.3f)\n",
					cache_share[ci], dsm_cache_policy_name(policies[pi]), r.tokens_per_second, r.hit_rate);
			if (!best || r.tokens_per_second > best_r.tokens_per_second * 1.0001) {
				dsm_plan_free(best);
				tune_sim_result_free(&best_r);
				best = p, best_r = r, p = NULL;
			} else {
				tune_sim_result_free(&r);
				dsm_plan_free(p);
				p = NULL;
			}
			if (!nvme_left) /* nothing streamed: the cache does not matter */
				goto done;
		}
done:
	*out = best;
	best = NULL;
	if (sim_out)
		*sim_out = best_r;
	else
		tune_sim_result_free(&best_r);
	rc = 0;
	goto out;
nomem:
	rc = dsm_fail(DSM_ENOMEM, "out of memory");
out:
	if (rc < 0)
		tune_sim_result_free(&best_r);
	dsm_plan_free(best);
	dsm_plan_free(p);
	tune_trace_free(&drawn);
	free(pop), free(order);
	return rc;
}
