// MLA attention (full and absorbed forms) and the lightning indexer's scores (docs/cuda.md).
//
// Both attention forms use the online softmax of device_math.h: a warp walks its share of the allowed keys
// keeping (max, sum, weighted values) in registers, so no score row is stored; the warps' (or splits')
// states are then merged in a fixed order, which keeps the result independent of timing.
#include "cuda_internal.h"
#include "device_math.h"

#define ATT_WARPS 8
#define ATT_VMAX 16        // value dims per lane: dv and the latent rank r up to 512
#define ATT_QMAX 16        // nope / latent query dims per lane: up to 512
#define ATT_RMAX 4         // rope dims per lane: up to 128
#define ATT_MAX_SPLITS 64  // key splits of the absorbed form
#define ATT_MIN_CHUNK 32   // keys per split at least

static __device__ __forceinline__ float warp_sum(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

// Writes this warp's state to ws = [m, l, acc[0 .. dv)].
static __device__ __forceinline__ void put_state(float *ws, struct dm_softmax st, const float *acc, int64_t dv)
{
	int lane = threadIdx.x & 31;
	if (lane == 0) {
		ws[0] = st.m;
		ws[1] = st.l;
	}
	for (int k = 0; k < ATT_VMAX; k++) {
		int64_t j = lane + 32 * k;
		if (j < dv)
			ws[2 + j] = acc[k];
	}
}

// out[j] for j < dv from n states at stride ld (each [m, l, acc]): merged in order, normalized.
static __device__ __forceinline__ float merge_states(const float *st0, int n, int64_t ld, int64_t j)
{
	struct dm_softmax tot = dm_softmax_init();
	float o = 0.0f;
	for (int w = 0; w < n; w++) {
		const float *ws = st0 + w * ld;
		struct dm_softmax sw;
		sw.m = ws[0];
		sw.l = ws[1];
		float as, ao;
		dm_softmax_merge(&tot, sw, &as, &ao);
		o = o * as + (ao != 0.0f ? ws[2 + j] * ao : 0.0f);
	}
	return o * dm_softmax_norm(tot);
}

// ---- full form: one block per query, its warps share the keys -------------------------------------

__global__ void attn_full_kernel(int64_t dn, int64_t dr, int64_t dv, const float *q, int64_t ldq, const float *kv,
				 const float *k_pe, const int64_t *n_keys, const struct dsm_attn_mask *mask, float scale,
				 float *out, int64_t ldo)
{
	extern __shared__ float sh[]; // ATT_WARPS states of dv + 2
	int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
	int64_t t = blockIdx.x, dkv = dn + dv;
	const float *qt = q + t * ldq;
	float qn[ATT_QMAX], qr[ATT_RMAX], acc[ATT_VMAX];
	for (int k = 0; k < ATT_QMAX; k++)
		qn[k] = lane + 32 * k < dn ? qt[lane + 32 * k] : 0.0f;
	for (int k = 0; k < ATT_RMAX; k++)
		qr[k] = lane + 32 * k < dr ? qt[dn + lane + 32 * k] : 0.0f;
	for (int k = 0; k < ATT_VMAX; k++)
		acc[k] = 0.0f;
	const int32_t *sel = mask ? mask[t].sel : NULL;
	int64_t m = sel ? mask[t].n_sel : n_keys[t];
	struct dm_softmax st = dm_softmax_init();
	for (int64_t i = warp; i < m; i += ATT_WARPS) {
		int64_t s = sel ? sel[i] : i;
		const float *kr = kv + s * dkv, *pr = k_pe + s * dr;
		float d = 0.0f;
		for (int k = 0; k < ATT_QMAX; k++)
			if (lane + 32 * k < dn)
				d += qn[k] * kr[lane + 32 * k];
		for (int k = 0; k < ATT_RMAX; k++)
			if (lane + 32 * k < dr)
				d += qr[k] * pr[lane + 32 * k];
		float alpha, p = dm_softmax_push(&st, warp_sum(d) * scale, &alpha);
		for (int k = 0; k < ATT_VMAX; k++)
			if (lane + 32 * k < dv)
				acc[k] = acc[k] * alpha + p * kr[dn + lane + 32 * k];
	}
	put_state(sh + warp * (dv + 2), st, acc, dv);
	__syncthreads();
	for (int64_t j = threadIdx.x; j < dv; j += blockDim.x)
		out[t * ldo + j] = merge_states(sh, ATT_WARPS, dv + 2, j);
}

static int attn_full_run(struct cuda_ctx *c, const struct dsm_attn_full_args *a)
{
	if (a->dn < 0 || a->dr < 0 || a->dv < 0 || a->dn > 32 * ATT_QMAX || a->dr > 32 * ATT_RMAX ||
	    a->dv > 32 * ATT_VMAX)
		return dsm_fail(DSM_EUNSUPPORTED, "cuda attn_full: head dims %lld + %lld, values %lld (at most %d + %d, %d)",
				(long long)a->dn, (long long)a->dr, (long long)a->dv, 32 * ATT_QMAX, 32 * ATT_RMAX,
				32 * ATT_VMAX);
	size_t smem = sizeof(float) * (size_t)(ATT_WARPS * (a->dv + 2));
	// The mask table is host memory: staged in chunks of queries that fit a slot.
	int64_t per = a->mask ? (int64_t)(STAGE_BYTES / sizeof(struct dsm_attn_mask)) : 65535;
	if (per > 65535)
		per = 65535;
	for (int64_t t0 = 0; t0 < a->n_q; t0 += per) {
		int64_t T = a->n_q - t0 < per ? a->n_q - t0 : per;
		void *dmask = NULL;
		int slot = -1, rc;
		if (a->mask && (rc = cuda_stage(c, a->mask + t0, sizeof(struct dsm_attn_mask) * (size_t)T, &dmask, &slot)) < 0)
			return rc;
		attn_full_kernel<<<(unsigned)T, ATT_WARPS * 32, smem, c->s>>>(
			a->dn, a->dr, a->dv, a->q + t0 * a->ldq, a->ldq, a->kv, a->k_pe, a->n_keys + t0,
			(const struct dsm_attn_mask *)dmask, a->scale, a->out + t0 * a->ldo, a->ldo);
		LAUNCH_CHECK();
		if (slot >= 0 && (rc = cuda_stage_done(c, slot)) < 0)
			return rc;
	}
	return 0;
}

int cuda_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	return cuda_end(cb, c, attn_full_run(c, a));
}

