/* Decode and batched FP8 kernels against the scalar reference: every ISA this CPU has, random and ragged
 * shapes, row ranges, windows with a row stride, subnormal codes, sentinels after every output. */
#include "expert_internal.h"

#include "dtype.h"
#include "error.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL 12345.0f

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t next_u64(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static float uniform(void) /* [-1, 1) */
{
	return (float)((double)(next_u64() >> 11) / (double)(1ull << 52) - 1.0);
}

enum codes { ANY_CODE, SUBNORMAL_ONLY };

/* A random code that is not NaN (0x7F, 0xFF). */
static uint8_t random_code(enum codes kind)
{
	for (;;) {
		uint8_t c = (uint8_t)next_u64();
		if (kind == SUBNORMAL_ONLY)
			c &= 0x87; /* exponent 0 */
		if ((c & 0x7F) != 0x7F)
			return c;
	}
}

struct fp8_buf {
	uint8_t *w;
	float *scale;
	struct dsm_fp8_mat m;
};

/* rows x cols with a row stride of ld >= cols (padding bytes random too) and scales in [1e-3, 1e-1]. */
static void fp8_random(struct fp8_buf *b, size_t rows, size_t cols, size_t ld, enum codes kind)
{
	size_t sr = (rows + 127) / 128, sc = (cols + 127) / 128 + 1; /* one spare scale column */
	b->w = malloc(rows * ld + 1);
	b->scale = malloc(sr * sc * sizeof(float));
	for (size_t i = 0; i < rows * ld; i++)
		b->w[i] = random_code(kind);
	for (size_t i = 0; i < sr * sc; i++)
		b->scale[i] = (float)(1e-3 * pow(100.0, (uniform() + 1) / 2));
	b->m = (struct dsm_fp8_mat){ b->w, b->scale, rows, cols, ld, sc };
}

static void fp8_free(struct fp8_buf *b)
{
	free(b->w);
	free(b->scale);
}

/* nmse() over n vectors of `rows` values each, stored ld apart. */
static double nmse_strided(const float *a, const float *ref, size_t n, size_t ld, size_t rows)
{
	double num = 0, den = 0;
	for (size_t t = 0; t < n; t++)
		for (size_t r = 0; r < rows; r++) {
			double d = (double)a[t * ld + r] - ref[t * ld + r];
			num += d * d;
			den += (double)ref[t * ld + r] * ref[t * ld + r];
		}
	return den > 0 ? num / den : num;
}

static double threshold(enum dsm_isa isa)
{
	/* BF16 activations: the matmul threshold of TESTING.md; F32 kernels only reorder F32 sums. */
	return isa == DSM_ISA_AVX512BF16 ? 5e-4 : 1e-9;
}

static void test_bf16_table(void)
{
	for (int c = 0; c < 127; c++) {
		uint16_t bits = (uint16_t)(dsm_fp8_bf16_hi[c] << 8 | dsm_fp8_bf16_lo[c]);
		CHECK(bits == dsm_f32_to_bf16(dsm_fp8_table[c]), "code 0x%02x: table 0x%04x, exact 0x%04x", c, bits,
		      dsm_f32_to_bf16(dsm_fp8_table[c]));
		CHECK(dsm_bf16_to_f32(bits) == dsm_fp8_table[c], "code 0x%02x is not exact in BF16", c);
	}
	CHECK(isnan(dsm_bf16_to_f32((uint16_t)(dsm_fp8_bf16_hi[127] << 8 | dsm_fp8_bf16_lo[127]))), "0x7F not NaN");
}

/* rows [r0, r1) of a rows x cols matrix (stride ld) times n tokens, isa against the reference. */
static void check_gemv(enum dsm_isa isa, size_t rows, size_t cols, size_t ld, size_t r0, size_t r1, size_t n,
		       enum codes kind)
{
	struct fp8_buf b;
	fp8_random(&b, rows, cols, ld, kind);
	size_t x_ld = cols + 3, nr = r1 - r0, y_ld = nr + 5;
	float *x = malloc(n * x_ld * sizeof(float));
	for (size_t i = 0; i < n * x_ld; i++)
		x[i] = uniform();
	float *ref = malloc(n * rows * sizeof(float));
	dsm_fp8_gemv_ref(&b.m, x, x_ld, n, ref, rows);
	float *ref_band = malloc(n * y_ld * sizeof(float));
	for (size_t t = 0; t < n; t++)
		for (size_t r = 0; r < nr; r++)
			ref_band[t * y_ld + r] = ref[t * rows + r0 + r];
	float *y = malloc((n * y_ld + 16) * sizeof(float));
	for (size_t i = 0; i < n * y_ld + 16; i++)
		y[i] = SENTINEL;
	void *scratch = aligned_alloc(64, (dsm_fp8_gemv_scratch_size(cols) + 63) / 64 * 64);
	int rc = dsm_fp8_gemv_rows(isa, &b.m, r0, r1, x, x_ld, n, y, y_ld, scratch);
	CHECK(rc == 0, "%s gemv: %s", dsm_isa_name(isa), dsm_errmsg());
	double e = nmse_strided(y, ref_band, n, y_ld, nr);
	CHECK(e <= threshold(isa), "%s gemv %zux%zu (ld %zu) rows [%zu, %zu) x %zu tokens%s: NMSE %.3g",
	      dsm_isa_name(isa), rows, cols, ld, r0, r1, n, kind == SUBNORMAL_ONLY ? " (subnormal codes)" : "", e);
	int overrun = 0;
	for (size_t t = 0; t < n; t++)
		for (size_t r = nr; r < y_ld; r++)
			overrun |= y[t * y_ld + r] != SENTINEL;
	for (size_t i = n * y_ld; i < n * y_ld + 16; i++)
		overrun |= y[i] != SENTINEL;
	CHECK(!overrun, "%s gemv %zux%zu x %zu tokens wrote past its output", dsm_isa_name(isa), rows, cols, n);
	free(scratch);
	free(y);
	free(ref_band);
	free(ref);
	free(x);
	fp8_free(&b);
}

/* The batched path (transposed result) against the reference. */
static void check_gemm(size_t rows, size_t cols, size_t r0, size_t r1, size_t m)
{
	struct fp8_buf b;
	fp8_random(&b, rows, cols, cols, ANY_CODE);
	float *x = malloc(m * cols * sizeof(float));
	for (size_t i = 0; i < m * cols; i++)
		x[i] = uniform();
	float *ref = malloc(m * rows * sizeof(float));
	dsm_fp8_gemv_ref(&b.m, x, cols, m, ref, rows);
	size_t m_pad = (m + 15) / 16 * 16, nr = r1 - r0;
	uint16_t *a = malloc(dsm_bf16_pack_size(m, cols));
	dsm_bf16_pack(x, cols, m, cols, 0, (cols + 1) / 2, a);
	float *yT = malloc((nr * m_pad + 16) * sizeof(float));
	for (size_t i = 0; i < nr * m_pad + 16; i++)
		yT[i] = SENTINEL;
	void *scratch = aligned_alloc(64, dsm_fp8_gemm_scratch_size());
	int rc = dsm_fp8_gemm_rows(&b.m, r0, r1, a, m, yT, m_pad, scratch);
	CHECK(rc == 0, "gemm: %s", dsm_errmsg());
	float *y = malloc(m * nr * sizeof(float)), *ref_band = malloc(m * nr * sizeof(float));
	for (size_t t = 0; t < m; t++)
		for (size_t r = 0; r < nr; r++) {
			y[t * nr + r] = yT[r * m_pad + t];
			ref_band[t * nr + r] = ref[t * rows + r0 + r];
		}
	double e = nmse_strided(y, ref_band, m, nr, nr);
	CHECK(e <= 5e-4, "gemm %s %zux%zu rows [%zu, %zu) x %zu tokens: NMSE %.3g", dsm_gemm_variant_names[dsm_gemm_variant],
	      rows, cols, r0, r1, m, e);
	int overrun = 0;
	for (size_t i = nr * m_pad; i < nr * m_pad + 16; i++)
		overrun |= yT[i] != SENTINEL;
	CHECK(!overrun, "gemm %zux%zu x %zu tokens wrote past its output", rows, cols, m);
	free(scratch);
	free(y);
	free(ref_band);
	free(yT);
	free(a);
	free(ref);
	free(x);
	fp8_free(&b);
}

/* A token's result must not depend on the tokens sharing its pass (decode equals prefill). */
static void check_token_independence(enum dsm_isa isa, size_t cols)
{
	enum { N = 13 };
	size_t rows = 200;
	struct fp8_buf b;
	fp8_random(&b, rows, cols, cols, ANY_CODE);
	float *x = malloc(N * cols * sizeof(float)), *all = malloc(N * rows * sizeof(float));
	float *one = malloc(N * rows * sizeof(float));
	for (size_t i = 0; i < N * cols; i++)
		x[i] = uniform();
	void *scratch = aligned_alloc(64, dsm_fp8_gemv_scratch_size(cols));
	dsm_fp8_gemv_rows(isa, &b.m, 0, rows, x, cols, N, all, rows, scratch);
	for (size_t t = 0; t < N; t++)
		dsm_fp8_gemv_rows(isa, &b.m, 0, rows, x + t * cols, cols, 1, one + t * rows, rows, scratch);
	CHECK(memcmp(all, one, N * rows * sizeof(float)) == 0, "%s: 13 tokens together differ from one at a time",
	      dsm_isa_name(isa));
	for (size_t n = 2; n <= 8; n++) {
		dsm_fp8_gemv_rows(isa, &b.m, 0, rows, x, cols, n, all, rows, scratch);
		CHECK(memcmp(all, one, n * rows * sizeof(float)) == 0, "%s: %zu tokens together differ from one at a "
		      "time", dsm_isa_name(isa), n);
	}
	free(scratch);
	free(x);
	free(all);
	free(one);
	fp8_free(&b);
}

/* Every memory-walk variant of the BF16 kernel gives the default's results bit for bit (they change the order
 * of loads and prefetches, never the arithmetic), on shapes with ragged ends and several column blocks. */
static void check_variants(void)
{
	static const size_t shapes[][3] = { { 200, 300, 1 }, { 131, 5000, 2 }, { 64, 2048, 4 }, { 37, 4163, 8 },
					     { 9, 7168, 3 }, { 21, 16500, 1 } };
	for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
		size_t rows = shapes[s][0], cols = shapes[s][1], n = shapes[s][2];
		struct fp8_buf b;
		fp8_random(&b, rows, cols, cols, ANY_CODE);
		float *x = malloc(n * cols * sizeof(float)), *y0 = malloc(n * rows * sizeof(float));
		float *y = malloc(n * rows * sizeof(float));
		for (size_t i = 0; i < n * cols; i++)
			x[i] = uniform();
		void *scratch = aligned_alloc(64, dsm_fp8_gemv_scratch_size(cols));
		dsm_gemv_variant = 0;
		dsm_fp8_gemv_rows(DSM_ISA_AVX512BF16, &b.m, 0, rows, x, cols, n, y0, rows, scratch);
		for (int v = 1; v < DSM_GEMV_VARIANTS; v++) {
			dsm_gemv_variant = v;
			dsm_fp8_gemv_rows(DSM_ISA_AVX512BF16, &b.m, 0, rows, x, cols, n, y, rows, scratch);
			CHECK(memcmp(y, y0, n * rows * sizeof(float)) == 0, "variant %s differs from %s on %zux%zu x %zu",
			      dsm_gemv_variants[v].name, dsm_gemv_variants[0].name, rows, cols, n);
		}
		dsm_gemv_variant = 0;
		free(scratch), free(x), free(y0), free(y);
		fp8_free(&b);
	}
}

