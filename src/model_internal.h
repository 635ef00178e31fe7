/* Shared by the files of the forward pass (session.c, mla.c, indexer.c, moe.c): the run state. */
#ifndef DSM_MODEL_INTERNAL_H
#define DSM_MODEL_INTERNAL_H

#include "model.h"
#include "session.h"

struct dsm_session {
	struct dsm_model *m;
	struct dsm_session_options opt;
	int64_t ctx, max_batch, pos;

	/* caches, per layer L at [L * ctx + position] */
	void *kv_c;         /* [layers, ctx, r]  latent, o.kv_dtype */
	void *kv_pe;        /* [layers, ctx, dr] roped key, o.kv_dtype */
	float *idx_k;       /* [layers, ctx, dI] indexer keys (V3.2) */
	uint64_t kv_bytes;

	/* step state for up to B = max_batch tokens at positions pos .. pos + T - 1 */
	float *x;           /* [B, D] residual stream */
	float *xn;          /* [B, D] normed input of a block */
	float *y;           /* [B, D] output of a block */
	float *cos, *sin;   /* [B, dr/2] rope of each token */
	int64_t *n_keys;    /* [B] position + 1 */

	/* MLA */
	float *qa;          /* [B, rq] q_a_proj, then its norm (qr, also the indexer's input) */
	float *q;           /* [B, H, dn + dr] */
	float *kva;         /* [B, r + dr] kv_a_proj_with_mqa */
	float *cnorm;       /* [B, r] normed latent */
	float *o;           /* [B, H * dv] head outputs */
	float *c_all;       /* [ctx, r] full form: cache rows as F32 */
	float *pe_all;      /* [ctx, dr] full form: rope keys as F32 */
	float *kv_head;     /* [ctx, dn + dv] full form: one head's k_nope and v */
	float *q_head;      /* [B, max(dn, r)] absorbed form: one head's gathered q_nope / o_lat */
	float *q_lat;       /* [B, H, r] absorbed form */
	float *q_pe;        /* [H, dr] absorbed form: one token's rope queries */
	float *o_lat;       /* [B, H, r] absorbed form */
	float *o_head;      /* [B, max(dv, r)] absorbed form: one head's output */

	/* lightning indexer */
	float *ik;          /* [B, dI] */
	float *iq;          /* [B, nI, dI] */
	float *iw;          /* [B, nI] */
	float *iscore;      /* [ctx] */
	int32_t *sel;       /* [B, topk] */
	struct dsm_attn_mask *mask; /* [B] */

	/* feed-forward */
	float *rlogits;     /* [B, E] router logits */
	int32_t *ridx;      /* [B, k] */
	float *rw;          /* [B, k] */
	struct dsm_ffn_weights *ew;               /* [E] weights of the chosen experts */
	const struct dsm_ffn_weights **ep;        /* [E] &ew[e] when e is chosen, else NULL */
	float *ye;          /* [B, D] the shared expert's output (tiered store) */

	void *arena;
	uint64_t act_bytes;
};

/* x [T, D] += Attn_L(RMSNorm(x)) for T tokens at positions s->pos .. (mla.c) */
int dsm_attention(struct dsm_session *s, int L, int64_t T);
/* Fills s->mask[0 .. T) for layer L from the indexer and stores the new indexer keys (indexer.c).
 * xn [T, D] normed input, s->qa holds qr. *masked = 0 when every query attends to all earlier keys. */
int dsm_indexer(struct dsm_session *s, int L, int64_t T, int *masked);
/* x [T, D] += FFN_L(RMSNorm(x)): dense SwiGLU or MoE (moe.c) */
int dsm_feed_forward(struct dsm_session *s, int L, int64_t T);

/* Rows of a cache of dtype t: [L, ctx, width] at (L, position). */
static inline void *dsm_cache_row(const struct dsm_session *s, void *base, int L, int64_t pos, int64_t width)
{
	size_t es = s->opt.kv_dtype == DSM_BF16 ? 2 : 4;
	return (char *)base + (((size_t)L * (size_t)s->ctx + (size_t)pos) * (size_t)width) * es;
}

#endif
