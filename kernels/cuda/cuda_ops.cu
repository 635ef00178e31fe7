// The small ops: rmsnorm, layernorm, rope, hadamard, topk, route, and the glue between ops: add, scale, convert,
// gather, fp8_round (docs/cuda.md).
#include "cuda_internal.h"
#include "device_math.h"

#define NORM_THREADS 256
#define TOPK_THREADS 1024
#define HADAMARD_MAX 8192   // values of a row in shared memory (32 KiB)
#define ROUTE_MAX_TOPK 32

static unsigned grid_for(int64_t n, int threads)
{
	int64_t b = (n + threads - 1) / threads;
	return (unsigned)(b < 65536 ? (b > 0 ? b : 1) : 65536);
}

// The sum of v over the block, the same in every thread (summed in the same order). red: 32 doubles.
static __device__ double block_sum(double v, double *red)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = blockDim.x / 32;
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	__syncthreads(); // red may still be read by an earlier call
	if (lane == 0)
		red[warp] = v;
	__syncthreads();
	double s = 0;
	for (int w = 0; w < nw; w++)
		s += red[w];
	return s;
}

// ---- norms: one block per row; sums in double, as the reference ----------------------------------------

__global__ void rmsnorm_kernel(int64_t d, const float *x, int64_t ldx, const float *w, float eps, float *y)
{
	__shared__ double red[32];
	int64_t t = blockIdx.x;
	const float *xr = x + t * ldx;
	double ss = 0;
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		ss += (double)xr[j] * xr[j];
	float r = dm_rms_scale(block_sum(ss, red), d, eps);
	// each thread writes only the values it read: y may be x
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		y[t * d + j] = dm_rms_out(xr[j], r, w[j]);
}

__global__ void layernorm_kernel(int64_t d, const float *x, const float *w, const float *b, float eps, float *y)
{
	__shared__ double red[32];
	int64_t t = blockIdx.x;
	const float *xr = x + t * d;
	double s = 0;
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		s += xr[j];
	double mu = block_sum(s, red) / (double)d, v = 0;
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		v += (xr[j] - mu) * (xr[j] - mu);
	double r = dm_ln_rscale(block_sum(v, red) / (double)d, eps);
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		y[t * d + j] = dm_ln_out(xr[j], mu, r, w[j], b[j]);
}

static int check_rows(int64_t n, const char *op)
{
	if (n > 0x7fffffff)
		return dsm_fail(DSM_EARG, "cuda %s: %lld rows", op, (long long)n);
	return 0;
}

int cuda_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w, float eps,
		 float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if ((rc = check_rows(n, "rmsnorm")) == 0 && n > 0 && d > 0) {
		rmsnorm_kernel<<<(unsigned)n, NORM_THREADS, 0, c->s>>>(d, x, ldx, w, eps, y);
		rc = LAUNCH_STATUS("rmsnorm_kernel");
	}
	return cuda_end(cb, c, rc);
}

int cuda_layernorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w, const float *b,
		   float eps, float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if ((rc = check_rows(n, "layernorm")) == 0 && n > 0 && d > 0) {
		layernorm_kernel<<<(unsigned)n, NORM_THREADS, 0, c->s>>>(d, x, w, b, eps, y);
		rc = LAUNCH_STATUS("layernorm_kernel");
	}
	return cuda_end(cb, c, rc);
}

// ---- rope: a thread per rotated pair -----------------------------------------------------------------

__global__ void rope_kernel(int64_t n, int64_t H, int64_t half, float *x, int64_t ldx, int64_t ldh, const float *cs,
			    const float *sn, int interleaved)
{
	int64_t total = n * H * half;
	for (int64_t p = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; p < total; p += (int64_t)gridDim.x * blockDim.x) {
		int64_t j = p % half, h = (p / half) % H, t = p / (half * H), i0, i1;
		float *v = x + t * ldx + h * ldh;
		dm_rope_index(j, half, interleaved, &i0, &i1);
		dm_rope_pair(&v[i0], &v[i1], cs[t * half + j], sn[t * half + j]);
	}
}

int cuda_rope(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx, int64_t ldh,
	      const float *cos, const float *sin, int interleaved)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	int64_t total = n * n_heads * (dim / 2);
	if (total > 0) {
		rope_kernel<<<grid_for(total, 256), 256, 0, c->s>>>(n, n_heads, dim / 2, x, ldx, ldh, cos, sin, interleaved);
		rc = LAUNCH_STATUS("rope_kernel");
	}
	return cuda_end(cb, c, rc);
}

