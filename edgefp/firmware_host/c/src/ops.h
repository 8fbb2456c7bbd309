/* int8 kernels (TFLite Micro reference semantics) and their prepared parameters. Every parameter
 * block starts with its kind; engine.c fills them at init, efp_op_run executes one. */
#ifndef EFP_OPS_H
#define EFP_OPS_H

#include <stdint.h>

enum efp_kind {
    K_CONV, K_DWCONV, K_FC, K_AVGPOOL, K_MAXPOOL, K_MEAN, K_REDUCE_MAX, K_BINARY, K_SOFTMAX,
    K_TANH, K_REQUANT, K_QUANT_F32, K_DEQUANT, K_PAD,
};
enum efp_binop { B_ADD, B_SUB, B_MUL, B_SQDIFF };

typedef struct {
    uint8_t kind;
    int8_t act_min, act_max;
    const int8_t *in, *w;
    const int32_t *bias;          /* NULL: none */
    int8_t *out;
    int32_t *mult;                /* per output channel */
    int8_t *shift;
    int32_t in_off, out_off;
    int16_t batches, in_h, in_w, in_c, out_h, out_w, out_c, f_c, k_h, k_w; /* f_c: filter depth (1: depthwise) */
    int16_t s_h, s_w, d_h, d_w, pad_h, pad_w, per_group; /* output channels per input group */
} efp_conv;

typedef struct {
    uint8_t kind;
    int8_t act_min, act_max, per_channel;
    const int8_t *in, *w;
    const int32_t *bias;
    int8_t *out;
    int32_t *mult;                /* per_channel ? units entries : 1 */
    int8_t *shift;
    int32_t in_off, w_off, out_off, batches, depth, units;
} efp_fc;

typedef struct {
    uint8_t kind;
    int8_t act_min, act_max;
    const int8_t *in;
    int8_t *out;
    int16_t batches, in_h, in_w, c, out_h, out_w, f_h, f_w, s_h, s_w, pad_h, pad_w;
} efp_pool;

typedef struct {
    uint8_t kind, op;
    int8_t act_min, act_max;
    const int8_t *a, *b;
    int8_t *out;
    int32_t n[4], sa[4], sb[4];   /* collapsed output shape and input strides (0 = broadcast) */
    int32_t a_off, b_off, out_off, left_shift, ma, mb, mo;
    int8_t rsa, rsb, lso, rso;    /* input right shifts; output left and right shifts */
} efp_binary;

/* MEAN, and REDUCE_MAX (the largest int8 value: input and output share their quantization). */
typedef struct {
    uint8_t kind, ndim, reduce_mask;
    const int8_t *in;
    int8_t *out;
    int32_t dims[6];
    int32_t out_count, count, in_zp, out_zp, mult, shift;
    int32_t inner;                /* reduced axes contiguous: elements after them (0: general walk) */
} efp_mean;

/* PAD: the input copied into an output filled with the zero point (input and output share it). */
typedef struct {
    uint8_t kind, ndim;
    int8_t value;
    const int8_t *in;
    int8_t *out;
    int32_t in_dims[6], out_dims[6], before[6];
} efp_pad;

/* SOFTMAX, TANH, QUANTIZE (int8 or float32 in), DEQUANTIZE. */
typedef struct {
    uint8_t kind;
    const void *in;
    void *out;
    int32_t n, depth, in_zp, out_zp, mult, shift, radius;
    float scale;
    const int8_t *lut;            /* int8 -> int8 ops: the 256 results, indexed by input + 128 */
} efp_unary;

void efp_op_run(const void *op);

#endif
