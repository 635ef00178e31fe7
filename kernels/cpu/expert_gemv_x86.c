/* The vector decode kernels: FP8 rows times 1..8 activation vectors, weights read once, never dequantized
 * to memory. One file per ISA would repeat the driver; the function-level target attributes let all three
 * live here and build with the default compiler flags (the caller checks CPUID first).
 *
 * Per 128-row block the activations are prepared once: x * block_scale for every column block, so that the
 * inner loop is pure convert-and-multiply with one horizontal sum per row at the end. */
#include "expert_internal.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define GEMV_PREFETCH 1024 /* bytes ahead in each weight row (the F32 kernels) */

static ALWAYS_INLINE __mmask16 mask16(size_t c, size_t cols)
{
	if (c >= cols)
		return 0;
	return cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
}

/* ---- AVX-512 BF16 --------------------------------------------------------------------------------------
 * 64 codes -> two vectors of 32 exact BF16 values: the high and low bytes come from two 128-entry tables
 * (vpermt2b ignores the sign bit of the index, which is OR-ed back into the high byte), then byte unpacks
 * interleave them. The unpacks work within 128-bit lanes, so vector A holds codes 0-7, 16-23, 32-39, 48-55
 * and vector B the others; the prepared activations are stored in that same order. */

static const uint16_t perm_a[32] __attribute__((aligned(64))) = {
	0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23,
	32, 33, 34, 35, 36, 37, 38, 39, 48, 49, 50, 51, 52, 53, 54, 55 };
static const uint16_t perm_b[32] __attribute__((aligned(64))) = {
	8, 9, 10, 11, 12, 13, 14, 15, 24, 25, 26, 27, 28, 29, 30, 31,
	40, 41, 42, 43, 44, 45, 46, 47, 56, 57, 58, 59, 60, 61, 62, 63 };

/* Prepared activations are chunk-major, so that one pointer with constant offsets reaches every token:
 * xs[(i * n_tok + t) * 64 + j] = BF16(x[t, 64 i + j'] * scale[rb, 64 i / 128]), j' the A/B order; zeros
 * past cols. */
DSM_BF16_TARGET static void prep_bf16(const struct dsm_fp8_mat *W, size_t rb, const float *x, size_t x_ld,
				      size_t n_tok, uint16_t *xs)
{
	const __m512i ia = _mm512_load_si512(perm_a), ib = _mm512_load_si512(perm_b);
	const float *srow = W->scale + rb * W->scale_ld;
	size_t cols = W->cols, pad = dsm_cols_pad(cols);
	for (size_t t = 0; t < n_tok; t++) {
		const float *xr = x + t * x_ld;
		for (size_t c = 0; c < pad; c += 64) {
			uint16_t *out = xs + (c / 64 * n_tok + t) * 64;
			__m512 s = _mm512_set1_ps(srow[c / DSM_FP8_BLOCK]);
			__m512 v0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask16(c, cols), xr + c), s);
			__m512 v1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask16(c + 16, cols), xr + c + 16), s);
			__m512 v2 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask16(c + 32, cols), xr + c + 32), s);
			__m512 v3 = _mm512_mul_ps(_mm512_maskz_loadu_ps(mask16(c + 48, cols), xr + c + 48), s);
			__m512i n0 = (__m512i)_mm512_cvtne2ps_pbh(v1, v0); /* values c .. c+31 in order */
			__m512i n1 = (__m512i)_mm512_cvtne2ps_pbh(v3, v2); /* values c+32 .. c+63 */
			_mm512_store_si512(out, _mm512_permutex2var_epi16(n0, ia, n1));
			_mm512_store_si512(out + 32, _mm512_permutex2var_epi16(n0, ib, n1));
		}
	}
}

/* Row r's 64 codes (the first `len` of them at the end of a row), with the same columns pf bytes further
 * prefetched, and far bytes further into L2 when far is not 0. Opaque to the compiler, so that it keeps the
 * codes in a register rather than load them again for each table lookup (3 loads per 64 codes): +9-15% at
 * 1-2 tokens. */
DSM_BF16_TARGET static ALWAYS_INLINE __m512i load_codes(const uint8_t *p, ptrdiff_t pf, ptrdiff_t far, size_t len)
{
	__m512i v;
	if (len >= 64) {
		_mm_prefetch((const char *)(p + pf), _MM_HINT_T0);
		if (far)
			_mm_prefetch((const char *)(p + far), _MM_HINT_T2);
		v = _mm512_loadu_si512(p);
	} else {
		v = _mm512_maskz_loadu_epi8((1ull << len) - 1, p);
	}
	__asm__("" : "+v"(v));
	return v;
}

