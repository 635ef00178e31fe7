/* The expert cache policies against a trace whose hits and misses were worked out by hand (see the
 * tables below), plus prefetch accounting, cache off, full caches, failed loads and per-layer counters. */
#include "cache.h"
#include "error.h"
#include "test_util.h"

#include <string.h>

/* One layer, six experts, three slots. Each access takes the expert, loads it on a miss, releases it. */
static const int trace[] = { 0, 1, 2, 0, 3, 0, 1, 4, 0, 1, 2, 5, 0, 1 };
#define TRACE_LEN ((int)(sizeof trace / sizeof trace[0]))

/* H = hit, M = miss.
 * LRU:    0M 1M 2M 0H 3M(evicts 1) 0H 1M(2) 4M(3) 0H 1H 2M(4) 5M(0) 0M(1) 1M(2)            4 hits
 * LFU:    counts survive eviction, ties to the least recent:
 *         0M 1M 2M 0H 3M(1: count 1, older than 2) 0H 1M(2) 4M(3) 0H 1H 2M(4) 5M(2: count 2 < 3 < 5)
 *         0H 1H                                                                            6 hits
 * pinned: expert 0 pinned (hottest), the other two slots lru:
 *         0M 1M 2M 0H 3M(1) 0H 1M(2) 4M(3) 0H 1H 2M(4) 5M(1) 0H 1M(2)                      5 hits */
static const char *const expect_lru = "MMMHMHMMHHMMMM";
static const char *const expect_lfu = "MMMHMHMMHHMMHH";
static const char *const expect_pinned = "MMMHMHMMHHMMHM";

static void run_trace(const char *name, struct dsm_cache *c, const char *expect, int layer)
{
	char got[TRACE_LEN + 1];
	for (int i = 0; i < TRACE_LEN; i++) {
		int slot;
		int r = dsm_cache_acquire(c, layer, trace[i], 0, &slot);
		CHECK(r == DSM_CACHE_HIT || r == DSM_CACHE_MISS, "%s: access %d: result %d", name, i, r);
		got[i] = r == DSM_CACHE_HIT ? 'H' : 'M';
		if (r == DSM_CACHE_MISS)
			dsm_cache_loaded(c, slot, 1);
		if (slot >= 0)
			dsm_cache_release(c, slot);
	}
	got[TRACE_LEN] = '\0';
	CHECK(strcmp(got, expect) == 0, "%s: got %s, want %s", name, got, expect);
	int hits = 0;
	for (int i = 0; i < TRACE_LEN; i++)
		hits += expect[i] == 'H';
	const struct dsm_cache_layer_stats *s = dsm_cache_layer_stats(c, layer);
	CHECK(s->hits == (uint64_t)hits && s->misses == (uint64_t)(TRACE_LEN - hits), "%s: stats %llu/%llu", name,
	      (unsigned long long)s->hits, (unsigned long long)s->misses);
}

static struct dsm_cache *make(enum dsm_cache_policy p, unsigned slots, unsigned pinned, int keep, int layers)
{
	struct dsm_cache *c;
	struct dsm_cache_opts o = { .policy = p, .n_slots = slots, .n_pinned = pinned, .keep = keep };
	int rc = dsm_cache_new(&c, layers, 6, &o);
	CHECK(rc == 0, "cache_new: %s", dsm_errmsg());
	return rc == 0 ? c : NULL;
}

static void test_policies(void)
{
	struct dsm_cache *c = make(DSM_CACHE_LRU, 3, 0, 1, 2);
	run_trace("lru", c, expect_lru, 1);
	/* Layer 0 saw nothing: counters are per layer. */
	CHECK(dsm_cache_layer_stats(c, 0)->hits == 0 && dsm_cache_layer_stats(c, 0)->misses == 0, "layer 0 stats");
	dsm_cache_free(c);

	c = make(DSM_CACHE_LFU, 3, 0, 1, 1);
	run_trace("lfu", c, expect_lfu, 0);
	dsm_cache_free(c);

	c = make(DSM_CACHE_PINNED, 3, 1, 1, 1);
	double hot[6] = { 10, 1, 1, 1, 1, 1 };
	CHECK(dsm_cache_set_hotness(c, hot) == 0, "hotness");
	CHECK(dsm_cache_is_pinned(c, 0, 0) && !dsm_cache_is_pinned(c, 0, 1), "pinned set");
	run_trace("pinned", c, expect_pinned, 0);
	dsm_cache_free(c);

	/* Pinned without hotness: lru until repin picks the most used experts (0: 5 uses, 1: 4 uses). */
	c = make(DSM_CACHE_PINNED, 3, 2, 1, 1);
	run_trace("pinned before repin", c, expect_lru, 0);
	dsm_cache_repin(c);
	CHECK(dsm_cache_is_pinned(c, 0, 0) && dsm_cache_is_pinned(c, 0, 1) && !dsm_cache_is_pinned(c, 0, 2),
	      "repin from counts");
	dsm_cache_free(c);

	/* Cache off: every use reads. */
	c = make(DSM_CACHE_LRU, 3, 0, 0, 1);
	run_trace("off", c, "MMMMMMMMMMMMMM", 0);
	dsm_cache_free(c);
}

