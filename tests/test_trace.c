/* Routing traces: write, read back, counts, the documented byte layout, and refusals of bad files. */
#include "error.h"
#include "test_util.h"
#include "trace.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char dir[4096];

static void path_of(char *buf, size_t size, const char *name)
{
	snprintf(buf, size, "%s/%s", dir, name);
}

/* Two steps: a prefill of 3 tokens then a decode token; 4 layers, MoE from 1, 8 experts, top 2. */
static void write_sample(const char *path)
{
	struct dsm_trace_writer *w;
	CHECK(dsm_trace_create(&w, path, 4, 1, 8, 2, "deepseek_v32") == 0, "create: %s", dsm_errmsg());
	for (int l = 1; l < 4; l++) {
		int32_t idx[3][2] = { { l, 0 }, { 7, l + 1 }, { 3, 4 } };
		CHECK(dsm_trace_add_layer(w, l, 3, &idx[0][0]) == 0, "add: %s", dsm_errmsg());
	}
	CHECK(dsm_trace_end_step(w, 3, NULL, NULL) == 0, "end: %s", dsm_errmsg());
	for (int l = 1; l < 4; l++) {
		int32_t idx[2] = { 5, 6 };
		dsm_trace_add_layer(w, l, 1, idx);
	}
	uint32_t seq = 2, pos = 3;
	CHECK(dsm_trace_end_step(w, 1, &seq, &pos) == 0, "end 2");
	int32_t bad[2] = { 8, 0 };
	CHECK(dsm_trace_add_layer(w, 1, 1, bad) == DSM_EARG, "expert out of range");
	CHECK(dsm_trace_add_layer(w, 0, 1, bad) == DSM_EARG, "dense layer");
	CHECK(dsm_trace_close(w) == 0, "close: %s", dsm_errmsg());
}

static void test_roundtrip(void)
{
	char path[4200];
	path_of(path, sizeof path, "sample.trace");
	write_sample(path);

	/* The documented layout: 64-byte header, then 8 + 3 * 2 * 2 = 20-byte records. */
	struct stat st;
	CHECK(stat(path, &st) == 0 && st.st_size == 64 + 4 * 20, "size %lld", (long long)st.st_size);
	FILE *f = fopen(path, "rb");
	uint8_t b[64 + 80];
	CHECK(f && fread(b, 1, sizeof b, f) == sizeof b, "read raw");
	if (f)
		fclose(f);
	CHECK(memcmp(b, "DSMROUTE", 8) == 0 && b[8] == 1 && b[12] == 64 && b[16] == 4 && b[20] == 1 && b[24] == 8 &&
	      b[28] == 2 && b[32] == 20 && b[40] == 4 && memcmp(b + 48, "deepseek_v32", 12) == 0, "header bytes");
	/* Record 1 (token 1 of the prefill): seq 0, pos 1, layer 1 = {7, 2}. */
	const uint8_t *r1 = b + 64 + 20;
	CHECK(r1[0] == 0 && r1[4] == 1 && r1[8] == 7 && r1[9] == 0 && r1[10] == 2, "record bytes");

	struct dsm_trace_reader *r;
	CHECK(dsm_trace_open(&r, path) == 0, "open: %s", dsm_errmsg());
	const struct dsm_trace_info *in = dsm_trace_info(r);
	CHECK(in->n_records == 4 && in->top_k == 2 && in->first_moe == 1 && strcmp(in->model_type, "deepseek_v32") == 0,
	      "info");
	struct dsm_trace_record rec;
	int n = 0;
	while (dsm_trace_next(r, &rec) == 1) {
		if (n == 2)
			CHECK(rec.pos == 2 && rec.experts[0] == 3 && rec.experts[5] == 4, "record 2");
		if (n == 3)
			CHECK(rec.seq == 2 && rec.pos == 3 && rec.experts[4] == 5 && rec.experts[5] == 6, "record 3");
		n++;
	}
	CHECK(n == 4, "%d records", n);
	dsm_trace_close_reader(r);

	struct dsm_trace_info info;
	uint64_t *c;
	CHECK(dsm_trace_counts(path, &info, &c) == 0, "counts: %s", dsm_errmsg());
	if (c) {
		/* Layer 2: token choices {2,0} {7,3} {3,4} {5,6}: expert 3 twice. */
		CHECK(c[2 * 8 + 3] == 2 && c[2 * 8 + 0] == 1 && c[2 * 8 + 1] == 0 && c[0] == 0, "counts values");
		uint64_t sum = 0;
		for (int i = 0; i < 4 * 8; i++)
			sum += c[i];
		CHECK(sum == 4 * 3 * 2, "count sum %llu", (unsigned long long)sum);
	}
	free(c);
}

