/* SHA-256 (FIPS 180-4), to verify downloaded files. */
#ifndef DSM_SHA256_H
#define DSM_SHA256_H

#include <stddef.h>

/* Hex digest (64 chars + NUL) of len bytes. */
void sha256_hex(const void *data, size_t len, char hex[65]);

#endif
