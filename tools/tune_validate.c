/* dsm-tune validate: dsm-tune's predictions against measured decodes on this machine (docs/tune.md,
 * "Validation"). For each model (the small and medium presets with skewed routing by default):
 *   1. probe this machine (tune_probe: the expert kernel at the model's shape, NVMe reads of its shards);
 *   2. decode once through the engine recording the routing (every plan gives the same tokens, so this trace
 *      is the routing of every later run);
 *   3. rounds: for each plan and cache policy, a quick probe (one short pass of each figure), then the
 *      prediction of tokens/s by simulating that trace on the figures just probed, then the measurement by
 *      decoding in-process through the engine with the plan. Rounds alternate the plans (the machine is shared and its speed drifts); each pair is the
 *      median prediction against the median measurement over the rounds.
 * Prints each pair with its error, and the median and worst absolute error; --json FILE writes them all. */
#include "tune.h"
#include "tune_cli.h"

#include "cache.h"
#include "engine.h"
#include "error.h"
#include "generate.h"
#include "median.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_CASES 8
#define MAX_ROUNDS 9

struct vcase {
	char name[64];
	struct dsm_plan *plan;
	double predicted, bound, hit_rate;
	double pred[MAX_ROUNDS];         /* with the machine as probed in each round */
	double measured[MAX_ROUNDS];
	int n_measured;
};

/* Decodes `tokens` tokens after a one-token prompt with options eo; tokens/s of the decode. */
static int decode(const char *dir, const struct dsm_engine_options *eo, int tokens, double *tps)
{
	struct dsm_engine *e;
	int rc = dsm_engine_open(&e, dir, eo);
	if (rc < 0)
		return rc;
	static const int32_t prompt[] = { 0 };
	struct dsm_generate_params p = { .max_tokens = tokens, .eos_id = -1, .sampling = { .top_p = 1, .seed = 1 } };
	struct dsm_generate_io io = { 0 };
	struct dsm_generate_result g;
	if ((rc = dsm_generate(dsm_engine_session(e), prompt, 1, &p, &io, &g)) == 0) {
		*tps = g.decode_seconds > 0 && g.n > 1 ? (double)(g.n - 1) / g.decode_seconds : 0;
		rc = dsm_engine_finish(e);
	}
	dsm_generate_result_free(&g);
	dsm_engine_close(e);
	return rc;
}

/* A plan with the expert hottest-first ranks [0, n_dram) of every layer in dram:0 and the rest streamed. */
static int plan_hot_dram(struct dsm_plan **out, const struct tune_model *m, const double *pop, double share, int policy,
			 uint64_t cache_bytes)
{
	const struct dsm_moe_shape *s = &m->shape;
	int rc = dsm_plan_uniform(out, s, (struct dsm_tier){ DSM_TIER_DRAM, 0 }, (struct dsm_tier){ DSM_TIER_NVME, 0 });
	if (rc < 0)
		return rc;
	int *order = malloc(sizeof(int) * (size_t)s->n_layers * (size_t)s->n_experts);
	if (!order)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	tune_order_experts(m, pop, order);
	int n_dram = (int)(share * s->n_experts + 0.5);
	for (int l = s->first_moe; l < s->n_layers; l++)
		for (int i = 0; i < n_dram; i++)
			(*out)->expert[(size_t)l * (size_t)s->n_experts + (size_t)order[(size_t)l * (size_t)s->n_experts + (size_t)i]] =
				(struct dsm_tier){ DSM_TIER_DRAM, 0 };
	free(order);
	(*out)->cache_policy = policy;
	(*out)->cache_bytes = cache_bytes;
	return 0;
}

