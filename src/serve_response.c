/* dsm-serve's answers (serve_http.h): the whole response of a finished job, the server-sent event stream
 * of a running one (OpenAI's chunk format, with the thinking split of serve_split_next), and /metrics. */
#include "serve_http.h"

#include "output_parse.h"
#include "tokenizer.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int serve_client_gone(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
	if (!ci)
		return 0;
	struct pollfd p = { .fd = ci->connect_fd, .events = POLLRDHUP };
	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL));
}

const char *serve_finish_reason(enum dsm_stop_reason r)
{
	return r == DSM_STOP_LENGTH || r == DSM_STOP_CONTEXT ? "length" : "stop";
}

static cJSON *string_n(const char *s, size_t n)
{
	char *t = strndup(s, n);
	cJSON *j = cJSON_CreateString(t ? t : "");
	free(t);
	return j;
}

static void add_usage(cJSON *j, const struct serve_job *job)
{
	int64_t completion = 0;
	for (int i = 0; i < job->n; i++)
		completion += job->choice[i].n_tokens;
	cJSON *u = cJSON_AddObjectToObject(j, "usage");
	cJSON_AddNumberToObject(u, "prompt_tokens", (double)job->prompt.n);
	cJSON_AddNumberToObject(u, "completion_tokens", (double)completion);
	cJSON_AddNumberToObject(u, "total_tokens", (double)((int64_t)job->prompt.n + completion));
}

static cJSON *response_head(const struct server *sv, const char *id, const char *object)
{
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "id", id);
	cJSON_AddStringToObject(j, "object", object);
	cJSON_AddNumberToObject(j, "created", (double)time(NULL));
	cJSON_AddStringToObject(j, "model", sv->model_name);
	cJSON_AddNullToObject(j, "system_fingerprint");
	return j;
}

/* The whole answer of a finished job (lock held). */
cJSON *serve_full_response(const struct server *sv, const struct serve_job *job, const struct serve_params *p,
			    const char *id)
{
	int chat = p->kind == SERVE_CHAT;
	cJSON *j = response_head(sv, id, chat ? "chat.completion" : "text_completion");
	cJSON *choices = cJSON_AddArrayToObject(j, "choices");
	for (int i = 0; i < job->n; i++) {
		const struct serve_choice *c = &job->choice[i];
		const char *text = c->text.data ? c->text.data : "";
		cJSON *o = cJSON_CreateObject();
		cJSON_AddNumberToObject(o, "index", i);
		if (chat) {
			cJSON *m = cJSON_AddObjectToObject(o, "message");
			cJSON_AddStringToObject(m, "role", "assistant");
			if (p->thinking && p->separate_reasoning) {
				struct output_split split;
				output_split_thinking(text, c->text.len, &split);
				cJSON_AddItemToObject(m, "content", string_n(split.answer.data, split.answer.len));
				cJSON_AddItemToObject(m, "reasoning_content", string_n(split.thinking.data, split.thinking.len));
			} else {
				cJSON_AddItemToObject(m, "content", string_n(text, c->text.len));
			}
		} else {
			cJSON_AddItemToObject(o, "text", string_n(text, c->text.len));
		}
		cJSON_AddNullToObject(o, "logprobs");
		cJSON_AddStringToObject(o, "finish_reason", serve_finish_reason(c->reason));
		cJSON_AddItemToArray(choices, o);
	}
	add_usage(j, job);
	return j;
}

/* ---- streaming ---- */

struct stream {
	struct server *sv;
	struct serve_job *job;
	struct serve_params p;
	char id[48];
	struct MHD_Connection *conn;
	struct serve_split *st;         /* [n] */
	struct text_buffer out;         /* SSE bytes not yet written */
	size_t out_pos;
	uint64_t seen;                  /* job version read */
	char *progress_sent;            /* prove: the last progress line sent */
	int finished;
};

