/* dsm-bench io: the streamer against the disk's own limit, measured in the same run.
 *
 * Reads every routed expert of several MoE layers through the streamer (io_uring, O_DIRECT, pinned
 * registered slots, experts in a shuffled order as a router would ask for them), and the same bytes with a
 * plain sequential O_DIRECT read of the shard files (the span of each shard that holds them, in 4 MiB
 * reads). The two alternate, several rounds; the best of each is kept (the disk is shared and noisy).
 * io_ratio = streamer GB/s / sequential GB/s. */
#include "checkpoint.h"
#include "error.h"
#include "expert_store.h"
#include "plan.h"
#include "pool.h"
#include "size_parse.h"
#include "stream.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int bench_io_main(int argc, char **argv);
int bench_e2e_main(int argc, char **argv);

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench io [options]\n"
		"\n"
		"Reads every expert of several MoE layers through the streamer and, in the same run, the same bytes\n"
		"with a plain sequential O_DIRECT read of the shard files; prints both GB/s and io_ratio.\n"
		"\n"
		"options:\n"
		"  --model DIR       checkpoint (default: bench-models/medium, written with dsm-mkmodel if missing)\n"
		"  --layers N        MoE layers to read (default 4)\n"
		"  --rounds N        alternating rounds of both reads; the best of each counts (default 3)\n"
		"  --depth N         streamer reads in flight (default 32)\n"
		"  --chunk SIZE      largest single streamer read (default 1M)\n"
		"  --slots N         pinned expert slots (default 64)\n"
		"  --order ORDER     shuffled (default) or file: the order experts are asked for\n"
		"  --json            one JSON object on stdout\n");
}

/* The folder of this program (where dsm-mkmodel and dsm-run are), into buf. */
static int self_dir(char *buf, size_t size)
{
	ssize_t n = readlink("/proc/self/exe", buf, size - 1);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	char *slash = strrchr(buf, '/');
	if (!slash)
		return -1;
	*slash = '\0';
	return 0;
}

/* Writes a preset into dir with dsm-mkmodel (found beside this program); extra: more options. */
static int make_model(const char *preset, const char *dir, const char *extra)
{
	char self[PATH_MAX], cmd[2 * PATH_MAX + 256];
	if (self_dir(self, sizeof self) < 0 || strchr(dir, '\'') || strchr(self, '\''))
		return -1;
	fprintf(stderr, "dsm-bench: writing the %s preset into %s (%s)\n", preset, dir,
		strcmp(preset, "medium") == 0 ? "about 16 GB, several minutes" : "about a minute");
	snprintf(cmd, sizeof cmd, "mkdir -p '%s' && '%s/dsm-mkmodel' --tokenizer none --quiet %s %s '%s'", dir, self,
		 extra, preset, dir);
	return system(cmd) == 0 ? 0 : -1;
}

static int make_medium(const char *dir)
{
	return make_model("medium", dir, "");
}

struct expert_job {
	struct dsm_stream_range r[DSM_EXPERT_NPROJ];
};

/* One pass of the streamer over the experts: at most n_slots experts in flight, a freed slot takes the
 * next expert. Returns seconds, or a negative value on error (message printed). */
static double stream_pass(struct dsm_stream *st, struct dsm_pool *pool, const struct expert_job *ex, size_t n,
			  uint64_t *bytes)
{
	struct dsm_stream_job *jobs = calloc(pool->n_slots, sizeof *jobs);
	if (!jobs)
		return -1;
	double t0 = now();
	size_t next = 0;
	*bytes = 0;
	int rc = 0;
	for (unsigned s = 0; s < pool->n_slots && next < n; s++, next++) {
		if ((rc = dsm_stream_job_init(st, &jobs[s], ex[next].r, DSM_EXPERT_NPROJ, dsm_pool_slot(pool, s),
					      pool->slot_bytes, dsm_stream_pool_index(st, pool, s))) < 0 ||
		    (rc = dsm_stream_submit(st, &jobs[s])) < 0)
			goto out;
		jobs[s].user = s;
	}
	struct dsm_stream_job *done;
	while ((rc = dsm_stream_wait_any(st, &done)) == 1) {
		if (done->status < 0) {
			rc = dsm_fail(done->status, "%s", done->error);
			goto out;
		}
		for (int i = 0; i < done->n_ranges; i++)
			*bytes += done->range[i].nbytes;
		if (next < n) {
			unsigned s = (unsigned)done->user;
			if ((rc = dsm_stream_job_init(st, done, ex[next].r, DSM_EXPERT_NPROJ, dsm_pool_slot(pool, s),
						      pool->slot_bytes, dsm_stream_pool_index(st, pool, s))) < 0 ||
			    (rc = dsm_stream_submit(st, done)) < 0)
				goto out;
			done->user = s;
			next++;
		}
	}
out:
	free(jobs);
	if (rc < 0) {
		fprintf(stderr, "dsm-bench io: streamer: %s\n", dsm_errmsg());
		return -1;
	}
	return now() - t0;
}

