#include "stream.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>

#ifndef TMPFS_MAGIC
#define TMPFS_MAGIC 0x01021994
#endif
#define RAMFS_MAGIC_ 0x858458f6

struct stream_file {
	char *path;
	int fd;
	int direct;               /* opened with O_DIRECT */
	uint64_t size;
};

/* One read in flight: it owns a piece of its job's buffer and travels as the submission's user data. */
struct stream_req {
	struct dsm_stream_job *job;
	int file;
	uint64_t offset;          /* file offset of the read's first byte */
	uint8_t *buf;             /* where that byte goes */
	uint64_t len;             /* bytes asked for (aligned) */
	uint64_t need;            /* bytes that must arrive */
	uint64_t done;            /* bytes arrived */
	unsigned retries;         /* requeues since the last progress */
	uint64_t seq;             /* issue order (the synchronous path runs reads in this order) */
	int active;
	struct stream_req *next_free;
};

struct dsm_stream {
	const struct dsm_io_methods *io;
	struct stream_file *files;
	int n_files;
	struct io_uring ring;
	int have_ring;
	int ring_dirty;           /* reads prepared but not submitted */
	unsigned depth;
	size_t chunk;
	unsigned max_retries;
	size_t align;
	struct stream_req *reqs;
	struct stream_req *free_reqs;
	unsigned in_flight;
	uint64_t seq;
	struct dsm_stream_job *queue_head, *queue_tail;  /* jobs with reads still to issue */
	struct dsm_stream_job *done_head, *done_tail;    /* completed jobs not yet delivered */
	unsigned outstanding;     /* submitted jobs not yet complete */
	const struct dsm_pool *pool;
	int pool_registered;
	char warnings[1024];
	struct dsm_stream_stats stats;
	double busy_since;
};

static double now_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void warn(struct dsm_stream *st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(struct dsm_stream *st, const char *fmt, ...)
{
	size_t used = strlen(st->warnings);
	if (used + 2 >= sizeof st->warnings)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(st->warnings + used, sizeof st->warnings - used - 1, fmt, ap);
	va_end(ap);
	used = strlen(st->warnings);
	st->warnings[used] = '\n';
	st->warnings[used + 1] = '\0';
}

static uint64_t round_down(uint64_t x, uint64_t a)
{
	return x / a * a;
}

static uint64_t round_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
}

static int open_file(struct dsm_stream *st, struct stream_file *f, int want_direct)
{
	f->direct = 0;
	if (want_direct) {
		struct statfs sfs;
		int probe = st->io->open(st->io->ctx, f->path, 0);
		if (probe < 0)
			return dsm_fail(probe == -ENOENT ? DSM_EMISSING : DSM_EIO, "%s: cannot open: %s", f->path,
					strerror(-probe));
		int on_ram = fstatfs(probe, &sfs) == 0 &&
			     ((unsigned long)sfs.f_type == TMPFS_MAGIC || (unsigned long)sfs.f_type == RAMFS_MAGIC_);
		st->io->close(st->io->ctx, probe);
		if (on_ram) {
			warn(st, "%s is on tmpfs: read with buffered I/O (its bytes are already in DRAM, so "
			     "streaming it saves no memory)", f->path);
		} else {
			int fd = st->io->open(st->io->ctx, f->path, 1);
			if (fd >= 0) {
				f->fd = fd;
				f->direct = 1;
			} else if (fd == -EINVAL || fd == -EOPNOTSUPP) {
				warn(st, "%s: O_DIRECT refused (%s): read with buffered I/O", f->path, strerror(-fd));
			} else {
				return dsm_fail(DSM_EIO, "%s: cannot open: %s", f->path, strerror(-fd));
			}
		}
	}
	if (!f->direct) {
		int fd = st->io->open(st->io->ctx, f->path, 0);
		if (fd < 0)
			return dsm_fail(fd == -ENOENT ? DSM_EMISSING : DSM_EIO, "%s: cannot open: %s", f->path,
					strerror(-fd));
		f->fd = fd;
	}
	struct stat sb;
	if (fstat(f->fd, &sb) != 0)
		return dsm_fail(DSM_EIO, "%s: stat failed: %s", f->path, strerror(errno));
	f->size = (uint64_t)sb.st_size;
#ifdef STATX_DIOALIGN
	if (f->direct) {
		struct statx sx;
		if (statx(f->fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) == 0 && (sx.stx_mask & STATX_DIOALIGN)) {
			size_t a = sx.stx_dio_offset_align > sx.stx_dio_mem_align ? sx.stx_dio_offset_align
										 : sx.stx_dio_mem_align;
			if (a > st->align && a <= (1u << 20) && (a & (a - 1)) == 0)
				st->align = a;
		}
	}
#endif
	return 0;
}

