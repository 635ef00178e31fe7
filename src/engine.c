#include "engine.h"

#include "error.h"
#include "expert_store.h"
#include "generate.h"
#include "model_internal.h"
#include "size_parse.h"
#include "tokenizer.h"
#include "trace.h"

#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct dsm_engine {
	struct dsm_engine_options o;
	struct dsm_model *m;
	struct tokenizer *tok;
	struct dsm_backend *gpu[DSM_MAX_GPUS]; /* gpu:0, gpu:1, ... */
	struct dsm_offload *off;
	struct dsm_plan *plan;
	struct dsm_session *s;
	struct dsm_trace_writer *trace;
	struct dsm_session_hooks user_hooks;   /* the caller's, called from the engine's own */
	struct dsm_memory_limit mem;       /* what dsm may fill, and which limit said so */
	char notes[2048];
	struct dsm_gemv_tune_result tune, head_tune; /* what the decode kernels' measurements at open found */
	struct dsm_gemv_tune_result gemm_tune;       /* the batched path's */
};

void dsm_engine_options_default(struct dsm_engine_options *o)
{
	memset(o, 0, sizeof *o);
	o->model.precision = dsm_precision_default();
	o->session = (struct dsm_session_options){ .ctx = 4096, .max_batch = 128, .max_seqs = 1, .kv_dtype = DSM_BF16 };
	o->offload = -1;
	o->tiers.cache_policy = -1;
}

static void note(struct dsm_engine *e, const char *fmt, ...)
{
	size_t used = strlen(e->notes);
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->notes + used, sizeof e->notes - used, fmt, ap);
	va_end(ap);
	used = strlen(e->notes);
	if (used && e->notes[used - 1] != '\n' && used + 1 < sizeof e->notes)
		strcpy(e->notes + used, "\n");
}

/* What a kernel's measurement at open chose, or why it kept its default. */
static void note_tune(struct dsm_engine *e, const char *kernel, const struct dsm_gemv_tune_result *t)
{
	if (t->rounds)
		note(e, "%s kernel: %s; measured in %.0f ms", kernel, t->why, t->seconds * 1e3);
	else if (t->why[0])
		note(e, "%s kernel: the default walk, %s", kernel, t->why);
}

/* 0 when the checkpoint's weights do not fit in the memory dsm may use (the tiered store then keeps what
 * fits and streams the rest, where mapping everything would page the shards in and out), 1 when they fit
 * or the sizes are unknown. *total: the weights' size (0 when unknown). */
static int weights_fit(const struct dsm_engine *e, uint64_t *total)
{
	struct dsm_plan_sizes sz;
	*total = 0;
	if (e->mem.source == DSM_MEMORY_UNKNOWN)
		return 1;
	dsm_plan_sizes(e->m->store_model, &sz);
	const struct dsm_config *c = &e->m->cfg;
	*total = sz.non_expert_total + (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace) *
				      (uint64_t)c->n_routed_experts * sz.expert_bytes;
	return *total <= e->mem.usable;
}

/* Greedy decoding's screen of the head (backend.h, matmul_top), where the head's backend offers one and the
 * memory has room for it beside the weights; else the whole head is multiplied, as it is for sampling. */
static void screen_head(struct dsm_engine *e)
{
	struct dsm_backend *be = e->m->fwd.stage_be[e->m->fwd.n_stages - 1];
	const struct dsm_mat *w = &e->m->fwd.head;
	uint64_t bytes = (uint64_t)w->rows * (uint64_t)w->cols, total;
	if (!be->top_prepare)
		return;
	weights_fit(e, &total);
	if (e->mem.source != DSM_MEMORY_UNKNOWN && total + bytes > e->mem.usable) {
		note(e, "head: multiplied whole, no room for its screen (%.3g GB)", (double)bytes / 1e9);
		return;
	}
	double t = dsm_now();
	if (be->top_prepare(be, w) < 0) {
		note(e, "head: multiplied whole: %s", dsm_errmsg());
		return;
	}
	e->m->head_screen_bytes = bytes + 12 * (uint64_t)w->rows; /* the codes, each row's scale and bounds */
	note(e, "head: greedy decoding reads a copy at one byte a weight (%.3g GB, made in %.0f ms), then only the rows "
	     "that can hold the largest logit (--full-head: the whole head)", (double)bytes / 1e9, (dsm_now() - t) * 1e3);
}

