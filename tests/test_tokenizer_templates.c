/* Prompt templates: defaults, rendering, the chat shell, loading replacements, and rejection of bad
 * templates with clear messages. */
#include "error.h"
#include "mini_tokenizer.h"
#include "templates.h"
#include "test_util.h"
#include "tokenizer.h"

#include <string.h>
#include <unistd.h>

#define BOS "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"
#define USER "<\xef\xbd\x9cUser\xef\xbd\x9c>"
#define ASSISTANT "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"

static const struct template_fields fields = {
	.question = "Q{1}", .statement = "S", .proof = "P \\boxed{7}", .rating = "R",
	.instruction = "I", .proofs_to_refine = "C",
};

static void test_defaults(void)
{
	struct templates t;
	CHECK(templates_init(&t) == 0, "init");
	for (int k = 0; k < TEMPLATE_COUNT; k++) {
		CHECK(template_check((enum template_kind)k, t.text[k], template_name((enum template_kind)k)) == 0,
		      "default %s: %s", template_name((enum template_kind)k), dsm_errmsg());
		struct text_buffer out = {0};
		CHECK(template_render(&t, (enum template_kind)k, &fields, &out) == 0, "render %d", k);
		CHECK(out.data && !strstr(out.data, "{{") && !strstr(out.data, "}}"), "doubled braces left in %d", k);
		text_buffer_free(&out);
	}
	struct text_buffer out = {0};
	template_render(&t, TEMPLATE_PROOF_GENERATION, &fields, &out);
	/* The generation prompt asks for the exact output format, with literal braces. */
	CHECK(strstr(out.data, "Q{1}") && strstr(out.data, "## Solution") && strstr(out.data, "## Self Evaluation") &&
		      strstr(out.data, "\\boxed{score}") && strstr(out.data, "0.5"),
	      "generation prompt: %s", out.data);
	out.len = 0;
	template_render(&t, TEMPLATE_PROOF_VERIFICATION, &fields, &out);
	CHECK(strstr(out.data, "P \\boxed{7}") && strstr(out.data, "\\boxed{score}"), "verification: %s", out.data);
	out.len = 0;
	template_render(&t, TEMPLATE_META_VERIFICATION, &fields, &out);
	CHECK(strstr(out.data, "\n\nS\n\n") && strstr(out.data, "\n\nR\n\n"), "meta verification");
	out.len = 0;
	template_render(&t, TEMPLATE_PROOF_REFINEMENT, &fields, &out);
	CHECK(strncmp(out.data, "I\n", 2) == 0 && strstr(out.data, "\n\nC\n\n"), "refinement: %s", out.data);
	/* A missing value is an error, not a crash. */
	struct template_fields none = {0};
	out.len = 0;
	CHECK(template_render(&t, TEMPLATE_PROOF_GENERATION, &none, &out) == DSM_EARG && out.len == 0, "NULL value");
	text_buffer_free(&out);
	templates_free(&t);
	templates_free(&t); /* freeing twice is harmless */
}

static void test_chat_prompt(void)
{
	struct text_buffer out = {0};
	CHECK(chat_prompt("sys", "hello", 1, &out) == 0, "chat prompt");
	CHECK(strcmp(out.data, BOS "sys" USER "hello" ASSISTANT "<think>") == 0, "thinking: %s", out.data);
	out.len = 0;
	CHECK(chat_prompt(NULL, "hello", 0, &out) == 0, "chat prompt");
	CHECK(strcmp(out.data, BOS USER "hello" ASSISTANT "</think>") == 0, "non-thinking: %s", out.data);
	/* With the mini tokenizer, the shell's markers become their tokens (encoded without adding BOS). */
	char dir[] = "/tmp/dsm-test-templates-XXXXXX";
	struct tokenizer *tok = NULL;
	if (mkdtemp(dir) && mini_tokenizer_write(dir, 512) == 0 && tokenizer_load_dir(&tok, dir) == 0) {
		out.len = 0;
		chat_prompt("", "Prove it.", 1, &out);
		struct token_ids ids = {0};
		CHECK(tokenizer_encode(tok, out.data, out.len, 0, &ids) == 0, "encode");
		CHECK(ids.n > 4 && ids.ids[0] == tokenizer_bos_id(tok) &&
			      ids.ids[1] == tokenizer_token_id(tok, USER) &&
			      ids.ids[ids.n - 2] == tokenizer_token_id(tok, ASSISTANT) &&
			      ids.ids[ids.n - 1] == tokenizer_token_id(tok, "<think>"),
		      "chat prompt ids");
		token_ids_free(&ids);
	} else {
		CHECK(0, "mini tokenizer: %s", dsm_errmsg());
	}
	tokenizer_free(tok);
	mini_tokenizer_remove(dir);
	text_buffer_free(&out);
}

