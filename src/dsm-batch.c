/* dsm-batch: a problem set through the proof search, one durable result per problem (docs/batch.md). */
#include "batch_run.h"

#include "engine.h"
#include "error.h"
#include "prove_flags.h"
#include "templates.h"

#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void usage(FILE *f)
{
	fputs("usage: dsm-batch -m CHECKPOINT_DIR --in PROBLEMS.jsonl --out RESULTS.jsonl [options]\n"
	      "       dsm-batch status RESULTS.jsonl            (or --status RESULTS.jsonl)\n"
	      "       dsm-batch merge OUT.jsonl SHARD.jsonl... [--in PROBLEMS.jsonl]\n"
	      "       dsm-batch report RESULTS.jsonl [--html FILE]\n"
	      "Runs the self-verifying proof search (dsm-run --prove) on every problem of a JSON Lines file, several\n"
	      "at once sharing the batched engine, and appends one result line per problem: the proof search's\n"
	      "result document (docs/prove-result.schema.json) with the problem's id first. A line is written and\n"
	      "synced to disk before its problem counts as done, so after a kill, a crash or a power cut --resume\n"
	      "continues without redoing or repeating a finished problem (docs/batch.md).\n"
	      "\n"
	      "input: one JSON object per line: {\"id\": \"...\", \"problem\": \"...\"}, optionally \"settings\": {search\n"
	      "flags below by name, e.g. \"candidates\": 8, \"no-think\": true}; other members are ignored. Lines that\n"
	      "cannot run (bad JSON, no id or problem, a duplicate id, bad settings, too long for the context) go to\n"
	      "the errors file with their line number; the others run. The file must be UTF-8.\n"
	      "\n"
	      "job:\n"
	      "  --in FILE                 the problems (JSON Lines)\n"
	      "  --out FILE                the results (JSON Lines); an existing file is refused without --resume\n"
	      "  --errors FILE             lines that cannot run (default: OUT.errors.jsonl)\n"
	      "  --resume                  continue the job that wrote OUT (a partial last line is cut off)\n"
	      "  --concurrent N            problems in flight at once (default 4)\n"
	      "  --shard I/N               run lines L with (L - 1) mod N = I (0 <= I < N); default: from Slurm's\n"
	      "                            SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT in a job array, else 0/1\n"
	      "  --max-problem-tokens N    end a problem's search with its best so far after N generated tokens\n"
	      "  --max-problem-seconds S   ... after S seconds (stop reason token_limit / time_limit)\n"
	      "  --drain SECONDS           after SIGINT/SIGTERM: time the problems in flight have to finish before\n"
	      "                            they are left for --resume (default 30; a second signal: at once)\n"
	      "  --log-every SECONDS       a progress line this often when stderr is not a terminal (default 60)\n"
	      "  -q, --quiet               no progress\n"
	      "  -h, --help                this text\n", f);
	dsm_prove_flags_help(f);
	fputs("The engine's --ctx defaults to what the longest problem's search needs, --max-seqs to the sequences\n"
	      "of --concurrent searches (at most 64); requests wait for a free sequence.\n\n", f);
	dsm_engine_flags_help(f);
	fputs("\nexit status: 0 every problem has its result or its error line; 1 the job failed (the results\n"
	      "written are kept); 2 bad usage; 128+N stopped by signal N (--resume continues).\n", f);
}

enum { OPT_IN = 256, OPT_OUT, OPT_ERRORS, OPT_RESUME, OPT_CONCURRENT, OPT_SHARD, OPT_MAX_TOKENS, OPT_MAX_SECONDS,
       OPT_DRAIN, OPT_LOG_EVERY, OPT_STATUS, OPT_HTML };

static int number(const char *opt, const char *s, double lo, double hi, double *out)
{
	char *end;
	errno = 0;
	double v = strtod(s, &end);
	if (end == s || *end || errno || !(v >= lo && v <= hi)) {
		fprintf(stderr, "dsm-batch: %s: '%s' is not a number in [%g, %g]\n", opt, s, lo, hi);
		return -1;
	}
	*out = v;
	return 0;
}

