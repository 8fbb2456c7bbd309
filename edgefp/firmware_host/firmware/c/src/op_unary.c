/* Element-wise operators of one input. int8 -> int8 ones (TANH, LOGISTIC, RELU, RELU6, LEAKY_RELU,
 * HARD_SWISH, a requantising QUANTIZE) compute each value with TFLite Micro's reference arithmetic.
 * TANH and LOGISTIC (hundreds of instructions a value) compute it once for each of the 256 values an
 * int8 input can take when the model is set up, into a table in persistent memory, and look each
 * element up. The others compute element by element for tensors of up to 256 values, else the 256
 * values into a table in scratch memory (an arena buffer only while the operator runs: no more than
 * the tensor itself), then a lookup per element. QUANTIZE from float32 and DEQUANTIZE to float32 run
 * element by element. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

enum {
    DEQUANTIZE = 6,
    LOGISTIC = 14,
    RELU = 19,
    RELU6 = 21,
    TANH = 28,
    QUANTIZE = 114,
    HARD_SWISH = 117,
    LEAKY_RELU = 98,
};

/* ---- the reference arithmetic of each int8 operator ---- */

typedef struct {
    int32_t code, in_zp, out_zp, m1, s1, m2, s2, radius, lo, hi;
} spec;

/* gemmlowp's and TFLite's int16 helpers of HardSwish */
static int16_t srdhm16(int16_t a, int16_t b)
{
    int32_t ab = (int32_t)a * b;
    if (a == b && a == INT16_MIN)
        return INT16_MAX;
    return (int16_t)((ab + (ab >= 0 ? (1 << 14) : 1 - (1 << 14))) / (1 << 15));
}

static int16_t sdhm16(int16_t a, int16_t b)
{
    if (a == b && a == INT16_MIN)
        return INT16_MAX;
    return (int16_t)((int32_t)a * b / (1 << 15));
}

static int16_t sat_shl16(int16_t v, int amount)
{
    int64_t r = (int64_t)v * (1 << amount);
    return (int16_t)(r > INT16_MAX ? INT16_MAX : r < INT16_MIN ? INT16_MIN : r);
}

static int16_t rshift16(int16_t x, int e)
{
    int16_t mask = (int16_t)((1ll << e) - 1), threshold = (int16_t)((mask >> 1) + (x < 0));
    return (int16_t)((x >> e) + ((int16_t)(x & mask) > threshold));
}

static int16_t down16(int32_t m) /* DownScaleInt32ToInt16Multiplier */
{
    return m >= INT32_MAX - (1 << 15) ? INT16_MAX : (int16_t)((m + (1 << 15)) >> 16);
}

static int32_t hard_swish(const spec *s, int32_t q)
{
    int16_t hires = (int16_t)((int16_t)(q - s->in_zp) * (1 << 7)), preshift = srdhm16(hires, (int16_t)s->m1), r = hires;
    int16_t out;
    if (s->s2 > 0)
        r = sat_shl16(r, s->s2 - 1);
    r = srdhm16(r, (int16_t)s->m2);
    if (s->s2 > 0)
        r = sat_shl16(r, 1);
    if (s->s2 < 0)
        r = rshift16(r, -s->s2);
    r = (int16_t)((r + (1 << 15)) >> 1);
    out = rshift16(sdhm16(r, preshift), -s->s1);
    return (int16_t)(out + s->out_zp);
}

static int8_t entry(const spec *s, int32_t q)
{
    int32_t v = q - s->in_zp;
    switch (s->code) {
        case TANH:
        case LOGISTIC:
            if (v <= -s->radius)
                return -128;
            if (v >= s->radius)
                return 127;
            v = efp_mbqm_any(v, s->m1, s->s1);
            v = s->code == TANH ? efp_rshift(efp_tanh(v, 4), 24) : efp_rshift(efp_logistic(v, 4), 23) - 128;
            break;
        case RELU6:
            v = q;
            break;
        case LEAKY_RELU:
            v = s->out_zp + (v >= 0 ? efp_mbqm_any(v, s->m1, s->s1) : efp_mbqm_any(v, s->m2, s->s2));
            break;
        case HARD_SWISH:
            v = hard_swish(s, q);
            break;
        default: /* RELU, QUANTIZE */
            v = efp_wadd(efp_mbqm_any(v, s->m1, s->s1), s->out_zp);
    }
    return efp_clamp8(v, s->lo, s->hi);
}

typedef struct {
    const void *in;
    void *out;
    int32_t n, zp;
    float scale;
    int8_t *table;   /* the 256 results, indexed by input + 128; NULL: element by element */
    int32_t refresh; /* the table is scratch memory: computed at every run */
    spec s;
} unary;

