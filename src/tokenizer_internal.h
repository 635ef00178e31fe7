/* The tokenizer's tables, shared by tokenizer.c (loading), tokenizer_encode.c and tokenizer_decode.c.
 * Not part of the public API. */
#ifndef DSM_TOKENIZER_INTERNAL_H
#define DSM_TOKENIZER_INTERNAL_H

#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <oniguruma.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

/* One id. Strings live in tok->arena. */
struct token_entry {
	uint32_t string_off, string_len; /* as tokenizer.json spells it (UTF-8, NUL-terminated in the arena) */
	uint32_t bytes_off, bytes_len;   /* what it decodes to (ByteLevel decoder) */
	uint8_t present;                 /* 0 for a hole in the id space */
	uint8_t added;                   /* listed in added_tokens */
	uint8_t special;                 /* added token with "special": true */
};

struct added_token {
	int32_t id;
	uint32_t content_off, content_len; /* what is matched in the text (normalized if `normalized`) */
	bool special, normalized, lstrip, rstrip, single_word;
};

/* A byte trie of added-token contents: children as first-child / next-sibling lists. */
struct trie_node {
	int32_t first_child, next_sibling;
	int32_t token; /* index into tok->added, or -1 */
	uint8_t byte;
};

struct added_trie {
	struct trie_node *nodes;
	size_t n_nodes, cap_nodes;
	uint8_t first_byte[256]; /* 1 if some token starts with this byte */
	size_t n_tokens;
};

enum split_behaviour {
	SPLIT_REMOVED,
	SPLIT_ISOLATED,
	SPLIT_MERGED_WITH_PREVIOUS,
	SPLIT_MERGED_WITH_NEXT,
	SPLIT_CONTIGUOUS,
};

enum pretok_kind { PRETOK_SPLIT, PRETOK_BYTE_LEVEL };

/* One piece produced by a regex pass: [start, end) and whether it was a match. */
struct split_span {
	size_t start, end;
	int flag; /* is_match before folding; `remove` after */
};

struct pretok_step {
	enum pretok_kind kind;
	OnigRegex regex;              /* the Split pattern, or the GPT-2 pattern for ByteLevel use_regex */
	OnigRegion *region;
	enum split_behaviour behaviour;
	bool invert;
	bool add_prefix_space;        /* ByteLevel */
	bool use_regex;               /* ByteLevel */
	/* Scratch for encoding (one per step, since steps recurse depth-first). */
	struct split_span *spans;
	size_t cap_spans;
	char *prefixed;               /* " " + piece for add_prefix_space */
	size_t cap_prefixed;
};

enum norm_kind { NORM_PREPEND, NORM_REPLACE, NORM_STRIP };

struct norm_step {
	enum norm_kind kind;
	char *text;         /* Prepend: the prefix; Replace: the content */
	size_t text_len;
	char *literal;      /* Replace with a String pattern */
	size_t literal_len;
	OnigRegex regex;    /* Replace with a Regex pattern */
	OnigRegion *region;
	bool strip_left, strip_right;
};

/* Merge cache: piece bytes -> ids, open addressing, cleared when full. */
struct merge_cache_slot {
	uint64_t hash;
	uint32_t key_off, key_len; /* in cache_bytes */
	uint32_t ids_off, ids_len; /* in cache_ids */
	uint8_t used;
};

struct tokenizer {
	/* Every id: 0 .. n_ids-1. */
	struct token_entry *entries;
	size_t n_ids;
	char *arena;
	size_t arena_len, arena_cap;

	/* BPE vocabulary by byte string (open addressing over ids; -1 empty). */
	int32_t *vocab_slots;
	size_t vocab_mask;
	/* Byte-level vocabulary strings converted to bytes, indexed like entries (bpe_off/len into arena). */
	uint32_t *bpe_off, *bpe_len;
	int32_t byte_id[256]; /* the token of each single byte */
	size_t n_vocab;       /* entries of model.vocab */
	int32_t *unmapped;    /* vocabulary ids whose string is outside the byte-level alphabet */
	size_t n_unmapped;

	/* Merges: (left id, right id) -> rank and merged id. */
	uint64_t *merge_keys;   /* ((uint64_t)left << 32 | right) + 1; 0 empty */
	uint32_t *merge_rank, *merge_id;
	size_t merge_mask;
	bool ignore_merges;

	struct added_token *added;
	size_t n_added;
	struct added_trie raw_trie, normalized_trie;
	bool any_single_word;
	OnigRegex word_char; /* \A[\p{Alphabetic}\p{N}] for single_word, when needed */

	struct norm_step *norm;
	size_t n_norm;
	struct pretok_step *pretok;
	size_t n_pretok;

	/* Post-processing. */
	int32_t prefix_ids[4], suffix_ids[4];
	size_t n_prefix, n_suffix;
	int32_t bos_id, eos_id;

