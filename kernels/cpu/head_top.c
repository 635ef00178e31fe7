/* The greedy decode's head: the logits that can be the largest, exact, after reading about half the head.
 *
 * The head W [V, D] is BF16, 2 bytes a weight, and greedy decoding needs only the row of the largest logit. A
 * screen, one byte a weight, bounds every row's logit; only the rows that can still be the largest are then
 * computed, by the head's own GEMV (bf16_gemv.c): the same bits as the full multiply, so the same argmax.
 *
 * The screen (built once, cpu_top_prepare): row r as int8 codes q_r with a scale s_r = max|W_r| / 127, its
 * residual r_r = W_r - s_r q_r, and two constants rounded up:
 *   A_r = ||r_r|| + gamma_D ||W_r||,   B_r = s_r ||q_r||,   gamma_D = D u / (1 - D u), u = 2^-24.
 * Per token: x, the activations the GEMV multiplies (BF16-rounded in bf16 precision), quantized to int16,
 * x = s_x xq + e_x; the screen's value a_r = s_r s_x (q_r . xq) is an exact integer product. Then
 *   |W_r . x - a_r| <= |r_r . x| + s_r |q_r . e_x| <= ||x|| ||r_r|| + ||e_x|| s_r ||q_r||   (Cauchy-Schwarz),
 * and the F32 value y_r the GEMV computes is within gamma_D sum_i |W_ri x_i| <= gamma_D ||W_r|| ||x|| of W_r . x
 * (any order of the additions). So y_r lies in [a_r - b_r, a_r + b_r] with b_r = ||x|| A_r + ||e_x|| B_r (and a
 * margin for the double arithmetic, the flushing of values below 2^-126, and float rounding of A_r, B_r). A row
 * whose upper end is below the largest lower end cannot hold the largest y_r: it gets -INFINITY.
 *
 * The integer products run on AVX-512 VNNI (vpdpbusd: 4 unsigned bytes times 4 signed bytes into a 32-bit
 * sum): the screen stores q_r + 128 in [1, 255], and xq as two signed bytes, xq = 256 xh + xl, so that
 *   q_r . xq = 256 ((q_r + 128) . xh) + (q_r + 128) . xl - 128 sum(xq),
 * two instructions per 64 codes where widening the codes to 16 bits took six. In L2, one thread: 56-116 GB/s
 * of codes against 24-33, which was the memory's rate or below it on hosts that read 30 GB/s a core.
 *
 * Bytes per token: D + 12 per row and D 2 bytes per candidate row, against 2 D per row. On random weights a few
 * rows in ten thousand stay candidates; past an eighth of the rows the whole head is multiplied instead. */
#include "cpu_backend.h"
#include "cpu_team.h"
#include "error.h"
#include "expert_internal.h"

#include <float.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <sys/mman.h>

#define DSM_INT8_TARGET __attribute__((target("avx512f,avx512bw,avx512vl")))
#define DSM_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))
#define ALWAYS_INLINE inline __attribute__((always_inline))
#define ROWS 4
#define HUGE_PAGE (2u << 20)

void cpu_top_free(struct cpu_top *t)
{
	free(t->q);
	free(t->row);
	*t = (struct cpu_top){ 0 };
}

/* x's two signed bytes xq = 256 xh + xl: xl in [-128, 127], and xh = floor((xq + 128) / 256) in [-128, 127]
 * for |xq| <= 32639. */
int32_t cpu_top_xq_max(void)
{
	return 32639;
}

void cpu_top_split(int32_t xq, int8_t *lo, int8_t *hi)
{
	int32_t l = ((xq + 128) & 255) - 128;
	*lo = (int8_t)l;
	*hi = (int8_t)((xq - l) / 256);
}

/* ---- The integer dot: rows [r0, r1) of the codes q [*, cols] with x, dot = sum_c q_rc xq_c ---- */

void cpu_top_dots_scalar(const uint8_t *q, int64_t cols, int64_t r0, int64_t r1, const int16_t *xq, int64_t *dot)
{
	for (int64_t r = r0; r < r1; r++) {
		int64_t s = 0;
		for (int64_t c = 0; c < cols; c++)
			s += (int64_t)q[r * cols + c] * xq[c];
		dot[r - r0] = s;
	}
}

