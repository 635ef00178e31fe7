/* The per-element arithmetic of the cuda backend's kernels, written once for the GPU and the CPU.
 *
 * Every function here is DSM_HD: __host__ __device__ under nvcc, static inline in plain C. The kernels
 * (the .cu files of kernels/cuda/) call them for every value they compute, and tests/test_cuda_math.c calls the same
 * functions on the CPU and compares them, and scalar ops composed of them, with the references of
 * kernels/cpu/ref_ops.c and kernels/dtype.c. So the numerics of the GPU code are tested in every build,
 * with or without a GPU; what only a GPU run checks is the parallel structure around them.
 *
 * C that compiles as C11 and as CUDA C++: no references, no templates, no C99-only syntax that C++
 * lacks (no designated initializers, no compound literals). */
#ifndef DSM_CUDA_DEVICE_MATH_H
#define DSM_CUDA_DEVICE_MATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define DSM_HD __host__ __device__ inline
#else
#define DSM_HD static inline
#endif

#define DM_BLOCK 128 /* FP8 block size, as DSM_BLOCK in backend.h */

/* ---- bit casts ------------------------------------------------------------------------------- */

DSM_HD uint32_t dm_f2u(float f)
{
#if defined(__CUDA_ARCH__)
	return __float_as_uint(f);
#else
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
#endif
}

DSM_HD float dm_u2f(uint32_t u)
{
#if defined(__CUDA_ARCH__)
	return __uint_as_float(u);
#else
	float f;
	memcpy(&f, &u, 4);
	return f;
#endif
}

/* ---- number formats -------------------------------------------------------------------------- */

/* FP8 E4M3 (float8_e4m3fn) -> float, exact: normal codes by placing the exponent and mantissa bits
 * (e - 7 + 127 = e + 120), subnormals m * 2^-9, 0x7F / 0xFF NaN (signed, as dtype.c's table). */
DSM_HD float dm_fp8_e4m3(uint8_t code)
{
	uint32_t s = (uint32_t)(code >> 7), e = (uint32_t)(code >> 3) & 15u, m = (uint32_t)code & 7u;
	uint32_t sign = s << 31;
	if (e == 15 && m == 7)
		return dm_u2f(sign | 0x7fc00000u);
	if (e == 0)
		return dm_u2f(sign | dm_f2u((float)m * 0.001953125f));
	return dm_u2f(sign | ((e + 120u) << 23) | (m << 20));
}

/* BF16 bits -> float (exact). */
DSM_HD float dm_bf16_to_f32(uint16_t b)
{
	return dm_u2f((uint32_t)b << 16);
}

/* float -> BF16 bits, round to nearest even; NaN stays NaN (quiet), as dsm_f32_to_bf16. */
DSM_HD uint16_t dm_f32_to_bf16(float x)
{
	uint32_t u = dm_f2u(x);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x0040u);
	return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

/* float -> FP8 E4M3 code, round to nearest even, as dsm_f32_to_fp8: NaN -> 0x7F (either sign), |x| >= 448
 * (inf included) -> +-448 (0x7E / 0xFE). Subnormal codes m * 2^-9 (m < 8; m = 8 rounds up to the first normal
 * code, 8) by rounding |x| * 512 to an integer; normal codes by rounding the float's bits to 3 mantissa bits,
 * a carry moving into the exponent (FP8 exponent = float exponent - 120). */
DSM_HD uint8_t dm_f32_to_fp8(float x)
{
	if (x != x)
		return 0x7f;
	uint8_t sign = (uint8_t)((dm_f2u(x) >> 31) << 7);
	float a = fabsf(x);
	if (a >= 448.0f)
		return (uint8_t)(sign | 0x7e);
	if (a < 0.015625f) /* 2^-6 */
		return (uint8_t)(sign | (uint8_t)rintf(a * 512.0f));
	uint32_t u = dm_f2u(a);
	uint32_t r = (u + 0x7ffffu + ((u >> 20) & 1u)) >> 20;
	return (uint8_t)(sign | (uint8_t)(r - (120u << 3)));
}

/* x as a BF16 multiply sees it. */
DSM_HD float dm_round_bf16(float x)
{
	return dm_bf16_to_f32(dm_f32_to_bf16(x));
}

/* A value as the precision's multiply sees it (bf16 != 0: rounded to BF16), for weights and activations. */
DSM_HD float dm_round_act(float x, int bf16)
{
	return bf16 ? dm_round_bf16(x) : x;
}

/* Index of the block scale of stored element (row, col) of a [*, cols] FP8 tensor. */
DSM_HD int64_t dm_scale_index(int64_t row, int64_t col, int64_t cols)
{
	return (row / DM_BLOCK) * ((cols + DM_BLOCK - 1) / DM_BLOCK) + col / DM_BLOCK;
}

/* Weight dtypes, as enum dsm_dtype in dtype.h (kept as plain ints so that this header stands alone). */
#define DM_F8_E4M3 1
#define DM_BF16 2
#define DM_F32 4

