/* dsm-bench e2e: decode with every routed expert streamed against the bound of its reads, measured in the
 * same run (docs/offload.md, "Measurements").
 *
 * The model is opened through the engine with every routed expert on NVMe and the expert cache off, and one
 * request decodes greedily after a one-token prompt. Bound: the bytes streamed per token at the O_DIRECT rate
 * of the same checkpoint (the better of one probe before and one after the decode) plus the run's compute
 * per token (attention and the rest, expert computations). stream_decode_ratio = tokens/s / bound. With
 * --policies, a Zipf-skewed small preset also decodes with an expert cache of half its experts under lru
 * and under the frequency-pinned policy. */
#include "bench_engine.h"
#include "bench_io.h"
#include "dram_probe.h"
#include "engine.h"
#include "error.h"
#include "generate.h"
#include "inspect.h"
#include "median.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int bench_e2e_main(int argc, char **argv);

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench e2e [options] [engine options]\n"
		"\n"
		"Decodes through the engine with every routed expert streamed and the cache off, and prints tokens/s\n"
		"next to the bound: bytes read per token / O_DIRECT GB/s measured in the same run, plus the compute time\n"
		"per token of the same run (stream_decode_ratio = tokens/s / bound). With --policies, also decodes with\n"
		"an expert cache of half the experts under lru and under the frequency-pinned policy on a model whose\n"
		"router is Zipf-skewed (dsm-mkmodel --routing-skew), and prints both tokens/s.\n"
		"\n"
		"With --resident, decodes with every weight in memory instead (the plain run) and prints the time of a\n"
		"token by part (attention, router, experts, dense layers, head, the rest, and the threads' waiting within\n"
		"them) and its weight traffic (bytes per token x tokens/s) against the DRAM read probe run on the same\n"
		"threads over the model's experts just before and after (traffic_ratio). The probe also runs after every\n"
		"step, and each step's traffic is set against the probes just before and after it (traffic_ratio_paired:\n"
		"the median over the steps, with their range), which holds where the host's bandwidth moves.\n"
		"\n"
		"options:\n"
		"  --model DIR       checkpoint (default: bench-models/medium, or bench-models/mid with --resident;\n"
		"                    written if missing)\n"
		"  --resident        the in-memory decode and its breakdown\n"
		"  --tokens N        tokens to decode (default 32)\n"
		"  --policies        the cache policy comparison too\n"
		"  --skew-model DIR  its model (default: bench-models/small-skew, small preset with --routing-skew 1.5)\n"
		"  --json            one JSON object on stdout\n"
		"\n");
	dsm_engine_flags_help(f);
}

/* One greedy decode, end of sequence ignored. */
struct decode {
	int64_t tokens;                   /* computed: the prompt's and the decoded ones */
	double tokens_per_second;
	double odirect_gbs;               /* when asked for */
	struct dsm_engine_report report;  /* of the prompt and the decode */
};

/* Opens dir through the engine with options eo and decodes `tokens` tokens after the prompt; with probe,
 * runs the O_DIRECT probe on the checkpoint before and after. Returns 0 or a negative code (message set). */
static int decode(const char *dir, const struct dsm_engine_options *eo, const int32_t *prompt, int64_t n_prompt,
		  int tokens, int probe, struct decode *d)
{
	memset(d, 0, sizeof *d);
	struct dsm_engine *e;
	int rc = dsm_engine_open(&e, dir, eo);
	if (rc < 0)
		return rc;
	bench_print_notes("e2e", dsm_engine_notes(e));
	const struct dsm_checkpoint *ck = dsm_engine_model(e)->ck;
	double before = probe ? odirect_gbs(ck) : 0;
	struct dsm_generate_params p = { .max_tokens = tokens, .eos_id = -1, .sampling = { .top_p = 1, .seed = 1 } };
	struct dsm_generate_io io = { 0 };
	struct dsm_generate_result g;
	if ((rc = dsm_generate(dsm_engine_session(e), prompt, n_prompt, &p, &io, &g)) == 0) {
		double after = probe ? odirect_gbs(ck) : 0;
		int64_t decoded = g.n > 1 ? g.n - 1 : 0;
		d->tokens = n_prompt + decoded;
		d->tokens_per_second = g.decode_seconds > 0 ? (double)decoded / g.decode_seconds : 0;
		d->odirect_gbs = after > before ? after : before;
		dsm_engine_report(e, (uint64_t)d->tokens, g.prefill_seconds + g.decode_seconds, &d->report);
	}
	dsm_generate_result_free(&g);
	dsm_engine_close(e);
	return rc;
}

