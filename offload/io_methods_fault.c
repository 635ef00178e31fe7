/* A fault-injecting I/O method table over another one (tests only), after SQLite's test_vfs.c.
 *
 * Reads are numbered in submission order (prep_read and pread alike, from 1). A completion is looked up by
 * its user_data to find the read it answers; rules then alter its result. The bytes in the buffer are
 * always what the base table read, so a test that passes proves the streamer never used a byte it was
 * not told was there. */
#include "io_methods.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct pending_read {
	uint64_t user_data;
	uint64_t ordinal;
	int fd;
	uint64_t offset;
};

struct dsm_io_fault {
	struct dsm_io_methods methods;   /* this table; ctx points back here */
	const struct dsm_io_methods *base;
	struct dsm_fault_rule rules[DSM_FAULT_MAX_RULES];
	int n_rules;
	uint64_t reads;
	struct pending_read *pending;
	size_t n_pending, cap_pending;
	char **fd_paths;                  /* fd -> path, for TRUNCATE rules */
	int n_fd_paths;
};

static int rule_matches(const struct dsm_fault_rule *r, uint64_t n)
{
	if (r->count && r->fired >= r->count)
		return 0;
	if (r->first == 0)
		return 1;
	if (n == r->first)
		return 1;
	return r->every && n > r->first && (n - r->first) % r->every == 0;
}

static int path_matches(const struct dsm_io_fault *f, const struct dsm_fault_rule *r, int fd)
{
	if (!r->path)
		return 1;
	if (fd < 0 || fd >= f->n_fd_paths || !f->fd_paths[fd])
		return 0;
	size_t a = strlen(f->fd_paths[fd]), b = strlen(r->path);
	return a >= b && strcmp(f->fd_paths[fd] + a - b, r->path) == 0;
}

/* The result the streamer sees for read number n of fd at offset, which really returned res. */
static long alter_result(struct dsm_io_fault *f, uint64_t n, int fd, uint64_t offset, long res)
{
	for (int i = 0; i < f->n_rules; i++) {
		struct dsm_fault_rule *r = &f->rules[i];
		if (r->kind != DSM_FAULT_TRUNCATE || !path_matches(f, r, fd) || !rule_matches(r, n))
			continue;
		if (res > 0 && offset + (uint64_t)res > r->offset) {
			res = offset >= r->offset ? 0 : (long)(r->offset - offset);
			r->fired++;
		}
	}
	for (int i = 0; i < f->n_rules; i++) {
		struct dsm_fault_rule *r = &f->rules[i];
		if ((r->kind != DSM_FAULT_SHORT && r->kind != DSM_FAULT_ERROR) || !path_matches(f, r, fd) ||
		    !rule_matches(r, n))
			continue;
		if (r->kind == DSM_FAULT_ERROR) {
			r->fired++;
			return -r->arg;
		}
		if (res > 1) {
			long k = r->arg > 0 && r->arg < res ? r->arg : res / 2;
			r->fired++;
			return k;
		}
	}
	return res;
}

static int fault_for(struct dsm_io_fault *f, enum dsm_fault_kind kind)
{
	for (int i = 0; i < f->n_rules; i++) {
		struct dsm_fault_rule *r = &f->rules[i];
		if (r->kind == kind && (!r->count || r->fired < r->count)) {
			r->fired++;
			return kind == DSM_FAULT_OPEN_DIRECT ? -EINVAL : -r->arg;
		}
	}
	return 0;
}

static int fault_open(void *ctx, const char *path, int direct)
{
	struct dsm_io_fault *f = ctx;
	if (direct) {
		int e = fault_for(f, DSM_FAULT_OPEN_DIRECT);
		if (e)
			return e;
	}
	int fd = f->base->open(f->base->ctx, path, direct);
	if (fd < 0)
		return fd;
	if (fd >= f->n_fd_paths) {
		int n = fd + 16;
		char **v = realloc(f->fd_paths, (size_t)n * sizeof *v);
		if (!v) {
			f->base->close(f->base->ctx, fd);
			return -ENOMEM;
		}
		memset(v + f->n_fd_paths, 0, (size_t)(n - f->n_fd_paths) * sizeof *v);
		f->fd_paths = v;
		f->n_fd_paths = n;
	}
	free(f->fd_paths[fd]);
	f->fd_paths[fd] = strdup(path);
	return fd;
}

static int fault_close(void *ctx, int fd)
{
	struct dsm_io_fault *f = ctx;
	if (fd >= 0 && fd < f->n_fd_paths) {
		free(f->fd_paths[fd]);
		f->fd_paths[fd] = NULL;
	}
	return f->base->close(f->base->ctx, fd);
}

static long fault_pread(void *ctx, int fd, void *buf, size_t len, uint64_t offset)
{
	struct dsm_io_fault *f = ctx;
	uint64_t n = ++f->reads;
	long r = f->base->pread(f->base->ctx, fd, buf, len, offset);
	return alter_result(f, n, fd, offset, r);
}

