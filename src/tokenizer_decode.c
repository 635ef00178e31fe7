/* Decoding: token bytes (ByteLevel decoder), lossy UTF-8, and the streaming decoder. */
#include "tokenizer_internal.h"

#include "error.h"

#include <stdlib.h>

static const unsigned char replacement[3] = {0xef, 0xbf, 0xbd}; /* U+FFFD */

/* The length of the valid UTF-8 character starting at s (1..4), 0 if s[0..n) is an invalid sequence
 * (then *bad is how many bytes form the maximal invalid subpart), or -1 if s[0..n) is a valid but
 * incomplete prefix of a character. */
static int utf8_sequence(const unsigned char *s, size_t n, size_t *bad)
{
	unsigned c = s[0];
	if (c < 0x80)
		return 1;
	size_t len;
	unsigned lo = 0x80, hi = 0xbf; /* range of the second byte */
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		*bad = 1;
		return 0;
	}
	for (size_t k = 1; k < len; k++) {
		if (k >= n)
			return -1;
		unsigned b = s[k];
		if (k == 1 ? (b < lo || b > hi) : (b < 0x80 || b > 0xbf)) {
			*bad = k;
			return 0;
		}
	}
	return (int)len;
}

/* Appends s[0..n) with invalid subparts replaced; when !final, a valid incomplete character at the end is
 * left unconsumed. Returns the number of bytes consumed, or a negative error. */
static long lossy_chunk(struct text_buffer *out, const unsigned char *s, size_t n, int final)
{
	size_t i = 0, run = 0; /* s[run..i) is valid and not yet appended */
	int rc;
	while (i < n) {
		if (s[i] < 0x80) {
			i++;
			continue;
		}
		size_t bad = 0;
		int len = utf8_sequence(s + i, n - i, &bad);
		if (len > 0) {
			i += (size_t)len;
			continue;
		}
		if (len < 0 && !final)
			break;
		if (len < 0)
			bad = n - i;
		if ((rc = text_buffer_append(out, s + run, i - run)) ||
		    (rc = text_buffer_append(out, replacement, sizeof replacement)))
			return rc;
		i += bad;
		run = i;
	}
	if ((rc = text_buffer_append(out, s + run, i - run)))
		return rc;
	return (long)i;
}

int utf8_append_lossy(struct text_buffer *out, const unsigned char *s, size_t len)
{
	long r = lossy_chunk(out, s, len, 1);
	return r < 0 ? (int)r : 0;
}

void token_stream_init(struct token_stream *s, const struct tokenizer *tok, unsigned flags)
{
	s->tok = tok;
	s->flags = flags;
	s->n_pending = 0;
}

int token_stream_push(struct token_stream *s, int32_t id, struct text_buffer *out)
{
	const struct tokenizer *tok = s->tok;
	size_t len;
	const unsigned char *bytes = tokenizer_token_bytes(tok, id, &len);
	if (!bytes)
		return dsm_fail(DSM_EARG, "token id %ld is not in the vocabulary (%zu ids)", (long)id, tok->n_ids);
	/* Make sure the buffer exists even when nothing is appended, so callers can print out->data. */
	int rc = text_buffer_append(out, "", 0);
	if (rc)
		return rc;
	if ((s->flags & TOKENIZER_SKIP_SPECIAL) && tok->entries[id].special)
		return 0;
	unsigned char small[256];
	unsigned char *joined = small;
	size_t n = s->n_pending + len;
	if (s->n_pending) {
		if (n > sizeof small && !(joined = malloc(n)))
			return dsm_fail(DSM_ENOMEM, "out of memory decoding a token");
		memcpy(joined, s->pending, s->n_pending);
		memcpy(joined + s->n_pending, bytes, len);
		bytes = joined;
	}
	long used = lossy_chunk(out, bytes, n, 0);
	if (used >= 0) {
		/* What is left is a valid incomplete character: at most 3 bytes. */
		s->n_pending = n - (size_t)used;
		memmove(s->pending, bytes + used, s->n_pending);
	}
	if (joined != small)
		free(joined);
	return used < 0 ? (int)used : 0;
}

int token_stream_finish(struct token_stream *s, struct text_buffer *out)
{
	int rc = text_buffer_append(out, "", 0);
	if (!rc && s->n_pending)
		rc = utf8_append_lossy(out, s->pending, s->n_pending);
	s->n_pending = 0;
	return rc;
}

int tokenizer_decode(const struct tokenizer *tok, const int32_t *ids, size_t n, unsigned flags,
		     struct text_buffer *out)
{
	struct token_stream s;
	token_stream_init(&s, tok, flags);
	size_t old_len = out->len;
	int rc = 0;
	for (size_t i = 0; i < n && !rc; i++)
		rc = token_stream_push(&s, ids[i], out);
	if (!rc)
		rc = token_stream_finish(&s, out);
	if (rc && out->data) {
		out->len = old_len;
		out->data[old_len] = 0;
	}
	return rc;
}
