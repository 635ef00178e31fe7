/* dsm-tune probe: measures this machine into a hardware file (docs/tune.md, "Hardware files"):
 *   topology   hwloc: NUMA nodes, physical cores per node, last-level cache;
 *   DRAM       the vectorized read loop of dsm-bench kernels (tools/dram_probe.c) on every bound thread over
 *              memory far larger than the last-level cache (one figure for the machine, shared out over the
 *              nodes by their cores: the probe does not bind memory per node);
 *   experts    the CPU FP8 expert kernel (dsm_fp8_matmul on gate, up, down) at 1, 8 and 64 tokens per call,
 *              over a pool of experts of the model's shape (-m; default the real 2048 x 7168) far larger than
 *              the last-level cache: weight bytes per second;
 *   NVMe       O_DIRECT reads of 1 MiB at random aligned offsets of a file (the checkpoint's largest shard
 *              with -m, or --file), queue depth d as d threads each with one read in flight.
 * Each figure is the median of three passes. GPUs: none are probed in a build without a GPU backend. */
#include "tune.h"
#include "tune_cli.h"

#include "backend.h"
#include "dram_probe.h"
#include "error.h"
#include "expert_kernels.h"
#include "median.h"
#include "topo.h"

#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static volatile uint64_t sink;

/* Passes per figure and seconds per pass: 3 and 0.25 s; a quick probe (validate's, beside every measured
 * decode) takes one short pass of each and leaves out what the caller keeps from a full probe. */
static int passes = 3;
static double pass_seconds = 0.25;

static double probe_dram(const struct dsm_topo_threads *plan, size_t bytes)
{
	uint8_t *buf = aligned_alloc(4096, bytes);
	if (!buf)
		return 0;
	memset(buf, 1, bytes);
	double v[3];
	int n = plan->th.n_threads;
	for (int r = 0; r < passes; r++) {
		double t0 = now();
#pragma omp parallel num_threads(n)
		{
			int i = omp_get_thread_num();
			dsm_topo_bind_thread((void *)plan, i);
			size_t b, e;
			dram_share(bytes, i, n, &b, &e);
			sink ^= dram_read(buf + b, e - b);
		}
		v[r] = (double)bytes / (now() - t0) / 1e9;
	}
	free(buf);
	return median(v, (size_t)passes, NULL, NULL);
}

/* GB/s of the cpu backend's matmul at one token over BF16 matrices [4096, D] rotating through 256 MB: how the
 * engine reads its non-expert weights (held in BF16) at decode. */
static double probe_dense(const struct dsm_topo_threads *plan, size_t D)
{
	struct dsm_backend *be;
	struct dsm_backend_options bo = { .precision = DSM_PRECISION_BF16, .cpu_threads = &plan->th };
	if (dsm_backend_create(&be, "cpu", &bo) < 0)
		return 0;
	size_t rows = 4096, mat = rows * D * 2, n_mat = (256u << 20) / mat + 1;
	uint16_t *w = aligned_alloc(4096, (mat * n_mat + 4095) / 4096 * 4096);
	float *x = calloc(D, sizeof(float)), *y = calloc(rows, sizeof(float));
	double v[3] = { 0, 0, 0 };
	if (w && x && y) {
		for (size_t i = 0; i < mat / 2 * n_mat; i++)
			w[i] = 0x3c00 + (uint16_t)(i % 61);
		for (size_t i = 0; i < D; i++)
			x[i] = 0.01f * (float)(i % 13);
		for (int r = 0; r < passes; r++) {
			double t0 = now(), bytes = 0;
			size_t k = 0;
			do {
				struct dsm_mat m = { .dtype = DSM_BF16, .rows = (int64_t)rows, .cols = (int64_t)D,
					.data = (const uint8_t *)w + mat * k };
				if (be->matmul(be, &m, 1, x, y) < 0)
					break;
				bytes += (double)mat;
				k = (k + 1) % n_mat;
			} while (now() - t0 < pass_seconds);
			v[r] = bytes / (now() - t0) / 1e9;
		}
	}
	free(w), free(x), free(y);
	dsm_backend_destroy(be);
	return median(v, (size_t)passes, NULL, NULL);
}

