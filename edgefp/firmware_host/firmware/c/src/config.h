/* Build-time budgets of the firmware. A board's build overrides them with -D (edgefp export-firmware
 * writes them from the board profile). */
#ifndef EFP_CONFIG_H
#define EFP_CONFIG_H

#define EFP_FIRMWARE "edgefp-fw 0.1.0"
#define EFP_PROTOCOL_VERSION 1

#ifndef EFP_ARENA_BYTES
#define EFP_ARENA_BYTES (160 * 1024) /* tensor arena, score tables and OOD buffer of the active bundle */
#endif
#ifndef EFP_MAX_FRAME
#define EFP_MAX_FRAME 2048 /* largest frame payload, type to CRC */
#endif
#ifndef EFP_OOD_CAPACITY
#define EFP_OOD_CAPACITY 16 /* recent OOD inputs kept for GET_OOD */
#endif
#ifndef EFP_LOG_CAPACITY
#define EFP_LOG_CAPACITY 64 /* recent inputs kept for READ_LOG, at most (as many as the arena has room for) */
#endif
#ifndef EFP_SENSOR_HZ
#define EFP_SENSOR_HZ 0 /* how often board_sensor_read() is asked for a window; 0: whenever the chip is idle */
#endif
#ifndef EFP_MAX_BUFFERS
#define EFP_MAX_BUFFERS 192 /* tensors and scratch buffers of a model's plan: 16 bytes of stack each at set-up */
#endif
#define EFP_WINDOW 100    /* inputs in the recent window of the counters */
#define EFP_BENCH_MAX_RUNS 100000u /* runs + warmup of one BENCH (edgefp.limits.MAX_INVOKES) */
#ifndef EFP_BENCH_MAX_US
#define EFP_BENCH_MAX_US 5000000u /* a BENCH still running after this long stops (edgefp.limits.BENCH_MAX_SECONDS) */
#endif
#define EFP_MAX_LAYERS 16 /* fingerprinted layers a bundle may have */
#define EFP_NAME_MAX 32   /* bundle names in HELLO */

#endif
