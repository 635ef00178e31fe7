// Matmuls of FP8 block-scaled, BF16 or F32 weights: matmul, matmul_t, matmul_heads, ffn, moe (docs/cuda.md).
//
// Up to GEMV_MAX_N tokens (decode) the multiply is bandwidth-bound: our own kernels read each weight once,
// 16 bytes per lane per load, dequantize in registers and accumulate in F32, one warp per output row
// (matmul) or one thread per output column (matmul_t). More tokens go to cuBLASLt: the weight is dequantized
// into a reusable device buffer (BF16 for precision bf16, F32 for f32) and multiplied with F32 accumulation.
//
// Precision (as kernels/cpu): f32: weights dequantized exactly, activations F32; bf16: every weight value
// (FP8 code x block scale) and every activation rounded to BF16 before the multiply.
#include "cuda_internal.h"
#include "device_math.h"

#define WARPS 8        // warps per block of the warp-per-row kernels
#define GEMV_MAX_N 16  // tokens up to which the GEMV kernels run; more: cuBLASLt
#define MOE_MAX_TOPK 32
// The cuBLASLt path dequantizes at most this many weight values at a time (256 MiB as F32): a larger
// single matrix is multiplied in bands of rows.
#define WBUF_MAX_ELEMS ((int64_t)64 << 20)

// ---- the dot product of one weight row, spread over a warp -------------------------------------------

// Lane-partial sums acc[t] += W[r, j] * x[t * ldx + j] for this lane's share of j < w.cols, t < n <= NT.
// 16-byte loads where the row, x and ldx allow, DT the weight dtype, E values per load.
template <int NT, int DT>
__device__ __forceinline__ void dot_vec(const struct dsm_mat &w, int64_t r, const unsigned char *row, int64_t nvec,
					const float *x, int64_t ldx, int n, int bf16, float *acc)
{
	const int E = DT == DM_F8_E4M3 ? 16 : DT == DM_BF16 ? 8 : 4;
	int lane = threadIdx.x & 31;
	for (int64_t q = lane; q < nvec; q += 32) {
		uint4 raw = *(const uint4 *)(row + q * 16);
		int64_t j0 = q * E;
		const uint32_t word[4] = { raw.x, raw.y, raw.z, raw.w };
		float wv[E];
		if constexpr (DT == DM_F8_E4M3) {
			// 16 values never cross a 128-column block: one scale
			float s = w.scale[dm_scale_index(r, j0, w.cols)];
			for (int k = 0; k < E; k++)
				wv[k] = dm_round_act(dm_fp8_e4m3((uint8_t)(word[k / 4] >> (8 * (k % 4)))) * s, bf16);
		} else if constexpr (DT == DM_BF16) {
			for (int k = 0; k < E; k++)
				wv[k] = dm_round_act(dm_bf16_to_f32((uint16_t)(word[k / 2] >> (16 * (k % 2)))), bf16);
		} else {
			for (int k = 0; k < E; k++)
				wv[k] = dm_round_act(__uint_as_float(word[k]), bf16);
		}
		for (int t = 0; t < NT; t++) {
			if (t >= n)
				break;
			const float4 *x4 = (const float4 *)(x + t * ldx + j0);
			float a = acc[t];
			for (int k = 0; k < E / 4; k++) {
				float4 xv = x4[k];
				a += wv[4 * k] * xv.x + wv[4 * k + 1] * xv.y + wv[4 * k + 2] * xv.z + wv[4 * k + 3] * xv.w;
			}
			acc[t] = a;
		}
	}
}

template <int NT>
__device__ __forceinline__ void warp_dot(const struct dsm_mat &w, int64_t r, const float *x, int64_t ldx, int n,
					 int bf16, float *acc)
{
	int lane = threadIdx.x & 31;
	int64_t cols = w.cols;
	int esize = w.dtype == DM_F8_E4M3 ? 1 : w.dtype == DM_BF16 ? 2 : 4;
	const unsigned char *row = (const unsigned char *)w.data + (size_t)r * (size_t)cols * (size_t)esize;
	int64_t per = 16 / esize, nvec = 0;
	if (((uintptr_t)row & 15) == 0 && ((uintptr_t)x & 15) == 0 && (n == 1 || (ldx & 3) == 0))
		nvec = cols / per;
	if (w.dtype == DM_F8_E4M3)
		dot_vec<NT, DM_F8_E4M3>(w, r, row, nvec, x, ldx, n, bf16, acc);
	else if (w.dtype == DM_BF16)
		dot_vec<NT, DM_BF16>(w, r, row, nvec, x, ldx, n, bf16, acc);
	else
		dot_vec<NT, DM_F32>(w, r, row, nvec, x, ldx, n, bf16, acc);
	// the columns after the last whole load (or every column when the loads are not aligned)
	for (int64_t j = nvec * per + lane; j < cols; j += 32) {
		float v = dm_weight_get(w.dtype, w.data, w.scale, cols, r, j, bf16);
		for (int t = 0; t < NT; t++)
			if (t < n)
				acc[t] += v * x[t * ldx + j];
	}
}

