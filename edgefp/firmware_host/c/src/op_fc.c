/* FULLY_CONNECTED (int8, per-tensor or per-channel weights), TFLite Micro's reference arithmetic. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

typedef struct {
    int8_t act_min, act_max, per_channel;
    const int8_t *in, *w;
    const int32_t *bias;
    int8_t *out;
    const int32_t *mult; /* per_channel ? units entries : 1 */
    const int8_t *shift;
    int32_t in_off, w_off, out_off, batches, depth, units;
} fully_connected;

void efp_eval_fully_connected(const void *params)
{
    const fully_connected *p = params;
    int b, u, d;
    int32_t in_off = p->in_off, w_off = p->w_off;
    for (b = 0; b < p->batches; b++)
        for (u = 0; u < p->units; u++) {
            const int8_t *x = p->in + b * p->depth, *w = p->w + u * p->depth;
            int c = p->per_channel ? u : 0;
            int32_t acc = 0;
            for (d = 0; d < p->depth; d++)
                acc = efp_wadd(acc, (w[d] + w_off) * (x[d] + in_off));
            if (p->bias)
                acc = efp_wadd(acc, p->bias[u]);
            acc = efp_wadd(efp_mbqm(acc, p->mult[c], p->shift[c]), p->out_off);
            p->out[b * p->units + u] = efp_clamp8(acc, p->act_min, p->act_max);
        }
}

int efp_prepare_fully_connected(efp_prep *c)
{
    efp_tensor in, w, bias, out;
    int32_t i, units, depth, per, st, *mult;
    int8_t *shift;
    fully_connected *p, q;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &w)) || (st = efp_input(c, 2, &bias)) ||
        (st = efp_output(c, 0, &out)))
        return st;
    if (in.idx < 0 || w.idx < 0)
        return efp_unsupported(c, "missing input");
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &w, EFP_INT8)) || (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    if (efp_option(c, 1, 1, 0))
        return efp_unsupported(c, "unsupported weights format");
    units = w.dims[0];
    depth = w.dims[1];
    per = w.n_scales > 1;
    if (w.ndim != 2 || in.count % (uint32_t)depth || out.count != in.count / (uint32_t)depth * (uint32_t)units)
        return efp_invalid(c, "tensor shapes do not match");
    if (bias.idx >= 0 && ((st = efp_expect(c, &bias, EFP_INT32)) || bias.count != (uint32_t)units))
        return st ? st : efp_invalid(c, "tensor shapes do not match");
    if (per && (w.n_scales != (uint32_t)units || w.qdim != 0))
        return efp_unsupported(c, "unsupported filter quantization");
    memset(&q, 0, sizeof q);
    if ((st = efp_activation(c, efp_option(c, 0, 1, 0), &out, &q.act_min, &q.act_max)))
        return st;
    p = efp_params(c, sizeof *p);
    mult = efp_persist(c, 4 * (size_t)(per ? units : 1));
    shift = efp_persist(c, (size_t)(per ? units : 1));
    if (!p)
        return 0;
    q.per_channel = (int8_t)per;
    q.in = efp_data(c, &in);
    q.w = efp_data(c, &w);
    q.bias = efp_data(c, &bias);
    q.out = efp_data(c, &out);
    q.mult = mult;
    q.shift = shift;
    q.in_off = -in.zp;
    q.w_off = -w.zp;
    q.out_off = out.zp;
    q.batches = (int32_t)(in.count / (uint32_t)depth);
    q.depth = depth;
    q.units = units;
    for (i = 0; i < (per ? units : 1); i++) { /* in double, per channel as per tensor */
        int32_t s;
        efp_quantize_multiplier((double)in.scale * (double)efp_scale(c, &w, (uint32_t)i) / (double)out.scale, &mult[i], &s);
        shift[i] = (int8_t)s;
    }
    *p = q;
    return 0;
}