/* R rows from row r, U column chunks of 64 a step (U chains a byte of x, exact in any order: integers).
 * vpdpbusd multiplies 4 unsigned codes by 4 signed bytes of x and adds the 4 products to a 32-bit lane; a lane
 * takes cols / 16 products of at most 255 x 128 in magnitude, and a row's total cols of them: no overflow for
 * cols <= CPU_TOP_MAX_COLS. */
DSM_VNNI_TARGET static ALWAYS_INLINE void rows_u8(const uint8_t *q, int64_t cols, int64_t r, const int R, const int U,
						   const int8_t *xs, int64_t ld, int64_t *dot, int64_t pf, int64_t far)
{
	__m512i lo[ROWS * 2], hi[ROWS * 2];
#pragma GCC unroll 8
	for (int i = 0; i < R * U; i++)
		lo[i] = hi[i] = _mm512_setzero_si512();
	int64_t c = 0;
	for (; c + 64 * U <= cols; c += 64 * U)
#pragma GCC unroll 2
		for (int u = 0; u < U; u++) {
			__m512i xl = _mm512_load_si512(xs + c + 64 * u), xh = _mm512_load_si512(xs + ld + c + 64 * u);
#pragma GCC unroll 4
			for (int i = 0; i < R; i++) {
				const uint8_t *p = q + (r + i) * cols + c + 64 * u;
				_mm_prefetch((const char *)p + pf, _MM_HINT_T0);
				if (far)
					_mm_prefetch((const char *)p + far, _MM_HINT_T2);
				__m512i v = _mm512_loadu_si512(p);
				lo[i * U + u] = _mm512_dpbusd_epi32(lo[i * U + u], v, xl);
				hi[i * U + u] = _mm512_dpbusd_epi32(hi[i * U + u], v, xh);
			}
		}
	for (; c < cols; c += 64) { /* what is left: whole chunks, then the last columns */
		__mmask64 m = cols - c >= 64 ? ~(__mmask64)0 : ((__mmask64)1 << (cols - c)) - 1;
		__m512i xl = _mm512_load_si512(xs + c), xh = _mm512_load_si512(xs + ld + c);
#pragma GCC unroll 4
		for (int i = 0; i < R; i++) {
			__m512i v = _mm512_maskz_loadu_epi8(m, q + (r + i) * cols + c);
			lo[i * U] = _mm512_dpbusd_epi32(lo[i * U], v, xl);
			hi[i * U] = _mm512_dpbusd_epi32(hi[i * U], v, xh);
		}
	}
#pragma GCC unroll 4
	for (int i = 0; i < R; i++) {
#pragma GCC unroll 2
		for (int u = 1; u < U; u++) {
			lo[i * U] = _mm512_add_epi32(lo[i * U], lo[i * U + u]);
			hi[i * U] = _mm512_add_epi32(hi[i * U], hi[i * U + u]);
		}
		dot[i] = 256 * (int64_t)_mm512_reduce_add_epi32(hi[i * U]) + _mm512_reduce_add_epi32(lo[i * U]);
	}
}

/* The same rows in the head's walk (cpu_bf16_walks): groups of 4 rows or single rows, prefetched as there. xs:
 * x's low bytes [ld], then its high bytes [ld] (cpu_top_split; ld a multiple of 64, zeros past cols). */
DSM_VNNI_TARGET void cpu_top_dots(const uint8_t *q, int64_t cols, int64_t r0, int64_t r1, const int8_t *xs,
				  int64_t ld, int64_t *dot)
{
	const struct cpu_bf16_walk *walk = &cpu_bf16_walks[cpu_bf16_walk];
	int64_t r = r0, far = (int64_t)dsm_far_prefetch((size_t)walk->far, (size_t)cols, ROWS);
	if (walk->group == ROWS)
		for (; r + ROWS <= r1; r += ROWS)
			rows_u8(q, cols, r, ROWS, 1, xs, ld, dot + r - r0, ROWS * cols, far);
	for (; r < r1; r++)
		rows_u8(q, cols, r, 1, 2, xs, ld, dot + r - r0, walk->prefetch ? walk->prefetch : cols, 0);
}

