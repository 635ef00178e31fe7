#include "expert_store.h"

#include "error.h"
#include "expert_kernels.h"

#include <errno.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

struct dsm_weight_map {
	const struct dsm_checkpoint *ck;
	void **base;            /* [n_shards] whole-file mappings (NULL for empty files) */
	uint64_t mapped, huge;  /* bytes of the files; of them, read into huge pages */
	void **copies;          /* aligned copies of misaligned tensors */
	size_t n_copies, cap_copies;
	uint64_t copied;
};

void dsm_weight_map_close(struct dsm_weight_map *m)
{
	if (!m)
		return;
	if (m->base)
		for (int i = 0; i < m->ck->n_shards; i++)
			if (m->base[i])
				munmap(m->base[i], m->ck->shards[i].file_size);
	for (size_t i = 0; i < m->n_copies; i++)
		free(m->copies[i]);
	free(m->copies);
	free(m->base);
	free(m);
}

int dsm_weight_map_open(struct dsm_weight_map **out, const struct dsm_checkpoint *ck)
{
	*out = NULL;
	struct dsm_weight_map *m = calloc(1, sizeof *m);
	if (!m)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	m->ck = ck;
	m->base = calloc((size_t)ck->n_shards + 1, sizeof *m->base);
	if (!m->base) {
		dsm_weight_map_close(m);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	for (int i = 0; i < ck->n_shards; i++) {
		const struct dsm_shard *s = &ck->shards[i];
		if (s->file_size == 0)
			continue;
		void *p = mmap(NULL, s->file_size, PROT_READ, MAP_PRIVATE, s->fd, 0);
		if (p == MAP_FAILED) {
			int e = errno;
			dsm_weight_map_close(m);
			return dsm_fail(DSM_EIO, "%s: cannot map %llu bytes: %s", s->path,
					(unsigned long long)s->file_size, strerror(e));
		}
		m->base[i] = p;
		m->mapped += s->file_size;
	}
	*out = m;
	return 0;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22 /* Linux 5.14 */
#endif
#define POPULATE_STEP (256ull << 20)
#define READ_CHUNK (4ull << 20)
#define HUGE_PAGE (2ull << 20)

/* Whether the kernel gives transparent huge pages to memory that asks for them (enabled: always or madvise). */
static int thp_on_request(void)
{
	char buf[128] = "";
	FILE *f = fopen("/sys/kernel/mm/transparent_hugepage/enabled", "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = 0;
	return strstr(buf, "[always]") || strstr(buf, "[madvise]");
}

/* Shard i's bytes read into anonymous memory in huge pages, moved into the place of its file mapping
 * (mremap), so that the weights are read through 2 MiB pages whatever pages the page cache holds them in.
 * Returns 1 when the memory or the move was refused (the file mapping is then still there, untouched), 0,
 * or DSM_EIO naming the shard. */
static int read_in_huge(struct dsm_weight_map *m, int i, uint64_t *done,
			void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg)
{
	const struct dsm_shard *s = &m->ck->shards[i];
	size_t span = (s->file_size + 4095) & ~(size_t)4095;
	char *a = mmap(NULL, span + HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
		       -1, 0);
	if (a == MAP_FAILED)
		return 1;
	/* p: the same offset within a huge page as the mapping it replaces, so that the huge pages survive the move */
	char *p = a + (((uintptr_t)m->base[i] - (uintptr_t)a) & (HUGE_PAGE - 1));
	madvise(p, span, MADV_HUGEPAGE);
	/* The threads read chunks at once: the reading thread's page faults zero each fresh huge page, and with
	 * the copy from the page cache that bound one thread (0.6 s a GB on a virtual machine). */
	int64_t chunks = (int64_t)((s->file_size + READ_CHUNK - 1) / READ_CHUNK);
	uint64_t bad_off = UINT64_MAX, total = *done;
	int bad_errno = 0;
#pragma omp parallel for schedule(dynamic, 1)
	for (int64_t k = 0; k < chunks; k++) {
		uint64_t off = (uint64_t)k * READ_CHUNK, end = off + READ_CHUNK < s->file_size ? off + READ_CHUNK : s->file_size;
		while (off < end) {
			ssize_t n = pread(s->fd, p + off, (size_t)(end - off), (off_t)off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				int e = n < 0 ? errno : 0;
#pragma omp critical(read_in_failed)
				if (off < bad_off) {
					bad_off = off;
					bad_errno = e;
				}
				break;
			}
			off += (uint64_t)n;
			uint64_t now;
#pragma omp atomic capture
			now = total += (uint64_t)n;
			if (progress && omp_get_thread_num() == 0)
				progress(now, m->mapped, arg);
		}
	}
	*done = total;
	if (bad_off != UINT64_MAX) {
		munmap(a, span + HUGE_PAGE);
		return dsm_fail(DSM_EIO, "%s: cannot read the bytes at offset %llu: %s", s->path,
				(unsigned long long)bad_off, bad_errno ? strerror(bad_errno) : "the file ended early");
	}
	if (progress)
		progress(*done, m->mapped, arg);
	if (mremap(p, span, span, MREMAP_MAYMOVE | MREMAP_FIXED, m->base[i]) == MAP_FAILED) {
		munmap(a, span + HUGE_PAGE);
		return 1;
	}
	mprotect(m->base[i], span, PROT_READ);
	m->huge += s->file_size;
	if (p > a) /* what is left of the allocation on either side */
		munmap(a, (size_t)(p - a));
	munmap(p + span, HUGE_PAGE - (size_t)(p - a));
	return 0;
}

int dsm_weight_map_populate(struct dsm_weight_map *m, int huge,
			    void (*progress)(uint64_t done, uint64_t total, void *arg), void *arg)
{
	uint64_t done = 0;
	huge = huge && thp_on_request();
	for (int i = 0; i < m->ck->n_shards; i++) {
		const struct dsm_shard *s = &m->ck->shards[i];
		if (!s->file_size)
			continue;
		int rc = huge ? read_in_huge(m, i, &done, progress, arg) : 1;
		if (rc <= 0) {
			if (rc < 0)
				return rc;
			continue;
		}
		for (uint64_t off = 0; off < s->file_size; off += POPULATE_STEP) {
			uint64_t len = s->file_size - off < POPULATE_STEP ? s->file_size - off : POPULATE_STEP;
			if (madvise((char *)m->base[i] + off, len, MADV_POPULATE_READ) < 0) {
				int e = errno;
				if (e == EINVAL && done == 0) /* a kernel without it: pages come on first touch */
					return 0;
				return dsm_fail(DSM_EIO, "%s: cannot read %llu bytes at offset %llu: %s", s->path,
						(unsigned long long)len, (unsigned long long)off, strerror(e));
			}
			done += len;
			if (progress)
				progress(done, m->mapped, arg);
		}
	}
	for (int i = 0; i < m->ck->n_shards; i++)
		if (m->ck->shards[i].file_size)
			dsm_touch_pages(m->base[i], m->ck->shards[i].file_size);
	return 0;
}

const void *dsm_weight_map_shard(const struct dsm_weight_map *m, int i)
{
	return m->base[i];
}

void dsm_weight_map_usage(const struct dsm_weight_map *m, uint64_t *mapped, uint64_t *copied, uint64_t *huge)
{
	*mapped = m->mapped;
	*copied = m->copied;
	*huge = m->huge;
}

/* The bytes of t, aligned to `align`: in the mapping when they are, else copied once. */
static const void *tensor_bytes(struct dsm_weight_map *m, const struct dsm_tensor *t, size_t align)
{
	const char *p = (const char *)m->base[t->shard] + t->offset;
	if (((uintptr_t)p & (align - 1)) == 0)
		return p;
	if (m->n_copies == m->cap_copies) {
		size_t cap = m->cap_copies ? 2 * m->cap_copies : 64;
		void **v = realloc(m->copies, cap * sizeof *v);
		if (!v) {
			dsm_fail(DSM_ENOMEM, "out of memory");
			return NULL;
		}
		m->copies = v;
		m->cap_copies = cap;
	}
	void *c = aligned_alloc(64, (t->nbytes + 63) & ~(uint64_t)63);
	if (!c) {
		dsm_fail(DSM_ENOMEM, "out of memory copying tensor '%s'", t->name);
		return NULL;
	}
	memcpy(c, p, t->nbytes);
	m->copies[m->n_copies++] = c;
	m->copied += t->nbytes;
	return c;
}

int dsm_weight_map_mat(struct dsm_weight_map *m, const char *name, int64_t rows, int64_t cols,
		       struct dsm_mat *out)
{
	const struct dsm_checkpoint *ck = m->ck;
	const struct dsm_tensor *t = dsm_checkpoint_find(ck, name);
	memset(out, 0, sizeof *out);
	if (!t)
		return dsm_fail(DSM_EMISSING, "%s: missing tensor '%s'", ck->dir, name);
	const char *file = ck->shards[t->shard].path;
	if (t->ndim != 2 || (int64_t)t->shape[0] != rows || (int64_t)t->shape[1] != cols)
		return dsm_fail(DSM_ETENSOR, "%s: tensor '%s' must be [%lld, %lld]", file, name, (long long)rows,
				(long long)cols);
	if (t->dtype != DSM_F8_E4M3 && t->dtype != DSM_BF16 && t->dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "%s: tensor '%s' has dtype %s; a weight must be F8_E4M3, BF16 or F32",
				file, name, dsm_dtype_name(t->dtype));
	out->dtype = t->dtype;
	out->rows = rows;
	out->cols = cols;
	out->data = tensor_bytes(m, t, dsm_dtype_size(t->dtype));
	if (!out->data)
		return DSM_ENOMEM;
	if (t->dtype == DSM_F8_E4M3) {
		if (!t->scale)
			return dsm_fail(DSM_EMISSING, "%s: tensor '%s' is F8_E4M3 without a weight_scale_inv", file, name);
		out->scale = tensor_bytes(m, t->scale, 4);
		if (!out->scale)
			return DSM_ENOMEM;
	}
	return 0;
}

int dsm_weight_map_vec(struct dsm_weight_map *m, const char *name, int64_t n, float *dst)
{
	const struct dsm_checkpoint *ck = m->ck;
	const struct dsm_tensor *t = dsm_checkpoint_find(ck, name);
	if (!t)
		return dsm_fail(DSM_EMISSING, "%s: missing tensor '%s'", ck->dir, name);
	const char *file = ck->shards[t->shard].path;
	if (t->ndim != 1 || (int64_t)t->shape[0] != n)
		return dsm_fail(DSM_ETENSOR, "%s: tensor '%s' must be [%lld]", file, name, (long long)n);
	if (t->dtype != DSM_BF16 && t->dtype != DSM_F32)
		return dsm_fail(DSM_EDTYPE, "%s: tensor '%s' has dtype %s; expected BF16 or F32", file, name,
				dsm_dtype_name(t->dtype));
	dsm_convert_to_f32(dst, (const char *)m->base[t->shard] + t->offset, t->dtype, (size_t)n);
	return 0;
}

/* ---- the model as the expert store sees it ------------------------------------------------------------ */

void dsm_moe_shape_from_config(struct dsm_moe_shape *s, const struct dsm_config *c)
{
	memset(s, 0, sizeof *s);
	snprintf(s->model_type, sizeof s->model_type, "%s", c->model_type);
	s->n_layers = c->num_hidden_layers;
	s->first_moe = c->first_k_dense_replace;
	s->n_experts = c->n_routed_experts;
	s->hidden_size = c->hidden_size;
	s->moe_intermediate_size = c->moe_intermediate_size;
	s->top_k = c->num_experts_per_tok;
	s->n_group = c->n_group;
	s->topk_group = c->topk_group;
	s->norm_topk_prob = c->norm_topk_prob;
	s->routed_scaling_factor = c->routed_scaling_factor;
}

void dsm_store_model_free(struct dsm_store_model *m)
{
	if (!m)
		return;
	free(m->shards);
	free(m->experts);
	free(m->router_bias);
	free(m);
}

static struct dsm_store_tensor store_tensor(const struct dsm_tensor *t)
{
	return (struct dsm_store_tensor){ .name = t->name, .shard = t->shard, .offset = t->offset, .nbytes = t->nbytes,
		.dtype = t->dtype, .rows = (int64_t)t->shape[0], .cols = (int64_t)t->shape[1] };
}

/* The tensors of routed expert (layer, expert), with their addresses in the mapping when there is one. */
static int describe_expert(const struct dsm_checkpoint *ck, struct dsm_weight_map *map, int layer, int expert,
			   struct dsm_store_expert *e)
{
	static const char *const proj[DSM_EXPERT_NPROJ] = { "gate_proj", "up_proj", "down_proj" };
	for (int j = 0; j < DSM_EXPERT_NPROJ; j++) {
		char name[DSM_NAME_MAX];
		snprintf(name, sizeof name, "model.layers.%d.mlp.experts.%d.%s.weight", layer, expert, proj[j]);
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, name);
		if (!t)
			return dsm_fail(DSM_EMISSING, "%s: tensor '%s' is missing", ck->dir, name);
		const char *file = ck->shards[t->shard].path;
		if (t->ndim != 2)
			return dsm_fail(DSM_ETENSOR, "%s: tensor '%s' must be a matrix", file, name);
		if (t->dtype != DSM_F8_E4M3 && t->dtype != DSM_BF16 && t->dtype != DSM_F32)
			return dsm_fail(DSM_EDTYPE, "%s: tensor '%s' has dtype %s; an expert's weight must be F8_E4M3, "
					"BF16 or F32", file, name, dsm_dtype_name(t->dtype));
		if (t->dtype == DSM_F8_E4M3 && !t->scale)
			return dsm_fail(DSM_EMISSING, "%s: tensor '%s' is F8_E4M3 without a weight_scale_inv", file, name);
		e->w[j] = store_tensor(t);
		if (t->scale)
			e->scale[j] = store_tensor(t->scale);
		if (map) {
			struct dsm_mat v;
			int rc = dsm_weight_map_mat(map, name, e->w[j].rows, e->w[j].cols, &v);
			if (rc < 0)
				return rc;
			e->w[j].mapped = v.data;
			e->scale[j].mapped = v.scale;
		}
	}
	return 0;
}

/* The e_score_correction_bias of every MoE layer as F32, [n_layers * n_experts]. */
static int read_router_bias(const struct dsm_checkpoint *ck, struct dsm_weight_map *map, float *bias)
{
	const struct dsm_config *c = &ck->config;
	int64_t E = c->n_routed_experts;
	for (int l = c->first_k_dense_replace; l < c->num_hidden_layers; l++) {
		char name[DSM_NAME_MAX];
		snprintf(name, sizeof name, "model.layers.%d.mlp.gate.e_score_correction_bias", l);
		float *dst = bias + (size_t)l * (size_t)E;
		if (map) {
			int rc = dsm_weight_map_vec(map, name, E, dst);
			if (rc < 0)
				return rc;
			continue;
		}
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, name);
		if (!t)
			return dsm_fail(DSM_EMISSING, "%s: missing tensor '%s'", ck->dir, name);
		if (t->ndim != 1 || (int64_t)t->shape[0] != E || (t->dtype != DSM_BF16 && t->dtype != DSM_F32))
			return dsm_fail(DSM_ETENSOR, "%s: tensor '%s' must be [%lld] of BF16 or F32",
					ck->shards[t->shard].path, name, (long long)E);
		void *raw = malloc(t->nbytes);
		if (!raw)
			return dsm_fail(DSM_ENOMEM, "out of memory");
		int rc = dsm_checkpoint_read(ck, t, raw);
		if (rc == 0)
			dsm_convert_to_f32(dst, raw, t->dtype, (size_t)E);
		free(raw);
		if (rc < 0)
			return rc;
	}
	return 0;
}

int dsm_store_model_from_checkpoint(struct dsm_store_model **out, const struct dsm_checkpoint *ck,
				    struct dsm_weight_map *map)
{
	*out = NULL;
	const struct dsm_config *c = &ck->config;
	struct dsm_store_model *m = calloc(1, sizeof *m);
	if (!m)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	dsm_moe_shape_from_config(&m->shape, c);
	m->source = ck->dir;
	m->n_shards = ck->n_shards;
	size_t n = (size_t)c->num_hidden_layers * (size_t)(c->n_routed_experts > 0 ? c->n_routed_experts : 0);
	m->shards = calloc((size_t)ck->n_shards + 1, sizeof *m->shards);
	m->experts = calloc(n + 1, sizeof *m->experts);
	m->router_bias = calloc(n + 1, sizeof *m->router_bias);
	int rc = 0;
	if (!m->shards || !m->experts || !m->router_bias) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto err;
	}
	for (int i = 0; i < ck->n_shards; i++)
		m->shards[i] = ck->shards[i].path;
	for (int l = c->first_k_dense_replace; l < c->num_hidden_layers; l++)
		for (int x = 0; x < c->n_routed_experts; x++)
			if ((rc = describe_expert(ck, map, l, x, &m->experts[(size_t)l * (size_t)c->n_routed_experts + (size_t)x])) < 0)
				goto err;
	if ((rc = read_router_bias(ck, map, m->router_bias)) < 0)
		goto err;
	for (size_t i = 0; i < ck->n_layout; i++) {
		const struct dsm_layout_entry *e = &ck->layout[i];
		const struct dsm_tensor *t = dsm_checkpoint_find(ck, e->name);
		if (t && e->kind != DSM_KIND_ROUTED && e->kind != DSM_KIND_MTP)
			m->non_expert_bytes[e->kind] += t->nbytes + (t->scale ? t->scale->nbytes : 0);
	}
	*out = m;
	return 0;
err:
	dsm_store_model_free(m);
	return rc;
}
