/* Encoding: added tokens, normalizer, pre-tokenizer, BPE with a merge cache.
 *
 * Every step mirrors the Hugging Face `tokenizers` code path it stands for (named in the comments), since
 * the ids must be identical; the speed comes from working on bytes (no byte-to-character mapping), from
 * hash tables for the vocabulary and the merges, from a cache of whole pieces, and from scratch buffers
 * that live as long as the tokenizer (no allocation per piece). */
#include "tokenizer_internal.h"

#include "error.h"
#include "json_util.h"

#include <stdlib.h>

/* Pieces up to this many bytes are cached (the reference caches words shorter than 256 bytes). */
#define CACHE_MAX_PIECE 256
#define CACHE_SLOTS (1u << 16)

/* ---- small UTF-8 and Unicode helpers --------------------------------------------------------------- */

static size_t utf8_len_at(const unsigned char *s, size_t n)
{
	unsigned c = s[0];
	size_t len = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
	return len <= n ? len : n;
}

static uint32_t utf8_decode_at(const unsigned char *s, size_t n, size_t *len)
{
	*len = utf8_len_at(s, n);
	switch (*len) {
	case 1:
		return s[0];
	case 2:
		return ((s[0] & 0x1fu) << 6) | (s[1] & 0x3fu);
	case 3:
		return ((s[0] & 0x0fu) << 12) | ((s[1] & 0x3fu) << 6) | (s[2] & 0x3fu);
	default:
		return ((s[0] & 0x07u) << 18) | ((s[1] & 0x3fu) << 12) | ((s[2] & 0x3fu) << 6) | (s[3] & 0x3fu);
	}
}

/* Unicode White_Space: what the reference's char::is_whitespace and regex \s accept. */
static int is_white_space(uint32_t c)
{
	return (c >= 0x09 && c <= 0x0d) || c == 0x20 || c == 0x85 || c == 0xa0 || c == 0x1680 ||
	       (c >= 0x2000 && c <= 0x200a) || c == 0x2028 || c == 0x2029 || c == 0x202f || c == 0x205f ||
	       c == 0x3000;
}

/* Start of the character that ends at s[end] (end > 0). */
static size_t prev_char_start(const unsigned char *s, size_t end)
{
	size_t i = end - 1;
	while (i > 0 && (s[i] & 0xc0) == 0x80)
		i--;
	return i;
}

/* ---- added-token tries ----------------------------------------------------------------------------- */

static int trie_new_node(struct added_trie *t, uint8_t byte, int32_t *index)
{
	void *p = t->nodes;
	int rc = tokenizer_reserve(&p, &t->cap_nodes, t->n_nodes + 1, sizeof *t->nodes);
	t->nodes = p;
	if (rc)
		return rc;
	struct trie_node *node = &t->nodes[t->n_nodes];
	node->first_child = node->next_sibling = -1;
	node->token = -1;
	node->byte = byte;
	*index = (int32_t)t->n_nodes++;
	return 0;
}

int tokenizer_trie_insert(struct added_trie *t, const unsigned char *s, size_t len, int32_t token)
{
	int rc;
	int32_t node;
	if (t->n_nodes == 0 && (rc = trie_new_node(t, 0, &node)))
		return rc;
	node = 0;
	for (size_t i = 0; i < len; i++) {
		int32_t child = t->nodes[node].first_child;
		while (child >= 0 && t->nodes[child].byte != s[i])
			child = t->nodes[child].next_sibling;
		if (child < 0) {
			if ((rc = trie_new_node(t, s[i], &child)))
				return rc;
			t->nodes[child].next_sibling = t->nodes[node].first_child;
			t->nodes[node].first_child = child;
		}
		node = child;
	}
	/* A repeated content keeps the last token, as the reference's map does. */
	t->nodes[node].token = token;
	t->first_byte[s[0]] = 1;
	t->n_tokens++;
	return 0;
}

void tokenizer_trie_free(struct added_trie *t)
{
	free(t->nodes);
	memset(t, 0, sizeof *t);
}

/* The longest token that starts at s: its index (and *len), or -1. */
static int32_t trie_longest(const struct added_trie *t, const unsigned char *s, size_t n, size_t *len)
{
	int32_t node = 0, best = -1;
	for (size_t i = 0; i < n; i++) {
		int32_t child = t->nodes[node].first_child;
		while (child >= 0 && t->nodes[child].byte != s[i])
			child = t->nodes[child].next_sibling;
		if (child < 0)
			break;
		node = child;
		if (t->nodes[node].token >= 0) {
			best = t->nodes[node].token;
			*len = i + 1;
		}
	}
	return best;
}

