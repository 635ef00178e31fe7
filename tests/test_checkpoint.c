/* Checkpoint validation: a tiny synthetic checkpoint is valid; each of many corrupted copies of it is
 * rejected with the exact error kind and a message naming the file and the tensor or key
 * (docs TESTING.md point 5, in the spirit of llama.cpp's test-gguf). */
#include "checkpoint.h"
#include "error.h"
#include "expert_store.h"
#include "json_util.h"
#include "mkmodel.h"
#include "test_util.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char base_dir[4096], work_dir[4096];

/* ---- files ---------------------------------------------------------------------------------------- */

/* The whole file (NUL-terminated) or NULL, through the library's reader. */
static char *slurp(const char *path, size_t *len)
{
	char *data;
	return read_file(path, SIZE_MAX, &data, len) == 0 ? data : NULL;
}

static void spill(const char *path, const void *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len || fclose(f) != 0) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		exit(99);
	}
}

static void remove_dir(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *e;
	char path[8192];
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(dir);
}

/* work_dir := a fresh copy of base_dir. */
static void fresh_copy(void)
{
	remove_dir(work_dir);
	mkdir(work_dir, 0755);
	DIR *d = opendir(base_dir);
	struct dirent *e;
	char src[8192], dst[8192];
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(src, sizeof src, "%s/%s", base_dir, e->d_name);
		snprintf(dst, sizeof dst, "%s/%s", work_dir, e->d_name);
		size_t len;
		char *data = slurp(src, &len);
		if (!data) {
			fprintf(stderr, "cannot read %s\n", src);
			exit(99);
		}
		spill(dst, data, len);
		free(data);
	}
	closedir(d);
}

static void work_path(char *buf, size_t size, const char *file)
{
	snprintf(buf, size, "%s/%s", work_dir, file);
}

/* ---- shard surgery -------------------------------------------------------------------------------- */

struct shard_file {
	char path[8192];
	char *header;     /* NUL-terminated JSON text */
	size_t header_len;
	char *data;
	size_t data_len;
};

static void shard_load(struct shard_file *s, const char *file)
{
	work_path(s->path, sizeof s->path, file);
	size_t len;
	char *all = slurp(s->path, &len);
	if (!all || len < 8) {
		fprintf(stderr, "cannot read %s\n", s->path);
		exit(99);
	}
	uint64_t n = 0;
	for (int i = 7; i >= 0; i--)
		n = n << 8 | (unsigned char)all[i];
	s->header_len = n;
	s->header = malloc(n + 1);
	memcpy(s->header, all + 8, n);
	s->header[n] = 0;
	s->data_len = len - 8 - n;
	s->data = malloc(s->data_len + 1);
	memcpy(s->data, all + 8 + n, s->data_len);
	free(all);
}

/* Writes header (text of length len; declared length `declared`) and data back. */
static void shard_store(struct shard_file *s, const char *text, size_t len, uint64_t declared)
{
	size_t total = 8 + len + s->data_len;
	unsigned char *out = malloc(total);
	for (int i = 0; i < 8; i++)
		out[i] = (unsigned char)(declared >> (8 * i));
	memcpy(out + 8, text, len);
	memcpy(out + 8 + len, s->data, s->data_len);
	spill(s->path, out, total);
	free(out);
	free(s->header);
	free(s->data);
}

static const char *first_shard = "model-00001-of-00012.safetensors";

/* Parses the first shard's header, lets mutate() change it, writes it back. */
static void mutate_header(const char *file, void (*mutate)(cJSON *))
{
	struct shard_file s;
	shard_load(&s, file);
	cJSON *h = cJSON_Parse(s.header);
	mutate(h);
	char *text = cJSON_PrintUnformatted(h);
	cJSON_Delete(h);
	shard_store(&s, text, strlen(text), strlen(text));
	free(text);
}

