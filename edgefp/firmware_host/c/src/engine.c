/* Model reader, arena planner and graph runner. init runs the same build twice: a measuring pass
 * that writes nothing (so arena_needed is exact even for a small arena), then the real pass.
 * Arena layout: [graph header, op list, op parameters][activations, greedy first-fit plan]. */
#include "engine.h"

#include <string.h>

#include "fixedpoint.h"
#include "flatbuf.h"
#include "ops.h"

#define MAX_DIMS 6
#define MAX_LIVE 48
#define ALIGN sizeof(void *)

enum { T_F32 = 0, T_I32 = 2, T_I8 = 9 };
enum {
    OP_ADD = 0, OP_AVERAGE_POOL = 1, OP_CONV = 3, OP_DWCONV = 4, OP_DEQUANTIZE = 6, OP_FC = 9,
    OP_MAX_POOL = 17, OP_MUL = 18, OP_RESHAPE = 22, OP_SOFTMAX = 25, OP_TANH = 28, OP_MEAN = 40,
    OP_PAD = 34, OP_SUB = 41, OP_SQUEEZE = 43, OP_EXPAND_DIMS = 70, OP_REDUCE_MAX = 82, OP_SQDIFF = 99,
    OP_QUANTIZE = 114,
};

/* Builtin operator names for messages: code byte, name, NUL. Codes not listed print as #code. */
static const char op_names[] =
    "\000ADD\0\001AVERAGE_POOL_2D\0\002CONCATENATION\0\003CONV_2D\0\004DEPTHWISE_CONV_2D\0"
    "\006DEQUANTIZE\0\011FULLY_CONNECTED\0\016LOGISTIC\0\021MAX_POOL_2D\0\022MUL\0\023RELU\0\025RELU6\0"
    "\026RESHAPE\0\031SOFTMAX\0\034TANH\0\040CUSTOM\0\042PAD\0\044GATHER\0\047TRANSPOSE\0\050MEAN\0"
    "\051SUB\0\052DIV\0\053SQUEEZE\0\055STRIDED_SLICE\0\057EXP\0\061SPLIT\0\065CAST\0\066PRELU\0"
    "\067MAXIMUM\0\070ARG_MAX\0\071MINIMUM\0\074PADV2\0\101SLICE\0\103TRANSPOSE_CONV\0\106EXPAND_DIMS\0"
    "\112SUM\0\122REDUCE_MAX\0\123PACK\0\130UNPACK\0\141RESIZE_NEAREST_NEIGHBOR\0\142LEAKY_RELU\0"
    "\143SQUARED_DIFFERENCE\0\162QUANTIZE\0\165HARD_SWISH\0\176BATCH_MATMUL";
static const char type_names[] =
    "FLOAT32\0FLOAT16\0INT32\0UINT8\0INT64\0STRING\0BOOL\0INT16\0COMPLEX64\0INT8\0FLOAT64";

typedef struct {
    uint32_t n_ops, n_out, in_bytes;
    void **ops;
    int8_t *in;
    int8_t **out;
    uint32_t *out_bytes;
} graph;

typedef struct {
    int32_t tensor, last;
    uint32_t off, size;
} live_t;

typedef struct {
    int32_t idx, type, ndim, dims[MAX_DIMS], zp;
    uint32_t count, bytes, scales, n_scales, qdim;
    const uint8_t *data; /* constant data in the model, NULL for activations */
    float scale;
} tinfo;

typedef struct {
    efp_engine *e;
    fb_t fb;
    uint32_t tensors, n_tensors, ops, n_ops, buffers, n_buffers, codes, n_codes, outs, n_outs;
    int32_t code; /* builtin code of the operator being prepared */
    int real;     /* second pass: the arena is big enough, write into it */
    uint8_t *base, *act;
    size_t used, peak;
    graph *g;
    int n_live;
    live_t live[MAX_LIVE];
} ctx;

/* ---- error messages ---- */

static char *num(char *buf, uint32_t v) /* buf: 12 bytes */
{
    char *p = buf + 11;
    *p = 0;
    do
        *--p = (char)('0' + v % 10);
    while (v /= 10);
    return p;
}

static const char *name_of(const char *table, size_t len, int32_t key, int keyed, char *buf)
{
    size_t i = 0;
    int32_t n = 0;
    char *p;
    while (i < len) {
        const char *s = table + i + keyed;
        if ((keyed ? (uint8_t)table[i] : n) == key)
            return s;
        i += (size_t)keyed + strlen(s) + 1;
        n++;
    }
    p = num(buf, (uint32_t)key);
    *--p = '#';
    return p;
}

static const char *op_name(int32_t code, char *buf) { return name_of(op_names, sizeof op_names, code, 1, buf); }
static const char *type_name(int32_t t, char *buf) { return name_of(type_names, sizeof type_names, t, 0, buf); }

static int fail(ctx *c, int status, const char *a, const char *b, const char *d)
{
    const char *parts[3];
    char *p = c->e->error, *end = p + EFP_ERROR_LEN - 1;
    int i;
    parts[0] = a;
    parts[1] = b;
    parts[2] = d;
    for (i = 0; i < 3; i++)
        while (parts[i] && *parts[i] && p < end)
            *p++ = *parts[i]++;
    *p = 0;
    return status;
}

static int invalid(ctx *c, const char *why) { return fail(c, EFP_INVALID_MODEL, "invalid model: ", why, 0); }

static int op_fail(ctx *c, const char *why)
{
    char buf[12];
    return fail(c, EFP_UNSUPPORTED, op_name(c->code, buf), ": ", why);
}

