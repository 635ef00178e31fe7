/* libFuzzer target: the tokenizer.json loader (and, when a file loads, encoding and decoding with it). */
#include "error.h"
#include "tokenizer.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tokenizer *tok;
	if (tokenizer_load_buffer(&tok, (const char *)data, size, NULL, 0, "tokenizer.json") != 0)
		return 0;
	static const char text[] = "Hello <think> world 123 \\frac{a}{b} \xe6\x95\xb0\xe5\xad\xa6 \xf0\x9f\x98\x80\n";
	struct token_ids ids = {0};
	if (tokenizer_encode(tok, text, sizeof text - 1, TOKENIZER_ADD_SPECIAL, &ids) == 0) {
		struct text_buffer out = {0};
		tokenizer_decode(tok, ids.ids, ids.n, 0, &out);
		text_buffer_free(&out);
	}
	token_ids_free(&ids);
	tokenizer_free(tok);
	return 0;
}
