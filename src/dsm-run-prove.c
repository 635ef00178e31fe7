/* dsm-run --prove: the self-verifying proof search (docs/prove.md) for one problem. */
#include "dsm-run-prove.h"

#include "engine.h"
#include "error.h"
#include "json_util.h"
#include "prove.h"
#include "prove_engine.h"
#include "prove_flags.h"
#include "templates.h"
#include "tokenizer.h"

#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define PROBLEM_MAX_BYTES ((size_t)1 << 20)

static void usage(FILE *f)
{
	fputs("usage: dsm-run --prove -m CHECKPOINT_DIR [-p PROBLEM | -f FILE] [options]   (problem on stdin\n"
	      "       when neither -p nor -f is given)\n"
	      "Searches for a proof: round 0 generates N candidate proofs from one shared prefill; each candidate\n"
	      "that passes the rule checks (and --check-cmd) is verified M times; the K best by mean verification\n"
	      "score are refined with up to E of their evaluations, S samples each; refinements are verified and\n"
	      "join the pool; up to R rounds, or until a mean score reaches the threshold. Progress on stderr; the\n"
	      "selected proof and its mean score on stdout. Scores are the verifier's, parsed from its output: a\n"
	      "verifier can be fooled, and a score is not a statement that a proof is correct (docs/prove.md).\n"
	      "\n"
	      "verifier:\n"
	      "  --verifier self|DIR       self (default): the same model verifies; DIR: a second checkpoint verifies,\n"
	      "                            its steps interleaved with the main model's in one loop\n"
	      "  --verifier-threads N      threads of the verifier checkpoint (default: the same as --threads)\n"
	      "output:\n"
	      "  --out FILE                write the result document (JSON, docs/prove-result.schema.json)\n"
	      "  --json                    print the result document on stdout instead of the proof\n"
	      "  -q, --quiet               no progress on stderr\n"
	      "  -h, --help                this text\n", f);
	dsm_prove_flags_help(f);
	fputs("The engine's --ctx defaults to what a proof and its verification need, --max-seqs to N x (M + 1)\n"
	      "at most 64 (with --verifier DIR: the larger of N and K x S; the verifier N x M at most 64);\n"
	      "requests wait for a free sequence.\n\n", f);
	dsm_engine_flags_help(f);
}

enum { OPT_PROVE = 256, OPT_VERIFIER, OPT_VER_THREADS, OPT_OUT, OPT_JSON };

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* The problem from stdin, as long as it is (at most PROBLEM_MAX_BYTES). */
static int read_stdin(struct text_buffer *out)
{
	char chunk[65536];
	size_t got;
	while ((got = fread(chunk, 1, sizeof chunk, stdin)) > 0) {
		if (out->len + got > PROBLEM_MAX_BYTES)
			return dsm_fail(DSM_ETRUNCATED, "stdin: the problem is longer than %zu bytes", PROBLEM_MAX_BYTES);
		if (text_buffer_append(out, chunk, got) < 0)
			return DSM_ENOMEM;
	}
	if (ferror(stdin))
		return dsm_fail(DSM_EIO, "stdin: %s", strerror(errno));
	return text_buffer_append(out, "", 0);
}

struct progress {
	int quiet;
	double last;
};

static void on_progress(void *arg, const struct dsm_prove_progress *g)
{
	struct progress *pr = arg;
	double t = now();
	/* a line a second at most, and one at each round's end */
	if (pr->quiet || (!g->round_done && (t - pr->last < 1.0 || g->candidates_done == g->candidates)))
		return;
	pr->last = t;
	char best[64] = "none yet";
	if (g->best >= 0)
		snprintf(best, sizeof best, "%.4g (candidate %d)", g->best_mean, g->best);
	fprintf(stderr, "dsm-run: round %d%s: candidates %d/%d done, verifications %d/%d done, best mean score %s, "
		"%.1f tok/s\n", g->round, g->round_done ? " finished" : "", g->candidates_done, g->candidates,
		g->verifications_done, g->verifications, best, g->seconds > 0 ? (double)g->generated_tokens / g->seconds : 0.0);
}

