"""``tbn-tvm run OUT_DIR (--input X.npy | --fill random|zeros) [--output Y.npy] [--qemu | --port PORT]``.

The samples follow :mod:`tbn_tvm.batching` (the API's rule).  Every argument is checked against
the manifest before the build is loaded.  ``--repeat/--number`` measure the model's own figure
(:func:`_measure`).  Without ``--output`` the outputs go to ``OUT_DIR-outputs.npy`` beside
``OUT_DIR`` (``.npz`` for several outputs) and the summary says so.
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


@command("run", help="Run a compiled model on samples (host, QEMU or a board over UART)")
@arg("artifact", metavar="OUT_DIR", help="a directory written by 'tbn-tvm compile'")
@arg(
    "--input",
    "-i",
    action="append",
    metavar="[NAME=]X.npy",
    help="the samples: [N, *input_shape[1:]] on the model's batch axis of 1 (e.g. [N, 1, 28, 28] for "
    "[1, 1, 28, 28]), [N, *input_shape] stacked on a new axis, or input_shape itself (one sample); repeat "
    "as NAME=FILE for several inputs",
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
@arg(
    "--repeat",
    type=int,
    default=None,
    metavar="N",
    help="also measure the model's own time on the first sample, N times (default 1 with --number): "
    "host: TVM's time evaluator (min/median/max ms per inference, no Python, loading or copies); "
    "Cortex-M: instructions per inference on QEMU, DWT cycles on a board",
)
@arg(
    "--number",
    type=int,
    default=None,
    metavar="M",
    help="with --repeat: inferences per measurement, each figure their mean (default 1)",
)
@arg("--json", action="store_true", help="print a one-line JSON summary")
def run(args) -> int:
    from tbn_tvm.api import check_inputs, load, read_manifest, read_signature
    from tbn_tvm.targets import backend_class

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
    for flag, value in (("--repeat", args.repeat), ("--number", args.number)):
        if value is not None and value < 1:
            raise TBNError(f"{flag} must be at least 1, got {value}")
    timing = args.repeat is not None or args.number is not None
    for flag, value in (("--timeout", args.timeout), ("--timeout-per-sample", args.timeout_per_sample)):
        if value is not None and not (value > 0 and value != float("inf")):
            raise TBNError(f"{flag} must be a positive number of seconds, got {value:g}")
    if args.qemu and args.port:
        raise TBNError("run on QEMU (--qemu) or on a board (--port), not both")
    # every argument is checked against the manifest before the build is loaded (seconds)
    artifact = Path(args.artifact)
    spec, in_specs, out_specs = read_signature(artifact, read_manifest(artifact))
    if not args.input and not args.fill and in_specs:  # a model without inputs runs once
        raise TBNError(
            "no samples: pass --input X.npy (N samples: [N, *input_shape], or [N, *input_shape[1:]] when "
            "it starts with 1) or --fill random|zeros",
            hint="see 'tbn-tvm run --help'",
        )
    inputs: dict[str, np.ndarray] = {}
    if args.fill:
        inputs = _filled(in_specs, args.fill, args.samples or 1, args.seed)
    for item in args.input or []:
        name, sep, path = item.partition("=")
        if sep and not Path(item).exists():
            inputs[name] = _load_npy(path)
        else:
            if len(in_specs) != 1:
                raise TBNError(f"the model has {len(in_specs)} inputs: pass --input NAME=FILE.npy for each")
            inputs[in_specs[0].name] = _load_npy(item)
    unknown = sorted(set(inputs) - {t.name for t in in_specs})
    if unknown:
        raise TBNError(
            f"unknown input name(s): {', '.join(unknown)}",
            hint="inputs are " + ", ".join(t.name for t in in_specs),
        )
    samples = check_inputs(in_specs, inputs) if in_specs else None
    if samples is not None and samples.count == 0:  # like --samples 0
        shape = next(a.shape for a in inputs.values())
        raise TBNError(
            f"input '{in_specs[0].name}' holds 0 samples (shape {'x'.join(map(str, shape))})",
            hint="pass at least one sample",
        )
    empty = [f"{t.name or 'output'} [{', '.join(map(str, t.shape))}]" for t in out_specs[:1] if 0 in t.shape]
    if args.print_top is not None and empty:
        raise TBNError(f"--print-top: the output {empty[0]} has no elements to rank")
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
    backend_cls = backend_class(spec.family)
    for key in run_options:
        if key not in backend_cls.run_options:
            flag = "--" + key.replace("_", "-")
            raise TBNError(
                f"{flag} is not available for a {spec.family} build ({spec.name})",
                hint="it applies to Cortex-M builds"
                if key in _CORTEX_M_ONLY
                else "it applies to host builds (on QEMU: --per-layer)"
                if key == "profile"
                else None,
            )
    if timing and spec.family not in ("host", "cortex-m"):
        raise TBNError(f"--repeat/--number are not available for a {spec.family} build ({spec.name})")
    several = len(out_specs) > 1
    if args.output:
        out_path = Path(args.output)
        if several and out_path.suffix != ".npz":
            raise TBNError(
                f"the model has {len(out_specs)} outputs; write them to a .npz file (--output Y.npz)"
            )
    else:  # a default beside OUT_DIR (not inside: OUT_DIR holds exactly what compile wrote)
        art = artifact.resolve()  # "." too: the file goes beside it, never inside
        out_path = Path(os.path.relpath(art.parent / f"{art.name}-outputs{'.npz' if several else '.npy'}"))
    if out_path.is_dir():
        raise TBNError(f"{out_path}: is a directory", hint="pass a file name to --output")
    model = load(artifact)
    outputs = model.run(inputs, **run_options)
    stats = model.last_run_stats
    measured = _measure(model, inputs, run_options, args.repeat or 1, args.number or 1) if timing else None
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
    if measured is not None:
        summary["timing"] = measured
    summary["output"] = str(out_path)
    one = samples is None or samples.layout == "one"
    if args.print_top is not None:
        summary["top"] = _top(outputs, args.print_top, stacked=not one)
    if args.json:
        print(json.dumps(summary))
    else:
        per = summary["seconds_per_inference"]
        if "profile" in summary:  # the run's own time, without the profiling rounds
            per = max(summary["seconds"] - summary["profile"].get("seconds_profiling", 0.0), 0.0)
            per /= max(summary["samples"], 1)
        what = "QEMU's wall time" if str(stats.get("device", "")).startswith("qemu") else "wall time"
        line = (
            f"ran {summary['samples']} sample(s) on {model.target.name}: {per * 1e3:.3f} ms per sample "
            f"({what} of the call, copies included"
        )
        if "profile" in summary:
            line += "; the plain run, profiling not included"
        if measured is None and spec.family == "host":
            line += "; the model's own time: --repeat N --number M"
        line += ")"
        if "instructions_per_inference" in summary:
            line += f", {summary['instructions_per_inference']:,.0f} instructions per inference"
        if "estimated_cycles_m4_per_inference" in summary:
            line += (
                f" (estimated {summary['estimated_cycles_m4_per_inference']:,.0f} Cortex-M4 / "
                f"{summary['estimated_cycles_m7_per_inference']:,.0f} Cortex-M7 cycles)"
            )
        if summary.get("cycles"):
            line += f", {summary['cycles']['mean']:,.0f} cycles per inference (DWT)"
        print(line + f"; outputs -> {out_path}")
        if measured is not None:
            print(_timing_line(measured))
        if args.print_top is not None:
            _print_top(summary["top"], model.outputs[0].shape if model.outputs else ())
        if "profile" in summary:
            _print_profile(summary["profile"])
        if "instructions_per_layer" in summary:
            from tbn_tvm.report import text_table

            per_layer = summary["instructions_per_layer"]
            cycles = all("estimated_cycles_m4" in s for s in per_layer)
            rows = [
                [s["kernel"], ",".join(s["layers"]) or "-", f"{s['instructions']:,.0f}"]
                + ([f"{s['estimated_cycles_m4']:,.0f}", f"{s['estimated_cycles_m7']:,.0f}"] if cycles else [])
                for s in per_layer
            ]
            head = ["kernel", "layers", "instructions"] + (
                ["est. M4 cycles", "est. M7 cycles"] if cycles else []
            )
            print("\n".join(text_table(head, rows, set(range(2, len(head))))))
    return 0


def _measure(model, inputs: dict, run_options: dict, repeat: int, number: int) -> dict:
    """The model's own figure on the first sample, ``repeat`` values each the mean of
    ``number`` inferences: seconds by TVM's time evaluator on the host, instructions on QEMU,
    DWT cycles on a board."""
    first = {t.name: a[:1] for t, a in zip(model.inputs, model._stack(inputs).arrays)}
    if model.target.family == "host":
        values = model.time({k: v[0] for k, v in first.items()}, number=number, repeat=repeat)
        unit = "seconds"
        measures = (
            "seconds per inference of one sample, TVM's time evaluator inside the runtime "
            "(no Python, loading or input copies)"
        )
    else:
        board = "port" in run_options
        options = {k: v for k, v in run_options.items() if k in ("qemu", "port", "baud", "timeout")}
        if not board:
            options["count_instructions"] = True
        x = {k: np.repeat(v, number, axis=0) for k, v in first.items()}
        values = []
        for _ in range(repeat):  # each repeat a run of its own, as on the host
            model.run(x, **options)
            stats = model.last_run_stats
            if board:
                value = (stats.get("cycles") or {}).get("mean")
                if not value:
                    raise TBNError(
                        "the board reports no cycle counts (its firmware has no DWT cycle counter)",
                        hint="measure on QEMU (instructions) instead",
                    )
            else:
                value = stats["instructions_per_inference"]
            values.append(float(value))
        if board:
            unit, measures = "cycles", "CPU cycles per inference of one sample (the board's DWT counter)"
        else:
            unit = "instructions"
            measures = (
                "instructions per inference of one sample, counted exactly on QEMU (an emulator "
                "counts instructions, not time)"
            )
    return {
        "measures": measures,
        "unit": unit,
        "repeat": repeat,
        "number": number,
        "per_repeat": values,
        "min": min(values),
        "median": float(np.median(values)),
        "max": max(values),
    }


def _timing_line(t: dict) -> str:
    if t["unit"] == "seconds":
        figures = " / ".join(f"{t[k] * 1e3:.4f}" for k in ("min", "median", "max")) + " ms per inference"
    else:
        figures = " / ".join(f"{t[k]:,.0f}" for k in ("min", "median", "max")) + f" {t['unit']} per inference"
    return (
        f"model {'time' if t['unit'] == 'seconds' else t['unit']} (min / median / max of {t['repeat']} "
        f"repeat(s) of {t['number']} inference(s)): {figures}; {t['measures']}"
    )
