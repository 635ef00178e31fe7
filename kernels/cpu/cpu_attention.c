/* Attention, indexer and norm ops of the cpu backend: the reference math with F32 accumulation,
 * threaded with OpenMP. Checked against ref_ops.c by tests/test_ops. */
#include "cpu_backend.h"
#include "cpu_team.h"

#include "error.h"
#include "ref_ops.h"

#include <math.h>
#include <omp.h>
#include <string.h>
#if defined(__x86_64__)
#include <immintrin.h>
#endif

static inline int64_t mask_count(const struct dsm_attn_mask *m, int64_t n_keys)
{
	return m && m->sel ? m->n_sel : n_keys;
}

static inline int64_t mask_key(const struct dsm_attn_mask *m, int64_t i)
{
	return m && m->sel ? m->sel[i] : i;
}

#if defined(__x86_64__)
/* The lanes of a 16-float step with `left` floats still to go. */
static inline __mmask16 lanes_left(int64_t left)
{
	return left >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << left) - 1);
}

/* e^x in 16 lanes, within 2 ulp of expf for x in [-87, 88] (Cephes' polynomial on x - n ln 2, |x - n ln 2| <=
 * ln 2 / 2, then times 2^n); 0 below -104, NaN for NaN (max keeps its second operand when one is NaN). */
__attribute__((target("avx512f"))) static __m512 exp_avx512(__m512 x)
{
	x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);
	__m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
					_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
	__m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
	r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
	__m512 q = _mm512_set1_ps(1.9875691500e-4f);
	q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.3981999507e-3f));
	q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(8.3334519073e-3f));
	q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(4.1665795894e-2f));
	q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(1.6666665459e-1f));
	q = _mm512_fmadd_ps(q, r, _mm512_set1_ps(5.0000001201e-1f));
	q = _mm512_fmadd_ps(q, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
	return _mm512_scalef_ps(q, n);
}

/* cpu_softmax_f32 in 16 lanes: the sum in double, as its loop. */
__attribute__((target("avx512f"))) static void softmax_avx512(float *p, int64_t m)
{
	__m512 mx = _mm512_set1_ps(-INFINITY);
	for (int64_t i = 0; i < m; i += 16) {
		__mmask16 k = lanes_left(m - i);
		mx = _mm512_mask_max_ps(mx, k, mx, _mm512_maskz_loadu_ps(k, p + i));
	}
	__m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
	__m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
	for (int64_t i = 0; i < m; i += 16) {
		__mmask16 k = lanes_left(m - i);
		__m512 e = _mm512_maskz_mov_ps(k, exp_avx512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, p + i), top)));
		_mm512_mask_storeu_ps(p + i, k, e);
		s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
		s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
	}
	__m512 inv = _mm512_set1_ps((float)(1.0 / _mm512_reduce_add_pd(_mm512_add_pd(s0, s1))));
	for (int64_t i = 0; i < m; i += 16) {
		__mmask16 k = lanes_left(m - i);
		_mm512_mask_storeu_ps(p + i, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, p + i), inv));
	}
}
#endif

/* p[0..m) = softmax(p[0..m)): with AVX-512 in softmax_avx512 (a polynomial e^x; the logits of a step change
 * within float rounding), else with expf. */
void cpu_softmax_f32(float *p, int64_t m)
{
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx512f")) {
		softmax_avx512(p, m);
		return;
	}
#endif
	float mx = -INFINITY;
	for (int64_t i = 0; i < m; i++)
		mx = p[i] > mx ? p[i] : mx;
	double sum = 0;
	for (int64_t i = 0; i < m; i++) {
		p[i] = expf(p[i] - mx);
		sum += p[i];
	}
	float inv = (float)(1.0 / sum);
	for (int64_t i = 0; i < m; i++)
		p[i] *= inv;
}

