#include "generate.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *dsm_stop_reason_name(enum dsm_stop_reason r)
{
	static const char *const names[] = { "eos", "stop_string", "length", "context", "caller" };
	return (unsigned)r < sizeof names / sizeof names[0] ? names[r] : "unknown";
}

int dsm_text_append(struct dsm_text *t, const char *s, size_t n)
{
	if (t->len + n + 1 > t->cap) {
		size_t cap = t->cap ? t->cap : 256;
		while (cap < t->len + n + 1)
			cap *= 2;
		char *d = realloc(t->data, cap);
		if (!d)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		t->data = d;
		t->cap = cap;
	}
	memcpy(t->data + t->len, s, n);
	t->len += n;
	t->data[t->len] = 0;
	return 0;
}

void dsm_text_free(struct dsm_text *t)
{
	free(t->data);
	memset(t, 0, sizeof *t);
}

void dsm_generate_result_free(struct dsm_generate_result *r)
{
	free(r->ids);
	dsm_text_free(&r->text);
	memset(r, 0, sizeof *r);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Streaming with stop strings: text[0 .. emitted) has been handed out; the rest is held while it could
 * still be the start of a stop string. */
struct streamer {
	const struct dsm_generate_params *p;
	const struct dsm_generate_io *io;
	struct dsm_text *text;
	size_t emitted;
};

static int emit(struct streamer *st, size_t upto)
{
	if (upto <= st->emitted)
		return 0;
	int stop = st->io->on_text ? st->io->on_text(st->io->user, st->text->data + st->emitted, upto - st->emitted) : 0;
	st->emitted = upto;
	return stop;
}

/* After new text: 1 if a stop string was found (the text is cut before it), else emits what is final. */
static int stream_check(struct streamer *st, int *caller_stop)
{
	struct dsm_text *t = st->text;
	size_t cut = t->len;
	int found = 0;
	for (int i = 0; i < st->p->n_stop; i++) {
		const char *s = st->p->stop[i];
		size_t n = strlen(s);
		if (!n)
			continue;
		size_t from = st->emitted;
		for (size_t at = from; at + n <= t->len; at++)
			if (memcmp(t->data + at, s, n) == 0) {
				if (at < cut)
					cut = at;
				found = 1;
				break;
			}
	}
	if (found) {
		t->len = cut;
		t->data[cut] = 0;
		*caller_stop = emit(st, cut);
		return 1;
	}
	/* hold back the longest tail that is a proper prefix of a stop string */
	size_t hold = 0;
	for (int i = 0; i < st->p->n_stop; i++) {
		size_t n = strlen(st->p->stop[i]);
		for (size_t k = n > 0 ? n - 1 : 0; k > hold; k--)
			if (k <= t->len - st->emitted && memcmp(t->data + t->len - k, st->p->stop[i], k) == 0) {
				hold = k;
				break;
			}
	}
	*caller_stop = emit(st, t->len - hold);
	return 0;
}

int dsm_generate(struct dsm_session *s, const int32_t *prompt, int64_t n_prompt,
		 const struct dsm_generate_params *p, const struct dsm_generate_io *io,
		 struct dsm_generate_result *r)
{
	memset(r, 0, sizeof *r);
	r->n_prompt = n_prompt;
	const struct dsm_model *m = dsm_session_model(s);
	int64_t V = m->cfg.vocab_size;
	struct dsm_sampler sampler;
	int rc = dsm_sampler_init(&sampler, &p->sampling, V);
	if (rc < 0)
		return rc;
	int64_t room = dsm_session_ctx(s) - dsm_session_pos(s) - n_prompt;
	int64_t max_new = p->max_tokens < room + 1 ? p->max_tokens : room + 1;
	if (max_new < 0)
		max_new = 0;
	float *logits = malloc(sizeof(float) * (size_t)V * (size_t)(p->prompt_logits ? n_prompt : 1));
	r->ids = malloc(sizeof(int32_t) * (size_t)(max_new + 1));
	if (!logits || !r->ids) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	struct streamer st = { .p = p, .io = io, .text = &r->text };
	double t0 = now();
	rc = dsm_session_forward(s, prompt, n_prompt, p->prompt_logits ? DSM_LOGITS_ALL : DSM_LOGITS_LAST, logits);
	if (rc < 0)
		goto out;
	const float *last = logits + (size_t)V * (size_t)(p->prompt_logits ? n_prompt - 1 : 0);
	if (p->prompt_logits && io->on_logits && io->on_logits(io->user, dsm_session_pos(s) - n_prompt, n_prompt, logits)) {
		r->reason = DSM_STOP_CALLER;
		goto out;
	}
	double t1 = now();
	r->reason = DSM_STOP_LENGTH;
	for (int64_t i = 0; i < p->max_tokens; i++) {
		if (i >= max_new) {
			r->reason = DSM_STOP_CONTEXT;
			break;
		}
		int32_t id = dsm_sample(&sampler, last);
		r->ids[r->n++] = id;
		if (i == 0)
			t1 = now();
		if (io->on_token && io->on_token(io->user, id)) {
			r->reason = DSM_STOP_CALLER;
			break;
		}
		if (id == p->eos_id) {
			r->reason = DSM_STOP_EOS;
			break;
		}
		if (io->token_text) {
			if ((rc = io->token_text(io->user, id, &r->text)) < 0)
				goto out;
			int caller = 0;
			if (stream_check(&st, &caller)) {
				r->reason = DSM_STOP_STRING;
				break;
			}
			if (caller) {
				r->reason = DSM_STOP_CALLER;
				break;
			}
		}
		if (i + 1 == p->max_tokens)
			break;
		if (dsm_session_pos(s) >= dsm_session_ctx(s)) {
			r->reason = DSM_STOP_CONTEXT;
			break;
		}
		if ((rc = dsm_session_forward(s, &id, 1, DSM_LOGITS_LAST, logits)) < 0)
			goto out;
		last = logits;
		if (io->on_logits && io->on_logits(io->user, dsm_session_pos(s) - 1, 1, logits)) {
			r->reason = DSM_STOP_CALLER;
			break;
		}
	}
	if (r->reason != DSM_STOP_STRING && emit(&st, r->text.len) && r->reason != DSM_STOP_EOS)
		r->reason = DSM_STOP_CALLER;
	r->prefill_seconds = t1 - t0;
	r->decode_seconds = now() - t1;
	rc = 0;
out:
	free(logits);
	dsm_sampler_free(&sampler);
	return rc;
}
