#include "checkpoint.h"

#include "error.h"
#include "json_util.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define INDEX_MAX_BYTES (256u << 20)

static char *path_join(const char *dir, const char *file)
{
	size_t n = strlen(dir) + strlen(file) + 2;
	char *p = malloc(n);
	if (p)
		snprintf(p, n, "%s/%s", dir, file);
	return p;
}

static int by_tensor_name(const void *a, const void *b)
{
	return strcmp(((const struct dsm_tensor *)a)->name, ((const struct dsm_tensor *)b)->name);
}

static int by_st_name(const void *a, const void *b)
{
	return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

const struct dsm_tensor *dsm_checkpoint_find(const struct dsm_checkpoint *ck, const char *name)
{
	struct dsm_tensor key = { .name = (char *)name };
	return bsearch(&key, ck->tensors, ck->n_tensors, sizeof key, by_tensor_name);
}

void dsm_checkpoint_close(struct dsm_checkpoint *ck)
{
	if (!ck)
		return;
	for (int i = 0; i < ck->n_shards; i++) {
		if (ck->shards[i].fd >= 0)
			close(ck->shards[i].fd);
		free(ck->shards[i].file);
		free(ck->shards[i].path);
	}
	free(ck->shards);
	for (size_t i = 0; i < ck->n_tensors; i++)
		free(ck->tensors[i].name);
	free(ck->tensors);
	free(ck->layout);
	free(ck->dir);
	free(ck);
}

/* A shard file name from the index must name a file in the checkpoint folder itself. */
static int valid_shard_name(const char *name)
{
	return name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 4096;
}

static int add_shard(struct dsm_checkpoint *ck, const char *file)
{
	for (int i = 0; i < ck->n_shards; i++)
		if (strcmp(ck->shards[i].file, file) == 0)
			return i;
	struct dsm_shard *s = realloc(ck->shards, (size_t)(ck->n_shards + 1) * sizeof *s);
	if (!s)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	ck->shards = s;
	s = &ck->shards[ck->n_shards];
	memset(s, 0, sizeof *s);
	s->fd = -1;
	s->file = strdup(file);
	s->path = path_join(ck->dir, file);
	ck->n_shards++;
	if (!s->file || !s->path)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	return ck->n_shards - 1;
}

/* Copies the header's tensors of shard `shard` whose names `wanted` accepts into the table. */
static int append_tensors(struct dsm_checkpoint *ck, int shard, const struct st_header *h)
{
	struct dsm_tensor *t = realloc(ck->tensors, (ck->n_tensors + h->n_tensors + 1) * sizeof *t);
	if (!t)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	ck->tensors = t;
	for (size_t i = 0; i < h->n_tensors; i++) {
		const struct st_tensor *s = &h->tensors[i];
		struct dsm_tensor *d = &ck->tensors[ck->n_tensors];
		memset(d, 0, sizeof *d);
		d->name = strdup(s->name);
		if (!d->name)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		ck->n_tensors++;
		d->shard = shard;
		d->dtype = s->dtype;
		d->ndim = s->ndim;
		memcpy(d->shape, s->shape, sizeof d->shape);
		d->offset = h->data_start + s->begin;
		d->nbytes = s->end - s->begin;
		ck->total_bytes += d->nbytes;
	}
	return 0;
}

static int open_shard(struct dsm_checkpoint *ck, int i, struct st_header *h)
{
	struct dsm_shard *s = &ck->shards[i];
	s->fd = open(s->path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* never block on a FIFO */
	if (s->fd < 0)
		return dsm_fail(errno == ENOENT ? DSM_EMISSING : DSM_EIO, "%s: %s (shard named by the index)",
				s->path, strerror(errno));
	struct stat st;
	if (fstat(s->fd, &st) != 0)
		return dsm_fail(DSM_EIO, "%s: %s", s->path, strerror(errno));
	if (!S_ISREG(st.st_mode))
		return dsm_fail(DSM_EIO, "%s: not a regular file", s->path);
	s->file_size = (uint64_t)st.st_size;
	int rc = st_read_header(h, s->fd, s->file_size, s->path);
	if (rc < 0)
		return rc;
	s->data_start = h->data_start;
	qsort(h->tensors, h->n_tensors, sizeof *h->tensors, by_st_name);
	return 0;
}

/* Reads model.safetensors.index.json: every tensor listed must exist in its shard. Only listed tensors
 * enter the table (a shard may hold others, which Hugging Face loaders ignore too). */
static int load_indexed(struct dsm_checkpoint *ck, const char *index_path)
{
	char *text = NULL;
	size_t len;
	cJSON *root = NULL;
	struct st_header *headers = NULL;
	int rc = read_file(index_path, INDEX_MAX_BYTES, &text, &len);
	if (rc < 0)
		return rc;
	root = json_parse(text, len, index_path);
	if (!root) {
		rc = DSM_EJSON;
		goto out;
	}
	const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
	if (!cJSON_IsObject(map)) {
		rc = dsm_fail(DSM_EJSON, "%s: missing 'weight_map' object", index_path);
		goto out;
	}
	size_t n = 0;
	for (const cJSON *e = map->child; e; e = e->next, n++) {
		if (!cJSON_IsString(e) || !valid_shard_name(e->valuestring)) {
			rc = dsm_fail(DSM_EJSON, "%s: 'weight_map' entry '%.200s' must name a shard file in the folder",
				      index_path, e->string);
			goto out;
		}
		if ((rc = add_shard(ck, e->valuestring)) < 0)
			goto out;
	}
	if (n == 0) {
		rc = dsm_fail(DSM_EJSON, "%s: 'weight_map' is empty", index_path);
		goto out;
	}
	headers = calloc((size_t)ck->n_shards, sizeof *headers);
	if (!headers) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < ck->n_shards; i++)
		if ((rc = open_shard(ck, i, &headers[i])) < 0)
			goto out;
	ck->tensors = calloc(n + 1, sizeof *ck->tensors);
	if (!ck->tensors) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	for (const cJSON *e = map->child; e; e = e->next) {
		int shard = add_shard(ck, e->valuestring);
		const struct st_header *h = &headers[shard];
		struct st_tensor key = { .name = e->string };
		const struct st_tensor *s = bsearch(&key, h->tensors, h->n_tensors, sizeof key, by_st_name);
		if (!s) {
			rc = dsm_fail(DSM_EMISSING, "%s: tensor '%.200s' listed in the index is not in this shard",
				      ck->shards[shard].path, e->string);
			goto out;
		}
		struct dsm_tensor *d = &ck->tensors[ck->n_tensors];
		d->name = strdup(s->name);
		if (!d->name) {
			rc = dsm_fail(DSM_ENOMEM, "out of memory");
			goto out;
		}
		ck->n_tensors++;
		d->shard = shard;
		d->dtype = s->dtype;
		d->ndim = s->ndim;
		memcpy(d->shape, s->shape, sizeof d->shape);
		d->offset = h->data_start + s->begin;
		d->nbytes = s->end - s->begin;
		ck->total_bytes += d->nbytes;
	}
	qsort(ck->tensors, ck->n_tensors, sizeof *ck->tensors, by_tensor_name);
	for (size_t i = 1; i < ck->n_tensors; i++)
		if (strcmp(ck->tensors[i - 1].name, ck->tensors[i].name) == 0) {
			rc = dsm_fail(DSM_EDUPLICATE, "%s: tensor '%.200s' appears twice in 'weight_map'", index_path,
				      ck->tensors[i].name);
			goto out;
		}
	rc = 0;
out:
	if (headers)
		for (int i = 0; i < ck->n_shards; i++)
			st_header_free(&headers[i]);
	free(headers);
	cJSON_Delete(root);
	free(text);
	return rc;
}

static int load_single(struct dsm_checkpoint *ck)
{
	struct st_header h;
	int rc = add_shard(ck, "model.safetensors");
	if (rc < 0)
		return rc;
	if ((rc = open_shard(ck, 0, &h)) < 0)
		return rc;
	rc = append_tensors(ck, 0, &h);
	st_header_free(&h);
	if (rc == 0)
		qsort(ck->tensors, ck->n_tensors, sizeof *ck->tensors, by_tensor_name);
	return rc;
}

static const char *where(const struct dsm_checkpoint *ck, const struct dsm_tensor *t)
{
	return ck->shards[t->shard].path;
}

static int dtype_allowed(enum dsm_wtype w, enum dsm_dtype d)
{
	switch (w) {
	case DSM_W_QUANT: return d == DSM_F8_E4M3 || d == DSM_BF16 || d == DSM_F32;
	case DSM_W_BF16: return d == DSM_BF16 || d == DSM_F32;
	case DSM_W_F32: return d == DSM_F32;
	case DSM_W_NORM: return d == DSM_BF16 || d == DSM_F32;
	case DSM_W_ANY: return d == DSM_F8_E4M3 || d == DSM_BF16 || d == DSM_F32 || d == DSM_F16;
	}
	return 0;
}

/* Every F8 tensor needs an F32 weight_scale_inv of shape [ceil(rows/128), ceil(cols/128)]. */
static int link_scales(struct dsm_checkpoint *ck)
{
	char name[DSM_NAME_MAX + 32];
	for (size_t i = 0; i < ck->n_tensors; i++) {
		struct dsm_tensor *t = &ck->tensors[i];
		if (t->dtype != DSM_F8_E4M3)
			continue;
		if (t->ndim != 2)
			return dsm_fail(DSM_ETENSOR, "%s: tensor '%.200s': an F8_E4M3 weight must be 2-D", where(ck, t),
					t->name);
		if (dsm_scale_name(name, sizeof name, t->name) < 0)
			return dsm_fail(DSM_ETENSOR, "tensor name too long: '%.200s'", t->name);
		const struct dsm_tensor *s = dsm_checkpoint_find(ck, name);
		if (!s)
			return dsm_fail(DSM_EMISSING, "%s: tensor '%.200s' is F8_E4M3 but '%.200s' is missing",
					where(ck, t), t->name, name);
		uint64_t r = dsm_scale_blocks(t->shape[0]), c = dsm_scale_blocks(t->shape[1]);
		if (s->dtype != DSM_F32 || s->ndim != 2 || s->shape[0] != r || s->shape[1] != c)
			return dsm_fail(DSM_ETENSOR, "%s: tensor '%.200s': must be F32 [%llu, %llu] for weight "
					"[%llu, %llu], found %s with %d dims [%llu, %llu]", where(ck, s), name,
					(unsigned long long)r, (unsigned long long)c,
					(unsigned long long)t->shape[0], (unsigned long long)t->shape[1],
					dsm_dtype_name(s->dtype), s->ndim, (unsigned long long)s->shape[0],
					(unsigned long long)(s->ndim > 1 ? s->shape[1] : 0));
		t->scale = s;
	}
	return 0;
}

/* Every tensor the config implies exists with the right shape and an allowed dtype. */
static int check_layout(struct dsm_checkpoint *ck)
{
	int rc = dsm_layout_build(&ck->config, &ck->layout, &ck->n_layout);
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < ck->n_layout; i++) {
		const struct dsm_layout_entry *e = &ck->layout[i];
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, e->name);
		if (!t) {
			if (e->optional)
				continue;
			return dsm_fail(DSM_EMISSING, "%s: missing tensor '%s' (implied by config.json)", ck->dir,
					e->name);
		}
		int ok = t->ndim == e->ndim && t->shape[0] == e->shape[0] && (e->ndim == 1 || t->shape[1] == e->shape[1]);
		if (!ok)
			return dsm_fail(DSM_ETENSOR, "%s: tensor '%s' has shape [%llu%s%llu] but config.json implies "
					"[%llu%s%llu]", where(ck, t), e->name, (unsigned long long)t->shape[0],
					t->ndim > 1 ? ", " : "", (unsigned long long)(t->ndim > 1 ? t->shape[1] : 0),
					(unsigned long long)e->shape[0], e->ndim > 1 ? ", " : "",
					(unsigned long long)(e->ndim > 1 ? e->shape[1] : 0));
		if (!dtype_allowed(e->wtype, t->dtype))
			return dsm_fail(DSM_EDTYPE, "%s: tensor '%s' has dtype %s, not allowed there", where(ck, t),
					e->name, dsm_dtype_name(t->dtype));
	}
	return 0;
}