static int parse_shard(const char *what, const char *i_text, const char *n_text, int *shard, int *shards)
{
	char *e1, *e2;
	errno = 0;
	long i = strtol(i_text, &e1, 10), n = strtol(n_text, &e2, 10);
	if (e1 == i_text || *e1 || e2 == n_text || *e2 || errno || n < 1 || n > 1000000 || i < 0 || i >= n) {
		fprintf(stderr, "dsm-batch: %s: '%s/%s' is not a shard I/N with 0 <= I < N\n", what, i_text, n_text);
		return -1;
	}
	*shard = (int)i;
	*shards = (int)n;
	return 0;
}

/* The shard from Slurm's job array variables (a job array over one problem set). */
static int slurm_shard(int *shard, int *shards)
{
	const char *id = getenv("SLURM_ARRAY_TASK_ID"), *count = getenv("SLURM_ARRAY_TASK_COUNT");
	const char *min = getenv("SLURM_ARRAY_TASK_MIN");
	if (!id || !count)
		return 0;
	char idx[32];
	long first = min ? strtol(min, NULL, 10) : 0;
	snprintf(idx, sizeof idx, "%ld", strtol(id, NULL, 10) - first);
	if (parse_shard("SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN / SLURM_ARRAY_TASK_COUNT", idx, count, shard,
			shards) < 0)
		return -1;
	return 1;
}

