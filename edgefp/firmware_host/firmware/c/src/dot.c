/* Dot products four values at a time: a word of int8 values becomes two pairs of 16-bit lanes
 * (SXTB16, or SXTAB16 adding the offset) holding bytes 0, 2 and 1, 3, and SMLAD adds two products
 * at once. Both sides pair the same bytes, so each sum holds exactly the scalar products. Loops
 * run on pointers and a down counter, 8 values a pass, so that everything stays in registers. */
#include "dot.h"

#include "simd.h"

/* 4 inputs at x (offset added) against 4 weights at w */
#define DOT4(x02, x13, w, s) (s = efp_smlad(x13, efp_sxtb16_ror8(w), efp_smlad(x02, efp_sxtb16(w), s)))

/* s[0] = x.w0, s[1] = x.w1. GCC spills the pointers of the loop over groups of 8 to the stack: on the
 * DSP cores it is written out. */
EFP_HOT void dot_1x2(const int8_t *x, const int8_t *w0, const int8_t *w1, int32_t k, int32_t offset, int32_t s[2])
{
    uint32_t off = efp_pair(offset), v, p02, p13;
    int32_t s0 = 0, s1 = 0, n;
    if (k & 4) {
        v = efp_read4(x);
        p02 = efp_sxtab16(off, v);
        p13 = efp_sxtab16_ror8(off, v);
        DOT4(p02, p13, efp_read4(w0), s0);
        DOT4(p02, p13, efp_read4(w1), s1);
        x += 4, w0 += 4, w1 += 4;
    }
#if EFP_HAS_DSP
#define DOT4_ASM                                                                                                       \
    "ldr %[v], [%[x]], #4\n\t"                                                                                         \
    "sxtab16 %[p02], %[off], %[v]\n\t"                                                                                 \
    "sxtab16 %[p13], %[off], %[v], ror #8\n\t"                                                                         \
    "ldr %[v], [%[w0]], #4\n\t"                                                                                        \
    "sxtb16 %[q], %[v], ror #8\n\t"                                                                                    \
    "sxtb16 %[v], %[v]\n\t"                                                                                            \
    "smlad %[s0], %[p02], %[v], %[s0]\n\t"                                                                             \
    "smlad %[s0], %[p13], %[q], %[s0]\n\t"                                                                             \
    "ldr %[v], [%[w1]], #4\n\t"                                                                                        \
    "sxtb16 %[q], %[v], ror #8\n\t"                                                                                    \
    "sxtb16 %[v], %[v]\n\t"                                                                                            \
    "smlad %[s1], %[p02], %[v], %[s1]\n\t"                                                                             \
    "smlad %[s1], %[p13], %[q], %[s1]\n\t"
    if ((n = k >> 3) > 0) {
        uint32_t q;
        __asm__("1:\n\t" DOT4_ASM DOT4_ASM "subs %[n], %[n], #1\n\t"
                "bne 1b"
                : [s0] "+r"(s0), [s1] "+r"(s1), [x] "+r"(x), [w0] "+r"(w0), [w1] "+r"(w1), [n] "+r"(n), [v] "=&r"(v),
                  [p02] "=&r"(p02), [p13] "=&r"(p13), [q] "=&r"(q)
                : [off] "r"(off)
                : "cc", "memory");
    }
#undef DOT4_ASM
#else
    for (n = k >> 3; n > 0; n--, x += 8, w0 += 8, w1 += 8) {
        v = efp_read4(x);
        p02 = efp_sxtab16(off, v);
        p13 = efp_sxtab16_ror8(off, v);
        DOT4(p02, p13, efp_read4(w0), s0);
        DOT4(p02, p13, efp_read4(w1), s1);
        v = efp_read4(x + 4);
        p02 = efp_sxtab16(off, v);
        p13 = efp_sxtab16_ror8(off, v);
        DOT4(p02, p13, efp_read4(w0 + 4), s0);
        DOT4(p02, p13, efp_read4(w1 + 4), s1);
    }
#endif
    for (n = k & 3; n > 0; n--) {
        int32_t p = *x++ + offset;
        s0 = efp_wadd(s0, p * *w0++);
        s1 = efp_wadd(s1, p * *w1++);
    }
    s[0] = s0;
    s[1] = s1;
}

