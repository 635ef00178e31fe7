/* FP8 E4M3 and BF16 conversions, exhaustively against references computed from the bit layout. */
#include "dtype.h"
#include "test_util.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

/* The value of an E4M3 code from its fields, computed independently of the library's table. */
static double fp8_reference(uint8_t code)
{
	int s = code >> 7, e = (code >> 3) & 15, m = code & 7;
	if (e == 15 && m == 7)
		return NAN;
	double v = e == 0 ? ldexp(m, -9) /* m/8 * 2^-6 */ : ldexp(8 + m, e - 10) /* (1+m/8) * 2^(e-7) */;
	return s ? -v : v;
}

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static void test_fp8_decode(void)
{
	int nans = 0;
	for (int c = 0; c < 256; c++) {
		double want = fp8_reference((uint8_t)c);
		float got = dsm_fp8_to_f32((uint8_t)c);
		if (isnan(want)) {
			CHECK(isnan(got), "code 0x%02x must be NaN, got %g", c, got);
			nans++;
			continue;
		}
		CHECK((double)got == want && !!signbit(got) == !!signbit(want), "code 0x%02x: got %.9g want %.9g", c, got, want);
		/* The bf16 bit trick of docs MODEL.md holds for normal codes. */
		int s = c >> 7, e = (c >> 3) & 15, m = c & 7;
		if (e > 0) {
			uint16_t bf = (uint16_t)(s << 15 | (e + 120) << 7 | m << 4);
			CHECK(dsm_bf16_to_f32(bf) == got, "code 0x%02x: bf16 trick gives %g, want %g", c,
			      dsm_bf16_to_f32(bf), got);
		}
	}
	CHECK(nans == 2, "exactly 0x7f and 0xff are NaN, found %d NaN codes", nans);
	CHECK(dsm_fp8_to_f32(0x7e) == 448.0f, "max is 448, got %g", dsm_fp8_to_f32(0x7e));
	CHECK(dsm_fp8_to_f32(0x01) == 0x1p-9f, "smallest subnormal is 2^-9, got %g", dsm_fp8_to_f32(0x01));
	CHECK(dsm_fp8_to_f32(0x08) == 0x1p-6f, "smallest normal is 2^-6, got %g", dsm_fp8_to_f32(0x08));
	CHECK(signbit(dsm_fp8_to_f32(0x80)) && dsm_fp8_to_f32(0x80) == 0, "0x80 is -0");
}

static void test_fp8_encode(void)
{
	/* Every finite code round-trips. */
	for (int c = 0; c < 256; c++) {
		if ((c & 0x7f) == 0x7f)
			continue;
		uint8_t back = dsm_f32_to_fp8(dsm_fp8_to_f32((uint8_t)c));
		CHECK(back == c, "round trip of code 0x%02x gave 0x%02x", c, back);
	}
	/* Midpoints round to the even code; just above goes up, just below goes down. */
	for (int c = 0; c < 126; c++) {
		float lo = dsm_fp8_to_f32((uint8_t)c), hi = dsm_fp8_to_f32((uint8_t)(c + 1));
		float mid = (lo + hi) / 2;
		int even = (c & 1) ? c + 1 : c;
		CHECK(dsm_f32_to_fp8(mid) == even, "midpoint of 0x%02x/0x%02x gave 0x%02x", c, c + 1, dsm_f32_to_fp8(mid));
		CHECK(dsm_f32_to_fp8(nextafterf(mid, INFINITY)) == c + 1, "above midpoint of 0x%02x", c);
		CHECK(dsm_f32_to_fp8(nextafterf(mid, -INFINITY)) == c, "below midpoint of 0x%02x", c);
		CHECK(dsm_f32_to_fp8(-nextafterf(mid, INFINITY)) == (0x80 | (c + 1)), "negative above midpoint of 0x%02x", c);
	}
	CHECK(dsm_f32_to_fp8(1e6f) == 0x7e, "saturates to 448");
	CHECK(dsm_f32_to_fp8(-1e6f) == 0xfe, "saturates to -448");
	CHECK(dsm_f32_to_fp8(INFINITY) == 0x7e, "inf saturates");
	CHECK((dsm_f32_to_fp8(NAN) & 0x7f) == 0x7f, "NaN stays NaN");
	CHECK(dsm_f32_to_fp8(0x1p-11f) == 0x00, "2^-11 (a quarter of the smallest subnormal) rounds to 0");
	CHECK(dsm_f32_to_fp8(0x1p-10f) == 0x00, "2^-10 (half the smallest subnormal) ties to even 0");
	CHECK(dsm_f32_to_fp8(0x1.8p-10f) == 0x01, "3/4 of the smallest subnormal rounds up");
}

/* BF16 round-to-nearest-even against a reference written with integer arithmetic on the bits. */
static uint16_t bf16_reference(uint32_t u)
{
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	uint32_t upper = u >> 16, lower = u & 0xffff;
	if (lower > 0x8000 || (lower == 0x8000 && (upper & 1)))
		upper++;
	return (uint16_t)upper;
}

static void test_bf16(void)
{
	/* All 2^16 bf16 values convert exactly both ways. */
	for (uint32_t b = 0; b < 65536; b++) {
		float f = dsm_bf16_to_f32((uint16_t)b);
		CHECK(f32_bits(f) == b << 16, "bf16 0x%04x widened wrong", b);
		if (!isnan(f))
			CHECK(dsm_f32_to_bf16(f) == b, "bf16 0x%04x does not round-trip", b);
	}
	/* Every low-half pattern around ties, for a spread of upper halves (even and odd). */
	static const uint32_t lows[] = { 0, 1, 0x7fff, 0x8000, 0x8001, 0xffff, 0x4000, 0xc000 };
	for (uint32_t upper = 0; upper < 65536; upper += 37) {
		for (size_t i = 0; i < sizeof lows / sizeof lows[0]; i++) {
			uint32_t u = upper << 16 | lows[i];
			uint16_t got = dsm_f32_to_bf16(bits_f32(u)), want = bf16_reference(u);
			CHECK(got == want, "f32 0x%08x -> bf16 0x%04x, want 0x%04x", u, got, want);
		}
	}
	CHECK(dsm_f32_to_bf16(bits_f32(0x3f808000)) == 0x3f80, "tie to even (down)");
	CHECK(dsm_f32_to_bf16(bits_f32(0x3f818000)) == 0x3f82, "tie to even (up)");
	CHECK(dsm_f32_to_bf16(bits_f32(0x7f7fffff)) == 0x7f80, "max float rounds to inf");
	CHECK(isnan(dsm_bf16_to_f32(dsm_f32_to_bf16(NAN))), "NaN stays NaN");
}

static void test_dtype_names(void)
{
	CHECK(dsm_dtype_parse("F8_E4M3") == DSM_F8_E4M3, "F8_E4M3");
	CHECK(dsm_dtype_parse("BF16") == DSM_BF16, "BF16");
	CHECK(dsm_dtype_parse("F32") == DSM_F32, "F32");
	CHECK(dsm_dtype_parse("F7_E4M2") == DSM_DTYPE_INVALID, "unknown dtype");
	CHECK(dsm_dtype_size(DSM_BF16) == 2 && dsm_dtype_size(DSM_F8_E4M3) == 1, "sizes");
}

int main(void)
{
	test_fp8_decode();
	test_fp8_encode();
	test_bf16();
	test_dtype_names();
	return TEST_EXIT();
}
