/* The tensors a config implies: names, shapes and allowed dtypes of docs MODEL.md section 2.
 * Used by the checkpoint reader to validate, by dsm-mkmodel to write, by dsm-inspect to count. */
#ifndef DSM_LAYOUT_H
#define DSM_LAYOUT_H

#include "config.h"
#include "store_model.h" /* enum dsm_kind: offload/ places weights by kind */

#include <stddef.h>
#include <stdint.h>

enum dsm_wtype {
	DSM_W_QUANT,  /* F8_E4M3 with a weight_scale_inv, or BF16/F32 in a dequantized checkpoint */
	DSM_W_BF16,   /* BF16 (F32 accepted) */
	DSM_W_F32,    /* F32 */
	DSM_W_NORM,   /* BF16 or F32 */
	DSM_W_ANY,    /* any float type, with a scale when F8 */
};

#define DSM_NAME_MAX 112

struct dsm_layout_entry {
	char name[DSM_NAME_MAX];
	enum dsm_kind kind;
	enum dsm_wtype wtype;
	int layer;            /* -1 for model-level tensors */
	int expert;           /* routed expert index, -1 otherwise */
	int optional;         /* may be absent (the MTP layer: the engine never reads it) */
	int ndim;             /* 1 or 2 */
	uint64_t shape[2];    /* [out, in] (PyTorch Linear layout), or [n] */
};

/* Builds the list of every tensor the config implies (scales not included: a QUANT tensor stored as F8
 * has "<name minus .weight>.weight_scale_inv" beside it). Returns 0 or DSM_ENOMEM. *out is malloc'ed. */
int dsm_layout_build(const struct dsm_config *c, struct dsm_layout_entry **out, size_t *n);

const char *dsm_kind_name(enum dsm_kind k);

/* Writes the name of the scale tensor of weight `name` (which ends in ".weight") into buf. */
int dsm_scale_name(char *buf, size_t size, const char *name);

/* Shape of the block scale of an [rows, cols] FP8 weight: [ceil(rows/128), ceil(cols/128)]. */
static inline uint64_t dsm_scale_blocks(uint64_t n)
{
	return (n + 127) / 128;
}

#endif
