#include "cache.h"

#include "error.h"

#include <stdlib.h>
#include <string.h>

enum slot_state { SLOT_EMPTY, SLOT_LOADING, SLOT_READY };

struct cache_slot {
	int key;                  /* layer * n_experts + expert, -1 when empty */
	enum slot_state state;
	int refs;
	uint64_t last_use;        /* tick of the last use (or of the load) */
	int prefetched;           /* brought in by a prefetch and not used since */
};

struct dsm_cache {
	struct dsm_cache_opts o;
	int n_layers, n_experts, n_keys;
	struct cache_slot *slots;
	int *where;               /* [n_keys] slot or -1 */
	uint64_t *count;          /* [n_keys] uses */
	unsigned char *pinned;    /* [n_keys] in the pinned set */
	double *hotness;          /* [n_keys] given hotness, NULL: observed counts */
	uint64_t tick;
	struct dsm_cache_layer_stats *stats; /* [n_layers] */
};

const char *dsm_cache_policy_name(enum dsm_cache_policy p)
{
	switch (p) {
	case DSM_CACHE_LRU: return "lru";
	case DSM_CACHE_LFU: return "lfu";
	case DSM_CACHE_PINNED: return "pinned";
	}
	return "?";
}

int dsm_cache_policy_parse(const char *s)
{
	if (strcmp(s, "lru") == 0)
		return DSM_CACHE_LRU;
	if (strcmp(s, "lfu") == 0)
		return DSM_CACHE_LFU;
	if (strcmp(s, "pinned") == 0 || strcmp(s, "frequency-pinned") == 0)
		return DSM_CACHE_PINNED;
	return -1;
}

int dsm_cache_new(struct dsm_cache **out, int n_layers, int n_experts, const struct dsm_cache_opts *o)
{
	*out = NULL;
	if (n_layers <= 0 || n_experts <= 0 || n_layers > (1 << 16) || n_experts > (1 << 16))
		return dsm_fail(DSM_EARG, "expert cache: bad shape %d layers x %d experts", n_layers, n_experts);
	if (o->policy != DSM_CACHE_LRU && o->policy != DSM_CACHE_LFU && o->policy != DSM_CACHE_PINNED)
		return dsm_fail(DSM_EARG, "expert cache: unknown policy %d", (int)o->policy);
	if (o->n_slots > (1u << 24))
		return dsm_fail(DSM_EARG, "expert cache: %u slots is too many", o->n_slots);
	struct dsm_cache *c = calloc(1, sizeof *c);
	if (!c)
		return dsm_fail(DSM_ENOMEM, "expert cache: out of memory");
	c->o = *o;
	if (c->o.policy == DSM_CACHE_PINNED) {
		unsigned max_pinned = c->o.n_slots ? c->o.n_slots - 1 : 0;
		if (c->o.n_pinned == 0)
			c->o.n_pinned = c->o.n_slots - c->o.n_slots / 4;
		if (c->o.n_pinned > max_pinned)
			c->o.n_pinned = max_pinned; /* one slot at least stays for the rest */
	} else {
		c->o.n_pinned = 0;
	}
	c->n_layers = n_layers;
	c->n_experts = n_experts;
	c->n_keys = n_layers * n_experts;
	c->slots = calloc(o->n_slots ? o->n_slots : 1, sizeof *c->slots);
	c->where = malloc((size_t)c->n_keys * sizeof *c->where);
	c->count = calloc((size_t)c->n_keys, sizeof *c->count);
	c->pinned = calloc((size_t)c->n_keys, 1);
	c->stats = calloc((size_t)n_layers, sizeof *c->stats);
	if (!c->slots || !c->where || !c->count || !c->pinned || !c->stats) {
		dsm_cache_free(c);
		return dsm_fail(DSM_ENOMEM, "expert cache: out of memory");
	}
	for (unsigned i = 0; i < o->n_slots; i++)
		c->slots[i].key = -1;
	for (int k = 0; k < c->n_keys; k++)
		c->where[k] = -1;
	*out = c;
	return 0;
}

