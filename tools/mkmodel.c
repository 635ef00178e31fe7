#include "mkmodel.h"

#include "dtype.h"
#include "error.h"
#include "rng.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Real model defaults shared by every preset (docs MODEL.md section 1). */
#define COMMON \
	.model_type = "deepseek_v32", .has_indexer = 1, .norm_topk_prob = 1, .routed_scaling_factor = 2.5, \
	.rms_norm_eps = 1e-6, .rope_theta = 10000, .fp8 = 1, .weight_block = { 128, 128 }, \
	.num_nextn_predict_layers = 1, .bos_token_id = 0, .eos_token_id = 1, \
	.rope_scaling = { .yarn = 1, .factor = 40, .original_max_position_embeddings = 4096, \
			  .beta_fast = 32, .beta_slow = 1, .mscale = 1, .mscale_all_dim = 1 }

const struct mkmodel_preset mkmodel_presets[] = {
	{ "tiny", "a few MB: every feature, tiny dims (2 dense + 3 MoE layers, ragged 96 and 192 dims)",
	  { COMMON, .hidden_size = 256, .num_hidden_layers = 5, .first_k_dense_replace = 2,
	    .intermediate_size = 640, .moe_intermediate_size = 96, .n_routed_experts = 16,
	    .n_shared_experts = 1, .num_experts_per_tok = 4, .n_group = 4, .topk_group = 2,
	    .num_attention_heads = 4, .q_lora_rank = 192, .kv_lora_rank = 128, .qk_nope_head_dim = 64,
	    .qk_rope_head_dim = 32, .v_head_dim = 64, .index_n_heads = 4, .index_head_dim = 64,
	    .index_topk = 16, .vocab_size = 1024, .max_position_embeddings = 4096 },
	  1u << 20, 0 },
	{ "small", "about 1.9 GB (half of it the real vocabulary's embeddings): 8 layers, 64 experts",
	  { COMMON, .hidden_size = 1024, .num_hidden_layers = 8, .first_k_dense_replace = 1,
	    .intermediate_size = 2816, .moe_intermediate_size = 512, .n_routed_experts = 64,
	    .n_shared_experts = 1, .num_experts_per_tok = 6, .n_group = 8, .topk_group = 4,
	    .num_attention_heads = 16, .q_lora_rank = 384, .kv_lora_rank = 256, .qk_nope_head_dim = 64,
	    .qk_rope_head_dim = 64, .v_head_dim = 64, .index_n_heads = 16, .index_head_dim = 128,
	    .index_topk = 256, .vocab_size = 129280, .max_position_embeddings = 163840 },
	  256u << 20, 0 },
	{ "mid", "about 4.4 GB: hidden 2048, 9 layers, 64 experts of 1024, top 8 (the peer comparison's MoE)",
	  { COMMON, .hidden_size = 2048, .num_hidden_layers = 9, .first_k_dense_replace = 1,
	    .intermediate_size = 5632, .moe_intermediate_size = 1024, .n_routed_experts = 64,
	    .n_shared_experts = 1, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4,
	    .num_attention_heads = 16, .q_lora_rank = 768, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
	    .qk_rope_head_dim = 64, .v_head_dim = 128, .index_n_heads = 32, .index_head_dim = 128,
	    .index_topk = 512, .vocab_size = 129280, .max_position_embeddings = 163840 },
	  1ull << 30, 0 },
	{ "wide", "about 7 GB: the real matrix shapes (hidden 7168, 128 heads, experts 2048 x 7168), 4 layers, 16 "
	  "experts",
	  { COMMON, .hidden_size = 7168, .num_hidden_layers = 4, .first_k_dense_replace = 1,
	    .intermediate_size = 18432, .moe_intermediate_size = 2048, .n_routed_experts = 16,
	    .n_shared_experts = 1, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4,
	    .num_attention_heads = 128, .q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
	    .qk_rope_head_dim = 64, .v_head_dim = 128, .index_n_heads = 64, .index_head_dim = 128,
	    .index_topk = 2048, .vocab_size = 129280, .max_position_embeddings = 163840 },
	  4400000000ull, 0 },
	{ "medium", "about 16 GB: 16 layers, 128 experts of 1024 (for streaming work)",
	  { COMMON, .hidden_size = 2048, .num_hidden_layers = 16, .first_k_dense_replace = 1,
	    .intermediate_size = 5632, .moe_intermediate_size = 1024, .n_routed_experts = 128,
	    .n_shared_experts = 1, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4,
	    .num_attention_heads = 16, .q_lora_rank = 768, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
	    .qk_rope_head_dim = 64, .v_head_dim = 128, .index_n_heads = 32, .index_head_dim = 128,
	    .index_topk = 512, .vocab_size = 129280, .max_position_embeddings = 163840 },
	  1ull << 30, 0 },
	{ "full", "the real 685 B shape as sparse files (headers real, data holes)",
	  { COMMON, .hidden_size = 7168, .num_hidden_layers = 61, .first_k_dense_replace = 3,
	    .intermediate_size = 18432, .moe_intermediate_size = 2048, .n_routed_experts = 256,
	    .n_shared_experts = 1, .num_experts_per_tok = 8, .n_group = 8, .topk_group = 4,
	    .num_attention_heads = 128, .q_lora_rank = 1536, .kv_lora_rank = 512, .qk_nope_head_dim = 128,
	    .qk_rope_head_dim = 64, .v_head_dim = 128, .index_n_heads = 64, .index_head_dim = 128,
	    .index_topk = 2048, .vocab_size = 129280, .max_position_embeddings = 163840 },
	  4400000000ull, 1 },
	{ .name = NULL },
};

