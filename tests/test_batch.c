/* Many sequences in one session (docs/engine.md): a sequence's logits in a batch equal its logits alone and
 * its greedy continuation is the same, for batches of 1 to 16 sequences of mixed lengths, joining and
 * leaving mid-way, forked from one another, with a pool that runs out; and the bad inputs of the
 * batched calls give clear errors that disturb nothing else. On the tiny checkpoint, whose index_topk (16)
 * is shorter than most prompts here, so the sparse attention really selects. */
#include "engine.h"
#include "error.h"
#include "generate.h"
#include "mkmodel.h"
#include "test_util.h"

#include <string.h>
#include <sys/stat.h>

#define MAX_REQ 40
#define MAX_GEN 32

/* What one request produced: its tokens and the logits of every decode step, by generated index. */
struct capture {
	int64_t V, n_prompt;
	int n;
	float *logits;          /* [MAX_GEN, V]: logits after feeding generated token i - 1, at index i */
	int have[MAX_GEN];
};

static int on_logits(void *user, int64_t pos, int64_t n, const float *logits)
{
	struct capture *c = user;
	int64_t i = pos - c->n_prompt + 1; /* decode step i: logits of the position of generated token i - 1 */
	if (n == 1 && i >= 1 && i < MAX_GEN) {
		memcpy(c->logits + (size_t)i * (size_t)c->V, logits, sizeof(float) * (size_t)c->V);
		c->have[i] = 1;
	}
	return 0;
}

/* The bf16 comparison forces the batch's discrete choices (experts, indexer selection) to those each request
 * made alone, as the reference comparisons do (docs/forward.md): BF16 rounding differs between one row and
 * many, and flips near ties on a random model. */
struct choice {
	int req, layer, kind;   /* kind 0: routing, 1: selection */
	int64_t pos;
	int n;
	int32_t v[64];
};

static struct {
	int on, recording, cur;                 /* recording: the alone run of request cur */
	const struct dsm_scheduler *sc;         /* forcing: the batch, to find a sequence's request */
	const int *ids;
	int n_req;
	const int *seq_req;                     /* forcing without a scheduler: request of each sequence */
	struct choice *rows;
	size_t n, cap;
} forced;

static int request_of(int seq)
{
	if (forced.recording)
		return forced.cur;
	if (forced.seq_req)
		return forced.seq_req[seq];
	for (int i = 0; i < forced.n_req; i++)
		if (dsm_scheduler_seq(forced.sc, forced.ids[i]) == seq)
			return i;
	return -1;
}

static void record(int kind, int seq, int layer, int64_t pos, const int32_t *v, int64_t n)
{
	if (!forced.on || !forced.recording || n > 64)
		return;
	if (forced.n == forced.cap) {
		forced.cap = forced.cap ? 2 * forced.cap : 1024;
		forced.rows = realloc(forced.rows, sizeof *forced.rows * forced.cap);
	}
	struct choice *c = &forced.rows[forced.n++];
	*c = (struct choice){ .req = request_of(seq), .layer = layer, .kind = kind, .pos = pos, .n = (int)n };
	memcpy(c->v, v, sizeof(int32_t) * (size_t)n);
}

static int force(int kind, int seq, int layer, int64_t pos, int32_t *v, int64_t n)
{
	if (!forced.on || forced.recording)
		return 0;
	int req = request_of(seq);
	for (size_t i = 0; i < forced.n; i++) {
		const struct choice *c = &forced.rows[i];
		if (c->req == req && c->layer == layer && c->pos == pos && c->kind == kind && c->n == n) {
			memcpy(v, c->v, sizeof(int32_t) * (size_t)n);
			return 1;
		}
	}
	return 0;
}

static void on_route(void *u, int seq, int layer, int64_t pos, const int32_t *idx, const float *w, int k)
{
	record(0, seq, layer, pos, idx, k);
}

static void on_select(void *u, int seq, int layer, int64_t pos, const int32_t *sel, int64_t n)
{
	record(1, seq, layer, pos, sel, n);
}

