/* The proof search's result as one JSON document (docs/prove-result.schema.json). The document reports
 * scores; it never says that a proof is correct. */
#include "prove.h"

#include <stdio.h>

static cJSON *string_or_null(const char *s)
{
	return s ? cJSON_CreateString(s) : cJSON_CreateNull();
}

/* A score: 0, 0.5 or 1, or the string "no valid score"; its note says why. */
static void add_score(cJSON *o, const char *key, const char *note_key, const struct dsm_prove_score *s)
{
	cJSON_AddItemToObject(o, key, s->valid ? cJSON_CreateNumber(s->score) : cJSON_CreateString("no valid score"));
	cJSON_AddStringToObject(o, note_key, s->note);
}

cJSON *dsm_prove_settings_json(const struct dsm_prove_settings *s)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "candidates", s->n_candidates);
	cJSON_AddNumberToObject(o, "verifications", s->n_verifications);
	cJSON_AddNumberToObject(o, "best", s->n_best);
	cJSON_AddNumberToObject(o, "evaluations", s->n_evaluations);
	cJSON_AddNumberToObject(o, "refine_samples", s->n_samples);
	cJSON_AddNumberToObject(o, "rounds", s->max_rounds);
	cJSON_AddNumberToObject(o, "threshold", s->threshold);
	cJSON_AddNumberToObject(o, "temperature", s->temperature);
	cJSON_AddNumberToObject(o, "top_p", s->top_p);
	cJSON_AddNumberToObject(o, "seed", (double)s->seed);
	cJSON_AddNumberToObject(o, "proof_tokens", (double)s->proof_tokens);
	cJSON_AddNumberToObject(o, "verification_tokens", (double)s->verification_tokens);
	cJSON_AddBoolToObject(o, "thinking", s->thinking);
	cJSON_AddBoolToObject(o, "meta_verify", s->meta_verify);
	cJSON_AddBoolToObject(o, "rule_checks", s->rule_checks);
	cJSON_AddStringToObject(o, "verifier", s->verifier_name ? s->verifier_name : "self");
	cJSON_AddItemToObject(o, "check_cmd", string_or_null(s->check_cmd));
	cJSON_AddNumberToObject(o, "check_timeout", s->check_timeout);
	cJSON_AddStringToObject(o, "check_weight", s->check_weight == DSM_CHECK_GATE ? "gate" : "record");
	return o;
}

static cJSON *verification_json(int index, const struct dsm_prove_verification *v)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "index", index);
	cJSON_AddNumberToObject(o, "seed", (double)v->seed);
	cJSON_AddNumberToObject(o, "tokens", (double)v->tokens);
	cJSON_AddStringToObject(o, "stop_reason", dsm_stop_reason_name(v->reason));
	cJSON_AddNumberToObject(o, "thinking_chars", (double)v->thinking_chars);
	cJSON_AddStringToObject(o, "analysis", v->analysis ? v->analysis : "");
	add_score(o, "score", "score_note", &v->score);
	if (v->meta_done) {
		cJSON *m = cJSON_AddObjectToObject(o, "meta_verification");
		cJSON_AddNumberToObject(m, "tokens", (double)v->meta_tokens);
		cJSON_AddStringToObject(m, "analysis", v->meta_analysis ? v->meta_analysis : "");
		add_score(m, "score", "score_note", &v->meta);
	} else {
		cJSON_AddNullToObject(o, "meta_verification");
	}
	cJSON_AddBoolToObject(o, "discarded", v->discarded);
	cJSON_AddItemToObject(o, "error", string_or_null(v->error));
	return o;
}

