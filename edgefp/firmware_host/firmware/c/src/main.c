/* edgefp firmware: the device protocol on the board's UART, bundles in its flash, and the board's sensor
 * classified on its own, with or without a host. */
#include "app.h"
#include "board.h"

int main(void)
{
    board_init();
    app_init();
    for (;;) {
        if (!app_poll() && !app_sense()) {
            board_idle();
        }
    }
}
