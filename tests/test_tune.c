/* dsm-tune's simulator and planner (tools/tune_sim.c, tools/tune_plan.c):
 *   - the cache decisions (lru, lfu, pinned through offload/cache.c; Belady's own) against a brute-force
 *     replay written here from the policies' definitions, on random skewed key sequences;
 *   - a whole simulation against sums done by hand: expert uses per tier, the union per step at batch B,
 *     predicted time on a plan whose every term can be computed on paper;
 *   - the planner on small cases: hottest experts to the GPU then DRAM, NUMA nodes sharing the hot work,
 *     budgets too small for the non-expert weights refused with sizes in MB. */
#include "tune.h"

#include "cache.h"
#include "error.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* ---- brute-force caches: a list of (key, last use), scanned every time ---- */

struct bf_slot {
	int key;
	long last;
};

static void brute_force(int policy, unsigned slots, unsigned n_pinned, int n_keys, const double *hot,
			const uint32_t *keys, size_t n, uint8_t *hit)
{
	struct bf_slot *s = calloc(slots, sizeof *s);
	long *count = calloc((size_t)n_keys, sizeof *count);
	char *pinned = calloc((size_t)n_keys, 1);
	unsigned used = 0;
	if (policy == DSM_CACHE_PINNED)
		for (unsigned i = 0; i < n_pinned; i++) { /* the n_pinned hottest keys (hotness values are distinct) */
			int best = -1;
			for (int k = 0; k < n_keys; k++)
				if (!pinned[k] && (best < 0 || hot[k] > hot[best]))
					best = k;
			pinned[best] = 1;
		}
	for (size_t i = 0; i < n; i++) {
		int k = (int)keys[i], found = -1;
		count[k]++;
		for (unsigned j = 0; j < used; j++)
			if (s[j].key == k)
				found = (int)j;
		hit[i] = found >= 0;
		if (found < 0) {
			if (used < slots) {
				found = (int)used++;
			} else {
				for (unsigned j = 0; j < used; j++) {
					if (policy == DSM_CACHE_PINNED && pinned[s[j].key])
						continue;
					int better;
					if (found < 0)
						better = 1;
					else if (policy == TUNE_BELADY) {
						/* Furthest next use (never: furthest of all). */
						size_t a = n, b = n;
						for (size_t q = i + 1; q < n && a == n; q++)
							if ((int)keys[q] == s[j].key)
								a = q;
						for (size_t q = i + 1; q < n && b == n; q++)
							if ((int)keys[q] == s[found].key)
								b = q;
						better = a > b;
					} else if (policy == DSM_CACHE_LFU && count[s[j].key] != count[s[found].key])
						better = count[s[j].key] < count[s[found].key];
					else
						better = s[j].last < s[found].last;
					if (better)
						found = (int)j;
				}
			}
			s[found].key = k;
		}
		s[found].last = (long)i;
	}
	free(s), free(count), free(pinned);
}

static uint64_t rng_state = 88172645463325252ull;
static double rnd(void)
{
	rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
	return (double)(rng_state >> 11) / 9007199254740992.0;
}

static void test_cache_replay(void)
{
	enum { L = 3, E = 12, N = 3000 };
	uint32_t keys[N];
	uint8_t a[N], b[N];
	double hot[L * E];
	for (int k = 0; k < L * E; k++)
		hot[k] = 1.0 / (1 + k) + 1e-6 * k; /* distinct */
	for (int i = 0; i < N; i++) /* skewed: low keys more often */
		keys[i] = (uint32_t)(pow(rnd(), 2.5) * L * E);
	static const int policies[] = { DSM_CACHE_LRU, DSM_CACHE_LFU, DSM_CACHE_PINNED, TUNE_BELADY };
	static const unsigned slot_counts[] = { 1, 3, 8, 20, 40 };
	for (int pi = 0; pi < 4; pi++)
		for (int si = 0; si < 5; si++) {
			unsigned slots = slot_counts[si], pinned = slots > 1 ? slots / 2 : 0;
			int p = policies[pi];
			if (p == DSM_CACHE_PINNED && slots < 2)
				continue;
			int rc = tune_cache_replay(p, slots, pinned, L, E, hot, keys, N, a);
			CHECK(rc == 0, "replay %d: %s", p, dsm_errmsg());
			brute_force(p, slots, p == DSM_CACHE_PINNED ? pinned : 0, L * E, hot, keys, N, b);
			int diff = -1, hits = 0;
			for (int i = 0; i < N && diff < 0; i++)
				if (a[i] != b[i])
					diff = i;
			for (int i = 0; i < N; i++)
				hits += a[i];
			CHECK(diff < 0, "policy %d, %u slots: the replay and the brute force differ at use %d", p, slots, diff);
			if (si == 2)
				printf("policy %-6s %2u slots: hit rate %.3f\n",
				       p == TUNE_BELADY ? "belady" : dsm_cache_policy_name(p), slots, (double)hits / N);
		}
	/* Belady is the bound: no policy hits more. */
	for (unsigned slots = 2; slots < 30; slots += 7) {
		int h[4] = { 0 };
		for (int pi = 0; pi < 4; pi++) {
			tune_cache_replay(policies[pi], slots, slots / 2, L, E, hot, keys, N, a);
			for (int i = 0; i < N; i++)
				h[pi] += a[i];
		}
		for (int pi = 0; pi < 3; pi++)
			CHECK(h[pi] <= h[3], "%u slots: policy %d hits %d, more than Belady's %d", slots, pi, h[pi], h[3]);
	}
}

