/* dsm-batch's files: the input, the durable JSON Lines logs, the id set (batch.h). */
#include "batch.h"

#include "error.h"
#include "json_util.h"
#include "prove_flags.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define INPUT_MAX_BYTES ((size_t)1 << 31)
#define RESULTS_MAX_BYTES ((size_t)1 << 34)

/* ---- Input ---- */

int batch_parse_line(const char *text, size_t len, int line, struct batch_problem *out, char *why, size_t why_size)
{
	memset(out, 0, sizeof *out);
	out->line = line;
	cJSON *j = cJSON_ParseWithLength(text, len);
	if (!j) {
		snprintf(why, why_size, "not valid JSON (near byte %zu)", (size_t)(cJSON_GetErrorPtr() - text));
		return 1;
	}
	int bad = 1;
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
	const cJSON *problem = cJSON_GetObjectItemCaseSensitive(j, "problem");
	const cJSON *settings = cJSON_GetObjectItemCaseSensitive(j, "settings");
	if (!cJSON_IsObject(j))
		snprintf(why, why_size, "not a JSON object");
	else if (!id)
		snprintf(why, why_size, "no \"id\"");
	else if (!cJSON_IsString(id) || !id->valuestring[0])
		snprintf(why, why_size, "\"id\" is not a non-empty string");
	else if (!problem)
		snprintf(why, why_size, "no \"problem\"");
	else if (!cJSON_IsString(problem) || !problem->valuestring[0])
		snprintf(why, why_size, "\"problem\" is not a non-empty string");
	else if (settings && !cJSON_IsObject(settings))
		snprintf(why, why_size, "\"settings\" is not an object");
	else
		bad = 0;
	if (!bad) {
		out->id = strdup(id->valuestring);
		out->problem = strdup(problem->valuestring);
		out->settings = settings ? cJSON_Duplicate(settings, 1) : NULL;
		if (!out->id || !out->problem || (settings && !out->settings)) {
			cJSON_Delete(j);
			batch_problem_free(out);
			return dsm_fail(DSM_ENOMEM, "out of memory");
		}
	}
	cJSON_Delete(j);
	return bad;
}

void batch_problem_free(struct batch_problem *p)
{
	free(p->id);
	free(p->problem);
	cJSON_Delete(p->settings);
	memset(p, 0, sizeof *p);
}

int batch_problem_settings(const struct batch_problem *p, const struct dsm_prove_settings *base,
			   struct dsm_prove_settings *out)
{
	*out = *base;
	const char *bad;
	return p->settings ? dsm_prove_flags_json(out, p->settings, 1, &bad) : 0;
}

