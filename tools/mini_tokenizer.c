/* A small but real byte-level BPE tokenizer for synthetic checkpoints.
 *
 * The files have the structure of DeepSeek-V3's: an empty normalizer Sequence, the same three Split rules
 * and ByteLevel, ByteLevel post-processor and decoder, and a tokenizer_config.json with add_bos_token.
 * Ids: 0 BOS, 1 EOS, 2..257 the 256 bytes in byte order, then the merges, learned by plain BPE training
 * (most frequent adjacent pair first, the smallest pair of ids on ties) on a built-in English and LaTeX
 * text, and right after them <think>, </think>, <｜User｜>, <｜Assistant｜>. Deterministic. */
#include "mini_tokenizer.h"

#include "error.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *const training_text[] = {
	"The quick brown fox jumps over the lazy dog. ",
	"Let $n$ be a positive integer. Prove that the sum of the first $n$ odd numbers is $n^2$. ",
	"Proof. We use induction on $n$. For $n = 1$ the statement is clear. Suppose that it holds for $n$; ",
	"then $1 + 3 + \\cdots + (2n - 1) + (2n + 1) = n^2 + 2n + 1 = (n + 1)^2$, as required. ",
	"Let $f(x) = \\frac{x^2 + 1}{x}$ for all real $x > 0$. Then $f(x) \\geq 2$ by the AM-GM inequality, ",
	"with equality if and only if $x = 1$. Therefore the minimum value of $f$ is $\\boxed{2}$. ",
	"\\begin{align} a^2 + b^2 &\\geq 2ab \\\\ \\sum_{i=1}^{n} a_i &= \\frac{n(n+1)}{2} \\end{align} ",
	"Theorem. For every prime $p$ and every integer $a$, we have $a^p \\equiv a \\pmod{p}$. ",
	"Lemma. If $p$ divides $ab$ and $p$ does not divide $a$, then $p$ divides $b$. ",
	"In the triangle $ABC$ the angle at $A$ is a right angle, so $BC^2 = AB^2 + AC^2$. ",
	"## Solution\n\nWe claim that the answer is $n = 4$. First we show that this value works. ",
	"## Self Evaluation\n\nThe solution is complete and rigorous. The score is \\boxed{1}. ",
	"Here is my evaluation of the solution: the proof of the second claim has a gap. \\boxed{0.5} ",
	"Consider the polynomial $P(x) = x^3 - 3x + 1$. Its roots are real and distinct, since the ",
	"discriminant is positive. Hence there are three real numbers $r$ with $P(r) = 0$. ",
	"Since $\\gcd(a, b) = 1$, there exist integers $u$ and $v$ with $ua + vb = 1$. ",
	"It follows that the sequence $(a_n)$ is increasing and bounded, hence convergent. ",
	"The function is continuous on the closed interval and differentiable on the open interval. ",
	"def solve(n):\n    return sum(i * i for i in range(1, n + 1))\n\n",
	"for (int i = 0; i < n; i++) { total += values[i]; }\n",
	"This is the end of the proof. Thus the theorem is proved, and the lemma follows from it. ",
	"the of and to in is that for with as on by this be are from it at an which these there ",
};

static const char *const special_strings[4] = {"<think>", "</think>", "<\xef\xbd\x9cUser\xef\xbd\x9c>",
					       "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"};
static const char bos_string[] = "<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";
static const char eos_string[] = "<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>";

/* Appends the ByteLevel spelling of bytes to out (6 bytes per input byte at most). */
static size_t byte_level(const unsigned char *bytes, size_t n, char *out)
{
	size_t k = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned c = tokenizer_byte_to_char(bytes[i]);
		if (c < 0x80) {
			out[k++] = (char)c;
		} else {
			out[k++] = (char)(0xc0 | (c >> 6));
			out[k++] = (char)(0x80 | (c & 0x3f));
		}
	}
	out[k] = 0;
	return k;
}

/* A training word: a sequence of token ids and how often it occurs. */
struct word {
	int *ids;
	size_t n;
	int count;
	unsigned char text[64];
	size_t len;
};

struct trainer {
	struct word *words;
	size_t n_words, cap_words;
	unsigned char (*token_bytes)[64]; /* the bytes of each id */
	size_t *token_len;
};

static int class_of(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
		return 1;
	if (c >= '0' && c <= '9')
		return 2;
	if (c == ' ' || c == '\n' || c == '\t')
		return 3;
	return 4;
}

