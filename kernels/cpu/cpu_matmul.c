/* Matmuls with FP8 block-scaled, BF16 or F32 weights on the cpu backend.
 *
 * Two paths, both checked against dsm_ref_matmul by tests/test_ops:
 *   - n <= CPU_GEMV_MAX_N (decode): a fused GEMV that dequantizes each weight as it multiplies, threads
 *     over output rows. Nothing is copied.
 *   - larger n (prefill, experts with many tokens): the weight is dequantized one panel of rows at a
 *     time into a small buffer (a few MB) and multiplied by oneDNN. No whole-model copy ever exists.
 * With precision bf16 each dequantized weight (fp8 value x block scale) and each activation is rounded
 * to BF16 before the multiply; accumulation is F32. */
#include "cpu_backend.h"
#include "cpu_team.h"


#include "error.h"
#include "ref_ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define PANEL_BYTES (4u << 20)

static int check(const struct dsm_mat *w)
{
	if (w->dtype != DSM_F8_E4M3 && w->dtype != DSM_BF16 && w->dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "matmul: weight dtype %s not supported", dsm_dtype_name(w->dtype));
	if (w->dtype == DSM_F8_E4M3 && !w->scale)
		return dsm_fail(DSM_EARG, "matmul: F8 weight without block scales");
	return 0;
}

static inline float round_bf16(float x)
{
	return dsm_bf16_to_f32(dsm_f32_to_bf16(x));
}

/* FP8 E4M3 code -> F32, one at a time (ragged ends; load_fp8 below is the vector form): the code's exponent
 * and mantissa bits placed at the top of an F32 exponent/mantissa give the value times 2^-120, for normal
 * codes (an F32 normal) and subnormal ones (an F32 subnormal) alike; the multiply by 2^120 is then exact.
 * NaN codes (never present in weights) come out as +-480. Needs subnormals (no flush-to-zero), the C
 * default. */
static inline float fp8_value(uint8_t code)
{
	union { uint32_t u; float f; } v = { .u = ((uint32_t)(code & 0x80) << 24) | ((uint32_t)(code & 0x7f) << 20) };
	return v.f * 0x1p120f;
}

/* Dot products on 16-float vectors (v16f, cpu_backend.h); the 16 partial sums are added in a fixed order at
 * the end. */
typedef uint32_t v16u __attribute__((vector_size(64)));
typedef uint16_t v16h __attribute__((vector_size(32)));
typedef uint8_t v16b __attribute__((vector_size(16)));

static inline __attribute__((always_inline)) float sum_lanes(v16f a)
{
	float s = 0;
	for (int l = 0; l < LANES; l++)
		s += a[l];
	return s;
}

/* 16 FP8 codes -> F32, the same values as fp8_value, without touching a subnormal F32 (a multiply with a
 * subnormal operand takes a microcode assist, about 100 times slower): normal codes get the exponent bias
 * difference added to their bits, subnormal codes (exponent 0: m * 2^-9) are converted from the integer m. */
typedef int32_t v16i __attribute__((vector_size(64)));
static inline __attribute__((always_inline)) v16f load_fp8(const uint8_t *p)
{
	v16b b;
	memcpy(&b, p, sizeof b);
	v16u u = __builtin_convertvector(__builtin_convertvector(b, v16h), v16u), mag = u & 0x7f;
	v16u normal = (mag << 20) + (120u << 23);
	v16u sub = (v16u)(__builtin_convertvector((v16i)mag, v16f) * 0x1p-9f);
	v16u is_sub = (v16u)(mag < 8);
	return (v16f)(((sub & is_sub) | (normal & ~is_sub)) | ((u & 0x80) << 24));
}

static inline __attribute__((always_inline)) v16f load_bf16(const uint16_t *p)
{
	v16h h;
	memcpy(&h, p, sizeof h);
	return (v16f)(__builtin_convertvector(h, v16u) << 16);
}

/* x rounded to BF16 (nearest even), as F32 bits with the low half zero, 16 at a time (finite inputs). */
static inline __attribute__((always_inline)) v16u bf16_bits(v16f x)
{
	v16u u = (v16u)x;
	return (u + 0x7fff + ((u >> 16) & 1)) & 0xffff0000u;
}

/* x rounded to BF16 and back (finite inputs). */
static inline __attribute__((always_inline)) v16f round_bf16_v(v16f x)
{
	return (v16f)bf16_bits(x);
}

