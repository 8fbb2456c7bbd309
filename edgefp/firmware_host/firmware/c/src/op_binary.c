/* ADD, SUB, MUL and SQUARED_DIFFERENCE (int8, with broadcasting), TFLite Micro's reference
 * arithmetic; strides, multipliers and shifts are precomputed. Each innermost run goes in chunks
 * through passes with few values live: both inputs rescaled to int32, combined, then the output
 * stage of the convolutions (one multiplier, no bias). */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"
#include "simd.h"

enum { ADD = 0, MUL = 18, SUB = 41, SQUARED_DIFFERENCE = 99 };
enum { B_ADD, B_SUB, B_MUL, B_SQDIFF };

#define CHUNK 32

typedef struct {
    efp_output_stage q; /* the output's multiplier (mo, shift), its offset and activation range */
    const int8_t *a, *b;
    int8_t *out;
    int32_t n[4], sa[4], sb[4]; /* collapsed output shape and input strides (0 = broadcast) */
    int32_t a_off, b_off, ma, mb, mo;
    int8_t op, shift, pa, pb, rsa, rsb; /* output shift; inputs' shifts (input_scale) */
} binary;

/* An input of ADD, SUB or SQUARED_DIFFERENCE as TFLite rescales it: (q + off) << left_shift through
 * MultiplyByQuantizedMultiplierSmallerThanOneExp. Its doubling high multiply is SMMULR of the value
 * shifted once more (|q + off| <= 255: it fits), its rounding shift one add (no overflow here). */
EFP_LOOP void rescale(const int8_t *q, int32_t step, int32_t n, int32_t off, int32_t m, int pre, int rs, int32_t *v)
{
    const int32_t half = 1 << (rs - 1);
    for (; n > 0; n--, q += step) {
        int32_t x = efp_smmulr(efp_wshl(*q + off, pre), m);
        *v++ = (x + half - (int32_t)((uint32_t)x >> 31)) >> rs;
    }
}

/* The multiplier and shifts of rescale for r <= 1/2 (a right shift s >= 0). With s = 0, m is 2^30 (or
 * 0) and the shifted value even: SMMULR of it shifted twice and a rounding shift by 1 give the same. */
static void input_scale(double r, int left_shift, int32_t *m, int8_t *pre, int8_t *rs)
{
    int32_t s;
    efp_quantize_multiplier(r, m, &s);
    *pre = (int8_t)(left_shift + 1 + (s == 0));
    *rs = (int8_t)(s == 0 ? 1 : -s);
}

/* Up to CHUNK values of one innermost run into out. */
static void chunk(const binary *p, const int8_t *a, const int8_t *b, int8_t *out, int32_t n)
{
    int32_t x[CHUNK], y[CHUNK], i, sa = p->sa[3], sb = p->sb[3];
    if (p->op == B_MUL) {
        for (i = 0; i < n; i++, a += sa, b += sb)
            x[i] = (*a + p->a_off) * (*b + p->b_off);
    } else {
        rescale(a, sa, n, p->a_off, p->ma, p->pa, p->rsa, x);
        rescale(b, sb, n, p->b_off, p->mb, p->pb, p->rsb, y);
        if (p->op == B_ADD)
            for (i = 0; i < n; i++)
                x[i] = efp_wadd(x[i], y[i]);
        else if (p->op == B_SUB)
            for (i = 0; i < n; i++)
                x[i] = efp_wsub(x[i], y[i]);
        else
            for (i = 0; i < n; i++) {
                int32_t d = efp_wsub(x[i], y[i]);
                x[i] = efp_wmul(d, d);
            }
    }
    efp_output_run(&p->q, x, n, 0, out);
}

void efp_eval_binary(const void *params)
{
    const binary *p = params;
    int32_t i0, i1, i2, i3, n, n3 = p->n[3];
    int8_t *out = p->out;
    for (i0 = 0; i0 < p->n[0]; i0++)
        for (i1 = 0; i1 < p->n[1]; i1++)
            for (i2 = 0; i2 < p->n[2]; i2++) {
                const int8_t *a = p->a + i0 * p->sa[0] + i1 * p->sa[1] + i2 * p->sa[2];
                const int8_t *b = p->b + i0 * p->sb[0] + i1 * p->sb[1] + i2 * p->sb[2];
                for (i3 = 0; i3 < n3; i3 += n, out += n) {
                    n = n3 - i3 < CHUNK ? n3 - i3 : CHUNK;
                    chunk(p, a + i3 * p->sa[3], b + i3 * p->sb[3], out, n);
                }
            }
}