/* Token-at-a-time writing (a router hook's view) gives the same file as step writing. */
static void test_by_token(void)
{
	char a[4200], b[4200];
	path_of(a, sizeof a, "sample.trace");
	path_of(b, sizeof b, "by-token.trace");
	struct dsm_trace_writer *w;
	CHECK(dsm_trace_create(&w, b, 4, 1, 8, 2, "deepseek_v32") == 0, "create");
	for (int l = 1; l < 4; l++) {
		int32_t idx[3][2] = { { l, 0 }, { 7, l + 1 }, { 3, 4 } };
		for (uint32_t t = 0; t < 3; t++)
			CHECK(dsm_trace_add_token(w, l, t, idx[t]) == 0, "add_token: %s", dsm_errmsg());
	}
	int32_t last[2] = { 5, 6 };
	for (int l = 1; l < 4; l++)
		dsm_trace_add_token(w, l, 3, last);
	CHECK(dsm_trace_close(w) == 0, "close");
	/* The step writer put seq 2 on the last token: compare all but that field. */
	uint8_t x[64 + 80], y[64 + 80];
	FILE *f = fopen(a, "rb"), *g = fopen(b, "rb");
	CHECK(f && g && fread(x, 1, sizeof x, f) == sizeof x && fread(y, 1, sizeof y, g) == sizeof y, "read both");
	if (f)
		fclose(f);
	if (g)
		fclose(g);
	x[64 + 60] = 0;
	CHECK(memcmp(x, y, sizeof x) == 0, "token-at-a-time file differs");
	unlink(b);
}

static void write_bytes(const char *path, const void *p, size_t n)
{
	FILE *f = fopen(path, "wb");
	if (f) {
		fwrite(p, 1, n, f);
		fclose(f);
	}
}

static void test_bad_files(void)
{
	char good[4200], bad[4200];
	path_of(good, sizeof good, "sample.trace");
	path_of(bad, sizeof bad, "bad.trace");
	uint8_t b[64 + 80];
	FILE *f = fopen(good, "rb");
	CHECK(f && fread(b, 1, sizeof b, f) == sizeof b, "read");
	if (f)
		fclose(f);
	struct dsm_trace_reader *r;

	write_bytes(bad, "hello", 5);
	CHECK(dsm_trace_open(&r, bad) == DSM_EHEADER && strstr(dsm_errmsg(), "not a dsm routing trace"), "magic");
	uint8_t m[sizeof b];
	memcpy(m, b, sizeof b);
	m[8] = 2;
	write_bytes(bad, m, sizeof m);
	CHECK(dsm_trace_open(&r, bad) == DSM_EHEADER && strstr(dsm_errmsg(), "version 2"), "version");
	memcpy(m, b, sizeof b);
	m[32] = 21;
	write_bytes(bad, m, sizeof m);
	CHECK(dsm_trace_open(&r, bad) == DSM_EHEADER && strstr(dsm_errmsg(), "inconsistent"), "record size");
	write_bytes(bad, b, sizeof b - 3);
	CHECK(dsm_trace_open(&r, bad) == DSM_ETRUNCATED && strstr(dsm_errmsg(), "inside a record"), "truncated");
	write_bytes(bad, b, sizeof b - 20);
	CHECK(dsm_trace_open(&r, bad) == DSM_ETRUNCATED && strstr(dsm_errmsg(), "counts 4"), "count mismatch");
	memcpy(m, b, sizeof b);
	memset(m + 40, 0, 8); /* not closed cleanly: the size gives the count */
	write_bytes(bad, m, sizeof m);
	CHECK(dsm_trace_open(&r, bad) == 0 && dsm_trace_info(r)->n_records == 4, "unclosed trace");
	dsm_trace_close_reader(r);
	memcpy(m, b, sizeof b);
	m[64 + 8] = 9; /* expert 9 of 8 */
	write_bytes(bad, m, sizeof m);
	CHECK(dsm_trace_open(&r, bad) == 0, "open");
	struct dsm_trace_record rec;
	CHECK(dsm_trace_next(r, &rec) == DSM_EHEADER && strstr(dsm_errmsg(), "expert 9"), "expert range");
	dsm_trace_close_reader(r);
	CHECK(dsm_trace_open(&r, "no/such.trace") == DSM_EMISSING, "missing");
	struct dsm_trace_writer *w;
	CHECK(dsm_trace_create(&w, good, 4, 4, 8, 2, "x") == DSM_EARG, "bad shape");
	CHECK(dsm_trace_create(&w, "no/such/dir/t", 4, 1, 8, 2, "x") == DSM_EIO, "cannot create");
	unlink(bad);
	unlink(good);
}

int main(void)
{
	const char *top = getenv("top_builddir") ? getenv("top_builddir") : ".";
	snprintf(dir, sizeof dir, "%s/tests/offload-trace.%d", top, (int)getpid());
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		return 99;
	test_roundtrip();
	test_by_token();
	test_bad_files();
	rmdir(dir);
	return TEST_EXIT();
}
