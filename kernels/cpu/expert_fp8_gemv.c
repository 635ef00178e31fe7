/* FP8 decode GEMV: the scalar reference, run-time ISA choice, and the row-block driver shared by the vector
 * kernels (expert_gemv_x86.c). */
#include "expert_internal.h"

#include "dtype.h"
#include "error.h"

#include <string.h>

/* BF16 bits of a positive E4M3 code c = eeeemmm: normal codes are (e + 120) << 7 | m << 4; subnormals
 * m * 2^-9 are normal in BF16 (exponents 118..120); 0x7F is NaN. */
#define SUBN(m) ((m) == 0 ? 0 : (m) == 1 ? 0x3B00 : (m) == 2 ? 0x3B80 : (m) == 3 ? 0x3BC0 : 0x3C00 | (((m) - 4) << 5))
#define BF(c) ((c) == 127 ? 0x7FC0 : ((c) >> 3) ? (((((c) >> 3) + 120) << 7) | (((c) & 7) << 4)) : SUBN((c) & 7))
#define HI8(c) (BF(c) >> 8), (BF(c + 1) >> 8), (BF(c + 2) >> 8), (BF(c + 3) >> 8), \
	(BF(c + 4) >> 8), (BF(c + 5) >> 8), (BF(c + 6) >> 8), (BF(c + 7) >> 8)
#define LO8(c) (BF(c) & 0xFF), (BF(c + 1) & 0xFF), (BF(c + 2) & 0xFF), (BF(c + 3) & 0xFF), \
	(BF(c + 4) & 0xFF), (BF(c + 5) & 0xFF), (BF(c + 6) & 0xFF), (BF(c + 7) & 0xFF)
#define ALL16(F) F(0), F(8), F(16), F(24), F(32), F(40), F(48), F(56), F(64), F(72), F(80), F(88), \
	F(96), F(104), F(112), F(120)

const uint8_t dsm_fp8_bf16_hi[128] __attribute__((aligned(64))) = { ALL16(HI8) };
const uint8_t dsm_fp8_bf16_lo[128] __attribute__((aligned(64))) = { ALL16(LO8) };

int dsm_isa_available(enum dsm_isa isa)
{
	__builtin_cpu_init();
	switch (isa) {
	case DSM_ISA_SCALAR:
		return 1;
	case DSM_ISA_AVX2:
		return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
	case DSM_ISA_AVX512F:
		return __builtin_cpu_supports("avx512f");
	case DSM_ISA_AVX512BF16:
		return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
		       __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
		       __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bf16");
	default:
		return 0;
	}
}

enum dsm_isa dsm_isa_best(void)
{
	for (int i = DSM_ISA_COUNT - 1; i > DSM_ISA_SCALAR; i--)
		if (dsm_isa_available((enum dsm_isa)i))
			return (enum dsm_isa)i;
	return DSM_ISA_SCALAR;
}

static const char *const isa_names[DSM_ISA_COUNT] = { "scalar", "avx2", "avx512f", "avx512bf16" };

const char *dsm_isa_name(enum dsm_isa isa)
{
	if (isa == DSM_ISA_AUTO)
		return "auto";
	return isa >= 0 && isa < DSM_ISA_COUNT ? isa_names[isa] : "invalid";
}

int dsm_isa_parse(const char *name, enum dsm_isa *isa)
{
	if (strcmp(name, "auto") == 0) {
		*isa = DSM_ISA_AUTO;
		return 0;
	}
	for (int i = 0; i < DSM_ISA_COUNT; i++)
		if (strcmp(name, isa_names[i]) == 0) {
			*isa = (enum dsm_isa)i;
			return 0;
		}
	return dsm_fail(DSM_EARG, "unknown instruction set '%s' (scalar, avx2, avx512f, avx512bf16, auto)", name);
}

int dsm_fp8_mat_window(struct dsm_fp8_mat *out, const struct dsm_fp8_mat *m, size_t r0, size_t nr, size_t c0,
		       size_t nc)
{
	if (r0 % DSM_FP8_BLOCK || c0 % DSM_FP8_BLOCK)
		return dsm_fail(DSM_EARG, "fp8 window at (%zu, %zu): not on a 128 block boundary", r0, c0);
	if (r0 > m->rows || nr > m->rows - r0 || c0 > m->cols || nc > m->cols - c0)
		return dsm_fail(DSM_EARG, "fp8 window [%zu+%zu, %zu+%zu] outside a [%zu, %zu] matrix", r0, nr, c0,
				nc, m->rows, m->cols);
	*out = *m;
	out->w = m->w + r0 * m->ld + c0;
	out->scale = m->scale + (r0 / DSM_FP8_BLOCK) * m->scale_ld + c0 / DSM_FP8_BLOCK;
	out->rows = nr;
	out->cols = nc;
	return 0;
}

