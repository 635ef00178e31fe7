/* dsm-serve: an OpenAI-compatible HTTP server on the batched engine (docs/serve.md).
 *
 * libmicrohttpd runs one thread per connection; each request is parsed (serve_request.c), tokenized and
 * handed to the engine thread (serve_engine.c) as a job, and its thread waits for the job's text: all of it
 * for a plain response, piece by piece for a stream (server-sent events in OpenAI's chunk format). A
 * client that closes its connection cancels its job at the next step. */
#include "engine.h"
#include "error.h"
#include "output_parse.h"
#include "prove.h"
#include "prove_flags.h"
#include "serve_http.h"
#include "templates.h"
#include "tokenizer.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <microhttpd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Per connection: the request body as it arrives. */
struct conn {
	char *body;
	size_t len, cap;
	int too_big;
};

static double wall_now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ---- answers ---- */

static void count_status(struct server *sv, unsigned status)
{
	serve_lock(sv->se);
	if (status < 300)
		sv->http_2xx++;
	else if (status < 500)
		sv->http_4xx++;
	else
		sv->http_5xx++;
	serve_unlock(sv->se);
}

/* Sends text (taken over: freed here) with a content type. */
static enum MHD_Result send_text(struct server *sv, struct MHD_Connection *c, unsigned status, char *text,
				 const char *type, const char *retry_after)
{
	if (!text)
		return MHD_NO;
	struct MHD_Response *r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	if (retry_after)
		MHD_add_response_header(r, "Retry-After", retry_after);
	if (status == 401)
		MHD_add_response_header(r, "WWW-Authenticate", "Bearer");
	enum MHD_Result ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	count_status(sv, status);
	return ret;
}

static enum MHD_Result send_json(struct server *sv, struct MHD_Connection *c, unsigned status, cJSON *j)
{
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	return send_text(sv, c, status, text, "application/json", NULL);
}

static enum MHD_Result send_error(struct server *sv, struct MHD_Connection *c, const struct serve_error *err)
{
	const char *retry = err->status == 503 ? "1" : NULL;
	return send_text(sv, c, (unsigned)err->status, serve_error_json(err), "application/json", retry);
}

static enum MHD_Result fail(struct server *sv, struct MHD_Connection *c, int status, const char *type,
			    const char *param, const char *msg)
{
	struct serve_error err;
	serve_error_set(&err, status, type, param, "%s", msg);
	return send_error(sv, c, &err);
}

/* ---- requests ---- */

/* Waits until the job has left the queue (stream) or finished. 0, or -1 when the client has gone. */
static int wait_job(struct server *sv, struct MHD_Connection *c, struct serve_job *job, int until_done)
{
	for (;;) {
		serve_lock(sv->se);
		int ready = until_done ? job->state == SERVE_DONE : job->state != SERVE_QUEUED;
		if (!ready)
			serve_wait(sv->se, job, job->version, WAIT_SLICE);
		ready = until_done ? job->state == SERVE_DONE : job->state != SERVE_QUEUED;
		serve_unlock(sv->se);
		if (ready)
			return 0;
		if (serve_client_gone(c))
			return -1;
	}
}

static uint64_t random_seed(struct server *sv)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	serve_lock(sv->se);
	uint64_t n = ++sv->next_id;
	serve_unlock(sv->se);
	uint64_t x = ((uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20)) + n * 0x9e3779b97f4a7c15ull;
	x ^= x >> 31;
	return x & (((uint64_t)1 << 53) - 1);
}

