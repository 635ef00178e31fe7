#include "ref_ops.h"

#include "error.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

float dsm_mat_get(const struct dsm_mat *m, int64_t i, int64_t j)
{
	int64_t r = m->row0 + i;
	size_t at = (size_t)r * (size_t)m->cols + (size_t)j;
	switch (m->dtype) {
	case DSM_F8_E4M3: {
		int64_t bc = (m->cols + DSM_BLOCK - 1) / DSM_BLOCK;
		float s = m->scale[(r / DSM_BLOCK) * bc + j / DSM_BLOCK];
		return dsm_fp8_table[((const uint8_t *)m->data)[at]] * s;
	}
	case DSM_BF16: {
		uint16_t b;
		memcpy(&b, (const char *)m->data + 2 * at, 2);
		return dsm_bf16_to_f32(b);
	}
	case DSM_F32: {
		float f;
		memcpy(&f, (const char *)m->data + 4 * at, 4);
		return f;
	}
	default:
		return NAN;
	}
}

float dsm_mat_get_p(const struct dsm_mat *m, int64_t i, int64_t j, enum dsm_precision p)
{
	return dsm_round_act(dsm_mat_get(m, i, j), p);
}

static int check_mat(const struct dsm_mat *w)
{
	if (w->dtype != DSM_F8_E4M3 && w->dtype != DSM_BF16 && w->dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "matmul: weight dtype %s not supported", dsm_dtype_name(w->dtype));
	if (w->dtype == DSM_F8_E4M3 && !w->scale)
		return dsm_fail(DSM_EARG, "matmul: F8 weight without block scales");
	return 0;
}

int dsm_ref_matmul(enum dsm_precision p, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	int rc = check_mat(w);
	if (rc < 0)
		return rc;
	for (int64_t t = 0; t < n; t++)
		for (int64_t o = 0; o < w->rows; o++) {
			double acc = 0;
			for (int64_t j = 0; j < w->cols; j++)
				acc += (double)dsm_round_act(x[t * w->cols + j], p) * dsm_mat_get_p(w, o, j, p);
			y[t * w->rows + o] = (float)acc;
		}
	return 0;
}

int dsm_ref_matmul_t(enum dsm_precision p, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	int rc = check_mat(w);
	if (rc < 0)
		return rc;
	for (int64_t t = 0; t < n; t++)
		for (int64_t o = 0; o < w->cols; o++) {
			double acc = 0;
			for (int64_t i = 0; i < w->rows; i++)
				acc += (double)dsm_round_act(x[t * w->rows + i], p) * dsm_mat_get_p(w, i, o, p);
			y[t * w->cols + o] = (float)acc;
		}
	return 0;
}

