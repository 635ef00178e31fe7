/* Opening a model: config, weight views, rope frequencies, softmax scale (docs MODEL.md sections 1-3). */
#include "model.h"

#include "dispatch.h"
#include "error.h"
#include "expert_store.h"
#include "topo.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static float *owned_floats(struct dsm_model *m, int64_t n)
{
	if (m->n_owned == m->cap_owned) {
		size_t cap = m->cap_owned ? 2 * m->cap_owned : 64;
		void **v = realloc(m->owned, cap * sizeof *v);
		if (!v)
			return NULL;
		m->owned = v;
		m->cap_owned = cap;
	}
	float *p = calloc((size_t)n + 1, sizeof *p);
	if (p)
		m->owned[m->n_owned++] = p;
	return p;
}

/* A 1-D weight (norm, bias) converted to F32 once. */
static int load_vec(struct dsm_model *m, float **dst, int64_t n, const char *fmt, int layer)
{
	char name[160];
	snprintf(name, sizeof name, fmt, layer);
	*dst = owned_floats(m, n);
	if (!*dst)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	return dsm_weight_map_vec(m->map, name, n, *dst);
}

static int load_mat(struct dsm_model *m, struct dsm_mat *dst, int64_t rows, int64_t cols, const char *fmt,
		    int layer)
{
	char name[160];
	snprintf(name, sizeof name, fmt, layer);
	return dsm_weight_map_mat(m->map, name, rows, cols, dst);
}

static int load_ffn(struct dsm_model *m, struct dsm_ffn_weights *w, int64_t inter, const char *prefix, int layer)
{
	const struct dsm_config *c = &m->cfg;
	char fmt[128];
	int rc;
	w->numa_home = 0;
	snprintf(fmt, sizeof fmt, "%sgate_proj.weight", prefix);
	if ((rc = load_mat(m, &w->gate, inter, c->hidden_size, fmt, layer)) < 0)
		return rc;
	snprintf(fmt, sizeof fmt, "%sup_proj.weight", prefix);
	if ((rc = load_mat(m, &w->up, inter, c->hidden_size, fmt, layer)) < 0)
		return rc;
	snprintf(fmt, sizeof fmt, "%sdown_proj.weight", prefix);
	return load_mat(m, &w->down, c->hidden_size, inter, fmt, layer);
}