/* ---- The screen ---- */

static float up(double v)
{
	return (float)(v * (1 + 1e-6));
}

/* One row of the head: its codes and constants. Returns max|W_r|, or INFINITY when the row holds a NaN or
 * an infinity. In double, the residual and the squares are exact or nearly (53 bits). */
DSM_INT8_TARGET static double screen_row(const uint16_t *wr, int64_t D, double gamma, uint8_t *qr,
					 struct cpu_top_row *out)
{
	__m512 mx = _mm512_setzero_ps();
	__mmask16 bad = 0;
	for (int64_t c = 0; c < D; c += 16) {
		__mmask16 m = D - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - c)) - 1);
		__m512 a = _mm512_abs_ps(dsm_bf16x16_f32(_mm256_maskz_loadu_epi16(m, wr + c)));
		bad |= _mm512_cmp_ps_mask(a, _mm512_set1_ps(FLT_MAX), _CMP_NLE_UQ);
		mx = _mm512_max_ps(mx, a);
	}
	float big = _mm512_reduce_max_ps(mx);
	if (bad)
		return INFINITY;
	float s = big > 0 ? big / 127 : 1.0f;
	__m512 inv = _mm512_set1_ps(1 / s); /* any code will do (the bounds are of the code stored): about the nearest */
	__m512d sd = _mm512_set1_pd(s), ww = _mm512_setzero_pd(), rr = ww, qq = ww;
	for (int64_t c = 0; c < D; c += 16) {
		__mmask16 m = D - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (D - c)) - 1);
		__m512 f = dsm_bf16x16_f32(_mm256_maskz_loadu_epi16(m, wr + c));
		__m512i k = _mm512_cvtps_epi32(_mm512_mul_ps(f, inv));
		k = _mm512_max_epi32(_mm512_min_epi32(k, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
		_mm512_mask_cvtepi32_storeu_epi8(qr + c, m, _mm512_add_epi32(k, _mm512_set1_epi32(128)));
		for (int h = 0; h < 2; h++) {
			__m512d fd = _mm512_cvtps_pd(h ? _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(f), 1))
						      : _mm512_castps512_ps256(f));
			__m512d kd = _mm512_cvtepi32_pd(h ? _mm512_extracti64x4_epi64(k, 1) : _mm512_castsi512_si256(k));
			__m512d res = _mm512_fnmadd_pd(sd, kd, fd); /* exact: s k has at most 31 significant bits */
			ww = _mm512_fmadd_pd(fd, fd, ww);
			rr = _mm512_fmadd_pd(res, res, rr);
			qq = _mm512_fmadd_pd(kd, kd, qq);
		}
	}
	*out = (struct cpu_top_row){ s, up(sqrt(_mm512_reduce_add_pd(rr)) + gamma * sqrt(_mm512_reduce_add_pd(ww))),
				     up((double)s * sqrt(_mm512_reduce_add_pd(qq))) };
	return big;
}

