/* Every op of the cuda backend against the scalar references (ref_ops.c) on random data, with the thresholds of
 * docs TESTING.md (elementwise 1e-7, softmax 1e-6, matmul / FFN / attention 5e-4, indices exact), in both
 * precisions, the glue ops (add, scale, convert, gather, fp8_round) bit for bit against scalar forms; then the
 * asynchronous part: queues, events, pinned memory and a failure inside a queue.
 * Data lives in device memory (be->alloc, copy_in / copy_out); descriptor tables stay on the host.
 * Skips (77) without a CUDA device. */
#include "backend.h"
#include "error.h"
#include "fp8_dequant.h"
#include "ref_ops.h"
#define TEST_RAND_SEED 0x2545f4914f6cdd1dull
#include "test_rand.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SENTINEL 16
static const uint32_t sentinel_bits = 0x7fc0dead;


static double worst_nmse;
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

/* ---- device buffers ---------------------------------------------------------------------------------- */

static void *dev_put(struct dsm_backend *be, const void *src, size_t bytes)
{
	void *d = be->alloc(be, bytes ? bytes : 1);
	if (!d) {
		fprintf(stderr, "device allocation of %zu bytes: %s\n", bytes, dsm_errmsg());
		exit(99);
	}
	if (bytes && be->copy_in(be, d, src, bytes) < 0) {
		fprintf(stderr, "copy_in: %s\n", dsm_errmsg());
		exit(99);
	}
	return d;
}

/* A device output of n floats followed by SENTINEL sentinel floats. */
static float *dev_out(struct dsm_backend *be, size_t n)
{
	float *h = malloc((n + SENTINEL) * sizeof *h);
	for (size_t i = 0; i < n + SENTINEL; i++)
		memcpy(&h[i], &sentinel_bits, 4);
	float *d = dev_put(be, h, (n + SENTINEL) * sizeof *h);
	free(h);
	return d;
}

/* The device output back (n floats and the sentinels); the sentinels are checked. */
static float *dev_get(struct dsm_backend *be, const float *d, size_t n, const char *what)
{
	float *h = malloc((n + SENTINEL) * sizeof *h);
	if (be->copy_out(be, h, d, (n + SENTINEL) * sizeof *h) < 0) {
		fprintf(stderr, "copy_out: %s\n", dsm_errmsg());
		exit(99);
	}
	for (size_t i = n; i < n + SENTINEL; i++)
		if (memcmp(&h[i], &sentinel_bits, 4) != 0) {
			CHECK(0, "%s wrote past its output", what);
			break;
		}
	return h;
}

/* A random weight [rows, cols] of dtype t, on the host (m) and on the device (d). */
struct weight {
	struct dsm_mat m, d;
	void *data, *scale;
	void *ddata, *dscale;
};
static void weight_init(struct dsm_backend *be, struct weight *w, enum dsm_dtype t, int64_t rows, int64_t cols)
{
	size_t n = (size_t)rows * (size_t)cols, nb = (size_t)((rows + 127) / 128) * (size_t)((cols + 127) / 128);
	memset(w, 0, sizeof *w);
	float *scale;
	rand_weight(t, rows, cols, &w->data, &scale);
	w->scale = scale;
	if (scale)
		w->dscale = dev_put(be, scale, nb * sizeof(float));
	w->ddata = dev_put(be, w->data, n * dsm_dtype_size(t));
	w->m = (struct dsm_mat){ .dtype = t, .rows = rows, .cols = cols, .data = w->data, .scale = w->scale };
	w->d = w->m;
	w->d.data = w->ddata;
	w->d.scale = w->dscale;
}
static void weight_free(struct dsm_backend *be, struct weight *w)
{
	be->free(be, w->ddata);
	be->free(be, w->dscale);
	free(w->data);
	free(w->scale);
}

static const enum dsm_dtype types[] = { DSM_F8_E4M3, DSM_BF16, DSM_F32 };

/* ---- matmuls ----------------------------------------------------------------------------------------- */

static void test_matmul(struct dsm_backend *be)
{
	/* n: the GEMV kernel (1, 4, 16) and cuBLASLt (17, 64); cols ragged (300: some rows unaligned, the
	 * scalar tail) and aligned (256: 16-byte loads throughout) */
	static const int64_t ns[] = { 1, 4, 16, 17, 64 };
	static const int64_t colss[] = { 300, 256 };
	for (int ti = 0; ti < 3; ti++)
		for (int ci = 0; ci < 2; ci++)
			for (int ni = 0; ni < 5; ni++) {
				int64_t rows = 200 + ni * 37, cols = colss[ci], n = ns[ni];
				struct weight w;
				weight_init(be, &w, types[ti], rows, cols);
				for (int view = 0; view < 2; view++) {
					/* the whole matrix, then a view starting inside a 128-row block */
					struct dsm_mat mh = view ? dsm_mat_rows(w.m, 70, 100) : w.m;
					struct dsm_mat md = view ? dsm_mat_rows(w.d, 70, 100) : w.d;
					size_t ny = (size_t)(n * mh.rows), nz = (size_t)(n * mh.cols);
					float *x = rand_buf(nz, 1), *xt = rand_buf(ny, 1);
					float *yr = malloc(ny * sizeof *yr), *zr = malloc(nz * sizeof *zr);
					float *dx = dev_put(be, x, nz * 4), *dxt = dev_put(be, xt, ny * 4);
					float *dy = dev_out(be, ny), *dz = dev_out(be, nz);
					CHECK(be->matmul(be, &md, n, dx, dy) == 0, "%s", dsm_errmsg());
					CHECK(be->matmul_t(be, &md, n, dxt, dz) == 0, "%s", dsm_errmsg());
					float *y = dev_get(be, dy, ny, "matmul"), *z = dev_get(be, dz, nz, "matmul_t");
					CHECK(dsm_ref_matmul(be->precision, &mh, n, x, yr) == 0, "%s", dsm_errmsg());
					CHECK(dsm_ref_matmul_t(be->precision, &mh, n, xt, zr) == 0, "%s", dsm_errmsg());
					CHECK_NMSE(y, yr, ny, 5e-4, "matmul %s cols=%lld n=%lld view=%d %s", dsm_dtype_name(types[ti]),
						   (long long)cols, (long long)n, view, dsm_precision_name(be->precision));
					CHECK_NMSE(z, zr, nz, 5e-4, "matmul_t %s cols=%lld n=%lld view=%d %s", dsm_dtype_name(types[ti]),
						   (long long)cols, (long long)n, view, dsm_precision_name(be->precision));
					be->free(be, dx), be->free(be, dxt), be->free(be, dy), be->free(be, dz);
					free(x), free(xt), free(y), free(z), free(yr), free(zr);
				}
				weight_free(be, &w);
			}
}

/* matmul_heads against the reference of each head's view alone: 5 heads of 40 or 56 rows at a stride of 96,
 * padded head strides whose gaps must stay untouched. */
