"""Run a semihosting firmware on QEMU: all samples in one process, optional exact instruction counts.

The firmware (``build_firmware(..., mode="semihost")``) reads ``tbn_in.bin`` from QEMU's working
directory, runs ``tbn_model_run`` on every sample, writes ``tbn_out.bin`` and ``tbn_stat.bin``
and exits through semihosting with a status (``templates/main_semihost.c``).  The run has a
wall-clock limit; a hang, a CPU fault or a lockup ends in a one-line
:class:`~tbn_tvm.errors.TBNError`.

Instruction counts come from the project's TCG plugin (``plugin/insncount.c``): for every
inference, the number of guest instructions executed from the first instruction of
``tbn_model_run`` to the instruction right after its call returns — the function, every callee
(libgcc/libm helpers included) and its own return instruction, and no call overhead.  QEMU has
no timing model: these are instructions, not cycles (on a board, the UART runner reports
DWT cycles).

>>> y, stats = run_qemu("out/firmware.elf", "cortex-m4", x, count_instructions=True)  # doctest: +SKIP
>>> stats["instructions"]["mean"]                                                 # doctest: +SKIP
10960.0
"""

from __future__ import annotations

import re
import struct
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from tbn_tvm import progress
from tbn_tvm.errors import TBNError
from tbn_tvm.outdir import scratch_dir
from tbn_tvm.targets.cortex_m.boards import Board, get_board
from tbn_tvm.targets.cortex_m.elf import ElfFile
from tbn_tvm.targets.cortex_m.firmware import firmware_info
from tbn_tvm.targets.cortex_m.plugin import insn_plugin
from tbn_tvm.targets.cortex_m.samples import as_batch
from tbn_tvm.targets.cortex_m.toolchain import find_qemu

_IN_MAGIC = 0x494E4254  # "TBNI"
_STAT_MAGIC = 0x534E4254  # "TBNS"

#: The cores whose cycles the plugin estimates (plugin/cycles.h), in the order it writes them.
CYCLE_CPUS = ("cortex-m4", "cortex-m7")
#: What an estimated cycle count is, for reports (docs/cortex-m.md, "Estimated cycles").
CYCLES_MODEL = (
    "estimated from each executed instruction's class: Cortex-M4 from the cycle tables of ARM's "
    "Cortex-M4 TRM (DDI 0439B, Tables 3-1 and 7-1), taken branches +2; Cortex-M7 coarser (ARM "
    "publishes no M7 table: one issue cycle per instruction, dual issue approximated); no flash "
    "wait states, bus contention or data-dependent stalls"
)

#: Exit statuses of the semihosting firmware (templates/main_semihost.c).
EXIT_IO, EXIT_FORMAT, EXIT_MODEL, EXIT_FAULT = 1, 2, 3, 250
#: Wall-clock limit of each sample of a QEMU run when no limit is given.
DEFAULT_TIMEOUT_S = 60.0
#: Extra seconds the first sample gets: QEMU's start, the plugin's load, the firmware's start.
STARTUP_S = 10.0
#: Seconds between two looks at the firmware's output file.
_POLL_S = 0.05


def qemu_machine_args(board: Board) -> list[str]:
    """QEMU options selecting the board's machine with no display, monitor or reboot."""
    if board.qemu_machine is None:
        raise TBNError(
            f"{board.name} is a physical board, QEMU does not emulate it",
            hint="run on it over UART (--port PORT), or build for cortex-m4/cortex-m7 to use QEMU",
        )
    return ["-M", board.qemu_machine, "-display", "none", "-monitor", "none", "-no-reboot"]


