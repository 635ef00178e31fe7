// The cuda backend's state, shared by its .cu files (docs/cuda.md).
//
// Work runs on a stream context (struct cuda_ctx): the backend's own one when no queue is current (ops then
// wait for their result before returning), or the current queue's. Each context owns its scratch buffers
// and its staging ring, so that two queues running at once never share a buffer.
#ifndef DSM_CUDA_INTERNAL_H
#define DSM_CUDA_INTERNAL_H

#include "cuda_check.h"

#include <cublasLt.h>
#include <cuda_runtime.h>
#include <stddef.h>
#include <stdint.h>

extern "C" {
#include "backend.h"
#include "cuda_backend.h"
}

// cuBLASLt, loaded with dlopen when the first cuda backend is created: linked, its relocations alone would add
// about 90 MB of memory to every dsm process, GPU or not. Calls go through this table (cuda_lt.cublasLtMatmul).
#define CUDA_LT_FUNCTIONS(X) X(cublasLtCreate) X(cublasLtDestroy) X(cublasLtGetStatusString) X(cublasLtMatmul) \
	X(cublasLtMatmulAlgoGetHeuristic) X(cublasLtMatmulDescCreate) X(cublasLtMatmulDescDestroy) \
	X(cublasLtMatmulDescSetAttribute) X(cublasLtMatmulPreferenceCreate) X(cublasLtMatmulPreferenceDestroy) \
	X(cublasLtMatmulPreferenceSetAttribute) X(cublasLtMatrixLayoutCreate) X(cublasLtMatrixLayoutDestroy) \
	X(cublasLtMatrixLayoutSetAttribute)
#define CUDA_LT_MEMBER(name) decltype(&::name) name;
struct cuda_lt_api {
	CUDA_LT_FUNCTIONS(CUDA_LT_MEMBER)
};
extern struct cuda_lt_api cuda_lt;
// Loads the library and fills cuda_lt (once). Returns 0 or DSM_EUNSUPPORTED naming the library.
int cuda_lt_load(void);

// A device buffer that grows on first use of a larger size and never shrinks.
struct cuda_buf {
	void *p;
	size_t bytes;
};

// Host descriptor tables (the moe op's experts, attn_full's masks, the block tables of gather and attn_latent)
// reach the kernels through a ring of pinned host slots, each copied asynchronously to its device twin. A slot
// is reused only after the event recorded behind the op that read it has completed.
#define STAGE_SLOTS 16
#define STAGE_BYTES (256 << 10)

#define ERRMSG_BYTES 512

struct cuda_ctx {
	cudaStream_t s;
	struct cuda_buf wbuf;   // dequantized weight of a cuBLASLt matmul
	struct cuda_buf abuf;   // activations as the multiply sees them (packed, rounded)
	struct cuda_buf obuf;   // a cuBLASLt matmul's output before it goes to the caller's layout
	struct cuda_buf ffn;    // gate and up outputs of an FFN
	struct cuda_buf moe;    // the moe op's per-slot values
	struct cuda_buf attn;   // attention partial states (split keys)
	struct cuda_buf misc;   // small per-op values (topk keys)
	void *lt_ws;            // cuBLASLt workspace, LT_WS_BYTES
	unsigned char *stage_host;
	unsigned char *stage_dev;
	cudaEvent_t stage_ev[STAGE_SLOTS];
	int stage_next;
	// a queue's first failure: later work on it is skipped, event_sync returns it
	int rc;
	char msg[ERRMSG_BYTES];
};

#define LT_WS_BYTES ((size_t)32 << 20)

struct dsm_queue {
	struct cuda_ctx c;
	struct dsm_queue *next; // the backend's list of queues (reserve sizes their scratch)
};

struct dsm_event {
	cudaEvent_t ev;
	int rc;                 // the queue's failure when the event was recorded
	char msg[ERRMSG_BYTES];
};

struct cuda_alloc {             // a live allocation of be->alloc, for the budget
	void *p;
	size_t bytes;
	struct cuda_alloc *next;
};

