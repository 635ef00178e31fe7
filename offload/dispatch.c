#include "dispatch.h"

#include "error.h"
#include "pool.h"
#include "topo.h"
#include "trace.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

struct expert_info {
	const struct dsm_store_expert *src;        /* its tensors in the shard files (and mapped) */
	const float *scale[DSM_EXPERT_NPROJ];      /* block scales in host memory (NULL for BF16 or F32 weights):
						    * the mapped ones for the mapped tier, else resident copies */
	struct dsm_tier tier;
	const uint8_t *host[DSM_EXPERT_NPROJ];     /* mapped and dram tiers (and gpu tier without device memory) */
	void *dev[DSM_EXPERT_NPROJ];               /* gpu tier: weights in device memory */
	void *dev_scale[DSM_EXPERT_NPROJ];
	struct dsm_stream_range r[DSM_EXPERT_NPROJ];
};

struct shared_dev {
	int set, on_gpu;
	struct dsm_ffn_weights w;                 /* its weights: on the device when on_gpu, else the caller's */
	void *dev[DSM_EXPERT_NPROJ];              /* device copies of the weights and scales */
	void *dev_scale[DSM_EXPERT_NPROJ];
};

/* One GPU of the store (gpu:N of the plan). */
struct gpu_dev {
	struct dsm_backend *be;
	struct dsm_queue *q;      /* NULL: the backend has no queues (its calls are synchronous) */
	struct dsm_event *ev_start, *ev_done;
	unsigned char *slab;      /* one allocation holding every expert of this GPU (weights and scales) */
	size_t slab_used;
	float *x, *y;             /* [rows, dim] the step's rows of this GPU's experts, on it */
	size_t rows;
	int pending;              /* its part of the step was submitted and not waited for */
};

struct slot_info {
	struct dsm_stream_job job;
	int in_flight;            /* read submitted, completion not handled yet */
	int prefetch_ref;         /* a prefetch holds a cache reference until its read ends */
	int waiter;               /* step expert waiting for this slot, -1 */
};

enum { TODO, WAITING, READY, DONE, ON_GPU };

struct dsm_offload {
	const struct dsm_store_model *m;
	struct dsm_offload_opts o;
	int n_layers, first_moe, n_experts, top_k;
	int64_t dim;
	struct expert_info *ex;   /* [n_layers * n_experts] */
	uint64_t n_tier[DSM_TIER_KINDS]; /* experts held per tier kind */
	float *scales;            /* resident block scales of the experts not mapped */
	struct dsm_stream *st;    /* NULL when every expert is mapped: nothing is ever read */
	struct dsm_topo *topo;
	int own_topo;
	int n_nodes;
	struct dsm_pool **resident; /* [n_nodes] the DRAM-tier experts of dram:N, bound to node N (NULL: none) */
	unsigned *node_experts;   /* [n_nodes] DRAM-tier experts per node */
	struct dsm_pool *cache_pool;
	struct dsm_cache *cache;
	struct slot_info *slots;
	char warnings[2048];
	int pool_warned;          /* a pool's pinning warning was added (they all say the same) */
	struct dsm_offload_stats stats;
	uint64_t stream_bytes0, stream_dev0; /* streamer counters at the end of open */
	double stream_busy0;
	/* Step scratch. */
	size_t cap_rows;
	int32_t *row_tok;         /* [R] token of each expert-major row */
	float *row_w;             /* [R] its weight */
	float *X, *Y;             /* [R, dim] gathered inputs and expert outputs */
	int32_t *first, *count, *fill; /* [n_experts] */
	int32_t *need;            /* [n_experts] experts of the step, ascending */
	int *state, *slot_of;     /* [n_experts] per need[] entry */
	struct dsm_ffn_weights *host_w;          /* [n_experts] a host step's experts, for the moe op */
	const struct dsm_ffn_weights **host_wp;  /* [n_experts] &host_w[x] for the step's experts, else NULL */
	int pinned_rows;          /* X and Y come from gpu:0's host_alloc */
	/* The GPUs' part of a step: each GPU's experts run on its queue while the CPU computes the others. */
	struct gpu_dev gpu[DSM_MAX_GPUS];
	int n_gpus;
	/* The shared expert of each MoE layer (dsm_offload_set_shared), on the GPU where the plan puts it. */
	struct shared_dev *shared;/* [n_layers], NULL: none set */
	int shared_to_gpu;        /* the plan puts the shared experts on the GPU, and there is one */
	float *shared_x, *shared_y; /* [cap_tokens, dim] its input and output in host memory (pinned with a GPU) */
	size_t cap_tokens;
	float *dev_sx, *dev_sy;   /* [dev_tokens, dim] its input and output on the device */
	size_t dev_tokens;
	/* A DRAM expert with at least upload_min tokens in a step is copied to the GPU (into the staging slot) and
	 * computed there (0: never). */
	int64_t upload_min;
	void *stage[DSM_EXPERT_NPROJ], *stage_scale[DSM_EXPERT_NPROJ];
	/* Look-ahead. */
	struct dsm_mat *router;   /* [n_layers] gate of each MoE layer (data NULL: not set) */
	const float **router_bias;/* [n_layers] */
	int lookahead_tokens;
	float *la_logits;         /* [lookahead_tokens, n_experts] */
	int32_t *la_idx;          /* [lookahead_tokens, top_k] */
	float *la_w;
};

#define STAGING_BYTES (1ull << 30) /* DRAM that stages the GPU tier's experts on their way to the device */

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static struct expert_info *info(struct dsm_offload *o, int layer, int expert)
{
	return &o->ex[(size_t)layer * (size_t)o->n_experts + (size_t)expert];
}

/* The step's gathered rows: pinned host memory when a GPU copies them, so that its copies run at full speed
 * and asynchronously. */
static float *alloc_rows(struct dsm_offload *o, size_t bytes)
{
	struct dsm_backend *g = o->gpu[0].be;
	return o->pinned_rows ? g->host_alloc(g, bytes) : malloc(bytes);
}

static void free_rows(struct dsm_offload *o, float *p)
{
	struct dsm_backend *g = o->gpu[0].be;
	if (p && o->pinned_rows)
		g->host_free(g, p);
	else
		free(p);
}

static void make_weights(const struct expert_info *e, const void *const data[DSM_EXPERT_NPROJ],
			 const float *const scale[DSM_EXPERT_NPROJ], struct dsm_ffn_weights *w)
{
	struct dsm_mat *m[DSM_EXPERT_NPROJ] = { &w->gate, &w->up, &w->down };
	for (int i = 0; i < DSM_EXPERT_NPROJ; i++) {
		const struct dsm_store_tensor *t = &e->src->w[i];
		*m[i] = (struct dsm_mat){ .dtype = t->dtype, .rows = t->rows, .cols = t->cols, .row0 = 0, .data = data[i],
			.scale = scale[i] };
	}
	w->numa_home = 0;
}

/* Whether the dram:node experts' memory is really bound to that node. */
static int node_bound(const struct dsm_offload *o, int node)
{
	return o->resident[node] && o->resident[node]->bound;
}

/* The weights of an expert held in host memory; one of dram:N bound to node N is computed by node N's cores
 * alone, from their local memory. */
static void host_weights(const struct dsm_offload *o, const struct expert_info *e, struct dsm_ffn_weights *w)
{
	make_weights(e, (const void *const *)e->host, e->scale, w);
	if (e->tier.kind == DSM_TIER_DRAM && node_bound(o, e->tier.index))
		w->numa_home = e->tier.index + 1;
}

/* Reads the experts of tier `kind` (for dram, those of node `node` only), from the first-th of them (in layer
 * and expert order) on, into consecutive slots of pool, starting at slot 0, as many as it has slots, and sets
 * their host pointers. Returns the count read or a negative code. */
static int load_resident(struct dsm_offload *o, struct dsm_pool *pool, int kind, int node, uint64_t first)
{
	unsigned slot = 0;
	uint64_t ordinal = 0;
	int rc = 0;
	struct dsm_stream_job *jobs = calloc(pool->n_slots ? pool->n_slots : 1, sizeof *jobs);
	if (!jobs)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int l = o->first_moe; l < o->n_layers && rc == 0; l++)
		for (int x = 0; x < o->n_experts && rc == 0; x++) {
			struct expert_info *e = info(o, l, x);
			if (e->tier.kind != kind || (kind == DSM_TIER_DRAM && e->tier.index != node) || ordinal++ < first ||
			    slot == pool->n_slots)
				continue;
			if ((rc = dsm_stream_job_init(o->st, &jobs[slot], e->r, DSM_EXPERT_NPROJ, dsm_pool_slot(pool, slot),
						      pool->slot_bytes, dsm_stream_pool_index(o->st, pool, slot))) == 0)
				rc = dsm_stream_submit(o->st, &jobs[slot]);
			jobs[slot].user = (uint64_t)((size_t)l * (size_t)o->n_experts + (size_t)x);
			slot++;
		}
	for (unsigned i = 0; i < slot; i++) {
		int r = dsm_stream_wait(o->st, &jobs[i]);
		if (r < 0 && rc == 0)
			rc = r;
		if (r == 0) {
			struct expert_info *e = &o->ex[jobs[i].user];
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
				e->host[j] = jobs[i].data[j];
		}
	}
	free(jobs);
	return rc < 0 ? rc : (int)slot;
}

