/* Board layer for QEMU's mps2-an386 (Cortex-M4F at 25 MHz in QEMU's model).
 *
 *   UART   UART0 (CMSDK APB UART at 0x40004000, RX IRQ 0): RX interrupt into a ring buffer, TX polled.
 *   time   TIMER0 (CMSDK APB timer at 0x40000000, IRQ 8) reloading every 1 ms at 25 MHz; the ISR
 *          adds 1000 us, reads interpolate from the counter.
 *   idle   WFI (woken by a UART byte or the 1 ms tick).
 *   flash  NOR-flash emulation in PSRAM (0x21000000, see link.ld): not part of the ELF image, so it
 *          keeps its contents across efp_board_reset() (QEMU reloads only the ELF segments on a system
 *          reset). It is filled with 0xFF on the first boot of a QEMU process (a fresh chip).
 *   reset  SCB->AIRCR SYSRESETREQ (do not run QEMU with -no-reboot: it would exit instead). The RX
 *          ring is kept in PSRAM too, so bytes received around the reset reach the next boot.
 *   sensor UART1 (0x40005000, RX IRQ 2; QEMU's second -serial): the sensor link of docs/sensors.md,
 *          asked for windows with polled TX, answered into a ring by the RX interrupt; with no second
 *          serial, no window ever comes. Left out of builds without the sensor loop (EFP_SENSOR_LOOP 0).
 */
#include <string.h>

#include "board.h"
#include "config.h"
#include "emulated_flash.h"
#include "sensor_link.h"

const char efp_board_name[] = "qemu-m4";

#define REG(addr) (*(volatile uint32_t *)(addr))

/* CMSDK APB UART0 (the protocol) and UART1 (the sensor) */
#define UART0_BASE        0x40004000u
#define UART1_BASE        0x40005000u
#define UART_DATA         REG(UART0_BASE + 0x00)
#define UART_STATE        REG(UART0_BASE + 0x04)
#define UART_CTRL         REG(UART0_BASE + 0x08)
#define UART_INTSTATUS    REG(UART0_BASE + 0x0C) /* write 1 to clear */
#define UART_BAUDDIV      REG(UART0_BASE + 0x10)
#define UART1_DATA        REG(UART1_BASE + 0x00)
#define UART1_STATE       REG(UART1_BASE + 0x04)
#define UART1_CTRL        REG(UART1_BASE + 0x08)
#define UART1_INTSTATUS   REG(UART1_BASE + 0x0C)
#define UART1_BAUDDIV     REG(UART1_BASE + 0x10)
#define UART1RX_IRQn      2
#define UART_STATE_TXFULL 0x1u
#define UART_STATE_RXFULL 0x2u
#define UART_CTRL_TXEN    0x1u
#define UART_CTRL_RXEN    0x2u
#define UART_CTRL_RXINTEN 0x8u
#define UART_INT_RX       0x2u
#define UART0RX_IRQn      0

/* CMSDK APB TIMER0 */
#define TIMER0_BASE      0x40000000u
#define TIMER_CTRL       REG(TIMER0_BASE + 0x00)
#define TIMER_VALUE      REG(TIMER0_BASE + 0x04)
#define TIMER_RELOAD     REG(TIMER0_BASE + 0x08)
#define TIMER_INTSTATUS  REG(TIMER0_BASE + 0x0C) /* write 1 to clear */
#define TIMER_CTRL_EN    0x1u
#define TIMER_CTRL_IRQEN 0x8u
#define TIMER0_IRQn      8

#define NVIC_ISER0  REG(0xE000E100u)
#define NVIC_ISPR0  REG(0xE000E200u)
#define NVIC_IPR(n) (*(volatile uint8_t *)(0xE000E400u + (n)))
#define SCB_AIRCR   REG(0xE000ED0Cu)