/* ---- BPE --------------------------------------------------------------------------------------------- */

static int heap_less(const struct bpe_merge *a, const struct bpe_merge *b)
{
	return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct bpe_merge *h, size_t *n, struct bpe_merge m)
{
	size_t i = (*n)++;
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (!heap_less(&m, &h[parent]))
			break;
		h[i] = h[parent];
		i = parent;
	}
	h[i] = m;
}

static struct bpe_merge heap_pop(struct bpe_merge *h, size_t *n)
{
	struct bpe_merge top = h[0], last = h[--(*n)];
	size_t i = 0;
	for (;;) {
		size_t child = 2 * i + 1;
		if (child >= *n)
			break;
		if (child + 1 < *n && heap_less(&h[child + 1], &h[child]))
			child++;
		if (!heap_less(&h[child], &last))
			break;
		h[i] = h[child];
		i = child;
	}
	if (*n)
		h[i] = last;
	return top;
}

/* Queues the merge of symbol pos with its right neighbour, if there is one. */
static void queue_pair(const struct tokenizer *tok, const struct bpe_symbol *sym, int32_t pos,
		       struct bpe_merge *heap, size_t *n_heap)
{
	int32_t next = sym[pos].next;
	uint32_t rank;
	int32_t id;
	if (next >= 0 && merge_lookup(tok, sym[pos].id, sym[next].id, &rank, &id))
		heap_push(heap, n_heap, (struct bpe_merge){rank, (uint32_t)pos, id});
}

/* Merges the bytes of one piece and appends the ids. This is the reference's Word::merge_all: the
 * adjacent pair with the lowest rank merges first, the leftmost one on ties; a queued pair that no
 * longer exists is skipped. */
static int bpe_merge_piece(struct tokenizer *tok, const unsigned char *s, size_t n, struct token_ids *out)
{
	void *p = tok->symbols;
	int rc = tokenizer_reserve(&p, &tok->cap_symbols, n, sizeof *tok->symbols);
	tok->symbols = p;
	if (rc)
		return rc;
	/* Each merge queues at most two pairs: the heap never holds more than 3n entries. */
	p = tok->heap;
	rc = tokenizer_reserve(&p, &tok->cap_heap, 3 * n, sizeof *tok->heap);
	tok->heap = p;
	if (rc)
		return rc;
	struct bpe_symbol *sym = tok->symbols;
	struct bpe_merge *heap = tok->heap;
	size_t n_heap = 0;
	for (size_t i = 0; i < n; i++)
		sym[i] = (struct bpe_symbol){tok->byte_id[s[i]], (int32_t)i - 1,
					     i + 1 < n ? (int32_t)i + 1 : -1, 1};
	for (size_t i = 0; i + 1 < n; i++)
		queue_pair(tok, sym, (int32_t)i, heap, &n_heap);
	while (n_heap) {
		struct bpe_merge top = heap_pop(heap, &n_heap);
		struct bpe_symbol *left = &sym[top.pos];
		if (left->len == 0 || left->next < 0)
			continue;
		struct bpe_symbol *right = &sym[left->next];
		uint32_t rank;
		int32_t id;
		if (!merge_lookup(tok, left->id, right->id, &rank, &id) || id != top.new_id)
			continue;
		left->id = id;
		left->len += right->len;
		left->next = right->next;
		right->len = 0;
		if (left->next >= 0)
			sym[left->next].prev = (int32_t)top.pos;
		if (left->prev >= 0)
			queue_pair(tok, sym, left->prev, heap, &n_heap);
		queue_pair(tok, sym, (int32_t)top.pos, heap, &n_heap);
	}
	for (int32_t i = 0; i >= 0; i = sym[i].next)
		if ((rc = token_ids_push(out, sym[i].id)))
			return rc;
	return 0;
}

static void cache_clear(struct tokenizer *tok)
{
	memset(tok->cache, 0, (tok->cache_mask + 1) * sizeof *tok->cache);
	tok->cache_used = 0;
	tok->cache_bytes_len = 0;
	tok->cache_ids_len = 0;
}

