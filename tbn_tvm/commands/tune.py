"""``tbn-tvm tune MODEL.onnx --target TARGET --trials N --db DIR``: auto-tune every kernel."""

from __future__ import annotations

import sys

from tbn_tvm.cli import arg, command
from tbn_tvm.errors import TBNError


@command("tune", help="Auto-tune the model's kernels with MetaSchedule + XGBoost into a reusable database")
@arg("model", metavar="MODEL.onnx", help="the ONNX model")
@arg(
    "--target",
    "-t",
    default="llvm",
    help="llvm (this CPU), an LLVM triple, cortex-m4, cortex-m7 (default: llvm)",
)
@arg("--mcpu", default=None, help="CPU (llvm: a name or 'native'; thumbv7em triples: cortex-m4/m7)")
@arg(
    "--trials",
    type=int,
    default=64,
    help="candidates to measure in all, records already in the database included",
)
@arg("--db", required=True, metavar="DIR", help="the tuning database folder (created; a re-run resumes it)")
@arg(
    "--runner",
    choices=["local", "qemu", "rpc"],
    default=None,
    help="where candidates are measured (default: local for host targets, qemu for Cortex-M)",
)
@arg("--rpc", metavar="HOST:PORT", default=None, help="TVM RPC tracker for --runner rpc")
@arg("--device-key", metavar="KEY", default=None, help="the key the devices registered under at the tracker")
@arg("--input-shape", action="append", metavar="NAME=D0,D1,...", help="fix a dynamic input shape")
@arg(
    "--plot",
    metavar="FILE.png",
    default=None,
    help="write the tuning curve here (default: DIR/tuning_curve.png)",
)
@arg("--quiet", "-q", action="store_true", help="no progress bar")
def run(args) -> int:
    from pathlib import Path

    from tbn_tvm.commands.common import parse_shapes
    from tbn_tvm.schedules.tuning import TuneResult, check_runner_args, plot_curve
    from tbn_tvm.supervise import call_in_child

    runner = args.runner or ("rpc" if args.rpc else "local")
    check_runner_args(runner, args.rpc, args.device_key)
    if args.trials < 1:
        raise TBNError(f"--trials must be at least 1, got {args.trials}")
    shapes = parse_shapes(args.input_shape)
    # the search runs in a process group of its own: Ctrl-C or SIGTERM ends it and every worker
    # it started at once (an interrupt inside MetaSchedule's C++ loop once crashed the process)
    try:
        found = call_in_child(
            "tbn_tvm.commands.tune:tune_job",
            {
                "model": str(args.model),
                "target": args.target,
                "mcpu": args.mcpu,
                "trials": args.trials,
                "db": str(args.db),
                "input_shapes": shapes,
                "runner": runner,
                "rpc": args.rpc,
                "device_key": args.device_key,
                "progress": not args.quiet,
            },
            on_message=lambda m: print(m, file=sys.stderr),
        )
    except KeyboardInterrupt:  # Ctrl-C or SIGTERM ended the search: a record cut short is dropped
        import contextlib

        from tbn_tvm.schedules.records import RECORDS_FILE, WORKLOADS_FILE, repair_jsonl

        with contextlib.suppress(OSError):
            for name in (WORKLOADS_FILE, RECORDS_FILE):
                repair_jsonl(Path(args.db) / name)
        raise
    result = TuneResult(**{**found, "db": Path(found["db"])})
    print(result.table())
    for warning in result.warnings:  # said before the search too; repeated under the table
        print(f"warning: {warning}")
    plot = Path(args.plot) if args.plot else Path(args.db) / "tuning_curve.png"
    why_not = plot_curve(result.curve, plot)
    if why_not is None:
        print(f"tuning curve -> {plot}")
    else:
        print(f"no tuning curve plot: {why_not}")
    print(
        f"{result.trials_run} trials in {result.seconds:.0f} s ({result.trials_before} were already in {args.db}); "
        f"apply with: tbn-tvm compile {args.model} --target {args.target} --tuning-db {args.db} -o OUT_DIR"
    )
    return 0


def tune_job(say, **kwargs) -> dict:
    """:func:`tbn_tvm.schedules.tuning.tune` as run by :func:`tbn_tvm.supervise.call_in_child`:
    its messages through ``say``, its result as JSON-able fields."""
    import dataclasses

    from tbn_tvm.schedules.tuning import tune

    result = tune(**kwargs, on_message=say)
    return {**dataclasses.asdict(result), "db": str(result.db)}