static cJSON *check_json(const struct dsm_prove_check *k, enum dsm_prove_check_weight w)
{
	if (!k->ran)
		return cJSON_CreateNull();
	cJSON *o = cJSON_CreateObject();
	cJSON_AddItemToObject(o, "exit_status", k->exit_status >= 0 ? cJSON_CreateNumber(k->exit_status) : cJSON_CreateNull());
	cJSON_AddItemToObject(o, "signal", k->signal ? cJSON_CreateNumber(k->signal) : cJSON_CreateNull());
	cJSON_AddBoolToObject(o, "timed_out", k->timed_out);
	cJSON_AddBoolToObject(o, "passed", k->passed);
	cJSON_AddBoolToObject(o, "gates", w == DSM_CHECK_GATE);
	cJSON_AddNumberToObject(o, "seconds", k->seconds);
	cJSON_AddStringToObject(o, "output", k->output ? k->output : "");
	cJSON_AddBoolToObject(o, "output_truncated", k->output_truncated);
	cJSON_AddItemToObject(o, "error", string_or_null(k->error));
	return o;
}

static cJSON *candidate_json(const struct dsm_prove_result *r, const struct dsm_prove_candidate *c)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "index", c->index);
	cJSON_AddNumberToObject(o, "round", c->round);
	cJSON *origin = cJSON_AddObjectToObject(o, "origin");
	if (c->origin == DSM_PROVE_REFINEMENT) {
		cJSON_AddStringToObject(origin, "kind", "refinement");
		cJSON *refines = cJSON_AddArrayToObject(origin, "refines");
		cJSON *one = cJSON_CreateObject();
		cJSON_AddNumberToObject(one, "candidate", c->parent);
		/* cJSON_CreateIntArray makes no array of nothing */
		cJSON_AddItemToObject(one, "evaluations", c->n_shown ? cJSON_CreateIntArray(c->shown, c->n_shown)
								      : cJSON_CreateArray());
		cJSON_AddItemToArray(refines, one);
	} else {
		cJSON_AddStringToObject(origin, "kind", "initial");
	}
	cJSON_AddNumberToObject(origin, "sample", c->sample);
	cJSON_AddNumberToObject(o, "seed", (double)c->seed);
	cJSON_AddNumberToObject(o, "tokens", (double)c->tokens);
	cJSON_AddStringToObject(o, "stop_reason", dsm_stop_reason_name(c->reason));
	cJSON_AddNumberToObject(o, "thinking_chars", (double)c->thinking_chars);
	cJSON_AddItemToObject(o, "proof", string_or_null(c->proof));
	add_score(o, "self_evaluation_score", "self_evaluation_note", &c->self_score);
	cJSON *rule = cJSON_AddObjectToObject(o, "rule_check");
	cJSON_AddBoolToObject(rule, "passed", c->rule == NULL);
	cJSON_AddItemToObject(rule, "rule", string_or_null(c->rule));
	cJSON_AddStringToObject(rule, "detail", c->rule_detail);
	cJSON_AddItemToObject(o, "external_check", check_json(&c->check, r->settings.check_weight));
	cJSON_AddBoolToObject(o, "verified", c->verified);
	cJSON *vs = cJSON_AddArrayToObject(o, "verifications");
	for (int j = 0; j < c->n_v; j++)
		if (c->v[j].done)
			cJSON_AddItemToArray(vs, verification_json(j, &c->v[j]));
	cJSON_AddNumberToObject(o, "valid_verifications", c->n_valid);
	cJSON_AddItemToObject(o, "mean_score", c->n_valid ? cJSON_CreateNumber(c->mean) : cJSON_CreateNull());
	cJSON_AddBoolToObject(o, "finished", c->finished);
	cJSON_AddItemToObject(o, "error", string_or_null(c->error));
	return o;
}

static cJSON *phase_json(const struct dsm_prove_phase *ph)
{
	cJSON *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "requests", (double)ph->requests);
	cJSON_AddNumberToObject(o, "prompt_tokens", (double)ph->prompt_tokens);
	cJSON_AddNumberToObject(o, "computed_prompt_tokens", (double)ph->computed_prompt_tokens);
	cJSON_AddNumberToObject(o, "generated_tokens", (double)ph->generated_tokens);
	cJSON_AddNumberToObject(o, "prefill_seconds", ph->prefill_seconds);
	cJSON_AddNumberToObject(o, "decode_seconds", ph->decode_seconds);
	return o;
}

