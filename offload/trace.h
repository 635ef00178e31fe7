/* Routing traces (docs/trace.md): for every token and every MoE layer, the experts the router chose.
 * dsm-run --record-routing writes them; dsm-tune and the budget planner read them (expert hotness, cache
 * simulation). Compact little-endian binary: a 64-byte header, then one fixed-size record per token. */
#ifndef DSM_TRACE_H
#define DSM_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define DSM_TRACE_MAGIC "DSMROUTE"
#define DSM_TRACE_VERSION 1
#define DSM_TRACE_HEADER_BYTES 64

struct dsm_trace_info {
	uint32_t n_layers;        /* num_hidden_layers */
	uint32_t first_moe;       /* first MoE layer */
	uint32_t n_experts;       /* routed experts per layer (<= 65535) */
	uint32_t top_k;           /* experts chosen per token and layer */
	uint32_t record_bytes;    /* 8 + (n_layers - first_moe) * top_k * 2 */
	uint64_t n_records;       /* tokens in the file */
	char model_type[17];
};

struct dsm_trace_record {
	uint32_t seq;             /* sequence within a batch (0 for a single prompt) */
	uint32_t pos;             /* position of the token in its sequence */
	const uint16_t *experts;  /* [n_layers - first_moe][top_k], valid until the next call */
};

struct dsm_trace_writer;
struct dsm_trace_reader;

/* Creates (truncates) path. Returns 0 or DSM_EIO / DSM_EARG / DSM_ENOMEM with a message. */
int dsm_trace_create(struct dsm_trace_writer **out, const char *path, int n_layers, int first_moe, int n_experts,
		     int top_k, const char *model_type);
/* Choices of MoE layer `layer` for the n_tokens tokens of the current step: idx[n_tokens][top_k]. */
int dsm_trace_add_layer(struct dsm_trace_writer *w, int layer, int n_tokens, const int32_t *idx);
/* Ends the step: one record per token, with seq[t] and pos[t] (NULL: 0 for seq; for pos, a counter of
 * tokens written so far). Layers not given this step are written as 0xFFFF. */
int dsm_trace_end_step(struct dsm_trace_writer *w, int n_tokens, const uint32_t *seq, const uint32_t *pos);
/* The other way to feed a writer, one token at a time as a router hook sees them: the choice idx[top_k] of
 * token `pos` (sequence 0) in MoE layer `layer`. A token's record is written when its last layer comes
 * (or at close). Do not mix with dsm_trace_add_layer. */
int dsm_trace_add_token(struct dsm_trace_writer *w, int layer, uint32_t pos, const int32_t *idx);
/* Writes the record count into the header and closes. Returns 0 or the first write error. Accepts NULL. */
int dsm_trace_close(struct dsm_trace_writer *w);

/* Opens and validates a trace. Returns 0 or DSM_EIO, DSM_EMISSING, DSM_EHEADER (not a trace, another
 * version, inconsistent sizes), DSM_ETRUNCATED (the file ends inside a record) with a message. */
int dsm_trace_open(struct dsm_trace_reader **out, const char *path);
const struct dsm_trace_info *dsm_trace_info(const struct dsm_trace_reader *r);
/* Reads the next record: 1, 0 at the end, or DSM_EIO / DSM_EHEADER (an expert number out of range). */
int dsm_trace_next(struct dsm_trace_reader *r, struct dsm_trace_record *rec);
void dsm_trace_close_reader(struct dsm_trace_reader *r);

/* Counts of each (layer, expert) over the whole trace into counts[n_layers * n_experts] (malloc'ed).
 * Returns 0 or an error of dsm_trace_open / dsm_trace_next. */
int dsm_trace_counts(const char *path, struct dsm_trace_info *info, uint64_t **counts);

#endif
