/* The forward pass outside the experts on one or more devices (docs/offload.md "The forward pass on the GPU").
 *
 * dsm_model_to_devices copies what the session reads besides the routed and shared experts (the embeddings, the
 * head, the final norm, and each layer's attention, indexer, norms, router and dense feed-forward) into the memory
 * of the device whose stage computes it, and points m->fwd at the copies and the devices. The session then keeps
 * its buffers and KV cache there (session.c) and never touches them from the host; the experts stay with the
 * expert store (offload/dispatch.h). */
#include "model.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

/* One walk over a stage's tensors: counts them and their bytes (dev NULL), or copies each to dev. */
struct walk {
	struct dsm_backend *dev;
	struct dsm_fwd *f;
	size_t n;
	uint64_t bytes;
};

static int put(struct walk *w, const void **p, size_t bytes)
{
	w->n++;
	w->bytes += bytes;
	if (!w->dev || !*p)
		return 0;
	void *d = w->dev->alloc(w->dev, bytes);
	if (!d)
		return dsm_fail_prefix(DSM_ENOMEM, "%zu bytes of weights on the %s device", bytes, w->dev->name);
	w->f->dev[w->f->n_dev++] = (struct dsm_dev_alloc){ w->dev, d };
	int rc = w->dev->copy_in(w->dev, d, *p, bytes);
	*p = d;
	return rc;
}

static int put_mat(struct walk *w, struct dsm_mat *m)
{
	if (!m->data)
		return 0;
	size_t rows = (size_t)(m->row0 + m->rows), cols = (size_t)m->cols;
	int rc = put(w, &m->data, rows * cols * dsm_dtype_size(m->dtype));
	if (rc == 0 && m->dtype == DSM_F8_E4M3)
		rc = put(w, (const void **)&m->scale, sizeof(float) * ((rows + DSM_BLOCK - 1) / DSM_BLOCK) *
			 ((cols + DSM_BLOCK - 1) / DSM_BLOCK));
	return rc;
}

static int put_vec(struct walk *w, float **v, int64_t n)
{
	return put(w, (const void **)v, sizeof(float) * (size_t)n);
}

static int put_layer(struct walk *w, const struct dsm_config *c, struct dsm_layer *l)
{
	struct dsm_attn_weights *a = &l->attn;
	struct dsm_indexer_weights *x = &l->indexer;
	struct dsm_ffn_layer *f = &l->ffn;
	int64_t D = c->hidden_size, dI = c->index_head_dim;
	int rc;
	if ((rc = put_vec(w, &a->norm, D)) < 0 || (rc = put_mat(w, &a->q_a)) < 0 ||
	    (rc = put_vec(w, &a->q_a_norm, c->q_lora_rank)) < 0 || (rc = put_mat(w, &a->q_b)) < 0 ||
	    (rc = put_mat(w, &a->kv_a)) < 0 || (rc = put_vec(w, &a->kv_a_norm, c->kv_lora_rank)) < 0 ||
	    (rc = put_mat(w, &a->kv_b)) < 0 || (rc = put_mat(w, &a->o)) < 0 || (rc = put_vec(w, &f->norm, D)) < 0)
		return rc;
	if (c->has_indexer &&
	    ((rc = put_mat(w, &x->wq_b)) < 0 || (rc = put_mat(w, &x->wk)) < 0 || (rc = put_vec(w, &x->k_norm_w, dI)) < 0 ||
	     (rc = put_vec(w, &x->k_norm_b, dI)) < 0 || (rc = put_mat(w, &x->weights_proj)) < 0))
		return rc;
	if (!f->moe)
		return (rc = put_mat(w, &f->dense.gate)) < 0 || (rc = put_mat(w, &f->dense.up)) < 0 ? rc :
		       put_mat(w, &f->dense.down);
	memset(&f->shared, 0, sizeof f->shared); /* computed by the expert store from the model's own */
	return (rc = put_mat(w, &f->gate)) < 0 ? rc : put_vec(w, &f->gate_bias, c->n_routed_experts);
}