/* Remembers the ids of a piece; a full cache starts over. Failing to cache is not an error. */
static void cache_put(struct tokenizer *tok, uint64_t hash, const unsigned char *s, size_t n,
		      const int32_t *ids, size_t n_ids)
{
	if (!tok->cache) {
		tok->cache = calloc(CACHE_SLOTS, sizeof *tok->cache);
		if (!tok->cache)
			return;
		tok->cache_mask = CACHE_SLOTS - 1;
	}
	if (tok->cache_used >= CACHE_SLOTS / 4 * 3)
		cache_clear(tok);
	void *p = tok->cache_bytes;
	if (tokenizer_reserve(&p, &tok->cache_bytes_cap, tok->cache_bytes_len + n, 1))
		return;
	tok->cache_bytes = p;
	p = tok->cache_ids;
	if (tokenizer_reserve(&p, &tok->cache_ids_cap, tok->cache_ids_len + n_ids, sizeof *tok->cache_ids))
		return;
	tok->cache_ids = p;
	size_t i = (size_t)hash & tok->cache_mask;
	while (tok->cache[i].used)
		i = (i + 1) & tok->cache_mask;
	struct merge_cache_slot *slot = &tok->cache[i];
	slot->used = 1;
	slot->hash = hash;
	slot->key_off = (uint32_t)tok->cache_bytes_len;
	slot->key_len = (uint32_t)n;
	slot->ids_off = (uint32_t)tok->cache_ids_len;
	slot->ids_len = (uint32_t)n_ids;
	memcpy(tok->cache_bytes + tok->cache_bytes_len, s, n);
	memcpy(tok->cache_ids + tok->cache_ids_len, ids, n_ids * sizeof *ids);
	tok->cache_bytes_len += n;
	tok->cache_ids_len += n_ids;
	tok->cache_used++;
}

/* One pre-token through the model (the reference's BPE::tokenize). */
static int bpe_piece(struct tokenizer *tok, const unsigned char *s, size_t n, struct token_ids *out)
{
	if (n == 1)
		return token_ids_push(out, tok->byte_id[s[0]]);
	if (tok->ignore_merges) {
		int32_t id = vocab_lookup(tok, s, n);
		if (id >= 0)
			return token_ids_push(out, id);
	}
	if (n >= CACHE_MAX_PIECE)
		return bpe_merge_piece(tok, s, n, out);
	uint64_t hash = tokenizer_hash(s, n);
	if (tok->cache) {
		size_t i = (size_t)hash & tok->cache_mask;
		for (; tok->cache[i].used; i = (i + 1) & tok->cache_mask) {
			const struct merge_cache_slot *slot = &tok->cache[i];
			if (slot->hash != hash || slot->key_len != n ||
			    memcmp(tok->cache_bytes + slot->key_off, s, n) != 0)
				continue;
			const int32_t *ids = tok->cache_ids + slot->ids_off;
			if (out->n + slot->ids_len > out->cap) {
				void *p = out->ids;
				int rc = tokenizer_reserve(&p, &out->cap, out->n + slot->ids_len, sizeof *out->ids);
				out->ids = p;
				if (rc)
					return rc;
			}
			memcpy(out->ids + out->n, ids, slot->ids_len * sizeof *ids);
			out->n += slot->ids_len;
			return 0;
		}
	}
	size_t before = out->n;
	int rc = bpe_merge_piece(tok, s, n, out);
	if (rc)
		return rc;
	cache_put(tok, hash, s, n, out->ids + before, out->n - before);
	return 0;
}

/* ---- pre-tokenizer --------------------------------------------------------------------------------- */

static int onig_failure(int r, const char *what)
{
	OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
	onig_error_code_to_str(msg, r);
	return dsm_fail(DSM_EUNSUPPORTED, "tokenizer: %s: regex search failed: %s", what, (char *)msg);
}

static int push_span(struct pretok_step *st, size_t *count, size_t start, size_t end, int flag)
{
	if (*count == st->cap_spans) {
		void *p = st->spans;
		int rc = tokenizer_reserve(&p, &st->cap_spans, *count + 1, sizeof *st->spans);
		st->spans = p;
		if (rc)
			return rc;
	}
	st->spans[(*count)++] = (struct split_span){start, end, flag};
	return 0;
}

/* The reference's Pattern::find_matches over Oniguruma's find_iter: the whole piece as a sequence of
 * (span, is_match), where an empty match right after the previous match is skipped. */