/* The routing trace sees every token's experts, then the caller's hook. */
static void route_hook(void *user, int seq, int layer, int64_t pos, const int32_t *idx, const float *w, int k)
{
	struct dsm_engine *e = user;
	if (e->trace)
		dsm_trace_add_token(e->trace, layer, (uint32_t)pos, idx); /* errors come back at finish */
	if (e->user_hooks.on_route)
		e->user_hooks.on_route(e->user_hooks.user, seq, layer, pos, idx, w, k);
}

static void select_hook(void *user, int seq, int layer, int64_t pos, const int32_t *sel, int64_t n)
{
	struct dsm_engine *e = user;
	e->user_hooks.on_select(e->user_hooks.user, seq, layer, pos, sel, n);
}

static int force_route_hook(void *user, int seq, int layer, int64_t pos, int32_t *idx, int k)
{
	struct dsm_engine *e = user;
	return e->user_hooks.force_route(e->user_hooks.user, seq, layer, pos, idx, k);
}

static int force_select_hook(void *user, int seq, int layer, int64_t pos, int32_t *sel, int64_t n)
{
	struct dsm_engine *e = user;
	return e->user_hooks.force_select(e->user_hooks.user, seq, layer, pos, sel, n);
}

/* "0,1,3" -> devices {0, 1, 3}: distinct indices, at most DSM_MAX_GPUS. */
static int parse_gpus(const char *s, int *devices, int *n)
{
	*n = 0;
	for (const char *p = s;;) {
		char *end;
		errno = 0;
		long d = strtol(p, &end, 10);
		if (end == p || errno || d < 0 || d > 1024 || (*end && *end != ','))
			return dsm_fail(DSM_EARG, "--gpus '%s': expected device indices separated by commas (e.g. 0,1)", s);
		for (int i = 0; i < *n; i++)
			if (devices[i] == d)
				return dsm_fail(DSM_EARG, "--gpus '%s': device %ld twice", s, d);
		if (*n == DSM_MAX_GPUS)
			return dsm_fail(DSM_EARG, "--gpus '%s': more than %d devices", s, DSM_MAX_GPUS);
		devices[(*n)++] = (int)d;
		if (!*end)
			return 0;
		p = end + 1;
	}
}

/* Puts the forward pass outside the experts on the n GPUs, each running the layers whose experts a computed plan
 * gives it (dsm_plan_layer_gpu), and opens the session there (each GPU's part of the KV cache and its buffers),
 * refused with the sizes when they do not fit. *reserved: the most device memory they took on one GPU, out of a
 * budget for experts. */
