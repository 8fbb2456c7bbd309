/* The firmware's engine as a command, for runs under sanitizers:
 *
 *   engine_run MODEL SAMPLES OUT    SAMPLES: each sample's inputs, one after another, back to back
 *
 * Writes every output of every sample to OUT; prints "status <n> <needed> <error>" on stdout. A model
 * the engine refuses is not an error (exit 0); only the sanitizers fail it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine.h"

static unsigned char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    unsigned char *buf;
    long size;
    if (!f || fseek(f, 0, SEEK_END) || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET))
        exit(2);
    buf = malloc((size_t)size + 1);
    if (!buf || fread(buf, 1, (size_t)size, f) != (size_t)size)
        exit(2);
    fclose(f);
    *n = (size_t)size;
    return buf;
}

int main(int argc, char **argv)
{
    size_t model_len, samples_len, at = 0, i, sample_bytes = 0;
    unsigned char *model, *samples, *arena;
    efp_engine e;
    FILE *out = NULL;
    int st, rc = 0;
    if (argc != 4)
        return 2;
    model = slurp(argv[1], &model_len);
    samples = slurp(argv[2], &samples_len);
    efp_engine_init(&e, model, model_len, NULL, 0);
    arena = malloc(e.arena_needed ? e.arena_needed : 1);
    st = efp_engine_init(&e, model, model_len, arena, e.arena_needed);
    printf("status %d %lu %s\n", st, (unsigned long)e.arena_needed, e.error);
    for (i = 0; st == EFP_OK && i < efp_engine_input_count(&e); i++)
        sample_bytes += efp_engine_input(&e, i)->bytes;
    if (st == EFP_OK && !(out = fopen(argv[3], "wb")))
        rc = 2;
    while (out && sample_bytes && at + sample_bytes <= samples_len && !rc) {
        for (i = 0; i < efp_engine_input_count(&e); i++) {
            const efp_io *io = efp_engine_input(&e, i);
            memcpy(io->data, samples + at, io->bytes);
            at += io->bytes;
        }
        if (efp_engine_invoke(&e) != EFP_OK)
            rc = 3;
        for (i = 0; i < efp_engine_output_count(&e); i++)
            fwrite(efp_engine_output(&e, i)->data, 1, efp_engine_output(&e, i)->bytes, out);
    }
    if (out)
        fclose(out);
    free(arena);
    free(samples);
    free(model);
    return rc;
}
