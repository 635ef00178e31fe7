/* The cuda backend's per-element arithmetic (kernels/cuda/device_math.h) on the CPU, in every build: each
 * function against dtype.c / ref_ops.c, and scalar ops composed of them the way the kernels compose them
 * against the reference ops, with the thresholds of docs TESTING.md (elementwise 1e-7, softmax 1e-6,
 * matmul / attention 5e-4; indices exact). */
#include "backend.h"
#include "device_math.h"
#include "dtype.h"
#include "error.h"
#include "ref_ops.h"
#define TEST_RAND_SEED 0x9e3779b97f4a7c15ull
#include "test_rand.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint32_t bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}
static float from_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}
#define CHECK_NMSE(a, b, n, limit, ...) do { \
	double e_ = nmse(a, b, n); \
	CHECK(e_ <= (limit) && isfinite(e_), __VA_ARGS__); \
} while (0)

static void test_formats(void)
{
	/* every FP8 code, bit for bit (NaN: both NaN with the same sign) */
	for (int c = 0; c < 256; c++) {
		float got = dm_fp8_e4m3((uint8_t)c), want = dsm_fp8_to_f32((uint8_t)c);
		if (isnan(want))
			CHECK(isnan(got) && signbit(got) == signbit(want), "fp8 code 0x%02x: %g, want NaN", c, got);
		else
			CHECK(bits(got) == bits(want), "fp8 code 0x%02x: %g, want %g", c, got, want);
	}
	/* BF16: random values, exact ties both ways, values just off ties, NaN, inf, subnormals */
	for (int i = 0; i < 200000; i++) {
		uint32_t u = rnd() << 1 ^ rnd();
		if (i % 4 == 1)
			u = (u & 0xffff0000u) | 0x8000u; /* tie: even and odd upper halves */
		else if (i % 4 == 2)
			u = (u & 0xffff0000u) | (0x8000u + (rnd() & 1 ? 1u : 0xffffffffu));
		float f = from_bits(u);
		uint16_t got = dm_f32_to_bf16(f), want = dsm_f32_to_bf16(f);
		CHECK(got == want, "bf16(0x%08x): 0x%04x, want 0x%04x", u, got, want);
		CHECK(bits(dm_bf16_to_f32(got)) == bits(dsm_bf16_to_f32(got)), "bf16 decode 0x%04x", got);
	}
	static const uint32_t special[] = { 0x7fc00000u, 0xffc00000u, 0x7f800001u, 0x7f800000u, 0xff800000u,
					    0x00000001u, 0x80008000u, 0x7f7fffffu, 0x3f808000u, 0x3f818000u };
	for (size_t i = 0; i < sizeof special / sizeof special[0]; i++) {
		float f = from_bits(special[i]);
		CHECK(dm_f32_to_bf16(f) == dsm_f32_to_bf16(f), "bf16(0x%08x)", special[i]);
	}
	CHECK(isnan(dm_round_bf16(NAN)), "bf16 of NaN is not NaN");
	CHECK(dm_round_bf16(1.00390625f) == 1.0f && dm_round_bf16(1.01171875f) == 1.015625f, "bf16 ties to even");
}

/* Every element of a weight view, both precisions, against dsm_mat_get_p: FP8 (block scales indexed by the
 * stored row of a view starting inside a 128-row block), BF16, F32. */
static void test_weight_get(void)
{
	static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16, DSM_F32 };
	int64_t rows = 300, cols = 270;
	size_t n = (size_t)(rows * cols);
	for (int ti = 0; ti < 3; ti++) {
		enum dsm_dtype t = types[ti];
		void *data = malloc(n * dsm_dtype_size(t));
		size_t nb = (size_t)((rows + 127) / 128 * ((cols + 127) / 128));
		float *scale = malloc(nb * sizeof *scale);
		for (size_t i = 0; i < nb; i++)
			scale[i] = 0.25f + (float)i * 0.37f;
		for (size_t i = 0; i < n; i++) {
			if (t == DSM_F8_E4M3)
				((uint8_t *)data)[i] = (uint8_t)rnd();
			else if (t == DSM_BF16)
				((uint16_t *)data)[i] = dsm_f32_to_bf16(urand());
			else
				((float *)data)[i] = urand();
		}
		struct dsm_mat m = { t, rows, cols, 0, data, t == DSM_F8_E4M3 ? scale : NULL };
		struct dsm_mat v = dsm_mat_rows(m, 70, 200);
		for (int p = 0; p < 2; p++)
			for (int64_t i = 0; i < v.rows; i++)
				for (int64_t j = 0; j < cols; j++) {
					float got = dm_weight_get((int)t, v.data, v.scale, cols, v.row0 + i, j, p);
					float want = dsm_mat_get_p(&v, i, j, (enum dsm_precision)p);
					if (isnan(want) ? !isnan(got) : bits(got) != bits(want)) {
						CHECK(0, "%s weight (%lld, %lld) precision %d: %g, want %g", dsm_dtype_name(t),
						      (long long)i, (long long)j, p, got, want);
						i = v.rows;
						break;
					}
				}
		free(data);
		free(scale);
	}
	CHECK(DM_F8_E4M3 == DSM_F8_E4M3 && DM_BF16 == DSM_BF16 && DM_F32 == DSM_F32, "dtype codes differ");
}

