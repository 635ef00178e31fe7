/* dsm-tune: what its subcommand files (tools/dsm-tune.c, tools/tune_*.c) share beyond tools/tune.h. */
#ifndef DSM_TUNE_CLI_H
#define DSM_TUNE_CLI_H

#include "tune.h"

#include <cjson/cJSON.h>

int tune_probe_main(int argc, char **argv);
int tune_validate_main(int argc, char **argv);
int tune_report_main(int argc, char **argv);

/* Measures this machine (tools/tune_probe.c): expert kernel at the model's shape (model may be NULL: the real
 * one), NVMe reads of file (NULL: the model's largest shard; none without either). quick: one short pass of
 * each figure, the expert kernel at one token only (0 at 8 and 64) and NVMe at queue depth 16 only. 0 or -1
 * (message set). */
int tune_probe(struct tune_hw *hw, const char *model, const char *file, const char *name, int verbose, int quick);
/* Prints "dsm-tune WHO: <dsm_errmsg()>" on stderr; returns 1. */
int tune_fail(const char *who);
/* Writes text to path ("-": stdout); 0 or 1 after a message. */
int tune_write(const char *path, const char *text, const char *who);
/* The plan as JSON, with a comment and the sizes simulate needs without the model (key "_dsm_tune"). */
char *tune_plan_json(const struct dsm_plan *p, const struct tune_model *m, const char *comment);
/* Loads a plan; the model from model_path (may be NULL: from the plan's "model" and "_dsm_tune"). */
int tune_load_plan(struct dsm_plan **p, struct tune_model *m, const char *plan_path, const char *model_path);
/* The simulation result as JSON (per layer too). */
cJSON *tune_sim_json(const struct tune_sim_result *r, const struct tune_model *m);
/* "lru", "lfu", "pinned", "belady"; -1 when unknown. */
int tune_parse_policy(const char *s);

#endif
