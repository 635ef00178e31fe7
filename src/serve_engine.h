/* dsm-serve's engine loop: one thread owns the engine's session and a dsm_scheduler; HTTP threads hand it
 * jobs through a bounded queue and read their text back as it is produced (docs/serve.md).
 *
 * A job is one request: n choices of one tokenized prompt. The engine thread moves a job from the queue to
 * the scheduler when n sequences are free (choice 0 computes the prompt; the others fork it after its
 * prefill), steps the scheduler while any job runs, appends each choice's final text under the lock and
 * wakes the job's waiters, and ends a job when all its choices have. A job cancelled by its client (a
 * closed connection) ends at the next step. A proof search (/v1/prove) runs when no other job runs, with the
 * engine to itself; jobs that arrive meanwhile wait in the queue. */
#ifndef DSM_SERVE_ENGINE_H
#define DSM_SERVE_ENGINE_H

#include "engine.h"
#include "generate.h"
#include "prove.h"

#include <pthread.h>
#include <stdint.h>

struct serve_choice {
	struct dsm_text text;           /* final text so far (under the lock) */
	int64_t n_tokens;               /* generated so far */
	int done;
	enum dsm_stop_reason reason;
	/* the engine thread's own */
	int id;                         /* scheduler request id, -1 before it is added */
	struct token_stream ts;
	struct text_buffer piece;
	struct serve_job *job;
};

enum serve_job_state { SERVE_QUEUED, SERVE_RUNNING, SERVE_DONE };

struct serve_job {
	/* set before serve_submit, then read-only */
	struct token_ids prompt;
	struct dsm_generate_params params;  /* stop strings point into stop_store */
	char *stop_store[16];
	int n;                          /* choices */
	/* proof search (prompt unused): the problem and settings */
	int prove;
	char *problem;
	struct dsm_prove_settings prove_settings;
	struct serve_engine *se;        /* set by serve_submit */
	/* under the server's lock */
	enum serve_job_state state;
	int cancel;                     /* the client has gone: end at the next step */
	int refs;                       /* the HTTP thread's and, while queued or running, the engine's */
	int error_status;               /* 0, or the HTTP status of a failure (message in error) */
	char error[256];
	struct serve_choice *choice;    /* [n] */
	uint64_t version;               /* bumped at every change a waiter should see */
	char *prove_json;               /* the result document when a search finished */
	char *prove_progress;           /* the last progress line (JSON) of a search */
	double queued_at, started_at, finished_at;
	pthread_cond_t cond;
	struct serve_job *next;
};

/* Live numbers for /metrics (read under the lock). */
struct serve_metrics {
	uint64_t requests_started, requests_finished, requests_failed, requests_cancelled, requests_rejected;
	uint64_t prompt_tokens, completion_tokens;
	uint64_t steps, step_rows, prefill_rows, decode_rows;
	double step_seconds;
	double tokens_per_second;       /* generated tokens/s over the last few seconds */
	int queue_length, running_requests, running_sequences;
	int last_batch_rows;
	int64_t kv_blocks, kv_blocks_free;
	int tiered;
	double cache_hit_rate, io_wait_seconds;
};

struct serve_engine;

/* Starts the engine thread on e (which must outlive it). max_queue: jobs waiting at most. */
int serve_engine_start(struct serve_engine **out, struct dsm_engine *e, int max_queue, int64_t prefill_chunk);
/* Fails the queued jobs (503), cancels the running ones (503 too), waits for them to end (one step) and
 * stops the thread. Jobs, the lock and the metrics stay usable until serve_engine_free. */
void serve_engine_stop(struct serve_engine *se);
/* Accepts NULL; after serve_engine_stop, once no other thread uses se. */
void serve_engine_free(struct serve_engine *se);

/* Tokenizes text with the checkpoint's tokenizer (one thread at a time, serialised here). */
int serve_engine_encode(struct serve_engine *se, const char *text, int add_special, struct token_ids *out);

/* A new job with n choices (refs 1: the caller's). NULL on ENOMEM. */
struct serve_job *serve_job_new(int n);
/* Queues job. Returns 0, or -1 when the queue is full or the server stops (the job is not taken). */
int serve_submit(struct serve_engine *se, struct serve_job *job);
/* Drops the caller's reference; a job still running is cancelled first. */
void serve_job_release(struct serve_engine *se, struct serve_job *job);

/* The lock that guards jobs' shared fields and the metrics. */
void serve_lock(struct serve_engine *se);
void serve_unlock(struct serve_engine *se);
/* Waits (lock held) until job->version differs from seen or `seconds` passed. */
void serve_wait(struct serve_engine *se, struct serve_job *job, uint64_t seen, double seconds);
/* The metrics (lock held). */
const struct serve_metrics *serve_metrics(struct serve_engine *se);

#endif
