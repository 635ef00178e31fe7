/* The proof search's control flow against a scripted generator: a test double at the generation boundary
 * that answers each request from a script by kind and prompt, finishing a few requests per step. Checks
 * pipelining and shared prefixes, rule checks, selection, the refinement input, the threshold stop, round
 * limits, verifications without a valid score, meta-verification, and the external checker.
 *
 * With a folder argument, every result document is written there (the shell wrapper validates them
 * against docs/prove-result.schema.json). */
#include "error.h"
#include "prove.h"
#include "prove_checks.h"
#include "test_util.h"

#include <stdarg.h>
#include <string.h>

#define MAX_REQS 512

/* ---- The scripted generator ---- */

struct sreq {
	enum dsm_prove_kind kind;
	char *prompt;
	int prefix_of, done, cancelled;
	int nth_kind;                   /* its index among requests of its kind */
	int nth_prompt;                 /* its index among requests with the same prompt */
	int added_at_step;
	int64_t max_tokens;
	uint64_t seed;
	void (*on_done)(void *arg, int id, const struct dsm_gen_output *out);
	void *arg;
};

struct script {
	struct dsm_gen gen;
	struct sreq reqs[MAX_REQS];
	int n, steps, per_step;         /* per_step: requests finished per step, oldest first */
	int n_kind[DSM_PROVE_KINDS], cancels;
	/* the answer to a request; *reason defaults to EOS */
	const char *(*answer)(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason);
	void *user;
	int done_order[MAX_REQS], n_done;
};

static int s_add(void *self, const struct dsm_gen_request *r)
{
	struct script *s = self;
	if (s->n == MAX_REQS)
		return dsm_fail(DSM_ENOMEM, "script: too many requests");
	struct sreq *q = &s->reqs[s->n];
	memset(q, 0, sizeof *q);
	q->kind = r->kind;
	q->prompt = strdup(r->prompt);
	q->prefix_of = r->prefix_of;
	q->max_tokens = r->max_tokens;
	q->seed = r->sampling.seed;
	q->on_done = r->on_done;
	q->arg = r->arg;
	q->added_at_step = s->steps;
	q->nth_kind = s->n_kind[r->kind]++;
	for (int i = 0; i < s->n; i++)
		q->nth_prompt += strcmp(s->reqs[i].prompt, r->prompt) == 0;
	return s->n++;
}

static void s_cancel(void *self, int id)
{
	struct script *s = self;
	if (!s->reqs[id].done && !s->reqs[id].cancelled) {
		s->reqs[id].cancelled = 1;
		s->cancels++;
	}
}

static int s_step(void *self)
{
	struct script *s = self;
	s->steps++;
	int finished = 0;
	for (int i = 0; i < s->n && (s->per_step == 0 || finished < s->per_step); i++) {
		struct sreq *q = &s->reqs[i];
		if (q->done || q->cancelled || q->added_at_step == s->steps)
			continue;
		q->done = 1;
		finished++;
		s->done_order[s->n_done++] = i;
		enum dsm_stop_reason reason = DSM_STOP_EOS;
		const char *text = s->answer(s, q, &reason);
		int64_t n_prompt = (int64_t)strlen(q->prompt) / 4;
		struct dsm_gen_output out = { .error = "", .text = text, .len = strlen(text), .reason = reason,
			.n_prompt = n_prompt, .n_prefilled = q->prefix_of >= 0 ? 0 : n_prompt,
			.n_generated = (int64_t)strlen(text) / 4 + 1, .prefill_seconds = 0.001, .decode_seconds = 0.002 };
		q->on_done(q->arg, i, &out);
	}
	int left = 0;
	for (int i = 0; i < s->n; i++)
		left += !s->reqs[i].done && !s->reqs[i].cancelled;
	return left;
}

static void script_init(struct script *s, int per_step,
			const char *(*answer)(struct script *, const struct sreq *, enum dsm_stop_reason *), void *user)
{
	memset(s, 0, sizeof *s);
	s->gen = (struct dsm_gen){ .self = s, .add = s_add, .cancel = s_cancel, .step = s_step };
	s->per_step = per_step;
	s->answer = answer;
	s->user = user;
}

