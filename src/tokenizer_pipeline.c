/* Loading the normalizer, pre-tokenizer, post-processor and decoder of a tokenizer.json, and
 * tokenizer_config.json. */
#include "tokenizer_internal.h"

#include "error.h"
#include "json_util.h"

#include <stdlib.h>

/* The GPT-2 pre-tokenizer pattern used by ByteLevel when use_regex is true. */
static const char gpt2_pattern[] =
	"'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/* Compiles with the reference's settings: default (Oniguruma) syntax, UTF-8, no options. A String
 * pattern compiles with the ASIS syntax, where every character is literal. */
int tokenizer_compile_regex(OnigRegex *re, const char *pattern, OnigSyntaxType *syntax, const char *what,
			    const char *where)
{
	OnigErrorInfo info;
	int r = onig_new(re, (const OnigUChar *)pattern, (const OnigUChar *)pattern + strlen(pattern),
			 ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, syntax, &info);
	if (r != ONIG_NORMAL) {
		OnigUChar msg[ONIG_MAX_ERROR_MESSAGE_LEN];
		onig_error_code_to_str(msg, r, &info);
		*re = NULL;
		return dsm_fail(DSM_EJSON, "%s: %s: bad regex /%.80s/: %s", what, where, pattern, (char *)msg);
	}
	return 0;
}

/* A Split/Replace "pattern": {"Regex": "..."} or {"String": "..."}. Sets exactly one of re / literal. */
static int load_pattern(const cJSON *pattern, OnigRegex *re, char **literal, size_t *literal_len,
			const char *what, const char *where)
{
	const cJSON *rx = cJSON_GetObjectItemCaseSensitive(pattern, "Regex");
	const cJSON *str = cJSON_GetObjectItemCaseSensitive(pattern, "String");
	if (cJSON_IsString(rx))
		return tokenizer_compile_regex(re, rx->valuestring, ONIG_SYNTAX_DEFAULT, what, where);
	if (!cJSON_IsString(str))
		return dsm_fail(DSM_EJSON, "%s: %s: \"pattern\" must be {\"Regex\": ...} or {\"String\": ...}", what,
				where);
	if (literal) {
		*literal_len = strlen(str->valuestring);
		*literal = strdup(str->valuestring);
		return *literal ? 0 : dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
	}
	if (str->valuestring[0] == 0)
		return dsm_fail(DSM_EJSON, "%s: %s: empty pattern", what, where);
	return tokenizer_compile_regex(re, str->valuestring, ONIG_SYNTAX_ASIS, what, where);
}

int tokenizer_load_normalizer(struct tokenizer *tok, const cJSON *n, const char *what)
{
	const char *type = tokenizer_json_type(n);
	if (!type)
		return dsm_fail(DSM_EJSON, "%s: normalizer without a \"type\"", what);
	if (strcmp(type, "Sequence") == 0) {
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(n, "normalizers");
		if (!cJSON_IsArray(list))
			return dsm_fail(DSM_EJSON, "%s: normalizer Sequence without a \"normalizers\" array", what);
		for (const cJSON *c = list->child; c; c = c->next) {
			int rc = tokenizer_load_normalizer(tok, c, what);
			if (rc)
				return rc;
		}
		return 0;
	}
	struct norm_step step = {0};
	int rc = 0;
	if (strcmp(type, "Prepend") == 0) {
		const cJSON *p = cJSON_GetObjectItemCaseSensitive(n, "prepend");
		if (!cJSON_IsString(p))
			return dsm_fail(DSM_EJSON, "%s: normalizer Prepend without a \"prepend\" string", what);
		step.kind = NORM_PREPEND;
		step.text = strdup(p->valuestring);
		step.text_len = strlen(p->valuestring);
	} else if (strcmp(type, "Replace") == 0) {
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(n, "content");
		if (!cJSON_IsString(content))
			return dsm_fail(DSM_EJSON, "%s: normalizer Replace without a \"content\" string", what);
		step.kind = NORM_REPLACE;
		step.text = strdup(content->valuestring);
		step.text_len = strlen(content->valuestring);
		rc = load_pattern(cJSON_GetObjectItemCaseSensitive(n, "pattern"), &step.regex, &step.literal,
				  &step.literal_len, what, "normalizer Replace");
		if (!rc && step.regex && !(step.region = onig_region_new()))
			rc = dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
	} else if (strcmp(type, "Strip") == 0) {
		step.kind = NORM_STRIP;
		if ((rc = tokenizer_json_flag(n, "strip_left", true, &step.strip_left, what)) ||
		    (rc = tokenizer_json_flag(n, "strip_right", true, &step.strip_right, what)))
			return rc;
	} else {
		return dsm_fail(DSM_EUNSUPPORTED, "%s: normalizer \"%s\" is not supported (supported: Sequence, "
				"Prepend, Replace, Strip)", what, type);
	}
	if (!rc && (step.kind == NORM_PREPEND || step.kind == NORM_REPLACE) && !step.text)
		rc = dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
	void *p = tok->norm;
	size_t cap = tok->n_norm;
	if (!rc)
		rc = tokenizer_reserve(&p, &cap, tok->n_norm + 1, sizeof *tok->norm);
	tok->norm = p;
	if (rc) {
		free(step.text);
		free(step.literal);
		if (step.regex)
			onig_free(step.regex);
		if (step.region)
			onig_region_free(step.region, 1);
		return rc;
	}
	tok->norm[tok->n_norm++] = step;
	return 0;
}

