/* The generation boundary of the proof search over the engine's scheduler. */
#include "prove_engine.h"

#include "error.h"
#include "tokenizer.h"

#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A request that shares fewer prompt tokens than this with every running one computes its prompt alone. */
#define MIN_SHARED_PREFIX DSM_KV_BLOCK

/* One request: its callback, its text decoder, and its share of the steps' time. Heap-allocated so that
 * the scheduler's token_text callback can keep a pointer to it. */
struct gen_req {
	struct dsm_prove_engine *pe;
	int32_t *prompt;                /* [n_prompt] its tokens, to find prefixes later requests can share */
	int64_t n_prompt;
	void (*on_done)(void *arg, int id, const struct dsm_gen_output *out);
	void *arg;
	int cancelled;
	struct token_stream ts;
	struct text_buffer piece;
	int64_t seen_generated, seen_prefilled;  /* rows counted so far */
	double prefill_seconds, decode_seconds;
};

struct dsm_prove_engine {
	struct dsm_gen gen;
	struct dsm_scheduler *sc;
	struct tokenizer *tok;
	int32_t eos;
	int threads;
	struct gen_req **reqs;          /* [n] by scheduler id; NULL once finished */
	int n, cap;
	int *live;                      /* [n_live] ids not finished */
	int n_live, cap_live;
	double step_seconds;
	uint64_t prompt_tokens;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int token_text(void *user, int32_t id, struct dsm_text *out)
{
	struct gen_req *g = user;
	return dsm_token_text(&g->ts, id, &g->piece, out);
}

static void req_free(struct gen_req *g)
{
	if (g) {
		free(g->prompt);
		text_buffer_free(&g->piece);
		free(g);
	}
}

static int grow_int(int **v, int *cap, int need)
{
	if (need <= *cap)
		return 0;
	int c = *cap ? *cap : 16;
	while (c < need)
		c *= 2;
	int *p = realloc(*v, sizeof(int) * (size_t)c);
	if (!p)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	*v = p;
	*cap = c;
	return 0;
}

/* The running request whose prompt starts with the longest run of these tokens (at least
 * MIN_SHARED_PREFIX), -1 when none: the scheduler forks its sequence there instead of computing the run
 * again. The search's prompts of one kind share their template's head and the problem (verifications of
 * different candidates, refinements and the first generation prompt). */
static int shared_prefix_source(const struct dsm_prove_engine *pe, const int32_t *ids, int64_t n)
{
	int best = -1;
	int64_t best_len = MIN_SHARED_PREFIX - 1;
	for (int i = 0; i < pe->n_live; i++) {
		const struct gen_req *g = pe->reqs[pe->live[i]];
		if (g->cancelled)
			continue;
		int64_t k = 0, m = g->n_prompt < n ? g->n_prompt : n;
		while (k < m && g->prompt[k] == ids[k])
			k++;
		if (k >= best_len) {
			best_len = k;
			best = pe->live[i];
		}
	}
	return best;
}

static int gen_add(void *self, const struct dsm_gen_request *r)
{
	struct dsm_prove_engine *pe = self;
	struct token_ids ids = { 0 };
	int rc = grow_int(&pe->live, &pe->cap_live, pe->n_live + 1);
	if (rc < 0)
		return rc;
	if (pe->n == pe->cap) {
		int cap = pe->cap ? 2 * pe->cap : 64;
		struct gen_req **v = realloc(pe->reqs, sizeof *v * (size_t)cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		pe->reqs = v;
		pe->cap = cap;
	}
	struct gen_req *g = calloc(1, sizeof *g);
	if (!g)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	*g = (struct gen_req){ .pe = pe, .on_done = r->on_done, .arg = r->arg };
	token_stream_init(&g->ts, pe->tok, TOKENIZER_SKIP_SPECIAL);
	/* the chat shell starts with BOS as text: no special tokens added */
	if ((rc = tokenizer_encode(pe->tok, r->prompt, strlen(r->prompt), 0, &ids)) < 0)
		goto out;
	struct dsm_request q = { .prompt = ids.ids, .n_prompt = (int64_t)ids.n,
		.params = { .max_tokens = r->max_tokens, .sampling = r->sampling, .eos_id = pe->eos },
		.io = { .user = g, .token_text = token_text }, .seq = -1,
		.prefix_of = r->prefix_of >= 0 ? r->prefix_of : shared_prefix_source(pe, ids.ids, (int64_t)ids.n) };
	if ((rc = dsm_scheduler_add(pe->sc, &q)) < 0)
		goto out;
	pe->reqs[pe->n++] = g; /* the scheduler's ids count up from 0 like ours */
	pe->live[pe->n_live++] = rc;
	pe->prompt_tokens += ids.n;
	g->prompt = ids.ids;
	g->n_prompt = (int64_t)ids.n;
	ids = (struct token_ids){ 0 };
	g = NULL;
out:
	token_ids_free(&ids);
	req_free(g);
	return rc;
}

static void gen_cancel(void *self, int id)
{
	struct dsm_prove_engine *pe = self;
	if (id >= 0 && id < pe->n && pe->reqs[id]) {
		pe->reqs[id]->cancelled = 1;
		dsm_scheduler_cancel(pe->sc, id);
	}
}

/* Splits a step's time over its rows: each request's prompt rows and generated tokens since the last. */
static void share_time(struct dsm_prove_engine *pe, double dt)
{
	int64_t rows = 0;
	for (int i = 0; i < pe->n_live; i++) {
		const struct dsm_generate_result *res = dsm_scheduler_result(pe->sc, pe->live[i], NULL);
		struct gen_req *g = pe->reqs[pe->live[i]];
		rows += res->n - g->seen_generated + res->n_prefilled - g->seen_prefilled;
	}
	for (int i = 0; i < pe->n_live && rows > 0; i++) {
		const struct dsm_generate_result *res = dsm_scheduler_result(pe->sc, pe->live[i], NULL);
		struct gen_req *g = pe->reqs[pe->live[i]];
		g->prefill_seconds += dt * (double)(res->n_prefilled - g->seen_prefilled) / (double)rows;
		g->decode_seconds += dt * (double)(res->n - g->seen_generated) / (double)rows;
		g->seen_prefilled = res->n_prefilled;
		g->seen_generated = res->n;
	}
}

/* Hands a finished request to its callback and frees it. */
static void deliver(struct dsm_prove_engine *pe, int id)
{
	struct gen_req *g = pe->reqs[id];
	pe->reqs[id] = NULL;
	int rc = 0;
	const struct dsm_generate_result *res = dsm_scheduler_result(pe->sc, id, &rc);
	if (!g->cancelled) {
		struct text_buffer text = { 0 };
		int trc = text_buffer_append(&text, res->text.data ? res->text.data : "", res->text.len);
		/* the decoder's incomplete tail, unless a stop string cut the text */
		g->piece.len = 0;
		if (trc == 0 && res->reason != DSM_STOP_STRING && token_stream_finish(&g->ts, &g->piece) == 0)
			trc = text_buffer_append(&text, g->piece.data ? g->piece.data : "", g->piece.len);
		struct dsm_gen_output out = {
			.rc = rc < 0 ? rc : trc, .error = rc < 0 ? dsm_scheduler_error(pe->sc, id) : trc < 0 ? "out of memory" : "",
			.text = text.data ? text.data : "", .len = text.len, .reason = res->reason, .n_prompt = res->n_prompt,
			.n_prefilled = res->n_prefilled, .n_generated = res->n, .prefill_seconds = g->prefill_seconds,
			.decode_seconds = g->decode_seconds };
		g->on_done(g->arg, id, &out);
		text_buffer_free(&text);
	}
	dsm_scheduler_release(pe->sc, id);
	req_free(g);
}

static int gen_step(void *self)
{
	struct dsm_prove_engine *pe = self;
	if (pe->n_live == 0)
		return 0;
	if (pe->threads > 0)
		omp_set_num_threads(pe->threads);
	double t0 = now();
	int rc = dsm_scheduler_step(pe->sc);
	if (rc < 0)
		return rc;
	double dt = now() - t0;
	pe->step_seconds += dt;
	share_time(pe, dt);
	/* finished requests leave the live list before any callback runs: callbacks add and cancel */
	int n_done = 0, k = 0;
	for (int i = 0; i < pe->n_live; i++)
		n_done += dsm_scheduler_done(pe->sc, pe->live[i]);
	if (n_done == 0)
		return pe->n_live;
	int *done = malloc(sizeof(int) * (size_t)n_done);
	if (!done)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	n_done = 0;
	for (int i = 0; i < pe->n_live; i++) {
		int id = pe->live[i];
		if (dsm_scheduler_done(pe->sc, id))
			done[n_done++] = id;
		else
			pe->live[k++] = id;
	}
	pe->n_live = k;
	for (int i = 0; i < n_done; i++)
		deliver(pe, done[i]);
	free(done);
	return pe->n_live;
}

int dsm_prove_engine_init(struct dsm_prove_engine **out, struct dsm_engine *e, int threads)
{
	*out = NULL;
	struct tokenizer *tok = dsm_engine_tokenizer(e);
	if (!tok)
		return dsm_fail(DSM_EMISSING, "the proof search needs the checkpoint's tokenizer (tokenizer.json)");
	struct dsm_prove_engine *pe = calloc(1, sizeof *pe);
	if (!pe)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = dsm_scheduler_init(&pe->sc, dsm_engine_session(e), NULL);
	if (rc < 0) {
		free(pe);
		return rc;
	}
	pe->tok = tok;
	pe->eos = dsm_engine_model(e)->cfg.eos_token_id;
	pe->threads = threads;
	pe->gen = (struct dsm_gen){ .self = pe, .add = gen_add, .cancel = gen_cancel, .step = gen_step };
	*out = pe;
	return 0;
}

void dsm_prove_engine_free(struct dsm_prove_engine *pe)
{
	if (!pe)
		return;
	dsm_scheduler_free(pe->sc);
	for (int i = 0; i < pe->n; i++)
		req_free(pe->reqs[i]);
	free(pe->reqs);
	free(pe->live);
	free(pe);
}

struct dsm_gen *dsm_prove_engine_gen(struct dsm_prove_engine *pe)
{
	return &pe->gen;
}

void dsm_prove_engine_get_stats(const struct dsm_prove_engine *pe, struct dsm_prove_engine_stats *st)
{
	dsm_scheduler_get_stats(pe->sc, &st->scheduler);
	st->step_seconds = pe->step_seconds;
	st->prompt_tokens = pe->prompt_tokens;
}