struct cuda_backend {
	struct dsm_backend be;  // first: a struct dsm_backend * points here
	int device;
	int n_sm;
	size_t budget, used;
	struct cuda_alloc *allocs;
	cublasLtHandle_t lt;
	struct cuda_ctx own;    // the synchronous calls' stream
	struct dsm_queue *cur;  // current queue, NULL: own
	struct dsm_queue *queues;
	size_t attn_reserve;    // bytes of attention scratch each context keeps (reserve)
	int pending_rc;         // first queue failure not yet returned by sync
	char pending_msg[ERRMSG_BYTES];
};

static inline struct cuda_backend *cuda_of(struct dsm_backend *be)
{
	return (struct cuda_backend *)be;
}

// cuda_backend.cu
// The context of the next op; its failure (a queue already failed) is returned as the op's.
int cuda_begin(struct cuda_backend *cb, struct cuda_ctx **c);
// Ends an op submitted to c with result rc: checks the launches, waits on the own stream, records a
// queue's failure. Returns the op's result.
int cuda_end(struct cuda_backend *cb, struct cuda_ctx *c, int rc);
// At least bytes of buffer b (device memory, 256-byte aligned); waits for c's work before replacing it.
int cuda_buf_get(struct cuda_ctx *c, struct cuda_buf *b, size_t bytes, const char *what);
// Copies bytes of host memory to a device staging slot of c; *slot for cuda_stage_done.
int cuda_stage(struct cuda_ctx *c, const void *src, size_t bytes, void **dev, int *slot);
// Marks the slot reusable once the work submitted to c so far has completed.
int cuda_stage_done(struct cuda_ctx *c, int slot);

// cuda_matmul.cu
int cuda_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
int cuda_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y);
int cuda_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *a);
int cuda_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y);
int cuda_moe(struct dsm_backend *be, const struct dsm_moe_op_args *a);

// cuda_attention.cu
int cuda_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a);
int cuda_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a);
int cuda_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
			const float *k, const float *const *k_blocks, int64_t block_rows, int64_t n_keys, float *out);
// Attention scratch for max_keys keys of n_heads heads of width head_dim (attn_latent's split states).
size_t cuda_attn_scratch_bytes(const struct cuda_backend *cb, int64_t max_keys, int64_t n_heads,
			       int64_t head_dim);

// cuda_ops.cu
int cuda_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w,
		 float eps, float *y);
int cuda_layernorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w, const float *b,
		   float eps, float *y);
int cuda_rope(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx, int64_t ldh,
	      const float *cos, const float *sin, int interleaved);
int cuda_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x);
int cuda_topk(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx);
int cuda_route(struct dsm_backend *be, const struct dsm_route_args *a);
int cuda_add(struct dsm_backend *be, int64_t n, float *x, const float *y);
int cuda_scale(struct dsm_backend *be, int64_t n, float *x, float s);
int cuda_convert(struct dsm_backend *be, int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt, int64_t ldx,
		 void *y, enum dsm_dtype yt, int64_t ldy);
int cuda_gather(struct dsm_backend *be, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt);
int cuda_fp8_round(struct dsm_backend *be, int64_t n, int64_t d, float *x, int ue8m0);

// Grid size for n items of `per` each, as a launch dimension (n > 0).
static inline unsigned cuda_blocks(int64_t n, int64_t per)
{
	return (unsigned)((n + per - 1) / per);
}

// Checks a launch just made: LAUNCH_CHECK returns from the enclosing function on failure, LAUNCH_STATUS
// gives 0 or the failure.
#define LAUNCH_CHECK() CUDA_CHECK(cudaGetLastError())
static inline int cuda_launch_status(const char *kernel, const char *file, int line)
{
	cudaError_t err = cudaGetLastError();
	if (err == cudaSuccess)
		return 0;
	return dsm_fail(DSM_EIO, "CUDA error %s launching %s (%s:%d): %s", cudaGetErrorName(err), kernel, file, line,
			cudaGetErrorString(err));
}
#define LAUNCH_STATUS(kernel) cuda_launch_status(kernel, __FILE__, __LINE__)

#endif
