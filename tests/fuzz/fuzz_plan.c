/* libFuzzer target: the placement plan parser and validator (against the tiny preset's shape), and the
 * writer on every plan that parses (its output must parse again). */
#include "error.h"
#include "plan.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dsm_config c;
	memset(&c, 0, sizeof c);
	strcpy(c.model_type, "deepseek_v32");
	c.num_hidden_layers = 5;
	c.first_k_dense_replace = 2;
	c.n_routed_experts = 16;
	c.hidden_size = 256;
	c.moe_intermediate_size = 96;
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
