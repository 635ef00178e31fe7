/* The forward pass driver (docs MODEL.md section 3):
 *
 *   h = embed(tokens)                      no scaling
 *   for each layer L:
 *       h += Attn_L(RMSNorm(h))            mla.c (+ indexer.c on V3.2)
 *       h += FFN_L(RMSNorm(h))             moe.c: dense SwiGLU or MoE
 *   logits = lm_head(RMSNorm(h))           F32
 *
 * and the session's memory: KV caches sized by ctx, step buffers sized by max_batch, all allocated here
 * once. */
#include "model_internal.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Carves aligned arrays out of one allocation: a first pass counts, the second assigns. */
struct arena {
	char *base;
	size_t used;
};

static void *take(struct arena *a, size_t bytes)
{
	size_t at = (a->used + 63) & ~(size_t)63;
	a->used = at + bytes;
	return a->base ? a->base + at : NULL;
}

static int64_t max64(int64_t a, int64_t b)
{
	return a > b ? a : b;
}

static void layout_buffers(struct dsm_session *s, struct arena *a)
{
	const struct dsm_config *c = &s->m->cfg;
	size_t B = (size_t)s->max_batch, ctx = (size_t)s->ctx, f = sizeof(float);
	size_t D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads, dn = (size_t)c->qk_nope_head_dim,
	       dr = (size_t)c->qk_rope_head_dim, dv = (size_t)c->v_head_dim, r = (size_t)c->kv_lora_rank,
	       rq = (size_t)c->q_lora_rank, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
	s->x = take(a, B * D * f);
	s->xn = take(a, B * D * f);
	s->y = take(a, B * D * f);
	s->cos = take(a, B * dr / 2 * f);
	s->sin = take(a, B * dr / 2 * f);
	s->n_keys = take(a, B * sizeof(int64_t));
	s->qa = take(a, B * rq * f);
	s->q = take(a, B * H * (dn + dr) * f);
	s->kva = take(a, B * (r + dr) * f);
	s->cnorm = take(a, B * r * f);
	s->o = take(a, B * H * dv * f);
	s->c_all = take(a, ctx * r * f);
	s->pe_all = take(a, ctx * dr * f);
	s->kv_head = take(a, ctx * (dn + dv) * f);
	s->q_head = take(a, B * (size_t)max64((int64_t)dn, (int64_t)r) * f);
	s->q_lat = take(a, B * H * r * f);
	s->q_pe = take(a, H * dr * f);
	s->o_lat = take(a, B * H * r * f);
	s->o_head = take(a, B * (size_t)max64((int64_t)dv, (int64_t)r) * f);
	if (c->has_indexer) {
		size_t nI = (size_t)c->index_n_heads, dI = (size_t)c->index_head_dim, topk = (size_t)c->index_topk;
		if (topk > ctx)
			topk = ctx;
		s->ik = take(a, B * dI * f);
		s->iq = take(a, B * nI * dI * f);
		s->iw = take(a, B * nI * f);
		s->iscore = take(a, ctx * f);
		s->sel = take(a, B * topk * sizeof(int32_t));
	}
	s->mask = take(a, B * sizeof(struct dsm_attn_mask));
	if (E) {
		s->rlogits = take(a, B * E * f);
		s->ridx = take(a, B * k * sizeof(int32_t));
		s->rw = take(a, B * k * f);
		s->ew = take(a, E * sizeof(struct dsm_ffn_weights));
		s->ep = take(a, E * sizeof(struct dsm_ffn_weights *));
	}
	s->ye = take(a, B * D * f);
}

void dsm_session_free(struct dsm_session *s)
{
	if (!s)
		return;
	free(s->kv_c);
	free(s->kv_pe);
	free(s->idx_k);
	free(s->arena);
	free(s);
}

