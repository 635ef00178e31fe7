/* Writing NumPy .npy files (format version 1.0): a 2-D little-endian float32 array [rows, cols] written
 * row by row, the row count fixed up when the file is closed. */
#ifndef DSM_NPY_H
#define DSM_NPY_H

#include <stdint.h>
#include <stdio.h>

struct dsm_npy_writer {
	FILE *f;
	char *path;
	int64_t cols, rows;
};

/* Creates path. Returns 0 or DSM_EIO / DSM_ENOMEM with a message naming the file. */
int dsm_npy_open(struct dsm_npy_writer *w, const char *path, int64_t cols);
/* Appends n rows of cols floats. */
int dsm_npy_write_rows(struct dsm_npy_writer *w, const float *rows, int64_t n);
/* Writes the final shape into the header and closes the file. Accepts a writer that failed to open. */
int dsm_npy_close(struct dsm_npy_writer *w);

#endif
