/* Every op of the cpu backend against its scalar reference (docs TESTING.md step 1): fresh random
 * inputs, sentinels after every output, NMSE thresholds of ggml's test-backend-ops (elementwise 1e-7,
 * softmax-like 1e-6, matmul / FFN / attention 5e-4), index results exact. */
#include "backend.h"
#include "cpu_backend.h"
#include "cpu_team.h"
#include "error.h"
#include "ref_ops.h"
#include "test_rand.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL 16
static const uint32_t sentinel_bits = 0x7fc0dead;


/* An output buffer of n floats with SENTINEL sentinel floats after it. */
static float *out_buf(size_t n)
{
	float *p = malloc((n + SENTINEL) * sizeof *p);
	for (size_t i = 0; i < n + SENTINEL; i++)
		memcpy(&p[i], &sentinel_bits, 4);
	return p;
}
static int sentinels_ok(const float *p, size_t n)
{
	return memcmp(p + n, (uint32_t[SENTINEL]){ [0 ... SENTINEL - 1] = sentinel_bits }, SENTINEL * 4) == 0;
}
#define CHECK_NMSE(a, b, n, limit, ...) do { \
	double e_ = nmse(a, b, n); \
	if (!(e_ <= (limit) && isfinite(e_))) { \
		fprintf(stderr, "%s:%d: NMSE %.3g > %.3g: ", __FILE__, __LINE__, e_, (double)(limit)); \
		fprintf(stderr, __VA_ARGS__); \
		fputc('\n', stderr); \
		test_failures++; \
	} \
	if (e_ > worst_nmse) \
		worst_nmse = e_; \
} while (0)
static double worst_nmse;

/* A random weight [rows, cols] of dtype t (F8: random non-NaN codes and positive block scales). */
struct weight {
	struct dsm_mat m;
	void *data;
	float *scale;
};
static void weight_init(struct weight *w, enum dsm_dtype t, int64_t rows, int64_t cols)
{
	memset(w, 0, sizeof *w);
	rand_weight(t, rows, cols, &w->data, &w->scale);
	w->m = (struct dsm_mat){ .dtype = t, .rows = rows, .cols = cols, .data = w->data, .scale = w->scale };
}
static void weight_free(struct weight *w)
{
	free(w->data);
	free(w->scale);
}

static void test_matmul(struct dsm_backend *be)
{
	static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16, DSM_F32 };
	static const int64_t ns[] = { 1, 3, 4, 5, 37 };
	for (int ti = 0; ti < 3; ti++)
		for (int ni = 0; ni < 5; ni++) {
			int64_t rows = 200 + ni * 37, cols = 300 - ni * 11, n = ns[ni];
			struct weight w;
			weight_init(&w, types[ti], rows, cols);
			/* the whole matrix, then a view starting inside a 128-row block */
			for (int view = 0; view < 2; view++) {
				struct dsm_mat m = view ? dsm_mat_rows(w.m, 70, 100) : w.m;
				float *x = rand_buf((size_t)(n * m.cols), 1), *xt = rand_buf((size_t)(n * m.rows), 1);
				float *y = out_buf((size_t)(n * m.rows)), *yr = out_buf((size_t)(n * m.rows));
				float *z = out_buf((size_t)(n * m.cols)), *zr = out_buf((size_t)(n * m.cols));
				CHECK(be->matmul(be, &m, n, x, y) == 0, "%s", dsm_errmsg());
				CHECK(dsm_ref_matmul(be->precision, &m, n, x, yr) == 0, "%s", dsm_errmsg());
				CHECK_NMSE(y, yr, (size_t)(n * m.rows), 5e-4, "matmul %s n=%lld view=%d %s", dsm_dtype_name(types[ti]),
					   (long long)n, view, dsm_precision_name(be->precision));
				CHECK(sentinels_ok(y, (size_t)(n * m.rows)), "matmul wrote past its output");
				CHECK(be->matmul_t(be, &m, n, xt, z) == 0, "%s", dsm_errmsg());
				CHECK(dsm_ref_matmul_t(be->precision, &m, n, xt, zr) == 0, "%s", dsm_errmsg());
				CHECK_NMSE(z, zr, (size_t)(n * m.cols), 5e-4, "matmul_t %s n=%lld view=%d", dsm_dtype_name(types[ti]),
					   (long long)n, view);
				CHECK(sentinels_ok(z, (size_t)(n * m.cols)), "matmul_t wrote past its output");
				free(x), free(xt), free(y), free(yr), free(z), free(zr);
			}
			weight_free(&w);
		}
}

/* The BF16 decode GEMV's memory walks give the same bits (each row's chains are the same) on ragged shapes and
 * views; dsm_cpu_bf16_gemv_tune refuses a matrix too small to measure on and changes nothing then, and with
 * enough rows measures every walk and keeps one. */
static void test_bf16_walks(struct dsm_backend *be)
{
	static const int64_t shapes[][2] = { { 7, 33 }, { 130, 1024 }, { 257, 200 }, { 64, 7168 } };
	for (int s = 0; s < 4; s++)
		for (int64_t n = 1; n <= CPU_GEMV_MAX_N; n++) {
			int64_t rows = shapes[s][0], cols = shapes[s][1];
			struct weight w;
			weight_init(&w, DSM_BF16, rows, cols);
			struct dsm_mat m = rows > 8 ? dsm_mat_rows(w.m, 3, rows - 5) : w.m;
			float *x = rand_buf((size_t)(n * cols), 1), *y0 = out_buf((size_t)(n * m.rows));
			float *y = out_buf((size_t)(n * m.rows));
			CHECK(be->matmul(be, &m, n, x, y0) == 0, "%s", dsm_errmsg());
			for (int v = 1; v < CPU_BF16_WALKS; v++) {
				cpu_bf16_walk = v;
				CHECK(be->matmul(be, &m, n, x, y) == 0, "%s", dsm_errmsg());
				CHECK(memcmp(y, y0, sizeof(float) * (size_t)(n * m.rows)) == 0, "walk %s differs from %s, %lldx%lld x %lld",
				      cpu_bf16_walks[v].name, cpu_bf16_walks[0].name, (long long)rows, (long long)cols, (long long)n);
			}
			cpu_bf16_walk = 0;
			free(x), free(y0), free(y);
			weight_free(&w);
		}
	struct weight small, big;
	weight_init(&small, DSM_BF16, 1000, 1024);
	weight_init(&big, DSM_BF16, 32 * 1024, 1024); /* 64 MiB: 15 parts of 4.3 MiB */
	struct dsm_gemv_tune_result r;
	CHECK(dsm_cpu_bf16_gemv_tune(be, &small.m, &r) == DSM_EARG && cpu_bf16_walk == 0, "a 2 MB head: not refused");
	CHECK(dsm_cpu_bf16_gemv_tune(be, &big.m, &r) == 0, "%s", dsm_errmsg());
	int measured = 1;
	for (int v = 0; v < CPU_BF16_WALKS; v++)
		measured &= r.gbps[v] > 0;
	CHECK(measured && r.rounds == DSM_TUNE_ROUNDS && r.chosen == cpu_bf16_walk && r.chosen >= 0 &&
	      r.chosen < CPU_BF16_WALKS && r.why[0], "bf16 tune: rates %g %g, chose %d: %s", r.gbps[0], r.gbps[1],
	      r.chosen, r.why);
	cpu_bf16_walk = 0;
	weight_free(&small);
	weight_free(&big);
}

