/* dsm-serve's HTTP side shared by its files: the server's state, the answers built from a job (the whole
 * response, the server-sent event stream) and the metrics text (serve_response.c). */
#ifndef DSM_SERVE_HTTP_H
#define DSM_SERVE_HTTP_H

#include "serve_engine.h"
#include "serve_request.h"
#include "templates.h"

#include <cjson/cJSON.h>
#include <microhttpd.h>
#include <stdint.h>
#include <time.h>

#define WAIT_SLICE 0.25         /* seconds between checks that the client is still there */

struct server {
	struct serve_engine *se;
	struct dsm_engine *e;
	const char *model_name;
	int64_t ctx, vocab;
	int32_t eos_id;
	int has_tokenizer;
	struct serve_limits lim;
	int64_t max_prompt_tokens;
	size_t max_body;
	const char *api_key;
	int loopback_only;
	int quiet;
	struct templates tpl;
	time_t started;
	/* counters of HTTP answers, under the engine's lock */
	uint64_t http_2xx, http_4xx, http_5xx;
	uint64_t next_id;
	int in_flight;          /* requests between their first byte and their last answer byte sent */
};

/* 1 when the client has closed its side of the connection (or the socket failed). */
int serve_client_gone(struct MHD_Connection *c);
/* "stop" or "length". */
const char *serve_finish_reason(enum dsm_stop_reason r);
/* The whole answer of a finished job (lock held): chat.completion or text_completion. */
cJSON *serve_full_response(const struct server *sv, const struct serve_job *job, const struct serve_params *p,
			   const char *id);
/* A response that streams job as server-sent events. Takes job (the caller's reference) and p (zeroed
 * here) in every case; NULL when out of memory. */
struct MHD_Response *serve_stream_response(struct server *sv, struct MHD_Connection *c, struct serve_job *job,
					   struct serve_params *p, const char *id);
/* The metrics in Prometheus text format, malloc'd; NULL when out of memory. */
char *serve_metrics_text(struct server *sv);

#endif
