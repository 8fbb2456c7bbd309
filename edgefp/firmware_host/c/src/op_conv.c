/* CONV_2D and DEPTHWISE_CONV_2D (int8, per-channel or per-tensor filters), TFLite Micro's reference
 * arithmetic: int32 accumulation of (input - zero point) * filter, bias, per-channel requantisation. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

enum { CONV_2D = 3, DEPTHWISE_CONV_2D = 4 };

typedef struct {
    int8_t act_min, act_max;
    const int8_t *in, *w;
    const int32_t *bias;  /* NULL: none */
    int8_t *out;
    const int32_t *mult;  /* per output channel */
    const int8_t *shift;
    int32_t in_off, out_off;
    int16_t batches, in_h, in_w, in_c, out_h, out_w, out_c, f_c, k_h, k_w; /* f_c: filter depth (1: depthwise) */
    int16_t s_h, s_w, d_h, d_w, pad_h, pad_w, per_group; /* output channels per input group */
    uint8_t depthwise;
} conv;

void efp_eval_conv(const void *params)
{
    const conv *p = params;
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
                    if (p->bias)
                        acc = efp_wadd(acc, p->bias[oc]);
                    acc = efp_wadd(efp_mbqm(acc, p->mult[oc], p->shift[oc]), p->out_off);
                    *out++ = efp_clamp8(acc, p->act_min, p->act_max);
                }
}

int efp_prepare_conv(efp_prep *c)
{
    int dw = efp_code(c) == DEPTHWISE_CONV_2D, st, same = efp_option(c, 0, 1, 0) == 0;
    efp_tensor in, w, bias, out;
    int32_t oc, i, sh = efp_option(c, 2, 4, 0), sw = efp_option(c, 1, 4, 0);
    int32_t dh = efp_option(c, dw ? 6 : 5, 4, 1), dwf = efp_option(c, dw ? 5 : 4, 4, 1);
    int32_t *mult;
    int8_t *shift;
    conv *p, q;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &w)) || (st = efp_input(c, 2, &bias)) ||
        (st = efp_output(c, 0, &out)))
        return st;
    if (in.idx < 0 || w.idx < 0)
        return efp_unsupported(c, "missing input");
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &w, EFP_INT8)) || (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    oc = out.dims[3];
    if (in.ndim != 4 || w.ndim != 4 || out.ndim != 4 || out.dims[0] != in.dims[0])
        return efp_invalid(c, "tensor shapes do not match");
    if (bias.idx >= 0 && ((st = efp_expect(c, &bias, EFP_INT32)) || bias.count != (uint32_t)oc))
        return st ? st : efp_invalid(c, "tensor shapes do not match");
    if (dw ? w.dims[0] != 1 || w.dims[3] != oc || oc % in.dims[3]
           : w.dims[0] != oc || in.dims[3] % w.dims[3] || oc % (in.dims[3] / w.dims[3]))
        return efp_invalid(c, "tensor shapes do not match");
    if (w.n_scales != 1 && (w.n_scales != (uint32_t)oc || w.qdim != (dw ? 3u : 0u)))
        return efp_unsupported(c, "unsupported filter quantization");
    memset(&q, 0, sizeof q);
    if ((st = efp_activation(c, efp_option(c, dw ? 4 : 3, 1, 0), &out, &q.act_min, &q.act_max)) ||
        (st = efp_padding(c, same, in.dims[1], w.dims[1], sh, dh, out.dims[1], &q.pad_h)) ||
        (st = efp_padding(c, same, in.dims[2], w.dims[2], sw, dwf, out.dims[2], &q.pad_w)))
        return st;
    p = efp_params(c, sizeof *p);
    mult = efp_persist(c, 4 * (size_t)oc);
    shift = efp_persist(c, (size_t)oc);
    if (!p)
        return 0;
    q.in = efp_data(c, &in);
    q.w = efp_data(c, &w);
    q.bias = efp_data(c, &bias);
    q.out = efp_data(c, &out);
    q.mult = mult;
    q.shift = shift;
    q.in_off = -in.zp;
    q.out_off = out.zp;
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
    for (i = 0; i < oc; i++) {
        int32_t m, s;
        efp_quantize_multiplier((double)in.scale * (double)efp_scale(c, &w, w.n_scales > 1 ? (uint32_t)i : 0) /
                                    (double)out.scale,
                                &m, &s);
        mult[i] = m;
        shift[i] = (int8_t)s;
    }
    *p = q;
    return 0;
}