#define ROUND256(n) (((size_t)(n) + 255) & ~(size_t)255)

/* One device allocation per GPU for all its experts (a real model puts tens of thousands of tensors on a GPU:
 * one cudaMalloc each would be slow to open and to free). Refused with the sizes when the device is full. */
static int alloc_slabs(struct dsm_offload *o)
{
	size_t bytes[DSM_MAX_GPUS] = { 0 }, n[DSM_MAX_GPUS] = { 0 };
	for (int l = o->first_moe; l < o->n_layers; l++)
		for (int x = 0; x < o->n_experts; x++) {
			struct expert_info *e = info(o, l, x);
			if (e->tier.kind != DSM_TIER_GPU)
				continue;
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
				bytes[e->tier.index] += ROUND256(e->src->w[j].nbytes) + ROUND256(e->src->scale[j].nbytes);
			n[e->tier.index]++;
		}
	for (int i = 0; i < o->n_gpus; i++) {
		struct dsm_backend *g = o->gpu[i].be;
		size_t free_bytes = 0, total = 0;
		if (!bytes[i] || (o->gpu[i].slab = g->alloc(g, bytes[i])))
			continue;
		if (g->mem_info)
			g->mem_info(g, &free_bytes, &total);
		return dsm_fail(DSM_ENOMEM, "%s: device memory exhausted: the plan puts %zu experts (%zu bytes) on gpu:%d, "
				"which has %zu of %zu bytes free", g->name, n[i], bytes[i], i, free_bytes, total);
	}
	return 0;
}

/* Uploads the gpu-tier experts that load_resident just read into host memory (those with host pointers) to
 * their GPU's slab, and forgets their host copies. */
static int upload_gpu(struct dsm_offload *o)
{
	for (int l = o->first_moe; l < o->n_layers; l++)
		for (int x = 0; x < o->n_experts; x++) {
			struct expert_info *e = info(o, l, x);
			if (e->tier.kind != DSM_TIER_GPU || !e->host[0])
				continue;
			struct gpu_dev *d = &o->gpu[e->tier.index];
			struct dsm_backend *g = d->be;
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
				size_t nb = (size_t)e->src->w[j].nbytes, sb = (size_t)e->src->scale[j].nbytes;
				e->dev[j] = d->slab + d->slab_used;
				d->slab_used += ROUND256(nb);
				if (sb) {
					e->dev_scale[j] = d->slab + d->slab_used;
					d->slab_used += ROUND256(sb);
				}
				int rc = g->copy_in(g, e->dev[j], e->host[j], nb);
				if (rc == 0 && sb)
					rc = g->copy_in(g, e->dev_scale[j], e->scale[j], sb);
				if (rc < 0)
					return rc;
			}
			memset(e->host, 0, sizeof e->host);
			o->stats.resident_bytes[DSM_TIER_GPU] += e->src->w[0].nbytes + e->src->w[1].nbytes + e->src->w[2].nbytes;
		}
	for (int i = 0; i < o->n_gpus; i++) {
		struct dsm_backend *g = o->gpu[i].be;
		int rc = g->sync ? g->sync(g) : 0;
		if (rc < 0)
			return rc;
	}
	return 0;
}

static void add_warning(struct dsm_offload *o, const char *w)
{
	size_t used = strlen(o->warnings);
	if (w && *w)
		snprintf(o->warnings + used, sizeof o->warnings - used, "%s%s", w, w[strlen(w) - 1] == '\n' ? "" : "\n");
}

static void add_pool_warning(struct dsm_offload *o, const struct dsm_pool *p)
{
	if (p->warning[0] && !o->pool_warned) {
		add_warning(o, p->warning);
		o->pool_warned = 1;
	}
}

/* Reads the small tensor t (a block scale) into dst: copied from where the caller mapped it, else read from its
 * shard file (fds[shard]: opened on first use, -1 until then). */
