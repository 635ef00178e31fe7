/* Sampling: greedy ties, reproducibility from a seed, top-k and top-p supports, and frequencies that
 * follow softmax(logits / temperature). */
#include "error.h"
#include "sample.h"
#include "test_util.h"

#include <math.h>
#include <string.h>

#define V 50

int main(void)
{
	float logits[V];
	for (int i = 0; i < V; i++)
		logits[i] = (float)((i * 7) % 13) * 0.3f;
	/* 12 * 0.3 is the maximum, first reached at i = 11 (7 * 11 % 13 = 12) */
	CHECK(dsm_argmax(logits, V) == 11, "argmax %d", dsm_argmax(logits, V));

	struct dsm_sampler s;
	struct dsm_sampler_params greedy = { .temperature = 0, .top_p = 1 };
	CHECK(dsm_sampler_init(&s, &greedy, V) == 0, "%s", dsm_errmsg());
	CHECK(dsm_sample(&s, logits) == 11, "greedy");
	dsm_sampler_free(&s);

	struct dsm_sampler_params bad = { .temperature = 1, .top_p = 0 };
	CHECK(dsm_sampler_init(&s, &bad, V) == DSM_EARG, "top_p 0 must be refused");

	/* the same seed gives the same draws; top_k restricts to the k most likely */
	struct dsm_sampler_params p = { .temperature = 1.0f, .top_p = 1, .top_k = 3, .seed = 42 };
	struct dsm_sampler a, b;
	CHECK(dsm_sampler_init(&a, &p, V) == 0 && dsm_sampler_init(&b, &p, V) == 0, "%s", dsm_errmsg());
	int allowed[V] = { 0 };
	/* the three largest logits */
	float sorted[V];
	memcpy(sorted, logits, sizeof sorted);
	for (int k = 0; k < 3; k++) {
		int best = dsm_argmax(sorted, V);
		allowed[best] = 1;
		sorted[best] = -INFINITY;
	}
	for (int i = 0; i < 2000; i++) {
		int32_t x = dsm_sample(&a, logits), y = dsm_sample(&b, logits);
		CHECK(x == y, "same seed, different draws");
		CHECK(allowed[x], "top_k 3 drew %d", x);
	}
	dsm_sampler_free(&a);
	dsm_sampler_free(&b);

	/* frequencies follow softmax at temperature 0.5 (no truncation) */
	p = (struct dsm_sampler_params){ .temperature = 0.5f, .top_p = 1, .seed = 7 };
	CHECK(dsm_sampler_init(&a, &p, V) == 0, "%s", dsm_errmsg());
	double prob[V], sum = 0;
	for (int i = 0; i < V; i++)
		sum += prob[i] = exp(logits[i] / 0.5);
	int count[V] = { 0 };
	int draws = 100000;
	for (int i = 0; i < draws; i++)
		count[dsm_sample(&a, logits)]++;
	for (int i = 0; i < V; i++) {
		double expect = prob[i] / sum * draws, sd = sqrt(expect) + 1;
		CHECK(fabs(count[i] - expect) < 6 * sd, "token %d drawn %d times, expected %.0f", i, count[i], expect);
	}
	dsm_sampler_free(&a);

	/* top_p: a dominant token (p > 0.9) is the whole nucleus for top_p 0.5 */
	float peaked[V] = { 0 };
	peaked[23] = 10;
	p = (struct dsm_sampler_params){ .temperature = 1, .top_p = 0.5f, .seed = 3 };
	CHECK(dsm_sampler_init(&a, &p, V) == 0, "%s", dsm_errmsg());
	for (int i = 0; i < 1000; i++)
		CHECK(dsm_sample(&a, peaked) == 23, "top_p 0.5 left the nucleus");
	dsm_sampler_free(&a);
	/* top_p 0.95 over two equal tokens and many tiny ones: only the two */
	float two[V];
	for (int i = 0; i < V; i++)
		two[i] = -20;
	two[4] = two[40] = 5;
	p = (struct dsm_sampler_params){ .temperature = 1, .top_p = 0.95f, .seed = 5 };
	CHECK(dsm_sampler_init(&a, &p, V) == 0, "%s", dsm_errmsg());
	int seen4 = 0, seen40 = 0;
	for (int i = 0; i < 1000; i++) {
		int32_t x = dsm_sample(&a, two);
		CHECK(x == 4 || x == 40, "top_p 0.95 drew %d", x);
		seen4 += x == 4;
		seen40 += x == 40;
	}
	CHECK(seen4 > 400 && seen40 > 400, "two equal tokens drawn %d and %d times", seen4, seen40);
	dsm_sampler_free(&a);
	return TEST_EXIT();
}
