/* libFuzzer target: encoding any bytes. Two tokenizers: the mini tokenizer (DeepSeek's pre-tokenizer
 * rules) and a variant exercising normalizers, Split behaviours and added-token options. Valid UTF-8 must
 * decode back to itself; streaming must equal whole decoding. */
#include "error.h"
#include "json_util.h"
#include "mini_tokenizer.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct tokenizer *mini, *variant;

static struct tokenizer *load_variant(const char *dir)
{
	char path[512], *json;
	size_t n;
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	if (read_file(path, SIZE_MAX, &json, &n) < 0)
		return NULL;
	cJSON *root = cJSON_Parse(json);
	free(json);
	if (!root)
		return NULL;
	cJSON_ReplaceItemInObject(root, "normalizer", cJSON_Parse(
		"{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Strip\",\"strip_left\":false,\"strip_right\":true},"
		"{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"a+\"},\"content\":\"<\"},"
		"{\"type\":\"Prepend\",\"prepend\":\"\\u2581\"}]}"));
	cJSON_ReplaceItemInObject(root, "pre_tokenizer", cJSON_Parse(
		"{\"type\":\"Sequence\",\"pretokenizers\":["
		"{\"type\":\"Split\",\"pattern\":{\"String\":\"e\"},\"behavior\":\"MergedWithPrevious\",\"invert\":false},"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+\"},\"behavior\":\"MergedWithNext\",\"invert\":true},"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\d|\\\\b\"},\"behavior\":\"Contiguous\",\"invert\":false},"
		"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x+\"},\"behavior\":\"Removed\",\"invert\":false},"
		"{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"use_regex\":true}]}"));
	cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	cJSON *last = cJSON_GetArrayItem(added, cJSON_GetArraySize(added) - 1);
	cJSON *think = cJSON_GetArrayItem(added, 2);
	if (last && think) {
		cJSON_ReplaceItemInObject(last, "lstrip", cJSON_CreateTrue());
		cJSON_ReplaceItemInObject(last, "rstrip", cJSON_CreateTrue());
		cJSON_ReplaceItemInObject(think, "single_word", cJSON_CreateTrue());
		cJSON_ReplaceItemInObject(think, "normalized", cJSON_CreateFalse());
	}
	char *text = cJSON_PrintUnformatted(root);
	cJSON_Delete(root);
	struct tokenizer *tok = NULL;
	if (text && tokenizer_load_buffer(&tok, text, strlen(text), NULL, 0, "variant") != 0) {
		fprintf(stderr, "variant tokenizer: %s\n", dsm_errmsg());
		abort();
	}
	free(text);
	return tok;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc, (void)argv;
	char dir[] = "/tmp/dsm-fuzz-tokenizer-XXXXXX";
	if (!mkdtemp(dir) || mini_tokenizer_write(dir, 1024) != 0 || tokenizer_load_dir(&mini, dir) != 0) {
		fprintf(stderr, "mini tokenizer: %s\n", dsm_errmsg());
		abort();
	}
	variant = load_variant(dir);
	mini_tokenizer_remove(dir);
	return 0;
}

static void check(struct tokenizer *tok, const uint8_t *data, size_t size, int round_trip)
{
	struct token_ids ids = {0};
	int rc = tokenizer_encode(tok, (const char *)data, size, 0, &ids);
	if (rc != 0)
		rc = tokenizer_encode(tok, (const char *)data, size, TOKENIZER_REPLACE_INVALID, &ids);
	if (rc != 0)
		abort(); /* with replacement, any bytes encode */
	struct text_buffer whole = {0}, streamed = {0};
	if (tokenizer_decode(tok, ids.ids, ids.n, 0, &whole) != 0)
		abort();
	if (round_trip && (whole.len != size || memcmp(whole.data, data, size) != 0)) {
		/* Only for valid UTF-8 input: replaced input cannot come back. */
		struct token_ids again = {0};
		if (tokenizer_encode(tok, (const char *)data, size, 0, &again) == 0)
			abort();
		token_ids_free(&again);
	}
	struct token_stream st;
	token_stream_init(&st, tok, TOKENIZER_SKIP_SPECIAL);
	for (size_t i = 0; i < ids.n; i++)
		token_stream_push(&st, ids.ids[i], &streamed);
	token_stream_finish(&st, &streamed);
	text_buffer_free(&whole);
	token_ids_free(&ids);
	text_buffer_free(&streamed);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* Long inputs add little but slow the search down (every regex search allocates under ASan). */
	if (size > 512)
		size = 512;
	check(mini, data, size, 1);
	if (variant)
		check(variant, data, size, 0); /* its normalizer changes the text */
	return 0;
}
