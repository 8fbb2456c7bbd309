/* ADD, SUB, MUL and SQUARED_DIFFERENCE (int8, with broadcasting), TFLite Micro's reference
 * arithmetic; strides and shifts are precomputed. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

enum { ADD = 0, MUL = 18, SUB = 41, SQUARED_DIFFERENCE = 99 };
enum { B_ADD, B_SUB, B_MUL, B_SQDIFF };

typedef struct {
    uint8_t op;
    int8_t act_min, act_max;
    const int8_t *a, *b;
    int8_t *out;
    int32_t n[4], sa[4], sb[4]; /* collapsed output shape and input strides (0 = broadcast) */
    int32_t a_off, b_off, out_off, left_shift, ma, mb, mo;
    int8_t rsa, rsb, lso, rso; /* input right shifts; output left and right shifts */
} binary;

void efp_eval_binary(const void *params)
{
    const binary *p = params;
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
                        x = efp_rshift(efp_srdhm_ns(x * (1 << ls), ma), rsa);
                        y = efp_rshift(efp_srdhm_ns(y * (1 << ls), mb), rsb);
                        r = op == B_ADD ? efp_wadd(x, y) : efp_wsub(x, y);
                        if (op == B_SQDIFF)
                            r = efp_wmul(r, r);
                    }
                    r = efp_rshift(efp_srdhm_ns(efp_wshl(r, p->lso), p->mo), p->rso);
                    *out++ = efp_clamp8(efp_wadd(r, p->out_off), p->act_min, p->act_max);
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
    int32_t st, m, s, code = efp_code(c);
    float smax;
    double r1 = 0, r2 = 0, ro;
    if ((st = efp_input(c, 0, &a)) || (st = efp_input(c, 1, &b)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &a, EFP_INT8)) || (st = efp_expect(c, &b, EFP_INT8)) ||
        (st = efp_expect(c, &out, EFP_INT8)))
        return st;
    memset(&q, 0, sizeof q);
    if ((st = efp_activation(c, code == SQUARED_DIFFERENCE ? 0 : efp_option(c, 0, 1, 0), &out, &q.act_min,
                             &q.act_max)) ||
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
    q.out_off = out.zp;
    if (code == MUL) {
        q.op = B_MUL;
        ro = (double)a.scale * (double)b.scale / (double)out.scale;
    } else if (code == SUB) { /* TFLM's SUB computes its multipliers in float */
        float twice = 2 * smax;
        q.op = B_SUB;
        q.left_shift = 20;
        r1 = (double)(a.scale / twice);
        r2 = (double)(b.scale / twice);
        ro = (double)(twice / ((float)(1 << 20) * out.scale));
    } else {
        double twice = (double)(2 * smax); /* exact: doubling a float */
        q.op = code == ADD ? B_ADD : B_SQDIFF;
        q.left_shift = code == ADD ? 20 : 7;
        r1 = (double)a.scale / twice;
        r2 = (double)b.scale / twice;
        ro = code == ADD ? twice / (double)((float)(1 << 20) * out.scale)
                         : twice * twice / (double)((float)(1 << 14) * out.scale);
    }
    if (q.op != B_MUL) { /* r1, r2 <= 1/2: right shifts only */
        efp_quantize_multiplier(r1, &q.ma, &s);
        q.rsa = (int8_t)-s;
        efp_quantize_multiplier(r2, &q.mb, &s);
        q.rsb = (int8_t)-s;
    }
    efp_quantize_multiplier(ro, &m, &s);
    q.mo = m;
    q.lso = (int8_t)(s > 0 ? s : 0);
    q.rso = (int8_t)(s > 0 ? 0 : -s);
    *p = q;
    return 0;
}