static int forward_to_gpus(struct dsm_engine *e, int n, const struct dsm_session_options *so, uint64_t *reserved)
{
	struct dsm_model *m = e->m;
	const struct dsm_config *c = &m->cfg;
	struct dsm_backend *dev[DSM_MAX_GPUS];
	int end[DSM_MAX_GPUS], gpu[DSM_MAX_GPUS], stages = 0, rc;
	size_t fr[DSM_MAX_GPUS], tot;
	for (int L = 0; L < c->num_hidden_layers; L++) {
		int g = dsm_plan_layer_gpu(L, c->first_k_dense_replace, c->num_hidden_layers, n);
		if (!stages || gpu[stages - 1] != g) {
			gpu[stages] = g;
			dev[stages++] = e->gpu[g];
		}
		end[stages - 1] = L + 1;
	}
	*reserved = 0;
	for (int k = 0; k < stages; k++) {
		int l0 = k ? end[k - 1] : 0;
		uint64_t w = dsm_model_device_bytes(m, l0, end[k]), kv, buf;
		dsm_session_device_bytes(m, dev[k], l0, end[k], so, &kv, &buf);
		if (!dev[k]->mem_info || dev[k]->mem_info(dev[k], &fr[k], &tot) < 0)
			fr[k] = SIZE_MAX;
		if (w + kv + buf > fr[k])
			return dsm_fail(DSM_ENOMEM, "gpu:%d has %.3f GB free; the forward pass outside the experts of layers "
					"%d-%d needs %.3f GB there: weights %.3f GB, KV cache %.3f GB (--ctx %lld, --max-seqs %d), "
					"step buffers %.3f GB (--batch %lld). Lower those, add GPUs (--gpus), or keep that part on "
					"the CPU with --cpu-attention", gpu[k], (double)fr[k] / 1e9, l0, end[k] - 1,
					(double)(w + kv + buf) / 1e9, (double)w / 1e9, (double)kv / 1e9, (long long)so->ctx,
					so->max_seqs, (double)buf / 1e9, (long long)so->max_batch);
		if (w + kv + buf > *reserved)
			*reserved = w + kv + buf;
		char layers[48];
		if (l0 == end[k] - 1)
			snprintf(layers, sizeof layers, "layer %d but its", l0);
		else
			snprintf(layers, sizeof layers, "layers %d-%d but their", l0, end[k] - 1);
		note(e, "gpu:%d runs %s experts (attention, dense layers, routers)%s: %.3g GB of weights, "
		     "%.3g GB of KV cache, %.3g GB of buffers", gpu[k], layers,
		     stages == 1 ? ", the embeddings and the head" : k == 0 ? ", the embeddings" :
		     k == stages - 1 ? ", the head" : "", (double)w / 1e9, (double)kv / 1e9, (double)buf / 1e9);
	}
	if ((rc = dsm_model_to_devices(m, dev, end, stages)) < 0 || (rc = dsm_session_init(&e->s, m, so)) < 0)
		return dsm_fail_prefix(rc, "the forward pass on the gpu%s", stages > 1 ? "s" : "");
	for (int k = 0; k < stages; k++) { /* what was counted, allocation overheads too */
		size_t after;
		if (fr[k] != SIZE_MAX && dev[k]->mem_info(dev[k], &after, &tot) == 0 && fr[k] - after > *reserved)
			*reserved = fr[k] - after;
	}
	return 0;
}

static int open_tiers(struct dsm_engine *e, const struct dsm_session_options *so)
{
	struct dsm_model *m = e->m;
	struct dsm_offload_setup os = e->o.tiers;
	const struct dsm_engine_options *o = &e->o;
	int rc;
	os.cpu = m->be;
	if (o->gpus && !o->gpu_backend)
		return dsm_fail(DSM_EARG, "--gpus needs --gpu-backend (cuda, or emu)");
	if (o->gpu_backend) {
		/* gpu:N is device devices[N]. Each computes what the cpu would, with the same precision and threads. */
		int devices[DSM_MAX_GPUS], n = 0;
		if ((rc = parse_gpus(o->gpus ? o->gpus : "0", devices, &n)) < 0)
			return rc;
		size_t least_free = SIZE_MAX, total = 0;
		for (int i = 0; i < n; i++) {
			struct dsm_backend_options bo = { .precision = o->model.precision, .threads = o->model.threads,
							  .device_bytes = (size_t)os.vram_budget, .device = devices[i] };
			if ((rc = dsm_backend_create(&e->gpu[i], o->gpu_backend, &bo)) < 0)
				return dsm_fail_prefix(rc, "--gpu-backend %s, device %d", o->gpu_backend, devices[i]);
			struct dsm_backend *g = e->gpu[i];
			if (!g->alloc)
				return dsm_fail(DSM_EARG, "--gpu-backend %s: not a device backend (emu, or cuda where built)",
						o->gpu_backend);
			size_t fr, tot;
			if (g->mem_info && g->mem_info(g, &fr, &tot) == 0 && fr < least_free) {
				least_free = fr;
				total = tot;
			}
			os.gpu[i] = g;
		}
		uint64_t reserved = 0;
		if (!o->cpu_attention) {
			if ((rc = forward_to_gpus(e, n, so, &reserved)) < 0)
				return rc;
			if (os.vram_budget && os.vram_budget <= reserved)
				return dsm_fail(DSM_EARG, "--vram-budget %.3f GB a GPU: the forward pass outside the experts takes "
						"%.3f GB of it%s (--cpu-attention keeps that part on the CPU)",
						(double)os.vram_budget / 1e9, (double)reserved / 1e9, n > 1 ? " on one GPU" : "");
			/* what the experts may have: the budget less that part, or what is left free on the devices */
			if (least_free != SIZE_MAX)
				least_free = least_free > reserved ? least_free - reserved : 0;
			if (os.vram_budget)
				os.vram_budget -= reserved;
			os.forward_on_gpu = 1;
		}
		if (!os.vram_budget && !os.plan_path && least_free != SIZE_MAX) {
			os.vram_budget = least_free;
			note(e, "--vram-budget: %.3g GB a GPU, free on the %s device%s (of %.3g GB it may use)",
			     (double)least_free / 1e9, o->gpu_backend, n > 1 ? " with the least" : "", (double)total / 1e9);
		}
	} else if (os.vram_budget) {
		note(e, "warning: --vram-budget without --gpu-backend: no expert goes to a GPU");
	}
	os.max_tokens = o->session.max_batch;
	if ((rc = dsm_offload_setup(&e->off, &e->plan, m->store_model, &os)) < 0)
		return rc;
	if (dsm_offload_warnings(e->off)[0])
		note(e, "warning: %s", dsm_offload_warnings(e->off));
	/* Look-ahead covers a whole decode step: one token of every sequence. */
	dsm_offload_set_lookahead(e->off, o->session.max_seqs > 1 ? o->session.max_seqs : 1);
	return dsm_model_set_experts(m, e->off);
}