int batch_input_read(const char *path, int shard, int shards, const struct dsm_prove_settings *base,
		     struct batch_input *in, void (*on_error)(void *arg, int line, const char *id, const char *why),
		     void *arg)
{
	memset(in, 0, sizeof *in);
	char *data;
	size_t len, bad;
	int rc = read_file(path, INPUT_MAX_BYTES, &data, &len);
	if (rc < 0)
		return rc;
	if (len >= 2 && (((unsigned char)data[0] == 0xff && (unsigned char)data[1] == 0xfe) ||
			 ((unsigned char)data[0] == 0xfe && (unsigned char)data[1] == 0xff))) {
		free(data);
		return dsm_fail(DSM_EJSON, "%s: UTF-16 text (a byte order mark): the input must be UTF-8 "
				"(iconv -f UTF-16 -t UTF-8)", path);
	}
	size_t start = len >= 3 && memcmp(data, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;  /* a UTF-8 byte order mark */
	if (!utf8_valid(data + start, len - start, &bad)) {
		int line = 1;
		size_t col = start + bad;
		for (size_t i = start; i < start + bad; i++)
			if (data[i] == '\n') {
				line++;
				col = start + bad - i - 1;
			}
		rc = dsm_fail(DSM_EJSON, "%s: line %d, byte %zu: not UTF-8 (byte 0x%02x): the input must be UTF-8 "
			      "(iconv -f ENCODING -t UTF-8)", path, line, col + 1, (unsigned char)data[start + bad]);
		free(data);
		return rc;
	}
	struct batch_ids seen = { 0 };
	int line = 0, cap = 0;
	char why[320];
	for (size_t pos = start; pos < len && rc == 0;) {
		const char *s = data + pos, *nl = memchr(s, '\n', len - pos);
		size_t n = nl ? (size_t)(nl - s) : len - pos;
		pos += n + (nl != NULL);
		line++;
		if (n && s[n - 1] == '\r')
			n--;
		size_t blank = 0;
		while (blank < n && strchr(" \t", s[blank]))
			blank++;
		if (blank == n)
			continue;  /* empty lines are allowed (a trailing newline, spacing) */
		struct batch_problem p;
		int r = batch_parse_line(s, n, line, &p, why, sizeof why);
		if (r < 0) {
			rc = r;
			break;
		}
		int mine = (line - 1) % shards == shard;
		if (r == 0) {
			int first;
			int added = batch_ids_add(&seen, p.id, line, &first);
			struct dsm_prove_settings st;
			if (added < 0) {
				rc = added;
			} else if (added == 0) {
				snprintf(why, sizeof why, "duplicate id \"%.200s\" (first on line %d)", p.id, first);
				r = 1;
			} else if (batch_problem_settings(&p, base, &st) < 0) {
				snprintf(why, sizeof why, "%s", dsm_errmsg());
				r = 1;
			}
		}
		if (rc == 0 && r == 1 && mine)
			on_error(arg, line, p.id, why);
		if (rc == 0 && r == 0 && mine) {
			if (in->n == cap) {
				cap = cap ? cap * 2 : 64;
				struct batch_problem *v = realloc(in->p, sizeof *v * (size_t)cap);
				if (!v) {
					rc = dsm_fail(DSM_ENOMEM, "out of memory");
					batch_problem_free(&p);
					break;
				}
				in->p = v;
			}
			in->p[in->n++] = p;
		} else {
			batch_problem_free(&p);
		}
	}
	in->lines = line;
	batch_ids_free(&seen);
	free(data);
	if (rc < 0)
		batch_input_free(in);
	return rc;
}

void batch_input_free(struct batch_input *in)
{
	for (int i = 0; i < in->n; i++)
		batch_problem_free(&in->p[i]);
	free(in->p);
	memset(in, 0, sizeof *in);
}

/* ---- Ids: open addressing, FNV-1a ---- */

static size_t hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return (size_t)h;
}

static size_t slot(const struct batch_ids *s, const char *key)
{
	size_t i = hash(key) & (s->cap - 1);
	while (s->key[i] && strcmp(s->key[i], key) != 0)
		i = (i + 1) & (s->cap - 1);
	return i;
}

int batch_ids_add(struct batch_ids *s, const char *key, int value, int *old)
{
	if ((s->n + 1) * 2 > s->cap) {
		struct batch_ids g = { .cap = s->cap ? s->cap * 2 : 64 };
		g.key = calloc(g.cap, sizeof *g.key);
		g.value = calloc(g.cap, sizeof *g.value);
		if (!g.key || !g.value) {
			free(g.key);
			free(g.value);
			return dsm_fail(DSM_ENOMEM, "out of memory");
		}
		for (size_t i = 0; i < s->cap; i++)
			if (s->key[i]) {
				size_t j = slot(&g, s->key[i]);
				g.key[j] = s->key[i];
				g.value[j] = s->value[i];
			}
		g.n = s->n;
		free(s->key);
		free(s->value);
		*s = g;
	}
	size_t i = slot(s, key);
	if (s->key[i]) {
		if (old)
			*old = s->value[i];
		return 0;
	}
	if (!(s->key[i] = strdup(key)))
		return dsm_fail(DSM_ENOMEM, "out of memory");
	s->value[i] = value;
	s->n++;
	return 1;
}