/* Adds rows [0, R) at w (stride ld) over the 64 columns at c times the T tokens' prepared chunk xp: acc[r][t][0]
 * takes the A half of each chunk, acc[r][t][1] the B half. Each (row, token) is these two chains of dot
 * products in column order, added at the end, whatever R and T: a token's result does not depend on how many
 * tokens share the pass (decode equals prefill). Two chains rather than one so that a single row is not bound
 * by the multiply's latency (one row at a time is the walk that streams best on some hosts). The order of work
 * fits the 32 registers (accumulators 2 x R x T <= 16, the tables 5): with at least as many rows as tokens,
 * every activation vector is loaded once into a register and the rows are loaded and converted one at a time
 * (R = 8, T = 1: 16 + 5 + 2 + 3); with more tokens, every row is converted first and the activations are loaded
 * one token at a time. */
DSM_BF16_TARGET static ALWAYS_INLINE void step_bf16(const uint8_t *w, size_t ld, size_t c, ptrdiff_t pf, ptrdiff_t far,
						    size_t len, const struct dsm_bf16_tables *tb, const uint16_t *xp,
						    __m512 acc[8][8][2], const int R, const int T)
{
	if (T <= R) {
		__m512bh xa[8], xb[8];
#pragma GCC unroll 8
		for (int t = 0; t < T; t++) {
			xa[t] = (__m512bh)_mm512_load_si512(xp + t * 64);
			xb[t] = (__m512bh)_mm512_load_si512(xp + t * 64 + 32);
		}
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			__m512i a, b;
			dsm_fp8x64_bf16(load_codes(w + r * ld + c, pf, far, len), tb, &a, &b);
#pragma GCC unroll 8
			for (int t = 0; t < T; t++) {
				acc[r][t][0] = _mm512_dpbf16_ps(acc[r][t][0], (__m512bh)a, xa[t]);
				acc[r][t][1] = _mm512_dpbf16_ps(acc[r][t][1], (__m512bh)b, xb[t]);
			}
		}
		return;
	}
	__m512i a[8], b[8];
#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
		dsm_fp8x64_bf16(load_codes(w + r * ld + c, pf, far, len), tb, &a[r], &b[r]);
#pragma GCC unroll 8
	for (int t = 0; t < T; t++) {
		__m512bh xa = (__m512bh)_mm512_load_si512(xp + t * 64);
		__m512bh xb = (__m512bh)_mm512_load_si512(xp + t * 64 + 32);
#pragma GCC unroll 8
		for (int r = 0; r < R; r++) {
			acc[r][t][0] = _mm512_dpbf16_ps(acc[r][t][0], (__m512bh)a[r], xa);
			acc[r][t][1] = _mm512_dpbf16_ps(acc[r][t][1], (__m512bh)b[r], xb);
		}
	}
}

/* ---- The transposed multiply (dsm_fp8_rows_t_bf16) ----------------------------------------------------
 * Every weight is BF16(code value * scale), so per 128 x 128 block a weight takes one of 256 values, symmetric
 * in the sign (rounding to nearest even is): two 128-entry byte tables of the rounded products of the
 * magnitudes turn 64 codes into their products with the byte permutes of the exact conversion above. Each
 * 32-bit lane of the two vectors then holds two products, shifted or masked into F32; the four vectors hold
 * the 64 columns in the order col_t below, undone at the store. */

/* Tables of BF16(value(m) * scale) for the magnitudes m = 0 .. 127, rounded as round_bf16 in cpu_matmul.c. */
DSM_BF16_TARGET static ALWAYS_INLINE void product_tables(float scale, struct dsm_bf16_tables *tb)
{
	uint8_t hi[128] __attribute__((aligned(64))), lo[128] __attribute__((aligned(64)));
	for (int j = 0; j < 8; j++) {
		__m512i codes = _mm512_add_epi32(_mm512_set1_epi32(16 * j), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8,
									9, 10, 11, 12, 13, 14, 15));
		__m512i u = _mm512_castps_si512(_mm512_mul_ps(dsm_fp8x16_f32(_mm512_cvtepi32_epi8(codes)),
							      _mm512_set1_ps(scale)));
		u = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
				     _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1)));
		_mm_store_si128((__m128i *)(lo + 16 * j), _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 16)));
		_mm_store_si128((__m128i *)(hi + 16 * j), _mm512_cvtepi32_epi8(_mm512_srli_epi32(u, 24)));
	}
	*tb = (struct dsm_bf16_tables){ _mm512_load_si512(hi), _mm512_load_si512(hi + 64), _mm512_load_si512(lo),
					_mm512_load_si512(lo + 64), _mm512_set1_epi8((char)0x80) };
}