/* Whether an option of the tiered store was given (any of them turns it on). */
static int tiers_asked(const struct dsm_engine_options *o)
{
	const struct dsm_offload_setup *t = &o->tiers;
	return o->gpu_backend || o->gpus || t->plan_path || t->vram_budget || t->dram_budget || t->stream_all ||
	       t->cache_policy >= 0 || t->cache_bytes || t->cache_off || t->hotness_trace;
}

int dsm_engine_open(struct dsm_engine **out, const char *dir, const struct dsm_engine_options *opt)
{
	*out = NULL;
	struct dsm_engine *e = calloc(1, sizeof *e);
	if (!e)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	if (opt)
		e->o = *opt;
	else
		dsm_engine_options_default(&e->o);
	struct dsm_engine_options *o = &e->o;
	int rc, tiered = o->offload;
	if (tiers_asked(o)) {
		if (o->offload == 0) {
			rc = dsm_fail(DSM_EARG, "--no-offload contradicts the tiered-store options given");
			goto err;
		}
		tiered = 1;
	}
	if ((rc = dsm_model_open(&e->m, dir, &o->model)) < 0)
		goto err;
	struct dsm_model *m = e->m;
	dsm_memory_limit(&e->mem);
	uint64_t total;
	int fit = weights_fit(e, &total);
	if (tiered < 0) {
		tiered = m->cfg.n_routed_experts > 0 && !fit;
		if (tiered)
			note(e, "the weights (%.3g GB) do not fit in the memory available (%.3g GB after a margin, %s): "
			     "routed experts go through the tiered store, with a plan from the budgets (--no-offload maps "
			     "everything instead)", (double)total / 1e9, (double)e->mem.usable / 1e9, e->mem.name);
	}
	/* Weights known to fit are read in now, not by page faults during the first tokens: into huge pages when
	 * the whole files fit too (docs/memory.md). */
	if (!tiered && fit && total && !o->no_populate) {
		uint64_t mapped, copied, in_huge;
		dsm_weight_map_usage(m->map, &mapped, &copied, &in_huge);
		/* unlike the page cache's, those pages stay: leave a tenth of the memory for the KV cache and the rest */
		int huge = !o->no_huge_pages && e->mem.source != DSM_MEMORY_UNKNOWN &&
			   mapped + copied <= e->mem.usable / 10 * 9;
		if ((rc = dsm_weight_map_populate(m->map, huge, o->progress, o->progress_arg)) < 0)
			goto err;
		dsm_weight_map_usage(m->map, &mapped, &copied, &in_huge);
		if (in_huge)
			note(e, "the weights' files (%.3g GB) were read into 2 MiB pages of their own (--no-huge-pages keeps "
			     "the page cache's)", (double)in_huge / 1e9);
		/* With the weights in memory, the decode kernels' memory walks are chosen for this host
		 * (docs/kernels.md). */
		if ((rc = dsm_model_tune_kernels(m, &e->tune, &e->head_tune)) < 0)
			goto err;
		note_tune(e, "decode", &e->tune);
		note_tune(e, "head", &e->head_tune);
		if (!o->full_head)
			screen_head(e);
	}
	/* The batched path's arithmetic too: which of vdpbf16ps and F32 FMA multiplies faster depends on the CPU. */
	if (dsm_isa_available(DSM_ISA_AVX512BF16) && o->model.precision != DSM_PRECISION_F32) {
		if ((rc = dsm_fp8_gemm_tune(&e->gemm_tune)) < 0)
			goto err;
		note_tune(e, "batched", &e->gemm_tune);
	}
	struct dsm_session_options so = o->session;
	if (so.max_seqs > 0 && so.max_batch > 0 && so.max_batch < so.max_seqs) {
		note(e, "--batch %lld raised to --max-seqs %d: a step decodes every sequence at once",
		     (long long)so.max_batch, so.max_seqs);
		so.max_batch = so.max_seqs;
	}
	e->user_hooks = so.hooks;
	so.hooks = (struct dsm_session_hooks){ .user = e, .on_route = route_hook,
		.on_select = e->user_hooks.on_select ? select_hook : NULL,
		.force_route = e->user_hooks.force_route ? force_route_hook : NULL,
		.force_select = e->user_hooks.force_select ? force_select_hook : NULL };
	if (tiered && (rc = open_tiers(e, &so)) < 0)
		goto err;
	if (o->record_routing &&
	    (rc = dsm_trace_create(&e->trace, o->record_routing, m->cfg.num_hidden_layers, m->cfg.first_k_dense_replace,
				   m->cfg.n_routed_experts, m->cfg.num_experts_per_tok, m->cfg.model_type)) < 0)
		goto err;
	char tok_path[4096];
	snprintf(tok_path, sizeof tok_path, "%s/tokenizer.json", dir);
	if (access(tok_path, R_OK) == 0 && (rc = tokenizer_load_dir(&e->tok, dir)) < 0)
		goto err;
	if (!e->s && (rc = dsm_session_init(&e->s, m, &so)) < 0) /* opened already when the gpus hold it */
		goto err;
	*out = e;
	return 0;
err:
	dsm_engine_close(e);
	return rc;
}

