/* dsm-tune (docs/tune.md): what the subcommands share. A model as the planner and the simulator see it (sizes
 * from config.json alone), a machine as a hardware file describes it, a routing trace held in memory, the
 * simulator and the planner. Library code style: functions return 0 or a negative DSM_E* code with a message
 * (dsm_errmsg) naming the file and field; only the mains print. */
#ifndef DSM_TUNE_H
#define DSM_TUNE_H

#include "plan.h"
#include "store_model.h"
#include "trace.h"

#include <stddef.h>
#include <stdint.h>

/* ---- Model: sizes from config.json alone (tune_model.c) ---- */

struct tune_model {
	char source[512];             /* the folder or config.json, for messages */
	struct dsm_moe_shape shape;
	uint64_t expert_bytes;        /* one routed expert: FP8 weights and block scales */
	uint64_t slot_bytes;          /* one expert as the streamer reads it (each projection rounded to 4 KiB) */
	uint64_t non_expert_bytes;    /* every other weight the engine keeps resident (MTP left out) */
	uint64_t non_expert_read;     /* of those, the bytes one decode step reads as stored (FP8 with scales; the
				       * embeddings: one row): what a GPU reads */
	uint64_t non_expert_read_cpu; /* the same as the cpu backend holds them (BF16, its default precision) */
	double *bias;                 /* [n_layers * n_experts] router bias; NULL without weights */
};

/* path: a checkpoint folder (config.json inside; the router biases are read when the weights are there) or
 * a config.json. Returns 0 or a negative code with a message. */
int tune_model_load(struct tune_model *m, const char *path);
void tune_model_free(struct tune_model *m);
/* "12.3 MB" / "4.56 GB": units that show the numbers (decimal, three significant digits at least). */
const char *tune_bytes(uint64_t b, char *buf, size_t size);

/* ---- Hardware (tune_hw.c; format in docs/tune.md) ---- */

#define TUNE_MAX_NODES 64
#define TUNE_MAX_GPUS 16
#define TUNE_RATE_POINTS 3         /* the CPU expert kernel at 1, 8 and 64 tokens per call */
#define TUNE_MAX_QD 8

struct tune_node {
	int cores;
	uint64_t dram_bytes;          /* memory of the node */
	double dram_gbs;              /* read bandwidth of the node's memory from its cores */
	double dense_gbs;             /* BF16 weights the cpu backend's matmul reads per second at one token (the
				       * non-expert weights at decode); 0 in a file: dram_gbs */
	double expert_gbs[TUNE_RATE_POINTS]; /* FP8 expert weights one expert call computes per second on the
					      * node's cores, at 1, 8, 64 tokens per call */
};

struct tune_gpu {
	uint64_t memory_bytes;
	double read_gbs;              /* device memory bandwidth */
	double h2d_gbs;               /* host to device copy rate (pinned) */
};

struct tune_hw {
	char name[128];
	char source[512];             /* the file, for messages */
	int n_nodes;
	struct tune_node node[TUNE_MAX_NODES];
	int n_gpus;
	struct tune_gpu gpu[TUNE_MAX_GPUS];
	int n_qd;                     /* NVMe O_DIRECT read rate (all devices) at queue depths qd[i] */
	int qd[TUNE_MAX_QD];
	double nvme_gbs[TUNE_MAX_QD];
	double step_overhead_s;       /* fixed time per MoE layer and step (routing, synchronisation); 0 if unknown */
};

/* Parses a hardware file; impossible numbers (negative or zero rates, no node) are refused naming the
 * field. Returns 0 or DSM_EJSON / DSM_EARG with a message. */
int tune_hw_load(struct tune_hw *hw, const char *path);
int tune_hw_parse(struct tune_hw *hw, const char *text, size_t len, const char *what);
/* The file as JSON; caller frees. */
char *tune_hw_to_json(const struct tune_hw *hw, const char *comment);
/* GB/s of the CPU expert kernel of node j at t tokens per call (interpolated in log t; flat past 64). */
double tune_cpu_rate(const struct tune_hw *hw, int j, double t);
/* The best NVMe rate (the engine keeps several reads in flight). */
double tune_nvme_gbs(const struct tune_hw *hw);

/* ---- Traces in memory (tune_trace.c) ---- */

struct tune_trace {
	struct dsm_trace_info info;
	uint64_t n;                   /* tokens */
	int n_moe;                    /* n_layers - first_moe */
	uint16_t *ex;                 /* [n][n_moe][top_k]; 0xFFFF: layer not run */
};