static int64_t fault_size(void *ctx, int fd)
{
	struct dsm_io_fault *f = ctx;
	int64_t size = f->base->size(f->base->ctx, fd);
	for (int i = 0; size >= 0 && i < f->n_rules; i++) {
		const struct dsm_fault_rule *r = &f->rules[i];
		if (r->kind == DSM_FAULT_TRUNCATE && path_matches(f, r, fd) && (uint64_t)size > r->offset)
			size = (int64_t)r->offset;
	}
	return size;
}

static int fault_lock(void *ctx, void *addr, size_t len)
{
	struct dsm_io_fault *f = ctx;
	int e = fault_for(f, DSM_FAULT_LOCK);
	return e ? e : f->base->lock(f->base->ctx, addr, len);
}

static int fault_unlock(void *ctx, void *addr, size_t len)
{
	struct dsm_io_fault *f = ctx;
	return f->base->unlock(f->base->ctx, addr, len);
}

static int fault_ring_init(void *ctx, struct io_uring *ring, unsigned entries)
{
	struct dsm_io_fault *f = ctx;
	int e = fault_for(f, DSM_FAULT_RING);
	return e ? e : f->base->ring_init(f->base->ctx, ring, entries);
}

static void fault_ring_exit(void *ctx, struct io_uring *ring)
{
	struct dsm_io_fault *f = ctx;
	f->base->ring_exit(f->base->ctx, ring);
}

static int fault_register_buffers(void *ctx, struct io_uring *ring, const struct iovec *iov, unsigned n)
{
	struct dsm_io_fault *f = ctx;
	int e = fault_for(f, DSM_FAULT_REGISTER);
	return e ? e : f->base->register_buffers(f->base->ctx, ring, iov, n);
}

static int fault_prep_read(void *ctx, struct io_uring *ring, const struct dsm_io_read *rd)
{
	struct dsm_io_fault *f = ctx;
	if (f->n_pending == f->cap_pending) {
		size_t cap = f->cap_pending ? 2 * f->cap_pending : 64;
		struct pending_read *v = realloc(f->pending, cap * sizeof *v);
		if (!v)
			return -ENOMEM;
		f->pending = v;
		f->cap_pending = cap;
	}
	int r = f->base->prep_read(f->base->ctx, ring, rd);
	if (r < 0)
		return r;
	f->pending[f->n_pending++] = (struct pending_read){
		.user_data = rd->user_data, .ordinal = ++f->reads, .fd = rd->fd, .offset = rd->offset };
	return 0;
}

static int fault_submit(void *ctx, struct io_uring *ring)
{
	struct dsm_io_fault *f = ctx;
	return f->base->submit(f->base->ctx, ring);
}

static int fault_reap(void *ctx, struct io_uring *ring, struct dsm_io_completion *c, int wait)
{
	struct dsm_io_fault *f = ctx;
	int r = f->base->reap(f->base->ctx, ring, c, wait);
	if (r <= 0)
		return r;
	for (size_t i = 0; i < f->n_pending; i++) {
		if (f->pending[i].user_data != c->user_data)
			continue;
		struct pending_read p = f->pending[i];
		f->pending[i] = f->pending[--f->n_pending];
		c->res = (int)alter_result(f, p.ordinal, p.fd, p.offset, c->res);
		break;
	}
	return 1;
}

int dsm_io_fault_new(struct dsm_io_fault **out, const struct dsm_io_methods *base,
		     const struct dsm_io_methods **methods)
{
	struct dsm_io_fault *f = calloc(1, sizeof *f);
	if (!f)
		return -ENOMEM;
	f->base = base ? base : &dsm_io_default;
	f->methods = (struct dsm_io_methods){
		.version = DSM_IO_METHODS_VERSION,
		.name = "fault",
		.ctx = f,
		.open = fault_open,
		.close = fault_close,
		.pread = fault_pread,
		.size = fault_size,
		.lock = fault_lock,
		.unlock = fault_unlock,
		.ring_init = fault_ring_init,
		.ring_exit = fault_ring_exit,
		.register_buffers = fault_register_buffers,
		.prep_read = fault_prep_read,
		.submit = fault_submit,
		.reap = fault_reap,
	};
	*out = f;
	*methods = &f->methods;
	return 0;
}

void dsm_io_fault_free(struct dsm_io_fault *f)
{
	if (!f)
		return;
	for (int i = 0; i < f->n_fd_paths; i++)
		free(f->fd_paths[i]);
	free(f->fd_paths);
	free(f->pending);
	free(f);
}

int dsm_io_fault_add(struct dsm_io_fault *f, const struct dsm_fault_rule *rule)
{
	if (f->n_rules == DSM_FAULT_MAX_RULES)
		return -ENOSPC;
	f->rules[f->n_rules] = *rule;
	f->rules[f->n_rules].fired = 0;
	return f->n_rules++;
}

void dsm_io_fault_clear(struct dsm_io_fault *f)
{
	f->n_rules = 0;
	f->reads = 0;
}

const struct dsm_fault_rule *dsm_io_fault_rule(const struct dsm_io_fault *f, int index)
{
	return index >= 0 && index < f->n_rules ? &f->rules[index] : NULL;
}

uint64_t dsm_io_fault_reads(const struct dsm_io_fault *f)
{
	return f->reads;
}