/* ---- a model, a machine and a trace small enough to sum by hand ---- */

static void small_model(struct tune_model *m, int layers, int first, int E, int K)
{
	memset(m, 0, sizeof *m);
	snprintf(m->source, sizeof m->source, "test-model");
	m->shape = (struct dsm_moe_shape){ .model_type = "test", .n_layers = layers, .first_moe = first,
		.n_experts = E, .hidden_size = 256, .moe_intermediate_size = 128, .top_k = K };
	m->expert_bytes = 1000000;   /* 1 MB */
	m->slot_bytes = 1000000;
	m->non_expert_bytes = 10000000;
	m->non_expert_read = 2000000;
	m->non_expert_read_cpu = 2000000;
}

static void small_hw(struct tune_hw *hw, int nodes)
{
	memset(hw, 0, sizeof *hw);
	snprintf(hw->source, sizeof hw->source, "test-hw");
	hw->n_nodes = nodes;
	for (int j = 0; j < nodes; j++)
		hw->node[j] = (struct tune_node){ .cores = 4, .dram_bytes = 100000000, .dram_gbs = 2,
			.dense_gbs = 1, .expert_gbs = { 1, 1, 1 } }; /* 1 GB/s: an expert takes 1 ms */
	hw->n_qd = 1, hw->qd[0] = 8, hw->nvme_gbs[0] = 0.5; /* a read takes 2 ms */
}

/* Tokens x MoE layers x K choices. */
static void make_trace(struct tune_trace *t, const struct tune_model *m, uint64_t n, const uint16_t *choices)
{
	const struct dsm_moe_shape *s = &m->shape;
	memset(t, 0, sizeof *t);
	t->info = (struct dsm_trace_info){ .n_layers = (uint32_t)s->n_layers, .first_moe = (uint32_t)s->first_moe,
		.n_experts = (uint32_t)s->n_experts, .top_k = (uint32_t)s->top_k, .n_records = n };
	t->n = n;
	t->n_moe = s->n_layers - s->first_moe;
	size_t sz = sizeof(uint16_t) * n * (size_t)t->n_moe * (size_t)s->top_k;
	t->ex = malloc(sz);
	memcpy(t->ex, choices, sz);
}

