/* Rule checks of candidate proofs and the external checker's child process. */
#include "prove_checks.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* ---- Rules ---- */

size_t dsm_rule_repetition(const char *text, size_t len, size_t *repeats)
{
	*repeats = 0;
	size_t max_p = len / DSM_RULE_MIN_REPEATS;
	if (max_p > DSM_RULE_MAX_PERIOD)
		max_p = DSM_RULE_MAX_PERIOD;
	const char *tail;
	for (size_t p = 1; p <= max_p; p++) {
		tail = text + len - p;
		size_t k = 1;
		while ((k + 1) * p <= len && memcmp(text + len - (k + 1) * p, tail, p) == 0)
			k++;
		if (k >= DSM_RULE_MIN_REPEATS && k * p >= DSM_RULE_MIN_LOOP) {
			*repeats = k;
			return p;
		}
	}
	return 0;
}

static int word_char(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80;
}

static int lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* The next word of s[*i .. len): sets *start and returns its length (0 at the end). */
static size_t next_word(const char *s, size_t len, size_t *i, size_t *start)
{
	while (*i < len && !word_char((unsigned char)s[*i]))
		(*i)++;
	*start = *i;
	while (*i < len && word_char((unsigned char)s[*i]))
		(*i)++;
	return *i - *start;
}