/* Row i of the view, dequantized into df (F32) or db (BF16 bits). */
CPU_CLONES static void dequant_row(const struct dsm_mat *w, int64_t i, int bf16, float *df, uint16_t *db)
{
	int64_t cols = w->cols, bc = (cols + DSM_BLOCK - 1) / DSM_BLOCK, r = w->row0 + i;
	if (w->dtype == DSM_F8_E4M3) {
		const uint8_t *src = (const uint8_t *)w->data + (size_t)r * (size_t)cols;
		const float *sc = w->scale + (r / DSM_BLOCK) * bc;
		for (int64_t j0 = 0; j0 < cols; j0 += DSM_BLOCK) {
			int64_t j1 = j0 + DSM_BLOCK < cols ? j0 + DSM_BLOCK : cols;
			float s = sc[j0 / DSM_BLOCK];
			int64_t j = j0;
			for (; j + LANES <= j1; j += LANES) {
				v16f v = load_fp8(src + j) * s;
				if (bf16) {
					v16h h = __builtin_convertvector(bf16_bits(v) >> 16, v16h);
					memcpy(db + j, &h, sizeof h);
				} else {
					memcpy(df + j, &v, sizeof v);
				}
			}
			for (; j < j1; j++) {
				if (bf16)
					db[j] = dsm_f32_to_bf16(fp8_value(src[j]) * s);
				else
					df[j] = fp8_value(src[j]) * s;
			}
		}
	} else if (w->dtype == DSM_BF16) {
		const uint16_t *src = (const uint16_t *)w->data + (size_t)r * (size_t)cols;
		if (bf16)
			memcpy(db, src, (size_t)cols * 2);
		else
#pragma omp simd
			for (int64_t j = 0; j < cols; j++)
				df[j] = dsm_bf16_to_f32(src[j]);
	} else {
		const float *src = (const float *)w->data + (size_t)r * (size_t)cols;
		if (bf16)
#pragma omp simd
			for (int64_t j = 0; j < cols; j++)
				db[j] = dsm_f32_to_bf16(src[j]);
		else
			memcpy(df, src, (size_t)cols * 4);
	}
}

/* Dequantizes view rows [i0, i0 + m) into dst [m, cols] (F32 or BF16 bits). */
static void dequant_rows(const struct dsm_mat *w, int64_t i0, int64_t m, int bf16, void *dst)
{
	int64_t cols = w->cols;
#pragma omp parallel for schedule(static) if (m * cols >= CPU_PARALLEL_MIN)
	for (int64_t i = 0; i < m; i++)
		dequant_row(w, i0 + i, bf16, bf16 ? NULL : (float *)dst + i * cols, bf16 ? (uint16_t *)dst + i * cols : NULL);
}

/* x[n, k] -> the form the multiply sees: F32 rounded to BF16 values (gemv), or BF16 bits (oneDNN). */
static const void *prepare_act(struct cpu_backend *cb, int64_t n, int64_t k, const float *x, int bits)
{
	if (cb->be.precision != DSM_PRECISION_BF16)
		return x;
	size_t count = (size_t)n * (size_t)k;
	void *buf = cpu_scratch_get(&cb->act, count * (bits ? 2 : 4));
	if (!buf)
		return NULL;
	if (bits) {
		uint16_t *b = buf;
		for (size_t i = 0; i < count; i++)
			b[i] = dsm_f32_to_bf16(x[i]);
	} else {
		float *f = buf;
		for (size_t i = 0; i < count; i++)
			f[i] = round_bf16(x[i]);
	}
	return buf;
}

/* sum_j W(r, j) x[j] over a row of FP8 blocks: vector partial sums per block, scaled, kept as vectors
 * across blocks (f32: scale applied per block; bf16: per weight, then rounded, as the reference does). */
static inline __attribute__((always_inline)) float dot_fp8_row(const uint8_t *w, const float *sc, const float *x,
							      int64_t n, int bf16)
{
	v16f acc = { 0 };
	float tail = 0;
	for (int64_t j0 = 0; j0 < n; j0 += DSM_BLOCK) {
		int64_t j1 = j0 + DSM_BLOCK < n ? j0 + DSM_BLOCK : n, j = j0;
		float s = sc[j0 / DSM_BLOCK];
		v16f part = { 0 };
		if (!bf16) {
			for (; j + LANES <= j1; j += LANES)
				part += load_fp8(w + j) * load_f32(x + j);
			acc += part * s;
			for (; j < j1; j++)
				tail += fp8_value(w[j]) * x[j] * s;
		} else {
			for (; j + LANES <= j1; j += LANES)
				part += round_bf16_v(load_fp8(w + j) * s) * load_f32(x + j);
			acc += part;
			for (; j < j1; j++)
				tail += round_bf16(fp8_value(w[j]) * s) * x[j];
		}
	}
	return sum_lanes(acc) + tail;
}