// ---- absorbed form: a warp per head, blocks over head groups x key splits, then a merge -------------

static __device__ __forceinline__ float cache_at(const void *base, int bf16, int64_t at)
{
	return bf16 ? dm_bf16_to_f32(((const uint16_t *)base)[at]) : ((const float *)base)[at];
}

// part[(h * splits + sp) * (r + 2)]: the state of head h over the keys of split sp. The warps of a block
// are heads that read the same keys, so each key row comes from DRAM once per block. Key s's rows are at
// c + s * r and k_pe + s * dr, or (c_blocks not NULL: the cache in blocks) in the blocks of the device copies
// of the tables c_blocks and pe_blocks (dm_cache_row); the arithmetic is the same either way.
__global__ void attn_latent_kernel(int64_t H, int64_t r, int64_t dr, const float *q_lat, const float *q_pe,
				   int cache_bf16, const void *c, const void *k_pe, const void *const *c_blocks,
				   const void *const *pe_blocks, int64_t block_rows, const int32_t *sel, int64_t m,
				   int64_t chunk, int splits, float scale, float *part)
{
	int warp = threadIdx.x / 32, lane = threadIdx.x & 31;
	int64_t h = (int64_t)blockIdx.x * ATT_WARPS + warp;
	int sp = blockIdx.y;
	if (h >= H)
		return; // the whole warp; no block-wide synchronization follows
	float qn[ATT_QMAX], qr[ATT_RMAX], acc[ATT_VMAX];
	for (int k = 0; k < ATT_QMAX; k++)
		qn[k] = lane + 32 * k < r ? q_lat[h * r + lane + 32 * k] : 0.0f;
	for (int k = 0; k < ATT_RMAX; k++)
		qr[k] = lane + 32 * k < dr ? q_pe[h * dr + lane + 32 * k] : 0.0f;
	for (int k = 0; k < ATT_VMAX; k++)
		acc[k] = 0.0f;
	struct dm_softmax st = dm_softmax_init();
	int64_t es = cache_bf16 ? 2 : 4;
	int64_t i1 = (sp + 1) * chunk < m ? (sp + 1) * chunk : m;
	for (int64_t i = sp * chunk; i < i1; i++) {
		int64_t s = sel ? sel[i] : i;
		const void *crow = dm_cache_row(c, c_blocks, block_rows, s, r, es);
		const void *prow = dm_cache_row(k_pe, pe_blocks, block_rows, s, dr, es);
		float cv[ATT_VMAX];
		float d = 0.0f;
		for (int k = 0; k < ATT_QMAX; k++) {
			cv[k] = lane + 32 * k < r ? cache_at(crow, cache_bf16, lane + 32 * k) : 0.0f;
			d += qn[k] * cv[k];
		}
		for (int k = 0; k < ATT_RMAX; k++)
			if (lane + 32 * k < dr)
				d += qr[k] * cache_at(prow, cache_bf16, lane + 32 * k);
		float alpha, p = dm_softmax_push(&st, warp_sum(d) * scale, &alpha);
		for (int k = 0; k < ATT_VMAX; k++)
			acc[k] = acc[k] * alpha + p * cv[k];
	}
	put_state(part + (h * splits + sp) * (r + 2), st, acc, r);
}

