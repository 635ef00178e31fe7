/* dsm-tune: hardware files (docs/tune.md, "Hardware files"): what dsm-tune probe writes, or a hand-written
 * description of a machine we do not have. Every number is checked: a rate must be positive, a size
 * non-negative, a GPU's reserved memory within its memory. */
#include "tune.h"

#include "error.h"
#include "json_util.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const int rate_tokens[TUNE_RATE_POINTS] = { 1, 8, 64 };

const char *tune_bytes(uint64_t b, char *buf, size_t size)
{
	double v = (double)b;
	if (v >= 1e12)
		snprintf(buf, size, "%.2f TB", v / 1e12);
	else if (v >= 1e9)
		snprintf(buf, size, "%.2f GB", v / 1e9);
	else if (v >= 1e6)
		snprintf(buf, size, "%.2f MB", v / 1e6);
	else if (v >= 1e3)
		snprintf(buf, size, "%.2f kB", v / 1e3);
	else
		snprintf(buf, size, "%llu bytes", (unsigned long long)b);
	return buf;
}


double tune_cpu_rate(const struct tune_hw *hw, int j, double t)
{
	const double *r = hw->node[j].expert_gbs;
	if (t <= 1)
		return r[0];
	double x = log2(t);
	if (x <= 3)
		return r[0] + (r[1] - r[0]) * x / 3;
	if (x <= 6)
		return r[1] + (r[2] - r[1]) * (x - 3) / 3;
	return r[2];
}

double tune_nvme_gbs(const struct tune_hw *hw)
{
	double best = 0;
	for (int i = 0; i < hw->n_qd; i++)
		best = hw->nvme_gbs[i] > best ? hw->nvme_gbs[i] : best;
	return best;
}

/* A number member that must be > 0 (positive) or >= 0. */
static int get_num(const cJSON *obj, const char *key, int positive, int required, double *out, const char *what,
		   const char *where)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!v) {
		if (required)
			return dsm_fail(DSM_EARG, "%s: %s%s is missing", what, where, key);
		return 1;
	}
	if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble))
		return dsm_fail(DSM_EARG, "%s: %s%s must be a number", what, where, key);
	if (v->valuedouble > 1e18) /* sizes become uint64_t: keep them representable */
		return dsm_fail(DSM_EARG, "%s: %s%s is %g: impossible (too large)", what, where, key, v->valuedouble);
	if (positive ? v->valuedouble <= 0 : v->valuedouble < 0)
		return dsm_fail(DSM_EARG, "%s: %s%s is %g: impossible (it must be %s)", what, where, key, v->valuedouble,
				positive ? "positive" : "zero or more");
	*out = v->valuedouble;
	return 0;
}

/* Refuses a member not in allowed (and not "comment", "sources" or "_..."): a misspelt key is not ignored. */
static int only_keys(const cJSON *obj, const char *const *allowed, const char *what, const char *where)
{
	for (const cJSON *c = obj->child; c; c = c->next) {
		int ok = c->string[0] == '_' || !strcmp(c->string, "comment") || !strcmp(c->string, "sources");
		for (int i = 0; allowed[i] && !ok; i++)
			ok = !strcmp(c->string, allowed[i]);
		if (!ok)
			return dsm_fail(DSM_EARG, "%s: unknown key %s%s", what, where, c->string);
	}
	return 0;
}

