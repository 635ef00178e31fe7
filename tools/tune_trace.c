/* dsm-tune: routing traces held in memory (the simulator replays them many times), and synthetic traces for
 * studies without real ones. The file format is offload/trace.h's (docs/trace.md). */
#include "tune.h"

#include "error.h"
#include "rng.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tune_trace_load(struct tune_trace *t, const char *path, const struct tune_model *m)
{
	memset(t, 0, sizeof *t);
	struct dsm_trace_reader *r;
	int rc = dsm_trace_open(&r, path);
	if (rc < 0)
		return rc;
	t->info = *dsm_trace_info(r);
	const struct dsm_trace_info *i = &t->info;
	if (m) {
		const struct dsm_moe_shape *s = &m->shape;
		const char *key = NULL;
		long have = 0, want = 0;
		if ((int)i->n_layers != s->n_layers)
			key = "n_layers", have = i->n_layers, want = s->n_layers;
		else if ((int)i->first_moe != s->first_moe)
			key = "first_moe", have = i->first_moe, want = s->first_moe;
		else if ((int)i->n_experts != s->n_experts)
			key = "n_experts", have = i->n_experts, want = s->n_experts;
		else if ((int)i->top_k != s->top_k)
			key = "top_k", have = i->top_k, want = s->top_k;
		if (key) {
			dsm_trace_close_reader(r);
			return dsm_fail(DSM_EARG, "%s: the trace is for another model: %s is %ld, %s has %ld", path, key, have,
					m->source, want);
		}
	}
	t->n_moe = (int)(i->n_layers - i->first_moe);
	size_t per = (size_t)t->n_moe * i->top_k;
	if (i->n_records > ((uint64_t)1 << 40) / (per ? per : 1)) {
		dsm_trace_close_reader(r);
		return dsm_fail(DSM_EARG, "%s: %llu records are more than dsm-tune holds in memory", path,
				(unsigned long long)i->n_records);
	}
	if (!(t->ex = malloc(sizeof(uint16_t) * per * (size_t)(i->n_records ? i->n_records : 1)))) {
		dsm_trace_close_reader(r);
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for %llu records", path, (unsigned long long)i->n_records);
	}
	struct dsm_trace_record rec;
	while ((rc = dsm_trace_next(r, &rec)) == 1)
		memcpy(t->ex + per * t->n++, rec.experts, sizeof(uint16_t) * per);
	dsm_trace_close_reader(r);
	if (rc < 0) {
		tune_trace_free(t);
		return rc;
	}
	if (t->n == 0) {
		tune_trace_free(t);
		return dsm_fail(DSM_EARG, "%s: the trace has no records", path);
	}
	return 0;
}

void tune_trace_free(struct tune_trace *t)
{
	free(t->ex);
	t->ex = NULL;
}

double *tune_trace_popularity(const struct tune_trace *t)
{
	size_t E = t->info.n_experts, K = t->info.top_k;
	double *pop = calloc((size_t)t->info.n_layers * E, sizeof(double));
	if (!pop)
		return NULL;
	for (uint64_t i = 0; i < t->n; i++)
		for (int l = 0; l < t->n_moe; l++) {
			const uint16_t *x = t->ex + (i * (size_t)t->n_moe + (size_t)l) * K;
			for (size_t k = 0; k < K; k++)
				if (x[k] != 0xFFFF)
					pop[(t->info.first_moe + (size_t)l) * E + x[k]] += 1;
		}
	for (size_t i = 0; i < (size_t)t->info.n_layers * E; i++)
		pop[i] /= (double)t->n;
	return pop;
}

int tune_draw(const double *cdf, int n, struct rng *r)
{
	double u = (double)(rng_next(r) >> 11) * (1.0 / 9007199254740992.0) * cdf[n - 1];
	int lo = 0, hi = n - 1;
	while (lo < hi) {
		int mid = (lo + hi) / 2;
		if (cdf[mid] > u)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

int tune_trace_synth(const char *path, const struct tune_synth *s)
{
	if (s->n_layers < 1 || s->first_moe < 0 || s->first_moe >= s->n_layers || s->n_experts < 1 ||
	    s->n_experts > 65534 || s->top_k < 1 || s->top_k > s->n_experts || s->tokens < 1 || s->zipf < 0)
		return dsm_fail(DSM_EARG, "trace: impossible shape (layers %d, first MoE layer %d, experts %d, top-k %d, "
				"tokens %llu, zipf %g)", s->n_layers, s->first_moe, s->n_experts, s->top_k,
				(unsigned long long)s->tokens, s->zipf);
	int E = s->n_experts, K = s->top_k, L = s->n_layers;
	double *cdf = malloc(sizeof(double) * (size_t)E);
	int *rank = malloc(sizeof(int) * (size_t)E * (size_t)L); /* rank -> expert, per layer */
	int32_t *idx = malloc(sizeof(int32_t) * (size_t)K);
	uint64_t *taken = calloc((size_t)E, sizeof(uint64_t));
	if (!cdf || !rank || !idx || !taken) {
		free(cdf), free(rank), free(idx), free(taken);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	double sum = 0;
	for (int e = 0; e < E; e++)
		cdf[e] = (sum += pow(1.0 + e, -s->zipf));
	struct rng r;
	rng_seed(&r, s->seed, "dsm-tune trace");
	for (int l = 0; l < L; l++) {
		int *p = rank + (size_t)l * (size_t)E;
		for (int e = 0; e < E; e++)
			p[e] = e;
		for (int e = E - 1; e > 0; e--) {
			int j = (int)(rng_next(&r) % (uint64_t)(e + 1)), tmp = p[e];
			p[e] = p[j], p[j] = tmp;
		}
	}
	struct dsm_trace_writer *w;
	int rc = dsm_trace_create(&w, path, L, s->first_moe, E, K, s->model_type ? s->model_type : "synthetic");
	if (rc < 0)
		goto out;
	/* With drift, every 1/64 of the trace each layer swaps E/16 random pairs of ranks: the hot set moves. */
	uint64_t stamp = 0; /* taken[rank] == stamp: drawn for this token and layer */
	uint64_t drift_every = s->tokens / 64 ? s->tokens / 64 : 1;
	for (uint64_t t = 0; t < s->tokens && rc >= 0; t++) {
		if (s->drift && t && t % drift_every == 0)
			for (int l = 0; l < L; l++)
				for (int n = 0; n < (E + 15) / 16; n++) {
					int *p = rank + (size_t)l * (size_t)E;
					int a = (int)(rng_next(&r) % (uint64_t)E), b = (int)(rng_next(&r) % (uint64_t)E), tmp = p[a];
					p[a] = p[b], p[b] = tmp;
				}
		for (int l = s->first_moe; l < L && rc >= 0; l++) {
			/* K distinct ranks by inverse CDF, redrawing repeats (cheap: K is far below E in every real model). */
			stamp++;
			for (int k = 0; k < K; k++) {
				int pick;
				do
					pick = tune_draw(cdf, E, &r);
				while (taken[pick] == stamp);
				taken[pick] = stamp;
				idx[k] = rank[(size_t)l * (size_t)E + (size_t)pick];
			}
			rc = dsm_trace_add_layer(w, l, 1, idx);
		}
		if (rc >= 0)
			rc = dsm_trace_end_step(w, 1, NULL, NULL);
	}
	int rc2 = dsm_trace_close(w);
	if (rc >= 0)
		rc = rc2;
out:
	free(cdf), free(rank), free(idx), free(taken);
	return rc < 0 ? rc : 0;
}