const struct mkmodel_preset *mkmodel_preset(const char *name)
{
	for (const struct mkmodel_preset *p = mkmodel_presets; p->name; p++)
		if (strcmp(p->name, name) == 0)
			return p;
	return NULL;
}

static enum dsm_dtype storage_dtype(const struct mkmodel_options *o, const struct dsm_layout_entry *e)
{
	switch (e->wtype) {
	case DSM_W_QUANT: return o->config.fp8 ? DSM_F8_E4M3 : DSM_BF16;
	case DSM_W_F32: return DSM_F32;
	default: return DSM_BF16;
	}
}

static int add_tensor(struct mkmodel_plan *p, size_t *cap, const struct mkmodel_tensor *t)
{
	if (p->n_tensors == *cap) {
		*cap = *cap ? 2 * *cap : 1024;
		struct mkmodel_tensor *v = realloc(p->tensors, *cap * sizeof *v);
		if (!v)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		p->tensors = v;
	}
	p->tensors[p->n_tensors++] = *t;
	return 0;
}

int mkmodel_plan(struct mkmodel_plan *p, const struct mkmodel_options *o)
{
	memset(p, 0, sizeof *p);
	int rc = dsm_layout_build(&o->config, &p->layout, &p->n_layout);
	if (rc < 0)
		return rc;
	size_t cap = 0;
	uint64_t in_shard = 0;
	for (size_t i = 0; i < p->n_layout; i++) {
		const struct dsm_layout_entry *e = &p->layout[i];
		struct mkmodel_tensor t = { .entry = e, .ndim = e->ndim, .shape = { e->shape[0], e->shape[1] } };
		snprintf(t.name, sizeof t.name, "%s", e->name);
		t.dtype = storage_dtype(o, e);
		for (int pass = 0; pass < 2; pass++) {
			if (pass == 1) {
				if (t.dtype != DSM_F8_E4M3)
					break;
				/* The block scale follows its weight, in the same shard. */
				snprintf(t.name, sizeof t.name, "%s_scale_inv", e->name);
				t.dtype = DSM_F32;
				t.is_scale = 1;
				t.shape[0] = dsm_scale_blocks(e->shape[0]);
				t.shape[1] = dsm_scale_blocks(e->shape[1]);
			}
			t.nbytes = t.shape[0] * (t.ndim > 1 ? t.shape[1] : 1) * dsm_dtype_size(t.dtype);
			if (pass == 0 && in_shard > 0 && in_shard + t.nbytes > o->shard_bytes) {
				p->n_shards++;
				in_shard = 0;
			}
			t.shard = p->n_shards;
			t.begin = in_shard;
			in_shard += t.nbytes;
			p->total_bytes += t.nbytes;
			if ((rc = add_tensor(p, &cap, &t)) < 0) {
				mkmodel_plan_free(p);
				return rc;
			}
		}
	}
	p->n_shards++;
	return 0;
}

