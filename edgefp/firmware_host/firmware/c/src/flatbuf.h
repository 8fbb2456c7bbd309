/* Bounds-checked little-endian flatbuffer reading. Positions are byte offsets into the buffer; 0
 * means "absent". Any out-of-range access sets bad and yields 0, so a corrupt model cannot crash. */
#ifndef EFP_FLATBUF_H
#define EFP_FLATBUF_H

#include <stdint.h>

typedef struct {
    const uint8_t *b;
    uint32_t n;
    int bad;
} efp_fb;

static inline uint32_t efp_fb_rd(efp_fb *f, uint32_t pos, int size)
{
    uint32_t v = 0;
    int i;
    if (pos == 0 || pos > f->n || (uint32_t)size > f->n - pos) {
        f->bad = 1;
        return 0;
    }
    for (i = size - 1; i >= 0; i--)
        v = v << 8 | f->b[pos + i];
    return v;
}

/* Position of field id of the table at t, or 0 when the field (or the table) is absent. */
static inline uint32_t efp_fb_field(efp_fb *f, uint32_t t, int id)
{
    uint32_t vt, o;
    if (!t)
        return 0;
    vt = t - efp_fb_rd(f, t, 4); /* soffset: vtable = table - value, wrapping */
    if (vt >= f->n) {
        f->bad = 1;
        return 0;
    }
    if ((uint32_t)(4 + 2 * id + 2) > efp_fb_rd(f, vt, 2))
        return 0;
    o = efp_fb_rd(f, vt + 4 + 2 * id, 2);
    if (o && o >= efp_fb_rd(f, vt + 2, 2))
        f->bad = 1;
    return o ? t + o : 0;
}

/* Scalar field, sign-extended for signed types of 1, 2 or 4 bytes. */
static inline int32_t efp_fb_int(efp_fb *f, uint32_t t, int id, int size, int32_t def)
{
    uint32_t p = efp_fb_field(f, t, id), v;
    if (!p)
        return def;
    v = efp_fb_rd(f, p, size);
    return size == 4 ? (int32_t)v : size == 2 ? (int16_t)v : (int8_t)v;
}

/* Follow a uoffset at position p (table, vector or string in a vector or field). */
static inline uint32_t efp_fb_deref(efp_fb *f, uint32_t p)
{
    uint32_t r;
    if (!p)
        return 0;
    r = efp_fb_rd(f, p, 4);
    if (r > f->n - p) {
        f->bad = 1;
        return 0;
    }
    return p + r;
}

static inline uint32_t efp_fb_table(efp_fb *f, uint32_t t, int id) { return efp_fb_deref(f, efp_fb_field(f, t, id)); }

/* Vector field: position of its first element and its length, checked against the buffer. */
static inline uint32_t efp_fb_vec(efp_fb *f, uint32_t t, int id, int elem, uint32_t *len)
{
    uint32_t v = efp_fb_table(f, t, id);
    *len = v ? efp_fb_rd(f, v, 4) : 0;
    if (v && *len > (f->n - v - 4) / (uint32_t)elem) {
        f->bad = 1;
        *len = 0;
    }
    return v ? v + 4 : 0;
}

/* Element i of a vector of tables. */
static inline uint32_t efp_fb_at(efp_fb *f, uint32_t vec, uint32_t i) { return efp_fb_deref(f, vec + 4 * i); }

#endif
