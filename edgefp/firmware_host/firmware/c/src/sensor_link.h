/* A sensor reached over a byte stream (docs/sensors.md, the sensor link), for boards whose sensor is a
 * host (QEMU's second UART, the host build's socket): the board asks for a window with one byte,
 * EFP_SENSOR_ASK, and the window comes back as frames of raw float32 values. A board's efp_board_sensor_read()
 * sends EFP_SENSOR_ASK when efp_sensor_link_ask() says so and feeds efp_sensor_link_feed() the bytes it received. */
#ifndef EFP_SENSOR_LINK_H
#define EFP_SENSOR_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "framing.h"

typedef struct {
    efp_frame_reader reader;
    float *window; /* the window being filled, and its size in values */
    uint32_t count;
    uint32_t filled; /* values received in order so far */
    int broken;      /* a frame was missed: wait for the next window */
    int asked;       /* a window was asked for and has not come yet */
} efp_sensor_link;

/* 1 when the board should send EFP_SENSOR_ASK now: nothing is asked for this window buffer yet. */
int efp_sensor_link_ask(efp_sensor_link *s, float *window, uint32_t count);

/* Feed one received byte; 1 when it completed window[0..count) (which then holds the window). A window
 * comes as frames with offsets 0, k, 2k, ...; one that breaks the order, or runs past count, is dropped
 * up to the next frame at offset 0. */
int efp_sensor_link_feed(efp_sensor_link *s, uint8_t byte, float *window, uint32_t count);

#endif