/* The column (of 64) of lane d in product vector k: A's even and odd words, then B's. */
static ALWAYS_INLINE size_t col_t(int k, int d)
{
	return (size_t)(16 * (d / 4) + 8 * (k / 2) + 2 * (d % 4) + k % 2);
}

/* Steps ahead of the walk that are prefetched: a step is one row's K chunks of one pass (64 or 128 bytes), so 32
 * steps keep 2-4 KiB in flight, some hundreds of cycles of work ahead. In a harness (one thread, the W_k halves of
 * 128 heads from memory) 32 read 22 GB/s, 16 read 17 and 64 read 20. A matrix need not start on a cache line (the
 * checkpoint's tensors lie at 8-byte offsets): a step's bytes then span one line more, prefetched too. Without it,
 * `mid`'s W_k (16 heads, 2 threads) took 57-62 us a layer at 8 or 32 bytes off the line against 35 on it; with
 * it, 36-42. */
#define ROWS_T_AHEAD 32

/* One pass: columns [c, c + 64 K) of rows [r0, r0 + rows) for T tokens of x, each row's K chunks converted and
 * multiplied in turn (K = 2: one 128-column scale block, one table per row block). The lines ROWS_T_AHEAD steps
 * further in the walk are prefetched: the same columns of a later row, past the last row the next pass's
 * columns, past the last pass the first pass of the band at row `next` (SIZE_MAX: none). */
DSM_BF16_TARGET static ALWAYS_INLINE void rows_t_pass(const struct dsm_fp8_mat *W, size_t r0, size_t rows, size_t c,
						     size_t next, const float *x, size_t x_ld, float *y, size_t ldy,
						     const int K, const int T)
{
	const __m512i odd = _mm512_set1_epi32((int)0xffff0000u);
	size_t cols64 = W->cols / 64 * 64;
	__m512 acc[4][2][4];
#pragma GCC unroll 4
	for (int t = 0; t < T; t++)
#pragma GCC unroll 2
		for (int k = 0; k < K; k++)
#pragma GCC unroll 4
			for (int q = 0; q < 4; q++)
				acc[t][k][q] = _mm512_setzero_ps();
	struct dsm_bf16_tables tb;
	int split = (((uintptr_t)W->w | W->ld) & 63) != 0; /* each chunk's bytes span one line more */
	size_t block = r0 / DSM_FP8_BLOCK;
	product_tables(W->scale[block * W->scale_ld + c / DSM_FP8_BLOCK], &tb);
	for (size_t i = 0; i < rows; i++) {
		size_t r = r0 + i;
		if (r / DSM_FP8_BLOCK != block) {
			block = r / DSM_FP8_BLOCK;
			product_tables(W->scale[block * W->scale_ld + c / DSM_FP8_BLOCK], &tb);
		}
		size_t pr = i + ROWS_T_AHEAD, pc = c, base = r0;
		if (pr >= rows) {
			pr -= rows, pc += 64 * (size_t)K;
			if (pc >= cols64)
				pc = 0, base = next;
		}
		if (base != SIZE_MAX && pr < rows) {
			const char *pf = (const char *)(W->w + (base + pr) * W->ld + pc);
#pragma GCC unroll 2
			for (int k = 0; k < K; k++)
				_mm_prefetch(pf + 64 * k, _MM_HINT_T0);
			if (split)
				_mm_prefetch(pf + 64 * K - 1, _MM_HINT_T0);
		}
#pragma GCC unroll 2
		for (int k = 0; k < K; k++) {
			/* the byte permutes of dsm_fp8x64_bf16, the code's sign XOR-ed into the product's (any scale's
			 * sign) */
			__m512i v = _mm512_loadu_si512(W->w + r * W->ld + c + 64 * (size_t)k);
			__m512i h = _mm512_ternarylogic_epi32(_mm512_permutex2var_epi8(tb.hi0, v, tb.hi1), v, tb.sign, 0x78);
			__m512i l = _mm512_permutex2var_epi8(tb.lo0, v, tb.lo1);
			__m512i a = _mm512_unpacklo_epi8(l, h), b = _mm512_unpackhi_epi8(l, h);
			__m512 w[4] = { _mm512_castsi512_ps(_mm512_slli_epi32(a, 16)),
					_mm512_castsi512_ps(_mm512_and_si512(a, odd)),
					_mm512_castsi512_ps(_mm512_slli_epi32(b, 16)),
					_mm512_castsi512_ps(_mm512_and_si512(b, odd)) };
#pragma GCC unroll 4
			for (int t = 0; t < T; t++) {
				__m512 xv = _mm512_set1_ps(x[t * x_ld + i]);
#pragma GCC unroll 4
				for (int q = 0; q < 4; q++)
					acc[t][k][q] = _mm512_add_ps(acc[t][k][q], _mm512_mul_ps(xv, w[q]));
			}
		}
	}
#pragma GCC unroll 4
	for (int t = 0; t < T; t++)
#pragma GCC unroll 2
		for (int k = 0; k < K; k++)
#pragma GCC unroll 4
			for (int q = 0; q < 4; q++) {
				float v[16] __attribute__((aligned(64)));
				_mm512_store_ps(v, acc[t][k][q]);
				for (int d = 0; d < 16; d++)
					y[t * ldy + c + 64 * (size_t)k + col_t(q, d)] = v[d];
			}
}

