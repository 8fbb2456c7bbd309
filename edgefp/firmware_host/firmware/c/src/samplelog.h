/* The sample log: the most recent inputs, every one of them, with their verdicts and data, numbered as
 * the inputs seen, in a ring of fixed-size slots in memory the caller gives (the arena's spare end).
 * READ_LOG (docs/protocol.md) reads it by number, so a host that records never misses or repeats one. */
#ifndef EFP_SAMPLELOG_H
#define EFP_SAMPLELOG_H

#include <stddef.h>
#include <stdint.h>

enum efp_log_kind { EFP_LOG_INT8 = 0, EFP_LOG_RAW = 1 }; /* the int8 input tensor, or the raw float32 values */

typedef struct {
    uint32_t input, timestamp_ms, latency_us;
    float score;
    uint8_t pred, ood, kind, reserved;
} efp_log_head; /* followed by probs[classes], errors[values], then the data (4-byte aligned) */

typedef struct {
    uint8_t *memory;
    uint32_t slot_bytes, data_offset, capacity, count, next;
} efp_sample_log;

/* Lay the log out in `bytes` of `memory` (4-byte aligned): slots for `classes` probabilities, `values`
 * errors and `data_bytes` of data each, as many as fit, at most `most`. */
void efp_log_init(efp_sample_log *l, uint8_t *memory, size_t bytes, uint32_t classes, uint32_t values,
                  uint32_t data_bytes, uint32_t most);

/* The slot for the next input (the oldest one's, when the log is full), to fill in. */
efp_log_head *efp_log_append(efp_sample_log *l);

/* The first input numbered above `after` (only flagged ones with ood_only), or NULL; the newest input
 * held is number `seen`. */
const efp_log_head *efp_log_find(const efp_sample_log *l, uint32_t seen, uint32_t after, int ood_only);

/* The oldest input number held (seen + 1 when none is). */
uint32_t efp_log_first(const efp_sample_log *l, uint32_t seen);

static inline int8_t *efp_log_probs(const efp_log_head *h) { return (int8_t *)(h + 1); }
static inline uint8_t *efp_log_data(const efp_sample_log *l, const efp_log_head *h)
{
    return (uint8_t *)h + l->data_offset;
}

#endif
