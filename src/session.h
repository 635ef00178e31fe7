/* Sequences being run through the model: up to max_seqs of them share one model, one pool of KV blocks and
 * the activation buffers of a step (docs/engine.md).
 *
 * The KV pool is cut into blocks of DSM_KV_BLOCK token positions; a block holds those positions' entries for
 * every layer:
 *   - the MLA latent c [r] and rope key k_pe [dr] (576 values for the real model), BF16 by default
 *     (kv_dtype F32 on request);
 *   - on V3.2, the lightning indexer's key [dI] in F32.
 * A sequence owns a list of blocks. A fork shares its parent's blocks up to the fork position; a shared
 * block is copied the first time either side writes into it (copy on write), so forks cost no copy of a
 * prompt. Blocks come from one allocation sized at init, so sequences of very different lengths share it
 * without fragmentation; a full pool fails the sequence that asked and nothing else.
 *
 * A step (dsm_session_step) runs any mix of sequences in one forward pass: some with one token (decode),
 * some with a chunk of prompt. Attention and the indexer run per sequence over its own blocks; every other
 * block runs once over all the step's tokens (the projections as one matmul, the MoE layer expert-major:
 * each chosen expert once for all its tokens).
 *
 * Everything is allocated at init; a step allocates nothing after the first of each size (the backend's
 * scratch grows once). The one-sequence calls (dsm_session_forward, _pos, _rewind) act on sequence 0, and
 * start it when it is not there. */
#ifndef DSM_SESSION_H
#define DSM_SESSION_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

#define DSM_KV_BLOCK 64 /* token positions per KV block */

/* Observers for tests and tools (all optional). seq is the sequence, positions are absolute. */
struct dsm_session_hooks {
	void *user;
	/* experts chosen for the token at pos in MoE layer `layer`: idx[k] ascending, weights in that order */
	void (*on_route)(void *user, int seq, int layer, int64_t pos, const int32_t *idx, const float *weight, int k);
	/* key positions the lightning indexer selected for the query at pos (only when it had to choose:
	 * pos + 1 > index_topk); sel[n] ascending */
	void (*on_select)(void *user, int seq, int layer, int64_t pos, const int32_t *sel, int64_t n);
	/* Teacher forcing, for tests that compare numerics apart from discrete choices: may overwrite the
	 * experts chosen (idx[k], kept ascending; their weights are then recomputed from the router
	 * scores) or the indexer's selection (sel[n], ascending); returns 1 if it did. */
	int (*force_route)(void *user, int seq, int layer, int64_t pos, int32_t *idx, int k);
	int (*force_select)(void *user, int seq, int layer, int64_t pos, int32_t *sel, int64_t n);
};

struct dsm_session_options {
	int64_t ctx;                    /* tokens one sequence may hold (default 4096, at most the model's) */
	int64_t max_batch;              /* tokens of one step, all sequences together (default 128) */
	int max_seqs;                   /* sequences at once (default 1) */
	uint64_t kv_pool_bytes;         /* the KV block pool; 0: room for max_seqs full contexts */
	enum dsm_dtype kv_dtype;        /* DSM_BF16 (default) or DSM_F32 */
	struct dsm_session_hooks hooks;
};

struct dsm_session;

/* Returns 0 or DSM_EARG (bad sizes, a pool too small for one full context) / DSM_ENOMEM with a message
 * giving the bytes asked for. */
int dsm_session_init(struct dsm_session **out, struct dsm_model *m, const struct dsm_session_options *o);
/* Accepts NULL. */
void dsm_session_free(struct dsm_session *s);
/* The memory a session with options o would take on device dev for a stage of the forward pass over layers
 * [layer0, layer_end) (dsm_model_to_devices): its part of the KV pool and its step buffers. */
void dsm_session_device_bytes(struct dsm_model *m, struct dsm_backend *dev, int layer0, int layer_end,
			      const struct dsm_session_options *o, uint64_t *kv_bytes, uint64_t *buffers_bytes);

enum dsm_logits_mode {
	DSM_LOGITS_NONE,                /* no logits (the caches are still filled) */
	DSM_LOGITS_LAST,                /* logits [V] of the last token */
	DSM_LOGITS_ALL,                 /* logits [n, V] of every token */
	DSM_LOGITS_TOP,                 /* greedy decoding: logits [V] of the last token, exact wherever a value can
					 * be the largest, -INFINITY elsewhere (the backend's matmul_top, when the step
					 * has no other row of logits; else all exact, as LAST) */
};

/* ---- Sequences ---- */

