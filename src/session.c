/* The forward pass driver (docs MODEL.md section 3), for the tokens of every sequence of a step:
 *
 *   h = embed(tokens)                      no scaling
 *   for each layer L:
 *       h += Attn_L(RMSNorm(h))            mla.c (+ indexer.c on V3.2): per sequence over its KV blocks
 *       h += FFN_L(RMSNorm(h))             moe.c: dense SwiGLU or MoE, once over all the step's tokens
 *   logits = lm_head(RMSNorm(h))           F32, for the rows asked for
 *
 * and the session's memory: the KV block pool, the sequences, the step buffers sized by max_batch, all
 * allocated here once. */
#include "model_internal.h"

#include "error.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

static int64_t blocks_for(int64_t positions)
{
	return (positions + DSM_KV_BLOCK - 1) / DSM_KV_BLOCK;
}

/* The host copy of a stage's buffer: its own in host memory h, or the buffer itself on a host backend. */
static void *mirror(struct dsm_session *s, struct arena *h, void *dev, size_t bytes)
{
	return s->on_device ? take(h, bytes) : dev;
}

/* The host tables and copies of the session in h (h NULL: none), and stage st's buffers in d (in its backend's
 * memory on a device). */
static void layout_buffers(struct dsm_session *s, struct arena *h, struct dsm_stage *st, struct arena *d)
{
	const struct dsm_config *c = &s->m->cfg;
	size_t B = (size_t)s->max_batch, ctx = (size_t)s->ctx, f = sizeof(float), S = (size_t)s->max_seqs;
	size_t D = (size_t)c->hidden_size, H = (size_t)c->num_attention_heads, dn = (size_t)c->qk_nope_head_dim,
	       dr = (size_t)c->qk_rope_head_dim, dv = (size_t)c->v_head_dim, r = (size_t)c->kv_lora_rank,
	       rq = (size_t)c->q_lora_rank, E = (size_t)c->n_routed_experts, k = (size_t)c->num_experts_per_tok;
	size_t topk = c->has_indexer ? (size_t)c->index_topk : 0;
	if (topk > ctx)
		topk = ctx;
	st->x = take(d, B * D * f);
	st->xn = take(d, B * D * f);
	st->y = take(d, B * D * f);
	st->cos = take(d, B * dr / 2 * f);
	st->sin = take(d, B * dr / 2 * f);
	st->n_keys = take(d, B * sizeof(int64_t));
	st->qa = take(d, B * rq * f);
	st->q = take(d, B * H * (dn + dr) * f);
	st->kva = take(d, B * (r + dr) * f);
	st->cnorm = take(d, B * r * f);
	st->o = take(d, B * H * dv * f);
	st->c_all = take(d, ctx * r * f);
	st->pe_all = take(d, ctx * dr * f);
	st->kv_head = take(d, ctx * (dn + dv) * f);
	st->q_lat = take(d, B * H * r * f);
	st->q_pe = take(d, H * dr * f);
	st->o_lat = take(d, B * H * r * f);
	if (c->has_indexer) {
		size_t nI = (size_t)c->index_n_heads, dI = (size_t)c->index_head_dim;
		st->ik = take(d, B * dI * f);
		st->iq = take(d, B * nI * dI * f);
		st->iw = take(d, B * nI * f);
		st->iscore = take(d, ctx * f);
		st->sel = take(d, B * topk * sizeof(int32_t));
	}
	if (E) {
		st->rlogits = take(d, B * E * f);
		st->ridx = take(d, B * k * sizeof(int32_t));
		st->rw = take(d, B * k * f);
	}
	/* the last row of each part; on a device, every row of a part too */
	st->logits = take(d, (s->on_device ? B : B < S ? B : S) * (size_t)c->vocab_size * f);
	if (!h)
		return;
	s->seqs = take(h, S * sizeof(struct dsm_seq));
	for (size_t i = 0; i < S; i++) {
		int32_t *blocks = take(h, (size_t)blocks_for(s->ctx) * sizeof(int32_t));
		if (h->base)
			s->seqs[i].blocks = blocks;
	}
	s->ref = take(h, (size_t)s->n_blocks * sizeof(int32_t));
	s->free_blocks = take(h, (size_t)s->n_blocks * sizeof(int32_t));
	s->parts = take(h, S * sizeof(struct dsm_step_part));
	s->row_seq = take(h, B * sizeof(int32_t));
	s->row_pos = take(h, B * sizeof(int64_t));
	s->mask = take(h, B * sizeof(struct dsm_attn_mask));
	s->max_blocks = blocks_for(s->ctx);
	s->blocks = take(h, 2 * (size_t)s->max_blocks * sizeof(void *));
	s->h_xn = mirror(s, h, st->xn, B * D * f);
	s->h_y = mirror(s, h, st->y, B * D * f);
	s->h_cos = mirror(s, h, st->cos, B * dr / 2 * f);
	s->h_sin = mirror(s, h, st->sin, B * dr / 2 * f);
	s->h_n_keys = mirror(s, h, st->n_keys, B * sizeof(int64_t));
	s->h_sel = c->has_indexer ? mirror(s, h, st->sel, B * topk * sizeof(int32_t)) : NULL;
	if (E) {
		s->h_rlogits = mirror(s, h, st->rlogits, B * E * f);
		s->h_ridx = mirror(s, h, st->ridx, B * k * sizeof(int32_t));
		s->h_rw = mirror(s, h, st->rw, B * k * f);
	}
}

