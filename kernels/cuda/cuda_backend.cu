// The cuda backend's table: device memory, queues and events, scratch; the ops are in cuda_matmul.cu,
// cuda_attention.cu and cuda_ops.cu (docs/cuda.md).
#include "cuda_internal.h"

#include <cublas_api.h>
#include <dlfcn.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ---- stream contexts -------------------------------------------------------------------------------

static void ctx_free(struct cuda_ctx *c)
{
	// Frees only; the caller has waited for the context's work.
	struct cuda_buf *bufs[] = { &c->wbuf, &c->abuf, &c->obuf, &c->ffn, &c->moe, &c->attn, &c->misc };
	for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++) {
		cudaFree(bufs[i]->p);
		bufs[i]->p = NULL;
		bufs[i]->bytes = 0;
	}
	cudaFree(c->lt_ws);
	cudaFree(c->stage_dev);
	cudaFreeHost(c->stage_host);
	for (int i = 0; i < STAGE_SLOTS; i++)
		if (c->stage_ev[i])
			cudaEventDestroy(c->stage_ev[i]);
	if (c->s)
		cudaStreamDestroy(c->s);
	memset(c, 0, sizeof *c);
}

static int ctx_init(struct cuda_ctx *c, size_t attn_bytes)
{
	memset(c, 0, sizeof *c);
	// Non-blocking: the legacy default stream (other libraries' work) does not serialize with ours.
	CUDA_CHECK(cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking));
	CUDA_CHECK(cudaMalloc(&c->lt_ws, LT_WS_BYTES));
	CUDA_CHECK(cudaMallocHost((void **)&c->stage_host, (size_t)STAGE_SLOTS * STAGE_BYTES));
	CUDA_CHECK(cudaMalloc((void **)&c->stage_dev, (size_t)STAGE_SLOTS * STAGE_BYTES));
	for (int i = 0; i < STAGE_SLOTS; i++)
		CUDA_CHECK(cudaEventCreateWithFlags(&c->stage_ev[i], cudaEventDisableTiming));
	if (attn_bytes)
		return cuda_buf_get(c, &c->attn, attn_bytes, "attention scratch");
	return 0;
}

int cuda_buf_get(struct cuda_ctx *c, struct cuda_buf *b, size_t bytes, const char *what)
{
	if (bytes <= b->bytes)
		return 0;
	size_t want = bytes + bytes / 4;
	want = (want + 255) & ~(size_t)255;
	// The old buffer may still be read by work queued on this stream: wait for it before freeing.
	CUDA_CHECK(cudaStreamSynchronize(c->s));
	CUDA_CHECK(cudaFree(b->p));
	b->p = NULL;
	b->bytes = 0;
	cudaError_t err = cudaMalloc(&b->p, want);
	if (err != cudaSuccess) {
		cudaGetLastError();
		size_t fr = 0, tot = 0;
		cudaMemGetInfo(&fr, &tot);
		b->p = NULL;
		return dsm_fail(DSM_ENOMEM, "cuda: %s of %zu bytes: %s (device free %zu of %zu bytes)", what, want,
				cudaGetErrorString(err), fr, tot);
	}
	b->bytes = want;
	return 0;
}

int cuda_stage(struct cuda_ctx *c, const void *src, size_t bytes, void **dev, int *slot)
{
	if (bytes > STAGE_BYTES)
		return dsm_fail(DSM_EARG, "cuda: a descriptor table of %zu bytes is more than a staging slot (%d)", bytes,
				STAGE_BYTES);
	int i = c->stage_next;
	c->stage_next = (i + 1) % STAGE_SLOTS;
	// Normally long complete: the slot was last used STAGE_SLOTS ops ago.
	CUDA_CHECK(cudaEventSynchronize(c->stage_ev[i]));
	unsigned char *h = c->stage_host + (size_t)i * STAGE_BYTES, *d = c->stage_dev + (size_t)i * STAGE_BYTES;
	memcpy(h, src, bytes);
	CUDA_CHECK(cudaMemcpyAsync(d, h, bytes, cudaMemcpyHostToDevice, c->s));
	*dev = d;
	*slot = i;
	return 0;
}

int cuda_stage_done(struct cuda_ctx *c, int slot)
{
	CUDA_CHECK(cudaEventRecord(c->stage_ev[slot], c->s));
	return 0;
}

