/* Model reader, arena planner and graph runner. init walks the graph twice: a measuring pass that
 * writes nothing (operators size their memory; every buffer's lifetime is recorded and the planner
 * places them), then the real pass into the arena, so arena_needed is exact even for a small arena.
 * Arena layout: [graph header, steps, inputs and outputs, operator parameters][activations]. */
#include "engine.h"

#include <string.h>

#include "fixedpoint.h"
#include "flatbuf.h"
#include "kernel.h"
#include "plan.h"
#include "simd.h"

#define ALIGN  sizeof(void *)
#define CUSTOM 32 /* BuiltinOperator CUSTOM: named by its custom code */

typedef struct {
    efp_eval_fn eval;
    const void *params;
} step;

typedef struct {
    uint32_t n_steps, n_in, n_out;
    step *steps;
    efp_io *io; /* n_in inputs, then n_out outputs */
} graph;

struct efp_prep {
    efp_engine *e;
    efp_fb fb;
    uint32_t tensors, n_tensors, ops, n_ops, buffers, n_buffers, codes, n_codes, ins, n_ins, outs, n_outs;
    uint32_t k, op_ins, n_op_ins, op_outs, n_op_outs, opts; /* the operator being prepared */
    int32_t code;
    int real;   /* second pass: the arena is big enough, write into it */
    int status; /* a failure of a helper that returns memory (efp_scratch) */
    uint8_t *base, *act;
    size_t used; /* persistent bytes so far */
    graph *g;
    step *step; /* the operator's step (real pass) */
    efp_plan plan;
};

/* ---- messages ---- */

static char *num(char *buf, uint32_t v) /* buf: 12 bytes */
{
    char *p = buf + 11;
    *p = 0;
    do
        *--p = (char)('0' + v % 10);
    while (v /= 10);
    return p;
}

static int fail(efp_prep *c, int status, const char *a, const char *b, const char *d)
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

int efp_invalid(efp_prep *c, const char *why) /* names the operator being prepared, if any */
{
    char buf[12], head[48] = "invalid model: ";
    if (c->code >= 0) {
        strcat(head, efp_op_name(c->code, buf));
        strcat(head, ": ");
    }
    return fail(c, EFP_INVALID_MODEL, head, why, 0);
}

int efp_unsupported(efp_prep *c, const char *why)
{
    char buf[12];
    return fail(c, EFP_UNSUPPORTED, efp_op_name(c->code, buf), ": ", why);
}

/* ---- the model ---- */

int32_t efp_code(const efp_prep *c) { return c->code; }
uint32_t efp_inputs(const efp_prep *c) { return c->n_op_ins; }
uint32_t efp_outputs(const efp_prep *c) { return c->n_op_outs; }