/* The head's screen (head_top.c). Its integer dots equal the scalar reference in every walk, also at the
 * largest codes and activations and the longest rows, where a 32-bit sum is nearest to overflowing. matmul_top
 * gives, in the rows it computes, the bits of matmul, and every row it leaves out is below matmul's largest
 * value; the largest value's rows (ties too) are always computed. On random weights it computes few rows; with a
 * zero x (every value equal) or no screen for the matrix, all of them. */
static void test_head_top(struct dsm_backend *be)
{
	if (!dsm_isa_available(DSM_ISA_AVX512BF16) || !__builtin_cpu_supports("avx512vnni")) {
		printf("head screen: not tested, this CPU has no AVX-512 BF16 and VNNI\n");
		return;
	}
	static const int64_t dims[][2] = { { 7, 33 }, { 130, 1024 }, { 9, 16500 }, { 2, CPU_TOP_MAX_COLS } };
	for (int s = 0; s < 4; s++)
		for (int v = 0; v < CPU_BF16_WALKS; v++)
			for (int extreme = 0; extreme < 2; extreme++) {
				int64_t rows = dims[s][0], cols = dims[s][1], ld = (cols + 63) / 64 * 64;
				int32_t xmax = cpu_top_xq_max();
				uint8_t *q = malloc((size_t)(rows * cols));
				int16_t *xq = malloc(sizeof(int16_t) * (size_t)cols);
				int8_t *xs = aligned_alloc(64, 2 * (size_t)ld);
				memset(xs, 0, 2 * (size_t)ld);
				for (int64_t i = 0; i < rows * cols; i++)
					q[i] = (uint8_t)(extreme ? 255 : 1 + rnd() % 255);
				for (int64_t i = 0; i < cols; i++) {
					xq[i] = (int16_t)(extreme ? -xmax : (int32_t)(rnd() % (2u * xmax + 1)) - xmax);
					cpu_top_split(xq[i], xs + i, xs + ld + i);
				}
				int64_t *d = malloc(sizeof(int64_t) * (size_t)rows), *dr = malloc(sizeof(int64_t) * (size_t)rows);
				cpu_bf16_walk = v;
				cpu_top_dots(q, cols, 0, rows, xs, ld, d);
				cpu_top_dots_scalar(q, cols, 0, rows, xq, dr);
				CHECK(memcmp(d, dr, sizeof(int64_t) * (size_t)rows) == 0, "screen dots %lldx%lld walk %s extreme %d: "
				      "%lld against %lld", (long long)rows, (long long)cols, cpu_bf16_walks[v].name, extreme,
				      (long long)d[0], (long long)dr[0]);
				cpu_bf16_walk = 0;
				free(q), free(xq), free(xs), free(d), free(dr);
			}
	static const int64_t shapes[][2] = { { 3000, 256 }, { 1201, 1024 }, { 600, 200 } };
	for (int s = 0; s < 3; s++) {
		int64_t V = shapes[s][0], D = shapes[s][1];
		struct weight w;
		weight_init(&w, DSM_BF16, V + 5, D);
		uint16_t *wb = w.data;
		for (int64_t j = 0; j < V + 5; j++) /* rows scaled by 2^-8 .. 1 (each row's screen has its own scale), */
			for (int64_t i = 0; i < D && j != 8; i++) /* but not row 5 of the view, the largest for x = itself */
				wb[j * D + i] = dsm_f32_to_bf16(dsm_bf16_to_f32(wb[j * D + i]) * ldexpf(1, (int)(j * 7 % 9) - 8));
		memcpy(wb + 20 * D, wb + 8 * D, sizeof(uint16_t) * (size_t)D); /* rows 17 and 5 of the view tie */
		struct dsm_mat m = dsm_mat_rows(w.m, 3, V);
		float *y = out_buf((size_t)V), *yf = out_buf((size_t)V), *x = malloc(sizeof(float) * (size_t)D);
		CHECK(be->top_prepare(be, &m) == 0, "%s", dsm_errmsg());
		int64_t computed = 0;
		for (int k = 0; k < 40; k++) {
			for (int64_t i = 0; i < D; i++) /* random (centred, or mostly positive or negative), one large
							 * outlier, a zero vector, row 5 itself */
				x[i] = k == 38 ? 0 : k == 39 ? dsm_bf16_to_f32(wb[8 * D + i]) :
				       urand() * (i == k ? 50 : 1) + 0.75f * (float)(k % 3 - 1);
			int rc = be->matmul_top(be, &m, x, y);
			CHECK(rc > 0 && rc <= V, "matmul_top: %d: %s", rc, dsm_errmsg());
			CHECK(be->matmul(be, &m, 1, x, yf) == 0, "%s", dsm_errmsg());
			CHECK(sentinels_ok(y, (size_t)V), "matmul_top wrote past its output");
			int64_t best = 0;
			for (int64_t j = 1; j < V; j++)
				best = yf[j] > yf[best] ? j : best;
			for (int64_t j = 0; j < V; j++) {
				if (isinf(y[j]) && y[j] < 0) {
					CHECK(yf[j] < yf[best], "%lldx%lld x %d: row %lld (%g) left out, the largest is %g",
					      (long long)V, (long long)D, k, (long long)j, yf[j], yf[best]);
					continue;
				}
				CHECK(memcmp(&y[j], &yf[j], sizeof(float)) == 0, "%lldx%lld x %d: row %lld: %g against %g",
				      (long long)V, (long long)D, k, (long long)j, y[j], yf[j]);
			}
			CHECK(k != 38 || rc == V, "a zero x: %d of %lld rows computed", rc, (long long)V);
			CHECK(k != 39 || (y[5] == yf[5] && y[17] == yf[17]), "the tied rows were left out");
			if (k < 38)
				computed += rc;
		}
		CHECK(computed < 38 * V / 20, "%lldx%lld: %lld rows computed in 38 random vectors of %lld rows",
		      (long long)V, (long long)D, (long long)computed, (long long)V);
		struct dsm_mat other = dsm_mat_rows(w.m, 2, V);
		CHECK(be->matmul_top(be, &other, x, y) == V, "a matrix without a screen: not all rows");
		free(y), free(yf), free(x);
		weight_free(&w);
	}
	/* Exact codes, where the screen's bounds are tight: row 1 of constants c, and row 2 of 2c in the first
	 * D/2 - 1 or D/2 + 1 columns (double the scale; 2c less or more than row 1 for x of ones); the others
	 * small. An error in the codes' offset of 128 would move row 2 by D c / 127 and row 1 by half that: enough
	 * to leave out the largest value in one head or the other. */
	for (int more = 0; more < 2; more++) {
		int64_t V = 64, D = 1024;
		uint16_t *h = malloc(sizeof *h * (size_t)(V * D));
		float *y = out_buf((size_t)V), *x = malloc(sizeof(float) * (size_t)D);
		for (int64_t j = 0; j < V; j++)
			for (int64_t i = 0; i < D; i++)
				h[j * D + i] = dsm_f32_to_bf16(j == 1 ? 0x1p-5f : j == 2 ? (i < D / 2 - 1 + 2 * more ? 0x1p-4f : 0) :
							       urand() * 0x1p-12f);
		for (int64_t i = 0; i < D; i++)
			x[i] = 1;
		struct dsm_mat m = { .dtype = DSM_BF16, .rows = V, .cols = D, .data = h };
		CHECK(be->top_prepare(be, &m) == 0, "%s", dsm_errmsg());
		int rc = be->matmul_top(be, &m, x, y);
		CHECK(rc > 0 && rc < V / 8 && y[1 + more] == (more ? 32.0625f : 32), "constant rows, %d: %d rows, %g %g",
		      more, rc, y[1], y[2]);
		free(h), free(y), free(x);
	}
}