/* Full-form attention, vectorized for the host. The keys a query meets are packed transposed, kT [d][ldk]
 * (d = dn + dr dims, ldk keys rounded up to FK, zeros past them), with their values vp [ldk][ldv] (ldv = dv
 * rounded up to FK, zeros past): a score is then FK keys side by side, each adding its d products in ascending
 * dim, and an output row FK dims side by side, each adding its keys in order. Causal queries share one packing
 * of the keys and go in groups of FQ, which share every loaded key and value vector: in a group each query
 * runs to the longest one's keys, and the keys past its own get probability 0, which adds nothing. A query
 * with a selection of keys gets its own packing. So a query's output does not depend on its group, the
 * threads, or whether its keys came as a causal bound or as the selection of every key. */
enum { FK = 64, FQ = 4 };

static int64_t round_up64(int64_t n, int64_t k)
{
	return (n + k - 1) / k * k;
}

/* kT and vp of keys [0, m) (keys NULL) or keys[0, m), rows [i0, i1) of them; zeros past m up to ldk. */
static void full_pack(const struct dsm_attn_full_args *a, const int32_t *keys, int64_t m, int64_t i0, int64_t i1,
		      float *kT, int64_t ldk, float *vp, int64_t ldv)
{
	int64_t dn = a->dn, dr = a->dr, dv = a->dv, dkv = dn + dv;
	for (int64_t i = i0; i < i1; i++) {
		float *v = vp + i * ldv;
		if (i >= m) {
			for (int64_t j = 0; j < dn + dr; j++)
				kT[j * ldk + i] = 0;
			memset(v, 0, sizeof(float) * (size_t)ldv);
			continue;
		}
		int64_t s = keys ? keys[i] : i;
		const float *k = a->kv + s * dkv, *kp = a->k_pe + s * dr;
		for (int64_t j = 0; j < dn; j++)
			kT[j * ldk + i] = k[j];
		for (int64_t j = 0; j < dr; j++)
			kT[(dn + j) * ldk + i] = kp[j];
		memcpy(v, k + dn, sizeof(float) * (size_t)dv);
		memset(v + dv, 0, sizeof(float) * (size_t)(ldv - dv));
	}
}

enum { NV = FK / LANES };

/* acc[i][c] = sum over j < n, in order, of x[i * ldx + j] * r[j * ldr + 16 c .. + 16), i < NQ, c < NV: the
 * scores (x the queries, r the packed keys) and the outputs (x the probabilities, r the packed values). */
static inline __attribute__((always_inline)) void full_sums(const float *x, int64_t ldx, const int NQ, const float *r,
							    int64_t ldr, int64_t n, v16f acc[FQ][NV])
{
	for (int i = 0; i < NQ; i++)
		for (int c = 0; c < NV; c++)
			acc[i][c] = (v16f){ 0 };
	for (int64_t j = 0; j < n; j++) {
		v16f v[NV];
#pragma GCC unroll 4
		for (int c = 0; c < NV; c++)
			v[c] = load_f32(r + j * ldr + c * LANES);
#pragma GCC unroll 4
		for (int i = 0; i < NQ; i++)
#pragma GCC unroll 4
			for (int c = 0; c < NV; c++)
				acc[i][c] += x[i * ldx + j] * v[c];
	}
}

/* NQ queries (rows of q at stride ldq), query i over the first m[i] packed keys: out[i * ldo + j], j < dv.
 * p: scratch [NQ][ldk]. */
static inline __attribute__((always_inline)) void full_queries(const struct dsm_attn_full_args *a, const float *q,
							       const int64_t *m, const int NQ, const float *kT,
							       int64_t ldk, const float *vp, int64_t ldv, float *p,
							       float *out)
{
	int64_t mmax = 0;
	for (int i = 0; i < NQ; i++)
		mmax = m[i] > mmax ? m[i] : mmax;
	v16f acc[FQ][NV];
	for (int64_t s0 = 0; s0 < round_up64(mmax, FK); s0 += FK) {
		full_sums(q, a->ldq, NQ, kT + s0, ldk, a->dn + a->dr, acc);
		for (int i = 0; i < NQ; i++)
			for (int c = 0; c < NV; c++) {
				v16f sc = acc[i][c] * a->scale;
				memcpy(p + i * ldk + s0 + c * LANES, &sc, sizeof sc);
			}
	}
	for (int i = 0; i < NQ; i++) {
		cpu_softmax_f32(p + i * ldk, m[i]);
		memset(p + i * ldk + m[i], 0, sizeof(float) * (size_t)(mmax - m[i]));
	}
	for (int64_t j0 = 0; j0 < ldv; j0 += FK) {
		full_sums(p, ldk, NQ, vp + j0, ldv, mmax, acc);
		int64_t len = a->dv - j0 < FK ? a->dv - j0 : FK;
		for (int i = 0; i < NQ; i++)
			memcpy(out + i * a->ldo + j0, acc[i], sizeof(float) * (size_t)len);
	}
}

