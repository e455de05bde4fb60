"""The Cortex-M back end of :func:`tbn_tvm.compile`: a static C library + firmware, run on QEMU
or on a board over UART.

OUT_DIR layout::

    lib/                 the C library to drop into a board project (model.h, model.c, weights.c,
                         kernels.c, tbn_abi.h)
    firmware.elf         semihosting firmware for QEMU (`tbn-tvm run OUT_DIR --qemu`)
    firmware_uart.elf    UART-protocol firmware for the QEMU board (stand-in for a real board)
    manifest.json        target, shapes, per-layer formats, flash/RAM per section and per layer
"""

from __future__ import annotations

import re
import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.base import Backend, Option, TargetSpec

LIB_DIR = "lib"
FIRMWARE = "firmware.elf"
FIRMWARE_UART = "firmware_uart.elf"


def parse_size(value) -> int | None:
    """``"512K"``, ``"1M"``, ``"65536"`` or an int -> bytes."""
    if value is None or isinstance(value, int):
        return value
    m = re.fullmatch(r"\s*(\d+)\s*([kKmM]?)(i?[bB])?\s*", str(value))
    if not m:
        raise TBNError(f"bad size '{value}'", hint="write bytes, or a number with K or M (e.g. 512K)")
    return int(m.group(1)) * {"": 1, "k": 1024, "m": 1024 * 1024}[m.group(2).lower()]


def _layer_sizes(graph, info, size_report) -> list[dict]:
    """Per kernel call (step): the model layers it computes (the call site's own, carried on
    the IR: :mod:`tbn_tvm.frontend.identity`), the C arrays it reads, the bytes of those it is
    the first to read (an array read by several calls, a weight shared by two layers, is
    counted once, at its first reader), the kernel's code bytes (at its first call: a kernel
    called by several steps is one function) and the arena in use while it runs.  The steps'
    weight and code bytes add up to the library's."""
    code = {s.name: s.size for s in size_report.library_symbols if s.kind in ("func", "text")}
    per_step = []
    arrays_counted: set[str] = set()
    kernels_counted: set[str] = set()
    for i, step in enumerate(graph.steps):
        arrays = list(info.step_constants[i])
        first = [a for a in dict.fromkeys(arrays) if a not in arrays_counted]
        arrays_counted.update(first)
        entry = {
            "kernel": step.kernel,
            "layers": list(step.layers),
            "arrays": arrays,
            "weight_bytes": sum(info.constants[c] for c in first),
            "code_bytes": 0 if step.kernel in kernels_counted else code.get(f"__tvm_ffi_{step.kernel}", 0),
            "arena_bytes": info.step_arena[i],
            "output_bytes": sum(graph.values[o].nbytes for o in step.outs),
        }
        if info.step_in_place and info.step_in_place[i] is not None:
            entry["in_place"] = True  # its output took over the bytes of an input that died here
        if len(first) < len(set(arrays)):
            entry["arrays_counted_before"] = [a for a in dict.fromkeys(arrays) if a not in first]
        kernels_counted.add(step.kernel)
        per_step.append(entry)
    return per_step


def per_step_instructions(steps: list[dict], counts: dict) -> list[dict]:
    """Instructions per step (call site) from the plugin's per-call counts (``counts``: the
    ``instructions`` stats of :func:`~tbn_tvm.targets.cortex_m.run_qemu`): each step's
    ``instructions`` (the driver's set-up of the call and the kernel, so that the steps add up
    to the inference's count with ``after_last_call``) and ``kernel_instructions``.  Raises
    TBNError when the calls QEMU saw are not the steps of ``model.c``."""
    calls = counts.get("per_call") or []
    if len(calls) != len(steps):
        raise TBNError(
            f"the instruction counter saw {len(calls)} kernel calls per inference where model.c makes {len(steps)}",
            hint="report it with the model",
        )
    out = []
    for step, call in zip(steps, calls, strict=True):
        if step["kernel"] not in call.get("kernels", [call["kernel"]]):
            raise TBNError(
                f"the instruction counter saw {call['kernel']} where model.c calls {step['kernel']}",
                hint="report it with the model",
            )
        entry = {
            "kernel": step["kernel"],
            "layers": step.get("layers", []),
            "instructions": call["instructions"],
            "kernel_instructions": call["kernel_instructions"],
        }
        for key in ("estimated_cycles_m4", "estimated_cycles_m7"):
            if key in call:
                entry[key] = call[key]
        out.append(entry)
    return out


#: Stack margin over the measured peak: a quarter more, and at least this many bytes (an
#: exception frame with the FPU state is 104 bytes; the fault handler's report needs more).
STACK_MARGIN_BYTES = 512


