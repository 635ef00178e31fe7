/* The emu backend (emu_backend.h): device memory under a budget, ops delegated to an owned cpu backend. */
#include "emu/emu_backend.h"

#include "error.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* Every allocation starts with this header, so that free knows its size and catches double frees;
 * 64 bytes keeps the returned pointer 64-byte aligned. */
#define EMU_HEADER 64
#define EMU_MAGIC 0x656d7564657669ceull

struct emu_header {
	uint64_t magic;
	size_t bytes;           /* counted bytes (request rounded up to 64) */
};

struct emu_backend {
	struct dsm_backend be;  /* first: a struct dsm_backend * points here */
	struct dsm_backend *cpu;
	struct dsm_emu_stats st;
};

static struct emu_backend *emu_of(struct dsm_backend *be)
{
	return (struct emu_backend *)be;
}

static struct dsm_backend *cpu_of_emu(struct dsm_backend *be)
{
	return ((struct emu_backend *)be)->cpu;
}

static void emu_destroy(struct dsm_backend *be)
{
	struct emu_backend *eb = emu_of(be);
	dsm_backend_destroy(eb->cpu);
	free(eb);
}

static int emu_supports(const struct dsm_backend *be, enum dsm_op op, enum dsm_dtype wtype)
{
	const struct dsm_backend *c = ((const struct emu_backend *)be)->cpu;
	return c->supports(c, op, wtype);
}

static void *emu_alloc(struct dsm_backend *be, size_t bytes)
{
	struct emu_backend *eb = emu_of(be);
	if (bytes > SIZE_MAX - 2 * EMU_HEADER)
		return NULL;
	size_t counted = (bytes + 63) & ~(size_t)63;
	if (counted == 0)
		counted = 64;
	if (counted > eb->st.budget - eb->st.used) {
		eb->st.failed++;
		return NULL;
	}
	unsigned char *p = aligned_alloc(64, EMU_HEADER + counted);
	if (!p)
		return NULL;
	struct emu_header *h = (struct emu_header *)p;
	h->magic = EMU_MAGIC;
	h->bytes = counted;
	eb->st.used += counted;
	eb->st.allocs++;
	if (eb->st.used > eb->st.peak)
		eb->st.peak = eb->st.used;
	return p + EMU_HEADER;
}

static void emu_free(struct dsm_backend *be, void *p)
{
	struct emu_backend *eb = emu_of(be);
	if (!p)
		return;
	struct emu_header *h = (struct emu_header *)((unsigned char *)p - EMU_HEADER);
	if (((uintptr_t)p & 63) || h->magic != EMU_MAGIC || h->bytes > eb->st.used || !eb->st.allocs) {
		eb->st.bad_frees++;
		return;
	}
	h->magic = 0; /* a second free of the same pointer counts as bad */
	eb->st.used -= h->bytes;
	eb->st.allocs--;
	free(h);
}

static int emu_copy(struct dsm_backend *be, void *dst, const void *src, size_t bytes)
{
	(void)be;
	if (bytes)
		memcpy(dst, src, bytes);
	return 0;
}

static int emu_sync(struct dsm_backend *be)
{
	(void)be;
	return 0;
}

static int emu_reserve(struct dsm_backend *be, int64_t max_keys, int64_t n_heads, int64_t head_dim)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->reserve ? c->reserve(c, max_keys, n_heads, head_dim) : 0;
}

/* The ops: the cpu backend's, called with the cpu backend (its ops take their own state from it). */
static int emu_matmul(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul(c, w, n, x, y);
}

static int emu_matmul_t(struct dsm_backend *be, const struct dsm_mat *w, int64_t n, const float *x, float *y)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul_t(c, w, n, x, y);
}

static int emu_matmul_heads(struct dsm_backend *be, const struct dsm_matmul_heads_args *a)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->matmul_heads(c, a);
}

static int emu_ffn(struct dsm_backend *be, const struct dsm_ffn_weights *w, int64_t n, const float *x, float *y)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->ffn(c, w, n, x, y);
}

static int emu_rmsnorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, int64_t ldx, const float *w,
		       float eps, float *y)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->rmsnorm(c, n, d, x, ldx, w, eps, y);
}

static int emu_layernorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w,
			 const float *b, float eps, float *y)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->layernorm(c, n, d, x, w, b, eps, y);
}

static int emu_rope(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx,
		    int64_t ldh, const float *cos, const float *sin, int interleaved)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->rope(c, n, n_heads, dim, x, ldx, ldh, cos, sin, interleaved);
}

static int emu_hadamard(struct dsm_backend *be, int64_t n, int64_t d, float *x)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->hadamard(c, n, d, x);
}

static int emu_attn_full(struct dsm_backend *be, const struct dsm_attn_full_args *a)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->attn_full(c, a);
}

static int emu_attn_latent(struct dsm_backend *be, const struct dsm_attn_latent_args *a)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->attn_latent(c, a);
}

static int emu_indexer_scores(struct dsm_backend *be, int64_t n_heads, int64_t d, const float *q, const float *w,
			      const float *k, int64_t n_keys, float *out)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->indexer_scores(c, n_heads, d, q, w, k, n_keys, out);
}

static int emu_topk(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->topk(c, x, n, k, idx);
}

static int emu_route(struct dsm_backend *be, const struct dsm_route_args *a)
{
	struct dsm_backend *c = cpu_of_emu(be);
	return c->route(c, a);
}

int dsm_emu_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o)
{
	*out = NULL;
	struct emu_backend *eb = calloc(1, sizeof *eb);
	if (!eb)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = dsm_backend_create(&eb->cpu, "cpu", o);
	if (rc < 0) {
		free(eb);
		return dsm_fail_prefix(rc, "emu backend");
	}
	eb->st.budget = o && o->device_bytes ? o->device_bytes : DSM_EMU_DEFAULT_BYTES;
	struct dsm_backend *be = &eb->be;
	be->name = "emu";
	be->impl = eb;
	be->precision = eb->cpu->precision;
	be->destroy = emu_destroy;
	be->supports = emu_supports;
	be->alloc = emu_alloc;
	be->free = emu_free;
	be->copy_in = emu_copy;
	be->copy_out = emu_copy;
	be->sync = emu_sync;
	be->reserve = emu_reserve;
	be->matmul = emu_matmul;
	be->matmul_t = emu_matmul_t;
	be->matmul_heads = emu_matmul_heads;
	be->ffn = emu_ffn;
	be->rmsnorm = emu_rmsnorm;
	be->layernorm = emu_layernorm;
	be->rope = emu_rope;
	be->hadamard = emu_hadamard;
	be->attn_full = emu_attn_full;
	be->attn_latent = emu_attn_latent;
	be->indexer_scores = emu_indexer_scores;
	be->topk = emu_topk;
	be->route = emu_route;
	*out = be;
	return 0;
}

int dsm_emu_get_stats(const struct dsm_backend *be, struct dsm_emu_stats *s)
{
	if (!be || be->destroy != emu_destroy)
		return dsm_fail(DSM_EARG, "not an emu backend");
	*s = ((const struct emu_backend *)be)->st;
	return 0;
}
