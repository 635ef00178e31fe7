/* Element types of checkpoint tensors and exact conversions between them. */
#ifndef DSM_DTYPE_H
#define DSM_DTYPE_H

#include <stddef.h>
#include <stdint.h>

enum dsm_dtype {
	DSM_DTYPE_INVALID = 0,
	DSM_F8_E4M3, /* torch float8_e4m3fn: bias 7, subnormals, 0x7F/0xFF NaN, no inf, max 448 */
	DSM_BF16,
	DSM_F16,
	DSM_F32,
	DSM_F64,
	DSM_F8_E5M2, DSM_F8_E8M0,
	DSM_I8, DSM_U8, DSM_I16, DSM_U16, DSM_I32, DSM_U32, DSM_I64, DSM_U64, DSM_BOOL,
	DSM_DTYPE_COUNT
};

/* Bytes per element, 0 for DSM_DTYPE_INVALID. */
size_t dsm_dtype_size(enum dsm_dtype t);
/* The safetensors spelling ("F8_E4M3", "BF16", ...). */
const char *dsm_dtype_name(enum dsm_dtype t);
/* From the safetensors spelling; DSM_DTYPE_INVALID when unknown. */
enum dsm_dtype dsm_dtype_parse(const char *name);

/* FP8 E4M3 -> float, exact (every code is representable). NaN codes give a quiet NaN. */
float dsm_fp8_to_f32(uint8_t code);
/* float -> FP8 E4M3, round to nearest even, saturating to +-448; NaN -> 0x7F. */
uint8_t dsm_f32_to_fp8(float x);
/* The 256-entry table behind dsm_fp8_to_f32 (for vector kernels). */
extern const float dsm_fp8_table[256];

static inline float dsm_bf16_to_f32(uint16_t b)
{
	union { uint32_t u; float f; } v = { .u = (uint32_t)b << 16 };
	return v.f;
}

/* float -> BF16, round to nearest even; NaN stays NaN (quiet). */
static inline uint16_t dsm_f32_to_bf16(float x)
{
	union { float f; uint32_t u; } v = { .f = x };
	if ((v.u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((v.u >> 16) | 0x0040u);
	return (uint16_t)((v.u + 0x7fffu + ((v.u >> 16) & 1u)) >> 16);
}

/* Converts n elements of type t at src to float. */
void dsm_convert_to_f32(float *dst, const void *src, enum dsm_dtype t, size_t n);

#endif
