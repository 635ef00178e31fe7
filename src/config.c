#include "config.h"

#include "error.h"
#include "json_util.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONFIG_MAX_BYTES (1u << 20)
#define DIM_MAX (1u << 24)  /* no dimension of a sane model is larger; keeps products far from overflow */

/* A required positive integer key. */
static int need_int(const cJSON *root, const char *key, int *out, const char *what)
{
	uint64_t v;
	int rc = json_get_u64(root, key, DIM_MAX, &v, DSM_ECONFIG, what);
	if (rc == -1)
		return dsm_fail(DSM_ECONFIG, "%s: missing key '%s'", what, key);
	if (rc < 0)
		return rc;
	if (v == 0)
		return dsm_fail(DSM_ECONFIG, "%s: key '%s' must be positive", what, key);
	*out = (int)v;
	return 0;
}

/* An optional non-negative integer key with a default. */
static int opt_int(const cJSON *root, const char *key, int def, int *out, const char *what)
{
	uint64_t v;
	int rc = json_get_u64(root, key, DIM_MAX, &v, DSM_ECONFIG, what);
	if (rc == -1) {
		*out = def;
		return 0;
	}
	if (rc < 0)
		return rc;
	*out = (int)v;
	return 0;
}

static int need_double(const cJSON *root, const char *key, double *out, const char *what)
{
	int rc = json_get_double(root, key, out, DSM_ECONFIG, what);
	if (rc == -1)
		return dsm_fail(DSM_ECONFIG, "%s: missing key '%s'", what, key);
	return rc;
}

static int opt_double(const cJSON *root, const char *key, double def, double *out, const char *what)
{
	int rc = json_get_double(root, key, out, DSM_ECONFIG, what);
	if (rc == -1) {
		*out = def;
		return 0;
	}
	return rc;
}

static int parse_rope_scaling(struct dsm_config *c, const cJSON *root, const char *what)
{
	const cJSON *rs = cJSON_GetObjectItemCaseSensitive(root, "rope_scaling");
	struct dsm_rope_scaling *r = &c->rope_scaling;
	memset(r, 0, sizeof *r);
	if (!rs || cJSON_IsNull(rs))
		return 0;
	if (!cJSON_IsObject(rs))
		return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling' must be an object", what);
	const cJSON *type = cJSON_GetObjectItemCaseSensitive(rs, "type");
	if (!type)
		type = cJSON_GetObjectItemCaseSensitive(rs, "rope_type");
	if (!cJSON_IsString(type))
		return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling.type' missing or not a string", what);
	if (strcmp(type->valuestring, "yarn") != 0)
		return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling.type' is '%s'; only 'yarn' is supported",
				what, type->valuestring);
	r->yarn = 1;
	static const char *const keys[] = { "factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim" };
	double *dst[] = { &r->factor, &r->beta_fast, &r->beta_slow, &r->mscale, &r->mscale_all_dim };
	for (int i = 0; i < 5; i++) {
		int rc = json_get_double(rs, keys[i], dst[i], DSM_ECONFIG, what);
		if (rc == -1)
			return dsm_fail(DSM_ECONFIG, "%s: missing key 'rope_scaling.%s'", what, keys[i]);
		if (rc < 0)
			return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling.%s' must be a finite number", what, keys[i]);
	}
	uint64_t omax;
	int rc = json_get_u64(rs, "original_max_position_embeddings", DIM_MAX, &omax, DSM_ECONFIG, what);
	if (rc == -1)
		return dsm_fail(DSM_ECONFIG, "%s: missing key 'rope_scaling.original_max_position_embeddings'", what);
	if (rc < 0 || omax == 0)
		return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling.original_max_position_embeddings' must be a "
				"positive integer", what);
	r->original_max_position_embeddings = (int)omax;
	if (!(r->factor >= 1.0))
		return dsm_fail(DSM_ECONFIG, "%s: key 'rope_scaling.factor' must be >= 1", what);
	if (!(r->beta_fast > 0 && r->beta_slow > 0 && r->beta_fast > r->beta_slow))
		return dsm_fail(DSM_ECONFIG, "%s: keys 'rope_scaling.beta_fast' and 'beta_slow' must be positive "
				"with beta_fast > beta_slow", what);
	return 0;
}

