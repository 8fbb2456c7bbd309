/* gemmlowp's transcendental functions and TFLite's multiplier computations (see fixedpoint.h). */
#include "fixedpoint.h"

#include <string.h>

static int32_t exp_quarter(int32_t a) /* exp(a) for a in [-1/4, 0), Q0.31 */
{
    const int32_t c = 1895147668, third = 715827883;
    int32_t x = efp_wadd(a, 1 << 28), x2 = efp_srdhm(x, x), x3 = efp_srdhm(x2, x), x4 = efp_srdhm(x2, x2);
    int32_t t = efp_rshift(efp_wadd(efp_srdhm(efp_wadd(efp_rshift(x4, 2), x3), third), x2), 1);
    return efp_wadd(c, efp_srdhm(c, efp_wadd(x, t)));
}

int32_t efp_exp_on_negative(int32_t a, int int_bits)
{
    static const int32_t mul[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    int frac = 31 - int_bits, i;
    int32_t quarter = 1 << (frac - 2), r = efp_wsub(a & (quarter - 1), quarter);
    int32_t result = exp_quarter(efp_sat_shl(r, int_bits)), rem = efp_wsub(r, a);
    for (i = 0; i < 7 && i - 2 < int_bits; i++) /* exp(-2^(i-2)) for each bit of the remainder */
        if (rem & (1 << (frac + i - 2)))
            result = efp_srdhm(result, mul[i]);
    return a == 0 ? INT32_MAX : result;
}

/* Newton-Raphson for 1 / (1 + a) in Q2.29 (gemmlowp); returns x ~ 2 / (1 + a). */
static int32_t recip_q2(int32_t a)
{
    int32_t half = efp_half_sum(a, INT32_MAX), x = efp_wadd(1515870810, efp_srdhm(half, -1010580540));
    int i;
    for (i = 0; i < 3; i++)
        x = efp_wadd(x, efp_sat_shl(efp_srdhm(x, efp_wsub(1 << 29, efp_srdhm(half, x))), 2));
    return x;
}

int32_t efp_one_over_one_plus_x(int32_t a) { return efp_sat_shl(recip_q2(a), 1); }

int32_t efp_tanh(int32_t a, int int_bits)
{
    int32_t n = a < 0 ? a : efp_wsub(0, a); /* -|a|; exp(2n) reads the same raw value with one more integer bit */
    int32_t t = efp_sat_shl(efp_wsub(recip_q2(efp_exp_on_negative(n, int_bits + 1)), 1 << 29), 2);
    return a == 0 ? 0 : a < 0 ? efp_wsub(0, t) : t;
}

int32_t efp_logistic(int32_t a, int int_bits)
{
    int32_t positive = efp_one_over_one_plus_x(efp_exp_on_negative(a > 0 ? efp_wsub(0, a) : a, int_bits));
    return a == 0 ? 1 << 30 : a > 0 ? positive : efp_wsub(INT32_MAX, positive);
}

/* round(|frexp(d)| * 2^31), its exponent and sign; 0 for zero, denormals, inf and NaN. */
static uint64_t frexp_q31(double d, int32_t *e, int *negative)
{
    uint64_t bits;
    memcpy(&bits, &d, 8);
    *negative = (int)(bits >> 63);
    *e = (int32_t)(bits >> 52 & 0x7ff);
    if (*e == 0 || *e == 0x7ff)
        return 0;
    *e -= 1022;
    return ((bits & 0xfffffffffffffull) + (1ull << 52) + (1ull << 21)) >> 22;
}

void efp_quantize_multiplier(double d, int32_t *m, int32_t *shift)
{
    int32_t e;
    int negative;
    uint64_t q = frexp_q31(d, &e, &negative);
    *m = 0;
    *shift = 0;
    if (!q)
        return;
    if (q == 1ull << 31 && !negative) { /* TFLite halves a positive mantissa that rounded up to 1 */
        q >>= 1;
        e++;
    }
    if (e > 31) { /* absurd scales: saturate instead of shifting out of range */
        q = 0x7fffffff;
        e = 31;
    }
    if (e >= -31) {
        *m = negative ? (int32_t)(0u - (uint32_t)q) : (int32_t)q;
        *shift = e;
    }
}

void efp_frexp_multiplier(double d, int32_t *m, int32_t *shift)
{
    int32_t e;
    int negative;
    uint64_t q = frexp_q31(d, &e, &negative);
    *m = 0;
    *shift = 0;
    if (q && e >= -31 && e <= 31) { /* a mantissa rounded up to 2^31 wraps, as the cast does */
        *m = negative ? (int32_t)(0u - (uint32_t)q) : (int32_t)(uint32_t)q;
        *shift = e;
    }
}

int32_t efp_input_radius(int int_bits, int32_t shift)
{
    int64_t r = (int64_t)((1 << int_bits) - 1) << (31 - int_bits);
    return shift >= 0 ? (int32_t)(r >> shift) : INT32_MAX;
}
