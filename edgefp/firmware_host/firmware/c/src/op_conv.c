/* CONV_2D and DEPTHWISE_CONV_2D (int8, per-channel or per-tensor filters), TFLite Micro's reference
 * arithmetic: int32 accumulation of (input - zero point) * filter, bias, requantisation.
 * With EFP_DSP (simd.h), convolutions run as products of int16 columns (im2col) and depthwise ones
 * four channels at a time: the same sums in another order, so the same bytes. */
#include <string.h>

#include "dot.h"
#include "kernel.h"
#include "ops.h"
#include "simd.h"

enum { DEPTHWISE_CONV_2D = 4 };

typedef struct {
    efp_output_stage q;
    const int8_t *in, *w;
    int8_t *out;
    int32_t in_off;
    int16_t batches, in_h, in_w, in_c, out_h, out_w, out_c, f_c, k_h, k_w; /* f_c: filter depth (1: depthwise) */
    int16_t s_h, s_w, d_h, d_w, pad_h, pad_w, per_group;                   /* output channels per input group */
    uint8_t depthwise;
    int16_t *columns; /* fast convolution: two interleaved im2col columns of k_h * k_w * in_c values */
    int32_t *sums;    /* fast kernels: the sums of an output pixel (two for convolutions) */
    int32_t *taps;    /* fast depthwise: the input and weight offsets of an output pixel's taps */
    int16_t *gather;  /* fast convolution with channels not in fours: a column in natural order */
} conv;

void efp_eval_conv(const void *params)
{
    const conv *p = params;
    const efp_output_stage q = p->q;
    int b, oy, ox, oc, ky, kx, ic, dw = p->depthwise;
    int8_t *out = p->out;
    for (b = 0; b < p->batches; b++)
        for (oy = 0; oy < p->out_h; oy++)
            for (ox = 0; ox < p->out_w; ox++)
                for (oc = 0; oc < p->out_c; oc++) {
                    int32_t acc = 0;
                    int y0 = oy * p->s_h - p->pad_h, x0 = ox * p->s_w - p->pad_w;
                    int c0 = oc / p->per_group * p->f_c; /* first input channel of oc's group */
                    for (ky = 0; ky < p->k_h; ky++) {
                        int y = y0 + ky * p->d_h;
                        if (y < 0 || y >= p->in_h)
                            continue;
                        for (kx = 0; kx < p->k_w; kx++) {
                            int x = x0 + kx * p->d_w;
                            const int8_t *ip, *wp;
                            if (x < 0 || x >= p->in_w)
                                continue;
                            ip = p->in + ((b * p->in_h + y) * p->in_w + x) * p->in_c + c0;
                            if (dw) {
                                wp = p->w + (ky * p->k_w + kx) * p->out_c + oc;
                                acc = efp_wadd(acc, *wp * (*ip + p->in_off));
                            } else {
                                wp = p->w + ((oc * p->k_h + ky) * p->k_w + kx) * p->f_c;
                                for (ic = 0; ic < p->f_c; ic++)
                                    acc = efp_wadd(acc, wp[ic] * (ip[ic] + p->in_off));
                            }
                        }
                    }
                    *out++ = efp_to_int8(&q, acc, oc);
                }
}

/* The first and the end of the filter taps that fall inside an input of `size`, from `at`. */
static void inside(int32_t at, int32_t size, int32_t taps, int32_t step, int32_t *first, int32_t *end)
{
    *first = at < 0 ? (-at + step - 1) / step : 0;
    *end = size - at <= 0 ? 0 : (size - at + step - 1) / step;
    *end = *end < taps ? *end : taps;
}

/* The receptive field of output pixel n (batch included) as int16 column j (dot.h). With channels in
 * fours, per filter row: zeros where it overhangs the input, the taps inside in one run (dilation
 * 1); else value by value in natural order into `gather`, then interleaved at once. */
