/* The memory dsm may fill (docs/memory.md, "Memory limits"): the least room of the host's MemAvailable, the
 * cgroup v2 limit (memory.max less memory.current) and the cgroup v1 limit (memory.limit_in_bytes less
 * memory.usage_in_bytes) of the cgroup dsm runs in and of its parents, less a margin of a tenth, at least
 * 1 GiB. A batch job under a container or Slurm memory limit thus gets the tiered store instead of being
 * killed.
 *
 * A source that is absent, unreadable or malformed, or a limit of "max", sets no limit. The cgroup counts
 * the page cache its processes brought in (mapped shard files included) as used: that is how the kernel
 * charges it, so the room is the least the kernel promises, not what it could reclaim.
 *
 * Environment (tests): DSM_MEMORY_AVAILABLE (bytes) replaces MemAvailable, the cgroup limits still apply;
 * DSM_MEMINFO replaces /proc/meminfo, DSM_PROC_CGROUP replaces /proc/self/cgroup and DSM_CGROUP_ROOT
 * replaces /sys/fs/cgroup. */
#ifndef DSM_MEMORY_LIMIT_H
#define DSM_MEMORY_LIMIT_H

#include <stdint.h>

#define DSM_MEMORY_PATH_MAX 1024

enum dsm_memory_source {
	DSM_MEMORY_UNKNOWN,       /* no source could be read */
	DSM_MEMORY_MEMINFO,       /* MemAvailable of /proc/meminfo */
	DSM_MEMORY_OVERRIDE,      /* DSM_MEMORY_AVAILABLE */
	DSM_MEMORY_CGROUP2,       /* memory.max - memory.current */
	DSM_MEMORY_CGROUP1,       /* memory.limit_in_bytes - memory.usage_in_bytes */
};

/* What one source allows. */
struct dsm_memory_room {
	int found;                        /* 0: no limit from this source (the fields below are 0 or empty) */
	uint64_t bytes;                   /* room left: the least along dsm's cgroup and its parents; 0 when the
					   * usage is at or above the limit */
	uint64_t limit;                   /* cgroups: the limit of the cgroup that left the least room */
	char path[DSM_MEMORY_PATH_MAX];   /* the file of that limit (or /proc/meminfo); "" for the override */
};

struct dsm_memory_limit {
	uint64_t usable;                  /* available less the margin; 0 when nothing is left or nothing is known */
	uint64_t available;               /* the least room of the sources found; 0 when none was */
	enum dsm_memory_source source;    /* the source that gave it */
	const char *name;                 /* its short name: "MemAvailable", "DSM_MEMORY_AVAILABLE", "cgroup v2",
					   * "cgroup v1" or "unknown" (static) */
	char path[DSM_MEMORY_PATH_MAX];   /* the file that gave it; "" for the override and unknown */
	struct dsm_memory_room meminfo;   /* MemAvailable, or DSM_MEMORY_AVAILABLE in its place */
	struct dsm_memory_room cgroup2, cgroup1;
};

/* Reads every source into *out. Cannot fail: what cannot be read sets no limit. */
void dsm_memory_limit(struct dsm_memory_limit *out);

/* out->usable of dsm_memory_limit: 0 both when nothing is known and when nothing is left. */
uint64_t dsm_usable_memory(void);

#endif
