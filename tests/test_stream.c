/* The streamer on offset-patterned files (every byte is a function of its offset), with ranges that are
 * not aligned, in every mode: O_DIRECT and buffered, io_uring and synchronous, fixed buffers or not,
 * queue depth 1 and more, reads cut into many chunks. Then the pinned pool. Faults: test_stream_faults. */
#include "error.h"
#include "io_methods.h"
#include "pool.h"
#include "stream.h"
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "test_stream_util.c" /* helpers shared by the streamer tests */

struct mode {
	const char *name;
	unsigned flags;
	unsigned depth;
	size_t chunk;
	int use_pool;
};

static void run_mode(const struct mode *m, const char *const *paths, const uint64_t *sizes)
{
	struct dsm_stream_opts o = { .queue_depth = m->depth, .chunk_bytes = m->chunk, .flags = m->flags };
	struct dsm_stream *st;
	int rc = dsm_stream_open(&st, paths, 2, &o);
	CHECK(rc == 0, "%s: open: %s", m->name, dsm_errmsg());
	if (rc)
		return;
	CHECK(dsm_stream_uses_ring(st) == !(m->flags & DSM_STREAM_SYNC), "%s: ring use", m->name);
	if (!(m->flags & DSM_STREAM_BUFFERED) && !on_tmpfs(paths[0]))
		CHECK(dsm_stream_file_direct(st, 0) && dsm_stream_file_direct(st, 1), "%s: not direct", m->name);
	if (m->flags & DSM_STREAM_BUFFERED)
		CHECK(!dsm_stream_file_direct(st, 0), "%s: direct despite BUFFERED", m->name);

	enum { NJOBS = 24 };
	struct job_set js;
	make_jobs(&js, NJOBS, sizes, 2, 0x5eed + m->depth + m->flags);
	size_t slot = 0;
	for (int j = 0; j < NJOBS; j++) {
		size_t b = dsm_stream_job_bytes(st, js.r[j], js.n[j]);
		CHECK(b > 0, "%s: job_bytes: %s", m->name, dsm_errmsg());
		if (b > slot)
			slot = b;
	}
	struct dsm_pool *pool = NULL;
	rc = dsm_pool_init(&pool, slot, NJOBS, m->use_pool ? 0 : DSM_POOL_NO_LOCK, NULL);
	CHECK(rc == 0, "%s: pool: %s", m->name, dsm_errmsg());
	if (m->use_pool) {
		CHECK(dsm_stream_register_pool(st, pool) == 0, "%s: register: %s", m->name, dsm_errmsg());
		if (!(m->flags & DSM_STREAM_SYNC))
			CHECK(dsm_stream_pool_index(st, pool, 0) == 0, "%s: pool not registered: %s", m->name,
			      dsm_stream_warnings(st));
	}
	static struct dsm_stream_job jobs[NJOBS];
	for (int j = 0; j < NJOBS; j++) {
		/* Scribble over the buffer so that a byte never read cannot pass by accident. */
		memset(dsm_pool_slot(pool, (unsigned)j), 0xA5, pool->slot_bytes);
		int bi = m->use_pool ? dsm_stream_pool_index(st, pool, (unsigned)j) : -1;
		rc = dsm_stream_job_init(st, &jobs[j], js.r[j], js.n[j], dsm_pool_slot(pool, (unsigned)j),
					 pool->slot_bytes, bi);
		CHECK(rc == 0, "%s: job_init %d: %s", m->name, j, dsm_errmsg());
		jobs[j].user = (uint64_t)j;
	}
	/* Half waited for one by one, half taken in completion order. */
	for (int j = 0; j < NJOBS; j++)
		CHECK(dsm_stream_submit(st, &jobs[j]) == 0, "%s: submit: %s", m->name, dsm_errmsg());
	for (int j = 0; j < NJOBS / 2; j++) {
		rc = dsm_stream_wait(st, &jobs[j]);
		CHECK(rc == 0, "%s: wait %d: %s", m->name, j, dsm_errmsg());
		check_job(m->name, &jobs[j]);
	}
	int seen = 0;
	struct dsm_stream_job *done;
	while ((rc = dsm_stream_wait_any(st, &done)) == 1) {
		CHECK(done->user >= NJOBS / 2, "%s: job %llu delivered twice", m->name, (unsigned long long)done->user);
		CHECK(done->status == 0, "%s: job failed: %s", m->name, done->error);
		check_job(m->name, done);
		seen++;
	}
	CHECK(rc == 0 && seen == NJOBS / 2, "%s: wait_any gave %d jobs (rc %d)", m->name, seen, rc);
	CHECK(!dsm_stream_busy(st), "%s: still busy", m->name);

	struct dsm_stream_stats s;
	dsm_stream_get_stats(st, &s);
	uint64_t wanted = 0;
	for (int j = 0; j < NJOBS; j++)
		for (int i = 0; i < js.n[j]; i++)
			wanted += js.r[j][i].nbytes;
	CHECK(s.jobs == NJOBS && s.bytes_wanted == wanted, "%s: stats jobs %llu bytes %llu/%llu", m->name,
	      (unsigned long long)s.jobs, (unsigned long long)s.bytes_wanted, (unsigned long long)wanted);
	CHECK(s.bytes_read >= wanted && s.errors == 0, "%s: stats read %llu errors %llu", m->name,
	      (unsigned long long)s.bytes_read, (unsigned long long)s.errors);

	/* Resubmitting a completed job reads it again. */
	memset(jobs[0].buf, 0, jobs[0].buf_bytes);
	CHECK(dsm_stream_submit(st, &jobs[0]) == 0 && dsm_stream_wait(st, &jobs[0]) == 0, "%s: resubmit: %s",
	      m->name, dsm_errmsg());
	check_job(m->name, &jobs[0]);
	dsm_stream_close(st);
	dsm_pool_free(pool);
}