static int fill_prove(struct server *sv, const struct serve_params *p, struct serve_job *job, struct serve_error *err)
{
	struct dsm_prove_settings *s = &job->prove_settings;
	dsm_prove_settings_default(s);
	s->templates = &sv->tpl;
	const char *bad = NULL;
	if (p->prove_settings && dsm_prove_flags_json(s, p->prove_settings, 0, &bad) < 0)
		return serve_error_set(err, 400, "invalid_request_error", bad ? bad : "settings", "%s", dsm_errmsg());
	if (!isnan(p->temperature)) s->temperature = (float)p->temperature;
	if (!isnan(p->top_p)) s->top_p = (float)p->top_p;
	if (p->has_seed) s->seed = p->seed;
	s->thinking = s->thinking && p->thinking;  /* off when either the request or its settings turn it off */
	s->check_cmd = NULL;
	s->verifier_name = "self";
	if (dsm_prove_settings_check(s) < 0)
		return serve_error_set(err, 400, "invalid_request_error", "settings", "%s", dsm_errmsg());
	if (!(job->problem = strdup(p->prompt)))
		return serve_error_set(err, 503, "server_error", NULL, "out of memory");
	job->prove = 1;
	return 0;
}

static enum MHD_Result handle_generate(struct server *sv, struct MHD_Connection *c, enum serve_kind kind,
				       const struct conn *cs)
{
	struct serve_error err;
	struct serve_params p;
	if (serve_parse_request(kind, cs->body ? cs->body : "", cs->len, &sv->lim, &p, &err) < 0)
		return send_error(sv, c, &err);
	struct serve_job *job = NULL;
	if (p.model && strcmp(p.model, sv->model_name) != 0) {
		serve_error_set(&err, 404, "invalid_request_error", "model", "the model '%.100s' does not exist (this "
				"server has '%s')", p.model, sv->model_name);
		goto error;
	}
	if (!(job = serve_job_new(kind == SERVE_PROVE ? 1 : p.n))) {
		serve_error_set(&err, 503, "server_error", NULL, "out of memory");
		goto error;
	}
	if (kind == SERVE_PROVE) {
		if (!sv->has_tokenizer) {
			serve_error_set(&err, 400, "invalid_request_error", NULL, "the checkpoint has no tokenizer: no proof "
					"search");
			goto error;
		}
		if (fill_prove(sv, &p, job, &err) < 0)
			goto error;
	} else {
		if (p.prompt_ids) {
			for (int64_t i = 0; i < p.n_prompt_ids; i++)
				if (token_ids_push(&job->prompt, p.prompt_ids[i]) < 0) {
					serve_error_set(&err, 503, "server_error", NULL, "out of memory");
					goto error;
				}
		} else if (serve_engine_encode(sv->se, p.prompt, p.add_special, &job->prompt) < 0) {
			serve_error_set(&err, 400, "invalid_request_error", kind == SERVE_CHAT ? "messages" : "prompt", "%s",
					dsm_errmsg());
			goto error;
		}
		int64_t n = (int64_t)job->prompt.n;
		const char *param = kind == SERVE_CHAT ? "messages" : "prompt";
		if (n == 0) {
			serve_error_set(&err, 400, "invalid_request_error", param, "the prompt encodes to no tokens");
			goto error;
		}
		for (int64_t i = 0; i < n; i++)
			if (job->prompt.ids[i] >= sv->vocab) {
				serve_error_set(&err, 400, "invalid_request_error", param, "token id %d is outside the "
						"vocabulary of %lld", job->prompt.ids[i], (long long)sv->vocab);
				goto error;
			}
		if (n > sv->max_prompt_tokens || n >= sv->ctx) {
			serve_error_set(&err, 400, "invalid_request_error", param, "the prompt has %lld tokens: this server "
					"takes at most %lld (context %lld, --max-prompt-tokens)", (long long)n,
					(long long)(sv->max_prompt_tokens < sv->ctx - 1 ? sv->max_prompt_tokens : sv->ctx - 1),
					(long long)sv->ctx);
			goto error;
		}
		struct dsm_generate_params *gp = &job->params;
		gp->max_tokens = p.max_tokens > 0 ? p.max_tokens : sv->ctx - n;
		if (gp->max_tokens > sv->lim.max_tokens)
			gp->max_tokens = sv->lim.max_tokens;
		gp->sampling = (struct dsm_sampler_params){ .temperature = (float)p.temperature, .top_p = (float)p.top_p,
							    .top_k = p.top_k, .seed = p.has_seed ? p.seed : random_seed(sv) };
		gp->eos_id = p.ignore_eos ? -1 : sv->eos_id;
		for (int i = 0; i < p.n_stop; i++) {
			job->stop_store[i] = p.stop[i];
			p.stop[i] = NULL;
		}
		gp->stop = (const char *const *)job->stop_store;
		gp->n_stop = p.n_stop;
	}
	if (serve_submit(sv->se, job) < 0) {
		serve_error_set(&err, 503, "server_error", NULL, "the server is busy (the queue is full) or shutting down: "
				"retry later");
		goto error;
	}
	char id[48];
	serve_lock(sv->se);
	uint64_t seq = ++sv->next_id;
	serve_unlock(sv->se);
	snprintf(id, sizeof id, "%s-%llx%llx", kind == SERVE_CHAT ? "chatcmpl" : kind == SERVE_PROVE ? "prove" : "cmpl",
		 (unsigned long long)sv->started, (unsigned long long)seq);
	if (wait_job(sv, c, job, !p.stream) < 0) {
		serve_job_release(sv->se, job);
		serve_params_free(&p);
		return MHD_NO;
	}
	serve_lock(sv->se);
	int status = job->error_status;
	if (status && (job->state == SERVE_DONE)) {
		serve_error_set(&err, status, status >= 500 ? "server_error" : "invalid_request_error", NULL, "%s", job->error);
		serve_unlock(sv->se);
		goto error;
	}
	if (!p.stream) {
		cJSON *j = NULL;
		char *doc = NULL;
		if (kind == SERVE_PROVE)
			doc = strdup(job->prove_json);
		else
			j = serve_full_response(sv, job, &p, id);
		serve_unlock(sv->se);
		serve_job_release(sv->se, job);
		serve_params_free(&p);
		if (kind == SERVE_PROVE)
			return send_text(sv, c, 200, doc, "application/json", NULL);
		return send_json(sv, c, 200, j);
	}
	serve_unlock(sv->se);
	struct MHD_Response *r = serve_stream_response(sv, c, job, &p, id);
	if (!r)
		return MHD_NO;
	enum MHD_Result ret = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	count_status(sv, 200);
	return ret;
error:
	if (job)
		serve_job_release(sv->se, job);
	serve_params_free(&p);
	return send_error(sv, c, &err);
}