/* Passes of 128 columns (one scale block: 8 accumulators a token) for up to 2 tokens at a time, of 64 for 3-4
 * (16 accumulators); a last 64 columns alone. Each column adds its rows in ascending order whatever the pass. */
DSM_BF16_TARGET void dsm_fp8_rows_t_bf16(const struct dsm_fp8_mat *W, size_t r0, size_t rows, const float *x, size_t x_ld,
					 size_t n, float *y, size_t ldy, size_t next)
{
	size_t cols64 = W->cols / 64 * 64;
	for (size_t t0 = 0; t0 < n; t0 += 4) {
		const float *xt = x + t0 * x_ld;
		float *yt = y + t0 * ldy;
		size_t T = n - t0 < 4 ? n - t0 : 4, nx = t0 + 4 < n ? r0 : next; /* the next group reads this band again */
		for (size_t c = 0; c < cols64;) {
			int K = T <= 2 && c + 128 <= cols64 ? 2 : 1;
			switch (T * 2 + (size_t)K - 1) {
			case 2: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 1, 1); break;
			case 3: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 2, 1); break;
			case 4: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 1, 2); break;
			case 5: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 2, 2); break;
			case 6: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 1, 3); break;
			default: rows_t_pass(W, r0, rows, c, nx, xt, x_ld, yt, ldy, 1, 4); break;
			}
			c += 64 * (size_t)K;
		}
	}
}

/* The BF16 kernel walks a 128-row block in column blocks of GEMV_COL_BLOCK columns: all the block's rows over
 * one column block, then the next. The activations of that column block (16 KiB for 8 tokens) stay in L1,
 * and while a group of rows is multiplied the same columns of the rows GEMV_PREFETCH_ROWS further are
 * prefetched: one group of 8 rows ahead. Against reading whole rows with a prefetch 1 KiB ahead in each, this
 * streams 45-54 GB/s instead of 33-42 at 2 tokens and 36-47 instead of 27-34 at 4 (2048 x 7168 and
 * 7168 x 2048, 2 threads, alternating in one process), and the same at 1 token as the best whole-row kernels,
 * which it replaces. The accumulators live in the scratch between column blocks; the chains are unchanged. */

const struct dsm_gemv_variant dsm_gemv_variants[DSM_GEMV_VARIANTS] = {
	{ "cblock1024-ahead8", 1024, 8, 1, 0, 0 },
	{ "rows4-ahead4", 0, 4, 1, 0, 0 },
	{ "rows1-pf4k", 0, 1, 0, 4096, 0 },
	{ "rows4-ahead4-far16k", 0, 4, 1, 0, 16384 },
	{ "rows1-pf8k", 0, 1, 0, 8192, 0 },
};
int dsm_gemv_variant;

/* R rows at w over columns [c0, c1) (c0 a multiple of 64; past cols only in the last chunk) for T tokens, added to
 * acc. */
DSM_BF16_TARGET static ALWAYS_INLINE void cols_bf16(const uint8_t *w, size_t ld, size_t c0, size_t c1, ptrdiff_t pf,
						    ptrdiff_t far, const struct dsm_bf16_tables *tb, const uint16_t *xs,
						    size_t xstride, __m512 acc[8][8][2], const int R, const int T)
{
	size_t c = c0;
	for (; c + 64 <= c1; c += 64)
		step_bf16(w, ld, c, pf, far, 64, tb, xs + c / 64 * xstride, acc, R, T);
	if (c < c1)
		step_bf16(w, ld, c, pf, far, c1 - c, tb, xs + c / 64 * xstride, acc, R, T);
}

/* R rows at w over columns [c0, c1) for T tokens (cols_bf16): acc_mem[(r * 8 + t) * 2 + h] continued (or started
 * when first), and the same columns at w + pf (and w + far into L2, when far is not 0) prefetched. */