__global__ void attn_latent_merge_kernel(int64_t r, int splits, const float *part, float *o_lat)
{
	int64_t h = blockIdx.x;
	for (int64_t j = threadIdx.x; j < r; j += blockDim.x)
		o_lat[h * r + j] = merge_states(part + h * splits * (r + 2), splits, r + 2, j);
}

// Splits of m keys for H heads: enough blocks to fill the device twice, at least ATT_MIN_CHUNK keys each.
static int latent_splits(const struct cuda_backend *cb, int64_t H, int64_t m, int64_t *chunk)
{
	int64_t groups = (H + ATT_WARPS - 1) / ATT_WARPS;
	int64_t want = (2 * (int64_t)cb->n_sm + groups - 1) / (groups > 0 ? groups : 1);
	int64_t by_keys = (m + ATT_MIN_CHUNK - 1) / ATT_MIN_CHUNK;
	int64_t s = want < by_keys ? want : by_keys;
	if (s > ATT_MAX_SPLITS)
		s = ATT_MAX_SPLITS;
	if (s < 1)
		s = 1;
	*chunk = m > 0 ? (m + s - 1) / s : 1;
	return (int)s;
}

size_t cuda_attn_scratch_bytes(const struct cuda_backend *cb, int64_t max_keys, int64_t n_heads, int64_t head_dim)
{
	int64_t chunk;
	int s = latent_splits(cb, n_heads, max_keys, &chunk);
	return sizeof(float) * (size_t)(n_heads * s * (head_dim + 2));
}

static int attn_latent_run(struct cuda_backend *cb, struct cuda_ctx *c, const struct dsm_attn_latent_args *a)
{
	int64_t H = a->n_heads, r = a->r, dr = a->dr;
	if (r < 0 || dr < 0 || r > 32 * ATT_VMAX || dr > 32 * ATT_RMAX)
		return dsm_fail(DSM_EUNSUPPORTED, "cuda attn_latent: rank %lld, rope %lld (at most %d, %d)", (long long)r,
				(long long)dr, 32 * ATT_VMAX, 32 * ATT_RMAX);
	if (a->cache_dtype != DSM_BF16 && a->cache_dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "cuda attn_latent: cache dtype %s", dsm_dtype_name(a->cache_dtype));
	if (a->c_blocks) {
		if (a->block_rows < 1)
			return dsm_fail(DSM_EARG, "cuda attn_latent: cache in blocks of %lld rows (at least 1)",
					(long long)a->block_rows);
		if (!a->pe_blocks)
			return dsm_fail(DSM_EARG, "cuda attn_latent: latent cache in blocks but no rope key block table");
		int64_t nb = a->n_keys > 0 ? (a->n_keys + a->block_rows - 1) / a->block_rows : 0;
		if (nb > (int64_t)(STAGE_BYTES / sizeof(void *)))
			return dsm_fail(DSM_EARG, "cuda attn_latent: %lld keys in blocks of %lld rows are %lld blocks, a table "
					"of %lld bytes; a staging slot holds %d bytes (%lld blocks)", (long long)a->n_keys,
					(long long)a->block_rows, (long long)nb, (long long)nb * (long long)sizeof(void *),
					STAGE_BYTES, (long long)(STAGE_BYTES / sizeof(void *)));
	}
	if (H <= 0 || r == 0)
		return 0;
	if (H > 65535 * ATT_WARPS)
		return dsm_fail(DSM_EARG, "cuda attn_latent: %lld heads", (long long)H);
	int64_t m = a->mask.sel ? a->mask.n_sel : a->n_keys, chunk;
	int splits = latent_splits(cb, H, m, &chunk);
	int rc = cuda_buf_get(c, &c->attn, sizeof(float) * (size_t)(H * splits * (r + 2)), "attention scratch");
	if (rc < 0)
		return rc;
	float *part = (float *)c->attn.p;
	// The cache in blocks: its two host tables, each in a staging slot of its own.
	void *dcb = NULL, *dpb = NULL;
	int cslot = -1, pslot = -1;
	int64_t nb = a->c_blocks && a->n_keys > 0 ? (a->n_keys + a->block_rows - 1) / a->block_rows : 0;
	if (nb > 0) {
		size_t tb = sizeof(void *) * (size_t)nb;
		if ((rc = cuda_stage(c, a->c_blocks, tb, &dcb, &cslot)) < 0)
			return rc;
		if ((rc = cuda_stage(c, a->pe_blocks, tb, &dpb, &pslot)) < 0) {
			int rs = cuda_stage_done(c, cslot); // its copy was submitted
			return rs < 0 ? rs : rc;
		}
	}
	dim3 grid(cuda_blocks(H, ATT_WARPS), (unsigned)splits);
	attn_latent_kernel<<<grid, ATT_WARPS * 32, 0, c->s>>>(
		H, r, dr, a->q_lat, a->q_pe, a->cache_dtype == DSM_BF16, a->c, a->k_pe, (const void *const *)dcb,
		(const void *const *)dpb, a->block_rows, a->mask.sel, m, chunk, splits, a->scale, part);
	rc = LAUNCH_STATUS("attn_latent_kernel");
	if (nb > 0) { // also after a failed launch: the slots' copies were submitted
		int rs = cuda_stage_done(c, cslot);
		if (rs == 0)
			rs = cuda_stage_done(c, pslot);
		if (rc == 0)
			rc = rs;
	}
	if (rc < 0)
		return rc;
	attn_latent_merge_kernel<<<(unsigned)H, 256, 0, c->s>>>(r, splits, part, a->o_lat);
	LAUNCH_CHECK();
	return 0;
}

