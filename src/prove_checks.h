/* Checks of a candidate proof before any verifier token is spent: cheap rules on the generated text, and an
 * external checker (a program given the proof on stdin) run as a child process without blocking the
 * search. */
#ifndef DSM_PROVE_CHECKS_H
#define DSM_PROVE_CHECKS_H

#include "generate.h"
#include "output_parse.h"

#include <stddef.h>
#include <sys/types.h>

/* ---- Rules ---- */

/* A repetition loop: the same span (1 to DSM_RULE_MAX_PERIOD bytes) at least DSM_RULE_MIN_REPEATS times in
 * a row at the end of the output, covering at least DSM_RULE_MIN_LOOP bytes. */
#define DSM_RULE_MAX_PERIOD 4096
#define DSM_RULE_MIN_REPEATS 6
#define DSM_RULE_MIN_LOOP 200
/* A proof that restates the problem: fewer than this many of its words are not words of the problem. */
#define DSM_RULE_MIN_NEW_WORDS 8

/* What the rules see of one generated candidate. */
struct dsm_rule_input {
	const char *text;               /* [len] the whole generated text */
	size_t len;
	enum dsm_stop_reason reason;
	int thinking;                   /* thinking was asked for: the answer must follow "</think>" */
	const char *problem;
};

/* The parts of a candidate the search keeps (views into the text). */
struct dsm_rule_parts {
	struct output_split split;
	struct proof_sections sections;
};

/* Runs the rules in order: "repetition", "cut_off" (stopped at the token limit or the context),
 * "no_think_end", "no_solution" (missing or empty), "restates_problem". Fills parts either way. Returns
 * NULL when every rule passed, else the name of the first rule that failed, with a sentence in detail. */
const char *dsm_rules_check(const struct dsm_rule_input *in, struct dsm_rule_parts *parts, char *detail,
			    size_t detail_size);

/* The length of the repeated span when text ends in a repetition loop (as above), else 0; *repeats: how
 * many times it repeats. */
size_t dsm_rule_repetition(const char *text, size_t len, size_t *repeats);

/* ---- The external checker ---- */

#define DSM_CHECK_MAX_OUTPUT 65536 /* bytes of its output kept */

/* One run of the checker: `/bin/sh -c cmd` with the proof on stdin, the problem in the environment
 * variable DSM_PROBLEM and the candidate's index in DSM_CANDIDATE, stdout and stderr into one temporary
 * file, in its own process group (a timeout kills the group). */
struct dsm_check_run {
	pid_t pid;                      /* 0: not running */
	int out_fd;
	double t0;
};

/* Starts the checker. 0, or DSM_EIO with a message (temporary files, spawn). */
int dsm_check_start(struct dsm_check_run *r, const char *cmd, const char *proof, const char *problem,
		    int candidate);

/* What a finished run gave. output is malloc'd (NUL-terminated, possibly empty). */
struct dsm_check_outcome {
	int exit_status, signal, timed_out;
	double seconds;
	char *output;
	int output_truncated;
};

/* 0 while it runs and has time left; 1 when it has ended (killed at timeout seconds): *out is filled and
 * the run is over; DSM_ENOMEM. Never blocks except to collect a child it has just killed. */
int dsm_check_poll(struct dsm_check_run *r, double timeout, struct dsm_check_outcome *out);
/* Kills a running checker and collects it. Accepts a run that is over. */
void dsm_check_abort(struct dsm_check_run *r);

#endif
