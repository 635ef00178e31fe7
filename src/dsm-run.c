/* dsm-run: generate text from a DeepSeek-V3.2 / DeepSeekMath-V2 checkpoint, streaming it to stdout; with
 * --prove, search for a proof (dsm-run-prove.c). */
#include "dsm-run-prove.h"
#include "engine.h"
#include "error.h"
#include "generate.h"
#include "npy.h"
#include "templates.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAX_STOP 16

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-run -m CHECKPOINT_DIR (-p PROMPT | --tokens IDS) [options]\n"
		"Generates text from a DeepSeek-V3.2 / DeepSeekMath-V2 checkpoint and streams it to stdout;\n"
		"prefill and decode speeds go to stderr at exit. Engine options are shared with the other programs.\n"
		"\n"
		"input:\n"
		"  -m, --model DIR        checkpoint folder (config.json, safetensors shards, tokenizer.json)\n"
		"  -p, --prompt TEXT      the prompt (encoded with the checkpoint's tokenizer, BOS added)\n"
		"  -f, --file FILE        read the prompt from FILE\n"
		"  --chat                 wrap the prompt in the chat shell: BOS{system}<User>{prompt}<Assistant><think>\n"
		"  --no-think             with --chat: end the shell with </think> (non-thinking mode)\n"
		"  --system TEXT          with --chat: the system prompt (default empty)\n"
		"  --tokens IDS           feed these comma-separated token ids instead of a prompt\n"
		"generation:\n"
		"  -n, --max-tokens N     tokens to generate at most (default 256)\n"
		"  --temperature T        0 (default): greedy; > 0: sample\n"
		"  --top-p P              nucleus sampling (default 1: off)\n"
		"  --top-k K              keep the K most likely tokens (default 0: off)\n"
		"  --seed N               sampling seed (default 1)\n"
		"  --stop TEXT            stop before this text (repeatable, up to %d)\n"
		"  --ignore-eos           do not stop at the end-of-sentence token\n"
		"  --samples N            N continuations of the prompt decoded together from one shared prefill,\n"
		"                         sampled with seeds seed .. seed + N - 1 (default 1)\n"
		"  -v, --verbose          what the engine chose at open (memory limit, tiers) and its report\n"
		"  --prove                search for a proof of the problem: generate, verify, refine (its options:\n"
		"                         dsm-run --prove --help; docs/prove.md)\n"
		"  -q, --quiet            no speeds on stderr\n"
		"  -h, --help             this text\n"
		"\n", MAX_STOP);
	dsm_engine_flags_help(f);
}

/* Choices read from a file of lines 'layer position v1 v2 ...' (the --dump-routing format). */
struct forced {
	int64_t n, cap;
	struct forced_row { int layer; int64_t pos; int64_t n; int32_t *v; } *rows;
};

static int forced_load(struct forced *f, const char *path)
{
	FILE *in = fopen(path, "r");
	if (!in)
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	char *line = NULL;
	size_t cap = 0;
	int rc = 0;
	while (getline(&line, &cap, in) > 0) {
		char *p = line, *end;
		long v[2];
		for (int i = 0; i < 2; i++) {
			v[i] = strtol(p, &end, 10);
			if (end == p) {
				rc = dsm_fail(DSM_EARG, "%s: bad line '%.60s'", path, line);
				goto out;
			}
			p = end;
		}
		if (f->n == f->cap) {
			int64_t nc = f->cap ? 2 * f->cap : 256;
			struct forced_row *r = realloc(f->rows, sizeof *r * (size_t)nc);
			if (!r) {
				rc = dsm_fail(DSM_ENOMEM, "out of memory");
				goto out;
			}
			f->rows = r;
			f->cap = nc;
		}
		struct forced_row *r = &f->rows[f->n++];
		*r = (struct forced_row){ .layer = (int)v[0], .pos = v[1] };
		r->v = malloc(sizeof(int32_t) * (strlen(p) / 2 + 1));
		if (!r->v) {
			rc = dsm_fail(DSM_ENOMEM, "out of memory");
			goto out;
		}
		for (;;) {
			long x = strtol(p, &end, 10);
			if (end == p)
				break;
			r->v[r->n++] = (int32_t)x;
			p = end;
		}
	}
out:
	free(line);
	fclose(in);
	return rc;
}

static void forced_free(struct forced *f)
{
	for (int64_t i = 0; i < f->n; i++)
		free(f->rows[i].v);
	free(f->rows);
}