static enum MHD_Result handle_models(struct server *sv, struct MHD_Connection *c, const char *one)
{
	cJSON *m = cJSON_CreateObject();
	cJSON_AddStringToObject(m, "id", sv->model_name);
	cJSON_AddStringToObject(m, "object", "model");
	cJSON_AddNumberToObject(m, "created", (double)sv->started);
	cJSON_AddStringToObject(m, "owned_by", "dsm");
	cJSON_AddNumberToObject(m, "context_length", (double)sv->ctx);
	if (one) {
		if (strcmp(one, sv->model_name) != 0) {
			cJSON_Delete(m);
			return fail(sv, c, 404, "invalid_request_error", "model", "no such model");
		}
		return send_json(sv, c, 200, m);
	}
	cJSON *j = cJSON_CreateObject();
	cJSON_AddStringToObject(j, "object", "list");
	cJSON_AddItemToArray(cJSON_AddArrayToObject(j, "data"), m);
	return send_json(sv, c, 200, j);
}

/* Constant-time comparison of the Authorization header with "Bearer KEY". */
static int authorized(const struct server *sv, struct MHD_Connection *c)
{
	if (!sv->api_key)
		return 1;
	const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Authorization");
	if (!h || strncmp(h, "Bearer ", 7) != 0)
		return 0;
	h += 7;
	size_t a = strlen(h), b = strlen(sv->api_key);
	unsigned char diff = a != b;
	for (size_t i = 0; i < b; i++)
		diff |= (unsigned char)(sv->api_key[i] ^ (i < a ? h[i] : 0));
	return diff == 0;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
				  const char *version, const char *upload, size_t *upload_size, void **state)
{
	(void)version;
	struct server *sv = cls;
	struct conn *cs = *state;
	if (!cs) {
		if (!(cs = calloc(1, sizeof *cs)))
			return MHD_NO;
		*state = cs;
		serve_lock(sv->se);
		sv->in_flight++;
		serve_unlock(sv->se);
		return MHD_YES;
	}
	if (*upload_size) {
		if (!cs->too_big && cs->len + *upload_size > sv->max_body)
			cs->too_big = 1;
		if (!cs->too_big) {
			if (cs->len + *upload_size + 1 > cs->cap) {
				size_t cap = cs->cap ? cs->cap : 4096;
				while (cap < cs->len + *upload_size + 1)
					cap *= 2;
				char *b = realloc(cs->body, cap);
				if (!b)
					return MHD_NO;
				cs->body = b;
				cs->cap = cap;
			}
			memcpy(cs->body + cs->len, upload, *upload_size);
			cs->len += *upload_size;
			cs->body[cs->len] = 0;
		}
		*upload_size = 0;
		return MHD_YES;
	}
	int get = strcmp(method, "GET") == 0, post = strcmp(method, "POST") == 0;
	if (strcmp(url, "/health") == 0 && get) {
		char *ok = strdup("{\"status\":\"ok\"}");
		return send_text(sv, c, 200, ok, "application/json", NULL);
	}
	if (!authorized(sv, c))
		return fail(sv, c, 401, "authentication_error", NULL, "a valid 'Authorization: Bearer KEY' header is required");
	if (cs->too_big) {
		char msg[128];
		snprintf(msg, sizeof msg, "the body is larger than %zu bytes (--max-body)", sv->max_body);
		return fail(sv, c, 413, "invalid_request_error", NULL, msg);
	}
	static const struct { const char *url; enum serve_kind kind; } posts[] = {
		{ "/v1/chat/completions", SERVE_CHAT }, { "/v1/completions", SERVE_COMPLETION }, { "/v1/prove", SERVE_PROVE },
		{ "/chat/completions", SERVE_CHAT }, { "/completions", SERVE_COMPLETION },
	};
	for (size_t i = 0; i < sizeof posts / sizeof *posts; i++)
		if (strcmp(url, posts[i].url) == 0) {
			if (!post)
				return fail(sv, c, 405, "invalid_request_error", NULL, "use POST");
			return handle_generate(sv, c, posts[i].kind, cs);
		}
	if (strcmp(url, "/v1/models") == 0 || strcmp(url, "/models") == 0)
		return get ? handle_models(sv, c, NULL) : fail(sv, c, 405, "invalid_request_error", NULL, "use GET");
	if (strncmp(url, "/v1/models/", 11) == 0 && get)
		return handle_models(sv, c, url + 11);
	if (strcmp(url, "/metrics") == 0 && get) {
		char *text = serve_metrics_text(sv);
		return text ? send_text(sv, c, 200, text, "text/plain; version=0.0.4", NULL) : MHD_NO;
	}
	char msg[300];
	snprintf(msg, sizeof msg, "no such endpoint: %.10s %.200s", method, url);
	return fail(sv, c, 404, "invalid_request_error", NULL, msg);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **state, enum MHD_RequestTerminationCode code)
{
	(void)c;
	(void)code;
	struct server *sv = cls;
	struct conn *cs = *state;
	if (cs) {
		free(cs->body);
		free(cs);
		*state = NULL;
		serve_lock(sv->se);
		sv->in_flight--;
		serve_unlock(sv->se);
	}
}

