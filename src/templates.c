/* Prompt templates: defaults, loading from JSON, checking and rendering. */
#include "templates.h"

#include "error.h"
#include "json_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TEMPLATE_MAX_FILE ((size_t)16 << 20)

static const char *const names[TEMPLATE_COUNT] = {
	"proof_generation", "proof_verification", "meta_verification", "proof_refinement",
};

/* The placeholders of each kind, all required. */
static const char *const fields_of[TEMPLATE_COUNT][4] = {
	{"question", NULL},
	{"statement", "proof", NULL},
	{"statement", "proof", "rating", NULL},
	{"instruction", "proofs_to_refine", NULL},
};

/* dsm's own wording; it asks for the output format the model was trained on (docs/MODEL.md section 5). */
static const char default_generation[] =
	"Solve the following problem. Your solution must be complete and rigorous: justify every step, and "
	"prove every claim you rely on unless it is a standard, named theorem. If the problem asks for an "
	"answer, state the answer and prove that it is correct.\n"
	"\n"
	"## Problem\n"
	"\n"
	"{question}\n"
	"\n"
	"## Format of your response\n"
	"\n"
	"Write exactly two sections, in this order:\n"
	"\n"
	"## Solution\n"
	"\n"
	"Your complete solution.\n"
	"\n"
	"## Self Evaluation\n"
	"\n"
	"A critical check of your own solution, step by step, as a strict grader would do it: name every "
	"error, gap or unjustified step you find, or explain why there is none.\n"
	"\n"
	"End the self evaluation with a score for your solution, written as \\boxed{{score}}, where the "
	"score is exactly one of:\n"
	"- 1 if the solution is complete and rigorous;\n"
	"- 0.5 if the solution is sound overall but has minor errors or omissions;\n"
	"- 0 if the solution has a fatal error or a serious gap, or does not solve the problem.\n"
	"Decide the score only after examining your solution again, and be honest: an overrated score is "
	"worse than a low one.";

static const char default_verification[] =
	"You are grading a solution to a mathematics problem. The problem may ask for a proof, or for an "
	"answer; an answer counts only together with a rigorous proof that it is correct.\n"
	"\n"
	"Score the solution as follows:\n"
	"- 1: the solution is completely correct, and every step is carried out properly and clearly;\n"
	"- 0.5: the solution is correct overall, but some details are omitted or there are minor errors;\n"
	"- 0: the solution does not solve the problem, or has a fatal error, or has a severe omission.\n"
	"A result quoted from a paper or a book still needs a proof, unless it is a standard, named theorem; "
	"a solution that relies on an unproved or wrongly proved claim cannot score 1.\n"
	"\n"
	"## Problem\n"
	"\n"
	"{statement}\n"
	"\n"
	"## Solution to grade\n"
	"\n"
	"{proof}\n"
	"\n"
	"## Format of your response\n"
	"\n"
	"First your evaluation: go through the solution step by step and list each issue you find, where it "
	"occurs and how serious it is. Then end with the score as \\boxed{{score}}, with 0, 0.5 or 1 and "
	"nothing else inside the box.";

static const char default_meta_verification[] =
	"You are checking the work of a grader. Below are a mathematics problem, a solution to it, and a "
	"grader's evaluation of that solution. The grader had to score the solution 1 if it is complete and "
	"rigorous, 0.5 if it is sound overall with minor errors or omissions, and 0 if it has a fatal error "
	"or a serious gap.\n"
	"\n"
	"Decide whether the evaluation is accurate: is each issue it reports real and correctly described, "
	"did it miss a serious issue, and does its score follow from the rules above?\n"
	"\n"
	"## Problem\n"
	"\n"
	"{statement}\n"
	"\n"
	"## Solution\n"
	"\n"
	"{proof}\n"
	"\n"
	"## Evaluation to check\n"
	"\n"
	"{rating}\n"
	"\n"
	"## Format of your response\n"
	"\n"
	"Explain your analysis of the evaluation. Then end with your rating of the evaluation as "
	"\\boxed{{rating}}, where the rating is 1 if the evaluation is accurate, 0.5 if it is mostly accurate "
	"with minor flaws, and 0 if it reports issues that do not exist, misses a fatal error, or gives an "
	"unjustified score. Put only 0, 0.5 or 1 inside the box.";

static const char default_refinement[] =
	"{instruction}\n"
	"\n"
	"## Earlier attempts\n"
	"\n"
	"Below are earlier solutions to this problem, each followed by evaluations of it. Write a better "
	"solution: repair the errors and gaps that the evaluations point out, and keep the ideas that work.\n"
	"\n"
	"{proofs_to_refine}\n"
	"\n"
	"## Your task\n"
	"\n"
	"Write a new, complete solution in the format described above: a `## Solution` section followed by "
	"a `## Self Evaluation` section that ends with your score in \\boxed{{}}.";

static const char *const defaults[TEMPLATE_COUNT] = {
	default_generation, default_verification, default_meta_verification, default_refinement,
};

