#include "emulated_flash.h"

#include <string.h>

static int in_range(const efp_emulated_flash *f, uint32_t offset, uint32_t len)
{
    return f->base != NULL && offset <= f->size && len <= f->size - offset;
}

int efp_emulated_flash_erase(const efp_emulated_flash *f, uint32_t offset, uint32_t len)
{
    if (!in_range(f, offset, len) || offset % f->page != 0 || len % f->page != 0) {
        return -1;
    }
    memset(f->base + offset, 0xFF, len);
    return 0;
}

int efp_emulated_flash_program(const efp_emulated_flash *f, uint32_t offset, const uint8_t *data, uint32_t len)
{
    if (!in_range(f, offset, len)) {
        return -1;
    }
    volatile uint8_t *p = f->base + offset; /* memory-mapped: every write reaches it, in order */
    int fault = 0;
    for (uint32_t i = 0; i < len; i++) {
        uint8_t v = (uint8_t)(p[i] & data[i]); /* NOR: programming only clears bits */
        p[i] = v;
        fault |= v != data[i];
    }
    return fault ? -1 : 0;
}
