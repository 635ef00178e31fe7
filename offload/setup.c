/* Setting up the tiered store from command-line choices (plan file or budgets, hotness from a trace or
 * the router bias), and the text of the end-of-run report. */
#include "dispatch.h"

#include "error.h"
#include "memory_limit.h"
#include "trace.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Hotness of every expert: counts of a routing trace, else the router bias (a larger bias is chosen more
 * often). hot is [n_layers * n_experts]. */
static int expert_hotness(const struct dsm_store_model *m, const char *trace, double *hot)
{
	const struct dsm_moe_shape *c = &m->shape;
	size_t n = (size_t)c->n_layers * (size_t)c->n_experts;
	if (trace) {
		struct dsm_trace_info in;
		uint64_t *counts;
		int rc = dsm_trace_counts(trace, &in, &counts);
		if (rc < 0)
			return rc;
		if (in.n_layers != (uint32_t)c->n_layers || in.n_experts != (uint32_t)c->n_experts) {
			free(counts);
			return dsm_fail(DSM_EARG, "%s: the routing trace is for a model with %u layers and %u experts, the "
					"checkpoint has %d and %d", trace, in.n_layers, in.n_experts, c->n_layers, c->n_experts);
		}
		for (size_t i = 0; i < n; i++)
			hot[i] = (double)counts[i];
		free(counts);
		return 0;
	}
	for (size_t i = 0; m->router_bias && i < n; i++)
		hot[i] = m->router_bias[i];
	return 0;
}

/* The VRAM budget as dsm_plan_from_budgets counts it (FP8 weights only): on the device each expert also takes
 * its block scales and the slab's rounding of each tensor to 256 bytes, and one expert's activations (in and
 * out, at least the 64 rows of the upload measurement) and the staging slot of a DRAM expert are there too. */
static uint64_t plan_vram(const struct dsm_store_model *m, const struct dsm_plan_sizes *sz, uint64_t vram,
			  int64_t max_tokens)
{
	const struct dsm_moe_shape *c = &m->shape;
	if (!vram || c->first_moe >= c->n_layers || c->n_experts <= 0 || !sz->expert_bytes)
		return vram;
	const struct dsm_store_expert *e = dsm_store_expert(m, c->first_moe, 0);
	uint64_t dev = 0;
	for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
		dev += (e->w[j].nbytes + 255) / 256 * 256 + (e->scale[j].nbytes + 255) / 256 * 256;
	uint64_t rows = (uint64_t)(max_tokens > 64 ? max_tokens : 64);
	uint64_t act = 2 * ((rows * (uint64_t)c->hidden_size * sizeof(float) + 63) / 64 * 64) + dev;
	if (vram <= act)
		return 0;
	vram -= act;
	/* Scaled by expert_bytes / dev, computed without overflow. */
	return vram / dev * sz->expert_bytes + vram % dev * sz->expert_bytes / dev;
}

/* A plan that names gpu:N experts needs a gpu backend: without one they would silently run on the cpu. */
static int check_gpu_tier(const struct dsm_plan *p, const char *what, const struct dsm_backend *gpu)
{
	uint64_t n[DSM_TIER_KINDS];
	dsm_plan_count(p, n);
	if (gpu || !n[DSM_TIER_GPU])
		return 0;
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int x = 0; x < p->n_experts; x++) {
			struct dsm_tier t = dsm_plan_expert_tier(p, l, x);
			if (t.kind == DSM_TIER_GPU)
				return dsm_fail(DSM_EPLAN, "%s: the plan puts %llu experts on a GPU (layer %d expert %d on gpu:%d "
						"first) but no GPU backend is in use (--gpu-backend emu, or cuda where built)", what,
						(unsigned long long)n[DSM_TIER_GPU], l, x, t.index);
		}
	return 0;
}

