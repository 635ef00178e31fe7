#include "generate.h"

#include "error.h"
#include "model_internal.h"

#include <stdio.h>

#include <stdlib.h>
#include <string.h>

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

/* ---- The scheduler ---- */

enum req_state {
	WAITING,        /* not started: no free sequence yet, or its prefix is still being computed */
	PREFILL,        /* prompt tokens left to run */
	DECODE,         /* `pending` to run */
	DONE,
};

struct req {
	struct dsm_request r;
	int32_t *prompt;                /* [n_prompt] own copy */
	enum req_state state;
	int seq;                        /* its sequence while running */
	int64_t base;                   /* positions its sequence held before the prompt */
	int64_t fed;                    /* prompt tokens run (or shared from a fork) */
	int64_t max_tokens;
	int32_t pending;
	float *logits;                  /* [V] the last position's, while it runs */
	int64_t logits_pos;             /* position of `logits` in the sequence, -1: none */
	float *prompt_logits;           /* [n_prompt, V] with params.prompt_logits, while it runs */
	struct dsm_sampler sampler;
	struct streamer st;
	struct dsm_generate_result res;
	int rc, cancel;
	char error[256];
	double t0, t1;
};

struct dsm_scheduler {
	struct dsm_session *s;
	int64_t chunk, vocab;
	struct req *reqs;
	int n, cap;
	struct dsm_step_seq *items;     /* [max_seqs] */
	int *item_req;                  /* [max_seqs] */
	struct dsm_scheduler_stats stats;
};