#define SYSCLK_HZ    25000000u
#define TICKS_PER_US (SYSCLK_HZ / 1000000u)
#ifndef BOARD_TICK_US
#define BOARD_TICK_US 1000u /* timer interrupt period */
#endif
#define TICK_US     BOARD_TICK_US
#define TICK_RELOAD (TICK_US * TICKS_PER_US - 1u)
#define BAUD        115200u /* QEMU ignores the rate, but BAUDDIV must be >= 16 */

#ifndef BOARD_UART_RX_BUF
#define BOARD_UART_RX_BUF 512u /* power of two */
#endif

static inline uint32_t irq_save(void)
{
    uint32_t primask;
    __asm volatile("mrs %0, primask\n\tcpsid i" : "=r"(primask)::"memory");
    return primask;
}

static inline void irq_restore(uint32_t primask) { __asm volatile("msr primask, %0" ::"r"(primask) : "memory"); }

/* ---- UART ---- */

/* The RX ring lives in PSRAM next to the flash emulation (see link.ld), not in .bss: bytes the host
 * sends while the firmware resets are kept for the next boot. QEMU handles a reset request in its
 * main loop, where the pty may deliver one more byte first; with the ring in .bss that byte (often
 * the first of the host's next request) would be lost. */
struct rx_ring {
    uint32_t magic;
    volatile uint32_t head;    /* written by the ISR */
    volatile uint32_t tail;    /* written by efp_board_uart_read */
    volatile uint32_t stalled; /* ring was full: RX interrupt off, the byte waits in the UART */
    volatile uint8_t buf[BOARD_UART_RX_BUF];
};
extern uint8_t __efp_flash_state[];
#define RX       ((struct rx_ring *)(__efp_flash_state + 64))
#define RX_MAGIC 0x52585247u /* "GRXR" */
typedef char rx_ring_fits_state_block
    [(64 + sizeof(struct rx_ring) <= 4096 && (BOARD_UART_RX_BUF & (BOARD_UART_RX_BUF - 1u)) == 0) ? 1 : -1];

void UART0RX_IRQHandler(void)
{
    UART_INTSTATUS = UART_INT_RX; /* clear first: a byte arriving during the drain re-raises it */
    while (UART_STATE & UART_STATE_RXFULL) {
        uint32_t h = RX->head;
        uint32_t next = (h + 1u) & (BOARD_UART_RX_BUF - 1u);
        if (next == RX->tail) {
            /* Ring full: leave the byte in the UART (in QEMU this stops the host side until the
             * firmware reads; on real hardware the next byte would overrun). */
            UART_CTRL &= ~UART_CTRL_RXINTEN;
            RX->stalled = 1;
            return;
        }
        RX->buf[h] = (uint8_t)UART_DATA;
        RX->head = next;
    }
}

size_t efp_board_uart_read(uint8_t *buf, size_t max)
{
    size_t n = 0;
    uint32_t t = RX->tail;
    uint32_t h = RX->head;
    while (n < max && t != h) {
        buf[n++] = RX->buf[t];
        t = (t + 1u) & (BOARD_UART_RX_BUF - 1u);
    }
    RX->tail = t;
    if (RX->stalled && n > 0) {
        uint32_t pm = irq_save();
        RX->stalled = 0;
        UART_CTRL |= UART_CTRL_RXINTEN;
        NVIC_ISPR0 = 1u << UART0RX_IRQn; /* drain what waits in the UART */
        irq_restore(pm);
    }
    return n;
}

void efp_board_uart_write(const uint8_t *buf, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        while (UART_STATE & UART_STATE_TXFULL) {
        }
        UART_DATA = buf[i];
    }
}

/* ---- sensor: UART1 ---- */
#if EFP_SENSOR_LOOP

#define SENSOR_RX_BUF 512u /* power of two */
static volatile uint8_t sensor_ring[SENSOR_RX_BUF];
static volatile uint32_t sensor_head, sensor_tail, sensor_stalled;

