/* Tokenizer unit tests that need no node: hand-checked BPE, pre-tokenizer behaviours, normalizers, added
 * tokens, rejection of unsupported files, UTF-8 handling, decoding and streaming, the mini tokenizer, and
 * the BPE merge loop against a naive reference on random merges and texts. */
#include "error.h"
#include "mini_tokenizer.h"
#include "test_util.h"
#include "tokenizer.h"

#include <cjson/cJSON.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>

/* ---- building small tokenizer.json files ---------------------------------------------------------------- */

/* GPT-2's byte-to-character map, written independently of the library. */
static void byte_spelling(unsigned char b, char out[3])
{
	unsigned c = b, n = 0;
	if (!((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174)) {
		for (unsigned k = 0; k < b; k++)
			if (!((k >= 33 && k <= 126) || (k >= 161 && k <= 172) || k >= 174))
				n++;
		c = 256 + n;
	}
	if (c < 0x80) {
		out[0] = (char)c, out[1] = 0;
	} else {
		out[0] = (char)(0xc0 | (c >> 6)), out[1] = (char)(0x80 | (c & 0x3f)), out[2] = 0;
	}
}

static void spell(const char *bytes, char *out)
{
	out[0] = 0;
	for (const unsigned char *p = (const unsigned char *)bytes; *p; p++) {
		char c[3];
		byte_spelling(*p, c);
		strcat(out, c);
	}
}

/* A tokenizer.json: the 256 byte tokens (id = byte), then one token per merge (merges given as raw byte
 * strings "left right", space separated, spelled here), then the JSON fragments given (NULL: defaults). */
struct spec {
	const char *const *merges; /* NULL-terminated, e.g. "a b" */
	const char *normalizer;
	const char *pre_tokenizer;
	const char *added_tokens;
	const char *post_processor;
	const char *decoder;
	const char *model_extra; /* extra members of "model", e.g. "\"ignore_merges\": true" */
};

static const char bytelevel_plain[] =
	"{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}";

static char *build_json(const struct spec *s)
{
	cJSON *vocab = cJSON_CreateObject();
	cJSON *merges = cJSON_CreateArray();
	char sp[1024], sp2[1024], joined[512];
	int next = 256;
	for (int b = 0; b < 256; b++) {
		char one[2] = {(char)b, 0};
		if (b == 0) {
			cJSON_AddNumberToObject(vocab, "\xc4\x80", 0); /* byte 0 spells U+0100 */
			continue;
		}
		spell(one, sp);
		cJSON_AddNumberToObject(vocab, sp, b);
	}
	for (int m = 0; s->merges && s->merges[m]; m++) {
		char left[256], right[256];
		const char *space = strchr(s->merges[m], ' ');
		snprintf(left, sizeof left, "%.*s", (int)(space - s->merges[m]), s->merges[m]);
		snprintf(right, sizeof right, "%s", space + 1);
		snprintf(joined, sizeof joined, "%s%s", left, right);
		spell(joined, sp);
		if (!cJSON_GetObjectItemCaseSensitive(vocab, sp))
			cJSON_AddNumberToObject(vocab, sp, next++);
		spell(left, sp);
		spell(right, sp2);
		char line[2100];
		snprintf(line, sizeof line, "%s %s", sp, sp2);
		cJSON_AddItemToArray(merges, cJSON_CreateString(line));
	}
	char *vocab_text = cJSON_PrintUnformatted(vocab);
	char *merges_text = cJSON_PrintUnformatted(merges);
	cJSON_Delete(vocab);
	cJSON_Delete(merges);
	size_t size = strlen(vocab_text) + strlen(merges_text) + 8192;
	char *json = malloc(size);
	snprintf(json, size,
		 "{\"version\":\"1.0\",\"added_tokens\":%s,\"normalizer\":%s,\"pre_tokenizer\":%s,"
		 "\"post_processor\":%s,\"decoder\":%s,"
		 "\"model\":{\"type\":\"BPE\"%s%s,\"vocab\":%s,\"merges\":%s}}",
		 s->added_tokens ? s->added_tokens : "[]", s->normalizer ? s->normalizer : "null",
		 s->pre_tokenizer ? s->pre_tokenizer : bytelevel_plain,
		 s->post_processor ? s->post_processor : "null",
		 s->decoder ? s->decoder : "{\"type\":\"ByteLevel\"}", s->model_extra ? "," : "",
		 s->model_extra ? s->model_extra : "", vocab_text, merges_text);
	free(vocab_text);
	free(merges_text);
	return json;
}

static struct tokenizer *load_spec(const struct spec *s, const char *config)
{
	char *json = build_json(s);
	struct tokenizer *tok = NULL;
	int rc = tokenizer_load_buffer(&tok, json, strlen(json), config, config ? strlen(config) : 0, "test");
	CHECK(rc == 0, "load failed: %s", dsm_errmsg());
	free(json);
	return tok;
}

/* Encodes and renders the result as token strings in their raw bytes, separated by '|'. */
static const char *encode_str(struct tokenizer *tok, const char *text, unsigned flags)
{
	static char buf[8192];
	struct token_ids ids = {0};
	buf[0] = 0;
	if (tokenizer_encode(tok, text, strlen(text), flags, &ids) != 0) {
		snprintf(buf, sizeof buf, "ERROR %s", dsm_errmsg());
		return buf;
	}
	for (size_t i = 0; i < ids.n; i++) {
		size_t len;
		const unsigned char *b = tokenizer_token_bytes(tok, ids.ids[i], &len);
		if (i)
			strcat(buf, "|");
		strncat(buf, (const char *)b, len);
	}
	token_ids_free(&ids);
	return buf;
}

struct piece_list {
	char text[8192];
};

static int collect_piece(void *arg, const char *piece, size_t len, int32_t added_id)
{
	struct piece_list *p = arg;
	if (p->text[0])
		strcat(p->text, "|");
	if (added_id >= 0)
		strcat(p->text, "#");
	strncat(p->text, piece, len);
	return 0;
}

static const char *pieces(struct tokenizer *tok, const char *text)
{
	static struct piece_list p;
	p.text[0] = 0;
	int rc = tokenizer_split(tok, text, strlen(text), 0, collect_piece, &p);
	CHECK(rc == 0, "split failed: %s", dsm_errmsg());
	return p.text;
}

#define CHECK_STR(got, want) do { \
	const char *g_ = (got), *w_ = (want); \
	CHECK(strcmp(g_, w_) == 0, "got \"%s\", want \"%s\"", g_, w_); \
} while (0)

