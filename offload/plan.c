#include "plan.h"

#include "cache.h"
#include "error.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PLAN_FORMAT "dsm-plan"
#define PLAN_VERSION 1
#define PLAN_MAX_BYTES (64u << 20)

/* Names of the non-expert kinds in plans (the same words as dsm-inspect). */
static const char *const kind_key[DSM_KIND_COUNT] = {
	"embeddings", "attention", "indexer", "dense", "router", "shared_experts", NULL, NULL,
};
_Static_assert(DSM_KIND_COUNT == 8, "kind_key lists every dsm_kind");

const char *dsm_tier_format(struct dsm_tier t, char *buf, size_t size)
{
	switch (t.kind) {
	case DSM_TIER_GPU: snprintf(buf, size, "gpu:%u", t.index); break;
	case DSM_TIER_DRAM: snprintf(buf, size, "dram:%u", t.index); break;
	case DSM_TIER_MAPPED: snprintf(buf, size, "mapped"); break;
	default: snprintf(buf, size, "nvme"); break;
	}
	return buf;
}

int dsm_tier_parse(const char *s, struct dsm_tier *t)
{
	const char *num;
	if (strcmp(s, "nvme") == 0) {
		*t = (struct dsm_tier){ DSM_TIER_NVME, 0 };
		return 0;
	}
	if (strncmp(s, "gpu:", 4) == 0) {
		t->kind = DSM_TIER_GPU;
		num = s + 4;
	} else if (strncmp(s, "dram:", 5) == 0) {
		t->kind = DSM_TIER_DRAM;
		num = s + 5;
	} else {
		return -1;
	}
	if (!*num || strlen(num) > 2)
		return -1;
	int v = 0;
	for (const char *p = num; *p; p++) {
		if (*p < '0' || *p > '9')
			return -1;
		v = v * 10 + (*p - '0');
	}
	if (v > DSM_TIER_MAX_INDEX)
		return -1;
	t->index = (uint8_t)v;
	return 0;
}

void dsm_plan_free(struct dsm_plan *p)
{
	if (!p)
		return;
	free(p->expert);
	free(p);
}

/* The slots of kinds that are not non-expert weights hold nvme, so that equal plans compare equal. */
static void normalize(struct dsm_plan *p)
{
	p->non_expert[DSM_KIND_ROUTED] = (struct dsm_tier){ DSM_TIER_NVME, 0 };
	p->non_expert[DSM_KIND_MTP] = (struct dsm_tier){ DSM_TIER_NVME, 0 };
}

static int plan_alloc(struct dsm_plan **out, const struct dsm_moe_shape *c)
{
	*out = NULL;
	if (c->n_layers <= 0 || c->n_experts <= 0 || c->n_layers > 4096 || c->n_experts > 65536)
		return dsm_fail(DSM_EARG, "plan: the model has %d layers and %d experts", c->n_layers, c->n_experts);
	struct dsm_plan *p = calloc(1, sizeof *p);
	if (!p)
		return dsm_fail(DSM_ENOMEM, "plan: out of memory");
	p->expert = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof *p->expert);
	if (!p->expert) {
		free(p);
		return dsm_fail(DSM_ENOMEM, "plan: out of memory");
	}
	snprintf(p->model_type, sizeof p->model_type, "%s", c->model_type);
	p->n_layers = c->n_layers;
	p->first_moe = c->first_moe;
	p->n_experts = c->n_experts;
	p->hidden_size = c->hidden_size;
	p->moe_intermediate_size = c->moe_intermediate_size;
	p->cache_policy = -1;
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		p->non_expert[k] = (struct dsm_tier){ DSM_TIER_DRAM, 0 };
	normalize(p);
	*out = p;
	return 0;
}

int dsm_plan_uniform(struct dsm_plan **out, const struct dsm_moe_shape *c, struct dsm_tier non_expert,
		     struct dsm_tier experts)
{
	int rc = plan_alloc(out, c);
	if (rc < 0)
		return rc;
	struct dsm_plan *p = *out;
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		p->non_expert[k] = non_expert;
	normalize(p);
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++)
			p->expert[(size_t)l * p->n_experts + e] = experts;
	return 0;
}

/* ---- Parsing ---- */