/* Validates one model; appends its pairs to arr. Returns 0 or -1 (message printed). */
static int validate_model(const char *dir, const char *label, int tokens, int rounds, const char *work, cJSON *arr,
			  double *errs, int *n_errs)
{
	struct tune_model m;
	struct tune_hw hw;
	struct tune_trace t = { 0 };
	struct vcase cs[MAX_CASES];
	int n = 0, status = -1;
	double *pop = NULL;
	memset(cs, 0, sizeof cs);
	if (tune_model_load(&m, dir) < 0) {
		tune_fail("validate");
		return -1;
	}
	fprintf(stderr, "dsm-tune validate: %s: probing this machine\n", label);
	char name[96];
	snprintf(name, sizeof name, "this machine (validate, %s)", label);
	if (tune_probe(&hw, dir, NULL, name, 0, 0) < 0) {
		tune_fail("validate");
		goto out;
	}
	char trace_path[1024], plan_path[1024];
	snprintf(trace_path, sizeof trace_path, "%s/%s.trace", work, label);
	snprintf(plan_path, sizeof plan_path, "%s/%s.plan.json", work, label);
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	eo.record_routing = trace_path;
	double tps;
	fprintf(stderr, "dsm-tune validate: %s: recording the routing of %d tokens\n", label, tokens);
	if (decode(dir, &eo, tokens, &tps) < 0 || tune_trace_load(&t, trace_path, &m) < 0 ||
	    !(pop = tune_trace_popularity(&t))) {
		tune_fail("validate");
		goto out;
	}
	/* The cases: every expert streamed under each policy with a cache of a quarter of the experts; the hottest
	 * half in DRAM with an lru cache of 2 x top_k; dsm-tune's plan under a DRAM budget of the non-expert weights
	 * and 40% of the experts; and on the small model everything in DRAM. */
	uint64_t n_exp = (uint64_t)(m.shape.n_layers - m.shape.first_moe) * (uint64_t)m.shape.n_experts;
	uint64_t quarter = n_exp / 4 * m.slot_bytes;
	static const int pol[3] = { DSM_CACHE_LRU, DSM_CACHE_LFU, DSM_CACHE_PINNED };
	for (int i = 0; i < 3; i++) {
		snprintf(cs[n].name, sizeof cs[n].name, "%s: streamed, %s cache 1/4", label, dsm_cache_policy_name(pol[i]));
		if (plan_hot_dram(&cs[n++].plan, &m, pop, 0, pol[i], quarter) < 0)
			goto fail;
	}
	snprintf(cs[n].name, sizeof cs[n].name, "%s: hottest half in DRAM, lru cache 2 x top_k", label);
	if (plan_hot_dram(&cs[n++].plan, &m, pop, 0.5, DSM_CACHE_LRU, 0) < 0)
		goto fail;
	struct tune_plan_opts po = { .dram_budget = m.non_expert_bytes + n_exp * 2 / 5 * m.expert_bytes, .batch = 1,
		.trace = &t };
	snprintf(cs[n].name, sizeof cs[n].name, "%s: dsm-tune plan, DRAM budget non-expert + 40%%", label);
	if (tune_plan(&cs[n++].plan, &m, &hw, &po, NULL) < 0)
		goto fail;
	if (m.non_expert_bytes + n_exp * m.expert_bytes < (uint64_t)4 << 30) {
		snprintf(cs[n].name, sizeof cs[n].name, "%s: everything in DRAM", label);
		if (plan_hot_dram(&cs[n++].plan, &m, pop, 1, DSM_CACHE_LRU, 0) < 0)
			goto fail;
	}
	for (int round = 0; round < rounds; round++) {
		for (int i = 0; i < n; i++) {
			/* The machine is shared and its speed moves within seconds: a quick probe right before each
			 * decode, and the prediction from what it gives then (the kernel's rates at 8 and 64 tokens,
			 * which a decode of one sequence does not use, from the full probe). */
			struct tune_hw now_hw;
			if (tune_probe(&now_hw, dir, NULL, name, 0, 1) < 0)
				goto fail;
			for (int j = 0; j < now_hw.n_nodes; j++)
				for (int k = 1; k < TUNE_RATE_POINTS; k++)
					now_hw.node[j].expert_gbs[k] = hw.node[j].expert_gbs[k];
			struct tune_sim_opts so = { .policy = -1, .batch = 1 };
			struct tune_sim_result r;
			if (tune_simulate(&m, cs[i].plan, &now_hw, &t, &so, &r) < 0)
				goto fail;
			cs[i].pred[round] = r.tokens_per_second, cs[i].bound = r.bound_tokens_per_second;
			cs[i].hit_rate = r.hit_rate;
			tune_sim_result_free(&r);
			char *json = tune_plan_json(cs[i].plan, &m, cs[i].name);
			if (!json || tune_write(plan_path, json, "validate")) {
				free(json);
				goto out;
			}
			free(json);
			dsm_engine_options_default(&eo);
			eo.offload = 1;
			eo.tiers.plan_path = plan_path;
			eo.tiers.hotness_trace = trace_path;
			if (decode(dir, &eo, tokens, &tps) < 0)
				goto fail;
			cs[i].measured[cs[i].n_measured++] = tps;
			fprintf(stderr, "dsm-tune validate: round %d, %s: predicted %.2f, measured %.2f tok/s\n", round + 1,
				cs[i].name, cs[i].pred[round], tps);
		}
	}
	for (int i = 0; i < n; i++) {
		double lo, hi, med = median(cs[i].measured, (size_t)cs[i].n_measured, &lo, &hi);
		cs[i].predicted = median(cs[i].pred, (size_t)cs[i].n_measured, NULL, NULL);
		double err = (cs[i].predicted - med) / med;
		errs[(*n_errs)++] = fabs(err);
		printf("%-62s predicted %7.2f  measured %7.2f (%.2f-%.2f)  error %+6.1f%%\n", cs[i].name, cs[i].predicted,
		       med, lo, hi, 100 * err);
		cJSON *o = cJSON_CreateObject();
		cJSON_AddStringToObject(o, "case", cs[i].name);
		cJSON_AddStringToObject(o, "model", label);
		cJSON_AddStringToObject(o, "policy", dsm_cache_policy_name(cs[i].plan->cache_policy));
		cJSON_AddNumberToObject(o, "predicted_tokens_per_second", cs[i].predicted);
		cJSON_AddNumberToObject(o, "measured_tokens_per_second", med);
		cJSON_AddItemToObject(o, "measured_rounds", cJSON_CreateDoubleArray(cs[i].measured, cs[i].n_measured));
		cJSON_AddItemToObject(o, "predicted_rounds", cJSON_CreateDoubleArray(cs[i].pred, cs[i].n_measured));
		cJSON_AddNumberToObject(o, "error", err);
		cJSON_AddNumberToObject(o, "predicted_hit_rate", cs[i].hit_rate);
		cJSON_AddNumberToObject(o, "bound_tokens_per_second", cs[i].bound);
		cJSON_AddItemToArray(arr, o);
	}
	status = 0;
	goto out;
fail:
	tune_fail("validate");
out:
	for (int i = 0; i < MAX_CASES; i++)
		dsm_plan_free(cs[i].plan);
	free(pop);
	tune_trace_free(&t);
	tune_model_free(&m);
	return status;
}