/* matmul_heads (the absorbed attention's per-head multiplies) against the reference of each head's view alone:
 * heads of 40 or 56 rows at a stride of 96 rows (as kv_b's k and v halves), inputs and outputs at padded head
 * strides whose gaps must stay untouched; 200 columns (a ragged end after the 64-column chunks). */
static void test_matmul_heads(struct dsm_backend *be)
{
	static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16, DSM_F32 };
	static const int64_t ns[] = { 1, 2, 4, 5, 9 };
	const int64_t H = 5, stride = 96, cols = 200;
	for (int ti = 0; ti < 3; ti++)
		for (int ni = 0; ni < 5; ni++)
			for (int tr = 0; tr < 2; tr++) {
				int64_t n = ns[ni], rows = tr ? 40 : 56, r0 = tr ? 0 : 40;
				struct weight w;
				weight_init(&w, types[ti], H * stride, cols);
				struct dsm_mat v = dsm_mat_rows(w.m, r0, H * stride - r0);
				int64_t in = tr ? rows : cols, out = tr ? cols : rows, xh = in + 3, yh = out + 5;
				float *x = rand_buf((size_t)(n * H * xh), 1), *y = out_buf((size_t)(n * H * yh));
				struct dsm_matmul_heads_args a = { .w = &v, .n_heads = H, .head_stride = stride, .head_rows = rows,
					.transposed = tr, .n = n, .x = x, .ldx = H * xh, .x_head = xh, .y = y, .ldy = H * yh,
					.y_head = yh };
				CHECK(be->matmul_heads(be, &a) == 0, "%s", dsm_errmsg());
				float *xg = malloc(sizeof(float) * (size_t)(n * in)), *yr = malloc(sizeof(float) * (size_t)(n * out));
				float *yg = malloc(sizeof(float) * (size_t)(n * out));
				for (int64_t h = 0; h < H; h++) {
					struct dsm_mat wh = dsm_mat_rows(v, h * stride, rows);
					for (int64_t t = 0; t < n; t++) {
						memcpy(xg + t * in, x + t * H * xh + h * xh, sizeof(float) * (size_t)in);
						memcpy(yg + t * out, y + t * H * yh + h * yh, sizeof(float) * (size_t)out);
						for (int64_t j = out; j < yh; j++)
							CHECK(memcmp(y + t * H * yh + h * yh + j, &sentinel_bits, 4) == 0,
							      "matmul_heads wrote between heads");
					}
					CHECK((tr ? dsm_ref_matmul_t : dsm_ref_matmul)(be->precision, &wh, n, xg, yr) == 0, "%s",
					      dsm_errmsg());
					CHECK_NMSE(yg, yr, (size_t)(n * out), 5e-4, "matmul_heads %s n=%lld transposed=%d head %lld",
						   dsm_dtype_name(types[ti]), (long long)n, tr, (long long)h);
				}
				CHECK(sentinels_ok(y, (size_t)(n * H * yh)), "matmul_heads wrote past its output");
				free(x), free(y), free(xg), free(yr), free(yg);
				weight_free(&w);
			}
}

static void test_ffn(struct dsm_backend *be)
{
	static const int64_t ns[] = { 1, 2, 9 };
	for (int ni = 0; ni < 3; ni++) {
		int64_t D = 256, I = 96, n = ns[ni];
		struct weight g, u, d;
		weight_init(&g, DSM_F8_E4M3, I, D);
		weight_init(&u, DSM_F8_E4M3, I, D);
		weight_init(&d, DSM_F8_E4M3, D, I);
		struct dsm_ffn_weights w = { .gate = g.m, .up = u.m, .down = d.m };
		float *x = rand_buf((size_t)(n * D), 1), *y = out_buf((size_t)(n * D)), *yr = out_buf((size_t)(n * D));
		CHECK(be->ffn(be, &w, n, x, y) == 0, "%s", dsm_errmsg());
		CHECK(dsm_ref_ffn(be->precision, &w, n, x, yr) == 0, "%s", dsm_errmsg());
		CHECK_NMSE(y, yr, (size_t)(n * D), 5e-4, "ffn n=%lld", (long long)n);
		CHECK(sentinels_ok(y, (size_t)(n * D)), "ffn wrote past its output");
		free(x), free(y), free(yr);
		weight_free(&g), weight_free(&u), weight_free(&d);
	}
}

/* The moe op against the reference FFN of each chosen expert, weighted and summed, then the shared one: FP8
 * experts (one call of the fused expert kernels) and BF16 experts (one expert at a time). */
static void test_moe(struct dsm_backend *be)
{
	enum { E = 6, K = 2 };
	static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16 };
	for (int ti = 0; ti < 2; ti++)
		for (int64_t T = 1; T <= 5; T += 4) {
			int64_t D = 256, I = 96;
			struct weight wt[E + 1][3];
			struct dsm_ffn_weights ffn[E + 1];
			const struct dsm_ffn_weights *ep[E] = { NULL };
			for (int e = 0; e <= E; e++) {
				weight_init(&wt[e][0], types[ti], I, D);
				weight_init(&wt[e][1], types[ti], I, D);
				weight_init(&wt[e][2], types[ti], D, I);
				ffn[e] = (struct dsm_ffn_weights){ .gate = wt[e][0].m, .up = wt[e][1].m, .down = wt[e][2].m };
			}
			int32_t idx[5 * K];
			float w[5 * K];
			for (int64_t t = 0; t < T; t++) {
				idx[t * K] = (int32_t)(rnd() % (E - 1)); /* expert E - 1 never chosen: left NULL */
				idx[t * K + 1] = (idx[t * K] + 1 + (int32_t)(rnd() % (E - 2))) % (E - 1);
				for (int j = 0; j < K; j++) {
					w[t * K + j] = 0.5f + 0.5f * urand();
					ep[idx[t * K + j]] = &ffn[idx[t * K + j]];
				}
			}
			float *x = rand_buf((size_t)(T * D), 1), *y = out_buf((size_t)(T * D));
			double *ref = calloc((size_t)(T * D), sizeof(double));
			float *yr = malloc(sizeof(float) * (size_t)D), *yf = malloc(sizeof(float) * (size_t)(T * D));
			struct dsm_moe_op_args a = { T, K, idx, w, ep, E, &ffn[E], x, y };
			CHECK(be->moe(be, &a) == 0, "moe: %s", dsm_errmsg());
			for (int64_t t = 0; t < T; t++)
				for (int j = 0; j <= K; j++) {
					const struct dsm_ffn_weights *f = j < K ? &ffn[idx[t * K + j]] : &ffn[E];
					CHECK(dsm_ref_ffn(be->precision, f, 1, x + t * D, yr) == 0, "%s", dsm_errmsg());
					for (int64_t i = 0; i < D; i++)
						ref[t * D + i] += (j < K ? w[t * K + j] : 1.0) * yr[i];
				}
			for (int64_t i = 0; i < T * D; i++)
				yf[i] = (float)ref[i];
			CHECK_NMSE(y, yf, (size_t)(T * D), 5e-4, "moe %s T=%lld", dsm_dtype_name(types[ti]), (long long)T);
			CHECK(sentinels_ok(y, (size_t)(T * D)), "moe wrote past its output");
			free(x), free(y), free(ref), free(yr), free(yf);
			for (int e = 0; e <= E; e++)
				weight_free(&wt[e][0]), weight_free(&wt[e][1]), weight_free(&wt[e][2]);
		}
}

