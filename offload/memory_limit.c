/* The memory dsm may fill: MemAvailable and the memory limits of dsm's cgroups (memory_limit.h). */
#include "memory_limit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* A limit this large is the kernel's "no limit" in cgroup v1 (PAGE_COUNTER_MAX pages: 9223372036854771712
 * with 4 KiB pages, a little less with larger pages). */
#define UNLIMITED (1ull << 62)

static const char *env_or(const char *name, const char *fallback)
{
	const char *v = getenv(name);
	return v && *v ? v : fallback;
}

/* The decimal number at the start of s, up to UINT64_MAX. *end: the first character after it. 0, or -1
 * when s does not start with a digit or the number does not fit. */
static int parse_u64(const char *s, const char **end, uint64_t *v)
{
	uint64_t x = 0;
	if (*s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++) {
		unsigned d = (unsigned)(*s - '0');
		if (x > (UINT64_MAX - d) / 10)
			return -1;
		x = x * 10 + d;
	}
	*end = s;
	*v = x;
	return 0;
}

/* A file holding one number and a newline (memory.current, ...). 0, or -1 when unreadable or not exactly
 * that ("max" included). */
static int read_u64(const char *path, uint64_t *v)
{
	char buf[64];
	const char *end;
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	int got = fgets(buf, sizeof buf, f) != NULL;
	fclose(f);
	if (!got || parse_u64(buf, &end, v) < 0)
		return -1;
	return strcmp(end, "\n") == 0 || *end == '\0' ? 0 : -1;
}

/* MemAvailable ("MemAvailable:   24293516 kB") of /proc/meminfo or DSM_MEMINFO. */
static void read_meminfo(struct dsm_memory_room *r)
{
	const char *path = env_or("DSM_MEMINFO", "/proc/meminfo");
	FILE *f = fopen(path, "r");
	if (!f)
		return;
	char line[256];
	while (fgets(line, sizeof line, f)) {
		const char *s = line, *end;
		uint64_t kb;
		if (strncmp(s, "MemAvailable:", 13) != 0)
			continue;
		for (s += 13; *s == ' ' || *s == '\t'; s++)
			;
		if (parse_u64(s, &end, &kb) == 0 && strncmp(end, " kB", 3) == 0 && kb <= UINT64_MAX / 1024) {
			r->found = 1;
			r->bytes = kb * 1024;
			snprintf(r->path, sizeof r->path, "%s", path);
		}
		break;
	}
	fclose(f);
}

/* Copies src into dst unless it does not fit: 0, or -1. */
static int copy_path(char *dst, const char *src, size_t len)
{
	if (len >= DSM_MEMORY_PATH_MAX)
		return -1;
	memcpy(dst, src, len);
	dst[len] = '\0';
	return 0;
}

/* dsm's own cgroups from /proc/self/cgroup (or DSM_PROC_CGROUP), lines "id:controllers:path": the v2 one
 * ("0::/path") into v2, the v1 one whose controllers include memory ("4:memory:/path", "5:cpu,memory:/path")
 * into v1. Each "" when absent; the root is "/". */
static void own_cgroups(char v2[DSM_MEMORY_PATH_MAX], char v1[DSM_MEMORY_PATH_MAX])
{
	v2[0] = v1[0] = '\0';
	FILE *f = fopen(env_or("DSM_PROC_CGROUP", "/proc/self/cgroup"), "r");
	if (!f)
		return;
	char line[DSM_MEMORY_PATH_MAX + 128];
	while (fgets(line, sizeof line, f)) {
		size_t n = strlen(line);
		if (n && line[n - 1] == '\n') {
			line[--n] = '\0';
		} else if (!feof(f)) { /* too long for any path we keep: skip the rest of the line */
			int c;
			while ((c = fgetc(f)) != EOF && c != '\n')
				;
			continue;
		}
		char *ctrl = strchr(line, ':');
		char *path = ctrl ? strchr(ctrl + 1, ':') : NULL;
		if (!path || path[1] != '/')
			continue;
		*ctrl++ = '\0';
		*path++ = '\0';
		if (strcmp(line, "0") == 0 && *ctrl == '\0') {
			copy_path(v2, path, strlen(path));
			continue;
		}
		for (char *c = ctrl; *c; ) {
			size_t len = strcspn(c, ",");
			if (len == 6 && strncmp(c, "memory", 6) == 0)
				copy_path(v1, path, strlen(path));
			c += len + (c[len] == ',');
		}
	}
	fclose(f);
}

/* The least room of cgroup `own` ("/a/b") and its parents up to the mount point `base`, as the files
 * limit_file and usage_file of each say. A level whose files are absent, unreadable or malformed, or whose
 * limit is "max" or past UNLIMITED, sets no limit. */
