/* The proof search's settings (the small default and the released script's), and the names of its kinds
 * and stop reasons. */
#include "prove.h"

#include "error.h"

const char *dsm_prove_kind_name(enum dsm_prove_kind k)
{
	static const char *const names[] = { "generation", "verification", "meta_verification", "refinement" };
	return (unsigned)k < DSM_PROVE_KINDS ? names[k] : "unknown";
}

const char *dsm_prove_stop_name(enum dsm_prove_stop s)
{
	static const char *const names[] = { "running", "threshold", "rounds", "nothing_to_refine", "error",
					     "token_limit", "time_limit" };
	return (unsigned)s <= DSM_PROVE_TIME_LIMIT ? names[s] : "unknown";
}

void dsm_prove_settings_default(struct dsm_prove_settings *s)
{
	*s = (struct dsm_prove_settings){
		.n_candidates = 4, .n_verifications = 2, .n_best = 2, .n_evaluations = 2, .n_samples = 1,
		.max_rounds = 2, .threshold = 0.99999, .temperature = 1.0f, .top_p = 0.95f, .seed = 1,
		.proof_tokens = 512, .verification_tokens = 256, .thinking = 1, .rule_checks = 1,
		.check_timeout = 60, .check_weight = DSM_CHECK_GATE, .verifier_name = "self",
	};
}

void dsm_prove_settings_paper(struct dsm_prove_settings *s)
{
	dsm_prove_settings_default(s);
	s->n_candidates = 128;
	s->n_verifications = 64;
	s->n_best = 32;
	s->n_evaluations = 8;
	s->n_samples = 4;
	s->max_rounds = 20;
	s->proof_tokens = 128 * 1024;
	s->verification_tokens = 64 * 1024;
}

int dsm_prove_settings_check(const struct dsm_prove_settings *s)
{
	if (s->n_candidates < 1 || s->n_candidates > 65536)
		return dsm_fail(DSM_EARG, "candidates: %d is not in [1, 65536]", s->n_candidates);
	if (s->n_verifications < 1 || s->n_verifications > 4096)
		return dsm_fail(DSM_EARG, "verifications: %d is not in [1, 4096]", s->n_verifications);
	if (s->n_best < 1 || s->n_samples < 1 || s->n_best > 65536 || s->n_samples > 4096)
		return dsm_fail(DSM_EARG, "best %d / samples %d: each must be at least 1", s->n_best, s->n_samples);
	if (s->n_evaluations < 0 || s->n_evaluations > REFINEMENT_MAX_EVALUATIONS)
		return dsm_fail(DSM_EARG, "evaluations: %d is not in [0, %d]", s->n_evaluations, REFINEMENT_MAX_EVALUATIONS);
	if (s->max_rounds < 1 || s->max_rounds > 1000)
		return dsm_fail(DSM_EARG, "rounds: %d is not in [1, 1000]", s->max_rounds);
	if (!(s->threshold >= 0 && s->threshold <= 1))
		return dsm_fail(DSM_EARG, "threshold: %g is not in [0, 1]", s->threshold);
	if (!(s->temperature >= 0) || !(s->top_p > 0 && s->top_p <= 1))
		return dsm_fail(DSM_EARG, "temperature %g must be >= 0 and top-p %g in (0, 1]", s->temperature, s->top_p);
	if (s->proof_tokens < 1 || s->verification_tokens < 1)
		return dsm_fail(DSM_EARG, "token limits must be at least 1");
	if (s->check_cmd && !(s->check_timeout > 0))
		return dsm_fail(DSM_EARG, "check timeout: %g is not a positive number of seconds", s->check_timeout);
	if (!s->templates)
		return dsm_fail(DSM_EARG, "no templates");
	return 0;
}

/* What one prompt of the search and its answer need: the template's own text, the problem, a proof, the
 * shown evaluations, the answer. */
int64_t dsm_prove_context_needed(const struct dsm_prove_settings *s, int64_t problem_tokens)
{
	int64_t overhead = 1024, ver = overhead + problem_tokens + s->proof_tokens + s->verification_tokens;
	int64_t refine = overhead + problem_tokens + s->proof_tokens * 2 + (int64_t)s->n_evaluations * s->verification_tokens;
	int64_t meta = ver + s->verification_tokens;
	int64_t need = ver;
	if (s->max_rounds > 1 && refine > need)
		need = refine;
	if (s->meta_verify && meta > need)
		need = meta;
	return need;
}

int dsm_prove_default_seqs(int64_t n)
{
	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}
