/* A minimal JSON reader: a value is a span [p, end) of the text; lookups scan, nothing is copied or
 * allocated. */
#include "json.h"

#include <string.h>

#include "config.h"
const char *efp_json_skip_space(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\n' || *p == '\r' || *p == '\t')) {
        ++p;
    }
    return p;
}

/* The end of the value starting at p (no leading space), or NULL when it is malformed. */
const char *efp_json_skip_value(const char *p, const char *end)
{
    if (p < end && *p != '"' && *p != '{' && *p != '[') { /* number or literal */
        const char *start = p;
        while (p < end && *p != ',' && *p != '}' && *p != ']' && *p != ' ' && *p != '\n' && *p != '\r' && *p != '\t') {
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

int efp_json_members_begin(efp_json v, efp_json_members *m)
{
    const char *p = efp_json_skip_space(v.p, v.end);
    if (p >= v.end || (*p != '{' && *p != '[')) {
        return 0;
    }
    m->close = *p == '{' ? '}' : ']';
    m->p = efp_json_skip_space(p + 1, v.end);
    m->end = v.end;
    m->more = 0;
    return 1;
}

/* The next member: 1, or 0 at the end or where the JSON is malformed (m->p is then left at m->end,
 * not at the closing bracket). */
int efp_json_members_next(efp_json_members *m, efp_json *key, efp_json *value)
{
    const char *p = m->p;
    if (p >= m->end || (*p == m->close && !m->more)) {
        return 0;
    }
    m->p = m->end;
    if (m->close == '}') {
        const char *after = *p == '"' ? efp_json_skip_value(p, m->end) : NULL;
        if (after == NULL) {
            return 0;
        }
        key->p = p + 1;
        key->end = after - 1;
        p = efp_json_skip_space(after, m->end);
        if (p >= m->end || *p != ':') {
            return 0;
        }
        p = efp_json_skip_space(p + 1, m->end);
    }
    const char *after = efp_json_skip_value(p, m->end);
    if (after == NULL) {
        return 0;
    }
    value->p = p;
    value->end = after;
    p = efp_json_skip_space(after, m->end);
    m->more = p < m->end && *p == ',';
    if (m->more) {
        m->p = efp_json_skip_space(p + 1, m->end);
    } else if (p < m->end && *p == m->close) {
        m->p = p;
    }
    return 1;
}

static int same_key(efp_json a, efp_json b)
{
    return a.end - a.p == b.end - b.p && memcmp(a.p, b.p, (size_t)(a.end - a.p)) == 0;
}

int efp_json_get(efp_json v, const char *key, efp_json *out)
{
    efp_json_members m;
    efp_json k, value, wanted = {key, key + strlen(key)};
    if (!efp_json_members_begin(v, &m) || m.close != '}') {
        return 0;
    }
    while (efp_json_members_next(&m, &k, &value)) {
        if (same_key(k, wanted)) {
            *out = value;
            return 1;
        }
    }
    return 0;
}

/* A JSON efp_json_string, quotes included: escapes as JSON has them, no control characters. */
static int json_string(efp_json v)
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

/* A JSON efp_json_string, number, true, false or null. */
static int json_scalar(efp_json v)
{
    int negative, zero, position;
    size_t n = (size_t)(v.end - v.p);
    return (n && *v.p == '"' && json_string(v)) || (n == 4 && memcmp(v.p, "true", 4) == 0) ||
           (n == 5 && memcmp(v.p, "false", 5) == 0) || (n == 4 && memcmp(v.p, "null", 4) == 0) ||
           efp_json_number(v, &negative, &zero, &position);
}

/* 1 when v is strict JSON (RFC 8259), nests at most EFP_MAX_DEPTH deep and no object repeats a key: the
 * rules the host's JSON reading applies too. */
int efp_json_well_formed(efp_json v, int depth)
{
    efp_json_members m, rest;
    efp_json k, value, k2, ignored;
    if (!efp_json_members_begin(v, &m)) {
        return json_scalar(v);
    }
    if (depth == EFP_MAX_DEPTH) {
        return 0;
    }
    while (efp_json_members_next(&m, &k, &value)) {
        efp_json quoted = {k.p - 1, k.end + 1};
        if ((m.close == '}' && !json_string(quoted)) || !efp_json_well_formed(value, depth + 1)) {
            return 0;
        }
        for (rest = m; m.close == '}' && efp_json_members_next(&rest, &k2, &ignored);) {
            if (same_key(k, k2)) {
                return 0;
            }
        }
    }
    return m.p < m.end && *m.p == m.close;
}

int efp_json_item(efp_json v, uint32_t index, efp_json *out)
{
    efp_json_members m;
    efp_json k;
    if (!efp_json_members_begin(v, &m)) {
        return 0;
    }
    for (uint32_t i = 0; efp_json_members_next(&m, &k, out); ++i) {
        if (i == index) {
            return 1;
        }
    }
    return 0;
}

uint32_t efp_json_count(efp_json v)
{
    efp_json_members m;
    efp_json k, ignored;
    uint32_t n = 0;
    if (efp_json_members_begin(v, &m)) {
        while (efp_json_members_next(&m, &k, &ignored)) {
            ++n;
        }
    }
    return n;
}

int efp_json_integer(efp_json v, int64_t *out)
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

/* A JSON efp_json_string without escapes, its bytes between the quotes. */
int efp_json_string(efp_json v, const char **s, size_t *n)
{
    if (v.end - v.p < 2 || *v.p != '"' || v.end[-1] != '"' || memchr(v.p, '\\', (size_t)(v.end - v.p))) {
        return 0;
    }
    *s = v.p + 1;
    *n = (size_t)(v.end - v.p) - 2;
    return 1;
}

int efp_json_string_is(efp_json v, const char *expected)
{
    const char *s;
    size_t n;
    return efp_json_string(v, &s, &n) && n == strlen(expected) && memcmp(s, expected, n) == 0;
}

/* An efp_json_integer at a path of object keys below v; 1 when found and in [lo, hi]. */
int efp_json_get_int(efp_json v, const char *k1, const char *k2, int64_t lo, int64_t hi, int64_t *out)
{
    efp_json a, b;
    return efp_json_get(v, k1, &a) && (k2 == NULL ? (b = a, 1) : efp_json_get(a, k2, &b)) && efp_json_integer(b, out) &&
           *out >= lo && *out <= hi;
}

/* Strict UTF-8: no overlong forms, no surrogates, nothing above U+10FFFF. */
int efp_json_utf8(const uint8_t *p, uint32_t n)
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

/* A JSON number: 1 when v is one, with its sign, whether it is zero, and the power of ten P just above
 * it (10^(P-1) <= |value| < 10^P when it is not zero). */
int efp_json_number(efp_json v, int *negative, int *zero, int *position)
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
            exponent += seen && !point; /* digits before the point, from the first significant one */
            exponent -= !seen && point; /* zeros after the point before the first significant digit */
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

/* A JSON number as the float nearest to it, through a double as the host reads it. Exact for every
 * float32 value, which is what a manifest's input numbers hold; for another number the double may be a
 * few units in its last place off, which changes the float only within 1e-16 of a midpoint. */
int efp_json_real(efp_json v, float *out)
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
