/* Self-verifying proof search (docs/prove.md): generate candidate proofs, check them by rules and an optional
 * external checker, verify each several times, refine the best with their evaluations, repeat.
 *
 * The search is a state machine over a generation boundary (struct dsm_gen): it adds requests and reacts
 * when they finish; it never owns the loop that runs them. dsm_prove_run steps the boundaries until the
 * searches given to it have finished; several searches may share the same boundaries (dsm-batch). The
 * boundary is implemented by the engine's scheduler (prove_engine.h) and, in tests, by a scripted double.
 *
 * Scores come only from parsed output: a verification without a valid score is recorded and left out of
 * the mean, and a candidate with no valid verification ranks after every candidate with one. */
#ifndef DSM_PROVE_H
#define DSM_PROVE_H

#include "generate.h"
#include "output_parse.h"
#include "templates.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* ---- The generation boundary ---- */

enum dsm_prove_kind {
	DSM_PROVE_GENERATION,           /* a candidate proof (round 0) */
	DSM_PROVE_VERIFICATION,         /* a grading of a candidate */
	DSM_PROVE_META,                 /* a check of a grading (meta-verification) */
	DSM_PROVE_REFINEMENT,           /* a candidate written from earlier ones and their gradings */
	DSM_PROVE_KINDS,
};
/* "generation", "verification", "meta_verification", "refinement" */
const char *dsm_prove_kind_name(enum dsm_prove_kind k);

/* What a finished request produced. Pointers are valid during the on_done call only. */
struct dsm_gen_output {
	int rc;                         /* 0, or the request's own error (a full KV pool ...): see error */
	const char *error;              /* "" when rc == 0 */
	const char *text;               /* [len] the generated text, NUL-terminated */
	size_t len;
	enum dsm_stop_reason reason;
	int64_t n_prompt;               /* prompt tokens */
	int64_t n_prefilled;            /* of which computed for this request (the rest came from a fork) */
	int64_t n_generated;            /* tokens generated (an EOS that ended it included) */
	double prefill_seconds;         /* its share of the steps' time: prompt rows, generated rows */
	double decode_seconds;
};

struct dsm_gen_request {
	enum dsm_prove_kind kind;
	const char *prompt;             /* the whole prompt text, chat shell included (copied) */
	int prefix_of;                  /* -1, or an earlier request of the same boundary whose prompt starts
					 * like this one: shares its prefill (see dsm_request.prefix_of) */
	int64_t max_tokens;
	struct dsm_sampler_params sampling;
	/* Called once from step() when the request has finished (not after cancel). It may add and cancel
	 * requests of any boundary. */
	void (*on_done)(void *arg, int id, const struct dsm_gen_output *out);
	void *arg;
};

struct dsm_gen {
	void *self;
	/* Queues a request. Returns its id (>= 0) or a negative DSM_E* code with a message; DSM_ECONTEXT:
	 * the prompt does not fit in the context (a failure of this request only). */
	int (*add)(void *self, const struct dsm_gen_request *r);
	/* Ends request id at the next step; its on_done is not called. */
	void (*cancel)(void *self, int id);
	/* Runs one step and calls on_done of the requests that finished. Returns the number of requests not
	 * finished (0: idle), or a negative DSM_E* code when the step failed as a whole. */
	int (*step)(void *self);
};

/* ---- Settings ---- */

enum dsm_prove_check_weight {
	DSM_CHECK_GATE,                 /* a candidate the external checker fails is not verified */
	DSM_CHECK_RECORD,               /* the checker's verdict is only recorded */
};