static int read_small(const struct dsm_store_model *m, const struct dsm_store_tensor *t, int *fds, void *dst)
{
	if (t->mapped) {
		memcpy(dst, t->mapped, (size_t)t->nbytes);
		return 0;
	}
	const char *path = m->shards[t->shard];
	if (fds[t->shard] < 0 && (fds[t->shard] = open(path, O_RDONLY | O_CLOEXEC)) < 0)
		return dsm_fail(DSM_EIO, "%s: cannot open: %s", path, strerror(errno));
	for (uint64_t done = 0; done < t->nbytes;) {
		ssize_t r = pread(fds[t->shard], (char *)dst + done, (size_t)(t->nbytes - done), (off_t)(t->offset + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return dsm_fail(DSM_EIO, "%s: tensor '%s': read of %llu bytes at offset %llu failed: %s", path, t->name,
					(unsigned long long)(t->nbytes - done), (unsigned long long)(t->offset + done),
					strerror(errno));
		if (r == 0)
			return dsm_fail(DSM_ETRUNCATED, "%s: tensor '%s': the file ends at offset %llu, inside the tensor", path,
					t->name, (unsigned long long)(t->offset + done));
		done += (uint64_t)r;
	}
	return 0;
}

/* The scales of every expert in host memory: in place for the mapped tier, else copied into one resident
 * allocation (they are small and every tier needs them at once). */
static int load_scales(struct dsm_offload *o)
{
	uint64_t bytes = 0;
	for (int l = o->first_moe; l < o->n_layers; l++)
		for (int x = 0; x < o->n_experts; x++) {
			const struct expert_info *e = info(o, l, x);
			for (int j = 0; j < DSM_EXPERT_NPROJ && e->tier.kind != DSM_TIER_MAPPED; j++)
				bytes += e->src->scale[j].nbytes;
		}
	if (bytes && !(o->scales = malloc((size_t)bytes)))
		return dsm_fail(DSM_ENOMEM, "offload: out of memory for %llu bytes of block scales",
				(unsigned long long)bytes);
	int *fds = malloc(sizeof(int) * (size_t)(o->m->n_shards > 0 ? o->m->n_shards : 1));
	if (!fds)
		return dsm_fail(DSM_ENOMEM, "offload: out of memory");
	for (int i = 0; i < o->m->n_shards; i++)
		fds[i] = -1;
	uint64_t at = 0;
	int rc = 0;
	for (int l = o->first_moe; l < o->n_layers && rc == 0; l++)
		for (int x = 0; x < o->n_experts && rc == 0; x++) {
			struct expert_info *e = info(o, l, x);
			for (int j = 0; j < DSM_EXPERT_NPROJ && rc == 0; j++) {
				const struct dsm_store_tensor *s = &e->src->scale[j];
				if (!s->nbytes)
					continue;
				if (e->tier.kind == DSM_TIER_MAPPED) {
					e->scale[j] = s->mapped;
					continue;
				}
				float *dst = (float *)((char *)o->scales + at);
				if ((rc = read_small(o->m, s, fds, dst)) == 0)
					e->scale[j] = dst;
				at += s->nbytes;
			}
		}
	for (int i = 0; i < o->m->n_shards; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	free(fds);
	return rc;
}

/* The mapped tier computes an expert where the caller mapped it: every tensor must have an address. */
static int check_mapped(const struct dsm_offload *o, int layer, int expert, const struct dsm_store_expert *e)
{
	for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
		const struct dsm_store_tensor *w = &e->w[j], *s = &e->scale[j];
		if (w->mapped && (!s->nbytes || s->mapped))
			continue;
		return dsm_fail(DSM_EARG, "%s: layer %d expert %d is on the mapped tier but tensor '%s' is not mapped",
				o->m->source, layer, expert, w->mapped ? s->name : w->name);
	}
	return 0;
}

static int upload_threshold(struct dsm_offload *o);

int dsm_offload_open(struct dsm_offload **out, const struct dsm_store_model *m, const struct dsm_offload_opts *opt)
{
	*out = NULL;
	const struct dsm_moe_shape *c = &m->shape;
	const struct dsm_plan *p = opt->plan;
	if (!opt->cpu)
		return dsm_fail(DSM_EARG, "offload: a cpu backend is required");
	if (p && (p->n_layers != c->n_layers || p->first_moe != c->first_moe || p->n_experts != c->n_experts ||
		  p->hidden_size != c->hidden_size))
		return dsm_fail(DSM_EPLAN, "%s: the placement plan is for another model (%d layers, MoE from %d, %d experts, "
				"hidden %d)", m->source, p->n_layers, p->first_moe, p->n_experts, p->hidden_size);
	if (c->n_layers < 0 || c->n_experts < 0 || c->first_moe < 0)
		return dsm_fail(DSM_EARG, "%s: %d layers, MoE from %d, %d experts", m->source, c->n_layers, c->first_moe,
				c->n_experts);
	struct dsm_offload *o = calloc(1, sizeof *o);
	if (!o)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	o->m = m;
	o->o = *opt;
	/* The GPUs: gpu[0 .. n) with device memory, without gaps. */
	while (o->n_gpus < DSM_MAX_GPUS && opt->gpu[o->n_gpus] && opt->gpu[o->n_gpus]->alloc) {
		o->gpu[o->n_gpus].be = opt->gpu[o->n_gpus];
		o->n_gpus++;
	}
	o->n_layers = c->n_layers;
	o->first_moe = c->first_moe;
	o->n_experts = c->n_experts;
	o->top_k = c->top_k;
	o->dim = c->hidden_size;
	int rc = DSM_ENOMEM;
	size_t n_keys = (size_t)o->n_layers * (size_t)o->n_experts, E1 = (size_t)o->n_experts + 1;
	o->ex = calloc(n_keys + 1, sizeof *o->ex);
	o->first = calloc(E1, sizeof *o->first);
	o->count = calloc(E1, sizeof *o->count);
	o->fill = calloc(E1, sizeof *o->fill);
	o->need = calloc(E1, sizeof *o->need);
	o->state = calloc(E1, sizeof *o->state);
	o->slot_of = calloc(E1, sizeof *o->slot_of);
	o->host_w = calloc(E1, sizeof *o->host_w);
	o->host_wp = calloc(E1, sizeof *o->host_wp);
	o->router = calloc((size_t)o->n_layers + 1, sizeof *o->router);
	o->router_bias = calloc((size_t)o->n_layers + 1, sizeof *o->router_bias);
	if (!o->ex || !o->first || !o->count || !o->fill || !o->need || !o->state || !o->slot_of || !o->host_w ||
	    !o->host_wp || !o->router || !o->router_bias)
		goto nomem;
	o->lookahead_tokens = 1;

	/* The NUMA nodes a plan's dram:N tiers name. */
	const char *machine = "";
	if (p) {
		if (opt->topo) {
			o->topo = opt->topo;
		} else {
			if ((rc = dsm_topo_open(&o->topo, NULL)) < 0)
				goto err;
			o->own_topo = 1;
		}
		o->n_nodes = dsm_topo_n_nodes(o->topo);
		machine = dsm_topo_is_this_system(o->topo) ? "this machine has" : "the topology has";
		for (int k = 0; k < DSM_KIND_COUNT; k++)
			if (p->non_expert[k].kind == DSM_TIER_DRAM && p->non_expert[k].index >= o->n_nodes) {
				rc = dsm_fail(DSM_EPLAN, "plan puts non-expert weights on dram:%d but %s %d NUMA node%s",
					      p->non_expert[k].index, machine, o->n_nodes, o->n_nodes == 1 ? "" : "s");
				goto err;
			}
	}
	o->resident = calloc((size_t)o->n_nodes + 1, sizeof *o->resident);
	o->node_experts = calloc((size_t)o->n_nodes + 1, sizeof *o->node_experts);
	if (!o->resident || !o->node_experts)
		goto nomem;

	/* Tiers and byte ranges; the scales in host memory. */
	rc = 0;
	for (int l = o->first_moe; l < o->n_layers; l++)
		for (int x = 0; x < o->n_experts; x++) {
			struct expert_info *e = info(o, l, x);
			e->src = dsm_store_expert(m, l, x);
			e->tier = p ? dsm_plan_expert_tier(p, l, x) : (struct dsm_tier){ DSM_TIER_MAPPED, 0 };
			if (e->tier.kind == DSM_TIER_GPU && !o->n_gpus)
				e->tier = (struct dsm_tier){ DSM_TIER_DRAM, 0 }; /* computed by the cpu from DRAM */
			if (e->tier.kind == DSM_TIER_GPU && e->tier.index >= o->n_gpus)
				rc = dsm_fail(DSM_EPLAN, "plan puts layer %d expert %d on gpu:%d but %d %s GPU%s in use (--gpus)", l,
					      x, e->tier.index, o->n_gpus, o->gpu[0].be->name, o->n_gpus == 1 ? " is" : "s are");
			if (e->tier.kind == DSM_TIER_DRAM && e->tier.index >= o->n_nodes)
				rc = dsm_fail(DSM_EPLAN, "plan puts layer %d expert %d on dram:%d but %s %d NUMA node%s", l, x,
					      e->tier.index, machine, o->n_nodes, o->n_nodes == 1 ? "" : "s");
			if (e->tier.kind == DSM_TIER_MAPPED && (rc = check_mapped(o, l, x, e->src)) == 0)
				for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
					e->host[j] = e->src->w[j].mapped;
			if (rc < 0)
				goto err;
			o->n_tier[e->tier.kind]++;
			if (e->tier.kind == DSM_TIER_DRAM)
				o->node_experts[e->tier.index]++;
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++)
				e->r[j] = (struct dsm_stream_range){ .file = e->src->w[j].shard, .offset = e->src->w[j].offset,
					.nbytes = e->src->w[j].nbytes, .name = e->src->w[j].name };
		}
	if ((rc = load_scales(o)) < 0)
		goto err;
	if (!o->n_tier[DSM_TIER_NVME] && !o->n_tier[DSM_TIER_DRAM] && !o->n_tier[DSM_TIER_GPU]) {
		*out = o; /* every expert mapped: nothing to read, ever */
		return 0;
	}

	rc = dsm_stream_open(&o->st, m->shards, m->n_shards, &opt->stream);
	if (rc < 0)
		goto err;
	size_t slot_bytes = 0;
	for (int l = o->first_moe; l < o->n_layers; l++)
		for (int x = 0; x < o->n_experts; x++) {
			size_t b = dsm_stream_job_bytes(o->st, info(o, l, x)->r, DSM_EXPERT_NPROJ);
			slot_bytes = b > slot_bytes ? b : slot_bytes;
		}
	if (slot_bytes == 0)
		slot_bytes = 4096;

	/* Resident experts: those of each dram:N in one allocation bound to node N. */
	for (int j = 0; j < o->n_nodes; j++) {
		if (!o->node_experts[j])
			continue;
		struct dsm_pool *pool;
		if ((rc = dsm_pool_init_node(&pool, slot_bytes, o->node_experts[j], opt->pool_flags, opt->stream.io, o->topo,
					     j)) < 0)
			goto err;
		o->resident[j] = pool;
		add_pool_warning(o, pool);
		/* On one node binding changes nothing, so a refusal is worth a warning only with several. */
		if (pool->bind_error[0] && o->n_nodes > 1) {
			char w[256];
			snprintf(w, sizeof w, "dram:%d experts stay unbound: %s", j, pool->bind_error);
			add_warning(o, w);
		}
		/* Read once at open: no fixed buffers (io_uring takes one set, kept for the cache's slots). */
		if ((rc = load_resident(o, pool, DSM_TIER_DRAM, j, 0)) < 0)
			goto err;
		o->stats.resident_bytes[DSM_TIER_DRAM] += (uint64_t)o->node_experts[j] * slot_bytes;
	}
	/* The GPU tier, staged through DRAM for the upload, a batch of experts at a time; the staging is freed once
	 * uploaded. */
	if (o->n_tier[DSM_TIER_GPU]) {
		uint64_t staging_bytes = opt->staging_bytes ? opt->staging_bytes : STAGING_BYTES;
		uint64_t batch = staging_bytes / slot_bytes ? staging_bytes / slot_bytes : 1;
		if (batch > o->n_tier[DSM_TIER_GPU])
			batch = o->n_tier[DSM_TIER_GPU];
		struct dsm_pool *staging;
		if ((rc = dsm_pool_init(&staging, slot_bytes, (unsigned)batch, opt->pool_flags | DSM_POOL_NO_LOCK,
					opt->stream.io)) < 0)
			goto err;
		if ((rc = alloc_slabs(o)) < 0) {
			dsm_pool_free(staging);
			goto err;
		}
		for (uint64_t done = 0; done < o->n_tier[DSM_TIER_GPU] && rc >= 0; done += batch)
			if ((rc = load_resident(o, staging, DSM_TIER_GPU, 0, done)) >= 0)
				rc = upload_gpu(o);
		dsm_pool_free(staging);
		if (rc < 0)
			goto err;
	}
	/* Each GPU's queue for the hybrid step; gpu:0 holds the shared experts and the staging slot of the DRAM
	 * experts a batch makes worth copying. */
	for (int i = 0; i < o->n_gpus; i++) {
		struct gpu_dev *d = &o->gpu[i];
		struct dsm_backend *g = d->be;
		if (g->queue_create && ((rc = g->queue_create(g, &d->q)) < 0 || (rc = g->event_create(g, &d->ev_start)) < 0 ||
					(rc = g->event_create(g, &d->ev_done)) < 0))
			goto err;
	}
	if (o->n_gpus) {
		struct dsm_backend *g = o->gpu[0].be;
		o->pinned_rows = g->host_alloc && g->host_free;
		o->shared_to_gpu = p && p->non_expert[DSM_KIND_SHARED].kind == DSM_TIER_GPU;
		if (o->n_tier[DSM_TIER_DRAM] && opt->gpu_upload_tokens >= 0 && (rc = upload_threshold(o)) < 0)
			goto err;
	}

	/* The expert cache for streamed experts. */
	if (o->n_tier[DSM_TIER_NVME]) {
		uint64_t min_slots = 2u * (unsigned)(o->top_k > 0 ? o->top_k : 1);
		uint64_t n_slots = opt->cache_bytes / slot_bytes;
		if (n_slots < min_slots)
			n_slots = min_slots;
		if (n_slots > o->n_tier[DSM_TIER_NVME] + min_slots)
			n_slots = o->n_tier[DSM_TIER_NVME] + min_slots;
		/* Pinned policy: every slot but the working area of one step and one look-ahead layer (2 x top_k)
		 * holds a pinned expert; an lru area smaller than one token's experts would only thrash. */
		unsigned n_pinned = n_slots > 2 * min_slots ? (unsigned)(n_slots - min_slots) : (unsigned)(n_slots / 2);
		struct dsm_cache_opts co = { .policy = opt->policy, .n_slots = (unsigned)n_slots, .n_pinned = n_pinned,
			.keep = !opt->cache_off };
		if ((rc = dsm_cache_new(&o->cache, o->n_layers, o->n_experts, &co)) < 0)
			goto err;
		if (opt->hotness && (rc = dsm_cache_set_hotness(o->cache, opt->hotness)) < 0)
			goto err;
		if ((rc = dsm_pool_init(&o->cache_pool, slot_bytes, (unsigned)n_slots, opt->pool_flags, opt->stream.io)) < 0)
			goto err;
		add_pool_warning(o, o->cache_pool);
		if ((rc = dsm_stream_register_pool(o->st, o->cache_pool)) < 0)
			goto err;
		if (!(o->slots = calloc((size_t)n_slots, sizeof *o->slots)))
			goto nomem;
		for (unsigned i = 0; i < n_slots; i++)
			o->slots[i].waiter = -1;
		o->stats.resident_bytes[DSM_TIER_NVME] = n_slots * slot_bytes;
	}
	struct dsm_stream_stats ss;
	dsm_stream_get_stats(o->st, &ss);
	o->stream_bytes0 = ss.bytes_wanted;
	o->stream_dev0 = ss.bytes_read;
	o->stream_busy0 = ss.busy_seconds;
	*out = o;
	return 0;
nomem:
	rc = dsm_fail(DSM_ENOMEM, "offload: out of memory");
err:
	dsm_offload_close(o);
	return rc;
}

void dsm_offload_close(struct dsm_offload *o)
{
	if (!o)
		return;
	dsm_stream_close(o->st);
	for (int i = 0; i < o->n_gpus; i++) {
		struct gpu_dev *d = &o->gpu[i];
		struct dsm_backend *g = d->be;
		if (g->queue_create) {
			g->queue_destroy(g, d->q); /* waits for its work */
			if (d->ev_start)
				g->event_destroy(g, d->ev_start);
			if (d->ev_done)
				g->event_destroy(g, d->ev_done);
		}
		g->free(g, d->x);
		g->free(g, d->y);
		g->free(g, d->slab);
	}
	if (o->n_gpus) {
		struct dsm_backend *g = o->gpu[0].be;
		for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
			g->free(g, o->stage[j]);
			g->free(g, o->stage_scale[j]);
		}
		g->free(g, o->dev_sx);
		g->free(g, o->dev_sy);
		for (int l = 0; o->shared && l < o->n_layers; l++)
			for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
				g->free(g, o->shared[l].dev[j]);
				g->free(g, o->shared[l].dev_scale[j]);
			}
	}
	free(o->shared);
	free_rows(o, o->shared_x);
	free_rows(o, o->shared_y);
	for (int j = 0; o->resident && j < o->n_nodes; j++)
		dsm_pool_free(o->resident[j]);
	free(o->resident);
	free(o->node_experts);
	dsm_pool_free(o->cache_pool);
	dsm_cache_free(o->cache);
	free(o->slots);
	free(o->ex);
	free(o->scales);
	free(o->row_tok);
	free(o->row_w);
	free_rows(o, o->X);
	free_rows(o, o->Y);
	free(o->first);
	free(o->count);
	free(o->fill);
	free(o->need);
	free(o->state);
	free(o->slot_of);
	free(o->host_w);
	free(o->host_wp);
	free(o->router);
	free(o->router_bias);
	free(o->la_logits);
	free(o->la_idx);
	free(o->la_w);
	if (o->own_topo)
		dsm_topo_close(o->topo);
	free(o);
}

