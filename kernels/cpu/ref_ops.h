/* Scalar reference of every backend op: slow, obviously correct, single-threaded. The oracle of the op
 * tests (docs TESTING.md step 1) and the fallback of the cpu backend for ops too small to matter.
 * Arguments and results as the op of the same name in backend.h (without the backend). Sums are
 * accumulated in double. */
#ifndef DSM_REF_OPS_H
#define DSM_REF_OPS_H

#include "backend.h"

int dsm_ref_matmul(enum dsm_precision p, const struct dsm_mat *w, int64_t n, const float *x, float *y);
int dsm_ref_matmul_t(enum dsm_precision p, const struct dsm_mat *w, int64_t n, const float *x, float *y);
/* scratch: [n, 2 * w->gate.rows] floats, or NULL to allocate. */
int dsm_ref_ffn(enum dsm_precision p, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y);
void dsm_ref_rmsnorm(int64_t n, int64_t d, const float *x, int64_t ldx, const float *w, float eps, float *y);
void dsm_ref_layernorm(int64_t n, int64_t d, const float *x, const float *w, const float *b, float eps,
		       float *y);
void dsm_ref_rope(int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx, int64_t ldh,
		  const float *cos, const float *sin, int interleaved);
int dsm_ref_hadamard(int64_t n, int64_t d, float *x);
int dsm_ref_attn_full(const struct dsm_attn_full_args *a);
int dsm_ref_attn_latent(const struct dsm_attn_latent_args *a);
void dsm_ref_indexer_scores(int64_t n_heads, int64_t d, const float *q, const float *w, const float *k,
			    int64_t n_keys, float *out);
int dsm_ref_topk(const float *x, int64_t n, int64_t k, int32_t *idx);
int dsm_ref_route(const struct dsm_route_args *a);
void dsm_ref_add(int64_t n, float *x, const float *y);
void dsm_ref_scale(int64_t n, float *x, float s);
int dsm_ref_convert(int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx, void *y,
		    enum dsm_dtype yt, int64_t ldy);
void dsm_ref_fp8_round(int64_t n, int64_t d, float *x, int ue8m0);
int dsm_ref_gather(int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows, int64_t cols,
		   enum dsm_dtype xt, void *y, enum dsm_dtype yt);

/* silu(g) * u, elementwise over n values, into g. */
void dsm_ref_silu_mul(int64_t n, float *g, const float *u);
/* Element (i, j) of the view rounded as precision p sees it. */
float dsm_mat_get_p(const struct dsm_mat *m, int64_t i, int64_t j, enum dsm_precision p);
/* x rounded as precision p sees an activation. */
static inline float dsm_round_act(float x, enum dsm_precision p)
{
	return p == DSM_PRECISION_BF16 ? dsm_bf16_to_f32(dsm_f32_to_bf16(x)) : x;
}

#endif
