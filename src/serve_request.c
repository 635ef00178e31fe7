/* dsm-serve's request bodies (serve_request.h). */
#include "serve_request.h"

#include "error.h"
#include "json_util.h"
#include "prove_flags.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define INVALID "invalid_request_error"

static const char BOS[] = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
static const char EOS[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
static const char USER[] = "<\xef\xbd\x9cUser\xef\xbd\x9c>";
static const char ASSISTANT[] = "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";

int serve_error_set(struct serve_error *err, int status, const char *type, const char *param, const char *fmt, ...)
{
	err->status = status;
	err->type = type;
	snprintf(err->param, sizeof err->param, "%s", param ? param : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err->message, sizeof err->message, fmt, ap);
	va_end(ap);
	return -1;
}

char *serve_error_json(const struct serve_error *err)
{
	cJSON *j = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(j, "error");
	if (!e) {
		cJSON_Delete(j);
		return NULL;
	}
	cJSON_AddStringToObject(e, "message", err->message);
	cJSON_AddStringToObject(e, "type", err->type ? err->type : INVALID);
	if (err->param[0])
		cJSON_AddStringToObject(e, "param", err->param);
	else
		cJSON_AddNullToObject(e, "param");
	cJSON_AddNullToObject(e, "code");
	char *text = cJSON_PrintUnformatted(j);
	cJSON_Delete(j);
	return text;
}

void serve_params_free(struct serve_params *p)
{
	free(p->model);
	free(p->prompt);
	free(p->prompt_ids);
	cJSON_Delete(p->prove_settings);
	for (int i = 0; i < p->n_stop; i++)
		free(p->stop[i]);
	memset(p, 0, sizeof *p);
}

/* Growable text for the prompt. */
struct buf {
	char *data;
	size_t len, cap;
};

static int buf_add(struct buf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n + 1)
			cap *= 2;
		char *d = realloc(b->data, cap);
		if (!d)
			return -1;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, s, n);
	b->len += n;
	b->data[b->len] = 0;
	return 0;
}

static int oom(struct serve_error *err)
{
	return serve_error_set(err, 500, "server_error", NULL, "out of memory");
}

/* A member present and not null. */
static const cJSON *member(const cJSON *o, const char *key)
{
	const cJSON *m = cJSON_GetObjectItemCaseSensitive(o, key);
	return m && !cJSON_IsNull(m) ? m : NULL;
}

static int get_number(const cJSON *o, const char *key, double lo, double hi, double *out, struct serve_error *err)
{
	const cJSON *m = member(o, key);
	if (!m)
		return 0;
	if (!cJSON_IsNumber(m) || !isfinite(m->valuedouble))
		return serve_error_set(err, 400, INVALID, key, "'%s' must be a number", key);
	if (m->valuedouble < lo || m->valuedouble > hi)
		return serve_error_set(err, 400, INVALID, key, "'%s' is %g: it must be in [%g, %g]", key, m->valuedouble,
				       lo, hi);
	*out = m->valuedouble;
	return 0;
}

static int get_int(const cJSON *o, const char *key, int64_t lo, int64_t hi, int64_t *out, struct serve_error *err)
{
	const cJSON *m = member(o, key);
	if (!m)
		return 0;
	double v = m->valuedouble;
	if (!cJSON_IsNumber(m) || !isfinite(v) || v != floor(v))
		return serve_error_set(err, 400, INVALID, key, "'%s' must be an integer", key);
	if (v < (double)lo || v > (double)hi)
		return serve_error_set(err, 400, INVALID, key, "'%s' is %.0f: it must be in [%lld, %lld]", key, v,
				       (long long)lo, (long long)hi);
	*out = (int64_t)v;
	return 0;
}

static int get_bool(const cJSON *o, const char *key, int *out, struct serve_error *err)
{
	const cJSON *m = member(o, key);
	if (!m)
		return 0;
	if (!cJSON_IsBool(m))
		return serve_error_set(err, 400, INVALID, key, "'%s' must be true or false", key);
	*out = cJSON_IsTrue(m);
	return 0;
}

/* A message's content: a string, or an array of {"type": "text", "text": ...} parts. */
static int add_content(struct buf *b, const cJSON *content, int i, struct serve_error *err)
{
	if (cJSON_IsString(content))
		return buf_add(b, content->valuestring, strlen(content->valuestring)) ? oom(err) : 0;
	if (!cJSON_IsArray(content))
		return serve_error_set(err, 400, INVALID, "messages", "messages[%d].content must be a string or an array of "
				       "text parts", i);
	const cJSON *part;
	cJSON_ArrayForEach(part, content) {
		const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
		const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
		if (!cJSON_IsString(type) || strcmp(type->valuestring, "text") != 0 || !cJSON_IsString(text))
			return serve_error_set(err, 400, INVALID, "messages", "messages[%d].content: only parts "
					       "{\"type\": \"text\", \"text\": \"...\"} are supported", i);
		if (buf_add(b, text->valuestring, strlen(text->valuestring)))
			return oom(err);
	}
	return 0;
}

