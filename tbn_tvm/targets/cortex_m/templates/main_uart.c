/* tbn-tvm board firmware: serve the model over the UART protocol (tbn_uart.h). */
#include <stdint.h>

#include "model.h"
#include "tbn_fw.h"
#include "tbn_uart.h"

const struct tbn_fw_info tbn_fw_info = {
    TBN_FW_MAGIC, TBN_FW_VERSION, TBN_FW_MODE_UART,
    TBN_MODEL_INPUT_SIZE, TBN_MODEL_OUTPUT_SIZE, TBN_MODEL_ARENA_BYTES,
};

int main(void)
{
    tbn_uart_init();
    tbn_uart_serve();
}

void tbn_platform_exit(int status)
{
    (void)status;
    for (;;) __asm volatile("wfi");
}

void tbn_fault_report(const uint32_t *frame, uint32_t ipsr)
{
    const uint32_t regs[7] = {ipsr, frame[6], frame[5], TBN_SCB_CFSR, TBN_SCB_HFSR, TBN_SCB_MMFAR, TBN_SCB_BFAR};
    tbn_uart_report_fault(regs);
    tbn_platform_exit(250);
}