static void sse_data(struct text_buffer *out, const char *event, cJSON *j)
{
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	if (!text)
		return;
	if (event) {
		text_buffer_append(out, "event: ", 7);
		text_buffer_append(out, event, strlen(event));
		text_buffer_append(out, "\n", 1);
	}
	text_buffer_append(out, "data: ", 6);
	text_buffer_append(out, text, strlen(text));
	text_buffer_append(out, "\n\n", 2);
	free(text);
}

/* A chunk with one choice's delta. */
static void chunk(struct stream *sm, int i, const struct text_view *reasoning, const struct text_view *content,
		  const char *finish)
{
	int chat = sm->p.kind == SERVE_CHAT;
	cJSON *j = response_head(sm->sv, sm->id, chat ? "chat.completion.chunk" : "text_completion");
	cJSON *choices = cJSON_AddArrayToObject(j, "choices"), *o = cJSON_CreateObject();
	cJSON_AddNumberToObject(o, "index", i);
	if (chat) {
		cJSON *d = cJSON_AddObjectToObject(o, "delta");
		if (!sm->st[i].role_sent) {
			cJSON_AddStringToObject(d, "role", "assistant");
			sm->st[i].role_sent = 1;
		}
		if (reasoning && reasoning->len)
			cJSON_AddItemToObject(d, "reasoning_content", string_n(reasoning->data, reasoning->len));
		/* the first chunk carries the role and an empty content; later ones only what they add */
		if (content && (content->len || cJSON_GetObjectItem(d, "role")) && !(reasoning && reasoning->len && !content->len))
			cJSON_AddItemToObject(d, "content", string_n(content->data, content->len));
	} else {
		cJSON_AddItemToObject(o, "text", string_n(content ? content->data : "", content ? content->len : 0));
	}
	cJSON_AddNullToObject(o, "logprobs");
	if (finish)
		cJSON_AddStringToObject(o, "finish_reason", finish);
	else
		cJSON_AddNullToObject(o, "finish_reason");
	cJSON_AddItemToArray(choices, o);
	if (sm->p.continuous_usage)
		add_usage(j, sm->job);
	else if (sm->p.include_usage)
		cJSON_AddNullToObject(j, "usage");
	sse_data(&sm->out, NULL, j);
}