/* ---- BPE by hand ----------------------------------------------------------------------------------------- */

static void test_bpe_by_hand(void)
{
	static const char *const merges[] = {"a b", "ab c", "b c", "a a", "aa a", "x y", "y z", "xy z", NULL};
	struct spec s = {.merges = merges};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (!tok)
		return;
	CHECK_STR(encode_str(tok, "abc", 0), "abc");      /* a b (rank 0), then ab c (rank 1) */
	CHECK_STR(encode_str(tok, "bcab", 0), "bc|ab");   /* a b first, then b c */
	CHECK_STR(encode_str(tok, "aaaa", 0), "aa|aa");   /* leftmost first on equal ranks */
	CHECK_STR(encode_str(tok, "aaa", 0), "aaa");      /* a a, then aa a */
	CHECK_STR(encode_str(tok, "xyz", 0), "xyz");      /* x y (rank 5) before y z (rank 6) */
	CHECK_STR(encode_str(tok, "q", 0), "q");
	CHECK_STR(encode_str(tok, "", 0), "");
	/* Every byte has a token: a NUL and bytes of invalid UTF-8 with the replacement flag. */
	struct token_ids ids = {0};
	CHECK(tokenizer_encode(tok, "a\0b", 3, 0, &ids) == 0 && ids.n == 3 && ids.ids[1] == 0, "NUL byte");
	token_ids_free(&ids);
	tokenizer_free(tok);

	/* ignore_merges: a piece that is a whole token is taken as it is. */
	static const char *const m2[] = {"b c", "a bc", "a b", NULL};
	struct spec s2 = {.merges = m2};
	tok = load_spec(&s2, NULL);
	CHECK_STR(encode_str(tok, "abc", 0), "abc");
	tokenizer_free(tok);
	static const char *const m3[] = {"a b", "b c", "a bc", NULL}; /* "abc" can only come from a+bc */
	struct spec s3 = {.merges = m3};
	tok = load_spec(&s3, NULL);
	CHECK_STR(encode_str(tok, "abc", 0), "ab|c");
	tokenizer_free(tok);
	s3.model_extra = "\"ignore_merges\":true";
	tok = load_spec(&s3, NULL);
	CHECK_STR(encode_str(tok, "abc", 0), "abc");
	tokenizer_free(tok);
}

/* ---- pre-tokenizer ---------------------------------------------------------------------------------------- */

static struct tokenizer *split_tokenizer(const char *behaviour, int invert)
{
	char pre[512];
	snprintf(pre, sizeof pre,
		 "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"String\":\"-\"},"
		 "\"behavior\":\"%s\",\"invert\":%s},%s]}", behaviour, invert ? "true" : "false", bytelevel_plain);
	struct spec s = {.pre_tokenizer = pre};
	return load_spec(&s, NULL);
}