struct span {
	uint64_t begin, end;      /* byte span of a shard holding the experts read */
};

/* Plain sequential O_DIRECT reads of each shard's span, 4 MiB at a time. */
static double sequential_pass(const struct dsm_checkpoint *ck, const struct span *spans, uint64_t *bytes)
{
	const size_t block = 4u << 20;
	void *buf;
	if (posix_memalign(&buf, 4096, block) != 0)
		return -1;
	double t0 = now();
	*bytes = 0;
	for (int s = 0; s < ck->n_shards; s++) {
		if (spans[s].end <= spans[s].begin)
			continue;
		int fd = open(ck->shards[s].path, O_RDONLY | O_DIRECT);
		if (fd < 0) {
			fprintf(stderr, "dsm-bench io: %s: O_DIRECT open: %s\n", ck->shards[s].path, strerror(errno));
			free(buf);
			return -1;
		}
		uint64_t off = spans[s].begin / 4096 * 4096;
		while (off < spans[s].end) {
			ssize_t r = pread(fd, buf, block, (off_t)off);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				break;
			off += (uint64_t)r;
			*bytes += (uint64_t)r;
		}
		close(fd);
	}
	free(buf);
	return now() - t0;
}

int bench_io_main(int argc, char **argv)
{
	const char *model = "bench-models/medium";
	int layers = 4, rounds = 3, json = 0, file_order = 0;
	unsigned depth = 32, slots = 64;
	uint64_t chunk = 1u << 20;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' }, { "layers", required_argument, NULL, 'l' },
		{ "rounds", required_argument, NULL, 'r' }, { "depth", required_argument, NULL, 'd' },
		{ "chunk", required_argument, NULL, 'c' }, { "slots", required_argument, NULL, 's' },
		{ "order", required_argument, NULL, 'o' }, { "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': model = optarg; break;
		case 'l': layers = atoi(optarg); break;
		case 'r': rounds = atoi(optarg); break;
		case 'd': depth = (unsigned)atoi(optarg); break;
		case 's': slots = (unsigned)atoi(optarg); break;
		case 'c':
			if (parse_size(optarg, &chunk) < 0 || chunk == 0) {
				fprintf(stderr, "dsm-bench io: --chunk: not a size: %s\n", optarg);
				return 2;
			}
			break;
		case 'o': file_order = strcmp(optarg, "file") == 0; break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (layers <= 0 || rounds <= 0 || depth == 0 || slots == 0) {
		usage(stderr);
		return 2;
	}
	struct stat sb;
	char cfg[PATH_MAX];
	snprintf(cfg, sizeof cfg, "%s/config.json", model);
	if (stat(cfg, &sb) != 0 && (make_medium(model) < 0 || stat(cfg, &sb) != 0)) {
		fprintf(stderr, "dsm-bench io: no checkpoint in %s and dsm-mkmodel could not write one\n", model);
		return 1;
	}
	struct dsm_checkpoint *ck;
	struct dsm_store_model *sm = NULL;
	if (dsm_checkpoint_open(&ck, model) < 0 || dsm_store_model_from_checkpoint(&sm, ck, NULL) < 0) {
		fprintf(stderr, "dsm-bench io: %s\n", dsm_errmsg());
		dsm_checkpoint_close(ck);
		return 1;
	}
	const struct dsm_config *c = &ck->config;
	int first = c->first_k_dense_replace;
	if (first + layers > c->num_hidden_layers)
		layers = c->num_hidden_layers - first;
	size_t n = (size_t)layers * (size_t)c->n_routed_experts;
	struct expert_job *ex = calloc(n ? n : 1, sizeof *ex);
	struct span *spans = calloc((size_t)ck->n_shards, sizeof *spans);
	const char **paths = calloc((size_t)ck->n_shards, sizeof *paths);
	int status = 1;
	struct dsm_stream *st = NULL;
	struct dsm_pool *pool = NULL;
	if (!ex || !spans || !paths || n == 0)
		goto out;
	for (int s = 0; s < ck->n_shards; s++) {
		spans[s].begin = UINT64_MAX;
		paths[s] = ck->shards[s].path;
	}
	size_t k = 0;
	for (int l = first; l < first + layers; l++)
		for (int e = 0; e < c->n_routed_experts; e++, k++) {
			const struct dsm_store_tensor *t = dsm_store_expert(sm, l, e)->w;
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
				ex[k].r[j] = (struct dsm_stream_range){ .file = t[j].shard, .offset = t[j].offset,
					.nbytes = t[j].nbytes, .name = t[j].name };
				struct span *sp = &spans[t[j].shard];
				if (t[j].offset < sp->begin)
					sp->begin = t[j].offset;
				if (t[j].offset + t[j].nbytes > sp->end)
					sp->end = t[j].offset + t[j].nbytes;
			}
		}
	if (!file_order) {
		uint64_t x = 0x9e3779b97f4a7c15ull;
		for (size_t i = n - 1; i > 0; i--) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			size_t j = (size_t)(x % (i + 1));
			struct expert_job tmp = ex[i];
			ex[i] = ex[j];
			ex[j] = tmp;
		}
	}
	struct dsm_stream_opts so = { .queue_depth = depth, .chunk_bytes = (size_t)chunk };
	if (dsm_stream_open(&st, paths, ck->n_shards, &so) < 0) {
		fprintf(stderr, "dsm-bench io: %s\n", dsm_errmsg());
		goto out;
	}
	size_t slot = 0;
	for (size_t i = 0; i < n; i++) {
		size_t b = dsm_stream_job_bytes(st, ex[i].r, DSM_EXPERT_NPROJ);
		slot = b > slot ? b : slot;
	}
	if (slots > n)
		slots = (unsigned)n;
	if (dsm_pool_init(&pool, slot, slots, 0, NULL) < 0) {
		fprintf(stderr, "dsm-bench io: %s\n", dsm_errmsg());
		goto out;
	}
	if (pool->warning[0])
		fprintf(stderr, "dsm-bench io: warning: %s\n", pool->warning);
	dsm_stream_register_pool(st, pool);
	if (dsm_stream_warnings(st)[0])
		fprintf(stderr, "dsm-bench io: warning: %s", dsm_stream_warnings(st));
	double best_stream = 0, best_seq = 0;
	uint64_t stream_bytes = 0, seq_bytes = 0;
	for (int r = 0; r < rounds; r++) {
		uint64_t b;
		double t = stream_pass(st, pool, ex, n, &b);
		if (t < 0)
			goto out;
		double sgbs = (double)b / t / 1e9;
		if (sgbs > best_stream)
			best_stream = sgbs;
		stream_bytes = b;
		t = sequential_pass(ck, spans, &b);
		if (t < 0)
			goto out;
		double gbs = (double)b / t / 1e9;
		if (gbs > best_seq)
			best_seq = gbs;
		seq_bytes = b;
		if (!json)
			fprintf(stderr, "round %d: streamer %.2f GB/s, sequential O_DIRECT %.2f GB/s\n", r + 1, sgbs,
				gbs);
	}
	struct dsm_stream_stats ss;
	dsm_stream_get_stats(st, &ss);
	double ratio = best_seq > 0 ? best_stream / best_seq : 0;
	if (json) {
		printf("{\"bench\": \"io\", \"model\": \"%s\", \"layers\": %d, \"experts\": %zu, \"expert_bytes\": %llu, "
		       "\"bytes\": %llu, \"sequential_bytes\": %llu, \"depth\": %u, \"chunk\": %llu, \"slots\": %u, "
		       "\"order\": \"%s\", \"direct\": %s, \"registered\": %s, \"stream_gbs\": %.3f, "
		       "\"sequential_gbs\": %.3f, \"io_ratio\": %.3f, \"short_reads\": %llu, \"retries\": %llu}\n",
		       model, layers, n, (unsigned long long)(stream_bytes / n), (unsigned long long)stream_bytes,
		       (unsigned long long)seq_bytes, depth, (unsigned long long)chunk, slots,
		       file_order ? "file" : "shuffled", dsm_stream_file_direct(st, 0) ? "true" : "false",
		       dsm_stream_pool_index(st, pool, 0) >= 0 ? "true" : "false", best_stream, best_seq, ratio,
		       (unsigned long long)ss.short_reads, (unsigned long long)ss.retries);
	} else {
		printf("io: %zu experts of %d layers, %.2f GB (%s order, depth %u, %llu KiB reads, %u slots)\n", n,
		       layers, (double)stream_bytes / 1e9, file_order ? "file" : "shuffled", depth,
		       (unsigned long long)(chunk >> 10), slots);
		printf("  streamer             %6.2f GB/s\n", best_stream);
		printf("  sequential O_DIRECT  %6.2f GB/s   (%.2f GB, 4 MiB reads)\n", best_seq, (double)seq_bytes / 1e9);
		printf("  io_ratio             %6.3f\n", ratio);
	}
	status = 0;
