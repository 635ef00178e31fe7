/* dsm-inspect: validate and describe a checkpoint. */
#include "checkpoint.h"
#include "error.h"
#include "inspect.h"
#include "size_parse.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-inspect [options] CHECKPOINT_DIR\n"
		"\n"
		"Validates a DeepSeek-V3.2 / DeepSeekMath-V2 checkpoint (config.json, the safetensors index and every\n"
		"shard header, every tensor the config implies, FP8 block scales) and describes it: shape, parameters\n"
		"by kind, bytes by dtype, expert bytes per layer, and what fits where for given memory budgets.\n"
		"Exit 0 when valid; 1 with a one-line error naming the file and the tensor or key when not.\n"
		"\n"
		"options:\n"
		"  --vram SIZE   GPU memory budget, e.g. 24G\n"
		"  --dram SIZE   host memory budget for weights, e.g. 64G\n"
		"  --json        print one JSON document instead of text\n"
		"  -h, --help    this text\n");
}

static double gb(const cJSON *doc, const char *key)
{
	return cJSON_GetNumberValue(cJSON_GetObjectItem(doc, key)) / 1e9;
}

static void print_text(const cJSON *doc)
{
	const cJSON *s = cJSON_GetObjectItem(doc, "shape");
	printf("checkpoint  %s\n", cJSON_GetStringValue(cJSON_GetObjectItem(doc, "checkpoint")));
	printf("model       %s, %s weights%s\n", cJSON_GetStringValue(cJSON_GetObjectItem(s, "model_type")),
	       cJSON_IsTrue(cJSON_GetObjectItem(s, "fp8")) ? "FP8 (128x128 block scales)" : "BF16",
	       cJSON_IsTrue(cJSON_GetObjectItem(s, "indexer")) ? ", sparse attention (lightning indexer)" : "");
	printf("shape      ");
	const cJSON *f;
	int col = 11;
	cJSON_ArrayForEach(f, s) {
		if (!cJSON_IsNumber(f))
			continue;
		char item[96];
		int n = snprintf(item, sizeof item, " %s=%g", f->string, f->valuedouble);
		if (col + n > 100) {
			printf("\n           ");
			col = 11;
		}
		fputs(item, stdout);
		col += n;
	}
	printf("\nfiles       %g shards, %g tensors, %.3f GB\n",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(doc, "shards")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(doc, "tensors")), gb(doc, "total_bytes"));

	const cJSON *p = cJSON_GetObjectItem(doc, "parameters"), *bk = cJSON_GetObjectItem(doc, "bytes_by_kind");
	printf("\n%-16s %18s %12s\n", "parameters", "count", "GB on disk");
	cJSON_ArrayForEach(f, p) {
		const cJSON *b = cJSON_GetObjectItem(bk, f->string);
		if (b)
			printf("%-16s %18.0f %12.3f\n", f->string, f->valuedouble, b->valuedouble / 1e9);
	}
	printf("%-16s %18s %12.3f\n", "other", "", gb(bk, "other"));
	double total = cJSON_GetNumberValue(cJSON_GetObjectItem(p, "total"));
	double main_only = cJSON_GetNumberValue(cJSON_GetObjectItem(p, "total_without_mtp"));
	int billions = total >= 1e9;
	printf("%-16s %18.0f  (%.2f %s; %.2f %s without MTP)\n", "total", total, total / (billions ? 1e9 : 1e6),
	       billions ? "B" : "M", main_only / (billions ? 1e9 : 1e6), billions ? "B" : "M");

	printf("\nbytes by dtype  ");
	cJSON_ArrayForEach(f, cJSON_GetObjectItem(doc, "bytes_by_dtype"))
		printf(" %s %.3f GB", f->string, f->valuedouble / 1e9);
	const cJSON *ex = cJSON_GetObjectItem(doc, "experts");
	printf("\n\nrouted experts  %g layers x %g experts, %.2f MB each (with scales), %.3f GB in all\n",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(ex, "moe_layers")),
	       cJSON_GetNumberValue(cJSON_GetObjectItem(ex, "experts_per_layer")),
	       gb(ex, "bytes_per_expert") * 1e3, gb(ex, "bytes_all_routed"));
	printf("                %.3f GB per layer; one decode token reads %.3f GB of experts\n",
	       cJSON_GetNumberValue(cJSON_GetObjectItem(cJSON_GetArrayItem(cJSON_GetObjectItem(ex, "per_layer"), 0),
							"bytes")) / 1e9,
	       gb(ex, "bytes_per_token_decode"));
	printf("resident        %.3f GB of non-expert weights (attention, dense, shared, embeddings, head)\n",
	       gb(doc, "resident_bytes"));
	printf("decode          one token reads %.3f GB of weights (its experts, every resident weight but the "
	       "embedding table)\n", gb(doc, "decode_bytes_per_token"));
	const cJSON *fit = cJSON_GetObjectItem(doc, "placement");
	if (fit) {
		printf("\nbudgets         vram %.1f GiB, dram %.1f GiB\n", gb(fit, "vram_budget") * 1e9 / (1 << 30),
		       gb(fit, "dram_budget") * 1e9 / (1 << 30));
		if (!cJSON_IsTrue(cJSON_GetObjectItem(fit, "runs"))) {
			printf("                the non-expert weights fit in neither budget: the model cannot run\n");
		} else {
			printf("                non-expert weights on %s; experts: %g on GPU, %g in DRAM, %g streamed "
			       "from NVMe (of %g)\n",
			       cJSON_GetStringValue(cJSON_GetObjectItem(fit, "non_expert_weights")),
			       cJSON_GetNumberValue(cJSON_GetObjectItem(fit, "experts_gpu")),
			       cJSON_GetNumberValue(cJSON_GetObjectItem(fit, "experts_dram")),
			       cJSON_GetNumberValue(cJSON_GetObjectItem(fit, "experts_nvme")),
			       cJSON_GetNumberValue(cJSON_GetObjectItem(fit, "experts_total")));
		}
	}
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "vram", required_argument, 0, 'v' },
		{ "dram", required_argument, 0, 'd' },
		{ "json", no_argument, 0, 'j' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	uint64_t vram = 0, dram = 0;
	int json = 0, c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		switch (c) {
		case 'v':
		case 'd':
			if (parse_size(optarg, c == 'v' ? &vram : &dram) != 0) {
				fprintf(stderr, "dsm-inspect: --%s: '%s' is not a size (e.g. 24G)\n",
					c == 'v' ? "vram" : "dram", optarg);
				return 1;
			}
			break;
		case 'j': json = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (argc - optind != 1) {
		usage(stderr);
		return 1;
	}
	struct dsm_checkpoint *ck;
	if (dsm_checkpoint_open(&ck, argv[optind]) < 0) {
		fprintf(stderr, "dsm-inspect: %s\n", dsm_errmsg());
		return 1;
	}
	cJSON *doc = dsm_inspect(ck, vram, dram);
	if (!doc) {
		fprintf(stderr, "dsm-inspect: out of memory\n");
		dsm_checkpoint_close(ck);
		return 1;
	}
	if (json) {
		char *text = cJSON_Print(doc);
		puts(text);
		free(text);
	} else {
		print_text(doc);
	}
	cJSON_Delete(doc);
	dsm_checkpoint_close(ck);
	return 0;
}
