/* Prompt templates of DeepSeekMath-V2: the chat shell and the four task prompts.
 *
 * A template is text with placeholders in Python's str.format syntax, so that the official wording
 * (inference/math_templates.py of the DeepSeek-Math-V2 repository) can be loaded unchanged: `{name}` is a
 * placeholder, `{{` and `}}` are literal braces (LaTeX in a template doubles its braces: `\boxed{{}}`).
 * Each kind has a fixed set of placeholders, all required:
 *   proof_generation    {question}
 *   proof_verification  {statement} {proof}
 *   meta_verification   {statement} {proof} {rating}
 *   proof_refinement    {instruction} {proofs_to_refine}
 * The defaults are dsm's own wording (docs/templates.md); a JSON file
 * {"proof_generation": "...", ..., "system": "..."} replaces any of them. */
#ifndef DSM_TEMPLATES_H
#define DSM_TEMPLATES_H

#include "tokenizer.h" /* struct text_buffer */

#include <stddef.h>

enum template_kind {
	TEMPLATE_PROOF_GENERATION,
	TEMPLATE_PROOF_VERIFICATION,
	TEMPLATE_META_VERIFICATION,
	TEMPLATE_PROOF_REFINEMENT,
	TEMPLATE_COUNT,
};

struct templates {
	char *text[TEMPLATE_COUNT]; /* owned */
	char *system;               /* the chat shell's system prompt, owned, "" by default */
};

/* Values for the placeholders; only those of the template's kind are read and must not be NULL. */
struct template_fields {
	const char *question;         /* the problem (proof_generation) */
	const char *statement;        /* the problem (verification, meta-verification) */
	const char *proof;            /* the solution being judged */
	const char *rating;           /* the evaluation being judged (meta-verification) */
	const char *instruction;      /* the rendered proof_generation prompt (refinement) */
	const char *proofs_to_refine; /* refinement_input's block (refinement) */
};

/* "proof_generation", ... (the keys of the JSON file). */
const char *template_name(enum template_kind kind);

/* Fills t with the default wording. 0 or DSM_ENOMEM. */
int templates_init(struct templates *t);
/* Replaces templates from a JSON file / buffer; t must have been initialised. Unknown keys, non-string
 * values and templates with a missing or unknown placeholder fail with DSM_ETEMPLATE (or DSM_EJSON) and a
 * message naming the file, the template and the placeholder; t is then unchanged. */
int templates_load_file(struct templates *t, const char *path);
int templates_load_json(struct templates *t, const char *json, size_t len, const char *what);
/* Accepts a zeroed or half-built t. */
void templates_free(struct templates *t);

/* Checks text as a template of kind. 0 or DSM_ETEMPLATE with a message (prefixed by what). */
int template_check(enum template_kind kind, const char *text, const char *what);

/* Appends the template of kind with its placeholders replaced (values are inserted as they are). */
int template_render(const struct templates *t, enum template_kind kind, const struct template_fields *f,
		    struct text_buffer *out);

/* Appends the chat shell: "<｜begin▁of▁sentence｜>{system}<｜User｜>{prompt}<｜Assistant｜>" then "<think>"
 * (thinking, as DeepSeekMath-V2 is used) or "</think>". The text starts with the BOS token's string, so it
 * is encoded WITHOUT TOKENIZER_ADD_SPECIAL. */
int chat_prompt(const char *system, const char *prompt, int thinking, struct text_buffer *out);

#endif
