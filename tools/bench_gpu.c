/* dsm-bench gpu: the GPU's checks and ratios that tools/gpu-check prints (and CI runs on the emu backend):
 *
 *   1. the device: its memory, its device-to-device copy bandwidth (bytes read + written per second) and the
 *      host-to-device copy bandwidth from pinned memory;
 *   2. logits: the tiny and small presets with every expert and the shared experts on the GPU against the
 *      plain cpu run, the same prompt and greedy continuation: NMSE of every position's logits (docs
 *      TESTING.md: 1e-3 on the BF16 path, 1e-4 on the F32 one) and how many greedy tokens agree;
 *   3. speed: a preset sized to the device, decode and prefill with its experts on the GPU, in DRAM and on
 *      NVMe, each against its bound measured in the same run:
 *        gpu:  the experts' bytes per token / the GPU's busy time on them, over the copy bandwidth, and every
 *              weight byte a token reads (the forward pass runs on the GPU too) over the whole token's time;
 *        dram: max(the GPU's time on the rest of the token (the forward pass outside the experts), the experts'
 *              bytes per token / the DRAM probe) over the token's time (1.0: the CPU's experts and the rest fully overlapped at DRAM speed). */
#include "build_config.h"

#include "bench_engine.h"
#include "dram_probe.h"
#include "mkmodel.h"

#include "backend.h"
#include "error.h"
#include "expert_kernels.h"
#include "generate.h"
#include "memory_limit.h"
#include "plan.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_TOKENS 64

/* ---- 1. The device ---- */

struct device {
	size_t free_bytes, total_bytes;
	double d2d_gbs, h2d_gbs;
};

static int probe_device(const char *name, struct device *d)
{
	memset(d, 0, sizeof *d);
	struct dsm_backend *g;
	struct dsm_backend_options bo = { .precision = dsm_precision_default() };
	int rc = dsm_backend_create(&g, name, &bo);
	if (rc < 0)
		return rc;
	if (!g->alloc || !g->copy_dev || !g->mem_info) {
		dsm_backend_destroy(g);
		return dsm_fail(DSM_EARG, "backend %s: not a device backend", name);
	}
	g->mem_info(g, &d->free_bytes, &d->total_bytes);
	size_t bytes = d->free_bytes / 4 < (1u << 30) ? d->free_bytes / 4 : (1u << 30);
	bytes &= ~(size_t)((1u << 20) - 1);
	void *a = bytes ? g->alloc(g, bytes) : NULL, *b = bytes ? g->alloc(g, bytes) : NULL;
	void *h = !a || !b ? NULL : g->host_alloc ? g->host_alloc(g, bytes) : malloc(bytes);
	if (!h) {
		rc = dsm_fail(DSM_ENOMEM, "%s: no room for two copies of %zu bytes (%zu free)", name, bytes, d->free_bytes);
		goto out;
	}
	memset(h, 1, bytes);
	if ((rc = g->copy_in(g, a, h, bytes)) < 0 || (rc = g->copy_dev(g, b, a, bytes)) < 0 || (rc = g->sync(g)) < 0)
		goto out;
	double best_d = 1e30, best_h = 1e30;
	for (int i = 0; i < 3; i++) {
		double t0 = dsm_wall_seconds();
		if ((rc = g->copy_dev(g, b, a, bytes)) < 0 || (rc = g->copy_dev(g, a, b, bytes)) < 0 || (rc = g->sync(g)) < 0)
			goto out;
		double t1 = dsm_wall_seconds();
		if ((rc = g->copy_in(g, a, h, bytes)) < 0 || (rc = g->sync(g)) < 0)
			goto out;
		double t2 = dsm_wall_seconds();
		best_d = t1 - t0 < best_d ? t1 - t0 : best_d;
		best_h = t2 - t1 < best_h ? t2 - t1 : best_h;
	}
	d->d2d_gbs = 4.0 * (double)bytes / best_d / 1e9; /* two copies, each reading and writing every byte */
	d->h2d_gbs = (double)bytes / best_h / 1e9;
out:
	if (h)
		g->host_free ? g->host_free(g, h) : free(h);
	g->free(g, a);
	g->free(g, b);
	dsm_backend_destroy(g);
	return rc;
}

