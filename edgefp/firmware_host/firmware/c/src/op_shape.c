/* Operators that move data without arithmetic, for int8, int32 and float32 tensors: RESHAPE (and
 * SQUEEZE, EXPAND_DIMS: the output is the input's memory), SHAPE, PAD and PADV2, STRIDED_SLICE,
 * CONCATENATION, PACK, TRANSPOSE and RESIZE_NEAREST_NEIGHBOR, as TFLite Micro defines them. */
#include <string.h>

#include "fixedpoint.h"
#include "kernel.h"
#include "ops.h"

enum {
    CONCATENATION = 2,
    PAD = 34,
    STRIDED_SLICE = 45,
    PADV2 = 60,
    PACK = 83,
};

static int same_type(efp_prep *c, const efp_tensor *in, const efp_tensor *out)
{
    int st = efp_expect(c, in, in->type);
    if (!st && out->type != in->type)
        st = efp_expect(c, out, in->type);
    return st;
}

static const int32_t *constant_i32(efp_prep *c, const efp_tensor *t, uint32_t count, int *st)
{
    if (t->idx < 0 || t->type != EFP_INT32 || !t->data || t->count != count) {
        *st = t->idx >= 0 && t->data && t->type == EFP_INT32 ? efp_invalid(c, "tensor shapes do not match")
                                                             : efp_unsupported(c, "needs a constant int32 tensor");
        return NULL;
    }
    *st = 0;
    return (const int32_t *)(const void *)t->data;
}

/* ---- RESHAPE, SQUEEZE, EXPAND_DIMS ---- */

int efp_prepare_reshape(efp_prep *c)
{
    efp_tensor in, out;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_output(c, 0, &out)))
        return st;
    if (in.idx < 0 || in.type != out.type)
        return efp_unsupported(c, "input must be computed and of the output's size");
    return efp_alias(c, &out, &in);
}

/* ---- SHAPE ---- */

typedef struct {
    int32_t n, dims[EFP_MAX_DIMS];
    int32_t *out;
} shape;

void efp_eval_shape(const void *params)
{
    const shape *p = params;
    memcpy(p->out, p->dims, 4 * (size_t)p->n);
}

int efp_prepare_shape(efp_prep *c)
{
    efp_tensor in, out;
    shape *p;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_output(c, 0, &out)))
        return st;
    if ((st = efp_expect(c, &out, EFP_INT32)))
        return st;
    if (out.count != (uint32_t)in.ndim)
        return efp_invalid(c, "tensor shapes do not match");
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    p->n = in.ndim;
    memcpy(p->dims, in.dims, sizeof p->dims);
    p->out = efp_data(c, &out);
    return 0;
}

/* ---- PAD, PADV2 ---- */

typedef struct {
    const uint8_t *in;
    uint8_t *out;
    int32_t ndim, size, value; /* element size, the padding value's bytes */
    int32_t out_dims[EFP_MAX_DIMS], in_dims[EFP_MAX_DIMS], left[EFP_MAX_DIMS];
} pad;

static void fill(uint8_t *out, int32_t n, int32_t size, int32_t value)
{
    int32_t i;
    if (size == 1)
        memset(out, value, (size_t)n);
    else
        for (i = 0; i < n; i++)
            memcpy(out + 4 * i, &value, 4);
}