static int load_layer(struct dsm_model *m, int L)
{
	const struct dsm_config *c = &m->cfg;
	struct dsm_layer *l = &m->layers[L];
	int64_t D = c->hidden_size, H = c->num_attention_heads, dn = c->qk_nope_head_dim,
		dr = c->qk_rope_head_dim, dv = c->v_head_dim, r = c->kv_lora_rank, rq = c->q_lora_rank;
	struct dsm_attn_weights *a = &l->attn;
	int rc;
	if ((rc = load_vec(m, &a->norm, D, "model.layers.%d.input_layernorm.weight", L)) < 0 ||
	    (rc = load_mat(m, &a->q_a, rq, D, "model.layers.%d.self_attn.q_a_proj.weight", L)) < 0 ||
	    (rc = load_vec(m, &a->q_a_norm, rq, "model.layers.%d.self_attn.q_a_layernorm.weight", L)) < 0 ||
	    (rc = load_mat(m, &a->q_b, H * (dn + dr), rq, "model.layers.%d.self_attn.q_b_proj.weight", L)) < 0 ||
	    (rc = load_mat(m, &a->kv_a, r + dr, D, "model.layers.%d.self_attn.kv_a_proj_with_mqa.weight", L)) < 0 ||
	    (rc = load_vec(m, &a->kv_a_norm, r, "model.layers.%d.self_attn.kv_a_layernorm.weight", L)) < 0 ||
	    (rc = load_mat(m, &a->kv_b, H * (dn + dv), r, "model.layers.%d.self_attn.kv_b_proj.weight", L)) < 0 ||
	    (rc = load_mat(m, &a->o, D, H * dv, "model.layers.%d.self_attn.o_proj.weight", L)) < 0)
		return rc;
	if (c->has_indexer) {
		struct dsm_indexer_weights *x = &l->indexer;
		int64_t nI = c->index_n_heads, dI = c->index_head_dim;
		if ((rc = load_mat(m, &x->wq_b, nI * dI, rq, "model.layers.%d.self_attn.indexer.wq_b.weight", L)) < 0 ||
		    (rc = load_mat(m, &x->wk, dI, D, "model.layers.%d.self_attn.indexer.wk.weight", L)) < 0 ||
		    (rc = load_vec(m, &x->k_norm_w, dI, "model.layers.%d.self_attn.indexer.k_norm.weight", L)) < 0 ||
		    (rc = load_vec(m, &x->k_norm_b, dI, "model.layers.%d.self_attn.indexer.k_norm.bias", L)) < 0 ||
		    (rc = load_mat(m, &x->weights_proj, nI, D, "model.layers.%d.self_attn.indexer.weights_proj.weight",
				   L)) < 0)
			return rc;
	}
	struct dsm_ffn_layer *f = &l->ffn;
	if ((rc = load_vec(m, &f->norm, D, "model.layers.%d.post_attention_layernorm.weight", L)) < 0)
		return rc;
	f->moe = dsm_config_is_moe_layer(c, L);
	if (!f->moe)
		return load_ffn(m, &f->dense, c->intermediate_size, "model.layers.%d.mlp.", L);
	int64_t E = c->n_routed_experts;
	if ((rc = load_mat(m, &f->gate, E, D, "model.layers.%d.mlp.gate.weight", L)) < 0 ||
	    (rc = load_vec(m, &f->gate_bias, E, "model.layers.%d.mlp.gate.e_score_correction_bias", L)) < 0)
		return rc;
	if (c->n_shared_experts > 0)
		return load_ffn(m, &f->shared, (int64_t)c->moe_intermediate_size * c->n_shared_experts,
				"model.layers.%d.mlp.shared_experts.", L);
	return 0;
}

/* YaRN (docs MODEL.md "YaRN rotary frequencies"): f_i = theta^(-2i/d), blended towards f_i / factor
 * over the correction range [low, high] given by beta_fast / beta_slow. */
static int rope_init(struct dsm_model *m)
{
	const struct dsm_config *c = &m->cfg;
	const struct dsm_rope_scaling *rs = &c->rope_scaling;
	int d = c->qk_rope_head_dim;
	m->rope_freq = calloc((size_t)d / 2 + 1, sizeof *m->rope_freq);
	if (!m->rope_freq)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int yarn = rs->yarn && rs->factor > 1.0;
	double low = 0, high = 0;
	if (yarn) {
		double base = c->rope_theta, omax = rs->original_max_position_embeddings;
		double corr_fast = d * log(omax / (rs->beta_fast * 2 * M_PI)) / (2 * log(base));
		double corr_slow = d * log(omax / (rs->beta_slow * 2 * M_PI)) / (2 * log(base));
		low = fmax(floor(corr_fast), 0);
		high = fmin(ceil(corr_slow), d - 1);
		if (high == low)
			high += 0.001;
	}
	for (int i = 0; i < d / 2; i++) {
		double f = pow(c->rope_theta, -2.0 * i / d);
		if (yarn) {
			double ramp = fmin(fmax((i - low) / (high - low), 0.0), 1.0);
			f = f / rs->factor * ramp + f * (1 - ramp);
		}
		m->rope_freq[i] = f;
	}
	/* softmax scale = q head dim^-0.5 * mscale^2 with mscale = 0.1 * mscale_all_dim * ln(factor) + 1;
	 * cos/sin carry mscale(mscale) / mscale(mscale_all_dim), 1 for the real config. */
	m->softmax_scale = (float)(1.0 / sqrt((double)(c->qk_nope_head_dim + c->qk_rope_head_dim)));
	m->rope_amp = 1.0f;
	if (yarn) {
		double ms = 0.1 * rs->mscale * log(rs->factor) + 1, ms_all = 0.1 * rs->mscale_all_dim * log(rs->factor) + 1;
		if (rs->mscale_all_dim != 0)
			m->softmax_scale = (float)(m->softmax_scale * ms_all * ms_all);
		m->rope_amp = (float)(ms / ms_all);
	}
	return 0;
}