static int forced_apply(const struct forced *f, int layer, int64_t pos, int32_t *v, int64_t n)
{
	for (int64_t i = 0; i < f->n; i++)
		if (f->rows[i].layer == layer && f->rows[i].pos == pos && f->rows[i].n == n) {
			memcpy(v, f->rows[i].v, sizeof(int32_t) * (size_t)n);
			return 1;
		}
	return 0;
}

/* One continuation being generated: its text decoder. Sample 0 streams to stdout and feeds the dumps. */
struct sample {
	struct run *r;
	int index;
	struct token_stream ts;
	struct text_buffer piece;
	int64_t n_generated;
};

struct run {
	struct tokenizer *tok;
	int json, quiet, samples;
	struct dsm_npy_writer npy;
	int dump_logits, dump_all;
	FILE *routing, *selection;
	long anon_first;         /* anonymous resident bytes after the first generated token */
	struct forced force_route, force_select;
	struct sample *sample;   /* [samples] */
};

static int force_route(void *user, int seq, int layer, int64_t pos, int32_t *idx, int k)
{
	return forced_apply(&((struct run *)user)->force_route, layer, pos, idx, k);
}

static int force_select(void *user, int seq, int layer, int64_t pos, int32_t *sel, int64_t n)
{
	return forced_apply(&((struct run *)user)->force_select, layer, pos, sel, n);
}

static long rss_bytes(const char *field)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	char line[256];
	long kb = -1;
	size_t n = strlen(field);
	while (fgets(line, sizeof line, f))
		if (strncmp(line, field, n) == 0 && line[n] == ':') {
			kb = strtol(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return kb < 0 ? -1 : kb * 1024;
}

static int token_text(void *user, int32_t id, struct dsm_text *out)
{
	struct sample *sm = user;
	struct run *r = sm->r;
	sm->n_generated++;
	if (!r->tok) {
		char buf[32];
		int n = snprintf(buf, sizeof buf, "%s%d", sm->n_generated > 1 ? " " : "", id);
		return dsm_text_append(out, buf, (size_t)n);
	}
	return dsm_token_text(&sm->ts, id, &sm->piece, out);
}

static int on_text(void *user, const char *text, size_t len)
{
	struct sample *sm = user;
	if (!sm->r->json && sm->index == 0) {
		fwrite(text, 1, len, stdout);
		fflush(stdout);
	}
	return 0;
}

static int on_logits(void *user, int64_t pos, int64_t n, const float *logits)
{
	struct sample *sm = user;
	struct run *r = sm->r;
	if (n == 1 && !r->dump_all && r->npy.rows > 0)
		return 0;
	return dsm_npy_write_rows(&r->npy, logits, n) < 0 ? -1 : 0;
}

static int on_token(void *user, int32_t id)
{
	struct sample *sm = user;
	if (sm->index == 0 && sm->n_generated == 0 && sm->r->anon_first == 0)
		sm->r->anon_first = rss_bytes("RssAnon");
	return 0;
}

/* The dumps follow the first sample's sequence (sequence 0). */
static void on_route(void *user, int seq, int layer, int64_t pos, const int32_t *idx, const float *w, int k)
{
	struct run *r = user;
	if (!r->routing || seq != 0)
		return;
	fprintf(r->routing, "%d %lld", layer, (long long)pos);
	for (int i = 0; i < k; i++)
		fprintf(r->routing, " %d", idx[i]);
	fputc('\n', r->routing);
}

static void on_select(void *user, int seq, int layer, int64_t pos, const int32_t *sel, int64_t n)
{
	struct run *r = user;
	if (!r->selection || seq != 0)
		return;
	fprintf(r->selection, "%d %lld", layer, (long long)pos);
	for (int64_t i = 0; i < n; i++)
		fprintf(r->selection, " %d", sel[i]);
	fputc('\n', r->selection);
}

static int parse_ids(const char *s, struct token_ids *out)
{
	const char *p = s;
	while (*p) {
		while (*p == ' ' || *p == ',')
			p++;
		if (!*p)
			break;
		char *end;
		errno = 0;
		long v = strtol(p, &end, 10);
		if (end == p || errno || v < 0 || v > INT32_MAX)
			return dsm_fail(DSM_EARG, "--tokens: '%s' is not a list of non-negative ids", s);
		if (token_ids_push(out, (int32_t)v) < 0)
			return DSM_ENOMEM;
		p = end;
	}
	if (out->n == 0)
		return dsm_fail(DSM_EARG, "--tokens: no ids in '%s'", s);
	return 0;
}
int64_t dsm_run_int_arg(const char *opt, const char *s, int64_t lo, int64_t hi)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "dsm-run: %s: '%s' is not an integer in [%lld, %lld]\n", opt, s, (long long)lo,
			(long long)hi);
		exit(2);
	}
	return v;
}
double dsm_run_number_arg(const char *opt, const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || *end) {
		fprintf(stderr, "dsm-run: %s: '%s' is not a number\n", opt, s);
		exit(2);
	}
	return v;
}
static char *read_whole(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	while (buf) {
		n += fread(buf + n, 1, cap - n - 1, f);
		if (n < cap - 1)
			break;
		char *p = realloc(buf, cap *= 2);
		if (!p) {
			free(buf);
			buf = NULL;
		}
		buf = p;
	}
	fclose(f);
	if (buf)
		buf[n] = 0;
	return buf;
}

