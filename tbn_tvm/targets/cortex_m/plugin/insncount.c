/* tbn-tvm QEMU TCG plugin: exact guest instruction counts of every model inference.
 *
 *   qemu-system-arm ... -plugin libtbn_insncount.so,start=0x1c8,end=0x2f4,out=insns.txt[,kernels=k.txt]
 *
 * Every executed guest instruction adds 1 to a counter (an inline op, no helper call).  At the
 * instruction at `start` (the first of tbn_model_run) the counter is noted; at `end` (the label
 * after the call returns) the difference is recorded as one inference.  Both notes see the
 * counter at the same point relative to their own instruction, so a recorded count is the
 * number of instructions executed from `start` (included) to `end` (excluded).
 *
 * Output file, written when QEMU exits (semihosting exit calls exit(), hence also atexit()):
 *   executed <all guest instructions>
 *   runs <number of completed inferences>
 *   unfinished <1 if an inference started but did not return, else 0>
 *   then one line per inference: its instruction count;
 *   with kernels=: one line "kernel <index> <calls> <instructions>" per listed kernel.
 *
 * Per-kernel counts (kernels=FILE): FILE's first line is "<lo> <hi>", the address range of
 * tbn_model_run; each further line the entry address of one kernel.  Entering a listed kernel
 * from tbn_model_run notes the counter (entering another listed address before the call returns
 * does not: gcc's identical-code folding turns a kernel into a stub that branches into another
 * kernel's body, and the call belongs to the kernel it was made to); the next instruction
 * executed inside [lo, hi) (the caller, right after the call returned) closes it.  A kernel's
 * count is thus every instruction from its entry (included) through its return, callees
 * included, whether it returns itself or tail-calls a helper.
 *
 * Per call site: the calls of one inference are numbered in the order they return (call 0,
 * 1, ...), and each call's line adds up, over the inferences, the instructions from the end of
 * the previous call (or the start of the inference) to the end of this one -- the driver's
 * set-up of the call, then the kernel -- and those of the kernel alone.  With the "tail" line
 * (the instructions after the last call up to the end of the inference), the calls' totals add
 * up to exactly the inferences' counts.
 *   call <index> <kernel index> <calls> <instructions with set-up> <kernel instructions>
 *        <M4 cycles with set-up> <M4 kernel cycles> <M7 cycles with set-up> <M7 kernel cycles>
 *   tail <instructions> <M4 cycles> <M7 cycles>
 *
 * Estimated cycles (cycles.h): every instruction also adds its estimated Cortex-M4 and
 * Cortex-M7 cycles (from its encoding and the instruction before it in its translation block)
 * to two more counters, inline like the instruction count; a translation block's entry adds
 * the taken-branch penalty when the block before it ended in a branch and this block does not
 * start right after it (the branch was taken).  Per inference:
 *   cycles <M4 cycles> <M7 cycles>
 * one line per inference, in the order of the instruction counts.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cycles.h"
#include "tbn_qemu_plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static uint64_t start_addr, end_addr;
static uint64_t executed_at_start;

/* estimated cycles: [0] Cortex-M4, [1] Cortex-M7 */
static uint64_t cycles[2];
static uint64_t cycles_at_start[2], cycles_at_kernel[2], cycles_at_site[2], tail_cycles[2];
static uint64_t (*run_cycles)[2];

struct tb_info {
    uint64_t start;       /* the block's first address */
    uint64_t fallthrough; /* the address after the block's last instruction */
    int ends_in_branch;
};
static const struct tb_info *last_tb;
static int inside;
static uint64_t *runs;
static size_t n_runs, cap_runs;
static char out_path[4096];
static int reported;

#define MAX_KERNELS 4096
static uint64_t kernel_addr[MAX_KERNELS];
static uint64_t kernel_calls[MAX_KERNELS], kernel_insns[MAX_KERNELS];
static size_t n_kernels;
static uint64_t run_lo, run_hi;
static long current_kernel = -1;
static uint64_t executed_at_kernel;

/* per call site: index within the inference, totals over the inferences */
struct call_site {
    long kernel;
    uint64_t calls, insns, kernel_insns;
    uint64_t cycles[2], kernel_cycles[2];
};
static struct call_site *sites;
static size_t n_sites, cap_sites, call_index;
static uint64_t executed_at_site, tail_insns;