/* A scalar matmul composed like the GEMV kernel: weights through dm_weight_get, activations through
 * dm_round_act, F32 lane sums over 32 lanes then added (the warp reduction). */
static void test_matmul(void)
{
	static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16, DSM_F32 };
	int64_t rows = 200, cols = 333, n = 3;
	for (int ti = 0; ti < 3; ti++)
		for (int p = 0; p < 2; p++) {
			enum dsm_dtype t = types[ti];
			size_t ne = (size_t)(rows * cols);
			void *data = malloc(ne * dsm_dtype_size(t));
			float *scale = malloc(sizeof(float) * 8);
			for (int i = 0; i < 8; i++)
				scale[i] = (0.5f + 0.5f * (urand() + 1)) / 1000;
			for (size_t i = 0; i < ne; i++) {
				float v = urand() / sqrtf((float)cols);
				if (t == DSM_F8_E4M3) {
					uint8_t c;
					do
						c = (uint8_t)rnd();
					while ((c & 0x7f) == 0x7f);
					((uint8_t *)data)[i] = c;
				} else if (t == DSM_BF16) {
					((uint16_t *)data)[i] = dsm_f32_to_bf16(v);
				} else {
					((float *)data)[i] = v;
				}
			}
			struct dsm_mat m = dsm_mat_rows((struct dsm_mat){ t, rows, cols, 0, data, scale }, 50, 130);
			float *x = rand_buf((size_t)(n * cols), 1), *y = malloc(sizeof(float) * (size_t)(n * m.rows));
			float *yr = malloc(sizeof(float) * (size_t)(n * m.rows));
			for (int64_t tk = 0; tk < n; tk++)
				for (int64_t o = 0; o < m.rows; o++) {
					float lane[32] = { 0 };
					for (int64_t j = 0; j < cols; j++)
						lane[j % 32] += dm_round_act(x[tk * cols + j], p) *
							dm_weight_get((int)t, data, scale, cols, m.row0 + o, j, p);
					float s = 0;
					for (int l = 0; l < 32; l++)
						s += lane[l];
					y[tk * m.rows + o] = s;
				}
			CHECK(dsm_ref_matmul((enum dsm_precision)p, &m, n, x, yr) == 0, "%s", dsm_errmsg());
			CHECK_NMSE(y, yr, (size_t)(n * m.rows), 5e-4, "matmul %s precision %d", dsm_dtype_name(t), p);
			free(data), free(scale), free(x), free(y), free(yr);
		}
}

