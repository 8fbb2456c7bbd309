/* A bundle archive in storage (docs/bundle.md): an uncompressed tar of manifest.json, the model and
 * perhaps the manifest's signature, read in place. Opening verifies every file against the SHA-256 and size the
 * manifest lists and reads what the firmware needs from the manifest. */
#ifndef EFP_BUNDLE_H
#define EFP_BUNDLE_H

#include <stddef.h>
#include <stdint.h>

#include "config.h"

typedef struct {
    const uint8_t *model;
    uint32_t model_len;
    const uint8_t *manifest;
    uint32_t manifest_len;
#ifdef EFP_TRUST_KEY
    const uint8_t *signature; /* manifest.sig (EFP_SIGNATURE_BYTES), NULL when the bundle is unsigned */
#endif
    char name[EFP_NAME_MAX + 1];
    uint32_t input_bytes; /* bytes of the input: its elements, 4 bytes each when input_float */
    uint8_t input_float;  /* a wrapped model that takes float32 */
    uint32_t channels;    /* the input shape's last dimension */
    uint8_t standardised; /* the input's preprocessing is a mean and a std per channel (else none) */
    uint16_t coarse;      /* bit l: layer l's output holds its error twice, the second value coarser */
    uint32_t classes;     /* labels */
    uint32_t layers;      /* fingerprinted layers; 0: a model wrapped without a fingerprint, no OOD check */
    uint32_t probs_index; /* model output holding the probabilities */
    uint32_t error_index[EFP_MAX_LAYERS];
    int64_t score_unit;                 /* table units per unit of z */
    int64_t threshold_units;            /* OOD when the sum of the layers' table entries exceeds it */
    const char *tables[EFP_MAX_LAYERS]; /* each layer's z_table, a JSON array in the manifest */
    const char *tables_end[EFP_MAX_LAYERS];
    const char *raw, *raw_end; /* a wrapped model's outputs.raw, a JSON array in the manifest */
} efp_bundle_info;

/* int8 values of layer l's evidence output: 2 for an error with a coarse second value, else 1. */
static inline uint32_t efp_bundle_scales(const efp_bundle_info *b, uint32_t l) { return 1u + ((b->coarse >> l) & 1u); }

/* int8 evidence values of all layers together. */
uint32_t efp_bundle_values(const efp_bundle_info *b);

/* 0 when the archive holds a bundle that verifies, else -1 with the reason in err. */
int efp_bundle_open(const uint8_t *archive, uint32_t len, efp_bundle_info *b, char *err, size_t err_len);

/* Read the layers' score tables (256 entries per int8 value of their outputs) into tables[values][256],
 * value after value (only check them when tables is NULL); 0 on success. */
int efp_bundle_tables(const efp_bundle_info *b, int32_t *tables);

/* The input's preprocessing and quantisation (docs/bundle.md): per channel mean and std (only when
 * standardised: untouched otherwise), the int8 scale and zero point; 0 on success. */
int efp_bundle_input(const efp_bundle_info *b, float *mean, float *std, float *scale, int32_t *zero_point);

/* Bytes of output k of a model wrapped without a fingerprint as the manifest lists it, with its TFLite
 * TensorType in type; 0 past the last (and for a fingerprinted bundle). */
uint32_t efp_bundle_output(const efp_bundle_info *b, uint32_t k, int32_t *type);

#endif