/* An integral JSON number in [lo, hi]. */
static int get_int(const cJSON *item, int64_t lo, int64_t hi, int64_t *out)
{
	if (!cJSON_IsNumber(item))
		return -1;
	double v = item->valuedouble;
	if (!isfinite(v) || v != floor(v) || v < (double)lo || v > (double)hi)
		return -1;
	*out = (int64_t)v;
	return 0;
}

static int check_model_int(const cJSON *model, const char *key, int want, const char *what)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(model, key);
	int64_t v;
	if (!item)
		return dsm_fail(DSM_EPLAN, "%s: model.%s is missing", what, key);
	if (get_int(item, 0, INT32_MAX, &v) < 0)
		return dsm_fail(DSM_EPLAN, "%s: model.%s must be a non-negative integer", what, key);
	if (v != want)
		return dsm_fail(DSM_EPLAN, "%s: the plan is for another model: model.%s is %lld, the checkpoint's "
				"config has %d", what, key, (long long)v, want);
	return 0;
}

static int parse_model(const cJSON *model, const struct dsm_moe_shape *c, const char *what)
{
	if (!cJSON_IsObject(model))
		return dsm_fail(DSM_EPLAN, "%s: \"model\" must be an object describing the checkpoint", what);
	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(model, "model_type");
	if (mt && !cJSON_IsString(mt))
		return dsm_fail(DSM_EPLAN, "%s: model.model_type must be a string", what);
	if (mt && strcmp(mt->valuestring, c->model_type) != 0)
		return dsm_fail(DSM_EPLAN, "%s: the plan is for another model: model.model_type is \"%s\", the "
				"checkpoint's config has \"%s\"", what, mt->valuestring, c->model_type);
	int rc;
	if ((rc = check_model_int(model, "num_hidden_layers", c->n_layers, what)) < 0 ||
	    (rc = check_model_int(model, "first_k_dense_replace", c->first_moe, what)) < 0 ||
	    (rc = check_model_int(model, "n_routed_experts", c->n_experts, what)) < 0 ||
	    (rc = check_model_int(model, "hidden_size", c->hidden_size, what)) < 0 ||
	    (rc = check_model_int(model, "moe_intermediate_size", c->moe_intermediate_size, what)) < 0)
		return rc;
	return 0;
}

static int parse_tier_item(const cJSON *item, struct dsm_tier *t, const char *what, const char *key)
{
	if (!cJSON_IsString(item) || dsm_tier_parse(item->valuestring, t) < 0)
		return dsm_fail(DSM_EPLAN, "%s: %s: a tier is \"gpu:N\", \"dram:N\" or \"nvme\" (N from 0 to %d)", what,
				key, DSM_TIER_MAX_INDEX);
	return 0;
}

static int parse_non_expert(struct dsm_plan *p, const cJSON *ne, const char *what)
{
	struct dsm_tier t;
	int rc;
	if (cJSON_IsString(ne)) {
		if ((rc = parse_tier_item(ne, &t, what, "non_expert")) < 0)
			return rc;
		for (int k = 0; k < DSM_KIND_COUNT; k++)
			p->non_expert[k] = t;
	} else if (cJSON_IsObject(ne)) {
		const cJSON *def = cJSON_GetObjectItemCaseSensitive(ne, "default");
		if (def) {
			if ((rc = parse_tier_item(def, &t, what, "non_expert.default")) < 0)
				return rc;
			for (int k = 0; k < DSM_KIND_COUNT; k++)
				p->non_expert[k] = t;
		}
		const cJSON *item;
		cJSON_ArrayForEach(item, ne) {
			if (!item->string)
				return dsm_fail(DSM_EPLAN, "%s: non_expert: member without a name", what);
			if (strcmp(item->string, "default") == 0)
				continue;
			int k = 0;
			while (k < DSM_KIND_COUNT && !(kind_key[k] && strcmp(kind_key[k], item->string) == 0))
				k++;
			if (k == DSM_KIND_COUNT)
				return dsm_fail(DSM_EPLAN, "%s: non_expert.%.64s: unknown kind (embeddings, attention, indexer, "
						"dense, router, shared_experts, default)", what, item->string);
			char key[96];
			snprintf(key, sizeof key, "non_expert.%s", kind_key[k]);
			if ((rc = parse_tier_item(item, &p->non_expert[k], what, key)) < 0)
				return rc;
		}
	} else if (ne) {
		return dsm_fail(DSM_EPLAN, "%s: \"non_expert\" must be a tier or an object of tiers by kind", what);
	}
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		if (kind_key[k] && p->non_expert[k].kind == DSM_TIER_NVME)
			return dsm_fail(DSM_EPLAN, "%s: non_expert.%s is \"nvme\": only routed experts are streamed; "
					"non-expert weights must be on a gpu or in dram", what, kind_key[k]);
	normalize(p);
	return 0;
}

