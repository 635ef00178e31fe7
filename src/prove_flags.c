/* The proof search's flags (prove_flags.h). */
#include "prove_flags.h"

#include "error.h"

#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum {
	F_SEARCH = DSM_PROVE_FLAG_BASE, F_CANDIDATES, F_VERIFICATIONS, F_BEST, F_EVALUATIONS, F_SAMPLES, F_ROUNDS,
	F_THRESHOLD, F_TEMP, F_TOP_P, F_SEED, F_PROOF_TOKENS, F_VER_TOKENS, F_NO_THINK, F_NO_RULES, F_TEMPLATES,
	F_META, F_CHECK_CMD, F_CHECK_TIMEOUT, F_CHECK_WEIGHT,
};

const struct option dsm_prove_flags[] = {
	{ "search", required_argument, NULL, F_SEARCH }, { "candidates", required_argument, NULL, F_CANDIDATES },
	{ "verifications", required_argument, NULL, F_VERIFICATIONS }, { "best", required_argument, NULL, F_BEST },
	{ "evaluations", required_argument, NULL, F_EVALUATIONS },
	{ "refine-samples", required_argument, NULL, F_SAMPLES }, { "rounds", required_argument, NULL, F_ROUNDS },
	{ "threshold", required_argument, NULL, F_THRESHOLD }, { "temperature", required_argument, NULL, F_TEMP },
	{ "top-p", required_argument, NULL, F_TOP_P }, { "seed", required_argument, NULL, F_SEED },
	{ "proof-tokens", required_argument, NULL, F_PROOF_TOKENS },
	{ "verification-tokens", required_argument, NULL, F_VER_TOKENS },
	{ "no-think", no_argument, NULL, F_NO_THINK }, { "no-rule-checks", no_argument, NULL, F_NO_RULES },
	{ "templates", required_argument, NULL, F_TEMPLATES }, { "meta-verify", no_argument, NULL, F_META },
	{ "check-cmd", required_argument, NULL, F_CHECK_CMD },
	{ "check-timeout", required_argument, NULL, F_CHECK_TIMEOUT },
	{ "check-weight", required_argument, NULL, F_CHECK_WEIGHT },
	{ NULL, 0, NULL, 0 },
};

static const char *flag_name(int code)
{
	for (const struct option *o = dsm_prove_flags; o->name; o++)
		if (o->val == code)
			return o->name;
	return "?";
}

static int int_arg(int code, const char *s, int64_t lo, int64_t hi, int64_t *out)
{
	char *end;
	errno = 0;
	long long v = s ? strtoll(s, &end, 10) : 0;
	if (!s || end == s || *end || errno || v < lo || v > hi)
		return dsm_fail(DSM_EARG, "--%s: '%s' is not an integer in [%lld, %lld]", flag_name(code), s ? s : "",
				(long long)lo, (long long)hi);
	*out = v;
	return 0;
}

static int number_arg(int code, const char *s, double *out)
{
	char *end;
	errno = 0;
	double v = s ? strtod(s, &end) : 0;
	if (!s || end == s || *end || errno || !isfinite(v))
		return dsm_fail(DSM_EARG, "--%s: '%s' is not a number", flag_name(code), s ? s : "");
	*out = v;
	return 0;
}

