/* Opening a bundle: its files verified against the manifest's sizes and SHA-256, the manifest checked by
 * the rules of edgefp/manifest.py on the fields the firmware runs, and those fields read. */
#include "bundle.h"

#include <string.h>

#include "json.h"
#include "sha256.h"
#include "tar.h"
#include "text.h"

#define NUMBER_TEXT(n) TEXT_OF(n) /* a macro's number as a string literal */
#define TEXT_OF(n)     #n

#define RULE "manifest.json breaks a rule at " /* then the field (docs/bundle.md, Validation) */

static int is_manifest(const char *name)
{
    return memcmp(name, "manifest.json", sizeof "manifest.json") == 0; /* its terminator included */
}

/* A SHA-256 as the manifest writes it: 64 lowercase hex digits. */
static int sha256_hex(efp_json v, uint8_t out[32])
{
    const char *s;
    size_t n;
    if (!efp_json_string(v, &s, &n) || n != 64) {
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

static int refuse(efp_text *msg, const char *what, const char *name)
{
    efp_text_str(msg, what);
    if (name) {
        efp_text_str(msg, name);
    }
    return -1;
}

/* ---------------------------------------------------------------- the manifest's rules (edgefp/manifest.py) */
static int is_string(efp_json v) { return v.end - v.p >= 2 && *v.p == '"' && v.end[-1] == '"'; }

enum { ANY, POSITIVE, FRACTION }; /* what number() accepts (edgefp.manifest): |x| < 1e308; x >= 1e-300; x < 1 */

/* A JSON number of a kind: any number below 1e308 in size, a positive one of at least 1e-300, or one
 * of those below 1. */
static int number(efp_json v, int kind)
{
    int negative, zero, position;
    if (!efp_json_number(v, &negative, &zero, &position) || (!zero && position > 308)) {
        return 0;
    }
    return kind == ANY || (!negative && !zero && position > -300 && (kind == POSITIVE || position <= 0));
}

/* A list of exactly n (at most n when n is negative) numbers of a kind, or strings (kind STRINGS). */
enum { STRINGS = FRACTION + 1 };
static int list_of(efp_json list, int32_t n, int kind)
{
    efp_json_members m;
    efp_json k, v;
    int32_t i = 0, most = n < 0 ? -n : n;
    if (!efp_json_members_begin(list, &m) || m.close != ']') {
        return 0;
    }
    for (; efp_json_members_next(&m, &k, &v); ++i) {
        if (i == most || !(kind == STRINGS ? is_string(v) : number(v, kind))) {
            return 0;
        }
    }
    return n < 0 || i == n;
}

/* The member ``key`` of obj: a number of a kind, a efp_json_string (STRING; OPTIONAL_STRING when it may be
 * missing), or 101 numbers (EFP_QUANTILES). */
enum { STRING = STRINGS + 1, OPTIONAL_STRING, QUANTILES_OF };
static int field(efp_json obj, const char *key, int kind)
{
    efp_json v;
    if (!efp_json_get(obj, key, &v)) {
        return kind == OPTIONAL_STRING;
    }
    return kind >= STRING ? (kind == QUANTILES_OF ? list_of(v, EFP_QUANTILES, ANY) : is_string(v)) : number(v, kind);
}

/* A bundle name ([a-z0-9_], 1 to 64) or a file name ([A-Za-z0-9_], then also '.' and '-'; 1 to 100; not
 * the manifest's). */
static int plain_name(const char *s, size_t n, int bundle_name)
{
    if (n < 1 || n > (bundle_name ? (size_t)EFP_MAX_NAME : 100u) ||
        (!bundle_name && n == 13 && memcmp(s, "manifest.json", 13) == 0)) {
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

static uint32_t elements(efp_json shape);

/* index 0..255, a positive scale, zero_point -128..127 and a shape of 1 to 6 axes holding least to most
 * elements (how many in *size). */
static int quantization(efp_json spec, uint32_t least, uint32_t most, int64_t *index, uint32_t *size)
{
    efp_json shape;
    int64_t n;
    if (!efp_json_get_int(spec, "index", NULL, 0, 255, index) || !field(spec, "scale", POSITIVE) ||
        !efp_json_get_int(spec, "zero_point", NULL, -128, 127, &n) || !efp_json_get(spec, "shape", &shape) ||
        efp_json_count(shape) < 1) {
        return 0;
    }
    *size = elements(shape);
    return *size >= least && *size <= most;
}

/* An error output of two values names the factor between their scales, from 1 to EFP_MAX_COARSE_FACTOR
 * (the firmware's tables hold its effect); one of one value names none. */
static int coarse_factor(efp_json spec, uint32_t size)
{
    efp_json v;
    float factor;
    if (size == 1) {
        return !efp_json_get(spec, "coarse_factor", &v);
    }
    return efp_json_get(spec, "coarse_factor", &v) && efp_json_real(v, &factor) && factor >= 1.0f &&
           factor <= (float)EFP_MAX_COARSE_FACTOR;
}

enum { BROKEN, NONE, STANDARDIZE }; /* what preprocessing() finds */

/* type none, or standardize with a mean and a positive std per channel (the shape's last axis). */
static int preprocessing(efp_json pre, efp_json shape, uint32_t dims)
{
    efp_json v;
    int64_t channels;
    if (!efp_json_get(pre, "type", &v)) {
        return BROKEN;
    }
    if (efp_json_string_is(v, "none")) {
        return NONE;
    }
    return efp_json_string_is(v, "standardize") && efp_json_item(shape, dims - 1, &v) &&
                   efp_json_integer(v, &channels) && efp_json_get(pre, "mean", &v) &&
                   list_of(v, (int32_t)channels, ANY) && efp_json_get(pre, "std", &v) &&
                   list_of(v, (int32_t)channels, POSITIVE)
               ? STANDARDIZE
               : BROKEN;
}

/* n labels, each an object with a non-negative efp_json_integer value and a efp_json_string name. */
static int label_values(efp_json labels, uint32_t n)
{
    efp_json label;
    int64_t value;
    for (uint32_t i = 0; i < n; ++i) {
        if (!efp_json_item(labels, i, &label) || !efp_json_get_int(label, "value", NULL, 0, INT64_MAX, &value) ||
            !field(label, "name", STRING)) {
            return 0;
        }
    }
    return 1;
}

/* The fields the firmware runs, by the rules of edgefp.manifest.check. */
/* A tensor's shape: at most EFP_MAX_DIMS sizes of at least 1, EFP_MAX_INPUT_ELEMENTS elements together; 0 if not. */
static uint32_t elements(efp_json shape)
{
    efp_json v;
    int64_t n;
    uint64_t total = 1;
    for (uint32_t i = 0; efp_json_item(shape, i, &v); ++i) {
        if (i == EFP_MAX_DIMS || !efp_json_integer(v, &n) || n < 1 || (total *= (uint64_t)n) > EFP_MAX_INPUT_ELEMENTS) {
            return 0;
        }
    }
    return *shape.p == '[' ? (uint32_t)total : 0;
}

/* Each output of a model wrapped without a fingerprint, in the model's order: index, shape, dtype, quantisation. */
static int raw_outputs(efp_json raw)
{
    efp_json spec, shape, v;
    int64_t n;
    uint32_t k = 0;
    for (; efp_json_item(raw, k, &spec); ++k) {
        if (!efp_json_get_int(spec, "index", NULL, k, k, &n) || !efp_json_get(spec, "shape", &shape) ||
            !elements(shape) || !efp_json_get(spec, "dtype", &v) ||
            !(efp_json_string_is(v, "int8") || efp_json_string_is(v, "float32") || efp_json_string_is(v, "int32")) ||
            !field(spec, "scale", ANY) || !efp_json_get_int(spec, "zero_point", NULL, INT32_MIN, INT32_MAX, &n)) {
            return 0;
        }
    }
    return k >= 1 && k <= EFP_MAX_OUTPUTS;
}

/* The fields the firmware runs, by the rules of edgefp.manifest.check. */
static int check_fields(efp_json root, efp_bundle_info *b, efp_text *msg)
{
    efp_json input, shape, pre, outputs, probs, errors, layers, labels, score, v;
    int64_t n;
    if (!efp_json_get(root, "input", &input) || !efp_json_get(input, "shape", &shape) ||
        !efp_json_get(root, "outputs", &outputs) || !efp_json_get(root, "layers", &layers) ||
        !efp_json_get(root, "labels", &labels) || !efp_json_get(root, "score", &score) ||
        !efp_json_get(input, "preprocessing", &pre)) {
        return refuse(msg, RULE, "input");
    }
    b->layers = *layers.p == '[' ? efp_json_count(layers) : EFP_MAX_LAYERS + 1;
    uint32_t wrapped = b->layers == 0, dims = efp_json_count(shape);
    b->input_bytes = elements(shape);
    if (dims == 0 || b->input_bytes == 0 || !efp_json_item(shape, dims - 1, &v) || !efp_json_integer(v, &n)) {
        return refuse(msg, RULE, "input.shape");
    }
    b->channels = (uint32_t)n;
    b->input_float = wrapped && efp_json_get(input, "dtype", &v) && efp_json_string_is(v, "float32");
    b->input_bytes *= b->input_float ? 4u : 1u;
    int kind = preprocessing(pre, shape, wrapped ? 0 : dims); /* 0 dims: a wrapped model's input has none */
    if (!efp_json_get(input, "dtype", &v) || !(efp_json_string_is(v, "int8") || b->input_float) ||
        !field(input, "scale", wrapped ? ANY : POSITIVE) ||
        !efp_json_get_int(input, "zero_point", NULL, -128, 127, &n) || kind == BROKEN) {
        return refuse(msg, RULE, "input");
    }
    b->standardised = kind == STANDARDIZE;
    b->classes = efp_json_count(labels);
    if (b->classes < 1 - wrapped || b->classes > EFP_MAX_CLASSES || !label_values(labels, b->classes)) {
        return refuse(msg, RULE, "labels");
    }
    if (wrapped) { /* a model wrapped without a fingerprint: its raw outputs, no score */
        if (!efp_json_get(outputs, "raw", &v) || !raw_outputs(v) || score.end - score.p != 4 ||
            memcmp(score.p, "null", 4) != 0) {
            return refuse(msg, RULE, "outputs");
        }
        b->raw = v.p;
        b->raw_end = v.end;
        return 0;
    }
    if (b->layers > EFP_MAX_LAYERS || !efp_json_get(outputs, "probs", &probs) ||
        !efp_json_get(outputs, "layer_errors", &errors) || efp_json_count(errors) != b->layers) {
        return refuse(msg, RULE, "layers");
    }
    int64_t index;
    uint32_t size;
    if (!quantization(probs, b->classes, b->classes, &index, &size)) {
        return refuse(msg, RULE, "outputs");
    }
    b->probs_index = (uint32_t)index;
    uint8_t used[256] = {0};
    used[index] = 1;
    b->coarse = 0;
    for (uint32_t l = 0; l < b->layers; ++l) {
        efp_json layer, spec, k;
        /* an error (transform log) may come at two scales (docs/bundle.md), other evidence at one */
        int error =
            efp_json_item(layers, l, &layer) && efp_json_get(layer, "transform", &k) && efp_json_string_is(k, "log");
        if (!efp_json_item(errors, l, &spec) || !quantization(spec, 1, error ? EFP_MAX_SCALES : 1, &index, &size) ||
            used[index] || !efp_json_item(layers, l, &layer) || !efp_json_get(layer, "z_table", &v) ||
            !field(layer, "name", STRING) ||
            !efp_json_get_int(layer, "features", NULL, 1, EFP_MAX_INPUT_ELEMENTS, &n) || !field(layer, "z_mean", ANY) ||
            !field(layer, "z_std", POSITIVE) || !field(layer, "holdout_quantiles", QUANTILES_OF) ||
            !field(layer, "weight", FRACTION) || !efp_json_get(layer, "kind", &k) ||
            !(efp_json_string_is(k, "autoencoder") || efp_json_string_is(k, "max_logit")) ||
            !efp_json_get(layer, "transform", &k) ||
            !(efp_json_string_is(k, "log") || efp_json_string_is(k, "negate")) || !coarse_factor(spec, size)) {
            return refuse(msg, RULE, "layers");
        }
        used[index] = 1;
        b->error_index[l] = (uint32_t)index;
        b->coarse |= (uint16_t)((size - 1u) << l);
        b->tables[l] = v.p;
        b->tables_end[l] = v.end;
    }
    if (!efp_json_get_int(score, "threshold_units", NULL, 0, INT64_MAX / 2, &b->threshold_units) ||
        !efp_json_get_int(score, "unit", NULL, 1, 1 << 30, &b->score_unit) || !efp_json_get(score, "combine", &v) ||
        !efp_json_string_is(v, "mean_positive_z") || !field(score, "eps", POSITIVE) ||
        !field(score, "threshold", ANY) || !field(score, "target_fpr", FRACTION) ||
        !field(score, "holdout_quantiles", QUANTILES_OF) ||
        (efp_json_get(score, "n_holdout", &v) && !efp_json_get_int(score, "n_holdout", NULL, 1, INT64_MAX, &n))) {
        return refuse(msg, RULE, "score");
    }
    return 0;
}

int efp_bundle_open(const uint8_t *archive, uint32_t len, efp_bundle_info *b, char *err, size_t err_len)
{
    efp_text msg;
    efp_text_init(&msg, err, err_len);
    memset(b, 0, sizeof *b);
    efp_tar_cursor t = {archive, len, 0, {0}, NULL, 0};
    int found;
    while ((found = efp_tar_next(&t)) == 1 && !is_manifest(t.name)) {
    }
    if (found != 1) {
        return refuse(&msg, found ? "not a readable bundle archive" : "not a bundle (no manifest.json)", NULL);
    }
    b->manifest = t.data;
    b->manifest_len = t.size;
    efp_json root = {(const char *)t.data, (const char *)t.data + t.size}, v, files, model_name;
    root.p = efp_json_skip_space(root.p, root.end);
    const char *after = efp_json_skip_value(root.p, root.end), *s;
    size_t s_len;
    int64_t n;
    if (!efp_json_utf8(t.data, t.size) || after == NULL || efp_json_skip_space(after, root.end) != root.end ||
        !efp_json_well_formed(root, 0)) {
        return refuse(&msg, "manifest.json is not strict JSON", NULL);
    }
    if (!efp_json_get(root, "schema", &v) || !efp_json_string_is(v, "edgefp.bundle")) {
        return refuse(&msg, "manifest.json is not an edgefp bundle manifest", NULL);
    }
    if (!efp_json_get_int(root, "version", NULL, EFP_BUNDLE_VERSION, EFP_BUNDLE_VERSION, &n)) {
        return refuse(&msg, "bundle version is not " NUMBER_TEXT(EFP_BUNDLE_VERSION) "; convert it again", NULL);
    }
    if (!efp_json_get(root, "name", &v) || !efp_json_string(v, &s, &s_len) || !plain_name(s, s_len, 1)) {
        return refuse(&msg, RULE, "name");
    }
    if (!field(root, "created", OPTIONAL_STRING) || !field(root, "edgefp_version", OPTIONAL_STRING)) {
        return refuse(&msg, RULE, "created");
    }
    memcpy(b->name, s, s_len < EFP_NAME_MAX ? s_len : EFP_NAME_MAX);
    efp_json entry;
    uint32_t listed = efp_json_get(root, "files", &files) && *files.p == '{' ? efp_json_count(files) : 0;
    if (listed == 0 || !efp_json_get(root, "model", &model_name)) {
        return refuse(&msg, RULE, "files");
    }

    /* Every file in the archive has a plain name, is there once, and is listed with its size and SHA-256;
     * every listed file is there (so the listed names are plain, at most 8, of the slot's size at most). */
    const uint8_t *seen[EFP_MAX_FILES + 2];
    uint32_t verified = 0, members_seen = 0;
    t.next = 0;
    while ((found = efp_tar_next(&t)) == 1) {
        for (uint32_t i = 0; i <= members_seen; ++i) {
            if (i == EFP_MAX_FILES + 2 ||
                (i < members_seen && memcmp(seen[i] - EFP_TAR_BLOCK, t.data - EFP_TAR_BLOCK, 100) == 0)) {
                return refuse(&msg, "the archive holds too many files or one twice: ", t.name);
            }
        }
        seen[members_seen++] = t.data;
        if (is_manifest(t.name)) {
            continue;
        }
        uint8_t expected[32], actual[32];
        if (memcmp(t.name, "manifest.sig", sizeof "manifest.sig") == 0 && t.size == EFP_SIGNATURE_BYTES &&
            !efp_json_get(files, t.name, &entry)) {
#ifdef EFP_TRUST_KEY
            b->signature = t.data; /* checked by a firmware that trusts a key (signature.h) */
#endif
            continue;
        }
        if (!plain_name(t.name, strlen(t.name), 0) || !efp_json_get(files, t.name, &entry)) {
            return refuse(&msg, "a file is not listed: ", t.name);
        }
        if (!efp_json_get_int(entry, "bytes", NULL, t.size, t.size, &n) || !efp_json_get(entry, "sha256", &v) ||
            !sha256_hex(v, expected)) {
            return refuse(&msg, "a file does not match its size: ", t.name);
        }
        efp_sha256(t.data, t.size, actual);
        if (memcmp(expected, actual, 32) != 0) {
            return refuse(&msg, "a file does not match its SHA-256: ", t.name);
        }
        if (efp_json_string(model_name, &s, &s_len) && s_len == strlen(t.name) && memcmp(s, t.name, s_len) == 0) {
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
    if (!efp_json_get_int(root, "flash_bytes", NULL, b->model_len, b->model_len, &n) ||
        !efp_json_get_int(root, "tflm_arena_bytes", NULL, 1, 1 << 30, &n) || !efp_json_get(root, "ops", &v) ||
        !list_of(v, -256, STRINGS)) {
        return refuse(&msg, RULE, "flash_bytes");
    }
    return check_fields(root, b, &msg);
}

uint32_t efp_bundle_values(const efp_bundle_info *b)
{
    uint32_t values = 0;
    for (uint32_t l = 0; l < b->layers; ++l) {
        values += efp_bundle_scales(b, l);
    }
    return values;
}

int efp_bundle_tables(const efp_bundle_info *b, int32_t *tables)
{
    for (uint32_t l = 0, first = 0; l < b->layers; first += 256u * efp_bundle_scales(b, l++)) {
        efp_json table = {b->tables[l], b->tables_end[l]}, k, v;
        efp_json_members m;
        int64_t n;
        uint32_t q = 0, entries = 256u * efp_bundle_scales(b, l);
        if (!efp_json_members_begin(table, &m) || m.close != ']') {
            return -1;
        }
        for (; efp_json_members_next(&m, &k, &v); ++q) {
            if (q == entries || !efp_json_integer(v, &n) || n < 0 || n > INT32_MAX) {
                return -1;
            }
            if (tables) {
                tables[first + q] = (int32_t)n;
            }
        }
        if (q != entries) {
            return -1;
        }
    }
    return 0;
}

/* Exactly n numbers (positive ones with positive). */
static int reals(efp_json v, float *out, uint32_t n, int positive)
{
    efp_json_members m;
    efp_json k, value;
    uint32_t i = 0;
    if (!efp_json_members_begin(v, &m) || m.close != ']') {
        return 0;
    }
    for (; efp_json_members_next(&m, &k, &value); ++i) {
        if (i == n || !efp_json_real(value, &out[i]) || (positive && !(out[i] > 0.0f))) {
            return 0;
        }
    }
    return i == n;
}

int efp_bundle_input(const efp_bundle_info *b, float *mean, float *std, float *scale, int32_t *zero_point)
{
    efp_json root = {(const char *)b->manifest, (const char *)b->manifest + b->manifest_len}, input, pre, v;
    int64_t n;
    root.p = efp_json_skip_space(root.p, root.end);
    if (!efp_json_get(root, "input", &input) || !efp_json_get(input, "scale", &v) || !efp_json_real(v, scale) ||
        !(*scale > 0.0f) || !efp_json_get_int(input, "zero_point", NULL, -128, 127, &n) ||
        !efp_json_get(input, "preprocessing", &pre) || !efp_json_get(pre, "type", &v)) {
        return -1;
    }
    *zero_point = (int32_t)n;
    if (efp_json_string_is(v, "none")) {
        return 0;
    }
    if (!efp_json_string_is(v, "standardize") || !efp_json_get(pre, "mean", &v) || !reals(v, mean, b->channels, 0)) {
        return -1;
    }
    return efp_json_get(pre, "std", &v) && reals(v, std, b->channels, 1) ? 0 : -1;
}

uint32_t efp_bundle_output(const efp_bundle_info *b, uint32_t k, int32_t *type)
{
    efp_json raw = {b->raw, b->raw_end}, spec, v;
    if (b->layers || !efp_json_item(raw, k, &spec) || !efp_json_get(spec, "shape", &v)) {
        return 0;
    }
    uint32_t n = elements(v);
    efp_json_get(spec, "dtype", &v);
    *type = efp_json_string_is(v, "int8") ? 9 : efp_json_string_is(v, "float32") ? 0 : 2; /* TFLite TensorType */
    return *type == 9 ? n : 4 * n;
}
