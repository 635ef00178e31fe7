/* The backend interface: one table of function pointers per compute device (docs ARCHITECTURE.md).
 *
 * The model code (src/) calls only what is here; a backend implements the table for its device. The
 * table holds memory management (alloc/free/copies/sync: optional for host backends) and the ops the
 * DeepSeek-V3.2 forward pass needs, in shapes that know nothing of the model: matrices, heads, rows.
 * A backend declares what it can run through `supports`; the caller falls back to the cpu backend for
 * the rest. The `cpu` backend (kernels/cpu/) is always present and implements every op.
 *
 * Conventions of every op:
 *   - activations are F32, row-major, rows contiguous unless a leading dimension (ld*) is given;
 *   - a weight is a struct dsm_mat: FP8 E4M3 with 128x128 block scales, BF16 or F32, [rows, cols]
 *     in the PyTorch Linear layout (out x in);
 *   - ops return 0 or a negative DSM_E* code with a message (kernels/error.h); they never print;
 *   - outputs never alias inputs unless the op says "in place". */
#ifndef DSM_BACKEND_H
#define DSM_BACKEND_H

#include "dtype.h"

#include <stddef.h>
#include <stdint.h>

#define DSM_BLOCK 128 /* FP8 weight block: 128 x 128 values share one scale */
#define DSM_MAX_GPUS 16 /* devices of one run (gpu:0 to gpu:15) */

/* A weight matrix, or a band of consecutive rows of one (a view).
 * The view is rows [row0, row0 + rows) of a stored [*, cols] tensor whose row 0 is at `data`;
 * block scales are indexed by stored row, so a view may start inside a 128-row block. */
struct dsm_mat {
	enum dsm_dtype dtype;   /* DSM_F8_E4M3 (block-scaled), DSM_BF16 or DSM_F32 */
	int64_t rows, cols;     /* the view: [rows, cols] */
	int64_t row0;           /* first stored row of the view */
	const void *data;       /* stored row 0, [*, cols] row-major */
	const float *scale;     /* F8: [ceil(stored rows/128), ceil(cols/128)] multipliers; else NULL */
};

/* Rows [row0, row0 + rows) of m, as a view. */
static inline struct dsm_mat dsm_mat_rows(struct dsm_mat m, int64_t row0, int64_t rows)
{
	m.row0 += row0;
	m.rows = rows;
	return m;
}

/* Value of element (i, j) of the view, dequantized (scalar; for references and tests). */
float dsm_mat_get(const struct dsm_mat *m, int64_t i, int64_t j);

/* The weights of one SwiGLU feed-forward block (dense layer, shared expert or routed expert):
 * y = down(silu(gate(x)) * up(x)). */
struct dsm_ffn_weights {
	struct dsm_mat gate;    /* [inter, dim] */
	struct dsm_mat up;      /* [inter, dim] */
	struct dsm_mat down;    /* [dim, inter] */
	int numa_home;          /* 1 + the NUMA node whose memory holds all three, whose cores alone then
				 * compute them; 0: not one node's memory (every node computes a part) */
};

/* Matmul precision: what the multiply sees. Accumulation is always F32. */
enum dsm_precision {
	DSM_PRECISION_F32,      /* weights dequantized exactly to F32, activations F32 */
	DSM_PRECISION_BF16,     /* weights and activations rounded to BF16 */
};

/* Attention mask of one query: either causal over keys [0, n_keys) (sel == NULL) or the ascending list
 * of allowed key positions sel[0 .. n_sel) (the lightning indexer's choice). */
struct dsm_attn_mask {
	const int32_t *sel;     /* [n_sel] ascending, or NULL */
	int64_t n_sel;
};

/* Arguments of MLA attention in the full ("MHA") form for ONE head and T queries:
 * score(t, s) = (q_nope[t] . k_nope[s] + q_pe[t] . k_pe[s]) * scale over the allowed keys of t,
 * softmax, out[t] = sum_s p(t, s) v[s]. */
