/* The SIMD instructions of cores with the DSP extension (Cortex-M4, M7, M33, M55) that the fast
 * kernels use: the instructions themselves on those cores, the same arithmetic in portable C
 * elsewhere, so that those kernels can be built and compared on any machine (EFP_DSP=1).
 * EFP_DSP selects the kernels: 1 by default where the core has the DSP extension, else 0 (the
 * portable kernels, e.g. for a Cortex-M0+). */
#ifndef EFP_SIMD_H
#define EFP_SIMD_H

#include <stdint.h>
#include <string.h>

#include "fixedpoint.h"

#if defined(__ARM_FEATURE_DSP) && defined(__ARM_FEATURE_SIMD32)
#define EFP_HAS_DSP 1
#else
#define EFP_HAS_DSP 0
#endif
#ifndef EFP_DSP
#define EFP_DSP EFP_HAS_DSP
#endif

EFP_HOT uint32_t efp_read4(const int8_t *p) /* 4 bytes, any alignment */
{
    uint32_t v;
    memcpy(&v, p, 4);
    return v;
}

/* Both 16-bit lanes set to v. */
static inline uint32_t efp_pair(int32_t v) { return ((uint32_t)v & 0xffffu) | (uint32_t)v << 16; }

#if EFP_HAS_DSP
#include <arm_acle.h>

/* SXTB16: bytes 0 and 2 of x sign-extended into two 16-bit lanes; _ror8: bytes 1 and 3.
 * SXTAB16: the same added lane-wise to a. */
EFP_HOT uint32_t efp_sxtb16(uint32_t x) { return (uint32_t)__sxtb16((int8x4_t)x); }
EFP_HOT uint32_t efp_sxtab16(uint32_t a, uint32_t x) { return (uint32_t)__sxtab16((int16x2_t)a, (int8x4_t)x); }

EFP_HOT uint32_t efp_sxtb16_ror8(uint32_t x)
{
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
    return r;
}

EFP_HOT uint32_t efp_sxtab16_ror8(uint32_t a, uint32_t x)
{
    uint32_t r;
    __asm__("sxtab16 %0, %1, %2, ror #8" : "=r"(r) : "r"(a), "r"(x));
    return r;
}

/* SMMULR: the high word of a * b, rounded: efp_srdhm_ns(a, b) is efp_smmulr(2 * a, b) while 2 * a fits. */
EFP_HOT int32_t efp_smmulr(int32_t a, int32_t b)
{
    int32_t r;
    __asm__("smmulr %0, %1, %2" : "=r"(r) : "r"(a), "r"(b));
    return r;
}

/* SMLAD: acc + lo(a) lo(b) + hi(a) hi(b); SMLABB, SMLATT: one product of the low or the high lanes. */
EFP_HOT int32_t efp_smlad(uint32_t a, uint32_t b, int32_t acc) { return __smlad((int16x2_t)a, (int16x2_t)b, acc); }
EFP_HOT int32_t efp_smlabb(uint32_t a, uint32_t b, int32_t acc) { return __smlabb((int32_t)a, (int32_t)b, acc); }
EFP_HOT int32_t efp_smlatt(uint32_t a, uint32_t b, int32_t acc) { return __smlatt((int32_t)a, (int32_t)b, acc); }

#else

EFP_HOT int32_t efp_lo(uint32_t v) { return (int16_t)(v & 0xffffu); }
EFP_HOT int32_t efp_hi(uint32_t v) { return (int16_t)(v >> 16); }
EFP_HOT uint32_t efp_lanes(int32_t lo, int32_t hi) { return ((uint32_t)lo & 0xffffu) | (uint32_t)hi << 16; }

EFP_HOT uint32_t efp_sxtb16(uint32_t x) { return efp_lanes((int8_t)x, (int8_t)(x >> 16)); }
EFP_HOT uint32_t efp_sxtb16_ror8(uint32_t x) { return efp_lanes((int8_t)(x >> 8), (int8_t)(x >> 24)); }
EFP_HOT uint32_t efp_sxtab16(uint32_t a, uint32_t x)
{
    return efp_lanes(efp_lo(a) + (int8_t)x, efp_hi(a) + (int8_t)(x >> 16));
}
EFP_HOT uint32_t efp_sxtab16_ror8(uint32_t a, uint32_t x)
{
    return efp_lanes(efp_lo(a) + (int8_t)(x >> 8), efp_hi(a) + (int8_t)(x >> 24));
}
EFP_HOT int32_t efp_smmulr(int32_t a, int32_t b) { return (int32_t)(((int64_t)a * b + 0x80000000ll) >> 32); }
EFP_HOT int32_t efp_smlad(uint32_t a, uint32_t b, int32_t acc)
{
    return efp_wadd(efp_wadd(acc, efp_lo(a) * efp_lo(b)), efp_hi(a) * efp_hi(b));
}
EFP_HOT int32_t efp_smlabb(uint32_t a, uint32_t b, int32_t acc) { return efp_wadd(acc, efp_lo(a) * efp_lo(b)); }
EFP_HOT int32_t efp_smlatt(uint32_t a, uint32_t b, int32_t acc) { return efp_wadd(acc, efp_hi(a) * efp_hi(b)); }

#endif

#endif
