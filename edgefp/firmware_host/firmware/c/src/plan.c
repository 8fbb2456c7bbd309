/* Offline arena planning. Buffers are placed largest first, each at the lowest offset free of the
 * buffers placed before it whose lifetimes overlap its own (TFLite Micro's greedy-by-size planner),
 * and again in the order they are written (first fit as the graph runs); the smaller plan is kept. */
#include "plan.h"

#include <stddef.h>

int32_t efp_plan_add(efp_plan *p, int32_t key, uint32_t size, uint32_t first, int32_t alias)
{
    efp_buffer *b;
    if (p->n == EFP_MAX_BUFFERS)
        return -1;
    b = &p->b[p->n];
    b->key = (int16_t)key;
    b->size = (size + 3) & ~3u;
    b->off = 0;
    b->alias = (int16_t)alias;
    b->first = b->last = (uint16_t)first;
    return (int32_t)p->n++;
}

efp_buffer *efp_plan_find(efp_plan *p, int32_t key)
{
    uint32_t i;
    for (i = 0; i < p->n; i++)
        if (p->b[i].key == key)
            return &p->b[i];
    return NULL;
}

efp_buffer *efp_plan_root(efp_plan *p, efp_buffer *b)
{
    while (b && b->alias >= 0)
        b = &p->b[b->alias];
    return b;
}

static int overlap(const efp_buffer *a, const efp_buffer *b) { return a->first <= b->last && b->first <= a->last; }

/* The lowest offset for b clear of every placed buffer alive with it: 0 or the end of one of them. */
static uint32_t lowest_free(const efp_plan *p, const uint8_t *placed, const efp_buffer *b)
{
    uint32_t best = 0xffffffffu, i, j;
    for (i = 0; i <= p->n; i++) {
        uint32_t off;
        int clear = 1;
        if (i < p->n && !(placed[i] && overlap(&p->b[i], b)))
            continue;
        off = i < p->n ? p->b[i].off + p->b[i].size : 0;
        if (off >= best)
            continue;
        for (j = 0; j < p->n && clear; j++)
            clear =
                !(placed[j] && overlap(&p->b[j], b) && off < p->b[j].off + p->b[j].size && p->b[j].off < off + b->size);
        if (clear)
            best = off;
    }
    return best;
}

/* One plan: buffers in order of size (by_size) or of their first writer; returns its span. */
static uint32_t place(efp_plan *p, int by_size)
{
    uint8_t placed[EFP_MAX_BUFFERS] = {0};
    uint32_t end = 0, i;
    for (;;) {
        efp_buffer *next = NULL;
        int32_t pick = -1;
        for (i = 0; i < p->n; i++) {
            efp_buffer *b = &p->b[i];
            if (placed[i] || b->alias >= 0)
                continue;
            if (!next || (by_size ? b->size > next->size : b->first < next->first)) {
                next = b;
                pick = (int32_t)i;
            }
        }
        if (!next)
            break;
        next->off = lowest_free(p, placed, next);
        placed[pick] = 1;
        if (next->off + next->size > end)
            end = next->off + next->size;
    }
    return end;
}

uint32_t efp_plan_place(efp_plan *p)
{
    uint32_t by_size = place(p, 1), in_order = place(p, 0), i;
    if (by_size <= in_order)
        place(p, 1);
    for (i = 0; i < p->n; i++)
        p->b[i].off = efp_plan_root(p, &p->b[i])->off;
    return by_size <= in_order ? by_size : in_order;
}