const char *dsm_offload_warnings(const struct dsm_offload *o)
{
	static _Thread_local char buf[3072];
	snprintf(buf, sizeof buf, "%s%s", o->warnings, o->st ? dsm_stream_warnings(o->st) : "");
	return buf;
}

/* Starts the read of expert (layer, x) into cache slot `slot`. */
static int submit_read(struct dsm_offload *o, int layer, int x, int slot)
{
	struct slot_info *si = &o->slots[slot];
	struct expert_info *e = info(o, layer, x);
	int rc = dsm_stream_job_init(o->st, &si->job, e->r, DSM_EXPERT_NPROJ, dsm_pool_slot(o->cache_pool, (unsigned)slot),
				     o->cache_pool->slot_bytes, dsm_stream_pool_index(o->st, o->cache_pool, (unsigned)slot));
	if (rc == 0)
		rc = dsm_stream_submit(o->st, &si->job);
	if (rc < 0) {
		dsm_cache_loaded(o->cache, slot, 0);
		return rc;
	}
	si->job.user = (uint64_t)slot;
	si->in_flight = 1;
	return 0;
}

/* Waits for one read and settles its slot. *slot_out: the slot (or -1). Returns 0, or the read's error when
 * a step expert waits for it (message set). */
static int reap_one(struct dsm_offload *o, int *slot_out)
{
	struct dsm_stream_job *job;
	*slot_out = -1;
	double t0 = now();
	int r = dsm_stream_wait_any(o->st, &job);
	o->stats.io_wait_seconds += now() - t0;
	if (r < 0)
		return r;
	if (r == 0)
		return dsm_fail(DSM_EIO, "offload: waiting for expert bytes, but no read is in flight");
	int slot = (int)job->user;
	struct slot_info *si = &o->slots[slot];
	si->in_flight = 0;
	int ok = job->status == 0;
	dsm_cache_loaded(o->cache, slot, ok);
	if (si->prefetch_ref) {
		si->prefetch_ref = 0;
		dsm_cache_release(o->cache, slot);
	}
	*slot_out = slot;
	if (!ok && si->waiter >= 0)
		return dsm_fail(job->status, "%s", job->error);
	return 0;
}

static int ensure_rows(struct dsm_offload *o, size_t rows)
{
	if (rows <= o->cap_rows)
		return 0;
	size_t d = (size_t)o->dim;
	if (rows > SIZE_MAX / sizeof(float) / d)
		return dsm_fail(DSM_EARG, "offload: step too large");
	int32_t *t = realloc(o->row_tok, rows * sizeof *t);
	if (t)
		o->row_tok = t;
	float *w = realloc(o->row_w, rows * sizeof *w);
	if (w)
		o->row_w = w;
	/* X and Y need not keep their contents: every step fills them anew. */
	free_rows(o, o->X);
	free_rows(o, o->Y);
	float *x = o->X = alloc_rows(o, rows * d * sizeof *x);
	float *y = o->Y = alloc_rows(o, rows * d * sizeof *y);
	if (!t || !w || !x || !y)
		return dsm_fail(DSM_ENOMEM, "offload: out of memory for a step of %zu expert rows", rows);
	o->cap_rows = rows;
	return 0;
}

/* The shared expert's host buffers for `tokens` tokens. */
static int ensure_tokens(struct dsm_offload *o, size_t tokens)
{
	if (tokens <= o->cap_tokens)
		return 0;
	size_t bytes = tokens * (size_t)o->dim * sizeof(float);
	free_rows(o, o->shared_x);
	free_rows(o, o->shared_y);
	o->shared_x = alloc_rows(o, bytes);
	o->shared_y = alloc_rows(o, bytes);
	o->cap_tokens = o->shared_x && o->shared_y ? tokens : 0;
	if (!o->cap_tokens)
		return dsm_fail(DSM_ENOMEM, "offload: out of memory for the shared expert of %zu tokens", tokens);
	return 0;
}

/* Runs step expert m (need[m]), held in host memory, on the cpu backend. */
static int compute(struct dsm_offload *o, int layer, int m)
{
	int x = o->need[m];
	struct expert_info *e = info(o, layer, x);
	int64_t n = o->count[x];
	const float *in = o->X + (size_t)o->first[x] * (size_t)o->dim;
	float *outp = o->Y + (size_t)o->first[x] * (size_t)o->dim;
	struct dsm_ffn_weights w;
	double t0 = now();
	if (e->tier.kind == DSM_TIER_NVME) {
		const struct dsm_stream_job *job = &o->slots[o->slot_of[m]].job;
		make_weights(e, (const void *const *)job->data, e->scale, &w);
	} else {
		host_weights(o, e, &w);
	}
	int rc = o->o.cpu->ffn(o->o.cpu, &w, n, in, outp);
	if (rc < 0)
		return rc;
	o->stats.cpu_expert_seconds += now() - t0;
	o->stats.expert_runs[e->tier.kind]++;
	if (e->tier.kind == DSM_TIER_NVME) {
		o->slots[o->slot_of[m]].waiter = -1;
		dsm_cache_release(o->cache, o->slot_of[m]);
		o->slot_of[m] = -1;
	}
	o->state[m] = DONE;
	return 0;
}

/* Takes cache references for the TODO experts of the step while slots last; submits the misses. Returns
 * how many changed state, or a negative code. */