static int tensor(efp_prep *c, int32_t idx, efp_tensor *t)
{
    efp_fb *f = &c->fb;
    uint32_t tt, shape, n, i, q, b, len, data, esize, v;
    char buf[12];
    memset(t, 0, sizeof *t);
    t->idx = idx;
    if (idx < 0 || (uint32_t)idx >= c->n_tensors)
        return efp_invalid(c, "index out of range");
    tt = efp_fb_at(f, c->tensors, (uint32_t)idx);
    shape = efp_fb_vec(f, tt, 0, 4, &n);
    if (n > EFP_MAX_DIMS)
        return fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
    t->ndim = (int32_t)n;
    t->count = 1;
    for (i = 0; i < n; i++) {
        t->dims[i] = (int32_t)efp_fb_rd(f, shape + 4 * i, 4);
        if (t->dims[i] <= 0 || t->dims[i] > 32767 || t->count > 0x7fffffffu / (uint32_t)t->dims[i])
            return f->bad ? efp_invalid(c, "truncated flatbuffer")
                          : fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
        t->count *= (uint32_t)t->dims[i];
    }
    t->type = efp_fb_int(f, tt, 1, 1, 0);
    esize = t->type == EFP_INT8 ? 1 : t->type == EFP_FLOAT32 || t->type == EFP_INT32 ? 4 : 0;
    if (!esize)
        return fail(c, EFP_UNSUPPORTED, "unsupported tensor type ", efp_type_name(t->type, buf), 0);
    if (t->count > 0x7fffffffu / esize)
        return fail(c, EFP_UNSUPPORTED, "dynamic, oversized or above 6-D tensor", 0, 0);
    t->bytes = t->count * esize;
    if (efp_fb_int(f, tt, 5, 1, 0) || efp_fb_field(f, tt, 6) || efp_fb_int(f, tt, 10, 4, 0))
        return fail(c, EFP_UNSUPPORTED, "variable, sparse or external tensors", 0, 0);
    v = (uint32_t)efp_fb_int(f, tt, 2, 4, 0);
    if (v >= c->n_buffers)
        return efp_invalid(c, "index out of range");
    b = efp_fb_at(f, c->buffers, v);
    data = efp_fb_vec(f, b, 0, 1, &len);
    v = efp_fb_field(f, b, 1); /* Buffer.offset: data stored after the flatbuffer (models > 2 GB) */
    if (v && (efp_fb_rd(f, v, 4) > 1 || efp_fb_rd(f, v + 4, 4)))
        return fail(c, EFP_UNSUPPORTED, "tensor data outside the flatbuffer (models over 2 GB)", 0, 0);
    if (len) {
        if (len != t->bytes)
            return efp_invalid(c, "tensor shapes do not match");
        t->data = f->b + data;
        if (esize == 4 && ((uintptr_t)t->data & 3))
            return efp_invalid(c, "misaligned data (align the model to 4 bytes)");
    }
    q = efp_fb_table(f, tt, 4);
    t->scales = efp_fb_vec(f, q, 2, 4, &t->n_scales);
    if (t->n_scales) {
        v = efp_fb_rd(f, t->scales, 4);
        memcpy(&t->scale, &v, 4);
    }
    v = efp_fb_vec(f, q, 3, 8, &n);
    if (n)
        t->zp = (int32_t)efp_fb_rd(f, v, 4);
    t->qdim = (uint32_t)efp_fb_int(f, q, 6, 4, 0);
    return f->bad ? efp_invalid(c, "truncated flatbuffer") : 0;
}

static int io_tensor(efp_prep *c, uint32_t vec, uint32_t n, uint32_t i, efp_tensor *t)
{
    int32_t idx = i < n ? (int32_t)efp_fb_rd(&c->fb, vec + 4 * i, 4) : -1;
    if (idx < 0) {
        memset(t, 0, sizeof *t);
        t->idx = -1;
        return c->fb.bad ? efp_invalid(c, "truncated flatbuffer") : 0;
    }
    return tensor(c, idx, t);
}

int efp_input(efp_prep *c, uint32_t i, efp_tensor *t) { return io_tensor(c, c->op_ins, c->n_op_ins, i, t); }
int efp_output(efp_prep *c, uint32_t i, efp_tensor *t) { return io_tensor(c, c->op_outs, c->n_op_outs, i, t); }

int32_t efp_option(efp_prep *c, int field, int size, int32_t def)
{
    return efp_fb_int(&c->fb, c->opts, field, size, def);
}

float efp_option_f32(efp_prep *c, int field, float def)
{
    uint32_t p = efp_fb_field(&c->fb, c->opts, field), v;
    float f = def;
    if (p) {
        v = efp_fb_rd(&c->fb, p, 4);
        memcpy(&f, &v, 4);
    }
    return f;
}

float efp_scale(efp_prep *c, const efp_tensor *t, uint32_t i)
{
    uint32_t v = efp_fb_rd(&c->fb, t->scales + 4 * i, 4);
    float s;
    memcpy(&s, &v, 4);
    return s;
}

int efp_expect(efp_prep *c, const efp_tensor *t, int32_t type)
{
    char buf[12], buf2[12];
    if (t->type != type)
        return fail(c, EFP_UNSUPPORTED, efp_op_name(c->code, buf), ": unsupported tensor type ",
                    efp_type_name(t->type, buf2));
    if (type == EFP_INT8 && (!t->n_scales || !(t->scale > 0) || t->zp < -128 || t->zp > 127))
        return efp_unsupported(c, "int8 tensor without valid quantization");
    return 0;
}