static void test_bad_ranges(const char *const *paths, const uint64_t *sizes)
{
	struct dsm_stream *st;
	CHECK(dsm_stream_open(&st, paths, 2, NULL) == 0, "open: %s", dsm_errmsg());
	struct dsm_stream_range r = { .file = 0, .offset = sizes[0] - 10, .nbytes = 11, .name = "past.weight" };
	struct dsm_stream_job job;
	static uint8_t buf[1 << 16] __attribute__((aligned(4096)));
	int rc = dsm_stream_job_init(st, &job, &r, 1, buf, sizeof buf, -1);
	CHECK(rc == DSM_ELAYOUT && strstr(dsm_errmsg(), "past.weight") && strstr(dsm_errmsg(), paths[0]),
	      "range past the end: rc %d '%s'", rc, dsm_errmsg());
	r = (struct dsm_stream_range){ .file = 2, .offset = 0, .nbytes = 1 };
	CHECK(dsm_stream_job_init(st, &job, &r, 1, buf, sizeof buf, -1) == DSM_EARG, "bad file index");
	r = (struct dsm_stream_range){ .file = 0, .offset = 1, .nbytes = 100 };
	CHECK(dsm_stream_job_init(st, &job, &r, 1, buf + 1, sizeof buf - 1, -1) == DSM_EARG, "unaligned buffer");
	CHECK(dsm_stream_job_init(st, &job, &r, 1, buf, 100, -1) == DSM_EARG, "buffer too small");
	CHECK(dsm_stream_job_init(st, &job, &r, 0, buf, sizeof buf, -1) == DSM_EARG, "no ranges");
	/* Layout: two ranges closer than the merge gap share one segment; a far one gets its own. */
	struct dsm_stream_range three[3] = {
		{ .file = 0, .offset = 100, .nbytes = 5000, .name = "a" },
		{ .file = 0, .offset = 9000, .nbytes = 3, .name = "b" },
		{ .file = 1, .offset = 4096, .nbytes = 4096, .name = "c" },
	};
	CHECK(dsm_stream_job_init(st, &job, three, 3, buf, sizeof buf, -1) == 0, "merge: %s", dsm_errmsg());
	CHECK(job.n_segments == 2 && job.seg[0].len == 12288 && job.seg[1].len == 4096, "segments %d %llu",
	      job.n_segments, (unsigned long long)job.seg[0].len);
	CHECK(dsm_stream_job_bytes(st, three, 3) == 16384, "job bytes %zu", dsm_stream_job_bytes(st, three, 3));
	CHECK(dsm_stream_submit(st, &job) == 0 && dsm_stream_wait(st, &job) == 0, "merged: %s", dsm_errmsg());
	check_job("merged", &job);
	CHECK(dsm_stream_submit(st, &job) == 0 && dsm_stream_submit(st, &job) == DSM_EARG, "double submit");
	dsm_stream_wait(st, &job);
	dsm_stream_close(st);

	const char *missing[1] = { "no/such/file.safetensors" };
	CHECK(dsm_stream_open(&st, missing, 1, NULL) == DSM_EMISSING && strstr(dsm_errmsg(), "no/such/file"),
	      "missing file: %s", dsm_errmsg());
}