int dsm_engine_finish(struct dsm_engine *e)
{
	int rc = dsm_trace_close(e->trace);
	e->trace = NULL;
	return rc;
}

void dsm_engine_close(struct dsm_engine *e)
{
	if (!e)
		return;
	dsm_session_free(e->s);
	dsm_trace_close(e->trace);
	if (e->m)
		dsm_model_set_experts(e->m, NULL);
	dsm_offload_close(e->off);
	if (e->m)
		dsm_model_to_devices(e->m, NULL, NULL, 0); /* before the devices go */
	for (int i = 0; i < DSM_MAX_GPUS; i++)
		dsm_backend_destroy(e->gpu[i]);
	dsm_plan_free(e->plan);
	dsm_model_close(e->m);
	tokenizer_free(e->tok);
	free(e);
}

struct dsm_model *dsm_engine_model(const struct dsm_engine *e)
{
	return e->m;
}

struct dsm_session *dsm_engine_session(const struct dsm_engine *e)
{
	return e->s;
}

struct tokenizer *dsm_engine_tokenizer(const struct dsm_engine *e)
{
	return e->tok;
}

const struct dsm_plan *dsm_engine_plan(const struct dsm_engine *e)
{
	return e->plan;
}

const char *dsm_engine_notes(const struct dsm_engine *e)
{
	return e->notes;
}

void dsm_engine_report(const struct dsm_engine *e, uint64_t n_tokens, double seconds, struct dsm_engine_report *r)
{
	memset(r, 0, sizeof *r);
	r->precision = e->o.model.precision;
	r->threads = dsm_model_threads(e->m, &r->bound);
	dsm_model_memory(e->m, &r->weights_mapped_bytes, &r->weights_copied_bytes, &r->weights_huge_bytes);
	dsm_session_memory(e->s, &r->kv_pool_bytes, &r->buffers_bytes);
	uint64_t block_bytes;
	dsm_session_kv_blocks(e->s, &r->kv_blocks, &r->kv_blocks_free, &block_bytes);
	r->memory = e->mem;
	r->tune = e->tune;
	r->head_tune = e->head_tune;
	r->gemm_tune = e->gemm_tune;
	r->head_screen_bytes = e->m->head_screen_bytes;
	if (e->off) {
		r->tiered = 1;
		dsm_offload_report(e->off, n_tokens, seconds, &r->offload);
	}
}