/* Memory of the backend (device memory, or plain on a host backend), and the host memory it copies from and to
 * at full speed (pinned on a device). */
static void *dev_alloc(struct dsm_backend *be, size_t bytes)
{
	return be->alloc ? be->alloc(be, bytes) : aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void dev_free(struct dsm_backend *be, void *p)
{
	be->free ? be->free(be, p) : free(p);
}

static void *pinned_alloc(struct dsm_backend *be, size_t bytes)
{
	return be->host_alloc ? be->host_alloc(be, bytes) : aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void pinned_free(struct dsm_backend *be, void *p)
{
	be->host_free ? be->host_free(be, p) : free(p);
}

void dsm_session_free(struct dsm_session *s)
{
	if (!s)
		return;
	for (int k = 0; k < s->n_stages; k++) {
		struct dsm_stage *st = &s->stage[k];
		struct dsm_backend *be = st->be;
		if (be->queue_destroy)
			be->queue_destroy(be, st->queue);
		if (be->event_destroy) {
			be->event_destroy(be, st->done);
			be->event_destroy(be, st->seg);
		}
		dev_free(be, st->kv);
		dev_free(be, st->dev_arena);
	}
	if (s->arena)
		pinned_free(s->stage[0].be, s->arena);
	free(s);
}

/* The session's sizes from its options and its stages (s->stage[0 .. n_stages) with their backend and layers):
 * context, batch, the KV pool and its blocks, and the bytes of the host and device buffers (counted by a layout
 * without memory). */
static int size_session(struct dsm_session *s, struct dsm_model *m, const struct dsm_session_options *o)
{
	const struct dsm_config *c = &m->cfg;
	if (o)
		s->opt = *o;
	s->m = m;
	s->on_device = s->stage[0].be->alloc != NULL;
	s->ctx = s->opt.ctx > 0 ? s->opt.ctx : 4096;
	if (s->ctx > c->max_position_embeddings)
		s->ctx = c->max_position_embeddings;
	s->max_batch = s->opt.max_batch > 0 ? s->opt.max_batch : 128;
	s->max_seqs = s->opt.max_seqs > 0 ? s->opt.max_seqs : 1;
	if (s->opt.kv_dtype == DSM_DTYPE_INVALID)
		s->opt.kv_dtype = DSM_BF16;
	if (s->opt.kv_dtype != DSM_BF16 && s->opt.kv_dtype != DSM_F32)
		return dsm_fail(DSM_EARG, "KV cache dtype must be BF16 or F32");
	size_t es = dsm_dtype_size(s->opt.kv_dtype), bt = DSM_KV_BLOCK;
	s->pe_offset = bt * (size_t)c->kv_lora_rank * es;
	s->ik_offset = s->pe_offset + bt * (size_t)c->qk_rope_head_dim * es;
	s->layer_bytes = s->ik_offset + (c->has_indexer ? bt * (size_t)c->index_head_dim * sizeof(float) : 0);
	s->layer_bytes = (s->layer_bytes + 63) & ~(size_t)63;
	s->block_bytes = s->layer_bytes * (size_t)c->num_hidden_layers;
	int64_t per_seq = blocks_for(s->ctx);
	if (s->opt.kv_pool_bytes) {
		uint64_t n = s->opt.kv_pool_bytes / s->block_bytes;
		if (n < (uint64_t)per_seq)
			return dsm_fail(DSM_EARG, "a KV pool of %llu bytes holds %llu blocks of %d positions (%zu bytes each): "
					"one sequence's context of %lld tokens needs %lld blocks (%llu bytes); raise the pool "
					"or lower the context", (unsigned long long)s->opt.kv_pool_bytes, (unsigned long long)n,
					DSM_KV_BLOCK, s->block_bytes, (long long)s->ctx, (long long)per_seq,
					(unsigned long long)per_seq * s->block_bytes);
		s->n_blocks = n > INT32_MAX ? INT32_MAX : (int64_t)n;
	} else {
		s->n_blocks = per_seq * s->max_seqs;
	}
	s->kv_bytes = (uint64_t)s->n_blocks * s->block_bytes;
	struct arena h = { 0 };
	s->dev_bytes = 0;
	for (int k = 0; k < s->n_stages; k++) {
		struct dsm_stage *st = &s->stage[k];
		struct arena d = { 0 };
		st->block_bytes = s->layer_bytes * (size_t)(st->layer_end - st->layer0);
		st->kv_bytes = (uint64_t)s->n_blocks * st->block_bytes;
		layout_buffers(s, k ? NULL : &h, st, &d);
		st->dev_bytes = d.used;
		s->dev_bytes += d.used;
	}
	s->host_bytes = h.used;
	return 0;
}

void dsm_session_device_bytes(struct dsm_model *m, struct dsm_backend *dev, int layer0, int layer_end,
			      const struct dsm_session_options *o, uint64_t *kv_bytes, uint64_t *buffers_bytes)
{
	struct dsm_session s = { .n_stages = 1, .stage = { { .be = dev, .layer0 = layer0, .layer_end = layer_end } } };
	*kv_bytes = *buffers_bytes = 0;
	if (size_session(&s, m, o) == 0) {
		*kv_bytes = s.stage[0].kv_bytes;
		*buffers_bytes = s.dev_bytes;
	}
}

int dsm_session_init(struct dsm_session **out, struct dsm_model *m, const struct dsm_session_options *o)
{
	*out = NULL;
	struct dsm_session *s = calloc(1, sizeof *s);
	if (!s)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	const struct dsm_fwd *fw = &m->fwd;
	s->n_stages = fw->n_stages;
	for (int k = 0; k < s->n_stages; k++)
		s->stage[k] = (struct dsm_stage){ .be = fw->stage_be[k], .layer0 = k ? fw->stage_end[k - 1] : 0,
						  .layer_end = fw->stage_end[k] };
	s->st = &s->stage[0];
	int rc = size_session(s, m, o);
	if (rc < 0) {
		free(s);
		return rc;
	}
	for (int k = 0; k < s->n_stages; k++) {
		struct dsm_stage *st = &s->stage[k];
		st->kv = dev_alloc(st->be, st->kv_bytes);
		st->dev_arena = dev_alloc(st->be, st->dev_bytes);
		if (!st->kv || !st->dev_arena) {
			rc = dsm_fail(DSM_ENOMEM, "out of %s memory for layers %d-%d: a KV pool of %llu bytes (%lld blocks of "
				      "%d positions) and %llu bytes of buffers (lower --ctx, --max-seqs or --batch)",
				      s->on_device ? "device" : "host", st->layer0, st->layer_end - 1,
				      (unsigned long long)st->kv_bytes, (long long)s->n_blocks, DSM_KV_BLOCK,
				      (unsigned long long)st->dev_bytes);
			dsm_session_free(s);
			return rc;
		}
	}
	s->arena = pinned_alloc(s->stage[0].be, s->host_bytes);
	if (!s->arena) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory: %llu bytes of pinned host buffers (lower --ctx, --max-seqs or "
			      "--batch)", (unsigned long long)s->host_bytes);
		dsm_session_free(s);
		return rc;
	}
	struct arena h = { .base = s->arena };
	for (int k = 0; k < s->n_stages; k++) {
		struct arena d = { .base = s->stage[k].dev_arena };
		layout_buffers(s, k ? NULL : &h, &s->stage[k], &d);
	}
	for (int64_t b = 0; b < s->n_blocks; b++) {
		s->ref[b] = 0;
		s->free_blocks[b] = (int32_t)(s->n_blocks - 1 - b);
	}
	s->n_free = s->n_blocks;
	for (int i = 0; i < s->max_seqs; i++)
		s->seqs[i].live = 0;
	const struct dsm_config *c = &m->cfg;
	struct dsm_attn_shape shape = { .max_keys = s->ctx, .max_selected = c->index_topk,
		.n_heads = c->num_attention_heads, .latent = (int64_t)c->kv_lora_rank + c->qk_rope_head_dim,
		.qk_dim = (int64_t)c->qk_nope_head_dim + c->qk_rope_head_dim, .v_dim = c->v_head_dim };
	for (int k = 0; k < s->n_stages; k++) {
		struct dsm_stage *st = &s->stage[k];
		struct dsm_backend *be = st->be;
		if ((be->reserve && (rc = be->reserve(be, &shape)) < 0) ||
		    (be->queue_create && ((rc = be->queue_create(be, &st->queue)) < 0 ||
					  (rc = be->event_create(be, &st->done)) < 0 || (rc = be->event_create(be, &st->seg)) < 0))) {
			dsm_session_free(s);
			return rc;
		}
	}
	*out = s;
	return 0;
}

/* ---- Copies between the host and the current stage's memory (memcpy on a host backend, none between a buffer
 * and itself) ---- */

int dsm_to_dev(struct dsm_session *s, void *dst, const void *src, size_t bytes)
{
	struct dsm_backend *be = s->st->be;
	if (dst == src || !bytes)
		return 0;
	if (!be->copy_in) {
		memcpy(dst, src, bytes);
		return 0;
	}
	return be->copy_in(be, dst, src, bytes);
}

int dsm_to_host_queued(struct dsm_session *s, void *dst, const void *src, size_t bytes)
{
	struct dsm_backend *be = s->st->be;
	if (dst == src || !bytes)
		return 0;
	if (!be->copy_out) {
		memcpy(dst, src, bytes);
		return 0;
	}
	return be->copy_out(be, dst, src, bytes);
}

int dsm_device_wait(struct dsm_session *s)
{
	struct dsm_stage *st = s->st;
	struct dsm_backend *be = st->be;
	int rc = 0;
	if (st->queue && (rc = be->event_record(be, st->done, st->queue)) == 0)
		rc = be->event_sync(be, st->done);
	double t;
	if (rc == 0 && st->seg_open && be->event_elapsed(be, st->seg, st->done, &t) == 0)
		s->times.device += t;
	st->seg_open = 0;
	return rc;
}

int dsm_device_resume(struct dsm_session *s)
{
	struct dsm_stage *st = s->st;
	if (!st->queue)
		return 0;
	st->seg_open = 1;
	return st->be->event_record(st->be, st->seg, st->queue);
}

int dsm_to_host(struct dsm_session *s, void *dst, const void *src, size_t bytes)
{
	int rc = dsm_to_host_queued(s, dst, src, bytes);
	return rc < 0 ? rc : dsm_device_wait(s);
}

int dsm_dev_copy(struct dsm_session *s, void *dst, const void *src, size_t bytes)
{
	struct dsm_backend *be = s->st->be;
	if (!be->copy_dev) {
		memcpy(dst, src, bytes);
		return 0;
	}
	return be->copy_dev(be, dst, src, bytes);
}

int64_t dsm_session_ctx(const struct dsm_session *s)
{
	return s->ctx;
}

const struct dsm_model *dsm_session_model(const struct dsm_session *s)
{
	return s->m;
}

int dsm_session_max_seqs(const struct dsm_session *s)
{
	return s->max_seqs;
}

void dsm_session_memory(const struct dsm_session *s, uint64_t *kv_bytes, uint64_t *act_bytes)
{
	*kv_bytes = s->kv_bytes;
	*act_bytes = s->host_bytes + s->dev_bytes;
}

void dsm_session_kv_blocks(const struct dsm_session *s, int64_t *total, int64_t *free_blocks, uint64_t *block_bytes)
{
	*total = s->n_blocks;
	*free_blocks = s->n_free;
	*block_bytes = s->block_bytes;
}

/* ---- Sequences and their blocks ---- */

static int live(const struct dsm_session *s, int seq)
{
	return seq >= 0 && seq < s->max_seqs && s->seqs[seq].live;
}

static void block_unref(struct dsm_session *s, int32_t b)
{
	if (--s->ref[b] == 0)
		s->free_blocks[s->n_free++] = b;
}

static int32_t block_new(struct dsm_session *s)
{
	int32_t b = s->free_blocks[--s->n_free];
	s->ref[b] = 1;
	return b;
}

/* Keeps the blocks of positions [0, pos) of seq, gives back the rest. */
static void seq_truncate(struct dsm_session *s, struct dsm_seq *q, int64_t pos)
{
	for (int64_t b = blocks_for(pos); b < blocks_for(q->pos); b++)
		block_unref(s, q->blocks[b]);
	q->pos = pos;
}

int dsm_session_add(struct dsm_session *s, int parent, int64_t at)
{
	if (parent >= 0 && !live(s, parent))
		return dsm_fail(DSM_EARG, "fork of sequence %d: no such sequence", parent);
	if (parent >= 0 && (at < 0 || at > s->seqs[parent].pos))
		return dsm_fail(DSM_EARG, "fork of sequence %d at position %lld: it holds %lld positions", parent,
				(long long)at, (long long)s->seqs[parent].pos);
	int id = 0;
	while (id < s->max_seqs && s->seqs[id].live)
		id++;
	if (id == s->max_seqs)
		return dsm_fail(DSM_EARG, "a new sequence: all %d sequences are in use (raise --max-seqs)", s->max_seqs);
	struct dsm_seq *q = &s->seqs[id];
	q->live = 1;
	q->pos = 0;
	if (parent >= 0) {
		const struct dsm_seq *p = &s->seqs[parent];
		for (int64_t b = 0; b < blocks_for(at); b++) {
			q->blocks[b] = p->blocks[b];
			s->ref[q->blocks[b]]++;
		}
		q->pos = at;
	}
	return id;
}

int dsm_session_remove(struct dsm_session *s, int seq)
{
	if (!live(s, seq))
		return dsm_fail(DSM_EARG, "remove sequence %d: no such sequence", seq);
	seq_truncate(s, &s->seqs[seq], 0);
	s->seqs[seq].live = 0;
	return 0;
}

int64_t dsm_session_seq_pos(const struct dsm_session *s, int seq)
{
	return live(s, seq) ? s->seqs[seq].pos : -1;
}

int dsm_session_seq_rewind(struct dsm_session *s, int seq, int64_t pos)
{
	if (!live(s, seq))
		return dsm_fail(DSM_EARG, "rewind sequence %d: no such sequence", seq);
	if (pos < 0 || pos > s->seqs[seq].pos)
		return dsm_fail(DSM_EARG, "rewind to %lld: the sequence holds %lld tokens", (long long)pos,
				(long long)s->seqs[seq].pos);
	seq_truncate(s, &s->seqs[seq], pos);
	return 0;
}

/* Makes the blocks of positions [pos, pos + n) of seq its own: new blocks past its end, a private copy of
 * a block it shares. Changes nothing when the pool cannot supply them all. */
static int reserve_blocks(struct dsm_session *s, int seq, int64_t n)
{
	struct dsm_seq *q = &s->seqs[seq];
	int64_t b0 = q->pos / DSM_KV_BLOCK, b1 = blocks_for(q->pos + n), have = blocks_for(q->pos), need = 0;
	for (int64_t b = b0; b < b1; b++)
		need += b >= have || s->ref[q->blocks[b]] > 1;
	if (need > s->n_free)
		return dsm_fail(DSM_EKVFULL, "the KV pool is full: %lld more blocks of %d positions needed, %lld free of "
				"%lld (raise --kv-pool, or run fewer sequences at once)", (long long)need, DSM_KV_BLOCK,
				(long long)s->n_free, (long long)s->n_blocks);
	for (int64_t b = b0; b < b1; b++) {
		if (b >= have) {
			q->blocks[b] = block_new(s);
		} else if (s->ref[q->blocks[b]] > 1) {
			int32_t nb = block_new(s);
			int rc = 0;
			for (int k = 0; k < s->n_stages && rc == 0; k++) { /* every stage's part of the block */
				s->st = &s->stage[k];
				rc = dsm_dev_copy(s, s->st->kv + (size_t)nb * s->st->block_bytes,
						  s->st->kv + (size_t)q->blocks[b] * s->st->block_bytes, s->st->block_bytes);
			}
			s->st = &s->stage[0];
			if (rc < 0) {
				block_unref(s, nb);
				return rc;
			}
			block_unref(s, q->blocks[b]);
			q->blocks[b] = nb;
		}
	}
	return 0;
}

/* ---- The step ---- */

/* cos/sin of angle p * f_i' for each row (docs MODEL.md "YaRN rotary frequencies"), and the rows' key counts. */
static int rope_tables(struct dsm_session *s)
{
	const struct dsm_model *m = s->m;
	int64_t half = m->cfg.qk_rope_head_dim / 2;
	for (int64_t t = 0; t < s->T; t++) {
		double p = (double)s->row_pos[t];
		for (int64_t i = 0; i < half; i++) {
			double ang = p * m->rope_freq[i];
			s->h_cos[t * half + i] = (float)cos(ang) * m->rope_amp;
			s->h_sin[t * half + i] = (float)sin(ang) * m->rope_amp;
		}
		s->h_n_keys[t] = s->row_pos[t] + 1;
	}
	size_t tab = sizeof(float) * (size_t)(s->T * half);
	int rc = 0;
	for (int k = 0; k < s->n_stages && rc == 0; k++) { /* to every stage, on its queue */
		struct dsm_stage *st = s->st = &s->stage[k];
		if ((rc = dsm_to_dev(s, st->cos, s->h_cos, tab)) == 0 && (rc = dsm_to_dev(s, st->sin, s->h_sin, tab)) == 0)
			rc = dsm_to_dev(s, st->n_keys, s->h_n_keys, sizeof(int64_t) * (size_t)s->T);
	}
	s->st = &s->stage[0];
	return rc;
}

static int embed(struct dsm_session *s, int64_t row, const int32_t *tokens, int64_t n)
{
	const struct dsm_mat *e = &s->m->fwd.embed;
	struct dsm_backend *be = s->st->be;
	int64_t D = e->cols;
	int rc = 0;
	for (int64_t t = 0; t < n && rc == 0; t++) {
		float *x = s->st->x + (row + t) * D;
		if (e->dtype == DSM_F32 || e->dtype == DSM_BF16) {
			const char *src = (const char *)e->data + (size_t)tokens[t] * (size_t)D * dsm_dtype_size(e->dtype);
			rc = be->convert(be, 1, D, src, e->dtype, D, x, DSM_F32, D);
		} else {       /* host memory: dsm_model_to_device takes F32 and BF16 tables only */
			for (int64_t j = 0; j < D; j++)
				x[j] = dsm_mat_get(e, tokens[t], j);
		}
	}
	return rc;
}

/* Which form the attention of a sequence's part takes. AUTO: the full form for a chunk of several tokens
 * (prefill), the absorbed form over the latent cache for one token (decode). */
static int part_absorbed(const struct dsm_session *s, int64_t n)
{
	enum dsm_mla_form f = s->m->opts.mla_form;
	return f == DSM_MLA_AUTO ? n == 1 : f == DSM_MLA_ABSORBED;
}

static int item_fail(struct dsm_step_seq *q, int rc)
{
	q->rc = rc;
	snprintf(q->error, sizeof q->error, "%s", dsm_errmsg());
	return rc;
}

/* Checks one sequence's part of a step and reserves its blocks; sets q->rc. */
static int admit(struct dsm_session *s, struct dsm_step_seq *q, const unsigned char *seen)
{
	const struct dsm_config *c = &s->m->cfg;
	q->rc = 0;
	q->error[0] = 0;
	if (!live(s, q->seq))
		return item_fail(q, dsm_fail(DSM_EARG, "step: no sequence %d", q->seq));
	if (seen[q->seq])
		return item_fail(q, dsm_fail(DSM_EARG, "step: sequence %d appears twice", q->seq));
	if (q->n <= 0 || !q->tokens)
		return item_fail(q, dsm_fail(DSM_EARG, "step: sequence %d has no tokens", q->seq));
	int64_t pos = s->seqs[q->seq].pos;
	if (q->n > s->ctx - pos)
		return item_fail(q, dsm_fail(DSM_ECONTEXT, "context full: %lld tokens in the sequence plus %lld new exceed "
					     "the context of %lld tokens (raise --ctx)", (long long)pos, (long long)q->n,
					     (long long)s->ctx));
	for (int64_t i = 0; i < q->n; i++)
		if (q->tokens[i] < 0 || q->tokens[i] >= c->vocab_size)
			return item_fail(q, dsm_fail(DSM_EARG, "token id %d at %lld is outside the vocabulary [0, %d)",
						     q->tokens[i], (long long)i, c->vocab_size));
	if (reserve_blocks(s, q->seq, q->n) < 0)
		return item_fail(q, DSM_EKVFULL);
	return 0;
}

/* The residual stream of the step's rows moves on to the next stage's device, through the host. */
static int next_stage(struct dsm_session *s)
{
	size_t bytes = sizeof(float) * (size_t)(s->T * s->m->cfg.hidden_size);
	int rc = dsm_to_host(s, s->h_y, s->st->x, bytes);
	struct dsm_stage *st = ++s->st;
	if (st->queue) /* the expert store may have used the device's queues */
		st->be->set_queue(st->be, st->queue);
	return rc < 0 ? rc : dsm_to_dev(s, st->x, s->h_y, bytes);
}

/* The final norm and the head over the rows whose logits are asked for. The last rows of all parts go
 * through the head as one matmul (one read of the head for a whole decode step), then to their outputs. */
static int logits_out(struct dsm_session *s, struct dsm_step_seq *q, int n, const int *part_of)
{
	struct dsm_model *m = s->m;
	struct dsm_stage *st = s->st;
	struct dsm_backend *be = st->be;
	const struct dsm_fwd *w = &m->fwd;
	int64_t D = m->cfg.hidden_size, V = m->cfg.vocab_size, rows = 0;
	float eps = (float)m->cfg.rms_norm_eps;
	size_t row_bytes = sizeof(float) * (size_t)V;
	int rc;
	for (int i = 0; i < n; i++) {
		if (q[i].rc || q[i].mode == DSM_LOGITS_NONE)
			continue;
		const struct dsm_step_part *p = &s->parts[part_of[i]];
		if (q[i].mode == DSM_LOGITS_LAST || q[i].mode == DSM_LOGITS_TOP) {
			if ((rc = be->rmsnorm(be, 1, D, st->x + (p->row0 + p->n - 1) * D, D, w->final_norm, eps,
					      st->xn + rows++ * D)) < 0)
				return rc;
			continue;
		}
		/* every row: straight into the caller's buffer, or through st->logits (then [B, V]) from a device */
		float *dst = s->on_device ? st->logits : q[i].logits;
		if ((rc = be->rmsnorm(be, p->n, D, st->x + p->row0 * D, D, w->final_norm, eps, st->y)) < 0 ||
		    (rc = be->matmul(be, &w->head, p->n, st->y, dst)) < 0 ||
		    (rc = dsm_to_host(s, q[i].logits, dst, row_bytes * (size_t)p->n)) < 0)
			return rc;
	}
	if (!rows)
		return 0;
	/* one row of logits, for greedy decoding: its largest value is all it needs */
	int top = 0;
	for (int i = 0; i < n; i++)
		top |= !q[i].rc && q[i].mode == DSM_LOGITS_TOP;
	if (top && rows == 1 && m->head_screen_bytes) {
		if ((rc = be->matmul_top(be, &w->head, st->xn, st->logits)) < 0)
			return rc;
		s->times.top_steps++;
		s->times.top_rows += rc;
	} else if ((rc = be->matmul(be, &w->head, rows, st->xn, st->logits)) < 0) {
		return rc;
	}
	rows = 0;
	for (int i = 0; i < n; i++)
		if (!q[i].rc && (q[i].mode == DSM_LOGITS_LAST || q[i].mode == DSM_LOGITS_TOP) &&
		    (rc = dsm_to_host_queued(s, q[i].logits, st->logits + rows++ * V, row_bytes)) < 0)
			return rc;
	return dsm_device_wait(s);
}

/* The layers and the logits of a step (dsm_session_step). */
struct layers_job {
	struct dsm_session *s;
	struct dsm_step_seq *q;
	int n;
	const int *part_of;
	int rc;
	double head_start; /* when the logits began */
};

static void layers_and_logits(void *arg)
{
	struct layers_job *j = arg;
	struct dsm_session *s = j->s;
	int rc = j->rc;
	for (int L = 0; L < s->m->cfg.num_hidden_layers && rc == 0; L++) {
		if (L == s->st->layer_end && (rc = next_stage(s)) < 0)
			break;
		double t = dsm_now();
		if ((rc = dsm_attention(s, L)) < 0)
			dsm_fail_prefix(rc, "layer %d attention", L);
		s->times.attention += dsm_now() - t;
		if (rc == 0 && (rc = dsm_feed_forward(s, L)) < 0)
			dsm_fail_prefix(rc, "layer %d feed-forward", L);
	}
	j->head_start = dsm_now();
	if (rc == 0)
		rc = logits_out(s, j->q, j->n, j->part_of);
	j->rc = rc;
}

int dsm_session_step(struct dsm_session *s, struct dsm_step_seq *q, int n)
{
	struct dsm_model *m = s->m;
	int64_t total = 0;
	for (int i = 0; i < n; i++)
		total += q[i].n > 0 ? q[i].n : 0;
	if (n <= 0 || total == 0)
		return dsm_fail(DSM_EARG, "step: no tokens to run");
	double t0 = dsm_now(), busy0 = s->times.attention + s->times.router + s->times.experts + s->times.dense;
	double wait0 = dsm_cpu_wait_seconds(m->be);
	if (total > s->max_batch)
		return dsm_fail(DSM_EARG, "step: %lld tokens, more than the %lld of one step (--batch)", (long long)total,
				(long long)s->max_batch);
	if (n > s->max_seqs)
		return dsm_fail(DSM_EARG, "step: %d sequences, more than the %d of the session", n, s->max_seqs);
	unsigned char seen[s->max_seqs];
	memset(seen, 0, sizeof seen);
	int64_t pos0[n];
	for (int i = 0; i < n; i++) {
		pos0[i] = live(s, q[i].seq) ? s->seqs[q[i].seq].pos : 0;
		if (admit(s, &q[i], seen) == 0)
			seen[q[i].seq] = 1;
	}
	/* Rows: the parts whose attention takes the absorbed form first, so that their projections run as one. */
	int part_of[n], rc = 0;
	s->n_parts = 0;
	s->T = 0;
	for (int pass = 1; pass >= 0; pass--)
		for (int i = 0; i < n; i++) {
			if (q[i].rc || part_absorbed(s, q[i].n) != pass)
				continue;
			struct dsm_step_part *p = &s->parts[s->n_parts];
			*p = (struct dsm_step_part){ .seq = q[i].seq, .row0 = s->T, .n = q[i].n, .pos0 = pos0[i],
						     .absorbed = pass };
			for (int64_t t = 0; t < p->n; t++) {
				s->row_seq[p->row0 + t] = p->seq;
				s->row_pos[p->row0 + t] = p->pos0 + t;
			}
			part_of[i] = s->n_parts++;
			s->T += p->n;
			if (pass)
				s->n_absorbed = s->T;
		}
	if (!s->n_parts)
		return 0;
	if (s->parts[0].absorbed == 0)
		s->n_absorbed = 0;
	/* On a device, a stage's work goes to its queue; the host waits only for what it reads. */
	for (int k = 0; k < s->n_stages && rc == 0; k++)
		if ((s->st = &s->stage[k])->queue) {
			s->st->be->set_queue(s->st->be, s->st->queue);
			rc = dsm_device_resume(s);
		}
	s->st = &s->stage[0];
	for (int i = 0; i < n && rc == 0; i++)
		if (!q[i].rc)
			rc = embed(s, s->parts[part_of[i]].row0, q[i].tokens, q[i].n);
	/* Positions count as held from here, so that attention reads the new entries; undone on failure. */
	for (int i = 0; i < s->n_parts; i++)
		s->seqs[s->parts[i].seq].pos += s->parts[i].n;
	if (rc == 0)
		rc = rope_tables(s);
	struct layers_job job = { s, q, n, part_of, rc, 0 };
	struct dsm_backend *be = s->st->be;
	/* A decode step on the host holds the backend's threads for all its ops (a step of up to 8 tokens, every
	 * one in the absorbed form: the ops that hand their work to the held threads). */
	if (rc == 0 && s->n_stages == 1 && !s->st->queue && s->T <= 8 && s->n_absorbed == s->T && be->hold_threads)
		be->hold_threads(be, layers_and_logits, &job);
	else
		layers_and_logits(&job);
	rc = job.rc;
	double t = job.head_start;
	for (int k = 0; k < s->n_stages; k++) /* nothing of the step left in a queue, and its failure reported now */
		if ((s->st = &s->stage[k])->queue) {
			int qrc = dsm_device_wait(s);
			s->st->be->set_queue(s->st->be, NULL);
			if (rc == 0)
				rc = qrc;
		}
	s->st = &s->stage[0];
	s->times.head += dsm_now() - t;
	s->times.other += t - t0 - (s->times.attention + s->times.router + s->times.experts + s->times.dense - busy0);
	int bound;
	s->times.waiting += (dsm_cpu_wait_seconds(m->be) - wait0) / dsm_model_threads(m, &bound);
	s->times.steps++;
	s->times.tokens += s->T;
	if (rc < 0)
		for (int i = 0; i < s->n_parts; i++) /* the blocks reserved past the old end go back too */
			seq_truncate(s, &s->seqs[s->parts[i].seq], s->parts[i].pos0);
	return rc;
}

double dsm_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dsm_session_times(struct dsm_session *s, struct dsm_step_times *t, int reset)
{
	*t = s->times;
	if (reset)
		memset(&s->times, 0, sizeof s->times);
}

/* ---- One sequence ---- */

/* The one-sequence calls start sequence 0 when it is not there. */
static int seq0(struct dsm_session *s)
{
	if (live(s, 0))
		return 0;
	if (s->seqs[0].live || dsm_session_add(s, -1, 0) != 0)
		return dsm_fail(DSM_EARG, "sequence 0 is not free");
	return 0;
}

int64_t dsm_session_pos(const struct dsm_session *s)
{
	return live(s, 0) ? s->seqs[0].pos : 0;
}

int dsm_session_rewind(struct dsm_session *s, int64_t pos)
{
	int rc = seq0(s);
	return rc < 0 ? rc : dsm_session_seq_rewind(s, 0, pos);
}

int dsm_session_forward(struct dsm_session *s, const int32_t *tokens, int64_t n, enum dsm_logits_mode mode,
			float *logits)
{
	const struct dsm_config *c = &s->m->cfg;
	int rc = seq0(s);
	if (rc < 0)
		return rc;
	if (n <= 0)
		return dsm_fail(DSM_EARG, "forward: no tokens");
	int64_t pos = s->seqs[0].pos;
	if (n > s->ctx - pos)
		return dsm_fail(DSM_ECONTEXT, "context full: %lld tokens in the session plus %lld new exceed the "
				"context of %lld tokens (raise --ctx)", (long long)pos, (long long)n, (long long)s->ctx);
	for (int64_t i = 0; i < n; i++)
		if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
			return dsm_fail(DSM_EARG, "token id %d at %lld is outside the vocabulary [0, %d)", tokens[i],
					(long long)i, c->vocab_size);
	for (int64_t done = 0; done < n;) {
		int64_t T = n - done < s->max_batch ? n - done : s->max_batch;
		int last = done + T == n;
		struct dsm_step_seq q = {
			.seq = 0, .tokens = tokens + done, .n = T,
			.mode = mode == DSM_LOGITS_ALL ? mode : (last ? mode : DSM_LOGITS_NONE),
			.logits = mode == DSM_LOGITS_ALL ? logits + (size_t)done * (size_t)c->vocab_size : logits,
		};
		if ((rc = dsm_session_step(s, &q, 1)) < 0)
			return rc;
		if (q.rc < 0)
			return dsm_fail(q.rc, "%s", q.error);
		done += T;
	}
	return 0;
}