static enum MHD_Result accept_client(void *cls, const struct sockaddr *addr, socklen_t len)
{
	(void)len;
	const struct server *sv = cls;
	if (!sv->loopback_only)
		return MHD_YES;
	if (addr->sa_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)addr)->sin_addr.s_addr) >> 24) == 127 ? MHD_YES : MHD_NO;
	if (addr->sa_family == AF_INET6) {
		const struct in6_addr *a = &((const struct sockaddr_in6 *)addr)->sin6_addr;
		if (IN6_IS_ADDR_LOOPBACK(a))
			return MHD_YES;
		return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127 ? MHD_YES : MHD_NO;
	}
	return MHD_NO;
}

/* ---- main ---- */

static void usage(FILE *f)
{
	fputs("usage: dsm-serve -m CHECKPOINT_DIR [--host ADDR] [--port N] [options] [engine options]\n"
	      "Serves the checkpoint over an OpenAI-compatible HTTP API (docs/serve.md): POST /v1/chat/completions,\n"
	      "/v1/completions and /v1/prove (the proof search), GET /v1/models, /health and /metrics. Every request's\n"
	      "sequences decode together in the batched engine. Prints 'dsm-serve: listening on http://ADDR:PORT'\n"
	      "when ready; SIGINT or SIGTERM stops it (requests still running get an error within one step).\n"
	      "\n"
	      "server:\n"
	      "  -m, --model DIR            checkpoint folder\n"
	      "  --host ADDR                address to listen on (default 127.0.0.1)\n"
	      "  --port N                   port (default 8080; 0: any free port, printed)\n"
	      "  --api-key KEY              require 'Authorization: Bearer KEY' (also from $DSM_API_KEY). Without\n"
	      "                             a key only loopback clients are accepted, unless --host is given\n"
	      "  --model-name NAME          the model's id in the API (default: the checkpoint folder's name)\n"
	      "  --max-queue N              requests waiting for sequences at most; more get 503 with Retry-After\n"
	      "                             (default 64)\n"
	      "  --max-body BYTES           request body limit (default 1048576)\n"
	      "  --max-prompt-tokens N      prompt limit (default: the context less one)\n"
	      "  --max-tokens-limit N       largest max_tokens accepted (default: the context); also the default\n"
	      "                             limit of a request that gives none (at most the rest of the context)\n"
	      "  --max-n N                  largest n accepted (default: --max-seqs)\n"
	      "  --prefill-chunk N          prompt tokens per step, all requests together (default: --max-batch)\n"
	      "  --templates FILE           prompt templates of the proof search (docs/templates.md)\n"
	      "  -q, --quiet                nothing on stderr but errors\n"
	      "  -h, --help                 this text\n"
	      "The engine's --max-seqs (sequences decoding together) defaults to 16 here.\n\n", f);
	dsm_engine_flags_help(f);
}

