/* The decode GEMV of BF16 weights (the output head and the router): a few activation vectors against rows
 * read once. Three memory walks (cpu_bf16_walks), chosen at start on the head (dsm_cpu_bf16_gemv_tune):
 *   rows4-ahead4-far64k, the default: rows4-ahead4 below, and the same columns whole groups of rows at least
 *     64 KiB further prefetched into L2. On the Intel host with 4 KiB rows (mid) the head took 8-9% less
 *     time with 1 and 2 threads (32-128 KiB alike; dsm-bench e2e --resident, one sitting): one group ahead
 *     (16 KiB) keeps too few lines in flight there.
 *   rows4-ahead4: 4 rows at a time, so that each loaded activation chunk serves 4 rows and 4 independent
 *     chains hide the multiply's latency; while a group is multiplied, the same columns of the next group
 *     (one group's bytes ahead in the stored matrix) are prefetched. On an Intel host with the head's 2 KiB
 *     rows this streamed 0.97-1.01 of a plain read's rate where a prefetch 1 KiB ahead in each row streamed
 *     0.76-0.91; on 14 KiB rows the two are equal.
 *   rows1-pf4k: one row at a time, 4 KiB ahead prefetched: a single sequential stream. On an AMD host the
 *     small preset decoded 10-20% faster with it, mid 3-10% (1-2 threads, alternating): there the four
 *     interleaved streams of the other walk stream less.
 * Each (row, token) is the same chain of multiply-adds in column order in all: the results are identical.
 *
 *   bf16 precision, AVX-512 BF16: activations rounded to BF16 once per call; vdpbf16ps multiplies pairs of
 *     BF16 values exactly and adds them in F32 (the products are those of the scalar path; only the order of
 *     the additions differs);
 *   f32 precision, AVX-512F: each BF16 weight widened exactly to F32, FMA with the F32 activations.
 * Without these ISAs the caller runs its portable loop. */
#include "cpu_backend.h"
#include "expert_internal.h"

#include <immintrin.h>
#include <string.h>

#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ROWS 4

const struct cpu_bf16_walk cpu_bf16_walks[CPU_BF16_WALKS] = {
	{ "rows4-ahead4-far64k", ROWS, 0, 65536 },
	{ "rows4-ahead4", ROWS, 0, 0 },
	{ "rows1-pf4k", 1, 4096, 0 },
};
int cpu_bf16_walk;

const char *dsm_cpu_bf16_gemv_walk(void)
{
	return cpu_bf16_walks[cpu_bf16_walk].name;
}

static ALWAYS_INLINE __mmask32 mask32(int64_t c, int64_t cols)
{
	int64_t left = cols - c;
	return left >= 32 ? (__mmask32)0xFFFFFFFFu : (__mmask32)((1u << left) - 1);
}

/* rows [r, r + R) x n tokens, BF16 products; xb [n][xb_ld] BF16 bits, zero past cols. */
DSM_BF16_TARGET static ALWAYS_INLINE void rows_bf16(const uint16_t *w, int64_t cols, int64_t r, int R, int n,
						    const uint16_t *xb, int64_t xb_ld, float *y, int64_t ldy,
						    int64_t r0, int64_t pf, int64_t far)
{
	__m512 acc[ROWS][CPU_GEMV_MAX_N];
	for (int i = 0; i < R; i++)
		for (int t = 0; t < n; t++)
			acc[i][t] = _mm512_setzero_ps();
	const uint16_t *wr[ROWS];
	for (int i = 0; i < R; i++)
		wr[i] = w + (r + i) * cols;
	for (int64_t c = 0; c < cols; c += 32) {
		__m512i xv[CPU_GEMV_MAX_N];
		for (int t = 0; t < n; t++)
			xv[t] = _mm512_load_si512(xb + t * xb_ld + c);
		__mmask32 m = mask32(c, cols);
		for (int i = 0; i < R; i++) {
			_mm_prefetch((const char *)(wr[i] + c) + pf, _MM_HINT_T0);
			if (far)
				_mm_prefetch((const char *)(wr[i] + c) + far, _MM_HINT_T2);
			__m512i wv = _mm512_maskz_loadu_epi16(m, wr[i] + c);
			for (int t = 0; t < n; t++)
				acc[i][t] = _mm512_dpbf16_ps(acc[i][t], (__m512bh)wv, (__m512bh)xv[t]);
		}
	}
	for (int i = 0; i < R; i++)
		for (int t = 0; t < n; t++)
			y[t * ldy + r + i - r0] = _mm512_reduce_add_ps(acc[i][t]);
}