int dsm_checkpoint_open(struct dsm_checkpoint **out, const char *dir)
{
	*out = NULL;
	struct dsm_checkpoint *ck = calloc(1, sizeof *ck);
	if (!ck)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	int rc;
	char *config_path = NULL, *index_path = NULL, *single_path = NULL;
	struct stat st;
	ck->dir = strdup(dir);
	config_path = path_join(dir, "config.json");
	index_path = path_join(dir, "model.safetensors.index.json");
	single_path = path_join(dir, "model.safetensors");
	if (!ck->dir || !config_path || !index_path || !single_path) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto out;
	}
	if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) {
		rc = dsm_fail(DSM_EMISSING, "%s: not a checkpoint folder (%s)", dir,
			      errno ? strerror(errno) : "not a directory");
		goto out;
	}
	if ((rc = dsm_config_load(&ck->config, config_path)) < 0)
		goto out;
	if (stat(index_path, &st) == 0)
		rc = load_indexed(ck, index_path);
	else if (stat(single_path, &st) == 0)
		rc = load_single(ck);
	else
		rc = dsm_fail(DSM_EMISSING, "%s: neither model.safetensors.index.json nor model.safetensors", dir);
	if (rc < 0 || (rc = link_scales(ck)) < 0 || (rc = check_layout(ck)) < 0)
		goto out;
	*out = ck;
	ck = NULL;
	rc = 0;
out:
	free(config_path);
	free(index_path);
	free(single_path);
	dsm_checkpoint_close(ck);
	return rc;
}

int dsm_checkpoint_read(const struct dsm_checkpoint *ck, const struct dsm_tensor *t, void *dst)
{
	const struct dsm_shard *s = &ck->shards[t->shard];
	uint64_t done = 0;
	while (done < t->nbytes) {
		size_t chunk = t->nbytes - done > (1u << 30) ? (1u << 30) : (size_t)(t->nbytes - done);
		ssize_t r = pread(s->fd, (char *)dst + done, chunk, (off_t)(t->offset + done));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return dsm_fail(DSM_EIO, "%s: tensor '%s': read at offset %llu failed: %s", s->path, t->name,
					(unsigned long long)(t->offset + done), strerror(errno));
		if (r == 0)
			return dsm_fail(DSM_ETRUNCATED, "%s: tensor '%s': the file ends at offset %llu, inside the "
					"tensor (it was truncated after opening)", s->path, t->name,
					(unsigned long long)(t->offset + done));
		done += (uint64_t)r;
	}
	return 0;
}