static void cgroup_room(struct dsm_memory_room *r, const char *base, const char *own, const char *limit_file,
			const char *usage_file)
{
	char rel[DSM_MEMORY_PATH_MAX], dir[DSM_MEMORY_PATH_MAX];
	size_t n = strlen(own);
	while (n && own[n - 1] == '/') /* the root "/" becomes "" */
		n--;
	if (copy_path(rel, own, n) < 0)
		return;
	/* Without a cgroup namespace a container may see its own cgroup mounted at the root: /proc/self/cgroup
	 * names a path that is not there. */
	struct stat st;
	if (snprintf(dir, sizeof dir, "%s%s", base, rel) >= (int)sizeof dir || stat(dir, &st) < 0 ||
	    !S_ISDIR(st.st_mode))
		rel[0] = '\0';
	for (;;) {
		char limit_path[DSM_MEMORY_PATH_MAX], usage_path[DSM_MEMORY_PATH_MAX];
		uint64_t limit, usage;
		if (snprintf(limit_path, sizeof limit_path, "%s%s/%s", base, rel, limit_file) < (int)sizeof limit_path &&
		    snprintf(usage_path, sizeof usage_path, "%s%s/%s", base, rel, usage_file) < (int)sizeof usage_path &&
		    read_u64(limit_path, &limit) == 0 && limit < UNLIMITED && read_u64(usage_path, &usage) == 0) {
			uint64_t room = limit > usage ? limit - usage : 0;
			if (!r->found || room < r->bytes) {
				r->found = 1;
				r->bytes = room;
				r->limit = limit;
				snprintf(r->path, sizeof r->path, "%s", limit_path);
			}
		}
		char *slash = strrchr(rel, '/');
		if (!slash)
			break;
		*slash = '\0';
	}
}

/* Makes r the one that applies if it leaves less room than the one so far. */
static void consider(struct dsm_memory_limit *out, const struct dsm_memory_room *r, enum dsm_memory_source source)
{
	if (!r->found || (out->source != DSM_MEMORY_UNKNOWN && r->bytes >= out->available))
		return;
	out->source = source;
	out->available = r->bytes;
	snprintf(out->path, sizeof out->path, "%s", r->path);
}

void dsm_memory_limit(struct dsm_memory_limit *out)
{
	static const char *const names[] = {
		[DSM_MEMORY_UNKNOWN] = "unknown", [DSM_MEMORY_MEMINFO] = "MemAvailable",
		[DSM_MEMORY_OVERRIDE] = "DSM_MEMORY_AVAILABLE", [DSM_MEMORY_CGROUP2] = "cgroup v2",
		[DSM_MEMORY_CGROUP1] = "cgroup v1",
	};
	memset(out, 0, sizeof *out);
	/* A malformed DSM_MEMORY_AVAILABLE is ignored: MemAvailable is read instead. */
	const char *env = getenv("DSM_MEMORY_AVAILABLE"), *end;
	uint64_t bytes;
	int override = env && parse_u64(env, &end, &bytes) == 0 && *end == '\0';
	if (override) {
		out->meminfo.found = 1;
		out->meminfo.bytes = bytes;
	} else {
		read_meminfo(&out->meminfo);
	}

	char v2[DSM_MEMORY_PATH_MAX], v1[DSM_MEMORY_PATH_MAX], base[DSM_MEMORY_PATH_MAX];
	const char *root = env_or("DSM_CGROUP_ROOT", "/sys/fs/cgroup");
	own_cgroups(v2, v1);
	if (v2[0])
		cgroup_room(&out->cgroup2, root, v2, "memory.max", "memory.current");
	if (v1[0] && snprintf(base, sizeof base, "%s/memory", root) < (int)sizeof base)
		cgroup_room(&out->cgroup1, base, v1, "memory.limit_in_bytes", "memory.usage_in_bytes");

	consider(out, &out->meminfo, override ? DSM_MEMORY_OVERRIDE : DSM_MEMORY_MEMINFO);
	consider(out, &out->cgroup2, DSM_MEMORY_CGROUP2);
	consider(out, &out->cgroup1, DSM_MEMORY_CGROUP1);
	out->name = names[out->source];
	uint64_t margin = out->available / 10 < (1ull << 30) ? (1ull << 30) : out->available / 10;
	out->usable = out->available > margin ? out->available - margin : 0;
}

uint64_t dsm_usable_memory(void)
{
	struct dsm_memory_limit m;
	dsm_memory_limit(&m);
	return m.usable;
}
