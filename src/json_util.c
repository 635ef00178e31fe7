#include "json_util.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int read_file(const char *path, size_t max_bytes, char **data, size_t *len)
{
	*data = NULL;
	*len = 0;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* never block on a FIFO */
	if (fd < 0)
		return dsm_fail(errno == ENOENT ? DSM_EMISSING : DSM_EIO, "%s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return dsm_fail(DSM_EIO, "%s: not a regular file", path);
	}
	if ((uint64_t)st.st_size > max_bytes) {
		close(fd);
		return dsm_fail(DSM_ETRUNCATED, "%s: %lld bytes, more than the limit of %zu", path,
				(long long)st.st_size, max_bytes);
	}
	size_t size = (size_t)st.st_size;
	char *buf = malloc(size + 1);
	if (!buf) {
		close(fd);
		return dsm_fail(DSM_ENOMEM, "%s: out of memory for %zu bytes", path, size);
	}
	size_t got = 0;
	while (got < size) {
		ssize_t r = read(fd, buf + got, size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			int e = r < 0 ? errno : 0;
			free(buf);
			close(fd);
			return dsm_fail(DSM_EIO, "%s: read failed at byte %zu: %s", path, got,
					e ? strerror(e) : "file shrank while reading");
		}
		got += (size_t)r;
	}
	close(fd);
	buf[size] = 0;
	*data = buf;
	*len = size;
	return 0;
}

int utf8_valid(const char *str, size_t len, size_t *bad_offset)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t i = 0;
	while (i < len) {
		unsigned c = s[i];
		size_t n;
		uint32_t cp, min;
		if (c < 0x80) {
			i++;
			continue;
		} else if ((c & 0xe0) == 0xc0) {
			n = 2, cp = c & 0x1f, min = 0x80;
		} else if ((c & 0xf0) == 0xe0) {
			n = 3, cp = c & 0x0f, min = 0x800;
		} else if ((c & 0xf8) == 0xf0) {
			n = 4, cp = c & 0x07, min = 0x10000;
		} else {
			goto bad;
		}
		if (len - i < n)
			goto bad;
		for (size_t k = 1; k < n; k++) {
			if ((s[i + k] & 0xc0) != 0x80)
				goto bad;
			cp = (cp << 6) | (s[i + k] & 0x3f);
		}
		if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
			goto bad;
		i += n;
	}
	return 1;
bad:
	if (bad_offset)
		*bad_offset = i;
	return 0;
}

cJSON *json_parse(const char *text, size_t len, const char *what)
{
	size_t bad;
	if (!utf8_valid(text, len, &bad)) {
		dsm_fail(DSM_EJSON, "%s: invalid UTF-8 at byte %zu", what, bad);
		return NULL;
	}
	const char *end = NULL;
	cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
	if (!root) {
		size_t at = end ? (size_t)(end - text) : 0;
		dsm_fail(DSM_EJSON, "%s: not valid JSON (error near byte %zu)", what, at);
		return NULL;
	}
	/* Only white space may follow the document. */
	for (const char *p = end; p && p < text + len; p++) {
		if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != 0) {
			cJSON_Delete(root);
			dsm_fail(DSM_EJSON, "%s: text after the JSON document at byte %zu", what, (size_t)(p - text));
			return NULL;
		}
	}
	return root;
}

int json_number_to_u64(const cJSON *item, uint64_t max, uint64_t *out)
{
	if (!cJSON_IsNumber(item))
		return -1;
	double v = item->valuedouble;
	/* Doubles are exact integers up to 2^53; larger sizes are not representable exactly in JSON numbers
	 * parsed by cJSON, so refuse them rather than round. */
	if (!(v >= 0) || v != floor(v) || v > 9007199254740992.0 || v > (double)max)
		return -1;
	*out = (uint64_t)v;
	return 0;
}

int json_get_u64(const cJSON *obj, const char *key, uint64_t max, uint64_t *out, int err, const char *what)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!item || cJSON_IsNull(item))
		return -1;
	if (json_number_to_u64(item, max, out) != 0)
		return dsm_fail(err, "%s: key '%s' must be an integer in [0, %llu]", what, key,
				(unsigned long long)max);
	return 0;
}

int json_get_double(const cJSON *obj, const char *key, double *out, int err, const char *what)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!item || cJSON_IsNull(item))
		return -1;
	if (!cJSON_IsNumber(item) || !isfinite(item->valuedouble))
		return dsm_fail(err, "%s: key '%s' must be a finite number", what, key);
	*out = item->valuedouble;
	return 0;
}

int json_get_bool(const cJSON *obj, const char *key, int *out, int err, const char *what)
{
	const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
	if (!item || cJSON_IsNull(item))
		return -1;
	if (!cJSON_IsBool(item))
		return dsm_fail(err, "%s: key '%s' must be true or false", what, key);
	*out = cJSON_IsTrue(item);
	return 0;
}

int write_file_atomic(const char *path, const char *text)
{
	size_t n = strlen(path) + 32, len = strlen(text);
	char *tmp = malloc(n);
	if (!tmp)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	snprintf(tmp, n, "%s.tmp.%ld", path, (long)getpid());
	FILE *f = fopen(tmp, "w");
	int rc = 0;
	if (!f) {
		rc = dsm_fail(DSM_EIO, "%s: %s", tmp, strerror(errno));
	} else {
		int bad = fputs(text, f) < 0 || (len && text[len - 1] != '\n' && fputc('\n', f) < 0);
		bad |= fflush(f) != 0 || fsync(fileno(f)) != 0;
		bad |= fclose(f) != 0;
		if (bad || rename(tmp, path) != 0) {
			rc = dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
			unlink(tmp);
		}
	}
	free(tmp);
	return rc;
}