static void test_matmul_heads(struct dsm_backend *be)
{
	static const int64_t ns[] = { 1, 5, 16, 17, 40 };
	const int64_t H = 5, stride = 96, cols = 200;
	for (int ti = 0; ti < 3; ti++)
		for (int ni = 0; ni < 5; ni++)
			for (int tr = 0; tr < 2; tr++) {
				int64_t n = ns[ni], rows = tr ? 40 : 56, r0 = tr ? 0 : 40;
				struct weight w;
				weight_init(be, &w, types[ti], H * stride, cols);
				struct dsm_mat vh = dsm_mat_rows(w.m, r0, H * stride - r0), vd = dsm_mat_rows(w.d, r0, H * stride - r0);
				int64_t in = tr ? rows : cols, out = tr ? cols : rows, xh = in + 3, yh = out + 5;
				size_t nx = (size_t)(n * H * xh), ny = (size_t)(n * H * yh);
				float *x = rand_buf(nx, 1), *dx = dev_put(be, x, nx * 4), *dy = dev_out(be, ny);
				struct dsm_matmul_heads_args a = { .w = &vd, .n_heads = H, .head_stride = stride, .head_rows = rows,
					.transposed = tr, .n = n, .x = dx, .ldx = H * xh, .x_head = xh, .y = dy, .ldy = H * yh,
					.y_head = yh };
				CHECK(be->matmul_heads(be, &a) == 0, "%s", dsm_errmsg());
				float *y = dev_get(be, dy, ny, "matmul_heads");
				float *xg = malloc(sizeof(float) * (size_t)(n * in)), *yr = malloc(sizeof(float) * (size_t)(n * out));
				float *yg = malloc(sizeof(float) * (size_t)(n * out));
				for (int64_t h = 0; h < H; h++) {
					struct dsm_mat wh = dsm_mat_rows(vh, h * stride, rows);
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
				be->free(be, dx), be->free(be, dy);
				free(x), free(y), free(xg), free(yr), free(yg);
				weight_free(be, &w);
			}
}

static void test_ffn(struct dsm_backend *be)
{
	static const int64_t ns[] = { 1, 9, 17, 33 };
	for (int ti = 0; ti < 3; ti++)
		for (int ni = 0; ni < 4; ni++) {
			int64_t D = 256, I = 96, n = ns[ni];
			struct weight g, u, d;
			weight_init(be, &g, types[ti], I, D);
			weight_init(be, &u, types[ti], I, D);
			weight_init(be, &d, types[ti], D, I);
			struct dsm_ffn_weights wh = { g.m, u.m, d.m, 0 }, wd = { g.d, u.d, d.d, 0 };
			size_t nx = (size_t)(n * D);
			float *x = rand_buf(nx, 1), *yr = malloc(nx * 4), *dx = dev_put(be, x, nx * 4), *dy = dev_out(be, nx);
			CHECK(be->ffn(be, &wd, n, dx, dy) == 0, "%s", dsm_errmsg());
			float *y = dev_get(be, dy, nx, "ffn");
			CHECK(dsm_ref_ffn(be->precision, &wh, n, x, yr) == 0, "%s", dsm_errmsg());
			CHECK_NMSE(y, yr, nx, 5e-4, "ffn %s n=%lld", dsm_dtype_name(types[ti]), (long long)n);
			be->free(be, dx), be->free(be, dy);
			free(x), free(y), free(yr);
			weight_free(be, &g), weight_free(be, &u), weight_free(be, &d);
		}
}

/* moe: the reference FFN of each chosen expert, weighted and summed, then the shared one. Expert E - 1 is
 * never chosen and left NULL; idx not ascending within a row. */
static void test_moe(struct dsm_backend *be)
{
	enum { E = 6, K = 2 };
	static const int64_t Ts[] = { 1, 5, 20 };
	for (int ti = 0; ti < 3; ti++)
		for (int Ti = 0; Ti < 3; Ti++) {
			int64_t T = Ts[Ti], D = 256, I = 96;
			struct weight wt[E + 1][3];
			struct dsm_ffn_weights fh[E + 1], fd[E + 1];
			const struct dsm_ffn_weights *ep[E] = { NULL };
			for (int e = 0; e <= E; e++) {
				weight_init(be, &wt[e][0], types[ti], I, D);
				weight_init(be, &wt[e][1], types[ti], I, D);
				weight_init(be, &wt[e][2], types[ti], D, I);
				fh[e] = (struct dsm_ffn_weights){ wt[e][0].m, wt[e][1].m, wt[e][2].m, 0 };
				fd[e] = (struct dsm_ffn_weights){ wt[e][0].d, wt[e][1].d, wt[e][2].d, 0 };
			}
			int32_t idx[20 * K];
			float w[20 * K];
			for (int64_t t = 0; t < T; t++) {
				idx[t * K] = (int32_t)(rnd() % (E - 1));
				idx[t * K + 1] = (idx[t * K] + 1 + (int32_t)(rnd() % (E - 2))) % (E - 1);
				for (int j = 0; j < K; j++) {
					w[t * K + j] = 0.5f + 0.5f * urand();
					ep[idx[t * K + j]] = &fd[idx[t * K + j]];
				}
			}
			size_t nx = (size_t)(T * D);
			float *x = rand_buf(nx, 1), *dx = dev_put(be, x, nx * 4), *dy = dev_out(be, nx);
			int32_t *didx = dev_put(be, idx, sizeof(int32_t) * (size_t)(T * K));
			float *dw = dev_put(be, w, sizeof(float) * (size_t)(T * K));
			struct dsm_moe_op_args a = { T, K, didx, dw, ep, E, &fd[E], dx, dy };
			CHECK(be->moe(be, &a) == 0, "moe: %s", dsm_errmsg());
			float *y = dev_get(be, dy, nx, "moe");
			double *ref = calloc(nx, sizeof(double));
			float *yr = malloc(sizeof(float) * (size_t)D), *yf = malloc(nx * 4);
			for (int64_t t = 0; t < T; t++)
				for (int j = 0; j <= K; j++) {
					const struct dsm_ffn_weights *f = j < K ? &fh[idx[t * K + j]] : &fh[E];
					CHECK(dsm_ref_ffn(be->precision, f, 1, x + t * D, yr) == 0, "%s", dsm_errmsg());
					for (int64_t i = 0; i < D; i++)
						ref[t * D + i] += (j < K ? w[t * K + j] : 1.0) * yr[i];
				}
			for (size_t i = 0; i < nx; i++)
				yf[i] = (float)ref[i];
			CHECK_NMSE(y, yf, nx, 5e-4, "moe %s T=%lld", dsm_dtype_name(types[ti]), (long long)T);
			be->free(be, dx), be->free(be, dy), be->free(be, didx), be->free(be, dw);
			free(x), free(y), free(ref), free(yr), free(yf);
			for (int e = 0; e <= E; e++)
				weight_free(be, &wt[e][0]), weight_free(be, &wt[e][1]), weight_free(be, &wt[e][2]);
		}
}

/* ---- elementwise ------------------------------------------------------------------------------------- */

static void test_elementwise(struct dsm_backend *be)
{
	int64_t n = 7, d = 7168;
	size_t nd = (size_t)(n * d);
	float *x = rand_buf(2 * nd, 2), *w = rand_buf((size_t)d, 1), *b = rand_buf((size_t)d, 1), *yr = malloc(nd * 4);
	float *dx = dev_put(be, x, 2 * nd * 4), *dw = dev_put(be, w, (size_t)d * 4), *db = dev_put(be, b, (size_t)d * 4);
	float *dy = dev_out(be, nd);
	/* rmsnorm with a row stride, then in place */
	CHECK(be->rmsnorm(be, n, d, dx, 2 * d, dw, 1e-6f, dy) == 0, "%s", dsm_errmsg());
	float *y = dev_get(be, dy, nd, "rmsnorm");
	dsm_ref_rmsnorm(n, d, x, 2 * d, w, 1e-6f, yr);
	CHECK_NMSE(y, yr, nd, 1e-7, "rmsnorm");
	free(y);
	float *din = dev_put(be, x, nd * 4);
	CHECK(be->rmsnorm(be, n, d, din, d, dw, 1e-6f, din) == 0, "%s", dsm_errmsg());
	y = malloc(nd * 4);
	be->copy_out(be, y, din, nd * 4);
	dsm_ref_rmsnorm(n, d, x, d, w, 1e-6f, yr);
	CHECK_NMSE(y, yr, nd, 1e-7, "rmsnorm in place");
	free(y);
	CHECK(be->layernorm(be, n, d, dx, dw, db, 1e-6f, dy) == 0, "%s", dsm_errmsg());
	y = dev_get(be, dy, nd, "layernorm");
	dsm_ref_layernorm(n, d, x, w, b, 1e-6f, yr);
	CHECK_NMSE(y, yr, nd, 1e-7, "layernorm");
	free(y);
	/* rope, both pairings, 3 heads of stride 40 with 32 rotated dims */
	for (int inter = 0; inter < 2; inter++) {
		int64_t H = 3, ldh = 40, dim = 32, ldx = H * ldh;
		size_t nv = (size_t)(n * ldx), nc = (size_t)(n * dim / 2);
		float *v = rand_buf(nv, 1), *cs = rand_buf(nc, 1), *sn = rand_buf(nc, 1), *got = malloc(nv * 4);
		float *dv = dev_put(be, v, nv * 4), *dc = dev_put(be, cs, nc * 4), *ds = dev_put(be, sn, nc * 4);
		CHECK(be->rope(be, n, H, dim, dv, ldx, ldh, dc, ds, inter) == 0, "%s", dsm_errmsg());
		be->copy_out(be, got, dv, nv * 4);
		dsm_ref_rope(n, H, dim, v, ldx, ldh, cs, sn, inter);
		CHECK_NMSE(got, v, nv, 1e-7, "rope interleaved=%d", inter);
		be->free(be, dv), be->free(be, dc), be->free(be, ds);
		free(v), free(cs), free(sn), free(got);
	}
	/* Hadamard, several sizes */
	for (int64_t hd = 1; hd <= 4096; hd *= 8) {
		size_t nh = (size_t)(n * hd);
		float *h = rand_buf(nh, 1), *got = malloc(nh * 4), *dh = dev_put(be, h, nh * 4);
		CHECK(be->hadamard(be, n, hd, dh) == 0, "%s", dsm_errmsg());
		be->copy_out(be, got, dh, nh * 4);
		CHECK(dsm_ref_hadamard(n, hd, h) == 0, "%s", dsm_errmsg());
		CHECK_NMSE(got, h, nh, 1e-7, "hadamard d=%lld", (long long)hd);
		be->free(be, dh);
		free(h), free(got);
	}
	CHECK(be->hadamard(be, 1, 12, dx) == DSM_EARG, "hadamard of 12 accepted");
	be->free(be, dx), be->free(be, dw), be->free(be, db), be->free(be, dy), be->free(be, din);
	free(x), free(w), free(b), free(yr);
}

/* ---- glue: add, scale, convert, gather, fp8_round (bit for bit against the scalar forms below) -------- */

/* got and want bit for bit, NaN matching any NaN; the first differing index or -1. */
static int64_t first_diff(const float *got, const float *want, int64_t n)
{
	for (int64_t i = 0; i < n; i++)
		if (isnan(want[i]) ? !isnan(got[i]) : memcmp(&got[i], &want[i], 4) != 0)
			return i;
	return -1;
}

/* convert on the host: element (i, j) of x to y, the same type copying the bits. */
static void ref_convert(int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx, void *y,
			enum dsm_dtype yt, int64_t ldy)
{
	for (int64_t i = 0; i < rows; i++)
		for (int64_t j = 0; j < cols; j++) {
			int64_t a = i * ldx + j, b = i * ldy + j;
			if (xt == yt)
				memcpy((char *)y + b * dsm_dtype_size(yt), (const char *)x + a * dsm_dtype_size(xt),
				       dsm_dtype_size(xt));
			else if (xt == DSM_F32)
				((uint16_t *)y)[b] = dsm_f32_to_bf16(((const float *)x)[a]);
			else
				((float *)y)[b] = dsm_bf16_to_f32(((const uint16_t *)x)[a]);
		}
}

static void test_add_scale(struct dsm_backend *be)
{
	int64_t n = 100003;
	size_t nb = (size_t)n * 4;
	float *x = rand_buf((size_t)n, 100), *y = rand_buf((size_t)n, 1), *want = malloc(nb);
	float *dx = dev_out(be, (size_t)n), *dy = dev_put(be, y, nb);
	be->copy_in(be, dx, x, nb);
	CHECK(be->add(be, n, dx, dy) == 0, "%s", dsm_errmsg());
	for (int64_t i = 0; i < n; i++)
		want[i] = x[i] + y[i];
	float *got = dev_get(be, dx, (size_t)n, "add");
	int64_t at = first_diff(got, want, n);
	CHECK(at < 0, "add: element %lld is %g, want %g", (long long)at, got[at < 0 ? 0 : at], want[at < 0 ? 0 : at]);
	free(got);
	CHECK(be->scale(be, n, dx, -0.37f) == 0, "%s", dsm_errmsg());
	for (int64_t i = 0; i < n; i++)
		want[i] *= -0.37f;
	got = dev_get(be, dx, (size_t)n, "scale");
	at = first_diff(got, want, n);
	CHECK(at < 0, "scale: element %lld is %g, want %g", (long long)at, got[at < 0 ? 0 : at], want[at < 0 ? 0 : at]);
	free(got);
	CHECK(be->add(be, 0, NULL, NULL) == 0 && be->scale(be, 0, NULL, 2.0f) == 0, "n = 0: %s", dsm_errmsg());
	be->free(be, dx), be->free(be, dy);
	free(x), free(y), free(want);
}

static void test_convert(struct dsm_backend *be)
{
	/* a KV cache row (576 values) at strides on both sides, a copy of each type with ldx != ldy, and more rows
	 * than one grid holds (70000 rows of 3) */
	static const struct { enum dsm_dtype xt, yt; int64_t rows, cols, ldx, ldy; } cases[] = {
		{ DSM_F32, DSM_BF16, 37, 576, 600, 1000 }, { DSM_BF16, DSM_F32, 37, 576, 1000, 577 },
		{ DSM_F32, DSM_F32, 37, 576, 700, 576 },   { DSM_BF16, DSM_BF16, 37, 576, 576, 650 },
		{ DSM_F32, DSM_BF16, 70000, 3, 5, 4 },     { DSM_BF16, DSM_F32, 70000, 3, 3, 7 },
	};
	for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
		enum dsm_dtype xt = cases[ci].xt, yt = cases[ci].yt;
		int64_t rows = cases[ci].rows, cols = cases[ci].cols, ldx = cases[ci].ldx, ldy = cases[ci].ldy;
		size_t xb = (size_t)(rows * ldx) * dsm_dtype_size(xt), yb = (size_t)(rows * ldy) * dsm_dtype_size(yt);
		uint32_t *x = malloc(xb + 4);
		for (size_t i = 0; i < xb / 4 + 1; i++)
			x[i] = rnd() << 1 ^ rnd(); /* every bit pattern: NaN, inf and subnormals too */
		if (xt == DSM_F32) /* and values a BF16 rounds up, down and to even */
			for (size_t i = 0; i < xb / 4; i += 3)
				x[i] = (x[i] & 0xffff0000u) | (i % 2 ? 0x8000u : 0x7fffu);
		/* y starts as a pattern: the gaps between rows and the sentinels after them must keep it */
		float *want = malloc(yb + SENTINEL * 4);
		for (size_t i = 0; i < yb / 4 + SENTINEL; i++)
			memcpy(&want[i], &sentinel_bits, 4);
		float *dy = dev_put(be, want, yb + SENTINEL * 4);
		void *dx = dev_put(be, x, xb);
		CHECK(be->convert(be, rows, cols, dx, xt, ldx, dy, yt, ldy) == 0, "%s", dsm_errmsg());
		ref_convert(rows, cols, x, xt, ldx, want, yt, ldy);
		float *got = dev_get(be, dy, yb / 4, "convert");
		CHECK(memcmp(got, want, yb) == 0, "convert %s -> %s rows=%lld cols=%lld ldx=%lld ldy=%lld differs",
		      dsm_dtype_name(xt), dsm_dtype_name(yt), (long long)rows, (long long)cols, (long long)ldx, (long long)ldy);
		be->free(be, dx), be->free(be, dy);
		free(x), free(want), free(got);
	}
	float *d = dev_out(be, 16);
	CHECK(be->convert(be, 2, 4, d, DSM_F8_E4M3, 4, d + 8, DSM_F32, 4) == DSM_EUNSUPPORTED &&
	      strstr(dsm_errmsg(), "convert"), "convert from F8: %s", dsm_errmsg());
	CHECK(be->convert(be, 0, 4, d, DSM_F32, 4, d + 8, DSM_BF16, 4) == 0 &&
	      be->convert(be, 2, 0, d, DSM_F32, 4, d + 8, DSM_BF16, 4) == 0, "empty convert: %s", dsm_errmsg());
	be->free(be, d);
}

