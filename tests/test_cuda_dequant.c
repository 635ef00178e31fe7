/* The CUDA FP8 dequant kernel against the CPU conversion, on random codes (every code, NaN included) and
 * ragged shapes. Skips (77) without a CUDA device. */
#include "dtype.h"
#include "error.h"
#include "fp8_dequant.h"
#include "test_util.h"

#include <cuda_runtime.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

static void check_shape(int rows, int cols, uint64_t seed)
{
	size_t n = (size_t)rows * cols, sr = (size_t)(rows + 127) / 128, sc = (size_t)(cols + 127) / 128;
	uint8_t *w = malloc(n);
	float *scale = malloc(sr * sc * sizeof *scale), *got = malloc(n * sizeof *got);
	uint16_t *got16 = malloc(n * sizeof *got16);
	for (size_t i = 0; i < n; i++) {
		seed = seed * 6364136223846793005ull + 1442695040888963407ull;
		w[i] = (uint8_t)(seed >> 56);
	}
	for (size_t i = 0; i < sr * sc; i++)
		scale[i] = 0.5f + (float)i / (float)(sr * sc);
	uint8_t *dw;
	float *ds, *dout;
	uint16_t *dout16;
	cudaMalloc((void **)&dw, n);
	cudaMalloc((void **)&ds, sr * sc * sizeof(float));
	cudaMalloc((void **)&dout, n * sizeof(float));
	cudaMalloc((void **)&dout16, n * sizeof(uint16_t));
	cudaMemcpy(dw, w, n, cudaMemcpyHostToDevice);
	cudaMemcpy(ds, scale, sr * sc * sizeof(float), cudaMemcpyHostToDevice);
	CHECK(dsm_cuda_fp8_dequant_f32(dout, dw, ds, rows, cols, NULL) == 0, "launch f32: %s", dsm_errmsg());
	CHECK(dsm_cuda_fp8_dequant_bf16(dout16, dw, ds, rows, cols, NULL) == 0, "launch bf16: %s", dsm_errmsg());
	cudaMemcpy(got, dout, n * sizeof(float), cudaMemcpyDeviceToHost);
	cudaMemcpy(got16, dout16, n * sizeof(uint16_t), cudaMemcpyDeviceToHost);
	size_t bad = 0, bad16 = 0;
	for (int i = 0; i < rows; i++)
		for (int j = 0; j < cols; j++) {
			size_t k = (size_t)i * cols + j;
			float want = dsm_fp8_to_f32(w[k]) * scale[(size_t)(i / 128) * sc + j / 128];
			if (isnan(want) ? !isnan(got[k]) : got[k] != want)
				bad++;
			uint16_t want16 = dsm_f32_to_bf16(want);
			if (isnan(want) ? !isnan(dsm_bf16_to_f32(got16[k])) : got16[k] != want16)
				bad16++;
		}
	CHECK(bad == 0 && bad16 == 0, "[%d, %d]: %zu f32 and %zu bf16 elements differ", rows, cols, bad, bad16);
	cudaFree(dw);
	cudaFree(ds);
	cudaFree(dout);
	cudaFree(dout16);
	free(w);
	free(scale);
	free(got);
	free(got16);
}

int main(void)
{
	if (dsm_cuda_device_count() == 0) {
		printf("SKIP: no CUDA device\n");
		return 77;
	}
	check_shape(1, 1, 1);
	check_shape(576, 7168, 2);   /* kv_a_proj_with_mqa: 576 rows, a ragged row block */
	check_shape(130, 300, 3);
	check_shape(2048, 7168, 4);
	return TEST_EXIT();
}
