#include "tune_cli.h"
#include <stdio.h>
int tune_validate_main(int argc, char **argv)
{
	(void)argc, (void)argv;
	fprintf(stderr, "dsm-tune validate: not built yet\n");
	return 1;
}