void mkmodel_plan_free(struct mkmodel_plan *p)
{
	free(p->layout);
	free(p->tensors);
	memset(p, 0, sizeof *p);
}

static int ends_with(const char *s, const char *suffix)
{
	size_t n = strlen(s), m = strlen(suffix);
	return n >= m && strcmp(s + n - m, suffix) == 0;
}

/* Mean square of the FP8 codes drawn below (sign random, exponent 0..7, any mantissa: subnormals included,
 * NaN never, since NaN codes have bit 6 set). */
static double fp8_code_mean_square(void)
{
	double s = 0;
	for (int c = 0; c < 64; c++)
		s += (double)dsm_fp8_table[c] * dsm_fp8_table[c];
	return s / 64;
}

static void put_bf16(void *buf, uint64_t i, float v)
{
	uint16_t b = dsm_f32_to_bf16(v);
	memcpy((char *)buf + 2 * i, &b, 2);
}

/* Weights are random with a scale that keeps activations O(1) through every layer: each projection has
 * variance 1/fan_in; norms near 1; embeddings of unit variance. */
void mkmodel_tensor_data(const struct mkmodel_options *o, const struct mkmodel_tensor *t, void *buf)
{
	struct rng r;
	rng_seed(&r, o->seed, t->name);
	const struct dsm_layout_entry *e = t->entry;
	uint64_t n = t->shape[0] * (t->ndim > 1 ? t->shape[1] : 1);
	uint64_t fan_in = e->ndim > 1 ? e->shape[1] : 1;

	if (t->is_scale) {
		float base = (float)(1.0 / sqrt((double)fan_in * fp8_code_mean_square()));
		for (uint64_t i = 0; i < n; i++) {
			float v = base * (1.0f + 0.25f * rng_uniform(&r));
			memcpy((char *)buf + 4 * i, &v, 4);
		}
	} else if (t->dtype == DSM_F8_E4M3) {
		uint8_t *b = buf;
		uint64_t i = 0;
		for (; i + 8 <= n; i += 8) {
			uint64_t x = rng_next(&r) & 0xbfbfbfbfbfbfbfbfull;
			memcpy(b + i, &x, 8);
		}
		for (; i < n; i++)
			b[i] = (uint8_t)(rng_next(&r) & 0xbf);
	} else if (ends_with(t->name, "e_score_correction_bias")) {
		/* Without skew: tiny noise. With skew s: bias -s/4 * ln(rank) over a random ranking of the
		 * experts, so the popularity of experts falls off roughly as a Zipf law. */
		float *v = buf;
		uint32_t *rank = malloc(n * sizeof *rank);
		for (uint64_t i = 0; i < n; i++)
			rank[i] = (uint32_t)i;
		for (uint64_t i = n; rank && i > 1; i--) {
			uint64_t j = rng_next(&r) % i;
			uint32_t tmp = rank[i - 1];
			rank[i - 1] = rank[j];
			rank[j] = tmp;
		}
		for (uint64_t i = 0; i < n; i++) {
			float noise = 0.01f * rng_uniform(&r);
			float skew = rank ? (float)(-o->routing_skew / 4 * log(1.0 + rank[i])) : 0;
			memcpy(&v[i], &(float){ noise + skew }, 4);
		}
		free(rank);
	} else if (e->ndim == 1) {
		int bias = ends_with(t->name, ".bias");
		for (uint64_t i = 0; i < n; i++) {
			float v = bias ? 0.1f * rng_uniform(&r) : 1.0f + 0.1f * rng_uniform(&r);
			if (t->dtype == DSM_F32)
				memcpy((char *)buf + 4 * i, &v, 4);
			else
				put_bf16(buf, i, v);
		}
	} else {
		float std = ends_with(t->name, "embed_tokens.weight") ? 1.0f : (float)(1.0 / sqrt((double)fan_in));
		float a = std * 1.7320508f; /* uniform on [-a, a] has variance std^2 */
		for (uint64_t i = 0; i < n; i++) {
			float v = a * rng_uniform(&r);
			if (t->dtype == DSM_F32)
				memcpy((char *)buf + 4 * i, &v, 4);
			else
				put_bf16(buf, i, v);
		}
	}
}

