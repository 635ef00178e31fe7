/* dsm-serve's engine loop (serve_engine.h). */
#include "serve_engine.h"

#include "error.h"
#include "prove_engine.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* A scheduler keeps a slot per request ever added: the engine thread starts a fresh one when it is idle
 * and has run this many. */
#define SCHEDULER_RENEW 1024
#define RATE_WINDOW 5.0

struct serve_engine {
	struct dsm_engine *e;
	struct dsm_session *s;
	struct tokenizer *tok;
	struct dsm_scheduler *sc;
	struct dsm_scheduler_options so;
	int sc_added;                   /* requests added to sc */
	int max_queue, max_seqs, free_seqs;
	pthread_mutex_t lock, tok_lock;
	pthread_cond_t wake;            /* the engine thread waits for work on it */
	pthread_t thread;
	int stopping, joined;
	struct serve_job *queue_head, *queue_tail;
	struct serve_job **running;     /* [max_seqs] at most */
	int n_running;
	struct serve_metrics m;
	/* tokens/s over the last RATE_WINDOW seconds */
	double rate_t0;
	uint64_t rate_tokens0;
	double report_at;
};

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void serve_lock(struct serve_engine *se) { pthread_mutex_lock(&se->lock); }
void serve_unlock(struct serve_engine *se) { pthread_mutex_unlock(&se->lock); }
const struct serve_metrics *serve_metrics(struct serve_engine *se) { return &se->m; }

void serve_wait(struct serve_engine *se, struct serve_job *job, uint64_t seen, double seconds)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	double t = (double)ts.tv_nsec * 1e-9 + seconds;
	ts.tv_sec += (time_t)t;
	ts.tv_nsec = (long)((t - (double)(time_t)t) * 1e9);
	while (job->version == seen) {
		if (pthread_cond_timedwait(&job->cond, &se->lock, &ts) == ETIMEDOUT)
			break;
	}
}

int serve_engine_encode(struct serve_engine *se, const char *text, int add_special, struct token_ids *out)
{
	if (!se->tok)
		return dsm_fail(DSM_EMISSING, "the checkpoint has no tokenizer.json: send token ids");
	pthread_mutex_lock(&se->tok_lock);
	int rc = tokenizer_encode(se->tok, text, strlen(text), add_special ? TOKENIZER_ADD_SPECIAL : 0, out);
	pthread_mutex_unlock(&se->tok_lock);
	return rc;
}

struct serve_job *serve_job_new(int n)
{
	struct serve_job *job = calloc(1, sizeof *job);
	if (!job)
		return NULL;
	job->choice = calloc((size_t)n, sizeof *job->choice);
	if (!job->choice) {
		free(job);
		return NULL;
	}
	job->n = n;
	job->refs = 1;
	for (int i = 0; i < n; i++)
		job->choice[i] = (struct serve_choice){ .id = -1, .job = job };
	pthread_cond_init(&job->cond, NULL);
	return job;
}

static void job_free(struct serve_job *job)
{
	for (int i = 0; i < job->n; i++) {
		dsm_text_free(&job->choice[i].text);
		text_buffer_free(&job->choice[i].piece);
	}
	for (int i = 0; i < 16; i++)
		free(job->stop_store[i]);
	token_ids_free(&job->prompt);
	free(job->choice);
	free(job->problem);
	free(job->prove_json);
	free(job->prove_progress);
	pthread_cond_destroy(&job->cond);
	free(job);
}

/* Lock held. */
static void job_unref(struct serve_job *job)
{
	if (--job->refs == 0)
		job_free(job);
}

static void job_changed(struct serve_job *job)
{
	job->version++;
	pthread_cond_broadcast(&job->cond);
}

void serve_job_release(struct serve_engine *se, struct serve_job *job)
{
	serve_lock(se);
	if (job->state != SERVE_DONE) {
		job->cancel = 1;
		pthread_cond_signal(&se->wake);
	}
	job_unref(job);
	serve_unlock(se);
}

