/* The operators' prepare and eval functions (op_*.c), gathered in one table by ops.c. */
#ifndef EFP_OPS_H
#define EFP_OPS_H

#include "kernel.h"

int efp_prepare_conv(efp_prep *p); /* CONV_2D, DEPTHWISE_CONV_2D */
void efp_eval_conv(const void *params);
int efp_prepare_fully_connected(efp_prep *p);
void efp_eval_fully_connected(const void *params);
int efp_prepare_pool(efp_prep *p); /* AVERAGE_POOL_2D, MAX_POOL_2D */
void efp_eval_pool(const void *params);
int efp_prepare_mean(efp_prep *p); /* MEAN, REDUCE_MAX */
void efp_eval_mean(const void *params);
int efp_prepare_binary(efp_prep *p); /* ADD, SUB, MUL, SQUARED_DIFFERENCE */
void efp_eval_binary(const void *params);
int efp_prepare_softmax(efp_prep *p);
void efp_eval_softmax(const void *params);
int efp_prepare_unary(efp_prep *p); /* int8 activations, QUANTIZE, DEQUANTIZE */
void efp_eval_unary(const void *params);
int efp_prepare_reshape(efp_prep *p); /* RESHAPE, SQUEEZE, EXPAND_DIMS */
int efp_prepare_shape(efp_prep *p);
void efp_eval_shape(const void *params);
int efp_prepare_pad(efp_prep *p); /* PAD, PADV2 */
void efp_eval_pad(const void *params);
int efp_prepare_strided_slice(efp_prep *p);
void efp_eval_strided_slice(const void *params);
int efp_prepare_concat(efp_prep *p); /* CONCATENATION, PACK */
void efp_eval_concat(const void *params);
int efp_prepare_transpose(efp_prep *p);
void efp_eval_transpose(const void *params);
int efp_prepare_resize_nearest(efp_prep *p);
void efp_eval_resize_nearest(const void *params);

#endif
