/* dsm-tune: expert placement (docs/tune.md). Measures this machine (probe), chooses where every expert lives
 * (plan), predicts tokens/s and cache hit rates of a plan on a machine (simulate), writes synthetic routing
 * traces (trace), checks the predictions against measured decodes (validate), and draws it all (report).
 * One program, one subcommand each; the work is in tools/tune_*.c. */
#include "tune.h"
#include "tune_cli.h"

#include "cache.h"
#include "error.h"
#include "json_util.h"
#include "size_parse.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tune_fail(const char *who)
{
	fprintf(stderr, "dsm-tune %s: %s\n", who, dsm_errmsg());
	return 1;
}

/* Writes text to path ("-": stdout). */
int tune_write(const char *path, const char *text, const char *who)
{
	if (!strcmp(path, "-"))
		return fputs(text, stdout) < 0 ? 1 : 0;
	FILE *f = fopen(path, "w");
	if (!f || fputs(text, f) < 0 || fclose(f) != 0) {
		fprintf(stderr, "dsm-tune %s: cannot write %s\n", who, path);
		if (f)
			fclose(f);
		return 1;
	}
	return 0;
}

/* ---- plan files with what dsm-tune adds to them ---- */

/* The plan as JSON with dsm-tune's comment and the sizes simulate needs without the model ("_dsm_tune",
 * a key plan readers ignore). */
char *tune_plan_json(const struct dsm_plan *p, const struct tune_model *m, const char *comment)
{
	char *text = dsm_plan_to_json(p);
	cJSON *d = text ? cJSON_Parse(text) : NULL;
	free(text);
	if (!d)
		return NULL;
	if (comment)
		cJSON_AddStringToObject(d, "comment", comment);
	cJSON *x = cJSON_AddObjectToObject(d, "_dsm_tune");
	cJSON_AddNumberToObject(x, "top_k", m->shape.top_k);
	cJSON_AddNumberToObject(x, "expert_bytes", (double)m->expert_bytes);
	cJSON_AddNumberToObject(x, "slot_bytes", (double)m->slot_bytes);
	cJSON_AddNumberToObject(x, "non_expert_bytes", (double)m->non_expert_bytes);
	cJSON_AddNumberToObject(x, "non_expert_read", (double)m->non_expert_read);
	cJSON_AddNumberToObject(x, "non_expert_read_cpu", (double)m->non_expert_read_cpu);
	text = cJSON_Print(d);
	cJSON_Delete(d);
	return text;
}