static inline __attribute__((always_inline)) float dot_bf16(const uint16_t *w, const float *x, int64_t n)
{
	v16f a = { 0 };
	int64_t j = 0;
	for (; j + LANES <= n; j += LANES)
		a += load_bf16(w + j) * load_f32(x + j);
	float s = sum_lanes(a);
	for (; j < n; j++)
		s += dsm_bf16_to_f32(w[j]) * x[j];
	return s;
}

static inline __attribute__((always_inline)) float dot_f32(const float *w, const float *x, int64_t n, int bf16)
{
	v16f a = { 0 };
	int64_t j = 0;
	for (; j + LANES <= n; j += LANES)
		a += (bf16 ? round_bf16_v(load_f32(w + j)) : load_f32(w + j)) * load_f32(x + j);
	float s = sum_lanes(a);
	for (; j < n; j++)
		s += (bf16 ? round_bf16(w[j]) : w[j]) * x[j];
	return s;
}

/* One output row of the fused GEMV: acc[t] = sum_j x[t, j] W(o, j) for t < n. Compiled for AVX-512,
 * AVX2 and baseline x86-64, chosen at load time. */
CPU_CLONES static void gemv_row(const struct dsm_mat *w, int64_t o, int64_t n, const float *x, float *acc, int bf16)
{
	int64_t cols = w->cols, bc = (cols + DSM_BLOCK - 1) / DSM_BLOCK, r = w->row0 + o;
	for (int64_t t = 0; t < n; t++)
		acc[t] = 0;
	if (w->dtype == DSM_F8_E4M3) {
		const uint8_t *src = (const uint8_t *)w->data + (size_t)r * (size_t)cols;
		const float *sc = w->scale + (r / DSM_BLOCK) * bc;
		for (int64_t t = 0; t < n; t++)
			acc[t] = dot_fp8_row(src, sc, x + t * cols, cols, bf16);
	} else if (w->dtype == DSM_BF16) {
		const uint16_t *src = (const uint16_t *)w->data + (size_t)r * (size_t)cols;
		for (int64_t t = 0; t < n; t++)
			acc[t] = dot_bf16(src, x + t * cols, cols);
	} else {
		const float *src = (const float *)w->data + (size_t)r * (size_t)cols;
		for (int64_t t = 0; t < n; t++)
			acc[t] = dot_f32(src, x + t * cols, cols, bf16);
	}
}

/* Fused dequantizing GEMV: y[t, o] = sum_j x[t, j] W(o, j) for t < n <= CPU_GEMV_MAX_N. */
static void gemv(const struct dsm_mat *w, int64_t n, const float *x, float *y, int bf16)
{
	int64_t rows = w->rows;
#pragma omp parallel for schedule(static) if (rows * w->cols * n >= CPU_PARALLEL_MIN)
	for (int64_t o = 0; o < rows; o++) {
		float acc[CPU_GEMV_MAX_N];
		gemv_row(w, o, n, x, acc, bf16);
		for (int64_t t = 0; t < n; t++)
			y[t * rows + o] = acc[t];
	}
}

struct bf16_job {
	struct cpu_backend *cb;
	const uint16_t *wb, *xb;
	const float *x;
	float *y;
	int64_t rows, cols, n, groups;
	int64_t next; /* the next chunk a thread takes */
};