/* dsm_gemv_tune: refuses too few matrices and changes nothing then; with enough, measures every variant and
 * keeps one of them. */
static void check_tune(void)
{
	struct dsm_expert_ctx *ctx;
	CHECK(dsm_expert_ctx_init(&ctx, &(struct dsm_expert_opts){ .isa = DSM_ISA_AVX512BF16, .n_threads = 2 }) == 0,
	      "%s", dsm_errmsg());
	enum { M = DSM_TUNE_ROUNDS * DSM_GEMV_VARIANTS + 3 };
	struct fp8_buf b[M];
	struct dsm_fp8_mat mats[M];
	for (int i = 0; i < M; i++) {
		fp8_random(&b[i], 256, 1024, 1024, ANY_CODE);
		mats[i] = b[i].m;
	}
	struct dsm_gemv_tune_result r;
	CHECK(dsm_gemv_tune(ctx, mats, 8, &r) == DSM_EARG && dsm_gemv_variant == 0, "8 matrices of 2 blocks: not refused");
	/* Fewer matrices than parts, as with the real shapes: the parts read bands of whole 128-row blocks. */
	struct fp8_buf tall[2];
	struct dsm_fp8_mat tall_mats[2];
	for (int i = 0; i < 2; i++) {
		fp8_random(&tall[i], 2048, 512, 512, ANY_CODE);
		tall_mats[i] = tall[i].m;
	}
	CHECK(dsm_gemv_tune(ctx, tall_mats, 2, &r) == 0 && r.rounds == DSM_TUNE_ROUNDS && r.bytes == 128 * 512 &&
	      r.chosen == dsm_gemv_variant, "2 matrices of 16 blocks: %s (%zu bytes a part)", dsm_errmsg(), r.bytes);
	dsm_gemv_variant = 0;
	for (int i = 0; i < 2; i++)
		fp8_free(&tall[i]);
	CHECK(dsm_gemv_tune(ctx, mats, M, &r) == 0, "%s", dsm_errmsg());
	int measured = 1;
	for (int v = 0; v < DSM_GEMV_VARIANTS; v++)
		measured &= r.gbps[v] > 0;
	CHECK(measured && r.rounds == DSM_TUNE_ROUNDS && r.chosen == dsm_gemv_variant && r.chosen >= 0 && r.chosen < DSM_GEMV_VARIANTS &&
	      r.why[0], "tune: rates %g %g, chose %d: %s", r.gbps[0], r.gbps[1], r.chosen, r.why);
	dsm_gemv_variant = 0;
	for (int i = 0; i < M; i++)
		fp8_free(&b[i]);
	dsm_expert_ctx_free(ctx);

	CHECK(dsm_fp8_gemm_tune(&r) == 0, "%s", dsm_errmsg());
	CHECK(r.gbps[0] > 0 && r.gbps[1] > 0 && r.rounds == DSM_TUNE_ROUNDS && r.chosen == dsm_gemm_variant &&
	      r.chosen >= 0 && r.chosen < DSM_GEMM_VARIANTS && strstr(r.why, "GFLOP/s"),
	      "gemm tune: rates %g %g, chose %d: %s", r.gbps[0], r.gbps[1], r.chosen, r.why);
	dsm_gemm_variant = 0;
}