static void test_simulate_by_hand(void)
{
	struct tune_model m;
	small_model(&m, 3, 1, 4, 2); /* MoE layers 1 and 2, experts 0-3, top 2 */
	struct tune_hw hw;
	small_hw(&hw, 1);
	/* 4 tokens; layer 1 then layer 2 choices. */
	static const uint16_t ch[] = {
		0, 1, 2, 3, /* token 0 */
		0, 2, 2, 3, /* token 1 */
		1, 0, 3, 1, /* token 2 */
		0, 1, 2, 3, /* token 3 */
	};
	struct tune_trace t;
	make_trace(&t, &m, 4, ch);
	/* Experts 0 and 1 of each layer in DRAM, 2 and 3 streamed; non-expert weights in DRAM. */
	struct dsm_plan *p;
	CHECK(dsm_plan_uniform(&p, &m.shape, (struct dsm_tier){ DSM_TIER_DRAM, 0 }, (struct dsm_tier){ DSM_TIER_NVME, 0 }) == 0,
	      "plan");
	for (int l = 1; l < 3; l++)
		for (int e = 0; e < 2; e++)
			p->expert[l * 4 + e] = (struct dsm_tier){ DSM_TIER_DRAM, 0 };
	p->cache_bytes = 0; /* the engine's minimum: 2 x top_k = 4 slots, more than the 4 streamed experts */
	struct tune_sim_opts o = { .policy = DSM_CACHE_LRU, .batch = 1 };
	struct tune_sim_result r;
	CHECK(tune_simulate(&m, p, &hw, &t, &o, &r) == 0, "%s", dsm_errmsg());
	/* Uses: layer 1 picks {0,1},{0,2},{1,0},{0,1}: 7 dram, 1 streamed (2, a miss). Layer 2 picks {2,3},{2,3},
	 * {3,1},{2,3}: 1 dram, 7 streamed: misses 2 and 3 at token 0, then hits. */
	CHECK(r.uses[TUNE_T_DRAM] == 8, "dram uses %llu", (unsigned long long)r.uses[TUNE_T_DRAM]);
	CHECK(r.uses[TUNE_T_MISS] == 3, "misses %llu", (unsigned long long)r.uses[TUNE_T_MISS]);
	CHECK(r.uses[TUNE_T_HIT] == 5, "hits %llu", (unsigned long long)r.uses[TUNE_T_HIT]);
	CHECK(r.layer[2].uses[TUNE_T_MISS] == 2, "layer 2 misses %llu", (unsigned long long)r.layer[2].uses[TUNE_T_MISS]);
	/* Time: non-expert 2 MB at 1 GB/s = 2 ms per token (0.667 ms a layer); every expert use 1 ms; reads
	 * 2 ms each. Token 0: layer 1 reads nothing; layer 2 reads 2 and 3 (4 ms) behind layer 1's two experts
	 * (2 ms) and its share of the non-expert time: waits 4 - 2 - 0.667 = 1.333 ms. Token 1: layer 1 reads
	 * expert 2 (2 ms), the first MoE layer: nothing looked ahead, waits 2 ms; layer 2 hits. Tokens 2, 3: no
	 * reads. */
	double want = 4 * 2e-3 + 16 * 1e-3 + 4e-3 / 3 + 2e-3;
	CHECK(fabs(r.seconds - want) < 1e-9, "seconds %.9f, by hand %.9f", r.seconds, want);
	tune_sim_result_free(&r);

	/* Batch 2: tokens 0+1 and 2+3 form steps; each expert once per step. Layer 1 step 1: {0,1,2}; step 2:
	 * {1,0}. Layer 2 step 1: {2,3}; step 2: {3,1,2}. */
	o.batch = 2;
	CHECK(tune_simulate(&m, p, &hw, &t, &o, &r) == 0, "%s", dsm_errmsg());
	CHECK(r.steps == 2, "steps %llu", (unsigned long long)r.steps);
	uint64_t total = r.uses[TUNE_T_DRAM] + r.uses[TUNE_T_HIT] + r.uses[TUNE_T_MISS];
	CHECK(total == 10, "uses at batch 2: %llu, by hand 10", (unsigned long long)total);
	CHECK(r.uses[TUNE_T_MISS] == 3, "misses at batch 2: %llu", (unsigned long long)r.uses[TUNE_T_MISS]);
	tune_sim_result_free(&r);

	/* Belady never does worse than lru on the same plan. */
	o.batch = 1, o.policy = TUNE_BELADY;
	CHECK(tune_simulate(&m, p, &hw, &t, &o, &r) == 0, "%s", dsm_errmsg());
	CHECK(r.uses[TUNE_T_MISS] <= 3, "belady misses %llu", (unsigned long long)r.uses[TUNE_T_MISS]);
	tune_sim_result_free(&r);
	dsm_plan_free(p);
	tune_trace_free(&t);
}