static void test_elementwise(void)
{
	int64_t n = 5, d = 96;
	/* swiglu against dsm_ref_silu_mul */
	float *g = rand_buf((size_t)(n * d), 8), *u = rand_buf((size_t)(n * d), 2), *yr = malloc(sizeof(float) * (size_t)(n * d));
	float *y = malloc(sizeof(float) * (size_t)(n * d));
	memcpy(yr, g, sizeof(float) * (size_t)(n * d));
	dsm_ref_silu_mul(n * d, yr, u);
	for (int64_t i = 0; i < n * d; i++)
		y[i] = dm_swiglu(g[i], u[i]);
	CHECK_NMSE(y, yr, (size_t)(n * d), 1e-7, "swiglu");
	CHECK(dm_silu(1.5f) * 2.0f == dm_swiglu(1.5f, 2.0f), "silu and swiglu disagree");
	/* rmsnorm with a row stride */
	float *x = rand_buf((size_t)(n * 2 * d), 3), *w = rand_buf((size_t)d, 1), *b = rand_buf((size_t)d, 1);
	for (int64_t t = 0; t < n; t++) {
		double ss = 0;
		for (int64_t i = 0; i < d; i++)
			ss += (double)x[t * 2 * d + i] * x[t * 2 * d + i];
		float r = dm_rms_scale(ss, d, 1e-6f);
		for (int64_t i = 0; i < d; i++)
			y[t * d + i] = dm_rms_out(x[t * 2 * d + i], r, w[i]);
	}
	dsm_ref_rmsnorm(n, d, x, 2 * d, w, 1e-6f, yr);
	CHECK_NMSE(y, yr, (size_t)(n * d), 1e-7, "rmsnorm");
	/* layernorm */
	for (int64_t t = 0; t < n; t++) {
		double mu = 0, var = 0;
		for (int64_t i = 0; i < d; i++)
			mu += x[t * d + i];
		mu /= (double)d;
		for (int64_t i = 0; i < d; i++)
			var += (x[t * d + i] - mu) * (x[t * d + i] - mu);
		double r = dm_ln_rscale(var / (double)d, 1e-5f);
		for (int64_t i = 0; i < d; i++)
			y[t * d + i] = dm_ln_out(x[t * d + i], mu, r, w[i], b[i]);
	}
	dsm_ref_layernorm(n, d, x, w, b, 1e-5f, yr);
	CHECK_NMSE(y, yr, (size_t)(n * d), 1e-7, "layernorm");
	/* rope, both layouts, heads at a stride */
	for (int inter = 0; inter < 2; inter++) {
		int64_t H = 3, ldh = 40, dim = 32, ldx = H * ldh, half = dim / 2;
		float *v = rand_buf((size_t)(n * ldx), 1), *vr = malloc(sizeof(float) * (size_t)(n * ldx));
		float *cs = rand_buf((size_t)(n * half), 1), *sn = rand_buf((size_t)(n * half), 1);
		memcpy(vr, v, sizeof(float) * (size_t)(n * ldx));
		for (int64_t t = 0; t < n; t++)
			for (int64_t h = 0; h < H; h++)
				for (int64_t j = 0; j < half; j++) {
					int64_t i0, i1;
					dm_rope_index(j, half, inter, &i0, &i1);
					float *e = v + t * ldx + h * ldh;
					dm_rope_pair(&e[i0], &e[i1], cs[t * half + j], sn[t * half + j]);
				}
		dsm_ref_rope(n, H, dim, vr, ldx, ldh, cs, sn, inter);
		CHECK_NMSE(v, vr, (size_t)(n * ldx), 1e-7, "rope interleaved=%d", inter);
		free(v), free(vr), free(cs), free(sn);
	}
	/* Hadamard: the butterfly rounds against the explicit matrix, several sizes */
	for (int64_t hd = 1; hd <= 256; hd *= 4) {
		float *h = rand_buf((size_t)(n * hd), 1), *hr = malloc(sizeof(float) * (size_t)(n * hd));
		memcpy(hr, h, sizeof(float) * (size_t)(n * hd));
		for (int64_t t = 0; t < n; t++) {
			float *e = h + t * hd;
			for (int64_t s = 1; s < hd; s *= 2)
				for (int64_t i = 0; i < hd; i++)
					if (!(i & s))
						dm_butterfly(&e[i], &e[i + s]);
			for (int64_t i = 0; i < hd; i++)
				e[i] *= dm_hadamard_norm(hd);
		}
		CHECK(dsm_ref_hadamard(n, hd, hr) == 0, "%s", dsm_errmsg());
		CHECK_NMSE(h, hr, (size_t)(n * hd), 1e-7, "hadamard d=%lld", (long long)hd);
		free(h), free(hr);
	}
	free(g), free(u), free(y), free(yr), free(x), free(w), free(b);
}

/* Online softmax over the keys of one query as the attention kernels split it: W interleaved partial
 * states (warps, or splits), each pushing its keys, then merged in order. */
#define PARTS 5
static void online_attend(int64_t m, const float *score, const float *v, int64_t ldv, int64_t dv, float *out)
{
	struct dm_softmax st[PARTS];
	double *acc = calloc((size_t)(PARTS * dv), sizeof(double));
	float *accf = calloc((size_t)(PARTS * dv), sizeof(float));
	for (int p = 0; p < PARTS; p++)
		st[p] = dm_softmax_init();
	for (int64_t i = 0; i < m; i++) {
		int p = (int)(i % PARTS);
		float alpha, pr = dm_softmax_push(&st[p], score[i], &alpha);
		for (int64_t j = 0; j < dv; j++)
			accf[p * dv + j] = accf[p * dv + j] * alpha + pr * v[i * ldv + j];
	}
	struct dm_softmax tot = dm_softmax_init();
	for (int p = 0; p < PARTS; p++) {
		float as, ao;
		dm_softmax_merge(&tot, st[p], &as, &ao);
		for (int64_t j = 0; j < dv; j++)
			acc[j] = acc[j] * as + accf[p * dv + j] * ao;
	}
	float r = dm_softmax_norm(tot);
	for (int64_t j = 0; j < dv; j++)
		out[j] = (float)(acc[j] * r);
	free(acc);
	free(accf);
}