static void script_free(struct script *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->reqs[i].prompt);
}

/* ---- Canned outputs ---- */

static const char problem[] = "Prove that the sum of two odd integers is even.";

static char buf[64][2048];
static int buf_i;

static const char *fmt(const char *f, ...)
{
	char *b = buf[buf_i++ % 64];
	va_list ap;
	va_start(ap, f);
	vsnprintf(b, sizeof buf[0], f, ap);
	va_end(ap);
	return b;
}

/* A well-formed candidate whose proof carries the marker PROOF<k>. */
static const char *good_candidate(int k, const char *self_score)
{
	return fmt("Let me think about odd numbers.</think>\n## Solution\n\nPROOF%d. Write a = 2m + 1 and b = 2n + 1 "
		   "for integers m and n. Then a + b = 2(m + n + 1), which is twice an integer.\n\n## Self Evaluation\n\n"
		   "Every step is justified. \\boxed{%s}", k, self_score);
}

/* The marker k of the proof a prompt carries (the last PROOF<k> in it), -1 when none. */
static int marker(const char *prompt)
{
	const char *p = prompt, *last = NULL;
	while ((p = strstr(p, "PROOF")) != NULL) {
		if (p[5] >= '0' && p[5] <= '9')
			last = p;
		p += 5;
	}
	return last ? atoi(last + 5) : -1;
}

static const char *grading(const char *score)
{
	return fmt("I checked each step.</think>\nGrading notes. \\boxed{%s}", score);
}

static int run_search(struct dsm_prove **p, const struct dsm_prove_settings *st, struct script *gen,
		      struct script *ver)
{
	int rc = dsm_prove_start(p, problem, st, &gen->gen, &ver->gen, NULL, NULL);
	if (rc < 0)
		return rc;
	struct dsm_gen *gens[2] = { &gen->gen, &ver->gen };
	return dsm_prove_run(p, 1, gens, gen == ver ? 1 : 2);
}

static const char *out_dir;

/* Writes the document when a folder was given, and checks a few of its fields. */
static void document(const struct dsm_prove *p, const char *name)
{
	cJSON *j = dsm_prove_to_json(dsm_prove_result(p));
	CHECK(j != NULL, "%s: no document", name);
	if (!j)
		return;
	CHECK(cJSON_IsArray(cJSON_GetObjectItem(j, "candidates")), "%s: candidates", name);
	CHECK(cJSON_IsString(cJSON_GetObjectItem(j, "stop_reason")), "%s: stop_reason", name);
	char *text = cJSON_Print(j);
	CHECK(text && !strstr(text, "correct proof"), "%s: the document calls a proof correct", name);
	if (out_dir && text) {
		char path[4096];
		snprintf(path, sizeof path, "%s/%s.json", out_dir, name);
		FILE *f = fopen(path, "w");
		CHECK(f != NULL, "%s", path);
		if (f) {
			fputs(text, f);
			fclose(f);
		}
	}
	free(text);
	cJSON_Delete(j);
}

static struct templates tpl;

static void settings(struct dsm_prove_settings *st, int N, int M, int K, int E, int S, int R)
{
	dsm_prove_settings_default(st);
	st->n_candidates = N;
	st->n_verifications = M;
	st->n_best = K;
	st->n_evaluations = E;
	st->n_samples = S;
	st->max_rounds = R;
	st->threshold = 1;
	st->templates = &tpl;
}

/* ---- Selection, pipelining, shared prefixes, scores without a valid value ---- */

/* Verification j of proof k. */
static const char *const selection_scores[4][3] = {
	{ "1", "0", "0.5" },            /* mean 0.5, self evaluation 0.5 */
	{ "1", "1", "0.5" },            /* mean 0.833: selected */
	{ "", "0.5", "3/4" },           /* one valid: mean 0.5, self evaluation 0 */
	{ "0.5", "0.5", "0.5" },        /* mean 0.5, self evaluation 1 */
};
static const char *const selection_self[4] = { "0.5", "0.5", "0", "1" };

