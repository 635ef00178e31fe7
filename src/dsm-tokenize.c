/* dsm-tokenize: text to token ids and back with a checkpoint's tokenizer. */
#include "error.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-tokenize (-m CHECKPOINT_DIR | --tokenizer FILE.json [--config FILE]) [options] < input\n"
		"Reads UTF-8 text on stdin and prints its token ids, space-separated, on one line.\n"
		"  -m, --model DIR        the checkpoint folder (tokenizer.json, tokenizer_config.json)\n"
		"  --tokenizer FILE       a tokenizer.json; tokenizer_config.json beside it is read if present\n"
		"  --config FILE          the tokenizer_config.json to use (BOS/EOS policy)\n"
		"  --lines                one output line per input line (the newline itself is not encoded)\n"
		"  --no-special           do not add BOS/EOS\n"
		"  --json                 print {\"ids\": [...], \"tokens\": [...]} (one object per line with --lines)\n"
		"  --decode               read ids (separated by white space) and print the text\n"
		"  --skip-special         with --decode: leave out special tokens\n"
		"  --replace-invalid      replace invalid UTF-8 by U+FFFD instead of failing\n"
		"  -h, --help             this text\n");
}

static int read_stdin(char **data, size_t *len)
{
	size_t cap = 1 << 16, n = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -1;
	for (;;) {
		if (n == cap) {
			char *p = realloc(buf, cap *= 2);
			if (!p) {
				free(buf);
				return -1;
			}
			buf = p;
		}
		size_t got = fread(buf + n, 1, cap - n, stdin);
		n += got;
		if (got == 0)
			break;
	}
	if (ferror(stdin)) {
		free(buf);
		return -1;
	}
	*data = buf;
	*len = n;
	return 0;
}

static int print_json(const struct tokenizer *tok, const struct token_ids *ids)
{
	cJSON *obj = cJSON_CreateObject();
	cJSON *jids = cJSON_AddArrayToObject(obj, "ids");
	cJSON *jtok = cJSON_AddArrayToObject(obj, "tokens");
	if (!obj || !jids || !jtok) {
		cJSON_Delete(obj);
		return -1;
	}
	for (size_t i = 0; i < ids->n; i++) {
		const char *s = tokenizer_token_string(tok, ids->ids[i], NULL);
		cJSON_AddItemToArray(jids, cJSON_CreateNumber(ids->ids[i]));
		cJSON_AddItemToArray(jtok, cJSON_CreateString(s ? s : ""));
	}
	char *text = cJSON_PrintUnformatted(obj);
	cJSON_Delete(obj);
	if (!text)
		return -1;
	puts(text);
	free(text);
	return 0;
}

static void print_ids(const struct token_ids *ids)
{
	for (size_t i = 0; i < ids->n; i++)
		printf(i ? " %d" : "%d", (int)ids->ids[i]);
	putchar('\n');
}

