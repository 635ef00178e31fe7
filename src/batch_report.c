/* dsm-batch status, merge and report (batch.h, docs/batch.md). */
#include "batch.h"

#include "error.h"
#include "json_util.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define BINS 10

struct results {
	struct batch_result *r;
	int n, cap;
	const char *path;
};

static int collect(void *arg, int lineno, const char *text, size_t len)
{
	struct results *rs = arg;
	(void)lineno;
	if (rs->n == rs->cap) {
		int cap = rs->cap ? rs->cap * 2 : 64;
		struct batch_result *v = realloc(rs->r, sizeof *v * (size_t)cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		rs->r = v;
		rs->cap = cap;
	}
	int rc = batch_result_parse(text, len, &rs->r[rs->n]);
	if (rc == 0)
		rs->n++;
	return rc;
}

static void results_free(struct results *rs)
{
	for (int i = 0; i < rs->n; i++)
		free(rs->r[i].id);
	free(rs->r);
	memset(rs, 0, sizeof *rs);
}

static int results_read(const char *path, struct results *rs, size_t *partial)
{
	memset(rs, 0, sizeof *rs);
	rs->path = path;
	int rc = batch_jsonl_read(path, collect, rs, partial);
	if (rc < 0)
		results_free(rs);
	return rc;
}

static int count_lines(void *arg, int lineno, const char *text, size_t len)
{
	(void)lineno, (void)text, (void)len;
	(*(int *)arg)++;
	return 0;
}

/* The histogram of best scores: BINS bins over [0, 1] and the problems without a selected proof. */
static void histogram(const struct results *rs, int *bins, int *none)
{
	memset(bins, 0, sizeof(int) * BINS);
	*none = 0;
	for (int i = 0; i < rs->n; i++) {
		if (rs->r[i].selected < 0) {
			(*none)++;
			continue;
		}
		int b = (int)floor(rs->r[i].best * BINS + 1e-9);  /* a mean of 0.3 in 0.3-0.4 despite rounding */
		bins[b < 0 ? 0 : b >= BINS ? BINS - 1 : b]++;
	}
}

/* ---- status ---- */

int batch_status(const char *out_path, FILE *f)
{
	struct results rs;
	size_t partial = 0;
	char *state_path = batch_path(out_path, ".state.json"), *text = NULL;
	cJSON *st = NULL;
	int rc = results_read(out_path, &rs, &partial);
	if (rc < 0) {
		fprintf(stderr, "dsm-batch status: %s\n", dsm_errmsg());
		free(state_path);
		return 1;
	}
	size_t len;
	if (state_path && read_file(state_path, 1 << 20, &text, &len) == 0)
		st = cJSON_ParseWithLength(text, len);
	const cJSON *problems = cJSON_GetObjectItemCaseSensitive(st, "problems");
	const cJSON *state = cJSON_GetObjectItemCaseSensitive(st, "state");
	const cJSON *pid = cJSON_GetObjectItemCaseSensitive(st, "pid");
	const cJSON *host = cJSON_GetObjectItemCaseSensitive(st, "host");
	const cJSON *updated = cJSON_GetObjectItemCaseSensitive(st, "updated");
	const cJSON *flight = cJSON_GetObjectItemCaseSensitive(st, "in_flight");
	const cJSON *errors = cJSON_GetObjectItemCaseSensitive(st, "errors");
	const cJSON *input = cJSON_GetObjectItemCaseSensitive(st, "input");
	const cJSON *shard = cJSON_GetObjectItemCaseSensitive(st, "shard");
	const cJSON *sec = cJSON_GetObjectItemCaseSensitive(st, "seconds_this_run");
	const cJSON *done_run = cJSON_GetObjectItemCaseSensitive(st, "done_this_run");
	const cJSON *tok = cJSON_GetObjectItemCaseSensitive(st, "tokens_this_run");
	/* running: the state says so and its process is alive on this host */
	char here[256] = "";
	gethostname(here, sizeof here - 1);
	const char *s = cJSON_IsString(state) ? state->valuestring : "unknown (no state file)";
	int alive = cJSON_IsString(state) && strcmp(s, "running") == 0 && cJSON_IsNumber(pid) && cJSON_IsString(host) &&
		    strcmp(host->valuestring, here) == 0 && kill((pid_t)pid->valuedouble, 0) == 0;
	if (cJSON_IsString(state) && strcmp(s, "running") == 0 && !alive)
		s = cJSON_IsString(host) && strcmp(host->valuestring, here) != 0 ? "running on another host, or stopped"
										   : "stopped (killed or crashed: --resume continues)";
	int n_err = 0;
	if (cJSON_IsString(errors) && errors->valuestring[0])
		batch_jsonl_read(errors->valuestring, count_lines, &n_err, NULL);
	fprintf(f, "results   %s: %d problems done%s\n", out_path, rs.n,
		partial ? " (and a partial last line, cut off by --resume)" : "");
	if (cJSON_IsString(input))
		fprintf(f, "input     %s%s", input->valuestring, cJSON_IsNumber(problems) ? "" : "\n");
	if (cJSON_IsNumber(problems)) {
		int total = (int)problems->valuedouble;
		fprintf(f, ": %d problems", total);
		if (cJSON_GetArraySize(shard) == 2 && cJSON_GetArrayItem(shard, 1)->valuedouble > 1)
			fprintf(f, " in shard %d/%d", (int)cJSON_GetArrayItem(shard, 0)->valuedouble,
				(int)cJSON_GetArrayItem(shard, 1)->valuedouble);
		fprintf(f, ", %d to go (%.1f%% done)\n", total - rs.n, total ? 100.0 * rs.n / total : 100.0);
	}
	fprintf(f, "errors    %d lines%s%s\n", n_err, n_err && cJSON_IsString(errors) ? " in " : "",
		n_err && cJSON_IsString(errors) ? errors->valuestring : "");
	fprintf(f, "state     %s", s);
	if (alive)
		fprintf(f, " (pid %d)", (int)pid->valuedouble);
	if (cJSON_IsNumber(updated)) {
		time_t t = (time_t)updated->valuedouble;
		char when[64];
		strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", localtime(&t));
		fprintf(f, ", updated %s", when);
	}
	fputc('\n', f);
	if (alive && cJSON_GetArraySize(flight) > 0) {
		fprintf(f, "in flight");
		const cJSON *it;
		cJSON_ArrayForEach(it, flight)
			fprintf(f, " %s", cJSON_IsString(it) ? it->valuestring : "?");
		fputc('\n', f);
	}
	if (cJSON_IsNumber(sec) && sec->valuedouble > 0 && cJSON_IsNumber(tok)) {
		double secs = sec->valuedouble, per = cJSON_IsNumber(done_run) && done_run->valuedouble > 0 ?
						      secs / done_run->valuedouble : NAN;
		fprintf(f, "speed     %.1f tok/s over %.0f s of the last run", tok->valuedouble / secs, secs);
		if (isfinite(per) && cJSON_IsNumber(problems))
			fprintf(f, ", %.1f problems/hour, about %.0f s to go", 3600 / per,
				per * (problems->valuedouble - rs.n));
		fputc('\n', f);
	}
	int bins[BINS], none;
	histogram(&rs, bins, &none);
	int high = 0;
	for (int b = BINS / 2; b < BINS; b++)
		high += bins[b];
	fprintf(f, "scores    %d with a selected proof (%d with mean >= 0.5), %d without\n", rs.n - none, high, none);
	cJSON_Delete(st);
	free(text);
	free(state_path);
	results_free(&rs);
	return 0;
}

/* ---- merge ---- */

struct merge_line {
	char *text;
	size_t len;
};

struct merge {
	struct batch_ids ids;         /* id -> index into lines */
	struct batch_ids errored;     /* ids in the shards' errors files */
	struct merge_line *lines;
	int n, cap, duplicates;
	const char *file;
};

static int merge_line(void *arg, int lineno, const char *text, size_t len)
{
	struct merge *m = arg;
	struct batch_result r;
	int rc = batch_result_parse(text, len, &r);
	if (rc < 0)
		return rc;
	int first, added = batch_ids_add(&m->ids, r.id, m->n, &first);
	if (added == 0) {
		m->duplicates++;
		fprintf(stderr, "dsm-batch merge: duplicate: id \"%s\" again in %s line %d (the first is kept)\n", r.id,
			m->file, lineno);
	}
	free(r.id);
	if (added <= 0)
		return added;
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 256;
		struct merge_line *v = realloc(m->lines, sizeof *v * (size_t)m->cap);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		m->lines = v;
	}
	if (!(m->lines[m->n].text = malloc(len + 1)))
		return dsm_fail(DSM_ENOMEM, "out of memory");
	memcpy(m->lines[m->n].text, text, len);
	m->lines[m->n].text[len] = 0;
	m->lines[m->n++].len = len;
	return 0;
}

