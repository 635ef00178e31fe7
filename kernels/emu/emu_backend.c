/* The emu backend (emu_backend.h): device memory under a budget, ops delegated to an owned cpu backend, and
 * queues that really run concurrently with the caller: a worker thread per queue. */
#include "emu/emu_backend.h"

#include "error.h"
#include "expert_kernels.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Every allocation starts with this header, so that free knows its size and catches double frees;
 * 64 bytes keeps the returned pointer 64-byte aligned. */
#define EMU_HEADER 64
#define EMU_MAGIC 0x656d7564657669ceull

struct emu_header {
	uint64_t magic;
	size_t bytes;           /* counted bytes (request rounded up to 64) */
};

/* One piece of work in a queue. An op's arguments are copied at submission (weight descriptors and the
 * attention mask table too); the data they point to is read when the worker runs the job. */
enum job_kind { JOB_COPY, JOB_OP, JOB_RECORD, JOB_WAIT };

struct emu_job {
	struct emu_job *next;
	enum job_kind kind;
	struct dsm_event *ev;                   /* JOB_RECORD, JOB_WAIT */
	void *dst;                              /* JOB_COPY */
	const void *src;
	size_t bytes;
	enum dsm_op op;                         /* JOB_OP: the op and its arguments */
	struct dsm_mat w;
	struct dsm_ffn_weights ffn;
	int64_t n, d, n_heads, k, ldx, ldh, ldy;
	float eps;                              /* also scale's factor */
	int interleaved, ue8m0;
	enum dsm_dtype xt, yt;                  /* convert: src and dst, as JOB_COPY's */
	const float *x, *wv, *b, *cos, *sin, *keys;
	float *y;
	int32_t *idx;
	union {
		struct dsm_matmul_heads_args heads;
		struct dsm_attn_full_args full;
		struct dsm_attn_latent_args latent;
		struct dsm_route_args route;
	} a;
	struct dsm_attn_mask *mask;             /* owned copy of attn_full's mask table */
	const void **table;                     /* owned copy of gather's block table, or attn_latent's two */
	int injected;                           /* fails (dsm_emu_fail_op) */
};

struct dsm_queue {
	struct emu_backend *eb;
	struct dsm_queue *next;                 /* the backend's list of queues */
	pthread_t thread;
	struct dsm_backend *cpu;                /* the worker's own cpu backend (one thread: one device) */
	struct emu_job *head, *tail;
	int running;                            /* the worker is running a job */
	int held;                               /* dsm_emu_queue_hold */
	int stop, ready, create_rc;
	int rc;                                 /* first failure not yet returned */
	char msg[512];
};

struct dsm_event {
	int pending;                            /* records submitted and not reached */
	double t;                               /* when the last record was reached */
	int rc;                                 /* its queue's unreturned failure at that point */
	struct dsm_queue *q;
	char msg[512];
};

struct emu_backend {
	struct dsm_backend be;  /* first: a struct dsm_backend * points here */
	struct dsm_backend *cpu;
	struct dsm_backend_options opts;
	struct dsm_attn_shape reserve; /* the last reserve asked for, for queues created later */
	struct dsm_queue *queues, *cur;
	int fail_in;            /* dsm_emu_fail_op: the fail_in-th next queued op fails (0: none) */
	struct emu_range { uintptr_t lo, hi; } *ranges; /* the live allocations, by address */
	size_t n_ranges, cap_ranges;
	pthread_mutex_t mu;     /* guards the queues, their jobs and the events */
	pthread_cond_t cv;      /* broadcast on every change of them */
	struct dsm_emu_stats st;
};

static struct emu_backend *emu_of(struct dsm_backend *be)
{
	return (struct emu_backend *)be;
}

static struct dsm_backend *cpu_of_emu(struct dsm_backend *be)
{
	return ((struct emu_backend *)be)->cpu;
}

/* ---- The queues' workers ---- */

static int run_op(struct dsm_backend *c, struct emu_job *j)
{
	switch (j->op) {
	case DSM_OP_MATMUL: return c->matmul(c, &j->w, j->n, j->x, j->y);
	case DSM_OP_MATMUL_T: return c->matmul_t(c, &j->w, j->n, j->x, j->y);
	case DSM_OP_MATMUL_HEADS: return c->matmul_heads(c, &j->a.heads);
	case DSM_OP_FFN: return c->ffn(c, &j->ffn, j->n, j->x, j->y);
	case DSM_OP_RMSNORM: return c->rmsnorm(c, j->n, j->d, j->x, j->ldx, j->wv, j->eps, j->y);
	case DSM_OP_LAYERNORM: return c->layernorm(c, j->n, j->d, j->x, j->wv, j->b, j->eps, j->y);
	case DSM_OP_ROPE:
		return c->rope(c, j->n, j->n_heads, j->d, j->y, j->ldx, j->ldh, j->cos, j->sin, j->interleaved);
	case DSM_OP_HADAMARD: return c->hadamard(c, j->n, j->d, j->y);
	case DSM_OP_ATTN_FULL: return c->attn_full(c, &j->a.full);
	case DSM_OP_ATTN_LATENT: return c->attn_latent(c, &j->a.latent);
	case DSM_OP_INDEXER_SCORES:
		return c->indexer_scores(c, j->n_heads, j->d, j->x, j->wv, j->keys, (const float *const *)j->table, j->k, j->n,
					 j->y);
	case DSM_OP_TOPK: return c->topk(c, j->x, j->n, j->k, j->idx);
	case DSM_OP_ROUTE: return c->route(c, &j->a.route);
	case DSM_OP_ADD: return c->add(c, j->n, j->y, j->x);
	case DSM_OP_SCALE: return c->scale(c, j->n, j->y, j->eps);
	case DSM_OP_CONVERT: return c->convert(c, j->n, j->d, j->src, j->xt, j->ldx, j->dst, j->yt, j->ldy);
	case DSM_OP_FP8_ROUND: return c->fp8_round(c, j->n, j->d, j->y, j->ue8m0);
	case DSM_OP_GATHER:
		return c->gather(c, j->n, (const void *const *)j->table, j->k, j->ldx, j->d, j->xt, j->dst, j->yt);
	default: return dsm_fail(DSM_EUNSUPPORTED, "emu: op %d cannot be queued", (int)j->op);
	}
}

