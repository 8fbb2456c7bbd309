#include "framing.h"

#include "board.h"

static const uint32_t crc_nibble[16] = {
    0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
    0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
};

uint32_t efp_crc32_update(uint32_t crc, const uint8_t *data, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *data++;
        crc = (crc >> 4) ^ crc_nibble[crc & 15];
        crc = (crc >> 4) ^ crc_nibble[crc & 15];
    }
    return ~crc;
}

/* COBS-decode n bytes in place; returns the decoded length, or -1 when malformed. With partial, a
 * block cut short is accepted (to read the start of a dropped frame). */
static long cobs_decode(uint8_t *buf, size_t n, int partial)
{
    size_t in = 0, out = 0;
    while (in < n) {
        uint8_t code = buf[in++];
        if (code == 0) {
            return -1;
        }
        size_t copy = (size_t)code - 1;
        if (in + copy > n) {
            if (!partial) {
                return -1;
            }
            copy = n - in;
        }
        for (size_t i = 0; i < copy; ++i) {
            buf[out++] = buf[in++];
        }
        if (code < 0xFF && in < n) {
            buf[out++] = 0;
        }
    }
    return (long)out;
}

enum efp_frame_event efp_frame_feed(efp_frame_reader *r, uint8_t byte)
{
    if (byte != 0) {
        if (r->discarding) {
            return EFP_FRAME_NONE;
        }
        if (r->len < EFP_FRAME_ENCODED_LIMIT) {
            r->buf[r->len++] = byte;
            return EFP_FRAME_NONE;
        }
        long start = cobs_decode(r->buf, 8, 1);
        r->type = start >= 3 ? r->buf[0] : 0;
        r->seq = start >= 3 ? (uint16_t)(r->buf[1] | r->buf[2] << 8) : 0;
        r->len = 0;
        r->discarding = 1;
        return EFP_FRAME_OVERSIZED;
    }
    size_t n = r->len;
    int discarded = r->discarding;
    r->len = 0;
    r->discarding = 0;
    if (n == 0 || discarded) {
        return EFP_FRAME_NONE;
    }
    long len = cobs_decode(r->buf, n, 0);
    if (len < EFP_FRAME_OVERHEAD || efp_crc32_update(0, r->buf, (size_t)len - 4) != efp_read_u32(r->buf + len - 4)) {
        return EFP_FRAME_BAD;
    }
    r->payload = r->buf;
    r->payload_len = (size_t)len;
    return EFP_FRAME_OK;
}

size_t efp_frame_seal(uint8_t *payload, uint8_t type, uint16_t seq, size_t body_len)
{
    payload[0] = type;
    payload[1] = (uint8_t)seq;
    payload[2] = (uint8_t)(seq >> 8);
    size_t n = 3 + body_len;
    uint32_t crc = efp_crc32_update(0, payload, n);
    for (int i = 0; i < 4; ++i) {
        payload[n++] = (uint8_t)(crc >> (8 * i));
    }
    return n;
}

void efp_frame_send(const uint8_t *payload, size_t len)
{
    static const uint8_t zero = 0, full = 0xFF;
    efp_board_uart_write(&zero, 1);
    size_t start = 0;
    for (;;) {
        size_t end = start;
        while (end < len && payload[end] != 0 && end - start < 254) {
            ++end;
        }
        if (end - start == 254) { /* a full block: no zero implied, the piece goes on */
            efp_board_uart_write(&full, 1);
            efp_board_uart_write(payload + start, 254);
            start = end;
            continue;
        }
        uint8_t code = (uint8_t)(end - start + 1);
        efp_board_uart_write(&code, 1);
        efp_board_uart_write(payload + start, end - start);
        if (end >= len) {
            break;
        }
        start = end + 1; /* the zero the code implies */
    }
    efp_board_uart_write(&zero, 1);
}