int tune_validate_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "small", required_argument, NULL, 's' }, { "medium", required_argument, NULL, 'm' },
		{ "tokens", required_argument, NULL, 'n' }, { "rounds", required_argument, NULL, 'r' },
		{ "json", required_argument, NULL, 'j' }, { "work", required_argument, NULL, 'w' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *small = "models/small-skew", *medium = "models/medium-skew", *json_path = NULL, *work = ".";
	int tokens = 24, rounds = 3, ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 's': small = optarg; break;
		case 'm': medium = optarg; break;
		case 'n': tokens = atoi(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 'j': json_path = optarg; break;
		case 'w': work = optarg; break;
		case 'h':
			printf("usage: dsm-tune validate [--small DIR] [--medium DIR] [--tokens N] [--rounds R] [--json FILE]\n"
			       "                         [--work DIR]\n"
			       "\n"
			       "Checks dsm-tune's predictions on this machine: probes it, records the routing of one decode of each\n"
			       "model, then for several plans and cache policies predicts decode tokens/s (simulate on that trace)\n"
			       "and measures it (decoding in-process through the engine with the plan, R rounds alternating the\n"
			       "plans; median). Models: --small and --medium (defaults models/small-skew and models/medium-skew,\n"
			       "written with dsm-mkmodel --routing-skew 1.5; \"none\" leaves one out). Prints each pair with its error\n"
			       "and the median and worst absolute error; --json writes every pair. Traces and plans go to --work.\n"
			       "Defaults: 24 tokens, 3 rounds.\n");
			return 0;
		default: return 2;
		}
	}
	if (optind < argc || tokens < 4 || rounds < 1 || rounds > MAX_ROUNDS) {
		fprintf(stderr, "dsm-tune validate: bad arguments (see --help)\n");
		return 2;
	}
	cJSON *doc = cJSON_CreateObject(), *arr = cJSON_AddArrayToObject(doc, "pairs");
	double errs[2 * MAX_CASES];
	int n_errs = 0, status = 1;
	if (strcmp(small, "none") && validate_model(small, "small", tokens, rounds, work, arr, errs, &n_errs) < 0)
		goto out;
	if (strcmp(medium, "none") && validate_model(medium, "medium", tokens, rounds, work, arr, errs, &n_errs) < 0)
		goto out;
	if (n_errs == 0) {
		fprintf(stderr, "dsm-tune validate: no model\n");
		goto out;
	}
	double worst = 0, med = median(errs, (size_t)n_errs, NULL, &worst);
	printf("%d pairs: median absolute error %.1f%%, worst %.1f%% (targets 15%% and 30%%)\n", n_errs, 100 * med,
	       100 * worst);
	cJSON_AddNumberToObject(doc, "median_abs_error", med);
	cJSON_AddNumberToObject(doc, "worst_abs_error", worst);
	cJSON_AddNumberToObject(doc, "tokens", tokens);
	cJSON_AddNumberToObject(doc, "rounds", rounds);
	status = 0;
	if (json_path) {
		char *s = cJSON_Print(doc);
		status = s ? tune_write(json_path, s, "validate") : 1;
		free(s);
	}
out:
	cJSON_Delete(doc);
	return status;
}
