/* edgefp firmware: the device protocol on the board's UART, bundles in its flash, and the board's sensor
 * classified on its own, with or without a host. */
#include "app.h"
#include "board.h"
#include "config.h"

int main(void)
{
    efp_board_init();
    efp_app_init();
    for (;;) {
        int busy = efp_app_poll();
#if EFP_SENSOR_LOOP
        busy = busy || efp_app_sense();
#endif
        if (!busy) {
            efp_board_idle();
        }
    }
}