/* Runs one job outside the lock; returns its result. Skipped (0) after an unreturned failure. */
static int run_job(struct dsm_queue *q, struct emu_job *j)
{
	if (j->kind == JOB_COPY) {
		if (j->bytes)
			memcpy(j->dst, j->src, j->bytes);
		return 0;
	}
	if (j->injected)
		return dsm_fail(DSM_EIO, "emu: injected failure of a queued op (dsm_emu_fail_op)");
	return run_op(q->cpu, j);
}

static void free_job(struct emu_job *j)
{
	free(j->mask);
	free(j->table);
	free(j);
}

static void *worker(void *arg)
{
	struct dsm_queue *q = arg;
	struct emu_backend *eb = q->eb;
	struct dsm_backend_options o = eb->opts;
	o.threads = 1;          /* the device: one more processor beside the caller's threads */
	o.cpu_threads = NULL;
	int rc = dsm_backend_create(&q->cpu, "cpu", &o); /* here: its OpenMP settings are this thread's */
	if (rc == 0 && q->cpu->reserve && eb->reserve.max_keys)
		rc = q->cpu->reserve(q->cpu, &eb->reserve);
	pthread_mutex_lock(&eb->mu);
	q->ready = 1;
	q->create_rc = rc;
	if (rc < 0)
		snprintf(q->msg, sizeof q->msg, "%s", dsm_errmsg());
	pthread_cond_broadcast(&eb->cv);
	while (rc == 0) {
		while (!q->stop && (!q->head || q->held))
			pthread_cond_wait(&eb->cv, &eb->mu);
		struct emu_job *j = q->head;
		if (!j)
			break; /* stopping with nothing left */
		if (j->kind == JOB_WAIT) {
			while (j->ev->pending > 0)
				pthread_cond_wait(&eb->cv, &eb->mu);
		} else if (j->kind == JOB_RECORD) {
			struct dsm_event *e = j->ev;
			e->pending--;
			e->t = dsm_wall_seconds();
			e->rc = q->rc;
			e->q = q;
			memcpy(e->msg, q->msg, sizeof e->msg);
		} else if (q->rc == 0) {
			q->running = 1;
			pthread_mutex_unlock(&eb->mu);
			double t0 = dsm_wall_seconds();
			int r = run_job(q, j);
			double busy = dsm_wall_seconds() - t0;
			pthread_mutex_lock(&eb->mu);
			q->running = 0;
			eb->st.jobs++;
			eb->st.queue_busy_seconds += busy;
			if (r < 0) {
				q->rc = r;
				snprintf(q->msg, sizeof q->msg, "%s", dsm_errmsg());
			}
		}
		q->head = j->next;
		if (!q->head)
			q->tail = NULL;
		free_job(j);
		pthread_cond_broadcast(&eb->cv);
	}
	pthread_mutex_unlock(&eb->mu);
	return NULL;
}

/* Appends job j (owned from now on) to the current queue. */
static int submit(struct emu_backend *eb, struct emu_job *j)
{
	struct dsm_queue *q = eb->cur;
	pthread_mutex_lock(&eb->mu);
	j->next = NULL;
	if (q->tail)
		q->tail->next = j;
	else
		q->head = j;
	q->tail = j;
	pthread_cond_broadcast(&eb->cv);
	pthread_mutex_unlock(&eb->mu);
	return 0;
}

static struct emu_job *new_job(enum job_kind kind)
{
	struct emu_job *j = calloc(1, sizeof *j);
	if (j)
		j->kind = kind;
	return j;
}

/* A queued op; the one dsm_emu_fail_op chose fails when its queue runs it. */
static struct emu_job *new_op(struct emu_backend *eb, enum dsm_op op)
{
	struct emu_job *j = new_job(JOB_OP);
	if (j) {
		j->op = op;
		j->injected = eb->fail_in > 0 && --eb->fail_in == 0;
	}
	return j;
}

/* A queued op holding its own copy of the caller's block tables, which the caller may change once the call returns:
 * a[0 .. n), then b[0 .. n) when b is given, in j->table. NULL (with the message) when out of memory. */
static struct emu_job *new_op_tables(struct emu_backend *eb, enum dsm_op op, const void *const *a,
				     const void *const *b, int64_t n)
{
	struct emu_job *j = new_op(eb, op);
	size_t k = (size_t)(n > 0 ? n : 0) * (b ? 2 : 1);
	if (j && k && !(j->table = malloc(sizeof *j->table * k))) {
		free(j);
		j = NULL;
	}
	if (!j) {
		dsm_fail(DSM_ENOMEM, "out of memory");
		return NULL;
	}
	if (k) {
		memcpy(j->table, a, sizeof *j->table * (size_t)n);
		if (b)
			memcpy(j->table + n, b, sizeof *j->table * (size_t)n);
	}
	return j;
}

/* Waits until q has run everything submitted to it (the lock held). */
static void drain_locked(struct emu_backend *eb, struct dsm_queue *q)
{
	while (q->head || q->running)
		pthread_cond_wait(&eb->cv, &eb->mu);
}

