/* ctypes-friendly wrapper around the firmware engine for the host tests. */
#include <string.h>

#include "engine.h"

size_t shim_engine_size(void) { return sizeof(efp_engine); }
size_t shim_arena_used(const efp_engine *e) { return e->arena_used; }
size_t shim_arena_needed(const efp_engine *e) { return e->arena_needed; }
const char *shim_error(const efp_engine *e) { return e->error; }

/* Run n samples back to back: inputs packed in `in`, all outputs of a sample concatenated in `out`.
 * Returns the first non-OK status, or -1 when the sizes do not match the model. */
int shim_run(efp_engine *e, const int8_t *in, size_t in_bytes, size_t n, int8_t *out, size_t out_bytes)
{
    size_t i, k, bytes, total = 0;
    int8_t *dst = efp_engine_input(e, &bytes);
    if (!dst || bytes != in_bytes)
        return -1;
    for (k = 0; k < efp_engine_output_count(e); k++) {
        efp_engine_output(e, k, &bytes);
        total += bytes;
    }
    if (total != out_bytes)
        return -1;
    for (i = 0; i < n; i++) {
        int st;
        memcpy(dst, in + i * in_bytes, in_bytes);
        if ((st = efp_engine_invoke(e)))
            return st;
        for (k = 0; k < efp_engine_output_count(e); k++) {
            const int8_t *src = efp_engine_output(e, k, &bytes);
            memcpy(out, src, bytes);
            out += bytes;
        }
    }
    return 0;
}