void UART1RX_IRQHandler(void)
{
    UART1_INTSTATUS = UART_INT_RX;
    while (UART1_STATE & UART_STATE_RXFULL) {
        uint32_t next = (sensor_head + 1u) & (SENSOR_RX_BUF - 1u);
        if (next == sensor_tail) { /* full: the byte waits in the UART, QEMU holds the rest */
            UART1_CTRL &= ~UART_CTRL_RXINTEN;
            sensor_stalled = 1;
            return;
        }
        sensor_ring[sensor_head] = (uint8_t)UART1_DATA;
        sensor_head = next;
    }
}

int efp_board_sensor_read(float *window, uint32_t count)
{
    static efp_sensor_link link;
    int done = 0;
    uint32_t t = sensor_tail;
    if (efp_sensor_link_ask(&link, window, count)) {
        while (UART1_STATE & UART_STATE_TXFULL) {
        }
        UART1_DATA = EFP_SENSOR_ASK;
    }
    while (!done && t != sensor_head) {
        done = efp_sensor_link_feed(&link, sensor_ring[t], window, count);
        t = (t + 1u) & (SENSOR_RX_BUF - 1u);
    }
    sensor_tail = t;
    if (sensor_stalled) {
        uint32_t pm = irq_save();
        sensor_stalled = 0;
        UART1_CTRL |= UART_CTRL_RXINTEN;
        NVIC_ISPR0 = 1u << UART1RX_IRQn;
        irq_restore(pm);
    }
    return done;
}
#endif

/* ---- time ---- */

static volatile uint32_t tick_base_us;

void TIMER0_IRQHandler(void)
{
    TIMER_INTSTATUS = 1u;
    tick_base_us += TICK_US;
}

uint32_t efp_board_time_us(void)
{
    /* A period starts when the counter reaches 0 and raises the interrupt; it then stays at 0 for
     * one tick (much longer than a cycle under QEMU -icount) and reloads with TICK_RELOAD. */
    uint32_t pm = irq_save();
    uint32_t base = tick_base_us;
    uint32_t v = TIMER_VALUE;
    if (TIMER_INTSTATUS & 1u) { /* a period ended and its ISR has not run yet */
        base += TICK_US;
        v = TIMER_VALUE;
    }
    irq_restore(pm);
    uint32_t elapsed = (v == 0 || v > TICK_RELOAD) ? 0 : TICK_RELOAD + 1u - v;
    return base + elapsed / TICKS_PER_US;
}

void efp_board_idle(void)
{
    /* With interrupts masked, WFI still wakes on a pending one; checking the ring in between closes
     * the window where a byte lands after the caller's read and before the WFI. */
    uint32_t pm = irq_save();
    if (RX->head == RX->tail) {
        __asm volatile("dsb\n\twfi" ::: "memory");
    }
    irq_restore(pm);
}

/* ---- flash emulation ---- */

extern uint8_t __efp_flash_start[];
extern uint8_t __efp_flash_size[]; /* linker symbols: their addresses are the values */
extern uint8_t __efp_flash_page[];

#define FLASH_BASE  ((uint8_t *)__efp_flash_start)
#define FLASH_SIZE  ((uint32_t)(uintptr_t)__efp_flash_size)
#define FLASH_PAGE  ((uint32_t)(uintptr_t)__efp_flash_page)
#define FLASH_STATE ((volatile uint32_t *)__efp_flash_state)
#define FLASH_MAGIC 0x45465046u /* "EFPF": the region was erased once in this QEMU process */

uint32_t efp_board_flash_size(void) { return FLASH_SIZE; }
uint32_t efp_board_flash_page(void) { return FLASH_PAGE; }
const uint8_t *efp_board_flash_map(void) { return FLASH_BASE; }

static efp_emulated_flash nor(void)
{
    efp_emulated_flash f = {FLASH_BASE, FLASH_SIZE, FLASH_PAGE};
    return f;
}