DSM_BF16_TARGET static ALWAYS_INLINE void rows_bf16(const uint8_t *w, size_t ld, size_t c0, size_t c1, ptrdiff_t pf,
						    ptrdiff_t far, const uint16_t *xs, size_t xstride, __m512 *acc_mem,
						    int first, const int R, const int T)
{
	struct dsm_bf16_tables tb = dsm_bf16_tables_load();
	__m512 acc[8][8][2];
#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
#pragma GCC unroll 2
			for (int h = 0; h < 2; h++)
				acc[r][t][h] = first ? _mm512_setzero_ps() : acc_mem[(r * 8 + t) * 2 + h];
	cols_bf16(w, ld, c0, c1, pf, far, &tb, xs, xstride, acc, R, T);
#pragma GCC unroll 8
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
#pragma GCC unroll 2
			for (int h = 0; h < 2; h++)
				acc_mem[(r * 8 + t) * 2 + h] = acc[r][t][h];
}

#define BF16_MAX_T DSM_GEMV_MAX_TOKENS /* every token in one pass */
typedef void (*rows_bf16_fn)(const uint8_t *w, size_t ld, size_t c0, size_t c1, ptrdiff_t pf, ptrdiff_t far,
			     const uint16_t *xs, size_t xstride, __m512 *acc_mem, int first);
#define ROWS_BF16(R, T) \
	DSM_BF16_TARGET static void rows_bf16_r##R##_t##T(const uint8_t *w, size_t ld, size_t c0, size_t c1, \
							  ptrdiff_t pf, ptrdiff_t far, const uint16_t *xs, \
							  size_t xstride, __m512 *acc_mem, int first) \
	{ rows_bf16(w, ld, c0, c1, pf, far, xs, xstride, acc_mem, first, R, T); }
ROWS_BF16(8, 1)
ROWS_BF16(4, 1) ROWS_BF16(4, 2)
ROWS_BF16(2, 3) ROWS_BF16(2, 4)
ROWS_BF16(1, 1) ROWS_BF16(1, 2) ROWS_BF16(1, 3) ROWS_BF16(1, 4)
ROWS_BF16(1, 5) ROWS_BF16(1, 6) ROWS_BF16(1, 7) ROWS_BF16(1, 8)
/* Row groups by token count (2 x R x T accumulators <= 16): the memory walk's 8, 4 or 1 rows for 1 token, at
 * most 4 for 2, 2 for 3-4 and 1 for 5-8; single rows for what is left of a range. */
static const rows_bf16_fn bf16_group8[BF16_MAX_T + 1] = { NULL, rows_bf16_r8_t1 };
static const rows_bf16_fn bf16_group4[BF16_MAX_T + 1] = { NULL, rows_bf16_r4_t1, rows_bf16_r4_t2 };
static const rows_bf16_fn bf16_group2[BF16_MAX_T + 1] = { NULL, NULL, NULL, rows_bf16_r2_t3, rows_bf16_r2_t4 };
static const rows_bf16_fn bf16_single[BF16_MAX_T + 1] = { NULL, rows_bf16_r1_t1, rows_bf16_r1_t2, rows_bf16_r1_t3,
	rows_bf16_r1_t4, rows_bf16_r1_t5, rows_bf16_r1_t6, rows_bf16_r1_t7, rows_bf16_r1_t8 };

/* The one-row walk at one token: rows [0, n) at w in one call, each row's two chains added at its end as
 * dsm_gemv_block_bf16 adds them (same bits), the tables kept in registers from row to row. */
DSM_BF16_TARGET static void rows1_t1(const uint8_t *w, size_t ld, size_t n, size_t cols, ptrdiff_t pf, ptrdiff_t far,
				     const uint16_t *xs, float *y)
{
	struct dsm_bf16_tables tb = dsm_bf16_tables_load();
	for (size_t r = 0; r < n; r++) {
		__m512 acc[8][8][2];
		acc[0][0][0] = acc[0][0][1] = _mm512_setzero_ps();
		cols_bf16(w + r * ld, ld, 0, cols, pf, far, &tb, xs, 64, acc, 1, 1);
		y[r] = _mm512_reduce_add_ps(_mm512_add_ps(acc[0][0][0], acc[0][0][1]));
	}
}