int dsm_scheduler_init(struct dsm_scheduler **out, struct dsm_session *s, const struct dsm_scheduler_options *o)
{
	*out = NULL;
	struct dsm_scheduler *sc = calloc(1, sizeof *sc);
	int S = dsm_session_max_seqs(s);
	if (!sc || !(sc->items = calloc((size_t)S, sizeof *sc->items)) ||
	    !(sc->item_req = calloc((size_t)S, sizeof *sc->item_req))) {
		dsm_scheduler_free(sc);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	sc->s = s;
	sc->vocab = dsm_session_model(s)->cfg.vocab_size;
	sc->chunk = o && o->prefill_chunk > 0 ? o->prefill_chunk : s->max_batch;
	*out = sc;
	return 0;
}

static void req_release(struct dsm_scheduler *sc, struct req *q)
{
	if (q->state != DONE && q->state != WAITING && q->r.seq < 0)
		dsm_session_remove(sc->s, q->seq);
	free(q->prompt);
	free(q->logits);
	free(q->prompt_logits);
	dsm_sampler_free(&q->sampler);
	dsm_generate_result_free(&q->res);
}

void dsm_scheduler_free(struct dsm_scheduler *sc)
{
	if (!sc)
		return;
	for (int i = 0; i < sc->n; i++)
		req_release(sc, &sc->reqs[i]);
	free(sc->reqs);
	free(sc->items);
	free(sc->item_req);
	free(sc);
}

int dsm_scheduler_add(struct dsm_scheduler *sc, const struct dsm_request *r)
{
	int64_t ctx = dsm_session_ctx(sc->s);
	if (!r->prompt || r->n_prompt <= 0)
		return dsm_fail(DSM_EARG, "a request with no prompt");
	if (r->prefix_of >= sc->n || (r->prefix_of >= 0 && r->seq >= 0))
		return dsm_fail(DSM_EARG, "request %d: prefix_of %d is not an earlier request (or seq is given too)", sc->n,
				r->prefix_of);
	int64_t held = r->seq >= 0 ? dsm_session_seq_pos(sc->s, r->seq) : 0;
	if (held < 0)
		return dsm_fail(DSM_EARG, "request %d: no sequence %d", sc->n, r->seq);
	for (int i = 0; r->seq >= 0 && i < sc->n; i++)
		if (sc->reqs[i].r.seq == r->seq && sc->reqs[i].state != DONE)
			return dsm_fail(DSM_EARG, "request %d: sequence %d is in use by request %d", sc->n, r->seq, i);
	for (int64_t i = 0; i < r->n_prompt; i++)
		if (r->prompt[i] < 0 || r->prompt[i] >= sc->vocab)
			return dsm_fail(DSM_EARG, "token id %d at %lld is outside the vocabulary [0, %lld)", r->prompt[i],
					(long long)i, (long long)sc->vocab);
	if (r->n_prompt > ctx - held)
		return dsm_fail(DSM_ECONTEXT, "the prompt (%lld tokens) does not fit in the context of %lld tokens%s "
				"(raise --ctx)", (long long)r->n_prompt, (long long)ctx, held ? " after what the sequence holds" : "");
	if (sc->n == sc->cap) {
		int cap = sc->cap ? 2 * sc->cap : 16;
		struct req *v = realloc(sc->reqs, sizeof *v * (size_t)cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		sc->reqs = v;
		sc->cap = cap;
		/* a request's streamer points into the request, which has moved */
		for (int i = 0; i < sc->n; i++) {
			struct req *x = &sc->reqs[i];
			x->st = (struct streamer){ .p = &x->r.params, .io = &x->r.io, .text = &x->res.text,
						   .emitted = x->st.emitted };
		}
	}
	struct req *q = &sc->reqs[sc->n];
	memset(q, 0, sizeof *q);
	q->r = *r;
	q->base = held;
	q->logits_pos = -1;
	int64_t room = ctx - held - r->n_prompt + 1;
	q->max_tokens = r->params.max_tokens < room ? r->params.max_tokens : room;
	if (q->max_tokens < 0)
		q->max_tokens = 0;
	int rc = dsm_sampler_init(&q->sampler, &r->params.sampling, sc->vocab);
	if (rc < 0)
		return rc;
	q->prompt = malloc(sizeof(int32_t) * (size_t)r->n_prompt);
	q->res.ids = malloc(sizeof(int32_t) * (size_t)(q->max_tokens + 1));
	if (!q->prompt || !q->res.ids) {
		q->state = DONE;
		req_release(sc, q);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	memcpy(q->prompt, r->prompt, sizeof(int32_t) * (size_t)r->n_prompt);
	q->r.prompt = q->prompt;
	q->res.n_prompt = r->n_prompt;
	q->st = (struct streamer){ .p = &q->r.params, .io = &q->r.io, .text = &q->res.text };
	q->state = WAITING;
	return sc->n++;
}

int dsm_scheduler_cancel(struct dsm_scheduler *sc, int id)
{
	if (id < 0 || id >= sc->n)
		return dsm_fail(DSM_EARG, "no request %d", id);
	sc->reqs[id].cancel = 1;
	return 0;
}

int dsm_scheduler_done(const struct dsm_scheduler *sc, int id)
{
	return id >= 0 && id < sc->n && sc->reqs[id].state == DONE;
}

const struct dsm_generate_result *dsm_scheduler_result(const struct dsm_scheduler *sc, int id, int *rc)
{
	if (id < 0 || id >= sc->n)
		return NULL;
	if (rc)
		*rc = sc->reqs[id].rc;
	return &sc->reqs[id].res;
}

const char *dsm_scheduler_error(const struct dsm_scheduler *sc, int id)
{
	return id >= 0 && id < sc->n ? sc->reqs[id].error : "";
}

int dsm_scheduler_release(struct dsm_scheduler *sc, int id)
{
	if (!dsm_scheduler_done(sc, id))
		return dsm_fail(DSM_EARG, "request %d is not finished", id);
	struct req *q = &sc->reqs[id];
	req_release(sc, q);
	/* a later request naming this one as prefix_of finds nothing to share */
	q->prompt = NULL;
	q->logits = q->prompt_logits = NULL;
	q->fed = 0;
	q->sampler = (struct dsm_sampler){ 0 };
	q->res = (struct dsm_generate_result){ 0 };
	return 0;
}

int dsm_scheduler_seq(const struct dsm_scheduler *sc, int id)
{
	if (id < 0 || id >= sc->n || sc->reqs[id].state == WAITING || sc->reqs[id].state == DONE)
		return -1;
	return sc->reqs[id].seq;
}

void dsm_scheduler_get_stats(const struct dsm_scheduler *sc, struct dsm_scheduler_stats *st)
{
	*st = sc->stats;
}

static void finish(struct dsm_scheduler *sc, struct req *q, enum dsm_stop_reason why)
{
	if (why != DSM_STOP_STRING && q->rc == 0 && emit(&q->st, q->res.text.len) && why != DSM_STOP_EOS)
		why = DSM_STOP_CALLER;
	q->res.reason = why;
	double t = dsm_now();
	if (q->res.n == 0)
		q->t1 = t;
	q->res.prefill_seconds = q->t1 - q->t0;
	q->res.decode_seconds = t - q->t1;
	if (q->state != WAITING && q->r.seq < 0)
		dsm_session_remove(sc->s, q->seq);
	q->state = DONE;
	free(q->logits);
	free(q->prompt_logits);
	q->logits = q->prompt_logits = NULL;
	q->logits_pos = -1;
}

static void fail(struct dsm_scheduler *sc, struct req *q, int rc, const char *msg)
{
	q->rc = rc;
	snprintf(q->error, sizeof q->error, "%s", msg);
	finish(sc, q, DSM_STOP_CALLER);
}

/* The request has the logits of its last position: sample, stream, and either end or decode next. */
static void next_token(struct dsm_scheduler *sc, struct req *q)
{
	const struct dsm_generate_params *p = &q->r.params;
	const struct dsm_generate_io *io = &q->r.io;
	if (q->res.n >= q->max_tokens) {
		finish(sc, q, p->max_tokens > q->res.n ? DSM_STOP_CONTEXT : DSM_STOP_LENGTH);
		return;
	}
	int32_t id = dsm_sample(&q->sampler, q->logits);
	q->res.ids[q->res.n++] = id;
	if (q->res.n == 1)
		q->t1 = dsm_now();
	if (io->on_token && io->on_token(io->user, id)) {
		finish(sc, q, DSM_STOP_CALLER);
		return;
	}
	if (id == p->eos_id) {
		finish(sc, q, DSM_STOP_EOS);
		return;
	}
	if (io->token_text) {
		int rc = io->token_text(io->user, id, &q->res.text), caller = 0;
		if (rc < 0) {
			fail(sc, q, rc, dsm_errmsg());
			return;
		}
		if (stream_check(&q->st, &caller)) {
			finish(sc, q, DSM_STOP_STRING);
			return;
		}
		if (caller) {
			finish(sc, q, DSM_STOP_CALLER);
			return;
		}
	}
	if (q->res.n == p->max_tokens) {
		finish(sc, q, DSM_STOP_LENGTH);
		return;
	}
	if (dsm_session_seq_pos(sc->s, q->seq) >= dsm_session_ctx(sc->s)) {
		finish(sc, q, DSM_STOP_CONTEXT);
		return;
	}
	q->pending = id;
	q->state = DECODE;
}

/* Tokens of the prompt a and b have in common at their start. */
static int64_t common_prefix(const int32_t *a, int64_t na, const int32_t *b, int64_t nb)
{
	int64_t i = 0;
	while (i < na && i < nb && a[i] == b[i])
		i++;
	return i;
}

/* Greedy decoding that shows no one its logits needs only their largest (DSM_LOGITS_TOP), as dsm_sample. */
static int top_only(const struct req *q)
{
	const struct dsm_sampler_params *sp = &q->r.params.sampling;
	return (sp->temperature <= 0 || sp->top_k == 1) && !q->r.io.on_logits;
}

/* Starts waiting requests while sequences are free; a request whose prefix source is still prefilling
 * waits for it. */
static int admit(struct dsm_scheduler *sc)
{
	for (int i = 0; i < sc->n; i++) {
		struct req *q = &sc->reqs[i];
		if (q->state != WAITING)
			continue;
		if (q->cancel) {
			finish(sc, q, DSM_STOP_CALLER);
			continue;
		}
		size_t vb = sizeof(float) * (size_t)sc->vocab;
		if ((!q->logits && !(q->logits = malloc(vb))) ||
		    (q->r.params.prompt_logits && !q->prompt_logits && !(q->prompt_logits = malloc(vb * (size_t)q->r.n_prompt))))
			return dsm_fail(DSM_ENOMEM, "out of memory for the logits of request %d", i);
		int parent = -1;
		int64_t at = 0;
		if (q->r.prefix_of >= 0 && sc->reqs[q->r.prefix_of].base == 0) {
			struct req *p = &sc->reqs[q->r.prefix_of];
			if (p->state == WAITING || p->state == PREFILL)
				continue;
			int64_t held = p->state == DONE ? 0 : dsm_session_seq_pos(sc->s, p->seq);
			at = common_prefix(p->prompt, p->fed, q->prompt, q->r.n_prompt);
			at = at < held ? at : held;
			/* The whole prompt, and the source still has its last logits (all of them, unless this request
			 * too needs only the largest): start from them. */
			int reuse = at == q->r.n_prompt && p->logits_pos == at - 1 && !q->r.params.prompt_logits &&
				    (top_only(q) || !top_only(p));
			if (!reuse && at == q->r.n_prompt)
				at--;
			if (at > 0) {
				parent = p->seq;
				if (reuse)
					memcpy(q->logits, p->logits, vb);
			}
		}
		if (q->r.seq >= 0) {
			q->seq = q->r.seq;
		} else {
			int id = dsm_session_add(sc->s, parent, parent >= 0 ? at : 0);
			if (id < 0)
				break; /* no free sequence: later */
			q->seq = id;
			if (parent >= 0)
				sc->stats.forks++;
		}
		q->fed = parent >= 0 ? at : 0;
		q->t0 = dsm_now();
		q->state = PREFILL;
		if (q->fed == q->r.n_prompt) {
			q->logits_pos = q->fed - 1;
			next_token(sc, q);
		}
	}
	return 0;
}

int dsm_scheduler_step(struct dsm_scheduler *sc)
{
	struct dsm_session *s = sc->s;
	int rc = admit(sc);
	if (rc < 0)
		return rc;
	int n = 0, S = dsm_session_max_seqs(s);
	int64_t rows = 0, budget, V = sc->vocab;
	/* every decoding request, then prompt chunks, oldest first */
	for (int i = 0; i < sc->n && n < S && rows < s->max_batch; i++) {
		struct req *q = &sc->reqs[i];
		if (q->state == DECODE && q->cancel)
			finish(sc, q, DSM_STOP_CALLER);
		if (q->state != DECODE)
			continue;
		sc->items[n] = (struct dsm_step_seq){ .seq = q->seq, .tokens = &q->pending, .n = 1,
						      .mode = top_only(q) ? DSM_LOGITS_TOP : DSM_LOGITS_LAST,
						      .logits = q->logits };
		sc->item_req[n++] = i;
		rows++;
	}
	budget = s->max_batch - rows < sc->chunk ? s->max_batch - rows : sc->chunk;
	for (int i = 0; i < sc->n && n < S && budget > 0; i++) {
		struct req *q = &sc->reqs[i];
		if (q->state == PREFILL && q->cancel)
			finish(sc, q, DSM_STOP_CALLER);
		if (q->state != PREFILL)
			continue;
		int64_t left = q->r.n_prompt - q->fed, len = left < budget ? left : budget, pos = q->fed;
		int all = q->r.params.prompt_logits;
		sc->items[n] = (struct dsm_step_seq){ .seq = q->seq, .tokens = q->prompt + pos, .n = len,
			.mode = all ? DSM_LOGITS_ALL : len < left ? DSM_LOGITS_NONE : top_only(q) ? DSM_LOGITS_TOP : DSM_LOGITS_LAST,
			.logits = all ? q->prompt_logits + (size_t)pos * (size_t)V : q->logits };
		sc->item_req[n++] = i;
		budget -= len;
		rows += len;
	}
	if (n == 0) {
		int left = 0;
		for (int i = 0; i < sc->n; i++)
			left += sc->reqs[i].state != DONE;
		if (left)
			return dsm_fail(DSM_EARG, "scheduler: %d requests wait but none can run (a prefix source that "
					"never starts)", left);
		return 0;
	}
	if ((rc = dsm_session_step(s, sc->items, n)) < 0)
		return rc;
	sc->stats.steps++;
	sc->stats.max_rows = (uint64_t)rows > sc->stats.max_rows ? (uint64_t)rows : sc->stats.max_rows;
	for (int j = 0; j < n; j++) {
		struct dsm_step_seq *it = &sc->items[j];
		struct req *q = &sc->reqs[sc->item_req[j]];
		const struct dsm_generate_io *io = &q->r.io;
		if (it->rc < 0) {
			fail(sc, q, it->rc, it->error);
			continue;
		}
		int64_t pos = dsm_session_seq_pos(s, q->seq);
		if (q->state == DECODE) {
			sc->stats.decode_tokens++;
			q->logits_pos = pos - 1;
			if (io->on_logits && io->on_logits(io->user, pos - 1, 1, q->logits)) {
				finish(sc, q, DSM_STOP_CALLER);
				continue;
			}
			next_token(sc, q);
			continue;
		}
		sc->stats.prefill_tokens += (uint64_t)it->n;
		q->res.n_prefilled += it->n;
		q->fed += it->n;
		if (q->fed < q->r.n_prompt)
			continue;
		q->logits_pos = pos - 1;
		if (q->r.params.prompt_logits) {
			memcpy(q->logits, q->prompt_logits + (size_t)(q->r.n_prompt - 1) * (size_t)V, sizeof(float) * (size_t)V);
			if (io->on_logits && io->on_logits(io->user, pos - q->r.n_prompt, q->r.n_prompt, q->prompt_logits)) {
				finish(sc, q, DSM_STOP_CALLER);
				continue;
			}
		}
		next_token(sc, q);
	}
	int left = 0;
	for (int i = 0; i < sc->n; i++)
		left += sc->reqs[i].state != DONE;
	return left;
}

int dsm_scheduler_run(struct dsm_scheduler *sc)
{
	int rc;
	while ((rc = dsm_scheduler_step(sc)) > 0)
		;
	return rc;
}

int dsm_generate(struct dsm_session *s, const int32_t *prompt, int64_t n_prompt,
		 const struct dsm_generate_params *p, const struct dsm_generate_io *io,
		 struct dsm_generate_result *r)
{
	memset(r, 0, sizeof *r);
	r->n_prompt = n_prompt;
	struct dsm_scheduler *sc;
	struct dsm_request q = { .prompt = prompt, .n_prompt = n_prompt, .params = *p, .io = *io, .seq = 0,
				 .prefix_of = -1 };
	int rc = dsm_scheduler_init(&sc, s, NULL);
	if (rc < 0)
		return rc;
	if (dsm_session_seq_pos(s, 0) < 0 && (rc = dsm_session_add(s, -1, 0)) != 0) {
		dsm_scheduler_free(sc);
		return rc < 0 ? rc : dsm_fail(DSM_EARG, "sequence 0 is not free");
	}
	if ((rc = dsm_scheduler_add(sc, &q)) >= 0 && (rc = dsm_scheduler_run(sc)) == 0) {
		struct req *x = &sc->reqs[0];
		rc = x->rc;
		if (rc < 0)
			dsm_fail(rc, "%s", x->error);
		*r = x->res;
		memset(&x->res, 0, sizeof x->res);
	}
	dsm_scheduler_free(sc);
	return rc;
}
