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

void bench_print_notes(const char *who, const char *notes)
{
	while (*notes) {
		const char *nl = strchr(notes, '\n');
		int len = nl ? (int)(nl - notes) : (int)strlen(notes);
		fprintf(stderr, "dsm-bench %s: %.*s\n", who, len, notes);
		notes += len + (nl != NULL);
	}
}