out:
	dsm_stream_close(st);
	dsm_pool_free(pool);
	free(ex);
	free(spans);
	free(paths);
	dsm_store_model_free(sm);
	dsm_checkpoint_close(ck);
	return status;
}

/* ---- dsm-bench e2e ---- */

static void usage_e2e(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench e2e [options]\n"
		"\n"
		"Runs dsm-run decode with every routed expert streamed and the cache off, and prints tokens/s next to\n"
		"the bound: bytes read per token / O_DIRECT GB/s measured in the same run, plus the compute time per\n"
		"token of the same run (stream_decode_ratio = tokens/s / bound). With --policies, also decodes with an\n"
		"expert cache of half the experts under lru and under the frequency-pinned policy on a model whose\n"
		"router is Zipf-skewed (dsm-mkmodel --routing-skew), and prints both tokens/s.\n"
		"\n"
		"options:\n"
		"  --model DIR       checkpoint (default: bench-models/medium, written if missing)\n"
		"  --tokens N        tokens to decode (default 32)\n"
		"  --threads N       dsm-run threads (default: dsm-run's)\n"
		"  --policies        the cache policy comparison too\n"
		"  --skew-model DIR  its model (default: bench-models/small-skew, small preset with --routing-skew 1.5)\n"
		"  --json            one JSON object on stdout\n");
}

