/* Batched path: FP8 weights times many tokens (prefill, batch jobs), BF16 dot products on AVX-512 BF16.
 *
 * The weights are converted one tile at a time (96 rows x 512 columns, the codes' exact BF16 values) into a
 * per-thread buffer of 96 KiB that stays in L2, and reused for every token. The microkernel keeps 6 weight
 * rows x 64 tokens of F32 sums in 24 registers: per pair of columns it loads 4 vectors of packed activations
 * (16 tokens x 2 columns each) and broadcasts one BF16 pair of each weight row, so vdpbf16ps does all the
 * arithmetic; after each block of 128 columns the sums are multiplied by the rows' scales of that block and
 * added to the result. The result is transposed (rows x tokens), which is what the MoE layer wants for
 * SwiGLU and for packing the next projection's activations. Where F32 FMA multiplies faster than vdpbf16ps
 * (chosen at start, dsm_gemm_variant), the tile holds F32 values (192 KiB) and F32 FMAs do the same sums. */
#include "expert_internal.h"

#include "dtype.h"
#include "error.h"

#include <string.h>

#define GEMM_NR 6     /* weight rows per microkernel */
#define GEMM_MV 4     /* token vectors (of 16) per microkernel */
#define GEMM_KC 512   /* columns per tile: 4 scale blocks */
#define GEMM_NC 96    /* rows per tile: 16 microkernels */

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

size_t dsm_bf16_pack_size(size_t m, size_t k)
{
	return (k + 1) / 2 * round_up(m, 16) * 2 * sizeof(uint16_t);
}

