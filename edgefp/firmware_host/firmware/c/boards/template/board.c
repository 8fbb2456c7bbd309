/* The board layer of a board without a tested port: every function of src/board.h as a stub that
 * compiles, saying what to fill in with the vendor SDK. Until then the firmware builds but has no
 * UART, no clock, no flash and no sensor. Add the chip's link.ld next to this file (the Makefile links
 * with it) and, for a vendor HAL, a board.mk (BOARD_EXTRA_CFLAGS, BOARD_EXTRA_SRCS, BOARD_EXTRA_LDLIBS).
 * docs/porting.md maps each function to the nRF52840, RP2040, STM32F746 and ESP32-S3 SDKs;
 * boards/mps2-an386/ (QEMU) is a complete, tested example. */
#include "board.h"

/* Fill in: the board's name, as HELLO reports it and `edgefp devices` shows it. */
const char efp_board_name[] = "template";

void efp_board_init(void)
{
    /* Fill in: clocks; the UART (115200 8N1) with an RX interrupt filling a ring buffer; a 1 MHz
     * 32-bit timer for efp_board_time_us; the flash controller; then enable interrupts. */
}

size_t efp_board_uart_read(uint8_t *buf, size_t max)
{
    /* Fill in: copy up to max bytes out of the RX ring buffer; never block. */
    (void)buf;
    (void)max;
    return 0;
}

void efp_board_uart_write(const uint8_t *buf, size_t len)
{
    /* Fill in: send len bytes (polled TX is fine). */
    (void)buf;
    (void)len;
}

uint32_t efp_board_time_us(void)
{
    /* Fill in: microseconds since efp_board_init from the 1 MHz timer (wraps at 2^32). */
    return 0;
}

void efp_board_idle(void)
{
    /* Fill in: mask interrupts, return if the RX ring holds bytes, else wait for an interrupt (WFI). */
}

uint32_t efp_board_flash_size(void)
{
    /* Fill in: bytes of the flash region for bundles (at least 4 pages: two boot records, two slots). */
    return 0;
}

uint32_t efp_board_flash_page(void)
{
    /* Fill in: the erase unit of that region. */
    return 1;
}

const uint8_t *efp_board_flash_map(void)
{
    /* Fill in: the region's memory-mapped address (models run in place from it). */
    return NULL;
}

int efp_board_flash_erase(uint32_t offset, uint32_t len)
{
    /* Fill in: erase whole pages to 0xFF; -1 when out of range or not page-aligned. */
    (void)offset;
    (void)len;
    return -1;
}

int efp_board_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    /* Fill in: program any offset and length (pad the write unit with 0xFF), read back, -1 on a
     * mismatch or when out of range. */
    (void)offset;
    (void)data;
    (void)len;
    return -1;
}

int efp_board_sensor_read(float *window, uint32_t count)
{
    /* Fill in: 1 when window[0..count) holds the next window of raw readings (channels last), 0 while
     * it fills; or keep -1: the board has no sensor and classifies what the host sends. */
    (void)window;
    (void)count;
    return -1;
}

void efp_board_reset(void)
{
    /* Fill in: restart the chip as from power-up (NVIC_SystemReset on a Cortex-M). */
    for (;;) {
    }
}