static void test_planner(void)
{
	struct tune_model m;
	small_model(&m, 2, 1, 6, 1); /* one MoE layer, 6 experts, top 1 */
	/* Popularity: expert 4 > 1 > 5 > 0 > 2 > 3, from a trace of 21 tokens. */
	static const int times[6] = { 3, 5, 2, 1, 6, 4 };
	uint16_t ch[21];
	int n = 0;
	for (int e = 0; e < 6; e++)
		for (int k = 0; k < times[e]; k++)
			ch[n++] = (uint16_t)e;
	struct tune_trace t;
	make_trace(&t, &m, 21, ch);
	struct tune_hw hw;
	small_hw(&hw, 1);
	hw.n_gpus = 1;
	hw.gpu[0] = (struct tune_gpu){ .memory_bytes = 100000000, .read_gbs = 100, .h2d_gbs = 10 };
	/* VRAM: the non-expert 10 MB and one expert. DRAM: buffers (2 slots = 2 MB) and two experts. */
	struct tune_plan_opts o = { .vram_budget = 11000000, .dram_budget = 4000000, .batch = 1, .trace = &t };
	struct dsm_plan *p;
	struct tune_sim_result r;
	int rc = tune_plan(&p, &m, &hw, &o, &r);
	CHECK(rc == 0, "plan: %s", dsm_errmsg());
	if (rc == 0) {
		CHECK(p->non_expert[DSM_KIND_ATTENTION].kind == DSM_TIER_GPU, "non-expert weights not on the GPU");
		static const int want[6] = { DSM_TIER_NVME, DSM_TIER_DRAM, DSM_TIER_NVME, DSM_TIER_NVME, DSM_TIER_GPU,
					     DSM_TIER_DRAM };
		for (int e = 0; e < 6; e++)
			CHECK(dsm_plan_expert_tier(p, 1, e).kind == want[e], "expert %d on tier %d, want %d", e,
			      dsm_plan_expert_tier(p, 1, e).kind, want[e]);
		CHECK(r.tokens_per_second > 0, "no prediction");
		dsm_plan_free(p);
		tune_sim_result_free(&r);
	}

	/* Two NUMA nodes, no GPU, room for all 6 experts: the hot work is shared, not the first node filled. */
	struct tune_hw hw2;
	small_hw(&hw2, 2);
	struct tune_plan_opts o2 = { .dram_budget = 150000000, .batch = 1, .trace = &t };
	rc = tune_plan(&p, &m, &hw2, &o2, NULL);
	CHECK(rc == 0, "plan 2 nodes: %s", dsm_errmsg());
	if (rc == 0) {
		double load[2] = { 0 };
		for (int e = 0; e < 6; e++) {
			struct dsm_tier tr = dsm_plan_expert_tier(p, 1, e);
			CHECK(tr.kind == DSM_TIER_DRAM, "expert %d not in DRAM", e);
			load[tr.index] += times[e];
		}
		/* Greedy by popularity onto the less loaded node: 6,5 -> node 0,1; 4 -> 1 (5 < 6); 3 -> 0; 2 -> ... */
		CHECK(fabs(load[0] - load[1]) <= 1, "node loads %g and %g", load[0], load[1]);
		CHECK(dsm_plan_expert_tier(p, 1, 4).index != dsm_plan_expert_tier(p, 1, 1).index,
		      "the two hottest experts share a node");
		dsm_plan_free(p);
	}

	/* Two GPUs and two MoE layers: each GPU holds the hottest experts of its layer (layer 1 on gpu:0, layer 2 on
	 * gpu:1), two each; the simulation reads them at both GPUs' rates. */
	struct tune_model m2;
	small_model(&m2, 3, 1, 6, 1);
	uint16_t ch2[2 * 21];
	for (int i = 0; i < 21; i++)
		ch2[2 * i] = ch2[2 * i + 1] = ch[i];
	struct tune_trace t2;
	make_trace(&t2, &m2, 21, ch2);
	hw.n_gpus = 2;
	hw.gpu[1] = hw.gpu[0];
	struct tune_plan_opts o4 = { .vram_budget = 2000000, .dram_budget = 20000000, .batch = 1, .trace = &t2 };
	rc = tune_plan(&p, &m2, &hw, &o4, &r);
	CHECK(rc == 0, "plan 2 gpus: %s", dsm_errmsg());
	if (rc == 0) {
		for (int l = 1; l <= 2; l++)
			for (int e = 0; e < 6; e++) {
				struct dsm_tier tr = dsm_plan_expert_tier(p, l, e);
				int hot = e == 4 || e == 1;
				CHECK(hot ? tr.kind == DSM_TIER_GPU && tr.index == l - 1 : tr.kind != DSM_TIER_GPU,
				      "2 gpus: layer %d expert %d on tier %d:%d", l, e, tr.kind, tr.index);
			}
		CHECK(r.tokens_per_second > 0 && r.uses[TUNE_T_GPU] > 0, "2 gpus: no prediction");
		dsm_plan_free(p);
		tune_sim_result_free(&r);
	}
	hw.n_gpus = 1;
	/* A plan naming a GPU the hardware lacks is refused by the simulation. */
	struct dsm_plan *bad;
	CHECK(dsm_plan_uniform(&bad, &m2.shape, (struct dsm_tier){ DSM_TIER_DRAM, 0 }, (struct dsm_tier){ DSM_TIER_GPU, 1 }) == 0,
	      "uniform plan");
	struct tune_sim_opts so = { .policy = -1, .batch = 1 };
	rc = tune_simulate(&m2, bad, &hw, &t2, &so, &r);
	CHECK(rc == DSM_EARG && strstr(dsm_errmsg(), "on gpu:1 but test-hw describes 1 GPU"), "gpu:1 on one GPU: %d %s", rc,
	      dsm_errmsg());
	dsm_plan_free(bad);
	tune_trace_free(&t2);

	/* A budget too small for the non-expert weights: refused, sizes in MB. */
	struct tune_plan_opts o3 = { .dram_budget = 5000000, .batch = 1, .trace = &t };
	rc = tune_plan(&p, &m, &hw2, &o3, NULL);
	CHECK(rc == DSM_EPLAN, "a tiny budget gave %d", rc);
	CHECK(strstr(dsm_errmsg(), "10.00 MB") && strstr(dsm_errmsg(), "5.00 MB"), "message: %s", dsm_errmsg());
	printf("too small: %s\n", dsm_errmsg());
	tune_trace_free(&t);
}

int main(void)
{
	test_cache_replay();
	test_simulate_by_hand();
	test_planner();
	return TEST_EXIT();
}