int efp_board_flash_erase(uint32_t offset, uint32_t len)
{
    efp_emulated_flash f = nor();
    int status = efp_emulated_flash_erase(&f, offset, len);
    __asm volatile("dsb" ::: "memory");
    return status;
}

int efp_board_flash_program(uint32_t offset, const uint8_t *data, uint32_t len)
{
    efp_emulated_flash f = nor();
    int status = efp_emulated_flash_program(&f, offset, data, len);
    __asm volatile("dsb" ::: "memory");
    return status;
}

/* ---- init, reset ---- */

void efp_board_init(void)
{
    /* A fresh QEMU process starts with zeroed RAM; a chip comes erased. The marker lives outside
     * the flash region, in PSRAM, and survives efp_board_reset() like the flash does. */
    if (FLASH_STATE[0] != FLASH_MAGIC || FLASH_STATE[1] != FLASH_SIZE) {
        memset(FLASH_BASE, 0xFF, FLASH_SIZE);
        FLASH_STATE[1] = FLASH_SIZE;
        FLASH_STATE[0] = FLASH_MAGIC;
    }

    if (RX->magic != RX_MAGIC) { /* first boot; after efp_board_reset() unread bytes are kept */
        RX->head = RX->tail = 0;
        RX->magic = RX_MAGIC;
    }
    RX->stalled = 0; /* the reset emptied the UART itself */
    tick_base_us = 0;

    TIMER_CTRL = 0;
    TIMER_RELOAD = TICK_RELOAD;
    TIMER_VALUE = TICK_RELOAD;
    TIMER_INTSTATUS = 1u;
    NVIC_IPR(TIMER0_IRQn) = 0x40;
    NVIC_IPR(UART0RX_IRQn) = 0x40;
    NVIC_ISER0 = (1u << TIMER0_IRQn);
    TIMER_CTRL = TIMER_CTRL_EN | TIMER_CTRL_IRQEN;

    UART_CTRL = 0;
    UART_BAUDDIV = SYSCLK_HZ / BAUD;
    UART_INTSTATUS = 0xFu;
    UART_STATE = 0xCu; /* clear overrun flags */
    UART_CTRL = UART_CTRL_TXEN | UART_CTRL_RXEN | UART_CTRL_RXINTEN;
    NVIC_ISER0 = (1u << UART0RX_IRQn);
    if (UART_STATE & UART_STATE_RXFULL) {
        NVIC_ISPR0 = 1u << UART0RX_IRQn; /* a byte that arrived before RXINTEN */
    }

#if EFP_SENSOR_LOOP
    sensor_head = sensor_tail = sensor_stalled = 0;
    UART1_CTRL = 0;
    UART1_BAUDDIV = SYSCLK_HZ / BAUD;
    UART1_INTSTATUS = 0xFu;
    UART1_STATE = 0xCu;
    UART1_CTRL = UART_CTRL_TXEN | UART_CTRL_RXEN | UART_CTRL_RXINTEN;
    NVIC_IPR(UART1RX_IRQn) = 0x40;
    NVIC_ISER0 = (1u << UART1RX_IRQn);
    NVIC_ISPR0 = 1u << UART1RX_IRQn; /* drain what came before */
#endif

    __asm volatile("cpsie i" ::: "memory");
}

void efp_board_reset(void)
{
    while (UART_STATE & UART_STATE_TXFULL) { /* finish the last byte */
    }
    /* Give the host 2 ms to react to the last answer: what it sends meanwhile lands in the RX ring,
     * which survives the reset. A byte QEMU delivers after the reset request but before the reset
     * would only reach the UART's one-byte buffer, which the reset clears. */
    uint32_t t0 = efp_board_time_us();
    while (efp_board_time_us() - t0 < 2000u) {
    }
    __asm volatile("dsb" ::: "memory");
    SCB_AIRCR = (0x5FAu << 16) | (1u << 2); /* VECTKEY | SYSRESETREQ */
    __asm volatile("dsb" ::: "memory");
    for (;;) {
    }
}
