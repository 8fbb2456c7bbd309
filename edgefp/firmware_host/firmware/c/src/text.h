/* One-line messages without printf (which would triple the firmware's size). */
#ifndef EFP_TEXT_H
#define EFP_TEXT_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    char *buf;
    size_t cap; /* bytes of buf, terminator included */
    size_t len;
} efp_text;

static inline void efp_text_init(efp_text *t, char *buf, size_t cap)
{
    t->buf = buf;
    t->cap = cap;
    t->len = 0;
    buf[0] = 0;
}

static inline void efp_text_str(efp_text *t, const char *s)
{
    while (*s && t->len + 1 < t->cap) {
        t->buf[t->len++] = *s++;
    }
    t->buf[t->len] = 0;
}

static inline void efp_text_uint(efp_text *t, uint32_t v)
{
    char digits[11];
    int n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n && t->len + 1 < t->cap) {
        t->buf[t->len++] = digits[--n];
    }
    t->buf[t->len] = 0;
}

#endif