/* Parses a layer key: decimal digits only. */
static int parse_layer_key(const char *s, int64_t *out)
{
	if (!*s || strlen(s) > 6)
		return -1;
	int64_t v = 0;
	for (const char *q = s; *q; q++) {
		if (*q < '0' || *q > '9')
			return -1;
		v = v * 10 + (*q - '0');
	}
	*out = v;
	return 0;
}

/* An expert list entry: an integer, or "A-B" (inclusive). */
static int parse_expert_entry(const cJSON *item, int n_experts, int64_t *lo, int64_t *hi)
{
	if (cJSON_IsNumber(item)) {
		if (get_int(item, INT32_MIN, INT32_MAX, lo) < 0)
			return -1;
		*hi = *lo;
		return 0;
	}
	if (!cJSON_IsString(item))
		return -1;
	const char *s = item->valuestring;
	char *end;
	errno = 0;
	long long a = strtoll(s, &end, 10);
	if (end == s || *end != '-' || errno)
		return -1;
	const char *s2 = end + 1;
	long long b = strtoll(s2, &end, 10);
	if (end == s2 || *end || errno || *s2 == '-' || *s2 == '+' || b < a)
		return -1;
	*lo = a;
	*hi = b;
	return 0;
}

static int parse_layer(struct dsm_plan *p, const cJSON *layer_obj, int layer, unsigned char *seen,
		       const char *what)
{
	if (!cJSON_IsObject(layer_obj))
		return dsm_fail(DSM_EPLAN, "%s: experts.layers.%d must be an object of tier -> expert list", what, layer);
	const cJSON *list;
	cJSON_ArrayForEach(list, layer_obj) {
		char key[160];
		snprintf(key, sizeof key, "experts.layers.%d.%.64s", layer, list->string ? list->string : "?");
		struct dsm_tier t;
		if (!list->string || dsm_tier_parse(list->string, &t) < 0)
			return dsm_fail(DSM_EPLAN, "%s: %s: a tier is \"gpu:N\", \"dram:N\" or \"nvme\"", what, key);
		if (!cJSON_IsArray(list))
			return dsm_fail(DSM_EPLAN, "%s: %s must be a list of experts (numbers or \"A-B\" ranges)", what, key);
		const cJSON *item;
		cJSON_ArrayForEach(item, list) {
			int64_t lo, hi;
			if (parse_expert_entry(item, p->n_experts, &lo, &hi) < 0)
				return dsm_fail(DSM_EPLAN, "%s: %s: an entry is an expert number or a range \"A-B\"", what,
						key);
			if (lo < 0 || hi >= p->n_experts)
				return dsm_fail(DSM_EPLAN, "%s: %s: expert %lld does not exist (the checkpoint has experts "
						"0-%d in each layer)", what, key, (long long)(lo < 0 ? lo : hi),
						p->n_experts - 1);
			for (int64_t e = lo; e <= hi; e++) {
				size_t i = (size_t)layer * p->n_experts + (size_t)e;
				if (seen[i])
					return dsm_fail(DSM_EPLAN, "%s: experts.layers.%d: expert %lld is placed twice", what,
							layer, (long long)e);
				seen[i] = 1;
				p->expert[i] = t;
			}
		}
	}
	return 0;
}

