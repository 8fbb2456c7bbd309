/* The operators the engine runs: builtin code, prepare, eval (names: op_names.c). Every one is built
 * in, unless the build lists those it keeps (-DEFP_OPS_ONLY -DEFP_OP_CONV_2D ...: edgefp writes the
 * operators of given bundles' models): the others are then refused as any operator the engine lacks. */
#include "ops.h"

static const efp_op ops[] = {
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_ADD)
    {0, efp_prepare_binary, efp_eval_binary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_AVERAGE_POOL_2D)
    {1, efp_prepare_pool, efp_eval_pool},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_CONCATENATION)
    {2, efp_prepare_concat, efp_eval_concat},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_CONV_2D)
    {3, efp_prepare_conv, efp_eval_conv},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_DEPTHWISE_CONV_2D)
    {4, efp_prepare_conv, efp_eval_conv},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_DEQUANTIZE)
    {6, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_FULLY_CONNECTED)
    {9, efp_prepare_fully_connected, efp_eval_fully_connected},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_LOGISTIC)
    {14, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_MAX_POOL_2D)
    {17, efp_prepare_pool, efp_eval_pool},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_MUL)
    {18, efp_prepare_binary, efp_eval_binary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_RELU)
    {19, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_RELU6)
    {21, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_RESHAPE)
    {22, efp_prepare_reshape, 0},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_SOFTMAX)
    {25, efp_prepare_softmax, efp_eval_softmax},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_TANH)
    {28, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_PAD)
    {34, efp_prepare_pad, efp_eval_pad},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_TRANSPOSE)
    {39, efp_prepare_transpose, efp_eval_transpose},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_MEAN)
    {40, efp_prepare_mean, efp_eval_mean},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_SUB)
    {41, efp_prepare_binary, efp_eval_binary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_SQUEEZE)
    {43, efp_prepare_reshape, 0},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_STRIDED_SLICE)
    {45, efp_prepare_strided_slice, efp_eval_strided_slice},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_PADV2)
    {60, efp_prepare_pad, efp_eval_pad},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_EXPAND_DIMS)
    {70, efp_prepare_reshape, 0},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_SHAPE)
    {77, efp_prepare_shape, efp_eval_shape},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_REDUCE_MAX)
    {82, efp_prepare_mean, efp_eval_mean},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_PACK)
    {83, efp_prepare_concat, efp_eval_concat},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_RESIZE_NEAREST_NEIGHBOR)
    {97, efp_prepare_resize_nearest, efp_eval_resize_nearest},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_LEAKY_RELU)
    {98, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_SQUARED_DIFFERENCE)
    {99, efp_prepare_binary, efp_eval_binary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_QUANTIZE)
    {114, efp_prepare_unary, efp_eval_unary},
#endif
#if !defined(EFP_OPS_ONLY) || defined(EFP_OP_HARD_SWISH)
    {117, efp_prepare_unary, efp_eval_unary},
#endif
    {0, 0, 0}, /* the end */
};

const efp_op *efp_op_find(int32_t code)
{
    const efp_op *op;
    for (op = ops; op->prepare; op++)
        if (op->code == code)
            return op;
    return 0;
}