int cpu_top_prepare(struct dsm_backend *be, const struct dsm_mat *w)
{
	struct cpu_backend *cb = cpu_of(be);
	struct cpu_top *t = &cb->top;
	int bf16 = be->precision == DSM_PRECISION_BF16;
	if (w->dtype != DSM_BF16 || !cpu_bf16_gemv_available(bf16) || !dsm_isa_available(DSM_ISA_AVX512BF16) ||
	    !__builtin_cpu_supports("avx512vnni"))
		return dsm_fail(DSM_EUNSUPPORTED, "the head's screen needs BF16 weights, AVX-512 BF16 and VNNI");
	if (w->cols > CPU_TOP_MAX_COLS)
		return dsm_fail(DSM_EUNSUPPORTED, "the head's screen takes rows of at most %d columns", CPU_TOP_MAX_COLS);
	cpu_top_free(t);
	int64_t V = w->rows, D = w->cols;
	size_t bytes = ((size_t)V * (size_t)D + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE;
	void *q = NULL;
	if (posix_memalign(&q, HUGE_PAGE, bytes) != 0 || !(t->row = malloc(sizeof *t->row * (size_t)V))) {
		free(q);
		free(t->row);
		t->row = NULL;
		return dsm_fail(DSM_ENOMEM, "out of memory for the head's screen (%.3g GB)", (double)bytes / 1e9);
	}
#ifdef MADV_HUGEPAGE
	madvise(q, bytes, MADV_HUGEPAGE); /* read once a token, like the weights: fewer TLB misses */
#endif
	t->q = q;
	const uint16_t *wb = (const uint16_t *)w->data + (size_t)w->row0 * (size_t)D;
	double gamma = (double)D * 0x1p-24 / (1 - (double)D * 0x1p-24), big = 0;
#pragma omp parallel for schedule(static) reduction(max : big)
	for (int64_t r = 0; r < V; r++)
		big = fmax(big, screen_row(wb + r * D, D, gamma, t->q + r * D, &t->row[r]));
	dsm_touch_pages(q, bytes); /* else the first greedy step reads it at a fraction of the memory's rate */
	/* Below 2^-126 vdpbf16ps reads its inputs and writes its sums as zero: less than 2^-126 (max|W| + 1)
	 * (max|x| + 1) per column and per addition (the call multiplies by its max|x| + 1). A NaN or infinite
	 * weight leaves no bound: such a head is never screened. */
	t->slack = isfinite(big) ? (double)D * 0x1p-124 * (big + 1) : INFINITY;
	t->data = w->data;
	t->row0 = w->row0;
	t->rows = V;
	t->cols = D;
	return 0;
}

/* The screen's pass over the head and the rows computed after it, as the threads of cpu_par take their chunks. */
struct top_job {
	const struct cpu_top *t;
	const uint16_t *wb, *xb;
	const int8_t *xs;
	const float *x;
	float *y;
	double *hi, sx, xn, en, slack, best;
	int64_t *cand, *found, V, D, ld, groups, chunks, xsum, n, next;
};

static void max_into(double *p, double v)
{
	double cur;
	__atomic_load(p, &cur, __ATOMIC_RELAXED);
	while (v > cur && !__atomic_compare_exchange(p, &cur, &v, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED))
		;
}

/* Each chunk of rows keeps, at its start in cand and hi, the rows whose upper end reached the largest lower end
 * its thread had seen so far, and those upper ends: the rows that can hold the largest value are among them. */
static void top_pass(void *arg, int tid, int team)
{
	struct top_job *j = arg;
	const struct cpu_top *t = j->t;
	double mine = -INFINITY;
	int64_t dot[64], V = j->V;
	for (int64_t k; (k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED)) < j->chunks;) {
		int64_t a = j->groups * k / j->chunks * 4, b = j->groups * (k + 1) / j->chunks * 4, n = 0;
		int64_t end = b < V ? b : V;
		for (int64_t r = a; r < end; r += 64) {
			int64_t e = r + 64 < end ? r + 64 : end;
			cpu_top_dots(t->q, j->D, r, e, j->xs, j->ld, dot);
			for (int64_t i = r; i < e; i++) {
				const struct cpu_top_row *p = &t->row[i];
				double a_i = (double)p->scale * j->sx * (double)(dot[i - r] - 128 * j->xsum); /* codes less 128 */
				double b_i = (j->xn * p->a + j->en * p->b + 1e-12 * fabs(a_i)) * (1 + 1e-9) + j->slack;
				mine = a_i - b_i > mine ? a_i - b_i : mine;
				j->y[i] = -INFINITY;
				if (a_i + b_i >= mine) {
					j->cand[a + n] = i;
					j->hi[a + n++] = a_i + b_i;
				}
			}
		}
		j->found[k] = n;
	}
	max_into(&j->best, mine);
}

static void top_rows(void *arg, int tid, int team)
{
	struct top_job *j = arg;
	for (int64_t k; (k = __atomic_fetch_add(&j->next, 16, __ATOMIC_RELAXED)) < j->n;)
		for (int64_t i = k; i < k + 16 && i < j->n; i++)
			cpu_bf16_gemv_rows(j->wb, j->D, j->cand[i], j->cand[i] + 1, 1, j->x, j->xb, j->y + j->cand[i],
					   j->V);
}

/* y = W x for one x [D] of the prepared head: exact (as cpu_matmul) where the row can hold the largest value,
 * -INFINITY elsewhere. Returns the number of rows computed exactly, or a negative code. */
