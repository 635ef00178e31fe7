/* dsm-tune simulate: replays a routing trace against a placement plan and an expert cache policy, and
 * predicts decode tokens/s from a hardware file by the model of docs/tune.md ("The model"):
 *
 *   A step decodes B tokens (B consecutive trace records). For each MoE layer the step computes the union of
 *   the experts its tokens chose, each expert once for all its tokens:
 *     gpu:0 experts        bytes / GPU memory bandwidth, on the GPU, in parallel with the CPU path;
 *     dram:N experts       bytes / the CPU expert kernel's rate at that many tokens, on node N's cores;
 *     nvme experts         a cache lookup (the engine's policy, or Belady's optimal); a hit is computed like
 *                          a dram:0 expert, a miss is read (slot bytes / NVMe rate) and then computed;
 *   The reads of a layer were issued by the engine's look-ahead during the previous layer, so they wait
 *   only for what the previous layer's expert compute and this layer's attention do not cover (the first
 *   MoE layer of a step waits for all of its reads):
 *     layer = non-expert share + max(GPU experts, max over nodes of CPU experts + I/O wait) + overhead.
 *   The non-expert weights (attention, dense layers, shared experts, head; FP8 as stored on a GPU, BF16 as
 *   the cpu backend holds them)
 *   are read once per step at the rate of their tier (GPU memory bandwidth, or the cpu backend's BF16 matmul
 *   on node 0: dense_gbs), spread
 *   evenly over the layers.
 *
 * The cache decisions come first, over the whole trace (Belady needs the future): the sequence of streamed
 * expert uses is built, replayed through offload/cache.c (lru, lfu, pinned: the engine's own code) or
 * through Belady's rule, and then the times are summed with each use's hit or miss. */
#include "tune.h"

#include "cache.h"
#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Cache decisions ---- */

struct heap_item {
	uint32_t next;            /* index of the key's next use (UINT32_MAX: never) */
	uint32_t key;
};

static void heap_push(struct heap_item *h, size_t *n, struct heap_item it)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t p = (i - 1) / 2;
		if (h[p].next >= it.next)
			break;
		h[i] = h[p];
		i = p;
	}
	h[i] = it;
}

static struct heap_item heap_pop(struct heap_item *h, size_t *n)
{
	struct heap_item top = h[0], last = h[--*n];
	size_t i = 0;
	for (;;) {
		size_t c = 2 * i + 1;
		if (c >= *n)
			break;
		if (c + 1 < *n && h[c + 1].next > h[c].next)
			c++;
		if (h[c].next <= last.next)
			break;
		h[i] = h[c];
		i = c;
	}
	if (*n)
		h[i] = last;
	return top;
}

/* Belady's MIN: on a miss with a full cache, evict the key used furthest in the future. A max-heap of
 * (next use, key) with stale entries skipped when popped. */
static int belady(unsigned slots, size_t n_keys, const uint32_t *keys, size_t n, uint8_t *hit)
{
	uint32_t *next = malloc(sizeof(uint32_t) * (n ? n : 1));
	uint32_t *last = malloc(sizeof(uint32_t) * n_keys);
	uint32_t *cur = malloc(sizeof(uint32_t) * n_keys);  /* next use of a cached key; UINT32_MAX - 1: absent */
	struct heap_item *h = malloc(sizeof *h * (n + 1));
	if (!next || !last || !cur || !h) {
		free(next), free(last), free(cur), free(h);
		return dsm_fail(DSM_ENOMEM, "out of memory for the Belady replay (%zu uses)", n);
	}
	for (size_t k = 0; k < n_keys; k++)
		last[k] = UINT32_MAX, cur[k] = UINT32_MAX - 1;
	for (size_t i = n; i-- > 0;) {
		next[i] = last[keys[i]];
		last[keys[i]] = (uint32_t)i;
	}
	size_t hn = 0, cached = 0;
	for (size_t i = 0; i < n; i++) {
		uint32_t k = keys[i];
		hit[i] = cur[k] != UINT32_MAX - 1;
		if (!hit[i]) {
			if (cached == slots) {
				for (;;) {
					struct heap_item v = heap_pop(h, &hn);
					if (cur[v.key] == v.next) {
						cur[v.key] = UINT32_MAX - 1;
						break;
					}
				}
			} else {
				cached++;
			}
		}
		cur[k] = next[i];
		heap_push(h, &hn, (struct heap_item){ next[i], k });
		/* Stale entries pile up; rebuild the heap from the cached keys when it gets large. */
		if (hn > 4 * (size_t)slots + 1024) {
			hn = 0;
			for (size_t q = 0; q < n_keys; q++)
				if (cur[q] != UINT32_MAX - 1)
					heap_push(h, &hn, (struct heap_item){ cur[q], (uint32_t)q });
		}
	}
	free(next), free(last), free(cur), free(h);
	return 0;
}

