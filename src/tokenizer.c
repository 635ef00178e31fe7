/* Loading a Hugging Face tokenizer.json (byte-level BPE) into the tables of tokenizer_internal.h. */
#include "tokenizer_internal.h"

#include "error.h"
#include "json_util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

/* Ids beyond this are refused: the id table is allocated up front. */
#define TOKENIZER_MAX_IDS (1u << 24)
#define TOKENIZER_MAX_FILE ((size_t)1 << 30)

/* ---- small buffers ------------------------------------------------------------------------------ */

int tokenizer_reserve(void **p, size_t *cap, size_t n, size_t elem)
{
	if (n <= *cap)
		return 0;
	size_t want = *cap ? *cap : 16;
	while (want < n) {
		if (want > SIZE_MAX / 2)
			return dsm_fail(DSM_ENOMEM, "tokenizer: scratch size overflow");
		want *= 2;
	}
	if (want > SIZE_MAX / elem)
		return dsm_fail(DSM_ENOMEM, "tokenizer: scratch size overflow");
	void *q = realloc(*p, want * elem);
	if (!q)
		return dsm_fail(DSM_ENOMEM, "tokenizer: out of memory for %zu bytes of scratch", want * elem);
	*p = q;
	*cap = want;
	return 0;
}

void token_ids_free(struct token_ids *v)
{
	if (!v)
		return;
	free(v->ids);
	v->ids = NULL;
	v->n = v->cap = 0;
}

int token_ids_push(struct token_ids *v, int32_t id)
{
	if (v->n == v->cap) {
		void *p = v->ids;
		int rc = tokenizer_reserve(&p, &v->cap, v->n + 1, sizeof *v->ids);
		v->ids = p;
		if (rc)
			return rc;
	}
	v->ids[v->n++] = id;
	return 0;
}

void text_buffer_free(struct text_buffer *b)
{
	if (!b)
		return;
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

int text_buffer_append(struct text_buffer *b, const void *data, size_t len)
{
	if (len > SIZE_MAX - b->len - 1)
		return dsm_fail(DSM_ENOMEM, "text buffer size overflow");
	void *p = b->data;
	int rc = tokenizer_reserve(&p, &b->cap, b->len + len + 1, 1);
	b->data = p;
	if (rc)
		return rc;
	if (len)
		memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = 0;
	return 0;
}

/* ---- the byte-level alphabet ---------------------------------------------------------------------- */

/* GPT-2's bytes_to_unicode: printable bytes stand for themselves, the other 68 map to U+0100.. in order. */
uint32_t tokenizer_byte_to_char(unsigned b)
{
	if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)
		return b;
	unsigned n = 0;
	for (unsigned k = 0; k < b; k++)
		if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174))
			n++;
	return 256 + n;
}

/* The inverse over code points 0..323: the byte, or -1. */
static int char_to_byte[324];

static void init_char_to_byte(void)
{
	static int done;
	if (done)
		return;
	for (int c = 0; c < 324; c++)
		char_to_byte[c] = -1;
	for (unsigned b = 0; b < 256; b++)
		char_to_byte[tokenizer_byte_to_char(b)] = (int)b;
	done = 1;
}