/* The batched path's two arithmetics: the same exact products, summed in another order within a column pair, so
 * the results agree to F32 rounding (random codes of every kind, 3 scale blocks, 40 tokens). */
static void check_gemm_variants(void)
{
	enum { R = 130, C = 300, T = 40, TP = 48 };
	struct fp8_buf b;
	fp8_random(&b, R, C, C, ANY_CODE);
	float *x = malloc(T * C * sizeof(float)), *y[DSM_GEMM_VARIANTS];
	for (size_t i = 0; i < T * C; i++)
		x[i] = uniform();
	uint16_t *a = malloc(dsm_bf16_pack_size(T, C));
	dsm_bf16_pack(x, C, T, C, 0, (C + 1) / 2, a);
	void *scratch = aligned_alloc(64, dsm_fp8_gemm_scratch_size());
	for (int v = 0; v < DSM_GEMM_VARIANTS; v++) {
		dsm_gemm_variant = v;
		y[v] = malloc(R * TP * sizeof(float));
		CHECK(dsm_fp8_gemm_rows(&b.m, 0, R, a, T, y[v], TP, scratch) == 0, "%s", dsm_errmsg());
	}
	dsm_gemm_variant = 0;
	double worst = 0, ss = 0;
	for (size_t r = 0; r < R; r++)
		for (size_t t = 0; t < T; t++) {
			double d = fabs((double)y[0][r * TP + t] - y[1][r * TP + t]);
			worst = d > worst ? d : worst;
			ss += (double)y[0][r * TP + t] * y[0][r * TP + t];
		}
	double rms = sqrt(ss / (R * T));
	CHECK(rms > 0 && worst <= 1e-5 * rms, "gemm variants differ by %.3g (rms of the result %.3g)", worst, rms);
	for (int v = 0; v < DSM_GEMM_VARIANTS; v++)
		free(y[v]);
	free(scratch);
	free(a);
	free(x);
	fp8_free(&b);
}

