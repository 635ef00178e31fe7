/* Helpers of the streamer tests (included by test_stream.c and test_stream_faults.c, not built alone):
 * offset-patterned files, random unaligned jobs, and a byte-exact check of a finished job. */
#include "stream.h"
#include "test_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#define MAX_TEST_JOBS 64

/* Byte at offset o of patterned file number file: differs between files and between nearby offsets. */
static inline uint8_t pattern_byte(int file, uint64_t o)
{
	uint64_t x = (o + 0x9e3779b97f4a7c15ull * (uint64_t)(file + 1)) * 0xff51afd7ed558ccdull;
	return (uint8_t)(x >> 56);
}

/* A fresh folder under $top_builddir (the tests' build folder) for this test's files. */
static int test_dir(char *dir, size_t size, const char *name)
{
	const char *top = getenv("top_builddir");
	snprintf(dir, size, "%s/tests/offload-%s.%d", top && *top ? top : ".", name, (int)getpid());
	if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
		fprintf(stderr, "cannot create %s: %s\n", dir, strerror(errno));
		return -1;
	}
	return 0;
}

static int write_pattern_file(const char *path, uint64_t size, int file)
{
	FILE *f = fopen(path, "wb");
	if (!f) {
		fprintf(stderr, "cannot write %s: %s\n", path, strerror(errno));
		return -1;
	}
	uint8_t buf[65536];
	for (uint64_t o = 0; o < size;) {
		size_t n = size - o < sizeof buf ? (size_t)(size - o) : sizeof buf;
		for (size_t i = 0; i < n; i++)
			buf[i] = pattern_byte(file, o + i);
		if (fwrite(buf, 1, n, f) != n)
			break;
		o += n;
	}
	if (fclose(f) != 0) {
		fprintf(stderr, "cannot write %s\n", path);
		return -1;
	}
	return 0;
}

static int on_tmpfs(const char *path)
{
	struct statfs s;
	return statfs(path, &s) == 0 && (unsigned long)s.f_type == 0x01021994ul;
}

static uint64_t test_rng(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

struct job_set {
	struct dsm_stream_range r[MAX_TEST_JOBS][DSM_STREAM_MAX_RANGES];
	int n[MAX_TEST_JOBS];
	char names[MAX_TEST_JOBS][DSM_STREAM_MAX_RANGES][48];
};

/* n jobs of 1 to 4 ranges at unaligned offsets, of 1 byte to 600 KB, over files of the given sizes. */
static void make_jobs(struct job_set *js, int n, const uint64_t *sizes, int n_files, uint64_t seed)
{
	uint64_t s = seed | 1;
	for (int j = 0; j < n && j < MAX_TEST_JOBS; j++) {
		js->n[j] = 1 + (int)(test_rng(&s) % DSM_STREAM_MAX_RANGES);
		for (int i = 0; i < js->n[j]; i++) {
			int file = (int)(test_rng(&s) % (uint64_t)n_files);
			uint64_t len;
			switch (test_rng(&s) % 3) {
			case 0: len = 1 + test_rng(&s) % 100; break;
			case 1: len = 1 + test_rng(&s) % 70000; break;
			default: len = 1 + test_rng(&s) % 600000; break;
			}
			if (len > sizes[file])
				len = sizes[file];
			/* One range in eight ends exactly at the end of the file. */
			uint64_t off = test_rng(&s) % 8 == 0 ? sizes[file] - len : test_rng(&s) % (sizes[file] - len + 1);
			snprintf(js->names[j][i], sizeof js->names[j][i], "layers.%d.experts.%d.w%d.weight", j, i, file);
			js->r[j][i] = (struct dsm_stream_range){ .file = file, .offset = off, .nbytes = len,
				.name = js->names[j][i] };
		}
	}
}

/* Every byte of every range of a finished job is the file's byte at that offset. */
static int check_job(const char *what, const struct dsm_stream_job *job)
{
	for (int i = 0; i < job->n_ranges; i++) {
		const struct dsm_stream_range *r = &job->range[i];
		if (!job->data[i]) {
			CHECK(0, "%s: range %d has no data", what, i);
			return -1;
		}
		for (uint64_t k = 0; k < r->nbytes; k++) {
			if (job->data[i][k] != pattern_byte(r->file, r->offset + k)) {
				CHECK(0, "%s: range %d (file %d, offset %llu, %llu bytes): wrong byte at %llu", what, i,
				      r->file, (unsigned long long)r->offset, (unsigned long long)r->nbytes,
				      (unsigned long long)k);
				return -1;
			}
		}
	}
	return 0;
}
