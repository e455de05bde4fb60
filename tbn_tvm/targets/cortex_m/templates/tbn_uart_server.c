/* tbn-tvm UART protocol server (device side); see tbn_uart.h for the frame format. */
#include <stdint.h>

#include "model.h"
#include "tbn_uart.h"

/* DWT cycle counter: real cycles on a board, reads 0 under QEMU (not modelled there). */
#define TBN_DEMCR (*(volatile uint32_t *)0xE000EDFCu)
#define TBN_DWT_CTRL (*(volatile uint32_t *)0xE0001000u)
#define TBN_DWT_CYCCNT (*(volatile uint32_t *)0xE0001004u)

static float tbn_in[TBN_MODEL_INPUT_SIZE] __attribute__((aligned(8)));
static float tbn_out[TBN_MODEL_OUTPUT_SIZE] __attribute__((aligned(8)));
static uint8_t tbn_last_seq;

/* CRC-32/IEEE, bitwise (no table: a few hundred bytes less flash); zlib-compatible chaining. */
static uint32_t crc32_update(uint32_t crc, const uint8_t *p, uint32_t n)
{
    crc = ~crc;
    while (n--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++) crc = (crc >> 1) ^ (0xEDB88320u & (0u - (crc & 1u)));
    }
    return ~crc;
}

static uint32_t tx_crc;

static void tx_bytes(const void *data, uint32_t n)
{
    const uint8_t *p = data;
    tx_crc = crc32_update(tx_crc, p, n);
    while (n--) tbn_uart_putc(*p++);
}

static void tx_begin(uint8_t type, uint8_t seq, uint32_t length)
{
    const uint8_t head[6] = {type, seq, (uint8_t)length, (uint8_t)(length >> 8), (uint8_t)(length >> 16),
                             (uint8_t)(length >> 24)};
    tbn_uart_putc(TBN_UART_SYNC0);
    tbn_uart_putc(TBN_UART_SYNC1);
    tx_crc = 0;
    tx_bytes(head, sizeof head);
}

static void tx_end(void)
{
    const uint32_t crc = tx_crc;
    const uint8_t tail[4] = {(uint8_t)crc, (uint8_t)(crc >> 8), (uint8_t)(crc >> 16), (uint8_t)(crc >> 24)};
    for (int i = 0; i < 4; i++) tbn_uart_putc(tail[i]);
}

static void send_error(uint8_t seq, uint32_t code, const char *text)
{
    uint32_t len = 0;
    while (text[len]) len++;
    tx_begin(TBN_UART_ERROR, seq, 4u + len);
    tx_bytes(&code, 4);
    tx_bytes(text, len);
    tx_end();
}

static uint32_t rx_u32(uint32_t *crc)
{
    uint8_t b[4];
    for (int i = 0; i < 4; i++) b[i] = tbn_uart_getc();
    *crc = crc32_update(*crc, b, 4);
    return (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
}

/* Receive one valid frame; its payload (at most sizeof tbn_in bytes) lands in tbn_in. */
static void rx_frame(uint8_t *type, uint8_t *seq, uint32_t *length)
{
    for (;;) {
        if (tbn_uart_getc() != TBN_UART_SYNC0) continue;
        uint8_t b = tbn_uart_getc();
        while (b == TBN_UART_SYNC0) b = tbn_uart_getc();
        if (b != TBN_UART_SYNC1) continue;

        uint8_t head[2] = {tbn_uart_getc(), tbn_uart_getc()};
        uint32_t crc = crc32_update(0, head, 2);
        uint32_t len = rx_u32(&crc);
        if (len > sizeof tbn_in) {
            send_error(head[1], TBN_UART_ERR_LENGTH, "payload longer than the model input");
            continue; /* resynchronise on the next sync bytes */
        }
        uint8_t *dst = (uint8_t *)tbn_in;
        for (uint32_t i = 0; i < len; i++) dst[i] = tbn_uart_getc();
        crc = crc32_update(crc, dst, len);
        uint32_t dummy = 0;
        if (rx_u32(&dummy) != crc) {
            send_error(head[1], TBN_UART_ERR_CHECKSUM, "bad checksum");
            continue;
        }
        *type = head[0];
        *seq = head[1];
        *length = len;
        return;
    }
}

void tbn_uart_serve(void)
{
    TBN_DEMCR |= 1u << 24;   /* TRCENA: enable the DWT */
    TBN_DWT_CYCCNT = 0;
    TBN_DWT_CTRL |= 1u;      /* CYCCNTENA */
    for (;;) {
        uint8_t type, seq;
        uint32_t length;
        rx_frame(&type, &seq, &length);
        tbn_last_seq = seq;
        if (type == TBN_UART_HELLO) {
            const uint32_t info[4] = {TBN_UART_PROTOCOL, TBN_MODEL_INPUT_SIZE, TBN_MODEL_OUTPUT_SIZE,
                                      TBN_MODEL_ARENA_BYTES};
            tx_begin(TBN_UART_INFO, seq, sizeof info);
            tx_bytes(info, sizeof info);
            tx_end();
        } else if (type == TBN_UART_RUN) {
            if (length != sizeof tbn_in) {
                send_error(seq, TBN_UART_ERR_LENGTH, "RUN payload is not one input sample");
                continue;
            }
            uint32_t t0 = TBN_DWT_CYCCNT;
            int32_t status = tbn_model_run(tbn_in, tbn_out);
            uint32_t cycles = TBN_DWT_CYCCNT - t0;
            tx_begin(TBN_UART_RESULT, seq, 8u + sizeof tbn_out);
            tx_bytes(&status, 4);
            tx_bytes(&cycles, 4);
            tx_bytes(tbn_out, sizeof tbn_out);
            tx_end();
        } else {
            send_error(seq, TBN_UART_ERR_TYPE, "unknown frame type");
        }
    }
}

void tbn_uart_report_fault(const uint32_t regs[7])
{
    tx_begin(TBN_UART_FAULT, tbn_last_seq, 28u);
    tx_bytes(regs, 28u);
    tx_end();
}
