/* CPU expert kernels: FP8 E4M3 block-scaled matmuls at the memory-bandwidth limit (docs/kernels.md).
 *
 * Three levels, each usable alone:
 *   1. single-thread row-range kernels (dsm_fp8_gemv_rows, dsm_fp8_gemm_rows) and their scalar reference
 *      (dsm_fp8_gemv_ref), for callers that run their own threads;
 *   2. a context (struct dsm_expert_ctx) that owns OpenMP threads bound to cores and their scratch, and runs
 *      one matmul (dsm_fp8_matmul), one SwiGLU expert (dsm_expert_ffn) or a whole MoE layer
 *      (dsm_moe_layer) across them;
 *   3. the NUMA split: an expert's intermediate dimension cut into one part per NUMA node
 *      (dsm_expert_node_range) so that every node streams only its local memory.
 *
 * Weights stay FP8: nothing here materializes a dequantized matrix. Decode (few tokens per expert) reads the
 * FP8 codes once and multiplies them by up to 8 activation vectors in registers; batches (many tokens per
 * expert) dequantize 128-row x 512-column BF16 tiles into a per-thread buffer that stays in L2 and run a
 * BF16 dot-product GEMM on them. The switch point is a context setting (measured default: docs/kernels.md).
 *
 * Numerics: accumulation is F32. The BF16 kernels (DSM_ISA_AVX512BF16) convert FP8 codes to BF16 exactly
 * (subnormal codes included) and round x * block_scale to BF16; the batched path rounds
 * code * block_scale to BF16 and x to BF16. The other ISAs compute in F32 from exact F32 weights. NaN codes
 * (0x7F, 0xFF; never present in real checkpoints) are not guaranteed to propagate. Every result is a fixed
 * function of the inputs: the same call gives bit-identical results whatever the thread count.
 *
 * Errors: functions return 0 or a negative DSM_E* code with a message (kernels/error.h). */
#ifndef DSM_EXPERT_KERNELS_H
#define DSM_EXPERT_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define DSM_FP8_BLOCK 128      /* 128 x 128 weights share one scale */
#define DSM_GEMV_MAX_TOKENS 8  /* tokens one pass of the decode kernel multiplies */
#define DSM_EXPERT_MAX_NODES 8 /* NUMA nodes an expert may be split across */

/* An FP8 E4M3 matrix W [rows, cols] (PyTorch Linear layout: out x in) with its block scales, or a
 * block-aligned window of a larger one (dsm_fp8_mat_window). The real value of element (r, c) is
 * dsm_fp8_table[w[r * ld + c]] * scale[(r / 128) * scale_ld + c / 128]. */
struct dsm_fp8_mat {
	const uint8_t *w;      /* [rows, ld] codes */
	const float *scale;    /* [ceil(rows / 128), scale_ld] multipliers */
	size_t rows, cols;
	size_t ld;             /* bytes from row r to row r + 1, >= cols */
	size_t scale_ld;       /* floats from one scale row to the next, >= ceil(cols / 128) */
};