static void bf16_gemv_part(void *arg, int tid, int team)
{
	struct bf16_job *j = arg;
	double t = dsm_wall_seconds();
	int64_t chunks = 16 * (int64_t)team;
	for (int64_t k; (k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < chunks;) {
		int64_t a = j->groups * k / chunks * 4, b = j->groups * (k + 1) / chunks * 4;
		if (b > j->rows)
			b = j->rows;
		if (a < b)
			cpu_bf16_gemv_rows(j->wb, j->cols, a, b, j->n, j->x, j->xb, j->y + a, j->rows);
	}
	if (tid < DSM_WAIT_MAX_THREADS)
		j->cb->wait.busy[tid * 8] += dsm_wall_seconds() - t;
}

/* The vector GEMV of BF16 weights (bf16_gemv.c): rows in 16 chunks per thread (groups of 4 rows), taken by the
 * threads as they come. */
static int bf16_gemv(struct cpu_backend *cb, const struct dsm_mat *w, int64_t n, const float *x, float *y, int bf16)
{
	int64_t rows = w->rows, cols = w->cols;
	uint16_t *xb = NULL;
	if (bf16) {
		if (!(xb = cpu_scratch_get(&cb->act, sizeof(uint16_t) * (size_t)(n * cpu_bf16_act_ld(cols)))))
			return DSM_ENOMEM;
		cpu_bf16_gemv_pack(x, n, cols, xb);
	}
	struct bf16_job j = { .cb = cb, .wb = (const uint16_t *)w->data + (size_t)w->row0 * (size_t)cols, .xb = xb,
			      .x = x, .y = y, .rows = rows, .cols = cols, .n = n, .groups = (rows + 3) / 4 };
	double t_start = dsm_wall_seconds();
	int team = cpu_par(rows * cols * n >= CPU_PARALLEL_MIN ? 0 : 1, bf16_gemv_part, &j);
	dsm_wait_end(&cb->wait, team, dsm_wall_seconds() - t_start);
	return 0;
}

/* dsm_cpu_bf16_gemv_tune: part k of the measurement is the k-th band of the head's rows on one token. */
struct bf16_parts {
	struct cpu_backend *cb;
	struct dsm_mat w;
	int64_t band;
	const float *x;
	float *y;
	int bf16;
};

static int bf16_part(void *arg, int k, size_t *bytes)
{
	const struct bf16_parts *p = arg;
	struct dsm_mat band = dsm_mat_rows(p->w, k * p->band, p->band);
	*bytes += (size_t)band.rows * (size_t)band.cols * sizeof(uint16_t);
	return bf16_gemv(p->cb, &band, 1, p->x, p->y, p->bf16);
}

#define TUNE_BAND_BYTES (24 << 20) /* per part, at most */
#define TUNE_BAND_MIN (4 << 20)

int dsm_cpu_bf16_gemv_tune(struct dsm_backend *be, const struct dsm_mat *w, struct dsm_gemv_tune_result *r)
{
	struct cpu_backend *cb = cpu_of(be);
	int bf16 = be->precision == DSM_PRECISION_BF16;
	memset(r, 0, sizeof *r);
	r->chosen = cpu_bf16_walk;
	if (strcmp(be->name, "cpu") != 0 || w->dtype != DSM_BF16 || !cpu_bf16_gemv_available(bf16))
		return dsm_fail(DSM_EUNSUPPORTED, "the BF16 decode kernel is not in use");
	int parts = DSM_TUNE_ROUNDS * CPU_BF16_WALKS;
	int64_t row = w->cols * (int64_t)sizeof(uint16_t), band = w->rows / parts;
	if (band * row > TUNE_BAND_BYTES)
		band = TUNE_BAND_BYTES / row;
	if (band * row < TUNE_BAND_MIN)
		return dsm_fail(DSM_EARG, "%.0f MB of BF16 rows: too few to measure on", (double)(w->rows * row) / 1e6);
	float *x = calloc((size_t)(w->cols + band), sizeof(float));
	if (!x)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int64_t j = 0; j < w->cols; j++)
		x[j] = (float)(j % 7) - 3.0f;
	const char *names[CPU_BF16_WALKS];
	for (int v = 0; v < CPU_BF16_WALKS; v++)
		names[v] = cpu_bf16_walks[v].name;
	struct bf16_parts p = { cb, *w, band, x, x + w->cols, bf16 };
	int rc = dsm_tune_variants(CPU_BF16_WALKS, names, &cpu_bf16_walk, bf16_part, &p, "GB/s", r);
	free(x);
	return rc;
}

/* FP8 multiplies go to the expert kernels for every n: their per-token arithmetic does not depend on how
 * many tokens share a call, so decode equals prefill. */
static int use_expert_kernels(const struct cpu_backend *cb, int64_t n)
{
	return cb->experts != NULL && n > 0;
}

/* The stored FP8 matrix behind a view (rows up to the view's end). */
static struct dsm_fp8_mat fp8_stored(const struct dsm_mat *w)
{
	return dsm_fp8_mat_dense(w->data, w->scale, (size_t)(w->row0 + w->rows), (size_t)w->cols);
}