static int parse_experts(struct dsm_plan *p, const cJSON *ex, const char *what)
{
	struct dsm_tier def = { DSM_TIER_NVME, 0 };
	int rc;
	if (ex && !cJSON_IsObject(ex))
		return dsm_fail(DSM_EPLAN, "%s: \"experts\" must be an object", what);
	const cJSON *d = cJSON_GetObjectItemCaseSensitive(ex, "default");
	if (d && (rc = parse_tier_item(d, &def, what, "experts.default")) < 0)
		return rc;
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++)
			p->expert[(size_t)l * p->n_experts + e] = def;
	const cJSON *item;
	cJSON_ArrayForEach(item, ex) {
		if (!item->string || (strcmp(item->string, "default") != 0 && strcmp(item->string, "layers") != 0))
			return dsm_fail(DSM_EPLAN, "%s: experts.%.64s: unknown key (default, layers)", what,
					item->string ? item->string : "?");
	}
	const cJSON *layers = cJSON_GetObjectItemCaseSensitive(ex, "layers");
	if (!layers)
		return 0;
	if (!cJSON_IsObject(layers))
		return dsm_fail(DSM_EPLAN, "%s: experts.layers must be an object keyed by layer number", what);
	unsigned char *seen = calloc((size_t)p->n_layers * (size_t)p->n_experts, 1);
	unsigned char *layer_seen = calloc((size_t)p->n_layers, 1);
	if (!seen || !layer_seen) {
		free(seen);
		free(layer_seen);
		return dsm_fail(DSM_ENOMEM, "plan: out of memory");
	}
	rc = 0;
	cJSON_ArrayForEach(item, layers) {
		int64_t l;
		if (!item->string || parse_layer_key(item->string, &l) < 0) {
			rc = dsm_fail(DSM_EPLAN, "%s: experts.layers.%.64s: a layer key is a layer number", what,
				      item->string ? item->string : "?");
			break;
		}
		if (l >= p->n_layers) {
			rc = dsm_fail(DSM_EPLAN, "%s: experts.layers.%lld: the checkpoint has layers 0-%d", what,
				      (long long)l, p->n_layers - 1);
			break;
		}
		if (l < p->first_moe) {
			rc = dsm_fail(DSM_EPLAN, "%s: experts.layers.%lld is a dense layer (MoE layers are %d-%d)", what,
				      (long long)l, p->first_moe, p->n_layers - 1);
			break;
		}
		if (layer_seen[l]) {
			rc = dsm_fail(DSM_EPLAN, "%s: experts.layers.%lld appears twice", what, (long long)l);
			break;
		}
		layer_seen[l] = 1;
		if ((rc = parse_layer(p, item, (int)l, seen, what)) < 0)
			break;
	}
	free(seen);
	free(layer_seen);
	return rc;
}

static int parse_cache(struct dsm_plan *p, const cJSON *cache, const char *what)
{
	if (!cache)
		return 0;
	if (!cJSON_IsObject(cache))
		return dsm_fail(DSM_EPLAN, "%s: \"cache\" must be an object", what);
	const cJSON *item;
	cJSON_ArrayForEach(item, cache) {
		if (!item->string || (strcmp(item->string, "policy") != 0 && strcmp(item->string, "bytes") != 0))
			return dsm_fail(DSM_EPLAN, "%s: cache.%.64s: unknown key (policy, bytes)", what,
					item->string ? item->string : "?");
	}
	const cJSON *pol = cJSON_GetObjectItemCaseSensitive(cache, "policy");
	if (pol) {
		int v = cJSON_IsString(pol) ? dsm_cache_policy_parse(pol->valuestring) : -1;
		if (v < 0)
			return dsm_fail(DSM_EPLAN, "%s: cache.policy is \"lru\", \"lfu\" or \"pinned\"", what);
		p->cache_policy = v;
	}
	const cJSON *bytes = cJSON_GetObjectItemCaseSensitive(cache, "bytes");
	if (bytes) {
		int64_t v;
		if (get_int(bytes, 0, (int64_t)1 << 53, &v) < 0)
			return dsm_fail(DSM_EPLAN, "%s: cache.bytes must be an integer from 0 to 2^53", what);
		p->cache_bytes = (uint64_t)v;
	}
	return 0;
}