struct dsm_prove_settings {
	int n_candidates;               /* N: proofs generated in round 0 */
	int n_verifications;            /* M: verifications of each candidate */
	int n_best;                     /* K: candidates refined after each round */
	int n_evaluations;              /* E: evaluations shown with a candidate in its refinement (<= 8) */
	int n_samples;                  /* S: refinements written from each of the K */
	int max_rounds;                 /* R: rounds in all, round 0 included */
	double threshold;               /* stop when a candidate's mean score reaches it */
	float temperature, top_p;
	uint64_t seed;                  /* < 2^53, so that the document holds it exactly */
	int64_t proof_tokens;           /* token limit of a generation or refinement */
	int64_t verification_tokens;    /* token limit of a verification or meta-verification */
	int thinking;                   /* 1: prompts end with <think>, answers follow </think> */
	int meta_verify;                /* 1: meta-verify each scored verification, discard those rated 0 */
	int rule_checks;                /* 1: candidates failing a rule are not verified (prove_checks.h) */
	const char *check_cmd;          /* external checker, run with /bin/sh -c (NULL: none) */
	double check_timeout;           /* seconds before the checker is killed */
	enum dsm_prove_check_weight check_weight;
	const char *verifier_name;      /* "self" or the verifier's checkpoint, for the document */
	const struct templates *templates;  /* the four templates and the system prompt (not owned) */
};

/* The small default (a demo on a random checkpoint runs it in seconds). */
void dsm_prove_settings_default(struct dsm_prove_settings *s);
/* The released inference script's setting: 128 proofs, 64 verifications, the 32 best refined with 4
 * samples and up to 8 evaluations, 20 rounds, temperature 1.0, top-p 0.95, threshold 0.99999, 128K tokens
 * per proof and 64K per verification. */
void dsm_prove_settings_paper(struct dsm_prove_settings *s);
/* The context one prompt of the search and its answer need for a problem of problem_tokens tokens: the
 * templates' own text, the problem, a proof, the evaluations a refinement shows, the answer. */
int64_t dsm_prove_context_needed(const struct dsm_prove_settings *s, int64_t problem_tokens);
/* The engine's default number of sequences for searches wanting n at once: n, within [1, 64] (requests
 * wait for a free sequence beyond it). */
int dsm_prove_default_seqs(int64_t n);
/* DSM_EARG with a message naming the setting when one is out of range. */
int dsm_prove_settings_check(const struct dsm_prove_settings *s);

/* ---- The result ---- */

struct dsm_prove_score {
	int valid;                      /* 1: score is 0, 0.5 or 1 */
	double score;
	char note[160];                 /* the score, or why there is none ("no valid score: ...") */
};

struct dsm_prove_check {            /* the external checker's run */
	int ran;
	int exit_status;                /* when it exited; -1 otherwise */
	int signal;                     /* when a signal ended it; 0 otherwise */
	int timed_out;
	int passed;                     /* exited with 0 in time */
	double seconds;
	char *output;                   /* stdout and stderr, at most DSM_CHECK_MAX_OUTPUT bytes (owned) */
	int output_truncated;
	char *error;                    /* it could not be started (owned, NULL otherwise) */
};

struct dsm_prove_verification {
	uint64_t seed;
	char *analysis;                 /* the answer (after </think>), owned; NULL until done */
	size_t thinking_chars;
	int64_t tokens;
	enum dsm_stop_reason reason;
	struct dsm_prove_score score;
	int meta_done;                  /* a meta-verification ran */
	char *meta_analysis;
	int64_t meta_tokens;
	struct dsm_prove_score meta;
	int discarded;                  /* meta-verification rated it 0: not counted */
	char *error;                    /* the request failed (owned), NULL otherwise */
	int done;
};

struct dsm_prove_candidate {
	int index, round;
	enum dsm_prove_kind origin;     /* DSM_PROVE_GENERATION or DSM_PROVE_REFINEMENT */
	int parent;                     /* the candidate refined, -1 for an initial one */
	int *shown;                     /* [n_shown] the parent's verifications shown in the refinement prompt */
	int n_shown;
	int sample;                     /* which of the initial candidates or of the parent's refinements */
	uint64_t seed;
	int64_t tokens;
	enum dsm_stop_reason reason;
	size_t thinking_chars;
	char *proof;                    /* the Solution section (owned), NULL when there is none */
	struct dsm_prove_score self_score;
	const char *rule;               /* NULL: the rule checks passed (or were off); else the rule failed */
	char rule_detail[160];
	struct dsm_prove_check check;
	struct dsm_prove_verification *v;  /* [n_v] */
	int n_v;
	int n_valid;                    /* verifications with a valid score that were not discarded */
	double mean;                    /* their mean (when n_valid > 0) */
	int verified;                   /* it went to verification (passed the rules and a gating checker) */
	char *error;                    /* generation failed (owned), NULL otherwise */
	int finished;                   /* generation, checks and verifications all done */
};