int tune_hw_parse(struct tune_hw *hw, const char *text, size_t len, const char *what)
{
	memset(hw, 0, sizeof *hw);
	snprintf(hw->source, sizeof hw->source, "%s", what);
	cJSON *doc = json_parse(text, len, what);
	if (!doc)
		return DSM_EJSON;
	int rc = DSM_EARG;
	double v;
	char where[96];
	static const char *const top[] = { "format", "version", "name", "numa_nodes", "gpus", "nvme",
					   "step_overhead_us", "topology", NULL };
	if (!cJSON_IsObject(doc)) {
		dsm_fail(DSM_EARG, "%s: not a JSON object", what);
		goto out;
	}
	if (only_keys(doc, top, what, "") < 0)
		goto out;
	const cJSON *f = cJSON_GetObjectItemCaseSensitive(doc, "format");
	if (!cJSON_IsString(f) || strcmp(f->valuestring, "dsm-hw") != 0) {
		dsm_fail(DSM_EARG, "%s: format must be \"dsm-hw\" (not a hardware file)", what);
		goto out;
	}
	if (get_num(doc, "version", 1, 1, &v, what, "") < 0)
		goto out;
	if (v != 1) {
		dsm_fail(DSM_EARG, "%s: version %g is not known (this dsm-tune reads version 1)", what, v);
		goto out;
	}
	const cJSON *name = cJSON_GetObjectItemCaseSensitive(doc, "name");
	snprintf(hw->name, sizeof hw->name, "%s", cJSON_IsString(name) ? name->valuestring : "unnamed");

	const cJSON *nodes = cJSON_GetObjectItemCaseSensitive(doc, "numa_nodes");
	if (!cJSON_IsArray(nodes) || cJSON_GetArraySize(nodes) < 1 || cJSON_GetArraySize(nodes) > TUNE_MAX_NODES) {
		dsm_fail(DSM_EARG, "%s: numa_nodes must be an array of 1 to %d nodes", what, TUNE_MAX_NODES);
		goto out;
	}
	static const char *const node_keys[] = { "cores", "dram_bytes", "dram_read_gbs", "dense_gbs", "expert_gbs", NULL };
	const cJSON *n;
	cJSON_ArrayForEach(n, nodes) {
		struct tune_node *t = &hw->node[hw->n_nodes];
		snprintf(where, sizeof where, "numa_nodes[%d].", hw->n_nodes++);
		if (!cJSON_IsObject(n) || only_keys(n, node_keys, what, where) < 0) {
			if (!cJSON_IsObject(n))
				dsm_fail(DSM_EARG, "%s: %s must be an object", what, where);
			goto out;
		}
		if (get_num(n, "cores", 1, 1, &v, what, where) < 0)
			goto out;
		if (v > 1e6) {
			dsm_fail(DSM_EARG, "%s: %scores is %g: impossible (too large)", what, where, v);
			goto out;
		}
		t->cores = (int)v;
		if (get_num(n, "dram_bytes", 1, 1, &v, what, where) < 0)
			goto out;
		t->dram_bytes = (uint64_t)v;
		if (get_num(n, "dram_read_gbs", 1, 1, &t->dram_gbs, what, where) < 0)
			goto out;
		t->dense_gbs = t->dram_gbs;
		if (get_num(n, "dense_gbs", 1, 0, &t->dense_gbs, what, where) < 0)
			goto out;
		const cJSON *eg = cJSON_GetObjectItemCaseSensitive(n, "expert_gbs");
		char w2[128];
		snprintf(w2, sizeof w2, "%sexpert_gbs.", where);
		if (!cJSON_IsObject(eg)) {
			dsm_fail(DSM_EARG, "%s: %sexpert_gbs must be an object {\"1\": GB/s, \"8\": ..., \"64\": ...}", what,
				 where);
			goto out;
		}
		for (int i = 0; i < TUNE_RATE_POINTS; i++) {
			char key[8];
			snprintf(key, sizeof key, "%d", rate_tokens[i]);
			if (get_num(eg, key, 1, 1, &t->expert_gbs[i], what, w2) < 0)
				goto out;
		}
	}
	const cJSON *gpus = cJSON_GetObjectItemCaseSensitive(doc, "gpus");
	if (gpus && (!cJSON_IsArray(gpus) || cJSON_GetArraySize(gpus) > TUNE_MAX_GPUS)) {
		dsm_fail(DSM_EARG, "%s: gpus must be an array of at most %d GPUs", what, TUNE_MAX_GPUS);
		goto out;
	}
	static const char *const gpu_keys[] = { "memory_bytes", "reserved_bytes", "read_gbs", "h2d_gbs", "model", NULL };
	const cJSON *g;
	cJSON_ArrayForEach(g, gpus) {
		struct tune_gpu *t = &hw->gpu[hw->n_gpus];
		snprintf(where, sizeof where, "gpus[%d].", hw->n_gpus++);
		if (!cJSON_IsObject(g)) {
			dsm_fail(DSM_EARG, "%s: %s must be an object", what, where);
			goto out;
		}
		if (only_keys(g, gpu_keys, what, where) < 0 || get_num(g, "memory_bytes", 1, 1, &v, what, where) < 0)
			goto out;
		t->memory_bytes = (uint64_t)v;
		double reserved = 0;
		if (get_num(g, "reserved_bytes", 0, 0, &reserved, what, where) < 0)
			goto out;
		if (reserved >= (double)t->memory_bytes) {
			char a[32], b[32];
			dsm_fail(DSM_EARG, "%s: %sreserved_bytes (%s) uses more GPU memory than exists (memory_bytes %s)",
				 what, where, tune_bytes((uint64_t)reserved, a, sizeof a), tune_bytes(t->memory_bytes, b, sizeof b));
			goto out;
		}
		t->memory_bytes -= (uint64_t)reserved;
		if (get_num(g, "read_gbs", 1, 1, &t->read_gbs, what, where) < 0 ||
		    get_num(g, "h2d_gbs", 1, 1, &t->h2d_gbs, what, where) < 0)
			goto out;
	}
	const cJSON *nv = cJSON_GetObjectItemCaseSensitive(doc, "nvme");
	if (nv) {
		static const char *const nvme_keys[] = { "read_gbs", "devices", "device", NULL };
		const cJSON *r = cJSON_GetObjectItemCaseSensitive(nv, "read_gbs");
		if (!cJSON_IsObject(nv)) {
			dsm_fail(DSM_EARG, "%s: nvme must be an object", what);
			goto out;
		}
		if (only_keys(nv, nvme_keys, what, "nvme.") < 0)
			goto out;
		if (!cJSON_IsObject(r) || !r->child) {
			dsm_fail(DSM_EARG, "%s: nvme.read_gbs must be an object {\"QUEUE_DEPTH\": GB/s, ...}", what);
			goto out;
		}
		for (const cJSON *q = r->child; q; q = q->next) {
			char *end;
			long qd = strtol(q->string, &end, 10);
			if (*end || qd < 1 || qd > 4096 || hw->n_qd == TUNE_MAX_QD) {
				dsm_fail(DSM_EARG, "%s: nvme.read_gbs key \"%s\" is not a queue depth (1-4096, at most %d)", what,
					 q->string, TUNE_MAX_QD);
				goto out;
			}
			hw->qd[hw->n_qd] = (int)qd;
			if (get_num(r, q->string, 1, 1, &hw->nvme_gbs[hw->n_qd], what, "nvme.read_gbs.") < 0)
				goto out;
			hw->n_qd++;
		}
	}
	double us = 0;
	if (get_num(doc, "step_overhead_us", 0, 0, &us, what, "") < 0)
		goto out;
	hw->step_overhead_s = us * 1e-6;
	rc = 0;
out:
	cJSON_Delete(doc);
	return rc;
}