struct probe_expert {
	struct dsm_fp8_mat m[DSM_EXPERT_NPROJ];
};

/* GB/s of expert weights (with scales) the kernel computes at each of 1, 8, 64 tokens per call. */
static int probe_experts(const struct dsm_topo_threads *plan, size_t D, size_t I, size_t llc, double gbs[3])
{
	size_t wbytes = 3 * I * D, sbytes = 3 * ((I + 127) / 128) * ((D + 127) / 128) * sizeof(float);
	size_t want = 4 * llc > (256u << 20) ? 4 * llc : (256u << 20);
	want = want > (512u << 20) ? (512u << 20) : want;
	int n_pool = (int)(want / wbytes) + 1;
	n_pool = n_pool < 4 ? 4 : n_pool;
	uint8_t *w = aligned_alloc(4096, (wbytes * (size_t)n_pool + 4095) / 4096 * 4096);
	float *s = malloc(sbytes * (size_t)n_pool);
	struct probe_expert *pool = calloc((size_t)n_pool, sizeof *pool);
	size_t rows = D > I ? D : I;
	float *x = calloc(64 * rows, sizeof(float)), *y = calloc(64 * rows, sizeof(float));
	struct dsm_expert_ctx *ctx = NULL;
	struct dsm_expert_opts eo = { .isa = DSM_ISA_AUTO, .threads = &plan->th };
	int rc = DSM_ENOMEM;
	if (!w || !s || !pool || !x || !y)
		goto out;
	for (size_t i = 0; i < wbytes * (size_t)n_pool; i++)
		w[i] = (uint8_t)((i * 2654435761u) >> 24) & 0x77;
	for (size_t i = 0; i < sbytes / sizeof(float) * (size_t)n_pool; i++)
		s[i] = 1.0f / 64;
	for (size_t i = 0; i < 64 * rows; i++)
		x[i] = (float)(i % 7) * 0.1f;
	for (int e = 0; e < n_pool; e++) {
		uint8_t *we = w + wbytes * (size_t)e;
		float *se = s + sbytes / sizeof(float) * (size_t)e;
		size_t sg = ((I + 127) / 128) * ((D + 127) / 128);
		pool[e].m[0] = dsm_fp8_mat_dense(we, se, I, D);
		pool[e].m[1] = dsm_fp8_mat_dense(we + I * D, se + sg, I, D);
		pool[e].m[2] = dsm_fp8_mat_dense(we + 2 * I * D, se + 2 * sg, D, I);
	}
	if ((rc = dsm_expert_ctx_init(&ctx, &eo)) < 0)
		goto out;
	static const size_t toks[3] = { 1, 8, 64 };
	for (int k = 0; k < (passes < 3 ? 1 : 3); k++) {
		double v[3];
		for (int r = 0; r < passes; r++) {
			double t0 = now(), bytes = 0;
			int e = 0;
			do {
				for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
					if ((rc = dsm_fp8_matmul(ctx, &pool[e].m[j], toks[k], x, y)) < 0)
						goto out;
				bytes += (double)(wbytes + sbytes);
				e = (e + 1) % n_pool;
			} while (now() - t0 < pass_seconds);
			v[r] = bytes / (now() - t0) / 1e9;
		}
		gbs[k] = median(v, (size_t)passes, NULL, NULL);
	}
	rc = 0;
out:
	if (rc == DSM_ENOMEM)
		dsm_fail(rc, "out of memory for the expert pool");
	dsm_expert_ctx_free(ctx);
	free(w), free(s), free(pool), free(x), free(y);
	return rc;
}

struct reader {
	int fd;
	uint64_t size;
	double until;
	uint64_t bytes, seed;
	int err;
};

static void *read_loop(void *arg)
{
	struct reader *r = arg;
	void *buf;
	if (posix_memalign(&buf, 4096, 1 << 20)) {
		r->err = 1;
		return NULL;
	}
	uint64_t blocks = r->size >> 20;
	while (now() < r->until) {
		r->seed = r->seed * 6364136223846793005ull + 1442695040888963407ull;
		off_t off = (off_t)(((r->seed >> 33) % blocks) << 20);
		ssize_t n = pread(r->fd, buf, 1 << 20, off);
		if (n <= 0) {
			r->err = 1;
			break;
		}
		r->bytes += (uint64_t)n;
	}
	free(buf);
	return NULL;
}