void dsm_ref_silu_mul(int64_t n, float *g, const float *u)
{
	for (int64_t i = 0; i < n; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

int dsm_ref_ffn(enum dsm_precision p, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	int64_t inter = w->gate.rows;
	if (w->up.rows != inter || w->down.cols != inter || w->gate.cols != w->up.cols ||
	    w->down.rows != w->gate.cols)
		return dsm_fail(DSM_EARG, "ffn: inconsistent gate/up/down shapes");
	float *g = malloc(sizeof(float) * (size_t)(2 * n * inter + 1));
	if (!g)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	float *u = g + n * inter;
	int rc = dsm_ref_matmul(p, &w->gate, n, x, g);
	if (rc == 0)
		rc = dsm_ref_matmul(p, &w->up, n, x, u);
	if (rc == 0) {
		dsm_ref_silu_mul(n * inter, g, u);
		rc = dsm_ref_matmul(p, &w->down, n, g, y);
	}
	free(g);
	return rc;
}

void dsm_ref_rmsnorm(int64_t n, int64_t d, const float *x, int64_t ldx, const float *w, float eps, float *y)
{
	for (int64_t t = 0; t < n; t++) {
		const float *xr = x + t * ldx;
		double ss = 0;
		for (int64_t i = 0; i < d; i++)
			ss += (double)xr[i] * xr[i];
		float r = (float)(1.0 / sqrt(ss / (double)d + eps));
		for (int64_t i = 0; i < d; i++)
			y[t * d + i] = xr[i] * r * w[i];
	}
}

void dsm_ref_layernorm(int64_t n, int64_t d, const float *x, const float *w, const float *b, float eps,
		       float *y)
{
	for (int64_t t = 0; t < n; t++) {
		const float *xr = x + t * d;
		double mu = 0, var = 0;
		for (int64_t i = 0; i < d; i++)
			mu += xr[i];
		mu /= (double)d;
		for (int64_t i = 0; i < d; i++)
			var += (xr[i] - mu) * (xr[i] - mu);
		var /= (double)d;
		double r = 1.0 / sqrt(var + eps);
		for (int64_t i = 0; i < d; i++)
			y[t * d + i] = (float)((xr[i] - mu) * r) * w[i] + b[i];
	}
}

void dsm_ref_rope(int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx, int64_t ldh,
		  const float *cos, const float *sin, int interleaved)
{
	int64_t half = dim / 2;
	for (int64_t t = 0; t < n; t++)
		for (int64_t h = 0; h < n_heads; h++) {
			float *v = x + t * ldx + h * ldh;
			for (int64_t j = 0; j < half; j++) {
				float c = cos[t * half + j], s = sin[t * half + j];
				int64_t i0 = interleaved ? 2 * j : j, i1 = interleaved ? 2 * j + 1 : j + half;
				float a = v[i0], b = v[i1];
				v[i0] = a * c - b * s;
				v[i1] = a * s + b * c;
			}
		}
}

int dsm_ref_hadamard(int64_t n, int64_t d, float *x)
{
	if (d < 1 || (d & (d - 1)))
		return dsm_fail(DSM_EARG, "hadamard: size %lld is not a power of two", (long long)d);
	double *tmp = malloc(sizeof(double) * (size_t)d);
	if (!tmp)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	double norm = 1.0 / sqrt((double)d);
	for (int64_t t = 0; t < n; t++) {
		float *v = x + t * d;
		for (int64_t j = 0; j < d; j++) {
			double acc = 0;
			for (int64_t i = 0; i < d; i++)
				acc += (__builtin_popcountll((unsigned long long)(i & j)) & 1) ? -v[i] : v[i];
			tmp[j] = acc * norm;
		}
		for (int64_t j = 0; j < d; j++)
			v[j] = (float)tmp[j];
	}
	free(tmp);
	return 0;
}

/* Softmax over the allowed keys of one row and the weighted sum, shared by both attention forms:
 * score[i] for the i-th allowed key (key position key[i]); p written back into score. */
static void softmax_inplace(double *score, int64_t m)
{
	double mx = -INFINITY, sum = 0;
	for (int64_t i = 0; i < m; i++)
		if (score[i] > mx)
			mx = score[i];
	for (int64_t i = 0; i < m; i++) {
		score[i] = exp(score[i] - mx);
		sum += score[i];
	}
	for (int64_t i = 0; i < m; i++)
		score[i] /= sum;
}

static int64_t mask_count(const struct dsm_attn_mask *m, int64_t n_keys)
{
	return m && m->sel ? m->n_sel : n_keys;
}

static int64_t mask_key(const struct dsm_attn_mask *m, int64_t i)
{
	return m && m->sel ? m->sel[i] : i;
}

static float cache_get(enum dsm_dtype t, const void *base, size_t at)
{
	if (t == DSM_BF16) {
		uint16_t b;
		memcpy(&b, (const char *)base + 2 * at, 2);
		return dsm_bf16_to_f32(b);
	}
	float f;
	memcpy(&f, (const char *)base + 4 * at, 4);
	return f;
}

int dsm_ref_attn_full(const struct dsm_attn_full_args *a)
{
	int64_t dn = a->dn, dr = a->dr, dv = a->dv, dkv = dn + dv;
	int64_t max_keys = 0;
	for (int64_t t = 0; t < a->n_q; t++)
		if (a->n_keys[t] > max_keys)
			max_keys = a->n_keys[t];
	double *score = malloc(sizeof(double) * (size_t)(max_keys + 1));
	if (!score)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int64_t t = 0; t < a->n_q; t++) {
		const float *q = a->q + t * a->ldq;
		const struct dsm_attn_mask *mk = a->mask ? &a->mask[t] : NULL;
		int64_t m = mask_count(mk, a->n_keys[t]);
		for (int64_t i = 0; i < m; i++) {
			int64_t s = mask_key(mk, i);
			double acc = 0;
			for (int64_t j = 0; j < dn; j++)
				acc += (double)q[j] * a->kv[s * dkv + j];
			for (int64_t j = 0; j < dr; j++)
				acc += (double)q[dn + j] * a->k_pe[s * dr + j];
			score[i] = acc * a->scale;
		}
		softmax_inplace(score, m);
		for (int64_t j = 0; j < dv; j++) {
			double acc = 0;
			for (int64_t i = 0; i < m; i++)
				acc += score[i] * a->kv[mask_key(mk, i) * dkv + dn + j];
			a->out[t * a->ldo + j] = (float)acc;
		}
	}
	free(score);
	return 0;
}

int dsm_ref_attn_latent(const struct dsm_attn_latent_args *a)
{
	int64_t r = a->r, dr = a->dr;
	int64_t m = mask_count(&a->mask, a->n_keys);
	double *score = malloc(sizeof(double) * (size_t)(m + 1));
	if (!score)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int64_t h = 0; h < a->n_heads; h++) {
		const float *ql = a->q_lat + h * r, *qp = a->q_pe + h * dr;
		for (int64_t i = 0; i < m; i++) {
			size_t s = (size_t)mask_key(&a->mask, i);
			double acc = 0;
			for (int64_t j = 0; j < r; j++)
				acc += (double)ql[j] * cache_get(a->cache_dtype, dsm_latent_row(a, (int64_t)s), (size_t)j);
			for (int64_t j = 0; j < dr; j++)
				acc += (double)qp[j] * cache_get(a->cache_dtype, dsm_pe_row(a, (int64_t)s), (size_t)j);
			score[i] = acc * a->scale;
		}
		softmax_inplace(score, m);
		for (int64_t j = 0; j < r; j++) {
			double acc = 0;
			for (int64_t i = 0; i < m; i++)
				acc += score[i] * cache_get(a->cache_dtype, dsm_latent_row(a, mask_key(&a->mask, i)), (size_t)j);
			a->o_lat[h * r + j] = (float)acc;
		}
	}
	free(score);
	return 0;
}

