/* int8 kernels, following TFLite Micro's reference kernels operation by operation. */
#include "ops.h"

#include <string.h>

#include "fixedpoint.h"

static int8_t clamp8(int32_t v, int32_t lo, int32_t hi) { return (int8_t)(v < lo ? lo : v > hi ? hi : v); }

/* ---- gemmlowp fixed-point functions ---- */

static int32_t exp_quarter(int32_t a) /* exp(a) for a in [-1/4, 0), Q0.31 */
{
    const int32_t c = 1895147668, third = 715827883;
    int32_t x = fp_add(a, 1 << 28), x2 = fp_mul(x, x), x3 = fp_mul(x2, x), x4 = fp_mul(x2, x2);
    int32_t t = fp_rshift(fp_add(fp_mul(fp_add(fp_rshift(x4, 2), x3), third), x2), 1);
    return fp_add(c, fp_mul(c, fp_add(x, t)));
}

int32_t fp_exp_neg_q5(int32_t a)
{
    static const int32_t mul[7] = {1672461947, 1302514674, 790015084, 290630308, 39332535, 720401, 242};
    int32_t quarter = 1 << 24, r = fp_sub(a & (quarter - 1), quarter);
    int32_t result = exp_quarter(fp_sat_shl(r, 5)), rem = fp_sub(r, a);
    int i;
    for (i = 0; i < 7; i++)
        if (rem & (1 << (24 + i)))
            result = fp_mul(result, mul[i]);
    return a == 0 ? INT32_MAX : result;
}

/* Newton-Raphson for 1 / (1 + a) in Q2.29 (gemmlowp); returns x ~ 2 / (1 + a). */
static int32_t recip_q2(int32_t a)
{
    int32_t half = fp_half_sum(a, INT32_MAX), x = fp_add(1515870810, fp_mul(half, -1010580540));
    int i;
    for (i = 0; i < 3; i++)
        x = fp_add(x, fp_sat_shl(fp_mul(x, fp_sub(1 << 29, fp_mul(half, x))), 2));
    return x;
}

int32_t fp_one_over_one_plus_x(int32_t a) { return fp_sat_shl(recip_q2(a), 1); }

int32_t fp_tanh_q4(int32_t a)
{
    int32_t n = a < 0 ? a : fp_sub(0, a);
    int32_t t = fp_sat_shl(fp_sub(recip_q2(fp_exp_neg_q5(n)), 1 << 29), 2);
    return a == 0 ? 0 : a < 0 ? fp_sub(0, t) : t;
}

/* ---- kernels ---- */

static void conv(const efp_conv *p)
{
    int b, oy, ox, oc, ky, kx, ic;
    int dw = p->kind == K_DWCONV;
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
                                acc = fp_add(acc, *wp * (*ip + p->in_off));
                            } else {
                                wp = p->w + ((oc * p->k_h + ky) * p->k_w + kx) * p->f_c;
                                for (ic = 0; ic < p->f_c; ic++)
                                    acc = fp_add(acc, wp[ic] * (ip[ic] + p->in_off));
                            }
                        }
                    }
                    if (p->bias)
                        acc = fp_add(acc, p->bias[oc]);
                    acc = fp_add(fp_mbqm(acc, p->mult[oc], p->shift[oc]), p->out_off);
                    *out++ = clamp8(acc, p->act_min, p->act_max);
                }
}

static void fully_connected(const efp_fc *p)
{
    int b, u, d;
    int32_t in_off = p->in_off, w_off = p->w_off;
    for (b = 0; b < p->batches; b++)
        for (u = 0; u < p->units; u++) {
            const int8_t *x = p->in + b * p->depth, *w = p->w + u * p->depth;
            int c = p->per_channel ? u : 0;
            int32_t acc = 0;
            for (d = 0; d < p->depth; d++)
                acc = fp_add(acc, (w[d] + w_off) * (x[d] + in_off));
            if (p->bias)
                acc = fp_add(acc, p->bias[u]);
            acc = fp_add(fp_mbqm(acc, p->mult[c], p->shift[c]), p->out_off);
            p->out[b * p->units + u] = clamp8(acc, p->act_min, p->act_max);
        }
}

