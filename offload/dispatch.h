/* The store of routed experts and the dispatch of one MoE layer across its tiers (docs/offload.md). Every
 * routed expert the model computes comes through here.
 *
 * The store knows the model through a struct dsm_store_model (offload/store_model.h) that the caller fills
 * in. Opened without a plan, every expert is on the mapped tier: computed by the cpu backend where the
 * caller mapped the shard files (the `mapped` address of each tensor), nothing read, nothing copied. With a
 * placement plan: every expert's block scales are read into DRAM (they always stay resident); DRAM-tier
 * experts are read (with the streamer, O_DIRECT) into a resident pool; GPU-tier experts are uploaded to the
 * gpu backend's memory (or, without a gpu backend, kept in DRAM and computed by the cpu backend); nvme-tier
 * experts stay in the shard files and are streamed on demand into the slots of the expert cache.
 *
 * One MoE step (dsm_offload_moe): when every chosen expert is in host memory (mapped or dram), the whole
 * step is one call of the cpu backend's moe op. Otherwise tokens are grouped by expert (expert-major, each
 * expert runs once on all its tokens); the GPU's part (its experts, the shared expert where the plan puts it
 * there, DRAM experts with enough tokens to pay for their copy) goes to the gpu backend's queue first and runs
 * beside the CPU's; every cache miss is submitted to the streamer at once; experts already resident are
 * computed while the reads are in flight, and each streamed expert as soon as its bytes land. Outputs are
 * combined after all experts ran, in ascending expert order and token order within an expert, then the shared
 * expert's is added: the same additions in the same order as the moe op and as a plain loop over experts, so
 * the result is bit-identical for every plan, cache policy and completion order.
 *
 * Look-ahead (dsm_offload_prefetch): experts predicted for the next layer are read one layer early; a
 * later use of one counts as a prefetch hit.
 *
 * A dsm_offload belongs to one thread. */
#ifndef DSM_DISPATCH_H
#define DSM_DISPATCH_H

#include "backend.h"
#include "cache.h"
#include "memory_limit.h"
#include "plan.h"
#include "store_model.h"
#include "stream.h"

#include <stdint.h>

struct dsm_offload_opts {
	const struct dsm_plan *plan;      /* validated against the model; NULL: every expert mapped */
	struct dsm_backend *cpu;          /* computes mapped, dram and streamed experts (host pointers); required */
	struct dsm_backend *gpu[DSM_MAX_GPUS]; /* gpu[N] computes the gpu:N experts, from gpu[0] on without gaps
					   * (none: the cpu does, from DRAM copies); gpu[0] also the shared experts and
					   * the DRAM experts a batch makes worth copying */
	enum dsm_cache_policy policy;
	uint64_t cache_bytes;             /* DRAM for streamed experts; 0: the minimum, 2 x top_k slots */
	int cache_off;                    /* every use of a streamed expert reads it again */
	const double *hotness;            /* pinned policy: [n_layers * n_experts], NULL: observed counts */
	struct dsm_stream_opts stream;
	unsigned pool_flags;              /* dsm_pool_flags of both pools */
	struct dsm_topo *topo;            /* NUMA nodes of the dram:N tiers (offload/topo.h); NULL: this machine's */
	/* With a gpu backend, a DRAM expert with at least this many tokens in one step is copied to the GPU and
	 * computed there: 0: the threshold measured at open (docs/offload.md), < 0: never. */
	int64_t gpu_upload_tokens;
	uint64_t staging_bytes;           /* DRAM staging the GPU tier's upload, a batch at a time; 0: 1 GiB */
};

struct dsm_moe_step {
	int layer;
	int64_t n_tokens;                 /* T */
	int top_k;                        /* k */
	const int32_t *idx;               /* [T, k] chosen experts */
	const float *weight;              /* [T, k] their weights */
	const float *x;                   /* [T, dim] input of the experts (normalized hidden state) */
	float *y;                         /* [T, dim] out: sum over k of weight * expert(x) */
};