/* A dense matrix: ld = cols, scale_ld = ceil(cols / 128). */
static inline struct dsm_fp8_mat dsm_fp8_mat_dense(const uint8_t *w, const float *scale, size_t rows,
						   size_t cols)
{
	struct dsm_fp8_mat m = { w, scale, rows, cols, cols, (cols + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK };
	return m;
}

/* out = rows [r0, r0 + nr) x cols [c0, c0 + nc) of m, sharing its memory. r0 and c0 must be multiples of
 * 128 (so the window has its own whole scale blocks). DSM_EARG otherwise or when out of range. */
int dsm_fp8_mat_window(struct dsm_fp8_mat *out, const struct dsm_fp8_mat *m, size_t r0, size_t nr, size_t c0,
		       size_t nc);

/* ---- Instruction sets ------------------------------------------------------------------------------- */

enum dsm_isa {
	DSM_ISA_AUTO = -1,     /* the best this CPU has (dsm_isa_best) */
	DSM_ISA_SCALAR = 0,    /* the reference: plain C, F32 weights, double accumulation */
	DSM_ISA_AVX2,          /* AVX2 + FMA, F32 */
	DSM_ISA_AVX512F,       /* AVX-512F, F32 */
	DSM_ISA_AVX512BF16,    /* AVX-512 BW/VBMI/BF16: exact FP8 -> BF16 by table, vdpbf16ps */
	DSM_ISA_COUNT
};

/* 1 if this CPU runs isa (CPUID), else 0. SCALAR is always available. */
int dsm_isa_available(enum dsm_isa isa);
/* The fastest available ISA. */
enum dsm_isa dsm_isa_best(void);
/* "scalar", "avx2", "avx512f", "avx512bf16", "auto". */
const char *dsm_isa_name(enum dsm_isa isa);
/* From a name as dsm_isa_name gives it; DSM_EARG when unknown. */
int dsm_isa_parse(const char *name, enum dsm_isa *isa);

/* ---- Level 1: single-thread kernels ----------------------------------------------------------------- */

/* Reference (the oracle of the tests): y[t, r] = sum_c W[r, c] * x[t, c] for every row, t < n_tok, with
 * weights dequantized exactly and sums in double. x [n_tok, x_ld], y [n_tok, y_ld]. */
void dsm_fp8_gemv_ref(const struct dsm_fp8_mat *W, const float *x, size_t x_ld, size_t n_tok, float *y,
		      size_t y_ld);

/* How the AVX-512 BF16 decode kernel walks a matrix (the memory side; the arithmetic is the same): column
 * blocks of col_block (0: whole rows) and a software prefetch per line, either the same columns rows_ahead
 * rows further or `prefetch` bytes further in the same row, and optionally a second one into L2 only, the
 * same columns whole groups of rows at least `far` bytes further. Which streams best depends on the host's
 * memory system: dsm_gemv_tune measures them. */
struct dsm_gemv_variant {
	const char *name;
	size_t col_block;
	size_t group;        /* rows per group at 1 token: 8, 4 or 1 (at most 4 at 2 tokens) */
	int rows_ahead;
	ptrdiff_t prefetch;
	size_t far;          /* 0: no second prefetch */
};
#define DSM_GEMV_VARIANTS 5
#define DSM_GEMV_LONG_ROWS 3 /* rows4-ahead4-far16k: what the one-row walk takes for rows past 8192 columns */
extern const struct dsm_gemv_variant dsm_gemv_variants[DSM_GEMV_VARIANTS];
extern int dsm_gemv_variant; /* the one in use, 0 by default */

struct dsm_expert_ctx;

/* The threads' waiting in parallel regions (barriers, the end of a region while others still work): per region,
 * the team's wall time minus each thread's working time. Threads add their working time to busy[tid * 8]
 * (a cache line each); dsm_wait_end adds the region's waiting to seconds and clears busy. */
#define DSM_WAIT_MAX_THREADS 256
struct dsm_wait_clock {
	double seconds;
	double busy[DSM_WAIT_MAX_THREADS * 8];
};
double dsm_wall_seconds(void);
/* Reads one byte of every 4 KiB page of [p, p + n) on all threads: after a copy, before it is measured or timed. */
void dsm_touch_pages(const void *p, uint64_t n);
void dsm_wait_end(struct dsm_wait_clock *w, int team, double wall);
/* The waiting of the context's regions so far (seconds summed over threads). */
double dsm_expert_ctx_wait_seconds(const struct dsm_expert_ctx *ctx);

/* What a decode kernel's measurement of its variants found (dsm_tune_variants): each variant's rate (GB/s,
 * its best round) and the choice. */
#define DSM_TUNE_MAX_VARIANTS 5
#define DSM_TUNE_ROUNDS 5
struct dsm_gemv_tune_result {
	double gbps[DSM_TUNE_MAX_VARIANTS];
	int rounds;
	size_t bytes;                  /* bytes of weights each variant read per round */
	double seconds;                /* the whole measurement */
	int chosen;                    /* the variant now in use */
	char why[160];
};
/* Runs part k (0 <= k < DSM_TUNE_ROUNDS x variants) of a measurement with the variant in use and adds the bytes
 * of weights it read to *bytes. Each part reads weights no other part reads (not in cache). */
typedef int (*dsm_tune_part_fn)(void *arg, int k, size_t *bytes);
/* The measurement the decode kernels' choices share: DSM_TUNE_ROUNDS rounds, in each every variant (set in
 * *in_use) runs one part, in rotating order; *in_use ends as the variant of the fastest round unless it beats
 * variant 0 by less than 8% (the host's noise), then 0. The memory walks' variants give identical results; the
 * batched path's two arithmetics differ only in the rounding of their sums. */
int dsm_tune_variants(int n_variants, const char *const *names, int *in_use, dsm_tune_part_fn part, void *arg,
		      const char *unit, struct dsm_gemv_tune_result *r);
/* The FP8 kernel's memory walk (dsm_gemv_variant), measured on one token against the FP8 matrices
 * mats[0 .. n) (in memory, each read once: the caller gives matrices that are not in cache). Each round's parts
 * read whole matrices, or bands of whole 128-row blocks when there are fewer matrices than parts. DSM_EARG
 * when even the bands are too few for a part each (nothing changes then). */
int dsm_gemv_tune(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *mats, size_t n, struct dsm_gemv_tune_result *r);

/* Bytes of scratch dsm_fp8_gemv_rows needs for a matrix of `cols` columns (any n_tok <= 8). */
size_t dsm_fp8_gemv_scratch_size(size_t cols);

/* Decode kernel: y[t, r - r0] = sum_c W[r, c] * x[t, c] for rows r in [r0, r1), t < n_tok.
 * x [n_tok, x_ld] F32, y [n_tok, y_ld] F32 (y_ld >= r1 - r0). Up to 8 tokens share one read of the weights;
 * more tokens run in groups of 8 over each 128-row block while it is in cache. scratch:
 * dsm_fp8_gemv_scratch_size(W->cols) bytes, 64-byte aligned. isa must be available (DSM_ISA_AUTO: the
 * best). */
int dsm_fp8_gemv_rows(enum dsm_isa isa, const struct dsm_fp8_mat *W, size_t r0, size_t r1, const float *x,
		      size_t x_ld, size_t n_tok, float *y, size_t y_ld, void *scratch);

/* The transposed multiply of a band of rows at decode (the absorbed attention's per-head W^T), AVX-512 BF16
 * only: y[t * ldy + c] = sum_i x[t * x_ld + i] * BF16(W(r0 + i, c) * scale) for i < rows, c < cols / 64 * 64,
 * t < n, in ascending i with one F32 multiply and one add each: the arithmetic of the cpu backend's matmul_t at
 * decode, bit for bit (the columns past the last 64 are the caller's). next: the first row of the band the caller
 * multiplies next with as many rows, whose first lines are prefetched at the end (SIZE_MAX: none). */
void dsm_fp8_rows_t_bf16(const struct dsm_fp8_mat *W, size_t r0, size_t rows, const float *x, size_t x_ld, size_t n,
			 float *y, size_t ldy, size_t next);

/* Batched path (DSM_ISA_AVX512BF16 only). Activations are first packed to BF16 pairs:
 * a_packed [ceil(k / 2), m_pad, 2] with m_pad = m rounded up to 16, zeros past m and k. */
size_t dsm_bf16_pack_size(size_t m, size_t k);
/* Packs x [m, x_ld] F32 (k columns used) into a_packed; rows [kp0, kp1) of pairs only (for threads). */
void dsm_bf16_pack(const float *x, size_t x_ld, size_t m, size_t k, size_t kp0, size_t kp1, uint16_t *a_packed);
/* The batched path's arithmetic (dsm_fp8_gemm_rows): 0 vdpbf16ps on BF16 pairs (the default), 1 F32 FMA on the
 * same BF16-rounded activations and exact weights. Which multiplies faster depends on the CPU: on one Intel host
 * vdpbf16ps retires a quarter of the F32 FMA's instructions per second, on AMD's Zen 4 twice its products. */
#define DSM_GEMM_VARIANTS 2
extern const char *const dsm_gemm_variant_names[DSM_GEMM_VARIANTS];
extern int dsm_gemm_variant;

/* The batched path's arithmetic (dsm_gemm_variant), measured on one thread on a matrix in cache, 64 tokens,
 * with dsm_tune_variants ("bytes" are flops: the rates are GFLOP/s); about 4 ms. */
int dsm_fp8_gemm_tune(struct dsm_gemv_tune_result *r);

/* Bytes of per-thread scratch dsm_fp8_gemm_rows needs. */
size_t dsm_fp8_gemm_scratch_size(void);
/* yT[r - r0, j] = sum_c W[r, c] * a[j, c] for rows [r0, r1), j < m_pad: the TRANSPOSED result,
 * yT [r1 - r0, yT_ld] with yT_ld >= m_pad. a_packed from dsm_bf16_pack with k = W->cols.
 * DSM_EUNSUPPORTED when the CPU lacks AVX-512 BF16. */
int dsm_fp8_gemm_rows(const struct dsm_fp8_mat *W, size_t r0, size_t r1, const uint16_t *a_packed, size_t m,
		      float *yT, size_t yT_ld, void *scratch);

/* ---- Level 2: threads ------------------------------------------------------------------------------- */

/* Where the context's threads run. Filled by offload/topo (dsm_topo_cpu_threads) from hwloc; kernels/
 * does not know hwloc. Threads are numbered node-major: the threads of node 0 first. */
struct dsm_cpu_threads {
	int n_threads;
	int n_nodes;                   /* NUMA nodes the threads cover, 1..DSM_EXPERT_MAX_NODES */
	const int *thread_node;        /* [n_threads] node of each thread, non-decreasing */
	/* Binds the calling thread as thread i (optional, may be NULL); returns 0 or a negative code. */
	int (*bind)(void *arg, int i);
	void *bind_arg;
};

struct dsm_expert_opts {
	enum dsm_isa isa;              /* DSM_ISA_AUTO: the best available */
	int n_threads;                 /* <= 0: threads->n_threads, else omp_get_max_threads() */
	const struct dsm_cpu_threads *threads; /* NULL: unbound threads on one node */
	size_t gemm_min_tokens;        /* tokens per matrix from which the batched path runs; 0: default */
};

struct dsm_expert_ctx;

/* Creates a context: copies the thread plan; threads bind themselves (plan->bind) the first time they run
 * for this context. Scratch is allocated by the first calls and kept. opts may be NULL (defaults).
 * Calls on one context must not overlap (one caller thread at a time). */
int dsm_expert_ctx_init(struct dsm_expert_ctx **out, const struct dsm_expert_opts *opts);
/* Accepts NULL. */
void dsm_expert_ctx_free(struct dsm_expert_ctx *ctx);
enum dsm_isa dsm_expert_ctx_isa(const struct dsm_expert_ctx *ctx);
int dsm_expert_ctx_threads(const struct dsm_expert_ctx *ctx);
/* The token count from which the batched path runs. */
size_t dsm_expert_ctx_gemm_min_tokens(const struct dsm_expert_ctx *ctx);

/* y[n, W.rows] = x[n, W.cols] . W^T on all threads (rows split across them). */
int dsm_fp8_matmul(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t n, const float *x, float *y);
/* y[n, r1 - r0] = x[n, W.cols] . W[r0 .. r1)^T: a band of rows, which may start inside a 128-row block. */
int dsm_fp8_matmul_rows(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t r0, size_t r1, size_t n,
			const float *x, float *y);

/* Per-head bands of one matrix, all heads in one parallel region (split across threads by head): for h <
 * n_heads, y + h * y_head [n, ldy] = x + h * x_head [n, ldx] . W[r0 .. r0 + rows)^T, r0 = row0 + h * stride.
 * Decode path only: n <= 8 and below the batched path's token count (DSM_EARG otherwise). Each head's result
 * equals dsm_fp8_matmul_rows on its band. */
int dsm_fp8_matmul_heads(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t row0, size_t stride,
			 size_t rows, size_t n_heads, size_t n, const float *x, size_t ldx, size_t x_head, float *y,
			 size_t ldy, size_t y_head);

/* ---- Experts and the MoE layer ---------------------------------------------------------------------- */

/* One SwiGLU expert: y = down(silu(gate(x)) * up(x)), stored as one part per NUMA node it is split across.
 * Part j holds intermediate rows [i0, i1) = dsm_expert_node_range(inter, n_parts, j):
 * gate and up [i1 - i0, hidden], down [hidden, i1 - i0]. With n_parts = 1 the part is the whole expert. */
struct dsm_expert_part {
	struct dsm_fp8_mat gate;       /* [i1 - i0, hidden] */
	struct dsm_fp8_mat up;         /* [i1 - i0, hidden] */
	struct dsm_fp8_mat down;       /* [hidden, i1 - i0] */
};
struct dsm_expert_fp8 {
	size_t hidden, inter;
	int n_parts;                   /* 1, or the context's node count */
	int numa_home;                 /* 0: each node computes its part; 1 + j (with n_parts = 1): the whole
					* expert lies in node j's memory and node j's threads compute it alone */
	struct dsm_expert_part part[DSM_EXPERT_MAX_NODES];
};

/* Intermediate rows [*i0, *i1) of node j of n: cut at multiples of 128 so that each part has its own
 * scale blocks, as even as the 128-row blocks allow. */
void dsm_expert_node_range(size_t inter, int n, int j, size_t *i0, size_t *i1);
/* e = the whole expert as one part, from its three matrices (checked for consistent shapes). */
int dsm_expert_fp8_init(struct dsm_expert_fp8 *e, const struct dsm_fp8_mat *gate, const struct dsm_fp8_mat *up,
			const struct dsm_fp8_mat *down);
/* Splits a one-part expert into n window parts (no copy): for computing on n nodes when the memory was
 * not placed per node. */
int dsm_expert_fp8_split(struct dsm_expert_fp8 *e, int n);

/* y[t] (=|+=) sum over t's chosen experts k (in ascending expert id) of weight[t, k] * E_k(x[t]), then
 * + shared(x[t]) when shared is given. Tokens are grouped by expert: each expert's weights are read once for
 * all its tokens. Summation order is fixed, so results do not depend on the thread count. */
struct dsm_moe_args {
	size_t n_tok, top_k;
	const float *x;                /* [n_tok, hidden] */
	const int32_t *expert_ids;     /* [n_tok, top_k], each in [0, n_experts), distinct within a row */
	const float *expert_w;         /* [n_tok, top_k] routing weights */
	const struct dsm_expert_fp8 *const *experts; /* [n_experts]; only chosen ones are read */
	size_t n_experts;
	const struct dsm_expert_fp8 *shared; /* NULL: none; added with weight 1 */
	int accumulate;                /* 1: y += the layer's output; 0: y = it */
	float *y;                      /* [n_tok, hidden] */
};
int dsm_moe_layer(struct dsm_expert_ctx *ctx, const struct dsm_moe_args *a);
/* Expert weight bytes node j's threads were given by the last dsm_moe_layer or dsm_expert_ffn call. */
uint64_t dsm_expert_ctx_node_bytes(const struct dsm_expert_ctx *ctx, int j);

/* y[n, hidden] = E(x[n, hidden]), one expert (the shared expert, a dense FFN, or a routed expert). */
int dsm_expert_ffn(struct dsm_expert_ctx *ctx, const struct dsm_expert_fp8 *e, size_t n, const float *x, float *y);

#endif