static void test_split_behaviours(void)
{
	static const struct {
		const char *behaviour;
		int invert;
		const char *want;
	} cases[] = {
		{"Isolated", 0, "a|-|b|-|-|c"},
		{"Removed", 0, "a|b|c"},
		{"MergedWithPrevious", 0, "a-|b-|-|c"},
		{"MergedWithNext", 0, "a|-b|-|-c"},
		{"Contiguous", 0, "a|-|b|--|c"},
		{"Isolated", 1, "a|-|b|-|-|c"},
		{"Removed", 1, "-|-|-"},
		{"MergedWithPrevious", 1, "a|-b|-|-c"},
		{"MergedWithNext", 1, "a-|b-|-|c"},
		{"Contiguous", 1, "a|-|b|--|c"},
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		struct tokenizer *tok = split_tokenizer(cases[i].behaviour, cases[i].invert);
		if (!tok)
			continue;
		const char *got = pieces(tok, "a-b--c");
		CHECK(strcmp(got, cases[i].want) == 0, "%s invert=%d: got \"%s\", want \"%s\"", cases[i].behaviour,
		      cases[i].invert, got, cases[i].want);
		/* Leading and trailing delimiters. */
		if (strcmp(cases[i].behaviour, "MergedWithNext") == 0 && !cases[i].invert)
			CHECK_STR(pieces(tok, "-a-"), "-a|-");
		if (strcmp(cases[i].behaviour, "MergedWithPrevious") == 0 && !cases[i].invert)
			CHECK_STR(pieces(tok, "-a-"), "-|a-");
		tokenizer_free(tok);
	}
	/* A regex that can match the empty string: empty matches never make pieces. */
	char pre[512];
	snprintf(pre, sizeof pre,
		 "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"x*\"},"
		 "\"behavior\":\"Isolated\",\"invert\":false},%s]}", bytelevel_plain);
	struct spec s = {.pre_tokenizer = pre};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (tok) {
		CHECK_STR(pieces(tok, "axxbx"), "a|xx|b|x");
		tokenizer_free(tok);
	}
}

/* The DeepSeek-V3 rules, by hand. */
static const char deepseek_pre[] =
	"{\"type\":\"Sequence\",\"pretokenizers\":["
	"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\p{N}{1,3}\"},\"behavior\":\"Isolated\",\"invert\":false},"
	"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[\xe4\xb8\x80-\xe9\xbe\xa5\xe3\x81\x80-\xe3\x82\x9f"
	"\xe3\x82\xa0-\xe3\x83\xbf]+\"},\"behavior\":\"Isolated\",\"invert\":false},"
	"{\"type\":\"Split\",\"pattern\":{\"Regex\":\"[!\\\"#$%&'()*+,\\\\-./:;<=>?@\\\\[\\\\\\\\\\\\]^_`{|}~]"
	"[A-Za-z]+|[^\\r\\n\\\\p{L}\\\\p{P}\\\\p{S}]?[\\\\p{L}\\\\p{M}]+| ?[\\\\p{P}\\\\p{S}]+[\\r\\n]*|"
	"\\\\s*[\\r\\n]+|\\\\s+(?!\\\\S)|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false},"
	"{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":false}]}";

static void test_deepseek_rules(void)
{
	struct spec s = {.pre_tokenizer = deepseek_pre};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (!tok)
		return;
	CHECK_STR(pieces(tok, "Hello world1234567"), "Hello| world|123|456|7");
	CHECK_STR(pieces(tok, "x  \n\ny"), "x|  \n\n|y");     /* \s*[\r\n]+ takes the spaces too */
	CHECK_STR(pieces(tok, "a   b"), "a|  | b");            /* \s+(?!\S) leaves one space for " b" */
	CHECK_STR(pieces(tok, "end   "), "end|   ");
	CHECK_STR(pieces(tok, "\\frac{a}{b}"), "\\frac|{a|}{|b|}");
	CHECK_STR(pieces(tok, "f(x) = 2;"), "f|(x|)| =| |2|;");
	CHECK_STR(pieces(tok, "数学ですabc"), "数学です|abc");
	CHECK_STR(pieces(tok, "e\xcc\x81t\xc3\xa9"), "e\xcc\x81t\xc3\xa9"); /* combining mark stays */
	CHECK_STR(pieces(tok, "..\n\n x"), "..\n\n| x");
	tokenizer_free(tok);
}

/* ---- normalizers ------------------------------------------------------------------------------------------ */