/* Returns q's unreturned failure with its message (the lock held), and clears it. */
static int take_failure_locked(struct dsm_queue *q)
{
	int rc = q->rc;
	if (rc < 0)
		dsm_fail(rc, "%s", q->msg);
	q->rc = 0;
	return rc;
}

static int emu_queue_create(struct dsm_backend *be, struct dsm_queue **out)
{
	struct emu_backend *eb = emu_of(be);
	*out = NULL;
	struct dsm_queue *q = calloc(1, sizeof *q);
	if (!q)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	q->eb = eb;
	if (pthread_create(&q->thread, NULL, worker, q) != 0) {
		free(q);
		return dsm_fail(DSM_ENOMEM, "emu: cannot start a queue's thread");
	}
	pthread_mutex_lock(&eb->mu);
	while (!q->ready)
		pthread_cond_wait(&eb->cv, &eb->mu);
	int rc = q->create_rc;
	if (rc == 0) {
		q->next = eb->queues;
		eb->queues = q;
	}
	pthread_mutex_unlock(&eb->mu);
	if (rc < 0) {
		pthread_join(q->thread, NULL);
		dsm_fail(rc, "emu queue: %s", q->msg);
		dsm_backend_destroy(q->cpu);
		free(q);
		return rc;
	}
	*out = q;
	return 0;
}

static void emu_queue_destroy(struct dsm_backend *be, struct dsm_queue *q)
{
	struct emu_backend *eb = emu_of(be);
	if (!q)
		return;
	pthread_mutex_lock(&eb->mu);
	q->held = 0;
	q->stop = 1;
	pthread_cond_broadcast(&eb->cv);
	for (struct dsm_queue **p = &eb->queues; *p; p = &(*p)->next)
		if (*p == q) {
			*p = q->next;
			break;
		}
	if (eb->cur == q)
		eb->cur = NULL;
	pthread_mutex_unlock(&eb->mu);
	pthread_join(q->thread, NULL);
	dsm_backend_destroy(q->cpu);
	free(q);
}

static void emu_set_queue(struct dsm_backend *be, struct dsm_queue *q)
{
	emu_of(be)->cur = q;
}

static int emu_event_create(struct dsm_backend *be, struct dsm_event **e)
{
	(void)be;
	if (!(*e = calloc(1, sizeof **e)))
		return dsm_fail(DSM_ENOMEM, "out of memory");
	return 0;
}

static void emu_event_destroy(struct dsm_backend *be, struct dsm_event *e)
{
	struct emu_backend *eb = emu_of(be);
	if (!e)
		return;
	pthread_mutex_lock(&eb->mu); /* a record or wait in a queue may still refer to it */
	while (e->pending > 0)
		pthread_cond_wait(&eb->cv, &eb->mu);
	for (struct dsm_queue *q = eb->queues; q; q = q->next)
		for (struct emu_job *j = q->head; j; j = j->next)
			if (j->ev == e) {
				drain_locked(eb, q);
				break;
			}
	pthread_mutex_unlock(&eb->mu);
	free(e);
}

static int emu_event_record(struct dsm_backend *be, struct dsm_event *e, struct dsm_queue *q)
{
	struct emu_backend *eb = emu_of(be);
	struct emu_job *j = new_job(JOB_RECORD);
	if (!j)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	j->ev = e;
	pthread_mutex_lock(&eb->mu);
	e->pending++;
	pthread_mutex_unlock(&eb->mu);
	struct dsm_queue *cur = eb->cur;
	eb->cur = q;
	submit(eb, j);
	eb->cur = cur;
	return 0;
}

static int emu_queue_wait(struct dsm_backend *be, struct dsm_queue *q, struct dsm_event *e)
{
	struct emu_backend *eb = emu_of(be);
	struct emu_job *j = new_job(JOB_WAIT);
	if (!j)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	j->ev = e;
	struct dsm_queue *cur = eb->cur;
	eb->cur = q;
	submit(eb, j);
	eb->cur = cur;
	return 0;
}

static int emu_event_sync(struct dsm_backend *be, struct dsm_event *e)
{
	struct emu_backend *eb = emu_of(be);
	pthread_mutex_lock(&eb->mu);
	while (e->pending > 0)
		pthread_cond_wait(&eb->cv, &eb->mu);
	int rc = e->rc;
	if (rc < 0) {
		dsm_fail(rc, "%s", e->msg);
		if (e->q && e->q->rc == rc)
			e->q->rc = 0; /* returned now */
		e->rc = 0;
	}
	pthread_mutex_unlock(&eb->mu);
	return rc;
}

static int emu_event_elapsed(struct dsm_backend *be, struct dsm_event *a, struct dsm_event *b, double *seconds)
{
	struct emu_backend *eb = emu_of(be);
	pthread_mutex_lock(&eb->mu);
	int ok = a->pending == 0 && b->pending == 0 && a->q && b->q;
	*seconds = ok ? b->t - a->t : 0;
	pthread_mutex_unlock(&eb->mu);
	return ok ? 0 : dsm_fail(DSM_EARG, "emu: event_elapsed of an event not recorded or not completed");
}

static int emu_sync(struct dsm_backend *be)
{
	struct emu_backend *eb = emu_of(be);
	int rc = 0;
	pthread_mutex_lock(&eb->mu);
	for (struct dsm_queue *q = eb->queues; q; q = q->next) {
		drain_locked(eb, q);
		int r = take_failure_locked(q);
		if (rc == 0)
			rc = r;
	}
	pthread_mutex_unlock(&eb->mu);
	return rc;
}

void dsm_emu_fail_op(struct dsm_backend *be, int n)
{
	emu_of(be)->fail_in = n;
}

