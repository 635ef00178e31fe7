/* The memory dsm may fill (offload/memory_limit.h) on fake /proc/meminfo, /proc/self/cgroup and cgroup
 * trees: the tightest of MemAvailable, cgroup v2 and cgroup v1 applies, limits on parent cgroups count,
 * "max" and malformed files set no limit, usage above the limit leaves 0. */
#include "memory_limit.h"
#include "test_util.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define GiB (1ull << 30)

static char dir[512];
static char case_dir[1024];  /* dir and a case name; with a file name it fits a path[4096] */

/* Writes text into case_dir/rel, making the folders on the way. */
static void put(const char *rel, const char *text)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/%s", case_dir, rel);
	for (char *s = path + strlen(case_dir) + 1; (s = strchr(s, '/')); s++) {
		*s = '\0';
		mkdir(path, 0755);
		*s = '/';
	}
	FILE *f = fopen(path, "w");
	CHECK(f != NULL, "cannot write %s", path);
	if (f) {
		fputs(text, f);
		fclose(f);
	}
}

/* A fresh case: its fake files live in dir/name; DSM_MEMORY_AVAILABLE is unset. */
static void start_case(const char *name)
{
	char path[4096];
	snprintf(case_dir, sizeof case_dir, "%s/%s", dir, name);
	mkdir(case_dir, 0755);
	snprintf(path, sizeof path, "%s/cg", case_dir);
	mkdir(path, 0755);
	setenv("DSM_CGROUP_ROOT", path, 1);
	snprintf(path, sizeof path, "%s/proc_cgroup", case_dir);
	setenv("DSM_PROC_CGROUP", path, 1);
	snprintf(path, sizeof path, "%s/meminfo", case_dir);
	setenv("DSM_MEMINFO", path, 1);
	unsetenv("DSM_MEMORY_AVAILABLE");
}

static void put_meminfo(uint64_t avail_kb)
{
	char text[256];
	snprintf(text, sizeof text, "MemTotal:       99999999 kB\nMemFree:         1234 kB\nMemAvailable:   %llu kB\n"
		 "Buffers:          100 kB\n", (unsigned long long)avail_kb);
	put("meminfo", text);
}

static int ends_with(const char *s, const char *tail)
{
	size_t n = strlen(s), t = strlen(tail);
	return n >= t && strcmp(s + n - t, tail) == 0;
}

/* Reads the limit and checks the source, the bytes available and usable, and the file that gave them. */
static void expect(const char *what, enum dsm_memory_source source, const char *name, uint64_t available,
		   uint64_t usable, const char *path_tail, struct dsm_memory_limit *m)
{
	dsm_memory_limit(m);
	CHECK(m->source == source, "%s: source %d (%s), expected %d (%s)", what, (int)m->source, m->name, (int)source,
	      name);
	CHECK(strcmp(m->name, name) == 0, "%s: name '%s', expected '%s'", what, m->name, name);
	CHECK(m->available == available, "%s: available %llu, expected %llu", what,
	      (unsigned long long)m->available, (unsigned long long)available);
	CHECK(m->usable == usable, "%s: usable %llu, expected %llu", what, (unsigned long long)m->usable,
	      (unsigned long long)usable);
	CHECK(ends_with(m->path, path_tail) && (*path_tail || !*m->path), "%s: path '%s', expected it to end in '%s'",
	      what, m->path, path_tail);
	CHECK(dsm_usable_memory() == usable, "%s: dsm_usable_memory %llu", what,
	      (unsigned long long)dsm_usable_memory());
}

static void test_v2_tighter(void)
{
	struct dsm_memory_limit m;
	start_case("v2");
	put_meminfo(64 * GiB / 1024);
	put("proc_cgroup", "0::/job\n");
	put("cg/job/memory.max", "8589934592\n");
	put("cg/job/memory.current", "2147483648\n");
	/* 6 GiB of room; the margin is 1 GiB (a tenth would be less) */
	expect("v2 limit tighter than MemAvailable", DSM_MEMORY_CGROUP2, "cgroup v2", 6 * GiB, 5 * GiB,
	       "/v2/cg/job/memory.max", &m);
	CHECK(m.meminfo.found && m.meminfo.bytes == 64 * GiB, "MemAvailable %llu", (unsigned long long)m.meminfo.bytes);
	CHECK(ends_with(m.meminfo.path, "/v2/meminfo"), "meminfo path %s", m.meminfo.path);
	CHECK(m.cgroup2.found && m.cgroup2.bytes == 6 * GiB && m.cgroup2.limit == 8 * GiB, "v2 room %llu limit %llu",
	      (unsigned long long)m.cgroup2.bytes, (unsigned long long)m.cgroup2.limit);
	CHECK(!m.cgroup1.found && m.cgroup1.bytes == 0 && !m.cgroup1.path[0], "no v1 limit");

	/* MemAvailable tighter than the same limit: 4 GiB less a margin of 1 GiB */
	put_meminfo(4 * GiB / 1024);
	expect("MemAvailable tighter than v2", DSM_MEMORY_MEMINFO, "MemAvailable", 4 * GiB, 3 * GiB, "/v2/meminfo", &m);
	CHECK(m.cgroup2.found && m.cgroup2.bytes == 6 * GiB, "v2 room still read: %llu",
	      (unsigned long long)m.cgroup2.bytes);

	/* a limit file without its newline is read all the same; a margin of a tenth past 10 GiB */
	put_meminfo(64 * GiB / 1024);
	put("cg/job/memory.max", "42949672960");
	put("cg/job/memory.current", "0");
	expect("v2 without newline", DSM_MEMORY_CGROUP2, "cgroup v2", 40 * GiB, 36 * GiB, "/v2/cg/job/memory.max", &m);
}

