/* dsm-batch's job: problems in, one durable result line each out, several searches sharing the engine
 * (batch.h, docs/batch.md). */
#include "batch_run.h"

#include "error.h"
#include "json_util.h"
#include "prove_engine.h"
#include "tokenizer.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>


static volatile sig_atomic_t signals_seen, first_signal;

static void on_signal(int sig)
{
	if (!signals_seen)
		first_signal = sig;
	signals_seen++;
}

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

struct active {
	int idx;                        /* into job.in.p */
	struct dsm_prove *p;
	struct dsm_prove_settings st;
	double t0;
	double best;                    /* best mean score so far, NAN: none */
};

struct job {
	const struct batch_options *o;
	struct batch_input in;
	struct batch_log results, errors;
	struct batch_ids done;          /* ids in the results file */
	struct batch_ids error_seen;    /* "line\\treason" of the errors file's lines */
	char *state_path;
	int n_errors, n_done_before, n_done, n_todo;
	int *todo;                      /* [n_todo] indices into in.p, input order */
	struct active **act;            /* [n_act] the searches in flight (their progress callbacks hold them) */
	int n_act;
	int rc;                         /* the first failure: a write, an engine step */
	double t0, last_log;
	struct dsm_engine *e;
	struct dsm_prove_engine *pe;
	int tty;
	const char *phase;              /* "running", "finished", "interrupted", "failed" */
};

/* ---- Errors file ---- */

static int error_line_seen(void *arg, int lineno, const char *text, size_t len)
{
	struct job *j = arg;
	(void)lineno;
	cJSON *e = cJSON_ParseWithLength(text, len);
	const cJSON *line = cJSON_GetObjectItemCaseSensitive(e, "line");
	const cJSON *why = cJSON_GetObjectItemCaseSensitive(e, "error");
	int rc = 0;
	if (cJSON_IsNumber(line) && cJSON_IsString(why)) {
		char key[512];
		snprintf(key, sizeof key, "%d\t%s", (int)line->valuedouble, why->valuestring);
		rc = batch_ids_add(&j->error_seen, key, 0, NULL) < 0 ? DSM_ENOMEM : 0;
	}
	cJSON_Delete(e);
	return rc;
}

/* An input line or a problem that cannot run: one line in the errors file (not again on --resume). */
static void report_error(void *arg, int line, const char *id, const char *why)
{
	struct job *j = arg;
	j->n_errors++;
	char key[512];
	snprintf(key, sizeof key, "%d\t%s", line, why);
	int added = batch_ids_add(&j->error_seen, key, 0, NULL);
	if (added <= 0 || j->rc < 0) {
		if (added < 0 && j->rc == 0)
			j->rc = added;
		return;
	}
	cJSON *e = cJSON_CreateObject();
	cJSON_AddNumberToObject(e, "line", line);
	cJSON_AddItemToObject(e, "id", id ? cJSON_CreateString(id) : cJSON_CreateNull());
	cJSON_AddStringToObject(e, "error", why);
	char *text = cJSON_PrintUnformatted(e);
	cJSON_Delete(e);
	int rc = text ? batch_log_append(&j->errors, text) : dsm_fail(DSM_ENOMEM, "out of memory");
	free(text);
	if (rc < 0)
		j->rc = rc;
	if (!j->o->quiet)
		fprintf(stderr, "%sdsm-batch: %s: line %d: %s\n", j->tty ? "\r\033[K" : "", j->o->in_path, line, why);
}

/* ---- Results file ---- */

static int result_line_seen(void *arg, int lineno, const char *text, size_t len)
{
	struct job *j = arg;
	struct batch_result r;
	int rc = batch_result_parse(text, len, &r);
	if (rc < 0)
		return rc;
	int first;
	int added = batch_ids_add(&j->done, r.id, lineno, &first);
	if (added == 0)
		rc = dsm_fail(DSM_EDUPLICATE, "id \"%s\" is also on line %d: the file holds a result twice (not "
			      "written by one dsm-batch job: merge shards with dsm-batch merge)", r.id, first);
	free(r.id);
	return added < 0 ? added : rc;
}

