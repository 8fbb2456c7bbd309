/* Ed25519 verification is Monocypher's (crypto_eddsa_check_equation, which also refuses non-canonical S
 * and points, and crypto_eddsa_reduce) with LibTomCrypt's SHA-512 (as Orson Peters' Ed25519 ships it),
 * composed as RFC 8032 section 5.1.7 and Monocypher's own optional crypto_ed25519_check compose them. Both
 * come from pinned source distributions (c/third_party/pins.json); nothing of the cryptography is written
 * here. */
#include "signature.h"

#include <string.h>

#include "efp_contract.h"
#include "monocypher.h"
#include "sha256.h"
#include "sha512.h"

#define MAX_MESSAGE 64
#define HEADER      24 /* magic, version, key id */

int efp_ed25519_check(const uint8_t sig[64], const uint8_t key[32], const uint8_t *message, uint32_t len)
{
    uint8_t hashed[64 + MAX_MESSAGE], hash[64], h_ram[32]; /* R || A || M, SHA-512 of it, reduced mod L */
    if (len > MAX_MESSAGE) {
        return -1;
    }
    memcpy(hashed, sig, 32);
    memcpy(hashed + 32, key, 32);
    memcpy(hashed + 64, message, len);
    sha512(hashed, 64u + len, hash);
    crypto_eddsa_reduce(h_ram, hash);
    return crypto_eddsa_check_equation(sig, key, h_ram);
}

int efp_signature_check(const uint8_t *signature, const uint8_t *manifest, uint32_t manifest_len, const uint8_t key[32],
                        uint64_t *version)
{
    static const uint8_t magic[8] = {'E', 'F', 'P', 'S', 'I', 'G', '1', 0};
    uint8_t message[HEADER + 32], key_hash[32];
    if (memcmp(signature, magic, sizeof magic) != 0) {
        return EFP_SIGNATURE_MALFORMED;
    }
    efp_sha256(key, 32, key_hash);
    if (memcmp(signature + 16, key_hash, 8) != 0) {
        return EFP_SIGNATURE_OTHER_KEY;
    }
    memcpy(message, signature, HEADER);
    efp_sha256(manifest, manifest_len, message + HEADER);
    if (efp_ed25519_check(signature + HEADER, key, message, sizeof message) != 0) {
        return EFP_SIGNATURE_INVALID;
    }
    *version = 0;
    for (int i = 7; i >= 0; --i) {
        *version = *version << 8 | signature[8 + i];
    }
    return EFP_SIGNATURE_OK;
}