__device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

// ---- GEMV kernels (n <= GEMV_MAX_N) -------------------------------------------------------------------

// y[t * ldy + h * y_head + o] = W[row0 + h * stride + o, :] . x[h][t][:], one warp per output row o of
// head h = blockIdx.y; x packed [H][n][cols].
template <int NT>
__global__ void gemv_kernel(struct dsm_mat w, int64_t head_rows, int64_t stride, int n, const float *x, float *y,
			    int64_t ldy, int64_t y_head, int bf16)
{
	int64_t o = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32, h = blockIdx.y;
	if (o >= head_rows)
		return; // the whole warp: o is the same for its lanes
	float acc[NT];
	for (int t = 0; t < NT; t++)
		acc[t] = 0.0f;
	warp_dot<NT>(w, w.row0 + h * stride + o, x + h * n * w.cols, w.cols, n, bf16, acc);
	for (int t = 0; t < NT; t++) {
		float v = warp_sum(acc[t]);
		if ((threadIdx.x & 31) == 0 && t < n)
			y[t * ldy + h * y_head + o] = v;
	}
}

// y[t * ldy + h * y_head + c] = sum_i x[h][t][i] W[row0 + h * stride + i, c], one thread per column c; the
// threads of a warp read consecutive columns of each row. x packed [H][n][head_rows].
template <int NT>
__global__ void gemv_t_kernel(struct dsm_mat w, int64_t head_rows, int64_t stride, int n, const float *x, float *y,
			      int64_t ldy, int64_t y_head, int bf16)
{
	int64_t c = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, h = blockIdx.y;
	if (c >= w.cols)
		return;
	const float *xh = x + h * n * head_rows;
	float acc[NT];
	for (int t = 0; t < NT; t++)
		acc[t] = 0.0f;
	for (int64_t i = 0; i < head_rows; i++) {
		float v = dm_weight_get(w.dtype, w.data, w.scale, w.cols, w.row0 + h * stride + i, c, bf16);
		for (int t = 0; t < NT; t++)
			if (t < n)
				acc[t] += xh[t * head_rows + i] * v;
	}
	for (int t = 0; t < NT; t++)
		if (t < n)
			y[t * ldy + h * y_head + c] = acc[t];
}

// ---- conversions -------------------------------------------------------------------------------------

// dst[(h * n + t) * ldd + j] = x[t * ldx + h * x_head + j] for j < K, as the multiply sees it: F32 (rounded
// when bf16) or BF16 bits.
__global__ void pack_kernel(void *dst, int out_bf16, int64_t ldd, const float *x, int64_t H, int64_t n, int64_t K,
			    int64_t ldx, int64_t x_head, int bf16)
{
	int64_t total = H * n * K;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
		int64_t j = i % K, t = (i / K) % n, h = i / (K * n), at = (h * n + t) * ldd + j;
		float v = x[t * ldx + h * x_head + j];
		if (out_bf16)
			((uint16_t *)dst)[at] = dm_f32_to_bf16(v);
		else
			((float *)dst)[at] = dm_round_act(v, bf16);
	}
}

// y[t * ldy + h * y_head + o] = src[(h * n + t) * lds + o] for o < M: cuBLASLt's output to the caller's layout.
__global__ void unpack_kernel(float *y, int64_t ldy, int64_t y_head, const float *src, int64_t lds, int64_t H,
			      int64_t n, int64_t M)
{
	int64_t total = H * n * M;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
		int64_t o = i % M, t = (i / M) % n, h = i / (M * n);
		y[t * ldy + h * y_head + o] = src[(h * n + t) * lds + o];
	}
}