static int32_t dot_1x1(const int8_t *x, const int8_t *w, int32_t k, int32_t offset)
{
    uint32_t off = efp_pair(offset), v;
    int32_t s = 0, n;
    for (n = k >> 2; n > 0; n--, x += 4, w += 4) {
        v = efp_read4(x);
        DOT4(efp_sxtab16(off, v), efp_sxtab16_ror8(off, v), efp_read4(w), s);
    }
    for (n = k & 3; n > 0; n--)
        s = efp_wadd(s, (*x++ + offset) * *w++);
    return s;
}

void efp_dot_rows(const int8_t *x, const int8_t *w, int32_t k, int32_t rows, int32_t offset, int32_t *sums)
{
    int32_t r;
    for (r = 0; r + 2 <= rows; r += 2, w += 2 * k)
        dot_1x2(x, w, w + k, k, offset, sums + r);
    if (r < rows)
        sums[r] = dot_1x1(x, w, k, offset);
}

/* Where value i of column j lies (dot.h). */
EFP_HOT int32_t at(int32_t i, int j, int32_t k)
{
    static const int8_t lane[4] = {0, 2, 1, 3};
    int32_t groups = k & ~3;
    return i < groups ? (i & ~3) * 2 + j * 4 + lane[i & 3] : 2 * groups + j * (k & 3) + i - groups;
}

void efp_column_q15(const int8_t *src, int32_t n, int32_t offset, int16_t *col, int j, int32_t from, int32_t k)
{
    uint32_t off = efp_pair(offset);
    int32_t i = 0, groups = k & ~3;
    if (n <= 0)
        return;
    for (; i < n && ((from + i) & 3); i++) /* up to a group's start */
        col[at(from + i, j, k)] = (int16_t)(src ? src[i] + offset : 0);
    for (; i + 4 <= n && from + i + 4 <= groups; i += 4) { /* whole groups: two words of lanes per word of input */
        uint32_t v = src ? efp_read4(src + i) : 0, lanes[2];
        lanes[0] = src ? efp_sxtab16(off, v) : 0;
        lanes[1] = src ? efp_sxtab16_ror8(off, v) : 0;
        memcpy(col + (from + i) * 2 + j * 4, lanes, 8);
    }
    for (; i < n; i++)
        col[at(from + i, j, k)] = (int16_t)(src ? src[i] + offset : 0);
}

void efp_interleave_q15(const int16_t *values, int16_t *col, int j, int32_t k)
{
    int32_t i, groups = k & ~3;
    int16_t *g = col + j * 4, *tail = col + 2 * groups + j * (k & 3);
    for (i = 0; i < groups; i += 4, g += 8) {
        g[0] = values[i];
        g[1] = values[i + 2];
        g[2] = values[i + 1];
        g[3] = values[i + 3];
    }
    for (; i < k; i++)
        *tail++ = values[i];
}

EFP_HOT uint32_t word(const int16_t *c) /* two int16 lanes; c is 4-byte aligned */
{
    uint32_t v;
    memcpy(&v, c, 4);
    return v;
}

/* A group of 4 values of both columns against 4 weights of two rows: 16 products. */
#define GROUP(c, u0, u1)                                                                                               \
    do {                                                                                                               \
        uint32_t w = efp_read4(u0), w02 = efp_sxtb16(w), w13 = efp_sxtb16_ror8(w);                                     \
        uint32_t x0 = word(c), x1 = word(c + 2), y0 = word(c + 4), y1 = word(c + 6);                                   \
        a00 = efp_smlad(x1, w13, efp_smlad(x0, w02, a00));                                                             \
        a10 = efp_smlad(y1, w13, efp_smlad(y0, w02, a10));                                                             \
        w = efp_read4(u1);                                                                                             \
        w02 = efp_sxtb16(w);                                                                                           \
        w13 = efp_sxtb16_ror8(w);                                                                                      \
        a01 = efp_smlad(x1, w13, efp_smlad(x0, w02, a01));                                                             \
        a11 = efp_smlad(y1, w13, efp_smlad(y0, w02, a11));                                                             \
    } while (0)