int serve_submit(struct serve_engine *se, struct serve_job *job)
{
	serve_lock(se);
	if (se->stopping || se->m.queue_length >= se->max_queue) {
		se->m.requests_rejected++;
		serve_unlock(se);
		return -1;
	}
	job->state = SERVE_QUEUED;
	job->se = se;
	job->refs++;
	job->queued_at = now();
	job->next = NULL;
	if (se->queue_tail)
		se->queue_tail->next = job;
	else
		se->queue_head = job;
	se->queue_tail = job;
	se->m.queue_length++;
	pthread_cond_signal(&se->wake);
	serve_unlock(se);
	return 0;
}

/* ---- callbacks from the scheduler's step (engine thread, lock not held) ---- */

static int token_text(void *user, int32_t id, struct dsm_text *out)
{
	struct serve_choice *c = user;
	if (!c->ts.tok) {
		char buf[32];
		int n = snprintf(buf, sizeof buf, "%s%d", c->n_tokens > 0 ? " " : "", id);
		return dsm_text_append(out, buf, (size_t)n);
	}
	return dsm_token_text(&c->ts, id, &c->piece, out);
}

static int on_text(void *user, const char *text, size_t len)
{
	struct serve_choice *c = user;
	serve_lock(c->job->se);
	int rc = dsm_text_append(&c->text, text, len);
	job_changed(c->job);
	serve_unlock(c->job->se);
	return rc < 0 ? rc : 0;
}

static int on_token(void *user, int32_t id)
{
	(void)id;
	struct serve_choice *c = user;
	serve_lock(c->job->se);
	c->n_tokens++;
	c->job->se->m.completion_tokens++;
	job_changed(c->job);
	serve_unlock(c->job->se);
	return 0;
}

/* ---- the engine thread ---- */

static void fail_job(struct serve_job *job, int status, const char *msg)
{
	job->error_status = status;
	snprintf(job->error, sizeof job->error, "%s", msg);
}

/* Lock held. Adds job's choices to the scheduler. */
static int start_job(struct serve_engine *se, struct serve_job *job)
{
	if (se->sc_added >= SCHEDULER_RENEW && se->n_running == 0) {
		struct dsm_scheduler *sc;
		if (dsm_scheduler_init(&sc, se->s, &se->so) == 0) {
			dsm_scheduler_free(se->sc);
			se->sc = sc;
			se->sc_added = 0;
		}
	}
	for (int i = 0; i < job->n; i++) {
		struct serve_choice *c = &job->choice[i];
		if (se->tok)
			token_stream_init(&c->ts, se->tok, TOKENIZER_SKIP_SPECIAL);
		struct dsm_request q = { .prompt = job->prompt.ids, .n_prompt = (int64_t)job->prompt.n, .params = job->params,
			.io = { .user = c, .token_text = token_text, .on_text = on_text, .on_token = on_token },
			.seq = -1, .prefix_of = i == 0 ? -1 : job->choice[0].id };
		q.params.sampling.seed = job->params.sampling.seed + (uint64_t)i;
		int id = dsm_scheduler_add(se->sc, &q);
		if (id < 0) {
			for (int k = 0; k < i; k++)
				dsm_scheduler_cancel(se->sc, job->choice[k].id);
			fail_job(job, id == DSM_ENOMEM ? 503 : 400, dsm_errmsg());
			return -1;
		}
		c->id = id;
		se->sc_added++;
	}
	return 0;
}

/* Lock held. The job's choices have all finished: read the results and free the scheduler's copies. */
/* A running job has ended (under the lock): the metrics, its state, its waiters, the engine's reference. */
static void job_ended(struct serve_engine *se, struct serve_job *job)
{
	se->m.running_requests--;
	if (job->error_status)
		se->m.requests_failed++;
	else if (job->cancel)
		se->m.requests_cancelled++;
	else
		se->m.requests_finished++;
	job->state = SERVE_DONE;
	job->finished_at = now();
	job_changed(job);
	job_unref(job);
}