	/* tokenizer_split: pieces go to piece_fn instead of BPE. */
	tokenizer_piece_fn piece_fn;
	void *piece_arg;

	/* Encoding scratch. */
	struct merge_cache_slot *cache;
	size_t cache_mask, cache_used;
	unsigned char *cache_bytes;
	size_t cache_bytes_len, cache_bytes_cap;
	int32_t *cache_ids;
	size_t cache_ids_len, cache_ids_cap;
	char *input_copy;       /* sanitized input (TOKENIZER_REPLACE_INVALID) */
	size_t cap_input_copy;
	char *normalized, *normalized_tmp; /* normalizer output, and its second buffer */
	size_t cap_normalized, cap_normalized_tmp;
	struct bpe_symbol *symbols;
	size_t cap_symbols;
	struct bpe_merge *heap;
	size_t cap_heap;
};

struct bpe_symbol {
	int32_t id;
	int32_t prev, next;
	uint32_t len; /* bytes; 0 once merged into its left neighbour */
};

struct bpe_merge {
	uint32_t rank;
	uint32_t pos;
	int32_t new_id;
};

/* 64-bit hash of a byte string (fast for the short strings of BPE). */
static inline uint64_t tokenizer_hash(const void *data, size_t len)
{
	const unsigned char *p = data;
	uint64_t h = 0x9e3779b97f4a7c15ull ^ (len * 0xff51afd7ed558ccdull);
	while (len >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		h = (h ^ w) * 0xbf58476d1ce4e5b9ull;
		h ^= h >> 29;
		p += 8;
		len -= 8;
	}
	uint64_t w = 0;
	memcpy(&w, p, len);
	h = (h ^ w) * 0x94d049bb133111ebull;
	h ^= h >> 31;
	return h;
}

static inline uint64_t merge_hash(uint64_t key)
{
	key ^= key >> 33;
	key *= 0xff51afd7ed558ccdull;
	key ^= key >> 33;
	return key;
}

/* The BPE id of a byte string, or -1. */
static inline int32_t vocab_lookup(const struct tokenizer *tok, const void *bytes, size_t len)
{
	size_t i = (size_t)tokenizer_hash(bytes, len) & tok->vocab_mask;
	for (;;) {
		int32_t id = tok->vocab_slots[i];
		if (id < 0)
			return -1;
		if (tok->bpe_len[id] == len && memcmp(tok->arena + tok->bpe_off[id], bytes, len) == 0)
			return id;
		i = (i + 1) & tok->vocab_mask;
	}
}

/* The merge of (left, right): 1 with *rank and *id set, or 0. */
static inline int merge_lookup(const struct tokenizer *tok, int32_t left, int32_t right, uint32_t *rank,
			       int32_t *id)
{
	uint64_t key = (((uint64_t)(uint32_t)left << 32) | (uint32_t)right) + 1;
	size_t i = (size_t)merge_hash(key) & tok->merge_mask;
	for (;;) {
		uint64_t k = tok->merge_keys[i];
		if (k == 0)
			return 0;
		if (k == key) {
			*rank = tok->merge_rank[i];
			*id = (int32_t)tok->merge_id[i];
			return 1;
		}
		i = (i + 1) & tok->merge_mask;
	}
}

/* tokenizer.c: checked reads of JSON members (messages name `what`, the file). */
int tokenizer_json_id(const cJSON *item, const char *what, const char *where, int32_t *id);
int tokenizer_json_flag(const cJSON *obj, const char *key, bool dflt, bool *out, const char *what);
const char *tokenizer_json_type(const cJSON *obj);

/* tokenizer_pipeline.c: the parts of tokenizer.json around the model, and tokenizer_config.json. */
int tokenizer_compile_regex(OnigRegex *re, const char *pattern, OnigSyntaxType *syntax, const char *what,
			    const char *where);
int tokenizer_load_normalizer(struct tokenizer *tok, const cJSON *n, const char *what);
int tokenizer_load_pre_tokenizer(struct tokenizer *tok, const cJSON *p, const char *what);
int tokenizer_load_post_processor(struct tokenizer *tok, const cJSON *pp, const char *what);
int tokenizer_check_decoder(const cJSON *d, const char *what);
int tokenizer_load_config(struct tokenizer *tok, const char *json, size_t len, const char *what);

/* tokenizer_encode.c: builds the added-token tries (after loading the added tokens). */
int tokenizer_trie_insert(struct added_trie *t, const unsigned char *s, size_t len, int32_t token);
void tokenizer_trie_free(struct added_trie *t);
/* Runs the normalizer over [s, s+len) into tok->normalized; *out and *out_len describe the result. */
int tokenizer_normalize(struct tokenizer *tok, const char *s, size_t len, const char **out, size_t *out_len);
/* Grows a scratch array to hold n elements of size elem. */
int tokenizer_reserve(void **p, size_t *cap, size_t n, size_t elem);

#endif
