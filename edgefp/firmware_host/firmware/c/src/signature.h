/* Signed bundles (docs/security.md): a bundle's manifest.sig checked against the Ed25519 public key the
 * firmware trusts. manifest.sig is EFP_SIGNATURE_BYTES bytes: "EFPSIG1\0", the version (u64, little-endian),
 * the key id (the first 8 bytes of the SHA-256 of the public key), then the Ed25519 signature of those
 * 24 bytes followed by the SHA-256 of manifest.json. */
#ifndef EFP_SIGNATURE_H
#define EFP_SIGNATURE_H

#include <stdint.h>

enum { EFP_SIGNATURE_OK = 0, EFP_SIGNATURE_MALFORMED, EFP_SIGNATURE_OTHER_KEY, EFP_SIGNATURE_INVALID };

/* Check `signature` (EFP_SIGNATURE_BYTES) over `manifest` with `key`; EFP_SIGNATURE_OK and the signed
 * version in *version, else what is wrong. */
int efp_signature_check(const uint8_t *signature, const uint8_t *manifest, uint32_t manifest_len, const uint8_t key[32],
                        uint64_t *version);

/* RFC 8032 Ed25519 verification of a message of at most 64 bytes: 0 when `sig` is `key`'s signature of it. */
int efp_ed25519_check(const uint8_t sig[64], const uint8_t key[32], const uint8_t *message, uint32_t len);

#endif
