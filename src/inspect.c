#include "inspect.h"

#include "layout.h"

#include <stdio.h>
#include <string.h>

static uint64_t elements(const struct dsm_tensor *t)
{
	uint64_t n = 1;
	for (int i = 0; i < t->ndim; i++)
		n *= t->shape[i];
	return n;
}

/* Bytes of a weight plus its block scale. */
static uint64_t weight_bytes(const struct dsm_tensor *t)
{
	return t->nbytes + (t->scale ? t->scale->nbytes : 0);
}

static void add_shape(cJSON *doc, const struct dsm_config *c)
{
	cJSON *s = cJSON_AddObjectToObject(doc, "shape");
	cJSON_AddStringToObject(s, "model_type", c->model_type);
	struct { const char *k; int v; } f[] = {
		{ "hidden_size", c->hidden_size }, { "num_hidden_layers", c->num_hidden_layers },
		{ "dense_layers", c->first_k_dense_replace },
		{ "moe_layers", c->num_hidden_layers - c->first_k_dense_replace },
		{ "mtp_layers", c->num_nextn_predict_layers }, { "num_attention_heads", c->num_attention_heads },
		{ "q_lora_rank", c->q_lora_rank }, { "kv_lora_rank", c->kv_lora_rank },
		{ "qk_nope_head_dim", c->qk_nope_head_dim }, { "qk_rope_head_dim", c->qk_rope_head_dim },
		{ "v_head_dim", c->v_head_dim }, { "intermediate_size", c->intermediate_size },
		{ "moe_intermediate_size", c->moe_intermediate_size }, { "n_routed_experts", c->n_routed_experts },
		{ "n_shared_experts", c->n_shared_experts }, { "num_experts_per_tok", c->num_experts_per_tok },
		{ "n_group", c->n_group }, { "topk_group", c->topk_group }, { "vocab_size", c->vocab_size },
		{ "max_position_embeddings", c->max_position_embeddings },
	};
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		cJSON_AddNumberToObject(s, f[i].k, f[i].v);
	cJSON_AddBoolToObject(s, "indexer", c->has_indexer);
	if (c->has_indexer) {
		cJSON_AddNumberToObject(s, "index_n_heads", c->index_n_heads);
		cJSON_AddNumberToObject(s, "index_head_dim", c->index_head_dim);
		cJSON_AddNumberToObject(s, "index_topk", c->index_topk);
	}
	cJSON_AddBoolToObject(s, "fp8", c->fp8);
}