/* ---- State file ---- */

/* Tokens generated (decode rows) and prompt tokens computed (prefill rows) by the engine in this run. */
static uint64_t tokens(const struct job *j)
{
	if (!j->pe)
		return 0;
	struct dsm_prove_engine_stats st;
	dsm_prove_engine_get_stats(j->pe, &st);
	return st.scheduler.decode_tokens;
}

static uint64_t prompt_tokens(const struct job *j)
{
	if (!j->pe)
		return 0;
	struct dsm_prove_engine_stats st;
	dsm_prove_engine_get_stats(j->pe, &st);
	return st.scheduler.prefill_tokens;
}

static int write_state(struct job *j)
{
	const struct batch_options *o = j->o;
	cJSON *s = cJSON_CreateObject();
	char host[256] = "";
	gethostname(host, sizeof host - 1);
	cJSON_AddStringToObject(s, "format", "dsm-batch-state/1");
	cJSON_AddStringToObject(s, "state", j->phase);
	cJSON_AddStringToObject(s, "input", o->in_path);
	cJSON_AddStringToObject(s, "results", o->out_path);
	cJSON_AddStringToObject(s, "errors", j->errors.path ? j->errors.path : "");
	cJSON_AddStringToObject(s, "model", o->model_dir);
	cJSON *sh = cJSON_AddArrayToObject(s, "shard");
	cJSON_AddItemToArray(sh, cJSON_CreateNumber(o->shard));
	cJSON_AddItemToArray(sh, cJSON_CreateNumber(o->shards));
	cJSON_AddNumberToObject(s, "problems", j->in.n);
	cJSON_AddNumberToObject(s, "done", j->n_done_before + j->n_done);
	cJSON_AddNumberToObject(s, "done_this_run", j->n_done);
	cJSON_AddNumberToObject(s, "errors_count", j->n_errors);
	cJSON *fl = cJSON_AddArrayToObject(s, "in_flight");
	for (int i = 0; i < j->n_act; i++)
		cJSON_AddItemToArray(fl, cJSON_CreateString(j->in.p[j->act[i]->idx].id));
	cJSON_AddNumberToObject(s, "concurrent", o->concurrent);
	cJSON_AddNumberToObject(s, "pid", (double)getpid());
	cJSON_AddStringToObject(s, "host", host);
	cJSON_AddNumberToObject(s, "updated", (double)time(NULL));
	cJSON_AddNumberToObject(s, "seconds_this_run", now() - j->t0);
	cJSON_AddNumberToObject(s, "tokens_this_run", (double)tokens(j));
	cJSON_AddItemToObject(s, "settings", dsm_prove_settings_json(&o->search));
	char *text = cJSON_Print(s);
	cJSON_Delete(s);
	if (!text)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = write_file_atomic(j->state_path, text);
	free(text);
	return rc;
}

/* ---- Progress ---- */

static void fmt_duration(double s, char *buf, size_t n)
{
	if (!isfinite(s) || s < 0)
		snprintf(buf, n, "?");
	else if (s < 120)
		snprintf(buf, n, "%.0fs", s);
	else if (s < 7200)
		snprintf(buf, n, "%.0fm%02.0fs", floor(s / 60), fmod(s, 60));
	else
		snprintf(buf, n, "%.0fh%02.0fm", floor(s / 3600), floor(fmod(s, 3600) / 60));
}

