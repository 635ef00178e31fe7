/* dsm-tune report: one self-contained HTML page (inline SVG, no script, nothing fetched) and the same figures
 * as SVG and PNG files (docs/tune.md, "Report"):
 *   popularity   expert uses per token, layers x experts (each layer's experts sorted hottest first);
 *   coverage     per layer, the share of uses the n hottest experts cover;
 *   budgets      predicted tokens/s of dsm-tune's plan against the DRAM budget and against the VRAM budget;
 *   strategies   a uniform placement (the same expert numbers in every layer, as --n-cpu-moe style rules do),
 *                dsm-tune's plan, and that plan with Belady's cache (the bound of any cache policy);
 *   validation   predicted against measured tokens/s (the JSON of dsm-tune validate), when given.
 * PNG files are screenshots of the SVG files by headless Chromium (Debian package chromium) when it is
 * installed; without it the page says so and only the SVG files are written. */
#include "tune.h"
#include "tune_cli.h"

#include "cache.h"
#include "error.h"
#include "json_util.h"

#include <cjson/cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define W 640
#define H 360

struct buf {
	char *s;
	size_t n, cap;
};

static void put(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (b->n + (size_t)n + 1 > b->cap) {
		size_t cap = (b->cap + (size_t)n + 1) * 2;
		char *s = realloc(b->s, cap);
		if (!s)
			return;
		b->s = s, b->cap = cap;
	}
	va_start(ap, fmt);
	vsnprintf(b->s + b->n, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->n += (size_t)n;
}

/* ---- a line or scatter chart with axes ---- */

struct series {
	const char *name, *color;
	const double *x, *y;
	int n;
	int dots;                 /* 1: points only */
};

static void chart(struct buf *b, const char *id, const char *title, const char *xlabel, const char *ylabel,
		  const struct series *s, int ns, int diagonal)
{
	double x0 = INFINITY, x1 = -INFINITY, y1 = 0;
	for (int k = 0; k < ns; k++)
		for (int i = 0; i < s[k].n; i++) {
			x0 = fmin(x0, s[k].x[i]), x1 = fmax(x1, s[k].x[i]), y1 = fmax(y1, s[k].y[i]);
		}
	if (!(x1 > x0))
		x0 = 0, x1 = x1 > 0 ? x1 : 1;
	if (diagonal)
		x0 = 0, x1 = y1 = fmax(x1, y1);
	y1 = y1 > 0 ? y1 * 1.1 : 1;
	double L = 70, R = W - 20, T = 40, B = H - 50;
#define PX(v) (L + ((v) - x0) / (x1 - x0) * (R - L))
#define PY(v) (B - (v) / y1 * (B - T))
	put(b, "<svg id=\"%s\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
	       "font-family=\"sans-serif\" font-size=\"12\"><rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
	    id, W, H, W, H);
	put(b, "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\">%s</text>\n", 10, title);
	put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>", L, B, R, B);
	put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"black\"/>\n", L, B, L, T);
	for (int i = 0; i <= 4; i++) {
		double xv = x0 + (x1 - x0) * i / 4, yv = y1 * i / 4;
		put(b, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">%.3g</text>", PX(xv), B + 16, xv);
		put(b, "<text x=\"%g\" y=\"%g\" text-anchor=\"end\">%.3g</text>", L - 5, PY(yv) + 4, yv);
		put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ddd\"/>\n", L, PY(yv), R, PY(yv));
	}
	put(b, "<text x=\"%g\" y=\"%d\" text-anchor=\"middle\">%s</text>", (L + R) / 2, H - 12, xlabel);
	put(b, "<text x=\"14\" y=\"%g\" text-anchor=\"middle\" transform=\"rotate(-90 14 %g)\">%s</text>\n", (T + B) / 2,
	    (T + B) / 2, ylabel);
	if (diagonal) {
		put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#888\" stroke-dasharray=\"4\"/>", PX(0), PY(0),
		    PX(x1), PY(y1 > x1 ? x1 : y1));
		for (int sgn = -1; sgn <= 1; sgn += 2) /* the +-15% band */
			put(b, "<line x1=\"%g\" y1=\"%g\" x2=\"%g\" y2=\"%g\" stroke=\"#ccc\" stroke-dasharray=\"2\"/>", PX(0),
			    PY(0), PX(x1 / (1 + 0.15 * sgn)), PY(x1 > y1 * (1 + 0.15 * sgn) ? y1 : x1));
	}
	for (int k = 0; k < ns; k++) {
		if (s[k].dots) {
			for (int i = 0; i < s[k].n; i++)
				put(b, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"4\" fill=\"%s\"/>", PX(s[k].x[i]), PY(s[k].y[i]), s[k].color);
		} else {
			put(b, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"%s\" points=\"", s[k].color,
			    ns > 8 ? "1" : "2");
			for (int i = 0; i < s[k].n; i++)
				put(b, "%.1f,%.1f ", PX(s[k].x[i]), PY(s[k].y[i]));
			put(b, "\"/>\n");
		}
		if (s[k].name && ns <= 8)
			put(b, "<text x=\"%g\" y=\"%d\" fill=\"%s\">%s</text>\n", R - 200, 50 + 16 * k, s[k].color, s[k].name);
	}
	put(b, "</svg>\n");
