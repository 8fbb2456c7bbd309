/* Reading an uncompressed tar archive in place (POSIX ustar and GNU headers, pax attributes skipped). */
#include "tar.h"

#include <string.h>

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
int efp_tar_next(efp_tar_cursor *t)
{
    for (;;) {
        if (t->next == t->len || (t->next + EFP_TAR_BLOCK <= t->len && t->archive[t->next] == 0)) {
            return 0;
        }
        if (t->next + EFP_TAR_BLOCK > t->len) {
            return -1;
        }
        const uint8_t *h = t->archive + t->next;
        uint32_t sum = 0, stored, size;
        for (int i = 0; i < EFP_TAR_BLOCK; ++i) {
            sum += i >= 148 && i < 156 ? ' ' : h[i];
        }
        uint32_t start = t->next + EFP_TAR_BLOCK;
        if (!octal(h + 148, 8, &stored) || !octal(h + 124, 12, &size) || sum != stored || size > t->len - start) {
            return -1;
        }
        t->next = start + (size + EFP_TAR_BLOCK - 1) / EFP_TAR_BLOCK * EFP_TAR_BLOCK;
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
        t->data = h + EFP_TAR_BLOCK;
        t->size = size;
        return 1;
    }
}