int tune_load_plan(struct dsm_plan **p, struct tune_model *m, const char *plan_path, const char *model_path)
{
	if (model_path) {
		int rc = tune_model_load(m, model_path);
		return rc < 0 ? rc : dsm_plan_load(p, plan_path, &m->shape);
	}
	/* The model as the plan describes it, sizes from its "_dsm_tune" member. */
	memset(m, 0, sizeof *m);
	snprintf(m->source, sizeof m->source, "%s", plan_path);
	char *text;
	size_t len;
	int rc = read_file(plan_path, 64u << 20, &text, &len);
	if (rc < 0)
		return rc;
	cJSON *d = json_parse(text, len, plan_path);
	if (!d) {
		free(text);
		return DSM_EJSON;
	}
	const cJSON *model = cJSON_GetObjectItemCaseSensitive(d, "model");
	const cJSON *x = cJSON_GetObjectItemCaseSensitive(d, "_dsm_tune");
	struct dsm_moe_shape *s = &m->shape;
	uint64_t v[6];
	static const char *const mk[] = { "num_hidden_layers", "first_k_dense_replace", "n_routed_experts",
					  "hidden_size", "moe_intermediate_size" };
	static const char *const xk[] = { "top_k", "expert_bytes", "slot_bytes", "non_expert_bytes", "non_expert_read",
					  "non_expert_read_cpu" };
	rc = 0;
	if (!cJSON_IsObject(model) || !cJSON_IsObject(x))
		rc = dsm_fail(DSM_EARG, "%s: the plan has no %s: give the model with -m DIR|config.json", plan_path,
			      cJSON_IsObject(model) ? "_dsm_tune sizes (it was not written by dsm-tune plan)" : "model");
	for (int i = 0; i < 5 && rc == 0; i++)
		if (json_get_u64(model, mk[i], 1u << 30, &v[i], DSM_EARG, plan_path) != 0)
			rc = dsm_fail(DSM_EARG, "%s: model.%s missing or not a size", plan_path, mk[i]);
	if (rc == 0) {
		const cJSON *mt = cJSON_GetObjectItemCaseSensitive(model, "model_type");
		snprintf(s->model_type, sizeof s->model_type, "%s", cJSON_IsString(mt) ? mt->valuestring : "");
		s->n_layers = (int)v[0], s->first_moe = (int)v[1], s->n_experts = (int)v[2];
		s->hidden_size = (int)v[3], s->moe_intermediate_size = (int)v[4];
	}
	for (int i = 0; i < 6 && rc == 0; i++)
		if (json_get_u64(x, xk[i], (uint64_t)1 << 50, &v[i], DSM_EARG, plan_path) != 0)
			rc = dsm_fail(DSM_EARG, "%s: _dsm_tune.%s missing or not a size", plan_path, xk[i]);
	if (rc == 0) {
		s->top_k = (int)v[0];
		m->expert_bytes = v[1], m->slot_bytes = v[2], m->non_expert_bytes = v[3], m->non_expert_read = v[4];
		m->non_expert_read_cpu = v[5];
		if (!s->top_k || !m->expert_bytes || !m->slot_bytes)
			rc = dsm_fail(DSM_EARG, "%s: _dsm_tune sizes must not be zero", plan_path);
	}
	cJSON_Delete(d);
	if (rc == 0)
		rc = dsm_plan_parse(p, text, len, plan_path, s);
	free(text);
	return rc;
}

/* ---- trace ---- */

static int trace_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "zipf", required_argument, NULL, 'z' }, { "layers", required_argument, NULL, 'l' },
		{ "first-moe", required_argument, NULL, 'f' }, { "experts", required_argument, NULL, 'e' },
		{ "top-k", required_argument, NULL, 'k' }, { "tokens", required_argument, NULL, 'n' },
		{ "drift", no_argument, NULL, 'd' }, { "seed", required_argument, NULL, 's' },
		{ "model", required_argument, NULL, 'm' }, { "out", required_argument, NULL, 'o' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct tune_synth s = { .n_layers = 61, .first_moe = 3, .n_experts = 256, .top_k = 8, .tokens = 10000,
		.zipf = 1.0, .seed = 1 };
	const char *out = NULL, *model = NULL;
	int ch, first_set = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "m:o:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'z': s.zipf = atof(optarg); break;
		case 'l': s.n_layers = atoi(optarg); break;
		case 'f': s.first_moe = atoi(optarg), first_set = 1; break;
		case 'e': s.n_experts = atoi(optarg); break;
		case 'k': s.top_k = atoi(optarg); break;
		case 'n': s.tokens = strtoull(optarg, NULL, 10); break;
		case 'd': s.drift = 1; break;
		case 's': s.seed = strtoull(optarg, NULL, 10); break;
		case 'm': model = optarg; break;
		case 'o': out = optarg; break;
		case 'h':
			printf("usage: dsm-tune trace --out FILE [--zipf S] [--layers L] [--first-moe F] [--experts E]\n"
			       "                      [--top-k K] [--tokens N] [--drift] [--seed N] [-m DIR|config.json]\n"
			       "\n"
			       "Writes a synthetic routing trace (docs/trace.md): in each MoE layer a random ranking of the experts,\n"
			       "each token choosing K distinct experts with probability ~ 1/rank^S (S = 0: uniform). With --drift\n"
			       "the ranking moves: 64 times during the trace each layer swaps E/16 random pairs of ranks.\n"
			       "-m takes the shape (layers, first MoE layer, experts, top-k) from a model. Defaults: the real\n"
			       "model's shape (61 layers, MoE from 3, 256 experts, top 8), 10000 tokens, S = 1, seed 1.\n");
			return 0;
		default: return 2;
		}
	}
	if (!out || optind < argc) {
		fprintf(stderr, "dsm-tune trace: --out FILE is required (see --help)\n");
		return 2;
	}
	struct tune_model m;
	if (model) {
		if (tune_model_load(&m, model) < 0)
			return tune_fail("trace");
		s.n_layers = m.shape.n_layers, s.first_moe = m.shape.first_moe, s.n_experts = m.shape.n_experts;
		s.top_k = m.shape.top_k, s.model_type = m.shape.model_type;
		tune_model_free(&m);
	} else if (!first_set && s.first_moe >= s.n_layers) {
		s.first_moe = 0;
	}
	if (tune_trace_synth(out, &s) < 0)
		return tune_fail("trace");
	return 0;
}

