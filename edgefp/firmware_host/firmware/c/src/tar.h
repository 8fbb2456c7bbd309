/* Reading an uncompressed tar archive in place: regular files only (pax attributes skipped; links,
 * devices, directories and names with a prefix refused). */
#ifndef EFP_TAR_H
#define EFP_TAR_H

#include <stdint.h>

#define EFP_TAR_BLOCK 512

typedef struct {
    const uint8_t *archive;
    uint32_t len, next; /* next: offset of the next header (start at 0) */
    char name[101];     /* the current file's name, its data and size */
    const uint8_t *data;
    uint32_t size;
} efp_tar_cursor;

/* The next regular file: 1, 0 at the end of the archive, -1 when malformed. */
int efp_tar_next(efp_tar_cursor *t);

#endif