static int find_matches(struct pretok_step *st, const unsigned char *s, size_t n, size_t *count)
{
	*count = 0;
	size_t prev = 0, last_end = 0, last_match_end = 0;
	int have_last = 0, rc;
	while (last_end <= n) {
		int r = onig_search(st->regex, s, s + n, s + last_end, s + n, st->region, ONIG_OPTION_NONE);
		if (r == ONIG_MISMATCH)
			break;
		if (r < 0)
			return onig_failure(r, "pre_tokenizer");
		size_t start = (size_t)st->region->beg[0], end = (size_t)st->region->end[0];
		if (start == end && have_last && last_match_end == end) {
			last_end += last_end < n ? utf8_len_at(s + last_end, n - last_end) : 1;
			continue;
		}
		last_end = end;
		last_match_end = end;
		have_last = 1;
		if (prev != start && (rc = push_span(st, count, prev, start, 0)))
			return rc;
		if ((rc = push_span(st, count, start, end, 1)))
			return rc;
		prev = end;
	}
	if (prev != n && (rc = push_span(st, count, prev, n, 0)))
		return rc;
	return 0;
}

/* NormalizedString::split: folds (span, is_match) by the behaviour into (span, remove); returns the
 * first index of the result (MergedWithNext builds it from the back). */
static size_t fold_spans(struct split_span *sp, size_t *count, enum split_behaviour behaviour)
{
	size_t n = *count, w = 0;
	int previous_match = 0;
	switch (behaviour) {
	case SPLIT_ISOLATED:
		for (size_t i = 0; i < n; i++)
			sp[i].flag = 0;
		return 0;
	case SPLIT_REMOVED:
		return 0;
	case SPLIT_CONTIGUOUS:
	case SPLIT_MERGED_WITH_PREVIOUS:
		for (size_t i = 0; i < n; i++) {
			int is_match = sp[i].flag;
			int merge = behaviour == SPLIT_CONTIGUOUS ? is_match == previous_match
								 : is_match && !previous_match;
			if (merge && w > 0)
				sp[w - 1].end = sp[i].end;
			else
				sp[w++] = (struct split_span){sp[i].start, sp[i].end, 0};
			previous_match = is_match;
		}
		*count = w;
		return 0;
	case SPLIT_MERGED_WITH_NEXT: {
		size_t first = n; /* the result is sp[first .. n) */
		for (size_t i = n; i-- > 0;) {
			int is_match = sp[i].flag;
			if (is_match && !previous_match && first < n)
				sp[first].start = sp[i].start;
			else
				sp[--first] = (struct split_span){sp[i].start, sp[i].end, 0};
			previous_match = is_match;
		}
		return first;
	}
	}
	return 0;
}

/* Runs pre-tokenizer steps step.. over one piece, depth first, so pieces reach BPE in text order. */
static int pretokenize(struct tokenizer *tok, size_t step, const unsigned char *s, size_t n,
		       struct token_ids *out)
{
	if (n == 0)
		return 0;
	if (step == tok->n_pretok)
		return tok->piece_fn ? tok->piece_fn(tok->piece_arg, (const char *)s, n, -1)
				     : bpe_piece(tok, s, n, out);
	struct pretok_step *st = &tok->pretok[step];
	int rc;
	if (st->kind == PRETOK_BYTE_LEVEL) {
		if (st->add_prefix_space && s[0] != ' ') {
			void *p = st->prefixed;
			if ((rc = tokenizer_reserve(&p, &st->cap_prefixed, n + 1, 1)))
				return rc;
			st->prefixed = p;
			st->prefixed[0] = ' ';
			memcpy(st->prefixed + 1, s, n);
			s = (const unsigned char *)st->prefixed;
			n++;
		}
		if (!st->use_regex)
			return pretokenize(tok, step + 1, s, n, out);
	}
	size_t count;
	if ((rc = find_matches(st, s, n, &count)))
		return rc;
	if (st->invert)
		for (size_t i = 0; i < count; i++)
			st->spans[i].flag = !st->spans[i].flag;
	size_t first = fold_spans(st->spans, &count, st->behaviour);
	/* The recursion below reuses deeper steps' scratch only, so st->spans stays valid. */
	for (size_t i = first; i < count; i++) {
		struct split_span sp = st->spans[i];
		if (sp.flag || sp.end == sp.start)
			continue;
		if ((rc = pretokenize(tok, step + 1, s + sp.start, sp.end - sp.start, out)))
			return rc;
	}
	return 0;
}