/* ---- Runs of the engine ---- */

struct run {
	float *logits;          /* [n_pos, vocab] when kept */
	int64_t n_pos, vocab, cap;
	int32_t ids[MAX_TOKENS];
	int n_ids;
	double prefill_s, decode_s;
	int64_t decoded;
	struct dsm_engine_report rep;   /* of the decode (after the first token) */
	struct dsm_step_times times;    /* of the decode */
	struct dsm_engine *e;
	int seen;                       /* tokens generated so far */
};

/* After the first token (the prefill's), the statistics start again: what follows is the decode's. */
static int decode_starts(void *user, int32_t id)
{
	struct run *r = user;
	(void)id;
	if (r->seen++ == 0) {
		struct dsm_step_times t;
		dsm_offload_reset_stats(dsm_engine_model(r->e)->offload);
		dsm_session_times(dsm_engine_session(r->e), &t, 1);
	}
	return 0;
}

static int keep_logits(void *user, int64_t pos, int64_t n, const float *logits)
{
	struct run *r = user;
	(void)pos;
	if (r->n_pos + n > r->cap) {
		int64_t cap = (r->n_pos + n) * 2;
		float *p = realloc(r->logits, sizeof(float) * (size_t)(cap * r->vocab));
		if (!p)
			return 1;
		r->logits = p;
		r->cap = cap;
	}
	memcpy(r->logits + r->n_pos * r->vocab, logits, sizeof(float) * (size_t)(n * r->vocab));
	r->n_pos += n;
	return 0;
}

