/* dsm-bench tokenizer: encoding speed of dsm against the JavaScript reference (@lenml/tokenizers), on the
 * same text in the same run.
 *
 * The text is a corpus file repeated to at least --mb megabytes, encoded in one call (no BOS), --runs
 * times by each implementation, single-threaded; the best run of each is compared. The JavaScript side
 * runs as `node bench.cjs` (tests/tokenizer/bench.cjs) and needs the npm packages that
 * tests/tokenizer/fetch_npm.sh installs. A benchmark, not a test: it prints and never fails on speed. */
#include "error.h"
#include "json_util.h"
#include "tokenizer.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: dsm-bench tokenizer --tokenizer FILE.json --corpus FILE [options]\n"
		"  --tokenizer FILE   tokenizer.json (tokenizer_config.json beside it is used by the JavaScript side)\n"
		"  --corpus FILE      text to repeat (e.g. tests/tokenizer/corpus.txt)\n"
		"  --mb N             repeat the corpus to at least N MB (default 10)\n"
		"  --runs N           encode N times with each implementation (default 3)\n"
		"  --node-prefix DIR  where fetch_npm.sh installed the npm packages (omit to time dsm only)\n"
		"  --js-script FILE   the JavaScript side (default: tests/tokenizer/bench.cjs beside --corpus)\n");
}

/* Runs the JavaScript side; returns its best MB/s (0 on failure) and its id count. */
static double run_js(const char *script, const char *prefix, const char *tokenizer, const char *text_path,
		     int runs, double *first, long *n_ids)
{
	const char *slash = strrchr(tokenizer, '/');
	size_t dir_len = slash ? (size_t)(slash - tokenizer) + 1 : 0;
	char config[4096], cmd[16384];
	snprintf(config, sizeof config, "%.*stokenizer_config.json", (int)dir_len, tokenizer);
	snprintf(cmd, sizeof cmd, "node '%s' '%s' '%s' '%s' '%s' %d", script, prefix, tokenizer, config, text_path,
		 runs);
	FILE *p = popen(cmd, "r");
	if (!p)
		return 0;
	char line[4096] = "";
	double best = 0;
	*first = 0;
	*n_ids = -1;
	if (fgets(line, sizeof line, p) && strncmp(line, "runs ", 5) == 0) {
		char *s = line + 5, *end;
		for (;;) {
			double v = strtod(s, &end);
			if (end == s)
				break;
			if (*first == 0)
				*first = v;
			if (v > best)
				best = v;
			s = end;
		}
		if (strncmp(s, " ids ", 5) == 0)
			*n_ids = strtol(s + 5, NULL, 10);
	}
	if (pclose(p) != 0)
		return 0;
	return best;
}

int bench_tokenizer_main(int argc, char **argv)
{
	const char *tokenizer = NULL, *corpus = NULL, *prefix = NULL, *script = NULL;
	double mb = 10;
	int runs = 3;
	static const struct option options[] = {
		{"tokenizer", required_argument, 0, 't'}, {"corpus", required_argument, 0, 'c'},
		{"mb", required_argument, 0, 'm'},        {"runs", required_argument, 0, 'r'},
		{"node-prefix", required_argument, 0, 'p'}, {"js-script", required_argument, 0, 'j'},
		{"help", no_argument, 0, 'h'},            {0, 0, 0, 0},
	};
	int c;
	while ((c = getopt_long(argc, argv, "h", options, NULL)) != -1) {
		switch (c) {
		case 't': tokenizer = optarg; break;
		case 'c': corpus = optarg; break;
		case 'm': mb = atof(optarg); break;
		case 'r': runs = atoi(optarg); break;
		case 'p': prefix = optarg; break;
		case 'j': script = optarg; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 1;
		}
	}
	if (!tokenizer || !corpus || mb <= 0 || runs < 1 || optind != argc) {
		usage(stderr);
		return 1;
	}
	char default_script[4096];
	if (!script) {
		const char *slash = strrchr(corpus, '/');
		snprintf(default_script, sizeof default_script, "%.*sbench.cjs",
			 slash ? (int)(slash - corpus) + 1 : 0, corpus);
		script = default_script;
	}

	char *base;
	size_t base_len;
	if (read_file(corpus, (size_t)1 << 30, &base, &base_len) != 0 || base_len == 0) {
		fprintf(stderr, "dsm-bench tokenizer: %s\n", base_len ? dsm_errmsg() : "empty corpus");
		return 1;
	}
	size_t copies = (size_t)(mb * 1e6 / (double)base_len) + 1;
	size_t len = copies * base_len;
	char *text = malloc(len);
	if (!text) {
		fprintf(stderr, "dsm-bench tokenizer: out of memory for %zu bytes\n", len);
		return 1;
	}
	for (size_t i = 0; i < copies; i++)
		memcpy(text + i * base_len, base, base_len);
	free(base);

	struct tokenizer *tok;
	if (tokenizer_load(&tok, tokenizer, NULL) != 0) {
		fprintf(stderr, "dsm-bench tokenizer: %s\n", dsm_errmsg());
		return 1;
	}
	printf("text: %.2f MB (%s repeated %zu times), encoded in one call, best of %d runs\n", (double)len / 1e6,
	       corpus, copies, runs);
	struct token_ids ids = {0};
	double best = 0, first = 0;
	for (int r = 0; r < runs; r++) {
		ids.n = 0;
		double t0 = now();
		if (tokenizer_encode(tok, text, len, 0, &ids) != 0) {
			fprintf(stderr, "dsm-bench tokenizer: %s\n", dsm_errmsg());
			return 1;
		}
		double rate = (double)len / 1e6 / (now() - t0);
		if (r == 0)
			first = rate;
		if (rate > best)
			best = rate;
	}
	printf("dsm:        %8.2f MB/s (first run %.2f MB/s), %zu ids\n", best, first, ids.n);
	fflush(stdout);
	int status = 0;
	if (prefix) {
		char path[] = "/tmp/dsm-bench-tok-XXXXXX";
		int fd = mkstemp(path);
		if (fd < 0 || write(fd, text, len) != (ssize_t)len) {
			fprintf(stderr, "dsm-bench tokenizer: cannot write the text for node to %s\n", path);
			status = 1;
		} else {
			double js_first;
			long js_ids;
			double js = run_js(script, prefix, tokenizer, path, runs, &js_first, &js_ids);
			if (js <= 0) {
				fprintf(stderr, "dsm-bench tokenizer: the JavaScript side failed (see above)\n");
				status = 1;
			} else {
				printf("javascript: %8.2f MB/s (first run %.2f MB/s), %ld ids%s\n", js, js_first, js_ids,
				       js_ids == (long)ids.n ? "" : " (DIFFERENT COUNT)");
				printf("ratio: dsm is %.1fx the JavaScript implementation (goal: at least 5x)\n", best / js);
			}
		}
		if (fd >= 0) {
			close(fd);
			unlink(path);
		}
	}
	token_ids_free(&ids);
	tokenizer_free(tok);
	free(text);
	return status;
}
