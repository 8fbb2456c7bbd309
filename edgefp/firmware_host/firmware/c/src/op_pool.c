/* AVERAGE_POOL_2D, MAX_POOL_2D, MEAN and REDUCE_MAX (int8), TFLite Micro's reference arithmetic. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

enum { MAX_POOL_2D = 17, REDUCE_MAX = 82 };

typedef struct {
    int8_t act_min, act_max, max;
    const int8_t *in;
    int8_t *out;
    int16_t batches, in_h, in_w, c, out_h, out_w, f_h, f_w, s_h, s_w, pad_h, pad_w;
} pool;

void efp_eval_pool(const void *params)
{
    const pool *p = params;
    int32_t b, oy, ox, c, y, x, C = p->c, row = p->in_w * p->c;
    int8_t *out = p->out;
    for (b = 0; b < p->batches; b++)
        for (oy = 0; oy < p->out_h; oy++)
            for (ox = 0; ox < p->out_w; ox++) {
                int32_t y0 = oy * p->s_h - p->pad_h, x0 = ox * p->s_w - p->pad_w;
                int32_t ys = y0 < 0 ? 0 : y0, ye = y0 + p->f_h > p->in_h ? p->in_h : y0 + p->f_h;
                int32_t xs = x0 < 0 ? 0 : x0, xe = x0 + p->f_w > p->in_w ? p->in_w : x0 + p->f_w;
                int32_t n = ye > ys && xe > xs ? (ye - ys) * (xe - xs) : 0;
                const int8_t *window = p->in + ((b * p->in_h + ys) * p->in_w + xs) * C;
                for (c = 0; c < C; c++) {
                    int32_t acc = p->max ? -128 : 0;
                    for (y = ys; y < ye; y++) {
                        const int8_t *v = window + (y - ys) * row + c;
                        for (x = xs; x < xe; x++, v += C)
                            acc = p->max ? (*v > acc ? *v : acc) : efp_wadd(acc, *v);
                    }
                    if (!p->max && n)
                        acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
                    *out++ = efp_clamp8(acc, p->act_min, p->act_max);
                }
            }
}

int efp_prepare_pool(efp_prep *c)
{
    efp_tensor in, out;
    int32_t sw = efp_option(c, 1, 4, 0), sh = efp_option(c, 2, 4, 0);
    int32_t fw = efp_option(c, 3, 4, 0), fh = efp_option(c, 4, 4, 0), st;
    int same = efp_option(c, 0, 1, 0) == 0;
    pool *p, q;
    if ((st = efp_input(c, 0, &in)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    if (in.ndim != 4 || out.ndim != 4 || out.dims[0] != in.dims[0] || out.dims[3] != in.dims[3])
        return efp_invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    if ((st = efp_activation(c, efp_option(c, 5, 1, 0), &out, &q.act_min, &q.act_max)) ||
        (st = efp_padding(c, same, in.dims[1], fh, sh, 1, out.dims[1], &q.pad_h)) ||
        (st = efp_padding(c, same, in.dims[2], fw, sw, 1, out.dims[2], &q.pad_w)))
        return st;
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.max = efp_code(c) == MAX_POOL_2D;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.batches = (int16_t)in.dims[0];
    q.in_h = (int16_t)in.dims[1];
    q.in_w = (int16_t)in.dims[2];
    q.c = (int16_t)in.dims[3];
    q.out_h = (int16_t)out.dims[1];
    q.out_w = (int16_t)out.dims[2];
    q.f_h = (int16_t)fh;
    q.f_w = (int16_t)fw;
    q.s_h = (int16_t)sh;
    q.s_w = (int16_t)sw;
    *p = q;
    return 0;
}

typedef struct {
    uint8_t ndim, reduce_mask, max; /* max: REDUCE_MAX (input and output share their quantisation) */
    const int8_t *in;
    int8_t *out;
    int32_t dims[EFP_MAX_DIMS];
    int32_t out_count, count, in_zp, out_zp, mult, shift;
    int32_t inner; /* reduced axes contiguous: elements after them (0: general walk) */
} mean;

