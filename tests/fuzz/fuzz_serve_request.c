/* libFuzzer target: dsm-serve's request parser (src/serve_request.c). The first byte picks the endpoint
 * (chat, completion, prove), the rest is the body. A parse either fails with an OpenAI error object that is
 * itself valid JSON, or gives parameters inside the limits. */
#include "serve_request.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size == 0)
		return 0;
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