static void test_attention(void)
{
	int64_t T = 6, S = 41, dn = 16, dr = 8, dv = 12, dkv = dn + dv;
	float *q = rand_buf((size_t)(T * (dn + dr)), 1), *kv = rand_buf((size_t)(S * dkv), 1);
	float *kpe = rand_buf((size_t)(S * dr), 1), *o = malloc(sizeof(float) * (size_t)(T * dv));
	float *orf = malloc(sizeof(float) * (size_t)(T * dv)), *score = malloc(sizeof(float) * (size_t)S);
	float *vsel = malloc(sizeof(float) * (size_t)(S * dv));
	int64_t n_keys[6];
	int32_t sel[6][4];
	struct dsm_attn_mask mask[6];
	for (int msk = 0; msk < 2; msk++) {
		for (int64_t t = 0; t < T; t++) {
			n_keys[t] = S - T + t + 1;
			for (int j = 0; j < 4; j++)
				sel[t][j] = (int32_t)(j * (n_keys[t] - 1) / 3);
			mask[t] = (struct dsm_attn_mask){ sel[t], 4 };
			int64_t m = msk ? 4 : n_keys[t];
			for (int64_t i = 0; i < m; i++) {
				int64_t s = msk ? sel[t][i] : i;
				float acc = 0;
				for (int64_t j = 0; j < dn; j++)
					acc += q[t * (dn + dr) + j] * kv[s * dkv + j];
				for (int64_t j = 0; j < dr; j++)
					acc += q[t * (dn + dr) + dn + j] * kpe[s * dr + j];
				score[i] = acc * 0.3f;
				memcpy(vsel + i * dv, kv + s * dkv + dn, sizeof(float) * (size_t)dv);
			}
			online_attend(m, score, vsel, dv, dv, o + t * dv);
		}
		struct dsm_attn_full_args a = { .n_q = T, .dn = dn, .dr = dr, .dv = dv, .q = q, .ldq = dn + dr, .kv = kv,
						.k_pe = kpe, .n_keys = n_keys, .mask = msk ? mask : NULL, .scale = 0.3f,
						.out = orf, .ldo = dv };
		CHECK(dsm_ref_attn_full(&a) == 0, "%s", dsm_errmsg());
		CHECK_NMSE(o, orf, (size_t)(T * dv), 5e-4, "attention mask=%d", msk);
		CHECK_NMSE(o, orf, (size_t)(T * dv), 1e-6, "attention softmax mask=%d", msk);
	}
	/* no allowed key: the output is 0, not NaN */
	float zero[3];
	online_attend(0, score, vsel, dv, 3, zero);
	CHECK(zero[0] == 0 && zero[1] == 0 && zero[2] == 0, "empty softmax gives %g", zero[0]);
	/* indexer contribution */
	CHECK(dm_relu_weighted(2, -1) == 0 && dm_relu_weighted(2, 3) == 6, "relu weighted");
	free(q), free(kv), free(kpe), free(o), free(orf), free(score), free(vsel);
}

/* The attention kernels' cache addressing: dm_cache_row against dsm_latent_row / dsm_pe_row of backend.h for every
 * key, contiguous and in blocks (at shuffled places of a pool, of 1, 7 and 64 rows, the last one partial or full),
 * both cache types; and the rows it finds hold the keys' values. */
static void cache_put(void *x, int bf, int64_t i, float v)
{
	if (bf)
		((uint16_t *)x)[i] = dsm_f32_to_bf16(v);
	else
		((float *)x)[i] = v;
}
static float cache_value(const void *row, int bf, int64_t j)
{
	return bf ? dm_bf16_to_f32(((const uint16_t *)row)[j]) : ((const float *)row)[j];
}