int cuda_begin(struct cuda_backend *cb, struct cuda_ctx **c)
{
	*c = cb->cur ? &cb->cur->c : &cb->own;
	// The device is a per-thread setting of the runtime: a caller's other threads start on device 0.
	if (cb->device != 0)
		CUDA_CHECK(cudaSetDevice(cb->device));
	if ((*c)->rc < 0)
		return dsm_fail((*c)->rc, "%s (an earlier failure on this queue)", (*c)->msg);
	return 0;
}

static void remember_failure(struct cuda_backend *cb, struct cuda_ctx *c, int rc)
{
	if (c->rc == 0) {
		c->rc = rc;
		snprintf(c->msg, sizeof c->msg, "%s", dsm_errmsg());
	}
	if (cb->pending_rc == 0) {
		cb->pending_rc = rc;
		snprintf(cb->pending_msg, sizeof cb->pending_msg, "%s", dsm_errmsg());
	}
}

static int end_check(struct cuda_ctx *c, int own)
{
	CUDA_CHECK(cudaGetLastError());
	if (own)
		CUDA_CHECK(cudaStreamSynchronize(c->s));
	return 0;
}

int cuda_end(struct cuda_backend *cb, struct cuda_ctx *c, int rc)
{
	int own = c == &cb->own;
	if (rc == 0)
		rc = end_check(c, own);
	if (rc < 0 && !own)
		remember_failure(cb, c, rc);
	return rc;
}

// ---- memory ----------------------------------------------------------------------------------------

static void *cuda_alloc(struct dsm_backend *be, size_t bytes)
{
	struct cuda_backend *cb = cuda_of(be);
	size_t counted = bytes ? (bytes + 255) & ~(size_t)255 : 256;
	if (counted > cb->budget - cb->used) {
		dsm_fail(DSM_ENOMEM, "cuda: allocation of %zu bytes is over the budget (%zu of %zu bytes used)", bytes,
			 cb->used, cb->budget);
		return NULL;
	}
	struct cuda_alloc *a = (struct cuda_alloc *)malloc(sizeof *a);
	if (!a) {
		dsm_fail(DSM_ENOMEM, "out of memory");
		return NULL;
	}
	void *p = NULL;
	cudaError_t err = cudaMalloc(&p, counted);
	if (err != cudaSuccess) {
		cudaGetLastError();
		size_t fr = 0, tot = 0;
		cudaMemGetInfo(&fr, &tot);
		dsm_fail(DSM_ENOMEM, "cuda: cudaMalloc of %zu bytes: %s (device free %zu of %zu bytes)", counted,
			 cudaGetErrorString(err), fr, tot);
		free(a);
		return NULL;
	}
	a->p = p;
	a->bytes = counted;
	a->next = cb->allocs;
	cb->allocs = a;
	cb->used += counted;
	return p;
}

static void cuda_free(struct dsm_backend *be, void *p)
{
	struct cuda_backend *cb = cuda_of(be);
	if (!p)
		return;
	for (struct cuda_alloc **pa = &cb->allocs; *pa; pa = &(*pa)->next)
		if ((*pa)->p == p) {
			struct cuda_alloc *a = *pa;
			*pa = a->next;
			cb->used -= a->bytes;
			free(a);
			cudaFree(p); // waits for the device's work that may still read it
			return;
		}
}

static int copy(struct dsm_backend *be, void *dst, const void *src, size_t bytes, cudaMemcpyKind kind)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c;
	int rc = cuda_begin(cb, &c);
	if (rc < 0 || bytes == 0)
		return rc;
	cudaError_t err = cudaMemcpyAsync(dst, src, bytes, kind, c->s);
	if (err != cudaSuccess)
		rc = dsm_fail(DSM_EIO, "CUDA error %s in cudaMemcpyAsync of %zu bytes %s (%s:%d): %s", cudaGetErrorName(err),
			      bytes, kind == cudaMemcpyHostToDevice ? "to the device" : kind == cudaMemcpyDeviceToHost ? "from the device"
			      : "within the device", __FILE__, __LINE__,
			      cudaGetErrorString(err));
	return cuda_end(cb, c, rc);
}

static int cuda_copy_in(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	return copy(be, dst, src, bytes, cudaMemcpyHostToDevice);
}