// dst[i * ldd + j] = W[row0 + i, j] for i < rows, as the multiply sees it: F32 or BF16 bits.
__global__ void dequant_kernel(void *dst, int out_bf16, int64_t ldd, struct dsm_mat w, int64_t rows, int bf16)
{
	int64_t total = rows * w.cols;
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (int64_t)gridDim.x * blockDim.x) {
		int64_t r = i / w.cols, j = i % w.cols;
		float v = dm_weight_get(w.dtype, w.data, w.scale, w.cols, w.row0 + r, j, bf16);
		if (out_bf16)
			((uint16_t *)dst)[r * ldd + j] = dm_f32_to_bf16(v);
		else
			((float *)dst)[r * ldd + j] = v;
	}
}

// g[i] = silu(g[i]) * u[i], rounded as the down projection's input is (bf16).
__global__ void swiglu_kernel(float *g, const float *u, int64_t n)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		g[i] = dm_swiglu(g[i], u[i]);
}

static unsigned stride_blocks(int64_t n)
{
	int64_t b = (n + 255) / 256;
	return (unsigned)(b < 4096 ? (b > 0 ? b : 1) : 4096);
}

// ---- cuBLASLt ----------------------------------------------------------------------------------------

// D[m, n] (column-major, ldd) = op(A) B + beta D over `batch` strided problems; op(A) = A^T (A stored
// [k, m] column-major, lda) when transa, else A [m, k]; B [k, n] (ldb). A and B of type ab, D F32.
struct lt_problem {
	int transa;
	int64_t m, n, k;
	cudaDataType_t ab;
	const void *a;
	int64_t lda, sa;
	const void *b;
	int64_t ldb, sb;
	float *d;
	int64_t ldd, sd;
	int batch;
	float beta;
};

// Largest power of two (<= 256) dividing the address and the batch stride.
static uint32_t alignment(const void *p, int64_t stride_bytes)
{
	uint64_t v = (uint64_t)(uintptr_t)p | (uint64_t)stride_bytes | 256u;
	return (uint32_t)(v & (~v + 1));
}

#define LT_TRY(call) do { \
	cublasStatus_t st_ = (call); \
	if (st_ != CUBLAS_STATUS_SUCCESS && rc == 0) \
		rc = dsm_fail(DSM_EIO, "cuBLASLt error %s in %s (%s:%d)", cuda_lt.cublasLtGetStatusString(st_), #call, __FILE__, \
			      __LINE__); \
} while (0)

