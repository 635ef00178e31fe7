/* The streamer under injected faults (docs/offload.md, "Faults"): short reads, -EAGAIN, -ECANCELED,
 * -EINVAL from a direct read, -EIO, a file truncated under a running streamer (injected and real), O_DIRECT
 * refused, io_uring unavailable, fixed buffers refused, close with reads in flight. Every case ends with
 * either the right bytes or a clear error naming the file, the tensor and the offset, and never hangs. */
#include "error.h"
#include "io_methods.h"
#include "pool.h"
#include "stream.h"
#include "test_util.h"

#include "test_stream_util.c" /* helpers shared by the streamer tests */

enum { NJOBS = 20 };

static const char *g_paths[2];
static uint64_t g_sizes[2];
static struct job_set g_js;

/* Expected outcome of job j: 0, or the error code. */
typedef int (*expect_fn)(int j, const void *arg);

static int expect_ok(int j, const void *arg)
{
	return 0;
}

struct scenario {
	const char *name;
	unsigned flags;
	unsigned depth;
	size_t chunk;
	int use_pool;
	struct dsm_fault_rule rules[3];
	int n_rules;
	expect_fn expect;
	const void *arg;
	const char *warning;        /* substring the warnings must hold */
	const char *error;          /* substring every failing job's message must hold */
	int want_short, want_retries;
};

static size_t max_job_bytes(const struct dsm_stream *st);

static void run(const struct scenario *sc)
{
	struct dsm_io_fault *f;
	const struct dsm_io_methods *io;
	CHECK(dsm_io_fault_new(&f, NULL, &io) == 0, "fault table");
	int idx[3];
	for (int i = 0; i < sc->n_rules; i++)
		idx[i] = dsm_io_fault_add(f, &sc->rules[i]);
	struct dsm_stream_opts o = { .queue_depth = sc->depth ? sc->depth : 8, .chunk_bytes = sc->chunk,
		.flags = sc->flags, .io = io, .max_retries = 16 };
	struct dsm_stream *st;
	int rc = dsm_stream_open(&st, g_paths, 2, &o);
	CHECK(rc == 0, "%s: open: %s", sc->name, dsm_errmsg());
	if (rc) {
		dsm_io_fault_free(f);
		return;
	}
	size_t slot = max_job_bytes(st);
	struct dsm_pool *pool;
	CHECK(dsm_pool_init(&pool, slot, NJOBS, DSM_POOL_NO_LOCK, io) == 0, "pool");
	if (sc->use_pool)
		dsm_stream_register_pool(st, pool);
	static struct dsm_stream_job jobs[NJOBS];
	for (int j = 0; j < NJOBS; j++) {
		memset(dsm_pool_slot(pool, (unsigned)j), 0x5A, pool->slot_bytes);
		CHECK(dsm_stream_job_init(st, &jobs[j], g_js.r[j], g_js.n[j], dsm_pool_slot(pool, (unsigned)j),
					  pool->slot_bytes, dsm_stream_pool_index(st, pool, (unsigned)j)) == 0,
		      "%s: job_init: %s", sc->name, dsm_errmsg());
		CHECK(dsm_stream_submit(st, &jobs[j]) == 0, "%s: submit: %s", sc->name, dsm_errmsg());
	}
	int failed = 0;
	for (int j = 0; j < NJOBS; j++) {
		rc = dsm_stream_wait(st, &jobs[j]);
		int want = sc->expect(j, sc->arg);
		CHECK(rc == want, "%s: job %d: got %d (%s), want %d", sc->name, j, rc, rc ? dsm_errmsg() : "", want);
		if (rc == 0) {
			check_job(sc->name, &jobs[j]);
		} else {
			failed++;
			const char *msg = dsm_errmsg();
			CHECK(strstr(msg, "shard-") && strstr(msg, "offset") && strstr(msg, "tensor 'layers."),
			      "%s: job %d: message lacks file, tensor or offset: %s", sc->name, j, msg);
			if (sc->error)
				CHECK(strstr(msg, sc->error), "%s: job %d: message '%s' lacks '%s'", sc->name, j, msg,
				      sc->error);
		}
	}
	if (sc->warning)
		CHECK(strstr(dsm_stream_warnings(st), sc->warning), "%s: warnings '%s' lack '%s'", sc->name,
		      dsm_stream_warnings(st), sc->warning);
	struct dsm_stream_stats s;
	dsm_stream_get_stats(st, &s);
	if (sc->want_short)
		CHECK(s.short_reads > 0, "%s: no short read seen", sc->name);
	if (sc->want_retries)
		CHECK(s.retries > 0, "%s: no retry seen", sc->name);
	for (int i = 0; i < sc->n_rules; i++)
		CHECK(dsm_io_fault_rule(f, idx[i])->fired > 0, "%s: rule %d never fired", sc->name, i);
	if (failed)
		fprintf(stderr, "%s: %d jobs failed as expected, e.g. \"%s\"\n", sc->name, failed, dsm_errmsg());
	dsm_stream_close(st);
	dsm_pool_free(pool);
	dsm_io_fault_free(f);
}