// ---- hadamard: a block per row, the butterfly rounds in shared memory ---------------------------------

__global__ void hadamard_kernel(int64_t d, float *x)
{
	extern __shared__ float hv[];
	float *row = x + (int64_t)blockIdx.x * d;
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		hv[j] = row[j];
	__syncthreads();
	for (int64_t s = 1; s < d; s *= 2) {
		// pair p of this round: (i, i + s) with i & s == 0
		for (int64_t p = threadIdx.x; p < d / 2; p += blockDim.x) {
			int64_t i = (p / s) * 2 * s + p % s;
			dm_butterfly(&hv[i], &hv[i + s]);
		}
		__syncthreads();
	}
	float norm = dm_hadamard_norm(d);
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		row[j] = hv[j] * norm;
}

int cuda_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (d < 1 || (d & (d - 1)))
		rc = dsm_fail(DSM_EARG, "hadamard: size %lld is not a power of two", (long long)d);
	else if (d > HADAMARD_MAX)
		rc = dsm_fail(DSM_EUNSUPPORTED, "cuda hadamard: size %lld (at most %d)", (long long)d, HADAMARD_MAX);
	else if ((rc = check_rows(n, "hadamard")) == 0 && n > 0) {
		int threads = d / 2 < 256 ? (int)(d / 2 > 32 ? d / 2 : 32) : 256;
		hadamard_kernel<<<(unsigned)n, threads, sizeof(float) * (size_t)d, c->s>>>(d, x);
		rc = LAUNCH_STATUS("hadamard_kernel");
	}
	return cuda_end(cb, c, rc);
}

// ---- topk: one block; a radix select of the k-th largest key, then an ordered compaction ------------------

// The exclusive prefix sum of v over the block in thread order, and the block's total. ws: 32 ints.
static __device__ int block_scan(int v, int *total, int *ws)
{
	int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = blockDim.x / 32;
	int inc = v;
	for (int o = 1; o < 32; o <<= 1) {
		int u = __shfl_up_sync(0xffffffffu, inc, o);
		if (lane >= o)
			inc += u;
	}
	__syncthreads(); // ws may still be read by an earlier call
	if (lane == 31)
		ws[warp] = inc;
	__syncthreads();
	int before = 0, tot = 0;
	for (int w = 0; w < nw; w++) {
		before += w < warp ? ws[w] : 0;
		tot += ws[w];
	}
	*total = tot;
	return before + inc - v;
}

// The keys (dm_topk_key) order the values as dsm_ref_topk does. Four rounds of 8 bits find the k-th
// largest key K and how many keys equal to K are taken (the rest of k after those above K); the
// compaction then walks the positions in order, taking every key above K and the first ones equal to K:
// ties go to the lower position and idx comes out ascending.
__global__ void topk_kernel(const float *x, int64_t n, int64_t k, int32_t *idx)
{
	__shared__ unsigned hist[256];
	__shared__ uint32_t s_prefix, s_mask;
	__shared__ long long s_want, s_eq_seen, s_out;
	__shared__ int ws[32];
	if (threadIdx.x == 0) {
		s_prefix = 0;
		s_mask = 0;
		s_want = k;
		s_eq_seen = 0;
		s_out = 0;
	}
	for (int shift = 24; shift >= 0; shift -= 8) {
		for (int i = threadIdx.x; i < 256; i += blockDim.x)
			hist[i] = 0;
		__syncthreads();
		uint32_t prefix = s_prefix, mask = s_mask;
		for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
			uint32_t key = dm_topk_key(x[i]);
			if ((key & mask) == prefix)
				atomicAdd(&hist[(key >> shift) & 255u], 1u);
		}
		__syncthreads();
		if (threadIdx.x == 0) {
			long long want = s_want, cum = 0;
			for (int b = 255; b >= 0; b--) {
				if (cum + hist[b] >= want) {
					s_prefix = prefix | ((uint32_t)b << shift);
					s_mask = mask | (255u << shift);
					s_want = want - cum;
					break;
				}
				cum += hist[b];
			}
		}
		__syncthreads();
	}
	uint32_t K = s_prefix;
	long long need_eq = s_want;
	for (int64_t base = 0; base < n; base += blockDim.x) {
		int64_t i = base + threadIdx.x;
		uint32_t key = i < n ? dm_topk_key(x[i]) : 0;
		int gt = i < n && key > K, eq = i < n && key == K;
		int eq_total, take_total;
		int eq_rank = block_scan(eq, &eq_total, ws);
		long long eq_seen = s_eq_seen, out = s_out;
		int take = gt || (eq && eq_seen + eq_rank < need_eq);
		int pos = block_scan(take, &take_total, ws);
		if (take)
			idx[out + pos] = (int32_t)i;
		__syncthreads(); // every thread has read s_eq_seen and s_out
		if (threadIdx.x == 0) {
			s_eq_seen = eq_seen + eq_total;
			s_out = out + take_total;
		}
		__syncthreads();
		if (s_out >= k)
			break; // the same in every thread
	}
}