int dsm_plan_parse(struct dsm_plan **out, const char *text, size_t len, const char *what,
		   const struct dsm_moe_shape *c)
{
	*out = NULL;
	cJSON *root = cJSON_ParseWithLength(text, len);
	if (!root)
		return dsm_fail(DSM_EJSON, "%s: not valid JSON (near byte %ld)", what,
				cJSON_GetErrorPtr() ? (long)(cJSON_GetErrorPtr() - text) : -1L);
	struct dsm_plan *p = NULL;
	int rc;
	if (!cJSON_IsObject(root)) {
		rc = dsm_fail(DSM_EPLAN, "%s: a plan is a JSON object", what);
		goto out;
	}
	const cJSON *item;
	cJSON_ArrayForEach(item, root) {
		static const char *const known[] = { "format", "version", "model", "non_expert", "experts", "cache",
						     "comment", NULL };
		int ok = item->string && item->string[0] == '_';
		for (int i = 0; !ok && item->string && known[i]; i++)
			ok = strcmp(item->string, known[i]) == 0;
		if (!ok) {
			rc = dsm_fail(DSM_EPLAN, "%s: unknown key \"%.64s\"", what, item->string ? item->string : "?");
			goto out;
		}
	}
	const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(root, "format");
	if (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, PLAN_FORMAT) != 0) {
		rc = dsm_fail(DSM_EPLAN, "%s: not a placement plan (\"format\": \"" PLAN_FORMAT "\" missing)", what);
		goto out;
	}
	int64_t version;
	if (get_int(cJSON_GetObjectItemCaseSensitive(root, "version"), 0, INT32_MAX, &version) < 0 ||
	    version != PLAN_VERSION) {
		rc = dsm_fail(DSM_EPLAN, "%s: \"version\" must be %d", what, PLAN_VERSION);
		goto out;
	}
	if ((rc = parse_model(cJSON_GetObjectItemCaseSensitive(root, "model"), c, what)) < 0)
		goto out;
	if ((rc = plan_alloc(&p, c)) < 0)
		goto out;
	if ((rc = parse_non_expert(p, cJSON_GetObjectItemCaseSensitive(root, "non_expert"), what)) < 0 ||
	    (rc = parse_experts(p, cJSON_GetObjectItemCaseSensitive(root, "experts"), what)) < 0 ||
	    (rc = parse_cache(p, cJSON_GetObjectItemCaseSensitive(root, "cache"), what)) < 0)
		goto out;
	*out = p;
	p = NULL;
	rc = 0;
out:
	dsm_plan_free(p);
	cJSON_Delete(root);
	return rc;
}

int dsm_plan_load(struct dsm_plan **out, const char *path, const struct dsm_moe_shape *c)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f)
		return dsm_fail(errno == ENOENT ? DSM_EMISSING : DSM_EIO, "%s: cannot open the plan: %s", path,
				strerror(errno));
	char *buf = malloc(PLAN_MAX_BYTES + 1);
	if (!buf) {
		fclose(f);
		return dsm_fail(DSM_ENOMEM, "%s: out of memory", path);
	}
	size_t n = fread(buf, 1, PLAN_MAX_BYTES + 1, f);
	int err = ferror(f);
	fclose(f);
	int rc;
	if (err)
		rc = dsm_fail(DSM_EIO, "%s: read failed", path);
	else if (n > PLAN_MAX_BYTES)
		rc = dsm_fail(DSM_EPLAN, "%s: larger than %u MiB: not a plan", path, PLAN_MAX_BYTES >> 20);
	else
		rc = dsm_plan_parse(out, buf, n, path, c);
	free(buf);
	return rc;
}

/* ---- Writing ---- */

static int add_runs(cJSON *arr, const struct dsm_plan *p, int layer, struct dsm_tier t)
{
	for (int e = 0; e < p->n_experts;) {
		struct dsm_tier x = dsm_plan_expert_tier(p, layer, e);
		if (x.kind != t.kind || x.index != t.index) {
			e++;
			continue;
		}
		int b = e;
		while (b + 1 < p->n_experts) {
			struct dsm_tier y = dsm_plan_expert_tier(p, layer, b + 1);
			if (y.kind != t.kind || y.index != t.index)
				break;
			b++;
		}
		cJSON *v;
		if (b == e) {
			v = cJSON_CreateNumber(e);
		} else {
			char r[32];
			snprintf(r, sizeof r, "%d-%d", e, b);
			v = cJSON_CreateString(r);
		}
		if (!v || !cJSON_AddItemToArray(arr, v))
			return -1;
		e = b + 1;
	}
	return 0;
}

static int tier_code(struct dsm_tier t)
{
	return t.kind * 64 + t.index;
}

