/* Inference from the application: the board's own code hands the firmware a window of sensor values and
 * gets the verdict, with the same preprocessing, quantisation, model and OOD check as the host
 * (docs/sensors.md). Every window counts as an input seen, as an INFER request does: it is logged for
 * READ_LOG, kept in the OOD buffer when flagged and sent as an event to a subscribed host. */
#ifndef EFP_EFP_H
#define EFP_EFP_H

#include <stdint.h>

#include "config.h"

enum efp_classify_status {
    EFP_CLASSIFIED = 0,
    EFP_NO_MODEL = -1,   /* no bundle is active: flash one */
    EFP_WRONG_SIZE = -2, /* the window does not hold efp_window_values() values */
    EFP_NOT_FINITE = -3, /* a value is NaN or infinite: nothing was counted */
    EFP_RUN_FAILED = -4, /* the model failed to run */
    EFP_WRONG_KIND = -5, /* a wrapped model: one taking float32 takes efp_classify only, one taking int8
                            without an input scale efp_classify_int8 only */
};

typedef struct {
    uint32_t input;      /* its number among the inputs seen since the bundle was activated */
    uint8_t pred;        /* index of the most probable class in the bundle's labels */
    uint8_t ood;         /* 1: out of distribution (score above the bundle's threshold) */
    float score;         /* OOD score: the mean over layers of max(z, 0) */
    uint32_t latency_us; /* the model's run */
    uint8_t layers;      /* fingerprinted layers, in the manifest's order */
    uint8_t values;      /* int8 evidence values in errors */
    int8_t errors[EFP_MAX_LAYERS * EFP_MAX_SCALES]; /* each layer's int8 evidence values, layer after layer */
    int32_t evidence[EFP_MAX_LAYERS];               /* each layer's part of the score, max(z, 0) in 1/65536 units */
} efp_verdict;

/* Values one window holds (the product of the active bundle's input shape), 0 when none is active. */
uint32_t efp_window_values(void);

/* Classify one window of raw sensor values (channels last, before preprocessing, as in the training
 * data). Returns EFP_CLASSIFIED and fills *verdict, or a negative efp_classify_status. */
int efp_classify(const float *window, uint32_t values, efp_verdict *verdict);

/* The same for a window already preprocessed and quantised to the model's int8 input. */
int efp_classify_int8(const int8_t *input, uint32_t values, efp_verdict *verdict);

#endif
