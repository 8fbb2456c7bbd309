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

#define EFP_ERROR_LEN 96

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

/* Parse and check the model (one subgraph, int8 input and outputs, every operator supported), lay
 * out every tensor and operator state in the arena and precompute what the operators need.
 * A model that QUANTIZEs a float32 input or DEQUANTIZEs to float32 outputs also runs: those
 * tensors are then float32 buffers behind the int8_t pointers below (bytes counts their size). */
int efp_engine_init(efp_engine *e, const uint8_t *model, size_t model_len, uint8_t *arena, size_t arena_len);

/* Run the model once on what was written to the input tensor. */
int efp_engine_invoke(efp_engine *e);

/* The (single) int8 input tensor, and the int8 outputs in the model's output order. */
int8_t *efp_engine_input(efp_engine *e, size_t *bytes);
size_t efp_engine_output_count(const efp_engine *e);
const int8_t *efp_engine_output(efp_engine *e, size_t index, size_t *bytes);

#endif