#undef PX
#undef PY
}

static void heatmap(struct buf *b, const struct tune_model *m, const double *pop, const int *order)
{
	const struct dsm_moe_shape *s = &m->shape;
	int nl = s->n_layers - s->first_moe, E = s->n_experts;
	double L = 70, R = W - 20, T = 40, B = H - 50, cw = (R - L) / E, ch = (B - T) / nl, mx = 0;
	for (int i = s->first_moe * E; i < s->n_layers * E; i++)
		mx = fmax(mx, pop[i]);
	put(b, "<svg id=\"popularity\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
	       "font-family=\"sans-serif\" font-size=\"12\"><rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
	    W, H, W, H);
	put(b, "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Expert popularity: uses per token "
	       "(each layer's experts hottest first; darkest %.3g)</text>\n", mx);
	for (int l = s->first_moe; l < s->n_layers; l++)
		for (int i = 0; i < E; i++) {
			double v = mx > 0 ? pop[(size_t)l * E + order[(size_t)l * E + i]] / mx : 0;
			int c = (int)(255 * (1 - sqrt(v)));
			put(b, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" fill=\"rgb(%d,%d,255)\"/>", L + i * cw,
			    T + (l - s->first_moe) * ch, cw + 0.3, ch + 0.3, c, c);
		}
	put(b, "\n<text x=\"%g\" y=\"%d\" text-anchor=\"middle\">expert rank in its layer (0 = hottest) of %d</text>",
	    (L + R) / 2, H - 12, E);
	put(b, "<text x=\"14\" y=\"%g\" text-anchor=\"middle\" transform=\"rotate(-90 14 %g)\">MoE layer %d (top) to %d</text>\n",
	    (T + B) / 2, (T + B) / 2, s->first_moe, s->n_layers - 1);
	put(b, "</svg>\n");
}

/* The DRAM and VRAM budget sweeps and the strategies, each point a plan from tune_plan simulated on trace. */
static int predict(const struct tune_model *m, const struct tune_hw *hw, const struct tune_trace *t, uint64_t dram,
		   uint64_t vram, int batch, double *tps)
{
	struct tune_plan_opts o = { .dram_budget = dram, .vram_budget = vram, .batch = batch, .trace = t };
	struct dsm_plan *p;
	struct tune_sim_result r;
	int rc = tune_plan(&p, m, hw, &o, &r);
	if (rc < 0)
		return rc;
	*tps = r.tokens_per_second;
	tune_sim_result_free(&r);
	dsm_plan_free(p);
	return 0;
}

static int write_file(const char *dir, const char *name, const char *text, size_t n)
{
	char path[2048];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	FILE *f = fopen(path, "w");
	if (!f || fwrite(text, 1, n, f) != n || fclose(f) != 0) {
		if (f)
			fclose(f);
		return dsm_fail(DSM_EIO, "%s: cannot write", path);
	}
	return 0;
}

