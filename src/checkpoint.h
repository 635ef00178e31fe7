/* A Hugging Face checkpoint folder: config.json, model.safetensors.index.json (or one model.safetensors)
 * and the shards, validated against the tensors the config implies. The result is a tensor table:
 * name -> shard, absolute file offset, byte length, dtype, shape. Reading data is a separate step. */
#ifndef DSM_CHECKPOINT_H
#define DSM_CHECKPOINT_H

#include "config.h"
#include "dtype.h"
#include "layout.h"

#include <stddef.h>
#include <stdint.h>

struct dsm_shard {
	char *file;             /* file name as in the index */
	char *path;             /* dir/file */
	int fd;                 /* open read-only for the checkpoint's lifetime */
	uint64_t file_size;
	uint64_t data_start;    /* absolute offset of the data area */
};

struct dsm_tensor {
	char *name;
	int shard;              /* index into shards */
	enum dsm_dtype dtype;
	int ndim;
	uint64_t shape[8];
	uint64_t offset;        /* absolute offset in the shard file */
	uint64_t nbytes;
	const struct dsm_tensor *scale; /* weight_scale_inv of an F8 weight, else NULL */
};

struct dsm_checkpoint {
	char *dir;
	struct dsm_config config;
	struct dsm_shard *shards;
	int n_shards;
	struct dsm_tensor *tensors;   /* sorted by name */
	size_t n_tensors;
	struct dsm_layout_entry *layout; /* what the config implies, in model order */
	size_t n_layout;
	uint64_t total_bytes;         /* sum of tensor bytes */
};

/* Opens and validates the checkpoint in dir. On success *out owns everything; on failure returns a
 * negative DSM_E* code with a message naming the file and the tensor or key. */
int dsm_checkpoint_open(struct dsm_checkpoint **out, const char *dir);
void dsm_checkpoint_close(struct dsm_checkpoint *ck);

/* The tensor named name, or NULL. */
const struct dsm_tensor *dsm_checkpoint_find(const struct dsm_checkpoint *ck, const char *name);

/* Reads the whole tensor into dst (t->nbytes bytes). Returns 0 or DSM_EIO/DSM_ETRUNCATED with a message
 * naming the file, tensor and offset. */
int dsm_checkpoint_read(const struct dsm_checkpoint *ck, const struct dsm_tensor *t, void *dst);

#endif