/* The DRAM probe on the cpu backend's threads over the model's routed experts (in memory, far more than the
 * last-level cache: the bytes the decode reads), each thread its share of every tensor. GB/s; 0 when the
 * experts are not in memory or on error. */
static double probe_experts(const struct dsm_store_model *sm)
{
	size_t n = 0;
	struct dram_region *r = malloc(sizeof *r * (size_t)sm->shape.n_layers * (size_t)sm->shape.n_experts *
				       DSM_EXPERT_NPROJ + sizeof *r);
	if (!r)
		return 0;
	for (int L = sm->shape.first_moe; L < sm->shape.n_layers; L++)
		for (int e = 0; e < sm->shape.n_experts; e++)
			for (int p = 0; p < DSM_EXPERT_NPROJ; p++) {
				const struct dsm_store_tensor *w = &dsm_store_expert(sm, L, e)->w[p];
				if (w->mapped)
					r[n++] = (struct dram_region){ w->mapped, (size_t)w->nbytes };
			}
	double bytes = 0, t = n ? dram_read_regions(r, n, 0, n, 0, &bytes) : 0;
	free(r);
	return t > 0 ? bytes / t / 1e9 : 0;
}

/* The paired measurement of the resident decode: after each step the DRAM probe runs again, so that each step's
 * time is set against the probe just before and just after it. On a shared host whose bandwidth moves
 * from minute to minute (38-78 GB/s with 2 threads on one host within an hour), one probe before and one
 * after a run of many steps says little about the bandwidth the steps had. */
struct paired {
	struct dsm_session *s;
	const struct dsm_store_model *sm;
	double last_probe, last_sum;   /* the probe after the previous step, the steps' time until then */
	double *step_s, *probe;        /* [cap]: each step's time, the mean of the probes around it */
	int n, cap, steps;
};

static int paired_token(void *user, int32_t id)
{
	(void)id;
	struct paired *p = user;
	struct dsm_step_times st;
	dsm_session_times(p->s, &st, 0);
	double sum = dsm_step_times_total(&st);
	double probe = probe_experts(p->sm);
	/* from the second step: the first ran the prompt right after the engine opened */
	if (p->steps++ > 0 && p->n < p->cap && sum > p->last_sum && probe > 0 && p->last_probe > 0) {
		p->step_s[p->n] = sum - p->last_sum;
		p->probe[p->n++] = (p->last_probe + probe) / 2;
	}
	p->last_sum = sum;
	p->last_probe = probe;
	return 0;
}

/* A walk measured at open says why it was chosen; one not measured, its name and why not. */
static void print_walk(const char *label, const struct dsm_gemv_tune_result *t, const char *name)
{
	if (t->rounds)
		printf("  %-19s %s\n", label, t->why);
	else
		printf("  %-19s %s%s%s\n", label, name, t->why[0] ? ", " : "", t->why);
}

/* The resident decode: every weight in memory (the plain run), one prompt token, then `tokens` decoded. Prints
 * the per-token breakdown of the session's step times and the token's weight traffic (bytes per token x
 * tokens/s) against the DRAM probe run on the same threads just before and just after. */