static void test_normalizers(void)
{
	struct spec s = {.normalizer = "{\"type\":\"Sequence\",\"normalizers\":["
				       "{\"type\":\"Strip\",\"strip_left\":true,\"strip_right\":true},"
				       "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"_\"},"
				       "{\"type\":\"Replace\",\"pattern\":{\"Regex\":\"[0-9]+\"},\"content\":\"#\"},"
				       "{\"type\":\"Prepend\",\"prepend\":\">\"}]}"};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (!tok)
		return;
	CHECK_STR(pieces(tok, "  a b 12 c3\t"), ">a_b_#_c#");
	CHECK_STR(pieces(tok, "\xe3\x80\x80x\xc2\xa0"), ">x"); /* Unicode white space is stripped */
	CHECK_STR(pieces(tok, "   "), "");                   /* empty after Strip: Prepend adds nothing */
	tokenizer_free(tok);
	struct spec bad = {.normalizer = "{\"type\":\"NFKC\"}"};
	char *json = build_json(&bad);
	struct tokenizer *t2;
	int rc = tokenizer_load_buffer(&t2, json, strlen(json), NULL, 0, "bad");
	CHECK(rc == DSM_EUNSUPPORTED && strstr(dsm_errmsg(), "NFKC"), "NFKC: rc %d %s", rc, dsm_errmsg());
	free(json);
}

/* ---- added tokens ------------------------------------------------------------------------------------------ */

static void test_added_tokens(void)
{
	/* Ids follow the vocabulary (256 bytes + 1 merge) in file order, as the reference requires. */
	struct spec s = {
		.merges = (const char *const[]){"a b", NULL},
		.added_tokens =
			"[{\"id\":257,\"content\":\"<s>\",\"special\":true,\"normalized\":false},"
			"{\"id\":258,\"content\":\"<s>x\",\"special\":true,\"normalized\":false},"
			"{\"id\":259,\"content\":\"[L]\",\"special\":false,\"normalized\":false,\"lstrip\":true},"
			"{\"id\":260,\"content\":\"[R]\",\"special\":false,\"normalized\":false,\"rstrip\":true},"
			"{\"id\":261,\"content\":\"cd\",\"special\":false,\"normalized\":true,\"single_word\":true},"
			"{\"id\":262,\"content\":\"NN\",\"special\":false,\"normalized\":true}]",
		.normalizer = "{\"type\":\"Replace\",\"pattern\":{\"String\":\"M\"},\"content\":\"N\"}",
		.post_processor = "{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\","
				  "\"type_id\":0}},{\"Sequence\":{\"id\":\"A\",\"type_id\":0}},{\"SpecialToken\":"
				  "{\"id\":\"<s>x\",\"type_id\":0}}],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":"
				  "[257],\"tokens\":[\"<s>\"]},\"<s>x\":{\"id\":\"<s>x\",\"ids\":[258],"
				  "\"tokens\":[\"<s>x\"]}}}",
	};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (!tok)
		return;
	CHECK_STR(pieces(tok, "1<s>2<s>x3<s"), "1|#<s>|2|#<s>x|3<s");   /* longest match */
	CHECK_STR(pieces(tok, "a  [L]b"), "a|#  [L]|b");                 /* lstrip takes the spaces */
	CHECK_STR(pieces(tok, "a[R] \t b"), "a|#[R] \t |b");             /* rstrip */
	CHECK_STR(pieces(tok, "cd xcd cd. x_cd"), "#cd| xcd |#cd|. x_cd"); /* single_word */
	CHECK_STR(pieces(tok, "xMMy"), "x|#NN|y");                       /* matched after normalizing */
	CHECK_STR(pieces(tok, "xNNy"), "x|#NN|y");
	CHECK(tokenizer_bos_id(tok) == 257 && tokenizer_eos_id(tok) == 258, "template BOS/EOS %d %d",
	      tokenizer_bos_id(tok), tokenizer_eos_id(tok));
	CHECK_STR(encode_str(tok, "ab", TOKENIZER_ADD_SPECIAL), "<s>|ab|<s>x");
	CHECK(tokenizer_is_special(tok, 257) && !tokenizer_is_special(tok, 259), "special flags");
	CHECK(tokenizer_token_id(tok, "[R]") == 260, "token id of [R]");
	CHECK(tokenizer_token_id(tok, "nope") < 0, "token id of a missing token");
	/* Decoding leaves special tokens out on request. */
	int32_t ids[] = {257, 'a', 258, 259};
	struct text_buffer t = {0};
	CHECK(tokenizer_decode(tok, ids, 4, TOKENIZER_SKIP_SPECIAL, &t) == 0 && strcmp(t.data, "a[L]") == 0,
	      "skip special: %s", t.data);
	t.len = 0;
	CHECK(tokenizer_decode(tok, ids, 4, 0, &t) == 0 && strcmp(t.data, "<s>a<s>x[L]") == 0, "render: %s", t.data);
	text_buffer_free(&t);
	tokenizer_free(tok);

	/* tokenizer_config.json decides BOS/EOS when it has add_bos_token. */
	tok = load_spec(&s, "{\"add_bos_token\":false,\"add_eos_token\":true,\"eos_token\":{\"content\":\"<s>\"}}");
	if (tok) {
		CHECK_STR(encode_str(tok, "ab", TOKENIZER_ADD_SPECIAL), "ab|<s>");
		tokenizer_free(tok);
	}
}

