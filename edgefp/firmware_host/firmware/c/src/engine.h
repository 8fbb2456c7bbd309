/* An int8 TFLite interpreter for microcontrollers: runs a .tflite flatbuffer in place (from flash),
 * all memory from one caller-supplied arena, results bit-exact with TFLite Micro's reference kernels.
 * No dynamic allocation, C99. */
#ifndef EFP_ENGINE_H
#define EFP_ENGINE_H

#include <stddef.h>
#include <stdint.h>

#include "efp_contract.h" /* enum efp_status, enum efp_io_type, efp_io, EFP_MAX_DIMS, EFP_ERROR_LEN */

/* Every function returns an efp_status: EFP_OK; EFP_INVALID_MODEL, not a TFLite flatbuffer or one the engine
 * cannot read (error says what); EFP_UNSUPPORTED, an operator, type or option the engine lacks (error names
 * it); EFP_ARENA_TOO_SMALL (arena_needed says how many bytes it needs); EFP_EVAL_FAILED, an operator failed
 * while running (error says which). Inputs and outputs are efp_io records: write inputs' bytes before
 * efp_engine_invoke, read outputs' after. */

typedef struct efp_engine {
    const uint8_t *model; /* the flatbuffer, used in place: must stay readable while the engine runs */
    size_t model_len;
    uint8_t *arena;
    size_t arena_len;
    size_t arena_used;   /* after a successful init: bytes of the arena in use */
    size_t arena_needed; /* after EFP_ARENA_TOO_SMALL (or EFP_OK): bytes the model needs */
    void *graph;         /* internal: the planned graph, inside the arena */
    char error[EFP_ERROR_LEN];
} efp_engine;

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

/* For bindings that do not mirror efp_engine (edgefp's ctypes one): its size, and its fields. */
size_t efp_engine_size(void);
const char *efp_engine_error(const efp_engine *e);
size_t efp_engine_arena_needed(const efp_engine *e);
size_t efp_engine_arena_used(const efp_engine *e);

#endif
