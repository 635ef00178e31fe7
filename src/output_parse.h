/* Reading DeepSeekMath-V2's outputs: thinking and answer, the proof and its self evaluation, the score in
 * the last \boxed{}, and the refinement input built from candidate proofs and their evaluations.
 *
 * All results are views into the text given (pointer and length); nothing is allocated except by
 * refinement_input, which appends to a caller's buffer. A score is never guessed: anything but a plain
 * 0, 0.5 or 1 in the last non-empty \boxed{} is "no valid score", with the reason. */
#ifndef DSM_OUTPUT_PARSE_H
#define DSM_OUTPUT_PARSE_H

#include "tokenizer.h" /* struct text_buffer */

#include <stddef.h>

struct text_view {
	const char *data;
	size_t len;
};

/* The generation split at the LAST "</think>": thinking before it, answer after it (white space around the
 * answer trimmed). has_answer is 0 when there is no "</think>" (the thinking was cut off): then thinking is
 * the whole text and answer is empty. */
struct output_split {
	struct text_view thinking, answer;
	int has_answer;
};
void output_split_thinking(const char *text, size_t len, struct output_split *out);

/* The proof is the text between the "## Solution" heading and the "## Self Evaluation" heading; the self
 * evaluation is what follows that heading. Headings are whole lines; accepted forms are a markdown heading
 * of any level ("## Solution", "### Solution:") or a bold line ("**Solution**", "**Solution:**"), any case,
 * and "Self-Evaluation" for "Self Evaluation". The first Solution heading counts, and the first Self
 * Evaluation heading after it. Both views are trimmed of white space. */
struct proof_sections {
	struct text_view proof, self_evaluation;
	int has_solution;        /* a Solution heading was found */
	int has_self_evaluation; /* a Self Evaluation heading was found after it (else the proof runs to the
				    end: the output was probably cut off) */
};
void output_find_sections(const char *answer, size_t len, struct proof_sections *out);

enum score_status {
	SCORE_VALID,        /* *score is 0, 0.5 or 1 */
	SCORE_NO_BOX,       /* no complete, non-empty \boxed{...} */
	SCORE_NOT_A_SCORE,  /* the last non-empty \boxed{} holds something else (see boxed) */
};

struct score_result {
	enum score_status status;
	double score;           /* valid only with SCORE_VALID */
	struct text_view boxed; /* the content of the last non-empty \boxed{}, when there is one */
	int unterminated;       /* a \boxed{ after it was never closed (cut-off output) */
};
/* Finds the last non-empty \boxed{...} (braces balanced; \{ and \} do not count) and reads it as a score:
 * white space, then 0, 1 or 0.5 written in decimal ("1", "1.0", "0.50", ".5"), then white space. */
void output_parse_score(const char *text, size_t len, struct score_result *out);
/* A one-line description of a result ("0.5", "no \boxed{} found", "\boxed{3/4} is not 0, 0.5 or 1"). */
const char *score_describe(const struct score_result *r, char *buf, size_t size);

/* A candidate proof with its evaluations (the verifiers' answers) and their scores (negative when an
 * evaluation has no valid score). */
struct refinement_evaluation {
	const char *text;
	double score;
};
struct refinement_candidate {
	const char *proof;
	const struct refinement_evaluation *evaluations;
	size_t n_evaluations;
};

#define REFINEMENT_MAX_EVALUATIONS 8

/* Appends the {proofs_to_refine} block of the refinement template: each candidate, then at most
 * max_evaluations (<= REFINEMENT_MAX_EVALUATIONS) of its evaluations, those that found problems first
 * (score 0, then 0.5, then 1, then those without a valid score; the given order within each). */
int refinement_input(const struct refinement_candidate *candidates, size_t n, size_t max_evaluations,
		     struct text_buffer *out);

#endif