static int resident(const char *dir, const struct dsm_engine_options *eo, int tokens, int json)
{
	struct dsm_engine *e;
	int rc = dsm_engine_open(&e, dir, eo);
	if (rc < 0)
		return rc;
	bench_print_notes("e2e", dsm_engine_notes(e));
	const struct dsm_model *m = dsm_engine_model(e);
	cJSON *doc = dsm_inspect(m->ck, 0, 0);
	double bpt = doc ? cJSON_GetNumberValue(cJSON_GetObjectItem(doc, "decode_bytes_per_token")) : 0;
	cJSON_Delete(doc);
	struct dsm_session *s = dsm_engine_session(e);
	static const int32_t one[] = { 0 };
	struct dsm_generate_params p = { .max_tokens = tokens + 1, .eos_id = -1, .sampling = { .top_p = 1, .seed = 1 } };
	struct dsm_generate_result g;
	struct dsm_step_times st;
	double before = probe_experts(m->store_model);
	struct paired pr = { s, m->store_model, before, 0, calloc((size_t)tokens + 1, sizeof(double)),
			     calloc((size_t)tokens + 1, sizeof(double)), 0, tokens + 1, 0 };
	if (!pr.step_s || !pr.probe) {
		free(pr.step_s), free(pr.probe);
		dsm_engine_close(e);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	struct dsm_generate_io io = { .user = &pr, .on_token = paired_token };
	dsm_session_times(s, &st, 1);
	rc = dsm_generate(s, one, 1, &p, &io, &g);
	dsm_session_times(s, &st, 1);
	double after = pr.last_probe;
	if (rc == 0) {
		struct dsm_engine_report er;
		dsm_engine_report(e, (uint64_t)g.n, g.prefill_seconds + g.decode_seconds, &er);
		double n = (double)st.steps, tps = n / dsm_step_times_total(&st);
		/* the steps whose head was screened read its one-byte copy and their rows computed, not the BF16 head */
		double V = (double)m->cfg.vocab_size, D = (double)m->cfg.hidden_size, full = 2 * V * D;
		double rows = st.top_steps ? (double)st.top_rows / (double)st.top_steps : 0;
		double screened = (double)er.head_screen_bytes + rows * 2 * D;
		if (st.top_steps)
			bpt -= (double)st.top_steps / n * (full - screened);
		double probe = (before + after) / 2, eff = bpt * tps / 1e9, ratio = probe > 0 ? eff / probe : 0;
		double *ratios = pr.step_s, pmed = 0, plo = 0, phi = 0; /* each step's time becomes its ratio */
		for (int i = 0; i < pr.n; i++)
			ratios[i] = bpt / pr.step_s[i] / 1e9 / pr.probe[i];
		if (pr.n > 0)
			pmed = median(ratios, (size_t)pr.n, &plo, &phi);
		const char *variant = dsm_gemv_variants[dsm_gemv_variant].name, *head_walk = dsm_cpu_bf16_gemv_walk();
		struct { const char *name; double s; } part[] = {
			{ "attention", st.attention }, { "router", st.router }, { "experts", st.experts }, { "dense", st.dense },
			{ "head", st.head }, { "other", st.other }, { "waiting", st.waiting },
		};
		if (json) {
			printf("{\"bench\": \"e2e\", \"mode\": \"resident\", \"model\": \"%s\", \"threads\": %d, "
			       "\"steps\": %lld, \"tokens_per_second\": %.3f, \"bytes_per_token\": %.0f, \"effective_gbs\": %.3f, "
			       "\"dram_probe_gbs\": %.3f, \"dram_probe_before_gbs\": %.3f, \"dram_probe_after_gbs\": %.3f, "
			       "\"traffic_ratio\": %.3f, \"traffic_ratio_paired\": %.3f, \"traffic_ratio_paired_min\": %.3f, "
			       "\"traffic_ratio_paired_max\": %.3f, \"paired_steps\": %d, "
			       "\"decode_kernel\": \"%s\", \"head_kernel\": \"%s\", "
			       "\"head_screened_steps\": %lld, \"head_rows_per_screened_step\": %.1f", dir, er.threads,
			       (long long)st.steps, tps, bpt, eff, probe, before, after, ratio, pmed, plo, phi, pr.n, variant,
			       head_walk, (long long)st.top_steps, rows);
			for (size_t i = 0; i < sizeof part / sizeof part[0]; i++)
				printf(", \"%s_ms_per_token\": %.3f", part[i].name, 1e3 * part[i].s / n);
			printf("}\n");
		} else {
			printf("e2e: %s, every weight in memory, %lld decode steps of one token, %d threads\n", dir,
			       (long long)st.steps, er.threads);
			printf("  decode              %7.3f tok/s\n", tps);
			printf("  weights per token   %7.1f MB (experts chosen, every resident weight but the embeddings%s)\n",
			       bpt / 1e6, st.top_steps ? ", the head as read" : "");
			if (st.top_steps)
				printf("  head                screened in %lld of %lld steps: %.1f MB read instead of %.1f, %.1f rows "
				       "a step multiplied\n", (long long)st.top_steps, (long long)st.steps, screened / 1e6,
				       full / 1e6, rows);
			printf("  effective read      %7.2f GB/s = %.3f of the DRAM probe %.2f GB/s (%.2f before, %.2f after)\n",
			       eff, ratio, probe, before, after);
			printf("  paired              each step against the probe run just before and after it: median %.3f "
			       "(%.3f-%.3f, %d steps)\n", pmed, plo, phi, pr.n);
			print_walk("decode kernel", &er.tune, variant);
			print_walk("head kernel", &er.head_tune, head_walk);
			if (er.gemm_tune.rounds)
				printf("  batched kernel      %s\n", er.gemm_tune.why);
			printf("  per token:");
			for (size_t i = 0; i < sizeof part / sizeof part[0]; i++)
				printf("%s %s %.2f ms (%.0f%%)", i == sizeof part / sizeof part[0] - 1 ? ";" : i ? "," : "",
				       part[i].name, 1e3 * part[i].s / n, 100 * part[i].s * tps / n);
			printf(" within the parts\n");
		}
	}
	free(pr.step_s), free(pr.probe);
	dsm_generate_result_free(&g);
	dsm_engine_close(e);
	return rc;
}

/* Bytes of an expert cache holding half the routed experts of dir (slots with some room for alignment). */
static int half_the_experts(const char *dir, const struct dsm_engine_options *eo, uint64_t *bytes)
{
	struct dsm_plan_sizes sz;
	struct dsm_moe_shape m;
	int rc = bench_sizes(dir, eo, &sz, &m);
	if (rc == 0)
		*bytes = (uint64_t)(m.n_layers - m.first_moe) * (uint64_t)m.n_experts / 2 * (sz.expert_bytes + 8192);
	return rc;
}

int bench_e2e_main(int argc, char **argv)
{
	static const struct option own[] = {
		{ "model", required_argument, NULL, 'm' }, { "tokens", required_argument, NULL, 'n' },
		{ "policies", no_argument, NULL, 'p' }, { "skew-model", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' }, { "resident", no_argument, NULL, 'r' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts)
		return 1;
	const char *model = "bench-models/medium", *skew_model = "bench-models/small-skew";
	int tokens = 32, json = 0, policies = 0, in_memory = 0, model_given = 0, ch, status = 2;
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	optind = 1;
	while ((ch = bench_getopt(argc, argv, opts, &eo, "e2e")) != -1) {
		switch (ch) {
		case 'm': model = optarg; model_given = 1; break;
		case 'n': tokens = atoi(optarg); break;
		case 'p': policies = 1; break;
		case 's': skew_model = optarg; break;
		case 'j': json = 1; break;
		case 'r': in_memory = 1; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); goto out;
		}
	}
	if (optind < argc || tokens < 2) {
		usage(stderr);
		goto out;
	}
	status = 1;
	if (in_memory) {
		if (!model_given)
			model = "bench-models/mid";
		if (bench_model("mid", model, "") < 0)
			goto out;
		if (resident(model, &eo, tokens, json) < 0)
			goto fail;
		status = 0;
		goto out;
	}
	if (bench_model("medium", model, "") < 0)
		goto out;
	/* One prompt token: the run is decode. */
	static const int32_t one[] = { 0 }, four[] = { 0, 5, 9, 300 };
	struct dsm_engine_options streamed = eo;
	streamed.tiers.stream_all = 1;
	streamed.tiers.cache_off = 1;
	struct decode d, lru = { 0 }, pinned = { 0 };
	int rc = decode(model, &streamed, one, 1, tokens, 1, &d);
	const struct dsm_offload_report *o = &d.report.offload;
	if (rc < 0)
		goto fail;
	double bw = d.odirect_gbs, tps = d.tokens_per_second, bpt = o->nvme_bytes_per_token;
	double compute_pt = (o->attention_seconds + o->cpu_expert_seconds + o->gpu_expert_seconds - o->overlap_seconds) /
			    (double)d.tokens;
	double bound_t = (bw > 0 ? bpt / (bw * 1e9) : 0) + compute_pt;
	double bound = bound_t > 0 ? 1 / bound_t : 0;
	double ratio = bound > 0 ? tps / bound : 0;
	if (policies) {
		if (bench_model("small", skew_model, "--routing-skew 1.5") < 0)
			goto out;
		struct dsm_engine_options cached = streamed;
		cached.tiers.cache_off = 0;
		if ((rc = half_the_experts(skew_model, &streamed, &cached.tiers.cache_bytes)) < 0)
			goto fail;
		/* Alternate lru and pinned twice; the best of each counts. */
		for (int round = 0; round < 2; round++)
			for (int pol = 0; pol < 2; pol++) {
				struct decode r, *best = pol ? &pinned : &lru;
				cached.tiers.cache_policy = pol ? DSM_CACHE_PINNED : DSM_CACHE_LRU;
				if ((rc = decode(skew_model, &cached, four, 4, 4 * tokens, 0, &r)) < 0)
					goto fail;
				if (r.tokens_per_second > best->tokens_per_second)
					*best = r;
			}
	}
	if (json) {
		printf("{\"bench\": \"e2e\", \"model\": \"%s\", \"decode_tokens\": %d, \"tokens_per_second\": %.3f, "
		       "\"nvme_bytes_per_token\": %.0f, \"odirect_gbs\": %.3f, \"compute_seconds_per_token\": %.4f, "
		       "\"bound_tokens_per_second\": %.3f, \"stream_decode_ratio\": %.3f, \"read_gbs\": %.3f, "
		       "\"io_wait_seconds\": %.3f", model, tokens, tps, bpt, bw, compute_pt, bound, ratio, o->read_gbs,
		       o->io_wait_seconds);
		if (policies)
			printf(", \"skew_model\": \"%s\", \"lru_tokens_per_second\": %.3f, \"pinned_tokens_per_second\": %.3f, "
			       "\"lru_hit_rate\": %.3f, \"pinned_hit_rate\": %.3f", skew_model, lru.tokens_per_second,
			       pinned.tokens_per_second, lru.report.offload.cache_hit_rate,
			       pinned.report.offload.cache_hit_rate);
		printf("}\n");
	} else {
		printf("e2e: %s, %d tokens decoded, every expert streamed, cache off\n", model, tokens);
		printf("  decode              %7.3f tok/s\n", tps);
		printf("  bound               %7.3f tok/s  (%.1f MB/token at %.2f GB/s O_DIRECT + %.1f ms compute/token)\n",
		       bound, bpt / 1e6, bw, 1e3 * compute_pt);
		printf("  stream_decode_ratio %7.3f\n", ratio);
		if (policies) {
			printf("cache of half the experts, Zipf-skewed router (%s):\n", skew_model);
			printf("  lru                 %7.3f tok/s  (hit rate %.1f%%)\n", lru.tokens_per_second,
			       100 * lru.report.offload.cache_hit_rate);
			printf("  pinned              %7.3f tok/s  (hit rate %.1f%%)\n", pinned.tokens_per_second,
			       100 * pinned.report.offload.cache_hit_rate);
		}
	}
	status = 0;
	goto out;
fail:
	fprintf(stderr, "dsm-bench e2e: %s\n", dsm_errmsg());
out:
	free(opts);
	return status;
}