/* One gather of n blocks of block_rows rows of cols values (the last last_rows rows), every bit pattern: the blocks
 * lie in shuffled order, each in its own allocation (separate) or as blocks of one pool; on a queue the host table
 * is overwritten right after the call (the op reads it during the call). */
static void gather_case(struct dsm_backend *be, int64_t n, int64_t block_rows, int64_t last_rows, int64_t cols,
			enum dsm_dtype xt, enum dsm_dtype yt, int separate, int on_queue)
{
	size_t xs = dsm_dtype_size(xt), ys = dsm_dtype_size(yt);
	size_t bx = (size_t)(block_rows * cols) * xs, by = (size_t)(block_rows * cols) * ys;
	size_t yb = (size_t)((n - 1) * block_rows + last_rows) * (size_t)cols * ys;
	CHECK(yb % 4 == 0, "gather test: output of %zu bytes", yb);
	uint32_t *x = malloc((size_t)n * bx + 4);
	for (size_t i = 0; i < (size_t)n * bx / 4 + 1; i++)
		x[i] = rnd() << 1 ^ rnd();
	if (xt == DSM_F32) /* values a BF16 rounds up, down and to even */
		for (size_t i = 0; i < (size_t)n * bx / 4; i += 3)
			x[i] = (x[i] & 0xffff0000u) | (i % 2 ? 0x8000u : 0x7fffu);
	/* block k of x lives at dev[k]; the table lists them in the order perm */
	void **dev = malloc((size_t)n * sizeof *dev), *pool = NULL;
	const void **table = malloc((size_t)n * sizeof *table);
	int64_t *perm = malloc((size_t)n * sizeof *perm);
	if (!separate)
		pool = dev_put(be, x, (size_t)n * bx);
	for (int64_t k = 0; k < n; k++) {
		dev[k] = separate ? dev_put(be, (char *)x + (size_t)k * bx, bx) : (char *)pool + (size_t)k * bx;
		perm[k] = k;
	}
	for (int64_t k = n - 1; k > 0; k--) {
		int64_t j = (int64_t)(rnd() % (uint32_t)(k + 1)), t = perm[k];
		perm[k] = perm[j], perm[j] = t;
	}
	for (int64_t i = 0; i < n; i++)
		table[i] = dev[perm[i]];
	/* y starts as a pattern: the sentinels after it must keep it */
	float *want = malloc(yb + SENTINEL * 4);
	for (size_t i = 0; i < yb / 4 + SENTINEL; i++)
		memcpy(&want[i], &sentinel_bits, 4);
	float *dy = dev_put(be, want, yb + SENTINEL * 4);
	for (int64_t i = 0; i < n; i++)
		ref_convert(i == n - 1 ? last_rows : block_rows, cols, (char *)x + (size_t)perm[i] * bx, xt, cols,
			    (char *)want + (size_t)i * by, yt, cols);
	struct dsm_queue *q = NULL;
	struct dsm_event *e = NULL;
	if (on_queue) {
		CHECK(be->queue_create(be, &q) == 0 && be->event_create(be, &e) == 0, "%s", dsm_errmsg());
		be->set_queue(be, q);
	}
	CHECK(be->gather(be, n, table, block_rows, last_rows, cols, xt, dy, yt) == 0, "%s", dsm_errmsg());
	if (on_queue) {
		for (int64_t i = 0; i < n; i++)
			table[i] = dev[0];
		CHECK(be->event_record(be, e, q) == 0, "%s", dsm_errmsg());
		be->set_queue(be, NULL);
		CHECK(be->event_sync(be, e) == 0, "%s", dsm_errmsg());
		be->event_destroy(be, e);
		be->queue_destroy(be, q);
	}
	float *got = dev_get(be, dy, yb / 4, "gather");
	CHECK(memcmp(got, want, yb) == 0, "gather %s -> %s n=%lld block_rows=%lld last_rows=%lld cols=%lld%s differs",
	      dsm_dtype_name(xt), dsm_dtype_name(yt), (long long)n, (long long)block_rows, (long long)last_rows,
	      (long long)cols, on_queue ? " on a queue" : "");
	if (separate)
		for (int64_t k = 0; k < n; k++)
			be->free(be, dev[k]);
	be->free(be, pool), be->free(be, dy);
	free(x), free(dev), free(table), free(perm), free(want), free(got);
}

