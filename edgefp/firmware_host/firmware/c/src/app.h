/* The device side of the edgefp protocol (docs/protocol.md) on a microcontroller. */
#ifndef EFP_APP_H
#define EFP_APP_H

#include <stddef.h>
#include <stdint.h>

/* Read storage and start serving the last active bundle (call after efp_board_init). */
void efp_app_init(void);

/* Handle bytes received on the UART (answers go out through efp_board_uart_write). */
void efp_app_receive(const uint8_t *data, size_t len);

/* Read what the UART received and handle it; 1 when anything came. */
int efp_app_poll(void);

/* Standalone mode: when the board's sensor has a window (efp_board_sensor_read), classify it (efp.h); 1 when
 * a window came. Only in builds with the sensor loop (EFP_SENSOR_LOOP, config.h). */
int efp_app_sense(void);

#endif