static void on_kernel(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    if (current_kernel >= 0) return; /* inside a call already: a folded stub's branch */
    current_kernel = (long)(uintptr_t)udata;
    executed_at_kernel = executed;
    cycles_at_kernel[0] = cycles[0];
    cycles_at_kernel[1] = cycles[1];
}

static int grow_sites(size_t need)
{
    if (need <= cap_sites) return 0;
    size_t cap = cap_sites ? 2 * cap_sites : 256;
    while (cap < need) cap *= 2;
    struct call_site *grown = realloc(sites, cap * sizeof *sites);
    if (!grown) return -1;
    memset(grown + cap_sites, 0, (cap - cap_sites) * sizeof *grown);
    sites = grown;
    cap_sites = cap;
    return 0;
}

static void on_caller(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    if (current_kernel < 0) return;
    kernel_calls[current_kernel] += 1;
    kernel_insns[current_kernel] += executed - executed_at_kernel;
    if (grow_sites(call_index + 1) == 0) {
        struct call_site *s = &sites[call_index];
        if (s->calls == 0) s->kernel = current_kernel;
        else if (s->kernel != current_kernel) s->kernel = -1; /* not the same call every time */
        s->calls += 1;
        s->insns += executed - executed_at_site;
        s->kernel_insns += executed - executed_at_kernel;
        for (int c = 0; c < 2; c++) {
            s->cycles[c] += cycles[c] - cycles_at_site[c];
            s->kernel_cycles[c] += cycles[c] - cycles_at_kernel[c];
        }
        if (call_index + 1 > n_sites) n_sites = call_index + 1;
    }
    call_index += 1;
    executed_at_site = executed;
    cycles_at_site[0] = cycles[0];
    cycles_at_site[1] = cycles[1];
    current_kernel = -1;
}

static int read_kernels(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    unsigned long long lo, hi, a;
    if (fscanf(f, "%llx %llx", &lo, &hi) != 2) {
        fclose(f);
        return -1;
    }
    run_lo = lo;
    run_hi = hi;
    while (n_kernels < MAX_KERNELS && fscanf(f, "%llx", &a) == 1) kernel_addr[n_kernels++] = a;
    fclose(f);
    return 0;
}

static void on_start(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    executed_at_start = executed;
    inside = 1;
    call_index = 0;
    executed_at_site = executed;
    current_kernel = -1;
    for (int c = 0; c < 2; c++) cycles_at_start[c] = cycles_at_site[c] = cycles[c];
}

static void on_end(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    if (!inside) return;
    inside = 0;
    if (n_runs == cap_runs) {
        size_t cap = cap_runs ? 2 * cap_runs : 1024;
        uint64_t *grown = realloc(runs, cap * sizeof *runs);
        if (!grown) return;
        runs = grown;
        uint64_t(*grown_cycles)[2] = realloc(run_cycles, cap * sizeof *run_cycles);
        if (!grown_cycles) return;
        run_cycles = grown_cycles;
        cap_runs = cap;
    }
    for (int c = 0; c < 2; c++) run_cycles[n_runs][c] = cycles[c] - cycles_at_start[c];
    runs[n_runs++] = executed - executed_at_start;
    if (n_kernels) {
        tail_insns += executed - executed_at_site;
        for (int c = 0; c < 2; c++) tail_cycles[c] += cycles[c] - cycles_at_site[c];
    }
}

static void on_tb(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    const struct tb_info *tb = udata;
    /* the block before ended in a branch and execution did not fall through: it was taken */
    if (last_tb && last_tb->ends_in_branch && last_tb->fallthrough != tb->start) {
        cycles[0] += TBN_M4_TAKEN;
        cycles[1] += TBN_M7_TAKEN;
    }
    last_tb = tb;
}

