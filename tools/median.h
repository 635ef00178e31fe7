/* The median of a benchmark's repeated measurements, and their range. */
#ifndef DSM_MEDIAN_H
#define DSM_MEDIAN_H

#include <stddef.h>

/* The median of v[0 .. n) (n >= 1), and optionally the smallest and largest value; v is left as it is.
 * 0 (and 0 in lo, hi) when out of memory. */
double median(const double *v, size_t n, double *lo, double *hi);

#endif
