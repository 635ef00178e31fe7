/* Placement plans: parsing and validation against a model's shape (tiny preset), every refusal with a clear
 * message, the JSON round trip, the example of docs/plan.md, and plans computed from budgets; the checkpoint
 * described for offload/ (struct dsm_store_model) with and without its mapping. */
#include "checkpoint.h"
#include "error.h"
#include "expert_store.h"
#include "mkmodel.h"
#include "plan.h"
#include "test_util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static struct dsm_moe_shape shape; /* tiny: 5 layers, 2 dense, 16 experts */

#define MODEL_TINY "\"model\": {\"model_type\": \"deepseek_v32\", \"num_hidden_layers\": 5, " \
	"\"first_k_dense_replace\": 2, \"n_routed_experts\": 16, \"hidden_size\": 256, \"moe_intermediate_size\": 96}"

static struct dsm_plan *parse(const char *text)
{
	struct dsm_plan *p = NULL;
	int rc = dsm_plan_parse(&p, text, strlen(text), "plan.json", &shape);
	CHECK(rc == 0, "plan rejected: %s\n%s", dsm_errmsg(), text);
	return p;
}

static void refuse(const char *why, const char *text, int code, const char *mention)
{
	struct dsm_plan *p = NULL;
	int rc = dsm_plan_parse(&p, text, strlen(text), "plan.json", &shape);
	CHECK(rc == code && !p, "%s: got %d (%s), want %d", why, rc, dsm_errmsg(), code);
	CHECK(strstr(dsm_errmsg(), mention) && strstr(dsm_errmsg(), "plan.json"), "%s: message '%s' lacks '%s'", why,
	      dsm_errmsg(), mention);
	dsm_plan_free(p);
}

static int tier_is(struct dsm_tier t, int kind, int index)
{
	return t.kind == kind && t.index == index;
}

static void test_parse(void)
{
	struct dsm_plan *p = parse("{\"format\": \"dsm-plan\", \"version\": 1, " MODEL_TINY ", "
				   "\"non_expert\": {\"default\": \"gpu:0\", \"embeddings\": \"dram:0\"}, "
				   "\"experts\": {\"default\": \"nvme\", \"layers\": {"
				   "\"2\": {\"gpu:0\": [0, \"3-5\"], \"dram:1\": [15]}, \"4\": {\"dram:0\": [\"0-15\"]}}}, "
				   "\"cache\": {\"policy\": \"pinned\", \"bytes\": 1048576}, \"comment\": \"hand made\"}");
	if (!p)
		return;
	CHECK(tier_is(p->non_expert[DSM_KIND_ATTENTION], DSM_TIER_GPU, 0), "attention on gpu:0");
	CHECK(tier_is(p->non_expert[DSM_KIND_EMBED], DSM_TIER_DRAM, 0), "embeddings in dram:0");
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 0), DSM_TIER_GPU, 0), "2/0");
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 1), DSM_TIER_NVME, 0), "2/1");
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 4), DSM_TIER_GPU, 0), "2/4");
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 15), DSM_TIER_DRAM, 1), "2/15");
	CHECK(tier_is(dsm_plan_expert_tier(p, 3, 7), DSM_TIER_NVME, 0), "3/7");
	CHECK(tier_is(dsm_plan_expert_tier(p, 4, 9), DSM_TIER_DRAM, 0), "4/9");
	CHECK(p->cache_policy == 2 && p->cache_bytes == 1048576, "cache");
	uint64_t n[DSM_TIER_KINDS];
	dsm_plan_count(p, n);
	CHECK(n[DSM_TIER_GPU] == 4 && n[DSM_TIER_DRAM] == 17 && n[DSM_TIER_NVME] == 27 && n[DSM_TIER_MAPPED] == 0,
	      "counts %llu %llu %llu",
	      (unsigned long long)n[0], (unsigned long long)n[1], (unsigned long long)n[2]);

	/* Round trip through the writer. */
	char *text = dsm_plan_to_json(p);
	CHECK(text != NULL, "to_json");
	struct dsm_plan *q = text ? parse(text) : NULL;
	if (q) {
		CHECK(memcmp(p->expert, q->expert, (size_t)5 * 16 * sizeof *p->expert) == 0, "round trip experts");
		CHECK(memcmp(p->non_expert, q->non_expert, sizeof p->non_expert) == 0, "round trip non-expert");
		CHECK(q->cache_policy == p->cache_policy && q->cache_bytes == p->cache_bytes, "round trip cache");
	}
	free(text);
	dsm_plan_free(q);
	dsm_plan_free(p);

	/* Minimal: everything defaults (non-expert in dram:0, experts on nvme). */
	p = parse("{\"format\": \"dsm-plan\", \"version\": 1, " MODEL_TINY "}");
	if (p) {
		CHECK(tier_is(p->non_expert[DSM_KIND_ATTENTION], DSM_TIER_DRAM, 0), "default non-expert");
		CHECK(tier_is(dsm_plan_expert_tier(p, 3, 3), DSM_TIER_NVME, 0), "default expert");
	}
	dsm_plan_free(p);
	p = parse("{\"format\": \"dsm-plan\", \"version\": 1, " MODEL_TINY ", \"non_expert\": \"gpu:3\"}");
	if (p)
		CHECK(tier_is(p->non_expert[DSM_KIND_SHARED], DSM_TIER_GPU, 3), "non_expert as one tier");
	dsm_plan_free(p);
}