static void expect_rejected(const char *json, const char *words)
{
	struct templates t;
	templates_init(&t);
	char *before = strdup(t.text[TEMPLATE_PROOF_GENERATION]);
	int rc = templates_load_json(&t, json, strlen(json), "my.json");
	CHECK(rc < 0 && strstr(dsm_errmsg(), words) && strstr(dsm_errmsg(), "my.json"), "want \"%s\", got %d: %s",
	      words, rc, dsm_errmsg());
	CHECK(strcmp(before, t.text[TEMPLATE_PROOF_GENERATION]) == 0, "a failed load changed the templates");
	free(before);
	templates_free(&t);
}

static void test_loading(void)
{
	struct templates t;
	templates_init(&t);
	/* Official-style wording: Python format syntax, doubled braces around LaTeX. */
	const char *json = "{\"proof_generation\": \"Solve: {question}\\nScore: \\\\boxed{{...}}\","
			   " \"system\": \"Be rigorous.\"}";
	CHECK(templates_load_json(&t, json, strlen(json), "t.json") == 0, "load: %s", dsm_errmsg());
	struct text_buffer out = {0};
	template_render(&t, TEMPLATE_PROOF_GENERATION, &fields, &out);
	CHECK(strcmp(out.data, "Solve: Q{1}\nScore: \\boxed{...}") == 0, "rendered: %s", out.data);
	CHECK(strcmp(t.system, "Be rigorous.") == 0, "system");
	CHECK(template_check(TEMPLATE_PROOF_VERIFICATION, t.text[TEMPLATE_PROOF_VERIFICATION], "v") == 0,
	      "others keep the defaults");
	text_buffer_free(&out);
	templates_free(&t);

	expect_rejected("{\"proof_generation\": \"Solve the problem.\"}", "missing placeholder {question}");
	expect_rejected("{\"proof_verification\": \"{statement} {proof} {question}\"}", "unknown placeholder {question}");
	expect_rejected("{\"meta_verification\": \"{statement} {proof}\"}", "missing placeholder {rating}");
	expect_rejected("{\"proof_refinement\": \"{instruction}\"}", "missing placeholder {proofs_to_refine}");
	expect_rejected("{\"proof_generation\": \"{question} \\\\boxed{}\"}", "not a name");
	expect_rejected("{\"proof_generation\": \"{question} }\"}", "single '}'");
	expect_rejected("{\"proof_generation\": \"{question} {oops\"}", "not closed");
	expect_rejected("{\"proof_generation\": \"{question} {0}\"}", "not a name");
	expect_rejected("{\"proof_generation\": \"{question} {question!r}\"}", "not a name");
	expect_rejected("{\"proof_generation\": 3}", "not a string");
	expect_rejected("{\"proof_genration\": \"{question}\"}", "unknown template \"proof_genration\"");
	expect_rejected("{\"proof_generation\": \"{question}\", \"proof_generation\": \"{question}\"}", "twice");
	expect_rejected("[\"{question}\"]", "JSON object");
	expect_rejected("{\"proof_generation\": ", "not valid JSON");
	/* A file that does not exist names itself. */
	templates_init(&t);
	CHECK(templates_load_file(&t, "/nonexistent/templates.json") < 0 &&
		      strstr(dsm_errmsg(), "/nonexistent/templates.json"), "missing file: %s", dsm_errmsg());
	templates_free(&t);
}

int main(void)
{
	test_defaults();
	test_chat_prompt();
	test_loading();
	return TEST_EXIT();
}
