/* A sensor reached over a byte stream (docs/sensors.md, the sensor link), for boards whose sensor is a
 * host (QEMU's second UART, the host build's socket): the board asks for a window with one byte,
 * SENSOR_ASK, and the window comes back as frames of raw float32 values. A board's board_sensor_read()
 * sends SENSOR_ASK when sensor_link_ask() says so and feeds sensor_link_feed() the bytes it received. */
#ifndef EFP_SENSOR_LINK_H
#define EFP_SENSOR_LINK_H

#include <stddef.h>
#include <stdint.h>

#include "framing.h"

#define SENSOR_FRAME 0x40 /* body: offset:u32 (in values) | float32 values */
#define SENSOR_ASK 0x3F   /* the board wants the next window */

typedef struct {
    frame_reader reader;
    float *window; /* the window being filled, and its size in values */
    uint32_t count;
    uint32_t filled; /* values received in order so far */
    int broken;      /* a frame was missed: wait for the next window */
    int asked;       /* a window was asked for and has not come yet */
} sensor_link;

/* 1 when the board should send SENSOR_ASK now: nothing is asked for this window buffer yet. */
int sensor_link_ask(sensor_link *s, float *window, uint32_t count);

/* Feed one received byte; 1 when it completed window[0..count) (which then holds the window). A window
 * comes as frames with offsets 0, k, 2k, ...; one that breaks the order, or runs past count, is dropped
 * up to the next frame at offset 0. */
int sensor_link_feed(sensor_link *s, uint8_t byte, float *window, uint32_t count);

#endif