static const char *selection_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)s;
	(void)reason;
	if (r->kind == DSM_PROVE_GENERATION)
		return good_candidate(r->nth_kind, selection_self[r->nth_kind]);
	const char *sc = selection_scores[marker(r->prompt)][r->nth_prompt];
	return sc[0] ? grading(sc) : "I checked each step.</think>\nNo score given.";
}

static void test_selection(void)
{
	struct dsm_prove_settings st;
	settings(&st, 4, 3, 2, 2, 1, 1);
	struct script s;
	script_init(&s, 1, selection_answer, NULL);
	struct dsm_prove *p = NULL;
	int rc = run_search(&p, &st, &s, &s);
	CHECK(rc == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	CHECK(r->stop == DSM_PROVE_ROUNDS, "stop %s", dsm_prove_stop_name(r->stop));
	CHECK(r->n_cand == 4 && r->selected == 1, "selected %d of %d", r->selected, r->n_cand);
	CHECK(r->cand[2].n_valid == 1 && r->cand[2].mean == 0.5, "no valid score is left out: %d %g", r->cand[2].n_valid,
	      r->cand[2].mean);
	CHECK(!r->cand[2].v[0].score.valid && strstr(r->cand[2].v[0].score.note, "no valid score"), "%s",
	      r->cand[2].v[0].score.note);
	CHECK(!r->cand[2].v[2].score.valid && strstr(r->cand[2].v[2].score.note, "3/4"), "%s", r->cand[2].v[2].score.note);
	CHECK(r->cand[3].self_score.valid && r->cand[3].self_score.score == 1, "self evaluation");
	/* shared prefixes: the N generations share one prompt, each candidate's M verifications another */
	int first_gen = -1, first_ver[4] = { -1, -1, -1, -1 };
	for (int i = 0; i < s.n; i++) {
		const struct sreq *q = &s.reqs[i];
		if (q->kind == DSM_PROVE_GENERATION) {
			if (first_gen < 0)
				first_gen = i;
			CHECK(q->prefix_of == (i == first_gen ? -1 : first_gen), "generation %d prefix_of %d", i, q->prefix_of);
			CHECK(strstr(q->prompt, problem) && strstr(q->prompt, "<think>") && q->max_tokens == st.proof_tokens,
			      "generation prompt");
		} else if (q->kind == DSM_PROVE_VERIFICATION) {
			int k = marker(q->prompt);
			if (first_ver[k] < 0)
				first_ver[k] = i;
			CHECK(q->prefix_of == (i == first_ver[k] ? -1 : first_ver[k]), "verification %d prefix_of %d", i,
			      q->prefix_of);
			CHECK(strcmp(q->prompt, s.reqs[first_ver[k]].prompt) == 0, "one prompt per candidate");
		}
	}
	/* pipelining: the first candidate's verifications were added before the last candidate finished */
	int last_gen_done = -1, first_ver_added = -1;
	for (int i = 0; i < s.n_done; i++)
		if (s.reqs[s.done_order[i]].kind == DSM_PROVE_GENERATION)
			last_gen_done = i;
	for (int i = 0; i < s.n && first_ver_added < 0; i++)
		if (s.reqs[i].kind == DSM_PROVE_VERIFICATION)
			first_ver_added = s.reqs[i].added_at_step;
	CHECK(first_ver_added >= 0 && first_ver_added < last_gen_done + 1, "verifications start at step %d, the last "
	      "generation finishes at step %d", first_ver_added, last_gen_done + 1);
	/* seeds differ between requests */
	for (int i = 1; i < s.n; i++)
		CHECK(s.reqs[i].seed != s.reqs[0].seed, "seed of request %d", i);
	document(p, "selection");
	dsm_prove_free(p);
	script_free(&s);
}

/* ---- Rule checks ---- */

static const char *rules_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)s;
	if (r->kind != DSM_PROVE_GENERATION)
		return grading("0.5");
	static char loop[4096];
	switch (r->nth_kind) {
	case 0: return good_candidate(0, "1");
	case 1: return "Thinking.</think>\nThe sum is even because odd plus odd is even, as everyone knows.";
	case 2: *reason = DSM_STOP_LENGTH; return good_candidate(2, "1");
	case 3: return "Still thinking about a and b, and whether they are odd ...";
	case 4:
		strcpy(loop, "Thinking.</think>\n## Solution\n\nPROOF4 ");
		for (int i = 0; i < 40; i++)
			strcat(loop, "and so on, ");
		return loop;
	case 5: return "Thinking.</think>\n## Solution\n\nThe sum of two odd integers is even.\n\n## Self Evaluation\n\n\\boxed{1}";
	default: return "Thinking.</think>\n## Solution\n\n## Self Evaluation\n\nNothing. \\boxed{0}";
	}
}