int dsm_run_prove(int argc, char **argv)
{
	static const struct option own[] = {
		{ "prove", no_argument, NULL, OPT_PROVE }, { "model", required_argument, NULL, 'm' },
		{ "prompt", required_argument, NULL, 'p' }, { "file", required_argument, NULL, 'f' },
		{ "verifier", required_argument, NULL, OPT_VERIFIER },
		{ "verifier-threads", required_argument, NULL, OPT_VER_THREADS }, { "out", required_argument, NULL, OPT_OUT },
		{ "json", no_argument, NULL, OPT_JSON }, { "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	struct option *own_prove = dsm_flags_concat(own, dsm_prove_flags);
	struct option *opts = own_prove ? dsm_engine_flags_with(own_prove) : NULL;
	free(own_prove);
	if (!opts) {
		fprintf(stderr, "dsm-run: out of memory\n");
		return 1;
	}
	struct dsm_engine_options eo;
	dsm_engine_options_default(&eo);
	eo.session.ctx = 0;      /* 0: not given, computed below */
	eo.session.max_seqs = 0;
	struct dsm_prove_settings st;
	dsm_prove_settings_default(&st);
	struct templates tpl = { 0 };
	const char *dir = NULL, *prompt = NULL, *file = NULL, *templates_path = NULL, *verifier_dir = NULL,
		   *out_path = NULL;
	int json = 0, verifier_threads = 0, c, status = 1, rc = 0;
	struct progress pr = { 0 };
	optind = 1;
	while ((c = getopt_long(argc, argv, "m:p:f:t:qh", opts, NULL)) != -1) {
		int e = dsm_engine_flag(&eo, c, optarg);
		if (e == 0)
			e = dsm_prove_flag(&st, &templates_path, c, optarg);
		if (e < 0) {
			fprintf(stderr, "dsm-run: %s\n", dsm_errmsg());
			free(opts);
			return 2;
		}
		if (e > 0)
			continue;
		switch (c) {
		case OPT_PROVE: break;
		case 'm': dir = optarg; break;
		case 'p': prompt = optarg; break;
		case 'f': file = optarg; break;
		case OPT_VERIFIER: verifier_dir = strcmp(optarg, "self") == 0 ? NULL : optarg; break;
		case OPT_VER_THREADS: verifier_threads = (int)dsm_run_int_arg("--verifier-threads", optarg, 1, 4096); break;
		case OPT_OUT: out_path = optarg; break;
		case OPT_JSON: json = 1; break;
		case 'q': pr.quiet = 1; break;
		case 'h': usage(stdout); free(opts); return 0;
		default: usage(stderr); free(opts); return 2;
		}
	}
	free(opts);
	if (optind < argc || !dir || (prompt && file)) {
		fprintf(stderr, "dsm-run: --prove: give -m DIR and the problem with -p TEXT, -f FILE or on stdin "
			"(see dsm-run --prove --help)\n");
		return 2;
	}
	st.verifier_name = verifier_dir ? verifier_dir : "self";

	struct text_buffer problem = { 0 };
	char *file_text = NULL;
	struct dsm_engine *e = NULL, *ve = NULL;
	struct dsm_prove_engine *pe = NULL, *pv = NULL;
	struct dsm_prove *p = NULL;
	char *doc = NULL;
	if (file) {
		size_t len;
		if ((rc = read_file(file, PROBLEM_MAX_BYTES, &file_text, &len)) < 0)
			goto fail;
		prompt = file_text;
	} else if (!prompt) {
		if ((rc = read_stdin(&problem)) < 0)
			goto fail;
		prompt = problem.data;
	}
	if ((rc = templates_init(&tpl)) < 0 || (templates_path && (rc = templates_load_file(&tpl, templates_path)) < 0))
		goto fail;
	st.templates = &tpl;
	if ((rc = dsm_prove_settings_check(&st)) < 0)
		goto fail;
	/* a proof, its verification and what a refinement shows fit in the context; sequences for the work that
	 * runs at once (requests wait for free ones) */
	int64_t need = dsm_prove_context_needed(&st, (int64_t)strlen(prompt)); /* bytes: at least the tokens */
	int ctx_given = eo.session.ctx > 0, seqs_given = eo.session.max_seqs > 0;
	if (!ctx_given)
		eo.session.ctx = need;
	if (!seqs_given) {
		/* with a verifier checkpoint, this engine runs only generations and refinements */
		int refinements = st.n_best * st.n_samples;
		eo.session.max_seqs = dsm_prove_default_seqs(!verifier_dir ? st.n_candidates * (st.n_verifications + 1) :
					  st.n_candidates > refinements ? st.n_candidates : refinements);
	}
	if ((rc = dsm_engine_open(&e, dir, &eo)) < 0)
		goto fail;
	dsm_run_print_notes(dsm_engine_notes(e));
	struct dsm_engine_report er;
	dsm_engine_report(e, 0, 0, &er);
	if (verifier_dir) {
		struct dsm_engine_options vo;
		dsm_engine_options_default(&vo);
		vo.model.precision = eo.model.precision;
		vo.model.no_bind = eo.model.no_bind;
		vo.model.threads = verifier_threads ? verifier_threads : er.threads;
		vo.session.ctx = eo.session.ctx;
		vo.session.max_seqs = seqs_given ? eo.session.max_seqs : dsm_prove_default_seqs(st.n_candidates * st.n_verifications);
		vo.session.kv_dtype = eo.session.kv_dtype;
		if ((rc = dsm_engine_open(&ve, verifier_dir, &vo)) < 0) {
			rc = dsm_fail_prefix(rc, "--verifier %s", verifier_dir);
			goto fail;
		}
		dsm_run_print_notes(dsm_engine_notes(ve));
	}
	if (!pr.quiet) {
		fprintf(stderr, "dsm-run: proof search: %d candidates, %d verifications each, %d best refined with %d "
			"evaluations and %d samples, up to %d rounds; %d sequences of %lld tokens%s\n", st.n_candidates,
			st.n_verifications, st.n_best, st.n_evaluations, st.n_samples, st.max_rounds,
			dsm_session_max_seqs(dsm_engine_session(e)), (long long)dsm_session_ctx(dsm_engine_session(e)),
			verifier_dir ? "" : "; verifier: the same model");
		if (ve) {
			struct dsm_engine_report vr;
			dsm_engine_report(ve, 0, 0, &vr);
			fprintf(stderr, "dsm-run: verifier %s: %d threads, %d sequences; its steps alternate with the main "
				"model's (%d threads)\n", verifier_dir, vr.threads, dsm_session_max_seqs(dsm_engine_session(ve)),
				er.threads);
		}
	}
	/* each engine's steps run with its own thread count when two alternate */
	if ((rc = dsm_prove_engine_init(&pe, e, ve ? er.threads : 0)) < 0 ||
	    (ve && (rc = dsm_prove_engine_init(&pv, ve, verifier_threads ? verifier_threads : er.threads)) < 0))
		goto fail;
	struct dsm_gen *gens[2] = { dsm_prove_engine_gen(pe), pv ? dsm_prove_engine_gen(pv) : NULL };
	pr.last = now();
	if ((rc = dsm_prove_start(&p, prompt, &st, gens[0], pv ? gens[1] : gens[0], on_progress, &pr)) < 0 ||
	    (rc = dsm_prove_run(&p, 1, gens, pv ? 2 : 1)) < 0)
		goto fail;
	const struct dsm_prove_result *r = dsm_prove_result(p);
	cJSON *j = dsm_prove_to_json(r);
	doc = j ? cJSON_Print(j) : NULL;
	cJSON_Delete(j);
	if (!doc) {
		rc = dsm_fail(DSM_ENOMEM, "out of memory for the result document");
		goto fail;
	}
	if (out_path && (rc = write_file_atomic(out_path, doc)) < 0)
		goto fail;
	if (json) {
		printf("%s\n", doc);
	} else if (r->selected >= 0) {
		const struct dsm_prove_candidate *sc = &r->cand[r->selected];
		printf("selected: candidate %d (round %d), mean verification score %.4g over %d valid verification%s\n\n%s\n",
		       sc->index, sc->round, sc->mean, sc->n_valid, sc->n_valid == 1 ? "" : "s", sc->proof ? sc->proof : "");
	} else {
		printf("no proof selected: no candidate has a valid verification score (stop: %s)\n",
		       dsm_prove_stop_name(r->stop));
	}
	fflush(stdout);
	if (!pr.quiet) {
		uint64_t gen_tokens = 0, prompt_tokens = 0, computed = 0;
		for (int k = 0; k < DSM_PROVE_KINDS; k++) {
			gen_tokens += r->phase[k].generated_tokens;
			prompt_tokens += r->phase[k].prompt_tokens;
			computed += r->phase[k].computed_prompt_tokens;
		}
		fprintf(stderr, "dsm-run: stop: %s after %d round%s, %d candidates, %.2f s; %llu tokens generated "
			"(%.2f tok/s); prompts %llu tokens, %llu computed, %llu shared by forks\n",
			dsm_prove_stop_name(r->stop), r->n_rounds, r->n_rounds == 1 ? "" : "s", r->n_cand, r->seconds,
			(unsigned long long)gen_tokens, r->seconds > 0 ? (double)gen_tokens / r->seconds : 0.0,
			(unsigned long long)prompt_tokens, (unsigned long long)computed,
			(unsigned long long)(prompt_tokens - computed));
	}
	if (r->stop == DSM_PROVE_FAILED) {
		fprintf(stderr, "dsm-run: %s\n", r->error);
		goto out;
	}
	status = 0;
	goto out;
fail:
	fprintf(stderr, "dsm-run: %s\n", dsm_errmsg());
out:
	free(doc);
	dsm_prove_free(p);
	dsm_prove_engine_free(pe);
	dsm_prove_engine_free(pv);
	dsm_engine_close(ve);
	dsm_engine_close(e);
	templates_free(&tpl);
	text_buffer_free(&problem);
	free(file_text);
	return status;
}