DSM_BF16_TARGET void dsm_gemv_block_bf16(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b,
					 const float *x, size_t x_ld, size_t n_tok, float *y, size_t y_ld,
					 void *scratch)
{
	/* n_tok <= DSM_GEMV_MAX_TOKENS: the prepared activations (8 x cols_pad BF16 values) and the
	 * accumulators (128 rows x 8 tokens x 2 chains) fit the scratch (dsm_fp8_gemv_scratch_size). */
	uint16_t *xs = scratch;
	__m512 *acc = (__m512 *)(xs + DSM_GEMV_MAX_TOKENS * dsm_cols_pad(W->cols));
	const struct dsm_gemv_variant *var = &dsm_gemv_variants[dsm_gemv_variant];
	/* The one-row walk reads 2 bytes of activations per code: past 8192 columns (16 KiB of them a token) they
	 * no longer stay in L1 beside the stream, and 4-row groups, one activation load for 4 rows, stream
	 * faster (docs/kernels.md, "Long rows"). Same chains, same bits. */
	if (var->group == 1 && W->cols > 8192)
		var = &dsm_gemv_variants[DSM_GEMV_LONG_ROWS];
	/* The variant's rows per group at 1 token (streaming-bound), at most 4 at 2. From 3 tokens on the
	 * multiplies and the conversion bound the pass: groups of 2 rows (3-4 tokens) or single rows (5-8) in one
	 * pass over all the tokens, so that each converted code serves every token. */
	size_t xstride = n_tok * 64, R = n_tok == 1 ? var->group : n_tok == 2 ? (var->group < 4 ? var->group : 4) :
					n_tok <= 4 ? 2 : 1;
	ptrdiff_t far = (ptrdiff_t)dsm_far_prefetch(var->far, W->ld, R);
	prep_bf16(W, rb, x, x_ld, n_tok, xs);
	if (R == 1 && n_tok == 1 && !var->col_block && !var->rows_ahead) {
		rows1_t1(W->w + a * W->ld, W->ld, b - a, W->cols, var->prefetch, far, xs, y);
		return;
	}
	size_t cblock = var->col_block ? var->col_block : W->cols;
	for (size_t c0 = 0; c0 == 0 || c0 < W->cols; c0 += cblock) { /* 0 columns: zeros */
		size_t c1 = c0 + cblock < W->cols ? c0 + cblock : W->cols;
		for (size_t r = a; r < b;) {
			size_t g = r + R <= b ? R : 1;
			const rows_bf16_fn *fn = g == 1 ? bf16_single : g == 8 ? bf16_group8 : g == 4 ? bf16_group4 :
						 bf16_group2;
			/* Rows ahead: the same columns one group further; for the last groups, the first rows'
			 * next column block, or after the last column block the first columns of the rows below
			 * the block (in a dense matrix, the next block's). Else a distance ahead in each row. */
			ptrdiff_t ahead = (ptrdiff_t)(R * W->ld);
			ptrdiff_t pf = !var->rows_ahead ? var->prefetch : r + R < b ? ahead :
				       c1 < W->cols ? (ptrdiff_t)cblock - (ptrdiff_t)((r - a) * W->ld) : ahead - (ptrdiff_t)c0;
			fn[n_tok](W->w + r * W->ld, W->ld, c0, c1, pf, far, xs, xstride, acc + (r - a) * 16, c0 == 0);
			r += g;
		}
	}
	for (size_t r = a; r < b; r++)
		for (size_t t = 0; t < n_tok; t++) {
			const __m512 *chains = acc + (r - a) * 16 + t * 2;
			y[t * y_ld + (r - a)] = _mm512_reduce_add_ps(_mm512_add_ps(chains[0], chains[1]));
		}
}

typedef void (*rows_fn)(const uint8_t *w, size_t ld, size_t cols, const void *xs, float *y, size_t y_ld);

