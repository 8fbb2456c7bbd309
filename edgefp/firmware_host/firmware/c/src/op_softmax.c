/* SOFTMAX (int8 in, int8 out of scale 1/256 and zero point -128), TFLite Micro's reference arithmetic. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

typedef struct {
    const int8_t *in;
    int8_t *out;
    int32_t n, depth, mult, shift, radius;
} softmax;

void efp_eval_softmax(const void *params)
{
    const softmax *p = params;
    const int8_t *in = p->in;
    int8_t *out = p->out;
    int32_t i, c;
    for (i = 0; i < p->n; i += p->depth) {
        int32_t max = -128, sum = 0, bits, scale, e;
        for (c = 0; c < p->depth; c++)
            max = in[i + c] > max ? in[i + c] : max;
        for (c = 0; c < p->depth; c++) {
            int32_t diff = in[i + c] - max;
            if (diff >= p->radius)
                sum =
                    efp_wadd(sum, efp_rshift(efp_exp_on_negative(efp_srdhm(efp_wshl(diff, p->shift), p->mult), 5), 12));
        }
        /* GetReciprocal(sum, 12 integer bits) */
        bits = __builtin_clz((uint32_t)sum);
        scale = efp_one_over_one_plus_x((int32_t)(((uint32_t)sum << bits) - (1u << 31)));
        e = 12 - bits + 31 - 8;
        for (c = 0; c < p->depth; c++) {
            int32_t diff = in[i + c] - max, v = -128;
            if (diff >= p->radius)
                v = efp_rshift(efp_srdhm(scale, efp_exp_on_negative(efp_srdhm(efp_wshl(diff, p->shift), p->mult), 5)),
                               e) -
                    128;
            out[i + c] = efp_clamp8(v, -128, 127);
        }
    }
}

int efp_prepare_softmax(efp_prep *c)
{
    efp_tensor in, out;
    softmax *p, q;
    int32_t st;
    uint64_t bits64;
    double beta;
    if ((st = efp_input(c, 0, &in)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    if (in.count != out.count || in.ndim < 1)
        return efp_invalid(c, "tensor shapes do not match");
    if (out.zp != -128 || out.scale != 1.0f / 256)
        return efp_unsupported(c, "output must have scale 1/256, zero point -128");
    memset(&q, 0, sizeof q);
    beta = (double)efp_option_f32(c, 0, 0.0f) * (double)in.scale * (double)(1 << 26);
    memcpy(&bits64, &beta, 8);
    if (bits64 > 0x41dfffffffc00000ull && !(bits64 >> 63)) /* min(beta, 2^31 - 1), compared as bits */
        beta = 2147483647.0;
    efp_quantize_multiplier(beta, &q.mult, &q.shift);
    if (q.shift < 1)
        return efp_unsupported(c, "input scale times beta too small");
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.n = (int32_t)in.count;
    q.depth = in.dims[in.ndim - 1];
    q.radius = -efp_input_radius(5, q.shift);
    *p = q;
    return 0;
}