/* Decodes one UTF-8 character of valid UTF-8 at s (n bytes left); returns its length. */
static size_t utf8_next(const unsigned char *s, size_t n, uint32_t *cp)
{
	unsigned c = s[0];
	if (c < 0x80 || n < 2) {
		*cp = c;
		return 1;
	}
	if ((c & 0xe0) == 0xc0) {
		*cp = ((c & 0x1fu) << 6) | (s[1] & 0x3fu);
		return 2;
	}
	if ((c & 0xf0) == 0xe0 && n >= 3) {
		*cp = ((c & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
		return 3;
	}
	if (n >= 4) {
		*cp = ((c & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
		return 4;
	}
	*cp = c;
	return 1;
}

/* Converts a byte-level string to the bytes it stands for, into out (at least len bytes). Returns the
 * byte count, or -1 if some character is outside the alphabet. */
static long byte_level_to_bytes(const char *s, size_t len, unsigned char *out)
{
	const unsigned char *p = (const unsigned char *)s;
	size_t i = 0, n = 0;
	while (i < len) {
		uint32_t cp;
		i += utf8_next(p + i, len - i, &cp);
		if (cp >= 324 || char_to_byte[cp] < 0)
			return -1;
		out[n++] = (unsigned char)char_to_byte[cp];
	}
	return (long)n;
}

/* ---- arena and id table ----------------------------------------------------------------------------- */

/* Copies len bytes plus a NUL into the arena; returns the offset via *off. */
static int arena_add(struct tokenizer *tok, const void *data, size_t len, uint32_t *off)
{
	if (tok->arena_len + len + 1 > UINT32_MAX)
		return dsm_fail(DSM_EUNSUPPORTED, "tokenizer: strings exceed 4 GiB");
	void *p = tok->arena;
	int rc = tokenizer_reserve(&p, &tok->arena_cap, tok->arena_len + len + 1, 1);
	tok->arena = p;
	if (rc)
		return rc;
	*off = (uint32_t)tok->arena_len;
	if (len)
		memcpy(tok->arena + tok->arena_len, data, len);
	tok->arena[tok->arena_len + len] = 0;
	tok->arena_len += len + 1;
	return 0;
}

/* Reads an id member as an integer in [0, TOKENIZER_MAX_IDS). */
int tokenizer_json_id(const cJSON *item, const char *what, const char *where, int32_t *id)
{
	uint64_t v = 0;
	*id = 0;
	if (!item || json_number_to_u64(item, TOKENIZER_MAX_IDS - 1, &v) != 0)
		return dsm_fail(DSM_EJSON, "%s: %s: id must be an integer in [0, %u)", what, where,
				TOKENIZER_MAX_IDS);
	*id = (int32_t)v;
	return 0;
}

int tokenizer_json_flag(const cJSON *obj, const char *key, bool dflt, bool *out, const char *what)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!v || cJSON_IsNull(v)) {
		*out = dflt;
		return 0;
	}
	if (!cJSON_IsBool(v))
		return dsm_fail(DSM_EJSON, "%s: \"%s\" must be true or false", what, key);
	*out = cJSON_IsTrue(v);
	return 0;
}

const char *tokenizer_json_type(const cJSON *obj)
{
	const cJSON *t = cJSON_GetObjectItemCaseSensitive(obj, "type");
	return cJSON_IsString(t) ? t->valuestring : NULL;
}

/* ---- vocabulary and merges ---------------------------------------------------------------------------- */

static size_t table_size_for(size_t n)
{
	size_t size = 1024;
	while (size < n * 2 + 16)
		size *= 2;
	return size;
}

static int load_vocab(struct tokenizer *tok, const cJSON *vocab, const char *what)
{
	size_t n_vocab = 0;
	for (const cJSON *e = vocab->child; e; e = e->next) {
		int32_t id;
		if (tokenizer_json_id(e, what, "model.vocab", &id))
			return dsm_fail_prefix(DSM_EJSON, "token \"%.40s\"", e->string);
		if ((size_t)id >= tok->n_ids)
			tok->n_ids = (size_t)id + 1;
		n_vocab++;
	}
	return (int)(n_vocab > 0 ? 0 : dsm_fail(DSM_EJSON, "%s: model.vocab is empty", what));
}

static int fill_vocab(struct tokenizer *tok, const cJSON *vocab, const char *what)
{
	size_t n_vocab = 0;
	for (const cJSON *e = vocab->child; e; e = e->next)
		n_vocab++;
	tok->n_vocab = n_vocab;
	tok->vocab_mask = table_size_for(n_vocab) - 1;
	tok->vocab_slots = malloc((tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
	if (!tok->vocab_slots)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for the vocabulary", what);
	memset(tok->vocab_slots, 0xff, (tok->vocab_mask + 1) * sizeof *tok->vocab_slots);
	unsigned char *bytes = NULL;
	size_t cap_bytes = 0;
	int rc = 0;
	for (const cJSON *e = vocab->child; e; e = e->next) {
		int32_t id = (int32_t)e->valuedouble;
		struct token_entry *t = &tok->entries[id];
		if (t->present) {
			rc = dsm_fail(DSM_EDUPLICATE, "%s: model.vocab: id %d is given to \"%.40s\" and \"%.40s\"",
				      what, id, tok->arena + t->string_off, e->string);
			break;
		}
		size_t len = strlen(e->string);
		t->present = 1;
		if ((rc = arena_add(tok, e->string, len, &t->string_off)))
			break;
		t->string_len = (uint32_t)len;
		void *pb = bytes;
		if ((rc = tokenizer_reserve(&pb, &cap_bytes, len + 1, 1)))
			break;
		bytes = pb;
		long nb = byte_level_to_bytes(e->string, len, bytes);
		if (nb < 0) {
			/* Not in the byte-level alphabet: BPE never produces it; decoding emits it as it is. */
			t->bytes_off = t->string_off;
			t->bytes_len = t->string_len;
			void *pu = tok->unmapped;
			size_t cap = tok->n_unmapped;
			if ((rc = tokenizer_reserve(&pu, &cap, tok->n_unmapped + 1, sizeof *tok->unmapped)))
				break;
			tok->unmapped = pu;
			tok->unmapped[tok->n_unmapped++] = id;
			continue;
		}
		if ((rc = arena_add(tok, bytes, (size_t)nb, &tok->bpe_off[id])))
			break;
		tok->bpe_len[id] = (uint32_t)nb;
		t->bytes_off = tok->bpe_off[id];
		t->bytes_len = (uint32_t)nb;
		if (vocab_lookup(tok, bytes, (size_t)nb) >= 0) {
			rc = dsm_fail(DSM_EDUPLICATE, "%s: model.vocab: \"%.40s\" appears twice", what, e->string);
			break;
		}
		size_t i = (size_t)tokenizer_hash(bytes, (size_t)nb) & tok->vocab_mask;
		while (tok->vocab_slots[i] >= 0)
			i = (i + 1) & tok->vocab_mask;
		tok->vocab_slots[i] = id;
		if (nb == 1)
			tok->byte_id[bytes[0]] = id;
	}
	free(bytes);
	if (rc)
		return rc;
	for (int b = 0; b < 256; b++)
		if (tok->byte_id[b] < 0)
			return dsm_fail(DSM_EUNSUPPORTED,
					"%s: model.vocab has no token for byte 0x%02x: not a byte-level BPE vocabulary",
					what, b);
	return 0;
}

/* The id of a byte-level token string for a merge, -1 if outside the alphabet. */
static int merge_part(struct tokenizer *tok, const char *s, size_t len, unsigned char *buf, size_t *nbytes,
		      int32_t *id, size_t rank, const char *what)
{
	long nb = byte_level_to_bytes(s, len, buf);
	if (nb < 0) {
		*id = -1;
		return 0;
	}
	*nbytes = (size_t)nb;
	*id = vocab_lookup(tok, buf, (size_t)nb);
	if (*id < 0)
		return dsm_fail(DSM_EJSON, "%s: model.merges[%zu]: \"%.*s\" is not in the vocabulary", what, rank,
				(int)(len > 60 ? 60 : len), s);
	return 0;
}

static int load_merges(struct tokenizer *tok, const cJSON *merges, const char *what)
{
	size_t n = (size_t)cJSON_GetArraySize(merges);
	tok->merge_mask = table_size_for(n) - 1;
	size_t slots = tok->merge_mask + 1;
	tok->merge_keys = calloc(slots, sizeof *tok->merge_keys);
	tok->merge_rank = malloc(slots * sizeof *tok->merge_rank);
	tok->merge_id = malloc(slots * sizeof *tok->merge_id);
	if (!tok->merge_keys || !tok->merge_rank || !tok->merge_id)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for %zu merges", what, n);
	unsigned char *buf = NULL;
	size_t cap = 0;
	int rc = 0;
	size_t rank = 0;
	for (const cJSON *m = merges->child; m; m = m->next, rank++) {
		const char *a, *b;
		size_t la, lb;
		if (cJSON_IsString(m)) {
			/* Legacy form "left right": exactly one space. */
			const char *s = m->valuestring, *sp = strchr(s, ' ');
			if (!sp || strchr(sp + 1, ' ')) {
				rc = dsm_fail(DSM_EJSON, "%s: model.merges[%zu]: \"%.60s\" is not two tokens separated by "
					      "one space", what, rank, s);
				break;
			}
			a = s, la = (size_t)(sp - s), b = sp + 1, lb = strlen(sp + 1);
		} else if (cJSON_IsArray(m) && cJSON_GetArraySize(m) == 2 && cJSON_IsString(m->child) &&
			   cJSON_IsString(m->child->next)) {
			a = m->child->valuestring, la = strlen(a);
			b = m->child->next->valuestring, lb = strlen(b);
		} else {
			rc = dsm_fail(DSM_EJSON, "%s: model.merges[%zu]: expected \"a b\" or [\"a\", \"b\"]", what,
				      rank);
			break;
		}
		if (rank > UINT32_MAX - 1) {
			rc = dsm_fail(DSM_EUNSUPPORTED, "%s: too many merges", what);
			break;
		}
		void *p = buf;
		if ((rc = tokenizer_reserve(&p, &cap, la + lb + 1, 1)))
			break;
		buf = p;
		size_t na = 0, nb = 0;
		int32_t left, right;
		if ((rc = merge_part(tok, a, la, buf, &na, &left, rank, what)))
			break;
		if ((rc = merge_part(tok, b, lb, buf + na, &nb, &right, rank, what)))
			break;
		if (left < 0 || right < 0)
			continue; /* outside the byte-level alphabet: can never apply */
		/* merge_part wrote a's bytes then b's: buf holds the merged string. */
		int32_t merged = vocab_lookup(tok, buf, na + nb);
		if (merged < 0) {
			rc = dsm_fail(DSM_EJSON, "%s: model.merges[%zu]: the merged token \"%.40s%.40s\" is not in the "
				      "vocabulary", what, rank, a, b);
			break;
		}
		uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
		size_t i = (size_t)merge_hash(key) & tok->merge_mask;
		while (tok->merge_keys[i] != 0 && tok->merge_keys[i] != key)
			i = (i + 1) & tok->merge_mask;
		/* A repeated pair keeps its last rank, as the reference's map insertion does. */
		tok->merge_keys[i] = key;
		tok->merge_rank[i] = (uint32_t)rank;
		tok->merge_id[i] = (uint32_t)merged;
	}
	free(buf);
	return rc;
}

static int load_model(struct tokenizer *tok, const cJSON *model, const cJSON *added, const char *what)
{
	if (!cJSON_IsObject(model))
		return dsm_fail(DSM_EJSON, "%s: \"model\" is missing or not an object", what);
	const char *type = tokenizer_json_type(model);
	if (type && strcmp(type, "BPE") != 0)
		return dsm_fail(DSM_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", what, type);
	const cJSON *dropout = cJSON_GetObjectItemCaseSensitive(model, "dropout");
	if (dropout && !cJSON_IsNull(dropout) && !(cJSON_IsNumber(dropout) && dropout->valuedouble == 0))
		return dsm_fail(DSM_EUNSUPPORTED, "%s: BPE dropout is not supported", what);
	static const char *const affixes[] = {"continuing_subword_prefix", "end_of_word_suffix"};
	for (size_t k = 0; k < 2; k++) {
		const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, affixes[k]);
		if (v && !cJSON_IsNull(v) && !(cJSON_IsString(v) && v->valuestring[0] == 0))
			return dsm_fail(DSM_EUNSUPPORTED, "%s: BPE %s is not supported (not byte-level BPE)", what,
					affixes[k]);
	}
	int rc;
	if ((rc = tokenizer_json_flag(model, "ignore_merges", false, &tok->ignore_merges, what)))
		return rc;
	const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
	const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
	if (!cJSON_IsObject(vocab))
		return dsm_fail(DSM_EJSON, "%s: model.vocab is missing or not an object", what);
	if (!cJSON_IsArray(merges))
		return dsm_fail(DSM_EJSON, "%s: model.merges is missing or not an array", what);
	if ((rc = load_vocab(tok, vocab, what)))
		return rc;
	/* The id space also covers the added tokens. */
	if (added && !cJSON_IsArray(added))
		return dsm_fail(DSM_EJSON, "%s: \"added_tokens\" is not an array", what);
	for (const cJSON *a = added ? added->child : NULL; a; a = a->next) {
		int32_t id;
		if ((rc = tokenizer_json_id(cJSON_GetObjectItemCaseSensitive(a, "id"), what, "added_tokens", &id)))
			return rc;
		if ((size_t)id >= tok->n_ids)
			tok->n_ids = (size_t)id + 1;
	}
	tok->entries = calloc(tok->n_ids, sizeof *tok->entries);
	tok->bpe_off = calloc(tok->n_ids, sizeof *tok->bpe_off);
	tok->bpe_len = malloc(tok->n_ids * sizeof *tok->bpe_len);
	if (!tok->entries || !tok->bpe_off || !tok->bpe_len)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for %zu ids", what, tok->n_ids);
	memset(tok->bpe_len, 0xff, tok->n_ids * sizeof *tok->bpe_len);
	if ((rc = fill_vocab(tok, vocab, what)))
		return rc;
	return load_merges(tok, merges, what);
}

/* ---- added tokens ---------------------------------------------------------------------------------- */

/* The model.vocab id of an exact token string, or -1. */
static int32_t vocab_string_id(const struct tokenizer *tok, const char *s, size_t len)
{
	unsigned char *bytes = malloc(len + 1);
	if (!bytes)
		return -1;
	long nb = byte_level_to_bytes(s, len, bytes);
	int32_t id = nb < 0 ? -1 : vocab_lookup(tok, bytes, (size_t)nb);
	free(bytes);
	for (size_t i = 0; nb < 0 && i < tok->n_unmapped; i++) {
		const struct token_entry *e = &tok->entries[tok->unmapped[i]];
		if (e->string_len == len && memcmp(tok->arena + e->string_off, s, len) == 0)
			return tok->unmapped[i];
	}
	return id;
}

/* The id the reference library gives an added token when it loads the file: the vocabulary's id for a
 * string it has, the same id for a repeated content, otherwise the next id after the vocabulary, in
 * file order; the ids written in the file are not used. dsm uses the file's ids and refuses a file
 * where the two differ, rather than silently disagree with either. */
static int32_t reference_added_id(const struct tokenizer *tok, const char *s, size_t len, int32_t *next_id)
{
	for (size_t i = 0; i < tok->n_added; i++) {
		const struct token_entry *e = &tok->entries[tok->added[i].id];
		if (e->string_len == len && memcmp(tok->arena + e->string_off, s, len) == 0)
			return tok->added[i].id;
	}
	int32_t id = vocab_string_id(tok, s, len);
	return id >= 0 ? id : (*next_id)++;
}

static int load_added(struct tokenizer *tok, const cJSON *added, const char *what)
{
	if (!added)
		return 0;
	size_t n = (size_t)cJSON_GetArraySize(added);
	tok->added = calloc(n ? n : 1, sizeof *tok->added);
	if (!tok->added)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for added tokens", what);
	int rc;
	int32_t next_id = (int32_t)tok->n_vocab;
	for (const cJSON *a = added->child; a; a = a->next) {
		struct added_token *t = &tok->added[tok->n_added];
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(a, "content");
		if (!cJSON_IsString(content) || content->valuestring[0] == 0)
			return dsm_fail(DSM_EJSON, "%s: added_tokens[%zu]: \"content\" must be a non-empty string", what,
					tok->n_added);
		if ((rc = tokenizer_json_id(cJSON_GetObjectItemCaseSensitive(a, "id"), what, "added_tokens", &t->id)))
			return rc;
		if ((rc = tokenizer_json_flag(a, "special", false, &t->special, what)) ||
		    (rc = tokenizer_json_flag(a, "normalized", !t->special, &t->normalized, what)) ||
		    (rc = tokenizer_json_flag(a, "lstrip", false, &t->lstrip, what)) ||
		    (rc = tokenizer_json_flag(a, "rstrip", false, &t->rstrip, what)) ||
		    (rc = tokenizer_json_flag(a, "single_word", false, &t->single_word, what)))
			return dsm_fail_prefix(rc, "added_tokens[%zu]", tok->n_added);
		size_t len = strlen(content->valuestring);
		int32_t expected = reference_added_id(tok, content->valuestring, len, &next_id);
		if (expected != t->id)
			return dsm_fail(DSM_EUNSUPPORTED, "%s: added token \"%.40s\" has id %d, but the reference library "
					"would give it id %d (added tokens that are not in the vocabulary must follow it "
					"in order)", what, content->valuestring, (int)t->id, (int)expected);
		struct token_entry *e = &tok->entries[t->id];
		/* The added token's own string is what the id decodes from, as the reference looks added
		 * tokens up first. */
		if ((rc = arena_add(tok, content->valuestring, len, &e->string_off)))
			return rc;
		e->string_len = (uint32_t)len;
		e->present = 1;
		e->added = 1;
		e->special = t->special;
		unsigned char *bytes = malloc(len + 1);
		if (!bytes)
			return dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
		long nb = byte_level_to_bytes(content->valuestring, len, bytes);
		if (nb < 0) {
			e->bytes_off = e->string_off, e->bytes_len = e->string_len;
		} else {
			rc = arena_add(tok, bytes, (size_t)nb, &e->bytes_off);
			e->bytes_len = (uint32_t)nb;
		}
		free(bytes);
		if (rc)
			return rc;
		t->content_off = e->string_off;
		t->content_len = e->string_len;
		if (t->single_word)
			tok->any_single_word = true;
		tok->n_added++;
	}
	return 0;
}

/* Inserts each added token into the trie it is matched with (after the normalizer is loaded, since
 * tokens with "normalized": true are matched in their normalized form). */
static int build_tries(struct tokenizer *tok, const char *what)
{
	int rc;
	for (size_t i = 0; i < tok->n_added; i++) {
		struct added_token *t = &tok->added[i];
		const char *s = tok->arena + t->content_off;
		size_t len = t->content_len;
		if (t->normalized && tok->n_norm) {
			const char *norm;
			size_t norm_len;
			if ((rc = tokenizer_normalize(tok, s, len, &norm, &norm_len)))
				return dsm_fail_prefix(rc, "%s: normalizing added token \"%.40s\"", what, s);
			if ((rc = arena_add(tok, norm, norm_len, &t->content_off)))
				return rc;
			t->content_len = (uint32_t)norm_len;
			s = tok->arena + t->content_off;
			len = norm_len;
		}
		if (len == 0)
			continue;
		struct added_trie *trie = t->normalized ? &tok->normalized_trie : &tok->raw_trie;
		if ((rc = tokenizer_trie_insert(trie, (const unsigned char *)s, len, (int32_t)i)))
			return rc;
	}
	if (tok->any_single_word) {
		/* The reference's \w (Unicode word characters) for single_word tokens. */
		static const char pat[] = "\\A[\\p{Alphabetic}\\p{M}\\p{Nd}\\p{Pc}\\p{Join_Control}]";
		if ((rc = tokenizer_compile_regex(&tok->word_char, pat, ONIG_SYNTAX_DEFAULT, what, "single_word")))
			return rc;
	}
	return 0;
}
/* ---- entry points ----------------------------------------------------------------------------------- */

static int load_tokenizer_json(struct tokenizer *tok, const char *json, size_t len, const char *what)
{
	cJSON *root = json_parse(json, len, what);
	if (!root)
		return DSM_EJSON;
	int rc;
	if (!cJSON_IsObject(root)) {
		rc = dsm_fail(DSM_EJSON, "%s: not a JSON object", what);
		goto out;
	}
	const cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	if (cJSON_IsNull(added))
		added = NULL;
	if ((rc = load_model(tok, cJSON_GetObjectItemCaseSensitive(root, "model"), added, what)) ||
	    (rc = load_added(tok, added, what)))
		goto out;
	const cJSON *norm = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
	if (norm && !cJSON_IsNull(norm) && (rc = tokenizer_load_normalizer(tok, norm, what)))
		goto out;
	const cJSON *pre = cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer");
	if (pre && !cJSON_IsNull(pre) && (rc = tokenizer_load_pre_tokenizer(tok, pre, what)))
		goto out;
	if (tok->n_pretok == 0 || tok->pretok[tok->n_pretok - 1].kind != PRETOK_BYTE_LEVEL) {
		rc = dsm_fail(DSM_EUNSUPPORTED, "%s: the pre_tokenizer does not end with ByteLevel: only "
			      "byte-level BPE is supported", what);
		goto out;
	}
	if ((rc = build_tries(tok, what)) ||
	    (rc = tokenizer_load_post_processor(tok, cJSON_GetObjectItemCaseSensitive(root, "post_processor"), what)) ||
	    (rc = tokenizer_check_decoder(cJSON_GetObjectItemCaseSensitive(root, "decoder"), what)))
		goto out;
	if (tok->n_prefix && tok->bos_id < 0)
		tok->bos_id = tok->prefix_ids[0];
	if (tok->n_suffix && tok->eos_id < 0)
		tok->eos_id = tok->suffix_ids[tok->n_suffix - 1];
out:
	cJSON_Delete(root);
	return rc;
}

int tokenizer_load_buffer(struct tokenizer **out, const char *json, size_t json_len, const char *config_json,
			  size_t config_len, const char *what)
{
	*out = NULL;
	init_char_to_byte();
	struct tokenizer *tok = calloc(1, sizeof *tok);
	if (!tok)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
	tok->bos_id = tok->eos_id = -1;
	for (int b = 0; b < 256; b++)
		tok->byte_id[b] = -1;
	int rc = load_tokenizer_json(tok, json, json_len, what);
	if (!rc && config_json)
		rc = tokenizer_load_config(tok, config_json, config_len, what);
	if (rc) {
		tokenizer_free(tok);
		return rc;
	}
	*out = tok;
	return 0;
}

int tokenizer_load(struct tokenizer **out, const char *tokenizer_json_path, const char *config_path)
{
	*out = NULL;
	char *json = NULL, *cfg = NULL;
	size_t json_len = 0, cfg_len = 0;
	int rc = read_file(tokenizer_json_path, TOKENIZER_MAX_FILE, &json, &json_len);
	if (!rc && config_path)
		rc = read_file(config_path, TOKENIZER_MAX_FILE, &cfg, &cfg_len);
	if (!rc) {
		struct tokenizer *tok;
		rc = tokenizer_load_buffer(&tok, json, json_len, NULL, 0, tokenizer_json_path);
		if (!rc && cfg) {
			rc = tokenizer_load_config(tok, cfg, cfg_len, config_path);
			if (rc)
				tokenizer_free(tok);
		}
		if (!rc)
			*out = tok;
	}
	free(json);
	free(cfg);
	return rc;
}

int tokenizer_load_dir(struct tokenizer **out, const char *dir)
{
	size_t n = strlen(dir) + 32;
	char *json = malloc(n), *cfg = malloc(n);
	int rc;
	if (!json || !cfg) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
	} else {
		snprintf(json, n, "%s/tokenizer.json", dir);
		snprintf(cfg, n, "%s/tokenizer_config.json", dir);
		struct stat st;
		rc = tokenizer_load(out, json, stat(cfg, &st) == 0 ? cfg : NULL);
	}
	free(json);
	free(cfg);
	return rc;
}

void tokenizer_free(struct tokenizer *tok)
{
	if (!tok)
		return;
	free(tok->entries);
	free(tok->arena);
	free(tok->vocab_slots);
	free(tok->bpe_off);
	free(tok->bpe_len);
	free(tok->unmapped);
	free(tok->merge_keys);
	free(tok->merge_rank);
	free(tok->merge_id);
	free(tok->added);
	tokenizer_trie_free(&tok->raw_trie);
	tokenizer_trie_free(&tok->normalized_trie);
	if (tok->word_char)
		onig_free(tok->word_char);
	for (size_t i = 0; i < tok->n_norm; i++) {
		free(tok->norm[i].text);
		free(tok->norm[i].literal);
		if (tok->norm[i].regex)
			onig_free(tok->norm[i].regex);
		if (tok->norm[i].region)
			onig_region_free(tok->norm[i].region, 1);
	}
	free(tok->norm);
	for (size_t i = 0; i < tok->n_pretok; i++) {
		if (tok->pretok[i].regex)
			onig_free(tok->pretok[i].regex);
		if (tok->pretok[i].region)
			onig_region_free(tok->pretok[i].region, 1);
		free(tok->pretok[i].spans);
		free(tok->pretok[i].prefixed);
	}
	free(tok->pretok);
	free(tok->cache);
	free(tok->cache_bytes);
	free(tok->cache_ids);
	free(tok->input_copy);
	free(tok->normalized);
	free(tok->normalized_tmp);
	free(tok->symbols);
	free(tok->heap);
	free(tok);
}

/* ---- lookups ------------------------------------------------------------------------------------------ */

size_t tokenizer_vocab_size(const struct tokenizer *tok)
{
	return tok->n_ids;
}

int32_t tokenizer_bos_id(const struct tokenizer *tok)
{
	return tok->bos_id;
}

int32_t tokenizer_eos_id(const struct tokenizer *tok)
{
	return tok->eos_id;
}

int32_t tokenizer_token_id(const struct tokenizer *tok, const char *token)
{
	size_t len = strlen(token);
	for (size_t i = 0; i < tok->n_added; i++) {
		const struct token_entry *e = &tok->entries[tok->added[i].id];
		if (e->string_len == len && memcmp(tok->arena + e->string_off, token, len) == 0)
			return tok->added[i].id;
	}
	unsigned char *bytes = malloc(len + 1);
	if (!bytes)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	long nb = byte_level_to_bytes(token, len, bytes);
	int32_t id = nb < 0 ? -1 : vocab_lookup(tok, bytes, (size_t)nb);
	free(bytes);
	if (id < 0) {
		/* Strings outside the byte-level alphabet are not in the hash table: scan for them. */
		for (size_t i = 0; i < tok->n_ids; i++) {
			const struct token_entry *e = &tok->entries[i];
			if (e->present && e->string_len == len && memcmp(tok->arena + e->string_off, token, len) == 0)
				return (int32_t)i;
		}
		return dsm_fail(DSM_EMISSING, "no token \"%.60s\" in the vocabulary", token);
	}
	return id;
}

const char *tokenizer_token_string(const struct tokenizer *tok, int32_t id, size_t *len)
{
	if (id < 0 || (size_t)id >= tok->n_ids || !tok->entries[id].present)
		return NULL;
	if (len)
		*len = tok->entries[id].string_len;
	return tok->arena + tok->entries[id].string_off;
}

const unsigned char *tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, size_t *len)
{
	if (id < 0 || (size_t)id >= tok->n_ids || !tok->entries[id].present)
		return NULL;
	*len = tok->entries[id].bytes_len;
	return (const unsigned char *)tok->arena + tok->entries[id].bytes_off;
}

int tokenizer_is_special(const struct tokenizer *tok, int32_t id)
{
	return id >= 0 && (size_t)id < tok->n_ids && tok->entries[id].special;
}
