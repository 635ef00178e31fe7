/* safetensors files: 8-byte little-endian header length N, N bytes of UTF-8 JSON, then the data.
 * Validation follows the format's reference rules (see docs/checkpoint.md). */
#ifndef DSM_SAFETENSORS_H
#define DSM_SAFETENSORS_H

#include "dtype.h"

#include <stddef.h>
#include <stdint.h>

#define ST_MAX_HEADER 100000000u  /* the reference implementation's limit */
#define ST_MAX_DIMS 8

struct st_tensor {
	char *name;
	enum dsm_dtype dtype;
	int ndim;
	uint64_t shape[ST_MAX_DIMS];
	uint64_t begin, end;          /* [begin, end) relative to the start of the data area */
};

struct st_header {
	struct st_tensor *tensors;    /* in file (JSON) order; owned */
	size_t n_tensors;
	uint64_t header_len;          /* N */
	uint64_t data_start;          /* 8 + N: absolute offset of the data area */
	uint64_t data_size;           /* bytes of the data area */
};

/* Parses the JSON header text (len bytes) of a file whose data area holds data_size bytes, and checks
 * every rule: known dtypes, shapes matching byte ranges (overflow-checked), ranges tiling the data area
 * exactly, no duplicate names, __metadata__ a string map. `file` names the file in messages.
 * Returns 0 or a negative DSM_E* code. On failure *h is left empty. */
int st_parse_header(struct st_header *h, const char *json, size_t len, uint64_t data_size, const char *file);

/* Reads and parses the header of the file open at fd (file_size bytes long). */
int st_read_header(struct st_header *h, int fd, uint64_t file_size, const char *file);

/* Frees what the header owns; accepts a zeroed or half-built header. */
void st_header_free(struct st_header *h);

/* Number of elements of a shape, or UINT64_MAX on overflow. */
uint64_t st_shape_elements(const uint64_t *shape, int ndim);

#endif
