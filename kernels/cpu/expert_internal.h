/* Shared between the expert kernel files only (not an API). */
#ifndef DSM_EXPERT_INTERNAL_H
#define DSM_EXPERT_INTERNAL_H

#include "expert_kernels.h"

#include <immintrin.h>
#include <stddef.h>
#include <stdint.h>

#define DSM_BF16_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512bf16")))
#define DSM_AVX512F_TARGET __attribute__((target("avx512f")))
#define DSM_AVX2_TARGET __attribute__((target("avx2,fma")))

/* Columns rounded up to the 64-value chunk the vector kernels read. */
static inline size_t dsm_cols_pad(size_t cols)
{
	return (cols + 63) & ~(size_t)63;
}

/* BF16 bits of the E4M3 codes 0..127 (the sign is bit 7 of the code, OR-ed into bit 15). Exact for every
 * finite code, subnormals included; 0x7F gives a quiet NaN. */
extern const uint8_t dsm_fp8_bf16_hi[128];
extern const uint8_t dsm_fp8_bf16_lo[128];

/* The two tables in registers, and the sign bit. */
struct dsm_bf16_tables {
	__m512i hi0, hi1, lo0, lo1, sign;
};

DSM_BF16_TARGET static inline __attribute__((always_inline)) struct dsm_bf16_tables dsm_bf16_tables_load(void)
{
	return (struct dsm_bf16_tables){
		_mm512_load_si512(dsm_fp8_bf16_hi), _mm512_load_si512(dsm_fp8_bf16_hi + 64),
		_mm512_load_si512(dsm_fp8_bf16_lo), _mm512_load_si512(dsm_fp8_bf16_lo + 64),
		_mm512_set1_epi8((char)0x80),
	};
}

/* 64 codes -> their exact BF16 values in two vectors. The byte unpacks work within 128-bit lanes: a holds
 * codes 0-7, 16-23, 32-39, 48-55 and b the others. */
DSM_BF16_TARGET static inline __attribute__((always_inline)) void
dsm_fp8x64_bf16(__m512i v, const struct dsm_bf16_tables *tb, __m512i *a, __m512i *b)
{
	__m512i h = _mm512_permutex2var_epi8(tb->hi0, v, tb->hi1);
	h = _mm512_ternarylogic_epi32(h, v, tb->sign, 0xF8); /* h | (v & 0x80) */
	__m512i l = _mm512_permutex2var_epi8(tb->lo0, v, tb->lo1);
	*a = _mm512_unpacklo_epi8(l, h);
	*b = _mm512_unpackhi_epi8(l, h);
}

/* The second prefetch's distance in bytes for a walk in groups of `group` rows of `row` bytes: whole groups at
 * least `far` bytes further; 0 when far is 0 or that is no further than the next group (the near prefetch). */
static inline size_t dsm_far_prefetch(size_t far, size_t row, size_t group)
{
	if (!far || !row)
		return 0;
	size_t groups = (far + group * row - 1) / (group * row);
	return groups > 1 ? groups * group * row : 0;
}

/* 16 BF16 values -> the same 16 floats (the bits in the upper half). */
DSM_AVX512F_TARGET static inline __attribute__((always_inline)) __m512 dsm_bf16x16_f32(__m256i h)
{
	return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* 16 codes -> 16 exact floats by bit arithmetic: (code & 0x7F) << 20 with the exponent bias moved from 7 to
 * 127 is exact for normal codes; subnormal codes (exponent 0) come out as (1 + m/8) 2^-7, and 2f - 2^-6 turns
 * that into m/8 2^-6 exactly; the sign bit is OR-ed in last. */
DSM_AVX512F_TARGET static inline __attribute__((always_inline)) __m512 dsm_fp8x16_f32(__m128i codes)
{
	__m512i v = _mm512_cvtepu8_epi32(codes);
	__m512i bits = _mm512_add_epi32(_mm512_slli_epi32(_mm512_and_si512(v, _mm512_set1_epi32(0x7F)), 20),
					_mm512_set1_epi32(120 << 23));
	__m512 f = _mm512_castsi512_ps(bits);
	__mmask16 sub = _mm512_testn_epi32_mask(v, _mm512_set1_epi32(0x78));
	f = _mm512_mask_fmsub_ps(f, sub, _mm512_set1_ps(2.0f), _mm512_set1_ps(0x1p-6f));
	return _mm512_castsi512_ps(_mm512_ternarylogic_epi32(_mm512_castps_si512(f), _mm512_slli_epi32(v, 24),
							     _mm512_set1_epi32((int)0x80000000u), 0xF8));
}

/* dsm_bf16_pack of the rows rows[0 .. m) of x (rows NULL: 0 .. m-1). AVX-512 BF16 only. */
void dsm_bf16_pack_gather(const float *x, size_t x_ld, const int32_t *rows, size_t m, size_t k, size_t kp0,
			  size_t kp1, uint16_t *a_packed);

/* dst[c * dst_ld + r] = src[r * src_ld + c] for r < rows, c < cols, in 16 x 16 blocks through registers.
 * AVX-512 BF16 only (it is the batched path's). */
void dsm_f32_transpose(const float *src, size_t src_ld, size_t rows, size_t cols, float *dst, size_t dst_ld);

/* One ISA's decode kernel on rows [a, b) of one 128-row block rb, for 1..8 tokens. */
typedef void (*dsm_gemv_block_fn)(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b,
				  const float *x, size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch);
void dsm_gemv_block_bf16(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b, const float *x,
			 size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch);
void dsm_gemv_block_avx512f(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b, const float *x,
			    size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch);
void dsm_gemv_block_avx2(const struct dsm_fp8_mat *W, size_t rb, size_t a, size_t b, const float *x,
			 size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch);

#endif
