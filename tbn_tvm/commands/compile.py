"""``tbn-tvm compile MODEL.onnx --target TARGET -o OUT_DIR``."""

from __future__ import annotations

import json
import sys

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError


def _board_target(board: str | None) -> str:
    """The target a ``--board`` implies (its CPU), or ``llvm`` without one."""
    if board is None:
        return "llvm"
    from tbn_tvm.targets.cortex_m.boards import get_board

    return get_board(board).cpu


@command("compile", help="Compile an ONNX model for a target and write the artifact + manifest.json")
@arg("model", metavar="MODEL.onnx", help="the ONNX model")
@arg(
    "--target",
    "-t",
    default=None,
    help="llvm (host), a TVM target string ('llvm -mcpu=skylake'), an LLVM triple (aarch64-linux-gnu, ...), "
    "cortex-m4, cortex-m7, thumbv7em-none-eabihf with --mcpu, cuda (--arch sm_80|sm_90); see 'tbn-tvm "
    "targets' (default: the "
    "--board's target, else llvm)",
)
@arg(
    "--mcpu",
    default=None,
    help="CPU to build for: on the host an LLVM CPU name (x86-64-v3, skylake), 'generic' for portable code "
    "or 'native' (default for llvm: this machine's CPU); cortex-m4 or cortex-m7 for a thumbv7em-none-eabihf triple; for cuda the same "
    "as --arch",
)
@arg(
    "--arch",
    default=None,
    metavar="SM",
    help="cuda: the GPU architecture, sm_80 (A100) or sm_90 (H100, H200; the default), as nvcc and TVM "
    "call it",
)
@arg(
    "-o",
    "--output",
    required=True,
    metavar="OUT_DIR",
    help="output directory, written all at once; an earlier tbn-tvm output there is replaced, a directory "
    "holding other files is refused (see --force)",
)
@arg("--force", action="store_true", help="replace OUT_DIR even if it holds files tbn-tvm did not write")
@arg("--input-shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
@arg(
    "--board",
    default=None,
    metavar="NAME",
    help="Cortex-M board profile (flash/RAM limits, UART); implies its target (see 'tbn-tvm targets')",
)
@arg(
    "--uart-driver",
    default=None,
    metavar="FILE.c",
    help="Cortex-M: a C file implementing tbn_uart_init/putc/getc for the board's UART; also builds "
    "firmware_uart.elf with it, for 'tbn-tvm run --port' (see docs/cortex-m.md)",
)
@arg("--flash-size", type=str, default=None, help="Cortex-M flash limit in bytes (or 512K, 1M)")
@arg("--ram-size", type=str, default=None, help="Cortex-M RAM limit in bytes (or 128K)")
@arg(
    "--stack-size",
    type=str,
    default=None,
    help="Cortex-M stack in bytes (or 4K); default: the peak measured on QEMU at build time plus a margin",
)
@arg(
    "--no-measure",
    action="store_true",
    help="Cortex-M: skip the build-time QEMU inference (stack: the board's default; no per-layer counts)",
)
@arg(
    "--no-compress",
    action="store_true",
    help="keep every weight dense (plain TVM fp32 build, for comparison)",
)
@arg("--no-row-reuse", action="store_true", help="compute every output row (no distinct-row reuse)")
@arg(
    "--activations",
    choices=("float32", "float16"),
    default=None,
    help="Cortex-M: how the arena stores activations: float32 (default, exact) or float16 (IEEE half: half the "
    "RAM, computed in float32; the summary reports the accuracy cost)",
)
@arg(
    "--calibration",
    metavar="X.npy",
    default=None,
    help="with --activations float16: samples [N, *input shape] on which to measure the accuracy cost "
    "(default: 8 random inputs)",
)
@arg(
    "--tuning-db", metavar="DIR", default=None, help="apply the records of 'tbn-tvm tune' from this database"
)
@arg("--json", action="store_true", help="print the manifest summary as JSON")
@arg(
    "--verbose",
    "-v",
    action="store_true",
    help="also print the seconds each stage took (import, weight formats, passes, schedules, LLVM, ...)",
)
def run(args) -> int:
    from tbn_tvm import progress
    from tbn_tvm.api import compile as tbn_compile
    from tbn_tvm.commands.common import parse_shapes
    from tbn_tvm.targets import backend_class, resolve_target

    options = {}
    for key in ("board", "flash_size", "ram_size", "stack_size", "uart_driver", "activations", "calibration"):
        value = getattr(args, key)
        if value is not None:
            options[key] = value
    if args.no_measure:
        options["measure"] = False
    target = args.target if args.target is not None else _board_target(args.board)
    mcpu = args.mcpu
    if args.arch is not None:  # CUDA's word; --mcpu stays an alias for it
        family = resolve_target(target).family
        if family != "cuda":
            raise TBNError(
                f"--arch names a CUDA architecture; this is a {family} build",
                hint="for a CPU use --mcpu",
            )
        if mcpu is not None and mcpu != args.arch:
            raise TBNError(f"--arch {args.arch} and --mcpu {mcpu} disagree", hint="give --arch alone")
        mcpu = args.arch
    spec = resolve_target(target, mcpu)
    known = backend_class(spec.family).compile_options
    unknown = [key for key in options if key not in known]
    if unknown:  # name the flags, not the API's keywords
        flags = ", ".join("--" + key.replace("_", "-") for key in unknown)
        raise TBNError(
            f"{flags} {'does' if len(unknown) == 1 else 'do'} not apply to a {spec.family} build ({spec.name})",
            hint="they are for Cortex-M builds: --target cortex-m4|cortex-m7, or --board NAME alone",
        )
    with progress.stages("compile"), progress.timed() as stage_seconds:
        model = tbn_compile(
            args.model,
            spec,
            input_shapes=parse_shapes(args.input_shape),
            compress=not args.no_compress,
            reuse_rows=not args.no_row_reuse,
            tuning_db=args.tuning_db,
            **options,
        )
        progress.stage("save")
        try:
            out = model.save(args.output, force=args.force)
        finally:
            model.close()
    rep = model.report()
    if args.json:
        extra = (
            {"stage_seconds": [[name, round(secs, 3)] for name, secs in stage_seconds]}
            if args.verbose
            else {}
        )
        print(json.dumps({"output": str(out), **rep, **extra}))
        return 0
    total = rep["total"]
    layers = rep["layers"]
    board = f" (board {rep['board']})" if rep.get("board") else ""
    cpu = model.target.tvm_target.get("mcpu") if model.target.family == "host" else None
    board += f" -mcpu={cpu}" if cpu else ""
    print(
        f"compiled {rep.get('source', args.model)} for {model.target.name}{board} -> {out}", file=sys.stdout
    )
    if args.no_compress:
        print(
            f"  layers: {len(layers)}, all built dense (--no-compress): {total['fp32_bytes']:,} bytes of weights"
        )
    else:
        tiled = sum(1 for layer in layers if layer["format"] != "dense")
        print(
            f"  layers: {len(layers)} ({tiled} compact, {len(layers) - tiled} dense); weights "
            f"{total['weight_bytes']:,} bytes (fp32 {total['fp32_bytes']:,}, {total['compression']:g}x smaller)"
        )
    tuning = rep.get("tuning")
    if tuning is not None:
        n = len(tuning["kernels"])
        print(
            f"  tuning records applied to {n} kernel{'s' * (n != 1)}"
            + (f" (layers {', '.join(tuning['layers'])})" if tuning["layers"] else "")
            + (
                ""
                if n or tuning.get("kept_default")
                else "; none matched these kernels (records are per target, kernel form and shape)"
            )
        )
        kept = tuning.get("kept_default") or []
        if kept:
            print(
                f"  {len(kept)} kernel{'s' * (len(kept) != 1)} kept the default schedule: no record was "
                f"measured faster than it ({', '.join(kept)})"
            )
    if "flash_bytes" in rep:
        print(f"  flash: {rep['flash_bytes']:,} bytes")
    if "ram_bytes" in rep:
        parts = [
            f"{label} {rep[key]:,}" for key, label in (("arena_bytes", "arena"), ("stack_bytes", "stack"))
        ]
        measured = rep.get("measured") or {}
        if measured.get("stack_peak_bytes") is not None:
            parts[-1] += f" (measured peak {measured['stack_peak_bytes']:,})"
        print(f"  RAM: {rep['ram_bytes']:,} bytes ({', '.join(parts)})")
    measured = rep.get("measured") or {}
    if measured.get("skipped"):
        print(f"  not measured: {measured['skipped']}")
    elif "instructions_per_inference" in measured:
        print(
            f"  {measured['instructions_per_inference']:,} instructions per inference on {measured['on']} "
            f"(per layer: tbn-tvm inspect {out})"
        )
        if "estimated_cycles_m4_per_inference" in measured:
            print(
                f"  estimated {measured['estimated_cycles_m4_per_inference']:,} Cortex-M4 / "
                f"{measured['estimated_cycles_m7_per_inference']:,} Cortex-M7 cycles per inference "
                "(from ARM's instruction timings; no flash wait states or bus contention)"
            )
    acc = rep.get("activation_accuracy")
    if rep.get("activations") == "float16" and acc:
        if acc.get("skipped"):
            print(f"  activations: float16 (computed in float32); accuracy not measured: {acc['skipped']}")
        else:
            where = acc.get("inputs", f"{acc['samples']} samples")
            print(
                f"  activations: float16 in the arena, computed in float32: max relative error "
                f"{acc['max_rel_error']:.2e}, top-1 agreement {100 * acc['top1_agreement']:.1f} % against the "
                f"float32 build on {where}"
            )
    patch = rep.get("patchwise")
    if patch:
        from tbn_tvm.report import patchwise_line

        print(f"  {patchwise_line(patch)}")
    if rep.get("firmware_uart"):
        driver = (rep.get("uart_driver") or {}).get("file", "the shipped driver")
        print(f"  UART firmware: {rep['firmware_uart']} (UART driver: {driver}); run it with --port PORT")
    for layer in layers:  # the cost model's kernel choices (issue 23's look-up kernels)
        if layer.get("kernel_choice"):
            print(f"  kernel of {layer['name']}: {layer['kernel_choice']}")
    for note in rep.get("notes", []):
        print(f"  note: {note}")
    if args.verbose:
        total_s = sum(secs for _, secs in stage_seconds)
        print(f"  stages ({total_s:.1f} s in all, the process's start and imports before them not counted):")
        for name, secs in stage_seconds:
            print(f"    {name:<16} {secs:8.2f} s")
    return 0
