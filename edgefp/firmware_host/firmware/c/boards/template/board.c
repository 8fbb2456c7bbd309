/* The board layer of a board without a tested port. Implement every function of src/board.h here
 * (UART, microsecond clock, idle, flash storage, sensor, reset, board_name) with the vendor SDK, give the
 * Makefile the compiler flags and linker script of the chip, and delete the #error below.
 * docs/porting.md maps each function to the nRF52840, RP2040, STM32F746 and ESP32-S3 SDKs;
 * boards/mps2-an386/ (QEMU) is a complete, tested example. */
#include "board.h"

#error "write the board layer for this board first (docs/porting.md)"
