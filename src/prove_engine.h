/* The proof search's generation boundary (prove.h: struct dsm_gen) over an engine: requests are text
 * prompts, tokenized with the checkpoint's tokenizer, run by a dsm_scheduler on the engine's session
 * (decoding together, forks sharing prefills), and their generated tokens decoded back to text. */
#ifndef DSM_PROVE_ENGINE_H
#define DSM_PROVE_ENGINE_H

#include "engine.h"
#include "generate.h"
#include "prove.h"

struct dsm_prove_engine;

/* threads > 0: the OpenMP thread count set before each of this boundary's steps (two engines stepped
 * in turn from one loop each run with their own count); 0 leaves it. Returns 0, or DSM_EMISSING when the
 * checkpoint has no tokenizer, DSM_ENOMEM. */
int dsm_prove_engine_init(struct dsm_prove_engine **out, struct dsm_engine *e, int threads);
/* Accepts NULL. Requests still running are ended without their callbacks. */
void dsm_prove_engine_free(struct dsm_prove_engine *pe);
/* The boundary, owned by pe. */
struct dsm_gen *dsm_prove_engine_gen(struct dsm_prove_engine *pe);

struct dsm_prove_engine_stats {
	struct dsm_scheduler_stats scheduler;
	double step_seconds;            /* time in the scheduler's steps */
	uint64_t prompt_tokens;         /* prompt tokens of every request added (forks included) */
};
void dsm_prove_engine_get_stats(const struct dsm_prove_engine *pe, struct dsm_prove_engine_stats *st);

#endif