static int acquire_pass(struct dsm_offload *o, int layer, int n_need, int steal)
{
	int changed = 0;
	for (int m = 0; m < n_need; m++) {
		if (o->state[m] != TODO)
			continue;
		int x = o->need[m];
		if (info(o, layer, x)->tier.kind != DSM_TIER_NVME) {
			o->state[m] = READY;
			changed++;
			continue;
		}
		int slot;
		int r = dsm_cache_acquire(o->cache, layer, x, steal ? DSM_CACHE_STEAL : 0, &slot);
		if (r < 0)
			return r;
		if (r == DSM_CACHE_FULL)
			break;
		o->slot_of[m] = slot;
		o->slots[slot].waiter = m;
		changed++;
		if (r == DSM_CACHE_HIT) {
			o->state[m] = READY;
		} else if (r == DSM_CACHE_PENDING) {
			o->state[m] = WAITING;
		} else {
			o->state[m] = WAITING;
			int rc = submit_read(o, layer, x, slot);
			if (rc < 0) {
				o->slots[slot].waiter = -1;
				dsm_cache_release(o->cache, slot);
				o->slot_of[m] = -1;
				return rc;
			}
		}
	}
	return changed;
}

/* Applies the router of layer + 1 to the step's input and prefetches the experts it picks. */
static int lookahead(struct dsm_offload *o, const struct dsm_moe_step *s)
{
	int next = s->layer + 1;
	if (!o->cache || next >= o->n_layers || !o->router[next].data || s->n_tokens <= 0 ||
	    s->n_tokens > o->lookahead_tokens)
		return 0;
	const struct dsm_moe_shape *c = &o->m->shape;
	int64_t T = s->n_tokens;
	if (!o->la_logits) {
		o->la_logits = malloc(sizeof(float) * (size_t)o->lookahead_tokens * (size_t)o->n_experts);
		o->la_idx = malloc(sizeof(int32_t) * (size_t)o->lookahead_tokens * (size_t)o->top_k);
		o->la_w = malloc(sizeof(float) * (size_t)o->lookahead_tokens * (size_t)o->top_k);
		if (!o->la_logits || !o->la_idx || !o->la_w)
			return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	struct dsm_backend *be = o->o.cpu;
	int rc = be->matmul(be, &o->router[next], T, s->x, o->la_logits);
	if (rc < 0)
		return rc;
	struct dsm_route_args ra = { .n_tokens = T, .n_experts = o->n_experts, .logits = o->la_logits,
		.bias = o->router_bias[next], .n_group = c->n_group, .topk_group = c->topk_group, .top_k = o->top_k,
		.normalize = c->norm_topk_prob, .scaling = (float)c->routed_scaling_factor, .idx = o->la_idx,
		.weight = o->la_w };
	if ((rc = be->route(be, &ra)) < 0)
		return rc;
	return dsm_offload_prefetch(o, next, (int)(T * o->top_k), o->la_idx);
}

int dsm_offload_set_router(struct dsm_offload *o, int layer, const struct dsm_mat *gate, const float *bias)
{
	if (layer < o->first_moe || layer >= o->n_layers || !gate || gate->rows != o->n_experts || gate->cols != o->dim)
		return dsm_fail(DSM_EARG, "offload: router of layer %d: wrong layer or shape", layer);
	o->router[layer] = *gate;
	o->router_bias[layer] = bias;
	return 0;
}

/* Bytes of matrix w's weights, and of its block scales. */
static size_t mat_bytes(const struct dsm_mat *w, size_t *scale_bytes)
{
	int64_t rows = w->row0 + w->rows;
	*scale_bytes = w->dtype == DSM_F8_E4M3 ? sizeof(float) * (size_t)((rows + 127) / 128) * (size_t)((w->cols + 127) / 128)
					       : 0;
	return (size_t)rows * (size_t)w->cols * dsm_dtype_size(w->dtype);
}

int dsm_offload_set_shared(struct dsm_offload *o, int layer, const struct dsm_ffn_weights *w)
{
	if (layer < o->first_moe || layer >= o->n_layers || w->down.rows != o->dim)
		return dsm_fail(DSM_EARG, "offload: shared expert of layer %d: wrong layer or shape", layer);
	if (!o->shared && !(o->shared = calloc((size_t)o->n_layers, sizeof *o->shared)))
		return dsm_fail(DSM_ENOMEM, "out of memory");
	struct shared_dev *sh = &o->shared[layer];
	if (sh->on_gpu)
		return 0; /* uploaded by an earlier call */
	sh->set = 1;
	sh->w = *w;
	if (!o->shared_to_gpu || !o->pinned_rows)
		return 0;
	struct dsm_backend *g = o->gpu[0].be;
	struct dsm_mat *m[DSM_EXPERT_NPROJ] = { &sh->w.gate, &sh->w.up, &sh->w.down };
	for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
		size_t sb, nb = mat_bytes(m[j], &sb);
		if (!(sh->dev[j] = g->alloc(g, nb)) || (sb && !(sh->dev_scale[j] = g->alloc(g, sb))))
			return dsm_fail(DSM_ENOMEM, "%s: device memory exhausted uploading the shared expert of layer %d "
					"(%zu bytes)", g->name, layer, nb + sb);
		int rc = g->copy_in(g, sh->dev[j], m[j]->data, nb);
		if (rc == 0 && sb)
			rc = g->copy_in(g, sh->dev_scale[j], m[j]->scale, sb);
		if (rc < 0)
			return rc;
		m[j]->data = sh->dev[j];
		m[j]->scale = sh->dev_scale[j];
	}
	sh->w.numa_home = 0;
	sh->on_gpu = 1;
	return g->sync ? g->sync(g) : 0;
}

void dsm_offload_set_lookahead(struct dsm_offload *o, int max_tokens)
{
	if (max_tokens < 0)
		max_tokens = 0;
	if (max_tokens != o->lookahead_tokens) {
		free(o->la_logits);
		free(o->la_idx);
		free(o->la_w);
		o->la_logits = NULL;
		o->la_idx = NULL;
		o->la_w = NULL;
	}
	o->lookahead_tokens = max_tokens;
}

/* Releases what a failed step still holds, after draining its reads and its GPU work. */
static void abandon_step(struct dsm_offload *o, int n_need)
{
	for (int i = 0; i < o->n_gpus; i++) {
		struct gpu_dev *d = &o->gpu[i];
		if (d->pending && d->be->sync)
			d->be->sync(d->be);
		d->pending = 0;
	}
	for (int m = 0; m < n_need; m++) {
		int slot = o->slot_of[m];
		if (slot < 0)
			continue;
		while (o->slots[slot].in_flight) {
			int s;
			if (reap_one(o, &s) < 0 && s < 0)
				break;
		}
		o->slots[slot].waiter = -1;
		dsm_cache_release(o->cache, slot);
		o->slot_of[m] = -1;
	}
}

/* A step whose experts are all in host memory (mapped or dram): one call of the cpu backend's moe op for the
 * whole layer (one parallel region instead of one per expert). It adds the experts' weighted outputs to each
 * token in ascending expert order, as the combine of dsm_offload_moe does, so the sums are the same. */
static int moe_host(struct dsm_offload *o, const struct dsm_moe_step *s, int n_need)
{
	int rc = lookahead(o, s); /* the next layer's streamed experts are read while this one computes */
	if (rc < 0)
		return rc;
	for (int m = 0; m < n_need; m++) {
		int x = o->need[m];
		host_weights(o, info(o, s->layer, x), &o->host_w[x]);
		o->host_wp[x] = &o->host_w[x];
	}
	struct dsm_moe_op_args a = { .n_tokens = s->n_tokens, .top_k = s->top_k, .idx = s->idx, .weight = s->weight,
		.experts = o->host_wp, .n_experts = o->n_experts, .shared = NULL, .x = s->x, .y = s->y };
	struct dsm_backend *cpu = o->o.cpu;
	double t0 = now();
	rc = cpu->moe(cpu, &a);
	o->stats.cpu_expert_seconds += now() - t0;
	for (int m = 0; m < n_need; m++) {
		int x = o->need[m];
		o->host_wp[x] = NULL;
		if (rc == 0)
			o->stats.expert_runs[info(o, s->layer, x)->tier.kind]++;
	}
	return rc;
}

/* Device buffers of at least `rows` rows of the model's width: grown when a step needs more. */
static int ensure_dev(struct dsm_offload *o, struct dsm_backend *g, float **x, float **y, size_t *cap, size_t rows)
{
	size_t bytes = rows * (size_t)o->dim * sizeof(float);
	if (rows <= *cap)
		return 0;
	g->free(g, *x);
	g->free(g, *y);
	*x = g->alloc(g, bytes);
	*y = g->alloc(g, bytes);
	*cap = *x && *y ? rows : 0;
	if (!*cap)
		return dsm_fail(DSM_ENOMEM, "%s: no device memory for the activations of %zu rows (2 x %zu bytes)", g->name,
				rows, bytes);
	return 0;
}

/* The GPU that runs step expert m: its own for a GPU-tier expert, gpu:0 for a DRAM one whose tokens pay for
 * its copy; -1: the CPU. */