/* The chat shell (docs/templates.md) over a whole conversation: BOS, the system messages, then each turn:
 * <User>{user} or <Assistant></think>{assistant}<EOS>; it ends with <Assistant> and <think> or </think>.
 * With one user message this is exactly chat_prompt()'s text. */
static int chat_shell(const cJSON *messages, int thinking, char **out, struct serve_error *err)
{
	if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
		return serve_error_set(err, 400, INVALID, "messages", "'messages' must be a non-empty array");
	struct buf sys = { 0 }, turns = { 0 }, all = { 0 };
	const char *last_role = NULL;
	int i = 0, rc = 0;
	const cJSON *m;
	cJSON_ArrayForEach(m, messages) {
		const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		if (!cJSON_IsObject(m) || !cJSON_IsString(role)) {
			rc = serve_error_set(err, 400, INVALID, "messages", "messages[%d] must be an object with a string "
					     "'role'", i);
			goto out;
		}
		const char *r = role->valuestring;
		if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0) {
			if (sys.len && buf_add(&sys, "\n\n", 2)) {
				rc = oom(err);
				goto out;
			}
			if ((rc = add_content(&sys, content, i, err)) < 0)
				goto out;
		} else if (strcmp(r, "user") == 0) {
			if (buf_add(&turns, USER, strlen(USER))) {
				rc = oom(err);
				goto out;
			}
			if ((rc = add_content(&turns, content, i, err)) < 0)
				goto out;
			last_role = "user";
		} else if (strcmp(r, "assistant") == 0) {
			if (buf_add(&turns, ASSISTANT, strlen(ASSISTANT)) || buf_add(&turns, "</think>", 8)) {
				rc = oom(err);
				goto out;
			}
			if ((rc = add_content(&turns, content, i, err)) < 0)
				goto out;
			if (buf_add(&turns, EOS, strlen(EOS))) {
				rc = oom(err);
				goto out;
			}
			last_role = "assistant";
		} else {
			rc = serve_error_set(err, 400, INVALID, "messages", "messages[%d]: role '%.40s' is not supported "
					     "(system, developer, user, assistant)", i, r);
			goto out;
		}
		i++;
	}
	if (!last_role || strcmp(last_role, "user") != 0) {
		rc = serve_error_set(err, 400, INVALID, "messages", "the last message that is not a system message must "
				     "be the user's");
		goto out;
	}
	const char *think = thinking ? "<think>" : "</think>";
	if (buf_add(&all, BOS, strlen(BOS)) || (sys.len && buf_add(&all, sys.data, sys.len)) ||
	    buf_add(&all, turns.data, turns.len) || buf_add(&all, ASSISTANT, strlen(ASSISTANT)) ||
	    buf_add(&all, think, strlen(think))) {
		rc = oom(err);
		goto out;
	}
	*out = all.data;
	all.data = NULL;
out:
	free(sys.data);
	free(turns.data);
	free(all.data);
	return rc;
}

/* Thinking mode: "thinking": true|false|{"type": "enabled"|"disabled"}, or vLLM's and SGLang's
 * "chat_template_kwargs": {"thinking": bool} (also "enable_thinking"). */
static int get_thinking(const cJSON *root, int *thinking, struct serve_error *err)
{
	const cJSON *t = member(root, "thinking");
	if (t) {
		if (cJSON_IsBool(t)) {
			*thinking = cJSON_IsTrue(t);
		} else {
			const cJSON *type = cJSON_IsObject(t) ? cJSON_GetObjectItemCaseSensitive(t, "type") : NULL;
			if (!cJSON_IsString(type) ||
			    (strcmp(type->valuestring, "enabled") != 0 && strcmp(type->valuestring, "disabled") != 0))
				return serve_error_set(err, 400, INVALID, "thinking", "'thinking' must be true, false or "
						       "{\"type\": \"enabled\" | \"disabled\"}");
			*thinking = strcmp(type->valuestring, "enabled") == 0;
		}
	}
	const cJSON *kw = member(root, "chat_template_kwargs");
	if (kw) {
		if (!cJSON_IsObject(kw))
			return serve_error_set(err, 400, INVALID, "chat_template_kwargs", "'chat_template_kwargs' must be an "
					       "object");
		if (get_bool(kw, "thinking", thinking, err) < 0 || get_bool(kw, "enable_thinking", thinking, err) < 0)
			return -1;
	}
	return 0;
}

