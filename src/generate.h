/* The generation loop: prefill the prompt, then sample and decode one token at a time until EOS, a stop
 * string, the token limit or the end of the context, streaming text as it becomes final. */
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
	 * Nonzero return: stop. */
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
	double prefill_seconds;         /* the prompt's forward pass and the first token */
	double decode_seconds;          /* every later token */
};

/* Runs the loop on session s (which should be empty or hold an earlier conversation).
 * Returns 0 (see r->reason) or a negative DSM_E* code; r is filled either way; free it with
 * dsm_generate_result_free. A prompt that does not fit in the context fails with DSM_ECONTEXT. */
int dsm_generate(struct dsm_session *s, const int32_t *prompt, int64_t n_prompt,
		 const struct dsm_generate_params *p, const struct dsm_generate_io *io,
		 struct dsm_generate_result *r);
void dsm_generate_result_free(struct dsm_generate_result *r);

#endif
