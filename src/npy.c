#include "npy.h"

#include "error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The header is padded to a fixed 128 bytes so that it can be rewritten in place with the final row
 * count (any count up to 20 digits fits). */
#define HEADER_BYTES 128

static int write_header(struct dsm_npy_writer *w)
{
	char h[HEADER_BYTES];
	memset(h, ' ', sizeof h);
	memcpy(h, "\x93NUMPY\x01\x00", 8);
	uint16_t len = HEADER_BYTES - 10;
	h[8] = (char)(len & 0xff);
	h[9] = (char)(len >> 8);
	char dict[HEADER_BYTES];
	int n = snprintf(dict, sizeof dict, "{'descr': '<f4', 'fortran_order': False, 'shape': (%lld, %lld), }",
			 (long long)w->rows, (long long)w->cols);
	if (n < 0 || n > HEADER_BYTES - 11)
		return dsm_fail(DSM_EARG, "%s: shape too large for the header", w->path);
	memcpy(h + 10, dict, (size_t)n);
	h[HEADER_BYTES - 1] = '\n';
	if (fseek(w->f, 0, SEEK_SET) != 0 || fwrite(h, 1, sizeof h, w->f) != sizeof h)
		return dsm_fail(DSM_EIO, "%s: %s", w->path, strerror(errno));
	return 0;
}

int dsm_npy_open(struct dsm_npy_writer *w, const char *path, int64_t cols)
{
	memset(w, 0, sizeof *w);
	w->path = strdup(path);
	if (!w->path)
		return dsm_fail(DSM_ENOMEM, "out of memory");
	w->cols = cols;
	w->f = fopen(path, "wb");
	if (!w->f)
		return dsm_fail(DSM_EIO, "%s: %s", path, strerror(errno));
	return write_header(w);
}

int dsm_npy_write_rows(struct dsm_npy_writer *w, const float *rows, int64_t n)
{
	size_t count = (size_t)n * (size_t)w->cols;
	if (fseek(w->f, 0, SEEK_END) != 0 || fwrite(rows, sizeof(float), count, w->f) != count)
		return dsm_fail(DSM_EIO, "%s: %s", w->path, strerror(errno));
	w->rows += n;
	return 0;
}

int dsm_npy_close(struct dsm_npy_writer *w)
{
	int rc = 0;
	if (w->f) {
		rc = write_header(w);
		if (fclose(w->f) != 0 && rc == 0)
			rc = dsm_fail(DSM_EIO, "%s: %s", w->path, strerror(errno));
	}
	free(w->path);
	memset(w, 0, sizeof *w);
	return rc;
}