static int lt_matmul(struct cuda_backend *cb, struct cuda_ctx *c, const struct lt_problem *p)
{
	int rc = 0;
	cublasLtMatmulDesc_t op = NULL;
	cublasLtMatrixLayout_t la = NULL, lb = NULL, ld = NULL;
	cublasLtMatmulPreference_t pref = NULL;
	cublasLtMatmulHeuristicResult_t res;
	memset(&res, 0, sizeof res);
	int nres = 0;
	cublasOperation_t ta = p->transa ? CUBLAS_OP_T : CUBLAS_OP_N, tb = CUBLAS_OP_N;
	size_t ab_size = p->ab == CUDA_R_16BF ? 2 : 4;
	uint64_t ws = LT_WS_BYTES;
	uint32_t al_a = alignment(p->a, p->sa * (int64_t)ab_size), al_b = alignment(p->b, p->sb * (int64_t)ab_size);
	uint32_t al_d = alignment(p->d, p->sd * 4);
	float alpha = 1.0f, beta = p->beta;
	int32_t batch = p->batch;

	LT_TRY(cuda_lt.cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
	if (rc == 0) {
		LT_TRY(cuda_lt.cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
		LT_TRY(cuda_lt.cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
	}
	LT_TRY(cuda_lt.cublasLtMatrixLayoutCreate(&la, p->ab, (uint64_t)(p->transa ? p->k : p->m),
					  (uint64_t)(p->transa ? p->m : p->k), p->lda));
	LT_TRY(cuda_lt.cublasLtMatrixLayoutCreate(&lb, p->ab, (uint64_t)p->k, (uint64_t)p->n, p->ldb));
	LT_TRY(cuda_lt.cublasLtMatrixLayoutCreate(&ld, CUDA_R_32F, (uint64_t)p->m, (uint64_t)p->n, p->ldd));
	if (rc == 0 && batch > 1) {
		cublasLtMatrixLayout_t lays[3] = { la, lb, ld };
		int64_t strides[3] = { p->sa, p->sb, p->sd };
		for (int i = 0; i < 3; i++) {
			LT_TRY(cuda_lt.cublasLtMatrixLayoutSetAttribute(lays[i], CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT, &batch,
								sizeof batch));
			LT_TRY(cuda_lt.cublasLtMatrixLayoutSetAttribute(lays[i], CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
								&strides[i], sizeof strides[i]));
		}
	}
	LT_TRY(cuda_lt.cublasLtMatmulPreferenceCreate(&pref));
	if (rc == 0) {
		LT_TRY(cuda_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws));
		// The heuristic assumes 256-byte aligned pointers unless told: our y may be a strided view.
		LT_TRY(cuda_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a,
							    sizeof al_a));
		LT_TRY(cuda_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b,
							    sizeof al_b));
		LT_TRY(cuda_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_d,
							    sizeof al_d));
		LT_TRY(cuda_lt.cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_d,
							    sizeof al_d));
	}
	if (rc == 0) {
		LT_TRY(cuda_lt.cublasLtMatmulAlgoGetHeuristic(cb->lt, op, la, lb, ld, ld, pref, 1, &res, &nres));
		if (rc == 0 && nres == 0)
			rc = dsm_fail(DSM_EUNSUPPORTED, "cuBLASLt has no algorithm for a [%lld x %lld] x [%lld x %lld] %s matmul",
				      (long long)p->m, (long long)p->k, (long long)p->k, (long long)p->n,
				      p->ab == CUDA_R_16BF ? "bf16" : "f32");
	}
	if (rc == 0)
		LT_TRY(cuda_lt.cublasLtMatmul(cb->lt, op, &alpha, p->a, la, p->b, lb, &beta, p->d, ld, p->d, ld, &res.algo, c->lt_ws,
				      LT_WS_BYTES, c->s));
	if (pref)
		cuda_lt.cublasLtMatmulPreferenceDestroy(pref);
	if (ld)
		cuda_lt.cublasLtMatrixLayoutDestroy(ld);
	if (lb)
		cuda_lt.cublasLtMatrixLayoutDestroy(lb);
	if (la)
		cuda_lt.cublasLtMatrixLayoutDestroy(la);
	if (op)
		cuda_lt.cublasLtMatmulDescDestroy(op);
	return rc;
}

// ---- the matmul of every op --------------------------------------------------------------------------

// matmul_heads' arguments; matmul and matmul_t are one head.
struct mm_args {
	const struct dsm_mat *w;
	int64_t n_heads, stride, head_rows;
	int transposed;
	int64_t n;
	const float *x;
	int64_t ldx, x_head;
	float *y;
	int64_t ldy, y_head;
};

static int check_weight(const struct dsm_mat *w, const char *op)
{
	if (w->dtype != DSM_F8_E4M3 && w->dtype != DSM_BF16 && w->dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "cuda %s: weight dtype %s not supported", op, dsm_dtype_name(w->dtype));
	if (w->dtype == DSM_F8_E4M3 && !w->scale)
		return dsm_fail(DSM_EARG, "cuda %s: F8 weight without block scales", op);
	if (w->rows < 0 || w->cols < 0 || w->row0 < 0)
		return dsm_fail(DSM_EARG, "cuda %s: bad view", op);
	return 0;
}

template <int NT>
static int launch_gemv(struct cuda_ctx *c, const struct mm_args *a, int n, const float *xp, float *y, int bf16)
{
	const struct dsm_mat &w = *a->w;
	if (a->transposed) {
		dim3 grid(cuda_blocks(w.cols, 256), (unsigned)a->n_heads);
		gemv_t_kernel<NT><<<grid, 256, 0, c->s>>>(w, a->head_rows, a->stride, n, xp, y, a->ldy, a->y_head, bf16);
	} else {
		dim3 grid(cuda_blocks(a->head_rows, WARPS), (unsigned)a->n_heads);
		gemv_kernel<NT><<<grid, WARPS * 32, 0, c->s>>>(w, a->head_rows, a->stride, n, xp, y, a->ldy, a->y_head, bf16);
	}
	LAUNCH_CHECK();
	return 0;
}