int efp_activation(efp_prep *c, int32_t fused, const efp_tensor *out, int8_t *lo, int8_t *hi)
{
    int32_t a = -128, b = 127, q0 = out->zp + efp_roundf(0.0f / out->scale);
    if (fused == 1 || fused == 3)
        a = q0;
    if (fused == 2)
        a = out->zp + efp_roundf(-1.0f / out->scale);
    if (fused == 2 || fused == 3)
        b = out->zp + efp_roundf((fused == 2 ? 1.0f : 6.0f) / out->scale);
    if (fused < 0 || fused > 3)
        return efp_unsupported(c, "unsupported fused activation");
    *lo = (int8_t)(a < -128 ? -128 : a > 127 ? 127 : a);
    *hi = (int8_t)(b > 127 ? 127 : b < -128 ? -128 : b);
    return 0;
}

int efp_padding(efp_prep *c, int same, int32_t in, int32_t k, int32_t s, int32_t d, int32_t out, int16_t *pad)
{
    int32_t eff = (k - 1) * d + 1, o, p;
    if (s <= 0 || d <= 0 || k <= 0 || s > 32767 || d > 32767 || k > 32767)
        return efp_unsupported(c, "bad stride, dilation or filter size");
    o = same ? (in + s - 1) / s : (in + s - eff) / s;
    if (o != out)
        return efp_invalid(c, "tensor shapes do not match");
    p = ((out - 1) * s + eff - in) / 2;
    *pad = (int16_t)(p > 0 ? p : 0);
    return 0;
}

int efp_output_stage_init(efp_prep *c, efp_output_stage *q, const efp_tensor *in, const efp_tensor *w,
                          const efp_tensor *bias, const efp_tensor *out, int32_t fused, uint32_t qdim)
{
    uint32_t channels = (uint32_t)out->dims[out->ndim - 1], n = w->n_scales > 1 ? channels : 1, i;
    int32_t *mult, st;
    int8_t *shift;
    memset(q, 0, sizeof *q);
    if (bias->idx >= 0 && ((st = efp_expect(c, bias, EFP_INT32)) || bias->count != channels))
        return st ? st : efp_invalid(c, "tensor shapes do not match");
    if (w->n_scales != 1 && (w->n_scales != channels || w->qdim != qdim))
        return efp_unsupported(c, "unsupported filter quantization");
    if ((st = efp_activation(c, fused, out, &q->lo, &q->hi)))
        return st;
    mult = efp_persist(c, 4 * (size_t)n);
    shift = efp_persist(c, n);
    if (!mult)
        return 0;
    q->small = 1;
    for (i = 0; i < n; i++) {
        int32_t s;
        efp_quantize_multiplier((double)in->scale * (double)efp_scale(c, w, i) / (double)out->scale, &mult[i], &s);
        shift[i] = (int8_t)s;
        q->small &= s <= -1 && s >= -22;
    }
    q->bias = efp_data(c, bias);
    q->mult = mult;
    q->shift = shift;
    q->offset = out->zp;
    q->per_channel = n > 1;
    return 0;
}

#if EFP_HAS_DSP
/* The end of an output stage's loop (label 4), and where it goes (label 3) when 2a overflows: the
 * doubling high multiply of a and m from their 64-bit product, back to label 2. */
#define WIDE_PRODUCT                                                                                                   \
    "b 4f\n"                                                                                                           \
    "3:\n\t"                                                                                                           \
    "smull %[t], %[y], %[a], %[m]\n\t"                                                                                 \
    "adds %[t], %[t], #0x40000000\n\t"                                                                                 \
    "adc %[y], %[y], #0\n\t"                                                                                           \
    "lsr %[t], %[t], #31\n\t"                                                                                          \
    "orr %[y], %[t], %[y], lsl #1\n\t"                                                                                 \
    "b 2b\n"                                                                                                           \
    "4:"
/* The activation range: SSAT when it is the whole of int8, else compares. */
#define CLAMP_INT8 "ssat %[y], #8, %[y]\n\t"
#define CLAMP_RANGE                                                                                                    \
    "cmp %[y], %[lo]\n\t"                                                                                              \
    "it lt\n\t"                                                                                                        \
    "movlt %[y], %[lo]\n\t"                                                                                            \
    "cmp %[y], %[hi]\n\t"                                                                                              \
    "it gt\n\t"                                                                                                        \
    "movgt %[y], %[hi]\n\t"

/* The usual output stage (per-channel multipliers below 1/2, bias) over n sums, written out for
 * the DSP cores: SaturatingRoundingDoublingHighMul(a, m) is SMMULR(2a, m) while 2a fits in int32
 * (WIDE_PRODUCT otherwise), RoundingDivideByPOT as in efp_requantize_small, then CLAMP. */