static void test_v2_parent(void)
{
	struct dsm_memory_limit m;
	start_case("v2parent");
	put_meminfo(64 * GiB / 1024);
	put("proc_cgroup", "0::/slurm/uid_1000/job_7/step_0\n");
	put("cg/slurm/memory.max", "max\n");
	put("cg/slurm/memory.current", "53687091200\n");
	put("cg/slurm/uid_1000/job_7/memory.max", "21474836480\n"); /* 20 GiB, 10 GiB used: the tightest */
	put("cg/slurm/uid_1000/job_7/memory.current", "10737418240\n");
	put("cg/slurm/uid_1000/job_7/step_0/memory.max", "32212254720\n"); /* 30 GiB, 9 GiB used: 21 GiB of room */
	put("cg/slurm/uid_1000/job_7/step_0/memory.current", "9663676416\n");
	expect("v2 limit on a parent", DSM_MEMORY_CGROUP2, "cgroup v2", 10 * GiB, 9 * GiB,
	       "/cg/slurm/uid_1000/job_7/memory.max", &m);
	CHECK(m.cgroup2.limit == 20 * GiB, "limit of the parent: %llu", (unsigned long long)m.cgroup2.limit);

	/* the own cgroup's limit when it is the tightest */
	put("cg/slurm/uid_1000/job_7/step_0/memory.max", "12884901888\n"); /* 12 GiB, 9 GiB used */
	expect("v2 own limit tighter than the parent's", DSM_MEMORY_CGROUP2, "cgroup v2", 3 * GiB, 2 * GiB,
	       "/step_0/memory.max", &m);

	/* the root itself: its files count too (a host root has none) */
	put("proc_cgroup", "0::/\n");
	put("cg/memory.max", "5368709120\n");
	put("cg/memory.current", "0\n");
	expect("v2 root", DSM_MEMORY_CGROUP2, "cgroup v2", 5 * GiB, 4 * GiB, "/v2parent/cg/memory.max", &m);
}

static void test_v2_max(void)
{
	struct dsm_memory_limit m;
	start_case("v2max");
	put_meminfo(16 * GiB / 1024);
	put("proc_cgroup", "0::/user.slice/session-1.scope\n");
	put("cg/user.slice/memory.max", "max\n");
	put("cg/user.slice/memory.current", "1000\n");
	put("cg/user.slice/session-1.scope/memory.max", "max\n");
	put("cg/user.slice/session-1.scope/memory.current", "1000\n");
	expect("v2 max", DSM_MEMORY_MEMINFO, "MemAvailable", 16 * GiB, 16 * GiB - 16 * GiB / 10, "/v2max/meminfo", &m);
	CHECK(!m.cgroup2.found && !m.cgroup1.found, "no cgroup limit");
}