void dsm_cache_free(struct dsm_cache *c)
{
	if (!c)
		return;
	free(c->slots);
	free(c->where);
	free(c->count);
	free(c->pinned);
	free(c->hotness);
	free(c->stats);
	free(c);
}

/* Whether slot a is a better victim than slot b under the policy. */
static int better_victim(const struct dsm_cache *c, const struct cache_slot *a, const struct cache_slot *b)
{
	/* A look-ahead read not used yet is about to be: it goes last. */
	if (a->prefetched != b->prefetched)
		return !a->prefetched;
	if (c->o.policy == DSM_CACHE_LFU && c->count[a->key] != c->count[b->key])
		return c->count[a->key] < c->count[b->key];
	return a->last_use < b->last_use;
}

/* An unreferenced slot to reuse, or -1: an empty one first, else by policy. Slots being read and (pinned
 * policy) slots of pinned experts are never taken. */
static int choose_victim(const struct dsm_cache *c, int steal)
{
	int best = -1;
	for (unsigned i = 0; i < c->o.n_slots; i++) {
		const struct cache_slot *s = &c->slots[i];
		if (s->refs > 0)
			continue;
		if (s->state == SLOT_EMPTY)
			return (int)i;
		if (s->state != SLOT_READY)
			continue;
		if (c->o.policy == DSM_CACHE_PINNED && c->pinned[s->key])
			continue;
		if (s->prefetched && !steal)
			continue;
		if (best < 0 || better_victim(c, s, &c->slots[best]))
			best = (int)i;
	}
	return best;
}

static void empty_slot(struct dsm_cache *c, int i)
{
	struct cache_slot *s = &c->slots[i];
	if (s->key >= 0) {
		if (s->prefetched)
			c->stats[s->key / c->n_experts].prefetch_wasted++;
		c->where[s->key] = -1;
	}
	s->key = -1;
	s->state = SLOT_EMPTY;
	s->prefetched = 0;
}

int dsm_cache_acquire(struct dsm_cache *c, int layer, int expert, unsigned flags, int *slot)
{
	*slot = -1;
	if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_experts)
		return dsm_fail(DSM_EARG, "expert cache: layer %d expert %d out of range", layer, expert);
	int key = layer * c->n_experts + expert;
	int use = !(flags & DSM_CACHE_PREFETCH);
	struct dsm_cache_layer_stats *st = &c->stats[layer];
	int i = c->where[key];
	if (i >= 0) {
		struct cache_slot *s = &c->slots[i];
		s->refs++;
		if (use) {
			c->count[key]++;
			s->last_use = ++c->tick;
			st->hits++;
			if (s->prefetched) {
				st->prefetch_hits++;
				s->prefetched = 0;
			}
		}
		*slot = i;
		return s->state == SLOT_READY ? DSM_CACHE_HIT : DSM_CACHE_PENDING;
	}
	i = choose_victim(c, (flags & DSM_CACHE_STEAL) != 0);
	if (i < 0)
		return DSM_CACHE_FULL;
	empty_slot(c, i);
	struct cache_slot *s = &c->slots[i];
	s->key = key;
	s->state = SLOT_LOADING;
	s->refs = 1;
	s->last_use = ++c->tick;
	s->prefetched = !use;
	c->where[key] = i;
	if (use) {
		c->count[key]++;
		st->misses++;
	} else {
		st->prefetches++;
	}
	*slot = i;
	return DSM_CACHE_MISS;
}

void dsm_cache_loaded(struct dsm_cache *c, int slot, int ok)
{
	struct cache_slot *s = &c->slots[slot];
	if (ok) {
		s->state = SLOT_READY;
		return;
	}
	s->prefetched = 0;
	if (s->key >= 0)
		c->where[s->key] = -1;
	s->key = -1;
	s->state = SLOT_EMPTY;
}

void dsm_cache_release(struct dsm_cache *c, int slot)
{
	struct cache_slot *s = &c->slots[slot];
	if (s->refs > 0)
		s->refs--;
	/* Cache off: nothing stays but look-ahead reads not yet used. */
	if (s->refs == 0 && !c->o.keep && s->state == SLOT_READY && !s->prefetched)
		empty_slot(c, slot);
}

