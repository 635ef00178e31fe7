#include "dtype.h"

#include <math.h>
#include <string.h>

static const struct { const char *name; size_t size; } dtypes[DSM_DTYPE_COUNT] = {
	[DSM_DTYPE_INVALID] = { "INVALID", 0 },
	[DSM_F8_E4M3] = { "F8_E4M3", 1 },
	[DSM_BF16] = { "BF16", 2 },
	[DSM_F16] = { "F16", 2 },
	[DSM_F32] = { "F32", 4 },
	[DSM_F64] = { "F64", 8 },
	[DSM_F8_E5M2] = { "F8_E5M2", 1 },
	[DSM_F8_E8M0] = { "F8_E8M0", 1 },
	[DSM_I8] = { "I8", 1 },
	[DSM_U8] = { "U8", 1 },
	[DSM_I16] = { "I16", 2 },
	[DSM_U16] = { "U16", 2 },
	[DSM_I32] = { "I32", 4 },
	[DSM_U32] = { "U32", 4 },
	[DSM_I64] = { "I64", 8 },
	[DSM_U64] = { "U64", 8 },
	[DSM_BOOL] = { "BOOL", 1 },
};

size_t dsm_dtype_size(enum dsm_dtype t)
{
	return t > 0 && t < DSM_DTYPE_COUNT ? dtypes[t].size : 0;
}

const char *dsm_dtype_name(enum dsm_dtype t)
{
	return t > 0 && t < DSM_DTYPE_COUNT ? dtypes[t].name : "INVALID";
}

enum dsm_dtype dsm_dtype_parse(const char *name)
{
	for (int t = 1; t < DSM_DTYPE_COUNT; t++)
		if (strcmp(name, dtypes[t].name) == 0)
			return (enum dsm_dtype)t;
	return DSM_DTYPE_INVALID;
}

/* Value of code seeeemmm: (-1)^s * 2^(e-7) * (1 + m/8) for e > 0, (-1)^s * 2^-6 * (m/8) for e == 0;
 * 0x7F and 0xFF are NaN. Written as constant expressions so the table is built by the compiler. */
#define POW2(k) ((float)(1 << ((k) + 8)) * (1.0f / 256)) /* k in [-6, 8] */
#define E4M3(e, m) ((e) ? (1.0f + (m) / 8.0f) * POW2((e) - 7) : ((m) / 8.0f) * POW2(-6))
#define ROW(e) E4M3(e, 0), E4M3(e, 1), E4M3(e, 2), E4M3(e, 3), E4M3(e, 4), E4M3(e, 5), E4M3(e, 6), E4M3(e, 7)
#define ROWS_0_14 ROW(0), ROW(1), ROW(2), ROW(3), ROW(4), ROW(5), ROW(6), ROW(7), \
	ROW(8), ROW(9), ROW(10), ROW(11), ROW(12), ROW(13), ROW(14)
#define LAST_ROW E4M3(15, 0), E4M3(15, 1), E4M3(15, 2), E4M3(15, 3), E4M3(15, 4), E4M3(15, 5), E4M3(15, 6)
#define NEG(e) -E4M3(e, 0), -E4M3(e, 1), -E4M3(e, 2), -E4M3(e, 3), -E4M3(e, 4), -E4M3(e, 5), -E4M3(e, 6), -E4M3(e, 7)

const float dsm_fp8_table[256] = {
	ROWS_0_14, LAST_ROW, NAN,
	NEG(0), NEG(1), NEG(2), NEG(3), NEG(4), NEG(5), NEG(6), NEG(7),
	NEG(8), NEG(9), NEG(10), NEG(11), NEG(12), NEG(13), NEG(14),
	-E4M3(15, 0), -E4M3(15, 1), -E4M3(15, 2), -E4M3(15, 3), -E4M3(15, 4), -E4M3(15, 5), -E4M3(15, 6), -NAN,
};

float dsm_fp8_to_f32(uint8_t code)
{
	return dsm_fp8_table[code];
}

uint8_t dsm_f32_to_fp8(float x)
{
	if (isnan(x))
		return 0x7f;
	uint8_t sign = signbit(x) ? 0x80 : 0;
	float a = fabsf(x);
	if (a >= 448.0f)
		return sign | 0x7e;
	/* Binary search over the 127 finite positive codes, which are sorted by value. */
	int lo = 0, hi = 126;
	while (lo < hi) {
		int mid = (lo + hi + 1) / 2;
		if (dsm_fp8_table[mid] <= a)
			lo = mid;
		else
			hi = mid - 1;
	}
	/* lo is the largest code with value <= a; round to nearest, ties to the even code. */
	if (lo < 126) {
		float below = dsm_fp8_table[lo], above = dsm_fp8_table[lo + 1];
		if (a - below > above - a || (a - below == above - a && (lo & 1)))
			lo++;
	}
	return sign | (uint8_t)lo;
}

void dsm_convert_to_f32(float *dst, const void *src, enum dsm_dtype t, size_t n)
{
	switch (t) {
	case DSM_F8_E4M3:
		for (size_t i = 0; i < n; i++)
			dst[i] = dsm_fp8_table[((const uint8_t *)src)[i]];
		break;
	case DSM_BF16:
		for (size_t i = 0; i < n; i++) {
			uint16_t b;
			memcpy(&b, (const char *)src + 2 * i, 2);
			dst[i] = dsm_bf16_to_f32(b);
		}
		break;
	case DSM_F32:
		memcpy(dst, src, n * sizeof(float));
		break;
	default:
		for (size_t i = 0; i < n; i++)
			dst[i] = NAN;
		break;
	}
}
