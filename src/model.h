/* The DeepSeek-V3.2 model: config, weights and the backend that computes with them (docs MODEL.md).
 *
 * Three structs, as llama2.c has them: the config (struct dsm_config, from config.json), the weights
 * (struct dsm_model: views of the checkpoint's tensors, mapped read-only from the shard files; routed
 * experts behind the expert store of offload/dispatch.h) and the run state (struct dsm_session in
 * session.h: KV caches and activation buffers of one sequence). The forward pass itself is in session.c
 * (driver), mla.c (attention), indexer.c (lightning indexer) and moe.c (dense and MoE feed-forward).
 *
 * Shapes use the names of MODEL.md: D hidden_size, H heads, dn/dr/dv qk_nope/qk_rope/v head dims,
 * r kv_lora_rank, rq q_lora_rank, nI/dI indexer heads/head dim, E routed experts, V vocab_size. */
#ifndef DSM_MODEL_H
#define DSM_MODEL_H

#include "backend.h"
#include "checkpoint.h"
#include "config.h"

#include <stddef.h>
#include <stdint.h>

struct dsm_offload;
struct dsm_store_model;
struct dsm_topo;
struct dsm_topo_threads;
struct dsm_weight_map;

/* Which form MLA attention takes. AUTO: the full form for multi-token steps (prefill), the absorbed
 * form over the latent cache for single-token steps (decode). */
enum dsm_mla_form { DSM_MLA_AUTO, DSM_MLA_FULL, DSM_MLA_ABSORBED };

struct dsm_model_options {
	enum dsm_precision precision;   /* matmul precision (default f32) */
	int threads;                    /* <= 0: physical cores */
	int no_bind;                    /* 1: leave thread placement to the OS (default: one per core, bound) */
	int indexer_fp8;                /* round indexer q/k to FP8 like the public reference (default 0) */
	int index_topk;                 /* > 0: overrides config.json's index_topk (tests) */
	enum dsm_mla_form mla_form;
};

struct dsm_attn_weights {
	float *norm;                    /* [D] input_layernorm */
	struct dsm_mat q_a;             /* [rq, D] */
	float *q_a_norm;                /* [rq] */
	struct dsm_mat q_b;             /* [H * (dn + dr), rq] */
	struct dsm_mat kv_a;            /* [r + dr, D]: latent then rope key */
	float *kv_a_norm;               /* [r] */
	struct dsm_mat kv_b;            /* [H * (dn + dv), r]: per head k_nope rows then v rows */
	struct dsm_mat o;               /* [D, H * dv] */
};

struct dsm_indexer_weights {
	struct dsm_mat wq_b;            /* [nI * dI, rq] */
	struct dsm_mat wk;              /* [dI, D] */
	float *k_norm_w, *k_norm_b;     /* [dI] LayerNorm */
	struct dsm_mat weights_proj;    /* [nI, D] */
};

struct dsm_ffn_layer {
	float *norm;                    /* [D] post_attention_layernorm */
	int moe;                        /* 0: dense SwiGLU; 1: router + routed experts + shared expert */
	struct dsm_ffn_weights dense;   /* dense layers: [I, D], [I, D], [D, I] */
	struct dsm_mat gate;            /* MoE: router [E, D] */
	float *gate_bias;               /* MoE: [E] e_score_correction_bias */
	struct dsm_ffn_weights shared;  /* MoE: shared expert(s), [n_shared * I_moe, D] ... */
};

struct dsm_layer {
	struct dsm_attn_weights attn;
	struct dsm_indexer_weights indexer; /* V3.2 only */
	struct dsm_ffn_layer ffn;
};

/* What the forward pass reads outside the routed and shared experts, and the backends that compute it: the
 * model's own weights and cpu backend (one stage), or copies of them in the memory of one or more devices
 * (dsm_model_to_devices). Stage k computes layers [stage_end[k - 1], stage_end[k]) (from 0 for k = 0) on
 * stage_be[k]; the embeddings sit with the first stage, the final norm and the head with the last. */
struct dsm_fwd {
	int n_stages;
	struct dsm_backend *stage_be[DSM_MAX_GPUS];
	int stage_end[DSM_MAX_GPUS];
	struct dsm_mat embed, head;
	float *final_norm;
	struct dsm_layer *layers;       /* each in its stage's memory: its shared experts are not copied (offload/
					 * runs them) */
	struct dsm_dev_alloc {
		struct dsm_backend *be;
		void *p;
	} *dev;                         /* the device allocations, n_dev of them */
	size_t n_dev;
};