static int parse_quantization(struct dsm_config *c, const cJSON *root, const char *what)
{
	const cJSON *q = cJSON_GetObjectItemCaseSensitive(root, "quantization_config");
	c->weight_block[0] = c->weight_block[1] = 128;
	if (!q || cJSON_IsNull(q))
		return 0;
	if (!cJSON_IsObject(q))
		return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config' must be an object", what);
	const cJSON *method = cJSON_GetObjectItemCaseSensitive(q, "quant_method");
	if (!cJSON_IsString(method) || strcmp(method->valuestring, "fp8") != 0)
		return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config.quant_method' must be \"fp8\"", what);
	const cJSON *fmt = cJSON_GetObjectItemCaseSensitive(q, "fmt");
	if (fmt && (!cJSON_IsString(fmt) || strcmp(fmt->valuestring, "e4m3") != 0))
		return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config.fmt' must be \"e4m3\"", what);
	const cJSON *sf = cJSON_GetObjectItemCaseSensitive(q, "scale_fmt");
	if (sf && !cJSON_IsNull(sf)) {
		if (!cJSON_IsString(sf))
			return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config.scale_fmt' must be a string", what);
		c->scale_ue8m0 = strcmp(sf->valuestring, "ue8m0") == 0;
	}
	const cJSON *bs = cJSON_GetObjectItemCaseSensitive(q, "weight_block_size");
	if (bs) {
		uint64_t b0, b1;
		if (!cJSON_IsArray(bs) || cJSON_GetArraySize(bs) != 2 ||
		    json_number_to_u64(cJSON_GetArrayItem(bs, 0), 4096, &b0) ||
		    json_number_to_u64(cJSON_GetArrayItem(bs, 1), 4096, &b1))
			return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config.weight_block_size' must be two "
					"integers", what);
		if (b0 != 128 || b1 != 128)
			return dsm_fail(DSM_ECONFIG, "%s: key 'quantization_config.weight_block_size' is [%llu, %llu]; "
					"only [128, 128] is supported", what, (unsigned long long)b0,
					(unsigned long long)b1);
	}
	c->fp8 = 1;
	return 0;
}

static int check_consistency(const struct dsm_config *c, const char *what)
{
#define REQUIRE(cond, ...) do { if (!(cond)) return dsm_fail(DSM_ECONFIG, __VA_ARGS__); } while (0)
	REQUIRE(c->first_k_dense_replace <= c->num_hidden_layers,
		"%s: key 'first_k_dense_replace' (%d) exceeds 'num_hidden_layers' (%d)", what,
		c->first_k_dense_replace, c->num_hidden_layers);
	REQUIRE(c->n_routed_experts % c->n_group == 0,
		"%s: key 'n_routed_experts' (%d) must be divisible by 'n_group' (%d)", what,
		c->n_routed_experts, c->n_group);
	REQUIRE(c->topk_group <= c->n_group, "%s: key 'topk_group' (%d) exceeds 'n_group' (%d)", what,
		c->topk_group, c->n_group);
	REQUIRE(c->num_experts_per_tok <= c->topk_group * (c->n_routed_experts / c->n_group),
		"%s: key 'num_experts_per_tok' (%d) exceeds the experts of the 'topk_group' kept groups", what,
		c->num_experts_per_tok);
	REQUIRE(c->n_routed_experts / c->n_group >= 2 || c->n_group == 1,
		"%s: keys 'n_routed_experts'/'n_group' leave fewer than 2 experts per group", what);
	REQUIRE(c->qk_rope_head_dim % 2 == 0, "%s: key 'qk_rope_head_dim' (%d) must be even", what,
		c->qk_rope_head_dim);
	if (c->has_indexer) {
		REQUIRE(c->index_head_dim >= c->qk_rope_head_dim,
			"%s: key 'index_head_dim' (%d) must be at least 'qk_rope_head_dim' (%d)", what,
			c->index_head_dim, c->qk_rope_head_dim);
		REQUIRE((c->index_head_dim & (c->index_head_dim - 1)) == 0,
			"%s: key 'index_head_dim' (%d) must be a power of two (Hadamard rotation)", what,
			c->index_head_dim);
	}
	REQUIRE(c->bos_token_id < c->vocab_size && c->eos_token_id < c->vocab_size,
		"%s: keys 'bos_token_id'/'eos_token_id' must be below 'vocab_size' (%d)", what, c->vocab_size);
	REQUIRE(c->rms_norm_eps > 0 && c->rms_norm_eps < 1, "%s: key 'rms_norm_eps' must be in (0, 1)", what);
	REQUIRE(c->rope_theta > 1, "%s: key 'rope_theta' must be > 1", what);
	REQUIRE(c->routed_scaling_factor > 0, "%s: key 'routed_scaling_factor' must be positive", what);
	/* Tensor byte sizes must stay far from overflow: the largest tensor is experts or embeddings. */
	REQUIRE((double)c->vocab_size * c->hidden_size < 1e12 &&
		(double)c->num_attention_heads * (c->qk_nope_head_dim + c->qk_rope_head_dim) * c->q_lora_rank < 1e12,
		"%s: dimensions too large", what);
#undef REQUIRE
	return 0;
}

