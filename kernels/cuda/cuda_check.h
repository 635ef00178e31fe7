/* CUDA_CHECK: a failing CUDA call reports the statement, function, file and line (to the error buffer)
 * and makes the enclosing function return DSM_EIO. */
#ifndef DSM_CUDA_CHECK_H
#define DSM_CUDA_CHECK_H

#include <cuda_runtime.h>

extern "C" {
#include "error.h"
}

#define CUDA_CHECK(stmt) do { \
	cudaError_t err_ = (stmt); \
	if (err_ != cudaSuccess) \
		return dsm_fail(DSM_EIO, "CUDA error %s in %s (%s:%d): %s", cudaGetErrorName(err_), #stmt, \
				__FILE__, __LINE__, cudaGetErrorString(err_)); \
} while (0)

#endif