static void test_elementwise(struct dsm_backend *be)
{
	int64_t n = 7, d = 128;
	float *x = rand_buf((size_t)(n * d * 2), 2), *w = rand_buf((size_t)d, 1), *b = rand_buf((size_t)d, 1);
	float *y = out_buf((size_t)(n * d)), *yr = out_buf((size_t)(n * d));
	/* rmsnorm with a row stride */
	CHECK(be->rmsnorm(be, n, d, x, 2 * d, w, 1e-6f, y) == 0, "%s", dsm_errmsg());
	dsm_ref_rmsnorm(n, d, x, 2 * d, w, 1e-6f, yr);
	CHECK_NMSE(y, yr, (size_t)(n * d), 1e-7, "rmsnorm");
	CHECK(sentinels_ok(y, (size_t)(n * d)), "rmsnorm wrote past its output");
	CHECK(be->layernorm(be, n, d, x, w, b, 1e-6f, y) == 0, "%s", dsm_errmsg());
	dsm_ref_layernorm(n, d, x, w, b, 1e-6f, yr);
	CHECK_NMSE(y, yr, (size_t)(n * d), 1e-7, "layernorm");
	/* rope, both pairings, 3 heads of stride 40 with 32 rotated dims */
	for (int inter = 0; inter < 2; inter++) {
		int64_t H = 3, ldh = 40, dim = 32, ldx = H * ldh;
		float *v = rand_buf((size_t)(n * ldx), 1), *vr = malloc(sizeof(float) * (size_t)(n * ldx));
		float *cs = rand_buf((size_t)(n * dim / 2), 1), *sn = rand_buf((size_t)(n * dim / 2), 1);
		memcpy(vr, v, sizeof(float) * (size_t)(n * ldx));
		CHECK(be->rope(be, n, H, dim, v, ldx, ldh, cs, sn, inter) == 0, "%s", dsm_errmsg());
		dsm_ref_rope(n, H, dim, vr, ldx, ldh, cs, sn, inter);
		CHECK_NMSE(v, vr, (size_t)(n * ldx), 1e-7, "rope interleaved=%d", inter);
		free(v), free(vr), free(cs), free(sn);
	}
	/* Hadamard: fast transform vs the explicit matrix, and orthonormality (norm preserved) */
	float *h = rand_buf((size_t)(n * d), 1), *hr = malloc(sizeof(float) * (size_t)(n * d));
	memcpy(hr, h, sizeof(float) * (size_t)(n * d));
	double n0 = 0, n1 = 0;
	for (int64_t i = 0; i < n * d; i++)
		n0 += (double)h[i] * h[i];
	CHECK(be->hadamard(be, n, d, h) == 0, "%s", dsm_errmsg());
	CHECK(dsm_ref_hadamard(n, d, hr) == 0, "%s", dsm_errmsg());
	CHECK_NMSE(h, hr, (size_t)(n * d), 1e-7, "hadamard");
	for (int64_t i = 0; i < n * d; i++)
		n1 += (double)h[i] * h[i];
	CHECK(fabs(n1 / n0 - 1) < 1e-5, "hadamard is not orthonormal: norm ratio %g", n1 / n0);
	free(h), free(hr);
	free(x), free(w), free(b), free(y), free(yr);
}

/* The nearest FP8 E4M3 value to v by a search over every finite code (independent of dsm_f32_to_fp8). */
static float nearest_fp8(double v)
{
	float best = 0;
	for (int c = 0; c < 256; c++) {
		float f = dsm_fp8_to_f32((uint8_t)c);
		if (!isnan(f) && fabs(f - v) < fabs(best - v))
			best = f;
	}
	return best;
}

/* add, scale, convert and fp8_round: the glue of a forward pass in device memory. */
static void test_glue(struct dsm_backend *be)
{
	int64_t n = 300;
	float *x = rand_buf((size_t)n, 3), *y = rand_buf((size_t)n, 4), *x0 = malloc(sizeof(float) * (size_t)n);
	memcpy(x0, x, sizeof(float) * (size_t)n);
	CHECK(be->add(be, n, x, y) == 0 && be->scale(be, n, x, 0.37f) == 0, "%s", dsm_errmsg());
	int same = 1;
	for (int64_t i = 0; i < n; i++)
		same &= x[i] == (x0[i] + y[i]) * 0.37f;
	CHECK(same, "add then scale");

	/* convert: 5 rows of 40 values, strides 48 and 44, each pair of types; what lies between rows untouched */
	int64_t rows = 5, cols = 40, ldx = 48, ldy = 44;
	float *src = rand_buf((size_t)(rows * ldx), 5), *f = malloc(sizeof(float) * (size_t)(rows * ldy));
	uint16_t *b = malloc(2 * (size_t)(rows * ldy)), *b2 = malloc(2 * (size_t)(rows * ldx));
	memset(b, 0xab, 2 * (size_t)(rows * ldy));
	CHECK(be->convert(be, rows, cols, src, DSM_F32, ldx, b, DSM_BF16, ldy) == 0, "%s", dsm_errmsg());
	for (int64_t i = 0; i < rows * ldx; i++)
		b2[i] = dsm_f32_to_bf16(src[i]);
	CHECK(be->convert(be, rows, cols, b2, DSM_BF16, ldx, f, DSM_F32, ldy) == 0, "%s", dsm_errmsg());
	same = 1;
	for (int64_t i = 0; i < rows; i++)
		for (int64_t j = 0; j < ldy; j++)
			same &= j < cols ? b[i * ldy + j] == dsm_f32_to_bf16(src[i * ldx + j]) &&
					   f[i * ldy + j] == dsm_bf16_to_f32(b2[i * ldx + j]) :
				   b[i * ldy + j] == 0xabab;
	CHECK(same, "convert F32 <-> BF16 with strides");
	CHECK(be->convert(be, rows, cols, src, DSM_F32, ldx, f, DSM_F32, ldy) == 0 &&
	      memcmp(f + 2 * ldy, src + 2 * ldx, sizeof(float) * (size_t)cols) == 0, "convert F32 copy");
	CHECK(be->convert(be, 1, cols, src, DSM_F8_E4M3, cols, f, DSM_F32, cols) == DSM_EUNSUPPORTED &&
	      strstr(dsm_errmsg(), "F32 and BF16 only"), "convert from FP8 refused: %s", dsm_errmsg());

	/* gather: 3 blocks of 4 rows of 40 values from anywhere in g (the last block 3 rows), to BF16 and to F32 */
	float *g = rand_buf((size_t)(12 * cols), 8), *gf = malloc(sizeof(float) * (size_t)(12 * cols));
	uint16_t *gb = malloc(2 * (size_t)(12 * cols));
	const void *tab[3] = { g + 8 * cols, g, g + 4 * cols };
	memset(gb, 0xab, 2 * (size_t)(12 * cols));
	CHECK(be->gather(be, 3, tab, 4, 3, cols, DSM_F32, gb, DSM_BF16) == 0 &&
	      be->gather(be, 3, tab, 4, 3, cols, DSM_F32, gf, DSM_F32) == 0, "gather: %s", dsm_errmsg());
	same = 1;
	for (int64_t i = 0; i < 11 * cols; i++) {
		float v = ((const float *)tab[i / (4 * cols)])[i % (4 * cols)];
		same &= gb[i] == dsm_f32_to_bf16(v) && gf[i] == v;
	}
	CHECK(same && gb[11 * cols] == 0xabab, "gather rows, or past them");
	CHECK(be->gather(be, 3, tab, 4, 5, cols, DSM_F32, gf, DSM_F32) == DSM_EARG && strstr(dsm_errmsg(), "last block"),
	      "gather with a last block longer than a block: %s", dsm_errmsg());
	free(g), free(gf), free(gb);

	/* fp8_round: 2 rows of 300 (blocks of 128, 128 and 44), both scale formats, against a search over the codes */
	for (int ue8m0 = 0; ue8m0 < 2; ue8m0++) {
		float *v = rand_buf((size_t)(2 * n), 6 + ue8m0), *v0 = malloc(sizeof(float) * (size_t)(2 * n));
		v[7] = 0;
		v[300] = 5e-3f; /* a block whose values are all small in one place */
		memcpy(v0, v, sizeof(float) * (size_t)(2 * n));
		CHECK(be->fp8_round(be, 2, n, v, ue8m0) == 0, "%s", dsm_errmsg());
		int bad = 0;
		for (int64_t r = 0; r < 2; r++)
			for (int64_t b0 = 0; b0 < n; b0 += 128) {
				int64_t len = n - b0 < 128 ? n - b0 : 128;
				const float *in = v0 + r * n + b0, *out = v + r * n + b0;
				double amax = 1e-4;
				for (int64_t j = 0; j < len; j++)
					amax = fabs(in[j]) > amax ? fabs(in[j]) : amax;
				double scale = amax / 448;
				if (ue8m0)
					scale = exp2(ceil(log2(scale)));
				for (int64_t j = 0; j < len; j++)
					bad += out[j] != (float)(nearest_fp8((float)(in[j] / scale)) * scale);
			}
		CHECK(bad == 0, "fp8_round ue8m0=%d: %d values differ from the nearest FP8 value", ue8m0, bad);
		free(v), free(v0);
	}
	free(x), free(y), free(x0), free(src), free(f), free(b), free(b2);
}