const char *template_name(enum template_kind kind)
{
	return (unsigned)kind < TEMPLATE_COUNT ? names[kind] : "unknown";
}

/* Calls visit(arg, literal, len, NULL) for text (a doubled brace arrives as the text before it plus one
 * brace) and visit(arg, NULL, 0, name) for each placeholder (NUL-terminated, at most 63 characters).
 * Returns 0, DSM_ETEMPLATE for bad syntax, or what visit returns. */
static int template_walk(const char *text, const char *what, int (*visit)(void *, const char *, size_t,
									    const char *), void *arg)
{
	size_t i = 0, run = 0;
	int rc;
	while (text[i]) {
		char c = text[i];
		if (c != '{' && c != '}') {
			i++;
			continue;
		}
		if (text[i + 1] == c) { /* {{ or }} */
			if ((rc = visit(arg, text + run, i + 1 - run, NULL)))
				return rc;
			i += 2;
			run = i;
			continue;
		}
		if (c == '}')
			return dsm_fail(DSM_ETEMPLATE, "%s: single '}' at byte %zu (write '}}' for a literal brace)",
					what, i);
		size_t end = i + 1;
		while (text[end] && text[end] != '}' && text[end] != '{')
			end++;
		if (text[end] != '}')
			return dsm_fail(DSM_ETEMPLATE, "%s: '{' at byte %zu is not closed (write '{{' for a literal "
					"brace)", what, i);
		char name[64];
		size_t len = end - i - 1;
		int ok = len > 0 && len < sizeof name;
		for (size_t k = 0; ok && k < len; k++) {
			char ch = text[i + 1 + k];
			ok = ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			     (k > 0 && ch >= '0' && ch <= '9');
		}
		if (!ok)
			return dsm_fail(DSM_ETEMPLATE, "%s: placeholder '{%.*s}' at byte %zu is not a name (write '{{' "
					"and '}}' for literal braces)", what, (int)(len > 40 ? 40 : len), text + i + 1, i);
		memcpy(name, text + i + 1, len);
		name[len] = 0;
		if ((rc = visit(arg, text + run, i - run, NULL)) || (rc = visit(arg, NULL, 0, name)))
			return rc;
		i = end + 1;
		run = i;
	}
	return visit(arg, text + run, i - run, NULL);
}

struct check_state {
	enum template_kind kind;
	const char *what;
	unsigned seen;
};

static int field_index(enum template_kind kind, const char *name)
{
	for (int k = 0; fields_of[kind][k]; k++)
		if (strcmp(fields_of[kind][k], name) == 0)
			return k;
	return -1;
}

static void list_fields(enum template_kind kind, char *buf, size_t size)
{
	size_t n = 0;
	buf[0] = 0;
	for (int k = 0; fields_of[kind][k] && n < size; k++)
		n += (size_t)snprintf(buf + n, size - n, "%s{%s}", k ? ", " : "", fields_of[kind][k]);
}

static int check_visit(void *arg, const char *literal, size_t len, const char *name)
{
	struct check_state *st = arg;
	(void)literal, (void)len;
	if (!name)
		return 0;
	int k = field_index(st->kind, name);
	if (k < 0) {
		char allowed[128];
		list_fields(st->kind, allowed, sizeof allowed);
		return dsm_fail(DSM_ETEMPLATE, "%s: unknown placeholder {%s} (%s takes %s)", st->what, name,
				names[st->kind], allowed);
	}
	st->seen |= 1u << k;
	return 0;
}

int template_check(enum template_kind kind, const char *text, const char *what)
{
	if ((unsigned)kind >= TEMPLATE_COUNT)
		return dsm_fail(DSM_EARG, "%s: no template kind %d", what, (int)kind);
	struct check_state st = {kind, what, 0};
	int rc = template_walk(text, what, check_visit, &st);
	if (rc)
		return rc;
	for (int k = 0; fields_of[kind][k]; k++)
		if (!(st.seen & (1u << k)))
			return dsm_fail(DSM_ETEMPLATE, "%s: missing placeholder {%s} (%s needs it)", what,
					fields_of[kind][k], names[kind]);
	return 0;
}

struct render_state {
	const struct template_fields *f;
	struct text_buffer *out;
};

static const char *field_value(const struct template_fields *f, const char *name)
{
	if (strcmp(name, "question") == 0)
		return f->question;
	if (strcmp(name, "statement") == 0)
		return f->statement;
	if (strcmp(name, "proof") == 0)
		return f->proof;
	if (strcmp(name, "rating") == 0)
		return f->rating;
	if (strcmp(name, "instruction") == 0)
		return f->instruction;
	if (strcmp(name, "proofs_to_refine") == 0)
		return f->proofs_to_refine;
	return NULL;
}

