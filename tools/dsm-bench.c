/* dsm-bench: benchmarks that print ratios against limits measured in the same run (docs TESTING.md).
 * One program, one subcommand per file: add a line to the table. */
#include <stdio.h>
#include <string.h>

int bench_kernels_main(int argc, char **argv);
int bench_io_main(int argc, char **argv);
int bench_e2e_main(int argc, char **argv);
int bench_tokenizer_main(int argc, char **argv);
int bench_batch_main(int argc, char **argv);
int bench_gpu_main(int argc, char **argv);

static const struct subcommand {
	const char *name;
	const char *what;
	int (*main)(int argc, char **argv);
} subcommands[] = {
	{ "kernels", "DRAM bandwidth, FP8 decode GEMV, batched GEMM vs oneDNN, one MoE layer", bench_kernels_main },
	{ "io", "expert streamer vs sequential O_DIRECT reads of the same bytes (io_ratio)", bench_io_main },
	{ "e2e", "decode with every expert streamed vs its bound (stream_decode_ratio); cache policies", bench_e2e_main },
	{ "batch", "decode tokens/s of 1 to 64 sequences together vs the bound of what each step reads (batch_efficiency)",
	  bench_batch_main },
	{ "tokenizer", "encoding speed of dsm vs the JavaScript tokenizer on the same 10 MB of text", bench_tokenizer_main },
	{ "gpu", "the GPU: copy bandwidth, logits against the cpu path, decode with experts on GPU/DRAM/NVMe vs bounds",
	  bench_gpu_main },
};

static void usage(FILE *f)
{
	fprintf(f, "usage: dsm-bench SUBCOMMAND [options]   (dsm-bench SUBCOMMAND --help)\n\nsubcommands:\n");
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		fprintf(f, "  %-10s %s\n", subcommands[i].name, subcommands[i].what);
}

int main(int argc, char **argv)
{
	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? 2 : 0;
	}
	for (size_t i = 0; i < sizeof(subcommands) / sizeof(subcommands[0]); i++)
		if (strcmp(argv[1], subcommands[i].name) == 0)
			return subcommands[i].main(argc - 1, argv + 1);
	fprintf(stderr, "dsm-bench: unknown subcommand '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
