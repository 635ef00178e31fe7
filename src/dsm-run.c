/* dsm-run: generate text from a DeepSeek-V3.2 / DeepSeekMath-V2 checkpoint, streaming it to stdout. */
#include "backend.h"
#include "dispatch.h"
#include "error.h"
#include "expert_store.h"
#include "generate.h"
#include "model.h"
#include "npy.h"
#include "session.h"
#include "size_parse.h"
#include "templates.h"
#include "tokenizer.h"
#include "trace.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_STOP 16

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-run -m CHECKPOINT_DIR (-p PROMPT | --tokens IDS) [options]\n"
		"Generates text from a DeepSeek-V3.2 / DeepSeekMath-V2 checkpoint and streams it to stdout;\n"
		"prefill and decode speeds go to stderr at exit.\n"
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
		"engine:\n"
		"  -t, --threads N        threads, at most one per physical core, each bound to its core (default: all\n"
		"                         physical cores)\n"
		"  --no-bind              do not bind threads to cores (several dsm processes sharing a machine)\n"
		"  --precision P          matmul precision: bf16 (default where the CPU has AVX-512 BF16: the fast\n"
		"                         FP8 kernels) or f32 (exact weights and F32 activations: the reference path)\n"
		"  --ctx N                context length in tokens (default 4096)\n"
		"  --batch N              prompt tokens per forward step (default 128)\n"
		"  --kv-cache T           KV cache type: bf16 (default) or f32\n"
		"  --indexer-fp8          round the indexer's q/k to FP8 as the public reference code does\n"
		"  --index-topk N         override the config's index_topk (tests)\n"
		"  --mla FORM             auto (default), full or absorbed attention (tests)\n"
		"output:\n"
		"  --json                 print one JSON document (prompt, text, ids, stop reason, timings, memory)\n"
		"  --dump-logits FILE     write the F32 logits of every prompt position as .npy [positions, vocab]\n"
		"  --dump-all             with --dump-logits: also the logits after each generated token\n"
		"  --dump-routing FILE    write the experts chosen per MoE layer: lines 'layer position e1 e2 ...'\n"
		"  --dump-selection FILE  write the indexer's choices: lines 'layer position s1 s2 ...'\n"
		"  --force-routing FILE   use these experts where FILE (the --dump-routing format) names them (tests)\n"
		"  --force-selection FILE use these indexer choices likewise (tests)\n"
		"\n"
		"routed experts across tiers (docs/offload.md, docs/plan.md; any of these turns the tiered store on, and\n"
		"it turns itself on when the weights do not fit in the available memory):\n"
		"  --offload              the tiered store with a plan computed from the budgets below\n"
		"  --no-offload           map every weight from the checkpoint even when it does not fit in memory\n"
		"  --plan FILE            placement plan (JSON, docs/plan.md)\n"
		"  --gpu-backend NAME     computes the experts a plan puts on gpu:0: emu (the cpu behind a device-memory\n"
		"                         budget of --vram-budget, default 1G; for tests) or cuda where built. Without\n"
		"                         it a plan naming gpu:N experts is refused\n"
		"  --vram-budget SIZE     GPU memory for a computed plan (e.g. 20G; needs --gpu-backend)\n"
		"  --dram-budget SIZE     DRAM for a computed plan (default: available memory minus a tenth, at least\n"
		"                         1 GiB)\n"
		"  --stream-experts       every routed expert streamed from the checkpoint\n"
		"  --cache-policy P       expert cache of streamed experts: lru (default), lfu or pinned\n"
		"  --cache-size SIZE      DRAM for the expert cache (default: 2 x top-k experts)\n"
		"  --cache-off            read a streamed expert at every use\n"
		"  --hotness-trace FILE   expert hotness for the plan and the pinned policy (a --record-routing file)\n"
		"  --record-routing FILE  write the routing trace (docs/trace.md)\n"
		"  -q, --quiet            no speeds on stderr\n"
		"  -h, --help             this text\n", MAX_STOP);
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

