/* The arena planner: every buffer the model computes (activations, operators' scratch memory) with
 * its lifetime, placed offline so that buffers alive at the same time never overlap. */
#ifndef EFP_PLAN_H
#define EFP_PLAN_H

#include <stdint.h>

#include "config.h"

typedef struct {
    uint32_t size, off;
    int16_t key;          /* tensor index, or -1 - k for operator k's scratch */
    int16_t alias;        /* -1, or the buffer whose memory this one is */
    uint16_t first, last; /* operators writing it first and reading it last */
} efp_buffer;

typedef struct {
    uint32_t n;
    efp_buffer b[EFP_MAX_BUFFERS];
} efp_plan;

/* A new buffer (size rounded up to 4 bytes), or -1 when the plan is full. */
int32_t efp_plan_add(efp_plan *p, int32_t key, uint32_t size, uint32_t first, int32_t alias);
/* The buffer of key, or NULL; efp_plan_root follows aliases to the buffer that owns the memory. */
efp_buffer *efp_plan_find(efp_plan *p, int32_t key);
efp_buffer *efp_plan_root(efp_plan *p, efp_buffer *b);
/* Offsets for every buffer; returns the bytes the plan spans. */
uint32_t efp_plan_place(efp_plan *p);

#endif