int dsm_session_init(struct dsm_session **out, struct dsm_model *m, const struct dsm_session_options *o)
{
	*out = NULL;
	const struct dsm_config *c = &m->cfg;
	struct dsm_session *s = calloc(1, sizeof *s);
	if (!s)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	if (o)
		s->opt = *o;
	s->m = m;
	s->ctx = s->opt.ctx > 0 ? s->opt.ctx : 4096;
	if (s->ctx > c->max_position_embeddings)
		s->ctx = c->max_position_embeddings;
	s->max_batch = s->opt.max_batch > 0 ? s->opt.max_batch : 128;
	if (s->max_batch > s->ctx)
		s->max_batch = s->ctx;
	if (s->opt.kv_dtype == DSM_DTYPE_INVALID)
		s->opt.kv_dtype = DSM_BF16;
	if (s->opt.kv_dtype != DSM_BF16 && s->opt.kv_dtype != DSM_F32) {
		free(s);
		return dsm_fail(DSM_EARG, "KV cache dtype must be BF16 or F32");
	}
	size_t L = (size_t)c->num_hidden_layers, ctx = (size_t)s->ctx, es = dsm_dtype_size(s->opt.kv_dtype);
	size_t c_bytes = L * ctx * (size_t)c->kv_lora_rank * es, pe_bytes = L * ctx * (size_t)c->qk_rope_head_dim * es;
	size_t ik_bytes = c->has_indexer ? L * ctx * (size_t)c->index_head_dim * sizeof(float) : 0;
	s->kv_c = malloc(c_bytes + 1);
	s->kv_pe = malloc(pe_bytes + 1);
	s->idx_k = malloc(ik_bytes + 1);
	s->kv_bytes = c_bytes + pe_bytes + ik_bytes;
	struct arena a = { 0 };
	layout_buffers(s, &a);
	s->act_bytes = a.used;
	a.base = s->arena = aligned_alloc(64, (a.used + 63) & ~(size_t)63);
	if (!s->kv_c || !s->kv_pe || !s->idx_k || !s->arena) {
		dsm_session_free(s);
		return dsm_fail(DSM_ENOMEM, "out of memory: a context of %lld tokens needs %llu bytes of KV cache and "
				"%llu of buffers", (long long)ctx, (unsigned long long)(c_bytes + pe_bytes + ik_bytes),
				(unsigned long long)a.used);
	}
	a.used = 0;
	layout_buffers(s, &a);
	struct dsm_backend *be = m->be;
	int rc;
	if (be->reserve && (rc = be->reserve(be, s->ctx, c->num_attention_heads,
					     (int64_t)c->kv_lora_rank + c->qk_rope_head_dim)) < 0) {
		dsm_session_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int64_t dsm_session_pos(const struct dsm_session *s)
{
	return s->pos;
}

int64_t dsm_session_ctx(const struct dsm_session *s)
{
	return s->ctx;
}

const struct dsm_model *dsm_session_model(const struct dsm_session *s)
{
	return s->m;
}

int dsm_session_rewind(struct dsm_session *s, int64_t pos)
{
	if (pos < 0 || pos > s->pos)
		return dsm_fail(DSM_EARG, "rewind to %lld: the session holds %lld tokens", (long long)pos,
				(long long)s->pos);
	s->pos = pos;
	return 0;
}

void dsm_session_memory(const struct dsm_session *s, uint64_t *kv_bytes, uint64_t *act_bytes)
{
	*kv_bytes = s->kv_bytes;
	*act_bytes = s->act_bytes;
}

/* cos/sin of angle p * f_i' for each token of the step (docs MODEL.md "YaRN rotary frequencies"). */
static void rope_tables(struct dsm_session *s, int64_t T)
{
	const struct dsm_model *m = s->m;
	int64_t half = m->cfg.qk_rope_head_dim / 2;
	for (int64_t t = 0; t < T; t++) {
		double p = (double)(s->pos + t);
		for (int64_t i = 0; i < half; i++) {
			double ang = p * m->rope_freq[i];
			s->cos[t * half + i] = (float)cos(ang) * m->rope_amp;
			s->sin[t * half + i] = (float)sin(ang) * m->rope_amp;
		}
		s->n_keys[t] = s->pos + t + 1;
	}
}

static void embed(struct dsm_session *s, const int32_t *tokens, int64_t T)
{
	const struct dsm_mat *e = &s->m->embed;
	int64_t D = e->cols;
	for (int64_t t = 0; t < T; t++) {
		size_t row = (size_t)tokens[t] * (size_t)D;
		if (e->dtype == DSM_F32)
			memcpy(s->x + t * D, (const float *)e->data + row, sizeof(float) * (size_t)D);
		else if (e->dtype == DSM_BF16)
			dsm_convert_to_f32(s->x + t * D, (const uint16_t *)e->data + row, DSM_BF16, (size_t)D);
		else
			for (int64_t j = 0; j < D; j++)
				s->x[t * D + j] = dsm_mat_get(e, tokens[t], j);
	}
}

/* One step of T <= max_batch tokens. */
static int step(struct dsm_session *s, const int32_t *tokens, int64_t T, enum dsm_logits_mode mode,
		float *logits)
{
	struct dsm_model *m = s->m;
	struct dsm_backend *be = m->be;
	const struct dsm_config *c = &m->cfg;
	int64_t D = c->hidden_size;
	int rc;
	embed(s, tokens, T);
	rope_tables(s, T);
	for (int L = 0; L < c->num_hidden_layers; L++) {
		if ((rc = dsm_attention(s, L, T)) < 0)
			return dsm_fail_prefix(rc, "layer %d attention", L);
		if ((rc = dsm_feed_forward(s, L, T)) < 0)
			return dsm_fail_prefix(rc, "layer %d feed-forward", L);
	}
	if (mode == DSM_LOGITS_NONE)
		return 0;
	int64_t first = mode == DSM_LOGITS_LAST ? T - 1 : 0;
	int64_t rows = T - first;
	if ((rc = be->rmsnorm(be, rows, D, s->x + first * D, D, m->final_norm, (float)c->rms_norm_eps, s->xn)) < 0)
		return rc;
	return be->matmul(be, &m->head, rows, s->xn, logits);
}

int dsm_session_forward(struct dsm_session *s, const int32_t *tokens, int64_t n, enum dsm_logits_mode mode,
			float *logits)
{
	const struct dsm_config *c = &s->m->cfg;
	if (n <= 0)
		return dsm_fail(DSM_EARG, "forward: no tokens");
	if (n > s->ctx - s->pos)
		return dsm_fail(DSM_ECONTEXT, "context full: %lld tokens in the session plus %lld new exceed the "
				"context of %lld tokens (raise --ctx)", (long long)s->pos, (long long)n,
				(long long)s->ctx);
	for (int64_t i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
			return dsm_fail(DSM_EARG, "token id %d at %lld is outside the vocabulary [0, %d)", tokens[i],
					(long long)i, c->vocab_size);
	for (int64_t done = 0; done < n;) {
		int64_t T = n - done < s->max_batch ? n - done : s->max_batch;
		int last = done + T == n;
		enum dsm_logits_mode sm = mode == DSM_LOGITS_ALL ? mode : (last ? mode : DSM_LOGITS_NONE);
		float *out = mode == DSM_LOGITS_ALL ? logits + (size_t)done * (size_t)c->vocab_size : logits;
		int rc = step(s, tokens + done, T, sm, out);
		if (rc < 0)
			return rc;
		s->pos += T;
		done += T;
	}
	return 0;
}
