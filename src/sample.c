#include "sample.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

int32_t dsm_argmax(const float *x, int64_t n)
{
	int64_t best = 0;
	for (int64_t i = 1; i < n; i++)
		if (x[i] > x[best])
			best = i;
	return (int32_t)best;
}

/* splitmix64: small, good enough for sampling, reproducible across platforms. */
static uint64_t next_u64(uint64_t *state)
{
	uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static double next_unit(uint64_t *state)
{
	return (double)(next_u64(state) >> 11) * (1.0 / 9007199254740992.0);
}

int dsm_sampler_init(struct dsm_sampler *s, const struct dsm_sampler_params *p, int64_t vocab)
{
	memset(s, 0, sizeof *s);
	if (!(p->top_p > 0 && p->top_p <= 1) || !isfinite(p->temperature))
		return dsm_fail(DSM_EARG, "sampling: top_p must be in (0, 1] and the temperature finite");
	s->p = *p;
	s->rng = p->seed;
	s->vocab = vocab;
	s->cand = malloc(sizeof *s->cand * (size_t)vocab);
	if (!s->cand)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	return 0;
}

void dsm_sampler_free(struct dsm_sampler *s)
{
	free(s->cand);
	memset(s, 0, sizeof *s);
}

/* Higher probability first, then the lower id. */
static int by_p_desc(const void *pa, const void *pb)
{
	const struct dsm_candidate *a = pa, *b = pb;
	if (a->p != b->p)
		return a->p > b->p ? -1 : 1;
	return (a->id > b->id) - (a->id < b->id);
}

/* Min-heap on (p, then higher id) of the k best candidates. */
static int worse(const struct dsm_candidate *a, const struct dsm_candidate *b)
{
	return a->p < b->p || (a->p == b->p && a->id > b->id);
}

static void sift_down(struct dsm_candidate *h, int64_t n, int64_t i)
{
	for (;;) {
		int64_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && worse(&h[l], &h[m]))
			m = l;
		if (r < n && worse(&h[r], &h[m]))
			m = r;
		if (m == i)
			return;
		struct dsm_candidate t = h[i];
		h[i] = h[m];
		h[m] = t;
		i = m;
	}
}

int32_t dsm_sample(struct dsm_sampler *s, const float *logits)
{
	int64_t V = s->vocab;
	if (s->p.temperature <= 0 || s->p.top_k == 1)
		return dsm_argmax(logits, V);
	/* softmax(logits / temperature) */
	float mx = logits[dsm_argmax(logits, V)];
	double sum = 0;
	for (int64_t i = 0; i < V; i++) {
		float e = expf((logits[i] - mx) / s->p.temperature);
		s->cand[i] = (struct dsm_candidate){ e, (int32_t)i };
		sum += e;
	}
	int64_t n = V;
	if (s->p.top_k > 0 && s->p.top_k < V) {
		/* keep the k best in a heap at the front */
		int64_t k = s->p.top_k;
		for (int64_t i = k / 2 - 1; i >= 0; i--)
			sift_down(s->cand, k, i);
		for (int64_t i = k; i < V; i++)
			if (worse(&s->cand[0], &s->cand[i])) {
				s->cand[0] = s->cand[i];
				sift_down(s->cand, k, 0);
			}
		n = k;
		sum = 0;
		for (int64_t i = 0; i < n; i++)
			sum += s->cand[i].p;
	}
	/* Only the nucleus needs the candidates in order; without top-p the draw runs over them as they are
	 * (sorting a whole vocabulary per token costs more than a batched decode step). */
	if (s->p.top_p < 1) {
		/* Candidates below (1 - top_p) / (n - 1) of the total cannot be in the nucleus. */
		double cutoff = (1.0 - s->p.top_p) / (double)(n > 1 ? n - 1 : 1) * sum;
		int64_t m = 0;
		for (int64_t i = 0; i < n; i++)
			if (s->cand[i].p >= cutoff)
				s->cand[m++] = s->cand[i];
		n = m;
		qsort(s->cand, (size_t)n, sizeof *s->cand, by_p_desc);
		double acc = 0, limit = s->p.top_p * sum;
		m = 0;
		while (m < n) {
			acc += s->cand[m++].p;
			if (acc >= limit)
				break;
		}
		n = m;
	}
	double total = 0;
	for (int64_t i = 0; i < n; i++)
		total += s->cand[i].p;
	double u = next_unit(&s->rng) * total, acc = 0;
	for (int64_t i = 0; i < n; i++) {
		acc += s->cand[i].p;
		if (u < acc)
			return s->cand[i].id;
	}
	return s->cand[n - 1].id;
}