static void test_refusals(void)
{
	const char *head = "{\"format\": \"dsm-plan\", \"version\": 1, " MODEL_TINY;
	char buf[2048];
#define WITH(tail) (snprintf(buf, sizeof buf, "%s%s", head, tail), buf)
	refuse("not JSON", "{\"format\": ", DSM_EJSON, "not valid JSON");
	refuse("not an object", "[1, 2]", DSM_EPLAN, "JSON object");
	refuse("no format", "{\"version\": 1}", DSM_EPLAN, "not a placement plan");
	refuse("version", "{\"format\": \"dsm-plan\", \"version\": 2}", DSM_EPLAN, "\"version\" must be 1");
	refuse("no model", "{\"format\": \"dsm-plan\", \"version\": 1}", DSM_EPLAN, "\"model\"");
	refuse("another model: experts", "{\"format\": \"dsm-plan\", \"version\": 1, \"model\": {\"model_type\": "
	       "\"deepseek_v32\", \"num_hidden_layers\": 5, \"first_k_dense_replace\": 2, \"n_routed_experts\": 256, "
	       "\"hidden_size\": 256, \"moe_intermediate_size\": 96}}", DSM_EPLAN,
	       "another model: model.n_routed_experts is 256, the checkpoint's config has 16");
	refuse("another model: type", "{\"format\": \"dsm-plan\", \"version\": 1, \"model\": {\"model_type\": "
	       "\"llama\"}}", DSM_EPLAN, "model.model_type is \"llama\"");
	refuse("model key missing", "{\"format\": \"dsm-plan\", \"version\": 1, \"model\": {\"num_hidden_layers\": 5}}",
	       DSM_EPLAN, "model.first_k_dense_replace is missing");
	refuse("fractional layers", "{\"format\": \"dsm-plan\", \"version\": 1, \"model\": {\"num_hidden_layers\": 5.5}}",
	       DSM_EPLAN, "model.num_hidden_layers must be");
	refuse("missing expert", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": [16]}}}}"), DSM_EPLAN,
	       "expert 16 does not exist (the checkpoint has experts 0-15");
	refuse("range past the end", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": [\"10-20\"]}}}}"), DSM_EPLAN,
	       "expert 20 does not exist");
	refuse("negative expert", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": [-1]}}}}"), DSM_EPLAN,
	       "expert -1 does not exist");
	refuse("backwards range", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": [\"5-2\"]}}}}"), DSM_EPLAN,
	       "range \"A-B\"");
	refuse("placed twice", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": [1, 2], \"gpu:0\": [\"2-4\"]}}}}"),
	       DSM_EPLAN, "expert 2 is placed twice");
	refuse("dense layer", WITH(", \"experts\": {\"layers\": {\"1\": {\"dram:0\": [1]}}}}"), DSM_EPLAN,
	       "experts.layers.1 is a dense layer");
	refuse("layer past the end", WITH(", \"experts\": {\"layers\": {\"5\": {\"dram:0\": [1]}}}}"), DSM_EPLAN,
	       "the checkpoint has layers 0-4");
	refuse("layer twice", WITH(", \"experts\": {\"layers\": {\"3\": {}, \"3\": {}}}}"), DSM_EPLAN, "appears twice");
	refuse("layer key", WITH(", \"experts\": {\"layers\": {\"3a\": {}}}}"), DSM_EPLAN, "a layer number");
	refuse("bad tier", WITH(", \"experts\": {\"layers\": {\"3\": {\"gpu:x\": [1]}}}}"), DSM_EPLAN, "a tier is");
	refuse("tier index", WITH(", \"experts\": {\"default\": \"dram:64\"}}"), DSM_EPLAN, "experts.default");
	refuse("non-expert on nvme", WITH(", \"non_expert\": {\"attention\": \"nvme\"}}"), DSM_EPLAN,
	       "non_expert.attention is \"nvme\"");
	refuse("unknown kind", WITH(", \"non_expert\": {\"lm_head\": \"gpu:0\"}}"), DSM_EPLAN, "unknown kind");
	refuse("unknown key", WITH(", \"expert\": {}}"), DSM_EPLAN, "unknown key \"expert\"");
	refuse("cache policy", WITH(", \"cache\": {\"policy\": \"mru\"}}"), DSM_EPLAN, "cache.policy");
	refuse("cache bytes", WITH(", \"cache\": {\"bytes\": -5}}"), DSM_EPLAN, "cache.bytes");
	refuse("list not array", WITH(", \"experts\": {\"layers\": {\"3\": {\"dram:0\": 4}}}}"), DSM_EPLAN,
	       "must be a list");
