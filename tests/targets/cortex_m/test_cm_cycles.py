"""Estimated cycles beside instructions (issue 22): the QEMU plugin's Cortex-M4 estimate checked
against loops whose cycles follow by hand from the Cortex-M4 TRM's tables (fixtures/cycles_lib,
model.S derives each), the Cortex-M7 estimate against the model's own stated rules, and the
figures reported by a real build (manifest, ``run --json``, per layer adding up)."""

from __future__ import annotations

import json

import numpy as np
import onnx_zoo as zoo
import pytest
from cm_support import FIXTURES
from test_cli import cli, ok

pytestmark = pytest.mark.qemu

#: loop -> (M4 cycles, M7 cycles) as functions of the iteration count n (see model.S)
LOOPS = {
    "cyc_alu": (lambda n: 6 * n + 1, lambda n: 3 * n + 1),
    "cyc_load": (lambda n: 10 * n + 1, lambda n: 5 * n + 1),
    "cyc_fp": (lambda n: 24 * n + 1, lambda n: 21 * n + 1),
    "cyc_dsp": (lambda n: 6 * n + 1, lambda n: 4 * n + 1),
    "cyc_multi": (lambda n: 9 * n + 12, lambda n: 5 * n + 8),
    "cyc_it": (lambda n: 6 * n + 1, lambda n: 5 * n + 1),
}


@pytest.fixture(scope="module")
def cycles_elf(tmp_path_factory):
    from tbn_tvm.targets.cortex_m import build_firmware

    elf = tmp_path_factory.mktemp("cycles") / "cycles.elf"
    build_firmware(FIXTURES / "cycles_lib", "cortex-m4", elf, mode="semihost")
    return elf


@pytest.mark.parametrize("n", [1, 7, 100])
def test_hand_derived_loops(cycles_elf, n):
    from tbn_tvm.targets.cortex_m import run_qemu

    _, stats = run_qemu(
        cycles_elf, "cortex-m4", np.array([[n]], np.float32), count_instructions=True, per_kernel=list(LOOPS)
    )
    calls = stats["instructions"]["per_call"]
    assert [c["kernel"] for c in calls] == list(LOOPS)
    for call in calls:
        m4, m7 = LOOPS[call["kernel"]]
        assert call["kernel_estimated_cycles_m4"] == m4(n), call
        assert call["kernel_estimated_cycles_m7"] == m7(n), call
    est = stats["instructions"]["estimated_cycles"]
    for cpu, key in (("cortex-m4", "estimated_cycles_m4"), ("cortex-m7", "estimated_cycles_m7")):
        total = sum(c[key] for c in calls) + stats["instructions"]["cycles_after_last_call"][cpu]
        assert est[cpu]["per_inference"] == [total]


#: instruction -> (class, words) the decoder must give (plugin/cycles.h's enum order)
CLASSES = ["ALU", "MUL", "DIV", "LS", "LS_DUAL", "LS_MULTI", "BRANCH", "FP", "FP_MAC", "FP_DIV"]
CLASSES += ["FP_LS", "FP_MULTI", "FP_MOV2", "IT"]
DECODED = [
    ("adds r0, r1, r2", "ALU", 0),
    ("add.w r0, r1, r2, lsl #3", "ALU", 0),
    ("movw r0, #0x1234", "ALU", 0),
    ("ubfx r0, r1, #3, #4", "ALU", 0),
    ("uxtb r0, r1", "ALU", 0),
    ("muls r0, r1, r0", "MUL", 0),
    ("mla r0, r1, r2, r3", "MUL", 0),
    ("smlad r0, r1, r2, r3", "MUL", 0),
    ("smull r0, r1, r2, r3", "MUL", 0),
    ("sdiv r0, r1, r2", "DIV", 0),
    ("udiv r0, r1, r2", "DIV", 0),
    ("ldr r0, [r1]", "LS", 0),
    ("ldr.w r0, [r1, #1000]", "LS", 0),
    ("ldrb r0, [r1, r2]", "LS", 0),
    ("strh.w r0, [r1, #2]", "LS", 0),
    ("ldr r0, [sp, #8]", "LS", 0),
    ("ldrex r0, [r1]", "LS", 0),
    ("ldrd r0, r1, [r2]", "LS_DUAL", 0),
    ("ldm r0!, {r1, r2}", "LS_MULTI", 2),
    ("push {r4-r7, lr}", "LS_MULTI", 5),
    ("stmdb sp!, {r4-r11}", "LS_MULTI", 8),
    ("pop {r4, pc}", "LS_MULTI", 2),
    ("ldr pc, [sp], #4", "LS", 0),
    ("b.w .", "BRANCH", 0),
    ("bne.w .", "BRANCH", 0),
    ("bl .", "BRANCH", 0),
    ("bx lr", "BRANCH", 0),
    ("cbz r0, .+4", "BRANCH", 0),
    ("tbb [r0, r1]", "BRANCH", 1),
    ("vadd.f32 s0, s1, s2", "FP", 0),
    ("vnmul.f32 s0, s1, s2", "FP", 0),
    ("vmla.f32 s0, s1, s2", "FP_MAC", 0),
    ("vfma.f32 s0, s1, s2", "FP_MAC", 0),
    ("vnmls.f32 s0, s1, s2", "FP_MAC", 0),
    ("vdiv.f32 s0, s1, s2", "FP_DIV", 0),
    ("vsqrt.f32 s0, s1", "FP_DIV", 0),
    ("vabs.f32 s0, s1", "FP", 0),
    ("vcvt.s32.f32 s0, s1", "FP", 0),
    ("vmov r0, s1", "FP", 0),
    ("vmrs APSR_nzcv, fpscr", "FP", 0),
    ("vldr s0, [r0, #4]", "FP_LS", 1),
    ("vstr d1, [r0]", "FP_LS", 2),
    ("vpush {s16-s19}", "FP_MULTI", 4),
    ("vldmia r0!, {s0-s7}", "FP_MULTI", 8),
    ("vmov r0, r1, d0", "FP_MOV2", 0),
    ("it eq", "IT", 0),
    ("nop", "ALU", 0),
]
#: the instructions that may change the pc (their taken-branch penalty applies)
BRANCHES = {"pop {r4, pc}", "ldr pc, [sp], #4", "b.w .", "bne.w .", "bl .", "bx lr", "cbz r0, .+4"}
BRANCHES |= {"tbb [r0, r1]"}