int dsm_token_text(struct token_stream *ts, int32_t id, struct text_buffer *piece, struct dsm_text *out)
{
	if ((size_t)id >= tokenizer_vocab_size(ts->tok) || !tokenizer_token_string(ts->tok, id, NULL))
		return 0;
	piece->len = 0;
	int rc = token_stream_push(ts, id, piece);
	if (rc < 0)
		return rc;
	return piece->len ? dsm_text_append(out, piece->data, piece->len) : 0;
}

/* ---- Flags ---- */

enum {
	F_THREADS = DSM_ENGINE_FLAG_BASE, F_NO_BIND, F_PRECISION, F_CTX, F_BATCH, F_MAX_SEQS, F_KV_POOL, F_KV, F_IDX_FP8,
	F_IDX_TOPK, F_MLA, F_OFFLOAD, F_NO_OFFLOAD, F_PLAN, F_GPU_BACKEND, F_VRAM, F_DRAM, F_STREAM_EXPERTS,
	F_CACHE_POLICY, F_CACHE_SIZE, F_CACHE_OFF, F_HOTNESS, F_RECORD_ROUTING, F_GPU_UPLOAD, F_GPUS, F_CPU_ATTN,
	F_NO_HUGE, F_FULL_HEAD,
};

const struct option dsm_engine_flags[] = {
	{ "threads", required_argument, NULL, F_THREADS }, { "no-bind", no_argument, NULL, F_NO_BIND },
	{ "precision", required_argument, NULL, F_PRECISION }, { "ctx", required_argument, NULL, F_CTX },
	{ "batch", required_argument, NULL, F_BATCH }, { "max-seqs", required_argument, NULL, F_MAX_SEQS },
	{ "kv-pool", required_argument, NULL, F_KV_POOL }, { "kv-cache", required_argument, NULL, F_KV },
	{ "indexer-fp8", no_argument, NULL, F_IDX_FP8 }, { "index-topk", required_argument, NULL, F_IDX_TOPK },
	{ "mla", required_argument, NULL, F_MLA }, { "offload", no_argument, NULL, F_OFFLOAD },
	{ "no-offload", no_argument, NULL, F_NO_OFFLOAD }, { "plan", required_argument, NULL, F_PLAN },
	{ "gpu-backend", required_argument, NULL, F_GPU_BACKEND }, { "vram-budget", required_argument, NULL, F_VRAM },
	{ "dram-budget", required_argument, NULL, F_DRAM }, { "stream-experts", no_argument, NULL, F_STREAM_EXPERTS },
	{ "cache-policy", required_argument, NULL, F_CACHE_POLICY }, { "cache-size", required_argument, NULL, F_CACHE_SIZE },
	{ "cache-off", no_argument, NULL, F_CACHE_OFF }, { "hotness-trace", required_argument, NULL, F_HOTNESS },
	{ "record-routing", required_argument, NULL, F_RECORD_ROUTING },
	{ "gpu-upload-tokens", required_argument, NULL, F_GPU_UPLOAD }, { "gpus", required_argument, NULL, F_GPUS },
	{ "cpu-attention", no_argument, NULL, F_CPU_ATTN }, { "no-huge-pages", no_argument, NULL, F_NO_HUGE },
	{ "full-head", no_argument, NULL, F_FULL_HEAD }, { NULL, 0, NULL, 0 },
};

static int int_arg(const char *flag, const char *s, int64_t lo, int64_t hi, int64_t *v)
{
	char *end;
	errno = 0;
	long long x = strtoll(s, &end, 10);
	if (end == s || *end || errno || x < lo || x > hi)
		return dsm_fail(DSM_EARG, "--%s: '%s' is not an integer in [%lld, %lld]", flag, s, (long long)lo,
				(long long)hi);
	*v = x;
	return 0;
}

static int size_arg(const char *flag, const char *s, uint64_t *v)
{
	if (parse_size(s, v) < 0)
		return dsm_fail(DSM_EARG, "--%s: '%s' is not a size (e.g. 24G, 512M)", flag, s);
	return 0;
}