static void finish_job(struct serve_engine *se, struct serve_job *job)
{
	for (int i = 0; i < job->n; i++) {
		struct serve_choice *c = &job->choice[i];
		int rc;
		const struct dsm_generate_result *r = dsm_scheduler_result(se->sc, c->id, &rc);
		if (rc < 0 && !job->error_status)
			fail_job(job, 503, dsm_scheduler_error(se->sc, c->id));
		c->reason = r ? r->reason : DSM_STOP_CALLER;
		if (se->tok && c->reason != DSM_STOP_STRING) {
			c->piece.len = 0;
			if (token_stream_finish(&c->ts, &c->piece) == 0 && c->piece.len)
				dsm_text_append(&c->text, c->piece.data, c->piece.len);
		}
		c->done = 1;
		dsm_scheduler_release(se->sc, c->id);
	}
	se->free_seqs += job->n;
	se->m.running_sequences -= job->n;
	job_ended(se, job);
}

static void update_report(struct serve_engine *se, double t)
{
	if (t - se->report_at < 1.0)
		return;
	se->report_at = t;
	struct dsm_engine_report er;
	dsm_engine_report(se->e, 0, 0, &er);
	serve_lock(se);
	se->m.kv_blocks = er.kv_blocks;
	se->m.kv_blocks_free = er.kv_blocks_free;
	se->m.tiered = er.tiered;
	if (er.tiered) {
		se->m.cache_hit_rate = er.offload.cache_hit_rate;
		se->m.io_wait_seconds = er.offload.io_wait_seconds;
	}
	if (t - se->rate_t0 >= RATE_WINDOW) {
		se->m.tokens_per_second = (double)(se->m.completion_tokens - se->rate_tokens0) / (t - se->rate_t0);
		se->rate_t0 = t;
		se->rate_tokens0 = se->m.completion_tokens;
	}
	serve_unlock(se);
}

struct prove_watch {
	struct serve_engine *se;
	struct serve_job *job;
};

static void prove_progress(void *arg, const struct dsm_prove_progress *g)
{
	struct prove_watch *w = arg;
	char line[512];
	snprintf(line, sizeof line, "{\"round\":%d,\"round_done\":%s,\"candidates\":%d,\"candidates_done\":%d,"
		 "\"verifications\":%d,\"verifications_done\":%d,\"best\":%d,\"best_mean\":%.6g,\"generated_tokens\":%llu,"
		 "\"seconds\":%.3f}", g->round, g->round_done ? "true" : "false", g->candidates, g->candidates_done,
		 g->verifications, g->verifications_done, g->best, g->best >= 0 ? g->best_mean : 0.0,
		 (unsigned long long)g->generated_tokens, g->seconds);
	serve_lock(w->se);
	free(w->job->prove_progress);
	w->job->prove_progress = strdup(line);
	job_changed(w->job);
	serve_unlock(w->se);
}

