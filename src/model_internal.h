/* Shared by the files of the forward pass (session.c, mla.c, indexer.c, moe.c): the run state. */
#ifndef DSM_MODEL_INTERNAL_H
#define DSM_MODEL_INTERNAL_H

#include "model.h"
#include "session.h"

/* One sequence: its positions and the KV blocks that hold them. */
struct dsm_seq {
	int live;
	int64_t pos;        /* positions held */
	int32_t *blocks;    /* [ceil(ctx / DSM_KV_BLOCK)] block ids; [0, ceil(pos / DSM_KV_BLOCK)) in use */
};

/* A sequence's part of the current step: rows [row0, row0 + n) of the step buffers. */
struct dsm_step_part {
	int seq;
	int64_t row0, n;
	int64_t pos0;       /* position of its first token */
	int absorbed;       /* attention in the absorbed form (rows [0, n_absorbed) of the step) */
};

/* What one stage of the forward pass (m->fwd: one backend, a run of layers) holds in its backend's memory: its
 * layers' part of the KV pool and the step state. */
struct dsm_stage {
	struct dsm_backend *be;     /* m->fwd.stage_be[k]: computes the stage's layers */
	int layer0, layer_end;      /* the stage's layers [layer0, layer_end) */
	struct dsm_queue *queue;    /* be's queue for the step's work (NULL on a host backend) */
	struct dsm_event *done;     /* recorded to wait for a copy to the host */
	struct dsm_event *seg;      /* recorded where the device's part of a step resumes after a wait (times.device) */
	int seg_open;               /* seg recorded and not yet counted */

	/* the stage's part of the KV pool: in block b at b * block_bytes, per layer L at (L - layer0) * layer_bytes:
	 * c [DSM_KV_BLOCK, r] and k_pe [DSM_KV_BLOCK, dr] in kv_dtype, then indexer keys [DSM_KV_BLOCK, dI] F32 */
	char *kv;
	size_t block_bytes;
	uint64_t kv_bytes;

	/* step state for up to B = max_batch rows (the session's h_* are their host copies) */
	float *x;           /* [B, D] residual stream */
	float *xn;          /* [B, D] normed input of a block */
	float *y;           /* [B, D] output of a block */
	float *cos, *sin;   /* [B, dr/2] rope of each row */
	int64_t *n_keys;    /* [B] position + 1 */

	/* MLA */
	float *qa;          /* [B, rq] q_a_proj, then its norm (qr, also the indexer's input) */
	float *q;           /* [B, H, dn + dr] */
	float *kva;         /* [B, r + dr] kv_a_proj_with_mqa */
	float *cnorm;       /* [B, r] normed latent */
	float *o;           /* [B, H * dv] head outputs */
	float *c_all;       /* [ctx, r] one sequence's latents in F32 (full form; the absorbed form reads the blocks) */
	float *pe_all;      /* [ctx, dr] its rope keys, likewise */
	float *kv_head;     /* [ctx, dn + dv] full form: one head's k_nope and v */
	float *q_lat;       /* [B, H, r] absorbed form */
	float *q_pe;        /* [H, dr] absorbed form: one token's rope queries */
	float *o_lat;       /* [B, H, r] absorbed form */

	/* lightning indexer */
	float *ik;          /* [B, dI] */
	float *iq;          /* [B, nI, dI] */
	float *iw;          /* [B, nI] */
	float *iscore;      /* [ctx] */
	int32_t *sel;       /* [B, topk] */

	/* feed-forward */
	float *rlogits;     /* [B, E] router logits */
	int32_t *ridx;      /* [B, k] */
	float *rw;          /* [B, k] */
	float *logits;      /* [min(B, max_seqs), V] the last row of each part ([B, V] on a device: every row) */

	void *dev_arena;    /* be's memory: the step state */
	uint64_t dev_bytes;
};

struct dsm_session {
	struct dsm_model *m;
	struct dsm_stage stage[DSM_MAX_GPUS]; /* n_stages of them, one per stage of m->fwd */
	int n_stages;
	struct dsm_stage *st;       /* the stage of the layer being run: its backend, buffers and KV pool */
	int on_device;              /* the stages' backends have their own memory: the host reads the step state
				     * through the h_ copies */
	struct dsm_session_options opt;
	int64_t ctx, max_batch;
	int max_seqs;
	struct dsm_seq *seqs;       /* [max_seqs] */

	/* The KV pool: n_blocks blocks; block b is split among the stages (struct dsm_stage: kv), block_bytes in all */
	int64_t n_blocks, n_free;
	int32_t *ref;               /* [n_blocks] sequences using each block */
	int32_t *free_blocks;       /* [n_blocks] stack of free block ids, n_free of them */
	size_t block_bytes, layer_bytes, pe_offset, ik_offset;
	uint64_t kv_bytes;

	/* the current step: parts[n_parts], T rows, the first n_absorbed of them in the absorbed form */
	struct dsm_step_part *parts; /* [max_seqs] */
	int n_parts;
	int64_t T, n_absorbed;
	int32_t *row_seq;   /* [B] sequence of each row */
	int64_t *row_pos;   /* [B] position of each row */

	struct dsm_step_times times; /* wall time by part of the pass (dsm_session_times) */