/* The transposed multiply against its definition, bit for bit: for each column, the rows in ascending order, each
 * x times BF16(value * scale) (rounded from the F32 product) by one F32 multiply and one add. rows from r0 (inside
 * a row block, across the next), n tokens, the columns up to the last whole 64; the 64 after them and the padding
 * of y keep their sentinels. */
static void check_rows_t(size_t rows, size_t cols, size_t r0, size_t n)
{
	struct fp8_buf b;
	fp8_random(&b, r0 + rows, cols, cols + 5, ANY_CODE);
	size_t ldy = cols + 64 + 3, cols64 = cols / 64 * 64;
	float *x = malloc(n * rows * sizeof(float)), *y = malloc(n * ldy * sizeof(float));
	for (size_t i = 0; i < n * rows; i++)
		x[i] = uniform() * 4;
	for (size_t i = 0; i < n * ldy; i++)
		y[i] = SENTINEL;
	dsm_fp8_rows_t_bf16(&b.m, r0, rows, x, rows, n, y, ldy, SIZE_MAX);
	size_t bad = 0;
	for (size_t t = 0; t < n; t++)
		for (size_t c = 0; c < ldy; c++) {
			float want = SENTINEL;
			if (c < cols64) {
				volatile float acc = 0; /* no contraction into an FMA */
				for (size_t i = 0; i < rows; i++) {
					uint8_t code = b.w[(r0 + i) * b.m.ld + c];
					float s = b.scale[(r0 + i) / 128 * b.m.scale_ld + c / 128];
					float mag = dsm_bf16_to_f32(dsm_f32_to_bf16(dsm_fp8_table[code & 0x7F] * s));
					volatile float prod = x[t * rows + i] * (code & 0x80 ? -mag : mag);
					acc = acc + prod;
				}
				want = acc;
			}
			if (memcmp(&want, &y[t * ldy + c], sizeof want) != 0 && bad++ < 3)
				CHECK(0, "rows_t %zux%zu from %zu, %zu tokens: y[%zu][%zu] = %.9g, want %.9g", rows, cols, r0,
				      n, t, c, y[t * ldy + c], want);
		}
	CHECK(bad == 0, "rows_t %zux%zu from %zu, %zu tokens: %zu values differ", rows, cols, r0, n, bad);
	free(x);
	free(y);
	fp8_free(&b);
}

