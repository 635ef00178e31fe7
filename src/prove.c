/* The proof search as a state machine: requests finish, the search reacts (docs/prove.md). */
#include "prove.h"

#include "error.h"
#include "prove_checks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* One request in flight, the on_done argument of its boundary. */
struct ticket {
	struct dsm_prove *p;
	struct dsm_gen *gen;
	int id;                          /* the boundary's request id */
	enum dsm_prove_kind kind;
	int cand, verif;                 /* the candidate, and the verification (-1 for a generation) */
	struct ticket *prev, *next;
};

/* An external checker running for a candidate. */
struct running_check {
	int cand;
	struct dsm_check_run run;
};

struct dsm_prove {
	struct dsm_prove_result r;
	struct dsm_gen *gen, *verifier;
	struct text_buffer instruction;  /* the rendered proof_generation prompt */
	struct text_buffer gen_prompt;   /* the same in the chat shell */
	struct ticket *inflight;         /* list of requests in flight */
	int n_inflight;
	struct running_check *checks;    /* [n_checks] */
	int n_checks, cap_checks, cap_cand;
	int round;
	double t0, round_t0;
	void (*progress)(void *arg, const struct dsm_prove_progress *p);
	void *progress_arg;
	int finished;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A seed per request from its place in the search, whatever order requests finish in. */
static uint64_t request_seed(uint64_t seed, enum dsm_prove_kind kind, int cand, int j)
{
	uint64_t z = seed ^ ((uint64_t)kind << 56) ^ ((uint64_t)(unsigned)cand << 24) ^ (uint64_t)(unsigned)j;
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (z ^ (z >> 31)) & ((1ull << 53) - 1); /* exact as a JSON number */
}

static char *copy_text(const char *s, size_t n)
{
	char *c = malloc(n + 1);
	if (c) {
		memcpy(c, s, n);
		c[n] = 0;
	}
	return c;
}

/* ---- Requests ---- */

static void ticket_unlink(struct dsm_prove *p, struct ticket *t)
{
	if (t->prev)
		t->prev->next = t->next;
	else
		p->inflight = t->next;
	if (t->next)
		t->next->prev = t->prev;
	p->n_inflight--;
}

static void on_done(void *arg, int id, const struct dsm_gen_output *out);

/* Adds a request; returns its id, or a negative code (the ticket is not kept). */
static int submit(struct dsm_prove *p, struct dsm_gen *gen, enum dsm_prove_kind kind, int cand, int verif,
		  const char *prompt, int prefix_of, int64_t max_tokens, uint64_t seed)
{
	struct ticket *t = calloc(1, sizeof *t);
	if (!t)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	*t = (struct ticket){ .p = p, .gen = gen, .kind = kind, .cand = cand, .verif = verif };
	const struct dsm_prove_settings *s = &p->r.settings;
	struct dsm_gen_request q = { .kind = kind, .prompt = prompt, .prefix_of = prefix_of, .max_tokens = max_tokens,
		.sampling = { .temperature = s->temperature, .top_p = s->top_p, .seed = seed },
		.on_done = on_done, .arg = t };
	int id = gen->add(gen->self, &q);
	if (id < 0) {
		free(t);
		return id;
	}
	t->id = id;
	t->next = p->inflight;
	if (p->inflight)
		p->inflight->prev = t;
	p->inflight = t;
	p->n_inflight++;
	return id;
}

/* The chat shell around a rendered template. */
static int render(const struct dsm_prove *p, enum template_kind kind, const struct template_fields *f,
		  struct text_buffer *out)
{
	struct text_buffer user = { 0 };
	int rc = template_render(p->r.settings.templates, kind, f, &user);
	if (rc == 0)
		rc = chat_prompt(p->r.settings.templates->system, user.data ? user.data : "", p->r.settings.thinking, out);
	text_buffer_free(&user);
	return rc;
}

static void account(struct dsm_prove *p, enum dsm_prove_kind kind, int round, const struct dsm_gen_output *o)
{
	struct dsm_prove_phase *ph[2] = { &p->r.phase[kind], &p->r.rounds[round].phase[kind] };
	for (int i = 0; i < 2; i++) {
		ph[i]->requests++;
		ph[i]->prompt_tokens += (uint64_t)o->n_prompt;
		ph[i]->computed_prompt_tokens += (uint64_t)o->n_prefilled;
		ph[i]->generated_tokens += (uint64_t)o->n_generated;
		ph[i]->prefill_seconds += o->prefill_seconds;
		ph[i]->decode_seconds += o->decode_seconds;
	}
}

/* ---- Ranking ---- */

/* < 0 when candidate a ranks before b: a valid mean first, then the higher mean, the higher self
 * evaluation score, the earlier candidate. */
static int rank_cmp(const struct dsm_prove_candidate *a, const struct dsm_prove_candidate *b)
{
	if ((a->n_valid > 0) != (b->n_valid > 0))
		return a->n_valid > 0 ? -1 : 1;
	if (a->n_valid > 0 && a->mean != b->mean)
		return a->mean > b->mean ? -1 : 1;
	double sa = a->self_score.valid ? a->self_score.score : -1, sb = b->self_score.valid ? b->self_score.score : -1;
	if (sa != sb)
		return sa > sb ? -1 : 1;
	return a->index < b->index ? -1 : a->index > b->index;
}

static int best_scored(const struct dsm_prove *p)
{
	int best = -1;
	for (int i = 0; i < p->r.n_cand; i++)
		if (p->r.cand[i].finished && p->r.cand[i].n_valid > 0 && (best < 0 || rank_cmp(&p->r.cand[i], &p->r.cand[best]) < 0))
			best = i;
	return best;
}

static void report(struct dsm_prove *p, int round_done)
{
	if (!p->progress)
		return;
	struct dsm_prove_progress g = { .round = p->round, .round_done = round_done, .best = best_scored(p),
					.seconds = now() - p->t0 };
	for (int i = 0; i < p->r.n_cand; i++) {
		const struct dsm_prove_candidate *c = &p->r.cand[i];
		if (c->round == p->round) {
			g.candidates++;
			g.candidates_done += c->finished;
			for (int j = 0; j < c->n_v; j++) {
				g.verifications++;
				g.verifications_done += c->v[j].done;
			}
		}
	}
	for (int k = 0; k < DSM_PROVE_KINDS; k++)
		g.generated_tokens += p->r.phase[k].generated_tokens;
	g.best_mean = g.best >= 0 ? p->r.cand[g.best].mean : 0;
	p->progress(p->progress_arg, &g);
}

/* ---- The end ---- */

static void finish(struct dsm_prove *p, enum dsm_prove_stop stop)
{
	if (p->finished)
		return;
	p->finished = 1;
	p->r.stop = stop;
	while (p->inflight) {
		struct ticket *t = p->inflight;
		ticket_unlink(p, t);
		t->gen->cancel(t->gen->self, t->id);
		free(t);
	}
	for (int i = 0; i < p->n_checks; i++)
		dsm_check_abort(&p->checks[i].run);
	p->n_checks = 0;
	p->r.selected = best_scored(p);
	double t = now();
	if (p->r.n_rounds > 0)
		p->r.rounds[p->r.n_rounds - 1].seconds = t - p->round_t0;
	p->r.seconds = t - p->t0;
}

static void fatal(struct dsm_prove *p, int rc)
{
	snprintf(p->r.error, sizeof p->r.error, "%s (%s)", dsm_errmsg(), dsm_error_name(rc));
	finish(p, DSM_PROVE_FAILED);
}

/* A candidate whose work is all done: its mean, and the threshold. */
static void candidate_finished(struct dsm_prove *p, int ci)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	c->finished = 1;
	double sum = 0;
	c->n_valid = 0;
	for (int j = 0; j < c->n_v; j++)
		if (c->v[j].score.valid && !c->v[j].discarded) {
			sum += c->v[j].score.score;
			c->n_valid++;
		}
	c->mean = c->n_valid ? sum / c->n_valid : 0;
	report(p, 0);
	if (c->n_valid > 0 && c->mean >= p->r.settings.threshold)
		finish(p, DSM_PROVE_THRESHOLD);
}