#define OUTPUT_SMALL(CLAMP)                                                                                            \
    "1:\n\t"                                                                                                           \
    "ldr %[a], [%[acc]], #4\n\t"                                                                                       \
    "ldr %[t], [%[bias]], #4\n\t"                                                                                      \
    "ldr %[m], [%[mult]], #4\n\t"                                                                                      \
    "add %[a], %[a], %[t]\n\t"                                                                                         \
    "adds %[t], %[a], %[a]\n\t"                                                                                        \
    "bvs 3f\n\t"                                                                                                       \
    "smmulr %[y], %[t], %[m]\n"                                                                                        \
    "2:\n\t"                                                                                                           \
    "ldrsb %[m], [%[shift]], #1\n\t"                                                                                   \
    "mvn %[m], %[m]\n\t"                                                                                               \
    "lsl %[t], %[one], %[m]\n\t"                                                                                       \
    "sub %[t], %[t], %[y], lsr #31\n\t"                                                                                \
    "qadd %[y], %[y], %[t]\n\t"                                                                                        \
    "asr %[y], %[y], %[m]\n\t"                                                                                         \
    "add %[y], %[off], %[y], asr #1\n\t" CLAMP "strb %[y], [%[out]], #1\n\t"                                           \
    "subs %[n], %[n], #1\n\t"                                                                                          \
    "bne 1b\n\t" WIDE_PRODUCT

static void output_small(const int32_t *acc, const int32_t *bias, const int32_t *mult, const int8_t *shift, int8_t *out,
                         int32_t n, int32_t offset, int32_t lo, int32_t hi)
{
    int32_t a, t, m, y, one = 1;
    if (lo == -128 && hi == 127)
        __asm__ volatile(OUTPUT_SMALL(CLAMP_INT8)
                         : [acc] "+r"(acc), [bias] "+r"(bias), [mult] "+r"(mult), [shift] "+r"(shift), [out] "+r"(out),
                           [n] "+r"(n), [a] "=&r"(a), [t] "=&r"(t), [m] "=&r"(m), [y] "=&r"(y)
                         : [off] "r"(offset), [one] "r"(one)
                         : "cc", "memory");
    else
        __asm__ volatile(OUTPUT_SMALL(CLAMP_RANGE)
                         : [acc] "+r"(acc), [bias] "+r"(bias), [mult] "+r"(mult), [shift] "+r"(shift), [out] "+r"(out),
                           [n] "+r"(n), [a] "=&r"(a), [t] "=&r"(t), [m] "=&r"(m), [y] "=&r"(y)
                         : [off] "r"(offset), [lo] "r"(lo), [hi] "r"(hi), [one] "r"(one)
                         : "cc", "memory");
}

/* One multiplier for every channel (per-tensor filters, the element-wise operators): the same stage
 * with m and the shift in registers; no bias is a bias of 0 at a step of 0. */
#define OUTPUT_TENSOR(CLAMP)                                                                                           \
    "1:\n\t"                                                                                                           \
    "ldr %[a], [%[acc]], #4\n\t"                                                                                       \
    "ldr %[t], [%[bias]]\n\t"                                                                                          \
    "add %[bias], %[bias], %[step]\n\t"                                                                                \
    "add %[a], %[a], %[t]\n\t"                                                                                         \
    "adds %[t], %[a], %[a]\n\t"                                                                                        \
    "bvs 3f\n\t"                                                                                                       \
    "smmulr %[y], %[t], %[m]\n"                                                                                        \
    "2:\n\t"                                                                                                           \
    "sub %[t], %[half], %[y], lsr #31\n\t"                                                                             \
    "qadd %[y], %[y], %[t]\n\t"                                                                                        \
    "asr %[y], %[y], %[r]\n\t"                                                                                         \
    "add %[y], %[y], %[off]\n\t" CLAMP "strb %[y], [%[out]], #1\n\t"                                                   \
    "subs %[n], %[n], #1\n\t"                                                                                          \
    "bne 1b\n\t" WIDE_PRODUCT