struct dsm_model {
	struct dsm_config cfg;          /* config.json (index_topk possibly overridden) */
	struct dsm_model_options opts;
	struct dsm_checkpoint *ck;
	struct dsm_weight_map *map;     /* the shard files, mapped read-only */
	struct dsm_store_model *store_model; /* the checkpoint as offload/ sees it (plans and stores are made from
					 * it: dsm_offload_setup, dsm_plan_*); owned */
	struct dsm_offload *mapped_experts; /* every routed expert computed where it is mapped; owned */
	struct dsm_offload *offload;    /* the store the routed experts come from: mapped_experts, or a tiered
					 * store set with dsm_model_set_experts (not owned) */
	struct dsm_backend *be;
	struct dsm_topo *topo;          /* hwloc: where the backend's threads run */
	struct dsm_topo_threads *threads; /* one thread per physical core, bound; NULL: unbound */

	struct dsm_mat embed;           /* [V, D] */
	float *final_norm;              /* [D] */
	struct dsm_mat head;            /* [V, D] */
	struct dsm_layer *layers;       /* [num_hidden_layers]; the MTP layer is never loaded */

	double *rope_freq;              /* [dr / 2] YaRN-corrected angular frequencies */
	float rope_amp;                 /* cos/sin amplitude (1 for the real config) */
	float softmax_scale;            /* (dn + dr)^-0.5 * mscale^2 */

	struct dsm_fwd fwd;             /* what the forward pass computes with: the above and be, or a device's copy */
	uint64_t head_screen_bytes;     /* the head's screen on its backend (greedy steps use matmul_top); 0: none */

	void **owned;                   /* buffers this model allocated (norms, aligned copies) */
	size_t n_owned, cap_owned;
};

/* Opens the checkpoint in dir, maps its weights and creates the cpu backend. o may be NULL (defaults).
 * Returns 0 or a negative DSM_E* code with a message naming the file and tensor. */
int dsm_model_open(struct dsm_model **out, const char *dir, const struct dsm_model_options *o);
/* Accepts NULL and half-built models. */
void dsm_model_close(struct dsm_model *m);

/* Routed experts from store o from now on (NULL: the model's own, every expert mapped). o stays the caller's:
 * it must have been opened from m->store_model with m->be as its cpu backend, and must outlive its use (set
 * NULL before closing it if the model is used further). The routers of the MoE layers are handed to o for
 * its look-ahead prefetch. Returns 0 or DSM_EARG. */
int dsm_model_set_experts(struct dsm_model *m, struct dsm_offload *o);

/* Bytes of the weights a stage computing layers [layer0, layer_end) holds on its device: those layers' attention,
 * indexer, norms, router and dense feed-forward weights (not the routed and shared experts), the embeddings when
 * layer0 is 0, the final norm and the head when layer_end is the last layer's end. */
uint64_t dsm_model_device_bytes(const struct dsm_model *m, int layer0, int layer_end);
/* The forward pass outside the routed and shared experts runs on n device backends dev[] from now on, stage k over
 * layers up to stage_end[k] (increasing, the last = num_hidden_layers): the weights are copied into the devices'
 * memory and m->fwd names the copies. n = 0: back to the cpu backend and the model's own weights, the copies freed
 * (before the devices are destroyed). Refused with the sizes when a device's free memory is too small;
 * DSM_EUNSUPPORTED for an embedding table that is not F32 or BF16. */
int dsm_model_to_devices(struct dsm_model *m, struct dsm_backend *const *dev, const int *stage_end, int n);

/* Threads the backend runs; *bound: 1 when each is bound to its own physical core. */
int dsm_model_threads(const struct dsm_model *m, int *bound);
/* Chooses the decode kernels' memory walks for this host: the FP8 kernel's on the routed experts of the first
 * MoE layers (dsm_cpu_gemv_tune), the BF16 kernel's on the head (dsm_cpu_bf16_gemv_tune). Both must be in
 * memory (read in) and no longer in cache. A result's `rounds` is 0 when its kernel was not measured (no
 * variants, too few bytes to measure on, the head on a device); its `why` says why. Returns 0 or DSM_ENOMEM. */
struct dsm_gemv_tune_result;
int dsm_model_tune_kernels(struct dsm_model *m, struct dsm_gemv_tune_result *fp8, struct dsm_gemv_tune_result *head);
/* Bytes of the shard files mapped, and of weights copied into memory (norms, realigned tensors); of the mapped,
 * bytes read into huge pages of their own (anonymous memory). */
void dsm_model_memory(const struct dsm_model *m, uint64_t *mapped, uint64_t *copied, uint64_t *huge);

#endif
