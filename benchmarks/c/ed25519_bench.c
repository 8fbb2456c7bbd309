/* Instructions of a bundle signature check on the emulated Cortex-M4 (benchmarks/signing.py): under QEMU
 * with -icount shift=0 one instruction takes one virtual nanosecond. vector.h (written by the benchmark)
 * holds a real signature, its public key and the manifest it signs. */
#include <stdint.h>
#include <string.h>

#include "board.h"
#include "efp_contract.h"
#include "signature.h"
#include "text.h"
#include "vector.h"

static char line[160];

static void field(efp_text *t, const char *name, uint32_t value)
{
    efp_text_str(t, name);
    efp_text_uint(t, value);
}

int main(void)
{
    efp_board_init();
    uint64_t version = 0;
    uint8_t flipped[EFP_SIGNATURE_BYTES];
    memcpy(flipped, SIGNATURE, sizeof flipped);
    flipped[sizeof flipped - 1] ^= 1;
    uint32_t t0 = efp_board_time_us();
    int accepted = efp_signature_check(SIGNATURE, MANIFEST, sizeof MANIFEST, KEY, &version) == EFP_SIGNATURE_OK;
    uint32_t t1 = efp_board_time_us();
    int refused = efp_signature_check(flipped, MANIFEST, sizeof MANIFEST, KEY, &version) == EFP_SIGNATURE_INVALID;
    uint32_t t2 = efp_board_time_us();
    efp_text t;
    efp_text_init(&t, line, sizeof line);
    field(&t, "accepted ", (uint32_t)accepted);
    field(&t, " accept_us ", t1 - t0);
    field(&t, " refused ", (uint32_t)refused);
    field(&t, " refuse_us ", t2 - t1);
    efp_text_str(&t, " done\n");
    efp_board_uart_write((const uint8_t *)line, t.len);
    for (;;) {
        efp_board_idle();
    }
}
