/* Choosing the decode kernels' memory walks for this host (dsm_tune_variants): which order of loads and which
 * software prefetch streams best depends on the memory system (docs/kernels.md "Variants"), so it is measured
 * at start on the model's own matrices rather than fixed for one machine. */
#include "expert_kernels.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MARGIN 1.08 /* a variant replaces the default only this much faster: the host's noise is larger below */

int dsm_tune_variants(int n_variants, const char *const *names, int *in_use, dsm_tune_part_fn part, void *arg,
		      const char *unit, struct dsm_gemv_tune_result *r)
{
	memset(r, 0, sizeof *r);
	r->chosen = *in_use;
	if (n_variants < 1 || n_variants > DSM_TUNE_MAX_VARIANTS)
		return dsm_fail(DSM_EARG, "tune: %d variants", n_variants);
	double t_all = dsm_wall_seconds();
	int keep = *in_use, rc = 0;
	for (int k = 0; k < DSM_TUNE_ROUNDS && rc == 0; k++)
		for (int i = 0; i < n_variants && rc == 0; i++) {
			int v = (i + k) % n_variants; /* rotating order: no variant always runs first */
			size_t bytes = 0;
			*in_use = v;
			double t = dsm_wall_seconds();
			rc = part(arg, k * n_variants + i, &bytes);
			double gbps = (double)bytes / (dsm_wall_seconds() - t) / 1e9;
			/* The best round: what disturbs a round (another process's memory traffic, an interrupt)
			 * only slows it, by up to 5x in 1 ms rounds on a shared host. */
			r->gbps[v] = gbps > r->gbps[v] ? gbps : r->gbps[v];
			if (k == 0 && i == 0)
				r->bytes = bytes;
		}
	*in_use = keep;
	if (rc < 0)
		return rc;
	int best = 0;
	for (int v = 0; v < n_variants; v++)
		if (r->gbps[v] > r->gbps[best])
			best = v;
	r->rounds = DSM_TUNE_ROUNDS;
	r->seconds = dsm_wall_seconds() - t_all;
	if (best != 0 && r->gbps[best] >= MARGIN * r->gbps[0]) {
		snprintf(r->why, sizeof r->why, "%s ran at %.1f %s against %.1f for %s (best of %d rounds)",
			 names[best], r->gbps[best], unit, r->gbps[0], names[0], DSM_TUNE_ROUNDS);
	} else {
		best = 0;
		snprintf(r->why, sizeof r->why, "%s (%.1f %s): no variant was %.0f%% faster (best of %d rounds)",
			 names[0], r->gbps[0], unit, (MARGIN - 1) * 100, DSM_TUNE_ROUNDS);
	}
	*in_use = r->chosen = best;
	return 0;
}

/* The FP8 kernel on one token: part k multiplies its share of the matrices. */
struct fp8_parts {
	struct dsm_expert_ctx *ctx;
	const struct dsm_fp8_mat *mats;
	size_t per;
	const float *x;
	float *y;
};

static int fp8_part(void *arg, int k, size_t *bytes)
{
	const struct fp8_parts *p = arg;
	const struct dsm_fp8_mat *m = p->mats + (size_t)k * p->per;
	for (size_t j = 0; j < p->per; j++) {
		int rc = dsm_fp8_matmul(p->ctx, &m[j], 1, p->x, p->y);
		if (rc < 0)
			return rc;
		*bytes += m[j].rows * m[j].cols;
	}
	return 0;
}

/* Row bands of whole 128-row blocks, at least `need` of them where the matrices have that many blocks: with
 * fewer matrices than parts (the real shapes' 14.7 MB matrices within the engine's bytes), each part reads
 * bands. */
