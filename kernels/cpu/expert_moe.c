/* The expert context: threads bound to cores (OpenMP's, or a held team's: cpu_team.h), per-thread scratch, and
 * the parallel drivers of one matmul, one expert and one MoE layer (decode and batched paths, NUMA split).
 *
 * Work is split by rows, never by columns inside a node, so every output value is computed by one thread in
 * a fixed order and results do not depend on the thread count. Phases of a layer are separated by barriers:
 *   gather  tokens of each expert (and, on the batched path, packed to BF16 pairs);
 *   up      gate and up rows of every expert, SwiGLU while the rows are in cache -> h;
 *   down    rows of the output split across threads; for each row the experts are added in ascending id,
 *           then the shared expert;
 *   reduce  (several NUMA nodes only) node partial sums added in node order. */
#include "expert_internal.h"
#include "cpu_team.h"

#include "dtype.h"
#include "error.h"

#include <math.h>
#include <omp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define DEFAULT_GEMM_MIN 32  /* see docs/kernels.md "switch point" */
#define UP_CHUNK 128         /* gate/up rows per step of the decode path: one scale block */
#define DOWN_CHUNK 512       /* output rows per step of the decode path */
#define GEMM_CHUNK 96        /* rows per step of the batched path: one weight tile */

struct dsm_expert_ctx {
	enum dsm_isa isa;
	int n_threads, n_nodes;
	int *thread_node;                          /* [n_threads] */
	int node_first[DSM_EXPERT_MAX_NODES + 1];  /* threads of node j: [node_first[j], node_first[j + 1]) */
	int (*bind)(void *arg, int i);
	void *bind_arg;
	unsigned id;                               /* tells threads which context they are bound for */
	size_t gemm_min;
	char *head;                                /* a layer's job list and token lists, grown on demand */
	size_t head_size;
	char *buf;                                 /* the buffers of a call, grown on demand */
	size_t buf_size;
	uint64_t node_bytes[DSM_EXPERT_MAX_NODES]; /* expert bytes each node was given by the last call */
	struct dsm_wait_clock wait;
};

double dsm_wall_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* On a virtual machine, the first read of memory just written (the read-in's copy of the weights, the head's
 * screen) ran at 4-5 GB/s, each 4 KiB page once, for up to a second after: the start-up choice of the decode
 * kernels' walks measured that instead of the kernels, and chose wrong (60 tok/s instead of 81 on the small
 * preset with 1 thread); the first greedy step of `wide` screened its head in 86-157 ms instead of 18-25. A byte
 * of every page read once took 1-60 ms per 256 MB; on all threads, the 11.9 GB of the `wide` preset took 46-170
 * ms with 2 threads against 79-1160 ms on one (alternating runs). */
void dsm_touch_pages(const void *p, uint64_t n)
{
	const volatile char *c = p;
	int64_t pages = (int64_t)((n + 4095) / 4096);
#pragma omp parallel for schedule(static, 512) /* 2 MiB pieces */
	for (int64_t k = 0; k < pages; k++)
		(void)c[(uint64_t)k * 4096];
}

void dsm_wait_end(struct dsm_wait_clock *w, int team, double wall)
{
	double busy = 0;
	for (int i = 0; i < team && i < DSM_WAIT_MAX_THREADS; i++) {
		busy += w->busy[i * 8];
		w->busy[i * 8] = 0;
	}
	if (team > 1 && team * wall > busy)
		w->seconds += team * wall - busy;
}

double dsm_expert_ctx_wait_seconds(const struct dsm_expert_ctx *ctx)
{
	return ctx->wait.seconds;
}

/* Adds the time since t0 to thread tid's working time; returns now. */
static double worked(struct dsm_expert_ctx *ctx, int tid, double t0)
{
	double t = dsm_wall_seconds();
	if (tid < DSM_WAIT_MAX_THREADS)
		ctx->wait.busy[tid * 8] += t - t0;
	return t;
}

static atomic_uint ctx_ids = 1;
static _Thread_local unsigned bound_ctx;
static _Thread_local int bound_as;

static size_t min_sz(size_t a, size_t b)
{
	return a < b ? a : b;
}

static size_t round_up(size_t v, size_t to)
{
	return (v + to - 1) / to * to;
}

/* ---- Context ------------------------------------------------------------------------------------------ */