/* The first tensor entry of a header (skipping __metadata__) with the given dtype, or any if NULL. */
static cJSON *entry(cJSON *h, const char *dtype, int nth)
{
	for (cJSON *e = h->child; e; e = e->next) {
		if (strcmp(e->string, "__metadata__") == 0)
			continue;
		const char *d = cJSON_GetObjectItem(e, "dtype")->valuestring;
		if ((!dtype || strcmp(d, dtype) == 0) && nth-- == 0)
			return e;
	}
	fprintf(stderr, "fixture: no tensor of dtype %s\n", dtype ? dtype : "any");
	exit(99);
}

static uint64_t off(cJSON *e, int i)
{
	return (uint64_t)cJSON_GetArrayItem(cJSON_GetObjectItem(e, "data_offsets"), i)->valuedouble;
}

static void set_offsets(cJSON *e, uint64_t b, uint64_t en)
{
	double v[2] = { (double)b, (double)en };
	cJSON_ReplaceItemInObject(e, "data_offsets", cJSON_CreateDoubleArray(v, 2));
}

static void set_shape(cJSON *e, int n, const double *dims)
{
	cJSON_ReplaceItemInObject(e, "shape", cJSON_CreateDoubleArray(dims, n));
}

static void m_unknown_dtype(cJSON *h) { cJSON_ReplaceItemInObject(entry(h, "BF16", 0), "dtype", cJSON_CreateString("F7_E3M3")); }
static void m_shape_bytes(cJSON *h)
{
	cJSON *e = entry(h, "BF16", 0);
	double d[1] = { (double)(off(e, 1) - off(e, 0)) }; /* BF16 elements = bytes: twice too many */
	set_shape(e, 1, d);
}
static void m_shape_overflow(cJSON *h)
{
	double d[3] = { 4294967296.0, 4294967296.0, 4096.0 };
	set_shape(entry(h, "F8_E4M3", 0), 3, d);
}
static void m_shape_negative(cJSON *h)
{
	double d[2] = { -1, 4 };
	set_shape(entry(h, "F32", 0), 2, d);
}
static void m_shape_fraction(cJSON *h)
{
	double d[2] = { 1.5, 4 };
	set_shape(entry(h, "F32", 0), 2, d);
}
static void m_out_of_bounds(cJSON *h)
{
	cJSON *e = entry(h, NULL, 0);
	uint64_t n = off(e, 1) - off(e, 0);
	set_offsets(e, 1000000000, 1000000000 + n);
}
static void m_overlap(cJSON *h)
{
	cJSON *a = entry(h, "F32", 0), *b = entry(h, "F32", 1);
	uint64_t n = off(b, 1) - off(b, 0);
	set_offsets(b, off(a, 0), off(a, 0) + n);
}
static void m_hole(cJSON *h) { cJSON_DeleteItemFromObject(h, entry(h, "F32", 0)->string); }
static void m_reversed(cJSON *h)
{
	cJSON *e = entry(h, NULL, 1);
	set_offsets(e, off(e, 1), off(e, 0));
}
static void m_metadata(cJSON *h)
{
	cJSON *meta = cJSON_GetObjectItem(h, "__metadata__");
	cJSON_AddNumberToObject(meta, "version", 3);
}
static void m_no_offsets(cJSON *h) { cJSON_DeleteItemFromObject(entry(h, NULL, 0), "data_offsets"); }
static void m_scale_shape(cJSON *h)
{
	/* A scale entry: swap its two dims (same byte count, wrong shape). */
	for (cJSON *e = h->child; e; e = e->next) {
		if (!strstr(e->string, "scale_inv"))
			continue;
		cJSON *s = cJSON_GetObjectItem(e, "shape");
		double r = cJSON_GetArrayItem(s, 0)->valuedouble, c = cJSON_GetArrayItem(s, 1)->valuedouble;
		if (r == c)
			continue;
		double d[2] = { c, r };
		set_shape(e, 2, d);
		return;
	}
	exit(99);
}
static void m_weight_shape(cJSON *h)
{
	for (cJSON *e = h->child; e; e = e->next) {
		if (strcmp(e->string, "__metadata__") == 0 || strstr(e->string, "scale_inv"))
			continue;
		cJSON *s = cJSON_GetObjectItem(e, "shape");
		if (cJSON_GetArraySize(s) != 2)
			continue;
		double r = cJSON_GetArrayItem(s, 0)->valuedouble, c = cJSON_GetArrayItem(s, 1)->valuedouble;
		double d[2] = { r * 2, c / 2 };
		if ((uint64_t)c % 2)
			continue;
		set_shape(e, 2, d);
		return;
	}
	exit(99);
}
static void m_norm_dtype(cJSON *h)
{
	/* A BF16 norm declared as I16: same size, a dtype the model does not allow there. */
	for (cJSON *e = h->child; e; e = e->next)
		if (strstr(e->string, "input_layernorm")) {
			cJSON_ReplaceItemInObject(e, "dtype", cJSON_CreateString("I16"));
			return;
		}
	exit(99);
}

