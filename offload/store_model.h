/* What the expert store knows of a model (docs/offload.md): the shape of its MoE layers, its shard files,
 * where each routed expert's tensors are (file, offset, bytes, dtype, shape, block scales, and their address
 * when the caller has mapped the shards), the router biases and the sizes of the other weights by kind.
 *
 * offload/ reads no checkpoint format: the caller fills this in (src/store_model.c builds it from a
 * checkpoint, dsm_store_model_from_checkpoint) and keeps it alive while any plan or store made from it is in
 * use. Nothing here is owned by offload/. */
#ifndef DSM_STORE_MODEL_H
#define DSM_STORE_MODEL_H

#include "dtype.h"

#include <stddef.h>
#include <stdint.h>

/* Kinds of weights. Plans place the non-expert kinds (docs/plan.md); src/layout.h tags every tensor of a
 * checkpoint with one. */
enum dsm_kind {
	DSM_KIND_EMBED,      /* embeddings, final norm, head */
	DSM_KIND_ATTENTION,  /* MLA projections and the layer norms */
	DSM_KIND_INDEXER,    /* V3.2 lightning indexer */
	DSM_KIND_DENSE,      /* dense FFN of the first layers */
	DSM_KIND_ROUTER,     /* MoE gate and its bias */
	DSM_KIND_SHARED,     /* shared experts */
	DSM_KIND_ROUTED,     /* routed experts */
	DSM_KIND_MTP,        /* the multi-token-prediction layer(s), skipped by the engine */
	DSM_KIND_COUNT
};

/* The shape of a model's MoE layers, as its config.json gives it. Plans are validated against it. */
struct dsm_moe_shape {
	char model_type[32];            /* "deepseek_v32" */
	int n_layers;                   /* num_hidden_layers (MTP layers not counted) */
	int first_moe;                  /* first_k_dense_replace: layers below are dense */
	int n_experts;                  /* n_routed_experts, E */
	int hidden_size;                /* D */
	int moe_intermediate_size;      /* I of one routed expert */
	int top_k;                      /* num_experts_per_tok */
	int n_group, topk_group;        /* group-limited routing (look-ahead) */
	int norm_topk_prob;
	double routed_scaling_factor;
};

enum { DSM_EXPERT_GATE, DSM_EXPERT_UP, DSM_EXPERT_DOWN, DSM_EXPERT_NPROJ };

/* One tensor's bytes: where they are in a shard file, and where they already are in memory. */
struct dsm_store_tensor {
	const char *name;               /* for messages */
	int shard;                      /* index into dsm_store_model.shards */
	uint64_t offset;                /* absolute offset of the first byte in the shard file */
	uint64_t nbytes;                /* 0: no such tensor (the scale of a BF16 or F32 weight) */
	enum dsm_dtype dtype;
	int64_t rows, cols;             /* [rows, cols] */
	const void *mapped;             /* the same bytes in memory (the caller mapped the shard), aligned to the
					 * element size; NULL: only in the file */
};

/* One routed expert: its weights gate [I, D], up [I, D], down [D, I], and their block scales
 * (F32 [ceil(rows/128), ceil(cols/128)] of an F8_E4M3 weight; nbytes 0 for BF16 or F32 weights). */
struct dsm_store_expert {
	struct dsm_store_tensor w[DSM_EXPERT_NPROJ];
	struct dsm_store_tensor scale[DSM_EXPERT_NPROJ];
};

struct dsm_store_model {
	struct dsm_moe_shape shape;
	const char *source;             /* the checkpoint folder, for messages */
	const char **shards;            /* [n_shards] paths of the shard files */
	int n_shards;
	struct dsm_store_expert *experts; /* [n_layers * n_experts]; the entries of dense layers are empty */
	float *router_bias;             /* [n_layers * n_experts] each MoE layer's e_score_correction_bias (zeros for
					 * dense layers); NULL: the checkpoint has none */
	uint64_t non_expert_bytes[DSM_KIND_COUNT]; /* bytes of the weights of each kind other than routed experts
						    * (with their scales); the MTP kind is left out (never loaded) */
};

/* Routed expert `expert` of `layer` (a MoE layer). */
static inline const struct dsm_store_expert *dsm_store_expert(const struct dsm_store_model *m, int layer, int expert)
{
	return &m->experts[(size_t)layer * (size_t)m->shape.n_experts + (size_t)expert];
}

#endif