struct rng;
/* An index drawn with probability proportional to its step of the cumulative sums cdf[0..n-1]. */
int tune_draw(const double *cdf, int n, struct rng *r);
/* Reads a whole trace; with a model, refuses a trace of another model (naming the field). */
int tune_trace_load(struct tune_trace *t, const char *path, const struct tune_model *m);
void tune_trace_free(struct tune_trace *t);
/* Per (layer, expert) uses per token, [n_layers * n_experts] malloc'ed. */
double *tune_trace_popularity(const struct tune_trace *t);

struct tune_synth {
	int n_layers, first_moe, n_experts, top_k;
	uint64_t tokens;
	double zipf;                  /* 0: uniform */
	int drift;                    /* the ranking moves during the trace */
	uint64_t seed;
	const char *model_type;
};
/* Writes a synthetic trace: per layer a random ranking of the experts, each token's top_k distinct experts
 * drawn with probability ~ 1 / rank^zipf. */
int tune_trace_synth(const char *path, const struct tune_synth *s);

/* ---- Simulator (tune_sim.c) ---- */

enum { TUNE_BELADY = 3 };         /* after enum dsm_cache_policy's lru, lfu, pinned */

struct tune_sim_opts {
	int policy;                   /* enum dsm_cache_policy or TUNE_BELADY; -1: the plan's (else lru) */
	uint64_t cache_bytes;         /* 0: the plan's, else 2 x top_k experts */
	int batch;                    /* sequences decoded together (consecutive trace tokens form a step) */
	uint64_t max_tokens;          /* 0: the whole trace */
	const double *hotness;        /* pinned policy's hotness [n_layers * n_experts]; NULL: the trace's counts */
};

enum { TUNE_T_GPU, TUNE_T_DRAM, TUNE_T_HIT, TUNE_T_MISS, TUNE_T_N }; /* where a use of an expert was served */

struct tune_sim_layer {
	uint64_t uses[TUNE_T_N];      /* expert computations (one per expert per step) */
	double seconds;               /* predicted time of the layer over the whole run */
	double io_wait;               /* of which waiting for reads */
};

struct tune_sim_result {
	uint64_t tokens, steps, slots;
	int policy;
	struct tune_sim_layer *layer; /* [n_layers] */
	uint64_t uses[TUNE_T_N];
	double bytes_per_token[TUNE_T_N]; /* expert bytes per token from each tier (misses: bytes read) */
	double non_expert_seconds, expert_seconds, io_wait_seconds, overhead_seconds;
	double seconds;               /* predicted decode time of the whole trace */
	double tokens_per_second;
	double hit_rate;              /* hits / (hits + misses) of streamed experts */
	double bound_tokens_per_second; /* every byte read once per step at the rate of its tier, nothing else */
};

/* Replays t against the plan on hw. Returns 0 or a negative code with a message. */
int tune_simulate(const struct tune_model *m, const struct dsm_plan *p, const struct tune_hw *hw,
		  const struct tune_trace *t, const struct tune_sim_opts *o, struct tune_sim_result *r);
void tune_sim_result_free(struct tune_sim_result *r);

/* The cache decisions alone, for tests: hit[i] for the i-th access of keys[0 .. n) (key = layer * E + expert)
 * in a cache of `slots` slots under policy (pinned: n_pinned of them for the hottest keys by hotness). */
int tune_cache_replay(int policy, unsigned slots, unsigned n_pinned, int n_layers, int n_experts,
		      const double *hotness, const uint32_t *keys, size_t n, uint8_t *hit);

/* ---- Planner (tune_plan.c) ---- */

struct tune_plan_opts {
	uint64_t vram_budget;         /* 0: the hardware's first GPU's memory less 10%; none without a GPU */
	uint64_t dram_budget;         /* 0: the hardware's DRAM less 10% */
	int batch;
	const struct tune_trace *trace; /* hotness and the simulations that choose the cache; NULL: router bias */
	int verbose;
};

/* The plan that maximizes predicted tokens/s among the candidates it simulates (docs/tune.md). *sim_out
 * (may be NULL) gets its prediction. Returns 0, or DSM_EPLAN when the budgets cannot hold the non-expert
 * weights (message with the sizes). */
int tune_plan(struct dsm_plan **out, const struct tune_model *m, const struct tune_hw *hw,
	      const struct tune_plan_opts *o, struct tune_sim_result *sim_out);

/* Experts of each MoE layer ordered hottest first by pop (ties by number): order[layer*E .. +E). */
void tune_order_experts(const struct tune_model *m, const double *pop, int *order);

#endif
