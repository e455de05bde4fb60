/* tbn-tvm firmware startup for Cortex-M4/M7: vector table, FPU, .data/.bss, stack painting,
 * fault entry.  No C library start files are used (linked with -nostartfiles). */
#include <stdint.h>

#include "tbn_fw.h"

#define TBN_STACK_PATTERN 0xC0DEFACEu
#define TBN_STACK_GUARD 0x10000u /* bytes below the stack (and RAM) made inaccessible by the MPU */

/* PMSAv7 MPU registers (Cortex-M4/M7). */
#define TBN_MPU_TYPE (*(volatile uint32_t *)0xE000ED90u)
#define TBN_MPU_CTRL (*(volatile uint32_t *)0xE000ED94u)
#define TBN_MPU_RNR (*(volatile uint32_t *)0xE000ED98u)
#define TBN_MPU_RBAR (*(volatile uint32_t *)0xE000ED9Cu)
#define TBN_MPU_RASR (*(volatile uint32_t *)0xE000EDA0u)

/* Symbols defined by link.ld. */
extern uint32_t __data_load[], __data_start[], __data_end[];
extern uint32_t __bss_start[], __bss_end[];
extern uint32_t __stack_bottom[], __stack_top[];

int main(void);
void tbn_reset_handler(void) __attribute__((noreturn));
void tbn_fault_entry(void);

typedef void (*tbn_vector_t)(void);

/* The 16 Cortex-M system exception vectors; no interrupt is ever enabled. */
__attribute__((section(".isr_vector"), used)) const tbn_vector_t tbn_vectors[16] = {
    (tbn_vector_t)(uintptr_t)__stack_top, /* initial main stack pointer */
    tbn_reset_handler,
    tbn_fault_entry, /* NMI */
    tbn_fault_entry, /* HardFault */
    tbn_fault_entry, /* MemManage */
    tbn_fault_entry, /* BusFault */
    tbn_fault_entry, /* UsageFault */
    0, 0, 0, 0,
    tbn_fault_entry, /* SVCall */
    tbn_fault_entry, /* DebugMonitor */
    0,
    tbn_fault_entry, /* PendSV */
    tbn_fault_entry, /* SysTick */
};

void tbn_reset_handler(void)
{
#if defined(__ARM_FP)
    /* Full access to coprocessors 10 and 11 (the FPU) before any float instruction runs. */
    *(volatile uint32_t *)0xE000ED88u |= 0xFu << 20;
    __asm volatile("dsb\n\tisb" ::: "memory");
#endif
    /* volatile: keep these loops from becoming library calls before memory is set up. */
    volatile uint32_t *dst = __data_start;
    const uint32_t *src = __data_load;
    while (dst < __data_end) *dst++ = *src++;
    for (dst = __bss_start; dst < __bss_end; dst++) *dst = 0;

    /* Paint the unused stack so tbn_stack_peak_bytes() can find the high-water mark. */
    uint32_t sp;
    __asm volatile("mov %0, sp" : "=r"(sp));
    for (dst = __stack_bottom; (uintptr_t)dst < sp - 64u; dst++) *dst = TBN_STACK_PATTERN;

    /* Stack guard.  The stack sits at the bottom of RAM, so an overflow writes below RAM: make
     * the 64 KiB there a no-access MPU region, and an overflow faults at once (even with a
     * large stack frame) instead of going unnoticed where that memory ignores writes (QEMU). */
    uint32_t guard = (uint32_t)(uintptr_t)__stack_bottom - TBN_STACK_GUARD;
    if (((TBN_MPU_TYPE >> 8) & 0xFFu) && (guard & (TBN_STACK_GUARD - 1u)) == 0u) {
        TBN_MPU_RNR = 0;
        TBN_MPU_RBAR = guard;
        TBN_MPU_RASR = (1u << 28) | (15u << 1) | 1u; /* XN, no access, 2^(15+1) bytes, enabled */
        TBN_MPU_CTRL = (1u << 2) | 1u;               /* default memory map elsewhere, MPU on */
        __asm volatile("dsb\n\tisb" ::: "memory");
    }

    tbn_platform_exit(main());
}

uint32_t tbn_stack_peak_bytes(void)
{
    const uint32_t *p = __stack_bottom;
    while (p < __stack_top && *p == TBN_STACK_PATTERN) p++;
    return (uint32_t)((uintptr_t)__stack_top - (uintptr_t)p);
}

/* Every fault and unexpected exception: pass the stacked frame and the exception number on. */
__attribute__((naked)) void tbn_fault_entry(void)
{
    __asm volatile(
        "tst lr, #4\n\t"
        "ite eq\n\t"
        "mrseq r0, msp\n\t"
        "mrsne r0, psp\n\t"
        "mrs r1, ipsr\n\t"
        "b tbn_fault_report\n\t");
}