static int write_json(const char *dir, const char *file, cJSON *doc)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", dir, file);
	char *text = cJSON_Print(doc);
	if (!text)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	FILE *f = fopen(path, "w");
	int rc = 0;
	if (!f || fputs(text, f) < 0 || fputc('\n', f) < 0)
		rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	if (f && fclose(f) != 0 && rc == 0)
		rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	free(text);
	return rc;
}

int mkmodel_write_config(const struct mkmodel_options *o, const char *dir)
{
	const struct dsm_config *c = &o->config;
	cJSON *j = cJSON_CreateObject();
	cJSON *arch = cJSON_AddArrayToObject(j, "architectures");
	cJSON_AddItemToArray(arch, cJSON_CreateString(c->has_indexer ? "DeepseekV32ForCausalLM"
								      : "DeepseekV3ForCausalLM"));
	cJSON_AddStringToObject(j, "model_type", c->model_type);
	struct { const char *key; int v; } ints[] = {
		{ "bos_token_id", c->bos_token_id }, { "eos_token_id", c->eos_token_id },
		{ "first_k_dense_replace", c->first_k_dense_replace }, { "hidden_size", c->hidden_size },
		{ "intermediate_size", c->intermediate_size }, { "kv_lora_rank", c->kv_lora_rank },
		{ "max_position_embeddings", c->max_position_embeddings },
		{ "moe_intermediate_size", c->moe_intermediate_size }, { "moe_layer_freq", 1 },
		{ "n_group", c->n_group }, { "n_routed_experts", c->n_routed_experts },
		{ "n_shared_experts", c->n_shared_experts }, { "num_attention_heads", c->num_attention_heads },
		{ "num_experts_per_tok", c->num_experts_per_tok }, { "num_hidden_layers", c->num_hidden_layers },
		{ "num_key_value_heads", c->num_attention_heads },
		{ "num_nextn_predict_layers", c->num_nextn_predict_layers }, { "q_lora_rank", c->q_lora_rank },
		{ "qk_nope_head_dim", c->qk_nope_head_dim }, { "qk_rope_head_dim", c->qk_rope_head_dim },
		{ "topk_group", c->topk_group }, { "v_head_dim", c->v_head_dim }, { "vocab_size", c->vocab_size },
	};
	for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
		cJSON_AddNumberToObject(j, ints[i].key, ints[i].v);
	if (c->has_indexer) {
		cJSON_AddNumberToObject(j, "index_head_dim", c->index_head_dim);
		cJSON_AddNumberToObject(j, "index_n_heads", c->index_n_heads);
		cJSON_AddNumberToObject(j, "index_topk", c->index_topk);
	}
	cJSON_AddBoolToObject(j, "norm_topk_prob", c->norm_topk_prob);
	cJSON_AddNumberToObject(j, "routed_scaling_factor", c->routed_scaling_factor);
	cJSON_AddNumberToObject(j, "rms_norm_eps", c->rms_norm_eps);
	cJSON_AddNumberToObject(j, "rope_theta", c->rope_theta);
	cJSON_AddStringToObject(j, "scoring_func", "sigmoid");
	cJSON_AddStringToObject(j, "topk_method", "noaux_tc");
	cJSON_AddStringToObject(j, "hidden_act", "silu");
	cJSON_AddStringToObject(j, "torch_dtype", "bfloat16");
	cJSON_AddBoolToObject(j, "tie_word_embeddings", 0);
	if (c->rope_scaling.yarn) {
		const struct dsm_rope_scaling *r = &c->rope_scaling;
		cJSON *rs = cJSON_AddObjectToObject(j, "rope_scaling");
		cJSON_AddNumberToObject(rs, "beta_fast", r->beta_fast);
		cJSON_AddNumberToObject(rs, "beta_slow", r->beta_slow);
		cJSON_AddNumberToObject(rs, "factor", r->factor);
		cJSON_AddNumberToObject(rs, "mscale", r->mscale);
		cJSON_AddNumberToObject(rs, "mscale_all_dim", r->mscale_all_dim);
		cJSON_AddNumberToObject(rs, "original_max_position_embeddings", r->original_max_position_embeddings);
		cJSON_AddStringToObject(rs, "type", "yarn");
	}
	if (c->fp8) {
		cJSON *q = cJSON_AddObjectToObject(j, "quantization_config");
		cJSON_AddStringToObject(q, "activation_scheme", "dynamic");
		cJSON_AddStringToObject(q, "fmt", "e4m3");
		cJSON_AddStringToObject(q, "quant_method", "fp8");
		if (c->scale_ue8m0)
			cJSON_AddStringToObject(q, "scale_fmt", "ue8m0");
		int block[2] = { 128, 128 };
		cJSON_AddItemToObject(q, "weight_block_size", cJSON_CreateIntArray(block, 2));
	}
	int rc = write_json(dir, "config.json", j);
	cJSON_Delete(j);
	return rc;
}