/* ---- normalizer --------------------------------------------------------------------------------------- */

static int norm_append(char **buf, size_t *cap, size_t *len, const void *data, size_t n)
{
	void *p = *buf;
	int rc = tokenizer_reserve(&p, cap, *len + n + 1, 1);
	*buf = p;
	if (rc)
		return rc;
	memcpy(*buf + *len, data, n);
	*len += n;
	return 0;
}

/* One step from (s, n) into dst. */
static int normalize_step(const struct norm_step *ns, const char *s, size_t n, char **dst, size_t *cap,
			  size_t *len)
{
	*len = 0;
	int rc = 0;
	const unsigned char *u = (const unsigned char *)s;
	switch (ns->kind) {
	case NORM_PREPEND:
		if (n && (rc = norm_append(dst, cap, len, ns->text, ns->text_len)))
			return rc;
		return norm_append(dst, cap, len, s, n);
	case NORM_STRIP: {
		size_t a = 0, b = n, k;
		while (ns->strip_left && a < b && is_white_space(utf8_decode_at(u + a, b - a, &k)))
			a += k;
		while (ns->strip_right && b > a) {
			size_t start = prev_char_start(u, b);
			if (!is_white_space(utf8_decode_at(u + start, b - start, &k)))
				break;
			b = start;
		}
		return norm_append(dst, cap, len, s + a, b - a);
	}
	case NORM_REPLACE:
		break;
	}
	size_t prev = 0;
	if (ns->literal) {
		for (size_t i = 0; ns->literal_len && i + ns->literal_len <= n;) {
			if (memcmp(s + i, ns->literal, ns->literal_len) != 0) {
				i++;
				continue;
			}
			if ((rc = norm_append(dst, cap, len, s + prev, i - prev)) ||
			    (rc = norm_append(dst, cap, len, ns->text, ns->text_len)))
				return rc;
			i += ns->literal_len;
			prev = i;
		}
	} else {
		size_t last_end = 0, last_match_end = 0;
		int have_last = 0;
		while (last_end <= n) {
			int r = onig_search(ns->regex, u, u + n, u + last_end, u + n, ns->region, ONIG_OPTION_NONE);
			if (r == ONIG_MISMATCH)
				break;
			if (r < 0)
				return onig_failure(r, "normalizer");
			size_t start = (size_t)ns->region->beg[0], end = (size_t)ns->region->end[0];
			if (start == end && have_last && last_match_end == end) {
				last_end += last_end < n ? utf8_len_at(u + last_end, n - last_end) : 1;
				continue;
			}
			last_end = last_match_end = end;
			have_last = 1;
			if ((rc = norm_append(dst, cap, len, s + prev, start - prev)) ||
			    (rc = norm_append(dst, cap, len, ns->text, ns->text_len)))
				return rc;
			prev = end;
		}
	}
	return norm_append(dst, cap, len, s + prev, n - prev);
}

int tokenizer_normalize(struct tokenizer *tok, const char *s, size_t len, const char **out, size_t *out_len)
{
	const char *cur = s;
	size_t cur_len = len;
	for (size_t i = 0; i < tok->n_norm; i++) {
		/* Alternate between the two buffers. */
		char **dst = cur == tok->normalized ? &tok->normalized_tmp : &tok->normalized;
		size_t *cap = cur == tok->normalized ? &tok->cap_normalized_tmp : &tok->cap_normalized;
		size_t n;
		int rc = normalize_step(&tok->norm[i], cur, cur_len, dst, cap, &n);
		if (rc)
			return rc;
		cur = *dst;
		cur_len = n;
	}
	*out = cur;
	*out_len = cur_len;
	return 0;
}

/* ---- added tokens and the whole pipeline --------------------------------------------------------------- */

typedef int (*segment_fn)(struct tokenizer *tok, const unsigned char *s, size_t n, struct token_ids *out);

static int word_char_at(const struct tokenizer *tok, const unsigned char *s, size_t start, size_t end)
{
	OnigRegion *region = NULL;
	int r = onig_search(tok->word_char, s + start, s + end, s + start, s + end, region, ONIG_OPTION_NONE);
	return r >= 0;
}

/* AddedVocabulary::find_matches + split_with_indices: cuts the added tokens of trie out of s
 * (leftmost-longest, non-overlapping), handing the text between them to gap(). */