/* Copies the weights of layers [l0, l1) into f, with the embeddings when l0 is 0 and the head when l1 is the end
 * (w->dev NULL: counts them only). */
static int walk_stage(struct walk *w, const struct dsm_model *m, struct dsm_fwd *f, int l0, int l1)
{
	const struct dsm_config *c = &m->cfg;
	int rc;
	if (l0 == 0 && (rc = put_mat(w, &f->embed)) < 0)
		return rc;
	if (l1 == c->num_hidden_layers &&
	    ((rc = put_mat(w, &f->head)) < 0 || (rc = put_vec(w, &f->final_norm, c->hidden_size)) < 0))
		return rc;
	for (int L = l0; L < l1; L++) {
		struct dsm_layer l = m->layers[L];
		if ((rc = put_layer(w, c, &l)) < 0)
			return rc;
		if (f->layers)
			f->layers[L] = l;
	}
	return 0;
}

uint64_t dsm_model_device_bytes(const struct dsm_model *m, int layer0, int layer_end)
{
	struct dsm_fwd f = { .embed = m->embed, .head = m->head, .final_norm = m->final_norm };
	struct walk w = { .f = &f };
	walk_stage(&w, m, &f, layer0, layer_end);
	return w.bytes;
}

static void release(struct dsm_model *m)
{
	struct dsm_fwd *f = &m->fwd;
	for (size_t i = 0; i < f->n_dev; i++)
		f->dev[i].be->free(f->dev[i].be, f->dev[i].p);
	if (f->layers != m->layers)
		free(f->layers);
	free(f->dev);
	m->fwd = (struct dsm_fwd){ .n_stages = 1, .stage_be = { m->be }, .stage_end = { m->cfg.num_hidden_layers },
				   .embed = m->embed, .head = m->head, .final_norm = m->final_norm, .layers = m->layers };
}

int dsm_model_to_devices(struct dsm_model *m, struct dsm_backend *const *dev, const int *stage_end, int n)
{
	release(m);
	if (n <= 0)
		return 0;
	if (m->embed.dtype != DSM_F32 && m->embed.dtype != DSM_BF16)
		return dsm_fail(DSM_EUNSUPPORTED, "the embeddings are %s: the forward pass on a device reads F32 or BF16 ones",
				dsm_dtype_name(m->embed.dtype));
	struct dsm_fwd f = { .n_stages = n, .embed = m->embed, .head = m->head, .final_norm = m->final_norm };
	size_t allocs = 0;
	for (int k = 0; k < n; k++) {
		int l0 = k ? stage_end[k - 1] : 0;
		struct walk w = { .f = &f };
		walk_stage(&w, m, &f, l0, stage_end[k]);
		allocs += w.n;
		size_t fr, tot;
		if (dev[k]->mem_info && dev[k]->mem_info(dev[k], &fr, &tot) == 0 && w.bytes > fr)
			return dsm_fail(DSM_ENOMEM, "the weights outside the experts of layers %d-%d are %.3f GB: more than the "
					"%.3f GB free on the %s device that runs them", l0, stage_end[k] - 1,
					(double)w.bytes / 1e9, (double)fr / 1e9, dev[k]->name);
		f.stage_be[k] = dev[k];
		f.stage_end[k] = stage_end[k];
	}
	f.dev = calloc(allocs + 1, sizeof *f.dev);
	f.layers = calloc((size_t)m->cfg.num_hidden_layers + 1, sizeof *f.layers);
	int rc = f.dev && f.layers ? 0 : dsm_fail(DSM_ENOMEM, "out of memory");
	for (int k = 0; k < n && rc == 0; k++) {
		struct walk w = { .dev = dev[k], .f = &f };
		rc = walk_stage(&w, m, &f, k ? stage_end[k - 1] : 0, stage_end[k]);
		if (rc == 0 && dev[k]->sync)
			rc = dev[k]->sync(dev[k]);
	}
	m->fwd = f; /* released below on failure */
	if (rc < 0)
		release(m);
	return rc;
}
