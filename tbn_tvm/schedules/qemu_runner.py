"""MetaSchedule builder and runner that measure Cortex-M candidates on QEMU, by exact count of
the instructions one call of the kernel executes.

A candidate (one scheduled PrimFunc) is emitted as C by TVM's C code generator, exactly as the
Cortex-M back end emits kernels (:func:`tbn_tvm.targets.clib.lower.kernels_to_c`); the runner
wraps it in a stand-in model library whose ``tbn_model_run`` calls it once on static buffers of
the kernel's argument shapes, builds the semihosting firmware with arm-none-eabi-gcc and runs
it on QEMU with the project's instruction-count plugin.  Instructions are deterministic, so one
run per candidate is a complete measurement; they are reported to MetaSchedule as
``instructions / 1e8`` "seconds" (a 100 MHz single-issue core, for the cost model's scale).
QEMU counts instructions, not cycles: a board measures cycles (``tbn-tvm run --port``).
"""

from __future__ import annotations

import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

#: Instructions per "second" reported to MetaSchedule.
INSTRUCTIONS_PER_SECOND = 1e8

_C_TYPES = {
    "float32": "float",
    "float16": "uint16_t",
    "uint32": "uint32_t",
    "int32": "int32_t",
    "int64": "int64_t",
    "uint8": "uint8_t",
    "int8": "int8_t",
    "bool": "uint8_t",
}


def build_c(mod, target, _params=None):
    """MetaSchedule ``f_build``: the candidate as a C-source module (asserts disabled)."""
    import tvm

    from tbn_tvm.targets.clib import intrin

    intrin.register()
    funcs = {gv: f.with_attr("global_symbol", "tbn_candidate") for gv, f in mod.functions_items()}
    # a Cortex-M4/M7 has no vector unit the C code could use: vectorised loops become serial
    config = {"tirx.disable_assert": True, "tirx.disable_vectorize": True}
    with tvm.transform.PassContext(opt_level=3, config=config):
        return tvm.tirx.build(tvm.IRModule(funcs), target=tvm.target.Target("c"))


def export_c(rt_mod) -> str:
    """MetaSchedule ``f_export``: the C source written to a file in a directory of its own (the
    measure callbacks remove the artifact's whole directory afterwards); returns its path."""
    path = Path(tempfile.mkdtemp(prefix="tbn-candidate-")) / "candidate.c"
    path.write_text(rt_mod.inspect_source())
    return str(path)


def kernel_library(source: str, args: list[tuple[tuple[int, ...], str]], lib: Path) -> None:
    """A stand-in model library in ``lib`` whose ``tbn_model_run`` calls the candidate once on
    static buffers of the argument shapes (float inputs filled with small values, words with a
    bit pattern), so QEMU can count one call."""
    import re

    from tbn_tvm.targets.clib.lower import ABI_HEADER

    lib.mkdir(parents=True, exist_ok=True)
    code = re.sub(r'^#include "tvm/[^"]+"\s*$', "", source, flags=re.M)
    code = code.replace("#define TVM_EXPORTS\n", f'#include "{ABI_HEADER}"\n', 1)
    code = re.sub(r"^void\* __tvm_ffi__library_ctx = NULL;\n", "", code, flags=re.M)
    (lib / "kernels.c").write_text(code)
    from importlib import resources

    (lib / ABI_HEADER).write_text(resources.files("tbn_tvm.targets.clib").joinpath(ABI_HEADER).read_text())
    decls, calls, fills = [], [], []
    for j, (shape, dtype) in enumerate(args):
        n = max(1, math.prod(shape))
        ctype = _C_TYPES.get(dtype, "uint8_t")
        bits = np.dtype(dtype if dtype != "bool" else "uint8").itemsize * 8
        code_ = {"f": 2, "u": 1, "i": 0, "b": 1}[np.dtype(dtype if dtype != "bool" else "uint8").kind]
        dims = ", ".join(str(d) for d in shape) or "1"
        decls.append(f"static {ctype} buf{j}[{n}] __attribute__((aligned(16)));")
        decls.append(f"static const int64_t shape{j}[{max(1, len(shape))}] = {{{dims}}};")
        calls.append(
            f"  DLTensor t{j} = {{buf{j}, {{1, 0}}, {len(shape)}, {{{code_}, {bits}, 1}}, (int64_t *)shape{j}, NULL, 0}};"
        )
        init = (
            "0x5a5a5a5au"
            if ctype == "uint32_t"
            else ("(float)((i % 7) - 3) * 0.25f" if ctype == "float" else "1")
        )
        fills.append(f"    for (uint32_t i = 0; i < {n}u; i++) buf{j}[i] = ({ctype})({init});")
    n = len(args)
    packed = ", ".join(f"{{.type_index = TBN_ARG_DLTENSOR_PTR, .v_ptr = &t{j}}}" for j in range(n))
    model_c = [
        '#include "model.h"',
        f'#include "{ABI_HEADER}"',
        "int32_t __tvm_ffi_tbn_candidate(void *self, void *args, int32_t num_args, void *result);",
        "static uint8_t ws[1u << 18] __attribute__((aligned(16)));",
        "static uint32_t ws_top;",
        "void *TVMBackendAllocWorkspace(int t, int d, uint64_t n, int c, int b) {",
        "  (void)t; (void)d; (void)c; (void)b;",
        "  uint32_t size = (uint32_t)((n + 15u) & ~(uint64_t)15u);",
        "  if (ws_top + size > sizeof ws) return NULL;",
        "  void *p = ws + ws_top; ws_top += size; return p;",
        "}",
        "int TVMBackendFreeWorkspace(int t, int d, void *p) {",
        "  (void)t; (void)d; ws_top = (uint32_t)((uint8_t *)p - ws); return 0;",
        "}",
        *decls,
        "static int filled;",
        "int tbn_model_run(const float *in, float *out) {",
        "  (void)in;",
        "  if (!filled) {  /* the first call fills the buffers; the second is the one counted */",
        *fills,
        "    filled = 1;",
        "  }",
        *calls,
        f"  TVMFFIAny args[{n}] = {{{packed}}};",
        f"  int rc = __tvm_ffi_tbn_candidate(NULL, args, {n}, NULL);",
        "  out[0] = 0.0f;",
        "  return rc;",
        "}",
        "",
    ]
    (lib / "model.c").write_text("\n".join(model_c))
    (lib / "weights.c").write_text("/* no weights */\n")
    (lib / "model.h").write_text(
        "#ifndef TBN_MODEL_H_\n#define TBN_MODEL_H_\n#include <stdint.h>\n"
        "#define TBN_MODEL_INPUT_SIZE 1\n#define TBN_MODEL_OUTPUT_SIZE 1\n#define TBN_MODEL_ARENA_BYTES 16\n"
        "int tbn_model_run(const float *in, float *out);\n#endif\n"
    )