/* Runs a proof search with the engine to itself (lock not held; no other job runs). */
static void run_prove(struct serve_engine *se, struct serve_job *job)
{
	struct dsm_prove_engine *pe = NULL;
	struct dsm_prove *p = NULL;
	struct prove_watch w = { se, job };
	char msg[256] = "";
	int status = 0, rc;
	if ((rc = dsm_prove_engine_init(&pe, se->e, 0)) < 0 ||
	    (rc = dsm_prove_start(&p, job->problem, &job->prove_settings, dsm_prove_engine_gen(pe),
				  dsm_prove_engine_gen(pe), prove_progress, &w)) < 0) {
		snprintf(msg, sizeof msg, "%s", dsm_errmsg());
		status = rc == DSM_ENOMEM ? 503 : 400;
		goto out;
	}
	struct dsm_gen *gen = dsm_prove_engine_gen(pe);
	while (!dsm_prove_finished(p)) {
		serve_lock(se);
		int stop = job->cancel || se->stopping;
		serve_unlock(se);
		if (stop)
			break;
		int work = gen->step(gen->self);
		if (work < 0) {
			snprintf(msg, sizeof msg, "%s", dsm_errmsg());
			status = 500;
			goto out;
		}
		int checks = dsm_prove_poll(p);
		if (work == 0 && checks == 0 && !dsm_prove_finished(p)) {
			snprintf(msg, sizeof msg, "the proof search waits for nothing");
			status = 500;
			goto out;
		}
	}
	if (dsm_prove_finished(p)) {
		cJSON *j = dsm_prove_to_json(dsm_prove_result(p));
		char *text = j ? cJSON_PrintUnformatted(j) : NULL;  /* one line: an SSE data line */
		cJSON_Delete(j);
		if (!text) {
			snprintf(msg, sizeof msg, "out of memory");
			status = 503;
		}
		serve_lock(se);
		job->prove_json = text;
		serve_unlock(se);
	}
out:
	dsm_prove_free(p);
	dsm_prove_engine_free(pe);
	serve_lock(se);
	if (status)
		fail_job(job, status, msg);
	else if (!job->prove_json)
		fail_job(job, 503, "the server stopped or the client left before the search finished");
	job_ended(se, job);
	serve_unlock(se);
}

static void *engine_main(void *arg)
{
	struct serve_engine *se = arg;
	serve_lock(se);
	for (;;) {
		/* stopping: the queue fails, running jobs are cancelled */
		if (se->stopping) {
			while (se->queue_head) {
				struct serve_job *job = se->queue_head;
				se->queue_head = job->next;
				se->m.queue_length--;
				fail_job(job, 503, "the server is shutting down");
				job->state = SERVE_DONE;
				job_changed(job);
				job_unref(job);
			}
			se->queue_tail = NULL;
			for (int i = 0; i < se->n_running; i++) {
				se->running[i]->cancel = 1;
				if (!se->running[i]->error_status)
					fail_job(se->running[i], 503, "the server is shutting down");
			}
			if (se->n_running == 0)
				break;
		}
		/* cancelled jobs still queued leave; the head starts when it fits */
		for (struct serve_job **pp = &se->queue_head; *pp;) {
			struct serve_job *job = *pp;
			if (job->cancel) {
				*pp = job->next;
				se->m.queue_length--;
				se->m.requests_cancelled++;
				job->state = SERVE_DONE;
				job_changed(job);
				job_unref(job);
				continue;
			}
			pp = &job->next;
		}
		se->queue_tail = NULL;
		for (struct serve_job *j = se->queue_head; j; j = j->next)
			se->queue_tail = j;
		while (se->queue_head) {
			struct serve_job *job = se->queue_head;
			if (job->prove ? se->n_running > 0 : job->n > se->free_seqs)
				break;
			se->queue_head = job->next;
			if (!se->queue_head)
				se->queue_tail = NULL;
			se->m.queue_length--;
			se->m.requests_started++;
			se->m.running_requests++;
			job->state = SERVE_RUNNING;
			job->started_at = now();
			job_changed(job);
			if (job->prove) {
				serve_unlock(se);
				run_prove(se, job);
				serve_lock(se);
				continue;
			}
			if (start_job(se, job) < 0) {
				se->m.running_requests--;
				se->m.requests_failed++;
				job->state = SERVE_DONE;
				job_changed(job);
				job_unref(job);
				continue;
			}
			se->m.prompt_tokens += (uint64_t)job->prompt.n;
			se->free_seqs -= job->n;
			se->m.running_sequences += job->n;
			se->running[se->n_running++] = job;
		}
		for (int i = 0; i < se->n_running; i++)
			if (se->running[i]->cancel)
				for (int k = 0; k < se->running[i]->n; k++)
					dsm_scheduler_cancel(se->sc, se->running[i]->choice[k].id);
		if (se->n_running == 0) {
			if (se->stopping)
				break;
			pthread_cond_wait(&se->wake, &se->lock);
			continue;
		}
		serve_unlock(se);
		struct dsm_scheduler_stats before, after;
		dsm_scheduler_get_stats(se->sc, &before);
		double t0 = now();
		int rc = dsm_scheduler_step(se->sc);
		double t1 = now();
		dsm_scheduler_get_stats(se->sc, &after);
		const char *err = rc < 0 ? dsm_errmsg() : NULL;
		serve_lock(se);
		se->m.steps++;
		se->m.step_seconds += t1 - t0;
		uint64_t dec = after.decode_tokens - before.decode_tokens, pre = after.prefill_tokens - before.prefill_tokens;
		se->m.decode_rows += dec;
		se->m.prefill_rows += pre;
		se->m.step_rows += dec + pre;
		se->m.last_batch_rows = (int)(dec + pre);
		if (rc < 0) {
			/* the step failed as a whole: every running job fails */
			for (int i = 0; i < se->n_running; i++) {
				struct serve_job *job = se->running[i];
				fail_job(job, 500, err);
				for (int k = 0; k < job->n; k++)
					dsm_scheduler_cancel(se->sc, job->choice[k].id);
			}
			serve_unlock(se);
			dsm_scheduler_step(se->sc);
			serve_lock(se);
		}
		for (int i = 0; i < se->n_running;) {
			struct serve_job *job = se->running[i];
			int done = 1;
			for (int k = 0; k < job->n && done; k++)
				done = dsm_scheduler_done(se->sc, job->choice[k].id);
			if (!done) {
				i++;
				continue;
			}
			finish_job(se, job);
			se->running[i] = se->running[--se->n_running];
		}
		serve_unlock(se);
		update_report(se, t1);
		serve_lock(se);
	}
	serve_unlock(se);
	return NULL;
}