static int error_id(void *arg, int lineno, const char *text, size_t len)
{
	struct merge *m = arg;
	(void)lineno;
	cJSON *e = cJSON_ParseWithLength(text, len);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(e, "id");
	int rc = cJSON_IsString(id) ? batch_ids_add(&m->errored, id->valuestring, 0, NULL) : 0;
	cJSON_Delete(e);
	return rc < 0 ? rc : 0;
}

/* The ids of the input's valid lines, in order (bad lines are the errors files' business). */
static void input_error(void *arg, int line, const char *id, const char *why)
{
	(void)arg, (void)line, (void)id, (void)why;
}

int batch_merge(const char *out_path, char *const *shards, int n_shards, const char *input_path)
{
	struct merge m = { 0 };
	char *state_text = NULL, *state_input = NULL;
	int status = 1;
	for (int i = 0; i < n_shards; i++) {
		size_t partial = 0;
		m.file = shards[i];
		int rc = batch_jsonl_read(shards[i], merge_line, &m, &partial);
		if (rc < 0) {
			fprintf(stderr, "dsm-batch merge: %s\n", dsm_errmsg());
			goto out;
		}
		char *ep = batch_path(shards[i], ".errors.jsonl");
		if (ep && access(ep, F_OK) == 0 && (rc = batch_jsonl_read(ep, error_id, &m, NULL)) < 0) {
			fprintf(stderr, "dsm-batch merge: %s\n", dsm_errmsg());
			free(ep);
			goto out;
		}
		free(ep);
		if (partial)
			fprintf(stderr, "dsm-batch merge: %s: a partial last line (%zu bytes) is left out: the shard's job "
				"did not finish (dsm-batch --resume continues it)\n", shards[i], partial);
		if (!input_path && !state_input) {  /* the input the first shard's job read */
			char *sp = batch_path(shards[i], ".state.json");
			size_t len;
			if (sp && read_file(sp, 1 << 20, &state_text, &len) == 0) {
				cJSON *st = cJSON_ParseWithLength(state_text, len);
				const cJSON *in = cJSON_GetObjectItemCaseSensitive(st, "input");
				if (cJSON_IsString(in))
					state_input = strdup(in->valuestring);
				cJSON_Delete(st);
				free(state_text);
				state_text = NULL;
			}
			free(sp);
		}
	}
	const char *in_path = input_path ? input_path : state_input;
	if (!in_path) {
		fprintf(stderr, "dsm-batch merge: give --in PROBLEMS.jsonl (no shard has a state file naming it)\n");
		goto out;
	}
	struct dsm_prove_settings base;
	dsm_prove_settings_default(&base);
	struct templates tpl = { 0 };
	templates_init(&tpl);
	base.templates = &tpl;
	struct batch_input in;
	int rc = batch_input_read(in_path, 0, 1, &base, &in, input_error, NULL);
	if (rc < 0) {
		fprintf(stderr, "dsm-batch merge: %s\n", dsm_errmsg());
		templates_free(&tpl);
		goto out;
	}
	/* the merged file in input order, through a rename */
	struct text_buffer all = { 0 };
	int missing = 0, extra = 0, written = 0, errored = 0;
	char *used = calloc((size_t)(m.n ? m.n : 1), 1);
	for (int i = 0; i < in.n && used; i++) {
		int k = batch_ids_get(&m.ids, in.p[i].id);
		if (k < 0 && batch_ids_get(&m.errored, in.p[i].id) >= 0) {
			errored++;
			continue;
		}
		if (k < 0) {
			if (missing++ < 20)
				fprintf(stderr, "dsm-batch merge: missing: id \"%s\" (%s line %d)\n", in.p[i].id, in_path,
					in.p[i].line);
			continue;
		}
		used[k] = 1;
		if (text_buffer_append(&all, m.lines[k].text, m.lines[k].len) < 0 || text_buffer_append(&all, "\n", 1) < 0)
			break;
		written++;
	}
	for (int k = 0; k < m.n && used; k++)
		if (!used[k]) {
			extra++;
			fprintf(stderr, "dsm-batch merge: not in %s: a result line %.80s...\n", in_path, m.lines[k].text);
		}
	if (missing > 20)
		fprintf(stderr, "dsm-batch merge: ... %d missing in all\n", missing);
	if (!used || written < in.n - missing) {
		fprintf(stderr, "dsm-batch merge: out of memory\n");
	} else if ((rc = write_file_atomic(out_path, all.data ? all.data : "")) < 0) {
		fprintf(stderr, "dsm-batch merge: %s\n", dsm_errmsg());
	} else {
		printf("%s: %d results of %d problems in %s; %d with an error line, %d missing, %d duplicates, %d not in "
		       "the input\n", out_path, written, in.n, in_path, errored, missing, m.duplicates, extra);
		status = missing || m.duplicates || extra ? 1 : 0;
	}
	free(used);
	text_buffer_free(&all);
	batch_input_free(&in);
	templates_free(&tpl);
out:
	for (int i = 0; i < m.n; i++)
		free(m.lines[i].text);
	free(m.lines);
	batch_ids_free(&m.ids);
	batch_ids_free(&m.errored);
	free(state_input);
	return status;
}

