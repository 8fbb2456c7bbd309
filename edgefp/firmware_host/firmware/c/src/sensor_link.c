#include "sensor_link.h"

#include <string.h>

static void start(efp_sensor_link *s, float *window, uint32_t count)
{
    if (window != s->window || count != s->count) { /* another bundle: start over, and ask again */
        s->window = window;
        s->count = count;
        s->filled = 0;
        s->broken = 1;
        s->asked = 0;
    }
}

int efp_sensor_link_ask(efp_sensor_link *s, float *window, uint32_t count)
{
    start(s, window, count);
    if (s->asked) {
        return 0;
    }
    s->asked = 1;
    return 1;
}

int efp_sensor_link_feed(efp_sensor_link *s, uint8_t byte, float *window, uint32_t count)
{
    start(s, window, count);
    if (efp_frame_feed(&s->reader, byte) != EFP_FRAME_OK || s->reader.payload[0] != EFP_SENSOR_FRAME) {
        return 0;
    }
    const uint8_t *body = s->reader.payload + 3;
    size_t len = s->reader.payload_len - EFP_FRAME_OVERHEAD;
    if (len < 4 || (len - 4) % 4 != 0) {
        s->broken = 1;
        return 0;
    }
    uint32_t offset = efp_read_u32(body), n = (uint32_t)(len - 4) / 4;
    if (offset == 0) {
        s->filled = 0;
        s->broken = 0;
    }
    if (s->broken || offset != s->filled || n > count - s->filled) {
        s->broken = 1; /* wait for the next window */
        return 0;
    }
    memcpy(window + offset, body + 4, (size_t)n * 4); /* little-endian IEEE-754, as the chip's floats */
    s->filled += n;
    if (s->filled < count) {
        return 0;
    }
    s->filled = 0;
    s->asked = 0;
    return 1;
}