static void column(const conv *p, int32_t n, int16_t *col, int j)
{
    int32_t b = n / (p->out_h * p->out_w), oy = n / p->out_w % p->out_h, ox = n % p->out_w, C = p->in_c;
    int32_t k = p->k_h * p->k_w * C, ky, kx, c, i = 0, x0 = ox * p->s_w - p->pad_w, kx0, kx1;
    inside(x0, p->in_w, p->k_w, p->d_w, &kx0, &kx1);
    for (ky = 0; ky < p->k_h; ky++) {
        int32_t y = oy * p->s_h - p->pad_h + ky * p->d_h, row = (b * p->in_h + y) * p->in_w;
        int in_rows = y >= 0 && y < p->in_h;
        if (C % 4 == 0 && (!in_rows || kx1 <= kx0 || p->d_w == 1)) {
            int32_t first = in_rows && kx1 > kx0 ? kx0 : p->k_w, end = in_rows && kx1 > kx0 ? kx1 : p->k_w;
            efp_column_q15(NULL, first * C, 0, col, j, i, k);
            if (end > first)
                efp_column_q15(p->in + (row + x0 + first) * C, (end - first) * C, p->in_off, col, j, i + first * C, k);
            efp_column_q15(NULL, (p->k_w - end) * C, 0, col, j, i + end * C, k);
            i += p->k_w * C;
            continue;
        }
        for (kx = 0; kx < p->k_w; kx++) {
            const int8_t *src = in_rows && kx >= kx0 && kx < kx1 ? p->in + (row + x0 + kx * p->d_w) * C : NULL;
            if (C % 4 == 0)
                efp_column_q15(src, C, p->in_off, col, j, i, k);
            else
                for (c = 0; c < C; c++)
                    p->gather[i + c] = (int16_t)(src ? src[c] + p->in_off : 0);
            i += C;
        }
    }
    if (C % 4)
        efp_interleave_q15(p->gather, col, j, k);
}

/* Two output pixels at a time (a lone last one with itself), every output channel's sums first,
 * then the output stage over them. */
static void conv_columns(const void *params)
{
    const conv *p = params;
    int32_t k = p->k_h * p->k_w * p->in_c, pixels = p->batches * p->out_h * p->out_w, out_c = p->out_c, n;
    for (n = 0; n < pixels; n += 2) {
        int8_t *out = p->out + n * out_c;
        column(p, n, p->columns, 0);
        column(p, n + 1 < pixels ? n + 1 : n, p->columns, 1);
        efp_dot_rows_q15(p->columns, p->w, k, out_c, p->sums);
        efp_output_run(&p->q, p->sums, out_c, 0, out);
        if (n + 1 < pixels)
            efp_output_run(&p->q, p->sums + out_c, out_c, 0, out + out_c);
    }
}

/* The taps of one output pixel: rows x cols of them, inputs x_col bytes apart (x_row between rows),
 * weights w_col apart (w_row). */
typedef struct {
    int32_t rows, cols, x_col, x_row, w_col, w_row;
} taps;

/* Sums of four channels over n taps: per tap, the offsets of its input word (four channels) from x
 * and of its weights word from w (two int32 each in taps); SMLABB and SMLATT keep the channels apart.
 * GCC spills these sums to the stack: on the DSP cores the loop is written out. */
EFP_HOT void taps4(const int8_t *x, const int8_t *w, const int32_t *taps, int32_t n, uint32_t off, int32_t *s)
{
#if EFP_HAS_DSP
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t v, u, t0, t1;
    __asm__("1:\n\t"
            "ldrd %[t0], %[t1], [%[taps]], #8\n\t"
            "ldr %[v], [%[x], %[t0]]\n\t"
            "ldr %[u], [%[w], %[t1]]\n\t"
            "sxtab16 %[t0], %[off], %[v]\n\t"
            "sxtab16 %[v], %[off], %[v], ror #8\n\t"
            "sxtb16 %[t1], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlabb %[a0], %[t0], %[t1], %[a0]\n\t"
            "smlatt %[a2], %[t0], %[t1], %[a2]\n\t"
            "smlabb %[a1], %[v], %[u], %[a1]\n\t"
            "smlatt %[a3], %[v], %[u], %[a3]\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b"
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [taps] "+r"(taps), [n] "+r"(n), [v] "=&r"(v),
              [u] "=&r"(u), [t0] "=&r"(t0), [t1] "=&r"(t1)
            : [x] "r"(x), [w] "r"(w), [off] "r"(off)
            : "cc", "memory");
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
#else
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (; n > 0; n--, taps += 2) {
        uint32_t v = efp_read4(x + taps[0]), u = efp_read4(w + taps[1]);
        uint32_t x02 = efp_sxtab16(off, v), x13 = efp_sxtab16_ror8(off, v), w02 = efp_sxtb16(u),
                 w13 = efp_sxtb16_ror8(u);
        a0 = efp_smlabb(x02, w02, a0);
        a2 = efp_smlatt(x02, w02, a2);
        a1 = efp_smlabb(x13, w13, a1);
        a3 = efp_smlatt(x13, w13, a3);
    }
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
#endif
}

/* The same for four output channels of one input channel (a depth multiplier that is a multiple of
 * 4): the tap's input byte (offset added) in both lanes. */
