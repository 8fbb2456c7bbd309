/* The operators the engine runs: builtin code, prepare, eval (names: op_names.c). */
#include "ops.h"

static const efp_op ops[] = {
    {0, efp_prepare_binary, efp_eval_binary},                   /* ADD */
    {1, efp_prepare_pool, efp_eval_pool},                       /* AVERAGE_POOL_2D */
    {2, efp_prepare_concat, efp_eval_concat},                   /* CONCATENATION */
    {3, efp_prepare_conv, efp_eval_conv},                       /* CONV_2D */
    {4, efp_prepare_conv, efp_eval_conv},                       /* DEPTHWISE_CONV_2D */
    {6, efp_prepare_unary, efp_eval_unary},                     /* DEQUANTIZE */
    {9, efp_prepare_fully_connected, efp_eval_fully_connected}, /* FULLY_CONNECTED */
    {14, efp_prepare_unary, efp_eval_unary},                    /* LOGISTIC */
    {17, efp_prepare_pool, efp_eval_pool},                      /* MAX_POOL_2D */
    {18, efp_prepare_binary, efp_eval_binary},                  /* MUL */
    {19, efp_prepare_unary, efp_eval_unary},                    /* RELU */
    {21, efp_prepare_unary, efp_eval_unary},                    /* RELU6 */
    {22, efp_prepare_reshape, 0},                               /* RESHAPE */
    {25, efp_prepare_softmax, efp_eval_softmax},                /* SOFTMAX */
    {28, efp_prepare_unary, efp_eval_unary},                    /* TANH */
    {34, efp_prepare_pad, efp_eval_pad},                        /* PAD */
    {39, efp_prepare_transpose, efp_eval_transpose},            /* TRANSPOSE */
    {40, efp_prepare_mean, efp_eval_mean},                      /* MEAN */
    {41, efp_prepare_binary, efp_eval_binary},                  /* SUB */
    {43, efp_prepare_reshape, 0},                               /* SQUEEZE */
    {45, efp_prepare_strided_slice, efp_eval_strided_slice},    /* STRIDED_SLICE */
    {60, efp_prepare_pad, efp_eval_pad},                        /* PADV2 */
    {70, efp_prepare_reshape, 0},                               /* EXPAND_DIMS */
    {77, efp_prepare_shape, efp_eval_shape},                    /* SHAPE */
    {82, efp_prepare_mean, efp_eval_mean},                      /* REDUCE_MAX */
    {83, efp_prepare_concat, efp_eval_concat},                  /* PACK */
    {97, efp_prepare_resize_nearest, efp_eval_resize_nearest},  /* RESIZE_NEAREST_NEIGHBOR */
    {98, efp_prepare_unary, efp_eval_unary},                    /* LEAKY_RELU */
    {99, efp_prepare_binary, efp_eval_binary},                  /* SQUARED_DIFFERENCE */
    {114, efp_prepare_unary, efp_eval_unary},                   /* QUANTIZE */
    {117, efp_prepare_unary, efp_eval_unary},                   /* HARD_SWISH */
};

const efp_op *efp_op_find(int32_t code)
{
    size_t i;
    for (i = 0; i < sizeof ops / sizeof ops[0]; i++)
        if (ops[i].code == code)
            return &ops[i];
    return 0;
}