void efp_eval_pad(const void *params)
{
    const pad *p = params;
    int32_t last = p->ndim - 1, row = p->out_dims[last], rows = 1, r, d, sz = p->size, idx[EFP_MAX_DIMS] = {0};
    int32_t left = p->left[last], width = p->in_dims[last], stride[EFP_MAX_DIMS], off = 0, outside = 0;
    uint8_t *out = p->out;
    for (d = last; d >= 0; d--) /* input strides; the rows start at out index 0 */
        stride[d] = d == last ? 1 : stride[d + 1] * p->in_dims[d + 1];
    for (d = 0; d < last; d++) {
        rows *= p->out_dims[d];
        /* cppcheck-suppress uninitvar ; set above for every d <= last (ndim >= 1) */
        off -= p->left[d] * stride[d];
        outside += p->left[d] > 0;
    }
    for (r = 0; r < rows; r++, out += row * sz) {
        if (outside) {
            fill(out, row, sz, p->value);
        } else {
            fill(out, left, sz, p->value);
            memcpy(out + left * sz, p->in + (size_t)off * (size_t)sz, (size_t)(width * sz));
            fill(out + (left + width) * sz, row - left - width, sz, p->value);
        }
        for (d = last - 1; d >= 0; d--) { /* the next row: its coordinates, input offset and whether it pads */
            int32_t was = idx[d] - p->left[d] >= 0 && idx[d] - p->left[d] < p->in_dims[d];
            off += stride[d];
            if (++idx[d] < p->out_dims[d]) {
                outside += was - (idx[d] - p->left[d] >= 0 && idx[d] - p->left[d] < p->in_dims[d]);
                break;
            }
            off -= stride[d] * p->out_dims[d];
            idx[d] = 0;
            outside += was - (p->left[d] == 0);
        }
    }
}

int efp_prepare_pad(efp_prep *c)
{
    efp_tensor in, paddings, value, out;
    const int32_t *pads;
    pad *p, q;
    int32_t d;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &paddings)) || (st = efp_input(c, 2, &value)) ||
        (st = efp_output(c, 0, &out)) || (st = same_type(c, &in, &out)))
        return st;
    if (!(pads = constant_i32(c, &paddings, 2 * (uint32_t)in.ndim, &st)))
        return st;
    if (in.ndim != out.ndim || in.ndim < 1)
        return efp_invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    for (d = 0; d < in.ndim; d++) {
        if (pads[2 * d] < 0 || pads[2 * d + 1] < 0 || in.dims[d] + pads[2 * d] + pads[2 * d + 1] != out.dims[d])
            return efp_invalid(c, "tensor shapes do not match");
        q.left[d] = pads[2 * d];
    }
    q.size = in.type == EFP_INT8 ? 1 : 4;
    if (efp_code(c) == PADV2 && value.idx >= 0) {
        if (value.type != in.type || value.count != 1 || !value.data)
            return efp_unsupported(c, "the padding value must be a constant of the input's type");
        if (in.type == EFP_INT8 && (value.zp != out.zp || value.scale != out.scale))
            return efp_unsupported(c, "the padding value must have the output's quantization");
        memcpy(&q.value, value.data, (size_t)q.size);
        q.value = q.size == 1 ? (int8_t)q.value : q.value;
    } else {
        q.value = in.type == EFP_INT8 ? out.zp : 0; /* 0.0f and 0 are all zero bits */
    }
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.ndim = in.ndim;
    memcpy(q.in_dims, in.dims, sizeof q.in_dims);
    memcpy(q.out_dims, out.dims, sizeof q.out_dims);
    while (q.ndim > 1 && in.dims[q.ndim - 1] == out.dims[q.ndim - 1]) { /* unpadded last axes: longer rows */
        q.ndim--;
        q.in_dims[q.ndim - 1] *= q.in_dims[q.ndim];
        q.out_dims[q.ndim - 1] *= q.out_dims[q.ndim];
        q.left[q.ndim - 1] *= q.in_dims[q.ndim];
    }
    *p = q;
    return 0;
}

/* ---- STRIDED_SLICE (at most 4-D, begin, end and strides constant; TFLite Micro ignores the
 * ellipsis and new-axis masks) ---- */

typedef struct {
    const uint8_t *in;
    uint8_t *out;
    int32_t size, start[4], stop[4], stride[4], in_stride[4];
} slice;

static int more(int32_t i, int32_t stop, int32_t stride) { return stride > 0 ? i < stop : i > stop; }