int tune_hw_load(struct tune_hw *hw, const char *path)
{
	char *text;
	size_t len;
	int rc = read_file(path, 1 << 20, &text, &len);
	if (rc < 0)
		return rc;
	rc = tune_hw_parse(hw, text, len, path);
	free(text);
	return rc;
}

char *tune_hw_to_json(const struct tune_hw *hw, const char *comment)
{
	cJSON *d = cJSON_CreateObject();
	cJSON_AddStringToObject(d, "format", "dsm-hw");
	cJSON_AddNumberToObject(d, "version", 1);
	cJSON_AddStringToObject(d, "name", hw->name);
	if (comment)
		cJSON_AddStringToObject(d, "comment", comment);
	cJSON *nodes = cJSON_AddArrayToObject(d, "numa_nodes");
	for (int j = 0; j < hw->n_nodes; j++) {
		cJSON *n = cJSON_CreateObject();
		cJSON_AddNumberToObject(n, "cores", hw->node[j].cores);
		cJSON_AddNumberToObject(n, "dram_bytes", (double)hw->node[j].dram_bytes);
		cJSON_AddNumberToObject(n, "dram_read_gbs", round(hw->node[j].dram_gbs * 100) / 100);
		cJSON_AddNumberToObject(n, "dense_gbs", round(hw->node[j].dense_gbs * 100) / 100);
		cJSON *eg = cJSON_AddObjectToObject(n, "expert_gbs");
		for (int i = 0; i < TUNE_RATE_POINTS; i++) {
			char key[8];
			snprintf(key, sizeof key, "%d", rate_tokens[i]);
			cJSON_AddNumberToObject(eg, key, round(hw->node[j].expert_gbs[i] * 100) / 100);
		}
		cJSON_AddItemToArray(nodes, n);
	}
	cJSON *gpus = cJSON_AddArrayToObject(d, "gpus");
	for (int i = 0; i < hw->n_gpus; i++) {
		cJSON *g = cJSON_CreateObject();
		cJSON_AddNumberToObject(g, "memory_bytes", (double)hw->gpu[i].memory_bytes);
		cJSON_AddNumberToObject(g, "read_gbs", hw->gpu[i].read_gbs);
		cJSON_AddNumberToObject(g, "h2d_gbs", hw->gpu[i].h2d_gbs);
		cJSON_AddItemToArray(gpus, g);
	}
	if (hw->n_qd) {
		cJSON *r = cJSON_AddObjectToObject(cJSON_AddObjectToObject(d, "nvme"), "read_gbs");
		for (int i = 0; i < hw->n_qd; i++) {
			char key[16];
			snprintf(key, sizeof key, "%d", hw->qd[i]);
			cJSON_AddNumberToObject(r, key, round(hw->nvme_gbs[i] * 1000) / 1000);
		}
	}
	cJSON_AddNumberToObject(d, "step_overhead_us", round(hw->step_overhead_s * 1e7) / 10);
	char *s = cJSON_Print(d);
	cJSON_Delete(d);
	return s;
}