static int force_route(void *u, int seq, int layer, int64_t pos, int32_t *idx, int k)
{
	return force(0, seq, layer, pos, idx, k);
}

static int force_select(void *u, int seq, int layer, int64_t pos, int32_t *sel, int64_t n)
{
	return force(1, seq, layer, pos, sel, n);
}

struct spec {
	int n_prompt, max_tokens, prefix_of, join_step;
	int32_t prompt[64];
};

/* Prompt of request i: pseudo-random ids; requests with prefix_of share a start with that one. */
static void make_specs(struct spec *sp, int n, int vocab, int forks)
{
	uint64_t x = 12345;
	for (int i = 0; i < n; i++) {
		struct spec *s = &sp[i];
		s->n_prompt = 1 + (i * 7) % 40;
		s->max_tokens = 3 + (i * 5) % 12;
		s->prefix_of = -1;
		s->join_step = 0;
		for (int j = 0; j < s->n_prompt; j++) {
			x = x * 6364136223846793005ull + 1442695040888963407ull;
			s->prompt[j] = (int32_t)((x >> 33) % (uint64_t)vocab);
		}
		if (forks && i >= 2 && i % 3 == 2) {
			/* the same prompt as request i - 1 (starts from its logits), or its first part and more */
			struct spec *p = &sp[i - 1];
			int keep = i % 2 ? p->n_prompt : (p->n_prompt + 1) / 2;
			memcpy(s->prompt, p->prompt, sizeof(int32_t) * (size_t)keep);
			if (s->n_prompt < keep)
				s->n_prompt = keep;
			if (i % 2)
				s->n_prompt = keep;
			s->prefix_of = i - 1;
		}
	}
}

static int run(struct dsm_session *s, const struct spec *sp, int n, int64_t chunk, int stagger, struct capture *cap,
	       struct dsm_generate_result *res, int *rcs)
{
	struct dsm_scheduler *sc;
	struct dsm_scheduler_options so = { .prefill_chunk = chunk };
	int rc = dsm_scheduler_init(&sc, s, &so);
	if (rc < 0)
		return rc;
	int ids[MAX_REQ], added = 0, step = 0;
	forced.sc = sc;
	forced.ids = ids;
	forced.n_req = n;
	for (;;) {
		while (added < n && (!stagger || sp[added].join_step <= step)) {
			const struct spec *p = &sp[added];
			struct dsm_request q = { .prompt = p->prompt, .n_prompt = p->n_prompt, .seq = -1,
				.prefix_of = p->prefix_of >= 0 ? ids[p->prefix_of] : -1,
				.params = { .max_tokens = p->max_tokens, .eos_id = -1, .sampling = { .top_p = 1 } },
				.io = { .user = &cap[added], .on_logits = on_logits } };
			if ((ids[added] = dsm_scheduler_add(sc, &q)) < 0) {
				dsm_scheduler_free(sc);
				return ids[added];
			}
			added++;
		}
		rc = dsm_scheduler_step(sc);
		step++;
		if (rc < 0 || (rc == 0 && added == n))
			break;
	}
	for (int i = 0; i < n && rc == 0; i++) {
		const struct dsm_generate_result *r = dsm_scheduler_result(sc, ids[i], &rcs[i]);
		res[i] = *r;
		res[i].ids = malloc(sizeof(int32_t) * (size_t)(r->n + 1));
		memcpy(res[i].ids, r->ids, sizeof(int32_t) * (size_t)r->n);
		res[i].text = (struct dsm_text){ 0 };
	}
	dsm_scheduler_free(sc);
	return rc;
}

static struct capture *captures(int n, int64_t V)
{
	struct capture *c = calloc((size_t)n, sizeof *c);
	for (int i = 0; i < n; i++) {
		c[i].V = V;
		c[i].logits = calloc((size_t)MAX_GEN * (size_t)V, sizeof(float));
	}
	return c;
}