static int split_added(struct tokenizer *tok, const struct added_trie *trie, const unsigned char *s, size_t n,
		       segment_fn gap, struct token_ids *out)
{
	if (trie->n_tokens == 0)
		return gap(tok, s, n, out);
	size_t start_offset = 0, i = 0;
	int rc;
	while (i < n) {
		size_t mlen = 0;
		int32_t k;
		if (!trie->first_byte[s[i]] || (k = trie_longest(trie, s + i, n - i, &mlen)) < 0) {
			i++;
			continue;
		}
		size_t start = i, stop = i + mlen;
		i = stop;
		const struct added_token *t = &tok->added[k];
		if (t->single_word) {
			int start_space = start == 0 || !word_char_at(tok, s, prev_char_start(s, start), start);
			int stop_space = stop == n || !word_char_at(tok, s, stop, n);
			if (!start_space || !stop_space)
				continue;
		}
		if (t->lstrip) {
			size_t newstart = start, len;
			while (newstart > 0) {
				size_t c = prev_char_start(s, newstart);
				if (!is_white_space(utf8_decode_at(s + c, newstart - c, &len)))
					break;
				newstart = c;
			}
			start = newstart > start_offset ? newstart : start_offset;
		}
		if (t->rstrip) {
			size_t len;
			while (stop < n && is_white_space(utf8_decode_at(s + stop, n - stop, &len)))
				stop += len;
		}
		if (start_offset < start && (rc = gap(tok, s + start_offset, start - start_offset, out)))
			return rc;
		if (tok->piece_fn)
			rc = tok->piece_fn(tok->piece_arg, (const char *)s + start, stop - start, t->id);
		else
			rc = token_ids_push(out, t->id);
		if (rc)
			return rc;
		start_offset = stop;
		if (i < stop)
			i = stop;
	}
	if (start_offset < n)
		return gap(tok, s + start_offset, n - start_offset, out);
	return 0;
}

static int pretokenize_segment(struct tokenizer *tok, const unsigned char *s, size_t n, struct token_ids *out)
{
	return pretokenize(tok, 0, s, n, out);
}

/* Text between raw added tokens: normalize, then cut out the normalized added tokens. */
static int normalized_segment(struct tokenizer *tok, const unsigned char *s, size_t n, struct token_ids *out)
{
	const char *norm = (const char *)s;
	size_t norm_len = n;
	if (tok->n_norm) {
		int rc = tokenizer_normalize(tok, (const char *)s, n, &norm, &norm_len);
		if (rc)
			return rc;
	}
	return split_added(tok, &tok->normalized_trie, (const unsigned char *)norm, norm_len, pretokenize_segment,
			   out);
}

int tokenizer_encode(struct tokenizer *tok, const char *text, size_t len, unsigned flags,
		     struct token_ids *out)
{
	size_t old_n = out->n, bad;
	struct text_buffer clean = {0};
	int rc = 0;
	if (!utf8_valid(text, len, &bad)) {
		if (!(flags & TOKENIZER_REPLACE_INVALID))
			return dsm_fail(DSM_EUTF8, "invalid UTF-8 at byte %zu of %zu (byte 0x%02x)", bad, len,
					(unsigned char)text[bad]);
		if ((rc = utf8_append_lossy(&clean, (const unsigned char *)text, len)))
			return rc;
		text = clean.data;
		len = clean.len;
	}
	if (flags & TOKENIZER_ADD_SPECIAL)
		for (size_t i = 0; i < tok->n_prefix && !rc; i++)
			rc = token_ids_push(out, tok->prefix_ids[i]);
	if (!rc)
		rc = split_added(tok, &tok->raw_trie, (const unsigned char *)text, len, normalized_segment, out);
	if (flags & TOKENIZER_ADD_SPECIAL)
		for (size_t i = 0; i < tok->n_suffix && !rc; i++)
			rc = token_ids_push(out, tok->suffix_ids[i]);
	text_buffer_free(&clean);
	if (rc)
		out->n = old_n;
	return rc;
}

int tokenizer_split(struct tokenizer *tok, const char *text, size_t len, unsigned flags, tokenizer_piece_fn fn,
		    void *arg)
{
	struct token_ids unused = {0};
	tok->piece_fn = fn;
	tok->piece_arg = arg;
	int rc = tokenizer_encode(tok, text, len, flags & ~TOKENIZER_ADD_SPECIAL, &unused);
	tok->piece_fn = NULL;
	tok->piece_arg = NULL;
	token_ids_free(&unused);
	return rc;
}
