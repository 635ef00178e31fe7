/* The cpu backend's table: every op of backend.h, the hot ones threaded (cpu_matmul.c,
 * cpu_attention.c), the cheap ones straight from the scalar reference (ref_ops.c). */
#include "cpu_backend.h"
#include "cpu_team.h"

#include "error.h"
#include "ref_ops.h"

#include <hwloc.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

void *cpu_scratch_get(struct cpu_scratch *s, size_t bytes)
{
	if (bytes <= s->bytes)
		return s->p;
	size_t want = bytes + bytes / 4;
	want = (want + 63) & ~(size_t)63;
	void *p = aligned_alloc(64, want);
	if (!p) {
		dsm_fail(DSM_ENOMEM, "out of memory (scratch of %zu bytes)", want);
		return NULL;
	}
	free(s->p);
	s->p = p;
	s->bytes = want;
	return p;
}

void cpu_scratch_free(struct cpu_scratch *s)
{
	free(s->p);
	s->p = NULL;
	s->bytes = 0;
}

static void cpu_destroy(struct dsm_backend *be)
{
	struct cpu_backend *cb = cpu_of(be);
	dsm_dnnl_destroy(cb->dnnl);
	dsm_expert_ctx_free(cb->experts);
	cpu_scratch_free(&cb->panel);
	cpu_scratch_free(&cb->act);
	cpu_scratch_free(&cb->ffn);
	cpu_scratch_free(&cb->attn);
	cpu_scratch_free(&cb->moe);
	cpu_top_free(&cb->top);
	free(cb);
}

static int cpu_supports(const struct dsm_backend *be, enum dsm_op op, enum dsm_dtype wtype)
{
	if (op < 0 || op >= DSM_OP_COUNT)
		return 0;
	return wtype == DSM_DTYPE_INVALID || wtype == DSM_F8_E4M3 || wtype == DSM_BF16 || wtype == DSM_F32;
}

static size_t max_size(size_t a, size_t b)
{
	return a > b ? a : b;
}

static int cpu_reserve(struct dsm_backend *be, const struct dsm_attn_shape *s)
{
	struct cpu_backend *cb = cpu_of(be);
	int nt = omp_get_max_threads();
	int64_t sel = s->max_selected < s->max_keys ? s->max_selected : s->max_keys;
	size_t need = max_size(cpu_attn_latent_floats(s->n_heads, s->max_keys, s->latent, nt),
			       cpu_attn_full_floats(s->max_keys, s->qk_dim, s->v_dim, 0, nt));
	if (sel > 0)
		need = max_size(need, cpu_attn_full_floats(sel, s->qk_dim, s->v_dim, 1, nt));
	return cpu_scratch_get(&cb->attn, sizeof(float) * need) ? 0 : DSM_ENOMEM;
}

static int cpu_layernorm(struct dsm_backend *be, int64_t n, int64_t d, const float *x, const float *w,
			 const float *b, float eps, float *y)
{
	dsm_ref_layernorm(n, d, x, w, b, eps, y);
	return 0;
}

static int cpu_rope(struct dsm_backend *be, int64_t n, int64_t n_heads, int64_t dim, float *x, int64_t ldx,
		    int64_t ldh, const float *cos, const float *sin, int interleaved)
{
	dsm_ref_rope(n, n_heads, dim, x, ldx, ldh, cos, sin, interleaved);
	return 0;
}

static int cpu_topk(struct dsm_backend *be, const float *x, int64_t n, int64_t k, int32_t *idx)
{
	return dsm_ref_topk(x, n, k, idx);
}

static int cpu_route(struct dsm_backend *be, const struct dsm_route_args *a)
{
	return dsm_ref_route(a);
}

static int cpu_add(struct dsm_backend *be, int64_t n, float *x, const float *y)
{
	dsm_ref_add(n, x, y);
	return 0;
}

static int cpu_scale(struct dsm_backend *be, int64_t n, float *x, float s)
{
	dsm_ref_scale(n, x, s);
	return 0;
}

static int cpu_convert(struct dsm_backend *be, int64_t rows, int64_t cols, const void *x, enum dsm_dtype xt,
		       int64_t ldx, void *y, enum dsm_dtype yt, int64_t ldy)
{
	return dsm_ref_convert(rows, cols, x, xt, ldx, y, yt, ldy);
}

