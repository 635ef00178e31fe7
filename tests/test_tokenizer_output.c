/* Output parsing: thinking and answer, proof sections, scores in \boxed{}, refinement input. */
#include "error.h"
#include "output_parse.h"
#include "test_util.h"

#include <string.h>

static int view_is(struct text_view v, const char *s)
{
	return v.len == strlen(s) && memcmp(v.data, s, v.len) == 0;
}

#define CHECK_VIEW(v, s) CHECK(view_is((v), (s)), "got \"%.*s\", want \"%s\"", (int)(v).len, (v).data, (s))

static void test_thinking(void)
{
	struct output_split o;
	const char *t = "let me think</think>\n\n## Solution\nx\n";
	output_split_thinking(t, strlen(t), &o);
	CHECK(o.has_answer, "has answer");
	CHECK_VIEW(o.thinking, "let me think");
	CHECK_VIEW(o.answer, "## Solution\nx");
	/* The last </think> counts (the thinking may quote the tag). */
	t = "a </think> b</think>c";
	output_split_thinking(t, strlen(t), &o);
	CHECK_VIEW(o.thinking, "a </think> b");
	CHECK_VIEW(o.answer, "c");
	/* Cut off while thinking. */
	t = "still thinking </thin";
	output_split_thinking(t, strlen(t), &o);
	CHECK(!o.has_answer && o.answer.len == 0, "no answer");
	CHECK_VIEW(o.thinking, t);
	output_split_thinking("", 0, &o);
	CHECK(!o.has_answer, "empty");
}

static void test_sections(void)
{
	struct proof_sections s;
	const char *t = "## Solution\n\nThe proof.\n\\boxed{42} is the answer.\n\n## Self Evaluation\n\nFine. \\boxed{1}\n";
	output_find_sections(t, strlen(t), &s);
	CHECK(s.has_solution && s.has_self_evaluation, "both headings");
	CHECK_VIEW(s.proof, "The proof.\n\\boxed{42} is the answer.");
	CHECK_VIEW(s.self_evaluation, "Fine. \\boxed{1}");
	/* Variants of the headings. */
	static const char *const variants[] = {
		"**Solution**\nP\n**Self Evaluation**\nE",
		"### Solution:\nP\n### Self-Evaluation:\nE",
		"  ## solution  \nP\n## SELF EVALUATION\nE",
		"**Solution:**\nP\n\n**Self Evaluation:**\nE\n",
		"Intro text.\n# Solution\nP\n## **Self Evaluation**\nE",
		"## Solution\r\nP\r\n## Self Evaluation\r\nE",
	};
	for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
		output_find_sections(variants[i], strlen(variants[i]), &s);
		CHECK(s.has_solution && s.has_self_evaluation && view_is(s.proof, "P") && view_is(s.self_evaluation, "E"),
		      "variant %zu: proof \"%.*s\" eval \"%.*s\"", i, (int)s.proof.len, s.proof.data,
		      (int)s.self_evaluation.len, s.self_evaluation.data);
	}
	/* Not headings: the words inside a line, or bold without closing stars. */
	t = "The Solution below is short.\n**Solution\nP";
	output_find_sections(t, strlen(t), &s);
	CHECK(!s.has_solution, "no heading");
	/* Missing Self Evaluation (cut-off output): the proof runs to the end. */
	t = "## Solution\nP continues";
	output_find_sections(t, strlen(t), &s);
	CHECK(s.has_solution && !s.has_self_evaluation, "no self evaluation");
	CHECK_VIEW(s.proof, "P continues");
	/* Self Evaluation before Solution does not count. */
	t = "## Self Evaluation\nX\n## Solution\nP";
	output_find_sections(t, strlen(t), &s);
	CHECK(s.has_solution && !s.has_self_evaluation, "order");
	CHECK_VIEW(s.proof, "P");
}

static void check_score(const char *text, enum score_status status, double score, const char *boxed)
{
	struct score_result r;
	output_parse_score(text, strlen(text), &r);
	char buf[160];
	CHECK(r.status == status && (status != SCORE_VALID || r.score == score), "\"%s\": got %s", text,
	      score_describe(&r, buf, sizeof buf));
	if (boxed)
		CHECK(view_is(r.boxed, boxed), "\"%s\": boxed \"%.*s\"", text, (int)r.boxed.len, r.boxed.data);
}