void dsm_emu_queue_hold(struct dsm_backend *be, struct dsm_queue *q, int hold)
{
	struct emu_backend *eb = emu_of(be);
	pthread_mutex_lock(&eb->mu);
	q->held = hold;
	pthread_cond_broadcast(&eb->cv);
	pthread_mutex_unlock(&eb->mu);
}

/* ---- Memory ---- */

static void emu_destroy(struct dsm_backend *be)
{
	struct emu_backend *eb = emu_of(be);
	while (eb->queues)
		emu_queue_destroy(be, eb->queues);
	dsm_backend_destroy(eb->cpu);
	free(eb->ranges);
	pthread_mutex_destroy(&eb->mu);
	pthread_cond_destroy(&eb->cv);
	free(eb);
}

static int emu_supports(const struct dsm_backend *be, enum dsm_op op, enum dsm_dtype wtype)
{
	const struct dsm_backend *c = ((const struct emu_backend *)be)->cpu;
	return c->supports(c, op, wtype);
}

/* Device memory is host memory here, so a host pointer given to the device would work, and a bug that crashes a
 * real GPU would pass in CI. So every copy and every op checks its pointers against the live allocations. */
static size_t range_at(const struct emu_backend *eb, uintptr_t p) /* the first range with lo > p */
{
	size_t a = 0, b = eb->n_ranges;
	while (a < b) {
		size_t m = (a + b) / 2;
		if (eb->ranges[m].lo <= p)
			a = m + 1;
		else
			b = m;
	}
	return a;
}

static int on_device(const struct emu_backend *eb, const void *p, size_t bytes)
{
	size_t i = range_at(eb, (uintptr_t)p);
	return i > 0 && (uintptr_t)p + bytes <= eb->ranges[i - 1].hi;
}

static int check_dev(const struct emu_backend *eb, const void *p, size_t bytes, const char *op, const char *what)
{
	if (!bytes || on_device(eb, p, bytes))
		return 0;
	return dsm_fail(DSM_EARG, "emu: %s: %s (%p, %zu bytes) is not device memory: host memory given to the device",
			op, what, p, bytes);
}

static int check_host(const struct emu_backend *eb, const void *p, size_t bytes, const char *op, const char *what)
{
	if (!bytes || !on_device(eb, p, 1))
		return 0;
	return dsm_fail(DSM_EARG, "emu: %s: %s (%p) is device memory where host memory is expected", op, what, p);
}

/* The stored rows of matrix view w and its block scales, on the device. */
static int check_mat(const struct emu_backend *eb, const struct dsm_mat *w, const char *op)
{
	size_t rows = (size_t)(w->row0 + w->rows), cols = (size_t)w->cols;
	int rc = check_dev(eb, w->data, rows * cols * dsm_dtype_size(w->dtype), op, "weight");
	if (rc == 0 && w->dtype == DSM_F8_E4M3)
		rc = check_dev(eb, w->scale, sizeof(float) * ((rows + 127) / 128) * ((cols + 127) / 128), op, "block scales");
	return rc;
}

static int add_range(struct emu_backend *eb, uintptr_t lo, uintptr_t hi)
{
	if (eb->n_ranges == eb->cap_ranges) {
		size_t cap = eb->cap_ranges ? 2 * eb->cap_ranges : 64;
		struct emu_range *r = realloc(eb->ranges, cap * sizeof *r);
		if (!r)
			return -1;
		eb->ranges = r;
		eb->cap_ranges = cap;
	}
	size_t i = range_at(eb, lo);
	memmove(eb->ranges + i + 1, eb->ranges + i, (eb->n_ranges - i) * sizeof *eb->ranges);
	eb->ranges[i] = (struct emu_range){ lo, hi };
	eb->n_ranges++;
	return 0;
}

static void remove_range(struct emu_backend *eb, uintptr_t lo)
{
	size_t i = range_at(eb, lo);
	if (i == 0 || eb->ranges[i - 1].lo != lo)
		return;
	memmove(eb->ranges + i - 1, eb->ranges + i, (eb->n_ranges - i) * sizeof *eb->ranges);
	eb->n_ranges--;
}

static void *emu_alloc(struct dsm_backend *be, size_t bytes)
{
	struct emu_backend *eb = emu_of(be);
	if (bytes > SIZE_MAX - 2 * EMU_HEADER)
		return NULL;
	size_t counted = (bytes + 63) & ~(size_t)63;
	if (counted == 0)
		counted = 64;
	if (counted > eb->st.budget - eb->st.used) {
		eb->st.failed++;
		return NULL;
	}
	unsigned char *p = aligned_alloc(64, EMU_HEADER + counted);
	if (!p)
		return NULL;
	struct emu_header *h = (struct emu_header *)p;
	h->magic = EMU_MAGIC;
	h->bytes = counted;
	if (add_range(eb, (uintptr_t)(p + EMU_HEADER), (uintptr_t)(p + EMU_HEADER + counted)) < 0) {
		free(p);
		return NULL;
	}
	eb->st.used += counted;
	eb->st.allocs++;
	if (eb->st.used > eb->st.peak)
		eb->st.peak = eb->st.used;
	return p + EMU_HEADER;
}

static void emu_free(struct dsm_backend *be, void *p)
{
	struct emu_backend *eb = emu_of(be);
	if (!p)
		return;
	struct emu_header *h = (struct emu_header *)((unsigned char *)p - EMU_HEADER);
	if (((uintptr_t)p & 63) || h->magic != EMU_MAGIC || h->bytes > eb->st.used || !eb->st.allocs) {
		eb->st.bad_frees++;
		return;
	}
	h->magic = 0; /* a second free of the same pointer counts as bad */
	remove_range(eb, (uintptr_t)p);
	eb->st.used -= h->bytes;
	eb->st.allocs--;
	free(h);
}