/* ---- files that must be refused ------------------------------------------------------------------------- */

static void expect_refused(const char *json, int code, const char *words)
{
	struct tokenizer *tok = NULL;
	int rc = tokenizer_load_buffer(&tok, json, strlen(json), NULL, 0, "bad.json");
	CHECK(rc == code && tok == NULL && strstr(dsm_errmsg(), words), "want %d with \"%s\", got %d: %s", code, words,
	      rc, dsm_errmsg());
	tokenizer_free(tok);
}

static void test_refused(void)
{
	expect_refused("{", DSM_EJSON, "not valid JSON");
	expect_refused("[1]", DSM_EJSON, "not a JSON object");
	expect_refused("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}", DSM_EUNSUPPORTED, "WordPiece");
	expect_refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0},\"merges\":[]},\"pre_tokenizer\":"
		       "{\"type\":\"ByteLevel\"},\"decoder\":{\"type\":\"ByteLevel\"}}",
		       DSM_EUNSUPPORTED, "byte 0x00");
	expect_refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":-1},\"merges\":[]}}", DSM_EJSON, "id must be");
	expect_refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":1e12},\"merges\":[]}}", DSM_EJSON, "id must be");
	expect_refused("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"a\":0.5},\"merges\":[]}}", DSM_EJSON, "id must be");
	struct spec s = {0};
	char *json;
	s.pre_tokenizer = "{\"type\":\"Whitespace\"}";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "Whitespace"), free(json);
	s.pre_tokenizer = "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},\"behavior\":\"Isolated\"}";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "ByteLevel"), free(json);
	s.pre_tokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
			  "\"(\"},\"behavior\":\"Isolated\"},{\"type\":\"ByteLevel\"}]}";
	expect_refused(json = build_json(&s), DSM_EJSON, "bad regex"), free(json);
	s.pre_tokenizer = "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
			  "\"a\"},\"behavior\":\"Sideways\"},{\"type\":\"ByteLevel\"}]}";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "Sideways"), free(json);
	s.pre_tokenizer = NULL;
	s.decoder = "{\"type\":\"WordPiece\"}";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "WordPiece"), free(json);
	s.decoder = NULL;
	s.post_processor = "{\"type\":\"BertProcessing\"}";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "BertProcessing"), free(json);
	s.post_processor = NULL;
	s.added_tokens = "[{\"id\":300,\"content\":\"<x>\"}]"; /* the reference would give it 256 */
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "would give it id 256"), free(json);
	s.added_tokens = "[{\"id\":256,\"content\":\"\"}]";
	expect_refused(json = build_json(&s), DSM_EJSON, "non-empty"), free(json);
	s.added_tokens = NULL;
	s.model_extra = "\"dropout\":0.1";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "dropout"), free(json);
	s.model_extra = "\"end_of_word_suffix\":\"</w>\"";
	expect_refused(json = build_json(&s), DSM_EUNSUPPORTED, "end_of_word_suffix"), free(json);
	s.model_extra = NULL;
	/* A merge whose parts are not tokens, and one that is not two tokens. */
	char *full = build_json(&s);
	char *pos = strstr(full, "\"merges\":[]");
	if (pos) {
		static char fixed[300000];
		snprintf(fixed, sizeof fixed, "%.*s\"merges\":[\"ab cd\"]%s", (int)(pos - full), full,
			 pos + strlen("\"merges\":[]"));
		expect_refused(fixed, DSM_EJSON, "not in the vocabulary");
		snprintf(fixed, sizeof fixed, "%.*s\"merges\":[\"a b c\"]%s", (int)(pos - full), full,
			 pos + strlen("\"merges\":[]"));
		expect_refused(fixed, DSM_EJSON, "one space");
	}
	free(full);
	/* Missing files name the file. */
	struct tokenizer *tok;
	int rc = tokenizer_load(&tok, "/nonexistent/tokenizer.json", NULL);
	CHECK(rc < 0 && strstr(dsm_errmsg(), "/nonexistent/tokenizer.json"), "missing file: %s", dsm_errmsg());
}

