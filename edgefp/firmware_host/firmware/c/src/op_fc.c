/* FULLY_CONNECTED (int8, per-tensor or per-channel weights), TFLite Micro's reference arithmetic;
 * with EFP_DSP (simd.h), two units at a time, four inputs per SIMD step. */
#include <string.h>

#include "dot.h"
#include "kernel.h"
#include "ops.h"
#include "simd.h"

typedef struct {
    efp_output_stage q;
    const int8_t *in, *w;
    int8_t *out;
    int32_t in_off, w_off, batches, depth, units;
} fully_connected;

/* The sum of (x[d] + x_off) * (w[d] + w_off) over n values, in registers of its own. */
EFP_LOOP int32_t dot(const int8_t *x, const int8_t *w, int32_t n, int32_t x_off, int32_t w_off)
{
    int32_t acc = 0;
    for (; n > 0; n--)
        acc = efp_wadd(acc, (*w++ + w_off) * (*x++ + x_off));
    return acc;
}

void efp_eval_fully_connected(const void *params)
{
    const fully_connected *p = params;
    const efp_output_stage q = p->q;
    int32_t b, u;
    for (b = 0; b < p->batches; b++)
        for (u = 0; u < p->units; u++) {
            int32_t acc = dot(p->in + b * p->depth, p->w + u * p->depth, p->depth, p->in_off, p->w_off);
            p->out[b * p->units + u] = efp_to_int8(&q, acc, u);
        }
}

/* Symmetric weights (zero point 0, as TFLite writes them): the sums of up to CHUNK units, then their
 * output stage in one run. */
#define CHUNK 32

static void fully_connected_by_2(const void *params)
{
    const fully_connected *p = params;
    int32_t b, u, n, depth = p->depth, units = p->units, sums[CHUNK];
    for (b = 0; b < p->batches; b++)
        for (u = 0; u < units; u += n) {
            n = units - u < CHUNK ? units - u : CHUNK;
            efp_dot_rows(p->in + b * depth, p->w + u * depth, depth, n, p->in_off, sums);
            efp_output_run(&p->q, sums, n, u, p->out + b * units + u);
        }
}

int efp_prepare_fully_connected(efp_prep *c)
{
    efp_tensor in, w, bias, out;
    int32_t units, depth, st;
    fully_connected *p, q;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &w)) || (st = efp_input(c, 2, &bias)) ||
        (st = efp_output(c, 0, &out)))
        return st;
    if (in.idx < 0 || w.idx < 0)
        return efp_unsupported(c, "missing input");
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &w, EFP_INT8)) ||
        (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    if (efp_option(c, 1, 1, 0))
        return efp_unsupported(c, "unsupported weights format");
    units = w.dims[0];
    depth = w.dims[1];
    if (w.ndim != 2 || in.count % (uint32_t)depth || out.count != in.count / (uint32_t)depth * (uint32_t)units ||
        out.dims[out.ndim - 1] != units)
        return efp_invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    p = efp_params(c, sizeof *p);
    if ((st = efp_output_stage_init(c, &q.q, &in, &w, &bias, &out, efp_option(c, 0, 1, 0), 0)))
        return st;
    if (EFP_DSP && w.zp == 0)
        efp_set_eval(c, fully_connected_by_2);
    if (!p)
        return 0;
    q.in = efp_data(c, &in);
    q.w = efp_data(c, &w);
    q.out = efp_data(c, &out);
    q.in_off = -in.zp;
    q.w_off = -w.zp;
    q.batches = (int32_t)(in.count / (uint32_t)depth);
    q.depth = depth;
    q.units = units;
    *p = q;
    return 0;
}