static int add_stop(const cJSON *item, const struct serve_limits *lim, struct serve_params *p, struct serve_error *err)
{
	if (!cJSON_IsString(item))
		return serve_error_set(err, 400, INVALID, "stop", "'stop' must be a string or an array of strings");
	size_t n = strlen(item->valuestring);
	if (n == 0)
		return serve_error_set(err, 400, INVALID, "stop", "a stop string is empty");
	if (n > lim->max_stop_bytes)
		return serve_error_set(err, 400, INVALID, "stop", "a stop string is longer than %zu bytes", lim->max_stop_bytes);
	if (p->n_stop == SERVE_MAX_STOP)
		return serve_error_set(err, 400, INVALID, "stop", "at most %d stop strings", SERVE_MAX_STOP);
	if (!(p->stop[p->n_stop] = strdup(item->valuestring)))
		return oom(err);
	p->n_stop++;
	return 0;
}

static int get_stop(const cJSON *root, const struct serve_limits *lim, struct serve_params *p, struct serve_error *err)
{
	const cJSON *s = member(root, "stop"), *item;
	if (!s || cJSON_IsString(s))
		return s ? add_stop(s, lim, p, err) : 0;
	if (!cJSON_IsArray(s))
		return serve_error_set(err, 400, INVALID, "stop", "'stop' must be a string or an array of strings");
	cJSON_ArrayForEach(item, s)
		if (add_stop(item, lim, p, err) < 0)
			return -1;
	return 0;
}

/* A completion's prompt: a string, an array of one string, or an array of token ids. */
static int get_prompt(const cJSON *root, struct serve_params *p, struct serve_error *err)
{
	const cJSON *pr = member(root, "prompt");
	if (!pr)
		return serve_error_set(err, 400, INVALID, "prompt", "'prompt' is required");
	if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) == 1 && cJSON_IsString(pr->child))
		pr = pr->child;
	if (cJSON_IsString(pr)) {
		if (!(p->prompt = strdup(pr->valuestring)))
			return oom(err);
		p->add_special = 1;
		return 0;
	}
	int n = cJSON_IsArray(pr) ? cJSON_GetArraySize(pr) : 0;
	if (n == 0)
		return serve_error_set(err, 400, INVALID, "prompt", "'prompt' must be a string or a non-empty array of "
				       "token ids (one prompt per request)");
	if (!(p->prompt_ids = malloc(sizeof *p->prompt_ids * (size_t)n)))
		return oom(err);
	const cJSON *id;
	cJSON_ArrayForEach(id, pr) {
		uint64_t v;
		if (json_number_to_u64(id, INT32_MAX, &v) < 0)
			return serve_error_set(err, 400, INVALID, "prompt", "'prompt' must be a string or an array of "
					       "non-negative token ids (one prompt per request)");
		p->prompt_ids[p->n_prompt_ids++] = (int32_t)v;
	}
	return 0;
}

static int get_prove(const cJSON *root, struct serve_params *p, struct serve_error *err)
{
	const cJSON *pr = member(root, "problem");
	if (!cJSON_IsString(pr) || !pr->valuestring[0])
		return serve_error_set(err, 400, INVALID, "problem", "'problem' must be a non-empty string");
	if (!(p->prompt = strdup(pr->valuestring)))
		return oom(err);
	const cJSON *s = member(root, "settings");
	if (!s)
		return 0;
	/* checked here, applied to the search's settings when the job is made (dsm-serve.c); no external
	 * checker over HTTP: a request must not run commands on the server */
	static const struct templates any;  /* settings_check only wants templates to be there */
	struct dsm_prove_settings st;
	dsm_prove_settings_default(&st);
	st.templates = &any;
	const char *bad;
	if (dsm_prove_flags_json(&st, s, 0, &bad) < 0)
		return serve_error_set(err, 400, INVALID, bad ? bad : "settings", "%s", dsm_errmsg());
	if (!(p->prove_settings = cJSON_Duplicate(s, 1)))
		return oom(err);
	return 0;
}