struct run {
	struct tokenizer *tok;
	struct token_stream ts;
	struct text_buffer piece;
	int json, quiet;
	struct dsm_npy_writer npy;
	int dump_logits, dump_all;
	FILE *routing, *selection;
	long anon_first;         /* anonymous resident bytes after the first generated token */
	int64_t vocab;
	int64_t n_generated;
	struct forced force_route, force_select;
	struct dsm_trace_writer *trace;
	const struct dsm_offload_report *offload_report;
};

static int force_route(void *user, int layer, int64_t pos, int32_t *idx, int k)
{
	return forced_apply(&((struct run *)user)->force_route, layer, pos, idx, k);
}

static int force_select(void *user, int layer, int64_t pos, int32_t *sel, int64_t n)
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
	struct run *r = user;
	if (!r->tok) {
		char buf[32];
		int n = snprintf(buf, sizeof buf, "%s%d", r->n_generated > 1 ? " " : "", id);
		return dsm_text_append(out, buf, (size_t)n);
	}
	/* ids past the tokenizer's vocabulary are padding rows of the embedding: no text */
	if ((size_t)id >= tokenizer_vocab_size(r->tok) || !tokenizer_token_string(r->tok, id, NULL))
		return 0;
	r->piece.len = 0;
	int rc = token_stream_push(&r->ts, id, &r->piece);
	if (rc < 0)
		return rc;
	return r->piece.len ? dsm_text_append(out, r->piece.data, r->piece.len) : 0;
}

static int on_text(void *user, const char *text, size_t len)
{
	struct run *r = user;
	if (!r->json) {
		fwrite(text, 1, len, stdout);
		fflush(stdout);
	}
	return 0;
}

static int on_logits(void *user, int64_t pos, int64_t n, const float *logits)
{
	struct run *r = user;
	if (!r->dump_logits)
		return 0;
	if (n == 1 && !r->dump_all && r->npy.rows > 0)
		return 0;
	return dsm_npy_write_rows(&r->npy, logits, n) < 0 ? -1 : 0;
}

static int on_token(void *user, int32_t id)
{
	struct run *r = user;
	if (++r->n_generated == 1)
		r->anon_first = rss_bytes("RssAnon");
	return 0;
}

static void on_route(void *user, int layer, int64_t pos, const int32_t *idx, const float *w, int k)
{
	struct run *r = user;
	if (r->trace)
		dsm_trace_add_token(r->trace, layer, (uint32_t)pos, idx); /* errors come back at close */
	if (!r->routing)
		return;
	fprintf(r->routing, "%d %lld", layer, (long long)pos);
	for (int i = 0; i < k; i++)
		fprintf(r->routing, " %d", idx[i]);
	fputc('\n', r->routing);
}