void dsm_model_close(struct dsm_model *m)
{
	if (!m)
		return;
	dsm_model_to_devices(m, NULL, NULL, 0);
	dsm_offload_close(m->mapped_experts);
	dsm_store_model_free(m->store_model);
	dsm_backend_destroy(m->be);
	if (m->threads)
		dsm_topo_threads_free(m->threads);
	free(m->threads);
	dsm_topo_close(m->topo);
	dsm_weight_map_close(m->map);
	dsm_checkpoint_close(m->ck);
	for (size_t i = 0; i < m->n_owned; i++)
		free(m->owned[i]);
	free(m->owned);
	free(m->layers);
	free(m->rope_freq);
	free(m);
}

int dsm_model_open(struct dsm_model **out, const char *dir, const struct dsm_model_options *o)
{
	*out = NULL;
	struct dsm_model *m = calloc(1, sizeof *m);
	if (!m)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	if (o)
		m->opts = *o;
	int rc = dsm_checkpoint_open(&m->ck, dir);
	if (rc < 0)
		goto err;
	m->cfg = m->ck->config;
	struct dsm_config *c = &m->cfg;
	if (c->q_lora_rank <= 0) {
		rc = dsm_fail(DSM_EUNSUPPORTED, "%s: q_lora_rank must be set (every V3 / V3.2 model has one)", dir);
		goto err;
	}
	if (c->qk_rope_head_dim % 2 || (c->has_indexer && (c->index_head_dim < c->qk_rope_head_dim ||
							   (c->index_head_dim & (c->index_head_dim - 1))))) {
		rc = dsm_fail(DSM_EUNSUPPORTED, "%s: rope dims must be even and index_head_dim a power of two >= "
			      "qk_rope_head_dim", dir);
		goto err;
	}
	if (m->opts.index_topk > 0)
		c->index_topk = m->opts.index_topk;
	/* One thread per physical core, each bound to its core (never two on one core). Without a topology
	 * (hwloc failed), or when asked, the threads run unbound. */
	struct dsm_backend_options bo = { .precision = m->opts.precision, .threads = m->opts.threads };
	if (!m->opts.no_bind && dsm_topo_open(&m->topo, NULL) == 0 && (m->threads = calloc(1, sizeof *m->threads)) &&
	    dsm_topo_plan_threads(m->topo, m->opts.threads, m->threads) == 0)
		bo.cpu_threads = &m->threads->th;
	if ((rc = dsm_backend_create(&m->be, "cpu", &bo)) < 0 || (rc = dsm_weight_map_open(&m->map, m->ck)) < 0 ||
	    (rc = dsm_store_model_from_checkpoint(&m->store_model, m->ck, m->map)) < 0 || (rc = rope_init(m)) < 0)
		goto err;
	/* Routed experts: a store without a plan, every expert computed by the cpu backend where it is mapped. */
	struct dsm_offload_opts eo = { .plan = NULL, .cpu = m->be };
	if ((rc = dsm_offload_open(&m->mapped_experts, m->store_model, &eo)) < 0)
		goto err;
	m->offload = m->mapped_experts;
	m->layers = calloc((size_t)c->num_hidden_layers + 1, sizeof *m->layers);
	if (!m->layers) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto err;
	}
	int64_t D = c->hidden_size, V = c->vocab_size;
	if ((rc = load_mat(m, &m->embed, V, D, "model.embed_tokens.weight", 0)) < 0 ||
	    (rc = load_mat(m, &m->head, V, D, "lm_head.weight", 0)) < 0 ||
	    (rc = load_vec(m, &m->final_norm, D, "model.norm.weight", 0)) < 0)
		goto err;
	for (int L = 0; L < c->num_hidden_layers; L++)
		if ((rc = load_layer(m, L)) < 0)
			goto err;
	if ((rc = dsm_model_set_experts(m, NULL)) < 0 || (rc = dsm_model_to_devices(m, NULL, NULL, 0)) < 0)
		goto err;
	*out = m;
	return 0;
err:
	dsm_model_close(m);
	return rc;
}

