"""``tbn-tvm run OUT_DIR --input X.npy --output Y.npy [--qemu | --board PORT] [--json]``."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError


def _load_npy(path: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise TBNError(f"{p}: no such file", hint="pass a .npy file written by numpy.save")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise TBNError(f"{p}: not a readable .npy file ({' '.join(str(e).split())[:120]})") from None


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npz", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@command("run", help="Run a compiled model on stacked samples (host, QEMU or a board over UART)")
@arg("artifact", metavar="OUT_DIR", help="a directory written by 'tbn-tvm compile'")
@arg(
    "--input",
    "-i",
    action="append",
    required=True,
    metavar="[NAME=]X.npy",
    help="samples stacked on a new leading axis: [N, *input_shape]; repeat as NAME=FILE for several inputs",
)
@arg(
    "--output",
    "-o",
    metavar="Y.npy",
    help="where to write the outputs ([N, *output_shape]; .npz for several)",
)
@arg("--qemu", action="store_true", help="Cortex-M: run the firmware on QEMU (the default)")
@arg("--port", metavar="PORT", help="Cortex-M: run on a flashed board over UART (e.g. /dev/ttyACM0)")
@arg("--baud", type=int, default=None, help="UART baud rate for --port (default 115200)")
@arg("--count-instructions", action="store_true", help="QEMU: report exact instructions per inference")
@arg(
    "--per-layer",
    action="store_true",
    help="QEMU: instructions per layer too (each kernel counted from its entry through its return)",
)
@arg("--timeout", type=float, default=None, help="seconds before a QEMU/board run is declared hung")
@arg("--json", action="store_true", help="print a one-line JSON summary")
def run(args) -> int:
    from tbn_tvm.api import load

    model = load(args.artifact)
    inputs: dict[str, np.ndarray] = {}
    for item in args.input:
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            inputs[name] = _load_npy(path)
        else:
            if len(model.inputs) != 1:
                raise TBNError(
                    f"the model has {len(model.inputs)} inputs: pass --input NAME=FILE.npy for each"
                )
            inputs[model.inputs[0].name] = _load_npy(item)
    for spec in model.inputs:
        a = inputs.get(spec.name)
        if a is not None and tuple(a.shape[1:]) != spec.shape:
            shape = "x".join(map(str, spec.shape))
            raise TBNError(
                f"input '{spec.name}' has shape {'x'.join(map(str, a.shape))}; expected N x {shape} "
                "(samples stacked on a new leading axis)"
            )
    if args.qemu and args.port:
        raise TBNError("run on QEMU (--qemu) or on a board (--port), not both")
    if args.timeout is not None and not (args.timeout > 0 and args.timeout != float("inf")):
        raise TBNError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    wanted = {
        "qemu": args.qemu or None,
        "port": args.port,
        "baud": args.baud,
        "count_instructions": args.count_instructions or None,
        "per_layer": args.per_layer or None,
        "timeout": args.timeout,
    }
    run_options = {k: v for k, v in wanted.items() if v is not None}
    available = model.run_options()
    for key in run_options:
        if key not in available:
            flag = "--" + key.replace("_", "-")
            raise TBNError(
                f"{flag} is not available for a {model.target.family} build ({model.target.name})",
                hint="it applies to Cortex-M builds"
                if key in ("qemu", "port", "count_instructions", "per_layer")
                else None,
            )
    outputs = model.run(inputs, **run_options)
    stats = model.last_run_stats
    if args.output:
        out_path = Path(args.output)
        if isinstance(outputs, np.ndarray):
            _save_npy_atomic(out_path, outputs)
        elif out_path.suffix == ".npz":
            _save_npz_atomic(out_path, outputs)
        else:
            raise TBNError(
                f"the model has {len(outputs)} outputs; write them to a .npz file (--output Y.npz)"
            )
    summary = {
        "samples": stats["samples"],
        "seconds": round(stats["seconds"], 6),
        "seconds_per_inference": stats["seconds_per_inference"],
        "target": model.target.name,
    }
    summary.update({k: v for k, v in stats.items() if k not in summary})
    if args.json:
        print(json.dumps(summary))
    else:
        line = f"ran {summary['samples']} sample(s) on {model.target.name}: {summary['seconds_per_inference'] * 1e3:.3f} ms per inference"
        if "instructions_per_inference" in summary:
            line += f", {summary['instructions_per_inference']:,.0f} instructions per inference"
        if summary.get("cycles"):
            line += f", {summary['cycles']['mean']:,.0f} cycles per inference (DWT)"
        print(line + (f"; outputs -> {args.output}" if args.output else ""))
        if "instructions_per_layer" in summary:
            from tbn_tvm.report import text_table

            rows = [
                [s["kernel"], ",".join(s["layers"]) or "-", f"{s['instructions']:,.0f}"]
                for s in summary["instructions_per_layer"]
            ]
            print("\n".join(text_table(["kernel", "layers", "instructions"], rows, {2})))
    return 0
