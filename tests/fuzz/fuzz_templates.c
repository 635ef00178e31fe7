/* libFuzzer target: the templates loader and renderer, and the template syntax checker. */
#include "error.h"
#include "templates.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct templates t;
	if (templates_init(&t) != 0)
		return 0;
	static const struct template_fields f = {"q", "s", "p", "r", "i", "c"};
	templates_load_json(&t, (const char *)data, size, "templates.json");
	struct text_buffer out = {0};
	for (int k = 0; k < TEMPLATE_COUNT; k++) {
		out.len = 0;
		if (template_render(&t, (enum template_kind)k, &f, &out) != 0)
			abort(); /* loaded templates were checked */
	}
	/* The raw bytes as a template of each kind. */
	char *text = malloc(size + 1);
	if (text) {
		memcpy(text, data, size);
		text[size] = 0;
		for (int k = 0; k < TEMPLATE_COUNT; k++)
			template_check((enum template_kind)k, text, "fuzz");
		out.len = 0;
		chat_prompt(text, text, (int)(size & 1), &out);
		free(text);
	}
	text_buffer_free(&out);
	templates_free(&t);
	return 0;
}