static void captures_free(struct capture *c, int n)
{
	for (int i = 0; i < n; i++)
		free(c[i].logits);
	free(c);
}

/* Feeds every request its prompt (chunks of `chunk`) then the tokens it generated alone (teacher forcing),
 * all of them in each step, capturing the logits after each generated token. */
static int run_teacher(struct dsm_session *s, const struct spec *sp, int n, int64_t chunk,
		       const struct dsm_generate_result *ra, struct capture *cap)
{
	int64_t V = dsm_session_model(s)->cfg.vocab_size, fed[MAX_REQ] = { 0 }, len[MAX_REQ];
	int32_t stream[MAX_REQ][64 + MAX_GEN];
	int seq_req[MAX_REQ], seq[MAX_REQ], rc = 0;
	float *logits = malloc(sizeof(float) * (size_t)V * (size_t)n);
	struct dsm_step_seq q[MAX_REQ];
	forced.seq_req = seq_req;
	for (int i = 0; i < n; i++) {
		seq[i] = dsm_session_add(s, -1, 0);
		seq_req[seq[i]] = i;
		memcpy(stream[i], sp[i].prompt, sizeof(int32_t) * (size_t)sp[i].n_prompt);
		memcpy(stream[i] + sp[i].n_prompt, ra[i].ids, sizeof(int32_t) * (size_t)(ra[i].n - 1));
		len[i] = sp[i].n_prompt + ra[i].n - 1;
	}
	for (;;) {
		int m = 0;
		int64_t budget = 64;
		for (int i = 0; i < n && budget > 0; i++) {
			if (fed[i] == len[i])
				continue;
			int64_t take = fed[i] < sp[i].n_prompt ? sp[i].n_prompt - fed[i] : 1;
			take = take < chunk ? take : chunk;
			take = take < budget ? take : budget;
			q[m++] = (struct dsm_step_seq){ .seq = seq[i], .tokens = stream[i] + fed[i], .n = take,
							.mode = DSM_LOGITS_LAST, .logits = logits + (size_t)i * (size_t)V };
			budget -= take;
		}
		if (!m || (rc = dsm_session_step(s, q, m)) < 0)
			break;
		for (int j = 0; j < m; j++) {
			int i = seq_req[q[j].seq];
			fed[i] += q[j].n;
			int64_t k = fed[i] - sp[i].n_prompt; /* logits after generated token k - 1 */
			if (q[j].rc == 0 && k >= 1 && k < MAX_GEN) {
				memcpy(cap[i].logits + (size_t)k * (size_t)V, logits + (size_t)i * (size_t)V, sizeof(float) * (size_t)V);
				cap[i].have[k] = 1;
			}
		}
	}
	for (int i = 0; i < n; i++)
		dsm_session_remove(s, seq[i]);
	forced.seq_req = NULL;
	free(logits);
	return rc;
}

/* Runs specs alone one by one, then together; compares. Returns the worst NMSE. With teacher, the batch is
 * fed the tokens each request generated alone, and only the logits are compared: the BF16 kernels for
 * one row and for many round differently, which flips near-tied greedy choices on a random model. */