static void test_v1(void)
{
	struct dsm_memory_limit m;
	start_case("v1");
	put_meminfo(64 * GiB / 1024);
	put("proc_cgroup", "12:pids:/batch/job\n11:name=systemd:/batch/job\n4:cpu,memory:/batch/job\n0::/\n");
	put("cg/memory/memory.limit_in_bytes", "9223372036854771712\n");
	put("cg/memory/memory.usage_in_bytes", "30000000000\n");
	put("cg/memory/batch/memory.limit_in_bytes", "9223372036854771712\n");
	put("cg/memory/batch/memory.usage_in_bytes", "6000000000\n");
	put("cg/memory/batch/job/memory.limit_in_bytes", "4294967296\n");
	put("cg/memory/batch/job/memory.usage_in_bytes", "1073741824\n");
	expect("v1 limit", DSM_MEMORY_CGROUP1, "cgroup v1", 3 * GiB, 2 * GiB, "/v1/cg/memory/batch/job/memory.limit_in_bytes",
	       &m);
	CHECK(m.cgroup1.limit == 4 * GiB, "v1 limit %llu", (unsigned long long)m.cgroup1.limit);
	CHECK(!m.cgroup2.found, "no v2 limit at the root");

	/* the kernel's "no limit" sets none */
	put("cg/memory/batch/job/memory.limit_in_bytes", "9223372036854771712\n");
	expect("v1 unlimited", DSM_MEMORY_MEMINFO, "MemAvailable", 64 * GiB, 64 * GiB - 64 * GiB / 10, "/v1/meminfo", &m);
	CHECK(!m.cgroup1.found, "v1 unlimited: room %llu", (unsigned long long)m.cgroup1.bytes);
	put("cg/memory/batch/job/memory.limit_in_bytes", "4294967296\n");

	/* a v2 limit tighter than the v1 one wins */
	put("cg/memory.max", "3221225472\n");
	put("cg/memory.current", "1073741824\n");
	expect("v2 tighter than v1", DSM_MEMORY_CGROUP2, "cgroup v2", 2 * GiB, 1 * GiB, "/v1/cg/memory.max", &m);
	CHECK(m.cgroup1.found && m.cgroup1.bytes == 3 * GiB, "v1 room still read: %llu",
	      (unsigned long long)m.cgroup1.bytes);

	/* a container without a cgroup namespace that sees its own cgroup at the root: the named path is not
	 * there, the root's files are the container's */
	start_case("v1container");
	put_meminfo(64 * GiB / 1024);
	put("proc_cgroup", "5:memory:/docker/0123abcd\n");
	put("cg/memory/memory.limit_in_bytes", "2684354560\n");
	put("cg/memory/memory.usage_in_bytes", "536870912\n");
	expect("v1 own cgroup at the root", DSM_MEMORY_CGROUP1, "cgroup v1", 2 * GiB, 1 * GiB,
	       "/v1container/cg/memory/memory.limit_in_bytes", &m);
	/* and with the cgroup namespace the path is "/" */
	put("proc_cgroup", "5:memory:/\n");
	expect("v1 namespaced root", DSM_MEMORY_CGROUP1, "cgroup v1", 2 * GiB, 1 * GiB,
	       "/v1container/cg/memory/memory.limit_in_bytes", &m);
}

static void test_absent(void)
{
	struct dsm_memory_limit m;
	start_case("absent");
	put_meminfo(8 * GiB / 1024);
	expect("no /proc/self/cgroup", DSM_MEMORY_MEMINFO, "MemAvailable", 8 * GiB, 7 * GiB, "/absent/meminfo", &m);
	put("proc_cgroup", "0::/job\n4:memory:/job\n");
	expect("cgroups without their files", DSM_MEMORY_MEMINFO, "MemAvailable", 8 * GiB, 7 * GiB, "/absent/meminfo", &m);
	CHECK(!m.cgroup2.found && !m.cgroup1.found, "no cgroup limit");

	unlink(getenv("DSM_MEMINFO"));
	expect("nothing at all", DSM_MEMORY_UNKNOWN, "unknown", 0, 0, "", &m);
	CHECK(!m.meminfo.found, "no MemAvailable");

	/* usable 0 for a known 0: usage at or above the limit, and room under the 1 GiB margin */
	put("cg/job/memory.max", "4294967296\n");
	put("cg/job/memory.current", "5368709120\n");
	expect("usage above the limit", DSM_MEMORY_CGROUP2, "cgroup v2", 0, 0, "/absent/cg/job/memory.max", &m);
	CHECK(m.cgroup2.found && m.cgroup2.bytes == 0, "room 0: %llu", (unsigned long long)m.cgroup2.bytes);
	put("cg/job/memory.current", "4294967296\n");
	expect("usage at the limit", DSM_MEMORY_CGROUP2, "cgroup v2", 0, 0, "/absent/cg/job/memory.max", &m);
	put("cg/job/memory.current", "3758096384\n");
	expect("room under the margin", DSM_MEMORY_CGROUP2, "cgroup v2", GiB / 2, 0, "/absent/cg/job/memory.max", &m);
}