/* ---- simulate ---- */

static const char *tier_names[TUNE_T_N] = { "gpu", "dram", "cache hit", "nvme read" };

cJSON *tune_sim_json(const struct tune_sim_result *r, const struct tune_model *m)
{
	cJSON *d = cJSON_CreateObject();
	static const char *keys[TUNE_T_N] = { "gpu", "dram", "cache_hit", "nvme_read" };
	cJSON_AddStringToObject(d, "policy", r->policy == TUNE_BELADY ? "belady" : dsm_cache_policy_name(r->policy));
	cJSON_AddNumberToObject(d, "cache_slots", (double)r->slots);
	cJSON_AddNumberToObject(d, "tokens", (double)r->tokens);
	cJSON_AddNumberToObject(d, "steps", (double)r->steps);
	cJSON_AddNumberToObject(d, "tokens_per_second", r->tokens_per_second);
	cJSON_AddNumberToObject(d, "bound_tokens_per_second", r->bound_tokens_per_second);
	cJSON_AddNumberToObject(d, "hit_rate", r->hit_rate);
	cJSON *bpt = cJSON_AddObjectToObject(d, "expert_bytes_per_token");
	for (int k = 0; k < TUNE_T_N; k++)
		cJSON_AddNumberToObject(bpt, keys[k], r->bytes_per_token[k]);
	cJSON *sec = cJSON_AddObjectToObject(d, "seconds");
	cJSON_AddNumberToObject(sec, "non_expert", r->non_expert_seconds);
	cJSON_AddNumberToObject(sec, "experts", r->expert_seconds);
	cJSON_AddNumberToObject(sec, "io_wait", r->io_wait_seconds);
	cJSON_AddNumberToObject(sec, "overhead", r->overhead_seconds);
	cJSON *layers = cJSON_AddArrayToObject(d, "layers");
	for (int l = m->shape.first_moe; l < m->shape.n_layers; l++) {
		const struct tune_sim_layer *y = &r->layer[l];
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "layer", l);
		for (int k = 0; k < TUNE_T_N; k++)
			cJSON_AddNumberToObject(o, keys[k], (double)y->uses[k]);
		uint64_t st = y->uses[TUNE_T_HIT] + y->uses[TUNE_T_MISS];
		cJSON_AddNumberToObject(o, "hit_rate", st ? (double)y->uses[TUNE_T_HIT] / (double)st : 0);
		cJSON_AddNumberToObject(o, "seconds", y->seconds);
		cJSON_AddNumberToObject(o, "io_wait", y->io_wait);
		cJSON_AddItemToArray(layers, o);
	}
	return d;
}

