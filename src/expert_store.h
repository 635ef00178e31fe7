/* Where weights live, as src/ sees them: the shard files mapped, and the model described for the expert
 * store of offload/ (offload/store_model.h), which holds the routed experts.
 *
 * The shard files are mapped read-only (PROT_READ, MAP_PRIVATE) once, whole, at open. A weight is a view into
 * the mapping: nothing is converted or copied, except tensors whose data is not aligned to their element
 * size in the file (the safetensors format does not align data), which are copied once into aligned memory.
 * Pages are read from the page cache on first touch, or all at once by dsm_weight_map_populate.
 *
 * struct dsm_weight_map: the mapping; the model takes its non-expert tensors from it.
 * struct dsm_store_model (offload/store_model.h): the shape of the MoE layers, every routed expert's tensors
 * (shard, offset, bytes, dtype, shape, block scales, and their address in the mapping), the router biases
 * and the non-expert sizes by kind: what the expert store and placement plans need, in offload's terms. */
#ifndef DSM_EXPERT_STORE_H
#define DSM_EXPERT_STORE_H

#include "backend.h"
#include "checkpoint.h"
#include "store_model.h"

#include <stdint.h>

struct dsm_weight_map;

int dsm_weight_map_open(struct dsm_weight_map **out, const struct dsm_checkpoint *ck);
/* Accepts NULL. */
void dsm_weight_map_close(struct dsm_weight_map *m);

/* The tensor `name` as a matrix view [rows, cols] (F8 with its scale, BF16 or F32), checking the shape.
 * Returns 0 or DSM_EMISSING / DSM_ETENSOR / DSM_EDTYPE / DSM_ENOMEM with a message naming the tensor. */
int dsm_weight_map_mat(struct dsm_weight_map *m, const char *name, int64_t rows, int64_t cols,
		       struct dsm_mat *out);
/* The 1-D tensor `name` of n values (BF16 or F32) converted to F32 into dst[n]. */
int dsm_weight_map_vec(struct dsm_weight_map *m, const char *name, int64_t n, float *dst);
/* Reads every mapped page in now, so that no page fault lands in a token and an I/O error is a message, not a
 * SIGBUS later. huge: each shard is read into anonymous memory in 2 MiB pages that take the place of its file
 * mapping (the same addresses, read-only; unlike the page cache's, that memory stays until close); else, or
 * where the kernel gives no huge pages on request or that memory is refused, its mapped pages are read in
 * (MADV_POPULATE_READ); the threads read at once. progress (may be NULL) as the bytes come in. Returns 0 (also on a kernel without
 * MADV_POPULATE_READ, where nothing is read) or DSM_EIO naming the shard. */
int dsm_weight_map_populate(struct dsm_weight_map *m, int huge,
			    void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg);
/* The bytes of shard i where the weights are read from (NULL for an empty file). */
const void *dsm_weight_map_shard(const struct dsm_weight_map *m, int i);
/* Bytes mapped; bytes copied for alignment; of the mapped, bytes read into huge pages (dsm_weight_map_populate). */
void dsm_weight_map_usage(const struct dsm_weight_map *m, uint64_t *mapped, uint64_t *copied, uint64_t *huge);

/* The shape of the MoE layers of config c. */
void dsm_moe_shape_from_config(struct dsm_moe_shape *s, const struct dsm_config *c);

/* Describes checkpoint ck for the expert store. With a weight map (may be NULL) every routed expert tensor
 * and scale gets its address in the mapping (`mapped`), so that a store opened without a plan computes the
 * experts where they are. ck and map must outlive *out. Returns 0 or DSM_EMISSING (an expert's tensor or
 * scale missing), DSM_EDTYPE / DSM_ETENSOR (a tensor a routed expert cannot be made of), DSM_EIO, DSM_ENOMEM,
 * with a message naming the tensor. */
int dsm_store_model_from_checkpoint(struct dsm_store_model **out, const struct dsm_checkpoint *ck,
				    struct dsm_weight_map *map);
/* Frees one made by dsm_store_model_from_checkpoint. Accepts NULL. */
void dsm_store_model_free(struct dsm_store_model *m);

#endif