static void test_cache_row(void)
{
	static const int64_t brs[] = { 1, 7, 64 };
	static const int64_t Ss[] = { 1, 64, 130, 192 };
	int64_t r = 24, dr = 5;
	for (int bf = 0; bf < 2; bf++)
		for (int bi = 0; bi < 3; bi++)
			for (int si = 0; si < 4; si++) {
				int64_t S = Ss[si], br = brs[bi], nb = (S + br - 1) / br;
				enum dsm_dtype t = bf ? DSM_BF16 : DSM_F32;
				int64_t es = (int64_t)dsm_dtype_size(t);
				/* value j of key s: s * 64 + j (rounded to BF16 in a BF16 cache) */
				char *c = malloc((size_t)(S * r * es)), *p = malloc((size_t)(S * dr * es));
				for (int64_t s = 0; s < S; s++) {
					for (int64_t j = 0; j < r; j++)
						cache_put(c, bf, s * r + j, (float)(s * 64 + j));
					for (int64_t j = 0; j < dr; j++)
						cache_put(p, bf, s * dr + j, (float)(s * 64 + 32 + j));
				}
				/* the same keys in blocks: block b at place (5 b + 3) mod nb of a pool (a permutation when
				 * 5 does not divide nb; else reversed) */
				char *cpool = malloc((size_t)(nb * br * r * es)), *ppool = malloc((size_t)(nb * br * dr * es));
				const void **ct = malloc(sizeof(void *) * (size_t)nb), **pt = malloc(sizeof(void *) * (size_t)nb);
				for (int64_t b = 0; b < nb; b++) {
					int64_t at = nb % 5 ? (b * 5 + 3) % nb : nb - 1 - b;
					int64_t n = S - b * br < br ? S - b * br : br;
					memcpy(cpool + at * br * r * es, c + b * br * r * es, (size_t)(n * r * es));
					memcpy(ppool + at * br * dr * es, p + b * br * dr * es, (size_t)(n * dr * es));
					ct[b] = cpool + at * br * r * es, pt[b] = ppool + at * br * dr * es;
				}
				struct dsm_attn_latent_args a = { .n_heads = 1, .r = r, .dr = dr, .cache_dtype = t, .c = c,
								  .k_pe = p, .n_keys = S };
				int bad = 0;
				for (int paged = 0; paged < 2 && !bad; paged++) {
					if (paged)
						a.c_blocks = ct, a.pe_blocks = pt, a.block_rows = br;
					for (int64_t s = 0; s < S && !bad; s++) {
						const void *cr = dm_cache_row(c, paged ? ct : NULL, br, s, r, es);
						const void *pr = dm_cache_row(p, paged ? pt : NULL, br, s, dr, es);
						float c0 = (float)(s * 64), p1 = (float)(s * 64 + 32 + dr - 1);
						if (bf)
							c0 = dm_round_bf16(c0), p1 = dm_round_bf16(p1);
						bad = cr != dsm_latent_row(&a, s) || pr != dsm_pe_row(&a, s) ||
						      cache_value(cr, bf, 0) != c0 || cache_value(pr, bf, dr - 1) != p1;
						CHECK(!bad, "cache row %s block_rows=%lld keys=%lld paged=%d: key %lld", dsm_dtype_name(t),
						      (long long)br, (long long)S, paged, (long long)s);
					}
				}
				free(c), free(p), free(cpool), free(ppool), free(ct), free(pt);
			}
}

/* topk as the kernel selects: the k largest dm_topk_keys, equal keys to the lower position, then in
 * position order; against dsm_ref_topk with ties, -0 / +0, infinities and NaN. */
static void compose_topk(const float *x, int64_t n, int64_t k, int32_t *idx)
{
	/* the k-th largest key by counting (the radix select's answer), then the ordered compaction */
	uint32_t *key = malloc(sizeof(uint32_t) * (size_t)n);
	for (int64_t i = 0; i < n; i++)
		key[i] = dm_topk_key(x[i]);
	uint32_t lo = 0, hi = 0xffffffffu; /* the largest K with count(key >= K) >= k */
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2 + 1;
		int64_t c = 0;
		for (int64_t i = 0; i < n; i++)
			c += key[i] >= mid;
		if (c >= k)
			lo = mid;
		else
			hi = mid - 1;
	}
	int64_t gt = 0;
	for (int64_t i = 0; i < n; i++)
		gt += key[i] > lo;
	int64_t need_eq = k - gt, out = 0;
	for (int64_t i = 0; i < n && k > 0; i++)
		if (key[i] > lo || (key[i] == lo && need_eq-- > 0))
			idx[out++] = (int32_t)i;
	free(key);
}

