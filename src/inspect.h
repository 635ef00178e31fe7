/* What dsm-inspect reports about a checkpoint, as one JSON document (the text output renders it). */
#ifndef DSM_INSPECT_H
#define DSM_INSPECT_H

#include "checkpoint.h"

#include <cjson/cJSON.h>
#include <stdint.h>

/* Describes ck: shape, parameters by kind, bytes by dtype, expert bytes per layer, and, when
 * vram/dram budgets are given (0 = none), what fits where. Returns a new cJSON object or NULL. */
cJSON *dsm_inspect(const struct dsm_checkpoint *ck, uint64_t vram, uint64_t dram);

#endif