static int add_word(struct trainer *t, const unsigned char *s, size_t len)
{
	if (len > sizeof t->words[0].text)
		len = sizeof t->words[0].text;
	for (size_t i = 0; i < t->n_words; i++)
		if (t->words[i].len == len && memcmp(t->words[i].text, s, len) == 0) {
			t->words[i].count++;
			return 0;
		}
	if (t->n_words == t->cap_words) {
		size_t cap = t->cap_words ? t->cap_words * 2 : 256;
		struct word *w = realloc(t->words, cap * sizeof *w);
		if (!w)
			return DSM_ENOMEM;
		t->words = w;
		t->cap_words = cap;
	}
	struct word *w = &t->words[t->n_words];
	w->ids = malloc(len * sizeof *w->ids);
	if (!w->ids)
		return DSM_ENOMEM;
	for (size_t i = 0; i < len; i++)
		w->ids[i] = 2 + s[i];
	w->n = len;
	w->count = 1;
	memcpy(w->text, s, len);
	w->len = len;
	t->n_words++;
	return 0;
}

/* Splits the training text roughly as the DeepSeek pre-tokenizer does: an optional space and letters,
 * up to three digits, an optional space and punctuation, or white space. */
static int split_training_text(struct trainer *t)
{
	for (size_t k = 0; k < sizeof training_text / sizeof training_text[0]; k++) {
		const unsigned char *s = (const unsigned char *)training_text[k];
		size_t n = strlen(training_text[k]), i = 0;
		while (i < n) {
			size_t start = i;
			int cls = class_of(s[i]);
			if (s[i] == ' ' && i + 1 < n && (class_of(s[i + 1]) == 1 || class_of(s[i + 1]) == 4))
				cls = class_of(s[++i]);
			size_t limit = cls == 2 ? 3 : 64;
			while (i < n && class_of(s[i]) == cls && i - start < limit)
				i++;
			int rc = add_word(t, s + start, i - start);
			if (rc)
				return rc;
		}
	}
	return 0;
}

static void trainer_free(struct trainer *t)
{
	for (size_t i = 0; i < t->n_words; i++)
		free(t->words[i].ids);
	free(t->words);
	free(t->token_bytes);
	free(t->token_len);
}

struct pair_count {
	int left, right, count;
};

static int pair_order(const void *a, const void *b)
{
	const struct pair_count *x = a, *y = b;
	if (x->left != y->left)
		return x->left < y->left ? -1 : 1;
	return x->right < y->right ? -1 : x->right > y->right;
}

/* Finds the most frequent adjacent pair (ties: smallest left id, then smallest right id). Returns 1, 0
 * if no pair occurs twice (within the length limit), or -1 when out of memory. */
static int best_pair(const struct trainer *t, int *left, int *right)
{
	size_t n = 0;
	for (size_t w = 0; w < t->n_words; w++)
		n += t->words[w].n;
	struct pair_count *pairs = malloc((n ? n : 1) * sizeof *pairs);
	if (!pairs)
		return -1;
	size_t k = 0;
	for (size_t w = 0; w < t->n_words; w++)
		for (size_t i = 0; i + 1 < t->words[w].n; i++)
			pairs[k++] = (struct pair_count){t->words[w].ids[i], t->words[w].ids[i + 1], t->words[w].count};
	qsort(pairs, k, sizeof *pairs, pair_order);
	int best = 1;
	*left = *right = -1;
	for (size_t i = 0; i < k;) {
		size_t j = i;
		int count = 0;
		while (j < k && pairs[j].left == pairs[i].left && pairs[j].right == pairs[i].right)
			count += pairs[j++].count;
		if (count > best && t->token_len[pairs[i].left] + t->token_len[pairs[i].right] <= 16) {
			best = count;
			*left = pairs[i].left;
			*right = pairs[i].right;
		}
		i = j;
	}
	free(pairs);
	return *left >= 0;
}

static void apply_merge(struct trainer *t, int left, int right, int merged)
{
	for (size_t w = 0; w < t->n_words; w++) {
		struct word *wd = &t->words[w];
		size_t k = 0;
		for (size_t i = 0; i < wd->n; i++) {
			if (i + 1 < wd->n && wd->ids[i] == left && wd->ids[i + 1] == right) {
				wd->ids[k++] = merged;
				i++;
			} else {
				wd->ids[k++] = wd->ids[i];
			}
		}
		wd->n = k;
	}
}

