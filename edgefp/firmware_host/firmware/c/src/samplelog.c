#include "samplelog.h"

void efp_log_init(efp_sample_log *l, uint8_t *memory, size_t bytes, uint32_t classes, uint32_t values,
                  uint32_t data_bytes, uint32_t most)
{
    l->memory = memory;
    l->data_offset = (uint32_t)((sizeof(efp_log_head) + classes + values + 3u) & ~3u);
    l->slot_bytes = l->data_offset + ((data_bytes + 3u) & ~3u);
    size_t fit = bytes / l->slot_bytes;
    l->capacity = fit < most ? (uint32_t)fit : most;
    l->count = l->next = 0;
}

static efp_log_head *slot(const efp_sample_log *l, uint32_t index)
{
    return (efp_log_head *)(void *)(l->memory + (size_t)index * l->slot_bytes);
}

efp_log_head *efp_log_append(efp_sample_log *l)
{
    if (l->capacity == 0) {
        return 0;
    }
    efp_log_head *h = slot(l, l->next);
    l->next = (l->next + 1) % l->capacity;
    l->count += l->count < l->capacity;
    return h;
}

uint32_t efp_log_first(const efp_sample_log *l, uint32_t seen) { return seen + 1 - l->count; }

const efp_log_head *efp_log_find(const efp_sample_log *l, uint32_t seen, uint32_t after, int ood_only)
{
    uint32_t first = efp_log_first(l, seen);
    if (after >= seen) {
        return 0;
    }
    for (uint32_t n = after + 1 > first ? after + 1 : first; n <= seen && n >= first; ++n) {
        /* the newest (seen) sits just before next; n is (seen - n) places older */
        const efp_log_head *h = slot(l, (l->next + l->capacity - 1 - (seen - n) % l->capacity) % l->capacity);
        if (!ood_only || h->ood) {
            return h;
        }
    }
    return 0;
}