static void output_small_tensor(const int32_t *acc, const int32_t *bias, int32_t m, int32_t r, int8_t *out, int32_t n,
                                int32_t offset, int32_t lo, int32_t hi)
{
    static const int32_t none = 0;
    int32_t a, t, y, half = 1 << (r - 1), step = bias ? 4 : 0;
    bias = bias ? bias : &none;
    if (n <= 0)
        return;
    if (lo == -128 && hi == 127)
        __asm__ volatile(
            OUTPUT_TENSOR(CLAMP_INT8)
            : [acc] "+r"(acc), [bias] "+r"(bias), [out] "+r"(out), [n] "+r"(n), [a] "=&r"(a), [t] "=&r"(t), [y] "=&r"(y)
            : [m] "r"(m), [r] "r"(r), [half] "r"(half), [off] "r"(offset), [step] "r"(step)
            : "cc", "memory");
    else
        __asm__ volatile(
            OUTPUT_TENSOR(CLAMP_RANGE)
            : [acc] "+r"(acc), [bias] "+r"(bias), [out] "+r"(out), [n] "+r"(n), [a] "=&r"(a), [t] "=&r"(t), [y] "=&r"(y)
            : [m] "r"(m), [r] "r"(r), [half] "r"(half), [off] "r"(offset), [step] "r"(step), [lo] "r"(lo), [hi] "r"(hi)
            : "cc", "memory");
}
#else
static void output_small(const int32_t *acc, const int32_t *bias, const int32_t *mult, const int8_t *shift, int8_t *out,
                         int32_t n, int32_t offset, int32_t lo, int32_t hi)
{
    for (; n > 0; n--)
        *out++ = efp_requantize_small(efp_wadd(*acc++, *bias++), *mult++, -*shift++, offset, lo, hi);
}

/* One multiplier for every channel (per-tensor filters, the element-wise operators). */
static void output_small_tensor(const int32_t *acc, const int32_t *bias, int32_t m, int32_t r, int8_t *out, int32_t n,
                                int32_t offset, int32_t lo, int32_t hi)
{
    for (; n > 0; n--)
        *out++ = efp_requantize_small(bias ? efp_wadd(*acc++, *bias++) : *acc++, m, r, offset, lo, hi);
}
#endif

void efp_output_run(const efp_output_stage *q, const int32_t *acc, int32_t n, int32_t channel, int8_t *out)
{
    int32_t i;
    if (n > 0 && q->small && q->per_channel && q->bias) {
        output_small(acc, q->bias + channel, q->mult + channel, q->shift + channel, out, n, q->offset, q->lo, q->hi);
        return;
    }
    if (q->small && !q->per_channel) {
        output_small_tensor(acc, q->bias ? q->bias + channel : NULL, q->mult[0], -q->shift[0], out, n, q->offset, q->lo,
                            q->hi);
        return;
    }
    for (i = 0; i < n; i++)
        out[i] = efp_to_int8(q, acc[i], channel + i);
}

/* ---- memory ---- */

static void *alloc(efp_prep *c, size_t size)
{
    void *p = c->real ? c->base + c->used : NULL;
    c->used += (size + ALIGN - 1) / ALIGN * ALIGN;
    return p;
}

void *efp_params(efp_prep *c, size_t bytes)
{
    void *p = alloc(c, bytes);
    if (p)
        c->step->params = p;
    return p;
}

void *efp_persist(efp_prep *c, size_t bytes) { return alloc(c, bytes); }

void efp_set_eval(efp_prep *c, efp_eval_fn eval)
{
    if (c->real)
        c->step->eval = eval;
}

static int plan_full(efp_prep *c)
{
    char buf[12];
    return fail(c, EFP_UNSUPPORTED, "more than ", num(buf, EFP_MAX_BUFFERS), " tensors to plan");
}

void *efp_scratch(efp_prep *c, size_t bytes)
{
    int32_t key = -1 - (int32_t)c->k;
    efp_buffer *b;
    if (!c->real) {
        if (bytes > 0x7fffffff)
            c->status = fail(c, EFP_UNSUPPORTED, "activations above 2 GB", 0, 0);
        else if (efp_plan_find(&c->plan, key))
            c->status = efp_unsupported(c, "scratch asked twice");
        else if (efp_plan_add(&c->plan, key, (uint32_t)bytes, c->k, -1) < 0)
            c->status = plan_full(c);
        return NULL;
    }
    b = efp_plan_find(&c->plan, key);
    return c->act + b->off;
}