static void test_rules(void)
{
	static const char *const want[] = { NULL, "no_solution", "cut_off", "no_think_end", "repetition",
					    "restates_problem", "no_solution" };
	struct dsm_prove_settings st;
	settings(&st, 7, 2, 1, 2, 1, 1);
	struct script s;
	script_init(&s, 0, rules_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	for (int i = 0; i < 7; i++) {
		const char *got = r->cand[i].rule;
		CHECK(want[i] ? got && strcmp(got, want[i]) == 0 : got == NULL, "candidate %d: rule %s, want %s (%s)", i,
		      got ? got : "none", want[i] ? want[i] : "none", r->cand[i].rule_detail);
		CHECK(r->cand[i].verified == (want[i] == NULL), "candidate %d verified %d", i, r->cand[i].verified);
	}
	CHECK(s.n_kind[DSM_PROVE_VERIFICATION] == 2, "only the good candidate is verified: %d verifications",
	      s.n_kind[DSM_PROVE_VERIFICATION]);
	CHECK(r->selected == 0 && r->cand[0].mean == 0.5, "selected %d", r->selected);
	document(p, "rules");
	dsm_prove_free(p);
	script_free(&s);
	/* the rules can be turned off: then the answer is verified as the proof */
	st.rule_checks = 0;
	script_init(&s, 0, rules_answer, NULL);
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	r = dsm_prove_result(p);
	CHECK(r->cand[1].verified && r->cand[1].proof && strstr(r->cand[1].proof, "odd plus odd"), "rules off");
	CHECK(r->cand[3].verified && r->cand[3].proof && strstr(r->cand[3].proof, "Still thinking"), "rules off, no </think>");
	document(p, "rules_off");
	dsm_prove_free(p);
	script_free(&s);
	/* the repetition rule alone */
	size_t reps;
	CHECK(dsm_rule_repetition("abc", 3, &reps) == 0, "short text");
	char text[1200];
	memset(text, 'x', 600);
	for (int i = 0; i < 50; i++)
		memcpy(text + 600 + 12 * i, "we repeat. ", 12);
	CHECK(dsm_rule_repetition(text, 1200, &reps) == 12 && reps == 50, "period 12 x %zu", reps);
}

/* ---- The refinement input, and rounds ---- */

/* Verification j of proof k: candidate 1 is best, then 0, then 2. */
static const char *const refine_scores[3][4] = {
	{ "1", "0.5", "1", "0" },
	{ "1", "1", "0.5", "1" },
	{ "0", "0", "0", "0" },
};

static const char *refine_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)s;
	(void)reason;
	if (r->kind == DSM_PROVE_GENERATION)
		return good_candidate(r->nth_kind, "0.5");
	if (r->kind == DSM_PROVE_REFINEMENT)
		return good_candidate(10 + r->nth_kind, "0.5");
	int k = marker(r->prompt);
	const char *sc = k < 3 ? refine_scores[k][r->nth_prompt] : "0.5";
	return fmt("Notes on proof %d, grading %d, score %s.</think>\nEVAL-%d-%d found this. \\boxed{%s}", k,
		   r->nth_prompt, sc, k, r->nth_prompt, sc);
}