static int gpu_of(struct dsm_offload *o, int layer, int m)
{
	int x = o->need[m];
	struct dsm_tier t = info(o, layer, x)->tier;
	if (t.kind == DSM_TIER_GPU)
		return t.index;
	return t.kind == DSM_TIER_DRAM && o->upload_min > 0 && o->count[x] >= o->upload_min ? 0 : -1;
}

/* Seconds of the fastest of 3 runs of one expert on n rows: by the cpu backend from host memory (gpu = 0), or
 * by the GPU from the staging slot, with its rows' copies in and out (gpu = 1). */
static double time_ffn(struct dsm_offload *o, const struct expert_info *e, int64_t n, int gpu)
{
	struct dsm_backend *be = gpu ? o->gpu[0].be : o->o.cpu;
	struct gpu_dev *d = &o->gpu[0];
	size_t bytes = (size_t)n * (size_t)o->dim * sizeof(float);
	struct dsm_ffn_weights w;
	if (gpu)
		make_weights(e, (const void *const *)o->stage, (const float *const *)o->stage_scale, &w);
	else
		host_weights(o, e, &w);
	double best = 1e30;
	for (int i = 0; i < 3; i++) {
		double t0 = now();
		int rc = gpu ? be->copy_in(be, d->x, o->X, bytes) : 0;
		if (rc == 0)
			rc = be->ffn(be, &w, n, gpu ? d->x : o->X, gpu ? d->y : o->Y);
		if (rc == 0 && gpu && (rc = be->copy_out(be, o->Y, d->y, bytes)) == 0 && be->sync)
			rc = be->sync(be);
		if (rc < 0)
			return -1;
		double t = now() - t0;
		best = t < best ? t : best;
	}
	return best;
}

/* Measures when copying a DRAM expert to the GPU and computing it there beats computing it on the CPU, on the
 * first DRAM expert: the copy's time, and each side's time on 16 and 64 rows, fitted as a + b n. The threshold
 * is the least n with copy + a_gpu + b_gpu n < a_cpu + b_cpu n; none when the GPU's time per row is not the
 * smaller (docs/offload.md). Without device memory for the staging slot, DRAM experts stay on the CPU. */
static int upload_threshold(struct dsm_offload *o)
{
	struct dsm_backend *g = o->gpu[0].be;
	const struct expert_info *e = NULL;
	for (int l = o->first_moe; l < o->n_layers && !e; l++)
		for (int x = 0; x < o->n_experts && !e; x++)
			if (info(o, l, x)->tier.kind == DSM_TIER_DRAM)
				e = info(o, l, x);
	for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
		size_t nb = (size_t)e->src->w[j].nbytes, sb = (size_t)e->src->scale[j].nbytes;
		if (!(o->stage[j] = g->alloc(g, nb)) || (sb && !(o->stage_scale[j] = g->alloc(g, sb)))) {
			add_warning(o, "no device memory for a staging slot: DRAM experts stay on the CPU at any batch size");
			return 0;
		}
	}
	int rc;
	if ((rc = ensure_rows(o, 64)) < 0 || (rc = ensure_dev(o, g, &o->gpu[0].x, &o->gpu[0].y, &o->gpu[0].rows, 64)) < 0)
		return rc;
	if (o->o.gpu_upload_tokens > 0) {
		o->upload_min = o->o.gpu_upload_tokens;
		return 0;
	}
	memset(o->X, 0, 64 * (size_t)o->dim * sizeof(float));
	double t0 = now();
	for (int j = 0; j < DSM_EXPERT_NPROJ && rc == 0; j++) {
		if ((rc = g->copy_in(g, o->stage[j], e->host[j], (size_t)e->src->w[j].nbytes)) == 0 && o->stage_scale[j])
			rc = g->copy_in(g, o->stage_scale[j], e->scale[j], (size_t)e->src->scale[j].nbytes);
	}
	if (rc == 0 && g->sync)
		rc = g->sync(g);
	if (rc < 0)
		return rc;
	double copy = now() - t0;
	double c16 = time_ffn(o, e, 16, 0), c64 = time_ffn(o, e, 64, 0);
	double g16 = time_ffn(o, e, 16, 1), g64 = time_ffn(o, e, 64, 1);
	if (c16 < 0 || c64 < 0 || g16 < 0 || g64 < 0)
		return dsm_fail_prefix(DSM_EIO, "offload: measuring the upload threshold");
	double bc = (c64 - c16) / 48, ac = c16 - 16 * bc, bg = (g64 - g16) / 48, ag = g16 - 16 * bg;
	o->upload_min = 0;
	if (bc > bg) {
		/* At least 2: an expert of one token (decode) stays where it is, even when its copy and GPU time alone
		 * are below the CPU's: the CPU computes it beside the GPU, which moving it would put in series. */
		double n = (copy + ag - ac) / (bc - bg);
		o->upload_min = n < 2 ? 2 : n > 1e9 ? 0 : (int64_t)n + 1;
	}
	return 0;
}

/* Submits the GPUs' part of a step: on each GPU's queue, its experts' rows in, each expert, their outputs out;
 * on gpu:0 also the shared expert when it is resident there, and the DRAM experts whose tokens pay for their
 * copy. The GPUs then compute while the CPU computes the others. When every expert of the step is in host
 * memory (host), only the shared expert. Returns how many experts went to GPUs, or a negative code. Without
 * queues the calls run synchronously, with the same results. */
static int submit_gpu(struct dsm_offload *o, const struct dsm_moe_step *s, int n_need, int host)
{
	const struct shared_dev *sh = o->shared ? &o->shared[s->layer] : NULL;
	size_t D = (size_t)o->dim, rows[DSM_MAX_GPUS] = { 0 };
	int n_gpu = 0, rc = 0;
	for (int m = 0; m < n_need && !host; m++) {
		int i = gpu_of(o, s->layer, m);
		if (i >= 0) {
			rows[i] += (size_t)o->count[o->need[m]];
			n_gpu++;
		}
	}
	int shared = sh && sh->on_gpu && s->n_tokens > 0;
	for (int i = 0; i < o->n_gpus && rc == 0; i++) {
		struct gpu_dev *d = &o->gpu[i];
		struct dsm_backend *g = d->be;
		int sh_here = shared && i == 0;
		if (!rows[i] && !sh_here)
			continue;
		if ((rows[i] && (rc = ensure_dev(o, g, &d->x, &d->y, &d->rows, rows[i])) < 0) ||
		    (sh_here && (rc = ensure_dev(o, g, &o->dev_sx, &o->dev_sy, &o->dev_tokens, (size_t)s->n_tokens)) < 0) ||
		    (sh_here && (rc = ensure_tokens(o, (size_t)s->n_tokens)) < 0))
			return rc;
		if (d->q) {
			g->set_queue(g, d->q);
			rc = g->event_record(g, d->ev_start, d->q);
		}
		d->pending = 1;
		if (sh_here && rc == 0) {
			size_t bytes = (size_t)s->n_tokens * D * sizeof(float);
			memcpy(o->shared_x, s->x, bytes); /* pinned, and s->x may change before the copy runs */
			if ((rc = g->copy_in(g, o->dev_sx, o->shared_x, bytes)) == 0 &&
			    (rc = g->ffn(g, &sh->w, s->n_tokens, o->dev_sx, o->dev_sy)) == 0)
				rc = g->copy_out(g, o->shared_y, o->dev_sy, bytes);
		}
		size_t dev_off = 0; /* this GPU's experts' rows, packed on it */
		for (int m = 0; m < n_need && rows[i] && rc == 0; m++) {
			if (gpu_of(o, s->layer, m) != i)
				continue;
			int x = o->need[m];
			struct expert_info *e = info(o, s->layer, x);
			size_t off = (size_t)o->first[x] * D, bytes = (size_t)o->count[x] * D * sizeof(float);
			struct dsm_ffn_weights w;
			if (e->tier.kind == DSM_TIER_GPU) {
				make_weights(e, (const void *const *)e->dev, (const float *const *)e->dev_scale, &w);
			} else { /* a DRAM expert, copied into the staging slot first (the queue orders its uses) */
				for (int j = 0; j < DSM_EXPERT_NPROJ && rc == 0; j++)
					if ((rc = g->copy_in(g, o->stage[j], e->host[j], (size_t)e->src->w[j].nbytes)) == 0 &&
					    o->stage_scale[j])
						rc = g->copy_in(g, o->stage_scale[j], e->scale[j], (size_t)e->src->scale[j].nbytes);
				make_weights(e, (const void *const *)o->stage, (const float *const *)o->stage_scale, &w);
			}
			if (rc == 0 && (rc = g->copy_in(g, d->x + dev_off, o->X + off, bytes)) == 0 &&
			    (rc = g->ffn(g, &w, o->count[x], d->x + dev_off, d->y + dev_off)) == 0)
				rc = g->copy_out(g, o->Y + off, d->y + dev_off, bytes);
			dev_off += (size_t)o->count[x] * D;
			o->state[m] = ON_GPU;
		}
		if (d->q) {
			if (rc == 0)
				rc = g->event_record(g, d->ev_done, d->q);
			g->set_queue(g, NULL);
		}
	}
	return rc < 0 ? rc : n_gpu;
}