static double compare(struct dsm_session *s, struct spec *sp, int n, int64_t chunk, int stagger, double limit,
		      const char *what, int teacher)
{
	int64_t V = dsm_session_model(s)->cfg.vocab_size;
	struct capture *alone = captures(n, V), *together = captures(n, V);
	struct dsm_generate_result ra[MAX_REQ], rt[MAX_REQ];
	int rca[MAX_REQ], rct[MAX_REQ];
	double worst = 0;
	forced.n = 0;
	forced.recording = 1;
	for (int i = 0; i < n; i++) {
		forced.cur = i;
		struct spec one = sp[i];
		one.prefix_of = -1;
		alone[i].n_prompt = together[i].n_prompt = sp[i].n_prompt;
		int rc = run(s, &one, 1, 0, 0, &alone[i], &ra[i], &rca[i]);
		CHECK(rc == 0 && rca[i] == 0, "%s: request %d alone: %s", what, i, dsm_errmsg());
	}
	forced.recording = 0;
	int rc = teacher ? run_teacher(s, sp, n, chunk, ra, together) : run(s, sp, n, chunk, stagger, together, rt, rct);
	CHECK(rc == 0, "%s: the batch failed: %s", what, dsm_errmsg());
	for (int i = 0; i < n && rc == 0; i++) {
		if (!teacher) {
			CHECK(rct[i] == 0, "%s: request %d failed in the batch", what, i);
			CHECK(rt[i].n == ra[i].n && memcmp(rt[i].ids, ra[i].ids, sizeof(int32_t) * (size_t)ra[i].n) == 0,
			      "%s: request %d: the greedy continuation differs in the batch", what, i);
			free(rt[i].ids);
		}
		for (int k = 1; k < MAX_GEN && k < ra[i].n; k++) {
			CHECK(alone[i].have[k] && together[i].have[k], "%s: request %d: no logits at step %d", what, i, k);
			double e = nmse(together[i].logits + (size_t)k * (size_t)V, alone[i].logits + (size_t)k * (size_t)V,
					(size_t)V);
			worst = e > worst ? e : worst;
		}
	}
	for (int i = 0; i < n; i++)
		free(ra[i].ids);
	CHECK(worst <= limit, "%s: logits in the batch vs alone: worst NMSE %.3g > %.3g", what, worst, limit);
	printf("%-48s %2d sequences: worst NMSE %.3g\n", what, n, worst);
	captures_free(alone, n);
	captures_free(together, n);
	return worst;
}

static struct dsm_engine *open_engine(const char *dir, enum dsm_precision prec, enum dsm_dtype kv, int max_seqs,
				      int64_t ctx, uint64_t pool)
{
	struct dsm_engine_options o;
	dsm_engine_options_default(&o);
	o.model.precision = prec;
	o.model.threads = 2;
	o.model.no_bind = 1;
	o.session.kv_dtype = kv;
	o.session.max_seqs = max_seqs;
	o.session.ctx = ctx;
	o.session.max_batch = 64;
	o.session.kv_pool_bytes = pool;
	o.no_populate = 1;
	o.session.hooks = (struct dsm_session_hooks){ .on_route = on_route, .on_select = on_select,
						      .force_route = force_route, .force_select = force_select };
	struct dsm_engine *e = NULL;
	int rc = dsm_engine_open(&e, dir, &o);
	CHECK(rc == 0, "engine: %s", dsm_errmsg());
	return e;
}