struct dsm_prove_phase {
	uint64_t requests, prompt_tokens, computed_prompt_tokens, generated_tokens;
	double prefill_seconds, decode_seconds;
};

struct dsm_prove_round {
	int candidates;                 /* made in this round */
	int verified;
	double seconds;
	struct dsm_prove_phase phase[DSM_PROVE_KINDS];
};

enum dsm_prove_stop {
	DSM_PROVE_RUNNING,
	DSM_PROVE_THRESHOLD,            /* a candidate's mean score reached the threshold */
	DSM_PROVE_ROUNDS,               /* max_rounds done */
	DSM_PROVE_NOTHING_TO_REFINE,    /* no candidate was verified */
	DSM_PROVE_FAILED,               /* an error that stops the search (error says which) */
	DSM_PROVE_TOKEN_LIMIT,          /* ended by its caller: the tokens allowed to the problem are spent */
	DSM_PROVE_TIME_LIMIT,           /* ended by its caller: the time allowed to the problem is over */
};
/* "running", "threshold", "rounds", "nothing_to_refine", "error", "token_limit", "time_limit" */
const char *dsm_prove_stop_name(enum dsm_prove_stop s);

struct dsm_prove_result {
	char *problem;
	struct dsm_prove_settings settings;
	struct dsm_prove_candidate *cand;   /* [n_cand] */
	int n_cand;
	int selected;                   /* the best-ranked candidate with a valid verification, -1: none */
	struct dsm_prove_round *rounds;     /* [n_rounds] */
	int n_rounds;
	struct dsm_prove_phase phase[DSM_PROVE_KINDS];
	double seconds;
	enum dsm_prove_stop stop;
	char error[256];
};

/* ---- One search ---- */

struct dsm_prove_progress {
	int round;
	int round_done;                     /* 1: every request of the round has finished */
	int candidates, candidates_done;    /* of this round */
	int verifications, verifications_done; /* of this round, added so far */
	int best;                           /* best-ranked candidate with a valid verification so far, -1 */
	double best_mean;
	uint64_t generated_tokens;          /* all kinds, whole search */
	double seconds;
};

struct dsm_prove;

/* Starts a search for problem: adds round 0 to gen. Verifications go to verifier (which may be gen).
 * progress (may be NULL) is called after each candidate finishes and at each round's end. Returns 0 or a
 * negative DSM_E* code (bad settings, ENOMEM). gen and verifier must outlive the search. */
int dsm_prove_start(struct dsm_prove **out, const char *problem, const struct dsm_prove_settings *settings,
		    struct dsm_gen *gen, struct dsm_gen *verifier,
		    void (*progress)(void *arg, const struct dsm_prove_progress *p), void *progress_arg);
/* Accepts NULL. Cancels the search's requests still in flight and kills its running checkers. */
void dsm_prove_free(struct dsm_prove *p);
/* Polls the external checkers and reacts to those that finished. Returns how many still run. */
int dsm_prove_poll(struct dsm_prove *p);
int dsm_prove_finished(const struct dsm_prove *p);
/* Ends a running search now with reason `why` (DSM_PROVE_TOKEN_LIMIT or DSM_PROVE_TIME_LIMIT): requests in
 * flight are cancelled, checkers killed; the result keeps what finished, and selects the best of it. */
void dsm_prove_stop(struct dsm_prove *p, enum dsm_prove_stop why);
/* Tokens generated so far, every kind. */
uint64_t dsm_prove_generated_tokens(const struct dsm_prove *p);
/* Complete once finished; candidates as they stand before. */
const struct dsm_prove_result *dsm_prove_result(const struct dsm_prove *p);

/* Steps every boundary in turn and polls the searches until each has finished. Returns 0, or the negative
 * DSM_E* code of a step that failed as a whole. */
int dsm_prove_run(struct dsm_prove *const *searches, int n_searches, struct dsm_gen *const *gens, int n_gens);

/* The result as the JSON document of docs/prove-result.schema.json. NULL when out of memory. */
cJSON *dsm_prove_to_json(const struct dsm_prove_result *r);
/* The document's "settings" object. */
cJSON *dsm_prove_settings_json(const struct dsm_prove_settings *s);

#endif
