/* libFuzzer target: the placement plan parser and validator (against the tiny preset's shape), and the
 * writer on every plan that parses (its output must parse again). */
#include "error.h"
#include "plan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dsm_moe_shape c = { .model_type = "deepseek_v32", .n_layers = 5, .first_moe = 2, .n_experts = 16,
				   .hidden_size = 256, .moe_intermediate_size = 96 };
	struct dsm_plan *p = NULL;
	if (dsm_plan_parse(&p, (const char *)data, size, "plan.json", &c) == 0) {
		char *text = dsm_plan_to_json(p);
		struct dsm_plan *q = NULL;
		if (text && dsm_plan_parse(&q, text, strlen(text), "again", &c) != 0)
			abort();
		if (q && memcmp(p->expert, q->expert, (size_t)5 * 16 * sizeof *p->expert) != 0)
			abort();
		dsm_plan_free(q);
		free(text);
	}
	dsm_plan_free(p);
	return 0;
}
