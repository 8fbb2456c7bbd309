/* gemmlowp-style fixed-point helpers, bit-exact with what TFLite Micro's reference kernels use
 * (default double rounding MultiplyByQuantizedMultiplier). */
#ifndef EFP_FIXEDPOINT_H
#define EFP_FIXEDPOINT_H

#include <stdint.h>

#ifdef __GNUC__
#define FP_HOT static inline __attribute__((always_inline)) /* per-element helpers: no calls at -Os */
#else
#define FP_HOT static inline
#endif

/* Wrapping int32 arithmetic (what the C++ kernels do in practice, without C's signed-overflow UB). */
static inline int32_t fp_add(int32_t a, int32_t b) { return (int32_t)((uint32_t)a + (uint32_t)b); }
static inline int32_t fp_sub(int32_t a, int32_t b) { return (int32_t)((uint32_t)a - (uint32_t)b); }
static inline int32_t fp_wmul(int32_t a, int32_t b) { return (int32_t)((uint32_t)a * (uint32_t)b); }
static inline int32_t fp_shl(int32_t a, int s) { return (int32_t)((uint32_t)a << s); }

/* SaturatingRoundingDoublingHighMul (ARM VQRDMULH). The nudged truncating division by 2^31 of the
 * reference equals adding 2^30 and shifting right arithmetically, for either sign of a * b. */
FP_HOT int32_t fp_mul_ns(int32_t a, int32_t b) /* a and b not both INT32_MIN */
{
    return (int32_t)(((int64_t)a * b + (1 << 30)) >> 31);
}

static inline int32_t fp_mul(int32_t a, int32_t b)
{
    if (a == b && a == INT32_MIN)
        return INT32_MAX;
    return fp_mul_ns(a, b);
}

/* RoundingDivideByPOT: rounding arithmetic right shift, ties away from zero. */
FP_HOT int32_t fp_rshift(int32_t x, int e)
{
    int32_t mask = (int32_t)((1ll << e) - 1);
    int32_t threshold = (mask >> 1) + (x < 0);
    return (x >> e) + ((x & mask) > threshold);
}

/* SaturatingRoundingMultiplyByPOT with a positive exponent: saturating left shift. */
static inline int32_t fp_sat_shl(int32_t x, int e)
{
    int32_t threshold = (int32_t)((1u << (31 - e)) - 1);
    if (x > threshold)
        return INT32_MAX;
    if (x < -threshold)
        return INT32_MIN;
    return fp_shl(x, e);
}

/* MultiplyByQuantizedMultiplier; m is never INT32_MIN (multipliers are positive). */
static inline int32_t fp_mbqm(int32_t x, int32_t m, int shift)
{
    return fp_rshift(fp_mul_ns(fp_shl(x, shift > 0 ? shift : 0), m), shift > 0 ? 0 : -shift);
}

static inline int32_t fp_half_sum(int32_t a, int32_t b)
{
    int64_t s = (int64_t)a + b;
    return (int32_t)((s + (s >= 0 ? 1 : -1)) / 2);
}

/* roundf (ties away from zero) without libm; out-of-range and NaN inputs saturate. */
static inline int32_t fp_round(float f)
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

int32_t fp_exp_neg_q5(int32_t a);            /* exp(a) for a <= 0 in Q5.26, result Q0.31 */
int32_t fp_one_over_one_plus_x(int32_t a);   /* 1 / (1 + a) for a in [0, 1) Q0.31 */
int32_t fp_tanh_q4(int32_t a);               /* tanh(a), a in Q4.27, result Q0.31 */

#endif
