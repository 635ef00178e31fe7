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
#include "engine.h"
#include "error.h"
#include "generate.h"

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
		"options:\n"
		"  --model DIR       checkpoint (default: bench-models/medium, written if missing)\n"
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
		{ "json", no_argument, NULL, 'j' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts)
		return 1;
	const char *model = "bench-models/medium", *skew_model = "bench-models/small-skew";
	int tokens = 32, json = 0, policies = 0, ch, status = 2;
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	optind = 1;
	while ((ch = bench_getopt(argc, argv, opts, &eo, "e2e")) != -1) {
		switch (ch) {
		case 'm': model = optarg; break;
		case 'n': tokens = atoi(optarg); break;
		case 'p': policies = 1; break;
		case 's': skew_model = optarg; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); status = 0; goto out;
		default: usage(stderr); goto out;
		}
	}
	if (optind < argc || tokens < 2) {
		usage(stderr);
		goto out;
	}
	status = 1;
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
	double compute_pt = (o->attention_seconds + o->cpu_expert_seconds + o->gpu_expert_seconds) / (double)d.tokens;
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
