/* The generation loop: prefill the prompt, then sample and decode one token at a time until EOS, a stop
 * string, the token limit or the end of the context, streaming text as it becomes final; for one request
 * (dsm_generate) or many decoding together (struct dsm_scheduler). */
#ifndef DSM_GENERATE_H
#define DSM_GENERATE_H

#include "sample.h"
#include "session.h"

#include <stddef.h>
#include <stdint.h>

enum dsm_stop_reason {
	DSM_STOP_EOS,           /* the model produced the end-of-sequence token */
	DSM_STOP_STRING,        /* the text reached a stop string (cut before it) */
	DSM_STOP_LENGTH,        /* max_tokens generated */
	DSM_STOP_CONTEXT,       /* the context is full */
	DSM_STOP_CALLER,        /* a callback asked to stop */
};

const char *dsm_stop_reason_name(enum dsm_stop_reason r);

struct dsm_generate_params {
	int64_t max_tokens;             /* tokens to generate at most */
	struct dsm_sampler_params sampling;
	int32_t eos_id;                 /* < 0: none */
	const char *const *stop;        /* stop strings (need token_text) */
	int n_stop;
	int prompt_logits;              /* call on_logits for every prompt position (else only generated) */
};

/* Growable text, NUL-terminated. */
struct dsm_text {
	char *data;
	size_t len, cap;
};
int dsm_text_append(struct dsm_text *t, const char *s, size_t n);
void dsm_text_free(struct dsm_text *t);

struct dsm_generate_io {
	void *user;
	/* Appends the text that token id completes (may be empty; NULL: no text is produced). */
	int (*token_text)(void *user, int32_t id, struct dsm_text *out);
	/* Text that is final (cannot become part of a stop string), in order. Nonzero return: stop. */
	int (*on_text)(void *user, const char *text, size_t len);
	/* Logits [n, vocab] at the given positions (prompt positions when prompt_logits, then each step's).
	 * Nonzero return: stop. Set only when they are read: without it, a greedy request computes only the
	 * rows of the head that can hold the largest logit (DSM_LOGITS_TOP). */
	int (*on_logits)(void *user, int64_t pos, int64_t n, const float *logits);
	/* After each generated token. Nonzero return: stop. */
	int (*on_token)(void *user, int32_t id);
};

struct dsm_generate_result {
	int32_t *ids;                   /* [n] generated ids (EOS included when it ended the text) */
	int64_t n;
	struct dsm_text text;           /* the generated text (without EOS, cut before a stop string) */
	enum dsm_stop_reason reason;
	int64_t n_prompt;
	int64_t n_prefilled;            /* prompt tokens computed for it (n_prompt less what a fork shared) */
	double prefill_seconds;         /* the prompt's forward pass and the first token */
	double decode_seconds;          /* every later token */
};

/* Runs the loop on sequence 0 of session s (which should be empty or hold an earlier conversation).
 * Returns 0 (see r->reason) or a negative DSM_E* code; r is filled either way; free it with
 * dsm_generate_result_free. A prompt that does not fit in the context fails with DSM_ECONTEXT. */
int dsm_generate(struct dsm_session *s, const int32_t *prompt, int64_t n_prompt,
		 const struct dsm_generate_params *p, const struct dsm_generate_io *io,
		 struct dsm_generate_result *r);
void dsm_generate_result_free(struct dsm_generate_result *r);

/* ---- Many requests decoding together (continuous batching) ----
 *
 * A scheduler runs requests on the sequences of one session. Each step it feeds every decoding request
 * its last sampled token and fills the rest of the step (at most prefill_chunk tokens) with chunks of the
 * prompts still to prefill, oldest first, so that a long prompt delays no decoding request by more than
 * one chunk. Requests join between steps when a sequence is free and leave when they end. A request that
 * shares a prompt prefix with an earlier one forks that one's sequence instead of computing the prefix
 * again: right after the earlier one's prefill (it then starts from the same logits), or later at the
 * longest common prefix it still holds. */

struct dsm_request {
	const int32_t *prompt;          /* [n_prompt] (copied) */
	int64_t n_prompt;
	struct dsm_generate_params params;
	struct dsm_generate_io io;
	int seq;                        /* -1: a new sequence, removed at the end; >= 0: continue this sequence
					 * of the session (the prompt follows what it holds) and keep it */
	int prefix_of;                  /* -1, or the id of an earlier request whose prompt starts like this
					 * one's: fork its sequence (when that one's sequence started empty) */
};

struct dsm_scheduler_options {
	int64_t prefill_chunk;          /* prompt tokens per step, all requests together (0: the session's
					 * max_batch) */
};

struct dsm_scheduler;

int dsm_scheduler_init(struct dsm_scheduler **out, struct dsm_session *s, const struct dsm_scheduler_options *o);
/* Accepts NULL. Sequences of unfinished requests are removed. */
void dsm_scheduler_free(struct dsm_scheduler *sc);
/* Queues a request. Returns its id (>= 0, in order of addition) or DSM_ECONTEXT (the prompt does not fit
 * in the context), DSM_EARG (no prompt, a token outside the vocabulary, bad parameters, a bad seq or
 * prefix_of), DSM_ENOMEM. */
int dsm_scheduler_add(struct dsm_scheduler *sc, const struct dsm_request *r);
/* Ends a request at the next step (reason DSM_STOP_CALLER). */
int dsm_scheduler_cancel(struct dsm_scheduler *sc, int id);
/* Runs one step. Returns the number of requests not finished yet (0: all done), or a negative DSM_E* code
 * when the step itself failed (the requests stay as they were). A request's own failure (a full KV pool)
 * ends that request only: see dsm_scheduler_result. */
int dsm_scheduler_step(struct dsm_scheduler *sc);
/* Steps until every request is finished. */
int dsm_scheduler_run(struct dsm_scheduler *sc);
/* 1 when request id is finished. */
int dsm_scheduler_done(const struct dsm_scheduler *sc, int id);
/* The result of request id (complete once it is finished); *rc (may be NULL): 0 or the request's error
 * code, whose message is dsm_scheduler_error. */
const struct dsm_generate_result *dsm_scheduler_result(const struct dsm_scheduler *sc, int id, int *rc);
const char *dsm_scheduler_error(const struct dsm_scheduler *sc, int id);
/* Frees the buffers of finished request id (prompt, logits, result); its result is then empty. For
 * long-lived schedulers that run many requests: a caller that has read a result gives its memory back.
 * DSM_EARG when the request is not finished. */
int dsm_scheduler_release(struct dsm_scheduler *sc, int id);
/* The session sequence request id runs on, -1 when it is not running. */
int dsm_scheduler_seq(const struct dsm_scheduler *sc, int id);

struct dsm_scheduler_stats {
	uint64_t steps;
	uint64_t decode_tokens, prefill_tokens;  /* rows run, by kind */
	uint64_t max_rows;                        /* the largest step */
	uint64_t forks;                           /* requests started from another one's sequence */
};
void dsm_scheduler_get_stats(const struct dsm_scheduler *sc, struct dsm_scheduler_stats *st);

#endif
