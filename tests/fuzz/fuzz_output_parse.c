/* libFuzzer target: the output parsers (thinking, sections, scores) and the refinement input builder. */
#include "output_parse.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static void inside(struct text_view v, const uint8_t *data, size_t size)
{
	if (v.len && ((const uint8_t *)v.data < data || (const uint8_t *)v.data + v.len > data + size))
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *text = (const char *)data;
	struct output_split split;
	output_split_thinking(text, size, &split);
	inside(split.thinking, data, size);
	inside(split.answer, data, size);
	struct proof_sections sections;
	output_find_sections(split.answer.data, split.answer.len, &sections);
	inside(sections.proof, data, size);
	inside(sections.self_evaluation, data, size);
	struct score_result score;
	output_parse_score(text, size, &score);
	inside(score.boxed, data, size);
	if (score.status == SCORE_VALID && score.score != 0 && score.score != 0.5 && score.score != 1)
		abort();
	char buf[200];
	score_describe(&score, buf, sizeof buf);
	char *copy = malloc(size + 1);
	if (copy) {
		memcpy(copy, data, size);
		copy[size] = 0;
		struct refinement_evaluation evals[3] = {{copy, 0}, {copy, score.score}, {copy, -1}};
		struct refinement_candidate c = {copy, evals, 3};
		struct text_buffer out = {0};
		refinement_input(&c, 1, size % 10, &out);
		text_buffer_free(&out);
		free(copy);
	}
	return 0;
}