void dsm_ref_indexer_scores(int64_t n_heads, int64_t d, const float *q, const float *w, const float *k,
			    int64_t n_keys, float *out)
{
	for (int64_t s = 0; s < n_keys; s++) {
		double acc = 0;
		for (int64_t h = 0; h < n_heads; h++) {
			double dot = 0;
			for (int64_t j = 0; j < d; j++)
				dot += (double)q[h * d + j] * k[s * d + j];
			if (dot > 0)
				acc += w[h] * dot;
		}
		out[s] = (float)acc;
	}
}

struct scored { float v; int32_t i; };

/* Larger value first; equal values: lower index first. NaN sorts last. */
static int by_value_desc(const void *pa, const void *pb)
{
	const struct scored *a = pa, *b = pb;
	int an = isnan(a->v), bn = isnan(b->v);
	if (an != bn)
		return an - bn;
	if (!an && a->v != b->v)
		return a->v > b->v ? -1 : 1;
	return (a->i > b->i) - (a->i < b->i);
}

static int by_int(const void *pa, const void *pb)
{
	int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
	return (a > b) - (a < b);
}

int dsm_ref_topk(const float *x, int64_t n, int64_t k, int32_t *idx)
{
	if (k < 0 || k > n || n > INT32_MAX)
		return dsm_fail(DSM_EARG, "topk: k = %lld of n = %lld", (long long)k, (long long)n);
	struct scored *v = malloc(sizeof *v * (size_t)(n + 1));
	if (!v)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int64_t i = 0; i < n; i++)
		v[i] = (struct scored){ x[i], (int32_t)i };
	qsort(v, (size_t)n, sizeof *v, by_value_desc);
	for (int64_t i = 0; i < k; i++)
		idx[i] = v[i].i;
	qsort(idx, (size_t)k, sizeof *idx, by_int);
	free(v);
	return 0;
}

