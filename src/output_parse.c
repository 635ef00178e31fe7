/* Parsing model outputs: thinking, sections, scores; building the refinement input. */
#include "output_parse.h"

#include "error.h"

#include <stdio.h>
#include <string.h>

static int is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

static struct text_view trimmed(const char *s, size_t len)
{
	while (len && is_space(*s))
		s++, len--;
	while (len && is_space(s[len - 1]))
		len--;
	return (struct text_view){s, len};
}

/* The last occurrence of needle in text[0..len), or NULL. */
static const char *find_last(const char *text, size_t len, const char *needle)
{
	size_t n = strlen(needle);
	for (size_t i = len >= n ? len - n + 1 : 0; i-- > 0;)
		if (memcmp(text + i, needle, n) == 0)
			return text + i;
	return NULL;
}

void output_split_thinking(const char *text, size_t len, struct output_split *out)
{
	const char *close = find_last(text, len, "</think>");
	if (!close) {
		out->thinking = (struct text_view){text, len};
		out->answer = (struct text_view){text + len, 0};
		out->has_answer = 0;
		return;
	}
	out->thinking = (struct text_view){text, (size_t)(close - text)};
	size_t after = (size_t)(close - text) + strlen("</think>");
	out->answer = trimmed(text + after, len - after);
	out->has_answer = 1;
}

/* ---- section headings ------------------------------------------------------------------------------- */

static int lower(char c)
{
	return c >= 'A' && c <= 'Z' ? c + 32 : c;
}

/* Matches word (lower case; ' ' in word accepts one space or '-') at s[0..n), case-insensitively; returns
 * the length matched or 0. */
static size_t match_word(const char *s, size_t n, const char *word)
{
	size_t i = 0;
	for (const char *w = word; *w; w++, i++) {
		if (i >= n)
			return 0;
		if (*w == ' ' ? (s[i] != ' ' && s[i] != '-') : lower(s[i]) != *w)
			return 0;
	}
	return i;
}

/* Whether the line s[0..n) is a heading for word: "#... word[:]" or "**word[:]**" (also "**word**:"),
 * with white space around. */
static int is_heading(const char *s, size_t n, const char *word)
{
	struct text_view t = trimmed(s, n);
	const char *p = t.data, *end = t.data + t.len;
	int hashes = 0, stars = 0;
	while (p < end && *p == '#')
		p++, hashes++;
	while (hashes && p < end && (*p == ' ' || *p == '\t'))
		p++;
	while (p < end && *p == '*')
		p++, stars++;
	if (hashes == 0 && stars == 0)
		return 0;
	while (p < end && (*p == ' ' || *p == '\t'))
		p++;
	size_t m = match_word(p, (size_t)(end - p), word);
	if (!m)
		return 0;
	p += m;
	int closing = 0;
	while (p < end && (*p == ':' || *p == '*' || *p == ' ' || *p == '\t')) {
		closing += *p == '*';
		p++;
	}
	if (p != end)
		return 0;
	return stars == 0 || closing > 0;
}

/* Finds the first heading line for word in text[from..len): sets *line_start and *line_end (just past
 * the line's newline). Returns 1 if found. */
static int find_heading(const char *text, size_t len, size_t from, const char *word, size_t *line_start,
			size_t *line_end)
{
	size_t i = from;
	while (i < len) {
		const char *nl = memchr(text + i, '\n', len - i);
		size_t end = nl ? (size_t)(nl - text) : len;
		if (is_heading(text + i, end - i, word)) {
			*line_start = i;
			*line_end = nl ? end + 1 : end;
			return 1;
		}
		i = end + 1;
	}
	return 0;
}

void output_find_sections(const char *answer, size_t len, struct proof_sections *out)
{
	memset(out, 0, sizeof *out);
	size_t sol_start, sol_end, eval_start, eval_end;
	if (!find_heading(answer, len, 0, "solution", &sol_start, &sol_end)) {
		out->proof = (struct text_view){answer + len, 0};
		out->self_evaluation = out->proof;
		return;
	}
	out->has_solution = 1;
	if (find_heading(answer, len, sol_end, "self evaluation", &eval_start, &eval_end)) {
		out->has_self_evaluation = 1;
		out->proof = trimmed(answer + sol_end, eval_start - sol_end);
		out->self_evaluation = trimmed(answer + eval_end, len - eval_end);
	} else {
		out->proof = trimmed(answer + sol_end, len - sol_end);
		out->self_evaluation = (struct text_view){answer + len, 0};
	}
}

/* ---- scores --------------------------------------------------------------------------------------------- */

/* The content of the \boxed{ whose '{' is at text[open]: sets *end to the index of the closing brace.
 * Returns 0 if the braces never balance. */
static int boxed_content(const char *text, size_t len, size_t open, size_t *end)
{
	int depth = 0;
	for (size_t i = open; i < len; i++) {
		if (text[i] == '\\' && i + 1 < len && (text[i + 1] == '{' || text[i + 1] == '}')) {
			i++;
			continue;
		}
		if (text[i] == '{') {
			depth++;
		} else if (text[i] == '}' && --depth == 0) {
			*end = i;
			return 1;
		}
	}
	return 0;
}