#undef WITH
	struct dsm_plan *p;
	CHECK(dsm_plan_load(&p, "no/such/plan.json", &shape) == DSM_EMISSING && strstr(dsm_errmsg(), "no/such/plan.json"),
	      "missing file: %s", dsm_errmsg());
}

static void test_budgets(void)
{
	struct dsm_plan_sizes sz = { .expert_bytes = 100, .non_expert_total = 1000 };
	struct dsm_plan *p;
	/* DRAM for the non-expert weights, the reserve and exactly ten experts: spread over the three MoE
	 * layers by rank (experts 0 of layers 2, 3, 4, then experts 1, ...): 4 + 3 + 3. */
	struct dsm_plan_budget b = { .dram_bytes = 1000 + 300 + 10 * 100 + 50, .dram_reserve = 300 };
	CHECK(dsm_plan_from_budgets(&p, &shape, &sz, &b, NULL) == 0, "budgets: %s", dsm_errmsg());
	uint64_t n[DSM_TIER_KINDS];
	dsm_plan_count(p, n);
	CHECK(n[DSM_TIER_DRAM] == 10 && n[DSM_TIER_GPU] == 0, "ten in dram: %llu", (unsigned long long)n[1]);
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 3), DSM_TIER_DRAM, 0) &&
	      tier_is(dsm_plan_expert_tier(p, 3, 3), DSM_TIER_NVME, 0) &&
	      tier_is(dsm_plan_expert_tier(p, 4, 2), DSM_TIER_DRAM, 0), "spread evenly");
	CHECK(tier_is(p->non_expert[DSM_KIND_ATTENTION], DSM_TIER_DRAM, 0), "non-expert in dram");
	dsm_plan_free(p);

	/* Hotness: the hottest go first, to the GPU while it has room. */
	double hot[5 * 16] = { 0 };
	hot[3 * 16 + 7] = 9;
	hot[4 * 16 + 1] = 8;
	hot[2 * 16 + 5] = 7;
	b = (struct dsm_plan_budget){ .vram_bytes = 1000 + 100, .dram_bytes = 100 + 5, .dram_reserve = 0 };
	CHECK(dsm_plan_from_budgets(&p, &shape, &sz, &b, hot) == 0, "hot: %s", dsm_errmsg());
	CHECK(tier_is(p->non_expert[DSM_KIND_EMBED], DSM_TIER_GPU, 0), "non-expert on the gpu");
	CHECK(tier_is(dsm_plan_expert_tier(p, 3, 7), DSM_TIER_GPU, 0), "hottest on the gpu");
	CHECK(tier_is(dsm_plan_expert_tier(p, 4, 1), DSM_TIER_DRAM, 0), "second in dram");
	CHECK(tier_is(dsm_plan_expert_tier(p, 2, 5), DSM_TIER_NVME, 0), "third streamed");
	dsm_plan_free(p);

	b = (struct dsm_plan_budget){ .vram_bytes = 500, .dram_bytes = 900 };
	CHECK(dsm_plan_from_budgets(&p, &shape, &sz, &b, NULL) == DSM_EPLAN && !p &&
	      strstr(dsm_errmsg(), "cannot hold the non-expert weights"), "too small: %s", dsm_errmsg());
}