/* Raw text edits of the header. */
static void raw_header(const char *file, const char *text, uint64_t declared_delta)
{
	struct shard_file s;
	shard_load(&s, file);
	size_t len = strlen(text);
	shard_store(&s, text, len, len + declared_delta);
}

static void duplicate_name(const char *file)
{
	struct shard_file s;
	shard_load(&s, file);
	/* Re-declare the first tensor under its own name at the end of the object. */
	cJSON *h = cJSON_Parse(s.header);
	cJSON *e = entry(h, NULL, 0);
	char *one = cJSON_PrintUnformatted(e);
	size_t n = strlen(s.header);
	while (n && s.header[n - 1] == ' ')
		n--;
	char *text = malloc(n + strlen(one) + strlen(e->string) + 16);
	memcpy(text, s.header, n - 1);           /* without the closing brace */
	sprintf(text + n - 1, ",\"%s\":%s}", e->string, one);
	cJSON_Delete(h);
	free(one);
	shard_store(&s, text, strlen(text), strlen(text));
	free(text);
}

static void edit_text_file(const char *file, const char *from, const char *to)
{
	char path[8192];
	work_path(path, sizeof path, file);
	size_t len;
	char *text = slurp(path, &len);
	char *at = text ? strstr(text, from) : NULL;
	if (!at) {
		fprintf(stderr, "fixture: '%s' not in %s\n", from, file);
		exit(99);
	}
	size_t out_len = len - strlen(from) + strlen(to);
	char *out = malloc(out_len + 1);
	size_t head = (size_t)(at - text);
	memcpy(out, text, head);
	memcpy(out + head, to, strlen(to));
	memcpy(out + head + strlen(to), at + strlen(from), len - head - strlen(from));
	spill(path, out, out_len);
	free(out);
	free(text);
}

/* Deletes (value NULL), duplicates (value "duplicate") or re-points an entry of the index's weight_map. */
static void index_edit(const char *name, const char *value)
{
	char path[8192];
	work_path(path, sizeof path, "model.safetensors.index.json");
	size_t len;
	char *text = slurp(path, &len);
	cJSON *root = cJSON_Parse(text);
	free(text);
	cJSON *map = cJSON_GetObjectItem(root, "weight_map");
	cJSON *e = cJSON_GetObjectItem(map, name);
	if (!e)
		exit(99);
	if (!value)
		cJSON_DeleteItemFromObject(map, name);
	else if (strcmp(value, "duplicate") == 0)
		cJSON_AddItemToObject(map, name, cJSON_Duplicate(e, 1));  /* cJSON keeps both */
	else
		cJSON_ReplaceItemInObject(map, name, cJSON_CreateString(value));
	char *out = cJSON_PrintUnformatted(root);
	spill(path, out, strlen(out));
	free(out);
	cJSON_Delete(root);
}

static void truncate_file(const char *file, long cut)
{
	char path[8192];
	work_path(path, sizeof path, file);
	struct stat st;
	stat(path, &st);
	if (truncate(path, st.st_size - cut) != 0)
		exit(99);
}

static void append_bytes(const char *file, size_t n)
{
	char path[8192];
	work_path(path, sizeof path, file);
	FILE *f = fopen(path, "ab");
	for (size_t i = 0; i < n; i++)
		fputc(0, f);
	fclose(f);
}