/* The pool runs out: the request that asked fails with DSM_EKVFULL, the others run as alone. */
static void pool_runs_out(const char *dir)
{
	/* 2 blocks a sequence (ctx 128); a pool of 4 blocks: two long requests fit, a third does not */
	struct dsm_engine *e = open_engine(dir, DSM_PRECISION_F32, DSM_F32, 3, 128, 0);
	if (!e)
		return;
	int64_t total, free_blocks;
	uint64_t block_bytes;
	dsm_session_kv_blocks(dsm_engine_session(e), &total, &free_blocks, &block_bytes);
	dsm_engine_close(e);
	e = open_engine(dir, DSM_PRECISION_F32, DSM_F32, 3, 128, 4 * block_bytes);
	if (!e)
		return;
	struct dsm_session *s = dsm_engine_session(e);
	int64_t V = dsm_session_model(s)->cfg.vocab_size;
	struct spec sp[3];
	make_specs(sp, 3, (int)V, 0);
	for (int i = 0; i < 3; i++) {
		sp[i].n_prompt = 60;      /* one block each for the prompt ... */
		sp[i].max_tokens = 30;    /* ... and a second one once they pass 64 positions, all at once */
		for (int j = 0; j < 60; j++)
			sp[i].prompt[j] = (int32_t)((i * 31 + j * 17) % V);
	}
	struct capture *alone = captures(3, V), *together = captures(3, V);
	struct dsm_generate_result ra[3], rt[3];
	int rca[3], rct[3];
	for (int i = 0; i < 3; i++) {
		alone[i].n_prompt = together[i].n_prompt = 60;
		CHECK(run(s, &sp[i], 1, 0, 0, &alone[i], &ra[i], &rca[i]) == 0 && rca[i] == 0, "pool: alone %d", i);
	}
	CHECK(run(s, sp, 3, 0, 0, together, rt, rct) == 0, "pool: the batch failed as a whole: %s", dsm_errmsg());
	int full = 0;
	for (int i = 0; i < 3; i++) {
		if (rct[i] == DSM_EKVFULL) {
			full++;
			continue;
		}
		CHECK(rct[i] == 0, "pool: request %d: unexpected error %d", i, rct[i]);
		CHECK(rt[i].n == ra[i].n && memcmp(rt[i].ids, ra[i].ids, sizeof(int32_t) * (size_t)ra[i].n) == 0,
		      "pool: request %d differs from alone after another one ran out of blocks", i);
	}
	CHECK(full >= 1, "pool: 6 blocks asked of a pool of 4, but no request ran out");
	dsm_session_kv_blocks(s, &total, &free_blocks, &block_bytes);
	CHECK(total == 4 && free_blocks == 4, "pool: %lld of %lld blocks free after every request ended",
	      (long long)free_blocks, (long long)total);
	for (int i = 0; i < 3; i++) {
		free(ra[i].ids);
		free(rt[i].ids);
	}
	captures_free(alone, 3);
	captures_free(together, 3);
	dsm_engine_close(e);
	printf("pool of 4 blocks, 3 sequences needing 2 each: %d ran out, the others as alone\n", full);
}

/* The errors of the batched calls, each leaving the session usable. */
static void bad_input(const char *dir)
{
	struct dsm_engine *e = open_engine(dir, DSM_PRECISION_F32, DSM_F32, 2, 128, 0);
	if (!e)
		return;
	struct dsm_session *s = dsm_engine_session(e);
	int32_t tok[4] = { 1, 2, 3, 4 };
	float *logits = malloc(sizeof(float) * (size_t)dsm_session_model(s)->cfg.vocab_size);
	CHECK(dsm_session_forward(s, tok, 4, DSM_LOGITS_LAST, logits) == 0, "forward: %s", dsm_errmsg());
	CHECK(dsm_session_add(s, 0, 5) == DSM_EARG && strstr(dsm_errmsg(), "holds 4"),
	      "a fork past the parent's end: %s", dsm_errmsg());
	CHECK(dsm_session_add(s, 7, 0) == DSM_EARG, "a fork of no sequence");
	int child = dsm_session_add(s, 0, 2);
	CHECK(child == 1, "a fork at 2: %d %s", child, dsm_errmsg());
	CHECK(dsm_session_add(s, -1, 0) == DSM_EARG && strstr(dsm_errmsg(), "max-seqs"),
	      "more sequences than max_seqs: %s", dsm_errmsg());
	struct dsm_step_seq q[2] = { { .seq = 0, .tokens = tok, .n = 0 } };
	CHECK(dsm_session_step(s, q, 1) == DSM_EARG && strstr(dsm_errmsg(), "no tokens"), "a step with no tokens: %s",
	      dsm_errmsg());
	CHECK(dsm_session_step(s, q, 0) == DSM_EARG, "a step of no sequences");
	/* a bad part fails alone; the good one runs */
	q[0] = (struct dsm_step_seq){ .seq = 0, .tokens = tok, .n = 1, .mode = DSM_LOGITS_LAST, .logits = logits };
	q[1] = (struct dsm_step_seq){ .seq = 5, .tokens = tok, .n = 1 };
	CHECK(dsm_session_step(s, q, 2) == 0 && q[0].rc == 0 && q[1].rc == DSM_EARG && strstr(q[1].error, "no sequence 5"),
	      "a step with a bad sequence: %d %d '%s'", q[0].rc, q[1].rc, q[1].error);
	CHECK(dsm_session_seq_pos(s, 0) == 5 && dsm_session_seq_pos(s, child) == 2, "positions after the step");
	/* the fork's parent removed: the child keeps the shared blocks */
	CHECK(dsm_session_remove(s, 0) == 0, "remove the parent");
	q[0] = (struct dsm_step_seq){ .seq = child, .tokens = tok + 2, .n = 2, .mode = DSM_LOGITS_LAST, .logits = logits };
	CHECK(dsm_session_step(s, q, 1) == 0 && q[0].rc == 0, "the child after its parent left: %s", q[0].error);
	CHECK(dsm_session_remove(s, 0) == DSM_EARG, "remove twice");
	free(logits);
	dsm_engine_close(e);
	/* a pool too small for one sequence's context */
	struct dsm_engine_options o;
	dsm_engine_options_default(&o);
	o.model.threads = 2;
	o.model.no_bind = 1;
	o.session.ctx = 1024;
	o.session.kv_pool_bytes = 1 << 16;
	o.no_populate = 1;
	int rc = dsm_engine_open(&e, dir, &o);
	CHECK(rc == DSM_EARG && strstr(dsm_errmsg(), "one sequence's context"), "a pool too small: %d %s", rc,
	      dsm_errmsg());
}