static int mm_gemv(struct cuda_backend *cb, struct cuda_ctx *c, const struct mm_args *a, int64_t K)
{
	int bf16 = cb->be.precision == DSM_PRECISION_BF16;
	for (int64_t t0 = 0; t0 < a->n; t0 += GEMV_MAX_N) {
		int n = (int)(a->n - t0 < GEMV_MAX_N ? a->n - t0 : GEMV_MAX_N);
		int64_t total = a->n_heads * n * K;
		int rc = cuda_buf_get(c, &c->abuf, sizeof(float) * (size_t)(total + 4), "matmul activations");
		if (rc < 0)
			return rc;
		float *xp = (float *)c->abuf.p, *y = a->y + t0 * a->ldy;
		if (total > 0) {
			pack_kernel<<<stride_blocks(total), 256, 0, c->s>>>(xp, 0, K, a->x + t0 * a->ldx, a->n_heads, n, K, a->ldx,
									   a->x_head, bf16);
			LAUNCH_CHECK();
		}
		rc = n == 1 ? launch_gemv<1>(c, a, n, xp, y, bf16) : n <= 4 ? launch_gemv<4>(c, a, n, xp, y, bf16)
			: launch_gemv<16>(c, a, n, xp, y, bf16);
		if (rc < 0)
			return rc;
	}
	return 0;
}

// Leading dimensions of our own cuBLASLt operands: a multiple of 8 values (16 bytes of BF16), which every
// algorithm accepts.
static int64_t ld8(int64_t v)
{
	return (v + 7) / 8 * 8;
}

static int mm_lt(struct cuda_backend *cb, struct cuda_ctx *c, const struct mm_args *a, int64_t K, int64_t M)
{
	int bf16 = cb->be.precision == DSM_PRECISION_BF16;
	size_t es = bf16 ? 2 : 4;
	const struct dsm_mat &w = *a->w;
	int64_t H = a->n_heads, n = a->n, C = w.cols, Kp = ld8(K), Cp = ld8(C), Mp = ld8(M);
	// activations [H][n][Kp]; the product [H][n][Mp] in our buffer, then to y's layout
	int rc = cuda_buf_get(c, &c->abuf, es * (size_t)(H * n * Kp), "matmul activations");
	if (rc == 0)
		rc = cuda_buf_get(c, &c->obuf, sizeof(float) * (size_t)(H * n * Mp), "matmul output");
	if (rc < 0)
		return rc;
	pack_kernel<<<stride_blocks(H * n * K), 256, 0, c->s>>>(c->abuf.p, bf16, Kp, a->x, H, n, K, a->ldx, a->x_head,
								   bf16);
	LAUNCH_CHECK();
	// Bands of weight rows: the whole span of the heads, or rows of one matrix WBUF_MAX_ELEMS values at a time.
	int64_t span = (H - 1) * a->stride + a->head_rows;
	int64_t band = H > 1 ? span : (WBUF_MAX_ELEMS / Cp) / DSM_BLOCK * DSM_BLOCK;
	if (band < DSM_BLOCK)
		band = DSM_BLOCK;
	if (band > span)
		band = span;
	if ((rc = cuda_buf_get(c, &c->wbuf, es * (size_t)(band * Cp), "dequantized weight")) < 0)
		return rc;
	float *o = (float *)c->obuf.p;
	for (int64_t r0 = 0; r0 < span; r0 += band) {
		int64_t rows = span - r0 < band ? span - r0 : band;
		struct dsm_mat wv = dsm_mat_rows(w, r0, rows);
		dequant_kernel<<<stride_blocks(rows * C), 256, 0, c->s>>>(c->wbuf.p, bf16, Cp, wv, rows, bf16);
		LAUNCH_CHECK();
		struct lt_problem p;
		memset(&p, 0, sizeof p);
		p.ab = bf16 ? CUDA_R_16BF : CUDA_R_32F;
		p.n = n;
		p.a = c->wbuf.p;
		p.lda = Cp;
		p.sa = a->stride * Cp;
		p.ldb = Kp;
		p.sb = n * Kp;
		p.ldd = Mp;
		p.sd = n * Mp;
		p.batch = (int)H;
		if (!a->transposed) {
			// o^T [rows, n] = W_band [rows, C] . x^T: the band's output rows
			p.transa = 1;
			p.m = H > 1 ? a->head_rows : rows;
			p.k = C;
			p.b = c->abuf.p;
			p.d = o + r0;
			p.beta = 0.0f;
		} else {
			// o^T [C, n] += W_band^T [C, rows] . x^T [rows, n]: the band's share of the sum
			p.transa = 0;
			p.m = C;
			p.k = H > 1 ? a->head_rows : rows;
			p.b = (const char *)c->abuf.p + es * (size_t)r0;
			p.d = o;
			p.beta = r0 > 0 ? 1.0f : 0.0f;
		}
		if ((rc = lt_matmul(cb, c, &p)) < 0)
			return rc;
	}
	unpack_kernel<<<stride_blocks(H * n * M), 256, 0, c->s>>>(a->y, a->ldy, a->y_head, o, Mp, H, n, M);
	LAUNCH_CHECK();
	return 0;
}

