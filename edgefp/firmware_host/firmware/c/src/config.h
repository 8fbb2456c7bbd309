/* Build-time budgets of the firmware. A board's build overrides them with -D (edgefp export-firmware
 * writes them from the board profile). What the host and the firmware share is in efp_contract.h. */
#ifndef EFP_CONFIG_H
#define EFP_CONFIG_H

#include "efp_contract.h"

#define EFP_FIRMWARE "edgefp-fw 0.1.0"

#ifndef EFP_ARENA_BYTES
#define EFP_ARENA_BYTES (160 * 1024) /* tensor arena, score tables and OOD buffer of the active bundle */
#endif
#ifndef EFP_MAX_FRAME
#define EFP_MAX_FRAME 2048 /* largest frame payload, type to CRC */
#endif
#if EFP_MAX_FRAME < EFP_MIN_FRAME || EFP_MAX_FRAME > EFP_FRAME_LIMIT
#error "EFP_MAX_FRAME must be within what hosts accept (EFP_MIN_FRAME to EFP_FRAME_LIMIT)"
#endif
#ifndef EFP_LOG_CAPACITY
#define EFP_LOG_CAPACITY 64 /* recent inputs kept for READ_LOG, at most (as many as the arena has room for) */
#endif
#ifndef EFP_SENSOR_LOOP
#define EFP_SENSOR_LOOP 1 /* classify the board's sensor windows when idle; 0: a board without a sensor */
#endif
#ifndef EFP_OP_NAMES
#define EFP_OP_NAMES 1 /* 1: refusals name TFLite's operators and types; 0: they give their code numbers */
#endif
#ifndef EFP_SENSOR_HZ
#define EFP_SENSOR_HZ 0 /* how often efp_board_sensor_read() is asked for a window; 0: whenever the chip is idle */
#endif
#ifndef EFP_MAX_BUFFERS
#define EFP_MAX_BUFFERS 192 /* tensors and scratch buffers of a model's plan: 16 bytes of stack each at set-up */
#endif
#define EFP_WINDOW 100 /* inputs in the recent window of the counters */
#ifndef EFP_BENCH_MAX_US
#define EFP_BENCH_MAX_US (EFP_BENCH_MAX_SECONDS * 1000000u) /* a BENCH still running after this long stops */
#endif

#endif