static void test_attention(struct dsm_backend *be)
{
	/* full form, one head, T queries at positions S-T .. S-1 */
	int64_t T = 6, S = 23, dn = 16, dr = 8, dv = 12, H = 3, r = 32;
	float *q = rand_buf((size_t)(T * (dn + dr)), 1), *kv = rand_buf((size_t)(S * (dn + dv)), 1);
	float *kpe = rand_buf((size_t)(S * dr), 1);
	int64_t n_keys[6];
	int32_t sel[6][8];
	struct dsm_attn_mask mask[6], all[6];
	int32_t every[6][32];
	for (int64_t t = 0; t < T; t++) {
		n_keys[t] = S - T + t + 1;
		/* a sparse choice: 8 ascending positions below n_keys */
		for (int j = 0; j < 8; j++)
			sel[t][j] = (int32_t)(j * (n_keys[t] - 1) / 7);
		mask[t] = (struct dsm_attn_mask){ sel[t], 8 };
		for (int64_t j = 0; j < n_keys[t]; j++)
			every[t][j] = (int32_t)j;
		all[t] = (struct dsm_attn_mask){ every[t], n_keys[t] };
	}
	for (int m = 0; m < 3; m++) {
		float *o = out_buf((size_t)(T * dv)), *orf = out_buf((size_t)(T * dv));
		struct dsm_attn_full_args a = { .n_q = T, .dn = dn, .dr = dr, .dv = dv, .q = q, .ldq = dn + dr, .kv = kv,
						.k_pe = kpe, .n_keys = n_keys, .mask = m == 0 ? NULL : m == 1 ? mask : all,
						.scale = 0.3f, .out = o, .ldo = dv };
		CHECK(be->attn_full(be, &a) == 0, "%s", dsm_errmsg());
		a.out = orf;
		CHECK(dsm_ref_attn_full(&a) == 0, "%s", dsm_errmsg());
		CHECK_NMSE(o, orf, (size_t)(T * dv), 5e-4, "attn_full mask=%d", m);
		CHECK(sentinels_ok(o, (size_t)(T * dv)), "attn_full wrote past its output");
		if (m == 2) {
			/* selecting every key is exactly the causal mask */
			float *oc = out_buf((size_t)(T * dv));
			a.mask = NULL;
			a.out = oc;
			CHECK(be->attn_full(be, &a) == 0, "%s", dsm_errmsg());
			CHECK(memcmp(oc, o, sizeof(float) * (size_t)(T * dv)) == 0, "full selection differs from causal");
			free(oc);
		}
		free(o), free(orf);
	}
	/* absorbed form over a latent cache, F32 and BF16 cache */
	float *ql = rand_buf((size_t)(H * r), 1), *qp = rand_buf((size_t)(H * dr), 1);
	float *c32 = rand_buf((size_t)(S * r), 1), *p32 = rand_buf((size_t)(S * dr), 1);
	uint16_t *c16 = malloc(sizeof(uint16_t) * (size_t)(S * r)), *p16 = malloc(sizeof(uint16_t) * (size_t)(S * dr));
	for (int64_t i = 0; i < S * r; i++)
		c16[i] = dsm_f32_to_bf16(c32[i]);
	for (int64_t i = 0; i < S * dr; i++)
		p16[i] = dsm_f32_to_bf16(p32[i]);
	for (int bf = 0; bf < 2; bf++)
		for (int m = 0; m < 2; m++) {
			float *o = out_buf((size_t)(H * r)), *orf = out_buf((size_t)(H * r));
			struct dsm_attn_latent_args a = {
				.n_heads = H, .r = r, .dr = dr, .q_lat = ql, .q_pe = qp,
				.cache_dtype = bf ? DSM_BF16 : DSM_F32, .c = bf ? (void *)c16 : (void *)c32,
				.k_pe = bf ? (void *)p16 : (void *)p32, .n_keys = S,
				.mask = m ? mask[T - 1] : (struct dsm_attn_mask){ 0 }, .scale = 0.2f, .o_lat = o };
			CHECK(be->attn_latent(be, &a) == 0, "%s", dsm_errmsg());
			a.o_lat = orf;
			CHECK(dsm_ref_attn_latent(&a) == 0, "%s", dsm_errmsg());
			CHECK_NMSE(o, orf, (size_t)(H * r), 5e-4, "attn_latent bf16=%d mask=%d", bf, m);
			CHECK(sentinels_ok(o, (size_t)(H * r)), "attn_latent wrote past its output");
			/* the same cache in blocks of 16 keys, each its own allocation: the same bits */
			enum { BR = 16 };
			int64_t nb = (S + BR - 1) / BR;
			size_t es = bf ? 2 : 4;
			const void *cb[64], *pb[64];
			for (int64_t b = 0; b < nb; b++) {
				void *x = malloc(es * BR * (size_t)r), *y = malloc(es * BR * (size_t)dr);
				int64_t rows = S - b * BR < BR ? S - b * BR : BR;
				memcpy(x, (const char *)a.c + es * (size_t)(b * BR * r), es * (size_t)(rows * r));
				memcpy(y, (const char *)a.k_pe + es * (size_t)(b * BR * dr), es * (size_t)(rows * dr));
				cb[b] = x, pb[b] = y;
			}
			a.c = a.k_pe = NULL;
			a.c_blocks = cb, a.pe_blocks = pb, a.block_rows = BR, a.o_lat = orf;
			CHECK(nb <= 64 && be->attn_latent(be, &a) == 0 && memcmp(o, orf, sizeof(float) * (size_t)(H * r)) == 0,
			      "attn_latent over cache blocks differs (bf16=%d mask=%d)", bf, m);
			for (int64_t b = 0; b < nb; b++)
				free((void *)cb[b]), free((void *)pb[b]);
			free(o), free(orf);
		}
	free(q), free(kv), free(kpe), free(ql), free(qp), free(c32), free(p32), free(c16), free(p16);
}

