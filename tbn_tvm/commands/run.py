"""``tbn-tvm run OUT_DIR (--input X.npy | --fill random|zeros) [--output Y.npy] [--qemu | --port PORT]``.

Without ``--output`` the outputs go to ``OUT_DIR-outputs.npy`` beside ``OUT_DIR`` (``.npz`` for
several outputs) and the summary says so.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError


def _load_npy(path: str) -> np.ndarray:
    from tbn_tvm.npyio import read_npy

    return read_npy(path)


def _save_npy_atomic(path: Path, array: np.ndarray) -> None:
    _save_atomic(path, ".npy", lambda f: np.save(f, array))


def _save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    _save_atomic(path, ".npz", lambda f: np.savez(f, **arrays))


def _save_atomic(path: Path, suffix: str, write) -> None:
    if path.is_dir():
        raise TBNError(f"{path}: is a directory", hint="pass a file name to --output")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=suffix, dir=path.parent)
    except OSError as e:
        raise TBNError(f"{path}: cannot write the outputs there ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise TBNError(f"{path}: cannot write the outputs there ({e.strerror or e})") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _filled(specs, fill: str, n: int, seed: int) -> dict[str, np.ndarray]:
    """``n`` generated samples per input: zeros, or seeded random values of its dtype."""
    rng = np.random.default_rng(seed)
    out = {}
    for spec in specs:
        shape, dtype = (n, *spec.shape), np.dtype(spec.dtype)
        if fill == "zeros":
            out[spec.name] = np.zeros(shape, dtype)
        elif dtype.kind == "f":
            out[spec.name] = rng.standard_normal(shape).astype(dtype)
        else:  # booleans and integers: 0 or 1 (valid as indices of most gathers)
            out[spec.name] = rng.integers(0, 2, shape).astype(dtype)
    return out


#: Run options of the Cortex-M back end only (named in the error for another build).
_CORTEX_M_ONLY = ("qemu", "port", "baud", "count_instructions", "per_layer", "timeout", "timeout_per_sample")

#: Samples whose top-K line is printed (the rest are in the output file).
TOP_SHOWN = 20


def _top(outputs, k: int, stacked: bool = True) -> list[list]:
    """Per sample, the ``k`` largest values of the (first) output along its last axis:
    ``[[index, value], ...]`` for an output of one row (``[10]``, ``[1, 10]``), else one such
    list per row (``[4, 16]``: four lists, indices within each row of 16).  ``stacked=False``:
    the outputs of one unstacked run, e.g. of a model without inputs."""
    y = np.asarray(outputs if isinstance(outputs, np.ndarray) else next(iter(outputs.values())))
    y = y if stacked else y[None]
    last = y.shape[-1] if y.ndim > 1 else 1
    rows = y.reshape(y.shape[0], -1, last)  # [samples, rows, last axis]
    order = np.argsort(-rows, axis=2, kind="stable")[:, :, :k]
    top = [
        [[[int(i), float(row[i])] for i in idx] for row, idx in zip(sample, ids, strict=True)]
        for sample, ids in zip(rows, order, strict=True)
    ]
    return [t[0] if rows.shape[1] == 1 else t for t in top]


def _print_top(top: list, row_shape: tuple[int, ...] = ()) -> None:
    """One line per sample (per row of the last axis for an output of several rows)."""
    multi = bool(top) and bool(top[0]) and isinstance(top[0][0][0], list)
    if multi:
        print(
            f"  top values along the last axis, per row of the output's [{', '.join(map(str, row_shape))}]:"
        )
    for n, best in enumerate(top[:TOP_SHOWN]):
        if not multi:
            print(f"  sample {n}: " + ", ".join(f"{i} ({v:.4g})" for i, v in best))
            continue
        for r, row in enumerate(best):
            where = ",".join(map(str, np.unravel_index(r, row_shape[:-1]))) if len(row_shape) > 1 else str(r)
            print(f"  sample {n} row [{where}]: " + ", ".join(f"{i} ({v:.4g})" for i, v in row))
    if len(top) > TOP_SHOWN:
        print(f"  ... {len(top) - TOP_SHOWN} more samples (--json lists all)")


def _print_profile(profile: dict) -> None:
    """The host profile as a table: per kernel call, the layers it computes, time per
    inference, share."""
    from tbn_tvm.report import text_table

    kernels = sum(k["seconds"] for k in profile["calls"])
    rows = []
    for k in profile["calls"]:
        layers = k["layers"]
        share = 100 * k["seconds"] / kernels if kernels else 0.0
        rows.append([k["kernel"], ",".join(layers) or "-", f"{k['seconds'] * 1e3:.4f}", f"{share:.1f}"])
    print("\n".join(text_table(["kernel", "layers", "ms", "%"], rows, {2, 3})))
    print(
        f"profiled inference (one sample, mean of {profile['rounds']} rounds): kernels {kernels * 1e3:.4f} ms "
        f"(the table's total); {profile['seconds_per_inference'] * 1e3:.4f} ms with the VM's bookkeeping and "
        "the instrumentation's own overhead"
    )


@command("run", help="Run a compiled model on stacked samples (host, QEMU or a board over UART)")
@arg("artifact", metavar="OUT_DIR", help="a directory written by 'tbn-tvm compile'")
@arg(
    "--input",
    "-i",
    action="append",
    metavar="[NAME=]X.npy",
    help="samples stacked on a new leading axis: [N, *input_shape]; repeat as NAME=FILE for several inputs",
)
@arg(
    "--fill",
    choices=("random", "zeros"),
    default=None,
    help="instead of --input: run on generated samples (random: standard normal, seeded by --seed)",
)
@arg("--samples", type=int, default=None, metavar="N", help="with --fill: how many samples (default 1)")
@arg("--seed", type=int, default=0, help="with --fill random: the random seed (default 0)")
@arg(
    "--output",
    "-o",
    metavar="Y.npy",
    help="where to write the outputs ([N, *output_shape]; .npz for several); default: OUT_DIR-outputs.npy "
    "beside OUT_DIR",
)
@arg(
    "--print-top",
    type=int,
    default=None,
    metavar="K",
    help="print the K largest outputs (class index and value) of each sample",
)
@arg("--qemu", action="store_true", help="Cortex-M: run the firmware on QEMU (the default)")
@arg("--port", metavar="PORT", help="Cortex-M: run on a flashed board over UART (e.g. /dev/ttyACM0)")
@arg("--board", default=None, help=argparse.SUPPRESS)  # the old spelling of --port: refused with a hint
@arg("--baud", type=int, default=None, help="UART baud rate for --port (default 115200)")
@arg("--count-instructions", action="store_true", help="QEMU: report exact instructions per inference")
@arg(
    "--per-layer",
    action="store_true",
    help="QEMU: instructions per layer too (each kernel counted from its entry through its return)",
)
@arg(
    "--profile",
    action="store_true",
    help="host: time each kernel of one inference (the first sample, repeated) and print them per layer",
)
@arg(
    "--timeout-per-sample",
    type=float,
    default=None,
    metavar="SECONDS",
    help="QEMU/board: seconds each sample may take before the run is declared hung (default 60 on QEMU, "
    "10 on a board); the run as a whole has no limit unless --timeout is given",
)
@arg(
    "--timeout",
    type=float,
    default=None,
    metavar="SECONDS",
    help="QEMU/board: seconds the whole run may take",
)
@arg("--json", action="store_true", help="print a one-line JSON summary")
def run(args) -> int:
    from tbn_tvm.api import load

    if args.board is not None:
        raise TBNError(
            "--board names a board profile (tbn-tvm compile --board NAME); the serial port of a board is --port",
            hint=f"tbn-tvm run OUT_DIR --port {args.board} ...",
        )
    if args.input and args.fill:
        raise TBNError("give the samples with --input or generate them with --fill, not both")
    if args.samples is not None and not args.fill:
        raise TBNError("--samples applies to --fill (with --input the file holds the samples)")
    if args.samples is not None and args.samples < 1:
        raise TBNError(f"--samples must be at least 1, got {args.samples}")
    if args.print_top is not None and args.print_top < 1:
        raise TBNError(f"--print-top must be at least 1, got {args.print_top}")
    for flag, value in (("--timeout", args.timeout), ("--timeout-per-sample", args.timeout_per_sample)):
        if value is not None and not (value > 0 and value != float("inf")):
            raise TBNError(f"{flag} must be a positive number of seconds, got {value:g}")
    model = load(args.artifact)
    if not args.input and not args.fill and model.inputs:  # a model without inputs runs once
        raise TBNError(
            "no samples: pass --input X.npy ([N, *input_shape]) or --fill random|zeros",
            hint="see 'tbn-tvm run --help'",
        )
    inputs: dict[str, np.ndarray] = {}
    if args.fill:
        inputs = _filled(model.inputs, args.fill, args.samples or 1, args.seed)
    for item in args.input or []:
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
        if a is not None and a.ndim and a.shape[0] == 0:  # like --samples 0
            raise TBNError(
                f"input '{spec.name}' holds 0 samples (shape {'x'.join(map(str, a.shape))})",
                hint="pass at least one sample, stacked on a new leading axis",
            )
        if a is not None and tuple(a.shape[1:]) != spec.shape:
            shape = "x".join(map(str, spec.shape))
            raise TBNError(
                f"input '{spec.name}' has shape {'x'.join(map(str, a.shape))}; expected N x {shape} "
                "(samples stacked on a new leading axis)"
            )
    empty = [
        f"{t.name or 'output'} [{', '.join(map(str, t.shape))}]" for t in model.outputs[:1] if 0 in t.shape
    ]
    if args.print_top is not None and empty:
        raise TBNError(f"--print-top: the output {empty[0]} has no elements to rank")
    if args.qemu and args.port:
        raise TBNError("run on QEMU (--qemu) or on a board (--port), not both")
    wanted = {
        "qemu": args.qemu or None,
        "port": args.port,
        "baud": args.baud,
        "count_instructions": args.count_instructions or None,
        "per_layer": args.per_layer or None,
        "timeout": args.timeout,
        "timeout_per_sample": args.timeout_per_sample,
        "profile": args.profile or None,
    }
    run_options = {k: v for k, v in wanted.items() if v is not None}
    available = model.run_options()
    for key in run_options:
        if key not in available:
            flag = "--" + key.replace("_", "-")
            raise TBNError(
                f"{flag} is not available for a {model.target.family} build ({model.target.name})",
                hint="it applies to Cortex-M builds"
                if key in _CORTEX_M_ONLY
                else "it applies to host builds (on QEMU: --per-layer)"
                if key == "profile"
                else None,
            )
    several = len(model.outputs) > 1
    if args.output:
        out_path = Path(args.output)
        if several and out_path.suffix != ".npz":
            raise TBNError(
                f"the model has {len(model.outputs)} outputs; write them to a .npz file (--output Y.npz)"
            )
    else:  # a default beside OUT_DIR (not inside: OUT_DIR holds exactly what compile wrote)
        art = Path(args.artifact).resolve()  # "." too: the file goes beside it, never inside
        out_path = Path(os.path.relpath(art.parent / f"{art.name}-outputs{'.npz' if several else '.npy'}"))
    outputs = model.run(inputs, **run_options)
    stats = model.last_run_stats
    if isinstance(outputs, np.ndarray):
        _save_npy_atomic(out_path, outputs)
    else:
        _save_npz_atomic(out_path, outputs)
    summary = {
        "samples": stats["samples"],
        "seconds": round(stats["seconds"], 6),
        "seconds_per_inference": stats["seconds_per_inference"],
        "target": model.target.name,
    }
    summary.update({k: v for k, v in stats.items() if k not in summary})
    summary["output"] = str(out_path)
    if args.print_top is not None:
        summary["top"] = _top(outputs, args.print_top, stacked=bool(model.inputs))
    if args.json:
        print(json.dumps(summary))
    else:
        per = summary["seconds_per_inference"]
        if "profile" in summary:  # the run's own time, without the profiling rounds
            per = max(summary["seconds"] - summary["profile"].get("seconds_profiling", 0.0), 0.0)
            per /= max(summary["samples"], 1)
        line = f"ran {summary['samples']} sample(s) on {model.target.name}: {per * 1e3:.3f} ms per inference"
        if "profile" in summary:
            line += " (wall time of the plain run, profiling not included)"
        if "instructions_per_inference" in summary:
            line += f", {summary['instructions_per_inference']:,.0f} instructions per inference"
        if summary.get("cycles"):
            line += f", {summary['cycles']['mean']:,.0f} cycles per inference (DWT)"
        print(line + f"; outputs -> {out_path}")
        if args.print_top is not None:
            _print_top(summary["top"], model.outputs[0].shape if model.outputs else ())
        if "profile" in summary:
            _print_profile(summary["profile"])
        if "instructions_per_layer" in summary:
            from tbn_tvm.report import text_table

            rows = [
                [s["kernel"], ",".join(s["layers"]) or "-", f"{s['instructions']:,.0f}"]
                for s in summary["instructions_per_layer"]
            ]
            print("\n".join(text_table(["kernel", "layers", "instructions"], rows, {2})))
    return 0