static void test_malformed(void)
{
	struct dsm_memory_limit m;
	static const char *const bad[] = {
		"", "\n", "12abc\n", "-5\n", " 100\n", "18446744073709551616\n", "99999999999999999999999999\n",
		"1e9\n", "0x100\n", "max max\n", "100 \n",
	};
	start_case("malformed");
	put_meminfo(8 * GiB / 1024);
	put("proc_cgroup", "0::/job\n");
	put("cg/job/memory.current", "0\n");
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		char what[64];
		snprintf(what, sizeof what, "memory.max '%.*s'", (int)strcspn(bad[i], "\n"), bad[i]);
		put("cg/job/memory.max", bad[i]);
		expect(what, DSM_MEMORY_MEMINFO, "MemAvailable", 8 * GiB, 7 * GiB, "/malformed/meminfo", &m);
	}
	put("cg/job/memory.max", "1073741824\n");
	for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
		char what[64];
		snprintf(what, sizeof what, "memory.current '%.*s'", (int)strcspn(bad[i], "\n"), bad[i]);
		put("cg/job/memory.current", bad[i]);
		expect(what, DSM_MEMORY_MEMINFO, "MemAvailable", 8 * GiB, 7 * GiB, "/malformed/meminfo", &m);
	}

	/* a malformed level leaves its parent's limit */
	put("proc_cgroup", "0::/job/step\n");
	put("cg/job/memory.current", "0\n");
	put("cg/job/step/memory.max", "lots\n");
	put("cg/job/step/memory.current", "0\n");
	expect("malformed child, parent limit", DSM_MEMORY_CGROUP2, "cgroup v2", GiB, 0, "/malformed/cg/job/memory.max", &m);

	/* /proc/self/cgroup lines that are not "id:controllers:/path" */
	put("proc_cgroup", "garbage\n0:/job\n0::job\n::\n4:memoryx:/job\n4:nomemory:/job\n\n");
	put("cg/memory/job/memory.limit_in_bytes", "1073741824\n");
	put("cg/memory/job/memory.usage_in_bytes", "0\n");
	expect("malformed /proc/self/cgroup", DSM_MEMORY_MEMINFO, "MemAvailable", 8 * GiB, 7 * GiB, "/malformed/meminfo",
	       &m);

	/* a line longer than any path is skipped, the next one still counts */
	char line[3 * DSM_MEMORY_PATH_MAX];
	memset(line, 'a', sizeof line);
	memcpy(line, "0::/", 4);
	line[sizeof line - 2] = '\n';
	line[sizeof line - 1] = '\0';
	char text[sizeof line + 64];
	snprintf(text, sizeof text, "%s3:memory:/job\n", line);
	put("proc_cgroup", text);
	expect("a long line", DSM_MEMORY_CGROUP1, "cgroup v1", GiB, 0, "/malformed/cg/memory/job/memory.limit_in_bytes",
	       &m);

	/* MemAvailable lines that do not parse */
	put("proc_cgroup", "");
	static const char *const bad_meminfo[] = {
		"MemAvailable: lots kB\n", "MemAvailable:\n", "MemAvailable: 100 MB\n",
		"MemAvailable: 18014398509481984 kB\n", /* 2^54 kB: past UINT64_MAX bytes */
		"MemFree: 100 kB\n",
	};
	for (size_t i = 0; i < sizeof bad_meminfo / sizeof *bad_meminfo; i++) {
		put("meminfo", bad_meminfo[i]);
		expect(bad_meminfo[i], DSM_MEMORY_UNKNOWN, "unknown", 0, 0, "", &m);
	}
}

static void test_override(void)
{
	struct dsm_memory_limit m;
	start_case("override");
	put_meminfo(64 * GiB / 1024);
	put("proc_cgroup", "0::/job\n");
	put("cg/job/memory.max", "68719476736\n");
	put("cg/job/memory.current", "0\n");
	/* the figure tests/offload_e2e.sh uses: 1 GiB of margin and 6 MB */
	setenv("DSM_MEMORY_AVAILABLE", "1079741824", 1);
	expect("override", DSM_MEMORY_OVERRIDE, "DSM_MEMORY_AVAILABLE", 1079741824, 6000000, "", &m);
	CHECK(m.meminfo.found && m.meminfo.bytes == 1079741824 && !m.meminfo.path[0], "override in place of MemAvailable");
	/* cgroup limits still apply */
	put("cg/job/memory.max", "1074741824\n");
	expect("cgroup tighter than the override", DSM_MEMORY_CGROUP2, "cgroup v2", 1074741824, 1000000,
	       "/override/cg/job/memory.max", &m);
	/* a malformed override is ignored */
	setenv("DSM_MEMORY_AVAILABLE", "12G", 1);
	put("cg/job/memory.max", "max\n");
	expect("malformed override", DSM_MEMORY_MEMINFO, "MemAvailable", 64 * GiB, 64 * GiB - 64 * GiB / 10,
	       "/override/meminfo", &m);
	unsetenv("DSM_MEMORY_AVAILABLE");
}

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st, (void)flag, (void)ftw;
	return remove(path);
}

int main(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof dir, "%s/dsm_test_memory_XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 99;
	}
	test_v2_tighter();
	test_v2_parent();
	test_v2_max();
	test_v1();
	test_absent();
	test_malformed();
	test_override();
	nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
	return TEST_EXIT();
}