static void on_select(void *user, int layer, int64_t pos, const int32_t *sel, int64_t n)
{
	struct run *r = user;
	if (!r->selection)
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

static int64_t parse_int(const char *opt, const char *s, int64_t lo, int64_t hi)
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

static double parse_double(const char *opt, const char *s)
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

static void print_json(const char *prompt, const struct token_ids *ids, const struct dsm_generate_result *g,
		       const struct run *r, const struct dsm_model *m, const struct dsm_session *s)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddItemToObject(j, "prompt", prompt ? cJSON_CreateString(prompt) : cJSON_CreateNull());
	cJSON_AddItemToObject(j, "prompt_tokens", cJSON_CreateIntArray(ids->ids, (int)ids->n));
	cJSON_AddStringToObject(j, "text", g->text.data ? g->text.data : "");
	cJSON_AddItemToObject(j, "tokens", cJSON_CreateIntArray(g->ids, (int)g->n));
	cJSON_AddStringToObject(j, "stop_reason", dsm_stop_reason_name(g->reason));
	cJSON *t = cJSON_AddObjectToObject(j, "timings");
	int64_t nd = g->n > 1 ? g->n - 1 : 0;
	cJSON_AddNumberToObject(t, "prefill_tokens", (double)g->n_prompt);
	cJSON_AddNumberToObject(t, "prefill_seconds", g->prefill_seconds);
	cJSON_AddNumberToObject(t, "prefill_tokens_per_second",
				g->prefill_seconds > 0 ? (double)g->n_prompt / g->prefill_seconds : 0);
	cJSON_AddNumberToObject(t, "decode_tokens", (double)nd);
	cJSON_AddNumberToObject(t, "decode_seconds", g->decode_seconds);
	cJSON_AddNumberToObject(t, "decode_tokens_per_second", g->decode_seconds > 0 ? (double)nd / g->decode_seconds : 0);
	uint64_t mapped, copied, kv, act;
	dsm_model_memory(m, &mapped, &copied);
	dsm_session_memory(s, &kv, &act);
	cJSON *mem = cJSON_AddObjectToObject(j, "memory");
	cJSON_AddNumberToObject(mem, "weights_mapped_bytes", (double)mapped);
	cJSON_AddNumberToObject(mem, "weights_copied_bytes", (double)copied);
	cJSON_AddNumberToObject(mem, "kv_cache_bytes", (double)kv);
	cJSON_AddNumberToObject(mem, "buffers_bytes", (double)act);
	if (r->offload_report) {
		const struct dsm_offload_report *o = r->offload_report;
		cJSON *off = cJSON_AddObjectToObject(j, "offload");
		cJSON_AddNumberToObject(off, "gpu_experts", (double)o->experts[DSM_TIER_GPU]);
		cJSON_AddNumberToObject(off, "dram_experts", (double)o->experts[DSM_TIER_DRAM]);
		cJSON_AddNumberToObject(off, "nvme_experts", (double)o->experts[DSM_TIER_NVME]);
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
	OPT_IGNORE_EOS, OPT_PRECISION, OPT_CTX, OPT_BATCH, OPT_KV, OPT_IDX_FP8, OPT_IDX_TOPK, OPT_MLA, OPT_JSON,
	OPT_DUMP_LOGITS, OPT_DUMP_ALL, OPT_DUMP_ROUTING, OPT_DUMP_SELECTION, OPT_FORCE_ROUTING, OPT_FORCE_SELECTION,
	OPT_OFFLOAD, OPT_PLAN, OPT_VRAM, OPT_DRAM, OPT_STREAM_EXPERTS, OPT_CACHE_POLICY, OPT_CACHE_SIZE, OPT_CACHE_OFF,
	OPT_HOTNESS, OPT_RECORD_ROUTING, OPT_NO_BIND, OPT_GPU_BACKEND, OPT_NO_OFFLOAD,
};

/* 0 when the checkpoint's weights do not fit in the memory dsm may use (the tiered store then keeps what
 * fits and streams the rest, where mapping everything would page the shards in and out), 1 when they fit
 * or the sizes are unknown. *total and *usable: the two sizes (0 when unknown). */
static int weights_fit(const struct dsm_model *m, uint64_t *total, uint64_t *usable)
{
	struct dsm_plan_sizes sz;
	*total = 0;
	*usable = dsm_usable_memory();
	if (!*usable)
		return 1;
	dsm_plan_sizes(m->store_model, &sz);
	const struct dsm_config *c = &m->cfg;
	*total = sz.non_expert_total + (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace) *
				      (uint64_t)c->n_routed_experts * sz.expert_bytes;
	return *total <= *usable;
}

/* Progress of reading the mapped weights in, on a terminal. */
static void read_progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	fprintf(stderr, "\rdsm-run: reading the weights: %.1f of %.1f GB", (double)done / 1e9, (double)total / 1e9);
	if (done == total)
		fputc('\n', stderr);
}