int dsm_stream_open(struct dsm_stream **out, const char *const *paths, int n, const struct dsm_stream_opts *o)
{
	*out = NULL;
	struct dsm_stream_opts def = { 0 };
	if (!o)
		o = &def;
	if (n <= 0)
		return dsm_fail(DSM_EARG, "streamer: no files");
	const struct dsm_io_methods *io = o->io ? o->io : &dsm_io_default;
	if (io->version != DSM_IO_METHODS_VERSION)
		return dsm_fail(DSM_EARG, "streamer: I/O methods '%s' have version %d, expected %d", io->name,
				io->version, DSM_IO_METHODS_VERSION);
	struct dsm_stream *st = calloc(1, sizeof *st);
	if (!st)
		return dsm_fail(DSM_ENOMEM, "streamer: out of memory");
	int rc = DSM_ENOMEM;
	st->io = io;
	st->depth = o->queue_depth ? o->queue_depth : 32;
	if (st->depth > 4096)
		st->depth = 4096;
	st->max_retries = o->max_retries ? o->max_retries : 64;
	st->align = 4096;
	st->files = calloc((size_t)n, sizeof *st->files);
	st->reqs = calloc(st->depth, sizeof *st->reqs);
	if (!st->files || !st->reqs)
		goto err;
	for (int i = 0; i < n; i++)
		st->files[i].fd = -1;
	st->n_files = n;
	for (int i = 0; i < n; i++) {
		st->files[i].path = strdup(paths[i]);
		if (!st->files[i].path)
			goto err;
		if ((rc = open_file(st, &st->files[i], !(o->flags & DSM_STREAM_BUFFERED))) < 0)
			goto err;
	}
	size_t chunk = o->chunk_bytes ? o->chunk_bytes : (1u << 20);
	st->chunk = (size_t)round_up(chunk, st->align);
	for (unsigned i = 0; i < st->depth; i++) {
		st->reqs[i].next_free = st->free_reqs;
		st->free_reqs = &st->reqs[i];
	}
	if (!(o->flags & DSM_STREAM_SYNC)) {
		int r = st->io->ring_init(st->io->ctx, &st->ring, st->depth);
		if (r == 0)
			st->have_ring = 1;
		else
			warn(st, "io_uring unavailable (%s): expert reads are synchronous", strerror(-r));
	}
	*out = st;
	return 0;
err:
	if (rc == DSM_ENOMEM)
		dsm_fail(rc, "streamer: out of memory");
	dsm_stream_close(st);
	return rc;
}

const char *dsm_stream_warnings(const struct dsm_stream *st)
{
	return st->warnings;
}

size_t dsm_stream_alignment(const struct dsm_stream *st)
{
	return st->align;
}

int dsm_stream_file_direct(const struct dsm_stream *st, int file)
{
	return file >= 0 && file < st->n_files && st->files[file].direct;
}

int dsm_stream_uses_ring(const struct dsm_stream *st)
{
	return st->have_ring;
}

uint64_t dsm_stream_file_size(const struct dsm_stream *st, int file)
{
	return file >= 0 && file < st->n_files ? st->files[file].size : 0;
}