int dsm_config_parse(struct dsm_config *c, const char *text, size_t len, const char *what)
{
	memset(c, 0, sizeof *c);
	cJSON *root = json_parse(text, len, what);
	if (!root)
		return DSM_EJSON;
	int rc = 0;
	if (!cJSON_IsObject(root)) {
		rc = dsm_fail(DSM_EJSON, "%s: the top level must be a JSON object", what);
		goto out;
	}

	const cJSON *mt = cJSON_GetObjectItemCaseSensitive(root, "model_type");
	if (!cJSON_IsString(mt)) {
		rc = dsm_fail(DSM_ECONFIG, "%s: missing key 'model_type' (string)", what);
		goto out;
	}
	if (strcmp(mt->valuestring, "deepseek_v32") != 0 && strcmp(mt->valuestring, "deepseek_v3") != 0) {
		rc = dsm_fail(DSM_ECONFIG, "%s: key 'model_type' is '%.40s'; dsm runs deepseek_v32 and deepseek_v3",
			      what, mt->valuestring);
		goto out;
	}
	snprintf(c->model_type, sizeof c->model_type, "%s", mt->valuestring);

	struct { const char *key; int *dst; } ints[] = {
		{ "hidden_size", &c->hidden_size },
		{ "num_hidden_layers", &c->num_hidden_layers },
		{ "intermediate_size", &c->intermediate_size },
		{ "moe_intermediate_size", &c->moe_intermediate_size },
		{ "n_routed_experts", &c->n_routed_experts },
		{ "n_shared_experts", &c->n_shared_experts },
		{ "num_experts_per_tok", &c->num_experts_per_tok },
		{ "n_group", &c->n_group },
		{ "topk_group", &c->topk_group },
		{ "num_attention_heads", &c->num_attention_heads },
		{ "q_lora_rank", &c->q_lora_rank },
		{ "kv_lora_rank", &c->kv_lora_rank },
		{ "qk_nope_head_dim", &c->qk_nope_head_dim },
		{ "qk_rope_head_dim", &c->qk_rope_head_dim },
		{ "v_head_dim", &c->v_head_dim },
		{ "vocab_size", &c->vocab_size },
		{ "max_position_embeddings", &c->max_position_embeddings },
	};
	for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
		if ((rc = need_int(root, ints[i].key, ints[i].dst, what)) < 0)
			goto out;
	if ((rc = opt_int(root, "first_k_dense_replace", 0, &c->first_k_dense_replace, what)) < 0 ||
	    (rc = opt_int(root, "num_nextn_predict_layers", 0, &c->num_nextn_predict_layers, what)) < 0 ||
	    (rc = opt_int(root, "bos_token_id", 0, &c->bos_token_id, what)) < 0 ||
	    (rc = opt_int(root, "eos_token_id", 1, &c->eos_token_id, what)) < 0)
		goto out;
	/* A V3.2 config without index_* keys is plain V3 (dense MLA). */
	c->has_indexer = strcmp(c->model_type, "deepseek_v32") == 0 &&
			 cJSON_GetObjectItemCaseSensitive(root, "index_n_heads") != NULL;
	if (c->has_indexer) {
		if ((rc = need_int(root, "index_n_heads", &c->index_n_heads, what)) < 0 ||
		    (rc = need_int(root, "index_head_dim", &c->index_head_dim, what)) < 0 ||
		    (rc = need_int(root, "index_topk", &c->index_topk, what)) < 0)
			goto out;
	}

	const cJSON *tm = cJSON_GetObjectItemCaseSensitive(root, "topk_method");
	if (tm && (!cJSON_IsString(tm) || strcmp(tm->valuestring, "noaux_tc") != 0)) {
		rc = dsm_fail(DSM_ECONFIG, "%s: key 'topk_method' must be \"noaux_tc\"", what);
		goto out;
	}
	const cJSON *sf = cJSON_GetObjectItemCaseSensitive(root, "scoring_func");
	if (sf && (!cJSON_IsString(sf) || strcmp(sf->valuestring, "sigmoid") != 0)) {
		rc = dsm_fail(DSM_ECONFIG, "%s: key 'scoring_func' must be \"sigmoid\"", what);
		goto out;
	}
	c->norm_topk_prob = 1;
	if ((rc = json_get_bool(root, "norm_topk_prob", &c->norm_topk_prob, DSM_ECONFIG, what)) < -1)
		goto out;
	if ((rc = need_double(root, "routed_scaling_factor", &c->routed_scaling_factor, what)) < 0 ||
	    (rc = opt_double(root, "rms_norm_eps", 1e-6, &c->rms_norm_eps, what)) < 0 ||
	    (rc = opt_double(root, "rope_theta", 10000.0, &c->rope_theta, what)) < 0 ||
	    (rc = parse_rope_scaling(c, root, what)) < 0 ||
	    (rc = parse_quantization(c, root, what)) < 0 ||
	    (rc = check_consistency(c, what)) < 0)
		goto out;
	rc = 0;
out:
	cJSON_Delete(root);
	return rc;
}

int dsm_config_load(struct dsm_config *c, const char *path)
{
	char *text;
	size_t len;
	int rc = read_file(path, CONFIG_MAX_BYTES, &text, &len);
	if (rc < 0)
		return rc == DSM_EMISSING ? dsm_fail(DSM_EMISSING, "%s: missing (every checkpoint has config.json)",
						     path) : rc;
	rc = dsm_config_parse(c, text, len, path);
	free(text);
	return rc;
}
