#include "safetensors.h"

#include "error.h"
#include "json_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

uint64_t st_shape_elements(const uint64_t *shape, int ndim)
{
	uint64_t n = 1;
	for (int i = 0; i < ndim; i++) {
		if (shape[i] != 0 && n > UINT64_MAX / shape[i])
			return UINT64_MAX;
		n *= shape[i];
	}
	return n;
}

void st_header_free(struct st_header *h)
{
	if (!h)
		return;
	for (size_t i = 0; i < h->n_tensors; i++)
		free(h->tensors[i].name);
	free(h->tensors);
	memset(h, 0, sizeof *h);
}

static int parse_metadata(const cJSON *meta, const char *file)
{
	if (!cJSON_IsObject(meta))
		return dsm_fail(DSM_EJSON, "%s: '__metadata__' must be a map of strings", file);
	for (const cJSON *m = meta->child; m; m = m->next)
		if (!cJSON_IsString(m))
			return dsm_fail(DSM_EJSON, "%s: '__metadata__' entry '%.100s' is not a string", file, m->string);
	return 0;
}

static int parse_tensor(struct st_tensor *t, const cJSON *item, const char *file)
{
	const char *name = item->string;
	if (!cJSON_IsObject(item))
		return dsm_fail(DSM_EJSON, "%s: tensor '%.200s': entry is not an object", file, name);
	const cJSON *dtype = cJSON_GetObjectItemCaseSensitive(item, "dtype");
	const cJSON *shape = cJSON_GetObjectItemCaseSensitive(item, "shape");
	const cJSON *offsets = cJSON_GetObjectItemCaseSensitive(item, "data_offsets");
	if (!cJSON_IsString(dtype))
		return dsm_fail(DSM_EJSON, "%s: tensor '%.200s': missing 'dtype' string", file, name);
	t->dtype = dsm_dtype_parse(dtype->valuestring);
	if (t->dtype == DSM_DTYPE_INVALID)
		return dsm_fail(DSM_EDTYPE, "%s: tensor '%.200s': unknown dtype '%.20s'", file, name,
				dtype->valuestring);
	if (!cJSON_IsArray(shape))
		return dsm_fail(DSM_EJSON, "%s: tensor '%.200s': missing 'shape' array", file, name);
	int ndim = cJSON_GetArraySize(shape);
	if (ndim > ST_MAX_DIMS)
		return dsm_fail(DSM_ESHAPE, "%s: tensor '%.200s': %d dimensions (at most %d)", file, name, ndim,
				ST_MAX_DIMS);
	t->ndim = ndim;
	int i = 0;
	for (const cJSON *d = shape->child; d; d = d->next, i++)
		if (json_number_to_u64(d, UINT64_MAX, &t->shape[i]) != 0)
			return dsm_fail(DSM_ESHAPE, "%s: tensor '%.200s': shape entries must be non-negative integers",
					file, name);
	if (!cJSON_IsArray(offsets) || cJSON_GetArraySize(offsets) != 2 ||
	    json_number_to_u64(cJSON_GetArrayItem(offsets, 0), UINT64_MAX, &t->begin) != 0 ||
	    json_number_to_u64(cJSON_GetArrayItem(offsets, 1), UINT64_MAX, &t->end) != 0)
		return dsm_fail(DSM_EJSON, "%s: tensor '%.200s': 'data_offsets' must be two non-negative integers",
				file, name);
	if (t->begin > t->end)
		return dsm_fail(DSM_ELAYOUT, "%s: tensor '%.200s': data_offsets [%llu, %llu) end before they begin",
				file, name, (unsigned long long)t->begin, (unsigned long long)t->end);
	uint64_t elements = st_shape_elements(t->shape, t->ndim);
	size_t esize = dsm_dtype_size(t->dtype);
	if (elements == UINT64_MAX || elements > UINT64_MAX / esize)
		return dsm_fail(DSM_ESHAPE, "%s: tensor '%.200s': shape overflows", file, name);
	if (elements * esize != t->end - t->begin)
		return dsm_fail(DSM_ESHAPE, "%s: tensor '%.200s': shape holds %llu bytes of %s but data_offsets "
				"span %llu", file, name, (unsigned long long)(elements * esize),
				dsm_dtype_name(t->dtype), (unsigned long long)(t->end - t->begin));
	t->name = strdup(name);
	if (!t->name)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory", file);
	return 0;
}

static int by_name(const void *a, const void *b)
{
	return strcmp((*(const struct st_tensor *const *)a)->name, (*(const struct st_tensor *const *)b)->name);
}

static int by_offset(const void *a, const void *b)
{
	const struct st_tensor *x = *(const struct st_tensor *const *)a, *y = *(const struct st_tensor *const *)b;
	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	return x->end < y->end ? -1 : x->end > y->end;
}

