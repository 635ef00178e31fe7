/* libFuzzer target: the config.json parser and validator. */
#include "config.h"
#include "error.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct dsm_config c;
	dsm_config_parse(&c, (const char *)data, size, "config.json");
	return 0;
}