int cpu_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct cpu_backend *cb = cpu_of(be);
	int rc = check(w);
	if (rc < 0 || n <= 0 || w->rows <= 0)
		return rc;
	if (w->dtype == DSM_F8_E4M3 && use_expert_kernels(cb, n)) {
		struct dsm_fp8_mat m = fp8_stored(w);
		return dsm_fp8_matmul_rows(cb->experts, &m, (size_t)w->row0, (size_t)(w->row0 + w->rows), (size_t)n, x, y);
	}
	int bf16 = be->precision == DSM_PRECISION_BF16;
	if (n <= CPU_GEMV_MAX_N && w->dtype == DSM_BF16 && cpu_bf16_gemv_available(bf16))
		return bf16_gemv(cb, w, n, x, y, bf16);
	if (n <= CPU_GEMV_MAX_N) {
		const float *xa = prepare_act(cb, n, w->cols, x, 0);
		if (!xa)
			return DSM_ENOMEM;
		gemv(w, n, xa, y, bf16);
		return 0;
	}
	const void *xa = prepare_act(cb, n, w->cols, x, 1);
	if (!xa)
		return DSM_ENOMEM;
	/* Weights already in the multiply's type are used in place. */
	if ((w->dtype == DSM_F32 && !bf16) || (w->dtype == DSM_BF16 && bf16)) {
		const char *base = (const char *)w->data + (size_t)w->row0 * (size_t)w->cols * dsm_dtype_size(w->dtype);
		return dsm_dnnl_matmul(cb->dnnl, bf16, n, w->rows, w->cols, xa, w->cols, base, w->cols, 1, y,
				       w->rows);
	}
	size_t esize = bf16 ? 2 : 4;
	int64_t p = (int64_t)(PANEL_BYTES / ((size_t)w->cols * esize));
	p = p < DSM_BLOCK ? DSM_BLOCK : p / DSM_BLOCK * DSM_BLOCK;
	if (p > w->rows)
		p = w->rows;
	void *panel = cpu_scratch_get(&cb->panel, (size_t)p * (size_t)w->cols * esize);
	if (!panel)
		return DSM_ENOMEM;
	for (int64_t i0 = 0; i0 < w->rows; i0 += p) {
		int64_t m = w->rows - i0 < p ? w->rows - i0 : p;
		dequant_rows(w, i0, m, bf16, panel);
		rc = dsm_dnnl_matmul(cb->dnnl, bf16, n, m, w->cols, xa, w->cols, panel, w->cols, 1, y + i0, w->rows);
		if (rc < 0)
			return rc;
	}
	return 0;
}

/* y[t, :] += x[t * ldx] * w for t < n: w is one dequantized row, BF16 bits (bf16) or F32. */
CPU_CLONES static void add_scaled_row(const void *w, int bf16, int64_t cols, const float *x, int64_t ldx, int64_t n,
				      float *y)
{
	const uint16_t *wb = w;
	const float *wf = w;
	for (int64_t t = 0; t < n; t++) {
		float xv = x[t * ldx], *yt = y + t * cols;
		if (bf16)
#pragma omp simd
			for (int64_t o = 0; o < cols; o++)
				yt[o] += xv * dsm_bf16_to_f32(wb[o]);
		else
#pragma omp simd
			for (int64_t o = 0; o < cols; o++)
				yt[o] += xv * wf[o];
	}
}

int cpu_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct cpu_backend *cb = cpu_of(be);
	int rc = check(w);
	if (rc < 0 || n <= 0 || w->cols <= 0)
		return rc;
	int bf16 = be->precision == DSM_PRECISION_BF16;
	int64_t rows = w->rows, cols = w->cols;
	size_t esize = bf16 ? 2 : 4;
	void *panel = cpu_scratch_get(&cb->panel, (size_t)(n <= CPU_GEMV_MAX_N ? 1 : rows) * (size_t)cols * esize);
	if (!panel)
		return DSM_ENOMEM;
	if (n <= CPU_GEMV_MAX_N) {
		/* The views used this way are small (one head of kv_b, once per head and layer at decode): one row
		 * of W at a time is dequantized and added to y, so every output's sum runs in ascending i as in
		 * the reference, and the loops run along rows. */
		const float *xa = prepare_act(cb, n, rows, x, 0);
		if (!xa)
			return DSM_ENOMEM;
		memset(y, 0, sizeof(float) * (size_t)(n * cols));
		for (int64_t i = 0; i < rows; i++) {
			dequant_row(w, i, bf16, panel, panel);
			add_scaled_row(panel, bf16, cols, xa + i, rows, n, y);
		}
		return 0;
	}
	const void *xa = prepare_act(cb, n, rows, x, 1);
	if (!xa)
		return DSM_ENOMEM;
	dequant_rows(w, 0, rows, bf16, panel);
	return dsm_dnnl_matmul(cb->dnnl, bf16, n, cols, rows, xa, rows, panel, cols, 0, y, cols);
}