struct dsm_offload_stats {
	uint64_t steps;                   /* MoE layer steps */
	uint64_t expert_runs[DSM_TIER_KINDS]; /* expert computations by tier kind (enum dsm_tier_kind) */
	uint64_t shared_runs_gpu, shared_runs_cpu; /* shared expert computations on the GPU and the CPU */
	uint64_t uploaded_runs;           /* DRAM experts copied to the GPU for a step's many tokens */
	uint64_t bytes_read;              /* expert bytes streamed (wanted bytes) */
	uint64_t bytes_read_device;       /* bytes the reads returned (with alignment padding) */
	double read_busy_seconds;         /* time with a read in flight */
	double io_wait_seconds;           /* time a step spent blocked waiting for expert bytes */
	double cpu_expert_seconds;        /* CPU computing experts */
	double gpu_expert_seconds;        /* GPU busy with experts (its queue's events; overlaps the CPU's time) */
	double gpu_wait_seconds;          /* steps blocked waiting for the GPU after their CPU part */
	double overlap_seconds;           /* GPU busy while the step's CPU part ran (computing or waiting on I/O) */
	struct dsm_cache_layer_stats cache; /* summed over layers */
	uint64_t resident_bytes[DSM_TIER_KINDS]; /* bytes of experts held per tier kind (nvme: the cache slots;
						  * mapped: none, the page cache holds them) */
};

struct dsm_offload;
struct dsm_topo;

/* Builds the store of model m's routed experts under plan o->plan (NULL: all mapped). m, o->topo and the
 * backends must outlive the store; the plan is not kept. The DRAM-tier experts of each dram:N are read into
 * one allocation bound to NUMA node N of o->topo. Returns 0 or a negative DSM_E* code: DSM_EPLAN (plan for
 * another model, a dram:N node the topology does not have, a gpu:N other than gpu:0 with a gpu backend),
 * DSM_EARG (a mapped expert whose tensor has no address), DSM_EIO / DSM_ETRUNCATED (reading experts, with
 * file, tensor and offset), DSM_ENOMEM. Warnings (pinning, O_DIRECT refused, ...) are in
 * dsm_offload_warnings. */
int dsm_offload_open(struct dsm_offload **out, const struct dsm_store_model *m, const struct dsm_offload_opts *o);
/* Waits for reads in flight and frees everything. Accepts NULL. */
void dsm_offload_close(struct dsm_offload *o);
const char *dsm_offload_warnings(const struct dsm_offload *o);

/* One MoE layer step (see above). Returns 0 or a negative code with a message. */
int dsm_offload_moe(struct dsm_offload *o, const struct dsm_moe_step *s);

/* Starts reads of the streamed experts among experts[0 .. n) of `layer` not already cached. Returns 0 or
 * a negative code (the ring failed); a prefetch that cannot get a slot is skipped. */
int dsm_offload_prefetch(struct dsm_offload *o, int layer, int n, const int32_t *experts);

/* Look-ahead: the router of MoE layer `layer` (gate [n_experts, dim] and its bias [n_experts], both kept
 * by the caller). With the router of layer L + 1 set, a step of layer L with at most lookahead_tokens
 * tokens (default 1: decode) applies it to its input and prefetches the experts it picks, right after its
 * own reads are submitted. Returns 0 or DSM_EARG. */
int dsm_offload_set_router(struct dsm_offload *o, int layer, const struct dsm_mat *gate, const float *bias);
void dsm_offload_set_lookahead(struct dsm_offload *o, int max_tokens);

/* The shared expert of MoE layer `layer` (weights kept by the caller): each step of that layer then adds
 * shared(x) to its output, after the routed experts' sum. Where the plan puts the shared experts on the GPU
 * (and a gpu backend with pinned memory is in use) its weights are uploaded now, and it runs on the GPU's
 * queue while the CPU computes the step's experts; otherwise the cpu backend computes it. Returns 0,
 * DSM_EARG, or DSM_ENOMEM (device memory exhausted, with the sizes). */
int dsm_offload_set_shared(struct dsm_offload *o, int layer, const struct dsm_ffn_weights *w);

/* Synchronous access to one expert (streamed and waited for when needed); put releases it. */
int dsm_offload_get(struct dsm_offload *o, int layer, int expert, struct dsm_ffn_weights *w);
void dsm_offload_put(struct dsm_offload *o, int layer, int expert);

/* The NUMA node holding DRAM-tier expert (layer, expert) (N of its dram:N), or -1 for the other tiers.
 * *bound (may be NULL): 1 when its memory is bound to that node, 0 when it is plain (a synthetic topology,
 * or the kernel refused the binding; see dsm_offload_warnings). */
int dsm_offload_expert_node(const struct dsm_offload *o, int layer, int expert, int *bound);

