/* The DRAM read probe of dsm-bench: reads memory the way a bandwidth limit must be measured (docs TESTING.md,
 * "Benchmarks are not tests"): 512-bit (or 256-bit) vector loads into two (four) independent accumulators,
 * so that the loop is bound by memory, not by a chain of adds. Callers run it on every thread of the work it
 * judges, over memory far larger than the last-level cache. */
#ifndef DSM_DRAM_PROBE_H
#define DSM_DRAM_PROBE_H

#include <stddef.h>
#include <stdint.h>

/* Reads the whole 512-byte blocks of [p, p + n) with the widest loads this CPU has (AVX-512F, AVX2, else
 * 64-bit words). Returns the XOR of everything read, which the caller keeps (in a volatile) so that the
 * compiler cannot drop the reads. */
uint64_t dram_read(const void *p, size_t n);

/* Share q of Q of n bytes, cut at 512-byte boundaries: bytes [*begin, *end). */
void dram_share(size_t n, int q, int Q, size_t *begin, size_t *end);

/* A region of memory to probe. */
struct dram_region {
	const char *p;
	size_t n;
};

/* The probe over regions r[(first + i) % n_regions] for i < count: every thread of an OpenMP team of
 * `threads` (0: the default team) reads its share (dram_share) of each region. Returns the seconds; *bytes:
 * the bytes read. */
double dram_read_regions(const struct dram_region *r, size_t n_regions, size_t first, size_t count, int threads,
			 double *bytes);

#endif
