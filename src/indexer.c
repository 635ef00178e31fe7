/* The lightning indexer of DeepSeek Sparse Attention (docs MODEL.md "DeepSeek Sparse Attention"):
 *
 *   q_I = wq_b(qr)                    [T, nI, dI]   first dr dims roped NON-interleaved (pairs i, i + dr/2)
 *   k_I = LayerNorm(wk(x))            [T, dI]       first dr dims roped the same way   -> indexer cache
 *   q_I, k_I <- q_I . Had, k_I . Had  orthonormal Hadamard (optionally rounded to FP8, see below)
 *   w   = weights_proj(x) * nI^-0.5 * dI^-0.5                          [T, nI]
 *   I(t, s) = sum_h w[t, h] * relu(q_I[t, h] . k_I[s])                  s <= t
 *   keep the top min(index_topk, t + 1) keys by I, ties to the lower position; MLA masks the others.
 *
 * When t + 1 <= index_topk every earlier key is kept, so the scores are not computed at all.
 *
 * FP8 rounding: the public reference code rounds the rotated q_I and k_I to FP8 E4M3 with one scale per
 * 128 values (amax / 448, amax floored at 1e-4; a power of two 2^ceil(log2(.)) when the config's
 * scale_fmt is ue8m0) before the products. With the model option indexer_fp8 the same rounding is
 * applied here (the rounded values, rescaled, enter the F32 dot products); without it (the default) the
 * scores are computed from the unrounded F32 values, as tests/ref computes them by default. */
#include "model_internal.h"

#include "error.h"

#include <math.h>

/* The selections of rows [t0, t1) (one sequence's part) shown to the hooks: copied to the host and, when a hook
 * forced another, back. */
static int select_hooks(struct dsm_session *s, const struct dsm_step_part *p, int L, int64_t topk)
{
	const struct dsm_session_hooks *hk = &s->opt.hooks;
	int rc = 0;
	for (int64_t t = p->row0; t < p->row0 + p->n && rc == 0; t++) {
		if (s->h_n_keys[t] <= topk)
			continue;
		int32_t *sel = s->st->sel + t * topk, *h = s->h_sel + t * topk;
		size_t bytes = sizeof(int32_t) * (size_t)topk;
		if ((rc = dsm_to_host(s, h, sel, bytes)) < 0)
			return rc;
		if (hk->force_select && hk->force_select(hk->user, p->seq, L, s->row_pos[t], h, topk))
			rc = dsm_to_dev(s, sel, h, bytes);
		if (hk->on_select)
			hk->on_select(hk->user, p->seq, L, s->row_pos[t], h, topk);
	}
	return rc;
}

int dsm_indexer(struct dsm_session *s, int L, int *masked)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_indexer_weights *w = &m->fwd.layers[L].indexer;
	const struct dsm_session_hooks *hk = &s->opt.hooks;
	int64_t T = s->T, nI = c->index_n_heads, dI = c->index_head_dim, dr = c->qk_rope_head_dim, topk = c->index_topk;
	int fp8 = m->opts.indexer_fp8, ue8m0 = c->scale_ue8m0;
	int rc;

	/* keys of the new tokens -> indexer cache */
	if ((rc = be->matmul(be, &w->wk, T, st->xn, st->ik)) < 0 ||                     /* [T, dI] */
	    (rc = be->layernorm(be, T, dI, st->ik, w->k_norm_w, w->k_norm_b, 1e-6f, st->ik)) < 0 ||
	    (rc = be->rope(be, T, 1, dr, st->ik, dI, 0, st->cos, st->sin, 0)) < 0 ||
	    (rc = be->hadamard(be, T, dI, st->ik)) < 0)
		return rc;
	for (int64_t t0 = 0, t1; t0 < T; t0 = t1) {  /* a run of rows lying one after another in a block per call */
		float *dst = dsm_kv_ik(s, s->row_seq[t0], L, s->row_pos[t0]);
		t1 = dsm_kv_run(s, t0);
		if ((rc = be->convert(be, t1 - t0, dI, st->ik + t0 * dI, DSM_F32, dI, dst, DSM_F32, dI)) < 0 ||
		    (fp8 && (rc = be->fp8_round(be, t1 - t0, dI, dst, ue8m0)) < 0))
			return rc;
	}

	*masked = 0;
	int64_t choosing = 0;
	for (int64_t t = 0; t < T; t++) {
		s->mask[t] = (struct dsm_attn_mask){ 0 };
		choosing += s->h_n_keys[t] > topk;
	}
	if (!choosing)
		return 0;                 /* every query keeps all its keys: dense attention */

	if ((rc = be->matmul(be, &w->wq_b, T, st->qa, st->iq)) < 0 ||                   /* [T, nI, dI] */
	    (rc = be->rope(be, T, nI, dr, st->iq, nI * dI, dI, st->cos, st->sin, 0)) < 0 ||
	    (rc = be->hadamard(be, T * nI, dI, st->iq)) < 0 ||
	    (rc = be->matmul(be, &w->weights_proj, T, st->xn, st->iw)) < 0 ||           /* [T, nI] */
	    (fp8 && (rc = be->fp8_round(be, T * nI, dI, st->iq, ue8m0)) < 0) ||
	    (rc = be->scale(be, T * nI, st->iw, (float)(1.0 / sqrt((double)nI) / sqrt((double)dI)))) < 0)
		return rc;
	for (int i = 0; i < s->n_parts; i++) {
		const struct dsm_step_part *p = &s->parts[i];
		int64_t t1 = p->row0 + p->n, n_all = s->h_n_keys[t1 - 1];
		if (n_all <= topk)
			continue;
		/* the sequence's keys [0, its end), read where they lie: a table of its blocks */
		dsm_kv_blocks(s, p->seq, L, n_all, NULL, NULL, s->blocks);
		const float *const *kb = (const float *const *)s->blocks;
		for (int64_t t = p->row0; t < t1; t++) {
			int64_t n_keys = s->h_n_keys[t];
			if (n_keys <= topk)
				continue;
			int32_t *sel = st->sel + t * topk;
			if ((rc = be->indexer_scores(be, nI, dI, st->iq + t * nI * dI, st->iw + t * nI, NULL, kb, DSM_KV_BLOCK,
						     n_keys, st->iscore)) < 0 ||
			    (rc = be->topk(be, st->iscore, n_keys, topk, sel)) < 0)
				return rc;
			s->mask[t] = (struct dsm_attn_mask){ .sel = sel, .n_sel = topk };
		}
		if ((hk->force_select || hk->on_select) && (rc = select_hooks(s, p, L, topk)) < 0)
			return rc;
	}
	*masked = 1;
	return 0;
}
