/* Random test data shared by the op tests: a xorshift generator (each test file sets TEST_RAND_SEED), buffers
 * of uniform values, and random weights of every dtype. */
#ifndef DSM_TEST_RAND_H
#define DSM_TEST_RAND_H

#include "dtype.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#ifndef TEST_RAND_SEED
#define TEST_RAND_SEED 0x1234567
#endif

static uint64_t rng_state = TEST_RAND_SEED;
static inline uint32_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return (uint32_t)(rng_state >> 11);
}
static inline float urand(void) /* (-1, 1) */
{
	return (float)((rnd() & 0xffffff) / 8388608.0 - 1.0);
}
/* n floats uniform in (-scale, scale), and one more allocated. */
static inline float *rand_buf(size_t n, float scale)
{
	float *p = malloc((n + 1) * sizeof *p);
	for (size_t i = 0; i < n; i++)
		p[i] = urand() * scale;
	return p;
}

/* The data of a random weight [rows, cols] of dtype t (F8: random non-NaN codes, and positive block scales in
 * *scale; else *scale = NULL), values about 1/sqrt(cols). */
static inline void rand_weight(enum dsm_dtype t, int64_t rows, int64_t cols, void **data, float **scale)
{
	size_t n = (size_t)rows * (size_t)cols;
	void *d = malloc(n * dsm_dtype_size(t) + 1);
	for (size_t i = 0; i < n; i++) {
		float v = urand() / sqrtf((float)cols);
		if (t == DSM_F8_E4M3) {
			uint8_t c;
			do
				c = (uint8_t)rnd();
			while ((c & 0x7f) == 0x7f);
			((uint8_t *)d)[i] = c;
		} else if (t == DSM_BF16) {
			((uint16_t *)d)[i] = dsm_f32_to_bf16(v);
		} else {
			((float *)d)[i] = v;
		}
	}
	*data = d;
	*scale = NULL;
	if (t == DSM_F8_E4M3) {
		size_t nb = (size_t)((rows + 127) / 128) * (size_t)((cols + 127) / 128);
		*scale = malloc(nb * sizeof(float));
		for (size_t i = 0; i < nb; i++)
			(*scale)[i] = (0.5f + 0.5f * (urand() + 1)) / (64.0f * sqrtf((float)cols));
	}
}

#endif