int cuda_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	return cuda_end(cb, c, attn_latent_run(cb, c, a));
}

// ---- lightning indexer: a warp per key, all heads ---------------------------------------------------

// Key s at k + s * d, or (k_blocks, a device copy of the table) in its block (dm_cache_row).
__global__ void indexer_kernel(int64_t H, int64_t d, const float *q, const float *w, const float *k,
			       const void *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out)
{
	int lane = threadIdx.x & 31;
	int64_t s = (int64_t)blockIdx.x * ATT_WARPS + threadIdx.x / 32;
	if (s >= n_keys)
		return;
	const float *ks = (const float *)dm_cache_row(k, k_blocks, block_rows, s, d, (int64_t)sizeof(float));
	float kr[ATT_QMAX];
	for (int j = 0; j < ATT_QMAX; j++)
		kr[j] = lane + 32 * j < d ? ks[lane + 32 * j] : 0.0f;
	float acc = 0.0f;
	for (int64_t h = 0; h < H; h++) {
		float dot = 0.0f;
		for (int j = 0; j < ATT_QMAX; j++)
			if (lane + 32 * j < d)
				dot += q[h * d + lane + 32 * j] * kr[j];
		acc += dm_relu_weighted(w[h], warp_sum(dot));
	}
	if (lane == 0)
		out[s] = acc;
}

int cuda_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
			const float *k, const float *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0)
		return rc;
	int64_t nb = k_blocks && block_rows > 0 && n_keys > 0 ? (n_keys + block_rows - 1) / block_rows : 0;
	if (d < 0 || d > 32 * ATT_QMAX)
		rc = dsm_fail(DSM_EUNSUPPORTED, "cuda indexer_scores: head dim %lld (at most %d)", (long long)d,
			      32 * ATT_QMAX);
	else if (k_blocks && block_rows < 1)
		rc = dsm_fail(DSM_EARG, "cuda indexer_scores: key blocks of %lld rows", (long long)block_rows);
	else if (n_keys > 0) {
		// The key blocks' host table goes to the device through a staging slot.
		void *dkb = NULL;
		int slot = -1;
		if (nb > 0)
			rc = cuda_stage(c, k_blocks, sizeof(void *) * (size_t)nb, &dkb, &slot);
		if (rc == 0) {
			indexer_kernel<<<cuda_blocks(n_keys, ATT_WARPS), ATT_WARPS * 32, 0, c->s>>>(
				n_heads, d, q, w, k, (const void *const *)dkb, block_rows, n_keys, out);
			rc = LAUNCH_STATUS("indexer_kernel");
		}
		if (slot >= 0) { // also after a failed launch: the slot's copy was submitted
			int rs = cuda_stage_done(c, slot);
			if (rc == 0)
				rc = rs;
		}
	}
	return cuda_end(cb, c, rc);
}