int cuda_topk(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (k < 0 || k > n || n > INT32_MAX)
		rc = dsm_fail(DSM_EARG, "topk: k = %lld of n = %lld", (long long)k, (long long)n);
	else if (k > 0) {
		topk_kernel<<<1, TOPK_THREADS, 0, c->s>>>(x, n, k, idx);
		rc = LAUNCH_STATUS("topk_kernel");
	}
	return cuda_end(cb, c, rc);
}

// ---- route (noaux_tc): one warp per token --------------------------------------------------------------

__global__ void route_kernel(int64_t E, const float *logits, const float *bias, int G, int topk_group, int top_k,
			     int normalize, float scaling, int32_t *idx, float *weight)
{
	extern __shared__ float rs[]; // s [E], b [E], group scores [G], kept [G], taken [E]
	float *s = rs, *b = s + E, *gs = b + E;
	int *kept = (int *)(gs + G), *taken = kept + G;
	int lane = threadIdx.x;
	int64_t t = blockIdx.x, per = E / G;
	for (int64_t e = lane; e < E; e += 32) {
		s[e] = dm_sigmoid(logits[t * E + e]);
		b[e] = s[e] + bias[e];
		taken[e] = 0;
	}
	__syncwarp();
	for (int g = lane; g < G; g += 32) {
		kept[g] = G == 1;
		if (G > 1) {
			float m1 = -INFINITY, m2 = -INFINITY;
			for (int64_t e = g * per; e < (g + 1) * per; e++)
				dm_top2_push(&m1, &m2, b[e]);
			gs[g] = m1 + m2;
		}
	}
	__syncwarp();
	if (G > 1 && lane == 0)
		for (int k = 0; k < topk_group; k++) {
			int best = -1;
			for (int g = 0; g < G; g++)
				if (!kept[g] && (best < 0 || dm_better(gs[g], g, gs[best], best)))
					best = g;
			kept[best] = 1;
		}
	__syncwarp();
	int chosen[ROUTE_MAX_TOPK];
	for (int k = 0; k < top_k; k++) {
		// the best expert not taken yet: each lane's best of its experts, then the warp's
		float bv = 0.0f;
		int bi = -1;
		for (int64_t e = lane; e < E; e += 32) {
			if (taken[e])
				continue;
			float v = kept[e / per] ? b[e] : -INFINITY;
			if (bi < 0 || dm_better(v, e, bv, bi)) {
				bv = v;
				bi = (int)e;
			}
		}
		for (int o = 16; o > 0; o >>= 1) {
			float ov = __shfl_xor_sync(0xffffffffu, bv, o);
			int oi = __shfl_xor_sync(0xffffffffu, bi, o);
			if (oi >= 0 && (bi < 0 || dm_better(ov, oi, bv, bi))) {
				bv = ov;
				bi = oi;
			}
		}
		chosen[k] = bi; // the same in every lane: dm_better is a total order
		if (lane == 0)
			taken[bi] = 1;
		__syncwarp();
	}
	if (lane == 0) {
		for (int i = 1; i < top_k; i++)
			for (int j = i; j > 0 && chosen[j - 1] > chosen[j]; j--) {
				int tmp = chosen[j];
				chosen[j] = chosen[j - 1];
				chosen[j - 1] = tmp;
			}
		double sum = 0;
		for (int k = 0; k < top_k; k++)
			sum += s[chosen[k]];
		for (int k = 0; k < top_k; k++) {
			idx[t * top_k + k] = chosen[k];
			weight[t * top_k + k] = dm_route_weight(s[chosen[k]], sum, normalize, scaling);
		}
	}
}