static void test_select(void)
{
	for (int round = 0; round < 300; round++) {
		int64_t n = 1 + rnd() % 200, k = rnd() % (n + 1);
		float *x = malloc(sizeof(float) * (size_t)n);
		for (int64_t i = 0; i < n; i++) {
			uint32_t r = rnd() % 16;
			x[i] = r == 0 ? NAN : r == 1 ? -0.0f : r == 2 ? 0.0f : r == 3 ? INFINITY : r == 4 ? -INFINITY :
			       r < 9 ? (float)(rnd() % 4) : urand();
		}
		int32_t *a = malloc(sizeof(int32_t) * (size_t)(k + 1)), *b = malloc(sizeof(int32_t) * (size_t)(k + 1));
		compose_topk(x, n, k, a);
		CHECK(dsm_ref_topk(x, n, k, b) == 0, "%s", dsm_errmsg());
		CHECK(memcmp(a, b, sizeof(int32_t) * (size_t)k) == 0, "topk n=%lld k=%lld differs", (long long)n,
		      (long long)k);
		/* the key order is dm_better's order */
		for (int64_t i = 0; i + 1 < n; i++) {
			uint32_t ka = dm_topk_key(x[i]), kb = dm_topk_key(x[i + 1]);
			CHECK(dm_better(x[i], i, x[i + 1], i + 1) == (ka >= kb), "key order of %g, %g", x[i], x[i + 1]);
		}
		free(x), free(a), free(b);
	}
}

/* noaux_tc routing as the route kernel computes it: sigmoid scores, biased copies, group scores by
 * dm_top2_push, groups kept and experts chosen by repeated best-of (dm_better), indices sorted, weights by
 * dm_route_weight. Against dsm_ref_route exactly. */
static void compose_route(const struct dsm_route_args *a)
{
	int64_t E = a->n_experts, per = E / a->n_group;
	float *s = malloc(sizeof(float) * (size_t)E), *b = malloc(sizeof(float) * (size_t)E);
	float *gs = malloc(sizeof(float) * (size_t)a->n_group);
	char *taken = malloc((size_t)E), *kept = malloc((size_t)a->n_group);
	for (int64_t t = 0; t < a->n_tokens; t++) {
		for (int64_t e = 0; e < E; e++) {
			s[e] = dm_sigmoid(a->logits[t * E + e]);
			b[e] = s[e] + a->bias[e];
			taken[e] = 0;
		}
		memset(kept, 1, (size_t)a->n_group);
		if (a->n_group > 1) {
			for (int g = 0; g < a->n_group; g++) {
				float m1 = -INFINITY, m2 = -INFINITY;
				for (int64_t e = g * per; e < (g + 1) * per; e++)
					dm_top2_push(&m1, &m2, b[e]);
				gs[g] = m1 + m2;
				kept[g] = 0;
			}
			for (int k = 0; k < a->topk_group && k < a->n_group; k++) {
				int best = 0;
				while (kept[best])
					best++;
				for (int g = best + 1; g < a->n_group; g++)
					if (!kept[g] && dm_better(gs[g], g, gs[best], best))
						best = g;
				kept[best] = 1;
			}
		}
		int32_t *idx = a->idx + t * a->top_k;
		for (int k = 0; k < a->top_k; k++) {
			int64_t best = -1;
			for (int64_t e = 0; e < E; e++) {
				float v = kept[e / per] ? b[e] : -INFINITY;
				if (!taken[e] && (best < 0 || dm_better(v, e, kept[best / per] ? b[best] : -INFINITY, best)))
					best = e;
			}
			taken[best] = 1;
			idx[k] = (int32_t)best;
		}
		for (int i = 1; i < a->top_k; i++)
			for (int j = i; j > 0 && idx[j - 1] > idx[j]; j--) {
				int32_t tmp = idx[j];
				idx[j] = idx[j - 1];
				idx[j - 1] = tmp;
			}
		double sum = 0;
		for (int k = 0; k < a->top_k; k++)
			sum += s[idx[k]];
		for (int k = 0; k < a->top_k; k++)
			a->weight[t * a->top_k + k] = dm_route_weight(s[idx[k]], sum, a->normalize, a->scaling);
	}
	free(s), free(b), free(gs), free(taken), free(kept);
}

