/* dsm-batch (docs/batch.md): a problem set through the proof search, exactly one result per problem
 * whatever stops the job.
 *
 * Files, next to the results file OUT (JSON Lines, one result document with its id per finished problem):
 *   OUT                     appended a line at a time; a problem is done once its line is written and
 *                           fsynced (and the folder, when the file was created)
 *   OUT.errors.jsonl        (--errors) one line per input line or problem that cannot run, with the line
 *                           number and the reason
 *   OUT.state.json          the job: input, shard, settings, in-flight problems, counts, pid; rewritten
 *                           through a rename, read by `dsm-batch status` and checked by --resume
 * --resume reads OUT: a partial last line (a write cut by a crash or power loss) is cut off, every id in
 * it is done. */
#ifndef DSM_BATCH_H
#define DSM_BATCH_H

#include "prove.h"

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

/* ---- Input ---- */

struct batch_problem {
	char *id;
	char *problem;
	cJSON *settings;        /* the line's "settings" object (owned), NULL when it has none */
	int line;               /* 1-based line number in the input */
};

/* Parses one input line (len bytes, no newline): a JSON object with string "id" and "problem", optional
 * "settings" (an object of search flags, prove_flags.h), other members ignored. Returns 0 with *out
 * filled, 1 when the line is bad (why holds the reason), DSM_ENOMEM. Settings are only parsed here;
 * they are applied (and checked) by batch_problem_settings. */
int batch_parse_line(const char *text, size_t len, int line, struct batch_problem *out, char *why, size_t why_size);
void batch_problem_free(struct batch_problem *p);
/* base with the problem's overrides. DSM_EARG with a message naming the key. */
int batch_problem_settings(const struct batch_problem *p, const struct dsm_prove_settings *base,
			   struct dsm_prove_settings *out);

struct batch_input {
	struct batch_problem *p;    /* [n] the valid problems of the shard, in input order */
	int n;
	int lines;                  /* lines in the file (the shard's and the others') */
};

/* Reads the problems of shard `shard` of `shards` (line L belongs to shard (L - 1) % shards) from path.
 * Each bad line of the shard (invalid JSON, a missing or non-string id or problem, a duplicate id: the
 * later line, bad settings) is passed to on_error(arg, line, id or NULL, reason) and left out. A file
 * that is not UTF-8 (a UTF-16 byte order mark, invalid sequences) fails as a whole (DSM_EJSON, naming
 * the line and byte). Returns 0 or a negative DSM_E* code. */
int batch_input_read(const char *path, int shard, int shards, const struct dsm_prove_settings *base,
		     struct batch_input *in, void (*on_error)(void *arg, int line, const char *id, const char *why),
		     void *arg);
void batch_input_free(struct batch_input *in);

/* ---- Ids ---- */

struct batch_ids {                  /* a set of strings with a value each */
	char **key;
	int *value;
	size_t cap, n;
};
/* Adds key with value; returns 1 when added, 0 when present (*old its value), DSM_ENOMEM. */
int batch_ids_add(struct batch_ids *s, const char *key, int value, int *old);
/* The value of key, or -1 when absent. */
int batch_ids_get(const struct batch_ids *s, const char *key);
void batch_ids_free(struct batch_ids *s);

/* ---- Durable JSON Lines files ---- */

struct batch_log {
	int fd;
	char *path;
	off_t size;                 /* bytes of whole lines */
};

/* Opens path for appending (creating it, and syncing its folder, when absent). exclusive: an existing
 * non-empty file is refused (DSM_EARG). Reads the whole lines through line(arg, lineno, text, len) (may
 * be NULL; a non-zero return stops with that code); a partial last line, or a last line that is not
 * JSON, is cut off and reported in *cut (bytes). lock: take an exclusive lock or fail naming the
 * holder. */
int batch_log_open(struct batch_log *l, const char *path, int exclusive, int lock,
		   int (*line)(void *arg, int lineno, const char *text, size_t len), void *arg, off_t *cut);
/* Appends text and a newline, then fsync: the line is durable when this returns 0. On failure (a full
 * disk, an I/O error) the file is cut back to its whole lines and DSM_EIO names the file. */
int batch_log_append(struct batch_log *l, const char *text);
void batch_log_close(struct batch_log *l);

/* Reads a JSON Lines file that may end in a partial line, without changing it: calls line() for each
 * whole line; *partial: bytes of a partial last line. */
int batch_jsonl_read(const char *path, int (*line)(void *arg, int lineno, const char *text, size_t len), void *arg,
		     size_t *partial);

/* OUT + suffix (malloc'd). */
char *batch_path(const char *out, const char *suffix);

/* ---- Reading results ---- */

struct batch_result {           /* what status, merge and report need from a result line */
	char *id;
	int selected;               /* -1: none */
	double best;                /* the selected candidate's mean score */
	int rounds;
	uint64_t tokens;
	double seconds;
	char stop[24];
};
/* Parses a result line; 0, or DSM_EJSON with a message. */
int batch_result_parse(const char *text, size_t len, struct batch_result *r);

/* ---- Subcommands (batch_report.c) ---- */

int batch_status(const char *out_path, FILE *f);
int batch_merge(const char *out_path, char *const *shards, int n_shards, const char *input_path);
int batch_report(const char *results_path, const char *html_path, FILE *f);

#endif