int dsm_stream_register_pool(struct dsm_stream *st, const struct dsm_pool *pool)
{
	if (!st->have_ring || st->pool_registered || pool->n_slots == 0)
		return 0;
	struct iovec *iov;
	unsigned n;
	int rc = dsm_pool_iovecs(pool, &iov, &n);
	if (rc < 0)
		return rc == DSM_ENOMEM ? rc : 0;
	int r = st->io->register_buffers(st->io->ctx, &st->ring, iov, n);
	free(iov);
	if (r < 0) {
		warn(st, "io_uring refused to register %zu MiB of expert buffers (%s): plain reads are used",
		     pool->bytes >> 20, strerror(-r));
		return 0;
	}
	st->pool = pool;
	st->pool_registered = 1;
	return 0;
}

int dsm_stream_pool_index(const struct dsm_stream *st, const struct dsm_pool *pool, unsigned slot)
{
	return st->pool_registered && st->pool == pool ? dsm_pool_buf_index(pool, slot) : -1;
}

/* Lays the ranges out as aligned segments; fills seg[] when given. Returns the buffer bytes needed, or 0
 * with a message. */
static size_t layout_segments(const struct dsm_stream *st, const struct dsm_stream_range *r, int n,
			      struct dsm_stream_segment *seg, int *n_seg)
{
	struct dsm_stream_segment tmp[DSM_STREAM_MAX_RANGES];
	if (!seg)
		seg = tmp;
	if (n <= 0 || n > DSM_STREAM_MAX_RANGES) {
		dsm_fail(DSM_EARG, "streamer: %d ranges in one job (1 to %d allowed)", n, DSM_STREAM_MAX_RANGES);
		return 0;
	}
	int k = 0;
	size_t total = 0;
	for (int i = 0; i < n; i++) {
		if (r[i].file < 0 || r[i].file >= st->n_files || r[i].nbytes == 0 ||
		    r[i].offset > UINT64_MAX - r[i].nbytes - st->align) {
			dsm_fail(DSM_EARG, "streamer: bad range %d (file %d, offset %llu, %llu bytes)", i, r[i].file,
				 (unsigned long long)r[i].offset, (unsigned long long)r[i].nbytes);
			return 0;
		}
		uint64_t a = round_down(r[i].offset, st->align);
		uint64_t end = r[i].offset + r[i].nbytes;
		struct dsm_stream_segment *prev = k ? &seg[k - 1] : NULL;
		if (prev && prev->file == r[i].file && a >= prev->offset &&
		    a <= prev->offset + prev->len + DSM_STREAM_MERGE_GAP) {
			uint64_t need = end - prev->offset;
			if (need > prev->need) {
				total -= prev->len;
				prev->need = need;
				prev->len = round_up(need, st->align);
				total += prev->len;
			}
			continue;
		}
		seg[k] = (struct dsm_stream_segment){ .file = r[i].file, .offset = a, .need = end - a,
			.len = round_up(end - a, st->align), .buf_offset = total, .name = r[i].name };
		total += seg[k].len;
		k++;
	}
	*n_seg = k;
	return total;
}

size_t dsm_stream_job_bytes(const struct dsm_stream *st, const struct dsm_stream_range *r, int n)
{
	int k;
	return layout_segments(st, r, n, NULL, &k);
}

int dsm_stream_job_init(const struct dsm_stream *st, struct dsm_stream_job *job, const struct dsm_stream_range *r,
			int n, void *buf, size_t buf_bytes, int buf_index)
{
	memset(job, 0, sizeof *job);
	job->status = DSM_STREAM_IDLE;
	size_t need = layout_segments(st, r, n, job->seg, &job->n_segments);
	if (need == 0)
		return DSM_EARG;
	for (int i = 0; i < n; i++) {
		const struct stream_file *f = &st->files[r[i].file];
		if (r[i].offset + r[i].nbytes > f->size)
			return dsm_fail(DSM_ELAYOUT, "%s: tensor '%s' (offset %llu, %llu bytes) ends past the end of the "
					"file (%llu bytes)", f->path, r[i].name ? r[i].name : "?",
					(unsigned long long)r[i].offset, (unsigned long long)r[i].nbytes,
					(unsigned long long)f->size);
	}
	if (!buf || buf_bytes < need || ((uintptr_t)buf % st->align) != 0)
		return dsm_fail(DSM_EARG, "streamer: job buffer %p of %zu bytes: %zu bytes aligned to %zu needed", buf,
				buf_bytes, need, st->align);
	job->n_ranges = n;
	memcpy(job->range, r, (size_t)n * sizeof *r);
	job->buf = buf;
	job->buf_bytes = buf_bytes;
	job->buf_index = buf_index;
	return 0;
}