int main(void)
{
	const char *dir = "tests/test_batch.d";
	mkdir("tests", 0755);
	struct mkmodel_options mo = { .config = mkmodel_preset("tiny")->config, .seed = 3, .shard_bytes = 1u << 20,
				      .quiet = 1 };
	if (mkmodel_write(&mo, dir) < 0) {
		fprintf(stderr, "writing the tiny checkpoint: %s\n", dsm_errmsg());
		return 99;
	}
	struct dsm_engine *e = open_engine(dir, DSM_PRECISION_F32, DSM_F32, 16, 256, 0);
	if (!e)
		return TEST_EXIT();
	struct dsm_session *s = dsm_engine_session(e);
	int V = (int)dsm_session_model(s)->cfg.vocab_size;
	struct spec sp[MAX_REQ];
	static const int sizes[] = { 1, 16 }; /* and every size between as requests join and leave below */
	for (int i = 0; i < 2; i++) {
		make_specs(sp, sizes[i], V, 0);
		compare(s, sp, sizes[i], 0, 0, 1e-10, "f32: together from the start", 0);
	}
	make_specs(sp, 16, V, 0);
	compare(s, sp, 16, 5, 0, 1e-10, "f32: prompts in chunks of 5 tokens", 0);
	make_specs(sp, 24, V, 0);
	for (int i = 0; i < 24; i++)
		sp[i].join_step = (i * 3) % 17;
	compare(s, sp, 24, 12, 1, 1e-10, "f32: joining and leaving mid-way (24 over 16)", 0);
	make_specs(sp, 12, V, 1);
	compare(s, sp, 12, 0, 0, 1e-10, "f32: forks of a shared prompt", 0);
	make_specs(sp, 12, V, 1);
	for (int i = 0; i < 12; i++)
		sp[i].join_step = i;
	compare(s, sp, 12, 7, 1, 1e-10, "f32: forks joining later", 0);
	dsm_engine_close(e);

	/* bf16, BF16 cache: the tokens and choices each request made alone, fed to the batch; no forks (a fork's
	 * prefix was computed by another request, whose choices on it may differ in BF16) */
	e = open_engine(dir, DSM_PRECISION_BF16, DSM_BF16, 16, 256, 0);
	if (e) {
		forced.on = 1;
		make_specs(sp, 16, V, 0);
		compare(dsm_engine_session(e), sp, 16, 5, 0, 1e-2, "bf16 (tokens and choices forced), chunks of 5", 1);
		forced.on = 0;
		dsm_engine_close(e);
	}
	free(forced.rows);
	pool_runs_out(dir);
	bad_input(dir);
	return TEST_EXIT();
}
