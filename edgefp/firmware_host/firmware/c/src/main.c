/* edgefp firmware: the device protocol on the board's UART, bundles in its flash, and the board's sensor
 * classified on its own, with or without a host. */
#include "app.h"
#include "board.h"

int main(void)
{
    efp_board_init();
    efp_app_init();
    for (;;) {
        if (!efp_app_poll() && !efp_app_sense()) {
            efp_board_idle();
        }
    }
}