/* ---- report ---- */

static void html_text(FILE *f, const char *s)
{
	for (; *s; s++) {
		switch (*s) {
		case '<': fputs("&lt;", f); break;
		case '>': fputs("&gt;", f); break;
		case '&': fputs("&amp;", f); break;
		case '"': fputs("&quot;", f); break;
		default: fputc(*s, f);
		}
	}
}

/* The histogram as an inline SVG bar chart. */
static void html_histogram(FILE *f, const int *bins, int none)
{
	int max = none;
	for (int b = 0; b < BINS; b++)
		max = bins[b] > max ? bins[b] : max;
	const int W = 640, H = 240, left = 40, bottom = 40, bw = (W - left - 10) / (BINS + 1);
	fprintf(f, "<svg id=\"histogram\" width=\"%d\" height=\"%d\" "
		"role=\"img\" aria-label=\"histogram of best scores\">\n", W, H);
	fprintf(f, "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#444\"/>\n", left, H - bottom, W - 10, H - bottom);
	for (int b = 0; b <= BINS; b++) {
		int n = b < BINS ? bins[b] : none;
		double h = max ? (double)n / max * (H - bottom - 20) : 0;
		int x = left + b * bw + 2;
		fprintf(f, "<rect x=\"%d\" y=\"%.1f\" width=\"%d\" height=\"%.1f\" fill=\"%s\"><title>%d</title></rect>\n", x,
			H - bottom - h, bw - 4, h, b < BINS ? "#3a6ea5" : "#999", n);
		fprintf(f, "<text x=\"%d\" y=\"%.1f\" font-size=\"11\" text-anchor=\"middle\">%d</text>\n", x + bw / 2 - 2,
			H - bottom - h - 4, n);
		if (b < BINS)
			fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\">%.1f-%.1f</text>\n",
				x + bw / 2 - 2, H - bottom + 14, (double)b / BINS, (double)(b + 1) / BINS);
		else
			fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"10\" text-anchor=\"middle\">none</text>\n",
				x + bw / 2 - 2, H - bottom + 14);
	}
	fprintf(f, "<text x=\"%d\" y=\"%d\" font-size=\"12\" text-anchor=\"middle\">best mean verification score "
		"per problem</text>\n</svg>\n", W / 2, H - 6);
}