/* Reads a plain decimal 0, 0.5 or 1. */
static int read_score(struct text_view v, double *score)
{
	struct text_view t = trimmed(v.data, v.len);
	size_t i = 0, int_digits = 0, frac_digits = 0;
	unsigned long whole = 0;
	int half = 0, nonzero_frac = 0;
	while (i < t.len && t.data[i] >= '0' && t.data[i] <= '9') {
		if (whole < 10)
			whole = whole * 10 + (unsigned long)(t.data[i] - '0');
		i++, int_digits++;
	}
	if (i < t.len && t.data[i] == '.') {
		i++;
		while (i < t.len && t.data[i] >= '0' && t.data[i] <= '9') {
			char d = t.data[i];
			if (frac_digits == 0 && d == '5')
				half = 1;
			else if (d != '0')
				nonzero_frac = 1;
			i++, frac_digits++;
		}
		if (frac_digits == 0 && int_digits == 0)
			return 0;
	}
	if (i != t.len || (int_digits == 0 && frac_digits == 0) || nonzero_frac)
		return 0;
	if (whole == 0 && half) {
		*score = 0.5;
		return 1;
	}
	if (half || whole > 1)
		return 0;
	*score = (double)whole;
	return 1;
}

void output_parse_score(const char *text, size_t len, struct score_result *out)
{
	static const char box[] = "\\boxed";
	memset(out, 0, sizeof *out);
	out->status = SCORE_NO_BOX;
	int found = 0;
	for (size_t i = 0; i + sizeof box - 1 <= len; i++) {
		if (memcmp(text + i, box, sizeof box - 1) != 0)
			continue;
		size_t open = i + sizeof box - 1;
		while (open < len && (text[open] == ' ' || text[open] == '\t'))
			open++;
		if (open >= len || text[open] != '{')
			continue;
		size_t end;
		if (!boxed_content(text, len, open, &end)) {
			out->unterminated = 1;
			continue;
		}
		struct text_view content = {text + open + 1, end - open - 1};
		if (trimmed(content.data, content.len).len == 0)
			continue;
		/* Each \boxed counts, nested ones too: the last to start is the last. */
		out->boxed = content;
		out->unterminated = 0;
		found = 1;
	}
	if (!found)
		return;
	if (read_score(out->boxed, &out->score))
		out->status = SCORE_VALID;
	else
		out->status = SCORE_NOT_A_SCORE;
}

const char *score_describe(const struct score_result *r, char *buf, size_t size)
{
	switch (r->status) {
	case SCORE_VALID:
		snprintf(buf, size, "%g", r->score);
		break;
	case SCORE_NO_BOX:
		snprintf(buf, size, "no valid score: no complete \\boxed{} found%s",
			 r->unterminated ? " (a \\boxed{ is never closed: output cut off?)" : "");
		break;
	case SCORE_NOT_A_SCORE: {
		struct text_view t = trimmed(r->boxed.data, r->boxed.len);
		int n = t.len > 60 ? 60 : (int)t.len;
		snprintf(buf, size, "no valid score: \\boxed{%.*s%s} is not 0, 0.5 or 1", n, t.data,
			 t.len > 60 ? "..." : "");
		break;
	}
	}
	return buf;
}

/* ---- refinement input ------------------------------------------------------------------------------------ */

/* Order of evaluations: those that found problems first. */
static int evaluation_rank(double score)
{
	if (score == 0)
		return 0;
	if (score == 0.5)
		return 1;
	if (score == 1)
		return 2;
	return 3;
}

static int append_candidate_heading(struct text_buffer *out, size_t candidate)
{
	char line[96];
	int n = snprintf(line, sizeof line, "%s### Candidate solution %zu\n\n", candidate > 1 ? "\n\n" : "",
			 candidate);
	return text_buffer_append(out, line, (size_t)n);
}

static int append_evaluation_heading(struct text_buffer *out, size_t evaluation, size_t candidate)
{
	char line[96];
	int n = snprintf(line, sizeof line, "\n\n#### Evaluation %zu of candidate solution %zu\n\n", evaluation,
			 candidate);
	return text_buffer_append(out, line, (size_t)n);
}

int refinement_input(const struct refinement_candidate *candidates, size_t n, size_t max_evaluations,
		     struct text_buffer *out)
{
	if (max_evaluations > REFINEMENT_MAX_EVALUATIONS)
		max_evaluations = REFINEMENT_MAX_EVALUATIONS;
	size_t old = out->len;
	int rc = text_buffer_append(out, "", 0);
	for (size_t c = 0; c < n && !rc; c++) {
		const struct refinement_candidate *cand = &candidates[c];
		struct text_view proof = trimmed(cand->proof, strlen(cand->proof));
		if ((rc = append_candidate_heading(out, c + 1)) ||
		    (rc = text_buffer_append(out, proof.data, proof.len)))
			break;
		size_t shown = 0;
		for (int rank = 0; rank < 4 && shown < max_evaluations && !rc; rank++) {
			for (size_t e = 0; e < cand->n_evaluations && shown < max_evaluations; e++) {
				const struct refinement_evaluation *ev = &cand->evaluations[e];
				if (evaluation_rank(ev->score) != rank)
					continue;
				struct text_view t = trimmed(ev->text, strlen(ev->text));
				shown++;
				if ((rc = append_evaluation_heading(out, shown, c + 1)) ||
				    (rc = text_buffer_append(out, t.data, t.len)))
					break;
			}
		}
	}
	if (rc && out->data) {
		out->len = old;
		out->data[old] = 0;
	}
	return rc;
}