static void test_pool(void)
{
	struct dsm_pool *p;
	CHECK(dsm_pool_init(&p, 5000, 3, 0, NULL) == 0, "pool: %s", dsm_errmsg());
	CHECK(p->slot_bytes == 8192 && p->bytes == 3 * 8192, "slot %zu", p->slot_bytes);
	CHECK(((uintptr_t)dsm_pool_slot(p, 1) % 4096) == 0, "slot alignment");
	CHECK(p->locked || p->warning[0], "neither locked nor a warning");
	struct iovec *iov;
	unsigned n;
	CHECK(dsm_pool_iovecs(p, &iov, &n) == 0 && n == 1 && iov[0].iov_len == 3 * 8192, "iovecs");
	free(iov);
	dsm_pool_free(p);

	/* mlock refused (RLIMIT_MEMLOCK): the pool works unpinned and says so. */
	struct dsm_io_fault *f;
	const struct dsm_io_methods *io;
	CHECK(dsm_io_fault_new(&f, NULL, &io) == 0, "fault table");
	dsm_io_fault_add(f, &(struct dsm_fault_rule){ .kind = DSM_FAULT_LOCK, .arg = ENOMEM });
	CHECK(dsm_pool_init(&p, 4096, 2, 0, io) == 0, "pool: %s", dsm_errmsg());
	CHECK(!p->locked && strstr(p->warning, "mlock") && strstr(p->warning, "RLIMIT_MEMLOCK"), "warning '%s'",
	      p->warning);
	memset(dsm_pool_slot(p, 1), 1, 4096);
	dsm_pool_free(p);
	dsm_io_fault_free(f);

	CHECK(dsm_pool_init(&p, 0, 2, 0, NULL) == DSM_EARG, "zero slot");
	CHECK(dsm_pool_init(&p, SIZE_MAX / 2, 4, 0, NULL) == DSM_EARG, "overflow");
	CHECK(dsm_pool_init(&p, 4096, 0, 0, NULL) == 0 && p->bytes == 0, "empty pool");
	dsm_pool_free(p);
	dsm_pool_free(NULL);
}

int main(void)
{
	char dir[4096];
	if (test_dir(dir, sizeof dir, "stream") != 0)
		return 99;
	char p0[4200], p1[4200];
	snprintf(p0, sizeof p0, "%s/shard-a.bin", dir);
	snprintf(p1, sizeof p1, "%s/shard-b.bin", dir);
	/* Sizes not multiples of the alignment, so the last range of a file ends inside a block. */
	uint64_t sizes[2] = { 3u * 1024 * 1024 + 1234, 2u * 1024 * 1024 + 77 };
	if (write_pattern_file(p0, sizes[0], 0) != 0 || write_pattern_file(p1, sizes[1], 1) != 0)
		return 99;
	const char *paths[2] = { p0, p1 };

	static const struct mode modes[] = {
		{ "direct ring", 0, 32, 0, 0 },
		{ "direct ring pool", 0, 32, 0, 1 },
		{ "direct depth1 small chunks", 0, 1, 4096, 1 },
		{ "direct depth4 8k chunks", 0, 4, 8192, 0 },
		{ "buffered ring", DSM_STREAM_BUFFERED, 8, 0, 1 },
		{ "direct sync", DSM_STREAM_SYNC, 4, 65536, 0 },
		{ "buffered sync", DSM_STREAM_SYNC | DSM_STREAM_BUFFERED, 2, 0, 1 },
	};
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
		run_mode(&modes[i], paths, sizes);
	test_bad_ranges(paths, sizes);
	test_pool();
	unlink(p0);
	unlink(p1);
	rmdir(dir);
	return TEST_EXIT();
}