int cuda_route(struct dsm_backend *be, const struct dsm_route_args *a)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	int64_t E = a->n_experts;
	int G = a->n_group;
	size_t smem = 0;
	if (G < 1 || E % G || a->topk_group < 1 || a->topk_group > G || a->top_k < 1 ||
	    a->top_k > a->topk_group * (E / G) || (G > 1 && E / G < 2))
		rc = dsm_fail(DSM_EARG, "route: bad grouping (%lld experts, %d groups, keep %d, top %d)", (long long)E, G,
			      a->topk_group, a->top_k);
	else if (a->top_k > ROUTE_MAX_TOPK || (smem = sizeof(float) * (size_t)(3 * E + 2 * G)) > 48 * 1024)
		rc = dsm_fail(DSM_EUNSUPPORTED, "cuda route: %lld experts, top %d (at most %d)", (long long)E, a->top_k,
			      ROUTE_MAX_TOPK);
	else if ((rc = check_rows(a->n_tokens, "route")) == 0 && a->n_tokens > 0) {
		route_kernel<<<(unsigned)a->n_tokens, 32, smem, c->s>>>(E, a->logits, a->bias, G, a->topk_group, a->top_k,
								       a->normalize, a->scaling, a->idx, a->weight);
		rc = LAUNCH_STATUS("route_kernel");
	}
	return cuda_end(cb, c, rc);
}

// ---- glue: add, scale, convert, gather, fp8_round --------------------------------------------------------

#define GLUE_THREADS 256

__global__ void add_kernel(int64_t n, float *x, const float *y)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		x[i] += y[i];
}

__global__ void scale_kernel(int64_t n, float *x, float s)
{
	for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (int64_t)gridDim.x * blockDim.x)
		x[i] *= s;
}

int cuda_add(struct dsm_backend *be, int64_t n, float *x, const float *y)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (n > 0) {
		add_kernel<<<grid_for(n, GLUE_THREADS), GLUE_THREADS, 0, c->s>>>(n, x, y);
		rc = LAUNCH_STATUS("add_kernel");
	}
	return cuda_end(cb, c, rc);
}

int cuda_scale(struct dsm_backend *be, int64_t n, float *x, float s)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (n > 0) {
		scale_kernel<<<grid_for(n, GLUE_THREADS), GLUE_THREADS, 0, c->s>>>(n, x, s);
		rc = LAUNCH_STATUS("scale_kernel");
	}
	return cuda_end(cb, c, rc);
}

// convert: blocks over the rows (grid-stride), threads over a row's values.
__global__ void convert_kernel(int64_t rows, int64_t cols, const void *x, int xt, int64_t ldx, void *y, int yt,
			       int64_t ldy)
{
	for (int64_t r = blockIdx.x; r < rows; r += gridDim.x)
		for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
			dm_convert_elem(x, xt, r * ldx + j, y, yt, r * ldy + j);
}

int cuda_convert(struct dsm_backend *be, int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx,
		 void *y, enum dsm_dtype yt, int64_t ldy)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if ((xt != DSM_F32 && xt != DSM_BF16) || (yt != DSM_F32 && yt != DSM_BF16))
		rc = dsm_fail(DSM_EUNSUPPORTED, "cuda convert: %s to %s (F32 and BF16 only)", dsm_dtype_name(xt),
			      dsm_dtype_name(yt));
	else if (rows > 0 && cols > 0) {
		unsigned grid = (unsigned)(rows < 65536 ? rows : 65536);
		convert_kernel<<<grid, GLUE_THREADS, 0, c->s>>>(rows, cols, x, (int)xt, ldx, y, (int)yt, ldy);
		rc = LAUNCH_STATUS("convert_kernel");
	}
	return cuda_end(cb, c, rc);
}

// gather: a block per gathered block (grid-stride over them), threads over its rows * cols values, which are
// contiguous on both sides. x is the device copy of (a chunk of) the pointer table; y the chunk's first row; the
// chunk's last block has last_rows rows.
__global__ void gather_kernel(int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows, int64_t cols,
			      int xt, void *y, int yt)
{
	for (int64_t b = blockIdx.x; b < n; b += gridDim.x) {
		const void *src = x[b];
		int64_t m = (b == n - 1 ? last_rows : block_rows) * cols, y0 = b * block_rows * cols;
		for (int64_t j = threadIdx.x; j < m; j += blockDim.x)
			dm_convert_elem(src, xt, j, y, yt, y0 + j);
	}
}

