/* libFuzzer target: dsm-tune's hardware file parser (tools/tune_hw.c). */
#include "error.h"
#include "tune.h"

#include <stdint.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tune_hw hw;
	tune_hw_parse(&hw, (const char *)data, size, "hw.json");
	return 0;
}
