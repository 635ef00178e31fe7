/* One sequence being run through the model: its KV caches and the activation buffers of a step.
 *
 * Everything is allocated at dsm_session_init, sized by the context length (ctx) and the largest step
 * (max_batch tokens); dsm_session_forward allocates nothing after the first step of each size (the
 * backend's scratch grows once). Per layer and token the caches hold:
 *   - the MLA latent c [r] and rope key k_pe [dr] (576 values for the real model), BF16 by default
 *     (kv_dtype F32 on request);
 *   - on V3.2, the lightning indexer's key [dI] in F32.
 * A prompt longer than max_batch is run in steps of max_batch tokens. */
#ifndef DSM_SESSION_H
#define DSM_SESSION_H

#include "model.h"

#include <stddef.h>
#include <stdint.h>

/* Observers for tests and tools (all optional). Positions are absolute. */
struct dsm_session_hooks {
	void *user;
	/* experts chosen for the token at pos in MoE layer `layer`: idx[k] ascending, weights in that order */
	void (*on_route)(void *user, int layer, int64_t pos, const int32_t *idx, const float *weight, int k);
	/* key positions the lightning indexer selected for the query at pos (only when it had to choose:
	 * pos + 1 > index_topk); sel[n] ascending */
	void (*on_select)(void *user, int layer, int64_t pos, const int32_t *sel, int64_t n);
	/* Teacher forcing, for tests that compare numerics apart from discrete choices: may overwrite the
	 * experts chosen (idx[k], kept ascending; their weights are then recomputed from the router
	 * scores) or the indexer's selection (sel[n], ascending); returns 1 if it did. */
	int (*force_route)(void *user, int layer, int64_t pos, int32_t *idx, int k);
	int (*force_select)(void *user, int layer, int64_t pos, int32_t *sel, int64_t n);
};

struct dsm_session_options {
	int64_t ctx;                    /* context length in tokens (default 4096, at most the model's) */
	int64_t max_batch;              /* tokens per forward step (default 128) */
	enum dsm_dtype kv_dtype;        /* DSM_BF16 (default) or DSM_F32 */
	struct dsm_session_hooks hooks;
};

struct dsm_session;

/* Returns 0 or DSM_EARG (bad sizes) / DSM_ENOMEM with a message giving the bytes asked for. */
int dsm_session_init(struct dsm_session **out, struct dsm_model *m, const struct dsm_session_options *o);
/* Accepts NULL. */
void dsm_session_free(struct dsm_session *s);

enum dsm_logits_mode {
	DSM_LOGITS_NONE,                /* no logits (the caches are still filled) */
	DSM_LOGITS_LAST,                /* logits [V] of the last token */
	DSM_LOGITS_ALL,                 /* logits [n, V] of every token */
};

/* Runs tokens[0 .. n) at positions pos() .. pos() + n - 1, appending them to the caches, and writes
 * the requested F32 logits. Returns 0, DSM_ECONTEXT when the tokens do not fit in ctx (nothing is run),
 * DSM_EARG for a token id outside the vocabulary, or another negative DSM_E* code. */
int dsm_session_forward(struct dsm_session *s, const int32_t *tokens, int64_t n, enum dsm_logits_mode mode,
			float *logits);

/* Tokens in the caches. */
int64_t dsm_session_pos(const struct dsm_session *s);
int64_t dsm_session_ctx(const struct dsm_session *s);
/* Forgets the tokens from position pos on (0: empty the session). */
int dsm_session_rewind(struct dsm_session *s, int64_t pos);
/* Bytes of the KV caches, and of the activation buffers. */
void dsm_session_memory(const struct dsm_session *s, uint64_t *kv_bytes, uint64_t *act_bytes);
const struct dsm_model *dsm_session_model(const struct dsm_session *s);

#endif