void efp_eval_mean(const void *params)
{
    const mean *p = params;
    int32_t o, r, stride[EFP_MAX_DIMS];
    int d;
    stride[p->ndim - 1] = 1;
    for (d = p->ndim - 1; d > 0; d--)
        stride[d - 1] = stride[d] * p->dims[d];
    for (o = 0; o < p->out_count; o++) {
        int32_t base = 0, rem = o, sum = p->max ? -128 : 0;
        if (p->inner) { /* reduced axes contiguous: in[outer][count][inner] */
            const int8_t *in = p->in + (o / p->inner * p->count * p->inner + o % p->inner);
            for (r = 0; r < p->count; r++, in += p->inner)
                sum = p->max ? (*in > sum ? *in : sum) : efp_wadd(sum, *in);
        } else {
            for (d = p->ndim - 1; d >= 0; d--)
                if (!(p->reduce_mask >> d & 1)) {
                    base += rem % p->dims[d] * stride[d];
                    rem /= p->dims[d];
                }
            for (r = 0; r < p->count; r++) {
                int32_t off = base;
                rem = r;
                for (d = p->ndim - 1; d >= 0; d--)
                    if (p->reduce_mask >> d & 1) {
                        off += rem % p->dims[d] * stride[d];
                        rem /= p->dims[d];
                    }
                sum = p->max ? (p->in[off] > sum ? p->in[off] : sum) : efp_wadd(sum, p->in[off]);
            }
        }
        if (!p->max)
            sum = efp_wadd(efp_mbqm(efp_wsub(sum, efp_wmul(p->in_zp, p->count)), p->mult, p->shift), p->out_zp);
        p->out[o] = efp_clamp8(sum, -128, 127);
    }
}

/* n / d without pulling libgcc's 64-bit division into the image */
static uint32_t div64(uint64_t n, uint32_t d)
{
    uint64_t r = 0;
    uint32_t q = 0;
    int i;
    for (i = 63; i >= 0; i--) {
        r = r << 1 | (n >> i & 1);
        q <<= 1;
        if (r >= d) {
            r -= d;
            q |= 1;
        }
    }
    return q;
}

int efp_prepare_mean(efp_prep *c)
{
    efp_tensor in, axis, out;
    mean *p, q;
    int32_t st, i, a, sh;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &axis)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &in, EFP_INT8)) || (st = efp_expect(c, &out, EFP_INT8)) ||
        (st = efp_expect(c, &axis, EFP_INT32)))
        return st;
    if (!axis.data)
        return efp_unsupported(c, "axis must be constant");
    memset(&q, 0, sizeof q);
    q.count = 1;
    for (i = 0; i < (int32_t)axis.count; i++) {
        memcpy(&a, axis.data + 4 * i, 4);
        a += a < 0 ? in.ndim : 0;
        if (a < 0 || a >= in.ndim)
            return efp_invalid(c, "bad axis");
        if (!(q.reduce_mask >> a & 1))
            q.count *= in.dims[a];
        q.reduce_mask |= (uint8_t)(1 << a);
    }
    if (in.ndim == 0 || (uint64_t)out.count * (uint32_t)q.count != in.count)
        return efp_invalid(c, "tensor shapes do not match");
    /* reduced axes (of size > 1) in one run: walk in[outer][count][inner] */
    q.inner = 1;
    for (i = in.ndim - 1, a = 0; i >= 0; i--) { /* a: 0 inner axes, 1 the run, 2 outer axes */
        if (in.dims[i] == 1)
            continue;
        if (q.reduce_mask >> i & 1) {
            if (a == 2)
                q.inner = 0; /* a second run: general walk */
            a = a ? a : 1;
        } else if (a) {
            a = 2;
        } else {
            q.inner *= in.dims[i];
        }
    }
    q.max = efp_code(c) == REDUCE_MAX;
    if (q.max && (in.scale != out.scale || in.zp != out.zp))
        return efp_unsupported(c, "input and output must share scale and zero point");
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.ndim = (uint8_t)in.ndim;
    memcpy(q.dims, in.dims, sizeof q.dims);
    q.out_count = (int32_t)out.count;
    q.in_zp = in.zp;
    q.out_zp = out.zp;
    efp_quantize_multiplier((double)in.scale / (double)out.scale, &q.mult, &q.shift);
    /* fold 1/count into the multiplier as QuantizedMeanOrSum does */
    sh = 31 - __builtin_clz((uint32_t)q.count);
    sh = sh < 31 + q.shift ? sh : 31 + q.shift;
    q.mult = (int32_t)div64((uint64_t)q.mult << sh, (uint32_t)q.count);
    q.shift -= sh;
    *p = q;
    return 0;
}
