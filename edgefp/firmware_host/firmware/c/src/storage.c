#include "storage.h"

#include <stddef.h>
#include <string.h>

#include "board.h"
#include "framing.h"

#define RECORD_MAGIC 0x42504645u /* "EFPB" */

efp_boot_record efp_storage_record;
static uint32_t record_page; /* page index (0 or 1) holding the record in force */

static uint32_t record_crc(const efp_boot_record *r)
{
    return efp_crc32_update(0, (const uint8_t *)r, offsetof(efp_boot_record, crc));
}

static int record_valid(const efp_boot_record *r)
{
    return r->magic == RECORD_MAGIC && r->crc == record_crc(r) && (r->active == EFP_NO_SLOT || r->active < EFP_SLOTS);
}

int efp_storage_init(void)
{
    uint32_t page = efp_board_flash_page();
    if (page < sizeof(efp_boot_record) || efp_board_flash_size() < 4 * page) {
        return -1;
    }
    memset(&efp_storage_record, 0, sizeof efp_storage_record);
    efp_storage_record.magic = RECORD_MAGIC;
    efp_storage_record.active = EFP_NO_SLOT;
    record_page = 1; /* so that the first commit goes to page 0 */
    for (uint32_t i = 0; i < 2; ++i) {
        efp_boot_record r;
        memcpy(&r, efp_board_flash_map() + i * page, sizeof r);
        if (record_valid(&r) && (efp_storage_record.sequence == 0 || r.sequence > efp_storage_record.sequence)) {
            efp_storage_record = r;
            record_page = i;
        }
    }
    return 0;
}

int efp_storage_commit(void)
{
    uint32_t page = efp_board_flash_page(), target = 1 - record_page;
    efp_storage_record.magic = RECORD_MAGIC;
    efp_storage_record.sequence += 1;
    efp_storage_record.crc = record_crc(&efp_storage_record);
    if (efp_board_flash_erase(target * page, page) != 0 ||
        efp_board_flash_program(target * page, (const uint8_t *)&efp_storage_record, sizeof efp_storage_record) != 0 ||
        memcmp(efp_board_flash_map() + target * page, &efp_storage_record, sizeof efp_storage_record) != 0) {
        return -1;
    }
    record_page = target;
    return 0;
}

uint32_t efp_slot_capacity(void)
{
    uint32_t page = efp_board_flash_page();
    return (efp_board_flash_size() - 2 * page) / 2 / page * page;
}

static uint32_t slot_offset(int slot) { return 2 * efp_board_flash_page() + (uint32_t)slot * efp_slot_capacity(); }

const uint8_t *efp_slot_data(int slot) { return efp_board_flash_map() + slot_offset(slot); }

int efp_slot_erase(int slot, uint32_t bytes)
{
    uint32_t page = efp_board_flash_page();
    return efp_board_flash_erase(slot_offset(slot), (bytes + page - 1) / page * page);
}

int efp_slot_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return efp_board_flash_program(slot_offset(slot) + offset, data, len);
}
