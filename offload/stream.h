/* The streamer: reads byte ranges of the checkpoint's shard files (the tensors of cold experts) with
 * io_uring and O_DIRECT into caller-owned buffers, usually slots of a pinned dsm_pool registered with the
 * ring.
 *
 * A job is up to DSM_STREAM_MAX_RANGES ranges (an expert's gate, up and down weights). Each range is
 * rounded out to the direct-I/O alignment; ranges of one file closer than DSM_STREAM_MERGE_GAP are read as
 * one segment; segments are cut into reads of at most chunk_bytes, of which at most queue_depth are in
 * flight. When a job completes, data[i] points at the exact bytes of range i inside the job's buffer
 * ("trimmed": the padding around them is ignored).
 *
 * Completions: a short read resumes from where it stopped (rounded down to the alignment under O_DIRECT);
 * -EAGAIN, -EINTR and -ECANCELED requeue the read (at most max_retries times in a row without
 * progress); the end of the file inside a range gives DSM_ETRUNCATED; any other error gives DSM_EIO. Every
 * error names the file, the tensor and the offset. The first error of a job wins; the job's other reads
 * are still drained, so a buffer is never written after its job is reported.
 *
 * Where O_DIRECT is refused (open or the first read fails with EINVAL), the file is read buffered; a
 * file on tmpfs is read buffered as well (the bytes already live in DRAM). Where io_uring is unavailable
 * (disabled, or blocked by a container's seccomp profile) reads are synchronous preads. Each such
 * fallback leaves one line in dsm_stream_warnings() for the caller to print once.
 *
 * A streamer belongs to one thread. */
#ifndef DSM_STREAM_H
#define DSM_STREAM_H

#include "io_methods.h"
#include "pool.h"

#include <stddef.h>
#include <stdint.h>

#define DSM_STREAM_MAX_RANGES 4
/* Ranges of one file closer than this are read as one segment. */
#define DSM_STREAM_MERGE_GAP (64u << 10)

enum dsm_stream_flags {
	DSM_STREAM_BUFFERED = 1,  /* never O_DIRECT */
	DSM_STREAM_SYNC = 2,      /* never io_uring: synchronous preads */
};

struct dsm_stream_opts {
	unsigned queue_depth;     /* reads in flight (default 32) */
	size_t chunk_bytes;       /* largest single read (default 1 MiB; rounded to the alignment) */
	unsigned flags;           /* dsm_stream_flags */
	unsigned max_retries;     /* requeues of one read without progress (default 64) */
	const struct dsm_io_methods *io; /* NULL: dsm_io_default */
};

struct dsm_stream_range {
	int file;                 /* index into the paths given to dsm_stream_open */
	uint64_t offset;          /* absolute file offset of the first byte wanted */
	uint64_t nbytes;
	const char *name;         /* tensor name for messages; must outlive the job */
};

enum dsm_stream_status {
	DSM_STREAM_DONE = 0,      /* status < 0: a DSM_E* error, message in error[] */
	DSM_STREAM_IDLE = 1,
	DSM_STREAM_QUEUED = 2,    /* submitted, not complete */
};

struct dsm_stream_segment {
	int file;
	uint64_t offset;          /* aligned file offset */
	uint64_t need;            /* bytes that must arrive (the aligned tail past the end of file may not) */
	uint64_t len;             /* aligned length */
	size_t buf_offset;        /* where the segment starts in buf (aligned) */
	const char *name;         /* name of its first range, for messages */
};

struct dsm_stream_job {
	/* Set by dsm_stream_job_init. */
	int n_ranges;
	struct dsm_stream_range range[DSM_STREAM_MAX_RANGES];
	uint8_t *buf;             /* caller's buffer, aligned to dsm_stream_alignment() */
	size_t buf_bytes;
	int buf_index;            /* io_uring fixed buffer index of buf, -1 when none */
	uint64_t user;            /* free for the caller */
	/* Results, valid when status == DSM_STREAM_DONE. */
	const uint8_t *data[DSM_STREAM_MAX_RANGES]; /* range i's bytes inside buf */
	int status;               /* enum dsm_stream_status, or a negative DSM_E* code */
	char error[320];          /* message of the first error */
	/* Private to the streamer. */
	int failed;               /* first error (status takes it when the last read has drained) */
	int n_segments;
	struct dsm_stream_segment seg[DSM_STREAM_MAX_RANGES];
	int next_seg;             /* cursor of reads not yet issued */
	uint64_t next_pos;
	unsigned in_flight;
	struct dsm_stream_job *queue_next; /* queue of jobs with reads to issue */
	struct dsm_stream_job *done_next;  /* list of completed jobs not yet delivered */
	int listed;               /* on the done list */
};

