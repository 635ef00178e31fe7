/* dsm-bench io: the streamer against the disk's own limit, measured in the same run.
 *
 * Reads every routed expert of several MoE layers through the streamer (io_uring, O_DIRECT, pinned
 * registered slots, experts in a shuffled order as a router would ask for them), and the same bytes with a
 * plain sequential O_DIRECT read of the shard files (the span of each shard that holds them, in 4 MiB
 * reads). The two alternate, several rounds; the best of each is kept (the disk is shared and noisy).
 * io_ratio = streamer GB/s / sequential GB/s. */
#include "bench_io.h"
#include "checkpoint.h"
#include "error.h"
#include "expert_store.h"
#include "plan.h"
#include "pool.h"
#include "size_parse.h"
#include "stream.h"

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

/* The folder of this program (where dsm-mkmodel is), into buf. */
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

int bench_model(const char *preset, const char *dir, const char *extra)
{
	char self[PATH_MAX], cmd[2 * PATH_MAX + 256], cfg[PATH_MAX];
	struct stat sb;
	snprintf(cfg, sizeof cfg, "%s/config.json", dir);
	if (stat(cfg, &sb) == 0)
		return 0;
	if (self_dir(self, sizeof self) < 0 || strchr(dir, '\'') || strchr(self, '\'')) {
		fprintf(stderr, "dsm-bench: no checkpoint in %s\n", dir);
		return -1;
	}
	fprintf(stderr, "dsm-bench: writing the %s preset into %s (%s)\n", preset, dir,
		strcmp(preset, "medium") == 0 ? "about 16 GB, several minutes" : "about a minute");
	snprintf(cmd, sizeof cmd, "mkdir -p '%s' && '%s/dsm-mkmodel' --tokenizer none --quiet %s %s '%s'", dir, self,
		 extra, preset, dir);
	if (system(cmd) != 0 || stat(cfg, &sb) != 0) {
		fprintf(stderr, "dsm-bench: no checkpoint in %s and dsm-mkmodel could not write one\n", dir);
		return -1;
	}
	return 0;
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
	if (bench_model("medium", model, "") < 0)
		return 1;
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

double odirect_read(const struct dsm_checkpoint *ck, uint64_t *offset, uint64_t bytes, uint64_t *read)
{
	uint64_t total = 0;
	for (int i = 0; i < ck->n_shards; i++)
		total += ck->shards[i].file_size;
	struct span *spans = calloc((size_t)ck->n_shards, sizeof *spans);
	double seconds = 0;
	*read = 0;
	if (!spans || !total) {
		free(spans);
		return -1;
	}
	/* At most two passes: up to the end of the stream, then from its start. */
	while (bytes) {
		uint64_t at = *offset % total, base = 0, left = bytes, n;
		for (int i = 0; i < ck->n_shards; base += ck->shards[i].file_size, i++) {
			uint64_t size = ck->shards[i].file_size, begin = at > base ? at - base : 0;
			spans[i] = (struct span){ 0, 0 };
			if (left && at < base + size) {
				spans[i] = (struct span){ begin, size - begin < left ? size : begin + left };
				left -= spans[i].end - begin;
			}
		}
		double t = sequential_pass(ck, spans, &n);
		if (t < 0) {
			seconds = -1;
			break;
		}
		seconds += t;
		*read += n;
		*offset = (at + bytes - left) % total;
		bytes = left;
	}
	free(spans);
	return seconds;
}

double odirect_gbs(const struct dsm_checkpoint *ck)
{
	uint64_t offset = 0, bytes = 0;
	double t = odirect_read(ck, &offset, 2000000000ull, &bytes);
	return t > 0 ? (double)bytes / t / 1e9 : 0;
}