/* The absorbed form where its blocks are whole and partial: heads past one block of 4, latent dims past one
 * of 64 (and split across the threads), keys past one block of 8; F32 and BF16 caches, all keys or 21 of them. */
static void test_attn_latent_blocks(struct dsm_backend *be)
{
	enum { H = 9, R = 200, DR = 16, S = 45, SEL = 21 };
	float *ql = rand_buf(H * R, 1), *qp = rand_buf(H * DR, 1), *c32 = rand_buf(S * R, 1), *p32 = rand_buf(S * DR, 1);
	uint16_t *c16 = malloc(sizeof(uint16_t) * S * R), *p16 = malloc(sizeof(uint16_t) * S * DR);
	for (int i = 0; i < S * R; i++)
		c16[i] = dsm_f32_to_bf16(c32[i]);
	for (int i = 0; i < S * DR; i++)
		p16[i] = dsm_f32_to_bf16(p32[i]);
	int32_t sel[SEL];
	for (int j = 0; j < SEL; j++)
		sel[j] = 2 * j + (j > 10);
	for (int bf = 0; bf < 2; bf++)
		for (int m = 0; m < 2; m++) {
			float *o = out_buf(H * R), *orf = out_buf(H * R);
			struct dsm_attn_latent_args a = {
				.n_heads = H, .r = R, .dr = DR, .q_lat = ql, .q_pe = qp,
				.cache_dtype = bf ? DSM_BF16 : DSM_F32, .c = bf ? (void *)c16 : (void *)c32,
				.k_pe = bf ? (void *)p16 : (void *)p32, .n_keys = S,
				.mask = m ? (struct dsm_attn_mask){ sel, SEL } : (struct dsm_attn_mask){ 0 }, .scale = 0.15f,
				.o_lat = o };
			CHECK(be->attn_latent(be, &a) == 0, "%s", dsm_errmsg());
			a.o_lat = orf;
			CHECK(dsm_ref_attn_latent(&a) == 0, "%s", dsm_errmsg());
			CHECK_NMSE(o, orf, H * R, 5e-4, "attn_latent %dx%d, %d keys, bf16=%d mask=%d", H, R, S, bf, m);
			CHECK(sentinels_ok(o, H * R), "attn_latent wrote past its output");
			free(o), free(orf);
		}
	free(ql), free(qp), free(c32), free(p32), free(c16), free(p16);
}

/* The softmax of the attention ops (a polynomial e^x with AVX-512) against one in double: every element within a
 * relative 5e-7 plus the rounding of its score less the largest in F32 (or 1e-37 near zero), lengths around the
 * 16 lanes, scores spread past expf's range; a NaN score makes every output NaN, as expf's loop does. */
static void test_softmax(void)
{
	const int64_t lens[] = { 1, 7, 16, 17, 100, 2049 };
	for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++) {
		int64_t m = lens[li];
		for (int spread = 0; spread < 2; spread++) {
			float *p = rand_buf((size_t)m, spread ? 120.0f : 8.0f);
			double *want = malloc(sizeof(double) * (size_t)m), *tol = malloc(sizeof(double) * (size_t)m),
			       mx = -INFINITY, sum = 0;
			for (int64_t i = 0; i < m; i++)
				mx = p[i] > mx ? p[i] : mx;
			for (int64_t i = 0; i < m; i++) {
				sum += want[i] = exp((double)p[i] - mx);
				tol[i] = 5e-7 + (mx - p[i]) * 0x1p-24;
			}
			cpu_softmax_f32(p, m);
			int64_t bad = -1;
			for (int64_t i = 0; i < m && bad < 0; i++)
				if (!(fabs(p[i] - want[i] / sum) <= tol[i] * want[i] / sum + 1e-37))
					bad = i;
			CHECK(bad < 0, "softmax of %lld scores (spread %d): element %lld is %.9g, want %.9g", (long long)m,
			      spread, (long long)bad, bad < 0 ? 0.0 : p[bad], bad < 0 ? 0.0 : want[bad] / sum);
			if (m > 1) {
				p[m / 2] = NAN;
				cpu_softmax_f32(p, m);
				CHECK(isnan(p[0]) && isnan(p[m - 1]), "softmax of %lld scores with a NaN: %g, %g", (long long)m,
				      p[0], p[m - 1]);
			}
			free(p), free(want), free(tol);
		}
	}
}