/* Job j fails iff one of its ranges of file 0 extends past *(uint64_t *)arg. */
static int expect_truncated(int j, const void *arg)
{
	uint64_t end = *(const uint64_t *)arg;
	for (int i = 0; i < g_js.n[j]; i++)
		if (g_js.r[j][i].file == 0 && g_js.r[j][i].offset + g_js.r[j][i].nbytes > end)
			return DSM_ETRUNCATED;
	return 0;
}

static int expect_all_eio(int j, const void *arg)
{
	return DSM_EIO;
}

/* With depth 1 and one job at a time, read n belongs to the job whose reads include it. */
static int expect_eio_read5(int j, const void *arg)
{
	return j == *(const int *)arg ? DSM_EIO : 0;
}

/* Index of the job that issues read number n when depth is 1 and chunks are chunk bytes. */
static int job_of_read(uint64_t n, size_t chunk)
{
	uint64_t reads = 0;
	for (int j = 0; j < NJOBS; j++) {
		struct dsm_stream_segment seg[DSM_STREAM_MAX_RANGES];
		int k = 0;
		/* Same layout rule as the streamer: merge within the gap, one file at a time. */
		for (int i = 0; i < g_js.n[j]; i++) {
			const struct dsm_stream_range *r = &g_js.r[j][i];
			uint64_t a = r->offset / 4096 * 4096, end = r->offset + r->nbytes;
			if (k && seg[k - 1].file == r->file && a >= seg[k - 1].offset &&
			    a <= seg[k - 1].offset + seg[k - 1].len + DSM_STREAM_MERGE_GAP) {
				if (end - seg[k - 1].offset > seg[k - 1].need) {
					seg[k - 1].need = end - seg[k - 1].offset;
					seg[k - 1].len = (seg[k - 1].need + 4095) / 4096 * 4096;
				}
				continue;
			}
			seg[k].file = r->file;
			seg[k].offset = a;
			seg[k].need = end - a;
			seg[k].len = (end - a + 4095) / 4096 * 4096;
			k++;
		}
		for (int s = 0; s < k; s++)
			reads += (seg[s].len + chunk - 1) / chunk;
		if (reads >= n)
			return j;
	}
	return -1;
}

static size_t max_job_bytes(const struct dsm_stream *st)
{
	size_t slot = 0;
	for (int j = 0; j < NJOBS; j++) {
		size_t b = dsm_stream_job_bytes(st, g_js.r[j], g_js.n[j]);
		slot = b > slot ? b : slot;
	}
	return slot;
}

static void test_close_in_flight(void)
{
	struct dsm_stream *st;
	struct dsm_stream_opts o = { .queue_depth = 2, .chunk_bytes = 4096 };
	CHECK(dsm_stream_open(&st, g_paths, 2, &o) == 0, "open: %s", dsm_errmsg());
	size_t slot = max_job_bytes(st);
	struct dsm_pool *pool;
	CHECK(dsm_pool_init(&pool, slot, NJOBS, DSM_POOL_NO_LOCK, NULL) == 0, "pool");
	static struct dsm_stream_job jobs[NJOBS];
	for (int j = 0; j < NJOBS; j++) {
		dsm_stream_job_init(st, &jobs[j], g_js.r[j], g_js.n[j], dsm_pool_slot(pool, (unsigned)j), slot, -1);
		dsm_stream_submit(st, &jobs[j]);
	}
	dsm_stream_close(st);
	int closed = 0;
	for (int j = 0; j < NJOBS; j++) {
		CHECK(jobs[j].status == 0 || jobs[j].status == DSM_EIO, "close: job %d left with status %d", j,
		      jobs[j].status);
		if (jobs[j].status == 0)
			check_job("close", &jobs[j]);
		else
			closed += strstr(jobs[j].error, "closed") != NULL;
	}
	CHECK(closed > 0, "close: no job was cancelled");
	dsm_pool_free(pool);
}

