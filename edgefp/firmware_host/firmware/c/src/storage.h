/* Bundle storage in the board's flash: two boot-record pages, then two slots.
 *
 * The boot record says which slots hold a verified bundle (size, SHA-256, name) and which one is
 * active, and in a firmware that trusts a key the version of the last signed bundle activated (rollback
 * protection). It is written alternately to its
 * two pages with a growing sequence number and a CRC, so committing a new record is one page program: a reset or power
 * loss before it completes leaves the previous record, and with it the last good bundle, in force. */
#ifndef EFP_STORAGE_H
#define EFP_STORAGE_H

#include <stdint.h>

#include "config.h"

#define EFP_SLOTS 2

typedef struct {
    uint32_t bytes;
    uint8_t sha256[32];
    uint8_t verified;
    char name[EFP_NAME_MAX + 1];
} efp_slot_record;

typedef struct {
    uint32_t magic;
    uint32_t sequence;
    uint8_t active; /* slot index or EFP_NO_SLOT */
    efp_slot_record slot[EFP_SLOTS];
#ifdef EFP_TRUST_KEY
    uint64_t signed_version;     /* the last signed bundle activated (a firmware that trusts a key): its */
    uint8_t signed_manifest[32]; /* version and the SHA-256 of its manifest.json; 0 before the first */
#endif
    uint32_t crc;
} efp_boot_record;

extern efp_boot_record efp_storage_record; /* the record in force */

/* Read the newest valid record (an empty one when there is none). 0, or -1 when the flash is too small. */
int efp_storage_init(void);
/* Make efp_storage_record the record in force (written to the other page). 0 on success. */
int efp_storage_commit(void);

uint32_t efp_slot_capacity(void);
const uint8_t *efp_slot_data(int slot);
int efp_slot_erase(int slot, uint32_t bytes);
int efp_slot_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len);

#endif