/* ---- UTF-8 ------------------------------------------------------------------------------------------------- */

static void test_utf8(void)
{
	struct spec s = {0};
	struct tokenizer *tok = load_spec(&s, NULL);
	if (!tok)
		return;
	static const struct {
		const char *text;
		size_t offset;
		const char *replaced;
	} bad[] = {
		{"ab\xff", 2, "ab\xef\xbf\xbd"},
		{"\xc0\x80x", 0, "\xef\xbf\xbd\xef\xbf\xbdx"},                      /* overlong */
		{"a\xed\xa0\x80", 1, "a\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"},        /* surrogate */
		{"\xf0\x9f\x98", 0, "\xef\xbf\xbd"},                                   /* cut-off emoji */
		{"\xe2\x82\xac\xe2\x82", 3, "\xe2\x82\xac\xef\xbf\xbd"},             /* euro, then half a one */
		{"x\xf4\x90\x80\x80", 1, "x\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd"}, /* above U+10FFFF */
		{"\x80\x80", 0, "\xef\xbf\xbd\xef\xbf\xbd"},
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		struct token_ids ids = {0};
		int rc = tokenizer_encode(tok, bad[i].text, strlen(bad[i].text), 0, &ids);
		char want[64];
		snprintf(want, sizeof want, "at byte %zu ", bad[i].offset);
		CHECK(rc == DSM_EUTF8 && strstr(dsm_errmsg(), want) && ids.n == 0, "case %zu: rc %d, %s", i, rc,
		      dsm_errmsg());
		rc = tokenizer_encode(tok, bad[i].text, strlen(bad[i].text), TOKENIZER_REPLACE_INVALID, &ids);
		struct token_ids ref = {0};
		int rc2 = tokenizer_encode(tok, bad[i].replaced, strlen(bad[i].replaced), 0, &ref);
		CHECK(rc == 0 && rc2 == 0 && ids.n == ref.n && memcmp(ids.ids, ref.ids, ids.n * sizeof *ids.ids) == 0,
		      "case %zu: replacement differs", i);
		struct text_buffer t = {0};
		CHECK(utf8_append_lossy(&t, (const unsigned char *)bad[i].text, strlen(bad[i].text)) == 0 &&
			      strcmp(t.data, bad[i].replaced) == 0, "case %zu: lossy", i);
		text_buffer_free(&t);
		token_ids_free(&ids);
		token_ids_free(&ref);
	}
	tokenizer_free(tok);
}

/* ---- decoding and streaming ------------------------------------------------------------------------------- */

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(uint32_t n)
{
	rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state % n);
}

static void test_streaming(struct tokenizer *tok)
{
	size_t vocab = tokenizer_vocab_size(tok);
	for (int trial = 0; trial < 2000; trial++) {
		int32_t ids[40];
		size_t n = 1 + rnd(40);
		for (size_t i = 0; i < n; i++) {
			do
				ids[i] = (int32_t)rnd((uint32_t)vocab);
			while (!tokenizer_token_string(tok, ids[i], NULL));
		}
		unsigned flags = trial % 2 ? TOKENIZER_SKIP_SPECIAL : 0;
		struct text_buffer whole = {0}, streamed = {0}, chunk = {0}, raw = {0}, lossy = {0};
		CHECK(tokenizer_decode(tok, ids, n, flags, &whole) == 0, "decode: %s", dsm_errmsg());
		struct token_stream st;
		token_stream_init(&st, tok, flags);
		for (size_t i = 0; i < n; i++) {
			chunk.len = 0;
			CHECK(token_stream_push(&st, ids[i], &chunk) == 0, "push");
			/* Each chunk is whole characters. */
			struct text_buffer check = {0};
			utf8_append_lossy(&check, (const unsigned char *)chunk.data, chunk.len);
			CHECK(check.len == chunk.len && memcmp(check.data, chunk.data, chunk.len) == 0,
			      "trial %d: chunk %zu is not whole UTF-8", trial, i);
			text_buffer_free(&check);
			text_buffer_append(&streamed, chunk.data, chunk.len);
		}
		chunk.len = 0;
		CHECK(token_stream_finish(&st, &chunk) == 0, "finish");
		text_buffer_append(&streamed, chunk.data, chunk.len);
		/* An independent decode: concatenate the bytes, then one lossy conversion. */
		for (size_t i = 0; i < n; i++) {
			size_t len;
			const unsigned char *b = tokenizer_token_bytes(tok, ids[i], &len);
			if (!(flags & TOKENIZER_SKIP_SPECIAL) || !tokenizer_is_special(tok, ids[i]))
				text_buffer_append(&raw, b, len);
		}
		utf8_append_lossy(&lossy, (const unsigned char *)raw.data, raw.len);
		CHECK(whole.len == streamed.len && memcmp(whole.data, streamed.data, whole.len) == 0,
		      "trial %d: streamed text differs from decode", trial);
		CHECK(whole.len == lossy.len && memcmp(whole.data, lossy.data, whole.len) == 0,
		      "trial %d: decode differs from bytes + lossy", trial);
		text_buffer_free(&whole), text_buffer_free(&streamed), text_buffer_free(&chunk);
		text_buffer_free(&raw), text_buffer_free(&lossy);
	}
	/* Bad ids. */
	int32_t bad[] = {(int32_t)vocab, -1};
	struct text_buffer t = {0};
	CHECK(tokenizer_decode(tok, bad, 1, 0, &t) == DSM_EARG, "id past the vocabulary");
	CHECK(tokenizer_decode(tok, bad + 1, 1, 0, &t) == DSM_EARG, "negative id");
	text_buffer_free(&t);
}

