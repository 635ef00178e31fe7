/* CUDA launchers for FP8 block-scaled dequantization. Pointers are device memory; stream is a
 * cudaStream_t (NULL: the default stream). Return 0 or DSM_EIO/DSM_EARG with a message. */
#ifndef DSM_CUDA_FP8_DEQUANT_H
#define DSM_CUDA_FP8_DEQUANT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

int dsm_cuda_fp8_dequant_f32(float *out, const uint8_t *w, const float *scale, int rows, int cols, void *stream);
int dsm_cuda_fp8_dequant_bf16(uint16_t *out, const uint8_t *w, const float *scale, int rows, int cols,
			      void *stream);
/* Number of usable CUDA devices (0 when there is no driver or no device). */
int dsm_cuda_device_count(void);

#ifdef __cplusplus
}
#endif

#endif