CPU_CLONES __attribute__((optimize("fp-contract=fast"))) static void
full_group(const struct dsm_attn_full_args *a, const float *q, const int64_t *m, const float *kT, int64_t ldk,
	   const float *vp, int64_t ldv, float *p, float *out)
{
	full_queries(a, q, m, FQ, kT, ldk, vp, ldv, p, out);
}

CPU_CLONES __attribute__((optimize("fp-contract=fast"))) static void
full_one(const struct dsm_attn_full_args *a, const float *q, const int64_t *m, const float *kT, int64_t ldk,
	 const float *vp, int64_t ldv, float *p, float *out)
{
	full_queries(a, q, m, 1, kT, ldk, vp, ldv, p, out);
}

/* attn_full's scratch, in floats, for queries of at most `keys` keys: the packed keys kT [d, ldk] and values
 * vp [ldk, ldv] once (shared), or per thread when masked (each query selects its own keys); then per thread
 * FQ score rows, and the pack when masked (per). */
struct full_layout {
	int64_t ldk, ldv;
	size_t shared, per;
};

static struct full_layout full_layout(int64_t keys, int64_t d, int64_t dv, int masked)
{
	struct full_layout l = { round_up64(keys, FK), round_up64(dv, FK), 0, 0 };
	size_t pack = (size_t)l.ldk * (size_t)(d + l.ldv);
	l.shared = masked ? 0 : pack;
	l.per = (size_t)FQ * (size_t)l.ldk + (masked ? pack : 0);
	return l;
}

size_t cpu_attn_full_floats(int64_t keys, int64_t d, int64_t dv, int masked, int nt)
{
	struct full_layout l = full_layout(keys, d, dv, masked);
	return l.shared + (size_t)nt * l.per;
}

/* The decode attention over the latent cache meets every head with every key. Looping over keys outside and heads
 * inside, each key re-read every head's query (128 x 576 floats on the real model, 295 KiB) and every head's
 * output slice from L2: m x 0.5 MiB a layer, which at 2048 keys was most of a `wide` token. The keys now come in
 * blocks of LATENT_KEYS, their rows converted once into L1 and met by one head's query at a time, and the values
 * sum LATENT_HEADS heads x 64 dims over every key at once (docs/forward.md). */
#define LATENT_KEYS 8
#define LATENT_HEADS 4

/* The scratch of attn_latent, in floats: the scores [H, keys], then per thread LATENT_KEYS converted cache rows,
 * then (from a multiple of 16 floats) a table of the keys' latent rows [keys], written by the scores and read by
 * the values, which would otherwise divide by the block size for every key, head group and slice. */
static size_t latent_table_at(int64_t H, int64_t keys, int64_t width, int nt)
{
	return ((size_t)H * (size_t)keys + (size_t)nt * LATENT_KEYS * (size_t)width + 15) / 16 * 16;
}

size_t cpu_attn_latent_floats(int64_t H, int64_t keys, int64_t width, int nt)
{
	return latent_table_at(H, keys, width, nt) + (size_t)keys * sizeof(void *) / sizeof(float);
}