static void test_real_truncation(const char *dir)
{
	char path[4300];
	snprintf(path, sizeof path, "%s/shard-t.bin", dir);
	if (write_pattern_file(path, g_sizes[0], 0) != 0) {
		CHECK(0, "cannot write %s", path);
		return;
	}
	const char *paths[2] = { path, g_paths[1] };
	struct dsm_stream *st;
	CHECK(dsm_stream_open(&st, paths, 2, NULL) == 0, "open: %s", dsm_errmsg());
	uint64_t end = 1000003;
	CHECK(truncate(path, (off_t)end) == 0, "truncate: %s", strerror(errno));
	struct dsm_pool *pool;
	size_t slot = max_job_bytes(st);
	CHECK(dsm_pool_init(&pool, slot, 1, DSM_POOL_NO_LOCK, NULL) == 0, "pool");
	int failed = 0;
	for (int j = 0; j < NJOBS; j++) {
		struct dsm_stream_job job;
		if (dsm_stream_job_init(st, &job, g_js.r[j], g_js.n[j], dsm_pool_slot(pool, 0), slot, -1) != 0)
			continue;
		dsm_stream_submit(st, &job);
		int rc = dsm_stream_wait(st, &job);
		int want = expect_truncated(j, &end);
		CHECK(rc == want, "real truncation: job %d: got %d (%s), want %d", j, rc, rc ? dsm_errmsg() : "",
		      want);
		if (rc == 0)
			check_job("real truncation", &job);
		else {
			failed++;
			CHECK(strstr(dsm_errmsg(), "shard-t.bin") && strstr(dsm_errmsg(), "truncated"), "message: %s",
			      dsm_errmsg());
		}
	}
	CHECK(failed > 0, "real truncation: no job crossed the new end");
	dsm_stream_close(st);
	dsm_pool_free(pool);
	unlink(path);
}

static void test_tmpfs(void)
{
	/* A checkpoint on tmpfs is read buffered, with a warning that says why. */
	const char *shm = "/dev/shm";
	if (!on_tmpfs(shm))
		return;
	char path[256];
	snprintf(path, sizeof path, "%s/dsm-test-stream.%d", shm, (int)getpid());
	if (write_pattern_file(path, 100000, 0) != 0)
		return;
	const char *paths[1] = { path };
	struct dsm_stream *st;
	CHECK(dsm_stream_open(&st, paths, 1, NULL) == 0, "tmpfs open: %s", dsm_errmsg());
	CHECK(!dsm_stream_file_direct(st, 0) && strstr(dsm_stream_warnings(st), "tmpfs"), "tmpfs: warnings '%s'",
	      dsm_stream_warnings(st));
	static uint8_t buf[1 << 17] __attribute__((aligned(4096)));
	struct dsm_stream_range r = { .file = 0, .offset = 777, .nbytes = 90000, .name = "t" };
	struct dsm_stream_job job;
	CHECK(dsm_stream_job_init(st, &job, &r, 1, buf, sizeof buf, -1) == 0 && dsm_stream_submit(st, &job) == 0 &&
	      dsm_stream_wait(st, &job) == 0, "tmpfs read: %s", dsm_errmsg());
	check_job("tmpfs", &job);
	dsm_stream_close(st);
	unlink(path);
}

