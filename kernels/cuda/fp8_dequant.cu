// FP8 E4M3 block-scaled weights -> F32 or BF16, on the GPU.
// W_real[i][j] = fp8(W[i][j]) * scale_inv[i/128][j/128] (docs MODEL.md section 2).
#include "cuda_check.h"
#include "fp8_dequant.h"

#include <cuda_bf16.h>
#include <stdint.h>

// Exact E4M3 decode from the bit fields (subnormals, NaN at 0x7F/0xFF).
__device__ __forceinline__ float fp8_e4m3_to_float(uint8_t code)
{
	int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
	float v;
	if (e == 15 && m == 7)
		v = __int_as_float(0x7fc00000);
	else if (e == 0)
		v = ldexpf((float)m, -9);
	else
		v = ldexpf((float)(8 + m), e - 10);
	return s ? -v : v;
}

// One thread per element; each block of threads covers a row segment, so scale loads are shared in L1.
template <typename T>
__global__ void dequant_kernel(T *out,              // [rows, cols]
			       const uint8_t *w,     // [rows, cols] FP8 codes
			       const float *scale,   // [ceil(rows/128), ceil(cols/128)]
			       int rows, int cols)
{
	int j = blockIdx.x * blockDim.x + threadIdx.x;
	int i = blockIdx.y;
	if (i >= rows || j >= cols)
		return;
	int scale_cols = (cols + 127) / 128;
	float v = fp8_e4m3_to_float(w[(size_t)i * cols + j]) * scale[(size_t)(i / 128) * scale_cols + j / 128];
	if constexpr (sizeof(T) == 4)
		out[(size_t)i * cols + j] = v;
	else
		out[(size_t)i * cols + j] = __float2bfloat16_rn(v);
}

template <typename T>
static int launch(T *out, const uint8_t *w, const float *scale, int rows, int cols, cudaStream_t stream)
{
	if (rows <= 0 || cols <= 0)
		return 0;
	if (rows > 65535 * 64)
		return dsm_fail(DSM_EARG, "fp8 dequant: %d rows is more than one launch covers", rows);
	dim3 block(256), grid((unsigned)((cols + 255) / 256), (unsigned)rows);
	dequant_kernel<T><<<grid, block, 0, stream>>>(out, w, scale, rows, cols);
	CUDA_CHECK(cudaGetLastError());
	return 0;
}

extern "C" int dsm_cuda_fp8_dequant_f32(float *out, const uint8_t *w, const float *scale, int rows, int cols,
					void *stream)
{
	return launch(out, w, scale, rows, cols, (cudaStream_t)stream);
}

extern "C" int dsm_cuda_fp8_dequant_bf16(uint16_t *out, const uint8_t *w, const float *scale, int rows, int cols,
					 void *stream)
{
	return launch(reinterpret_cast<__nv_bfloat16 *>(out), w, scale, rows, cols, (cudaStream_t)stream);
}

extern "C" int dsm_cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess) {
		cudaGetLastError();  // clear the error: no device is not a failure
		return 0;
	}
	return n;
}