int dsm_cache_ready(const struct dsm_cache *c, int slot)
{
	return c->slots[slot].state == SLOT_READY;
}

void dsm_cache_slot_key(const struct dsm_cache *c, int slot, int *layer, int *expert)
{
	int key = c->slots[slot].key;
	*layer = key < 0 ? -1 : key / c->n_experts;
	*expert = key < 0 ? -1 : key % c->n_experts;
}

int dsm_cache_find(const struct dsm_cache *c, int layer, int expert)
{
	if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_experts)
		return -1;
	return c->where[layer * c->n_experts + expert];
}

struct hot_key {
	double hot;
	int key;
};

static int hotter_first(const void *a, const void *b)
{
	const struct hot_key *x = a, *y = b;
	if (x->hot != y->hot)
		return x->hot > y->hot ? -1 : 1;
	return x->key - y->key;
}

static int choose_pinned(struct dsm_cache *c)
{
	memset(c->pinned, 0, (size_t)c->n_keys);
	if (c->o.policy != DSM_CACHE_PINNED || c->o.n_pinned == 0)
		return 0;
	struct hot_key *v = malloc((size_t)c->n_keys * sizeof *v);
	if (!v)
		return dsm_fail(DSM_ENOMEM, "expert cache: out of memory");
	for (int k = 0; k < c->n_keys; k++)
		v[k] = (struct hot_key){ c->hotness ? c->hotness[k] : (double)c->count[k], k };
	qsort(v, (size_t)c->n_keys, sizeof *v, hotter_first);
	unsigned n = c->o.n_pinned < (unsigned)c->n_keys ? c->o.n_pinned : (unsigned)c->n_keys;
	for (unsigned i = 0; i < n; i++)
		c->pinned[v[i].key] = 1;
	free(v);
	return 0;
}

int dsm_cache_set_hotness(struct dsm_cache *c, const double *hotness)
{
	free(c->hotness);
	c->hotness = NULL;
	if (hotness) {
		c->hotness = malloc((size_t)c->n_keys * sizeof *c->hotness);
		if (!c->hotness)
			return dsm_fail(DSM_ENOMEM, "expert cache: out of memory");
		memcpy(c->hotness, hotness, (size_t)c->n_keys * sizeof *c->hotness);
	}
	return choose_pinned(c);
}

void dsm_cache_repin(struct dsm_cache *c)
{
	if (!c->hotness)
		choose_pinned(c);
}

int dsm_cache_is_pinned(const struct dsm_cache *c, int layer, int expert)
{
	if (layer < 0 || layer >= c->n_layers || expert < 0 || expert >= c->n_experts)
		return 0;
	return c->pinned[layer * c->n_experts + expert];
}

const struct dsm_cache_layer_stats *dsm_cache_layer_stats(const struct dsm_cache *c, int layer)
{
	return &c->stats[layer];
}

void dsm_cache_total_stats(const struct dsm_cache *c, struct dsm_cache_layer_stats *s)
{
	memset(s, 0, sizeof *s);
	for (int l = 0; l < c->n_layers; l++) {
		s->hits += c->stats[l].hits;
		s->misses += c->stats[l].misses;
		s->prefetch_hits += c->stats[l].prefetch_hits;
		s->prefetches += c->stats[l].prefetches;
		s->prefetch_wasted += c->stats[l].prefetch_wasted;
	}
}

void dsm_cache_reset_stats(struct dsm_cache *c)
{
	memset(c->stats, 0, (size_t)c->n_layers * sizeof *c->stats);
}

unsigned dsm_cache_slots(const struct dsm_cache *c)
{
	return c->o.n_slots;
}

void dsm_cache_settle(struct dsm_cache *c)
{
	for (unsigned i = 0; i < c->o.n_slots; i++)
		if (c->slots[i].state == SLOT_READY)
			c->slots[i].prefetched = 0;
}