struct dsm_attn_full_args {
	int64_t n_q;                    /* T */
	int64_t dn, dr, dv;             /* nope, rope and value dims of a head */
	const float *q;                 /* [T, ldq]: q_nope [dn] then roped q_pe [dr] */
	int64_t ldq;
	const float *kv;                /* [n_keys, dn + dv]: k_nope then v of each key */
	const float *k_pe;              /* [n_keys, dr] roped, shared by the heads */
	const int64_t *n_keys;          /* [T] causal bound of query t (its position + 1) */
	const struct dsm_attn_mask *mask; /* [T] or NULL: causal */
	float scale;
	float *out;                     /* [T, ldo]: dv values written */
	int64_t ldo;
};

/* Arguments of MLA attention in the absorbed ("MQA") form for ONE query and H heads over a latent
 * cache: score(h, s) = (q_lat[h] . c[s] + q_pe[h] . k_pe[s]) * scale, softmax over the allowed keys,
 * o_lat[h] = sum_s p(h, s) c[s]. */
struct dsm_attn_latent_args {
	int64_t n_heads, r, dr;         /* H, latent rank (512), rope dims (64) */
	const float *q_lat;             /* [H, r] */
	const float *q_pe;              /* [H, dr] roped */
	enum dsm_dtype cache_dtype;     /* DSM_BF16 or DSM_F32 */
	const void *c;                  /* [n_keys, r] latent cache rows */
	const void *k_pe;               /* [n_keys, dr] roped key cache rows */
	/* Or (c_blocks not NULL; c and k_pe unused) the cache where it lies, in blocks of block_rows keys: key s's
	 * latent row at c_blocks[s / block_rows], row s % block_rows of [block_rows, r], its rope key likewise in
	 * pe_blocks (dsm_latent_row, dsm_pe_row). Host tables of ceil(n_keys / block_rows) device pointers, read
	 * during the call. */
	const void *const *c_blocks, *const *pe_blocks;
	int64_t block_rows;
	int64_t n_keys;                 /* causal bound: position + 1 */
	struct dsm_attn_mask mask;      /* sel == NULL: all of [0, n_keys) */
	float scale;
	float *o_lat;                   /* [H, r] */
};

/* Key s's row of `width` elements of es bytes in a cache at base (contiguous) or, where blocks is not NULL, in
 * blocks of block_rows keys. */
static inline const void *dsm_cache_row(const void *base, const void *const *blocks, int64_t block_rows, int64_t width,
					size_t es, int64_t s)
{
	if (!blocks)
		return (const char *)base + (size_t)(s * width) * es;
	return (const char *)blocks[s / block_rows] + (size_t)(s % block_rows * width) * es;
}

/* Key s's latent row [r] and rope key [dr] in the cache of a (contiguous or in blocks). */
static inline const void *dsm_latent_row(const struct dsm_attn_latent_args *a, int64_t s)
{
	return dsm_cache_row(a->c, a->c_blocks, a->block_rows, a->r, dsm_dtype_size(a->cache_dtype), s);
}

static inline const void *dsm_pe_row(const struct dsm_attn_latent_args *a, int64_t s)
{
	return dsm_cache_row(a->k_pe, a->pe_blocks, a->block_rows, a->dr, dsm_dtype_size(a->cache_dtype), s);
}

/* One small matmul per attention head, all heads in one call (the absorbed MLA form's kv_b halves).
 * Head h's weight W_h is rows [h * head_stride, h * head_stride + head_rows) of the view w; its input for
 * token t is x + t * ldx + h * x_head, its output y + t * ldy + h * y_head:
 *   transposed = 0:  y[t, h][0 .. head_rows) = W_h . x[t, h][0 .. w.cols)
 *   transposed = 1:  y[t, h][0 .. w.cols)    = x[t, h][0 .. head_rows) . W_h
 * Each head's result equals matmul (or matmul_t) on that head's view alone. */