static void test_gather(struct dsm_backend *be)
{
	static const enum dsm_dtype gt[] = { DSM_F32, DSM_BF16 };
	/* KV blocks of 64 rows, each in its own allocation, the last one 17 rows; then one full last block */
	for (int a = 0; a < 2; a++)
		for (int b = 0; b < 2; b++) {
			gather_case(be, 5, 64, 17, 40, gt[a], gt[b], 1, 0);
			gather_case(be, 3, 64, 64, 40, gt[a], gt[b], 1, 0);
		}
	gather_case(be, 1, 64, 1, 576, DSM_F32, DSM_BF16, 1, 0);
	/* tables of more pointers than a staging slot holds (256 KiB: 32768), so staged in chunks: 1-row blocks,
	 * 2-row blocks with a 1-row last one, and one on a queue */
	gather_case(be, 70000, 1, 1, 3, DSM_F32, DSM_BF16, 0, 0);
	gather_case(be, 40000, 2, 1, 5, DSM_BF16, DSM_F32, 0, 0);
	gather_case(be, 70001, 1, 1, 4, DSM_F32, DSM_F32, 0, 1);
	/* n = 0 does nothing; bad arguments are refused with a message naming the op */
	float *d = dev_out(be, 64);
	const void *t[2] = { d, d + 16 };
	CHECK(be->gather(be, 0, NULL, 4, 4, 4, DSM_F32, d + 32, DSM_BF16) == 0, "n = 0: %s", dsm_errmsg());
	float *h = dev_get(be, d, 64, "gather of no blocks");
	for (int i = 0; i < 64; i++)
		if (memcmp(&h[i], &sentinel_bits, 4) != 0) {
			CHECK(0, "a gather of no blocks wrote element %d", i);
			break;
		}
	free(h);
	CHECK(be->gather(be, 2, t, 4, 0, 4, DSM_F32, d + 32, DSM_F32) == DSM_EARG && strstr(dsm_errmsg(), "gather"),
	      "last_rows 0: %s", dsm_errmsg());
	CHECK(be->gather(be, 2, t, 4, 5, 4, DSM_F32, d + 32, DSM_F32) == DSM_EARG, "last_rows 5 of 4: %s", dsm_errmsg());
	CHECK(be->gather(be, -1, t, 4, 4, 4, DSM_F32, d + 32, DSM_F32) == DSM_EARG, "n = -1: %s", dsm_errmsg());
	CHECK(be->gather(be, 2, t, 4, 4, 4, DSM_F8_E4M3, d + 32, DSM_F32) == DSM_EUNSUPPORTED &&
	      strstr(dsm_errmsg(), "gather"), "gather from F8: %s", dsm_errmsg());
	be->free(be, d);
}

static void test_fp8_round(struct dsm_backend *be)
{
	/* ragged rows, whole blocks, and more 128-value blocks than one grid holds (600 x 16384) */
	static const int64_t shapes[][2] = { { 5, 300 }, { 3, 128 }, { 2, 1 }, { 600, 16384 } };
	for (int si = 0; si < 4; si++)
		for (int ue8m0 = 0; ue8m0 < 2; ue8m0++) {
			int64_t n = shapes[si][0], d = shapes[si][1];
			size_t nv = (size_t)(n * d);
			float *x = malloc(nv * 4);
			for (int64_t r = 0; r < n; r++)
				for (int64_t j = 0; j < d; j++) {
					float v = (float)ldexp(urand(), (int)(rnd() % 30) - 15);
					if (r == 1 && d > 1) /* amax 448 / 8: an exact power-of-two scale, values into FP8's subnormals */
						v = j % 128 == 5 ? 56.0f : (float)ldexp(urand() * 50, -(int)(rnd() % 16));
					else if (r == 2)
						v = urand() * 1e-5f; /* under the 1e-4 floor */
					else if (r == 3 && j % 7 == 0)
						v = j % 14 ? NAN : 0.0f;
					x[r * d + j] = v;
				}
			float *dx = dev_out(be, nv);
			be->copy_in(be, dx, x, nv * 4);
			CHECK(be->fp8_round(be, n, d, dx, ue8m0) == 0, "%s", dsm_errmsg());
			dsm_ref_fp8_round(n, d, x, ue8m0);
			float *got = dev_get(be, dx, nv, "fp8_round");
			int64_t at = first_diff(got, x, (int64_t)nv);
			CHECK(at < 0, "fp8_round n=%lld d=%lld ue8m0=%d: element %lld is %g, want %g", (long long)n, (long long)d,
			      ue8m0, (long long)at, got[at < 0 ? 0 : at], x[at < 0 ? 0 : at]);
			be->free(be, dx);
			free(x), free(got);
		}
	CHECK(be->fp8_round(be, 0, 128, NULL, 0) == 0, "n = 0: %s", dsm_errmsg());
}

