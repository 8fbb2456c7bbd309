/* gemmlowp-style fixed-point arithmetic, bit-exact with what TFLite Micro's reference kernels use
 * (default double rounding MultiplyByQuantizedMultiplier), and TFLite's multiplier computations. */
#ifndef EFP_FIXEDPOINT_H
#define EFP_FIXEDPOINT_H

#include <stdint.h>

#ifdef __GNUC__
#define EFP_HOT  static inline __attribute__((always_inline)) /* per-element helpers: no calls at -Os */
#define EFP_LOOP static __attribute__((noinline))             /* inner loops: registers of their own */
#else
#define EFP_HOT  static inline
#define EFP_LOOP static
#endif

/* Wrapping int32 arithmetic (what the C++ kernels do in practice, without C's signed-overflow UB). */
EFP_HOT int32_t efp_wadd(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
EFP_HOT int32_t efp_wsub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
EFP_HOT int32_t efp_wmul(int32_t a, int32_t b) { return (int32_t)((uint32_t)a * (uint32_t)b); }
EFP_HOT int32_t efp_wshl(int32_t a, int s) { return (int32_t)((uint32_t)a << s); }

/* SaturatingRoundingDoublingHighMul (ARM VQRDMULH). The nudged truncating division by 2^31 of the
 * reference equals adding 2^30 and shifting right arithmetically, for either sign of a * b. */
EFP_HOT int32_t efp_srdhm_ns(int32_t a, int32_t b) /* a and b not both INT32_MIN */
{
    return (int32_t)(((int64_t)a * b + (1 << 30)) >> 31);
}

static inline int32_t efp_srdhm(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN)
        return INT32_MAX;
    return efp_srdhm_ns(a, b);
}

/* RoundingDivideByPOT: rounding arithmetic right shift, ties away from zero. */
EFP_HOT int32_t efp_rshift(int32_t x, int e)
{
    int32_t mask = (int32_t)((1ll << e) - 1);
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> e) + ((x & mask) > threshold);
}

/* SaturatingRoundingMultiplyByPOT with a positive exponent: saturating left shift. */
static inline int32_t efp_sat_shl(int32_t x, int e)
{
    int32_t threshold = (int32_t)((1u << (31 - e)) - 1);
    if (x > threshold)
        return INT32_MAX;
    if (x < -threshold)
        return INT32_MIN;
    return efp_wshl(x, e);
}

/* MultiplyByQuantizedMultiplier for the multipliers of efp_quantize_multiplier (never INT32_MIN
 * when positive; efp_mbqm_any takes any). */
EFP_HOT int32_t efp_mbqm(int32_t x, int32_t m, int shift)
{
    return efp_rshift(efp_srdhm_ns(efp_wshl(x, shift > 0 ? shift : 0), m), shift > 0 ? 0 : -shift);
}

static inline int32_t efp_mbqm_any(int32_t x, int32_t m, int shift)
{
    return efp_rshift(efp_srdhm(efp_wshl(x, shift > 0 ? shift : 0), m), shift > 0 ? 0 : -shift);
}

/* QADD: a + b saturated to int32 */
#if defined(__ARM_FEATURE_DSP)
#include <arm_acle.h>
EFP_HOT int32_t efp_qadd(int32_t a, int32_t b) { return __qadd(a, b); }
#else
EFP_HOT int32_t efp_qadd(int32_t a, int32_t b)
{
    int64_t s = (int64_t)a + b;
    return s > INT32_MAX ? INT32_MAX : s < INT32_MIN ? INT32_MIN : (int32_t)s;
}
#endif

/* efp_requantize for a multiplier m < 1/2 (right shift r in 1..22): RoundingDivideByPOT as one
 * saturating add of the rounding term and a shift. The add saturates only when the exact result
 * is at least 2^(31 - r) >= 512, where both land on the top of the activation range. */
EFP_HOT int8_t efp_requantize_small(int32_t acc, int32_t m, int r, int32_t offset, int32_t lo, int32_t hi)
{
    int32_t y = efp_srdhm_ns(acc, m), v = efp_wadd(efp_qadd(y, (1 << (r - 1)) - (y < 0)) >> r, offset);
    return (int8_t)(v < lo ? lo : v > hi ? hi : v);
}

/* acc (bias included) to int8: multiplier, offset, then the activation range [lo, hi] */
EFP_HOT int8_t efp_requantize(int32_t acc, int32_t m, int shift, int32_t offset, int32_t lo, int32_t hi)
{
    int32_t v = efp_wadd(efp_mbqm(acc, m, shift), offset);
    return (int8_t)(v < lo ? lo : v > hi ? hi : v);
}

static inline int32_t efp_half_sum(int32_t a, int32_t b)
{
    int64_t s = (int64_t)a + b;
    return (int32_t)((s + (s >= 0 ? 1 : -1)) / 2);
}

/* roundf (ties away from zero) without libm; out-of-range and NaN inputs saturate. */
static inline int32_t efp_roundf(float f)
{
    int32_t t;
    float r;
    if (!(f > -1e9f))
        f = -1e9f;
    if (f > 1e9f)
        f = 1e9f;
    t = (int32_t)f;
    r = f - (float)t;
    return t + (r >= 0.5f) - (r <= -0.5f);
}

/* gemmlowp's functions on raw values; int_bits: integer bits of the input's format. */
int32_t efp_exp_on_negative(int32_t a, int int_bits); /* exp(a), a <= 0; result Q0.31 */
int32_t efp_one_over_one_plus_x(int32_t a);           /* 1 / (1 + a) for a in [0, 1) Q0.31 */
int32_t efp_tanh(int32_t a, int int_bits);            /* result Q0.31 */
int32_t efp_logistic(int32_t a, int int_bits);        /* result Q0.31 */

/* TFLite's QuantizeMultiplier: d = m * 2^(shift - 31), m in [2^30, 2^31) (negative d: negative m). */
void efp_quantize_multiplier(double d, int32_t *m, int32_t *shift);
/* The multiplier as TANH and LOGISTIC take it: frexp rounded to Q0.31, without QuantizeMultiplier's
 * fix for a mantissa that rounds up to 1 (it wraps to INT32_MIN). */
void efp_frexp_multiplier(double d, int32_t *m, int32_t *shift);

/* TFLite's CalculateInputRadius(int_bits, shift, 31). */
int32_t efp_input_radius(int int_bits, int32_t shift);

#endif