static int mm_run(struct cuda_backend *cb, struct cuda_ctx *c, const struct mm_args *a, const char *op)
{
	int rc = check_weight(a->w, op);
	if (rc < 0)
		return rc;
	int64_t K = a->transposed ? a->head_rows : a->w->cols, M = a->transposed ? a->w->cols : a->head_rows;
	if (a->n <= 0 || a->n_heads <= 0 || M <= 0)
		return 0;
	if (a->n_heads > 65535)
		return dsm_fail(DSM_EARG, "cuda %s: %lld heads", op, (long long)a->n_heads);
	if (a->n <= GEMV_MAX_N || K == 0)
		return mm_gemv(cb, c, a, K);
	return mm_lt(cb, c, a, K, M);
}

int cuda_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	struct mm_args a = { w, 1, 0, w->rows, 0, n, x, w->cols, 0, y, w->rows, 0 };
	return cuda_end(cb, c, mm_run(cb, c, &a, "matmul"));
}

int cuda_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	struct mm_args a = { w, 1, 0, w->rows, 1, n, x, w->rows, 0, y, w->cols, 0 };
	return cuda_end(cb, c, mm_run(cb, c, &a, "matmul_t"));
}

int cuda_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *h)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	struct mm_args a = { h->w, h->n_heads, h->head_stride, h->head_rows, h->transposed, h->n, h->x, h->ldx,
			     h->x_head, h->y, h->ldy, h->y_head };
	return cuda_end(cb, c, mm_run(cb, c, &a, "matmul_heads"));
}

// ---- FFN ---------------------------------------------------------------------------------------------

static int check_ffn(const struct dsm_ffn_weights *w)
{
	int64_t inter = w->gate.rows;
	if (w->up.rows != inter || w->down.cols != inter || w->gate.cols != w->up.cols || w->down.rows != w->gate.cols)
		return dsm_fail(DSM_EARG, "cuda ffn: inconsistent gate/up/down shapes");
	return 0;
}

static int ffn_run(struct cuda_backend *cb, struct cuda_ctx *c, const struct dsm_ffn_weights *w, int64_t n,
		   const float *x, float *y)
{
	int rc = check_ffn(w);
	if (rc < 0 || n <= 0)
		return rc;
	int64_t D = w->gate.cols, I = w->gate.rows;
	if ((rc = cuda_buf_get(c, &c->ffn, sizeof(float) * (size_t)(2 * n * I + 4), "ffn scratch")) < 0)
		return rc;
	float *g = (float *)c->ffn.p, *u = g + n * I;
	struct mm_args ag = { &w->gate, 1, 0, I, 0, n, x, D, 0, g, I, 0 };
	struct mm_args au = { &w->up, 1, 0, I, 0, n, x, D, 0, u, I, 0 };
	struct mm_args ad = { &w->down, 1, 0, D, 0, n, g, I, 0, y, D, 0 };
	if ((rc = mm_run(cb, c, &ag, "ffn gate")) < 0 || (rc = mm_run(cb, c, &au, "ffn up")) < 0)
		return rc;
	if (n * I > 0) {
		swiglu_kernel<<<stride_blocks(n * I), 256, 0, c->s>>>(g, u, n * I);
		LAUNCH_CHECK();
	}
	return mm_run(cb, c, &ad, "ffn down");
}

int cuda_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	return cuda_end(cb, c, ffn_run(cb, c, w, n, x, y));
}

// ---- MoE ---------------------------------------------------------------------------------------------
// The routed experts are chosen on the device (idx is device memory), so the kernels find each slot's
// expert in a device copy of the descriptor table. A slot is one (token, chosen expert) pair: its gate/up
// rows are one warp each (h = swiglu), then its down rows, then each token sums its slots in ascending
// expert order and adds the shared expert's output (backend.h's fixed order).