static int run_engine(const char *dir, const struct dsm_engine_options *eo, int64_t n_prompt, int tokens, int logits,
		      struct run *r)
{
	memset(r, 0, sizeof *r);
	struct dsm_engine *e;
	int rc = dsm_engine_open(&e, dir, eo);
	if (rc < 0)
		return rc;
	bench_print_notes("gpu", dsm_engine_notes(e));
	r->e = e;
	r->vocab = dsm_engine_model(e)->cfg.vocab_size;
	int32_t *prompt = malloc(sizeof *prompt * (size_t)n_prompt);
	if (!prompt) {
		dsm_engine_close(e);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	for (int64_t i = 0; i < n_prompt; i++)
		prompt[i] = (int32_t)((i * 7919 + 11) % r->vocab);
	struct dsm_generate_params p = { .max_tokens = tokens, .eos_id = -1, .sampling = { .temperature = 0, .top_p = 1 },
		.prompt_logits = logits };
	struct dsm_generate_io io = { .user = r, .on_logits = logits ? keep_logits : NULL, .on_token = decode_starts };
	struct dsm_generate_result g;
	if ((rc = dsm_generate(dsm_engine_session(e), prompt, n_prompt, &p, &io, &g)) == 0) {
		r->n_ids = g.n < MAX_TOKENS ? (int)g.n : MAX_TOKENS;
		memcpy(r->ids, g.ids, sizeof *r->ids * (size_t)r->n_ids);
		r->prefill_s = g.prefill_seconds;
		r->decode_s = g.decode_seconds;
		r->decoded = g.n > 1 ? g.n - 1 : 0;
		dsm_engine_report(e, (uint64_t)r->decoded, g.decode_seconds, &r->rep);
		dsm_session_times(dsm_engine_session(e), &r->times, 0);
	}
	dsm_generate_result_free(&g);
	free(prompt);
	dsm_engine_close(e);
	r->e = NULL;
	return rc;
}

/* The preset `name` in dir/name, written unless already there. */
static int preset_dir(const char *root, const char *name, const struct dsm_config *cfg, int sparse, char *dir,
		      size_t size)
{
	snprintf(dir, size, "%s/%s", root, name);
	char cfg_path[4200];
	snprintf(cfg_path, sizeof cfg_path, "%s/config.json", dir);
	struct stat st;
	if (stat(cfg_path, &st) == 0)
		return 0;
	const struct mkmodel_preset *p = mkmodel_preset(sparse ? "full" : "small");
	struct mkmodel_options mo = { .config = *cfg, .seed = 1, .shard_bytes = p->shard_bytes, .sparse = sparse,
		.quiet = 1 };
	fprintf(stderr, "dsm-bench gpu: writing %s\n", dir);
	return mkmodel_write(&mo, dir);
}

/* A plan file in dir: the non-expert weights on gpu:0, every expert on `experts`. */
static int write_plan(const char *model_dir, const char *root, const char *name, struct dsm_tier experts, char *path,
		      size_t size)
{
	struct dsm_plan_sizes sz;
	struct dsm_moe_shape shape;
	struct dsm_engine_options o;
	dsm_engine_options_default(&o);
	int rc = bench_sizes(model_dir, &o, &sz, &shape);
	struct dsm_plan *p;
	if (rc < 0 || (rc = dsm_plan_uniform(&p, &shape, (struct dsm_tier){ DSM_TIER_GPU, 0 }, experts)) < 0)
		return rc;
	char *json = dsm_plan_to_json(p);
	dsm_plan_free(p);
	if (!json)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	snprintf(path, size, "%s/plan-%s.json", root, name);
	FILE *f = fopen(path, "w");
	if (!f || fputs(json, f) < 0 || fclose(f) != 0) {
		free(json);
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	}
	free(json);
	return 0;
}

/* ---- 2. Logits against the cpu path ---- */

struct logits_result {
	double nmse_max, limit;
	int64_t positions;
	int agree, tokens;
	uint64_t gpu_experts, shared_gpu;
};

static int check_logits(const char *root, const char *preset, const char *backend, const struct dsm_engine_options *base,
			struct logits_result *res)
{
	char dir[4096];
	int rc = preset_dir(root, preset, &mkmodel_preset(preset)->config, 0, dir, sizeof dir);
	if (rc < 0)
		return rc;
	struct dsm_engine_options cpu = *base, gpu = *base;
	cpu.offload = 0;
	gpu.gpu_backend = backend;
	gpu.offload = 1;
	char plan[4200];
	if ((rc = write_plan(dir, root, preset, (struct dsm_tier){ DSM_TIER_GPU, 0 }, plan, sizeof plan)) < 0)
		return rc;
	gpu.tiers.plan_path = plan;
	struct run a, b;
	const int tokens = 8;
	if ((rc = run_engine(dir, &cpu, 16, tokens, 1, &a)) < 0)
		return rc;
	if ((rc = run_engine(dir, &gpu, 16, tokens, 1, &b)) < 0) {
		free(a.logits);
		return rc;
	}
	memset(res, 0, sizeof *res);
	res->limit = base->model.precision == DSM_PRECISION_BF16 ? 1e-3 : 1e-4;
	res->positions = a.n_pos < b.n_pos ? a.n_pos : b.n_pos;
	for (int64_t i = 0; i < res->positions; i++) {
		double num = 0, den = 0;
		for (int64_t j = 0; j < a.vocab; j++) {
			double x = b.logits[i * a.vocab + j], y = a.logits[i * a.vocab + j];
			num += (x - y) * (x - y);
			den += y * y;
		}
		double e = den > 0 ? num / den : num;
		res->nmse_max = e > res->nmse_max || isnan(e) ? e : res->nmse_max;
	}
	res->tokens = a.n_ids;
	while (res->agree < a.n_ids && res->agree < b.n_ids && a.ids[res->agree] == b.ids[res->agree])
		res->agree++;
	res->gpu_experts = b.rep.offload.experts[DSM_TIER_GPU];
	res->shared_gpu = b.rep.offload.shared_runs_gpu;
	free(a.logits);
	free(b.logits);
	return 0;
}

/* ---- 3. Speed on a preset sized to the device ---- */

struct speed {
	const char *where;      /* gpu, dram, nvme */
	double decode_tps, prefill_tps;
	double gpu_ratio_busy, gpu_ratio_token; /* gpu: weight bytes / time over the copy bandwidth */
	double dram_ratio;      /* dram: the bound's time over the token's time */
	struct dsm_offload_report off;
};

/* Per decode token: the routed experts' bytes (top_k per MoE layer), the shared experts' and the rest's (attention,
 * indexer, dense layers, routers and the head: one embedding row aside, every other weight). */
static void token_bytes(const char *dir, double *routed, double *shared, double *rest)
{
	struct dsm_plan_sizes sz;
	struct dsm_moe_shape shape;
	struct dsm_engine_options o;
	dsm_engine_options_default(&o);
	*routed = *shared = *rest = 0;
	if (bench_sizes(dir, &o, &sz, &shape) < 0)
		return;
	int moe = shape.n_layers - shape.first_moe;
	*routed = (double)shape.top_k * moe * (double)sz.expert_bytes;
	*shared = (double)sz.non_expert_bytes[DSM_KIND_SHARED];
	*rest = sz.non_expert_bytes[DSM_KIND_EMBED] / 2.0 + (double)sz.non_expert_bytes[DSM_KIND_ATTENTION] +
		(double)sz.non_expert_bytes[DSM_KIND_INDEXER] + (double)sz.non_expert_bytes[DSM_KIND_DENSE] +
		(double)sz.non_expert_bytes[DSM_KIND_ROUTER];
}

static double dram_gbs(int threads)
{
	size_t n = (size_t)1 << 30;
	char *p = malloc(n);
	if (!p)
		return 0;
	memset(p, 1, n);
	struct dram_region r = { p, n };
	double best = 0;
	for (int i = 0; i < 3; i++) {
		double bytes = 0, t = dram_read_regions(&r, 1, 0, 1, threads, &bytes);
		if (t > 0 && bytes / t > best)
			best = bytes / t;
	}
	free(p);
	return best / 1e9;
}

static int measure_speed(const char *root, const char *dir, const char *backend, const struct dsm_engine_options *base,
			 const struct device *dev, int n_prompt, int tokens, struct speed *s, int n)
{
	static const char *const where[] = { "gpu", "dram", "nvme" };
	const struct dsm_tier tiers[] = { { DSM_TIER_GPU, 0 }, { DSM_TIER_DRAM, 0 }, { DSM_TIER_NVME, 0 } };
	double routed, shared, rest_bytes;
	token_bytes(dir, &routed, &shared, &rest_bytes);
	double dram = dram_gbs(base->model.threads);
	for (int i = 0; i < n; i++) {
		char plan[4200];
		int rc = write_plan(dir, root, where[i], tiers[i], plan, sizeof plan);
		if (rc < 0)
			return rc;
		struct dsm_engine_options o = *base;
		o.gpu_backend = backend;
		o.offload = 1;
		o.tiers.plan_path = plan;
		o.tiers.gpu_upload_tokens = -1; /* the DRAM and NVMe experts stay on the CPU: what their bounds assume */
		/* The prompt's prefill, then `tokens` decoded; the report's per-token figures are the decode's. */
		struct run r;
		if ((rc = run_engine(dir, &o, n_prompt, tokens, 0, &r)) < 0)
			return dsm_fail_prefix(rc, "experts on %s", where[i]);
		memset(&s[i], 0, sizeof s[i]);
		s[i].where = where[i];
		s[i].decode_tps = r.decode_s > 0 ? (double)r.decoded / r.decode_s : 0;
		s[i].prefill_tps = r.prefill_s > 0 ? n_prompt / r.prefill_s : 0;
		s[i].off = r.rep.offload;
		double per_token = r.decoded > 0 ? r.decode_s / (double)r.decoded : 0;
		if (i == 0 && dev->d2d_gbs > 0) {
			double bytes = routed + shared, busy = r.rep.offload.gpu_busy_per_token;
			s[i].gpu_ratio_busy = busy > 0 ? bytes / busy / 1e9 / dev->d2d_gbs : 0;
			s[i].gpu_ratio_token = per_token > 0 ? (bytes + rest_bytes) / per_token / 1e9 / dev->d2d_gbs : 0;
		}
		if (i == 1 && per_token > 0 && dram > 0) {
			const struct dsm_step_times *t = &r.times;
			double steps = t->tokens > 0 ? (double)t->tokens : 1;
			/* the rest of the token: the GPU's time on it (the forward pass on the device), else its wall time */
			double rest = (t->device > 0 ? t->device : t->attention + t->router + t->dense + t->head + t->other) / steps;
			double experts = routed / (dram * 1e9);
			s[i].dram_ratio = (rest > experts ? rest : experts) / per_token;
		}
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench gpu [--backend NAME] [--dir DIR] [--size-gb X] [--tokens N] [--prompt N] [--no-speed]\n"
		"                     [--json] [engine flags]\n\n"
		"The GPU's checks (tools/gpu-check runs this): the device's copy bandwidth; the logits of the tiny and\n"
		"small presets with the experts and shared experts on the GPU against the cpu path; decode and prefill\n"
		"of a preset sized to the device with its experts on the GPU, in DRAM and on NVMe, against their bounds.\n\n"
		"  --backend NAME   cuda (default where built) or emu\n"
		"  --dir DIR        where the synthetic presets are written (default: ./gpu-models)\n"
		"  --size-gb X      routed experts of the speed preset (default: half the device's free memory, at most\n"
		"                   a third of the usable DRAM); real matrix shapes from 24 GB, else the small preset's\n"
		"  --tokens N       decoded tokens per speed run (default 16); --prompt N: prefill tokens (default 256)\n"
		"  --presets LIST   the presets of the logits check (default tiny,small)\n"
		"  --no-speed       the device and the logits only\n");
}

int bench_gpu_main(int argc, char **argv)
{
	enum { OPT_BACKEND = 1, OPT_DIR, OPT_SIZE, OPT_TOKENS, OPT_PROMPT, OPT_NO_SPEED, OPT_JSON, OPT_HELP, OPT_PRESETS };
	static const struct option own[] = {
		{ "backend", required_argument, NULL, OPT_BACKEND }, { "dir", required_argument, NULL, OPT_DIR },
		{ "size-gb", required_argument, NULL, OPT_SIZE }, { "tokens", required_argument, NULL, OPT_TOKENS },
		{ "prompt", required_argument, NULL, OPT_PROMPT }, { "no-speed", no_argument, NULL, OPT_NO_SPEED },
		{ "json", no_argument, NULL, OPT_JSON }, { "help", no_argument, NULL, OPT_HELP },
		{ "presets", required_argument, NULL, OPT_PRESETS }, { NULL, 0, NULL, 0 },
	};
#ifdef DSM_HAVE_CUDA
	const char *backend = "cuda";
#else
	const char *backend = "emu";
#endif
	const char *root = "gpu-models", *presets = "tiny,small";
	double size_gb = 0;
	int tokens = 16, n_prompt = 256, speed = 1, json = 0, ch;
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts)
		return 1;
	while ((ch = bench_getopt(argc, argv, opts, &eo, "gpu")) != -1) {
		char *end = NULL;
		switch (ch) {
		case OPT_BACKEND: backend = optarg; break;
		case OPT_DIR: root = optarg; break;
		case OPT_SIZE: size_gb = strtod(optarg, &end); break;
		case OPT_TOKENS: tokens = (int)strtol(optarg, &end, 10); break;
		case OPT_PROMPT: n_prompt = (int)strtol(optarg, &end, 10); break;
		case OPT_NO_SPEED: speed = 0; break;
		case OPT_PRESETS: presets = optarg; break;
		case OPT_JSON: json = 1; break;
		case OPT_HELP: usage(stdout); free(opts); return 0;
		default: usage(stderr); free(opts); return 2;
		}
		if (end && (*end || end == optarg || (ch == OPT_SIZE ? size_gb < 0 : ch == OPT_TOKENS ? tokens < 1 || tokens >= MAX_TOKENS
											  : n_prompt < 1))) {
			fprintf(stderr, "dsm-bench gpu: bad value '%s'\n", optarg);
			free(opts);
			return 2;
		}
	}
	free(opts);
	if (mkdir(root, 0777) < 0 && errno != EEXIST) {
		fprintf(stderr, "dsm-bench gpu: %s: %s\n", root, strerror(errno));
		return 1;
	}
	int status = 0, rc;
	cJSON *doc = cJSON_CreateObject();
	cJSON_AddStringToObject(doc, "backend", backend);
	cJSON_AddStringToObject(doc, "precision", dsm_precision_name(eo.model.precision));

