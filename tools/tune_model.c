/* dsm-tune: a model's sizes from its config.json alone (the tensor list the config implies, src/layout.h),
 * so that the full 685 B model can be planned and simulated without its weights; the router biases when the
 * weights are there. */
#include "tune.h"

#include "checkpoint.h"
#include "config.h"
#include "error.h"
#include "expert_store.h"
#include "layout.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Bytes of one tensor as the checkpoint stores it: FP8 with its block scales when the config says FP8. */
static uint64_t entry_bytes(const struct dsm_config *c, const struct dsm_layout_entry *e)
{
	uint64_t n = e->ndim == 2 ? e->shape[0] * e->shape[1] : e->shape[0];
	switch (e->wtype) {
	case DSM_W_QUANT:
	case DSM_W_ANY:
		if (c->fp8 && e->ndim == 2)
			return n + 4 * dsm_scale_blocks(e->shape[0]) * dsm_scale_blocks(e->shape[1]);
		return 2 * n;
	case DSM_W_F32:
		return 4 * n;
	default:
		return 2 * n;
	}
}

static uint64_t round4k(uint64_t b)
{
	return (b + 4095) / 4096 * 4096;
}

/* The router biases from the checkpoint in dir, when it has weights. 0 also when it has none. */
static int load_bias(struct tune_model *m, const char *dir)
{
	char probe[1200];
	struct stat st;
	snprintf(probe, sizeof probe, "%s/model.safetensors.index.json", dir);
	int has = stat(probe, &st) == 0;
	snprintf(probe, sizeof probe, "%s/model.safetensors", dir);
	has |= stat(probe, &st) == 0;
	if (!has)
		return 0;
	struct dsm_checkpoint *ck;
	int rc = dsm_checkpoint_open(&ck, dir);
	if (rc < 0)
		return rc;
	const struct dsm_moe_shape *s = &m->shape;
	size_t n = (size_t)s->n_layers * (size_t)s->n_experts;
	float *v = malloc(sizeof(float) * (size_t)s->n_experts);
	m->bias = calloc(n, sizeof(double));
	if (!v || !m->bias) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	for (int l = s->first_moe; l < s->n_layers; l++) {
		char name[128];
		snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, name);
		if (!t || t->dtype != DSM_F32 || t->nbytes != sizeof(float) * (uint64_t)s->n_experts)
			continue; /* no bias: hotness falls back to an even spread */
		if ((rc = dsm_checkpoint_read(ck, t, v)) < 0)
			goto out;
		for (int e = 0; e < s->n_experts; e++)
			m->bias[(size_t)l * (size_t)s->n_experts + (size_t)e] = v[e];
	}
	rc = 0;
out:
	free(v);
	dsm_checkpoint_close(ck);
	return rc;
}

int tune_model_load(struct tune_model *m, const char *path)
{
	memset(m, 0, sizeof *m);
	snprintf(m->source, sizeof m->source, "%s", path);
	struct stat st;
	if (stat(path, &st) != 0)
		return dsm_fail(DSM_EMISSING, "%s: no such file or folder", path);
	char cfg_path[1200], dir[1024] = "";
	if (S_ISDIR(st.st_mode)) {
		snprintf(dir, sizeof dir, "%s", path);
		snprintf(cfg_path, sizeof cfg_path, "%s/config.json", path);
	} else {
		snprintf(cfg_path, sizeof cfg_path, "%s", path);
	}
	struct dsm_config c;
	int rc = dsm_config_load(&c, cfg_path);
	if (rc < 0)
		return rc;
	dsm_moe_shape_from_config(&m->shape, &c);
	struct dsm_layout_entry *l;
	size_t n;
	if ((rc = dsm_layout_build(&c, &l, &n)) < 0)
		return rc;
	uint64_t proj[DSM_EXPERT_NPROJ] = { 0 };
	for (size_t i = 0; i < n; i++) {
		uint64_t b = entry_bytes(&c, &l[i]);
		if (l[i].kind == DSM_KIND_MTP)
			continue;
		if (l[i].kind == DSM_KIND_ROUTED) {
			if (l[i].layer == c.first_k_dense_replace && l[i].expert == 0) {
				int p = strstr(l[i].name, "gate_proj") ? 0 : strstr(l[i].name, "up_proj") ? 1 : 2;
				proj[p] = b;
			}
			continue;
		}
		m->non_expert_bytes += b;
		/* A decode step reads every resident weight once, but only one row of the embeddings per token; the
		 * engine holds the non-expert matrices in BF16 (its default precision), FP8 ones too. */
		uint64_t held = l[i].ndim == 2 && l[i].wtype != DSM_W_F32 ? 2 * l[i].shape[0] * l[i].shape[1] : b;
		if (strcmp(l[i].name, "model.embed_tokens.weight") == 0) {
			m->non_expert_read += b / l[i].shape[0];
			m->non_expert_read_cpu += held / l[i].shape[0];
		} else {
			m->non_expert_read += b;
			m->non_expert_read_cpu += held;
		}
	}
	free(l);
	for (int p = 0; p < DSM_EXPERT_NPROJ; p++) {
		m->expert_bytes += proj[p];
		m->slot_bytes += round4k(proj[p]) + 4096; /* rounded out at both ends to the device's alignment */
	}
	if (dir[0] && (rc = load_bias(m, dir)) < 0) {
		tune_model_free(m);
		return rc;
	}
	return 0;
}

void tune_model_free(struct tune_model *m)
{
	free(m->bias);
	m->bias = NULL;
}