int batch_report(const char *results_path, const char *html_path, FILE *f)
{
	struct results rs;
	size_t partial = 0;
	if (results_read(results_path, &rs, &partial) < 0) {
		fprintf(stderr, "dsm-batch report: %s\n", dsm_errmsg());
		return 1;
	}
	int bins[BINS], none;
	histogram(&rs, bins, &none);
	uint64_t tokens = 0;
	double seconds = 0, best_sum = 0;
	int rounds = 0;
	for (int i = 0; i < rs.n; i++) {
		tokens += rs.r[i].tokens;
		seconds += rs.r[i].seconds;
		rounds += rs.r[i].rounds;
		best_sum += rs.r[i].selected >= 0 ? rs.r[i].best : 0;
	}
	int scored = rs.n - none;
	fprintf(f, "%-24s %10s %7s %10s %9s  %s\n", "id", "best mean", "rounds", "tokens", "seconds", "stop");
	for (int i = 0; i < rs.n; i++) {
		const struct batch_result *r = &rs.r[i];
		char best[16] = "-";
		if (r->selected >= 0)
			snprintf(best, sizeof best, "%.4g", r->best);
		fprintf(f, "%-24.64s %10s %7d %10llu %9.1f  %s\n", r->id, best, r->rounds, (unsigned long long)r->tokens,
			r->seconds, r->stop);
	}
	fprintf(f, "\n%d problems: %d with a selected proof (mean of best %.4g), %d without; %d rounds, %llu tokens, "
		"%.1f s of search (%.1f tok/s)\n", rs.n, scored, scored ? best_sum / scored : 0.0, none, rounds,
		(unsigned long long)tokens, seconds, seconds > 0 ? (double)tokens / seconds : 0.0);
	if (partial)
		fprintf(f, "(a partial last line of %zu bytes is not counted)\n", partial);
	fprintf(f, "best scores:\n");
	int max = none;
	for (int b = 0; b < BINS; b++)
		max = bins[b] > max ? bins[b] : max;
	for (int b = 0; b <= BINS; b++) {
		int n = b < BINS ? bins[b] : none, w = max ? (n * 40 + max - 1) / max : 0;
		char label[16];
		if (b < BINS)
			snprintf(label, sizeof label, "%.1f-%.1f", (double)b / BINS, (double)(b + 1) / BINS);
		else
			snprintf(label, sizeof label, "none");
		fprintf(f, "  %-8s %5d %.*s\n", label, n, w, "########################################");
	}
	int status = 0;
	if (html_path) {
		FILE *h = fopen(html_path, "w");
		if (!h) {
			fprintf(stderr, "dsm-batch report: %s: %s\n", html_path, strerror(errno));
			results_free(&rs);
			return 1;
		}
		fprintf(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>dsm-batch report: ");
		html_text(h, results_path);
		fprintf(h, "</title>\n<style>body{font-family:sans-serif;margin:24px;color:#222}table{border-collapse:"
			"collapse}td,th{padding:2px 10px;border-bottom:1px solid #ddd;text-align:right}td:first-child,"
			"th:first-child{text-align:left}</style></head><body>\n<h1>dsm-batch report</h1>\n<p>");
		html_text(h, results_path);
		fprintf(h, "</p>\n<p id=\"totals\">%d problems: %d with a selected proof (mean of best %.4g), %d without; "
			"%d rounds, %llu tokens, %.1f s of search (%.1f tok/s)</p>\n", rs.n, scored,
			scored ? best_sum / scored : 0.0, none, rounds, (unsigned long long)tokens, seconds,
			seconds > 0 ? (double)tokens / seconds : 0.0);
		html_histogram(h, bins, none);
		fprintf(h, "<table id=\"problems\"><tr><th>id</th><th>best mean</th><th>rounds</th><th>tokens</th>"
			"<th>seconds</th><th>stop</th></tr>\n");
		for (int i = 0; i < rs.n; i++) {
			const struct batch_result *r = &rs.r[i];
			fprintf(h, "<tr><td>");
			html_text(h, r->id);
			if (r->selected >= 0)
				fprintf(h, "</td><td>%.4g", r->best);
			else
				fprintf(h, "</td><td>-");
			fprintf(h, "</td><td>%d</td><td>%llu</td><td>%.1f</td><td>", r->rounds, (unsigned long long)r->tokens,
				r->seconds);
			html_text(h, r->stop);
			fprintf(h, "</td></tr>\n");
		}
		fprintf(h, "</table>\n<p>Scores are what the model's verifier wrote; a score is not a judgement that a "
			"proof is correct.</p>\n</body></html>\n");
		if (fclose(h) != 0) {
			fprintf(stderr, "dsm-batch report: %s: %s\n", html_path, strerror(errno));
			status = 1;
		}
	}
	results_free(&rs);
	return status;
}