static void test_states(void)
{
	struct dsm_cache *c = make(DSM_CACHE_LRU, 2, 0, 1, 2);
	int a, b, d;
	CHECK(dsm_cache_acquire(c, 0, 1, 0, &a) == DSM_CACHE_MISS, "miss");
	CHECK(dsm_cache_acquire(c, 0, 1, 0, &b) == DSM_CACHE_PENDING && b == a, "pending while loading");
	CHECK(dsm_cache_acquire(c, 0, 2, 0, &d) == DSM_CACHE_MISS, "second miss");
	int e;
	CHECK(dsm_cache_acquire(c, 1, 3, 0, &e) == DSM_CACHE_FULL && e == -1, "full while all referenced");
	dsm_cache_loaded(c, d, 0); /* the read failed: the slot empties */
	CHECK(dsm_cache_find(c, 0, 2) == -1 && !dsm_cache_ready(c, d), "failed load");
	dsm_cache_release(c, d);
	CHECK(dsm_cache_acquire(c, 1, 3, 0, &e) == DSM_CACHE_MISS && e == d, "slot of the failed load reused");
	int l, x;
	dsm_cache_slot_key(c, e, &l, &x);
	CHECK(l == 1 && x == 3, "slot key %d %d", l, x);
	dsm_cache_loaded(c, a, 1);
	dsm_cache_loaded(c, e, 1);
	dsm_cache_release(c, a);
	dsm_cache_release(c, b);
	dsm_cache_release(c, e);
	CHECK(dsm_cache_acquire(c, 9, 0, 0, &e) == DSM_EARG, "layer out of range");
	CHECK(dsm_cache_acquire(c, 0, 6, 0, &e) == DSM_EARG, "expert out of range");
	dsm_cache_free(c);

	/* Prefetch: counted apart; a used prefetch is a prefetch hit, an evicted one is wasted. */
	c = make(DSM_CACHE_LRU, 2, 0, 0, 1);
	CHECK(dsm_cache_acquire(c, 0, 4, DSM_CACHE_PREFETCH, &a) == DSM_CACHE_MISS, "prefetch miss");
	dsm_cache_loaded(c, a, 1);
	dsm_cache_release(c, a);
	CHECK(dsm_cache_find(c, 0, 4) == a, "cache off keeps an unused prefetch");
	CHECK(dsm_cache_acquire(c, 0, 4, 0, &b) == DSM_CACHE_HIT && b == a, "use of the prefetch");
	dsm_cache_release(c, b);
	CHECK(dsm_cache_find(c, 0, 4) == -1, "cache off drops a used expert");
	CHECK(dsm_cache_acquire(c, 0, 5, DSM_CACHE_PREFETCH, &a) == DSM_CACHE_MISS, "prefetch 5");
	dsm_cache_loaded(c, a, 1);
	dsm_cache_release(c, a);
	CHECK(dsm_cache_acquire(c, 0, 1, 0, &a) == DSM_CACHE_MISS, "miss 1");
	dsm_cache_loaded(c, a, 1);
	CHECK(dsm_cache_acquire(c, 0, 2, 0, &b) == DSM_CACHE_FULL, "an unused prefetch is kept");
	CHECK(dsm_cache_acquire(c, 0, 2, DSM_CACHE_STEAL, &b) == DSM_CACHE_MISS, "miss 2 steals the unused prefetch");
	dsm_cache_loaded(c, b, 1);
	dsm_cache_release(c, a);
	dsm_cache_release(c, b);
	const struct dsm_cache_layer_stats *s = dsm_cache_layer_stats(c, 0);
	CHECK(s->prefetches == 2 && s->prefetch_hits == 1 && s->prefetch_wasted == 1 && s->hits == 1 &&
	      s->misses == 2, "prefetch stats %llu %llu %llu %llu %llu", (unsigned long long)s->prefetches,
	      (unsigned long long)s->prefetch_hits, (unsigned long long)s->prefetch_wasted,
	      (unsigned long long)s->hits, (unsigned long long)s->misses);
	struct dsm_cache_layer_stats t;
	dsm_cache_total_stats(c, &t);
	CHECK(t.misses == 2, "total");
	dsm_cache_reset_stats(c);
	CHECK(dsm_cache_layer_stats(c, 0)->misses == 0, "reset");
	dsm_cache_free(c);

	/* The pinned policy keeps one slot for unpinned experts however many are asked to be pinned. */
	c = make(DSM_CACHE_PINNED, 2, 5, 1, 1);
	double hot[6] = { 6, 5, 4, 3, 2, 1 };
	dsm_cache_set_hotness(c, hot);
	CHECK(dsm_cache_is_pinned(c, 0, 0) && !dsm_cache_is_pinned(c, 0, 1), "pinned capped at slots - 1");
	dsm_cache_free(c);

	CHECK(dsm_cache_policy_parse("lru") == DSM_CACHE_LRU && dsm_cache_policy_parse("frequency-pinned") ==
	      DSM_CACHE_PINNED && dsm_cache_policy_parse("mru") == -1, "policy names");
	struct dsm_cache_opts o = { .policy = DSM_CACHE_LRU, .n_slots = 1 };
	CHECK(dsm_cache_new(&c, 0, 6, &o) == DSM_EARG, "bad shape");
	dsm_cache_free(NULL);
}

int main(void)
{
	test_policies();
	test_states();
	return TEST_EXIT();
}