/* Stored element (row, col) of a [*, cols] weight of dtype `dtype`, dequantized (F8: code x block scale)
 * and rounded as precision bf16 sees it: dsm_mat_get_p. */
DSM_HD float dm_weight_get(int dtype, const void *data, const float *scale, int64_t cols, int64_t row,
			   int64_t col, int bf16)
{
	int64_t at = row * cols + col;
	float v;
	if (dtype == DM_F8_E4M3)
		v = dm_fp8_e4m3(((const uint8_t *)data)[at]) * scale[dm_scale_index(row, col, cols)];
	else if (dtype == DM_BF16)
		v = dm_bf16_to_f32(((const uint16_t *)data)[at]);
	else
		v = ((const float *)data)[at];
	return dm_round_act(v, bf16);
}

/* ---- conversions between activation buffers (the convert op) ------------------------------- */

/* Element i of x (dtype xt) to element k of y (dtype yt), both DM_F32 or DM_BF16: the same type copies the
 * bits, F32 -> BF16 rounds to nearest even, BF16 -> F32 is exact. */
DSM_HD void dm_convert_elem(const void *x, int xt, int64_t i, void *y, int yt, int64_t k)
{
	if (xt == DM_BF16 && yt == DM_BF16)
		((uint16_t *)y)[k] = ((const uint16_t *)x)[i];
	else if (xt == DM_BF16)
		((float *)y)[k] = dm_bf16_to_f32(((const uint16_t *)x)[i]);
	else if (yt == DM_BF16)
		((uint16_t *)y)[k] = dm_f32_to_bf16(((const float *)x)[i]);
	else
		((float *)y)[k] = ((const float *)x)[i];
}

/* ---- the indexer's FP8 rounding (the fp8_round op) -------------------------------------------
 * A block of up to 128 values: amax = max |x| floored at 1e-4 (NaN ignored), scale = amax / 448 in double
 * (with ue8m0 the power of two 2^ceil(log2(scale))), then each value through FP8 at that scale. */

/* The running amax with one more value: |v| if larger (a NaN never is). Also merges two partial maxima. */
DSM_HD float dm_amax_push(float m, float v)
{
	float a = fabsf(v);
	return a > m ? a : m;
}

#define DM_AMAX_FLOOR 1e-4f

/* The block's scale from its amax. */
DSM_HD double dm_fp8_block_scale(float amax, int ue8m0)
{
	double scale = (double)amax / 448.0;
	if (ue8m0) {
		int e;
		double mant = frexp(scale, &e);
		scale = ldexp(1.0, mant == 0.5 ? e - 1 : e);
	}
	return scale;
}

/* One value of a block of scale `scale`, through FP8. */
DSM_HD float dm_fp8_round_value(float x, double scale)
{
	double v = x / scale;
	v = v > 448 ? 448 : v < -448 ? -448 : v;
	return (float)(dm_fp8_e4m3(dm_f32_to_fp8((float)v)) * scale);
}

/* In place: one block x[0 .. len), len <= 128 (the scalar form of the op, for the tests). */
DSM_HD void dm_fp8_round_block(float *x, int64_t len, int ue8m0)
{
	float amax = DM_AMAX_FLOOR;
	for (int64_t j = 0; j < len; j++)
		amax = dm_amax_push(amax, x[j]);
	double scale = dm_fp8_block_scale(amax, ue8m0);
	for (int64_t j = 0; j < len; j++)
		x[j] = dm_fp8_round_value(x[j], scale);
}

/* ---- elementwise ----------------------------------------------------------------------------- */

DSM_HD float dm_silu(float g)
{
	return g / (1.0f + expf(-g));
}

/* SwiGLU of one gate/up pair: silu(g) * u (the expression of dsm_ref_silu_mul). */
DSM_HD float dm_swiglu(float g, float u)
{
	return g / (1.0f + expf(-g)) * u;
}

