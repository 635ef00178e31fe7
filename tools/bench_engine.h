/* What the dsm-bench subcommands that run the engine share: its command-line flags, the model's sizes, its
 * notes. */
#ifndef DSM_BENCH_ENGINE_H
#define DSM_BENCH_ENGINE_H

#include "engine.h"

/* getopt_long over opts (the subcommand's own options followed by dsm_engine_flags, from
 * dsm_engine_flags_with): applies every engine flag to eo and returns the next other option, '?' after
 * printing the message of an engine flag with a bad value ("dsm-bench WHO: ..."), -1 at the end. */
int bench_getopt(int argc, char **argv, const struct option *opts, struct dsm_engine_options *eo, const char *who);

/* The sizes of the checkpoint in dir (dsm_plan_sizes) and the shape of its MoE layers, through the engine
 * opened with eo's model options, every weight mapped and none read. Returns 0 or a negative code (message
 * set). */
int bench_sizes(const char *dir, const struct dsm_engine_options *eo, struct dsm_plan_sizes *sz,
		struct dsm_moe_shape *shape);

/* Prints each line of an engine's notes (dsm_engine_notes) on stderr as "dsm-bench WHO: line". */
void bench_print_notes(const char *who, const char *notes);

#endif