/* A new sequence: empty (parent < 0), or a fork of sequence `parent` holding its first `at` positions
 * (shared, copy on write). Returns the new sequence's id (>= 0) or DSM_EARG (no such parent, `at` past its
 * end, max_seqs sequences already). */
int dsm_session_add(struct dsm_session *s, int parent, int64_t at);
/* Ends a sequence and gives back its blocks (those shared with forks stay theirs). DSM_EARG for no such
 * sequence. */
int dsm_session_remove(struct dsm_session *s, int seq);
/* Positions held by sequence seq (-1: no such sequence). */
int64_t dsm_session_seq_pos(const struct dsm_session *s, int seq);
/* Forgets the positions of seq from pos on. */
int dsm_session_seq_rewind(struct dsm_session *s, int seq, int64_t pos);
int dsm_session_max_seqs(const struct dsm_session *s);

/* One sequence's part of a step. */
struct dsm_step_seq {
	int seq;
	const int32_t *tokens;          /* [n] at positions pos .. pos + n - 1 of the sequence */
	int64_t n;
	enum dsm_logits_mode mode;
	float *logits;                  /* [V] (LAST) or [n, V] (ALL) */
	/* out: 0 when the tokens ran and were appended; else this sequence's error (DSM_ECONTEXT: past ctx,
	 * DSM_EKVFULL: no free KV block, DSM_EARG: a bad token or sequence) with its message; the other
	 * sequences of the step ran. */
	int rc;
	char error[256];
};

/* Runs one forward pass over the tokens of every sequence in q[0 .. n) (each sequence at most once; the
 * tokens of all together at most max_batch). Returns 0 when the step ran (q[i].rc says how each sequence
 * fared), or a negative DSM_E* code when the whole step failed: no sequence with tokens, more than
 * max_batch tokens, or an error of the forward pass itself (I/O of the expert store), after which the
 * step's sequences hold what they held before. */
int dsm_session_step(struct dsm_session *s, struct dsm_step_seq *q, int n);

/* ---- One sequence (sequence 0) ---- */

/* Runs tokens[0 .. n) at positions pos() .. pos() + n - 1 of sequence 0, in steps of max_batch, and
 * writes the requested F32 logits. Returns 0, DSM_ECONTEXT when the tokens do not fit in ctx (nothing is
 * run), DSM_EARG for a token id outside the vocabulary, or another negative DSM_E* code. */
int dsm_session_forward(struct dsm_session *s, const int32_t *tokens, int64_t n, enum dsm_logits_mode mode,
			float *logits);
/* Positions of sequence 0. */
int64_t dsm_session_pos(const struct dsm_session *s);
int64_t dsm_session_ctx(const struct dsm_session *s);
/* Forgets the positions of sequence 0 from pos on (0: empty it). */
int dsm_session_rewind(struct dsm_session *s, int64_t pos);

/* Wall time of the steps run so far, by part of the forward pass, in seconds. A part's time includes its
 * threads' waits (barriers, the ends of parallel regions). */
struct dsm_step_times {
	double attention;   /* input norm, MLA projections, indexer, attention, o_proj */
	double router;      /* router logits and the choice of experts */
	double experts;     /* routed and shared experts */
	double dense;       /* the dense layers' FFN */
	double head;        /* final norm and output head */
	double other;       /* the rest of a step: embedding, rope tables, norms, residual adds */
	double waiting;     /* within the parts above: the cpu threads' waiting at barriers and ends of parallel
			     * regions, averaged over the threads */
	double device;      /* the forward pass on a device (not its experts): its queue's time on the step's work,
			     * from events (within the parts above, which are host wall time) */
	int64_t steps, tokens;
	int64_t top_steps;  /* steps whose head ran screened (DSM_LOGITS_TOP) */
	int64_t top_rows;   /* the rows of the head they computed, all together */
};
/* The times since the session began or since times were last reset (reset != 0 zeroes them after copying). */
void dsm_session_times(struct dsm_session *s, struct dsm_step_times *t, int reset);
/* The steps' time: the sum of the parts (waiting and device are within them). */
static inline double dsm_step_times_total(const struct dsm_step_times *t)
{
	return t->attention + t->router + t->experts + t->dense + t->head + t->other;
}

/* Bytes of the KV pool (all of it), and of the activation buffers. */
void dsm_session_memory(const struct dsm_session *s, uint64_t *kv_bytes, uint64_t *act_bytes);
/* KV blocks in all and free; bytes of one block. */
void dsm_session_kv_blocks(const struct dsm_session *s, int64_t *total, int64_t *free, uint64_t *block_bytes);
const struct dsm_model *dsm_session_model(const struct dsm_session *s);

#endif
