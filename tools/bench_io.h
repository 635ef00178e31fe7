/* What dsm-bench io (tools/bench_io.c) shares with the other subcommands: bench models and the O_DIRECT
 * probe. */
#ifndef DSM_BENCH_IO_H
#define DSM_BENCH_IO_H

/* 0 when dir holds a checkpoint; when it holds none, writes the preset there with dsm-mkmodel (found beside
 * this program; extra: more of its options). -1 with a message on stderr when there is none after that. */
int bench_model(const char *preset, const char *dir, const char *extra);

/* GB/s of a plain sequential O_DIRECT read (4 MiB reads, one at a time) of up to 2 GB of the checkpoint's
 * first shards; 0 when it cannot be measured. */
double odirect_gbs(const char *model);

#endif
