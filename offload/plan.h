/* Placement plans (docs/plan.md): which tier holds every routed expert of every MoE layer, and where the
 * non-expert weights live. A plan is JSON, validated on load against the model's shape (a plan made for
 * another model is refused, naming the key that differs), or computed from memory budgets. */
#ifndef DSM_PLAN_H
#define DSM_PLAN_H

#include "store_model.h"

#include <stddef.h>
#include <stdint.h>

/* Where an expert's bytes are. Plans name gpu, dram and nvme; "mapped" is the store's own tier (the shard
 * files mapped by the caller, read through the page cache, computed by the cpu backend): what a store opened
 * without a plan uses for every expert (offload/dispatch.h). */
enum dsm_tier_kind { DSM_TIER_NVME = 0, DSM_TIER_DRAM = 1, DSM_TIER_GPU = 2, DSM_TIER_MAPPED = 3 };
#define DSM_TIER_KINDS 4

#define DSM_TIER_MAX_INDEX 63 /* gpu:0..63, dram:0..63 (NUMA node) */

struct dsm_tier {
	uint8_t kind;             /* enum dsm_tier_kind */
	uint8_t index;            /* device or NUMA node */
};

struct dsm_plan {
	/* The model the plan is for (copied from the shape it was validated against). */
	char model_type[32];
	int n_layers;             /* num_hidden_layers */
	int first_moe;            /* first_k_dense_replace */
	int n_experts;            /* n_routed_experts */
	int hidden_size, moe_intermediate_size;
	/* Non-expert weights by kind (DSM_KIND_ROUTED and DSM_KIND_MTP unused): never nvme. */
	struct dsm_tier non_expert[DSM_KIND_COUNT];
	struct dsm_tier *expert;  /* [n_layers][n_experts]; dense layers hold nvme and are ignored */
	int cache_policy;         /* enum dsm_cache_policy, -1 when the plan does not say */
	uint64_t cache_bytes;     /* 0 when the plan does not say */
};

/* Parses plan JSON and validates it against the model's shape. `what` names the file in messages.
 * Returns 0 or DSM_EJSON (not JSON), DSM_EPLAN (wrong shape, another model, a missing expert, a tier
 * that does not parse) with a message naming the key. */
int dsm_plan_parse(struct dsm_plan **out, const char *text, size_t len, const char *what,
		   const struct dsm_moe_shape *shape);
/* Reads and parses the file at path. */
int dsm_plan_load(struct dsm_plan **out, const char *path, const struct dsm_moe_shape *shape);
/* Accepts NULL. */
void dsm_plan_free(struct dsm_plan *p);

/* A plan with everything in one tier: non-expert weights and experts. */
int dsm_plan_uniform(struct dsm_plan **out, const struct dsm_moe_shape *shape, struct dsm_tier non_expert,
		     struct dsm_tier experts);

static inline struct dsm_tier dsm_plan_expert_tier(const struct dsm_plan *p, int layer, int expert)
{
	return p->expert[(size_t)layer * (size_t)p->n_experts + (size_t)expert];
}

/* The plan as JSON (the format dsm_plan_parse reads; experts as ranges; an expert a caller put on the mapped
 * tier is written "mapped", which plan files do not accept). Caller frees. NULL on ENOMEM. */
char *dsm_plan_to_json(const struct dsm_plan *p);

/* "gpu:0", "dram:1", "nvme", "mapped" into buf. */
const char *dsm_tier_format(struct dsm_tier t, char *buf, size_t size);
/* Parses a tier of a plan ("gpu:N", "dram:N", "nvme"); 0 or -1. */
int dsm_tier_parse(const char *s, struct dsm_tier *t);

/* Counts of experts per tier kind over all MoE layers. */
void dsm_plan_count(const struct dsm_plan *p, uint64_t counts[DSM_TIER_KINDS]);

/* ---- Plans from budgets ---- */

struct dsm_plan_sizes {
	uint64_t expert_bytes;                /* the FP8 weights of one routed expert (scales excluded) */
	uint64_t non_expert_bytes[DSM_KIND_COUNT]; /* per kind; routed experts' scales count under ROUTER */
	uint64_t non_expert_total;
};

/* Sizes of the model's weights by kind: the non-expert ones as m gives them, plus the routed experts' scales
 * under ROUTER; expert_bytes is the largest expert's weights. */
void dsm_plan_sizes(const struct dsm_store_model *m, struct dsm_plan_sizes *sz);

struct dsm_plan_budget {
	uint64_t vram_bytes;      /* each GPU's (0: no GPU tier) */
	int n_gpus;               /* gpu:0 .. gpu:n_gpus-1 (0 counts as 1 when vram_bytes is set) */
	uint64_t dram_bytes;      /* dram:0 */
	uint64_t dram_reserve;    /* part of dram_bytes kept for streaming slots (the expert cache) */
	int forward_placed;       /* the non-expert weights but the shared experts lie on gpu:0 outside vram_bytes */
};

/* The GPU (of n_gpus) that layer `layer` of n_layers goes to when layers are split across GPUs: the MoE layers
 * (from first_moe on) in as many consecutive ranges, one a GPU; the dense layers before them with gpu:0 (a model
 * without MoE layers: all its layers in ranges). The GPU of a computed plan's experts, and of the forward pass. */
int dsm_plan_layer_gpu(int layer, int first_moe, int n_layers, int n_gpus);

/* A plan under the budgets: non-expert weights on gpu:0 when they fit there (only the shared experts counted when
 * forward_placed), else in DRAM; then experts,
 * hottest first (hotness[layer * n_experts + expert], higher hotter; NULL: spread evenly across layers,
 * the same number per layer), to their layer's GPU while it has room (with several GPUs the MoE layers are
 * split into as many consecutive ranges, one a GPU), then to DRAM, the rest to nvme.
 * Returns 0, or DSM_EPLAN when the budgets cannot hold the non-expert weights (message with the sizes). */
int dsm_plan_from_budgets(struct dsm_plan **out, const struct dsm_moe_shape *shape, const struct dsm_plan_sizes *sz,
			  const struct dsm_plan_budget *b, const double *hotness);

#endif