static void remove_file(const char *file)
{
	char path[8192];
	work_path(path, sizeof path, file);
	unlink(path);
}

/* ---- the check ------------------------------------------------------------------------------------ */

static int n_fixtures;

/* Opening work_dir must fail with `want` and a message containing `mention`. */
static void expect(const char *fixture, int want, const char *mention)
{
	struct dsm_checkpoint *ck = NULL;
	int rc = dsm_checkpoint_open(&ck, work_dir);
	n_fixtures++;
	CHECK(rc == want, "fixture '%s': got %d (%s) want %d (%s); message: %s", fixture, rc, dsm_error_name(rc),
	      want, dsm_error_name(want), dsm_errmsg());
	CHECK(!ck, "fixture '%s': no checkpoint on failure", fixture);
	if (rc < 0)
		CHECK(strstr(dsm_errmsg(), mention) != NULL, "fixture '%s': message '%s' does not name '%s'", fixture,
		      dsm_errmsg(), mention);
	dsm_checkpoint_close(ck);
	if (getenv("VERBOSE"))
		printf("%-28s %-10s %s\n", fixture, dsm_error_name(rc), dsm_errmsg());
}

static void header_fixture(const char *name, void (*mutate)(cJSON *), int want, const char *mention)
{
	fresh_copy();
	mutate_header(first_shard, mutate);
	expect(name, want, mention);
}

/* The read-in (dsm_weight_map_populate): a one-shard checkpoint of several read chunks comes into memory
 * byte for byte as in its file, in huge pages where the kernel gives them; a shard cut short after it was
 * mapped is an error naming it, not a crash. */
static int progress_calls;
static void count_progress(uint64_t done, uint64_t total, void *arg)
{
	(void)arg;
	CHECK(done <= total, "progress %llu of %llu", (unsigned long long)done, (unsigned long long)total);
	progress_calls++;
}

static void test_read_in(const char *top)
{
	char dir[4200];
	snprintf(dir, sizeof dir, "%s/tests/ckpt-read-in", top);
	remove_dir(dir);
	mkdir(dir, 0755);
	struct mkmodel_options o = { .config = mkmodel_preset("tiny")->config, .seed = 3, .shard_bytes = 1u << 30,
				     .quiet = 1 };
	struct dsm_checkpoint *ck = NULL;
	struct dsm_weight_map *m = NULL;
	if (mkmodel_write(&o, dir) < 0 || dsm_checkpoint_open(&ck, dir) < 0 || dsm_weight_map_open(&m, ck) < 0) {
		fprintf(stderr, "read-in checkpoint: %s\n", dsm_errmsg());
		exit(99);
	}
	CHECK(ck->n_shards == 1 && ck->shards[0].file_size > (8u << 20), "one shard of several chunks");
	CHECK(dsm_weight_map_populate(m, 1, count_progress, NULL) == 0, "read-in: %s", dsm_errmsg());
	CHECK(progress_calls > 0, "no progress");
	size_t len;
	char *file = slurp(ck->shards[0].path, &len);
	CHECK(file && len == ck->shards[0].file_size && memcmp(file, dsm_weight_map_shard(m, 0), len) == 0,
	      "the shard read in differs from its file");
	uint64_t mapped, copied, huge;
	dsm_weight_map_usage(m, &mapped, &copied, &huge);
	printf("read-in: %llu bytes, %llu of them into huge pages\n", (unsigned long long)mapped,
	       (unsigned long long)huge);
	free(file);
	dsm_weight_map_close(m);
	for (int huge_pages = 1; huge_pages >= 0; huge_pages--) {
		CHECK(dsm_weight_map_open(&m, ck) == 0, "%s", dsm_errmsg());
		CHECK(truncate(ck->shards[0].path, (off_t)(ck->shards[0].file_size / 2)) == 0, "truncate");
		int rc = dsm_weight_map_populate(m, huge_pages, NULL, NULL);
		CHECK(rc == DSM_EIO && strstr(dsm_errmsg(), ck->shards[0].path), "a shard cut short (huge pages %d): "
		      "%d, %s", huge_pages, rc, dsm_errmsg());
		dsm_weight_map_close(m);
	}
	dsm_checkpoint_close(ck);
	remove_dir(dir);
}