static int write_json(const char *dir, const char *name, cJSON *json)
{
	char *text = cJSON_Print(json);
	if (!text)
		return dsm_fail(DSM_ENOMEM, "mini tokenizer: out of memory");
	size_t n = strlen(dir) + strlen(name) + 2;
	char *path = malloc(n);
	int rc = 0;
	if (!path) {
		rc = dsm_fail(DSM_ENOMEM, "mini tokenizer: out of memory");
	} else {
		snprintf(path, n, "%s/%s", dir, name);
		FILE *f = fopen(path, "w");
		if (!f) {
			rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
		} else {
			size_t len = strlen(text);
			int bad = fwrite(text, 1, len, f) != len || fputc('\n', f) == EOF;
			if (fclose(f) != 0 || bad)
				rc = dsm_fail(DSM_EIO, "%s: write failed: %s", path, strerror(errno));
		}
	}
	free(path);
	free(text);
	return rc;
}

static cJSON *added_token(int id, const char *content, int special)
{
	cJSON *t = cJSON_CreateObject();
	cJSON_AddNumberToObject(t, "id", id);
	cJSON_AddStringToObject(t, "content", content);
	cJSON_AddBoolToObject(t, "single_word", 0);
	cJSON_AddBoolToObject(t, "lstrip", 0);
	cJSON_AddBoolToObject(t, "rstrip", 0);
	cJSON_AddBoolToObject(t, "normalized", !special);
	cJSON_AddBoolToObject(t, "special", special);
	return t;
}

static cJSON *split_rule(const char *regex)
{
	cJSON *s = cJSON_CreateObject();
	cJSON_AddStringToObject(s, "type", "Split");
	cJSON *pattern = cJSON_AddObjectToObject(s, "pattern");
	cJSON_AddStringToObject(pattern, "Regex", regex);
	cJSON_AddStringToObject(s, "behavior", "Isolated");
	cJSON_AddBoolToObject(s, "invert", 0);
	return s;
}

static cJSON *byte_level_object(int prefix_space, int trim, int regex)
{
	cJSON *b = cJSON_CreateObject();
	cJSON_AddStringToObject(b, "type", "ByteLevel");
	cJSON_AddBoolToObject(b, "add_prefix_space", prefix_space);
	cJSON_AddBoolToObject(b, "trim_offsets", trim);
	cJSON_AddBoolToObject(b, "use_regex", regex);
	return b;
}

/* The tokenizer.json document for the learned merges. */
static cJSON *tokenizer_document(const struct trainer *t, const int (*merges)[2], int n_merges,
				 int n_tokens)
{
	cJSON *root = cJSON_CreateObject();
	cJSON_AddStringToObject(root, "version", "1.0");
	cJSON_AddNullToObject(root, "truncation");
	cJSON_AddNullToObject(root, "padding");
	cJSON *added = cJSON_AddArrayToObject(root, "added_tokens");
	cJSON_AddItemToArray(added, added_token(0, bos_string, 1));
	cJSON_AddItemToArray(added, added_token(1, eos_string, 1));
	/* Added tokens outside the vocabulary take the ids right after it, as the reference requires. */
	for (int k = 0; k < 4; k++)
		cJSON_AddItemToArray(added, added_token(n_tokens + k, special_strings[k], 0));
	cJSON *norm = cJSON_AddObjectToObject(root, "normalizer");
	cJSON_AddStringToObject(norm, "type", "Sequence");
	cJSON_AddArrayToObject(norm, "normalizers");
	cJSON *pre = cJSON_AddObjectToObject(root, "pre_tokenizer");
	cJSON_AddStringToObject(pre, "type", "Sequence");
	cJSON *steps = cJSON_AddArrayToObject(pre, "pretokenizers");
	cJSON_AddItemToArray(steps, split_rule("\\p{N}{1,3}"));
	cJSON_AddItemToArray(steps, split_rule("[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f\xe3\x82\xa0-"
					       "\xe3\x83\xbf]+"));
	cJSON_AddItemToArray(steps, split_rule("[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|"
					       "[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|"
					       "\\s*[\r\n]+|\\s+(?!\\S)|\\s+"));
	cJSON_AddItemToArray(steps, byte_level_object(0, 1, 0));
	cJSON_AddItemToObject(root, "post_processor", byte_level_object(1, 0, 1));
	cJSON_AddItemToObject(root, "decoder", byte_level_object(1, 1, 1));
	cJSON *model = cJSON_AddObjectToObject(root, "model");
	cJSON_AddStringToObject(model, "type", "BPE");
	cJSON_AddNullToObject(model, "dropout");
	cJSON_AddNullToObject(model, "unk_token");
	cJSON_AddNullToObject(model, "continuing_subword_prefix");
	cJSON_AddNullToObject(model, "end_of_word_suffix");
	cJSON_AddBoolToObject(model, "fuse_unk", 0);
	cJSON_AddBoolToObject(model, "byte_fallback", 0);
	cJSON *vocab = cJSON_AddObjectToObject(model, "vocab");
	cJSON_AddNumberToObject(vocab, bos_string, 0);
	cJSON_AddNumberToObject(vocab, eos_string, 1);
	char spelled[160], spelled_b[160];
	for (int id = 2; id < n_tokens; id++) {
		byte_level(t->token_bytes[id], t->token_len[id], spelled);
		cJSON_AddNumberToObject(vocab, spelled, id);
	}
	cJSON *list = cJSON_AddArrayToObject(model, "merges");
	for (int m = 0; m < n_merges; m++) {
		byte_level(t->token_bytes[merges[m][0]], t->token_len[merges[m][0]], spelled);
		byte_level(t->token_bytes[merges[m][1]], t->token_len[merges[m][1]], spelled_b);
		char line[330];
		snprintf(line, sizeof line, "%s %s", spelled, spelled_b);
		cJSON_AddItemToArray(list, cJSON_CreateString(line));
	}
	return root;
}

