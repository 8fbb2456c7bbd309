/* edgefp firmware: the device protocol on the board's UART, bundles in its flash. */
#include "app.h"
#include "board.h"

int main(void)
{
    board_init();
    app_init();
    for (;;) {
        uint8_t chunk[64];
        size_t n = board_uart_read(chunk, sizeof chunk);
        if (n) {
            app_receive(chunk, n);
        } else {
            board_idle();
        }
    }
}