/* Weights (i, c .. c + 16) of a view as the multiply sees them (bf16: rounded, as dequant_row gives them). */
static inline __attribute__((always_inline)) v16f load_w16(const struct dsm_mat *w, int64_t i, int64_t c, int bf16)
{
	int64_t r = w->row0 + i;
	v16f v;
	if (w->dtype == DSM_F8_E4M3) {
		float s = w->scale[(r / DSM_BLOCK) * ((w->cols + DSM_BLOCK - 1) / DSM_BLOCK) + c / DSM_BLOCK];
		v = load_fp8((const uint8_t *)w->data + (size_t)r * (size_t)w->cols + c) * s;
	} else if (w->dtype == DSM_BF16) {
		return load_bf16((const uint16_t *)w->data + (size_t)r * (size_t)w->cols + c);
	} else {
		v = load_f32((const float *)w->data + (size_t)r * (size_t)w->cols + c);
	}
	return bf16 ? round_bf16_v(v) : v;
}

/* y[t * ldy + c] = sum_i xh[t * rows + i] W(i, c) for the rows of one head and the columns from c0, t < n <=
 * CPU_GEMV_MAX_N: 64 columns at a time held in registers while every row is added, in ascending i (the order
 * matmul_t adds them). */
CPU_CLONES static void head_t(const struct dsm_mat *w, int64_t rows, int64_t n, const float *xh, int bf16, float *y,
			      int64_t ldy, int64_t c0)
{
	int64_t cols = w->cols, c = c0;
	for (; c + 4 * LANES <= cols; c += 4 * LANES) {
		v16f acc[CPU_GEMV_MAX_N][4] = { { { 0 } } };
		for (int64_t i = 0; i < rows; i++)
			for (int k = 0; k < 4; k++) {
				v16f v = load_w16(w, i, c + k * LANES, bf16);
				for (int64_t t = 0; t < n; t++)
					acc[t][k] += xh[t * rows + i] * v;
			}
		for (int64_t t = 0; t < n; t++)
			memcpy(y + t * ldy + c, acc[t], sizeof acc[t]);
	}
	for (; c < cols; c++) /* a ragged end, one column at a time */
		for (int64_t t = 0; t < n; t++) {
			float a = 0;
			for (int64_t i = 0; i < rows; i++) {
				float v = dsm_mat_get(w, i, c);
				a += xh[t * rows + i] * (bf16 ? round_bf16(v) : v);
			}
			y[t * ldy + c] = a;
		}
}

struct heads_t_job {
	struct cpu_backend *cb;
	const struct dsm_matmul_heads_args *a;
	struct dsm_fp8_mat fp8;
	float *scratch;
	size_t per;
	int64_t c_fast;
	int bf16;
};

static void heads_t_part(void *arg, int tid, int team)
{
	struct heads_t_job *j = arg;
	const struct dsm_matmul_heads_args *a = j->a;
	const struct dsm_mat *w = a->w;
	int64_t rows = a->head_rows, n = a->n, H = a->n_heads;
	double t0 = dsm_wall_seconds();
	float *xh = j->scratch + j->per * (size_t)tid;
	int64_t h1 = H * (tid + 1) / team;
	for (int64_t h = H * tid / team; h < h1; h++) {
		for (int64_t t = 0; t < n; t++) {
			const float *xt = a->x + t * a->ldx + h * a->x_head;
			for (int64_t i = 0; i < rows; i++)
				xh[t * rows + i] = j->bf16 ? round_bf16(xt[i]) : xt[i];
		}
		struct dsm_mat wh = dsm_mat_rows(*w, h * a->head_stride, rows);
		if (j->c_fast)
			dsm_fp8_rows_t_bf16(&j->fp8, (size_t)wh.row0, (size_t)rows, xh, (size_t)rows, (size_t)n,
					    a->y + h * a->y_head, (size_t)a->ldy,
					    h + 1 < h1 ? (size_t)(wh.row0 + a->head_stride) : SIZE_MAX);
		head_t(&wh, rows, n, xh, j->bf16, a->y + h * a->y_head, a->ldy, j->c_fast);
	}
	if (tid < DSM_WAIT_MAX_THREADS)
		j->cb->wait.busy[tid * 8] += dsm_wall_seconds() - t0;
}

