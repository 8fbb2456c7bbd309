#include "bundle.h"

#include <string.h>

#include "sha256.h"
#include "text.h"

#define BUNDLE_VERSION 3
#define TAR_BLOCK 512
#define MAX_DEPTH 16             /* JSON nesting of a manifest (edgefp.manifest.MAX_DEPTH) */
#define MAX_FILES 8              /* files besides the manifest (edgefp.manifest.MAX_FILES) */
#define MAX_INPUT_ELEMENTS (1 << 24)
#define MAX_DIMS 6
#define MAX_OUTPUTS 16 /* outputs of a wrapped model (edgefp.manifest.MAX_OUTPUTS) */
#define MAX_CLASSES 255
#define QUANTILES 101
#define RULE "manifest.json breaks a rule at " /* then the field (docs/bundle.md, Validation) */

/* ---------------------------------------------------------------- a minimal JSON reader
 * A value is a span [p, end) of the manifest. Lookups scan; nothing is copied or allocated. */
typedef struct {
    const char *p, *end;
} span;


static const char *skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        ++p;
    }
    return p;
}

/* The end of the value starting at p (no leading space), or NULL when it is malformed. */
static const char *skip_value(const char *p, const char *end)
{
    if (p < end && *p != '"' && *p != '{' && *p != '[') { /* number or literal */
        const char *start = p;
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' &&
               *p != '\t') {
            ++p;
        }
        return p > start ? p : NULL;
    }
    int depth = 0;
    do {
        if (p >= end) {
            return NULL;
        }
        char c = *p++;
        if (c == '"') {
            while (p < end && *p != '"') {
                p += *p == '\\' && p + 1 < end ? 2 : 1;
            }
            if (p++ >= end) {
                return NULL;
            }
        } else if (c == '{' || c == '[') {
            ++depth;
        } else if (c == '}' || c == ']') {
            --depth;
        }
    } while (depth > 0);
    return depth == 0 ? p : NULL;
}

/* Members of an object (with their keys) or an array, one after another. */
typedef struct {
    const char *p, *end;
    char close;
    int more; /* a comma was read: another member must follow */
} members;

static int members_begin(span v, members *m)
{
    const char *p = skip_space(v.p, v.end);
    if (p >= v.end || (*p != '{' && *p != '[')) {
        return 0;
    }
    m->close = *p == '{' ? '}' : ']';
    m->p = skip_space(p + 1, v.end);
    m->end = v.end;
    m->more = 0;
    return 1;
}

/* The next member: 1, or 0 at the end or where the JSON is malformed (m->p is then left at m->end,
 * not at the closing bracket). */
static int members_next(members *m, span *key, span *value)
{
    const char *p = m->p;
    if (p >= m->end || (*p == m->close && !m->more)) {
        return 0;
    }
    m->p = m->end;
    if (m->close == '}') {
        const char *after = *p == '"' ? skip_value(p, m->end) : NULL;
        if (after == NULL) {
            return 0;
        }
        key->p = p + 1;
        key->end = after - 1;
        p = skip_space(after, m->end);
        if (p >= m->end || *p != ':') {
            return 0;
        }
        p = skip_space(p + 1, m->end);
    }
    const char *after = skip_value(p, m->end);
    if (after == NULL) {
        return 0;
    }
    value->p = p;
    value->end = after;
    p = skip_space(after, m->end);
    m->more = p < m->end && *p == ',';
    if (m->more) {
        m->p = skip_space(p + 1, m->end);
    } else if (p < m->end && *p == m->close) {
        m->p = p;
    }
    return 1;
}

static int same_key(span a, span b)
{
    return a.end - a.p == b.end - b.p && memcmp(a.p, b.p, (size_t)(a.end - a.p)) == 0;
}

