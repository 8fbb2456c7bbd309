/* SHA-256 (FIPS 180-4), incremental. */
#ifndef EFP_SHA256_H
#define EFP_SHA256_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint32_t state[8];
    uint64_t bytes;
    uint8_t block[64];
} efp_sha256_ctx;

void efp_sha256_init(efp_sha256_ctx *c);
void efp_sha256_update(efp_sha256_ctx *c, const uint8_t *data, size_t len);
void efp_sha256_final(efp_sha256_ctx *c, uint8_t digest[32]);
void efp_sha256(const uint8_t *data, size_t len, uint8_t digest[32]);

#endif
