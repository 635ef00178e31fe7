/* config.json of a DeepSeek-V3.2 (or V3) checkpoint: every key of docs MODEL.md section 1, validated. */
#ifndef DSM_CONFIG_H
#define DSM_CONFIG_H

#include <stddef.h>

struct dsm_rope_scaling {
	int yarn;                          /* 0: plain rope (no rope_scaling) */
	double factor;                     /* 40 */
	int original_max_position_embeddings; /* 4096 */
	double beta_fast, beta_slow;       /* 32, 1 */
	double mscale, mscale_all_dim;     /* 1, 1 */
};

struct dsm_config {
	char model_type[32];               /* "deepseek_v32" or "deepseek_v3" */
	int has_indexer;                   /* V3.2 lightning indexer (DSA) present */
	int hidden_size;                   /* 7168 */
	int num_hidden_layers;             /* 61, not counting MTP layers */
	int first_k_dense_replace;         /* 3: layers below are dense FFN */
	int intermediate_size;             /* 18432: dense FFN */
	int moe_intermediate_size;         /* 2048: each routed and shared expert */
	int n_routed_experts;              /* 256 */
	int n_shared_experts;              /* 1 */
	int num_experts_per_tok;           /* 8 */
	int n_group, topk_group;           /* 8, 4 */
	int norm_topk_prob;                /* true */
	double routed_scaling_factor;      /* 2.5 */
	int num_attention_heads;           /* 128 */
	int q_lora_rank, kv_lora_rank;     /* 1536, 512 */
	int qk_nope_head_dim, qk_rope_head_dim, v_head_dim; /* 128, 64, 128 */
	int index_n_heads, index_head_dim, index_topk;     /* 64, 128, 2048 (V3.2 only) */
	int vocab_size;                    /* 129280 */
	double rms_norm_eps;               /* 1e-6 */
	int max_position_embeddings;       /* 163840 */
	double rope_theta;                 /* 10000 */
	struct dsm_rope_scaling rope_scaling;
	int fp8;                           /* quantization_config present: fp8 e4m3 weights */
	int weight_block[2];               /* 128, 128 */
	int scale_ue8m0;                   /* quantization_config.scale_fmt == "ue8m0" */
	int num_nextn_predict_layers;      /* 1: MTP layer stored after the last layer */
	int bos_token_id, eos_token_id;    /* 0, 1 */
};

/* Parses and validates config JSON text. `what` names the file in messages.
 * Returns 0 or DSM_EJSON / DSM_ECONFIG with a message naming the file and the key. */
int dsm_config_parse(struct dsm_config *c, const char *text, size_t len, const char *what);
/* Reads and parses the file at path. */
int dsm_config_load(struct dsm_config *c, const char *path);

static inline int dsm_config_is_moe_layer(const struct dsm_config *c, int layer)
{
	return layer >= c->first_k_dense_replace;
}

#endif