static int emu_mem_info(struct dsm_backend *be, size_t *free_bytes, size_t *total_bytes)
{
	struct emu_backend *eb = emu_of(be);
	*free_bytes = eb->st.budget - eb->st.used;
	*total_bytes = eb->st.budget;
	return 0;
}

static void *emu_host_alloc(struct dsm_backend *be, size_t bytes)
{
	(void)be;
	return aligned_alloc(64, (bytes + 63) & ~(size_t)63);
}

static void emu_host_free(struct dsm_backend *be, void *p)
{
	(void)be;
	free(p);
}

static int emu_copy(struct emu_backend *eb, void *dst, const void *src, size_t bytes)
{
	if (eb->cur) {
		struct emu_job *j = new_job(JOB_COPY);
		if (!j)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		j->dst = dst;
		j->src = src;
		j->bytes = bytes;
		return submit(eb, j);
	}
	if (bytes)
		memcpy(dst, src, bytes);
	return 0;
}

static int emu_copy_in(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	struct emu_backend *eb = emu_of(be);
	int rc = check_dev(eb, dst, bytes, "copy_in", "destination");
	if (rc == 0)
		rc = check_host(eb, src, bytes, "copy_in", "source");
	return rc < 0 ? rc : emu_copy(eb, dst, src, bytes);
}

static int emu_copy_out(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	struct emu_backend *eb = emu_of(be);
	int rc = check_dev(eb, src, bytes, "copy_out", "source");
	if (rc == 0)
		rc = check_host(eb, dst, bytes, "copy_out", "destination");
	return rc < 0 ? rc : emu_copy(eb, dst, src, bytes);
}

static int emu_copy_dev(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	struct emu_backend *eb = emu_of(be);
	int rc = check_dev(eb, src, bytes, "copy_dev", "source");
	if (rc == 0)
		rc = check_dev(eb, dst, bytes, "copy_dev", "destination");
	return rc < 0 ? rc : emu_copy(eb, dst, src, bytes);
}

static int emu_reserve(struct dsm_backend *be, const struct dsm_attn_shape *s)
{
	struct emu_backend *eb = emu_of(be);
	struct dsm_backend *c = eb->cpu;
	if (!c->reserve)
		return 0;
	int rc = c->reserve(c, s);
	eb->reserve = *s;
	pthread_mutex_lock(&eb->mu);
	for (struct dsm_queue *q = eb->queues; q && rc == 0; q = q->next) {
		drain_locked(eb, q);
		rc = q->cpu->reserve(q->cpu, s);
	}
	pthread_mutex_unlock(&eb->mu);
	return rc;
}

/* ---- The ops: the cpu backend's, called with the cpu backend (its ops take their own state from it), or
 * queued with a copy of their arguments while a queue is current. ---- */

#define QUEUE_OR_RUN(eb, op, j, fill) do { \
	if ((eb)->cur) { \
		struct emu_job *j = new_op((eb), op); \
		if (!j) \
			return dsm_fail(DSM_ENOMEM, "out of memory"); \
		fill; \
		return submit((eb), j); \
	} \
} while (0)

/* y[n, out] = x[n, in] . w (in either orientation): every pointer on the device. */
static int check_matmul(const struct emu_backend *eb, const struct dsm_mat *w, int64_t n, const float *x, int64_t in,
			const float *y, int64_t out, const char *op)
{
	int rc = check_mat(eb, w, op);
	if (rc == 0)
		rc = check_dev(eb, x, sizeof(float) * (size_t)(n * in), op, "input");
	if (rc == 0)
		rc = check_dev(eb, y, sizeof(float) * (size_t)(n * out), op, "output");
	return rc;
}

static int emu_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	int rc = check_matmul(emu_of(be), w, n, x, w->cols, y, w->rows, "matmul");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_MATMUL, j, (j->w = *w, j->n = n, j->x = x, j->y = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul(c, w, n, x, y);
}

static int emu_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	int rc = check_matmul(emu_of(be), w, n, x, w->rows, y, w->cols, "matmul_t");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_MATMUL_T, j, (j->w = *w, j->n = n, j->x = x, j->y = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul_t(c, w, n, x, y);
}

static int emu_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *a)
{
	const struct emu_backend *eb = emu_of(be);
	int64_t in = a->transposed ? a->head_rows : a->w->cols, out = a->transposed ? a->w->cols : a->head_rows;
	int rc = check_mat(eb, a->w, "matmul_heads");
	if (rc == 0 && a->n > 0 && a->n_heads > 0)
		rc = check_dev(eb, a->x, sizeof(float) * (size_t)((a->n - 1) * a->ldx + (a->n_heads - 1) * a->x_head + in),
			       "matmul_heads", "input");
	if (rc == 0 && a->n > 0 && a->n_heads > 0)
		rc = check_dev(eb, a->y, sizeof(float) * (size_t)((a->n - 1) * a->ldy + (a->n_heads - 1) * a->y_head + out),
			       "matmul_heads", "output");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_MATMUL_HEADS, j, (j->w = *a->w, j->a.heads = *a, j->a.heads.w = &j->w));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul_heads(c, a);
}

static int emu_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	const struct emu_backend *eb = emu_of(be);
	int rc = check_mat(eb, &w->gate, "ffn");
	if (rc == 0 && (rc = check_mat(eb, &w->up, "ffn")) == 0)
		rc = check_matmul(eb, &w->down, n, x, w->gate.cols, y, w->down.rows, "ffn");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_FFN, j, (j->ffn = *w, j->n = n, j->x = x, j->y = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->ffn(c, w, n, x, y);
}