static int cuda_copy_out(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	return copy(be, dst, src, bytes, cudaMemcpyDeviceToHost);
}

static int cuda_copy_dev(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	return copy(be, dst, src, bytes, cudaMemcpyDeviceToDevice);
}

static int cuda_mem_info(struct dsm_backend *be, size_t *free_bytes, size_t *total_bytes)
{
	struct cuda_backend *cb = cuda_of(be);
	*free_bytes = cb->budget - cb->used;
	*total_bytes = cb->budget;
	return 0;
}

static void *cuda_host_alloc(struct dsm_backend *be, size_t bytes)
{
	(void)be;
	void *p = NULL;
	cudaError_t err = cudaMallocHost(&p, bytes ? bytes : 1);
	if (err != cudaSuccess) {
		cudaGetLastError();
		dsm_fail(DSM_ENOMEM, "cuda: cudaMallocHost of %zu bytes: %s", bytes, cudaGetErrorString(err));
		return NULL;
	}
	return p;
}

static void cuda_host_free(struct dsm_backend *be, void *p)
{
	(void)be;
	if (p)
		cudaFreeHost(p);
}

struct cuda_lt_api cuda_lt;

#define CUDA_LT_STR2(x) #x
#define CUDA_LT_STR(x) CUDA_LT_STR2(x)
#define CUDA_LT_SONAME "libcublasLt.so." CUDA_LT_STR(CUBLAS_VER_MAJOR)