static void progress(struct job *j, int force)
{
	const struct batch_options *o = j->o;
	double t = now(), every = j->tty ? 1.0 : o->log_every;
	if (o->quiet || (!force && t - j->last_log < every))
		return;
	j->last_log = t;
	double el = t - j->t0;
	int left = j->n_todo - j->n_done;
	char eta[32] = "?", best[160] = "", cache[64] = "all experts resident";
	if (j->n_done > 0)
		fmt_duration(el / j->n_done * left, eta, sizeof eta);
	size_t k = 0;
	for (int i = 0; i < j->n_act && k + 16 < sizeof best; i++) {
		if (isnan(j->act[i]->best))
			k += (size_t)snprintf(best + k, sizeof best - k, "%s-", i ? " " : "");
		else
			k += (size_t)snprintf(best + k, sizeof best - k, "%s%.2f", i ? " " : "", j->act[i]->best);
	}
	struct dsm_engine_report er;
	dsm_engine_report(j->e, 0, 0, &er);
	if (er.tiered)
		snprintf(cache, sizeof cache, "expert cache %.1f%% hits", 100 * er.offload.cache_hit_rate);
	fprintf(stderr, "%sdsm-batch: %d/%d done, %d running (best %s), %d errors, %.1f tok/s generated, %.1f prompt "
		"tok/s, %s, ETA %s%s", j->tty ? "\r\033[K" : "", j->n_done_before + j->n_done, j->in.n, j->n_act,
		j->n_act ? best : "-", j->n_errors, el > 0 ? (double)tokens(j) / el : 0.0,
		el > 0 ? (double)prompt_tokens(j) / el : 0.0, cache, eta, j->tty ? "" : "\n");
	fflush(stderr);
}

static void on_search_progress(void *arg, const struct dsm_prove_progress *g)
{
	struct active *a = arg;
	a->best = g->best >= 0 ? g->best_mean : NAN;
}

/* ---- Problems ---- */

static int start_problem(struct job *j, struct dsm_gen *gen, int idx)
{
	const struct batch_problem *bp = &j->in.p[idx];
	struct active *a = malloc(sizeof *a);
	if (!a)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	*a = (struct active){ .idx = idx, .t0 = now(), .best = NAN };
	int rc = batch_problem_settings(bp, &j->o->search, &a->st);
	if (rc == 0)
		rc = dsm_prove_start(&a->p, bp->problem, &a->st, gen, gen, on_search_progress, a);
	if (rc < 0) {
		free(a);
		return dsm_fail_prefix(rc, "problem \"%s\" (line %d)", bp->id, bp->line);
	}
	j->act[j->n_act++] = a;
	return 0;
}

/* Writes the finished search's line (durably) and lets go of it. */
static int finish_problem(struct job *j, int i)
{
	struct active *a = j->act[i];
	const struct batch_problem *bp = &j->in.p[a->idx];
	cJSON *doc = dsm_prove_to_json(dsm_prove_result(a->p));
	cJSON *line = cJSON_CreateObject();
	char *text = NULL;
	if (doc && line && cJSON_AddStringToObject(line, "id", bp->id)) {
		/* the id first, then the document's members */
		while (doc->child) {
			cJSON *it = cJSON_DetachItemViaPointer(doc, doc->child);
			cJSON_AddItemToObject(line, it->string, it);
		}
		text = cJSON_PrintUnformatted(line);
	}
	cJSON_Delete(doc);
	cJSON_Delete(line);
	int rc = text ? batch_log_append(&j->results, text) : dsm_fail(DSM_ENOMEM, "out of memory");
	free(text);
	if (rc < 0)
		return rc;
	j->n_done++;
	dsm_prove_free(a->p);
	free(a);
	j->act[i] = j->act[--j->n_act];
	return 0;
}

/* Frees every search still in flight without writing it: --resume starts them again. */
static void abandon(struct job *j)
{
	for (int i = 0; i < j->n_act; i++) {
		dsm_prove_free(j->act[i]->p);
		free(j->act[i]);
	}
	j->n_act = 0;
}