int tune_cache_replay(int policy, unsigned slots, unsigned n_pinned, int n_layers, int n_experts,
		      const double *hotness, const uint32_t *keys, size_t n, uint8_t *hit)
{
	if (slots < 1)
		return dsm_fail(DSM_EARG, "a cache needs at least one slot");
	if (n >= UINT32_MAX - 1)
		return dsm_fail(DSM_EARG, "%zu streamed expert uses are more than the replay counts", n);
	if (policy == TUNE_BELADY)
		return belady(slots, (size_t)n_layers * (size_t)n_experts, keys, n, hit);
	struct dsm_cache *c;
	struct dsm_cache_opts co = { .policy = policy, .n_slots = slots, .n_pinned = n_pinned, .keep = 1 };
	int rc = dsm_cache_new(&c, n_layers, n_experts, &co);
	if (rc < 0)
		return rc;
	if (policy == DSM_CACHE_PINNED && hotness && (rc = dsm_cache_set_hotness(c, hotness)) < 0)
		goto out;
	for (size_t i = 0; i < n; i++) {
		int slot, l = (int)(keys[i] / (uint32_t)n_experts), e = (int)(keys[i] % (uint32_t)n_experts);
		rc = dsm_cache_acquire(c, l, e, 0, &slot);
		if (rc < 0 || rc == DSM_CACHE_FULL || rc == DSM_CACHE_PENDING) {
			rc = dsm_fail(DSM_EARG, "cache replay: unexpected answer %d at use %zu", rc, i);
			goto out;
		}
		hit[i] = rc == DSM_CACHE_HIT;
		if (rc == DSM_CACHE_MISS)
			dsm_cache_loaded(c, slot, 1);
		dsm_cache_release(c, slot);
	}
	rc = 0;
out:
	dsm_cache_free(c);
	return rc;
}

/* ---- The whole replay ---- */

/* The union of the experts chosen in layer l by tokens [t0, t1): experts u[0 .. n), tokens of each in cnt. */
static int step_union(const struct tune_trace *t, int l, uint64_t t0, uint64_t t1, uint32_t *mark, uint32_t stamp,
		      int *u, int *cnt)
{
	int n = 0, K = (int)t->info.top_k;
	for (uint64_t i = t0; i < t1; i++) {
		const uint16_t *x = t->ex + (i * (uint64_t)t->n_moe + (uint64_t)(l - (int)t->info.first_moe)) * (uint64_t)K;
		for (int k = 0; k < K; k++) {
			if (x[k] == 0xFFFF)
				continue;
			if (mark[x[k]] != stamp) {
				mark[x[k]] = stamp;
				cnt[x[k]] = 0;
				u[n++] = x[k];
			}
			cnt[x[k]]++;
		}
	}
	return n;
}

void tune_sim_result_free(struct tune_sim_result *r)
{
	free(r->layer);
	r->layer = NULL;
}