void *efp_data(efp_prep *c, const efp_tensor *t)
{
    efp_buffer *b;
    if (t->data)
        return (void *)(uintptr_t)t->data;
    b = c->real && t->idx >= 0 ? efp_plan_find(&c->plan, t->idx) : NULL;
    return b ? c->act + b->off : NULL;
}

int efp_alias(efp_prep *c, const efp_tensor *out, const efp_tensor *in)
{
    efp_buffer *b = efp_plan_find(&c->plan, in->idx);
    if (!b || in->data || in->bytes != out->bytes)
        return efp_unsupported(c, "input must be computed and of the output's size");
    if (!c->real && efp_plan_add(&c->plan, out->idx, 0, c->k, (int32_t)(b - c->plan.b)) < 0)
        return plan_full(c);
    return 0;
}

static int listed(efp_prep *c, uint32_t vec, uint32_t n, int32_t t)
{
    uint32_t i;
    for (i = 0; i < n; i++)
        if ((int32_t)efp_fb_rd(&c->fb, vec + 4 * i, 4) == t)
            return 1;
    return 0;
}

/* Whether tensor t is a model input or output, or an operator after k reads it. */
static int needed_after(efp_prep *c, int32_t t, uint32_t k)
{
    uint32_t n, v;
    if (listed(c, c->ins, c->n_ins, t) || listed(c, c->outs, c->n_outs, t))
        return 1;
    for (k++; k < c->n_ops; k++) {
        v = efp_fb_vec(&c->fb, efp_fb_at(&c->fb, c->ops, k), 1, 4, &n);
        if (listed(c, v, n, t))
            return 1;
    }
    return 0;
}

void efp_in_place(efp_prep *c, const efp_tensor *out, const efp_tensor *in)
{
    efp_buffer *b = efp_plan_find(&c->plan, in->idx), *root = efp_plan_root(&c->plan, b);
    uint32_t i;
    if (c->real || !b || in->data || in->bytes != out->bytes)
        return;
    for (i = 0; i < c->plan.n; i++) /* nobody needs the memory after this operator, under any name */
        if (efp_plan_root(&c->plan, &c->plan.b[i]) == root && needed_after(c, c->plan.b[i].key, c->k))
            return;
    if (efp_plan_add(&c->plan, out->idx, 0, c->k, (int32_t)(b - c->plan.b)) < 0)
        c->status = plan_full(c);
}

/* ---- the graph ---- */

/* The operator's code, "unsupported operator NAME" when the engine lacks it. */
static int op_code(efp_prep *c, uint32_t op, const efp_op **def)
{
    efp_fb *f = &c->fb;
    uint32_t oc = (uint32_t)efp_fb_int(f, op, 0, 4, 0), s, n;
    int32_t code, dep;
    char buf[12], name[48];
    c->code = -1;
    if (oc >= c->n_codes)
        return efp_invalid(c, "index out of range");
    oc = efp_fb_at(f, c->codes, oc);
    code = efp_fb_int(f, oc, 3, 4, 0);
    dep = efp_fb_int(f, oc, 0, 1, 0);
    c->code = code = code > dep ? code : dep;
    if (f->bad)
        return efp_invalid(c, "truncated flatbuffer");
    *def = efp_op_find(code);
    if (*def)
        return 0;
    if (code != CUSTOM)
        return fail(c, EFP_UNSUPPORTED, "unsupported operator ", efp_op_name(code, buf), 0);
    s = efp_fb_table(f, oc, 1); /* the custom operator's name */
    n = s ? efp_fb_rd(f, s, 4) : 0;
    n = n < sizeof name - 10 && n <= f->n - s - 4 ? n : 0;
    memcpy(name, "CUSTOM (", 8);
    memcpy(name + 8, f->b + s + 4, n);
    memcpy(name + 8 + n, ")", 2);
    return fail(c, EFP_UNSUPPORTED, "unsupported operator ", n ? name : "CUSTOM", 0);
}