#define TARGET_f512 DSM_AVX512F_TARGET
#define TARGET_f256 DSM_AVX2_TARGET
#define ROWS_FN(isa, R, T) \
	TARGET_##isa static void rows_##isa##_r##R##_t##T(const uint8_t *w, size_t ld, size_t cols, const void *xs, \
					     float *y, size_t y_ld) \
	{ rows_##isa(w, ld, cols, xs, y, y_ld, R, T); }

/* Rows [a, b) in groups, then one at a time. */
static void run_rows(const rows_fn *group, const rows_fn *single, int R, const struct dsm_fp8_mat *W, size_t a,
		     size_t b, size_t n_tok, const void *xs, float *y, size_t y_ld)
{
	size_t r = a;
	for (; r + (size_t)R <= b; r += (size_t)R)
		group[n_tok](W->w + r * W->ld, W->ld, W->cols, xs, y + (r - a), y_ld);
	for (; r < b; r++)
		single[n_tok](W->w + r * W->ld, W->ld, W->cols, xs, y + (r - a), y_ld);
}

/* ---- AVX-512F (F32) ------------------------------------------------------------------------------------
 * Codes become exact floats by bit arithmetic (dsm_fp8x16_f32), then FMAs. */

/* xs[(i * n_tok + t) * 16 + j] = x[t, 16 i + j] * scale[rb, 16 i / 128] as F32, zeros past cols. */
DSM_AVX512F_TARGET static void prep_f32_512(const struct dsm_fp8_mat *W, size_t rb, const float *x, size_t x_ld,
					    size_t n_tok, float *xs)
{
	const float *srow = W->scale + rb * W->scale_ld;
	size_t cols = W->cols, pad = dsm_cols_pad(cols);
	for (size_t t = 0; t < n_tok; t++)
		for (size_t c = 0; c < pad; c += 16) {
			__m512 v = _mm512_maskz_loadu_ps(mask16(c, cols), x + t * x_ld + c);
			_mm512_store_ps(xs + (c / 16 * n_tok + t) * 16, _mm512_mul_ps(v, _mm512_set1_ps(srow[c / DSM_FP8_BLOCK])));
		}
}

DSM_AVX512F_TARGET static ALWAYS_INLINE void rows_f512(const uint8_t *w, size_t ld, size_t cols, const float *xs,
						       float *y, size_t y_ld, const int R, const int T)
{
	__m512 acc[4][8];
#pragma GCC unroll 4
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			acc[r][t] = _mm512_setzero_ps();
	size_t nfull = cols / 16, rem = cols % 16;
	for (size_t i = 0; i <= nfull; i++) {
		if (i == nfull && !rem)
			break;
#pragma GCC unroll 4
		for (int r = 0; r < R; r++) {
			__m128i codes;
			if (i < nfull) {
				if (i % 4 == 0) /* once per line: +20% on 7168-column rows, the same on 2048 */
					_mm_prefetch((const char *)(w + r * ld + i * 16 + GEMV_PREFETCH), _MM_HINT_T0);
				codes = _mm_loadu_si128((const __m128i *)(w + r * ld + i * 16));
			} else {
				uint8_t tail[16] = { 0 };
				memcpy(tail, w + r * ld + i * 16, rem);
				codes = _mm_loadu_si128((const __m128i *)tail);
			}
			__m512 f = dsm_fp8x16_f32(codes);
#pragma GCC unroll 8
			for (int t = 0; t < T; t++)
				acc[r][t] = _mm512_fmadd_ps(f, _mm512_load_ps(xs + (i * T + t) * 16), acc[r][t]);
		}
	}
#pragma GCC unroll 4
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			y[t * y_ld + r] = _mm512_reduce_add_ps(acc[r][t]);
}

#define F512_R(T) ((T) <= 2 ? 4 : (T) <= 4 ? 2 : 1)
ROWS_FN(f512, 4, 1) ROWS_FN(f512, 4, 2) ROWS_FN(f512, 2, 3) ROWS_FN(f512, 2, 4)
ROWS_FN(f512, 1, 1) ROWS_FN(f512, 1, 2) ROWS_FN(f512, 1, 3) ROWS_FN(f512, 1, 4)
ROWS_FN(f512, 1, 5) ROWS_FN(f512, 1, 6) ROWS_FN(f512, 1, 7) ROWS_FN(f512, 1, 8)
static const rows_fn f512_group[9] = { NULL, rows_f512_r4_t1, rows_f512_r4_t2, rows_f512_r2_t3, rows_f512_r2_t4,
	rows_f512_r1_t5, rows_f512_r1_t6, rows_f512_r1_t7, rows_f512_r1_t8 };
static const rows_fn f512_single[9] = { NULL, rows_f512_r1_t1, rows_f512_r1_t2, rows_f512_r1_t3, rows_f512_r1_t4,
	rows_f512_r1_t5, rows_f512_r1_t6, rows_f512_r1_t7, rows_f512_r1_t8 };

void dsm_gemv_block_avx512f(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b, const float *x,
			    size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch)
{
	prep_f32_512(W, rb, x, x_ld, n_tok, scratch);
	run_rows(f512_group, f512_single, F512_R(n_tok), W, a, b, n_tok, scratch, y, y_ld);
}

/* ---- AVX2 + FMA (F32) ----------------------------------------------------------------------------------
 * The AVX-512F arithmetic on 8 lanes, with a blend for the subnormal fix. */

DSM_AVX2_TARGET static void prep_f32_256(const struct dsm_fp8_mat *W, size_t rb, const float *x, size_t x_ld,
					 size_t n_tok, float *xs)
{
	const float *srow = W->scale + rb * W->scale_ld;
	size_t cols = W->cols, pad = dsm_cols_pad(cols);
	for (size_t t = 0; t < n_tok; t++) {
		size_t c = 0;
		for (; c + 8 <= cols; c += 8) {
			__m256 v = _mm256_loadu_ps(x + t * x_ld + c);
			_mm256_store_ps(xs + (c / 8 * n_tok + t) * 8, _mm256_mul_ps(v, _mm256_set1_ps(srow[c / DSM_FP8_BLOCK])));
		}
		for (; c < pad; c++)
			xs[(c / 8 * n_tok + t) * 8 + c % 8] = c < cols ? x[t * x_ld + c] * srow[c / DSM_FP8_BLOCK] : 0.0f;
	}
}

DSM_AVX2_TARGET static ALWAYS_INLINE __m256 fp8x8_f32(__m128i codes)
{
	__m256i v = _mm256_cvtepu8_epi32(codes);
	__m256i bits = _mm256_add_epi32(_mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7F)), 20),
					_mm256_set1_epi32(120 << 23));
	__m256 f = _mm256_castsi256_ps(bits);
	__m256 fs = _mm256_fmsub_ps(f, _mm256_set1_ps(2.0f), _mm256_set1_ps(0x1p-6f));
	__m256i is_sub = _mm256_cmpeq_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x78)), _mm256_setzero_si256());
	f = _mm256_blendv_ps(f, fs, _mm256_castsi256_ps(is_sub));
	__m256i sign = _mm256_and_si256(_mm256_slli_epi32(v, 24), _mm256_set1_epi32((int)0x80000000u));
	return _mm256_or_ps(f, _mm256_castsi256_ps(sign));
}