/* Runs dsm-run with args and --json; returns the parsed document or NULL. */
static cJSON *run_dsm(const char *args)
{
	char self[PATH_MAX], cmd[2 * PATH_MAX + 1024];
	if (self_dir(self, sizeof self) < 0)
		return NULL;
	snprintf(cmd, sizeof cmd, "'%s/dsm-run' %s --json -q", self, args);
	FILE *p = popen(cmd, "r");
	if (!p)
		return NULL;
	size_t cap = 1 << 16, len = 0;
	char *buf = malloc(cap);
	size_t r;
	while (buf && (r = fread(buf + len, 1, cap - len - 1, p)) > 0) {
		len += r;
		if (len + 1 == cap) {
			char *b = realloc(buf, cap *= 2);
			if (!b) {
				free(buf);
				buf = NULL;
			} else {
				buf = b;
			}
		}
	}
	int st = pclose(p);
	cJSON *j = NULL;
	if (buf && st == 0) {
		buf[len] = '\0';
		j = cJSON_Parse(buf);
	}
	if (!j)
		fprintf(stderr, "dsm-bench e2e: '%s' failed\n", cmd);
	free(buf);
	return j;
}

static double jnum(const cJSON *j, const char *obj, const char *key)
{
	const cJSON *o = cJSON_GetObjectItemCaseSensitive(j, obj);
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
	return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

/* O_DIRECT GB/s of a sequential read of up to 2 GB of the checkpoint's first shards. */
static double odirect_gbs(const char *model)
{
	struct dsm_checkpoint *ck;
	if (dsm_checkpoint_open(&ck, model) < 0)
		return 0;
	struct span *spans = calloc((size_t)ck->n_shards, sizeof *spans);
	uint64_t left = 2000000000ull;
	for (int i = 0; spans && i < ck->n_shards && left; i++) {
		uint64_t n = ck->shards[i].file_size < left ? ck->shards[i].file_size : left;
		spans[i] = (struct span){ 0, n };
		left -= n;
	}
	uint64_t bytes = 0;
	double t = spans ? sequential_pass(ck, spans, &bytes) : -1;
	free(spans);
	dsm_checkpoint_close(ck);
	return t > 0 ? (double)bytes / t / 1e9 : 0;
}

int bench_e2e_main(int argc, char **argv)
{
	const char *model = "bench-models/medium", *skew_model = "bench-models/small-skew";
	int tokens = 32, threads = 0, json = 0, policies = 0;
	static const struct option opts[] = {
		{ "model", required_argument, NULL, 'm' }, { "tokens", required_argument, NULL, 'n' },
		{ "threads", required_argument, NULL, 't' }, { "policies", no_argument, NULL, 'p' },
		{ "skew-model", required_argument, NULL, 's' }, { "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		switch (ch) {
		case 'm': model = optarg; break;
		case 'n': tokens = atoi(optarg); break;
		case 't': threads = atoi(optarg); break;
		case 'p': policies = 1; break;
		case 's': skew_model = optarg; break;
		case 'j': json = 1; break;
		case 'h': usage_e2e(stdout); return 0;
		default: usage_e2e(stderr); return 2;
		}
	}
	if (tokens < 2 || strchr(model, '\'') || strchr(skew_model, '\'')) {
		usage_e2e(stderr);
		return 2;
	}
	char cfg[PATH_MAX], th[32] = "";
	struct stat sb;
	snprintf(cfg, sizeof cfg, "%s/config.json", model);
	if (stat(cfg, &sb) != 0 && (make_medium(model) < 0 || stat(cfg, &sb) != 0)) {
		fprintf(stderr, "dsm-bench e2e: no checkpoint in %s\n", model);
		return 1;
	}
	if (threads > 0)
		snprintf(th, sizeof th, "--threads %d", threads);
	char args[PATH_MAX + 256];
	/* One prompt token: the run is decode. */
	snprintf(args, sizeof args, "-m '%s' --tokens 0 -n %d --ignore-eos %s --stream-experts --cache-off", model,
		 tokens, th);
	double bw = odirect_gbs(model);
	cJSON *j = run_dsm(args);
	double bw2 = odirect_gbs(model);
	if (!j)
		return 1;
	bw = bw2 > bw ? bw2 : bw;
	double tps = jnum(j, "timings", "decode_tokens_per_second");
	double n_tok = jnum(j, "timings", "prefill_tokens") + jnum(j, "timings", "decode_tokens");
	double bpt = jnum(j, "offload", "nvme_bytes_per_token");
	double compute = jnum(j, "offload", "attention_seconds") + jnum(j, "offload", "cpu_expert_seconds") +
			 jnum(j, "offload", "gpu_expert_seconds");
	double compute_pt = n_tok > 0 ? compute / n_tok : 0;
	double bound_t = (bw > 0 ? bpt / (bw * 1e9) : 0) + compute_pt;
	double bound = bound_t > 0 ? 1 / bound_t : 0;
	double ratio = bound > 0 ? tps / bound : 0;
	double read_gbs = jnum(j, "offload", "read_gbs"), io_wait = jnum(j, "offload", "io_wait_seconds");
	cJSON_Delete(j);

	double lru_tps = 0, pinned_tps = 0, lru_hit = 0, pinned_hit = 0;
	if (policies) {
		snprintf(cfg, sizeof cfg, "%s/config.json", skew_model);
		if (stat(cfg, &sb) != 0 && (make_model("small", skew_model, "--routing-skew 1.5") < 0 ||
					    stat(cfg, &sb) != 0)) {
			fprintf(stderr, "dsm-bench e2e: no checkpoint in %s\n", skew_model);
			return 1;
		}
		struct dsm_checkpoint *ck;
		struct dsm_store_model *sm = NULL;
		if (dsm_checkpoint_open(&ck, skew_model) < 0 || dsm_store_model_from_checkpoint(&sm, ck, NULL) < 0) {
			fprintf(stderr, "dsm-bench e2e: %s\n", dsm_errmsg());
			dsm_checkpoint_close(ck);
			return 1;
		}
		struct dsm_plan_sizes sz;
		dsm_plan_sizes(sm, &sz);
		const struct dsm_config *c = &ck->config;
		uint64_t half = (uint64_t)(c->num_hidden_layers - c->first_k_dense_replace) * (uint64_t)c->n_routed_experts / 2 *
				(sz.expert_bytes + 8192);
		dsm_store_model_free(sm);
		dsm_checkpoint_close(ck);
		/* Alternate lru and pinned twice; the best of each counts. */
		for (int round = 0; round < 2; round++)
			for (int pol = 0; pol < 2; pol++) {
				snprintf(args, sizeof args, "-m '%s' --tokens 0,5,9,300 -n %d --ignore-eos %s --stream-experts "
					 "--cache-size %llu --cache-policy %s", skew_model, 4 * tokens, th,
					 (unsigned long long)half, pol ? "pinned" : "lru");
				cJSON *r = run_dsm(args);
				if (!r)
					return 1;
				double t = jnum(r, "timings", "decode_tokens_per_second");
				double h = jnum(r, "offload", "cache_hit_rate");
				if (pol && t > pinned_tps) {
					pinned_tps = t;
					pinned_hit = h;
				} else if (!pol && t > lru_tps) {
					lru_tps = t;
					lru_hit = h;
				}
				cJSON_Delete(r);
			}
	}
	if (json) {
		printf("{\"bench\": \"e2e\", \"model\": \"%s\", \"decode_tokens\": %d, \"tokens_per_second\": %.3f, "
		       "\"nvme_bytes_per_token\": %.0f, \"odirect_gbs\": %.3f, \"compute_seconds_per_token\": %.4f, "
		       "\"bound_tokens_per_second\": %.3f, \"stream_decode_ratio\": %.3f, \"read_gbs\": %.3f, "
		       "\"io_wait_seconds\": %.3f", model, tokens, tps, bpt, bw, compute_pt, bound, ratio, read_gbs, io_wait);
		if (policies)
			printf(", \"skew_model\": \"%s\", \"lru_tokens_per_second\": %.3f, \"pinned_tokens_per_second\": %.3f, "
			       "\"lru_hit_rate\": %.3f, \"pinned_hit_rate\": %.3f", skew_model, lru_tps, pinned_tps, lru_hit,
			       pinned_hit);
		printf("}\n");
	} else {
		printf("e2e: %s, %d tokens decoded, every expert streamed, cache off\n", model, tokens);
		printf("  decode              %7.3f tok/s\n", tps);
		printf("  bound               %7.3f tok/s  (%.1f MB/token at %.2f GB/s O_DIRECT + %.1f ms compute/token)\n",
		       bound, bpt / 1e6, bw, 1e3 * compute_pt);
		printf("  stream_decode_ratio %7.3f\n", ratio);
		if (policies) {
			printf("cache of half the experts, Zipf-skewed router (%s):\n", skew_model);
			printf("  lru                 %7.3f tok/s  (hit rate %.1f%%)\n", lru_tps, 100 * lru_hit);
			printf("  pinned              %7.3f tok/s  (hit rate %.1f%%)\n", pinned_tps, 100 * pinned_hit);
		}
	}
	return 0;
}