static void sim_print(const struct tune_sim_result *r, const struct tune_model *m)
{
	printf("policy %s, %llu cache slots, %llu tokens in %llu steps\n",
	       r->policy == TUNE_BELADY ? "belady" : dsm_cache_policy_name(r->policy), (unsigned long long)r->slots,
	       (unsigned long long)r->tokens, (unsigned long long)r->steps);
	printf("%5s %10s %10s %10s %10s %8s %10s\n", "layer", "gpu", "dram", "hit", "read", "hit%", "ms/token");
	for (int l = m->shape.first_moe; l < m->shape.n_layers; l++) {
		const struct tune_sim_layer *y = &r->layer[l];
		uint64_t st = y->uses[TUNE_T_HIT] + y->uses[TUNE_T_MISS];
		printf("%5d %10llu %10llu %10llu %10llu %8.1f %10.3f\n", l, (unsigned long long)y->uses[TUNE_T_GPU],
		       (unsigned long long)y->uses[TUNE_T_DRAM], (unsigned long long)y->uses[TUNE_T_HIT],
		       (unsigned long long)y->uses[TUNE_T_MISS], st ? 100.0 * (double)y->uses[TUNE_T_HIT] / (double)st : 0,
		       1e3 * y->seconds / (double)r->tokens);
	}
	char b[32];
	printf("expert bytes per token:");
	for (int k = 0; k < TUNE_T_N; k++)
		printf(" %s %s%s", tier_names[k], tune_bytes((uint64_t)r->bytes_per_token[k], b, sizeof b),
		       k + 1 < TUNE_T_N ? "," : "\n");
	printf("time per token: non-expert %.3f ms, experts %.3f ms, I/O wait %.3f ms, overhead %.3f ms\n",
	       1e3 * r->non_expert_seconds / (double)r->tokens, 1e3 * r->expert_seconds / (double)r->tokens,
	       1e3 * r->io_wait_seconds / (double)r->tokens, 1e3 * r->overhead_seconds / (double)r->tokens);
	printf("predicted decode: %.3f tokens/s (bound %.3f, ratio %.3f), cache hit rate %.3f\n", r->tokens_per_second,
	       r->bound_tokens_per_second,
	       r->bound_tokens_per_second > 0 ? r->tokens_per_second / r->bound_tokens_per_second : 0, r->hit_rate);
}

int tune_parse_policy(const char *s)
{
	if (!strcmp(s, "belady"))
		return TUNE_BELADY;
	return dsm_cache_policy_parse(s);
}