/* Rows [r0, r1) by the definition: exact F32 weights, sums in double. */
static void gemv_rows_scalar(const struct dsm_fp8_mat *W, size_t r0, size_t r1, const float *x, size_t x_ld,
			     size_t n_tok, float *y, size_t y_ld)
{
	for (size_t t = 0; t < n_tok; t++)
		for (size_t r = r0; r < r1; r++) {
			const uint8_t *row = W->w + r * W->ld;
			const float *s = W->scale + (r / DSM_FP8_BLOCK) * W->scale_ld;
			double acc = 0;
			for (size_t c = 0; c < W->cols; c++)
				acc += (double)(dsm_fp8_table[row[c]] * s[c / DSM_FP8_BLOCK]) * x[t * x_ld + c];
			y[t * y_ld + (r - r0)] = (float)acc;
		}
}

void dsm_fp8_gemv_ref(const struct dsm_fp8_mat *W, const float *x, size_t x_ld, size_t n_tok, float *y,
		      size_t y_ld)
{
	gemv_rows_scalar(W, 0, W->rows, x, x_ld, n_tok, y, y_ld);
}

size_t dsm_fp8_gemv_scratch_size(size_t cols)
{
	/* DSM_GEMV_MAX_TOKENS prepared activation rows of F32; the BF16 kernel uses half of that, then keeps
	 * 128 rows x DSM_GEMV_MAX_TOKENS x 2 vector accumulators of 64 bytes. */
	return DSM_GEMV_MAX_TOKENS * dsm_cols_pad(cols) * sizeof(float) + DSM_FP8_BLOCK * DSM_GEMV_MAX_TOKENS * 2 * 64;
}

int dsm_fp8_gemv_rows(enum dsm_isa isa, const struct dsm_fp8_mat *W, size_t r0, size_t r1, const float *x,
		      size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch)
{
	if (isa == DSM_ISA_AUTO)
		isa = dsm_isa_best();
	if (!dsm_isa_available(isa))
		return dsm_fail(DSM_EUNSUPPORTED, "fp8 gemv: this CPU lacks %s", dsm_isa_name(isa));
	if (r0 > r1 || r1 > W->rows)
		return dsm_fail(DSM_EARG, "fp8 gemv: rows [%zu, %zu) of a %zu-row matrix", r0, r1, W->rows);
	if (r0 == r1 || n_tok == 0)
		return 0;
	if (isa == DSM_ISA_SCALAR) {
		gemv_rows_scalar(W, r0, r1, x, x_ld, n_tok, y, y_ld);
		return 0;
	}
	if ((uintptr_t)scratch % 64)
		return dsm_fail(DSM_EARG, "fp8 gemv: scratch not 64-byte aligned");
	dsm_gemv_block_fn block = isa == DSM_ISA_AVX512BF16 ? dsm_gemv_block_bf16 :
				  isa == DSM_ISA_AVX512F ? dsm_gemv_block_avx512f : dsm_gemv_block_avx2;
	for (size_t rb = r0 / DSM_FP8_BLOCK; rb * DSM_FP8_BLOCK < r1; rb++) {
		size_t a = rb * DSM_FP8_BLOCK > r0 ? rb * DSM_FP8_BLOCK : r0;
		size_t b = (rb + 1) * DSM_FP8_BLOCK < r1 ? (rb + 1) * DSM_FP8_BLOCK : r1;
		/* Groups of up to 8 tokens; the block's weights stay in cache between groups. */
		for (size_t t0 = 0; t0 < n_tok; t0 += DSM_GEMV_MAX_TOKENS) {
			size_t nt = n_tok - t0 < DSM_GEMV_MAX_TOKENS ? n_tok - t0 : DSM_GEMV_MAX_TOKENS;
			block(W, rb, a, b, x + t0 * x_ld, x_ld, nt, y + t0 * y_ld + (a - r0), y_ld, scratch);
		}
	}
	return 0;
}
