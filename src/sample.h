/* Choosing the next token from logits: greedy, or sampling with temperature, top-k and top-p (nucleus),
 * reproducible from a seed. Applied in that order: temperature, top-k, top-p, then a draw. */
#ifndef DSM_SAMPLE_H
#define DSM_SAMPLE_H

#include <stdint.h>

struct dsm_sampler_params {
	float temperature;      /* <= 0: greedy (argmax, ties to the lower id) */
	float top_p;            /* (0, 1]; 1: off */
	int top_k;              /* <= 0: off */
	uint64_t seed;
};

struct dsm_candidate {
	float p;
	int32_t id;
};

struct dsm_sampler {
	struct dsm_sampler_params p;
	uint64_t rng;
	int64_t vocab;
	struct dsm_candidate *cand;    /* [vocab] scratch, allocated once */
};

/* Returns 0 or DSM_EARG (bad parameters) / DSM_ENOMEM. */
int dsm_sampler_init(struct dsm_sampler *s, const struct dsm_sampler_params *p, int64_t vocab);
void dsm_sampler_free(struct dsm_sampler *s);
/* The next token for logits [vocab]. */
int32_t dsm_sample(struct dsm_sampler *s, const float *logits);
/* Index of the largest of x[0 .. n), the lowest on ties. */
int32_t dsm_argmax(const float *x, int64_t n);

#endif