char *dsm_plan_to_json(const struct dsm_plan *p)
{
	char buf[32];
	cJSON *root = cJSON_CreateObject();
	char *text = NULL;
	if (!root)
		return NULL;
	cJSON_AddStringToObject(root, "format", PLAN_FORMAT);
	cJSON_AddNumberToObject(root, "version", PLAN_VERSION);
	cJSON *model = cJSON_AddObjectToObject(root, "model");
	if (!model)
		goto out;
	cJSON_AddStringToObject(model, "model_type", p->model_type);
	cJSON_AddNumberToObject(model, "num_hidden_layers", p->n_layers);
	cJSON_AddNumberToObject(model, "first_k_dense_replace", p->first_moe);
	cJSON_AddNumberToObject(model, "n_routed_experts", p->n_experts);
	cJSON_AddNumberToObject(model, "hidden_size", p->hidden_size);
	cJSON_AddNumberToObject(model, "moe_intermediate_size", p->moe_intermediate_size);
	cJSON *ne = cJSON_AddObjectToObject(root, "non_expert");
	if (!ne)
		goto out;
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		if (kind_key[k])
			cJSON_AddStringToObject(ne, kind_key[k], dsm_tier_format(p->non_expert[k], buf, sizeof buf));
	/* The default tier of experts is the most common one. */
	int counts[DSM_TIER_KINDS * 64] = { 0 };
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++)
			counts[tier_code(dsm_plan_expert_tier(p, l, e))]++;
	int best = 0;
	for (int i = 1; i < DSM_TIER_KINDS * 64; i++)
		if (counts[i] > counts[best])
			best = i;
	struct dsm_tier def = { (uint8_t)(best / 64), (uint8_t)(best % 64) };
	cJSON *ex = cJSON_AddObjectToObject(root, "experts");
	if (!ex)
		goto out;
	cJSON_AddStringToObject(ex, "default", dsm_tier_format(def, buf, sizeof buf));
	cJSON *layers = cJSON_AddObjectToObject(ex, "layers");
	if (!layers)
		goto out;
	for (int l = p->first_moe; l < p->n_layers; l++) {
		int present[DSM_TIER_KINDS * 64] = { 0 };
		for (int e = 0; e < p->n_experts; e++)
			present[tier_code(dsm_plan_expert_tier(p, l, e))] = 1;
		present[best] = 0;
		cJSON *lo = NULL;
		for (int i = 0; i < DSM_TIER_KINDS * 64; i++) {
			if (!present[i])
				continue;
			if (!lo) {
				char key[16];
				snprintf(key, sizeof key, "%d", l);
				if (!(lo = cJSON_AddObjectToObject(layers, key)))
					goto out;
			}
			struct dsm_tier t = { (uint8_t)(i / 64), (uint8_t)(i % 64) };
			cJSON *arr = cJSON_AddArrayToObject(lo, dsm_tier_format(t, buf, sizeof buf));
			if (!arr || add_runs(arr, p, l, t) < 0)
				goto out;
		}
	}
	if (p->cache_policy >= 0 || p->cache_bytes) {
		cJSON *cache = cJSON_AddObjectToObject(root, "cache");
		if (!cache)
			goto out;
		if (p->cache_policy >= 0)
			cJSON_AddStringToObject(cache, "policy", dsm_cache_policy_name(p->cache_policy));
		if (p->cache_bytes)
			cJSON_AddNumberToObject(cache, "bytes", (double)p->cache_bytes);
	}
	text = cJSON_Print(root);
out:
	cJSON_Delete(root);
	return text;
}

void dsm_plan_count(const struct dsm_plan *p, uint64_t counts[DSM_TIER_KINDS])
{
	memset(counts, 0, DSM_TIER_KINDS * sizeof *counts);
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++)
			counts[dsm_plan_expert_tier(p, l, e).kind]++;
}

/* ---- Sizes and plans from budgets ---- */

void dsm_plan_sizes(const struct dsm_store_model *m, struct dsm_plan_sizes *sz)
{
	memset(sz, 0, sizeof *sz);
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		if (k != DSM_KIND_ROUTED && k != DSM_KIND_MTP)
			sz->non_expert_bytes[k] = m->non_expert_bytes[k];
	for (int l = m->shape.first_moe; l < m->shape.n_layers; l++)
		for (int x = 0; x < m->shape.n_experts; x++) {
			const struct dsm_store_expert *e = dsm_store_expert(m, l, x);
			uint64_t w = 0;
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
				w += e->w[j].nbytes;
				sz->non_expert_bytes[DSM_KIND_ROUTER] += e->scale[j].nbytes;
			}
			if (w > sz->expert_bytes)
				sz->expert_bytes = w;
		}
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		sz->non_expert_total += sz->non_expert_bytes[k];
}