static int emu_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w,
		       float eps, float *y)
{
	const struct emu_backend *eb = emu_of(be);
	int rc = n > 0 ? check_dev(eb, x, sizeof(float) * (size_t)((n - 1) * ldx + d), "rmsnorm", "input") : 0;
	if (rc == 0 && (rc = check_dev(eb, w, sizeof(float) * (size_t)d, "rmsnorm", "weight")) == 0)
		rc = check_dev(eb, y, sizeof(float) * (size_t)(n * d), "rmsnorm", "output");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_RMSNORM, j, (j->n = n, j->d = d, j->x = x, j->ldx = ldx, j->wv = w, j->eps = eps, j->y = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->rmsnorm(c, n, d, x, ldx, w, eps, y);
}

static int emu_layernorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w,
			 const float *b, float eps, float *y)
{
	const struct emu_backend *eb = emu_of(be);
	size_t bytes = sizeof(float) * (size_t)(n * d);
	int rc = check_dev(eb, x, bytes, "layernorm", "input");
	if (rc == 0 && (rc = check_dev(eb, w, sizeof(float) * (size_t)d, "layernorm", "weight")) == 0 &&
	    (rc = check_dev(eb, b, sizeof(float) * (size_t)d, "layernorm", "bias")) == 0)
		rc = check_dev(eb, y, bytes, "layernorm", "output");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_LAYERNORM, j, (j->n = n, j->d = d, j->x = x, j->wv = w, j->b = b, j->eps = eps, j->y = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->layernorm(c, n, d, x, w, b, eps, y);
}

static int emu_rope(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx,
		    int64_t ldh, const float *cos, const float *sin, int interleaved)
{
	const struct emu_backend *eb = emu_of(be);
	size_t tab = sizeof(float) * (size_t)(n * (dim / 2));
	int rc = n > 0 && n_heads > 0 ?
		check_dev(eb, x, sizeof(float) * (size_t)((n - 1) * ldx + (n_heads - 1) * ldh + dim), "rope", "vectors") : 0;
	if (rc == 0 && (rc = check_dev(eb, cos, tab, "rope", "cos table")) == 0)
		rc = check_dev(eb, sin, tab, "rope", "sin table");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_ROPE, j, (j->n = n, j->n_heads = n_heads, j->d = dim, j->y = x, j->ldx = ldx, j->ldh = ldh,
				     j->cos = cos, j->sin = sin, j->interleaved = interleaved));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->rope(c, n, n_heads, dim, x, ldx, ldh, cos, sin, interleaved);
}

static int emu_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x)
{
	int rc = check_dev(emu_of(be), x, sizeof(float) * (size_t)(n * d), "hadamard", "vectors");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_HADAMARD, j, (j->n = n, j->d = d, j->y = x));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->hadamard(c, n, d, x);
}

/* attn_full's operands: its data on the device (the mask table is the caller's host table, its lists on the
 * device). The key counts are device data: on a queue, a copy queued before may not have written them yet, so
 * there the keys and values are checked from their first key only. */
static int check_attn_full(const struct emu_backend *eb, const struct dsm_attn_full_args *a)
{
	const char *op = "attn_full";
	if (a->n_q <= 0)
		return 0;
	int rc = check_dev(eb, a->n_keys, sizeof(int64_t) * (size_t)a->n_q, op, "key counts");
	int64_t keys = 1;
	for (int64_t t = 0; t < a->n_q && rc == 0; t++) {
		if (!eb->cur)
			keys = a->n_keys[t] > keys ? a->n_keys[t] : keys;
		if (a->mask && a->mask[t].sel)
			rc = check_dev(eb, a->mask[t].sel, sizeof(int32_t) * (size_t)a->mask[t].n_sel, op, "key list");
	}
	if (rc == 0)
		rc = check_dev(eb, a->q, sizeof(float) * (size_t)((a->n_q - 1) * a->ldq + a->dn + a->dr), op, "queries");
	if (rc == 0)
		rc = check_dev(eb, a->kv, sizeof(float) * (size_t)(keys * (a->dn + a->dv)), op, "keys and values");
	if (rc == 0)
		rc = check_dev(eb, a->k_pe, sizeof(float) * (size_t)(keys * a->dr), op, "rope keys");
	if (rc == 0)
		rc = check_dev(eb, a->out, sizeof(float) * (size_t)((a->n_q - 1) * a->ldo + a->dv), op, "output");
	return rc;
}

static int emu_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a)
{
	struct emu_backend *eb = emu_of(be);
	int rc = check_attn_full(eb, a);
	if (rc < 0)
		return rc;
	if (eb->cur) {
		struct emu_job *j = new_op(eb, DSM_OP_ATTN_FULL);
		if (!j)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		j->a.full = *a;
		if (a->mask && a->n_q > 0) {
			if (!(j->mask = malloc(sizeof *j->mask * (size_t)a->n_q))) {
				free(j);
				return dsm_fail(DSM_ENOMEM, "out of memory");
			}
			memcpy(j->mask, a->mask, sizeof *j->mask * (size_t)a->n_q);
			j->a.full.mask = j->mask;
		}
		return submit(eb, j);
	}
	struct dsm_backend *c = cpu_of_emu(be);
	return c->attn_full(c, a);
}