static int merge_main(int argc, char **argv)
{
	const char *in = NULL;
	char **files = malloc(sizeof(char *) * (size_t)argc);
	int n = 0;
	if (!files)
		return 1;
	for (int i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--in") == 0 && i + 1 < argc)
			in = argv[++i];
		else if (strncmp(argv[i], "--in=", 5) == 0)
			in = argv[i] + 5;
		else if (argv[i][0] == '-' && argv[i][1]) {
			fprintf(stderr, "dsm-batch merge: unknown option %s\n", argv[i]);
			free(files);
			return 2;
		} else
			files[n++] = argv[i];
	}
	if (n < 2) {
		fprintf(stderr, "usage: dsm-batch merge OUT.jsonl SHARD.jsonl... [--in PROBLEMS.jsonl]\n");
		free(files);
		return 2;
	}
	int rc = batch_merge(files[0], files + 1, n - 1, in);
	free(files);
	return rc;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "status") == 0) {
		if (argc != 3) {
			fprintf(stderr, "usage: dsm-batch status RESULTS.jsonl\n");
			return 2;
		}
		return batch_status(argv[2], stdout);
	}
	if (argc >= 2 && strcmp(argv[1], "merge") == 0)
		return merge_main(argc, argv);
	if (argc >= 2 && strcmp(argv[1], "report") == 0) {
		const char *html = NULL, *res = NULL;
		for (int i = 2; i < argc; i++) {
			if (strcmp(argv[i], "--html") == 0 && i + 1 < argc)
				html = argv[++i];
			else if (!res && argv[i][0] != '-')
				res = argv[i];
			else {
				fprintf(stderr, "usage: dsm-batch report RESULTS.jsonl [--html FILE]\n");
				return 2;
			}
		}
		if (!res) {
			fprintf(stderr, "usage: dsm-batch report RESULTS.jsonl [--html FILE]\n");
			return 2;
		}
		return batch_report(res, html, stdout);
	}

	static const struct option own[] = {
		{ "model", required_argument, NULL, 'm' }, { "in", required_argument, NULL, OPT_IN },
		{ "out", required_argument, NULL, OPT_OUT }, { "errors", required_argument, NULL, OPT_ERRORS },
		{ "resume", no_argument, NULL, OPT_RESUME }, { "concurrent", required_argument, NULL, OPT_CONCURRENT },
		{ "shard", required_argument, NULL, OPT_SHARD },
		{ "max-problem-tokens", required_argument, NULL, OPT_MAX_TOKENS },
		{ "max-problem-seconds", required_argument, NULL, OPT_MAX_SECONDS },
		{ "drain", required_argument, NULL, OPT_DRAIN }, { "log-every", required_argument, NULL, OPT_LOG_EVERY },
		{ "status", required_argument, NULL, OPT_STATUS }, { "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *both = dsm_flags_concat(own, dsm_prove_flags);
	struct option *opts = both ? dsm_engine_flags_with(both) : NULL;
	free(both);
	if (!opts) {
		fprintf(stderr, "dsm-batch: out of memory\n");
		return 1;
	}
	struct batch_options o = { .concurrent = 4, .shards = 1, .log_every = 60, .drain_seconds = 30 };
	dsm_engine_options_default(&o.engine);
	o.engine.session.ctx = 0;       /* 0: not given, computed from the problems */
	o.engine.session.max_seqs = 0;
	dsm_prove_settings_default(&o.search);
	const char *templates_path = NULL, *shard_arg = NULL;
	struct templates tpl = { 0 };
	int c, bad = 0;
	double v;
	while (!bad && (c = getopt_long(argc, argv, "m:t:qh", opts, NULL)) != -1) {
		int e = dsm_engine_flag(&o.engine, c, optarg);
		if (e == 0)
			e = dsm_prove_flag(&o.search, &templates_path, c, optarg);
		if (e < 0) {
			fprintf(stderr, "dsm-batch: %s\n", dsm_errmsg());
			bad = 1;
		}
		if (e != 0)
			continue;
		switch (c) {
		case 'm': o.model_dir = optarg; break;
		case OPT_IN: o.in_path = optarg; break;
		case OPT_OUT: o.out_path = optarg; break;
		case OPT_ERRORS: o.errors_path = optarg; break;
		case OPT_RESUME: o.resume = 1; break;
		case OPT_CONCURRENT: bad = number("--concurrent", optarg, 1, 4096, &v) < 0; o.concurrent = (int)v; break;
		case OPT_SHARD: shard_arg = optarg; break;
		case OPT_MAX_TOKENS: bad = number("--max-problem-tokens", optarg, 1, 1e15, &v) < 0; o.max_problem_tokens = (int64_t)v; break;
		case OPT_MAX_SECONDS: bad = number("--max-problem-seconds", optarg, 1e-3, 1e9, &v) < 0; o.max_problem_seconds = v; break;
		case OPT_DRAIN: bad = number("--drain", optarg, 0, 1e9, &v) < 0; o.drain_seconds = v; break;
		case OPT_LOG_EVERY: bad = number("--log-every", optarg, 0.01, 1e9, &v) < 0; o.log_every = v; break;
		case OPT_STATUS: free(opts); return batch_status(optarg, stdout);
		case 'q': o.quiet = 1; break;
		case 'h': usage(stdout); free(opts); return 0;
		default: bad = 1; break;
		}
	}
	free(opts);
	if (bad)
		return 2;
	if (optind < argc || !o.model_dir || !o.in_path || !o.out_path) {
		fprintf(stderr, "dsm-batch: give -m DIR, --in PROBLEMS.jsonl and --out RESULTS.jsonl (see dsm-batch --help)\n");
		return 2;
	}
	if (shard_arg) {
		char *slash = strchr(shard_arg, '/');
		char i_text[32] = "";
		if (!slash || (size_t)(slash - shard_arg) >= sizeof i_text) {
			fprintf(stderr, "dsm-batch: --shard: '%s' is not I/N\n", shard_arg);
			return 2;
		}
		memcpy(i_text, shard_arg, (size_t)(slash - shard_arg));
		if (parse_shard("--shard", i_text, slash + 1, &o.shard, &o.shards) < 0)
			return 2;
	} else if (slurm_shard(&o.shard, &o.shards) < 0) {
		return 2;
	}
	int rc = templates_init(&tpl);
	if (rc == 0 && templates_path)
		rc = templates_load_file(&tpl, templates_path);
	o.search.templates = &tpl;
	if (rc == 0)
		rc = dsm_prove_settings_check(&o.search);
	if (rc < 0) {
		fprintf(stderr, "dsm-batch: %s\n", dsm_errmsg());
		templates_free(&tpl);
		return 2;
	}
	o.search.verifier_name = "self";
	/* a file size limit gives EFBIG on the write, reported like a full disk, instead of killing the job */
	signal(SIGXFSZ, SIG_IGN);
	int status = batch_run(&o);
	templates_free(&tpl);
	return status;
}
