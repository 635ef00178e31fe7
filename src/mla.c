/* MLA attention (docs MODEL.md "MLA attention"), for the T tokens of a step, each at its sequence's position:
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
 * (possibly BF16-rounded) values: the full form gathers a sequence's entries from its KV blocks into one
 * buffer (converted to F32 for kv_b_proj), the absorbed form reads them in the blocks. */
#include "model_internal.h"

#include "error.h"

/* The new rows' latents and rope keys -> their sequences' KV blocks, a run of consecutive positions of one block
 * per call. */
static int cache_store(struct dsm_session *s, int L)
{
	struct dsm_stage *st = s->st;
	struct dsm_backend *be = st->be;
	int64_t r = s->m->cfg.kv_lora_rank, dr = s->m->cfg.qk_rope_head_dim;
	enum dsm_dtype t = s->opt.kv_dtype;
	int rc = 0;
	for (int64_t t0 = 0, t1; t0 < s->T && rc == 0; t0 = t1) {
		int seq = s->row_seq[t0];
		int64_t pos = s->row_pos[t0];
		t1 = dsm_kv_run(s, t0);
		rc = be->convert(be, t1 - t0, r, st->cnorm + t0 * r, DSM_F32, r, dsm_kv_c(s, seq, L, pos), t, r);
		if (rc == 0)
			rc = be->convert(be, t1 - t0, dr, st->kva + t0 * (r + dr) + r, DSM_F32, r + dr,
					 dsm_kv_pe(s, seq, L, pos), t, dr);
	}
	return rc;
}

/* Positions [0, n) of a sequence's latents and rope keys of layer L, gathered from its blocks as F32 into
 * s->st->c_all [n, r] and s->st->pe_all [n, dr]. */
static int cache_gather(struct dsm_session *s, int seq, int L, int64_t n)
{
	struct dsm_stage *st = s->st;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &s->m->cfg;
	enum dsm_dtype t = s->opt.kv_dtype;
	int64_t nb = (n + DSM_KV_BLOCK - 1) / DSM_KV_BLOCK, last = n - (nb - 1) * DSM_KV_BLOCK;
	const void **cb = s->blocks, **pb = s->blocks + s->max_blocks;
	dsm_kv_blocks(s, seq, L, n, cb, pb, NULL);
	int rc = be->gather(be, nb, cb, DSM_KV_BLOCK, last, c->kv_lora_rank, t, st->c_all, DSM_F32);
	return rc < 0 ? rc : be->gather(be, nb, pb, DSM_KV_BLOCK, last, c->qk_rope_head_dim, t, st->pe_all, DSM_F32);
}

/* Full form, for one sequence's part: per head, k_nope and v of every key from kv_b_proj(c), then
 * attention. */
static int attend_full(struct dsm_session *s, int L, const struct dsm_step_part *p, int masked)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->fwd.layers[L].attn;
	int64_t H = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim,
		dv = c->v_head_dim, S = p->pos0 + p->n, t0 = p->row0;
	int rc = cache_gather(s, p->seq, L, S);               /* [S, r], [S, dr] */
	for (int64_t h = 0; h < H && rc == 0; h++) {
		struct dsm_mat w = dsm_mat_rows(a->kv_b, h * (dn + dv), dn + dv);
		if ((rc = be->matmul(be, &w, S, st->c_all, st->kv_head)) < 0) /* [S, dn + dv] */
			return rc;
		struct dsm_attn_full_args args = {
			.n_q = p->n, .dn = dn, .dr = dr, .dv = dv,
			.q = st->q + t0 * H * (dn + dr) + h * (dn + dr), .ldq = H * (dn + dr),
			.kv = st->kv_head, .k_pe = st->pe_all, .n_keys = st->n_keys + t0,
			.mask = masked ? s->mask + t0 : NULL, .scale = m->softmax_scale,
			.out = st->o + t0 * H * dv + h * dv, .ldo = H * dv,
		};
		rc = be->attn_full(be, &args);
	}
	return rc;
}

/* Absorbed form over the latent cache, for rows [0, T) (the parts that take it): the kv_b_proj weights
 * move to the query and output sides: one per-head multiply of every head and row on each side. */
