/* Byte sizes on the command line: "24G", "512M", "1.5T", "4096" (powers of 1024; a trailing B or iB ok). */
#ifndef DSM_SIZE_PARSE_H
#define DSM_SIZE_PARSE_H

#include <stdint.h>

/* Returns 0 and sets *out, or -1 when text is not a size. */
int parse_size(const char *text, uint64_t *out);

#endif