/* The same with F32 activations x [n][x_ld] and exact F32 weights. */
DSM_AVX512F_TARGET static ALWAYS_INLINE void rows_f32(const uint16_t *w, int64_t cols, int64_t r, int R, int n,
						      const float *x, int64_t x_ld, float *y, int64_t ldy,
						      int64_t r0, int64_t pf, int64_t far)
{
	__m512 acc[ROWS][CPU_GEMV_MAX_N];
	for (int i = 0; i < R; i++)
		for (int t = 0; t < n; t++)
			acc[i][t] = _mm512_setzero_ps();
	const uint16_t *wr[ROWS];
	for (int i = 0; i < R; i++)
		wr[i] = w + (r + i) * cols;
	for (int64_t c = 0; c < cols; c += 16) {
		__mmask16 m = cols - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
		__m512 xv[CPU_GEMV_MAX_N];
		for (int t = 0; t < n; t++)
			xv[t] = _mm512_maskz_loadu_ps(m, x + t * x_ld + c);
		for (int i = 0; i < R; i++) {
			if (c % 32 == 0) {
				_mm_prefetch((const char *)(wr[i] + c) + pf, _MM_HINT_T0);
				if (far)
					_mm_prefetch((const char *)(wr[i] + c) + far, _MM_HINT_T2);
			}
			__m256i h;
			if (m == 0xFFFF) {
				h = _mm256_loadu_si256((const __m256i *)(wr[i] + c));
			} else {
				uint16_t part[16] = { 0 };
				memcpy(part, wr[i] + c, sizeof(uint16_t) * (size_t)(cols - c));
				h = _mm256_loadu_si256((const __m256i *)part);
			}
			__m512 wv = dsm_bf16x16_f32(h);
			for (int t = 0; t < n; t++)
				acc[i][t] = _mm512_fmadd_ps(wv, xv[t], acc[i][t]);
		}
	}
	for (int i = 0; i < R; i++)
		for (int t = 0; t < n; t++)
			y[t * ldy + r + i - r0] = _mm512_reduce_add_ps(acc[i][t]);
}

/* One loop per token count, so that the register arrays have constant bounds. Prefetched ahead of each row:
 * the walk's distance, or the same columns one group further (single rows: the next row); and with a far
 * distance, into L2, the same columns whole groups of rows at least that far, when further than one group. */
#define ROW_LOOP(kernel, xp, xld)                                                                         \
	do {                                                                                              \
		const struct cpu_bf16_walk *walk = &cpu_bf16_walks[cpu_bf16_walk];                        \
		int64_t r = r0, row = cols * (int64_t)sizeof(uint16_t);                                   \
		int64_t far = (int64_t)dsm_far_prefetch((size_t)walk->far, (size_t)row, ROWS);            \
		if (walk->group == ROWS)                                                                  \
			for (; r + ROWS <= r1; r += ROWS)                                                 \
				kernel(w, cols, r, ROWS, N, xp, xld, y, ldy, r0, ROWS * row, far);        \
		for (; r < r1; r++)                                                                       \
			kernel(w, cols, r, 1, N, xp, xld, y, ldy, r0, walk->prefetch ? walk->prefetch : row, 0); \
	} while (0)

#define BY_TOKENS(fn)                                \
	switch (n) {                                 \
	case 1: { enum { N = 1 }; fn; break; }       \
	case 2: { enum { N = 2 }; fn; break; }       \
	case 3: { enum { N = 3 }; fn; break; }       \
	default: { enum { N = 4 }; fn; break; }      \
	}

DSM_BF16_TARGET static void gemv_bf16(const uint16_t *w, int64_t cols, int64_t r0, int64_t r1, int n,
				      const uint16_t *xb, int64_t xb_ld, float *y, int64_t ldy)
{
	BY_TOKENS(ROW_LOOP(rows_bf16, xb, xb_ld))
}

DSM_AVX512F_TARGET static void gemv_f32(const uint16_t *w, int64_t cols, int64_t r0, int64_t r1, int n,
					const float *x, int64_t x_ld, float *y, int64_t ldy)
{
	BY_TOKENS(ROW_LOOP(rows_f32, x, x_ld))
}

int64_t cpu_bf16_act_ld(int64_t cols)
{
	return (cols + 31) / 32 * 32;
}

DSM_BF16_TARGET static void pack_bf16(const float *x, int64_t n, int64_t cols, uint16_t *xb)
{
	int64_t ld = cpu_bf16_act_ld(cols);
	for (int64_t t = 0; t < n; t++)
		for (int64_t c = 0; c < ld; c += 32) {
			__mmask16 m0 = c >= cols ? 0 : cols - c >= 16 ? 0xFFFF : (__mmask16)((1u << (cols - c)) - 1);
			__mmask16 m1 = c + 16 >= cols ? 0 : cols - c - 16 >= 16 ? 0xFFFF :
					(__mmask16)((1u << (cols - c - 16)) - 1);
			__m512 a = _mm512_maskz_loadu_ps(m0, x + t * cols + c);
			__m512 b = _mm512_maskz_loadu_ps(m1, x + t * cols + c + 16);
			_mm512_store_si512(xb + t * ld + c, (__m512i)_mm512_cvtne2ps_pbh(b, a));
		}
}

int cpu_bf16_gemv_available(int bf16)
{
	return dsm_isa_available(bf16 ? DSM_ISA_AVX512BF16 : DSM_ISA_AVX512F);
}

void cpu_bf16_gemv_pack(const float *x, int64_t n, int64_t cols, uint16_t *xb)
{
	pack_bf16(x, n, cols, xb);
}

void cpu_bf16_gemv_rows(const uint16_t *w, int64_t cols, int64_t r0, int64_t r1, int64_t n, const float *x,
			const uint16_t *xb, float *y, int64_t ldy)
{
	if (xb)
		gemv_bf16(w, cols, r0, r1, (int)n, xb, cpu_bf16_act_ld(cols), y, ldy);
	else
		gemv_f32(w, cols, r0, r1, (int)n, x, cols, y, ldy);
}