int cpu_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a)
{
	struct cpu_backend *cb = cpu_of(be);
	int64_t d = a->dn + a->dr, T = a->n_q, max_keys = 1;
	for (int64_t t = 0; t < T; t++) {
		int64_t m = mask_count(a->mask ? &a->mask[t] : NULL, a->n_keys[t]);
		max_keys = m > max_keys ? m : max_keys;
	}
	int masked = a->mask != NULL;
	struct full_layout l = full_layout(max_keys, d, a->dv, masked);
	int64_t ldk = l.ldk, ldv = l.ldv;
	size_t per = l.per;
	float *buf = cpu_scratch_get(&cb->attn, sizeof(float) * cpu_attn_full_floats(max_keys, d, a->dv, masked,
										   omp_get_max_threads()));
	if (!buf)
		return DSM_ENOMEM;
	float *thread_buf = buf + l.shared;
	int64_t groups = a->mask ? T : (T + FQ - 1) / FQ;
#pragma omp parallel if (T * max_keys * (d + a->dv) >= CPU_PARALLEL_MIN)
	{
		float *p = thread_buf + per * (size_t)omp_get_thread_num(), *kT = p + FQ * ldk, *vp = kT + d * ldk;
		if (!a->mask) {
			kT = buf, vp = buf + d * ldk;
#pragma omp for schedule(static)
			for (int64_t i0 = 0; i0 < ldk; i0 += FK)
				full_pack(a, NULL, max_keys, i0, i0 + FK, kT, ldk, vp, ldv);
		}
#pragma omp for schedule(dynamic, 1)
		for (int64_t g = 0; g < groups; g++) {
			if (a->mask) {
				const struct dsm_attn_mask *mk = &a->mask[g];
				int64_t m = mask_count(mk, a->n_keys[g]);
				full_pack(a, mk->sel, m, 0, round_up64(m, FK), kT, ldk, vp, ldv);
				full_one(a, a->q + g * a->ldq, &m, kT, ldk, vp, ldv, p, a->out + g * a->ldo);
			} else if ((g + 1) * FQ <= T) {
				full_group(a, a->q + g * FQ * a->ldq, a->n_keys + g * FQ, kT, ldk, vp, ldv, p,
					   a->out + g * FQ * a->ldo);
			} else {
				for (int64_t t = g * FQ; t < T; t++)
					full_one(a, a->q + t * a->ldq, a->n_keys + t, kT, ldk, vp, ldv, p,
						 a->out + t * a->ldo);
			}
		}
	}
	return 0;
}

/* A cache row of type t and length n at src, as F32 into dst. */
static inline void cache_row(enum dsm_dtype t, const void *src, int64_t n, float *dst)
{
	if (t == DSM_BF16) {
		const uint16_t *b = src;
#pragma omp simd
		for (int64_t j = 0; j < n; j++)
			dst[j] = dsm_bf16_to_f32(b[j]);
	} else {
		memcpy(dst, src, sizeof(float) * (size_t)n);
	}
}

#if defined(__x86_64__)
/* One head's scores against nk <= LATENT_KEYS converted rows [r + dr] at rows (stride w): 16 lanes per key, each
 * adding its dims (j = lane mod 16) in ascending order by fused multiply-adds, the query's 16 loaded once for
 * every key; the lanes summed by _mm512_reduce_add_ps. out gets LATENT_KEYS scores (those past nk repeat the first
 * row's), so that every accumulator is indexed by a constant and stays in a register. */
__attribute__((target("avx512f"))) static void scores_avx512(const float *ql, const float *qp, int64_t r, int64_t dr,
							     const float *rows, int64_t w, int64_t nk,
							     float out[LATENT_KEYS])
{
	__m512 acc[LATENT_KEYS];
	const float *rp[LATENT_KEYS];
#pragma GCC unroll 8
	for (int k = 0; k < LATENT_KEYS; k++) {
		acc[k] = _mm512_setzero_ps();
		rp[k] = rows + (k < nk ? k : 0) * w;
	}
	for (int part = 0; part < 2; part++) {
		const float *q = part ? qp : ql;
		int64_t n = part ? dr : r, off = part ? r : 0;
		for (int64_t j = 0; j < n; j += 16) {
			__mmask16 mk = lanes_left(n - j);
			__m512 x = _mm512_maskz_loadu_ps(mk, q + j);
#pragma GCC unroll 8
			for (int k = 0; k < LATENT_KEYS; k++)
				acc[k] = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(mk, rp[k] + off + j), acc[k]);
		}
	}
#pragma GCC unroll 8
	for (int k = 0; k < LATENT_KEYS; k++)
		out[k] = _mm512_reduce_add_ps(acc[k]);
}
#endif