int main(void)
{
	test_bf16_table();

	/* rows, cols, ld extra, r0, r1 (0, 0: all rows) */
	static const size_t shapes[][5] = {
		{ 1, 1, 0, 0, 0 }, { 1, 7, 0, 0, 0 }, { 3, 64, 0, 0, 0 }, { 5, 100, 3, 0, 0 },
		{ 128, 128, 0, 0, 0 }, { 130, 257, 0, 0, 0 }, { 200, 300, 17, 7, 199 }, { 257, 1000, 0, 100, 257 },
		{ 64, 2048, 0, 0, 0 }, { 33, 7168, 0, 0, 0 }, { 300, 129, 64, 130, 131 }, { 17, 65, 0, 3, 16 },
	};
	static const size_t tokens[] = { 1, 2, 3, 4, 5, 7, 8, 9, 13 };
	for (int isa = DSM_ISA_SCALAR; isa < DSM_ISA_COUNT; isa++) {
		if (!dsm_isa_available((enum dsm_isa)isa)) {
			fprintf(stderr, "%s: not on this CPU, skipped\n", dsm_isa_name((enum dsm_isa)isa));
			continue;
		}
		for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++)
			for (size_t k = 0; k < sizeof(tokens) / sizeof(tokens[0]); k++) {
				size_t rows = shapes[s][0], cols = shapes[s][1], r1 = shapes[s][4] ? shapes[s][4] : rows;
				if (isa == DSM_ISA_SCALAR && rows * cols * tokens[k] > 2000000)
					continue;
				check_gemv((enum dsm_isa)isa, rows, cols, cols + shapes[s][2], shapes[s][3], r1, tokens[k],
					   ANY_CODE);
			}
		check_token_independence((enum dsm_isa)isa, 300);
		check_token_independence((enum dsm_isa)isa, 5000); /* several column blocks, a ragged last chunk */
		check_gemv((enum dsm_isa)isa, 37, 4163, 4170, 3, 37, 1, ANY_CODE);
		check_gemv((enum dsm_isa)isa, 17, 8192, 8192, 0, 17, 1, SUBNORMAL_ONLY);
		check_gemv((enum dsm_isa)isa, 150, 333, 333, 0, 150, 3, SUBNORMAL_ONLY);
		check_gemv((enum dsm_isa)isa, 40, 2048, 2048, 0, 40, 1, SUBNORMAL_ONLY);
		/* Random sizes. */
		for (int i = 0; i < 20; i++) {
			size_t rows = 1 + next_u64() % 300, cols = 1 + next_u64() % 1500;
			size_t r0 = next_u64() % rows, r1 = r0 + 1 + next_u64() % (rows - r0);
			check_gemv((enum dsm_isa)isa, rows, cols, cols + next_u64() % 70, r0, r1, 1 + next_u64() % 10,
				   ANY_CODE);
		}
	}

	if (dsm_isa_available(DSM_ISA_AVX512BF16)) {
		static const size_t gshapes[][5] = {
			{ 1, 1, 0, 1, 1 }, { 7, 33, 0, 7, 5 }, { 128, 128, 0, 128, 16 }, { 200, 700, 5, 190, 17 },
			{ 96, 512, 0, 96, 64 }, { 300, 1100, 100, 250, 70 }, { 64, 2048, 0, 64, 130 }, { 13, 513, 1, 12, 3 },
		};
		for (int v = 0; v < DSM_GEMM_VARIANTS; v++) {
			dsm_gemm_variant = v;
			for (size_t s = 0; s < sizeof(gshapes) / sizeof(gshapes[0]); s++)
				check_gemm(gshapes[s][0], gshapes[s][1], gshapes[s][2], gshapes[s][3], gshapes[s][4]);
		}
		dsm_gemm_variant = 0;
		check_gemm_variants();
		/* rows, cols, first row: whole heads, a ragged last 64 (not computed), rows across a block */
		static const size_t tshapes[][3] = { { 128, 512, 0 }, { 1, 64, 0 }, { 40, 200, 0 }, { 200, 448, 70 },
						     { 33, 1000, 250 } };
		for (size_t s = 0; s < sizeof(tshapes) / sizeof(tshapes[0]); s++)
			for (size_t n = 1; n <= 6; n++)
				check_rows_t(tshapes[s][0], tshapes[s][1], tshapes[s][2], n);
		check_variants();
		check_tune();
	} else {
		fprintf(stderr, "batched path: no AVX-512 BF16 on this CPU, skipped\n");
	}
	return TEST_EXIT();
}
