/* Small helpers over cJSON for reading outside input with checks (STYLE.md habit 4: JSON numbers are
 * checked to be integral and in range before they become sizes; cJSON's valueint saturates). */
#ifndef DSM_JSON_UTIL_H
#define DSM_JSON_UTIL_H

#include <cjson/cJSON.h>
#include <stddef.h>
#include <stdint.h>

/* Reads a whole file (at most max_bytes) into a NUL-terminated buffer the caller frees.
 * Returns 0, or DSM_EIO / DSM_ENOMEM / DSM_ETRUNCATED (too large) with a message naming the file. */
int read_file(const char *path, size_t max_bytes, char **data, size_t *len);

/* Writes text to path through a temporary file, fsync and a rename, so that a kill never leaves half a
 * file; a newline ends it when text has one missing. 0, or DSM_EIO / DSM_ENOMEM naming the file. */
int write_file_atomic(const char *path, const char *text);

/* 1 if the len bytes are valid UTF-8 (no overlongs, no surrogates, nothing above U+10FFFF). On failure
 * *bad_offset is the byte offset of the first invalid sequence. */
int utf8_valid(const char *s, size_t len, size_t *bad_offset);

/* Parses JSON text that must be valid UTF-8. Returns NULL and sets a DSM_EJSON message naming `what`
 * (a file name) and the byte offset of the problem. */
cJSON *json_parse(const char *text, size_t len, const char *what);

/* A non-negative integer member `key` of obj, exact and at most max. Returns 0 on success; -1 when
 * absent (nothing set); DSM_ECONFIG-style error code `err` with a message naming what/key otherwise. */
int json_get_u64(const cJSON *obj, const char *key, uint64_t max, uint64_t *out, int err, const char *what);
/* Any JSON number as double; same return convention. */
int json_get_double(const cJSON *obj, const char *key, double *out, int err, const char *what);
/* A boolean; same return convention. */
int json_get_bool(const cJSON *obj, const char *key, int *out, int err, const char *what);
/* An integral JSON number value (not a member) as uint64 <= max; 0 or -1. */
int json_number_to_u64(const cJSON *item, uint64_t max, uint64_t *out);

#endif