/* Sums of the two columns at col against rows w0 and w1 of k weights. GCC spills the sums and
 * pointers of the groups' loop to the stack: on the DSP cores it is written out. */
EFP_HOT void dot_2x2(const int16_t *c, const int8_t *w0, const int8_t *w1, int32_t k, int32_t *s0, int32_t *s1)
{
    int32_t a00 = 0, a01 = 0, a10 = 0, a11 = 0, n;
#if EFP_HAS_DSP
    uint32_t x0, x1, y0, y1, w, q;
    if ((n = k >> 2) > 0)
        __asm__("1:\n\t"
                "ldr %[w], [%[w0]], #4\n\t"
                "ldrd %[x0], %[x1], [%[c]], #8\n\t"
                "sxtb16 %[q], %[w], ror #8\n\t"
                "sxtb16 %[w], %[w]\n\t"
                "smlad %[a00], %[x0], %[w], %[a00]\n\t"
                "smlad %[a00], %[x1], %[q], %[a00]\n\t"
                "ldrd %[y0], %[y1], [%[c]], #8\n\t"
                "smlad %[a10], %[y0], %[w], %[a10]\n\t"
                "smlad %[a10], %[y1], %[q], %[a10]\n\t"
                "ldr %[w], [%[w1]], #4\n\t"
                "sxtb16 %[q], %[w], ror #8\n\t"
                "sxtb16 %[w], %[w]\n\t"
                "smlad %[a01], %[x0], %[w], %[a01]\n\t"
                "smlad %[a01], %[x1], %[q], %[a01]\n\t"
                "smlad %[a11], %[y0], %[w], %[a11]\n\t"
                "smlad %[a11], %[y1], %[q], %[a11]\n\t"
                "subs %[n], %[n], #1\n\t"
                "bne 1b"
                : [a00] "+r"(a00), [a01] "+r"(a01), [a10] "+r"(a10), [a11] "+r"(a11), [c] "+r"(c), [w0] "+r"(w0),
                  [w1] "+r"(w1), [n] "+r"(n), [x0] "=&r"(x0), [x1] "=&r"(x1), [y0] "=&r"(y0), [y1] "=&r"(y1),
                  [w] "=&r"(w), [q] "=&r"(q)
                :
                : "cc", "memory");
#else
    for (n = k >> 3; n > 0; n--, c += 16, w0 += 8, w1 += 8) {
        GROUP(c, w0, w1);
        GROUP(c + 8, w0 + 4, w1 + 4);
    }
    if (k & 4) {
        GROUP(c, w0, w1);
        c += 8, w0 += 4, w1 += 4;
    }
#endif
    for (n = 0; n < (k & 3); n++) {
        a00 = efp_wadd(a00, c[n] * w0[n]);
        a01 = efp_wadd(a01, c[n] * w1[n]);
        a10 = efp_wadd(a10, c[(k & 3) + n] * w0[n]);
        a11 = efp_wadd(a11, c[(k & 3) + n] * w1[n]);
    }
    s0[0] = a00;
    s0[1] = a01;
    s1[0] = a10;
    s1[1] = a11;
}

void efp_dot_rows_q15(const int16_t *col, const int8_t *w, int32_t k, int32_t rows, int32_t *sums)
{
    int32_t *s0 = sums, *s1 = sums + rows, *end = sums + (rows & ~1), last0[2], last1[2];
    for (; s0 < end; s0 += 2, s1 += 2, w += 2 * k)
        dot_2x2(col, w, w + k, k, s0, s1);
    if (rows & 1) { /* the last row with itself */
        dot_2x2(col, w, w, k, last0, last1);
        *s0 = last0[0];
        *s1 = last1[0];
    }
}
