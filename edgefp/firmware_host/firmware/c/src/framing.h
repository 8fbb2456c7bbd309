/* Frames on the UART (docs/protocol.md, Framing): COBS(type | seq | body | crc32) followed by 0x00. */
#ifndef EFP_FRAMING_H
#define EFP_FRAMING_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

#define EFP_FRAME_ENCODED_LIMIT (EFP_MAX_FRAME + (EFP_MAX_FRAME + 253) / 254 + 1)

uint32_t efp_crc32_update(uint32_t crc, const uint8_t *data, size_t len); /* zlib's crc32(): start with 0 */

static inline uint32_t efp_read_u32(const uint8_t *p) /* little-endian, as every field on the wire */
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

enum efp_frame_event { EFP_FRAME_NONE, EFP_FRAME_OK, EFP_FRAME_BAD, EFP_FRAME_OVERSIZED };

/* Collects received bytes into frames. After EFP_FRAME_OK, payload/payload_len hold the decoded frame
 * (type, seq, body, crc); after EFP_FRAME_OVERSIZED, type and seq are read from the dropped frame's start. */
typedef struct {
    uint8_t buf[EFP_FRAME_ENCODED_LIMIT];
    size_t len;
    int discarding;
    const uint8_t *payload;
    size_t payload_len;
    uint8_t type;
    uint16_t seq;
} efp_frame_reader;

enum efp_frame_event efp_frame_feed(efp_frame_reader *r, uint8_t byte);

/* Send a payload (type | seq | body | crc, as built by efp_frame_seal) as one frame, 0x00 before and after. */
void efp_frame_send(const uint8_t *payload, size_t len);

/* Write type and seq at payload[0..2] and the CRC after body_len body bytes; returns the payload length. */
size_t efp_frame_seal(uint8_t *payload, uint8_t type, uint16_t seq, size_t body_len);

#endif
