/* tbn-tvm QEMU TCG plugin: exact guest instruction counts of every model inference.
 *
 *   qemu-system-arm ... -plugin libtbn_insncount.so,start=0x1c8,end=0x2f4,out=insns.txt
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
 *   then one line per inference: its instruction count.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tbn_qemu_plugin.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = 1;

static uint64_t executed;
static uint64_t start_addr, end_addr;
static uint64_t executed_at_start;
static int inside;
static uint64_t *runs;
static size_t n_runs, cap_runs;
static char out_path[4096];
static int reported;

static void on_start(unsigned int vcpu, void *udata)
{
    (void)vcpu;
    (void)udata;
    executed_at_start = executed;
    inside = 1;
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
        cap_runs = cap;
    }
    runs[n_runs++] = executed - executed_at_start;
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        uint64_t pc = qemu_plugin_insn_vaddr(insn);
        qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, &executed, 1);
        if (pc == start_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_start, QEMU_PLUGIN_CB_NO_REGS, NULL);
        if (pc == end_addr) qemu_plugin_register_vcpu_insn_exec_cb(insn, on_end, QEMU_PLUGIN_CB_NO_REGS, NULL);
    }
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
