/* libFuzzer target: dsm-serve's request parser (src/serve_request.c). The first byte picks the endpoint
 * (chat, completion, prove), the rest is the body. A parse either fails with an OpenAI error object that is
 * itself valid JSON, or gives parameters inside the limits. The body is also streamed through the thinking
 * split in pieces: reasoning and answer must add up to the text cut at its first "</think>". */
#include "serve_request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void split_check(const char *text, size_t len)
{
	char *reasoning = malloc(len + 1), *content = malloc(len + 1);
	size_t nr = 0, nc = 0, at = 0;
	struct serve_split st = { 0 };
	for (;;) {
		size_t step = at < len ? (unsigned char)text[at] % 7 + 1 : 0;
		at = at + step > len ? len : at + step;
		const char *r, *c;
		size_t rl, cl;
		serve_split_next(&st, text, at, at == len, &r, &rl, &c, &cl);
		if (r < text || r + rl > text + at || c < text || c + cl > text + at || st.sent > at)
			abort();
		memcpy(reasoning + nr, r, rl);
		nr += rl;
		memcpy(content + nc, c, cl);
		nc += cl;
		if (at == len)
			break;
	}
	const char *tag = memmem(text, len, "</think>", 8);
	size_t want_r = tag ? (size_t)(tag - text) : len;
	const char *answer = tag ? tag + 8 : text + len;
	while (answer < text + len && strchr(" \t\r\n", *answer))
		answer++;
	size_t want_c = (size_t)(text + len - answer);
	if (nr != want_r || memcmp(reasoning, text, nr) != 0 || nc != want_c || memcmp(content, answer, nc) != 0)
		abort();
	free(reasoning);
	free(content);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
	split_check((const char *)data + 1, size - 1);
	enum serve_kind kind = (enum serve_kind)(data[0] % 3);
	const struct serve_limits lim = { .max_tokens = 4096, .max_n = 8, .max_stop_bytes = 64 };
	struct serve_params p;
	struct serve_error err;
	if (serve_parse_request(kind, (const char *)data + 1, size - 1, &lim, &p, &err) < 0) {
		if (err.status < 400 || err.status > 599 || !err.message[0])
			abort();
		char *json = serve_error_json(&err);
		cJSON *j = json ? cJSON_Parse(json) : NULL;
		if (json && !cJSON_GetObjectItem(j, "error"))
			abort();
		cJSON_Delete(j);
		free(json);
		return 0;
	}
	if (p.kind != kind || p.n < 1 || p.n > lim.max_n || p.n_stop < 0 || p.n_stop > SERVE_MAX_STOP ||
	    (p.max_tokens != -1 && (p.max_tokens < 1 || p.max_tokens > lim.max_tokens)) || p.top_k < 0)
		abort();
	if (kind != SERVE_PROVE && (p.temperature < 0 || p.temperature > 2 || p.top_p <= 0 || p.top_p > 1))
		abort();
	for (int i = 0; i < p.n_stop; i++)
		if (!p.stop[i] || !p.stop[i][0] || strlen(p.stop[i]) > lim.max_stop_bytes)
			abort();
	if (kind == SERVE_CHAT && (!p.prompt || strncmp(p.prompt, "<\xef\xbd\x9c" "begin", 8) != 0))
		abort();
	if (kind != SERVE_CHAT && !p.prompt && !p.prompt_ids)
		abort();
	serve_params_free(&p);
	return 0;
}
