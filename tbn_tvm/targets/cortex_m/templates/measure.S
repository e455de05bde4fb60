/* tbn_run_measured(in, out): call tbn_model_run and return its status.
 *
 * The label tbn_model_returned is the first instruction after the call.  The QEMU counter counts
 * instructions from tbn_model_run's entry to this label, i.e. exactly what tbn_model_run and its
 * callees execute, including its final return instruction, and nothing of this wrapper. */
    .syntax unified
    .thumb
    .section .text.tbn_run_measured, "ax", %progbits
    .align 2
    .global tbn_run_measured
    .type tbn_run_measured, %function
    .thumb_func
tbn_run_measured:
    push {r4, lr}
    bl tbn_model_run
    .global tbn_model_returned
tbn_model_returned:
    pop {r4, pc}
    .size tbn_run_measured, . - tbn_run_measured