struct dsm_matmul_heads_args {
	const struct dsm_mat *w;
	int64_t n_heads, head_stride, head_rows;
	int transposed;
	int64_t n;                      /* tokens */
	const float *x;
	int64_t ldx, x_head;
	float *y;
	int64_t ldy, y_head;
};

/* Group-limited sigmoid routing (noaux_tc): see docs MODEL.md "MoE layer". */
struct dsm_route_args {
	int64_t n_tokens, n_experts;    /* T, E */
	const float *logits;            /* [T, E] router logits x . gate^T */
	const float *bias;              /* [E] e_score_correction_bias: used only to choose */
	int n_group, topk_group, top_k;
	int normalize;                  /* norm_topk_prob */
	float scaling;                  /* routed_scaling_factor */
	int32_t *idx;                   /* [T, top_k] chosen experts, ascending within a row */
	float *weight;                  /* [T, top_k] their weights, in the same order */
};

/* The experts of one MoE layer (docs MODEL.md "MoE layer"), after routing:
 * y[t] = sum over t's chosen experts e, in ascending e, of weight[t, j] * E_e(x[t]), then + shared(x[t]).
 * Each chosen expert runs once on all its tokens. The summation order is fixed: the result does not depend
 * on how the backend schedules the experts. */
struct dsm_moe_op_args {
	int64_t n_tokens;               /* T */
	int top_k;
	const int32_t *idx;             /* [T, top_k] chosen experts, distinct within a row */
	const float *weight;            /* [T, top_k] their routing weights */
	const struct dsm_ffn_weights *const *experts; /* [n_experts]: every chosen one; others may be NULL */
	int64_t n_experts;
	const struct dsm_ffn_weights *shared; /* NULL: none */
	const float *x;                 /* [T, dim] */
	float *y;                       /* [T, dim], overwritten */
};

enum dsm_op {
	DSM_OP_MATMUL, DSM_OP_MATMUL_T, DSM_OP_FFN, DSM_OP_MOE, DSM_OP_RMSNORM, DSM_OP_LAYERNORM, DSM_OP_ROPE,
	DSM_OP_HADAMARD, DSM_OP_ATTN_FULL, DSM_OP_ATTN_LATENT, DSM_OP_INDEXER_SCORES, DSM_OP_TOPK,
	DSM_OP_ROUTE, DSM_OP_MATMUL_HEADS, DSM_OP_ADD, DSM_OP_SCALE, DSM_OP_CONVERT, DSM_OP_FP8_ROUND, DSM_OP_GATHER,
	DSM_OP_COUNT
};

struct dsm_queue;  /* a backend's queue of work (a CUDA stream) */
struct dsm_event;  /* a point in a queue (a CUDA event) */

/* The largest attention a session runs, for reserve. */
struct dsm_attn_shape {
	int64_t max_keys;      /* keys of one query at most: the context */
	int64_t max_selected;  /* keys a mask selects at most (the indexer's top-k; 0: no masks) */
	int64_t n_heads;
	int64_t latent;        /* r + dr: the width of the absorbed form's cache rows */
	int64_t qk_dim, v_dim; /* dn + dr and dv: the full form's key and value widths */
};

struct dsm_backend {
	const char *name;               /* "cpu", ... */
	void *impl;                     /* backend state */
	enum dsm_precision precision;

	void (*destroy)(struct dsm_backend *be);
	/* 1 if the backend can run op with weights of type wtype (DSM_DTYPE_INVALID: no weight). */
	int (*supports)(const struct dsm_backend *be, enum dsm_op op, enum dsm_dtype wtype);