/* Record what operator k reads (extending lifetimes) and check what it writes is new. */
static int track(efp_prep *c)
{
    efp_fb *f = &c->fb;
    uint32_t i;
    for (i = 0; i < c->n_op_ins + c->n_op_outs; i++) {
        int out = i >= c->n_op_ins;
        int32_t idx = (int32_t)efp_fb_rd(f, (out ? c->op_outs + 4 * (i - c->n_op_ins) : c->op_ins + 4 * i), 4);
        efp_buffer *b;
        efp_tensor t;
        int st;
        if (idx < 0 && !out)
            continue;
        if ((st = tensor(c, idx, &t)))
            return st;
        b = efp_plan_root(&c->plan, efp_plan_find(&c->plan, idx));
        if (out ? t.data || b : !t.data && !b)
            return efp_invalid(c, "tensor read before written, or written twice");
        if (b && b->last < c->k)
            b->last = (uint16_t)c->k;
    }
    return 0;
}

static int prepare_op(efp_prep *c, uint32_t k)
{
    efp_fb *f = &c->fb;
    uint32_t op = efp_fb_at(f, c->ops, k), i;
    const efp_op *def;
    int st;
    c->k = k;
    if ((st = op_code(c, op, &def)))
        return st;
    c->op_ins = efp_fb_vec(f, op, 1, 4, &c->n_op_ins);
    c->op_outs = efp_fb_vec(f, op, 2, 4, &c->n_op_outs);
    c->opts = efp_fb_table(f, op, 4);
    if (f->bad)
        return efp_invalid(c, "truncated flatbuffer");
    if (!c->n_op_outs)
        return efp_unsupported(c, "no output");
    if (!c->real && (st = track(c)))
        return st;
    if (c->real) {
        c->step = &c->g->steps[c->g->n_steps];
        c->step->eval = def->eval;
        c->step->params = NULL;
    }
    if ((st = def->prepare(c)) || (st = c->status))
        return st;
    if (c->real && c->step->eval)
        c->g->n_steps++;
    for (i = 0; !c->real && i < c->n_op_outs; i++) { /* outputs without memory yet get their own */
        efp_tensor t;
        if ((st = efp_output(c, i, &t)))
            return st;
        if (!efp_plan_find(&c->plan, t.idx) && efp_plan_add(&c->plan, t.idx, t.bytes, k, -1) < 0)
            return plan_full(c);
    }
    return 0;
}

/* The model's inputs (out = 0) or outputs (1): their buffers, and their efp_io in the real pass. */
static int model_io(efp_prep *c, int out)
{
    uint32_t vec = out ? c->outs : c->ins, n = out ? c->n_outs : c->n_ins, i;
    for (i = 0; i < n; i++) {
        efp_tensor t;
        efp_buffer *b;
        int st;
        if ((st = io_tensor(c, vec, n, i, &t)))
            return st;
        if (t.idx < 0 || t.data)
            return fail(c, EFP_UNSUPPORTED, "model inputs and outputs must be computed tensors", 0, 0);
        b = efp_plan_root(&c->plan, efp_plan_find(&c->plan, t.idx));
        if (!c->real && (out ? !b : b != NULL))
            return efp_invalid(c, "tensor read before written, or written twice");
        if (!c->real && !out && efp_plan_add(&c->plan, t.idx, t.bytes, 0, -1) < 0)
            return plan_full(c);
        if (!c->real && out)
            b->last = (uint16_t)c->n_ops;
        if (c->real) {
            efp_io *io = &c->g->io[out ? c->n_ins + i : i];
            io->data = efp_data(c, &t);
            io->bytes = t.bytes;
            io->type = t.type;
            io->ndim = t.ndim;
            memcpy(io->dims, t.dims, sizeof io->dims);
            io->scale = t.scale;
            io->zero_point = t.zp;
        }
    }
    return 0;
}