static void maybe_finished(struct dsm_prove *p, int ci)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	for (int j = 0; j < c->n_v; j++)
		if (!c->v[j].done)
			return;
	candidate_finished(p, ci);
}

/* ---- Verification ---- */

static void set_error(char **slot, const char *msg)
{
	free(*slot);
	*slot = copy_text(msg, strlen(msg));
}

/* Reads a verifier's (or meta-verifier's) output: its analysis and score. */
static void read_grading(const struct dsm_prove *p, const struct dsm_gen_output *o, char **analysis,
			 size_t *thinking_chars, struct dsm_prove_score *sc)
{
	struct output_split sp;
	if (p->r.settings.thinking)
		output_split_thinking(o->text, o->len, &sp);
	else
		sp = (struct output_split){ .thinking = { o->text, 0 }, .answer = { o->text, o->len }, .has_answer = 1 };
	*analysis = copy_text(sp.answer.data, sp.answer.len);
	*thinking_chars = sp.thinking.len;
	sc->valid = 0;
	if (o->rc < 0) {
		snprintf(sc->note, sizeof sc->note, "no valid score: the request failed");
	} else if (!sp.has_answer) {
		snprintf(sc->note, sizeof sc->note, "no valid score: no </think> (the thinking never ended)");
	} else if (o->reason == DSM_STOP_LENGTH || o->reason == DSM_STOP_CONTEXT) {
		snprintf(sc->note, sizeof sc->note, "no valid score: cut off at the %s",
			 o->reason == DSM_STOP_LENGTH ? "token limit" : "end of the context");
	} else {
		struct score_result s;
		output_parse_score(sp.answer.data, sp.answer.len, &s);
		score_describe(&s, sc->note, sizeof sc->note);
		sc->valid = s.status == SCORE_VALID;
		sc->score = sc->valid ? s.score : 0;
	}
}