/* ---- the mini tokenizer ----------------------------------------------------------------------------------- */

static void test_mini(void)
{
	char dir[] = "/tmp/dsm-test-tokenizer-XXXXXX";
	CHECK(mkdtemp(dir) != NULL, "mkdtemp");
	CHECK(mini_tokenizer_write(dir, 100) == DSM_EARG, "vocab_size below 512 is refused");
	CHECK(mini_tokenizer_write(dir, 512) == 0, "mini_tokenizer_write: %s", dsm_errmsg());
	struct tokenizer *tok;
	if (tokenizer_load_dir(&tok, dir) != 0) {
		CHECK(0, "load mini: %s", dsm_errmsg());
		return;
	}
	CHECK(tokenizer_bos_id(tok) == 0 && tokenizer_eos_id(tok) == 1, "BOS/EOS");
	CHECK(tokenizer_vocab_size(tok) <= 512, "ids below vocab_size: %zu", tokenizer_vocab_size(tok));
	static const char *const specials[] = {"<think>", "</think>", "<\xef\xbd\x9cUser\xef\xbd\x9c>",
					       "<\xef\xbd\x9c" "Assistant\xef\xbd\x9c>"};
	for (int k = 0; k < 4; k++)
		CHECK(tokenizer_token_id(tok, specials[k]) > 257, "special %s", specials[k]);
	/* Learned merges: " the" and "the" are single tokens in any English-trained BPE of this size. */
	CHECK(tokenizer_token_id(tok, "\xc4\xa0the") > 257, "merge for \" the\"");
	struct token_ids ids = {0};
	const char *text = "<think>Let $n$ be the answer.</think> The proof is \\boxed{1}.";
	CHECK(tokenizer_encode(tok, text, strlen(text), TOKENIZER_ADD_SPECIAL, &ids) == 0, "encode");
	CHECK(ids.n > 3 && ids.ids[0] == 0 && ids.ids[1] == tokenizer_token_id(tok, "<think>"), "BOS then <think>");
	CHECK(ids.n < strlen(text), "merges shorten the text: %zu ids for %zu bytes", ids.n, strlen(text));
	struct text_buffer t = {0};
	CHECK(tokenizer_decode(tok, ids.ids + 1, ids.n - 1, 0, &t) == 0 && strcmp(t.data, text) == 0,
	      "round trip: %s", t.data);
	text_buffer_free(&t);
	token_ids_free(&ids);
	/* Text in every script decodes back to itself. */
	static const char *const texts[] = {
		"数学は科学の女王である。", "수학은 과학의 여왕이다.", "الرياضيات", "👨‍👩‍👧‍👦 and 🇯🇵",
		"e\xcc\x81\xcc\x82 \t\t  \n\n\r\n x", "∀ε>0 ∃δ>0: |x−y|<δ", "12345678901234567890",
	};
	for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++) {
		ids.n = 0;
		t.len = 0;
		CHECK(tokenizer_encode(tok, texts[i], strlen(texts[i]), 0, &ids) == 0 &&
			      tokenizer_decode(tok, ids.ids, ids.n, 0, &t) == 0 && strcmp(t.data, texts[i]) == 0,
		      "round trip %zu", i);
	}
	text_buffer_free(&t);
	token_ids_free(&ids);
	test_streaming(tok);
	tokenizer_free(tok);
	mini_tokenizer_remove(dir);
}