/* GB/s of O_DIRECT reads of path at queue depth qd (qd threads, one read each in flight). */
static double probe_nvme(const char *path, int qd, int *direct)
{
	int fd = open(path, O_RDONLY | O_DIRECT);
	*direct = fd >= 0;
	if (fd < 0)
		fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_size < (8 << 20)) {
		if (fd >= 0)
			close(fd);
		return 0;
	}
	double v[3];
	for (int rep = 0; rep < passes; rep++) {
		struct reader r[64];
		pthread_t th[64];
		double t0 = now();
		for (int i = 0; i < qd; i++) {
			r[i] = (struct reader){ fd, (uint64_t)st.st_size, t0 + 1.6 * pass_seconds, 0, 0x1234567ull * (uint64_t)(i + 1 + 64 * rep), 0 };
			pthread_create(&th[i], NULL, read_loop, &r[i]);
		}
		uint64_t bytes = 0;
		for (int i = 0; i < qd; i++) {
			pthread_join(th[i], NULL);
			bytes += r[i].bytes;
		}
		v[rep] = (double)bytes / (now() - t0) / 1e9;
	}
	close(fd);
	return median(v, (size_t)passes, NULL, NULL);
}

/* The largest *.safetensors file in dir into buf; 0 or -1. */
static int largest_shard(const char *dir, char *buf, size_t size)
{
	DIR *d = opendir(dir);
	if (!d)
		return -1;
	off_t best = 0;
	struct dirent *e;
	while ((e = readdir(d))) {
		size_t n = strlen(e->d_name);
		if (n < 12 || strcmp(e->d_name + n - 12, ".safetensors"))
			continue;
		char p[2048];
		struct stat st;
		snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
		if (stat(p, &st) == 0 && st.st_size > best) {
			best = st.st_size;
			snprintf(buf, size, "%s", p);
		}
	}
	closedir(d);
	return best > 0 ? 0 : -1;
}