int dsm_expert_ctx_init(struct dsm_expert_ctx **out, const struct dsm_expert_opts *opts)
{
	struct dsm_expert_opts def = { .isa = DSM_ISA_AUTO };
	if (!opts)
		opts = &def;
	*out = NULL;
	enum dsm_isa isa = opts->isa == DSM_ISA_AUTO ? dsm_isa_best() : opts->isa;
	if (isa < 0 || isa >= DSM_ISA_COUNT || !dsm_isa_available(isa))
		return dsm_fail(DSM_EUNSUPPORTED, "expert kernels: this CPU lacks %s", dsm_isa_name(isa));
	const struct dsm_cpu_threads *th = opts->threads;
	int n = opts->n_threads > 0 ? opts->n_threads : th ? th->n_threads : omp_get_max_threads();
	if (n < 1)
		n = 1;
	if (th) {
		if (th->n_threads < 1 || th->n_nodes < 1 || th->n_nodes > DSM_EXPERT_MAX_NODES || !th->thread_node)
			return dsm_fail(DSM_EARG, "expert kernels: bad thread plan (%d threads, %d nodes)", th->n_threads,
					th->n_nodes);
		if (n != th->n_threads)
			return dsm_fail(DSM_EARG, "expert kernels: %d threads asked, the plan has %d", n, th->n_threads);
	}
	struct dsm_expert_ctx *ctx = calloc(1, sizeof(*ctx));
	if (!ctx || !(ctx->thread_node = calloc((size_t)n, sizeof(int)))) {
		free(ctx);
		return dsm_fail(DSM_ENOMEM, "expert kernels: out of memory");
	}
	ctx->isa = isa;
	ctx->n_threads = n;
	ctx->n_nodes = th ? th->n_nodes : 1;
	for (int i = 0; i < n; i++) {
		int node = th ? th->thread_node[i] : 0;
		if (node < 0 || node >= ctx->n_nodes || (i > 0 && node < ctx->thread_node[i - 1])) {
			int n_nodes = ctx->n_nodes;
			dsm_expert_ctx_free(ctx);
			return dsm_fail(DSM_EARG, "expert kernels: thread %d on node %d: nodes must be non-decreasing "
					"and below %d", i, node, n_nodes);
		}
		ctx->thread_node[i] = node;
	}
	for (int j = 0, i = 0; j <= ctx->n_nodes; j++) {
		while (i < n && ctx->thread_node[i] < j)
			i++;
		ctx->node_first[j] = i;
	}
	for (int j = 0; j < ctx->n_nodes; j++)
		if (ctx->node_first[j + 1] == ctx->node_first[j]) {
			dsm_expert_ctx_free(ctx);
			return dsm_fail(DSM_EARG, "expert kernels: NUMA node %d has no thread", j);
		}
	ctx->bind = th ? th->bind : NULL;
	ctx->bind_arg = th ? th->bind_arg : NULL;
	ctx->id = atomic_fetch_add(&ctx_ids, 1);
	ctx->gemm_min = opts->gemm_min_tokens ? opts->gemm_min_tokens : DEFAULT_GEMM_MIN;
	*out = ctx;
	return 0;
}

void dsm_expert_ctx_free(struct dsm_expert_ctx *ctx)
{
	if (!ctx)
		return;
	free(ctx->thread_node);
	free(ctx->head);
	free(ctx->buf);
	free(ctx);
}

enum dsm_isa dsm_expert_ctx_isa(const struct dsm_expert_ctx *ctx)
{
	return ctx->isa;
}

int dsm_expert_ctx_threads(const struct dsm_expert_ctx *ctx)
{
	return ctx->n_threads;
}

size_t dsm_expert_ctx_gemm_min_tokens(const struct dsm_expert_ctx *ctx)
{
	return ctx->gemm_min;
}

/* Binds the calling OpenMP thread as thread i, once per context, when the runtime gave every thread. */
static void bind_self(struct dsm_expert_ctx *ctx, int i, int team)
{
	if (!ctx->bind || team != ctx->n_threads || (bound_ctx == ctx->id && bound_as == i))
		return;
	ctx->bind(ctx->bind_arg, i);
	bound_ctx = ctx->id;
	bound_as = i;
}

/* A bump allocator over ctx->buf: run once with base NULL to size, then with the buffer. */
struct bump {
	char *base;
	size_t off;
};

static void *take(struct bump *b, size_t bytes)
{
	void *p = b->base ? b->base + b->off : NULL;
	b->off += round_up(bytes, 64);
	return p;
}

/* Makes *buf at least bytes long (64-byte aligned); the old contents are dropped. */
static int reserve(char **buf, size_t *size, size_t bytes)
{
	if (bytes <= *size)
		return 0;
	void *p = NULL;
	if (posix_memalign(&p, 64, bytes))
		return dsm_fail(DSM_ENOMEM, "expert kernels: %zu bytes of scratch", bytes);
	free(*buf);
	*buf = p;
	*size = bytes;
	return 0;
}

