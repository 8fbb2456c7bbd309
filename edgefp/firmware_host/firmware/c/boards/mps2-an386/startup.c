/* Startup for QEMU mps2-an386 (Cortex-M4F): vector table, reset handler, default handlers.
 * The reset handler enables the FPU before any C code that might touch it, copies .data from its
 * load image, zeroes .bss, runs constructors and calls main(). */
#include <stdint.h>

extern uint32_t __stack_top;
extern uint32_t __data_load, __data_start, __data_end;
extern uint32_t __bss_start, __bss_end;
extern void (*__preinit_array_start[])(void);
extern void (*__preinit_array_end[])(void);
extern void (*__init_array_start[])(void);
extern void (*__init_array_end[])(void);

int main(void);
void Reset_Handler(void);
void Default_Handler(void);
void HardFault_Handler(void);

/* Last fault, for a debugger (gdb -ex 'p efp_board_fault_info'): stacked r0-r3, r12, lr, pc, xpsr, then
 * CFSR, HFSR, MMFAR, BFAR. */
volatile uint32_t efp_board_fault_info[12];

#define WEAK_DEFAULT __attribute__((weak, alias("Default_Handler")))
void NMI_Handler(void) WEAK_DEFAULT;
void MemManage_Handler(void) WEAK_DEFAULT;
void BusFault_Handler(void) WEAK_DEFAULT;
void UsageFault_Handler(void) WEAK_DEFAULT;
void SVC_Handler(void) WEAK_DEFAULT;
void DebugMon_Handler(void) WEAK_DEFAULT;
void PendSV_Handler(void) WEAK_DEFAULT;
void SysTick_Handler(void) WEAK_DEFAULT;
/* AN385/AN386 external interrupts (QEMU models 32). */
void UART0RX_IRQHandler(void) WEAK_DEFAULT;   /* 0 */
void UART0TX_IRQHandler(void) WEAK_DEFAULT;   /* 1 */
void UART1RX_IRQHandler(void) WEAK_DEFAULT;   /* 2 */
void UART1TX_IRQHandler(void) WEAK_DEFAULT;   /* 3 */
void UART2RX_IRQHandler(void) WEAK_DEFAULT;   /* 4 */
void UART2TX_IRQHandler(void) WEAK_DEFAULT;   /* 5 */
void GPIO0ALL_IRQHandler(void) WEAK_DEFAULT;  /* 6 */
void GPIO1ALL_IRQHandler(void) WEAK_DEFAULT;  /* 7 */
void TIMER0_IRQHandler(void) WEAK_DEFAULT;    /* 8 */
void TIMER1_IRQHandler(void) WEAK_DEFAULT;    /* 9 */
void DUALTIMER_IRQHandler(void) WEAK_DEFAULT; /* 10 */
void SPI_IRQHandler(void) WEAK_DEFAULT;       /* 11 */
void UARTOVF_IRQHandler(void) WEAK_DEFAULT;   /* 12 */
void ETHERNET_IRQHandler(void) WEAK_DEFAULT;  /* 13 */

typedef void (*vector_t)(void);

__attribute__((section(".isr_vector"), used)) const vector_t efp_board_vectors[16 + 32] = {
    (vector_t)(uintptr_t)&__stack_top,
    Reset_Handler,
    NMI_Handler,
    HardFault_Handler,
    MemManage_Handler,
    BusFault_Handler,
    UsageFault_Handler,
    0,
    0,
    0,
    0,
    SVC_Handler,
    DebugMon_Handler,
    0,
    PendSV_Handler,
    SysTick_Handler,
    UART0RX_IRQHandler,
    UART0TX_IRQHandler,
    UART1RX_IRQHandler,
    UART1TX_IRQHandler,
    UART2RX_IRQHandler,
    UART2TX_IRQHandler,
    GPIO0ALL_IRQHandler,
    GPIO1ALL_IRQHandler,
    TIMER0_IRQHandler,
    TIMER1_IRQHandler,
    DUALTIMER_IRQHandler,
    SPI_IRQHandler,
    UARTOVF_IRQHandler,
    ETHERNET_IRQHandler,
    Default_Handler,
    Default_Handler, /* 14, 15 */
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler, /* 16..31 */
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
    Default_Handler,
};

#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)
#define SCB_VTOR  (*(volatile uint32_t *)0xE000ED08u)

void Reset_Handler(void)
{
    /* CP10 and CP11 full access: must precede any floating-point instruction. */
    SCB_CPACR |= (0xFu << 20);
    __asm volatile("dsb\n\tisb" ::: "memory");
    SCB_VTOR = (uint32_t)(uintptr_t)efp_board_vectors;

    /* The linker's symbols bound one region each: comparing their addresses is what they are for. */
    uint32_t *src = &__data_load;
    uint32_t *dst = &__data_start;
    /* cppcheck-suppress comparePointers */
    while (dst < &__data_end) {
        *dst++ = *src++;
    }
    /* cppcheck-suppress comparePointers */
    for (dst = &__bss_start; dst < &__bss_end;) {
        *dst++ = 0;
    }

    for (void (**f)(void) = __preinit_array_start; f < __preinit_array_end; f++) {
        (*f)();
    }
    for (void (**f)(void) = __init_array_start; f < __init_array_end; f++) {
        (*f)();
    }

    (void)main();
    for (;;) {
        __asm volatile("wfi");
    }
}

void Default_Handler(void)
{
    for (;;) {
    }
}

/* Saves the stacked frame and fault status registers, then stops. */
__attribute__((used)) void efp_board_hardfault_c(uint32_t *frame)
{
    for (int i = 0; i < 8; i++) {
        efp_board_fault_info[i] = frame[i];
    }
    efp_board_fault_info[8] = *(volatile uint32_t *)0xE000ED28u;  /* CFSR */
    efp_board_fault_info[9] = *(volatile uint32_t *)0xE000ED2Cu;  /* HFSR */
    efp_board_fault_info[10] = *(volatile uint32_t *)0xE000ED34u; /* MMFAR */
    efp_board_fault_info[11] = *(volatile uint32_t *)0xE000ED38u; /* BFAR */
    for (;;) {
    }
}

__attribute__((naked)) void HardFault_Handler(void)
{
    __asm volatile("tst lr, #4\n\t"
                   "ite eq\n\t"
                   "mrseq r0, msp\n\t"
                   "mrsne r0, psp\n\t"
                   "b efp_board_hardfault_c\n\t");
}
