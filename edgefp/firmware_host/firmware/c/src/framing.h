/* Frames on the UART (docs/protocol.md, Framing): COBS(type | seq | body | crc32) followed by 0x00. */
#ifndef EFP_FRAMING_H
#define EFP_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define FRAME_OVERHEAD 7 /* type, seq and CRC around every body */
#define FRAME_ENCODED_LIMIT (EFP_MAX_FRAME + (EFP_MAX_FRAME + 253) / 254 + 1)

uint32_t crc32_update(uint32_t crc, const uint8_t *data, size_t len); /* zlib's crc32(): start with 0 */

static inline uint32_t read_u32(const uint8_t *p) /* little-endian, as every field on the wire */
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

enum frame_event { FRAME_NONE, FRAME_OK, FRAME_BAD, FRAME_OVERSIZED };

/* Collects received bytes into frames. After FRAME_OK, payload/payload_len hold the decoded frame
 * (type, seq, body, crc); after FRAME_OVERSIZED, type and seq are read from the dropped frame's start. */
typedef struct {
    uint8_t buf[FRAME_ENCODED_LIMIT];
    size_t len;
    int discarding;
    const uint8_t *payload;
    size_t payload_len;
    uint8_t type;
    uint16_t seq;
} frame_reader;

enum frame_event frame_feed(frame_reader *r, uint8_t byte);

/* Send a payload (type | seq | body | crc, as built by frame_seal) as one frame, 0x00 before and after. */
void frame_send(const uint8_t *payload, size_t len);

/* Write type and seq at payload[0..2] and the CRC after body_len body bytes; returns the payload length. */
size_t frame_seal(uint8_t *payload, uint8_t type, uint16_t seq, size_t body_len);

#endif