void efp_eval_unary(const void *params)
{
    const unary *p = params;
    const int8_t *in = p->in;
    int8_t *out = p->out, *table = p->table;
    int32_t i, n = p->n;
    if (!table) {
        for (i = 0; i < n; i++)
            out[i] = entry(&p->s, in[i]);
        return;
    }
    for (i = 0; p->refresh && i < 256; i++)
        table[i] = entry(&p->s, i - 128);
    table += 128;
    for (i = 0; i < n; i++)
        out[i] = table[in[i]];
}

static void quantize_f32(const void *params)
{
    const unary *p = params;
    const float *in = p->in;
    int8_t *out = p->out;
    int32_t i;
    for (i = 0; i < p->n; i++)
        out[i] = efp_clamp8(efp_roundf(in[i] / p->scale) + p->zp, -128, 127);
}

static void dequantize(const void *params)
{
    const unary *p = params;
    const int8_t *in = p->in;
    float *out = p->out;
    int32_t i;
    for (i = 0; i < p->n; i++)
        out[i] = p->scale * (float)(in[i] - p->zp);
}

/* The multipliers and bounds of an int8 operator; 0, or a refusal. */
static int table_spec(efp_prep *c, const efp_tensor *in, const efp_tensor *out, spec *s)
{
    double d = (double)in->scale / (double)out->scale;
    memset(s, 0, sizeof *s);
    s->code = efp_code(c);
    s->in_zp = in->zp;
    s->out_zp = out->zp;
    s->lo = -128;
    s->hi = 127;
    if (s->code == TANH || s->code == LOGISTIC) {
        efp_frexp_multiplier((double)in->scale * (double)(1 << 27), &s->m1, &s->s1);
        s->radius = efp_input_radius(4, s->s1);
        if (s->code == LOGISTIC && out->zp != -128)
            return efp_unsupported(c, "output zero point must be -128");
    } else if (s->code == RELU6) {
        s->lo = in->zp;
        s->hi = efp_roundf(6.0f / in->scale) + in->zp;
        s->hi = s->hi < -128 ? -128 : s->hi > 127 ? 127 : s->hi;
    } else if (s->code == LEAKY_RELU) {
        float alpha = efp_option_f32(c, 0, 0.0f);
        efp_quantize_multiplier((double)(in->scale / out->scale), &s->m1, &s->s1);
        efp_quantize_multiplier((double)(in->scale * alpha / out->scale), &s->m2, &s->s2);
    } else if (s->code == HARD_SWISH) {
        float hires = (1.0f / 128.0f) * in->scale;
        efp_quantize_multiplier((double)(hires / out->scale), &s->m1, &s->s1);
        efp_quantize_multiplier((double)(hires / (3.0f / 32768.0f)), &s->m2, &s->s2);
        s->m1 = down16(s->m1);
        s->m2 = down16(s->m2);
        if (s->s1 > 0)
            return efp_unsupported(c, "output scale too small for the input's");
    } else {
        efp_quantize_multiplier(d, &s->m1, &s->s1);
        if (s->code == RELU)
            s->lo = out->zp > -128 ? out->zp : -128;
    }
    return 0;
}

int efp_prepare_unary(efp_prep *c)
{
    efp_tensor in, out;
    unary *p, q;
    int32_t st, code = efp_code(c), i;
    int8_t *table = NULL;
    spec s;
    if ((st = efp_input(c, 0, &in)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &in, code == QUANTIZE && in.type == EFP_FLOAT32 ? EFP_FLOAT32 : EFP_INT8)) ||
        (st = efp_expect(c, &out, code == DEQUANTIZE ? EFP_FLOAT32 : EFP_INT8)))
        return st;
    if (in.count != out.count)
        return efp_invalid(c, "tensor shapes do not match");
    if (in.type == EFP_INT8 && out.type == EFP_INT8) {
        if ((st = table_spec(c, &in, &out, &s)))
            return st;
        efp_in_place(c, &out, &in);
    }
    memset(&q, 0, sizeof q);
    p = efp_params(c, sizeof *p);
    if (in.type == EFP_INT8 && out.type == EFP_INT8 && (code == TANH || code == LOGISTIC)) {
        if ((table = efp_persist(c, 256)) != NULL)
            for (i = 0; i < 256; i++)
                table[i] = entry(&s, i - 128);
    } else if (in.type == EFP_INT8 && out.type == EFP_INT8 && in.count > 256) {
        table = efp_scratch(c, 256);
        q.refresh = 1;
    }
    if (!p)
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.n = (int32_t)in.count;
    if (in.type == EFP_INT8 && out.type == EFP_INT8) {
        q.s = s;
        q.table = table;
    } else if (code == DEQUANTIZE) {
        q.zp = in.zp;
        q.scale = in.scale;
        efp_set_eval(c, dequantize);
    } else {
        q.zp = out.zp;
        q.scale = out.scale;
        efp_set_eval(c, quantize_f32);
    }
    *p = q;
    return 0;
}