def sized_stack(peak: int) -> int:
    """The stack to reserve for a measured ``peak`` (bytes): peak + max(25 %, 512 B), rounded up
    to 8 bytes (the AAPCS stack alignment)."""
    return -(-(peak + max(peak // 4, STACK_MARGIN_BYTES)) // 8) * 8


def _measure(lib: Path, board, cpu: str, info, graph, stack_bytes, cache: dict) -> dict:
    """Run one inference of the library on QEMU (the QEMU board of ``cpu``, whatever board the
    build is for: the library's code is the same): its stack peak and its instructions, in all
    and per kernel.  Returns ``{"skipped": why}`` where QEMU is missing or too slow."""
    from tbn_tvm.targets.cortex_m import build_firmware, get_board, run_qemu
    from tbn_tvm.targets.cortex_m.toolchain import find_qemu

    try:
        find_qemu()
    except TBNError:
        return {"skipped": "qemu-system-arm not found: stack not measured, the board's default kept"}
    qboard = get_board(cpu, stack_bytes=stack_bytes)
    probe_dir = Path(tempfile.mkdtemp(prefix="tbn-measure-"))
    try:
        elf = probe_dir / FIRMWARE
        try:
            build_firmware(lib, qboard, elf, mode="semihost", object_cache=cache, stack_bytes=stack_bytes)
        except TBNError as e:
            if "does not fit" not in str(e):
                raise
            return {"skipped": f"the model does not fit {qboard.name}, the QEMU board that measures it"}
        x = np.random.default_rng(0).standard_normal((1, info.input_size)).astype(np.float32)
        kernels = list(dict.fromkeys(step.kernel for step in graph.steps))
        try:
            _, stats = run_qemu(
                elf,
                qboard,
                x,
                count_instructions=True,
                per_kernel=kernels,
                timeout_s=MEASURE_TIMEOUT_S,
                timeout_per_sample=MEASURE_TIMEOUT_S,
            )
        except TBNError as e:
            if "did not finish" in str(e):
                return {"skipped": f"one inference took over {MEASURE_TIMEOUT_S:g} s on QEMU: not measured"}
            raise
    finally:
        shutil.rmtree(probe_dir, ignore_errors=True)
    ins = stats["instructions"]
    out = {
        "on": f"qemu {qboard.qemu_machine}",
        "stack_peak_bytes": stats["stack_peak_bytes"],
        "instructions_per_inference": int(ins["mean"]),
        "counts": ins,  # per call site: the steps' figures (taken out of the manifest)
    }
    out.update(cycle_figures(ins))
    return out


def cycle_figures(ins: dict) -> dict:
    """The estimated cycles per inference of a run's ``instructions`` stats (the QEMU plugin's
    Cortex-M4 and Cortex-M7 estimates, :data:`~tbn_tvm.targets.cortex_m.qemu.CYCLES_MODEL`):
    ``estimated_cycles_m4_per_inference``, ``estimated_cycles_m7_per_inference`` (means over
    the samples, whole cycles) and ``cycles_model``; ``{}`` when the plugin gave none."""
    from tbn_tvm.targets.cortex_m.qemu import CYCLES_MODEL

    est = ins.get("estimated_cycles")
    if not est:
        return {}
    out = {f"estimated_cycles_{cpu[-2:]}_per_inference": round(v["mean"]) for cpu, v in est.items()}
    out["cycles_model"] = CYCLES_MODEL
    return out


#: Builds tried when the firmware does not fit the RAM: each gives up the arena bytes it
#: missed by (the stack, measured after the first, is only estimated before it).
FIT_ATTEMPTS = 3
#: RAM the firmware needs besides the arena, the input and output buffers and the stack
#: (newlib-nano's data, the firmware's statistics and messages), an upper estimate in bytes.
FIRMWARE_RAM = 512
#: The stack the activation plan reserves before QEMU measured it (bytes).
STACK_ESTIMATE = 2048


def _board_for_limits(name, limits: dict, measure: bool):
    """The board with the user's limits.  A RAM limit below the profile's default stack (16
    KiB on the QEMU boards) is fine when the build measures its stack: the board takes a
    provisional stack of a quarter of the RAM until QEMU measured the real one."""
    from tbn_tvm.targets.cortex_m import get_board

    try:
        return get_board(name, **limits)
    except TBNError:
        ram = limits.get("ram_bytes")
        if not measure or ram is None or limits.get("stack_bytes") is not None:
            raise
        return get_board(name, **{**limits, "stack_bytes": max(256, ram // 4 // 8 * 8)})


def _ram_overflow(message: str) -> int | None:
    """Bytes of RAM a 'does not fit' error says the firmware lacks (None: another error)."""
    m = re.search(r"and (?:about )?([\d,]+) bytes of RAM \(available ([\d,]+)", message)
    if not m or "does not fit" not in message:
        return None
    need, have = int(m.group(1).replace(",", "")), int(m.group(2).replace(",", ""))
    return need - have if need > have else None


def _can_patch(prepared) -> bool:
    from tbn_tvm.targets.clib import patchwise

    return bool(patchwise.find_stages(prepared.mod, prepared.layers))


def _fit_activations(prepared, brd, limits: dict, measure: bool, shrink: int, half: bool = False):
    """The lowered graph to build: layer by layer when its arena fits the RAM the board leaves
    for it, else the cheapest patch-wise plan whose arena does (:mod:`tbn_tvm.targets.clib.
    patchwise`).  Returns ``(graph, patch)`` with ``patch`` the manifest's description of the
    plan (None: layer by layer) and the layer-by-layer graph.  Raises TBNError when no plan
    fits."""
    from tbn_tvm import progress
    from tbn_tvm.passes.pipeline import lower_mcu
    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.targets.clib import patchwise
    from tbn_tvm.targets.clib.driver import arena_plan
    from tbn_tvm.targets.clib.lower import extract, kernels_to_c

    def lowered(mod):
        g = extract(lower_mcu(mod), prepared.const_names)
        if half:  # the arena's tensors as float16 (tbn_tvm.targets.clib.half)
            from tbn_tvm.targets.clib.half import half_values, with_half_values

            g = with_half_values(g, half_values(g))
        return g

    fp32 = extract(lower_mcu(prepared.mod), prepared.const_names)
    graph = lowered(prepared.mod) if half else fp32
    ins = [v for v in graph.values.values() if v.kind == "input"]
    io = sum(v.nbytes for v in ins) + sum(graph.values[o].nbytes for o in graph.outputs)
    stack = limits.get("stack_bytes") or (STACK_ESTIMATE if measure else brd.stack_bytes)
    budget = brd.ram_bytes - io - stack - FIRMWARE_RAM - shrink
    if arena_plan(graph).arena <= budget:
        return graph, None, graph, fp32

    def scheduled(g):
        return {k: schedule_prim_mcu(f) for k, f in g.kernels.items()}

    whole = arena_plan(graph, scheduled(graph)).arena
    if whole <= budget:
        return graph, None, graph, fp32
    progress.stage("patch-wise plan")
    # the kernels' scratch memory is static RAM too (the layer-by-layer build's: tiles ask no more)
    budget -= kernels_to_c(graph.kernels, schedule_prim_mcu).workspace_bytes
    act = 2 if half else 4
    stages = patchwise.find_stages(prepared.mod, prepared.layers)
    rest = {st.output.name: patchwise.rest_arena(prepared.mod, st, act) for st in stages}
    plans = patchwise.candidates(stages, rest, budget, act)
    tried = []
    for p in plans[:PATCH_TRIES]:
        g = lowered(patchwise.apply(prepared.mod, p))
        arena = arena_plan(g, scheduled(g)).arena
        tried.append(arena)
        if arena <= budget:
            desc = p.describe()
            places = [i for i, st in enumerate(g.steps) if st.kernel.startswith("tbn_place")]
            desc["stage_steps"] = places[-1] + 1
            desc.update(
                {
                    "arena_bytes": arena,
                    "layer_by_layer_arena_bytes": whole,
                    "arena_budget_bytes": budget,
                    "estimated_macs": p.macs,
                    "layer_by_layer_macs": p.full_macs,
                }
            )
            return g, desc, graph, fp32
    smallest = min(
        (
            patchwise.estimate(st, (st.output.shape[2], st.output.shape[3]), rest[st.output.name], act)
            for st in stages
        ),
        key=lambda p: p.arena_estimate,
        default=None,
    )
    raise patchwise.describe_error(stages, budget, smallest, whole, min(tried, default=None))


#: Patch-wise plans whose real arena is checked (best estimates first) before giving up.
PATCH_TRIES = 6


def _recompute_overhead(patch: dict, steps: list[dict]) -> dict:
    """The measured instructions of a patch-wise stage's steps, and of those that only copy
    (tiles sliced for a consumer, tiles placed into the stage's output)."""
    stage = steps[: patch.get("stage_steps", 0)]
    copies = sum(
        s.get("instructions") or 0
        for s in stage
        if s["kernel"].startswith(("tbn_place", "strided_slice")) and not s["layers"]
    )
    return {"stage_instructions": sum(s.get("instructions") or 0 for s in stage), "copy_instructions": copies}


#: Random samples the float16 accuracy is measured on when no calibration is given.
CALIBRATION_SAMPLES = 8
#: The most samples of a calibration file used (the first ones).
CALIBRATION_MAX = 256


def _calibration_samples(calibration, inp, half: bool):
    """The ``[N, input size]`` float32 samples of ``calibration`` (a ``.npy`` path or an array
    of ``[N, *input shape]``, ``[N, *input shape[1:]]`` or one sample), at most
    :data:`CALIBRATION_MAX`; random N(0, 1) ones (seed 0) when None.  Raises TBNError for a
    file that cannot be read, the wrong size or non-finite values, and for calibration without
    float16 activations."""
    size = int(np.prod(inp.shape))
    if calibration is None:
        return np.random.default_rng(0).standard_normal((CALIBRATION_SAMPLES, size)).astype(np.float32)
    if not half:
        raise TBNError("calibration samples measure float16 activations", hint="add --activations float16")
    if isinstance(calibration, str | Path):
        path = Path(calibration)
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise TBNError(
                f"cannot read the calibration file {path.name}: {' '.join(str(e).split())}"
            ) from None
    else:
        arr = np.asarray(calibration)
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "fiu" or arr.size == 0 or arr.size % size:
        raise TBNError(
            f"calibration samples must be numbers, [N, {', '.join(map(str, inp.shape))}]; got "
            f"{getattr(arr, 'dtype', type(arr))}{list(getattr(arr, 'shape', []))}"
        )
    x = arr.astype(np.float32).reshape(-1, size)[:CALIBRATION_MAX]
    if not np.isfinite(x).all():
        raise TBNError("the calibration samples hold NaN or infinite values")
    return x


def _qemu_outputs(lib: Path, cpu: str, x: np.ndarray) -> tuple[np.ndarray, dict]:
    """Run the library ``lib`` on the QEMU board of ``cpu`` over the samples ``x``, counting
    instructions: its outputs ``[N, outputs]`` and the run's statistics."""
    from tbn_tvm.targets.cortex_m import build_firmware, get_board, run_qemu

    qboard = get_board(cpu)
    tmp = Path(tempfile.mkdtemp(prefix="tbn-ref-"))
    try:
        elf = tmp / FIRMWARE
        build_firmware(lib, qboard, elf, mode="semihost")
        return run_qemu(elf, qboard, x, count_instructions=True, timeout_per_sample=MEASURE_TIMEOUT_S)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _half_accuracy(lib: Path, fp32_graph, schedule, cpu: str, x: np.ndarray, output) -> dict:
    """The accuracy cost of a float16-activation library ``lib``: its outputs on ``x`` against
    those of the same model's float32 layer-by-layer build (the exact ones: a patch-wise
    float32 build computes the same sums), both on QEMU (:func:`tbn_tvm.targets.clib.half.
    accuracy`).  ``{"skipped": why}`` where QEMU is missing."""
    from tbn_tvm.targets.clib.driver import write_library
    from tbn_tvm.targets.clib.half import accuracy
    from tbn_tvm.targets.clib.lower import kernels_to_c
    from tbn_tvm.targets.cortex_m.toolchain import find_qemu

    try:
        find_qemu()
    except TBNError:
        return {"skipped": "qemu-system-arm not found: the float16 accuracy is not measured"}
    y16, _ = _qemu_outputs(lib, cpu, x)
    tmp = Path(tempfile.mkdtemp(prefix="tbn-fp32-"))
    try:
        ref = tmp / LIB_DIR
        ref.mkdir()
        write_library(fp32_graph, kernels_to_c(fp32_graph.kernels, schedule), ref)
        y32, _ = _qemu_outputs(ref, cpu, x)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shape = tuple(output.shape)
    out = accuracy(y16, y32, int(shape[-1]) if shape else 1)
    out["against"] = "the float32 build's outputs on QEMU"
    return out


def _layer_by_layer_figures(graph, schedule, brd, cpu: str, measured: dict) -> dict:
    """The layer-by-layer build of a model built patch-wise, measured on QEMU like the build
    (its library is written and run once, never kept): its instructions and estimated cycles
    per inference, and what the patch-wise build spends over them (halos recomputed, tiles
    sliced and placed)."""
    from tbn_tvm.targets.clib.driver import write_library
    from tbn_tvm.targets.clib.lower import kernels_to_c

    tmp = Path(tempfile.mkdtemp(prefix="tbn-lbl-"))
    try:
        lib = tmp / LIB_DIR
        lib.mkdir()
        if any(v.dtype == "float16" and v.kind == "tensor" for v in graph.values.values()):
            from tbn_tvm.targets.clib.half import half_kernels

            graph, funcs = half_kernels(graph, {k: schedule(f) for k, f in graph.kernels.items()})
            source = kernels_to_c(funcs, None)
        else:
            source = kernels_to_c(graph.kernels, schedule)
        info = write_library(graph, source, lib)
        _write_build_files(lib)
        whole = _measure(lib, brd, cpu, info, graph, None, {})
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if whole.get("skipped") or "instructions_per_inference" not in measured:
        return {}
    out = {
        "layer_by_layer_instructions": whole["instructions_per_inference"],
        "recompute_overhead_instructions": measured["instructions_per_inference"]
        - whole["instructions_per_inference"],
    }
    for key in ("estimated_cycles_m4_per_inference", "estimated_cycles_m7_per_inference"):
        if key in whole and key in measured:
            out[f"layer_by_layer_{key}"] = whole[key]
            out[f"recompute_overhead_{key.replace('_per_inference', '')}"] = measured[key] - whole[key]
    return out


#: Wall-clock limit of the build-time QEMU measurement (a larger model is built unmeasured).
MEASURE_TIMEOUT_S = 120.0


def _tuned_schedule(spec: TargetSpec, tuning_db, kernels: dict):
    """A schedule function that uses a tuning record where the database has one for a kernel and
    it beats the hand schedule's instruction count; the kernels that got one; the kernels whose
    record was no better than the hand schedule (which they keep)."""
    import tvm

    from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
    from tbn_tvm.schedules.qemu_runner import INSTRUCTIONS_PER_SECOND
    from tbn_tvm.schedules.records import (
        open_database,
        read_baselines,
        record_beats_default,
        target_key,
        tuning_target,
        workload_key,
    )

    db = open_database(tuning_db, create=False)
    target = tuning_target(spec)
    baselines = read_baselines(tuning_db, target_key(target))
    chosen: dict[int, object] = {}
    tuned: list[str] = []
    kept: list[str] = []
    for name, prim in kernels.items():
        mod = tvm.IRModule({"main": prim.with_attr("global_symbol", "main")})
        try:
            record = db.query_tuning_record(mod, target, "main")
            sch = db.query_schedule(mod, target, "main") if record is not None else None
        except Exception:  # noqa: BLE001 - a record that does not replay on this kernel
            record, sch = None, None
        if sch is None or not record.run_secs:
            continue
        # instruction counts are exact: a record is applied where it takes fewer than the
        # default schedule (a kernel without a counted default keeps it)
        if not record_beats_default(baselines.get(workload_key(mod)), record, INSTRUCTIONS_PER_SECOND):
            kept.append(name)
            continue
        chosen[id(prim)] = sch.mod["main"]
        tuned.append(name)

    def schedule(prim):
        return chosen.get(id(prim)) or schedule_prim_mcu(prim)

    return schedule, sorted(tuned), sorted(kept)


_CORTEX_M = {"cortex-m4": "cortex-m4", "cortex-m7": "cortex-m7", "m4": "cortex-m4", "m7": "cortex-m7"}
_TRIPLES = ("thumbv7em-none-eabihf", "thumbv7em-none-eabi")


def cortex_m_spec(cpu: str) -> TargetSpec:
    """The target spec of a Cortex-M CPU (``cortex-m4`` / ``cortex-m7``), hard-float ABI."""
    return TargetSpec(
        "cortex-m",
        cpu,
        {"kind": "llvm", "mtriple": "thumbv7em-none-eabihf", "mcpu": cpu, "mfloat-abi": "hard"},
        cpu=cpu,
    )


class CortexMBackend(Backend):
    """Holds the built library and firmware until :meth:`save`; runs them on QEMU or a board."""

    family = "cortex-m"
    target_names = "cortex-m4, cortex-m7, thumbv7em-none-eabihf --mcpu cortex-m4|cortex-m7"
    pass_options = {"simd": False, "default_form": "bitserial"}
    compile_options = {
        "board": Option(None, "board profile (flash/RAM limits, UART); default: the QEMU board of the CPU"),
        "flash_size": Option(None, "flash limit in bytes, or with K/M (e.g. 512K)"),
        "ram_size": Option(None, "RAM limit in bytes, or with K/M"),
        "stack_size": Option(
            None, "stack reserved in RAM, in bytes or with K (default: the measured peak plus a margin)"
        ),
        "tuning_db": Option(None, "a tuning database written by 'tbn-tvm tune --target cortex-m4'"),
        "measure": Option(
            True,
            "run one inference on QEMU at build time: size the stack from its peak, record "
            "instructions per layer (skipped, with a note, where QEMU is missing)",
        ),
        "uart_driver": Option(
            None,
            "a C file implementing tbn_uart_init/tbn_uart_putc/tbn_uart_getc for the board's UART: "
            "also build firmware_uart.elf with it (boards without a shipped driver)",
        ),
        "activations": Option(
            "float32",
            "how the arena stores activations: float32 (default, exact) or float16 (IEEE half, half the "
            "RAM; kernels still compute in float32; the build reports the accuracy cost)",
        ),
        "calibration": Option(
            None,
            "float16 activations: samples (a .npy file or an array, [N, *input shape]) on which the build "
            "measures the accuracy cost against float32 (default: 8 random N(0, 1) inputs)",
        ),
    }
    run_options = {
        "qemu": Option(True, "run the firmware on QEMU (the default when no port is given)"),
        "port": Option(None, "serial port of a flashed board, e.g. /dev/ttyACM0 (instead of QEMU)"),
        "baud": Option(115200, "UART baud rate for a board"),
        "count_instructions": Option(False, "QEMU: count the instructions of each inference"),
        "per_layer": Option(False, "QEMU: count instructions per layer too (implies count_instructions)"),
        "timeout": Option(None, "seconds the whole QEMU/board run may take (default: no whole-run limit)"),
        "timeout_per_sample": Option(
            None,
            "seconds each sample may take on QEMU or the board before the run is declared hung "
            "(default: 60 on QEMU, 10 on a board)",
        ),
    }

    def __init__(
        self,
        spec: TargetSpec,
        board,
        staging: Path | None = None,
        out_dir: Path | None = None,
        manifest: dict | None = None,
    ) -> None:
        self.spec = spec
        self.board = board
        self._staging = staging  # a temp dir with lib/ and the ELFs, before save()
        self._finalizer = (
            weakref.finalize(self, shutil.rmtree, staging, True) if staging is not None else None
        )
        self._dir = out_dir  # a saved artifact directory
        self.manifest = manifest or {}

    # ------------------------------------------------------------------ targets
    @classmethod
    def resolve(cls, target, mcpu: str | None) -> TargetSpec | None:
        if isinstance(target, dict):
            if target.get("kind") == "llvm" and "thumb" in str(target.get("mtriple", "")):
                cpu = _CORTEX_M.get(str(target.get("mcpu", "")).lower())
                if cpu is None:
                    raise TBNError("a thumbv7em target needs mcpu cortex-m4 or cortex-m7")
                return cortex_m_spec(cpu)
            return None
        low = target.lower()
        if low in _CORTEX_M:
            cpu = _CORTEX_M[low]
            if mcpu is not None and _CORTEX_M.get(mcpu.lower()) != cpu:
                raise TBNError(f"--mcpu {mcpu} contradicts the target {target}")
            return cortex_m_spec(cpu)
        if low in _TRIPLES:
            if mcpu is None:
                raise TBNError(f"target {target} needs --mcpu cortex-m4 or --mcpu cortex-m7")
            cpu = _CORTEX_M.get(mcpu.lower())
            if cpu is None:
                raise TBNError(f"unknown --mcpu '{mcpu}'", hint="use cortex-m4 or cortex-m7")
            return cortex_m_spec(cpu)
        return None

    # ------------------------------------------------------------------ build
    @classmethod
    def create(
        cls,
        spec: TargetSpec,
        prepared,
        inputs,
        outputs,
        *,
        board=None,
        flash_size=None,
        ram_size=None,
        stack_size=None,
        tuning_db=None,
        measure=True,
        uart_driver=None,
        activations="float32",
        calibration=None,
    ) -> tuple[CortexMBackend, dict]:
        from tbn_tvm import progress
        from tbn_tvm.schedules.cortex_m import schedule_prim_mcu
        from tbn_tvm.targets.clib.driver import write_library
        from tbn_tvm.targets.clib.lower import kernels_to_c
        from tbn_tvm.targets.cortex_m import build_firmware, ensure_toolchain, get_board

        if len(inputs) != 1 or len(outputs) != 1:
            raise TBNError("the Cortex-M back end supports models with exactly one input and one output")
        for kind, t in (("input", inputs[0]), ("output", outputs[0])):
            if 0 in tuple(t.shape):  # TVM would leave a workspace call the firmware cannot link
                raise TBNError(
                    f"{kind} '{t.name}' has shape [{', '.join(map(str, t.shape))}], with no elements; "
                    "the Cortex-M back end builds tensors of at least one element",
                    hint="re-export the model with every dimension at least 1",
                )
        if activations not in ("float32", "float16"):
            raise TBNError(f"unknown activations '{activations}'", hint="use float32 or float16")
        half = activations == "float16"
        samples = _calibration_samples(calibration, inputs[0], half)
        limits = {
            "flash_bytes": parse_size(flash_size),
            "ram_bytes": parse_size(ram_size),
            "stack_bytes": parse_size(stack_size),
        }
        brd = _board_for_limits(board or spec.cpu, limits, measure)
        if brd.cpu != spec.cpu:
            raise TBNError(f"board {brd.name} has a {brd.cpu}, but the target is {spec.cpu}")
        if uart_driver is not None:
            from tbn_tvm.targets.cortex_m.firmware import _uart_hal

            uart_driver = _uart_hal(brd, "uart", uart_driver)  # a readable .c file, checked first
        ensure_toolchain(install=False, need_qemu=False)
        progress.stage("C code")
        stack_given = limits["stack_bytes"]
        shrink = 0  # arena bytes to give up after a firmware that did not fit the RAM
        for attempt in range(FIT_ATTEMPTS):
            graph, patch, whole_graph, fp32_graph = _fit_activations(
                prepared, brd, limits, measure, shrink, half
            )
            schedule, tuned, kept = schedule_prim_mcu, [], []
            if tuning_db is not None:
                schedule, tuned, kept = _tuned_schedule(spec, tuning_db, graph.kernels)
            if half:  # kernels scheduled, then their float16 arguments widened / rounded
                from tbn_tvm.targets.clib.half import half_kernels

                graph, funcs = half_kernels(graph, {k: schedule(f) for k, f in graph.kernels.items()})
                kernels = kernels_to_c(funcs, None)
            else:
                kernels = kernels_to_c(graph.kernels, schedule)
            staging = Path(tempfile.mkdtemp(prefix="tbn-cm-"))
            try:
                lib = staging / LIB_DIR
                lib.mkdir()
                info = write_library(graph, kernels, lib)
                _write_build_files(lib)
                cache: dict = {}
                measured = None
                limits["stack_bytes"] = stack_given
                brd = _board_for_limits(board or spec.cpu, limits, measure)
                if measure:
                    progress.stage("measure")
                    measured = _measure(lib, brd, spec.cpu, info, graph, limits["stack_bytes"], cache)
                    if limits["stack_bytes"] is None and "stack_peak_bytes" in measured:
                        limits["stack_bytes"] = sized_stack(measured["stack_peak_bytes"])
                        brd = get_board(board or spec.cpu, **limits)
                        measured["stack_bytes"] = limits["stack_bytes"]
                progress.stage("firmware")
                size = build_firmware(
                    lib, brd, staging / FIRMWARE, mode="semihost", object_cache=cache, **limits
                )
                break
            except TBNError as e:
                shutil.rmtree(staging, ignore_errors=True)
                over = _ram_overflow(str(e))
                if over is None or attempt == FIT_ATTEMPTS - 1 or not _can_patch(prepared):
                    raise
                shrink += over + 256
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
        try:
            extra = {
                "board": brd.name,
                "qemu_machine": brd.qemu_machine,
                "memory": size.to_dict(),
                "flash_bytes": size.flash,
                "ram_bytes": size.ram,
                "arena_bytes": info.arena_bytes,
                "arena_plan": {
                    "planner": "greedy by size over tensor lifetimes (TFLite Micro's GreedyMemoryPlanner), "
                    "outputs in place of an element-wise input that dies at their step",
                    "tensors": info.tensors,
                },
                "workspace_bytes": info.workspace_bytes,
                "stack_bytes": brd.stack_bytes,
                "library_weight_bytes": info.weight_bytes,
                "firmware": FIRMWARE,
                "library": LIB_DIR,
            }
            if measured:
                extra["measured"] = measured
            if patch is not None:
                extra["patchwise"] = patch
            extra["activations"] = activations
            if half:
                acc = _half_accuracy(lib, fp32_graph, schedule, spec.cpu, samples, outputs[0])
                if calibration is None:
                    acc["inputs"] = f"{len(samples)} random N(0, 1) inputs"
                elif isinstance(calibration, str | Path):
                    acc["inputs"] = f"{len(samples)} samples of {Path(calibration).name}"
                else:
                    acc["inputs"] = f"{len(samples)} given samples"
                extra["activation_accuracy"] = acc
            if uart_driver is not None or (brd.qemu_machine is not None and brd.uart_driver is not None):
                build_firmware(
                    lib,
                    brd,
                    staging / FIRMWARE_UART,
                    mode="uart",
                    uart_hal=uart_driver,
                    object_cache=cache,
                    **limits,
                )
                extra["firmware_uart"] = FIRMWARE_UART
                if uart_driver is not None:  # its name and content, never a machine path
                    import hashlib

                    extra["uart_driver"] = {
                        "file": uart_driver.name,
                        "sha256": hashlib.sha256(uart_driver.read_bytes()).hexdigest(),
                    }
            from tbn_tvm.versions import toolchain_versions

            tools = toolchain_versions()
            extra["versions"] = {"arm_gcc": tools["arm_gcc"]}
            if measured and not measured.get("skipped"):  # QEMU ran at build time
                extra["versions"]["qemu"] = tools["qemu"]
            extra["steps"] = _layer_sizes(graph, info, size)
            counts = (measured or {}).pop("counts", None)
            if counts:
                for step, got in zip(
                    extra["steps"], per_step_instructions(extra["steps"], counts), strict=True
                ):
                    step["instructions"] = got["instructions"]
                    step["kernel_instructions"] = got["kernel_instructions"]
                    for key in ("estimated_cycles_m4", "estimated_cycles_m7"):
                        if key in got:
                            step[key] = got[key]
                measured["instructions_after_last_call"] = counts["after_last_call"]
                if counts.get("cycles_after_last_call"):
                    measured["cycles_after_last_call"] = counts["cycles_after_last_call"]
                if patch is not None:
                    patch.update(_recompute_overhead(patch, extra["steps"]))
                    patch.update(_layer_by_layer_figures(whole_graph, schedule, brd, spec.cpu, measured))
            if tuning_db is not None:
                from tbn_tvm.schedules.records import layers_of

                extra["tuning"] = {
                    "kernels": tuned,
                    "kept_default": kept,
                    "layers": sorted({n for k in tuned for n in layers_of(k, prepared.layers)}),
                }
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        backend = cls(spec, brd, staging=staging)
        backend.manifest = extra
        return backend, extra

    def close(self) -> None:
        """Remove the staging directory of a build not saved yet (also done at exit)."""
        finalizer = getattr(self, "_finalizer", None)
        if finalizer is not None:
            finalizer()

    def _path(self, name: str) -> Path:
        base = self._dir if self._dir is not None else self._staging
        return base / name

    # ------------------------------------------------------------------ persistence
    def save(self, out_dir: Path) -> dict:
        shutil.copytree(self._path(LIB_DIR), out_dir / LIB_DIR)
        files = {"artifact": FIRMWARE}
        for name in (FIRMWARE, FIRMWARE_UART):
            if self._path(name).exists():
                shutil.copy2(self._path(name), out_dir / name)
        return files

    @classmethod
    def load(cls, spec: TargetSpec, out_dir: Path, manifest: dict) -> CortexMBackend:
        from tbn_tvm.targets.cortex_m import get_board

        if not (out_dir / manifest.get("firmware", FIRMWARE)).exists():
            raise TBNError(f"{out_dir}: {FIRMWARE} is missing", hint="compile the model again")
        return cls(spec, get_board(manifest.get("board") or spec.cpu), out_dir=out_dir, manifest=manifest)

    # ------------------------------------------------------------------ running
    def run(
        self,
        arrays: list[np.ndarray],
        *,
        qemu: bool = True,
        port: str | None = None,
        baud: int = 115200,
        count_instructions: bool = False,
        per_layer: bool = False,
        timeout: float | None = None,
        timeout_per_sample: float | None = None,
    ) -> tuple[list[np.ndarray], dict]:
        """Run on QEMU (default) or on the board at ``port`` over UART.  ``per_layer`` adds
        ``instructions_per_layer``: per kernel call of ``model.c`` (call site), its layers and
        mean instructions per inference (the driver's set-up of the call and the kernel; with
        ``instructions_after_last_call`` they add up to ``instructions_per_inference``) and
        those of the kernel alone."""
        from tbn_tvm.targets.cortex_m import run_qemu, run_uart

        x = np.ascontiguousarray(arrays[0], dtype=np.float32)
        n = x.shape[0]
        steps = self.manifest.get("steps", [])
        if per_layer and not steps:
            raise TBNError("this build's manifest lists no kernels to count", hint="compile it again")
        if port:
            if count_instructions or per_layer:
                raise TBNError("instructions are counted on QEMU only; a board reports cycles")
            y, stats = run_uart(
                port, x.reshape(n, -1), baudrate=baud, timeout_s=timeout_per_sample, total_timeout_s=timeout
            )
        else:
            y, stats = run_qemu(
                self._path(FIRMWARE),
                self.board,
                x.reshape(n, -1),
                count_instructions=count_instructions or per_layer,
                per_kernel=list(dict.fromkeys(s["kernel"] for s in steps)) if per_layer else (),
                timeout_s=timeout,
                timeout_per_sample=timeout_per_sample,
            )
        out_shape = getattr(self, "output_shape", None)
        y = np.asarray(y, dtype=np.float32)
        if out_shape is not None:
            y = y.reshape(n, *out_shape)
        flat = {"device": port if port else "qemu " + (self.board.qemu_machine or "")}
        ins = stats.get("instructions")
        if ins:
            flat["instructions_per_inference"] = round(
                ins["mean"]
            )  # whole instructions (a mean over the samples)
            flat["instructions_min"] = ins.get("min")
            flat["instructions_max"] = ins.get("max")
            flat.update(cycle_figures(ins))
        if per_layer:  # per call site, in the order of model.c
            flat["instructions_per_layer"] = per_step_instructions(steps, ins)
            flat["instructions_after_last_call"] = ins["after_last_call"]
            if ins.get("cycles_after_last_call"):
                flat["cycles_after_last_call"] = ins["cycles_after_last_call"]
        for key in ("stack_peak_bytes", "cycles", "wall_s"):
            if stats.get(key) is not None:
                flat[key] = stats[key]
        return [y], flat


_MAKEFILE = """\
# tbn_model.mk: build the tbn-tvm model library into your firmware (GNU make, arm-none-eabi-gcc).
# In your Makefile, after setting CC and your CPU flags in CFLAGS:
#   include path/to/OUT_DIR/lib/tbn_model.mk
#   OBJS   += $(TBN_OBJS)      # the library's objects, built into $(TBN_BUILD_DIR)
#   CFLAGS += $(TBN_CFLAGS)    # -I for model.h, for your sources that call tbn_model_run
#   LDLIBS += $(TBN_LDLIBS)    # -lm: the kernels call libm (expf, sqrtf, ...)
# The library's objects get your CFLAGS plus TBN_LIB_CFLAGS (every generated source builds
# warning-free under -Wall -Wextra -Werror on its own, so those stay usable in CFLAGS;
# -ffp-contract=off: each operator rounds its result, as ONNX does, with no fused multiply-add
# across two of them).
TBN_LIB_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
TBN_SAVED_GOAL := $(.DEFAULT_GOAL)
TBN_BUILD_DIR ?= build/tbn_model
TBN_SRCS := $(sort $(wildcard $(TBN_LIB_DIR)/*.c))
TBN_OBJS := $(patsubst $(TBN_LIB_DIR)/%.c,$(TBN_BUILD_DIR)/%.o,$(TBN_SRCS))
TBN_CFLAGS := -I$(TBN_LIB_DIR)
TBN_LIB_CFLAGS := -std=gnu11 -O2 -ffp-contract=off -ffunction-sections -fdata-sections -mfp16-format=ieee
TBN_LDLIBS := -lm

$(TBN_OBJS): $(TBN_BUILD_DIR)/%.o: $(TBN_LIB_DIR)/%.c $(wildcard $(TBN_LIB_DIR)/*.h)
\t@mkdir -p $(dir $@)
\t$(CC) $(CPPFLAGS) $(CFLAGS) $(TBN_LIB_CFLAGS) -I$(TBN_LIB_DIR) -c $< -o $@

.DEFAULT_GOAL := $(TBN_SAVED_GOAL)
"""

_CMAKE = """\
# CMakeLists.txt: build the tbn-tvm model library into your firmware (CMake >= 3.13,
# arm-none-eabi toolchain file).  In your CMakeLists.txt:
#   add_subdirectory(path/to/OUT_DIR/lib tbn_model)
#   target_link_libraries(your_firmware PRIVATE tbn_model)
# This links libm too (the kernels call expf, sqrtf, ...).  Every generated source builds
# warning-free under -Wall -Wextra -Werror, so those stay usable in your flags.
cmake_minimum_required(VERSION 3.13)
file(GLOB TBN_MODEL_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.c)
add_library(tbn_model STATIC ${TBN_MODEL_SOURCES})
target_include_directories(tbn_model PUBLIC ${CMAKE_CURRENT_LIST_DIR})
target_compile_options(tbn_model PRIVATE -O2 -ffp-contract=off -ffunction-sections -fdata-sections -mfp16-format=ieee)
set_property(TARGET tbn_model PROPERTY C_STANDARD 11)
target_link_libraries(tbn_model PUBLIC m)
"""


def _write_build_files(lib: Path) -> None:
    (lib / "tbn_model.mk").write_text(_MAKEFILE)
    (lib / "CMakeLists.txt").write_text(_CMAKE)