void efp_eval_strided_slice(const void *params)
{
    const slice *p = params;
    int32_t i0, i1, i2, i3, sz = p->size;
    uint8_t *out = p->out;
    for (i0 = p->start[0]; more(i0, p->stop[0], p->stride[0]); i0 += p->stride[0])
        for (i1 = p->start[1]; more(i1, p->stop[1], p->stride[1]); i1 += p->stride[1])
            for (i2 = p->start[2]; more(i2, p->stop[2], p->stride[2]); i2 += p->stride[2])
                for (i3 = p->start[3]; more(i3, p->stop[3], p->stride[3]); i3 += p->stride[3]) {
                    int32_t at =
                        i0 * p->in_stride[0] + i1 * p->in_stride[1] + i2 * p->in_stride[2] + i3 * p->in_stride[3];
                    memcpy(out, p->in + (size_t)at * (size_t)sz, (size_t)sz);
                    out += sz;
                }
}

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v > hi ? hi : v < lo ? lo : v; }

int efp_prepare_strided_slice(efp_prep *c)
{
    efp_tensor in, begin, end, strides, out;
    const int32_t *b, *e, *s;
    int32_t begin_mask = efp_option(c, 0, 4, 0), end_mask = efp_option(c, 1, 4, 0), shrink = efp_option(c, 4, 4, 0);
    int32_t d, pad, n, count = 1, kept = 0, dims[4];
    slice *p, q;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &begin)) || (st = efp_input(c, 2, &end)) ||
        (st = efp_input(c, 3, &strides)) || (st = efp_output(c, 0, &out)) || (st = same_type(c, &in, &out)))
        return st;
    if (in.ndim < 1 || in.ndim > 4)
        return efp_unsupported(c, "input above 4-D");
    n = in.ndim;
    if (!(b = constant_i32(c, &begin, (uint32_t)n, &st)) || !(e = constant_i32(c, &end, (uint32_t)n, &st)) ||
        !(s = constant_i32(c, &strides, (uint32_t)n, &st)))
        return st;
    memset(&q, 0, sizeof q);
    pad = 4 - n; /* leading axes of size 1, taken whole */
    for (d = 0; d < 4; d++) {
        int32_t size = d < pad ? 1 : in.dims[d - pad], a = d - pad, start, stop, stride = d < pad ? 1 : s[a];
        if (!stride)
            return efp_invalid(c, "stride 0");
        dims[d] = size;
        if (d < pad) {
            start = 0;
            stop = 1;
        } else {
            start = begin_mask >> a & 1 ? (stride > 0 ? INT32_MIN : INT32_MAX) : b[a];
            start += start < 0 ? size : 0;
            start = stride > 0 ? clamp(start, 0, size) : clamp(start, -1, size - 1);
            if (shrink >> a & 1) {
                stop = start + 1;
            } else {
                stop = end_mask >> a & 1 ? (stride > 0 ? INT32_MAX : INT32_MIN) : e[a];
                stop += stop < 0 ? size : 0;
                stop = stride > 0 ? clamp(stop, 0, size) : clamp(stop, -1, size - 1);
            }
        }
        q.start[d] = start;
        q.stop[d] = stop;
        q.stride[d] = stride;
        size = stride > 0 ? (stop - start + stride - 1) / stride : (start - stop - stride - 1) / -stride;
        size = size > 0 ? size : 0;
        count *= size;
        if (d >= pad && !(shrink >> a & 1) && (kept >= out.ndim || out.dims[kept++] != size))
            return efp_invalid(c, "tensor shapes do not match");
    }
    if (kept != out.ndim || (uint32_t)count != out.count)
        return efp_invalid(c, "tensor shapes do not match");
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.size = in.type == EFP_INT8 ? 1 : 4;
    q.in_stride[3] = 1;
    for (d = 2; d >= 0; d--)
        q.in_stride[d] = q.in_stride[d + 1] * dims[d + 1];
    *p = q;
    return 0;
}

/* ---- CONCATENATION, PACK: blocks of each input in turn ---- */

typedef struct {
    int32_t n, outer;
    const uint8_t **in;
    const int32_t *block; /* bytes of each input per outer index */
    uint8_t *out;
} concat;

void efp_eval_concat(const void *params)
{
    const concat *p = params;
    int32_t o, i;
    uint8_t *out = p->out;
    for (o = 0; o < p->outer; o++)
        for (i = 0; i < p->n; i++) {
            memcpy(out, p->in[i] + (size_t)o * (size_t)p->block[i], (size_t)p->block[i]);
            out += p->block[i];
        }
}