static void start_meta(struct dsm_prove *p, int ci, int vi)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	struct dsm_prove_verification *v = &c->v[vi];
	struct text_buffer prompt = { 0 };
	struct template_fields f = { .statement = p->r.problem, .proof = c->proof, .rating = v->analysis };
	int rc = render(p, TEMPLATE_META_VERIFICATION, &f, &prompt);
	if (rc == 0)
		rc = submit(p, p->verifier, DSM_PROVE_META, ci, vi, prompt.data, -1, p->r.settings.verification_tokens,
			    request_seed(p->r.settings.seed, DSM_PROVE_META, ci, vi));
	text_buffer_free(&prompt);
	if (rc == DSM_ECONTEXT) {
		v->meta_done = 1;
		snprintf(v->meta.note, sizeof v->meta.note, "no valid score: the prompt does not fit in the context");
		v->done = 1;
	} else if (rc < 0) {
		fatal(p, rc);
	}
}

static void verification_done(struct dsm_prove *p, int ci, int vi, const struct dsm_gen_output *o)
{
	struct dsm_prove_verification *v = &p->r.cand[ci].v[vi];
	v->tokens = o->n_generated;
	v->reason = o->reason;
	if (o->rc < 0)
		set_error(&v->error, o->error);
	read_grading(p, o, &v->analysis, &v->thinking_chars, &v->score);
	if (!v->analysis)
		return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
	if (p->r.settings.meta_verify && v->score.valid)
		start_meta(p, ci, vi);
	else
		v->done = 1;
}

static void meta_done(struct dsm_prove *p, int ci, int vi, const struct dsm_gen_output *o)
{
	struct dsm_prove_verification *v = &p->r.cand[ci].v[vi];
	size_t thinking;
	v->meta_done = 1;
	v->meta_tokens = o->n_generated;
	read_grading(p, o, &v->meta_analysis, &thinking, &v->meta);
	if (!v->meta_analysis)
		return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
	v->discarded = v->meta.valid && v->meta.score == 0;
	v->done = 1;
}

/* The M verifications of a candidate: one prompt, the first request computes it, the others fork it. */
static void start_verifications(struct dsm_prove *p, int ci)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	int M = p->r.settings.n_verifications;
	c->verified = 1;
	if (!(c->v = calloc((size_t)M, sizeof *c->v)))
		return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
	c->n_v = M;
	struct text_buffer prompt = { 0 };
	struct template_fields f = { .statement = p->r.problem, .proof = c->proof };
	int rc = render(p, TEMPLATE_PROOF_VERIFICATION, &f, &prompt), first = -1;
	for (int j = 0; j < M && rc >= 0; j++) {
		c->v[j].seed = request_seed(p->r.settings.seed, DSM_PROVE_VERIFICATION, ci, j);
		rc = submit(p, p->verifier, DSM_PROVE_VERIFICATION, ci, j, prompt.data, first,
			    p->r.settings.verification_tokens, c->v[j].seed);
		if (j == 0)
			first = rc;
	}
	text_buffer_free(&prompt);
	if (rc == DSM_ECONTEXT) {
		for (int j = 0; j < M; j++) {
			c->v[j].done = 1;
			set_error(&c->v[j].error, dsm_errmsg());
			snprintf(c->v[j].score.note, sizeof c->v[j].score.note, "no valid score: the prompt does not fit "
				 "in the context");
		}
		candidate_finished(p, ci);
	} else if (rc < 0) {
		fatal(p, rc);
	}
}