static void test_checkpoint(const char *dir)
{
	struct dsm_checkpoint *ck;
	struct dsm_weight_map *map = NULL;
	struct dsm_store_model *sm = NULL, *mapped = NULL;
	if (dsm_checkpoint_open(&ck, dir) < 0 || dsm_weight_map_open(&map, ck) < 0 ||
	    dsm_store_model_from_checkpoint(&sm, ck, NULL) < 0 || dsm_store_model_from_checkpoint(&mapped, ck, map) < 0) {
		CHECK(0, "checkpoint: %s", dsm_errmsg());
		dsm_store_model_free(sm);
		dsm_weight_map_close(map);
		dsm_checkpoint_close(ck);
		return;
	}
	struct dsm_plan_sizes sz;
	dsm_plan_sizes(sm, &sz);
	uint64_t want = 3ull * 96 * 256; /* gate, up [96, 256] and down [256, 96], FP8 */
	CHECK(sz.expert_bytes == want, "expert bytes %llu, want %llu", (unsigned long long)sz.expert_bytes,
	      (unsigned long long)want);
	uint64_t experts = 3ull * 16 * want;
	CHECK(sz.non_expert_total > 0 && sz.non_expert_total + experts <= ck->total_bytes, "non-expert %llu",
	      (unsigned long long)sz.non_expert_total);

	/* Every routed expert's tensors as the checkpoint has them; addresses only with the mapping. */
	const struct dsm_store_expert *e = dsm_store_expert(sm, 3, 15), *em = dsm_store_expert(mapped, 3, 15);
	const struct dsm_tensor *t = dsm_checkpoint_find(ck, "model.layers.3.mlp.experts.15.down_proj.weight");
	CHECK(t && t->scale && e->w[DSM_EXPERT_DOWN].rows == 256 && e->w[DSM_EXPERT_DOWN].cols == 96 &&
	      e->w[DSM_EXPERT_DOWN].offset == t->offset && e->w[DSM_EXPERT_DOWN].nbytes == t->nbytes &&
	      e->w[DSM_EXPERT_DOWN].shard == t->shard && e->w[DSM_EXPERT_DOWN].dtype == DSM_F8_E4M3 &&
	      e->scale[DSM_EXPERT_DOWN].nbytes == t->scale->nbytes && strcmp(e->w[DSM_EXPERT_DOWN].name, t->name) == 0,
	      "expert tensors");
	CHECK(!e->w[0].mapped && !e->scale[0].mapped && em->w[0].mapped && em->scale[0].mapped, "mapped addresses");
	uint8_t *bytes = t ? malloc(t->nbytes) : NULL;
	CHECK(bytes && dsm_checkpoint_read(ck, t, bytes) == 0 &&
	      memcmp(bytes, em->w[DSM_EXPERT_DOWN].mapped, t->nbytes) == 0, "mapped bytes");
	free(bytes);
	CHECK(sm->n_shards == ck->n_shards && strcmp(sm->shards[0], ck->shards[0].path) == 0, "shards");
	CHECK(sm->router_bias && mapped->router_bias &&
	      memcmp(sm->router_bias, mapped->router_bias, sizeof(float) * 5 * 16) == 0 && sm->router_bias[0] == 0 &&
	      sm->router_bias[2 * 16 + 3] != 0, "router bias");

	struct dsm_plan *p;
	struct dsm_plan_budget b = { .dram_bytes = sz.non_expert_total + 20 * want, .dram_reserve = 4 * want };
	CHECK(dsm_plan_from_budgets(&p, &sm->shape, &sz, &b, NULL) == 0, "budget plan: %s", dsm_errmsg());
	uint64_t n[DSM_TIER_KINDS];
	dsm_plan_count(p, n);
	CHECK(n[DSM_TIER_DRAM] == 16 && n[DSM_TIER_NVME] == 32, "dram %llu", (unsigned long long)n[1]);
	char *text = dsm_plan_to_json(p);
	struct dsm_plan *q = NULL;
	CHECK(text && dsm_plan_parse(&q, text, strlen(text), "generated", &sm->shape) == 0, "generated plan: %s",
	      dsm_errmsg());
	free(text);
	dsm_plan_free(q);
	dsm_plan_free(p);
	dsm_store_model_free(mapped);
	dsm_store_model_free(sm);
	dsm_weight_map_close(map);
	dsm_checkpoint_close(ck);
}