/* Scores of keys [i0, i1) (i1 - i0 <= LATENT_KEYS) against every head: p[h * m + i] = (q_lat[h] . c_s +
 * q_pe[h] . pe_s) * scale with s the i-th key, and lat[i] = s's latent row; rows: scratch [LATENT_KEYS, r + dr].
 * With AVX-512 in scores_avx512, else vectorized for the host (CPU_CLONES); each dot product's order depends
 * only on the instruction set, not on the threads. */
CPU_CLONES static void latent_scores(const struct dsm_attn_latent_args *a, int64_t i0, int64_t i1, int64_t m,
				     float *rows, float *p, const void **lat)
{
	int64_t r = a->r, dr = a->dr, w = r + dr;
	for (int64_t i = i0; i < i1; i++) {
		int64_t s = mask_key(&a->mask, i);
		lat[i] = dsm_latent_row(a, s);
		cache_row(a->cache_dtype, lat[i], r, rows + (i - i0) * w);
		cache_row(a->cache_dtype, dsm_pe_row(a, s), dr, rows + (i - i0) * w + r);
	}
#if defined(__x86_64__)
	if (__builtin_cpu_supports("avx512f")) {
		float out[LATENT_KEYS];
		for (int64_t h = 0; h < a->n_heads; h++) {
			scores_avx512(a->q_lat + h * r, a->q_pe + h * dr, r, dr, rows, w, i1 - i0, out);
			for (int64_t i = i0; i < i1; i++)
				p[h * m + i] = out[i - i0] * a->scale;
		}
		return;
	}
#endif
	for (int64_t h = 0; h < a->n_heads; h++) {
		const float *ql = a->q_lat + h * r, *qp = a->q_pe + h * dr;
		for (int64_t i = i0; i < i1; i++) {
			const float *row = rows + (i - i0) * w;
			float acc = 0;
#pragma omp simd reduction(+:acc)
			for (int64_t j = 0; j < r; j++)
				acc += ql[j] * row[j];
#pragma omp simd reduction(+:acc)
			for (int64_t j = 0; j < dr; j++)
				acc += qp[j] * row[r + j];
			p[h * m + i] = acc * a->scale;
		}
	}
}

#if defined(__x86_64__)
/* LATENT_HEADS heads x 64 dims of o_lat summed over every key in 16 AVX-512 registers; heads past nh get weight 0
 * and are not stored. Per element the same fused multiply-adds, in the same order, as the loop below. */
__attribute__((target("avx512f"))) static void values_avx512(const struct dsm_attn_latent_args *a, const float *ph,
							     const void *const *lat, int64_t m, int64_t jb, int64_t nh,
							     float *o)
{
	int bf = a->cache_dtype == DSM_BF16;
	size_t es = bf ? 2 : 4;
	__m512 acc[LATENT_HEADS][4];
#pragma GCC unroll 4
	for (int k = 0; k < LATENT_HEADS; k++)
#pragma GCC unroll 4
		for (int q = 0; q < 4; q++)
			acc[k][q] = _mm512_setzero_ps();
	for (int64_t i = 0; i < m; i++) {
		const char *c = (const char *)lat[i] + (size_t)jb * es;
		__m512 v[4];
#pragma GCC unroll 4
		for (int q = 0; q < 4; q++)
			v[q] = bf ? _mm512_castsi512_ps(_mm512_slli_epi32(
					    _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(c + q * 32))), 16)) :
				    _mm512_loadu_ps((const float *)c + q * 16);
#pragma GCC unroll 4
		for (int k = 0; k < LATENT_HEADS; k++) {
			__m512 w = _mm512_set1_ps(k < nh ? ph[k * m + i] : 0.0f);
#pragma GCC unroll 4
			for (int q = 0; q < 4; q++)
				acc[k][q] = _mm512_fmadd_ps(w, v[q], acc[k][q]);
		}
	}
	for (int k = 0; k < nh; k++)
		for (int q = 0; q < 4; q++)
			_mm512_storeu_ps(o + k * a->r + q * 16, acc[k][q]);
}
#endif