static int simulate_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "plan", required_argument, NULL, 'p' }, { "trace", required_argument, NULL, 't' },
		{ "hw", required_argument, NULL, 'w' }, { "model", required_argument, NULL, 'm' },
		{ "policy", required_argument, NULL, 'P' }, { "cache", required_argument, NULL, 'c' },
		{ "batch", required_argument, NULL, 'b' }, { "tokens", required_argument, NULL, 'n' },
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *plan_path = NULL, *trace_path = NULL, *hw_path = NULL, *model = NULL;
	struct tune_sim_opts so = { .policy = -1, .batch = 1 };
	int ch, json = 0;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "m:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'p': plan_path = optarg; break;
		case 't': trace_path = optarg; break;
		case 'w': hw_path = optarg; break;
		case 'm': model = optarg; break;
		case 'P':
			if ((so.policy = tune_parse_policy(optarg)) < 0) {
				fprintf(stderr, "dsm-tune simulate: --policy %s: not lru, lfu, pinned or belady\n", optarg);
				return 2;
			}
			break;
		case 'c':
			if (parse_size(optarg, &so.cache_bytes) < 0) {
				fprintf(stderr, "dsm-tune simulate: --cache %s: not a size (e.g. 4G)\n", optarg);
				return 2;
			}
			break;
		case 'b': so.batch = atoi(optarg); break;
		case 'n': so.max_tokens = strtoull(optarg, NULL, 10); break;
		case 'j': json = 1; break;
		case 'h':
			printf("usage: dsm-tune simulate --plan PLAN --trace TRACE --hw HW [-m DIR|config.json]\n"
			       "                         [--policy lru|lfu|pinned|belady] [--cache SIZE] [--batch B] [--tokens N]\n"
			       "                         [--json]\n"
			       "\n"
			       "Replays the routing trace against the plan and its expert cache (policy and size: the plan's unless\n"
			       "given; belady is the optimal replacement, an upper bound for any policy), and predicts per layer and\n"
			       "tier the expert uses and hit rates, bytes per token, and decode tokens/s on the machine the hardware\n"
			       "file describes (the model in docs/tune.md). Batch B: B consecutive trace tokens form one step.\n"
			       "The model's sizes come from -m, else from the plan (dsm-tune plan writes them into it).\n");
			return 0;
		default: return 2;
		}
	}
	if (!plan_path || !trace_path || !hw_path || optind < argc || so.batch < 1) {
		fprintf(stderr, "dsm-tune simulate: --plan, --trace and --hw are required (see --help)\n");
		return 2;
	}
	struct tune_model m;
	struct dsm_plan *p = NULL;
	struct tune_hw hw;
	struct tune_trace t = { 0 };
	struct tune_sim_result r = { 0 };
	int status = 1;
	if (tune_load_plan(&p, &m, plan_path, model) < 0 || tune_hw_load(&hw, hw_path) < 0 ||
	    tune_trace_load(&t, trace_path, &m) < 0 || tune_simulate(&m, p, &hw, &t, &so, &r) < 0) {
		tune_fail("simulate");
		goto out;
	}
	if (json) {
		cJSON *d = tune_sim_json(&r, &m);
		char *s = cJSON_Print(d);
		printf("%s\n", s);
		free(s);
		cJSON_Delete(d);
	} else {
		sim_print(&r, &m);
	}
	status = 0;
out:
	tune_sim_result_free(&r);
	tune_trace_free(&t);
	dsm_plan_free(p);
	tune_model_free(&m);
	return status;
}

/* ---- plan ---- */