int serve_parse_request(enum serve_kind kind, const char *body, size_t len, const struct serve_limits *lim,
			struct serve_params *p, struct serve_error *err)
{
	memset(p, 0, sizeof *p);
	*p = (struct serve_params){ .kind = kind, .thinking = 1, .separate_reasoning = 1, .max_tokens = -1, .temperature = 1, .top_p = 1, .n = 1 };
	if (kind == SERVE_PROVE)
		p->temperature = p->top_p = NAN;   /* not given: the search's own defaults */
	size_t bad;
	if (!utf8_valid(body, len, &bad)) {
		serve_error_set(err, 400, INVALID, NULL, "the body is not valid UTF-8 (at byte %zu)", bad);
		return -1;
	}
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(body, len, &end, 0);
	if (!root) {
		size_t at = end && end >= body ? (size_t)(end - body) : 0;
		serve_error_set(err, 400, INVALID, NULL, "the body is not valid JSON (near byte %zu)", at);
		return -1;
	}
	int rc = -1;
	int64_t v;
	if (!cJSON_IsObject(root)) {
		serve_error_set(err, 400, INVALID, NULL, "the body must be a JSON object");
		goto out;
	}
	const cJSON *model = member(root, "model");
	if (model && !cJSON_IsString(model)) {
		serve_error_set(err, 400, INVALID, "model", "'model' must be a string");
		goto out;
	}
	if (model && !(p->model = strdup(model->valuestring))) {
		oom(err);
		goto out;
	}
	if (get_thinking(root, &p->thinking, err) < 0 || get_bool(root, "stream", &p->stream, err) < 0 ||
	    get_bool(root, "separate_reasoning", &p->separate_reasoning, err) < 0)
		goto out;
	const cJSON *so = member(root, "stream_options");
	if (so && (!cJSON_IsObject(so) || get_bool(so, "include_usage", &p->include_usage, err) < 0 ||
		   get_bool(so, "continuous_usage_stats", &p->continuous_usage, err) < 0)) {
		if (!cJSON_IsObject(so))
			serve_error_set(err, 400, INVALID, "stream_options", "'stream_options' must be an object");
		goto out;
	}
	if (get_number(root, "temperature", 0, 2, &p->temperature, err) < 0 ||
	    get_number(root, "top_p", 0, 1, &p->top_p, err) < 0)
		goto out;
	if (member(root, "top_p") && p->top_p <= 0) {
		serve_error_set(err, 400, INVALID, "top_p", "'top_p' must be greater than 0");
		goto out;
	}
	v = 0;
	if (get_int(root, "top_k", -1, INT32_MAX, &v, err) < 0)
		goto out;
	p->top_k = v < 0 ? 0 : (int)v;
	v = -1;
	if (get_int(root, "seed", INT64_MIN / 2, (int64_t)1 << 53, &v, err) < 0)
		goto out;
	if (member(root, "seed")) {
		p->has_seed = 1;
		p->seed = (uint64_t)v;
	}
	if (kind == SERVE_PROVE) {
		if (get_prove(root, p, err) < 0)
			goto out;
		rc = 0;
		goto out;
	}
	/* max_completion_tokens is the newer name of max_tokens */
	if (get_int(root, "max_tokens", 1, lim->max_tokens, &p->max_tokens, err) < 0 ||
	    get_int(root, "max_completion_tokens", 1, lim->max_tokens, &p->max_tokens, err) < 0)
		goto out;
	v = 1;
	if (get_int(root, "n", 1, lim->max_n, &v, err) < 0)
		goto out;
	p->n = (int)v;
	if (get_bool(root, "ignore_eos", &p->ignore_eos, err) < 0 || get_stop(root, lim, p, err) < 0)
		goto out;
	if (kind == SERVE_CHAT) {
		if (chat_shell(cJSON_GetObjectItemCaseSensitive(root, "messages"), p->thinking, &p->prompt, err) < 0)
			goto out;
	} else if (get_prompt(root, p, err) < 0) {
		goto out;
	}
	rc = 0;
out:
	cJSON_Delete(root);
	if (rc < 0)
		serve_params_free(p);
	return rc;
}

void serve_split_next(struct serve_split *st, const char *text, size_t len, int final, const char **reasoning,
		      size_t *reasoning_len, const char **content, size_t *content_len)
{
	static const char tag[] = "</think>";
	*reasoning = *content = text + st->sent;
	*reasoning_len = *content_len = 0;
	if (!st->in_answer) {
		const char *s = text + st->sent;
		size_t n = len - st->sent;
		const char *at = memmem(s, n, tag, 8);
		if (!at) {
			/* keep back a tail that may still become the tag */
			size_t hold = 0;
			for (size_t k = n < 7 ? n : 7; k > 0 && !final; k--)
				if (memcmp(s + n - k, tag, k) == 0) {
					hold = k;
					break;
				}
			*reasoning_len = n - hold;
			st->sent += n - hold;
			return;
		}
		*reasoning_len = (size_t)(at - s);
		st->sent = (size_t)(at - text) + 8;
		st->in_answer = 1;
	}
	const char *s = text + st->sent;
	size_t n = len - st->sent;
	while (!st->answer_started && n && strchr(" \t\r\n", *s)) {
		s++;
		n--;
	}
	if (n)
		st->answer_started = 1;
	*content = s;
	*content_len = n;
	st->sent = len;
}