/* The range of job that holds file offset off (for messages). */
static const char *tensor_at(const struct dsm_stream_job *job, int file, uint64_t off)
{
	const char *best = NULL;
	for (int i = 0; i < job->n_ranges; i++) {
		const struct dsm_stream_range *r = &job->range[i];
		if (r->file != file)
			continue;
		if (!best)
			best = r->name;
		if (off >= r->offset && off < r->offset + r->nbytes)
			return r->name ? r->name : "?";
		if (off >= r->offset)
			best = r->name;
	}
	return best ? best : "?";
}

static void job_fail(struct dsm_stream *st, struct dsm_stream_job *job, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void job_fail(struct dsm_stream *st, struct dsm_stream_job *job, int code, const char *fmt, ...)
{
	st->stats.errors++;
	if (job->failed)
		return; /* the first error wins */
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(job->error, sizeof job->error, fmt, ap);
	va_end(ap);
	job->failed = code;
	job->next_seg = job->n_segments; /* issue nothing more; what is in flight drains */
}

static void finish_job(struct dsm_stream *st, struct dsm_stream_job *job)
{
	if (job->failed) {
		job->status = job->failed;
	} else {
		job->status = DSM_STREAM_DONE;
		for (int i = 0; i < job->n_ranges; i++) {
			const struct dsm_stream_range *r = &job->range[i];
			for (int s = 0; s < job->n_segments; s++) {
				const struct dsm_stream_segment *g = &job->seg[s];
				if (g->file == r->file && r->offset >= g->offset && r->offset + r->nbytes <= g->offset + g->need) {
					job->data[i] = job->buf + g->buf_offset + (r->offset - g->offset);
					break;
				}
			}
			st->stats.bytes_wanted += r->nbytes;
		}
	}
	st->stats.jobs++;
	st->outstanding--;
	job->done_next = NULL;
	job->listed = 1;
	if (st->done_tail)
		st->done_tail->done_next = job;
	else
		st->done_head = job;
	st->done_tail = job;
}

static void pop_queue_head(struct dsm_stream *st)
{
	struct dsm_stream_job *job = st->queue_head;
	st->queue_head = job->queue_next;
	if (!st->queue_head)
		st->queue_tail = NULL;
	job->queue_next = NULL;
}

/* Hands req to the ring (or, without one, leaves it for reap_sync). */
static int issue(struct dsm_stream *st, struct stream_req *req)
{
	req->seq = ++st->seq;
	st->stats.reads++;
	if (!st->have_ring)
		return 0;
	struct dsm_io_read rd = {
		.fd = st->files[req->file].fd,
		.buf = req->buf + req->done,
		.len = (size_t)(req->len - req->done),
		.offset = req->offset + req->done,
		.buf_index = req->job->buf_index,
		.user_data = (uint64_t)(uintptr_t)req,
	};
	int r = st->io->prep_read(st->io->ctx, &st->ring, &rd);
	if (r == -EBUSY) {
		r = st->io->submit(st->io->ctx, &st->ring);
		if (r < 0)
			return dsm_fail(DSM_EIO, "io_uring submit failed: %s", strerror(-r));
		r = st->io->prep_read(st->io->ctx, &st->ring, &rd);
	}
	if (r < 0)
		return dsm_fail(DSM_EIO, "io_uring: cannot queue a read: %s", strerror(-r));
	st->ring_dirty = 1;
	return 0;
}

/* Issues reads of queued jobs while the depth allows, then submits them. */
static int fill(struct dsm_stream *st)
{
	while (st->free_reqs && st->queue_head) {
		struct dsm_stream_job *job = st->queue_head;
		if (job->next_seg >= job->n_segments) {
			pop_queue_head(st);
			continue;
		}
		const struct dsm_stream_segment *g = &job->seg[job->next_seg];
		uint64_t pos = job->next_pos;
		uint64_t len = g->len - pos < st->chunk ? g->len - pos : st->chunk;
		struct stream_req *req = st->free_reqs;
		st->free_reqs = req->next_free;
		*req = (struct stream_req){ .job = job, .file = g->file, .offset = g->offset + pos,
			.buf = job->buf + g->buf_offset + pos, .len = len,
			.need = g->need - pos < len ? g->need - pos : len, .active = 1 };
		job->next_pos += len;
		if (job->next_pos >= g->len) {
			job->next_seg++;
			job->next_pos = 0;
		}
		job->in_flight++;
		if (st->in_flight++ == 0)
			st->busy_since = now_seconds();
		int rc = issue(st, req);
		if (rc < 0)
			return rc;
		if (job->next_seg >= job->n_segments)
			pop_queue_head(st);
	}
	if (st->ring_dirty) {
		int r = st->io->submit(st->io->ctx, &st->ring);
		if (r < 0)
			return dsm_fail(DSM_EIO, "io_uring submit failed: %s", strerror(-r));
		st->ring_dirty = 0;
	}
	return 0;
}

static void release_req(struct dsm_stream *st, struct stream_req *req)
{
	struct dsm_stream_job *job = req->job;
	req->active = 0;
	req->next_free = st->free_reqs;
	st->free_reqs = req;
	if (--st->in_flight == 0)
		st->stats.busy_seconds += now_seconds() - st->busy_since;
	job->in_flight--;
	if (job->in_flight == 0 && job->next_seg >= job->n_segments)
		finish_job(st, job);
}

/* Reopens a file without O_DIRECT after the kernel refused a direct read of it. */
static int fall_back_to_buffered(struct dsm_stream *st, int file, int err)
{
	struct stream_file *f = &st->files[file];
	int fd = st->io->open(st->io->ctx, f->path, 0);
	if (fd < 0)
		return fd;
	warn(st, "%s: direct read refused (%s): read with buffered I/O", f->path, strerror(-err));
	/* Reads in flight on the old descriptor hold their own reference to the file. */
	st->io->close(st->io->ctx, f->fd);
	f->fd = fd;
	f->direct = 0;
	return 0;
}

/* The file of req ended before the bytes req needs, at or before offset `at`. */
static int truncated(struct dsm_stream *st, struct stream_req *req, uint64_t at)
{
	struct stream_file *f = &st->files[req->file];
	int64_t size = st->io->size(st->io->ctx, f->fd);
	uint64_t end = size >= 0 && (uint64_t)size < at ? (uint64_t)size : at;
	job_fail(st, req->job, DSM_ETRUNCATED, "%s: tensor '%s': the file ends at offset %llu, inside the tensor "
		 "(it was truncated or replaced while running)", f->path, tensor_at(req->job, req->file, at),
		 (unsigned long long)end);
	release_req(st, req);
	return 0;
}

/* Handles the result of one read: resumes, requeues, or settles it. Returns 0 or a fatal ring error. */
static int complete(struct dsm_stream *st, struct stream_req *req, long res)
{
	struct dsm_stream_job *job = req->job;
	struct stream_file *f = &st->files[req->file];
	uint64_t at = req->offset + req->done;
	if (job->failed) {
		release_req(st, req); /* the job already failed: drain */
		return 0;
	}
	if (res > 0) {
		st->stats.bytes_read += (uint64_t)res;
		req->done += (uint64_t)res;
		if (req->done >= req->need) {
			release_req(st, req);
			return 0;
		}
		/* Short read. Under O_DIRECT the count may stop inside a block only at the end of the file: ask
		 * the file's size, then resume from an aligned restart. */
		st->stats.short_reads++;
		at = req->offset + req->done;
		if (f->direct) {
			int64_t size = st->io->size(st->io->ctx, f->fd);
			if (size >= 0 && (uint64_t)size <= at)
				return truncated(st, req, (uint64_t)size);
			uint64_t restart = round_down(req->done, st->align);
			if (restart <= req->done - (uint64_t)res && ++req->retries > st->max_retries) {
				job_fail(st, job, DSM_EIO, "%s: tensor '%s': direct reads at offset %llu make no progress",
					 f->path, tensor_at(job, req->file, at), (unsigned long long)at);
				release_req(st, req);
				return 0;
			}
			if (restart > req->done - (uint64_t)res)
				req->retries = 0;
			req->done = restart;
			return issue(st, req);
		}
		req->retries = 0;
		return issue(st, req);
	}
	if (res == 0)
		return truncated(st, req, at);
	if (res == -EAGAIN || res == -EINTR || res == -ECANCELED) {
		if (++req->retries > st->max_retries) {
			job_fail(st, job, DSM_EIO, "%s: tensor '%s': read at offset %llu still failing after %u retries: %s",
				 f->path, tensor_at(job, req->file, at), (unsigned long long)at, st->max_retries,
				 strerror((int)-res));
			release_req(st, req);
			return 0;
		}
		st->stats.retries++;
		return issue(st, req);
	}
	if (res == -EINVAL && f->direct && fall_back_to_buffered(st, req->file, (int)-res) == 0)
		return issue(st, req);
	job_fail(st, job, DSM_EIO, "%s: tensor '%s': read of %llu bytes at offset %llu failed: %s", f->path,
		 tensor_at(job, req->file, at), (unsigned long long)(req->len - req->done), (unsigned long long)at,
		 strerror((int)-res));
	release_req(st, req);
	return 0;
}

/* Without a ring: runs the oldest read synchronously. */
static int reap_sync(struct dsm_stream *st)
{
	struct stream_req *oldest = NULL;
	for (unsigned i = 0; i < st->depth; i++)
		if (st->reqs[i].active && (!oldest || st->reqs[i].seq < oldest->seq))
			oldest = &st->reqs[i];
	if (!oldest)
		return 0;
	long r = st->io->pread(st->io->ctx, st->files[oldest->file].fd, oldest->buf + oldest->done,
			       (size_t)(oldest->len - oldest->done), oldest->offset + oldest->done);
	int rc = complete(st, oldest, r);
	return rc < 0 ? rc : 1;
}

/* Takes one completion (blocking when wait is set and reads are in flight) and issues more reads.
 * Returns 1 when a completion was handled, 0 when none, or a negative code. */
static int reap_one(struct dsm_stream *st, int wait)
{
	int rc = fill(st);
	if (rc < 0)
		return rc;
	if (st->in_flight == 0)
		return 0;
	if (!st->have_ring) {
		rc = reap_sync(st);
	} else {
		struct dsm_io_completion c;
		double t0 = wait ? now_seconds() : 0;
		int r = st->io->reap(st->io->ctx, &st->ring, &c, wait);
		if (wait)
			st->stats.wait_seconds += now_seconds() - t0;
		if (r < 0)
			return dsm_fail(DSM_EIO, "io_uring: waiting for a completion failed: %s", strerror(-r));
		if (r == 0)
			return 0;
		struct stream_req *req = (struct stream_req *)(uintptr_t)c.user_data;
		if (!req || req < st->reqs || req >= st->reqs + st->depth || !req->active)
			return dsm_fail(DSM_EIO, "io_uring: completion for an unknown request");
		rc = complete(st, req, c.res);
		if (rc >= 0)
			rc = 1;
	}
	if (rc < 0)
		return rc;
	int frc = fill(st);
	return frc < 0 ? frc : rc;
}

int dsm_stream_submit(struct dsm_stream *st, struct dsm_stream_job *job)
{
	if (job->status != DSM_STREAM_IDLE && job->status != DSM_STREAM_DONE && job->status >= 0)
		return dsm_fail(DSM_EARG, "streamer: job submitted twice");
	if (job->n_segments == 0)
		return dsm_fail(DSM_EARG, "streamer: job not initialised");
	job->status = DSM_STREAM_QUEUED;
	job->failed = 0;
	job->error[0] = '\0';
	job->next_seg = 0;
	job->next_pos = 0;
	job->in_flight = 0;
	job->listed = 0;
	job->queue_next = NULL;
	job->done_next = NULL;
	for (int i = 0; i < job->n_ranges; i++)
		job->data[i] = NULL;
	if (st->queue_tail)
		st->queue_tail->queue_next = job;
	else
		st->queue_head = job;
	st->queue_tail = job;
	st->outstanding++;
	return fill(st);
}

int dsm_stream_poll(struct dsm_stream *st)
{
	uint64_t before = st->stats.jobs;
	for (;;) {
		int r = reap_one(st, 0);
		if (r < 0)
			return r;
		if (r == 0)
			break;
	}
	return (int)(st->stats.jobs - before);
}

static void unlink_done(struct dsm_stream *st, struct dsm_stream_job *job)
{
	struct dsm_stream_job **p = &st->done_head, *prev = NULL;
	while (*p && *p != job) {
		prev = *p;
		p = &(*p)->done_next;
	}
	if (!*p)
		return;
	*p = job->done_next;
	if (st->done_tail == job)
		st->done_tail = prev;
	job->done_next = NULL;
	job->listed = 0;
}

static int job_result(struct dsm_stream_job *job)
{
	if (job->status < 0)
		return dsm_fail(job->status, "%s", job->error);
	return 0;
}

int dsm_stream_wait(struct dsm_stream *st, struct dsm_stream_job *job)
{
	while (job->status == DSM_STREAM_QUEUED) {
		int r = reap_one(st, 1);
		if (r < 0)
			return r;
		if (r == 0 && job->status == DSM_STREAM_QUEUED)
			return dsm_fail(DSM_EIO, "streamer: a job is queued but no read is in flight");
	}
	if (job->listed)
		unlink_done(st, job);
	return job_result(job);
}

int dsm_stream_wait_any(struct dsm_stream *st, struct dsm_stream_job **out)
{
	*out = NULL;
	while (!st->done_head) {
		if (st->outstanding == 0)
			return 0;
		int r = reap_one(st, 1);
		if (r < 0)
			return r;
		if (r == 0 && !st->done_head)
			return dsm_fail(DSM_EIO, "streamer: %u jobs outstanding but no read is in flight", st->outstanding);
	}
	struct dsm_stream_job *job = st->done_head;
	unlink_done(st, job);
	*out = job;
	return 1;
}

int dsm_stream_busy(const struct dsm_stream *st)
{
	return st->outstanding > 0 || st->done_head != NULL;
}

void dsm_stream_get_stats(const struct dsm_stream *st, struct dsm_stream_stats *s)
{
	*s = st->stats;
	if (st->in_flight)
		s->busy_seconds += now_seconds() - st->busy_since;
}

void dsm_stream_reset_stats(struct dsm_stream *st)
{
	memset(&st->stats, 0, sizeof st->stats);
	if (st->in_flight)
		st->busy_since = now_seconds();
}

void dsm_stream_close(struct dsm_stream *st)
{
	if (!st)
		return;
	/* Jobs that have not started are failed; the one being issued finishes; then everything in flight is
	 * drained, so that no buffer is written after its owner is told the streamer is gone. */
	struct dsm_stream_job *keep = NULL;
	for (struct dsm_stream_job *j = st->queue_head; j;) {
		struct dsm_stream_job *next = j->queue_next;
		j->queue_next = NULL;
		if (j->in_flight == 0) {
			j->status = DSM_EIO;
			snprintf(j->error, sizeof j->error, "streamer closed before the read was issued");
			st->outstanding--;
		} else {
			keep = j;
		}
		j = next;
	}
	st->queue_head = st->queue_tail = keep;
	while (st->reqs && st->in_flight > 0)
		if (reap_one(st, 1) <= 0)
			break;
	if (st->have_ring)
		st->io->ring_exit(st->io->ctx, &st->ring);
	for (int i = 0; st->files && i < st->n_files; i++) {
		if (st->files[i].fd >= 0)
			st->io->close(st->io->ctx, st->files[i].fd);
		free(st->files[i].path);
	}
	free(st->files);
	free(st->reqs);
	free(st);
}
