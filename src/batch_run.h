/* dsm-batch's job (docs/batch.md): the problems of an input file through the proof search on one engine,
 * several at once, each finished problem's result appended durably (batch.h). */
#ifndef DSM_BATCH_RUN_H
#define DSM_BATCH_RUN_H

#include "batch.h"
#include "engine.h"

struct batch_options {
	const char *model_dir, *in_path, *out_path, *errors_path;  /* errors_path NULL: OUT.errors.jsonl */
	struct dsm_engine_options engine;
	struct dsm_prove_settings search;   /* the job's settings (templates loaded) */
	int concurrent;                     /* problems in flight */
	int resume;
	int shard, shards;
	int64_t max_problem_tokens;         /* 0: no limit */
	double max_problem_seconds;         /* 0: no limit */
	double log_every;                   /* seconds between log lines when stderr is not a terminal */
	double drain_seconds;               /* after the first SIGINT/SIGTERM: time left to in-flight problems */
	int quiet;
};
/* Runs the job. Returns the exit status: 0 every problem of the shard has its result or its error line,
 * 1 the job failed (the message says why; the results written stay), 128 + signal when stopped by one. */
int batch_run(const struct batch_options *o);

#endif
