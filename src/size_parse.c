#include "size_parse.h"

#include <ctype.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

int parse_size(const char *text, uint64_t *out)
{
	char *end;
	double v = strtod(text, &end);
	if (end == text || !(v >= 0) || !isfinite(v))
		return -1;
	double mult = 1;
	switch (toupper((unsigned char)*end)) {
	case 'K': mult = 1024.0; end++; break;
	case 'M': mult = 1024.0 * 1024; end++; break;
	case 'G': mult = 1024.0 * 1024 * 1024; end++; break;
	case 'T': mult = 1024.0 * 1024 * 1024 * 1024; end++; break;
	default: break;
	}
	if (strcasecmp(end, "iB") == 0 || strcasecmp(end, "B") == 0)
		end += strlen(end);
	if (*end)
		return -1;
	v *= mult;
	if (v >= 1.8e19)
		return -1;
	*out = (uint64_t)v;
	return 0;
}