// The pointer table is host memory: staged in chunks of blocks that fit a slot, a launch per chunk.
static int gather_run(struct cuda_ctx *c, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		      int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt)
{
	const int64_t per = (int64_t)(STAGE_BYTES / sizeof *x);
	size_t row_bytes = (size_t)cols * (yt == DSM_BF16 ? 2 : 4);
	for (int64_t b0 = 0; b0 < n; b0 += per) {
		int64_t nb = n - b0 < per ? n - b0 : per;
		void *dx;
		int slot, rc = cuda_stage(c, x + b0, sizeof *x * (size_t)nb, &dx, &slot);
		if (rc < 0)
			return rc;
		gather_kernel<<<grid_for(nb, 1), GLUE_THREADS, 0, c->s>>>(
			nb, (const void *const *)dx, block_rows, b0 + nb == n ? last_rows : block_rows, cols, (int)xt,
			(char *)y + (size_t)(b0 * block_rows) * row_bytes, (int)yt);
		rc = LAUNCH_STATUS("gather_kernel");
		int rs = cuda_stage_done(c, slot); // also after a failed launch: the slot's copy was submitted
		if (rc < 0 || (rc = rs) < 0)
			return rc;
	}
	return 0;
}

int cuda_gather(struct dsm_backend *be, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (n < 0 || cols < 0)
		rc = dsm_fail(DSM_EARG, "cuda gather: n = %lld blocks of %lld values a row", (long long)n, (long long)cols);
	else if (n == 0)
		rc = 0;
	else if ((xt != DSM_F32 && xt != DSM_BF16) || (yt != DSM_F32 && yt != DSM_BF16))
		rc = dsm_fail(DSM_EUNSUPPORTED, "cuda gather: %s to %s (F32 and BF16 only)", dsm_dtype_name(xt),
			      dsm_dtype_name(yt));
	else if (last_rows < 1 || last_rows > block_rows)
		rc = dsm_fail(DSM_EARG, "cuda gather: last block of %lld rows, blocks of %lld (1 <= last_rows <= "
			      "block_rows)", (long long)last_rows, (long long)block_rows);
	else if (!x)
		rc = dsm_fail(DSM_EARG, "cuda gather: no block table for %lld blocks", (long long)n);
	else if (cols > 0)
		rc = gather_run(c, n, x, block_rows, last_rows, cols, xt, y, yt);
	return cuda_end(cb, c, rc);
}

// fp8_round: a block of DM_BLOCK threads per 128-value block of a row (grid-stride over the blocks of all
// rows), a thread per value; the block's amax by a max reduction (exact, so in any order).
__global__ void fp8_round_kernel(int64_t n, int64_t d, float *x, int ue8m0)
{
	__shared__ float red[DM_BLOCK / 32];
	int64_t per_row = (d + DM_BLOCK - 1) / DM_BLOCK;
	int lane = threadIdx.x & 31, warp = threadIdx.x / 32;
	for (int64_t b = blockIdx.x; b < n * per_row; b += gridDim.x) {
		int64_t j = (b % per_row) * DM_BLOCK + threadIdx.x;
		float *v = x + (b / per_row) * d + j;
		int in = j < d;
		float m = in ? dm_amax_push(DM_AMAX_FLOOR, *v) : DM_AMAX_FLOOR;
		for (int o = 16; o > 0; o >>= 1)
			m = dm_amax_push(m, __shfl_xor_sync(0xffffffffu, m, o));
		__syncthreads(); // red may still be read for the previous block
		if (lane == 0)
			red[warp] = m;
		__syncthreads();
		for (int w = 0; w < DM_BLOCK / 32; w++)
			m = dm_amax_push(m, red[w]);
		if (in)
			*v = dm_fp8_round_value(*v, dm_fp8_block_scale(m, ue8m0));
	}
}

int cuda_fp8_round(struct dsm_backend *be, int64_t n, int64_t d, float *x, int ue8m0)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	if (n > 0 && d > 0) {
		fp8_round_kernel<<<grid_for(n * ((d + DM_BLOCK - 1) / DM_BLOCK), 1), DM_BLOCK, 0, c->s>>>(n, d, x, ue8m0);
		rc = LAUNCH_STATUS("fp8_round_kernel");
	}
	return cuda_end(cb, c, rc);
}