enum { OPT_HOST = 256, OPT_PORT, OPT_API_KEY, OPT_MODEL_NAME, OPT_MAX_QUEUE, OPT_MAX_BODY, OPT_MAX_PROMPT,
       OPT_MAX_TOKENS, OPT_MAX_N, OPT_PREFILL_CHUNK, OPT_TEMPLATES };

static int64_t int_arg(const char *opt, const char *s, int64_t lo, int64_t hi)
{
	char *end;
	errno = 0;
	long long v = strtoll(s, &end, 10);
	if (end == s || *end || errno || v < lo || v > hi) {
		fprintf(stderr, "dsm-serve: %s: '%s' is not an integer in [%lld, %lld]\n", opt, s, (long long)lo,
			(long long)hi);
		exit(2);
	}
	return v;
}

int main(int argc, char **argv)
{
	static const struct option own[] = {
		{ "model", required_argument, NULL, 'm' }, { "host", required_argument, NULL, OPT_HOST },
		{ "port", required_argument, NULL, OPT_PORT }, { "api-key", required_argument, NULL, OPT_API_KEY },
		{ "model-name", required_argument, NULL, OPT_MODEL_NAME },
		{ "max-queue", required_argument, NULL, OPT_MAX_QUEUE }, { "max-body", required_argument, NULL, OPT_MAX_BODY },
		{ "max-prompt-tokens", required_argument, NULL, OPT_MAX_PROMPT },
		{ "max-tokens-limit", required_argument, NULL, OPT_MAX_TOKENS }, { "max-n", required_argument, NULL, OPT_MAX_N },
		{ "prefill-chunk", required_argument, NULL, OPT_PREFILL_CHUNK },
		{ "templates", required_argument, NULL, OPT_TEMPLATES },
		{ "quiet", no_argument, NULL, 'q' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *opts = dsm_engine_flags_with(own);
	if (!opts) {
		fprintf(stderr, "dsm-serve: out of memory\n");
		return 1;
	}
	const char *dir = NULL, *host = NULL, *templates_path = NULL;
	int port = 8080, max_queue = 64, max_n = 0;
	int64_t max_prompt = 0, max_tokens = 0, prefill_chunk = 0;
	struct server sv = { .max_body = 1 << 20, .api_key = getenv("DSM_API_KEY") };
	if (sv.api_key && !sv.api_key[0])
		sv.api_key = NULL;
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	eo.session.max_seqs = 0;  /* 0: not given */
	int c;
	while ((c = getopt_long(argc, argv, "m:t:qh", opts, NULL)) != -1) {
		int e = dsm_engine_flag(&eo, c, optarg);
		if (e < 0) {
			fprintf(stderr, "dsm-serve: %s\n", dsm_errmsg());
			return 2;
		}
		if (e > 0)
			continue;
		switch (c) {
		case 'm': dir = optarg; break;
		case OPT_HOST: host = optarg; break;
		case OPT_PORT: port = (int)int_arg("--port", optarg, 0, 65535); break;
		case OPT_API_KEY: sv.api_key = optarg[0] ? optarg : NULL; break;
		case OPT_MODEL_NAME: sv.model_name = optarg; break;
		case OPT_MAX_QUEUE: max_queue = (int)int_arg("--max-queue", optarg, 0, 1 << 20); break;
		case OPT_MAX_BODY: sv.max_body = (size_t)int_arg("--max-body", optarg, 1024, (int64_t)1 << 32); break;
		case OPT_MAX_PROMPT: max_prompt = int_arg("--max-prompt-tokens", optarg, 1, INT32_MAX); break;
		case OPT_MAX_TOKENS: max_tokens = int_arg("--max-tokens-limit", optarg, 1, INT32_MAX); break;
		case OPT_MAX_N: max_n = (int)int_arg("--max-n", optarg, 1, 4096); break;
		case OPT_PREFILL_CHUNK: prefill_chunk = int_arg("--prefill-chunk", optarg, 1, INT32_MAX); break;
		case OPT_TEMPLATES: templates_path = optarg; break;
		case 'q': sv.quiet = 1; break;
		case 'h': usage(stdout); free(opts); return 0;
		default: usage(stderr); free(opts); return 2;
		}
	}
	free(opts);
	if (optind < argc || !dir) {
		fprintf(stderr, "dsm-serve: give -m DIR (see --help)\n");
		return 2;
	}
	if (eo.session.max_seqs == 0)
		eo.session.max_seqs = 16;
	sv.loopback_only = !sv.api_key && !host;
	if (!host)
		host = "127.0.0.1";
	char *name_copy = NULL;
	if (!sv.model_name) {
		/* the checkpoint folder's name */
		if (!(name_copy = strdup(dir)))
			return 1;
		size_t n = strlen(name_copy);
		while (n > 1 && name_copy[n - 1] == '/')
			name_copy[--n] = 0;
		const char *slash = strrchr(name_copy, '/');
		sv.model_name = slash && slash[1] ? slash + 1 : name_copy;
	}

	/* the address, before the engine is opened (seconds to minutes) */
	struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST }, *ai;
	char port_s[16];
	snprintf(port_s, sizeof port_s, "%d", port);
	if (getaddrinfo(host, port_s, &hints, &ai) != 0) {
		fprintf(stderr, "dsm-serve: --host: '%s' is not a numeric IPv4 or IPv6 address\n", host);
		return 2;
	}

	int status = 1, rc;
	struct dsm_engine *e = NULL;
	struct MHD_Daemon *d = NULL;
	if (templates_init(&sv.tpl) < 0 || (templates_path && templates_load_file(&sv.tpl, templates_path) < 0)) {
		fprintf(stderr, "dsm-serve: %s\n", dsm_errmsg());
		goto out;
	}
	if ((rc = dsm_engine_open(&e, dir, &eo)) < 0) {
		fprintf(stderr, "dsm-serve: %s\n", dsm_errmsg());
		goto out;
	}
	for (const char *n = dsm_engine_notes(e); *n && !sv.quiet;) {
		const char *nl = strchr(n, '\n');
		int len = nl ? (int)(nl - n) : (int)strlen(n);
		fprintf(stderr, "dsm-serve: %.*s\n", len, n);
		n += len + (nl != NULL);
	}
	sv.e = e;
	struct dsm_session *s = dsm_engine_session(e);
	const struct dsm_model *m = dsm_engine_model(e);
	sv.ctx = dsm_session_ctx(s);
	sv.vocab = m->cfg.vocab_size;
	sv.eos_id = m->cfg.eos_token_id;
	sv.has_tokenizer = dsm_engine_tokenizer(e) != NULL;
	sv.max_prompt_tokens = max_prompt ? max_prompt : sv.ctx - 1;
	sv.lim = (struct serve_limits){ .max_tokens = max_tokens ? max_tokens : sv.ctx,
					.max_n = max_n ? max_n : dsm_session_max_seqs(s), .max_stop_bytes = 256 };
	if (sv.lim.max_n > dsm_session_max_seqs(s))
		sv.lim.max_n = dsm_session_max_seqs(s);
	sv.started = time(NULL);

	/* signals go to sigwait below, not to the server's threads */
	sigset_t sigs;
	sigemptyset(&sigs);
	sigaddset(&sigs, SIGINT);
	sigaddset(&sigs, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &sigs, NULL);
	signal(SIGPIPE, SIG_IGN);

	if ((rc = serve_engine_start(&sv.se, e, max_queue, prefill_chunk)) < 0) {
		fprintf(stderr, "dsm-serve: %s\n", dsm_errmsg());
		goto out;
	}
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	unsigned limit = (unsigned)max_queue + (unsigned)dsm_session_max_seqs(s) + 64;
	d = MHD_start_daemon(flags, (uint16_t)port, accept_client, &sv, on_request, &sv,
			     MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT, limit,
			     MHD_OPTION_PER_IP_CONNECTION_LIMIT, 0u, MHD_OPTION_CONNECTION_TIMEOUT, 600u,
			     MHD_OPTION_NOTIFY_COMPLETED, on_completed, &sv, MHD_OPTION_END);
	if (!d) {
		fprintf(stderr, "dsm-serve: cannot listen on %s port %d: %s\n", host, port, strerror(errno));
		goto out;
	}
	const union MHD_DaemonInfo *di = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	int bound = di ? di->port : port;
	printf("dsm-serve: listening on http://%s%s%s:%d (model '%s', %d sequences, context %lld)\n",
	       ai->ai_family == AF_INET6 ? "[" : "", host, ai->ai_family == AF_INET6 ? "]" : "", bound, sv.model_name,
	       dsm_session_max_seqs(s), (long long)sv.ctx);
	fflush(stdout);
	if (!sv.api_key && !sv.loopback_only && !sv.quiet)
		fprintf(stderr, "dsm-serve: no --api-key: every client that reaches %s is served\n", host);
	int sig = 0;
	sigwait(&sigs, &sig);
	if (!sv.quiet)
		fprintf(stderr, "dsm-serve: %s: stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
	double t0 = wall_now();
	MHD_socket ls = MHD_quiesce_daemon(d);
	serve_engine_stop(sv.se);
	/* the answers the engine just ended (errors, the end of streams) go out before the connections close */
	for (int i = 0; i < 500; i++) {
		serve_lock(sv.se);
		int busy = sv.in_flight;
		serve_unlock(sv.se);
		if (!busy)
			break;
		struct timespec ts = { 0, 10000000 };
		nanosleep(&ts, NULL);
	}
	MHD_stop_daemon(d);
	if (ls != MHD_INVALID_SOCKET)
		close(ls);
	d = NULL;
	if (!sv.quiet)
		fprintf(stderr, "dsm-serve: stopped in %.2f s\n", wall_now() - t0);
	status = 0;
out:
	serve_engine_stop(sv.se);
	if (d)
		MHD_stop_daemon(d);
	serve_engine_free(sv.se);
	dsm_engine_close(e);
	templates_free(&sv.tpl);
	freeaddrinfo(ai);
	free(name_copy);
	return status;
}
