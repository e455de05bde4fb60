/* tbn-tvm QEMU firmware: run the model on every sample of a host file, via semihosting.
 *
 * Host files (in QEMU's working directory, all little-endian):
 *   tbn_in.bin   header {u32 magic "TBNI", u32 version 1, u32 count, u32 input_size,
 *                u32 output_size} then count * input_size float32
 *   tbn_out.bin  count * output_size float32, written by the firmware
 *   tbn_stat.bin {u32 magic "TBNS", u32 samples done, u32 peak stack bytes}
 * Exit status (QEMU's exit code): see TBN_EXIT_* below; messages go to QEMU's stderr as
 * lines starting with "tbn: ".
 */
#include <stdint.h>

#include "model.h"
#include "semihost.h"
#include "tbn_fw.h"

#define TBN_IN_MAGIC 0x494E4254u   /* "TBNI" */
#define TBN_STAT_MAGIC 0x534E4254u /* "TBNS" */

enum {
    TBN_EXIT_OK = 0,
    TBN_EXIT_IO = 1,     /* a host file could not be opened, read or written */
    TBN_EXIT_FORMAT = 2, /* tbn_in.bin does not match this model */
    TBN_EXIT_MODEL = 3,  /* tbn_model_run returned non-zero */
    TBN_EXIT_FAULT = 250 /* CPU fault: message "tbn: fault ..." on stderr */
};

const struct tbn_fw_info tbn_fw_info = {
    TBN_FW_MAGIC, TBN_FW_VERSION, TBN_FW_MODE_SEMIHOST,
    TBN_MODEL_INPUT_SIZE, TBN_MODEL_OUTPUT_SIZE, TBN_MODEL_ARENA_BYTES,
};

static float tbn_in[TBN_MODEL_INPUT_SIZE] __attribute__((aligned(8)));
static float tbn_out[TBN_MODEL_OUTPUT_SIZE] __attribute__((aligned(8)));

/* A tiny message builder: text, decimal and hex numbers into one line. */
static char tbn_msg[160];
static uint32_t tbn_msg_len;

static void msg_text(const char *s)
{
    while (*s && tbn_msg_len < sizeof tbn_msg - 2) tbn_msg[tbn_msg_len++] = *s++;
}

static void msg_num(uint32_t v, int is_signed, int hex)
{
    char digits[12];
    int n = 0;
    if (is_signed && (int32_t)v < 0) {
        msg_text("-");
        v = (uint32_t)(-(int32_t)v);
    }
    if (hex) msg_text("0x");
    do {
        uint32_t d = hex ? v & 0xFu : v % 10u;
        digits[n++] = (char)(d < 10u ? '0' + d : 'a' + d - 10u);
        v = hex ? v >> 4 : v / 10u;
    } while (v || (hex && n < 8));
    while (n && tbn_msg_len < sizeof tbn_msg - 2) tbn_msg[tbn_msg_len++] = digits[--n];
}

static void msg_send(void)
{
    tbn_msg[tbn_msg_len++] = '\n';
    tbn_msg[tbn_msg_len] = '\0';
    tbn_sh_write0(tbn_msg);
    tbn_msg_len = 0;
}

static int fail(int status, const char *what, const char *name)
{
    msg_text("tbn: ");
    msg_text(what);
    msg_text(name);
    msg_send();
    return status;
}

int main(void)
{
    uint32_t header[5];
    int32_t in = tbn_sh_open("tbn_in.bin", TBN_OPEN_RB);
    if (in < 0) return fail(TBN_EXIT_IO, "cannot open ", "tbn_in.bin");
    if (tbn_sh_read(in, header, sizeof header) != 0) return fail(TBN_EXIT_IO, "cannot read ", "tbn_in.bin");
    if (header[0] != TBN_IN_MAGIC || header[1] != 1u) return fail(TBN_EXIT_FORMAT, "bad header in ", "tbn_in.bin");
    if (header[3] != TBN_MODEL_INPUT_SIZE || header[4] != TBN_MODEL_OUTPUT_SIZE) {
        msg_text("tbn: input file has ");
        msg_num(header[3], 0, 0);
        msg_text(" inputs and ");
        msg_num(header[4], 0, 0);
        msg_text(" outputs per sample, the model ");
        msg_num(TBN_MODEL_INPUT_SIZE, 0, 0);
        msg_text(" and ");
        msg_num(TBN_MODEL_OUTPUT_SIZE, 0, 0);
        msg_send();
        return TBN_EXIT_FORMAT;
    }
    int32_t out = tbn_sh_open("tbn_out.bin", TBN_OPEN_WB);
    if (out < 0) return fail(TBN_EXIT_IO, "cannot create ", "tbn_out.bin");

    uint32_t done = 0;
    for (; done < header[2]; done++) {
        if (tbn_sh_read(in, tbn_in, sizeof tbn_in) != 0) return fail(TBN_EXIT_IO, "short read of ", "tbn_in.bin");
        int rc = tbn_run_measured(tbn_in, tbn_out);
        if (rc != 0) {
            msg_text("tbn: tbn_model_run returned ");
            msg_num((uint32_t)rc, 1, 0);
            msg_text(" on sample ");
            msg_num(done, 0, 0);
            msg_send();
            return TBN_EXIT_MODEL;
        }
        if (tbn_sh_write(out, tbn_out, sizeof tbn_out) != 0) return fail(TBN_EXIT_IO, "cannot write ", "tbn_out.bin");
    }
    tbn_sh_close(out);
    tbn_sh_close(in);

    const uint32_t stat[3] = {TBN_STAT_MAGIC, done, tbn_stack_peak_bytes()};
    int32_t st = tbn_sh_open("tbn_stat.bin", TBN_OPEN_WB);
    if (st < 0 || tbn_sh_write(st, stat, sizeof stat) != 0) return fail(TBN_EXIT_IO, "cannot write ", "tbn_stat.bin");
    tbn_sh_close(st);
    return TBN_EXIT_OK;
}

void tbn_platform_exit(int status)
{
    tbn_sh_exit(status);
}

void tbn_fault_report(const uint32_t *frame, uint32_t ipsr)
{
    static const char *const names[16] = {
        "exception", "reset", "NMI", "HardFault", "MemManage", "BusFault", "UsageFault", "exception",
        "exception", "exception", "exception", "SVCall", "DebugMonitor", "exception", "PendSV", "SysTick",
    };
    tbn_msg_len = 0;
    msg_text("tbn: fault ");
    msg_text(names[ipsr & 0xFu]);
    msg_text(" pc=");
    msg_num(frame[6], 0, 1);
    msg_text(" lr=");
    msg_num(frame[5], 0, 1);
    msg_text(" cfsr=");
    msg_num(TBN_SCB_CFSR, 0, 1);
    msg_text(" hfsr=");
    msg_num(TBN_SCB_HFSR, 0, 1);
    msg_text(" bfar=");
    msg_num(TBN_SCB_BFAR, 0, 1);
    msg_send();
    tbn_sh_exit(TBN_EXIT_FAULT);
}