int dsm_model_set_experts(struct dsm_model *m, struct dsm_offload *o)
{
	if (!o)
		o = m->mapped_experts;
	for (int L = 0; L < m->cfg.num_hidden_layers; L++) {
		const struct dsm_ffn_layer *f = &m->layers[L].ffn;
		int rc;
		if (f->moe && (rc = dsm_offload_set_router(o, L, &f->gate, f->gate_bias)) < 0)
			return rc;
		if (f->moe && m->cfg.n_shared_experts > 0 && (rc = dsm_offload_set_shared(o, L, &f->shared)) < 0)
			return rc;
	}
	m->offload = o;
	return 0;
}

#define TUNE_MATS 480                   /* matrices measured on, at most */
#define TUNE_BYTES (300ull << 20)       /* bytes measured on, at most: 5 rounds x 5 variants x 12 MiB */
#define TUNE_MIN_BYTES (64ull << 20)

static int tune_fp8(struct dsm_model *m, struct dsm_gemv_tune_result *r)
{
	const struct dsm_store_model *sm = m->store_model;
	struct dsm_fp8_mat mats[TUNE_MATS];
	size_t n = 0;
	uint64_t bytes = 0;
	for (int L = 0; L < sm->shape.n_layers && n < TUNE_MATS && bytes < TUNE_BYTES; L++)
		for (int e = 0; e < sm->shape.n_experts && n < TUNE_MATS && bytes < TUNE_BYTES; e++)
			for (int p = 0; p < DSM_EXPERT_NPROJ && n < TUNE_MATS && bytes < TUNE_BYTES; p++) {
				const struct dsm_store_expert *x = dsm_store_expert(sm, L, e);
				const struct dsm_store_tensor *w = &x->w[p], *sc = &x->scale[p];
				if (!w->nbytes || w->dtype != DSM_F8_E4M3 || !w->mapped || !sc->mapped)
					continue;
				mats[n++] = dsm_fp8_mat_dense(w->mapped, sc->mapped, (size_t)w->rows, (size_t)w->cols);
				bytes += w->nbytes;
			}
	if (bytes < TUNE_MIN_BYTES)
		return dsm_fail(DSM_EARG, "%.0f MB of FP8 experts in memory: too few to measure on", (double)bytes / 1e6);
	return dsm_cpu_gemv_tune(m->be, mats, n, r);
}

/* A kernel not measured keeps its default; its result says why. */
static int tuned(int rc, struct dsm_gemv_tune_result *r)
{
	if (rc >= 0 || rc == DSM_ENOMEM)
		return rc;
	r->rounds = 0;
	snprintf(r->why, sizeof r->why, "not measured: %s", dsm_errmsg());
	return 0;
}

int dsm_model_tune_kernels(struct dsm_model *m, struct dsm_gemv_tune_result *fp8, struct dsm_gemv_tune_result *head)
{
	memset(fp8, 0, sizeof *fp8);
	memset(head, 0, sizeof *head);
	int rc = tuned(tune_fp8(m, fp8), fp8);
	if (rc < 0)
		return rc;
	return tuned(dsm_cpu_bf16_gemv_tune(m->fwd.stage_be[m->fwd.n_stages - 1], &m->fwd.head, head), head);
}

int dsm_model_threads(const struct dsm_model *m, int *bound)
{
	*bound = m->threads != NULL;
	return m->threads ? m->threads->th.n_threads : m->opts.threads > 0 ? m->opts.threads : dsm_physical_cores();
}

void dsm_model_memory(const struct dsm_model *m, uint64_t *mapped, uint64_t *copied, uint64_t *huge)
{
	dsm_weight_map_usage(m->map, mapped, copied, huge);
	/* norms and biases converted to F32 are small; count them with the copies */
	const struct dsm_config *c = &m->cfg;
	uint64_t norms = (uint64_t)c->num_hidden_layers *
			 (2ull * c->hidden_size + c->q_lora_rank + c->kv_lora_rank + 2ull * c->index_head_dim +
			  c->n_routed_experts) * 4 + (uint64_t)c->hidden_size * 4;
	*copied += norms;
}