static int plan_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' }, { "hw", required_argument, NULL, 'w' },
		{ "trace", required_argument, NULL, 't' }, { "vram-budget", required_argument, NULL, 'v' },
		{ "dram-budget", required_argument, NULL, 'd' }, { "batch", required_argument, NULL, 'b' },
		{ "out", required_argument, NULL, 'o' }, { "verbose", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *model = NULL, *hw_path = NULL, *trace_path = NULL, *out = NULL;
	struct tune_plan_opts po = { .batch = 1 };
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "m:o:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': model = optarg; break;
		case 'w': hw_path = optarg; break;
		case 't': trace_path = optarg; break;
		case 'v':
		case 'd':
			if (parse_size(optarg, ch == 'v' ? &po.vram_budget : &po.dram_budget) < 0) {
				fprintf(stderr, "dsm-tune plan: --%s %s: not a size (e.g. 20G)\n",
					ch == 'v' ? "vram-budget" : "dram-budget", optarg);
				return 2;
			}
			break;
		case 'b': po.batch = atoi(optarg); break;
		case 'o': out = optarg; break;
		case 'V': po.verbose = 1; break;
		case 'h':
			printf("usage: dsm-tune plan -m DIR|config.json --hw HW --out PLAN [--trace TRACE] [--vram-budget SIZE]\n"
			       "                     [--dram-budget SIZE] [--batch B] [--verbose]\n"
			       "\n"
			       "Computes the placement plan (docs/plan.md, what dsm-run --plan reads) that maximizes predicted\n"
			       "decode tokens/s at batch B on the machine HW describes: expert popularity from the trace (else the\n"
			       "router's bias when the folder has weights, else even), the GPU then DRAM filled hottest first, DRAM\n"
			       "experts spread over the NUMA nodes by their cores' rate, and the DRAM split between resident experts\n"
			       "and the expert cache, and the cache policy, chosen by simulating each candidate. A config.json alone\n"
			       "is enough: the full model can be planned without its weights. Budgets default to 90%% of the GPU's\n"
			       "memory and of the DRAM in HW. Prints the prediction; --out - writes the plan to stdout.\n");
			return 0;
		default: return 2;
		}
	}
	if (!model || !hw_path || !out || optind < argc || po.batch < 1) {
		fprintf(stderr, "dsm-tune plan: -m, --hw and --out are required (see --help)\n");
		return 2;
	}
	struct tune_model m;
	struct tune_hw hw;
	struct tune_trace t = { 0 };
	struct dsm_plan *p = NULL;
	struct tune_sim_result r = { 0 };
	int status = 1;
	if (tune_model_load(&m, model) < 0) {
		tune_fail("plan");
		return 1;
	}
	if (tune_hw_load(&hw, hw_path) < 0 || (trace_path && tune_trace_load(&t, trace_path, &m) < 0)) {
		tune_fail("plan");
		goto out;
	}
	po.trace = trace_path ? &t : NULL;
	if (tune_plan(&p, &m, &hw, &po, &r) < 0) {
		tune_fail("plan");
		goto out;
	}
	uint64_t counts[DSM_TIER_KINDS];
	dsm_plan_count(p, counts);
	char comment[512], b[32];
	snprintf(comment, sizeof comment,
		 "dsm-tune plan for %s: predicted %.2f tokens/s at batch %d (%s); experts gpu %llu, dram %llu, nvme %llu; "
		 "cache %s %s", hw.name, r.tokens_per_second, po.batch, trace_path ? "from the trace" : "from the router bias",
		 (unsigned long long)counts[DSM_TIER_GPU], (unsigned long long)counts[DSM_TIER_DRAM],
		 (unsigned long long)counts[DSM_TIER_NVME], dsm_cache_policy_name(p->cache_policy),
		 tune_bytes(p->cache_bytes, b, sizeof b));
	char *json = tune_plan_json(p, &m, comment);
	if (!json || tune_write(out, json, "plan")) {
		free(json);
		goto out;
	}
	free(json);
	fprintf(strcmp(out, "-") ? stdout : stderr, "%s\n", comment);
	status = 0;
out:
	tune_sim_result_free(&r);
	dsm_plan_free(p);
	tune_trace_free(&t);
	tune_model_free(&m);
	return status;
}

static const struct subcommand {
	const char *name;
	const char *what;
	int (*main)(int argc, char **argv);
} subcommands[] = {
	{ "probe", "measure this machine: topology, DRAM and NVMe bandwidth, expert kernel rate -> hw.json", tune_probe_main },
	{ "plan", "the placement plan with the best predicted tokens/s for a model on a machine", plan_main },
	{ "simulate", "replay a routing trace against a plan and a cache policy: hit rates, bytes, tokens/s",
	  simulate_main },
	{ "trace", "write a synthetic routing trace (Zipf popularity, optional drift)", trace_main },
	{ "validate", "predicted vs measured decode tokens/s on this machine, several plans and policies",
	  tune_validate_main },
	{ "report", "an HTML page and PNG figures: popularity, coverage, budgets, strategies, validation",
	  tune_report_main },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dsm-tune SUBCOMMAND [options]   (dsm-tune SUBCOMMAND --help)\n\n"
		   "Where every expert should live, and how fast the model will decode there (docs/tune.md).\n\n"
		   "subcommands:\n");
	for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++)
		fprintf(f, "  %-9s %s\n", subcommands[i].name, subcommands[i].what);
}

int main(int argc, char **argv)
{
	if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof subcommands / sizeof *subcommands; i++)
		if (!strcmp(argv[1], subcommands[i].name))
			return subcommands[i].main(argc - 1, argv + 1);
	fprintf(stderr, "dsm-tune: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
