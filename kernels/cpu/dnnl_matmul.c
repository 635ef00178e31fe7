#include "dnnl_matmul.h"

#include "error.h"

#include <oneapi/dnnl/dnnl.h>
#include <stdlib.h>
#include <string.h>

/* Primitives are keyed by every shape and stride; a model uses a few dozen distinct ones. The cache is
 * a small array replaced round-robin: a miss costs one primitive creation (tens of microseconds). */
#define CACHE_SLOTS 64

struct key {
	int bf16, b_trans;
	int64_t M, N, K, lda, ldb, ldc;
};

struct slot {
	struct key key;
	int used;
	dnnl_primitive_t prim;
	dnnl_memory_t a, b, c;
};

struct dsm_dnnl {
	dnnl_engine_t engine;
	dnnl_stream_t stream;
	struct slot slots[CACHE_SLOTS];
	int next;
};

static void slot_clear(struct slot *s)
{
	if (s->prim)
		dnnl_primitive_destroy(s->prim);
	if (s->a)
		dnnl_memory_destroy(s->a);
	if (s->b)
		dnnl_memory_destroy(s->b);
	if (s->c)
		dnnl_memory_destroy(s->c);
	memset(s, 0, sizeof *s);
}

void dsm_dnnl_destroy(struct dsm_dnnl *d)
{
	if (!d)
		return;
	for (int i = 0; i < CACHE_SLOTS; i++)
		slot_clear(&d->slots[i]);
	if (d->stream)
		dnnl_stream_destroy(d->stream);
	if (d->engine)
		dnnl_engine_destroy(d->engine);
	free(d);
}

int dsm_dnnl_create(struct dsm_dnnl **out)
{
	*out = NULL;
	struct dsm_dnnl *d = calloc(1, sizeof *d);
	if (!d)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	dnnl_status_t st = dnnl_engine_create(&d->engine, dnnl_cpu, 0);
	if (st == dnnl_success)
		st = dnnl_stream_create(&d->stream, d->engine, dnnl_stream_default_flags);
	if (st != dnnl_success) {
		dsm_dnnl_destroy(d);
		return dsm_fail(DSM_EUNSUPPORTED, "oneDNN: cannot create the cpu engine (status %d)", (int)st);
	}
	*out = d;
	return 0;
}

static int build(struct dsm_dnnl *d, struct slot *s, const struct key *k)
{
	dnnl_data_type_t dt = k->bf16 ? dnnl_bf16 : dnnl_f32;
	dnnl_memory_desc_t amd, bmd, cmd;
	dnnl_dims_t adims = { k->M, k->K }, astr = { k->lda, 1 };
	dnnl_dims_t bdims = { k->K, k->N }, bstr_t = { 1, k->ldb }, bstr = { k->ldb, 1 };
	dnnl_dims_t cdims = { k->M, k->N }, cstr = { k->ldc, 1 };
	dnnl_matmul_desc_t desc;
	dnnl_primitive_desc_t pd = NULL;
	dnnl_status_t st = dnnl_memory_desc_init_by_strides(&amd, 2, adims, dt, astr);
	if (st == dnnl_success)
		st = dnnl_memory_desc_init_by_strides(&bmd, 2, bdims, dt, k->b_trans ? bstr_t : bstr);
	if (st == dnnl_success)
		st = dnnl_memory_desc_init_by_strides(&cmd, 2, cdims, dnnl_f32, cstr);
	if (st == dnnl_success)
		st = dnnl_matmul_desc_init(&desc, &amd, &bmd, NULL, &cmd);
	if (st == dnnl_success)
		st = dnnl_primitive_desc_create(&pd, &desc, NULL, d->engine, NULL);
	if (st == dnnl_success)
		st = dnnl_primitive_create(&s->prim, pd);
	if (pd)
		dnnl_primitive_desc_destroy(pd);
	if (st == dnnl_success)
		st = dnnl_memory_create(&s->a, &amd, d->engine, DNNL_MEMORY_NONE);
	if (st == dnnl_success)
		st = dnnl_memory_create(&s->b, &bmd, d->engine, DNNL_MEMORY_NONE);
	if (st == dnnl_success)
		st = dnnl_memory_create(&s->c, &cmd, d->engine, DNNL_MEMORY_NONE);
	if (st != dnnl_success) {
		slot_clear(s);
		return dsm_fail(DSM_EUNSUPPORTED, "oneDNN: matmul %lldx%lldx%lld (%s) not available (status %d)",
				(long long)k->M, (long long)k->N, (long long)k->K, k->bf16 ? "bf16" : "f32", (int)st);
	}
	s->key = *k;
	s->used = 1;
	return 0;
}

int dsm_dnnl_matmul(struct dsm_dnnl *d, int bf16, int64_t M, int64_t N, int64_t K, const void *A, int64_t lda,
		    const void *B, int64_t ldb, int b_trans, float *C, int64_t ldc)
{
	struct key k;
	memset(&k, 0, sizeof k);
	k = (struct key){ .bf16 = bf16, .b_trans = b_trans, .M = M, .N = N, .K = K, .lda = lda, .ldb = ldb,
			  .ldc = ldc };
	struct slot *s = NULL;
	for (int i = 0; i < CACHE_SLOTS; i++)
		if (d->slots[i].used && memcmp(&d->slots[i].key, &k, sizeof k) == 0) {
			s = &d->slots[i];
			break;
		}
	if (!s) {
		s = &d->slots[d->next];
		d->next = (d->next + 1) % CACHE_SLOTS;
		slot_clear(s);
		int rc = build(d, s, &k);
		if (rc < 0)
			return rc;
	}
	dnnl_status_t st = dnnl_memory_set_data_handle(s->a, (void *)A);
	if (st == dnnl_success)
		st = dnnl_memory_set_data_handle(s->b, (void *)B);
	if (st == dnnl_success)
		st = dnnl_memory_set_data_handle(s->c, C);
	if (st == dnnl_success) {
		dnnl_exec_arg_t args[3] = {
			{ DNNL_ARG_SRC, s->a }, { DNNL_ARG_WEIGHTS, s->b }, { DNNL_ARG_DST, s->c },
		};
		st = dnnl_primitive_execute(s->prim, d->stream, 3, args);
	}
	if (st == dnnl_success)
		st = dnnl_stream_wait(d->stream);
	if (st != dnnl_success)
		return dsm_fail(DSM_EUNSUPPORTED, "oneDNN: matmul %lldx%lldx%lld failed (status %d)", (long long)M,
				(long long)N, (long long)K, (int)st);
	return 0;
}