/* ---- arena ---- */

static void *alloc(ctx *c, size_t size)
{
    void *p = c->real ? c->base + c->used : NULL;
    c->used += (size + ALIGN - 1) / ALIGN * ALIGN;
    return p;
}

static live_t *find_live(ctx *c, int32_t t)
{
    int i;
    for (i = 0; i < c->n_live; i++)
        if (c->live[i].tensor == t)
            return &c->live[i];
    return NULL;
}

/* Lowest offset where size bytes overlap no live tensor; alias shares another tensor's memory. */
static int place(ctx *c, int32_t t, uint32_t size, int32_t last, const live_t *alias)
{
    live_t *l;
    uint32_t off = 0;
    int i;
    if (c->n_live == MAX_LIVE)
        return op_fail(c, "too many tensors alive at once");
    if (alias) {
        off = alias->off;
        size = alias->size;
    } else {
        size = (size + 3) & ~3u;
        for (i = 0; i < c->n_live; i++)
            if (off < c->live[i].off + c->live[i].size && c->live[i].off < off + size) {
                off = c->live[i].off + c->live[i].size;
                i = -1;
            }
        if (off > 0x7fffffffu - size)
            return fail(c, EFP_UNSUPPORTED, "activations above 2 GB", 0, 0);
    }
    l = &c->live[c->n_live++];
    l->tensor = t;
    l->off = off;
    l->size = size;
    l->last = last;
    if (off + size > c->peak)
        c->peak = off + size;
    return 0;
}

/* Index of the last operator (from `from` on) reading tensor t; n_ops for graph outputs. */
static int32_t last_use(ctx *c, int32_t t, uint32_t from)
{
    fb_t *f = &c->fb;
    int32_t last = (int32_t)from;
    uint32_t k, i, n, v;
    for (k = from; k < c->n_ops; k++) {
        v = fb_vec(f, fb_at(f, c->ops, k), 1, 4, &n);
        for (i = 0; i < n; i++)
            if ((int32_t)fb_rd(f, v + 4 * i, 4) == t)
                last = (int32_t)k;
    }
    for (i = 0; i < c->n_outs; i++)
        if ((int32_t)fb_rd(f, c->outs + 4 * i, 4) == t)
            last = (int32_t)c->n_ops;
    return last;
}

/* ---- tensors ---- */

static int tensor(ctx *c, int32_t idx, tinfo *t)
{
    fb_t *f = &c->fb;
    uint32_t tt, shape, n, i, q, b, len, data, esize, v;
    char buf[12];
    memset(t, 0, sizeof *t);
    t->idx = idx;
    if (idx < 0 || (uint32_t)idx >= c->n_tensors)
        return invalid(c, "index out of range");
    tt = fb_at(f, c->tensors, (uint32_t)idx);
    shape = fb_vec(f, tt, 0, 4, &n);
    if (n > MAX_DIMS)
        return fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
    t->ndim = (int32_t)n;
    t->count = 1;
    for (i = 0; i < n; i++) {
        t->dims[i] = (int32_t)fb_rd(f, shape + 4 * i, 4);
        if (t->dims[i] <= 0 || t->dims[i] > 32767 || t->count > 0x7fffffffu / (uint32_t)t->dims[i])
            return f->bad ? invalid(c, "truncated flatbuffer") : fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
        t->count *= (uint32_t)t->dims[i];
    }
    t->type = fb_int(f, tt, 1, 1, 0);
    esize = t->type == T_I8 ? 1 : t->type == T_F32 || t->type == T_I32 ? 4 : 0;
    if (!esize)
        return fail(c, EFP_UNSUPPORTED, "unsupported tensor type ", type_name(t->type, buf), 0);
    if (t->count > 0x7fffffffu / esize)
        return fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
    t->bytes = t->count * esize;
    if (fb_int(f, tt, 5, 1, 0) || fb_field(f, tt, 6) || fb_int(f, tt, 10, 4, 0))
        return fail(c, EFP_UNSUPPORTED, "variable, sparse or external tensors", 0, 0);
    v = (uint32_t)fb_int(f, tt, 2, 4, 0);
    if (v >= c->n_buffers)
        return invalid(c, "index out of range");
    b = fb_at(f, c->buffers, v);
    data = fb_vec(f, b, 0, 1, &len);
    v = fb_field(f, b, 1); /* Buffer.offset: data stored after the flatbuffer (models > 2 GB) */
    if (v && (fb_rd(f, v, 4) > 1 || fb_rd(f, v + 4, 4)))
        return fail(c, EFP_UNSUPPORTED, "tensor data outside the flatbuffer (models over 2 GB)", 0, 0);
    if (len) {
        if (len != t->bytes)
            return invalid(c, "tensor shapes do not match");
        t->data = f->b + data;
        if (esize == 4 && ((uintptr_t)t->data & 3))
            return invalid(c, "misaligned data (align the model to 4 bytes)");
    }
    q = fb_table(f, tt, 4);
    t->scales = fb_vec(f, q, 2, 4, &t->n_scales);
    if (t->n_scales) {
        v = fb_rd(f, t->scales, 4);
        memcpy(&t->scale, &v, 4);
    }
    v = fb_vec(f, q, 3, 8, &n);
    if (n)
        t->zp = (int32_t)fb_rd(f, v, 4);
    t->qdim = (uint32_t)fb_int(f, q, 6, 4, 0);
    return f->bad ? invalid(c, "truncated flatbuffer") : 0;
}

