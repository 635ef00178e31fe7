/* Feed-forward blocks (docs MODEL.md "MoE layer"):
 *
 *   dense layers:  y = down(silu(gate(x)) * up(x))                     SwiGLU, intermediate_size
 *   MoE layers:    s = sigmoid(x . gate^T)                             [T, E] router scores
 *                  idx, w = noaux_tc(s, bias)                          group-limited top-k, weights from
 *                                                                      the unbiased scores, x scaling
 *                  y = sum_k w_k Expert_idx_k(x) + Shared(x)
 *
 * The routed experts come from the model's expert store (offload/dispatch.h: its own with every expert mapped,
 * or a tiered one), which runs them expert-major, each chosen expert once per step on all its tokens, and adds
 * their weighted outputs to each token in ascending expert order, whatever the tiers; then it adds the shared
 * expert's output (dsm_offload_set_shared), computed on the GPU where the plan puts it. */
#include "model_internal.h"

#include "dispatch.h"
#include "error.h"

#include <math.h>

/* Weights of forced experts idx[k]: normalized unbiased sigmoid scores times the scaling factor. */
static void forced_weights(const struct dsm_config *c, const float *logits, const int32_t *idx, float *w)
{
	int k = c->num_experts_per_tok;
	double sum = 0;
	for (int j = 0; j < k; j++)
		sum += w[j] = 1.0f / (1.0f + expf(-logits[idx[j]]));
	for (int j = 0; j < k; j++)
		w[j] = (float)((c->norm_topk_prob ? w[j] / sum : w[j]) * c->routed_scaling_factor);
}

static int moe(struct dsm_session *s, int L)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_ffn_layer *f = &m->fwd.layers[L].ffn;
	const struct dsm_session_hooks *hk = &s->opt.hooks;
	int64_t T = s->T, E = c->n_routed_experts, D = c->hidden_size;
	int k = c->num_experts_per_tok;
	int rc;

	double t0 = dsm_now();
	if ((rc = be->matmul(be, &f->gate, T, st->xn, st->rlogits)) < 0)               /* [T, E] */
		return rc;
	struct dsm_route_args ra = {
		.n_tokens = T, .n_experts = E, .logits = st->rlogits, .bias = f->gate_bias,
		.n_group = c->n_group, .topk_group = c->topk_group, .top_k = k,
		.normalize = c->norm_topk_prob, .scaling = (float)c->routed_scaling_factor,
		.idx = st->ridx, .weight = st->rw,
	};
	/* The expert store works on the host: the choices, the weights and the normed input go there. */
	if ((rc = be->route(be, &ra)) < 0 ||                                           /* [T, k] */
	    (rc = dsm_to_host_queued(s, s->h_ridx, st->ridx, sizeof(int32_t) * (size_t)(T * k))) < 0 ||
	    (rc = dsm_to_host_queued(s, s->h_rw, st->rw, sizeof(float) * (size_t)(T * k))) < 0 ||
	    (rc = dsm_to_host_queued(s, s->h_xn, st->xn, sizeof(float) * (size_t)(T * D))) < 0 ||
	    (hk->force_route && (rc = dsm_to_host_queued(s, s->h_rlogits, st->rlogits, sizeof(float) * (size_t)(T * E))) < 0) ||
	    (rc = dsm_device_wait(s)) < 0)
		return rc;
	if (hk->force_route)
		for (int64_t t = 0; t < T; t++)
			if (hk->force_route(hk->user, s->row_seq[t], L, s->row_pos[t], s->h_ridx + t * k, k))
				forced_weights(c, s->h_rlogits + t * E, s->h_ridx + t * k, s->h_rw + t * k);
	if (hk->on_route)
		for (int64_t t = 0; t < T; t++)
			hk->on_route(hk->user, s->row_seq[t], L, s->row_pos[t], s->h_ridx + t * k, s->h_rw + t * k, k);

	double t1 = dsm_now();
	s->times.router += t1 - t0;
	struct dsm_moe_step ms = { .layer = L, .n_tokens = T, .top_k = k, .idx = s->h_ridx, .weight = s->h_rw,
				   .x = s->h_xn, .y = s->h_y };
	if ((rc = dsm_offload_moe(m->offload, &ms)) < 0)      /* [T, D], the shared expert's output added */
		return rc;
	if (st->queue)         /* the store used the device's queues: the session's again */
		be->set_queue(be, st->queue);
	if ((rc = dsm_device_resume(s)) == 0)
		rc = dsm_to_dev(s, st->y, s->h_y, sizeof(float) * (size_t)(T * D));
	s->times.experts += dsm_now() - t1;
	return rc;
}

int dsm_feed_forward(struct dsm_session *s, int L)
{
	struct dsm_stage *st = s->st;
	struct dsm_model *m = s->m;
	struct dsm_backend *be = st->be;
	const struct dsm_config *c = &m->cfg;
	const struct dsm_ffn_layer *f = &m->fwd.layers[L].ffn;
	int64_t T = s->T, D = c->hidden_size;
	int rc;
	if ((rc = be->rmsnorm(be, T, D, st->x, D, f->norm, (float)c->rms_norm_eps, st->xn)) < 0)
		return rc;
	if (f->moe) {
		rc = moe(s, L);
	} else {
		double t = dsm_now();
		rc = be->ffn(be, &f->dense, T, st->xn, st->y);
		s->times.dense += dsm_now() - t;
	}
	return rc < 0 ? rc : be->add(be, T * D, st->x, st->y);
}
