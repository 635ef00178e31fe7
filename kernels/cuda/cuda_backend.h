/* The cuda backend: every op of kernels/backend.h on one NVIDIA GPU (docs/cuda.md). */
#ifndef DSM_CUDA_BACKEND_H
#define DSM_CUDA_BACKEND_H

#include "backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Creates the cuda backend on device o->device (called by dsm_backend_create for "cuda"). Returns 0, or
 * DSM_EUNSUPPORTED (no driver or no such device) / DSM_ENOMEM / DSM_EIO with a message. */
int dsm_cuda_backend_create(struct dsm_backend **out, const struct dsm_backend_options *o);

#ifdef __cplusplus
}
#endif

#endif