	/* Device memory (optional: NULL on host backends, whose ops take host pointers). */
	void *(*alloc)(struct dsm_backend *be, size_t bytes);
	void (*free)(struct dsm_backend *be, void *p); /* accepts NULL */
	int (*copy_in)(struct dsm_backend *be, void *dst, const void *src, size_t bytes);
	int (*copy_out)(struct dsm_backend *be, void *dst, const void *src, size_t bytes);
	/* Device memory to device memory (on the current queue when there is one). */
	int (*copy_dev)(struct dsm_backend *be, void *dst, const void *src, size_t bytes);
	/* Waits for all work of every queue; returns the first failure not yet returned. */
	int (*sync)(struct dsm_backend *be);
	/* (optional) The largest attention the caller will run. The backend allocates its scratch now so
	 * that no op allocates later as the context grows. */
	int (*reserve)(struct dsm_backend *be, const struct dsm_attn_shape *s);
	/* (optional) Device memory that alloc can still give, and its total (the budget the backend keeps to). */
	int (*mem_info)(struct dsm_backend *be, size_t *free_bytes, size_t *total_bytes);
	/* (optional) Host memory the device copies from and to at full speed (pinned); NULL: plain malloc. */
	void *(*host_alloc)(struct dsm_backend *be, size_t bytes);
	void (*host_free)(struct dsm_backend *be, void *p);

	/* Asynchronous execution (optional: NULL on host backends, whose calls have ended when they return).
	 * A queue runs the work submitted to it in submission order, concurrently with the caller and with
	 * other queues. While a queue is current (set_queue), copy_in, copy_out and every op are submitted to
	 * it and return at once: they read their argument structs, weight descriptors and mask tables during
	 * the call, and the data those point to when the queue reaches the work, so that data must stay valid
	 * and unchanged until an event recorded after the work has completed. The first failure inside a
	 * queue skips the queue's later copies and ops and is returned, with its message, by the next
	 * event_sync of an event recorded on that queue after it (or by sync). */
	int (*queue_create)(struct dsm_backend *be, struct dsm_queue **q);
	/* Waits for q's work, then frees it. Accepts NULL. */
	void (*queue_destroy)(struct dsm_backend *be, struct dsm_queue *q);
	/* q becomes the queue of the later calls on be (NULL: calls run synchronously again). */
	void (*set_queue)(struct dsm_backend *be, struct dsm_queue *q);
	int (*event_create)(struct dsm_backend *be, struct dsm_event **e);
	void (*event_destroy)(struct dsm_backend *be, struct dsm_event *e);
	/* e completes when the work submitted to q before this call has ended. */
	int (*event_record)(struct dsm_backend *be, struct dsm_event *e, struct dsm_queue *q);
	/* q's later work waits until e completes (e recorded on another queue). */
	int (*queue_wait)(struct dsm_backend *be, struct dsm_queue *q, struct dsm_event *e);
	/* The caller waits until e completes; returns 0 or the first failure of its queue's work before it. */
	int (*event_sync)(struct dsm_backend *be, struct dsm_event *e);
	/* Seconds from a's completion to b's (both completed, recorded on the same device). */
	int (*event_elapsed)(struct dsm_backend *be, struct dsm_event *a, struct dsm_event *b, double *seconds);

