/* A minimal JSON reader for the bundle's manifest: a value is a span [p, end) of the text, read in
 * place; lookups scan, nothing is copied or allocated. */
#ifndef EFP_JSON_H
#define EFP_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *p, *end;
} efp_json;

/* Members of an object (with their keys) or an array, one after another. */
typedef struct {
    const char *p, *end;
    char close;
    int more; /* a comma was read: another member must follow */
} efp_json_members;

const char *efp_json_skip_space(const char *p, const char *end);
/* The end of the value starting at p (no leading space), or NULL when it is malformed. */
const char *efp_json_skip_value(const char *p, const char *end);

/* 1 when v is an object or an array (m->close says which), ready for efp_json_members_next. */
int efp_json_members_begin(efp_json v, efp_json_members *m);
/* The next member (key only for objects): 1, or 0 at the end or where the JSON is malformed (m->p is
 * then left at m->end, not at the closing bracket). */
int efp_json_members_next(efp_json_members *m, efp_json *key, efp_json *value);

/* 1 when v is strict JSON (RFC 8259), nests at most EFP_MAX_DEPTH deep (from depth) and no object
 * repeats a key: the rules the host's JSON reading applies too. */
int efp_json_well_formed(efp_json v, int depth);
/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
int efp_json_utf8(const uint8_t *p, uint32_t n);

int efp_json_get(efp_json v, const char *key, efp_json *out); /* an object's member */
int efp_json_item(efp_json v, uint32_t index, efp_json *out); /* an array's (or object's) item */
uint32_t efp_json_count(efp_json v);                          /* its members, 0 for a scalar */
int efp_json_integer(efp_json v, int64_t *out);               /* an integer that fits int64 */
int efp_json_string(efp_json v, const char **s, size_t *n);   /* a string without escapes */
int efp_json_string_is(efp_json v, const char *expected);
/* An integer at a path of object keys below v (k2 NULL: one key); 1 when found and in [lo, hi]. */
int efp_json_get_int(efp_json v, const char *k1, const char *k2, int64_t lo, int64_t hi, int64_t *out);

/* A JSON number: 1 when v is one, with its sign, whether it is zero, and the power of ten P just above
 * it (10^(P-1) <= |value| < 10^P when it is not zero). */
int efp_json_number(efp_json v, int *negative, int *zero, int *position);
/* A JSON number as the float nearest to it, through a double as the host reads it (0 when v is not
 * one, or rounds beyond the largest float). */
int efp_json_real(efp_json v, float *out);

#endif