/* The transposed per-head multiply at decode: heads split across the threads. */
static int heads_t_decode(struct cpu_backend *cb, const struct dsm_matmul_heads_args *a)
{
	const struct dsm_mat *w = a->w;
	int bf16 = cb->be.precision == DSM_PRECISION_BF16;
	int64_t rows = a->head_rows, cols = w->cols, n = a->n, nt = cpu_par_threads();
	/* FP8 into BF16 products: by tables of the products (expert_gemv_x86.c), the same arithmetic */
	int64_t c_fast = bf16 && w->dtype == DSM_F8_E4M3 && cb->experts &&
			 dsm_expert_ctx_isa(cb->experts) == DSM_ISA_AVX512BF16 ? cols / 64 * 64 : 0;
	size_t per = ((size_t)(n * rows) + 15) / 16 * 16; /* per thread: the head's inputs [n, rows] */
	float *scratch = cpu_scratch_get(&cb->panel, sizeof(float) * per * (size_t)nt);
	if (!scratch)
		return DSM_ENOMEM;
	struct heads_t_job j = { .cb = cb, .a = a, .fp8 = c_fast ? fp8_stored(w) : (struct dsm_fp8_mat){ 0 },
				 .scratch = scratch, .per = per, .c_fast = c_fast, .bf16 = bf16 };
	double t_start = dsm_wall_seconds();
	int team = cpu_par(a->n_heads > 1 && a->n_heads * rows * cols * n >= CPU_PARALLEL_MIN ? 0 : 1, heads_t_part, &j);
	dsm_wait_end(&cb->wait, team, dsm_wall_seconds() - t_start);
	return 0;
}

int cpu_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *a)
{
	struct cpu_backend *cb = cpu_of(be);
	const struct dsm_mat *w = a->w;
	int rc = check(w);
	int64_t H = a->n_heads, n = a->n, rows = a->head_rows, cols = w->cols;
	if (rc < 0 || H <= 0 || n <= 0)
		return rc;
	if ((H - 1) * a->head_stride + rows > w->rows)
		return dsm_fail(DSM_EARG, "matmul heads: %lld heads of %lld rows at stride %lld in a %lld-row view",
				(long long)H, (long long)rows, (long long)a->head_stride, (long long)w->rows);
	if (!a->transposed && w->dtype == DSM_F8_E4M3 && use_expert_kernels(cb, n) && n <= 8 &&
	    (size_t)n < dsm_expert_ctx_gemm_min_tokens(cb->experts)) {
		struct dsm_fp8_mat m = fp8_stored(w);
		return dsm_fp8_matmul_heads(cb->experts, &m, (size_t)w->row0, (size_t)a->head_stride, (size_t)rows,
					    (size_t)H, (size_t)n, a->x, (size_t)a->ldx, (size_t)a->x_head, a->y,
					    (size_t)a->ldy, (size_t)a->y_head);
	}
	if (a->transposed && n <= CPU_GEMV_MAX_N)
		return heads_t_decode(cb, a);
	/* Else one head at a time: its inputs gathered, the matmul, its outputs scattered. */
	int64_t in = a->transposed ? rows : cols, out = a->transposed ? cols : rows;
	float *xh = cpu_scratch_get(&cb->ffn, sizeof(float) * (size_t)(n * (in + out)));
	if (!xh)
		return DSM_ENOMEM;
	float *yh = xh + n * in;
	for (int64_t h = 0; h < H; h++) {
		struct dsm_mat wh = dsm_mat_rows(*w, h * a->head_stride, rows);
		for (int64_t t = 0; t < n; t++)
			memcpy(xh + t * in, a->x + t * a->ldx + h * a->x_head, sizeof(float) * (size_t)in);
		if ((rc = a->transposed ? cpu_matmul_t(be, &wh, n, xh, yh) : cpu_matmul(be, &wh, n, xh, yh)) < 0)
			return rc;
		for (int64_t t = 0; t < n; t++)
			memcpy(a->y + t * a->ldy + h * a->y_head, yh + t * out, sizeof(float) * (size_t)out);
	}
	return 0;
}

/* An FFN the fused expert kernels take whole: FP8 matrices from their first stored row. */
static int fused_expert(const struct cpu_backend *cb, const struct dsm_ffn_weights *w, struct dsm_expert_fp8 *e)
{
	if (!cb->experts || w->gate.dtype != DSM_F8_E4M3 || w->up.dtype != DSM_F8_E4M3 ||
	    w->down.dtype != DSM_F8_E4M3 || w->gate.row0 || w->up.row0 || w->down.row0)
		return 0;
	struct dsm_fp8_mat g = fp8_stored(&w->gate), u = fp8_stored(&w->up), d = fp8_stored(&w->down);
	if (dsm_expert_fp8_init(e, &g, &u, &d) < 0)
		return 0;
	e->numa_home = w->numa_home;
	return 1;
}