/* The glue ops in order on a queue: add, scale, F32 -> BF16 -> F32 (the stream keeps their order). */
static void test_glue_queue(struct dsm_backend *be)
{
	int64_t n = 5000;
	size_t nb = (size_t)n * 4;
	float *x = rand_buf((size_t)n, 3), *y = rand_buf((size_t)n, 3), *got = malloc(nb), *want = malloc(nb);
	float *dx = dev_put(be, x, nb), *dy = dev_put(be, y, nb), *dz = dev_out(be, (size_t)n);
	uint16_t *dh = be->alloc(be, (size_t)n * 2);
	struct dsm_queue *q;
	struct dsm_event *e;
	CHECK(be->queue_create(be, &q) == 0 && be->event_create(be, &e) == 0, "%s", dsm_errmsg());
	be->set_queue(be, q);
	CHECK(be->add(be, n, dx, dy) == 0 && be->scale(be, n, dx, 0.5f) == 0 &&
	      be->convert(be, 1, n, dx, DSM_F32, n, dh, DSM_BF16, n) == 0 &&
	      be->convert(be, 1, n, dh, DSM_BF16, n, dz, DSM_F32, n) == 0 &&
	      be->copy_out(be, got, dz, nb) == 0 && be->event_record(be, e, q) == 0, "%s", dsm_errmsg());
	be->set_queue(be, NULL);
	CHECK(be->event_sync(be, e) == 0, "%s", dsm_errmsg());
	for (int64_t i = 0; i < n; i++)
		want[i] = dsm_bf16_to_f32(dsm_f32_to_bf16((x[i] + y[i]) * 0.5f));
	int64_t at = first_diff(got, want, n);
	CHECK(at < 0, "glue on a queue: element %lld is %g, want %g", (long long)at, got[at < 0 ? 0 : at],
	      want[at < 0 ? 0 : at]);
	be->event_destroy(be, e);
	be->queue_destroy(be, q);
	be->free(be, dx), be->free(be, dy), be->free(be, dz), be->free(be, dh);
	free(x), free(y), free(got), free(want);
}

/* ---- attention --------------------------------------------------------------------------------------- */

static void test_attn_full(struct dsm_backend *be)
{
	/* DeepSeek's head: 128 nope + 64 rope, 128 values; T queries at positions S - T .. S - 1 */
	int64_t T = 9, S = 300, dn = 128, dr = 64, dv = 128, ldq = dn + dr + 8, ldo = dv + 4;
	float *q = rand_buf((size_t)(T * ldq), 1), *kv = rand_buf((size_t)(S * (dn + dv)), 1);
	float *kpe = rand_buf((size_t)(S * dr), 1);
	float *dq = dev_put(be, q, (size_t)(T * ldq) * 4), *dkv = dev_put(be, kv, (size_t)(S * (dn + dv)) * 4);
	float *dkpe = dev_put(be, kpe, (size_t)(S * dr) * 4);
	int64_t n_keys[9];
	int32_t sel[9][20], every[9][300];
	struct dsm_attn_mask mh[9], md[9], ah[9], ad[9];
	void *dsel[9], *devery[9];
	for (int64_t t = 0; t < T; t++) {
		n_keys[t] = S - T + t + 1;
		for (int j = 0; j < 20; j++)
			sel[t][j] = (int32_t)(j * (n_keys[t] - 1) / 19);
		for (int64_t j = 0; j < n_keys[t]; j++)
			every[t][j] = (int32_t)j;
		dsel[t] = dev_put(be, sel[t], sizeof sel[t]);
		devery[t] = dev_put(be, every[t], sizeof(int32_t) * (size_t)n_keys[t]);
		mh[t] = (struct dsm_attn_mask){ sel[t], 20 };
		md[t] = (struct dsm_attn_mask){ dsel[t], 20 };
		ah[t] = (struct dsm_attn_mask){ every[t], n_keys[t] };
		ad[t] = (struct dsm_attn_mask){ devery[t], n_keys[t] };
	}
	int64_t *dn_keys = dev_put(be, n_keys, sizeof n_keys);
	size_t no = (size_t)(T * ldo);
	float *causal = NULL;
	for (int m = 0; m < 3; m++) {
		float *dout = dev_out(be, no), *orf = calloc(no, 4);
		struct dsm_attn_full_args a = { .n_q = T, .dn = dn, .dr = dr, .dv = dv, .q = dq, .ldq = ldq, .kv = dkv,
						.k_pe = dkpe, .n_keys = dn_keys, .mask = m == 0 ? NULL : m == 1 ? md : ad,
						.scale = 0.07f, .out = dout, .ldo = ldo };
		CHECK(be->attn_full(be, &a) == 0, "%s", dsm_errmsg());
		float *o = dev_get(be, dout, no, "attn_full");
		a.q = q, a.kv = kv, a.k_pe = kpe, a.n_keys = n_keys, a.mask = m == 0 ? NULL : m == 1 ? mh : ah, a.out = orf;
		CHECK(dsm_ref_attn_full(&a) == 0, "%s", dsm_errmsg());
		for (int64_t t = 0; t < T; t++)
			for (int64_t j = dv; j < ldo; j++)
				o[t * ldo + j] = 0; /* the gaps are not attn_full's */
		CHECK_NMSE(o, orf, no, 5e-4, "attn_full mask=%d", m);
		CHECK_NMSE(o, orf, no, 1e-6, "attn_full softmax mask=%d", m);
		if (m == 0)
			causal = o;
		else {
			if (m == 2)
				CHECK(memcmp(causal, o, no * 4) == 0, "selecting every key differs from the causal mask");
			free(o);
		}
		be->free(be, dout);
		free(orf);
	}
	for (int64_t t = 0; t < T; t++)
		be->free(be, dsel[t]), be->free(be, devery[t]);
	be->free(be, dq), be->free(be, dkv), be->free(be, dkpe), be->free(be, dn_keys);
	free(q), free(kv), free(kpe), free(causal);
}