static int get(span v, const char *key, span *out)
{
    members m;
    span k, value, wanted = {key, key + strlen(key)};
    if (!members_begin(v, &m) || m.close != '}') {
        return 0;
    }
    while (members_next(&m, &k, &value)) {
        if (same_key(k, wanted)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* A JSON string, quotes included: escapes as JSON has them, no control characters. */
static int json_string(span v)
{
    const char *p = v.p + 1, *end = v.end - 1;
    if (v.end - v.p < 2 || *v.p != '"' || *end != '"') {
        return 0;
    }
    while (p < end) {
        unsigned char c = (unsigned char)*p++;
        if (c < 0x20) {
            return 0;
        }
        if (c != '\\') {
            continue;
        }
        if (p >= end) {
            return 0;
        }
        c = (unsigned char)*p++;
        if (c == 'u') {
            for (int i = 0; i < 4; ++i, ++p) {
                if (p >= end || !((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') || (*p >= 'A' && *p <= 'F'))) {
                    return 0;
                }
            }
        } else if (memchr("\"\\/bfnrt", c, 8) == NULL) {
            return 0;
        }
    }
    return 1;
}

static int parse_number(span v, int *negative, int *zero, int *position);

/* A JSON string, number, true, false or null. */
static int json_scalar(span v)
{
    int negative, zero, position;
    size_t n = (size_t)(v.end - v.p);
    return (n && *v.p == '"' && json_string(v)) || (n == 4 && memcmp(v.p, "true", 4) == 0) ||
           (n == 5 && memcmp(v.p, "false", 5) == 0) || (n == 4 && memcmp(v.p, "null", 4) == 0) ||
           parse_number(v, &negative, &zero, &position);
}

/* 1 when v is strict JSON (RFC 8259), nests at most MAX_DEPTH deep and no object repeats a key: the
 * rules the host's JSON reading applies too. */
static int well_formed(span v, int depth)
{
    members m, rest;
    span k, value, k2, ignored;
    if (!members_begin(v, &m)) {
        return json_scalar(v);
    }
    if (depth == MAX_DEPTH) {
        return 0;
    }
    while (members_next(&m, &k, &value)) {
        span quoted = {k.p - 1, k.end + 1};
        if ((m.close == '}' && !json_string(quoted)) || !well_formed(value, depth + 1)) {
            return 0;
        }
        for (rest = m; m.close == '}' && members_next(&rest, &k2, &ignored);) {
            if (same_key(k, k2)) {
                return 0;
            }
        }
    }
    return m.p < m.end && *m.p == m.close;
}

static int item(span v, uint32_t index, span *out)
{
    members m;
    span k;
    if (!members_begin(v, &m)) {
        return 0;
    }
    for (uint32_t i = 0; members_next(&m, &k, out); ++i) {
        if (i == index) {
            return 1;
        }
    }
    return 0;
}

static uint32_t count(span v)
{
    members m;
    span k, ignored;
    uint32_t n = 0;
    if (members_begin(v, &m)) {
        while (members_next(&m, &k, &ignored)) {
            ++n;
        }
    }
    return n;
}

static int integer(span v, int64_t *out)
{
    const char *p = v.p;
    int negative = p < v.end && *p == '-';
    p += negative;
    if (p >= v.end) {
        return 0;
    }
    int64_t value = 0;
    for (; p < v.end; ++p) {
        if (*p < '0' || *p > '9' || value > INT64_MAX / 10 || (value == INT64_MAX / 10 && *p - '0' > INT64_MAX % 10)) {
            return 0;
        }
        value = value * 10 + (*p - '0');
    }
    *out = negative ? -value : value;
    return 1;
}

/* A JSON string without escapes, its bytes between the quotes. */
static int string(span v, const char **s, size_t *n)
{
    if (v.end - v.p < 2 || *v.p != '"' || v.end[-1] != '"' || memchr(v.p, '\\', (size_t)(v.end - v.p))) {
        return 0;
    }
    *s = v.p + 1;
    *n = (size_t)(v.end - v.p) - 2;
    return 1;
}

static int string_is(span v, const char *expected)
{
    const char *s;
    size_t n;
    return string(v, &s, &n) && n == strlen(expected) && memcmp(s, expected, n) == 0;
}

static int hex_digest(span v, uint8_t out[32])
{
    const char *s;
    size_t n;
    if (!string(v, &s, &n) || n != 64) {
        return 0;
    }
    for (int i = 0; i < 64; ++i) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0) {
            return 0;
        }
        out[i / 2] = (uint8_t)(i % 2 ? out[i / 2] | d : d << 4);
    }
    return 1;
}

/* An integer at a path of object keys below v; 1 when found and in [lo, hi]. */
static int get_int(span v, const char *k1, const char *k2, int64_t lo, int64_t hi, int64_t *out)
{
    span a, b;
    return get(v, k1, &a) && (k2 == NULL ? (b = a, 1) : get(a, k2, &b)) && integer(b, out) && *out >= lo &&
           *out <= hi;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
static int utf8(const uint8_t *p, uint32_t n)
{
    for (uint32_t i = 0; i < n;) {
        uint8_t c = p[i];
        uint32_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
        if (len == 0 || i + len > n) {
            return 0;
        }
        uint32_t code = len == 1 ? c : c & (0x7F >> len);
        for (uint32_t j = 1; j < len; ++j) {
            if ((p[i + j] & 0xC0) != 0x80) {
                return 0;
            }
            code = code << 6 | (p[i + j] & 0x3F);
        }
        static const uint32_t least[5] = {0, 0, 0x80, 0x800, 0x10000};
        if (code < least[len] || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) {
            return 0;
        }
        i += len;
    }
    return 1;
}

/* ---------------------------------------------------------------- the tar archive */
typedef struct {
    const uint8_t *archive;
    uint32_t len, next;
    char name[101];
    const uint8_t *data;
    uint32_t size;
} tar_cursor;

/* A numeric tar field: spaces, octal digits, then only NULs and spaces. */
static int octal(const uint8_t *field, int n, uint32_t *out)
{
    uint64_t value = 0;
    int i = 0;
    while (i < n && field[i] == ' ') {
        ++i;
    }
    for (; i < n && field[i] >= '0' && field[i] <= '7'; ++i) {
        value = value * 8 + (uint64_t)(field[i] - '0');
    }
    for (; i < n; ++i) {
        if (field[i] != ' ' && field[i] != 0) {
            return 0;
        }
    }
    *out = (uint32_t)value;
    return value <= UINT32_MAX;
}

/* The next regular file: 1, 0 at the end of the archive, -1 when malformed. */
static int tar_next(tar_cursor *t)
{
    for (;;) {
        if (t->next == t->len || (t->next + TAR_BLOCK <= t->len && t->archive[t->next] == 0)) {
            return 0;
        }
        if (t->next + TAR_BLOCK > t->len) {
            return -1;
        }
        const uint8_t *h = t->archive + t->next;
        uint32_t sum = 0, stored, size;
        for (int i = 0; i < TAR_BLOCK; ++i) {
            sum += i >= 148 && i < 156 ? ' ' : h[i];
        }
        uint32_t start = t->next + TAR_BLOCK;
        if (!octal(h + 148, 8, &stored) || !octal(h + 124, 12, &size) || sum != stored || size > t->len - start) {
            return -1;
        }
        t->next = start + (size + TAR_BLOCK - 1) / TAR_BLOCK * TAR_BLOCK;
        if (t->next > t->len) {
            t->next = t->len;
        }
        char type = (char)h[156];
        if (type == 'x' || type == 'g') {
            continue; /* pax attributes: names here are plain, nothing in them is needed */
        }
        if ((type != '0' && type != 0) || (memcmp(h + 257, "ustar", 5) == 0 && h[345] != 0)) {
            return -1; /* links, devices, directories, names with a prefix */
        }
        memcpy(t->name, h, 100);
        t->name[100] = 0;
        t->data = h + TAR_BLOCK;
        t->size = size;
        return 1;
    }
}

static int is_manifest(const char *name)
{
    return memcmp(name, "manifest.json", sizeof "manifest.json") == 0; /* its terminator included */
}

static int refuse(text *msg, const char *what, const char *name)
{
    text_str(msg, what);
    if (name) {
        text_str(msg, name);
    }
    return -1;
}

/* ---------------------------------------------------------------- the manifest's rules (edgefp/manifest.py) */
static int is_string(span v)
{
    return v.end - v.p >= 2 && *v.p == '"' && v.end[-1] == '"';
}

/* A JSON number: 1 when v is one, with its sign, whether it is zero, and the power of ten P just above
 * it (10^(P-1) <= |value| < 10^P when it is not zero). */
static int parse_number(span v, int *negative, int *zero, int *position)
{
    const char *p = v.p, *start;
    int exponent = 0, point = 0, seen = 0;
    *negative = p < v.end && *p == '-';
    p += *negative;
    for (start = p; p < v.end && ((*p >= '0' && *p <= '9') || (*p == '.' && !point)); ++p) {
        if (*p == '.') {
            if (p == start || p + 1 >= v.end || p[1] < '0' || p[1] > '9') {
                return 0;
            }
            point = 1;
        } else {
            seen |= *p != '0';
            exponent += seen && !point;  /* digits before the point, from the first significant one */
            exponent -= !seen && point;  /* zeros after the point before the first significant digit */
        }
    }
    if (p == start || (*start == '0' && p - start > 1 && start[1] != '.')) {
        return 0;
    }
    if (p < v.end && (*p == 'e' || *p == 'E')) {
        int minus = ++p < v.end && *p == '-', e = 0;
        p += p < v.end && (*p == '+' || *p == '-');
        for (start = p; p < v.end && *p >= '0' && *p <= '9'; ++p) {
            e = e > 100000 ? e : e * 10 + (*p - '0');
        }
        if (p == start) {
            return 0;
        }
        exponent += minus ? -e : e;
    }
    *zero = !seen;
    *position = exponent;
    return p == v.end;
}

enum { ANY, POSITIVE, FRACTION }; /* what number() accepts (edgefp.manifest): |x| < 1e308; x >= 1e-300; x < 1 */

/* A JSON number of a kind: any number below 1e308 in size, a positive one of at least 1e-300, or one
 * of those below 1. */
static int number(span v, int kind)
{
    int negative, zero, position;
    if (!parse_number(v, &negative, &zero, &position) || (!zero && position > 308)) {
        return 0;
    }
    return kind == ANY || (!negative && !zero && position > -300 && (kind == POSITIVE || position <= 0));
}

/* A list of exactly n (at most n when n is negative) numbers of a kind, or strings (kind STRINGS). */
enum { STRINGS = FRACTION + 1 };
static int list_of(span list, int32_t n, int kind)
{
    members m;
    span k, v;
    int32_t i = 0, most = n < 0 ? -n : n;
    if (!members_begin(list, &m) || m.close != ']') {
        return 0;
    }
    for (; members_next(&m, &k, &v); ++i) {
        if (i == most || !(kind == STRINGS ? is_string(v) : number(v, kind))) {
            return 0;
        }
    }
    return n < 0 || i == n;
}

/* The member ``key`` of obj: a number of a kind, a string (STRING; OPTIONAL_STRING when it may be
 * missing), or 101 numbers (QUANTILES). */
enum { STRING = STRINGS + 1, OPTIONAL_STRING, QUANTILES_OF };
static int field(span obj, const char *key, int kind)
{
    span v;
    if (!get(obj, key, &v)) {
        return kind == OPTIONAL_STRING;
    }
    return kind >= STRING ? (kind == QUANTILES_OF ? list_of(v, QUANTILES, ANY) : is_string(v)) : number(v, kind);
}

/* A bundle name ([a-z0-9_], 1 to 64) or a file name ([A-Za-z0-9_], then also '.' and '-'; 1 to 100; not
 * the manifest's). */
static int plain_name(const char *s, size_t n, int bundle_name)
{
    if (n < 1 || n > (bundle_name ? 64u : 100u) || (!bundle_name && n == 13 && memcmp(s, "manifest.json", 13) == 0)) {
        return 0;
    }
    for (size_t i = 0; i < n; ++i) {
        char c = s[i];
        int lower = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
        int other = (c >= 'A' && c <= 'Z') || (i > 0 && (c == '.' || c == '-'));
        if (!lower && (bundle_name || !other)) {
            return 0;
        }
    }
    return 1;
}

static uint32_t elements(span shape);

/* index 0..255, a positive scale, zero_point -128..127 and a shape of 1 to 6 axes holding size elements. */
static int quantization(span spec, uint32_t size, int64_t *index)
{
    span shape;
    int64_t n;
    return get_int(spec, "index", NULL, 0, 255, index) && field(spec, "scale", POSITIVE) &&
           get_int(spec, "zero_point", NULL, -128, 127, &n) && get(spec, "shape", &shape) && count(shape) >= 1 &&
           elements(shape) == size;
}

/* type none, or standardize with a mean and a positive std per channel (the shape's last axis). */
static int preprocessing(span pre, span shape, uint32_t dims)
{
    span v;
    int64_t channels;
    if (!get(pre, "type", &v)) {
        return 0;
    }
    if (string_is(v, "none")) {
        return 1;
    }
    return string_is(v, "standardize") && item(shape, dims - 1, &v) && integer(v, &channels) &&
           get(pre, "mean", &v) && list_of(v, (int32_t)channels, ANY) && get(pre, "std", &v) &&
           list_of(v, (int32_t)channels, POSITIVE);
}

/* n labels, each an object with a non-negative integer value and a string name. */
static int label_values(span labels, uint32_t n)
{
    span label;
    int64_t value;
    for (uint32_t i = 0; i < n; ++i) {
        if (!item(labels, i, &label) || !get_int(label, "value", NULL, 0, INT64_MAX, &value) ||
            !field(label, "name", STRING)) {
            return 0;
        }
    }
    return 1;
}

/* The fields the firmware runs, by the rules of edgefp.manifest.check. */
/* A tensor's shape: at most MAX_DIMS sizes of at least 1, MAX_INPUT_ELEMENTS elements together; 0 if not. */
static uint32_t elements(span shape)
{
    span v;
    int64_t n;
    uint64_t total = 1;
    for (uint32_t i = 0; item(shape, i, &v); ++i) {
        if (i == MAX_DIMS || !integer(v, &n) || n < 1 || (total *= (uint64_t)n) > MAX_INPUT_ELEMENTS) {
            return 0;
        }
    }
    return *shape.p == '[' ? (uint32_t)total : 0;
}

/* Each output of a model wrapped without a fingerprint, in the model's order: index, shape, dtype, quantisation. */
static int raw_outputs(span raw)
{
    span spec, shape, v;
    int64_t n;
    uint32_t k = 0;
    for (; item(raw, k, &spec); ++k) {
        if (!get_int(spec, "index", NULL, k, k, &n) || !get(spec, "shape", &shape) || !elements(shape) ||
            !get(spec, "dtype", &v) ||
            !(string_is(v, "int8") || string_is(v, "float32") || string_is(v, "int32")) || !field(spec, "scale", ANY) ||
            !get_int(spec, "zero_point", NULL, INT32_MIN, INT32_MAX, &n)) {
            return 0;
        }
    }
    return k >= 1 && k <= MAX_OUTPUTS;
}

/* The fields the firmware runs, by the rules of edgefp.manifest.check. */
static int check_fields(span root, bundle_info *b, text *msg)
{
    span input, shape, pre, outputs, probs, errors, layers, labels, score, v;
    int64_t n;
    if (!get(root, "input", &input) || !get(input, "shape", &shape) || !get(root, "outputs", &outputs) ||
        !get(root, "layers", &layers) || !get(root, "labels", &labels) || !get(root, "score", &score) ||
        !get(input, "preprocessing", &pre)) {
        return refuse(msg, RULE, "input");
    }
    b->layers = *layers.p == '[' ? count(layers) : EFP_MAX_LAYERS + 1;
    uint32_t wrapped = b->layers == 0, dims = count(shape);
    b->input_bytes = elements(shape);
    if (dims == 0 || b->input_bytes == 0 || !item(shape, dims - 1, &v) || !integer(v, &n)) {
        return refuse(msg, RULE, "input.shape");
    }
    b->channels = (uint32_t)n;
    b->input_float = wrapped && get(input, "dtype", &v) && string_is(v, "float32");
    b->input_bytes *= b->input_float ? 4u : 1u;
    /* dims 0: a wrapped model's input is never standardised */
    if (!get(input, "dtype", &v) || !(string_is(v, "int8") || b->input_float) ||
        !field(input, "scale", wrapped ? ANY : POSITIVE) || !get_int(input, "zero_point", NULL, -128, 127, &n) ||
        !preprocessing(pre, shape, wrapped ? 0 : dims)) {
        return refuse(msg, RULE, "input");
    }
    b->classes = count(labels);
    if (b->classes < 1 - wrapped || b->classes > MAX_CLASSES || !label_values(labels, b->classes)) {
        return refuse(msg, RULE, "labels");
    }
    if (wrapped) { /* a model wrapped without a fingerprint: its raw outputs, no score */
        if (!get(outputs, "raw", &v) || !raw_outputs(v) || score.end - score.p != 4 || memcmp(score.p, "null", 4) != 0) {
            return refuse(msg, RULE, "outputs");
        }
        b->raw = v.p;
        b->raw_end = v.end;
        return 0;
    }
    if (b->layers > EFP_MAX_LAYERS || !get(outputs, "probs", &probs) || !get(outputs, "layer_errors", &errors) ||
        count(errors) != b->layers) {
        return refuse(msg, RULE, "layers");
    }
    int64_t index;
    if (!quantization(probs, b->classes, &index)) {
        return refuse(msg, RULE, "outputs");
    }
    b->probs_index = (uint32_t)index;
    uint8_t used[256] = {0};
    used[index] = 1;
    for (uint32_t l = 0; l < b->layers; ++l) {
        span layer, spec, k;
        if (!item(errors, l, &spec) || !quantization(spec, 1, &index) || used[index] || !item(layers, l, &layer) ||
            !get(layer, "z_table", &v) || !field(layer, "name", STRING) ||
            !get_int(layer, "features", NULL, 1, MAX_INPUT_ELEMENTS, &n) || !field(layer, "z_mean", ANY) ||
            !field(layer, "z_std", POSITIVE) || !field(layer, "holdout_quantiles", QUANTILES_OF) ||
            !field(layer, "weight", FRACTION) || !get(layer, "kind", &k) ||
            !(string_is(k, "autoencoder") || string_is(k, "max_logit")) || !get(layer, "transform", &k) ||
            !(string_is(k, "log") || string_is(k, "negate"))) {
            return refuse(msg, RULE, "layers");
        }
        used[index] = 1;
        b->error_index[l] = (uint32_t)index;
        b->tables[l] = v.p;
        b->tables_end[l] = v.end;
    }
    if (!get_int(score, "threshold_units", NULL, 0, INT64_MAX / 2, &b->threshold_units) ||
        !get_int(score, "unit", NULL, 1, 1 << 30, &b->score_unit) || !get(score, "combine", &v) ||
        !string_is(v, "mean_positive_z") || !field(score, "eps", POSITIVE) || !field(score, "threshold", ANY) ||
        !field(score, "target_fpr", FRACTION) || !field(score, "holdout_quantiles", QUANTILES_OF)) {
        return refuse(msg, RULE, "score");
    }
    return 0;
}

int bundle_open(const uint8_t *archive, uint32_t len, bundle_info *b, char *err, size_t err_len)
{
    text msg;
    text_init(&msg, err, err_len);
    memset(b, 0, sizeof *b);
    tar_cursor t = {archive, len, 0, {0}, NULL, 0};
    int found;
    while ((found = tar_next(&t)) == 1 && !is_manifest(t.name)) {
    }
    if (found != 1) {
        return refuse(&msg, found ? "not a readable bundle archive" : "not a bundle (no manifest.json)", NULL);
    }
    b->manifest = t.data;
    b->manifest_len = t.size;
    span root = {(const char *)t.data, (const char *)t.data + t.size}, v, files, model_name;
    root.p = skip_space(root.p, root.end);
    const char *after = skip_value(root.p, root.end), *s;
    size_t s_len;
    int64_t n;
    if (!utf8(t.data, t.size) || after == NULL || skip_space(after, root.end) != root.end || !well_formed(root, 0)) {
        return refuse(&msg, "manifest.json is not strict JSON", NULL);
    }
    if (!get(root, "schema", &v) || !string_is(v, "edgefp.bundle")) {
        return refuse(&msg, "manifest.json is not an edgefp bundle manifest", NULL);
    }
    if (!get_int(root, "version", NULL, BUNDLE_VERSION, BUNDLE_VERSION, &n)) {
        return refuse(&msg, "bundle version is not 3; convert it again", NULL);
    }
    if (!get(root, "name", &v) || !string(v, &s, &s_len) || !plain_name(s, s_len, 1)) {
        return refuse(&msg, RULE, "name");
    }
    if (!field(root, "created", OPTIONAL_STRING) || !field(root, "edgefp_version", OPTIONAL_STRING)) {
        return refuse(&msg, RULE, "created");
    }
    memcpy(b->name, s, s_len < EFP_NAME_MAX ? s_len : EFP_NAME_MAX);
    span entry;
    uint32_t listed = get(root, "files", &files) && *files.p == '{' ? count(files) : 0;
    if (listed == 0 || !get(root, "model", &model_name)) {
        return refuse(&msg, RULE, "files");
    }

    /* Every file in the archive has a plain name, is there once, and is listed with its size and SHA-256;
     * every listed file is there (so the listed names are plain, at most 8, of the slot's size at most). */
    const uint8_t *seen[MAX_FILES + 1];
    uint32_t verified = 0, members_seen = 0;
    t.next = 0;
    while ((found = tar_next(&t)) == 1) {
        for (uint32_t i = 0; i <= members_seen; ++i) {
            if (i == MAX_FILES + 1 || (i < members_seen && memcmp(seen[i] - TAR_BLOCK, t.data - TAR_BLOCK, 100) == 0)) {
                return refuse(&msg, "the archive holds too many files or one twice: ", t.name);
            }
        }
        seen[members_seen++] = t.data;
        if (is_manifest(t.name)) {
            continue;
        }
        uint8_t expected[32], actual[32];
        if (!plain_name(t.name, strlen(t.name), 0) || !get(files, t.name, &entry)) {
            return refuse(&msg, "a file is not listed: ", t.name);
        }
        if (!get_int(entry, "bytes", NULL, t.size, t.size, &n) || !get(entry, "sha256", &v) ||
            !hex_digest(v, expected)) {
            return refuse(&msg, "a file does not match its size: ", t.name);
        }
        sha256(t.data, t.size, actual);
        if (memcmp(expected, actual, 32) != 0) {
            return refuse(&msg, "a file does not match its SHA-256: ", t.name);
        }
        if (string(model_name, &s, &s_len) && s_len == strlen(t.name) && memcmp(s, t.name, s_len) == 0) {
            b->model = t.data;
            b->model_len = t.size;
        }
        ++verified;
    }
    if (found < 0 || verified != listed) {
        return refuse(&msg, found < 0 ? "not a readable bundle archive" : "a file listed in manifest.json is missing",
                      NULL);
    }
    if (b->model == NULL) {
        return refuse(&msg, "the model named in manifest.json is missing", NULL);
    }
    if (!get_int(root, "flash_bytes", NULL, b->model_len, b->model_len, &n) ||
        !get_int(root, "tflm_arena_bytes", NULL, 1, 1 << 30, &n) || !get(root, "ops", &v) || !list_of(v, -256, STRINGS)) {
        return refuse(&msg, RULE, "flash_bytes");
    }
    return check_fields(root, b, &msg);
}

int bundle_tables(const bundle_info *b, int32_t *tables)
{
    for (uint32_t l = 0; l < b->layers; ++l) {
        span table = {b->tables[l], b->tables_end[l]}, k, v;
        members m;
        int64_t n;
        uint32_t q = 0;
        if (!members_begin(table, &m) || m.close != ']') {
            return -1;
        }
        for (; members_next(&m, &k, &v); ++q) {
            if (q == 256 || !integer(v, &n) || n < 0 || n > INT32_MAX) {
                return -1;
            }
            if (tables) {
                tables[l * 256 + q] = (int32_t)n;
            }
        }
        if (q != 256) {
            return -1;
        }
    }
    return 0;
}

/* A JSON number as the float nearest to it, through a double as the host reads it. Exact for every
 * float32 value, which is what a manifest's input numbers hold; for another number the double may be a
 * few units in its last place off, which changes the float only within 1e-16 of a midpoint. */
static int real(span v, float *out)
{
    const char *p = v.p;
    int negative = p < v.end && *p == '-', digits = 0, fraction = -1, exponent = 0;
    double x = 0.0, power = 1.0, ten = 10.0;
    for (p += negative; p < v.end; ++p) {
        if (*p >= '0' && *p <= '9') {
            x = x * 10.0 + (*p - '0');
            ++digits;
            fraction += fraction >= 0;
        } else if (*p == '.' && fraction < 0) {
            fraction = 0;
        } else {
            break;
        }
    }
    if (p < v.end && (*p == 'e' || *p == 'E') && digits) {
        int sign = ++p < v.end && *p == '-' ? -1 : 1, any = 0;
        for (p += p < v.end && (*p == '-' || *p == '+'); p < v.end && *p >= '0' && *p <= '9'; ++p, any = 1) {
            exponent = exponent < 1000 ? exponent * 10 + (*p - '0') : exponent;
        }
        exponent *= sign;
        digits *= any;
    }
    if (!digits || p != v.end) {
        return 0;
    }
    exponent -= fraction > 0 ? fraction : 0;
    for (int e = exponent < 0 ? -exponent : exponent; e; e >>= 1, ten *= ten) {
        power *= e & 1 ? ten : 1.0;
    }
    x = exponent < 0 ? x / power : x * power;
    if (!(x < 3.4028235677973366e38)) { /* rounds beyond the largest float: no manifest holds it */
        return 0;
    }
    x = x > 3.4028234663852886e38 ? 3.4028234663852886e38 : x;
    *out = (float)(negative ? -x : x);
    return 1;
}

/* Exactly n numbers (positive ones with positive). */
static int reals(span v, float *out, uint32_t n, int positive)
{
    members m;
    span k, value;
    uint32_t i = 0;
    if (!members_begin(v, &m) || m.close != ']') {
        return 0;
    }
    for (; members_next(&m, &k, &value); ++i) {
        if (i == n || !real(value, &out[i]) || (positive && !(out[i] > 0.0f))) {
            return 0;
        }
    }
    return i == n;
}

int bundle_input(const bundle_info *b, float *mean, float *std, float *scale, int32_t *zero_point)
{
    span root = {(const char *)b->manifest, (const char *)b->manifest + b->manifest_len}, input, pre, v;
    int64_t n;
    root.p = skip_space(root.p, root.end);
    if (!get(root, "input", &input) || !get(input, "scale", &v) || !real(v, scale) || !(*scale > 0.0f) ||
        !get_int(input, "zero_point", NULL, -128, 127, &n) || !get(input, "preprocessing", &pre) ||
        !get(pre, "type", &v)) {
        return -1;
    }
    *zero_point = (int32_t)n;
    if (string_is(v, "none")) {
        for (uint32_t c = 0; c < b->channels; ++c) {
            mean[c] = 0.0f;
            std[c] = 1.0f;
        }
        return 0;
    }
    if (!string_is(v, "standardize") || !get(pre, "mean", &v) || !reals(v, mean, b->channels, 0)) {
        return -1;
    }
    return get(pre, "std", &v) && reals(v, std, b->channels, 1) ? 0 : -1;
}

uint32_t bundle_output(const bundle_info *b, uint32_t k, int32_t *type)
{
    span raw = {b->raw, b->raw_end}, spec, v;
    if (b->layers || !item(raw, k, &spec) || !get(spec, "shape", &v)) {
        return 0;
    }
    uint32_t n = elements(v);
    get(spec, "dtype", &v);
    *type = string_is(v, "int8") ? 9 : string_is(v, "float32") ? 0 : 2; /* TFLite TensorType */
    return *type == 9 ? n : 4 * n;
}