	/* y[n, w.rows] = x[n, w.cols] . w^T (a Linear layer). */
	int (*matmul)(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
	/* y[n, w.cols] = x[n, w.rows] . w (the transposed use, for the absorbed MLA form). */
	int (*matmul_t)(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
	/* Optional (NULL: not offered), for greedy decoding. top_prepare builds a screen of w (the head) at one byte
	 * a weight; matmul_top then computes y [w.rows] = w x for one x [w.cols] exactly (as matmul) in every row
	 * that can hold the largest value and sets -INFINITY in the others, reading the screen and those rows
	 * instead of w. Without a screen of w, matmul_top computes all rows. Returns the number of rows computed,
	 * or a negative code. */
	int (*top_prepare)(struct dsm_backend *be, const struct dsm_mat *w);
	int (*matmul_top)(struct dsm_backend *be, const struct dsm_mat *w, const float *x, float *y);
	/* Per-head matmuls of every head in one call (see struct dsm_matmul_heads_args). */
	int (*matmul_heads)(struct dsm_backend *be, const struct dsm_matmul_heads_args *a);
	/* Optional (NULL: not offered): runs body(arg) on the calling thread with the backend's threads held ready
	 * for the ops it calls: one team for a decode step, not a start and an end for each of its ops. */
	void (*hold_threads)(struct dsm_backend *be, void (*body)(void *arg), void *arg);
	/* y[n, dim] = down(silu(gate(x)) * up(x)) for n tokens x[n, dim]: one expert or dense FFN. */
	int (*ffn)(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y);
	/* The routed and shared experts of one MoE layer (see struct dsm_moe_op_args). */
	int (*moe)(struct dsm_backend *be, const struct dsm_moe_op_args *a);
	/* y[n, d] = x * rsqrt(mean(x^2) + eps) * w; x rows at stride ldx, y contiguous; y may equal x
	 * when ldx == d. */
	int (*rmsnorm)(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx,
		       const float *w, float eps, float *y);
	/* y[n, d] = (x - mean) / sqrt(var + eps) * w + b (biased variance); y may equal x. */
	int (*layernorm)(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w,
			 const float *b, float eps, float *y);
	/* In place: rotates the first `dim` values of each of n_heads vectors of each of n rows;
	 * x[i] at x + i * ldx + h * ldh. cos/sin [n, dim/2] per row. interleaved: pairs (2j, 2j+1) (MLA);
	 * else pairs (j, j + dim/2) (indexer). */
	int (*rope)(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx,
		    int64_t ldh, const float *cos, const float *sin, int interleaved);
	/* In place: x[n, d] = x . H_d, H_d the orthonormal Sylvester-Hadamard matrix (d a power of two). */
	int (*hadamard)(struct dsm_backend *be, int64_t n, int64_t d, float *x);
	/* MLA attention, full form, one head (see struct dsm_attn_full_args). */
	int (*attn_full)(struct dsm_backend *be, const struct dsm_attn_full_args *a);
	/* MLA attention, absorbed form over a latent cache, one query (see struct dsm_attn_latent_args). */
	int (*attn_latent)(struct dsm_backend *be, const struct dsm_attn_latent_args *a);
	/* Lightning indexer scores of one query over keys [0, n_keys):
	 * out[s] = sum_h w[h] * relu(q[h] . k[s]); q [n_heads, d], w [n_heads], k [n_keys, d]; or (k_blocks not
	 * NULL, k unused) key s is row s % block_rows of k_blocks[s / block_rows], a host table of
	 * ceil(n_keys / block_rows) device pointers read during the call (the indexer cache where it lies). */
	int (*indexer_scores)(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q,
			      const float *w, const float *k, const float *const *k_blocks, int64_t block_rows,
			      int64_t n_keys, float *out);
	/* idx[0 .. k) = positions of the k largest of x[0 .. n), ties to the lower position; idx ascending.
	 * k <= n. */
	int (*topk)(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx);
	/* noaux_tc routing (see struct dsm_route_args). */
	int (*route)(struct dsm_backend *be, const struct dsm_route_args *a);

	/* The glue between the ops, so that a forward pass whose buffers live in device memory never touches them
	 * from the host: */
	/* In place: x[i] += y[i] for i < n (the residual stream). */
	int (*add)(struct dsm_backend *be, int64_t n, float *x, const float *y);
	/* In place: x[i] *= s for i < n. */
	int (*scale)(struct dsm_backend *be, int64_t n, float *x, float s);
	/* y = x converted, rows x cols values: row i of x at element i * ldx, of y at element i * ldy. xt and yt are
	 * DSM_F32 or DSM_BF16 (F32 to BF16 rounds to nearest even as dsm_f32_to_bf16, BF16 to F32 is exact, the
	 * same type copies). x and y do not overlap. (KV cache stores and gathers, embeddings, strided slices.) */
	int (*convert)(struct dsm_backend *be, int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx,
		       void *y, enum dsm_dtype yt, int64_t ldy);
	/* In place, each row of x[n, d] in blocks of 128 values (the last one shorter): the FP8 rounding of the
	 * indexer (docs MODEL.md "DeepSeek Sparse Attention"). A block's scale is amax / 448 computed in double,
	 * amax = max(|x|) floored at 1e-4; with ue8m0 the scale becomes the power of two 2^ceil(log2(scale)).
	 * Each value becomes fp8_to_f32(f32_to_fp8((float)clamp(x / scale, -448, 448))) * scale, the division
	 * and product in double, rounded to F32 once. */
	int (*fp8_round)(struct dsm_backend *be, int64_t n, int64_t d, float *x, int ue8m0);
	/* y = rows gathered from n blocks and converted (types as convert): block i is block_rows rows of cols values,
	 * contiguous, at x[i], the last block only last_rows of them (1 <= last_rows <= block_rows); they are written
	 * one after another into y [(n - 1) * block_rows + last_rows, cols]. x is a host table of device pointers,
	 * read during the call. (A sequence's KV entries, which lie in blocks of the pool, gathered in one call.) */
	int (*gather)(struct dsm_backend *be, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		      int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt);
};

struct dsm_cpu_threads; /* kernels/cpu/expert_kernels.h: a thread plan (offload/topo.h makes one from hwloc) */

struct dsm_backend_options {
	enum dsm_precision precision;
	int threads;                    /* <= 0: physical cores */
	/* Where the cpu backend's OpenMP threads run: each binds itself to its core the first time it works.
	 * NULL: unbound. With a plan, its thread count replaces `threads`. Must outlive the backend. */
	const struct dsm_cpu_threads *cpu_threads;
	size_t device_bytes;            /* emu: device memory budget, 0: 1 GiB; cuda: 0: the free memory less a
					 * margin */
	int device;                     /* cuda: the device's index */
};

/* Creates the named backend: "cpu", "emu" (the cpu backend behind a device-memory budget, kernels/emu/), or
 * "cuda" where built (kernels/cuda/).
 * Returns 0 or DSM_EARG (unknown name) / DSM_ENOMEM / DSM_EUNSUPPORTED. */
int dsm_backend_create(struct dsm_backend **out, const char *name, const struct dsm_backend_options *o);
/* Accepts NULL. */
void dsm_backend_destroy(struct dsm_backend *be);

/* Physical cores of this machine (hwloc), at least 1. */
int dsm_physical_cores(void);

/* The cpu backend's threads' waiting in its parallel regions so far (barriers, ends of regions while other
 * threads still work), in seconds summed over the threads; 0 for another backend. */
double dsm_cpu_wait_seconds(struct dsm_backend *cpu);

/* The cpu backend's FP8 decode kernel: measures its memory-walk variants on the FP8 matrices mats[0 .. n) (in
 * memory, not in cache) and keeps the fastest (dsm_gemv_tune, kernels/cpu/expert_kernels.h). DSM_EUNSUPPORTED
 * when the backend's decode kernel has no variants (not the AVX-512 BF16 one). */
struct dsm_fp8_mat;
struct dsm_gemv_tune_result;
int dsm_cpu_gemv_tune(struct dsm_backend *cpu, const struct dsm_fp8_mat *mats, size_t n,
		      struct dsm_gemv_tune_result *r);

/* The cpu backend's BF16 decode GEMV (the head, the routers): measures its memory walks on the rows of w (BF16,
 * in memory, not in cache: the head) and keeps the fastest (kernels/cpu/bf16_gemv.c). DSM_EUNSUPPORTED when
 * that kernel is not in use, DSM_EARG when w is too small to measure on. */
int dsm_cpu_bf16_gemv_tune(struct dsm_backend *cpu, const struct dsm_mat *w, struct dsm_gemv_tune_result *r);
/* The name of that kernel's walk in use. */
const char *dsm_cpu_bf16_gemv_walk(void);

const char *dsm_precision_name(enum dsm_precision p);
/* "f32" / "bf16" -> precision; DSM_EARG otherwise. */
int dsm_precision_parse(const char *s, enum dsm_precision *p);
/* BF16 where the CPU has AVX-512 BF16 (its FP8 decode kernel streams about twice the bytes per second of
 * the F32 one, docs/kernels.md), else F32. */
enum dsm_precision dsm_precision_default(void);

#endif