int tune_probe(struct tune_hw *hw, const char *model, const char *file, const char *name, int verbose, int quick)
{
	passes = quick ? 1 : 3;
	pass_seconds = quick ? 0.1 : 0.25;
	struct tune_model m = { 0 };
	size_t D = 7168, I = 2048;
	char shard[2048] = "";
	if (model) {
		if (tune_model_load(&m, model) < 0)
			return -1;
		D = (size_t)m.shape.hidden_size, I = (size_t)m.shape.moe_intermediate_size;
		tune_model_free(&m);
		if (!file && largest_shard(model, shard, sizeof shard) == 0)
			file = shard;
	}
	struct dsm_topo *topo;
	struct dsm_topo_threads plan;
	if (dsm_topo_open(&topo, NULL) < 0 || dsm_topo_plan_threads(topo, 0, &plan) < 0)
		return -1;
	memset(hw, 0, sizeof *hw);
	snprintf(hw->name, sizeof hw->name, "%s", name);
	hw->n_nodes = dsm_topo_n_nodes(topo);
	hw->n_nodes = hw->n_nodes < 1 ? 1 : hw->n_nodes > TUNE_MAX_NODES ? TUNE_MAX_NODES : hw->n_nodes;
	int cores = dsm_topo_n_cores(topo);
	size_t llc = dsm_topo_llc_bytes(topo);
	long pages = sysconf(_SC_PHYS_PAGES), psize = sysconf(_SC_PAGESIZE);
	uint64_t mem = (uint64_t)pages * (uint64_t)psize;
	if (verbose) fprintf(stderr, "dsm-tune probe: %d NUMA node(s), %d cores, LLC %zu MB; DRAM ...\n", hw->n_nodes, cores, llc >> 20);
	double dram = probe_dram(&plan, passes < 3 ? 256u << 20 : 1u << 30);
	if (verbose) fprintf(stderr, "dsm-tune probe: DRAM %.1f GB/s; expert kernel (%zu x %zu) ...\n", dram, I, D);
	double dense = probe_dense(&plan, D);
	double gbs[3] = { 0, 0, 0 };
	if (probe_experts(&plan, D, I, llc, gbs) < 0) {
		dsm_topo_threads_free(&plan);
		dsm_topo_close(topo);
		return -1;
	}
	for (int j = 0; j < hw->n_nodes; j++) {
		int c = dsm_topo_node_cores(topo, j);
		double share = cores > 0 ? (double)c / cores : 1.0 / hw->n_nodes;
		hw->node[j].cores = c > 0 ? c : 1;
		hw->node[j].dram_bytes = (uint64_t)((double)mem * share);
		hw->node[j].dram_gbs = dram * share;
		hw->node[j].dense_gbs = dense * share;
		for (int k = 0; k < 3; k++)
			hw->node[j].expert_gbs[k] = gbs[k] * share;
	}
	if (verbose) fprintf(stderr, "dsm-tune probe: experts %.1f / %.1f / %.1f GB/s at 1 / 8 / 64 tokens; BF16 matmul %.1f GB/s\n",
				     gbs[0], gbs[1], gbs[2], dense);
	if (file) {
		static const int qds[] = { 1, 4, 16 };
		int direct = 1;
		for (int i = passes < 3 ? 2 : 0; i < 3; i++) {
			double g = probe_nvme(file, qds[i], &direct);
			if (g > 0) {
				hw->qd[hw->n_qd] = qds[i];
				hw->nvme_gbs[hw->n_qd++] = g;
			}
		}
		if (verbose) fprintf(stderr, "dsm-tune probe: %s reads of %s: %.2f GB/s at queue depth 1, %.2f at 16%s\n",
			direct ? "O_DIRECT" : "buffered", file, hw->n_qd ? hw->nvme_gbs[0] : 0,
			hw->n_qd ? hw->nvme_gbs[hw->n_qd - 1] : 0, direct ? "" : " (O_DIRECT refused: this is the page cache)");
	} else {
		if (verbose) fprintf(stderr, "dsm-tune probe: no NVMe figures (give -m DIR or --file FILE to measure reads)\n");
	}
	dsm_topo_threads_free(&plan);
	dsm_topo_close(topo);
	return 0;
}

int tune_probe_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' }, { "model", required_argument, NULL, 'm' },
		{ "file", required_argument, NULL, 'f' }, { "name", required_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *out = "hw.json", *model = NULL, *file = NULL, *name = "this machine";
	int ch;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "o:m:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'o': out = optarg; break;
		case 'm': model = optarg; break;
		case 'f': file = optarg; break;
		case 'n': name = optarg; break;
		case 'h':
			printf("usage: dsm-tune probe [--out hw.json] [-m DIR] [--file FILE] [--name NAME]\n"
			       "\n"
			       "Measures this machine and writes a hardware file (docs/tune.md): NUMA nodes, cores and memory\n"
			       "(hwloc), DRAM read bandwidth, the CPU FP8 expert kernel's rate at 1, 8 and 64 tokens per call (on\n"
			       "experts of the model's shape with -m, else the real 2048 x 7168), and O_DIRECT read bandwidth at\n"
			       "queue depths 1, 4 and 16 of the checkpoint's largest shard (-m) or of FILE. Takes about 20 s.\n"
			       "--out - writes to stdout.\n");
			return 0;
		default: return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "dsm-tune probe: unexpected argument %s\n", argv[optind]);
		return 2;
	}
	struct tune_hw hw;
	if (tune_probe(&hw, model, file, name, 1, 0) < 0)
		return tune_fail("probe");
	int cores = 0;
	for (int j = 0; j < hw.n_nodes; j++)
		cores += hw.node[j].cores;
	char comment[256];
	snprintf(comment, sizeof comment, "dsm-tune probe: %d cores%s", cores, model ? ", expert shape of the model" : "");
	char *json = tune_hw_to_json(&hw, comment);
	int rc = json ? tune_write(out, json, "probe") : 1;
	free(json);
	return rc;
}