/* The problems of the shard without a result, leaving out those too long for the context. */
static int plan_todo(struct job *j)
{
	j->todo = malloc(sizeof(int) * (size_t)(j->in.n ? j->in.n : 1));
	if (!j->todo)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	struct tokenizer *tok = dsm_engine_tokenizer(j->e);
	int64_t ctx = dsm_session_ctx(dsm_engine_session(j->e));
	for (int i = 0; i < j->in.n && j->rc == 0; i++) {
		const struct batch_problem *bp = &j->in.p[i];
		if (batch_ids_get(&j->done, bp->id) >= 0)
			continue;
		struct dsm_prove_settings st;
		struct token_ids ids = { 0 };
		int rc = batch_problem_settings(bp, &j->o->search, &st);
		if (rc == 0)
			rc = tokenizer_encode(tok, bp->problem, strlen(bp->problem), TOKENIZER_REPLACE_INVALID, &ids);
		if (rc < 0) {
			token_ids_free(&ids);
			return dsm_fail_prefix(rc, "problem \"%s\" (line %d)", bp->id, bp->line);
		}
		int64_t need = dsm_prove_context_needed(&st, (int64_t)ids.n);
		if (need > ctx) {
			char why[256];
			snprintf(why, sizeof why, "the problem is %zu tokens: with its search settings a prompt and its "
				 "answer need %lld tokens, more than the context of %lld (--ctx)", ids.n, (long long)need,
				 (long long)ctx);
			report_error(j, bp->line, bp->id, why);
		} else {
			j->todo[j->n_todo++] = i;
		}
		token_ids_free(&ids);
	}
	return j->rc;
}

static int open_engine(struct job *j)
{
	const struct batch_options *o = j->o;
	struct dsm_engine_options eo = o->engine;
	int64_t need = 0, seqs = 0;
	for (int i = 0; i < j->in.n; i++) {
		const struct batch_problem *bp = &j->in.p[i];
		struct dsm_prove_settings st;
		if (batch_ids_get(&j->done, bp->id) >= 0 || batch_problem_settings(bp, &o->search, &st) < 0)
			continue;
		int64_t n = dsm_prove_context_needed(&st, (int64_t)strlen(bp->problem)); /* bytes >= tokens */
		need = n > need ? n : need;
		int64_t s = (int64_t)st.n_candidates * (st.n_verifications + 1);
		seqs = s > seqs ? s : seqs;
	}
	if (eo.session.ctx <= 0)
		eo.session.ctx = need > 0 ? need : 4096;  /* the session caps it at the model's context */
	if (eo.session.max_seqs <= 0)
		eo.session.max_seqs = dsm_prove_default_seqs(seqs * o->concurrent);
	int rc = dsm_engine_open(&j->e, o->model_dir, &eo);
	if (rc < 0)
		return rc;
	if (!o->quiet) {
		const char *notes = dsm_engine_notes(j->e);
		while (notes && *notes) {
			const char *nl = strchr(notes, '\n');
			int n = nl ? (int)(nl - notes) : (int)strlen(notes);
			if (n)
				fprintf(stderr, "dsm-batch: %.*s\n", n, notes);
			notes += n + (nl != NULL);
		}
	}
	return dsm_prove_engine_init(&j->pe, j->e, 0);
}