static void add_result(cJSON *j, const struct dsm_generate_result *g)
{
	cJSON_AddStringToObject(j, "text", g->text.data ? g->text.data : "");
	cJSON_AddItemToObject(j, "tokens", cJSON_CreateIntArray(g->ids, (int)g->n));
	cJSON_AddStringToObject(j, "stop_reason", dsm_stop_reason_name(g->reason));
}

static void print_json(const char *prompt, const struct token_ids *ids, const struct dsm_generate_result *g, int n_samples,
		       uint64_t seed, double prefill_s, double decode_s, int64_t decode_tokens, const struct run *r,
		       const struct dsm_engine_report *er)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddItemToObject(j, "prompt", prompt ? cJSON_CreateString(prompt) : cJSON_CreateNull());
	cJSON_AddItemToObject(j, "prompt_tokens", cJSON_CreateIntArray(ids->ids, (int)ids->n));
	add_result(j, &g[0]);
	if (n_samples > 1) {
		cJSON *arr = cJSON_AddArrayToObject(j, "samples");
		for (int i = 0; i < n_samples; i++) {
			cJSON *o = cJSON_CreateObject();
			cJSON_AddNumberToObject(o, "seed", (double)(seed + (uint64_t)i));
			add_result(o, &g[i]);
			cJSON_AddItemToArray(arr, o);
		}
	}
	cJSON *t = cJSON_AddObjectToObject(j, "timings");
	cJSON_AddNumberToObject(t, "prefill_tokens", (double)g[0].n_prompt);
	cJSON_AddNumberToObject(t, "prefill_seconds", prefill_s);
	cJSON_AddNumberToObject(t, "prefill_tokens_per_second", prefill_s > 0 ? (double)g[0].n_prompt / prefill_s : 0);
	cJSON_AddNumberToObject(t, "decode_tokens", (double)decode_tokens);
	cJSON_AddNumberToObject(t, "decode_seconds", decode_s);
	cJSON_AddNumberToObject(t, "decode_tokens_per_second", decode_s > 0 ? (double)decode_tokens / decode_s : 0);
	cJSON *mem = cJSON_AddObjectToObject(j, "memory");
	cJSON_AddNumberToObject(mem, "weights_mapped_bytes", (double)er->weights_mapped_bytes);
	cJSON_AddNumberToObject(mem, "weights_copied_bytes", (double)er->weights_copied_bytes);
	cJSON_AddNumberToObject(mem, "weights_huge_bytes", (double)er->weights_huge_bytes);
	cJSON_AddNumberToObject(mem, "kv_cache_bytes", (double)er->kv_pool_bytes);
	cJSON_AddNumberToObject(mem, "kv_blocks", (double)er->kv_blocks);
	cJSON_AddNumberToObject(mem, "buffers_bytes", (double)er->buffers_bytes);
	cJSON_AddNumberToObject(mem, "head_screen_bytes", (double)er->head_screen_bytes);
	cJSON_AddNumberToObject(mem, "usable_bytes", (double)er->memory.usable);
	cJSON_AddNumberToObject(mem, "available_bytes", (double)er->memory.available);
	cJSON_AddStringToObject(mem, "limit", er->memory.name);
	cJSON_AddStringToObject(mem, "limit_file", er->memory.path);
	if (er->tiered) {
		const struct dsm_offload_report *o = &er->offload;
		cJSON *off = cJSON_AddObjectToObject(j, "offload");
		cJSON_AddNumberToObject(off, "gpu_experts", (double)o->experts[DSM_TIER_GPU]);
		cJSON_AddNumberToObject(off, "dram_experts", (double)o->experts[DSM_TIER_DRAM]);
		cJSON_AddNumberToObject(off, "nvme_experts", (double)o->experts[DSM_TIER_NVME]);
		cJSON_AddNumberToObject(off, "mapped_experts", (double)o->experts[DSM_TIER_MAPPED]);
		cJSON_AddNumberToObject(off, "nvme_bytes_per_token", o->nvme_bytes_per_token);
		cJSON_AddNumberToObject(off, "read_gbs", o->read_gbs);
		cJSON_AddStringToObject(off, "cache_policy", o->cache_policy);
		cJSON_AddNumberToObject(off, "cache_slots", (double)o->cache_slots);
		cJSON_AddNumberToObject(off, "cache_hit_rate", o->cache_hit_rate);
		cJSON_AddNumberToObject(off, "prefetch_hit_rate", o->prefetch_hit_rate);
		cJSON_AddNumberToObject(off, "attention_seconds", o->attention_seconds);
		cJSON_AddNumberToObject(off, "cpu_expert_seconds", o->cpu_expert_seconds);
		cJSON_AddNumberToObject(off, "gpu_expert_seconds", o->gpu_expert_seconds);
		cJSON_AddNumberToObject(off, "io_wait_seconds", o->io_wait_seconds);
		cJSON_AddNumberToObject(off, "gpu_wait_seconds", o->gpu_wait_seconds);
		cJSON_AddNumberToObject(off, "overlap_seconds", o->overlap_seconds);
		cJSON_AddNumberToObject(off, "shared_runs_gpu", (double)o->shared_runs_gpu);
		cJSON_AddNumberToObject(off, "shared_runs_cpu", (double)o->shared_runs_cpu);
		cJSON_AddNumberToObject(off, "upload_min_tokens", (double)o->upload_min_tokens);
		cJSON_AddNumberToObject(off, "uploaded_runs", (double)o->uploaded_runs);
		cJSON *tl = cJSON_AddObjectToObject(off, "timeline_ms_per_token");
		cJSON_AddNumberToObject(tl, "gpu_busy", 1e3 * o->gpu_busy_per_token);
		cJSON_AddNumberToObject(tl, "cpu_busy", 1e3 * o->cpu_busy_per_token);
		cJSON_AddNumberToObject(tl, "io_wait", 1e3 * o->io_wait_per_token);
		cJSON_AddNumberToObject(tl, "overlap", 1e3 * o->overlap_per_token);
	}
	/* resident memory: anonymous (heap: caches, buffers, scratch) and file-backed (mapped weights) */
	cJSON_AddNumberToObject(mem, "rss_anon_after_first_token_bytes", (double)r->anon_first);
	cJSON_AddNumberToObject(mem, "rss_anon_end_bytes", (double)rss_bytes("RssAnon"));
	cJSON_AddNumberToObject(mem, "rss_file_end_bytes", (double)rss_bytes("RssFile"));
	cJSON_AddNumberToObject(mem, "rss_end_bytes", (double)rss_bytes("VmRSS"));
	cJSON_AddNumberToObject(mem, "rss_peak_bytes", (double)rss_bytes("VmHWM"));
	char *text = cJSON_Print(j);
	if (text)
		printf("%s\n", text);
	free(text);
	cJSON_Delete(j);
}