struct dev_ffn {
	struct dsm_mat gate, up, down; // dtype DSM_DTYPE_INVALID: no expert
};

// h[slot, o] = swiglu(gate_e[o] . x[t], up_e[o] . x[t]) for the slot's expert e; 0 for an expert not there.
__global__ void moe_up_kernel(const struct dev_ffn *tab, int64_t n_experts, const int32_t *idx, int top_k,
			      int64_t n_slots, const float *xa, int64_t D, int64_t I, float *h, int bf16)
{
	int64_t o = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
	if (o >= I)
		return;
	for (int64_t slot = blockIdx.y; slot < n_slots; slot += gridDim.y) {
		int32_t e = idx[slot];
		float v = 0.0f;
		if (e >= 0 && e < n_experts && tab[e].gate.dtype != DSM_DTYPE_INVALID) {
			struct dsm_mat g = tab[e].gate, u = tab[e].up;
			float ag[1] = { 0.0f }, au[1] = { 0.0f };
			const float *xt = xa + (slot / top_k) * D;
			warp_dot<1>(g, g.row0 + o, xt, D, 1, bf16, ag);
			warp_dot<1>(u, u.row0 + o, xt, D, 1, bf16, au);
			v = dm_round_act(dm_swiglu(warp_sum(ag[0]), warp_sum(au[0])), bf16);
		}
		if ((threadIdx.x & 31) == 0)
			h[slot * I + o] = v;
	}
}

// out[slot, d] = down_e[d] . h[slot].
__global__ void moe_down_kernel(const struct dev_ffn *tab, int64_t n_experts, const int32_t *idx, int64_t n_slots,
				const float *h, int64_t D, int64_t I, float *out, int bf16)
{
	int64_t d = (int64_t)blockIdx.x * WARPS + threadIdx.x / 32;
	if (d >= D)
		return;
	for (int64_t slot = blockIdx.y; slot < n_slots; slot += gridDim.y) {
		int32_t e = idx[slot];
		float v = 0.0f;
		if (e >= 0 && e < n_experts && tab[e].down.dtype != DSM_DTYPE_INVALID) {
			struct dsm_mat dw = tab[e].down;
			float acc[1] = { 0.0f };
			warp_dot<1>(dw, dw.row0 + d, h + slot * I, I, 1, bf16, acc);
			v = warp_sum(acc[0]);
		}
		if ((threadIdx.x & 31) == 0)
			out[slot * D + d] = v;
	}
}

// y[t, d] = sum over t's slots in ascending expert of weight * out[slot, d], then + shared[t, d].
__global__ void moe_combine_kernel(const int32_t *idx, const float *weight, int top_k, const float *out,
				   const float *shared, int64_t T, int64_t D, float *y)
{
	int64_t d = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
	if (d >= D)
		return;
	for (int64_t t = blockIdx.y; t < T; t += gridDim.y) {
		int ord[MOE_MAX_TOPK];
		for (int k = 0; k < top_k; k++) {
			int j = k;
			for (; j > 0 && idx[t * top_k + ord[j - 1]] > idx[t * top_k + k]; j--)
				ord[j] = ord[j - 1];
			ord[j] = k;
		}
		float acc = 0.0f;
		for (int k = 0; k < top_k; k++) {
			int64_t slot = t * top_k + ord[k];
			acc += weight[slot] * out[slot * D + d];
		}
		if (shared)
			acc += shared[t * D + d];
		y[t * D + d] = acc;
	}
}