static void shard_name(char *buf, size_t size, int i, int n)
{
	snprintf(buf, size, "model-%05d-of-%05d.safetensors", i + 1, n);
}

static int write_all(int fd, const void *buf, uint64_t len, uint64_t offset, const char *path)
{
	uint64_t done = 0;
	while (done < len) {
		ssize_t w = pwrite(fd, (const char *)buf + done, len - done, (off_t)(offset + done));
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return dsm_fail(DSM_EIO, "%s: write at offset %llu failed: %s", path,
					(unsigned long long)(offset + done), w < 0 ? strerror(errno) : "no progress");
		done += (uint64_t)w;
	}
	return 0;
}

/* One shard: header JSON (padded with spaces to a multiple of 8, as the reference writer does), then the
 * data of its tensors in plan order. */
static int write_shard(const struct mkmodel_options *o, const struct mkmodel_plan *p, int shard,
		       const char *dir, uint64_t *done_bytes)
{
	char file[64], path[4096];
	shard_name(file, sizeof file, shard, p->n_shards);
	snprintf(path, sizeof path, "%s/%s", dir, file);
	cJSON *h = cJSON_CreateObject();
	cJSON *meta = cJSON_AddObjectToObject(h, "__metadata__");
	cJSON_AddStringToObject(meta, "format", "pt");
	uint64_t data_size = 0;
	for (size_t i = 0; i < p->n_tensors; i++) {
		const struct mkmodel_tensor *t = &p->tensors[i];
		if (t->shard != shard)
			continue;
		cJSON *e = cJSON_AddObjectToObject(h, t->name);
		cJSON_AddStringToObject(e, "dtype", dsm_dtype_name(t->dtype));
		cJSON *shape = cJSON_AddArrayToObject(e, "shape");
		for (int d = 0; d < t->ndim; d++)
			cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
		cJSON *off = cJSON_AddArrayToObject(e, "data_offsets");
		cJSON_AddItemToArray(off, cJSON_CreateNumber((double)t->begin));
		cJSON_AddItemToArray(off, cJSON_CreateNumber((double)(t->begin + t->nbytes)));
		data_size = t->begin + t->nbytes;
	}
	char *json = cJSON_PrintUnformatted(h);
	cJSON_Delete(h);
	if (!json)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	size_t len = strlen(json);
	size_t padded = (len + 7) & ~(size_t)7;
	unsigned char *head = malloc(8 + padded);
	if (!head) {
		free(json);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	for (int i = 0; i < 8; i++)
		head[i] = (unsigned char)((uint64_t)padded >> (8 * i));
	memcpy(head + 8, json, len);
	memset(head + 8 + len, ' ', padded - len);
	free(json);

	int rc = 0;
	void *buf = NULL;
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
		goto out;
	}
	uint64_t data_start = 8 + padded;
	if ((rc = write_all(fd, head, data_start, 0, path)) < 0)
		goto out;
	if (o->sparse) {
		if (ftruncate(fd, (off_t)(data_start + data_size)) != 0)
			rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
		*done_bytes += data_size;
		goto out;
	}
	for (size_t i = 0; i < p->n_tensors; i++) {
		const struct mkmodel_tensor *t = &p->tensors[i];
		if (t->shard != shard)
			continue;
		void *nb = realloc(buf, t->nbytes ? t->nbytes : 1);
		if (!nb) {
			rc = dsm_fail(DSM_ENOMEM, "out of memory for tensor '%s'", t->name);
			goto out;
		}
		buf = nb;
		mkmodel_tensor_data(o, t, buf);
		if ((rc = write_all(fd, buf, t->nbytes, data_start + t->begin, path)) < 0)
			goto out;
		*done_bytes += t->nbytes;
	}
out:
	if (fd >= 0 && close(fd) != 0 && rc == 0)
		rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	free(buf);
	free(head);
	return rc;
}

