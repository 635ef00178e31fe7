/* Minimal test helpers: CHECK prints the failing expression and location and counts the failure. */
#ifndef DSM_TEST_UTIL_H
#define DSM_TEST_UTIL_H

#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

static int test_failures;

#define CHECK(cond, ...) do { \
	if (!(cond)) { \
		fprintf(stderr, "%s:%d: CHECK(%s) failed: ", __FILE__, __LINE__, #cond); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
		test_failures++; \
	} \
} while (0)

/* Normalized mean squared error sum((a - ref)^2) / sum(ref^2) (docs TESTING.md); the plain sum when ref
 * is all zeros. */
static inline double nmse(const float *a, const float *ref, size_t n)
{
	double num = 0, den = 0;
	for (size_t i = 0; i < n; i++) {
		double d = (double)a[i] - ref[i];
		num += d * d;
		den += (double)ref[i] * ref[i];
	}
	return den > 0 ? num / den : num;
}

/* Exit status for the automake harness: 0 pass, 1 fail. */
#define TEST_EXIT() (test_failures ? (fprintf(stderr, "%d check(s) failed\n", test_failures), 1) : 0)

#endif
