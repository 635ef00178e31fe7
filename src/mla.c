/* MLA attention (docs MODEL.md "MLA attention"), for T tokens at positions pos .. pos + T - 1:
 *
 *   qr   = RMSNorm_q(q_a_proj(x))                [T, rq]     (also feeds the indexer)
 *   q    = q_b_proj(qr)                          [T, H, dn + dr]; q_pe = last dr, roped interleaved
 *   kv   = kv_a_proj_with_mqa(x)                 [T, r + dr]
 *   c    = RMSNorm_kv(kv[:, :r])                 [T, r]  latent, shared by the heads  -> cache
 *   k_pe = rope(kv[:, r:])                       [T, dr]                              -> cache
 *   full form (prefill):  k_nope, v = kv_b_proj(c) per head; softmax((q_nope.k_nope + q_pe.k_pe) * scale) v
 *   absorbed form (decode): q_lat = q_nope . W_k[h]; softmax((q_lat.c + q_pe.k_pe) * scale);
 *                           o = W_v[h] . sum p c
 *   out  = o_proj(o)                             [T, D]
 * The attention reads c and k_pe back from the cache in both forms, so that both see the same
 * (possibly BF16-rounded) values. */
#include "model_internal.h"

#include "error.h"

#include <string.h>

static void cache_store(struct dsm_session *s, void *base, int L, int64_t pos, const float *src, int64_t width)
{
	void *dst = dsm_cache_row(s, base, L, pos, width);
	if (s->opt.kv_dtype == DSM_F32) {
		memcpy(dst, src, sizeof(float) * (size_t)width);
	} else {
		uint16_t *b = dst;
		for (int64_t j = 0; j < width; j++)
			b[j] = dsm_f32_to_bf16(src[j]);
	}
}

static void cache_load(struct dsm_session *s, void *base, int L, int64_t n, int64_t width, float *dst)
{
	const void *src = dsm_cache_row(s, base, L, 0, width);
	dsm_convert_to_f32(dst, src, s->opt.kv_dtype, (size_t)n * (size_t)width);
}

/* Full form: per head, k_nope and v of every key from kv_b_proj(c), then attention. */
static int attend_full(struct dsm_session *s, int L, int64_t T, int masked)
{
	struct dsm_model *m = s->m;
	struct dsm_backend *be = m->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->layers[L].attn;
	int64_t H = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim,
		dv = c->v_head_dim, r = c->kv_lora_rank, S = s->pos + T;
	cache_load(s, s->kv_c, L, S, r, s->c_all);         /* [S, r] */
	cache_load(s, s->kv_pe, L, S, dr, s->pe_all);      /* [S, dr] */
	for (int64_t h = 0; h < H; h++) {
		struct dsm_mat w = dsm_mat_rows(a->kv_b, h * (dn + dv), dn + dv);
		int rc = be->matmul(be, &w, S, s->c_all, s->kv_head);  /* [S, dn + dv] */
		if (rc < 0)
			return rc;
		struct dsm_attn_full_args args = {
			.n_q = T, .dn = dn, .dr = dr, .dv = dv,
			.q = s->q + h * (dn + dr), .ldq = H * (dn + dr),
			.kv = s->kv_head, .k_pe = s->pe_all, .n_keys = s->n_keys,
			.mask = masked ? s->mask : NULL, .scale = m->softmax_scale,
			.out = s->o + h * dv, .ldo = H * dv,
		};
		if ((rc = be->attn_full(be, &args)) < 0)
			return rc;
	}
	return 0;
}