static int parse_behaviour(const cJSON *b, enum split_behaviour *out, const char *what)
{
	static const struct {
		const char *name;
		enum split_behaviour value;
	} names[] = {
		{"Removed", SPLIT_REMOVED},
		{"Isolated", SPLIT_ISOLATED},
		{"MergedWithPrevious", SPLIT_MERGED_WITH_PREVIOUS},
		{"MergedWithNext", SPLIT_MERGED_WITH_NEXT},
		{"Contiguous", SPLIT_CONTIGUOUS},
	};
	if (!cJSON_IsString(b))
		return dsm_fail(DSM_EJSON, "%s: Split without a \"behavior\" string", what);
	for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
		if (strcmp(b->valuestring, names[i].name) == 0) {
			*out = names[i].value;
			return 0;
		}
	return dsm_fail(DSM_EUNSUPPORTED, "%s: Split behavior \"%s\" is not supported", what, b->valuestring);
}

int tokenizer_load_pre_tokenizer(struct tokenizer *tok, const cJSON *p, const char *what)
{
	const char *type = tokenizer_json_type(p);
	if (!type)
		return dsm_fail(DSM_EJSON, "%s: pre_tokenizer without a \"type\"", what);
	if (strcmp(type, "Sequence") == 0) {
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(p, "pretokenizers");
		if (!cJSON_IsArray(list))
			return dsm_fail(DSM_EJSON, "%s: pre_tokenizer Sequence without a \"pretokenizers\" array", what);
		for (const cJSON *c = list->child; c; c = c->next) {
			int rc = tokenizer_load_pre_tokenizer(tok, c, what);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (tok->n_pretok && tok->pretok[tok->n_pretok - 1].kind == PRETOK_BYTE_LEVEL)
		return dsm_fail(DSM_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" after ByteLevel is not supported", what,
				type);
	struct pretok_step step = {0};
	int rc;
	if (strcmp(type, "Split") == 0) {
		step.kind = PRETOK_SPLIT;
		if ((rc = parse_behaviour(cJSON_GetObjectItemCaseSensitive(p, "behavior"), &step.behaviour, what)) ||
		    (rc = tokenizer_json_flag(p, "invert", false, &step.invert, what)))
			return rc;
		rc = load_pattern(cJSON_GetObjectItemCaseSensitive(p, "pattern"), &step.regex, NULL, NULL, what,
				  "pre_tokenizer Split");
	} else if (strcmp(type, "ByteLevel") == 0) {
		step.kind = PRETOK_BYTE_LEVEL;
		step.behaviour = SPLIT_ISOLATED;
		if ((rc = tokenizer_json_flag(p, "add_prefix_space", true, &step.add_prefix_space, what)) ||
		    (rc = tokenizer_json_flag(p, "use_regex", true, &step.use_regex, what)))
			return rc;
		if (step.use_regex)
			rc = tokenizer_compile_regex(&step.regex, gpt2_pattern, ONIG_SYNTAX_DEFAULT, what, "ByteLevel");
	} else {
		return dsm_fail(DSM_EUNSUPPORTED, "%s: pre_tokenizer \"%s\" is not supported (supported: Sequence, "
				"Split, ByteLevel)", what, type);
	}
	if (!rc && step.regex && !(step.region = onig_region_new()))
		rc = dsm_fail(DSM_ENOMEM, "%s: out of memory", what);
	void *q = tok->pretok;
	size_t cap = tok->n_pretok;
	if (!rc)
		rc = tokenizer_reserve(&q, &cap, tok->n_pretok + 1, sizeof *tok->pretok);
	tok->pretok = q;
	if (rc) {
		if (step.regex)
			onig_free(step.regex);
		if (step.region)
			onig_region_free(step.region, 1);
		return rc;
	}
	tok->pretok[tok->n_pretok++] = step;
	return 0;
}

/* ---- post-processing and decoder ------------------------------------------------------------------ */

/* Adds the ids of a TemplateProcessing special token to prefix or suffix. */
static int template_special(struct tokenizer *tok, const cJSON *specials, const char *name, bool before,
			    const char *what)
{
	const cJSON *s = cJSON_GetObjectItemCaseSensitive(specials, name);
	const cJSON *ids = s ? cJSON_GetObjectItemCaseSensitive(s, "ids") : NULL;
	if (!cJSON_IsArray(ids))
		return dsm_fail(DSM_EJSON, "%s: post_processor: special token \"%.40s\" has no \"ids\"", what, name);
	for (const cJSON *i = ids->child; i; i = i->next) {
		int32_t id;
		int rc = tokenizer_json_id(i, what, "post_processor special_tokens", &id);
		if (rc)
			return rc;
		if ((size_t)id >= tok->n_ids || !tok->entries[id].present)
			return dsm_fail(DSM_EJSON, "%s: post_processor: id %d is not a token", what, id);
		int32_t *list = before ? tok->prefix_ids : tok->suffix_ids;
		size_t *n = before ? &tok->n_prefix : &tok->n_suffix;
		if (*n == 4)
			return dsm_fail(DSM_EUNSUPPORTED, "%s: post_processor adds more than 4 tokens", what);
		list[(*n)++] = id;
	}
	return 0;
}

int tokenizer_load_post_processor(struct tokenizer *tok, const cJSON *pp, const char *what)
{
	if (!pp || cJSON_IsNull(pp))
		return 0;
	const char *type = tokenizer_json_type(pp);
	if (!type)
		return dsm_fail(DSM_EJSON, "%s: post_processor without a \"type\"", what);
	if (strcmp(type, "ByteLevel") == 0)
		return 0; /* changes offsets only */
	if (strcmp(type, "Sequence") == 0) {
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(pp, "processors");
		if (!cJSON_IsArray(list))
			return dsm_fail(DSM_EJSON, "%s: post_processor Sequence without \"processors\"", what);
		for (const cJSON *c = list->child; c; c = c->next) {
			int rc = tokenizer_load_post_processor(tok, c, what);
			if (rc)
				return rc;
		}
		return 0;
	}
	if (strcmp(type, "TemplateProcessing") != 0)
		return dsm_fail(DSM_EUNSUPPORTED, "%s: post_processor \"%s\" is not supported (supported: ByteLevel, "
				"TemplateProcessing, Sequence)", what, type);
	const cJSON *single = cJSON_GetObjectItemCaseSensitive(pp, "single");
	const cJSON *specials = cJSON_GetObjectItemCaseSensitive(pp, "special_tokens");
	if (!cJSON_IsArray(single))
		return dsm_fail(DSM_EJSON, "%s: TemplateProcessing without a \"single\" array", what);
	tok->n_prefix = tok->n_suffix = 0;
	bool seen_sequence = false;
	for (const cJSON *piece = single->child; piece; piece = piece->next) {
		const cJSON *sp = cJSON_GetObjectItemCaseSensitive(piece, "SpecialToken");
		const cJSON *seq = cJSON_GetObjectItemCaseSensitive(piece, "Sequence");
		if (seq) {
			seen_sequence = true;
			continue;
		}
		const cJSON *name = sp ? cJSON_GetObjectItemCaseSensitive(sp, "id") : NULL;
		if (!cJSON_IsString(name))
			return dsm_fail(DSM_EJSON, "%s: TemplateProcessing: a piece is neither SpecialToken nor "
					"Sequence", what);
		int rc = template_special(tok, specials, name->valuestring, !seen_sequence, what);
		if (rc)
			return rc;
	}
	return 0;
}

int tokenizer_check_decoder(const cJSON *d, const char *what)
{
	const char *type = d ? tokenizer_json_type(d) : NULL;
	if (type && strcmp(type, "ByteLevel") == 0)
		return 0;
	if (type && strcmp(type, "Sequence") == 0) {
		const cJSON *list = cJSON_GetObjectItemCaseSensitive(d, "decoders");
		if (cJSON_IsArray(list) && cJSON_GetArraySize(list) == 1)
			return tokenizer_check_decoder(list->child, what);
	}
	return dsm_fail(DSM_EUNSUPPORTED, "%s: decoder \"%s\" is not supported (only ByteLevel)", what,
			type ? type : "null");
}

/* bos_token / eos_token in tokenizer_config.json: a string or {"content": ...}. */
static int config_token(struct tokenizer *tok, const cJSON *cfg, const char *key, int32_t *id,
			const char *what)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(cfg, key);
	if (v && cJSON_IsObject(v))
		v = cJSON_GetObjectItemCaseSensitive(v, "content");
	if (!v || cJSON_IsNull(v))
		return 0;
	if (!cJSON_IsString(v))
		return dsm_fail(DSM_EJSON, "%s: \"%s\" must be a string or an object with \"content\"", what, key);
	int32_t found = tokenizer_token_id(tok, v->valuestring);
	if (found < 0)
		return dsm_fail(DSM_EJSON, "%s: %s \"%.60s\" is not a token of the tokenizer", what, key,
				v->valuestring);
	*id = found;
	return 0;
}

int tokenizer_load_config(struct tokenizer *tok, const char *json, size_t len, const char *what)
{
	cJSON *cfg = json_parse(json, len, what);
	if (!cfg)
		return DSM_EJSON;
	int rc = 0;
	if (!cJSON_IsObject(cfg)) {
		rc = dsm_fail(DSM_EJSON, "%s: not a JSON object", what);
		goto out;
	}
	if ((rc = config_token(tok, cfg, "bos_token", &tok->bos_id, what)) ||
	    (rc = config_token(tok, cfg, "eos_token", &tok->eos_id, what)))
		goto out;
	const cJSON *add_bos = cJSON_GetObjectItemCaseSensitive(cfg, "add_bos_token");
	const cJSON *add_eos = cJSON_GetObjectItemCaseSensitive(cfg, "add_eos_token");
	if ((add_bos && !cJSON_IsBool(add_bos)) || (add_eos && !cJSON_IsBool(add_eos))) {
		rc = dsm_fail(DSM_EJSON, "%s: add_bos_token / add_eos_token must be true or false", what);
		goto out;
	}
	if (add_bos || add_eos) {
		/* These keys rebuild the post-processing, as the reference's Llama-style tokenizers do. */
		tok->n_prefix = tok->n_suffix = 0;
		if (cJSON_IsTrue(add_bos)) {
			if (tok->bos_id < 0) {
				rc = dsm_fail(DSM_EJSON, "%s: add_bos_token is true but there is no bos_token", what);
				goto out;
			}
			tok->prefix_ids[tok->n_prefix++] = tok->bos_id;
		}
		if (cJSON_IsTrue(add_eos)) {
			if (tok->eos_id < 0) {
				rc = dsm_fail(DSM_EJSON, "%s: add_eos_token is true but there is no eos_token", what);
				goto out;
			}
			tok->suffix_ids[tok->n_suffix++] = tok->eos_id;
		}
	}
out:
	cJSON_Delete(cfg);
	return rc;
}