static struct tbn_insn decode_insn(const struct qemu_plugin_insn *insn)
{
    const uint8_t *b = qemu_plugin_insn_data(insn);
    size_t size = qemu_plugin_insn_size(insn);
    uint32_t hw1 = size >= 2 ? (uint32_t)b[0] | ((uint32_t)b[1] << 8) : 0;
    uint32_t hw2 = size >= 4 ? (uint32_t)b[2] | ((uint32_t)b[3] << 8) : 0;
    return tbn_decode(hw1, hw2);
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    struct tbn_insn prev = {TBN_ALU, 0, 0, 0};
    int have_prev = 0, paired = 0;
    struct tb_info *info = calloc(1, sizeof *info);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
        struct tbn_insn in = decode_insn(insn);
        unsigned c4 = tbn_cycles_m4(&in, have_prev ? &prev : NULL);
        unsigned c7 = tbn_cycles_m7(&in, have_prev ? &prev : NULL, &paired);
        if (c4) qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &cycles[0], c4);
        if (c7) qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &cycles[1], c7);
        if (info) {
            if (i == 0) info->start = pc;
            info->fallthrough = pc + qemu_plugin_insn_size(insn);
            info->ends_in_branch = in.is_branch;
        }
        prev = in;
        have_prev = 1;
        if (pc == start_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == end_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (!n_kernels) continue;
        if (pc >= run_lo && pc < run_hi)
            qemu_plugin_register_vcpu_insn_exec_cb(insn, on_caller, QEMU_PLUGIN_CB_NO_REGS, NULL);
        for (size_t k = 0; k < n_kernels; k++)
            if (pc == kernel_addr[k])
                qemu_plugin_register_vcpu_insn_exec_cb(insn, on_kernel, QEMU_PLUGIN_CB_NO_REGS, (void *)(uintptr_t)k);
    }
    if (info) qemu_plugin_register_vcpu_tb_exec_cb(tb, on_tb, QEMU_PLUGIN_CB_NO_REGS, info);
}

static void report(void)
{
    if (reported) return;
    reported = 1;
    FILE *f = out_path[0] ? fopen(out_path, "w") : NULL;
    if (!f) {
        qemu_plugin_outs("tbn insncount: cannot write the output file\n");
        return;
    }
    fprintf(f, "executed %" PRIu64 "\nruns %zu\nunfinished %d\n", executed, n_runs, inside);
    for (size_t i = 0; i < n_runs; i++) fprintf(f, "%" PRIu64 "\n", runs[i]);
    for (size_t i = 0; i < n_runs; i++)
        fprintf(f, "cycles %" PRIu64 " %" PRIu64 "\n", run_cycles[i][0], run_cycles[i][1]);
    for (size_t k = 0; k < n_kernels; k++)
        fprintf(f, "kernel %zu %" PRIu64 " %" PRIu64 "\n", k, kernel_calls[k], kernel_insns[k]);
    for (size_t i = 0; i < n_sites; i++)
        fprintf(f,
                "call %zu %ld %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64
                "\n",
                i, sites[i].kernel, sites[i].calls, sites[i].insns, sites[i].kernel_insns, sites[i].cycles[0],
                sites[i].kernel_cycles[0], sites[i].cycles[1], sites[i].kernel_cycles[1]);
    if (n_kernels)
        fprintf(f, "tail %" PRIu64 " %" PRIu64 " %" PRIu64 "\n", tail_insns, tail_cycles[0], tail_cycles[1]);
    fclose(f);
}

static void on_exit_cb(qemu_plugin_id_t id, void *udata)
{
    (void)id;
    (void)udata;
    report();
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc, char **argv)
{
    (void)info;
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (!strncmp(a, "arg=", 4)) a += 4; /* QEMU < 7.2 spelling */
        if (!strncmp(a, "start=", 6)) start_addr = strtoull(a + 6, NULL, 0);
        else if (!strncmp(a, "end=", 4)) end_addr = strtoull(a + 4, NULL, 0);
        else if (!strncmp(a, "out=", 4)) snprintf(out_path, sizeof out_path, "%s", a + 4);
        else if (!strncmp(a, "kernels=", 8)) {
            if (read_kernels(a + 8)) {
                fprintf(stderr, "tbn insncount: cannot read the kernel list '%s'\n", a + 8);
                return -1;
            }
        }
        else {
            fprintf(stderr, "tbn insncount: unknown argument '%s'\n", argv[i]);
            return -1;
        }
    }
    if (!start_addr || !end_addr || !out_path[0]) {
        fprintf(stderr, "tbn insncount: needs start=ADDR,end=ADDR,out=FILE\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_atexit_cb(id, on_exit_cb, NULL);
    atexit(report);
    return 0;
}