static cJSON *config_document(void)
{
	cJSON *c = cJSON_CreateObject();
	cJSON_AddBoolToObject(c, "add_bos_token", 1);
	cJSON_AddBoolToObject(c, "add_eos_token", 0);
	cJSON_AddStringToObject(c, "bos_token", bos_string);
	cJSON_AddStringToObject(c, "eos_token", eos_string);
	cJSON_AddStringToObject(c, "pad_token", eos_string);
	cJSON_AddBoolToObject(c, "clean_up_tokenization_spaces", 0);
	cJSON_AddNumberToObject(c, "model_max_length", 131072);
	cJSON_AddStringToObject(c, "tokenizer_class", "LlamaTokenizerFast");
	return c;
}

int mini_tokenizer_write(const char *dir, int vocab_size)
{
	if (vocab_size < 512)
		return dsm_fail(DSM_EARG, "mini tokenizer: vocab_size %d is below 512", vocab_size);
	int max_merges = vocab_size - 258 - 4;
	if (max_merges > 1000)
		max_merges = 1000; /* the training text has no more worth learning */
	struct trainer t = {0};
	int (*merges)[2] = malloc((size_t)max_merges * sizeof *merges);
	t.token_bytes = malloc((size_t)(258 + max_merges) * sizeof *t.token_bytes);
	t.token_len = calloc((size_t)(258 + max_merges), sizeof *t.token_len);
	int rc = 0, n_merges = 0;
	if (!merges || !t.token_bytes || !t.token_len) {
		rc = dsm_fail(DSM_ENOMEM, "mini tokenizer: out of memory");
		goto out;
	}
	for (int b = 0; b < 256; b++) {
		t.token_bytes[2 + b][0] = (unsigned char)b;
		t.token_len[2 + b] = 1;
	}
	if ((rc = split_training_text(&t))) {
		rc = dsm_fail(rc, "mini tokenizer: out of memory");
		goto out;
	}
	int n_tokens = 258;
	while (n_merges < max_merges) {
		int left, right;
		int found = best_pair(&t, &left, &right);
		if (found < 0) {
			rc = dsm_fail(DSM_ENOMEM, "mini tokenizer: out of memory");
			goto out;
		}
		if (!found)
			break;
		/* Two merges may spell the same token: it keeps one id. */
		unsigned char joined[64];
		size_t len = t.token_len[left] + t.token_len[right];
		memcpy(joined, t.token_bytes[left], t.token_len[left]);
		memcpy(joined + t.token_len[left], t.token_bytes[right], t.token_len[right]);
		int merged = -1;
		for (int id = 2; id < n_tokens && merged < 0; id++)
			if (t.token_len[id] == len && memcmp(t.token_bytes[id], joined, len) == 0)
				merged = id;
		if (merged < 0) {
			merged = n_tokens++;
			memcpy(t.token_bytes[merged], joined, len);
			t.token_len[merged] = len;
		}
		merges[n_merges][0] = left;
		merges[n_merges][1] = right;
		apply_merge(&t, left, right, merged);
		n_merges++;
	}
	cJSON *doc = tokenizer_document(&t, (const int(*)[2])merges, n_merges, n_tokens);
	cJSON *cfg = config_document();
	if (!doc || !cfg)
		rc = dsm_fail(DSM_ENOMEM, "mini tokenizer: out of memory");
	else if (!(rc = write_json(dir, "tokenizer.json", doc)))
		rc = write_json(dir, "tokenizer_config.json", cfg);
	cJSON_Delete(doc);
	cJSON_Delete(cfg);
out:
	free(merges);
	trainer_free(&t);
	return rc;
}

void mini_tokenizer_remove(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	unlink(path);
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	unlink(path);
	rmdir(dir);
}