/* ---- BPE against a naive reference ------------------------------------------------------------------------- */

/* The reference: repeatedly merge the adjacent pair of lowest rank, the leftmost one on ties. Tokens are
 * byte strings; merges[r] = {left, right}. */
static size_t naive_bpe(const char *text, size_t n, char (*merges)[2][64], int n_merges, char (*out)[256])
{
	size_t count = n;
	for (size_t i = 0; i < n; i++)
		out[i][0] = text[i], out[i][1] = 0;
	for (;;) {
		int best_rank = n_merges, best_pos = -1;
		for (size_t i = 0; i + 1 < count; i++)
			for (int r = 0; r < best_rank; r++)
				if (strcmp(out[i], merges[r][0]) == 0 && strcmp(out[i + 1], merges[r][1]) == 0) {
					best_rank = r, best_pos = (int)i;
					break;
				}
		if (best_pos < 0)
			return count;
		size_t left = strlen(out[best_pos]), right = strlen(out[best_pos + 1]);
		memcpy(&out[best_pos][left], out[best_pos + 1], right + 1);
		memmove(out + best_pos + 1, out + best_pos + 2, (count - (size_t)best_pos - 2) * sizeof *out);
		count--;
	}
}

static void test_bpe_random(void)
{
	static char merges[60][2][64];
	static char tokens[400][64];
	static const char *merge_lines[61];
	static char merge_text[60][130];
	static char pieces_out[600][256];
	for (int trial = 0; trial < 30; trial++) {
		int n_tokens = 0, n_merges = 0;
		for (const char *c = "abcd"; *c; c++)
			tokens[n_tokens][0] = *c, tokens[n_tokens++][1] = 0;
		while (n_merges < 40) {
			const char *l = tokens[rnd((uint32_t)n_tokens)], *r = tokens[rnd((uint32_t)n_tokens)];
			if (strlen(l) + strlen(r) > 12)
				continue;
			int dup = 0;
			for (int m = 0; m < n_merges; m++)
				dup |= strcmp(merges[m][0], l) == 0 && strcmp(merges[m][1], r) == 0;
			if (dup)
				continue;
			snprintf(merges[n_merges][0], 64, "%s", l);
			snprintf(merges[n_merges][1], 64, "%s", r);
			snprintf(merge_text[n_merges], sizeof merge_text[0], "%s %s", l, r);
			merge_lines[n_merges] = merge_text[n_merges];
			char joined[130];
			snprintf(joined, sizeof joined, "%s%s", l, r);
			int known = 0;
			for (int t = 0; t < n_tokens; t++)
				known |= strcmp(tokens[t], joined) == 0;
			if (!known)
				memcpy(tokens[n_tokens++], joined, strlen(joined) + 1); /* at most 12 bytes */
			n_merges++;
		}
		merge_lines[n_merges] = NULL;
		struct spec s = {.merges = merge_lines};
		struct tokenizer *tok = load_spec(&s, NULL);
		if (!tok)
			return;
		for (int k = 0; k < 40; k++) {
			char text[600];
			size_t n = 1 + rnd(k < 30 ? 20 : 590); /* long ones skip the cache */
			for (size_t i = 0; i < n; i++)
				text[i] = "abcd"[rnd(4)];
			text[n] = 0;
			size_t want = naive_bpe(text, n, merges, n_merges, pieces_out);
			char expect[8192] = "";
			for (size_t i = 0; i < want; i++) {
				if (i)
					strcat(expect, "|");
				strcat(expect, pieces_out[i]);
			}
			for (int again = 0; again < 2; again++) /* the second time comes from the cache */
				CHECK(strcmp(encode_str(tok, text, 0), expect) == 0, "trial %d text %s: got %s want %s",
				      trial, text, encode_str(tok, text, 0), expect);
		}
		tokenizer_free(tok);
	}
}

int main(int argc, char **argv)
{
	/* tests/tokenizer/cli.sh uses this to get a tokenizer without other tools. */
	if (argc == 3 && strcmp(argv[1], "--write-mini") == 0) {
		if (mini_tokenizer_write(argv[2], 512) != 0) {
			fprintf(stderr, "%s\n", dsm_errmsg());
			return 99;
		}
		return 0;
	}
	test_bpe_by_hand();
	test_split_behaviours();
	test_deepseek_rules();
	test_normalizers();
	test_added_tokens();
	test_refused();
	test_utf8();
	test_mini();
	test_bpe_random();
	return TEST_EXIT();
}
