/* dsm-mkmodel -> checkpoint reader -> bytes equal to what was written, for the FP8 V3.2 layout, the V3
 * layout (no indexer) and a dequantized BF16 layout. */
#include "checkpoint.h"
#include "error.h"
#include "mkmodel.h"
#include "test_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void roundtrip(const char *label, struct mkmodel_options *o, const char *dir)
{
	if (mkmodel_write(o, dir) < 0) {
		fprintf(stderr, "%s: mkmodel: %s\n", label, dsm_errmsg());
		exit(99);
	}
	struct dsm_checkpoint *ck;
	int rc = dsm_checkpoint_open(&ck, dir);
	CHECK(rc == 0, "%s: reader rejected what mkmodel wrote: %s", label, dsm_errmsg());
	if (rc < 0)
		return;
	struct mkmodel_plan plan;
	if (mkmodel_plan(&plan, o) < 0)
		exit(99);
	CHECK(ck->n_tensors == plan.n_tensors, "%s: %zu tensors read, %zu written", label, ck->n_tensors,
	      plan.n_tensors);
	CHECK(ck->n_shards == plan.n_shards, "%s: %d shards read, %d written", label, ck->n_shards, plan.n_shards);
	size_t mismatches = 0, fp8 = 0;
	for (size_t i = 0; i < plan.n_tensors; i++) {
		const struct mkmodel_tensor *w = &plan.tensors[i];
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, w->name);
		CHECK(t != NULL, "%s: tensor %s not found", label, w->name);
		if (!t)
			continue;
		CHECK(t->dtype == w->dtype && t->nbytes == w->nbytes && t->shape[0] == w->shape[0] &&
		      (w->ndim < 2 || t->shape[1] == w->shape[1]), "%s: tensor %s metadata differs", label, w->name);
		fp8 += t->dtype == DSM_F8_E4M3;
		if (t->dtype == DSM_F8_E4M3)
			CHECK(t->scale != NULL, "%s: %s has no linked scale", label, w->name);
		unsigned char *want = malloc(w->nbytes + 1), *got = malloc(t->nbytes + 1);
		mkmodel_tensor_data(o, w, want);
		rc = dsm_checkpoint_read(ck, t, got);
		CHECK(rc == 0, "%s: read %s: %s", label, w->name, dsm_errmsg());
		if (rc == 0 && memcmp(want, got, w->nbytes) != 0)
			mismatches++;
		free(want);
		free(got);
	}
	CHECK(mismatches == 0, "%s: %zu tensors differ from what was written", label, mismatches);
	CHECK((fp8 > 0) == (o->config.fp8 != 0), "%s: %zu FP8 tensors with fp8=%d", label, fp8, o->config.fp8);
	printf("%s: %zu tensors in %d shards read back byte for byte\n", label, ck->n_tensors, ck->n_shards);
	mkmodel_plan_free(&plan);
	dsm_checkpoint_close(ck);
}

int main(void)
{
	const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
	char dir[4096];
	struct mkmodel_options o = { .config = mkmodel_preset("tiny")->config, .seed = 11, .shard_bytes = 3u << 20,
				     .quiet = 1 };
	snprintf(dir, sizeof dir, "%s/tests/ckpt-roundtrip-v32", top);
	roundtrip("v3.2 fp8", &o, dir);

	o.config.has_indexer = 0;
	snprintf(o.config.model_type, sizeof o.config.model_type, "deepseek_v3");
	o.routing_skew = 1.0;
	snprintf(dir, sizeof dir, "%s/tests/ckpt-roundtrip-v3", top);
	roundtrip("v3 fp8 skewed", &o, dir);

	o = (struct mkmodel_options){ .config = mkmodel_preset("tiny")->config, .seed = 12, .shard_bytes = 64u << 20,
				      .quiet = 1 };
	o.config.fp8 = 0;
	snprintf(dir, sizeof dir, "%s/tests/ckpt-roundtrip-bf16", top);
	roundtrip("v3.2 bf16 single shard", &o, dir);
	return TEST_EXIT();
}
