/* The expert cache: which streamed experts stay in which slot of the pinned pool, under a DRAM budget of
 * n_slots slots. It holds bookkeeping only (slot <-> (layer, expert), states, reference counts, counters);
 * the bytes live in the pool slot of the same index and are moved by the streamer.
 *
 * Policies (victims are chosen among slots nobody references; an empty slot is always taken first):
 *   lru     the least recently used expert goes.
 *   lfu     the expert with the fewest uses since the cache was made goes (counts survive eviction, so a
 *           newcomer is not thrown out for being new); ties go to the least recently used.
 *   pinned  frequency-pinned: the n_pinned hottest experts (from dsm_cache_set_hotness: a routing trace's
 *           counts or the router bias; else the counts seen so far, at each dsm_cache_repin) are never
 *           evicted once loaded; the other slots are run as lru.
 * With keep = 0 ("cache off") a slot is emptied as soon as its last user releases it: every use of a
 * streamed expert reads it again.
 *
 * Counters per layer: hits, misses (a use that had to read), prefetch hits (the first use of an expert that
 * a prefetch brought in), prefetches, wasted prefetches (evicted before any use). */
#ifndef DSM_CACHE_H
#define DSM_CACHE_H

#include <stdint.h>

enum dsm_cache_policy { DSM_CACHE_LRU, DSM_CACHE_LFU, DSM_CACHE_PINNED };

enum dsm_cache_result {
	DSM_CACHE_HIT = 0,      /* ready in *slot; the caller holds a reference */
	DSM_CACHE_PENDING = 1,  /* being read into *slot (by an earlier miss or a prefetch); reference held */
	DSM_CACHE_MISS = 2,     /* *slot is reserved for the caller, who reads the expert into it and then
	                         * calls dsm_cache_loaded; reference held */
	DSM_CACHE_FULL = 3,     /* every slot is referenced (or pinned): release some and retry */
};

enum dsm_cache_flags {
	DSM_CACHE_PREFETCH = 1, /* a look-ahead read: not counted as a use; a later use counts a prefetch hit */
	DSM_CACHE_STEAL = 2,    /* may evict look-ahead reads not used yet (otherwise they are kept, and a miss
	                         * that finds only those returns DSM_CACHE_FULL) */
};

struct dsm_cache_opts {
	enum dsm_cache_policy policy;
	unsigned n_slots;
	unsigned n_pinned;      /* pinned policy: slots for pinned experts (default n_slots - n_slots / 4) */
	int keep;               /* 0: cache off (see above) */
};

struct dsm_cache_layer_stats {
	uint64_t hits, misses, prefetch_hits, prefetches, prefetch_wasted;
};

struct dsm_cache;

/* A cache for n_layers x n_experts keys. Returns 0, DSM_EARG or DSM_ENOMEM with a message. */
int dsm_cache_new(struct dsm_cache **out, int n_layers, int n_experts, const struct dsm_cache_opts *o);
void dsm_cache_free(struct dsm_cache *c);

/* Looks (layer, expert) up and takes a reference on its slot; see enum dsm_cache_result. Returns a
 * negative DSM_EARG for a key out of range. */
int dsm_cache_acquire(struct dsm_cache *c, int layer, int expert, unsigned flags, int *slot);
/* The read into a slot returned by DSM_CACHE_MISS ended: ok != 0 makes it ready; otherwise the slot is
 * emptied (users holding PENDING references must release them). */
void dsm_cache_loaded(struct dsm_cache *c, int slot, int ok);
/* Drops one reference. */
void dsm_cache_release(struct dsm_cache *c, int slot);

/* Whether the slot's bytes are ready, and its key. */
int dsm_cache_ready(const struct dsm_cache *c, int slot);
void dsm_cache_slot_key(const struct dsm_cache *c, int slot, int *layer, int *expert);
/* Slot holding (layer, expert), or -1. */
int dsm_cache_find(const struct dsm_cache *c, int layer, int expert);

/* Pinned policy: hotness[layer * n_experts + expert] (higher is hotter) chooses the pinned set; NULL
 * returns to observed counts. Pinned experts already loaded stay; others become ordinary lru entries. */
int dsm_cache_set_hotness(struct dsm_cache *c, const double *hotness);
/* Pinned policy without given hotness: re-choose the pinned set from the counts seen so far. */
void dsm_cache_repin(struct dsm_cache *c);
int dsm_cache_is_pinned(const struct dsm_cache *c, int layer, int expert);

const struct dsm_cache_layer_stats *dsm_cache_layer_stats(const struct dsm_cache *c, int layer);
/* Sums over layers. */
void dsm_cache_total_stats(const struct dsm_cache *c, struct dsm_cache_layer_stats *s);
void dsm_cache_reset_stats(struct dsm_cache *c);
/* What prefetches brought in and no use has touched yet becomes ordinary contents (after a warm-up). */
void dsm_cache_settle(struct dsm_cache *c);
unsigned dsm_cache_slots(const struct dsm_cache *c);

const char *dsm_cache_policy_name(enum dsm_cache_policy p);
/* "lru", "lfu", "pinned" (also "frequency-pinned"); -1 when unknown. */
int dsm_cache_policy_parse(const char *s);

#endif
