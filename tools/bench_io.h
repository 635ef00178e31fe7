/* What dsm-bench io (tools/bench_io.c) shares with the other subcommands: bench models and the O_DIRECT
 * probe. */
#ifndef DSM_BENCH_IO_H
#define DSM_BENCH_IO_H

#include <stdint.h>

/* 0 when dir holds a checkpoint; when it holds none, writes the preset there with dsm-mkmodel (found beside
 * this program; extra: more of its options). -1 with a message on stderr when there is none after that. */
int bench_model(const char *preset, const char *dir, const char *extra);

struct dsm_checkpoint;

/* Plain sequential O_DIRECT reads, 4 MiB at a time and one at a time, of about `bytes` of the checkpoint's
 * shards taken as one stream in order, from *offset on (wrapping at the end); *offset moves past what was
 * read. Returns seconds, or -1 when a shard cannot be read (message on stderr); *read: the bytes read. */
double odirect_read(const struct dsm_checkpoint *ck, uint64_t *offset, uint64_t bytes, uint64_t *read);

/* GB/s of odirect_read over the first 2 GB of the checkpoint (0 when it cannot be measured). */
double odirect_gbs(const struct dsm_checkpoint *ck);

#endif