/* Names unique, ranges sorted by offset tile [0, data_size) with no hole and no overlap. */
static int check_tiling(const struct st_header *h, const char *file)
{
	int rc = 0;
	const struct st_tensor **order = malloc((h->n_tensors + 1) * sizeof *order);
	if (!order)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory", file);
	for (size_t i = 0; i < h->n_tensors; i++)
		order[i] = &h->tensors[i];
	qsort(order, h->n_tensors, sizeof *order, by_name);
	for (size_t i = 1; i < h->n_tensors; i++)
		if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
			rc = dsm_fail(DSM_EDUPLICATE, "%s: tensor '%.200s' appears twice in the header", file,
				      order[i]->name);
			goto out;
		}
	qsort(order, h->n_tensors, sizeof *order, by_offset);
	uint64_t pos = 0;
	for (size_t i = 0; i < h->n_tensors; i++) {
		const struct st_tensor *t = order[i];
		if (t->begin > pos) {
			rc = dsm_fail(DSM_ELAYOUT, "%s: tensor '%.200s': a hole of %llu bytes before its data at %llu",
				      file, t->name, (unsigned long long)(t->begin - pos), (unsigned long long)t->begin);
			goto out;
		}
		if (t->begin < pos) {
			rc = dsm_fail(DSM_ELAYOUT, "%s: tensor '%.200s': data at %llu overlaps the previous tensor "
				      "(which ends at %llu)", file, t->name, (unsigned long long)t->begin,
				      (unsigned long long)pos);
			goto out;
		}
		pos = t->end;
	}
	/* The ranges are contiguous from 0: a last range past the end means the file lost its tail. */
	if (pos > h->data_size)
		rc = dsm_fail(DSM_ETRUNCATED, "%s: truncated: the tensors end at data offset %llu but the file "
			      "holds only %llu data bytes (tensor '%.200s' is not within the file bounds)", file,
			      (unsigned long long)pos, (unsigned long long)h->data_size,
			      h->n_tensors ? order[h->n_tensors - 1]->name : "");
	else if (pos < h->data_size)
		rc = dsm_fail(DSM_ELAYOUT, "%s: the tensors end at data offset %llu but the data area holds %llu "
			      "bytes (%llu bytes after the last tensor)", file, (unsigned long long)pos,
			      (unsigned long long)h->data_size, (unsigned long long)(h->data_size - pos));
out:
	free(order);
	return rc;
}

int st_parse_header(struct st_header *h, const char *json, size_t len, uint64_t data_size, const char *file)
{
	memset(h, 0, sizeof *h);
	h->data_size = data_size;
	if (len == 0 || json[0] != '{')
		return dsm_fail(DSM_EJSON, "%s: the header is not a JSON object", file);
	cJSON *root = json_parse(json, len, file);
	if (!root)
		return DSM_EJSON;
	int rc = 0;
	if (!cJSON_IsObject(root)) {
		rc = dsm_fail(DSM_EJSON, "%s: the header is not a JSON object", file);
		goto out;
	}
	size_t n = 0;
	for (const cJSON *c = root->child; c; c = c->next)
		n++;
	h->tensors = calloc(n ? n : 1, sizeof *h->tensors);
	if (!h->tensors) {
		rc = dsm_fail(DSM_ENOMEM, "%s: out of memory", file);
		goto out;
	}
	int seen_metadata = 0;
	for (const cJSON *c = root->child; c; c = c->next) {
		if (strcmp(c->string, "__metadata__") == 0) {
			if (seen_metadata++) {
				rc = dsm_fail(DSM_EDUPLICATE, "%s: '__metadata__' appears twice in the header", file);
				goto out;
			}
			if ((rc = parse_metadata(c, file)) < 0)
				goto out;
			continue;
		}
		if ((rc = parse_tensor(&h->tensors[h->n_tensors], c, file)) < 0)
			goto out;
		h->n_tensors++;
	}
	rc = check_tiling(h, file);
out:
	cJSON_Delete(root);
	if (rc < 0)
		st_header_free(h);
	return rc;
}

static int read_exact(int fd, void *buf, size_t len, uint64_t offset)
{
	size_t got = 0;
	while (got < len) {
		ssize_t r = pread(fd, (char *)buf + got, len - got, (off_t)(offset + got));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ENODATA;
		got += (size_t)r;
	}
	return 0;
}

int st_read_header(struct st_header *h, int fd, uint64_t file_size, const char *file)
{
	memset(h, 0, sizeof *h);
	if (file_size < 8)
		return dsm_fail(DSM_EHEADER, "%s: %llu bytes, too short for a safetensors header", file,
				(unsigned long long)file_size);
	unsigned char lenbuf[8];
	int e = read_exact(fd, lenbuf, 8, 0);
	if (e)
		return dsm_fail(DSM_EIO, "%s: reading the header length: %s", file, strerror(-e));
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | lenbuf[i];
	if (n > ST_MAX_HEADER)
		return dsm_fail(DSM_EHEADER, "%s: header length %llu exceeds the limit of %u bytes", file,
				(unsigned long long)n, ST_MAX_HEADER);
	if (n > file_size - 8)
		return dsm_fail(DSM_EHEADER, "%s: header length %llu runs past the end of the file (%llu bytes)",
				file, (unsigned long long)n, (unsigned long long)file_size);
	char *json = malloc(n + 1);
	if (!json)
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for a %llu-byte header", file, (unsigned long long)n);
	e = read_exact(fd, json, n, 8);
	if (e) {
		free(json);
		return dsm_fail(DSM_EIO, "%s: reading the header: %s", file, strerror(-e));
	}
	json[n] = 0;
	int rc = st_parse_header(h, json, n, file_size - 8 - n, file);
	free(json);
	if (rc == 0) {
		h->header_len = n;
		h->data_start = 8 + n;
	}
	return rc;
}