DSM_HD float dm_sigmoid(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

/* RMSNorm: the row's multiplier from its sum of squares ss over d values, then each output. */
DSM_HD float dm_rms_scale(double ss, int64_t d, float eps)
{
	return (float)(1.0 / sqrt(ss / (double)d + eps));
}

DSM_HD float dm_rms_out(float x, float r, float w)
{
	return x * r * w;
}

/* LayerNorm: 1 / sqrt(var + eps) from the biased variance, then each output. */
DSM_HD double dm_ln_rscale(double var, float eps)
{
	return 1.0 / sqrt(var + eps);
}

DSM_HD float dm_ln_out(float x, double mu, double r, float w, float b)
{
	return (float)((x - mu) * r) * w + b;
}

/* RoPE: the two positions of pair j of a vector of 2 * half rotated values, interleaved (2j, 2j + 1) or
 * halves (j, j + half). */
DSM_HD void dm_rope_index(int64_t j, int64_t half, int interleaved, int64_t *i0, int64_t *i1)
{
	*i0 = interleaved ? 2 * j : j;
	*i1 = interleaved ? 2 * j + 1 : j + half;
}

/* Rotates the pair (a, b) by the angle whose cosine and sine are c and s. */
DSM_HD void dm_rope_pair(float *a, float *b, float c, float s)
{
	float x = *a, y = *b;
	*a = x * c - y * s;
	*b = x * s + y * c;
}

/* One butterfly of the fast Walsh-Hadamard transform: (a, b) -> (a + b, a - b). log2(d) rounds over the
 * pairs (i, i + h), h = 1, 2, 4, .. with i & h == 0, times 1 / sqrt(d), give x . H_d (Sylvester order). */
DSM_HD void dm_butterfly(float *a, float *b)
{
	float x = *a, y = *b;
	*a = x + y;
	*b = x - y;
}

DSM_HD float dm_hadamard_norm(int64_t d)
{
	return (float)(1.0 / sqrt((double)d));
}

/* ---- online softmax (attention) ----------------------------------------------------------------
 * The running state of softmax over a stream of scores: m the largest score so far, l = sum exp(s - m).
 * With the weighted sum acc = sum exp(s - m) v: push one score s, then acc = acc * alpha + p * v. */
struct dm_softmax {
	float m, l;
};

DSM_HD struct dm_softmax dm_softmax_init(void)
{
	struct dm_softmax st;
	st.m = -INFINITY;
	st.l = 0.0f;
	return st;
}

/* Pushes score s; returns p (the weight of s's value) and sets *alpha (the factor of the old acc). */
DSM_HD float dm_softmax_push(struct dm_softmax *st, float s, float *alpha)
{
	float m = s > st->m ? s : st->m;
	float a = st->m == -INFINITY ? 0.0f : expf(st->m - m);
	float p = expf(s - m);
	st->l = st->l * a + p;
	st->m = m;
	*alpha = a;
	return p;
}

/* Merges state o into st: acc = acc * *a_self + acc_o * *a_other. An empty state (no score) counts
 * for nothing. */
DSM_HD void dm_softmax_merge(struct dm_softmax *st, struct dm_softmax o, float *a_self, float *a_other)
{
	float m = o.m > st->m ? o.m : st->m;
	float as = st->m == -INFINITY ? 0.0f : expf(st->m - m);
	float ao = o.m == -INFINITY ? 0.0f : expf(o.m - m);
	st->l = st->l * as + o.l * ao;
	st->m = m;
	*a_self = as;
	*a_other = ao;
}

/* The final multiplier of acc: 1 / l, or 0 when no key was allowed (the output is then 0). */
DSM_HD float dm_softmax_norm(struct dm_softmax st)
{
	return st.l > 0.0f ? 1.0f / st.l : 0.0f;
}

/* Key s's row of width values of es bytes in an attention cache: contiguous from base (blocks NULL), or row
 * s % block_rows of the block blocks[s / block_rows] (block_rows >= 1), the blocks [block_rows, width] each, as
 * dsm_latent_row / dsm_pe_row of backend.h lay out the latent cache in blocks. */
DSM_HD const void *dm_cache_row(const void *base, const void *const *blocks, int64_t block_rows, int64_t s,
				int64_t width, int64_t es)
{
	if (!blocks)
		return (const char *)base + s * width * es;
	return (const char *)blocks[s / block_rows] + s % block_rows * width * es;
}

/* Lightning indexer: one head's contribution w * relu(q . k). */
DSM_HD float dm_relu_weighted(float w, float dot)
{
	return dot > 0.0f ? w * dot : 0.0f;
}

/* ---- selection (topk, routing) -------------------------------------------------------------- */

/* 1 if value va at position ia comes before vb at ib in "k largest" order: larger first, equal values
 * lower position first, NaN after every number (the order of dsm_ref_topk). */
DSM_HD int dm_better(float va, int64_t ia, float vb, int64_t ib)
{
	int an = va != va, bn = vb != vb;
	if (an != bn)
		return bn;
	if (!an && va != vb)
		return va > vb;
	return ia < ib;
}

/* An unsigned key whose order is the value order of dm_better: larger value, larger key; -0 and +0
 * equal; every NaN the lowest key, 0. Ties between equal keys go to the lower position. */
DSM_HD uint32_t dm_topk_key(float x)
{
	if (x != x)
		return 0;
	if (x == 0.0f)
		x = 0.0f; /* -0 -> +0 */
	uint32_t u = dm_f2u(x);
	return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

/* noaux_tc group score: the sum of the two largest biased scores of a group, pushed one at a time
 * (m1 >= m2, both starting at -inf). */
DSM_HD void dm_top2_push(float *m1, float *m2, float v)
{
	if (v > *m1) {
		*m2 = *m1;
		*m1 = v;
	} else if (v > *m2) {
		*m2 = v;
	}
}

/* noaux_tc weight of a chosen expert with sigmoid score s; sum: the scores of the token's chosen experts
 * summed in ascending expert order. */
DSM_HD float dm_route_weight(float s, double sum, int normalize, float scaling)
{
	double w = normalize ? s / sum : s;
	return (float)(w * scaling);
}

#endif