/* In place: r[i] lane j <- r[j] lane i (16 x 16 dwords). */
DSM_BF16_TARGET static inline __attribute__((always_inline)) void transpose16(__m512i r[16])
{
	__m512i t[16];
	for (int i = 0; i < 16; i += 2) {
		t[i] = _mm512_unpacklo_epi32(r[i], r[i + 1]);
		t[i + 1] = _mm512_unpackhi_epi32(r[i], r[i + 1]);
	}
	for (int i = 0; i < 16; i += 4) {
		r[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
		r[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
		r[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
		r[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
	}
	for (int h = 0; h < 16; h += 8)
		for (int i = 0; i < 4; i++) {
			t[h + i] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0x88);
			t[h + i + 4] = _mm512_shuffle_i32x4(r[h + i], r[h + i + 4], 0xdd);
		}
	for (int i = 0; i < 8; i++) {
		r[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
		r[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
	}
}

DSM_BF16_TARGET void dsm_f32_transpose(const float *src, size_t src_ld, size_t rows, size_t cols, float *dst,
				       size_t dst_ld)
{
	size_t r0 = 0;
	for (; r0 + 16 <= rows; r0 += 16) {
		size_t c0 = 0;
		for (; c0 + 16 <= cols; c0 += 16) {
			__m512i v[16];
			for (int k = 0; k < 16; k++)
				v[k] = _mm512_loadu_si512(src + (r0 + k) * src_ld + c0);
			transpose16(v);
			for (int k = 0; k < 16; k++)
				_mm512_storeu_si512(dst + (c0 + k) * dst_ld + r0, v[k]);
		}
		for (; c0 < cols; c0++)
			for (size_t k = 0; k < 16; k++)
				dst[c0 * dst_ld + r0 + k] = src[(r0 + k) * src_ld + c0];
	}
	for (; r0 < rows; r0++)
		for (size_t c = 0; c < cols; c++)
			dst[c * dst_ld + r0] = src[r0 * src_ld + c];
}

/* 16 tokens x 16 column pairs at a time: each token's 32 values become 16 BF16 pairs with one
 * vcvtne2ps2bf16 (round to nearest even, as dsm_f32_to_bf16), a 16 x 16 transpose turns them into 16 rows of
 * the panel, stored whole. Tokens past m are zero rows, which also writes the padding. */
DSM_BF16_TARGET void dsm_bf16_pack_gather(const float *x, size_t x_ld, const int32_t *rows, size_t m, size_t k,
					  size_t kp0, size_t kp1, uint16_t *a_packed)
{
	size_t m_pad = round_up(m, 16);
	uint32_t *a32 = (uint32_t *)a_packed;
	for (size_t kp = kp0; kp < kp1; kp += 16) {
		size_t n = kp1 - kp < 16 ? kp1 - kp : 16, c = 2 * kp;
		size_t left = c < k ? k - c : 0;
		if (left > 2 * n)
			left = 2 * n;
		__mmask16 m0 = left >= 16 ? 0xFFFF : (__mmask16)((1u << left) - 1);
		__mmask16 m1 = left >= 32 ? 0xFFFF : left > 16 ? (__mmask16)((1u << (left - 16)) - 1) : 0;
		for (size_t j0 = 0; j0 < m_pad; j0 += 16) {
			__m512i r[16];
			for (size_t i = 0; i < 16; i++) {
				size_t j = j0 + i;
				if (j >= m) {
					r[i] = _mm512_setzero_si512();
					continue;
				}
				const float *xr = x + (rows ? (size_t)rows[j] : j) * x_ld + c;
				r[i] = (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(m1, xr + 16),
								    _mm512_maskz_loadu_ps(m0, xr));
			}
			transpose16(r);
			for (size_t i = 0; i < n; i++)
				_mm512_storeu_si512(a32 + (kp + i) * m_pad + j0, r[i]);
		}
	}
}

void dsm_bf16_pack(const float *x, size_t x_ld, size_t m, size_t k, size_t kp0, size_t kp1, uint16_t *a_packed)
{
	dsm_bf16_pack_gather(x, x_ld, NULL, m, k, kp0, kp1, a_packed);
}

size_t dsm_fp8_gemm_scratch_size(void)
{
	return GEMM_NC * GEMM_KC * sizeof(float); /* the F32 tile; the BF16 one takes half */
}

/* The byte order that makes dsm_fp8x64_bf16 come out in column order: the byte unpacks
 * interleave within 128-bit lanes, so that bytes 0-7 of each lane give the first vector and bytes 8-15 the
 * second. */
static const uint8_t tile_order[64] __attribute__((aligned(64))) = {
	0, 1, 2, 3, 4, 5, 6, 7, 32, 33, 34, 35, 36, 37, 38, 39, 8, 9, 10, 11, 12, 13, 14, 15, 40, 41, 42, 43, 44, 45,
	46, 47, 16, 17, 18, 19, 20, 21, 22, 23, 48, 49, 50, 51, 52, 53, 54, 55, 24, 25, 26, 27, 28, 29, 30, 31, 56, 57,
	58, 59, 60, 61, 62, 63 };

/* tile[n, 0 .. kc rounded to 64) = BF16(W[n0 + n, kc0 + c]), the codes' exact values (the block scales are
 * applied to the sums), for n < nc; zero rows up to nc_pad. 64 codes at a time by the two byte tables, as the
 * decode kernel. Meanwhile the next tile's rows are prefetched (next_rows rows of next_bytes from next, W->ld
 * apart): rows are 7 KB apart, too far for the hardware prefetcher to follow 96 short runs. */
DSM_BF16_TARGET static void dequant_tile(const struct dsm_fp8_mat *W, size_t n0, size_t nc, size_t nc_pad,
					 size_t kc0, size_t kc, void *tile, int f32, const uint8_t *next, size_t next_rows,
					 size_t next_bytes)
{
	const struct dsm_bf16_tables tb = dsm_bf16_tables_load();
	const __m512i order = _mm512_load_si512(tile_order);
	size_t kc64 = round_up(kc, 64);
	for (size_t n = 0; n < nc; n++) {
		const uint8_t *row = W->w + (n0 + n) * W->ld + kc0;
		uint16_t *out = (uint16_t *)tile + n * GEMM_KC;
		float *out32 = (float *)tile + n * GEMM_KC;
		if (n < next_rows)
			for (size_t l = 0; l < next_bytes; l += 64)
				_mm_prefetch((const char *)next + n * W->ld + l, _MM_HINT_T1);
		for (size_t c = 0; c < kc64; c += 64) {
			__mmask64 m = kc - c >= 64 ? ~0ull : (1ull << (kc - c)) - 1;
			__m512i a, b;
			dsm_fp8x64_bf16(_mm512_permutexvar_epi8(order, _mm512_maskz_loadu_epi8(m, row + c)), &tb, &a, &b);
			if (!f32) {
				_mm512_storeu_si512(out + c, a);
				_mm512_storeu_si512(out + c + 32, b);
				continue;
			}
			_mm512_storeu_ps(out32 + c, dsm_bf16x16_f32(_mm512_castsi512_si256(a)));
			_mm512_storeu_ps(out32 + c + 16, dsm_bf16x16_f32(_mm512_extracti64x4_epi64(a, 1)));
			_mm512_storeu_ps(out32 + c + 32, dsm_bf16x16_f32(_mm512_castsi512_si256(b)));
			_mm512_storeu_ps(out32 + c + 48, dsm_bf16x16_f32(_mm512_extracti64x4_epi64(b, 1)));
		}
	}
	size_t esize = f32 ? sizeof(float) : sizeof(uint16_t);
	for (size_t n = nc; n < nc_pad; n++)
		memset((char *)tile + n * GEMM_KC * esize, 0, kc64 * esize);
}

/* yT[n, 16 v ..] (=|+=) sum over column pairs kp < nkp of tile row n times the packed activations, for
 * n < nvalid (of GEMM_NR computed) and v < MV: per block of 128 columns, the block's dot products in
 * registers, then times the row's scale of that block (sc[n * 4 + block]) added to yT.
 * F32 0: the tile holds BF16 pairs, one vdpbf16ps per pair. F32 1: the same sums with F32 multiply-adds, on
 * hosts whose F32 FMA retires more products per cycle than vdpbf16ps (dsm_fp8_gemm_tune): the tile holds the
 * codes' values as F32 and each packed BF16 pair of activations becomes two F32 vectors (the even column's value
 * is the pair's low half). The products are exact either way; here each (row, token) adds column 2k, then 2k + 1,
 * rounding after each. */
DSM_BF16_TARGET static inline __attribute__((always_inline)) void
micro(const void *tile, size_t nkp, const uint16_t *a, size_t m_pad, float *yT, size_t yT_ld, size_t nvalid,
      int first, const float *sc, const int MV, const int F32)
{
	const uint32_t *w32 = tile;
	const float *wf = tile;
	const __m512i hi = _mm512_set1_epi32((int)0xFFFF0000u);
	for (size_t kb = 0; kb < nkp; kb += DSM_FP8_BLOCK / 2) {
		size_t kend = nkp - kb < DSM_FP8_BLOCK / 2 ? nkp : kb + DSM_FP8_BLOCK / 2;
		__m512 acc[GEMM_NR][GEMM_MV];
#pragma GCC unroll 6
		for (int n = 0; n < GEMM_NR; n++)
#pragma GCC unroll 4
			for (int v = 0; v < MV; v++)
				acc[n][v] = _mm512_setzero_ps();
		for (size_t kp = kb; kp < kend; kp++) {
			const uint16_t *ap = a + kp * m_pad * 2;
			if (!F32) {
				__m512bh av[GEMM_MV];
#pragma GCC unroll 4
				for (int v = 0; v < MV; v++)
					av[v] = (__m512bh)_mm512_loadu_si512(ap + 32 * v);
#pragma GCC unroll 6
				for (int n = 0; n < GEMM_NR; n++) {
					__m512bh b = (__m512bh)_mm512_set1_epi32((int)w32[n * (GEMM_KC / 2) + kp]);
#pragma GCC unroll 4
					for (int v = 0; v < MV; v++)
						acc[n][v] = _mm512_dpbf16_ps(acc[n][v], av[v], b);
				}
				continue;
			}
#pragma GCC unroll 2
			for (int odd = 0; odd < 2; odd++) {
				__m512 av[GEMM_MV];
#pragma GCC unroll 4
				for (int v = 0; v < MV; v++) {
					__m512i p = _mm512_loadu_si512(ap + 32 * v);
					av[v] = _mm512_castsi512_ps(odd ? _mm512_and_si512(p, hi) : _mm512_slli_epi32(p, 16));
				}
#pragma GCC unroll 6
				for (int n = 0; n < GEMM_NR; n++) {
					__m512 w = _mm512_set1_ps(wf[n * GEMM_KC + 2 * kp + odd]);
#pragma GCC unroll 4
					for (int v = 0; v < MV; v++)
						acc[n][v] = _mm512_fmadd_ps(av[v], w, acc[n][v]);
				}
			}
		}
		for (size_t n = 0; n < nvalid; n++) {
			__m512 s = _mm512_set1_ps(sc[n * 4 + kb / (DSM_FP8_BLOCK / 2)]);
			for (int v = 0; v < MV; v++) {
				float *p = yT + n * yT_ld + 16 * v;
				_mm512_storeu_ps(p, first && kb == 0 ? _mm512_mul_ps(acc[n][v], s) :
								   _mm512_fmadd_ps(acc[n][v], s, _mm512_loadu_ps(p)));
			}
		}
	}
}

typedef void (*micro_fn)(const void *tile, size_t nkp, const uint16_t *a, size_t m_pad, float *yT,
			 size_t yT_ld, size_t nvalid, int first, const float *sc);
#define MICRO_FN(MV) \
	DSM_BF16_TARGET static void micro_mv##MV(const void *tile, size_t nkp, const uint16_t *a, size_t m_pad, \
						  float *yT, size_t yT_ld, size_t nvalid, int first, const float *sc) \
	{ micro(tile, nkp, a, m_pad, yT, yT_ld, nvalid, first, sc, MV, 0); } \
	DSM_BF16_TARGET static void micro_f32_mv##MV(const void *tile, size_t nkp, const uint16_t *a, size_t m_pad, \
						      float *yT, size_t yT_ld, size_t nvalid, int first, \
						      const float *sc) \
	{ micro(tile, nkp, a, m_pad, yT, yT_ld, nvalid, first, sc, MV, 1); }
MICRO_FN(1) MICRO_FN(2) MICRO_FN(3) MICRO_FN(4)
static const micro_fn micros[DSM_GEMM_VARIANTS][GEMM_MV + 1] = {
	{ NULL, micro_mv1, micro_mv2, micro_mv3, micro_mv4 },
	{ NULL, micro_f32_mv1, micro_f32_mv2, micro_f32_mv3, micro_f32_mv4 },
};
const char *const dsm_gemm_variant_names[DSM_GEMM_VARIANTS] = { "bf16-dot", "f32-fma" };
int dsm_gemm_variant;

int dsm_fp8_gemm_rows(const struct dsm_fp8_mat *W, size_t r0, size_t r1, const uint16_t *a_packed, size_t m,
		      float *yT, size_t yT_ld, void *scratch)
{
	if (!dsm_isa_available(DSM_ISA_AVX512BF16))
		return dsm_fail(DSM_EUNSUPPORTED, "fp8 gemm: the batched path needs AVX-512 BF16");
	if (r0 > r1 || r1 > W->rows)
		return dsm_fail(DSM_EARG, "fp8 gemm: rows [%zu, %zu) of a %zu-row matrix", r0, r1, W->rows);
	size_t m_pad = round_up(m, 16);
	if (yT_ld < m_pad)
		return dsm_fail(DSM_EARG, "fp8 gemm: result stride %zu below %zu tokens", yT_ld, m_pad);
	void *tile = scratch;
	int f32 = dsm_gemm_variant == 1;
	size_t esize = f32 ? sizeof(float) : sizeof(uint16_t);
	if (W->cols == 0)
		for (size_t r = r0; r < r1; r++)
			memset(yT + (r - r0) * yT_ld, 0, m_pad * sizeof(float));
	for (size_t n0 = r0; n0 < r1; n0 += GEMM_NC) {
		size_t nc = r1 - n0 < GEMM_NC ? r1 - n0 : GEMM_NC;
		size_t nc_pad = round_up(nc, GEMM_NR);
		for (size_t kc0 = 0; kc0 < W->cols; kc0 += GEMM_KC) {
			size_t kc = W->cols - kc0 < GEMM_KC ? W->cols - kc0 : GEMM_KC;
			/* the next tile: the same rows' next columns, else the next rows' first */
			size_t next_n0 = kc0 + GEMM_KC < W->cols ? n0 : n0 + GEMM_NC;
			size_t next_kc0 = kc0 + GEMM_KC < W->cols ? kc0 + GEMM_KC : 0;
			size_t next_rows = next_n0 < r1 ? (r1 - next_n0 < GEMM_NC ? r1 - next_n0 : GEMM_NC) : 0;
			size_t next_bytes = W->cols - next_kc0 < GEMM_KC ? W->cols - next_kc0 : GEMM_KC;
			dequant_tile(W, n0, nc, nc_pad, kc0, kc, tile, f32, W->w + next_n0 * W->ld + next_kc0, next_rows,
				     next_bytes);
			float sc[GEMM_NC * 4]; /* each row's scales of the tile's column blocks */
			for (size_t n = 0; n < nc; n++)
				for (size_t b = 0; b * DSM_FP8_BLOCK < kc; b++)
					sc[n * 4 + b] = W->scale[(n0 + n) / DSM_FP8_BLOCK * W->scale_ld +
								 kc0 / DSM_FP8_BLOCK + b];
			for (size_t m0 = 0; m0 < m_pad; m0 += 16 * GEMM_MV) {
				size_t mv = (m_pad - m0) / 16 < GEMM_MV ? (m_pad - m0) / 16 : GEMM_MV;
				const uint16_t *a = a_packed + (kc0 / 2 * m_pad + m0) * 2;
				for (size_t n = 0; n < nc_pad; n += GEMM_NR) {
					size_t nvalid = nc - n < GEMM_NR ? nc - n : GEMM_NR;
					if (n >= nc)
						break;
					micros[f32][mv]((char *)tile + n * GEMM_KC * esize, (kc + 1) / 2, a, m_pad,
						   yT + (n0 - r0 + n) * yT_ld + m0, yT_ld, nvalid, kc0 == 0, sc + n * 4);
				}
			}
		}
	}
	return 0;
}