static int moe_run(struct cuda_backend *cb, struct cuda_ctx *c, const struct dsm_moe_op_args *a)
{
	int64_t T = a->n_tokens, E = a->n_experts;
	int K = a->top_k;
	if (K < 1 || K > MOE_MAX_TOPK)
		return dsm_fail(DSM_EARG, "cuda moe: top_k %d (1 .. %d)", K, MOE_MAX_TOPK);
	if (T <= 0)
		return 0;
	// The experts' shape from the first one present; every other one must agree.
	const struct dsm_ffn_weights *first = NULL;
	for (int64_t e = 0; e < E; e++) {
		const struct dsm_ffn_weights *f = a->experts[e];
		if (!f)
			continue;
		int rc = check_ffn(f);
		if (rc == 0)
			rc = check_weight(&f->gate, "moe");
		if (rc == 0)
			rc = check_weight(&f->up, "moe");
		if (rc == 0)
			rc = check_weight(&f->down, "moe");
		if (rc < 0)
			return dsm_fail_prefix(rc, "expert %lld", (long long)e);
		if (!first)
			first = f;
		else if (f->gate.rows != first->gate.rows || f->gate.cols != first->gate.cols)
			return dsm_fail(DSM_EARG, "cuda moe: expert %lld is [%lld x %lld], expert 0's [%lld x %lld]", (long long)e,
					(long long)f->gate.rows, (long long)f->gate.cols, (long long)first->gate.rows,
					(long long)first->gate.cols);
	}
	const struct dsm_ffn_weights *ref = first ? first : a->shared;
	if (!ref)
		return dsm_fail(DSM_EARG, "cuda moe: no expert");
	int64_t D = ref->gate.cols, I = first ? first->gate.rows : 0, S = T * K;
	if (a->shared && a->shared->gate.cols != D)
		return dsm_fail(DSM_EARG, "cuda moe: the shared expert's width differs from the experts'");
	int bf16 = cb->be.precision == DSM_PRECISION_BF16;

	// scratch: x as the multiply sees it [T, D], h [S, I], out [S, D], shared output [T, D]
	size_t xa_n = (size_t)(T * D), h_n = (size_t)(S * I), out_n = (size_t)(S * D);
	size_t pad = 64; // keeps each part 256-byte aligned
	size_t total = xa_n + h_n + out_n + xa_n + 4 * pad;
	int rc = cuda_buf_get(c, &c->moe, sizeof(float) * total, "moe scratch");
	if (rc < 0)
		return rc;
	float *xa = (float *)c->moe.p;
	float *h = xa + (xa_n + pad - 1) / pad * pad;
	float *out = h + (h_n + pad - 1) / pad * pad;
	float *ys = out + (out_n + pad - 1) / pad * pad;
	if (a->shared && (rc = ffn_run(cb, c, a->shared, T, a->x, ys)) < 0)
		return dsm_fail_prefix(rc, "cuda moe: shared expert");
	if (first) {
		// The table, staged: a device copy read by the kernels (entries for absent experts marked invalid).
		size_t tab_bytes = sizeof(struct dev_ffn) * (size_t)E;
		if (tab_bytes > STAGE_BYTES)
			return dsm_fail(DSM_EARG, "cuda moe: %lld experts are more than one staging slot holds", (long long)E);
		struct dev_ffn *tab = (struct dev_ffn *)malloc(tab_bytes);
		if (!tab)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		for (int64_t e = 0; e < E; e++) {
			memset(&tab[e], 0, sizeof tab[e]);
			if (a->experts[e]) {
				tab[e].gate = a->experts[e]->gate;
				tab[e].up = a->experts[e]->up;
				tab[e].down = a->experts[e]->down;
			}
		}
		void *dtab;
		int slot;
		rc = cuda_stage(c, tab, tab_bytes, &dtab, &slot);
		free(tab);
		if (rc < 0)
			return rc;
		pack_kernel<<<stride_blocks(T * D), 256, 0, c->s>>>(xa, 0, D, a->x, 1, T, D, D, 0, bf16);
		LAUNCH_CHECK();
		unsigned gy = (unsigned)(S < 65535 ? S : 65535);
		moe_up_kernel<<<dim3(cuda_blocks(I, WARPS), gy), WARPS * 32, 0, c->s>>>(
			(const struct dev_ffn *)dtab, E, a->idx, K, S, xa, D, I, h, bf16);
		LAUNCH_CHECK();
		moe_down_kernel<<<dim3(cuda_blocks(D, WARPS), gy), WARPS * 32, 0, c->s>>>(
			(const struct dev_ffn *)dtab, E, a->idx, S, h, D, I, out, bf16);
		LAUNCH_CHECK();
		if ((rc = cuda_stage_done(c, slot)) < 0)
			return rc;
	} else {
		CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(float) * out_n, c->s));
	}
	unsigned gt = (unsigned)(T < 65535 ? T : 65535);
	moe_combine_kernel<<<dim3(cuda_blocks(D, 256), gt), 256, 0, c->s>>>(a->idx, a->weight, K, out,
									    a->shared ? ys : NULL, T, D, a->y);
	LAUNCH_CHECK();
	return 0;
}

int cuda_moe(struct dsm_backend *be, const struct dsm_moe_op_args *a)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	return cuda_end(cb, c, moe_run(cb, c, a));
}