cJSON *dsm_inspect(const struct dsm_checkpoint *ck, uint64_t vram, uint64_t dram)
{
	const struct dsm_config *c = &ck->config;
	uint64_t params[DSM_KIND_COUNT + 1] = { 0 }, kind_bytes[DSM_KIND_COUNT + 1] = { 0 };
	uint64_t dtype_bytes[DSM_DTYPE_COUNT] = { 0 };
	int moe_layers = c->num_hidden_layers - c->first_k_dense_replace;
	uint64_t expert_layer_bytes[512] = { 0 };
	uint64_t one_expert_bytes = 0;

	for (size_t i = 0; i < ck->n_tensors; i++)
		dtype_bytes[ck->tensors[i].dtype] += ck->tensors[i].nbytes;
	uint64_t counted_bytes = 0;
	for (size_t i = 0; i < ck->n_layout; i++) {
		const struct dsm_layout_entry *e = &ck->layout[i];
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, e->name);
		if (!t)
			continue;
		params[e->kind] += elements(t);
		kind_bytes[e->kind] += weight_bytes(t);
		counted_bytes += weight_bytes(t);
		if (e->kind == DSM_KIND_ROUTED && e->layer < 512) {
			expert_layer_bytes[e->layer] += weight_bytes(t);
			if (e->layer == c->first_k_dense_replace && e->expert == 0)
				one_expert_bytes += weight_bytes(t);
		}
	}
	/* Tensors the config does not name (neither weights nor their scales). */
	kind_bytes[DSM_KIND_COUNT] = ck->total_bytes - counted_bytes;

	cJSON *doc = cJSON_CreateObject();
	cJSON_AddStringToObject(doc, "checkpoint", ck->dir);
	cJSON_AddBoolToObject(doc, "valid", 1);
	add_shape(doc, c);
	cJSON_AddNumberToObject(doc, "shards", ck->n_shards);
	cJSON_AddNumberToObject(doc, "tensors", (double)ck->n_tensors);
	cJSON_AddNumberToObject(doc, "total_bytes", (double)ck->total_bytes);

	uint64_t total_params = 0;
	cJSON *pk = cJSON_AddObjectToObject(doc, "parameters");
	cJSON *bk = cJSON_AddObjectToObject(doc, "bytes_by_kind");
	for (int k = 0; k < DSM_KIND_COUNT; k++) {
		cJSON_AddNumberToObject(pk, dsm_kind_name((enum dsm_kind)k), (double)params[k]);
		cJSON_AddNumberToObject(bk, dsm_kind_name((enum dsm_kind)k), (double)kind_bytes[k]);
		total_params += params[k];
	}
	cJSON_AddNumberToObject(bk, "other", (double)kind_bytes[DSM_KIND_COUNT]);
	cJSON_AddNumberToObject(pk, "total", (double)total_params);
	cJSON_AddNumberToObject(pk, "total_without_mtp", (double)(total_params - params[DSM_KIND_MTP]));

	cJSON *bd = cJSON_AddObjectToObject(doc, "bytes_by_dtype");
	for (int d = 1; d < DSM_DTYPE_COUNT; d++)
		if (dtype_bytes[d])
			cJSON_AddNumberToObject(bd, dsm_dtype_name((enum dsm_dtype)d), (double)dtype_bytes[d]);

	cJSON *ex = cJSON_AddObjectToObject(doc, "experts");
	uint64_t all_experts = 0;
	cJSON *per_layer = cJSON_CreateArray();
	for (int L = c->first_k_dense_replace; L < c->num_hidden_layers && L < 512; L++) {
		cJSON *row = cJSON_CreateObject();
		cJSON_AddNumberToObject(row, "layer", L);
		cJSON_AddNumberToObject(row, "bytes", (double)expert_layer_bytes[L]);
		cJSON_AddItemToArray(per_layer, row);
		all_experts += expert_layer_bytes[L];
	}
	cJSON_AddNumberToObject(ex, "moe_layers", moe_layers);
	cJSON_AddNumberToObject(ex, "experts_per_layer", c->n_routed_experts);
	cJSON_AddNumberToObject(ex, "bytes_per_expert", (double)one_expert_bytes);
	cJSON_AddNumberToObject(ex, "bytes_all_routed", (double)all_experts);
	cJSON_AddNumberToObject(ex, "bytes_per_token_decode",
				(double)one_expert_bytes * c->num_experts_per_tok * moe_layers);
	cJSON_AddItemToObject(ex, "per_layer", per_layer);

	/* Resident weights: everything the engine reads except routed experts (MTP is never read). */
	uint64_t resident = ck->total_bytes - all_experts - kind_bytes[DSM_KIND_MTP];
	cJSON_AddNumberToObject(doc, "resident_bytes", (double)resident);
	/* What one decode token reads: its routed experts and every resident weight but the embedding table, of
	 * which it reads one row. */
	const struct dsm_tensor *emb = dsm_checkpoint_find(ck, "model.embed_tokens.weight");
	uint64_t emb_bytes = emb ? weight_bytes(emb) : 0;
	cJSON_AddNumberToObject(doc, "decode_bytes_per_token",
				(double)(resident - emb_bytes) + (double)one_expert_bytes * c->num_experts_per_tok * moe_layers);
	if (vram || dram) {
		cJSON *fit = cJSON_AddObjectToObject(doc, "placement");
		cJSON_AddNumberToObject(fit, "vram_budget", (double)vram);
		cJSON_AddNumberToObject(fit, "dram_budget", (double)dram);
		/* Non-expert weights go to the GPU when they fit there, else to DRAM; then experts fill what is
		 * left of VRAM, then DRAM; the rest streams from NVMe. KV cache and activations not counted. */
		uint64_t v = vram, d = dram;
		const char *resident_tier = "none";
		if (resident <= v) {
			v -= resident;
			resident_tier = "gpu";
		} else if (resident <= d) {
			d -= resident;
			resident_tier = "dram";
		}
		cJSON_AddStringToObject(fit, "non_expert_weights", resident_tier);
		uint64_t total_experts = (uint64_t)moe_layers * (uint64_t)c->n_routed_experts;
		uint64_t gpu = 0, host = 0;
		if (strcmp(resident_tier, "none") != 0 && one_expert_bytes) {
			gpu = v / one_expert_bytes;
			if (gpu > total_experts)
				gpu = total_experts;
			host = d / one_expert_bytes;
			if (host > total_experts - gpu)
				host = total_experts - gpu;
		}
		cJSON_AddNumberToObject(fit, "experts_total", (double)total_experts);
		cJSON_AddNumberToObject(fit, "experts_gpu", (double)gpu);
		cJSON_AddNumberToObject(fit, "experts_dram", (double)host);
		cJSON_AddNumberToObject(fit, "experts_nvme", (double)(total_experts - gpu - host));
		cJSON_AddBoolToObject(fit, "runs", strcmp(resident_tier, "none") != 0);
	}
	return doc;
}