def run_qemu(
    elf: str | Path,
    board: str | Board,
    inputs: np.ndarray,
    output_size: int | None = None,
    *,
    count_instructions: bool = False,
    per_kernel: Sequence[str] = (),
    timeout_s: float | None = None,
    timeout_per_sample: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Run every sample of ``inputs`` through the firmware ``elf`` on QEMU.

    Returns ``(outputs[N, output_size] float32, stats)``; ``stats`` holds ``samples``,
    ``wall_s``, ``stack_peak_bytes`` and, with ``count_instructions``, ``instructions``
    (``per_inference``, ``mean``, ``min``, ``max``, ``total_executed``).  ``per_kernel`` names
    kernel functions (as in the library's ``model.c``, without the ``__tvm_ffi_`` prefix) whose
    instructions per inference are counted too, entry through return with callees:
    ``stats["instructions"]["per_kernel"]`` maps each to its mean per inference (all its calls
    together), ``per_call`` lists the calls of one inference in order, each with its kernel,
    its ``instructions`` (the driver's set-up of the call, then the kernel: they add up, with
    ``after_last_call``, to the inference's count) and ``kernel_instructions``.

    Limits (seconds; past one QEMU is killed): ``timeout_per_sample`` bounds each sample, from
    the end of the previous one (the first also gets :data:`STARTUP_S` for QEMU's start), so
    the time a run may take grows with its samples; ``timeout_s`` bounds the whole run.  With
    neither, each sample has :data:`DEFAULT_TIMEOUT_S`; with ``timeout_s`` only, that is the
    only limit.  Long runs show a progress bar (see :mod:`tbn_tvm.progress`).

    Raises :class:`TBNError` for a hang (naming the sample and the limit to raise), a fault, a
    lockup, an unreadable result or an unknown kernel.
    """
    timeout_s, timeout_per_sample = _limits(timeout_s, timeout_per_sample)
    board = get_board(board)
    machine_args = qemu_machine_args(board)
    elf = Path(elf).resolve()
    info = firmware_info(elf)
    if info.mode != "semihost":
        raise TBNError(f"{elf.name} is a UART firmware", hint="run it with run_uart_qemu or on a board")
    if output_size is not None and output_size != info.output_size:
        raise TBNError(f"{elf.name} produces {info.output_size} outputs per sample, not {output_size}")
    x = as_batch(inputs, info.input_size)
    qemu = find_qemu()

    with scratch_dir("tbn-qemu-") as tmp_name:
        tmp = Path(tmp_name)
        header = struct.pack("<5I", _IN_MAGIC, 1, x.shape[0], info.input_size, info.output_size)
        (tmp / "tbn_in.bin").write_bytes(header + x.tobytes())
        cmd = [qemu, *machine_args, "-serial", "null", "-semihosting-config", "enable=on,target=native"]
        if count_instructions:
            symbols = ElfFile.load(elf)
            start = symbols.symbol("tbn_model_run").address
            end = symbols.symbol("tbn_model_returned").address
            plugin = _qemu_escape(str(insn_plugin()))
            plugin_args = f"{plugin},start=0x{start:x},end=0x{end:x},out=tbn_insns.txt"
            if per_kernel:
                same_address = _write_kernel_list(symbols, per_kernel, tmp / "tbn_kernels.txt")
                plugin_args += ",kernels=tbn_kernels.txt"
            cmd += ["-plugin", plugin_args]
        cmd += ["-kernel", str(elf)]

        t0 = time.monotonic()
        with open(tmp / "qemu.log", "w+b") as log:
            proc = subprocess.Popen(cmd, cwd=tmp, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
            try:
                with progress.bar(x.shape[0], f"QEMU {board.qemu_machine}") as update:
                    _watch(
                        proc,
                        tmp / "tbn_out.bin",
                        4 * info.output_size,
                        x.shape[0],
                        timeout_s,
                        timeout_per_sample,
                        update,
                    )
            finally:
                _kill(proc)
            log.seek(0)
            qemu_output = log.read().decode("utf-8", "replace")
        wall = time.monotonic() - t0
        check_exit(proc.returncode, qemu_output, board)

        y = np.fromfile(tmp / "tbn_out.bin", dtype="<f4") if (tmp / "tbn_out.bin").exists() else np.zeros(0)
        if y.size != x.shape[0] * info.output_size:
            raise TBNError(f"the firmware wrote {y.size} outputs, expected {x.shape[0] * info.output_size}")
        stats: dict = {"board": board.name, "machine": board.qemu_machine, "samples": int(x.shape[0])}
        stats["wall_s"] = round(wall, 4)
        stats["stack_peak_bytes"] = _read_stack_peak(tmp / "tbn_stat.bin", x.shape[0])
        if count_instructions:
            stats["instructions"] = _read_counts(tmp / "tbn_insns.txt", x.shape[0], list(per_kernel))
            for call in stats["instructions"].get("per_call", []):
                index = list(per_kernel).index(call["kernel"]) if call["kernel"] is not None else None
                call["kernels"] = same_address[index] if index is not None else []
    return y.reshape(x.shape[0], info.output_size).astype(np.float32), stats


def _limits(timeout_s: float | None, timeout_per_sample: float | None) -> tuple[float | None, float]:
    """(whole-run limit or None, per-sample limit), validated."""
    for name, value in (("timeout", timeout_s), ("timeout_per_sample", timeout_per_sample)):
        if value is not None and not (isinstance(value, int | float) and 0 < value < float("inf")):
            raise TBNError(f"{name} must be a positive number of seconds, got {value!r}")
    if timeout_per_sample is None:
        timeout_per_sample = DEFAULT_TIMEOUT_S if timeout_s is None else float(timeout_s)
    return timeout_s, float(timeout_per_sample)


def _watch(
    proc: subprocess.Popen,
    out_file: Path,
    row_bytes: int,
    samples: int,
    timeout_s: float | None,
    timeout_per_sample: float,
    update,
) -> None:
    """Wait for QEMU, following the samples done through the size of the output file the
    firmware appends to; kill it past a limit (TBNError naming the sample and the option)."""
    t0 = last = time.monotonic()
    done = 0
    while proc.poll() is None:
        time.sleep(_POLL_S)
        try:
            now_done = min(out_file.stat().st_size // row_bytes, samples)
        except OSError:  # not created yet
            now_done = 0
        now = time.monotonic()
        if now_done > done:
            done, last = now_done, now
            update(done)
        if proc.poll() is not None:
            break
        if timeout_s is not None and now - t0 > timeout_s:
            raise TBNError(
                f"the firmware did not finish within {timeout_s:g} s (hang or infinite loop); "
                f"{done} of {samples} samples done",
                hint="if the model is just slow, raise the whole-run limit (--timeout, run option "
                "timeout) or leave it unset: --timeout-per-sample then bounds each sample",
            )
        if now - last > timeout_per_sample + (STARTUP_S if done == 0 else 0.0):
            raise TBNError(
                f"sample {done} (of {samples}) did not finish within {timeout_per_sample:g} s on QEMU "
                "(hang or infinite loop)",
                hint="if the model is just slow, raise --timeout-per-sample (run option timeout_per_sample)",
            )
    update(done if proc.returncode else samples)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def check_exit(returncode: int, stderr: str, board: Board) -> None:
    """Turn a semihosting firmware's QEMU exit into a one-line TBNError (status 0: no error)."""
    if returncode == 0:
        return
    said = " ".join(ln[5:].strip() for ln in stderr.splitlines() if ln.startswith("tbn: "))
    if "Lockup" in stderr or returncode in (-6, 134):
        raise lockup_error(stderr, board)
    if returncode == EXIT_FAULT:
        raise TBNError(f"the firmware crashed: {said or 'CPU fault'}", hint="a bug in the model's C code?")
    if returncode == EXIT_MODEL:
        raise TBNError(f"the model failed: {said}")
    if returncode in (EXIT_IO, EXIT_FORMAT):
        raise TBNError(f"the firmware could not read its samples: {said}")
    tail = " | ".join(stderr.strip().splitlines()[-3:])
    raise TBNError(f"QEMU exited with status {returncode}: {tail or 'no message'}")


def lockup_error(qemu_output: str, board: Board) -> TBNError:
    """The error for a CPU lockup (a fault while handling a fault), from QEMU's register dump.

    The stack sits at the bottom of RAM with an MPU guard below it, so a stack pointer below the
    RAM origin at the lockup means the stack overflowed.
    """
    line = next((ln.strip() for ln in qemu_output.splitlines() if "Lockup" in ln), "QEMU aborted")
    sp = re.search(r"R13=([0-9a-fA-F]{8})", qemu_output)
    if sp and board.ram_origin - 0x10000 <= int(sp.group(1), 16) < board.ram_origin:
        return TBNError(
            f"the firmware overflowed its {board.stack_bytes}-byte stack (CPU lockup, sp=0x{sp.group(1)})",
            hint="raise it with --stack-size (API: stack_size=)",
        )
    return TBNError(
        f"the firmware locked up ({line})",
        hint="a fault while handling a fault: a corrupted stack pointer or a stack overflow?",
    )


def _qemu_escape(option_value: str) -> str:
    return option_value.replace(",", ",,")  # QEMU option syntax: a literal comma is doubled


def _read_stack_peak(path: Path, samples: int) -> int | None:
    try:
        magic, done, peak = struct.unpack("<3I", path.read_bytes()[:12])
    except (OSError, struct.error):
        return None
    return peak if magic == _STAT_MAGIC and done == samples else None


def _write_kernel_list(symbols: ElfFile, kernels: Sequence[str], path: Path) -> list[list[str]]:
    """The plugin's kernel list: tbn_model_run's address range, then each kernel's entry.
    Returns, per kernel, the kernels at its address (itself, and those the linker or gcc's
    identical-code folding gave the same address: the plugin cannot tell them apart)."""
    run = symbols.symbol("tbn_model_run")
    lines = [f"{run.address:x} {run.address + max(run.size, 2):x}"]
    addresses = []
    for name in kernels:
        try:
            addresses.append(symbols.symbol("__tvm_ffi_" + name).address)
        except TBNError:
            raise TBNError(f"the firmware has no kernel '{name}'") from None
        lines.append(f"{addresses[-1]:x}")
    path.write_text("\n".join(lines) + "\n")
    return [[k for k, b in zip(kernels, addresses, strict=True) if b == a] for a in addresses]


def _per_sample(total: int, samples: int) -> int | float:
    """A total over ``samples`` inferences per inference (an int when it divides exactly)."""
    return total // samples if total % samples == 0 else total / samples


def _read_counts(path: Path, samples: int, kernels: list[str] | None = None) -> dict:
    try:
        lines = path.read_text().split("\n")
    except OSError:
        raise TBNError("the QEMU instruction-count plugin wrote no result") from None
    fields = dict(ln.split(" ", 1) for ln in lines[:3] if " " in ln)
    runs = [int(v) for v in lines[3:] if v.strip() and v.strip().isdigit()]
    cycles: list[tuple[int, int]] = []
    per_kernel, per_call, tail, tail_cycles = {}, [], None, None
    for ln in lines[3:]:
        if ln.startswith("cycles "):
            _, m4, m7 = ln.split()
            cycles.append((int(m4), int(m7)))
        elif ln.startswith("kernel "):
            _, index, _calls, insns = ln.split()
            per_kernel[kernels[int(index)]] = _per_sample(int(insns), samples)
        elif ln.startswith("call "):
            _, _index, kernel, calls, insns, kernel_insns, *cyc = ln.split()
            call = {
                "kernel": kernels[int(kernel)] if int(kernel) >= 0 else None,
                "calls": _per_sample(int(calls), samples),
                "instructions": _per_sample(int(insns), samples),
                "kernel_instructions": _per_sample(int(kernel_insns), samples),
            }
            if len(cyc) == 4:
                call["estimated_cycles_m4"] = _per_sample(int(cyc[0]), samples)
                call["kernel_estimated_cycles_m4"] = _per_sample(int(cyc[1]), samples)
                call["estimated_cycles_m7"] = _per_sample(int(cyc[2]), samples)
                call["kernel_estimated_cycles_m7"] = _per_sample(int(cyc[3]), samples)
            per_call.append(call)
        elif ln.startswith("tail "):
            _, insns, *cyc = ln.split()
            tail = _per_sample(int(insns), samples)
            if len(cyc) == 2:
                tail_cycles = {
                    cpu: _per_sample(int(v), samples) for cpu, v in zip(CYCLE_CPUS, cyc, strict=True)
                }
    if len(runs) != samples or int(fields.get("runs", -1)) != samples:
        raise TBNError(f"the instruction counter saw {len(runs)} complete inferences, expected {samples}")
    extra = {}
    if kernels:
        extra = {"per_kernel": per_kernel, "per_call": per_call, "after_last_call": tail}
        if tail_cycles is not None:
            extra["cycles_after_last_call"] = tail_cycles
    if len(cycles) == samples:
        extra["estimated_cycles"] = {
            cpu: {
                "per_inference": [c[i] for c in cycles],
                "mean": float(np.mean([c[i] for c in cycles])),
                "min": min(c[i] for c in cycles),
                "max": max(c[i] for c in cycles),
            }
            for i, cpu in enumerate(CYCLE_CPUS)
        }
    return {
        "per_inference": runs,
        "mean": float(np.mean(runs)),
        "min": min(runs),
        "max": max(runs),
        "total_executed": int(fields["executed"]),
        "counts": "instructions from the entry of tbn_model_run through its return, callees included",
        **extra,
    }