static int run_loop(struct job *j)
{
	const struct batch_options *o = j->o;
	struct dsm_gen *gen = dsm_prove_engine_gen(j->pe);
	int next = 0;
	double drain_end = 0;
	for (;;) {
		if (signals_seen && drain_end == 0) {
			drain_end = now() + o->drain_seconds;
			if (!o->quiet)
				fprintf(stderr, "%sdsm-batch: signal %d: no new problems; the %d in flight have %.0f s to finish, "
					"then they are left for --resume (a second signal: at once)\n", j->tty ? "\r\033[K" : "",
					(int)first_signal, j->n_act, o->drain_seconds);
		}
		if (signals_seen > 1 || (drain_end > 0 && now() >= drain_end && j->n_act > 0)) {
			if (!o->quiet && j->n_act)
				fprintf(stderr, "%sdsm-batch: leaving %d problem%s in flight for --resume\n", j->tty ? "\r\033[K" : "",
					j->n_act, j->n_act == 1 ? "" : "s");
			abandon(j);
			return 0;
		}
		int started = 0;
		while (!signals_seen && j->n_act < o->concurrent && next < j->n_todo) {
			int rc = start_problem(j, gen, j->todo[next++]);
			if (rc < 0)
				return rc;
			started = 1;
		}
		if (started && (j->rc = write_state(j)) < 0)
			return j->rc;
		if (j->n_act == 0)
			return 0;
		int work = gen->step(gen->self), checks = 0;
		if (work < 0)
			return work;
		for (int i = 0; i < j->n_act; i++) {
			struct active *a = j->act[i];
			checks += dsm_prove_poll(a->p);
			if (!dsm_prove_finished(a->p)) {
				if (o->max_problem_tokens > 0 && dsm_prove_generated_tokens(a->p) >= (uint64_t)o->max_problem_tokens)
					dsm_prove_stop(a->p, DSM_PROVE_TOKEN_LIMIT);
				else if (o->max_problem_seconds > 0 && now() - a->t0 >= o->max_problem_seconds)
					dsm_prove_stop(a->p, DSM_PROVE_TIME_LIMIT);
			}
		}
		for (int i = 0; i < j->n_act;) {
			if (!dsm_prove_finished(j->act[i]->p)) {
				i++;
				continue;
			}
			int rc = finish_problem(j, i);
			if (rc == 0)
				rc = write_state(j);
			if (rc < 0)
				return rc;
			progress(j, 0);
		}
		if (work == 0 && checks > 0) {
			struct timespec ts = { 0, 5000000 };
			nanosleep(&ts, NULL);
		}
		if (work == 0 && checks == 0 && j->n_act > 0)
			return dsm_fail(DSM_EARG, "problem \"%s\": its search waits for nothing", j->in.p[j->act[0]->idx].id);
		progress(j, 0);
	}
}