static void test_attn_latent(struct dsm_backend *be)
{
	int64_t H = 16, r = 512, dr = 64;
	static const int64_t Ss[] = { 1, 37, 3000 };
	float *ql = rand_buf((size_t)(H * r), 1), *qp = rand_buf((size_t)(H * dr), 1);
	float *dql = dev_put(be, ql, (size_t)(H * r) * 4), *dqp = dev_put(be, qp, (size_t)(H * dr) * 4);
	for (int si = 0; si < 3; si++)
		for (int bf = 0; bf < 2; bf++)
			for (int msk = 0; msk < 2; msk++) {
				int64_t S = Ss[si];
				float *c = rand_buf((size_t)(S * r), 1), *p = rand_buf((size_t)(S * dr), 1);
				size_t es = bf ? 2 : 4;
				void *cc = malloc((size_t)(S * r) * es), *pc = malloc((size_t)(S * dr) * es);
				for (int64_t i = 0; i < S * r; i++)
					bf ? (void)(((uint16_t *)cc)[i] = dsm_f32_to_bf16(c[i])) : (void)(((float *)cc)[i] = c[i]);
				for (int64_t i = 0; i < S * dr; i++)
					bf ? (void)(((uint16_t *)pc)[i] = dsm_f32_to_bf16(p[i])) : (void)(((float *)pc)[i] = p[i]);
				int64_t n_sel = (S + 2) / 3;
				int32_t *sel = malloc(sizeof(int32_t) * (size_t)n_sel);
				for (int64_t j = 0; j < n_sel; j++)
					sel[j] = (int32_t)(3 * j);
				void *dc = dev_put(be, cc, (size_t)(S * r) * es), *dp = dev_put(be, pc, (size_t)(S * dr) * es);
				int32_t *dsel = dev_put(be, sel, sizeof(int32_t) * (size_t)n_sel);
				size_t no = (size_t)(H * r);
				float *dout = dev_out(be, no), *orf = malloc(no * 4);
				struct dsm_attn_latent_args a = { .n_heads = H, .r = r, .dr = dr, .q_lat = dql, .q_pe = dqp,
								  .cache_dtype = bf ? DSM_BF16 : DSM_F32, .c = dc, .k_pe = dp,
								  .n_keys = S, .mask = { msk ? dsel : NULL, msk ? n_sel : 0 },
								  .scale = 0.04f, .o_lat = dout };
				CHECK(be->attn_latent(be, &a) == 0, "%s", dsm_errmsg());
				float *o = dev_get(be, dout, no, "attn_latent");
				a.q_lat = ql, a.q_pe = qp, a.c = cc, a.k_pe = pc, a.mask.sel = msk ? sel : NULL, a.o_lat = orf;
				CHECK(dsm_ref_attn_latent(&a) == 0, "%s", dsm_errmsg());
				CHECK_NMSE(o, orf, no, 5e-4, "attn_latent keys=%lld bf16=%d sel=%d", (long long)S, bf, msk);
				CHECK_NMSE(o, orf, no, 1e-6, "attn_latent softmax keys=%lld bf16=%d sel=%d", (long long)S, bf, msk);
				be->free(be, dc), be->free(be, dp), be->free(be, dsel), be->free(be, dout);
				free(c), free(p), free(cc), free(pc), free(sel), free(o), free(orf);
			}
	be->free(be, dql), be->free(be, dqp);
	free(ql), free(qp);
}

/* A cache of S keys (latent rows [S, r], rope keys [S, dr]) as attn_latent sees it in the KV pool: blocks of
 * block_rows keys in shuffled order (so the table is not in address order), each allocated on its own (separate;
 * the last one only as long as its keys) or all in one pool. */
struct paged_cache {
	int64_t nb;
	void **cblk, **pblk;            /* device blocks, in key order */
	void *cpool, *ppool;            /* or NULL: the blocks are separate */
	const void **ctab, **ptab;      /* the host tables given to the op */
};
static void paged_cache_init(struct dsm_backend *be, struct paged_cache *pc, const void *c, const void *p, int64_t S,
			     int64_t r, int64_t dr, int64_t block_rows, size_t es, int separate)
{
	int64_t nb = (S + block_rows - 1) / block_rows;
	size_t cb = (size_t)(block_rows * r) * es, pb = (size_t)(block_rows * dr) * es;
	pc->nb = nb;
	pc->cblk = malloc(sizeof(void *) * (size_t)nb), pc->pblk = malloc(sizeof(void *) * (size_t)nb);
	pc->ctab = malloc(sizeof(void *) * (size_t)nb), pc->ptab = malloc(sizeof(void *) * (size_t)nb);
	pc->cpool = pc->ppool = NULL;
	int64_t *perm = malloc(sizeof(int64_t) * (size_t)nb);
	for (int64_t b = 0; b < nb; b++)
		perm[b] = b;
	for (int64_t b = nb - 1; b > 0; b--) {
		int64_t j = (int64_t)(rnd() % (uint32_t)(b + 1)), t = perm[b];
		perm[b] = perm[j], perm[j] = t;
	}
	char *hc = NULL, *hp = NULL;
	if (!separate) { /* block perm[i] at place i of the pool */
		hc = calloc((size_t)nb, cb), hp = calloc((size_t)nb, pb);
		pc->cpool = dev_put(be, hc, (size_t)nb * cb), pc->ppool = dev_put(be, hp, (size_t)nb * pb);
	}
	for (int64_t i = 0; i < nb; i++) {
		int64_t b = perm[i], k0 = b * block_rows, n = S - k0 < block_rows ? S - k0 : block_rows;
		const char *cs = (const char *)c + (size_t)(k0 * r) * es, *ps = (const char *)p + (size_t)(k0 * dr) * es;
		if (separate) {
			pc->cblk[b] = dev_put(be, cs, (size_t)(n * r) * es);
			pc->pblk[b] = dev_put(be, ps, (size_t)(n * dr) * es);
		} else {
			memcpy(hc + (size_t)i * cb, cs, (size_t)(n * r) * es);
			memcpy(hp + (size_t)i * pb, ps, (size_t)(n * dr) * es);
			pc->cblk[b] = (char *)pc->cpool + (size_t)i * cb;
			pc->pblk[b] = (char *)pc->ppool + (size_t)i * pb;
		}
	}
	if (!separate) {
		CHECK(be->copy_in(be, pc->cpool, hc, (size_t)nb * cb) == 0 &&
		      be->copy_in(be, pc->ppool, hp, (size_t)nb * pb) == 0, "%s", dsm_errmsg());
		free(hc), free(hp);
	}
	for (int64_t b = 0; b < nb; b++)
		pc->ctab[b] = pc->cblk[b], pc->ptab[b] = pc->pblk[b];
	free(perm);
}
static void paged_cache_free(struct dsm_backend *be, struct paged_cache *pc)
{
	if (pc->cpool)
		be->free(be, pc->cpool), be->free(be, pc->ppool);
	else
		for (int64_t b = 0; b < pc->nb; b++)
			be->free(be, pc->cblk[b]), be->free(be, pc->pblk[b]);
	free(pc->cblk), free(pc->pblk), free(pc->ctab), free(pc->ptab);
}

/* attn_latent over a cache in blocks of block_rows keys must give the contiguous call's result bit for bit (the
 * same kernel arithmetic in the same order); on a queue the host tables are overwritten right after the call. */
static void paged_latent_case(struct dsm_backend *be, int64_t H, int64_t r, int64_t dr, int64_t S, int64_t block_rows,
			      int bf, int msk, int on_queue, int separate)
{
	size_t es = bf ? 2 : 4;
	float *ql = rand_buf((size_t)(H * r), 1), *qp = rand_buf((size_t)(H * dr), 1);
	float *c = rand_buf((size_t)(S * r), 1), *p = rand_buf((size_t)(S * dr), 1);
	void *cc = malloc((size_t)(S * r) * es), *pcc = malloc((size_t)(S * dr) * es);
	for (int64_t i = 0; i < S * r; i++)
		bf ? (void)(((uint16_t *)cc)[i] = dsm_f32_to_bf16(c[i])) : (void)(((float *)cc)[i] = c[i]);
	for (int64_t i = 0; i < S * dr; i++)
		bf ? (void)(((uint16_t *)pcc)[i] = dsm_f32_to_bf16(p[i])) : (void)(((float *)pcc)[i] = p[i]);
	/* a random ascending selection, the last key always in it */
	int32_t *sel = malloc(sizeof(int32_t) * (size_t)S);
	int64_t n_sel = 0;
	for (int64_t s = 0; s < S; s++)
		if (s == S - 1 || rnd() % 2)
			sel[n_sel++] = (int32_t)s;
	float *dql = dev_put(be, ql, (size_t)(H * r) * 4), *dqp = dev_put(be, qp, (size_t)(H * dr) * 4);
	void *dc = dev_put(be, cc, (size_t)(S * r) * es), *dp = dev_put(be, pcc, (size_t)(S * dr) * es);
	int32_t *dsel = dev_put(be, sel, sizeof(int32_t) * (size_t)n_sel);
	struct paged_cache pc;
	paged_cache_init(be, &pc, cc, pcc, S, r, dr, block_rows, es, separate);
	size_t no = (size_t)(H * r);
	float *dcont = dev_out(be, no), *dpaged = dev_out(be, no);
	struct dsm_attn_latent_args a = { .n_heads = H, .r = r, .dr = dr, .q_lat = dql, .q_pe = dqp,
					  .cache_dtype = bf ? DSM_BF16 : DSM_F32, .c = dc, .k_pe = dp, .n_keys = S,
					  .mask = { msk ? dsel : NULL, msk ? n_sel : 0 }, .scale = 0.04f, .o_lat = dcont };
	CHECK(be->attn_latent(be, &a) == 0, "%s", dsm_errmsg());
	a.c = NULL, a.k_pe = NULL, a.c_blocks = pc.ctab, a.pe_blocks = pc.ptab, a.block_rows = block_rows;
	a.o_lat = dpaged;
	struct dsm_queue *q = NULL;
	struct dsm_event *e = NULL;
	if (on_queue) {
		CHECK(be->queue_create(be, &q) == 0 && be->event_create(be, &e) == 0, "%s", dsm_errmsg());
		be->set_queue(be, q);
	}
	CHECK(be->attn_latent(be, &a) == 0, "paged: %s", dsm_errmsg());
	if (on_queue) {
		for (int64_t b = 0; b < pc.nb; b++) /* the call has read them: these must not matter */
			pc.ctab[b] = pc.cblk[0], pc.ptab[b] = NULL;
		CHECK(be->event_record(be, e, q) == 0, "%s", dsm_errmsg());
		be->set_queue(be, NULL);
		CHECK(be->event_sync(be, e) == 0, "%s", dsm_errmsg());
		be->event_destroy(be, e);
		be->queue_destroy(be, q);
	}
	float *want = dev_get(be, dcont, no, "attn_latent"), *got = dev_get(be, dpaged, no, "paged attn_latent");
	int64_t at = first_diff(got, want, (int64_t)no);
	CHECK(at < 0, "paged attn_latent keys=%lld block_rows=%lld bf16=%d sel=%d%s: element %lld is %.9g, contiguous %.9g",
	      (long long)S, (long long)block_rows, bf, msk, on_queue ? " on a queue" : "", (long long)at,
	      at < 0 ? 0.0 : (double)got[at], at < 0 ? 0.0 : (double)want[at]);
	paged_cache_free(be, &pc);
	be->free(be, dql), be->free(be, dqp), be->free(be, dc), be->free(be, dp), be->free(be, dsel);
	be->free(be, dcont), be->free(be, dpaged);
	free(ql), free(qp), free(c), free(p), free(cc), free(pcc), free(sel), free(want), free(got);
}