/* ---- Candidates ---- */

static void check_outcome(struct dsm_prove *p, int ci, struct dsm_check_outcome *o)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	struct dsm_prove_check *k = &c->check;
	struct text_buffer clean = { 0 };
	k->exit_status = o->exit_status;
	k->signal = o->signal;
	k->timed_out = o->timed_out;
	k->seconds = o->seconds;
	k->passed = o->exit_status == 0 && !o->timed_out;
	k->output_truncated = o->output_truncated;
	/* a checker may write anything: the document holds valid UTF-8 */
	if (utf8_append_lossy(&clean, (const unsigned char *)o->output, strlen(o->output)) < 0 ||
	    !(k->output = copy_text(clean.data ? clean.data : "", clean.len))) {
		text_buffer_free(&clean);
		return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
	}
	text_buffer_free(&clean);
	if (k->passed || p->r.settings.check_weight == DSM_CHECK_RECORD)
		start_verifications(p, ci);
	else
		candidate_finished(p, ci);
}

static int check_start(struct dsm_prove *p, int ci)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	c->check.ran = 1;
	c->check.exit_status = -1;
	if (p->n_checks == p->cap_checks) {
		int cap = p->cap_checks ? 2 * p->cap_checks : 8;
		struct running_check *v = realloc(p->checks, sizeof *v * (size_t)cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		p->checks = v;
		p->cap_checks = cap;
	}
	struct running_check *k = &p->checks[p->n_checks];
	k->cand = ci;
	int rc = dsm_check_start(&k->run, p->r.settings.check_cmd, c->proof, p->r.problem, ci);
	if (rc == DSM_EIO) {
		set_error(&c->check.error, dsm_errmsg());
		if (p->r.settings.check_weight == DSM_CHECK_RECORD)
			start_verifications(p, ci);
		else
			candidate_finished(p, ci);
		return 0;
	}
	if (rc < 0)
		return rc;
	p->n_checks++;
	return 0;
}

/* A generation or refinement finished: rules, checker, verification. */
static void candidate_done(struct dsm_prove *p, int ci, const struct dsm_gen_output *o)
{
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	const struct dsm_prove_settings *s = &p->r.settings;
	c->tokens = o->n_generated;
	c->reason = o->reason;
	if (o->rc < 0) {
		set_error(&c->error, o->error);
		c->rule = "error";
		snprintf(c->rule_detail, sizeof c->rule_detail, "the generation failed");
		return candidate_finished(p, ci);
	}
	struct dsm_rule_input in = { .text = o->text, .len = o->len, .reason = o->reason, .thinking = s->thinking,
				     .problem = p->r.problem };
	struct dsm_rule_parts parts;
	const char *rule = dsm_rules_check(&in, &parts, c->rule_detail, sizeof c->rule_detail);
	c->thinking_chars = parts.split.thinking.len;
	struct text_view proof = parts.sections.proof;
	if (!parts.sections.has_solution && !s->rule_checks)
		proof = parts.split.has_answer ? parts.split.answer : (struct text_view){ o->text, o->len };
	if (parts.sections.has_solution || proof.len) {
		if (!(c->proof = copy_text(proof.data, proof.len)))
			return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
	}
	if (parts.sections.has_self_evaluation) {
		struct score_result sr;
		const struct text_view *se = &parts.sections.self_evaluation;
		output_parse_score(se->data, se->len, &sr);
		score_describe(&sr, c->self_score.note, sizeof c->self_score.note);
		c->self_score.valid = sr.status == SCORE_VALID;
		c->self_score.score = c->self_score.valid ? sr.score : 0;
	} else {
		snprintf(c->self_score.note, sizeof c->self_score.note, "no valid score: no Self Evaluation section");
	}
	if (!s->rule_checks && proof.len) {
		rule = NULL;
		c->rule_detail[0] = 0;
	} else if (!s->rule_checks) {
		rule = "no_solution";
		snprintf(c->rule_detail, sizeof c->rule_detail, "no proof text: nothing to verify");
	}
	if (rule) {
		c->rule = rule;
		return candidate_finished(p, ci);
	}
	if (s->check_cmd) {
		int rc = check_start(p, ci);
		if (rc < 0)
			fatal(p, rc);
		return;
	}
	start_verifications(p, ci);
}