int dsm_prove_flag(struct dsm_prove_settings *s, const char **templates_path, int code, const char *arg)
{
	int64_t v = 0;
	double x = 0;
	int rc = 0;
	switch (code) {
	case F_SEARCH: {
		/* the search's numbers; what is not a search setting stays */
		const struct templates *templates = s->templates;
		const char *verifier = s->verifier_name;
		if (arg && strcmp(arg, "paper") == 0)
			dsm_prove_settings_paper(s);
		else if (arg && strcmp(arg, "small") == 0)
			dsm_prove_settings_default(s);
		else
			return dsm_fail(DSM_EARG, "--search: '%s': expected small or paper", arg ? arg : "");
		s->templates = templates;
		s->verifier_name = verifier;
		return 1;
	}
	case F_CANDIDATES: rc = int_arg(code, arg, 1, 65536, &v); s->n_candidates = (int)v; break;
	case F_VERIFICATIONS: rc = int_arg(code, arg, 1, 4096, &v); s->n_verifications = (int)v; break;
	case F_BEST: rc = int_arg(code, arg, 1, 65536, &v); s->n_best = (int)v; break;
	case F_EVALUATIONS: rc = int_arg(code, arg, 0, REFINEMENT_MAX_EVALUATIONS, &v); s->n_evaluations = (int)v; break;
	case F_SAMPLES: rc = int_arg(code, arg, 1, 4096, &v); s->n_samples = (int)v; break;
	case F_ROUNDS: rc = int_arg(code, arg, 1, 1000, &v); s->max_rounds = (int)v; break;
	case F_THRESHOLD: rc = number_arg(code, arg, &x); s->threshold = x; break;
	case F_TEMP: rc = number_arg(code, arg, &x); s->temperature = (float)x; break;
	case F_TOP_P: rc = number_arg(code, arg, &x); s->top_p = (float)x; break;
	case F_SEED: rc = int_arg(code, arg, 0, ((int64_t)1 << 53) - 1, &v); s->seed = (uint64_t)v; break;
	case F_PROOF_TOKENS: rc = int_arg(code, arg, 1, INT32_MAX, &v); s->proof_tokens = v; break;
	case F_VER_TOKENS: rc = int_arg(code, arg, 1, INT32_MAX, &v); s->verification_tokens = v; break;
	case F_NO_THINK: s->thinking = 0; break;
	case F_NO_RULES: s->rule_checks = 0; break;
	case F_TEMPLATES: *templates_path = arg; break;
	case F_META: s->meta_verify = 1; break;
	case F_CHECK_CMD: s->check_cmd = arg; break;
	case F_CHECK_TIMEOUT: rc = number_arg(code, arg, &x); s->check_timeout = x; break;
	case F_CHECK_WEIGHT:
		if (arg && strcmp(arg, "gate") == 0)
			s->check_weight = DSM_CHECK_GATE;
		else if (arg && strcmp(arg, "record") == 0)
			s->check_weight = DSM_CHECK_RECORD;
		else
			return dsm_fail(DSM_EARG, "--check-weight: '%s': expected gate or record", arg ? arg : "");
		break;
	default:
		return 0;
	}
	return rc < 0 ? rc : 1;
}

/* The result document's booleans ("settings" of docs/prove-result.schema.json), beside the flags. */
static int document_bool(struct dsm_prove_settings *s, const cJSON *it, int *handled)
{
	static const struct { const char *name; size_t off; } keys[] = {
		{ "thinking", offsetof(struct dsm_prove_settings, thinking) },
		{ "rule_checks", offsetof(struct dsm_prove_settings, rule_checks) },
		{ "meta_verify", offsetof(struct dsm_prove_settings, meta_verify) },
	};
	*handled = 0;
	for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++)
		if (strcmp(it->string, keys[i].name) == 0) {
			*handled = 1;
			if (!cJSON_IsBool(it))
				return dsm_fail(DSM_EARG, "settings: \"%s\": expected true or false", it->string);
			*(int *)((char *)s + keys[i].off) = cJSON_IsTrue(it);
		}
	return 0;
}

static int json_arg(const struct option *o, const cJSON *it, char *num, size_t size, const char **arg)
{
	if (o->has_arg == no_argument) {
		if (!cJSON_IsTrue(it))
			return dsm_fail(DSM_EARG, "settings: \"%s\": expected true", it->string);
		*arg = NULL;
	} else if (cJSON_IsString(it)) {
		*arg = it->valuestring;
	} else if (cJSON_IsNumber(it)) {
		snprintf(num, size, "%.17g", it->valuedouble);
		*arg = num;
	} else {
		return dsm_fail(DSM_EARG, "settings: \"%s\": expected a number or a string", it->string);
	}
	return 0;
}