static void test_indexer_topk_route(struct dsm_backend *be)
{
	int64_t nh = 4, d = 64, S = 300;
	float *q = rand_buf((size_t)(nh * d), 1), *w = rand_buf((size_t)nh, 1), *k = rand_buf((size_t)(S * d), 1);
	float *o = out_buf((size_t)S), *orf = out_buf((size_t)S);
	CHECK(be->indexer_scores(be, nh, d, q, w, k, NULL, 0, S, o) == 0, "%s", dsm_errmsg());
	dsm_ref_indexer_scores(nh, d, q, w, k, S, orf);
	CHECK_NMSE(o, orf, (size_t)S, 5e-4, "indexer_scores");
	CHECK(sentinels_ok(o, (size_t)S), "indexer_scores wrote past its output");
	/* the keys in blocks of 64 rows, each its own allocation, in reverse order in memory: the same bits */
	const float *kb[5];
	float *kc = malloc(sizeof(float) * (size_t)(5 * 64 * d)), *ob = out_buf((size_t)S);
	for (int b = 0; b < 5; b++) {
		kb[b] = kc + (4 - b) * 64 * d;
		memcpy(kc + (4 - b) * 64 * d, k + b * 64 * d, sizeof(float) * (size_t)((S - b * 64 < 64 ? S - b * 64 : 64) * d));
	}
	CHECK(be->indexer_scores(be, nh, d, q, w, NULL, kb, 64, S, ob) == 0 && memcmp(o, ob, sizeof(float) * (size_t)S) == 0,
	      "indexer_scores over key blocks differs");
	free(kc), free(ob);

	/* top-k with many exact ties (zeros, as ReLU makes them): ties go to the lower position */
	for (int64_t i = 0; i < S; i++)
		o[i] = (i % 3) ? 0.0f : (float)(rnd() % 50);
	int32_t idx[64], expect[64];
	CHECK(be->topk(be, o, S, 64, idx) == 0, "%s", dsm_errmsg());
	/* expected: by brute force */
	int64_t m = 0;
	for (int v = 49; v >= 0 && m < 64; v--)
		for (int64_t i = 0; i < S && m < 64; i++)
			if (o[i] == (float)v)
				expect[m++] = (int32_t)i;
	for (int64_t i = 0; i < 64; i++) /* ascending */
		for (int64_t j = i + 1; j < 64; j++)
			if (expect[j] < expect[i]) {
				int32_t t = expect[i];
				expect[i] = expect[j];
				expect[j] = t;
			}
	CHECK(memcmp(idx, expect, sizeof idx) == 0, "topk indices differ from brute force");

	/* routing: a hand-made case, then random ones against the reference */
	{
		/* 8 experts in 4 groups of 2, keep 2 groups, top 2 */
		float logits[8] = { 0, 0, 3, -3, 1, 1, -1, 2 }, bias[8] = { 0 };
		int32_t ri[2];
		float rw[2];
		struct dsm_route_args a = { .n_tokens = 1, .n_experts = 8, .logits = logits, .bias = bias, .n_group = 4,
					    .topk_group = 2, .top_k = 2, .normalize = 1, .scaling = 2.5f, .idx = ri, .weight = rw };
		CHECK(be->route(be, &a) == 0, "%s", dsm_errmsg());
		/* group sums: g0 1.0, g1 ~1.0, g2 ~1.46, g3 ~1.15 -> groups 2 and 3; best: 4/5 (tie -> 4), then 7 */
		CHECK(ri[0] == 4 && ri[1] == 7, "route chose %d %d, expected 4 7", ri[0], ri[1]);
		float s4 = 1 / (1 + expf(-1.0f)), s7 = 1 / (1 + expf(-2.0f));
		CHECK(fabsf(rw[0] - s4 / (s4 + s7) * 2.5f) < 1e-6f && fabsf(rw[1] - s7 / (s4 + s7) * 2.5f) < 1e-6f,
		      "route weights %g %g", rw[0], rw[1]);
	}
	int64_t T = 9, E = 64;
	int K = 6;
	float *lg = rand_buf((size_t)(T * E), 3), *bias = rand_buf((size_t)E, 0.1f);
	int32_t *i1 = malloc(sizeof(int32_t) * (size_t)(T * K)), *i2 = malloc(sizeof(int32_t) * (size_t)(T * K));
	float *w1 = out_buf((size_t)(T * K)), *w2 = out_buf((size_t)(T * K));
	struct dsm_route_args a = { .n_tokens = T, .n_experts = E, .logits = lg, .bias = bias, .n_group = 8,
				    .topk_group = 4, .top_k = K, .normalize = 1, .scaling = 2.5f, .idx = i1, .weight = w1 };
	CHECK(be->route(be, &a) == 0, "%s", dsm_errmsg());
	a.idx = i2;
	a.weight = w2;
	CHECK(dsm_ref_route(&a) == 0, "%s", dsm_errmsg());
	CHECK(memcmp(i1, i2, sizeof(int32_t) * (size_t)(T * K)) == 0, "route indices differ");
	CHECK_NMSE(w1, w2, (size_t)(T * K), 1e-7, "route weights");
	for (int64_t t = 0; t < T; t++) {
		float sum = 0;
		for (int j = 0; j < K; j++)
			sum += w1[t * K + j];
		CHECK(fabsf(sum - 2.5f) < 1e-5f, "route weights sum to %g, not 2.5", sum);
	}
	free(lg), free(bias), free(i1), free(i2), free(w1), free(w2);
	free(q), free(w), free(k), free(o), free(orf);
}

/* After reserve, attention of up to the reserved shape allocates nothing: the full form over the whole context
 * and over masks of the most selected keys, the absorbed form over the whole context. */
static void test_reserve(const struct dsm_backend_options *o)
{
	enum { S = 200, SEL = 192, T = 5, H = 3, DN = 16, DR = 8, DV = 12, R = 32 };
	struct dsm_backend *be;
	if (dsm_backend_create(&be, "cpu", o) < 0) {
		CHECK(0, "backend: %s", dsm_errmsg());
		return;
	}
	struct dsm_attn_shape shape = { .max_keys = S, .max_selected = SEL, .n_heads = H, .latent = R + DR,
		.qk_dim = DN + DR, .v_dim = DV };
	CHECK(be->reserve(be, &shape) == 0, "reserve: %s", dsm_errmsg());
	struct cpu_scratch before = cpu_of(be)->attn;
	float *q = rand_buf(T * (DN + DR), 1), *kv = rand_buf(S * (DN + DV), 1), *kpe = rand_buf(S * DR, 1);
	float *out = out_buf(T * DV), *c = rand_buf(S * R, 1), *ql = rand_buf(H * R, 1), *qp = rand_buf(H * DR, 1);
	float *ol = out_buf(H * R);
	int64_t n_keys[T];
	int32_t sel[T][SEL];
	struct dsm_attn_mask mask[T];
	for (int t = 0; t < T; t++) {
		n_keys[t] = S - T + t + 1;
		for (int j = 0; j < SEL; j++)
			sel[t][j] = j;
		mask[t] = (struct dsm_attn_mask){ sel[t], SEL };
	}
	for (int m = 0; m < 2; m++) {
		struct dsm_attn_full_args a = { .n_q = T, .dn = DN, .dr = DR, .dv = DV, .q = q, .ldq = DN + DR, .kv = kv,
						.k_pe = kpe, .n_keys = n_keys, .mask = m ? mask : NULL, .scale = 0.3f,
						.out = out, .ldo = DV };
		CHECK(be->attn_full(be, &a) == 0, "%s", dsm_errmsg());
	}
	struct dsm_attn_latent_args la = { .n_heads = H, .r = R, .dr = DR, .q_lat = ql, .q_pe = qp,
					   .cache_dtype = DSM_F32, .c = c, .k_pe = kpe, .n_keys = S, .scale = 0.2f,
					   .o_lat = ol };
	CHECK(be->attn_latent(be, &la) == 0, "%s", dsm_errmsg());
	struct cpu_scratch after = cpu_of(be)->attn;
	CHECK(after.p == before.p && after.bytes == before.bytes, "attention scratch grew after reserve: %zu -> %zu bytes",
	      before.bytes, after.bytes);
	free(q), free(kv), free(kpe), free(out), free(c), free(ql), free(qp), free(ol);
	dsm_backend_destroy(be);
}

/* cpu_team: inside a held team, cpu_par runs on every thread of it, a barrier orders its phases, and a cpu_par
 * from inside an fn runs on its caller alone; outside, the same through OpenMP. */
struct team_probe {
	int seen[8], after[8][8], nested[8];
	int bad;
};

static void probe_nested(void *arg, int tid, int team)
{
	int *n = arg;
	*n += team == 1 && tid == 0;
}

static void probe_part(void *arg, int tid, int team)
{
	struct team_probe *p = arg;
	if (team > 8 || tid >= team) {
		__atomic_store_n(&p->bad, 1, __ATOMIC_RELAXED);
		return;
	}
	__atomic_store_n(&p->seen[tid], 1, __ATOMIC_RELAXED);
	cpu_par_barrier(team);
	for (int i = 0; i < team; i++)
		p->after[tid][i] = __atomic_load_n(&p->seen[i], __ATOMIC_RELAXED);
	cpu_par(0, probe_nested, &p->nested[tid]);
}

struct team_run {
	int rounds, ok, threads;
};

static void probe_rounds(void *arg)
{
	struct team_run *r = arg;
	r->threads = cpu_par_threads();
	for (int k = 0; k < r->rounds; k++) {
		struct team_probe p = { 0 };
		cpu_par(0, probe_part, &p);
		int team = r->threads, good = !p.bad;
		for (int t = 0; t < team; t++) {
			good &= p.seen[t] == 1 && p.nested[t] == 1;
			for (int i = 0; i < team; i++)
				good &= p.after[t][i] == 1;
		}
		r->ok += good;
	}
}

