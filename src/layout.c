#include "layout.h"

#include "error.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *dsm_kind_name(enum dsm_kind k)
{
	static const char *const names[DSM_KIND_COUNT] = {
		"embeddings", "attention", "indexer", "dense", "router", "shared_experts", "routed_experts", "mtp",
	};
	return k < DSM_KIND_COUNT ? names[k] : "other";
}

int dsm_scale_name(char *buf, size_t size, const char *name)
{
	return snprintf(buf, size, "%s_scale_inv", name) < (int)size ? 0 : -1;
}

struct builder {
	struct dsm_layout_entry *v;
	size_t n, cap;
	int layer, expert, optional;
	enum dsm_kind kind;
	int failed;
};

static void add(struct builder *b, enum dsm_wtype w, uint64_t rows, uint64_t cols, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));

/* Appends one tensor; cols == 0 means a 1-D tensor of rows elements. */
static void add(struct builder *b, enum dsm_wtype w, uint64_t rows, uint64_t cols, const char *fmt, ...)
{
	if (b->failed)
		return;
	if (b->n == b->cap) {
		size_t cap = b->cap ? 2 * b->cap : 256;
		struct dsm_layout_entry *v = realloc(b->v, cap * sizeof *v);
		if (!v) {
			b->failed = 1;
			return;
		}
		b->v = v;
		b->cap = cap;
	}
	struct dsm_layout_entry *e = &b->v[b->n++];
	memset(e, 0, sizeof *e);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->name, sizeof e->name, fmt, ap);
	va_end(ap);
	e->kind = b->kind;
	e->wtype = w;
	e->layer = b->layer;
	e->expert = b->expert;
	e->optional = b->optional;
	e->ndim = cols ? 2 : 1;
	e->shape[0] = rows;
	e->shape[1] = cols;
}

/* One decoder layer: attention (+ indexer), then a dense FFN or an MoE. */
static void add_layer(struct builder *b, const struct dsm_config *c, int L, enum dsm_kind override)
{
	uint64_t H = (uint64_t)c->hidden_size, heads = (uint64_t)c->num_attention_heads;
	uint64_t qk_head = (uint64_t)c->qk_nope_head_dim + (uint64_t)c->qk_rope_head_dim;
	int mtp = override == DSM_KIND_MTP;
#define KIND(k) (b->kind = mtp ? DSM_KIND_MTP : (k))
	b->layer = L;
	b->expert = -1;

	KIND(DSM_KIND_ATTENTION);
	add(b, DSM_W_NORM, H, 0, "model.layers.%d.input_layernorm.weight", L);
	add(b, DSM_W_NORM, H, 0, "model.layers.%d.post_attention_layernorm.weight", L);
	add(b, DSM_W_QUANT, (uint64_t)c->q_lora_rank, H, "model.layers.%d.self_attn.q_a_proj.weight", L);
	add(b, DSM_W_NORM, (uint64_t)c->q_lora_rank, 0, "model.layers.%d.self_attn.q_a_layernorm.weight", L);
	add(b, DSM_W_QUANT, heads * qk_head, (uint64_t)c->q_lora_rank, "model.layers.%d.self_attn.q_b_proj.weight", L);
	add(b, DSM_W_QUANT, (uint64_t)c->kv_lora_rank + (uint64_t)c->qk_rope_head_dim, H,
	    "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", L);
	add(b, DSM_W_NORM, (uint64_t)c->kv_lora_rank, 0, "model.layers.%d.self_attn.kv_a_layernorm.weight", L);
	add(b, DSM_W_QUANT, heads * ((uint64_t)c->qk_nope_head_dim + (uint64_t)c->v_head_dim),
	    (uint64_t)c->kv_lora_rank, "model.layers.%d.self_attn.kv_b_proj.weight", L);
	add(b, DSM_W_QUANT, H, heads * (uint64_t)c->v_head_dim, "model.layers.%d.self_attn.o_proj.weight", L);

	if (c->has_indexer) {
		uint64_t ih = (uint64_t)c->index_n_heads, id = (uint64_t)c->index_head_dim;
		KIND(DSM_KIND_INDEXER);
		add(b, DSM_W_QUANT, ih * id, (uint64_t)c->q_lora_rank, "model.layers.%d.self_attn.indexer.wq_b.weight", L);
		add(b, DSM_W_QUANT, id, H, "model.layers.%d.self_attn.indexer.wk.weight", L);
		add(b, DSM_W_NORM, id, 0, "model.layers.%d.self_attn.indexer.k_norm.weight", L);
		add(b, DSM_W_NORM, id, 0, "model.layers.%d.self_attn.indexer.k_norm.bias", L);
		add(b, DSM_W_BF16, ih, H, "model.layers.%d.self_attn.indexer.weights_proj.weight", L);
	}

	if (!dsm_config_is_moe_layer(c, L)) {
		uint64_t I = (uint64_t)c->intermediate_size;
		KIND(DSM_KIND_DENSE);
		add(b, DSM_W_QUANT, I, H, "model.layers.%d.mlp.gate_proj.weight", L);
		add(b, DSM_W_QUANT, I, H, "model.layers.%d.mlp.up_proj.weight", L);
		add(b, DSM_W_QUANT, H, I, "model.layers.%d.mlp.down_proj.weight", L);
		return;
	}
	uint64_t E = (uint64_t)c->n_routed_experts, mI = (uint64_t)c->moe_intermediate_size;
	uint64_t sI = mI * (uint64_t)c->n_shared_experts;
	KIND(DSM_KIND_ROUTER);
	add(b, DSM_W_BF16, E, H, "model.layers.%d.mlp.gate.weight", L);
	add(b, DSM_W_F32, E, 0, "model.layers.%d.mlp.gate.e_score_correction_bias", L);
	KIND(DSM_KIND_ROUTED);
	for (int e = 0; e < c->n_routed_experts; e++) {
		b->expert = e;
		add(b, DSM_W_QUANT, mI, H, "model.layers.%d.mlp.experts.%d.gate_proj.weight", L, e);
		add(b, DSM_W_QUANT, mI, H, "model.layers.%d.mlp.experts.%d.up_proj.weight", L, e);
		add(b, DSM_W_QUANT, H, mI, "model.layers.%d.mlp.experts.%d.down_proj.weight", L, e);
	}
	b->expert = -1;
	KIND(DSM_KIND_SHARED);
	add(b, DSM_W_QUANT, sI, H, "model.layers.%d.mlp.shared_experts.gate_proj.weight", L);
	add(b, DSM_W_QUANT, sI, H, "model.layers.%d.mlp.shared_experts.up_proj.weight", L);
	add(b, DSM_W_QUANT, H, sI, "model.layers.%d.mlp.shared_experts.down_proj.weight", L);
#undef KIND
}