static int same_word(const char *a, const char *b, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

static int word_in(const char *w, size_t n, const char *text, size_t len)
{
	size_t i = 0, start, m;
	while ((m = next_word(text, len, &i, &start)) > 0)
		if (m == n && same_word(text + start, w, n))
			return 1;
	return 0;
}

/* Distinct words of proof that are not words of the problem, counted up to DSM_RULE_MIN_NEW_WORDS. */
static int new_words(const char *proof, size_t len, const char *problem)
{
	struct { const char *w; size_t n; } seen[DSM_RULE_MIN_NEW_WORDS];
	int found = 0;
	size_t i = 0, start, n, plen = strlen(problem);
	while (found < DSM_RULE_MIN_NEW_WORDS && (n = next_word(proof, len, &i, &start)) > 0) {
		const char *w = proof + start;
		int dup = 0;
		for (int k = 0; k < found && !dup; k++)
			dup = seen[k].n == n && same_word(seen[k].w, w, n);
		if (!dup && !word_in(w, n, problem, plen)) {
			seen[found].w = w;
			seen[found].n = n;
			found++;
		}
	}
	return found;
}

const char *dsm_rules_check(const struct dsm_rule_input *in, struct dsm_rule_parts *parts, char *detail,
			    size_t detail_size)
{
	detail[0] = 0;
	if (in->thinking) {
		output_split_thinking(in->text, in->len, &parts->split);
	} else {
		parts->split = (struct output_split){ .thinking = { in->text, 0 }, .answer = { in->text, in->len },
						      .has_answer = 1 };
	}
	output_find_sections(parts->split.answer.data, parts->split.answer.len, &parts->sections);
	size_t repeats, period = dsm_rule_repetition(in->text, in->len, &repeats);
	if (period) {
		snprintf(detail, detail_size, "the output ends with a span of %zu bytes repeated %zu times", period,
			 repeats);
		return "repetition";
	}
	if (in->reason == DSM_STOP_LENGTH || in->reason == DSM_STOP_CONTEXT) {
		snprintf(detail, detail_size, "the output was cut off (%s)", in->reason == DSM_STOP_LENGTH ?
			 "the token limit" : "the context is full");
		return "cut_off";
	}
	if (in->thinking && !parts->split.has_answer) {
		snprintf(detail, detail_size, "thinking was asked for and the output has no </think>");
		return "no_think_end";
	}
	if (!parts->sections.has_solution || parts->sections.proof.len == 0) {
		snprintf(detail, detail_size, "%s", parts->sections.has_solution ? "the Solution section is empty"
			 : "the answer has no Solution section");
		return "no_solution";
	}
	int n = new_words(parts->sections.proof.data, parts->sections.proof.len, in->problem);
	if (n < DSM_RULE_MIN_NEW_WORDS) {
		snprintf(detail, detail_size, "the proof has %d word%s that the problem does not have (fewer than %d)",
			 n, n == 1 ? "" : "s", DSM_RULE_MIN_NEW_WORDS);
		return "restates_problem";
	}
	return NULL;
}

/* ---- The external checker ---- */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* A temporary file, already unlinked, closed on exec. */
static int temp_file(void)
{
	const char *dir = getenv("TMPDIR");
	char path[4096];
	snprintf(path, sizeof path, "%s/dsm-check-XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return dsm_fail(DSM_EIO, "--check-cmd: a temporary file in %s: %s", dir && *dir ? dir : "/tmp",
				strerror(errno));
	unlink(path);
	return fd;
}

static int write_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return dsm_fail(DSM_EIO, "--check-cmd: writing the proof to a temporary file: %s", strerror(errno));
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/* environ without DSM_PROBLEM and DSM_CANDIDATE, then those two; the strings it adds are in *extra. */
static char **child_env(const char *problem, int candidate, char **extra)
{
	size_t n = 0;
	while (environ[n])
		n++;
	char **env = malloc(sizeof *env * (n + 3));
	size_t plen = strlen(problem);
	*extra = malloc(plen + 64);
	if (!env || !*extra) {
		free(env);
		free(*extra);
		return NULL;
	}
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (strncmp(environ[i], "DSM_PROBLEM=", 12) != 0 && strncmp(environ[i], "DSM_CANDIDATE=", 14) != 0)
			env[k++] = environ[i];
	char *p = *extra;
	memcpy(p, "DSM_PROBLEM=", 12);
	memcpy(p + 12, problem, plen + 1);
	env[k++] = p;
	p += 12 + plen + 1;
	snprintf(p, 40, "DSM_CANDIDATE=%d", candidate);
	env[k++] = p;
	env[k] = NULL;
	return env;
}

int dsm_check_start(struct dsm_check_run *r, const char *cmd, const char *proof, const char *problem,
		    int candidate)
{
	memset(r, 0, sizeof *r);
	r->out_fd = -1;
	int in_fd = temp_file(), rc;
	if (in_fd < 0)
		return in_fd;
	if ((rc = write_all(in_fd, proof, strlen(proof))) < 0 || (r->out_fd = temp_file()) < 0) {
		close(in_fd);
		return rc < 0 ? rc : r->out_fd;
	}
	lseek(in_fd, 0, SEEK_SET);
	char *extra = NULL, **env = child_env(problem, candidate, &extra);
	if (!env) {
		close(in_fd);
		close(r->out_fd);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
	posix_spawn_file_actions_adddup2(&fa, r->out_fd, 1);
	posix_spawn_file_actions_adddup2(&fa, r->out_fd, 2);
	posix_spawnattr_init(&at);
	sigset_t none, dfl;
	sigemptyset(&none);
	sigemptyset(&dfl);
	sigaddset(&dfl, SIGPIPE);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &dfl);
	posix_spawnattr_setpgroup(&at, 0);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	char *argv[] = { "sh", "-c", (char *)cmd, NULL };
	int e = posix_spawn(&r->pid, "/bin/sh", &fa, &at, argv, env);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	free(env);
	free(extra);
	close(in_fd);
	if (e) {
		close(r->out_fd);
		r->out_fd = -1;
		r->pid = 0;
		return dsm_fail(DSM_EIO, "--check-cmd: starting /bin/sh: %s", strerror(e));
	}
	r->t0 = now();
	return 0;
}

int dsm_check_poll(struct dsm_check_run *r, double timeout, struct dsm_check_outcome *out)
{
	int st = 0;
	pid_t w;
	while ((w = waitpid(r->pid, &st, WNOHANG)) < 0 && errno == EINTR)
		;
	memset(out, 0, sizeof *out);
	out->exit_status = -1;
	if (w == 0) {
		if (now() - r->t0 < timeout)
			return 0;
		kill(-r->pid, SIGKILL);
		while (waitpid(r->pid, &st, 0) < 0 && errno == EINTR)
			;
		out->timed_out = 1;
	} else if (w < 0) {
		st = -1; /* collected elsewhere: the status is unknown */
	}
	out->seconds = now() - r->t0;
	if (st != -1 && WIFEXITED(st) && !out->timed_out)
		out->exit_status = WEXITSTATUS(st);
	else if (st != -1 && WIFSIGNALED(st))
		out->signal = WTERMSIG(st);
	struct stat sb;
	size_t size = fstat(r->out_fd, &sb) == 0 ? (size_t)sb.st_size : 0, keep = size;
	if (keep > DSM_CHECK_MAX_OUTPUT) {
		keep = DSM_CHECK_MAX_OUTPUT;
		out->output_truncated = 1;
	}
	out->output = malloc(keep + 1);
	if (!out->output) {
		dsm_check_abort(r);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	ssize_t got = keep ? pread(r->out_fd, out->output, keep, 0) : 0;
	out->output[got > 0 ? got : 0] = 0;
	close(r->out_fd);
	r->out_fd = -1;
	r->pid = 0;
	return 1;
}

void dsm_check_abort(struct dsm_check_run *r)
{
	if (r->pid > 0) {
		kill(-r->pid, SIGKILL);
		while (waitpid(r->pid, NULL, 0) < 0 && errno == EINTR)
			;
	}
	if (r->out_fd >= 0)
		close(r->out_fd);
	r->pid = 0;
	r->out_fd = -1;
}