int efp_prepare_concat(efp_prep *c)
{
    int pack = efp_code(c) == PACK;
    uint32_t n = efp_inputs(c), i;
    int32_t axis = efp_option(c, pack ? 1 : 0, 4, 0), d, outer = 1, inner, sum = 0;
    efp_tensor t, out;
    concat *p;
    const uint8_t **ins;
    int32_t *blocks;
    int st;
    if ((st = efp_output(c, 0, &out)))
        return st;
    if (!pack && efp_option(c, 1, 1, 0))
        return efp_unsupported(c, "unsupported fused activation");
    axis += axis < 0 ? out.ndim : 0;
    if (axis < 0 || axis >= out.ndim || !n)
        return efp_invalid(c, "bad axis");
    for (d = 0; d < axis; d++)
        outer *= out.dims[d];
    inner = (int32_t)out.bytes / outer / out.dims[axis]; /* bytes after the axis */
    for (i = 0; i < n; i++) {
        if ((st = efp_input(c, i, &t)) || (st = same_type(c, &t, &out)))
            return st;
        if (t.idx < 0 || t.ndim != out.ndim - pack)
            return efp_invalid(c, "tensor shapes do not match");
        for (d = 0; d < t.ndim; d++) /* every dimension but the axis is the output's */
            if (pack ? t.dims[d] != out.dims[d + (d >= axis)] : d != axis && t.dims[d] != out.dims[d])
                return efp_invalid(c, "tensor shapes do not match");
        sum += pack ? 1 : t.dims[axis];
    }
    if (sum != out.dims[axis])
        return efp_invalid(c, "tensor shapes do not match");
    p = efp_params(c, sizeof *p);
    ins = efp_persist(c, n * sizeof *ins);
    blocks = efp_persist(c, n * sizeof *blocks);
    if (!p)
        return 0;
    for (i = 0; i < n; i++) {
        efp_input(c, i, &t);
        ins[i] = efp_data(c, &t);
        blocks[i] = inner * (pack ? 1 : t.dims[axis]);
    }
    p->n = (int32_t)n;
    p->outer = outer;
    p->in = ins;
    p->block = blocks;
    p->out = efp_data(c, &out);
    return 0;
}

/* ---- TRANSPOSE ---- */

typedef struct {
    const uint8_t *in;
    uint8_t *out;
    int32_t ndim, size, count, dims[EFP_MAX_DIMS], step[EFP_MAX_DIMS]; /* output dims, input strides */
} transpose;

void efp_eval_transpose(const void *params)
{
    const transpose *p = params;
    int32_t idx[EFP_MAX_DIMS] = {0}, i, d, at = 0, last = p->ndim - 1, sz = p->size;
    uint8_t *out = p->out;
    for (i = 0; i < p->count; i++, out += sz) {
        memcpy(out, p->in + (size_t)at * (size_t)sz, (size_t)sz);
        for (d = last; d >= 0; d--) { /* next output index, its input offset kept up to date */
            at += p->step[d];
            if (++idx[d] < p->dims[d])
                break;
            at -= p->step[d] * p->dims[d];
            idx[d] = 0;
        }
    }
}

int efp_prepare_transpose(efp_prep *c)
{
    efp_tensor in, perm, out;
    const int32_t *axes;
    int32_t d, stride[EFP_MAX_DIMS], seen = 0;
    transpose *p, q;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &perm)) || (st = efp_output(c, 0, &out)) ||
        (st = same_type(c, &in, &out)))
        return st;
    if (!(axes = constant_i32(c, &perm, (uint32_t)in.ndim, &st)))
        return st;
    if (out.ndim != in.ndim || in.ndim < 1)
        return efp_invalid(c, "tensor shapes do not match");
    memset(&q, 0, sizeof q);
    stride[in.ndim - 1] = 1;
    for (d = in.ndim - 1; d > 0; d--)
        stride[d - 1] = stride[d] * in.dims[d];
    for (d = 0; d < in.ndim; d++) {
        int32_t a = axes[d] < 0 ? axes[d] + in.ndim : axes[d];
        if (a < 0 || a >= in.ndim || seen >> a & 1 || out.dims[d] != in.dims[a])
            return efp_invalid(c, "bad permutation");
        seen |= 1 << a;
        q.dims[d] = out.dims[d];
        q.step[d] = stride[a];
    }
    if (!(p = efp_params(c, sizeof *p)))
        return 0;
    q.in = efp_data(c, &in);
    q.out = efp_data(c, &out);
    q.ndim = in.ndim;
    q.size = in.type == EFP_INT8 ? 1 : 4;
    q.count = (int32_t)out.count;
    *p = q;
    return 0;
}