/* Waits for the GPUs' part of the step and accounts for it. t_submit: when its submission started,
 * t_submitted: when it ended, t_cpu_end: when the CPU's part ended. With queues each GPU was busy from its start
 * event to its done event; the GPUs' busy time is the longest of them, and the overlap is the part of it within
 * the CPU's part (both start at the submission). Without queues the submission itself was the GPUs' work,
 * overlapping nothing. */
static int finish_gpu(struct dsm_offload *o, int layer, int n_need, double t_submit, double t_submitted,
		      double t_cpu_end)
{
	double t0 = now(), busy = 0;
	int queued = 0, rc = 0, any = 0;
	for (int i = 0; i < o->n_gpus; i++)
		any |= o->gpu[i].pending;
	if (!any)
		return 0;
	for (int i = 0; i < o->n_gpus; i++) {
		struct gpu_dev *d = &o->gpu[i];
		struct dsm_backend *g = d->be;
		if (!d->pending)
			continue;
		d->pending = 0;
		int r = d->q ? g->event_sync(g, d->ev_done) : g->sync ? g->sync(g) : 0;
		double b = 0;
		if (r == 0 && d->q && (r = g->event_elapsed(g, d->ev_start, d->ev_done, &b)) == 0)
			queued = 1;
		if (r < 0 && rc == 0)
			rc = r;
		busy = b > busy ? b : busy;
	}
	if (rc < 0)
		return rc;
	double overlap = 0;
	if (queued) {
		overlap = busy < t_cpu_end - t_submit ? busy : t_cpu_end - t_submit;
		o->stats.gpu_wait_seconds += now() - t0;
	} else {
		busy = t_submitted - t_submit;
	}
	o->stats.gpu_expert_seconds += busy;
	o->stats.overlap_seconds += overlap > 0 ? overlap : 0;
	for (int m = 0; m < n_need; m++)
		if (o->state[m] == ON_GPU) {
			int kind = info(o, layer, o->need[m])->tier.kind;
			o->state[m] = DONE;
			o->stats.expert_runs[kind]++;
			o->stats.uploaded_runs += kind != DSM_TIER_GPU;
		}
	return 0;
}

/* y += shared(x): the GPU's output when it ran there, else computed now by the cpu backend. */
static int add_shared(struct dsm_offload *o, const struct dsm_moe_step *s)
{
	const struct shared_dev *sh = o->shared ? &o->shared[s->layer] : NULL;
	if (!sh || !sh->set || s->n_tokens <= 0)
		return 0;
	size_t n = (size_t)s->n_tokens * (size_t)o->dim;
	int rc;
	if (!sh->on_gpu) {
		struct dsm_backend *cpu = o->o.cpu;
		double t0 = now();
		if ((rc = ensure_tokens(o, (size_t)s->n_tokens)) < 0 ||
		    (rc = cpu->ffn(cpu, &sh->w, s->n_tokens, s->x, o->shared_y)) < 0)
			return rc;
		o->stats.cpu_expert_seconds += now() - t0;
	}
	for (size_t i = 0; i < n; i++)
		s->y[i] += o->shared_y[i];
	if (sh->on_gpu)
		o->stats.shared_runs_gpu++;
	else
		o->stats.shared_runs_cpu++;
	return 0;
}

/* The CPU's part of a step with experts beyond host memory: every expert where it is (the n_gpu GPU ones are
 * already submitted), streamed ones as their bytes land. */
static int moe_tiered(struct dsm_offload *o, const struct dsm_moe_step *s, int n_need, int n_gpu)
{
	int L = s->layer;
	int rc, done = 0, steal = 0, steal_tried = 0, first_pass = 1;
	while (done < n_need - n_gpu) {
		if ((rc = acquire_pass(o, L, n_need, steal)) < 0)
			return rc;
		int progress = rc;
		steal = 0;
		/* The next layer's reads start once this layer's are queued. */
		if (first_pass && (rc = lookahead(o, s)) < 0)
			return rc;
		first_pass = 0;
		/* Resident experts and hits compute while the reads are in flight. */
		for (int m = 0; m < n_need; m++) {
			if (o->state[m] != READY)
				continue;
			if ((rc = compute(o, L, m)) < 0)
				return rc;
			done++;
			if ((rc = dsm_stream_poll(o->st)) < 0)
				return rc;
		}
		if (done == n_need - n_gpu)
			break;
		int waiting = 0;
		for (int m = 0; m < n_need; m++)
			waiting += o->state[m] == WAITING;
		if (!waiting && !progress && !dsm_stream_busy(o->st)) {
			/* Only unused look-ahead reads are left to evict: take them. */
			if (!steal_tried) {
				steal = steal_tried = 1;
				continue;
			}
			return dsm_fail(DSM_ENOMEM, "offload: the expert cache (%u slots) cannot hold the experts of one step",
					dsm_cache_slots(o->cache));
		}
		steal_tried = 0;
		if (!waiting && !dsm_stream_busy(o->st))
			continue;
		/* One read lands: compute its expert if this step waits for it. */
		int slot;
		if ((rc = reap_one(o, &slot)) < 0)
			return rc;
		if (slot >= 0 && o->slots[slot].waiter >= 0 && o->state[o->slots[slot].waiter] == WAITING)
			o->state[o->slots[slot].waiter] = READY;
	}
	return 0;
}

/* y[t] = sum over t's experts, ascending, of weight * output: the same additions in the same order as the moe
 * op and a plain loop over experts. */
static void combine(struct dsm_offload *o, const struct dsm_moe_step *s, int n_need)
{
	int64_t D = o->dim;
	memset(s->y, 0, sizeof(float) * (size_t)(s->n_tokens * D));
	for (int m = 0; m < n_need; m++) {
		int x = o->need[m];
		for (int32_t i = o->first[x]; i < o->first[x] + o->count[x]; i++) {
			float *yt = s->y + (int64_t)o->row_tok[i] * D, wt = o->row_w[i];
			const float *ye = o->Y + (size_t)i * (size_t)D;
			for (int64_t j = 0; j < D; j++)
				yt[j] += wt * ye[j];
		}
	}
}

int dsm_offload_moe(struct dsm_offload *o, const struct dsm_moe_step *s)
{
	int L = s->layer;
	int64_t T = s->n_tokens, D = o->dim;
	int k = s->top_k;
	if (L < o->first_moe || L >= o->n_layers || T < 0 || k <= 0)
		return dsm_fail(DSM_EARG, "offload: layer %d is not a MoE layer (or a bad step shape)", L);
	size_t R = (size_t)T * (size_t)k;
	int rc;
	/* Expert-major rows: experts ascending, tokens in order within an expert. */
	memset(o->count, 0, (size_t)o->n_experts * sizeof *o->count);
	for (size_t i = 0; i < R; i++) {
		int32_t x = s->idx[i];
		if (x < 0 || x >= o->n_experts)
			return dsm_fail(DSM_EARG, "offload: layer %d: token %zu chose expert %d of %d", L, i / (size_t)k, (int)x,
					o->n_experts);
		o->count[x]++;
	}
	int n_need = 0;
	int32_t acc = 0;
	for (int x = 0; x < o->n_experts; x++) {
		o->first[x] = acc;
		o->fill[x] = 0;
		acc += o->count[x];
		if (o->count[x]) {
			o->need[n_need] = x;
			o->state[n_need] = TODO;
			o->slot_of[n_need] = -1;
			n_need++;
		}
	}
	int host = 1;
	for (int m = 0; m < n_need && host; m++) {
		int kind = info(o, L, o->need[m])->tier.kind;
		host = (kind == DSM_TIER_MAPPED || kind == DSM_TIER_DRAM) && gpu_of(o, L, m) < 0;
	}
	if (!host && (rc = ensure_rows(o, R)) < 0)
		return rc;
	if (!host)
		for (int64_t t = 0; t < T; t++)
			for (int j = 0; j < k; j++) {
				int32_t x = s->idx[t * k + j];
				size_t row = (size_t)(o->first[x] + o->fill[x]++);
				o->row_tok[row] = (int32_t)t;
				o->row_w[row] = s->weight[t * k + j];
				memcpy(o->X + row * (size_t)D, s->x + t * D, sizeof(float) * (size_t)D);
			}

	/* The GPU's part first (the shared expert where it is resident, the GPU experts), then the CPU's. */
	double t_submit = now();
	int n_gpu = o->n_gpus ? submit_gpu(o, s, n_need, host) : 0;
	double t_submitted = now();
	if (n_gpu < 0) {
		rc = n_gpu;
		goto fail;
	}
	if ((rc = host ? moe_host(o, s, n_need) : moe_tiered(o, s, n_need, n_gpu)) < 0)
		goto fail;
	if (o->n_gpus && (rc = finish_gpu(o, L, n_need, t_submit, t_submitted, now())) < 0)
		goto fail;
	if (!host)
		combine(o, s, n_need);
	if ((rc = add_shared(o, s)) < 0)
		return rc;
	o->stats.steps++;
	return 0;
fail:
	abandon_step(o, n_need);
	return rc;
}