int serve_engine_start(struct serve_engine **out, struct dsm_engine *e, int max_queue, int64_t prefill_chunk)
{
	struct serve_engine *se = calloc(1, sizeof *se);
	if (!se)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	se->e = e;
	se->s = dsm_engine_session(e);
	se->tok = dsm_engine_tokenizer(e);
	se->max_queue = max_queue;
	se->max_seqs = se->free_seqs = dsm_session_max_seqs(se->s);
	se->so.prefill_chunk = prefill_chunk;
	se->running = calloc((size_t)se->max_seqs, sizeof *se->running);
	int rc;
	if (!se->running) {
		free(se);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	if ((rc = dsm_scheduler_init(&se->sc, se->s, &se->so)) < 0) {
		free(se->running);
		free(se);
		return rc;
	}
	pthread_mutex_init(&se->lock, NULL);
	pthread_mutex_init(&se->tok_lock, NULL);
	pthread_cond_init(&se->wake, NULL);
	se->rate_t0 = se->report_at = now();
		update_report(se, se->report_at + 1.0);
	if (pthread_create(&se->thread, NULL, engine_main, se) != 0) {
		dsm_scheduler_free(se->sc);
		free(se->running);
		free(se);
		return dsm_fail(DSM_ENOMEM, "cannot start the engine thread");
	}
	*out = se;
	return 0;
}

void serve_engine_stop(struct serve_engine *se)
{
	if (!se || se->joined)
		return;
	serve_lock(se);
	se->stopping = 1;
	pthread_cond_signal(&se->wake);
	serve_unlock(se);
	pthread_join(se->thread, NULL);
	se->joined = 1;
}

void serve_engine_free(struct serve_engine *se)
{
	if (!se)
		return;
	dsm_scheduler_free(se->sc);
	free(se->running);
	pthread_mutex_destroy(&se->lock);
	pthread_mutex_destroy(&se->tok_lock);
	pthread_cond_destroy(&se->wake);
	free(se);
}