/* Broadcast shapes collapsed to at most 4 loops: merge dims that stay contiguous in both inputs. */
static int broadcast(efp_prep *c, const efp_tensor *a, const efp_tensor *b, const efp_tensor *out, binary *q)
{
    int32_t n[EFP_MAX_DIMS], sa[EFP_MAX_DIMS], sb[EFP_MAX_DIMS], da, db, ra = 1, rb = 1;
    int d, k = 0, j;
    if (a->ndim > out->ndim || b->ndim > out->ndim)
        return efp_invalid(c, "tensor shapes do not match");
    for (d = out->ndim - 1; d >= 0; d--) {
        da = d - (out->ndim - a->ndim) >= 0 ? a->dims[d - (out->ndim - a->ndim)] : 1;
        db = d - (out->ndim - b->ndim) >= 0 ? b->dims[d - (out->ndim - b->ndim)] : 1;
        if ((da != 1 && da != out->dims[d]) || (db != 1 && db != out->dims[d]) ||
            (da == 1 && db == 1 && out->dims[d] != 1))
            return efp_invalid(c, "tensor shapes do not match");
        n[d] = out->dims[d];
        sa[d] = da == 1 ? 0 : ra;
        sb[d] = db == 1 ? 0 : rb;
        ra *= da;
        rb *= db;
    }
    for (j = 0; j < 4; j++) {
        q->n[j] = 1;
        q->sa[j] = q->sb[j] = 0;
    }
    for (d = out->ndim - 1; d >= 0; d--) { /* innermost first, filling q from index 3 down */
        if (n[d] == 1)
            continue;
        if (k && q->sa[4 - k] * q->n[4 - k] == sa[d] && q->sb[4 - k] * q->n[4 - k] == sb[d]) {
            q->n[4 - k] *= n[d];
            continue;
        }
        if (k == 4)
            return efp_unsupported(c, "broadcast too complex");
        k++;
        q->n[4 - k] = n[d];
        q->sa[4 - k] = sa[d];
        q->sb[4 - k] = sb[d];
    }
    return 0;
}

int efp_prepare_binary(efp_prep *c)
{
    efp_tensor a, b, out;
    binary *p, q;
    int32_t st, s, code = efp_code(c);
    float smax;
    double r1 = 0, r2 = 0, ro;
    if ((st = efp_input(c, 0, &a)) || (st = efp_input(c, 1, &b)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &a, EFP_INT8)) || (st = efp_expect(c, &b, EFP_INT8)) ||
        (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    memset(&q, 0, sizeof q);
    if ((st = efp_activation(c, code == SQUARED_DIFFERENCE ? 0 : efp_option(c, 0, 1, 0), &out, &q.q.lo, &q.q.hi)) ||
        (st = broadcast(c, &a, &b, &out, &q)))
        return st;
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    smax = a.scale > b.scale ? a.scale : b.scale;
    q.a = efp_data(c, &a);
    q.b = efp_data(c, &b);
    q.out = efp_data(c, &out);
    q.a_off = -a.zp;
    q.b_off = -b.zp;
    if (code == MUL) {
        q.op = B_MUL;
        ro = (double)a.scale * (double)b.scale / (double)out.scale;
    } else if (code == SUB) { /* TFLM's SUB computes its multipliers in float */
        float twice = 2 * smax;
        q.op = B_SUB;
        r1 = (double)(a.scale / twice);
        r2 = (double)(b.scale / twice);
        ro = (double)(twice / ((float)(1 << 20) * out.scale));
    } else {
        double twice = (double)(2 * smax); /* exact: doubling a float */
        q.op = code == ADD ? B_ADD : B_SQDIFF;
        r1 = (double)a.scale / twice;
        r2 = (double)b.scale / twice;
        ro = code == ADD ? twice / (double)((float)(1 << 20) * out.scale)
                         : twice * twice / (double)((float)(1 << 14) * out.scale);
    }
    if (q.op != B_MUL) { /* r1, r2 <= 1/2: right shifts only */
        input_scale(r1, q.op == B_SQDIFF ? 7 : 20, &q.ma, &q.pa, &q.rsa);
        input_scale(r2, q.op == B_SQDIFF ? 7 : 20, &q.mb, &q.pb, &q.rsb);
    }
    efp_quantize_multiplier(ro, &q.mo, &s);
    q.shift = (int8_t)s;
    q.q.offset = out.zp;
    q.q.small = s <= -1 && s >= -22;
    *p = q;
    p->q.mult = &p->mo;
    p->q.shift = &p->shift;
    return 0;
}