/* ---- RESIZE_NEAREST_NEIGHBOR: source rows and columns computed at set-up ---- */

typedef struct {
    const uint8_t *in;
    uint8_t *out;
    int32_t batches, in_h, in_w, out_h, out_w, pixel; /* pixel: bytes of one (y, x) */
    const int16_t *ys, *xs;
} resize;

void efp_eval_resize_nearest(const void *params)
{
    const resize *p = params;
    int32_t b, y, x;
    uint8_t *out = p->out;
    for (b = 0; b < p->batches; b++)
        for (y = 0; y < p->out_h; y++) {
            const uint8_t *row = p->in + ((size_t)(b * p->in_h + p->ys[y]) * (size_t)p->in_w) * (size_t)p->pixel;
            for (x = 0; x < p->out_w; x++, out += p->pixel)
                memcpy(out, row + (size_t)p->xs[x] * (size_t)p->pixel, (size_t)p->pixel);
        }
}

/* TFLite's GetNearestNeighbor, in float as it computes it. */
static int16_t nearest(int32_t i, int32_t in, int32_t out, int align, int half)
{
    float scale = align && out > 1 ? (float)(in - 1) / (float)(out - 1) : (float)in / (float)out;
    float at = ((float)i + (half ? 0.5f : 0.0f)) * scale;
    int32_t v = align ? efp_roundf(at) : (int32_t)at; /* at >= 0: truncation is floor */
    v = v < in - 1 ? v : in - 1;
    return (int16_t)(half && v < 0 ? 0 : v);
}

int efp_prepare_resize_nearest(efp_prep *c)
{
    efp_tensor in, size, out;
    const int32_t *hw;
    int align = efp_option(c, 0, 1, 0), half = efp_option(c, 1, 1, 0);
    int16_t *ys, *xs;
    resize *p;
    int32_t i;
    int st;
    if ((st = efp_input(c, 0, &in)) || (st = efp_input(c, 1, &size)) || (st = efp_output(c, 0, &out)) ||
        (st = same_type(c, &in, &out)))
        return st;
    if (!(hw = constant_i32(c, &size, 2, &st)))
        return st;
    if (in.ndim != 4 || out.ndim != 4 || out.dims[0] != in.dims[0] || out.dims[3] != in.dims[3] ||
        out.dims[1] != hw[0] || out.dims[2] != hw[1])
        return efp_invalid(c, "tensor shapes do not match");
    p = efp_params(c, sizeof *p);
    ys = efp_persist(c, 2 * (size_t)out.dims[1]);
    xs = efp_persist(c, 2 * (size_t)out.dims[2]);
    if (!p)
        return 0;
    for (i = 0; i < out.dims[1]; i++)
        ys[i] = nearest(i, in.dims[1], out.dims[1], align, half);
    for (i = 0; i < out.dims[2]; i++)
        xs[i] = nearest(i, in.dims[2], out.dims[2], align, half);
    p->in = efp_data(c, &in);
    p->out = efp_data(c, &out);
    p->batches = in.dims[0];
    p->in_h = in.dims[1];
    p->in_w = in.dims[2];
    p->out_h = out.dims[1];
    p->out_w = out.dims[2];
    p->pixel = (int32_t)in.bytes / in.count * in.dims[3];
    p->ys = ys;
    p->xs = xs;
    return 0;
}