/* Prefill over all kinds, then each kind's generated tokens: the phases of the document. */
static cJSON *phases_json(const struct dsm_prove_phase *ph)
{
	cJSON *o = cJSON_CreateObject();
	struct dsm_prove_phase all = { 0 };
	for (int k = 0; k < DSM_PROVE_KINDS; k++) {
		all.requests += ph[k].requests;
		all.prompt_tokens += ph[k].prompt_tokens;
		all.computed_prompt_tokens += ph[k].computed_prompt_tokens;
		all.prefill_seconds += ph[k].prefill_seconds;
	}
	cJSON *pre = cJSON_AddObjectToObject(o, "prefill");
	cJSON_AddNumberToObject(pre, "prompt_tokens", (double)all.prompt_tokens);
	cJSON_AddNumberToObject(pre, "computed_tokens", (double)all.computed_prompt_tokens);
	cJSON_AddNumberToObject(pre, "shared_tokens", (double)(all.prompt_tokens - all.computed_prompt_tokens));
	cJSON_AddNumberToObject(pre, "seconds", all.prefill_seconds);
	for (int k = 0; k < DSM_PROVE_KINDS; k++)
		cJSON_AddItemToObject(o, dsm_prove_kind_name((enum dsm_prove_kind)k), phase_json(&ph[k]));
	return o;
}

cJSON *dsm_prove_to_json(const struct dsm_prove_result *r)
{
	cJSON *j = cJSON_CreateObject();
	if (!j)
		return NULL;
	cJSON_AddStringToObject(j, "problem", r->problem ? r->problem : "");
	cJSON_AddItemToObject(j, "settings", dsm_prove_settings_json(&r->settings));
	cJSON *cands = cJSON_AddArrayToObject(j, "candidates");
	for (int i = 0; i < r->n_cand; i++)
		cJSON_AddItemToArray(cands, candidate_json(r, &r->cand[i]));
	if (r->selected >= 0) {
		const struct dsm_prove_candidate *c = &r->cand[r->selected];
		cJSON *s = cJSON_AddObjectToObject(j, "selected");
		cJSON_AddNumberToObject(s, "candidate", c->index);
		cJSON_AddNumberToObject(s, "mean_score", c->mean);
		cJSON_AddNumberToObject(s, "valid_verifications", c->n_valid);
		cJSON_AddStringToObject(s, "proof", c->proof ? c->proof : "");
	} else {
		cJSON_AddNullToObject(j, "selected");
	}
	cJSON_AddItemToObject(j, "phases", phases_json(r->phase));
	cJSON *rounds = cJSON_AddArrayToObject(j, "rounds");
	for (int i = 0; i < r->n_rounds; i++) {
		const struct dsm_prove_round *rd = &r->rounds[i];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "round", i);
		cJSON_AddNumberToObject(o, "candidates", rd->candidates);
		cJSON_AddNumberToObject(o, "verified", rd->verified);
		cJSON_AddNumberToObject(o, "seconds", rd->seconds);
		cJSON_AddItemToObject(o, "phases", phases_json(rd->phase));
		cJSON_AddItemToArray(rounds, o);
	}
	cJSON_AddNumberToObject(j, "seconds", r->seconds);
	cJSON_AddStringToObject(j, "stop_reason", dsm_prove_stop_name(r->stop));
	cJSON_AddItemToObject(j, "error", r->error[0] ? cJSON_CreateString(r->error) : cJSON_CreateNull());
	cJSON_AddStringToObject(j, "note", "Scores are what the model's verifier wrote, parsed from its output; a "
				"verifier can be fooled, and a score is not a judgement that a proof is correct.");
	return j;
}