int dsm_offload_setup(struct dsm_offload **out, struct dsm_plan **plan_out, const struct dsm_store_model *m,
		      const struct dsm_offload_setup *s)
{
	*out = NULL;
	*plan_out = NULL;
	const struct dsm_moe_shape *c = &m->shape;
	struct dsm_plan *p = NULL;
	size_t n_keys = (size_t)c->n_layers * (size_t)c->n_experts;
	double *hot = calloc(n_keys ? n_keys : 1, sizeof *hot);
	int rc;
	if (!hot)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	if ((rc = expert_hotness(m, s->hotness_trace, hot)) < 0)
		goto out;
	struct dsm_plan_sizes sz;
	dsm_plan_sizes(m, &sz);
	uint64_t min_cache = 2ull * (uint64_t)(c->top_k > 0 ? c->top_k : 1) * (sz.expert_bytes + 65536);
	if (s->plan_path) {
		if ((rc = dsm_plan_load(&p, s->plan_path, c)) < 0 || (rc = check_gpu_tier(p, s->plan_path, s->gpu[0])) < 0)
			goto out;
	} else {
		uint64_t dram = s->dram_budget;
		if (!dram)
			dram = dsm_usable_memory();
		int n_gpus = 0;
		while (n_gpus < DSM_MAX_GPUS && s->gpu[n_gpus])
			n_gpus++;
		struct dsm_plan_budget b = { .vram_bytes = n_gpus ? plan_vram(m, &sz, s->vram_budget, s->max_tokens) : 0,
			.n_gpus = n_gpus,
			.dram_bytes = dram,
			.dram_reserve = s->cache_bytes ? s->cache_bytes : min_cache, .forward_placed = s->forward_on_gpu };
		if (s->stream_all)
			b.dram_bytes = b.dram_bytes < sz.non_expert_total + b.dram_reserve ? b.dram_bytes
											  : sz.non_expert_total + b.dram_reserve;
		if ((rc = dsm_plan_from_budgets(&p, c, &sz, &b, hot)) < 0)
			goto out;
		if (s->stream_all)
			for (size_t i = 0; i < n_keys; i++)
				p->expert[i] = (struct dsm_tier){ DSM_TIER_NVME, 0 };
	}
	struct dsm_offload_opts oo = {
		.plan = p, .cpu = s->cpu,
		.policy = s->cache_policy >= 0 ? s->cache_policy : p->cache_policy >= 0 ? p->cache_policy : DSM_CACHE_LRU,
		.cache_bytes = s->cache_bytes ? s->cache_bytes : p->cache_bytes,
		.cache_off = s->cache_off, .hotness = hot, .stream = s->stream, .topo = s->topo,
		.gpu_upload_tokens = s->gpu_upload_tokens,
	};
	memcpy(oo.gpu, s->gpu, sizeof oo.gpu);
	if ((rc = dsm_offload_open(out, m, &oo)) < 0)
		goto out;
	if (oo.policy == DSM_CACHE_PINNED && !oo.cache_off && (rc = dsm_offload_warm(*out)) < 0) {
		dsm_offload_close(*out);
		*out = NULL;
		goto out;
	}
	*plan_out = p;
	p = NULL;
out:
	dsm_plan_free(p);
	free(hot);
	return rc;
}


void dsm_offload_report_text(const struct dsm_offload_report *r, char *buf, size_t size)
{
	char upload[48] = "never", by_gpu[DSM_MAX_GPUS * 24 + 16] = "";
	for (int i = 0; r->n_gpus > 1 && i < r->n_gpus; i++)
		snprintf(by_gpu + strlen(by_gpu), sizeof by_gpu - strlen(by_gpu), "%sgpu:%d %llu", i ? ", " : "; experts on ",
			 i, (unsigned long long)r->gpu_experts[i]);
	if (r->upload_min_tokens > 0)
		snprintf(upload, sizeof upload, "from %lld tokens", (long long)r->upload_min_tokens);
	snprintf(buf, size,
		 "offload: experts gpu %llu, dram %llu, nvme %llu, mapped %llu; NVMe %.1f MB/token at %.2f GB/s; "
		 "cache %s %llu slots, hit rate %.1f%%; prefetch hit rate %.1f%%; time: attention and the rest %.3f s, "
		 "cpu experts %.3f s, gpu experts %.3f s, waiting on I/O %.3f s; per token: gpu busy %.2f ms, cpu busy "
		 "%.2f ms, I/O wait %.2f ms, overlap %.2f ms; shared expert runs: gpu %llu, cpu %llu; DRAM experts to the "
		 "gpu: %s, %llu runs%s",
		 (unsigned long long)r->experts[DSM_TIER_GPU], (unsigned long long)r->experts[DSM_TIER_DRAM],
		 (unsigned long long)r->experts[DSM_TIER_NVME], (unsigned long long)r->experts[DSM_TIER_MAPPED],
		 r->nvme_bytes_per_token / 1e6, r->read_gbs,
		 r->cache_policy, (unsigned long long)r->cache_slots, 100 * r->cache_hit_rate,
		 100 * r->prefetch_hit_rate, r->attention_seconds, r->cpu_expert_seconds, r->gpu_expert_seconds,
		 r->io_wait_seconds, 1e3 * r->gpu_busy_per_token, 1e3 * r->cpu_busy_per_token, 1e3 * r->io_wait_per_token,
		 1e3 * r->overlap_per_token, (unsigned long long)r->shared_runs_gpu, (unsigned long long)r->shared_runs_cpu,
		 upload, (unsigned long long)r->uploaded_runs, by_gpu);
}