int batch_run(const struct batch_options *o)
{
	struct job j = { .o = o, .phase = "running", .tty = isatty(2) };
	j.results.fd = j.errors.fd = -1;
	j.t0 = j.last_log = now();
	char *errors_path = o->errors_path ? strdup(o->errors_path) : batch_path(o->out_path, ".errors.jsonl");
	j.state_path = batch_path(o->out_path, ".state.json");
	int status = 1, rc;
	off_t cut = 0;
	if (!errors_path || !j.state_path) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto fail;
	}
	/* the state of an earlier run: the same shard, else the results would mix two shards' problems */
	if (o->resume && access(j.state_path, F_OK) == 0) {
		char *text = NULL;
		size_t len;
		if ((rc = read_file(j.state_path, 1 << 20, &text, &len)) < 0)
			goto fail;
		cJSON *s = cJSON_ParseWithLength(text, len);
		const cJSON *sh = cJSON_GetObjectItemCaseSensitive(s, "shard");
		int si = cJSON_IsArray(sh) ? (int)cJSON_GetNumberValue(cJSON_GetArrayItem(sh, 0)) : -1;
		int sn = cJSON_IsArray(sh) ? (int)cJSON_GetNumberValue(cJSON_GetArrayItem(sh, 1)) : -1;
		cJSON_Delete(s);
		free(text);
		if (si >= 0 && (si != o->shard || sn != o->shards)) {
			rc = dsm_fail(DSM_EARG, "%s: the job was shard %d/%d; this run is shard %d/%d (give the same --shard, "
				      "or another --out)", j.state_path, si, sn, o->shard, o->shards);
			goto fail;
		}
	}
	if ((rc = batch_log_open(&j.results, o->out_path, !o->resume, 1, result_line_seen, &j, &cut)) < 0)
		goto fail;
	if (cut && !o->quiet)
		fprintf(stderr, "dsm-batch: %s: cut off %lld bytes of a partial last line (a result being written when "
			"the job stopped: that problem runs again)\n", o->out_path, (long long)cut);
	if ((rc = batch_log_open(&j.errors, errors_path, !o->resume, 0, error_line_seen, &j, &cut)) < 0)
		goto fail;
	if ((rc = batch_input_read(o->in_path, o->shard, o->shards, &o->search, &j.in, report_error, &j)) < 0 ||
	    (rc = j.rc) < 0)
		goto fail;
	for (int i = 0; i < j.in.n; i++)
		j.n_done_before += batch_ids_get(&j.done, j.in.p[i].id) >= 0;
	if ((size_t)j.n_done_before != j.done.n) {
		rc = dsm_fail(DSM_EARG, "%s holds %zu results of which only %d are problems of %s (shard %d/%d): another "
			      "input or shard?", o->out_path, j.done.n, j.n_done_before, o->in_path, o->shard, o->shards);
		goto fail;
	}
	if (j.n_done_before == j.in.n) {
		if (!o->quiet)
			fprintf(stderr, "dsm-batch: all %d problems of %s%s have their result in %s\n", j.in.n, o->in_path,
				o->shards > 1 ? " (this shard)" : "", o->out_path);
		j.phase = "finished";
		status = (rc = write_state(&j)) < 0 ? 1 : 0;
		if (rc < 0)
			goto fail;
		goto out;
	}
	if ((rc = open_engine(&j)) < 0 || (rc = plan_todo(&j)) < 0)
		goto fail;
	j.act = calloc((size_t)o->concurrent, sizeof *j.act);
	if (!j.act) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto fail;
	}
	if (!o->quiet)
		fprintf(stderr, "dsm-batch: %d problems%s: %d done earlier, %d errors, %d to run, %d at a time; %d sequences "
			"of %lld tokens\n", j.in.n, o->shards > 1 ? " in this shard" : "", j.n_done_before, j.n_errors,
			j.n_todo, o->concurrent, dsm_session_max_seqs(dsm_engine_session(j.e)),
			(long long)dsm_session_ctx(dsm_engine_session(j.e)));
	struct sigaction sa = { .sa_handler = on_signal }, old_int, old_term;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	j.t0 = now();
	rc = run_loop(&j);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	int complete = j.n_done == j.n_todo;  /* a signal during the last problems may still leave none undone */
	j.phase = rc < 0 ? "failed" : complete ? "finished" : "interrupted";
	progress(&j, 1);
	if (j.tty && !o->quiet)
		fputc('\n', stderr);
	int src = write_state(&j);
	if (rc < 0 || (rc = src) < 0)
		goto fail;
	if (!o->quiet) {
		double el = now() - j.t0;
		fprintf(stderr, "dsm-batch: %s: %d problems done in this run (%d earlier), %d of %d with a result, %d errors%s%s; "
			"%llu tokens in %.1f s, %.1f tok/s\n", j.phase, j.n_done, j.n_done_before, j.n_done + j.n_done_before,
			j.in.n, j.n_errors, j.n_errors ? " in " : "", j.n_errors ? errors_path : "",
			(unsigned long long)tokens(&j), el, el > 0 ? (double)tokens(&j) / el : 0.0);
		if (!complete)
			fprintf(stderr, "dsm-batch: --resume continues the job\n");
	}
	status = complete ? 0 : 128 + (int)first_signal;
	goto out;
fail:
	fprintf(stderr, "%sdsm-batch: %s\n", j.tty ? "\r\033[K" : "", dsm_errmsg());
	if (j.results.fd >= 0 && j.n_done_before + j.n_done + (int)j.done.n > 0) {
		abandon(&j);
		j.phase = "failed";
		write_state(&j);
		fprintf(stderr, "dsm-batch: the %d results written are kept in %s; --resume continues\n",
			j.n_done_before + j.n_done, o->out_path);
	}
out:
	abandon(&j);
	free(j.act);
	free(j.todo);
	dsm_prove_engine_free(j.pe);
	dsm_engine_close(j.e);
	batch_input_free(&j.in);
	batch_log_close(&j.results);
	batch_log_close(&j.errors);
	batch_ids_free(&j.done);
	batch_ids_free(&j.error_seen);
	free(errors_path);
	free(j.state_path);
	return status;
}