static void test_attn_latent_paged(struct dsm_backend *be)
{
	/* blocks of 64 keys, each allocated on its own: one partial block, whole blocks, a partial last block */
	static const int64_t Ss[] = { 1, 64, 200, 3000 };
	for (int si = 0; si < 4; si++)
		for (int bf = 0; bf < 2; bf++)
			for (int msk = 0; msk < 2; msk++)
				paged_latent_case(be, 16, 512, 64, Ss[si], 64, bf, msk, 0, 1);
	paged_latent_case(be, 16, 512, 64, 3000, 64, 1, 1, 1, 1);
	paged_latent_case(be, 16, 512, 64, 1000, 64, 0, 0, 1, 1);
	/* other block sizes in one pool; 1-row blocks up to a staging slot's worth of blocks (32768) */
	paged_latent_case(be, 8, 96, 32, 300, 7, 1, 1, 0, 0);
	paged_latent_case(be, 8, 32, 8, 32768, 1, 0, 0, 0, 0);
	paged_latent_case(be, 8, 32, 8, 32768, 1, 1, 1, 1, 0);
	/* refused: blocks of < 1 row, no rope key table, a table of more blocks than a slot holds */
	float *o = dev_out(be, 64);
	const void *t[1] = { o };
	struct dsm_attn_latent_args a = { .n_heads = 1, .r = 32, .dr = 8, .q_lat = o, .q_pe = o,
					  .cache_dtype = DSM_F32, .c_blocks = t, .pe_blocks = t, .block_rows = 0,
					  .n_keys = 1, .scale = 1, .o_lat = o + 32 };
	CHECK(be->attn_latent(be, &a) == DSM_EARG && strstr(dsm_errmsg(), "attn_latent"), "block_rows 0: %s",
	      dsm_errmsg());
	a.block_rows = -3;
	CHECK(be->attn_latent(be, &a) == DSM_EARG, "block_rows -3: %s", dsm_errmsg());
	a.block_rows = 4, a.pe_blocks = NULL;
	CHECK(be->attn_latent(be, &a) == DSM_EARG, "no rope key table: %s", dsm_errmsg());
	a.block_rows = 1, a.pe_blocks = t, a.n_keys = 32769;
	CHECK(be->attn_latent(be, &a) == DSM_EARG && strstr(dsm_errmsg(), "32769"), "32769 blocks: %s", dsm_errmsg());
	float *h = dev_get(be, o, 64, "refused attn_latent");
	for (int i = 0; i < 64; i++)
		if (memcmp(&h[i], &sentinel_bits, 4) != 0) {
			CHECK(0, "a refused attn_latent wrote element %d", i);
			break;
		}
	free(h);
	be->free(be, o);
}

static void test_indexer(struct dsm_backend *be)
{
	int64_t H = 64, d = 128, S = 1000;
	float *q = rand_buf((size_t)(H * d), 1), *w = rand_buf((size_t)H, 1), *k = rand_buf((size_t)(S * d), 1);
	float *dq = dev_put(be, q, (size_t)(H * d) * 4), *dw = dev_put(be, w, (size_t)H * 4);
	float *dk = dev_put(be, k, (size_t)(S * d) * 4), *dout = dev_out(be, (size_t)S), *orf = malloc((size_t)S * 4);
	CHECK(be->indexer_scores(be, H, d, dq, dw, dk, NULL, 0, S, dout) == 0, "%s", dsm_errmsg());
	float *o = dev_get(be, dout, (size_t)S, "indexer_scores");
	dsm_ref_indexer_scores(H, d, q, w, k, S, orf);
	CHECK_NMSE(o, orf, (size_t)S, 5e-4, "indexer_scores");
	be->free(be, dq), be->free(be, dw), be->free(be, dk), be->free(be, dout);
	free(q), free(w), free(k), free(o), free(orf);
}

/* ---- selection --------------------------------------------------------------------------------------- */

static void test_topk(struct dsm_backend *be)
{
	static const int64_t ns[] = { 1, 100, 5000, 100000 };
	for (int ni = 0; ni < 4; ni++)
		for (int kind = 0; kind < 3; kind++) {
			int64_t n = ns[ni], k = kind == 0 ? 1 : kind == 1 ? (n + 1) / 2 : (n < 2048 ? n : 2048);
			float *x = malloc(sizeof(float) * (size_t)n);
			for (int64_t i = 0; i < n; i++) {
				uint32_t r = rnd() % 32;
				/* ties, zeros of both signs, infinities, NaN */
				x[i] = r == 0 ? NAN : r == 1 ? -0.0f : r == 2 ? 0.0f : r == 3 ? INFINITY : r == 4 ? -INFINITY :
				       r < 16 ? (float)(rnd() % 8) : urand();
			}
			int32_t *idx = malloc(sizeof(int32_t) * (size_t)k), *ref = malloc(sizeof(int32_t) * (size_t)k);
			float *dx = dev_put(be, x, sizeof(float) * (size_t)n);
			int32_t *didx = (int32_t *)dev_out(be, (size_t)k);
			CHECK(be->topk(be, dx, n, k, didx) == 0, "%s", dsm_errmsg());
			float *got = dev_get(be, (float *)didx, (size_t)k, "topk");
			memcpy(idx, got, sizeof(int32_t) * (size_t)k);
			CHECK(dsm_ref_topk(x, n, k, ref) == 0, "%s", dsm_errmsg());
			CHECK(memcmp(idx, ref, sizeof(int32_t) * (size_t)k) == 0, "topk n=%lld k=%lld differs", (long long)n,
			      (long long)k);
			be->free(be, dx), be->free(be, didx);
			free(x), free(idx), free(ref), free(got);
		}
	CHECK(be->topk(be, NULL, 3, 4, NULL) == DSM_EARG, "topk with k > n accepted");
}