int dsm_layout_build(const struct dsm_config *c, struct dsm_layout_entry **out, size_t *n)
{
	struct builder b = { .layer = -1, .expert = -1 };
	uint64_t H = (uint64_t)c->hidden_size, V = (uint64_t)c->vocab_size;

	b.kind = DSM_KIND_EMBED;
	add(&b, DSM_W_BF16, V, H, "model.embed_tokens.weight");
	for (int L = 0; L < c->num_hidden_layers; L++)
		add_layer(&b, c, L, DSM_KIND_COUNT);
	b.layer = -1;
	b.expert = -1;
	b.kind = DSM_KIND_EMBED;
	add(&b, DSM_W_NORM, H, 0, "model.norm.weight");
	add(&b, DSM_W_BF16, V, H, "lm_head.weight");

	/* MTP layers are stored after the last decoder layer; the engine skips them, so they are optional. */
	b.optional = 1;
	for (int k = 0; k < c->num_nextn_predict_layers; k++) {
		int L = c->num_hidden_layers + k;
		b.layer = L;
		b.expert = -1;
		b.kind = DSM_KIND_MTP;
		add(&b, DSM_W_ANY, V, H, "model.layers.%d.embed_tokens.weight", L);
		add(&b, DSM_W_NORM, H, 0, "model.layers.%d.enorm.weight", L);
		add(&b, DSM_W_NORM, H, 0, "model.layers.%d.hnorm.weight", L);
		add(&b, DSM_W_ANY, H, 2 * H, "model.layers.%d.eh_proj.weight", L);
		add(&b, DSM_W_NORM, H, 0, "model.layers.%d.shared_head.norm.weight", L);
		add(&b, DSM_W_ANY, V, H, "model.layers.%d.shared_head.head.weight", L);
		add_layer(&b, c, L, DSM_KIND_MTP);
	}
	if (b.failed) {
		free(b.v);
		return dsm_fail(DSM_ENOMEM, "out of memory listing the model's tensors");
	}
	*out = b.v;
	*n = b.n;
	return 0;
}