static int render_visit(void *arg, const char *literal, size_t len, const char *name)
{
	struct render_state *st = arg;
	if (!name)
		return text_buffer_append(st->out, literal, len);
	const char *value = field_value(st->f, name);
	if (!value)
		return dsm_fail(DSM_EARG, "template: no value given for {%s}", name);
	return text_buffer_append(st->out, value, strlen(value));
}

int template_render(const struct templates *t, enum template_kind kind, const struct template_fields *f,
		    struct text_buffer *out)
{
	if ((unsigned)kind >= TEMPLATE_COUNT)
		return dsm_fail(DSM_EARG, "no template kind %d", (int)kind);
	size_t old = out->len;
	int rc = text_buffer_append(out, "", 0);
	if (!rc) {
		struct render_state st = {f, out};
		rc = template_walk(t->text[kind], names[kind], render_visit, &st);
	}
	if (rc && out->data) {
		out->len = old;
		out->data[old] = 0;
	}
	return rc;
}

int templates_init(struct templates *t)
{
	memset(t, 0, sizeof *t);
	for (int k = 0; k < TEMPLATE_COUNT; k++)
		if (!(t->text[k] = strdup(defaults[k]))) {
			templates_free(t);
			return dsm_fail(DSM_ENOMEM, "out of memory for the templates");
		}
	if (!(t->system = strdup(""))) {
		templates_free(t);
		return dsm_fail(DSM_ENOMEM, "out of memory for the templates");
	}
	return 0;
}

void templates_free(struct templates *t)
{
	if (!t)
		return;
	for (int k = 0; k < TEMPLATE_COUNT; k++)
		free(t->text[k]);
	free(t->system);
	memset(t, 0, sizeof *t);
}

int templates_load_json(struct templates *t, const char *json, size_t len, const char *what)
{
	cJSON *root = json_parse(json, len, what);
	if (!root)
		return DSM_EJSON;
	char *replaced[TEMPLATE_COUNT + 1] = {0};
	int rc = 0;
	if (!cJSON_IsObject(root)) {
		rc = dsm_fail(DSM_EJSON, "%s: a templates file is a JSON object of strings", what);
		goto out;
	}
	for (const cJSON *e = root->child; e; e = e->next) {
		int k;
		for (k = 0; k <= TEMPLATE_COUNT; k++)
			if (strcmp(e->string, k < TEMPLATE_COUNT ? names[k] : "system") == 0)
				break;
		if (k > TEMPLATE_COUNT) {
			rc = dsm_fail(DSM_ETEMPLATE, "%s: unknown template \"%.60s\" (known: proof_generation, "
				      "proof_verification, meta_verification, proof_refinement, system)", what, e->string);
			goto out;
		}
		if (!cJSON_IsString(e)) {
			rc = dsm_fail(DSM_ETEMPLATE, "%s: template \"%s\" is not a string", what, e->string);
			goto out;
		}
		if (replaced[k]) {
			rc = dsm_fail(DSM_ETEMPLATE, "%s: template \"%s\" is given twice", what, e->string);
			goto out;
		}
		if (k < TEMPLATE_COUNT && (rc = template_check((enum template_kind)k, e->valuestring, what))) {
			dsm_fail_prefix(rc, "template %s", names[k]);
			goto out;
		}
		if (!(replaced[k] = strdup(e->valuestring))) {
			rc = dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
			goto out;
		}
	}
	/* All checked: apply. */
	for (int k = 0; k <= TEMPLATE_COUNT; k++) {
		if (!replaced[k])
			continue;
		char **slot = k < TEMPLATE_COUNT ? &t->text[k] : &t->system;
		free(*slot);
		*slot = replaced[k];
		replaced[k] = NULL;
	}
out:
	for (int k = 0; k <= TEMPLATE_COUNT; k++)
		free(replaced[k]);
	cJSON_Delete(root);
	return rc;
}

int templates_load_file(struct templates *t, const char *path)
{
	char *json;
	size_t len;
	int rc = read_file(path, TEMPLATE_MAX_FILE, &json, &len);
	if (rc)
		return rc;
	rc = templates_load_json(t, json, len, path);
	free(json);
	return rc;
}

int chat_prompt(const char *system, const char *prompt, int thinking, struct text_buffer *out)
{
	static const char bos[] = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
	static const char user[] = "<\xef\xbd\x9cUser\xef\xbd\x9c>";
	static const char assistant[] = "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>";
	const char *think = thinking ? "<think>" : "</think>";
	size_t old = out->len;
	int rc;
	if ((rc = text_buffer_append(out, bos, strlen(bos))) ||
	    (rc = text_buffer_append(out, system ? system : "", system ? strlen(system) : 0)) ||
	    (rc = text_buffer_append(out, user, strlen(user))) ||
	    (rc = text_buffer_append(out, prompt, strlen(prompt))) ||
	    (rc = text_buffer_append(out, assistant, strlen(assistant))) ||
	    (rc = text_buffer_append(out, think, strlen(think)))) {
		if (out->data) {
			out->len = old;
			out->data[old] = 0;
		}
	}
	return rc;
}