static void pool(const efp_pool *p)
{
    int b, oy, ox, c, y, x;
    int8_t *out = p->out;
    for (b = 0; b < p->batches; b++)
        for (oy = 0; oy < p->out_h; oy++)
            for (ox = 0; ox < p->out_w; ox++)
                for (c = 0; c < p->c; c++) {
                    int y0 = oy * p->s_h - p->pad_h, x0 = ox * p->s_w - p->pad_w;
                    int ys = y0 < 0 ? 0 : y0, ye = y0 + p->f_h > p->in_h ? p->in_h : y0 + p->f_h;
                    int xs = x0 < 0 ? 0 : x0, xe = x0 + p->f_w > p->in_w ? p->in_w : x0 + p->f_w;
                    int32_t acc = p->kind == K_MAXPOOL ? -128 : 0, n = 0;
                    for (y = ys; y < ye; y++)
                        for (x = xs; x < xe; x++) {
                            int32_t v = p->in[((b * p->in_h + y) * p->in_w + x) * p->c + c];
                            if (p->kind == K_MAXPOOL)
                                acc = v > acc ? v : acc;
                            else
                                acc = fp_add(acc, v);
                            n++;
                        }
                    if (p->kind == K_AVGPOOL && n)
                        acc = acc > 0 ? (acc + n / 2) / n : (acc - n / 2) / n;
                    *out++ = clamp8(acc, p->act_min, p->act_max);
                }
}

static void binary(const efp_binary *p)
{
    int i0, i1, i2, i3, n3 = p->n[3], sa = p->sa[3], sb = p->sb[3], op = p->op, ls = p->left_shift;
    int32_t a_off = p->a_off, b_off = p->b_off, ma = p->ma, mb = p->mb, rsa = p->rsa, rsb = p->rsb;
    int8_t *out = p->out;
    for (i0 = 0; i0 < p->n[0]; i0++)
        for (i1 = 0; i1 < p->n[1]; i1++)
            for (i2 = 0; i2 < p->n[2]; i2++) {
                const int8_t *a = p->a + i0 * p->sa[0] + i1 * p->sa[1] + i2 * p->sa[2];
                const int8_t *b = p->b + i0 * p->sb[0] + i1 * p->sb[1] + i2 * p->sb[2];
                for (i3 = 0; i3 < n3; i3++, a += sa, b += sb) {
                    int32_t x = *a + a_off, y = *b + b_off, r;
                    if (op == B_MUL) {
                        r = x * y;
                    } else {
                        x = fp_rshift(fp_mul_ns(x * (1 << ls), ma), rsa);
                        y = fp_rshift(fp_mul_ns(y * (1 << ls), mb), rsb);
                        r = op == B_ADD ? fp_add(x, y) : fp_sub(x, y);
                        if (op == B_SQDIFF)
                            r = fp_wmul(r, r);
                    }
                    r = fp_rshift(fp_mul_ns(fp_shl(r, p->lso), p->mo), p->rso);
                    *out++ = clamp8(fp_add(r, p->out_off), p->act_min, p->act_max);
                }
            }
}

static int32_t reduce_step(const efp_mean *p, int32_t acc, int8_t v)
{
    return p->kind == K_REDUCE_MAX ? (v > acc ? v : acc) : fp_add(acc, v);
}

static void mean(const efp_mean *p)
{
    int32_t o, r, stride[6];
    int d;
    stride[p->ndim - 1] = 1;
    for (d = p->ndim - 1; d > 0; d--)
        stride[d - 1] = stride[d] * p->dims[d];
    for (o = 0; o < p->out_count; o++) {
        int32_t base = 0, rem = o, sum = p->kind == K_REDUCE_MAX ? -128 : 0;
        if (p->inner) { /* reduced axes contiguous: in[outer][count][inner] */
            const int8_t *in = p->in + (o / p->inner * p->count * p->inner + o % p->inner);
            for (r = 0; r < p->count; r++, in += p->inner)
                sum = reduce_step(p, sum, *in);
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
                sum = reduce_step(p, sum, p->in[off]);
            }
        }
        if (p->kind == K_MEAN)
            sum = fp_add(fp_mbqm(fp_sub(sum, fp_wmul(p->in_zp, p->count)), p->mult, p->shift), p->out_zp);
        p->out[o] = clamp8(sum, -128, 127);
    }
}

