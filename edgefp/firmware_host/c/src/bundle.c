#include "bundle.h"

#include <string.h>

#include "sha256.h"
#include "text.h"

#define BUNDLE_VERSION 3
#define TAR_BLOCK 512

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
    return 1;
}

/* The next member: 1, or 0 at the end (or where the JSON is malformed). */
static int members_next(members *m, span *key, span *value)
{
    const char *p = m->p;
    if (p >= m->end || *p == m->close) {
        return 0;
    }
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
    m->p = p < m->end && *p == ',' ? skip_space(p + 1, m->end) : p;
    return 1;
}

static int get(span v, const char *key, span *out)
{
    members m;
    span k;
    size_t n = strlen(key);
    if (!members_begin(v, &m) || m.close != '}') {
        return 0;
    }
    while (members_next(&m, &k, out)) {
        if ((size_t)(k.end - k.p) == n && memcmp(k.p, key, n) == 0) {
            return 1;
        }
    }
    return 0;
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
        if (*p < '0' || *p > '9' || value > (INT64_MAX - 9) / 10) {
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

/* ---------------------------------------------------------------- the tar archive */
typedef struct {
    const uint8_t *archive;
    uint32_t len, next;
    char name[101];
    const uint8_t *data;
    uint32_t size;
} tar_cursor;

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
        uint32_t sum = 0, stored = 0, size = 0;
        for (int i = 0; i < TAR_BLOCK; ++i) {
            sum += i >= 148 && i < 156 ? ' ' : h[i];
        }
        for (int i = 148; i < 156 && h[i] >= '0' && h[i] <= '7'; ++i) {
            stored = stored * 8 + (uint32_t)(h[i] - '0');
        }
        for (int i = 124; i < 136 && h[i] >= '0' && h[i] <= '7'; ++i) {
            size = size * 8 + (uint32_t)(h[i] - '0');
        }
        uint32_t start = t->next + TAR_BLOCK;
        if (sum != stored || size > t->len - start) {
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
        if (type != '0' && type != 0) {
            return -1;
        }
        memcpy(t->name, h, 100);
        t->name[100] = 0;
        t->data = h + TAR_BLOCK;
        t->size = size;
        return 1;
    }
}

static int refuse(text *msg, const char *what, const char *name)
{
    text_str(msg, what);
    if (name) {
        text_str(msg, name);
    }
    return -1;
}

int bundle_open(const uint8_t *archive, uint32_t len, bundle_info *b, char *err, size_t err_len)
{
    text msg;
    text_init(&msg, err, err_len);
    memset(b, 0, sizeof *b);
    tar_cursor t = {archive, len, 0, {0}, NULL, 0};
    int found;
    while ((found = tar_next(&t)) == 1 && strcmp(t.name, "manifest.json") != 0) {
    }
    if (found != 1) {
        return refuse(&msg, found ? "not a readable bundle archive" : "not a bundle (no manifest.json)", NULL);
    }
    b->manifest = t.data;
    b->manifest_len = t.size;
    span root = {(const char *)t.data, (const char *)t.data + t.size}, v, files, model_name;
    root.p = skip_space(root.p, root.end);
    int64_t n;
    if (!get(root, "schema", &v) || !string_is(v, "edgefp.bundle")) {
        return refuse(&msg, "manifest.json is not an edgefp bundle manifest", NULL);
    }
    if (!get_int(root, "version", NULL, BUNDLE_VERSION, BUNDLE_VERSION, &n)) {
        return refuse(&msg, "bundle version is not 3; convert it again with this version of edgefp", NULL);
    }
    if (!get(root, "files", &files) || !get(root, "model", &model_name)) {
        return refuse(&msg, "manifest.json lists no files", NULL);
    }

    /* Every file in the archive is listed with its size and SHA-256, and every listed file is there. */
    uint32_t verified = 0;
    t.next = 0;
    while ((found = tar_next(&t)) == 1) {
        if (strcmp(t.name, "manifest.json") == 0) {
            continue;
        }
        span entry;
        uint8_t expected[32], actual[32];
        if (!get(files, t.name, &entry)) {
            return refuse(&msg, "a file is not listed in manifest.json: ", t.name);
        }
        if (!get_int(entry, "bytes", NULL, t.size, t.size, &n) || !get(entry, "sha256", &v) ||
            !hex_digest(v, expected)) {
            return refuse(&msg, "a file does not match its size in manifest.json: ", t.name);
        }
        sha256(t.data, t.size, actual);
        if (memcmp(expected, actual, 32) != 0) {
            return refuse(&msg, "a file does not match its SHA-256 in manifest.json: ", t.name);
        }
        const char *s;
        size_t s_len;
        if (string(model_name, &s, &s_len) && s_len == strlen(t.name) && memcmp(s, t.name, s_len) == 0) {
            b->model = t.data;
            b->model_len = t.size;
        }
        ++verified;
    }
    if (found < 0 || verified != count(files)) {
        return refuse(&msg, found < 0 ? "not a readable bundle archive" : "a file listed in manifest.json is missing",
                      NULL);
    }
    if (b->model == NULL) {
        return refuse(&msg, "the model named in manifest.json is missing", NULL);
    }

    /* What the firmware needs to run it. */
    const char *s;
    size_t s_len;
    span input, shape, outputs, errors, layers, labels, score;
    if (get(root, "name", &v) && string(v, &s, &s_len)) {
        memcpy(b->name, s, s_len < EFP_NAME_MAX ? s_len : EFP_NAME_MAX);
    }
    if (!get(root, "input", &input) || !get(input, "shape", &shape) || !get(root, "outputs", &outputs) ||
        !get(root, "layers", &layers) || !get(root, "labels", &labels)) {
        return refuse(&msg, "manifest.json lacks input, outputs, layers or labels", NULL);
    }
    if (get(input, "dtype", &v) && !string_is(v, "int8")) {
        if (!string_is(v, "float32")) {
            return refuse(&msg, "manifest.json has an input dtype other than int8 and float32", NULL);
        }
        b->input_float = 1;
    }
    b->input_bytes = 1;
    for (int i = 0; item(shape, (uint32_t)i, &v); ++i) {
        if (!integer(v, &n) || n < 1 || n > 1 << 20 || b->input_bytes * (uint64_t)n > 1 << 24) {
            return refuse(&msg, "manifest.json has a bad input shape", NULL);
        }
        b->input_bytes *= (uint32_t)n;
    }
    b->input_bytes *= b->input_float ? 4u : 1u;
    b->classes = count(labels);
    b->layers = count(layers);
    if (b->layers == 0) { /* a model wrapped without a fingerprint: nothing more to read */
        return 0;
    }
    if (b->layers > EFP_MAX_LAYERS || !get(outputs, "layer_errors", &errors) || count(errors) != b->layers ||
        !get(root, "score", &score)) {
        return refuse(&msg, "manifest.json has too many or mismatched layers, or no score", NULL);
    }
    if (!get_int(outputs, "probs", "index", 0, 255, &n)) {
        return refuse(&msg, "manifest.json has no probs output", NULL);
    }
    b->probs_index = (uint32_t)n;
    for (uint32_t l = 0; l < b->layers; ++l) {
        span layer, spec;
        if (!item(errors, l, &spec) || !get_int(spec, "index", NULL, 0, 255, &n) ||
            !item(layers, l, &layer) || !get(layer, "z_table", &v)) {
            return refuse(&msg, "manifest.json lacks a layer's output index or z_table", NULL);
        }
        b->error_index[l] = (uint32_t)n;
        b->tables[l] = v.p;
        b->tables_end[l] = v.end;
    }
    if (!get_int(score, "threshold_units", NULL, 0, INT64_MAX / 2, &b->threshold_units) ||
        !get_int(score, "unit", NULL, 1, 1 << 30, &b->score_unit)) {
        return refuse(&msg, "manifest.json has no score unit and threshold_units", NULL);
    }
    return 0;
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
            tables[l * 256 + q] = (int32_t)n;
        }
        if (q != 256) {
            return -1;
        }
    }
    return 0;
}