	struct device dev;
	if ((rc = probe_device(backend, &dev)) < 0) {
		fprintf(stderr, "dsm-bench gpu: device: %s\n", dsm_errmsg());
		cJSON_Delete(doc);
		return 1;
	}
	printf("device %s: %.1f of %.1f GB free; device-to-device copy %.1f GB/s (read + write), host-to-device %.1f GB/s\n",
	       backend, (double)dev.free_bytes / 1e9, (double)dev.total_bytes / 1e9, dev.d2d_gbs, dev.h2d_gbs);
	cJSON *jd = cJSON_AddObjectToObject(doc, "device");
	cJSON_AddNumberToObject(jd, "free_bytes", (double)dev.free_bytes);
	cJSON_AddNumberToObject(jd, "total_bytes", (double)dev.total_bytes);
	cJSON_AddNumberToObject(jd, "d2d_gbs", dev.d2d_gbs);
	cJSON_AddNumberToObject(jd, "h2d_gbs", dev.h2d_gbs);

	cJSON *jl = cJSON_AddArrayToObject(doc, "logits");
	for (const char *p = presets; *p;) {
		char preset[32];
		size_t len = strcspn(p, ",");
		snprintf(preset, sizeof preset, "%.*s", (int)(len < sizeof preset ? len : sizeof preset - 1), p);
		p += len + (p[len] == ',');
		struct logits_result lr;
		if (!mkmodel_preset(preset) || mkmodel_preset(preset)->sparse) {
			fprintf(stderr, "dsm-bench gpu: --presets: '%s' is not a preset with data (tiny, small, mid, ...)\n",
				preset);
			status = 1;
			continue;
		}
		if ((rc = check_logits(root, preset, backend, &eo, &lr)) < 0) {
			fprintf(stderr, "dsm-bench gpu: logits of %s: %s\n", preset, dsm_errmsg());
			status = 1;
			continue;
		}
		int ok = lr.nmse_max <= lr.limit && lr.gpu_experts > 0 && lr.shared_gpu > 0;
		status |= !ok;
		printf("logits %-5s %s: NMSE max %.3g (limit %.0e) over %lld positions; greedy: %d of %d tokens the same; "
		       "%llu experts and %llu shared-expert runs on the gpu\n", preset, ok ? "PASS" : "FAIL", lr.nmse_max,
		       lr.limit, (long long)lr.positions, lr.agree, lr.tokens, (unsigned long long)lr.gpu_experts,
		       (unsigned long long)lr.shared_gpu);
		cJSON *j = cJSON_CreateObject();
		cJSON_AddStringToObject(j, "preset", preset);
		cJSON_AddBoolToObject(j, "pass", ok);
		cJSON_AddNumberToObject(j, "nmse_max", lr.nmse_max);
		cJSON_AddNumberToObject(j, "limit", lr.limit);
		cJSON_AddNumberToObject(j, "greedy_same", lr.agree);
		cJSON_AddNumberToObject(j, "greedy_tokens", lr.tokens);
		cJSON_AddItemToArray(jl, j);
	}

