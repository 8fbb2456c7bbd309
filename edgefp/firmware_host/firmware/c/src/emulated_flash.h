/* NOR flash emulated in RAM, for boards without a real one (the host build's mmap'd file, QEMU's PSRAM):
 * erased bytes read 0xFF, erasing is by whole pages, programming only clears bits and fails where a bit
 * should be 1 but is already 0 (programmed where not erased), as on a chip. A board's
 * efp_board_flash_erase and efp_board_flash_program call these with its region. */
#ifndef EFP_EMULATED_FLASH_H
#define EFP_EMULATED_FLASH_H

#include <stdint.h>

typedef struct {
    uint8_t *base; /* NULL: not mapped (every call fails) */
    uint32_t size, page;
} efp_emulated_flash;

/* 0 on success, -1 out of range or not page-aligned. */
int efp_emulated_flash_erase(const efp_emulated_flash *f, uint32_t offset, uint32_t len);

/* 0 on success, -1 out of range or programmed where not erased (the bits are cleared all the same). */
int efp_emulated_flash_program(const efp_emulated_flash *f, uint32_t offset, const uint8_t *data, uint32_t len);

#endif