struct order_key {
	double hot;
	int rank;                 /* without hotness: position in the layer (spread evenly) */
	int key;
};

static int order_cmp(const void *a, const void *b)
{
	const struct order_key *x = a, *y = b;
	if (x->hot != y->hot)
		return x->hot > y->hot ? -1 : 1;
	if (x->rank != y->rank)
		return x->rank < y->rank ? -1 : 1;
	return x->key < y->key ? -1 : x->key > y->key;
}

static double gib(uint64_t b)
{
	return (double)b / (1024.0 * 1024.0 * 1024.0);
}

int dsm_plan_layer_gpu(int layer, int first_moe, int n_layers, int n_gpus)
{
	if (first_moe >= n_layers)
		first_moe = 0;
	if (layer < first_moe || n_gpus <= 1)
		return 0;
	return (int)((int64_t)(layer - first_moe) * n_gpus / (n_layers - first_moe));
}

int dsm_plan_from_budgets(struct dsm_plan **out, const struct dsm_moe_shape *c, const struct dsm_plan_sizes *sz,
			  const struct dsm_plan_budget *b, const double *hotness)
{
	int rc = plan_alloc(out, c);
	if (rc < 0)
		return rc;
	struct dsm_plan *p = *out;
	int n_gpus = b->n_gpus > 0 ? b->n_gpus : 1;
	if (n_gpus > 256)
		n_gpus = 256;
	uint64_t vram[256], dram = b->dram_bytes;
	for (int i = 0; i < n_gpus; i++)
		vram[i] = b->vram_bytes;
	uint64_t reserve = b->dram_reserve;
	struct dsm_tier home;
	uint64_t on_gpu = b->forward_placed ? sz->non_expert_bytes[DSM_KIND_SHARED] : sz->non_expert_total;
	if (vram[0] && on_gpu <= vram[0]) {
		home = (struct dsm_tier){ DSM_TIER_GPU, 0 };
		vram[0] -= on_gpu;
	} else if (sz->non_expert_total + reserve <= dram) {
		home = (struct dsm_tier){ DSM_TIER_DRAM, 0 };
		dram -= sz->non_expert_total;
	} else {
		dsm_plan_free(p);
		*out = NULL;
		return dsm_fail(DSM_EPLAN, "the budgets cannot hold the non-expert weights: they need %.2f GiB (plus "
				"%.2f GiB of streaming buffers in DRAM); the DRAM budget is %.2f GiB and the VRAM budget "
				"%.2f GiB", gib(sz->non_expert_total), gib(reserve), gib(b->dram_bytes),
				gib(b->vram_bytes));
	}
	dram = dram > reserve ? dram - reserve : 0;
	for (int k = 0; k < DSM_KIND_COUNT; k++)
		p->non_expert[k] = home;
	normalize(p);
	int n_moe = p->n_layers - p->first_moe;
	size_t n = (size_t)(n_moe > 0 ? n_moe : 0) * (size_t)p->n_experts;
	struct order_key *v = malloc((n ? n : 1) * sizeof *v);
	if (!v) {
		dsm_plan_free(p);
		*out = NULL;
		return dsm_fail(DSM_ENOMEM, "plan: out of memory");
	}
	size_t k = 0;
	for (int l = p->first_moe; l < p->n_layers; l++)
		for (int e = 0; e < p->n_experts; e++) {
			int key = l * p->n_experts + e;
			v[k++] = (struct order_key){ hotness ? hotness[key] : 0.0, hotness ? 0 : e, key };
		}
	qsort(v, n, sizeof *v, order_cmp);
	uint64_t eb = sz->expert_bytes ? sz->expert_bytes : 1;
	for (size_t i = 0; i < n; i++) {
		struct dsm_tier t = { DSM_TIER_NVME, 0 };
		int layer = v[i].key / p->n_experts, g = dsm_plan_layer_gpu(layer, p->first_moe, p->n_layers, n_gpus);
		if (vram[g] >= eb) {
			t = (struct dsm_tier){ DSM_TIER_GPU, (uint8_t)g };
			vram[g] -= eb;
		} else if (dram >= eb) {
			t = (struct dsm_tier){ DSM_TIER_DRAM, 0 };
			dram -= eb;
		}
		p->expert[v[i].key] = t;
	}
	free(v);
	return 0;
}