int main(void)
{
	char dir[4096];
	if (test_dir(dir, sizeof dir, "faults") != 0)
		return 99;
	char p0[4200], p1[4200];
	snprintf(p0, sizeof p0, "%s/shard-a.bin", dir);
	snprintf(p1, sizeof p1, "%s/shard-b.bin", dir);
	g_sizes[0] = 2u * 1024 * 1024 + 4321;
	g_sizes[1] = 1u * 1024 * 1024 + 5;
	if (write_pattern_file(p0, g_sizes[0], 0) != 0 || write_pattern_file(p1, g_sizes[1], 1) != 0)
		return 99;
	g_paths[0] = p0;
	g_paths[1] = p1;
	make_jobs(&g_js, NJOBS, g_sizes, 2, 77);

	static uint64_t trunc_end = 1u * 1024 * 1024 + 333;
	static int eio_job;
	eio_job = job_of_read(5, 65536);
	const struct scenario scenarios[] = {
		{ "short reads", 0, 8, 0, 1, { { DSM_FAULT_SHORT, 1, 3, 0, 0, 0, NULL, 0 } }, 1, expect_ok, NULL, NULL,
		  NULL, 1, 0 },
		{ "one-byte short reads", 0, 4, 16384, 0, { { DSM_FAULT_SHORT, 2, 5, 0, 1, 0, NULL, 0 } }, 1, expect_ok,
		  NULL, NULL, NULL, 1, 0 },
		{ "EAGAIN", 0, 8, 0, 1, { { DSM_FAULT_ERROR, 1, 2, 0, EAGAIN, 0, NULL, 0 } }, 1, expect_ok, NULL, NULL,
		  NULL, 0, 1 },
		{ "ECANCELED", 0, 8, 0, 0, { { DSM_FAULT_ERROR, 1, 1, 3, ECANCELED, 0, NULL, 0 } }, 1, expect_ok, NULL,
		  NULL, NULL, 0, 1 },
		{ "EIO on read 5", 0, 1, 65536, 0, { { DSM_FAULT_ERROR, 5, 0, 0, EIO, 0, NULL, 0 } }, 1,
		  expect_eio_read5, &eio_job, NULL, "Input/output error", 0, 0 },
		{ "EAGAIN forever", 0, 8, 0, 0, { { DSM_FAULT_ERROR, 0, 0, 0, EAGAIN, 0, NULL, 0 } }, 1, expect_all_eio,
		  NULL, NULL, "retries", 0, 1 },
		{ "truncated while running", 0, 8, 0, 1, { { DSM_FAULT_TRUNCATE, 0, 0, 0, 0, 1u * 1024 * 1024 + 333,
		  "shard-a.bin", 0 } }, 1, expect_truncated, &trunc_end, NULL, "truncated", 0, 0 },
		{ "sync: short, EAGAIN", DSM_STREAM_SYNC, 4, 0, 0, { { DSM_FAULT_SHORT, 1, 3, 0, 0, 0, NULL, 0 },
		  { DSM_FAULT_ERROR, 2, 5, 0, EAGAIN, 0, NULL, 0 } }, 2, expect_ok, NULL, NULL, NULL, 1, 1 },
		{ "sync: truncated", DSM_STREAM_SYNC, 4, 0, 0, { { DSM_FAULT_TRUNCATE, 0, 0, 0, 0,
		  1u * 1024 * 1024 + 333, "shard-a.bin", 0 } }, 1, expect_truncated, &trunc_end, NULL, "truncated",
		  0, 0 },
		{ "O_DIRECT refused", 0, 8, 0, 1, { { DSM_FAULT_OPEN_DIRECT, 0, 0, 0, 0, 0, NULL, 0 } }, 1, expect_ok,
		  NULL, "O_DIRECT refused", NULL, 0, 0 },
		{ "direct read EINVAL", 0, 8, 0, 1, { { DSM_FAULT_ERROR, 1, 0, 1, EINVAL, 0, NULL, 0 } }, 1, expect_ok,
		  NULL, "direct read refused", NULL, 0, 0 },
		{ "io_uring unavailable", 0, 8, 0, 1, { { DSM_FAULT_RING, 0, 0, 0, ENOSYS, 0, NULL, 0 },
		  { DSM_FAULT_SHORT, 1, 4, 0, 0, 0, NULL, 0 } }, 2, expect_ok, NULL, "io_uring unavailable", NULL, 1,
		  0 },
		{ "fixed buffers refused", 0, 8, 0, 1, { { DSM_FAULT_REGISTER, 0, 0, 0, ENOMEM, 0, NULL, 0 } }, 1,
		  expect_ok, NULL, "register", NULL, 0, 0 },
	};
	for (size_t i = 0; i < sizeof scenarios / sizeof scenarios[0]; i++)
		run(&scenarios[i]);
	test_close_in_flight();
	test_real_truncation(dir);
	test_tmpfs();

	struct dsm_io_methods bad = dsm_io_default;
	bad.version = 99;
	struct dsm_stream *st;
	struct dsm_stream_opts o = { .io = &bad };
	CHECK(dsm_stream_open(&st, g_paths, 2, &o) == DSM_EARG && strstr(dsm_errmsg(), "version"), "version check");

	unlink(p0);
	unlink(p1);
	rmdir(dir);
	return TEST_EXIT();
}