static uint64_t parse_size_arg(const char *what, const char *s)
{
	uint64_t v;
	if (parse_size(s, &v) < 0) {
		fprintf(stderr, "dsm-run: %s: '%s' is not a size (e.g. 24G, 512M)\n", what, s);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' }, { "prompt", required_argument, NULL, 'p' },
		{ "file", required_argument, NULL, 'f' }, { "chat", no_argument, NULL, OPT_CHAT },
		{ "no-think", no_argument, NULL, OPT_NO_THINK }, { "system", required_argument, NULL, OPT_SYSTEM },
		{ "tokens", required_argument, NULL, OPT_TOKENS }, { "max-tokens", required_argument, NULL, 'n' },
		{ "temperature", required_argument, NULL, OPT_TEMP }, { "top-p", required_argument, NULL, OPT_TOP_P },
		{ "top-k", required_argument, NULL, OPT_TOP_K }, { "seed", required_argument, NULL, OPT_SEED },
		{ "stop", required_argument, NULL, OPT_STOP }, { "ignore-eos", no_argument, NULL, OPT_IGNORE_EOS },
		{ "threads", required_argument, NULL, 't' }, { "no-bind", no_argument, NULL, OPT_NO_BIND },
		{ "precision", required_argument, NULL, OPT_PRECISION },
		{ "ctx", required_argument, NULL, OPT_CTX }, { "batch", required_argument, NULL, OPT_BATCH },
		{ "kv-cache", required_argument, NULL, OPT_KV }, { "indexer-fp8", no_argument, NULL, OPT_IDX_FP8 },
		{ "index-topk", required_argument, NULL, OPT_IDX_TOPK }, { "mla", required_argument, NULL, OPT_MLA },
		{ "json", no_argument, NULL, OPT_JSON }, { "dump-logits", required_argument, NULL, OPT_DUMP_LOGITS },
		{ "dump-all", no_argument, NULL, OPT_DUMP_ALL },
		{ "dump-routing", required_argument, NULL, OPT_DUMP_ROUTING },
		{ "dump-selection", required_argument, NULL, OPT_DUMP_SELECTION },
		{ "force-routing", required_argument, NULL, OPT_FORCE_ROUTING },
		{ "force-selection", required_argument, NULL, OPT_FORCE_SELECTION },
		{ "offload", no_argument, NULL, OPT_OFFLOAD }, { "no-offload", no_argument, NULL, OPT_NO_OFFLOAD }, { "plan", required_argument, NULL, OPT_PLAN },
		{ "gpu-backend", required_argument, NULL, OPT_GPU_BACKEND },
		{ "vram-budget", required_argument, NULL, OPT_VRAM }, { "dram-budget", required_argument, NULL, OPT_DRAM },
		{ "stream-experts", no_argument, NULL, OPT_STREAM_EXPERTS },
		{ "cache-policy", required_argument, NULL, OPT_CACHE_POLICY },
		{ "cache-size", required_argument, NULL, OPT_CACHE_SIZE }, { "cache-off", no_argument, NULL, OPT_CACHE_OFF },
		{ "hotness-trace", required_argument, NULL, OPT_HOTNESS },
		{ "record-routing", required_argument, NULL, OPT_RECORD_ROUTING },
		{ "quiet", no_argument, NULL, 'q' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *dir = NULL, *prompt = NULL, *prompt_file = NULL, *system = "", *tokens_arg = NULL;
	const char *logits_path = NULL, *routing_path = NULL, *selection_path = NULL;
	const char *force_route_path = NULL, *force_select_path = NULL;
	const char *stops[MAX_STOP];
	int n_stop = 0, chat = 0, think = 1, ignore_eos = 0;
	struct dsm_model_options mo = { .precision = dsm_precision_default() };
	struct dsm_session_options so = { .ctx = 4096, .max_batch = 128, .kv_dtype = DSM_BF16 };
	struct dsm_generate_params gp = { .max_tokens = 256, .sampling = { .temperature = 0, .top_p = 1, .seed = 1 } };
	struct run r = { 0 };
	struct dsm_offload_setup os = { .cache_policy = -1 };
	int use_offload = 0, no_offload = 0;
	const char *record_path = NULL, *gpu_backend = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "m:p:f:n:t:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'm': dir = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': prompt_file = optarg; break;
		case OPT_CHAT: chat = 1; break;
		case OPT_NO_THINK: think = 0; break;
		case OPT_SYSTEM: system = optarg; break;
		case OPT_TOKENS: tokens_arg = optarg; break;
		case 'n': gp.max_tokens = parse_int("--max-tokens", optarg, 0, INT32_MAX); break;
		case OPT_TEMP: gp.sampling.temperature = (float)parse_double("--temperature", optarg); break;
		case OPT_TOP_P: gp.sampling.top_p = (float)parse_double("--top-p", optarg); break;
		case OPT_TOP_K: gp.sampling.top_k = (int)parse_int("--top-k", optarg, 0, INT32_MAX); break;
		case OPT_SEED: gp.sampling.seed = (uint64_t)parse_int("--seed", optarg, 0, INT64_MAX); break;
		case OPT_STOP:
			if (n_stop == MAX_STOP) {
				fprintf(stderr, "dsm-run: at most %d --stop strings\n", MAX_STOP);
				return 2;
			}
			stops[n_stop++] = optarg;
			break;
		case OPT_IGNORE_EOS: ignore_eos = 1; break;
		case 't': mo.threads = (int)parse_int("--threads", optarg, 1, 4096); break;
		case OPT_NO_BIND: mo.no_bind = 1; break;
		case OPT_PRECISION:
			if (dsm_precision_parse(optarg, &mo.precision) < 0) {
				fprintf(stderr, "dsm-run: --precision: %s\n", dsm_errmsg());
				return 2;
			}
			break;
		case OPT_CTX: so.ctx = parse_int("--ctx", optarg, 1, INT32_MAX); break;
		case OPT_BATCH: so.max_batch = parse_int("--batch", optarg, 1, 1 << 20); break;
		case OPT_KV:
			if (strcmp(optarg, "bf16") == 0)
				so.kv_dtype = DSM_BF16;
			else if (strcmp(optarg, "f32") == 0)
				so.kv_dtype = DSM_F32;
			else {
				fprintf(stderr, "dsm-run: --kv-cache: '%s': expected bf16 or f32\n", optarg);
				return 2;
			}
			break;
		case OPT_IDX_FP8: mo.indexer_fp8 = 1; break;
		case OPT_IDX_TOPK: mo.index_topk = (int)parse_int("--index-topk", optarg, 1, INT32_MAX); break;
		case OPT_MLA:
			if (strcmp(optarg, "auto") == 0)
				mo.mla_form = DSM_MLA_AUTO;
			else if (strcmp(optarg, "full") == 0)
				mo.mla_form = DSM_MLA_FULL;
			else if (strcmp(optarg, "absorbed") == 0)
				mo.mla_form = DSM_MLA_ABSORBED;
			else {
				fprintf(stderr, "dsm-run: --mla: '%s': expected auto, full or absorbed\n", optarg);
				return 2;
			}
			break;
		case OPT_JSON: r.json = 1; break;
		case OPT_DUMP_LOGITS: logits_path = optarg; break;
		case OPT_DUMP_ALL: r.dump_all = 1; break;
		case OPT_DUMP_ROUTING: routing_path = optarg; break;
		case OPT_DUMP_SELECTION: selection_path = optarg; break;
		case OPT_FORCE_ROUTING: force_route_path = optarg; break;
		case OPT_FORCE_SELECTION: force_select_path = optarg; break;
		case OPT_OFFLOAD: use_offload = 1; break;
		case OPT_NO_OFFLOAD: no_offload = 1; break;
		case OPT_PLAN: os.plan_path = optarg; use_offload = 1; break;
		case OPT_GPU_BACKEND: gpu_backend = optarg; use_offload = 1; break;
		case OPT_VRAM: os.vram_budget = parse_size_arg("--vram-budget", optarg); use_offload = 1; break;
		case OPT_DRAM: os.dram_budget = parse_size_arg("--dram-budget", optarg); use_offload = 1; break;
		case OPT_STREAM_EXPERTS: os.stream_all = 1; use_offload = 1; break;
		case OPT_CACHE_POLICY:
			if ((os.cache_policy = dsm_cache_policy_parse(optarg)) < 0) {
				fprintf(stderr, "dsm-run: --cache-policy: '%s': expected lru, lfu or pinned\n", optarg);
				return 2;
			}
			use_offload = 1;
			break;
		case OPT_CACHE_SIZE: os.cache_bytes = parse_size_arg("--cache-size", optarg); use_offload = 1; break;
		case OPT_CACHE_OFF: os.cache_off = 1; use_offload = 1; break;
		case OPT_HOTNESS: os.hotness_trace = optarg; use_offload = 1; break;
		case OPT_RECORD_ROUTING: record_path = optarg; break;
		case 'q': r.quiet = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (optind < argc || !dir || (!prompt && !prompt_file && !tokens_arg) ||
	    ((prompt || prompt_file) && tokens_arg) || (prompt && prompt_file)) {
		fprintf(stderr, "dsm-run: give -m DIR and one of -p PROMPT, -f FILE or --tokens IDS (see --help)\n");
		return 2;
	}

	int rc = 0, status = 1;
	char *file_text = NULL;
	struct dsm_model *m = NULL;
	struct dsm_session *s = NULL;
	struct token_ids ids = { 0 };
	struct text_buffer shell = { 0 };
	struct dsm_generate_result g = { 0 };
	struct dsm_offload *off = NULL;
	struct dsm_plan *plan = NULL;
	struct dsm_offload_report report;
	struct dsm_backend *gpu = NULL;
	if (prompt_file) {
		prompt = file_text = read_whole(prompt_file);
		if (!prompt) {
			fprintf(stderr, "dsm-run: %s: %s\n", prompt_file, strerror(errno));
			goto out;
		}
	}
	if ((rc = dsm_model_open(&m, dir, &mo)) < 0)
		goto fail;
	if (use_offload && no_offload) {
		rc = dsm_fail(DSM_EARG, "--no-offload contradicts the tiered-store options given");
		goto fail;
	}
	uint64_t total, usable;
	int fit = weights_fit(m, &total, &usable);
	if (!use_offload && !no_offload && m->cfg.n_routed_experts > 0 && !fit) {
		fprintf(stderr, "dsm-run: the weights (%.3g GB) do not fit in the memory available (%.3g GB after a "
			"margin): routed experts go through the tiered store, with a plan from the budgets "
			"(--no-offload maps everything instead)\n", (double)total / 1e9, (double)usable / 1e9);
		use_offload = 1;
	}
	/* Weights known to fit are read in now, not by page faults during the first tokens. */
	if (!use_offload && fit && total &&
	    (rc = dsm_weight_map_populate(m->map, !r.quiet && isatty(2) ? read_progress : NULL, NULL)) < 0)
		goto fail;
	if (use_offload) {
		os.cpu = m->be;
		if (gpu_backend) {
			/* The device computes what the cpu would, with the same precision and threads. */
			struct dsm_backend_options bo = { .precision = mo.precision, .threads = mo.threads,
							  .device_bytes = (size_t)os.vram_budget };
			if ((rc = dsm_backend_create(&gpu, gpu_backend, &bo)) < 0) {
				dsm_fail_prefix(rc, "--gpu-backend");
				goto fail;
			}
			if (!gpu->alloc) {
				rc = dsm_fail(DSM_EARG, "--gpu-backend %s: not a device backend (emu, or cuda where built)",
					      gpu_backend);
				goto fail;
			}
			os.gpu = gpu;
		} else if (os.vram_budget) {
			fprintf(stderr, "dsm-run: warning: --vram-budget without --gpu-backend: no expert goes to a GPU\n");
		}
		os.max_tokens = so.max_batch;
		if ((rc = dsm_offload_setup(&off, &plan, m->store_model, &os)) < 0)
			goto fail;
		if (dsm_offload_warnings(off)[0])
			fprintf(stderr, "dsm-run: warning: %s", dsm_offload_warnings(off));
		for (int L = m->cfg.first_k_dense_replace; L < m->cfg.num_hidden_layers; L++)
			if (m->layers[L].ffn.moe)
				dsm_offload_set_router(off, L, &m->layers[L].ffn.gate, m->layers[L].ffn.gate_bias);
		m->offload = off;
	}
	if (record_path && (rc = dsm_trace_create(&r.trace, record_path, m->cfg.num_hidden_layers,
						  m->cfg.first_k_dense_replace, m->cfg.n_routed_experts,
						  m->cfg.num_experts_per_tok, m->cfg.model_type)) < 0)
		goto fail;
	char tok_path[4096];
	snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir);
	if (access(tok_path, R_OK) == 0 && (rc = tokenizer_load_dir(&r.tok, dir)) < 0)
		goto fail;
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
	if (r.tok)
		token_stream_init(&r.ts, r.tok, TOKENIZER_SKIP_SPECIAL);
	r.vocab = m->cfg.vocab_size;
	if (logits_path) {
		if ((rc = dsm_npy_open(&r.npy, logits_path, r.vocab)) < 0)
			goto fail;
		r.dump_logits = 1;
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
	so.hooks = (struct dsm_session_hooks){ .user = &r, .on_route = on_route, .on_select = on_select,
					       .force_route = force_route_path ? force_route : NULL,
					       .force_select = force_select_path ? force_select : NULL };
	if ((rc = dsm_session_init(&s, m, &so)) < 0)
		goto fail;
	gp.eos_id = ignore_eos ? -1 : m->cfg.eos_token_id;
	gp.stop = stops;
	gp.n_stop = n_stop;
	gp.prompt_logits = logits_path != NULL;
	struct dsm_generate_io io = { .user = &r, .token_text = token_text, .on_text = on_text,
				      .on_logits = on_logits, .on_token = on_token };
	rc = dsm_generate(s, ids.ids, (int64_t)ids.n, &gp, &io, &g);
	if (rc < 0)
		goto fail;
	if (r.tok && g.reason != DSM_STOP_STRING) {
		r.piece.len = 0;
		if (token_stream_finish(&r.ts, &r.piece) == 0 && r.piece.len) {
			dsm_text_append(&g.text, r.piece.data, r.piece.len);
			on_text(&r, r.piece.data, r.piece.len);
		}
	}
	if (r.dump_logits && (rc = dsm_npy_close(&r.npy)) < 0)
		goto fail;
	if (r.trace) {
		rc = dsm_trace_close(r.trace);
		r.trace = NULL;
		if (rc < 0)
			goto fail;
	}
	if (off) {
		dsm_offload_report(off, (uint64_t)(g.n_prompt + (g.n > 1 ? g.n - 1 : 0)),
				   g.prefill_seconds + g.decode_seconds, &report);
		r.offload_report = &report;
	}
	if (r.json) {
		print_json(tokens_arg ? NULL : prompt, &ids, &g, &r, m, s);
	} else if (g.text.len && g.text.data[g.text.len - 1] != '\n') {
		putchar('\n');
	}
	fflush(stdout);
	if (!r.quiet) {
		int64_t nd = g.n > 1 ? g.n - 1 : 0;
		int bound, n_threads = dsm_model_threads(m, &bound);
		fprintf(stderr, "dsm-run: prefill %lld tokens in %.3f s (%.2f tok/s), decode %lld tokens in %.3f s "
			"(%.2f tok/s), %s, %d threads%s, stop: %s\n", (long long)g.n_prompt, g.prefill_seconds,
			g.prefill_seconds > 0 ? (double)g.n_prompt / g.prefill_seconds : 0.0, (long long)nd,
			g.decode_seconds, g.decode_seconds > 0 ? (double)nd / g.decode_seconds : 0.0,
			dsm_precision_name(mo.precision), n_threads, bound ? " (bound to cores)" : "",
			dsm_stop_reason_name(g.reason));
		if (g.reason == DSM_STOP_CONTEXT)
			fprintf(stderr, "dsm-run: the context of %lld tokens is full (raise --ctx)\n",
				(long long)dsm_session_ctx(s));
		if (off) {
			char line[512];
			dsm_offload_report_text(&report, line, sizeof line);
			fprintf(stderr, "dsm-run: %s\n", line);
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
	dsm_generate_result_free(&g);
	dsm_session_free(s);
	dsm_trace_close(r.trace);
	dsm_offload_close(off);
	dsm_backend_destroy(gpu);
	dsm_plan_free(plan);
	dsm_model_close(m);
	tokenizer_free(r.tok);
	text_buffer_free(&r.piece);
	text_buffer_free(&shell);
	token_ids_free(&ids);
	free(file_text);
	return status;
}