static int cpu_fp8_round(struct dsm_backend *be, int64_t n, int64_t d, float *x, int ue8m0)
{
	dsm_ref_fp8_round(n, d, x, ue8m0);
	return 0;
}

static int cpu_gather(struct dsm_backend *be, int64_t n, const void *const *x, int64_t block_rows, int64_t last_rows,
		      int64_t cols, enum dsm_dtype xt, void *y, enum dsm_dtype yt)
{
	return dsm_ref_gather(n, x, block_rows, last_rows, cols, xt, y, yt);
}

int dsm_physical_cores(void)
{
	hwloc_topology_t topo;
	int n = 0;
	if (hwloc_topology_init(&topo) == 0) {
		if (hwloc_topology_load(topo) == 0)
			n = hwloc_get_nbobjs_by_type(topo, HWLOC_OBJ_CORE);
		hwloc_topology_destroy(topo);
	}
	return n > 0 ? n : 1;
}

double dsm_cpu_wait_seconds(struct dsm_backend *be)
{
	struct cpu_backend *cb = cpu_of(be);
	if (strcmp(be->name, "cpu") != 0)
		return 0;
	return cb->wait.seconds + (cb->experts ? dsm_expert_ctx_wait_seconds(cb->experts) : 0);
}

int dsm_cpu_gemv_tune(struct dsm_backend *be, const struct dsm_fp8_mat *mats, size_t n, struct dsm_gemv_tune_result *r)
{
	struct cpu_backend *cb = cpu_of(be);
	if (strcmp(be->name, "cpu") != 0 || !cb->experts || dsm_expert_ctx_isa(cb->experts) != DSM_ISA_AVX512BF16)
		return dsm_fail(DSM_EUNSUPPORTED, "the decode kernel in use has no variants to choose from");
	return dsm_gemv_tune(cb->experts, mats, n, r);
}

static void cpu_hold_threads(struct dsm_backend *be, void (*body)(void *arg), void *arg)
{
	cpu_team_run(cpu_of(be)->threads, body, arg);
}

int dsm_cpu_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o)
{
	*out = NULL;
	struct cpu_backend *cb = calloc(1, sizeof *cb);
	if (!cb)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc = dsm_dnnl_create(&cb->dnnl);
	if (rc < 0) {
		free(cb);
		return rc;
	}
	const struct dsm_cpu_threads *plan = o ? o->cpu_threads : NULL;
	cb->threads = plan ? plan->n_threads : o && o->threads > 0 ? o->threads : dsm_physical_cores();
	omp_set_num_threads(cb->threads);
	/* The expert kernels: with F32 precision the best F32 kernel (weights exact, activations F32); with BF16
	 * the BF16 dot-product kernels. */
	enum dsm_isa isa = dsm_isa_best();
	if (!(o && o->precision == DSM_PRECISION_BF16) && isa == DSM_ISA_AVX512BF16)
		isa = DSM_ISA_AVX512F;
	struct dsm_expert_opts eo = { .isa = isa, .n_threads = cb->threads, .threads = plan };
	if (isa != DSM_ISA_SCALAR && dsm_expert_ctx_init(&cb->experts, &eo) < 0)
		cb->experts = NULL;
	struct dsm_backend *be = &cb->be;
	be->name = "cpu";
	be->impl = cb;
	be->precision = o ? o->precision : DSM_PRECISION_F32;
	be->destroy = cpu_destroy;
	be->supports = cpu_supports;
	be->reserve = cpu_reserve;
	be->matmul = cpu_matmul;
	be->matmul_t = cpu_matmul_t;
	be->matmul_heads = cpu_matmul_heads;
	be->hold_threads = cpu_hold_threads;
	be->top_prepare = cpu_top_prepare;
	be->matmul_top = cpu_matmul_top;
	be->ffn = cpu_ffn;
	be->moe = cpu_moe;
	be->rmsnorm = cpu_rmsnorm;
	be->layernorm = cpu_layernorm;
	be->rope = cpu_rope;
	be->hadamard = cpu_hadamard;
	be->attn_full = cpu_attn_full;
	be->attn_latent = cpu_attn_latent;
	be->indexer_scores = cpu_indexer_scores;
	be->topk = cpu_topk;
	be->route = cpu_route;
	be->add = cpu_add;
	be->scale = cpu_scale;
	be->convert = cpu_convert;
	be->fp8_round = cpu_fp8_round;
	be->gather = cpu_gather;
	*out = be;
	return 0;
}