struct dsm_stream_stats {
	uint64_t jobs;            /* jobs completed (with or without error) */
	uint64_t reads;           /* reads issued, retries included */
	uint64_t bytes_wanted;    /* bytes of the ranges of completed jobs */
	uint64_t bytes_read;      /* bytes the reads returned (alignment padding and retries included) */
	uint64_t short_reads, retries, errors;
	double busy_seconds;      /* time with at least one read in flight */
	double wait_seconds;      /* time the owner spent blocked in dsm_stream_wait* */
};

struct dsm_stream;

/* Opens the n files (read-only, O_DIRECT unless refused). Returns 0 or a negative DSM_E* code with a
 * message naming the file. */
int dsm_stream_open(struct dsm_stream **out, const char *const *paths, int n, const struct dsm_stream_opts *o);
/* Waits for reads in flight, then closes the files and the ring. Accepts NULL. Jobs still queued are
 * left with status DSM_EIO ("streamer closed"). */
void dsm_stream_close(struct dsm_stream *st);

/* Lines (each ending in '\n') describing fallbacks taken so far, "" when none. */
const char *dsm_stream_warnings(const struct dsm_stream *st);
/* Alignment of offsets, lengths and buffers (4096 or the device's larger one). */
size_t dsm_stream_alignment(const struct dsm_stream *st);
/* Whether file i is read with O_DIRECT, and whether io_uring is used. */
int dsm_stream_file_direct(const struct dsm_stream *st, int file);
int dsm_stream_uses_ring(const struct dsm_stream *st);
uint64_t dsm_stream_file_size(const struct dsm_stream *st, int file);

/* Registers the pool's slots as fixed buffers. A refusal is not an error: plain reads are used and a
 * warning is left. Returns 0 or DSM_ENOMEM. */
int dsm_stream_register_pool(struct dsm_stream *st, const struct dsm_pool *pool);
/* Index to pass as buf_index for a slot of the registered pool, -1 when none is registered. */
int dsm_stream_pool_index(const struct dsm_stream *st, const struct dsm_pool *pool, unsigned slot);

/* Bytes of buffer a job of these ranges needs. 0 with a DSM_EARG message when the ranges are bad. */
size_t dsm_stream_job_bytes(const struct dsm_stream *st, const struct dsm_stream_range *r, int n);
/* Prepares job (which the caller owns and keeps in place until it completes). buf must be aligned and
 * hold dsm_stream_job_bytes(). Returns 0 or DSM_EARG / DSM_ELAYOUT (a range past the end of its file). */
int dsm_stream_job_init(const struct dsm_stream *st, struct dsm_stream_job *job, const struct dsm_stream_range *r,
			int n, void *buf, size_t buf_bytes, int buf_index);

/* Queues job and issues as many reads as the queue depth allows. Returns 0 or a negative code (the ring
 * itself failed). */
int dsm_stream_submit(struct dsm_stream *st, struct dsm_stream_job *job);
/* Without blocking: takes completions and issues further reads. Returns the number of jobs that
 * completed, or a negative code. */
int dsm_stream_poll(struct dsm_stream *st);
/* Blocks until job completes. Returns its status: 0, or its error code with its message set through
 * dsm_fail. A job waited for here is not returned by dsm_stream_wait_any. */
int dsm_stream_wait(struct dsm_stream *st, struct dsm_stream_job *job);
/* Blocks until some submitted job completes (jobs complete in any order) and returns 1 with *job set;
 * returns 0 when no job is outstanding or undelivered; a negative code when the ring failed. The job's
 * own status says whether its reads succeeded. */
int dsm_stream_wait_any(struct dsm_stream *st, struct dsm_stream_job **job);
/* Whether reads or undelivered completions remain. */
int dsm_stream_busy(const struct dsm_stream *st);

void dsm_stream_get_stats(const struct dsm_stream *st, struct dsm_stream_stats *s);
void dsm_stream_reset_stats(struct dsm_stream *st);

#endif
