#include "storage.h"

#include <stddef.h>
#include <string.h>

#include "board.h"
#include "framing.h"

#define RECORD_MAGIC 0x42504645u /* "EFPB" */

boot_record storage_record;
static uint32_t record_page; /* page index (0 or 1) holding the record in force */

static uint32_t record_crc(const boot_record *r)
{
    return crc32_update(0, (const uint8_t *)r, offsetof(boot_record, crc));
}

static int record_valid(const boot_record *r)
{
    return r->magic == RECORD_MAGIC && r->crc == record_crc(r) &&
           (r->active == NO_SLOT || r->active < SLOTS);
}

int storage_init(void)
{
    uint32_t page = board_flash_page();
    if (page < sizeof(boot_record) || board_flash_size() < 4 * page) {
        return -1;
    }
    memset(&storage_record, 0, sizeof storage_record);
    storage_record.magic = RECORD_MAGIC;
    storage_record.active = NO_SLOT;
    record_page = 1; /* so that the first commit goes to page 0 */
    for (uint32_t i = 0; i < 2; ++i) {
        boot_record r;
        memcpy(&r, board_flash_map() + i * page, sizeof r);
        if (record_valid(&r) && (storage_record.sequence == 0 || r.sequence > storage_record.sequence)) {
            storage_record = r;
            record_page = i;
        }
    }
    return 0;
}

int storage_commit(void)
{
    uint32_t page = board_flash_page(), target = 1 - record_page;
    storage_record.magic = RECORD_MAGIC;
    storage_record.sequence += 1;
    storage_record.crc = record_crc(&storage_record);
    if (board_flash_erase(target * page, page) != 0 ||
        board_flash_program(target * page, (const uint8_t *)&storage_record, sizeof storage_record) != 0 ||
        memcmp(board_flash_map() + target * page, &storage_record, sizeof storage_record) != 0) {
        return -1;
    }
    record_page = target;
    return 0;
}

uint32_t slot_capacity(void)
{
    uint32_t page = board_flash_page();
    return (board_flash_size() - 2 * page) / 2 / page * page;
}

static uint32_t slot_offset(int slot)
{
    return 2 * board_flash_page() + (uint32_t)slot * slot_capacity();
}

const uint8_t *slot_data(int slot)
{
    return board_flash_map() + slot_offset(slot);
}

int slot_erase(int slot, uint32_t bytes)
{
    uint32_t page = board_flash_page();
    return board_flash_erase(slot_offset(slot), (bytes + page - 1) / page * page);
}

int slot_program(int slot, uint32_t offset, const uint8_t *data, uint32_t len)
{
    return board_flash_program(slot_offset(slot) + offset, data, len);
}