/* Turns what changed in the job into events (lock held). */
static void stream_events(struct stream *sm)
{
	struct serve_job *job = sm->job;
	sm->seen = job->version;
	if (job->prove) {
		if (job->prove_progress && (!sm->progress_sent || strcmp(sm->progress_sent, job->prove_progress))) {
			free(sm->progress_sent);
			sm->progress_sent = strdup(job->prove_progress);
			sse_data(&sm->out, "progress", cJSON_Parse(job->prove_progress));
		}
	} else {
		for (int i = 0; i < job->n; i++) {
			struct serve_choice *c = &job->choice[i];
			struct serve_split *st = &sm->st[i];
			if (st->finish_sent)
				continue;
			struct text_view reasoning, content;
			const char *text = c->text.data ? c->text.data : "";
			/* a chunk for new text; with continuous usage also for tokens without text */
			int more = sm->p.continuous_usage && c->n_tokens > st->tokens_sent;
			st->tokens_sent = c->n_tokens;
			if (c->text.len > st->sent || !st->role_sent || more) {
				if (sm->p.kind == SERVE_CHAT && sm->p.thinking && sm->p.separate_reasoning) {
					serve_split_next(st, text, c->text.len, c->done, &reasoning.data, &reasoning.len,
							 &content.data, &content.len);
				} else {
					reasoning = (struct text_view){ text, 0 };
					content = (struct text_view){ text + st->sent, c->text.len - st->sent };
					st->sent = c->text.len;
				}
				if (reasoning.len || content.len || !st->role_sent || more)
					chunk(sm, i, &reasoning, &content, NULL);
			}
			if (c->done && !job->error_status) {
				chunk(sm, i, NULL, NULL, serve_finish_reason(c->reason));
				st->finish_sent = 1;
			}
		}
	}
	if (job->state != SERVE_DONE)
		return;
	if (job->error_status) {
		struct serve_error err;
		serve_error_set(&err, job->error_status, job->error_status >= 500 ? "server_error" : "invalid_request_error",
				NULL, "%s", job->error);
		char *e = serve_error_json(&err);
		if (e) {
			text_buffer_append(&sm->out, "data: ", 6);
			text_buffer_append(&sm->out, e, strlen(e));
			text_buffer_append(&sm->out, "\n\n", 2);
			free(e);
		}
	} else if (job->prove) {
		text_buffer_append(&sm->out, "event: result\ndata: ", 20);
		text_buffer_append(&sm->out, job->prove_json, strlen(job->prove_json));
		text_buffer_append(&sm->out, "\n\n", 2);
	} else if (sm->p.include_usage) {
		cJSON *j = response_head(sm->sv, sm->id, sm->p.kind == SERVE_CHAT ? "chat.completion.chunk" : "text_completion");
		cJSON_AddArrayToObject(j, "choices");
		add_usage(j, job);
		sse_data(&sm->out, NULL, j);
	}
	text_buffer_append(&sm->out, "data: [DONE]\n\n", 14);
	sm->finished = 1;
}

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
	(void)pos;
	struct stream *sm = cls;
	for (;;) {
		if (sm->out_pos < sm->out.len) {
			size_t n = sm->out.len - sm->out_pos;
			if (n > max)
				n = max;
			memcpy(buf, sm->out.data + sm->out_pos, n);
			sm->out_pos += n;
			if (sm->out_pos == sm->out.len)
				sm->out_pos = sm->out.len = 0;
			return (ssize_t)n;
		}
		if (sm->finished)
			return MHD_CONTENT_READER_END_OF_STREAM;
		serve_lock(sm->sv->se);
		if (sm->job->version == sm->seen && sm->job->state != SERVE_DONE)
			serve_wait(sm->sv->se, sm->job, sm->seen, WAIT_SLICE);
		if (sm->job->version != sm->seen || sm->job->state == SERVE_DONE)
			stream_events(sm);
		serve_unlock(sm->sv->se);
		if (sm->out.len == 0 && serve_client_gone(sm->conn))
			return MHD_CONTENT_READER_END_WITH_ERROR;
	}
}

static void stream_free(void *cls)
{
	struct stream *sm = cls;
	serve_job_release(sm->sv->se, sm->job);
	serve_params_free(&sm->p);
	text_buffer_free(&sm->out);
	free(sm->st);
	free(sm->progress_sent);
	free(sm);
}

struct MHD_Response *serve_stream_response(struct server *sv, struct MHD_Connection *c, struct serve_job *job,
					   struct serve_params *p, const char *id)
{
	struct stream *sm = calloc(1, sizeof *sm);
	if (!sm || !(sm->st = calloc((size_t)job->n, sizeof *sm->st))) {
		free(sm);
		serve_job_release(sv->se, job);
		serve_params_free(p);
		return NULL;
	}
	sm->sv = sv;
	sm->job = job;
	sm->p = *p;
	memset(p, 0, sizeof *p);
	sm->conn = c;
	snprintf(sm->id, sizeof sm->id, "%s", id);
	struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, sm, stream_free);
	if (!r) {
		stream_free(sm);
		return NULL;
	}
	MHD_add_response_header(r, "Content-Type", "text/event-stream");
	MHD_add_response_header(r, "Cache-Control", "no-cache");
	return r;
}