int main(void)
{
	const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
	snprintf(base_dir, sizeof base_dir, "%s/tests/ckpt-fixtures-base", top);
	snprintf(work_dir, sizeof work_dir, "%s/tests/ckpt-fixtures-work", top);
	mkdir(base_dir, 0755);

	struct mkmodel_options o = { .config = mkmodel_preset("tiny")->config, .seed = 7, .shard_bytes = 1u << 20,
				     .quiet = 1 };
	if (mkmodel_write(&o, base_dir) < 0) {
		fprintf(stderr, "mkmodel: %s\n", dsm_errmsg());
		return 99;
	}

	/* The valid checkpoint opens. */
	fresh_copy();
	struct dsm_checkpoint *ck = NULL;
	int rc = dsm_checkpoint_open(&ck, work_dir);
	CHECK(rc == 0, "valid checkpoint rejected: %s", dsm_errmsg());
	CHECK(ck && ck->n_shards == 12, "expected 12 shards, got %d", ck ? ck->n_shards : -1);
	dsm_checkpoint_close(ck);

	/* Safetensors header rules. */
	header_fixture("unknown dtype", m_unknown_dtype, DSM_EDTYPE, "F7_E3M3");
	header_fixture("shape vs byte count", m_shape_bytes, DSM_ESHAPE, "data_offsets span");
	header_fixture("shape overflow", m_shape_overflow, DSM_ESHAPE, "overflows");
	header_fixture("negative shape", m_shape_negative, DSM_ESHAPE, "non-negative integers");
	header_fixture("fractional shape", m_shape_fraction, DSM_ESHAPE, "non-negative integers");
	header_fixture("offsets out of bounds", m_out_of_bounds, DSM_ELAYOUT, "hole");
	header_fixture("overlapping ranges", m_overlap, DSM_ELAYOUT, "overlaps");
	header_fixture("hole between ranges", m_hole, DSM_ELAYOUT, "hole");
	header_fixture("offsets reversed", m_reversed, DSM_ELAYOUT, "end before they begin");
	header_fixture("metadata not strings", m_metadata, DSM_EJSON, "__metadata__");
	header_fixture("missing data_offsets", m_no_offsets, DSM_EJSON, "data_offsets");
	header_fixture("wrong scale shape", m_scale_shape, DSM_ETENSOR, "weight_scale_inv");
	header_fixture("weight shape vs config", m_weight_shape, DSM_ETENSOR, "config.json implies");
	header_fixture("dtype not allowed", m_norm_dtype, DSM_EDTYPE, "input_layernorm");

	fresh_copy();
	duplicate_name(first_shard);
	expect("duplicate tensor name", DSM_EDUPLICATE, "appears twice");

	fresh_copy();
	raw_header(first_shard, "{\"a\": [1, 2", 0);
	expect("header not JSON", DSM_EJSON, first_shard);
	fresh_copy();
	raw_header(first_shard, "{\"caf\xc3\x28\": 1}", 0);
	expect("header invalid UTF-8", DSM_EJSON, "UTF-8");
	fresh_copy();
	raw_header(first_shard, "[1, 2, 3]", 0);
	expect("header not an object", DSM_EJSON, "not a JSON object");
	fresh_copy();
	raw_header(first_shard, "{}", 200000000);
	expect("header length over limit", DSM_EHEADER, "exceeds the limit");
	fresh_copy();
	raw_header(first_shard, "{}", 50000000);
	expect("header past end of file", DSM_EHEADER, "past the end");
	fresh_copy();
	remove_file(first_shard);
	char tiny_path[8192];
	work_path(tiny_path, sizeof tiny_path, first_shard);
	spill(tiny_path, "abc", 3);
	expect("file shorter than 8 bytes", DSM_EHEADER, "too short");
	fresh_copy();
	truncate_file(first_shard, 100);
	expect("truncated shard", DSM_ETRUNCATED, "truncated");
	fresh_copy();
	append_bytes(first_shard, 64);
	expect("bytes after last tensor", DSM_ELAYOUT, "after the last tensor");

	/* Index and shards. */
	fresh_copy();
	remove_file("model-00005-of-00012.safetensors");
	expect("missing shard", DSM_EMISSING, "model-00005-of-00012.safetensors");
	fresh_copy();
	edit_text_file("model.safetensors.index.json", "\"model.layers.0.self_attn.o_proj.weight\":",
		       "\"model.layers.0.self_attn.o_proj.weight_gone\":");
	expect("index names absent tensor", DSM_EMISSING, "o_proj.weight_gone");
	fresh_copy();
	edit_text_file("model.safetensors.index.json", "\"model.layers.1.mlp.up_proj.weight\":",
		       "\"unrelated.tensor\": \"model-00001-of-00012.safetensors\", \"x.y\":");
	expect("index names tensor of other shard", DSM_EMISSING, "unrelated.tensor");
	fresh_copy();
	index_edit("model.layers.2.mlp.experts.3.down_proj.weight_scale_inv", NULL);
	expect("missing scale", DSM_EMISSING, "model.layers.2.mlp.experts.3.down_proj.weight_scale_inv");
	fresh_copy();
	index_edit("model.norm.weight", NULL);
	expect("missing tensor", DSM_EMISSING, "missing tensor 'model.norm.weight'");
	fresh_copy();
	index_edit("model.norm.weight", "duplicate");
	expect("duplicate index entry", DSM_EDUPLICATE, "model.norm.weight");
	fresh_copy();
	index_edit("model.norm.weight", "../model-00001-of-00012.safetensors");
	expect("index path traversal", DSM_EJSON, "model.norm.weight");
	fresh_copy();
	edit_text_file("model.safetensors.index.json", "{", "{{");
	expect("index not JSON", DSM_EJSON, "model.safetensors.index.json");
	fresh_copy();
	remove_file("model.safetensors.index.json");
	expect("no index, no single file", DSM_EMISSING, "model.safetensors");

	/* config.json. */
	fresh_copy();
	remove_file("config.json");
	expect("missing config.json", DSM_EMISSING, "config.json");
	fresh_copy();
	edit_text_file("config.json", "\"hidden_size\"", "\"hidden_size_gone\"");
	expect("config missing key", DSM_ECONFIG, "hidden_size");
	fresh_copy();
	edit_text_file("config.json", "\"n_group\":\t4", "\"n_group\":\t3");
	expect("experts not divisible by groups", DSM_ECONFIG, "n_group");
	fresh_copy();
	edit_text_file("config.json", "\"beta_fast\"", "\"beta_fast_gone\"");
	expect("rope_scaling incomplete", DSM_ECONFIG, "rope_scaling.beta_fast");
	fresh_copy();
	edit_text_file("config.json", "\"hidden_size\":\t256", "\"hidden_size\":\t\"256\"");
	expect("config wrong type", DSM_ECONFIG, "hidden_size");
	fresh_copy();
	edit_text_file("config.json", "\"vocab_size\":\t1024", "\"vocab_size\":\t1e300");
	expect("config number out of range", DSM_ECONFIG, "vocab_size");
	fresh_copy();
	edit_text_file("config.json", "\"num_attention_heads\":\t4", "\"num_attention_heads\":\t4.5");
	expect("config fractional", DSM_ECONFIG, "num_attention_heads");
	fresh_copy();
	edit_text_file("config.json", "{", "");
	expect("config not JSON", DSM_EJSON, "config.json");
	fresh_copy();
	edit_text_file("config.json", "\"hidden_size\":\t256", "\"hidden_size\":\t512");
	expect("config of another model", DSM_ETENSOR, "config.json implies");
	fresh_copy();
	edit_text_file("config.json", "\"deepseek_v32\"", "\"llama\"");
	expect("unsupported model_type", DSM_ECONFIG, "model_type");

	test_read_in(top);
	printf("%d corrupted fixtures rejected\n", n_fixtures);
	CHECK(n_fixtures >= 25, "at least 25 fixtures");
	remove_dir(work_dir);
	return TEST_EXIT();
}
