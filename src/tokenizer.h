/* Byte-level BPE tokenizer reading Hugging Face tokenizer.json files (the DeepSeek-V3 kind).
 *
 * Encoding follows the Hugging Face `tokenizers` pipeline step by step, so that ids are identical:
 *   1. added tokens are cut out of the text first (leftmost, then longest match; tokens with
 *      "normalized": false against the raw text, the others against the normalized text);
 *   2. the normalizer runs on the text between them (none, or a Sequence of Prepend/Replace/Strip);
 *   3. the pre-tokenizer Sequence splits it (Split rules evaluated with Oniguruma, as the reference
 *      does; then ByteLevel);
 *   4. each piece goes through BPE (lowest merge rank first, leftmost on ties), with a cache;
 *   5. BOS/EOS are added as tokenizer_config.json (add_bos_token/add_eos_token) or, without those keys,
 *      the TemplateProcessing post-processor says.
 * Unsupported components are rejected at load time with a message naming them. See docs/tokenizer.md.
 *
 * Thread safety: loading and decoding are pure; encoding uses scratch space and a merge cache inside the
 * tokenizer, so one tokenizer encodes on one thread at a time. */
#ifndef DSM_TOKENIZER_H
#define DSM_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* A growable array of token ids, owned by the caller; zero-initialise, release with token_ids_free. */
struct token_ids {
	int32_t *ids;
	size_t n, cap;
};
void token_ids_free(struct token_ids *v);
/* Appends one id. 0 or DSM_ENOMEM. */
int token_ids_push(struct token_ids *v, int32_t id);

/* A growable byte buffer, always NUL-terminated after a successful append; zero-initialise, release with
 * text_buffer_free. */
struct text_buffer {
	char *data;
	size_t len, cap;
};
void text_buffer_free(struct text_buffer *b);
int text_buffer_append(struct text_buffer *b, const void *data, size_t len);

/* Loads tokenizer_json_path and, when config_path is not NULL, tokenizer_config.json (BOS/EOS policy).
 * On success *out owns everything; free with tokenizer_free. Returns 0 or a negative DSM_E* code with a
 * message naming the file and the offending key. */
int tokenizer_load(struct tokenizer **out, const char *tokenizer_json_path, const char *config_path);
/* Loads DIR/tokenizer.json and DIR/tokenizer_config.json (the latter only if it exists). */
int tokenizer_load_dir(struct tokenizer **out, const char *dir);
/* Same from memory (config_json may be NULL); `what` names the source in messages. */
int tokenizer_load_buffer(struct tokenizer **out, const char *json, size_t json_len,
			  const char *config_json, size_t config_len, const char *what);
/* Accepts NULL. */
void tokenizer_free(struct tokenizer *tok);

enum tokenizer_flags {
	TOKENIZER_ADD_SPECIAL = 1u << 0,     /* encode: add BOS/EOS as the post-processing policy says */
	TOKENIZER_REPLACE_INVALID = 1u << 1, /* encode: replace invalid UTF-8 (each maximal invalid
						subsequence becomes one U+FFFD) instead of failing */
	TOKENIZER_SKIP_SPECIAL = 1u << 2,    /* decode: leave out tokens marked "special" */
};

/* Encodes len bytes of UTF-8 text and APPENDS the ids to out. Invalid UTF-8 fails with DSM_EUTF8 and a
 * message giving the byte offset, unless TOKENIZER_REPLACE_INVALID. On failure out keeps its old length. */
int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, unsigned flags,
		     struct token_ids *out);

/* The pre-tokenization of text, for inspection and tests: fn is called in text order with each piece that
 * would go through BPE (its bytes, added_id -1) and each added token cut out of the text (its text and
 * id). Stops at the first non-zero return of fn and returns it; otherwise as tokenizer_encode. */
typedef int (*tokenizer_piece_fn)(void *arg, const char *piece, size_t len, int32_t added_id);
int tokenizer_split(struct tokenizer *tok, const char *text, size_t len, unsigned flags, tokenizer_piece_fn fn,
		    void *arg);

/* Decodes ids and APPENDS the text to out (bytes of invalid UTF-8 formed by the tokens become U+FFFD,
 * as the reference's lossy conversion does). An id outside the vocabulary fails with DSM_EARG. */
int tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
		     struct text_buffer *out);

/* Incremental decoding for generated text: token_stream_push appends to out exactly the text that has
 * become complete; it never emits part of a UTF-8 character and keeps incomplete bytes for the next token.
 * token_stream_finish flushes what is left (an incomplete tail becomes U+FFFD). The concatenation of all
 * output equals tokenizer_decode of the same ids with the same flags. */
struct token_stream {
	const struct tokenizer *tok;
	unsigned flags;
	unsigned char pending[4];
	size_t n_pending;
};
void token_stream_init(struct token_stream *s, const struct tokenizer *tok, unsigned flags);
int token_stream_push(struct token_stream *s, int32_t id, struct text_buffer *out);
int token_stream_finish(struct token_stream *s, struct text_buffer *out);

/* Number of ids (largest id + 1); ids without a token in between are holes. */
size_t tokenizer_vocab_size(const struct tokenizer *tok);
/* BOS/EOS ids from tokenizer_config.json (or the post-processor), -1 when unknown. */
int32_t tokenizer_bos_id(const struct tokenizer *tok);
int32_t tokenizer_eos_id(const struct tokenizer *tok);
/* The id of a token given by its exact string (added tokens first, then the BPE vocabulary, whose
 * strings are in the byte-level alphabet, e.g. "Ġthe"). DSM_EMISSING with a message when there is none. */
int32_t tokenizer_token_id(const struct tokenizer *tok, const char *token);
/* The string of token id as tokenizer.json spells it (NUL-terminated; *len may be NULL), or NULL for a
 * hole or an id out of range. */
const char *tokenizer_token_string(const struct tokenizer *tok, int32_t id, size_t *len);
/* The bytes id decodes to (not NUL-terminated), or NULL. */
const unsigned char *tokenizer_token_bytes(const struct tokenizer *tok, int32_t id, size_t *len);
/* 1 if id is an added token marked special, 0 otherwise. */
int tokenizer_is_special(const struct tokenizer *tok, int32_t id);

/* Appends s to out with each maximal invalid subsequence replaced by U+FFFD (the policy of the
 * reference's lossy conversion and of the Unicode standard's "maximal subpart" practice). */
int utf8_append_lossy(struct text_buffer *out, const unsigned char *s, size_t len);

/* GPT-2's bytes_to_unicode, the ByteLevel alphabet: the code point that stands for byte b. */
uint32_t tokenizer_byte_to_char(unsigned b);

#endif