int batch_ids_get(const struct batch_ids *s, const char *key)
{
	if (!s->cap)
		return -1;
	size_t i = slot(s, key);
	return s->key[i] ? s->value[i] : -1;
}

void batch_ids_free(struct batch_ids *s)
{
	for (size_t i = 0; i < s->cap; i++)
		free(s->key[i]);
	free(s->key);
	free(s->value);
	memset(s, 0, sizeof *s);
}

/* ---- Durable JSON Lines ---- */

static int sync_folder(const char *path)
{
	char *copy = strdup(path);
	if (!copy)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	const char *dir = dirname(copy);
	int fd = open(dir, O_RDONLY | O_DIRECTORY), rc = 0;
	if (fd < 0 || fsync(fd) != 0)
		rc = dsm_fail(DSM_EIO, "%s: syncing the folder: %s", dir, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(copy);
	return rc;
}

/* Calls line() for each whole line of data; returns the end of the last whole line that parses as
 * JSON when it is the last one (a torn write can leave a newline-terminated line of garbage). */
static int scan_lines(const char *path, const char *data, size_t len,
		      int (*line)(void *arg, int lineno, const char *text, size_t len), void *arg, size_t *whole)
{
	size_t pos = 0;
	int lineno = 0;
	*whole = 0;
	while (pos < len) {
		const char *s = data + pos, *nl = memchr(s, '\n', len - pos);
		if (!nl)
			break;
		size_t n = (size_t)(nl - s);
		lineno++;
		if (nl + 1 == data + len) {  /* the last line: kept only when it is JSON */
			cJSON *j = cJSON_ParseWithLength(s, n);
			cJSON_Delete(j);
			if (!j)
				break;
		}
		if (line) {
			int rc = line(arg, lineno, s, n);
			if (rc != 0)
				return rc < 0 ? dsm_fail_prefix(rc, "%s: line %d", path, lineno) : rc;
		}
		pos += n + 1;
		*whole = pos;
	}
	return 0;
}

int batch_log_open(struct batch_log *l, const char *path, int exclusive, int lock,
		   int (*line)(void *arg, int lineno, const char *text, size_t len), void *arg, off_t *cut)
{
	memset(l, 0, sizeof *l);
	l->fd = -1;
	*cut = 0;
	struct stat st;
	int existed = stat(path, &st) == 0;
	if (exclusive && existed && st.st_size > 0)
		return dsm_fail(DSM_EARG, "%s exists (%lld bytes): --resume continues that job; remove the file to start "
				"over", path, (long long)st.st_size);
	if (!(l->path = strdup(path)))
		return dsm_fail(DSM_ENOMEM, "out of memory");
	l->fd = open(path, O_RDWR | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	int rc = 0;
	if (l->fd < 0) {
		rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
		goto fail;
	}
	if (lock && flock(l->fd, LOCK_EX | LOCK_NB) != 0) {
		rc = dsm_fail(DSM_EARG, "%s: another dsm-batch is writing it (%s)", path, strerror(errno));
		goto fail;
	}
	if (!existed && (rc = sync_folder(path)) < 0)
		goto fail;
	char *data = NULL;
	size_t len = 0, whole = 0;
	if ((rc = read_file(path, RESULTS_MAX_BYTES, &data, &len)) < 0)
		goto fail;
	rc = scan_lines(path, data, len, line, arg, &whole);
	free(data);
	if (rc != 0)
		goto fail;
	if (whole < len) {
		if (ftruncate(l->fd, (off_t)whole) != 0 || fsync(l->fd) != 0) {
			rc = dsm_fail(DSM_EIO, "%s: cutting a partial last line: %s", path, strerror(errno));
			goto fail;
		}
		*cut = (off_t)(len - whole);
	}
	l->size = (off_t)whole;
	return 0;
fail:
	batch_log_close(l);
	return rc;
}

int batch_log_append(struct batch_log *l, const char *text)
{
	size_t n = strlen(text);
	char *buf = malloc(n + 1);
	if (!buf)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	memcpy(buf, text, n);
	buf[n++] = '\n';
	size_t done = 0;
	int err = 0;
	while (done < n) {
		ssize_t w = write(l->fd, buf + done, n - done);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0) {
			err = w < 0 ? errno : ENOSPC;
			break;
		}
		done += (size_t)w;
	}
	free(buf);
	if (!err && fsync(l->fd) != 0)
		err = errno;
	if (err) {
		/* no partial line is left behind: the file is cut back to its whole lines */
		int cut = ftruncate(l->fd, l->size) == 0 && fsync(l->fd) == 0;
		return dsm_fail(DSM_EIO, "%s: writing a line: %s%s", l->path, strerror(err),
				cut ? "" : " (and cutting the partial line back failed: --resume will)");
	}
	l->size += (off_t)n;
	return 0;
}

void batch_log_close(struct batch_log *l)
{
	if (l->fd >= 0)
		close(l->fd);
	free(l->path);
	memset(l, 0, sizeof *l);
	l->fd = -1;
}

int batch_jsonl_read(const char *path, int (*line)(void *arg, int lineno, const char *text, size_t len), void *arg,
		     size_t *partial)
{
	char *data;
	size_t len, whole;
	int rc = read_file(path, RESULTS_MAX_BYTES, &data, &len);
	if (rc < 0)
		return rc;
	rc = scan_lines(path, data, len, line, arg, &whole);
	free(data);
	if (partial)
		*partial = len - whole;
	return rc;
}

char *batch_path(const char *out, const char *suffix)
{
	size_t a = strlen(out), b = strlen(suffix);
	char *p = malloc(a + b + 1);
	if (p) {
		memcpy(p, out, a);
		memcpy(p + a, suffix, b + 1);
	}
	return p;
}

/* ---- Result lines ---- */

int batch_result_parse(const char *text, size_t len, struct batch_result *r)
{
	memset(r, 0, sizeof *r);
	r->selected = -1;
	cJSON *j = cJSON_ParseWithLength(text, len);
	const cJSON *id = cJSON_GetObjectItemCaseSensitive(j, "id");
	if (!cJSON_IsObject(j) || !cJSON_IsString(id)) {
		cJSON_Delete(j);
		return dsm_fail(DSM_EJSON, "not a result line (a JSON object with a string \"id\")");
	}
	r->id = strdup(id->valuestring);
	const cJSON *sel = cJSON_GetObjectItemCaseSensitive(j, "selected");
	const cJSON *sc = cJSON_GetObjectItemCaseSensitive(sel, "candidate");
	const cJSON *mean = cJSON_GetObjectItemCaseSensitive(sel, "mean_score");
	if (cJSON_IsNumber(sc) && cJSON_IsNumber(mean)) {
		r->selected = (int)sc->valuedouble;
		r->best = mean->valuedouble;
	}
	r->rounds = cJSON_GetArraySize(cJSON_GetObjectItemCaseSensitive(j, "rounds"));
	const cJSON *phases = cJSON_GetObjectItemCaseSensitive(j, "phases"), *ph;
	cJSON_ArrayForEach(ph, phases) {  /* "prefill" has no generated_tokens */
		const cJSON *t = cJSON_GetObjectItemCaseSensitive(ph, "generated_tokens");
		if (cJSON_IsNumber(t))
			r->tokens += (uint64_t)t->valuedouble;
	}
	const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "seconds");
	r->seconds = cJSON_IsNumber(sec) ? sec->valuedouble : 0;
	const cJSON *stop = cJSON_GetObjectItemCaseSensitive(j, "stop_reason");
	snprintf(r->stop, sizeof r->stop, "%s", cJSON_IsString(stop) ? stop->valuestring : "?");
	cJSON_Delete(j);
	return r->id ? 0 : dsm_fail(DSM_ENOMEM, "out of memory");
}