static void test_refinement(void)
{
	struct dsm_prove_settings st;
	settings(&st, 3, 4, 2, 2, 2, 2);
	struct script s;
	script_init(&s, 2, refine_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	CHECK(r->stop == DSM_PROVE_ROUNDS && r->n_rounds == 2, "stop %s after %d rounds", dsm_prove_stop_name(r->stop),
	      r->n_rounds);
	CHECK(r->n_cand == 3 + 2 * 2, "%d candidates", r->n_cand);
	CHECK(s.n_kind[DSM_PROVE_REFINEMENT] == 4, "%d refinements", s.n_kind[DSM_PROVE_REFINEMENT]);
	/* the two best (1, then 0), two samples each, each shown its evaluations with problems first */
	static const int parent[4] = { 1, 1, 0, 0 };
	static const int shown[4][2] = { { 2, 0 }, { 2, 0 }, { 3, 1 }, { 3, 1 } };
	for (int i = 0; i < 4; i++) {
		const struct dsm_prove_candidate *c = &r->cand[3 + i];
		CHECK(c->origin == DSM_PROVE_REFINEMENT && c->round == 1 && c->parent == parent[i] && c->sample == i % 2,
		      "refinement %d: parent %d sample %d", i, c->parent, c->sample);
		CHECK(c->n_shown == 2 && c->shown[0] == shown[i][0] && c->shown[1] == shown[i][1],
		      "refinement %d shows %d: %d %d", i, c->n_shown, c->n_shown ? c->shown[0] : -1,
		      c->n_shown > 1 ? c->shown[1] : -1);
	}
	int first = -1;
	for (int i = 0; i < s.n; i++) {
		const struct sreq *q = &s.reqs[i];
		if (q->kind != DSM_PROVE_REFINEMENT)
			continue;
		int k = q->nth_kind / 2;
		if (q->nth_kind % 2 == 0)
			first = i;
		CHECK(q->prefix_of == (q->nth_kind % 2 == 0 ? -1 : first), "refinement sample prefix_of %d", q->prefix_of);
		char a[32], b[32], other[32];
		snprintf(a, sizeof a, "EVAL-%d-%d", parent[2 * k], shown[2 * k][0]);
		snprintf(b, sizeof b, "EVAL-%d-%d", parent[2 * k], shown[2 * k][1]);
		snprintf(other, sizeof other, "PROOF%d.", 1 - parent[2 * k]);
		const char *pa = strstr(q->prompt, a), *pb = strstr(q->prompt, b);
		CHECK(pa && pb && pa < pb, "refinement %d: evaluations %s then %s", q->nth_kind, a, b);
		CHECK(strstr(q->prompt, problem) && !strstr(q->prompt, other), "refinement %d: its parent's proof only",
		      q->nth_kind);
		CHECK(!strstr(q->prompt, "Let me think about odd"), "refinement %d: no thinking of the parent", q->nth_kind);
	}
	/* round 1's candidates score 0.5 each (mean 0.5): candidate 1 (mean 0.875) stays selected */
	CHECK(r->selected == 1, "selected %d", r->selected);
	CHECK(r->rounds[0].candidates == 3 && r->rounds[1].candidates == 4, "round sizes");
	CHECK(r->phase[DSM_PROVE_REFINEMENT].requests == 4 && r->phase[DSM_PROVE_VERIFICATION].requests == 7 * 4,
	      "phase counts");
	CHECK(r->phase[DSM_PROVE_GENERATION].computed_prompt_tokens * 3 == r->phase[DSM_PROVE_GENERATION].prompt_tokens,
	      "one prefill for three generations");
	document(p, "refinement");
	dsm_prove_free(p);
	script_free(&s);
}

/* ---- Threshold ---- */

static const char *threshold_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)s;
	(void)reason;
	if (r->kind == DSM_PROVE_GENERATION)
		return good_candidate(r->nth_kind, "1");
	return grading(marker(r->prompt) == 1 ? "1" : "0");
}

