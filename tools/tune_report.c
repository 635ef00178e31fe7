#include "tune_cli.h"
#include <stdio.h>
int tune_report_main(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "dsm-tune report: not built yet\n");
	return 1;
}