EFP_HOT void taps4_of_1(const int8_t *x, const int8_t *w, const int32_t *taps, int32_t n, int32_t offset, int32_t *s)
{
#if EFP_HAS_DSP
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    uint32_t v, u, t0, t1;
    __asm__("1:\n\t"
            "ldrd %[t0], %[t1], [%[taps]], #8\n\t"
            "ldrsb %[v], [%[x], %[t0]]\n\t"
            "ldr %[u], [%[w], %[t1]]\n\t"
            "add %[v], %[v], %[off]\n\t"
            "pkhbt %[v], %[v], %[v], lsl #16\n\t"
            "sxtb16 %[t1], %[u]\n\t"
            "sxtb16 %[u], %[u], ror #8\n\t"
            "smlabb %[a0], %[v], %[t1], %[a0]\n\t"
            "smlatt %[a2], %[v], %[t1], %[a2]\n\t"
            "smlabb %[a1], %[v], %[u], %[a1]\n\t"
            "smlatt %[a3], %[v], %[u], %[a3]\n\t"
            "subs %[n], %[n], #1\n\t"
            "bne 1b"
            : [a0] "+r"(a0), [a1] "+r"(a1), [a2] "+r"(a2), [a3] "+r"(a3), [taps] "+r"(taps), [n] "+r"(n), [v] "=&r"(v),
              [u] "=&r"(u), [t0] "=&r"(t0), [t1] "=&r"(t1)
            : [x] "r"(x), [w] "r"(w), [off] "r"(offset)
            : "cc", "memory");
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
#else
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (; n > 0; n--, taps += 2) {
        uint32_t v = efp_pair(x[taps[0]] + offset), u = efp_read4(w + taps[1]), w02 = efp_sxtb16(u),
                 w13 = efp_sxtb16_ror8(u);
        a0 = efp_smlabb(v, w02, a0);
        a2 = efp_smlatt(v, w02, a2);
        a1 = efp_smlabb(v, w13, a1);
        a3 = efp_smlatt(v, w13, a3);
    }
    s[0] = a0;
    s[1] = a1;
    s[2] = a2;
    s[3] = a3;
#endif
}

/* Sums of every channel of one output pixel over the taps listed, four channels at a time: four
 * input channels (depth multiplier m = 1) or one input channel (m a multiple of 4) for each four. */
EFP_LOOP void pixel_sums(const int8_t *x, const int8_t *w, const int32_t *taps, int32_t n, int32_t groups, int32_t m,
                         int32_t offset, int32_t *s)
{
    uint32_t off = efp_pair(offset);
    int32_t g;
    for (g = 0; g < groups; g++, w += 4, s += 4)
        if (!n)
            s[0] = s[1] = s[2] = s[3] = 0;
        else if (m == 1)
            taps4(x + 4 * g, w, taps, n, off, s);
        else
            taps4_of_1(x + 4 * g / m, w, taps, n, offset, s);
}

/* Depthwise with a depth multiplier of 1 or a multiple of 4: every channel's sums of a pixel (four
 * at a time, the last OC % 4 one by one), then the output stage over them. */
static void depthwise_by_4(const void *params)
{
    const conv *p = params;
    int32_t b, oy, ox, oc, ky, kx, n = 0, r[4], last[2] = {-1, -1}, C = p->in_c, OC = p->out_c, m = OC / C;
    int32_t *s = p->sums;
    int8_t *out = p->out;
    taps t;
    t.x_col = p->d_w * C;
    t.x_row = p->d_h * p->in_w * C;
    t.w_col = OC;
    t.w_row = p->k_w * OC;
    for (b = 0; b < p->batches; b++)
        for (oy = 0; oy < p->out_h; oy++)
            for (ox = 0; ox < p->out_w; ox++, out += OC) {
                int32_t y0 = oy * p->s_h - p->pad_h, x0 = ox * p->s_w - p->pad_w;
                const int8_t *in, *w;
                inside(y0, p->in_h, p->k_h, p->d_h, &r[0], &r[1]);
                inside(x0, p->in_w, p->k_w, p->d_w, &r[2], &r[3]);
                t.rows = r[1] - r[0];
                t.cols = r[3] - r[2];
                in = p->in + ((b * p->in_h + y0 + r[0] * p->d_h) * p->in_w + x0 + r[2] * p->d_w) * C;
                w = p->w + (r[0] * p->k_w + r[2]) * OC;
                if (t.rows != last[0] || t.cols != last[1]) /* the taps of another window size */
                    for (ky = 0, n = 0, last[0] = t.rows, last[1] = t.cols; ky < t.rows; ky++)
                        for (kx = 0; kx < t.cols; kx++, n++) {
                            p->taps[2 * n] = ky * t.x_row + kx * t.x_col;
                            p->taps[2 * n + 1] = ky * t.w_row + kx * t.w_col;
                        }
                pixel_sums(in, w, p->taps, n, OC / 4, m, p->in_off, s);
                for (oc = OC & ~3; oc < OC; oc++) {
                    int32_t acc = 0;
                    for (ky = 0; ky < t.rows; ky++)
                        for (kx = 0; kx < t.cols; kx++)
                            acc = efp_wadd(acc, (in[ky * t.x_row + kx * t.x_col + oc / m] + p->in_off) *
                                                    w[ky * t.w_row + kx * t.w_col + oc]);
                    s[oc] = acc;
                }
                efp_output_run(&p->q, s, OC, 0, out);
            }
}

