#include "trace.h"

#include "error.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define NO_EXPERT 0xFFFFu

struct dsm_trace_writer {
	FILE *f;
	char *path;
	struct dsm_trace_info info;
	uint32_t n_moe;
	uint16_t *step;           /* [cap_tokens][n_moe][top_k] choices of the current step */
	size_t cap_tokens;
	int step_tokens;
	uint64_t tokens;
	int err;
	/* dsm_trace_add_token: records of tokens whose last layer has not come yet. */
	uint32_t *pend_pos;
	uint16_t *pend;           /* [cap_pend][n_moe][top_k] */
	size_t n_pend, cap_pend;
};

struct dsm_trace_reader {
	FILE *f;
	char *path;
	struct dsm_trace_info info;
	uint64_t next;
	uint8_t *rec;
	uint16_t *experts;
};

static void put32(uint8_t *p, uint32_t v)
{
	for (int i = 0; i < 4; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static void put64(uint8_t *p, uint64_t v)
{
	for (int i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p)
{
	return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t get64(const uint8_t *p)
{
	return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32;
}

static void encode_header(uint8_t h[DSM_TRACE_HEADER_BYTES], const struct dsm_trace_info *in)
{
	memset(h, 0, DSM_TRACE_HEADER_BYTES);
	memcpy(h, DSM_TRACE_MAGIC, 8);
	put32(h + 8, DSM_TRACE_VERSION);
	put32(h + 12, DSM_TRACE_HEADER_BYTES);
	put32(h + 16, in->n_layers);
	put32(h + 20, in->first_moe);
	put32(h + 24, in->n_experts);
	put32(h + 28, in->top_k);
	put32(h + 32, in->record_bytes);
	put32(h + 36, 0); /* flags */
	put64(h + 40, in->n_records);
	memcpy(h + 48, in->model_type, strnlen(in->model_type, 16));
}

int dsm_trace_create(struct dsm_trace_writer **out, const char *path, int n_layers, int first_moe, int n_experts,
		     int top_k, const char *model_type)
{
	*out = NULL;
	if (n_layers <= 0 || n_layers > 4096 || first_moe < 0 || first_moe >= n_layers || n_experts <= 0 ||
	    n_experts >= (int)NO_EXPERT || top_k <= 0 || top_k > n_experts)
		return dsm_fail(DSM_EARG, "%s: bad routing trace shape (%d layers from %d, %d experts, top %d)", path,
				n_layers, first_moe, n_experts, top_k);
	struct dsm_trace_writer *w = calloc(1, sizeof *w);
	if (!w)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	w->n_moe = (uint32_t)(n_layers - first_moe);
	w->info = (struct dsm_trace_info){ .n_layers = (uint32_t)n_layers, .first_moe = (uint32_t)first_moe,
		.n_experts = (uint32_t)n_experts, .top_k = (uint32_t)top_k,
		.record_bytes = 8 + w->n_moe * (uint32_t)top_k * 2 };
	snprintf(w->info.model_type, sizeof w->info.model_type, "%s", model_type ? model_type : "");
	w->path = strdup(path);
	w->f = fopen(path, "wb");
	if (!w->path || !w->f) {
		int e = errno;
		if (w->f)
			fclose(w->f);
		free(w->path);
		free(w);
		return dsm_fail(DSM_EIO, "%s: cannot create the routing trace: %s", path, strerror(e));
	}
	uint8_t h[DSM_TRACE_HEADER_BYTES];
	encode_header(h, &w->info);
	if (fwrite(h, 1, sizeof h, w->f) != sizeof h)
		w->err = errno ? errno : EIO;
	*out = w;
	return 0;
}

static int ensure_step(struct dsm_trace_writer *w, int n_tokens)
{
	if ((size_t)n_tokens <= w->cap_tokens)
		return 0;
	size_t per = (size_t)w->n_moe * w->info.top_k;
	uint16_t *v = realloc(w->step, (size_t)n_tokens * per * sizeof *v);
	if (!v)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (size_t i = w->cap_tokens * per; i < (size_t)n_tokens * per; i++)
		v[i] = NO_EXPERT;
	w->step = v;
	w->cap_tokens = (size_t)n_tokens;
	return 0;
}

int dsm_trace_add_layer(struct dsm_trace_writer *w, int layer, int n_tokens, const int32_t *idx)
{
	if (layer < (int)w->info.first_moe || layer >= (int)w->info.n_layers || n_tokens < 0)
		return dsm_fail(DSM_EARG, "%s: layer %d is not a MoE layer", w->path, layer);
	int rc = ensure_step(w, n_tokens);
	if (rc < 0)
		return rc;
	if (n_tokens > w->step_tokens)
		w->step_tokens = n_tokens;
	uint32_t k = w->info.top_k;
	for (int t = 0; t < n_tokens; t++)
		for (uint32_t j = 0; j < k; j++) {
			int32_t e = idx[(size_t)t * k + j];
			if (e < 0 || (uint32_t)e >= w->info.n_experts)
				return dsm_fail(DSM_EARG, "%s: layer %d token %d: expert %d out of range", w->path, layer,
						t, (int)e);
			w->step[((size_t)t * w->n_moe + (size_t)(layer - (int)w->info.first_moe)) * k + j] = (uint16_t)e;
		}
	return 0;
}

int dsm_trace_end_step(struct dsm_trace_writer *w, int n_tokens, const uint32_t *seq, const uint32_t *pos)
{
	int rc = ensure_step(w, n_tokens);
	if (rc < 0)
		return rc;
	size_t per = (size_t)w->n_moe * w->info.top_k;
	uint8_t *rec = malloc(w->info.record_bytes);
	if (!rec)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	for (int t = 0; t < n_tokens && !w->err; t++) {
		put32(rec, seq ? seq[t] : 0);
		put32(rec + 4, pos ? pos[t] : (uint32_t)w->tokens);
		for (size_t i = 0; i < per; i++) {
			uint16_t e = w->step[(size_t)t * per + i];
			rec[8 + 2 * i] = (uint8_t)e;
			rec[9 + 2 * i] = (uint8_t)(e >> 8);
		}
		if (fwrite(rec, 1, w->info.record_bytes, w->f) != w->info.record_bytes)
			w->err = errno ? errno : EIO;
		w->tokens++;
	}
	free(rec);
	for (size_t i = 0; i < w->cap_tokens * per; i++)
		w->step[i] = NO_EXPERT;
	w->step_tokens = 0;
	if (w->err)
		return dsm_fail(DSM_EIO, "%s: writing the routing trace failed: %s", w->path, strerror(w->err));
	return 0;
}

static void write_record(struct dsm_trace_writer *w, uint32_t seq, uint32_t pos, const uint16_t *experts)
{
	size_t per = (size_t)w->n_moe * w->info.top_k;
	uint8_t head[8];
	put32(head, seq);
	put32(head + 4, pos);
	if (!w->err && fwrite(head, 1, 8, w->f) != 8)
		w->err = errno ? errno : EIO;
	for (size_t i = 0; i < per && !w->err; i++) {
		uint8_t b[2] = { (uint8_t)experts[i], (uint8_t)(experts[i] >> 8) };
		if (fwrite(b, 1, 2, w->f) != 2)
			w->err = errno ? errno : EIO;
	}
	w->tokens++;
}

int dsm_trace_add_token(struct dsm_trace_writer *w, int layer, uint32_t pos, const int32_t *idx)
{
	if (layer < (int)w->info.first_moe || layer >= (int)w->info.n_layers)
		return dsm_fail(DSM_EARG, "%s: layer %d is not a MoE layer", w->path, layer);
	size_t per = (size_t)w->n_moe * w->info.top_k;
	size_t i = w->n_pend;
	while (i > 0 && w->pend_pos[i - 1] != pos)
		i--;
	if (i == 0) {
		if (w->n_pend == w->cap_pend) {
			size_t cap = w->cap_pend ? 2 * w->cap_pend : 16;
			uint32_t *pp = realloc(w->pend_pos, cap * sizeof *pp);
			if (pp)
				w->pend_pos = pp;
			uint16_t *pe = realloc(w->pend, cap * per * sizeof *pe);
			if (!pp || !pe)
				return dsm_fail(DSM_ENOMEM, "out of memory");
			w->pend = pe;
			w->cap_pend = cap;
		}
		i = ++w->n_pend;
		w->pend_pos[i - 1] = pos;
		for (size_t j = 0; j < per; j++)
			w->pend[(i - 1) * per + j] = NO_EXPERT;
	}
	uint16_t *rec = w->pend + (i - 1) * per;
	for (uint32_t j = 0; j < w->info.top_k; j++) {
		if (idx[j] < 0 || (uint32_t)idx[j] >= w->info.n_experts)
			return dsm_fail(DSM_EARG, "%s: layer %d token %u: expert %d out of range", w->path, layer, pos,
					(int)idx[j]);
		rec[(size_t)(layer - (int)w->info.first_moe) * w->info.top_k + j] = (uint16_t)idx[j];
	}
	if (layer == (int)w->info.n_layers - 1) {
		write_record(w, 0, pos, rec);
		memmove(w->pend_pos + (i - 1), w->pend_pos + i, (w->n_pend - i) * sizeof *w->pend_pos);
		memmove(rec, rec + per, (w->n_pend - i) * per * sizeof *rec);
		w->n_pend--;
	}
	return w->err ? dsm_fail(DSM_EIO, "%s: writing the routing trace failed: %s", w->path, strerror(w->err)) : 0;
}

int dsm_trace_close(struct dsm_trace_writer *w)
{
	if (!w)
		return 0;
	int rc = 0;
	size_t per = (size_t)w->n_moe * w->info.top_k;
	for (size_t i = 0; i < w->n_pend; i++)
		write_record(w, 0, w->pend_pos[i], w->pend + i * per);
	free(w->pend_pos);
	free(w->pend);
	w->info.n_records = w->tokens;
	uint8_t h[DSM_TRACE_HEADER_BYTES];
	encode_header(h, &w->info);
	if (!w->err && (fseek(w->f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof h, w->f) != sizeof h))
		w->err = errno ? errno : EIO;
	if (fclose(w->f) != 0 && !w->err)
		w->err = errno ? errno : EIO;
	if (w->err)
		rc = dsm_fail(DSM_EIO, "%s: writing the routing trace failed: %s", w->path, strerror(w->err));
	free(w->step);
	free(w->path);
	free(w);
	return rc;
}

int dsm_trace_open(struct dsm_trace_reader **out, const char *path)
{
	*out = NULL;
	FILE *f = fopen(path, "rb");
	if (!f)
		return dsm_fail(errno == ENOENT ? DSM_EMISSING : DSM_EIO, "%s: cannot open the routing trace: %s", path,
				strerror(errno));
	uint8_t h[DSM_TRACE_HEADER_BYTES];
	struct stat st;
	int rc = 0;
	struct dsm_trace_reader *r = NULL;
	if (fstat(fileno(f), &st) != 0) {
		rc = dsm_fail(DSM_EIO, "%s: stat failed: %s", path, strerror(errno));
		goto err;
	}
	if (fread(h, 1, sizeof h, f) != sizeof h || memcmp(h, DSM_TRACE_MAGIC, 8) != 0) {
		rc = dsm_fail(DSM_EHEADER, "%s: not a dsm routing trace (no " DSM_TRACE_MAGIC " header)", path);
		goto err;
	}
	struct dsm_trace_info in = { .n_layers = get32(h + 16), .first_moe = get32(h + 20),
		.n_experts = get32(h + 24), .top_k = get32(h + 28), .record_bytes = get32(h + 32),
		.n_records = get64(h + 40) };
	memcpy(in.model_type, h + 48, 16);
	in.model_type[16] = '\0';
	uint32_t version = get32(h + 8), hbytes = get32(h + 12);
	if (version != DSM_TRACE_VERSION) {
		rc = dsm_fail(DSM_EHEADER, "%s: routing trace version %u (this dsm reads version %d)", path, version,
			      DSM_TRACE_VERSION);
		goto err;
	}
	if (hbytes != DSM_TRACE_HEADER_BYTES || in.n_layers == 0 || in.n_layers > 4096 ||
	    in.first_moe >= in.n_layers || in.n_experts == 0 || in.n_experts >= NO_EXPERT || in.top_k == 0 ||
	    in.top_k > in.n_experts ||
	    in.record_bytes != 8 + (in.n_layers - in.first_moe) * in.top_k * 2) {
		rc = dsm_fail(DSM_EHEADER, "%s: inconsistent routing trace header (%u layers from %u, %u experts, top "
			      "%u, %u-byte records)", path, in.n_layers, in.first_moe, in.n_experts, in.top_k,
			      in.record_bytes);
		goto err;
	}
	uint64_t body = (uint64_t)st.st_size - DSM_TRACE_HEADER_BYTES;
	if (body % in.record_bytes != 0) {
		rc = dsm_fail(DSM_ETRUNCATED, "%s: the routing trace ends inside a record (%llu bytes after the header, "
			      "records of %u bytes)", path, (unsigned long long)body, in.record_bytes);
		goto err;
	}
	/* A trace not closed cleanly has a zero count: the file size says how many records it holds. */
	if (in.n_records == 0)
		in.n_records = body / in.record_bytes;
	if (in.n_records != body / in.record_bytes) {
		rc = dsm_fail(DSM_ETRUNCATED, "%s: the header counts %llu records, the file holds %llu", path,
			      (unsigned long long)in.n_records, (unsigned long long)(body / in.record_bytes));
		goto err;
	}
	r = calloc(1, sizeof *r);
	if (!r || !(r->path = strdup(path)) || !(r->rec = malloc(in.record_bytes)) ||
	    !(r->experts = malloc((in.record_bytes - 8) / 2 * sizeof *r->experts))) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory");
		goto err;
	}
	r->f = f;
	r->info = in;
	*out = r;
	return 0;
err:
	if (r) {
		free(r->path);
		free(r->rec);
		free(r->experts);
		free(r);
	}
	fclose(f);
	return rc;
}

const struct dsm_trace_info *dsm_trace_info(const struct dsm_trace_reader *r)
{
	return &r->info;
}

int dsm_trace_next(struct dsm_trace_reader *r, struct dsm_trace_record *rec)
{
	if (r->next >= r->info.n_records)
		return 0;
	if (fread(r->rec, 1, r->info.record_bytes, r->f) != r->info.record_bytes)
		return dsm_fail(DSM_EIO, "%s: record %llu: read failed", r->path, (unsigned long long)r->next);
	size_t n = (r->info.record_bytes - 8) / 2;
	for (size_t i = 0; i < n; i++) {
		uint16_t e = (uint16_t)(r->rec[8 + 2 * i] | r->rec[9 + 2 * i] << 8);
		if (e != NO_EXPERT && e >= r->info.n_experts)
			return dsm_fail(DSM_EHEADER, "%s: record %llu: expert %u out of range (%u experts)", r->path,
					(unsigned long long)r->next, e, r->info.n_experts);
		r->experts[i] = e;
	}
	rec->seq = get32(r->rec);
	rec->pos = get32(r->rec + 4);
	rec->experts = r->experts;
	r->next++;
	return 1;
}

void dsm_trace_close_reader(struct dsm_trace_reader *r)
{
	if (!r)
		return;
	fclose(r->f);
	free(r->path);
	free(r->rec);
	free(r->experts);
	free(r);
}

int dsm_trace_counts(const char *path, struct dsm_trace_info *info, uint64_t **counts)
{
	*counts = NULL;
	struct dsm_trace_reader *r;
	int rc = dsm_trace_open(&r, path);
	if (rc < 0)
		return rc;
	*info = r->info;
	uint64_t *c = calloc((size_t)r->info.n_layers * r->info.n_experts, sizeof *c);
	if (!c) {
		dsm_trace_close_reader(r);
		return dsm_fail(DSM_ENOMEM, "out of memory");
	}
	struct dsm_trace_record rec;
	uint32_t k = r->info.top_k, n_moe = r->info.n_layers - r->info.first_moe;
	while ((rc = dsm_trace_next(r, &rec)) == 1)
		for (uint32_t l = 0; l < n_moe; l++)
			for (uint32_t j = 0; j < k; j++) {
				uint16_t e = rec.experts[l * k + j];
				if (e != NO_EXPERT)
					c[(size_t)(l + r->info.first_moe) * r->info.n_experts + e]++;
			}
	dsm_trace_close_reader(r);
	if (rc < 0) {
		free(c);
		return rc;
	}
	*counts = c;
	return 0;
}
