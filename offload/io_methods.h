/* The I/O method table under the streamer and the buffer pool, in the spirit of SQLite's VFS: every
 * system call that reads expert bytes or pins memory goes through one versioned table of function
 * pointers, so that tests can put a fault-injecting table (io_methods_fault.c) under the real one and
 * drive every error path. The default table calls the kernel directly; its cost is one indirect call per
 * request.
 *
 * All methods return >= 0 on success and -errno on failure; none touches the global errno. */
#ifndef DSM_IO_METHODS_H
#define DSM_IO_METHODS_H

#include <liburing.h>
#include <stddef.h>
#include <stdint.h>

#define DSM_IO_METHODS_VERSION 1

/* One read, as the streamer submits it. user_data comes back with the completion. */
struct dsm_io_read {
	int fd;
	void *buf;
	size_t len;
	uint64_t offset;
	int buf_index;        /* registered buffer index, -1 when the buffer is not registered */
	uint64_t user_data;
};

/* One completion: the user_data of a read and its result (bytes read, or -errno). */
struct dsm_io_completion {
	uint64_t user_data;
	int res;
};

struct dsm_io_methods {
	int version;          /* DSM_IO_METHODS_VERSION */
	const char *name;     /* "default", "fault", ... (for messages) */
	void *ctx;            /* passed to every method */

	/* Files. open returns an fd or -errno; direct asks for O_DIRECT. */
	int (*open)(void *ctx, const char *path, int direct);
	int (*close)(void *ctx, int fd);
	/* Synchronous read (the synchronous fallback and plain benchmark reads): bytes read (short at end of
	 * file) or -errno. */
	long (*pread)(void *ctx, int fd, void *buf, size_t len, uint64_t offset);
	/* Current size of an open file in bytes, or -errno. */
	int64_t (*size)(void *ctx, int fd);

	/* Memory pinning (mlock/munlock). */
	int (*lock)(void *ctx, void *addr, size_t len);
	int (*unlock)(void *ctx, void *addr, size_t len);

	/* io_uring. ring_init may fail (-ENOSYS, -EPERM in containers): the streamer then reads
	 * synchronously. */
	int (*ring_init)(void *ctx, struct io_uring *ring, unsigned entries);
	void (*ring_exit)(void *ctx, struct io_uring *ring);
	int (*register_buffers)(void *ctx, struct io_uring *ring, const struct iovec *iov, unsigned n);
	/* Queues one read (no system call). Returns 0, or -EBUSY when the submission queue is full. */
	int (*prep_read)(void *ctx, struct io_uring *ring, const struct dsm_io_read *rd);
	/* Submits what is queued: number submitted or -errno. */
	int (*submit)(void *ctx, struct io_uring *ring);
	/* Takes one completion; waits for it when wait is set. Returns 1 with *c filled, 0 when none is
	 * ready and wait is clear, or -errno. */
	int (*reap)(void *ctx, struct io_uring *ring, struct dsm_io_completion *c, int wait);
};

/* The table that calls the kernel. */
extern const struct dsm_io_methods dsm_io_default;

/* ---- Fault injection (tests only; io_methods_fault.c) ----
 *
 * A fault table wraps a base table and alters results by rule. Rules match reads by order of submission
 * (the n-th read, counting from 1, every k-th read) and act on the completion, so the bytes really read
 * are correct and only the result the streamer sees changes. */
enum dsm_fault_kind {
	DSM_FAULT_NONE = 0,
	DSM_FAULT_SHORT,      /* report fewer bytes than were read (arg: bytes to report, 0 = half) */
	DSM_FAULT_ERROR,      /* report -arg (e.g. EIO, EAGAIN, ECANCELED) instead of the result */
	DSM_FAULT_TRUNCATE,   /* the file ends at `offset` (as if truncated while running): reads past it
	                       * are short or return 0, and its size says so */
	DSM_FAULT_OPEN_DIRECT,/* open with O_DIRECT fails with -EINVAL (as on a file system without it) */
	DSM_FAULT_LOCK,       /* mlock fails with -arg (e.g. ENOMEM, EPERM) */
	DSM_FAULT_RING,       /* ring_init fails with -arg (e.g. ENOSYS, EPERM) */
	DSM_FAULT_REGISTER,   /* register_buffers fails with -arg */
};

struct dsm_fault_rule {
	enum dsm_fault_kind kind;
	uint64_t first;       /* first read (1-based) the rule applies to; 0 = every read */
	uint64_t every;       /* then every `every` reads after it; 0 = only `first` */
	uint64_t count;       /* at most this many times; 0 = unlimited */
	int arg;              /* errno or bytes, see the kinds */
	uint64_t offset;      /* DSM_FAULT_TRUNCATE: new end of the file */
	const char *path;     /* reads of files whose path ends with this (NULL: every file); the string
	                       * must outlive the rule */
	uint64_t fired;       /* how many times it acted (read back by tests) */
};

#define DSM_FAULT_MAX_RULES 8

struct dsm_io_fault;

/* Creates a fault table over base (NULL: dsm_io_default). *methods points into the returned object and
 * lives as long as it. Returns 0 or -ENOMEM. */
int dsm_io_fault_new(struct dsm_io_fault **out, const struct dsm_io_methods *base,
		     const struct dsm_io_methods **methods);
void dsm_io_fault_free(struct dsm_io_fault *f);
/* Adds a rule; returns its index (for dsm_io_fault_rule) or -ENOSPC. */
int dsm_io_fault_add(struct dsm_io_fault *f, const struct dsm_fault_rule *rule);
/* Removes every rule and resets the read counter. */
void dsm_io_fault_clear(struct dsm_io_fault *f);
const struct dsm_fault_rule *dsm_io_fault_rule(const struct dsm_io_fault *f, int index);
/* Reads seen so far (prep_read and pread calls). */
uint64_t dsm_io_fault_reads(const struct dsm_io_fault *f);

#endif