int efp_prepare_conv(efp_prep *c)
{
    int dw = efp_code(c) == DEPTHWISE_CONV_2D, st, same = efp_option(c, 0, 1, 0) == 0;
    efp_tensor in, w, bias, out;
    int32_t oc, sh = efp_option(c, 2, 4, 0), sw = efp_option(c, 1, 4, 0);
    int32_t dh = efp_option(c, dw ? 6 : 5, 4, 1), dwf = efp_option(c, dw ? 5 : 4, 4, 1);
    conv *p, q;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &w)) || (st = efp_input(c, 2, &bias)) ||
        (st = efp_output(c, 0, &out)))
        return st;
    if (in.idx < 0 || w.idx < 0)
        return efp_unsupported(c, "missing input");
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &w, EFP_INT8)) ||
        (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    oc = out.dims[3];
    if (in.ndim != 4 || w.ndim != 4 || out.ndim != 4 || out.dims[0] != in.dims[0])
        return efp_invalid(c, "tensor shapes do not match");
    if (dw ? w.dims[0] != 1 || w.dims[3] != oc || oc % in.dims[3]
           : w.dims[0] != oc || in.dims[3] % w.dims[3] || oc % (in.dims[3] / w.dims[3]))
        return efp_invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    if ((st = efp_padding(c, same, in.dims[1], w.dims[1], sh, dh, out.dims[1], &q.pad_h)) ||
        (st = efp_padding(c, same, in.dims[2], w.dims[2], sw, dwf, out.dims[2], &q.pad_w)))
        return st;
    p = efp_params(c, sizeof *p);
    if ((st = efp_output_stage_init(c, &q.q, &in, &w, &bias, &out, efp_option(c, dw ? 4 : 3, 1, 0), dw ? 3 : 0)))
        return st;
    if (EFP_DSP && !dw && w.dims[3] == in.dims[3]) { /* not grouped: im2col */
        int32_t k = w.dims[1] * w.dims[2] * w.dims[3];
        size_t gather = in.dims[3] % 4 ? 2 * (size_t)((k + 1) & ~1) : 0;
        uint8_t *scratch = efp_scratch(c, 2 * 2 * (size_t)k + 2 * 4 * (size_t)oc + gather);
        q.columns = (int16_t *)(void *)scratch;
        q.sums = (int32_t *)(void *)(scratch + 2 * 2 * (size_t)k);
        q.gather = (int16_t *)(void *)(scratch + 2 * 2 * (size_t)k + 2 * 4 * (size_t)oc);
        efp_set_eval(c, conv_columns);
    } else if (EFP_DSP && dw && (oc == in.dims[3] || (oc / in.dims[3]) % 4 == 0)) {
        uint8_t *scratch = efp_scratch(c, 4 * (size_t)oc + 8 * (size_t)w.dims[1] * (size_t)w.dims[2]);
        q.sums = (int32_t *)(void *)scratch;
        q.taps = (int32_t *)(void *)(scratch + 4 * (size_t)oc);
        efp_set_eval(c, depthwise_by_4);
    }
    if (!p)
        return 0;
    q.in = efp_data(c, &in);
    q.w = efp_data(c, &w);
    q.out = efp_data(c, &out);
    q.in_off = -in.zp;
    q.batches = (int16_t)in.dims[0];
    q.in_h = (int16_t)in.dims[1];
    q.in_w = (int16_t)in.dims[2];
    q.in_c = (int16_t)in.dims[3];
    q.out_h = (int16_t)out.dims[1];
    q.out_w = (int16_t)out.dims[2];
    q.out_c = (int16_t)oc;
    q.f_c = (int16_t)(dw ? 1 : w.dims[3]);
    q.k_h = (int16_t)w.dims[1];
    q.k_w = (int16_t)w.dims[2];
    q.s_h = (int16_t)sh;
    q.s_w = (int16_t)sw;
    q.d_h = (int16_t)dh;
    q.d_w = (int16_t)dwf;
    q.per_group = (int16_t)(oc / (in.dims[3] / q.f_c));
    q.depthwise = (uint8_t)dw;
    *p = q;
    return 0;
}