int dsm_engine_flag(struct dsm_engine_options *o, int code, const char *arg)
{
	struct dsm_offload_setup *t = &o->tiers;
	int64_t v = 0;
	int rc = 0;
	switch (code) {
	case 't':
	case F_THREADS:
		if ((rc = int_arg("threads", arg, 1, 4096, &v)) == 0)
			o->model.threads = (int)v;
		break;
	case F_NO_BIND: o->model.no_bind = 1; break;
	case F_PRECISION:
		if (dsm_precision_parse(arg, &o->model.precision) < 0)
			rc = dsm_fail_prefix(DSM_EARG, "--precision");
		break;
	case F_CTX:
		if ((rc = int_arg("ctx", arg, 1, INT32_MAX, &v)) == 0)
			o->session.ctx = v;
		break;
	case F_BATCH:
		if ((rc = int_arg("batch", arg, 1, 1 << 20, &v)) == 0)
			o->session.max_batch = v;
		break;
	case F_MAX_SEQS:
		if ((rc = int_arg("max-seqs", arg, 1, 4096, &v)) == 0)
			o->session.max_seqs = (int)v;
		break;
	case F_KV_POOL: rc = size_arg("kv-pool", arg, &o->session.kv_pool_bytes); break;
	case F_KV:
		if (strcmp(arg, "bf16") == 0)
			o->session.kv_dtype = DSM_BF16;
		else if (strcmp(arg, "f32") == 0)
			o->session.kv_dtype = DSM_F32;
		else
			rc = dsm_fail(DSM_EARG, "--kv-cache: '%s': expected bf16 or f32", arg);
		break;
	case F_IDX_FP8: o->model.indexer_fp8 = 1; break;
	case F_IDX_TOPK:
		if ((rc = int_arg("index-topk", arg, 1, INT32_MAX, &v)) == 0)
			o->model.index_topk = (int)v;
		break;
	case F_MLA:
		if (strcmp(arg, "auto") == 0)
			o->model.mla_form = DSM_MLA_AUTO;
		else if (strcmp(arg, "full") == 0)
			o->model.mla_form = DSM_MLA_FULL;
		else if (strcmp(arg, "absorbed") == 0)
			o->model.mla_form = DSM_MLA_ABSORBED;
		else
			rc = dsm_fail(DSM_EARG, "--mla: '%s': expected auto, full or absorbed", arg);
		break;
	case F_OFFLOAD: o->offload = 1; break;
	case F_NO_OFFLOAD: o->offload = 0; break;
	case F_PLAN: t->plan_path = arg; break;
	case F_GPU_BACKEND: o->gpu_backend = arg; break;
	case F_GPUS: o->gpus = arg; break;
	case F_CPU_ATTN: o->cpu_attention = 1; break;
	case F_NO_HUGE: o->no_huge_pages = 1; break;
	case F_FULL_HEAD: o->full_head = 1; break;
	case F_VRAM: rc = size_arg("vram-budget", arg, &t->vram_budget); break;
	case F_DRAM: rc = size_arg("dram-budget", arg, &t->dram_budget); break;
	case F_STREAM_EXPERTS: t->stream_all = 1; break;
	case F_CACHE_POLICY:
		if ((t->cache_policy = dsm_cache_policy_parse(arg)) < 0)
			rc = dsm_fail(DSM_EARG, "--cache-policy: '%s': expected lru, lfu or pinned", arg);
		break;
	case F_CACHE_SIZE: rc = size_arg("cache-size", arg, &t->cache_bytes); break;
	case F_CACHE_OFF: t->cache_off = 1; break;
	case F_HOTNESS: t->hotness_trace = arg; break;
	case F_RECORD_ROUTING: o->record_routing = arg; break;
	case F_GPU_UPLOAD: rc = int_arg("gpu-upload-tokens", arg, -1, INT32_MAX, &t->gpu_upload_tokens); break;
	default: return 0;
	}
	return rc < 0 ? rc : 1;
}