int cpu_matmul_top(struct dsm_backend *be, const struct dsm_mat *w, const float *x, float *y)
{
	struct cpu_backend *cb = cpu_of(be);
	const struct cpu_top *t = &cb->top;
	int64_t V = w->rows, D = w->cols;
	if (!t->q || t->data != w->data || t->row0 != w->row0 || t->rows != V || t->cols != D || !isfinite(t->slack)) {
		int rc = cpu_matmul(be, w, 1, x, y);
		return rc < 0 ? rc : (int)V;
	}
	int bf16 = be->precision == DSM_PRECISION_BF16;
	int64_t ld = (D + 63) / 64 * 64; /* also a multiple of cpu_bf16_act_ld's */
	int64_t groups = (V + 3) / 4, chunks = 16 * (int64_t)cpu_par_threads();
	size_t xb_bytes = bf16 ? sizeof(uint16_t) * (size_t)ld : 0;
	char *scratch = cpu_scratch_get(&cb->act, xb_bytes + 2 * (size_t)ld +
					 (sizeof(double) + sizeof(int64_t)) * (size_t)V + sizeof(int64_t) * (size_t)chunks);
	if (!scratch)
		return DSM_ENOMEM;
	uint16_t *xb = bf16 ? (uint16_t *)scratch : NULL;
	int8_t *xs = (int8_t *)(scratch + xb_bytes);
	double *hi = (double *)(xs + 2 * ld);
	int64_t *cand = (int64_t *)(hi + V), *found = cand + V;
	/* x as the GEMV sees it, its norm, its integer form xq (in two bytes) and the norm of what that misses */
	if (bf16)
		cpu_bf16_gemv_pack(x, 1, D, xb);
	double amax = 0, xx = 0;
	for (int64_t i = 0; i < D; i++) {
		double v = bf16 ? (double)dsm_bf16_to_f32(xb[i]) : (double)x[i];
		amax = fabs(v) > amax ? fabs(v) : amax;
		xx += v * v;
	}
	if (!isfinite(xx)) {
		int rc = cpu_matmul(be, w, 1, x, y);
		return rc < 0 ? rc : (int)V;
	}
	/* a power of two: x - s_x xq is exact in double */
	double sx = amax > 0 ? ldexp(1, ilogb(amax / cpu_top_xq_max()) + 1) : 1, ee = 0;
	int64_t xsum = 0;
	for (int64_t i = 0; i < ld; i++) {
		double v = i < D ? (bf16 ? (double)dsm_bf16_to_f32(xb[i]) : (double)x[i]) : 0;
		double k = nearbyint(v / sx);
		cpu_top_split((int32_t)k, xs + i, xs + ld + i);
		xsum += (int64_t)k;
		ee += (v - k * sx) * (v - k * sx);
	}
	struct top_job j = { .t = t, .wb = (const uint16_t *)w->data + (size_t)w->row0 * (size_t)D, .xb = xb, .xs = xs,
			     .x = x, .y = y, .hi = hi, .sx = sx, .xn = sqrt(xx) * (1 + 1e-9), .en = sqrt(ee) * (1 + 1e-9),
			     .slack = t->slack * (amax + 1), .best = -INFINITY, .cand = cand, .found = found, .V = V,
			     .D = D, .ld = ld, .groups = groups, .chunks = chunks, .xsum = xsum };
	cpu_par(V * D >= CPU_PARALLEL_MIN ? 0 : 1, top_pass, &j);
	/* the rows whose upper end reaches the largest lower end */
	int64_t n = 0;
	for (int64_t k = 0; k < chunks; k++) {
		int64_t a = groups * k / chunks * 4; /* n <= a: the kept rows move down */
		for (int64_t i = 0; i < found[k]; i++)
			if (hi[a + i] >= j.best)
				cand[n++] = cand[a + i];
	}
	if (!isfinite(j.best) || n > V / 8) {
		int rc = cpu_matmul(be, w, 1, x, y);
		return rc < 0 ? rc : (int)V;
	}
	j.n = n;
	j.next = 0;
	cpu_par(n * D >= CPU_PARALLEL_MIN ? 0 : 1, top_rows, &j);
	return (int)n;
}