int dsm_prove_flags_json(struct dsm_prove_settings *s, const cJSON *obj, int allow_commands, const char **bad_key)
{
	*bad_key = NULL;
	if (!cJSON_IsObject(obj))
		return dsm_fail(DSM_EARG, "settings: expected an object of search settings");
	/* "search" first: the other members override the setting it chooses */
	const cJSON *search = cJSON_GetObjectItemCaseSensitive(obj, "search");
	if (search && (!cJSON_IsString(search) || dsm_prove_flag(s, NULL, F_SEARCH, search->valuestring) < 0)) {
		*bad_key = "search";
		return dsm_fail(DSM_EARG, "settings: \"search\": expected \"small\" or \"paper\"");
	}
	for (const cJSON *it = obj->child; it; it = it->next) {
		int handled, rc = document_bool(s, it, &handled);
		*bad_key = it->string;
		if (rc < 0)
			return rc;
		if (handled || it == search)
			continue;
		char name[32];  /* "proof_tokens" names --proof-tokens too, as the result document spells it */
		snprintf(name, sizeof name, "%s", it->string);
		for (char *c = name; *c; c++)
			*c = *c == '_' ? '-' : *c;
		const struct option *o = dsm_prove_flags;
		while (o->name && strcmp(o->name, name) != 0)
			o++;
		if (!o->name || o->val == F_TEMPLATES)
			return dsm_fail(DSM_EARG, "settings: \"%s\" is not a search setting%s", it->string,
					o->name ? " of one problem (give it for all)" : "");
		if (!allow_commands && (o->val == F_CHECK_CMD || o->val == F_CHECK_TIMEOUT || o->val == F_CHECK_WEIGHT))
			return dsm_fail(DSM_EARG, "settings: \"%s\": the external checker is not available here", it->string);
		char num[64];
		const char *arg = NULL;
		if ((rc = json_arg(o, it, num, sizeof num, &arg)) < 0 || (rc = dsm_prove_flag(s, NULL, o->val, arg)) < 0)
			return dsm_fail_prefix(rc, "settings");
	}
	*bad_key = NULL;
	return dsm_prove_settings_check(s) < 0 ? dsm_fail_prefix(DSM_EARG, "settings") : 0;
}

void dsm_prove_flags_help(FILE *f)
{
	fputs("search (defaults: the small setting; --search paper: the released script's):\n"
	      "  --search small|paper      small: N 4, M 2, K 2, E 2, S 1, R 2, 512 / 256 tokens; paper: N 128, M 64,\n"
	      "                            K 32, E 8, S 4, R 20, 131072 / 65536 tokens (flags after it override)\n"
	      "  --candidates N            proofs generated in round 0\n"
	      "  --verifications M         verifications of each candidate\n"
	      "  --best K                  candidates refined after each round\n"
	      "  --evaluations E           evaluations shown with each (at most 8; those that found problems first)\n"
	      "  --refine-samples S        refinements written from each of the K\n"
	      "  --rounds R                rounds in all, round 0 included\n"
	      "  --threshold X             stop when a candidate's mean score reaches X (default 0.99999)\n"
	      "  --temperature T, --top-p P, --seed N   sampling of every request (default 1.0, 0.95, 1)\n"
	      "  --proof-tokens N          token limit of a proof (generation or refinement)\n"
	      "  --verification-tokens N   token limit of a verification\n"
	      "  --no-think                prompts end with </think> instead of <think> (non-thinking)\n"
	      "  --no-rule-checks          verify every candidate: the answer is the proof when it has no Solution\n"
	      "                            section (benchmarks, models that do not follow the format)\n"
	      "  --templates FILE          prompt templates (JSON, docs/templates.md)\n"
	      "verification:\n"
	      "  --meta-verify             meta-verify each scored verification; those rated 0 are discarded\n"
	      "  --check-cmd CMD           external checker: /bin/sh -c CMD with the proof on stdin, the problem in\n"
	      "                            $DSM_PROBLEM, the candidate's index in $DSM_CANDIDATE\n"
	      "  --check-timeout SECONDS   kill the checker after this long (default 60)\n"
	      "  --check-weight gate|record  gate (default): a candidate the checker fails is not verified; record:\n"
	      "                            the result is only written down\n", f);
}