int cpu_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	struct cpu_backend *cb = cpu_of(be);
	int64_t inter = w->gate.rows;
	if (w->up.rows != inter || w->down.cols != inter || w->gate.cols != w->up.cols ||
	    w->down.rows != w->gate.cols)
		return dsm_fail(DSM_EARG, "ffn: inconsistent gate/up/down shapes");
	struct dsm_expert_fp8 e;
	if (n > 0 && fused_expert(cb, w, &e)) /* gate and up in one pass, SwiGLU in cache, then down */
		return dsm_expert_ffn(cb->experts, &e, (size_t)n, x, y);
	float *g = cpu_scratch_get(&cb->ffn, sizeof(float) * (size_t)(2 * n * inter));
	if (!g)
		return DSM_ENOMEM;
	float *u = g + n * inter;
	int rc = cpu_matmul(be, &w->gate, n, x, g);
	if (rc == 0)
		rc = cpu_matmul(be, &w->up, n, x, u);
	if (rc < 0)
		return rc;
	int64_t total = n * inter;
#pragma omp parallel for schedule(static) if (total > 65536)
	for (int64_t i = 0; i < total; i++)
		g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
	return cpu_matmul(be, &w->down, n, g, y);
}

/* The layer as one call of the expert kernels (dsm_moe_layer: one parallel region, every expert's weights
 * read once); experts of other types one at a time through cpu_ffn, summed in the same order. */
int cpu_moe(struct dsm_backend *be, const struct dsm_moe_op_args *a)
{
	struct cpu_backend *cb = cpu_of(be);
	int64_t T = a->n_tokens, E = a->n_experts, k = a->top_k, D;
	if (T <= 0)
		return 0;
	for (int64_t i = 0; i < T * k; i++)
		if (a->idx[i] < 0 || a->idx[i] >= E || !a->experts[a->idx[i]])
			return dsm_fail(DSM_EARG, "moe: token %lld chose expert %d, not given", (long long)(i / k),
					(int)a->idx[i]);
	D = a->shared ? a->shared->gate.cols : a->experts[a->idx[0]]->gate.cols;

	size_t fused_bytes = sizeof(struct dsm_expert_fp8) * (size_t)(E + 1) + sizeof(void *) * (size_t)E;
	struct dsm_expert_fp8 *ex = cpu_scratch_get(&cb->moe, fused_bytes);
	if (!ex)
		return DSM_ENOMEM;
	const struct dsm_expert_fp8 **ep = (const struct dsm_expert_fp8 **)(ex + E + 1);
	int fused = !a->shared || fused_expert(cb, a->shared, &ex[E]);
	for (int64_t e = 0; e < E && fused; e++) {
		ep[e] = NULL;
		if (a->experts[e] && (fused = fused_expert(cb, a->experts[e], &ex[e])))
			ep[e] = &ex[e];
	}
	if (fused) {
		struct dsm_moe_args m = {
			.n_tok = (size_t)T, .top_k = (size_t)k, .x = a->x, .expert_ids = a->idx, .expert_w = a->weight,
			.experts = ep, .n_experts = (size_t)E, .shared = a->shared ? &ex[E] : NULL, .y = a->y,
		};
		return dsm_moe_layer(cb->experts, &m);
	}

	/* One expert at a time: its tokens gathered in token order, its outputs added in ascending expert order. */
	size_t xe_floats = (size_t)(T * D);
	float *xe = cpu_scratch_get(&cb->moe, sizeof(float) * 2 * xe_floats + (sizeof(float) + 4) * (size_t)T);
	if (!xe)
		return DSM_ENOMEM;
	float *ye = xe + xe_floats, *ewt = ye + xe_floats;
	int32_t *etok = (int32_t *)(ewt + T);
	memset(a->y, 0, sizeof(float) * xe_floats);
	for (int64_t e = 0; e < E; e++) {
		int64_t n = 0;
		for (int64_t t = 0; t < T; t++)
			for (int64_t j = 0; j < k; j++)
				if (a->idx[t * k + j] == e) {
					etok[n] = (int32_t)t;
					ewt[n] = a->weight[t * k + j];
					memcpy(xe + n * D, a->x + t * D, sizeof(float) * (size_t)D);
					n++;
				}
		if (n == 0)
			continue;
		int rc = cpu_ffn(be, a->experts[e], n, xe, ye);
		if (rc < 0)
			return dsm_fail_prefix(rc, "moe: expert %lld", (long long)e);
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < D; j++)
				a->y[etok[i] * D + j] += ewt[i] * ye[i * D + j];
	}
	if (a->shared) {
		int rc = cpu_ffn(be, a->shared, T, a->x, ye);
		if (rc < 0)
			return dsm_fail_prefix(rc, "moe: shared expert");
		for (int64_t i = 0; i < T * D; i++)
			a->y[i] += ye[i];
	}
	return 0;
}
