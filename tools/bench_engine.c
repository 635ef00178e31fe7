#include "bench_engine.h"

#include "error.h"

#include <string.h>

int bench_getopt(int argc, char **argv, const struct option *opts, struct dsm_engine_options *eo, const char *who)
{
	int ch;
	while ((ch = getopt_long(argc, argv, "t:h", opts, NULL)) != -1) {
		int e = dsm_engine_flag(eo, ch, optarg);
		if (e == 0)
			return ch;
		if (e < 0) {
			fprintf(stderr, "dsm-bench %s: %s\n", who, dsm_errmsg());
			return '?';
		}
	}
	return -1;
}

int bench_sizes(const char *dir, const struct dsm_engine_options *eo, struct dsm_plan_sizes *sz,
		struct dsm_moe_shape *shape)
{
	struct dsm_engine_options o;
	dsm_engine_options_default(&o);
	o.model = eo->model;
	o.offload = 0;
	o.no_populate = 1;
	struct dsm_engine *e;
	int rc = dsm_engine_open(&e, dir, &o);
	if (rc < 0)
		return rc;
	const struct dsm_store_model *m = dsm_engine_model(e)->store_model;
	dsm_plan_sizes(m, sz);
	*shape = m->shape;
	dsm_engine_close(e);
	return 0;
}

void bench_print_notes(const char *who, const char *notes)
{
	while (*notes) {
		const char *nl = strchr(notes, '\n');
		int len = nl ? (int)(nl - notes) : (int)strlen(notes);
		fprintf(stderr, "dsm-bench %s: %.*s\n", who, len, notes);
		notes += len + (nl != NULL);
	}
}
