/* The cpu backend: state shared by its files, and its op entry points (each also usable directly, e.g.
 * by the op tests). OpenMP threads; oneDNN for batched matmuls. */
#ifndef DSM_CPU_BACKEND_H
#define DSM_CPU_BACKEND_H

#include "backend.h"
#include "dnnl_matmul.h"
#include "expert_kernels.h"

#include <stddef.h>
#include <string.h>

/* A growable scratch buffer: grows on first use of a larger size, never shrinks, so that a decode loop
 * stops allocating after its first step. */
struct cpu_scratch {
	void *p;
	size_t bytes;
};

/* The head's screen for greedy decoding (head_top.c): int8 codes of each row and its bounds' constants. */
struct cpu_top_row {
	float scale, a, b; /* s_r; ||r_r|| + gamma_D ||W_r|| and s_r ||q_r||, rounded up */
};
struct cpu_top {
	const void *data;  /* the head it was built from (data, row0, rows, cols); NULL: none */
	int64_t row0, rows, cols;
	uint8_t *q;        /* [rows, cols]: the int8 codes plus 128 */
	struct cpu_top_row *row;
	double slack;      /* per unit of max|x| + 1: values below 2^-126 flushed; INFINITY: never screened */
};

struct cpu_backend {
	struct dsm_backend be;          /* first: a struct dsm_backend * points here */
	struct dsm_dnnl *dnnl;
	struct dsm_expert_ctx *experts; /* FP8 matmuls and FFNs (expert_kernels.h), NULL: not used */
	int threads;
	struct cpu_scratch panel;       /* dequantized weight panel */
	struct cpu_scratch act;         /* activations converted for the multiply */
	struct cpu_scratch ffn;         /* gate/up outputs of the FFN */
	struct cpu_scratch attn;        /* attention scores */
	struct cpu_scratch moe;         /* the MoE layer's experts, or its gathered tokens */
	struct dsm_wait_clock wait;     /* waiting in the backend's own parallel regions (the head, per-head ops) */
	struct cpu_top top;             /* the head's screen, when prepared */
};

static inline struct cpu_backend *cpu_of(struct dsm_backend *be)
{
	return (struct cpu_backend *)be;
}

/* Returns a buffer of at least bytes (64-byte aligned), or NULL after setting a message. */
void *cpu_scratch_get(struct cpu_scratch *s, size_t bytes);
void cpu_scratch_free(struct cpu_scratch *s);

/* Hot loops are compiled for AVX-512, AVX2 and baseline x86-64; the loader picks one (GCC ifunc). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CPU_CLONES
#endif

/* 16-float vectors (GCC/Clang vector extensions): one AVX-512 register, two AVX2 or four SSE ones, per
 * compiled clone. The helpers that take or return them are always inlined into those clones. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wpsabi"
#endif
typedef float v16f __attribute__((vector_size(64)));
#define LANES 16

static inline __attribute__((always_inline)) v16f load_f32(const float *p)
{
	v16f v;
	memcpy(&v, p, sizeof v);
	return v;
}

/* Loops with less work than this many multiply-adds run on one thread: starting a parallel region
 * costs microseconds, and far more when another process holds a core. */
#define CPU_PARALLEL_MIN (1 << 17)

/* Decode-sized batches (n <= this) use the fused dequantizing GEMV; larger ones oneDNN on panels. */
#define CPU_GEMV_MAX_N 4

/* BF16-weight decode GEMV (bf16_gemv.c): y[t * ldy + r - r0] = sum_c W[r, c] x[t, c] for rows [r0, r1) of
 * w [*, cols], t < n <= CPU_GEMV_MAX_N. With xb (activations packed by cpu_bf16_gemv_pack) the multiply sees
 * BF16 activations (precision bf16), else F32 x [n, cols] and exact F32 weights. Only where
 * cpu_bf16_gemv_available(bf16). */
int cpu_bf16_gemv_available(int bf16);
/* Its memory walks: rows per group (4 or 1) and, for single rows, the prefetch distance in bytes. */
struct cpu_bf16_walk {
	const char *name;
	int group;
	int64_t prefetch;
	int64_t far;         /* 0: no second prefetch */
};
#define CPU_BF16_WALKS 3
extern const struct cpu_bf16_walk cpu_bf16_walks[CPU_BF16_WALKS];
extern int cpu_bf16_walk; /* the one in use, 0 by default */
int64_t cpu_bf16_act_ld(int64_t cols);
void cpu_bf16_gemv_pack(const float *x, int64_t n, int64_t cols, uint16_t *xb);
void cpu_bf16_gemv_rows(const uint16_t *w, int64_t cols, int64_t r0, int64_t r1, int64_t n, const float *x,
			const uint16_t *xb, float *y, int64_t ldy);

/* The head's screen (head_top.c). cpu_top_prepare builds it for w (BF16, AVX-512 BF16; else DSM_EUNSUPPORTED);
 * cpu_matmul_top: y [w.rows] = w x for one x, exact (the bits of cpu_matmul) for every row that can hold the
 * largest value and -INFINITY for the others; without a screen for w, all rows. Returns the rows computed. */
int cpu_top_prepare(struct dsm_backend *be, const struct dsm_mat *w);
int cpu_matmul_top(struct dsm_backend *be, const struct dsm_mat *w, const float *x, float *y);
void cpu_top_free(struct cpu_top *t);
/* Its integer dots, dot[r - r0] = q_r . xq for rows [r0, r1) of the stored codes q [*, cols] (cols at most
 * CPU_TOP_MAX_COLS): the AVX-512 VNNI walk (as the head's) over x in two bytes (xs: low bytes [ld], then high
 * bytes [ld], from cpu_top_split; ld a multiple of 64, 64-byte aligned, zeros past cols; |xq| <=
 * cpu_top_xq_max()), and the scalar reference over xq. */
#define CPU_TOP_MAX_COLS 65536
int32_t cpu_top_xq_max(void);
void cpu_top_split(int32_t xq, int8_t *lo, int8_t *hi);
void cpu_top_dots(const uint8_t *q, int64_t cols, int64_t r0, int64_t r1, const int8_t *xs, int64_t ld, int64_t *dot);
void cpu_top_dots_scalar(const uint8_t *q, int64_t cols, int64_t r0, int64_t r1, const int16_t *xq, int64_t *dot);

int cpu_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
int cpu_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
int cpu_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *a);
int cpu_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y);
int cpu_moe(struct dsm_backend *be, const struct dsm_moe_op_args *a);
int cpu_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a);
size_t cpu_attn_full_floats(int64_t keys, int64_t d, int64_t dv, int masked, int nt);
size_t cpu_attn_latent_floats(int64_t H, int64_t keys, int64_t width, int nt);
/* p[0..m) = softmax(p[0..m)), the sum in double. */
void cpu_softmax_f32(float *p, int64_t m);
int cpu_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a);
int cpu_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
		       const float *k, const float *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out);
int cpu_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x);
int cpu_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w,
		float eps, float *y);

/* Creates the cpu backend (called by dsm_backend_create). */
int dsm_cpu_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o);

#endif