/* Absorbed form over the latent cache: the kv_b_proj weights move to the query and output sides. */
static int attend_absorbed(struct dsm_session *s, int L, int64_t T, int masked)
{
	struct dsm_model *m = s->m;
	struct dsm_backend *be = m->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->layers[L].attn;
	int64_t H = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim,
		dv = c->v_head_dim, r = c->kv_lora_rank;
	int rc;
	/* q_lat[t, h] = q_nope[t, h] . W[h][0:dn]   ([dn] x [dn, r] -> [r]) */
	for (int64_t h = 0; h < H; h++) {
		for (int64_t t = 0; t < T; t++)
			memcpy(s->q_head + t * dn, s->q + (t * H + h) * (dn + dr), sizeof(float) * (size_t)dn);
		struct dsm_mat wk = dsm_mat_rows(a->kv_b, h * (dn + dv), dn);
		if ((rc = be->matmul_t(be, &wk, T, s->q_head, s->o_head)) < 0)
			return rc;
		for (int64_t t = 0; t < T; t++)
			memcpy(s->q_lat + (t * H + h) * r, s->o_head + t * r, sizeof(float) * (size_t)r);
	}
	for (int64_t t = 0; t < T; t++) {
		for (int64_t h = 0; h < H; h++)
			memcpy(s->q_pe + h * dr, s->q + (t * H + h) * (dn + dr) + dn, sizeof(float) * (size_t)dr);
		struct dsm_attn_latent_args args = {
			.n_heads = H, .r = r, .dr = dr,
			.q_lat = s->q_lat + t * H * r, .q_pe = s->q_pe,
			.cache_dtype = s->opt.kv_dtype,
			.c = dsm_cache_row(s, s->kv_c, L, 0, r), .k_pe = dsm_cache_row(s, s->kv_pe, L, 0, dr),
			.n_keys = s->n_keys[t],
			.mask = masked ? s->mask[t] : (struct dsm_attn_mask){ 0 },
			.scale = m->softmax_scale, .o_lat = s->o_lat + t * H * r,
		};
		if ((rc = be->attn_latent(be, &args)) < 0)
			return rc;
	}
	/* o[t, h] = W[h][dn:dn+dv] . o_lat[t, h]   ([dv, r] x [r] -> [dv]) */
	for (int64_t h = 0; h < H; h++) {
		for (int64_t t = 0; t < T; t++)
			memcpy(s->q_head + t * r, s->o_lat + (t * H + h) * r, sizeof(float) * (size_t)r);
		struct dsm_mat wv = dsm_mat_rows(a->kv_b, h * (dn + dv) + dn, dv);
		if ((rc = be->matmul(be, &wv, T, s->q_head, s->o_head)) < 0)
			return rc;
		for (int64_t t = 0; t < T; t++)
			memcpy(s->o + (t * H + h) * dv, s->o_head + t * dv, sizeof(float) * (size_t)dv);
	}
	return 0;
}

int dsm_attention(struct dsm_session *s, int L, int64_t T)
{
	struct dsm_model *m = s->m;
	struct dsm_backend *be = m->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->layers[L].attn;
	int64_t D = c->hidden_size, H = c->num_attention_heads, dn = c->qk_nope_head_dim,
		dr = c->qk_rope_head_dim, dv = c->v_head_dim, r = c->kv_lora_rank, rq = c->q_lora_rank;
	float eps = (float)c->rms_norm_eps;
	int rc;

	if ((rc = be->rmsnorm(be, T, D, s->x, D, a->norm, eps, s->xn)) < 0 ||       /* xn [T, D] */
	    (rc = be->matmul(be, &a->q_a, T, s->xn, s->qa)) < 0 ||                     /* [T, rq] */
	    (rc = be->rmsnorm(be, T, rq, s->qa, rq, a->q_a_norm, eps, s->qa)) < 0 ||    /* qr */
	    (rc = be->matmul(be, &a->q_b, T, s->qa, s->q)) < 0 ||                      /* [T, H, dn + dr] */
	    (rc = be->rope(be, T, H, dr, s->q + dn, H * (dn + dr), dn + dr, s->cos, s->sin, 1)) < 0 ||
	    (rc = be->matmul(be, &a->kv_a, T, s->xn, s->kva)) < 0 ||                   /* [T, r + dr] */
	    (rc = be->rmsnorm(be, T, r, s->kva, r + dr, a->kv_a_norm, eps, s->cnorm)) < 0 ||
	    (rc = be->rope(be, T, 1, dr, s->kva + r, r + dr, 0, s->cos, s->sin, 1)) < 0)
		return rc;
	for (int64_t t = 0; t < T; t++) {
		cache_store(s, s->kv_c, L, s->pos + t, s->cnorm + t * r, r);
		cache_store(s, s->kv_pe, L, s->pos + t, s->kva + t * (r + dr) + r, dr);
	}

	int masked = 0;
	if (c->has_indexer && (rc = dsm_indexer(s, L, T, &masked)) < 0)
		return rc;

	enum dsm_mla_form form = m->opts.mla_form;
	if (form == DSM_MLA_AUTO)
		form = T > 1 ? DSM_MLA_FULL : DSM_MLA_ABSORBED;
	rc = form == DSM_MLA_FULL ? attend_full(s, L, T, masked) : attend_absorbed(s, L, T, masked);
	if (rc < 0)
		return rc;

	/* x += o_proj(o) */
	if ((rc = be->matmul(be, &a->o, T, s->o, s->y)) < 0)                           /* [T, D] */
		return rc;
	for (int64_t i = 0; i < T * D; i++)
		s->x[i] += s->y[i];
	(void)dv;
	return 0;
}