static int attend_absorbed(struct dsm_session *s, int L, int64_t T, int masked)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->fwd.layers[L].attn;
	int64_t H = c->num_attention_heads, dn = c->qk_nope_head_dim, dr = c->qk_rope_head_dim,
		dv = c->v_head_dim, r = c->kv_lora_rank;
	int rc;
	/* q_lat[t, h] = q_nope[t, h] . W[h][0:dn]   ([dn] x [dn, r] -> [r]), every head in one call */
	struct dsm_matmul_heads_args qa = {
		.w = &a->kv_b, .n_heads = H, .head_stride = dn + dv, .head_rows = dn, .transposed = 1, .n = T,
		.x = st->q, .ldx = H * (dn + dr), .x_head = dn + dr, .y = st->q_lat, .ldy = H * r, .y_head = r,
	};
	if ((rc = be->matmul_heads(be, &qa)) < 0)
		return rc;
	for (int i = 0; i < s->n_parts && s->parts[i].absorbed; i++) {
		const struct dsm_step_part *p = &s->parts[i];
		/* the sequence's KV entries read where they lie: a table of its blocks for each */
		const void **cb = s->blocks, **pb = s->blocks + s->max_blocks;
		dsm_kv_blocks(s, p->seq, L, p->pos0 + p->n, cb, pb, NULL);
		for (int64_t t = p->row0; t < p->row0 + p->n; t++) {
			/* q_pe [H, dr]: the rope part of each head's query */
			if ((rc = be->convert(be, H, dr, st->q + t * H * (dn + dr) + dn, DSM_F32, dn + dr, st->q_pe, DSM_F32,
					      dr)) < 0)
				return rc;
			struct dsm_attn_latent_args args = {
				.n_heads = H, .r = r, .dr = dr,
				.q_lat = st->q_lat + t * H * r, .q_pe = st->q_pe,
				.cache_dtype = s->opt.kv_dtype, .c_blocks = cb, .pe_blocks = pb, .block_rows = DSM_KV_BLOCK,
				.n_keys = s->h_n_keys[t],
				.mask = masked ? s->mask[t] : (struct dsm_attn_mask){ 0 },
				.scale = m->softmax_scale, .o_lat = st->o_lat + t * H * r,
			};
			if ((rc = be->attn_latent(be, &args)) < 0)
				return rc;
		}
	}
	/* o[t, h] = W[h][dn:dn+dv] . o_lat[t, h]   ([dv, r] x [r] -> [dv]), every head in one call */
	struct dsm_mat wv = dsm_mat_rows(a->kv_b, dn, H * (dn + dv) - dn);
	struct dsm_matmul_heads_args oa = {
		.w = &wv, .n_heads = H, .head_stride = dn + dv, .head_rows = dv, .transposed = 0, .n = T,
		.x = st->o_lat, .ldx = H * r, .x_head = r, .y = st->o, .ldy = H * dv, .y_head = dv,
	};
	return be->matmul_heads(be, &oa);
}

int dsm_attention(struct dsm_session *s, int L)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_attn_weights *a = &m->fwd.layers[L].attn;
	int64_t T = s->T, D = c->hidden_size, H = c->num_attention_heads, dn = c->qk_nope_head_dim,
		dr = c->qk_rope_head_dim, r = c->kv_lora_rank, rq = c->q_lora_rank;
	float eps = (float)c->rms_norm_eps;
	int rc;

	if ((rc = be->rmsnorm(be, T, D, st->x, D, a->norm, eps, st->xn)) < 0 ||     /* xn [T, D] */
	    (rc = be->matmul(be, &a->q_a, T, st->xn, st->qa)) < 0 ||                   /* [T, rq] */
	    (rc = be->rmsnorm(be, T, rq, st->qa, rq, a->q_a_norm, eps, st->qa)) < 0 ||  /* qr */
	    (rc = be->matmul(be, &a->q_b, T, st->qa, st->q)) < 0 ||                    /* [T, H, dn + dr] */
	    (rc = be->rope(be, T, H, dr, st->q + dn, H * (dn + dr), dn + dr, st->cos, st->sin, 1)) < 0 ||
	    (rc = be->matmul(be, &a->kv_a, T, st->xn, st->kva)) < 0 ||                 /* [T, r + dr] */
	    (rc = be->rmsnorm(be, T, r, st->kva, r + dr, a->kv_a_norm, eps, st->cnorm)) < 0 ||
	    (rc = be->rope(be, T, 1, dr, st->kva + r, r + dr, 0, st->cos, st->sin, 1)) < 0 ||
	    (rc = cache_store(s, L)) < 0)
		return rc;

	int masked = 0;
	if (c->has_indexer && (rc = dsm_indexer(s, L, &masked)) < 0)
		return rc;

	if (s->n_absorbed && (rc = attend_absorbed(s, L, s->n_absorbed, masked)) < 0)
		return rc;
	for (int i = 0; i < s->n_parts; i++)
		if (!s->parts[i].absorbed && (rc = attend_full(s, L, &s->parts[i], masked)) < 0)
			return rc;

	/* x += o_proj(o) */
	if ((rc = be->matmul(be, &a->o, T, st->o, st->y)) < 0)                         /* [T, D] */
		return rc;
	return be->add(be, T * D, st->x, st->y);
}