int dsm_ref_route(const struct dsm_route_args *a)
{
	int64_t E = a->n_experts;
	int G = a->n_group;
	if (G < 1 || E % G || a->topk_group < 1 || a->topk_group > G || a->top_k < 1 ||
	    a->top_k > a->topk_group * (E / G) || (G > 1 && E / G < 2))
		return dsm_fail(DSM_EARG, "route: bad grouping (%lld experts, %d groups, keep %d, top %d)",
				(long long)E, G, a->topk_group, a->top_k);
	int64_t per = E / G;
	float *s = malloc(sizeof(float) * (size_t)(3 * E + G));
	int32_t *tmp = malloc(sizeof(int32_t) * (size_t)(E + G));
	if (!s || !tmp) {
		free(s);
		free(tmp);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	float *b = s + E, *masked = b + E, *gscore = masked + E;
	int rc = 0;
	for (int64_t t = 0; t < a->n_tokens && rc == 0; t++) {
		for (int64_t e = 0; e < E; e++) {
			s[e] = 1.0f / (1.0f + expf(-a->logits[t * E + e]));
			b[e] = s[e] + a->bias[e];
			masked[e] = b[e];
		}
		if (G > 1) {
			for (int g = 0; g < G; g++) {
				/* sum of the two largest biased scores of the group */
				float m1 = -INFINITY, m2 = -INFINITY;
				for (int64_t e = g * per; e < (g + 1) * per; e++) {
					if (b[e] > m1) {
						m2 = m1;
						m1 = b[e];
					} else if (b[e] > m2) {
						m2 = b[e];
					}
				}
				gscore[g] = m1 + m2;
			}
			int32_t *keep = tmp + E;
			if ((rc = dsm_ref_topk(gscore, G, a->topk_group, keep)) < 0)
				break;
			for (int g = 0, k = 0; g < G; g++) {
				if (k < a->topk_group && keep[k] == g) {
					k++;
					continue;
				}
				for (int64_t e = g * per; e < (g + 1) * per; e++)
					masked[e] = -INFINITY;
			}
		}
		int32_t *idx = a->idx + t * a->top_k;
		if ((rc = dsm_ref_topk(masked, E, a->top_k, idx)) < 0)
			break;
		double sum = 0;
		for (int k = 0; k < a->top_k; k++)
			sum += s[idx[k]];
		for (int k = 0; k < a->top_k; k++) {
			double wk = a->normalize ? s[idx[k]] / sum : s[idx[k]];
			a->weight[t * a->top_k + k] = (float)(wk * a->scaling);
		}
	}
	free(s);
	free(tmp);
	return rc;
}

void dsm_ref_add(int64_t n, float *x, const float *y)
{
	for (int64_t i = 0; i < n; i++)
		x[i] += y[i];
}

void dsm_ref_scale(int64_t n, float *x, float s)
{
	for (int64_t i = 0; i < n; i++)
		x[i] *= s;
}

int dsm_ref_convert(int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx, void *y,
		    enum dsm_dtype yt, int64_t ldy)
{
	if ((xt != DSM_F32 && xt != DSM_BF16) || (yt != DSM_F32 && yt != DSM_BF16))
		return dsm_fail(DSM_EUNSUPPORTED, "convert: %s to %s (F32 and BF16 only)", dsm_dtype_name(xt),
				dsm_dtype_name(yt));
	size_t xs = dsm_dtype_size(xt), ys = dsm_dtype_size(yt);
	for (int64_t i = 0; i < rows; i++) {
		const char *xi = (const char *)x + (size_t)(i * ldx) * xs;
		char *yi = (char *)y + (size_t)(i * ldy) * ys;
		if (yt == DSM_F32)
			dsm_convert_to_f32((float *)yi, xi, xt, (size_t)cols);
		else if (xt == DSM_BF16)
			memcpy(yi, xi, (size_t)cols * xs);
		else
			for (int64_t j = 0; j < cols; j++)
				((uint16_t *)yi)[j] = dsm_f32_to_bf16(((const float *)xi)[j]);
	}
	return 0;
}

void dsm_ref_fp8_round(int64_t n, int64_t d, float *x, int ue8m0)
{
	for (int64_t i = 0; i < n; i++) {
		float *row = x + i * d;
		for (int64_t b0 = 0; b0 < d; b0 += 128) {
			int64_t len = d - b0 < 128 ? d - b0 : 128;
			float amax = 1e-4f;
			for (int64_t j = 0; j < len; j++)
				amax = fabsf(row[b0 + j]) > amax ? fabsf(row[b0 + j]) : amax;
			double scale = (double)amax / 448.0;
			if (ue8m0) {
				int e;
				double mant = frexp(scale, &e); /* scale = mant * 2^e, 0.5 <= mant < 1 */
				scale = ldexp(1.0, mant == 0.5 ? e - 1 : e);
			}
			for (int64_t j = 0; j < len; j++) {
				double v = row[b0 + j] / scale;
				v = v > 448 ? 448 : v < -448 ? -448 : v;
				row[b0 + j] = (float)(dsm_fp8_to_f32(dsm_f32_to_fp8((float)v)) * scale);
			}
		}
	}
}

int dsm_ref_gather(int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows, int64_t cols,
		   enum dsm_dtype xt, void *y, enum dsm_dtype yt)
{
	if (n > 0 && (last_rows < 1 || last_rows > block_rows))
		return dsm_fail(DSM_EARG, "gather: the last block's %lld rows are not within [1, %lld]", (long long)last_rows,
				(long long)block_rows);
	int rc = 0;
	for (int64_t i = 0; i < n && rc == 0; i++) {
		int64_t rows = i == n - 1 ? last_rows : block_rows;
		char *yi = (char *)y + (size_t)(i * block_rows * cols) * dsm_dtype_size(yt);
		rc = dsm_ref_convert(1, rows * cols, x[i], xt, 0, yi, yt, 0);
	}
	return rc;
}
