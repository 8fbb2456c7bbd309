/* What an operator sees of the engine: its tensors, its options, and memory. Each operator unit
 * (op_*.c) has a prepare function, run once per model set-up (twice: a measuring pass where every
 * pointer it gets is NULL, then the real one), and an eval function that runs it from the
 * parameters prepare wrote. The table of operators is in ops.c. */
#ifndef EFP_KERNEL_H
#define EFP_KERNEL_H

#include <stddef.h>
#include <stdint.h>

#include "engine.h"
#include "fixedpoint.h"

enum efp_type { EFP_FLOAT32 = EFP_IO_FLOAT32, EFP_INT32 = EFP_IO_INT32, EFP_INT8 = EFP_IO_INT8 };

typedef struct {
    int32_t idx; /* tensor index; -1: an optional input left out */
    int32_t type, ndim, dims[EFP_MAX_DIMS], zp;
    uint32_t count, bytes;
    const uint8_t *data; /* constant data in the model; NULL for tensors computed at run time */
    float scale;         /* the first scale */
    uint32_t n_scales;   /* 0: not quantised; > 1: per channel along qdim */
    uint32_t qdim;
    uint32_t scales; /* position of the scales in the model (efp_scale) */
} efp_tensor;

typedef struct efp_prep efp_prep; /* the operator being prepared (engine.c) */
typedef void (*efp_eval_fn)(const void *params);

typedef struct {
    uint8_t code;                /* TFLite BuiltinOperator */
    int (*prepare)(efp_prep *p); /* checks the operator and writes its parameters; 0 or an efp_status */
    efp_eval_fn eval;            /* runs it; NULL for operators that only rename memory (RESHAPE) */
} efp_op;

const efp_op *efp_op_find(int32_t code);          /* ops.c; NULL: not supported */
const char *efp_op_name(int32_t code, char *buf); /* op_names.c; buf: 12 bytes for "#code" */
const char *efp_type_name(int32_t type, char *buf);

/* ---- for prepare functions ---- */
int32_t efp_code(const efp_prep *p); /* the operator's BuiltinOperator */
uint32_t efp_inputs(const efp_prep *p);
uint32_t efp_outputs(const efp_prep *p);
int efp_input(efp_prep *p, uint32_t i, efp_tensor *t); /* i past the inputs, or -1 in the model: idx -1 */
int efp_output(efp_prep *p, uint32_t i, efp_tensor *t);
int32_t efp_option(efp_prep *p, int field, int size, int32_t def); /* scalar of the builtin options */
float efp_option_f32(efp_prep *p, int field, float def);
float efp_scale(efp_prep *p, const efp_tensor *t, uint32_t i); /* i-th per-channel scale */

/* The operator's parameter block (call it once, first), further persistent memory, and scratch
 * memory valid during its eval only: NULL in the measuring pass, where prepare stops after them. */
void *efp_params(efp_prep *p, size_t bytes);
void *efp_persist(efp_prep *p, size_t bytes);
void *efp_scratch(efp_prep *p, size_t bytes);
void efp_set_eval(efp_prep *p, efp_eval_fn eval); /* another kernel than the table's */

void *efp_data(efp_prep *p, const efp_tensor *t); /* a tensor's memory (NULL in the measuring pass) */
int efp_alias(efp_prep *p, const efp_tensor *out, const efp_tensor *in);     /* out is in's memory */
void efp_in_place(efp_prep *p, const efp_tensor *out, const efp_tensor *in); /* when in dies here */

/* Refusals: "<OPERATOR>: why" (EFP_UNSUPPORTED) and "invalid model: why" (EFP_INVALID_MODEL). */
int efp_unsupported(efp_prep *p, const char *why);
int efp_invalid(efp_prep *p, const char *why);
/* Type check; int8 tensors must carry a usable quantisation. */
int efp_expect(efp_prep *p, const efp_tensor *t, int32_t type);
/* CalculateActivationRangeQuantized for int8 outputs. */
int efp_activation(efp_prep *p, int32_t fused, const efp_tensor *out, int8_t *lo, int8_t *hi);
/* Output extent and padding as TFLite computes them; checks the model's output extent. */
int efp_padding(efp_prep *p, int same, int32_t in, int32_t k, int32_t s, int32_t d, int32_t out, int16_t *pad);

static inline int8_t efp_clamp8(int32_t v, int32_t lo, int32_t hi) { return (int8_t)(v < lo ? lo : v > hi ? hi : v); }

/* The output stage of CONV_2D, DEPTHWISE_CONV_2D and FULLY_CONNECTED: bias, requantisation with the
 * channel's multiplier (TFLite's double rounding), output offset, activation range. Kernels copy it
 * into a local, so that its fields stay in registers across the stores of their outputs. */
typedef struct {
    const int32_t *bias; /* NULL: none */
    const int32_t *mult;
    const int8_t *shift;
    int32_t offset;
    int8_t lo, hi, per_channel;
    uint8_t small; /* every multiplier below 1/2, right shifts 1 to 22: efp_requantize_small */
} efp_output_stage;

/* Checks the bias (int32, one per output channel: the last dimension of out) and the filter's
 * quantisation (per tensor, or per channel along qdim), computes the multipliers as TFLite does
 * (input scale x filter scale / output scale, in double) into persistent memory. */
int efp_output_stage_init(efp_prep *p, efp_output_stage *q, const efp_tensor *in, const efp_tensor *w,
                          const efp_tensor *bias, const efp_tensor *out, int32_t fused, uint32_t qdim);

/* out[i] = acc[i] of channel + i through the output stage, for i < n. */
void efp_output_run(const efp_output_stage *q, const int32_t *acc, int32_t n, int32_t channel, int8_t *out);
EFP_HOT int8_t efp_to_int8(const efp_output_stage *q, int32_t acc, int32_t channel)
{
    int32_t c = q->per_channel ? channel : 0;
    if (q->bias)
        acc = efp_wadd(acc, q->bias[channel]);
    if (q->small)
        return efp_requantize_small(acc, q->mult[c], -q->shift[c], q->offset, q->lo, q->hi);
    return efp_requantize(acc, q->mult[c], q->shift[c], q->offset, q->lo, q->hi);
}

#endif
