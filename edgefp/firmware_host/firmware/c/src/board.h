/* The board layer: the few functions the firmware needs from a board. One file per port
 * (boards/<port>/board.c); docs/porting.md explains how to write one. */
#ifndef EFP_BOARD_H
#define EFP_BOARD_H

#include <stddef.h>
#include <stdint.h>

/* Bring up clocks, the UART, the timer and the storage. Called once, first thing in main(). */
void efp_board_init(void);

/* Bytes received on the UART since the last call, at most max; never blocks (0 when none). A port
 * buffers what arrives meanwhile (an RX interrupt into a ring buffer), so that nothing is lost while
 * the firmware runs an inference. */
size_t efp_board_uart_read(uint8_t *buf, size_t max);

/* Send len bytes on the UART; returns once they are queued or sent. */
void efp_board_uart_write(const uint8_t *buf, size_t len);

/* Microseconds since efp_board_init (wraps after 2^32 us, about 71 minutes). */
uint32_t efp_board_time_us(void);

/* Wait for the next interrupt (a UART byte or a timer tick), or return at once. */
void efp_board_idle(void);

/* Storage: a flash region of efp_board_flash_size() bytes, erased in pages of efp_board_flash_page() bytes
 * (erased bytes read 0xFF), programmed only where erased, and read directly through the pointer
 * efp_board_flash_map() (memory-mapped flash, so a model runs in place). Offsets are from its start.
 * Both return 0 on success, -1 on failure (out of range, not page-aligned, a write fault). */
uint32_t efp_board_flash_size(void);
uint32_t efp_board_flash_page(void);
const uint8_t *efp_board_flash_map(void);
int efp_board_flash_erase(uint32_t offset, uint32_t len); /* offset and len multiples of the page */
int efp_board_flash_program(uint32_t offset, const uint8_t *data, uint32_t len);

/* The sensor: fill window[0..count) with the next window of raw values (channels last, as the model's
 * training data) and return 1, or return 0 while none is ready, -1 when the board has no sensor. The
 * firmware asks whenever it is idle (or EFP_SENSOR_HZ times a second) while a bundle is active, always
 * with the same buffer until a window is returned: a board may fill it as readings arrive. */
int efp_board_sensor_read(float *window, uint32_t count);

/* Restart the chip as after power-up; does not return. */
void efp_board_reset(void);

/* The board's name in HELLO (e.g. "qemu-m4"). */
extern const char efp_board_name[];

#endif
