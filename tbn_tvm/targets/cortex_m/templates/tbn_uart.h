/* tbn-tvm UART protocol, device side, and the three-function UART HAL it runs on.
 *
 * To serve a model from your own board project: compile tbn_uart_server.c with the model
 * library, implement the HAL below for your UART (115200 8N1 by default), then call
 *     tbn_uart_init(); tbn_uart_serve();
 * from main().  Optionally call tbn_uart_report_fault() from your HardFault handler.
 *
 * Frame (all integers little-endian):
 *   0xA5 0x5A | type u8 | seq u8 | length u32 | payload[length] | crc32 u32
 * crc32 is CRC-32/IEEE (zlib.crc32) over type, seq, length and payload.
 * Host -> device:  HELLO (empty), RUN (input_size float32).
 * Device -> host:  INFO {u32 protocol, u32 input_size, u32 output_size, u32 arena_bytes}
 *                  RESULT {i32 status, u32 cycles, output_size float32}
 *                  ERROR {u32 code, ASCII text}
 *                  FAULT {u32 ipsr, pc, lr, cfsr, hfsr, mmfar, bfar}
 * A reply carries the seq of the request it answers.
 */
#ifndef TBN_UART_H
#define TBN_UART_H

#include <stdint.h>

#define TBN_UART_SYNC0 0xA5u
#define TBN_UART_SYNC1 0x5Au
#define TBN_UART_PROTOCOL 1u

#define TBN_UART_HELLO 0x01u
#define TBN_UART_RUN 0x02u
#define TBN_UART_INFO 0x81u
#define TBN_UART_RESULT 0x82u
#define TBN_UART_ERROR 0xE0u
#define TBN_UART_FAULT 0xEFu

#define TBN_UART_ERR_CHECKSUM 1u
#define TBN_UART_ERR_LENGTH 2u
#define TBN_UART_ERR_TYPE 3u

/* The HAL: blocking byte I/O on the UART wired to the host. */
void tbn_uart_init(void);
void tbn_uart_putc(uint8_t byte);
uint8_t tbn_uart_getc(void);

/* Answer host requests forever. */
void tbn_uart_serve(void) __attribute__((noreturn));

/* Send a FAULT frame (regs = ipsr, pc, lr, cfsr, hfsr, mmfar, bfar); safe from a fault handler. */
void tbn_uart_report_fault(const uint32_t regs[7]);

#endif /* TBN_UART_H */
