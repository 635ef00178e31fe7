/* libFuzzer target: a dsm-batch input line (batch_parse_line) and its per-problem settings
 * (dsm_prove_flags_json), as dsm-batch reads them. */
#include "batch.h"
#include "templates.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct templates tpl;
	static int ready;
	if (!ready) {
		templates_init(&tpl);
		ready = 1;
	}
	struct batch_problem p;
	char why[320];
	if (batch_parse_line((const char *)data, size, 1, &p, why, sizeof why) == 0) {
		struct dsm_prove_settings base, st;
		dsm_prove_settings_default(&base);
		base.templates = &tpl;
		batch_problem_settings(&p, &base, &st);
		batch_problem_free(&p);
	}
	return 0;
}