static void pad(const efp_pad *p)
{
    int32_t n = 1, rows = 1, r, d, row = p->in_dims[p->ndim - 1];
    for (d = 0; d < p->ndim; d++)
        n *= p->out_dims[d];
    memset(p->out, p->value, (size_t)n);
    for (d = 0; d < p->ndim - 1; d++)
        rows *= p->in_dims[d];
    for (r = 0; r < rows; r++) { /* each innermost row of the input, to its place in the output */
        int32_t rem = r, off = 0, stride = p->out_dims[p->ndim - 1];
        for (d = p->ndim - 2; d >= 0; d--) {
            off += (rem % p->in_dims[d] + p->before[d]) * stride;
            rem /= p->in_dims[d];
            stride *= p->out_dims[d];
        }
        memcpy(p->out + off + p->before[p->ndim - 1], p->in + (size_t)r * (size_t)row, (size_t)row);
    }
}

static void softmax(const efp_unary *p)
{
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
                sum = fp_add(sum, fp_rshift(fp_exp_neg_q5(fp_mul(fp_shl(diff, p->shift), p->mult)), 12));
        }
        /* GetReciprocal(sum, 12 integer bits) */
        bits = __builtin_clz((uint32_t)sum);
        scale = fp_one_over_one_plus_x((int32_t)(((uint32_t)sum << bits) - (1u << 31)));
        e = 12 - bits + 31 - 8;
        for (c = 0; c < p->depth; c++) {
            int32_t diff = in[i + c] - max, v = -128;
            if (diff >= p->radius)
                v = fp_rshift(fp_mul(scale, fp_exp_neg_q5(fp_mul(fp_shl(diff, p->shift), p->mult))), e) - 128;
            out[i + c] = clamp8(v, -128, 127);
        }
    }
}

static void unary(const efp_unary *p)
{
    const int8_t *in = p->in;
    int8_t *out = p->out;
    int32_t i, v;
    if (p->lut) {
        for (i = 0; i < p->n; i++)
            out[i] = p->lut[in[i] + 128];
        return;
    }
    for (i = 0; i < p->n; i++) {
        switch (p->kind) {
        case K_TANH:
            v = in[i] - p->in_zp;
            if (v <= -p->radius)
                v = -128;
            else if (v >= p->radius)
                v = 127;
            else
                v = fp_rshift(fp_tanh_q4(fp_mbqm(v, p->mult, p->shift)), 24);
            break;
        case K_REQUANT:
            v = fp_add(fp_mbqm(in[i] - p->in_zp, p->mult, p->shift), p->out_zp);
            break;
        case K_QUANT_F32:
            v = fp_round(((const float *)p->in)[i] / p->scale) + p->out_zp;
            break;
        default: /* K_DEQUANT */
            ((float *)p->out)[i] = p->scale * (float)(in[i] - p->in_zp);
            continue;
        }
        out[i] = clamp8(v, -128, 127);
    }
}

void efp_op_run(const void *op)
{
    switch (*(const uint8_t *)op) {
    case K_CONV:
    case K_DWCONV: conv(op); break;
    case K_FC: fully_connected(op); break;
    case K_AVGPOOL:
    case K_MAXPOOL: pool(op); break;
    case K_MEAN:
    case K_REDUCE_MAX: mean(op); break;
    case K_PAD: pad(op); break;
    case K_BINARY: binary(op); break;
    case K_SOFTMAX: softmax(op); break;
    default: unary(op); break;
    }
}
