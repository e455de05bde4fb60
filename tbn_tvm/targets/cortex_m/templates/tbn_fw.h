/* tbn-tvm firmware: declarations shared by the startup code and the two firmware mains.
 *
 * The model library (model.h + its .c files) knows nothing of this file; the firmware wraps it.
 */
#ifndef TBN_FW_H
#define TBN_FW_H

#include <stdint.h>

#define TBN_FW_MAGIC 0x464E4254u /* "TBNF" little-endian */
#define TBN_FW_VERSION 1u
#define TBN_FW_MODE_SEMIHOST 1u
#define TBN_FW_MODE_UART 2u

/* Describes the firmware to the host tools, which read it from the ELF (symbol tbn_fw_info). */
struct tbn_fw_info {
    uint32_t magic;
    uint32_t version;
    uint32_t mode;
    uint32_t input_size;  /* TBN_MODEL_INPUT_SIZE  */
    uint32_t output_size; /* TBN_MODEL_OUTPUT_SIZE */
    uint32_t arena_bytes; /* TBN_MODEL_ARENA_BYTES */
};
extern const struct tbn_fw_info tbn_fw_info;

/* Calls tbn_model_run (measure.S).  The QEMU instruction counter counts from the first
 * instruction of tbn_model_run up to the label tbn_model_returned right after the call, so a
 * count covers exactly the instructions tbn_model_run and its callees executed. */
int tbn_run_measured(const float *in, float *out);

/* Bytes of stack used since reset (the startup code paints the stack with a pattern). */
uint32_t tbn_stack_peak_bytes(void);

/* Defined by each main: report a CPU fault (frame = the stacked r0-r3, r12, lr, pc, xpsr) and
 * stop; leave the firmware with a status. */
void tbn_fault_report(const uint32_t *frame, uint32_t ipsr) __attribute__((noreturn));
void tbn_platform_exit(int status) __attribute__((noreturn));

/* Cortex-M system control registers used for fault reports. */
#define TBN_SCB_CFSR (*(volatile uint32_t *)0xE000ED28u)
#define TBN_SCB_HFSR (*(volatile uint32_t *)0xE000ED2Cu)
#define TBN_SCB_MMFAR (*(volatile uint32_t *)0xE000ED34u)
#define TBN_SCB_BFAR (*(volatile uint32_t *)0xE000ED38u)

#endif /* TBN_FW_H */