int main(void)
{
	const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
	const struct mkmodel_preset *tiny = mkmodel_preset("tiny");
	dsm_moe_shape_from_config(&shape, &tiny->config);
	test_parse();
	test_refusals();
	test_budgets();

	char dir[4096];
	snprintf(dir, sizeof dir, "%s/tests/offload-plan-tiny", top);
	struct mkmodel_options o = { .config = tiny->config, .seed = 3, .shard_bytes = tiny->shard_bytes, .quiet = 1 };
	if (mkmodel_write(&o, dir) < 0) {
		fprintf(stderr, "mkmodel: %s\n", dsm_errmsg());
		return 99;
	}
	test_checkpoint(dir);

	/* The example in docs/plan.md (its first json block) is for the real model: it must parse against the
	 * real shape. */
	const char *src = getenv("top_srcdir") ? getenv("top_srcdir") : "..";
	char path[4200];
	snprintf(path, sizeof path, "%s/docs/plan.md", src);
	FILE *f = fopen(path, "rb");
	static char doc[1 << 16];
	size_t len = f ? fread(doc, 1, sizeof doc - 1, f) : 0;
	if (f)
		fclose(f);
	doc[len] = '\0';
	char *begin = strstr(doc, "```json\n");
	char *end = begin ? strstr(begin + 8, "\n```") : NULL;
	CHECK(begin && end, "%s: no json example", path);
	if (begin && end) {
		struct dsm_moe_shape full;
		dsm_moe_shape_from_config(&full, &mkmodel_preset("full")->config);
		struct dsm_plan *p;
		int rc = dsm_plan_parse(&p, begin + 8, (size_t)(end - begin - 8), "docs/plan.md example", &full);
		CHECK(rc == 0, "docs example: %s", dsm_errmsg());
		dsm_plan_free(p);
	}
	return TEST_EXIT();
}
