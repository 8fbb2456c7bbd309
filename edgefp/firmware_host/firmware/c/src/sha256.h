/* SHA-256 (FIPS 180-4), incremental. */
#ifndef EFP_SHA256_H
#define EFP_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t bytes;
    uint8_t block[64];
} sha256_ctx;

void sha256_init(sha256_ctx *c);
void sha256_update(sha256_ctx *c, const uint8_t *data, size_t len);
void sha256_final(sha256_ctx *c, uint8_t digest[32]);
void sha256(const uint8_t *data, size_t len, uint8_t digest[32]);

#endif
