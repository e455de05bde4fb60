/* UART HAL for the ARM CMSDK APB UART (UART0 of the MPS2 boards QEMU emulates).
 * Replace this file with your board's UART driver implementing the functions of tbn_uart.h.
 * TBN_UART_BASE, TBN_CPU_HZ and TBN_UART_BAUD come from the build (-D). */
#include <stdint.h>

#include "tbn_uart.h"

#ifndef TBN_UART_BAUD
#define TBN_UART_BAUD 115200u
#endif

#define UART_REG(off) (*(volatile uint32_t *)((uintptr_t)(TBN_UART_BASE) + (off)))
#define UART_DATA UART_REG(0x00u)
#define UART_STATE UART_REG(0x04u) /* bit 0: TX buffer full, bit 1: RX buffer full */
#define UART_CTRL UART_REG(0x08u)  /* bit 0: TX enable, bit 1: RX enable */
#define UART_BAUDDIV UART_REG(0x10u)

void tbn_uart_init(void)
{
    uint32_t div = (uint32_t)(TBN_CPU_HZ) / TBN_UART_BAUD;
    UART_BAUDDIV = div < 16u ? 16u : div; /* the CMSDK UART needs a divider of at least 16 */
    UART_CTRL = 0x3u;
}

void tbn_uart_putc(uint8_t byte)
{
    while (UART_STATE & 0x1u) {
    }
    UART_DATA = byte;
}

uint8_t tbn_uart_getc(void)
{
    while (!(UART_STATE & 0x2u)) {
    }
    return (uint8_t)UART_DATA;
}