static void test_team(struct dsm_backend *be)
{
	for (int held = 0; held < 2; held++) {
		struct team_run r = { .rounds = 2000 };
		if (held)
			be->hold_threads(be, probe_rounds, &r);
		else
			probe_rounds(&r);
		CHECK(r.threads == 2, "held=%d: a team of %d threads, not 2", held, r.threads);
		CHECK(r.ok == r.rounds, "held=%d: %d of %d rounds had every thread, the barrier and the nested call right",
		      held, r.ok, r.rounds);
	}
}

/* The ops that hand their work to a held team, on shapes that run them on every thread: the same bits inside
 * be->hold_threads as outside it. */
struct held_ops {
	struct dsm_backend *be;
	struct weight w8, w16, head, ex[4][3];
	struct dsm_ffn_weights ffn[4];
	const struct dsm_ffn_weights *ep[3];
	float *x, *xh, *ql, *qp, *c, *pe, *y[7];
	int rc;
};

static void held_ops_run(void *arg)
{
	struct held_ops *h = arg;
	struct dsm_backend *be = h->be;
	enum { H = 16, HR = 128, R = 256, DR = 64, S = 40 };
	int rc = 0;
	rc |= be->matmul(be, &h->w8.m, 1, h->x, h->y[0]);
	rc |= be->matmul(be, &h->w16.m, 1, h->x, h->y[1]);
	for (int tr = 0; tr < 2; tr++) {
		struct dsm_matmul_heads_args a = { .w = &h->w8.m, .n_heads = H, .head_stride = HR, .head_rows = HR,
			.transposed = tr, .n = 1, .x = h->xh, .ldx = H * 512, .x_head = 512, .y = h->y[2 + tr],
			.ldy = H * 512, .y_head = 512 };
		rc |= be->matmul_heads(be, &a);
	}
	struct dsm_attn_latent_args la = { .n_heads = H, .r = R, .dr = DR, .q_lat = h->ql, .q_pe = h->qp,
		.cache_dtype = DSM_F32, .c = h->c, .k_pe = h->pe, .n_keys = S, .scale = 0.1f, .o_lat = h->y[4] };
	rc |= be->attn_latent(be, &la);
	int32_t idx[3] = { 0, 1, 2 };
	float wt[3] = { 0.5f, 0.3f, 0.2f };
	struct dsm_moe_op_args ma = { 1, 3, idx, wt, h->ep, 3, &h->ffn[3], h->x, h->y[5] };
	rc |= be->moe(be, &ma);
	if (be->top_prepare && be->top_prepare(be, &h->head.m) == 0)
		rc |= be->matmul_top(be, &h->head.m, h->x, h->y[6]) < 0;
	h->rc = rc;
}

static void test_held_ops(struct dsm_backend *be)
{
	struct held_ops h = { .be = be };
	weight_init(&h.w8, DSM_F8_E4M3, 2048, 512);
	weight_init(&h.w16, DSM_BF16, 512, 512);
	weight_init(&h.head, DSM_BF16, 1024, 512);
	for (int e = 0; e < 4; e++) {
		weight_init(&h.ex[e][0], DSM_F8_E4M3, 256, 512);
		weight_init(&h.ex[e][1], DSM_F8_E4M3, 256, 512);
		weight_init(&h.ex[e][2], DSM_F8_E4M3, 512, 256);
		h.ffn[e] = (struct dsm_ffn_weights){ .gate = h.ex[e][0].m, .up = h.ex[e][1].m, .down = h.ex[e][2].m };
		if (e < 3)
			h.ep[e] = &h.ffn[e];
	}
	h.x = rand_buf(512, 1), h.xh = rand_buf(16 * 512, 1), h.ql = rand_buf(16 * 256, 1), h.qp = rand_buf(16 * 64, 1);
	h.c = rand_buf(40 * 256, 1), h.pe = rand_buf(40 * 64, 1);
	static const size_t len[7] = { 2048, 512, 16 * 512, 16 * 512, 16 * 256, 512, 1024 };
	float *first[7];
	for (int held = 0; held < 2; held++) {
		for (int i = 0; i < 7; i++)
			memset(h.y[i] = out_buf(len[i]), 0, sizeof(float) * len[i]);
		if (held)
			be->hold_threads(be, held_ops_run, &h);
		else
			held_ops_run(&h);
		CHECK(h.rc == 0, "held=%d: %s", held, dsm_errmsg());
		for (int i = 0; i < 7; i++) {
			if (held) {
				CHECK(memcmp(first[i], h.y[i], sizeof(float) * len[i]) == 0, "op %d differs with held threads", i);
				free(h.y[i]);
			} else {
				first[i] = h.y[i];
			}
		}
	}
	/* and right: the two that run on one thread at the other tests' shapes */
	float *yr = out_buf(16 * 256);
	CHECK(dsm_ref_matmul(be->precision, &h.w16.m, 1, h.x, yr) == 0, "%s", dsm_errmsg());
	CHECK_NMSE(first[1], yr, 512, 5e-4, "bf16 matmul of 512 rows");
	struct dsm_attn_latent_args la = { .n_heads = 16, .r = 256, .dr = 64, .q_lat = h.ql, .q_pe = h.qp,
		.cache_dtype = DSM_F32, .c = h.c, .k_pe = h.pe, .n_keys = 40, .scale = 0.1f, .o_lat = yr };
	CHECK(dsm_ref_attn_latent(&la) == 0, "%s", dsm_errmsg());
	CHECK_NMSE(first[4], yr, 16 * 256, 5e-4, "attn_latent of 16 heads over 40 keys");
	free(yr);
	for (int i = 0; i < 7; i++)
		free(first[i]);
	free(h.x), free(h.xh), free(h.ql), free(h.qp), free(h.c), free(h.pe);
	weight_free(&h.w8), weight_free(&h.w16), weight_free(&h.head);
	for (int e = 0; e < 4; e++)
		weight_free(&h.ex[e][0]), weight_free(&h.ex[e][1]), weight_free(&h.ex[e][2]);
}

int main(void)
{
	for (int p = 0; p < 2; p++) {
		struct dsm_backend *be;
		struct dsm_backend_options o = { .precision = p ? DSM_PRECISION_BF16 : DSM_PRECISION_F32, .threads = 2 };
		if (dsm_backend_create(&be, "cpu", &o) < 0) {
			fprintf(stderr, "backend: %s\n", dsm_errmsg());
			return 99;
		}
		worst_nmse = 0;
		test_matmul(be);
		test_bf16_walks(be);
		test_head_top(be);
		test_matmul_heads(be);
		test_ffn(be);
		test_moe(be);
		test_elementwise(be);
		test_glue(be);
		test_attention(be);
		test_attn_latent_blocks(be);
		test_indexer_topk_route(be);
		test_team(be);
		test_held_ops(be);
		test_reserve(&o);
		printf("cpu backend, %s: worst NMSE against the scalar reference %.3g\n", dsm_precision_name(o.precision),
		       worst_nmse);
		dsm_backend_destroy(be);
	}
	test_softmax();
	CHECK(dsm_physical_cores() >= 1, "physical cores");
	return TEST_EXIT();
}