int dsm_offload_prefetch(struct dsm_offload *o, int layer, int n, const int32_t *experts)
{
	if (!o->cache || layer < o->first_moe || layer >= o->n_layers)
		return 0;
	for (int i = 0; i < n; i++) {
		int x = experts[i];
		if (x < 0 || x >= o->n_experts || info(o, layer, x)->tier.kind != DSM_TIER_NVME)
			continue;
		int slot;
		int r = dsm_cache_acquire(o->cache, layer, x, DSM_CACHE_PREFETCH, &slot);
		if (r < 0)
			return r;
		if (r == DSM_CACHE_FULL)
			break;
		if (r != DSM_CACHE_MISS) {
			dsm_cache_release(o->cache, slot);
			continue;
		}
		o->slots[slot].prefetch_ref = 1;
		o->slots[slot].waiter = -1;
		int rc = submit_read(o, layer, x, slot);
		if (rc < 0) {
			o->slots[slot].prefetch_ref = 0;
			dsm_cache_release(o->cache, slot);
			return rc;
		}
	}
	return 0;
}

int dsm_offload_get(struct dsm_offload *o, int layer, int expert, struct dsm_ffn_weights *w)
{
	if (layer < o->first_moe || layer >= o->n_layers || expert < 0 || expert >= o->n_experts)
		return dsm_fail(DSM_EARG, "offload: layer %d expert %d out of range", layer, expert);
	struct expert_info *e = info(o, layer, expert);
	if (e->tier.kind == DSM_TIER_GPU) {
		make_weights(e, (const void *const *)e->dev, (const float *const *)e->dev_scale, w);
		return 0;
	}
	if (e->tier.kind == DSM_TIER_DRAM || e->tier.kind == DSM_TIER_MAPPED) {
		host_weights(o, e, w);
		return 0;
	}
	int slot, r;
	while ((r = dsm_cache_acquire(o->cache, layer, expert, 0, &slot)) == DSM_CACHE_FULL) {
		int s;
		if (!dsm_stream_busy(o->st)) {
			if ((r = dsm_cache_acquire(o->cache, layer, expert, DSM_CACHE_STEAL, &slot)) != DSM_CACHE_FULL)
				break;
			return dsm_fail(DSM_ENOMEM, "offload: every slot of the expert cache is in use");
		}
		if ((r = reap_one(o, &s)) < 0)
			return r;
	}
	if (r < 0)
		return r;
	o->slots[slot].waiter = 0; /* a synchronous user */
	if (r == DSM_CACHE_MISS && (r = submit_read(o, layer, expert, slot)) < 0) {
		o->slots[slot].waiter = -1;
		dsm_cache_release(o->cache, slot);
		return r;
	}
	while (!dsm_cache_ready(o->cache, slot)) {
		int s;
		if ((r = reap_one(o, &s)) < 0 || (s == slot && !dsm_cache_ready(o->cache, slot))) {
			o->slots[slot].waiter = -1;
			dsm_cache_release(o->cache, slot);
			return r < 0 ? r : dsm_fail(DSM_EIO, "offload: reading layer %d expert %d failed", layer, expert);
		}
	}
	o->slots[slot].waiter = -1;
	o->stats.expert_runs[DSM_TIER_NVME]++;
	make_weights(e, (const void *const *)o->slots[slot].job.data, e->scale, w);
	return 0;
}

void dsm_offload_put(struct dsm_offload *o, int layer, int expert)
{
	if (layer < o->first_moe || layer >= o->n_layers || expert < 0 || expert >= o->n_experts ||
	    info(o, layer, expert)->tier.kind != DSM_TIER_NVME)
		return;
	int slot = dsm_cache_find(o->cache, layer, expert);
	if (slot >= 0)
		dsm_cache_release(o->cache, slot);
}

int dsm_offload_expert_node(const struct dsm_offload *o, int layer, int expert, int *bound)
{
	if (bound)
		*bound = 0;
	if (layer < o->first_moe || layer >= o->n_layers || expert < 0 || expert >= o->n_experts)
		return -1;
	struct dsm_tier t = o->ex[(size_t)layer * (size_t)o->n_experts + (size_t)expert].tier;
	if (t.kind != DSM_TIER_DRAM)
		return -1;
	if (bound)
		*bound = node_bound(o, t.index);
	return t.index;
}

void dsm_offload_get_stats(const struct dsm_offload *o, struct dsm_offload_stats *s)
{
	*s = o->stats;
	if (o->st) {
		struct dsm_stream_stats ss;
		dsm_stream_get_stats(o->st, &ss);
		s->bytes_read = ss.bytes_wanted - o->stream_bytes0;
		s->bytes_read_device = ss.bytes_read - o->stream_dev0;
		s->read_busy_seconds = ss.busy_seconds - o->stream_busy0;
	}
	if (o->cache)
		dsm_cache_total_stats(o->cache, &s->cache);
}

void dsm_offload_reset_stats(struct dsm_offload *o)
{
	uint64_t keep[DSM_TIER_KINDS];
	memcpy(keep, o->stats.resident_bytes, sizeof keep);
	memset(&o->stats, 0, sizeof o->stats);
	memcpy(o->stats.resident_bytes, keep, sizeof keep);
	if (o->st) {
		struct dsm_stream_stats ss;
		dsm_stream_get_stats(o->st, &ss);
		o->stream_bytes0 = ss.bytes_wanted;
		o->stream_dev0 = ss.bytes_read;
		o->stream_busy0 = ss.busy_seconds;
	}
	if (o->cache)
		dsm_cache_reset_stats(o->cache);
}

int dsm_offload_warm(struct dsm_offload *o)
{
	if (!o->cache)
		return 0;
	int32_t *ids = malloc(sizeof(int32_t) * (size_t)o->n_experts);
	if (!ids)
		return dsm_fail(DSM_ENOMEM, "offload: out of memory");
	int rc = 0;
	for (int l = o->first_moe; l < o->n_layers && rc == 0; l++) {
		int n = 0;
		for (int x = 0; x < o->n_experts; x++)
			if (dsm_cache_is_pinned(o->cache, l, x) && info(o, l, x)->tier.kind == DSM_TIER_NVME)
				ids[n++] = x;
		rc = dsm_offload_prefetch(o, l, n, ids);
		while (rc == 0 && dsm_stream_busy(o->st)) {
			int slot;
			rc = reap_one(o, &slot);
		}
	}
	free(ids);
	if (rc < 0)
		return dsm_fail_prefix(rc, "offload: reading the pinned experts");
	dsm_cache_settle(o->cache);
	dsm_offload_reset_stats(o);
	return 0;
}

void dsm_offload_repin(struct dsm_offload *o)
{
	if (o->cache)
		dsm_cache_repin(o->cache);
}

const struct dsm_cache *dsm_offload_cache(const struct dsm_offload *o)
{
	return o->cache;
}

/* ---- Report ---- */

void dsm_offload_report(const struct dsm_offload *o, uint64_t n_tokens, double seconds, struct dsm_offload_report *r)
{
	memset(r, 0, sizeof *r);
	struct dsm_offload_stats st;
	dsm_offload_get_stats(o, &st);
	memcpy(r->experts, o->n_tier, sizeof r->experts);
	r->n_gpus = o->n_gpus;
	for (size_t i = 0; o->n_gpus && i < (size_t)o->n_layers * (size_t)o->n_experts; i++)
		if (o->ex[i].tier.kind == DSM_TIER_GPU)
			r->gpu_experts[o->ex[i].tier.index]++;
	r->nvme_bytes_per_token = n_tokens ? (double)st.bytes_read / (double)n_tokens : 0;
	r->read_gbs = st.read_busy_seconds > 0 ? (double)st.bytes_read / st.read_busy_seconds / 1e9 : 0;
	uint64_t uses = st.cache.hits + st.cache.misses;
	r->cache_hit_rate = uses ? (double)st.cache.hits / (double)uses : 0;
	r->prefetch_hit_rate = st.cache.prefetches ? (double)st.cache.prefetch_hits / (double)st.cache.prefetches : 0;
	r->cpu_expert_seconds = st.cpu_expert_seconds;
	r->gpu_expert_seconds = st.gpu_expert_seconds;
	r->io_wait_seconds = st.io_wait_seconds;
	r->gpu_wait_seconds = st.gpu_wait_seconds;
	r->overlap_seconds = st.overlap_seconds;
	r->shared_runs_gpu = st.shared_runs_gpu;
	r->uploaded_runs = st.uploaded_runs;
	r->upload_min_tokens = o->upload_min;
	r->shared_runs_cpu = st.shared_runs_cpu;
	double per = n_tokens ? 1.0 / (double)n_tokens : 0;
	r->gpu_busy_per_token = st.gpu_expert_seconds * per;
	r->cpu_busy_per_token = st.cpu_expert_seconds * per;
	r->io_wait_per_token = st.io_wait_seconds * per;
	r->overlap_per_token = st.overlap_seconds * per;
	/* The GPU's time within the steps' wall time is what did not overlap the CPU's part. */
	double rest = seconds - st.cpu_expert_seconds - st.io_wait_seconds - (st.gpu_expert_seconds - st.overlap_seconds);
	r->attention_seconds = rest > 0 ? rest : 0;
	r->cache_slots = o->cache ? dsm_cache_slots(o->cache) : 0;
	r->cache_policy = dsm_cache_policy_name(o->o.policy);
}