static void test_scores(void)
{
	check_score("Score: \\boxed{1}", SCORE_VALID, 1, "1");
	check_score("\\boxed{0}", SCORE_VALID, 0, NULL);
	check_score("\\boxed{ 0.5 }", SCORE_VALID, 0.5, NULL);
	check_score("\\boxed{1.0} \\boxed{.5}", SCORE_VALID, 0.5, NULL);
	check_score("\\boxed{0.50}", SCORE_VALID, 0.5, NULL);
	check_score("\\boxed {1}", SCORE_VALID, 1, NULL);
	/* The last non-empty one counts: an earlier \boxed in the proof does not. */
	check_score("answer \\boxed{42}; evaluation ... \\boxed{0.5}", SCORE_VALID, 0.5, NULL);
	check_score("\\boxed{1} then \\boxed{} and \\boxed{  }", SCORE_VALID, 1, NULL);
	check_score("\\boxed{1} and finally \\boxed{42}", SCORE_NOT_A_SCORE, 0, "42");
	/* Nested braces. */
	check_score("\\boxed{\\frac{1}{2}}", SCORE_NOT_A_SCORE, 0, "\\frac{1}{2}");
	check_score("\\boxed{\\text{1}}", SCORE_NOT_A_SCORE, 0, "\\text{1}");
	check_score("\\boxed{\\boxed{1}}", SCORE_VALID, 1, "1");
	check_score("\\boxed{a\\}b}", SCORE_NOT_A_SCORE, 0, "a\\}b");
	/* Never guessed. */
	check_score("\\boxed{1/2}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{0.25}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{2}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{1.5}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{0.05}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{-1}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{1 point}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{.}", SCORE_NOT_A_SCORE, 0, NULL);
	check_score("\\boxed{$1$}", SCORE_NOT_A_SCORE, 0, NULL);
	/* No box, or a box that was cut off. */
	check_score("the score is 1", SCORE_NO_BOX, 0, NULL);
	check_score("\\boxed", SCORE_NO_BOX, 0, NULL);
	check_score("\\boxed{}", SCORE_NO_BOX, 0, NULL);
	struct score_result r;
	const char *t = "\\boxed{1} ... \\boxed{0.";
	output_parse_score(t, strlen(t), &r);
	CHECK(r.status == SCORE_VALID && r.score == 1 && r.unterminated, "cut-off box after a valid one");
	t = "\\boxed{\\frac{1}{2}";
	output_parse_score(t, strlen(t), &r);
	char buf[160];
	CHECK(r.status == SCORE_NO_BOX && r.unterminated && strstr(score_describe(&r, buf, sizeof buf), "cut off"),
	      "cut-off: %s", buf);
}

static void test_refinement(void)
{
	struct refinement_evaluation evals[12];
	static const double scores[12] = {1, 0.5, 1, 0, -1, 1, 0, 0.5, 1, 1, 0, 1};
	static char texts[12][16];
	for (int i = 0; i < 12; i++) {
		snprintf(texts[i], sizeof texts[i], " e%d \n", i);
		evals[i] = (struct refinement_evaluation){texts[i], scores[i]};
	}
	struct refinement_candidate c[2] = {{"  proof A\n", evals, 12}, {"proof B", evals, 1}};
	struct text_buffer out = {0};
	CHECK(refinement_input(c, 2, 100, &out) == 0, "refinement input");
	/* Problems first: the 0s (3, 6, 10), the 0.5s (1, 7), then 1s (0, 2, 5): eight in all. */
	const char *want =
		"### Candidate solution 1\n\nproof A"
		"\n\n#### Evaluation 1 of candidate solution 1\n\ne3"
		"\n\n#### Evaluation 2 of candidate solution 1\n\ne6"
		"\n\n#### Evaluation 3 of candidate solution 1\n\ne10"
		"\n\n#### Evaluation 4 of candidate solution 1\n\ne1"
		"\n\n#### Evaluation 5 of candidate solution 1\n\ne7"
		"\n\n#### Evaluation 6 of candidate solution 1\n\ne0"
		"\n\n#### Evaluation 7 of candidate solution 1\n\ne2"
		"\n\n#### Evaluation 8 of candidate solution 1\n\ne5"
		"\n\n### Candidate solution 2\n\nproof B"
		"\n\n#### Evaluation 1 of candidate solution 2\n\ne0";
	CHECK(out.data && strcmp(out.data, want) == 0, "got:\n%s", out.data);
	/* Fewer evaluations on request; unscored ones come last. */
	out.len = 0;
	struct refinement_candidate d = {"p", evals + 4, 3}; /* -1, 1, 0 */
	refinement_input(&d, 1, 8, &out);
	CHECK(strstr(out.data, "1 of candidate solution 1\n\ne6") && strstr(out.data, "3 of candidate solution 1\n\ne4"),
	      "order with unscored: %s", out.data);
	out.len = 0;
	refinement_input(&d, 1, 1, &out);
	CHECK(!strstr(out.data, "Evaluation 2"), "max_evaluations 1");
	text_buffer_free(&out);
}

int main(void)
{
	test_thinking();
	test_sections();
	test_scores();
	test_refinement();
	return TEST_EXIT();
}