static void test_route(void)
{
	static const int shapes[][4] = { /* E, groups, keep, top_k */
		{ 256, 8, 4, 8 }, { 64, 1, 1, 6 }, { 32, 4, 2, 3 }, { 16, 8, 3, 5 },
	};
	for (int si = 0; si < 4; si++)
		for (int norm = 0; norm < 2; norm++) {
			int64_t T = 7, E = shapes[si][0];
			int K = shapes[si][3];
			float *logits = rand_buf((size_t)(T * E), 4), *bias = rand_buf((size_t)E, 0.5f);
			for (int64_t i = 0; i < T * E; i += 5)
				logits[i] = logits[i + 1 < T * E ? i + 1 : i]; /* equal scores: ties */
			int32_t *idx = malloc(sizeof(int32_t) * (size_t)(T * K)), *idr = malloc(sizeof(int32_t) * (size_t)(T * K));
			float *w = malloc(sizeof(float) * (size_t)(T * K)), *wr = malloc(sizeof(float) * (size_t)(T * K));
			struct dsm_route_args a = { T, E, logits, bias, shapes[si][1], shapes[si][2], K, norm, 2.5f, idx, w };
			compose_route(&a);
			a.idx = idr;
			a.weight = wr;
			CHECK(dsm_ref_route(&a) == 0, "%s", dsm_errmsg());
			CHECK(memcmp(idx, idr, sizeof(int32_t) * (size_t)(T * K)) == 0, "route E=%lld experts differ", (long long)E);
			CHECK_NMSE(w, wr, (size_t)(T * K), 1e-7, "route E=%lld weights", (long long)E);
			free(logits), free(bias), free(idx), free(idr), free(w), free(wr);
		}
}

/* ---- the glue ops: FP8 E4M3 encoding, the indexer's FP8 rounding, conversions ---------------------- */

/* dm_f32_to_fp8 against dsm_f32_to_fp8 on x and -x. */
static void check_fp8_code(float x)
{
	for (int s = 0; s < 2; s++, x = -x) {
		uint8_t got = dm_f32_to_fp8(x), want = dsm_f32_to_fp8(x);
		if (got != want) {
			CHECK(0, "fp8(%.9g = 0x%08x): 0x%02x, want 0x%02x", x, bits(x), got, want);
			return;
		}
	}
}

static void test_fp8_encode(void)
{
	/* every code's value, the midpoints between neighbours (ties both ways) and a few float ulps around each */
	for (int c = 0; c < 127; c++) {
		float v = dsm_fp8_to_f32((uint8_t)c), next = c < 126 ? dsm_fp8_to_f32((uint8_t)(c + 1)) : 480.0f;
		float mid = v + (next - v) / 2;
		for (int k = -3; k <= 3; k++) {
			if ((int64_t)bits(v) + k >= 0)
				check_fp8_code(from_bits(bits(v) + (uint32_t)k));
			check_fp8_code(from_bits(bits(mid) + (uint32_t)k));
		}
	}
	/* random bit patterns (every exponent), random values in the subnormal range, around and above 448 */
	for (int i = 0; i < 1000000; i++) {
		check_fp8_code(from_bits(rnd() << 1 ^ rnd()));
		check_fp8_code((urand() + 1) * 0.0078125f);
		check_fp8_code(400.0f + (urand() + 1) * 40.0f);
		check_fp8_code((float)ldexp(urand(), (int)(rnd() % 40) - 20));
	}
	static const float special[] = { 0.0f, 448.0f, 464.0f, 479.99997f, 480.0f, 1e30f, INFINITY, 1e-45f, 1e-38f,
					 0.001953125f, 0.0009765625f, 0.00097656256f, 0.015625f, 0.0156249991f };
	for (size_t i = 0; i < sizeof special / sizeof special[0]; i++)
		check_fp8_code(special[i]);
	CHECK(dm_f32_to_fp8(NAN) == dsm_f32_to_fp8(NAN) && dm_f32_to_fp8(-NAN) == dsm_f32_to_fp8(-NAN) &&
	      dm_f32_to_fp8(from_bits(0xff800001u)) == 0x7f, "fp8 of NaN");
	CHECK(dm_f32_to_fp8(-0.0f) == 0x80 && dm_f32_to_fp8(-INFINITY) == 0xfe, "fp8 of -0 / -inf");
}

/* got and want bit for bit, NaN matching any NaN; returns the first differing index or -1. */
static int64_t first_diff(const float *got, const float *want, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		if (isnan(want[i]) ? !isnan(got[i]) : bits(got[i]) != bits(want[i]))
			return i;
	return -1;
}

