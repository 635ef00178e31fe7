/* The engine: everything a program needs to run a checkpoint, opened in one call (docs/engine.md).
 *
 * dsm_engine_open opens the model (weights mapped from the shards), the tokenizer when the checkpoint has
 * one, the backends (cpu, and a gpu backend by name), decides between reading the weights in and the
 * tiered expert store (it turns itself on when the weights do not fit in the memory dsm may use), sets up
 * the store's plan, budgets, cache policy and routing trace, and creates the session: up to max_seqs
 * sequences over one KV block pool. Programs then generate on the session (generate.h: dsm_generate for
 * one request, struct dsm_scheduler for many) and ask the engine for its report.
 *
 * Every program takes the same engine flags with the same defaults (dsm_engine_flags below). */
#ifndef DSM_ENGINE_H
#define DSM_ENGINE_H

#include "dispatch.h"
#include "model.h"
#include "session.h"

#include <getopt.h>
#include <stdint.h>
#include <stdio.h>

struct tokenizer;

struct dsm_engine_options {
	struct dsm_model_options model;     /* precision (default: dsm_precision_default), threads, binding ... */
	struct dsm_session_options session; /* ctx 4096, max_batch 128, max_seqs 1, kv_pool_bytes, kv BF16; hooks */
	int offload;                        /* -1 (default): the tiered store when the weights do not fit in the
					     * usable memory; 1: always; 0: never (map everything) */
	struct dsm_offload_setup tiers;     /* plan file, budgets, cache policy and size, hotness trace */
	const char *gpu_backend;            /* NULL, "emu", or "cuda" where built: computes gpu:N experts */
	const char *gpus;                   /* the devices of gpu:0, gpu:1, ... ("0,1"); NULL: device 0 alone */
	int cpu_attention;                  /* 1: with a GPU, keep the forward pass outside the experts on the CPU
					     * (default: on gpu:0, with the KV cache) */
	const char *record_routing;         /* write the routing trace here (docs/trace.md) */
	int no_populate;                    /* 1: do not read the mapped weights in at open */
	int no_huge_pages;                  /* 1: read them in as the page cache's pages, not into huge pages */
	int full_head;                      /* 1: greedy decoding multiplies the whole head (no screen) */
	/* Progress of reading the weights in (may be NULL). */
	void (*progress)(uint64_t done, uint64_t total, void *arg);
	void *progress_arg;
};

/* The defaults every program shares. */
void dsm_engine_options_default(struct dsm_engine_options *o);

struct dsm_engine;

/* Opens the checkpoint in dir. Returns 0 or a negative DSM_E* code with a message (a bad checkpoint, a
 * plan for another model, contradicting options, budgets too small, memory for the KV pool). */
int dsm_engine_open(struct dsm_engine **out, const char *dir, const struct dsm_engine_options *o);
/* Accepts NULL. Closes the routing trace (its error, if any, is lost: use dsm_engine_finish first). */
void dsm_engine_close(struct dsm_engine *e);
/* Completes what must be completed before close and can fail: the routing trace. */
int dsm_engine_finish(struct dsm_engine *e);

struct dsm_model *dsm_engine_model(const struct dsm_engine *e);
struct dsm_session *dsm_engine_session(const struct dsm_engine *e);
/* The checkpoint's tokenizer, NULL when it has no tokenizer.json. */
struct tokenizer *dsm_engine_tokenizer(const struct dsm_engine *e);

/* For a request's token_text callback: appends to out the text that token id adds to the stream ts (the
 * tokenizer's incremental decoding), nothing for ids past the tokenizer's vocabulary (padding rows of the
 * embedding). piece is the caller's scratch. Returns 0 or a negative DSM_E* code. */
struct token_stream;
struct text_buffer;
struct dsm_text;
int dsm_token_text(struct token_stream *ts, int32_t id, struct text_buffer *piece, struct dsm_text *out);
/* The placement plan of the tiered expert store, NULL when every expert is mapped. */
const struct dsm_plan *dsm_engine_plan(const struct dsm_engine *e);
/* What the user should know about the choices made at open, one line each ("" when nothing). */
const char *dsm_engine_notes(const struct dsm_engine *e);

/* The end-of-run report: n_tokens computed in `seconds` of forward passes. */
struct dsm_engine_report {
	enum dsm_precision precision;
	int threads, bound;                 /* threads of the cpu backend; 1 when bound one per core */
	uint64_t weights_mapped_bytes, weights_copied_bytes;
	uint64_t weights_huge_bytes;        /* of the mapped, read into huge pages of their own (anonymous) */
	uint64_t kv_pool_bytes, buffers_bytes;
	uint64_t head_screen_bytes;         /* greedy decoding's copy of the head (--full-head), 0: none */
	int64_t kv_blocks, kv_blocks_free;
	struct dsm_memory_limit memory;     /* what dsm may fill, and which limit gave it */
	int tiered;                         /* 1: the tiered store is on; then `offload` holds its report */
	struct dsm_offload_report offload;
	/* The kernels' measurements at open (decode: FP8 experts, BF16 head; the batched path's arithmetic): rounds 0
	 * when not measured */
	struct dsm_gemv_tune_result tune, head_tune, gemm_tune;
};
void dsm_engine_report(const struct dsm_engine *e, uint64_t n_tokens, double seconds, struct dsm_engine_report *r);

/* ---- Command-line flags shared by every program ---- */

/* Long options of the engine (terminated by a zero entry), their `val` codes from DSM_ENGINE_FLAG_BASE. */
#define DSM_ENGINE_FLAG_BASE 0x1000
extern const struct option dsm_engine_flags[];
/* Applies flag `code` (a dsm_engine_flags val, or 't' for -t) with argument arg. Returns 1 when the flag
 * is the engine's, 0 when not, DSM_EARG with a message for a bad value. */
int dsm_engine_flag(struct dsm_engine_options *o, int code, const char *arg);
/* The engine flags' help text. */
void dsm_engine_flags_help(FILE *f);
/* own (terminated by a zero entry) followed by dsm_engine_flags; free() it. NULL on ENOMEM. */
struct option *dsm_engine_flags_with(const struct option *own);
/* first followed by second (each terminated by a zero entry); free() it. NULL on ENOMEM. */
struct option *dsm_flags_concat(const struct option *first, const struct option *second);

#endif