/* o_lat[h][j0, j1) = sum over the m keys, in order, of p[h, i] c_i[j0, j1): LATENT_HEADS heads x 64 dims at a time,
 * summed over every key in registers with AVX-512 (values_avx512), else in a local accumulator; the same
 * fused multiply-adds in the same order either way. */
CPU_CLONES static void latent_values(const struct dsm_attn_latent_args *a, const float *p, const void *const *lat,
				     int64_t m, int64_t j0, int64_t j1)
{
	int64_t r = a->r, H = a->n_heads;
	size_t es = dsm_dtype_size(a->cache_dtype);
	float row[64], acc[LATENT_HEADS][64];
	for (int64_t jb = j0; jb < j1; jb += 64) {
		int64_t len = j1 - jb < 64 ? j1 - jb : 64;
		for (int64_t h0 = 0; h0 < H; h0 += LATENT_HEADS) {
			int64_t nh = H - h0 < LATENT_HEADS ? H - h0 : LATENT_HEADS;
#if defined(__x86_64__)
			if (len == 64 && __builtin_cpu_supports("avx512f")) {
				values_avx512(a, p + h0 * m, lat, m, jb, nh, a->o_lat + h0 * r + jb);
				continue;
			}
#endif
			for (int64_t k = 0; k < nh; k++)
				for (int64_t j = 0; j < len; j++)
					acc[k][j] = 0;
			for (int64_t i = 0; i < m; i++) {
				cache_row(a->cache_dtype, (const char *)lat[i] + (size_t)jb * es, len, row);
				for (int64_t k = 0; k < nh; k++) {
					float ph = p[(h0 + k) * m + i];
#pragma omp simd
					for (int64_t j = 0; j < len; j++)
						acc[k][j] = fmaf(ph, row[j], acc[k][j]);
				}
			}
			for (int64_t k = 0; k < nh; k++)
				memcpy(a->o_lat + (h0 + k) * r + jb, acc[k], sizeof(float) * (size_t)len);
		}
	}
}

struct latent_job {
	const struct dsm_attn_latent_args *a;
	int64_t m, chunk;
	float *p, *rows;
	const void **lat;
};

/* Items [0, n) in contiguous shares: thread tid's [*i0, *i1). */
static void share(int64_t n, int tid, int team, int64_t *i0, int64_t *i1)
{
	*i0 = n * tid / team;
	*i1 = n * (tid + 1) / team;
}

/* Scores, key blocks across the threads: each cache row is converted once and met by every head, and its address
 * kept for the values. Then softmax, heads across the threads; then o_lat[h] = sum_i p[h, i] c[s_i], threads
 * over slices of the latent dims (whole 64s where there are enough). */
static void latent_part(void *arg, int tid, int team)
{
	struct latent_job *j = arg;
	const struct dsm_attn_latent_args *a = j->a;
	int64_t m = j->m, r = a->r, dr = a->dr, b0, b1;
	share((m + LATENT_KEYS - 1) / LATENT_KEYS, tid, team, &b0, &b1);
	for (int64_t i0 = b0 * LATENT_KEYS; i0 < b1 * LATENT_KEYS; i0 += LATENT_KEYS)
		latent_scores(a, i0, i0 + LATENT_KEYS < m ? i0 + LATENT_KEYS : m, m,
			      j->rows + (size_t)tid * LATENT_KEYS * (size_t)(r + dr), j->p, j->lat);
	cpu_par_barrier(team);
	share(a->n_heads, tid, team, &b0, &b1);
	for (int64_t h = b0; h < b1; h++)
		cpu_softmax_f32(j->p + h * m, m);
	cpu_par_barrier(team);
	share((r + j->chunk - 1) / j->chunk, tid, team, &b0, &b1);
	for (int64_t j0 = b0 * j->chunk; j0 < b1 * j->chunk; j0 += j->chunk)
		latent_values(a, j->p, j->lat, m, j0, j0 + j->chunk < r ? j0 + j->chunk : r);
}