/* Parses the ids of one line of text (or the whole input). */
static int parse_ids(const char *s, size_t len, size_t line, struct token_ids *ids)
{
	size_t i = 0;
	while (i < len) {
		if (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r' || s[i] == ',') {
			i++;
			continue;
		}
		long v = 0;
		size_t start = i;
		while (i < len && s[i] >= '0' && s[i] <= '9' && v <= 0x7fffffff)
			v = v * 10 + (s[i++] - '0');
		if (i == start || v > 0x7fffffff || (i < len && !strchr(" \t\r\n,", s[i]))) {
			fprintf(stderr, "dsm-tokenize: --decode: line %zu: \"%.20s\" is not a token id\n", line,
				s + start);
			return -1;
		}
		if (token_ids_push(ids, (int32_t)v))
			return -1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	const char *model = NULL, *tokenizer_file = NULL, *config_file = NULL;
	int lines = 0, no_special = 0, json = 0, decode = 0, skip_special = 0, replace = 0;
	enum { OPT_TOKENIZER = 256, OPT_CONFIG, OPT_LINES, OPT_NO_SPECIAL, OPT_JSON, OPT_DECODE, OPT_SKIP,
	       OPT_REPLACE };
	static const struct option options[] = {
		{"model", required_argument, 0, 'm'},
		{"tokenizer", required_argument, 0, OPT_TOKENIZER},
		{"config", required_argument, 0, OPT_CONFIG},
		{"lines", no_argument, 0, OPT_LINES},
		{"no-special", no_argument, 0, OPT_NO_SPECIAL},
		{"json", no_argument, 0, OPT_JSON},
		{"decode", no_argument, 0, OPT_DECODE},
		{"skip-special", no_argument, 0, OPT_SKIP},
		{"replace-invalid", no_argument, 0, OPT_REPLACE},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "m:h", options, NULL)) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case OPT_TOKENIZER: tokenizer_file = optarg; break;
		case OPT_CONFIG: config_file = optarg; break;
		case OPT_LINES: lines = 1; break;
		case OPT_NO_SPECIAL: no_special = 1; break;
		case OPT_JSON: json = 1; break;
		case OPT_DECODE: decode = 1; break;
		case OPT_SKIP: skip_special = 1; break;
		case OPT_REPLACE: replace = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (optind != argc || (!model == !tokenizer_file)) {
		fprintf(stderr, "dsm-tokenize: give exactly one of -m CHECKPOINT_DIR or --tokenizer FILE.json\n");
		usage(stderr);
		return 1;
	}
	struct tokenizer *tok = NULL;
	int rc;
	if (model) {
		rc = tokenizer_load_dir(&tok, model);
	} else {
		char *sibling = NULL;
		if (!config_file) {
			/* tokenizer_config.json beside the tokenizer file, when there is one. */
			const char *slash = strrchr(tokenizer_file, '/');
			size_t dir_len = slash ? (size_t)(slash - tokenizer_file) + 1 : 0;
			sibling = malloc(dir_len + 32);
			if (sibling) {
				memcpy(sibling, tokenizer_file, dir_len);
				strcpy(sibling + dir_len, "tokenizer_config.json");
				FILE *f = fopen(sibling, "r");
				if (f)
					fclose(f);
				else
					free(sibling), sibling = NULL;
			}
		}
		rc = tokenizer_load(&tok, tokenizer_file, config_file ? config_file : sibling);
		free(sibling);
	}
	if (rc) {
		fprintf(stderr, "dsm-tokenize: %s\n", dsm_errmsg());
		return 1;
	}
	char *input = NULL;
	size_t len = 0;
	if (read_stdin(&input, &len)) {
		fprintf(stderr, "dsm-tokenize: reading stdin: %s\n", strerror(errno));
		tokenizer_free(tok);
		return 1;
	}
	unsigned flags = (no_special ? 0 : TOKENIZER_ADD_SPECIAL) | (replace ? TOKENIZER_REPLACE_INVALID : 0) |
			 (skip_special ? TOKENIZER_SKIP_SPECIAL : 0);
	struct token_ids ids = {0};
	struct text_buffer text = {0};
	int status = 0;
	size_t pos = 0, line = 1;
	while (status == 0 && (pos < len || (pos == 0 && !lines))) {
		size_t end = len;
		if (lines) {
			const char *nl = memchr(input + pos, '\n', len - pos);
			end = nl ? (size_t)(nl - input) : len;
		}
		ids.n = 0;
		text.len = 0;
		if (decode) {
			if (parse_ids(input + pos, end - pos, line, &ids) != 0) {
				status = 1;
				break;
			}
			if ((rc = tokenizer_decode(tok, ids.ids, ids.n, flags, &text)) != 0) {
				fprintf(stderr, "dsm-tokenize: line %zu: %s\n", line, dsm_errmsg());
				status = 1;
				break;
			}
			fwrite(text.data, 1, text.len, stdout);
			if (lines)
				putchar('\n');
		} else {
			if ((rc = tokenizer_encode(tok, input + pos, end - pos, flags, &ids)) != 0) {
				if (lines)
					fprintf(stderr, "dsm-tokenize: input line %zu: %s\n", line, dsm_errmsg());
				else
					fprintf(stderr, "dsm-tokenize: %s\n", dsm_errmsg());
				status = 1;
				break;
			}
			if (json ? print_json(tok, &ids) != 0 : (print_ids(&ids), 0)) {
				fprintf(stderr, "dsm-tokenize: out of memory\n");
				status = 1;
			}
		}
		if (!lines)
			break;
		pos = end + 1;
		line++;
	}
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, "dsm-tokenize: writing the output failed\n");
		status = 1;
	}
	token_ids_free(&ids);
	text_buffer_free(&text);
	free(input);
	tokenizer_free(tok);
	return status;
}