static float scale_at(ctx *c, const tinfo *t, uint32_t i)
{
    uint32_t v = fb_rd(&c->fb, t->scales + 4 * i, 4);
    float s;
    memcpy(&s, &v, 4);
    return s;
}

/* Type check; int8 tensors must carry a usable quantization. */
static int want(ctx *c, const tinfo *t, int32_t type)
{
    char buf[12], buf2[12];
    if (t->type != type)
        return fail(c, EFP_UNSUPPORTED, op_name(c->code, buf), ": unsupported tensor type ", type_name(t->type, buf2));
    if (type == T_I8 && (!t->n_scales || !(t->scale > 0) || t->zp < -128 || t->zp > 127))
        return op_fail(c, "int8 tensor without valid quantization");
    return 0;
}

/* Data of a constant or live tensor; NULL in the measuring pass. */
static void *ptr(ctx *c, const tinfo *t)
{
    live_t *l;
    if (t->data)
        return (void *)(uintptr_t)t->data;
    l = find_live(c, t->idx);
    return c->real && l ? c->act + l->off : NULL;
}

/* ---- quantization helpers (TFLite's QuantizeMultiplier & co, in double like TFLM) ---- */

static void qmul(double d, int32_t *m, int32_t *shift)
{
    uint64_t bits, q;
    int32_t e;
    memcpy(&bits, &d, 8);
    e = (int32_t)(bits >> 52 & 0x7ff);
    *m = 0;
    *shift = 0;
    if (bits >> 63 || e == 0 || e == 0x7ff) /* negative, zero, denormal, inf, NaN */
        return;
    q = ((bits & 0xfffffffffffffull) + (1ull << 52) + (1ull << 21)) >> 22; /* round(frexp * 2^31) */
    e -= 1022;
    if (q == 1ull << 31) {
        q >>= 1;
        e++;
    }
    if (e > 31) { /* absurd scales: saturate instead of shifting out of range */
        q = 0x7fffffff;
        e = 31;
    }
    if (e >= -31) {
        *m = (int32_t)q;
        *shift = e;
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

static int32_t input_radius(int bits, int32_t shift)
{
    int64_t r = (int64_t)((1 << bits) - 1) << (31 - bits);
    return shift >= 0 ? (int32_t)(r >> shift) : INT32_MAX;
}

/* CalculateActivationRangeQuantized for int8. */
static int act_range(ctx *c, int32_t fused, const tinfo *out, int8_t *lo, int8_t *hi)
{
    int32_t a = -128, b = 127, q0 = out->zp + fp_round(0.0f / out->scale);
    if (fused == 1 || fused == 3)
        a = q0;
    if (fused == 2)
        a = out->zp + fp_round(-1.0f / out->scale);
    if (fused == 2 || fused == 3)
        b = out->zp + fp_round((fused == 2 ? 1.0f : 6.0f) / out->scale);
    if (fused > 3)
        return op_fail(c, "unsupported fused activation");
    *lo = (int8_t)(a < -128 ? -128 : a > 127 ? 127 : a);
    *hi = (int8_t)(b > 127 ? 127 : b < -128 ? -128 : b);
    return 0;
}

/* Output size and padding as TFLite computes them; checks the model's output extent. */
static int padding(ctx *c, int same, int32_t in, int32_t k, int32_t s, int32_t d, int32_t out, int16_t *pad)
{
    int32_t eff = (k - 1) * d + 1, o, p;
    if (s <= 0 || d <= 0 || k <= 0 || s > 32767 || d > 32767 || k > 32767)
        return op_fail(c, "bad stride, dilation or filter size");
    o = same ? (in + s - 1) / s : (in + s - eff) / s;
    if (o != out)
        return invalid(c, "tensor shapes do not match");
    p = ((out - 1) * s + eff - in) / 2;
    *pad = (int16_t)(p > 0 ? p : 0);
    return 0;
}

/* ---- operator preparation ---- */

static int prep_conv(ctx *c, uint32_t opts, tinfo *t, int nin, void **res)
{
    int dw = c->code == OP_DWCONV, st, same = fb_int(&c->fb, opts, 0, 1, 0) == 0;
    tinfo *in = &t[0], *w = &t[1], *bias = &t[2], *out = &t[3];
    int32_t oc = out->dims[3], i, sh = fb_int(&c->fb, opts, 2, 4, 0), sw = fb_int(&c->fb, opts, 1, 4, 0);
    int32_t dh = fb_int(&c->fb, opts, dw ? 6 : 5, 4, 1), dwf = fb_int(&c->fb, opts, dw ? 5 : 4, 4, 1);
    efp_conv *p, q;
    if ((st = want(c, in, T_I8)) || (st = want(c, w, T_I8)) || (st = want(c, out, T_I8)))
        return st;
    if (in->ndim != 4 || w->ndim != 4 || out->ndim != 4 || out->dims[0] != in->dims[0])
        return invalid(c, "tensor shapes do not match");
    if (nin > 2 && bias->idx >= 0 && ((st = want(c, bias, T_I32)) || bias->count != (uint32_t)oc))
        return st ? st : invalid(c, "tensor shapes do not match");
    if (dw ? w->dims[0] != 1 || w->dims[3] != oc || oc % in->dims[3]
           : w->dims[0] != oc || in->dims[3] % w->dims[3] || oc % (in->dims[3] / w->dims[3]))
        return invalid(c, "tensor shapes do not match");
    if (w->n_scales != 1 && (w->n_scales != (uint32_t)oc || w->qdim != (dw ? 3u : 0u)))
        return op_fail(c, "unsupported filter quantization");
    memset(&q, 0, sizeof q);
    if ((st = act_range(c, fb_int(&c->fb, opts, dw ? 4 : 3, 1, 0), out, &q.act_min, &q.act_max)) ||
        (st = padding(c, same, in->dims[1], w->dims[1], sh, dh, out->dims[1], &q.pad_h)) ||
        (st = padding(c, same, in->dims[2], w->dims[2], sw, dwf, out->dims[2], &q.pad_w)))
        return st;
    p = alloc(c, sizeof *p);
    q.mult = alloc(c, 4 * (size_t)oc);
    q.shift = alloc(c, (size_t)oc);
    if (!p)
        return 0;
    q.kind = dw ? K_DWCONV : K_CONV;
    q.in = ptr(c, in);
    q.w = ptr(c, w);
    q.bias = nin > 2 ? ptr(c, bias) : NULL;
    q.out = ptr(c, out);
    q.in_off = -in->zp;
    q.out_off = out->zp;
    q.batches = (int16_t)in->dims[0];
    q.in_h = (int16_t)in->dims[1];
    q.in_w = (int16_t)in->dims[2];
    q.in_c = (int16_t)in->dims[3];
    q.out_h = (int16_t)out->dims[1];
    q.out_w = (int16_t)out->dims[2];
    q.out_c = (int16_t)oc;
    q.f_c = (int16_t)(dw ? 1 : w->dims[3]);
    q.k_h = (int16_t)w->dims[1];
    q.k_w = (int16_t)w->dims[2];
    q.s_h = (int16_t)sh;
    q.s_w = (int16_t)sw;
    q.d_h = (int16_t)dh;
    q.d_w = (int16_t)dwf;
    q.per_group = (int16_t)(oc / (in->dims[3] / q.f_c));
    for (i = 0; i < oc; i++) {
        int32_t m, s;
        qmul((double)in->scale * (double)scale_at(c, w, w->n_scales > 1 ? (uint32_t)i : 0) / (double)out->scale, &m, &s);
        q.mult[i] = m;
        q.shift[i] = (int8_t)s;
    }
    *p = q;
    *res = p;
    return 0;
}

static int prep_fc(ctx *c, uint32_t opts, tinfo *t, int nin, void **res)
{
    tinfo *in = &t[0], *w = &t[1], *bias = &t[2], *out = &t[3];
    int32_t i, units = w->dims[0], depth = w->dims[1], per = w->n_scales > 1, st;
    efp_fc *p, q;
    if ((st = want(c, in, T_I8)) || (st = want(c, w, T_I8)) || (st = want(c, out, T_I8)))
        return st;
    if (fb_int(&c->fb, opts, 1, 1, 0))
        return op_fail(c, "unsupported weights format");
    if (w->ndim != 2 || in->count % (uint32_t)depth || out->count != in->count / (uint32_t)depth * (uint32_t)units)
        return invalid(c, "tensor shapes do not match");
    if (nin > 2 && bias->idx >= 0 && ((st = want(c, bias, T_I32)) || bias->count != (uint32_t)units))
        return st ? st : invalid(c, "tensor shapes do not match");
    if (per && (w->n_scales != (uint32_t)units || w->qdim != 0))
        return op_fail(c, "unsupported filter quantization");
    memset(&q, 0, sizeof q);
    if ((st = act_range(c, fb_int(&c->fb, opts, 0, 1, 0), out, &q.act_min, &q.act_max)))
        return st;
    p = alloc(c, sizeof *p);
    q.mult = alloc(c, 4 * (size_t)(per ? units : 1));
    q.shift = alloc(c, (size_t)(per ? units : 1));
    if (!p)
        return 0;
    q.kind = K_FC;
    q.per_channel = (int8_t)per;
    q.in = ptr(c, in);
    q.w = ptr(c, w);
    q.bias = nin > 2 ? ptr(c, bias) : NULL;
    q.out = ptr(c, out);
    q.in_off = -in->zp;
    q.w_off = -w->zp;
    q.out_off = out->zp;
    q.batches = (int32_t)(in->count / (uint32_t)depth);
    q.depth = depth;
    q.units = units;
    for (i = 0; i < (per ? units : 1); i++) {
        int32_t m, s;
        /* per channel: double products; per tensor: float product (GetQuantizedConvolutionMultipler) */
        double r = per ? (double)in->scale * (double)scale_at(c, w, (uint32_t)i) : (double)(in->scale * w->scale);
        qmul(r / (double)out->scale, &m, &s);
        q.mult[i] = m;
        q.shift[i] = (int8_t)s;
    }
    *p = q;
    *res = p;
    return 0;
}

static int prep_pool(ctx *c, uint32_t opts, tinfo *t, void **res)
{
    tinfo *in = &t[0], *out = &t[3];
    int32_t sw = fb_int(&c->fb, opts, 1, 4, 0), sh = fb_int(&c->fb, opts, 2, 4, 0);
    int32_t fw = fb_int(&c->fb, opts, 3, 4, 0), fh = fb_int(&c->fb, opts, 4, 4, 0), st;
    int same = fb_int(&c->fb, opts, 0, 1, 0) == 0;
    efp_pool *p, q;
    if ((st = want(c, in, T_I8)) || (st = want(c, out, T_I8)))
        return st;
    if (in->ndim != 4 || out->ndim != 4 || out->dims[0] != in->dims[0] || out->dims[3] != in->dims[3])
        return invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    if ((st = act_range(c, fb_int(&c->fb, opts, 5, 1, 0), out, &q.act_min, &q.act_max)) ||
        (st = padding(c, same, in->dims[1], fh, sh, 1, out->dims[1], &q.pad_h)) ||
        (st = padding(c, same, in->dims[2], fw, sw, 1, out->dims[2], &q.pad_w)))
        return st;
    if (!(p = alloc(c, sizeof *p)))
        return 0;
    q.kind = c->code == OP_MAX_POOL ? K_MAXPOOL : K_AVGPOOL;
    q.in = ptr(c, in);
    q.out = ptr(c, out);
    q.batches = (int16_t)in->dims[0];
    q.in_h = (int16_t)in->dims[1];
    q.in_w = (int16_t)in->dims[2];
    q.c = (int16_t)in->dims[3];
    q.out_h = (int16_t)out->dims[1];
    q.out_w = (int16_t)out->dims[2];
    q.f_h = (int16_t)fh;
    q.f_w = (int16_t)fw;
    q.s_h = (int16_t)sh;
    q.s_w = (int16_t)sw;
    *p = q;
    *res = p;
    return 0;
}

/* Broadcast shapes collapsed to at most 4 loops: merge dims that stay contiguous in both inputs. */
static int broadcast(ctx *c, const tinfo *a, const tinfo *b, const tinfo *out, efp_binary *q)
{
    int32_t n[MAX_DIMS], sa[MAX_DIMS], sb[MAX_DIMS], da, db, ra = 1, rb = 1;
    int d, k = 0, j;
    if (a->ndim > out->ndim || b->ndim > out->ndim)
        return invalid(c, "tensor shapes do not match");
    for (d = out->ndim - 1; d >= 0; d--) {
        da = d - (out->ndim - a->ndim) >= 0 ? a->dims[d - (out->ndim - a->ndim)] : 1;
        db = d - (out->ndim - b->ndim) >= 0 ? b->dims[d - (out->ndim - b->ndim)] : 1;
        if ((da != 1 && da != out->dims[d]) || (db != 1 && db != out->dims[d]) || (da == 1 && db == 1 && out->dims[d] != 1))
            return invalid(c, "tensor shapes do not match");
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
            return op_fail(c, "broadcast too complex");
        k++;
        q->n[4 - k] = n[d];
        q->sa[4 - k] = sa[d];
        q->sb[4 - k] = sb[d];
    }
    return 0;
}

static int prep_binary(ctx *c, uint32_t opts, tinfo *t, void **res)
{
    tinfo *a = &t[0], *b = &t[1], *out = &t[3];
    efp_binary *p, q;
    int32_t st, m, s;
    float smax = a->scale > b->scale ? a->scale : b->scale;
    double r1 = 0, r2 = 0, ro;
    if ((st = want(c, a, T_I8)) || (st = want(c, b, T_I8)) || (st = want(c, out, T_I8)))
        return st;
    memset(&q, 0, sizeof q);
    if ((st = act_range(c, c->code == OP_SQDIFF ? 0 : fb_int(&c->fb, opts, 0, 1, 0), out, &q.act_min, &q.act_max)) ||
        (st = broadcast(c, a, b, out, &q)))
        return st;
    if (!(p = alloc(c, sizeof *p)))
        return 0;
    q.kind = K_BINARY;
    q.a = ptr(c, a);
    q.b = ptr(c, b);
    q.out = ptr(c, out);
    q.a_off = -a->zp;
    q.b_off = -b->zp;
    q.out_off = out->zp;
    if (c->code == OP_MUL) {
        q.op = B_MUL;
        ro = (double)a->scale * (double)b->scale / (double)out->scale;
    } else if (c->code == OP_SUB) { /* TFLM's SUB computes its multipliers in float */
        float twice = 2 * smax;
        q.op = B_SUB;
        q.left_shift = 20;
        r1 = (double)(a->scale / twice);
        r2 = (double)(b->scale / twice);
        ro = (double)(twice / ((float)(1 << 20) * out->scale));
    } else {
        double twice = (double)(2 * smax); /* exact: doubling a float */
        q.op = c->code == OP_ADD ? B_ADD : B_SQDIFF;
        q.left_shift = c->code == OP_ADD ? 20 : 7;
        r1 = (double)a->scale / twice;
        r2 = (double)b->scale / twice;
        ro = c->code == OP_ADD ? twice / (double)((float)(1 << 20) * out->scale)
                               : twice * twice / (double)((float)(1 << 14) * out->scale);
    }
    if (q.op != B_MUL) { /* r1, r2 <= 1/2: right shifts only */
        qmul(r1, &q.ma, &s);
        q.rsa = (int8_t)-s;
        qmul(r2, &q.mb, &s);
        q.rsb = (int8_t)-s;
    }
    qmul(ro, &m, &s);
    q.mo = m;
    q.lso = (int8_t)(s > 0 ? s : 0);
    q.rso = (int8_t)(s > 0 ? 0 : -s);
    *p = q;
    *res = p;
    return 0;
}

static int prep_mean(ctx *c, tinfo *t, void **res)
{
    tinfo *in = &t[0], *axis = &t[1], *out = &t[3];
    efp_mean *p, q;
    int32_t st, i, a, sh;
    if ((st = want(c, in, T_I8)) || (st = want(c, out, T_I8)) || (st = want(c, axis, T_I32)))
        return st;
    if (!axis->data)
        return op_fail(c, "axis must be constant");
    memset(&q, 0, sizeof q);
    q.count = 1;
    for (i = 0; i < (int32_t)axis->count; i++) {
        memcpy(&a, axis->data + 4 * i, 4);
        a += a < 0 ? in->ndim : 0;
        if (a < 0 || a >= in->ndim)
            return invalid(c, "bad axis");
        if (!(q.reduce_mask >> a & 1))
            q.count *= in->dims[a];
        q.reduce_mask |= (uint8_t)(1 << a);
    }
    if (in->ndim == 0 || (uint64_t)out->count * (uint32_t)q.count != in->count)
        return invalid(c, "tensor shapes do not match");
    /* reduced axes (of size > 1) in one run: walk in[outer][count][inner] */
    q.inner = 1;
    for (i = in->ndim - 1, a = 0; i >= 0; i--) { /* a: 0 inner axes, 1 the run, 2 outer axes */
        if (in->dims[i] == 1)
            continue;
        if (q.reduce_mask >> i & 1) {
            if (a == 2)
                q.inner = 0; /* a second run: general walk */
            a = a ? a : 1;
        } else if (a) {
            a = 2;
        } else {
            q.inner *= in->dims[i];
        }
    }
    if (c->code == OP_REDUCE_MAX && (in->scale != out->scale || in->zp != out->zp))
        return op_fail(c, "input and output must share scale and zero point");
    if (!(p = alloc(c, sizeof *p)))
        return 0;
    q.kind = c->code == OP_REDUCE_MAX ? K_REDUCE_MAX : K_MEAN;
    q.in = ptr(c, in);
    q.out = ptr(c, out);
    q.ndim = (uint8_t)in->ndim;
    memcpy(q.dims, in->dims, sizeof q.dims);
    q.out_count = (int32_t)out->count;
    q.in_zp = in->zp;
    q.out_zp = out->zp;
    qmul((double)in->scale / (double)out->scale, &q.mult, &q.shift);
    /* fold 1/count into the multiplier as QuantizedMeanOrSum does */
    sh = 31 - __builtin_clz((uint32_t)q.count);
    sh = sh < 31 + q.shift ? sh : 31 + q.shift;
    q.mult = (int32_t)div64((uint64_t)q.mult << sh, (uint32_t)q.count);
    q.shift -= sh;
    *p = q;
    *res = p;
    return 0;
}

static int prep_pad(ctx *c, tinfo *t, void **res)
{
    tinfo *in = &t[0], *pads = &t[1], *out = &t[3];
    efp_pad *p, q;
    int32_t st, d, before, after;
    if ((st = want(c, in, T_I8)) || (st = want(c, out, T_I8)) || (st = want(c, pads, T_I32)))
        return st;
    if (!pads->data)
        return op_fail(c, "paddings must be constant");
    if (in->ndim < 1 || in->ndim != out->ndim || pads->count != 2 * (uint32_t)in->ndim)
        return invalid(c, "tensor shapes do not match");
    if (in->scale != out->scale || in->zp != out->zp)
        return op_fail(c, "input and output must share scale and zero point");
    memset(&q, 0, sizeof q);
    for (d = 0; d < in->ndim; d++) {
        memcpy(&before, pads->data + 8 * d, 4);
        memcpy(&after, pads->data + 8 * d + 4, 4);
        if (before < 0 || after < 0 || (int64_t)in->dims[d] + before + after != out->dims[d])
            return invalid(c, "tensor shapes do not match");
        q.before[d] = before;
    }
    if (!(p = alloc(c, sizeof *p)))
        return 0;
    q.kind = K_PAD;
    q.ndim = (uint8_t)in->ndim;
    q.value = (int8_t)out->zp;
    memcpy(q.in_dims, in->dims, sizeof q.in_dims);
    memcpy(q.out_dims, out->dims, sizeof q.out_dims);
    q.in = ptr(c, in);
    q.out = ptr(c, out);
    *p = q;
    *res = p;
    return 0;
}

static int prep_unary(ctx *c, uint32_t opts, tinfo *t, void **res)
{
    tinfo *in = &t[0], *out = &t[3];
    efp_unary *p, q;
    int32_t st, i;
    int8_t *lut;
    memset(&q, 0, sizeof q);
    if (c->code == OP_QUANTIZE && in->type == T_F32)
        q.kind = K_QUANT_F32;
    else if ((st = want(c, in, T_I8)))
        return st;
    if ((st = want(c, out, c->code == OP_DEQUANTIZE ? T_F32 : T_I8)))
        return st;
    if (in->count != out->count || in->ndim < 1)
        return invalid(c, "tensor shapes do not match");
    q.n = (int32_t)in->count;
    q.in_zp = in->zp;
    q.out_zp = out->zp;
    if (c->code == OP_SOFTMAX) {
        int32_t bits = fb_int(&c->fb, opts, 0, 4, 0);
        uint64_t bits64;
        float beta_f;
        double beta;
        memcpy(&beta_f, &bits, 4);
        beta = (double)beta_f * (double)in->scale * (double)(1 << 26);
        if (out->zp != -128 || out->scale != 1.0f / 256)
            return op_fail(c, "output must have scale 1/256, zero point -128");
        memcpy(&bits64, &beta, 8);
        if (bits64 > 0x41dfffffffc00000ull && !(bits64 >> 63)) /* min(beta, 2^31 - 1), compared as bits */
            beta = 2147483647.0;
        qmul(beta, &q.mult, &q.shift);
        if (q.shift < 1)
            return op_fail(c, "input scale times beta too small");
        q.kind = K_SOFTMAX;
        q.depth = in->dims[in->ndim - 1];
        q.radius = -input_radius(5, q.shift);
    } else if (c->code == OP_TANH) {
        q.kind = K_TANH;
        qmul((double)in->scale * (double)(1 << 27), &q.mult, &q.shift);
        q.radius = input_radius(4, q.shift);
    } else if (c->code == OP_DEQUANTIZE) {
        q.kind = K_DEQUANT;
        q.scale = in->scale;
    } else if (q.kind == K_QUANT_F32) {
        q.scale = out->scale;
    } else {
        q.kind = K_REQUANT;
        qmul((double)in->scale / (double)out->scale, &q.mult, &q.shift);
    }
    p = alloc(c, sizeof *p);
    lut = q.kind == K_TANH || q.kind == K_REQUANT ? alloc(c, 256) : NULL;
    if (!p)
        return 0;
    if (lut) { /* int8 -> int8: run the kernel once on every input value, keep the results */
        for (i = 0; i < 256; i++)
            lut[i] = (int8_t)(i - 128);
        q.in = q.out = lut;
        q.n = 256;
        efp_op_run(&q);
        q.lut = lut;
        q.n = (int32_t)in->count;
    }
    q.in = ptr(c, in);
    q.out = ptr(c, out);
    *p = q;
    *res = p;
    return 0;
}

/* ---- graph ---- */

static int prep_op(ctx *c, uint32_t k, void **res)
{
    fb_t *f = &c->fb;
    uint32_t op = fb_at(f, c->ops, k), oc, ins, outs, nin, nout, opts, i;
    int32_t code, st;
    tinfo t[4];
    char buf[12];
    oc = (uint32_t)fb_int(f, op, 0, 4, 0);
    if (oc >= c->n_codes)
        return invalid(c, "index out of range");
    oc = fb_at(f, c->codes, oc);
    code = fb_int(f, oc, 3, 4, 0);
    st = fb_int(f, oc, 0, 1, 0);
    c->code = code = code > st ? code : st;
    ins = fb_vec(f, op, 1, 4, &nin);
    outs = fb_vec(f, op, 2, 4, &nout);
    opts = fb_table(f, op, 4);
    if (f->bad)
        return invalid(c, "truncated flatbuffer");
    switch (code) {
    case OP_ADD: case OP_AVERAGE_POOL: case OP_CONV: case OP_DWCONV: case OP_DEQUANTIZE: case OP_FC:
    case OP_MAX_POOL: case OP_MUL: case OP_RESHAPE: case OP_SOFTMAX: case OP_TANH: case OP_MEAN:
    case OP_SUB: case OP_SQUEEZE: case OP_EXPAND_DIMS: case OP_SQDIFF: case OP_QUANTIZE: case OP_PAD:
    case OP_REDUCE_MAX:
        break;
    default:
        return fail(c, EFP_UNSUPPORTED, "unsupported operator ", op_name(code, buf), 0);
    }
    if (nout != 1 || nin < 1 || nin > 3)
        return op_fail(c, "unexpected number of inputs or outputs");
    for (i = 0; i < 3; i++) {
        int32_t idx = i < nin ? (int32_t)fb_rd(f, ins + 4 * i, 4) : -1;
        memset(&t[i], 0, sizeof t[i]);
        t[i].idx = -1;
        if (idx >= 0 && (st = tensor(c, idx, &t[i])))
            return st;
        if (idx >= 0 && !t[i].data && !find_live(c, idx))
            return invalid(c, "tensor read before written, or written twice");
    }
    if ((st = tensor(c, (int32_t)fb_rd(f, outs, 4), &t[3])))
        return st;
    if (t[3].data || find_live(c, t[3].idx))
        return invalid(c, "tensor read before written, or written twice");
    if (code == OP_RESHAPE || code == OP_SQUEEZE || code == OP_EXPAND_DIMS) {
        /* pure shape change: the output shares the input's memory */
        if (!find_live(c, t[0].idx) || t[0].bytes != t[3].bytes || t[0].type != t[3].type)
            return op_fail(c, "input must be computed and of the output's size");
        return place(c, t[3].idx, 0, last_use(c, t[3].idx, k), find_live(c, t[0].idx));
    }
    if (t[0].idx < 0)
        return op_fail(c, "missing input");
    if ((st = place(c, t[3].idx, t[3].bytes, last_use(c, t[3].idx, k), NULL)))
        return st;
    switch (code) {
    case OP_CONV:
    case OP_DWCONV: return nin < 2 ? op_fail(c, "missing input") : prep_conv(c, opts, t, (int)nin, res);
    case OP_FC: return nin < 2 ? op_fail(c, "missing input") : prep_fc(c, opts, t, (int)nin, res);
    case OP_AVERAGE_POOL:
    case OP_MAX_POOL: return prep_pool(c, opts, t, res);
    case OP_MEAN:
    case OP_REDUCE_MAX: return nin < 2 ? op_fail(c, "missing input") : prep_mean(c, t, res);
    case OP_PAD: return nin != 2 ? op_fail(c, "needs input and paddings") : prep_pad(c, t, res);
    case OP_ADD: case OP_SUB: case OP_MUL:
    case OP_SQDIFF: return nin < 2 ? op_fail(c, "missing input") : prep_binary(c, opts, t, res);
    default: return prep_unary(c, opts, t, res);
    }
}

static int build(ctx *c)
{
    fb_t *f = &c->fb;
    uint32_t model, subgraphs, n, ins, k, i;
    int32_t st;
    tinfo t;
    graph *g;
    c->used = c->peak = 0;
    c->n_live = 0;
    model = (uint32_t)f->b[0] | (uint32_t)f->b[1] << 8 | (uint32_t)f->b[2] << 16 | (uint32_t)f->b[3] << 24;
    if (model >= f->n)
        return invalid(c, "index out of range");
    c->codes = fb_vec(f, model, 1, 4, &c->n_codes);
    subgraphs = fb_vec(f, model, 2, 4, &n);
    c->buffers = fb_vec(f, model, 4, 4, &c->n_buffers);
    if (!n)
        return invalid(c, "no subgraph");
    model = fb_at(f, subgraphs, 0);
    c->tensors = fb_vec(f, model, 0, 4, &c->n_tensors);
    ins = fb_vec(f, model, 1, 4, &n);
    c->outs = fb_vec(f, model, 2, 4, &c->n_outs);
    c->ops = fb_vec(f, model, 3, 4, &c->n_ops);
    if (f->bad)
        return invalid(c, "truncated flatbuffer");
    if (n != 1 || !c->n_outs)
        return fail(c, EFP_UNSUPPORTED, "model must have one input and an output", 0, 0);
    g = c->g = alloc(c, sizeof *g);
    if (g) {
        g->ops = alloc(c, c->n_ops * sizeof(void *));
        g->out = alloc(c, c->n_outs * sizeof(int8_t *));
        g->out_bytes = alloc(c, c->n_outs * 4);
        g->n_ops = 0;
        g->n_out = c->n_outs;
    } else {
        alloc(c, c->n_ops * sizeof(void *));
        alloc(c, c->n_outs * sizeof(int8_t *));
        alloc(c, c->n_outs * 4);
    }
    if ((st = tensor(c, (int32_t)fb_rd(f, ins, 4), &t)))
        return st;
    if ((t.type != T_I8 && t.type != T_F32) || t.data)
        return fail(c, EFP_UNSUPPORTED, "model input and outputs must be int8 or float32", 0, 0);
    if ((st = place(c, t.idx, t.bytes, last_use(c, t.idx, 0), NULL)))
        return st;
    if (g) {
        g->in = ptr(c, &t);
        g->in_bytes = t.bytes;
    }
    for (k = 0; k < c->n_ops; k++) {
        void *op = NULL;
        for (i = 0; i < (uint32_t)c->n_live;) /* free tensors no longer read */
            if (c->live[i].last < (int32_t)k)
                c->live[i] = c->live[--c->n_live];
            else
                i++;
        if ((st = prep_op(c, k, &op)))
            return st;
        if (g && op)
            g->ops[g->n_ops++] = op;
    }
    for (i = 0; i < c->n_outs; i++) {
        if ((st = tensor(c, (int32_t)fb_rd(f, c->outs + 4 * i, 4), &t)))
            return st;
        if (t.type != T_I8 && t.type != T_F32)
            return fail(c, EFP_UNSUPPORTED, "model input and outputs must be int8 or float32", 0, 0);
        if (!t.data && !find_live(c, t.idx))
            return invalid(c, "tensor read before written, or written twice");
        if (g) {
            g->out[i] = ptr(c, &t);
            g->out_bytes[i] = t.bytes;
        }
    }
    return f->bad ? invalid(c, "truncated flatbuffer") : 0;
}

int efp_engine_init(efp_engine *e, const uint8_t *model, size_t model_len, uint8_t *arena, size_t arena_len)
{
    ctx c;
    size_t pad = (ALIGN - (uintptr_t)arena % ALIGN) % ALIGN;
    int st;
    e->model = model;
    e->model_len = model_len;
    e->arena = arena;
    e->arena_len = arena_len;
    e->arena_used = e->arena_needed = 0;
    e->graph = NULL;
    e->error[0] = 0;
    memset(&c, 0, sizeof c);
    c.e = e;
    c.fb.b = model;
    c.fb.n = (uint32_t)model_len;
    c.base = arena ? arena + pad : NULL;
    if (!model || model_len < 8 || model_len > 0x7fffffff || memcmp(model + 4, "TFL3", 4))
        return invalid(&c, "not a TFLite flatbuffer");
    if ((st = build(&c)))
        return st;
    e->arena_needed = pad + c.used + c.peak;
    if (!arena || e->arena_needed > arena_len) {
        char buf[12];
        return fail(&c, EFP_ARENA_TOO_SMALL, "arena too small: model needs ", num(buf, (uint32_t)e->arena_needed), " bytes");
    }
    c.act = c.base + c.used;
    c.real = 1;
    if ((st = build(&c)))
        return st;
    e->arena_used = e->arena_needed;
    e->graph = c.g;
    return EFP_OK;
}

int efp_engine_invoke(efp_engine *e)
{
    const graph *g = e->graph;
    uint32_t i;
    if (!g) {
        memcpy(e->error, "engine not initialised", 23);
        return EFP_EVAL_FAILED;
    }
    for (i = 0; i < g->n_ops; i++)
        efp_op_run(g->ops[i]);
    return EFP_OK;
}

int8_t *efp_engine_input(efp_engine *e, size_t *bytes)
{
    const graph *g = e->graph;
    if (bytes)
        *bytes = g ? g->in_bytes : 0;
    return g ? g->in : NULL;
}

size_t efp_engine_output_count(const efp_engine *e) { return e->graph ? ((const graph *)e->graph)->n_out : 0; }

const int8_t *efp_engine_output(efp_engine *e, size_t index, size_t *bytes)
{
    const graph *g = e->graph;
    if (!g || index >= g->n_out) {
        if (bytes)
            *bytes = 0;
        return NULL;
    }
    if (bytes)
        *bytes = g->out_bytes[index];
    return g->out[index];
}