static int emu_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a)
{
	struct emu_backend *eb = emu_of(be);
	const char *op = "attn_latent";
	size_t es = dsm_dtype_size(a->cache_dtype), hr = sizeof(float) * (size_t)(a->n_heads * a->r);
	int64_t nb = a->c_blocks && a->block_rows > 0 ? (a->n_keys + a->block_rows - 1) / a->block_rows : 0;
	int rc = check_dev(eb, a->q_lat, hr, op, "latent queries");
	if (rc == 0)
		rc = check_dev(eb, a->q_pe, sizeof(float) * (size_t)(a->n_heads * a->dr), op, "rope queries");
	if (rc == 0 && !a->c_blocks)
		rc = check_dev(eb, a->c, es * (size_t)(a->n_keys * a->r), op, "latent cache");
	if (rc == 0 && !a->c_blocks)
		rc = check_dev(eb, a->k_pe, es * (size_t)(a->n_keys * a->dr), op, "rope key cache");
	for (int64_t b = 0; b < nb && rc == 0; b++) {
		int64_t rows = b < nb - 1 ? a->block_rows : a->n_keys - b * a->block_rows;
		rc = check_dev(eb, a->c_blocks[b], es * (size_t)(rows * a->r), op, "latent cache block");
		if (rc == 0)
			rc = check_dev(eb, a->pe_blocks[b], es * (size_t)(rows * a->dr), op, "rope key cache block");
	}
	if (rc == 0 && a->mask.sel)
		rc = check_dev(eb, a->mask.sel, sizeof(int32_t) * (size_t)a->mask.n_sel, op, "key list");
	if (rc == 0)
		rc = check_dev(eb, a->o_lat, hr, op, "output");
	if (rc < 0)
		return rc;
	if (eb->cur && nb > 0) {
		struct emu_job *j = new_op_tables(eb, DSM_OP_ATTN_LATENT, a->c_blocks, a->pe_blocks, nb);
		if (!j)
			return DSM_ENOMEM;
		j->a.latent = *a;
		j->a.latent.c_blocks = j->table;
		j->a.latent.pe_blocks = j->table + nb;
		return submit(eb, j);
	}
	QUEUE_OR_RUN(eb, DSM_OP_ATTN_LATENT, j, (j->a.latent = *a));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->attn_latent(c, a);
}

static int emu_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
			      const float *k, const float *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out)
{
	struct emu_backend *eb = emu_of(be);
	const char *op = "indexer_scores";
	int64_t nb = k_blocks && block_rows > 0 ? (n_keys + block_rows - 1) / block_rows : 0;
	int rc = check_dev(eb, q, sizeof(float) * (size_t)(n_heads * d), op, "queries");
	if (rc == 0 && (rc = check_dev(eb, w, sizeof(float) * (size_t)n_heads, op, "head weights")) == 0 && !k_blocks)
		rc = check_dev(eb, k, sizeof(float) * (size_t)(n_keys * d), op, "keys");
	for (int64_t b = 0; b < nb && rc == 0; b++)
		rc = check_dev(eb, k_blocks[b], sizeof(float) * (size_t)((b < nb - 1 ? block_rows : n_keys - b * block_rows) * d),
			       op, "key block");
	if (rc == 0)
		rc = check_dev(eb, out, sizeof(float) * (size_t)n_keys, op, "scores");
	if (rc < 0)
		return rc;
	if (eb->cur) {
		struct emu_job *j = new_op_tables(eb, DSM_OP_INDEXER_SCORES, (const void *const *)k_blocks, NULL, nb);
		if (!j)
			return DSM_ENOMEM;
		j->n_heads = n_heads, j->d = d, j->x = q, j->wv = w, j->keys = k, j->k = block_rows, j->n = n_keys, j->y = out;
		return submit(eb, j);
	}
	struct dsm_backend *c = cpu_of_emu(be);
	return c->indexer_scores(c, n_heads, d, q, w, k, k_blocks, block_rows, n_keys, out);
}

static int emu_topk(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx)
{
	const struct emu_backend *eb = emu_of(be);
	int rc = check_dev(eb, x, sizeof(float) * (size_t)n, "topk", "values");
	if (rc == 0)
		rc = check_dev(eb, idx, sizeof(int32_t) * (size_t)k, "topk", "positions");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_TOPK, j, (j->x = x, j->n = n, j->k = k, j->idx = idx));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->topk(c, x, n, k, idx);
}

static int emu_route(struct dsm_backend *be, const struct dsm_route_args *a)
{
	const struct emu_backend *eb = emu_of(be);
	size_t tk = (size_t)(a->n_tokens * a->top_k);
	int rc = check_dev(eb, a->logits, sizeof(float) * (size_t)(a->n_tokens * a->n_experts), "route", "logits");
	if (rc == 0 && (!a->bias || (rc = check_dev(eb, a->bias, sizeof(float) * (size_t)a->n_experts, "route", "bias")) == 0) &&
	    (rc = check_dev(eb, a->idx, sizeof(int32_t) * tk, "route", "experts")) == 0)
		rc = check_dev(eb, a->weight, sizeof(float) * tk, "route", "weights");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_ROUTE, j, (j->a.route = *a));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->route(c, a);
}

static int emu_add(struct dsm_backend *be, int64_t n, float *x, const float *y)
{
	const struct emu_backend *eb = emu_of(be);
	int rc = check_dev(eb, x, sizeof(float) * (size_t)n, "add", "sum");
	if (rc == 0)
		rc = check_dev(eb, y, sizeof(float) * (size_t)n, "add", "addend");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_ADD, j, (j->n = n, j->y = x, j->x = y));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->add(c, n, x, y);
}

static int emu_scale(struct dsm_backend *be, int64_t n, float *x, float s)
{
	int rc = check_dev(emu_of(be), x, sizeof(float) * (size_t)n, "scale", "values");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_SCALE, j, (j->n = n, j->y = x, j->eps = s));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->scale(c, n, x, s);
}