/* A new candidate record; returns its index or a negative code. */
static int candidate_new(struct dsm_prove *p, enum dsm_prove_kind origin, int parent, int sample)
{
	if (p->r.n_cand == p->cap_cand) {
		int cap = p->cap_cand ? 2 * p->cap_cand : 64;
		struct dsm_prove_candidate *v = realloc(p->r.cand, sizeof *v * (size_t)cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		p->r.cand = v;
		p->cap_cand = cap;
	}
	int ci = p->r.n_cand++;
	struct dsm_prove_candidate *c = &p->r.cand[ci];
	memset(c, 0, sizeof *c);
	c->index = ci;
	c->round = p->round;
	c->origin = origin;
	c->parent = parent;
	c->sample = sample;
	c->seed = request_seed(p->r.settings.seed, origin, ci, 0);
	p->r.rounds[p->round].candidates++;
	return ci;
}

/* S candidates from one prompt: the first computes it, the others fork it. A prompt that does not fit in
 * the context fails these candidates only. */
static int generate(struct dsm_prove *p, enum dsm_prove_kind kind, const char *prompt, int first_cand, int n)
{
	int first = -1, rc = 0;
	for (int i = 0; i < n; i++) {
		struct dsm_prove_candidate *c = &p->r.cand[first_cand + i];
		rc = submit(p, p->gen, kind, first_cand + i, -1, prompt, first, p->r.settings.proof_tokens, c->seed);
		if (rc == DSM_ECONTEXT) {
			/* the first, since they share the prompt: none was added */
			for (int j = i; j < n; j++) {
				c = &p->r.cand[first_cand + j];
				set_error(&c->error, dsm_errmsg());
				c->rule = "error";
				snprintf(c->rule_detail, sizeof c->rule_detail, "the prompt does not fit in the context");
				c->finished = 1;
			}
			return 0;
		}
		if (rc < 0)
			return rc;
		if (i == 0)
			first = rc;
	}
	return 0;
}

/* ---- Rounds ---- */

static int round_new(struct dsm_prove *p)
{
	struct dsm_prove_round *v = realloc(p->r.rounds, sizeof *v * (size_t)(p->r.n_rounds + 1));
	if (!v)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	p->r.rounds = v;
	memset(&v[p->r.n_rounds], 0, sizeof *v);
	p->round = p->r.n_rounds++;
	p->round_t0 = now();
	return 0;
}

/* The parent's verifications shown in its refinement: valid, not discarded, those that found problems
 * first (score 0, then 0.5, then 1), at most E. */
static int choose_evaluations(struct dsm_prove *p, struct dsm_prove_candidate *c, int *shown)
{
	int n = 0, E = p->r.settings.n_evaluations;
	static const double order[] = { 0, 0.5, 1 };
	for (int k = 0; k < 3; k++)
		for (int j = 0; j < c->n_v && n < E; j++)
			if (c->v[j].score.valid && !c->v[j].discarded && c->v[j].score.score == order[k])
				shown[n++] = j;
	return n;
}

static int refine(struct dsm_prove *p, int parent)
{
	const struct dsm_prove_settings *s = &p->r.settings;
	int shown[REFINEMENT_MAX_EVALUATIONS];
	int n_shown = choose_evaluations(p, &p->r.cand[parent], shown), first = -1, rc;
	struct refinement_evaluation ev[REFINEMENT_MAX_EVALUATIONS];
	for (int i = 0; i < n_shown; i++) {
		const struct dsm_prove_verification *v = &p->r.cand[parent].v[shown[i]];
		ev[i] = (struct refinement_evaluation){ .text = v->analysis, .score = v->score.score };
	}
	struct refinement_candidate rc_in = { .proof = p->r.cand[parent].proof, .evaluations = ev,
					      .n_evaluations = (size_t)n_shown };
	struct text_buffer block = { 0 }, prompt = { 0 };
	rc = refinement_input(&rc_in, 1, (size_t)n_shown, &block);
	struct template_fields f = { .instruction = p->instruction.data, .proofs_to_refine = block.data ? block.data : "" };
	if (rc == 0)
		rc = render(p, TEMPLATE_PROOF_REFINEMENT, &f, &prompt);
	for (int j = 0; j < s->n_samples && rc == 0; j++) {
		int ci = candidate_new(p, DSM_PROVE_REFINEMENT, parent, j);
		if (ci < 0) {
			rc = ci;
			break;
		}
		if (first < 0)
			first = ci;
		struct dsm_prove_candidate *c = &p->r.cand[ci];
		if (n_shown && !(c->shown = malloc(sizeof(int) * (size_t)n_shown))) {
			rc = dsm_fail(DSM_ENOMEM, "out of memory");
			break;
		}
		if (n_shown)
			memcpy(c->shown, shown, sizeof(int) * (size_t)n_shown);
		c->n_shown = n_shown;
	}
	if (rc == 0)
		rc = generate(p, DSM_PROVE_REFINEMENT, prompt.data, first, s->n_samples);
	text_buffer_free(&block);
	text_buffer_free(&prompt);
	return rc;
}

/* Every request of the round has finished: stop, or refine the K best of the pool. */
static void round_end(struct dsm_prove *p)
{
	const struct dsm_prove_settings *s = &p->r.settings;
	while (!p->finished && p->n_inflight == 0 && p->n_checks == 0) {
		struct dsm_prove_round *rd = &p->r.rounds[p->round];
		rd->seconds = now() - p->round_t0;
		for (int i = 0; i < p->r.n_cand; i++)
			rd->verified += p->r.cand[i].round == p->round && p->r.cand[i].verified;
		report(p, 1);
		if (p->round + 1 >= s->max_rounds)
			return finish(p, DSM_PROVE_ROUNDS);
		int *order = malloc(sizeof(int) * (size_t)p->r.n_cand), n = 0, rc;
		if (!order)
			return fatal(p, dsm_fail(DSM_ENOMEM, "out of memory"));
		for (int i = 0; i < p->r.n_cand; i++)
			if (p->r.cand[i].verified)
				order[n++] = i;
		/* insertion sort: pools are small next to the work each candidate costs */
		for (int i = 1; i < n; i++)
			for (int j = i; j > 0 && rank_cmp(&p->r.cand[order[j]], &p->r.cand[order[j - 1]]) < 0; j--) {
				int t = order[j];
				order[j] = order[j - 1];
				order[j - 1] = t;
			}
		if (n == 0) {
			free(order);
			return finish(p, DSM_PROVE_NOTHING_TO_REFINE);
		}
		if ((rc = round_new(p)) < 0) {
			free(order);
			return fatal(p, rc);
		}
		for (int i = 0; i < n && i < s->n_best && rc == 0; i++)
			rc = refine(p, order[i]);
		free(order);
		if (rc < 0)
			return fatal(p, rc);
	}
}

/* ---- Events ---- */

static void on_done(void *arg, int id, const struct dsm_gen_output *out)
{
	struct ticket *t = arg;
	struct dsm_prove *p = t->p;
	(void)id;
	ticket_unlink(p, t);
	int ci = t->cand, vi = t->verif;
	enum dsm_prove_kind kind = t->kind;
	free(t);
	account(p, kind, p->r.cand[ci].round, out);
	switch (kind) {
	case DSM_PROVE_GENERATION:
	case DSM_PROVE_REFINEMENT:
		candidate_done(p, ci, out);
		break;
	case DSM_PROVE_VERIFICATION:
		verification_done(p, ci, vi, out);
		if (!p->finished)
			maybe_finished(p, ci);
		break;
	case DSM_PROVE_META:
		meta_done(p, ci, vi, out);
		if (!p->finished)
			maybe_finished(p, ci);
		break;
	default:
		break;
	}
	round_end(p);
}

int dsm_prove_poll(struct dsm_prove *p)
{
	for (int i = 0; i < p->n_checks && !p->finished;) {
		struct dsm_check_outcome o;
		int rc = dsm_check_poll(&p->checks[i].run, p->r.settings.check_timeout, &o);
		if (rc < 0) {
			fatal(p, rc);
			break;
		}
		if (rc == 0) {
			i++;
			continue;
		}
		int ci = p->checks[i].cand;
		p->checks[i] = p->checks[--p->n_checks];
		check_outcome(p, ci, &o);
		free(o.output);
		round_end(p);
	}
	return p->n_checks;
}

/* ---- The search ---- */

int dsm_prove_start(struct dsm_prove **out, const char *problem, const struct dsm_prove_settings *settings,
		    struct dsm_gen *gen, struct dsm_gen *verifier,
		    void (*progress)(void *arg, const struct dsm_prove_progress *p), void *progress_arg)
{
	*out = NULL;
	int rc = dsm_prove_settings_check(settings);
	if (rc < 0)
		return rc;
	struct dsm_prove *p = calloc(1, sizeof *p);
	if (!p)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	p->r.settings = *settings;
	p->r.selected = -1;
	p->gen = gen;
	p->verifier = verifier;
	p->progress = progress;
	p->progress_arg = progress_arg;
	p->t0 = now();
	struct text_view q = { problem, strlen(problem) };
	while (q.len && strchr(" \t\r\n", *q.data))
		q.data++, q.len--;
	while (q.len && strchr(" \t\r\n", q.data[q.len - 1]))
		q.len--;
	if (!(p->r.problem = copy_text(q.data, q.len))) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto err;
	}
	struct template_fields f = { .question = p->r.problem };
	if ((rc = template_render(settings->templates, TEMPLATE_PROOF_GENERATION, &f, &p->instruction)) < 0 ||
	    (rc = chat_prompt(settings->templates->system, p->instruction.data, settings->thinking, &p->gen_prompt)) < 0 ||
	    (rc = round_new(p)) < 0)
		goto err;
	for (int i = 0; i < settings->n_candidates; i++)
		if ((rc = candidate_new(p, DSM_PROVE_GENERATION, -1, i)) < 0)
			goto err;
	if ((rc = generate(p, DSM_PROVE_GENERATION, p->gen_prompt.data, 0, settings->n_candidates)) < 0)
		goto err;
	round_end(p); /* when the prompt did not fit, nothing is in flight */
	*out = p;
	return 0;
err:
	dsm_prove_free(p);
	return rc;
}