	if (speed) {
		double target = size_gb > 0 ? size_gb * 1e9 : (double)dev.free_bytes / 2;
		double dram = (double)dsm_usable_memory() / 3;
		if (!(size_gb > 0) && target > dram)
			target = dram;
		int sparse = target >= 24e9;
		struct dsm_config cfg = mkmodel_preset(sparse ? "full" : "small")->config;
		double layer = (double)cfg.n_routed_experts * 3 * (double)cfg.moe_intermediate_size * (double)cfg.hidden_size;
		int moe = (int)(target / layer);
		moe = moe < 1 ? 1 : moe;
		cfg.num_hidden_layers = cfg.first_k_dense_replace + moe;
		char name[64], dir[4096];
		snprintf(name, sizeof name, "speed-%s-%d", sparse ? "full" : "small", cfg.num_hidden_layers);
		struct speed s[3];
		if ((rc = preset_dir(root, name, &cfg, sparse, dir, sizeof dir)) < 0 ||
		    (rc = measure_speed(root, dir, backend, &eo, &dev, n_prompt, tokens, s, 3)) < 0) {
			fprintf(stderr, "dsm-bench gpu: speed: %s\n", dsm_errmsg());
			status = 1;
		} else {
			printf("speed preset %s: %d MoE layers, %.1f GB of routed experts\n", name, moe, layer * moe / 1e9);
			cJSON *js = cJSON_AddArrayToObject(doc, "speed");
			for (int i = 0; i < 3; i++) {
				printf("experts on %-4s decode %8.2f tok/s, prefill %8.1f tok/s", s[i].where, s[i].decode_tps,
				       s[i].prefill_tps);
				if (i == 0)
					printf("; experts read at %.3f of the copy bandwidth while the GPU computes them, every "
					       "weight at %.3f over the whole token", s[i].gpu_ratio_busy, s[i].gpu_ratio_token);
				if (i == 1)
					printf("; %.3f of the bound max(rest of the token, expert bytes / DRAM)", s[i].dram_ratio);
				printf("; per token: gpu busy %.2f ms, cpu busy %.2f ms, I/O wait %.2f ms, overlap %.2f ms\n",
				       1e3 * s[i].off.gpu_busy_per_token, 1e3 * s[i].off.cpu_busy_per_token,
				       1e3 * s[i].off.io_wait_per_token, 1e3 * s[i].off.overlap_per_token);
				cJSON *j = cJSON_CreateObject();
				cJSON_AddStringToObject(j, "experts_on", s[i].where);
				cJSON_AddNumberToObject(j, "decode_tokens_per_second", s[i].decode_tps);
				cJSON_AddNumberToObject(j, "prefill_tokens_per_second", s[i].prefill_tps);
				if (i == 0) {
					cJSON_AddNumberToObject(j, "gpu_read_ratio_busy", s[i].gpu_ratio_busy);
					cJSON_AddNumberToObject(j, "gpu_read_ratio_token", s[i].gpu_ratio_token);
				}
				if (i == 1)
					cJSON_AddNumberToObject(j, "dram_bound_ratio", s[i].dram_ratio);
				cJSON_AddNumberToObject(j, "gpu_busy_ms_per_token", 1e3 * s[i].off.gpu_busy_per_token);
				cJSON_AddNumberToObject(j, "cpu_busy_ms_per_token", 1e3 * s[i].off.cpu_busy_per_token);
				cJSON_AddNumberToObject(j, "io_wait_ms_per_token", 1e3 * s[i].off.io_wait_per_token);
				cJSON_AddNumberToObject(j, "overlap_ms_per_token", 1e3 * s[i].off.overlap_per_token);
				cJSON_AddItemToArray(js, j);
			}
		}
	}
	if (json) {
		char *text = cJSON_Print(doc);
		if (text)
			printf("%s\n", text);
		free(text);
	}
	cJSON_Delete(doc);
	return status;
}