char *serve_metrics_text(struct server *sv)
{
	char *text = NULL;
	size_t size = 0;
	FILE *f = open_memstream(&text, &size);
	if (!f)
		return NULL;
	serve_lock(sv->se);
	const struct serve_metrics *m = serve_metrics(sv->se);
#define METRIC(name, type, help, fmt, ...) \
	fprintf(f, "# HELP dsm_" name " " help "\n# TYPE dsm_" name " " type "\n" fmt "\n", __VA_ARGS__)
	fprintf(f, "# HELP dsm_requests_total Generation requests by how they ended (rejected: the queue was full).\n"
		"# TYPE dsm_requests_total counter\n"
		"dsm_requests_total{result=\"finished\"} %llu\ndsm_requests_total{result=\"failed\"} %llu\n"
		"dsm_requests_total{result=\"cancelled\"} %llu\ndsm_requests_total{result=\"rejected\"} %llu\n",
		(unsigned long long)m->requests_finished, (unsigned long long)m->requests_failed,
		(unsigned long long)m->requests_cancelled, (unsigned long long)m->requests_rejected);
	fprintf(f, "# HELP dsm_http_responses_total HTTP responses by status class.\n"
		"# TYPE dsm_http_responses_total counter\n"
		"dsm_http_responses_total{class=\"2xx\"} %llu\ndsm_http_responses_total{class=\"4xx\"} %llu\n"
		"dsm_http_responses_total{class=\"5xx\"} %llu\n", (unsigned long long)sv->http_2xx,
		(unsigned long long)sv->http_4xx, (unsigned long long)sv->http_5xx);
	METRIC("prompt_tokens_total", "counter", "Prompt tokens of the requests started.", "dsm_prompt_tokens_total %llu",
	       (unsigned long long)m->prompt_tokens);
	METRIC("completion_tokens_total", "counter", "Tokens generated.", "dsm_completion_tokens_total %llu",
	       (unsigned long long)m->completion_tokens);
	METRIC("tokens_per_second", "gauge", "Tokens generated per second over the last few seconds.",
	       "dsm_tokens_per_second %.3f", m->tokens_per_second);
	METRIC("queue_length", "gauge", "Requests waiting for sequences.", "dsm_queue_length %d", m->queue_length);
	METRIC("running_requests", "gauge", "Requests decoding.", "dsm_running_requests %d", m->running_requests);
	METRIC("batch_sequences", "gauge", "Sequences in the batch (all choices of the running requests).",
	       "dsm_batch_sequences %d", m->running_sequences);
	METRIC("batch_rows", "gauge", "Rows (tokens) of the last step, decode and prefill.", "dsm_batch_rows %d",
	       m->last_batch_rows);
	METRIC("steps_total", "counter", "Engine steps run.", "dsm_steps_total %llu", (unsigned long long)m->steps);
	METRIC("step_rows_total", "counter", "Rows of all steps (decode + prefill).", "dsm_step_rows_total %llu",
	       (unsigned long long)m->step_rows);
	METRIC("prefill_rows_total", "counter", "Prompt rows computed.", "dsm_prefill_rows_total %llu",
	       (unsigned long long)m->prefill_rows);
	METRIC("step_seconds_total", "counter", "Seconds spent in engine steps.", "dsm_step_seconds_total %.6f",
	       m->step_seconds);
	METRIC("kv_blocks", "gauge", "Blocks of the KV pool.", "dsm_kv_blocks %lld", (long long)m->kv_blocks);
	METRIC("kv_blocks_used", "gauge", "Blocks of the KV pool in use.", "dsm_kv_blocks_used %lld",
	       (long long)(m->kv_blocks - m->kv_blocks_free));
	METRIC("kv_pool_use_ratio", "gauge", "Share of the KV pool in use.", "dsm_kv_pool_use_ratio %.6f",
	       m->kv_blocks > 0 ? (double)(m->kv_blocks - m->kv_blocks_free) / (double)m->kv_blocks : 0.0);
	METRIC("expert_cache_hit_rate", "gauge", "Hit rate of the tiered store's expert cache (0 when every expert "
	       "is mapped).", "dsm_expert_cache_hit_rate %.6f", m->tiered ? m->cache_hit_rate : 0.0);
	METRIC("io_wait_seconds_total", "counter", "Seconds the tiered store waited for expert reads.",
	       "dsm_io_wait_seconds_total %.6f", m->tiered ? m->io_wait_seconds : 0.0);
	METRIC("uptime_seconds", "gauge", "Seconds since the server started.", "dsm_uptime_seconds %.0f",
	       difftime(time(NULL), sv->started));
#undef METRIC
	serve_unlock(sv->se);
	if (fclose(f) != 0) {
		free(text);
		return NULL;
	}
	return text;
}