static int walk(efp_prep *c)
{
    efp_fb *f = &c->fb;
    uint32_t model, subgraphs, n, k;
    graph *g;
    step *steps;
    efp_io *io;
    int st;
    c->used = 0;
    model = (uint32_t)f->b[0] | (uint32_t)f->b[1] << 8 | (uint32_t)f->b[2] << 16 | (uint32_t)f->b[3] << 24;
    if (model >= f->n)
        return efp_invalid(c, "index out of range");
    c->codes = efp_fb_vec(f, model, 1, 4, &c->n_codes);
    subgraphs = efp_fb_vec(f, model, 2, 4, &n);
    c->buffers = efp_fb_vec(f, model, 4, 4, &c->n_buffers);
    if (!n)
        return efp_invalid(c, "no subgraph");
    model = efp_fb_at(f, subgraphs, 0);
    c->tensors = efp_fb_vec(f, model, 0, 4, &c->n_tensors);
    c->ins = efp_fb_vec(f, model, 1, 4, &c->n_ins);
    c->outs = efp_fb_vec(f, model, 2, 4, &c->n_outs);
    c->ops = efp_fb_vec(f, model, 3, 4, &c->n_ops);
    if (f->bad)
        return efp_invalid(c, "truncated flatbuffer");
    if (!c->n_ins || !c->n_outs)
        return fail(c, EFP_UNSUPPORTED, "model without inputs or outputs", 0, 0);
    if (c->n_tensors > 32767 || c->n_ops > 32766)
        return fail(c, EFP_UNSUPPORTED, "more than 32,767 tensors or operators", 0, 0);
    g = c->g = alloc(c, sizeof *g);
    steps = alloc(c, c->n_ops * sizeof *steps);
    io = alloc(c, (c->n_ins + c->n_outs) * sizeof *io);
    if (g) {
        g->n_steps = 0;
        g->n_in = c->n_ins;
        g->n_out = c->n_outs;
        g->steps = steps;
        g->io = io;
    }
    if ((st = model_io(c, 0)))
        return st;
    for (k = 0; k < c->n_ops; k++)
        if ((st = prepare_op(c, k)))
            return st;
    c->code = -1;
    if ((st = model_io(c, 1)))
        return st;
    return f->bad ? efp_invalid(c, "truncated flatbuffer") : 0;
}

int efp_engine_init(efp_engine *e, const uint8_t *model, size_t model_len, uint8_t *arena, size_t arena_len)
{
    efp_prep c;
    size_t pad = (ALIGN - (uintptr_t)arena % ALIGN) % ALIGN, total = 0;
    uint32_t i, peak;
    int st;
    e->model = model;
    e->model_len = model_len;
    e->arena = arena;
    e->arena_len = arena_len;
    e->arena_used = e->arena_needed = 0;
    e->graph = NULL;
    e->error[0] = 0;
    memset(&c, 0, sizeof c);
    c.code = -1;
    c.e = e;
    c.fb.b = model;
    c.fb.n = (uint32_t)model_len;
    c.base = arena ? arena + pad : NULL;
    if (!model || model_len < 8 || model_len > 0x7fffffff || memcmp(model + 4, "TFL3", 4))
        return efp_invalid(&c, "not a TFLite flatbuffer");
    if ((st = walk(&c)))
        return st;
    for (i = 0; i < c.plan.n; i++)
        total += c.plan.b[i].alias < 0 ? c.plan.b[i].size : 0;
    if (total > 0x7fffffff)
        return fail(&c, EFP_UNSUPPORTED, "activations above 2 GB", 0, 0);
    peak = efp_plan_place(&c.plan);
    e->arena_needed = pad + c.used + peak;
    if (!arena || e->arena_needed > arena_len) {
        char buf[12];
        return fail(&c, EFP_ARENA_TOO_SMALL, "arena too small: model needs ", num(buf, (uint32_t)e->arena_needed),
                    " bytes");
    }
    c.act = c.base + c.used;
    c.real = 1;
    if ((st = walk(&c)))
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
    for (i = 0; i < g->n_steps; i++)
        g->steps[i].eval(g->steps[i].params);
    return EFP_OK;
}

size_t efp_engine_input_count(const efp_engine *e) { return e->graph ? ((const graph *)e->graph)->n_in : 0; }
size_t efp_engine_output_count(const efp_engine *e) { return e->graph ? ((const graph *)e->graph)->n_out : 0; }

const efp_io *efp_engine_input(const efp_engine *e, size_t index)
{
    const graph *g = e->graph;
    return g && index < g->n_in ? &g->io[index] : NULL;
}

const efp_io *efp_engine_output(const efp_engine *e, size_t index)
{
    const graph *g = e->graph;
    return g && index < g->n_out ? &g->io[g->n_in + index] : NULL;
}

size_t efp_engine_size(void) { return sizeof(efp_engine); }

const char *efp_engine_error(const efp_engine *e) { return e->error; }

size_t efp_engine_arena_needed(const efp_engine *e) { return e->arena_needed; }

size_t efp_engine_arena_used(const efp_engine *e) { return e->arena_used; }