static struct dsm_fp8_mat *row_bands(const struct dsm_fp8_mat *mats, size_t n, size_t need, size_t *nb)
{
	size_t blocks = 0;
	for (size_t i = 0; i < n; i++)
		blocks += (mats[i].rows + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK;
	struct dsm_fp8_mat *b = malloc((blocks ? blocks : 1) * sizeof *b);
	if (!b)
		return NULL;
	size_t split = (need + n - 1) / n;
	*nb = 0;
	for (size_t i = 0; i < n; i++) {
		size_t step = mats[i].rows / split / DSM_FP8_BLOCK * DSM_FP8_BLOCK;
		step = step ? step : DSM_FP8_BLOCK;
		for (size_t r0 = 0; r0 < mats[i].rows; r0 += step) {
			size_t nr = mats[i].rows - r0 < step ? mats[i].rows - r0 : step;
			if (dsm_fp8_mat_window(&b[*nb], &mats[i], r0, nr, 0, mats[i].cols) == 0)
				(*nb)++;
		}
	}
	return b;
}

int dsm_gemv_tune(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *mats, size_t n, struct dsm_gemv_tune_result *r)
{
	const size_t need = DSM_TUNE_ROUNDS * DSM_GEMV_VARIANTS;
	memset(r, 0, sizeof *r);
	r->chosen = dsm_gemv_variant;
	struct dsm_fp8_mat *bands = NULL;
	if (n > 0 && n < need) {
		if (!(bands = row_bands(mats, n, need, &n)))
			return dsm_fail(DSM_ENOMEM, "out of memory");
		mats = bands;
	}
	size_t per = n / need;
	if (per == 0) {
		free(bands);
		return dsm_fail(DSM_EARG, "gemv tune: %zu row bands, fewer than %zu", n, need);
	}
	size_t max_rows = 0, max_cols = 0;
	for (size_t i = 0; i < n; i++) {
		max_rows = mats[i].rows > max_rows ? mats[i].rows : max_rows;
		max_cols = mats[i].cols > max_cols ? mats[i].cols : max_cols;
	}
	float *x = calloc(max_cols + max_rows, sizeof(float));
	if (!x) {
		free(bands);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	for (size_t j = 0; j < max_cols; j++)
		x[j] = (float)(j % 7) - 3.0f;
	const char *names[DSM_GEMV_VARIANTS];
	for (int v = 0; v < DSM_GEMV_VARIANTS; v++)
		names[v] = dsm_gemv_variants[v].name;
	struct fp8_parts p = { ctx, mats, per, x, x + max_cols };
	int rc = dsm_tune_variants(DSM_GEMV_VARIANTS, names, &dsm_gemv_variant, fp8_part, &p, "GB/s", r);
	free(x);
	free(bands);
	return rc;
}

/* The batched kernel on 64 tokens: part k multiplies a matrix that stays in cache (the arithmetic is measured,
 * not the memory), "bytes" counting its flops. */
#define GEMM_TUNE_ROWS 96
#define GEMM_TUNE_COLS 1024
#define GEMM_TUNE_TOKENS 64
struct gemm_parts {
	struct dsm_fp8_mat w;
	const uint16_t *a;
	float *yT;
	void *scratch;
};

static int gemm_part(void *arg, int k, size_t *flops)
{
	(void)k;
	const struct gemm_parts *p = arg;
	for (int i = 0; i < 3; i++) {
		int rc = dsm_fp8_gemm_rows(&p->w, 0, GEMM_TUNE_ROWS, p->a, GEMM_TUNE_TOKENS, p->yT, GEMM_TUNE_TOKENS,
					   p->scratch);
		if (rc < 0)
			return rc;
		*flops += 2ull * GEMM_TUNE_ROWS * GEMM_TUNE_COLS * GEMM_TUNE_TOKENS;
	}
	return 0;
}

int dsm_fp8_gemm_tune(struct dsm_gemv_tune_result *r)
{
	memset(r, 0, sizeof *r);
	r->chosen = dsm_gemm_variant;
	if (!dsm_isa_available(DSM_ISA_AVX512BF16))
		return dsm_fail(DSM_EUNSUPPORTED, "the batched path needs AVX-512 BF16");
	size_t nw = GEMM_TUNE_ROWS * GEMM_TUNE_COLS, nsc = GEMM_TUNE_COLS / DSM_FP8_BLOCK;
	size_t na = dsm_bf16_pack_size(GEMM_TUNE_TOKENS, GEMM_TUNE_COLS);
	uint8_t *w = malloc(nw);
	float *sc = malloc(nsc * sizeof(float)), *x = malloc(GEMM_TUNE_TOKENS * GEMM_TUNE_COLS * sizeof(float));
	float *yT = malloc(GEMM_TUNE_ROWS * GEMM_TUNE_TOKENS * sizeof(float));
	uint16_t *a = aligned_alloc(64, (na + 63) / 64 * 64);
	void *scratch = aligned_alloc(64, dsm_fp8_gemm_scratch_size());
	int rc = 0;
	if (!w || !sc || !x || !yT || !a || !scratch) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < nw; i++)
		w[i] = (uint8_t)((i * 37 + i / 7) % 126); /* no NaN codes */
	for (size_t i = 0; i < nsc; i++)
		sc[i] = 1.0f / 64;
	for (size_t i = 0; i < GEMM_TUNE_TOKENS * GEMM_TUNE_COLS; i++)
		x[i] = (float)(i % 13) - 6.0f;
	dsm_bf16_pack(x, GEMM_TUNE_COLS, GEMM_TUNE_TOKENS, GEMM_TUNE_COLS, 0, GEMM_TUNE_COLS / 2, a);
	struct gemm_parts p = { dsm_fp8_mat_dense(w, sc, GEMM_TUNE_ROWS, GEMM_TUNE_COLS), a, yT, scratch };
	rc = dsm_tune_variants(DSM_GEMM_VARIANTS, dsm_gemm_variant_names, &dsm_gemm_variant, gemm_part, &p,
			       "GFLOP/s", r);
out:
	free(w);
	free(sc);
	free(x);
	free(yT);
	free(a);
	free(scratch);
	return rc;
}