void dsm_offload_get_stats(const struct dsm_offload *o, struct dsm_offload_stats *s);
void dsm_offload_reset_stats(struct dsm_offload *o);
/* Pinned policy: reads the pinned experts into the cache now, so that the first tokens find them (the hot
 * set is known before the first token, from a trace or the router bias); then zeroes the statistics. */
int dsm_offload_warm(struct dsm_offload *o);
/* Pinned policy without hotness: re-choose the pinned experts from the counts so far. */
void dsm_offload_repin(struct dsm_offload *o);
const struct dsm_cache *dsm_offload_cache(const struct dsm_offload *o);

/* ---- Set-up from command-line choices (dsm-run, dsm-bench) ---- */

struct dsm_offload_setup {
	const char *plan_path;            /* a plan file; NULL: computed from the budgets */
	uint64_t vram_budget;             /* bytes of each GPU: experts' weights and scales and the activations of
					   * one expert (0: no gpu experts in a computed plan) */
	uint64_t dram_budget;             /* 0: available memory minus 10% (at least 1 GiB) */
	const char *hotness_trace;        /* routing trace giving expert hotness; NULL: the router bias */
	int cache_policy;                 /* enum dsm_cache_policy; -1: the plan's, else lru */
	uint64_t cache_bytes;             /* 0: the plan's, else 2 x top_k experts */
	int cache_off;
	int stream_all;                   /* every routed expert streamed (ignores budgets for experts) */
	struct dsm_stream_opts stream;
	int64_t max_tokens;               /* tokens of one forward step at most (device activations); 0: 128 */
	struct dsm_backend *cpu;
	struct dsm_backend *gpu[DSM_MAX_GPUS]; /* none: a plan naming gpu:N experts is refused */
	struct dsm_topo *topo;            /* as in dsm_offload_opts */
	int64_t gpu_upload_tokens;        /* as in dsm_offload_opts */
	int forward_on_gpu;               /* the forward pass outside the experts is on gpu:0 already, outside
					   * vram_budget: of the non-expert weights, a computed plan counts only the
					   * shared experts against gpu:0 */
};

/* Loads or computes the plan (validated against m) and opens the store (m must outlive it). *plan_out (owned
 * by the caller) says what went where. Returns 0 or a negative code with a message (a plan for another model,
 * budgets too small for the non-expert weights, I/O errors). */
int dsm_offload_setup(struct dsm_offload **out, struct dsm_plan **plan_out, const struct dsm_store_model *m,
		      const struct dsm_offload_setup *s);

/* The end-of-run report: n_tokens computed in `seconds` of forward passes. One line of text into buf,
 * and the same figures as members of a JSON object (cJSON *) when json is not NULL. */
struct dsm_offload_report {
	uint64_t experts[DSM_TIER_KINDS]; /* experts per tier kind, as the store holds them */
	int n_gpus;
	uint64_t gpu_experts[DSM_MAX_GPUS]; /* experts of gpu:N */
	double nvme_bytes_per_token;
	double read_gbs;                  /* bytes streamed / read busy time */
	double cache_hit_rate;            /* hits / uses of streamed experts */
	double prefetch_hit_rate;         /* prefetch hits / prefetches */
	double attention_seconds;         /* seconds minus the expert steps' time: attention and the rest */
	double cpu_expert_seconds, gpu_expert_seconds, io_wait_seconds; /* as in struct dsm_offload_stats */
	double gpu_wait_seconds, overlap_seconds;
	uint64_t shared_runs_gpu, shared_runs_cpu, uploaded_runs;
	int64_t upload_min_tokens;        /* a DRAM expert with this many tokens in a step runs on the GPU (0: never) */
	/* The timeline of a token, in seconds per token: GPU busy, CPU busy (experts), I/O wait (steps blocked on
	 * expert reads), overlap (GPU busy while the CPU's part of a step ran). */
	double gpu_busy_per_token, cpu_busy_per_token, io_wait_per_token, overlap_per_token;
	uint64_t cache_slots;
	const char *cache_policy;
};
void dsm_offload_report(const struct dsm_offload *o, uint64_t n_tokens, double seconds, struct dsm_offload_report *r);
/* "offload: ..." (no newline). */
void dsm_offload_report_text(const struct dsm_offload_report *r, char *buf, size_t size);

#endif