static int emu_convert(struct dsm_backend *be, int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt,
		       int64_t ldx, void *y, enum dsm_dtype yt, int64_t ldy)
{
	const struct emu_backend *eb = emu_of(be);
	int rc = 0;
	if (rows > 0 && cols > 0) {
		rc = check_dev(eb, x, dsm_dtype_size(xt) * (size_t)((rows - 1) * ldx + cols), "convert", "input");
		if (rc == 0)
			rc = check_dev(eb, y, dsm_dtype_size(yt) * (size_t)((rows - 1) * ldy + cols), "convert", "output");
	}
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_CONVERT, j, (j->n = rows, j->d = cols, j->src = x, j->xt = xt, j->ldx = ldx,
						      j->dst = y, j->yt = yt, j->ldy = ldy));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->convert(c, rows, cols, x, xt, ldx, y, yt, ldy);
}

static int emu_fp8_round(struct dsm_backend *be, int64_t n, int64_t d, float *x, int ue8m0)
{
	int rc = check_dev(emu_of(be), x, sizeof(float) * (size_t)(n * d), "fp8_round", "values");
	if (rc < 0)
		return rc;
	QUEUE_OR_RUN(emu_of(be), DSM_OP_FP8_ROUND, j, (j->n = n, j->d = d, j->y = x, j->ue8m0 = ue8m0));
	struct dsm_backend *c = cpu_of_emu(be);
	return c->fp8_round(c, n, d, x, ue8m0);
}

static int emu_gather(struct dsm_backend *be, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		      int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt)
{
	struct emu_backend *eb = emu_of(be);
	struct dsm_backend *c = cpu_of_emu(be);
	if (n > 0 && (last_rows < 1 || last_rows > block_rows)) /* refused by the cpu backend, with its message */
		return c->gather(c, n, x, block_rows, last_rows, cols, xt, y, yt);
	size_t xs = dsm_dtype_size(xt), block = (size_t)(block_rows * cols);
	int rc = 0;
	for (int64_t i = 0; i < n && rc == 0; i++)
		rc = check_dev(eb, x[i], xs * (i == n - 1 ? (size_t)(last_rows * cols) : block), "gather", "block");
	if (rc == 0 && n > 0)
		rc = check_dev(eb, y, dsm_dtype_size(yt) * (size_t)(((n - 1) * block_rows + last_rows) * cols), "gather",
			       "output");
	if (rc < 0)
		return rc;
	if (eb->cur && n > 0) {
		struct emu_job *j = new_op_tables(eb, DSM_OP_GATHER, x, NULL, n);
		if (!j)
			return DSM_ENOMEM;
		j->n = n, j->k = block_rows, j->ldx = last_rows, j->d = cols, j->xt = xt, j->dst = y, j->yt = yt;
		return submit(eb, j);
	}
	return c->gather(c, n, x, block_rows, last_rows, cols, xt, y, yt);
}

int dsm_emu_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o)
{
	*out = NULL;
	struct emu_backend *eb = calloc(1, sizeof *eb);
	if (!eb)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = dsm_backend_create(&eb->cpu, "cpu", o);
	if (rc < 0) {
		free(eb);
		return dsm_fail_prefix(rc, "emu backend");
	}
	if (o)
		eb->opts = *o;
	pthread_mutex_init(&eb->mu, NULL);
	pthread_cond_init(&eb->cv, NULL);
	eb->st.budget = o && o->device_bytes ? o->device_bytes : DSM_EMU_DEFAULT_BYTES;
	struct dsm_backend *be = &eb->be;
	be->name = "emu";
	be->impl = eb;
	be->precision = eb->cpu->precision;
	be->destroy = emu_destroy;
	be->supports = emu_supports;
	be->alloc = emu_alloc;
	be->free = emu_free;
	be->copy_in = emu_copy_in;
	be->copy_out = emu_copy_out;
	be->copy_dev = emu_copy_dev;
	be->sync = emu_sync;
	be->reserve = emu_reserve;
	be->mem_info = emu_mem_info;
	be->host_alloc = emu_host_alloc;
	be->host_free = emu_host_free;
	be->queue_create = emu_queue_create;
	be->queue_destroy = emu_queue_destroy;
	be->set_queue = emu_set_queue;
	be->event_create = emu_event_create;
	be->event_destroy = emu_event_destroy;
	be->event_record = emu_event_record;
	be->queue_wait = emu_queue_wait;
	be->event_sync = emu_event_sync;
	be->event_elapsed = emu_event_elapsed;
	be->matmul = emu_matmul;
	be->matmul_t = emu_matmul_t;
	be->matmul_heads = emu_matmul_heads;
	be->ffn = emu_ffn;
	be->rmsnorm = emu_rmsnorm;
	be->layernorm = emu_layernorm;
	be->rope = emu_rope;
	be->hadamard = emu_hadamard;
	be->attn_full = emu_attn_full;
	be->attn_latent = emu_attn_latent;
	be->indexer_scores = emu_indexer_scores;
	be->topk = emu_topk;
	be->route = emu_route;
	be->add = emu_add;
	be->scale = emu_scale;
	be->convert = emu_convert;
	be->fp8_round = emu_fp8_round;
	be->gather = emu_gather;
	*out = be;
	return 0;
}

int dsm_emu_get_stats(const struct dsm_backend *be, struct dsm_emu_stats *s)
{
	if (!be || be->destroy != emu_destroy)
		return dsm_fail(DSM_EARG, "not an emu backend");
	struct emu_backend *eb = (struct emu_backend *)be;
	pthread_mutex_lock(&eb->mu);
	*s = eb->st;
	pthread_mutex_unlock(&eb->mu);
	return 0;
}