void dsm_engine_flags_help(FILE *f)
{
	fputs("engine:\n"
	      "  -t, --threads N        threads, at most one per physical core, each bound to its core (default: all\n"
	      "                         physical cores)\n"
	      "  --no-bind              do not bind threads to cores (several dsm processes sharing a machine)\n"
	      "  --precision P          matmul precision: bf16 (default where the CPU has AVX-512 BF16: the fast\n"
	      "                         FP8 kernels) or f32 (exact weights and F32 activations: the reference path)\n"
	      "  --ctx N                context length of one sequence in tokens (default 4096)\n"
	      "  --batch N              tokens of one forward step, all sequences together (default 128)\n"
	      "  --max-seqs N           sequences decoding at once (default 1, or what the program needs)\n"
	      "  --kv-pool SIZE         memory of the KV cache pool shared by the sequences (e.g. 2G; default: room for\n"
	      "                         --max-seqs full contexts)\n"
	      "  --kv-cache T           KV cache type: bf16 (default) or f32\n"
	      "  --indexer-fp8          round the indexer's q/k to FP8 as the public reference code does\n"
	      "  --index-topk N         override the config's index_topk (tests)\n"
	      "  --mla FORM             auto (default), full or absorbed attention (tests)\n"
	      "  --no-huge-pages        weights that fit in memory stay in the page cache's pages (reclaimable, shared\n"
	      "                         with other processes) instead of being read into 2 MiB pages of their own\n"
	      "  --full-head            greedy decoding multiplies the whole BF16 head for every token (default, when\n"
	      "                         the weights fit in memory: a copy at one byte a weight bounds every logit, and\n"
	      "                         only the rows that can be the largest are multiplied; the same tokens)\n"
	      "routed experts across tiers (docs/offload.md, docs/plan.md; any of these turns the tiered store on, and\n"
	      "it turns itself on when the weights do not fit in the memory dsm may use):\n"
	      "  --offload              the tiered store with a plan computed from the budgets below\n"
	      "  --no-offload           map every weight from the checkpoint even when it does not fit in memory\n"
	      "  --plan FILE            placement plan (JSON, docs/plan.md)\n"
	      "  --gpu-backend NAME     the GPU: cuda (where built) or emu (the cpu behind a device-memory budget of\n"
	      "                         --vram-budget, default 1G; for tests). The GPUs run the attention, the dense\n"
	      "                         layers, the routers, the embeddings and the head, and hold the KV cache; they\n"
	      "                         compute the experts that the plan puts on them (and the shared experts, on\n"
	      "                         gpu:0) while the CPU computes the others. Without it a plan naming gpu:N\n"
	      "                         experts is refused\n"
	      "  --cpu-attention        with --gpu-backend, keep all but the GPU's experts on the CPU (a GPU too small\n"
	      "                         for the attention's weights and the KV cache)\n"
	      "  --gpus LIST            the devices of gpu:0, gpu:1, ... (e.g. 0,1; default 0): the MoE layers are\n"
	      "                         split into consecutive ranges, one a GPU: each GPU runs its layers' attention\n"
	      "                         and holds their KV cache, and a computed plan fills it with its layers'\n"
	      "                         hottest experts; --vram-budget is then each GPU's\n"
	      "  --gpu-upload-tokens N  a DRAM expert with N or more tokens in one step is copied to the GPU and\n"
	      "                         computed there (default 0: the break-even measured at start; -1: never)\n"
	      "  --vram-budget SIZE     GPU memory for a computed plan (e.g. 20G; default with --gpu-backend: what the\n"
	      "                         device has free, less a margin); the forward pass's part comes off it\n"
	      "  --dram-budget SIZE     DRAM for a computed plan (default: the memory dsm may use: the least of\n"
	      "                         MemAvailable and the cgroup limits, minus a tenth, at least 1 GiB)\n"
	      "  --stream-experts       every routed expert streamed from the checkpoint\n"
	      "  --cache-policy P       expert cache of streamed experts: lru (default), lfu or pinned\n"
	      "  --cache-size SIZE      DRAM for the expert cache (default: 2 x top-k experts)\n"
	      "  --cache-off            read a streamed expert at every use\n"
	      "  --hotness-trace FILE   expert hotness for the plan and the pinned policy (a --record-routing file)\n"
	      "  --record-routing FILE  write the routing trace (docs/trace.md)\n", f);
}

struct option *dsm_flags_concat(const struct option *first, const struct option *second)
{
	size_t a = 0, b = 0;
	while (first[a].name)
		a++;
	while (second[b].name)
		b++;
	struct option *v = malloc(sizeof *v * (a + b + 1));
	if (!v)
		return NULL;
	memcpy(v, first, sizeof *v * a);
	memcpy(v + a, second, sizeof *v * (b + 1));
	return v;
}

struct option *dsm_engine_flags_with(const struct option *own)
{
	return dsm_flags_concat(own, dsm_engine_flags);
}