static void test_route(struct dsm_backend *be)
{
	static const int shapes[][4] = { { 256, 8, 4, 8 }, { 64, 1, 1, 6 }, { 16, 8, 3, 5 } };
	for (int si = 0; si < 3; si++) {
		int64_t T = 33, E = shapes[si][0];
		int K = shapes[si][3];
		float *logits = rand_buf((size_t)(T * E), 4), *bias = rand_buf((size_t)E, 0.5f);
		for (int64_t i = 0; i + 1 < T * E; i += 7)
			logits[i] = logits[i + 1]; /* ties */
		size_t nk = (size_t)(T * K);
		int32_t *idr = malloc(sizeof(int32_t) * nk);
		float *wr = malloc(sizeof(float) * nk);
		float *dl = dev_put(be, logits, sizeof(float) * (size_t)(T * E)), *db = dev_put(be, bias, sizeof(float) * (size_t)E);
		int32_t *didx = (int32_t *)dev_out(be, nk);
		float *dw = dev_out(be, nk);
		struct dsm_route_args a = { T, E, dl, db, shapes[si][1], shapes[si][2], K, 1, 2.5f, didx, dw };
		CHECK(be->route(be, &a) == 0, "%s", dsm_errmsg());
		float *gi = dev_get(be, (float *)didx, nk, "route idx"), *gw = dev_get(be, dw, nk, "route weight");
		a.logits = logits, a.bias = bias, a.idx = idr, a.weight = wr;
		CHECK(dsm_ref_route(&a) == 0, "%s", dsm_errmsg());
		CHECK(memcmp(gi, idr, sizeof(int32_t) * nk) == 0, "route E=%lld: experts differ", (long long)E);
		CHECK_NMSE(gw, wr, nk, 1e-7, "route E=%lld weights", (long long)E);
		be->free(be, dl), be->free(be, db), be->free(be, didx), be->free(be, dw);
		free(logits), free(bias), free(idr), free(wr), free(gi), free(gw);
	}
}

/* ---- queues and events ------------------------------------------------------------------------------- */

static void test_queues(struct dsm_backend *be)
{
	int64_t n = 64, d = 1024;
	size_t nd = (size_t)(n * d);
	struct dsm_queue *q1 = NULL, *q2 = NULL;
	struct dsm_event *e1 = NULL, *e2 = NULL, *e3 = NULL;
	CHECK(be->queue_create(be, &q1) == 0 && be->queue_create(be, &q2) == 0, "%s", dsm_errmsg());
	CHECK(be->event_create(be, &e1) == 0 && be->event_create(be, &e2) == 0 && be->event_create(be, &e3) == 0, "%s",
	      dsm_errmsg());
	float *hx = be->host_alloc(be, nd * 4), *hy = be->host_alloc(be, nd * 4);
	CHECK(hx && hy, "host_alloc: %s", dsm_errmsg());
	if (!q1 || !q2 || !e1 || !e2 || !e3 || !hx || !hy)
		return;
	float *w = rand_buf((size_t)d, 1), *ref = malloc(nd * 4);
	for (size_t i = 0; i < nd; i++)
		hx[i] = urand();
	float *dw = dev_put(be, w, (size_t)d * 4), *dx = be->alloc(be, nd * 4), *dy = be->alloc(be, nd * 4);
	/* q1: copy in, normalize; q2 waits for q1, transforms, copies out */
	be->set_queue(be, q1);
	CHECK(be->copy_in(be, dx, hx, nd * 4) == 0, "%s", dsm_errmsg());
	CHECK(be->rmsnorm(be, n, d, dx, d, dw, 1e-6f, dy) == 0, "%s", dsm_errmsg());
	CHECK(be->event_record(be, e1, q1) == 0, "%s", dsm_errmsg());
	be->set_queue(be, q2);
	CHECK(be->queue_wait(be, q2, e1) == 0, "%s", dsm_errmsg());
	CHECK(be->hadamard(be, n, d, dy) == 0, "%s", dsm_errmsg());
	CHECK(be->copy_out(be, hy, dy, nd * 4) == 0, "%s", dsm_errmsg());
	CHECK(be->event_record(be, e2, q2) == 0, "%s", dsm_errmsg());
	be->set_queue(be, NULL);
	CHECK(be->event_sync(be, e2) == 0, "event_sync: %s", dsm_errmsg());
	dsm_ref_rmsnorm(n, d, hx, d, w, 1e-6f, ref);
	dsm_ref_hadamard(n, d, ref);
	CHECK_NMSE(hy, ref, nd, 1e-7, "rmsnorm then hadamard on two queues");
	double sec = -1;
	CHECK(be->event_elapsed(be, e1, e2, &sec) == 0 && sec >= 0, "event_elapsed: %g s, %s", sec, dsm_errmsg());
	/* a failure inside q1: returned at once, skips q1's later work, reported by event_sync and once by sync */
	be->set_queue(be, q1);
	CHECK(be->topk(be, dx, 3, 4, (int32_t *)dy) == DSM_EARG, "topk with k > n accepted on a queue");
	CHECK(be->rmsnorm(be, n, d, dx, d, dw, 1e-6f, dy) < 0, "work after a failure on the queue ran");
	CHECK(be->event_record(be, e3, q1) == 0, "%s", dsm_errmsg());
	be->set_queue(be, NULL);
	CHECK(be->event_sync(be, e3) == DSM_EARG && strstr(dsm_errmsg(), "topk"), "event_sync after a failure: %s",
	      dsm_errmsg());
	CHECK(be->event_sync(be, e2) == 0, "an event before the failure reports it: %s", dsm_errmsg());
	CHECK(be->sync(be) == DSM_EARG, "sync does not report the queue's failure");
	CHECK(be->sync(be) == 0, "sync reports the failure twice: %s", dsm_errmsg());
	/* q2 still works */
	be->set_queue(be, q2);
	CHECK(be->hadamard(be, n, d, dy) == 0, "%s", dsm_errmsg());
	be->set_queue(be, NULL);
	CHECK(be->sync(be) == 0, "%s", dsm_errmsg());
	be->free(be, dw), be->free(be, dx), be->free(be, dy);
	be->host_free(be, hx), be->host_free(be, hy);
	be->event_destroy(be, e1), be->event_destroy(be, e2), be->event_destroy(be, e3);
	be->queue_destroy(be, q1), be->queue_destroy(be, q2);
	free(w), free(ref);
}

static void test_table(struct dsm_backend *be)
{
	static const enum dsm_dtype all[] = { DSM_DTYPE_INVALID, DSM_F8_E4M3, DSM_BF16, DSM_F32 };
	for (int op = 0; op < DSM_OP_COUNT; op++)
		for (int t = 0; t < 4; t++)
			CHECK(be->supports(be, (enum dsm_op)op, all[t]), "op %d dtype %s not supported", op, dsm_dtype_name(all[t]));
	CHECK(be->alloc(be, (size_t)1 << 62) == NULL, "an allocation over the budget succeeded");
	struct dsm_attn_shape shape = { .max_keys = 1 << 17, .max_selected = 2048, .n_heads = 128, .latent = 576,
		.qk_dim = 192, .v_dim = 128 };
	CHECK(be->reserve(be, &shape) == 0, "reserve: %s", dsm_errmsg());
	CHECK(be->sync(be) == 0, "%s", dsm_errmsg());
}

int main(void)
{
	if (dsm_cuda_device_count() == 0) {
		printf("SKIP: no CUDA device\n");
		return 77;
	}
	for (int p = 0; p < 2; p++) {
		struct dsm_backend_options o = { .precision = (enum dsm_precision)p };
		struct dsm_backend *be;
		if (dsm_backend_create(&be, "cuda", &o) < 0) {
			fprintf(stderr, "cuda backend: %s\n", dsm_errmsg());
			return 99;
		}
		test_table(be);
		test_matmul(be);
		test_matmul_heads(be);
		test_ffn(be);
		test_moe(be);
		test_elementwise(be);
		test_add_scale(be);
		test_convert(be);
		test_gather(be);
		test_fp8_round(be);
		test_glue_queue(be);
		test_attn_full(be);
		test_attn_latent(be);
		test_attn_latent_paged(be);
		test_indexer(be);
		test_topk(be);
		test_route(be);
		test_queues(be);
		CHECK(be->sync(be) == 0, "%s", dsm_errmsg());
		printf("precision %s: worst NMSE %.3g\n", dsm_precision_name(be->precision), worst_nmse);
		dsm_backend_destroy(be);
	}
	return TEST_EXIT();
}