_DRIVER = r"""
#include <stdio.h>
#include "cycles.h"
int main(int argc, char **argv) {
    for (int i = 1; i + 1 < argc; i += 2) {
        unsigned hw1, hw2;
        sscanf(argv[i], "%x", &hw1);
        sscanf(argv[i + 1], "%x", &hw2);
        struct tbn_insn r = tbn_decode(hw1, hw2);
        printf("%d %u %d %d\n", (int)r.cls, r.words, r.is_branch, r.wide);
    }
    return 0;
}
"""


def test_decoder_classes(tmp_path):
    """The plugin's Thumb-2 decoder (plugin/cycles.h, compiled for the host) on each
    instruction above, as arm-none-eabi-as encodes it."""
    import subprocess

    from tbn_tvm.targets.cortex_m.plugin import PLUGIN_DIR
    from tbn_tvm.targets.cortex_m.toolchain import find_gcc, find_host_cc

    gcc = find_gcc()
    src = tmp_path / "insns.S"
    body = "".join(f".align 2\ninsn{i}:\n    {asm}\n" for i, (asm, _, _) in enumerate(DECODED))
    src.write_text(".syntax unified\n.thumb\n.text\n" + body)
    obj, raw = tmp_path / "insns.o", tmp_path / "insns.bin"
    flags = ["-mcpu=cortex-m4", "-mthumb", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]
    subprocess.run([gcc, *flags, "-c", str(src), "-o", str(obj)], check=True)
    objcopy = gcc.replace("gcc", "objcopy")
    nm = gcc.replace("gcc", "nm")
    subprocess.run([objcopy, "-O", "binary", "-j", ".text", str(obj), str(raw)], check=True)
    data = raw.read_bytes()
    where = {}
    for line in subprocess.run([nm, str(obj)], capture_output=True, text=True, check=True).stdout.split("\n"):
        parts = line.split()
        if len(parts) == 3 and parts[2].startswith("insn"):
            where[int(parts[2][4:])] = int(parts[0], 16)
    args = []
    for i in range(len(DECODED)):
        at = where[i]
        args += [f"{data[at] | data[at + 1] << 8:x}", f"{data[at + 2] | data[at + 3] << 8:x}"]
    (tmp_path / "drv.c").write_text(_DRIVER)
    exe = tmp_path / "drv"
    subprocess.run([find_host_cc(), f"-I{PLUGIN_DIR}", "-o", str(exe), str(tmp_path / "drv.c")], check=True)
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, check=True).stdout.splitlines()
    for (asm, cls, words), line in zip(DECODED, out, strict=True):
        got_cls, got_words, branch, _ = (int(v) for v in line.split())
        assert (CLASSES[got_cls], got_words) == (cls, words), asm
        assert bool(branch) == (asm in BRANCHES), asm


def test_build_and_run_report_cycles(tmp_path):
    zm = zoo.mlp()
    out = tmp_path / "mlp"
    ok(cli("compile", zm.save(tmp_path / "mlp.onnx"), "--target", "cortex-m4", "-o", out))
    manifest = json.loads((out / "manifest.json").read_text())
    measured = manifest["measured"]
    assert measured["estimated_cycles_m4_per_inference"] > measured["instructions_per_inference"]
    for cpu, key in (("cortex-m4", "estimated_cycles_m4"), ("cortex-m7", "estimated_cycles_m7")):
        steps = sum(s[key] for s in manifest["steps"])
        assert steps + measured["cycles_after_last_call"][cpu] == measured[f"{key}_per_inference"]
        assert all(layer[key] > 0 for layer in manifest["layers"] if "instructions" in layer)
    np.save(
        tmp_path / "x.npy", np.random.default_rng(0).standard_normal((2, *zm.input_shape)).astype(np.float32)
    )
    proc = ok(
        cli(
            "run",
            out,
            "--qemu",
            "--input",
            tmp_path / "x.npy",
            "--count-instructions",
            "--json",
            "--per-layer",
        )
    )
    summary = json.loads(proc.stdout)
    assert summary["estimated_cycles_m4_per_inference"] == measured["estimated_cycles_m4_per_inference"]
    assert summary["estimated_cycles_m7_per_inference"] == measured["estimated_cycles_m7_per_inference"]
    assert [s["estimated_cycles_m4"] for s in summary["instructions_per_layer"]] == [
        s["estimated_cycles_m4"] for s in manifest["steps"]
    ]