	/* host copies of the stages' step state (the stage's buffer itself when the backend computes in host memory) */
	float *h_xn, *h_y, *h_cos, *h_sin, *h_rlogits, *h_rw;
	int64_t *h_n_keys;
	int32_t *h_sel, *h_ridx;
	struct dsm_attn_mask *mask; /* [B] host table; its lists point into sel */
	const void **blocks;        /* [2, max_blocks] host tables: one layer's entries in a sequence's blocks */
	int64_t max_blocks;         /* ceil(ctx / DSM_KV_BLOCK) */

	void *arena;        /* host: the sequences, the parts, the h_ copies (pinned on a device) */
	uint64_t host_bytes, dev_bytes; /* the host arena, the stages' arenas together */
};

/* x [T, D] += Attn_L(RMSNorm(x)) for the step's rows (mla.c) */
int dsm_attention(struct dsm_session *s, int L);
/* Fills s->mask[0 .. T) for layer L from the indexer and stores the new indexer keys (indexer.c).
 * xn [T, D] normed input, s->qa holds qr. *masked = 0 when every query attends to all earlier keys. */
int dsm_indexer(struct dsm_session *s, int L, int *masked);
/* x [T, D] += FFN_L(RMSNorm(x)): dense SwiGLU or MoE (moe.c) */
int dsm_feed_forward(struct dsm_session *s, int L);

/* The KV entries of layer L (of the current stage) at position pos of sequence seq: the latent c [r] (kv_dtype), the rope key
 * k_pe [dr] (kv_dtype) and the indexer key [dI] (F32). */
static inline char *dsm_kv_at(const struct dsm_session *s, int seq, int L, int64_t pos)
{
	int32_t b = s->seqs[seq].blocks[pos / DSM_KV_BLOCK];
	return s->st->kv + (size_t)b * s->st->block_bytes + (size_t)(L - s->st->layer0) * s->layer_bytes;
}
static inline void *dsm_kv_c(const struct dsm_session *s, int seq, int L, int64_t pos)
{
	size_t es = dsm_dtype_size(s->opt.kv_dtype);
	return dsm_kv_at(s, seq, L, pos) + (size_t)(pos % DSM_KV_BLOCK) * (size_t)s->m->cfg.kv_lora_rank * es;
}
static inline void *dsm_kv_pe(const struct dsm_session *s, int seq, int L, int64_t pos)
{
	size_t es = dsm_dtype_size(s->opt.kv_dtype);
	return dsm_kv_at(s, seq, L, pos) + s->pe_offset +
	       (size_t)(pos % DSM_KV_BLOCK) * (size_t)s->m->cfg.qk_rope_head_dim * es;
}
static inline float *dsm_kv_ik(const struct dsm_session *s, int seq, int L, int64_t pos)
{
	return (float *)(dsm_kv_at(s, seq, L, pos) + s->ik_offset) +
	       (size_t)(pos % DSM_KV_BLOCK) * (size_t)s->m->cfg.index_head_dim;
}

/* Tables of where positions [0, n) of sequence seq lie in layer L's KV blocks, one entry a block: the latents (c),
 * the rope keys (pe), the indexer keys (ik); a NULL table is left out. */
static inline void dsm_kv_blocks(const struct dsm_session *s, int seq, int L, int64_t n, const void **c,
				 const void **pe, const void **ik)
{
	for (int64_t b = 0; b * DSM_KV_BLOCK < n; b++) {
		if (c)
			c[b] = dsm_kv_c(s, seq, L, b * DSM_KV_BLOCK);
		if (pe)
			pe[b] = dsm_kv_pe(s, seq, L, b * DSM_KV_BLOCK);
		if (ik)
			ik[b] = dsm_kv_ik(s, seq, L, b * DSM_KV_BLOCK);
	}
}

/* The end of the run of rows from t0 whose KV entries lie one after another: one sequence, consecutive positions,
 * one block. */
static inline int64_t dsm_kv_run(const struct dsm_session *s, int64_t t0)
{
	int64_t t1 = t0 + 1;
	while (t1 < s->T && s->row_seq[t1] == s->row_seq[t0] && s->row_pos[t1] == s->row_pos[t0] + (t1 - t0) &&
	       s->row_pos[t1] % DSM_KV_BLOCK)
		t1++;
	return t1;
}

/* Copies between host memory and the current stage's backend memory, in the order of the step's other work; dsm_to_host
 * waits for its copy, dsm_to_host_queued not (dsm_device_wait waits for everything submitted). dsm_dev_copy: within
 * the backend's memory. */
int dsm_to_dev(struct dsm_session *s, void *dst, const void *src, size_t bytes);
int dsm_to_host(struct dsm_session *s, void *dst, const void *src, size_t bytes);
int dsm_to_host_queued(struct dsm_session *s, void *dst, const void *src, size_t bytes);
int dsm_device_wait(struct dsm_session *s);
/* The device resumes the step's work here (after dsm_device_wait): the time to the next wait counts as device time. */
int dsm_device_resume(struct dsm_session *s);
int dsm_dev_copy(struct dsm_session *s, void *dst, const void *src, size_t bytes);

/* Monotonic wall time in seconds (for the step times). */
double dsm_now(void);

#endif