static void test_threshold(void)
{
	struct dsm_prove_settings st;
	settings(&st, 4, 3, 2, 2, 1, 5);
	st.threshold = 0.99999;
	struct script s;
	script_init(&s, 1, threshold_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	CHECK(r->stop == DSM_PROVE_THRESHOLD && r->selected == 1 && r->cand[1].mean == 1, "stop %s, selected %d",
	      dsm_prove_stop_name(r->stop), r->selected);
	CHECK(r->n_rounds == 1 && s.n_kind[DSM_PROVE_REFINEMENT] == 0, "no refinement after the threshold");
	CHECK(s.cancels > 0, "work in flight is cancelled (%d)", s.cancels);
	int left = 0;
	for (int i = 0; i < s.n; i++)
		left += !s.reqs[i].done && !s.reqs[i].cancelled;
	CHECK(left == 0, "%d requests left running", left);
	document(p, "threshold");
	dsm_prove_free(p);
	script_free(&s);
}

/* ---- Round limits, nothing to refine, no valid verification ---- */

static const char *flat_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)reason;
	int mode = *(int *)s->user;
	if (r->kind == DSM_PROVE_GENERATION || r->kind == DSM_PROVE_REFINEMENT)
		return mode == 2 ? "no thinking end" : good_candidate(r->nth_kind, "0");
	return mode == 1 ? "I checked.</think>\nIt has an issue. \\boxed{maybe}" : grading("0.5");
}

static void test_rounds(void)
{
	struct dsm_prove_settings st;
	struct script s;
	struct dsm_prove *p = NULL;
	int mode = 0;
	settings(&st, 2, 2, 1, 2, 1, 3);
	script_init(&s, 0, flat_answer, &mode);
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	CHECK(r->stop == DSM_PROVE_ROUNDS && r->n_rounds == 3 && r->n_cand == 4, "3 rounds: stop %s, %d rounds, %d "
	      "candidates", dsm_prove_stop_name(r->stop), r->n_rounds, r->n_cand);
	document(p, "rounds");
	dsm_prove_free(p);
	script_free(&s);

	/* no valid verification: ranked last, never selected, still refined (no evaluations to show) */
	mode = 1;
	settings(&st, 2, 2, 1, 2, 1, 2);
	script_init(&s, 0, flat_answer, &mode);
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	r = dsm_prove_result(p);
	CHECK(r->selected == -1 && r->cand[0].n_valid == 0, "no valid verification: selected %d", r->selected);
	CHECK(r->n_cand == 3 && r->cand[2].parent == 0 && r->cand[2].n_shown == 0, "refined without evaluations");
	document(p, "no_valid_score");
	dsm_prove_free(p);
	script_free(&s);

	/* nothing passes the rules: the search stops after round 0 */
	mode = 2;
	settings(&st, 3, 2, 1, 2, 1, 4);
	script_init(&s, 0, flat_answer, &mode);
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	r = dsm_prove_result(p);
	CHECK(r->stop == DSM_PROVE_NOTHING_TO_REFINE && r->n_rounds == 1 && s.n_kind[DSM_PROVE_VERIFICATION] == 0,
	      "nothing to refine: %s", dsm_prove_stop_name(r->stop));
	document(p, "nothing_to_refine");
	dsm_prove_free(p);
	script_free(&s);
}

/* ---- Meta-verification, and a separate verifier ---- */

static const char *meta_answer(struct script *s, const struct sreq *r, enum dsm_stop_reason *reason)
{
	(void)s;
	(void)reason;
	static const char *const scores[] = { "0", "1", "0.5", "" };
	if (r->kind == DSM_PROVE_GENERATION)
		return good_candidate(r->nth_kind, "1");
	if (r->kind == DSM_PROVE_VERIFICATION) {
		const char *sc = scores[r->nth_prompt];
		return sc[0] ? fmt("Checked.</think>\nGRADE-%s. \\boxed{%s}", sc, sc) : "Checked.</think>\nNo box.";
	}
	/* the meta-verifier rejects the grading that gave 0 */
	return strstr(r->prompt, "GRADE-0.") && !strstr(r->prompt, "GRADE-0.5") ? grading("0") : grading("1");
}

