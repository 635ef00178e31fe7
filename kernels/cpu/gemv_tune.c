/* Choosing the decode kernel's memory walk for this host (dsm_gemv_tune): which order of loads and which
 * software prefetch streams best depends on the memory system (docs/kernels.md "Variants"), so it is measured
 * at start on the model's own expert matrices rather than fixed for one machine. */
#include "expert_kernels.h"

#include "error.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ROUNDS 3
#define MARGIN 1.08 /* a variant replaces the default only this much faster: the host's noise is larger below */

static double median3(const double *v)
{
	double a = v[0], b = v[1], c = v[2];
	return a > b ? (b > c ? b : a > c ? c : a) : (a > c ? a : b > c ? c : b);
}

int dsm_gemv_tune(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *mats, size_t n, struct dsm_gemv_tune_result *r)
{
	memset(r, 0, sizeof *r);
	r->chosen = dsm_gemv_variant;
	size_t per = n / (ROUNDS * DSM_GEMV_VARIANTS);
	if (per == 0)
		return dsm_fail(DSM_EARG, "gemv tune: %zu matrices, fewer than %d", n, ROUNDS * DSM_GEMV_VARIANTS);
	size_t max_rows = 0, max_cols = 0;
	for (size_t i = 0; i < n; i++) {
		max_rows = mats[i].rows > max_rows ? mats[i].rows : max_rows;
		max_cols = mats[i].cols > max_cols ? mats[i].cols : max_cols;
	}
	float *x = calloc(max_cols + max_rows, sizeof(float));
	if (!x)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (size_t j = 0; j < max_cols; j++)
		x[j] = (float)(j % 7) - 3.0f;
	double rate[DSM_GEMV_VARIANTS][ROUNDS], t_all = dsm_wall_seconds();
	int keep = dsm_gemv_variant, rc = 0;
	for (int k = 0; k < ROUNDS && rc == 0; k++)
		for (int i = 0; i < DSM_GEMV_VARIANTS && rc == 0; i++) {
			int v = (i + k) % DSM_GEMV_VARIANTS; /* rotating order: no variant always runs first */
			const struct dsm_fp8_mat *part = mats + (size_t)(k * DSM_GEMV_VARIANTS + i) * per;
			size_t bytes = 0;
			dsm_gemv_variant = v;
			double t = dsm_wall_seconds();
			for (size_t j = 0; j < per && rc == 0; j++) {
				rc = dsm_fp8_matmul(ctx, &part[j], 1, x, x + max_cols);
				bytes += part[j].rows * part[j].cols;
			}
			rate[v][k] = (double)bytes / (dsm_wall_seconds() - t) / 1e9;
			if (k == 0 && i == 0)
				r->bytes = bytes;
		}
	free(x);
	dsm_gemv_variant = keep;
	if (rc < 0)
		return rc;
	int best = 0;
	for (int v = 0; v < DSM_GEMV_VARIANTS; v++) {
		r->gbps[v] = median3(rate[v]);
		if (r->gbps[v] > r->gbps[best])
			best = v;
	}
	r->rounds = ROUNDS;
	r->seconds = dsm_wall_seconds() - t_all;
	if (best != 0 && r->gbps[best] >= MARGIN * r->gbps[0]) {
		dsm_gemv_variant = best;
		snprintf(r->why, sizeof r->why, "%s streamed %.1f GB/s against %.1f for %s (median of %d rounds)",
			 dsm_gemv_variants[best].name, r->gbps[best], r->gbps[0], dsm_gemv_variants[0].name, ROUNDS);
	} else {
		dsm_gemv_variant = 0;
		snprintf(r->why, sizeof r->why, "%s (%.1f GB/s): no variant was %.0f%% faster (best %s, %.1f GB/s)",
			 dsm_gemv_variants[0].name, r->gbps[0], (MARGIN - 1) * 100, dsm_gemv_variants[best].name,
			 r->gbps[best]);
	}
	r->chosen = dsm_gemv_variant;
	return 0;
}