/* PNG of one SVG file by headless Chromium; 0 when written. */
static int png_of(const char *dir, const char *name)
{
	char cmd[8192];
	snprintf(cmd, sizeof cmd,
		 "cd '%s' && chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=%d,%d "
		 "--screenshot='%s.png' 'file://'\"$(pwd)\"'/%s.svg' > /dev/null 2>&1",
		 dir, W, H, name, name);
	return system(cmd) == 0 ? 0 : -1;
}

int tune_report_main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "out", required_argument, NULL, 'o' }, { "model", required_argument, NULL, 'm' },
		{ "hw", required_argument, NULL, 'w' }, { "trace", required_argument, NULL, 't' },
		{ "validation", required_argument, NULL, 'v' }, { "batch", required_argument, NULL, 'b' },
		{ "no-png", no_argument, NULL, 'n' }, { "help", no_argument, NULL, 'h' }, { NULL, 0, NULL, 0 },
	};
	const char *out = NULL, *model = NULL, *hw_path = NULL, *trace_path = NULL, *val_path = NULL;
	int batch = 1, ch, want_png = 1;
	optind = 1;
	while ((ch = getopt_long(argc, argv, "o:m:h", opts, NULL)) != -1) {
		switch (ch) {
		case 'o': out = optarg; break;
		case 'm': model = optarg; break;
		case 'w': hw_path = optarg; break;
		case 't': trace_path = optarg; break;
		case 'v': val_path = optarg; break;
		case 'b': batch = atoi(optarg); break;
		case 'n': want_png = 0; break;
		case 'h':
			printf("usage: dsm-tune report --out DIR -m DIR|config.json --hw HW --trace TRACE [--validation FILE]\n"
			       "                       [--batch B] [--no-png]\n"
			       "\n"
			       "Writes DIR/index.html, one self-contained page (inline SVG, nothing fetched), and each figure as\n"
			       "DIR/NAME.svg and DIR/NAME.png: expert popularity (layers x experts), cumulative coverage per layer,\n"
			       "predicted tokens/s against the DRAM and the VRAM budget, strategies compared (uniform, dsm-tune's\n"
			       "plan, Belady's bound), and with --validation (dsm-tune validate --json) predicted against measured.\n"
			       "PNG files need headless Chromium (Debian package chromium).\n");
			return 0;
		default: return 2;
		}
	}
	if (!out || !model || !hw_path || !trace_path || optind < argc || batch < 1) {
		fprintf(stderr, "dsm-tune report: --out, -m, --hw and --trace are required (see --help)\n");
		return 2;
	}
	struct tune_model m;
	struct tune_hw hw;
	struct tune_trace t = { 0 };
	struct buf html = { 0 }, fig = { 0 };
	double *pop = NULL;
	int *order = NULL, status = 1;
	cJSON *val = NULL;
	if (tune_model_load(&m, model) < 0)
		return tune_fail("report");
	if (tune_hw_load(&hw, hw_path) < 0 || tune_trace_load(&t, trace_path, &m) < 0)
		goto fail;
	if (val_path) {
		char *text;
		size_t len;
		if (read_file(val_path, 16u << 20, &text, &len) < 0)
			goto fail;
		val = json_parse(text, len, val_path);
		free(text);
		if (!val || !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(val, "pairs"))) {
			if (val)
				dsm_fail(DSM_EARG, "%s: no \"pairs\" array (not the JSON of dsm-tune validate)", val_path);
			goto fail;
		}
	}
	const struct dsm_moe_shape *s = &m.shape;
	int E = s->n_experts, nl = s->n_layers - s->first_moe;
	pop = tune_trace_popularity(&t);
	order = malloc(sizeof(int) * (size_t)s->n_layers * (size_t)E);
	if (!pop || !order) {
		dsm_fail(DSM_ENOMEM, "out of memory");
		goto fail;
	}
	tune_order_experts(&m, pop, order);
	char b1[32], b2[32];
	put(&html, "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>dsm-tune report</title>"
		   "<style>body{font-family:sans-serif;max-width:700px;margin:20px auto}svg{display:block;margin:12px 0;"
		   "border:1px solid #ccc}td,th{padding:2px 8px;text-align:right}</style></head><body>\n");
	put(&html, "<h1 id=\"title\">dsm-tune report</h1>\n<p id=\"summary\">Model %s: %d layers (MoE from %d), %d experts "
		   "of %s, top %d; non-expert weights %s. Machine: %s. Trace: %s, %llu tokens. Batch %d.</p>\n",
	    m.source, s->n_layers, s->first_moe, E, tune_bytes(m.expert_bytes, b1, sizeof b1), s->top_k,
	    tune_bytes(m.non_expert_bytes, b2, sizeof b2), hw.name, trace_path, (unsigned long long)t.n, batch);

	static const char *const names[] = { "popularity", "coverage", "dram_budget", "vram_budget", "strategies",
					     "validation" };
	int made[6] = { 0 };
	/* 1. popularity */
	fig.n = 0;
	heatmap(&fig, &m, pop, order);
	made[0] = 1;
	put(&html, "%s", fig.s);
	if (write_file(out, "popularity.svg", fig.s, fig.n) < 0)
		goto fail;
	/* 2. coverage: cumulative share of uses covered by the n hottest experts of each layer */
	{
		double *x = malloc(sizeof(double) * (size_t)(E + 1)), *y = malloc(sizeof(double) * (size_t)(E + 1) * (size_t)nl);
		struct series *sr = calloc((size_t)nl, sizeof *sr);
		if (!x || !y || !sr) {
			free(x), free(y), free(sr);
			dsm_fail(DSM_ENOMEM, "out of memory");
			goto fail;
		}
		for (int i = 0; i <= E; i++)
			x[i] = i;
		for (int l = 0; l < nl; l++) {
			double tot = 0, c = 0, *yl = y + (size_t)l * (size_t)(E + 1);
			int L = l + s->first_moe;
			for (int e = 0; e < E; e++)
				tot += pop[(size_t)L * E + e];
			yl[0] = 0;
			for (int i = 0; i < E; i++)
				yl[i + 1] = tot > 0 ? (c += pop[(size_t)L * E + order[(size_t)L * E + i]]) / tot : 0;
			static const char *const colors[] = { "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b" };
			sr[l] = (struct series){ NULL, colors[l % 6], x, yl, E + 1, 0 };
		}
		fig.n = 0;
		chart(&fig, "coverage", "Cumulative coverage per layer (one line per MoE layer)",
		      "hottest experts kept", "share of expert uses", sr, nl, 0);
		free(x), free(y), free(sr);
		made[1] = 1;
		put(&html, "%s", fig.s);
		if (write_file(out, "coverage.svg", fig.s, fig.n) < 0)
			goto fail;
	}
	/* 3. budgets: from the non-expert weights and the streaming buffers to the whole model */
	uint64_t all = m.non_expert_bytes + (uint64_t)nl * (uint64_t)E * m.expert_bytes;
	uint64_t lo = m.non_expert_bytes + 2 * (uint64_t)s->top_k * m.slot_bytes + m.expert_bytes;
	uint64_t dram_total = 0;
	for (int j = 0; j < hw.n_nodes; j++)
		dram_total += hw.node[j].dram_bytes;
	{
		enum { N = 8 };
		double x[N], y[N];
		int n = 0;
		uint64_t hi = all < dram_total ? all : dram_total;
		for (int i = 0; i < N && hi > lo; i++) {
			uint64_t d = lo + (hi - lo) / (N - 1) * (uint64_t)i;
			if (predict(&m, &hw, &t, d, hw.n_gpus ? hw.gpu[0].memory_bytes / 10 * 9 : 0, batch, &y[n]) < 0)
				goto fail;
			x[n++] = (double)d / 1e9;
		}
		struct series sr = { "dsm-tune plan", "#1f77b4", x, y, n, 0 };
		fig.n = 0;
		chart(&fig, "dram_budget", "Predicted decode tokens/s against the DRAM budget", "DRAM budget (GB)",
		      "tokens/s", &sr, 1, 0);
		made[2] = 1;
		put(&html, "%s", fig.s);
		if (write_file(out, "dram_budget.svg", fig.s, fig.n) < 0)
			goto fail;
	}
	if (hw.n_gpus) {
		enum { N = 8 };
		double x[N], y[N];
		uint64_t dram = dram_total / 10 * 9 < all ? dram_total / 10 * 9 : all;
		for (int i = 0; i < N; i++) {
			uint64_t v = hw.gpu[0].memory_bytes / (N - 1) * (uint64_t)i;
			if (predict(&m, &hw, &t, dram, v ? v : 1, batch, &y[i]) < 0)
				goto fail;
			x[i] = (double)v / 1e9;
		}
		struct series sr = { "dsm-tune plan", "#d62728", x, y, N, 0 };
		fig.n = 0;
		chart(&fig, "vram_budget", "Predicted decode tokens/s against the VRAM budget", "VRAM budget (GB)",
		      "tokens/s", &sr, 1, 0);
		made[3] = 1;
		put(&html, "%s", fig.s);
		if (write_file(out, "vram_budget.svg", fig.s, fig.n) < 0)
			goto fail;
	} else {
		put(&html, "<p>No GPU in %s: no VRAM budget figure.</p>\n", hw_path);
	}
	/* 4. strategies at half the experts' bytes in DRAM */
	{
		uint64_t dram = m.non_expert_bytes + (all - m.non_expert_bytes) / 2;
		dram = dram > dram_total ? dram_total / 10 * 9 : dram;
		struct tune_plan_opts o = { .dram_budget = dram, .batch = batch, .trace = &t };
		struct dsm_plan *tuned = NULL, *uniform = NULL;
		struct tune_sim_result r;
		double v[3];
		if (tune_plan(&tuned, &m, &hw, &o, &r) < 0)
			goto fail;
		v[1] = r.tokens_per_second;
		tune_sim_result_free(&r);
		/* Uniform: the same experts (by number) of every layer resident, as many as the tuned plan holds. */
		uint64_t cnt[DSM_TIER_KINDS];
		dsm_plan_count(tuned, cnt);
		dsm_plan_uniform(&uniform, s, tuned->non_expert[DSM_KIND_ATTENTION], (struct dsm_tier){ DSM_TIER_NVME, 0 });
		uint64_t res = cnt[DSM_TIER_GPU] + cnt[DSM_TIER_DRAM], k = 0;
		for (int e = 0; e < E && k < res; e++)
			for (int l = s->first_moe; l < s->n_layers && k < res; l++, k++)
				uniform->expert[(size_t)l * E + e] = k < cnt[DSM_TIER_GPU] ? (struct dsm_tier){ DSM_TIER_GPU, 0 }
											 : (struct dsm_tier){ DSM_TIER_DRAM, 0 };
		uniform->cache_policy = DSM_CACHE_LRU;
		uniform->cache_bytes = tuned->cache_bytes;
		struct tune_sim_opts so = { .policy = -1, .batch = batch };
		if (tune_simulate(&m, uniform, &hw, &t, &so, &r) < 0)
			goto fail;
		v[0] = r.tokens_per_second;
		tune_sim_result_free(&r);
		so.policy = TUNE_BELADY;
		if (tune_simulate(&m, tuned, &hw, &t, &so, &r) < 0)
			goto fail;
		v[2] = fmax(r.tokens_per_second, v[1]);
		tune_sim_result_free(&r);
		dsm_plan_free(tuned);
		dsm_plan_free(uniform);
		static const char *const lab[3] = { "uniform (same experts every layer)", "dsm-tune plan",
						    "dsm-tune plan, Belady cache (bound)" };
		static const char *const col[3] = { "#999", "#1f77b4", "#2ca02c" };
		fig.n = 0;
		put(&fig, "<svg id=\"strategies\" xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
			  "font-family=\"sans-serif\" font-size=\"12\"><rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
		    W, H, W, H);
		put(&fig, "<text x=\"10\" y=\"22\" font-size=\"15\" font-weight=\"bold\">Strategies at a DRAM budget of %s "
			  "(predicted tokens/s)</text>\n", tune_bytes(dram, b1, sizeof b1));
		double mx = fmax(v[2], fmax(v[0], v[1])) * 1.15;
		for (int i = 0; i < 3; i++) {
			double w = mx > 0 ? v[i] / mx * (W - 300) : 0;
			put(&fig, "<rect x=\"250\" y=\"%d\" width=\"%.1f\" height=\"50\" fill=\"%s\"/>", 70 + 90 * i, w, col[i]);
			put(&fig, "<text x=\"240\" y=\"%d\" text-anchor=\"end\">%s</text>", 100 + 90 * i, lab[i]);
			put(&fig, "<text id=\"strategy%d\" x=\"%.1f\" y=\"%d\">%.2f</text>\n", i, 255 + w, 100 + 90 * i, v[i]);
		}
		put(&fig, "</svg>\n");
		made[4] = 1;
		put(&html, "%s", fig.s);
		if (write_file(out, "strategies.svg", fig.s, fig.n) < 0)
			goto fail;
	}
	/* 5. validation */
	if (val) {
		const cJSON *pairs = cJSON_GetObjectItemCaseSensitive(val, "pairs"), *p;
		int n = cJSON_GetArraySize(pairs), k = 0;
		double *x = calloc((size_t)n + 1, sizeof(double)), *y = calloc((size_t)n + 1, sizeof(double));
		put(&html, "<table id=\"validation-table\"><tr><th>case</th><th>predicted</th><th>measured</th><th>error</th></tr>\n");
		cJSON_ArrayForEach(p, pairs) {
			const cJSON *c = cJSON_GetObjectItemCaseSensitive(p, "case");
			double pr = 0, me = 0;
			if (json_get_double(p, "predicted_tokens_per_second", &pr, DSM_EARG, val_path) != 0 ||
			    json_get_double(p, "measured_tokens_per_second", &me, DSM_EARG, val_path) != 0)
				continue;
			x[k] = me, y[k++] = pr;
			put(&html, "<tr><td style=\"text-align:left\">%s</td><td>%.2f</td><td>%.2f</td><td>%+.1f%%</td></tr>\n",
			    cJSON_IsString(c) ? c->valuestring : "?", pr, me, me > 0 ? 100 * (pr - me) / me : 0);
		}
		put(&html, "</table>\n");
		struct series sr = { "plans", "#1f77b4", x, y, k, 1 };
		fig.n = 0;
		chart(&fig, "validation", "Predicted against measured decode tokens/s (dashed: equal; dotted: 15%)",
		      "measured tokens/s", "predicted tokens/s", &sr, 1, 1);
		free(x), free(y);
		made[5] = 1;
		put(&html, "%s", fig.s);
		if (write_file(out, "validation.svg", fig.s, fig.n) < 0)
			goto fail;
	}
	int pngs = 0, tried = 0;
	for (int i = 0; i < 6 && want_png; i++)
		if (made[i]) {
			tried++;
			pngs += png_of(out, names[i]) == 0;
		}
	if (want_png && pngs < tried)
		put(&html, "<p id=\"png-note\">PNG figures: %d of %d written (they need headless Chromium, Debian package "
			   "chromium).</p>\n", pngs, tried);
	put(&html, "</body></html>\n");
	if (write_file(out, "index.html", html.s, html.n) < 0)
		goto fail;
	printf("dsm-tune report: %s/index.html, %d figures, %d PNG\n", out, made[0] + made[1] + made[2] + made[3] + made[4] + made[5],
	       pngs);
	status = 0;
	goto out;
fail:
	tune_fail("report");
out:
	cJSON_Delete(val);
	free(html.s), free(fig.s), free(pop), free(order);
	tune_trace_free(&t);
	tune_model_free(&m);
	return status;
}
