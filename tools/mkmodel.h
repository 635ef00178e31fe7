/* Synthetic DeepSeek-V3.2 checkpoints with the exact real layout (dsm-mkmodel and its tests). */
#ifndef DSM_MKMODEL_H
#define DSM_MKMODEL_H

#include "config.h"
#include "dtype.h"
#include "layout.h"

#include <stddef.h>
#include <stdint.h>

struct mkmodel_preset {
	const char *name;
	const char *summary;
	struct dsm_config config;
	uint64_t shard_bytes;   /* default shard size */
	int sparse;             /* write headers only, data as holes */
};

/* The preset named name, or NULL. */
const struct mkmodel_preset *mkmodel_preset(const char *name);
/* All presets, terminated by an entry with name NULL. */
extern const struct mkmodel_preset mkmodel_presets[];

struct mkmodel_options {
	struct dsm_config config;
	uint64_t seed;
	uint64_t shard_bytes;
	int sparse;
	double routing_skew;    /* 0: no skew; s > 0: expert popularity roughly Zipf(s) */
	int quiet;
};

/* One tensor to write: a layout entry or the scale of one. */
struct mkmodel_tensor {
	char name[DSM_NAME_MAX + 16];
	enum dsm_dtype dtype;
	int ndim;
	uint64_t shape[2];
	uint64_t nbytes;
	const struct dsm_layout_entry *entry; /* the weight this is (or is the scale of) */
	int is_scale;
	int shard;              /* assigned by mkmodel_plan */
	uint64_t begin;         /* offset in its shard's data area */
};

struct mkmodel_plan {
	struct dsm_layout_entry *layout;
	size_t n_layout;
	struct mkmodel_tensor *tensors;
	size_t n_tensors;
	int n_shards;
	uint64_t total_bytes;
};

/* Lists the tensors (weights and scales) and assigns them to shards. */
int mkmodel_plan(struct mkmodel_plan *p, const struct mkmodel_options *o);
void mkmodel_plan_free(struct mkmodel_plan *p);

/* The bytes of tensor t (t->nbytes into buf), a pure function of (options, tensor name). */
void mkmodel_tensor_data(const struct mkmodel_options *o, const struct mkmodel_tensor *t, void *buf);

/* Writes config.json, the index and the shards into dir (created if missing). Progress on stderr unless
 * o->quiet. Returns 0 or a negative DSM_E* code with a message. */
int mkmodel_write(const struct mkmodel_options *o, const char *dir);

/* Writes config.json for o->config into dir. */
int mkmodel_write_config(const struct mkmodel_options *o, const char *dir);

#endif