int cuda_lt_load(void)
{
	static void *lib;
	if (lib)
		return 0;
	void *h = dlopen(CUDA_LT_SONAME, RTLD_NOW | RTLD_LOCAL);
	if (!h)
		return dsm_fail(DSM_EUNSUPPORTED, "cuda: %s, the CUDA toolkit's cuBLASLt, cannot be loaded (%s): install the "
				"toolkit's libraries or add their folder to LD_LIBRARY_PATH", CUDA_LT_SONAME, dlerror());
	struct cuda_lt_api api;
#define CUDA_LT_LOAD(name) \
	if (!(*(void **)&api.name = dlsym(h, #name))) { \
		dlclose(h); \
		return dsm_fail(DSM_EUNSUPPORTED, "cuda: %s has no %s", CUDA_LT_SONAME, #name); \
	}
	CUDA_LT_FUNCTIONS(CUDA_LT_LOAD)
#undef CUDA_LT_LOAD
	cuda_lt = api;
	lib = h;
	return 0;
}

static int device_sync(void)
{
	CUDA_CHECK(cudaDeviceSynchronize());
	return 0;
}

static int cuda_sync(struct dsm_backend *be)
{
	struct cuda_backend *cb = cuda_of(be);
	int rc = device_sync();
	if (rc == 0 && cb->pending_rc < 0) {
		rc = dsm_fail(cb->pending_rc, "%s", cb->pending_msg);
		cb->pending_rc = 0;
	}
	return rc;
}

static int cuda_reserve(struct dsm_backend *be, const struct dsm_attn_shape *s)
{
	struct cuda_backend *cb = cuda_of(be);
	size_t bytes = cuda_attn_scratch_bytes(cb, s->max_keys, s->n_heads, s->latent);
	if (bytes > cb->attn_reserve)
		cb->attn_reserve = bytes;
	int rc = cuda_buf_get(&cb->own, &cb->own.attn, cb->attn_reserve, "attention scratch");
	for (struct dsm_queue *q = cb->queues; q && rc == 0; q = q->next)
		rc = cuda_buf_get(&q->c, &q->c.attn, cb->attn_reserve, "attention scratch");
	return rc;
}

// ---- queues and events -----------------------------------------------------------------------------

static int cuda_queue_create(struct dsm_backend *be, struct dsm_queue **out)
{
	struct cuda_backend *cb = cuda_of(be);
	*out = NULL;
	struct dsm_queue *q = (struct dsm_queue *)calloc(1, sizeof *q);
	if (!q)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = ctx_init(&q->c, cb->attn_reserve);
	if (rc < 0) {
		ctx_free(&q->c);
		free(q);
		return dsm_fail_prefix(rc, "cuda queue");
	}
	q->next = cb->queues;
	cb->queues = q;
	*out = q;
	return 0;
}

static void cuda_queue_destroy(struct dsm_backend *be, struct dsm_queue *q)
{
	struct cuda_backend *cb = cuda_of(be);
	if (!q)
		return;
	cudaStreamSynchronize(q->c.s);
	for (struct dsm_queue **pq = &cb->queues; *pq; pq = &(*pq)->next)
		if (*pq == q) {
			*pq = q->next;
			break;
		}
	if (cb->cur == q)
		cb->cur = NULL;
	ctx_free(&q->c);
	free(q);
}

static void cuda_set_queue(struct dsm_backend *be, struct dsm_queue *q)
{
	cuda_of(be)->cur = q;
}

static int cuda_event_create(struct dsm_backend *be, struct dsm_event **out)
{
	(void)be;
	*out = NULL;
	struct dsm_event *e = (struct dsm_event *)calloc(1, sizeof *e);
	if (!e)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	cudaError_t err = cudaEventCreate(&e->ev); // with timing, for event_elapsed
	if (err != cudaSuccess) {
		free(e);
		return dsm_fail(DSM_EIO, "CUDA error %s in cudaEventCreate (%s:%d): %s", cudaGetErrorName(err), __FILE__,
				__LINE__, cudaGetErrorString(err));
	}
	*out = e;
	return 0;
}

static void cuda_event_destroy(struct dsm_backend *be, struct dsm_event *e)
{
	(void)be;
	if (!e)
		return;
	cudaEventDestroy(e->ev);
	free(e);
}

static int cuda_event_record(struct dsm_backend *be, struct dsm_event *e, struct dsm_queue *q)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c = q ? &q->c : &cb->own;
	e->rc = c->rc;
	snprintf(e->msg, sizeof e->msg, "%s", c->rc < 0 ? c->msg : "");
	CUDA_CHECK(cudaEventRecord(e->ev, c->s));
	return 0;
}

static int cuda_queue_wait(struct dsm_backend *be, struct dsm_queue *q, struct dsm_event *e)
{
	struct cuda_backend *cb = cuda_of(be);
	struct cuda_ctx *c = q ? &q->c : &cb->own;
	CUDA_CHECK(cudaStreamWaitEvent(c->s, e->ev, 0));
	return 0;
}

static int cuda_event_sync(struct dsm_backend *be, struct dsm_event *e)
{
	(void)be;
	CUDA_CHECK(cudaEventSynchronize(e->ev));
	if (e->rc < 0)
		return dsm_fail(e->rc, "%s", e->msg);
	return 0;
}

static int cuda_event_elapsed(struct dsm_backend *be, struct dsm_event *a, struct dsm_event *b, double *seconds)
{
	(void)be;
	float ms = 0;
	CUDA_CHECK(cudaEventElapsedTime(&ms, a->ev, b->ev));
	*seconds = ms / 1000.0;
	return 0;
}

// ---- the table -------------------------------------------------------------------------------------

static int cuda_supports(const struct dsm_backend *be, enum dsm_op op, enum dsm_dtype wtype)
{
	(void)be;
	if (op < 0 || op >= DSM_OP_COUNT)
		return 0;
	return wtype == DSM_DTYPE_INVALID || wtype == DSM_F8_E4M3 || wtype == DSM_BF16 || wtype == DSM_F32;
}

static void cuda_destroy(struct dsm_backend *be)
{
	struct cuda_backend *cb = cuda_of(be);
	cudaDeviceSynchronize();
	while (cb->queues)
		cuda_queue_destroy(be, cb->queues);
	while (cb->allocs) {
		struct cuda_alloc *a = cb->allocs;
		cb->allocs = a->next;
		cudaFree(a->p);
		free(a);
	}
	ctx_free(&cb->own);
	if (cb->lt)
		cuda_lt.cublasLtDestroy(cb->lt);
	free(cb);
}

static int open_device(struct cuda_backend *cb, const struct dsm_backend_options *o)
{
	int n = 0;
	cudaError_t err = cudaGetDeviceCount(&n);
	if (err != cudaSuccess || n == 0) {
		cudaGetLastError();
		return dsm_fail(DSM_EUNSUPPORTED, "cuda: no usable device (%s)",
				err != cudaSuccess ? cudaGetErrorString(err) : "the driver reports none");
	}
	cb->device = o ? o->device : 0;
	if (cb->device < 0 || cb->device >= n)
		return dsm_fail(DSM_EUNSUPPORTED, "cuda: no device %d (%d found)", cb->device, n);
	CUDA_CHECK(cudaSetDevice(cb->device));
	CUDA_CHECK(cudaDeviceGetAttribute(&cb->n_sm, cudaDevAttrMultiProcessorCount, cb->device));
	size_t fr = 0, tot = 0;
	CUDA_CHECK(cudaMemGetInfo(&fr, &tot));
	// The budget for be->alloc: what the caller asks for, or the free memory less a margin for the
	// scratch, cuBLASLt and the driver (1 GiB or 5 %, the larger).
	size_t margin = tot / 20 > ((size_t)1 << 30) ? tot / 20 : (size_t)1 << 30;
	size_t avail = fr > margin ? fr - margin : 0;
	if (o && o->device_bytes) {
		if (o->device_bytes > fr)
			return dsm_fail(DSM_ENOMEM, "cuda: device budget of %zu bytes requested, %zu of %zu bytes free on device %d",
					o->device_bytes, fr, tot, cb->device);
		cb->budget = o->device_bytes;
	} else {
		cb->budget = avail;
	}
	int rc = ctx_init(&cb->own, 0);
	if (rc < 0) {
		cudaMemGetInfo(&fr, &tot);
		return dsm_fail_prefix(rc, "cuda: stream state of %zu bytes (device free %zu of %zu bytes)",
				       LT_WS_BYTES + 2 * (size_t)STAGE_SLOTS * STAGE_BYTES, fr, tot);
	}
	if ((rc = cuda_lt_load()) < 0)
		return rc;
	cublasStatus_t st = cuda_lt.cublasLtCreate(&cb->lt);
	if (st != CUBLAS_STATUS_SUCCESS)
		return dsm_fail(DSM_EIO, "cuda: cublasLtCreate: %s", cuda_lt.cublasLtGetStatusString(st));
	return 0;
}

extern "C" int dsm_cuda_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o)
{
	*out = NULL;
	struct cuda_backend *cb = (struct cuda_backend *)calloc(1, sizeof *cb);
	if (!cb)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = open_device(cb, o);
	if (rc < 0) {
		cuda_destroy(&cb->be);
		return rc;
	}
	struct dsm_backend *be = &cb->be;
	be->name = "cuda";
	be->impl = cb;
	be->precision = o ? o->precision : DSM_PRECISION_F32;
	be->destroy = cuda_destroy;
	be->supports = cuda_supports;
	be->alloc = cuda_alloc;
	be->free = cuda_free;
	be->copy_in = cuda_copy_in;
	be->copy_out = cuda_copy_out;
	be->copy_dev = cuda_copy_dev;
	be->mem_info = cuda_mem_info;
	be->sync = cuda_sync;
	be->reserve = cuda_reserve;
	be->host_alloc = cuda_host_alloc;
	be->host_free = cuda_host_free;
	be->queue_create = cuda_queue_create;
	be->queue_destroy = cuda_queue_destroy;
	be->set_queue = cuda_set_queue;
	be->event_create = cuda_event_create;
	be->event_destroy = cuda_event_destroy;
	be->event_record = cuda_event_record;
	be->queue_wait = cuda_queue_wait;
	be->event_sync = cuda_event_sync;
	be->event_elapsed = cuda_event_elapsed;
	be->matmul = cuda_matmul;
	be->matmul_t = cuda_matmul_t;
	be->matmul_heads = cuda_matmul_heads;
	be->ffn = cuda_ffn;
	be->moe = cuda_moe;
	be->rmsnorm = cuda_rmsnorm;
	be->layernorm = cuda_layernorm;
	be->rope = cuda_rope;
	be->hadamard = cuda_hadamard;
	be->attn_full = cuda_attn_full;
	be->attn_latent = cuda_attn_latent;
	be->indexer_scores = cuda_indexer_scores;
	be->topk = cuda_topk;
	be->route = cuda_route;
	be->add = cuda_add;
	be->scale = cuda_scale;
	be->convert = cuda_convert;
	be->fp8_round = cuda_fp8_round;
	be->gather = cuda_gather;
	*out = be;
	return 0;
}