enum {
	OPT_CHAT = 256, OPT_NO_THINK, OPT_SYSTEM, OPT_TOKENS, OPT_TEMP, OPT_TOP_P, OPT_TOP_K, OPT_SEED, OPT_STOP,
	OPT_IGNORE_EOS, OPT_SAMPLES, OPT_JSON, OPT_DUMP_LOGITS, OPT_DUMP_ALL, OPT_DUMP_ROUTING, OPT_DUMP_SELECTION,
	OPT_FORCE_ROUTING, OPT_FORCE_SELECTION,
};

/* Progress of reading the mapped weights in, on a terminal. */
static void read_progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	fprintf(stderr, "\rdsm-run: reading the weights: %.1f of %.1f GB", (double)done / 1e9, (double)total / 1e9);
	if (done == total)
		fputc('\n', stderr);
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void dsm_run_print_notes(const char *notes)
{
	while (*notes) {
		const char *nl = strchr(notes, '\n');
		int len = nl ? (int)(nl - notes) : (int)strlen(notes);
		fprintf(stderr, "dsm-run: %.*s\n", len, notes);
		notes += len + (nl != NULL);
	}
}

int main(int argc, char **argv)
{
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "--prove") == 0)
			return dsm_run_prove(argc, argv);
	static const struct option own[] = {
		{ "model", required_argument, NULL, 'm' }, { "prompt", required_argument, NULL, 'p' },
		{ "file", required_argument, NULL, 'f' }, { "chat", no_argument, NULL, OPT_CHAT },
		{ "no-think", no_argument, NULL, OPT_NO_THINK }, { "system", required_argument, NULL, OPT_SYSTEM },
		{ "tokens", required_argument, NULL, OPT_TOKENS }, { "max-tokens", required_argument, NULL, 'n' },
		{ "temperature", required_argument, NULL, OPT_TEMP }, { "top-p", required_argument, NULL, OPT_TOP_P },
		{ "top-k", required_argument, NULL, OPT_TOP_K }, { "seed", required_argument, NULL, OPT_SEED },
		{ "stop", required_argument, NULL, OPT_STOP }, { "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS },
		{ "samples", required_argument, NULL, OPT_SAMPLES },
		{ "json", no_argument, NULL, OPT_JSON }, { "dump-logits", required_argument, NULL, OPT_DUMP_LOGITS },
		{ "dump-all", no_argument, NULL, OPT_DUMP_ALL },
		{ "dump-routing", required_argument, NULL, OPT_DUMP_ROUTING },
		{ "dump-selection", required_argument, NULL, OPT_DUMP_SELECTION },
		{ "force-routing", required_argument, NULL, OPT_FORCE_ROUTING },
		{ "force-selection", required_argument, NULL, OPT_FORCE_SELECTION },
		{ "verbose", no_argument, NULL, 'v' }, { "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts) {
		fprintf(stderr, "dsm-run: out of memory\n");
		return 1;
	}
	const char *dir = NULL, *prompt = NULL, *prompt_file = NULL, *system = "", *tokens_arg = NULL;
	const char *logits_path = NULL, *routing_path = NULL, *selection_path = NULL;
	const char *force_route_path = NULL, *force_select_path = NULL;
	const char *stops[MAX_STOP];
	int n_stop = 0, chat = 0, think = 1, ignore_eos = 0, verbose = 0;
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	struct dsm_generate_params gp = { .max_tokens = 256, .sampling = { .temperature = 0, .top_p = 1, .seed = 1 } };
	struct run r = { .samples = 1 };
	int c;
	while ((c = getopt_long(argc, argv, "m:p:f:n:t:vqh", opts, NULL)) != -1) {
		int e = dsm_engine_flag(&eo, c, optarg);
		if (e < 0) {
			fprintf(stderr, "dsm-run: %s\n", dsm_errmsg());
			return 2;
		}
		if (e > 0)
			continue;
		switch (c) {
		case 'm': dir = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': prompt_file = optarg; break;
		case OPT_CHAT: chat = 1; break;
		case OPT_NO_THINK: think = 0; break;
		case OPT_SYSTEM: system = optarg; break;
		case OPT_TOKENS: tokens_arg = optarg; break;
		case 'n': gp.max_tokens = dsm_run_int_arg("--max-tokens", optarg, 0, INT32_MAX); break;
		case OPT_TEMP: gp.sampling.temperature = (float)dsm_run_number_arg("--temperature", optarg); break;
		case OPT_TOP_P: gp.sampling.top_p = (float)dsm_run_number_arg("--top-p", optarg); break;
		case OPT_TOP_K: gp.sampling.top_k = (int)dsm_run_int_arg("--top-k", optarg, 0, INT32_MAX); break;
		case OPT_SEED: gp.sampling.seed = (uint64_t)dsm_run_int_arg("--seed", optarg, 0, INT64_MAX); break;
		case OPT_STOP:
			if (n_stop == MAX_STOP) {
				fprintf(stderr, "dsm-run: at most %d --stop strings\n", MAX_STOP);
				return 2;
			}
			stops[n_stop++] = optarg;
			break;
		case OPT_IGNORE_EOS: ignore_eos = 1; break;
		case OPT_SAMPLES: r.samples = (int)dsm_run_int_arg("--samples", optarg, 1, 4096); break;
		case OPT_JSON: r.json = 1; break;
		case OPT_DUMP_LOGITS: logits_path = optarg; break;
		case OPT_DUMP_ALL: r.dump_all = 1; break;
		case OPT_DUMP_ROUTING: routing_path = optarg; break;
		case OPT_DUMP_SELECTION: selection_path = optarg; break;
		case OPT_FORCE_ROUTING: force_route_path = optarg; break;
		case OPT_FORCE_SELECTION: force_select_path = optarg; break;
		case 'v': verbose = 1; break;
		case 'q': r.quiet = 1; break;
		case 'h': usage(stdout); free(opts); return 0;
		default: usage(stderr); free(opts); return 2;
		}
	}
	free(opts);
	if (optind < argc || !dir || (!prompt && !prompt_file && !tokens_arg) ||
	    ((prompt || prompt_file) && tokens_arg) || (prompt && prompt_file)) {
		fprintf(stderr, "dsm-run: give -m DIR and one of -p PROMPT, -f FILE or --tokens IDS (see --help)\n");
		return 2;
	}
	/* N samples decode together: N sequences at least */
	if (eo.session.max_seqs < r.samples)
		eo.session.max_seqs = r.samples;

	int rc = 0, status = 1;
	char *file_text = NULL;
	struct dsm_engine *e = NULL;
	struct dsm_scheduler *sc = NULL;
	struct token_ids ids = { 0 };
	struct text_buffer shell = { 0 };
	struct dsm_generate_result *g = calloc((size_t)r.samples, sizeof *g);
	r.sample = calloc((size_t)r.samples, sizeof *r.sample);
	if (!g || !r.sample) {
		fprintf(stderr, "dsm-run: out of memory\n");
		goto out;
	}
	if (prompt_file) {
		prompt = file_text = read_whole(prompt_file);
		if (!prompt) {
			fprintf(stderr, "dsm-run: %s: %s\n", prompt_file, strerror(errno));
			goto out;
		}
	}
	if (routing_path && !(r.routing = fopen(routing_path, "w"))) {
		rc = dsm_fail(DSM_EIO, "%s: %s", routing_path, strerror(errno));
		goto fail;
	}
	if (selection_path && !(r.selection = fopen(selection_path, "w"))) {
		rc = dsm_fail(DSM_EIO, "%s: %s", selection_path, strerror(errno));
		goto fail;
	}
	if ((force_route_path && (rc = forced_load(&r.force_route, force_route_path)) < 0) ||
	    (force_select_path && (rc = forced_load(&r.force_select, force_select_path)) < 0))
		goto fail;
	eo.session.hooks = (struct dsm_session_hooks){ .user = &r, .on_route = on_route, .on_select = on_select,
						       .force_route = force_route_path ? force_route : NULL,
						       .force_select = force_select_path ? force_select : NULL };
	if (!r.quiet && isatty(2))
		eo.progress = read_progress;
	if ((rc = dsm_engine_open(&e, dir, &eo)) < 0)
		goto fail;
	const char *notes = dsm_engine_notes(e);
	dsm_run_print_notes(notes);
	r.tok = dsm_engine_tokenizer(e);
	const struct dsm_model *m = dsm_engine_model(e);
	struct dsm_session *s = dsm_engine_session(e);
	if (verbose) {
		struct dsm_engine_report er;
		dsm_engine_report(e, 0, 0, &er);
		fprintf(stderr, "dsm-run: memory dsm may fill %.3g GB (%.3g GB available by %s%s%s, less a margin); KV "
			"pool %.3g GB (%lld blocks of %d positions), sequences: %d of at most %lld tokens; weights %s\n",
			(double)er.memory.usable / 1e9, (double)er.memory.available / 1e9, er.memory.name,
			er.memory.path[0] ? " in " : "", er.memory.path,
			(double)er.kv_pool_bytes / 1e9, (long long)er.kv_blocks, DSM_KV_BLOCK,
			dsm_session_max_seqs(s), (long long)dsm_session_ctx(s),
			er.tiered ? "in the tiered store" : "mapped from the checkpoint");
	}
	if (tokens_arg) {
		if ((rc = parse_ids(tokens_arg, &ids)) < 0)
			goto fail;
	} else {
		if (!r.tok) {
			rc = dsm_fail(DSM_EMISSING, "%s: no tokenizer.json: a text prompt needs one (use --tokens IDS)", dir);
			goto fail;
		}
		if (chat) {
			/* the shell starts with BOS as text: encoded without adding special tokens */
			if ((rc = chat_prompt(system, prompt, think, &shell)) < 0)
				goto fail;
			rc = tokenizer_encode(r.tok, shell.data, shell.len, 0, &ids);
		} else {
			rc = tokenizer_encode(r.tok, prompt, strlen(prompt), TOKENIZER_ADD_SPECIAL, &ids);
		}
		if (rc < 0)
			goto fail;
		if (ids.n == 0) {
			rc = dsm_fail(DSM_EARG, "the prompt encodes to no tokens");
			goto fail;
		}
	}
	if (logits_path) {
		if ((rc = dsm_npy_open(&r.npy, logits_path, m->cfg.vocab_size)) < 0)
			goto fail;
		r.dump_logits = 1;
	}
	gp.eos_id = ignore_eos ? -1 : m->cfg.eos_token_id;
	gp.stop = stops;
	gp.n_stop = n_stop;
	gp.prompt_logits = logits_path != NULL;
	/* Sample 0 computes the prompt (on sequence 0, the first free); the others fork it after its prefill. */
	if ((rc = dsm_scheduler_init(&sc, s, NULL)) < 0)
		goto fail;
	for (int i = 0; i < r.samples; i++) {
		struct sample *sm = &r.sample[i];
		*sm = (struct sample){ .r = &r, .index = i };
		if (r.tok)
			token_stream_init(&sm->ts, r.tok, TOKENIZER_SKIP_SPECIAL);
		struct dsm_request q = { .prompt = ids.ids, .n_prompt = (int64_t)ids.n, .params = gp,
			/* logits seen by no one: a greedy decode needs only the largest (DSM_LOGITS_TOP) */
			.io = { .user = sm, .token_text = token_text, .on_text = on_text,
				.on_logits = r.dump_logits && i == 0 ? on_logits : NULL, .on_token = on_token },
			.seq = -1, .prefix_of = i == 0 ? -1 : 0 };
		q.params.sampling.seed = gp.sampling.seed + (uint64_t)i;
		q.params.prompt_logits = i == 0 && logits_path;
		if ((rc = dsm_scheduler_add(sc, &q)) < 0)
			goto fail;
	}
	if (r.samples > 1 && !r.json)
		printf("--- sample 1 of %d (seed %llu)\n", r.samples, (unsigned long long)gp.sampling.seed);
	double t0 = now();
	if ((rc = dsm_scheduler_run(sc)) < 0)
		goto fail;
	double wall = now() - t0;
	int64_t decode_tokens = 0;
	for (int i = 0; i < r.samples; i++) {
		int qrc;
		const struct dsm_generate_result *res = dsm_scheduler_result(sc, i, &qrc);
		if (qrc < 0) {
			rc = r.samples > 1 ? dsm_fail(qrc, "sample %d: %s", i + 1, dsm_scheduler_error(sc, i))
					   : dsm_fail(qrc, "%s", dsm_scheduler_error(sc, i));
			goto fail;
		}
		g[i] = *res;
		struct sample *sm = &r.sample[i];
		if (r.tok && g[i].reason != DSM_STOP_STRING) {
			sm->piece.len = 0;
			if (token_stream_finish(&sm->ts, &sm->piece) == 0 && sm->piece.len) {
				g[i].text.data = NULL; /* the scheduler's copy stays its own: copy before appending */
				struct dsm_text t = { 0 };
				dsm_text_append(&t, res->text.data ? res->text.data : "", res->text.len);
				dsm_text_append(&t, sm->piece.data, sm->piece.len);
				g[i].text = t;
				on_text(sm, sm->piece.data, sm->piece.len);
			} else {
				g[i].text = (struct dsm_text){ 0 };
				dsm_text_append(&g[i].text, res->text.data ? res->text.data : "", res->text.len);
			}
		} else {
			g[i].text = (struct dsm_text){ 0 };
			dsm_text_append(&g[i].text, res->text.data ? res->text.data : "", res->text.len);
		}
		decode_tokens += g[i].n > 1 ? g[i].n - 1 : 0;
	}
	if (r.dump_logits && (rc = dsm_npy_close(&r.npy)) < 0)
		goto fail;
	if ((rc = dsm_engine_finish(e)) < 0)
		goto fail;
	double prefill_s = g[0].prefill_seconds, decode_s = r.samples > 1 ? wall - prefill_s : g[0].decode_seconds;
	struct dsm_engine_report er;
	dsm_engine_report(e, (uint64_t)(g[0].n_prompt + decode_tokens), prefill_s + decode_s, &er);
	if (r.json) {
		print_json(tokens_arg ? NULL : prompt, &ids, g, r.samples, gp.sampling.seed, prefill_s, decode_s,
			   decode_tokens, &r, &er);
	} else {
		if (g[0].text.len && g[0].text.data[g[0].text.len - 1] != '\n')
			putchar('\n');
		for (int i = 1; i < r.samples; i++) {
			printf("--- sample %d of %d (seed %llu)\n%s", i + 1, r.samples,
			       (unsigned long long)(gp.sampling.seed + (uint64_t)i), g[i].text.data ? g[i].text.data : "");
			if (g[i].text.len && g[i].text.data[g[i].text.len - 1] != '\n')
				putchar('\n');
		}
	}
	fflush(stdout);
	if (!r.quiet) {
		fprintf(stderr, "dsm-run: prefill %lld tokens in %.3f s (%.2f tok/s), decode %lld tokens in %.3f s "
			"(%.2f tok/s%s), %s, %d threads%s, stop: %s\n", (long long)g[0].n_prompt, prefill_s,
			prefill_s > 0 ? (double)g[0].n_prompt / prefill_s : 0.0, (long long)decode_tokens, decode_s,
			decode_s > 0 ? (double)decode_tokens / decode_s : 0.0, r.samples > 1 ? ", all samples" : "",
			dsm_precision_name(er.precision), er.threads, er.bound ? " (bound to cores)" : "",
			dsm_stop_reason_name(g[0].reason));
		for (int i = 0; i < r.samples; i++)
			if (g[i].reason == DSM_STOP_CONTEXT) {
				fprintf(stderr, "dsm-run: the context of %lld tokens is full (raise --ctx)\n",
					(long long)dsm_session_ctx(s));
				break;
			}
		if (er.tiered) {
			char line[512];
			dsm_offload_report_text(&er.offload, line, sizeof line);
			fprintf(stderr, "dsm-run: %s\n", line);
		}
		if (verbose) {
			struct dsm_step_times st;
			dsm_session_times(s, &st, 0);
			double all = dsm_step_times_total(&st);
			fprintf(stderr, "dsm-run: %lld steps, %.3f s: attention %.1f%%, router %.1f%%, experts %.1f%%, dense "
				"%.1f%%, head %.1f%%, other %.1f%% (threads waiting %.1f%% within)\n", (long long)st.steps, all,
				100 * st.attention / all, 100 * st.router / all, 100 * st.experts / all, 100 * st.dense / all,
				100 * st.head / all, 100 * st.other / all, 100 * st.waiting / all);
			if (st.top_steps)
				fprintf(stderr, "dsm-run: the head screened in %lld of %lld steps, %.1f of its %d rows multiplied in "
					"each\n", (long long)st.top_steps, (long long)st.steps,
					(double)st.top_rows / (double)st.top_steps, m->cfg.vocab_size);
			if (st.device > 0)
				fprintf(stderr, "dsm-run: the forward pass on the GPU: its queue busy %.3f s (%.1f%% of the "
					"steps' time; experts aside)\n", st.device, 100 * st.device / all);
		}
	}
	status = 0;
	goto out;
fail:
	fprintf(stderr, "dsm-run: %s\n", dsm_errmsg());
out:
	if (r.dump_logits)
		dsm_npy_close(&r.npy);
	if (r.routing && fclose(r.routing) != 0)
		status = 1;
	if (r.selection && fclose(r.selection) != 0)
		status = 1;
	forced_free(&r.force_route);
	forced_free(&r.force_select);
	for (int i = 0; g && i < r.samples; i++)
		dsm_text_free(&g[i].text);
	for (int i = 0; r.sample && i < r.samples; i++)
		text_buffer_free(&r.sample[i].piece);
	free(g);
	free(r.sample);
	dsm_scheduler_free(sc);
	dsm_engine_close(e);
	text_buffer_free(&shell);
	token_ids_free(&ids);
	free(file_text);
	return status;
}