static void test_meta(void)
{
	struct dsm_prove_settings st;
	settings(&st, 1, 4, 1, 2, 1, 1);
	st.meta_verify = 1;
	struct script gen, ver;
	script_init(&gen, 0, meta_answer, NULL);
	script_init(&ver, 1, meta_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(run_search(&p, &st, &gen, &ver) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	const struct dsm_prove_candidate *c = &r->cand[0];
	CHECK(gen.n_kind[DSM_PROVE_VERIFICATION] == 0 && ver.n_kind[DSM_PROVE_VERIFICATION] == 4, "verifications go to "
	      "the verifier");
	CHECK(ver.n_kind[DSM_PROVE_META] == 3, "one meta-verification per valid score: %d", ver.n_kind[DSM_PROVE_META]);
	CHECK(c->v[0].discarded && !c->v[1].discarded && !c->v[2].discarded && !c->v[3].meta_done, "discarded");
	CHECK(c->n_valid == 2 && c->mean == 0.75, "mean without the discarded one: %d %g", c->n_valid, c->mean);
	document(p, "meta");
	dsm_prove_free(p);
	script_free(&gen);
	script_free(&ver);
}

/* ---- The external checker ---- */

static void test_checker(void)
{
	struct dsm_prove_settings st;
	settings(&st, 3, 2, 1, 2, 1, 1);
	/* candidate 0 passes, 1 fails with output, 2 runs past the time limit */
	st.check_cmd = "p=$(cat); case \"$p\" in *PROOF0*) test \"$DSM_PROBLEM\" = \"Prove that the sum of two odd "
		       "integers is even.\" && echo ok;; *PROOF1*) echo 'not checked' >&2; exit 3;; *) exec sleep 30;; esac";
	st.check_timeout = 0.5;
	struct script s;
	script_init(&s, 0, threshold_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	const struct dsm_prove_result *r = dsm_prove_result(p);
	const struct dsm_prove_check *k0 = &r->cand[0].check, *k1 = &r->cand[1].check, *k2 = &r->cand[2].check;
	CHECK(k0->ran && k0->passed && k0->exit_status == 0 && strcmp(k0->output, "ok\n") == 0, "pass: %d '%s'",
	      k0->exit_status, k0->output ? k0->output : "");
	CHECK(k1->ran && !k1->passed && k1->exit_status == 3 && strstr(k1->output, "not checked"), "fail: %d",
	      k1->exit_status);
	CHECK(k2->ran && k2->timed_out && !k2->passed && k2->seconds < 5, "timeout: %d after %.2f s", k2->timed_out,
	      k2->seconds);
	CHECK(r->cand[0].verified && !r->cand[1].verified && !r->cand[2].verified, "the checker gates");
	document(p, "checker_gate");
	dsm_prove_free(p);
	script_free(&s);
	/* recorded only: every candidate is verified */
	st.check_weight = DSM_CHECK_RECORD;
	st.check_cmd = "exit 1";
	int mode = 0;
	script_init(&s, 0, flat_answer, &mode);
	CHECK(run_search(&p, &st, &s, &s) == 0, "run: %s", dsm_errmsg());
	r = dsm_prove_result(p);
	CHECK(r->cand[0].verified && r->cand[1].verified && r->cand[2].verified && r->cand[0].check.exit_status == 1 &&
	      !r->cand[0].check.passed, "recorded only");
	document(p, "checker_record");
	dsm_prove_free(p);
	script_free(&s);
}

/* ---- Settings ---- */

static void test_settings(void)
{
	struct dsm_prove_settings st;
	dsm_prove_settings_paper(&st);
	CHECK(st.n_candidates == 128 && st.n_verifications == 64 && st.n_best == 32 && st.n_samples == 4 &&
	      st.temperature == 1.0f && st.top_p == 0.95f && st.threshold == 0.99999, "paper setting");
	st.templates = &tpl;
	CHECK(dsm_prove_settings_check(&st) == 0, "paper setting is valid");
	st.n_evaluations = 9;
	CHECK(dsm_prove_settings_check(&st) == DSM_EARG, "at most 8 evaluations");
	settings(&st, 0, 1, 1, 1, 1, 1);
	struct script s;
	script_init(&s, 0, flat_answer, NULL);
	struct dsm_prove *p = NULL;
	CHECK(dsm_prove_start(&p, problem, &st, &s.gen, &s.gen, NULL, NULL) == DSM_EARG && !p, "no candidates");
}

int main(int argc, char **argv)
{
	out_dir = argc > 1 ? argv[1] : NULL;
	if (templates_init(&tpl) < 0)
		return 99;
	test_selection();
	test_rules();
	test_refinement();
	test_threshold();
	test_rounds();
	test_meta();
	test_checker();
	test_settings();
	templates_free(&tpl);
	return TEST_EXIT();
}