int tune_simulate(const struct tune_model *m, const struct dsm_plan *p, const struct tune_hw *hw,
		  const struct tune_trace *t, const struct tune_sim_opts *o, struct tune_sim_result *r)
{
	memset(r, 0, sizeof *r);
	const struct dsm_moe_shape *s = &m->shape;
	int L = s->n_layers, E = s->n_experts, B = o->batch > 0 ? o->batch : 1;
	if ((int)t->info.n_layers != L || (int)t->info.first_moe != s->first_moe || (int)t->info.n_experts != E)
		return dsm_fail(DSM_EARG, "the trace's shape (%u layers from %u, %u experts) is not the model's "
				"(%d layers from %d, %d experts)", t->info.n_layers, t->info.first_moe, t->info.n_experts, L,
				s->first_moe, E);
	uint64_t tokens = o->max_tokens && o->max_tokens < t->n ? o->max_tokens : t->n;
	uint64_t steps = (tokens + (uint64_t)B - 1) / (uint64_t)B;
	int gpu_used = 0;
	for (int l = s->first_moe; l < L; l++)
		for (int e = 0; e < E; e++) {
			struct dsm_tier tier = dsm_plan_expert_tier(p, l, e);
			gpu_used |= tier.kind == DSM_TIER_GPU;
			if (tier.kind == DSM_TIER_GPU && hw->n_gpus && tier.index >= hw->n_gpus)
				return dsm_fail(DSM_EARG, "the plan puts layer %d expert %d on gpu:%d but %s describes %d GPU%s", l,
						e, tier.index, hw->source, hw->n_gpus, hw->n_gpus == 1 ? "" : "s");
		}
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		gpu_used |= k != DSM_KIND_ROUTED && k != DSM_KIND_MTP && p->non_expert[k].kind == DSM_TIER_GPU;
	if (gpu_used && hw->n_gpus == 0)
		return dsm_fail(DSM_EARG, "the plan puts weights on gpu:0 but %s describes no GPU", hw->source);
	if (hw->n_qd == 0)
		for (int l = s->first_moe; l < L; l++)
			for (int e = 0; e < E; e++)
				if (dsm_plan_expert_tier(p, l, e).kind == DSM_TIER_NVME)
					return dsm_fail(DSM_EARG, "the plan streams experts from nvme but %s gives no nvme.read_gbs",
							hw->source);

	/* The cache as the engine sizes it (offload/dispatch.c). */
	uint64_t n_nvme = 0;
	for (int l = s->first_moe; l < L; l++)
		for (int e = 0; e < E; e++)
			n_nvme += dsm_plan_expert_tier(p, l, e).kind == DSM_TIER_NVME;
	int policy = o->policy >= 0 ? o->policy : p->cache_policy >= 0 ? p->cache_policy : DSM_CACHE_LRU;
	uint64_t cache_bytes = o->cache_bytes ? o->cache_bytes : p->cache_bytes;
	uint64_t min_slots = 2u * (uint64_t)s->top_k, slots = cache_bytes / m->slot_bytes;
	if (!cache_bytes)
		slots = min_slots;
	slots = slots < min_slots ? min_slots : slots;
	slots = slots > n_nvme + min_slots ? n_nvme + min_slots : slots;
	unsigned n_pinned = slots > 2 * min_slots ? (unsigned)(slots - min_slots) : (unsigned)(slots / 2);
	r->slots = slots;
	r->policy = policy;

	uint32_t *mark = calloc((size_t)E, sizeof(uint32_t));
	int *u = malloc(sizeof(int) * (size_t)E), *cnt = malloc(sizeof(int) * (size_t)E);
	r->layer = calloc((size_t)L, sizeof *r->layer);
	size_t cap = 1 << 16, n_keys = 0;
	uint32_t *keys = malloc(sizeof(uint32_t) * cap);
	uint8_t *hit = NULL;
	double *pop = NULL;
	int rc = DSM_ENOMEM;
	if (!mark || !u || !cnt || !r->layer || !keys)
		goto nomem;
	/* Pass 1: the sequence of streamed expert uses. */
	uint32_t stamp = 0;
	for (uint64_t st = 0; st < steps; st++) {
		uint64_t t0 = st * (uint64_t)B, t1 = t0 + (uint64_t)B > tokens ? tokens : t0 + (uint64_t)B;
		for (int l = s->first_moe; l < L; l++) {
			int n = step_union(t, l, t0, t1, mark, ++stamp, u, cnt);
			for (int i = 0; i < n; i++) {
				if (dsm_plan_expert_tier(p, l, u[i]).kind != DSM_TIER_NVME)
					continue;
				if (n_keys == cap) {
					uint32_t *k2 = realloc(keys, sizeof(uint32_t) * (cap *= 2));
					if (!k2)
						goto nomem;
					keys = k2;
				}
				keys[n_keys++] = (uint32_t)l * (uint32_t)E + (uint32_t)u[i];
			}
		}
	}
	if (!(hit = malloc(n_keys ? n_keys : 1)))
		goto nomem;
	const double *hot = o->hotness;
	if (policy == DSM_CACHE_PINNED && !hot && !(hot = pop = tune_trace_popularity(t)))
		goto nomem;
	if (n_keys && (rc = tune_cache_replay(policy, (unsigned)slots, n_pinned, L, E, hot, keys, n_keys, hit)) < 0)
		goto out;

	/* Pass 2: the times. */
	int ne_gpu = p->non_expert[DSM_KIND_ATTENTION].kind == DSM_TIER_GPU;
	double ne_rate = ne_gpu ? hw->gpu[0].read_gbs : hw->node[0].dense_gbs;
	double ne_bytes = (double)(ne_gpu ? m->non_expert_read : m->non_expert_read_cpu);
	double ne_step = ne_bytes / (ne_rate * 1e9);
	double ne_layer = ne_step / L;
	double nvme = tune_nvme_gbs(hw) * 1e9, gpu_bw = hw->n_gpus ? hw->gpu[0].read_gbs * 1e9 : 1;
	double gpu_dev[TUNE_MAX_GPUS], gpus_bw = 0; /* the GPUs' bandwidth together, for the bound */
	for (int i = 0; i < hw->n_gpus; i++)
		gpus_bw += hw->gpu[i].read_gbs * 1e9;
	gpus_bw = gpus_bw > 0 ? gpus_bw : 1;
	double dram_bw = 0;
	for (int j = 0; j < hw->n_nodes; j++)
		dram_bw += hw->node[j].dram_gbs * 1e9;
	double eb = (double)m->expert_bytes, bound_seconds = 0;
	double cpu_node[TUNE_MAX_NODES];
	size_t ki = 0;
	for (uint64_t st = 0; st < steps; st++) {
		uint64_t t0 = st * (uint64_t)B, t1 = t0 + (uint64_t)B > tokens ? tokens : t0 + (uint64_t)B;
		double prev_cpu = 0, step_gpu = 0, step_dram = 0, step_nvme = 0;
		r->non_expert_seconds += ne_step;
		bound_seconds += ne_bytes / (ne_gpu ? gpu_bw : dram_bw);
		for (int l = s->first_moe; l < L; l++) {
			struct tune_sim_layer *ly = &r->layer[l];
			int n = step_union(t, l, t0, t1, mark, ++stamp, u, cnt);
			double gpu_t = 0, io_t = 0, b_gpu = 0, b_dram = 0, b_nvme = 0;
			memset(cpu_node, 0, sizeof(double) * (size_t)hw->n_nodes);
			memset(gpu_dev, 0, sizeof gpu_dev);
			for (int i = 0; i < n; i++) {
				struct dsm_tier tier = dsm_plan_expert_tier(p, l, u[i]);
				int j = tier.kind == DSM_TIER_DRAM && tier.index < hw->n_nodes ? tier.index : 0;
				double cpu = eb / (tune_cpu_rate(hw, j, cnt[u[i]]) * 1e9);
				if (tier.kind == DSM_TIER_GPU) {
					/* each GPU reads its own experts; the GPUs work at once */
					gpu_dev[tier.index] += eb / (hw->gpu[tier.index].read_gbs * 1e9);
					gpu_t = gpu_dev[tier.index] > gpu_t ? gpu_dev[tier.index] : gpu_t;
					b_gpu += eb;
					ly->uses[TUNE_T_GPU]++;
				} else if (tier.kind != DSM_TIER_NVME) {
					cpu_node[j] += cpu;
					b_dram += eb;
					ly->uses[TUNE_T_DRAM]++;
				} else if (hit[ki++]) {
					cpu_node[0] += cpu;
					b_dram += eb;
					ly->uses[TUNE_T_HIT]++;
				} else {
					cpu_node[0] += cpu;
					io_t += (double)m->slot_bytes / nvme;
					b_nvme += (double)m->slot_bytes;
					ly->uses[TUNE_T_MISS]++;
				}
			}
			double cpu_t = 0;
			for (int j = 0; j < hw->n_nodes; j++)
				cpu_t = cpu_node[j] > cpu_t ? cpu_node[j] : cpu_t;
			/* The first MoE layer's reads start at its own routing: nothing was looked ahead for it. */
			double wait = l == s->first_moe ? io_t : io_t - prev_cpu - ne_layer;
			wait = wait > 0 ? wait : 0;
			double cpu_path = cpu_t + wait, layer = (gpu_t > cpu_path ? gpu_t : cpu_path) + hw->step_overhead_s;
			ly->seconds += layer;
			ly->io_wait += wait;
			r->expert_seconds += layer - hw->step_overhead_s - wait;
			r->io_wait_seconds += wait;
			r->overhead_seconds += hw->step_overhead_s;
			prev_cpu = cpu_t;
			step_gpu += b_gpu / gpus_bw, step_dram += b_dram / dram_bw, step_nvme += nvme > 0 ? b_nvme / nvme : 0;
		}
		/* The tiers overlapped over the whole step. */
		bound_seconds += step_gpu > step_dram ? (step_gpu > step_nvme ? step_gpu : step_nvme)
						      : (step_dram > step_nvme ? step_dram : step_nvme);
	}
	r->tokens = tokens;
	r->steps = steps;
	for (int l = 0; l < L; l++)
		for (int k = 0; k < TUNE_T_N; k++)
			r->uses[k] += r->layer[l].uses[k];
	for (int k = 0; k < TUNE_T_N; k++)
		r->bytes_per_token[k] = (double)r->uses[k] * (k == TUNE_T_MISS ? (double)m->slot_bytes : eb) / (double)tokens;
	r->seconds = r->non_expert_seconds + r->expert_seconds + r->io_wait_seconds + r->overhead_seconds;
	r->tokens_per_second = r->seconds > 0 ? (double)tokens / r->seconds : 0;
	r->bound_tokens_per_second = bound_seconds > 0 ? (double)tokens / bound_seconds : 0;
	uint64_t streamed = r->uses[TUNE_T_HIT] + r->uses[TUNE_T_MISS];
	r->hit_rate = streamed ? (double)r->uses[TUNE_T_HIT] / (double)streamed : 0;
	rc = 0;
	goto out;
nomem:
	rc = dsm_fail(DSM_ENOMEM, "out of memory for the simulation");
out:
	free(mark), free(u), free(cnt), free(keys), free(hit), free(pop);
	if (rc < 0)
		tune_sim_result_free(r);
	return rc;
}
