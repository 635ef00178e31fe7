/* dsm-serve's request bodies: the JSON of POST /v1/chat/completions, /v1/completions and /v1/prove read
 * into checked parameters, and the chat shell built from a message list (docs/serve.md).
 *
 * Parsing is pure (no engine, no tokenizer): every outside byte goes through serve_parse_request, which is
 * a libFuzzer target (tests/fuzz/fuzz_serve_request.c). Unknown members are ignored, as OpenAI's clients
 * send many optional ones; known members of the wrong type, values out of range and missing required
 * members fail with an OpenAI-style error (HTTP status, message, the parameter's name). */
#ifndef DSM_SERVE_REQUEST_H
#define DSM_SERVE_REQUEST_H

#include <stddef.h>
#include <cjson/cJSON.h>
#include <stdint.h>

#define SERVE_MAX_STOP 16

enum serve_kind {
	SERVE_CHAT,             /* /v1/chat/completions */
	SERVE_COMPLETION,       /* /v1/completions */
	SERVE_PROVE,            /* /v1/prove */
};

/* Limits set by the server's flags. */
struct serve_limits {
	int64_t max_tokens;     /* largest max_tokens accepted */
	int max_n;              /* largest n accepted */
	size_t max_stop_bytes;  /* longest stop string */
};

struct serve_params {
	enum serve_kind kind;
	char *model;            /* the "model" member, NULL when absent */
	char *prompt;           /* the text to encode: the chat shell (chat), the prompt (completion), the
				 * problem (prove) */
	int add_special;        /* 1: encode with the tokenizer's BOS (completion); the chat shell has it */
	int32_t *prompt_ids;    /* completion: a prompt given as token ids ([n_prompt_ids]), else NULL */
	int64_t n_prompt_ids;
	int thinking;           /* chat: 1 (default) the shell ends with <think>; 0 with </think> */
	int separate_reasoning; /* chat with thinking: 1 (default) the thinking goes to reasoning_content; 0
				 * (SGLang's "separate_reasoning": false) the content is the raw text, "</think>"
				 * included */
	int64_t max_tokens;     /* -1: not given (the rest of the context) */
	double temperature;     /* default 1 (OpenAI's); 0: greedy */
	double top_p;           /* default 1 */
	int top_k;              /* default 0: off (an extension, as in vLLM) */
	int has_seed;
	uint64_t seed;
	int n;                  /* choices, default 1 */
	int stream;
	int include_usage;      /* stream_options.include_usage */
	int continuous_usage;   /* stream_options.continuous_usage_stats (vLLM's): usage in every chunk */
	int ignore_eos;         /* an extension, as in vLLM */
	char *stop[SERVE_MAX_STOP];
	int n_stop;
	/* prove: the "settings" object (search settings by flag or document name, prove_flags.h), checked;
	 * NULL when absent */
	cJSON *prove_settings;
};

struct serve_error {
	int status;             /* HTTP status */
	const char *type;       /* "invalid_request_error", ... */
	char param[64];         /* the member at fault, "" when none */
	char message[512];
};

/* Reads body (len bytes, not necessarily NUL-terminated) as a request of kind. Returns 0, or -1 with err
 * filled (out is then freed). */
int serve_parse_request(enum serve_kind kind, const char *body, size_t len, const struct serve_limits *lim,
			struct serve_params *out, struct serve_error *err);
/* Accepts a zeroed or parsed p. */
void serve_params_free(struct serve_params *p);

/* Fills err (printf format) and returns -1. */
int serve_error_set(struct serve_error *err, int status, const char *type, const char *param, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
/* OpenAI's error object: {"error": {"message", "type", "param", "code"}}; malloc'd, NULL on ENOMEM. */
char *serve_error_json(const struct serve_error *err);

/* The thinking split of a stream: the text up to the first "</think>" is reasoning, what follows it the
 * answer (white space at its start dropped, as the non-streamed answer is trimmed). Each call hands out
 * what text[0 .. len) adds since the last call, keeping back a tail that could still become "</think>"
 * unless final. Start from a zeroed state. */
struct serve_split {
	size_t sent;            /* bytes of text handed out */
	int in_answer;          /* "</think>" seen */
	int answer_started;     /* a non-space byte of the answer handed out */
	int role_sent, finish_sent;  /* the server's stream state */
	int64_t tokens_sent;    /* the token count of the last chunk (continuous usage) */
};
void serve_split_next(struct serve_split *st, const char *text, size_t len, int final, const char **reasoning,
		      size_t *reasoning_len, const char **content, size_t *content_len);

#endif