DSM_AVX2_TARGET static ALWAYS_INLINE float hsum256(__m256 v)
{
	__m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
	s = _mm_add_ps(s, _mm_movehl_ps(s, s));
	s = _mm_add_ss(s, _mm_movehdup_ps(s));
	return _mm_cvtss_f32(s);
}

DSM_AVX2_TARGET static ALWAYS_INLINE void rows_f256(const uint8_t *w, size_t ld, size_t cols, const float *xs,
						    float *y, size_t y_ld, const int R, const int T)
{
	__m256 acc[4][8];
#pragma GCC unroll 4
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			acc[r][t] = _mm256_setzero_ps();
	size_t nfull = cols / 8, rem = cols % 8;
	for (size_t i = 0; i <= nfull; i++) {
		if (i == nfull && !rem)
			break;
#pragma GCC unroll 4
		for (int r = 0; r < R; r++) {
			__m128i codes;
			if (i < nfull) {
				codes = _mm_loadl_epi64((const __m128i *)(w + r * ld + i * 8));
			} else {
				uint8_t tail[16] = { 0 };
				memcpy(tail, w + r * ld + i * 8, rem);
				codes = _mm_loadl_epi64((const __m128i *)tail);
			}
			__m256 f = fp8x8_f32(codes);
#pragma GCC unroll 8
			for (int t = 0; t < T; t++)
				acc[r][t] = _mm256_fmadd_ps(f, _mm256_load_ps(xs + (i * T + t) * 8), acc[r][t]);
		}
	}
#pragma GCC unroll 4
	for (int r = 0; r < R; r++)
#pragma GCC unroll 8
		for (int t = 0; t < T; t++)
			y[t * y_ld + r] = hsum256(acc[r][t]);
}

#define F256_R(T) ((T) == 1 ? 4 : (T) == 2 ? 2 : 1)
ROWS_FN(f256, 4, 1) ROWS_FN(f256, 2, 2)
ROWS_FN(f256, 1, 1) ROWS_FN(f256, 1, 2) ROWS_FN(f256, 1, 3) ROWS_FN(f256, 1, 4)
ROWS_FN(f256, 1, 5) ROWS_FN(f256, 1, 6) ROWS_FN(f256, 1, 7) ROWS_FN(f256, 1, 8)
static const rows_fn f256_group[9] = { NULL, rows_f256_r4_t1, rows_f256_r2_t2, rows_f256_r1_t3, rows_f256_r1_t4,
	rows_f256_r1_t5, rows_f256_r1_t6, rows_f256_r1_t7, rows_f256_r1_t8 };
static const rows_fn f256_single[9] = { NULL, rows_f256_r1_t1, rows_f256_r1_t2, rows_f256_r1_t3, rows_f256_r1_t4,
	rows_f256_r1_t5, rows_f256_r1_t6, rows_f256_r1_t7, rows_f256_r1_t8 };

void dsm_gemv_block_avx2(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b, const float *x,
			 size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch)
{
	prep_f32_256(W, rb, x, x_ld, n_tok, scratch);
	run_rows(f256_group, f256_single, F256_R(n_tok), W, a, b, n_tok, scratch, y, y_ld);
}
