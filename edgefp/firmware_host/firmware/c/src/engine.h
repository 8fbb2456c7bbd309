/* An int8 TFLite interpreter for microcontrollers: runs a .tflite flatbuffer in place (from flash),
 * all memory from one caller-supplied arena, results bit-exact with TFLite Micro's reference kernels.
 * No dynamic allocation, C99. */
#ifndef EFP_ENGINE_H
#define EFP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

enum efp_status {
    EFP_OK = 0,
    EFP_INVALID_MODEL = 1,   /* not a TFLite flatbuffer, or one the engine cannot read (error says what) */
    EFP_UNSUPPORTED = 2,     /* an operator, type or option the engine lacks; error names it */
    EFP_ARENA_TOO_SMALL = 3, /* arena_needed says how many bytes it needs */
    EFP_EVAL_FAILED = 4,     /* an operator failed while running (error says which) */
};

enum efp_io_type { EFP_IO_FLOAT32 = 0, EFP_IO_INT32 = 2, EFP_IO_INT8 = 9 }; /* TFLite TensorType values */

#define EFP_ERROR_LEN 96
#define EFP_MAX_DIMS 6

typedef struct efp_engine {
    const uint8_t *model;    /* the flatbuffer, used in place: must stay readable while the engine runs */
    size_t model_len;
    uint8_t *arena;
    size_t arena_len;
    size_t arena_used;       /* after a successful init: bytes of the arena in use */
    size_t arena_needed;     /* after EFP_ARENA_TOO_SMALL (or EFP_OK): bytes the model needs */
    void *graph;             /* internal: the planned graph, inside the arena */
    char error[EFP_ERROR_LEN];
} efp_engine;

/* A model input or output: write inputs' bytes before efp_engine_invoke, read outputs' after. */
typedef struct {
    void *data;
    uint32_t bytes;
    int32_t type;            /* TFLite TensorType: EFP_IO_INT8, EFP_IO_FLOAT32 or EFP_IO_INT32 */
    int32_t ndim, dims[EFP_MAX_DIMS];
    float scale;             /* quantisation of int8 tensors */
    int32_t zero_point;
} efp_io;

/* Parse and check the model (one subgraph, every operator supported), lay out every tensor and
 * operator state in the arena and precompute what the operators need. Model inputs and outputs are
 * int8, float32 (a QUANTIZE from float or a DEQUANTIZE to float) or int32. */
int efp_engine_init(efp_engine *e, const uint8_t *model, size_t model_len, uint8_t *arena, size_t arena_len);

/* Run the model once on what was written to its inputs (which keep their bytes). */
int efp_engine_invoke(efp_engine *e);

/* The model's inputs and outputs, in the model's order (NULL past the last). */
size_t efp_engine_input_count(const efp_engine *e);
size_t efp_engine_output_count(const efp_engine *e);
const efp_io *efp_engine_input(const efp_engine *e, size_t index);
const efp_io *efp_engine_output(const efp_engine *e, size_t index);

#endif