/* Part i of n of [0, len): cut at multiples of 128 when there are at least n blocks, else at even rows. */
static void split(size_t len, int n, int i, size_t *a, size_t *b)
{
	size_t nb = (len + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK;
	if (nb >= (size_t)n) {
		*a = min_sz(nb * (size_t)i / (size_t)n * DSM_FP8_BLOCK, len);
		*b = min_sz(nb * (size_t)(i + 1) / (size_t)n * DSM_FP8_BLOCK, len);
	} else {
		size_t np = (len + 1) / 2;
		*a = min_sz(np * (size_t)i / (size_t)n * 2, len);
		*b = min_sz(np * (size_t)(i + 1) / (size_t)n * 2, len);
	}
}

void dsm_expert_node_range(size_t inter, int n, int j, size_t *i0, size_t *i1)
{
	size_t nb = (inter + DSM_FP8_BLOCK - 1) / DSM_FP8_BLOCK;
	*i0 = min_sz(nb * (size_t)j / (size_t)n * DSM_FP8_BLOCK, inter);
	*i1 = min_sz(nb * (size_t)(j + 1) / (size_t)n * DSM_FP8_BLOCK, inter);
}

/* ---- Experts ------------------------------------------------------------------------------------------ */

int dsm_expert_fp8_init(struct dsm_expert_fp8 *e, const struct dsm_fp8_mat *gate, const struct dsm_fp8_mat *up,
			const struct dsm_fp8_mat *down)
{
	if (gate->rows != up->rows || gate->cols != up->cols || down->rows != gate->cols || down->cols != gate->rows)
		return dsm_fail(DSM_ESHAPE, "expert: gate [%zu, %zu], up [%zu, %zu], down [%zu, %zu] do not fit",
				gate->rows, gate->cols, up->rows, up->cols, down->rows, down->cols);
	memset(e, 0, sizeof(*e));
	e->hidden = gate->cols;
	e->inter = gate->rows;
	e->n_parts = 1;
	e->part[0].gate = *gate;
	e->part[0].up = *up;
	e->part[0].down = *down;
	return 0;
}

/* The part of node j of n: the stored part when the expert was placed per node, else a window. */
static int expert_part(const struct dsm_expert_fp8 *e, int n, int j, struct dsm_expert_part *p)
{
	size_t i0, i1;
	dsm_expert_node_range(e->inter, n, j, &i0, &i1);
	if (e->n_parts == n) {
		*p = e->part[j];
		if (p->gate.rows != i1 - i0 || p->up.rows != i1 - i0 || p->down.cols != i1 - i0 ||
		    p->gate.cols != e->hidden || p->down.rows != e->hidden)
			return dsm_fail(DSM_ESHAPE, "expert part %d of %d: [%zu, %zu] x3, expected intermediate rows "
					"[%zu, %zu)", j, n, p->gate.rows, p->gate.cols, i0, i1);
		return 0;
	}
	if (e->n_parts != 1)
		return dsm_fail(DSM_EARG, "expert split in %d parts used on %d NUMA nodes", e->n_parts, n);
	const struct dsm_expert_part *w = &e->part[0];
	int rc = dsm_fp8_mat_window(&p->gate, &w->gate, i0, i1 - i0, 0, e->hidden);
	if (rc == 0)
		rc = dsm_fp8_mat_window(&p->up, &w->up, i0, i1 - i0, 0, e->hidden);
	if (rc == 0)
		rc = dsm_fp8_mat_window(&p->down, &w->down, 0, e->hidden, i0, i1 - i0);
	return rc;
}

int dsm_expert_fp8_split(struct dsm_expert_fp8 *e, int n)
{
	if (n < 1 || n > DSM_EXPERT_MAX_NODES || e->n_parts != 1)
		return dsm_fail(DSM_EARG, "expert split: %d parts of a %d-part expert", n, e->n_parts);
	struct dsm_expert_part parts[DSM_EXPERT_MAX_NODES];
	for (int j = 0; j < n; j++) {
		int rc = expert_part(e, n, j, &parts[j]);
		if (rc < 0)
			return rc;
	}
	memcpy(e->part, parts, (size_t)n * sizeof(parts[0]));
	e->n_parts = n;
	return 0;
}

/* ---- Jobs: one expert and its tokens ------------------------------------------------------------------ */

struct job {
	const struct dsm_expert_fp8 *e;
	size_t n;                                 /* tokens */
	const int32_t *tok;                       /* [n] rows of x, NULL: 0 .. n-1 */
	const float *w;                           /* [n] weights, NULL: 1 */
	int gemm;                                 /* batched path */
	size_t m_pad;                             /* n rounded to 16 (batched path) */
	struct dsm_expert_part part[DSM_EXPERT_MAX_NODES];
	size_t i0[DSM_EXPERT_MAX_NODES];          /* first intermediate row of each node's part */
	const float *x;                           /* decode: [n, hidden] the tokens' activations */
	float *xg;                                /* decode: gather buffer when x is not the input itself */
	uint16_t *a;                              /* batched: packed activations */
	float *h;                                 /* decode: [n, inter] */
	uint16_t *hp;                             /* batched: packed h */
};

struct layer {
	struct job *jobs;
	size_t n_jobs, n_tok, hidden;
	const float *x;                           /* [n_tok, hidden] */
	float *y;                                 /* [n_tok, hidden] */
	int accumulate;
	float *partial;                           /* [n_nodes, n_tok, hidden] when n_nodes > 1 */
	void **gemv_scratch, **tile;              /* [n_threads] */
	float **tmp;                              /* [n_threads] */
	size_t next_up[DSM_EXPERT_MAX_NODES];     /* the next chunk of the up phase a node's threads take */
	size_t next_down[DSM_EXPERT_MAX_NODES];   /* the next output row of the down phase */
	struct dsm_expert_ctx *ctx;
};

/* The threads of a node take the chunks of a phase as they come (a thread the host slows takes fewer), not an
 * equal share each; what each chunk computes does not depend on which thread takes it. */
static size_t next_chunk(size_t *next)
{
	return __atomic_fetch_add(next, 1, __ATOMIC_RELAXED);
}

/* Chunks of len rows for Q threads: whole units (a scale block, or a tile on the batched path), at most 4,
 * and about 4 chunks per thread where len allows: long runs stream best, many chunks balance best. */
static size_t chunk_rows(size_t len, int Q, size_t unit)
{
	size_t units = (len + unit - 1) / unit, per = units / (4 * (size_t)Q);
	return unit * (per < 1 ? 1 : per > 4 ? 4 : per);
}

/* The next rows of [0, total) for one of Q threads: a share of what is left that shrinks as the rows run out
 * (whole units, at most cap), so that threads the host slows take fewer and all end close together. Returns
 * their number at *a, 0 when none are left. */
static size_t take_rows(size_t *next, size_t total, int Q, size_t unit, size_t cap, size_t *a)
{
	size_t cur = __atomic_load_n(next, __ATOMIC_RELAXED), k;
	do {
		if (cur >= total)
			return 0;
		k = min_sz((total - cur) / (2 * (size_t)Q) / unit * unit, cap);
		k = k < unit ? min_sz(unit, total - cur) : k;
	} while (!__atomic_compare_exchange_n(next, &cur, cur + k, 0, __ATOMIC_RELAXED, __ATOMIC_RELAXED));
	*a = cur;
	return k;
}

static size_t job_tok(const struct job *j, size_t t)
{
	return j->tok ? (size_t)j->tok[t] : t;
}

static float silu_mul(float g, float u)
{
	return g / (1.0f + expf(-g)) * u;
}

static void phase_gather(struct dsm_expert_ctx *ctx, struct layer *L, int v)
{
	for (size_t q = 0; q < L->n_jobs; q++) {
		struct job *jb = &L->jobs[q];
		size_t a, b;
		if (jb->gemm) {
			split((L->hidden + 1) / 2, ctx->n_threads, v, &a, &b);
			dsm_bf16_pack_gather(L->x, L->hidden, jb->tok, jb->n, L->hidden, a, b, jb->a);
			if (v == 0 && jb->e->inter % 2) /* the half-used last pair of h */
				memset(jb->hp + jb->e->inter / 2 * jb->m_pad * 2, 0, jb->m_pad * 2 * sizeof(uint16_t));
		} else if (jb->xg) {
			split(jb->n, ctx->n_threads, v, &a, &b);
			for (size_t t = a; t < b; t++)
				memcpy(jb->xg + t * L->hidden, L->x + job_tok(jb, t) * L->hidden, L->hidden * sizeof(float));
		}
	}
}

static void phase_up(struct dsm_expert_ctx *ctx, struct layer *L, int v)
{
	int node = ctx->thread_node[v], Q = ctx->node_first[node + 1] - ctx->node_first[node];
	float *tg = L->tmp[v];
	size_t k = next_chunk(&L->next_up[node]), first = 0; /* chunks: each job's rows, job after job */
	for (size_t q = 0; q < L->n_jobs; q++) {
		struct job *jb = &L->jobs[q];
		const struct dsm_expert_part *p = &jb->part[node];
		size_t inter = jb->e->inter, n = jb->n, rows = p->gate.rows;
		size_t step = chunk_rows(rows, Q, jb->gemm ? GEMM_CHUNK : UP_CHUNK), chunks = (rows + step - 1) / step;
		for (; k < first + chunks; k = next_chunk(&L->next_up[node])) {
			size_t a = (k - first) * step, b = min_sz(a + step, rows);
			if (!jb->gemm) {
				float *tu = tg + n * UP_CHUNK;
				for (size_t c = a; c < b; c += UP_CHUNK) {
					size_t c1 = min_sz(c + UP_CHUNK, b);
					dsm_fp8_gemv_rows(ctx->isa, &p->gate, c, c1, jb->x, L->hidden, n, tg, UP_CHUNK,
							  L->gemv_scratch[v]);
					dsm_fp8_gemv_rows(ctx->isa, &p->up, c, c1, jb->x, L->hidden, n, tu, UP_CHUNK,
							  L->gemv_scratch[v]);
					for (size_t t = 0; t < n; t++)
						for (size_t i = 0; i < c1 - c; i++)
							jb->h[t * inter + jb->i0[node] + c + i] =
								silu_mul(tg[t * UP_CHUNK + i], tu[t * UP_CHUNK + i]);
				}
				continue;
			}
			size_t m_pad = jb->m_pad;
			float *tu = tg + GEMM_CHUNK * m_pad;
			for (size_t c = a; c < b; c += GEMM_CHUNK) {
				size_t c1 = min_sz(c + GEMM_CHUNK, b);
				dsm_fp8_gemm_rows(&p->gate, c, c1, jb->a, n, tg, m_pad, L->tile[v]);
				dsm_fp8_gemm_rows(&p->up, c, c1, jb->a, n, tu, m_pad, L->tile[v]);
				for (size_t i = 0; i < c1 - c; i++) {
					size_t gi = jb->i0[node] + c + i;
					uint16_t *out = jb->hp + gi / 2 * m_pad * 2 + gi % 2;
					for (size_t j = 0; j < m_pad; j++)
						out[2 * j] = j < n ? dsm_f32_to_bf16(silu_mul(tg[i * m_pad + j],
											      tu[i * m_pad + j])) : 0;
				}
			}
		}
		first += chunks;
	}
}

static void phase_down(struct dsm_expert_ctx *ctx, struct layer *L, int v)
{
	int node = ctx->thread_node[v];
	int Q = ctx->node_first[node + 1] - ctx->node_first[node], gemm = 0;
	for (size_t k = 0; k < L->n_jobs; k++)
		gemm |= L->jobs[k].gemm;
	size_t hidden = L->hidden, unit = gemm ? GEMM_CHUNK : 16, cap = gemm ? 4 * GEMM_CHUNK : DOWN_CHUNK, a, len;
	float *out = ctx->n_nodes > 1 ? L->partial + (size_t)node * L->n_tok * hidden : L->y;
	float *tmp = L->tmp[v];
	while ((len = take_rows(&L->next_down[node], hidden, Q, unit, cap, &a)) > 0) {
		size_t b = a + len;
		if (ctx->n_nodes > 1 || !L->accumulate)
			for (size_t t = 0; t < L->n_tok; t++)
				memset(out + t * hidden + a, 0, (b - a) * sizeof(float));
		for (size_t k = 0; k < L->n_jobs; k++) {
			struct job *jb = &L->jobs[k];
			const struct dsm_expert_part *p = &jb->part[node];
			size_t n = jb->n, i0 = jb->i0[node];
			if (p->down.cols == 0) /* nothing of this expert on this node */
				continue;
			if (!jb->gemm) {
				dsm_fp8_gemv_rows(ctx->isa, &p->down, a, b, jb->h + i0, jb->e->inter, n, tmp, DOWN_CHUNK,
						  L->gemv_scratch[v]);
				for (size_t t = 0; t < n; t++) {
					float wt = jb->w ? jb->w[t] : 1.0f, *o = out + job_tok(jb, t) * hidden + a;
					for (size_t i = 0; i < b - a; i++)
						o[i] += wt * tmp[t * DOWN_CHUNK + i];
				}
				continue;
			}
			size_t m_pad = jb->m_pad;
			for (size_t c = a; c < b; c += GEMM_CHUNK) {
				size_t c1 = min_sz(c + GEMM_CHUNK, b);
				dsm_fp8_gemm_rows(&p->down, c, c1, jb->hp + i0 / 2 * m_pad * 2, n, tmp, m_pad, L->tile[v]);
				for (size_t t = 0; t < n; t++) {
					float wt = jb->w ? jb->w[t] : 1.0f, *o = out + job_tok(jb, t) * hidden + c;
					for (size_t i = 0; i < c1 - c; i++)
						o[i] += wt * tmp[i * m_pad + t];
				}
			}
		}
	}
}

static void phase_reduce(struct dsm_expert_ctx *ctx, struct layer *L, int v)
{
	size_t hidden = L->hidden, plane = L->n_tok * hidden, a, b;
	split(hidden, ctx->n_threads, v, &a, &b);
	for (size_t t = 0; t < L->n_tok; t++)
		for (size_t r = a; r < b; r++) {
			float s = L->partial[t * hidden + r];
			for (int j = 1; j < ctx->n_nodes; j++)
				s += L->partial[(size_t)j * plane + t * hidden + r];
			L->y[t * hidden + r] = L->accumulate ? L->y[t * hidden + r] + s : s;
		}
}

/* Places the buffers of a layer (b->base NULL: only sizes them). */
static void layout(struct dsm_expert_ctx *ctx, struct layer *L, struct bump *b)
{
	size_t max_cols = L->hidden, tmp_floats = 0;
	int any_gemm = 0;
	for (size_t k = 0; k < L->n_jobs; k++) {
		struct job *jb = &L->jobs[k];
		size_t inter = jb->e->inter, n = jb->n;
		if (inter > max_cols)
			max_cols = inter;
		if (jb->gemm) {
			any_gemm = 1;
			jb->a = take(b, dsm_bf16_pack_size(n, L->hidden));
			jb->hp = take(b, dsm_bf16_pack_size(n, inter));
			if (2 * GEMM_CHUNK * jb->m_pad > tmp_floats)
				tmp_floats = 2 * GEMM_CHUNK * jb->m_pad;
		} else {
			int direct = n == L->n_tok; /* every token, ascending: the input itself */
			jb->xg = direct ? NULL : take(b, n * L->hidden * sizeof(float));
			jb->x = direct ? L->x : jb->xg;
			jb->h = take(b, n * inter * sizeof(float));
			size_t need = n * (2 * UP_CHUNK > DOWN_CHUNK ? 2 * UP_CHUNK : DOWN_CHUNK);
			if (need > tmp_floats)
				tmp_floats = need;
		}
	}
	int N = ctx->n_threads;
	L->partial = ctx->n_nodes > 1 ? take(b, (size_t)ctx->n_nodes * L->n_tok * L->hidden * sizeof(float)) : NULL;
	L->gemv_scratch = take(b, (size_t)N * sizeof(void *));
	L->tile = take(b, (size_t)N * sizeof(void *));
	L->tmp = take(b, (size_t)N * sizeof(float *));
	for (int v = 0; v < N; v++) {
		void *g = take(b, dsm_fp8_gemv_scratch_size(max_cols));
		void *t = any_gemm ? take(b, dsm_fp8_gemm_scratch_size()) : NULL;
		float *f = take(b, tmp_floats * sizeof(float));
		if (b->base) {
			L->gemv_scratch[v] = g;
			L->tile[v] = t;
			L->tmp[v] = f;
		}
	}
}

/* The phases of a layer on one thread of the team, a barrier between them. */
static void layer_part(void *arg, int tid, int team)
{
	struct layer *L = arg;
	struct dsm_expert_ctx *ctx = L->ctx;
	int N = ctx->n_threads;
	bind_self(ctx, tid, team);
	double t = dsm_wall_seconds();
	for (int v = tid; v < N; v += team)
		phase_gather(ctx, L, v);
	worked(ctx, tid, t);
	cpu_par_barrier(team);
	t = dsm_wall_seconds();
	for (int v = tid; v < N; v += team)
		phase_up(ctx, L, v);
	worked(ctx, tid, t);
	cpu_par_barrier(team);
	t = dsm_wall_seconds();
	for (int v = tid; v < N; v += team)
		phase_down(ctx, L, v);
	worked(ctx, tid, t);
	if (ctx->n_nodes > 1) {
		cpu_par_barrier(team);
		t = dsm_wall_seconds();
		for (int v = tid; v < N; v += team)
			phase_reduce(ctx, L, v);
		worked(ctx, tid, t);
	}
}

static int run_layer(struct dsm_expert_ctx *ctx, struct layer *L)
{
	struct bump b = { NULL, 0 };
	layout(ctx, L, &b);
	int rc = reserve(&ctx->buf, &ctx->buf_size, b.off);
	if (rc < 0)
		return rc;
	b.base = ctx->buf;
	b.off = 0;
	layout(ctx, L, &b);
	memset(L->next_up, 0, sizeof(L->next_up));
	memset(L->next_down, 0, sizeof(L->next_down));
	L->ctx = ctx;
	double t_start = dsm_wall_seconds();
	int team = cpu_par(ctx->n_threads, layer_part, L);
	dsm_wait_end(&ctx->wait, team, dsm_wall_seconds() - t_start);
	return 0;
}

static uint64_t part_bytes(const struct dsm_expert_part *p)
{
	return (uint64_t)(p->gate.rows + p->up.rows) * p->gate.cols + (uint64_t)p->down.rows * p->down.cols;
}

/* Fills the per-node parts of a job and checks its shapes; counts each node's bytes. */
static int job_init(struct dsm_expert_ctx *ctx, struct job *jb, const struct dsm_expert_fp8 *e, size_t hidden)
{
	if (e->hidden != hidden)
		return dsm_fail(DSM_ESHAPE, "expert with hidden size %zu in a layer of %zu", e->hidden, hidden);
	jb->e = e;
	jb->gemm = jb->n >= ctx->gemm_min && ctx->isa == DSM_ISA_AVX512BF16;
	jb->m_pad = round_up(jb->n, 16);
	int home = e->numa_home - 1;
	if (home >= 0 && ctx->n_nodes > 1) {
		/* Node home computes the whole expert from its own memory; the other nodes' parts stay empty. */
		if (home >= ctx->n_nodes || e->n_parts != 1)
			return dsm_fail(DSM_EARG, "expert in the memory of NUMA node %d (%d parts) on %d nodes", home,
					e->n_parts, ctx->n_nodes);
		jb->part[home] = e->part[0];
		ctx->node_bytes[home] += part_bytes(&e->part[0]);
		return 0;
	}
	for (int j = 0; j < ctx->n_nodes; j++) {
		size_t i1;
		int rc = expert_part(e, ctx->n_nodes, j, &jb->part[j]);
		if (rc < 0)
			return rc;
		dsm_expert_node_range(e->inter, ctx->n_nodes, j, &jb->i0[j], &i1);
		ctx->node_bytes[j] += part_bytes(&jb->part[j]);
	}
	return 0;
}

uint64_t dsm_expert_ctx_node_bytes(const struct dsm_expert_ctx *ctx, int j)
{
	return j >= 0 && j < ctx->n_nodes ? ctx->node_bytes[j] : 0;
}

int dsm_moe_layer(struct dsm_expert_ctx *ctx, const struct dsm_moe_args *a)
{
	size_t n_tok = a->n_tok, k = a->top_k, n_exp = a->n_experts;
	if (n_tok == 0)
		return 0;
	const struct dsm_expert_fp8 *first = a->shared;
	for (size_t i = 0; i < n_tok * k; i++) {
		int32_t id = a->expert_ids[i];
		if (id < 0 || (size_t)id >= n_exp)
			return dsm_fail(DSM_EARG, "moe layer: token %zu chose expert %d of %zu", i / k, id, n_exp);
		if (!a->experts[id])
			return dsm_fail(DSM_EMISSING, "moe layer: expert %d chosen but not given", id);
		if (!first)
			first = a->experts[id];
	}
	if (!first)
		return dsm_fail(DSM_EARG, "moe layer: no expert to run");
	size_t hidden = first->hidden;
	memset(ctx->node_bytes, 0, sizeof(ctx->node_bytes));

	/* Counting sort of (token, weight) by expert, in the head buffer. */
	size_t n_jobs_max = n_exp + 1;
	size_t head_bytes = round_up(n_jobs_max * sizeof(struct job), 64) + round_up((n_exp + 1) * sizeof(size_t), 64) +
			    round_up(n_tok * k * sizeof(int32_t), 64) + round_up(n_tok * k * sizeof(float), 64);
	int rc = reserve(&ctx->head, &ctx->head_size, head_bytes);
	if (rc < 0)
		return rc;
	struct bump head = { ctx->head, 0 };
	struct job *jobs = take(&head, n_jobs_max * sizeof(struct job));
	size_t *end = take(&head, (n_exp + 1) * sizeof(size_t));
	int32_t *tok = take(&head, n_tok * k * sizeof(int32_t));
	float *wt = take(&head, n_tok * k * sizeof(float));
	memset(end, 0, (n_exp + 1) * sizeof(size_t));
	for (size_t i = 0; i < n_tok * k; i++)
		end[a->expert_ids[i] + 1]++;
	for (size_t e = 0; e < n_exp; e++)
		end[e + 1] += end[e];
	/* end[e] is now the start of expert e's run; filling moves it to the end of the run. */
	for (size_t t = 0; t < n_tok; t++)
		for (size_t j = 0; j < k; j++) {
			int32_t id = a->expert_ids[t * k + j];
			for (size_t jj = 0; jj < j; jj++)
				if (a->expert_ids[t * k + jj] == id)
					return dsm_fail(DSM_EARG, "moe layer: token %zu chose expert %d twice", t, id);
			size_t at = end[id]++;
			tok[at] = (int32_t)t;
			wt[at] = a->expert_w[t * k + j];
		}
	struct layer L = { .jobs = jobs, .n_tok = n_tok, .hidden = hidden, .x = a->x, .y = a->y,
			   .accumulate = a->accumulate };
	for (size_t e = 0; e < n_exp; e++) {
		size_t start = e ? end[e - 1] : 0;
		if (end[e] == start)
			continue;
		struct job *jb = &jobs[L.n_jobs++];
		memset(jb, 0, sizeof(*jb));
		jb->n = end[e] - start;
		jb->tok = tok + start;
		jb->w = wt + start;
		rc = job_init(ctx, jb, a->experts[e], hidden);
		if (rc < 0)
			return dsm_fail_prefix(rc, "moe layer, expert %zu", e);
	}
	if (a->shared) {
		struct job *jb = &jobs[L.n_jobs++];
		memset(jb, 0, sizeof(*jb));
		jb->n = n_tok;
		rc = job_init(ctx, jb, a->shared, hidden);
		if (rc < 0)
			return dsm_fail_prefix(rc, "moe layer, shared expert");
	}
	return run_layer(ctx, &L);
}

int dsm_expert_ffn(struct dsm_expert_ctx *ctx, const struct dsm_expert_fp8 *e, size_t n, const float *x, float *y)
{
	if (n == 0)
		return 0;
	int rc = reserve(&ctx->head, &ctx->head_size, sizeof(struct job));
	if (rc < 0)
		return rc;
	struct job *jb = (struct job *)ctx->head;
	memset(jb, 0, sizeof(*jb));
	memset(ctx->node_bytes, 0, sizeof(ctx->node_bytes));
	jb->n = n;
	rc = job_init(ctx, jb, e, e->hidden);
	if (rc < 0)
		return rc;
	struct layer L = { .jobs = jb, .n_jobs = 1, .n_tok = n, .hidden = e->hidden, .x = x, .y = y };
	return run_layer(ctx, &L);
}

/* ---- One matmul --------------------------------------------------------------------------------------- */

struct matmul_job {
	struct dsm_expert_ctx *ctx;
	const struct dsm_fp8_mat *W;
	size_t r0, rows, n, per_size, stride, n_heads, x_head, ldx, y_head, ldy;
	size_t next; /* the next row (or head) a thread takes */
	const float *x;
	float *y;
	uint16_t *a;
	char *per;
	int gemm;
};

static void matmul_part(void *arg, int tid, int team)
{
	struct matmul_job *j = arg;
	struct dsm_expert_ctx *ctx = j->ctx;
	const struct dsm_fp8_mat *W = j->W;
	int N = ctx->n_threads;
	bind_self(ctx, tid, team);
	double t = dsm_wall_seconds();
	size_t a0, a1;
	if (!j->gemm) {
		for (size_t k; (k = take_rows(&j->next, j->rows, team, 16, j->rows, &a0)) > 0;)
			dsm_fp8_gemv_rows(ctx->isa, W, j->r0 + a0, j->r0 + a0 + k, j->x, W->cols, j->n, j->y + a0, j->rows,
					  j->per + (size_t)tid * j->per_size);
	} else {
		for (int v = tid; v < N; v += team) {
			split((W->cols + 1) / 2, N, v, &a0, &a1);
			dsm_bf16_pack(j->x, W->cols, j->n, W->cols, a0, a1, j->a);
		}
		worked(ctx, tid, t);
		cpu_par_barrier(team);
		t = dsm_wall_seconds();
		for (int v = tid; v < N; v += team) {
			void *tile = j->per + (size_t)v * j->per_size;
			float *tmp = (float *)((char *)tile + dsm_fp8_gemm_scratch_size());
			split(j->rows, N, v, &a0, &a1);
			for (size_t c = a0; c < a1; c += GEMM_CHUNK) {
				size_t c1 = min_sz(c + GEMM_CHUNK, a1);
				dsm_fp8_gemm_rows(W, j->r0 + c, j->r0 + c1, j->a, j->n, tmp, round_up(j->n, 16), tile);
				dsm_f32_transpose(tmp, round_up(j->n, 16), c1 - c, j->n, j->y + c, j->rows);
			}
		}
	}
	worked(ctx, tid, t);
}

int dsm_fp8_matmul_rows(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t r0, size_t r1, size_t n,
			const float *x, float *y)
{
	if (r0 > r1 || r1 > W->rows)
		return dsm_fail(DSM_EARG, "fp8 matmul: rows [%zu, %zu) of a %zu-row matrix", r0, r1, W->rows);
	if (n == 0 || r0 == r1)
		return 0;
	int N = ctx->n_threads;
	int gemm = n >= ctx->gemm_min && ctx->isa == DSM_ISA_AVX512BF16;
	size_t m_pad = round_up(n, 16);
	size_t per_size = gemm ? dsm_fp8_gemm_scratch_size() + GEMM_CHUNK * m_pad * sizeof(float) :
				 dsm_fp8_gemv_scratch_size(W->cols);
	size_t a_size = gemm ? round_up(dsm_bf16_pack_size(n, W->cols), 64) : 0;
	int slots = N > cpu_par_threads() ? N : cpu_par_threads(); /* a held team may be larger */
	int rc = reserve(&ctx->buf, &ctx->buf_size, a_size + (size_t)slots * per_size);
	if (rc < 0)
		return rc;
	struct matmul_job j = { .ctx = ctx, .W = W, .r0 = r0, .rows = r1 - r0, .n = n, .per_size = per_size, .x = x,
				.y = y, .a = (uint16_t *)ctx->buf, .per = ctx->buf + a_size, .gemm = gemm };
	double t_start = dsm_wall_seconds();
	int team = cpu_par(N, matmul_part, &j);
	dsm_wait_end(&ctx->wait, team, dsm_wall_seconds() - t_start);
	return 0;
}

/* Heads as the threads come for them; each head is one thread's rows in the order matmul takes them. */
static void heads_part(void *arg, int tid, int team)
{
	struct matmul_job *j = arg;
	struct dsm_expert_ctx *ctx = j->ctx;
	bind_self(ctx, tid, team);
	double t = dsm_wall_seconds();
	void *scratch = j->per + (size_t)tid * j->per_size;
	for (size_t h; (h = next_chunk(&j->next)) < j->n_heads;) {
		size_t r0 = j->r0 + h * j->stride;
		dsm_fp8_gemv_rows(ctx->isa, j->W, r0, r0 + j->rows, j->x + h * j->x_head, j->ldx, j->n,
				  j->y + h * j->y_head, j->ldy, scratch);
	}
	worked(ctx, tid, t);
}

int dsm_fp8_matmul_heads(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t row0, size_t stride,
			 size_t rows, size_t n_heads, size_t n, const float *x, size_t ldx, size_t x_head, float *y,
			 size_t ldy, size_t y_head)
{
	if (n == 0 || n_heads == 0)
		return 0;
	if (n > 8 || n >= ctx->gemm_min || row0 + (n_heads - 1) * stride + rows > W->rows)
		return dsm_fail(DSM_EARG, "fp8 matmul heads: %zu tokens, %zu heads of %zu rows", n, n_heads, rows);
	int N = ctx->n_threads;
	size_t per_size = dsm_fp8_gemv_scratch_size(W->cols);
	int slots = N > cpu_par_threads() ? N : cpu_par_threads();
	int rc = reserve(&ctx->buf, &ctx->buf_size, (size_t)slots * per_size);
	if (rc < 0)
		return rc;
	struct matmul_job j = { .ctx = ctx, .W = W, .r0 = row0, .rows = rows, .n = n, .per_size = per_size,
				.stride = stride, .n_heads = n_heads, .x = x, .ldx = ldx, .x_head = x_head, .y = y,
				.ldy = ldy, .y_head = y_head, .per = ctx->buf };
	double t_start = dsm_wall_seconds();
	int team = cpu_par(n_heads > 1 ? N : 1, heads_part, &j);
	dsm_wait_end(&ctx->wait, team, dsm_wall_seconds() - t_start);
	return 0;
}

int dsm_fp8_matmul(struct dsm_expert_ctx *ctx, const struct dsm_fp8_mat *W, size_t n, const float *x, float *y)
{
	return dsm_fp8_matmul_rows(ctx, W, 0, W->rows, n, x, y);
}