static void test_fp8_round(void)
{
	/* d: one short block, whole blocks, a ragged last block; values of every magnitude, tiny rows (the 1e-4
	 * floor), blocks whose amax is 448 / 8 (scale 2^-3 exactly: ue8m0 keeps it) with values down to FP8's subnormals
	 * (where a power-of-two scale changes the rounding), zeros, NaN and inf */
	static const int64_t ds[] = { 1, 100, 128, 256, 300, 640 };
	for (int di = 0; di < 6; di++)
		for (int ue8m0 = 0; ue8m0 < 2; ue8m0++) {
			int64_t n = 7, d = ds[di];
			size_t nv = (size_t)(n * d);
			float *x = malloc(nv * sizeof *x), *got = malloc(nv * sizeof *got);
			for (int64_t r = 0; r < n; r++)
				for (int64_t j = 0; j < d; j++) {
					float v = (float)ldexp(urand(), (int)(rnd() % 30) - 15);
					if (r == 1)
						v = urand() * 1e-5f;
					else if (r == 2)
						v = j % 128 == 5 ? 448.0f * 0.125f : (float)ldexp(urand() * 50, -(int)(rnd() % 16));
					else if (r == 3 && j % 7 == 0)
						v = 0.0f;
					else if (r == 4 && j == d / 2)
						v = NAN;
					else if (r == 5 && j == d - 1)
						v = -INFINITY;
					x[r * d + j] = v;
				}
			memcpy(got, x, nv * sizeof *x);
			for (int64_t r = 0; r < n; r++)
				for (int64_t b0 = 0; b0 < d; b0 += DM_BLOCK)
					dm_fp8_round_block(got + r * d + b0, d - b0 < DM_BLOCK ? d - b0 : DM_BLOCK, ue8m0);
			dsm_ref_fp8_round(n, d, x, ue8m0);
			int64_t at = first_diff(got, x, (int64_t)nv);
			CHECK(at < 0, "fp8_round d=%lld ue8m0=%d: element %lld is %g, want %g", (long long)d, ue8m0,
			      (long long)at, got[at < 0 ? 0 : at], x[at < 0 ? 0 : at]);
			free(x), free(got);
		}
}

/* The convert op composed of dm_convert_elem as the kernel composes it, rows at strides ldx / ldy, against
 * dtype.c's conversions (the same type: the bits). */
static void test_convert(void)
{
	static const enum dsm_dtype t[] = { DSM_F32, DSM_BF16 };
	int64_t rows = 9, cols = 70, ldx = 83, ldy = 77;
	uint32_t *x = malloc(sizeof *x * (size_t)(rows * ldx));
	for (int64_t i = 0; i < rows * ldx; i++)
		x[i] = rnd() << 1 ^ rnd(); /* every bit pattern: NaN, inf, subnormals included */
	x[0] = 0x7f800001u, x[1] = 0xffc00000u, x[2] = 0x00008000u, x[3] = 0x3f808000u, x[4] = 0x3f818000u;
	for (int xi = 0; xi < 2; xi++)
		for (int yi = 0; yi < 2; yi++) {
			uint32_t *y = calloc((size_t)(rows * ldy), 4);
			for (int64_t r = 0; r < rows; r++)
				for (int64_t j = 0; j < cols; j++)
					dm_convert_elem(x, (int)t[xi], r * ldx + j, y, (int)t[yi], r * ldy + j);
			int bad = 0;
			for (int64_t r = 0; r < rows && !bad; r++)
				for (int64_t j = 0; j < cols && !bad; j++) {
					int64_t i = r * ldx + j, k = r * ldy + j;
					uint32_t got, want;
					if (t[xi] == DSM_F32 && t[yi] == DSM_F32) {
						got = y[k], want = x[i];
					} else if (t[xi] == DSM_BF16 && t[yi] == DSM_BF16) {
						got = ((uint16_t *)y)[k], want = ((uint16_t *)x)[i];
					} else if (t[xi] == DSM_F32) {
						got = ((uint16_t *)y)[k], want = dsm_f32_to_bf16(from_bits(x[i]));
					} else {
						got = y[k], want = bits(dsm_bf16_to_f32(((uint16_t *)x)[i]));
					}
					bad = got != want;
					CHECK(!bad, "convert %s -> %s (%lld, %lld): 0x%08x, want 0x%08x", dsm_dtype_name(t[xi]),
					      dsm_dtype_name(t[yi]), (long long)r, (long long)j, got, want);
				}
			/* nothing written between the rows */
			for (int64_t r = 0; r < rows && !bad; r++)
				for (int64_t k = r * ldy + cols; k < (r + 1) * ldy && !bad; k++) {
					uint32_t v = t[yi] == DSM_BF16 ? ((uint16_t *)y)[k] : y[k];
					bad = v != 0;
					CHECK(!bad, "convert %s -> %s wrote element %lld of the gap after row %lld",
					      dsm_dtype_name(t[xi]), dsm_dtype_name(t[yi]), (long long)k, (long long)r);
				}
			free(y);
		}
	free(x);
}

int main(void)
{
	test_formats();
	test_weight_get();
	test_matmul();
	test_elementwise();
	test_attention();
	test_cache_row();
	test_select();
	test_route();
	test_fp8_encode();
	test_fp8_round();
	test_convert();
	return TEST_EXIT();
}