int cpu_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a)
{
	struct cpu_backend *cb = cpu_of(be);
	int64_t H = a->n_heads, r = a->r, dr = a->dr;
	int64_t m = mask_count(&a->mask, a->n_keys);
	if (a->cache_dtype != DSM_BF16 && a->cache_dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "attention: cache dtype %s not supported", dsm_dtype_name(a->cache_dtype));
	if (a->c_blocks && a->block_rows < 1)
		return dsm_fail(DSM_EARG, "attention: cache blocks of %lld rows", (long long)a->block_rows);
	int nt = cpu_par_threads();
	float *p = cpu_scratch_get(&cb->attn, sizeof(float) * cpu_attn_latent_floats(H, m, r + dr, nt));
	if (!p)
		return DSM_ENOMEM;
	int64_t chunk = (r + nt - 1) / nt;
	chunk = chunk < 16 ? 16 : chunk > 64 ? (chunk + 63) / 64 * 64 : chunk;
	struct latent_job j = { .a = a, .m = m, .chunk = chunk, .p = p, .rows = p + (size_t)H * (size_t)m,
				.lat = (const void **)(p + latent_table_at(H, m, r + dr, nt)) };
	cpu_par(m * H * (r + dr) >= CPU_PARALLEL_MIN ? 0 : 1, latent_part, &j);
	return 0;
}

/* One key's indexer score: sum_h w[h] * relu(q[h] . ks), vectorized for the host (CPU_CLONES). */
CPU_CLONES static float indexer_score(int64_t n_heads, int64_t d, const float *q, const float *w, const float *ks)
{
	float acc = 0;
	for (int64_t h = 0; h < n_heads; h++) {
		const float *qh = q + h * d;
		float dot = 0;
#pragma omp simd reduction(+:dot)
		for (int64_t j = 0; j < d; j++)
			dot += qh[j] * ks[j];
		if (dot > 0)
			acc += w[h] * dot;
	}
	return acc;
}

int cpu_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
		       const float *k, const float *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out)
{
	if (k_blocks && block_rows < 1)
		return dsm_fail(DSM_EARG, "indexer_scores: key blocks of %lld rows", (long long)block_rows);
#pragma omp parallel for schedule(static) if (n_keys * n_heads * d >= CPU_PARALLEL_MIN)
	for (int64_t s = 0; s < n_keys; s++)
		out[s] = indexer_score(n_heads, d, q, w, k_blocks ? k_blocks[s / block_rows] + s % block_rows * d : k + s * d);
	return 0;
}

int cpu_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x)
{
	if (d < 1 || (d & (d - 1)))
		return dsm_fail(DSM_EARG, "hadamard: size %lld is not a power of two", (long long)d);
	float norm = (float)(1.0 / sqrt((double)d));
	/* Fast Walsh-Hadamard transform: natural (Sylvester) order, H symmetric. */
	for (int64_t t = 0; t < n; t++) {
		float *v = x + t * d;
		for (int64_t len = 1; len < d; len <<= 1)
			for (int64_t i = 0; i < d; i += 2 * len)
				for (int64_t j = i; j < i + len; j++) {
					float a = v[j], b = v[j + len];
					v[j] = a + b;
					v[j + len] = a - b;
				}
		for (int64_t j = 0; j < d; j++)
			v[j] *= norm;
	}
	return 0;
}

static void rmsnorm_row(int64_t d, const float *xr, const float *w, float eps, float *yr)
{
	double ss = 0;
	for (int64_t i = 0; i < d; i++)
		ss += (double)xr[i] * xr[i];
	float r = (float)(1.0 / sqrt(ss / (double)d + eps));
	for (int64_t i = 0; i < d; i++)
		yr[i] = xr[i] * r * w[i];
}

int cpu_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w,
		float eps, float *y)
{
	if (n * d < CPU_PARALLEL_MIN) { /* no region at all: a decode step has dozens of these */
		for (int64_t t = 0; t < n; t++)
			rmsnorm_row(d, x + t * ldx, w, eps, y + t * d);
		return 0;
	}
#pragma omp parallel for schedule(static)
	for (int64_t t = 0; t < n; t++)
		rmsnorm_row(d, x + t * ldx, w, eps, y + t * d);
	return 0;
}
