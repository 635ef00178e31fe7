/* libFuzzer target: the safetensors header parser. Input: the first 8 bytes give the data-area size,
 * the rest is the header JSON text. */
#include "error.h"
#include "safetensors.h"

#include <stdint.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 8)
		return 0;
	uint64_t data_size;
	memcpy(&data_size, data, 8);
	data_size %= (1ull << 40);
	struct st_header h;
	if (st_parse_header(&h, (const char *)data + 8, size - 8, data_size, "fuzz") == 0)
		st_header_free(&h);
	return 0;
}