def count_instructions(source: str, args: list[tuple[tuple[int, ...], str]], board: str = "cortex-m4") -> int:
    """Instructions of one call of the kernel in ``source`` on QEMU (raises TBNError when it
    does not build, fit or run)."""
    from tbn_tvm.targets.cortex_m import build_firmware, run_qemu

    with tempfile.TemporaryDirectory(prefix="tbn-qemu-tune-") as tmp:
        lib = Path(tmp) / "lib"
        kernel_library(source, args, lib)
        elf = Path(tmp) / "fw.elf"
        build_firmware(lib, board, elf, mode="semihost", ram_bytes=4 << 20, flash_bytes=4 << 20)
        _, stats = run_qemu(elf, board, np.zeros((2, 1), np.float32), count_instructions=True, timeout_s=120)
    return int(stats["instructions"]["min"])


def _runner_class():
    from tvm.ir.utils import derived_object
    from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

    @derived_object
    class QemuRunner(PyRunner):
        """MetaSchedule runner: instructions per call on QEMU (see the module docstring)."""

        def __init__(self, board: str = "cortex-m4", workers: int = 2) -> None:
            super().__init__()
            self.board = board
            self.pool = ThreadPoolExecutor(max_workers=workers)

        def run(self, runner_inputs):
            futures = []
            for inp in runner_inputs:
                args = [(tuple(int(d) for d in a.shape), str(a.dtype)) for a in inp.args_info]
                fut = self.pool.submit(self._measure, str(inp.artifact_path), args)

                def done(f=fut):
                    return f.done()

                def result(f=fut):
                    try:
                        return RunnerResult([f.result() / INSTRUCTIONS_PER_SECOND], None)
                    except Exception as e:  # noqa: BLE001 - a candidate that does not build or run
                        return RunnerResult(None, f"QemuRunner: {' '.join(str(e).split())[:300]}")

                futures.append(RunnerFuture(done, result))
            return futures

        def _measure(self, path: str, args) -> int:
            source = Path(path).read_text()
            return count_instructions(source, args, self.board)

    return QemuRunner


def QemuRunner(board: str = "cortex-m4", workers: int = 2):  # noqa: N802 - a class to its callers
    """A MetaSchedule runner measuring on QEMU ``board`` with ``workers`` parallel QEMUs."""
    return _runner_class()(board, workers)


def qemu_builder(workers: int = 2):
    """A MetaSchedule builder emitting candidates as C (for :func:`QemuRunner`)."""
    from tvm.s_tir import meta_schedule as ms

    return ms.builder.LocalBuilder(f_build=build_c, f_export=export_c, max_workers=workers, timeout_sec=120)