static int write_index(const struct mkmodel_plan *p, const char *dir)
{
	cJSON *j = cJSON_CreateObject();
	cJSON *meta = cJSON_AddObjectToObject(j, "metadata");
	cJSON_AddNumberToObject(meta, "total_size", (double)p->total_bytes);
	cJSON *map = cJSON_AddObjectToObject(j, "weight_map");
	char file[64];
	for (size_t i = 0; i < p->n_tensors; i++) {
		shard_name(file, sizeof file, p->tensors[i].shard, p->n_shards);
		cJSON_AddStringToObject(map, p->tensors[i].name, file);
	}
	int rc = write_json(dir, "model.safetensors.index.json", j);
	cJSON_Delete(j);
	return rc;
}

int mkmodel_write(const struct mkmodel_options *o, const char *dir)
{
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		return dsm_fail(DSM_EIO, "%s: %s", dir, strerror(errno));
	struct mkmodel_plan p;
	int rc = mkmodel_plan(&p, o);
	if (rc < 0)
		return rc;
	if ((rc = mkmodel_write_config(o, dir)) < 0 || (rc = write_index(&p, dir)) < 0)
		goto out;
	uint64_t done = 0;
	for (int s = 0; s < p.n_shards; s++) {
		if ((rc = write_shard(o, &p, s, dir, &done)) < 0)
			goto out;
		if (!o->quiet)
			fprintf(stderr, "\r  shard %d/%d, %.1f%% of %.2f GB", s + 1, p.n_shards,
				100.0 * (double)done / (double)p.total_bytes, (double)p.total_bytes / 1e9);
	}
	if (!o->quiet)
		fprintf(stderr, "\n");
out:
	mkmodel_plan_free(&p);
	return rc;
}