int dsm_prove_finished(const struct dsm_prove *p)
{
	return p->finished;
}

void dsm_prove_stop(struct dsm_prove *p, enum dsm_prove_stop why)
{
	finish(p, why);
}

uint64_t dsm_prove_generated_tokens(const struct dsm_prove *p)
{
	uint64_t n = 0;
	for (int k = 0; k < DSM_PROVE_KINDS; k++)
		n += p->r.phase[k].generated_tokens;
	return n;
}

const struct dsm_prove_result *dsm_prove_result(const struct dsm_prove *p)
{
	return &p->r;
}

void dsm_prove_free(struct dsm_prove *p)
{
	if (!p)
		return;
	finish(p, DSM_PROVE_FAILED);
	for (int i = 0; i < p->r.n_cand; i++) {
		struct dsm_prove_candidate *c = &p->r.cand[i];
		for (int j = 0; j < c->n_v; j++) {
			free(c->v[j].analysis);
			free(c->v[j].meta_analysis);
			free(c->v[j].error);
		}
		free(c->v);
		free(c->shown);
		free(c->proof);
		free(c->check.output);
		free(c->check.error);
		free(c->error);
	}
	free(p->r.cand);
	free(p->r.rounds);
	free(p->r.problem);
	free(p->checks);
	text_buffer_free(&p->instruction);
	text_buffer_free(&p->gen_prompt);
	free(p);
}

int dsm_prove_run(struct dsm_prove *const *searches, int n_searches, struct dsm_gen *const *gens, int n_gens)
{
	for (;;) {
		int open = 0, work = 0, checks = 0;
		for (int i = 0; i < n_searches; i++)
			open += !searches[i]->finished;
		if (!open)
			return 0;
		for (int g = 0; g < n_gens; g++) {
			int rc = gens[g]->step(gens[g]->self);
			if (rc < 0)
				return rc;
			work += rc;
		}
		for (int i = 0; i < n_searches; i++)
			checks += dsm_prove_poll(searches[i]);
		if (work == 0 && checks > 0) {
			struct timespec ts = { 0, 5000000 };
			nanosleep(&ts, NULL);
		}
		if (work == 0 && checks == 0) {
			for (int i = 0; i < n_searches; i++)
				if (!searches[i]->finished && searches[i]->n_inflight == 0 && searches[i]->n_checks == 0)
					return dsm_fail(DSM_EARG, "proof search %d waits for nothing", i);
		}
	}
}
